//! Filling the index at start: HNSW graphs come back from the latest snapshot (seconds), and
//! the store, the source of truth, settles every difference. Entries written after the snapshot
//! are inserted, snapshot ids the store no longer holds (evicted, expired, lost in a crash)
//! become tombstones, and a scope whose graph cannot be used is rebuilt from the store. A
//! snapshot therefore only ever saves work; it can never make the index disagree with the store.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use super::engine::CacheError;
use crate::index::{HnswIndex, ScopedIndex, Snapshot, SnapshotError, SnapshotTag};
use crate::store::{now_ms, EntryId, ScopeId, Store};

/// What [`load_index`] did, for the start-up log and the benchmarks.
#[derive(Clone, Debug, Default)]
pub struct IndexLoad {
    /// Live entries now searchable.
    pub entries: usize,
    /// Scopes whose graph came from the snapshot.
    pub restored_scopes: usize,
    /// Entries found in a restored graph (not re-inserted).
    pub restored: usize,
    /// Entries newer than the snapshot, inserted into restored graphs.
    pub replayed: usize,
    /// Snapshot entries the store no longer holds, tombstoned: evicted, expired or replaced
    /// after the snapshot was taken (normal), or lost by the store (see `lost_in_store`).
    pub stale: usize,
    /// Entries the store lost to damaged files since its last recorded flush
    /// ([`crate::store::Store::recovery`]); the store has logged a warning.
    pub lost_in_store: usize,
    /// Why the snapshot, or a scope of it, was not used.
    pub discarded: Vec<String>,
    pub elapsed: Duration,
}

/// The tag a snapshot of `store` carries.
pub fn snapshot_tag(store: &Store) -> SnapshotTag {
    let cfg = store.config();
    SnapshotTag {
        store_id: store.instance_id().to_string(),
        model_id: cfg.model_id.clone(),
        dim: cfg.dim,
    }
}

/// Indexes every live entry of `store` into the empty `index`, restoring graphs from the
/// snapshot under `snapshots` when there is a usable one. Blocking: reads the whole store and
/// may load gigabytes of graph; the graph loads on a second thread while the store is read.
pub fn load_index(
    store: &Store,
    index: &ScopedIndex,
    snapshots: Option<&Path>,
) -> Result<IndexLoad, CacheError> {
    let started = Instant::now();
    let mut report = IndexLoad {
        lost_in_store: store.recovery().lost_entries,
        ..IndexLoad::default()
    };
    let scopes = match snapshots.map(|root| open_snapshot(root, &snapshot_tag(store))) {
        Some(Ok(Some((snap, scopes)))) => Some((snap, scopes)),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "index snapshot not used; rebuilding from the store");
            report.discarded.push(e.to_string());
            None
        }
        _ => None,
    };
    // Ids each restored scope is expected to hold; the scan crosses off the ones it finds.
    let mut expected: HashMap<ScopeId, HashSet<EntryId>> = scopes
        .as_ref()
        .map(|(_, s)| s.iter().map(|s| (s.scope, s.live.clone())).collect())
        .unwrap_or_default();
    let mut found: HashMap<ScopeId, usize> = HashMap::new();
    let mut newer: Vec<(ScopeId, EntryId, Vec<f32>)> = Vec::new();
    let now = now_ms();
    let index_cfg = index.config().clone();

    let loaded: Vec<(ScopeId, Result<HnswIndex, SnapshotError>)> = std::thread::scope(|s| {
        let loader = scopes.map(|(snap, scopes)| {
            let cfg = &index_cfg;
            s.spawn(move || {
                scopes
                    .into_iter()
                    .map(|sc| (sc.scope, snap.load(cfg, sc)))
                    .collect::<Vec<_>>()
            })
        });
        let mut scan = Ok(());
        let read = store.for_each_live(now, |e| {
            let Some(v) = &e.embedding else {
                return;
            };
            if let Some(ids) = expected.get_mut(&e.scope) {
                if ids.remove(&e.id) {
                    *found.entry(e.scope).or_default() += 1;
                } else {
                    newer.push((e.scope, e.id, v.clone()));
                }
            } else if let Err(err) = index.insert(e.scope, e.id, v) {
                scan = Err(err);
            }
        });
        let loaded = match loader.map(|h| h.join()) {
            Some(Ok(l)) => l,
            Some(Err(_)) => expected
                .keys()
                .map(|k| {
                    let e = SnapshotError::Invalid {
                        path: Default::default(),
                        message: "the snapshot loader panicked".into(),
                    };
                    (*k, Err(e))
                })
                .collect(),
            None => Vec::new(),
        };
        read.map_err(CacheError::from)
            .and(scan.map_err(CacheError::from))
            .map(|()| loaded)
    })?;

    let mut failed: HashSet<ScopeId> = HashSet::new();
    for (scope, graph) in loaded {
        let adopted = graph
            .map_err(|e| e.to_string())
            .and_then(|g| index.adopt(scope, g).map_err(|e| e.to_string()));
        match adopted {
            Ok(()) => {
                report.restored_scopes += 1;
                report.restored += found.get(&scope).copied().unwrap_or(0);
                for id in expected.remove(&scope).unwrap_or_default() {
                    index.remove(scope, id);
                    report.stale += 1;
                }
            }
            Err(why) => {
                tracing::warn!(scope = ?scope, error = %why, "index snapshot scope not used; rebuilding it from the store");
                report.discarded.push(why);
                failed.insert(scope);
            }
        }
    }
    for (scope, id, v) in newer {
        if !failed.contains(&scope) {
            index.insert(scope, id, &v)?;
            report.replayed += 1;
        }
    }
    if !failed.is_empty() {
        // The graphs that could not be used: their scopes come from the store alone.
        let mut scan = Ok(());
        store.for_each_live(now, |e| {
            if let (true, Some(v)) = (failed.contains(&e.scope), &e.embedding) {
                if let Err(err) = index.insert(e.scope, e.id, v) {
                    scan = Err(err);
                }
            }
        })?;
        scan?;
    }
    if report.restored_scopes > 0
        && report.discarded.is_empty()
        && report.replayed == 0
        && report.stale == 0
        && index.stats().builds_in_flight == 0
    {
        // Flat scopes loaded meanwhile are not part of snapshots: the one on disk is current.
        index.mark_snapshot_current();
    }
    report.entries = index.len();
    report.elapsed = started.elapsed();
    Ok(report)
}

type Opened = (Snapshot, Vec<crate::index::snapshot::SnapshotScope>);

fn open_snapshot(root: &Path, tag: &SnapshotTag) -> Result<Option<Opened>, SnapshotError> {
    let Some(snap) = Snapshot::open(root, tag)? else {
        return Ok(None);
    };
    let scopes = snap.scopes()?;
    Ok(Some((snap, scopes)))
}

#[cfg(test)]
#[path = "restore_tests.rs"]
mod tests;
