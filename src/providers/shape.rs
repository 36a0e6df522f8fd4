//! The least a 2xx answer must be for deja to relay it as a success on an endpoint it
//! understands: valid JSON of the endpoint's documented shape (a chat completion has a
//! `choices` array of objects with a `message` object, a legacy completion a `choices` array of
//! objects, an Anthropic message a `content` array of objects, a Responses
//! answer an `output` array of objects). Anything else is an upstream
//! bug that the client's SDK would fail on with a confusing parse error, or worse, accept as an
//! empty answer; the provider reports it as [`ProviderErrorKind::BadResponse`] instead. The
//! check skips every other field without building it, so it allocates next to nothing.

use crate::api::ApiKind;
use crate::providers::error::ProviderErrorKind;
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

#[derive(Deserialize)]
#[allow(dead_code)]
struct Response {
    output: Vec<Object>,
}

/// Checks a 2xx body in `api` (the API the upstream was asked to speak). `Err` carries the kind
/// for clients and the parser's message for logs. Pass-through bodies (`None`) are not checked.
pub(crate) fn check(api: Option<ApiKind>, body: &[u8]) -> Result<(), (ProviderErrorKind, String)> {
    let Some(api) = api else {
        return Ok(());
    };
    let (name, result) = match api {
        ApiKind::Chat => (
            "a chat completion",
            serde_json::from_slice::<ChatCompletion>(body).map(drop),
        ),
        ApiKind::Completions => (
            "a text completion",
            serde_json::from_slice::<Completion>(body).map(drop),
        ),
        ApiKind::Messages => (
            "a message",
            serde_json::from_slice::<Message>(body).map(drop),
        ),
        ApiKind::Responses => (
            "a response",
            serde_json::from_slice::<Response>(body).map(drop),
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

    fn what(api: Option<ApiKind>, body: &str) -> Option<String> {
        match check(api, body.as_bytes()) {
            Ok(()) => None,
            Err((ProviderErrorKind::BadResponse { what }, _)) => Some(what),
            Err((other, _)) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn issue12_wrong_shape_and_broken_json_are_told_apart() {
        let chat = r#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{}}"#;
        assert_eq!(what(Some(ApiKind::Chat), chat), None);
        assert_eq!(what(Some(ApiKind::Chat), r#"{"choices":[]}"#), None);
        assert_eq!(
            what(
                Some(ApiKind::Chat),
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
                what(Some(ApiKind::Chat), wrong).as_deref(),
                Some("not a chat completion"),
                "{wrong}"
            );
        }
        assert_eq!(
            what(Some(ApiKind::Completions), r#"{"choices":[{"text":"hi"}]}"#),
            None
        );
        assert_eq!(
            what(Some(ApiKind::Completions), r#"{"id":"x"}"#).as_deref(),
            Some("not a text completion")
        );
        let message = r#"{"type":"message","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn"}"#;
        assert_eq!(what(Some(ApiKind::Messages), message), None);
        assert_eq!(
            what(
                Some(ApiKind::Messages),
                r#"{"type":"message","content":"hi"}"#
            )
            .as_deref(),
            Some("not a message")
        );
        assert_eq!(what(None, "not json"), None);
    }
}
