use super::*;
use serde_json::{json, Value};

fn chat(v: Value) -> ChatCompletionRequest {
    serde_json::from_value(v).unwrap()
}

fn messages(v: Value) -> MessagesRequest {
    serde_json::from_value(v).unwrap()
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap()
}

fn refused_chat(v: Value) -> String {
    match chat_to_messages(&chat(v)) {
        Err(TranslateError::Untranslatable(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn refused_messages(v: Value) -> String {
    match messages_to_chat(&messages(v)) {
        Err(TranslateError::Untranslatable(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn chat_request_maps_every_supported_field() {
    let req = chat(json!({
        "model": "claude-3-5-haiku-latest",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Bonjour — ça va ? 日本"},
            {"role": "assistant", "content": "Oui.", "refusal": null, "annotations": []},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
        ],
        "max_tokens": 50,
        "max_completion_tokens": 60,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": "###",
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "u-42",
        "n": 1,
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "logprobs": false,
        "logit_bias": {},
        "response_format": {"type": "text"},
        "store": true,
        "metadata": {"k": "v"},
        "service_tier": "auto",
        "parallel_tool_calls": true,
        "prompt_cache_key": "x"
    }));
    let out = to_value(&chat_to_messages(&req).unwrap());
    assert_eq!(
        out,
        json!({
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 60,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in French."}],
            "messages": [
                {"role": "user", "content": "Bonjour — ça va ? 日本"},
                {"role": "assistant", "content": "Oui."},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ],
            "temperature": 0.5,
            "top_p": 0.9,
            "stop_sequences": ["###"],
            "stream": true,
            "metadata": {"user_id": "u-42"}
        })
    );
}

#[test]
fn single_system_string_and_default_max_tokens() {
    let out = chat_to_messages(&chat(json!({
        "model": "m",
        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
        "stop": ["a", "b"],
        "temperature": 1.0
    })))
    .unwrap();
    assert_eq!(out.max_tokens, DEFAULT_MAX_TOKENS);
    assert_eq!(out.system, Some(AContent::Text("S".into())));
    assert_eq!(out.stop_sequences, Some(vec!["a".into(), "b".into()]));
    assert_eq!(out.temperature, Some(1.0));
    assert_eq!(out.stream, None);
    assert!(out.metadata.is_none());
}

#[test]
fn output_changing_chat_params_are_refused() {
    let base = || json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let with = |k: &str, v: Value| {
        let mut b = base();
        b[k] = v;
        b
    };
    let cases = [
        (with("n", json!(2)), "`n`"),
        (with("logprobs", json!(true)), "`logprobs`"),
        (with("top_logprobs", json!(3)), "`logprobs`"),
        (with("logit_bias", json!({"50256": -100})), "`logit_bias`"),
        (with("seed", json!(7)), "`seed`"),
        (with("presence_penalty", json!(0.5)), "`presence_penalty`"),
        (with("frequency_penalty", json!(-1)), "`frequency_penalty`"),
        (
            with(
                "tools",
                json!([{"type": "custom", "custom": {"name": "f"}}]),
            ),
            "only function tools",
        ),
        (with("tool_choice", json!("required")), "`tool_choice`"),
        (
            with("response_format", json!({"type": "json_object"})),
            "`response_format`",
        ),
        (
            with(
                "response_format",
                json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
            ),
            "`response_format`",
        ),
        (with("reasoning_effort", json!("low")), "`reasoning_effort`"),
        (with("modalities", json!(["text", "audio"])), "`modalities`"),
        (
            with("audio", json!({"voice": "alloy", "format": "mp3"})),
            "`audio`",
        ),
        (
            with("web_search_options", json!({})),
            "`web_search_options`",
        ),
        (with("temperature", json!(1.5)), "`temperature`"),
        (with("functions", json!([{"name": "f"}])), "`functions`"),
        (with("verbosity", json!("low")), "`verbosity`"),
    ];
    for (body, needle) in cases {
        let m = refused_chat(body.clone());
        assert!(m.contains(needle), "{body}: {m}");
    }
}

#[test]
fn untranslatable_messages_are_refused_with_their_index() {
    let cases = [
        (
            json!([{"role": "user", "content": "a"}, {"role": "system", "content": "late"}, {"role": "user", "content": "b"}]),
            "messages[1]",
        ),
        (
            json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "pre"}]),
            "prefill",
        ),
        (
            json!([{"role": "system", "content": "only"}]),
            "at least one",
        ),
        (
            json!([{"role": "user", "content": "a", "name": "bob"}]),
            "`name`",
        ),
        (
            json!([{"role": "user", "content": "a"},
                   {"role": "assistant", "content": null,
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]},
                   {"role": "tool", "tool_call_id": "c", "content": "r"}]),
            "messages[1]: tool_calls[0]",
        ),
        (
            json!([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}]),
            "input_audio",
        ),
        (
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]}]),
            "detail",
        ),
        (
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]),
            "http(s)",
        ),
        (
            json!([{"role": "user", "content": "a", "cache_hint": 1}]),
            "`cache_hint`",
        ),
    ];
    for (msgs, needle) in cases {
        let m = refused_chat(json!({"model": "m", "messages": msgs}));
        assert!(m.contains(needle), "{msgs}: {m}");
    }
}

#[test]
fn images_become_image_blocks() {
    let out = chat_to_messages(&chat(json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "auto"}}
    ]}]})))
    .unwrap();
    assert_eq!(
        to_value(&out.messages[0].content),
        json!([
            {"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
        ])
    );
    // And back.
    let back = messages_to_chat(&out).unwrap();
    assert_eq!(
        to_value(&back.messages[0].content),
        json!([
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
        ])
    );
}

#[test]
fn messages_request_maps_every_supported_field() {
    let req = messages(json!({
        "model": "gpt-4o-mini",
        "max_tokens": 256,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": "Use ✓."}],
        "messages": [
            {"role": "user", "content": "Héllo"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "user", "content": [{"type": "text", "text": "more"}]}
        ],
        "temperature": 0.2,
        "top_p": 0.8,
        "stop_sequences": ["END"],
        "stream": true,
        "metadata": {"user_id": "u-1"},
        "thinking": {"type": "disabled"},
        "service_tier": "auto"
    }));
    let out = to_value(&messages_to_chat(&req).unwrap());
    assert_eq!(
        out,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "system", "content": "Use ✓."},
                {"role": "user", "content": "Héllo"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "user", "content": [{"type": "text", "text": "more"}]}
            ],
            "temperature": 0.2,
            "top_p": 0.8,
            "stream": true,
            "stream_options": {"include_usage": true},
            "stop": ["END"],
            "max_tokens": 256,
            "user": "u-1"
        })
    );
}

#[test]
fn output_changing_messages_params_are_refused() {
    let base =
        || json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let with = |k: &str, v: Value| {
        let mut b = base();
        b[k] = v;
        b
    };
    let cases = [
        (with("top_k", json!(5)), "`top_k`"),
        (
            with(
                "tools",
                json!([{"type": "web_search_20250305", "name": "web_search"}]),
            ),
            "tools[0]: server tools",
        ),
        (with("tool_choice", json!({"type": "any"})), "`tool_choice`"),
        (
            with(
                "thinking",
                json!({"type": "enabled", "budget_tokens": 1024}),
            ),
            "`thinking`",
        ),
        (with("mcp_servers", json!([])), "`mcp_servers`"),
        (
            with(
                "messages",
                json!([{"role": "user", "content": "a"}, {"role": "assistant", "content": "Sure,"}]),
            ),
            "prefill",
        ),
        (
            with(
                "messages",
                json!([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x", "is_error": true}]}]),
            ),
            "messages[0]: `is_error`",
        ),
        (
            with(
                "messages",
                json!([{"role": "user", "content": [{"type": "document", "source": {}}]}]),
            ),
            "`document`",
        ),
        (
            with(
                "system",
                json!([{"type": "text", "text": "s", "citations": [{"x": 1}]}]),
            ),
            "system",
        ),
    ];
    for (body, needle) in cases {
        let m = refused_messages(body.clone());
        assert!(m.contains(needle), "{body}: {m}");
    }
}

#[test]
fn chat_request_round_trips_through_messages() {
    let original = json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "Sys ✓"},
            {"role": "user", "content": "Q1 — 日本語"},
            {"role": "assistant", "content": "A1 🎉"},
            {"role": "user", "content": [{"type": "text", "text": "Q2"}]}
        ],
        "max_tokens": 100,
        "temperature": 0.3,
        "top_p": 0.5,
        "stop": ["x", "y"],
        "user": "u"
    });
    let there = chat_to_messages(&chat(original.clone())).unwrap();
    let back = messages_to_chat(&there).unwrap();
    assert_eq!(to_value(&back), original);
}

#[test]
fn issue15_tools_calls_and_results_map_onto_anthropic_blocks() {
    let req = chat(json!({
        "model": "claude",
        "messages": [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Rome\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "rain"}]}
        ],
        "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}},
                  {"type": "function", "function": {"name": "now"}}],
        "tool_choice": "required"
    }));
    let out = to_value(&chat_to_messages(&req).unwrap());
    assert_eq!(
        out["tools"],
        json!([{"name": "w", "input_schema": {"type": "object"}},
               {"name": "now", "input_schema": {"type": "object", "properties": {}}}])
    );
    assert_eq!(out["tool_choice"], json!({"type": "any"}));
    assert_eq!(
        out["messages"][1],
        json!({"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "c1", "name": "w", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "c2", "name": "w", "input": {"city": "Rome"}}]})
    );
    assert_eq!(
        out["messages"][2],
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "c1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "c2", "content": "rain"}]})
    );
    assert_eq!(out["messages"].as_array().unwrap().len(), 3);
    for (choice, parallel, expected) in [
        (json!("auto"), None, json!({"type": "auto"})),
        (json!("none"), Some(false), json!({"type": "none"})),
        (
            Value::Null,
            Some(false),
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        ),
        (
            json!({"type": "function", "function": {"name": "w"}}),
            None,
            json!({"type": "tool", "name": "w"}),
        ),
    ] {
        let mut r = req.clone();
        r.tool_choice = (!choice.is_null()).then_some(choice);
        r.parallel_tool_calls = parallel;
        assert_eq!(
            to_value(&chat_to_messages(&r).unwrap())["tool_choice"],
            expected
        );
    }
}

#[test]
fn issue15_anthropic_tools_and_blocks_map_onto_chat() {
    let req = messages(json!({
        "model": "gpt-4o", "max_tokens": 64,
        "tools": [{"name": "w", "description": "weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "w", "disable_parallel_tool_use": true},
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "sunny"}]},
                {"type": "text", "text": "and tomorrow?"}]}
        ]
    }));
    let out = to_value(&messages_to_chat(&req).unwrap());
    assert_eq!(
        out["tools"],
        json!([{"type": "function", "function": {"name": "w", "description": "weather",
                                                 "parameters": {"type": "object"}}}])
    );
    assert_eq!(
        out["tool_choice"],
        json!({"type": "function", "function": {"name": "w"}})
    );
    assert_eq!(out["parallel_tool_calls"], false);
    let m = out["messages"].as_array().unwrap();
    assert_eq!(
        m[1],
        json!({"role": "assistant", "content": [{"type": "text", "text": "Checking."}],
               "tool_calls": [{"id": "t1", "type": "function",
                               "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}}]})
    );
    assert_eq!(
        m[2],
        json!({"role": "tool", "tool_call_id": "t1", "content": "sunny"})
    );
    assert_eq!(
        m[3],
        json!({"role": "user", "content": [{"type": "text", "text": "and tomorrow?"}]})
    );
    let mut bad = req.clone();
    bad.tools = Some(vec![json!({"name": "w", "input_schema": "x"})]);
    assert!(refused_messages(to_value(&bad)).contains("tools[0]"));
}
