//! The embedded backend: the sled [`Store`] is the source of truth, the in-process
//! [`ScopedIndex`] answers nearest-neighbour searches and is filled from the store at start
//! ([`crate::cache::restore`]), optionally from a snapshot. One process owns it (sled locks its
//! directory); writes are durable within the store's `flush_every`.

use std::path::PathBuf;

use super::{Backend, Near, Scanned};
use crate::cache::engine::CacheError;
use crate::cache::restore::{load_index, snapshot_tag, IndexLoad};
use crate::index::{ScopedIndex, SnapshotStats};
use crate::store::chains::{ChainLimits, ChainTrees};
use crate::store::{Entry, EntryId, NewEntry, Recovery, ScopeId, Store, StoreError};

pub struct EmbeddedBackend {
    store: Store,
    index: ScopedIndex,
    /// Conversation records of Responses answers (`previous_response_id`).
    chains: ChainTrees,
    snapshots: Option<PathBuf>,
}

impl EmbeddedBackend {
    /// Wraps an opened store and loads every live entry into the empty `index`, restoring HNSW
    /// graphs from the snapshot under `snapshots` when there is a usable one (blocking: call it
    /// at start-up, off the runtime). `snapshots` is also where [`Backend::snapshot`] writes.
    pub fn open(
        store: Store,
        index: ScopedIndex,
        snapshots: Option<PathBuf>,
    ) -> Result<(EmbeddedBackend, IndexLoad), CacheError> {
        let load = load_index(&store, &index, snapshots.as_deref())?;
        let chains = ChainTrees::open(&store)?;
        let backend = EmbeddedBackend {
            store,
            index,
            chains,
            snapshots,
        };
        Ok((backend, load))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn index(&self) -> &ScopedIndex {
        &self.index
    }
}

impl Backend for EmbeddedBackend {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn get_exact(&self, scope: ScopeId, prompt: &str) -> Result<Option<Entry>, CacheError> {
        Ok(self.store.get_exact(scope, prompt)?)
    }

    fn get(&self, id: EntryId) -> Result<Option<Entry>, CacheError> {
        Ok(self.store.get(id)?)
    }

    fn nearest(
        &self,
        scope: ScopeId,
        embedding: &[f32],
        k: usize,
    ) -> Result<Vec<Near>, CacheError> {
        let found = self.index.search(scope, embedding, k)?;
        Ok(found
            .into_iter()
            .map(|n| Near {
                id: n.id,
                similarity: n.similarity,
                entry: None,
            })
            .collect())
    }

    fn record_hit(&self, id: EntryId, now_ms: u64) -> Result<(), CacheError> {
        self.store.record_hit(id, now_ms)?;
        Ok(())
    }

    /// Replaced and evicted entries leave the index too.
    fn insert(&self, entry: NewEntry) -> Result<EntryId, CacheError> {
        let (scope, embedding) = (entry.scope, entry.embedding.clone());
        let outcome = self.store.insert(entry)?;
        for (old_scope, old_id) in &outcome.removed {
            self.index.remove(*old_scope, *old_id);
        }
        if let Some(v) = embedding {
            self.index.insert(scope, outcome.id, &v)?;
        }
        Ok(outcome.id)
    }

    fn sweep_expired(&self, now_ms: u64, limit: usize) -> Result<usize, CacheError> {
        let removed = self.store.sweep_expired(now_ms, limit)?;
        for (scope, id) in &removed {
            self.index.remove(*scope, *id);
        }
        Ok(removed.len())
    }

    /// The store first, then the index: a search that still finds the id in between reads
    /// no entry for it and skips it, so nothing removed is ever served.
    fn remove(&self, id: EntryId) -> Result<Option<Entry>, CacheError> {
        let removed = self.store.remove(id)?;
        if let Some(e) = &removed {
            self.index.remove(e.scope, e.id);
        }
        Ok(removed)
    }

    fn scan(&self, after: Option<EntryId>, limit: usize) -> Result<Vec<Scanned>, CacheError> {
        let page = self.store.scan_after(after, limit)?;
        let mut out = Vec::with_capacity(page.len());
        for (entry, hits) in page {
            let namespace = self.store.namespace(entry.id)?;
            out.push(Scanned {
                entry,
                hits,
                namespace,
            });
        }
        Ok(out)
    }

    fn len(&self) -> usize {
        self.store.len()
    }

    fn flush(&self) -> Result<(), CacheError> {
        Ok(self.store.flush()?)
    }

    /// Blocking, seconds per million vectors; nothing when the index did not change since the
    /// last snapshot or snapshots are off.
    fn snapshot(&self) -> Result<Option<SnapshotStats>, CacheError> {
        let Some(root) = &self.snapshots else {
            return Ok(None);
        };
        if !self.index.changed_since_snapshot() {
            return Ok(None);
        }
        let tag = snapshot_tag(&self.store);
        Ok(Some(self.index.snapshot(root, &tag)?))
    }

    fn recovery(&self) -> Recovery {
        self.store.recovery().clone()
    }

    fn put_chain(
        &self,
        id: &str,
        record: &[u8],
        now_ms: u64,
        expires_ms: u64,
        limits: ChainLimits,
    ) -> Result<(), CacheError> {
        let path = self.store.path();
        self.chains
            .put(id, record, now_ms, expires_ms, limits)
            .map_err(|e| CacheError::from(StoreError::from_sled(path, e)))
    }

    fn get_chain(&self, id: &str, now_ms: u64) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.store.path();
        self.chains
            .get(id, now_ms)
            .map_err(|e| CacheError::from(StoreError::from_sled(path, e)))
    }

    fn as_embedded(&self) -> Option<&EmbeddedBackend> {
        Some(self)
    }
}
