//! The proxy's cache behaviour through HTTP: miss → hit, exact and semantic, every scope
//! dimension, stream ↔ JSON, what is never cached, singleflight, request controls.

mod common;

use std::time::Duration;

use common::harness::{client, hash_model, real_model, server_timing, Deja, Reply};
use common::mock_upstream::MockUpstream;
use serde_json::{json, Value};

fn chat(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
}

async fn post(d: &Deja, body: &Value, key: &str) -> Reply {
    let auth = format!("Bearer {key}");
    d.post("/v1/chat/completions", body, &[("authorization", &auth)])
        .await
}

/// The metric names of a `Server-Timing` value, in order; each must carry a duration.
fn timing_phases(value: &str) -> Vec<String> {
    server_timing(value)
        .into_iter()
        .map(|(name, dur)| {
            assert!(dur.is_some_and(|d| d >= 0.0), "{value}");
            name
        })
        .collect()
}

async fn post_with(d: &Deja, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("authorization", "Bearer k")];
    all.extend_from_slice(headers);
    d.post("/v1/chat/completions", body, &all).await
}

#[tokio::test]
async fn paraphrase_is_a_semantic_hit_with_zero_upstream_calls() {
    let mock = MockUpstream::start().await;
    let d = Deja::start_with(&mock.base_url(), real_model(), "threshold = 0.85", "").await;
    let r1 = post(&d, &chat("How do I reset my password?"), "k").await;
    assert_eq!(r1.header("x-deja-cache"), "miss");
    assert_eq!(r1.header("x-deja-provider"), "mock");
    let phases = |r: &Reply| timing_phases(r.header("server-timing"));
    assert_eq!(
        phases(&r1),
        ["exact", "embed", "search", "upstream", "deja"],
        "a miss times every phase"
    );
    d.wait_entries(1).await;
    let r2 = post(&d, &chat("How can I reset my password?"), "k").await;
    assert_eq!(r2.header("x-deja-cache"), "semantic-hit");
    assert_eq!(phases(&r2), ["exact", "embed", "search", "deja"]);
    let sim: f32 = r2.header("x-deja-similarity").parse().unwrap();
    assert!((0.85..1.0).contains(&sim), "{sim}");
    assert_eq!(r2.content(), r1.content());
    assert_ne!(r2.body["id"], r1.body["id"], "a hit gets a fresh id");
    assert_eq!(mock.calls(), 1, "a hit costs zero upstream calls");
    let r3 = post(&d, &chat("What is the capital of France?"), "k").await;
    assert_eq!(r3.header("x-deja-cache"), "miss");
    // Below the threshold the nearest neighbour is reported without reading its entry.
    let nearest: f32 = r3.header("x-deja-nearest-similarity").parse().unwrap();
    assert!((-1.0..0.85).contains(&nearest), "{nearest}");
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn negated_question_is_not_served_the_positive_answer() {
    let mock = MockUpstream::start().await;
    let d = Deja::start_with(&mock.base_url(), real_model(), "threshold = 0.85", "").await;
    post(&d, &chat("How do I reset my password?"), "k").await;
    d.wait_entries(1).await;
    let r = post(&d, &chat("How do I NOT reset my password?"), "k").await;
    assert_eq!(
        r.header("x-deja-cache"),
        "miss",
        "the negation guard must veto this"
    );
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn exact_repeat_is_an_exact_hit() {
    let mock = MockUpstream::start().await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let r1 = post(&d, &chat("Tell me a joke"), "k").await;
    d.wait_entries(1).await;
    let r2 = post(&d, &chat("  Tell me   a joke "), "k").await;
    assert_eq!(r2.header("x-deja-cache"), "exact-hit");
    assert_eq!(r2.header("x-deja-similarity"), "1.0000");
    assert!(!r2.header("x-deja-entry").is_empty());
    assert!(r2.header("x-deja-overhead-ms").parse::<f64>().unwrap() >= 0.0);
    assert_eq!(
        timing_phases(r2.header("server-timing")),
        ["exact", "deja"],
        "an exact hit is never embedded"
    );
    assert_eq!(r2.content(), r1.content());
    assert_eq!(r2.body["object"], "chat.completion");
    assert_eq!(mock.calls(), 1);
}

/// Issue 13: the exact key folds the case and trailing punctuation of prose, never of code.
/// Three-message conversations with `max_turns = 1` skip the semantic layer, so every hit
/// here is the exact layer's.
#[tokio::test]
async fn prose_differing_in_case_and_question_mark_is_an_exact_hit_but_code_is_not() {
    let mock = MockUpstream::start().await;
    let d = Deja::start_with(&mock.base_url(), hash_model(), "max_turns = 1", "").await;
    let convo = |text: &str| {
        json!({"model": "gpt-4o-mini", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": text}]})
    };
    let r1 = post(&d, &convo("How do I reset my password"), "k").await;
    assert_eq!(r1.header("x-deja-cache"), "miss");
    d.wait_entries(1).await;
    let r2 = post(&d, &convo("how do I reset my password?"), "k").await;
    assert_eq!(r2.header("x-deja-cache"), "exact-hit");
    assert_eq!(r2.content(), r1.content());
    assert_eq!(mock.calls(), 1);

    let r3 = post(&d, &convo("print(x)"), "k").await;
    assert_eq!(r3.header("x-deja-cache"), "miss");
    d.wait_entries(2).await;
    let r4 = post(&d, &convo("Print(X)"), "k").await;
    assert_eq!(r4.header("x-deja-cache"), "miss", "code keeps its case");
    assert_eq!(mock.calls(), 3);
    d.wait_entries(3).await;
    let r5 = post(&d, &convo("Print(X)"), "k").await;
    assert_eq!(r5.header("x-deja-cache"), "exact-hit");
    assert_eq!(r5.content(), r4.content());
    assert_eq!(mock.calls(), 3);
}

#[tokio::test]
async fn every_scope_dimension_separates_entries() {
    let mock = MockUpstream::start().await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let base = chat("What is deja?");
    post(&d, &base, "key-a").await;
    d.wait_entries(1).await;
    assert_eq!(
        post(&d, &base, "key-a").await.header("x-deja-cache"),
        "exact-hit"
    );

    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let variants: Vec<(&str, Value, &str)> = vec![
        ("tenant", base.clone(), "key-b"),
        ("model", with("model", json!("gpt-4o")), "key-a"),
        (
            "system prompt",
            json!({"model":"gpt-4o-mini","messages":[{"role":"system","content":"Answer in French."},{"role":"user","content":"What is deja?"}]}),
            "key-a",
        ),
        (
            "earlier turns",
            json!({"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"What is deja?"}]}),
            "key-a",
        ),
        ("temperature", with("temperature", json!(1.5)), "key-a"),
        (
            "tools",
            with(
                "tools",
                json!([{"type":"function","function":{"name":"lookup","parameters":{"type":"object"}}}]),
            ),
            "key-a",
        ),
        ("max_tokens", with("max_tokens", json!(7)), "key-a"),
    ];
    let mut expected_calls = 1;
    for (dimension, body, key) in variants {
        let r = post(&d, &body, key).await;
        expected_calls += 1;
        assert_eq!(
            r.header("x-deja-cache"),
            "miss",
            "{dimension} must separate scopes"
        );
        assert_eq!(mock.calls(), expected_calls, "{dimension}");
    }
}

#[tokio::test]
async fn namespace_header_shares_answers_across_keys() {
    let mock = MockUpstream::start().await;
    // Sharing is granted by the operator: both keys are listed for the namespace.
    let grant = format!(
        "[[cache.namespaces]]\nname = \"team-a\"\nkeys = [\"{}\", \"{}\"]\n",
        deja::config::KeyHash::of("key-1"),
        deja::config::KeyHash::of("key-2")
    );
    let d = Deja::start_with(&mock.base_url(), hash_model(), &grant, "").await;
    let send = |key: &'static str| {
        let url = d.url("/v1/chat/completions");
        async move {
            let r = client()
                .post(url)
                .bearer_auth(key)
                .header("x-deja-namespace", "team-a")
                .json(&chat("shared question"))
                .send()
                .await
                .unwrap();
            Reply::read(r).await
        }
    };
    assert_eq!(send("key-1").await.header("x-deja-cache"), "miss");
    d.wait_entries(1).await;
    assert_eq!(send("key-2").await.header("x-deja-cache"), "exact-hit");
    assert_eq!(mock.calls(), 1);
}

/// Reads an SSE response: (reply, concatenated delta text, usage chunk if any).
async fn stream_text(d: &Deja, body: &Value) -> (Reply, String, Option<Value>) {
    let r = post(d, body, "k").await;
    assert!(
        r.header("content-type").starts_with("text/event-stream"),
        "{:?}",
        r.headers
    );
    let mut text = String::new();
    let mut usage = None;
    let mut done = false;
    for line in r.text.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        if let Some(c) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
        if chunk["usage"].is_object() {
            usage = Some(chunk["usage"].clone());
        }
    }
    assert!(done, "stream must end with [DONE]: {}", r.text);
    (r, text, usage)
}

#[tokio::test]
async fn json_answer_serves_a_stream_and_a_stream_serves_json() {
    let mock = MockUpstream::start().await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let first = post(&d, &chat("first question"), "k").await;
    d.wait_entries(1).await;
    let mut body = chat("first question");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (r, text, usage) = stream_text(&d, &body).await;
    assert_eq!(r.header("x-deja-cache"), "exact-hit");
    assert_eq!(text, first.content());
    assert_eq!(
        usage.unwrap()["total_tokens"],
        first.body["usage"]["total_tokens"]
    );

    let mut body = chat("second question");
    body["stream"] = json!(true);
    let (r, text, usage) = stream_text(&d, &body).await;
    assert_eq!(r.header("x-deja-cache"), "miss");
    assert!(usage.is_none(), "no usage chunk unless asked");
    d.wait_entries(2).await;
    let r = post(&d, &chat("second question"), "k").await;
    assert_eq!(r.header("x-deja-cache"), "exact-hit");
    assert_eq!(r.content(), text);
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn upstream_error_is_not_cached() {
    let mock = MockUpstream::builder().fail_n_times(1, 500).start().await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let r = post(&d, &chat("q"), "k").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.body["error"]["type"], "api_error", "{}", r.text);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("HTTP 500"),
        "{}",
        r.text
    );
    d.settle().await;
    assert_eq!(d.entries(), 0);
    let r = post(&d, &chat("q"), "k").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-deja-cache"), "miss");
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn upstream_4xx_passes_through_uncached() {
    let mock = MockUpstream::builder().fail_n_times(1, 400).start().await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let r = post(&d, &chat("q"), "k").await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"]["message"].is_string(), "{}", r.text);
    d.settle().await;
    assert_eq!(d.entries(), 0);
}

#[tokio::test]
async fn stream_cut_midway_is_not_cached() {
    let mock = MockUpstream::builder().cut_stream_after(2).start().await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let mut body = chat("q");
    body["stream"] = json!(true);
    let r = d.send("/v1/chat/completions", &body, &[]).await;
    assert_eq!(r.status(), 200);
    if let Ok(text) = r.text().await {
        assert!(
            !text.contains("[DONE]"),
            "a cut stream must not look complete: {text}"
        );
    }
    d.settle().await;
    assert_eq!(d.entries(), 0, "a truncated answer must never be cached");
    mock.set_cut_stream_after(None);
    let r = post(&d, &chat("q"), "k").await;
    assert_eq!(r.header("x-deja-cache"), "miss");
}

/// Answers that call tools are cached only on a route with `cache_tool_calls = true`: off (the
/// default), each request goes upstream and `deja_not_cached_total{reason="tool_calls"}`
/// counts it; on, the second identical request is a hit (JSON and stream) that carries the
/// call with a fresh id, and a request offering other tools is a miss.
#[tokio::test]
async fn tool_call_answers_are_cached_only_where_the_route_says_so() {
    let mock = MockUpstream::builder()
        .with_tool_call("lookup", "{\"q\":1}")
        .start()
        .await;
    let on = r#"
[[routes]]
model = "agent-*"
providers = ["mock"]
cache_tool_calls = true
"#;
    let d = Deja::start_with(&mock.base_url(), hash_model(), "", on).await;
    let tools = json!([{"type": "function", "function": {"name": "lookup",
        "parameters": {"type": "object", "properties": {"q": {"type": "integer"}}}}}]);
    let ask = |model: &str, tools: &Value| {
        let mut b = chat("call the tool");
        b["model"] = json!(model);
        b["tools"] = tools.clone();
        b
    };

    // Off: never stored, counted as not cached for tool calls.
    for _ in 0..2 {
        let r = post(&d, &ask("gpt-4o-mini", &tools), "k").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-deja-cache"), "miss");
        assert!(
            r.body["choices"][0]["message"]["tool_calls"].is_array(),
            "{}",
            r.text
        );
        d.settle().await;
    }
    assert_eq!(d.entries(), 0);
    assert_eq!(mock.calls(), 2);
    let metrics = client()
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"deja_not_cached_total{reason="tool_calls"} 2"#),
        "{metrics}"
    );

    // On: stored once, then served as JSON and as a stream with fresh call ids.
    let first = post(&d, &ask("agent-1", &tools), "k").await;
    assert_eq!(first.header("x-deja-cache"), "miss");
    d.wait_entries(1).await;
    let hit = post(&d, &ask("agent-1", &tools), "k").await;
    assert_eq!(hit.header("x-deja-cache"), "exact-hit", "{}", hit.text);
    assert_eq!(mock.calls(), 3);
    let call = &hit.body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(hit.body["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(call["function"]["name"], "lookup");
    assert_eq!(call["function"]["arguments"], "{\"q\":1}");
    let first_id = &first.body["choices"][0]["message"]["tool_calls"][0]["id"];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_ne!(&call["id"], first_id, "a replayed call gets a fresh id");

    let mut streamed = ask("agent-1", &tools);
    streamed["stream"] = json!(true);
    let r = d
        .send(
            "/v1/chat/completions",
            &streamed,
            &[("authorization", "Bearer k")],
        )
        .await;
    assert_eq!(r.headers()["x-deja-cache"], "exact-hit");
    let text = r.text().await.unwrap();
    let mut arguments = String::new();
    let mut finish = None;
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(piece) = v.pointer("/choices/0/delta/tool_calls/0/function/arguments") {
            arguments.push_str(piece.as_str().unwrap());
        }
        if let Some(f) = v
            .pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
        {
            finish = Some(f.to_owned());
        }
    }
    assert_eq!(
        (arguments.as_str(), finish.as_deref()),
        ("{\"q\":1}", Some("tool_calls"))
    );
    assert_eq!(mock.calls(), 3);

    // Other tools are another scope.
    let other = json!([{"type": "function", "function": {"name": "search"}}]);
    let r = post(&d, &ask("agent-1", &other), "k").await;
    assert_eq!(r.header("x-deja-cache"), "miss");
    assert_eq!(mock.calls(), 4);
}

#[tokio::test]
async fn concurrent_identical_misses_make_one_upstream_call() {
    let mock = MockUpstream::builder()
        .with_latency(Duration::from_millis(300))
        .start()
        .await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = d.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let r = client()
                .post(url)
                .bearer_auth("k")
                .json(&chat("same question"))
                .send()
                .await
                .unwrap();
            let r = Reply::read(r).await;
            (
                r.header("x-deja-cache").to_string(),
                r.content().to_string(),
            )
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(mock.calls(), 1, "singleflight: {results:?}");
    assert_eq!(
        results.iter().filter(|(o, _)| o == "miss").count(),
        1,
        "{results:?}"
    );
    assert!(results.iter().all(|(_, c)| c == &results[0].1));
}

#[tokio::test]
async fn cache_control_no_store_and_no_cache() {
    let mock = MockUpstream::start().await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let body = chat("controlled");
    let r = post_with(&d, &body, &[("cache-control", "no-store")]).await;
    assert_eq!(r.header("x-deja-cache"), "miss");
    d.settle().await;
    assert_eq!(d.entries(), 0, "no-store must not write");
    let first = post_with(&d, &body, &[]).await;
    d.wait_entries(1).await;
    assert_eq!(
        post_with(&d, &body, &[]).await.header("x-deja-cache"),
        "exact-hit"
    );
    // no-cache skips the lookup and refreshes the entry.
    let refreshed = post_with(&d, &body, &[("cache-control", "no-cache")]).await;
    assert_eq!(refreshed.header("x-deja-cache"), "miss");
    assert_ne!(
        refreshed.content(),
        first.content(),
        "the mock numbers its answers"
    );
    d.settle().await;
    let now = post_with(&d, &body, &[]).await;
    assert_eq!(now.header("x-deja-cache"), "exact-hit");
    assert_eq!(now.content(), refreshed.content());
    assert_eq!(d.entries(), 1, "a refresh replaces, it does not duplicate");
}

#[tokio::test]
async fn threshold_header_only_tightens() {
    let mock = MockUpstream::start().await;
    let d = Deja::start_with(&mock.base_url(), hash_model(), "threshold = 0.5", "").await;
    post(&d, &chat("how to bake sourdough bread at home"), "k").await;
    d.wait_entries(1).await;
    let q = chat("how to bake sourdough bread at home quickly");
    let r = post_with(&d, &q, &[("x-deja-threshold", "0.1")]).await;
    assert_eq!(
        r.header("x-deja-cache"),
        "semantic-hit",
        "a looser threshold is ignored"
    );
    let r = post_with(&d, &q, &[("x-deja-threshold", "0.999")]).await;
    assert_eq!(r.header("x-deja-cache"), "miss");
    let r = post_with(&d, &q, &[("x-deja-threshold", "lots")]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn ttl_header_expires_the_entry() {
    let mock = MockUpstream::start().await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let body = chat("short lived");
    post_with(&d, &body, &[("x-deja-ttl", "300ms")]).await;
    d.wait_entries(1).await;
    assert_eq!(
        post(&d, &body, "k").await.header("x-deja-cache"),
        "exact-hit"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(post(&d, &body, "k").await.header("x-deja-cache"), "miss");
}

#[tokio::test]
async fn image_content_is_forwarded_uncached() {
    let mock = MockUpstream::start().await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let body = json!({"model":"gpt-4o-mini","messages":[{"role":"user","content":[
        {"type":"text","text":"what is in this image?"},
        {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]}]});
    for _ in 0..2 {
        let r = post(&d, &body, "k").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-deja-cache"), "bypass");
    }
    assert_eq!(mock.calls(), 2);
    assert_eq!(
        mock.last_request().unwrap().body["messages"][0]["content"][1]["type"],
        "image_url"
    );
}

#[tokio::test]
async fn legacy_completions_are_cached() {
    let mock = MockUpstream::start().await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let body = json!({"model":"gpt-3.5-turbo-instruct","prompt":"Say this is a test"});
    let r1 = d.post("/v1/completions", &body, &[]).await;
    assert_eq!(r1.header("x-deja-cache"), "miss");
    d.wait_entries(1).await;
    let r2 = d.post("/v1/completions", &body, &[]).await;
    assert_eq!(r2.header("x-deja-cache"), "exact-hit");
    assert_eq!(r2.body["object"], "text_completion");
    assert_eq!(r2.body["choices"][0]["text"], r1.body["choices"][0]["text"]);
    assert_eq!(mock.calls(), 1);
}

/// Streamed misses reach the client chunk by chunk as the provider sends them: deja does not
/// hold the stream back (which would bunch the chunks) nor delay single chunks.
#[tokio::test]
async fn a_streamed_miss_is_relayed_chunk_by_chunk() {
    let delay = Duration::from_millis(30);
    let mock = MockUpstream::builder()
        .with_chunk_delay(delay)
        .start()
        .await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let mut body = chat("Stream me a story");
    body["stream"] = json!(true);
    let mut resp = d
        .send(
            "/v1/chat/completions",
            &body,
            &[("authorization", "Bearer k")],
        )
        .await;
    assert_eq!(resp.headers()["x-deja-cache"], "miss");
    let mut last = std::time::Instant::now();
    let mut gaps = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        if !chunk.is_empty() {
            gaps.push(last.elapsed());
            last = std::time::Instant::now();
        }
    }
    assert!(gaps.len() >= 3, "{} chunks", gaps.len());
    for (i, gap) in gaps.iter().enumerate().skip(1) {
        assert!(
            *gap >= delay / 2 && *gap < delay + Duration::from_millis(25),
            "chunk {i} came {gap:?} after the previous one (provider sends every {delay:?}): {gaps:?}"
        );
    }
}

/// The shipped decision rule on hand-picked pairs, with the real model: each pair in its own
/// scope (its own API key), the first prompt answered upstream, the second looked up.
#[tokio::test]
async fn the_shipped_rule_serves_rewordings_and_refuses_lookalikes() {
    let mock = MockUpstream::start().await;
    // The rule in the repository's config.toml, which is what ships (and what the code
    // defaults to: `config::tests` checks they agree).
    let shipped = deja::config::Config::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config.toml"
    )))
    .unwrap();
    let rule = format!(
        "threshold = {}\nverified_threshold = {}",
        shipped.cache.threshold, shipped.cache.verified_threshold
    );
    let d = Deja::start_with(&mock.base_url(), real_model(), &rule, "").await;
    let cases: &[(&str, &str, &str, &str)] = &[
        // (stored, asked, expected x-deja-cache, expected x-deja-verified or "")
        (
            "How do I reset my password?",
            "How can I reset my password?",
            "semantic-hit",
            "lexical",
        ),
        (
            "What's the capital of France?",
            "what is the capital of france",
            "semantic-hit",
            "lexical",
        ),
        (
            "How do I reset my password?",
            "How do I NOT reset my password?",
            "miss",
            "",
        ),
        (
            "Who won the 2014 world cup?",
            "Who won the 2018 world cup?",
            "miss",
            "",
        ),
        (
            "How do I convert ethanol to ethanoic acid?",
            "How do I convert ethanoic acid to ethanol?",
            "miss",
            "",
        ),
        ("What is my name?", "What is your name?", "miss", ""),
        (
            "What is the best cab service in Pune?",
            "What is the best cab service in Mumbai?",
            "miss",
            "",
        ),
        (
            "A man is playing a guitar on stage.",
            "A woman is playing a guitar on stage.",
            "miss",
            "",
        ),
        (
            "How do I reset my password?",
            "How do I change my email address?",
            "miss",
            "",
        ),
        // Same content words, opposite small words: the lexical verifier alone would serve
        // these; the opposite guard refuses them.
        ("How do I log in?", "How do I log out?", "miss", ""),
        (
            "How do I turn on notifications?",
            "How do I turn off notifications?",
            "miss",
            "",
        ),
        (
            "Can I drink if I am over 21?",
            "Can I drink if I am under 21?",
            "miss",
            "",
        ),
        (
            "How do I turn on notifications?",
            "How can I turn notifications on?",
            "semantic-hit",
            "lexical",
        ),
    ];
    for (i, (stored, asked, outcome, verified)) in cases.iter().enumerate() {
        let key = format!("k{i}");
        let first = post(&d, &chat(stored), &key).await;
        assert_eq!(first.header("x-deja-cache"), "miss", "{stored}");
        d.wait_entries(i + 1).await;
        let r = post(&d, &chat(asked), &key).await;
        assert_eq!(
            r.header("x-deja-cache"),
            *outcome,
            "'{asked}' after '{stored}' (similarity {:?}, nearest {:?})",
            r.headers.get("x-deja-similarity"),
            r.headers.get("x-deja-nearest-similarity"),
        );
        if !verified.is_empty() {
            assert_eq!(r.header("x-deja-verified"), *verified, "{asked}");
        } else {
            assert!(r.headers.get("x-deja-verified").is_none(), "{asked}");
        }
    }
}

/// The judge through the proxy: a reworded question whose content words differ is uncertain
/// under the rule, so the configured judge decides; its yes is served (`x-deja-verified:
/// judge`) and remembered, its no is a miss. (Timeouts, errors and the verdict cache in detail:
/// tests/cache_judge.rs.)
#[tokio::test]
async fn uncertain_candidates_go_to_the_judge() {
    // The same mock answers clients and the judge: a judge question is recognised by its
    // system message; it says no when the pair mentions an email address.
    let mock = MockUpstream::builder()
        .reply_with(|body| {
            let text = body.to_string();
            if !text.contains("<request_a>") {
                "Open Settings, then Security, then Reset password.".into()
            } else if text.contains("email") {
                "no".into()
            } else {
                "yes".into()
            }
        })
        .start()
        .await;
    let rule = "threshold = 0.996\nverified_threshold = 0.9\n[cache.judge]\nmodel = \"gpt-4o-mini\"\ntimeout = \"2s\"\nband = 0.6";
    let d = Deja::start_with(&mock.base_url(), real_model(), rule, "").await;
    post(&d, &chat("How do I reset my password?"), "k").await;
    d.wait_entries(1).await;
    let judge_calls = |m: &MockUpstream| {
        m.requests()
            .iter()
            .filter(|r| r.body.to_string().contains("<request_a>"))
            .count()
    };

    let r = post(&d, &chat("What should I do to change my password?"), "k").await;
    assert_eq!(r.header("x-deja-cache"), "semantic-hit", "{:?}", r.headers);
    assert_eq!(r.header("x-deja-verified"), "judge");
    assert!(
        r.header("server-timing").contains("judge;dur="),
        "{}",
        r.header("server-timing")
    );
    assert_eq!(judge_calls(&mock), 1);
    let again = post(&d, &chat("What should I do to change my password?"), "k").await;
    assert_eq!(again.header("x-deja-cache"), "semantic-hit");
    assert_eq!(judge_calls(&mock), 1, "the verdict is remembered per pair");

    let no = post(&d, &chat("How do I reset my email password?"), "k").await;
    assert_eq!(no.header("x-deja-cache"), "miss", "the judge said no");
    assert_eq!(judge_calls(&mock), 2);
    let m = d.state.metrics();
    assert_eq!(m.verifier_decisions.with_label_values(&["judge"]).get(), 2);
    assert!(
        m.verifier_decisions
            .with_label_values(&["unverified"])
            .get()
            >= 1
    );
}

async fn responses(d: &Deja, body: &Value, key: &str) -> Reply {
    let auth = format!("Bearer {key}");
    d.post("/v1/responses", body, &[("authorization", &auth)])
        .await
}

/// The `response` object of a streamed Responses answer's terminal event.
fn completed_of(sse: &str) -> Value {
    sse.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["type"] == "response.completed")
        .map(|v| v["response"].clone())
        .unwrap_or(Value::Null)
}

/// The texts of a Responses `input` list, in order (strings and text parts).
fn input_texts(body: &Value) -> Vec<String> {
    let items = body["input"].as_array().cloned().unwrap_or_default();
    items
        .iter()
        .map(|i| match &i["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<String>(),
            _ => String::new(),
        })
        .collect()
}

/// `previous_response_id` (issue 15): a follow-up naming a response deja relayed or served is
/// resolved into the stateless request it stands for, so it is cached like any conversation;
/// upstream gets the provider's own chain when the provider made the id, and the whole
/// conversation when deja did (a hit). A streamed answer is remembered before its terminal
/// event reaches the client. Records belong to one tenant; deja ids it does not know are a 400
/// without an upstream call; provider ids it does not know, and answers to `store: false`, go
/// upstream as sent.
#[tokio::test]
async fn issue15_previous_response_id_chains_are_resolved_per_tenant() {
    let up = MockUpstream::start().await;
    let d = Deja::start(&up.base_url(), hash_model()).await;
    let m = "gpt-4o-mini";
    let r1 = responses(
        &d,
        &json!({"model": m, "input": "Recommend a database book."}),
        "sk-a",
    )
    .await;
    assert_eq!(
        (r1.status, r1.header("x-deja-cache")),
        (200, "miss"),
        "{}",
        r1.text
    );
    let id1 = r1.body["id"].as_str().unwrap().to_string();
    assert!(!id1.starts_with("resp_dj"), "the provider's id: {id1}");
    let answer1 = r1.body["output"][0]["content"][0]["text"].clone();

    // Turn 2 names the provider's id: resolved (a miss, not a bypass), sent as the client sent it.
    let follow = json!({"model": m, "input": "Why that one?", "previous_response_id": id1});
    let r2 = responses(&d, &follow, "sk-a").await;
    assert_eq!(r2.header("x-deja-cache"), "miss", "{}", r2.text);
    let sent = up.last_request().unwrap();
    assert_eq!(sent.body["previous_response_id"], id1.as_str());
    assert_eq!(
        sent.body["input"], "Why that one?",
        "the provider's own chain is used"
    );
    d.wait_entries(2).await;

    // The same follow-up again: served from the cache, with a deja id that echoes the chain.
    let r3 = responses(&d, &follow, "sk-a").await;
    assert_eq!(r3.header("x-deja-cache"), "exact-hit", "{}", r3.text);
    let id3 = r3.body["id"].as_str().unwrap().to_string();
    assert!(id3.starts_with("resp_dj"), "{id3}");
    assert_eq!(r3.body["previous_response_id"], id1.as_str());
    let answer2 = r2.body["output"][0]["content"][0]["text"].clone();
    assert_eq!(r3.body["output"][0]["content"][0]["text"], answer2);

    // Turn 3 names the deja id, streamed: the provider gets the whole conversation.
    let turn3 = json!({"model": m, "input": "Is there a newer edition?",
                       "previous_response_id": id3, "stream": true});
    let r4 = responses(&d, &turn3, "sk-a").await;
    assert_eq!(
        (r4.status, r4.header("x-deja-cache")),
        (200, "miss"),
        "{}",
        r4.text
    );
    let sent = up.last_request().unwrap();
    assert!(
        sent.body.get("previous_response_id").is_none(),
        "{}",
        sent.body
    );
    assert_eq!(
        input_texts(&sent.body),
        [
            "Recommend a database book.",
            answer1.as_str().unwrap(),
            "Why that one?",
            answer2.as_str().unwrap(),
            "Is there a newer edition?"
        ]
    );
    // Its answer was remembered before the client read the terminal event: named at once.
    let id4 = completed_of(&r4.text)["id"].as_str().unwrap().to_string();
    let calls = up.calls_for("/v1/responses");
    let r5 = responses(
        &d,
        &json!({"model": m, "input": "Thanks!", "previous_response_id": id4}),
        "sk-a",
    )
    .await;
    assert_eq!(r5.header("x-deja-cache"), "miss", "{}", r5.text);
    assert_eq!(up.calls_for("/v1/responses"), calls + 1);
    assert_eq!(
        up.last_request().unwrap().body["previous_response_id"],
        id4.as_str()
    );

    // Another tenant cannot use the conversation; an unknown deja id is a 400; neither calls up.
    let calls = up.calls_for("/v1/responses");
    let other = json!({"model": m, "input": "What did I ask?", "previous_response_id": id3});
    let r = responses(&d, &other, "sk-b").await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "previous_response_not_found");
    assert_eq!(r.body["error"]["param"], "previous_response_id");
    let long = format!("resp_dj{}", "a".repeat(100_000));
    let r = responses(
        &d,
        &json!({"model": m, "input": "x", "previous_response_id": long}),
        "sk-a",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.text.len() < 1000,
        "a client's id is not echoed whole: {} bytes",
        r.text.len()
    );
    let r = responses(
        &d,
        &json!({"model": m, "input": "x", "previous_response_id": 7}),
        "sk-a",
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["param"].as_str()),
        (400, Some("previous_response_id"))
    );
    let unknown = format!("resp_dj{}", "0".repeat(32));
    let r = responses(
        &d,
        &json!({"model": m, "input": "x", "previous_response_id": unknown}),
        "sk-a",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(up.calls_for("/v1/responses"), calls, "no upstream call");

    // A provider id deja never saw goes upstream as sent, uncached.
    let r = responses(
        &d,
        &json!({"model": m, "input": "y", "previous_response_id": "resp_elsewhere"}),
        "sk-a",
    )
    .await;
    assert_eq!(r.header("x-deja-cache"), "bypass");
    assert_eq!(
        up.last_request().unwrap().body["previous_response_id"],
        "resp_elsewhere"
    );

    // `store: false`: nothing remembered, so a follow-up is the provider's to resolve.
    let r = responses(
        &d,
        &json!({"model": m, "input": "Keep this private.", "store": false}),
        "sk-a",
    )
    .await;
    let private = r.body["id"].as_str().unwrap().to_string();
    let r = responses(
        &d,
        &json!({"model": m, "input": "And?", "previous_response_id": private}),
        "sk-a",
    )
    .await;
    assert_eq!(r.header("x-deja-cache"), "bypass");

    let m = metrics_text(&d).await;
    for (event, n) in [("resolved", 4), ("not_found", 3), ("unknown", 2)] {
        let series = format!("deja_response_chains_total{{event=\"{event}\"}} {n}");
        assert!(m.contains(&series), "{series} in\n{m}");
    }
    d.stop().await;

    // A conversation over the request body cap is not remembered (`too_large`): a follow-up
    // naming its id goes upstream as sent.
    let tmp = tempfile::tempdir().unwrap();
    let text = common::harness::config_text(&tmp.path().join("store"), &up.base_url(), "", "")
        .replacen("[server]\n", "[server]\nmax_body_bytes = 1200\n", 1);
    let d = Deja::start_config(&text, tmp.path(), hash_model(), None).await;
    let long = "Tell me about sled. ".repeat(50);
    let r = responses(&d, &json!({"model": m_name(), "input": long}), "sk-a").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    let r = responses(
        &d,
        &json!({"model": m_name(), "input": "More?", "previous_response_id": id}),
        "sk-a",
    )
    .await;
    assert_eq!(r.header("x-deja-cache"), "bypass", "{}", r.text);
    let series = "deja_response_chains_total{event=\"too_large\"} 1";
    assert!(metrics_text(&d).await.contains(series), "{series}");
    d.stop().await;

    // `response_chains = 0`: deja remembers nothing; its own ids cannot be resolved.
    let d = Deja::start_with(&up.base_url(), hash_model(), "response_chains = 0", "").await;
    let r = responses(
        &d,
        &json!({"model": m_name(), "input": "Hello there."}),
        "sk-a",
    )
    .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let r = responses(
        &d,
        &json!({"model": m_name(), "input": "Again?", "previous_response_id": id}),
        "sk-a",
    )
    .await;
    assert_eq!(r.header("x-deja-cache"), "bypass", "{}", r.text);
    d.stop().await;
}

fn m_name() -> &'static str {
    "gpt-4o-mini"
}

async fn metrics_text(d: &Deja) -> String {
    let r = client().get(d.url("/metrics")).send().await.unwrap();
    r.text().await.unwrap()
}
