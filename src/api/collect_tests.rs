//! Tests of `collect`: real-looking OpenAI and OpenAI-compatible bodies and chunk sequences,
//! every reason to refuse caching, and render → collect round trips.

use super::*;
use crate::api::render::{
    render_chat_json, render_chat_sse, render_completion_json, render_completion_sse,
};
use crate::api::sse::decode_all;
use crate::store::Usage as StoreUsage;
use serde_json::json;

const OPENAI_CHAT: &str = r#"{
  "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
  "object": "chat.completion",
  "created": 1741569952,
  "model": "gpt-4.1-2025-04-14",
  "choices": [{
    "index": 0,
    "message": {"role": "assistant", "content": "Hello! How can I assist you today?",
                "refusal": null, "annotations": []},
    "logprobs": null,
    "finish_reason": "stop"
  }],
  "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
  "service_tier": "default",
  "system_fingerprint": "fp_44709d6fcb"
}"#;

fn chat_body(patch: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(OPENAI_CHAT).unwrap();
    patch(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn openai_chat_json_is_collected() {
    let r = collect_chat_json(OPENAI_CHAT.as_bytes(), "openai").unwrap();
    assert_eq!(r.model, "gpt-4.1-2025-04-14");
    assert_eq!(r.content, "Hello! How can I assist you today?");
    assert_eq!(r.finish_reason, FinishReason::Stop);
    assert_eq!(
        r.usage,
        Some(StoreUsage {
            prompt_tokens: 19,
            completion_tokens: 10
        })
    );
    assert_eq!(r.provider, "openai");
    assert_eq!(r.system_fingerprint.as_deref(), Some("fp_44709d6fcb"));

    let len = chat_body(|v| v["choices"][0]["finish_reason"] = json!("length"));
    assert_eq!(
        collect_chat_json(&len, "openai").unwrap().finish_reason,
        FinishReason::Length
    );
}

#[test]
fn ollama_style_sparse_json_is_collected() {
    // Ollama's /v1 answer: no refusal, no logprobs, no system_fingerprint.
    let body = br#"{"id":"chatcmpl-532","object":"chat.completion","created":1720000000,
        "model":"llama3.2","choices":[{"index":0,"message":{"role":"assistant",
        "content":"Bonjour"},"finish_reason":"stop"}],
        "usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
    let r = collect_chat_json(body, "ollama").unwrap();
    assert_eq!(
        (r.model.as_str(), r.content.as_str()),
        ("llama3.2", "Bonjour")
    );
    assert_eq!(r.system_fingerprint, None);
    // Bare minimum: no id, no usage, TGI's finish reason, content as text parts.
    let body = br#"{"choices":[{"message":{"content":[{"type":"text","text":"a"},
        {"type":"text","text":"b"}]},"finish_reason":"eos_token"}]}"#;
    let r = collect_chat_json(body, "tgi").unwrap();
    assert_eq!((r.content.as_str(), r.usage), ("ab", None));
    assert_eq!(r.finish_reason, FinishReason::Stop);
}

#[test]
fn uncacheable_chat_json() {
    let second_choice = |v: &mut Value| {
        let mut c = v["choices"][0].clone();
        c["index"] = json!(1);
        v["choices"].as_array_mut().unwrap().push(c);
    };
    let cases: Vec<(Vec<u8>, NotCacheable)> = vec![
        (chat_body(second_choice), NotCacheable::MultipleChoices),
        (
            // A call without a function name.
            chat_body(|v| {
                v["choices"][0]["message"]["tool_calls"] = json!([{"id": "c"}]);
            }),
            NotCacheable::Malformed("a tool call without a name".into()),
        ),
        (
            chat_body(|v| {
                v["choices"][0]["message"]["tool_calls"] = json!([{"id": "call_1",
                    "type": "function", "function": {"name": "f", "arguments": "[1]"}}]);
                v["choices"][0]["finish_reason"] = json!("tool_calls");
            }),
            NotCacheable::Unrepresentable("tool call arguments that are not a JSON object"),
        ),
        (
            // Arguments cut by the token limit.
            chat_body(|v| {
                v["choices"][0]["message"]["tool_calls"] = json!([{"id": "call_1",
                    "type": "function", "function": {"name": "f", "arguments": "{}"}}]);
                v["choices"][0]["finish_reason"] = json!("length");
            }),
            NotCacheable::FinishReason("length".into()),
        ),
        (
            chat_body(|v| v["choices"][0]["message"]["function_call"] = json!({"name": "f"})),
            NotCacheable::Unrepresentable("function_call"),
        ),
        (
            chat_body(|v| {
                v["choices"][0]["message"]["content"] = Value::Null;
                v["choices"][0]["message"]["refusal"] = json!("I can't help with that.");
            }),
            NotCacheable::Refusal,
        ),
        (
            chat_body(|v| v["choices"][0]["finish_reason"] = json!("content_filter")),
            NotCacheable::FinishReason("content_filter".into()),
        ),
        (
            chat_body(|v| v["choices"][0]["finish_reason"] = Value::Null),
            NotCacheable::FinishReason("null".into()),
        ),
        (
            chat_body(|v| v["choices"][0]["message"]["content"] = json!("")),
            NotCacheable::NoContent,
        ),
        (
            chat_body(|v| v["choices"][0]["message"]["content"] = Value::Null),
            NotCacheable::NoContent,
        ),
        (
            chat_body(|v| v["choices"][0]["logprobs"] = json!({"content": []})),
            NotCacheable::Unrepresentable("logprobs"),
        ),
        (
            chat_body(|v| {
                v["choices"][0]["message"]["annotations"] = json!([{"type": "url_citation"}])
            }),
            NotCacheable::Unrepresentable("annotations"),
        ),
        (
            chat_body(|v| v["choices"][0]["message"]["audio"] = json!({"id": "audio_1"})),
            NotCacheable::Unrepresentable("audio"),
        ),
        (
            chat_body(|v| v["choices"] = json!([])),
            NotCacheable::NoChoices,
        ),
        (
            br#"{"error":{"message":"boom","type":"server_error"}}"#.to_vec(),
            NotCacheable::UpstreamError,
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(collect_chat_json(&body, "p"), Err(expected));
    }
    for bad in [&b"not json"[..], b"{}", b"[]", b"{\"choices\":5}"] {
        assert!(matches!(
            collect_chat_json(bad, "p"),
            Err(NotCacheable::Malformed(_))
        ));
    }
}

#[test]
fn completion_json() {
    let body = br#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"gpt-3.5-turbo-instruct",
        "choices":[{"text":"\n\nThis is a test.","index":0,"logprobs":null,"finish_reason":"length"}],
        "usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;
    let r = collect_completion_json(body, "openai").unwrap();
    assert_eq!(r.content, "\n\nThis is a test.");
    assert_eq!(r.finish_reason, FinishReason::Length);
    assert_eq!(r.usage.map(|u| u.total()), Some(12));
    let two = br#"{"choices":[{"text":"a","index":0,"finish_reason":"stop"},
        {"text":"b","index":1,"finish_reason":"stop"}]}"#;
    assert_eq!(
        collect_completion_json(two, "p"),
        Err(NotCacheable::MultipleChoices)
    );
    let lp = br#"{"choices":[{"text":"a","logprobs":{"tokens":["a"]},"finish_reason":"stop"}]}"#;
    assert_eq!(
        collect_completion_json(lp, "p"),
        Err(NotCacheable::Unrepresentable("logprobs"))
    );
}

/// The chunk sequence OpenAI sends for `stream: true, stream_options.include_usage: true`.
const OPENAI_STREAM: &[&str] = &[
    r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"Hel"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"lo 😀"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
    r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_1","choices":[],"usage":{"prompt_tokens":8,"completion_tokens":3,"total_tokens":11,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#,
    "[DONE]",
];

fn collect_chat(payloads: &[&str]) -> Result<CachedResponse, NotCacheable> {
    let mut c = ChatStreamCollector::new("openai");
    for p in payloads {
        c.push_event_data(p);
    }
    c.finish()
}

#[test]
fn openai_stream_is_collected() {
    let r = collect_chat(OPENAI_STREAM).unwrap();
    assert_eq!(r.content, "Hello 😀");
    assert_eq!(r.model, "gpt-4o-mini-2024-07-18");
    assert_eq!(r.finish_reason, FinishReason::Stop);
    assert_eq!(r.system_fingerprint.as_deref(), Some("fp_1"));
    assert_eq!(
        r.usage,
        Some(StoreUsage {
            prompt_tokens: 8,
            completion_tokens: 3
        })
    );
    // Without the usage chunk: still cacheable, usage unknown.
    let mut no_usage = OPENAI_STREAM.to_vec();
    no_usage.remove(4);
    assert_eq!(collect_chat(&no_usage).unwrap().usage, None);
}

#[test]
fn compatible_server_streams_are_collected() {
    // Ollama: sparse chunks, no fingerprint, content on the role chunk.
    let ollama = [
        r#"{"id":"chatcmpl-9","object":"chat.completion.chunk","created":1,"model":"llama3.2","choices":[{"index":0,"delta":{"role":"assistant","content":"Bon"},"finish_reason":null}]}"#,
        r#"{"id":"chatcmpl-9","object":"chat.completion.chunk","created":1,"model":"llama3.2","choices":[{"index":0,"delta":{"role":"assistant","content":"jour"},"finish_reason":"stop"}]}"#,
        "[DONE]",
    ];
    let r = collect_chat(&ollama).unwrap();
    assert_eq!(
        (r.content.as_str(), r.model.as_str()),
        ("Bonjour", "llama3.2")
    );
    // vLLM: last content and finish reason together, usage on the same chunk, reasoning ignored.
    let vllm = [
        r#"{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}"#,
        r#"{"model":"m","choices":[{"delta":{"content":"x"},"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
        " [DONE] ",
    ];
    let r = collect_chat(&vllm).unwrap();
    assert_eq!(r.content, "x");
    assert_eq!(r.finish_reason, FinishReason::Length);
    assert_eq!(r.usage.map(|u| u.total()), Some(2));
}

#[test]
fn truncated_streams_are_not_cacheable() {
    // Connection dropped before [DONE].
    assert_eq!(
        collect_chat(&OPENAI_STREAM[..4]),
        Err(NotCacheable::Truncated)
    );
    // [DONE] without any finish reason.
    assert_eq!(
        collect_chat(&[OPENAI_STREAM[0], OPENAI_STREAM[1], "[DONE]"]),
        Err(NotCacheable::Truncated)
    );
    assert_eq!(collect_chat(&[]), Err(NotCacheable::Truncated));
    // A chunk after [DONE] is ignored, not appended.
    let mut extra = OPENAI_STREAM.to_vec();
    extra.push(OPENAI_STREAM[1]);
    assert_eq!(collect_chat(&extra).unwrap().content, "Hello 😀");
}

#[test]
fn uncacheable_streams() {
    let tool = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}"#;
    let tool_end = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#;
    // A call without arguments is stored with `{}` (the positive cases are in
    // `tool_calls_are_collected`); one over the byte cap is not stored.
    let r = collect_chat(&[OPENAI_STREAM[0], tool, tool_end, "[DONE]"]).unwrap();
    assert_eq!(r.tool_calls[0].arguments, "{}");
    let mut c = ChatStreamCollector::with_limit("openai", 4);
    for p in [OPENAI_STREAM[0], tool, tool_end, "[DONE]"] {
        c.push_event_data(p);
    }
    assert_eq!(c.finish(), Err(NotCacheable::TooLarge(4)));
    let skip = r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":2,"function":{"arguments":"{}"}}]},"finish_reason":null}]}"#;
    assert!(matches!(
        collect_chat(&[OPENAI_STREAM[0], tool, skip, tool_end, "[DONE]"]),
        Err(NotCacheable::Malformed(_))
    ));
    let second = r#"{"choices":[{"index":1,"delta":{"content":"b"},"finish_reason":null}]}"#;
    let mut n2 = OPENAI_STREAM.to_vec();
    n2.insert(2, second);
    assert_eq!(collect_chat(&n2), Err(NotCacheable::MultipleChoices));
    let refusal = r#"{"choices":[{"index":0,"delta":{"refusal":"I can't"},"finish_reason":null}]}"#;
    let mut r = OPENAI_STREAM.to_vec();
    r.insert(1, refusal);
    assert_eq!(collect_chat(&r), Err(NotCacheable::Refusal));
    let mut bad = OPENAI_STREAM.to_vec();
    bad.insert(2, "{not json");
    assert!(matches!(
        collect_chat(&bad),
        Err(NotCacheable::Malformed(_))
    ));
    let mut err = OPENAI_STREAM.to_vec();
    err.insert(2, r#"{"error":{"message":"overloaded"}}"#);
    assert_eq!(collect_chat(&err), Err(NotCacheable::UpstreamError));
    let filtered = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"content_filter"}]}"#;
    assert_eq!(
        collect_chat(&[OPENAI_STREAM[1], filtered, "[DONE]"]),
        Err(NotCacheable::FinishReason("content_filter".into()))
    );
    let empty = [OPENAI_STREAM[0], OPENAI_STREAM[3], "[DONE]"];
    assert_eq!(collect_chat(&empty), Err(NotCacheable::NoContent));

    let mut c = ChatStreamCollector::with_limit("p", 4);
    for p in OPENAI_STREAM {
        c.push_event_data(p);
    }
    assert_eq!(c.failed(), Some(&NotCacheable::TooLarge(4)));
    assert_eq!(c.finish(), Err(NotCacheable::TooLarge(4)));
}

#[test]
fn completion_stream() {
    let chunks = [
        r#"{"id":"cmpl-1","object":"text_completion","created":1,"choices":[{"text":"\n\nHi","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}"#,
        r#"{"id":"cmpl-1","object":"text_completion","created":1,"choices":[{"text":" there","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}"#,
        r#"{"id":"cmpl-1","object":"text_completion","created":1,"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}],"model":"gpt-3.5-turbo-instruct"}"#,
        "[DONE]",
    ];
    let mut c = CompletionStreamCollector::new("openai");
    for p in chunks {
        c.push_event_data(p);
    }
    let r = c.finish().unwrap();
    assert_eq!(r.content, "\n\nHi there");
    assert_eq!(r.model, "gpt-3.5-turbo-instruct");
    let mut c = CompletionStreamCollector::new("openai");
    for p in &chunks[..2] {
        c.push_event_data(p);
    }
    assert_eq!(c.finish(), Err(NotCacheable::Truncated));
}

fn sample(content: &str, usage: Option<StoreUsage>) -> CachedResponse {
    CachedResponse {
        model: "gpt-4o".into(),
        content: content.into(),
        finish_reason: FinishReason::Length,
        usage,
        provider: "openai".into(),
        system_fingerprint: Some("fp_x".into()),
        tool_calls: Vec::new(),
    }
}

#[test]
fn render_then_collect_round_trips() {
    let usage = Some(StoreUsage {
        prompt_tokens: 3,
        completion_tokens: 4,
    });
    for text in ["x", "Hello, world! 你好 🌍 ".repeat(20).as_str()] {
        let orig = sample(text, usage);
        let json = render_chat_json(&orig, "id", 1, None);
        assert_eq!(collect_chat_json(&json, "openai").unwrap(), orig);
        let json = render_completion_json(&orig, "id", 1, None);
        assert_eq!(collect_completion_json(&json, "openai").unwrap(), orig);

        for include_usage in [false, true] {
            let expected = CachedResponse {
                usage: if include_usage { usage } else { None },
                ..orig.clone()
            };
            let body = crate::api::render::join_events(&render_chat_sse(
                &orig,
                "id",
                1,
                None,
                include_usage,
            ));
            let mut c = ChatStreamCollector::new("openai");
            for ev in decode_all(&body) {
                c.push_event_data(&ev.data);
            }
            assert_eq!(c.finish().unwrap(), expected);

            let body = crate::api::render::join_events(&render_completion_sse(
                &orig,
                "id",
                1,
                None,
                include_usage,
            ));
            let mut c = CompletionStreamCollector::new("openai");
            for ev in decode_all(&body) {
                c.push_event_data(&ev.data);
            }
            assert_eq!(c.finish().unwrap(), expected);
        }
    }
}

/// A JSON and a streamed chat answer with two tool calls (as OpenAI sends them) are collected
/// into the same stored answer, provider-neutral: ids, names and arguments as written.
#[test]
fn tool_calls_are_collected() {
    let body = chat_body(|v| {
        v["choices"][0]["message"]["content"] = Value::Null;
        v["choices"][0]["message"]["tool_calls"] = json!([
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_b", "type": "function",
             "function": {"name": "get_time", "arguments": "{\"tz\":\"CET\"}"}}]);
        v["choices"][0]["finish_reason"] = json!("tool_calls");
    });
    let json_answer = collect_chat_json(&body, "openai").unwrap();
    assert_eq!(json_answer.finish_reason, FinishReason::ToolCalls);
    assert_eq!(json_answer.content, "");
    let names: Vec<_> = json_answer
        .tool_calls
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("call_a", "get_weather", "{\"city\":\"Paris\"}"),
            ("call_b", "get_time", "{\"tz\":\"CET\"}")
        ]
    );
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
               "model": json_answer.model, "system_fingerprint": json_answer.system_fingerprint,
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        .to_string()
    };
    let events = [
        chunk(json!({"role": "assistant", "content": null}), Value::Null),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Paris\"}"}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
            "function": {"name": "get_time", "arguments": "{\"tz\":\"CET\"}"}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
    ];
    let mut c = ChatStreamCollector::new("openai");
    for e in &events {
        c.push_event_data(e);
    }
    c.push_event_data("[DONE]");
    let streamed = c.finish().unwrap();
    assert_eq!(streamed.tool_calls, json_answer.tool_calls);
    assert_eq!(streamed.finish_reason, FinishReason::ToolCalls);
}
