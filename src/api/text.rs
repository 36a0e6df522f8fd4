//! The text of a message's content, one rule for every API: a string is its own text; a list
//! of parts is text only when every part is text, and its parts are joined with [`PART_SEPARATOR`]
//! (so the exact key, the embedding, token estimates and translations all see the same prompt).
//! Anything that is not text (an image, audio, a file, a tool call or result) makes the content
//! "not text" (`None`), which callers turn into a bypass or a refusal. Answers are different:
//! streamed deltas concatenate, so answer text is joined with nothing (see `collect`).

use serde_json::Value;

/// Between the text parts of one message.
pub const PART_SEPARATOR: &str = "\n";

/// Joins text parts; `None` as soon as one part is not text, or when there are none.
pub fn join_parts<'a>(parts: impl IntoIterator<Item = Option<&'a str>>) -> Option<String> {
    let mut out: Option<String> = None;
    for part in parts {
        let text = part?;
        match &mut out {
            None => out = Some(text.to_string()),
            Some(s) => {
                s.push_str(PART_SEPARATOR);
                s.push_str(text);
            }
        }
    }
    out
}

/// The text of a raw JSON `content`: a string, or an array of `{"type":"text","text":…}` parts.
pub fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => join_parts(parts.iter().map(|p| {
            match (p.get("type").and_then(Value::as_str), p.get("text")) {
                (Some("text"), Some(Value::String(t))) => Some(t.as_str()),
                _ => None,
            }
        })),
        _ => None,
    }
}

/// The text parts of a raw JSON `content`, whatever else it carries (for token estimates:
/// images are priced separately and never counted here).
pub fn content_text_lenient(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| match p {
                    Value::String(s) => Some(s.as_str()),
                    other => other.get("text").and_then(Value::as_str),
                })
                .collect();
            texts.join(PART_SEPARATOR)
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_and_text_parts_have_one_join_rule() {
        assert_eq!(content_text(&json!("a b")).as_deref(), Some("a b"));
        let parts = json!([{"type":"text","text":"a"},{"type":"text","text":"b"}]);
        assert_eq!(content_text(&parts).as_deref(), Some("a\nb"));
        assert_eq!(content_text_lenient(&parts), "a\nb");
    }

    #[test]
    fn any_non_text_part_makes_content_not_text() {
        let mixed =
            json!([{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}}]);
        assert_eq!(content_text(&mixed), None);
        assert_eq!(content_text(&json!([])), None);
        assert_eq!(content_text(&json!(null)), None);
        assert_eq!(content_text(&json!([{"type":"text","text":7}])), None);
        assert_eq!(content_text_lenient(&mixed), "a");
    }
}
