//! The PostgreSQL + pgvector backend at scale (issue 14): a table of `--scopes` × `--per-scope`
//! entries, then in-scope search latency p50/p99 and recall@1 against an exact scan of the
//! query's scope at each `--ef-search`, which plan PostgreSQL chose, insert throughput through
//! the backend into a table of that size, and the time a new replica needs to serve its first
//! hit. Each search line also says what it decided at `--floor` (the lowest similarity the
//! decision rule serves): of the queries whose scope holds a servable entry, how often the
//! search found one and how often the nearest. `--two-pass 40:100` measures lookups that search
//! at `ef_search` 40 first and at 100 only when the first found nothing at the floor
//! (`cache.postgres.first_ef_search`, what deja's lookups do).
//!
//! ```sh
//! # one scope of 1M entries, then 10,000 scopes of 100 (real MiniLM vectors)
//! DEJA_BENCH_PG_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo bench --bench pg_scale -- --scopes 1 --per-scope 1000000
//! DEJA_BENCH_PG_URL=… cargo bench --bench pg_scale -- --scopes 10000 --per-scope 100
//! ```
//!
//! Vectors (`--source`):
//! - `real` (default): the corpus `index_scale` uses (benches/support/corpus.rs: the shared
//!   datasets' texts, then word windows of them), embedded with all-MiniLM-L6-v2 and cached,
//!   so both benches run on the same vectors. Every `n`-th text is held out as a query, never
//!   inserted, exactly as in `index_scale`; entry `j` goes to scope `j % scopes`, a query to a
//!   random scope.
//! - `synth`: clustered synthetic vectors ([`deja::index::synth`]), queries are perturbed
//!   stored vectors.
//!
//! Loading (`--load`): `copy` (default) bulk-loads the rows with `COPY … (FORMAT binary)` into
//! the backend's own schema with its HNSW index dropped, then builds exactly the index the
//! migration creates ([`schema::embedding_index`]) and runs `ANALYZE`, as an operator moving a
//! big cache in would; `backend` inserts one autocommitted statement per entry, as `deja serve`
//! writes (~200–500/s on 2 vCPUs: hours for a million). Either way `--insert-sample` more
//! entries are then inserted through the backend and timed. `--skip-insert` searches what an
//! earlier run loaded (same arguments). `DROP SCHEMA deja_bench CASCADE` when done.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use deja::bench::embeddings::Vectors;
use deja::cache::backend::postgres::schema::{self, Names, EMBEDDING_INDEX};
use deja::cache::backend::{Backend, Near, PostgresBackend};
use deja::config::PostgresConfig;
use deja::index::synth::Synth;
use deja::store::{exact_key, CachedResponse, FinishReason, NewEntry, ScopeId};
use rayon::prelude::*;

#[path = "support/corpus.rs"]
mod corpus;

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
    /// real (MiniLM vectors of the shared datasets' corpus) | synth
    #[arg(long, default_value = "real")]
    source: String,
    /// Shared datasets directory (`--source real`).
    #[arg(long, default_value = "../shared/datasets")]
    datasets: std::path::PathBuf,
    /// Corpus texts embedded (cached once; the same default as `index_scale`, so both reuse
    /// one embedding run).
    #[arg(long, default_value_t = corpus::DEFAULT_CORPUS)]
    corpus: usize,
    /// Dimensions of synthetic vectors.
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// copy | backend
    #[arg(long, default_value = "copy")]
    load: String,
    /// Entries inserted through the backend after the load, timed.
    #[arg(long, default_value_t = 2000)]
    insert_sample: usize,
    /// Writers inserting at once.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// `hnsw.ef_search` values searched with (`cache.postgres.ef_search`).
    #[arg(long, default_value = "40,100,200", value_delimiter = ',')]
    ef_search: Vec<usize>,
    /// Lookups with two searches (`first_ef_search:ef_search` pairs, e.g. `40:100`): the first
    /// with less effort, the second only when the first found nothing at `--floor` or above
    /// (`cache.postgres.first_ef_search`).
    #[arg(long, value_delimiter = ',')]
    two_pass: Vec<String>,
    /// Lowest similarity a lookup can serve (the decision rule's floor; deja's default rule
    /// serves from 0.90 up with the verifier).
    #[arg(long, default_value_t = 0.90)]
    floor: f32,
    /// `maintenance_work_mem` for the index build after a `copy` load.
    #[arg(long, default_value = "6GB")]
    build_memory: String,
    /// Search what an earlier run loaded (same arguments) instead of loading again.
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

/// The rows: entry `j` (scope `j % scopes`) and the held-out queries.
struct Data {
    dim: usize,
    model_id: String,
    entries: Vec<(String, Vec<f32>)>,
    /// (scope, vector)
    queries: Vec<(usize, Vec<f32>)>,
}

fn data(args: &Args) -> anyhow::Result<Data> {
    let n = args.scopes * args.per_scope;
    let mut pick = Synth::new(15, 8, 1);
    match args.source.as_str() {
        "real" => {
            let total = args.corpus.max(n + args.queries);
            let (v, model_id): (Vectors, String) = corpus::embed(&args.datasets, total)?;
            let (entries, held) = corpus::split(total, args.queries);
            // Distinct texts can share an exact key (it ignores case, spacing and trailing
            // punctuation; about 0.3% of the first million do): such a text keeps its vector
            // under a prompt made unique with a suffix, so the table holds exactly `n` rows.
            let mut keys = std::collections::HashSet::new();
            let mut renamed = 0;
            let entries: Vec<(String, Vec<f32>)> = entries
                .iter()
                .take(n)
                .map(|&i| {
                    let mut prompt = v.texts.list[i].clone();
                    while !keys.insert(exact_key(ScopeId([0; 16]), &prompt)) {
                        prompt.push_str(" (again)");
                        renamed += 1;
                    }
                    (prompt, v.get(i).to_vec())
                })
                .collect();
            eprintln!("{renamed} prompts suffixed to keep their exact keys distinct");
            anyhow::ensure!(
                entries.len() == n,
                "the corpus is too small: raise --corpus"
            );
            Ok(Data {
                dim: v.dim,
                model_id,
                entries,
                queries: held
                    .iter()
                    .map(|&i| (pick.pick(args.scopes), v.get(i).to_vec()))
                    .collect(),
            })
        }
        "synth" => {
            let mut synth = Synth::new(14, args.dim, 200);
            let vectors = synth.vectors(n);
            let queries = (0..args.queries)
                .map(|_| {
                    let s = synth.pick(args.scopes);
                    let member = synth.pick(args.per_scope) * args.scopes + s;
                    (s, synth.perturb(&vectors[member], 0.03))
                })
                .collect();
            Ok(Data {
                dim: args.dim,
                model_id: format!("bench/synth-{}", args.dim),
                entries: vectors
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (format!("bench prompt number {i}"), v))
                    .collect(),
                queries,
            })
        }
        other => anyhow::bail!("--source {other}: expected real or synth"),
    }
}

fn config(args: &Args, ef_search: usize, first_ef_search: usize) -> PostgresConfig {
    PostgresConfig {
        url_env: args.url_env.clone(),
        pool_size: (args.writers + 2).max(4),
        schema: args.schema.clone(),
        statement_timeout: Duration::from_secs(60),
        ef_search,
        first_ef_search,
        ..PostgresConfig::default()
    }
}

/// A backend whose every search is one at `ef_search`.
fn open(args: &Args, d: &Data, ef_search: usize) -> PostgresBackend {
    open_two(args, d, ef_search, 0)
}

fn open_two(args: &Args, d: &Data, ef_search: usize, first: usize) -> PostgresBackend {
    let env = |name: &str| std::env::var(name).ok();
    PostgresBackend::open(&config(args, ef_search, first), &env, &d.model_id, d.dim, 0)
        .expect("open postgres")
}

/// What the searches decided against the exact references: recall@1, and for the queries
/// whose scope holds an entry at the floor or above (a servable neighbour), how often the
/// search found one (the hit is kept) and how often it found the nearest itself.
#[derive(Default)]
struct Decisions {
    found: usize,
    servable: usize,
    kept: usize,
    nearest: usize,
    /// Found something at the floor or above although the scope's best is below it: cannot
    /// happen (a search never invents a neighbour); counted to show it.
    invented: usize,
}

impl Decisions {
    fn add(&mut self, got: Option<f32>, best: f32, floor: f32) {
        let top = got.is_some_and(|g| g >= best - 1e-4);
        self.found += top as usize;
        let hit = got.is_some_and(|g| g >= floor);
        if best >= floor {
            self.servable += 1;
            self.kept += hit as usize;
            self.nearest += top as usize;
        } else {
            self.invented += hit as usize;
        }
    }

    fn line(&self, n: usize, floor: f32) -> String {
        format!(
            "recall@1 {:.4} ({}/{n}); of {} queries with a neighbour at {floor} or above: \
             hit kept {:.4}, nearest served {:.4}; hits above the scope's best: {}",
            self.found as f64 / n as f64,
            self.found,
            self.servable,
            self.kept as f64 / self.servable.max(1) as f64,
            self.nearest as f64 / self.servable.max(1) as f64,
            self.invented
        )
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// A dot product the compiler vectorizes (eight independent sums).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Bulk load: drop the HNSW index, `COPY` every row in binary, build the index the migration
/// builds, `ANALYZE`. Prints each step's time and the table's size.
fn copy_load(args: &Args, d: &Data) -> anyhow::Result<()> {
    use pgvector::Vector;
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::{Json, ToSql};

    let names = Names::new(&args.schema);
    let e = names.entries.clone();
    let url = std::env::var(&args.url_env)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "DROP INDEX IF EXISTS {}.{EMBEDDING_INDEX}; TRUNCATE {e}",
                args.schema
            ))
            .await?;
        let types = client
            .prepare(
                "SELECT $1::bytea, $2::bytea, $3::text, $4::vector, $5::jsonb, $6::int8, \
                 $7::int8, $8::int8",
            )
            .await?
            .params()
            .to_vec();
        let t = Instant::now();
        let sink = client
            .copy_in(&format!(
                "COPY {e} (scope, exact_key, prompt, embedding, response, created_ms, \
                 expires_ms, last_hit_ms) FROM STDIN (FORMAT binary)"
            ))
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        futures::pin_mut!(writer);
        let resp = answer();
        let now = deja::store::now_ms() as i64;
        let far = i64::MAX / 4;
        for (j, (prompt, v)) in d.entries.iter().enumerate() {
            let s = scope(j % args.scopes);
            let key = exact_key(s, prompt);
            let vector = Vector::from(v.clone());
            let row: [&(dyn ToSql + Sync); 8] = [
                &&s.0[..],
                &&key[..],
                prompt,
                &vector,
                &Json(&resp),
                &now,
                &far,
                &now,
            ];
            writer.as_mut().write(&row).await?;
            if (j + 1) % 200_000 == 0 {
                eprintln!(
                    "  copy: {} rows ({:.0}/s)",
                    j + 1,
                    (j + 1) as f64 / t.elapsed().as_secs_f64()
                );
            }
        }
        writer.as_mut().finish().await?;
        let copy_secs = t.elapsed().as_secs_f64();
        println!(
            "load: {} rows by COPY in {copy_secs:.1}s ({:.0} rows/s, HNSW index dropped)",
            d.entries.len(),
            d.entries.len() as f64 / copy_secs
        );
        let t = Instant::now();
        client
            .batch_execute(&format!(
                "SET maintenance_work_mem = '{}'; SET max_parallel_maintenance_workers = 1; {}",
                args.build_memory,
                schema::embedding_index(&names)
            ))
            .await?;
        println!(
            "index: HNSW (the migration's, m 16, ef_construction 128) built in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        client.batch_execute(&format!("ANALYZE {e}")).await?;
        println!("analyze: {:.1}s", t.elapsed().as_secs_f64());
        let row = client
            .query_one(
                &format!(
                    "SELECT pg_table_size('{e}'), pg_indexes_size('{e}'), \
                     pg_relation_size('{}.{EMBEDDING_INDEX}')",
                    args.schema
                ),
                &[],
            )
            .await?;
        let mib = |i: usize| row.get::<_, i64>(i) as f64 / (1 << 20) as f64;
        println!(
            "size: table {:.0} MiB, indexes {:.0} MiB (HNSW {:.0} MiB), {:.2} KiB per entry in all",
            mib(0),
            mib(1),
            mib(2),
            (mib(0) + mib(1)) * 1024.0 / d.entries.len() as f64
        );
        anyhow::Ok(())
    })?;
    Ok(())
}

fn backend_load(args: &Args, backend: &PostgresBackend, d: &Data) {
    let done = AtomicUsize::new(0);
    let started = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.writers)
        .build()
        .expect("threads");
    pool.install(|| {
        d.entries
            .par_iter()
            .enumerate()
            .for_each(|(j, (prompt, v))| {
                backend
                    .insert(NewEntry {
                        scope: scope(j % args.scopes),
                        prompt: prompt.clone(),
                        embedding: Some(v.clone()),
                        response: answer(),
                        created_ms: 1,
                        expires_ms: u64::MAX / 2,
                        namespace: None,
                    })
                    .expect("insert");
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(50_000) {
                    eprintln!(
                        "  {n} inserted, {:.0}/s",
                        n as f64 / started.elapsed().as_secs_f64()
                    );
                }
            })
    });
    let secs = started.elapsed().as_secs_f64();
    println!(
        "load: {} entries through the backend in {secs:.1}s = {:.0} entries/s ({} writers)",
        d.entries.len(),
        d.entries.len() as f64 / secs,
        args.writers
    );
}

/// `insert_sample` entries through the backend (as `deja serve` writes) into a scope of their
/// own, so the searched scopes and their references stay as loaded.
fn insert_sample(args: &Args, backend: &PostgresBackend, d: &Data) {
    if args.insert_sample == 0 {
        return;
    }
    let started = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.writers)
        .build()
        .expect("threads");
    let tag = deja::store::now_ms();
    pool.install(|| {
        (0..args.insert_sample).into_par_iter().for_each(|i| {
            let (prompt, v) = &d.entries[i % d.entries.len()];
            backend
                .insert(NewEntry {
                    scope: ScopeId::from_bytes(b"bench-insert-sample"),
                    prompt: format!("{tag} {i} {prompt}"),
                    embedding: Some(v.clone()),
                    response: answer(),
                    created_ms: 1,
                    expires_ms: u64::MAX / 2,
                    namespace: None,
                })
                .expect("insert");
        })
    });
    let secs = started.elapsed().as_secs_f64();
    println!(
        "insert: {} entries through the backend into a table of {} in {secs:.1}s = {:.0} \
         entries/s ({} writers, one autocommitted statement each)",
        args.insert_sample,
        d.entries.len(),
        args.insert_sample as f64 / secs,
        args.writers
    );
}

/// The first line of each plan node, indented as EXPLAIN prints it.
fn plan_nodes(plan: &str) -> String {
    plan.lines()
        .filter(|l| {
            (l.contains("Scan") || l.contains("Sort") || l.contains("Limit")) && !l.contains("Key:")
        })
        .map(|l| l.split("  (cost").next().unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Every query through `search`, timed, against the exact references `best`: the sorted
/// times, the decisions and the rows of another scope returned.
fn search_all(
    d: &Data,
    best: &[f32],
    floor: f32,
    search: impl Fn(ScopeId, &[f32]) -> Result<Vec<Near>, deja::cache::CacheError>,
) -> anyhow::Result<(Vec<Duration>, Decisions, usize)> {
    let mut times = Vec::with_capacity(d.queries.len());
    let (mut decided, mut foreign) = (Decisions::default(), 0);
    for ((s, q), want) in d.queries.iter().zip(best) {
        let t = Instant::now();
        let got = search(scope(*s), q)?;
        times.push(t.elapsed());
        foreign += got
            .iter()
            .filter(|n| n.entry.as_ref().is_some_and(|e| e.scope != scope(*s)))
            .count();
        // Found when the returned entry is as similar as the best of the scope (distinct
        // texts can share a vector: MiniLM is uncased).
        decided.add(got.first().map(|n| n.similarity), *want, floor);
    }
    times.sort();
    Ok((times, decided, foreign))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let t = Instant::now();
    let d = data(&args)?;
    eprintln!(
        "{} entries in {} scopes, {} queries ({:.1}s)",
        d.entries.len(),
        args.scopes,
        d.queries.len(),
        t.elapsed().as_secs_f64()
    );

    let backend = open(&args, &d, args.ef_search[0]);
    if !args.skip_insert {
        match args.load.as_str() {
            "copy" => copy_load(&args, &d)?,
            "backend" => backend_load(&args, &backend, &d),
            other => anyhow::bail!("--load {other}: expected copy or backend"),
        }
        insert_sample(&args, &backend, &d);
    }
    drop(backend);

    // The reference: an exact scan of the query's scope (best similarity).
    let t = Instant::now();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); args.scopes];
    for j in 0..d.entries.len() {
        members[j % args.scopes].push(j);
    }
    let best: Vec<f32> = d
        .queries
        .par_iter()
        .map(|(s, q)| {
            members[*s]
                .iter()
                .map(|&j| dot(&d.entries[j].1, q))
                .fold(f32::MIN, f32::max)
        })
        .collect();
    eprintln!("exact references in {:.1}s", t.elapsed().as_secs_f64());

    for &ef in &args.ef_search {
        let backend = open(&args, &d, ef);
        let (s0, q0) = &d.queries[0];
        let plan = backend.explain_nearest(scope(*s0), q0)?;
        let (times, decided, foreign) =
            search_all(&d, &best, args.floor, |s, q| backend.nearest(s, q, 1))?;
        println!(
            "search ef_search={ef}: {}, p50 {:.2} ms, p99 {:.2} ms, rows of another scope: \
             {foreign}; plan: {}",
            decided.line(d.queries.len(), args.floor),
            pct(&times, 0.5),
            pct(&times, 0.99),
            plan_nodes(&plan)
        );
    }

    for pair in &args.two_pass {
        let (first, full) = pair
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("--two-pass {pair}: expected FIRST:FULL"))?;
        let backend = open_two(&args, &d, full, first);
        let before = backend.stats().second_searches;
        let (times, decided, foreign) = search_all(&d, &best, args.floor, |s, q| {
            backend.nearest_reaching(s, q, 1, args.floor)
        })?;
        let again = backend.stats().second_searches - before;
        println!(
            "two searches first_ef_search={first} ef_search={full} floor {}: {}, p50 {:.2} ms, \
             p99 {:.2} ms, searched again {again}/{}, rows of another scope: {foreign}",
            args.floor,
            decided.line(d.queries.len(), args.floor),
            pct(&times, 0.5),
            pct(&times, 0.99),
            d.queries.len()
        );
    }

    // A new replica: open (connect, migration check, count) and serve the first hit.
    let t = Instant::now();
    let fresh = open(&args, &d, args.ef_search[0]);
    let opened = t.elapsed();
    let (s, q) = &d.queries[0];
    let hit = fresh.nearest(scope(*s), q, 1)?;
    println!(
        "new replica: opened in {:.0} ms, first hit after {:.0} ms ({} result)",
        opened.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3,
        hit.len()
    );
    Ok(())
}
