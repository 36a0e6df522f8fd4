//! The PostgreSQL + pgvector backend at scale (issue 14): insert throughput through the backend
//! (one autocommitted statement per entry, as `deja serve` writes), then in-scope search
//! latency p50/p99 and recall@1 against an exact scan of the scope, then the time a new replica
//! needs to open the backend and serve its first hit.
//!
//! ```sh
//! DEJA_BENCH_PG_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo bench --bench pg_scale -- --scopes 1 --per-scope 100000 --queries 1000
//! ```
//!
//! Vectors are synthetic and clustered ([`deja::index::synth`], 384 dimensions like MiniLM):
//! embedding a million texts takes hours on 2 vCPUs, and what the index's recall depends on
//! (dimension, clustering, scope sizes) is what the generator controls. Queries are perturbed
//! stored vectors (cosine ≈ 0.9 to their source, a paraphrase), each in a random scope; the
//! exact answer is a scan of that scope's vectors held here. The schema (`--schema`) stays for
//! `--skip-insert` reruns: `DROP SCHEMA deja_bench CASCADE` when done.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use deja::cache::backend::{Backend, PostgresBackend};
use deja::config::PostgresConfig;
use deja::index::synth::Synth;
use deja::store::{CachedResponse, FinishReason, NewEntry, ScopeId};
use rayon::prelude::*;

#[derive(Parser)]
struct Args {
    /// The environment variable holding the database URL.
    #[arg(long, default_value = "DEJA_BENCH_PG_URL")]
    url_env: String,
    #[arg(long, default_value = "deja_bench")]
    schema: String,
    #[arg(long, default_value_t = 1)]
    scopes: usize,
    #[arg(long, default_value_t = 100_000)]
    per_scope: usize,
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// Writers inserting at once.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Search what an earlier run inserted (same arguments) instead of inserting again.
    #[arg(long)]
    skip_insert: bool,
    /// Accept `cargo bench`'s own flag.
    #[arg(long, hide = true)]
    bench: bool,
}

fn scope(i: usize) -> ScopeId {
    ScopeId::from_bytes(format!("bench-scope-{i}").as_bytes())
}

fn answer() -> CachedResponse {
    CachedResponse {
        model: "m".into(),
        content: "a cached answer of about the usual length for a chatbot reply".into(),
        finish_reason: FinishReason::Stop,
        usage: None,
        provider: "bench".into(),
        system_fingerprint: None,
        tool_calls: Vec::new(),
    }
}

fn open(args: &Args) -> PostgresBackend {
    let cfg = PostgresConfig {
        url_env: args.url_env.clone(),
        pool_size: (args.writers + 2).max(4),
        schema: args.schema.clone(),
        statement_timeout: Duration::from_secs(60),
        ..PostgresConfig::default()
    };
    let env = |name: &str| std::env::var(name).ok();
    PostgresBackend::open(&cfg, &env, "bench/synth-384", args.dim, 0).expect("open postgres")
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    let args = Args::parse();
    let n = args.scopes * args.per_scope;
    // Vectors in insertion order: entry i is in scope i % scopes.
    let mut synth = Synth::new(14, args.dim, 200);
    let started = Instant::now();
    let vectors = synth.vectors(n);
    eprintln!(
        "{n} vectors generated in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let backend = open(&args);
    if !args.skip_insert {
        let done = AtomicUsize::new(0);
        let started = Instant::now();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(args.writers)
            .build()
            .unwrap();
        pool.install(|| {
            vectors.par_iter().enumerate().for_each(|(i, v)| {
                backend
                    .insert(NewEntry {
                        scope: scope(i % args.scopes),
                        prompt: format!("bench prompt number {i}"),
                        embedding: Some(v.clone()),
                        response: answer(),
                        created_ms: 1,
                        expires_ms: u64::MAX / 2,
                        namespace: None,
                    })
                    .expect("insert");
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d.is_multiple_of(50_000) {
                    eprintln!(
                        "  {d} inserted, {:.0}/s",
                        d as f64 / started.elapsed().as_secs_f64()
                    );
                }
            })
        });
        let secs = started.elapsed().as_secs_f64();
        println!(
            "insert: {n} entries ({} scopes x {}) in {secs:.1}s = {:.0} entries/s ({} writers)",
            args.scopes,
            args.per_scope,
            n as f64 / secs,
            args.writers
        );
    }

    // Queries: a perturbed stored vector of a random scope; the reference is an exact scan
    // of that scope.
    let queries: Vec<(usize, Vec<f32>)> = (0..args.queries)
        .map(|_| {
            let s = synth.pick(args.scopes);
            let member = synth.pick(args.per_scope) * args.scopes + s;
            (s, synth.perturb(&vectors[member], 0.03))
        })
        .collect();
    let exact: Vec<usize> = queries
        .par_iter()
        .map(|(s, q)| {
            (0..args.per_scope)
                .map(|j| j * args.scopes + s)
                .max_by(|a, b| {
                    let dot = |i: usize| vectors[i].iter().zip(q).map(|(x, y)| x * y).sum::<f32>();
                    dot(*a).total_cmp(&dot(*b))
                })
                .unwrap()
        })
        .collect();
    let mut times = Vec::with_capacity(queries.len());
    let mut found = 0;
    let mut foreign = 0;
    for ((s, q), want) in queries.iter().zip(&exact) {
        let t = Instant::now();
        let got = backend.nearest(scope(*s), q, 1).expect("search");
        times.push(t.elapsed());
        foreign += got
            .iter()
            .filter(|n| n.entry.as_ref().is_some_and(|e| e.scope != scope(*s)))
            .count();
        let want_prompt = format!("bench prompt number {want}");
        found += got
            .first()
            .and_then(|n| n.entry.as_ref())
            .is_some_and(|e| e.prompt == want_prompt) as usize;
    }
    times.sort();
    println!(
        "search: recall@1 {:.4} ({found}/{}), p50 {:.2} ms, p99 {:.2} ms, rows of another scope: {foreign}",
        found as f64 / queries.len() as f64,
        queries.len(),
        pct(&times, 0.5),
        pct(&times, 0.99)
    );
    drop(backend);

    // A new replica: open (connect, migrate check, count) and serve the first hit.
    let t = Instant::now();
    let fresh = open(&args);
    let opened = t.elapsed();
    let (s, q) = &queries[0];
    let hit = fresh.nearest(scope(*s), q, 1).expect("search");
    println!(
        "new replica: opened in {:.0} ms, first hit after {:.0} ms ({} result)",
        opened.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3,
        hit.len()
    );
    drop(fresh);
}
