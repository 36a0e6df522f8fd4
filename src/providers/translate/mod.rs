//! Faithful translation between the inbound API of a request ([`ApiKind`]) and the API of the
//! provider that answers it, so that a route can fall back across provider kinds (OpenAI →
//! Anthropic and back) while the server always receives answers in the client's own API.
//! Requests are translated before an attempt, answers after it: JSON bodies, error bodies (same
//! status, the inbound API's error shape) and SSE streams (event by event, never buffered whole).
//!
//! The rule is "translate or refuse": a parameter that would change the output and has no
//! equivalent on the other side is never dropped silently; the request is refused with
//! [`TranslateError::Untranslatable`] (the client gets a 400 naming the parameter) before any
//! upstream call. Parameters that cannot change the output (`store`, `metadata`,
//! `service_tier`, `prediction`, `parallel_tool_calls` without tools, `cache_control`) are
//! dropped. Pure functions over bytes and `api` wire types: no I/O, no clocks beyond `created`.
//!
//! # Layout
//! - [`request`]: OpenAI chat ⇄ Anthropic Messages request bodies.
//! - [`response`]: answer bodies both ways, finish reasons, usage, ids, error bodies.
//! - [`stream`]: SSE stream translators and the [`ByteStream`] adapter that drives them.
//! - [`responses`]: the Responses API through chat completions (and through chat to Anthropic).

pub mod request;
pub mod response;
pub mod responses;
pub mod stream;

use crate::api::anthropic::MessagesRequest;
use crate::api::openai::ChatCompletionRequest;
use crate::api::ApiKind;
use crate::providers::settings::ProviderKind;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

pub use request::{chat_to_messages, messages_to_chat, DEFAULT_MAX_TOKENS};
pub use response::{
    chat_json_to_messages, error_to_anthropic, error_to_openai, messages_json_to_chat,
};
pub use stream::{
    translate_stream, translate_stream_with, ChatToMessagesStream, MessagesToChatStream,
    StreamTranslate,
};

/// Why a body or a stream could not be translated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The request cannot be said faithfully in the provider's API. Client-facing (400).
    #[error("{0}")]
    Untranslatable(String),
    /// The upstream's answer carries something the inbound API cannot express, or is not the
    /// shape its API documents.
    #[error("{0}")]
    Unrepresentable(String),
    /// The upstream reported an error in the middle of a stream.
    #[error("upstream error event: {0}")]
    UpstreamError(String),
    /// The upstream stream ended before its terminal event.
    #[error("{0}")]
    Truncated(String),
    /// The upstream stream sent a line or an event over the provider's `max_event_bytes`.
    #[error("the upstream sent {0}")]
    Overflow(crate::providers::sse::SseOverflow),
}

/// How one provider takes a request in the `inbound` API: the API it is sent in. Equal to
/// `inbound` (`None` for pass-through) when no translation is needed.
pub fn upstream_api(
    kind: ProviderKind,
    inbound: Option<ApiKind>,
) -> Result<Option<ApiKind>, TranslateError> {
    let Some(inbound) = inbound else {
        return Ok(None);
    };
    match (kind, inbound) {
        (ProviderKind::OpenAi | ProviderKind::Azure, ApiKind::Messages) => Ok(Some(ApiKind::Chat)),
        (ProviderKind::Anthropic, ApiKind::Responses) => Ok(Some(ApiKind::Messages)),
        (ProviderKind::Gemini, ApiKind::Completions) => Err(TranslateError::Untranslatable(
            "the legacy completions API (`/v1/completions`) cannot be served by a Gemini \
             provider; use `/v1/chat/completions`"
                .to_string(),
        )),
        (ProviderKind::Gemini, _) => Ok(Some(ApiKind::Chat)),
        (ProviderKind::OpenAi | ProviderKind::Azure, api) => Ok(Some(api)),
        (ProviderKind::Anthropic, ApiKind::Chat | ApiKind::Messages) => Ok(Some(ApiKind::Messages)),
        (ProviderKind::Anthropic, ApiKind::Completions) => Err(TranslateError::Untranslatable(
            "the legacy completions API (`/v1/completions`) cannot be served by an Anthropic \
             provider; use `/v1/chat/completions` or `/v1/messages`"
                .to_string(),
        )),
    }
}

/// The name of an API in translation errors.
fn api_name(api: Option<ApiKind>) -> &'static str {
    match api {
        Some(ApiKind::Chat) => "openai_chat",
        Some(ApiKind::Completions) => "openai_completions",
        Some(ApiKind::Messages) => "anthropic_messages",
        Some(ApiKind::Responses) => "openai_responses",
        None => "passthrough",
    }
}

/// What the answer side of one translated attempt needs to know about its request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The client's API: answers are translated into it.
    pub inbound: ApiKind,
    /// The API sent upstream.
    pub upstream: ApiKind,
    /// OpenAI inbound stream: the client asked for the final usage chunk.
    pub include_usage: bool,
    /// A Responses request's body, whose parameters its `response` objects echo.
    pub request: Option<Map<String, Value>>,
}

/// The request body for a provider of `kind`: `None` when it takes `body` as is, else the
/// translated body and what its answer needs.
pub fn translate_request(
    kind: ProviderKind,
    inbound: Option<ApiKind>,
    body: &[u8],
) -> Result<Option<(Bytes, Translation)>, TranslateError> {
    let upstream = upstream_api(kind, inbound)?;
    if upstream == inbound {
        return Ok(None);
    }
    match (inbound, upstream) {
        (Some(inbound @ ApiKind::Chat), Some(upstream @ ApiKind::Messages)) => {
            let req: ChatCompletionRequest = parse_request(body, "chat completion")?;
            let out = chat_to_messages(&req)?;
            let translation = Translation {
                inbound,
                upstream,
                include_usage: req.include_usage(),
                request: None,
            };
            Ok(Some((to_bytes(&out)?, translation)))
        }
        (Some(inbound @ ApiKind::Messages), Some(upstream @ ApiKind::Chat)) => {
            let req: MessagesRequest = parse_request(body, "Messages")?;
            let out = messages_to_chat(&req)?;
            let translation = Translation {
                inbound,
                upstream,
                include_usage: false,
                request: None,
            };
            Ok(Some((to_bytes(&out)?, translation)))
        }
        (
            Some(inbound @ ApiKind::Responses),
            Some(upstream @ (ApiKind::Chat | ApiKind::Messages)),
        ) => {
            let request: Map<String, Value> = parse_request(body, "Responses")?;
            let chat = responses::responses_to_chat(&request)?;
            let out = match upstream {
                ApiKind::Messages => {
                    let req: ChatCompletionRequest = serde_json::from_value(chat).map_err(|e| {
                        TranslateError::Untranslatable(format!(
                            "the request has no chat-completions form: {e}"
                        ))
                    })?;
                    to_bytes(&chat_to_messages(&req)?)?
                }
                _ => to_bytes(&chat)?,
            };
            let translation = Translation {
                inbound,
                upstream,
                include_usage: true,
                request: Some(request),
            };
            Ok(Some((out, translation)))
        }
        _ => Err(TranslateError::Untranslatable(format!(
            "no translation from {} to {}",
            api_name(inbound),
            api_name(upstream)
        ))),
    }
}

impl Translation {
    /// A buffered answer (a 2xx body, or an error body of any status) in the inbound API.
    pub fn response_json(&self, status: u16, body: &[u8]) -> Result<Bytes, TranslateError> {
        let success = (200..300).contains(&status);
        let empty = Map::new();
        let request = self.request.as_ref().unwrap_or(&empty);
        match (self.inbound, success) {
            (ApiKind::Responses, true) if self.upstream == ApiKind::Messages => {
                responses::chat_json_to_responses(&messages_json_to_chat(body)?, request)
            }
            (ApiKind::Responses, true) => responses::chat_json_to_responses(body, request),
            (ApiKind::Chat, true) => messages_json_to_chat(body),
            (ApiKind::Messages, true) => chat_json_to_messages(body),
            (ApiKind::Messages, false) => Ok(error_to_anthropic(status, body)),
            (_, false) => Ok(error_to_openai(status, body)),
            (_, true) => Err(TranslateError::Unrepresentable(format!(
                "no answer translation into {}",
                api_name(Some(self.inbound))
            ))),
        }
    }

    /// The stream translator from the upstream's events into the inbound API's.
    pub fn stream_translator(&self) -> Box<dyn StreamTranslate> {
        match self.inbound {
            ApiKind::Responses => {
                let request = self.request.clone().unwrap_or_default();
                let to_responses = Box::new(responses::ChatToResponsesStream::new(request));
                match self.upstream {
                    ApiKind::Messages => Box::new(responses::Chained::new(
                        Box::new(MessagesToChatStream::new(true)),
                        to_responses,
                    )),
                    _ => to_responses,
                }
            }
            ApiKind::Messages => Box::new(ChatToMessagesStream::new()),
            _ => Box::new(MessagesToChatStream::new(self.include_usage)),
        }
    }
}

fn parse_request<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, TranslateError> {
    serde_json::from_slice(body).map_err(|e| {
        TranslateError::Untranslatable(format!("the body is not a valid {what} request: {e}"))
    })
}

pub(crate) fn to_bytes<T: Serialize>(v: &T) -> Result<Bytes, TranslateError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| TranslateError::Unrepresentable(format!("cannot encode the body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn api_per_kind() {
        use ApiKind::*;
        use ProviderKind::*;
        assert_eq!(upstream_api(OpenAi, Some(Chat)), Ok(Some(Chat)));
        assert_eq!(
            upstream_api(Azure, Some(Completions)),
            Ok(Some(Completions))
        );
        assert_eq!(upstream_api(Azure, Some(Messages)), Ok(Some(Chat)));
        assert_eq!(upstream_api(Azure, Some(Responses)), Ok(Some(Responses)));
        assert_eq!(upstream_api(Anthropic, Some(Chat)), Ok(Some(Messages)));
        assert_eq!(upstream_api(Anthropic, None), Ok(None));
        assert!(matches!(
            upstream_api(Anthropic, Some(Completions)),
            Err(TranslateError::Untranslatable(m)) if m.contains("completions")
        ));
    }

    #[test]
    fn native_requests_are_not_touched() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"n":3}"#;
        assert_eq!(
            translate_request(ProviderKind::OpenAi, Some(ApiKind::Chat), body),
            Ok(None)
        );
        assert_eq!(
            translate_request(ProviderKind::Anthropic, None, body),
            Ok(None)
        );
    }

    #[test]
    fn translated_request_and_error_answer() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],
                        "stream":true,"stream_options":{"include_usage":true}}"#;
        let (out, t) = translate_request(ProviderKind::Anthropic, Some(ApiKind::Chat), body)
            .unwrap()
            .unwrap();
        assert!(t.include_usage);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(v["stream"], true);
        let err = br#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#;
        let v: Value = serde_json::from_slice(&t.response_json(400, err).unwrap()).unwrap();
        assert_eq!(v["error"]["message"], "bad");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(translate_request(ProviderKind::Anthropic, Some(ApiKind::Chat), b"[1]").is_err());
        let bad = json!({"model":"m","messages":[{"role":"user","content":"x"}],"n":2});
        let bad = serde_json::to_vec(&bad).unwrap();
        assert!(matches!(
            translate_request(ProviderKind::Anthropic, Some(ApiKind::Chat), &bad),
            Err(TranslateError::Untranslatable(m)) if m.contains("`n`")
        ));
    }
}
