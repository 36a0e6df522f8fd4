//! The Responses API served by a provider that speaks only chat completions (Gemini's
//! OpenAI-compatible endpoint, Azure deployments) or only Anthropic Messages (through chat:
//! Messages → chat → Responses). Requests go out as their chat form
//! ([`crate::api::responses::to_chat`]); answers come back as a `response` object
//! ([`chat_json_to_responses`]) or as the Responses event sequence ([`ChatToResponsesStream`],
//! chained after [`super::MessagesToChatStream`] for Anthropic by [`Chained`]). Assistant text
//! becomes one `message` item, tool calls `function_call` items, `length` an `incomplete`
//! response.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::stream::StreamTranslate;
use super::TranslateError;
use crate::api::render::unix_now;
use crate::api::responses::{
    envelope, message_item, new_message_id, new_response_id, text_part, usage_of, Envelope,
};
use crate::api::sse;
use crate::providers::sse::{SseEvent, SseParser};

/// The chat body for a Responses `request`, or why it has none. A stream asks for the usage
/// chunk, which `response.completed` needs.
pub fn responses_to_chat(request: &Map<String, Value>) -> Result<Value, TranslateError> {
    let mut chat = crate::api::responses::to_chat(request)
        .map_err(|e| TranslateError::Untranslatable(format!("{e}")))?;
    if chat.get("stream").and_then(Value::as_bool) == Some(true) {
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(chat))
}

fn unrepresentable(what: impl Into<String>) -> TranslateError {
    TranslateError::Unrepresentable(what.into())
}

/// `status` and `incomplete_details.reason` for a chat finish reason.
fn status_of(finish: Option<&str>) -> Result<(&'static str, Option<&'static str>), TranslateError> {
    match finish {
        Some("stop") | Some("tool_calls") => Ok(("completed", None)),
        Some("length") => Ok(("incomplete", Some("max_output_tokens"))),
        Some("content_filter") => Ok(("incomplete", Some("content_filter"))),
        other => Err(unrepresentable(format!(
            "the upstream finished with `{}`, which the Responses API cannot carry",
            other.unwrap_or("null")
        ))),
    }
}

fn usage_from_chat(usage: Option<&Value>) -> Value {
    let n = |k: &str| {
        usage
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    usage_of(n("prompt_tokens"), n("completion_tokens"))
}

fn function_call_item(call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"id": format!("fc_{}", uuid::Uuid::new_v4().simple()), "type": "function_call",
           "status": status, "call_id": call_id, "name": name, "arguments": arguments})
}

/// A `chat.completion` body → a `response` object for `request`.
pub fn chat_json_to_responses(
    body: &[u8],
    request: &Map<String, Value>,
) -> Result<Bytes, TranslateError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| unrepresentable(format!("the upstream answer is not JSON: {e}")))?;
    let choices = v.get("choices").and_then(Value::as_array);
    let choice = match choices.map(Vec::as_slice) {
        Some([one]) => one,
        _ => {
            return Err(unrepresentable(
                "the upstream answer has not exactly one choice",
            ))
        }
    };
    let message = choice.get("message").cloned().unwrap_or_default();
    let (status, incomplete_reason) =
        status_of(choice.get("finish_reason").and_then(Value::as_str))?;
    let mut output = Vec::new();
    let text = message.get("content").and_then(Value::as_str).unwrap_or("");
    if !text.is_empty() {
        output.push(message_item(
            &new_message_id(),
            status,
            vec![text_part(text)],
        ));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = |p: &str| call.pointer(p).and_then(Value::as_str).unwrap_or_default();
        output.push(function_call_item(
            s("/id"),
            s("/function/name"),
            s("/function/arguments"),
            "completed",
        ));
    }
    let id = new_response_id();
    let model = v.get("model").and_then(Value::as_str).unwrap_or_default();
    let e = Envelope {
        id: &id,
        created_at: unix_now(),
        model,
        status,
        incomplete_reason,
    };
    let body = envelope(&e, request, output, usage_from_chat(v.get("usage")));
    super::to_bytes(&body)
}

/// One `function_call` output item being streamed.
#[derive(Debug)]
struct Call {
    output_index: usize,
    item: Value,
    arguments: String,
}

/// OpenAI chat chunk stream → the Responses event sequence, with sequence numbers. The first
/// chunk opens the response (`response.created`, `response.in_progress`); the first text opens
/// a `message` item and its `output_text` part; each tool call opens a `function_call` item
/// whose argument pieces become `response.function_call_arguments.delta`; `[DONE]` closes every
/// item and sends `response.completed` (or `response.incomplete`) with the whole output and the
/// usage of the usage chunk.
#[derive(Debug)]
pub struct ChatToResponsesStream {
    request: Map<String, Value>,
    id: String,
    created_at: u64,
    model: String,
    seq: u64,
    started: bool,
    done: bool,
    message: Option<(usize, String, String)>,
    calls: Vec<Call>,
    finish: Option<String>,
    usage: Option<Value>,
}

impl ChatToResponsesStream {
    pub fn new(request: Map<String, Value>) -> ChatToResponsesStream {
        ChatToResponsesStream {
            request,
            id: new_response_id(),
            created_at: unix_now(),
            model: String::new(),
            seq: 0,
            started: false,
            done: false,
            message: None,
            calls: Vec::new(),
            finish: None,
            usage: None,
        }
    }

    fn emit(&mut self, mut payload: Value, out: &mut Vec<u8>) {
        payload["sequence_number"] = json!(self.seq);
        self.seq += 1;
        let ty = payload
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        out.extend_from_slice(&sse::named_event(&ty, &payload));
    }

    fn response(&self, status: &str, reason: Option<&str>, output: Vec<Value>) -> Value {
        let e = Envelope {
            id: &self.id,
            created_at: self.created_at,
            model: &self.model,
            status,
            incomplete_reason: reason,
        };
        let usage = match status {
            "in_progress" => Value::Null,
            _ => usage_from_chat(self.usage.as_ref()),
        };
        envelope(&e, &self.request, output, usage)
    }

    fn next_index(&self) -> usize {
        usize::from(self.message.is_some()) + self.calls.len()
    }

    fn text(&mut self, piece: &str, out: &mut Vec<u8>) {
        if self.message.is_none() {
            let id = new_message_id();
            let index = self.next_index();
            self.emit(
                json!({"type": "response.output_item.added", "output_index": index,
                       "item": message_item(&id, "in_progress", Vec::new())}),
                out,
            );
            self.emit(
                json!({"type": "response.content_part.added", "item_id": id, "output_index": index,
                       "content_index": 0, "part": text_part("")}),
                out,
            );
            self.message = Some((index, id, String::new()));
        }
        let Some((index, id, text)) = self.message.as_mut() else {
            return;
        };
        text.push_str(piece);
        let ev = json!({"type": "response.output_text.delta", "item_id": id, "output_index": index,
                        "content_index": 0, "delta": piece, "logprobs": []});
        self.emit(ev, out);
    }

    fn tool_call(&mut self, delta: &Value, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let index = delta.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        if index > self.calls.len() {
            return Err(unrepresentable("the upstream skipped a tool call index"));
        }
        if index == self.calls.len() {
            let s = |p: &str| delta.pointer(p).and_then(Value::as_str).unwrap_or_default();
            let item = function_call_item(s("/id"), s("/function/name"), "", "in_progress");
            let output_index = self.next_index();
            self.emit(
                json!({"type": "response.output_item.added", "output_index": output_index, "item": item}),
                out,
            );
            self.calls.push(Call {
                output_index,
                item,
                arguments: String::new(),
            });
        }
        let piece = delta
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !piece.is_empty() {
            let (item_id, output_index) = {
                let call = &mut self.calls[index];
                call.arguments.push_str(piece);
                (call.item["id"].clone(), call.output_index)
            };
            self.emit(
                json!({"type": "response.function_call_arguments.delta", "item_id": item_id,
                       "output_index": output_index, "delta": piece}),
                out,
            );
        }
        Ok(())
    }

    fn finalize(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let (status, reason) = status_of(self.finish.as_deref())?;
        let mut output: Vec<(usize, Value)> = Vec::new();
        if let Some((index, id, text)) = self.message.take() {
            let at = json!({"item_id": id, "output_index": index, "content_index": 0});
            let with = |ty: &str, k: &str, v: Value| {
                let mut e = at.clone();
                e["type"] = json!(ty);
                e[k] = v;
                e
            };
            let mut done = with("response.output_text.done", "text", json!(text));
            done["logprobs"] = json!([]);
            self.emit(done, out);
            self.emit(
                with("response.content_part.done", "part", text_part(&text)),
                out,
            );
            let item = message_item(&id, status, vec![text_part(&text)]);
            self.emit(
                json!({"type": "response.output_item.done", "output_index": index, "item": item}),
                out,
            );
            output.push((index, item));
        }
        for call in std::mem::take(&mut self.calls) {
            let mut item = call.item;
            item["arguments"] = json!(call.arguments);
            item["status"] = json!("completed");
            self.emit(
                json!({"type": "response.function_call_arguments.done", "item_id": item["id"],
                       "output_index": call.output_index, "arguments": call.arguments}),
                out,
            );
            self.emit(
                json!({"type": "response.output_item.done", "output_index": call.output_index,
                       "item": item}),
                out,
            );
            output.push((call.output_index, item));
        }
        output.sort_by_key(|(i, _)| *i);
        let output = output.into_iter().map(|(_, v)| v).collect();
        let terminal = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        let response = self.response(status, reason, output);
        self.emit(json!({"type": terminal, "response": response}), out);
        self.done = true;
        Ok(())
    }
}

impl StreamTranslate for ChatToResponsesStream {
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if ev.is_done() {
            return self.finalize(out);
        }
        let v: Value = serde_json::from_str(&ev.data)
            .map_err(|e| unrepresentable(format!("malformed upstream chunk: {e}")))?;
        if let Some(error) = v.get("error").filter(|e| !e.is_null()) {
            let message = match error {
                Value::String(s) => s.as_str(),
                _ => error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream error"),
            };
            out.extend_from_slice(&self.error_frame(message));
            return Err(TranslateError::UpstreamError(message.to_owned()));
        }
        if !self.started {
            self.started = true;
            if let Some(m) = v.get("model").and_then(Value::as_str) {
                self.model = m.to_owned();
            }
            let r = self.response("in_progress", None, Vec::new());
            self.emit(json!({"type": "response.created", "response": r}), out);
            self.emit(json!({"type": "response.in_progress", "response": r}), out);
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        for choice in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                return Err(unrepresentable("the upstream streamed several choices"));
            }
            let delta = choice.get("delta").cloned().unwrap_or_default();
            if let Some(piece) = delta.get("content").and_then(Value::as_str) {
                if !piece.is_empty() {
                    self.text(piece, out);
                }
            }
            for call in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.tool_call(call, out)?;
            }
            if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish = Some(f.to_owned());
            }
        }
        Ok(())
    }

    fn end(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        if self.done {
            return Ok(());
        }
        // Some OpenAI-compatible servers end without `[DONE]` after the finish chunk.
        if self.started && self.finish.is_some() {
            return self.finalize(out);
        }
        Err(TranslateError::Truncated(
            "the upstream stream ended before its finish".to_owned(),
        ))
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn error_frame(&self, message: &str) -> Bytes {
        sse::responses_error_event(message, "server_error", self.seq)
    }
}

/// Two translators in a row: the first one's output events are the second one's input
/// (Anthropic events → chat chunks → Responses events). At most one incomplete event is held
/// between them, as the first translator writes whole events.
pub struct Chained {
    first: Box<dyn StreamTranslate>,
    parser: SseParser,
    second: Box<dyn StreamTranslate>,
}

impl Chained {
    pub fn new(first: Box<dyn StreamTranslate>, second: Box<dyn StreamTranslate>) -> Chained {
        Chained {
            first,
            parser: SseParser::new(),
            second,
        }
    }

    fn relay(&mut self, mid: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
        for ev in self.parser.feed(mid) {
            self.second.event(&ev, out)?;
        }
        Ok(())
    }
}

impl StreamTranslate for Chained {
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let mut mid = Vec::new();
        let first = self.first.event(ev, &mut mid);
        self.relay(&mid, out)?;
        first
    }

    fn end(&mut self, out: &mut Vec<u8>) -> Result<(), TranslateError> {
        let mut mid = Vec::new();
        self.first.end(&mut mid)?;
        self.relay(&mid, out)?;
        self.second.end(out)
    }

    fn is_done(&self) -> bool {
        self.second.is_done()
    }

    fn error_frame(&self, message: &str) -> Bytes {
        self.second.error_frame(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::sse::decode_all;

    fn request() -> Map<String, Value> {
        json!({"model": "m", "instructions": "be brief", "input": "hi"})
            .as_object()
            .cloned()
            .unwrap()
    }

    #[test]
    fn chat_json_becomes_a_response_object() {
        let chat = json!({"id": "c", "object": "chat.completion", "model": "gemini-2.0-flash",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
              "content": "Checking.", "tool_calls": [{"id": "call_1", "type": "function",
              "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}});
        let out = chat_json_to_responses(chat.to_string().as_bytes(), &request()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["instructions"], "be brief");
        assert_eq!(v["model"], "gemini-2.0-flash");
        assert_eq!(v["output"][0]["content"][0]["text"], "Checking.");
        assert_eq!(v["output"][1]["type"], "function_call");
        assert_eq!(v["output"][1]["call_id"], "call_1");
        assert_eq!(v["output"][1]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(v["usage"]["total_tokens"], 11);
        let cut = json!({"model": "m", "choices": [{"index": 0, "finish_reason": "length",
            "message": {"role": "assistant", "content": "Hel"}}]});
        let v: Value = serde_json::from_slice(
            &chat_json_to_responses(cut.to_string().as_bytes(), &request()).unwrap(),
        )
        .unwrap();
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
    }

    fn run(t: &mut dyn StreamTranslate, input: &str) -> (Vec<Value>, Result<(), TranslateError>) {
        let mut out = Vec::new();
        let mut result = Ok(());
        for ev in decode_all(input.as_bytes()) {
            result = t.event(&ev, &mut out);
            if result.is_err() || t.is_done() {
                break;
            }
        }
        if result.is_ok() && !t.is_done() {
            result = t.end(&mut out);
        }
        let events = decode_all(&out)
            .into_iter()
            .map(|e| {
                let v: Value = serde_json::from_str(&e.data).unwrap();
                assert_eq!(e.event.as_deref(), v["type"].as_str());
                v
            })
            .collect();
        (events, result)
    }

    #[test]
    fn chat_stream_becomes_the_responses_event_sequence() {
        let chunks = [
            json!({"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"model": "m", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
            json!({"model": "m", "choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]}),
            json!({"model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": "{\"a\":"}}]}}]}),
            json!({"model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": "1}"}}]}}]}),
            json!({"model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"model": "m", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}),
        ];
        let mut input: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        input.push_str("data: [DONE]\n\n");
        let mut t = ChatToResponsesStream::new(request());
        let (events, result) = run(&mut t, &input);
        result.unwrap();
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], i as u64);
        }
        let last = events.last().unwrap();
        assert_eq!(last["response"]["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(last["response"]["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(last["response"]["usage"]["output_tokens"], 3);
        assert_eq!(events[0]["response"]["id"], last["response"]["id"]);

        // An upstream error event becomes the Responses error event; a cut stream is an error.
        let mut t = ChatToResponsesStream::new(request());
        let (events, result) = run(
            &mut t,
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\ndata: {\"error\":{\"message\":\"boom\"}}\n\n",
        );
        assert!(matches!(result, Err(TranslateError::UpstreamError(_))));
        assert_eq!(events.last().unwrap()["type"], "error");
        let mut t = ChatToResponsesStream::new(request());
        let (_, result) = run(
            &mut t,
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n",
        );
        assert!(matches!(result, Err(TranslateError::Truncated(_))));
    }

    #[test]
    fn anthropic_stream_chains_through_chat_into_responses() {
        let events = [
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                "role": "assistant", "model": "claude", "content": [], "stop_reason": null,
                "usage": {"input_tokens": 4, "output_tokens": 0}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "Bonjour"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 2}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ];
        let input: String = events
            .iter()
            .map(|(n, v)| format!("event: {n}\ndata: {v}\n\n"))
            .collect();
        let mut t = Chained::new(
            Box::new(super::super::MessagesToChatStream::new(true)),
            Box::new(ChatToResponsesStream::new(request())),
        );
        let (out, result) = run(&mut t, &input);
        result.unwrap();
        assert!(t.is_done());
        let last = out.last().unwrap();
        assert_eq!(last["type"], "response.completed");
        assert_eq!(
            last["response"]["output"][0]["content"][0]["text"],
            "Bonjour"
        );
        assert_eq!(last["response"]["usage"]["input_tokens"], 4);
        assert_eq!(last["response"]["usage"]["output_tokens"], 2);
    }
}
