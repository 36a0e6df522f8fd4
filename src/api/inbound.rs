//! Per-API dispatch for the cached endpoints: one place that knows, for each [`ApiKind`], how to
//! validate a body, render a hit, and collect an upstream answer. The server's flow calls these
//! and never matches on wire formats itself.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::api::anthropic::{self, MessagesStreamCollector};
use crate::api::canonical::ApiKind;
use crate::api::collect::{self, ChatStreamCollector, CompletionStreamCollector, NotCacheable};
use crate::api::error::{ApiError, Dialect};
use crate::api::{parse, render};
use crate::store::CachedResponse;

impl ApiKind {
    /// Path appended to a provider's base URL for this API.
    pub fn upstream_path(&self) -> &'static str {
        match self {
            ApiKind::Chat => "/chat/completions",
            ApiKind::Completions => "/completions",
            ApiKind::Messages => "/messages",
        }
    }

    /// Which error body shape the client's SDK expects.
    pub fn dialect(&self) -> Dialect {
        match self {
            ApiKind::Chat | ApiKind::Completions => Dialect::OpenAi,
            ApiKind::Messages => Dialect::Anthropic,
        }
    }
}

/// Validates the body against the API's wire types (precise 400s with field paths) and returns
/// it as a JSON object for the canonical request. The body itself is forwarded untouched.
pub fn parse_request(api: ApiKind, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match api {
        ApiKind::Chat => parse::validate_chat(&parse::parse_chat_request(body)?)?,
        ApiKind::Completions => {
            parse::parse_completion_request(body)?;
        }
        ApiKind::Messages => {
            parse::parse_messages_request(body)?;
        }
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid_request(
            "the request body must be a JSON object",
            None,
        )),
        Err(e) => Err(ApiError::InvalidJson {
            message: e.to_string(),
        }),
    }
}

/// A rendered cache hit.
pub enum Rendered {
    Json(Bytes),
    /// SSE events, each a complete `data: …\n\n` (or `event: …\ndata: …\n\n`) frame.
    Sse(Vec<Bytes>),
}

/// Renders a stored answer as this API's response, with a fresh id and timestamp.
pub fn render_hit(
    api: ApiKind,
    resp: &CachedResponse,
    stream: bool,
    include_usage: bool,
    model_requested: &str,
) -> Rendered {
    let model = Some(model_requested);
    match (api, stream) {
        (ApiKind::Chat, false) => Rendered::Json(render::render_chat_json(
            resp,
            &render::new_chat_id(),
            render::unix_now(),
            model,
        )),
        (ApiKind::Chat, true) => Rendered::Sse(render::render_chat_sse(
            resp,
            &render::new_chat_id(),
            render::unix_now(),
            model,
            include_usage,
        )),
        (ApiKind::Completions, false) => Rendered::Json(render::render_completion_json(
            resp,
            &render::new_completion_id(),
            render::unix_now(),
            model,
        )),
        (ApiKind::Completions, true) => Rendered::Sse(render::render_completion_sse(
            resp,
            &render::new_completion_id(),
            render::unix_now(),
            model,
            include_usage,
        )),
        (ApiKind::Messages, false) => Rendered::Json(anthropic::render_messages_json(
            resp,
            &anthropic::new_message_id(),
            model,
        )),
        (ApiKind::Messages, true) => Rendered::Sse(anthropic::render_messages_sse(
            resp,
            &anthropic::new_message_id(),
            model,
        )),
    }
}

/// Collects a buffered (non-streaming) upstream answer.
pub fn collect_json(
    api: ApiKind,
    body: &[u8],
    provider: &str,
) -> Result<CachedResponse, NotCacheable> {
    match api {
        ApiKind::Chat => collect::collect_chat_json(body, provider),
        ApiKind::Completions => collect::collect_completion_json(body, provider),
        ApiKind::Messages => anthropic::collect_messages_json(body, provider),
    }
}

/// Collects a streamed upstream answer from its SSE events.
pub enum StreamCollector {
    Chat(ChatStreamCollector),
    Completions(CompletionStreamCollector),
    Messages(MessagesStreamCollector),
}

impl StreamCollector {
    pub fn new(api: ApiKind, provider: &str) -> StreamCollector {
        match api {
            ApiKind::Chat => StreamCollector::Chat(ChatStreamCollector::new(provider)),
            ApiKind::Completions => {
                StreamCollector::Completions(CompletionStreamCollector::new(provider))
            }
            ApiKind::Messages => StreamCollector::Messages(MessagesStreamCollector::new(provider)),
        }
    }

    pub fn push_event_data(&mut self, data: &str) {
        match self {
            StreamCollector::Chat(c) => c.push_event_data(data),
            StreamCollector::Completions(c) => c.push_event_data(data),
            StreamCollector::Messages(c) => c.push_event_data(data),
        }
    }

    pub fn finish(self) -> Result<CachedResponse, NotCacheable> {
        match self {
            StreamCollector::Chat(c) => c.finish(),
            StreamCollector::Completions(c) => c.finish(),
            StreamCollector::Messages(c) => c.finish(),
        }
    }
}

/// A low-cardinality label for metrics.
pub fn not_cacheable_label(reason: &NotCacheable) -> &'static str {
    match reason {
        NotCacheable::Malformed(_) => "malformed",
        NotCacheable::UpstreamError => "upstream_error",
        NotCacheable::NoChoices => "no_choices",
        NotCacheable::MultipleChoices => "multiple_choices",
        NotCacheable::ToolCalls => "tool_calls",
        NotCacheable::Refusal => "refusal",
        NotCacheable::NoContent => "no_content",
        NotCacheable::FinishReason(_) => "finish_reason",
        NotCacheable::Unrepresentable(_) => "unrepresentable",
        NotCacheable::Truncated => "truncated",
        NotCacheable::TooLarge(_) => "too_large",
    }
}
