//! The three protocols of `../shared/datasets/README.md`, each driving the real cache engine:
//! - **pairwise**: cosine(a, b) and the guards for every pair;
//! - **cache**: every distinct `a` inserted into an empty cache, then each `b` looked up
//!   (exact layer, index search, guards, the server's hit rule);
//! - **replay**: a stream through a cold cache per threshold, inserting on every miss.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dataset::{PairRow, SameClasses, StreamRow};
use super::embeddings::Vectors;
use super::report::{Row, Tally};
use super::Rule;
use crate::cache::engine::select;
use crate::cache::guards;
use crate::cache::{CacheEngine, Candidate};
use crate::config::Config;
use crate::embed::Embedder;
use crate::store::{CachedResponse, EntryId, FinishReason, ScopeId};

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn pairwise(rows: &[PairRow], v: &Vectors, rules: &[Rule]) -> Vec<Row> {
    let scored: Vec<(f32, bool, bool)> = rows
        .iter()
        .map(|r| {
            let sim = match (v.of(&r.a), v.of(&r.b)) {
                (Some(a), Some(b)) => dot(a, b),
                _ => -1.0,
            };
            (sim, guards::check(&r.b, &r.a).passed(), r.same)
        })
        .collect();
    let positives = rows.iter().filter(|r| r.same).count() as u64;
    rules
        .iter()
        .map(|rule| {
            let mut tally = Tally {
                queries: rows.len() as u64,
                positives,
                ..Default::default()
            };
            for &(sim, pass, same) in &scored {
                if sim >= rule.threshold && (!rule.guards || pass) {
                    tally.hits += 1;
                    tally.correct_hits += same as u64;
                }
            }
            tally.row(rule.threshold)
        })
        .collect()
}

/// An engine on a temporary store, configured like the server's.
fn temp_engine(
    config: &Config,
    embedder: Arc<dyn Embedder>,
) -> anyhow::Result<(CacheEngine, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let mut cfg = config.clone();
    cfg.cache.dir = dir.path().to_path_buf();
    cfg.cache.max_entries = usize::MAX / 2;
    // Nothing here survives the run: flushing often would only measure the disk.
    cfg.cache.flush_interval = Duration::from_secs(3600);
    cfg.index.snapshot = false;
    let engine = crate::server::open_engine(&cfg, embedder).map_err(|e| anyhow::anyhow!(e))?;
    Ok((engine, dir))
}

fn answer() -> CachedResponse {
    CachedResponse {
        model: "bench".into(),
        content: String::new(),
        finish_reason: FinishReason::Stop,
        usage: None,
        provider: "bench".into(),
        system_fingerprint: None,
    }
}

const TTL: Duration = Duration::from_secs(365 * 86_400);

/// What one lookup found, independent of the threshold: an exact hit, or the candidates.
enum Found {
    Exact(EntryId),
    Candidates(Vec<Candidate>),
}

fn find(engine: &CacheEngine, scope: ScopeId, text: &str, vector: &[f32]) -> anyhow::Result<Found> {
    if let Some(e) = engine.exact_blocking(scope, text)? {
        return Ok(Found::Exact(e.id));
    }
    let c = engine.candidates_blocking(scope, text, vector)?;
    Ok(Found::Candidates(c.into_iter().map(|(c, _)| c).collect()))
}

fn chosen(found: &Found, rule: &Rule) -> Option<EntryId> {
    match found {
        Found::Exact(id) => Some(*id),
        Found::Candidates(c) => select(c, rule.threshold, rule.guards).map(|c| c.id),
    }
}

pub fn cache(
    rows: &[PairRow],
    v: &Vectors,
    rules: &[Rule],
    config: &Config,
    embedder: Arc<dyn Embedder>,
) -> anyhow::Result<Vec<Row>> {
    let (engine, _dir) = temp_engine(config, embedder)?;
    let scope = ScopeId::from_bytes(b"deja-bench");
    let mut entry_text: HashMap<EntryId, usize> = HashMap::new();
    let started = Instant::now();
    let mut inserted = 0usize;
    let mut present = std::collections::HashSet::new();
    for r in rows {
        let Some(ai) = v.texts.id(&r.a) else { continue };
        if !present.insert(ai) {
            continue;
        }
        let id = engine.insert_blocking(scope, &r.a, Some(v.get(ai)), answer(), TTL)?;
        entry_text.insert(id, ai);
        inserted += 1;
        if inserted.is_multiple_of(10_000) {
            eprintln!(
                "cache: {inserted} entries inserted ({:.0}s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!(
        "cache: {inserted} distinct entries in {:.1}s; querying {} rows",
        started.elapsed().as_secs_f64(),
        rows.len()
    );

    let mut classes = SameClasses::new(v.texts.list.len());
    for r in rows.iter().filter(|r| r.same) {
        if let (Some(a), Some(b)) = (v.texts.id(&r.a), v.texts.id(&r.b)) {
            classes.union(a, b);
        }
    }
    let positives = rows.iter().filter(|r| r.same).count() as u64;
    let mut tallies = vec![
        Tally {
            queries: rows.len() as u64,
            positives,
            ..Default::default()
        };
        rules.len()
    ];
    let started = Instant::now();
    for (n, r) in rows.iter().enumerate() {
        let (Some(bi), Some(ai)) = (v.texts.id(&r.b), v.texts.id(&r.a)) else {
            continue;
        };
        let found = find(&engine, scope, &r.b, v.get(bi))?;
        for (tally, rule) in tallies.iter_mut().zip(rules) {
            let Some(id) = chosen(&found, rule) else {
                continue;
            };
            let Some(&got) = entry_text.get(&id) else {
                continue;
            };
            tally.hits += 1;
            let correct = if got == ai {
                r.same
            } else {
                classes.find(got) == classes.find(bi)
            };
            tally.correct_hits += correct as u64;
        }
        if (n + 1) % 20_000 == 0 {
            eprintln!(
                "cache: {} queries ({:.0}s)",
                n + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(tallies
        .iter()
        .zip(rules)
        .map(|(t, rule)| t.row(rule.threshold))
        .collect())
}

/// Returns the rows and the ceiling (share of prompts whose class was seen before).
pub fn replay(
    rows: &[StreamRow],
    v: &Vectors,
    rules: &[Rule],
    config: &Config,
    embedder: Arc<dyn Embedder>,
) -> anyhow::Result<(Vec<Row>, f64)> {
    let mut seen = std::collections::HashSet::new();
    let mut repeats = 0u64;
    for r in rows {
        if let Some(c) = &r.class {
            if !seen.insert(c.clone()) {
                repeats += 1;
            }
        }
    }
    let ceiling = repeats as f64 / rows.len().max(1) as f64;
    let started = Instant::now();
    // Each threshold replays through its own cold cache; two workers share the machine's cores.
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(rules.len())
        .max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = parking_lot::Mutex::new(vec![None; rules.len()]);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let mut handles = Vec::new();
        for _ in 0..workers {
            handles.push(s.spawn(|| -> anyhow::Result<()> {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(rule) = rules.get(i) else {
                        return Ok(());
                    };
                    let mut tally = replay_one(rows, v, rule, config, embedder.clone())?;
                    tally.positives = repeats;
                    results.lock()[i] = Some(tally.row(rule.threshold));
                    eprintln!(
                        "replay: {} of {} rules done ({:.0}s; threshold {:.3})",
                        i + 1,
                        rules.len(),
                        started.elapsed().as_secs_f64(),
                        rule.threshold
                    );
                }
            }));
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("replay worker panicked"))??;
        }
        Ok(())
    })?;
    let rows_out = results.into_inner().into_iter().flatten().collect();
    Ok((rows_out, ceiling))
}

fn replay_one(
    rows: &[StreamRow],
    v: &Vectors,
    rule: &Rule,
    config: &Config,
    embedder: Arc<dyn Embedder>,
) -> anyhow::Result<Tally> {
    let (engine, _dir) = temp_engine(config, embedder)?;
    let scope = ScopeId::from_bytes(b"deja-bench");
    let mut class_of: HashMap<EntryId, Option<&str>> = HashMap::new();
    let mut tally = Tally {
        queries: rows.len() as u64,
        ..Default::default()
    };
    for r in rows {
        let Some(i) = v.texts.id(&r.text) else {
            continue;
        };
        let found = find(&engine, scope, &r.text, v.get(i))?;
        match chosen(&found, rule) {
            Some(id) => {
                tally.hits += 1;
                let got = class_of.get(&id).copied().flatten();
                let correct = matches!((got, r.class.as_deref()), (Some(a), Some(b)) if a == b);
                tally.correct_hits += correct as u64;
            }
            None => {
                let id = engine.insert_blocking(scope, &r.text, Some(v.get(i)), answer(), TTL)?;
                class_of.insert(id, r.class.as_deref());
            }
        }
    }
    Ok(tally)
}
