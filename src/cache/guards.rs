//! Precision guards: cheap lexical checks that veto a semantic candidate the embedding model
//! scores too high. Sentence embeddings are nearly blind to negation and to numbers ("How do I
//! NOT reset my password?" scores 0.928 against "How do I reset my password?", above a true
//! paraphrase at 0.894), and serving the answer to the wrong one of those is the costly failure
//! of a semantic cache. Guards only ever turn a hit into a miss; they never create a hit.

use std::collections::BTreeMap;

/// Why a candidate was vetoed (or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuardVerdict {
    Pass,
    /// One text is negated and the other is not.
    Negation,
    /// The texts mention different numbers.
    Numbers,
    /// A word shared by both texts belongs to different people: "what is *my* name" / "what
    /// is *your* name", "call *me* Bob" / "call *you* Bob".
    Roles,
    /// The same words related the other way round: "convert pounds to kilos" / "convert
    /// kilos to pounds", "move money from checking to savings" / "… from savings to checking".
    Direction,
    /// One text has a small word whose opposite the other has instead: "turn *on*" / "turn
    /// *off*", "log *in*" / "log *out*", "sign *up*" / "sign *in*", "*over* 21" / "*under*
    /// 21", "eat *before*" / "eat *after*", or the same two words linked the opposite way
    /// ("money *to* savings" / "money *from* savings"). These words carry no topic, so the
    /// content-word comparison and the embedding both miss them.
    Opposite,
}

impl GuardVerdict {
    pub fn passed(&self) -> bool {
        matches!(self, GuardVerdict::Pass)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            GuardVerdict::Pass => "pass",
            GuardVerdict::Negation => "negation",
            GuardVerdict::Numbers => "numbers",
            GuardVerdict::Roles => "roles",
            GuardVerdict::Direction => "direction",
            GuardVerdict::Opposite => "opposite",
        }
    }
}

/// Lexical features of one prompt, computed once per query and compared with each candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    negated: bool,
    numbers: BTreeMap<String, u32>,
    /// How often the word "one" occurs: a pronoun as often as a number ("how can one train
    /// their own model"), so it only stands in for a "1" the other text has.
    ones: u32,
    /// Content words (not function words, negations or numbers), lightly stemmed, in order.
    content: Vec<String>,
    /// Persons the text speaks of (bit 0 first person, bit 1 second person).
    persons: u8,
    /// Question words that ask for a different slot: who, where, when, why (bits).
    asks: u8,
    /// Content words owned by a person: (word, slot) → persons seen (bit 0 first person, bit 1
    /// second person).
    roles: BTreeMap<(String, Slot), u8>,
    /// (x, y) for every "x <relation> y" with content words right next to the relation word
    /// ("pounds to kilos", "Boston to Denver", "checking to savings").
    relations: Vec<(String, String)>,
    /// The same, with the relation word's index in [`LINKS`] when it has an opposite there
    /// ("money to savings" → (money, to, savings)).
    links: Vec<(String, usize, String)>,
    /// Bit i set when the word `PARTICLES[i]` occurs.
    particles: u32,
}

/// Small words with an opposite, which the content-word comparison does not see (most are
/// function words) and sentence embeddings barely weigh. Indices into this table form
/// [`OPPOSITES`].
const PARTICLES: &[&str] = &[
    "on", "off", "in", "out", "up", "down", "into", "onto", "over", "under", "above", "below",
    "before", "after", "more", "less", "fewer", "most", "least", "all", "some", "will", "did",
    "was", "were",
];

/// Pairs of [`PARTICLES`] indices that mean opposite things next to the same words: on/off,
/// in/out, up/down, up/in ("sign up" / "sign in"), into/out, onto/off, over/under,
/// above/below, before/after, more/less, more/fewer, most/least, all/some, and future
/// against past ("will it rain" / "did it rain", "will I be charged" / "was I charged").
const OPPOSITES: &[(usize, usize)] = &[
    (0, 1),
    (2, 3),
    (4, 5),
    (4, 2),
    (6, 3),
    (7, 1),
    (8, 9),
    (10, 11),
    (12, 13),
    (14, 15),
    (14, 16),
    (17, 18),
    (19, 20),
    (21, 22),
    (21, 23),
    (21, 24),
];

/// Relation words whose opposite links the same two words the other way: "to" / "from",
/// "into" / "from". Compared only between content words ("money to savings" / "money from
/// savings"), since "to" alone is mostly an infinitive ("how to reset").
const LINKS: &[&str] = &["to", "from", "into"];
const LINK_OPPOSITES: &[(usize, usize)] = &[(0, 1), (2, 1)];

/// Where a pronoun stands next to a content word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    /// "my name", "your account".
    Possessive,
    /// "call me", "remind you".
    Object,
}

/// One token as the direction check sees it.
enum Part {
    Word(String),
    /// A relation word, with its index in [`LINKS`] if it has one.
    Relation(Option<usize>),
    Other,
}

impl Features {
    pub fn of(text: &str) -> Features {
        let tokens: Vec<String> = tokens(text).collect();
        let mut f = Features {
            negated: false,
            numbers: BTreeMap::new(),
            ones: 0,
            content: Vec::new(),
            persons: 0,
            asks: 0,
            roles: BTreeMap::new(),
            relations: Vec::new(),
            links: Vec::new(),
            particles: 0,
        };
        let mut parts = Vec::with_capacity(tokens.len());
        for (i, token) in tokens.iter().enumerate() {
            f.persons |= person(token);
            f.asks |= asks(token);
            if let Some(p) = PARTICLES.iter().position(|w| w == token) {
                f.particles |= 1 << p;
            }
            if is_relation(token) {
                parts.push(Part::Relation(LINKS.iter().position(|w| w == token)));
                continue;
            }
            if is_determiner(token) {
                continue;
            }
            if is_negation(token) {
                f.negated = true;
            } else if token == "one" {
                f.ones += 1;
            } else if let Some(n) = number_value(token) {
                *f.numbers.entry(n).or_insert(0) += 1;
            } else if !is_function_word(token) {
                let word = stem(token);
                if let Some(p) = i.checked_sub(1).and_then(|j| possessive(&tokens[j])) {
                    *f.roles.entry((word.clone(), Slot::Possessive)).or_insert(0) |= p;
                }
                if let Some(p) = tokens.get(i + 1).and_then(|t| object(t)) {
                    *f.roles.entry((word.clone(), Slot::Object)).or_insert(0) |= p;
                }
                f.content.push(word.clone());
                parts.push(Part::Word(word));
                continue;
            }
            parts.push(Part::Other);
        }
        for w in parts.windows(3) {
            if let [Part::Word(x), Part::Relation(link), Part::Word(y)] = w {
                if x != y {
                    f.relations.push((x.clone(), y.clone()));
                    if let Some(l) = link {
                        f.links.push((x.clone(), *l, y.clone()));
                    }
                }
            }
        }
        f
    }

    pub fn compare(&self, other: &Features) -> GuardVerdict {
        if self.negated != other.negated {
            GuardVerdict::Negation
        } else if !same_numbers(self, other) {
            GuardVerdict::Numbers
        } else if roles_swapped(self, other) {
            GuardVerdict::Roles
        } else if reversed(self, other) || reversed(other, self) {
            GuardVerdict::Direction
        } else if opposite(self, other) {
            GuardVerdict::Opposite
        } else {
            GuardVerdict::Pass
        }
    }

    /// The lexical verifier: both texts have the same content words in the same order (after
    /// stemming), do not speak of different people ("what do I go by" / "what do you go by")
    /// and ask the same kind of question (who / where / when / why). They then differ only in
    /// function words, inflection, case or punctuation: "How can I reset my password?" /
    /// "How do I reset my password".
    pub fn same_content(&self, other: &Features) -> bool {
        let disjoint_persons =
            self.persons != 0 && other.persons != 0 && self.persons & other.persons == 0;
        self.content == other.content && !disjoint_persons && self.asks == other.asks
    }
}

/// `a` relates x to y ("convert pounds to kilos") where `b`, with the same content words,
/// puts y before x ("convert kilos to pounds").
fn reversed(a: &Features, b: &Features) -> bool {
    if a.relations.is_empty() || a.content == b.content {
        return false;
    }
    let mut sa = a.content.clone();
    let mut sb = b.content.clone();
    sa.sort();
    sb.sort();
    if sa != sb {
        return false;
    }
    let first = |w: &str| b.content.iter().position(|c| c == w);
    a.relations
        .iter()
        .any(|(x, y)| matches!((first(x), first(y)), (Some(px), Some(py)) if py < px))
}

/// One text has a particle and not its opposite, the other the opposite and not the particle
/// ("log in" / "log out"; "look up a word in the dictionary" / "find a word in the
/// dictionary" has "in" on both sides and passes), or both link the same two words with
/// opposite relation words ("money to savings" / "money from savings").
fn opposite(a: &Features, b: &Features) -> bool {
    let has = |f: &Features, i: usize| f.particles & (1 << i) != 0;
    let one_way = |x: usize, y: usize| has(a, x) && !has(a, y) && has(b, y) && !has(b, x);
    let particles = OPPOSITES
        .iter()
        .any(|&(x, y)| one_way(x, y) || one_way(y, x));
    let linked = |p: &Features, q: &Features| {
        p.links.iter().any(|(x, l, y)| {
            q.links.iter().any(|(qx, ql, qy)| {
                qx == x
                    && qy == y
                    && LINK_OPPOSITES
                        .iter()
                        .any(|&(m, n)| (*l, *ql) == (m, n) || (*l, *ql) == (n, m))
            })
        })
    };
    particles || linked(a, b)
}

/// Numbers equal as multisets, where a "1" on one side may be the word "one" on the other.
fn same_numbers(a: &Features, b: &Features) -> bool {
    if a.numbers == b.numbers {
        return true;
    }
    let ones = |f: &Features| f.numbers.get("1").copied().unwrap_or(0);
    let (a1, b1) = (ones(a), ones(b));
    let covered = if a1 > b1 {
        a1 - b1 <= b.ones
    } else {
        b1 - a1 <= a.ones
    };
    let rest_equal = a
        .numbers
        .iter()
        .filter(|(k, _)| k.as_str() != "1")
        .eq(b.numbers.iter().filter(|(k, _)| k.as_str() != "1"));
    covered && rest_equal
}

/// A content word both texts attach a pronoun to, with disjoint persons on the two sides.
fn roles_swapped(a: &Features, b: &Features) -> bool {
    a.roles
        .iter()
        .any(|(k, pa)| b.roles.get(k).is_some_and(|pb| pa & pb == 0))
}

fn is_relation(token: &str) -> bool {
    matches!(
        token,
        "to" | "from" | "into" | "than" | "vs" | "versus" | "against" | "over" | "before" | "after"
    )
}

/// Words skipped when deciding whether a content word stands right next to a relation word.
fn is_determiner(token: &str) -> bool {
    matches!(
        token,
        "the" | "a" | "an" | "my" | "your" | "our" | "their" | "his" | "her" | "its"
    )
}

/// Question words that ask for a different slot: who, where, when, why.
fn asks(token: &str) -> u8 {
    match token {
        "who" | "whom" | "whose" => 1,
        "where" => 2,
        "when" => 4,
        "why" => 8,
        _ => 0,
    }
}

/// The person a pronoun speaks of (bit 0 first, bit 1 second), or 0.
fn person(token: &str) -> u8 {
    match token {
        "i" | "me" | "my" | "mine" | "myself" | "we" | "us" | "our" | "ours" | "ourselves"
        | "i'm" | "i've" | "i'd" | "i'll" => 1,
        "you" | "your" | "yours" | "yourself" | "yourselves" | "you're" | "you've" | "you'd"
        | "you'll" => 2,
        _ => 0,
    }
}

fn possessive(token: &str) -> Option<u8> {
    match token {
        "my" | "our" => Some(1),
        "your" => Some(2),
        _ => None,
    }
}

fn object(token: &str) -> Option<u8> {
    match token {
        "me" | "us" => Some(1),
        "you" => Some(2),
        _ => None,
    }
}

/// Words that carry no topic of their own: articles, pronouns, auxiliaries, prepositions,
/// conjunctions, question words and request framing ("please", "tell", "know").
fn is_function_word(token: &str) -> bool {
    const WORDS: &[&str] = &[
        "a",
        "an",
        "the",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "do",
        "does",
        "did",
        "doing",
        "done",
        "have",
        "has",
        "had",
        "having",
        "i",
        "me",
        "my",
        "mine",
        "myself",
        "we",
        "our",
        "ours",
        "us",
        "you",
        "your",
        "yours",
        "yourself",
        "he",
        "him",
        "his",
        "she",
        "her",
        "it",
        "its",
        "they",
        "them",
        "their",
        "theirs",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "can",
        "could",
        "would",
        "should",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "of",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "about",
        "as",
        "into",
        "onto",
        "to",
        "from",
        "up",
        "out",
        "off",
        "over",
        "under",
        "through",
        "during",
        "and",
        "or",
        "but",
        "if",
        "then",
        "so",
        "than",
        "too",
        "very",
        "just",
        "also",
        "any",
        "some",
        "all",
        "each",
        "every",
        "both",
        "either",
        "few",
        "more",
        "most",
        "other",
        "another",
        "such",
        "own",
        "same",
        "s",
        "t",
        "d",
        "ll",
        "m",
        "re",
        "ve",
        "y",
        "get",
        "gets",
        "got",
        "getting",
        "please",
        "tell",
        "let",
        "really",
        "actually",
        "ever",
        "even",
        "much",
        "many",
        "lot",
        "lots",
        "someone",
        "something",
        "anyone",
        "anything",
        "somebody",
        "anybody",
        "way",
        "ways",
        "ones",
        "thing",
        "things",
        "like",
        "know",
        "want",
        "need",
        "what's",
        "i'm",
        "i've",
        "i'd",
        "i'll",
        "it's",
        "that's",
        "there's",
        "you're",
        "you've",
        "let's",
        "how's",
        "where's",
        "who's",
    ];
    WORDS.contains(&token) || token.chars().count() == 1
}

/// Light suffix stripping, so inflections of one word compare equal: "resetting"/"reset",
/// "movies"/"movie", "changed"/"change", "cities"/"city". Errs towards keeping words apart.
fn stem(token: &str) -> String {
    let t = token.trim_end_matches(['\'', '\u{2019}']);
    let t = t
        .strip_suffix("'s")
        .or_else(|| t.strip_suffix("\u{2019}s"))
        .unwrap_or(t);
    let mut w: Vec<char> = t.chars().collect();
    let ends = |w: &[char], s: &str| {
        let s: Vec<char> = s.chars().collect();
        w.len() >= s.len() && w[w.len() - s.len()..] == s[..]
    };
    if ends(&w, "ing") && w.len() >= 6 {
        w.truncate(w.len() - 3);
    } else if ends(&w, "ed") && w.len() >= 5 {
        w.truncate(w.len() - 2);
    } else if ends(&w, "s") && !ends(&w, "ss") && w.len() >= 4 {
        w.truncate(w.len() - 1);
    }
    if ends(&w, "e") && w.len() >= 4 {
        w.pop();
    }
    if ends(&w, "y") && w.len() >= 3 {
        w.pop();
        w.push('i');
    }
    let n = w.len();
    if n >= 4 && w[n - 1] == w[n - 2] && !"aeiou".contains(w[n - 1]) && w[n - 1].is_alphabetic() {
        w.pop();
    }
    w.into_iter().collect()
}

/// Compares two prompts.
pub fn check(query: &str, candidate: &str) -> GuardVerdict {
    Features::of(query).compare(&Features::of(candidate))
}

/// Lowercase tokens; apostrophes (straight or curly) stay inside words so "don't" is one token;
/// digits keep their decimal point and thousands separators.
fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let next_is_digit = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        let prev_is_digit = i > 0 && chars[i - 1].is_ascii_digit();
        // "c++", "c#", "f#", "g++" name different languages than "c": a '+' or '#' right
        // after a word (and not before another letter or digit, so "2+2" splits) stays in it.
        let suffix = (c == '+' || c == '#')
            && !cur.is_empty()
            && !chars.get(i + 1).is_some_and(|n| n.is_alphanumeric());
        let keep = c.is_alphanumeric()
            || c == '\''
            || c == '\u{2019}'
            || suffix
            || ((c == '.' || c == ',') && prev_is_digit && next_is_digit);
        if keep {
            cur.extend(c.to_lowercase());
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out.into_iter()
}

fn is_negation(token: &str) -> bool {
    const WORDS: &[&str] = &[
        "not", "no", "never", "nor", "neither", "none", "nothing", "nobody", "nowhere", "without",
        "cannot", "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont",
        "wouldnt", "shouldnt", "couldnt", "hasnt", "havent", "hadnt", "mustnt", "neednt", "aint",
    ];
    token.ends_with("n't") || token.ends_with("n\u{2019}t") || WORDS.contains(&token)
}

/// A canonical string for a numeric token ("1,000" → "1000", "3.50" → "3.5", "ten" → "10",
/// "2nd" → "2"), or None.
fn number_value(token: &str) -> Option<String> {
    const WORDS: &[(&str, u32)] = &[
        ("zero", 0),
        ("two", 2),
        ("three", 3),
        ("four", 4),
        ("five", 5),
        ("six", 6),
        ("seven", 7),
        ("eight", 8),
        ("nine", 9),
        ("ten", 10),
        ("eleven", 11),
        ("twelve", 12),
        ("thirteen", 13),
        ("fourteen", 14),
        ("fifteen", 15),
        ("sixteen", 16),
        ("seventeen", 17),
        ("eighteen", 18),
        ("nineteen", 19),
        ("twenty", 20),
        ("thirty", 30),
        ("forty", 40),
        ("fifty", 50),
        ("sixty", 60),
        ("seventy", 70),
        ("eighty", 80),
        ("ninety", 90),
        ("hundred", 100),
        ("thousand", 1000),
        ("million", 1_000_000),
        ("billion", 1_000_000_000),
        ("first", 1),
        ("second", 2),
        ("third", 3),
        ("fourth", 4),
        ("fifth", 5),
        ("sixth", 6),
        ("seventh", 7),
        ("eighth", 8),
        ("ninth", 9),
        ("tenth", 10),
    ];
    if let Some((_, v)) = WORDS.iter().find(|(w, _)| *w == token) {
        return Some(v.to_string());
    }
    let digits_end = token
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.' || *c == ','))
        .map(|(i, _)| i)
        .unwrap_or(token.len());
    let numeric = &token[..digits_end];
    if numeric.is_empty() || !numeric.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let suffix = &token[digits_end..];
    // "2nd", "10k", "5g", "3d", "1080p": the letters are part of what is asked, keep them.
    let plain: String = numeric.chars().filter(|c| *c != ',').collect();
    let plain = if plain.contains('.') {
        plain
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        plain.trim_start_matches('0').to_string()
    };
    let plain = if plain.is_empty() {
        "0".to_string()
    } else {
        plain
    };
    let suffix = match suffix {
        "st" | "nd" | "rd" | "th" => "",
        s => s,
    };
    Some(format!("{plain}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negation_is_vetoed() {
        assert_eq!(
            check(
                "How do I reset my password?",
                "How do I NOT reset my password?"
            ),
            GuardVerdict::Negation
        );
        assert_eq!(
            check("Why can't I log in?", "Why can I log in?"),
            GuardVerdict::Negation
        );
        assert_eq!(
            check("Why can’t I log in?", "Why cant I login?"),
            GuardVerdict::Pass
        );
    }

    #[test]
    fn different_numbers_are_vetoed() {
        assert_eq!(
            check(
                "What is a good score for 492 in NEET?",
                "Is 385 marks good in NEET 2016?"
            ),
            GuardVerdict::Numbers
        );
        assert_eq!(
            check("Who won the 2014 world cup?", "Who won the 2018 world cup?"),
            GuardVerdict::Numbers
        );
        assert_eq!(
            check("top ten movies", "the 10 best movies"),
            GuardVerdict::Pass
        );
        assert_eq!(
            check("costs 1,000 dollars", "costs 1000 dollars"),
            GuardVerdict::Pass
        );
        assert_eq!(check("version 3.50", "version 3.5"), GuardVerdict::Pass);
        assert_eq!(check("the 2nd law", "the second law"), GuardVerdict::Pass);
        assert_eq!(check("a 5g phone", "a 4g phone"), GuardVerdict::Numbers);
    }

    #[test]
    fn paraphrases_pass() {
        assert_eq!(
            check(
                "How do I reset my password?",
                "I forgot my password, how can I change it?"
            ),
            GuardVerdict::Pass
        );
        assert_eq!(check("", ""), GuardVerdict::Pass);
    }

    #[test]
    fn sentence_punctuation_is_not_a_number() {
        assert_eq!(check("Is it 5.", "Is it 5"), GuardVerdict::Pass);
        assert_eq!(
            check("I have 2, 3 apples", "I have 2 3 apples"),
            GuardVerdict::Pass
        );
    }

    #[test]
    fn a_pronoun_one_is_not_a_number() {
        assert_eq!(
            check(
                "How can I train my own model?",
                "How can one train their own model?"
            ),
            GuardVerdict::Pass
        );
        assert_eq!(check("one dog", "1 dog"), GuardVerdict::Pass);
        assert_eq!(check("one dog", "two dogs"), GuardVerdict::Numbers);
        assert_eq!(check("111 apples", "1111 apples"), GuardVerdict::Numbers);
        assert_eq!(check("version 2.3", "version 2.2.3"), GuardVerdict::Numbers);
    }

    #[test]
    fn whose_thing_it_is_matters() {
        assert_eq!(
            check("what is my name", "what is your name"),
            GuardVerdict::Roles
        );
        assert_eq!(
            check("what can you call me", "what can i call you"),
            GuardVerdict::Roles
        );
        assert_eq!(
            check("can you tell me my balance", "tell me my balance"),
            GuardVerdict::Pass
        );
        assert_eq!(
            check(
                "how do you set up direct deposit",
                "how do i set up direct deposit"
            ),
            GuardVerdict::Pass,
            "a generic 'you' as subject is not a role"
        );
    }

    #[test]
    fn a_reversed_relation_is_vetoed() {
        assert_eq!(
            check(
                "How do I convert ethanol to ethanoic acid?",
                "How do I convert ethanoic acid to ethanol?"
            ),
            GuardVerdict::Direction
        );
        assert_eq!(
            check(
                "move 100 dollars from checking to savings",
                "move 100 dollars from savings to checking"
            ),
            GuardVerdict::Direction
        );
        assert_eq!(
            check(
                "Cheapest flight from Boston to Denver",
                "Cheapest flight from Denver to Boston"
            ),
            GuardVerdict::Direction
        );
        assert_eq!(
            check(
                "i will be in uruguay from january to august, let my bank know",
                "let my bank know that i will be in uruguay from january to august"
            ),
            GuardVerdict::Pass,
            "moving a whole phrase keeps its relations"
        );
    }

    #[test]
    fn opposite_small_words_are_vetoed() {
        for (a, b) in [
            (
                "How do I turn on notifications?",
                "How do I turn off notifications?",
            ),
            ("How do I log in?", "How do I log out?"),
            ("How do I sign up?", "How can I sign in?"),
            (
                "Can I drink if I am over 21?",
                "Can I drink if I am under 21?",
            ),
            (
                "Should I eat before running?",
                "Should I eat after running?",
            ),
            (
                "transfer money to my savings",
                "transfer money from my savings",
            ),
            ("Do all cats purr?", "Do some cats purr?"),
            ("Which plan costs more?", "Which plan costs less?"),
            (
                "How do I get into the building?",
                "How do I get out of the building?",
            ),
            ("Will I be charged a fee?", "Was I charged a fee?"),
            ("When will the update ship?", "When did the update ship?"),
        ] {
            assert_eq!(check(a, b), GuardVerdict::Opposite, "{a} / {b}");
            assert_eq!(check(b, a), GuardVerdict::Opposite, "{b} / {a}");
        }
    }

    #[test]
    fn small_words_on_both_sides_or_unrelated_pass() {
        for (a, b) in [
            ("How do I turn on the light?", "How do I turn the light on?"),
            (
                "look up a word in the dictionary",
                "find a word in the dictionary",
            ),
            ("How to reset my password", "reset my password from the app"),
            (
                "How do I sort a list in Python?",
                "How to sort a list with Python?",
            ),
            (
                "What will happen if I miss a payment?",
                "What happens if I miss a payment?",
            ),
            (
                "Will I get a refund if I was charged twice?",
                "Do I get a refund if I was charged twice?",
            ),
        ] {
            assert_eq!(check(a, b), GuardVerdict::Pass, "{a} / {b}");
            assert_eq!(check(b, a), GuardVerdict::Pass, "{b} / {a}");
        }
        assert!(
            same("How do I turn on the light?", "how can I turn on the light"),
            "the lexical verifier still confirms a rewording"
        );
    }

    fn same(a: &str, b: &str) -> bool {
        Features::of(a).same_content(&Features::of(b))
    }

    #[test]
    fn language_names_keep_their_symbols() {
        assert!(!same(
            "How does it compare to C++?",
            "How does it compare to C#?"
        ));
        assert!(!same("Learn C++ fast", "Learn C fast"));
        assert!(same("the best books for c++?", "Best books for C++"));
        assert_eq!(check("what is 2+2", "what is 2 + 2"), GuardVerdict::Pass);
    }

    #[test]
    fn the_lexical_verifier_confirms_rewordings_only() {
        assert!(same(
            "How do I reset my password?",
            "How can I reset my password"
        ));
        assert!(same("resetting passwords", "reset password"));
        assert!(same(
            "What's the capital of France?",
            "what is the capital of france"
        ));
        assert!(!same(
            "How do I reset my password?",
            "How do I change my password?"
        ));
        assert!(
            !same("what do i go by", "what do you go by"),
            "persons differ"
        );
        assert!(
            !same(
                "Where is Martin O'Malley from?",
                "Who is Martin O'Malley from?"
            ),
            "who and where ask different things"
        );
        assert!(
            !same(
                "What percentage of Muslims are terrorists?",
                "What percentage of terrorists are Muslim?"
            ),
            "the same words in another order"
        );
        assert!(
            !same("Hello hello", "hello"),
            "content words count, not just occur"
        );
    }
}
