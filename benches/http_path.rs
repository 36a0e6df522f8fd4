//! Latency through HTTP, in-process: deja (real model, temp store) in front of a 0 ms mock
//! upstream on 127.0.0.1, driven sequentially by one client on the same machine. Reports p50/p90/
//! p99 for exact hits, semantic hits (each query a new paraphrase, so the embedding LRU never
//! helps), misses through deja, and the same requests sent to the mock directly (the baseline
//! measured in the same run). Run: `cargo bench --bench http_path` (figures in docs/benchmarks.md).

#[path = "../tests/common/mod.rs"]
mod common;

use common::mock_upstream;

use std::time::{Duration, Instant};

use deja::config::Config;
use deja::server::{self, Server};
use serde_json::json;

fn pct(mut v: Vec<Duration>, p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn report(name: &str, v: Vec<Duration>) {
    println!(
        "{name:<28} n={:<5} p50 {:>7.3} ms  p90 {:>7.3} ms  p99 {:>7.3} ms",
        v.len(),
        pct(v.clone(), 0.50),
        pct(v.clone(), 0.90),
        pct(v, 0.99)
    );
}

async fn timed(client: &reqwest::Client, url: &str, text: &str, expect: &str) -> Duration {
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]});
    let t = Instant::now();
    let r = client
        .post(url)
        .bearer_auth("bench")
        .json(&body)
        .send()
        .await
        .expect("send");
    let outcome = r
        .headers()
        .get("x-deja-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string();
    let _ = r.bytes().await.expect("body");
    let d = t.elapsed();
    assert!(
        expect.is_empty() || outcome == expect,
        "expected {expect}, got {outcome} for {text:?}"
    );
    d
}

const TOPICS: &[&str] = &[
    "reset my password",
    "change my billing address",
    "cancel my subscription",
    "export my data",
    "enable two factor authentication",
    "delete my account",
    "update my email address",
    "download my invoices",
    "contact customer support",
    "upgrade my plan",
];
const OPENERS: &[&str] = &[
    "How do I",
    "How can I",
    "What is the way to",
    "Can you tell me how to",
    "Help me",
];
const CLOSERS: &[&str] = &[
    "?",
    " please?",
    " quickly?",
    " today?",
    " on the website?",
    " from my phone?",
];

fn main() {
    let n: usize = std::env::var("DEJA_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mock = mock_upstream::MockUpstream::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[cache]\ndir = \"{}\"\nthreshold = 0.80\n[[providers]]\nname = \"mock\"\nkind = \"openai\"\nbase_url = \"{}\"\nmax_retries = 0\n[[routes]]\nmodel = \"*\"\nproviders = [\"mock\"]\n",
            dir.path().join("store").display(),
            mock.base_url()
        );
        let config = Config::from_toml_str(&text, Vec::<(String, String)>::new(), dir.path()).expect("config");
        let s = Server::bind(config.clone(), None).await.expect("bind");
        let addr = s.local_addr().expect("addr");
        let state = s.state().clone();
        let embedder = deja::embed::load_default(&server::embed_settings(&config), &deja::embed::ResolveOptions::from_env())
            .expect("model");
        let engine = tokio::task::spawn_blocking(move || server::open_engine(&config, embedder)).await.expect("join").expect("engine");
        let _ = state.0.engine.set(engine);
        tokio::spawn(s.run(std::future::pending()));
        let client = reqwest::Client::builder().no_proxy().build().expect("client");
        let deja_url = format!("http://{addr}/v1/chat/completions");
        let mock_url = format!("{}/chat/completions", mock.base_url());

        // Seed: one entry per topic.
        for t in TOPICS {
            timed(&client, &deja_url, &format!("How do I {t}?"), "miss").await;
        }
        while state.engine().map(|e| e.store().len()).unwrap_or(0) < TOPICS.len() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Warm-up.
        for i in 0..20 {
            timed(&client, &deja_url, &format!("How do I {}?", TOPICS[i % TOPICS.len()]), "exact-hit").await;
        }

        let mut exact = Vec::new();
        for i in 0..n {
            exact.push(timed(&client, &deja_url, &format!("How do I {}?", TOPICS[i % TOPICS.len()]), "exact-hit").await);
        }
        let mut semantic = Vec::new();
        let mut i = 0;
        'outer: for o in OPENERS.iter().skip(1) {
            for c in CLOSERS {
                for t in TOPICS {
                    if i >= n {
                        break 'outer;
                    }
                    i += 1;
                    semantic.push(timed(&client, &deja_url, &format!("{o} {t}{c}"), "").await);
                }
            }
        }
        let mut miss = Vec::new();
        let mut direct = Vec::new();
        for i in 0..n {
            // Unrelated prompts: a miss every time, so each pays lookup + embedding + upstream.
            miss.push(timed(&client, &deja_url, &format!("Write a limerick about the number {i} and a purple cat"), "miss").await);
            direct.push(timed(&client, &mock_url, &format!("Write a limerick about the number {i} and a purple cat"), "").await);
        }
        println!("deja HTTP path, sequential, 1 client, 0 ms mock upstream, all on this machine");
        report("exact hit", exact);
        report("semantic hit (new paraphrase)", semantic);
        report("miss through deja", miss);
        report("same request, mock directly", direct);
        let hits = state.metrics().requests.with_label_values(&["chat", "semantic_hit"]).get();
        println!("semantic hits among paraphrase queries: {hits}/{i}");
    });
}
