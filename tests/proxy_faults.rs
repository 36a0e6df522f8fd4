//! The fault suite: everything an upstream can do wrong (issue 12). Each broken upstream is a
//! mock on 127.0.0.1:0 ([`Fault`]) behind an in-process deja with small caps and timeouts, so
//! every case ends in a second or two: deja must answer within bounded time, with the right
//! status or in-stream error event, cache nothing, and keep its memory bounded (the test
//! process's RSS, read from /proc/self/status, may grow by far less than the upstream sent).

mod common;

use std::time::{Duration, Instant};

use common::harness::{hash_model, Deja, Reply};
use common::mock_upstream::{Fault, MockUpstream};
use deja::api::sse::decode_all;
use deja::providers::BreakerState;
use serde_json::{json, Value};

/// Provider caps and timeouts small enough for tests (see `config.toml` for the defaults).
const LIMITS: &str = r#"
request_timeout = "1s"
read_timeout = "500ms"
stream_timeout = "1500ms"
max_response_bytes = 262144
max_event_bytes = 16384
"#;
const MAX_ENTRY: &str = "max_entry_bytes = 65536";
/// What an endless fault sends before it stalls: far past every cap.
const ENDLESS: usize = 96 << 20;
/// RSS growth allowed while a fault runs; without the caps deja buffers all of `ENDLESS`.
const RSS_LIMIT: u64 = 40 << 20;

/// One deja with an OpenAI-kind and an Anthropic-kind provider on the same mock:
/// `claude-*` goes to Anthropic, everything else to OpenAI, so `/v1/messages` with a `gpt-*`
/// model and chat with a `claude-*` model are translated.
async fn deja_for(mock: &MockUpstream, extra: &str) -> (Deja, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"
[cache]
dir = "{dir}"
flush_interval = "50ms"
threshold = 0.95
{MAX_ENTRY}
[[providers]]
name = "openai-mock"
kind = "openai"
base_url = "{openai}"
max_retries = 0
{LIMITS}
{extra}
[[providers]]
name = "anthropic-mock"
kind = "anthropic"
base_url = "{anthropic}"
max_retries = 0
{LIMITS}
{extra}
[[routes]]
model = "claude-*"
providers = ["anthropic-mock"]
[[routes]]
model = "*"
providers = ["openai-mock"]
"#,
        dir = tmp.path().join("store").display(),
        openai = mock.base_url(),
        anthropic = mock.anthropic_base_url(),
    );
    let d = Deja::start_config(&text, tmp.path(), hash_model(), None).await;
    (d, tmp)
}

fn chat(model: &str, q: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": q}], "stream": stream})
}

fn messages(model: &str, q: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": q}],
           "stream": stream})
}

fn completion(q: &str) -> Value {
    json!({"model": "gpt-3.5-turbo-instruct", "prompt": q})
}

/// Every endpoint deja understands, native and translated: (path, body, provider, Anthropic?).
fn endpoints(q: &str, stream: bool) -> Vec<(&'static str, Value, &'static str, bool)> {
    let mut v = vec![
        (
            "/v1/chat/completions",
            chat("gpt-4o-mini", q, stream),
            "openai-mock",
            false,
        ),
        (
            "/v1/messages",
            messages("claude-3-5-haiku", q, stream),
            "anthropic-mock",
            true,
        ),
        (
            "/v1/messages",
            messages("gpt-4o-mini", q, stream),
            "openai-mock",
            true,
        ),
        (
            "/v1/chat/completions",
            chat("claude-3-5-haiku", q, stream),
            "anthropic-mock",
            false,
        ),
    ];
    if !stream {
        v.push(("/v1/completions", completion(q), "openai-mock", false));
    }
    v
}

/// One deja, one OpenAI-kind provider `mock` with `extra` keys (deja's defaults otherwise).
async fn deja_single(mock: &MockUpstream, extra: &str) -> (Deja, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[cache]\ndir = \"{}\"\n\
         [[providers]]\nname = \"mock\"\nkind = \"openai\"\nbase_url = \"{}\"\n{extra}\n\
         [[routes]]\nmodel = \"*\"\nproviders = [\"mock\"]\n",
        tmp.path().join("store").display(),
        mock.base_url()
    );
    let d = Deja::start_config(&text, tmp.path(), hash_model(), None).await;
    (d, tmp)
}

/// The process's resident set, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Memory tests take turns, so one's allocations do not count as another's growth.
static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `f` while sampling RSS every 20 ms; returns its result and the peak growth.
async fn peak_growth<T>(f: impl std::future::Future<Output = T>) -> (T, u64) {
    let base = rss();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(base));
    let p = peak.clone();
    let sampler = tokio::spawn(async move {
        loop {
            p.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let out = f.await;
    sampler.abort();
    peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
    let grown = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(base);
    (out, grown)
}

/// POSTs and reads the whole reply, failing the test past `limit`.
async fn post_within(d: &Deja, path: &str, body: &Value, limit: Duration) -> (Reply, Duration) {
    let started = Instant::now();
    let r = tokio::time::timeout(limit, d.post(path, body, &[("authorization", "Bearer k")]))
        .await
        .unwrap_or_else(|_| panic!("no complete answer from deja within {limit:?} on {path}"));
    (r, started.elapsed())
}

/// The last SSE event of a stream body: (event name, JSON payload).
fn last_event(text: &str) -> (Option<String>, Value) {
    let events = decode_all(text.as_bytes());
    let last = events
        .last()
        .unwrap_or_else(|| panic!("no events in {text:?}"));
    let payload = serde_json::from_str(&last.data).unwrap_or(Value::Null);
    (last.event.clone(), payload)
}

/// The stream ended with the provider-style error event for its dialect, naming `provider`;
/// returns the message.
fn assert_error_event(text: &str, anthropic: bool, provider: &str) -> String {
    let (name, payload) = last_event(text);
    let message = if anthropic {
        assert_eq!(name.as_deref(), Some("error"), "{text}");
        assert_eq!(payload["type"], "error", "{text}");
        assert!(payload["error"]["type"].is_string(), "{text}");
        payload["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    } else {
        assert_eq!(name, None, "{text}");
        assert!(payload["error"].is_object(), "{text}");
        assert!(payload["error"].get("param").is_some(), "{text}");
        payload["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(message.contains(provider), "{message:?} lacks {provider}");
    let ends = decode_all(text.as_bytes())
        .iter()
        .filter(|e| e.data == "[DONE]" || e.event.as_deref() == Some("message_stop"))
        .count();
    assert_eq!(ends, 0, "a broken stream must not look complete: {text}");
    assert!(
        !text.contains("127.0.0.1"),
        "no upstream URL may reach the client: {text}"
    );
    message
}

fn upstream_errors(d: &Deja, provider: &str, label: &str) -> u64 {
    d.state
        .router()
        .stats()
        .iter()
        .find(|s| s.provider == provider)
        .map_or(0, |s| s.errors(label))
}

fn not_cached(d: &Deja, reason: &str) -> u64 {
    d.state
        .metrics()
        .not_cached
        .with_label_values(&[reason])
        .get()
}

#[tokio::test]
async fn issue12_endless_sse_line_is_cut_at_the_event_cap() {
    let _turn = MEMORY.lock().await;
    let mock = MockUpstream::builder()
        .with_fault(Fault::EndlessSseLine { bytes: ENDLESS })
        .start()
        .await;
    let (d, _tmp) = deja_for(&mock, "").await;
    let ((r, took), grown) = peak_growth(post_within(
        &d,
        "/v1/chat/completions",
        &chat("gpt-4o-mini", "q", true),
        Duration::from_secs(10),
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let message = assert_error_event(&r.text, false, "openai-mock");
    assert!(message.contains("max_event_bytes"), "{message}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(grown < RSS_LIMIT, "RSS grew by {} MiB", grown >> 20);
    assert_eq!(upstream_errors(&d, "openai-mock", "too_large"), 1);
    // Translated (an Anthropic client, an OpenAI-kind upstream): the translator's parser is
    // capped too, and the error event is Anthropic's.
    let (r, _) = post_within(
        &d,
        "/v1/messages",
        &messages("gpt-4o-mini", "q", true),
        Duration::from_secs(10),
    )
    .await;
    assert_error_event(&r.text, true, "openai-mock");
    d.settle().await;
    assert_eq!(d.entries(), 0);
}

#[tokio::test]
async fn issue12_endless_json_body_is_refused_at_max_response_bytes() {
    let _turn = MEMORY.lock().await;
    let mock = MockUpstream::builder()
        .with_fault(Fault::EndlessJson { bytes: ENDLESS })
        .start()
        .await;
    let (d, _tmp) = deja_for(&mock, "").await;
    let ((r, took), grown) = peak_growth(post_within(
        &d,
        "/v1/chat/completions",
        &chat("gpt-4o-mini", "q", false),
        Duration::from_secs(10),
    ))
    .await;
    assert_eq!(r.status, 502, "{}", r.text);
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("openai-mock") && message.contains("max_response_bytes"),
        "{message}"
    );
    assert!(message.contains("262144"), "the limit is named: {message}");
    assert!(!r.text.contains("127.0.0.1"), "{}", r.text);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(grown < RSS_LIMIT, "RSS grew by {} MiB", grown >> 20);
    let (r, _) = post_within(
        &d,
        "/v1/messages",
        &messages("claude-3-5-haiku", "q", false),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.text);
    assert_eq!(r.body["type"], "error", "Anthropic-shaped: {}", r.text);
    d.settle().await;
    assert_eq!(d.entries(), 0);
}

#[tokio::test]
async fn issue12_answers_over_max_entry_bytes_are_relayed_but_not_cached() {
    let _turn = MEMORY.lock().await;
    let big = "y".repeat(99) + " ";
    let reply = big.repeat(1000); // 100 KB of text: over max_entry_bytes, under the caps.
    let r2 = reply.clone();
    let mock = MockUpstream::builder()
        .reply_with(move |_| r2.clone())
        .start()
        .await;
    let (d, _tmp) = deja_for(&mock, "").await;
    let (r, _) = post_within(
        &d,
        "/v1/chat/completions",
        &chat("gpt-4o-mini", "big", false),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.status, 200, "{}", &r.text[..r.text.len().min(300)]);
    assert_eq!(r.content(), reply, "relayed unchanged");
    let (r, _) = post_within(
        &d,
        "/v1/chat/completions",
        &chat("gpt-4o-mini", "big stream", true),
        Duration::from_secs(10),
    )
    .await;
    let text: String = decode_all(r.text.as_bytes())
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, reply, "streamed unchanged");
    assert!(r.text.contains("[DONE]"));
    d.settle().await;
    assert_eq!(d.entries(), 0, "nothing over max_entry_bytes is stored");
    assert_eq!(not_cached(&d, "too_large"), 2);
}

#[tokio::test]
async fn issue12_client_gone_stops_reading_an_answer_that_cannot_be_cached() {
    // 1,000 events of 100 bytes, 10 ms apart: 10 s to read to the end, but the text passes
    // max_entry_bytes after ~0.7 s, and from then on nobody would read or store it.
    let word = "z".repeat(99) + " ";
    let mock = MockUpstream::builder()
        .reply_with(move |_| word.repeat(1000))
        .with_chunk_delay(Duration::from_millis(10))
        .start()
        .await;
    let (d, _tmp) = deja_for(&mock, "").await;
    let mut resp = d
        .send(
            "/v1/chat/completions",
            &chat("gpt-4o-mini", "long", true),
            &[],
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.chunk().await.unwrap().is_some());
    drop(resp);
    let started = Instant::now();
    while mock.open_bodies() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "deja kept reading an abandoned, uncacheable stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.settle().await;
    assert_eq!(d.entries(), 0);
}

#[tokio::test]
async fn issue12_drip_stream_is_cut_at_stream_timeout() {
    // One byte every 20 ms: never silent for read_timeout (500 ms), done only after ~20 s.
    let mock = MockUpstream::builder()
        .with_fault(Fault::Drip)
        .with_chunk_delay(Duration::from_millis(20))
        .start()
        .await;
    let (d, _tmp) = deja_for(&mock, "").await;
    let (r, took) = post_within(
        &d,
        "/v1/chat/completions",
        &chat("gpt-4o-mini", "q", true),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.status, 200);
    let message = assert_error_event(&r.text, false, "openai-mock");
    assert!(message.contains("timeout"), "{message}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // A dripped JSON body is bounded by request_timeout.
    let (r, took) = post_within(
        &d,
        "/v1/chat/completions",
        &chat("gpt-4o-mini", "q2", false),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.text);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    d.settle().await;
    assert_eq!(d.entries(), 0);
}

#[tokio::test]
async fn hang_before_headers_is_a_timely_504() {
    let mock = MockUpstream::builder()
        .with_fault(Fault::HangBeforeHeaders)
        .start()
        .await;
    let (d, _tmp) = deja_for(&mock, "").await;
    for (path, body, _, anthropic) in endpoints("q", true) {
        let (r, took) = post_within(&d, path, &body, Duration::from_secs(10)).await;
        assert_eq!(r.status, 504, "{path}: {}", r.text);
        let shaped = if anthropic {
            r.body["type"] == "error"
        } else {
            r.body["error"]["code"] == "timeout"
        };
        assert!(shaped, "{path}: {}", r.text);
        assert!(took < Duration::from_secs(5), "{path} took {took:?}");
    }
}

#[tokio::test]
async fn issue12_cut_stream_ends_with_an_error_event() {
    let mock = MockUpstream::builder().cut_stream_after(2).start().await;
    let (d, _tmp) = deja_for(&mock, "").await;
    for (path, body, provider, anthropic) in endpoints("cut", true) {
        let (r, _) = post_within(&d, path, &body, Duration::from_secs(10)).await;
        assert_eq!(r.status, 200, "{path}");
        assert_error_event(&r.text, anthropic, provider);
    }
    d.settle().await;
    assert_eq!(d.entries(), 0);
}

#[tokio::test]
async fn issue12_stream_without_terminator_ends_with_an_error_event() {
    let mock = MockUpstream::builder()
        .with_fault(Fault::NoTerminator)
        .start()
        .await;
    let (d, _tmp) = deja_for(&mock, "").await;
    for (path, body, provider, anthropic) in endpoints("no end", true) {
        let (r, _) = post_within(&d, path, &body, Duration::from_secs(10)).await;
        assert_eq!(r.status, 200, "{path}");
        assert_error_event(&r.text, anthropic, provider);
    }
    d.settle().await;
    assert_eq!(d.entries(), 0);
}

#[tokio::test]
async fn issue12_broken_or_wrong_shape_json_is_a_502() {
    for fault in [Fault::BrokenJson, Fault::WrongShapeJson] {
        let mock = MockUpstream::builder().with_fault(fault).start().await;
        let (d, _tmp) = deja_for(&mock, "").await;
        for (path, body, provider, anthropic) in endpoints("q", false) {
            let (r, _) = post_within(&d, path, &body, Duration::from_secs(10)).await;
            let what = format!("{fault:?} on {path} via {provider}: {}", r.text);
            assert_eq!(r.status, 502, "{what}");
            let message = if anthropic {
                assert_eq!(r.body["type"], "error", "{what}");
                r.body["error"]["message"].as_str().unwrap_or_default()
            } else {
                assert!(r.body["error"]["type"].is_string(), "{what}");
                r.body["error"]["message"].as_str().unwrap_or_default()
            };
            assert!(message.contains(provider), "{what}");
            assert!(message.contains("malformed answer"), "{what}");
        }
        d.settle().await;
        assert_eq!(d.entries(), 0);
        assert!(upstream_errors(&d, "openai-mock", "bad_response") >= 3);
    }
}

#[tokio::test]
async fn issue12_breaker_counts_requests_not_retries() {
    // The openai SDK's default: one call is 3 requests; deja's default: 3 attempts each.
    let mock = MockUpstream::builder().always_fail(500).start().await;
    let fast =
        "max_retries = 2\nbackoff_base = \"1ms\"\nbackoff_max = \"2ms\"\nbreaker_failures = 5";
    let (d, _tmp) = deja_single(&mock, fast).await;
    for i in 0..3 {
        let r = d
            .post(
                "/v1/chat/completions",
                &chat("gpt-4o-mini", "q", false),
                &[],
            )
            .await;
        assert_eq!(r.status, 502, "request {i}: {}", r.text);
    }
    assert_eq!(mock.calls(), 9);
    assert_eq!(
        d.state.router().breaker_state("mock"),
        Some(BreakerState::Closed),
        "3 failed requests must not open a breaker set to 5"
    );
    let r = d
        .post(
            "/v1/chat/completions",
            &chat("gpt-4o-mini", "q", false),
            &[],
        )
        .await;
    assert_eq!(r.status, 502, "{}", r.text);
    assert_eq!(
        mock.calls(),
        12,
        "the 4th request still reached the upstream"
    );
}

#[tokio::test]
async fn issue12_open_breaker_names_the_provider_and_recovers() {
    let mock = MockUpstream::builder().always_fail(500).start().await;
    let cfg = "breaker_failures = 2\nbreaker_cooldown = \"1s\"";
    let d = Deja::start_with(&mock.base_url(), hash_model(), "", cfg).await;
    let q = chat("gpt-4o-mini", "q", false);
    let ask = || d.post("/v1/chat/completions", &q, &[]);
    assert_eq!(ask().await.status, 502);
    assert_eq!(ask().await.status, 502);
    let r = ask().await;
    assert_eq!(r.status, 503, "{}", r.text);
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`mock`") && message.contains("circuit breaker"),
        "{message}"
    );
    assert_eq!(r.body["error"]["code"], "circuit_open");
    let retry_after: u64 = r.header("retry-after").parse().expect("a Retry-After");
    assert!((1..=1).contains(&retry_after), "{retry_after}");
    assert_eq!(mock.calls(), 2, "an open breaker sends nothing");
    // The upstream recovers; after the cooldown one probe goes through and closes it.
    mock.set_failures(0, 500);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        d.state.router().breaker_state("mock"),
        Some(BreakerState::HalfOpen)
    );
    let r = ask().await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        d.state.router().breaker_state("mock"),
        Some(BreakerState::Closed)
    );
    let r = d
        .post(
            "/v1/chat/completions",
            &chat("gpt-4o-mini", "other", false),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "traffic flows again: {}", r.text);
}

#[test]
fn issue12_breaker_recovers_through_the_openai_sdk() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Two failures open the breaker (deja does not retry, the SDK is told not to either);
    // then the upstream is healthy again.
    let mock = rt.block_on(MockUpstream::builder().fail_n_times(2, 500).start());
    let cfg = "breaker_failures = 2\nbreaker_cooldown = \"1s\"";
    let d = rt.block_on(Deja::start_with(&mock.base_url(), hash_model(), "", cfg));
    let python = common::binary::python_with_sdks();
    let script = format!("{}/tests/e2e/openai_breaker.py", env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new(python)
        .arg(&script)
        .arg(&d.base)
        .env("PYTHONUNBUFFERED", "1")
        .status()
        .expect("run python");
    assert!(
        status.success(),
        "openai_breaker.py failed (see output above)"
    );
    // 2 failures, no call while open, the SDK's retry after Retry-After (the probe), one more.
    assert_eq!(mock.calls(), 4);
    rt.block_on(d.stop());
}

#[tokio::test]
async fn caps_leave_normal_exchanges_alone() {
    // Control: the caps do not bite a normal exchange through every endpoint.
    let mock = MockUpstream::start().await;
    let (d, _tmp) = deja_for(&mock, "").await;
    for (path, body, _, _) in endpoints("fine", true)
        .into_iter()
        .chain(endpoints("fine", false))
    {
        let (r, _) = post_within(&d, path, &body, Duration::from_secs(10)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert!(!r.text.contains("\"error\""), "{path}: {}", r.text);
    }
}

/// Measurement driver, not a test (docs/benchmarks.md, "Issue 12: bounded upstreams"): starts
/// the real `deja serve` (`DEJA_BIN`, default this build's binary) against an endless-line or
/// endless-JSON mock sending ~16 MB/s, and prints the deja process's VmRSS every second for
/// `DEJA_RSS_SECS` (default 25). Rerun with
/// `DEJA_BIN=path/to/deja cargo test --release --test proxy_faults rss_driver -- --ignored --nocapture`.
#[test]
#[ignore = "measurement driver; see its doc comment"]
fn rss_driver() {
    use std::io::{BufRead, BufReader};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bin = std::env::var("DEJA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_deja").into());
    let secs: u64 = std::env::var("DEJA_RSS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    let vm_rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    for (name, fault, stream) in [
        (
            "endless SSE line",
            Fault::EndlessSseLine { bytes: usize::MAX },
            true,
        ),
        (
            "endless JSON body",
            Fault::EndlessJson { bytes: usize::MAX },
            false,
        ),
    ] {
        let mock = rt.block_on(
            MockUpstream::builder()
                .with_fault(fault)
                .with_chunk_delay(Duration::from_millis(1))
                .start(),
        );
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("config.toml");
        // Only keys the pre-fix binary knows, with its defaults otherwise.
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[cache]\ndir = \"{}\"\n\
             [[providers]]\nname = \"mock\"\nkind = \"openai\"\nbase_url = \"{}\"\n\
             max_retries = 0\n[[routes]]\nmodel = \"*\"\nproviders = [\"mock\"]\n",
            tmp.path().join("store").display(),
            mock.base_url()
        );
        std::fs::write(&config, text).unwrap();
        let mut child = std::process::Command::new(&bin)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start deja");
        let pid = child.id();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            let line = lines.next().expect("deja exited").unwrap();
            if let Some(url) = line.strip_prefix("deja listening on ") {
                break url.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let started = Instant::now();
        while reqwest::blocking::get(format!("{base}/readyz"))
            .map_or(true, |r| !r.status().is_success())
        {
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "deja not ready"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let before = vm_rss(pid);
        let url = format!("{base}/v1/chat/completions");
        let body = chat("gpt-4o-mini", "measure", stream);
        let request = rt.spawn(async move {
            let started = Instant::now();
            let r = reqwest::Client::new().post(url).json(&body).send().await;
            let outcome = match r {
                Ok(r) => {
                    let status = r.status();
                    let len = r.bytes().await.map(|b| b.len()).unwrap_or(0);
                    format!("HTTP {status}, {len} body bytes")
                }
                Err(e) => format!("error {e}"),
            };
            (outcome, started.elapsed())
        });
        let mut peak = before;
        print!("{name}: VmRSS MB by second:");
        for _ in 0..secs {
            std::thread::sleep(Duration::from_secs(1));
            let now = vm_rss(pid);
            peak = peak.max(now);
            print!(" {now}");
        }
        println!();
        let after = vm_rss(pid);
        let answer = if request.is_finished() {
            let (outcome, took) = rt.block_on(request).unwrap();
            format!("{outcome} after {:.1} s", took.as_secs_f64())
        } else {
            request.abort();
            format!("no answer within {secs} s")
        };
        println!(
            "{name}: before {before} MB, peak {peak} MB, after {after} MB; client got {answer}"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}
