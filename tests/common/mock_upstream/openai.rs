//! OpenAI's wire shapes for the mock upstream: `chat.completion` and `text_completion` bodies,
//! their SSE chunk sequences (role chunk, content pieces, finish chunk, optional usage chunk,
//! `[DONE]`), and the request fields the mock reads (messages, prompt, limits). Test-only.

use super::{json_planned, stream_planned, Behaviour, Planned};
use axum::body::Bytes;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// Text of a message `content`: a string, or the text parts of an array.
pub(super) fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

pub(super) fn prompt_strings(body: &Value) -> Vec<String> {
    match body.get("prompt") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|p| p.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

pub(super) fn last_user_text(body: &Value, chat: bool) -> String {
    if !chat {
        return prompt_strings(body).into_iter().next().unwrap_or_default();
    }
    body.get("messages")
        .and_then(Value::as_array)
        .and_then(|m| {
            m.iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .map(content_text)
        .unwrap_or_default()
}

pub(super) fn all_prompt_text(body: &Value, chat: bool) -> String {
    if !chat {
        return prompt_strings(body).join(" ");
    }
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

pub(super) fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// A chat or legacy completion in OpenAI's shapes (the OpenAI and Azure routes).
pub(super) fn openai_completion(
    b: &Behaviour,
    call: u64,
    body: &Value,
    model: &str,
    chat: bool,
    mut headers: Vec<(&'static str, String)>,
) -> Planned {
    let reply = match &b.reply {
        Some(f) => f(body),
        None => format!("Answer #{call} to: {}", last_user_text(body, chat)),
    };
    let mut ctx = Ctx::new(
        super::tool_call_for(b, body).as_ref(),
        body,
        model,
        reply,
        chat,
    );
    ctx.prompt_tokens = words(&all_prompt_text(body, chat)).max(1);
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        headers.push(("content-type", "application/json".to_string()));
        return json_planned(headers, 200, Bytes::from(ctx.json_body().to_string()));
    }
    let mut chunks = ctx.sse_chunks();
    if let Some(k) = b.stream_error_after {
        chunks.truncate(k.min(ctx.pre_finish_events));
        let e = json!({"error": {"message": "The server had an error while processing your request. Sorry about that!",
                                 "type": "server_error", "param": null, "code": null}});
        chunks.push(Bytes::from(format!("data: {e}\n\n")));
    }
    stream_planned(
        headers,
        chunks,
        b.cut_stream_after.map(|k| k.min(ctx.pre_finish_events)),
    )
}

/// Everything one successful completion needs to render as JSON or SSE.
pub(super) struct Ctx {
    chat: bool,
    id: String,
    created: u64,
    model: String,
    text: String,
    finish_reason: &'static str,
    tool_call: Option<(String, String, String)>,
    n: u64,
    include_usage: bool,
    pub(super) prompt_tokens: u64,
    completion_tokens: u64,
    pub(super) pre_finish_events: usize,
}

impl Ctx {
    pub(super) fn new(
        tool_call: Option<&(String, String)>,
        body: &Value,
        model: &str,
        reply: String,
        chat: bool,
    ) -> Ctx {
        let max_tokens = body
            .get("max_completion_tokens")
            .or_else(|| body.get("max_tokens"))
            .and_then(Value::as_u64);
        let mut text = reply;
        let mut finish_reason = "stop";
        if let Some(max) = max_tokens {
            if words(&text) > max {
                text = text
                    .split_whitespace()
                    .take(max as usize)
                    .collect::<Vec<_>>()
                    .join(" ");
                finish_reason = "length";
            }
        }
        let tool_call = match (tool_call, chat) {
            (Some((name, args)), true) => {
                finish_reason = "tool_calls";
                let id = format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..24]);
                Some((id, name.clone(), args.clone()))
            }
            _ => None,
        };
        let completion_tokens = match &tool_call {
            Some((_, _, args)) => (args.len() as u64 / 4).max(1),
            None => words(&text),
        };
        let prefix = if chat { "chatcmpl-" } else { "cmpl-" };
        Ctx {
            chat,
            id: format!("{prefix}{}", uuid::Uuid::new_v4().simple()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            model: model.to_string(),
            text,
            finish_reason,
            tool_call,
            n: body
                .get("n")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .clamp(1, 16),
            include_usage: body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            prompt_tokens: 1,
            completion_tokens,
            pre_finish_events: 0,
        }
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }

    fn message(&self) -> Value {
        match &self.tool_call {
            Some((id, name, args)) => json!({
                "role": "assistant", "content": null, "refusal": null,
                "tool_calls": [{"id": id, "type": "function",
                                "function": {"name": name, "arguments": args}}],
            }),
            None => json!({"role": "assistant", "content": self.text, "refusal": null}),
        }
    }

    pub(super) fn json_body(&self) -> Value {
        if self.chat {
            let choices: Vec<Value> = (0..self.n)
                .map(|i| json!({"index": i, "message": self.message(), "logprobs": null, "finish_reason": self.finish_reason}))
                .collect();
            json!({
                "id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model, "choices": choices, "usage": self.usage(),
                "service_tier": "default", "system_fingerprint": "fp_deja_mock",
            })
        } else {
            let choices: Vec<Value> = (0..self.n)
                .map(|i| json!({"text": self.text, "index": i, "logprobs": null, "finish_reason": self.finish_reason}))
                .collect();
            json!({
                "id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": choices, "usage": self.usage(),
            })
        }
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> Value {
        let object = if self.chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let mut v = json!({
            "id": self.id, "object": object, "created": self.created,
            "model": self.model, "choices": choices,
        });
        if self.chat {
            v["service_tier"] = json!("default");
            v["system_fingerprint"] = json!("fp_deja_mock");
        }
        if self.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        v
    }

    fn delta(&self, delta: Value, finish: Option<&str>) -> Value {
        let choice = if self.chat {
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        } else {
            json!({"text": delta, "index": 0, "logprobs": null, "finish_reason": finish})
        };
        self.chunk(json!([choice]), None)
    }

    /// Role chunk, content pieces (one per word, spaces kept so they concatenate exactly),
    /// finish chunk, optional usage chunk, `[DONE]`.
    pub(super) fn sse_chunks(&mut self) -> Vec<Bytes> {
        let mut events = Vec::new();
        match (&self.tool_call, self.chat) {
            (Some((id, name, args)), _) => {
                events.push(self.delta(
                    json!({"role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [{"index": 0, "id": id, "type": "function",
                                    "function": {"name": name, "arguments": ""}}]}),
                    None,
                ));
                for piece in pieces(args, 8) {
                    events.push(self.delta(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                        None,
                    ));
                }
            }
            (None, true) => {
                events.push(self.delta(
                    json!({"role": "assistant", "content": "", "refusal": null}),
                    None,
                ));
                for piece in self.text.split_inclusive(' ') {
                    events.push(self.delta(json!({"content": piece}), None));
                }
            }
            (None, false) => {
                for piece in self.text.split_inclusive(' ') {
                    events.push(self.delta(json!(piece), None));
                }
            }
        }
        self.pre_finish_events = events.len();
        let empty = if self.chat { json!({}) } else { json!("") };
        events.push(self.delta(empty, Some(self.finish_reason)));
        if self.include_usage {
            events.push(self.chunk(json!([]), Some(self.usage())));
        }
        let mut out: Vec<Bytes> = events
            .into_iter()
            .map(|e| Bytes::from(format!("data: {e}\n\n")))
            .collect();
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }
}

/// `text` split into pieces of at most `size` characters.
fn pieces(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(size.max(1))
        .map(|c| c.iter().collect())
        .collect()
}
