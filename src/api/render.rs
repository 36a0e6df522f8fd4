//! Rendering a cached answer as a response indistinguishable from the upstream's: a full
//! `chat.completion` / `text_completion` JSON body, or an SSE replay with OpenAI's exact chunk
//! sequence (role chunk, content chunks, finish chunk, usage chunk when asked, `[DONE]`). Each
//! render gets a fresh `id` and `created` from the caller; everything else comes from the entry.
//! This module never decides whether an answer may be served.

use super::openai::{
    ChatChoice, ChatCompletion, ChatCompletionChunk, ChunkChoice, ChunkDelta, Completion,
    CompletionChoice, ResponseMessage, Usage, UsageField,
};
use super::sse;
use crate::store::{CachedResponse, ToolCall};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// Content pieces of a replay stop growing at the first whitespace past this many bytes...
const PIECE_MIN_BYTES: usize = 16;
/// ...and are cut (on a char boundary) once they reach this many bytes without whitespace.
const PIECE_MAX_BYTES: usize = 32;

/// `chatcmpl-` + 32 hex chars, like OpenAI's ids.
pub fn new_chat_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

/// `cmpl-` + 32 hex chars.
pub fn new_completion_id() -> String {
    format!("cmpl-{}", uuid::Uuid::new_v4().simple())
}

/// The stored tool calls with the ids this render gives them: fresh ones, never the upstream's
/// (a client matches tool results to calls by id within a conversation, so two replays of one
/// entry there must not collide). `prefix` is the API's id style (`call_`, `toolu_`, `fc_`).
pub fn replay_calls<'a>(resp: &'a CachedResponse, prefix: &str) -> Vec<(String, &'a ToolCall)> {
    resp.tool_calls
        .iter()
        .map(|c| (ToolCall::fresh_id(prefix), c))
        .collect()
}

/// A chat `tool_calls[]` entry.
fn chat_tool_call(id: &str, call: &ToolCall) -> Value {
    json!({"id": id, "type": "function",
           "function": {"name": call.name, "arguments": call.arguments}})
}

/// Current unix time in seconds (the `created` field).
pub fn unix_now() -> u64 {
    crate::store::now_ms() / 1000
}

/// The model a hit reports: the one the upstream named when it answered (as the original
/// response did); the requested one only when the upstream named none.
fn model_of<'a>(resp: &'a CachedResponse, requested: Option<&'a str>) -> &'a str {
    if resp.model.is_empty() {
        requested.unwrap_or("")
    } else {
        &resp.model
    }
}

/// Usage as served. A stored answer without usage (a stream that reported none) is served
/// with zeros rather than `null`, because many clients dereference `usage` unconditionally.
fn wire_usage(resp: &CachedResponse) -> Usage {
    resp.usage.map(Usage::from).unwrap_or_default()
}

fn to_bytes<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec()))
}

/// A full `chat.completion` body.
pub fn render_chat_json(
    resp: &CachedResponse,
    id: &str,
    created: u64,
    model_requested: Option<&str>,
) -> Bytes {
    let calls = replay_calls(resp, "call_");
    let tool_calls =
        (!calls.is_empty()).then(|| calls.iter().map(|(id, c)| chat_tool_call(id, c)).collect());
    // OpenAI sends `content: null` with a tool call that has no text.
    let content =
        (!resp.content.is_empty() || calls.is_empty()).then(|| Value::String(resp.content.clone()));
    let body = ChatCompletion {
        id: id.to_owned(),
        object: "chat.completion".to_owned(),
        created,
        model: model_of(resp, model_requested).to_owned(),
        choices: vec![ChatChoice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".to_owned(),
                content,
                refusal: None,
                tool_calls,
                function_call: None,
                annotations: Some(Vec::new()),
                audio: None,
                extra: Map::new(),
            },
            logprobs: None,
            finish_reason: Some(resp.finish_reason.as_openai().to_owned()),
        }],
        usage: Some(wire_usage(resp)),
        service_tier: None,
        system_fingerprint: resp.system_fingerprint.clone(),
    };
    to_bytes(&body)
}

/// The SSE replay of a chat answer, one `Bytes` per event, `data: [DONE]` last.
pub fn render_chat_sse(
    resp: &CachedResponse,
    id: &str,
    created: u64,
    model_requested: Option<&str>,
    include_usage: bool,
) -> Vec<Bytes> {
    let null_usage = if include_usage {
        UsageField::Null
    } else {
        UsageField::Absent
    };
    let chunk = |delta: ChunkDelta, finish: Option<&str>| ChatCompletionChunk {
        id: id.to_owned(),
        object: "chat.completion.chunk".to_owned(),
        created,
        model: model_of(resp, model_requested).to_owned(),
        service_tier: None,
        system_fingerprint: resp.system_fingerprint.clone(),
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            logprobs: None,
            finish_reason: finish.map(str::to_owned),
        }],
        usage: null_usage.clone(),
    };
    let pieces = split_pieces(&resp.content);
    let mut events = Vec::with_capacity(pieces.len() + 4);
    let role = ChunkDelta {
        role: Some("assistant".to_owned()),
        content: Some(String::new()),
        refusal: None,
        ..ChunkDelta::default()
    };
    events.push(sse::data_event(&chunk(role, None)));
    let content_chunk = |piece: &str| {
        let delta = ChunkDelta {
            content: Some(piece.to_owned()),
            ..ChunkDelta::default()
        };
        chunk(delta, None)
    };
    content_events(&pieces, content_chunk, &mut events);
    // Each call as OpenAI streams it: its id, type and name with empty arguments, then the
    // arguments in pieces, all under the call's index.
    for (index, (call_id, call)) in replay_calls(resp, "call_").iter().enumerate() {
        let delta = |call: Value| ChunkDelta {
            tool_calls: Some(vec![call]),
            ..ChunkDelta::default()
        };
        let head = json!({"index": index, "id": call_id, "type": "function",
                          "function": {"name": call.name, "arguments": ""}});
        events.push(sse::data_event(&chunk(delta(head), None)));
        for piece in split_pieces(&call.arguments) {
            let more = json!({"index": index, "function": {"arguments": piece}});
            events.push(sse::data_event(&chunk(delta(more), None)));
        }
    }
    let finish = Some(resp.finish_reason.as_openai());
    events.push(sse::data_event(&chunk(ChunkDelta::default(), finish)));
    if include_usage {
        let mut last = chunk(ChunkDelta::default(), None);
        last.choices.clear();
        last.usage = UsageField::Present(wire_usage(resp));
        events.push(sse::data_event(&last));
    }
    events.push(Bytes::from_static(sse::DONE));
    events
}

/// A full legacy `text_completion` body.
pub fn render_completion_json(
    resp: &CachedResponse,
    id: &str,
    created: u64,
    model_requested: Option<&str>,
) -> Bytes {
    let body = Completion {
        id: id.to_owned(),
        object: "text_completion".to_owned(),
        created,
        model: model_of(resp, model_requested).to_owned(),
        choices: vec![CompletionChoice {
            text: resp.content.clone(),
            index: 0,
            logprobs: None,
            finish_reason: Some(resp.finish_reason.as_openai().to_owned()),
        }],
        usage: UsageField::Present(wire_usage(resp)),
        system_fingerprint: resp.system_fingerprint.clone(),
    };
    to_bytes(&body)
}

/// The SSE replay of a legacy completion: text chunks, a finish chunk with empty text, the usage
/// chunk when asked, `[DONE]`.
pub fn render_completion_sse(
    resp: &CachedResponse,
    id: &str,
    created: u64,
    model_requested: Option<&str>,
    include_usage: bool,
) -> Vec<Bytes> {
    let null_usage = if include_usage {
        UsageField::Null
    } else {
        UsageField::Absent
    };
    let chunk = |text: &str, finish: Option<&str>| Completion {
        id: id.to_owned(),
        object: "text_completion".to_owned(),
        created,
        model: model_of(resp, model_requested).to_owned(),
        choices: vec![CompletionChoice {
            text: text.to_owned(),
            index: 0,
            logprobs: None,
            finish_reason: finish.map(str::to_owned),
        }],
        usage: null_usage.clone(),
        system_fingerprint: resp.system_fingerprint.clone(),
    };
    let pieces = split_pieces(&resp.content);
    let mut events = Vec::with_capacity(pieces.len() + 3);
    content_events(&pieces, |piece: &str| chunk(piece, None), &mut events);
    events.push(sse::data_event(&chunk(
        "",
        Some(resp.finish_reason.as_openai()),
    )));
    if include_usage {
        let mut last = chunk("", None);
        last.choices.clear();
        last.usage = UsageField::Present(wire_usage(resp));
        events.push(sse::data_event(&last));
    }
    events.push(Bytes::from_static(sse::DONE));
    events
}

/// Push one `data:` event per piece. The chunk is serialized once with a one-letter
/// placeholder and split around it, so each piece costs one string escape instead of a struct
/// build and serialization (a replay has ~one event per 20 bytes of text).
fn content_events<T: Serialize>(pieces: &[&str], make: impl Fn(&str) -> T, out: &mut Vec<Bytes>) {
    match PieceTemplate::new(&make) {
        Some(t) => out.extend(pieces.iter().map(|p| t.event(p))),
        None => out.extend(pieces.iter().map(|p| sse::data_event(&make(p)))),
    }
}

/// A serialized chunk cut around its text: `head` ends just before the opening quote, `tail`
/// starts just after the closing one.
struct PieceTemplate {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl PieceTemplate {
    /// `None` unless `make("a")` and `make("b")` differ in exactly that one quoted letter, which
    /// proves the cut points (whatever the field order or the other values).
    fn new<T: Serialize>(make: impl Fn(&str) -> T) -> Option<Self> {
        let a = serde_json::to_vec(&make("a")).ok()?;
        let b = serde_json::to_vec(&make("b")).ok()?;
        if a.len() != b.len() {
            return None;
        }
        let mut diffs = (0..a.len()).filter(|&i| a[i] != b[i]);
        let i = diffs.next()?;
        let quoted = i > 0 && a[i - 1] == b'"' && a.get(i + 1) == Some(&b'"');
        if diffs.next().is_some() || !quoted {
            return None;
        }
        Some(PieceTemplate {
            head: a[..i - 1].to_vec(),
            tail: a[i + 2..].to_vec(),
        })
    }

    fn event(&self, piece: &str) -> Bytes {
        let mut out = Vec::with_capacity(self.head.len() + self.tail.len() + piece.len() + 16);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.head);
        if serde_json::to_writer(&mut out, piece).is_err() {
            out.extend_from_slice(b"\"\"");
        }
        out.extend_from_slice(&self.tail);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }
}

/// Concatenate replay events into one body (for tests and for clients that buffer anyway).
pub fn join_events(events: &[Bytes]) -> Bytes {
    let mut out = Vec::with_capacity(events.iter().map(Bytes::len).sum());
    for e in events {
        out.extend_from_slice(e);
    }
    Bytes::from(out)
}

/// Split text into token-like pieces for a replay: cut after whitespace once a piece has
/// `PIECE_MIN_BYTES`, or anywhere (on a char boundary) at `PIECE_MAX_BYTES`. Concatenating the
/// pieces gives the text back exactly; empty text gives no pieces.
pub fn split_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::with_capacity(text.len() / PIECE_MIN_BYTES + 1);
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let end = i + c.len_utf8();
        let len = end - start;
        if (len >= PIECE_MIN_BYTES && c.is_whitespace()) || len >= PIECE_MAX_BYTES {
            pieces.push(&text[start..end]);
            start = end;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
