//! The storage seam: everything the [`super::engine`] needs from storage, behind one trait.
//! The engine, the policy, the guards, the verifier, `deja bench` and the server see only
//! [`Backend`]; which implementation runs is chosen at start-up (`[cache] backend`).
//!
//! - [`embedded`]: the sled store (source of truth) plus the in-process per-scope index, the
//!   zero-setup default;
//! - [`postgres`]: PostgreSQL with pgvector, one cache shared by every replica of a fleet.
//!
//! Every method is synchronous and may block (a disk read, a network round trip): the engine
//! calls them from its bounded blocking threads ([`super::blocking`]), never from the async
//! runtime. A backend never embeds and never decides whether a candidate is a hit: it stores
//! entries and answers "nearest entries of this scope", with hard scope isolation (a result of
//! another scope is never returned).

pub mod embedded;
pub mod postgres;

pub use embedded::EmbeddedBackend;
pub use postgres::{PgError, PostgresBackend};

use super::engine::CacheError;
use crate::index::SnapshotStats;
pub use crate::store::chains::ChainLimits;
use crate::store::{Entry, EntryId, NewEntry, Recovery, ScopeId};

/// [`crate::store::exact_key`]: scope and normalized prompt.
pub type ExactKey = [u8; 48];

/// One result of [`Backend::nearest`].
#[derive(Clone, Debug)]
pub struct Near {
    pub id: EntryId,
    /// Cosine similarity in [-1, 1]; higher is more similar.
    pub similarity: f32,
    /// The entry itself when the backend read it with the search (one round trip instead of
    /// two); `None` when the engine must [`Backend::get`] it, which it only does when the
    /// similarity can lead to a hit.
    pub entry: Option<Entry>,
}

/// One result of [`Backend::scan`].
#[derive(Clone, Debug)]
pub struct Scanned {
    pub entry: Entry,
    /// Hits recorded for it (recent ones may still be pending).
    pub hits: u64,
    /// The tenant it was stored for; `None` for entries stored before deja recorded it.
    pub namespace: Option<String>,
}

/// Whether the backend can serve right now (`/readyz`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Ready,
    /// Requests are forwarded uncached until it recovers; the reason is safe to show (no
    /// address, no password).
    Degraded(String),
}

/// Where an identical miss stands across the fleet ([`Backend::claim_flight`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This replica now holds the flight (with this token) until it releases it, or stops
    /// renewing it for the backend's timeout.
    Led(u64),
    /// A live answer is stored for the key: look it up.
    Stored,
    /// Another replica holds the flight; its claim runs out in this much unless renewed.
    Held(std::time::Duration),
    /// Nobody could be made to wait for: go upstream without a claim (the holder released it
    /// without an answer, a race, or the backend cannot keep more claims now).
    Free,
}

/// Counters a backend keeps for `/metrics` (exported by `metrics::backend`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Calls that failed (unreachable, timed out, refused), each forwarded uncached.
    pub errors: u64,
    /// Hits not recorded because the pending batch was full.
    pub hits_dropped: u64,
    pub degraded: bool,
    /// Connections to a database open now (none in process).
    pub connections: usize,
    /// Lookups whose first, cheaper search found nothing servable and searched again
    /// ([`Backend::nearest_reaching`]).
    pub second_searches: u64,
}

/// What the cache engine needs from storage. See the module docs.
pub trait Backend: Send + Sync + 'static {
    /// `embedded` or `postgres`: for logs, metrics labels and `deja bench` reports.
    fn kind(&self) -> &'static str;

    /// The entry stored for this scope and normalized prompt (by [`crate::store::exact_key`]),
    /// expired or not (the engine checks [`Entry::is_expired`]).
    fn get_exact(&self, scope: ScopeId, prompt: &str) -> Result<Option<Entry>, CacheError>;

    fn get(&self, id: EntryId) -> Result<Option<Entry>, CacheError>;

    /// At most `k` entries of `scope` nearest to `embedding`, most similar first. Never an
    /// entry of another scope.
    fn nearest(&self, scope: ScopeId, embedding: &[f32], k: usize)
        -> Result<Vec<Near>, CacheError>;

    /// [`Self::nearest`] for a decision that can only use a neighbour at least `floor`
    /// similar. A backend whose full search is costly may search with less effort first and
    /// search fully only when nothing it found reaches `floor`: a cheaper search can miss the
    /// nearest entry, never invent one, so what it finds at or above `floor` is servable.
    fn nearest_reaching(
        &self,
        scope: ScopeId,
        embedding: &[f32],
        k: usize,
        _floor: f32,
    ) -> Result<Vec<Near>, CacheError> {
        self.nearest(scope, embedding, k)
    }

    /// Recency bookkeeping for eviction (may be batched: best effort).
    fn record_hit(&self, id: EntryId, now_ms: u64) -> Result<(), CacheError>;

    /// Stores a new entry (replacing the one the same scope and prompt had, evicting past the
    /// size limit) and makes it searchable; returns its id.
    fn insert(&self, entry: NewEntry) -> Result<EntryId, CacheError>;

    /// Removes up to `limit` entries expired at `now_ms`; returns how many went.
    fn sweep_expired(&self, now_ms: u64, limit: usize) -> Result<usize, CacheError>;

    /// Removes one entry from the store and from the search at once (admin delete and purge):
    /// once this returns, no lookup finds it. Returns it if it existed.
    fn remove(&self, id: EntryId) -> Result<Option<Entry>, CacheError>;

    /// One page of a scan: up to `limit` entries with ids above `after` (from the start when
    /// `None`), in id order, expired ones included, each with its stored hit count (admin
    /// stats, purge, export). Pages are read one at a time, so a scan never holds the store.
    fn scan(&self, after: Option<EntryId>, limit: usize) -> Result<Vec<Scanned>, CacheError>;

    /// Stores an entry as it was exported (prompt, embedding, answer, times), under a new id,
    /// replacing what the same scope and prompt had (admin import). Nothing is re-embedded.
    fn import(&self, entry: NewEntry) -> Result<EntryId, CacheError> {
        self.insert(entry)
    }

    /// [`Backend::import`] of several entries, in order; returns how many were stored before
    /// an error stopped it. A backend whose writes each wait for a commit stores them in
    /// fewer transactions.
    fn import_batch(&self, entries: Vec<NewEntry>) -> (usize, Result<(), CacheError>) {
        let mut n = 0;
        for entry in entries {
            if let Err(e) = self.import(entry) {
                return (n, Err(e));
            }
            n += 1;
        }
        (n, Ok(()))
    }

    /// Entries held (expired ones included until swept); may be a recent estimate.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes every acknowledged write durable (shutdown).
    fn flush(&self) -> Result<(), CacheError>;

    /// Writes an index snapshot when the backend keeps one and it changed.
    fn snapshot(&self) -> Result<Option<SnapshotStats>, CacheError> {
        Ok(None)
    }

    /// What opening found about writes lost to damaged files.
    fn recovery(&self) -> Recovery {
        Recovery::default()
    }

    fn health(&self) -> Health {
        Health::Ready
    }

    /// Whether an exact lookup is a round trip to another process (a database), not a read
    /// from memory: the engine then embeds the prompt while the exact lookup runs, instead of
    /// after it.
    fn remote(&self) -> bool {
        false
    }

    fn stats(&self) -> BackendStats {
        BackendStats::default()
    }

    /// Whether identical misses on different processes sharing this backend can wait for one
    /// another ([`Self::claim_flight`]). The embedded backend has one process: its in-process
    /// singleflight is enough.
    fn fleet_singleflight(&self) -> bool {
        false
    }

    /// Claims the upstream call for the miss with this exact key ([`crate::store::exact_key`])
    /// for the whole fleet, or says who holds it. `None`: no fleet-wide singleflight here.
    fn claim_flight(&self, _key: &ExactKey) -> Result<Option<Claim>, CacheError> {
        Ok(None)
    }

    /// Where the flight of this key stands now (never [`Claim::Led`]).
    fn flight_state(&self, _key: &ExactKey) -> Result<Claim, CacheError> {
        Ok(Claim::Free)
    }

    /// Gives a [`Claim::Led`] back. Never blocks (it may run in a drop on the async runtime):
    /// the backend does it in the background.
    fn release_flight(&self, _key: &ExactKey, _token: u64) {}

    /// Stores the conversation record of a Responses answer (`crate::cache::chains`) under its
    /// response id until `expires_ms`, replacing what the id had; past either of `limits` the
    /// soonest-expiring records go, and records expired at `now_ms` are deleted as it goes.
    fn put_chain(
        &self,
        id: &str,
        record: &[u8],
        now_ms: u64,
        expires_ms: u64,
        limits: ChainLimits,
    ) -> Result<(), CacheError>;

    /// The record stored under a response id, unless it expired at `now_ms`.
    fn get_chain(&self, id: &str, now_ms: u64) -> Result<Option<Vec<u8>>, CacheError>;

    /// The embedded backend, for operations and tests that look inside it (index stats).
    fn as_embedded(&self) -> Option<&EmbeddedBackend> {
        None
    }
}
