//! Answer bodies both ways (Anthropic `message` ⇄ OpenAI `chat.completion`), the vocabulary
//! they share (finish reasons, usage, ids), and error bodies. An answer the inbound API cannot
//! express (tool use, thinking, several choices) is [`TranslateError::Unrepresentable`], never
//! trimmed into a different answer.

use super::{to_bytes, TranslateError};
use crate::api::anthropic::{MessagesResponse, Usage as AUsage};
use crate::api::error::ApiError;
use crate::api::openai::{ChatChoice, ChatCompletion, ResponseMessage, Usage};
use crate::api::render::unix_now;
use bytes::Bytes;
use serde_json::{json, Map, Value};

fn unrepresentable<T>(message: impl Into<String>) -> Result<T, TranslateError> {
    Err(TranslateError::Unrepresentable(message.into()))
}

/// `msg_X` → `chatcmpl-X`; the inverse of [`messages_id`] for ids of either vendor's shape.
pub fn chat_id(anthropic_id: &str) -> String {
    format!(
        "chatcmpl-{}",
        anthropic_id.strip_prefix("msg_").unwrap_or(anthropic_id)
    )
}

/// `chatcmpl-X` → `msg_X`.
pub fn messages_id(openai_id: &str) -> String {
    format!(
        "msg_{}",
        openai_id.strip_prefix("chatcmpl-").unwrap_or(openai_id)
    )
}

/// Anthropic `stop_reason` → OpenAI `finish_reason`. Tool use and paused server tools have no
/// text-only equivalent.
pub fn openai_finish_reason(stop_reason: &str) -> Result<&'static str, TranslateError> {
    match stop_reason {
        "end_turn" | "stop_sequence" => Ok("stop"),
        "max_tokens" | "model_context_window_exceeded" => Ok("length"),
        "refusal" => Ok("content_filter"),
        "tool_use" => Ok("tool_calls"),
        other => unrepresentable(format!(
            "the upstream stopped with `{other}`, which the OpenAI chat API cannot express here"
        )),
    }
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`. OpenAI does not say whether `stop` came
/// from a stop sequence, so it is always `end_turn`.
pub fn anthropic_stop_reason(finish_reason: &str) -> Result<&'static str, TranslateError> {
    match finish_reason {
        "stop" | "eos" | "eos_token" | "end_turn" | "stop_sequence" => Ok("end_turn"),
        "length" | "max_tokens" | "model_length" => Ok("max_tokens"),
        "content_filter" => Ok("refusal"),
        "tool_calls" => Ok("tool_use"),
        other => unrepresentable(format!(
            "the upstream finished with `{other}`, which the Anthropic Messages API cannot \
             express here"
        )),
    }
}

/// Anthropic counts cache reads and writes apart from `input_tokens`; OpenAI's `prompt_tokens`
/// includes them, with the reads in `prompt_tokens_details.cached_tokens`.
pub fn openai_usage(u: &AUsage) -> Usage {
    let read = u.cache_read_input_tokens.unwrap_or(0);
    let created = u.cache_creation_input_tokens.unwrap_or(0);
    let prompt = u.input_tokens + read + created;
    Usage {
        prompt_tokens: prompt,
        completion_tokens: u.output_tokens,
        total_tokens: prompt + u.output_tokens,
        prompt_tokens_details: (read > 0).then(|| json!({ "cached_tokens": read })),
        completion_tokens_details: None,
    }
}

/// The inverse of [`openai_usage`] (cache writes are not reported by OpenAI).
pub fn anthropic_usage(u: &Usage) -> AUsage {
    let cached = u
        .prompt_tokens_details
        .as_ref()
        .and_then(|d| d.get("cached_tokens"))
        .and_then(Value::as_u64)
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(0)
        .min(u.prompt_tokens);
    AUsage {
        input_tokens: u.prompt_tokens - cached,
        output_tokens: u.completion_tokens,
        cache_creation_input_tokens: None,
        cache_read_input_tokens: (cached > 0).then_some(cached),
        extra: Map::new(),
    }
}

/// A `tool_use` block as an OpenAI tool call (its `input` object as the JSON-string
/// `arguments`).
pub fn tool_call_of(block: &Value) -> Value {
    let s = |k: &str| block.get(k).and_then(Value::as_str).unwrap_or_default();
    let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
    json!({"id": s("id"), "type": "function",
           "function": {"name": s("name"), "arguments": input.to_string()}})
}

/// Text of Anthropic content blocks, joined without separator (as their stream deltas would
/// concatenate); `tool_use` blocks are the caller's (see [`tool_call_of`]). Any other block is
/// unrepresentable.
fn anthropic_text(content: &[Value]) -> Result<String, TranslateError> {
    let mut out = String::new();
    for block in content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => out.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {}
            other => {
                return unrepresentable(format!(
                    "the upstream answered with a `{}` block, which the OpenAI chat API cannot \
                     carry here",
                    other.unwrap_or("?")
                ))
            }
        }
    }
    Ok(out)
}

/// An Anthropic `message` body → an OpenAI `chat.completion` body.
pub fn messages_json_to_chat(body: &[u8]) -> Result<Bytes, TranslateError> {
    let m: MessagesResponse = serde_json::from_slice(body).map_err(|e| {
        TranslateError::Unrepresentable(format!("the upstream answer is not a message: {e}"))
    })?;
    let text = anthropic_text(&m.content)?;
    let calls: Vec<Value> = m
        .content
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
        .map(tool_call_of)
        .collect();
    let content = match (text.is_empty(), calls.is_empty()) {
        (true, false) => None,
        _ => Some(Value::String(text)),
    };
    let finish = m
        .stop_reason
        .as_deref()
        .map(openai_finish_reason)
        .transpose()?;
    let out = ChatCompletion {
        id: chat_id(&m.id),
        object: "chat.completion".to_owned(),
        created: unix_now(),
        model: m.model,
        choices: vec![ChatChoice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".to_owned(),
                content,
                refusal: None,
                tool_calls: (!calls.is_empty()).then_some(calls),
                function_call: None,
                annotations: Some(Vec::new()),
                audio: None,
                extra: Map::new(),
            },
            logprobs: None,
            finish_reason: finish.map(str::to_owned),
        }],
        usage: Some(openai_usage(&m.usage)),
        service_tier: None,
        system_fingerprint: None,
    };
    to_bytes(&out)
}

/// An OpenAI tool call as a `tool_use` block: its JSON-string arguments parsed into `input`.
pub fn tool_use_of(call: &Value) -> Result<Value, TranslateError> {
    let s = |p: &str| call.pointer(p).and_then(Value::as_str).unwrap_or_default();
    let arguments = s("/function/arguments");
    let input: Value = match arguments.trim() {
        "" => json!({}),
        a => serde_json::from_str(a).map_err(|e| {
            TranslateError::Unrepresentable(format!(
                "the upstream's tool call arguments are not JSON: {e}"
            ))
        })?,
    };
    if !input.is_object() {
        return unrepresentable("the upstream's tool call arguments are not a JSON object");
    }
    Ok(json!({"type": "tool_use", "id": s("/id"), "name": s("/function/name"), "input": input}))
}

/// Text of an OpenAI answer `content`: a string, or (some compatible servers) text parts.
fn openai_text(content: Option<&Value>) -> Result<String, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => out.push_str(t),
                    _ => return unrepresentable("the upstream answered with a non-text part"),
                }
            }
            Ok(out)
        }
        Some(_) => unrepresentable("the upstream answer's content is not text"),
    }
}

/// An OpenAI `chat.completion` body → an Anthropic `message` body.
pub fn chat_json_to_messages(body: &[u8]) -> Result<Bytes, TranslateError> {
    let c: ChatCompletion = serde_json::from_slice(body).map_err(|e| {
        TranslateError::Unrepresentable(format!(
            "the upstream answer is not a chat completion: {e}"
        ))
    })?;
    let choice = match c.choices.as_slice() {
        [one] => one,
        [] => return unrepresentable("the upstream answer has no choices"),
        _ => return unrepresentable("the upstream answer has several choices"),
    };
    let m = &choice.message;
    if m.function_call.as_ref().is_some_and(|f| !f.is_null()) {
        return unrepresentable("the upstream answered with a legacy `function_call`");
    }
    let mut tool_uses = Vec::new();
    for call in m.tool_calls.as_deref().unwrap_or_default() {
        tool_uses.push(tool_use_of(call)?);
    }
    if m.audio.as_ref().is_some_and(|a| !a.is_null()) {
        return unrepresentable("the upstream answered with audio");
    }
    let mut text = openai_text(m.content.as_ref())?;
    let refusal = m.refusal.as_deref().filter(|r| !r.is_empty());
    let mut stop_reason = choice
        .finish_reason
        .as_deref()
        .map(anthropic_stop_reason)
        .transpose()?;
    if let Some(r) = refusal {
        text.push_str(r);
        stop_reason = Some("refusal");
    }
    let mut content = if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({"type": "text", "text": text})]
    };
    content.extend(tool_uses);
    let out = MessagesResponse {
        id: messages_id(&c.id),
        kind: "message".to_owned(),
        role: "assistant".to_owned(),
        model: c.model,
        content,
        stop_reason: stop_reason.map(str::to_owned),
        stop_sequence: None,
        usage: c.usage.as_ref().map(anthropic_usage).unwrap_or_default(),
    };
    to_bytes(&out)
}

/// Any upstream error body → OpenAI's `{"error":{...}}` with the upstream's message.
pub fn error_to_openai(status: u16, body: &[u8]) -> Bytes {
    let e = ApiError::Upstream {
        status,
        body: Bytes::copy_from_slice(body),
    };
    Bytes::from(serde_json::to_vec(&e.to_openai_body()).unwrap_or_default())
}

/// Any upstream error body → Anthropic's `{"type":"error","error":{...}}`.
pub fn error_to_anthropic(status: u16, body: &[u8]) -> Bytes {
    let e = ApiError::Upstream {
        status,
        body: Bytes::copy_from_slice(body),
    };
    Bytes::from(serde_json::to_vec(&e.to_anthropic_body()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &str = r#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant",
        "model":"claude-3-5-haiku-20241022","content":[{"type":"text","text":"Hello"},{"type":"text","text":", wörld 🌍"}],
        "stop_reason":"end_turn","stop_sequence":null,
        "usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":4,"output_tokens":6}}"#;

    fn v(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn message_becomes_chat_completion() {
        let out = v(&messages_json_to_chat(MESSAGE.as_bytes()).unwrap());
        assert_eq!(out["id"], "chatcmpl-01XFDUDYJgAACzvnptvVoYEL");
        assert_eq!(out["object"], "chat.completion");
        assert_eq!(out["model"], "claude-3-5-haiku-20241022");
        assert_eq!(out["choices"][0]["message"]["content"], "Hello, wörld 🌍");
        assert_eq!(out["choices"][0]["message"]["role"], "assistant");
        assert!(out["choices"][0]["message"]["refusal"].is_null());
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens": 16, "completion_tokens": 6, "total_tokens": 22,
                   "prompt_tokens_details": {"cached_tokens": 4}})
        );
        // It is what the OpenAI collector accepts.
        let c = crate::api::collect::collect_chat_json(&serde_json::to_vec(&out).unwrap(), "a");
        assert_eq!(c.unwrap().content, "Hello, wörld 🌍");
    }

    #[test]
    fn stop_reasons_map_both_ways() {
        for (a, o) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("refusal", "content_filter"),
        ] {
            assert_eq!(openai_finish_reason(a), Ok(o));
        }
        assert_eq!(openai_finish_reason("tool_use"), Ok("tool_calls"));
        assert!(openai_finish_reason("pause_turn").is_err());
        assert_eq!(anthropic_stop_reason("stop"), Ok("end_turn"));
        assert_eq!(anthropic_stop_reason("length"), Ok("max_tokens"));
        assert_eq!(anthropic_stop_reason("content_filter"), Ok("refusal"));
        assert_eq!(anthropic_stop_reason("tool_calls"), Ok("tool_use"));
    }

    #[test]
    fn issue15_tool_use_becomes_tool_calls_and_thinking_is_unrepresentable() {
        let mut m = v(MESSAGE.as_bytes());
        m["content"] = json!([{"type": "tool_use", "id": "t", "name": "f", "input": {"a": [1]}}]);
        m["stop_reason"] = json!("tool_use");
        let r = v(&messages_json_to_chat(&serde_json::to_vec(&m).unwrap()).unwrap());
        let choice = &r["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        assert_eq!(
            choice["message"]["tool_calls"],
            json!([{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{\"a\":[1]}"}}])
        );
        m["content"] = json!([{"type": "thinking", "thinking": "hm", "signature": "s"}]);
        m["stop_reason"] = json!("end_turn");
        assert!(messages_json_to_chat(&serde_json::to_vec(&m).unwrap()).is_err());
        assert!(messages_json_to_chat(b"not json").is_err());
    }

    #[test]
    fn chat_completion_becomes_message() {
        let body = json!({
            "id": "chatcmpl-abc", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Salut ✓", "refusal": null},
                         "logprobs": null, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
                      "prompt_tokens_details": {"cached_tokens": 2}},
            "system_fingerprint": "fp"
        });
        let out = v(&chat_json_to_messages(&serde_json::to_vec(&body).unwrap()).unwrap());
        assert_eq!(
            out,
            json!({"id": "msg_abc", "type": "message", "role": "assistant", "model": "gpt-4o-mini",
                   "content": [{"type": "text", "text": "Salut ✓"}],
                   "stop_reason": "max_tokens", "stop_sequence": null,
                   "usage": {"input_tokens": 8, "output_tokens": 3, "cache_read_input_tokens": 2}})
        );
        let c =
            crate::api::anthropic::collect_messages_json(&serde_json::to_vec(&out).unwrap(), "o");
        assert_eq!(c.unwrap().content, "Salut ✓");

        let mut refused = body.clone();
        refused["choices"][0]["message"] =
            json!({"role": "assistant", "content": null, "refusal": "No."});
        refused["choices"][0]["finish_reason"] = json!("stop");
        let out = v(&chat_json_to_messages(&serde_json::to_vec(&refused).unwrap()).unwrap());
        assert_eq!(out["stop_reason"], "refusal");
        assert_eq!(out["content"][0]["text"], "No.");

        let mut tools = body.clone();
        tools["choices"][0]["message"]["tool_calls"] =
            json!([{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]);
        tools["choices"][0]["finish_reason"] = json!("tool_calls");
        let out = v(&chat_json_to_messages(&serde_json::to_vec(&tools).unwrap()).unwrap());
        assert_eq!(out["stop_reason"], "tool_use");
        let last = out["content"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            last,
            json!({"type": "tool_use", "id": "c", "name": "f", "input": {}})
        );
        tools["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = json!("[1]");
        assert!(chat_json_to_messages(&serde_json::to_vec(&tools).unwrap()).is_err());
        let mut two = body;
        let c0 = two["choices"][0].clone();
        two["choices"] = json!([c0.clone(), c0]);
        assert!(chat_json_to_messages(&serde_json::to_vec(&two).unwrap()).is_err());
    }

    #[test]
    fn usage_and_ids_invert() {
        let a = AUsage {
            input_tokens: 7,
            output_tokens: 9,
            cache_read_input_tokens: Some(3),
            ..AUsage::default()
        };
        assert_eq!(anthropic_usage(&openai_usage(&a)), a);
        assert_eq!(messages_id(&chat_id("msg_01abc")), "msg_01abc");
        assert_eq!(chat_id(&messages_id("chatcmpl-xyz")), "chatcmpl-xyz");
    }

    #[test]
    fn error_bodies_change_shape_not_message() {
        let anthropic =
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too big"}}"#;
        let o = v(&error_to_openai(400, anthropic));
        assert_eq!(o["error"]["message"], "max_tokens: too big");
        assert_eq!(o["error"]["type"], "invalid_request_error");
        assert!(o.get("type").is_none());
        let openai = br#"{"error":{"message":"Incorrect API key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        let a = v(&error_to_anthropic(401, openai));
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "authentication_error");
        assert_eq!(a["error"]["message"], "Incorrect API key");
        let a = v(&error_to_anthropic(404, b"<html>nope</html>"));
        assert_eq!(a["error"]["type"], "not_found_error");
    }
}
