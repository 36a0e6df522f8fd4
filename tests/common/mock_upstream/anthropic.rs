//! Anthropic's wire shapes for the mock upstream (`POST /v1/messages`): request validation as
//! the real API does it (headers, required fields, extra fields refused, roles), the `message`
//! body, the SSE event sequence (`message_start`, `content_block_start`, `ping`,
//! `content_block_delta`..., `content_block_stop`, `message_delta`, `message_stop`) and
//! Anthropic-shaped errors. Test-only.

use super::openai::{content_text, last_user_text, words};
use super::{json_planned, stream_planned, Behaviour, Planned};
use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{json, Value};

/// Top-level request fields the real API accepts; anything else is a 400 there too.
const KNOWN_FIELDS: [&str; 16] = [
    "model",
    "messages",
    "max_tokens",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "metadata",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
];

/// `POST /v1/messages`, validated as Anthropic does, answered in Anthropic's shapes.
pub(super) fn plan(
    b: &Behaviour,
    call: u64,
    req_headers: &HeaderMap,
    body: &Value,
    mut headers: Vec<(&'static str, String)>,
) -> Planned {
    if let Err((status, message)) = validate(req_headers, body) {
        return json_planned(headers, status, error_body(status, &message));
    }
    let text = match &b.reply {
        Some(f) => f(body),
        None => default_reply(call, body),
    };
    let mut reply = Reply::new(body, text, super::tool_call_for(b, body).as_ref());
    if !body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        headers.push(("content-type", "application/json".to_string()));
        return json_planned(headers, 200, Bytes::from(reply.json_body().to_string()));
    }
    let mut events = reply.sse_events();
    if let Some(k) = b.stream_error_after {
        events.truncate(k.min(reply.pre_finish_events));
        events.push(stream_error_event());
    }
    stream_planned(
        headers,
        events,
        b.cut_stream_after.map(|k| k.min(reply.pre_finish_events)),
    )
}

/// `(status, message)` when the request would be refused by Anthropic.
pub(super) fn validate(headers: &HeaderMap, body: &Value) -> Result<(), (u16, String)> {
    let has = |name: &str| headers.get(name).is_some_and(|v| !v.is_empty());
    if !has("x-api-key") {
        return Err((401, "x-api-key header is required".into()));
    }
    if !has("anthropic-version") {
        return Err((400, "anthropic-version: header is required".into()));
    }
    let Some(obj) = body.as_object() else {
        return Err((
            400,
            "There was an error parsing the body of your request".into(),
        ));
    };
    for key in obj.keys() {
        if !KNOWN_FIELDS.contains(&key.as_str()) {
            return Err((400, format!("{key}: Extra inputs are not permitted")));
        }
    }
    if !obj.get("model").is_some_and(Value::is_string) {
        return Err((400, "model: Field required".into()));
    }
    if !obj.get("max_tokens").is_some_and(Value::is_u64) {
        return Err((400, "max_tokens: Field required".into()));
    }
    let Some(messages) = obj.get("messages").and_then(Value::as_array) else {
        return Err((400, "messages: Field required".into()));
    };
    for (i, m) in messages.iter().enumerate() {
        match m.get("role").and_then(Value::as_str) {
            Some("user" | "assistant") => {}
            Some("system") => return Err((400, format!(
                "messages.{i}.role: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role."
            ))),
            other => return Err((400, format!("messages.{i}.role: Input should be 'user' or 'assistant', got {other:?}"))),
        }
        if let Some(extra) = m
            .as_object()
            .and_then(|o| o.keys().find(|k| *k != "role" && *k != "content"))
        {
            return Err((
                400,
                format!("messages.{i}.{extra}: Extra inputs are not permitted"),
            ));
        }
    }
    if let Some(t) = obj.get("temperature").and_then(Value::as_f64) {
        if !(0.0..=1.0).contains(&t) {
            return Err((400, "temperature: range: 0..1".into()));
        }
    }
    Ok(())
}

/// `{"type":"error","error":{"type","message"}}` with the type Anthropic uses for `status`.
pub(super) fn error_body(status: u16, message: &str) -> Bytes {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    Bytes::from(json!({"type": "error", "error": {"type": kind, "message": message}}).to_string())
}

pub(super) fn failure_message(status: u16) -> String {
    match status {
        429 => "Number of request tokens has exceeded your per-minute rate limit".into(),
        529 => "Overloaded".into(),
        s if s >= 500 => "Internal server error".into(),
        401 => "invalid x-api-key".into(),
        s => format!("Mock failure with status {s}."),
    }
}

/// One answer to render as a `message` or as its stream.
pub(super) struct Reply {
    id: String,
    model: String,
    text: String,
    tool_use: Option<(String, String, String)>,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    /// Events before `content_block_stop` (a cut stream stops within them).
    pub(super) pre_finish_events: usize,
}

impl Reply {
    pub(super) fn new(body: &Value, reply: String, tool_call: Option<&(String, String)>) -> Reply {
        let mut text = reply;
        let mut stop_reason = "end_turn";
        let mut stop_sequence = None;
        let stops: Vec<&str> = body
            .get("stop_sequences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some((pos, seq)) = stops
            .iter()
            .filter_map(|s| text.find(s).map(|p| (p, *s)))
            .min_by_key(|(p, _)| *p)
        {
            text.truncate(pos);
            stop_reason = "stop_sequence";
            stop_sequence = Some(seq.to_string());
        }
        if let Some(max) = body.get("max_tokens").and_then(Value::as_u64) {
            if words(&text) > max {
                text = text
                    .split_whitespace()
                    .take(max as usize)
                    .collect::<Vec<_>>()
                    .join(" ");
                stop_reason = "max_tokens";
                stop_sequence = None;
            }
        }
        let tool_use = tool_call.map(|(name, args)| {
            stop_reason = "tool_use";
            let id = format!("toolu_{}", &uuid::Uuid::new_v4().simple().to_string()[..24]);
            (id, name.clone(), args.clone())
        });
        let mut prompt = body.get("system").map(content_text).unwrap_or_default();
        prompt.push(' ');
        prompt.push_str(&all_messages_text(body));
        let output_tokens = match &tool_use {
            Some((_, _, args)) => (args.len() as u64 / 4).max(1),
            None => words(&text),
        };
        Reply {
            id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            text,
            tool_use,
            stop_reason,
            stop_sequence,
            input_tokens: words(&prompt).max(1),
            output_tokens,
            pre_finish_events: 0,
        }
    }

    fn blocks(&self) -> Vec<Value> {
        let mut blocks = vec![json!({"type": "text", "text": self.text})];
        if let Some((id, name, args)) = &self.tool_use {
            let input: Value = serde_json::from_str(args).unwrap_or(json!({}));
            blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        }
        blocks
    }

    fn usage(&self, output: u64) -> Value {
        json!({"input_tokens": self.input_tokens, "cache_creation_input_tokens": 0,
               "cache_read_input_tokens": 0, "output_tokens": output, "service_tier": "standard"})
    }

    pub(super) fn json_body(&self) -> Value {
        json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": self.blocks(), "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence, "usage": self.usage(self.output_tokens),
        })
    }

    /// The event sequence of a real stream, one `Bytes` per event.
    pub(super) fn sse_events(&mut self) -> Vec<Bytes> {
        let mut events = vec![
            json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "content": [],
                "model": self.model, "stop_reason": null, "stop_sequence": null,
                "usage": self.usage(1)}}),
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
        ];
        for piece in self.text.split_inclusive(' ') {
            events.push(json!({"type": "content_block_delta", "index": 0,
                               "delta": {"type": "text_delta", "text": piece}}));
        }
        self.pre_finish_events = events.len();
        events.push(json!({"type": "content_block_stop", "index": 0}));
        if let Some((id, name, args)) = &self.tool_use {
            events.push(json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}));
            let chars: Vec<char> = args.chars().collect();
            for piece in chars.chunks(8) {
                let piece: String = piece.iter().collect();
                events.push(json!({"type": "content_block_delta", "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": piece}}));
            }
            events.push(json!({"type": "content_block_stop", "index": 1}));
        }
        events.push(json!({"type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
            "usage": {"output_tokens": self.output_tokens}}));
        events.push(json!({"type": "message_stop"}));
        events.iter().map(named_event).collect()
    }
}

pub(super) fn named_event(payload: &Value) -> Bytes {
    let name = payload.get("type").and_then(Value::as_str).unwrap_or("");
    Bytes::from(format!("event: {name}\ndata: {payload}\n\n"))
}

/// The in-stream error Anthropic sends when it fails mid-answer.
pub(super) fn stream_error_event() -> Bytes {
    named_event(&json!({"type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"}}))
}

fn all_messages_text(body: &Value) -> String {
    body.get("messages")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(|m| m.get("content"))
                .map(content_text)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Default reply text: the same scheme as the OpenAI routes.
pub(super) fn default_reply(call: u64, body: &Value) -> String {
    format!("Answer #{call} to: {}", last_user_text(body, true))
}
