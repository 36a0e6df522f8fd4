//! The least a 2xx answer must be for deja to relay it as a success on an endpoint it
//! understands: valid JSON of the endpoint's documented shape (a chat completion has a
//! `choices` array of objects with a `message` object, a legacy completion a `choices` array of
//! objects, an Anthropic message a `content` array of objects). Anything else is an upstream
//! bug that the client's SDK would fail on with a confusing parse error, or worse, accept as an
//! empty answer; the provider reports it as [`ProviderErrorKind::BadResponse`] instead. The
//! check skips every other field without building it, so it allocates next to nothing.

use crate::providers::error::ProviderErrorKind;
use crate::providers::types::Dialect;
use serde::de::IgnoredAny;
use serde::Deserialize;

// The fields below are required by serde for the check and never read afterwards.

/// Any JSON object; its fields are skipped.
#[derive(Deserialize)]
struct Object {}

#[derive(Deserialize)]
#[allow(dead_code)]
struct ChatCompletion {
    choices: Vec<ChatChoice>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct ChatChoice {
    message: Object,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Completion {
    choices: Vec<Object>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Message {
    content: Vec<Object>,
}

/// Checks a 2xx body in `dialect` (the dialect the upstream was asked to speak). `Err` carries
/// the kind for clients and the parser's message for logs. Pass-through bodies are not checked.
pub(crate) fn check(dialect: Dialect, body: &[u8]) -> Result<(), (ProviderErrorKind, String)> {
    let (name, result) = match dialect {
        Dialect::Passthrough => return Ok(()),
        Dialect::OpenAiChat => (
            "a chat completion",
            serde_json::from_slice::<ChatCompletion>(body).map(drop),
        ),
        Dialect::OpenAiCompletions => (
            "a text completion",
            serde_json::from_slice::<Completion>(body).map(drop),
        ),
        Dialect::AnthropicMessages => (
            "a message",
            serde_json::from_slice::<Message>(body).map(drop),
        ),
    };
    result.map_err(|e| {
        let what = if is_json(body) {
            format!("not {name}")
        } else {
            "not valid JSON".to_string()
        };
        (ProviderErrorKind::BadResponse { what }, e.to_string())
    })
}

/// Whether `body` is JSON at all (to tell broken JSON from the wrong shape).
fn is_json(body: &[u8]) -> bool {
    serde_json::from_slice::<IgnoredAny>(body).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn what(dialect: Dialect, body: &str) -> Option<String> {
        match check(dialect, body.as_bytes()) {
            Ok(()) => None,
            Err((ProviderErrorKind::BadResponse { what }, _)) => Some(what),
            Err((other, _)) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn issue12_wrong_shape_and_broken_json_are_told_apart() {
        let chat = r#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{}}"#;
        assert_eq!(what(Dialect::OpenAiChat, chat), None);
        assert_eq!(what(Dialect::OpenAiChat, r#"{"choices":[]}"#), None);
        assert_eq!(
            what(
                Dialect::OpenAiChat,
                r#"{"choices":[{"message":{"content":"x"}"#
            )
            .as_deref(),
            Some("not valid JSON")
        );
        for wrong in [
            r#"{"object":"list","data":[]}"#,
            r#"{"choices":"many"}"#,
            r#"{"choices":[{"text":"hi"}]}"#,
            r#"[1,2]"#,
            r#""a string""#,
            r#"{"error":{"message":"oops"}}"#,
        ] {
            assert_eq!(
                what(Dialect::OpenAiChat, wrong).as_deref(),
                Some("not a chat completion"),
                "{wrong}"
            );
        }
        assert_eq!(
            what(Dialect::OpenAiCompletions, r#"{"choices":[{"text":"hi"}]}"#),
            None
        );
        assert_eq!(
            what(Dialect::OpenAiCompletions, r#"{"id":"x"}"#).as_deref(),
            Some("not a text completion")
        );
        let message = r#"{"type":"message","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn"}"#;
        assert_eq!(what(Dialect::AnthropicMessages, message), None);
        assert_eq!(
            what(
                Dialect::AnthropicMessages,
                r#"{"type":"message","content":"hi"}"#
            )
            .as_deref(),
            Some("not a message")
        );
        assert_eq!(what(Dialect::Passthrough, "not json"), None);
    }
}
