//! Open-loop HTTP load against deja (real model, temporary store) in front of the in-process
//! mock upstream on 127.0.0.1, all on this machine: deja's runtime, the mock's and the load
//! generator's share the same cores, as the targets in docs/benchmarks.md state.
//!
//! Open loop: request `i` is due at `start + i / rate`, whether or not earlier ones have
//! answered, and its latency counts from when it was due, so a server that falls behind shows
//! queueing in the percentiles instead of slowing the generator down (no coordinated omission).
//!
//! Workloads (`--workload`, comma-separated):
//! - `exact`: the seeded prompts again (exact-layer hits);
//! - `semantic`: a new paraphrase of a seeded prompt every request (embedding + index hits; the
//!   embedding LRU never helps);
//! - `miss`: a new unrelated prompt every request (lookup + embedding + upstream + insert);
//! - `direct`: the `miss` requests sent to the mock itself (the baseline for miss overhead);
//! - `mixed`: 50% exact, 30% semantic, 20% miss.
//!
//! `cargo bench --bench load -- --workload semantic --rates 50,150,250 --duration 10
//! --upstream-latency-ms 0`. Prints one line per (workload, rate) and, with `--json FILE`,
//! writes every row.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/prompts.rs"]
mod prompts;

use prompts::{paraphrase, unrelated, TOPICS};

use clap::Parser;
use common::mock_upstream::MockUpstream;
use deja::config::Config;
use deja::server::{self, Server};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Workloads to run, in order: exact, semantic, miss, direct, mixed.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "exact,semantic,miss,direct,mixed"
    )]
    workload: Vec<String>,
    /// Offered rates in requests per second (each workload runs at each rate).
    #[arg(long, value_delimiter = ',', default_value = "50,250")]
    rates: Vec<f64>,
    /// Seconds per (workload, rate) run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Latency the mock upstream adds to every answer.
    #[arg(long, default_value_t = 0)]
    upstream_latency_ms: u64,
    /// Cosine threshold deja runs with (the paraphrases here sit around 0.85-0.95).
    #[arg(long, default_value_t = 0.80)]
    threshold: f64,
    /// Client-side timeout per request (counted as an error).
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Write the rows as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Exact,
    Semantic,
    Miss,
    Direct,
}

const MIXED: [Kind; 10] = [
    Kind::Exact,
    Kind::Semantic,
    Kind::Exact,
    Kind::Miss,
    Kind::Exact,
    Kind::Semantic,
    Kind::Exact,
    Kind::Semantic,
    Kind::Exact,
    Kind::Miss,
];

#[derive(Debug, serde::Serialize)]
struct Row {
    workload: String,
    offered_rps: f64,
    achieved_rps: f64,
    requests: usize,
    errors: usize,
    exact_hits: usize,
    semantic_hits: usize,
    misses: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// The same percentiles measured from the actual send instead of the due time.
    service_p50_ms: f64,
    service_p99_ms: f64,
}

struct Outcome {
    /// From when the request was due (what a user sees, queueing included).
    latency: Duration,
    /// From when the client task started sending (the client's own scheduling lag removed).
    service: Duration,
    ok: bool,
    cache: Option<String>,
}

fn pct(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    let args = Args::parse();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("deja-server")
        .build()
        .expect("server runtime");
    // The client gets its own single worker, so it cannot take deja's; requests are released
    // on time by a plain thread (`std::thread::sleep` wakes within ~0.1 ms, tokio's timer
    // rounds up to whole milliseconds).
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("load-client")
        .enable_all()
        .build()
        .expect("client runtime");

    let latency = Duration::from_millis(args.upstream_latency_ms);
    let (mock, deja_url, state) = server_rt.block_on(async {
        let mock = MockUpstream::builder().with_latency(latency).start().await;
        let dir = Box::leak(Box::new(tempfile::tempdir().expect("tempdir")));
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[cache]\ndir = \"{}\"\nthreshold = {}\n\
             [[providers]]\nname = \"mock\"\nkind = \"openai\"\nbase_url = \"{}\"\n\
             max_retries = 0\n[[routes]]\nmodel = \"*\"\nproviders = [\"mock\"]\n",
            dir.path().join("store").display(),
            args.threshold,
            mock.base_url()
        );
        let config = Config::from_toml_str(&text, Vec::<(String, String)>::new(), dir.path())
            .expect("config");
        let s = Server::bind(config.clone(), None).await.expect("bind");
        let addr = s.local_addr().expect("addr");
        let state = s.state().clone();
        let settings = server::embed_settings(&config);
        let embedder =
            deja::embed::load_default(&settings, &deja::embed::ResolveOptions::from_env())
                .expect("model");
        let engine = tokio::task::spawn_blocking(move || server::open_engine(&config, embedder))
            .await
            .expect("join")
            .expect("engine");
        let _ = state.0.engine.set(engine);
        tokio::spawn(s.run(std::future::pending()));
        (mock, format!("http://{addr}/v1/chat/completions"), state)
    });
    let direct_url = format!("{}/chat/completions", mock.base_url());
    let backend = state
        .engine()
        .map(|e| e.embedder().describe())
        .unwrap_or_default();
    println!(
        "deja open-loop load: upstream latency {} ms, threshold {}, {} s per run, encoder {backend}",
        args.upstream_latency_ms, args.threshold, args.duration
    );

    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs_f64(args.timeout))
        .build()
        .expect("client");

    // Seed one entry per topic, wait for the inserts, warm up every path.
    client_rt.block_on(async {
        for t in TOPICS {
            send(&client, &deja_url, &format!("How do I {t}?")).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while state.engine().map(|e| e.store().len()).unwrap_or(0) < TOPICS.len()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for i in 0..20 {
            send(&client, &deja_url, &format!("How do I {}?", TOPICS[i % 10])).await;
            send(&client, &deja_url, &paraphrase(100_000 + i)).await;
        }
    });

    let mut rows = Vec::new();
    let mut semantic_next = 0usize;
    for (run, workload) in args.workload.iter().enumerate() {
        for (rate_index, &rate) in args.rates.iter().enumerate() {
            let n = (rate * args.duration).round().max(1.0) as usize;
            let plan: Vec<(Kind, String)> = (0..n)
                .map(|i| {
                    let kind = match workload.as_str() {
                        "exact" => Kind::Exact,
                        "semantic" => Kind::Semantic,
                        "miss" => Kind::Miss,
                        "direct" => Kind::Direct,
                        // 50% exact, 30% semantic, 20% miss, interleaved.
                        _ => MIXED[i % MIXED.len()],
                    };
                    let text = match kind {
                        Kind::Exact => format!("How do I {}?", TOPICS[i % TOPICS.len()]),
                        Kind::Semantic => {
                            semantic_next += 1;
                            paraphrase(semantic_next)
                        }
                        Kind::Miss | Kind::Direct => unrelated(run * 100 + rate_index, i),
                    };
                    (kind, text)
                })
                .collect();
            let outcomes = run_open_loop(&client_rt, &client, &deja_url, &direct_url, rate, plan);
            let row = summarize(workload, rate, args.duration, outcomes);
            println!(
                "{:<9} offered {:>6.0}/s achieved {:>6.0}/s  n={:<6} err={:<4} exact={:<5} semantic={:<5} miss={:<5} p50 {:>7.2} ms  p90 {:>7.2}  p99 {:>7.2}  p99.9 {:>7.2}  max {:>7.2} | from send: p50 {:>6.2} p99 {:>6.2}",
                row.workload, row.offered_rps, row.achieved_rps, row.requests, row.errors,
                row.exact_hits, row.semantic_hits, row.misses, row.p50_ms, row.p90_ms, row.p99_ms,
                row.p999_ms, row.max_ms, row.service_p50_ms, row.service_p99_ms
            );
            rows.push(row);
            // Let pending inserts land before the next run.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    if let Some(path) = &args.json {
        let body = json!({
            "upstream_latency_ms": args.upstream_latency_ms,
            "threshold": args.threshold,
            "duration_s": args.duration,
            "encoder": backend,
            "rows": rows,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&body).expect("json")).expect("write json");
    }
    drop(mock);
}

async fn send(client: &reqwest::Client, url: &str, text: &str) -> (bool, Option<String>) {
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]});
    match client
        .post(url)
        .bearer_auth("bench")
        .json(&body)
        .send()
        .await
    {
        Ok(r) => {
            let ok = r.status().is_success();
            let cache = r
                .headers()
                .get("x-deja-cache")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let ok = ok && r.bytes().await.is_ok();
            (ok, cache)
        }
        Err(_) => (false, None),
    }
}

fn run_open_loop(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    deja_url: &str,
    direct_url: &str,
    rate: f64,
    plan: Vec<(Kind, String)>,
) -> (Duration, Vec<Outcome>) {
    let start = Instant::now() + Duration::from_millis(20);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let (deja_url, direct_url): (Arc<str>, Arc<str>) = (deja_url.into(), direct_url.into());
    let mut tasks = Vec::with_capacity(plan.len());
    for (i, (kind, text)) in plan.into_iter().enumerate() {
        let due = start + interval.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let client = client.clone();
        let url = if kind == Kind::Direct {
            direct_url.clone()
        } else {
            deja_url.clone()
        };
        tasks.push(rt.spawn(async move {
            let sent = Instant::now();
            let (ok, cache) = send(&client, &url, &text).await;
            Outcome {
                latency: due.elapsed(),
                service: sent.elapsed(),
                ok,
                cache,
            }
        }));
    }
    let outcomes = rt.block_on(async {
        let mut outcomes = Vec::with_capacity(tasks.len());
        for t in tasks {
            if let Ok(o) = t.await {
                outcomes.push(o);
            }
        }
        outcomes
    });
    (start.elapsed(), outcomes)
}

fn summarize(
    workload: &str,
    rate: f64,
    duration: f64,
    (wall, outcomes): (Duration, Vec<Outcome>),
) -> Row {
    let count = |s: &str| {
        outcomes
            .iter()
            .filter(|o| o.cache.as_deref() == Some(s))
            .count()
    };
    let mut lat: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.ok)
        .map(|o| o.latency)
        .collect();
    lat.sort();
    let ok = lat.len();
    let mut service: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.ok)
        .map(|o| o.service)
        .collect();
    service.sort();
    Row {
        workload: workload.to_string(),
        offered_rps: rate,
        achieved_rps: ok as f64 / wall.as_secs_f64().max(duration),
        requests: outcomes.len(),
        errors: outcomes.len() - ok,
        exact_hits: count("exact-hit"),
        semantic_hits: count("semantic-hit"),
        misses: count("miss"),
        p50_ms: pct(&lat, 0.50),
        p90_ms: pct(&lat, 0.90),
        p99_ms: pct(&lat, 0.99),
        p999_ms: pct(&lat, 0.999),
        max_ms: lat.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        service_p50_ms: pct(&service, 0.50),
        service_p99_ms: pct(&service, 0.99),
    }
}
