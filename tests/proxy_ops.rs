//! Operating deja: restart keeps entries, hot reload changes the threshold (and rejects a bad
//! file), health/readiness, metrics, and the uncached `/v1/*` pass-through.

mod common;

use std::time::{Duration, Instant};

use common::harness::{client, config_text, hash_model, Deja, Reply};
use common::mock_upstream::MockUpstream;
use serde_json::{json, Value};

fn chat(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
}

async fn ask(d: &Deja, text: &str) -> Reply {
    let auth = [("authorization", "Bearer k")];
    d.post("/v1/chat/completions", &chat(text), &auth).await
}

#[tokio::test]
async fn restart_keeps_entries() {
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(
        &tmp.path().join("store"),
        &mock.base_url(),
        "threshold = 0.8",
        "",
    );
    let d = Deja::start_config(&text, tmp.path(), hash_model(), None).await;
    let first = ask(&d, "remember me").await;
    ask(&d, "and me too").await;
    d.wait_entries(2).await;
    d.stop().await;

    let d = Deja::start_config(&text, tmp.path(), hash_model(), None).await;
    assert_eq!(d.entries(), 2);
    let again = ask(&d, "remember me").await;
    assert_eq!(again.header("x-deja-cache"), "exact-hit");
    assert_eq!(again.content(), first.content());
    // The index was rebuilt from the store: a near-duplicate is still a semantic hit.
    let near = ask(&d, "remember me too").await;
    assert_ne!(
        near.header("x-deja-cache"),
        "miss",
        "index must be reloaded: {:?}",
        near.headers
    );
    assert_eq!(mock.calls(), 2);
    d.stop().await;
}

#[tokio::test]
async fn restart_reloads_the_hnsw_graph_from_the_shutdown_snapshot() {
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    // A tiny flat_max makes the scope an HNSW graph after a few entries.
    let text = config_text(
        &tmp.path().join("store"),
        &mock.base_url(),
        "threshold = 0.8",
        "[index]\nflat_max = 8\nef_construction = 32",
    );
    // Twenty prompts with no word in common, so none is a semantic hit for another.
    let words = "apple brick cloud drum eagle flute grape hammer igloo jacket kettle lemon \
                 marble needle orbit pepper quartz ribbon saddle tulip umbrella violin walnut \
                 xylophone yacht zebra anchor bucket candle dolphin engine feather glacier \
                 harbor island jungle kayak lantern meadow nectar oyster pillow quiver rocket \
                 summit turtle valley wagon yogurt zipper arrow blanket cactus desert ember \
                 falcon garden helmet";
    let words: Vec<&str> = words.split_whitespace().collect();
    let prompts: Vec<String> = words.chunks(3).take(20).map(|w| w.join(" ")).collect();
    assert_eq!(prompts.len(), 20);
    let d = Deja::start_config(&text, tmp.path(), hash_model(), None).await;
    for p in &prompts {
        ask(&d, p).await;
    }
    d.wait_entries(prompts.len()).await;
    let index = d.state.engine().unwrap().index().unwrap();
    assert!(index.wait_idle(Duration::from_secs(30)));
    assert_eq!(index.stats().hnsw_scopes, 1);
    assert_eq!(index.stats().promotions, 1);
    d.stop().await;
    let current = tmp
        .path()
        .join("store")
        .join(deja::index::snapshot::DIR_NAME)
        .join("CURRENT");
    assert!(current.exists(), "shutdown wrote no snapshot");

    let d = Deja::start_config(&text, tmp.path(), hash_model(), None).await;
    // The graph is back at once, restored rather than promoted again.
    let stats = d.state.engine().unwrap().index().unwrap().stats();
    assert_eq!((stats.hnsw_scopes, stats.hnsw_vectors), (1, prompts.len()));
    assert_eq!((stats.promotions, stats.builds_in_flight), (0, 0));
    let near = ask(&d, &format!("{} please", prompts[11])).await;
    assert_eq!(
        near.header("x-deja-cache"),
        "semantic-hit",
        "{:?}",
        near.headers
    );
    assert_eq!(mock.calls(), prompts.len() as u64);
    d.stop().await;
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn hot_reload_changes_the_threshold_and_rejects_a_bad_file() {
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("config.toml");
    let strict = config_text(
        &tmp.path().join("store"),
        &mock.base_url(),
        "threshold = 0.999",
        "",
    );
    let d = Deja::start_config(&strict, tmp.path(), hash_model(), Some(path.clone())).await;
    ask(&d, "how to bake sourdough bread at home").await;
    d.wait_entries(1).await;
    let near = "how to bake sourdough bread at home quickly";
    // no-store: this miss must not insert `near` itself, or the next ask would be an exact hit.
    let r = Reply::read(
        client()
            .post(d.url("/v1/chat/completions"))
            .bearer_auth("k")
            .header("cache-control", "no-store")
            .json(&chat(near))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.header("x-deja-cache"), "miss");

    let loose = config_text(
        &tmp.path().join("store"),
        &mock.base_url(),
        "threshold = 0.5",
        "",
    );
    std::fs::write(&path, &loose).unwrap();
    wait_until("the new threshold", || {
        d.state.config().cache.threshold == 0.5
    })
    .await;
    assert_eq!(ask(&d, near).await.header("x-deja-cache"), "semantic-hit");

    // An invalid file keeps the running config.
    std::fs::write(&path, "[cache]\nthreshold = 7\n").unwrap();
    wait_until("the rejected reload", || {
        d.state
            .metrics()
            .reloads
            .with_label_values(&["rejected"])
            .get()
            >= 1
    })
    .await;
    assert_eq!(d.state.config().cache.threshold, 0.5);
    assert_eq!(ask(&d, near).await.header("x-deja-cache"), "semantic-hit");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let mock = MockUpstream::start().await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    let r = client().get(d.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client().get(d.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    ask(&d, "count me").await;
    d.wait_entries(1).await;
    ask(&d, "count me").await;
    let text = client()
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "deja_requests_total{api=\"chat\",outcome=\"miss\"} 1",
        "deja_requests_total{api=\"chat\",outcome=\"exact_hit\"} 1",
        "deja_cache_entries 1",
        "deja_cache_inserts_total 1",
        "deja_upstream_duration_seconds_count{provider=\"mock\"} 1",
        "deja_tokens_saved_total",
        "deja_embed_duration_seconds",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
}

#[tokio::test]
async fn models_list_is_passed_through_uncached() {
    let mock = MockUpstream::builder()
        .with_models(&["gpt-4o-mini", "gpt-4o"])
        .start()
        .await;
    let d = Deja::start(&mock.base_url(), hash_model()).await;
    for _ in 0..2 {
        let r = Reply::read(
            client()
                .get(d.url("/v1/models"))
                .bearer_auth("k")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("x-deja-cache"), "bypass");
        assert_eq!(
            r.body["data"].as_array().map(Vec::len),
            Some(2),
            "{}",
            r.text
        );
    }
    assert_eq!(mock.calls_for("/v1/models"), 2);
}

#[tokio::test]
async fn tokens_and_cost_are_accounted_per_price_glob() {
    let mock = MockUpstream::start().await;
    let prices =
        "\n[[prices]]\nmodel = \"gpt-4o-mini*\"\ninput_per_mtok = 0.15\noutput_per_mtok = 0.60\n";
    let d = Deja::start_with(&mock.base_url(), hash_model(), "", prices).await;
    let first = ask(&d, "what does it cost").await;
    d.wait_entries(1).await;
    let hit = ask(&d, "what does it cost").await;
    assert_eq!(hit.header("x-deja-cache"), "exact-hit");
    let usage = &first.body["usage"];
    assert_eq!(
        hit.header("x-deja-tokens-saved"),
        usage["total_tokens"].to_string()
    );
    let m = d.state.metrics();
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert_eq!(
        m.tokens_upstream
            .with_label_values(&["gpt-4o-mini*", "prompt"])
            .get(),
        prompt
    );
    assert_eq!(
        m.tokens_saved
            .with_label_values(&["gpt-4o-mini*", "completion"])
            .get(),
        completion
    );
    let expected = (prompt as f64 * 0.15 + completion as f64 * 0.60) / 1e6;
    let saved = m.cost_saved.with_label_values(&["gpt-4o-mini*"]).get();
    assert!((saved - expected).abs() < 1e-12, "{saved} vs {expected}");
    assert!((m.cost_upstream.with_label_values(&["gpt-4o-mini*"]).get() - expected).abs() < 1e-12);

    // A stream without a usage chunk gets its tokens estimated, and the entry keeps them.
    let body = json!({"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"estimate me"}]});
    let r = d
        .send(
            "/v1/chat/completions",
            &body,
            &[("authorization", "Bearer k")],
        )
        .await;
    assert!(r.text().await.unwrap().contains("[DONE]"));
    d.wait_entries(2).await;
    assert_eq!(m.tokens_estimated.get(), 1);
    let hit = ask(&d, "estimate me").await;
    assert!(
        hit.body["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{}",
        hit.text
    );
}
