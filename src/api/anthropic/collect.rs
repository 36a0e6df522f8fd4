//! Collecting an Anthropic answer (a `message` body, or the `data:` payloads of its stream) into
//! a [`CachedResponse`]. Same conservative rule as the OpenAI side: at most one text block,
//! then any `tool_use` blocks, a normal stop (`end_turn`, `max_tokens`, `tool_use`), nothing a
//! replay would drop (server tools, thinking, citations, the stop sequence that was hit). Pure
//! CPU on small data; no policy (whether tool calls may be stored is the route's).

use super::{MessagesResponse, StreamEvent};
use crate::api::collect::{checked_tool_calls, NotCacheable, DEFAULT_MAX_CONTENT_BYTES};
use crate::store::{CachedResponse, FinishReason, ToolCall, Usage};
use serde_json::Value;

fn stop_reason(reason: Option<&str>, with_calls: bool) -> Result<FinishReason, NotCacheable> {
    match reason {
        Some("tool_use" | "end_turn") if with_calls => Ok(FinishReason::ToolCalls),
        Some("tool_use") => Err(NotCacheable::Malformed(
            "stop reason `tool_use` without a tool_use block".into(),
        )),
        // Cut arguments are not a call anyone can run.
        Some("max_tokens") if with_calls => Err(NotCacheable::FinishReason("max_tokens".into())),
        Some("end_turn") => Ok(FinishReason::Stop),
        Some("max_tokens") => Ok(FinishReason::Length),
        // The stored answer cannot say which sequence stopped it.
        Some("stop_sequence") => Err(NotCacheable::Unrepresentable("stop_sequence")),
        Some("refusal") => Err(NotCacheable::Refusal),
        Some(other) => Err(NotCacheable::FinishReason(other.to_owned())),
        None => Err(NotCacheable::FinishReason("null".into())),
    }
}

/// A `tool_use` block as a stored call (its `input` as JSON text).
fn tool_use_block(block: &Value) -> ToolCall {
    let text = |k: &str| {
        block
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let arguments = match block.get("input") {
        Some(Value::Object(m)) if m.is_empty() => String::new(),
        Some(input) => input.to_string(),
        None => String::new(),
    };
    ToolCall {
        id: text("id"),
        name: text("name"),
        arguments,
    }
}

fn is_tool_use(block: &Value) -> bool {
    block.get("type").and_then(Value::as_str) == Some("tool_use")
}

/// Reject a block that is not plain text; returns its text.
fn text_block(block: &Value) -> Result<&str, NotCacheable> {
    match block.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("server_tool_use") => return Err(NotCacheable::Unrepresentable("server_tool_use")),
        Some("thinking") | Some("redacted_thinking") => {
            return Err(NotCacheable::Unrepresentable("thinking"))
        }
        _ => return Err(NotCacheable::Unrepresentable("non-text content block")),
    }
    if block
        .get("citations")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty())
    {
        return Err(NotCacheable::Unrepresentable("citations"));
    }
    block
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| NotCacheable::Malformed("text block without text".into()))
}

/// Collect a non-streamed `message` body.
pub fn collect_messages_json(body: &[u8], provider: &str) -> Result<CachedResponse, NotCacheable> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| NotCacheable::Malformed(e.to_string()))?;
    if v.get("type").and_then(Value::as_str) == Some("error") {
        return Err(NotCacheable::UpstreamError);
    }
    let m: MessagesResponse =
        serde_json::from_value(v).map_err(|e| NotCacheable::Malformed(e.to_string()))?;
    let mut texts = Vec::with_capacity(1);
    let mut calls = Vec::new();
    for block in &m.content {
        if is_tool_use(block) {
            calls.push(tool_use_block(block));
        } else if !calls.is_empty() {
            // Stored text renders before the calls.
            return Err(NotCacheable::Unrepresentable("text after a tool call"));
        } else {
            texts.push(text_block(block)?);
        }
    }
    let tool_calls = checked_tool_calls(calls)?;
    let finish_reason = stop_reason(m.stop_reason.as_deref(), !tool_calls.is_empty())?;
    let content = match texts.as_slice() {
        [] => String::new(),
        [one] => (*one).to_owned(),
        _ => return Err(NotCacheable::Unrepresentable("multiple content blocks")),
    };
    if content.is_empty() && tool_calls.is_empty() {
        return Err(NotCacheable::NoContent);
    }
    Ok(CachedResponse {
        model: m.model,
        content,
        finish_reason,
        usage: Some(Usage {
            prompt_tokens: m.usage.input_tokens,
            completion_tokens: m.usage.output_tokens,
        }),
        provider: provider.to_owned(),
        system_fingerprint: None,
        tool_calls,
    })
}

/// Accumulates a Messages stream from its SSE `data:` payloads (each carries its `type`, so the
/// `event:` line is not needed).
#[derive(Debug)]
pub struct MessagesStreamCollector {
    provider: String,
    max_bytes: usize,
    model: String,
    content: String,
    blocks: u32,
    /// `tool_use` blocks so far; the last one is receiving `input_json_delta`s.
    tool_calls: Vec<ToolCall>,
    /// Text and argument bytes so far (bounded by `max_bytes`).
    bytes: usize,
    stop_reason: Option<String>,
    usage: Option<Usage>,
    done: bool,
    failed: Option<NotCacheable>,
}

impl MessagesStreamCollector {
    pub fn new(provider: &str) -> Self {
        Self::with_limit(provider, DEFAULT_MAX_CONTENT_BYTES)
    }

    pub fn with_limit(provider: &str, max_content_bytes: usize) -> Self {
        MessagesStreamCollector {
            provider: provider.to_owned(),
            max_bytes: max_content_bytes,
            model: String::new(),
            content: String::new(),
            blocks: 0,
            tool_calls: Vec::new(),
            bytes: 0,
            stop_reason: None,
            usage: None,
            done: false,
            failed: None,
        }
    }

    fn fail(&mut self, why: NotCacheable) {
        if self.failed.is_none() {
            self.failed = Some(why);
        }
        self.content = String::new();
        self.tool_calls = Vec::new();
    }

    /// Counts `n` more bytes; `false` (and failed) past the cap.
    fn grow(&mut self, n: usize) -> bool {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.max_bytes {
            self.fail(NotCacheable::TooLarge(self.max_bytes));
        }
        self.failed.is_none()
    }

    /// Feed one `data:` payload. Payloads after `message_stop` or after the answer became
    /// uncacheable are ignored; unknown event types are skipped, as Anthropic asks.
    pub fn push_event_data(&mut self, data: &str) {
        if self.failed.is_some() || self.done {
            return;
        }
        let data = data.trim();
        if data.is_empty() {
            return;
        }
        let ev: StreamEvent = match serde_json::from_str(data) {
            Ok(ev) => ev,
            Err(e) => return self.fail(NotCacheable::Malformed(e.to_string())),
        };
        match ev {
            StreamEvent::MessageStart { message } => {
                self.model = message.model;
                self.usage = Some(Usage {
                    prompt_tokens: message.usage.input_tokens,
                    completion_tokens: message.usage.output_tokens,
                });
            }
            StreamEvent::ContentBlockStart { content_block, .. } => {
                self.blocks += 1;
                if is_tool_use(&content_block) {
                    if self.tool_calls.len() == crate::api::collect::MAX_TOOL_CALLS {
                        return self.fail(NotCacheable::Unrepresentable(
                            "more tool calls than a stored answer holds",
                        ));
                    }
                    let call = tool_use_block(&content_block);
                    if self.grow(call.id.len() + call.name.len() + call.arguments.len()) {
                        self.tool_calls.push(call);
                    }
                } else if let Err(why) = text_block(&content_block) {
                    self.fail(why);
                } else if !self.tool_calls.is_empty() {
                    self.fail(NotCacheable::Unrepresentable("text after a tool call"));
                } else if self.blocks > 1 {
                    self.fail(NotCacheable::Unrepresentable("multiple content blocks"));
                }
            }
            StreamEvent::ContentBlockDelta { delta, .. } => match delta.kind.as_str() {
                "text_delta" if self.tool_calls.is_empty() => {
                    let text = delta.text.unwrap_or_default();
                    if self.grow(text.len()) {
                        self.content.push_str(&text);
                    }
                }
                "input_json_delta" if !self.tool_calls.is_empty() => {
                    let piece = delta
                        .extra
                        .get("partial_json")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if self.grow(piece.len()) {
                        if let Some(call) = self.tool_calls.last_mut() {
                            call.arguments.push_str(piece);
                        }
                    }
                }
                "text_delta" | "input_json_delta" => self.fail(NotCacheable::Malformed(
                    "a delta for a block of another type".into(),
                )),
                "thinking_delta" | "signature_delta" => {
                    self.fail(NotCacheable::Unrepresentable("thinking"))
                }
                "citations_delta" => self.fail(NotCacheable::Unrepresentable("citations")),
                _ => self.fail(NotCacheable::Unrepresentable("unknown delta")),
            },
            StreamEvent::MessageDelta { delta, usage } => {
                if delta.stop_reason.is_some() {
                    self.stop_reason = delta.stop_reason;
                }
                if let Some(u) = usage {
                    let total = self.usage.get_or_insert_with(Usage::default);
                    total.completion_tokens = u.output_tokens;
                    if let Some(input) = u.input_tokens {
                        total.prompt_tokens = input;
                    }
                }
            }
            StreamEvent::MessageStop => self.done = true,
            StreamEvent::Error { .. } => self.fail(NotCacheable::UpstreamError),
            StreamEvent::Ping | StreamEvent::ContentBlockStop { .. } | StreamEvent::Unknown => {}
        }
    }

    pub fn failed(&self) -> Option<&NotCacheable> {
        self.failed.as_ref()
    }

    /// The collected answer; `Truncated` without `message_stop` or without a stop reason.
    pub fn finish(self) -> Result<CachedResponse, NotCacheable> {
        if let Some(why) = self.failed {
            return Err(why);
        }
        if !self.done || self.stop_reason.is_none() {
            return Err(NotCacheable::Truncated);
        }
        let tool_calls = checked_tool_calls(self.tool_calls)?;
        let finish_reason = stop_reason(self.stop_reason.as_deref(), !tool_calls.is_empty())?;
        if self.content.is_empty() && tool_calls.is_empty() {
            return Err(NotCacheable::NoContent);
        }
        Ok(CachedResponse {
            model: self.model,
            content: self.content,
            finish_reason,
            usage: self.usage,
            provider: self.provider,
            system_fingerprint: None,
            tool_calls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::anthropic::render::{render_messages_json, render_messages_sse};
    use crate::api::render::join_events;
    use crate::api::sse::decode_all;
    use serde_json::json;

    const MESSAGE: &str = r#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant",
        "model":"claude-sonnet-4-20250514","content":[{"type":"text","text":"Hello!"}],
        "stop_reason":"end_turn","stop_sequence":null,
        "usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,
                 "output_tokens":6,"service_tier":"standard"}}"#;

    fn patched(f: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut v: Value = serde_json::from_str(MESSAGE).unwrap();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn message_json() {
        let r = collect_messages_json(MESSAGE.as_bytes(), "anthropic").unwrap();
        assert_eq!(r.content, "Hello!");
        assert_eq!(r.model, "claude-sonnet-4-20250514");
        assert_eq!(r.finish_reason, FinishReason::Stop);
        assert_eq!(
            r.usage,
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 6
            })
        );
        let cases = [
            (
                patched(|v| v["stop_reason"] = json!("max_tokens")),
                Ok(FinishReason::Length),
            ),
            (
                patched(|v| {
                    v["content"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"type":"tool_use","id":"toolu_1","name":"f","input":{}}));
                    v["stop_reason"] = json!("tool_use");
                }),
                Ok(FinishReason::ToolCalls),
            ),
            (
                patched(|v| {
                    v["content"] = json!([{"type":"tool_use","id":"toolu_1","name":"f","input":{}},
                                          {"type":"text","text":"a"}]);
                    v["stop_reason"] = json!("tool_use");
                }),
                Err(NotCacheable::Unrepresentable("text after a tool call")),
            ),
            (
                patched(|v| {
                    v["content"] = json!([{"type":"thinking","thinking":"hm","signature":"s"},
                                          {"type":"text","text":"a"}])
                }),
                Err(NotCacheable::Unrepresentable("thinking")),
            ),
            (
                patched(|v| {
                    v["content"] = json!([{"type":"text","text":"a"},{"type":"text","text":"b"}])
                }),
                Err(NotCacheable::Unrepresentable("multiple content blocks")),
            ),
            (
                patched(|v| {
                    v["stop_reason"] = json!("stop_sequence");
                    v["stop_sequence"] = json!("###");
                }),
                Err(NotCacheable::Unrepresentable("stop_sequence")),
            ),
            (
                patched(|v| v["stop_reason"] = json!("refusal")),
                Err(NotCacheable::Refusal),
            ),
            (
                patched(|v| v["content"] = json!([])),
                Err(NotCacheable::NoContent),
            ),
            (
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
                    .to_vec(),
                Err(NotCacheable::UpstreamError),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                collect_messages_json(&body, "anthropic").map(|r| r.finish_reason),
                expected
            );
        }
        assert!(matches!(
            collect_messages_json(b"{", "a"),
            Err(NotCacheable::Malformed(_))
        ));
    }

    /// A real stream (from Anthropic's docs), payloads only.
    const STREAM: &[&str] = &[
        r#"{"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-20250514","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"{"type": "ping"}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"! 🌍"}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
        r#"{"type":"message_stop"}"#,
    ];

    fn collect(payloads: &[&str]) -> Result<CachedResponse, NotCacheable> {
        let mut c = MessagesStreamCollector::new("anthropic");
        for p in payloads {
            c.push_event_data(p);
        }
        c.finish()
    }

    #[test]
    fn stream_is_collected() {
        let r = collect(STREAM).unwrap();
        assert_eq!(r.content, "Hello! 🌍");
        assert_eq!(r.model, "claude-sonnet-4-20250514");
        assert_eq!(
            r.usage,
            Some(Usage {
                prompt_tokens: 25,
                completion_tokens: 15
            })
        );
        // An unknown event type is skipped.
        let mut v = STREAM.to_vec();
        v.insert(3, r#"{"type":"future_event","x":1}"#);
        assert_eq!(collect(&v).unwrap().content, "Hello! 🌍");
    }

    #[test]
    fn uncacheable_streams() {
        assert_eq!(collect(&STREAM[..7]), Err(NotCacheable::Truncated));
        assert_eq!(
            collect(&[STREAM[0], STREAM[1], STREAM[3], STREAM[7]]),
            Err(NotCacheable::Truncated)
        );
        let tool_start = r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#;
        let mut v = STREAM.to_vec();
        v.insert(6, tool_start);
        let r = collect(&v).unwrap();
        assert_eq!(
            (r.content.as_str(), r.finish_reason),
            ("Hello! 🌍", FinishReason::ToolCalls)
        );
        assert_eq!(r.tool_calls[0].arguments, "{}");
        let mut v = STREAM.to_vec();
        v.insert(6, tool_start);
        v.insert(
            7,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"x"}}"#,
        );
        assert!(matches!(collect(&v), Err(NotCacheable::Malformed(_))));
        let thinking = r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}"#;
        let mut v = STREAM.to_vec();
        v.insert(3, thinking);
        assert_eq!(collect(&v), Err(NotCacheable::Unrepresentable("thinking")));
        let err = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let mut v = STREAM.to_vec();
        v.insert(4, err);
        assert_eq!(collect(&v), Err(NotCacheable::UpstreamError));
        let mut c = MessagesStreamCollector::with_limit("a", 3);
        for p in STREAM {
            c.push_event_data(p);
        }
        assert_eq!(c.finish(), Err(NotCacheable::TooLarge(3)));
    }

    #[test]
    fn render_then_collect_round_trips() {
        for finish_reason in [FinishReason::Stop, FinishReason::Length] {
            let orig = CachedResponse {
                model: "claude-3-5-haiku-latest".into(),
                content: "Ein längerer Text mit Umlauten, 中文 und 🎉, der in Stücke geht.".into(),
                finish_reason,
                usage: Some(Usage {
                    prompt_tokens: 9,
                    completion_tokens: 21,
                }),
                provider: "anthropic".into(),
                system_fingerprint: None,
                tool_calls: Vec::new(),
            };
            let json = render_messages_json(&orig, "msg_1", None);
            assert_eq!(collect_messages_json(&json, "anthropic").unwrap(), orig);
            let body = join_events(&render_messages_sse(&orig, "msg_1", None));
            let mut c = MessagesStreamCollector::new("anthropic");
            for ev in decode_all(&body) {
                c.push_event_data(&ev.data);
            }
            assert_eq!(c.finish().unwrap(), orig);
        }
    }
}
