//! The three protocols of `../shared/datasets/README.md`, each driving the real cache engine:
//! - **pairwise**: cosine(a, b), the guards and the lexical verifier for every pair;
//! - **cache**: every distinct `a` inserted into an empty cache, then each `b` looked up
//!   (exact layer, index search, guards, the server's hit rule);
//! - **replay**: a stream through a cold cache per threshold, inserting on every miss.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dataset::{PairRow, SameClasses, StreamRow};
use super::embeddings::Vectors;
use super::report::{FalseHit, Row, Tally};
use super::Rule;
use crate::cache::guards::Features;
use crate::cache::verify::{decide_with, Candidate, Decision};
use crate::cache::CacheEngine;
use crate::config::Config;
use crate::embed::{Embedder, PairScorer};
use crate::store::{CachedResponse, EntryId, FinishReason, ScopeId};

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Scores every rule; the false hits of the last rule (the configured one) go to `audit`.
pub fn pairwise(
    rows: &[PairRow],
    v: &Vectors,
    rules: &[Rule],
    pair: Option<&dyn PairScorer>,
    audit: &mut Vec<FalseHit>,
) -> Vec<Row> {
    let scored: Vec<(Candidate, &PairRow, Memo)> = rows
        .iter()
        .map(|r| {
            let similarity = match (v.of(&r.a), v.of(&r.b)) {
                (Some(a), Some(b)) => dot(a, b),
                _ => -1.0,
            };
            let (query, stored) = (Features::of(&r.b), Features::of(&r.a));
            let candidate = Candidate {
                id: 0,
                similarity,
                guard: query.compare(&stored),
                same_content: query.same_content(&stored),
            };
            (candidate, r, Memo::default())
        })
        .collect();
    let positives = rows.iter().filter(|r| r.same).count() as u64;
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let mut tally = Tally {
                queries: rows.len() as u64,
                positives,
                ..Default::default()
            };
            for (candidate, r, memo) in &scored {
                let decision = decide_scored(
                    std::slice::from_ref(candidate),
                    rule,
                    pair,
                    (&r.b, &r.a),
                    memo,
                    &mut tally,
                );
                if matches!(decision, Decision::Hit { .. }) {
                    tally.hits += 1;
                    tally.correct_hits += r.same as u64;
                    if !r.same && i + 1 == rules.len() {
                        audit.push(FalseHit::new(&r.b, &r.a, candidate.similarity));
                    }
                }
            }
            tally.row(rule.threshold)
        })
        .collect()
}

/// An engine on a temporary store, configured like the server's: a temporary directory for
/// the embedded backend, a schema of its own (`deja_bench_<pid>_<ms>`, left behind for
/// inspection) for PostgreSQL, so a bench never touches the cache it is configured with.
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
    // The bench scores candidates with its own verifier model (loaded once, not per engine).
    cfg.cache.verifier = None;
    if let crate::config::BackendConfig::Postgres(pg) = &mut cfg.cache.backend {
        pg.schema = format!(
            "deja_bench_{}_{}",
            std::process::id(),
            crate::store::now_ms()
        );
    }
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
        tool_calls: Vec::new(),
    }
}

const TTL: Duration = Duration::from_secs(365 * 86_400);

/// The verifier model's score of one lookup's top candidate, computed at most once however
/// many rules need it (every rule sees the same candidate).
#[derive(Default)]
struct Memo(std::cell::Cell<Option<Option<f32>>>);

/// [`decide_with`] with the verifier model (when there is one and the rule has a bar), its
/// score memoized in `memo`; counts the work on `tally`.
fn decide_scored(
    candidates: &[Candidate],
    rule: &Rule,
    pair: Option<&dyn PairScorer>,
    (query, stored): (&str, &str),
    memo: &Memo,
    tally: &mut Tally,
) -> Decision {
    let mut ran = false;
    let (decision, _) = decide_with(candidates, rule, |_| {
        ran = true;
        if let Some(s) = memo.0.get() {
            return s;
        }
        let s = pair.and_then(|p| p.score(query, stored).ok());
        memo.0.set(Some(s));
        s
    });
    tally.count(&decision);
    tally.model_calls += (ran && pair.is_some()) as u64;
    decision
}

/// What one lookup found, independent of the threshold: an exact hit, or the candidates (with
/// the top one's prompt, for the verifier model).
enum Found {
    Exact(EntryId),
    Candidates(Vec<Candidate>, String, Memo),
}

fn find(engine: &CacheEngine, scope: ScopeId, text: &str, vector: &[f32]) -> anyhow::Result<Found> {
    if let Some(e) = engine.exact_blocking(scope, text)? {
        return Ok(Found::Exact(e.id));
    }
    let c = engine.candidates_blocking(scope, text, vector)?;
    let top = c.first().map(|(_, e)| e.prompt.clone()).unwrap_or_default();
    Ok(Found::Candidates(
        c.into_iter().map(|(c, _)| c).collect(),
        top,
        Memo::default(),
    ))
}

/// The entry the rule serves, counting the verifier's and the judge's work on `tally`. An
/// uncertain candidate is a miss here: the bench does not call a judge.
fn chosen(
    found: &Found,
    query: &str,
    rule: &Rule,
    pair: Option<&dyn PairScorer>,
    tally: &mut Tally,
) -> Option<(EntryId, f32)> {
    match found {
        Found::Exact(id) => Some((*id, 1.0)),
        Found::Candidates(c, top, memo) => {
            let decision = decide_scored(c, rule, pair, (query, top), memo, tally);
            match decision {
                Decision::Hit { id, .. } => {
                    c.iter().find(|c| c.id == id).map(|c| (id, c.similarity))
                }
                _ => None,
            }
        }
    }
}

pub fn cache(
    rows: &[PairRow],
    v: &Vectors,
    rules: &[Rule],
    config: &Config,
    embedder: Arc<dyn Embedder>,
    pair: Option<&dyn PairScorer>,
    audit: &mut Vec<FalseHit>,
) -> anyhow::Result<Vec<Row>> {
    let (engine, dir) = temp_engine(config, embedder)?;
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
        let id = engine.insert_blocking(scope, &r.a, Some(v.get(ai)), answer(), TTL, None)?;
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
        for (k, (tally, rule)) in tallies.iter_mut().zip(rules).enumerate() {
            let Some((id, similarity)) = chosen(&found, &r.b, rule, pair, tally) else {
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
            if !correct && k + 1 == rules.len() {
                audit.push(FalseHit::new(&r.b, &v.texts.list[got], similarity));
            }
        }
        if (n + 1) % 20_000 == 0 {
            eprintln!(
                "cache: {} queries ({:.0}s)",
                n + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    drop(engine);
    drop(dir);
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
    pair: Option<&dyn PairScorer>,
    audit: &mut Vec<FalseHit>,
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
    let configured_false = parking_lot::Mutex::new(Vec::new());
    std::thread::scope(|s| -> anyhow::Result<()> {
        let mut handles = Vec::new();
        for _ in 0..workers {
            handles.push(s.spawn(|| -> anyhow::Result<()> {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(rule) = rules.get(i) else {
                        return Ok(());
                    };
                    let (mut tally, false_hits) =
                        replay_one(rows, v, rule, config, embedder.clone(), pair)?;
                    if i + 1 == rules.len() {
                        *configured_false.lock() = false_hits;
                    }
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
    *audit = configured_false.into_inner();
    Ok((rows_out, ceiling))
}

fn replay_one(
    rows: &[StreamRow],
    v: &Vectors,
    rule: &Rule,
    config: &Config,
    embedder: Arc<dyn Embedder>,
    pair: Option<&dyn PairScorer>,
) -> anyhow::Result<(Tally, Vec<FalseHit>)> {
    let (engine, dir) = temp_engine(config, embedder)?;
    let scope = ScopeId::from_bytes(b"deja-bench");
    let mut class_of: HashMap<EntryId, (Option<&str>, &str)> = HashMap::new();
    let mut false_hits = Vec::new();
    let mut tally = Tally {
        queries: rows.len() as u64,
        ..Default::default()
    };
    for r in rows {
        let Some(i) = v.texts.id(&r.text) else {
            continue;
        };
        let found = find(&engine, scope, &r.text, v.get(i))?;
        match chosen(&found, &r.text, rule, pair, &mut tally) {
            Some((id, similarity)) => {
                tally.hits += 1;
                let (got, served) = class_of.get(&id).copied().unwrap_or((None, ""));
                let correct = matches!((got, r.class.as_deref()), (Some(a), Some(b)) if a == b);
                tally.correct_hits += correct as u64;
                if !correct {
                    false_hits.push(FalseHit::new(&r.text, served, similarity));
                }
            }
            None => {
                let id =
                    engine.insert_blocking(scope, &r.text, Some(v.get(i)), answer(), TTL, None)?;
                class_of.insert(id, (r.class.as_deref(), r.text.as_str()));
            }
        }
    }
    // The store flushes once more when it closes: close it before its directory goes.
    drop(engine);
    drop(dir);
    Ok((tally, false_hits))
}
