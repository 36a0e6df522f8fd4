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
//! - `mixed`: 50% exact, 30% semantic, 20% miss;
//! - `overhead`: `miss` and `direct` requests alternating in one run, so both halves see the
//!   same machine (this VM's noise moves separate runs by more than the 1 ms being measured);
//!   reported as two rows, `overhead/miss` and `overhead/direct`.
//!
//! Each line also gives deja's own time (`x-deja-overhead-ms`) and the `embed` phase of its
//! `Server-Timing` header. When a run has both `miss` and `direct` at one rate, a last line
//! gives the miss overhead (deja minus direct, p50 from send) and the part of it beyond each
//! request's own embedding, which the target bounds by 1 ms.
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
use common::harness::server_timing;
use common::mock_upstream::MockUpstream;
use deja::config::Config;
use deja::server::{self, Server};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Workloads to run, in order: exact, semantic, miss, direct, mixed, overhead.
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
    /// deja's own time from its `x-deja-overhead-ms` header (upstream excluded), p50 / p99.
    overhead_p50_ms: f64,
    overhead_p99_ms: f64,
    /// The `embed` phase of deja's `Server-Timing` header (pool queue included), p50.
    embed_p50_ms: f64,
    /// Per request, latency from send minus that request's `embed` phase, p50: what the client
    /// waits for beyond the embedding.
    beyond_embed_p50_ms: f64,
    /// Per request, `x-deja-overhead-ms` minus the `embed` phase, p50: deja's own non-embedding
    /// time, without the client-side hop.
    own_beyond_embed_p50_ms: f64,
}

struct Outcome {
    kind: Kind,
    /// From when the request was due (what a user sees, queueing included).
    latency: Duration,
    /// From when the client task started sending (the client's own scheduling lag removed).
    service: Duration,
    ok: bool,
    cache: Option<String>,
    /// `x-deja-overhead-ms`, when deja answered.
    overhead_ms: Option<f64>,
    /// The `embed` phase of `Server-Timing`, when the request was embedded.
    embed_ms: Option<f64>,
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
        let settings = deja::embed::EmbedSettings::from(&config.embedding);
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
        while state.engine().map(|e| e.entries()).unwrap_or(0) < TOPICS.len()
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
                        "overhead" if i % 2 == 0 => Kind::Miss,
                        "overhead" => Kind::Direct,
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
            let (wall, outcomes) =
                run_open_loop(&client_rt, &client, &deja_url, &direct_url, rate, plan);
            let parts: Vec<(String, Vec<Outcome>)> = if workload == "overhead" {
                let (miss, direct) = outcomes.into_iter().partition(|o| o.kind == Kind::Miss);
                vec![
                    ("overhead/miss".to_string(), miss),
                    ("overhead/direct".to_string(), direct),
                ]
            } else {
                vec![(workload.clone(), outcomes)]
            };
            for (name, outcomes) in parts {
                let row = summarize(&name, rate, args.duration, (wall, outcomes));
                println!(
                "{:<9} offered {:>6.0}/s achieved {:>6.0}/s  n={:<6} err={:<4} exact={:<5} semantic={:<5} miss={:<5} p50 {:>7.2} ms  p90 {:>7.2}  p99 {:>7.2}  p99.9 {:>7.2}  max {:>7.2} | from send: p50 {:>6.2} p99 {:>6.2} | deja's own: p50 {:>6.2} p99 {:>6.2} | embed p50 {:>6.2}",
                row.workload, row.offered_rps, row.achieved_rps, row.requests, row.errors,
                row.exact_hits, row.semantic_hits, row.misses, row.p50_ms, row.p90_ms, row.p99_ms,
                row.p999_ms, row.max_ms, row.service_p50_ms, row.service_p99_ms,
                row.overhead_p50_ms, row.overhead_p99_ms, row.embed_p50_ms
            );
                rows.push(row);
            }
            // Let pending inserts land before the next run.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    print_miss_overhead(&rows);
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

/// What one request came back with: success, `x-deja-cache`, `x-deja-overhead-ms`.
struct Reply {
    ok: bool,
    cache: Option<String>,
    overhead_ms: Option<f64>,
    embed_ms: Option<f64>,
}

async fn send(client: &reqwest::Client, url: &str, text: &str) -> Reply {
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]});
    match client
        .post(url)
        .header(
            "cache-control",
            if std::env::var("DIAG_NOSTORE").is_ok() {
                "no-store"
            } else {
                "max-age=3600"
            },
        )
        .bearer_auth("bench")
        .json(&body)
        .send()
        .await
    {
        Ok(r) => {
            let header = |name: &str| {
                r.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let cache = header("x-deja-cache");
            let overhead_ms = header("x-deja-overhead-ms").and_then(|v| v.parse().ok());
            let embed_ms = header("server-timing").and_then(|v| {
                server_timing(&v)
                    .into_iter()
                    .find_map(|(name, dur)| if name == "embed" { dur } else { None })
            });
            let ok = r.status().is_success() && r.bytes().await.is_ok();
            Reply {
                ok,
                cache,
                overhead_ms,
                embed_ms,
            }
        }
        Err(_) => Reply {
            ok: false,
            cache: None,
            overhead_ms: None,
            embed_ms: None,
        },
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
            let reply = send(&client, &url, &text).await;
            Outcome {
                kind,
                latency: due.elapsed(),
                service: sent.elapsed(),
                ok: reply.ok,
                cache: reply.cache,
                overhead_ms: reply.overhead_ms,
                embed_ms: reply.embed_ms,
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
    let mut overhead: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.ok)
        .filter_map(|o| o.overhead_ms)
        .map(|ms| Duration::from_secs_f64(ms / 1e3))
        .collect();
    overhead.sort();
    let ms = |ms: f64| Duration::from_secs_f64(ms.max(0.0) / 1e3);
    let mut embed: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.ok)
        .filter_map(|o| o.embed_ms)
        .map(ms)
        .collect();
    embed.sort();
    let mut beyond: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.ok)
        .filter_map(|o| Some(o.service.saturating_sub(ms(o.embed_ms?))))
        .collect();
    beyond.sort();
    let mut own_beyond: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.ok)
        .filter_map(|o| Some(ms(o.overhead_ms? - o.embed_ms?)))
        .collect();
    own_beyond.sort();
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
        overhead_p50_ms: pct(&overhead, 0.50),
        overhead_p99_ms: pct(&overhead, 0.99),
        embed_p50_ms: pct(&embed, 0.50),
        beyond_embed_p50_ms: pct(&beyond, 0.50),
        own_beyond_embed_p50_ms: pct(&own_beyond, 0.50),
    }
}

/// The issue-5 miss-overhead figure for every rate with both a `miss` and a `direct` run:
/// p50 over misses of (latency from send − that request's embedding), minus the direct p50 from
/// send. The target is <= 1 ms.
fn print_miss_overhead(rows: &[Row]) {
    for (miss_name, direct_name) in [("miss", "direct"), ("overhead/miss", "overhead/direct")] {
        for miss in rows.iter().filter(|r| r.workload == miss_name) {
            let Some(direct) = rows
                .iter()
                .find(|r| r.workload == direct_name && r.offered_rps == miss.offered_rps)
            else {
                continue;
            };
            println!(
            "{miss_name} overhead at {:.0}/s: deja {:.2} ms - direct {:.2} ms = {:.2} ms, of which embedding (p50) {:.2} ms; beyond the embedding {:.2} ms",
            miss.offered_rps,
            miss.service_p50_ms,
            direct.service_p50_ms,
            miss.service_p50_ms - direct.service_p50_ms,
            miss.embed_p50_ms,
            miss.beyond_embed_p50_ms - direct.service_p50_ms
        );
            println!(
            "    deja's own time beyond each request's embedding, p50 {:.2} ms (no baseline needed)",
            miss.own_beyond_embed_p50_ms
        );
        }
    }
}
