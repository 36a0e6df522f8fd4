//! [`ScopedIndex`]: the index the cache talks to. One [`ScopeIndex`] per [`ScopeId`], each behind
//! its own lock, so a search never sees another scope's vectors and a write to one scope never
//! waits on another. It owns the scope map and the decision to promote or rebuild (run by
//! the private `build` module); it never touches the store, and never blocks on a background build.

use super::build::{self, Background, ScopeState, Slot};
use super::snapshot::{self, SnapshotError, SnapshotStats, SnapshotTag};
use super::vector::prepare;
use super::{HnswIndex, IndexConfig, IndexError, Neighbor, ScopeIndex, VectorSearch, VectorWrite};
use crate::store::{EntryId, ScopeId};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Per-scope vector indexes. `Send + Sync`; share it in an `Arc`. Every method is synchronous
/// and may take milliseconds (an HNSW insert, a flat scan): call it off the async runtime.
pub struct ScopedIndex {
    cfg: Arc<IndexConfig>,
    scopes: RwLock<HashMap<ScopeId, Slot>>,
    live: AtomicUsize,
    /// Inserts and removals ever applied: a snapshot is due only when this moved.
    writes: AtomicU64,
    /// `writes` as of the last snapshot taken (u64::MAX before the first).
    snapshot_writes: AtomicU64,
    /// One snapshot at a time.
    snapshotting: parking_lot::Mutex<()>,
    pub(super) bg: Arc<Background>,
}

/// A snapshot of the index's shape, for the admin API and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    pub scopes: usize,
    pub flat_scopes: usize,
    pub hnsw_scopes: usize,
    /// Live vectors in flat scopes.
    pub flat_vectors: usize,
    /// Live vectors in HNSW scopes.
    pub hnsw_vectors: usize,
    /// Removed vectors still held by HNSW graphs (filtered at search).
    pub tombstones: usize,
    pub builds_in_flight: usize,
    pub promotions: u64,
    pub rebuilds: u64,
    /// Rebuilds that went back to a flat index because the scope shrank.
    pub demotions: u64,
    pub failed_builds: u64,
    /// Writes that arrived during builds and were replayed onto the new index.
    pub replayed_writes: u64,
}

impl ScopedIndex {
    pub fn new(cfg: IndexConfig) -> Result<Self, IndexError> {
        cfg.validate()?;
        Ok(ScopedIndex {
            cfg: Arc::new(cfg),
            scopes: RwLock::new(HashMap::new()),
            live: AtomicUsize::new(0),
            writes: AtomicU64::new(0),
            snapshot_writes: AtomicU64::new(u64::MAX),
            snapshotting: parking_lot::Mutex::new(()),
            bg: Arc::new(Background::default()),
        })
    }

    pub fn config(&self) -> &IndexConfig {
        &self.cfg
    }

    /// Adds `vector` for entry `id` to `scope`. Wrong dimension, NaN/inf, a zero vector or an id
    /// already in the scope is an error and changes nothing.
    pub fn insert(&self, scope: ScopeId, id: EntryId, vector: &[f32]) -> Result<(), IndexError> {
        let v = prepare(vector, self.cfg.dim)?.into_owned();
        loop {
            let slot = self.slot_or_create(scope);
            let mut st = build::write_slot(&self.bg, &slot);
            if st.retired {
                continue;
            }
            st.index.insert_prepared(id, &v)?;
            self.live.fetch_add(1, Ordering::Relaxed);
            self.writes.fetch_add(1, Ordering::Relaxed);
            match st.pending.as_mut() {
                Some(log) => log.push(build::PendingOp::Insert(id, v)),
                None => build::maybe_start(&self.cfg, &self.bg, &slot, &mut st),
            }
            return Ok(());
        }
    }

    /// Makes `id` unsearchable in `scope`; false if it was not there.
    pub fn remove(&self, scope: ScopeId, id: EntryId) -> bool {
        let Some(slot) = self.slot(scope) else {
            return false;
        };
        let mut st = build::write_slot(&self.bg, &slot);
        if st.retired || !st.index.remove(id) {
            return false;
        }
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.writes.fetch_add(1, Ordering::Relaxed);
        match st.pending.as_mut() {
            Some(log) => log.push(build::PendingOp::Remove(id)),
            None => build::maybe_start(&self.cfg, &self.bg, &slot, &mut st),
        }
        let empty = st.index.is_empty() && st.pending.is_none();
        drop(st);
        if empty {
            self.retire_if_empty(scope);
        }
        true
    }

    /// The `k` most similar live entries of `scope`, most similar first; empty for a scope
    /// that holds nothing.
    pub fn search(
        &self,
        scope: ScopeId,
        query: &[f32],
        k: usize,
    ) -> Result<Vec<Neighbor>, IndexError> {
        let q = prepare(query, self.cfg.dim)?;
        let Some(slot) = self.slot(scope) else {
            return Ok(Vec::new());
        };
        let st = slot.read();
        Ok(st.index.search_prepared(&q, k))
    }

    /// Live vectors across all scopes.
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn scope_count(&self) -> usize {
        self.scopes.read().len()
    }

    /// Live vectors in one scope.
    pub fn scope_len(&self, scope: ScopeId) -> usize {
        self.slot(scope).map_or(0, |s| s.read().index.len())
    }

    /// `"flat"` or `"hnsw"`, `None` for a scope that holds nothing.
    pub fn scope_kind(&self, scope: ScopeId) -> Option<&'static str> {
        self.slot(scope).map(|s| s.read().index.kind())
    }

    pub fn stats(&self) -> IndexStats {
        let slots: Vec<Slot> = self.scopes.read().values().cloned().collect();
        let mut s = IndexStats {
            scopes: slots.len(),
            builds_in_flight: self.bg.in_flight(),
            promotions: self.bg.promotions.load(Ordering::Relaxed),
            rebuilds: self.bg.rebuilds.load(Ordering::Relaxed),
            demotions: self.bg.demotions.load(Ordering::Relaxed),
            failed_builds: self.bg.failed.load(Ordering::Relaxed),
            replayed_writes: self.bg.replayed_ops.load(Ordering::Relaxed),
            ..IndexStats::default()
        };
        for slot in slots {
            let st = slot.read();
            match &st.index {
                ScopeIndex::Flat(f) => {
                    s.flat_scopes += 1;
                    s.flat_vectors += f.len();
                }
                ScopeIndex::Hnsw(h) => {
                    s.hnsw_scopes += 1;
                    s.hnsw_vectors += h.len();
                    s.tombstones += h.tombstone_count();
                }
            }
        }
        s
    }

    /// Waits until no promotion or rebuild is running (tests, shutdown, benchmarks); false if
    /// `timeout` passed first.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        self.bg.wait_idle(timeout)
    }

    /// Changes every HNSW scope's search-time candidate list (benchmarks sweep it; graphs built
    /// later use the configured value).
    pub fn set_ef_search(&self, ef: usize) {
        let slots: Vec<Slot> = self.scopes.read().values().cloned().collect();
        for slot in slots {
            if let ScopeIndex::Hnsw(h) = &mut build::write_slot(&self.bg, &slot).index {
                h.set_ef_search(ef);
            }
        }
    }

    /// Counts every change a snapshot could see: writes, and finished builds (a promotion
    /// turns a flat scope, which snapshots skip, into a graph they write).
    fn version(&self) -> u64 {
        let bg = &self.bg;
        self.writes.load(Ordering::Relaxed)
            + bg.promotions.load(Ordering::Relaxed)
            + bg.rebuilds.load(Ordering::Relaxed)
            + bg.demotions.load(Ordering::Relaxed)
    }

    /// Records that the snapshot on disk already matches this index (it was just restored from
    /// it with nothing to settle), so shutdown does not rewrite gigabytes for nothing.
    pub fn mark_snapshot_current(&self) {
        self.snapshot_writes
            .store(self.version(), Ordering::Relaxed);
    }

    /// Whether the index changed since the last [`Self::snapshot`] (always true before one).
    pub fn changed_since_snapshot(&self) -> bool {
        self.snapshot_writes.load(Ordering::Relaxed) != self.version()
    }

    /// Writes every HNSW scope's graph to a new snapshot generation under `root` and makes it
    /// current (flat scopes are not written: the store scan re-creates them at once). Searches
    /// run throughout; writes to the scope being written wait for it (polling, so searches
    /// never queue behind them). Blocking, seconds per million vectors: run it off the async
    /// runtime. One at a time: a second call waits for the first.
    pub fn snapshot(
        &self,
        root: &std::path::Path,
        tag: &SnapshotTag,
    ) -> Result<SnapshotStats, SnapshotError> {
        let _one = self.snapshotting.lock();
        let writes = self.version();
        let mut slots: Vec<(ScopeId, Slot)> = self
            .scopes
            .read()
            .iter()
            .map(|(k, v)| (*k, Arc::clone(v)))
            .collect();
        slots.sort_by_key(|(k, _)| *k);
        let mut writer = snapshot::Writer::begin(root, tag)?;
        for (scope, slot) in slots {
            self.bg.dumping.fetch_add(1, Ordering::AcqRel);
            let result = {
                let st = slot.read();
                match &st.index {
                    // A scope mid-build is written as it serves now: every write reached it.
                    ScopeIndex::Hnsw(h) if !st.retired => {
                        writer.scope(snapshot::ScopeDump { scope, index: h })
                    }
                    _ => Ok(()),
                }
            };
            self.bg.dumping.fetch_sub(1, Ordering::AcqRel);
            result?;
        }
        let stats = writer.commit()?;
        // Writes that raced the snapshot may or may not be in it: the next one is due then.
        self.snapshot_writes.store(writes, Ordering::Relaxed);
        Ok(stats)
    }

    /// Installs a graph restored from a snapshot as `scope`'s index. Fails (changing nothing)
    /// if the scope already holds vectors.
    pub fn adopt(&self, scope: ScopeId, index: HnswIndex) -> Result<(), IndexError> {
        if index.dim() != self.cfg.dim {
            return Err(IndexError::DimensionMismatch {
                expected: self.cfg.dim,
                got: index.dim(),
            });
        }
        let slot = self.slot_or_create(scope);
        let mut st = build::write_slot(&self.bg, &slot);
        if !st.index.is_empty() || st.pending.is_some() || st.retired {
            return Err(IndexError::InvalidConfig(format!(
                "scope {scope:?} already holds vectors; a restored graph cannot replace them"
            )));
        }
        self.live.fetch_add(index.len(), Ordering::Relaxed);
        st.index = ScopeIndex::Hnsw(index);
        build::maybe_start(&self.cfg, &self.bg, &slot, &mut st);
        Ok(())
    }

    fn slot(&self, scope: ScopeId) -> Option<Slot> {
        self.scopes.read().get(&scope).cloned()
    }

    fn slot_or_create(&self, scope: ScopeId) -> Slot {
        if let Some(slot) = self.slot(scope) {
            return slot;
        }
        let dim = self.cfg.dim;
        Arc::clone(
            self.scopes
                .write()
                .entry(scope)
                .or_insert_with(|| Arc::new(RwLock::new(ScopeState::new(dim)))),
        )
    }

    /// Drops an empty scope from the map, so per-conversation scopes do not accumulate. Lock
    /// order is map, then scope; writers never hold a scope while taking the map.
    fn retire_if_empty(&self, scope: ScopeId) {
        let mut map = self.scopes.write();
        let Some(slot) = map.get(&scope) else {
            return;
        };
        // Holding the map's write lock: never wait here (a snapshot may hold the scope for
        // seconds). A scope left in place is harmless and goes on its next removal.
        let Some(mut st) = slot.try_write() else {
            return;
        };
        if st.index.is_empty() && st.pending.is_none() {
            st.retired = true;
            drop(st);
            map.remove(&scope);
        }
    }
}

impl Drop for ScopedIndex {
    fn drop(&mut self) {
        // Builds notice within a few hundred inserts and discard their work.
        self.bg
            .cancelled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
#[path = "scoped_tests.rs"]
mod tests;
