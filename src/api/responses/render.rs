//! A cached answer rendered as a Responses API answer: the `response` object (fresh `resp_` and
//! `msg_` ids, `created_at`, `status`, one assistant `message` item, `usage`, the request's
//! parameters echoed as OpenAI echoes them), or its SSE event sequence (`response.created`,
//! `response.in_progress`, `response.output_item.added`, `response.content_part.added`,
//! `response.output_text.delta`…, `response.output_text.done`, `response.content_part.done`,
//! `response.output_item.done`, `response.completed`), each event with its `sequence_number`, as
//! the openai SDK's stream accumulator expects them (one response id, one item id throughout).

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::api::render::{replay_calls, split_pieces};
use crate::api::sse;
use crate::store::{CachedResponse, FinishReason, ToolCall};

/// `resp_dj` + 32 hex chars: shaped like OpenAI's ids, and recognizably deja's own (see
/// [`super::chain::MINTED_PREFIX`]).
pub fn new_response_id() -> String {
    format!(
        "{}{}",
        super::chain::MINTED_PREFIX,
        uuid::Uuid::new_v4().simple()
    )
}

/// `msg_` + 32 hex chars.
pub fn new_message_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

/// Request fields a `response` object echoes, with OpenAI's defaults when the request left
/// them out.
fn echoed(request: &Map<String, Value>, key: &str, default: Value) -> Value {
    match request.get(key) {
        Some(v) if !v.is_null() => v.clone(),
        _ => default,
    }
}

fn model_of<'a>(resp: &'a CachedResponse, requested: &'a str) -> &'a str {
    if resp.model.is_empty() {
        requested
    } else {
        &resp.model
    }
}

fn usage(resp: &CachedResponse) -> Value {
    let u = resp.usage.unwrap_or_default();
    usage_of(u.prompt_tokens, u.completion_tokens)
}

/// An `output_text` content part.
pub fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// An assistant `message` output item.
pub fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

/// What one render shares between the JSON body and every event of a replay.
struct Ids<'a> {
    response: &'a str,
    message: String,
    created_at: u64,
    model: &'a str,
}

/// The fields of a `response` object that are not its output or usage.
pub struct Envelope<'a> {
    pub id: &'a str,
    pub created_at: u64,
    pub model: &'a str,
    /// `in_progress`, `completed` or `incomplete`.
    pub status: &'a str,
    /// Why an `incomplete` response stopped (`max_output_tokens`).
    pub incomplete_reason: Option<&'a str>,
}

/// A `response` object, with the client's `request` parameters echoed as OpenAI echoes them.
/// `usage` is `null` until the response is finished.
pub fn envelope(
    e: &Envelope<'_>,
    request: &Map<String, Value>,
    output: Vec<Value>,
    usage: Value,
) -> Value {
    json!({
        "id": e.id,
        "object": "response",
        "created_at": e.created_at,
        "status": e.status,
        "background": false,
        "error": null,
        "incomplete_details": e.incomplete_reason.map(|r| json!({"reason": r})),
        "instructions": echoed(request, "instructions", Value::Null),
        "max_output_tokens": echoed(request, "max_output_tokens", Value::Null),
        "model": e.model,
        "output": output,
        "parallel_tool_calls": echoed(request, "parallel_tool_calls", json!(true)),
        "previous_response_id": echoed(request, "previous_response_id", Value::Null),
        "reasoning": echoed(request, "reasoning", json!({"effort": null, "summary": null})),
        "store": echoed(request, "store", json!(true)),
        "temperature": echoed(request, "temperature", json!(1.0)),
        "text": echoed(request, "text", json!({"format": {"type": "text"}})),
        "tool_choice": echoed(request, "tool_choice", json!("auto")),
        "tools": echoed(request, "tools", json!([])),
        "top_p": echoed(request, "top_p", json!(1.0)),
        "truncation": echoed(request, "truncation", json!("disabled")),
        "usage": usage,
        "user": echoed(request, "user", Value::Null),
        "metadata": echoed(request, "metadata", json!({})),
    })
}

/// Responses `usage` from prompt and completion token counts.
pub fn usage_of(prompt_tokens: u32, completion_tokens: u32) -> Value {
    json!({
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens.saturating_add(completion_tokens),
    })
}

/// The `response` object of a stored answer at `status`, with `output` and, once finished,
/// `usage`.
fn response_object(
    resp: &CachedResponse,
    ids: &Ids<'_>,
    request: &Map<String, Value>,
    finished: bool,
    output: Vec<Value>,
) -> Value {
    let (status, incomplete_reason) = match (finished, resp.finish_reason) {
        (false, _) => ("in_progress", None),
        (true, FinishReason::Stop | FinishReason::ToolCalls) => ("completed", None),
        (true, FinishReason::Length) => ("incomplete", Some("max_output_tokens")),
    };
    let e = Envelope {
        id: ids.response,
        created_at: ids.created_at,
        model: ids.model,
        status,
        incomplete_reason,
    };
    let usage = if finished { usage(resp) } else { Value::Null };
    envelope(&e, request, output, usage)
}

fn item_status(resp: &CachedResponse) -> &'static str {
    match resp.finish_reason {
        FinishReason::Stop | FinishReason::ToolCalls => "completed",
        FinishReason::Length => "incomplete",
    }
}

/// Whether the answer has a message item: when it has text, or nothing else.
fn has_text(resp: &CachedResponse) -> bool {
    !resp.content.is_empty() || resp.tool_calls.is_empty()
}

/// A `function_call` output item (`fc_` item id, `call_` call id, both fresh per render).
fn function_call_item(
    item_id: &str,
    call_id: &str,
    call: &ToolCall,
    status: &str,
    arguments: &str,
) -> Value {
    json!({"type": "function_call", "id": item_id, "call_id": call_id, "name": call.name,
           "arguments": arguments, "status": status})
}

/// The stored calls with their fresh item and call ids.
fn calls_of(resp: &CachedResponse) -> Vec<(String, String, &ToolCall)> {
    replay_calls(resp, "call_")
        .into_iter()
        .map(|(call_id, c)| (ToolCall::fresh_id("fc_"), call_id, c))
        .collect()
}

/// The full `response` body of a hit. `request` is the client's Responses body (for the echoed
/// parameters).
pub fn render_responses_json(
    resp: &CachedResponse,
    id: &str,
    created_at: u64,
    model_requested: &str,
    request: &Map<String, Value>,
) -> Bytes {
    let ids = Ids {
        response: id,
        message: new_message_id(),
        created_at,
        model: model_of(resp, model_requested),
    };
    let mut output = Vec::with_capacity(1 + resp.tool_calls.len());
    if has_text(resp) {
        output.push(message_item(
            &ids.message,
            item_status(resp),
            vec![text_part(&resp.content)],
        ));
    }
    for (item_id, call_id, call) in calls_of(resp) {
        output.push(function_call_item(
            &item_id,
            &call_id,
            call,
            "completed",
            &call.arguments,
        ));
    }
    let body = response_object(resp, &ids, request, true, output);
    Bytes::from(serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec()))
}

/// The SSE replay of a hit, one `Bytes` per `event: TYPE\ndata: {json}\n\n`.
pub fn render_responses_sse(
    resp: &CachedResponse,
    id: &str,
    created_at: u64,
    model_requested: &str,
    request: &Map<String, Value>,
) -> Vec<Bytes> {
    let ids = Ids {
        response: id,
        message: new_message_id(),
        created_at,
        model: model_of(resp, model_requested),
    };
    let pieces = split_pieces(&resp.content);
    let mut events = Vec::with_capacity(pieces.len() + 8);
    let mut seq = 0u64;
    let mut push = |mut payload: Value| {
        let ty = payload
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        payload["sequence_number"] = json!(seq);
        seq += 1;
        events.push(sse::named_event(&ty, &payload));
    };
    let started = response_object(resp, &ids, request, false, Vec::new());
    push(json!({"type": "response.created", "response": started}));
    push(json!({"type": "response.in_progress", "response": started}));
    let mut output = Vec::with_capacity(1 + resp.tool_calls.len());
    if has_text(resp) {
        push(json!({
            "type": "response.output_item.added", "output_index": 0,
            "item": message_item(&ids.message, "in_progress", Vec::new()),
        }));
        let at = |ty: &str| json!({"type": ty, "item_id": ids.message, "output_index": 0, "content_index": 0});
        let mut added = at("response.content_part.added");
        added["part"] = text_part("");
        push(added);
        for piece in pieces {
            let mut delta = at("response.output_text.delta");
            delta["delta"] = json!(piece);
            delta["logprobs"] = json!([]);
            push(delta);
        }
        let mut done = at("response.output_text.done");
        done["text"] = json!(resp.content);
        done["logprobs"] = json!([]);
        push(done);
        let mut part_done = at("response.content_part.done");
        part_done["part"] = text_part(&resp.content);
        push(part_done);
        let item = message_item(
            &ids.message,
            item_status(resp),
            vec![text_part(&resp.content)],
        );
        push(json!({"type": "response.output_item.done", "output_index": 0, "item": item}));
        output.push(item);
    }
    // Each call as OpenAI streams it: the item with empty arguments, the arguments in pieces,
    // their `done`, the finished item.
    for (item_id, call_id, call) in calls_of(resp) {
        let index = output.len();
        push(json!({
            "type": "response.output_item.added", "output_index": index,
            "item": function_call_item(&item_id, &call_id, call, "in_progress", ""),
        }));
        for piece in split_pieces(&call.arguments) {
            push(
                json!({"type": "response.function_call_arguments.delta", "item_id": item_id,
                        "output_index": index, "delta": piece}),
            );
        }
        push(
            json!({"type": "response.function_call_arguments.done", "item_id": item_id,
                    "output_index": index, "name": call.name, "arguments": call.arguments}),
        );
        let item = function_call_item(&item_id, &call_id, call, "completed", &call.arguments);
        push(json!({"type": "response.output_item.done", "output_index": index, "item": item}));
        output.push(item);
    }
    let terminal = match resp.finish_reason {
        FinishReason::Stop | FinishReason::ToolCalls => "response.completed",
        FinishReason::Length => "response.incomplete",
    };
    let finished = response_object(resp, &ids, request, true, output);
    push(json!({"type": terminal, "response": finished}));
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sse::decode_all;
    use crate::store::Usage;

    fn cached(content: &str, finish_reason: FinishReason) -> CachedResponse {
        CachedResponse {
            model: "gpt-4o-mini-2024-07-18".into(),
            content: content.into(),
            finish_reason,
            usage: Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 9,
            }),
            provider: "p".into(),
            system_fingerprint: None,
            tool_calls: Vec::new(),
        }
    }

    #[test]
    fn json_hit_is_a_completed_response_with_echoed_parameters() {
        let req = json!({"model": "gpt-4o-mini", "instructions": "be brief", "temperature": 0.3})
            .as_object()
            .cloned()
            .unwrap();
        let body = render_responses_json(
            &cached("Hello there", FinishReason::Stop),
            "resp_1",
            5,
            "gpt-4o-mini",
            &req,
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "resp_1");
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["instructions"], "be brief");
        assert_eq!(v["temperature"], 0.3);
        assert_eq!(v["output"][0]["type"], "message");
        assert_eq!(v["output"][0]["content"][0]["text"], "Hello there");
        assert_eq!(v["usage"]["total_tokens"], 16);
        let cut = render_responses_json(
            &cached("Hel", FinishReason::Length),
            "resp_2",
            5,
            "m",
            &Map::new(),
        );
        let v: Value = serde_json::from_slice(&cut).unwrap();
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
    }

    #[test]
    fn sse_replay_is_the_documented_event_sequence() {
        let text = "The quick brown fox jumps over the lazy dog, twice over, and then rests.";
        let events = render_responses_sse(
            &cached(text, FinishReason::Stop),
            "resp_9",
            5,
            "m",
            &Map::new(),
        );
        let decoded = decode_all(&events.concat());
        let types: Vec<String> = decoded.iter().filter_map(|e| e.event.clone()).collect();
        let pieces = split_pieces(text).len();
        assert!(pieces > 1);
        let mut expected = vec![
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
        ];
        expected.extend(std::iter::repeat_n("response.output_text.delta", pieces));
        expected.extend([
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]);
        assert_eq!(types, expected);
        let mut text_back = String::new();
        for (i, ev) in decoded.iter().enumerate() {
            let v: Value = serde_json::from_str(&ev.data).unwrap();
            assert_eq!(v["sequence_number"], i as u64);
            assert_eq!(Some(v["type"].as_str().unwrap()), ev.event.as_deref());
            if let Some(d) = v["delta"].as_str() {
                text_back.push_str(d);
            }
            if let Some(r) = v.get("response") {
                assert_eq!(r["id"], "resp_9");
            }
        }
        assert_eq!(text_back, text);
        let last: Value = serde_json::from_str(&decoded.last().unwrap().data).unwrap();
        assert_eq!(last["response"]["output"][0]["content"][0]["text"], text);
        assert_eq!(last["response"]["usage"]["output_tokens"], 9);
    }
}
