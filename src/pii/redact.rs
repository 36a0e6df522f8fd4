//! `[pii] mode = "redact"`: each value found in a request's texts is replaced by a numbered
//! placeholder (`[EMAIL_1]`, `[PHONE_2]`) before the cache and the upstream see the request,
//! and the placeholders are replaced by the values again in the answer this client receives.
//! The same value gets the same placeholder throughout a request, and numbering follows the
//! order of first appearance, so two users who ask the same thing about their own e-mail
//! address send the same redacted prompt and share the cached answer, each getting their own
//! address back.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{find_all, for_each_text_mut, PiiKind};

/// A placeholder is `[` + tag + `_` + number + `]`: never longer than this.
const MAX_PLACEHOLDER_LEN: usize = 20;

/// The values one request's placeholders stand for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Redaction {
    /// placeholder → value.
    values: HashMap<String, String>,
    /// (kind, value) → placeholder, while redacting.
    by_value: HashMap<(PiiKind, String), String>,
    next: [usize; PiiKind::ALL.len()],
    /// How many values of each kind were replaced (for metrics; never the values).
    pub counts: [usize; PiiKind::ALL.len()],
}

impl Redaction {
    /// Redacts every text of a validated request body in place (see [`super::request_texts`]).
    pub fn redact_body(body: &mut Map<String, Value>) -> Redaction {
        let mut r = Redaction::default();
        for_each_text_mut(body, &mut |s: &mut String| {
            if let Some(out) = r.redact_text(s) {
                *s = out;
            }
        });
        r
    }

    /// The text with its values replaced, or `None` when it has none.
    fn redact_text(&mut self, text: &str) -> Option<String> {
        let found = find_all(text);
        if found.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in found {
            out.push_str(&text[at..f.start]);
            let value = &text[f.start..f.end];
            let key = (f.kind, value.to_string());
            let placeholder = match self.by_value.get(&key) {
                Some(p) => p.clone(),
                None => {
                    let n = &mut self.next[f.kind as usize];
                    *n += 1;
                    let p = format!("[{}_{}]", f.kind.tag(), n);
                    self.values.insert(p.clone(), value.to_string());
                    self.by_value.insert(key, p.clone());
                    p
                }
            };
            self.counts[f.kind as usize] += 1;
            out.push_str(&placeholder);
            at = f.end;
        }
        out.push_str(&text[at..]);
        Some(out)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The kinds replaced and how many values of each.
    pub fn kinds(&self) -> Vec<(PiiKind, usize)> {
        PiiKind::ALL
            .iter()
            .zip(self.counts)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (*k, n))
            .collect()
    }

    /// `text` with this request's placeholders replaced by their values. `escape` turns a
    /// value into what stands in its place (identity for text, JSON string escaping for a
    /// JSON body). One pass: each `[` is looked up once.
    fn restore_with(&self, text: &str, escape: impl Fn(&str) -> String) -> String {
        if self.values.is_empty() || !text.contains('[') {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..open]);
            let tail = &rest[open..];
            let close = tail
                .char_indices()
                .take_while(|(i, _)| *i < MAX_PLACEHOLDER_LEN)
                .find(|(_, c)| *c == ']')
                .map(|(i, _)| i);
            match close.and_then(|c| self.values.get(&tail[..=c]).map(|v| (c, v))) {
                Some((c, value)) => {
                    out.push_str(&escape(value));
                    rest = &tail[c + 1..];
                }
                None => {
                    out.push('[');
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Where the text that may still become one of this request's placeholders starts (the
    /// text's length when none may): a trailing `[EMAIL` is held, `[x` or `[` + 30 bytes is not.
    pub fn hold_from(&self, text: &str) -> usize {
        let Some(open) = text.rfind('[') else {
            return text.len();
        };
        let tail = &text[open..];
        // Only a proper prefix is held: a whole placeholder is restored at once.
        if tail.len() < MAX_PLACEHOLDER_LEN
            && self
                .values
                .keys()
                .any(|p| p.len() > tail.len() && p.starts_with(tail))
        {
            open
        } else {
            text.len()
        }
    }

    /// An answer's text with the values restored.
    pub fn restore(&self, text: &str) -> String {
        self.restore_with(text, str::to_string)
    }

    /// A JSON answer body with the values restored inside its strings. Placeholders contain
    /// no character JSON escapes, so they appear verbatim in the body; each value is written
    /// JSON-escaped. A body that is not UTF-8 is returned unchanged.
    pub fn restore_json(&self, body: &Bytes) -> Bytes {
        if self.values.is_empty() {
            return body.clone();
        }
        let Ok(text) = std::str::from_utf8(body) else {
            return body.clone();
        };
        let out = self.restore_with(text, |v| {
            let quoted = serde_json::to_string(v).unwrap_or_default();
            quoted
                .get(1..quoted.len().saturating_sub(1))
                .unwrap_or_default()
                .to_string()
        });
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn values_become_numbered_placeholders_and_come_back() {
        let mut b = body(json!({"model": "m", "messages": [
            {"role": "system", "content": "user is jane@example.com"},
            {"role": "user", "content": "Mail jane@example.com and bob@example.org, call +1 415 555 0132"}
        ]}));
        let r = Redaction::redact_body(&mut b);
        assert_eq!(b["messages"][0]["content"], "user is [EMAIL_1]");
        assert_eq!(
            b["messages"][1]["content"],
            "Mail [EMAIL_1] and [EMAIL_2], call [PHONE_1]"
        );
        assert_eq!(r.kinds(), [(PiiKind::Email, 3), (PiiKind::Phone, 1)]);
        assert_eq!(
            r.restore("Sent to [EMAIL_2]; [EMAIL_1] copied. [EMAIL_3] [x] [EMAIL_1"),
            "Sent to bob@example.org; jane@example.com copied. [EMAIL_3] [x] [EMAIL_1"
        );
        let json = Bytes::from_static(br#"{"content":"reach [PHONE_1]"}"#);
        assert_eq!(
            r.restore_json(&json),
            Bytes::from_static(br#"{"content":"reach +1 415 555 0132"}"#)
        );
    }

    #[test]
    fn two_users_send_the_same_redacted_prompt() {
        let ask = |email: &str| {
            let mut b = body(json!({"model": "m", "messages": [
                {"role": "user", "content": format!("Write a welcome note to {email}")}
            ]}));
            let r = Redaction::redact_body(&mut b);
            (b, r)
        };
        let (a, ra) = ask("ann@example.com");
        let (b, rb) = ask("ben@example.net");
        assert_eq!(a, b);
        assert_eq!(ra.restore("Hi [EMAIL_1]"), "Hi ann@example.com");
        assert_eq!(rb.restore("Hi [EMAIL_1]"), "Hi ben@example.net");
    }

    #[test]
    fn values_needing_json_escapes_are_escaped() {
        let mut r = Redaction::default();
        r.values.insert("[SECRET_1]".into(), "a\"b\\c".into());
        let out = r.restore_json(&Bytes::from_static(br#"{"t":"[SECRET_1]"}"#));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["t"], "a\"b\\c");
    }

    #[test]
    fn clean_bodies_are_untouched() {
        let mut b = body(json!({"model": "m", "messages": [
            {"role": "user", "content": "What is 15% of 80?"}
        ]}));
        let before = b.clone();
        let r = Redaction::redact_body(&mut b);
        assert!(r.is_empty());
        assert_eq!(b, before);
    }
}
