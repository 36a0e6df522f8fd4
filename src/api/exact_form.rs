//! The text the exact layer keys on, derived from the normalized prompt
//! ([`super::canonical::normalize`]): [`exact_form`]. A prompt that reads as plain prose has its
//! case folded and its trailing sentence punctuation dropped, so "How do I reset my password?"
//! and "how do I reset my password" share one exact key. Anything that may be code, markup, a
//! path, a quotation, an acronym or a name keeps its exact text: merging two prompts the model
//! would answer differently is worse than a missed exact hit (the semantic layer still sees
//! both). This module only derives text; the store hashes it ([`crate::store::exact_key`]), and
//! the stored entry and the embedding keep the normalized prompt.
//!
//! # What counts as prose
//!
//! Decided on the whole normalized text, conservatively; every rule below that fails keeps the
//! text as it is. Line breaks and indentation are gone by then (normalization collapses
//! whitespace), so code is recognized by its characters and shapes:
//! - **Characters**: letters, digits, whitespace and the punctuation of running text
//!   (`. , ? ! : - ( ) % +`, apostrophes inside words, dashes, `¿ ¡`, CJK sentence marks).
//!   Anything else, such as backticks, `{ } [ ] < > ; = | \ / _ * # @ & $ ~ ^`, quotation marks
//!   or emoji, means code, markup, JSON, a path or URL, a quotation or math.
//! - **Code shapes made of those characters**: a word directly followed by `(` (a call:
//!   `print(x)`), `()`, `)` glued to a word; `.` `?` `!` `,` `:` glued to the next letter (file
//!   names, domains, `e.g.`, `colou?r`, `std::io`; `3.5`, `1,000` and `10:30` are fine); a
//!   leading `-` or `--` on a word (a command-line flag: `ls -a`); `+` next to a letter (`C++`,
//!   `a+b`); `%` before a letter (`%s`); an apostrophe that opens or closes a word (a quotation:
//!   `'Apple'`).
//! - **Case**: an uppercase letter is allowed only as the first letter of the text or of a
//!   sentence (after `. ? ! : …`), and in the pronoun "I" (I'm, I've, ...). So an acronym (`US`
//!   vs `us`, `IT`, `WHO`), mixed case in a word (`camelCase`, `HTTPServer`, `iPhone`) or a
//!   capitalized word mid-sentence keeps the text's case. The last one is deliberate: "remove
//!   Rust" and "remove rust", "Apple stock" and "apple stock", "in Turkey" and "in turkey" ask
//!   different things, so proper nouns mid-sentence ("in Pune" vs "in pune") are not merged
//!   either. The first word of a sentence is folded ("Polish sausage" = "polish sausage"): a
//!   capital there is orthography far more often than meaning.
//! - **Literal punctuation**: a text that names characters (`regex`, `operator`, `symbol`,
//!   `punctuation`, `character`, ...) may mean its trailing `?` or `.` literally, and a `!`
//!   after a number or a one-letter word is a factorial (`5!`, `n!`): both keep their text.
//!
//! # What folding does
//!
//! Unicode lowercase ([`str::to_lowercase`]), then trailing `? ! . … ？ ！ 。` (any run of them)
//! and whitespace before them are removed ("ça va ?" = "ça va"). Only the end of the text is
//! touched: `...` or `3.5` inside it stay. A text that is nothing but punctuation keeps it.
//! [`exact_form`] is idempotent, so a key derived twice is the same key.

use std::borrow::Cow;

/// Sentence punctuation removed from the end of a prose prompt.
const TRAILING: &[char] = &['?', '!', '.', '…', '？', '！', '。'];

/// Punctuation allowed in prose (letters, digits and whitespace always are).
const PROSE_PUNCT: &[char] = &[
    '.', ',', '?', '!', ':', '-', '(', ')', '\'', '’', '%', '+', '–', '—', '…', '¿', '¡', '？',
    '！', '。', '，', '、', '：',
];

/// Punctuation that may not be glued to the letter after it (`e.g`, `colou?r`, `a,b`, `std::`).
const UNGLUED: &[char] = &['.', '?', '!', ',', ':'];

/// Opening marks skipped before a word's first letter.
const OPENERS: &[char] = &['(', '¿', '¡'];

/// What a word may end with for the next word to start a sentence.
const SENTENCE_END: &[char] = &['.', '?', '!', '…', ':', '？', '！', '。', '：'];

/// Words that announce characters or punctuation meant literally ("the regex ab?").
const LITERAL_WORDS: &[&str] = &[
    "regex",
    "regexes",
    "regexp",
    "regexps",
    "expression",
    "expressions",
    "glob",
    "globs",
    "wildcard",
    "wildcards",
    "operator",
    "operators",
    "symbol",
    "symbols",
    "punctuation",
    "character",
    "characters",
    "emoji",
    "emoticon",
];

/// The exact-key text of a normalized prompt: case folded and trailing sentence punctuation
/// removed when the prompt is prose (see the module docs), the prompt itself otherwise.
pub fn exact_form(prompt: &str) -> Cow<'_, str> {
    if !is_prose(prompt) {
        return Cow::Borrowed(prompt);
    }
    let body = trim_trailing(prompt);
    if body.is_empty() {
        return Cow::Borrowed(prompt);
    }
    if body.chars().any(is_upper) {
        Cow::Owned(body.to_lowercase())
    } else {
        Cow::Borrowed(body)
    }
}

/// `text` without its trailing run of sentence punctuation and whitespace.
fn trim_trailing(text: &str) -> &str {
    text.trim_end_matches(|c: char| TRAILING.contains(&c) || c.is_whitespace())
}

/// A letter that lowercasing changes (uppercase and titlecase letters).
fn is_upper(c: char) -> bool {
    !c.to_lowercase().eq(std::iter::once(c))
}

fn is_prose(text: &str) -> bool {
    characters_are_prose(text) && words_are_prose(text) && !ends_in_factorial(text)
}

/// The character rules: only prose punctuation, and none of it shaped like code.
fn characters_are_prose(text: &str) -> bool {
    let mut prev: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let next = chars.peek().copied();
        let alnum = |o: Option<char>| o.is_some_and(char::is_alphanumeric);
        let letter = |o: Option<char>| o.is_some_and(char::is_alphabetic);
        let digit = |o: Option<char>| o.is_some_and(|c| c.is_numeric());
        let ok = if c.is_alphanumeric() || c.is_whitespace() {
            true
        } else if !PROSE_PUNCT.contains(&c) {
            false
        } else {
            match c {
                // 3.5, 1,000, 10:30 are numbers; anything else glued to a letter is not prose.
                '.' | ',' | ':' if digit(prev) && digit(next) => true,
                c if UNGLUED.contains(&c) => !alnum(next),
                '(' => !alnum(prev) && next != Some(')'),
                ')' => !alnum(next),
                '\'' | '’' => letter(prev) && letter(next),
                '-' => {
                    let word_start = prev.is_none_or(|p| p.is_whitespace() || OPENERS.contains(&p));
                    next != Some('-') && !(word_start && letter(next))
                }
                '+' => !letter(prev) && !letter(next),
                '%' => !letter(next),
                _ => true,
            }
        };
        if !ok {
            return false;
        }
        prev = Some(c);
    }
    true
}

/// The word rules: case only where orthography puts it, no word that makes punctuation literal.
fn words_are_prose(text: &str) -> bool {
    let mut sentence_start = true;
    for word in text.split_whitespace() {
        let word = word.trim_start_matches(OPENERS);
        let core = word.trim_end_matches(|c: char| !c.is_alphanumeric());
        if LITERAL_WORDS.iter().any(|w| core.eq_ignore_ascii_case(w)) {
            return false;
        }
        for (i, c) in word.chars().enumerate() {
            if is_upper(c) && (i > 0 || !(sentence_start || is_pronoun_i(core))) {
                return false;
            }
        }
        sentence_start = word
            .trim_end_matches(')')
            .ends_with(|c: char| SENTENCE_END.contains(&c));
    }
    true
}

/// "I", "I'm", "I've", "I'll", "I'd" (the capital after an apostrophe is caught elsewhere).
fn is_pronoun_i(core: &str) -> bool {
    match core.strip_prefix('I') {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix(['\'', '’'])
            .is_some_and(|r| !r.is_empty() && r.chars().all(char::is_lowercase)),
        None => false,
    }
}

/// A trailing `!` after a number or a one-letter word: "5!", "n!" (factorials).
fn ends_in_factorial(text: &str) -> bool {
    let body = trim_trailing(text);
    let run = &text[body.len()..];
    if !run.contains(['!', '！']) {
        return false;
    }
    let last = body.rsplit(char::is_whitespace).next().unwrap_or("");
    last.ends_with(|c: char| c.is_numeric())
        || (last.chars().count() == 1 && last.chars().all(char::is_alphabetic))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::canonical::normalize;

    /// The exact-key text of a raw prompt, as the server derives it.
    fn key(raw: &str) -> String {
        exact_form(&normalize(raw)).into_owned()
    }

    fn same(a: &str, b: &str) {
        assert_eq!(key(a), key(b), "{a:?} and {b:?} must share an exact key");
    }

    fn differ(a: &str, b: &str) {
        assert_ne!(
            key(a),
            key(b),
            "{a:?} and {b:?} must not share an exact key"
        );
    }

    fn kept(p: &str) {
        assert_eq!(exact_form(p), p, "{p:?} must keep its exact text");
    }

    #[test]
    fn exact_form_merges_case_and_trailing_punctuation_of_prose() {
        let base = "How do I reset my password";
        for variant in [
            "How do I reset my password?",
            "how do I reset my password?",
            "how do i reset my password",
            "How do I reset my password ?",
            "How do I reset my password?!",
            "How do I reset my password???",
            "How do I reset my password...",
            "How do I reset my password…",
            "How do I reset my password？",
            "  How do I\n reset   my password ?  ",
        ] {
            same(base, variant);
        }
        assert_eq!(key(base), "how do i reset my password");
        same(
            "I'm locked out. What do I do?",
            "i'm locked out. what do i do",
        );
        same("Wie spät ist es?", "wie spät ist es");
        same("Comment ça va ?", "comment ça va");
        same("¿Qué hora es?", "¿qué hora es");
        same("什么是缓存。", "什么是缓存");
        same("What is 20% of 50?", "what is 20% of 50");
        same("Is 3.5 bigger than 3?", "is 3.5 bigger than 3.");
        same("Well-known facts, please!", "well-known facts, please");
    }

    #[test]
    fn exact_form_applies_after_nfkc_and_whitespace_normalization() {
        // Fullwidth letters and an ideographic space are NFKC-folded before the exact form.
        same(
            "\u{FF28}ow do I reset my password\u{FF1F}",
            "how do I reset my password",
        );
        same(
            "how do I\u{3000}reset my password",
            "How do I reset my password?",
        );
        // The ligature "ﬁ" is "fi" after NFKC.
        same("how do I \u{FB01}nd it", "How do I find it?");
        assert_eq!(exact_form(""), "");
    }

    #[test]
    fn exact_form_only_touches_the_end() {
        assert_eq!(exact_form("wait... what?"), "wait... what");
        assert_eq!(
            exact_form("Is 3.5 bigger than 3.4?"),
            "is 3.5 bigger than 3.4"
        );
        assert_eq!(exact_form("Hello. How are you?"), "hello. how are you");
        // Not sentence punctuation: kept.
        kept("2+2=");
        kept("Is 3.5 > 3.");
        assert_eq!(exact_form("List three fruits:"), "list three fruits:");
        // Nothing but punctuation keeps it: "?" is not "!".
        kept("?");
        kept("...");
        differ("?", "!");
    }

    #[test]
    fn exact_form_keeps_code() {
        differ("print(x)", "Print(X)");
        differ("print(x)", "print(X)");
        kept("print(x)");
        differ("What does `ls -A` do", "What does `ls -a` do");
        differ("What does ls -A do?", "what does ls -a do?");
        kept("what does ls -a do?");
        kept("fn main() { println!(\"hi\"); }");
        kept("SELECT * FROM users;");
        kept("what does x = 1; do");
        kept("```rust let x = 1; ```");
        kept("what is {\"a\": 1}");
        kept("<div>Hello</div>");
        kept("what does std::io do?");
        kept("What does rm --force do?");
        kept("is C++ hard?");
        kept("printf %s?");
        kept("my_var is unset?");
        // Different trailing punctuation in code is different code.
        differ("x = y?", "x = y!");
        differ("foo()?", "foo()");
        differ("let a = b;", "let a = b");
    }

    #[test]
    fn exact_form_keeps_a_trailing_question_mark_that_is_a_regex_or_code() {
        // A text naming characters may mean its trailing punctuation literally.
        differ("Explain the regex ab?", "Explain the regex ab");
        differ("what does the operator ?", "what does the operator");
        differ("what is the character ?", "what is the character");
        differ("which symbol is ...", "which symbol is");
        // Code: Rust's `?` operator, a regex between slashes or backticks.
        differ("let v = s.parse()?", "let v = s.parse()");
        differ(
            "does /colou?r/ match colour?",
            "does /colou?r/ match colour",
        );
        differ("Explain `ab?`", "Explain `ab`");
        kept("does colou?r match colour?");
        // A `!` after a number or a one-letter word is a factorial.
        differ("What is 5!", "What is 5");
        differ("compute n!", "compute n");
        kept("What is x!");
    }

    #[test]
    fn exact_form_keeps_acronyms() {
        differ("What is US policy", "what is us policy");
        differ("Who is the WHO?", "who is the who?");
        differ("Should I work in IT?", "should I work in it?");
        differ("US policy?", "us policy?");
        kept("What is US policy");
        kept("HOW DO I RESET MY PASSWORD");
    }

    #[test]
    fn exact_form_keeps_quoted_text() {
        differ("translate 'Apple' to French", "translate 'apple' to French");
        differ(
            "translate 'apple' to french",
            "translate 'apple' to french?",
        );
        kept("translate 'apple' to french?");
        kept("translate \"apple\" to french?");
        kept("translate “apple” to french?");
        kept("translate «apple» to french?");
        kept("what do the students' books say?");
    }

    #[test]
    fn exact_form_keeps_identifiers_names_and_paths() {
        differ("what does parseJson do", "what does parsejson do");
        differ("Is HTTPServer thread-safe?", "is httpserver thread-safe?");
        differ("Is the iPhone good?", "is the iphone good?");
        differ("how do I remove Rust?", "how do I remove rust?");
        differ("weather in Pune?", "weather in pune?");
        differ("Where is Jean-Luc?", "where is jean-luc?");
        differ("What is H2O?", "what is h2o?");
        differ("open /Users/Bob", "open /users/bob");
        differ("Open /Users/Bob?", "open /users/bob");
        differ("what is in Config.toml", "what is in config.toml");
        differ("what is in config.toml?", "what is in config.toml");
        differ("Open https://example.com/A?", "open https://example.com/a");
        kept("C:\\Users\\Bob?");
        kept("what is on example.com?");
        kept("solve for X?");
    }

    #[test]
    fn exact_form_is_a_fixed_point_of_itself() {
        for p in [
            "How do I reset my password?",
            "print(x)",
            "İstanbul nerede?",
            "ΣΑΣ?",
        ] {
            let once = exact_form(p).into_owned();
            assert_eq!(exact_form(&once), once.as_str(), "{p:?}");
        }
    }
}
