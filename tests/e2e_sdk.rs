//! End-to-end: the real `deja` binary (real model, real store) driven by the official Python
//! SDKs, with misses forwarded to in-process mock upstreams on 127.0.0.1:0 that speak OpenAI's
//! and Anthropic's wire formats.

mod common;

use std::process::Command;

use common::binary::{python_with_sdks, DejaProcess};
use common::mock_upstream::MockUpstream;

fn write_config(dir: &std::path::Path, mock: &MockUpstream) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"
[cache]
dir = "{}"
# No threshold here: the README's paraphrase example must hit at the shipped decision rule.
[[providers]]
name = "openai-mock"
kind = "openai"
base_url = "{}"
max_retries = 0
[[providers]]
name = "anthropic-mock"
kind = "anthropic"
base_url = "{}"
max_retries = 0
[[routes]]
model = "claude-*"
providers = ["anthropic-mock"]
[[routes]]
model = "gpt-4o-tools"
providers = ["openai-mock"]
cache_tool_calls = true
[[routes]]
model = "*"
providers = ["openai-mock"]
"#,
        dir.join("store").display(),
        mock.base_url(),
        mock.anthropic_base_url(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn run_script(python: &std::path::Path, name: &str, base: &str) {
    let script = format!("{}/tests/e2e/{name}", env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(python)
        .arg(&script)
        .arg(base)
        .env("PYTHONUNBUFFERED", "1")
        .status()
        .expect("run python");
    assert!(status.success(), "{name} failed (see output above)");
}

#[test]
fn official_python_sdks_against_the_binary() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mock = rt.block_on(
        MockUpstream::builder()
            .with_models(&["gpt-4o-mini"])
            .call_offered_tools()
            .start(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &mock);
    let deja = DejaProcess::start(&config);
    let python = python_with_sdks();

    run_script(&python, "openai_sdk.py", &deja.base);
    // Every miss is one upstream call and every hit none: 6 distinct chat questions, and the
    // feedback check's query asked again after its entry was tightened (issue 17).
    let chat_calls = mock.calls_for("/v1/chat/completions");
    assert_eq!(chat_calls, 7, "upstream chat calls for the openai script");

    run_script(&python, "openai_responses.py", &deja.base);
    // Misses only (hits and the chat answer served to a Responses request cost nothing): a
    // paraphrase pair, a JSON-then-stream question, a stream-then-JSON one, a second system
    // prompt, a Responses-first question, the `previous_response_id` pass-through, and the
    // tool call cached on the `cache_tool_calls` route (a miss, and one more until stored).
    let responses_calls = mock.calls_for("/v1/responses");
    assert!(
        (11..=14).contains(&responses_calls),
        "upstream Responses calls: {responses_calls}"
    );
    // The follow-up to a deja-served response went upstream as the whole conversation (the
    // provider never saw that id); the one to the provider's own id, as the client sent it.
    let sent = |marker: &str| {
        mock.requests()
            .into_iter()
            .find(|r| String::from_utf8_lossy(&r.raw_body).contains(marker))
            .map(|r| r.body)
            .unwrap_or_default()
    };
    let expanded = sent("Is there a newer edition?");
    assert!(expanded.get("previous_response_id").is_none(), "{expanded}");
    let text = expanded["input"].to_string();
    assert!(
        text.contains("Recommend a book about databases.") && text.contains("Why that one?"),
        "{expanded}"
    );
    let native = sent("Why that one?");
    assert!(native["previous_response_id"].is_string(), "{native}");
    let translated_follow = sent("And to French?");
    let text = translated_follow.to_string();
    assert!(
        text.contains("Translate 'cache' to German.") && translated_follow["messages"].is_array(),
        "the follow-up went to Anthropic with the whole conversation: {translated_follow}"
    );
    // The chat question the Responses answer was served back to was a hit: one more chat call
    // for the chat answer that a Responses request then got, and the tool-call miss (its JSON,
    // stream and stream-helper replays are hits; a retry or two until it is stored).
    let chat_after = mock.calls_for("/v1/chat/completions");
    assert!(
        (chat_calls + 2..=chat_calls + 4).contains(&chat_after),
        "upstream chat calls after the Responses script: {chat_after} (before: {chat_calls})"
    );
    // Bad input never reaches an upstream.
    let leaked: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| String::from_utf8_lossy(&r.raw_body).contains("-e2e"))
        .collect();
    assert!(
        leaked.is_empty(),
        "bad requests reached the upstream: {leaked:?}"
    );

    // Routed to the Anthropic-kind mock: a Responses JSON miss and stream miss (and any retry
    // until stored), and the tool round trips: a chat call twice (tool calls are never cached),
    // its follow-up, a streamed chat call, a streamed Responses call and its follow-up; and the
    // `previous_response_id` follow-up to a translated answer (resolved by deja).
    let translated = mock.calls_for("/v1/messages");
    assert!(
        (9..=11).contains(&translated),
        "Responses calls translated for Anthropic: {translated}"
    );

    run_script(&python, "anthropic_sdk.py", &deja.base);
    let messages_calls = mock.calls_for("/v1/messages") - translated;
    assert!(
        messages_calls >= 4,
        "the Anthropic-kind mock was used: {messages_calls}"
    );

    let stopped = deja.stop();
    assert!(
        stopped.success(),
        "graceful shutdown must exit 0, got {stopped}"
    );

    // Issue 16: the gateway controls, through both SDKs, on a second binary with deja keys.
    let (full, limited, budget) = (
        "dk-e2e-full-0123456789abcdef",
        "dk-e2e-limited-0123456789abcdef",
        "dk-e2e-budget-0123456789abcdef",
    );
    let gw = tmp.path().join("gateway");
    std::fs::create_dir_all(&gw).unwrap();
    let config = write_gateway_config(&gw, &mock, full, limited, budget);
    let deja = DejaProcess::start(&config);
    let script = format!("{}/tests/e2e/gateway_sdk.py", env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(&python)
        .args([script.as_str(), deja.base.as_str(), full, limited, budget])
        .env("PYTHONUNBUFFERED", "1")
        .status()
        .expect("run python");
    assert!(status.success(), "gateway_sdk.py failed (see output above)");
    let metrics = reqwest::blocking::get(format!("{}/metrics", deja.base))
        .unwrap()
        .text()
        .unwrap();
    let log = deja.log_text();
    assert!(deja.stop().success());
    assert!(
        log.contains("request rejected") && log.contains("outcome"),
        "the log was captured: {log}"
    );
    let mut store = Vec::new();
    for e in walkdir(&gw.join("store")) {
        store.extend(std::fs::read(e).unwrap_or_default());
    }
    for key in [full, limited, budget] {
        assert!(!log.contains(key), "a deja key reached the log");
        assert!(!metrics.contains(key), "a deja key reached the metrics");
        assert!(
            !store.windows(key.len()).any(|w| w == key.as_bytes()),
            "a deja key reached the store"
        );
    }
    for value in ["7946 0958", "123-45-6789", "ann@example.com"] {
        assert!(
            !log.contains(value) && !metrics.contains(value),
            "{value} logged"
        );
        assert!(!store.windows(value.len()).any(|w| w == value.as_bytes()));
    }
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `server.auth = "keys"` with three keys (one with a $0.05 daily budget at $0.01 per
/// completion token of `gpt-4o-budget`), and per-model `[pii]` modes.
fn write_gateway_config(
    dir: &std::path::Path,
    mock: &MockUpstream,
    full: &str,
    limited: &str,
    budget: &str,
) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"
auth = "keys"
[cache]
dir = "{}"
[pii]
mode = "skip-cache"
[[pii.routes]]
model = "gpt-4o-block"
mode = "block"
[[pii.routes]]
model = "gpt-4o-redact"
mode = "redact"
[[keys]]
name = "e2e-full"
hash = "{}"
[[keys]]
name = "e2e-limited"
hash = "{}"
models = ["gpt-*"]
rpm = 2
[[keys]]
name = "e2e-budget"
hash = "{}"
budget_daily_usd = 0.05
[[templates]]
name = "greet"
model = "gpt-4o-mini"
messages = [
  {{ role = "system", content = "You greet people warmly." }},
  {{ role = "user", content = "Say hello to {{{{name}}}}" }},
]
[[prices]]
model = "gpt-4o-budget"
input_per_mtok = 0.0
output_per_mtok = 10000.0
[[providers]]
name = "openai-mock"
kind = "openai"
base_url = "{}"
max_retries = 0
[[routes]]
model = "*"
providers = ["openai-mock"]
"#,
        dir.join("store").display(),
        deja::config::KeyHash::of(full),
        deja::config::KeyHash::of(limited),
        deja::config::KeyHash::of(budget),
        mock.base_url(),
    );
    std::fs::write(&path, text).unwrap();
    path
}
