//! Every bad input gets a clear, OpenAI-shaped 4xx and loses nothing; upstream failures map to
//! the documented statuses.

mod common;

use common::harness::{client, hash_model, Deja, Reply};
use common::mock_upstream::MockUpstream;
use serde_json::json;

async fn raw(d: &Deja, body: Vec<u8>) -> Reply {
    let r = client()
        .post(d.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    Reply::read(r).await
}

fn assert_openai_error(r: &Reply, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    let err = &r.body["error"];
    assert!(err.is_object(), "not OpenAI-shaped: {}", r.text);
    let message = err["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "message {message:?} lacks {needle:?}"
    );
    assert!(
        err.get("type").is_some() && err.get("param").is_some() && err.get("code").is_some(),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn malformed_bodies_are_400_and_never_reach_upstream() {
    let mock = MockUpstream::start().await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let r = raw(
        &d,
        br#"{"model":"gpt-4o-mini","messages":[{"role":"user","#.to_vec(),
    )
    .await;
    assert_openai_error(&r, 400, "");
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    let r = raw(
        &d,
        br#"{"model":5,"messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
    )
    .await;
    assert_openai_error(&r, 400, "model");
    let r = raw(&d, br#"{"model":"m","messages":[]}"#.to_vec()).await;
    assert_openai_error(&r, 400, "messages");
    let r = raw(
        &d,
        br#"{"messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
    )
    .await;
    assert_openai_error(&r, 400, "model");
    let r = raw(
        &d,
        br#"{"model":"m","messages":[{"role":"robot","content":"hi"}]}"#.to_vec(),
    )
    .await;
    assert_openai_error(&r, 400, "role");
    assert_eq!(r.body["error"]["param"], "messages[0].role");
    let r = raw(&d, b"[1,2,3]".to_vec()).await;
    assert_openai_error(&r, 400, "");
    let mut bad_utf8 = br#"{"model":"m","messages":[{"role":"user","content":""#.to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    bad_utf8.extend_from_slice(br#""}]}"#);
    let r = raw(&d, bad_utf8).await;
    assert_openai_error(&r, 400, "");
    assert_eq!(mock.calls(), 0, "nothing invalid may reach the upstream");
    assert_eq!(d.entries(), 0);
}

#[tokio::test]
async fn huge_body_is_413() {
    let mock = MockUpstream::start().await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let big = "x".repeat(5 << 20);
    let body = serde_json::to_vec(&json!({"model":"m","messages":[{"role":"user","content":big}]}))
        .unwrap();
    let r = raw(&d, body).await;
    assert_openai_error(&r, 413, "");
    assert_eq!(mock.calls(), 0);
}

#[tokio::test]
async fn unknown_model_without_route_is_404() {
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[cache]
dir = "{}"
[[providers]]
name = "mock"
kind = "openai"
base_url = "{}"
[[routes]]
model = "gpt-*"
providers = ["mock"]
"#,
        tmp.path().join("store").display(),
        mock.base_url()
    );
    let d = Deja::start_config(&text, tmp.path(), hash_model(), None).await;
    let r = Reply::read(
        client()
            .post(d.url("/v1/chat/completions"))
            .json(&json!({"model":"llama3","messages":[{"role":"user","content":"hi"}]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_openai_error(&r, 404, "llama3");
    assert_eq!(mock.calls(), 0);
}

#[tokio::test]
async fn unreachable_upstream_is_502_and_unknown_path_404() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = Deja::start(&format!("http://127.0.0.1:{port}/v1"), hash_model()).await;
    let r = Reply::read(
        client()
            .post(d.url("/v1/chat/completions"))
            .json(&json!({"model":"m","messages":[{"role":"user","content":"hi"}]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_openai_error(&r, 502, "mock");
    let r = Reply::read(client().get(d.url("/nope")).send().await.unwrap()).await;
    assert_openai_error(&r, 404, "");
}

#[tokio::test]
async fn api_key_never_appears_in_error_bodies() {
    let mock = MockUpstream::builder().fail_n_times(5, 503).start().await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let r = Reply::read(
        client()
            .post(d.url("/v1/chat/completions"))
            .bearer_auth("sk-very-secret-key")
            .json(&json!({"model":"m","messages":[{"role":"user","content":"hi"}]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(r.status >= 500, "{}", r.text);
    assert!(!r.text.contains("sk-very-secret-key"));
    assert!(
        !r.text.contains(&mock.base_url()),
        "no upstream URL in client errors: {}",
        r.text
    );
}

fn two_provider_config(dir: &std::path::Path, first: &str, second: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[cache]
dir = "{}"
[[providers]]
name = "first"
kind = "openai"
base_url = "{first}"
max_retries = 1
backoff_base = "1ms"
[[providers]]
name = "second"
kind = "openai"
base_url = "{second}"
max_retries = 0
[[routes]]
model = "*"
providers = ["first", "second"]
"#,
        dir.join("store").display()
    )
}

#[tokio::test]
async fn failing_provider_falls_back_and_the_answer_is_cached() {
    let first = MockUpstream::builder().always_fail(503).start().await;
    let second = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let text = two_provider_config(tmp.path(), &first.base_url(), &second.base_url());
    let d = Deja::start_config(&text, tmp.path(), hash_model(), None).await;
    let body = json!({"model":"m","messages":[{"role":"user","content":"fallback please"}]});
    let r = d.post("/v1/chat/completions", &body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-deja-provider"), "second");
    assert_eq!(
        first.calls(),
        2,
        "one try plus one retry on the first provider"
    );
    assert_eq!(second.calls(), 1);
    d.wait_entries(1).await;
    let r = d.post("/v1/chat/completions", &body, &[]).await;
    assert_eq!(r.header("x-deja-cache"), "exact-hit");
    let metrics = client()
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("deja_provider_retries_total{provider=\"first\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("deja_upstream_errors_total"), "{metrics}");
}

#[tokio::test]
async fn no_fallback_after_the_first_streamed_byte() {
    let first = MockUpstream::builder().cut_stream_after(2).start().await;
    let second = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let text = two_provider_config(tmp.path(), &first.base_url(), &second.base_url());
    let d = Deja::start_config(&text, tmp.path(), hash_model(), None).await;
    let body = json!({"model":"m","stream":true,"messages":[{"role":"user","content":"stream then break"}]});
    let r = client()
        .post(d.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-deja-provider"], "first");
    let text = r.text().await.unwrap_or_default();
    assert!(!text.contains("[DONE]"), "{text}");
    assert_eq!(
        second.calls(),
        0,
        "once bytes reached the client, there is no fallback"
    );
    d.settle().await;
    assert_eq!(d.entries(), 0);
}
