//! Restoring a redacted request's values in a streamed answer as it is relayed. A model writes
//! a placeholder over several deltas (`[EMAIL`, `_1`, `]`), so text that could still become a
//! placeholder is held back until the next delta completes it or proves it is none, and a held
//! tail is released, as one more delta event like the last, before the first event that carries
//! no text (the finish chunk, `content_block_stop`, `[DONE]`). Only delta events are rewritten;
//! the others pass through.

use bytes::Bytes;
use serde_json::Value;

use super::Redaction;
use crate::api::sse;
use crate::api::ApiKind;

pub struct StreamRestorer {
    redaction: Redaction,
    api: ApiKind,
    /// Text held back: the start of what may be a placeholder.
    held: String,
    /// The last text delta event (its name and payload), the template for releasing `held`.
    last_delta: Option<(Option<String>, Value)>,
}

impl StreamRestorer {
    pub fn new(redaction: Redaction, api: ApiKind) -> StreamRestorer {
        StreamRestorer {
            redaction,
            api,
            held: String::new(),
            last_delta: None,
        }
    }

    /// Rewrites whole SSE events (as the tee relays them).
    pub fn relay(&mut self, events: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(events.len() + 64);
        for ev in sse::decode_all(events) {
            let mut payload = serde_json::from_str::<Value>(&ev.data).ok();
            let text = payload.as_mut().and_then(|p| delta_text(self.api, p));
            match text {
                Some(t) => {
                    let mut all = std::mem::take(&mut self.held);
                    all.push_str(t);
                    let cut = self.redaction.hold_from(&all);
                    self.held = all[cut..].to_string();
                    *t = self.redaction.restore(&all[..cut]);
                    if let Some(p) = payload {
                        out.extend_from_slice(&encode(ev.event.as_deref(), &p));
                        self.last_delta = Some((ev.event, p));
                    }
                }
                None => {
                    out.extend_from_slice(&self.release());
                    // Responses events repeat the whole text (`response.output_text.done`,
                    // `response.completed`): restored in place, as a JSON answer is.
                    let data = if self.api == ApiKind::Responses {
                        let restored = self.redaction.restore_json(&Bytes::from(ev.data));
                        String::from_utf8_lossy(&restored).into_owned()
                    } else {
                        ev.data
                    };
                    out.extend_from_slice(&raw(ev.event.as_deref(), &data));
                }
            }
        }
        Bytes::from(out)
    }

    /// The held-back text as one more delta event (empty when nothing is held).
    pub fn release(&mut self) -> Bytes {
        if self.held.is_empty() {
            return Bytes::new();
        }
        let held = std::mem::take(&mut self.held);
        let Some((name, mut p)) = self.last_delta.clone() else {
            return Bytes::new();
        };
        if let Some(t) = delta_text(self.api, &mut p) {
            *t = self.redaction.restore(&held);
        }
        encode(name.as_deref(), &p)
    }
}

/// The text of a delta event: OpenAI chat `choices[0].delta.content`, legacy completions
/// `choices[0].text`, Anthropic `content_block_delta` with a `text_delta`, Responses
/// `response.output_text.delta`.
fn delta_text(api: ApiKind, v: &mut Value) -> Option<&mut String> {
    let slot = match api {
        ApiKind::Chat => v.pointer_mut("/choices/0/delta/content"),
        ApiKind::Completions => v.pointer_mut("/choices/0/text"),
        ApiKind::Messages => {
            if v.pointer("/delta/type").and_then(Value::as_str) != Some("text_delta") {
                return None;
            }
            v.pointer_mut("/delta/text")
        }
        ApiKind::Responses => {
            if v.pointer("/type").and_then(Value::as_str) != Some("response.output_text.delta") {
                return None;
            }
            v.pointer_mut("/delta")
        }
    };
    match slot {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

fn encode(name: Option<&str>, payload: &Value) -> Bytes {
    match name {
        Some(n) => sse::named_event(n, payload),
        None => sse::data_event(payload),
    }
}

fn raw(name: Option<&str>, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    if let Some(n) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(n.as_bytes());
        out.push(b'\n');
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map};

    fn redaction() -> Redaction {
        let mut body: Map<String, Value> = json!({"messages": [
            {"role": "user", "content": "mail ann@example.com"}]})
        .as_object()
        .unwrap()
        .clone();
        Redaction::redact_body(&mut body)
    }

    fn chunk(text: &str) -> Bytes {
        sse::data_event(&json!({"choices": [{"index": 0, "delta": {"content": text}}]}))
    }

    fn texts(api: ApiKind, body: &[u8]) -> String {
        sse::decode_all(body)
            .into_iter()
            .filter_map(|e| {
                let mut v: Value = serde_json::from_str(&e.data).ok()?;
                delta_text(api, &mut v).map(|s| s.clone())
            })
            .collect()
    }

    #[test]
    fn a_placeholder_split_over_deltas_is_restored() {
        let mut r = StreamRestorer::new(redaction(), ApiKind::Chat);
        let mut out = Vec::new();
        for part in [
            "Sent to [",
            "EMAIL",
            "_1] and [x] ",
            "",
            "[EMAIL_1]",
            " [EMA",
        ] {
            out.extend_from_slice(&r.relay(&chunk(part)));
        }
        let finish = sse::data_event(
            &json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        );
        let mut tail = finish.to_vec();
        tail.extend_from_slice(sse::DONE);
        out.extend_from_slice(&r.relay(&tail));
        assert_eq!(
            texts(ApiKind::Chat, &out),
            "Sent to ann@example.com and [x] ann@example.com [EMA"
        );
        let events = sse::decode_all(&out);
        assert!(events.last().unwrap().is_done());
        assert!(events[events.len() - 2].data.contains("finish_reason"));
    }

    #[test]
    fn anthropic_text_deltas_are_restored() {
        let mut r = StreamRestorer::new(redaction(), ApiKind::Messages);
        let delta = |t: &str| {
            sse::named_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": t}}),
            )
        };
        let mut out = r.relay(&delta("to [EMAIL_")).to_vec();
        out.extend_from_slice(&r.relay(&delta("1].")));
        assert_eq!(texts(ApiKind::Messages, &out), "to ann@example.com.");
    }
}
