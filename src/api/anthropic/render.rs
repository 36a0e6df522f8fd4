//! Rendering a cached answer as an Anthropic `message` body or as the exact event sequence of a
//! Messages stream (`message_start`, `content_block_start`, `ping`, `content_block_delta`...,
//! `content_block_stop`, `message_delta`, `message_stop`). Fresh `id` from the caller; never
//! decides whether an answer may be served.

use super::{BlockDelta, DeltaUsage, MessageDeltaBody, MessagesResponse, StreamEvent, Usage};
use crate::api::render::{replay_calls, split_pieces};
use crate::api::sse;
use crate::store::CachedResponse;
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// `msg_` + 32 hex chars.
pub fn new_message_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

fn model_of<'a>(resp: &'a CachedResponse, requested: Option<&'a str>) -> &'a str {
    if resp.model.is_empty() {
        requested.unwrap_or("")
    } else {
        &resp.model
    }
}

/// Usage as served; zeros when the stored answer had none (clients read it unconditionally).
fn usage(resp: &CachedResponse, output_tokens: Option<u32>) -> Usage {
    let u = resp.usage.unwrap_or_default();
    Usage {
        input_tokens: u.prompt_tokens,
        output_tokens: output_tokens.unwrap_or(u.completion_tokens),
        ..Usage::default()
    }
}

fn message(
    resp: &CachedResponse,
    id: &str,
    model_requested: Option<&str>,
    content: Vec<serde_json::Value>,
    done: bool,
) -> MessagesResponse {
    MessagesResponse {
        id: id.to_owned(),
        kind: "message".into(),
        role: "assistant".into(),
        model: model_of(resp, model_requested).to_owned(),
        content,
        stop_reason: done.then(|| resp.finish_reason.as_anthropic().to_owned()),
        stop_sequence: None,
        // The stream's first event reports the output counted so far, as Anthropic's does.
        usage: usage(resp, (!done).then_some(1)),
    }
}

/// A stored call's arguments as the object Anthropic's `input` is (the collectors only store
/// objects; anything else renders as `{}`).
fn input_of(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// Whether the answer has a text block: when it has text, or nothing else.
fn has_text(resp: &CachedResponse) -> bool {
    !resp.content.is_empty() || resp.tool_calls.is_empty()
}

/// A full `message` body: a text block, then one `tool_use` block per call.
pub fn render_messages_json(
    resp: &CachedResponse,
    id: &str,
    model_requested: Option<&str>,
) -> Bytes {
    let mut content = Vec::with_capacity(1 + resp.tool_calls.len());
    if has_text(resp) {
        content.push(json!({"type": "text", "text": resp.content}));
    }
    for (call_id, call) in replay_calls(resp, "toolu_") {
        content.push(json!({"type": "tool_use", "id": call_id, "name": call.name,
                            "input": input_of(&call.arguments)}));
    }
    let body = message(resp, id, model_requested, content, true);
    Bytes::from(serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec()))
}

/// The stream replay, one `Bytes` per `event: NAME\ndata: {json}\n\n`.
pub fn render_messages_sse(
    resp: &CachedResponse,
    id: &str,
    model_requested: Option<&str>,
) -> Vec<Bytes> {
    let pieces = split_pieces(&resp.content);
    let mut events = Vec::with_capacity(pieces.len() + 6);
    let mut push = |ev: StreamEvent| events.push(sse::named_event(ev.name(), &ev));
    push(StreamEvent::MessageStart {
        message: message(resp, id, model_requested, Vec::new(), false),
    });
    let mut index = 0;
    if has_text(resp) {
        push(StreamEvent::ContentBlockStart {
            index,
            content_block: json!({"type": "text", "text": ""}),
        });
        push(StreamEvent::Ping);
        for piece in pieces {
            push(StreamEvent::ContentBlockDelta {
                index,
                delta: BlockDelta {
                    kind: "text_delta".into(),
                    text: Some(piece.to_owned()),
                    extra: Map::new(),
                },
            });
        }
        push(StreamEvent::ContentBlockStop { index });
        index += 1;
    }
    // Each call as Anthropic streams it: the block with an empty `input`, then the arguments'
    // JSON text in `input_json_delta` pieces.
    for (call_id, call) in replay_calls(resp, "toolu_") {
        push(StreamEvent::ContentBlockStart {
            index,
            content_block: json!({"type": "tool_use", "id": call_id, "name": call.name,
                                  "input": {}}),
        });
        if index == 0 {
            push(StreamEvent::Ping);
        }
        for piece in split_pieces(&call.arguments) {
            let mut extra = Map::new();
            extra.insert("partial_json".into(), json!(piece));
            push(StreamEvent::ContentBlockDelta {
                index,
                delta: BlockDelta {
                    kind: "input_json_delta".into(),
                    text: None,
                    extra,
                },
            });
        }
        push(StreamEvent::ContentBlockStop { index });
        index += 1;
    }
    let out = usage(resp, None);
    push(StreamEvent::MessageDelta {
        delta: MessageDeltaBody {
            stop_reason: Some(resp.finish_reason.as_anthropic().to_owned()),
            stop_sequence: None,
        },
        usage: Some(DeltaUsage {
            input_tokens: Some(out.input_tokens),
            output_tokens: out.output_tokens,
            extra: Map::new(),
        }),
    });
    push(StreamEvent::MessageStop);
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sse::decode_all;
    use crate::store::{FinishReason, Usage as StoreUsage};
    use serde_json::Value;

    fn cached(content: &str, finish_reason: FinishReason) -> CachedResponse {
        CachedResponse {
            model: "claude-sonnet-4-20250514".into(),
            content: content.into(),
            finish_reason,
            usage: Some(StoreUsage {
                prompt_tokens: 25,
                completion_tokens: 15,
            }),
            provider: "anthropic".into(),
            system_fingerprint: None,
            tool_calls: Vec::new(),
        }
    }

    #[test]
    fn json_has_anthropic_shape() {
        let body = render_messages_json(&cached("Hi 👋", FinishReason::Stop), "msg_1", None);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "msg_1");
        assert_eq!(v["type"], "message");
        assert_eq!(v["role"], "assistant");
        assert_eq!(v["model"], "claude-sonnet-4-20250514");
        assert_eq!(v["content"], json!([{"type": "text", "text": "Hi 👋"}]));
        assert_eq!(v["stop_reason"], "end_turn");
        assert!(v.as_object().unwrap().contains_key("stop_sequence"));
        assert!(v["stop_sequence"].is_null());
        assert_eq!(v["usage"], json!({"input_tokens": 25, "output_tokens": 15}));
        let parsed: MessagesResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed.content.len(), 1);

        let body = render_messages_json(&cached("x", FinishReason::Length), "m", None);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["stop_reason"], "max_tokens");
    }

    #[test]
    fn sse_has_the_exact_event_sequence_and_text() {
        for text in [
            "",
            "Hello",
            "日本語のテキストと絵文字 🎉🎉 を含む、かなり長めの応答です。",
        ] {
            let events = render_messages_sse(&cached(text, FinishReason::Stop), "msg_9", None);
            let decoded = decode_all(&crate::api::render::join_events(&events));
            assert_eq!(decoded.len(), events.len());
            let names: Vec<&str> = decoded.iter().filter_map(|e| e.event.as_deref()).collect();
            let n = split_pieces(text).len();
            let mut expected = vec!["message_start", "content_block_start", "ping"];
            expected.extend(std::iter::repeat_n("content_block_delta", n));
            expected.extend(["content_block_stop", "message_delta", "message_stop"]);
            assert_eq!(names, expected);
            let mut got = String::new();
            for e in &decoded {
                let v: Value = serde_json::from_str(&e.data).unwrap();
                assert_eq!(
                    v["type"].as_str(),
                    e.event.as_deref(),
                    "type matches event name"
                );
                let ev: StreamEvent = serde_json::from_value(v.clone()).unwrap();
                match ev {
                    StreamEvent::MessageStart { message } => {
                        assert_eq!(message.id, "msg_9");
                        assert!(message.content.is_empty());
                        assert_eq!(message.stop_reason, None);
                        assert!(v["message"]["stop_reason"].is_null());
                        assert_eq!(message.usage.input_tokens, 25);
                    }
                    StreamEvent::ContentBlockDelta { index, delta } => {
                        assert_eq!((index, delta.kind.as_str()), (0, "text_delta"));
                        got.push_str(delta.text.as_deref().unwrap_or_default());
                    }
                    StreamEvent::MessageDelta { delta, usage } => {
                        assert_eq!(delta.stop_reason.as_deref(), Some("end_turn"));
                        let u = usage.unwrap();
                        assert_eq!((u.input_tokens, u.output_tokens), (Some(25), 15));
                    }
                    _ => {}
                }
            }
            assert_eq!(got, text);
        }
    }
}
