//! The sled store: the source of truth for every cached answer. It owns the on-disk layout,
//! recency (LRU) and expiry bookkeeping, and durability; the vector index is rebuilt from it at
//! start ([`Store::for_each_live`]). It never embeds, never searches vectors, and never blocks
//! the async runtime by itself: every method is synchronous (microseconds for a get or a hit,
//! longer for a flush or a scan), so async callers use `spawn_blocking` for the slow ones.
//!
//! # Layout
//!
//! One sled database in [`StoreConfig::dir`], with four trees:
//! - `entries`: [`EntryId`] (big-endian) → postcard [`Entry`] ([`codec`]; schema 1 stores,
//!   whose entries are bincode 1, are migrated on open, see `migrate`);
//! - `exact`: [`ScopeId`] bytes ‖ blake3(exact form of the normalized prompt) → [`EntryId`]
//!   ([`exact_key`]; schema 2 stores, keyed by the normalized prompt itself, are re-keyed on
//!   open);
//! - `access`: [`EntryId`] → last access, hit count, expiry (24 bytes, see [`Access`]), so a hit
//!   never rewrites an entry and opening never decodes one;
//! - `meta`: schema version, embedding model id, dimension ([`meta`]), and the sequence
//!   number of the last recorded flush ([`watermark`]).
//!
//! An entry, its exact key and its access record are written and removed together in one sled
//! transaction, so an exact key never points at a missing entry.
//!
//! # Durability
//!
//! sled buffers writes in memory; they reach the disk when flushed. The store flushes every
//! [`StoreConfig::flush_every`] on its own thread (and on drop / [`Store::flush`] at shutdown).
//! **A crash (kill -9, power loss) can lose the inserts, removals and hits acknowledged during
//! the last `flush_every` (200 ms by default), never integrity**: sled's log is checksummed and
//! replays whole transactions, so after a crash every entry is either entirely present with its
//! exact key and access record, or entirely absent. Set `flush_every` to zero to flush inside
//! every insert (nothing acknowledged is lost, at the cost of an fsync per insert).
//!
//! Damaged files: a store sled cannot read, or whose metadata was lost (see [`meta`]), is
//! reported as [`StoreError::Corrupt`], never a panic. Damage in the middle of sled's log is
//! indistinguishable from a torn write to sled: it recovers the log up to the damage, so the
//! store opens consistent (whole entries only) but without the entries written after it. Each
//! flush is recorded beside sled's files, so such a loss of flushed writes is noticed on open,
//! logged at WARN and reported by [`Store::recovery`] ([`watermark`]).

mod access;
pub mod chains;
mod codec;
pub mod entry;
mod flusher;
pub mod meta;
mod migrate;
pub mod watermark;

pub use access::Access;
pub use entry::*;
pub use watermark::Recovery;

use crate::api::exact_form::exact_form;
use access::{id_from_key, id_key, Tracker};
use flusher::Flusher;
use parking_lot::Mutex;
use sled::transaction::{ConflictableTransactionError as TxError, TransactionError, Transactional};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the store lives and what it may hold.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    pub dir: PathBuf,
    /// Embedding model the stored vectors come from; a store made by another model is refused.
    pub model_id: String,
    /// Embedding dimension; checked on open and on every insert.
    pub dim: usize,
    /// Least-recently-used entries are evicted past this many; 0 means no limit.
    pub max_entries: usize,
    /// How often buffered writes are made durable; zero flushes inside every insert.
    pub flush_every: Duration,
}

impl StoreConfig {
    /// A config with the defaults: 100,000 entries, flushed every 200 ms.
    pub fn new(dir: impl Into<PathBuf>, model_id: impl Into<String>, dim: usize) -> Self {
        StoreConfig {
            dir: dir.into(),
            model_id: model_id.into(),
            dim,
            max_entries: 100_000,
            flush_every: Duration::from_millis(200),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the store was written with embedding model {stored}, but deja is configured with \
         {configured}; use another store directory, or delete this one to start empty"
    )]
    ModelMismatch { stored: String, configured: String },
    #[error("store at {path} has schema version {found}; this deja reads version {supported}")]
    SchemaMismatch {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("store at {path} is corrupt or unreadable: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("store at {path} is locked by another process")]
    Locked { path: PathBuf },
    #[error("store I/O error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entry rejected: {0}")]
    InvalidEntry(String),
    #[error("store error: {0}")]
    Db(String),
}

impl StoreError {
    pub(crate) fn from_sled(path: &Path, e: sled::Error) -> StoreError {
        let path = path.to_path_buf();
        match e {
            sled::Error::Io(source) => {
                if source.to_string().contains("could not acquire lock") {
                    StoreError::Locked { path }
                } else {
                    StoreError::Io { path, source }
                }
            }
            e @ sled::Error::Corruption { .. } => StoreError::Corrupt {
                path,
                message: e.to_string(),
            },
            other => StoreError::Db(other.to_string()),
        }
    }
}

/// What an insert did besides adding the entry: every entry it removed (the one the same
/// scope and prompt had before, and any evicted to stay under `max_entries`), which the caller
/// must also remove from the vector index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InsertOutcome {
    pub id: EntryId,
    pub removed: Vec<(ScopeId, EntryId)>,
}

/// The sled store. Cheap to clone (an `Arc` inside); the flusher stops with the last clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: StoreConfig,
    instance_id: String,
    db: sled::Db,
    entries: sled::Tree,
    exact: sled::Tree,
    access: sled::Tree,
    /// Entry id → the tenant it was stored for ([`NewEntry::namespace`]): a side record, so
    /// the entry encoding (and the schema) stay as they were.
    namespaces: sled::Tree,
    tracker: Arc<Mutex<Tracker>>,
    /// Flushes, recording each flush so that lost writes are noticed on the next open.
    durable: Arc<watermark::Durable>,
    /// What opening found about lost writes.
    recovery: Recovery,
    /// Serializes writers so in-memory order and sled agree; hits only take `tracker`.
    writer: Mutex<()>,
    flusher: Mutex<Option<Flusher>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stops and joins the flusher, which flushes one last time.
        drop(self.flusher.lock().take());
        if let Err(e) = self.durable.flush() {
            tracing::error!(error = %e, "flushing the store on close failed");
        }
    }
}

type TxResult<T> = Result<T, TxError<StoreError>>;

impl Store {
    /// Opens the store in `cfg.dir` (creating it if needed) and checks that it was made by the
    /// same embedding model and dimension.
    pub fn open(cfg: &StoreConfig) -> Result<Store, StoreError> {
        let path = cfg.dir.clone();
        if cfg.dim == 0 {
            return Err(StoreError::InvalidEntry(
                "dim must be at least 1".to_string(),
            ));
        }
        std::fs::create_dir_all(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        let db = open_sled(&path)?;
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| StoreError::from_sled(&path, e))
        };
        let (entries, exact, access, meta_tree, namespaces) = (
            tree("entries")?,
            tree("exact")?,
            tree("access")?,
            tree("meta")?,
            tree(NAMESPACES_TREE)?,
        );
        let trees = migrate::Trees {
            meta: &meta_tree,
            entries: &entries,
            exact: &exact,
            access: &access,
        };
        let instance_id = meta::create_or_verify(&trees, cfg, &path)?;
        let mut tracker = Tracker::default();
        for kv in access.iter() {
            let (k, v) = kv.map_err(|e| StoreError::from_sled(&path, e))?;
            match (id_from_key(&k), Access::decode(&v)) {
                (Some(id), Some(a)) => tracker.insert(id, a),
                _ => {
                    return Err(StoreError::Corrupt {
                        path,
                        message: format!("malformed access record {}", hex::encode(&k)),
                    })
                }
            }
        }
        let (recovery, flush_seq) = watermark::recover(&meta_tree, &path, tracker.len())?;
        let tracker = Arc::new(Mutex::new(tracker));
        let durable = Arc::new(watermark::Durable::new(
            db.clone(),
            meta_tree,
            &path,
            tracker.clone(),
            flush_seq,
        ));
        let flusher = if cfg.flush_every.is_zero() {
            None
        } else {
            Some(
                Flusher::start(durable.clone(), cfg.flush_every).map_err(|source| {
                    StoreError::Io {
                        path: path.clone(),
                        source,
                    }
                })?,
            )
        };
        Ok(Store {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                instance_id,
                db,
                entries,
                exact,
                access,
                namespaces,
                tracker,
                durable,
                recovery,
                writer: Mutex::new(()),
                flusher: Mutex::new(flusher),
            }),
        })
    }

    /// A random id made when this store was created (hex); files derived from the store, such
    /// as index snapshots, carry it so they are never applied to another store.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    /// Whether opening found that the store lost writes it had flushed (damaged files).
    pub fn recovery(&self) -> &Recovery {
        &self.inner.recovery
    }

    pub fn path(&self) -> &Path {
        &self.inner.cfg.dir
    }

    /// Stores a new entry and returns its id plus every entry the insert removed.
    pub fn insert(&self, e: NewEntry) -> Result<InsertOutcome, StoreError> {
        self.check(&e)?;
        let inner = &*self.inner;
        let _writer = inner.writer.lock();
        inner.durable.mark_changed();
        let id = inner.db.generate_id().map_err(|e| self.db_err(e))?;
        let ekey = exact_key(e.scope, &e.prompt);
        // Writers are serialized, so the exact key cannot change before the transaction. Forget
        // the old entry first: a hit racing this insert then finds nothing to record.
        if let Some(old) = inner.exact.get(ekey).map_err(|e| self.db_err(e))? {
            if let Some(old) = id_from_key(&old) {
                inner.tracker.lock().remove(old);
            }
        }
        let scope = e.scope;
        let namespace = e.namespace;
        let entry = Entry {
            id,
            scope: e.scope,
            prompt: e.prompt,
            embedding: e.embedding,
            response: e.response,
            created_ms: e.created_ms,
            expires_ms: e.expires_ms,
        };
        let bytes = codec::encode(&entry)
            .map_err(|err| StoreError::InvalidEntry(format!("cannot encode entry: {err}")))?;
        let acc = Access {
            last_ms: entry.created_ms,
            hits: 0,
            expires_ms: entry.expires_ms,
        };
        let key = id_key(id);
        let trees = (
            &inner.entries,
            &inner.exact,
            &inner.access,
            &inner.namespaces,
        );
        let replaced = trees
            .transaction(
                |(entries, exact, access, names)| -> TxResult<Option<EntryId>> {
                    let old = exact.get(ekey)?.and_then(|v| id_from_key(&v));
                    if let Some(old) = old {
                        entries.remove(&id_key(old))?;
                        access.remove(&id_key(old))?;
                        names.remove(&id_key(old))?;
                    }
                    entries.insert(&key, bytes.as_slice())?;
                    exact.insert(&ekey[..], &key[..])?;
                    access.insert(&key, &acc.encode())?;
                    if let Some(ns) = &namespace {
                        names.insert(&key, ns.as_bytes())?;
                    }
                    Ok(old)
                },
            )
            .map_err(|e| self.tx_err(e))?;
        let mut removed: Vec<(ScopeId, EntryId)> =
            replaced.map(|old| (scope, old)).into_iter().collect();
        inner.tracker.lock().insert(id, acc);
        let max = inner.cfg.max_entries;
        while max > 0 && inner.tracker.lock().len() > max {
            let Some(victim) = inner.tracker.lock().lru_victim(id) else {
                break;
            };
            match self.remove_locked(victim) {
                Ok(Some(gone)) => removed.push((gone.scope, gone.id)),
                Ok(None) => {}
                // The new entry is stored: report it, and let a later insert retry eviction.
                Err(e) => {
                    tracing::warn!(error = %e, victim, "evicting from the store failed");
                    break;
                }
            }
        }
        if inner.cfg.flush_every.is_zero() {
            self.flush()?;
        }
        Ok(InsertOutcome { id, removed })
    }

    pub fn get(&self, id: EntryId) -> Result<Option<Entry>, StoreError> {
        match self
            .inner
            .entries
            .get(id_key(id))
            .map_err(|e| self.db_err(e))?
        {
            Some(raw) => self.decode(id, &raw).map(Some),
            None => Ok(None),
        }
    }

    /// The entry stored for this scope and normalized prompt (compared by [`exact_key`], so a
    /// prose prompt also finds its case and trailing-punctuation variants), expired or not
    /// (callers check [`Entry::is_expired`]).
    pub fn get_exact(&self, scope: ScopeId, prompt: &str) -> Result<Option<Entry>, StoreError> {
        let key = exact_key(scope, prompt);
        match self.inner.exact.get(key).map_err(|e| self.db_err(e))? {
            Some(v) => match id_from_key(&v) {
                Some(id) => self.get(id),
                None => Err(self.corrupt(format!("malformed exact key value for {scope:?}"))),
            },
            None => Ok(None),
        }
    }

    /// Records a hit: the entry becomes the most recently used and its hit count grows. Cheap
    /// (an in-memory update and a 24-byte write); false if the entry is gone.
    pub fn record_hit(&self, id: EntryId, now_ms: u64) -> Result<bool, StoreError> {
        let mut tracker = self.inner.tracker.lock();
        let Some(a) = tracker.touch(id, now_ms) else {
            return Ok(false);
        };
        // Written under the tracker lock so a removal cannot slip in between (see `remove`).
        self.inner
            .access
            .insert(id_key(id), &a.encode())
            .map_err(|e| self.db_err(e))?;
        Ok(true)
    }

    /// The tenant entry `id` was stored for; `None` when it is gone or was stored before deja
    /// recorded it.
    pub fn namespace(&self, id: EntryId) -> Result<Option<String>, StoreError> {
        let raw = self
            .inner
            .namespaces
            .get(id_key(id))
            .map_err(|e| self.db_err(e))?;
        Ok(raw.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Hits recorded for `id` (across restarts, up to the last flush); `None` if it is gone.
    pub fn hits(&self, id: EntryId) -> Option<u64> {
        self.inner.tracker.lock().get(id).map(|a| a.hits)
    }

    /// Removes an entry with its exact key and access record; returns it if it existed.
    pub fn remove(&self, id: EntryId) -> Result<Option<Entry>, StoreError> {
        let _writer = self.inner.writer.lock();
        self.remove_locked(id)
    }

    /// Removes up to `limit` entries expired at `now_ms`, returning what the index must drop.
    pub fn sweep_expired(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(ScopeId, EntryId)>, StoreError> {
        let _writer = self.inner.writer.lock();
        let ids = self.inner.tracker.lock().expired(now_ms, limit);
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(e) = self.remove_locked(id)? {
                out.push((e.scope, e.id));
            }
        }
        Ok(out)
    }

    /// Calls `f` with every entry not expired at `now_ms`, in id order (to rebuild the index at
    /// start). Reads the whole `entries` tree: run it off the async runtime.
    pub fn for_each_live(&self, now_ms: u64, mut f: impl FnMut(&Entry)) -> Result<(), StoreError> {
        for kv in self.inner.entries.iter() {
            let (k, v) = kv.map_err(|e| self.db_err(e))?;
            let id = id_from_key(&k).ok_or_else(|| self.corrupt("malformed entry key".into()))?;
            let e = self.decode(id, &v)?;
            if !e.is_expired(now_ms) {
                f(&e);
            }
        }
        Ok(())
    }

    /// Up to `limit` entries with ids above `after` (all when `None`), in id order, expired
    /// ones included, each with its recorded hit count: one page of a scan (admin stats, purge,
    /// export). Reads `limit` entries: run it off the async runtime.
    pub fn scan_after(
        &self,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<(Entry, u64)>, StoreError> {
        let start = match after {
            Some(id) => match id.checked_add(1) {
                Some(next) => id_key(next),
                None => return Ok(Vec::new()),
            },
            None => id_key(0),
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for kv in self.inner.entries.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv.map_err(|e| self.db_err(e))?;
            let id = id_from_key(&k).ok_or_else(|| self.corrupt("malformed entry key".into()))?;
            let e = self.decode(id, &v)?;
            let hits = self.hits(id).unwrap_or(0);
            out.push((e, hits));
        }
        Ok(out)
    }

    /// Entries in the store (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.inner.tracker.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes every acknowledged write durable (fsync). Call it at shutdown.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.durable.flush().map_err(|e| self.db_err(e))
    }

    /// A tree of this store's database for data kept beside the entries (the labeled pairs
    /// and per-entry thresholds of `crate::quality`): flushed with the store, never read by it.
    pub fn side_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.inner.db.open_tree(name).map_err(|e| self.db_err(e))
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner.db.size_on_disk().map_err(|e| self.db_err(e))
    }

    fn check(&self, e: &NewEntry) -> Result<(), StoreError> {
        if let Some(v) = &e.embedding {
            if v.len() != self.inner.cfg.dim {
                return Err(StoreError::InvalidEntry(format!(
                    "embedding has {} dimensions, the store holds {}",
                    v.len(),
                    self.inner.cfg.dim
                )));
            }
            if !v.iter().all(|x| x.is_finite()) {
                return Err(StoreError::InvalidEntry(
                    "embedding has NaN or infinite values".into(),
                ));
            }
        }
        Ok(())
    }

    /// Removes one entry; the caller holds the writer lock.
    fn remove_locked(&self, id: EntryId) -> Result<Option<Entry>, StoreError> {
        let inner = &*self.inner;
        inner.durable.mark_changed();
        // Forget it in memory first, so a concurrent hit cannot re-create its access record
        // after the transaction deleted it.
        inner.tracker.lock().remove(id);
        let key = id_key(id);
        let path = &inner.cfg.dir;
        (
            &inner.entries,
            &inner.exact,
            &inner.access,
            &inner.namespaces,
        )
            .transaction(
                |(entries, exact, access, names)| -> TxResult<Option<Entry>> {
                    access.remove(&key)?;
                    names.remove(&key)?;
                    let Some(raw) = entries.remove(&key)? else {
                        return Ok(None);
                    };
                    let entry: Entry = codec::decode(&raw).map_err(|e| {
                        TxError::Abort(StoreError::Corrupt {
                            path: path.clone(),
                            message: format!("entry {id} does not decode: {e}"),
                        })
                    })?;
                    let ekey = exact_key(entry.scope, &entry.prompt);
                    if exact.get(ekey)?.as_deref() == Some(&key[..]) {
                        exact.remove(&ekey[..])?;
                    }
                    Ok(Some(entry))
                },
            )
            .map_err(|e| self.tx_err(e))
    }

    fn decode(&self, id: EntryId, raw: &[u8]) -> Result<Entry, StoreError> {
        codec::decode(raw).map_err(|e| self.corrupt(format!("entry {id} does not decode: {e}")))
    }

    fn corrupt(&self, message: String) -> StoreError {
        StoreError::Corrupt {
            path: self.inner.cfg.dir.clone(),
            message,
        }
    }

    fn db_err(&self, e: sled::Error) -> StoreError {
        StoreError::from_sled(&self.inner.cfg.dir, e)
    }

    fn tx_err(&self, e: TransactionError<StoreError>) -> StoreError {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => self.db_err(e),
        }
    }
}

/// Key of the exact-match tree: the scope, then blake3 of the normalized prompt's exact form
/// ([`exact_form`]: prose folded for case and trailing punctuation, anything else as it is).
/// Every exact key is derived here: inserts, lookups, removals, the migration that rebuilds
/// the tree, and the singleflight of misses.
pub fn exact_key(scope: ScopeId, prompt: &str) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..16].copy_from_slice(&scope.0);
    let text = exact_form(prompt);
    k[16..].copy_from_slice(blake3::hash(text.as_bytes()).as_bytes());
    k
}

/// The side tree of [`Store::namespace`].
pub const NAMESPACES_TREE: &str = "namespaces";

/// Opens sled, turning any failure (a panic deep in recovery included) into an error.
/// Opens the database of the store in `dir` without checking its metadata and returns its tree
/// `name` (offline tools reading [`Store::side_tree`] data while no server holds the store).
pub fn open_side_tree_offline(dir: &Path, name: &str) -> Result<sled::Tree, StoreError> {
    if !dir.is_dir() {
        return Err(StoreError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no store directory"),
        });
    }
    let db = open_sled(dir)?;
    db.open_tree(name)
        .map_err(|e| StoreError::from_sled(dir, e))
}

fn open_sled(path: &Path) -> Result<sled::Db, StoreError> {
    let opened = std::panic::catch_unwind(|| {
        sled::Config::new()
            .path(path)
            // Our own flusher owns durability timing (see the module docs).
            .flush_every_ms(None)
            .open()
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(match StoreError::from_sled(path, e) {
            StoreError::Db(message) => StoreError::Corrupt {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        }),
        Err(panic) => Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            message: panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "sled panicked while opening".to_string()),
        }),
    }
}

#[cfg(test)]
mod tests;
