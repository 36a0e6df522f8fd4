//! Per-API dispatch for the cached endpoints: one place that knows, for each [`ApiKind`], how to
//! validate a body, render a hit, collect an upstream answer, and tee a stream ([`StreamTee`]:
//! bounded parsing and collecting, and the error event a client needs when a stream breaks).
//! The server's flow calls these and never matches on wire formats itself.

use bytes::{Bytes, BytesMut};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::anthropic::{self, MessagesStreamCollector};
use crate::api::collect::{self, ChatStreamCollector, CompletionStreamCollector, NotCacheable};
use crate::api::error::ApiError;
use crate::api::responses::{self, ResponsesStreamCollector};
use crate::api::sse::{self, SseEvent, SseParser};
use crate::api::{parse, render, ApiKind};
use crate::providers::{ProviderError, ProviderErrorKind, SseOverflow};
use crate::store::CachedResponse;

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
        ApiKind::Responses => {}
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) if api == ApiKind::Responses => {
            responses::validate(&m)?;
            Ok(m)
        }
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

/// Renders a stored answer as this API's response, with a fresh id and timestamp. `request` is
/// the client's body, for the APIs whose answers echo its parameters (Responses).
pub fn render_hit(
    api: ApiKind,
    resp: &CachedResponse,
    stream: bool,
    include_usage: bool,
    model_requested: &str,
    request: &Map<String, Value>,
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
        (ApiKind::Responses, false) => Rendered::Json(responses::render_responses_json(
            resp,
            &responses::new_response_id(),
            render::unix_now(),
            model_requested,
            request,
        )),
        (ApiKind::Responses, true) => Rendered::Sse(responses::render_responses_sse(
            resp,
            &responses::new_response_id(),
            render::unix_now(),
            model_requested,
            request,
        )),
    }
}

/// Collects a buffered (non-streaming) upstream answer. A body over `max_entry_bytes` is not
/// parsed: its text may be smaller, but the entry would be bounded by nothing.
pub fn collect_json(
    api: ApiKind,
    body: &[u8],
    provider: &str,
    max_entry_bytes: usize,
) -> Result<CachedResponse, NotCacheable> {
    if body.len() > max_entry_bytes {
        return Err(NotCacheable::TooLarge(max_entry_bytes));
    }
    match api {
        ApiKind::Chat => collect::collect_chat_json(body, provider),
        ApiKind::Completions => collect::collect_completion_json(body, provider),
        ApiKind::Messages => anthropic::collect_messages_json(body, provider),
        ApiKind::Responses => responses::collect_responses_json(body, provider),
    }
}

/// Collects a streamed upstream answer from its SSE events.
pub enum StreamCollector {
    Chat(ChatStreamCollector),
    Completions(CompletionStreamCollector),
    Messages(MessagesStreamCollector),
    Responses(ResponsesStreamCollector),
}

impl StreamCollector {
    /// A collector that gives up (`TooLarge`) once the text passes `max_entry_bytes`.
    pub fn new(api: ApiKind, provider: &str, max_entry_bytes: usize) -> StreamCollector {
        let max = max_entry_bytes;
        match api {
            ApiKind::Chat => StreamCollector::Chat(ChatStreamCollector::with_limit(provider, max)),
            ApiKind::Completions => {
                StreamCollector::Completions(CompletionStreamCollector::with_limit(provider, max))
            }
            ApiKind::Messages => {
                StreamCollector::Messages(MessagesStreamCollector::with_limit(provider, max))
            }
            ApiKind::Responses => {
                StreamCollector::Responses(ResponsesStreamCollector::with_limit(provider, max))
            }
        }
    }

    /// Why the answer already became uncacheable, if it did (it holds no text from then on).
    pub fn failed(&self) -> Option<&NotCacheable> {
        match self {
            StreamCollector::Chat(c) => c.failed(),
            StreamCollector::Completions(c) => c.failed(),
            StreamCollector::Messages(c) => c.failed(),
            StreamCollector::Responses(c) => c.failed(),
        }
    }

    pub fn push_event_data(&mut self, data: &str) {
        match self {
            StreamCollector::Chat(c) => c.push_event_data(data),
            StreamCollector::Completions(c) => c.push_event_data(data),
            StreamCollector::Messages(c) => c.push_event_data(data),
            StreamCollector::Responses(c) => c.push_event_data(data),
        }
    }

    /// A Responses stream's finished `response` object, once seen (once).
    pub fn take_response(&mut self) -> Option<Value> {
        match self {
            StreamCollector::Responses(c) => c.take_response(),
            _ => None,
        }
    }

    pub fn finish(self) -> Result<CachedResponse, NotCacheable> {
        match self {
            StreamCollector::Chat(c) => c.finish(),
            StreamCollector::Completions(c) => c.finish(),
            StreamCollector::Messages(c) => c.finish(),
            StreamCollector::Responses(c) => c.finish(),
        }
    }
}

/// How the upstream side of a teed stream ended.
#[derive(Debug)]
pub enum StreamEnd<'a> {
    /// The upstream closed the stream.
    Finished,
    /// The upstream stream failed (cut, timed out, over a cap).
    Failed(&'a ProviderError),
    /// The tee stopped reading: the client left and the answer could not be cached.
    Abandoned,
}

/// The server's tee of one upstream stream. It parses the upstream's bytes (each line and
/// event capped at `max_event_bytes`), relays them in whole events only (the bytes of an event
/// still arriving are held back, so a client is never left holding half of one), collects the
/// answer (capped at `max_entry_bytes`), and tracks whether the stream reached its terminator
/// (`data: [DONE]`, `message_stop`) or an in-stream error already told the client it failed.
/// At the end it says what the client still needs: nothing, or the error event the provider
/// would have sent (OpenAI `data: {"error":…}`, Anthropic `event: error`), so that a broken
/// stream never looks complete.
pub struct StreamTee {
    api: ApiKind,
    provider: String,
    parser: SseParser,
    collector: StreamCollector,
    /// Bytes of the event in progress, not relayed yet.
    held: BytesMut,
    max_event_bytes: usize,
    /// The terminator or an upstream error event was relayed.
    closed: bool,
    /// An OpenAI chunk carried a finish reason (see [`StreamTee::finish`]).
    finished: bool,
    /// The stream broke the event cap (the provider normally cuts it first).
    overflow: Option<SseOverflow>,
    /// Events seen: the `sequence_number` of a Responses error event deja appends.
    events: u64,
}

impl StreamTee {
    pub fn new(
        api: ApiKind,
        provider: &str,
        max_event_bytes: usize,
        max_entry_bytes: usize,
    ) -> StreamTee {
        StreamTee {
            api,
            provider: provider.to_owned(),
            parser: SseParser::with_limit(max_event_bytes),
            collector: StreamCollector::new(api, provider, max_entry_bytes),
            held: BytesMut::new(),
            max_event_bytes,
            closed: false,
            finished: false,
            overflow: None,
            events: 0,
        }
    }

    /// A Responses stream's finished `response` object, once an event pushed so far carried it
    /// (once): taken before that event is relayed, so it can be remembered first.
    pub fn take_response(&mut self) -> Option<Value> {
        self.collector.take_response()
    }

    /// Feeds one upstream chunk: returns the bytes to relay now (whole events; the chunk
    /// itself, not copied, when it ends on an event boundary) and `false` when the stream broke
    /// the event cap: stop reading and [`StreamTee::finish`].
    pub fn push(&mut self, chunk: Bytes) -> (Option<Bytes>, bool) {
        let mut events = Vec::new();
        let result = self.parser.feed_into(&chunk, &mut events);
        for ev in &events {
            self.events += 1;
            if !self.closed {
                self.closed = closes(self.api, ev);
            }
            if !self.finished && matches!(self.api, ApiKind::Chat | ApiKind::Completions) {
                self.finished = has_finish_reason(&ev.data);
            }
            self.collector.push_event_data(&ev.data);
        }
        let (relay, rest) = match self.parser.boundary() {
            Some(b) if self.held.is_empty() => (Some(chunk.slice(..b)), chunk.slice(b..)),
            Some(b) => {
                let mut out = std::mem::take(&mut self.held);
                out.extend_from_slice(&chunk[..b]);
                (Some(out.freeze()), chunk.slice(b..))
            }
            None => (None, chunk),
        };
        if let Err(o) = result {
            self.overflow = Some(o);
            self.held = BytesMut::new();
            return (relay, false);
        }
        self.held.extend_from_slice(&rest);
        // The raw text of an event (field names, comments) is more than its data: allow twice.
        if self.held.len() > self.max_event_bytes.saturating_mul(2) {
            self.overflow = Some(SseOverflow::Event {
                limit: self.max_event_bytes,
            });
            self.held = BytesMut::new();
            return (relay, false);
        }
        (relay, true)
    }

    /// Whether the answer can still be stored (no cap broken, nothing uncacheable seen).
    pub fn cacheable(&self) -> bool {
        self.overflow.is_none() && self.collector.failed().is_none()
    }

    /// The bytes the client still needs before its stream ends, and the answer (`Truncated`
    /// unless the upstream finished the stream properly). At a clean end, a last event the
    /// upstream did not close with a blank line is closed for it (some servers omit it); then,
    /// when the stream neither reached its terminator nor carried an upstream error, the tail
    /// is the provider-style error event. A half event held back is dropped otherwise. Some
    /// OpenAI-compatible servers close a stream without `[DONE]`: one that ended cleanly after
    /// a chunk with its finish reason is complete for the client, as the stream translator
    /// judges it too (it is still not cached without `[DONE]`).
    pub fn finish(
        mut self,
        end: StreamEnd<'_>,
    ) -> (Option<Bytes>, Result<CachedResponse, NotCacheable>) {
        let mut out = Vec::new();
        if matches!(end, StreamEnd::Finished) && self.overflow.is_none() && !self.held.is_empty() {
            let (relay, _) = self.push(Bytes::from_static(b"\n\n"));
            out.extend_from_slice(&relay.unwrap_or_default());
        }
        let broken = self.overflow.is_some() || !matches!(end, StreamEnd::Finished);
        if !broken && self.finished {
            self.closed = true;
        }
        if !self.closed {
            out.extend_from_slice(&self.error_event(&end));
        }
        let answer = if broken && !self.closed {
            Err(NotCacheable::Truncated)
        } else if let Some(o) = self.overflow {
            Err(NotCacheable::TooLarge(o.limit()))
        } else {
            self.collector.finish()
        };
        ((!out.is_empty()).then(|| Bytes::from(out)), answer)
    }

    fn error_event(&self, end: &StreamEnd<'_>) -> Bytes {
        let (reason, code, timeout) = match (self.overflow, end) {
            (Some(o), _) => (format!("it sent {o}"), "too_large", false),
            (None, StreamEnd::Failed(e)) => (
                e.kind.client_reason(),
                e.kind.label(),
                e.kind == ProviderErrorKind::Timeout,
            ),
            (None, StreamEnd::Finished | StreamEnd::Abandoned) => (
                "the upstream ended it without its terminator".to_string(),
                "truncated",
                false,
            ),
        };
        let message = format!(
            "The stream from provider `{}` broke off before it was complete ({reason}).",
            self.provider
        );
        match self.api {
            ApiKind::Chat | ApiKind::Completions => {
                sse::openai_error_event(&message, "server_error", Some(code))
            }
            ApiKind::Messages => {
                let kind = if timeout {
                    "timeout_error"
                } else {
                    "api_error"
                };
                sse::anthropic_error_event(&message, kind)
            }
            ApiKind::Responses => sse::responses_error_event(&message, code, self.events),
        }
    }
}

/// Whether an OpenAI chunk's JSON has a string `finish_reason` (not `null`), found without
/// parsing it: `"finish_reason"`, optional spaces, `:`, optional spaces, `"`.
fn has_finish_reason(data: &str) -> bool {
    const KEY: &[u8] = b"\"finish_reason\"";
    let bytes = data.as_bytes();
    memchr::memmem::find_iter(bytes, KEY).any(|at| {
        let mut rest = bytes[at + KEY.len()..]
            .iter()
            .skip_while(|b| b.is_ascii_whitespace());
        rest.next() == Some(&b':') && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b'"')
    })
}

/// Whether `ev` ends the stream for the client: the terminator, or an upstream error event.
fn closes(api: ApiKind, ev: &SseEvent) -> bool {
    #[derive(Deserialize)]
    struct Fields {
        #[serde(default, rename = "type")]
        kind: Option<String>,
        #[serde(default)]
        error: Option<IgnoredAny>,
    }
    let parse = || serde_json::from_str::<Fields>(&ev.data).ok();
    match api {
        ApiKind::Chat | ApiKind::Completions => {
            ev.data.trim() == "[DONE]"
                || (ev.data.contains("\"error\"") && parse().is_some_and(|f| f.error.is_some()))
        }
        ApiKind::Messages => match ev.event.as_deref() {
            Some(name) => matches!(name, "message_stop" | "error"),
            None => {
                parse().is_some_and(|f| matches!(f.kind.as_deref(), Some("message_stop" | "error")))
            }
        },
        ApiKind::Responses => {
            let terminal = |t: &str| {
                matches!(
                    t,
                    "response.completed" | "response.incomplete" | "response.failed" | "error"
                )
            };
            match ev.event.as_deref() {
                Some(name) => terminal(name),
                None => parse().and_then(|f| f.kind).is_some_and(|k| terminal(&k)),
            }
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
        NotCacheable::PersonalData => "pii",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &[u8] =
        b"data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n\
data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";

    fn tail_event(tail: &Bytes) -> SseEvent {
        let events = sse::decode_all(tail);
        assert_eq!(events.len(), 1, "{tail:?}");
        events.into_iter().next().unwrap()
    }

    #[test]
    fn issue12_a_complete_stream_needs_nothing_more_and_is_cached() {
        let mut tee = StreamTee::new(ApiKind::Chat, "p", 1024, 1024);
        assert_eq!(
            tee.push(Bytes::from_static(CHAT)),
            (Some(Bytes::from_static(CHAT)), true)
        );
        assert!(tee.push(Bytes::from_static(sse::DONE)).1);
        let (tail, answer) = tee.finish(StreamEnd::Finished);
        assert!(tail.is_none());
        assert_eq!(answer.unwrap().content, "hi");
    }

    #[test]
    fn issue12_a_stream_ended_before_done_gets_an_openai_error_event() {
        let mut tee = StreamTee::new(ApiKind::Chat, "p", 1024, 1024);
        let content_only = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n";
        assert!(tee.push(Bytes::from_static(content_only)).1);
        let (tail, answer) = tee.finish(StreamEnd::Finished);
        let ev = tail_event(&tail.unwrap());
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(v["error"]["type"], "server_error");
        assert_eq!(v["error"]["code"], "truncated");
        assert!(v["error"]["message"].as_str().unwrap().contains("`p`"));
        assert_eq!(answer, Err(NotCacheable::Truncated));
    }

    #[test]
    fn issue12_a_cut_messages_stream_gets_an_anthropic_error_event() {
        let mut tee = StreamTee::new(ApiKind::Messages, "a", 1024, 1024);
        // Cut inside an event: the half event is never relayed, the error event stands alone.
        let (relay, intact) = tee.push(Bytes::from_static(
            b"event: ping\ndata: {\"type\":\"ping\"}\n\nevent: message_start\ndata: {\"type\":\"mess",
        ));
        assert!(intact);
        assert_eq!(
            relay.as_deref(),
            Some(&b"event: ping\ndata: {\"type\":\"ping\"}\n\n"[..])
        );
        let err = ProviderError::new("a", ProviderErrorKind::Timeout);
        let (tail, answer) = tee.finish(StreamEnd::Failed(&err));
        let ev = tail_event(&tail.unwrap());
        assert_eq!(ev.event.as_deref(), Some("error"));
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "timeout_error");
        assert_eq!(answer, Err(NotCacheable::Truncated));
    }

    #[test]
    fn issue12_an_upstream_error_event_is_not_doubled() {
        let mut tee = StreamTee::new(ApiKind::Chat, "p", 1024, 1024);
        let error = b"data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n";
        assert!(tee.push(Bytes::from_static(error)).1);
        let (tail, answer) = tee.finish(StreamEnd::Finished);
        assert!(tail.is_none(), "the upstream already told the client");
        assert_eq!(answer, Err(NotCacheable::UpstreamError));
        let mut tee = StreamTee::new(ApiKind::Messages, "a", 1024, 1024);
        assert!(
            tee.push(sse::anthropic_error_event("overloaded", "overloaded_error"))
                .1
        );
        assert!(tee.finish(StreamEnd::Finished).0.is_none());
    }

    #[test]
    fn issue12_the_tee_is_bounded_by_both_caps() {
        let mut tee = StreamTee::new(ApiKind::Chat, "p", 64, 1024);
        let (relay, intact) = tee.push(Bytes::from(vec![b'x'; 100]));
        assert!(
            !intact && relay.is_none(),
            "a line over max_event_bytes stops the tee"
        );
        let (tail, answer) = tee.finish(StreamEnd::Finished);
        let v: Value = serde_json::from_str(&tail_event(&tail.unwrap()).data).unwrap();
        assert_eq!(v["error"]["code"], "too_large");
        assert_eq!(answer, Err(NotCacheable::Truncated));
        // Comment lines are not event data, but what is held back is capped all the same.
        let mut tee = StreamTee::new(ApiKind::Chat, "p", 64, 1024);
        let mut intact = true;
        for _ in 0..100 {
            intact = tee.push(Bytes::from_static(b": keep-alive\n")).1;
            if !intact {
                break;
            }
        }
        assert!(
            !intact,
            "held bytes over twice max_event_bytes stop the tee"
        );
        let mut tee = StreamTee::new(ApiKind::Chat, "p", 1024, 1);
        assert!(tee.push(Bytes::from_static(CHAT)).1);
        assert!(!tee.cacheable(), "text over max_entry_bytes");
        assert!(tee.push(Bytes::from_static(sse::DONE)).1);
        let (tail, answer) = tee.finish(StreamEnd::Finished);
        assert!(tail.is_none());
        assert_eq!(answer, Err(NotCacheable::TooLarge(1)));
    }

    #[test]
    fn a_last_event_without_its_blank_line_is_closed_at_a_clean_end() {
        let mut tee = StreamTee::new(ApiKind::Chat, "p", 1024, 1024);
        assert!(tee.push(Bytes::from_static(CHAT)).1);
        let (relay, _) = tee.push(Bytes::from_static(b"data: [DONE]"));
        assert_eq!(relay, None, "held until the event is whole");
        let (tail, answer) = tee.finish(StreamEnd::Finished);
        assert_eq!(tail.as_deref(), Some(&b"data: [DONE]\n\n"[..]));
        assert_eq!(answer.unwrap().content, "hi");
    }

    #[test]
    fn an_openai_stream_that_finished_without_done_is_complete_for_the_client() {
        assert!(has_finish_reason(
            r#"{"choices":[{"finish_reason":"stop"}]}"#
        ));
        assert!(has_finish_reason(
            r#"{"choices": [{"finish_reason" : "length"}]}"#
        ));
        assert!(!has_finish_reason(
            r#"{"choices":[{"finish_reason":null}]}"#
        ));
        assert!(!has_finish_reason(
            r#"{"choices":[{"delta":{"content":"finish_reason"}}]}"#
        ));
        let mut tee = StreamTee::new(ApiKind::Chat, "p", 1024, 1024);
        assert!(tee.push(Bytes::from_static(CHAT)).1);
        let (tail, answer) = tee.finish(StreamEnd::Finished);
        assert!(tail.is_none(), "{tail:?}");
        assert_eq!(answer, Err(NotCacheable::Truncated), "still not cached");
        // Cut instead of closed: the client is told.
        let mut tee = StreamTee::new(ApiKind::Chat, "p", 1024, 1024);
        assert!(tee.push(Bytes::from_static(CHAT)).1);
        let err = ProviderError::new("p", ProviderErrorKind::StreamCut);
        assert!(tee.finish(StreamEnd::Failed(&err)).0.is_some());
    }

    #[test]
    fn issue12_json_over_max_entry_bytes_is_not_parsed() {
        let body = br#"{"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#;
        assert!(collect_json(ApiKind::Chat, body, "p", body.len()).is_ok());
        assert_eq!(
            collect_json(ApiKind::Chat, body, "p", body.len() - 1),
            Err(NotCacheable::TooLarge(body.len() - 1))
        );
    }
}
