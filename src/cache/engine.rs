//! The cache engine: one object that owns the storage [`Backend`] (entries and vector search,
//! embedded or shared, see [`super::backend`]) and the embedding pool, and answers two
//! questions: "is there an answer for this prompt in this scope?" and "remember this answer".
//! The server and `deja bench` call exactly this code, whichever backend runs. Searches and
//! storage writes run on blocking threads, bounded (lookups by [`super::blocking`], inserts by
//! [`INSERT_THREADS`]), inference on the embedding pool's own threads: nothing here blocks the
//! async runtime.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backend::{Backend, EmbeddedBackend, Health, Near};
use super::blocking::{LookupGate, LookupLimits};
use super::restore::IndexLoad;
use crate::cache::guards::{Features, GuardVerdict};
use crate::cache::verify::{
    decide_with, passes_entry_floor, Candidate, Decision, MissReason, Rule, Verified,
};
use crate::embed::{EmbedError, EmbedPool, PairScorer};
use crate::index::{IndexError, ScopedIndex, SnapshotError, SnapshotStats};
use crate::quality::pairs::Ledger;
use crate::store::{now_ms, CachedResponse, Entry, EntryId, NewEntry, ScopeId, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The shared backend failed (down, slow, refused); the request is forwarded uncached.
    #[error(transparent)]
    Postgres(#[from] super::backend::PgError),
    #[error("background task failed: {0}")]
    Join(String),
    /// A lookup's blocking step could not run in time (see [`super::blocking`]); the request
    /// is answered as a miss.
    #[error(
        "cache {what} not run ({reason}, all {threads} lookup threads busy): answered as a miss"
    )]
    Busy {
        what: &'static str,
        threads: usize,
        reason: &'static str,
    },
}

/// Engine-wide knobs that are not per request.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Veto candidates whose negation or numbers differ from the query.
    pub guards: bool,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings { guards: true }
    }
}

/// Result of a lookup.
#[derive(Debug, Clone)]
pub enum Lookup {
    Exact(Entry),
    Semantic {
        entry: Entry,
        similarity: f32,
        verified: Verified,
    },
    /// The rule could not decide the most similar candidate: only the judge can (see
    /// [`super::verify`]). Carries what a miss carries too, for when the judge says no.
    Uncertain {
        entry: Entry,
        similarity: f32,
        embedding: Arc<[f32]>,
    },
    /// No usable answer. The embedding (when computed) is handed back so the insert after the
    /// upstream answer does not pay for the model again; `best` is the top similarity seen.
    Miss {
        embedding: Option<Arc<[f32]>>,
        best: Option<f32>,
    },
}

/// The semantic step's result.
#[derive(Debug, Clone)]
pub struct SemanticOutcome {
    /// The selected entry with its similarity and how it was verified.
    pub hit: Option<(Entry, f32, Verified)>,
    /// The most similar candidate, when only the judge can decide it.
    pub uncertain: Option<(Entry, f32)>,
    /// The best similarity seen (for near-miss metrics and headers). Below the threshold it is
    /// the nearest indexed neighbour's, whose entry is not read.
    pub best: Option<f32>,
    /// Guards that turned away candidates above the threshold.
    pub vetoed: Vec<GuardVerdict>,
    /// The candidate was between the bars and the verifier did not confirm it.
    pub unverified: bool,
    /// The verifier model's P(same) and the time it took, when it ran.
    pub model: Option<(f32, Duration)>,
    /// The most similar candidate was turned away by its entry's own threshold (feedback).
    pub tightened: bool,
}

/// What a lookup did, for headers, logs and metrics: where it spent its time and which guards
/// turned candidates away.
#[derive(Debug, Clone, Default)]
pub struct LookupTrace {
    pub exact: Duration,
    pub embed: Duration,
    pub search: Duration,
    /// Time spent asking the LLM judge (zero when it was not asked).
    pub judge: Duration,
    pub vetoed: Vec<GuardVerdict>,
    /// The most similar candidate passed the guards but the verifier did not confirm it.
    pub unverified: bool,
    /// The verifier model's P(same) and the time it took, when it ran (part of `search`).
    pub model: Option<(f32, Duration)>,
    /// The most similar candidate was turned away by its entry's own threshold (feedback).
    pub tightened: bool,
}

impl LookupTrace {
    /// Time spent in the lookup: its three phases and the judge.
    pub fn total(&self) -> Duration {
        self.exact + self.embed + self.search + self.judge
    }
}

#[derive(Clone)]
pub struct CacheEngine {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    embed: Arc<EmbedPool>,
    settings: parking_lot::RwLock<EngineSettings>,
    inserts: tokio::sync::Semaphore,
    lookups: LookupGate,
    /// The verifier model, when `[cache.verifier]` names one.
    pair: parking_lot::RwLock<Option<Arc<dyn PairScorer>>>,
    /// Feedback's per-entry thresholds and recorded pairs (`crate::quality`), once attached.
    ledger: std::sync::OnceLock<Arc<Ledger>>,
}

/// Inserts running on blocking threads at once (see [`CacheEngine::insert`]). Two keep both of
/// a small machine's cores busy; inserts into one scope serialize on its lock anyway.
pub const INSERT_THREADS: usize = 2;

impl CacheEngine {
    /// An engine on the embedded backend: wraps an opened store and loads every live entry
    /// into the index, restoring HNSW graphs from the snapshot under `snapshots` when there is
    /// a usable one (blocking: call it at start-up, off the runtime). `snapshots` is also where
    /// [`Self::snapshot_blocking`] writes.
    pub fn open(
        store: Store,
        index: ScopedIndex,
        embed: Arc<EmbedPool>,
        settings: EngineSettings,
        snapshots: Option<PathBuf>,
    ) -> Result<(CacheEngine, IndexLoad), CacheError> {
        let limits = LookupLimits::default();
        Self::open_with_limits(store, index, embed, settings, snapshots, limits)
    }

    /// [`Self::open`] with the lookups' blocking work bounded by `limits` instead of the
    /// defaults for this machine's cores.
    pub fn open_with_limits(
        store: Store,
        index: ScopedIndex,
        embed: Arc<EmbedPool>,
        settings: EngineSettings,
        snapshots: Option<PathBuf>,
        limits: LookupLimits,
    ) -> Result<(CacheEngine, IndexLoad), CacheError> {
        let (backend, load) = EmbeddedBackend::open(store, index, snapshots)?;
        let engine = Self::with_backend(Arc::new(backend), embed, settings, limits);
        Ok((engine, load))
    }

    /// An engine on an opened backend, whichever it is.
    pub fn with_backend(
        backend: Arc<dyn Backend>,
        embed: Arc<EmbedPool>,
        settings: EngineSettings,
        limits: LookupLimits,
    ) -> CacheEngine {
        CacheEngine {
            inner: Arc::new(Inner {
                backend,
                embed,
                settings: parking_lot::RwLock::new(settings),
                inserts: tokio::sync::Semaphore::new(INSERT_THREADS),
                lookups: LookupGate::new(limits),
                pair: parking_lot::RwLock::new(None),
                ledger: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Writes an index snapshot if the backend keeps one, snapshots are enabled and the index
    /// changed since the last one. Blocking, seconds per million vectors.
    pub fn snapshot_blocking(&self) -> Result<Option<SnapshotStats>, CacheError> {
        self.inner.backend.snapshot()
    }

    /// Sets (or clears) the verifier model that rules with a [`super::verify::ModelBar`] use.
    pub fn set_pair_scorer(&self, scorer: Option<Arc<dyn PairScorer>>) {
        *self.inner.pair.write() = scorer;
    }

    /// Attaches the quality ledger: from then on a candidate must be more similar than its
    /// entry's own threshold, when feedback set one. Once; a second ledger is ignored.
    pub fn set_ledger(&self, ledger: Arc<Ledger>) {
        let _ = self.inner.ledger.set(ledger);
    }

    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.inner.ledger.get()
    }

    /// The storage backend (entries and vector search).
    pub fn backend(&self) -> &dyn Backend {
        &*self.inner.backend
    }

    /// The storage backend, shared (a fleet-wide claim keeps it to release itself).
    pub fn backend_arc(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.inner.backend)
    }

    /// [`Backend::claim_flight`] on a lookup thread (bounded as every lookup is).
    pub async fn claim_flight(
        &self,
        key: super::backend::ExactKey,
    ) -> Result<Option<super::backend::Claim>, CacheError> {
        let this = self.clone();
        self.inner
            .lookups
            .run("singleflight claim", move || {
                this.inner.backend.claim_flight(&key)
            })
            .await
    }

    /// [`Backend::flight_state`] on a lookup thread.
    pub async fn flight_state(
        &self,
        key: super::backend::ExactKey,
    ) -> Result<super::backend::Claim, CacheError> {
        let this = self.clone();
        self.inner
            .lookups
            .run("singleflight poll", move || {
                this.inner.backend.flight_state(&key)
            })
            .await
    }

    /// Entries held by the backend (for the gauge and the start-up log).
    pub fn entries(&self) -> usize {
        self.inner.backend.len()
    }

    /// Whether the backend can serve now (`/readyz`).
    pub fn health(&self) -> Health {
        self.inner.backend.health()
    }

    /// The in-process index, when the embedded backend runs (operations, tests).
    pub fn index(&self) -> Option<&ScopedIndex> {
        self.inner.backend.as_embedded().map(EmbeddedBackend::index)
    }

    pub fn embedder(&self) -> &Arc<EmbedPool> {
        &self.inner.embed
    }

    pub fn settings(&self) -> EngineSettings {
        self.inner.settings.read().clone()
    }

    pub fn set_settings(&self, settings: EngineSettings) {
        *self.inner.settings.write() = settings;
    }

    /// Exact lookup → (if `semantic`) embed → search → guards.
    pub async fn lookup(
        &self,
        scope: ScopeId,
        prompt: &str,
        semantic: bool,
        rule: Rule,
        timings: &mut LookupTrace,
    ) -> Result<Lookup, CacheError> {
        // One blocking task does the exact lookup and, on a miss, queues the embedding itself:
        // the prompt goes from the blocking thread straight to the embedding workers instead of
        // bouncing through the runtime first (each hand-off between idle threads costs tens of
        // microseconds on a small VM). When the exact lookup is a database round trip and an
        // embedding worker is idle, the embedding is queued first and runs during the round
        // trip; an exact hit abandons it (a worker that has not started it skips it, one that
        // has leaves it in the embedding LRU). A busy encoder is not handed work that an exact
        // hit would waste.
        let started = Instant::now();
        let (exact, pending, exact_time) = {
            let this = self.clone();
            let prompt = prompt.to_string();
            self.inner
                .lookups
                .run("exact lookup", move || {
                    // Best effort: an exact hit must not fail because the encoder did.
                    let early = (semantic
                        && this.inner.backend.remote()
                        && this.inner.embed.has_idle_worker())
                    .then(|| this.inner.embed.submit(&prompt).ok())
                    .flatten();
                    let exact = this.exact_blocking(scope, &prompt)?;
                    let exact_time = started.elapsed();
                    let pending = match (&exact, early) {
                        (None, Some(early)) => Some(early),
                        (None, None) if semantic => Some(this.inner.embed.submit(&prompt)?),
                        _ => None,
                    };
                    Ok((exact, pending, exact_time))
                })
                .await?
        };
        timings.exact = exact_time;
        if let Some(entry) = exact {
            return Ok(Lookup::Exact(entry));
        }
        let Some(pending) = pending else {
            return Ok(Lookup::Miss {
                embedding: None,
                best: None,
            });
        };
        let embedding = pending.wait().await?;
        timings.embed = started.elapsed().saturating_sub(exact_time);
        let started = Instant::now();
        let this = self.clone();
        let prompt = prompt.to_string();
        let vector = embedding.clone();
        let found = self
            .inner
            .lookups
            .run("semantic search", move || {
                this.semantic_blocking(scope, &prompt, &vector, &rule)
            })
            .await?;
        timings.search = started.elapsed();
        timings.vetoed = found.vetoed;
        timings.unverified = found.unverified;
        timings.model = found.model;
        timings.tightened = found.tightened;
        Ok(match (found.hit, found.uncertain) {
            (Some((entry, similarity, verified)), _) => Lookup::Semantic {
                entry,
                similarity,
                verified,
            },
            (None, Some((entry, similarity))) => Lookup::Uncertain {
                entry,
                similarity,
                embedding,
            },
            (None, None) => Lookup::Miss {
                embedding: Some(embedding),
                best: found.best,
            },
        })
    }

    /// [`Self::exact_blocking`] on a lookup thread (bounded as every lookup is).
    pub async fn exact(&self, scope: ScopeId, prompt: String) -> Result<Option<Entry>, CacheError> {
        let this = self.clone();
        self.inner
            .lookups
            .run("exact lookup", move || this.exact_blocking(scope, &prompt))
            .await
    }

    /// The gate lookups' blocking steps take slots from (tests occupy it).
    #[cfg(test)]
    pub(crate) fn lookup_gate(&self) -> &LookupGate {
        &self.inner.lookups
    }

    /// Exact-key lookup; expired entries count as absent. A hit is recorded.
    pub fn exact_blocking(
        &self,
        scope: ScopeId,
        prompt: &str,
    ) -> Result<Option<Entry>, CacheError> {
        let found = self.peek_exact_blocking(scope, prompt)?;
        if let Some(e) = &found {
            // Recency is bookkeeping for eviction: a failed write must not fail the hit.
            if let Err(err) = self.inner.backend.record_hit(e.id, now_ms()) {
                tracing::debug!(error = %err, "recording a hit failed");
            }
        }
        Ok(found)
    }

    /// [`Self::exact_blocking`] without recording the hit (explain).
    pub fn peek_exact_blocking(
        &self,
        scope: ScopeId,
        prompt: &str,
    ) -> Result<Option<Entry>, CacheError> {
        match self.inner.backend.get_exact(scope, prompt)? {
            Some(e) if !e.is_expired(now_ms()) => Ok(Some(e)),
            _ => Ok(None),
        }
    }

    /// The `k` nearest live entries of `scope` with their guard verdicts, most similar first,
    /// read without recording anything (explain lists them; the decision is
    /// [`Self::decide_blocking`]'s).
    pub fn top_candidates_blocking(
        &self,
        scope: ScopeId,
        prompt: &str,
        embedding: &[f32],
        k: usize,
    ) -> Result<Vec<(Candidate, Entry)>, CacheError> {
        let neighbours = self.inner.backend.nearest(scope, embedding, k)?;
        self.resolve_blocking(scope, prompt, neighbours)
    }

    /// Removes an entry from the backend (store and search at once); the removed entry.
    pub fn remove_blocking(&self, id: EntryId) -> Result<Option<Entry>, CacheError> {
        self.inner.backend.remove(id)
    }

    /// Whether the guards run (the engine's setting, which a rule cannot override).
    pub fn guards_enabled(&self) -> bool {
        self.inner.settings.read().guards
    }

    /// Nearest live neighbours of `embedding` in `scope` with guard verdicts, most similar
    /// first. Expired or vanished entries are skipped.
    pub fn candidates_blocking(
        &self,
        scope: ScopeId,
        prompt: &str,
        embedding: &[f32],
    ) -> Result<Vec<(Candidate, Entry)>, CacheError> {
        let neighbours = self.nearest_blocking(scope, embedding)?;
        self.resolve_blocking(scope, prompt, neighbours)
    }

    /// The index neighbours the hit rule looks at: the most similar entry only, since fetching
    /// more would be wasted store reads and guard checks on the hot path.
    fn nearest_blocking(&self, scope: ScopeId, embedding: &[f32]) -> Result<Vec<Near>, CacheError> {
        self.inner.backend.nearest(scope, embedding, 1)
    }

    /// Reads the entries of index neighbours and checks the guards; expired or vanished
    /// entries are skipped.
    fn resolve_blocking(
        &self,
        scope: ScopeId,
        prompt: &str,
        neighbours: Vec<Near>,
    ) -> Result<Vec<(Candidate, Entry)>, CacheError> {
        let now = now_ms();
        let query = Features::of(prompt);
        let mut out = Vec::with_capacity(neighbours.len());
        for n in neighbours {
            let entry = match n.entry {
                Some(e) => Some(e),
                None => self.inner.backend.get(n.id)?,
            };
            let Some(entry) = entry else {
                continue;
            };
            if entry.is_expired(now) || entry.scope != scope {
                continue;
            }
            let features = Features::of(&entry.prompt);
            out.push((
                Candidate {
                    id: n.id,
                    similarity: n.similarity,
                    guard: query.compare(&features),
                    same_content: query.same_content(&features),
                },
                entry,
            ));
        }
        Ok(out)
    }

    /// The semantic step: the selected entry (if any) and the best similarity seen. `rule`
    /// comes with the request; whether guards run is the engine's setting.
    pub fn semantic_blocking(
        &self,
        scope: ScopeId,
        prompt: &str,
        embedding: &[f32],
        rule: &Rule,
    ) -> Result<SemanticOutcome, CacheError> {
        let outcome = self.decide_blocking(scope, prompt, embedding, rule)?;
        if let Some((e, _, _)) = &outcome.hit {
            self.record_hit(e.id);
        }
        Ok(outcome)
    }

    /// What [`Self::semantic_blocking`] decides, without recording the hit: the one decision
    /// path both the request path and `POST /admin/explain` take, so an explanation is what a
    /// request does.
    pub fn decide_blocking(
        &self,
        scope: ScopeId,
        prompt: &str,
        embedding: &[f32],
        rule: &Rule,
    ) -> Result<SemanticOutcome, CacheError> {
        let rule = Rule {
            guards: rule.guards && self.inner.settings.read().guards,
            ..*rule
        };
        let neighbours = self
            .inner
            .backend
            .nearest_reaching(scope, embedding, 1, rule.floor())?;
        // Below the rule's floor nothing can be served, so the store read and the guards are
        // skipped: `best` is then the nearest indexed neighbour, not checked for expiry.
        if let Some(top) = neighbours.first().filter(|n| n.similarity < rule.floor()) {
            return Ok(SemanticOutcome {
                hit: None,
                uncertain: None,
                best: Some(top.similarity),
                vetoed: Vec::new(),
                unverified: false,
                model: None,
                tightened: false,
            });
        }
        let candidates = self.resolve_blocking(scope, prompt, neighbours)?;
        let best = candidates.first().map(|(c, _)| c.similarity);
        // Feedback raised this entry's own bar: at or below it the most similar candidate is a
        // miss, before any verifier or judge is paid for.
        if let Some((top, _)) = candidates.first() {
            let floor = self.ledger().and_then(|l| l.floors().floor(top.id));
            if !passes_entry_floor(top.similarity, floor) {
                return Ok(SemanticOutcome {
                    hit: None,
                    uncertain: None,
                    best,
                    vetoed: Vec::new(),
                    unverified: false,
                    model: None,
                    tightened: true,
                });
            }
        }
        let only: Vec<Candidate> = candidates.iter().map(|(c, _)| c.clone()).collect();
        let pair = self.inner.pair.read().clone();
        let mut model_time = Duration::ZERO;
        let (decision, score) = decide_with(&only, &rule, |c| {
            let stored = &candidates.iter().find(|(x, _)| x.id == c.id)?.1.prompt;
            let started = Instant::now();
            let scored = pair.as_ref()?.score(prompt, stored);
            model_time = started.elapsed();
            scored
                .map_err(|err| tracing::warn!(error = %err, "verifier model failed: a miss"))
                .ok()
        });
        let mut vetoed = Vec::new();
        let unverified = decision == Decision::Miss(MissReason::Unverified);
        let take = |id: EntryId| {
            candidates
                .into_iter()
                .find(|(c, _)| c.id == id)
                .map(|(c, e)| (e, c.similarity))
        };
        let (hit, uncertain) = match decision {
            Decision::Hit { id, verified } => (take(id).map(|(e, s)| (e, s, verified)), None),
            Decision::Uncertain { id } => (None, take(id)),
            Decision::Miss(reason) => {
                if let MissReason::Vetoed(g) = reason {
                    vetoed.push(g);
                }
                (None, None)
            }
        };
        Ok(SemanticOutcome {
            hit,
            uncertain,
            best,
            vetoed,
            unverified,
            model: score.map(|s| (s, model_time)),
            tightened: false,
        })
    }

    /// [`Self::record_hit`] on a lookup thread, for hits decided on the runtime (the judge's):
    /// a store write must not run on the async runtime. Best effort, like the write itself.
    pub async fn record_hit_async(&self, id: EntryId) {
        let this = self.clone();
        let recorded = self
            .inner
            .lookups
            .run("hit bookkeeping", move || {
                this.record_hit(id);
                Ok(())
            })
            .await;
        if let Err(err) = recorded {
            tracing::debug!(error = %err, "recording a hit skipped");
        }
    }

    /// Recency bookkeeping for eviction: a failed write must not fail the hit.
    pub fn record_hit(&self, id: EntryId) {
        if let Err(err) = self.inner.backend.record_hit(id, now_ms()) {
            tracing::debug!(error = %err, "recording a hit failed");
        }
    }

    /// Stores an answer for `namespace` (the request's tenant, kept for admin stats and purge)
    /// and makes its embedding searchable. Replaced and evicted entries leave the search too.
    pub fn insert_blocking(
        &self,
        scope: ScopeId,
        prompt: &str,
        embedding: Option<&[f32]>,
        response: CachedResponse,
        ttl: Duration,
        namespace: Option<&str>,
    ) -> Result<EntryId, CacheError> {
        let now = now_ms();
        self.inner.backend.insert(NewEntry {
            scope,
            prompt: prompt.to_string(),
            embedding: embedding.map(<[f32]>::to_vec),
            response,
            created_ms: now,
            expires_ms: now.saturating_add(ttl.as_millis() as u64),
            namespace: namespace.map(str::to_string),
        })
    }

    /// Async wrapper of [`Self::insert_blocking`]. At most [`INSERT_THREADS`] inserts hold a
    /// blocking thread at once; the rest wait as futures. An insert can wait for seconds (a
    /// snapshot writing its scope's graph), and a burst of misses must never fill tokio's
    /// blocking pool, which the hit path's lookups also run on.
    pub async fn insert(
        &self,
        scope: ScopeId,
        prompt: String,
        embedding: Option<Arc<[f32]>>,
        response: CachedResponse,
        ttl: Duration,
        namespace: Option<String>,
    ) -> Result<EntryId, CacheError> {
        let this = self.clone();
        self.insert_slot(move || {
            let ns = namespace.as_deref();
            this.insert_blocking(scope, &prompt, embedding.as_deref(), response, ttl, ns)
        })
        .await
    }

    /// Runs `f` on a blocking thread once one of the [`INSERT_THREADS`] insert slots is free.
    async fn insert_slot<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
    ) -> Result<T, CacheError> {
        let _permit = self
            .inner
            .inserts
            .acquire()
            .await
            .map_err(|e| CacheError::Join(e.to_string()))?;
        blocking(f).await
    }

    /// The conversation record stored under a Responses id (`cache::chains`), on a lookup
    /// thread (bounded as every lookup is).
    pub async fn chain(&self, id: String) -> Result<Option<Vec<u8>>, CacheError> {
        let this = self.clone();
        self.inner
            .lookups
            .run("chain lookup", move || {
                this.inner.backend.get_chain(&id, now_ms())
            })
            .await
    }

    /// Stores a conversation record (`cache::chains`) for `ttl`, within `limits`; bounded as
    /// inserts are ([`INSERT_THREADS`]).
    pub async fn put_chain(
        &self,
        id: String,
        record: Vec<u8>,
        ttl: Duration,
        limits: super::backend::ChainLimits,
    ) -> Result<(), CacheError> {
        let this = self.clone();
        self.insert_slot(move || {
            let now = now_ms();
            let expires = now.saturating_add(ttl.as_millis() as u64);
            this.inner
                .backend
                .put_chain(&id, &record, now, expires, limits)
        })
        .await
    }

    /// Removes up to `limit` expired entries; returns how many went.
    pub fn sweep_expired_blocking(&self, limit: usize) -> Result<usize, CacheError> {
        self.inner.backend.sweep_expired(now_ms(), limit)
    }

    pub fn flush_blocking(&self) -> Result<(), CacheError> {
        self.inner.backend.flush()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
) -> Result<T, CacheError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CacheError::Join(e.to_string()))?
}
