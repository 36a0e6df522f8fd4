//! What a client can do wrong at the edge (issue 12): paths that try to leave `/v1`, requests a
//! pass-through must not repeat, connections that never finish their headers or their body or
//! never leave, more connections than deja serves, and heads and methods deja refuses. Every
//! refusal is JSON in the client's SDK's shape. Raw sockets are used where an HTTP client would
//! fix the request up (paths with `..`, broken headers); time is paused, so timeouts of seconds
//! take none.

mod common;

use std::time::Duration;

use common::harness::{client, config_text, hash_model, Deja, Reply};
use common::mock_upstream::MockUpstream;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Server settings the connection tests run with: every bound small and distinct.
const TIGHT: &str = r#"header_read_timeout = "1s"
idle_timeout = "3s"
body_read_timeout = "2s"
"#;

/// deja in front of `mock` with `server` keys added to `[server]` and `provider` replacing the
/// provider's `max_retries = 0`.
async fn start(mock: &MockUpstream, server: &str, provider: &str) -> (Deja, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(&tmp.path().join("store"), &mock.base_url(), "", "")
        .replacen("[server]\n", &format!("[server]\n{server}\n"), 1)
        .replacen("max_retries = 0\n", &format!("{provider}\n"), 1);
    let d = Deja::start_config(&text, tmp.path(), hash_model(), None).await;
    (d, tmp)
}

fn addr(d: &Deja) -> String {
    d.base.trim_start_matches("http://").to_string()
}

/// One response read off a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Value,
    text: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response (head, then `content-length` bytes) from `s`; `None` once the server
/// closed the connection without one.
async fn read_response(s: &mut TcpStream) -> Option<Raw> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut raw = Raw {
        status,
        head,
        body: Value::Null,
        text: String::new(),
    };
    let len: usize = raw
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    raw.text = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    raw.body = serde_json::from_str(&raw.text).unwrap_or(Value::Null);
    Some(raw)
}

/// Sends `request` as is on a new connection and reads the answer.
async fn raw(d: &Deja, request: &[u8]) -> Raw {
    let mut s = TcpStream::connect(addr(d)).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response(&mut s).await.expect("an answer")
}

async fn raw_get(d: &Deja, path: &str) -> Raw {
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: deja\r\nauthorization: Bearer sk-client\r\n\
         connection: close\r\n\r\n"
    );
    raw(d, req.as_bytes()).await
}

/// Waits until the server closes `s` (EOF or reset), reading and dropping what it sends;
/// returns how long that took.
async fn closed_after(s: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(600), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection was never closed"),
        }
    }
}

fn assert_openai_error(r: &Raw, status: u16) {
    assert_eq!(r.status, status, "{}{}", r.head, r.text);
    let err = &r.body["error"];
    assert!(err.is_object(), "not OpenAI-shaped: {}{}", r.head, r.text);
    for key in ["message", "type", "param", "code"] {
        assert!(err.get(key).is_some(), "{key} missing: {}", r.text);
    }
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{}",
        r.head
    );
}

fn assert_anthropic_error(r: &Raw, status: u16) {
    assert_eq!(r.status, status, "{}{}", r.head, r.text);
    assert_eq!(r.body["type"], "error", "not Anthropic-shaped: {}", r.text);
    assert!(r.body["error"]["type"].is_string(), "{}", r.text);
    assert!(r.body["error"]["message"].is_string(), "{}", r.text);
}

#[tokio::test(start_paused = true)]
async fn issue12_passthrough_rejects_dot_segments() {
    let mock = MockUpstream::start().await;
    let (d, _tmp) = start(&mock, "", "max_retries = 0").await;
    for path in [
        "/v1/../_calls",
        "/v1/%2e%2e/_calls",
        "/v1/%2E%2e/_calls",
        "/v1/.%2e/_calls",
        "/v1/models/../../_calls",
        "/v1/models/%2e%2e/%2e%2e/_calls",
        "/v1/%252e%252e/_calls",
        "/v1/..%2f_calls",
        "/v1/..%5c_calls",
        "/v1/..\\_calls",
        "/v1/./models",
    ] {
        let r = raw_get(&d, path).await;
        assert_openai_error(&r, 400);
    }
    let r = raw_get(&d, "/v1/../_calls").await;
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("'..' path segments are not allowed"),
        "{message}"
    );
    let r = raw_get(&d, "/v1/messages/../../_calls").await;
    assert_anthropic_error(&r, 400);
    assert_eq!(
        mock.requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>(),
        Vec::<String>::new(),
        "an escaping path reached the upstream"
    );
    // The same route still passes ordinary paths through.
    let r = raw_get(&d, "/v1/models").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(mock.calls_for("/v1/models"), 1);
}

#[tokio::test(start_paused = true)]
async fn issue12_passthrough_forwards_the_client_content_type() {
    let mock = MockUpstream::start().await;
    let (d, _tmp) = start(&mock, "", "max_retries = 0").await;
    let boundary = "deja-test-boundary-7MA4YWxk";
    let body = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"b.jsonl\"\r\n\
         content-type: application/octet-stream\r\n\r\n{{\"custom_id\":\"1\"}}\n\x00\x01\r\n\
         --{boundary}--\r\n"
    );
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let r = client()
        .post(d.url("/v1/files"))
        .bearer_auth("sk-client")
        .header("content-type", &content_type)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    // The mock has no /files: its 404 comes back as is.
    assert_eq!(r.status(), 404);
    let seen = mock
        .last_request()
        .expect("the upload reached the upstream");
    assert_eq!(seen.path, "/v1/files");
    assert_eq!(seen.header("content-type").as_deref(), Some(&*content_type));
    assert_eq!(seen.raw_body, body.as_bytes());
    // A cached API still sends JSON, whatever the client said.
    let r = client()
        .post(d.url("/v1/chat/completions"))
        .header("content-type", "text/plain")
        .body(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = mock.last_request().unwrap();
    assert_eq!(
        seen.header("content-type").as_deref(),
        Some("application/json")
    );
}

#[tokio::test(start_paused = true)]
async fn issue12_passthrough_post_is_not_retried() {
    let mock = MockUpstream::builder().fail_n_times(1, 500).start().await;
    let retries = "max_retries = 2\nbackoff_base = \"1ms\"\nbackoff_max = \"2ms\"";
    let (d, _tmp) = start(&mock, "", retries).await;
    let r = client()
        .post(d.url("/v1/batches"))
        .bearer_auth("sk-client")
        .json(&json!({"input_file_id": "file-1", "endpoint": "/v1/chat/completions"}))
        .send()
        .await
        .unwrap();
    let r = Reply::read(r).await;
    assert_eq!(r.status, 502, "{}", r.text);
    assert_eq!(mock.calls_for("/v1/batches"), 1, "a POST was sent twice");
    // Idempotent methods still are retried.
    mock.set_failures(1, 500);
    let r = client()
        .get(d.url("/v1/models"))
        .bearer_auth("sk-client")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(mock.calls_for("/v1/models"), 2);
    // So are the cached APIs: a completion has no side effect.
    mock.set_failures(1, 500);
    let r = d
        .post(
            "/v1/chat/completions",
            &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(mock.calls_for("/v1/chat/completions"), 2);
}

#[tokio::test(start_paused = true)]
async fn issue12_silent_connection_is_closed_after_the_header_timeout() {
    let mock = MockUpstream::start().await;
    let (d, _tmp) = start(&mock, TIGHT, "max_retries = 0").await;
    let mut s = TcpStream::connect(addr(&d)).await.unwrap();
    let took = closed_after(&mut s).await;
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_millis(1500),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn issue12_slowloris_is_closed_after_the_header_timeout() {
    let mock = MockUpstream::start().await;
    let (d, _tmp) = start(&mock, TIGHT, "max_retries = 0").await;
    let s = TcpStream::connect(addr(&d)).await.unwrap();
    let (mut read, mut write) = s.into_split();
    let started = Instant::now();
    // One header byte every 200 ms: each arrives well within any per-read timeout.
    let drip = tokio::spawn(async move {
        let head = format!(
            "GET /healthz HTTP/1.1\r\nhost: deja\r\nx-pad: {}",
            "a".repeat(200)
        );
        for b in head.bytes() {
            if write.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(600), read.read(&mut buf))
        .await
        .expect("the slow connection was never closed")
        .unwrap_or(0);
    let took = started.elapsed();
    assert_eq!(n, 0, "no answer is sent to an unfinished head");
    assert!(took <= Duration::from_millis(1500), "{took:?}");
    drip.abort();
}

#[tokio::test(start_paused = true)]
async fn issue12_idle_keepalive_connection_is_closed_after_the_idle_timeout() {
    let mock = MockUpstream::start().await;
    let (d, _tmp) = start(&mock, TIGHT, "max_retries = 0").await;
    let mut s = TcpStream::connect(addr(&d)).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: deja\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s).await.expect("healthz");
        assert_eq!(r.status, 200);
        // Longer than the header timeout: an idle connection is bound by the idle timeout.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let took = closed_after(&mut s).await + Duration::from_millis(1500);
    assert!(
        took >= Duration::from_millis(2900) && took <= Duration::from_millis(3500),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn issue12_stalled_body_gets_408() {
    let mock = MockUpstream::start().await;
    let (d, _tmp) = start(&mock, TIGHT, "max_retries = 0").await;
    for (path, anthropic) in [
        ("/v1/chat/completions", false),
        ("/v1/messages", true),
        ("/v1/embeddings", false),
    ] {
        let mut s = TcpStream::connect(addr(&d)).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: deja\r\ncontent-type: application/json\r\n\
             content-length: 100\r\n\r\n{{\"model\":"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(600), read_response(&mut s))
            .await
            .expect("no answer to a stalled body")
            .expect("an answer");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(1900), "{path}: {took:?}");
        assert!(took <= Duration::from_millis(2500), "{path}: {took:?}");
        if anthropic {
            assert_anthropic_error(&r, 408);
        } else {
            assert_openai_error(&r, 408);
            assert_eq!(r.body["error"]["code"], "request_timeout");
        }
    }
    assert_eq!(mock.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn issue12_max_connections_cannot_starve_an_admitted_client() {
    let mock = MockUpstream::start().await;
    let server = format!("{TIGHT}max_connections = 3\nidle_timeout = \"60s\"\n")
        .replace("idle_timeout = \"3s\"\n", "");
    let (d, _tmp) = start(&mock, &server, "max_retries = 0").await;
    let healthz = b"GET /healthz HTTP/1.1\r\nhost: deja\r\n\r\n";
    // The admitted client: a keep-alive connection that has been answered once.
    let mut admitted = TcpStream::connect(addr(&d)).await.unwrap();
    admitted.write_all(healthz).await.unwrap();
    assert_eq!(read_response(&mut admitted).await.unwrap().status, 200);
    // A second admitted one, idle: with it the server is one slot from full.
    let mut idle = TcpStream::connect(addr(&d)).await.unwrap();
    idle.write_all(healthz).await.unwrap();
    assert_eq!(read_response(&mut idle).await.unwrap().status, 200);
    // Twenty silent sockets: one takes the last slot, the rest wait in the backlog.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(addr(&d)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A new client waits while every slot is taken...
    let mut waiting = TcpStream::connect(addr(&d)).await.unwrap();
    waiting.write_all(healthz).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), read_response(&mut waiting)).await;
    assert!(
        early.is_err(),
        "a connection beyond max_connections was served"
    );
    // ...while the admitted client is answered at once, again and again.
    for _ in 0..5 {
        let asked = Instant::now();
        admitted.write_all(healthz).await.unwrap();
        let r = read_response(&mut admitted).await.expect("admitted client");
        assert_eq!(r.status, 200);
        assert!(asked.elapsed() < Duration::from_millis(50));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Silent sockets leave after the header timeout, one slot at a time: the waiting client
    // is served once those ahead of it in the backlog have had their turn.
    let r = tokio::time::timeout(Duration::from_secs(30), read_response(&mut waiting))
        .await
        .expect("the waiting client was never served")
        .expect("an answer");
    assert_eq!(r.status, 200);
    drop(silent);
}

#[tokio::test(start_paused = true)]
async fn issue12_405_has_a_json_body() {
    let mock = MockUpstream::start().await;
    let (d, _tmp) = start(&mock, "", "max_retries = 0").await;
    for path in ["/v1/chat/completions", "/v1/completions", "/healthz"] {
        let method = if path == "/healthz" { "POST" } else { "GET" };
        let req = format!("{method} {path} HTTP/1.1\r\nhost: deja\r\nconnection: close\r\n\r\n");
        let r = raw(&d, req.as_bytes()).await;
        assert_openai_error(&r, 405);
        assert_eq!(r.body["error"]["code"], "method_not_allowed");
    }
    let r = raw(
        &d,
        b"GET /v1/messages HTTP/1.1\r\nhost: deja\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_anthropic_error(&r, 405);
    assert_eq!(mock.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn issue12_header_level_400s_have_json_bodies() {
    let mock = MockUpstream::start().await;
    let (d, _tmp) = start(&mock, "", "max_retries = 0").await;
    let chat = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let heads = [
        "content-length: abc\r\n".to_string(),
        "content-length: 5\r\ncontent-length: 7\r\n".to_string(),
        "bad header: x\r\n".to_string(),
        "x-ctl: a\x01b\r\n".to_string(),
        (0..120).map(|i| format!("x-h{i}: v\r\n")).collect(),
    ];
    for (i, extra) in heads.iter().enumerate() {
        for (path, anthropic) in [("/v1/chat/completions", false), ("/v1/messages", true)] {
            let req = format!("POST {path} HTTP/1.1\r\nhost: deja\r\n{extra}\r\n");
            let r = raw(&d, req.as_bytes()).await;
            let status = if i == 4 { 431 } else { 400 };
            if anthropic {
                assert_anthropic_error(&r, status);
            } else {
                assert_openai_error(&r, status);
            }
        }
    }
    // Headers deja reads itself: a bad value is a 400 naming the header, never ignored.
    let bad: [(&str, &[u8]); 4] = [
        ("x-deja-ttl", b"forever"),
        ("x-deja-ttl", b"18446744073709552s"),
        ("x-deja-threshold", b"1.5"),
        ("x-deja-namespace", b"team-\xff"),
    ];
    for (name, value) in bad {
        let mut req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: deja\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n{name}: ",
            chat.len()
        )
        .into_bytes();
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n\r\n");
        req.extend_from_slice(chat.as_bytes());
        let r = raw(&d, &req).await;
        assert_openai_error(&r, 400);
        assert_eq!(r.body["error"]["param"], name, "{}", r.text);
    }
    assert_eq!(mock.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn issue12_ttl_overflow_is_refused() {
    let mock = MockUpstream::start().await;
    let (d, _tmp) = start(&mock, "", "max_retries = 0").await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let r = d
        .post(
            "/v1/chat/completions",
            &body,
            &[("x-deja-ttl", "18446744073709552s")],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["error"]["param"], "x-deja-ttl");
    assert!(r.text.contains("maximum"), "{}", r.text);
    assert_eq!(d.entries(), 0);
    assert_eq!(mock.calls(), 0);
    let r = d
        .post("/v1/chat/completions", &body, &[("x-deja-ttl", "3650d")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Not a defect: the new accept loop keeps what `axum::serve` did on shutdown, letting a
/// request in flight finish before `run` returns.
#[tokio::test(start_paused = true)]
async fn graceful_shutdown_drains_in_flight_requests() {
    let mock = MockUpstream::builder()
        .with_latency(Duration::from_secs(2))
        .start()
        .await;
    let (d, _tmp) = start(&mock, TIGHT, "max_retries = 0").await;
    let url = d.url("/v1/chat/completions");
    let pending = tokio::spawn(async move {
        let r = client()
            .post(url)
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "slow"}]}))
            .send()
            .await
            .unwrap();
        Reply::read(r).await
    });
    while mock.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _kept = d.stop().await;
    let r = pending.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.content().contains("slow"), "{}", r.text);
}
