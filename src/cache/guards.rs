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
        }
    }
}

/// Lexical features of one prompt, computed once per query and compared with each candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    negated: bool,
    numbers: BTreeMap<String, u32>,
}

impl Features {
    pub fn of(text: &str) -> Features {
        let mut negated = false;
        let mut numbers = BTreeMap::new();
        for token in tokens(text) {
            if is_negation(&token) {
                negated = true;
            }
            if let Some(n) = number_value(&token) {
                *numbers.entry(n).or_insert(0) += 1;
            }
        }
        Features { negated, numbers }
    }

    pub fn compare(&self, other: &Features) -> GuardVerdict {
        if self.negated != other.negated {
            GuardVerdict::Negation
        } else if self.numbers != other.numbers {
            GuardVerdict::Numbers
        } else {
            GuardVerdict::Pass
        }
    }
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
        let keep = c.is_alphanumeric()
            || c == '\''
            || c == '\u{2019}'
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
        ("one", 1),
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
}
