//! OpenAI's Responses API for the mock upstream (`POST /v1/responses`): the `response` object
//! and its SSE event sequence (`response.created` … `response.completed`, with sequence numbers),
//! a `message` output item with the usual deterministic reply, or a `function_call` item when the
//! mock is told to call a tool (its arguments streamed as `response.function_call_arguments.delta`
//! events). Test-only.

use super::openai::words;
use super::{json_planned, stream_planned, Behaviour, Planned};
use axum::body::Bytes;
use serde_json::{json, Value};

/// The text of the last user message of a Responses `input` (a string or input items).
fn last_user_text(body: &Value) -> String {
    match body.get("input") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .rev()
            .find(|i| i.get("role").and_then(Value::as_str) == Some("user"))
            .and_then(|i| i.get("content"))
            .map(super::openai::content_text)
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn all_input_text(body: &Value) -> String {
    let mut text = body
        .get("instructions")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match body.get("input") {
        Some(Value::String(s)) => text.push_str(s),
        Some(Value::Array(items)) => {
            for i in items {
                if let Some(c) = i.get("content") {
                    text.push(' ');
                    text.push_str(&super::openai::content_text(c));
                }
            }
        }
        _ => {}
    }
    text
}

pub(super) fn plan(
    b: &Behaviour,
    call: u64,
    body: &Value,
    mut headers: Vec<(&'static str, String)>,
) -> Planned {
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return super::error(headers, 400, "Missing required parameter: 'model'.", None);
    };
    let reply = match &b.reply {
        Some(f) => f(body),
        None => format!("Answer #{call} to: {}", last_user_text(body)),
    };
    let mut text = reply;
    let mut status = "completed";
    let mut incomplete = Value::Null;
    if let Some(max) = body.get("max_output_tokens").and_then(Value::as_u64) {
        if words(&text) > max {
            text = text
                .split_whitespace()
                .take(max as usize)
                .collect::<Vec<_>>()
                .join(" ");
            status = "incomplete";
            incomplete = json!({"reason": "max_output_tokens"});
        }
    }
    let id = format!("resp_{}", uuid::Uuid::new_v4().simple());
    let item_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
    let input_tokens = words(&all_input_text(body)).max(1);
    let tool_call = super::tool_call_for(b, body);
    let (item, output_tokens) = match &tool_call {
        Some((name, args)) => (
            json!({"id": format!("fc_{}", uuid::Uuid::new_v4().simple()), "type": "function_call",
                   "status": "completed", "call_id": format!("call_{call}"), "name": name,
                   "arguments": args}),
            (args.len() as u64 / 4).max(1),
        ),
        None => (
            json!({"id": item_id, "type": "message", "status": status, "role": "assistant",
                   "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}),
            words(&text),
        ),
    };
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "id": id, "object": "response", "created_at": 1_741_476_542, "status": status,
            "error": null, "incomplete_details": if status == "in_progress" { Value::Null } else { incomplete.clone() },
            "instructions": body.get("instructions").cloned().unwrap_or(Value::Null),
            "model": model, "output": output, "parallel_tool_calls": true,
            "previous_response_id": body.get("previous_response_id").cloned().unwrap_or(Value::Null),
            "temperature": 1.0, "tool_choice": "auto", "tools": body.get("tools").cloned().unwrap_or(json!([])),
            "top_p": 1.0, "usage": usage, "metadata": {},
        })
    };
    let usage = json!({"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
                       "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                       "total_tokens": input_tokens + output_tokens});
    let status = if tool_call.is_some() {
        "completed"
    } else {
        status
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        headers.push(("content-type", "application/json".to_string()));
        let full = response(status, json!([item]), usage);
        return json_planned(headers, 200, Bytes::from(full.to_string()));
    }
    let mut events: Vec<Value> = vec![
        json!({"type": "response.created", "response": response("in_progress", json!([]), Value::Null)}),
        json!({"type": "response.in_progress", "response": response("in_progress", json!([]), Value::Null)}),
    ];
    let item_ref = item["id"].clone();
    match &tool_call {
        Some((_, args)) => {
            let mut added = item.clone();
            added["arguments"] = json!("");
            added["status"] = json!("in_progress");
            events.push(
                json!({"type": "response.output_item.added", "output_index": 0, "item": added}),
            );
            let chars: Vec<char> = args.chars().collect();
            for piece in chars.chunks(8) {
                let piece: String = piece.iter().collect();
                events.push(
                    json!({"type": "response.function_call_arguments.delta", "item_id": item_ref,
                                   "output_index": 0, "delta": piece}),
                );
            }
            events.push(
                json!({"type": "response.function_call_arguments.done", "item_id": item_ref,
                               "output_index": 0, "arguments": args}),
            );
        }
        None => {
            let mut added = item.clone();
            added["content"] = json!([]);
            added["status"] = json!("in_progress");
            events.push(
                json!({"type": "response.output_item.added", "output_index": 0, "item": added}),
            );
            let at = |ty: &str| json!({"type": ty, "item_id": item_ref, "output_index": 0, "content_index": 0});
            let mut part = at("response.content_part.added");
            part["part"] =
                json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
            events.push(part);
            for piece in text.split_inclusive(' ') {
                let mut d = at("response.output_text.delta");
                d["delta"] = json!(piece);
                d["logprobs"] = json!([]);
                events.push(d);
            }
            let mut done = at("response.output_text.done");
            done["text"] = json!(text);
            done["logprobs"] = json!([]);
            events.push(done);
            let mut part_done = at("response.content_part.done");
            part_done["part"] = item["content"][0].clone();
            events.push(part_done);
        }
    }
    let pre_finish = events.len();
    events.push(json!({"type": "response.output_item.done", "output_index": 0, "item": item}));
    let terminal = if status == "incomplete" {
        "response.incomplete"
    } else {
        "response.completed"
    };
    events.push(json!({"type": terminal, "response": response(status, json!([item]), usage)}));
    let chunks: Vec<Bytes> = events
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e["sequence_number"] = json!(i);
            let ty = e["type"].as_str().unwrap_or_default().to_string();
            Bytes::from(format!("event: {ty}\ndata: {e}\n\n"))
        })
        .collect();
    if let Some(k) = b.stream_error_after {
        let mut chunks: Vec<Bytes> = chunks.into_iter().take(k.min(pre_finish)).collect();
        let e = json!({"type": "error", "code": "server_error", "message": "The server had an error while processing your request.",
                       "param": null, "sequence_number": chunks.len()});
        chunks.push(Bytes::from(format!("event: error\ndata: {e}\n\n")));
        return stream_planned(headers, chunks, None);
    }
    stream_planned(
        headers,
        chunks,
        b.cut_stream_after.map(|k| k.min(pre_finish)),
    )
}
