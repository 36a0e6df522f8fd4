//! Personal data in prompts and answers (issue 16). A semantic cache can serve one user's
//! answer to another, so personal data must never enter a shared cache. This module finds it
//! ([`detect`]: e-mail addresses, phone numbers, payment cards, IBANs, US SSNs, IP addresses,
//! API keys and tokens) in the text of a request body (every message's text, Anthropic's
//! `system`, a completion's `prompt`) or of an answer, and replaces it with numbered
//! placeholders and back ([`redact`]). What the proxy does with a finding (`[pii] mode`) is
//! decided in `server::flow` and `cache::miss`; this module never logs or counts values, only
//! kinds.

pub mod detect;
pub mod redact;
pub mod stream;

use serde_json::{Map, Value};

pub use detect::{find_all, Finding};
pub use redact::Redaction;

/// What a detector found. The label is the metric label, the placeholder's prefix and the name
/// a `block` error gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiKind {
    Email,
    Phone,
    Card,
    Iban,
    Ssn,
    Ip,
    Secret,
}

impl PiiKind {
    pub const ALL: [PiiKind; 7] = [
        PiiKind::Email,
        PiiKind::Phone,
        PiiKind::Card,
        PiiKind::Iban,
        PiiKind::Ssn,
        PiiKind::Ip,
        PiiKind::Secret,
    ];

    pub fn label(self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::Card => "card",
            PiiKind::Iban => "iban",
            PiiKind::Ssn => "ssn",
            PiiKind::Ip => "ip",
            PiiKind::Secret => "secret",
        }
    }

    /// The placeholder's prefix: `[EMAIL_1]`.
    fn tag(self) -> &'static str {
        match self {
            PiiKind::Email => "EMAIL",
            PiiKind::Phone => "PHONE",
            PiiKind::Card => "CARD",
            PiiKind::Iban => "IBAN",
            PiiKind::Ssn => "SSN",
            PiiKind::Ip => "IP",
            PiiKind::Secret => "SECRET",
        }
    }
}

/// The kinds found in `texts`, each once, in [`PiiKind::ALL`] order, with how many values of
/// each.
pub fn kinds_in<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<(PiiKind, usize)> {
    let mut counts = [0usize; PiiKind::ALL.len()];
    for t in texts {
        for f in find_all(t) {
            counts[f.kind as usize] += 1;
        }
    }
    PiiKind::ALL
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (*k, n))
        .collect()
}

/// Every text of a validated request body the cache or the upstream model reads as prose: each
/// message's string content or text parts (chat and messages), Anthropic's `system` (a string
/// or text blocks), the legacy completion `prompt` (a string or strings).
pub fn request_texts(body: &Map<String, Value>) -> Vec<&str> {
    let mut out = Vec::new();
    visit(body, &mut |s: &str| out.push(s));
    out
}

fn visit<'a>(body: &'a Map<String, Value>, f: &mut impl FnMut(&'a str)) {
    fn content<'a>(v: &'a Value, f: &mut impl FnMut(&'a str)) {
        match v {
            Value::String(s) => f(s),
            Value::Array(parts) => {
                for p in parts {
                    match p {
                        Value::String(s) => f(s),
                        other => {
                            if let Some(Value::String(t)) = other.get("text") {
                                f(t);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(Value::Array(messages)) = body.get("messages") {
        for m in messages {
            if let Some(c) = m.get("content") {
                content(c, f);
            }
        }
    }
    for key in ["system", "prompt", "instructions"] {
        if let Some(v) = body.get(key) {
            content(v, f);
        }
    }
    // The Responses API: `input` is a string or a list of items (messages with `content`,
    // tool results with `output`).
    match body.get("input") {
        Some(Value::String(s)) => f(s),
        Some(Value::Array(items)) => {
            for item in items {
                if let Some(c) = item.get("content") {
                    content(c, f);
                }
                if let Some(Value::String(o)) = item.get("output") {
                    f(o);
                }
            }
        }
        _ => {}
    }
}

/// The mutable twin of [`request_texts`]: the same strings, in the same order.
pub(crate) fn for_each_text_mut(body: &mut Map<String, Value>, f: &mut impl FnMut(&mut String)) {
    fn content(v: &mut Value, f: &mut impl FnMut(&mut String)) {
        match v {
            Value::String(s) => f(s),
            Value::Array(parts) => {
                for p in parts {
                    match p {
                        Value::String(s) => f(s),
                        Value::Object(o) => {
                            if let Some(Value::String(t)) = o.get_mut("text") {
                                f(t);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(Value::Array(messages)) = body.get_mut("messages") {
        for m in messages {
            if let Some(c) = m.get_mut("content") {
                content(c, f);
            }
        }
    }
    for key in ["system", "prompt", "instructions"] {
        if let Some(v) = body.get_mut(key) {
            content(v, f);
        }
    }
    match body.get_mut("input") {
        Some(Value::String(s)) => f(s),
        Some(Value::Array(items)) => {
            for item in items {
                if let Some(c) = item.get_mut("content") {
                    content(c, f);
                }
                if let Some(Value::String(o)) = item.get_mut("output") {
                    f(o);
                }
            }
        }
        _ => {}
    }
}

/// `email, card`: the kinds for an error message or a log line (never the values).
pub fn describe(kinds: &[(PiiKind, usize)]) -> String {
    kinds
        .iter()
        .map(|(k, _)| k.label())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn responses_api_input_and_instructions_are_screened_and_redacted() {
        let mut body = json!({
            "model": "m",
            "instructions": "reply to ann@example.com",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "card 4111 1111 1111 1111"}]},
                {"type": "function_call_output", "call_id": "c1", "output": "ip 8.8.8.8"},
            ],
        })
        .as_object()
        .unwrap()
        .clone();
        let texts = request_texts(&body);
        assert_eq!(texts.len(), 3, "{texts:?}");
        let plain = json!({"model": "m", "input": "mail bob@example.com"});
        assert_eq!(
            request_texts(plain.as_object().unwrap()),
            ["mail bob@example.com"]
        );
        let mut seen = 0;
        for_each_text_mut(&mut body, &mut |_s: &mut String| seen += 1);
        assert_eq!(seen, 3, "the mutable walk visits the same strings");
    }

    #[test]
    fn request_texts_cover_every_prose_field_and_only_those() {
        let body = json!({
            "model": "m",
            "user": "jane@example.com",
            "system": [{"type": "text", "text": "sys 10.0.0.1"}],
            "messages": [
                {"role": "user", "content": "mail jane@example.com"},
                {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
                {"role": "user", "content": [{"type": "text", "text": "call 415-555-0132"}]}
            ]
        });
        let body = body.as_object().unwrap();
        let texts = request_texts(body);
        assert_eq!(
            texts,
            [
                "mail jane@example.com",
                "ok",
                "call 415-555-0132",
                "sys 10.0.0.1"
            ]
        );
        // `user` is metadata, neither cached nor sent to the model as text.
        assert_eq!(
            kinds_in(texts),
            [(PiiKind::Email, 1), (PiiKind::Phone, 1), (PiiKind::Ip, 1)]
        );
        let mut owned = body.clone();
        let mut n = 0;
        for_each_text_mut(&mut owned, &mut |_| n += 1);
        assert_eq!(n, 4);
    }

    #[test]
    fn completion_prompts_are_read() {
        let body = json!({"model": "m", "prompt": ["ssn 123-45-6789"]});
        let k = kinds_in(request_texts(body.as_object().unwrap()));
        assert_eq!(k, [(PiiKind::Ssn, 1)]);
        assert_eq!(describe(&k), "ssn");
    }
}
