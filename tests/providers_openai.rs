//! The router against in-process OpenAI-compatible mock upstreams: byte-exact pass-through of
//! JSON and SSE, retries, pass-through of non-retryable statuses, `Retry-After`, fallback,
//! aggregate errors, the circuit breaker, timeouts, keys and renames.

mod common;

use common::mock_upstream::MockUpstream;
use common::providers::{drain, fast, json_body, router};
use deja::providers::{
    BreakerState, ProviderError, ProviderErrorKind, ProviderSettings, RouteSettings, RouteTarget,
    Router, RouterError, SseEvent, SseParser, UpstreamRequest,
};
use serde_json::{json, Value};
use std::time::Duration;

/// An OpenAI-kind provider at the mock, with the shared test timings ([`fast`]).
fn provider(name: &str, up: &MockUpstream) -> ProviderSettings {
    provider_at(name, &up.base_url())
}

fn provider_at(name: &str, base_url: &str) -> ProviderSettings {
    fast(ProviderSettings::openai(name, base_url))
}

fn chat(text: &str, stream: bool) -> UpstreamRequest {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    UpstreamRequest::post_json("/chat/completions", &body, stream)
}

fn all_failed(err: RouterError) -> Vec<(String, ProviderError)> {
    match err {
        RouterError::AllFailed { attempts } => attempts,
        other => panic!("expected AllFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn json_answer_passes_through_byte_for_byte() {
    let up = MockUpstream::start().await;
    let r = router(vec![provider("a", &up)], &["a"]);
    let resp = r
        .send(chat("hello there", false), "gpt-4o-mini")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.provider, "a");
    assert_eq!(resp.model.as_deref(), Some("gpt-4o-mini"));
    let sent = up.last_request().unwrap();
    assert_eq!(resp.json_bytes().unwrap(), &sent.response_body);
    assert_eq!(resp.headers["content-type"], "application/json");
    assert!(resp.headers["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    assert!(resp.headers.contains_key("openai-processing-ms"));
    let v = json_body(&resp);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Answer #1 to: hello there"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    // The request body reached the upstream unchanged.
    assert_eq!(sent.body["messages"][1]["content"], "hello there");
    assert_eq!(
        sent.header("content-type").as_deref(),
        Some("application/json")
    );
}

#[tokio::test]
async fn sse_stream_passes_through_byte_for_byte_and_parses() {
    let up = MockUpstream::start().await;
    let r = router(vec![provider("a", &up)], &["a"]);
    let resp = r
        .send(chat("stream me", true), "gpt-4o-mini")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (bytes, err) = drain(resp).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(bytes, up.last_request().unwrap().response_body.to_vec());

    let events: Vec<SseEvent> = SseParser::new().feed(&bytes);
    assert!(events.last().unwrap().is_done());
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Answer #1 to: stream me");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn legacy_completions_stream_passes_through() {
    let up = MockUpstream::start().await;
    let r = router(vec![provider("a", &up)], &["a"]);
    let body = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "stream": true});
    let req = UpstreamRequest::post_json("/completions", &body, true);
    let (bytes, err) = drain(r.send(req, "gpt-3.5-turbo-instruct").await.unwrap()).await;
    assert!(err.is_none());
    let events = SseParser::new().feed(&bytes);
    let text: String = events
        .iter()
        .filter(|e| !e.is_done())
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, "Answer #1 to: Say hi");
    assert_eq!(up.calls_for("/completions"), 1);
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let up = MockUpstream::builder().fail_n_times(2, 500).start().await;
    let r = router(vec![provider("a", &up)], &["a"]);
    let resp = r.send(chat("retry", false), "gpt-4o-mini").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(up.calls(), 3);
    assert_eq!(
        json_body(&resp)["choices"][0]["message"]["content"],
        "Answer #3 to: retry"
    );
    let stats = r.provider_stats("a").unwrap();
    assert_eq!((stats.attempts, stats.retries, stats.responses), (3, 2, 1));
    assert_eq!(stats.errors("server_error"), 2);
}

#[tokio::test]
async fn retries_stop_at_max_retries() {
    let up = MockUpstream::builder().fail_n_times(3, 502).start().await;
    let r = router(vec![provider("a", &up)], &["a"]);
    let err = r.send(chat("x", false), "gpt-4o-mini").await.unwrap_err();
    assert_eq!(err.status(), 502);
    assert_eq!(all_failed(err).len(), 3);
    assert_eq!(up.calls(), 3);
}

#[tokio::test]
async fn client_errors_are_passed_through_without_retry() {
    let up = MockUpstream::builder().fail_n_times(1, 400).start().await;
    let backup = MockUpstream::start().await;
    let r = router(
        vec![provider("a", &up), provider("b", &backup)],
        &["a", "b"],
    );
    let resp = r.send(chat("bad", false), "gpt-4o-mini").await.unwrap();
    assert_eq!(resp.status, 400);
    assert_eq!(resp.provider, "a");
    assert_eq!(json_body(&resp)["error"]["type"], "invalid_request_error");
    assert_eq!(up.calls(), 1);
    assert_eq!(backup.calls(), 0, "a 4xx must not fall back");
}

#[tokio::test]
async fn retry_after_ms_is_honoured() {
    let up = MockUpstream::builder()
        .fail_n_times(1, 429)
        .with_retry_after_ms(300)
        .start()
        .await;
    let mut p = provider("a", &up);
    p.backoff_max = Duration::from_secs(5);
    let r = router(vec![p], &["a"]);
    let start = std::time::Instant::now();
    let resp = r.send(chat("x", false), "gpt-4o-mini").await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(up.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_is_honoured_and_capped() {
    let up = MockUpstream::builder()
        .fail_n_times(2, 503)
        .with_retry_after(20)
        .start()
        .await;
    let mut p = provider("a", &up);
    p.backoff_max = Duration::from_secs(60);
    let r = router(vec![p.clone()], &["a"]);
    let start = tokio::time::Instant::now();
    assert_eq!(r.send(chat("x", false), "m").await.unwrap().status, 200);
    assert!(
        start.elapsed() >= Duration::from_secs(40),
        "{:?}",
        start.elapsed()
    );

    // A Retry-After beyond backoff_max waits only backoff_max.
    up.set_failures(1, 429);
    p.backoff_max = Duration::from_secs(2);
    let r = router(vec![p], &["a"]);
    let start = tokio::time::Instant::now();
    assert_eq!(r.send(chat("x", false), "m").await.unwrap().status, 200);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
}

#[tokio::test]
async fn falls_back_to_the_next_provider() {
    let bad = MockUpstream::builder().always_fail(503).start().await;
    let good = MockUpstream::start().await;
    let r = router(vec![provider("a", &bad), provider("b", &good)], &["a", "b"]);
    let resp = r
        .send(chat("fallback", false), "gpt-4o-mini")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.provider, "b");
    assert_eq!(bad.calls(), 3, "first attempt plus max_retries");
    assert_eq!(good.calls(), 1);
    assert_eq!(r.provider_stats("a").unwrap().fallbacks, 1);
}

#[tokio::test]
async fn streaming_falls_back_before_the_first_byte() {
    let bad = MockUpstream::builder().always_fail(500).start().await;
    let good = MockUpstream::start().await;
    let r = router(vec![provider("a", &bad), provider("b", &good)], &["a", "b"]);
    let resp = r.send(chat("s", true), "gpt-4o-mini").await.unwrap();
    assert_eq!(resp.provider, "b");
    let (bytes, err) = drain(resp).await;
    assert!(err.is_none());
    assert_eq!(bytes, good.last_request().unwrap().response_body.to_vec());
}

#[tokio::test]
async fn unreachable_provider_is_a_connect_error_and_falls_back() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let good = MockUpstream::start().await;
    let mut dead = provider_at("dead", &format!("http://{closed}/v1"));
    dead.max_retries = 1;
    let r = router(vec![dead, provider("b", &good)], &["dead", "b"]);
    let resp = r.send(chat("x", false), "m").await.unwrap();
    assert_eq!(resp.provider, "b");
    let stats = r.provider_stats("dead").unwrap();
    assert_eq!(stats.errors("connect"), 2);
}

#[tokio::test]
async fn all_rate_limited_is_429_with_every_attempt() {
    let a = MockUpstream::builder()
        .always_fail(429)
        .with_retry_after_ms(2)
        .start()
        .await;
    let b = MockUpstream::builder()
        .always_fail(429)
        .with_retry_after_ms(1)
        .start()
        .await;
    let mut pa = provider("a", &a);
    pa.max_retries = 1;
    let mut pb = provider("b", &b);
    pb.max_retries = 0;
    let r = router(vec![pa, pb], &["a", "b"]);
    let err = r.send(chat("x", false), "m").await.unwrap_err();
    assert_eq!(err.status(), 429);
    assert_eq!(err.retry_after(), Some(Duration::from_millis(1)));
    let attempts = all_failed(err);
    let who: Vec<&str> = attempts.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(who, ["a", "a", "b"]);
    assert!(attempts.iter().all(|(_, e)| e.is_rate_limited()));
    assert_eq!((a.calls(), b.calls()), (2, 1));
}

#[tokio::test]
async fn mixed_failures_are_502() {
    let a = MockUpstream::builder().always_fail(429).start().await;
    let b = MockUpstream::builder().always_fail(500).start().await;
    let r = router(vec![provider("a", &a), provider("b", &b)], &["a", "b"]);
    assert_eq!(
        r.send(chat("x", false), "m").await.unwrap_err().status(),
        502
    );
}

#[tokio::test(start_paused = true)]
async fn slow_upstreams_time_out_as_504() {
    let up = MockUpstream::builder()
        .with_latency(Duration::from_secs(60))
        .start()
        .await;
    let mut p = provider("a", &up);
    p.request_timeout = Duration::from_secs(1);
    p.max_retries = 1;
    let r = router(vec![p], &["a"]);
    let err = r.send(chat("x", false), "m").await.unwrap_err();
    assert_eq!(err.status(), 504);
    assert!(all_failed(err)
        .iter()
        .all(|(_, e)| e.kind == ProviderErrorKind::Timeout));
}

#[tokio::test]
async fn cut_stream_ends_with_stream_cut_and_no_done() {
    let up = MockUpstream::builder().cut_stream_after(3).start().await;
    let r = router(vec![provider("a", &up)], &["a"]);
    let resp = r
        .send(chat("one two three four five", true), "m")
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "headers arrived, so send succeeded");
    let (bytes, err) = drain(resp).await;
    assert_eq!(
        err.expect("the cut must surface").kind,
        ProviderErrorKind::StreamCut
    );
    let events = SseParser::new().feed(&bytes);
    assert_eq!(events.len(), 3);
    assert!(events
        .iter()
        .all(|e| !e.is_done() && !e.data.contains("\"finish_reason\":\"stop\"")));
    assert_eq!(r.provider_stats("a").unwrap().errors("stream_cut"), 1);
}

#[tokio::test(start_paused = true)]
async fn silent_stream_hits_the_read_timeout() {
    let up = MockUpstream::builder()
        .with_chunk_delay(Duration::from_secs(600))
        .start()
        .await;
    let mut p = provider("a", &up);
    p.read_timeout = Duration::from_secs(5);
    let r = router(vec![p], &["a"]);
    let (bytes, err) = drain(r.send(chat("x", true), "m").await.unwrap()).await;
    assert_eq!(err.expect("idle timeout").kind, ProviderErrorKind::Timeout);
    assert_eq!(
        SseParser::new().feed(&bytes).len(),
        1,
        "only the first event came"
    );
}

#[tokio::test]
async fn breaker_opens_rejects_fast_then_half_opens_one_probe() {
    let up = MockUpstream::builder().always_fail(500).start().await;
    let mut p = provider("a", &up);
    p.max_retries = 0;
    p.breaker_failures = 3;
    p.breaker_cooldown = Duration::from_secs(30);
    let r = router(vec![p], &["a"]);
    for _ in 0..3 {
        assert_eq!(
            r.send(chat("x", false), "m").await.unwrap_err().status(),
            502
        );
    }
    assert_eq!(r.breaker_state("a"), Some(BreakerState::Open));
    let err = r.send(chat("x", false), "m").await.unwrap_err();
    assert_eq!(err.status(), 503);
    assert_eq!(all_failed(err)[0].1.kind, ProviderErrorKind::CircuitOpen);
    assert_eq!(up.calls(), 3, "an open breaker sends nothing");

    // Cooldown passes; the probe fails, so the breaker re-opens.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(30)).await;
    tokio::time::resume();
    assert_eq!(r.breaker_state("a"), Some(BreakerState::HalfOpen));
    assert_eq!(
        r.send(chat("x", false), "m").await.unwrap_err().status(),
        502
    );
    assert_eq!(up.calls(), 4);
    assert_eq!(r.breaker_state("a"), Some(BreakerState::Open));
    assert!(r.send(chat("x", false), "m").await.is_err());
    assert_eq!(up.calls(), 4);

    // Next cooldown, upstream healthy: the probe closes the breaker.
    up.set_failures(0, 500);
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(30)).await;
    tokio::time::resume();
    assert_eq!(r.send(chat("x", false), "m").await.unwrap().status, 200);
    assert_eq!(r.breaker_state("a"), Some(BreakerState::Closed));
    assert_eq!(r.send(chat("x", false), "m").await.unwrap().status, 200);
    assert_eq!(up.calls(), 6);
    let stats = r.provider_stats("a").unwrap();
    assert_eq!(stats.breaker_opened, 2);
    assert_eq!(stats.errors("circuit_open"), 2);
}

#[tokio::test]
async fn open_breaker_falls_back_without_calling_the_first_provider() {
    let bad = MockUpstream::builder().always_fail(500).start().await;
    let good = MockUpstream::start().await;
    let mut p = provider("a", &bad);
    p.max_retries = 0;
    p.breaker_failures = 1;
    let r = router(vec![p, provider("b", &good)], &["a", "b"]);
    assert_eq!(r.send(chat("x", false), "m").await.unwrap().provider, "b");
    assert_eq!(r.send(chat("x", false), "m").await.unwrap().provider, "b");
    assert_eq!(bad.calls(), 1);
    assert_eq!(good.calls(), 2);
}

#[tokio::test]
async fn no_route_is_an_error_without_upstream_calls() {
    let up = MockUpstream::start().await;
    let r = Router::new(
        vec![provider("a", &up)],
        vec![RouteSettings::new("gpt-*", &["a"])],
    )
    .unwrap();
    let err = r
        .send(chat("x", false), "claude-3-haiku")
        .await
        .unwrap_err();
    assert!(matches!(&err, RouterError::NoRoute { model } if model == "claude-3-haiku"));
    assert_eq!(err.status(), 404);
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn provider_key_comes_from_its_env_var_at_request_time() {
    let var = "DEJA_TEST_KEY_PROVIDERS_OPENAI_ENV_1";
    std::env::set_var(var, "sk-env-one");
    let up = MockUpstream::start().await;
    let mut p = provider("a", &up);
    p.api_key_env = Some(var.to_string());
    let r = router(vec![p], &["a"]);
    let req = || chat("x", false).with_client_key(Some("sk-client".to_string()));
    r.send(req(), "m").await.unwrap();
    assert_eq!(
        up.last_request().unwrap().authorization().as_deref(),
        Some("Bearer sk-env-one")
    );
    std::env::set_var(var, "sk-env-two");
    r.send(req(), "m").await.unwrap();
    assert_eq!(
        up.last_request().unwrap().authorization().as_deref(),
        Some("Bearer sk-env-two")
    );
}

#[tokio::test]
async fn client_key_is_forwarded_when_no_env_var_is_set() {
    let up = MockUpstream::start().await;
    let r = router(vec![provider("a", &up)], &["a"]);
    r.send(
        chat("x", false).with_client_key(Some("sk-client".into())),
        "m",
    )
    .await
    .unwrap();
    assert_eq!(
        up.last_request().unwrap().authorization().as_deref(),
        Some("Bearer sk-client")
    );
    r.send(chat("x", false), "m").await.unwrap();
    assert_eq!(up.last_request().unwrap().authorization(), None);
}

#[tokio::test]
async fn missing_env_key_skips_the_provider() {
    let var = "DEJA_TEST_KEY_PROVIDERS_OPENAI_UNSET_2";
    std::env::remove_var(var);
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let mut pa = provider("a", &a);
    pa.api_key_env = Some(var.to_string());
    let r = router(vec![pa, provider("b", &b)], &["a", "b"]);
    let resp = r.send(chat("x", false), "m").await.unwrap();
    assert_eq!(resp.provider, "b");
    assert_eq!(a.calls(), 0);
    assert_eq!(r.provider_stats("a").unwrap().errors("no_api_key"), 1);
}

#[tokio::test]
async fn target_rename_and_extra_headers_reach_the_upstream() {
    let a = MockUpstream::builder().always_fail(500).start().await;
    let b = MockUpstream::start().await;
    let mut pb = provider("b", &b);
    pb.extra_headers = vec![("OpenAI-Organization".into(), "org-deja".into())];
    let route = RouteSettings {
        model_glob: "gpt-4o*".into(),
        targets: vec![
            RouteTarget::new("a"),
            RouteTarget {
                provider: "b".into(),
                model: Some("llama3".into()),
                weight: None,
            },
        ],
    };
    let r = Router::new(vec![provider("a", &a), pb], vec![route]).unwrap();
    let resp = r.send(chat("x", false), "gpt-4o-mini").await.unwrap();
    assert_eq!(resp.model.as_deref(), Some("llama3"));
    assert_eq!(a.last_request().unwrap().body["model"], "gpt-4o-mini");
    let seen = b.last_request().unwrap();
    assert_eq!(seen.body["model"], "llama3");
    assert_eq!(seen.body["messages"][1]["content"], "x");
    assert_eq!(
        seen.header("openai-organization").as_deref(),
        Some("org-deja")
    );
}

#[tokio::test]
async fn models_list_passes_through_with_get() {
    let up = MockUpstream::builder()
        .with_models(&["m1", "m2"])
        .start()
        .await;
    let r = router(vec![provider("a", &up)], &["a"]);
    let resp = r
        .send_to("a", UpstreamRequest::get("/models"))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let ids: Vec<String> = json_body(&resp)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["m1", "m2"]);
    assert_eq!(up.last_request().unwrap().method, "GET");
    assert_eq!(up.calls_for("/models"), 1);
    let via_route = r
        .send(UpstreamRequest::get("/models"), "anything")
        .await
        .unwrap();
    assert_eq!(via_route.status, 200);
    assert!(matches!(
        r.send_to("nope", UpstreamRequest::get("/models")).await,
        Err(RouterError::UnknownProvider { .. })
    ));
}

#[tokio::test]
async fn send_future_is_send_and_concurrent_requests_work() {
    let up = MockUpstream::start().await;
    let r = router(vec![provider("a", &up)], &["a"]);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let r = r.clone();
            tokio::spawn(async move { r.send(chat(&format!("q{i}"), i % 2 == 0), "m").await })
        })
        .collect();
    for h in handles {
        assert_eq!(h.await.unwrap().unwrap().status, 200);
    }
    assert_eq!(up.calls(), 8);
}

/// Gemini through its OpenAI-compatible endpoint: chat goes to `{base}/chat/completions` with
/// `Authorization: Bearer <Gemini key>`; a Responses request is translated to chat and its
/// answer back into a `response` object (JSON and events); legacy completions are refused
/// before any call.
#[tokio::test]
async fn issue15_gemini_kind_speaks_chat_and_serves_responses_through_it() {
    use deja::api::ApiKind;
    let var = "DEJA_TEST_KEY_PROVIDERS_GEMINI_1";
    std::env::set_var(var, "gemini-env-key");
    let up = MockUpstream::start().await;
    let mut p = fast(ProviderSettings::gemini("gemini", up.base_url()));
    p.api_key_env = Some(var.to_string());
    let r = router(vec![p], &["gemini"]);

    let req = chat("hello gemini", false).with_api(ApiKind::Chat);
    let sent = req.body.clone();
    let resp = r.send(req, "gemini-2.0-flash").await.unwrap();
    let rec = up.last_request().unwrap();
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(
        rec.authorization().as_deref(),
        Some("Bearer gemini-env-key")
    );
    assert_eq!(rec.raw_body, sent, "chat bodies go to Gemini untouched");
    assert_eq!(json_body(&resp)["object"], "chat.completion");

    let body = json!({"model": "gemini-2.0-flash", "instructions": "Be brief.",
                      "input": "hello responses", "max_output_tokens": 2});
    let req = UpstreamRequest::post_json("/responses", &body, false).with_api(ApiKind::Responses);
    let resp = r.send(req, "gemini-2.0-flash").await.unwrap();
    let rec = up.last_request().unwrap();
    assert_eq!(rec.path, "/v1/chat/completions");
    assert_eq!(
        rec.body,
        json!({"model": "gemini-2.0-flash", "max_completion_tokens": 2, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello responses"}]})
    );
    let v = json_body(&resp);
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "incomplete", "two words of a longer answer");
    assert_eq!(v["output"][0]["content"][0]["text"], "Answer #2");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed
        .as_object_mut()
        .unwrap()
        .remove("max_output_tokens");
    let req =
        UpstreamRequest::post_json("/responses", &streamed, true).with_api(ApiKind::Responses);
    let resp = r.send(req, "gemini-2.0-flash").await.unwrap();
    assert_eq!(
        up.last_request().unwrap().body["stream_options"],
        json!({"include_usage": true}),
        "the usage chunk is asked for: response.completed carries usage"
    );
    let (bytes, err) = drain(resp).await;
    assert!(err.is_none(), "{err:?}");
    let evs = SseParser::new().feed(&bytes);
    let last: Value = serde_json::from_str(&evs.last().unwrap().data).unwrap();
    assert_eq!(last["type"], "response.completed");
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"],
        "Answer #3 to: hello responses"
    );
    assert!(last["response"]["usage"]["output_tokens"].as_u64().unwrap() > 0);

    let calls = up.calls();
    let legacy = UpstreamRequest::post_json(
        "/completions",
        &json!({"model": "gemini-2.0-flash", "prompt": "hi"}),
        false,
    )
    .with_api(ApiKind::Completions);
    let err = r.send(legacy, "gemini-2.0-flash").await.unwrap_err();
    assert!(err.untranslatable().unwrap().contains("Gemini"), "{err:?}");
    assert_eq!(up.calls(), calls);
}
