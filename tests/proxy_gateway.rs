//! Gateway controls through HTTP (issue 16): personal data in prompts and answers (`[pii]`)
//! never enters or leaves the cache, is redacted and restored, or is refused.

mod common;

use common::harness::{client, hash_model, Deja, Reply};
use common::mock_upstream::MockUpstream;
use serde_json::{json, Value};

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

async fn ask(d: &Deja, key: &str, body: &Value) -> Reply {
    let auth = format!("Bearer {key}");
    d.post("/v1/chat/completions", body, &[("authorization", &auth)])
        .await
}

async fn metrics_text(d: &Deja) -> String {
    client()
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The bytes of every file under `dir` (the store), to prove a value was never written.
fn store_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in walk(dir) {
        out.extend(std::fs::read(e).unwrap_or_default());
    }
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// `skip-cache` (the default): a prompt or an answer with personal data is served from
/// upstream every time and nothing is stored; clean traffic is cached as before.
#[tokio::test]
async fn issue16_pii_skip_cache_really_skips() {
    let mock = MockUpstream::start().await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let pii = chat(
        "gpt-4o-mini",
        "My card is 4111 1111 1111 1111, is it valid?",
    );
    for _ in 0..2 {
        let r = ask(&d, "k", &pii).await;
        assert_eq!((r.status, r.header("x-deja-cache")), (200, "bypass"));
    }
    assert_eq!(mock.calls(), 2, "the second ask is not served from cache");
    // A clean prompt whose answer has personal data: relayed, never stored.
    mock.set_reply(|_| "Write to help@example.com".to_string());
    let r = ask(&d, "k", &chat("gpt-4o-mini", "Who do I write to?")).await;
    assert_eq!(r.header("x-deja-cache"), "miss");
    assert_eq!(r.content(), "Write to help@example.com");
    d.settle().await;
    assert_eq!(d.entries(), 0, "nothing with personal data is stored");
    let r = ask(&d, "k", &chat("gpt-4o-mini", "Who do I write to?")).await;
    assert_eq!(r.header("x-deja-cache"), "miss");
    assert_eq!(mock.calls(), 4);
    // Clean prompt, clean answer: cached as ever ("What is 15% of 80?" is not a phone).
    mock.set_reply(|_| "12".to_string());
    ask(&d, "k", &chat("gpt-4o-mini", "What is 15% of 80?")).await;
    d.wait_entries(1).await;
    let r = ask(&d, "k", &chat("gpt-4o-mini", "What is 15% of 80?")).await;
    assert_eq!(r.header("x-deja-cache"), "exact-hit");
    assert_eq!(mock.calls(), 5);
    let m = metrics_text(&d).await;
    assert!(
        m.contains(r#"deja_pii_detections_total{kind="card",source="prompt"} 2"#),
        "{m}"
    );
    assert!(m.contains(r#"deja_pii_detections_total{kind="email",source="answer"} 2"#));
    assert!(m.contains(r#"deja_pii_actions_total{action="skipped"} 2"#));
    assert!(m.contains(r#"deja_not_cached_total{reason="pii"} 2"#));
    assert!(!m.contains("4111") && !m.contains("help@example.com"));
    let dir = d.stop().await.unwrap();
    let bytes = store_bytes(dir.path());
    assert!(!contains(&bytes, "4111 1111") && !contains(&bytes, "help@example.com"));
}

/// `block`: a 400 naming the kinds (never the values) in each API's error shape, and no
/// upstream call. A route override turns detection off for its models.
#[tokio::test]
async fn issue16_pii_block_refuses_and_routes_override() {
    let mock = MockUpstream::start().await;
    let extra = "[pii]\nmode = \"block\"\n[[pii.routes]]\nmodel = \"internal-*\"\nmode = \"off\"\n";
    let d = Deja::start_with(&mock.base_url(), hash_model(), "", extra).await;
    let text = "SSN 123-45-6789, mail jane@example.com";
    let r = ask(&d, "k", &chat("gpt-4o-mini", text)).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "pii_detected");
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("email, ssn"), "{msg}");
    assert!(!msg.contains("6789") && !msg.contains("jane"), "{msg}");
    let a = d
        .post(
            "/v1/messages",
            &json!({"model": "claude-x", "max_tokens": 16,
                    "system": "The user's IP is 192.168.10.20",
                    "messages": [{"role": "user", "content": "hello"}]}),
            &[("x-api-key", "k"), ("anthropic-version", "2023-06-01")],
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["type"], "error");
    assert_eq!(a.body["error"]["type"], "invalid_request_error");
    assert!(a.body["error"]["message"].as_str().unwrap().contains("ip"));
    assert_eq!(mock.calls(), 0, "a blocked request never goes upstream");
    // The override: this model's requests are not screened, and are cached.
    let r = ask(&d, "k", &chat("internal-llm", text)).await;
    assert_eq!((r.status, r.header("x-deja-cache")), (200, "miss"));
    d.wait_entries(1).await;
    let r = ask(&d, "k", &chat("internal-llm", text)).await;
    assert_eq!(r.header("x-deja-cache"), "exact-hit");
    assert_eq!(mock.calls(), 1);
}

/// Tool calls under `[pii] mode = "redact"` on a `cache_tool_calls` route: the stored call keeps
/// the placeholder and each client gets its own value back inside the JSON arguments (on the
/// miss and on a hit), while a call whose arguments carry personal data of the answer's own is
/// never stored.
#[tokio::test]
async fn tool_call_arguments_are_redacted_restored_and_screened() {
    let mock = MockUpstream::builder()
        .with_tool_call_from(|body| {
            let last = body["messages"].as_array().unwrap().last().unwrap().clone();
            let prompt = last["content"].as_str().unwrap_or_default().to_string();
            let to = if prompt.contains("support") {
                "help@example.com".to_string()
            } else {
                prompt
            };
            ("send_mail".into(), json!({"to": to}).to_string())
        })
        .start()
        .await;
    let extra = "[pii]\nmode = \"redact\"\n[[routes]]\nmodel = \"agent\"\nproviders = [\"mock\"]\ncache_tool_calls = true\n";
    let d = Deja::start_with(&mock.base_url(), hash_model(), "tenant = \"shared\"", extra).await;
    let tools = json!([{"type": "function", "function": {"name": "send_mail"}}]);
    let body = |text: &str| {
        let mut b = chat("agent", text);
        b["tools"] = tools.clone();
        b
    };
    let to_of = |r: &Reply| {
        let args = r.body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        serde_json::from_str::<Value>(&args).unwrap()["to"].clone()
    };
    let r = ask(&d, "a", &body("Mail ann@example.com")).await;
    assert_eq!(
        (r.status, r.header("x-deja-cache")),
        (200, "miss"),
        "{}",
        r.text
    );
    assert_eq!(to_of(&r), "Mail ann@example.com");
    assert_eq!(
        mock.last_request().unwrap().body["messages"][0]["content"],
        "Mail [EMAIL_1]"
    );
    d.wait_entries(1).await;
    let r = ask(&d, "b", &body("Mail ben@example.net")).await;
    assert_eq!(r.header("x-deja-cache"), "exact-hit");
    assert_eq!(to_of(&r), "Mail ben@example.net");
    assert_eq!(mock.calls(), 1);
    // The answer's own address in the arguments: relayed, never stored.
    let r = ask(&d, "c", &body("Mail support please")).await;
    assert_eq!(to_of(&r), "help@example.com");
    d.settle().await;
    assert_eq!(d.entries(), 1);
    let m = metrics_text(&d).await;
    assert!(
        m.contains(r#"deja_not_cached_total{reason="pii"} 1"#),
        "{m}"
    );
}

/// `redact`: the upstream and the cache see placeholders; each client gets its own values
/// back, and two users asking about their own address share one cached answer.
#[tokio::test]
async fn issue16_pii_redact_round_trips() {
    let mock = MockUpstream::builder()
        .reply_with(|body| {
            let last = body["messages"].as_array().unwrap().last().unwrap().clone();
            format!("Sent to {}", last["content"].as_str().unwrap_or_default())
        })
        .start()
        .await;
    let d = Deja::start_with(
        &mock.base_url(),
        hash_model(),
        "tenant = \"shared\"",
        "[pii]\nmode = \"redact\"\n",
    )
    .await;
    let r = ask(
        &d,
        "a",
        &chat("gpt-4o-mini", "Send a hello to ann@example.com"),
    )
    .await;
    assert_eq!((r.status, r.header("x-deja-cache")), (200, "miss"));
    assert_eq!(r.content(), "Sent to Send a hello to ann@example.com");
    let seen = mock.last_request().unwrap().body;
    assert_eq!(seen["messages"][0]["content"], "Send a hello to [EMAIL_1]");
    d.wait_entries(1).await;
    let r = ask(
        &d,
        "b",
        &chat("gpt-4o-mini", "Send a hello to ben@example.net"),
    )
    .await;
    assert_eq!(r.header("x-deja-cache"), "exact-hit");
    assert_eq!(r.content(), "Sent to Send a hello to ben@example.net");
    // A streamed hit is restored too.
    let mut s = chat("gpt-4o-mini", "Send a hello to cy@example.org");
    s["stream"] = json!(true);
    let resp = d
        .send("/v1/chat/completions", &s, &[("authorization", "Bearer c")])
        .await;
    assert_eq!(resp.headers()["x-deja-cache"], "exact-hit");
    let text = resp.text().await.unwrap();
    assert!(text.contains("cy@example.org"), "{text}");
    assert!(!text.contains("[EMAIL_1]"), "{text}");
    assert_eq!(mock.calls(), 1);
    // A streamed miss: the relayed deltas carry the value, the stored answer the placeholder.
    let mut s = chat("gpt-4o-mini", "Send a note to dee@example.com");
    s["stream"] = json!(true);
    let resp = d
        .send("/v1/chat/completions", &s, &[("authorization", "Bearer d")])
        .await;
    assert_eq!(resp.headers()["x-deja-cache"], "miss");
    let text = resp.text().await.unwrap();
    assert!(text.contains("dee@example.com"), "{text}");
    assert!(
        !text.contains("[EMAIL_1]") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    d.wait_entries(2).await;
    assert_eq!(mock.calls(), 2);
    let m = metrics_text(&d).await;
    assert!(
        m.contains(r#"deja_pii_actions_total{action="redacted"} 4"#),
        "{m}"
    );
    let dir = d.stop().await.unwrap();
    let bytes = store_bytes(dir.path());
    assert!(contains(&bytes, "[EMAIL_1]"));
    for v in [
        "ann@example.com",
        "ben@example.net",
        "cy@example.org",
        "dee@example.com",
    ] {
        assert!(!contains(&bytes, v), "{v} reached the store");
    }
}

/// A config whose `[server]` has `auth = "keys"` and the given `[[keys]]` blocks.
fn keys_config(dir: &std::path::Path, upstream: &str, keys: &str) -> String {
    common::harness::config_text(&dir.join("store"), upstream, "", keys).replacen(
        "[server]\n",
        "[server]\nauth = \"keys\"\n",
        1,
    )
}

fn key_block(name: &str, key: &str, extra: &str) -> String {
    format!(
        "[[keys]]\nname = \"{name}\"\nhash = \"{}\"\n{extra}\n",
        deja::config::KeyHash::of(key)
    )
}

/// `server.auth = "keys"`: 401 without a listed key, 403 for a model the key may not use, 429
/// with `Retry-After` past its rpm, in each API's shape; the deja key never goes upstream and
/// never shows in metrics; two keys in one namespace share answers.
#[tokio::test]
async fn issue16_keys_401_403_429_and_shared_namespace() {
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (ka, kb) = ("dk-alpha-secret-0001", "dk-beta-secret-0002");
    let keys = format!(
        "{}{}",
        key_block(
            "alpha",
            ka,
            "namespace = \"support\"\nmodels = [\"gpt-*\"]\nrpm = 3"
        ),
        key_block("beta", kb, "namespace = \"support\"")
    );
    let text = keys_config(tmp.path(), &mock.base_url(), &keys);
    let d = Deja::start_config(&text, tmp.path(), hash_model(), None).await;
    let q = chat("gpt-4o-mini", "How do I reset my password?");
    let r = d.post("/v1/chat/completions", &q, &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], "invalid_api_key");
    let r = ask(&d, "sk-not-listed", &q).await;
    assert_eq!(r.status, 401);
    let a = d
        .post(
            "/v1/messages",
            &json!({"model": "claude-x", "max_tokens": 8,
                    "messages": [{"role": "user", "content": "hi"}]}),
            &[
                ("x-api-key", "sk-not-listed"),
                ("anthropic-version", "2023-06-01"),
            ],
        )
        .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.body["error"]["type"], "authentication_error");
    let r = ask(&d, ka, &chat("claude-x", "hi")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"]["code"], "model_not_allowed");
    let models = client()
        .get(d.url("/v1/models"))
        .bearer_auth("sk-not-listed")
        .send()
        .await
        .unwrap();
    assert_eq!(
        models.status(),
        401,
        "pass-through paths need a deja key too"
    );
    assert_eq!(mock.calls(), 0, "refused requests never go upstream");

    let r = ask(&d, ka, &q).await;
    assert_eq!((r.status, r.header("x-deja-cache")), (200, "miss"));
    assert_eq!(r.header("x-ratelimit-limit-requests"), "3");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), "2");
    assert_eq!(r.header("x-ratelimit-reset-requests"), "20s");
    assert_eq!(
        mock.last_request().unwrap().authorization(),
        None,
        "the deja key stays inside deja"
    );
    d.wait_entries(1).await;
    // Another key in the same namespace shares the answer.
    let r = ask(&d, kb, &q).await;
    assert_eq!(r.header("x-deja-cache"), "exact-hit");
    assert_eq!(
        r.header("x-ratelimit-limit-requests"),
        "",
        "beta has no rpm"
    );
    ask(&d, ka, &q).await;
    ask(&d, ka, &q).await;
    let r = ask(&d, ka, &q).await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert_eq!(r.body["error"]["type"], "rate_limit_error");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("rpm"));
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert_eq!(mock.calls(), 1);
    let m = metrics_text(&d).await;
    assert!(
        m.contains(r#"deja_key_requests_total{key="alpha",result="allowed"} 3"#),
        "{m}"
    );
    assert!(m.contains(r#"deja_key_requests_total{key="alpha",result="rate_limited"} 1"#));
    assert!(m.contains(r#"deja_key_requests_total{key="alpha",result="forbidden"} 1"#));
    assert!(m.contains(r#"deja_key_requests_total{key="unknown",result="unauthorized"} 4"#));
    let dir = tmp.path().to_path_buf();
    d.stop().await;
    let mut hay = store_bytes(&dir);
    hay.extend_from_slice(m.as_bytes());
    for k in [ka, kb] {
        assert!(!contains(&hay, k), "key material in the store or metrics");
    }
}
