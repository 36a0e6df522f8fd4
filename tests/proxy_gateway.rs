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

/// A keys config whose model is priced so that a request's cost is its completion tokens
/// only ($0.01 per token; prompts are free), so an estimate from `max_tokens` is exact.
fn budget_config(dir: &std::path::Path, upstream: &str, keys: &str) -> String {
    let text = keys_config(dir, upstream, keys);
    format!(
        "{text}\n[[prices]]\nmodel = \"gpt-4o-mini*\"\ninput_per_mtok = 0.0\n\
         output_per_mtok = 10000.0\n"
    )
}

/// A prompt whose words no other prompt shares (no semantic hits between them).
fn unique_prompt(i: usize) -> String {
    format!("zq{i}alpha zq{i}beta zq{i}gamma")
}

/// The value of the series `name{labels}` in a metrics exposition.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in {text}"))
}

fn priced(text: &str, max_tokens: u64) -> Value {
    let mut b = chat("gpt-4o-mini", text);
    b["max_tokens"] = json!(max_tokens);
    b
}

/// `budget_daily_usd`: 50 requests race a $1.00 budget at $0.07 each and exactly 14 reach the
/// upstream (reserve before, settle after); the rest get a 429 naming the budget in each API's
/// shape. After a restart the same amount is left, and a cached answer still costs nothing.
#[tokio::test]
async fn issue16_budget_exact_under_concurrency_and_survives_restart() {
    let mock = MockUpstream::builder()
        .reply_with(|_| "one two three four five six seven".to_string())
        .start()
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let key = "dk-budget-secret-0003";
    let text = budget_config(
        tmp.path(),
        &mock.base_url(),
        &key_block(
            "spender",
            key,
            "budget_daily_usd = 1.0\nbudget_monthly_usd = 30.0",
        ),
    );
    let d = Deja::start_config(&text, tmp.path(), hash_model(), None).await;
    let replies = futures::future::join_all((0..50).map(|i| {
        let body = priced(&unique_prompt(i), 7);
        let d = &d;
        async move { ask(d, key, &body).await }
    }))
    .await;
    let ok: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
    let refused: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        (ok.len(), refused.len()),
        (14, 36),
        "floor(1.00 / 0.07) go through"
    );
    assert_eq!(
        mock.calls(),
        14,
        "exactly the affordable requests reach the upstream"
    );
    let e = &refused[0].body["error"];
    assert_eq!(e["type"], "rate_limit_error");
    assert_eq!(e["code"], "insufficient_quota");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("daily budget of $1.000000 (budget_daily_usd)"),
        "{msg}"
    );
    let retry: u64 = refused[0].header("retry-after").parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    let monthly: f64 = ok[0]
        .header("x-deja-budget-remaining-monthly-usd")
        .parse()
        .unwrap();
    assert!((29.02 - 1e-9..30.0).contains(&monthly), "{monthly}");
    d.settle().await;
    d.wait_entries(14).await;
    let a = d
        .post(
            "/v1/messages",
            &json!({"model": "gpt-4o-mini", "max_tokens": 7,
                    "messages": [{"role": "user", "content": "zqxa zqxb"}]}),
            &[("x-api-key", key), ("anthropic-version", "2023-06-01")],
        )
        .await;
    assert_eq!(a.status, 429, "{:?}", a.body);
    assert_eq!(
        (a.body["type"].as_str(), a.body["error"]["type"].as_str()),
        (Some("error"), Some("rate_limit_error"))
    );
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("budget_daily_usd"));
    let m = metrics_text(&d).await;
    assert!(
        m.contains(r#"deja_key_requests_total{key="spender",result="over_budget"} 37"#),
        "{m}"
    );
    let spent = metric(&m, r#"deja_key_cost_usd_total{key="spender",kind="spent"}"#);
    assert!((spent - 0.98).abs() < 1e-9, "{spent}");
    d.stop().await;
    assert_eq!(mock.calls(), 14);

    // Restarted: $0.02 is left, so a $0.07 request is refused and a $0.01 one goes.
    let d = Deja::start_config(&text, tmp.path(), hash_model(), None).await;
    let r = ask(&d, key, &priced("zqy1 zqy2 zqy3", 7)).await;
    assert_eq!(
        r.status,
        429,
        "the spend survived the restart (remaining daily {:?}): {:?}",
        r.headers.get("x-deja-budget-remaining-daily-usd"),
        r.body
    );
    let r = ask(&d, key, &priced("zqz1 zqz2 zqz3", 1)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-deja-budget-remaining-daily-usd"), "0.010000");
    // A cached answer is served at no cost even with the budget nearly spent.
    let served: &Reply = ok[0];
    let text0 = served.body["choices"][0]["message"]["content"].clone();
    let hit_prompt = replies
        .iter()
        .position(|r| r.status == 200)
        .map(unique_prompt)
        .unwrap();
    let r = ask(&d, key, &priced(&hit_prompt, 7)).await;
    assert_eq!((r.status, r.header("x-deja-cache")), (200, "exact-hit"));
    assert_eq!(r.body["choices"][0]["message"]["content"], text0);
    d.settle().await;
    assert_eq!(r.header("x-deja-budget-remaining-daily-usd"), "0.010000");
    let m = metrics_text(&d).await;
    let saved = metric(&m, r#"deja_key_cost_usd_total{key="spender",kind="saved"}"#);
    assert!((saved - 0.07).abs() < 1e-9, "{saved}");
    assert_eq!(mock.calls(), 15);
    d.stop().await;
}

/// `tpm`: the first request reserves its prompt and `max_tokens`; the second does not fit
/// what is left and gets a 429 naming tpm, with the x-ratelimit-*-tokens headers before it.
#[tokio::test]
async fn issue16_tokens_per_minute() {
    let mock = MockUpstream::builder()
        .reply_with(|_| vec!["word"; 80].join(" "))
        .start()
        .await;
    let tmp = tempfile::tempdir().unwrap();
    let key = "dk-tpm-secret-0004";
    let text = keys_config(
        tmp.path(),
        &mock.base_url(),
        &key_block("tok", key, "tpm = 100"),
    );
    let d = Deja::start_config(&text, tmp.path(), hash_model(), None).await;
    let r = ask(&d, key, &priced(&unique_prompt(1), 60)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-ratelimit-limit-tokens"), "100");
    let left: u64 = r.header("x-ratelimit-remaining-tokens").parse().unwrap();
    assert!(
        left <= 40,
        "the prompt and 60 completion tokens are reserved: {left}"
    );
    assert!(!r.header("x-ratelimit-reset-tokens").is_empty());
    d.settle().await;
    let r = ask(&d, key, &priced(&unique_prompt(2), 60)).await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "rate_limit_exceeded");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tokens per minute (tpm)"));
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(mock.calls(), 1);
    let m = metrics_text(&d).await;
    assert!(
        m.contains(r#"deja_key_requests_total{key="tok",result="over_tpm"} 1"#),
        "{m}"
    );
    d.stop().await;
}

const TEMPLATE: &str = r#"
[[templates]]
name = "support"
model = "gpt-4o-mini"
messages = [
  { role = "system", content = "You are the support agent of {{product}}. Answer in one sentence." },
  { role = "user", content = "{{question}}" },
]
params = { max_tokens = 50 }
"#;

fn template_call(product: &str, question: &str) -> Value {
    json!({"model": "template:support", "messages": [],
           "deja_variables": {"product": product, "question": question}})
}

/// `[[templates]]`: `GET /v1/templates` lists them; a call renders the template's messages,
/// model and defaults (the upstream never sees `deja_variables`); two paraphrased questions
/// share an answer (real model), another product is another scope; missing and unknown
/// variables are a 400 naming them; a reload changes the template.
#[tokio::test]
async fn issue16_templates_render_share_answers_and_reload() {
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let text = common::harness::config_text(&tmp.path().join("store"), &mock.base_url(), "", "");
    let file = tmp.path().join("config.toml");
    let d = Deja::start_config(
        &format!("{text}{TEMPLATE}"),
        tmp.path(),
        common::harness::real_model(),
        Some(file.clone()),
    )
    .await;
    let list: Value = client()
        .get(d.url("/v1/templates"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["id"], "template:support");
    assert_eq!(list["data"][0]["variables"], json!(["product", "question"]));

    let r = ask(
        &d,
        "k",
        &template_call("Deja", "How do I reset my password?"),
    )
    .await;
    assert_eq!(
        (r.status, r.header("x-deja-cache")),
        (200, "miss"),
        "{:?}",
        r.body
    );
    let seen = mock.last_request().unwrap().body;
    assert_eq!(seen["model"], "gpt-4o-mini");
    assert_eq!(seen["max_tokens"], 50);
    assert!(seen.get("deja_variables").is_none());
    assert_eq!(
        seen["messages"],
        json!([{"role": "system", "content": "You are the support agent of Deja. Answer in one sentence."},
               {"role": "user", "content": "How do I reset my password?"}])
    );
    d.wait_entries(1).await;
    let r = ask(
        &d,
        "k",
        &template_call("Deja", "How can I reset my password?"),
    )
    .await;
    assert_ne!(
        r.header("x-deja-cache"),
        "miss",
        "paraphrases share the answer: {:?}",
        r.headers
    );
    assert_eq!(mock.calls(), 1);
    let r = ask(
        &d,
        "k",
        &template_call("Acme", "How do I reset my password?"),
    )
    .await;
    assert_eq!(
        r.header("x-deja-cache"),
        "miss",
        "the template's text is part of the scope"
    );

    let r = ask(
        &d,
        "k",
        &json!({"model": "template:support",
                                  "deja_variables": {"question": "q", "colour": "red"}}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["param"], "deja_variables");
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("missing variables: product") && msg.contains("unknown variables: colour"),
        "{msg}"
    );
    assert_eq!(mock.calls(), 2, "a bad call never goes upstream");

    // Hot reload: the template now takes a `tone` too.
    let changed = TEMPLATE.replace("Answer in one sentence.", "Answer in a {{tone}} tone.");
    std::fs::write(&file, format!("{text}{changed}")).unwrap();
    deja::server::reload::reload(&d.state).unwrap();
    let r = ask(
        &d,
        "k",
        &template_call("Deja", "How do I reset my password?"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("missing variables: tone"));
    let mut call = template_call("Deja", "How do I reset my password?");
    call["deja_variables"]["tone"] = json!("friendly");
    let r = ask(&d, "k", &call).await;
    assert_eq!((r.status, r.header("x-deja-cache")), (200, "miss"));
    assert_eq!(
        mock.last_request().unwrap().body["messages"][0]["content"],
        "You are the support agent of Deja. Answer in a friendly tone."
    );
    d.stop().await;
}

fn audit_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `[audit]`: one JSON line per request (miss, hit, bypass, error) with who, what, outcome,
/// tokens, cost and phases; no prompts or answers unless asked, never key material or personal
/// data; with `include_content` the content is there, redacted.
#[tokio::test]
async fn issue16_audit_log_one_line_per_request() {
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let key = "dk-audit-secret-0005";
    let log = tmp.path().join("audit").join("audit.jsonl");
    let text = format!(
        "{}\n[audit]\npath = \"{}\"\n",
        budget_config(
            tmp.path(),
            &mock.base_url(),
            &key_block("auditor", key, "budget_daily_usd = 10.0")
        ),
        log.display()
    );
    let d = Deja::start_config(&text, tmp.path(), hash_model(), None).await;
    let q = priced("What is the capital of France?", 20);
    assert_eq!(ask(&d, key, &q).await.header("x-deja-cache"), "miss");
    d.wait_entries(1).await;
    assert_eq!(ask(&d, key, &q).await.header("x-deja-cache"), "exact-hit");
    // With max_tokens: a request without one would reserve 1024 tokens ($10.24 here).
    let pii = priced("My card is 4111 1111 1111 1111, is it valid?", 20);
    assert_eq!(ask(&d, key, &pii).await.header("x-deja-cache"), "bypass");
    assert_eq!(ask(&d, "sk-unlisted", &q).await.status, 401);
    d.stop().await;
    let lines = audit_lines(&log);
    assert_eq!(lines.len(), 4, "{lines:?}");
    let by = |o: &str| lines.iter().find(|l| l["outcome"] == o).unwrap().clone();
    let miss = by("miss");
    assert_eq!(miss["key"], "auditor");
    assert_eq!(miss["model"], "gpt-4o-mini");
    assert_eq!(miss["route"], "*");
    assert_eq!(miss["provider"], "mock");
    assert_eq!(miss["status"], 200);
    assert_eq!(miss["api"], "chat");
    assert!(miss["prompt_tokens"].as_u64().unwrap() > 0);
    let completion = miss["completion_tokens"].as_u64().unwrap();
    assert!((miss["cost_usd"].as_f64().unwrap() - completion as f64 * 0.01).abs() < 1e-9);
    for phase in ["lookup", "upstream", "total"] {
        assert!(miss["ms"][phase].as_f64().is_some(), "{miss}");
    }
    assert_eq!(miss["request_id"].as_str().unwrap().len(), 32);
    assert!(miss["ts"].as_str().unwrap().ends_with('Z'));
    let hit = by("exact-hit");
    assert_eq!(hit["cost_usd"].as_f64(), Some(0.0));
    assert!(hit["similarity"].as_f64().is_some(), "{hit}");
    assert!((hit["saved_usd"].as_f64().unwrap() - miss["cost_usd"].as_f64().unwrap()).abs() < 1e-9);
    assert!(hit["entry"].as_u64().is_some());
    assert_eq!(by("bypass")["key"], "auditor");
    let err = by("error");
    assert_eq!(err["status"], 401);
    let raw = std::fs::read_to_string(&log).unwrap();
    for l in &lines {
        assert!(
            l.get("prompt").is_none() && l.get("answer").is_none(),
            "{l}"
        );
    }
    for secret in [key, "4111", "capital of France", "sk-unlisted"] {
        assert!(!raw.contains(secret), "{secret} in the audit log");
    }

    // include_content: prompts and answers, personal data replaced by its kind.
    let log2 = tmp.path().join("audit2.jsonl");
    let dir2 = tmp.path().join("second");
    let text = common::harness::config_text(
        &dir2.join("store"),
        &mock.base_url(),
        "",
        &format!(
            "[audit]\npath = \"{}\"\ninclude_content = true\n",
            log2.display()
        ),
    );
    let d = Deja::start_config(&text, &dir2, hash_model(), None).await;
    let r = ask(
        &d,
        "k",
        &chat("gpt-4o-mini", "Write to ann@example.com about Paris"),
    )
    .await;
    assert_eq!(r.status, 200);
    d.stop().await;
    let lines = audit_lines(&log2);
    assert_eq!(lines.len(), 1);
    let prompt = lines[0]["prompt"].as_str().unwrap();
    let answer = lines[0]["answer"].as_str().unwrap();
    assert!(prompt.contains("[EMAIL] about Paris"), "{prompt}");
    assert!(
        answer.contains("[EMAIL]") && !answer.contains("ann@"),
        "{answer}"
    );
    assert!(lines[0]["tenant"].is_string() && lines[0].get("key").is_none());
    assert!(!std::fs::read_to_string(&log2)
        .unwrap()
        .contains("ann@example.com"));
}

/// deja in keys mode with one config key (`boot`) and the admin listener, from a config file
/// (so `/admin/reload` re-reads it).
async fn keys_admin(dir: &std::path::Path, upstream: &str) -> Deja {
    let text = keys_config(dir, upstream, &key_block("boot", "dk-boot-secret-0003", ""))
        + "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_env = \"T16\"\n";
    let env = vec![("T16".to_string(), "t16-admin-token".to_string())];
    let file = dir.join("deja.toml");
    Deja::start_config_env(&text, dir, hash_model(), Some(file), env).await
}

async fn admin_call(d: &Deja, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
    let url = format!("{}{path}", d.admin.as_deref().unwrap());
    let mut req = client().request(method, url).bearer_auth("t16-admin-token");
    if let Some(b) = body {
        req = req.json(&b);
    }
    Reply::read(req.send().await.unwrap()).await
}

/// Keys managed on the admin API (issue 16): a key made there works at once (its limits
/// enforced), is listed with the config's keys, survives a reload and a restart, and is gone
/// the moment it is deleted; the key itself is answered once and kept nowhere; bad requests are
/// 400s or 409s naming the field; the config file's keys cannot be deleted there.
#[tokio::test]
async fn issue16_keys_made_and_revoked_on_the_admin_api() {
    use reqwest::Method;
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let d = keys_admin(tmp.path(), &mock.base_url()).await;
    let made = admin_call(
        &d,
        Method::POST,
        "/admin/keys",
        Some(json!({"name": "ops", "models": ["gpt-*"], "rpm": 2})),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let ops = made.body["key"].as_str().unwrap().to_string();
    assert!(ops.starts_with("dk-") && ops.len() > 40, "{ops}");
    assert_eq!(made.body["source"], "admin");
    let q = chat("gpt-4o-mini", "What are your opening hours?");
    for _ in 0..2 {
        assert_eq!(ask(&d, &ops, &q).await.status, 200);
    }
    let limited = ask(&d, &ops, &q).await;
    assert_eq!(limited.status, 429, "rpm = 2: {}", limited.text);
    let forbidden = ask(&d, &ops, &chat("claude-x", "hi")).await;
    assert_eq!(forbidden.status, 403);

    let listed = admin_call(&d, Method::GET, "/admin/keys", None).await;
    assert_eq!(listed.status, 200);
    let names: Vec<(&str, &str)> = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].as_str().unwrap(), k["source"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("boot", "config"), ("ops", "admin")]);
    assert!(
        !listed.text.contains(&ops),
        "a listed key never shows its key"
    );
    let full_hash = deja::config::KeyHash::of(&ops).to_string();
    assert!(!listed.text.contains(&full_hash), "nor its whole hash");

    for (body, status, param) in [
        (json!({"name": "ops"}), 409, "name"),
        (json!({"name": "boot"}), 409, "name"),
        (json!({"name": "x", "rpm": 0}), 400, "rpm"),
        (json!({"name": "x", "models": ["[bad"]}), 400, "models[0]"),
        (json!({"name": "bad name!"}), 400, "name"),
        (json!({"name": "x", "colour": 1}), 400, ""),
        (json!({"rpm": 1}), 400, ""),
        (
            json!({"name": "x", "models": ["a".repeat(20_000)]}),
            413,
            "",
        ),
    ] {
        let r = admin_call(&d, Method::POST, "/admin/keys", Some(body.clone())).await;
        assert_eq!(r.status, status, "{body}: {}", r.text);
        if !param.is_empty() {
            assert_eq!(r.body["error"]["param"], param, "{body}: {}", r.text);
        }
    }
    let r = admin_call(&d, Method::DELETE, "/admin/keys/boot", None).await;
    assert_eq!(r.status, 409, "{}", r.text);
    let r = admin_call(&d, Method::DELETE, "/admin/keys/nobody", None).await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = admin_call(
        &d,
        Method::POST,
        "/admin/keys",
        Some(json!({"name": "lab"})),
    )
    .await;
    let lab = r.body["key"].as_str().unwrap().to_string();

    // A reload re-reads the file and keeps the admin's keys.
    let r = admin_call(&d, Method::POST, "/admin/reload", Some(json!({}))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(ask(&d, &lab, &q).await.status, 200, "after a reload");
    d.stop().await;

    // A restart reads them back; a delete revokes at once, and for good.
    let d = keys_admin(tmp.path(), &mock.base_url()).await;
    assert_eq!(ask(&d, &lab, &q).await.status, 200, "after a restart");
    let r = admin_call(&d, Method::DELETE, "/admin/keys/lab", None).await;
    assert_eq!((r.status, r.body["deleted"].as_str()), (200, Some("lab")));
    assert_eq!(ask(&d, &lab, &q).await.status, 401);
    d.stop().await;
    // At most 1000 keys are kept: the file is filled up to the bound.
    let file = tmp.path().join("store").join("admin-keys.json");
    let mut kept: Vec<Value> = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(kept.len(), 1, "ops is left");
    for i in kept.len()..1000 {
        let hash = deja::config::KeyHash::of(&format!("dk-filler-{i}")).to_string();
        kept.push(json!({"name": format!("filler-{i}"), "hash": hash}));
    }
    std::fs::write(&file, serde_json::to_vec(&kept).unwrap()).unwrap();
    let d = keys_admin(tmp.path(), &mock.base_url()).await;
    let r = admin_call(
        &d,
        Method::POST,
        "/admin/keys",
        Some(json!({"name": "one-more"})),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("at most 1000"), "{}", r.text);
    assert_eq!(
        ask(&d, &lab, &q).await.status,
        401,
        "still revoked after a restart"
    );
    assert_eq!(
        ask(&d, &ops, &chat("gpt-4o", "Another question?"))
            .await
            .status,
        200
    );
    d.stop().await;
    let bytes = store_bytes(tmp.path());
    for k in [&ops, &lab] {
        assert!(!contains(&bytes, k), "a key reached the disk");
    }
    assert!(contains(&bytes, &full_hash), "its hash is what is kept");
}
