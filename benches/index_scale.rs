//! The index at scale, on real MiniLM embeddings: one scope of `--entries` cached answers
//! (1,000,000 by default), built, snapshotted, and restarted the way `deja serve` restarts.
//!
//! ```sh
//! cargo bench --bench index_scale -- [--entries 1000000] [--queries 2000] [--phase all]
//! ```
//!
//! Phases (each reuses what an earlier run left in `--work`, default
//! `~/.cache/deja/bench-index/<entries>`):
//! 1. `embed`: a corpus of `--corpus` distinct real texts: every text of the shared datasets
//!    (133,689), then word windows of them (4–12 words) round-robin. They are embedded with the
//!    default model (cached like `deja bench`'s embeddings; ~40 min for 1M on 2 vCPUs). A run
//!    uses the first `entries + queries` texts; every `n`-th of those is held out as a query,
//!    never inserted. A query's nearest neighbours are often other windows of the same
//!    sentence, as a cache's paraphrases are.
//! 2. `build`: a sled store holding every entry in one scope, and its HNSW graph built with
//!    the default [`IndexConfig`] (parallel insert), then snapshotted as `deja serve` does at
//!    shutdown. Timed: store writes, graph build (= the "rebuild" a restart without a snapshot
//!    pays), snapshot.
//! 3. `restart`: a fresh process state opens the store and restores the index from the
//!    snapshot ([`deja::cache::CacheEngine::open_index`]), timed, then searches the held-out
//!    queries at several `ef` values: latency p50/p99 and recall@1 against an exact scan.
//!    Peak RSS (VmHWM) is printed at the end.
//!
//! Everything runs on this machine's cores; figures go to docs/benchmarks.md with the machine.

use clap::Parser;
use deja::bench::embeddings::{default_dir, Vectors};
use deja::cache::restore::{load_index, snapshot_tag};
use deja::index::{FlatIndex, HnswIndex, IndexConfig, ScopedIndex, VectorSearch, VectorWrite};
use deja::store::{
    now_ms, CachedResponse, EntryId, FinishReason, NewEntry, ScopeId, Store, StoreConfig,
};
use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "support/corpus.rs"]
mod corpus;
use corpus::split;

#[derive(Parser, Debug)]
struct Args {
    /// Entries in the one scope.
    #[arg(long, default_value_t = 1_000_000)]
    entries: usize,
    /// Held-out query texts (searched, never inserted).
    #[arg(long, default_value_t = 2_000)]
    queries: usize,
    /// Texts embedded (cached once): smaller runs use the first `entries + queries` of them,
    /// so a 100k run reuses the 1M run's embeddings.
    #[arg(long, default_value_t = corpus::DEFAULT_CORPUS)]
    corpus: usize,
    /// embed | build | restart | all
    #[arg(long, default_value = "all")]
    phase: String,
    /// Where the store and snapshot live between phases.
    #[arg(long)]
    work: Option<PathBuf>,
    /// Shared datasets directory.
    #[arg(long, default_value = "../shared/datasets")]
    datasets: PathBuf,
    /// Rebuild the store and graph even if `--work` holds them.
    #[arg(long)]
    fresh: bool,
    /// `ef` values the restart phase searches with.
    #[arg(long, default_value = "16,32,64,128", value_delimiter = ',')]
    ef: Vec<usize>,
    /// criterion passes `--bench`; accepted and ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn embed_phase(args: &Args) -> anyhow::Result<(Vectors, String)> {
    corpus::embed(&args.datasets, args.corpus.max(args.entries + args.queries))
}

const SCOPE: &[u8] = b"bench-index-scale";

fn store_config(work: &Path, model_id: &str, dim: usize) -> StoreConfig {
    StoreConfig {
        max_entries: 0,
        flush_every: Duration::from_secs(1),
        ..StoreConfig::new(work.join("store"), model_id, dim)
    }
}

fn snapshot_root(work: &Path) -> PathBuf {
    // Where `deja serve` keeps it: beside the store, in the cache directory.
    work.join("store").join(deja::index::snapshot::DIR_NAME)
}

/// A cached answer of a realistic size (~600 bytes), different for every entry.
fn answer(i: usize, prompt: &str) -> CachedResponse {
    let mut content = format!("Answer {i} to \"{prompt}\". ");
    while content.len() < 600 {
        content.push_str("A cached completion keeps its full text, usage and model. ");
    }
    CachedResponse {
        model: "gpt-4o-mini".into(),
        content,
        finish_reason: FinishReason::Stop,
        usage: None,
        provider: "bench".into(),
        system_fingerprint: None,
        tool_calls: Vec::new(),
    }
}

fn build_phase(args: &Args, work: &Path, v: &Vectors, model_id: &str) -> anyhow::Result<()> {
    let gt_file = work.join("ground-truth.bin");
    if !args.fresh && gt_file.exists() && snapshot_root(work).join("CURRENT").exists() {
        eprintln!("build: reusing {}", work.display());
        return Ok(());
    }
    if work.exists() {
        std::fs::remove_dir_all(work)?;
    }
    std::fs::create_dir_all(work)?;
    let (entries, held) = split(args.entries + args.queries, args.queries);
    let scope = ScopeId::from_bytes(SCOPE);

    let t = Instant::now();
    let store = Store::open(&store_config(work, model_id, v.dim))?;
    let now = now_ms();
    let mut ids: Vec<EntryId> = Vec::with_capacity(entries.len());
    for (n, &i) in entries.iter().enumerate() {
        let prompt = &v.texts.list[i];
        let out = store.insert(NewEntry {
            scope,
            prompt: prompt.clone(),
            embedding: Some(v.get(i).to_vec()),
            response: answer(i, prompt),
            created_ms: now,
            expires_ms: now + 365 * 86_400_000,
            namespace: None,
        })?;
        ids.push(out.id);
        if (n + 1) % 200_000 == 0 {
            eprintln!(
                "store: {} entries ({:.1}s)",
                n + 1,
                t.elapsed().as_secs_f64()
            );
        }
    }
    store.flush()?;
    let store_secs = t.elapsed().as_secs_f64();
    println!(
        "store: {} entries written and flushed in {store_secs:.1}s ({:.0}/s), {:.0} MiB on disk",
        ids.len(),
        ids.len() as f64 / store_secs,
        store.size_on_disk()? as f64 / (1 << 20) as f64
    );

    // Ground truth for recall: the exact nearest entry of every held-out query.
    let t = Instant::now();
    let mut flat = FlatIndex::new(v.dim);
    for (&i, &id) in entries.iter().zip(&ids) {
        flat.insert(id, v.get(i))?;
    }
    let tops: Vec<_> = held
        .par_iter()
        .map(|&q| flat.search(v.get(q), 1))
        .collect::<Result<_, _>>()?;
    let mut gt = Vec::with_capacity(held.len() * 12);
    for top in tops {
        let best = top
            .first()
            .ok_or_else(|| anyhow::anyhow!("empty flat search"))?;
        gt.extend_from_slice(&best.id.to_le_bytes());
        gt.extend_from_slice(&best.similarity.to_le_bytes());
    }
    drop(flat);
    println!(
        "ground truth: {} exact searches in {:.1}s",
        held.len(),
        t.elapsed().as_secs_f64()
    );

    // The graph, built in parallel on every core (what a rebuild costs at best: the serving
    // path's background promotion inserts on one thread).
    let cfg = IndexConfig {
        dim: v.dim,
        ..IndexConfig::default()
    };
    let t = Instant::now();
    let mut h = HnswIndex::new(&cfg, ids.len());
    let chunk = 50_000;
    for (c, part) in entries.chunks(chunk).enumerate() {
        let items: Vec<(EntryId, &[f32])> = part
            .iter()
            .zip(&ids[c * chunk..])
            .map(|(&i, &id)| (id, v.get(i)))
            .collect();
        h.bulk_insert(&items)?;
        let done = (c * chunk + part.len()) as f64;
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "graph: {done:.0}/{} ({:.0}/s, ~{:.0}s left)",
            ids.len(),
            done / secs,
            (ids.len() as f64 - done) / (done / secs)
        );
    }
    let build_secs = t.elapsed().as_secs_f64();
    println!(
        "graph: {} vectors built in {build_secs:.0}s ({:.0} inserts/s, M={} ef_construction={}, parallel)",
        ids.len(),
        ids.len() as f64 / build_secs,
        cfg.hnsw_m,
        cfg.ef_construction
    );
    let index = ScopedIndex::new(cfg)?;
    index.adopt(scope, h)?;
    let t = Instant::now();
    let stats = index.snapshot(&snapshot_root(work), &snapshot_tag(&store))?;
    println!(
        "snapshot: {} nodes, {:.0} MiB written in {:.1}s",
        stats.nodes,
        stats.bytes as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    let mut q = Vec::with_capacity(held.len() * v.dim * 4);
    for &i in &held {
        for x in v.get(i) {
            q.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(work.join("queries.f32"), q)?;
    std::fs::write(work.join("model-id"), model_id)?;
    std::fs::write(work.join("dim"), v.dim.to_string())?;
    std::fs::File::create(&gt_file)?.write_all(&gt)?;
    println!(
        "build process peak RSS (VmHWM) {:.0} MiB (corpus vectors, flat copy and graph at once)",
        proc_status("VmHWM:").unwrap_or(0.0)
    );
    Ok(())
}

fn proc_status(field: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Runs in its own process and reads only what the build phase left in `work` (never the
/// corpus or the model), so its memory figures are the restarted index's own.
fn restart_phase(args: &Args, work: &Path) -> anyhow::Result<()> {
    let model_id = std::fs::read_to_string(work.join("model-id"))?;
    let dim: usize = std::fs::read_to_string(work.join("dim"))?.trim().parse()?;
    let queries: Vec<f32> = std::fs::read(work.join("queries.f32"))?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let held = queries.len() / dim;
    let query = |n: usize| &queries[n * dim..(n + 1) * dim];
    let gt = std::fs::read(work.join("ground-truth.bin"))?;
    anyhow::ensure!(
        gt.len() == held * 12,
        "ground truth does not match the queries"
    );
    let rss_before = proc_status("VmRSS:").unwrap_or(0.0);

    let t = Instant::now();
    let store = Store::open(&store_config(work, &model_id, dim))?;
    let store_secs = t.elapsed().as_secs_f64();
    let index = ScopedIndex::new(IndexConfig {
        dim,
        ..IndexConfig::default()
    })?;
    let load = load_index(&store, &index, Some(&snapshot_root(work)))?;
    let total = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        load.discarded.is_empty(),
        "snapshot not used: {:?}",
        load.discarded
    );
    println!(
        "restart: ready in {total:.1}s: store open {store_secs:.1}s, index {:.1}s \
         ({} entries, {} from the snapshot, {} replayed, {} stale)",
        load.elapsed.as_secs_f64(),
        load.entries,
        load.restored,
        load.replayed,
        load.stale
    );
    println!(
        "memory after restart: RSS {:.0} MiB (vectors alone: {:.0} MiB; {:.0} MiB before)",
        proc_status("VmRSS:").unwrap_or(0.0),
        (load.entries * dim * 4) as f64 / (1 << 20) as f64,
        rss_before
    );

    let scope = ScopeId::from_bytes(SCOPE);
    println!("| ef | recall@1 | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for &ef in &args.ef {
        index.set_ef_search(ef);
        let mut lat = Vec::with_capacity(held);
        let mut found = 0usize;
        for n in 0..held {
            let want_id = u64::from_le_bytes(gt[n * 12..n * 12 + 8].try_into()?);
            let want_sim = f32::from_le_bytes(gt[n * 12 + 8..n * 12 + 12].try_into()?);
            let t = Instant::now();
            let top = index.search(scope, query(n), 1)?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            // A different id at the same similarity (a duplicate vector) is as good.
            if top
                .first()
                .is_some_and(|n| n.id == want_id || n.similarity >= want_sim - 1e-6)
            {
                found += 1;
            }
        }
        lat.sort_by(f64::total_cmp);
        println!(
            "| {ef} | {:.4} | {:.3} | {:.3} | {:.3} | {:.3} |",
            found as f64 / held as f64,
            pct(&lat, 0.50),
            pct(&lat, 0.90),
            pct(&lat, 0.99),
            lat[lat.len() - 1]
        );
    }
    println!(
        "peak RSS (VmHWM) {:.0} MiB, now {:.0} MiB",
        proc_status("VmHWM:").unwrap_or(0.0),
        proc_status("VmRSS:").unwrap_or(0.0)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let work = args.work.clone().unwrap_or_else(|| {
        default_dir()
            .with_file_name("bench-index")
            .join(args.entries.to_string())
    });
    if args.phase == "restart" {
        return restart_phase(&args, &work);
    }
    let (vectors, model_id) = embed_phase(&args)?;
    println!(
        "vectors: {} real MiniLM embeddings, using {} entries + {} held-out queries, {}-d",
        vectors.texts.list.len(),
        args.entries,
        args.queries,
        vectors.dim
    );
    match args.phase.as_str() {
        "embed" => Ok(()),
        "build" => build_phase(&args, &work, &vectors, &model_id),
        "all" => {
            build_phase(&args, &work, &vectors, &model_id)?;
            drop(vectors);
            // A fresh process, so peak RSS is the restart's own.
            let ef: Vec<String> = args.ef.iter().map(|e| e.to_string()).collect();
            let status = std::process::Command::new(std::env::current_exe()?)
                .arg("--work")
                .arg(&work)
                .args(["--ef", &ef.join(","), "--phase", "restart"])
                .status()?;
            anyhow::ensure!(status.success(), "restart phase failed");
            Ok(())
        }
        other => anyhow::bail!("unknown phase {other:?}: embed | build | restart | all"),
    }
}
