//! The router against Anthropic-kind and OpenAI-kind mock upstreams with translation: OpenAI
//! chat requests served by Anthropic (JSON, streams, usage, finish reasons, stop sequences,
//! system prompt placement, headers), untranslatable parameters refused without an upstream
//! call, Anthropic 429/529 retried, Anthropic error events ending the stream, Anthropic
//! Messages requests served by OpenAI, and fallback across kinds with a model rename.

mod common;

use common::mock_upstream::MockUpstream;
use common::providers::{drain, fast, json_body, router};
use deja::api::anthropic::MessagesStreamCollector;
use deja::api::collect::{collect_chat_json, ChatStreamCollector};
use deja::api::ApiKind;
use deja::providers::{
    ProviderError, ProviderErrorKind, ProviderSettings, RouteSettings, RouteTarget, Router,
    RouterError, SseEvent, SseParser, UpstreamRequest, DEFAULT_MAX_TOKENS,
};
use serde_json::{json, Value};

const CLIENT_KEY: &str = "sk-ant-client-key";

fn anthropic(name: &str, up: &MockUpstream) -> ProviderSettings {
    fast(ProviderSettings::anthropic(name, up.anthropic_base_url()))
}

fn openai(name: &str, up: &MockUpstream) -> ProviderSettings {
    fast(ProviderSettings::openai(name, up.base_url()))
}

/// An OpenAI chat request as the server sends it: with its dialect and the client's key.
fn chat_req(body: Value) -> UpstreamRequest {
    let stream = body["stream"].as_bool().unwrap_or(false);
    UpstreamRequest::post_json("/chat/completions", &body, stream)
        .with_api(ApiKind::Chat)
        .with_client_key(Some(CLIENT_KEY.to_string()))
}

fn chat(text: &str) -> Value {
    json!({
        "model": "claude-3-5-haiku-latest",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
    })
}

fn messages_req(body: Value) -> UpstreamRequest {
    let stream = body["stream"].as_bool().unwrap_or(false);
    UpstreamRequest::post_json("/messages", &body, stream)
        .with_api(ApiKind::Messages)
        .with_client_key(Some("sk-openai-client".to_string()))
}

fn events(bytes: &[u8]) -> Vec<SseEvent> {
    SseParser::new().feed(bytes)
}

fn all_failed(err: RouterError) -> Vec<(String, ProviderError)> {
    match err {
        RouterError::AllFailed { attempts } => attempts,
        other => panic!("expected AllFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn openai_json_is_answered_by_anthropic_in_openai_shape() {
    let up = MockUpstream::start().await;
    let r = router(vec![anthropic("claude", &up)], &["claude"]);
    let mut body = chat("hello there — ça va?");
    body["stop"] = json!(["###"]);
    body["user"] = json!("user-7");
    body["temperature"] = json!(0.4);
    let resp = r
        .send(chat_req(body), "claude-3-5-haiku-latest")
        .await
        .unwrap();
    assert_eq!((resp.status, resp.provider.as_str()), (200, "claude"));

    let rec = up.last_request().unwrap();
    assert_eq!(rec.path, "/v1/messages");
    assert_eq!(rec.header("x-api-key").as_deref(), Some(CLIENT_KEY));
    assert_eq!(
        rec.header("anthropic-version").as_deref(),
        Some("2023-06-01")
    );
    assert_eq!(rec.authorization(), None);
    assert_eq!(
        rec.body,
        json!({
            "model": "claude-3-5-haiku-latest",
            "max_tokens": DEFAULT_MAX_TOKENS,
            "system": "Be brief.",
            "messages": [{"role": "user", "content": "hello there — ça va?"}],
            "temperature": 0.4,
            "stop_sequences": ["###"],
            "metadata": {"user_id": "user-7"}
        })
    );

    let v = json_body(&resp);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "claude-3-5-haiku-latest");
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        choice["message"]["content"],
        "Answer #1 to: hello there — ça va?"
    );
    assert_eq!(choice["finish_reason"], "stop");
    // "Be brief. hello there — ça va?" is 7 words in, the answer 8 words out.
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15})
    );
    assert_eq!(resp.headers["content-type"], "application/json");
    assert!(resp.headers.get("request-id").is_some());
    let cached = collect_chat_json(resp.json_bytes().unwrap(), "claude").unwrap();
    assert_eq!(cached.content, "Answer #1 to: hello there — ça va?");
}

#[tokio::test]
async fn finish_reasons_length_and_stop_sequence() {
    let up = MockUpstream::builder()
        .reply_with(|_| "alpha beta ### gamma delta".to_string())
        .start()
        .await;
    let r = router(vec![anthropic("claude", &up)], &["claude"]);
    let mut body = chat("x");
    body["max_completion_tokens"] = json!(2);
    let v = json_body(&r.send(chat_req(body), "m").await.unwrap());
    assert_eq!(up.last_request().unwrap().body["max_tokens"], 2);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["message"]["content"], "alpha beta");

    let mut body = chat("x");
    body["stop"] = json!("###");
    let v = json_body(&r.send(chat_req(body), "m").await.unwrap());
    assert_eq!(
        up.last_request().unwrap().body["stop_sequences"],
        json!(["###"])
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["message"]["content"], "alpha beta ");
}

#[tokio::test]
async fn openai_stream_is_answered_by_anthropic_as_openai_chunks() {
    let up = MockUpstream::builder()
        .reply_with(|_| "Grüße aus 東京, 🎉 fin".to_string())
        .start()
        .await;
    let r = router(vec![anthropic("claude", &up)], &["claude"]);
    for include_usage in [true, false] {
        let mut body = chat("stream please");
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": include_usage});
        let resp = r.send(chat_req(body), "m").await.unwrap();
        assert_eq!(up.last_request().unwrap().body["stream"], true);
        let (bytes, err) = drain(resp).await;
        assert!(err.is_none(), "{err:?}");
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            !text.contains("event:"),
            "OpenAI streams have no event names"
        );
        let evs = events(&bytes);
        assert!(evs.last().unwrap().is_done());
        let chunks: Vec<Value> = evs[..evs.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let finish: Vec<&Value> = chunks
            .iter()
            .filter(|c| !c["choices"][0]["finish_reason"].is_null())
            .collect();
        assert_eq!(finish.len(), 1);
        assert_eq!(finish[0]["choices"][0]["finish_reason"], "stop");
        let usage: Vec<&Value> = chunks.iter().filter(|c| c["usage"].is_object()).collect();
        if include_usage {
            assert_eq!(usage.len(), 1);
            assert_eq!(usage[0]["choices"], json!([]));
            assert_eq!(
                usage[0]["usage"],
                json!({"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9})
            );
        } else {
            assert!(usage.is_empty());
        }
        let mut c = ChatStreamCollector::new("claude");
        for e in &evs {
            c.push_event_data(&e.data);
        }
        assert_eq!(c.finish().unwrap().content, "Grüße aus 東京, 🎉 fin");
    }
}

#[tokio::test]
async fn provider_key_and_api_version_go_in_anthropic_headers() {
    let var = "DEJA_TEST_KEY_PROVIDERS_ANTHROPIC_1";
    std::env::set_var(var, "sk-ant-from-env");
    let up = MockUpstream::start().await;
    let mut p = anthropic("claude", &up);
    p.api_key_env = Some(var.to_string());
    p.api_version = Some("2024-02-15".to_string());
    let r = router(vec![p], &["claude"]);
    let mut req = chat_req(chat("x"));
    req.headers
        .insert("openai-beta", "assistants=v2".parse().unwrap());
    req.headers.insert(
        "anthropic-beta",
        "prompt-caching-2024-07-31".parse().unwrap(),
    );
    req.headers
        .insert("x-api-key", "sk-client-leak".parse().unwrap());
    r.send(req, "m").await.unwrap();
    let rec = up.last_request().unwrap();
    assert_eq!(rec.header("x-api-key").as_deref(), Some("sk-ant-from-env"));
    assert_eq!(
        rec.header("anthropic-version").as_deref(),
        Some("2024-02-15")
    );
    assert_eq!(
        rec.header("anthropic-beta").as_deref(),
        Some("prompt-caching-2024-07-31")
    );
    assert_eq!(
        rec.header("openai-beta"),
        None,
        "the other vendor's flags stay behind"
    );
}

#[tokio::test]
async fn untranslatable_parameters_fail_without_an_upstream_call() {
    let up = MockUpstream::start().await;
    let r = router(vec![anthropic("claude", &up)], &["claude"]);
    let cases = [
        ("n", json!(2), "`n`"),
        ("logprobs", json!(true), "`logprobs`"),
        ("logit_bias", json!({"1": 5}), "`logit_bias`"),
        ("seed", json!(1), "`seed`"),
        ("presence_penalty", json!(0.2), "`presence_penalty`"),
        ("frequency_penalty", json!(0.2), "`frequency_penalty`"),
        (
            "response_format",
            json!({"type": "json_object"}),
            "`response_format`",
        ),
        (
            "tools",
            json!([{"type": "custom", "custom": {"name": "f"}}]),
            "tools[0]: only function tools",
        ),
        ("temperature", json!(1.7), "`temperature`"),
    ];
    for (key, value, needle) in cases {
        let mut body = chat("x");
        body[key] = value;
        let err = r.send(chat_req(body), "m").await.unwrap_err();
        assert_eq!(err.status(), 400, "{key}");
        let msg = err
            .untranslatable()
            .expect("an untranslatable reason")
            .to_string();
        assert!(msg.contains(needle), "{key}: {msg}");
        let attempts = all_failed(err);
        assert_eq!(attempts.len(), 1);
        assert!(!attempts[0].1.retryable());
        assert_eq!(attempts[0].1.kind.label(), "untranslatable");
    }
    let legacy = UpstreamRequest::post_json(
        "/completions",
        &json!({"model": "m", "prompt": "Say hi"}),
        false,
    )
    .with_api(ApiKind::Completions);
    let err = r.send(legacy, "m").await.unwrap_err();
    assert!(err.untranslatable().unwrap().contains("completions"));
    assert_eq!(up.calls(), 0, "nothing reached the upstream");
    let stats = r.provider_stats("claude").unwrap();
    assert_eq!(stats.attempts, 0);
    assert!(stats.errors.contains(&("untranslatable", 10)));
}

#[tokio::test]
async fn anthropic_429_and_529_are_retried_then_answered() {
    for status in [429, 529] {
        let up = MockUpstream::builder()
            .fail_n_times(2, status)
            .start()
            .await;
        let r = router(vec![anthropic("claude", &up)], &["claude"]);
        let resp = r.send(chat_req(chat("x")), "m").await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(up.calls_for("/messages"), 3, "status {status}");
        assert_eq!(
            json_body(&resp)["choices"][0]["message"]["content"],
            "Answer #3 to: x"
        );
    }
    let up = MockUpstream::builder().always_fail(529).start().await;
    let r = router(vec![anthropic("claude", &up)], &["claude"]);
    let attempts = all_failed(r.send(chat_req(chat("x")), "m").await.unwrap_err());
    assert_eq!(attempts.len(), 3);
    match &attempts[0].1.kind {
        ProviderErrorKind::Status { status, body } => {
            assert_eq!(*status, 529);
            assert!(body.contains("overloaded_error"));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn anthropic_client_errors_come_back_in_openai_shape() {
    let up = MockUpstream::builder().fail_n_times(1, 401).start().await;
    let r = router(vec![anthropic("claude", &up)], &["claude"]);
    let resp = r.send(chat_req(chat("x")), "m").await.unwrap();
    assert_eq!(resp.status, 401);
    let v = json_body(&resp);
    assert_eq!(v["error"]["message"], "invalid x-api-key");
    assert!(v["error"]["type"].is_string());
    assert!(v.get("type").is_none(), "not Anthropic's shape");
    // Without any key the mock refuses the call as Anthropic does.
    let mut req = chat_req(chat("x"));
    req.client_key = None;
    let resp = r.send(req, "m").await.unwrap();
    assert_eq!(resp.status, 401);
    assert_eq!(
        json_body(&resp)["error"]["message"],
        "x-api-key header is required"
    );
}

#[tokio::test]
async fn anthropic_error_event_mid_stream_ends_the_stream_with_an_error() {
    let up = MockUpstream::builder()
        .with_stream_error_after(4)
        .start()
        .await;
    let r = router(vec![anthropic("claude", &up)], &["claude"]);
    let mut body = chat("one two three four five");
    body["stream"] = json!(true);
    let resp = r.send(chat_req(body.clone()), "m").await.unwrap();
    let (bytes, err) = drain(resp).await;
    let err = err.expect("the stream must end with an error");
    assert!(err.detail.contains("overloaded_error"), "{err}");
    let evs = events(&bytes);
    assert!(!evs.iter().any(|e| e.is_done()));
    let last: Value = serde_json::from_str(&evs.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["message"], "Overloaded");
    let mut c = ChatStreamCollector::new("claude");
    for e in &evs {
        c.push_event_data(&e.data);
    }
    assert!(c.finish().is_err(), "never cacheable");

    // A cut connection is a transport error, passed through.
    let up = MockUpstream::builder().cut_stream_after(3).start().await;
    let r = router(vec![anthropic("claude", &up)], &["claude"]);
    let (_, err) = drain(r.send(chat_req(body), "m").await.unwrap()).await;
    assert!(err.is_some());
}

/// Issue 15: a tool round trip through an Anthropic provider in OpenAI's chat dialect: the
/// definitions and `tool_choice` go out as Anthropic tools, the `tool_use` answer comes back as
/// `tool_calls` (JSON and streamed argument deltas that reassemble into the same JSON), and the
/// follow-up with the assistant's call and the tool's result goes out as `tool_use` and
/// `tool_result` blocks and is answered with text.
#[tokio::test]
async fn issue15_tool_round_trip_through_anthropic_json_and_stream() {
    use common::mock_upstream::OFFERED_TOOL_ARGUMENTS;
    let up = MockUpstream::builder().call_offered_tools().start().await;
    let r = router(vec![anthropic("claude", &up)], &["claude"]);
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Weather by city", "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let mut body = chat("Weather in Paris?");
    body["tools"] = tools.clone();
    body["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    body["parallel_tool_calls"] = json!(false);
    let resp = r.send(chat_req(body.clone()), "m").await.unwrap();
    let sent = up.last_request().unwrap().body;
    assert_eq!(
        sent["tools"],
        json!([{"name": "get_weather", "description": "Weather by city", "input_schema":
            {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}])
    );
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true})
    );
    let v = json_body(&resp);
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    let expected: Value = serde_json::from_str(OFFERED_TOOL_ARGUMENTS).unwrap();
    assert_eq!(args, expected);
    // The collector keeps the call (whether it is stored is the route's `cache_tool_calls`,
    // tested in proxy_cache).
    assert_eq!(
        collect_chat_json(resp.json_bytes().unwrap(), "claude")
            .expect("a tool-call answer collects")
            .tool_calls
            .len(),
        1,
        "the collected answer carries the tool call"
    );

    // The same call streamed: argument pieces reassemble into the same JSON.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = r.send(chat_req(streamed), "m").await.unwrap();
    let (bytes, err) = drain(resp).await;
    assert!(err.is_none(), "{err:?}");
    let (mut arguments, mut pieces, mut finish, mut id) = (String::new(), 0, None, None);
    for ev in events(&bytes).iter().filter(|e| !e.is_done()) {
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        for c in v["choices"].as_array().unwrap() {
            if let Some(calls) = c["delta"]["tool_calls"].as_array() {
                assert_eq!(calls[0]["index"], 0);
                if let Some(i) = calls[0]["id"].as_str() {
                    id = Some(i.to_string());
                }
                if let Some(a) = calls[0]["function"]["arguments"]
                    .as_str()
                    .filter(|a| !a.is_empty())
                {
                    arguments.push_str(a);
                    pieces += 1;
                }
            }
            if let Some(f) = c["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
    }
    assert!(pieces > 1, "the arguments arrived in several deltas");
    assert_eq!(serde_json::from_str::<Value>(&arguments).unwrap(), expected);
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    assert!(id.is_some_and(|i| i.starts_with("toolu_")));

    // The follow-up: the assistant's call and the tool's result, answered with text.
    let mut follow = body;
    let call_id = call["id"].as_str().unwrap().to_string();
    let messages = follow["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call.clone()]}));
    messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": "18°C, sunny"}));
    let resp = r.send(chat_req(follow), "m").await.unwrap();
    let sent = up.last_request().unwrap().body;
    let turns = sent["messages"].as_array().unwrap();
    assert_eq!(
        turns[1],
        json!({"role": "assistant", "content": [{"type": "tool_use", "id": call_id,
               "name": "get_weather", "input": expected}]})
    );
    assert_eq!(
        turns[2],
        json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": call_id,
               "content": "18°C, sunny"}]})
    );
    let v = json_body(&resp);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("Answer #"));
}

/// Tool definitions and calls that Anthropic cannot take are refused before any call.
#[tokio::test]
async fn issue15_untranslatable_tools_are_refused_naming_the_field() {
    let up = MockUpstream::start().await;
    let r = router(vec![anthropic("claude", &up)], &["claude"]);
    let f = |parameters: Value| json!([{"type": "function", "function": {"name": "f", "parameters": parameters}}]);
    let mut bad_args = chat("x");
    let m = bad_args["messages"].as_array_mut().unwrap();
    m.insert(1, json!({"role": "user", "content": "first"}));
    m.insert(
        2,
        json!({"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
        "function": {"name": "f", "arguments": "[1, 2]"}}]}),
    );
    m.insert(
        3,
        json!({"role": "tool", "tool_call_id": "c", "content": "r"}),
    );
    let mut schema = chat("x");
    schema["tools"] = f(json!("not a schema"));
    for (body, needle) in [
        (
            schema,
            "tools[0]: `function.parameters` must be a JSON schema object",
        ),
        (
            bad_args,
            "messages[2]: tool_calls[0]: `function.arguments` must be a JSON object",
        ),
    ] {
        let err = r.send(chat_req(body), "m").await.unwrap_err();
        let msg = err.untranslatable().expect("untranslatable").to_string();
        assert!(msg.contains(needle), "{msg}");
    }
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn anthropic_dialect_passes_through_an_anthropic_provider_untouched() {
    let up = MockUpstream::start().await;
    let r = router(vec![anthropic("claude", &up)], &["claude"]);
    let body = json!({"model": "claude-3-5-haiku-latest", "max_tokens": 64, "top_k": 5,
                      "messages": [{"role": "user", "content": "hi"}]});
    let resp = r.send(messages_req(body.clone()), "m").await.unwrap();
    let rec = up.last_request().unwrap();
    assert_eq!(rec.path, "/v1/messages");
    assert_eq!(rec.body, body);
    assert_eq!(resp.json_bytes().unwrap(), &rec.response_body);
}

#[tokio::test]
async fn anthropic_dialect_is_answered_by_openai_both_ways() {
    let up = MockUpstream::start().await;
    let r = router(vec![openai("gpt", &up)], &["gpt"]);
    let body = json!({
        "model": "gpt-4o-mini",
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "héllo wörld"}]}],
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-9"}
    });
    let resp = r
        .send(messages_req(body.clone()), "gpt-4o-mini")
        .await
        .unwrap();
    let rec = up.last_request().unwrap();
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(
        rec.authorization().as_deref(),
        Some("Bearer sk-openai-client")
    );
    assert_eq!(
        rec.body,
        json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": "héllo wörld"}]}],
            "stop": ["END"],
            "max_tokens": 100,
            "user": "u-9"
        })
    );
    let v = json_body(&resp);
    assert_eq!(v["type"], "message");
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "Answer #1 to: héllo wörld"}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"], json!({"input_tokens": 4, "output_tokens": 5}));

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let resp = r.send(messages_req(streamed), "gpt-4o-mini").await.unwrap();
    assert_eq!(
        up.last_request().unwrap().body["stream_options"],
        json!({"include_usage": true})
    );
    let (bytes, err) = drain(resp).await;
    assert!(err.is_none(), "{err:?}");
    let evs = events(&bytes);
    let names: Vec<&str> = evs.iter().filter_map(|e| e.event.as_deref()).collect();
    assert_eq!(names.len(), evs.len(), "every Anthropic event is named");
    assert_eq!(
        &names[..3],
        ["message_start", "content_block_start", "ping"]
    );
    assert_eq!(
        &names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    assert!(names[3..names.len() - 3]
        .iter()
        .all(|n| *n == "content_block_delta"));
    let mut c = MessagesStreamCollector::new("gpt");
    for e in &evs {
        c.push_event_data(&e.data);
    }
    let answer = c.finish().unwrap();
    assert_eq!(answer.content, "Answer #2 to: héllo wörld");
    let usage = answer.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (4, 5));

    // An OpenAI error status comes back in Anthropic's shape.
    up.set_failures(1, 401);
    let resp = r
        .send(
            messages_req(json!({"model": "m", "max_tokens": 5,
                                  "messages": [{"role": "user", "content": "x"}]})),
            "m",
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 401);
    let v = json_body(&resp);
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(v["error"]["message"], "Incorrect API key provided.");
    // And what OpenAI cannot do is refused before any call.
    let calls = up.calls();
    let err = r
        .send(
            messages_req(json!({"model": "m", "max_tokens": 5, "top_k": 3,
                                  "messages": [{"role": "user", "content": "x"}]})),
            "m",
        )
        .await
        .unwrap_err();
    assert!(err.untranslatable().unwrap().contains("`top_k`"));
    assert_eq!(up.calls(), calls);
}

#[tokio::test]
async fn fallback_from_a_failing_openai_to_anthropic_with_rename() {
    let oa = MockUpstream::builder().always_fail(500).start().await;
    let an = MockUpstream::start().await;
    let mut route = RouteSettings::new("gpt-4o-mini", &["openai"]);
    let mut target = RouteTarget::new("claude");
    target.model = Some("claude-3-5-haiku-latest".to_string());
    route.targets.push(target);
    let mut failing = openai("openai", &oa);
    failing.breaker_failures = 0;
    let r = Router::new(vec![failing, anthropic("claude", &an)], vec![route]).unwrap();
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    let resp = r.send(chat_req(body.clone()), "gpt-4o-mini").await.unwrap();
    assert_eq!(resp.provider, "claude");
    assert_eq!(resp.model.as_deref(), Some("claude-3-5-haiku-latest"));
    assert_eq!(oa.calls(), 3, "first target retried");
    let rec = an.last_request().unwrap();
    assert_eq!(rec.body["model"], "claude-3-5-haiku-latest");
    assert_eq!(rec.body["max_tokens"], DEFAULT_MAX_TOKENS);
    let v = json_body(&resp);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "claude-3-5-haiku-latest");
    assert_eq!(v["choices"][0]["message"]["content"], "Answer #1 to: hi");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = r.send(chat_req(streamed), "gpt-4o-mini").await.unwrap();
    assert_eq!(resp.provider, "claude");
    let (bytes, err) = drain(resp).await;
    assert!(err.is_none());
    assert!(events(&bytes).last().unwrap().is_done());

    // A request the fallback cannot take fails like the real failure before it, not as a 400.
    let mut two = body;
    two["n"] = json!(2);
    let err = r.send(chat_req(two), "gpt-4o-mini").await.unwrap_err();
    assert_eq!(err.status(), 502);
    assert!(err.untranslatable().is_none());
    assert_eq!(an.calls(), 2);
}

fn responses_req(body: Value) -> UpstreamRequest {
    let stream = body["stream"].as_bool().unwrap_or(false);
    UpstreamRequest::post_json("/responses", &body, stream)
        .with_api(ApiKind::Responses)
        .with_client_key(Some(CLIENT_KEY.to_string()))
}

#[tokio::test]
async fn issue15_responses_are_answered_by_anthropic_json_and_stream() {
    use deja::api::responses::{collect_responses_json, ResponsesStreamCollector};
    let up = MockUpstream::start().await;
    let r = router(vec![anthropic("claude", &up)], &["claude"]);
    let body = json!({
        "model": "claude-3-5-haiku-latest", "instructions": "Be brief.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "bonjour?"}]}],
        "max_output_tokens": 40, "temperature": 0.2, "store": false,
    });
    let resp = r
        .send(responses_req(body.clone()), "claude-3-5-haiku-latest")
        .await
        .unwrap();
    let rec = up.last_request().unwrap();
    assert_eq!(rec.path, "/v1/messages");
    assert_eq!(
        rec.body,
        json!({"model": "claude-3-5-haiku-latest", "max_tokens": 40, "system": "Be brief.",
               "messages": [{"role": "user", "content": "bonjour?"}], "temperature": 0.2})
    );
    let v = json_body(&resp);
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["instructions"], "Be brief.");
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "Answer #1 to: bonjour?"
    );
    let cached = collect_responses_json(resp.json_bytes().unwrap(), "claude").unwrap();
    assert_eq!(cached.content, "Answer #1 to: bonjour?");

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let resp = r
        .send(responses_req(streamed), "claude-3-5-haiku-latest")
        .await
        .unwrap();
    assert_eq!(up.last_request().unwrap().body["stream"], true);
    let (bytes, err) = drain(resp).await;
    assert!(err.is_none(), "{err:?}");
    let evs = events(&bytes);
    assert_eq!(evs[0].event.as_deref(), Some("response.created"));
    assert_eq!(
        evs.last().unwrap().event.as_deref(),
        Some("response.completed")
    );
    let mut c = ResponsesStreamCollector::with_limit("claude", 1 << 20);
    let mut text = String::new();
    for (i, ev) in evs.iter().enumerate() {
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(v["sequence_number"], i as u64);
        text.push_str(v["delta"].as_str().unwrap_or_default());
        c.push_event_data(&ev.data);
    }
    assert_eq!(text, "Answer #2 to: bonjour?");
    assert_eq!(c.finish().unwrap().content, text);
}

#[tokio::test]
async fn issue15_responses_state_is_refused_for_anthropic_without_an_upstream_call() {
    let up = MockUpstream::start().await;
    let r = router(vec![anthropic("claude", &up)], &["claude"]);
    for (extra, field) in [
        (
            json!({"previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (
            json!({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}),
            "input[0].type",
        ),
    ] {
        let mut body = json!({"model": "claude-3-5-haiku-latest", "input": "hi"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let err = r
            .send(responses_req(body), "claude-3-5-haiku-latest")
            .await
            .unwrap_err();
        let message = err.untranslatable().map(str::to_string).unwrap_or_default();
        assert!(message.contains(field), "{field}: {err:?}");
    }
    assert_eq!(up.calls(), 0);
}

/// Issue 15, the other way: an Anthropic tool round trip served by an OpenAI-kind provider.
#[tokio::test]
async fn issue15_anthropic_tool_round_trip_through_openai_json_and_stream() {
    use common::mock_upstream::OFFERED_TOOL_ARGUMENTS;
    let up = MockUpstream::builder().call_offered_tools().start().await;
    let r = router(vec![openai("gpt", &up)], &["gpt"]);
    let expected: Value = serde_json::from_str(OFFERED_TOOL_ARGUMENTS).unwrap();
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 100,
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let resp = r
        .send(messages_req(body.clone()), "gpt-4o-mini")
        .await
        .unwrap();
    let sent = up.last_request().unwrap().body;
    assert_eq!(
        sent["tools"],
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}])
    );
    let v = json_body(&resp);
    assert_eq!(v["stop_reason"], "tool_use");
    let use_block = v["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap()
        .clone();
    assert_eq!(use_block["name"], "get_weather");
    assert_eq!(use_block["input"], expected);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = r.send(messages_req(streamed), "gpt-4o-mini").await.unwrap();
    let (bytes, err) = drain(resp).await;
    assert!(err.is_none(), "{err:?}");
    let mut c = MessagesStreamCollector::with_limit("gpt", 1 << 20);
    let (mut json_pieces, mut partial, mut stop) = (0, String::new(), None);
    for ev in events(&bytes) {
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        if v["delta"]["type"] == "input_json_delta" {
            json_pieces += 1;
            partial.push_str(v["delta"]["partial_json"].as_str().unwrap());
        }
        if let Some(s) = v["delta"]["stop_reason"].as_str() {
            stop = Some(s.to_string());
        }
        c.push_event_data(&ev.data);
    }
    assert!(json_pieces > 1);
    assert_eq!(serde_json::from_str::<Value>(&partial).unwrap(), expected);
    assert_eq!(stop.as_deref(), Some("tool_use"));
    assert_eq!(
        c.finish()
            .expect("a streamed tool call collects")
            .tool_calls
            .len(),
        1,
        "the collected stream carries the tool call"
    );

    let mut follow = body;
    let id = use_block["id"].as_str().unwrap().to_string();
    let m = follow["messages"].as_array_mut().unwrap();
    m.push(json!({"role": "assistant", "content": [use_block]}));
    m.push(json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "sunny"}]}));
    let resp = r.send(messages_req(follow), "gpt-4o-mini").await.unwrap();
    let sent = up.last_request().unwrap().body;
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "tool_call_id": id, "content": "sunny"})
    );
    let v = json_body(&resp);
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["content"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("Answer #"));
}
