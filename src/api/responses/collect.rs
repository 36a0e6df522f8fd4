//! An upstream Responses answer (a `response` object, or its SSE events) collected into a
//! [`CachedResponse`], or the reason it cannot be stored: the same rules as chat (at most one
//! message, then `function_call` items; no refusals, nothing a replay would drop). A stream is collected from its terminal event's
//! `response` object, the whole answer as the provider sums it up; the text deltas before it
//! only count towards the size cap.

use serde_json::Value;

use crate::api::collect::{checked_tool_calls, NotCacheable};
use crate::store::{CachedResponse, FinishReason, ToolCall, Usage};

/// Collect a `response` object (the body of a non-streamed answer).
pub fn collect_responses_json(body: &[u8], provider: &str) -> Result<CachedResponse, NotCacheable> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| NotCacheable::Malformed(e.to_string()))?;
    collect_response(&v, provider)
}

fn collect_response(v: &Value, provider: &str) -> Result<CachedResponse, NotCacheable> {
    if v.get("object").and_then(Value::as_str) != Some("response") {
        return Err(NotCacheable::Malformed("not a `response` object".into()));
    }
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return Err(NotCacheable::UpstreamError);
    }
    let finish_reason = match v.get("status").and_then(Value::as_str) {
        Some("completed") => FinishReason::Stop,
        Some("incomplete")
            if v.pointer("/incomplete_details/reason")
                .and_then(Value::as_str)
                == Some("max_output_tokens") =>
        {
            FinishReason::Length
        }
        Some(other) => return Err(NotCacheable::FinishReason(other.to_owned())),
        None => return Err(NotCacheable::FinishReason("null".into())),
    };
    let output = v
        .get("output")
        .and_then(Value::as_array)
        .ok_or_else(|| NotCacheable::Malformed("`output` is not an array".into()))?;
    let mut content = String::new();
    let mut messages = 0;
    let mut calls = Vec::new();
    for item in output {
        match item.get("type").and_then(Value::as_str) {
            Some("message") if !calls.is_empty() => {
                // Stored text renders before the calls.
                return Err(NotCacheable::Unrepresentable("text after a tool call"));
            }
            Some("message") => {
                messages += 1;
                let parts = item.get("content").and_then(Value::as_array);
                for part in parts.into_iter().flatten() {
                    match part.get("type").and_then(Value::as_str) {
                        Some("output_text") => {
                            let has = |k: &str| {
                                part.get(k)
                                    .and_then(Value::as_array)
                                    .is_some_and(|a| !a.is_empty())
                            };
                            if has("annotations") {
                                return Err(NotCacheable::Unrepresentable("annotations"));
                            }
                            if has("logprobs") {
                                return Err(NotCacheable::Unrepresentable("logprobs"));
                            }
                            content.push_str(
                                part.get("text").and_then(Value::as_str).unwrap_or_default(),
                            );
                        }
                        Some("refusal") => return Err(NotCacheable::Refusal),
                        _ => return Err(NotCacheable::Unrepresentable("content parts")),
                    }
                }
            }
            // Reasoning is the model's own scratchpad: a replayed answer does not need it.
            Some("reasoning") => {}
            Some("function_call") => {
                let text = |k: &str| {
                    item.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                calls.push(ToolCall {
                    id: text("call_id"),
                    name: text("name"),
                    arguments: text("arguments"),
                });
            }
            Some("custom_tool_call") => {
                return Err(NotCacheable::Unrepresentable("custom_tool_call"))
            }
            _ => return Err(NotCacheable::Unrepresentable("output items")),
        }
    }
    if messages > 1 {
        return Err(NotCacheable::MultipleChoices);
    }
    let tool_calls = checked_tool_calls(calls)?;
    let finish_reason = match finish_reason {
        FinishReason::Stop if !tool_calls.is_empty() => FinishReason::ToolCalls,
        // Cut arguments are not a call anyone can run.
        FinishReason::Length if !tool_calls.is_empty() => {
            return Err(NotCacheable::FinishReason("incomplete".into()))
        }
        other => other,
    };
    if content.is_empty() && tool_calls.is_empty() {
        return Err(NotCacheable::NoContent);
    }
    let tokens = |k: &str| {
        v.pointer(&format!("/usage/{k}"))
            .and_then(Value::as_u64)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    let usage = match (tokens("input_tokens"), tokens("output_tokens")) {
        (Some(p), Some(c)) => Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
        }),
        _ => None,
    };
    Ok(CachedResponse {
        model: v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        content,
        finish_reason,
        usage,
        provider: provider.to_owned(),
        system_fingerprint: None,
        tool_calls,
    })
}

/// Collects a Responses stream from its events' `data`.
#[derive(Debug)]
pub struct ResponsesStreamCollector {
    provider: String,
    max_bytes: usize,
    /// Text bytes seen in deltas so far.
    seen: usize,
    answer: Option<Result<CachedResponse, NotCacheable>>,
    failed: Option<NotCacheable>,
    /// The terminal event's `response` object, until taken (`cache::chains` remembers it).
    response: Option<Value>,
}

impl ResponsesStreamCollector {
    pub fn with_limit(provider: &str, max_bytes: usize) -> Self {
        ResponsesStreamCollector {
            provider: provider.to_owned(),
            max_bytes,
            seen: 0,
            answer: None,
            failed: None,
            response: None,
        }
    }

    /// The finished `response` object of the stream, once its terminal event was seen (once).
    pub fn take_response(&mut self) -> Option<Value> {
        self.response.take()
    }

    pub fn push_event_data(&mut self, data: &str) {
        if self.failed.is_some() || self.answer.is_some() {
            return;
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                self.failed = Some(NotCacheable::Malformed(e.to_string()));
                return;
            }
        };
        match v.get("type").and_then(Value::as_str) {
            Some("response.output_text.delta") | Some("response.function_call_arguments.delta") => {
                let n = v.get("delta").and_then(Value::as_str).map_or(0, str::len);
                self.seen = self.seen.saturating_add(n);
                if self.seen > self.max_bytes {
                    self.failed = Some(NotCacheable::TooLarge(self.max_bytes));
                }
            }
            Some("response.completed") | Some("response.incomplete") => {
                self.response = v.get("response").cloned();
                let answer = match v.get("response") {
                    Some(r) => collect_response(r, &self.provider),
                    None => Err(NotCacheable::Malformed("no `response` in its event".into())),
                };
                let answer = match answer {
                    Ok(a)
                        if a.content.len()
                            + a.tool_calls
                                .iter()
                                .map(|c| c.arguments.len())
                                .sum::<usize>()
                            > self.max_bytes =>
                    {
                        Err(NotCacheable::TooLarge(self.max_bytes))
                    }
                    other => other,
                };
                self.answer = Some(answer);
            }
            Some("response.failed") | Some("error") => {
                self.failed = Some(NotCacheable::UpstreamError);
            }
            _ => {}
        }
    }

    pub fn failed(&self) -> Option<&NotCacheable> {
        self.failed
            .as_ref()
            .or_else(|| self.answer.as_ref().and_then(|a| a.as_ref().err()))
    }

    pub fn finish(self) -> Result<CachedResponse, NotCacheable> {
        if let Some(f) = self.failed {
            return Err(f);
        }
        self.answer.unwrap_or(Err(NotCacheable::Truncated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn response(status: &str, output: Value) -> Value {
        json!({"id": "resp_1", "object": "response", "status": status, "model": "gpt-4o",
               "error": null, "incomplete_details": null, "output": output,
               "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}})
    }

    fn message(parts: Value) -> Value {
        json!({"type": "message", "id": "msg_1", "role": "assistant", "status": "completed", "content": parts})
    }

    fn collect(v: &Value) -> Result<CachedResponse, NotCacheable> {
        collect_responses_json(v.to_string().as_bytes(), "p")
    }

    #[test]
    fn a_completed_text_answer_is_cached() {
        let out = json!([{"type": "reasoning", "id": "rs_1", "summary": []},
                         message(json!([{"type": "output_text", "text": "Hi", "annotations": []}]))]);
        let a = collect(&response("completed", out)).unwrap();
        assert_eq!(a.content, "Hi");
        assert_eq!(a.finish_reason, FinishReason::Stop);
        assert_eq!(a.usage.map(|u| u.total()), Some(7));
        assert_eq!(a.model, "gpt-4o");
    }

    #[test]
    fn uncacheable_answers_say_why() {
        let text =
            |t: &str| message(json!([{"type": "output_text", "text": t, "annotations": []}]));
        let call = json!({"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"});
        let a = collect(&response("completed", json!([call.clone()]))).unwrap();
        assert_eq!(a.finish_reason, FinishReason::ToolCalls);
        assert_eq!((a.tool_calls[0].id.as_str(), a.content.as_str()), ("c", ""));
        assert_eq!(
            collect(&response("completed", json!([call, text("after")]))),
            Err(NotCacheable::Unrepresentable("text after a tool call"))
        );
        assert_eq!(
            collect(&response(
                "completed",
                json!([message(json!([{"type": "refusal", "refusal": "no"}]))])
            )),
            Err(NotCacheable::Refusal)
        );
        assert_eq!(
            collect(&response("failed", json!([text("x")]))),
            Err(NotCacheable::FinishReason("failed".into()))
        );
        assert_eq!(
            collect(&response(
                "completed",
                json!([{"type": "web_search_call", "id": "w"}, text("x")])
            )),
            Err(NotCacheable::Unrepresentable("output items"))
        );
        assert_eq!(
            collect(&response(
                "completed",
                json!([message(json!([
                {"type": "output_text", "text": "x", "annotations": [{"type": "url_citation"}]}]))])
            )),
            Err(NotCacheable::Unrepresentable("annotations"))
        );
        assert_eq!(
            collect(&response("completed", json!([]))),
            Err(NotCacheable::NoContent)
        );
        let mut cut = response("incomplete", json!([text("x")]));
        cut["incomplete_details"] = json!({"reason": "max_output_tokens"});
        assert_eq!(collect(&cut).unwrap().finish_reason, FinishReason::Length);
        assert!(matches!(
            collect_responses_json(b"{\"object\":\"list\"}", "p"),
            Err(NotCacheable::Malformed(_))
        ));
    }

    #[test]
    fn stream_is_collected_from_its_terminal_event_within_the_cap() {
        let done = json!({"type": "response.completed", "sequence_number": 3,
            "response": response("completed", json!([message(json!([
                {"type": "output_text", "text": "Hello", "annotations": []}]))]))});
        let delta = json!({"type": "response.output_text.delta", "delta": "Hello"}).to_string();
        let mut c = ResponsesStreamCollector::with_limit("p", 64);
        c.push_event_data(&delta);
        assert!(c.failed().is_none());
        c.push_event_data(&done.to_string());
        assert_eq!(c.finish().unwrap().content, "Hello");

        let mut c = ResponsesStreamCollector::with_limit("p", 4);
        c.push_event_data(&delta);
        assert_eq!(c.failed(), Some(&NotCacheable::TooLarge(4)));
        let mut c = ResponsesStreamCollector::with_limit("p", 64);
        c.push_event_data(&delta);
        assert_eq!(c.finish(), Err(NotCacheable::Truncated));
        let mut c = ResponsesStreamCollector::with_limit("p", 64);
        c.push_event_data(r#"{"type":"response.failed","response":{}}"#);
        assert_eq!(c.finish(), Err(NotCacheable::UpstreamError));
    }
}
