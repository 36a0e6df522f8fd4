//! SSE stream translation: [`translate_stream`] wraps an upstream [`ByteStream`], parses its
//! events incrementally with [`SseParser`] and hands each to a [`StreamTranslate`], which
//! writes the inbound API's events as bytes. Output leaves as soon as an upstream chunk
//! produced some; nothing is buffered beyond one incomplete event. A stream that the inbound
//! API cannot carry on, an upstream `error` event, or an upstream end before the terminal
//! event writes the inbound API's error event and then ends the stream with an `Err`, so
//! that the server neither caches it nor presents it as complete.

use super::response::{
    anthropic_stop_reason, anthropic_usage, chat_id, messages_id, openai_finish_reason,
    openai_usage,
};
use super::TranslateError;
use crate::api::anthropic::{
    BlockDelta, DeltaUsage, MessageDeltaBody, MessagesResponse, StreamEvent, Usage as AUsage,
};
use crate::api::openai::{ChatCompletionChunk, ChunkChoice, ChunkDelta, Usage, UsageField};
use crate::api::render::unix_now;
use crate::api::sse;
use crate::providers::error::ProviderError;
use crate::providers::sse::{SseEvent, SseParser};
use crate::providers::types::ByteStream;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::collections::VecDeque;

/// Translates one upstream SSE event stream into another API's, event by event.
pub trait StreamTranslate: Send {
    /// One upstream event; the translated bytes are appended to `out`. `Err` ends the stream
    /// (for [`TranslateError::UpstreamError`] the translator has written the error event).
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<u8>) -> Result<(), TranslateError>;
    /// The upstream ended without a transport error.
    fn end(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError>;
    /// The terminal event was written; nothing after it is read.
    fn is_done(&self) -> bool;
    /// The inbound API's in-stream error event with `message`, so that the client's SDK
    /// raises it.
    fn error_frame(&self, message: &str) -> Bytes;
}

/// Drive `translator` over `inner`. Transport errors of `inner` pass through as they are;
/// translation failures become `on_error(..)` after the inbound API's error event.
pub fn translate_stream(
    inner: ByteStream,
    translator: Box<dyn StreamTranslate>,
    on_error: Box<dyn Fn(TranslateError) -> ProviderError + Send>,
) -> ByteStream {
    translate_stream_with(inner, translator, on_error, SseParser::new(), "upstream")
}

/// [`translate_stream`] with the caller's parser (and so its cap on upstream events: an
/// upstream line or event over it ends the stream with [`TranslateError::Overflow`]), and the
/// provider's name for the error events it writes.
pub fn translate_stream_with(
    inner: ByteStream,
    translator: Box<dyn StreamTranslate>,
    on_error: Box<dyn Fn(TranslateError) -> ProviderError + Send>,
    parser: SseParser,
    provider: &str,
) -> ByteStream {
    struct State {
        inner: ByteStream,
        parser: SseParser,
        t: Box<dyn StreamTranslate>,
        on_error: Box<dyn Fn(TranslateError) -> ProviderError + Send>,
        queue: VecDeque<Result<Bytes, ProviderError>>,
        ended: bool,
        provider: String,
    }
    impl State {
        fn fail(&mut self, mut out: Vec<u8>, err: TranslateError) {
            if !matches!(err, TranslateError::UpstreamError(_)) {
                let message = format!(
                    "The stream from provider `{}` broke off before it was complete ({err}).",
                    self.provider
                );
                out.extend_from_slice(&self.t.error_frame(&message));
            }
            if !out.is_empty() {
                self.queue.push_back(Ok(Bytes::from(out)));
            }
            self.queue.push_back(Err((self.on_error)(err)));
            self.ended = true;
        }

        fn emit(&mut self, out: Vec<u8>) {
            if !out.is_empty() {
                self.queue.push_back(Ok(Bytes::from(out)));
            }
        }
    }
    let state = State {
        inner,
        parser,
        t: translator,
        on_error,
        queue: VecDeque::new(),
        ended: false,
        provider: provider.to_owned(),
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.queue.pop_front() {
                return Some((item, st));
            }
            if st.ended {
                return None;
            }
            match st.inner.next().await {
                Some(Ok(chunk)) => {
                    let mut out = Vec::new();
                    let mut events = Vec::new();
                    let mut fault = st
                        .parser
                        .feed_into(&chunk, &mut events)
                        .err()
                        .map(TranslateError::Overflow);
                    for ev in events {
                        if st.t.is_done() {
                            break;
                        }
                        if let Err(e) = st.t.event(&ev, &mut out) {
                            fault = Some(e);
                            break;
                        }
                    }
                    match fault {
                        Some(e) => st.fail(out, e),
                        None => {
                            st.emit(out);
                            st.ended = st.t.is_done();
                        }
                    }
                }
                Some(Err(e)) => {
                    st.queue.push_back(Err(e));
                    st.ended = true;
                }
                None => {
                    let mut out = Vec::new();
                    match st.t.end(&mut out) {
                        Ok(()) => st.emit(out),
                        Err(e) => st.fail(out, e),
                    }
                    st.ended = true;
                }
            }
        }
    })
    .boxed()
}

fn malformed(what: &str, e: serde_json::Error) -> TranslateError {
    TranslateError::Unrepresentable(format!("malformed upstream {what}: {e}"))
}

fn openai_error_frame(message: &str, kind: &str) -> Bytes {
    sse::openai_error_event(message, kind, None)
}

fn anthropic_error_frame(message: &str, kind: &str) -> Bytes {
    sse::anthropic_error_event(message, kind)
}

// ---------------------------------------------------------------------------------------------
// Anthropic Messages events → OpenAI chat chunks
// ---------------------------------------------------------------------------------------------

/// Anthropic stream → OpenAI chunk stream: role chunk at `message_start`, one content chunk
/// per text delta, the finish chunk at `message_delta`, then (when asked) the usage chunk and
/// `data: [DONE]` at `message_stop`.
#[derive(Debug)]
pub struct MessagesToChatStream {
    include_usage: bool,
    id: String,
    model: String,
    created: u64,
    started: bool,
    finished: bool,
    done: bool,
    usage: AUsage,
    /// Content block index → OpenAI tool call index, for the `tool_use` blocks so far.
    tool_blocks: Vec<(u32, usize)>,
}

impl MessagesToChatStream {
    pub fn new(include_usage: bool) -> MessagesToChatStream {
        MessagesToChatStream {
            include_usage,
            id: String::new(),
            model: String::new(),
            created: unix_now(),
            started: false,
            finished: false,
            done: false,
            usage: AUsage::default(),
            tool_blocks: Vec::new(),
        }
    }

    fn tool_delta(&self, call: Value, out: &mut Vec<u8>) {
        let delta = ChunkDelta {
            tool_calls: Some(vec![call]),
            ..ChunkDelta::default()
        };
        out.extend_from_slice(&sse::data_event(&self.chunk(delta, None)));
    }

    fn chunk(&self, delta: ChunkDelta, finish: Option<&str>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".to_owned(),
            created: self.created,
            model: self.model.clone(),
            service_tier: None,
            system_fingerprint: None,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: finish.map(str::to_owned),
            }],
            usage: if self.include_usage {
                UsageField::Null
            } else {
                UsageField::Absent
            },
        }
    }

    fn text(&self, text: &str, out: &mut Vec<u8>) {
        if !text.is_empty() {
            let delta = ChunkDelta {
                content: Some(text.to_owned()),
                ..ChunkDelta::default()
            };
            out.extend_from_slice(&sse::data_event(&self.chunk(delta, None)));
        }
    }
}

fn openai_error_type(anthropic_type: &str) -> &'static str {
    match anthropic_type {
        "invalid_request_error"
        | "authentication_error"
        | "permission_error"
        | "not_found_error"
        | "request_too_large" => "invalid_request_error",
        "rate_limit_error" => "rate_limit_error",
        _ => "server_error",
    }
}

impl StreamTranslate for MessagesToChatStream {
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let parsed: StreamEvent =
            serde_json::from_str(&ev.data).map_err(|e| malformed("event", e))?;
        let needs_start = !matches!(
            parsed,
            StreamEvent::MessageStart { .. }
                | StreamEvent::Ping
                | StreamEvent::Error { .. }
                | StreamEvent::Unknown
        );
        if needs_start && !self.started {
            return Err(TranslateError::Unrepresentable(format!(
                "upstream sent `{}` before `message_start`",
                parsed.name()
            )));
        }
        match parsed {
            StreamEvent::MessageStart { message } => {
                self.started = true;
                self.id = chat_id(&message.id);
                self.model = message.model;
                self.usage = message.usage;
                let role = ChunkDelta {
                    role: Some("assistant".to_owned()),
                    content: Some(String::new()),
                    ..ChunkDelta::default()
                };
                out.extend_from_slice(&sse::data_event(&self.chunk(role, None)));
            }
            StreamEvent::ContentBlockStart {
                content_block,
                index,
            } => {
                match content_block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let text = content_block.get("text").and_then(Value::as_str);
                        self.text(text.unwrap_or(""), out);
                    }
                    Some("tool_use") => {
                        let n = self.tool_blocks.len();
                        self.tool_blocks.push((index, n));
                        let mut call = super::response::tool_call_of(&content_block);
                        // The input arrives in `input_json_delta`s; `{}` here is a placeholder.
                        call["function"]["arguments"] = json!("");
                        call["index"] = json!(n);
                        self.tool_delta(call, out);
                    }
                    other => {
                        return Err(TranslateError::Unrepresentable(format!(
                            "the upstream answered with a `{}` block, which the OpenAI chat \
                             API cannot carry here",
                            other.unwrap_or("?")
                        )))
                    }
                }
            }
            StreamEvent::ContentBlockDelta { delta, index } => match delta.kind.as_str() {
                "text_delta" => self.text(delta.text.as_deref().unwrap_or(""), out),
                "input_json_delta" => {
                    let Some(&(_, n)) = self.tool_blocks.iter().find(|(b, _)| *b == index) else {
                        return Err(TranslateError::Unrepresentable(
                            "the upstream streamed tool input outside a tool_use block".to_owned(),
                        ));
                    };
                    let piece = delta
                        .extra
                        .get("partial_json")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if !piece.is_empty() {
                        self.tool_delta(json!({"index": n, "function": {"arguments": piece}}), out);
                    }
                }
                other => {
                    return Err(TranslateError::Unrepresentable(format!(
                        "the upstream streamed a `{other}`, which the OpenAI chat API cannot \
                         carry here"
                    )))
                }
            },
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    self.usage.output_tokens = u.output_tokens;
                    if let Some(input) = u.input_tokens {
                        self.usage.input_tokens = input;
                    }
                    let count = |k: &str| {
                        u.extra
                            .get(k)
                            .and_then(Value::as_u64)
                            .and_then(|n| u32::try_from(n).ok())
                    };
                    if let Some(n) = count("cache_read_input_tokens") {
                        self.usage.cache_read_input_tokens = Some(n);
                    }
                    if let Some(n) = count("cache_creation_input_tokens") {
                        self.usage.cache_creation_input_tokens = Some(n);
                    }
                }
                if let Some(reason) = delta.stop_reason {
                    let finish = openai_finish_reason(&reason)?;
                    let chunk = self.chunk(ChunkDelta::default(), Some(finish));
                    out.extend_from_slice(&sse::data_event(&chunk));
                    self.finished = true;
                }
            }
            StreamEvent::MessageStop => {
                if !self.finished {
                    return Err(TranslateError::Truncated(
                        "the upstream stream stopped without a stop reason".to_owned(),
                    ));
                }
                if self.include_usage {
                    let mut last = self.chunk(ChunkDelta::default(), None);
                    last.choices.clear();
                    last.usage = UsageField::Present(openai_usage(&self.usage));
                    out.extend_from_slice(&sse::data_event(&last));
                }
                out.extend_from_slice(sse::DONE);
                self.done = true;
            }
            StreamEvent::Error { error } => {
                let kind = error
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("api_error");
                let message = error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream error");
                out.extend_from_slice(&openai_error_frame(message, openai_error_type(kind)));
                return Err(TranslateError::UpstreamError(format!("{kind}: {message}")));
            }
            StreamEvent::ContentBlockStop { .. } | StreamEvent::Ping | StreamEvent::Unknown => {}
        }
        Ok(())
    }

    fn end(&mut self, _out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if self.done {
            Ok(())
        } else {
            Err(TranslateError::Truncated(
                "the upstream stream ended before `message_stop`".to_owned(),
            ))
        }
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn error_frame(&self, message: &str) -> Bytes {
        openai_error_frame(message, "server_error")
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI chat chunks → Anthropic Messages events
// ---------------------------------------------------------------------------------------------

/// OpenAI chunk stream → Anthropic stream: `message_start`, `content_block_start`, `ping` at
/// the first chunk, one `content_block_delta` per content piece, then `content_block_stop`,
/// `message_delta` (stop reason, usage) and `message_stop` at `[DONE]`. The request asked for
/// the usage chunk (see `messages_to_chat`), so input tokens arrive only at the end: they are
/// 0 in `message_start` and given in `message_delta`.
#[derive(Debug, Default)]
pub struct ChatToMessagesStream {
    started: bool,
    done: bool,
    finish: Option<String>,
    refused: bool,
    usage: Option<Usage>,
    /// The text block (index 0) was closed because tool calls began.
    text_closed: bool,
    /// Tool calls started so far (block `1 + n` is call `n`); the last one is open.
    tools: usize,
}

impl ChatToMessagesStream {
    pub fn new() -> ChatToMessagesStream {
        ChatToMessagesStream::default()
    }

    fn push(out: &mut Vec<u8>, ev: &StreamEvent) {
        out.extend_from_slice(&sse::named_event(ev.name(), ev));
    }

    fn start(&mut self, id: &str, model: &str, out: &mut Vec<u8>) {
        self.started = true;
        let message = MessagesResponse {
            id: messages_id(id),
            kind: "message".to_owned(),
            role: "assistant".to_owned(),
            model: model.to_owned(),
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: AUsage::default(),
        };
        Self::push(out, &StreamEvent::MessageStart { message });
        Self::push(
            out,
            &StreamEvent::ContentBlockStart {
                index: 0,
                content_block: json!({"type": "text", "text": ""}),
            },
        );
        Self::push(out, &StreamEvent::Ping);
    }

    fn text(out: &mut Vec<u8>, text: &str) {
        Self::push(
            out,
            &StreamEvent::ContentBlockDelta {
                index: 0,
                delta: BlockDelta {
                    kind: "text_delta".to_owned(),
                    text: Some(text.to_owned()),
                    extra: Map::new(),
                },
            },
        );
    }

    /// One `tool_calls` delta: a new call closes the open block and starts a `tool_use` block;
    /// argument pieces become `input_json_delta`s of the open one.
    fn tool_call(&mut self, call: &Value, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let n = call.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        if n + 1 < self.tools || n > self.tools {
            return Err(TranslateError::Unrepresentable(
                "the upstream interleaved its tool calls".to_owned(),
            ));
        }
        if n == self.tools {
            let open = self.tools as u32;
            if !self.text_closed || self.tools > 0 {
                Self::push(out, &StreamEvent::ContentBlockStop { index: open });
            }
            self.text_closed = true;
            self.tools += 1;
            let s = |p: &str| call.pointer(p).and_then(Value::as_str).unwrap_or_default();
            Self::push(
                out,
                &StreamEvent::ContentBlockStart {
                    index: self.tools as u32,
                    content_block: json!({"type": "tool_use", "id": s("/id"),
                                          "name": s("/function/name"), "input": {}}),
                },
            );
        }
        let piece = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !piece.is_empty() {
            let mut extra = Map::new();
            extra.insert("partial_json".to_owned(), Value::from(piece));
            Self::push(
                out,
                &StreamEvent::ContentBlockDelta {
                    index: self.tools as u32,
                    delta: BlockDelta {
                        kind: "input_json_delta".to_owned(),
                        text: None,
                        extra,
                    },
                },
            );
        }
        Ok(())
    }

    fn finalize(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let Some(finish) = self.finish.as_deref() else {
            return Err(TranslateError::Truncated(
                "the upstream stream ended without a finish reason".to_owned(),
            ));
        };
        let stop_reason = if self.refused {
            "refusal"
        } else {
            anthropic_stop_reason(finish)?
        };
        let usage = self.usage.as_ref().map(anthropic_usage).unwrap_or_default();
        let mut extra = Map::new();
        if let Some(n) = usage.cache_read_input_tokens {
            extra.insert("cache_read_input_tokens".to_owned(), Value::from(n));
        }
        let open = if self.tools > 0 { self.tools as u32 } else { 0 };
        if !self.text_closed || self.tools > 0 {
            Self::push(out, &StreamEvent::ContentBlockStop { index: open });
        }
        Self::push(
            out,
            &StreamEvent::MessageDelta {
                delta: MessageDeltaBody {
                    stop_reason: Some(stop_reason.to_owned()),
                    stop_sequence: None,
                },
                usage: Some(DeltaUsage {
                    input_tokens: Some(usage.input_tokens),
                    output_tokens: usage.output_tokens,
                    extra,
                }),
            },
        );
        Self::push(out, &StreamEvent::MessageStop);
        self.done = true;
        Ok(())
    }
}

fn anthropic_error_type(error: &Value) -> &'static str {
    let field = |k: &str| error.get(k).and_then(Value::as_str).unwrap_or("");
    match (field("type"), field("code")) {
        (_, "rate_limit_exceeded") | ("rate_limit_error" | "requests" | "tokens", _) => {
            "rate_limit_error"
        }
        ("invalid_request_error", _) => "invalid_request_error",
        _ => "api_error",
    }
}

impl StreamTranslate for ChatToMessagesStream {
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if ev.is_done() {
            return self.finalize(out);
        }
        let v: Value = serde_json::from_str(&ev.data).map_err(|e| malformed("chunk", e))?;
        if let Some(error) = v.get("error").filter(|e| !e.is_null()) {
            let message = match error {
                Value::String(s) => s.as_str(),
                _ => error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream error"),
            };
            out.extend_from_slice(&anthropic_error_frame(message, anthropic_error_type(error)));
            return Err(TranslateError::UpstreamError(message.to_owned()));
        }
        let chunk: ChatCompletionChunk =
            serde_json::from_value(v).map_err(|e| malformed("chunk", e))?;
        if !self.started {
            self.start(&chunk.id, &chunk.model, out);
        }
        if let Some(u) = chunk.usage.as_usage() {
            self.usage = Some(u.clone());
        }
        for choice in &chunk.choices {
            if choice.index != 0 {
                return Err(TranslateError::Unrepresentable(
                    "the upstream streamed several choices".to_owned(),
                ));
            }
            let d = &choice.delta;
            if d.function_call.as_ref().is_some_and(|f| !f.is_null()) {
                return Err(TranslateError::Unrepresentable(
                    "the upstream streamed a legacy `function_call`".to_owned(),
                ));
            }
            if let Some(text) = d.content.as_deref().filter(|t| !t.is_empty()) {
                if self.text_closed {
                    return Err(TranslateError::Unrepresentable(
                        "the upstream streamed text after its tool calls".to_owned(),
                    ));
                }
                Self::text(out, text);
            }
            for call in d.tool_calls.as_deref().unwrap_or_default() {
                self.tool_call(call, out)?;
            }
            if let Some(refusal) = d.refusal.as_deref().filter(|t| !t.is_empty()) {
                self.refused = true;
                Self::text(out, refusal);
            }
            if let Some(reason) = &choice.finish_reason {
                self.finish = Some(reason.clone());
            }
        }
        Ok(())
    }

    /// Some OpenAI-compatible servers close the stream without `[DONE]`: a stream that gave
    /// its finish reason is complete.
    fn end(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if self.done {
            Ok(())
        } else {
            self.finalize(out)
        }
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn error_frame(&self, message: &str) -> Bytes {
        anthropic_error_frame(message, "api_error")
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
