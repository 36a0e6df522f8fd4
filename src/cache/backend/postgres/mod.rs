//! The PostgreSQL + pgvector backend: one cache shared by every replica of a fleet. Entries
//! live in one table of the schema deja owns ([`schema`]); the exact key is a unique index, so
//! an answer written by one replica is found by every other at once, and the nearest-neighbour
//! search is an HNSW index (`vector_cosine_ops`) queried inside the request's scope.
//!
//! - **Isolation**: the scope is always in the `WHERE` clause of a search, whatever plan the
//!   database picks; the engine checks it again on every returned entry.
//! - **Recall**: a filtered HNSW scan returns `ef_search` rows before the scope filter drops
//!   most of them, so every connection runs with `hnsw.iterative_scan = relaxed_order`
//!   (pgvector >= 0.8): the scan goes on until it found enough rows of the scope. The closest
//!   [`CANDIDATES`] rows are then ordered exactly. `hnsw.ef_search` is
//!   `cache.postgres.ef_search` (100: pgvector's 40 loses recall in a 1M-entry scope; a small
//!   scope is read through its btree and ordered exactly, whatever it is). Connections also run with
//!   `plan_cache_mode = force_custom_plan`: after five executions a prepared search would
//!   switch to a generic plan, which cannot see the scope's size and read a 100k-entry scope
//!   through the scope's btree with an exact sort (455 ms, measured) instead of the HNSW index
//!   (1.15 ms); a custom plan per search costs a fraction of a millisecond of planning.
//! - **Two searches per lookup, at most**: the HNSW scan's cost grows with `ef_search`, so a
//!   lookup searches first with `cache.postgres.first_ef_search` (40) and again with
//!   `ef_search` only when nothing found reaches the decision rule's floor
//!   ([`Backend::nearest_reaching`]). A cheaper search can miss the nearest entry, never invent
//!   one, and a lookup that finds nothing servable searches again, so the two decide as one
//!   full search does (measured on 100k and 1M real vectors, docs/benchmarks.md §8). Other
//!   searches (`explain`, benches) make the full one.
//! - **The lookups' own connections** ([`direct`]): half of `pool_size`, driven by the calling
//!   thread itself, for the exact lookup and the first search; the pool has the rest.
//! - **Durability**: an insert is one autocommitted statement, committed before the engine
//!   acknowledges it: killing a replica loses nothing it reported as stored (no flush window).
//! - **Fail open**: every call is bounded by `statement_timeout` (a connection-level setting
//!   and a client-side timeout, waiting for a pooled connection included); an error turns the
//!   lookup into a miss and the request is forwarded uncached. The backend then reports
//!   [`Health::Degraded`] (`/readyz`) and counts it, and its maintenance task pings the
//!   database until it answers again; the pool reconnects by itself.
//! - **Singleflight across replicas**: identical misses on different replicas wait for the one
//!   that claimed the upstream call, bounded ([`flights`]).
//! - **Bookkeeping in batches**: hits are gathered in memory (bounded) and written every
//!   [`MAINTENANCE_EVERY`] in one statement; expiry and `max_entries` eviction delete in
//!   batches of [`DELETE_BATCH`] rows, so neither holds locks on many rows for long.
//!
//! The API is synchronous, like every backend's (the engine calls it from its blocking
//! threads): calls run on a small runtime of the backend's own, which also drives the
//! connections. The database URL is read from the environment once and never logged.

mod admin;
mod chains;
mod direct;
mod flights;
pub mod schema;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use parking_lot::Mutex;
use pgvector::Vector;
use tokio_postgres::types::Json;
use tokio_postgres::{NoTls, Row};

use super::{Backend, BackendStats, Claim, ExactKey, Health, Near};
use crate::cache::engine::CacheError;
use crate::config::PostgresConfig;
use crate::store::{exact_key, now_ms, CachedResponse, Entry, EntryId, NewEntry, ScopeId};
use schema::Names;

/// Rows the in-scope search orders exactly after the index scan, at least (a request for more
/// neighbours orders that many). The first `ef_search` rows of the scan come from one batch
/// of the graph search, sorted; relaxed order can only misplace rows of later batches.
/// Measured on 100k real MiniLM vectors: ordering 40 instead of 10 costs 0.05–0.17 ms.
pub const CANDIDATES: i64 = 10;
/// Neighbours one search returns at most (`top` of `POST /admin/explain` is at most 50).
pub const MAX_NEIGHBOURS: usize = 64;
/// How often hits are written, expiry/eviction checked, and a degraded database pinged.
pub const MAINTENANCE_EVERY: Duration = Duration::from_millis(500);
/// Rows one import transaction writes at most (each row also updates the HNSW index, so a
/// transaction stays well inside the statement timeout).
pub const IMPORT_TX_ROWS: usize = 64;
/// Rows one expiry or eviction statement deletes at most.
pub const DELETE_BATCH: i64 = 1000;
/// Distinct entries whose hits wait in memory at most; past it new ones are dropped (counted):
/// hit counts are bookkeeping for eviction, never worth unbounded memory.
pub const MAX_PENDING_HITS: usize = 65_536;
/// Migrations may wait for another replica's migration and create indexes.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("the environment variable {env} (cache.postgres.url_env) is not set")]
    NoUrl { env: String },
    /// The parse error is not shown: it could quote part of the URL.
    #[error(
        "the environment variable {env} (cache.postgres.url_env) does not hold a valid \
         postgres://user:password@host:port/database URL"
    )]
    BadUrl { env: String },
    #[error(
        "the postgres schema {schema} was written with embedding model {stored}, but deja is \
         configured with {configured}; use another cache.postgres.schema, or drop that schema \
         to start empty"
    )]
    ModelMismatch {
        schema: String,
        stored: String,
        configured: String,
    },
    #[error("the postgres schema {schema} has deja schema version {found}; this deja reads version {supported}")]
    SchemaMismatch {
        schema: String,
        found: String,
        supported: u32,
    },
    #[error("postgres {op} failed: {message}")]
    Db { op: &'static str, message: String },
    #[error("postgres {op} timed out after {ms} ms")]
    Timeout { op: &'static str, ms: u128 },
    #[error("entry rejected: {0}")]
    Invalid(String),
}

impl PgError {
    /// The server's message only (never its DETAIL, which quotes row values), or the client's
    /// own error (which names no host or password).
    fn db(op: &'static str) -> impl Fn(tokio_postgres::Error) -> PgError {
        move |e| PgError::Db {
            op,
            message: match e.as_db_error() {
                Some(d) => format!("{} ({})", d.message(), d.code().code()),
                None => e.to_string(),
            },
        }
    }

    fn pool(op: &'static str) -> impl Fn(deadpool_postgres::PoolError) -> PgError {
        move |e| match e {
            deadpool_postgres::PoolError::Backend(e) => PgError::db(op)(e),
            other => PgError::Db {
                op,
                message: other.to_string(),
            },
        }
    }
}

/// The shared half, also held by the maintenance task.
struct Shared {
    pool: Pool,
    names: Names,
    sql: Sql,
    timeout: Duration,
    dim: usize,
    max_entries: usize,
    /// Entries in the table: counted at open and by maintenance, raised by this replica's
    /// inserts in between.
    count: AtomicUsize,
    /// The last exact count and the id sequence's value then ([`Shared::estimate_rows`]).
    counted: Mutex<(usize, i64)>,
    /// Entry id → (hits, latest hit) not yet written.
    hits: Mutex<HashMap<i64, (i64, i64)>>,
    hits_dropped: AtomicU64,
    /// Whether the lookups' own connections search with the cheaper first `ef_search`.
    first_pass: bool,
    second_searches: AtomicU64,
    errors: AtomicU64,
    /// Why the last call failed, until one succeeds.
    degraded: Mutex<Option<String>>,
    /// `cache.postgres.singleflight_timeout` (zero: no fleet-wide singleflight).
    flight_hold: Duration,
    /// Fleet-wide claims this replica holds (exact key → token), renewed by maintenance.
    claims: Mutex<HashMap<ExactKey, i64>>,
    flight_sql: flights::FlightSql,
    chain_sql: chains::ChainSql,
    /// The lookups' own connections (none with a pool of one).
    direct: Option<direct::Direct>,
}

/// Statement texts with the schema's names in them.
struct Sql {
    get: String,
    get_exact: String,
    nearest: String,
    insert: String,
    hits: String,
    expire: String,
    evict: String,
    count: String,
    ids: String,
}

const COLUMNS: &str = "id, scope, prompt, embedding, response, created_ms, expires_ms";

impl Sql {
    fn new(n: &Names) -> Sql {
        let e = &n.entries;
        // The last id handed out (a fresh sequence's `last_value` is its first, not yet used).
        let ids = format!(
            "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {}",
            n.seq
        );
        Sql {
            get: format!("SELECT {COLUMNS} FROM {e} WHERE id = $1"),
            get_exact: format!("SELECT {COLUMNS} FROM {e} WHERE exact_key = $1"),
            // The scope filter is inside the index scan's query: no plan can return a row of
            // another scope. Relaxed order may return the candidates slightly out of order,
            // hence the exact ordering of the few it found. That ordering is `c.d + 0`, an
            // expression: PostgreSQL 17+ carries the CTE's sort order (the index scan's, which
            // relaxed order does not keep) to its reader and would skip a plain `ORDER BY c.d`
            // (pgvector's documentation gives the same remedy).
            nearest: format!(
                "WITH c AS MATERIALIZED (
                    SELECT id, embedding <=> $2 AS d FROM {e}
                    WHERE scope = $1 AND embedding IS NOT NULL AND expires_ms > $3
                    ORDER BY embedding <=> $2 LIMIT GREATEST($4::bigint, {CANDIDATES}))
                 SELECT c.d, e.id, e.scope, e.prompt, NULL::vector AS embedding, e.response,
                        e.created_ms, e.expires_ms
                 FROM c JOIN {e} e ON e.id = c.id AND e.scope = $1
                 ORDER BY c.d + 0 LIMIT $4"
            ),
            // A replacement (same exact key: `no-cache`, or a race between replicas) takes a
            // new id, so a stale id held anywhere never finds the new answer.
            insert: format!(
                "INSERT INTO {e} (scope, exact_key, prompt, embedding, response, created_ms,
                                  expires_ms, last_hit_ms, namespace)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $6, $8)
                 ON CONFLICT (exact_key) DO UPDATE SET
                    id = nextval('{seq}'), scope = EXCLUDED.scope, prompt = EXCLUDED.prompt,
                    embedding = EXCLUDED.embedding, response = EXCLUDED.response,
                    created_ms = EXCLUDED.created_ms, expires_ms = EXCLUDED.expires_ms,
                    last_hit_ms = EXCLUDED.last_hit_ms, hits = 0,
                    namespace = EXCLUDED.namespace
                 RETURNING id, (xmax = 0) AS inserted",
                seq = n.seq
            ),
            hits: format!(
                "UPDATE {e} AS e SET hits = e.hits + v.n, last_hit_ms = GREATEST(e.last_hit_ms, v.t)
                 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS v(id, n, t)
                 WHERE e.id = v.id"
            ),
            expire: format!(
                "DELETE FROM {e} WHERE id IN (
                    SELECT id FROM {e} WHERE expires_ms <= $1 ORDER BY expires_ms LIMIT $2
                    FOR UPDATE SKIP LOCKED)"
            ),
            evict: format!(
                "DELETE FROM {e} WHERE id IN (
                    SELECT id FROM {e} ORDER BY last_hit_ms, id LIMIT $1
                    FOR UPDATE SKIP LOCKED)"
            ),
            count: format!("SELECT count(*), ({ids}) FROM {e}"),
            ids,
        }
    }
}

pub struct PostgresBackend {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        // Never blocks (a drop may happen on the async runtime): in-flight work is abandoned,
        // which the database rolls back; pending hits are bookkeeping only.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn entry_from(row: &Row, offset: usize) -> Result<Entry, PgError> {
    let bad = |what: &str| PgError::Db {
        op: "read",
        message: format!("malformed {what} in a stored entry"),
    };
    let id: i64 = row.try_get(offset).map_err(|_| bad("id"))?;
    let scope: Vec<u8> = row.try_get(offset + 1).map_err(|_| bad("scope"))?;
    let scope: [u8; 16] = scope.try_into().map_err(|_| bad("scope"))?;
    let embedding: Option<Vector> = row.try_get(offset + 3).map_err(|_| bad("embedding"))?;
    let Json(response): Json<CachedResponse> =
        row.try_get(offset + 4).map_err(|_| bad("response"))?;
    let created: i64 = row.try_get(offset + 5).map_err(|_| bad("created_ms"))?;
    let expires: i64 = row.try_get(offset + 6).map_err(|_| bad("expires_ms"))?;
    Ok(Entry {
        id: id as u64,
        scope: ScopeId(scope),
        prompt: row.try_get(offset + 2).map_err(|_| bad("prompt"))?,
        embedding: embedding.map(Vec::from),
        response,
        created_ms: created.max(0) as u64,
        expires_ms: expires.max(0) as u64,
    })
}

/// The in-scope search's rows as neighbours (a row of another scope is never one).
fn neighbours(rows: Vec<Row>, scope: ScopeId) -> Result<Vec<Near>, PgError> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let d: f64 = row.try_get(0).map_err(|_| PgError::Db {
            op: "search",
            message: "malformed distance in a search result".into(),
        })?;
        let entry = entry_from(&row, 1)?;
        if entry.scope != scope {
            continue;
        }
        out.push(Near {
            id: entry.id,
            similarity: (1.0 - d) as f32,
            entry: Some(entry),
        });
    }
    Ok(out)
}

/// The entry a lookup by key or id found, if any.
fn entry_of(row: Option<&Row>) -> Result<Option<Entry>, PgError> {
    row.map(|r| entry_from(r, 0)).transpose()
}

fn check_vector(v: &[f32], dim: usize) -> Result<(), PgError> {
    if v.len() != dim {
        return Err(PgError::Invalid(format!(
            "embedding has {} dimensions, the database holds {dim}",
            v.len()
        )));
    }
    if !v.iter().all(|x| x.is_finite()) {
        return Err(PgError::Invalid(
            "embedding has NaN or infinite values".into(),
        ));
    }
    Ok(())
}

fn ms(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl Shared {
    async fn client(&self, op: &'static str) -> Result<deadpool_postgres::Object, PgError> {
        self.pool.get().await.map_err(PgError::pool(op))
    }

    /// Bounds `f` by the statement timeout and keeps the health state.
    async fn bounded<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, PgError>>,
    ) -> Result<T, PgError> {
        let out = match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(PgError::Timeout {
                op,
                ms: self.timeout.as_millis(),
            }),
        };
        self.note(out)
    }

    /// The search statement's vector, limit and time (`None`: no neighbour was asked for).
    fn search_params(
        &self,
        embedding: &[f32],
        k: usize,
    ) -> Result<Option<(Vector, i64, i64)>, PgError> {
        check_vector(embedding, self.dim)?;
        Ok((k > 0).then(|| {
            (
                Vector::from(embedding.to_vec()),
                k.min(MAX_NEIGHBOURS) as i64,
                ms(now_ms()),
            )
        }))
    }

    /// Keeps the health state by the outcome of a call.
    fn note<T>(&self, out: Result<T, PgError>) -> Result<T, PgError> {
        match &out {
            Ok(_) => {
                if self.degraded.lock().take().is_some() {
                    tracing::info!("postgres reachable again; the cache serves");
                }
            }
            Err(PgError::Invalid(_)) => {}
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let mut d = self.degraded.lock();
                if d.is_none() {
                    tracing::warn!(error = %e, "postgres unavailable; requests go uncached until it answers");
                }
                *d = Some(e.to_string());
            }
        }
        out
    }

    async fn flush_hits(&self) -> Result<(), PgError> {
        let batch: Vec<(i64, (i64, i64))> = {
            let mut h = self.hits.lock();
            if h.is_empty() {
                return Ok(());
            }
            h.drain().collect()
        };
        let ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
        let n: Vec<i64> = batch.iter().map(|(_, (n, _))| *n).collect();
        let t: Vec<i64> = batch.iter().map(|(_, (_, t))| *t).collect();
        let c = self.client("hits").await?;
        let st = c
            .prepare_cached(&self.sql.hits)
            .await
            .map_err(PgError::db("hits"))?;
        c.execute(&st, &[&ids, &n, &t])
            .await
            .map_err(PgError::db("hits"))?;
        Ok(())
    }

    async fn count_rows(&self) -> Result<usize, PgError> {
        let c = self.client("count").await?;
        let row = c
            .query_one(&self.sql.count, &[])
            .await
            .map_err(PgError::db("count"))?;
        let n: i64 = row.get(0);
        self.count.store(n.max(0) as usize, Ordering::Relaxed);
        *self.counted.lock() = (n.max(0) as usize, row.get(1));
        Ok(n.max(0) as usize)
    }

    /// Rows now at most, without counting them: the last count plus the ids every replica took
    /// since (one per insert or replacement), read from the id sequence in O(1): an upper
    /// bound that decides when to count exactly. Not kept as the entry count, which it would
    /// overstate by every replacement (the count is the last exact one plus this replica's own
    /// inserts).
    async fn estimate_rows(&self) -> Result<usize, PgError> {
        let c = self.client("count").await?;
        let row = c
            .query_one(&self.sql.ids, &[])
            .await
            .map_err(PgError::db("count"))?;
        let last: i64 = row.get(0);
        let (rows, at) = *self.counted.lock();
        Ok(rows.saturating_add(last.saturating_sub(at).max(0) as usize))
    }

    /// Deletes up to `limit` expired rows, then the least recently hit rows past
    /// `max_entries`, in batches.
    async fn sweep(&self, now: u64, limit: usize) -> Result<usize, PgError> {
        let c = self.client("sweep").await?;
        let mut removed = 0usize;
        while removed < limit {
            let batch = DELETE_BATCH.min((limit - removed) as i64);
            let n = c
                .execute(&self.sql.expire, &[&ms(now), &batch])
                .await
                .map_err(PgError::db("sweep"))? as usize;
            removed += n;
            if (n as i64) < batch {
                break;
            }
        }
        drop(c);
        if self.max_entries > 0 {
            let mut count = self.count_rows().await?;
            let c = self.client("evict").await?;
            while count > self.max_entries {
                let batch = DELETE_BATCH.min((count - self.max_entries) as i64);
                let n = c
                    .execute(&self.sql.evict, &[&batch])
                    .await
                    .map_err(PgError::db("evict"))? as usize;
                if n == 0 {
                    break;
                }
                removed += n;
                count = count.saturating_sub(n);
            }
            self.count.store(count, Ordering::Relaxed);
            self.counted.lock().0 = count;
        }
        Ok(removed)
    }

    /// Renews this replica's claims and writes hits; when degraded, pings; past
    /// `max_entries` (by this replica's count) and every few rounds, counts and evicts, and
    /// deletes claims left by dead replicas.
    async fn maintain(self: Arc<Self>) {
        let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round = 0u64;
        loop {
            tick.tick().await;
            round += 1;
            if self.degraded.lock().is_none() {
                let _ = self.bounded("renew", self.renew_claims()).await;
            }
            let _ = self.bounded("hits", self.flush_hits()).await;
            if self.degraded.lock().is_some() {
                // The entries table itself: a database that answers but holds it locked
                // (or is too slow to read it) cannot serve either.
                let ping = async {
                    let c = self.client("ping").await?;
                    c.simple_query(&format!("SELECT 1 FROM {} LIMIT 1", self.names.entries))
                        .await
                        .map_err(PgError::db("ping"))?;
                    Ok(())
                };
                let _ = self.bounded("ping", ping).await;
                continue;
            }
            // Any replica's inserts can take the table past `max_entries`: whichever notices
            // first counts exactly and evicts.
            let over = self.max_entries > 0
                && self
                    .bounded("count", self.estimate_rows())
                    .await
                    .is_ok_and(|n| n > self.max_entries);
            if over || (round.is_multiple_of(20) && self.max_entries > 0) {
                // Eviction only: the server's sweep removes the expired.
                let _ = self.bounded("evict", self.sweep(0, 0)).await;
            }
            if round.is_multiple_of(20) && !self.flight_hold.is_zero() {
                let _ = self.bounded("flights", self.delete_stale_claims()).await;
            }
        }
    }
}

impl PostgresBackend {
    /// Connects with the URL in `cfg.url_env` (read from `env`), migrates the schema and checks
    /// that it holds vectors of `model_id` with `dim` dimensions. Blocking.
    pub fn open(
        cfg: &PostgresConfig,
        env: &dyn Fn(&str) -> Option<String>,
        model_id: &str,
        dim: usize,
        max_entries: usize,
    ) -> Result<PostgresBackend, PgError> {
        let url = env(&cfg.url_env).ok_or_else(|| PgError::NoUrl {
            env: cfg.url_env.clone(),
        })?;
        let mut pg: tokio_postgres::Config = url.parse().map_err(|_| PgError::BadUrl {
            env: cfg.url_env.clone(),
        })?;
        drop(url);
        let options = |ef_search: usize| {
            format!(
                "-c statement_timeout={} -c hnsw.iterative_scan=relaxed_order \
                 -c hnsw.ef_search={ef_search} -c plan_cache_mode=force_custom_plan",
                cfg.statement_timeout.as_millis().max(1),
            )
        };
        pg.application_name("deja")
            .connect_timeout(cfg.statement_timeout)
            .options(options(cfg.ef_search));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("deja-postgres")
            .enable_all()
            .build()
            .map_err(|e| PgError::Db {
                op: "start",
                message: e.to_string(),
            })?;
        let handle = runtime.handle().clone();
        // Half the connections (rounded down) are the lookups' own; the pool has the rest.
        let direct_max = cfg.pool_size / 2;
        let names = Names::new(&cfg.schema);
        let sql = Sql::new(&names);
        // With two searches per lookup, the lookups' own connections make the first.
        let first_pass = cfg.first_pass().filter(|_| direct_max > 0);
        let direct = (direct_max > 0).then(|| {
            let mut own = pg.clone();
            own.options(options(first_pass.unwrap_or(cfg.ef_search)));
            direct::Direct::new(own, sql.get_exact.clone(), sql.nearest.clone(), direct_max)
        });
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let timeout = cfg.statement_timeout;
        let pool = {
            let _guard = handle.enter();
            Pool::builder(manager)
                .max_size(cfg.pool_size - direct_max)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(timeout))
                .create_timeout(Some(timeout))
                .recycle_timeout(Some(timeout))
                .build()
                .map_err(|e| PgError::Db {
                    op: "start",
                    message: e.to_string(),
                })?
        };
        let shared = Arc::new(Shared {
            pool,
            sql,
            direct,
            flight_sql: flights::FlightSql::new(&names),
            chain_sql: chains::ChainSql::new(&names),
            names,
            timeout,
            dim,
            max_entries,
            count: AtomicUsize::new(0),
            counted: Mutex::new((0, 0)),
            hits: Mutex::new(HashMap::new()),
            hits_dropped: AtomicU64::new(0),
            first_pass: first_pass.is_some(),
            second_searches: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            degraded: Mutex::new(None),
            flight_hold: cfg.singleflight_timeout,
            claims: Mutex::new(HashMap::new()),
        });
        let s = Arc::clone(&shared);
        let opened = handle.block_on(async move {
            let migrated = async {
                let mut c = s.client("connect").await?;
                let tx_timeout = format!("{}", MIGRATION_TIMEOUT.as_millis());
                c.batch_execute(&format!("SET statement_timeout = {tx_timeout}"))
                    .await
                    .map_err(PgError::db("migrate"))?;
                let client: &mut tokio_postgres::Client = &mut c;
                let done = schema::migrate(client, &s.names, model_id, dim).await;
                // The pooled connection goes back with the configured timeout.
                let _ = c
                    .batch_execute(&format!(
                        "SET statement_timeout = {}",
                        timeout.as_millis().max(1)
                    ))
                    .await;
                done
            };
            match tokio::time::timeout(MIGRATION_TIMEOUT, migrated).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(PgError::Timeout {
                        op: "migrate",
                        ms: MIGRATION_TIMEOUT.as_millis(),
                    })
                }
            }
            s.bounded("count", s.count_rows()).await?;
            Ok(())
        });
        opened?;
        if let Some(d) = &shared.direct {
            // Migrated: the statements can be prepared.
            d.warm(timeout)?;
        }
        runtime.spawn(Arc::clone(&shared).maintain());
        tracing::info!(
            schema = %cfg.schema,
            entries = shared.count.load(Ordering::Relaxed),
            "postgres cache backend ready"
        );
        Ok(PostgresBackend {
            shared,
            handle,
            runtime: Some(runtime),
        })
    }

    fn run<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<T, PgError>>,
    ) -> Result<T, CacheError> {
        let s = &self.shared;
        Ok(self.handle.block_on(s.bounded(op, f))?)
    }

    /// Writes pending hits now (tests, shutdown).
    pub fn flush_hits(&self) -> Result<(), CacheError> {
        self.run("hits", self.shared.flush_hits())
    }

    /// Hit count stored for `id` (pending hits not included); `None` if it is gone.
    pub fn stored_hits(&self, id: EntryId) -> Result<Option<u64>, CacheError> {
        let s = &self.shared;
        self.run("read", async {
            let c = s.client("read").await?;
            let q = format!("SELECT hits FROM {} WHERE id = $1", s.names.entries);
            let row = c
                .query_opt(&q, &[&(id as i64)])
                .await
                .map_err(PgError::db("read"))?;
            Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
        })
    }

    /// A setting as one of the backend's connections sees it (`current_setting`): diagnostics
    /// and tests of what every connection runs with.
    pub fn setting(&self, name: &str) -> Result<String, CacheError> {
        let s = &self.shared;
        self.run("read", async {
            let c = s.client("read").await?;
            let row = c
                .query_one("SELECT current_setting($1)", &[&name])
                .await
                .map_err(PgError::db("read"))?;
            Ok(row.get::<_, String>(0))
        })
    }

    /// The plan PostgreSQL picks for the in-scope search of `embedding` in `scope` (`EXPLAIN`
    /// of the very statement [`Backend::nearest`] runs, one line per plan node): which index a
    /// big and a small scope are read through (benches, diagnostics).
    pub fn explain_nearest(&self, scope: ScopeId, embedding: &[f32]) -> Result<String, CacheError> {
        let s = &self.shared;
        check_vector(embedding, s.dim)?;
        let v = Vector::from(embedding.to_vec());
        self.run("search", async {
            let c = s.client("search").await?;
            let rows = c
                .query(
                    &format!("EXPLAIN {}", s.sql.nearest),
                    &[&&scope.0[..], &v, &ms(now_ms()), &1i64],
                )
                .await
                .map_err(PgError::db("search"))?;
            Ok(rows
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n"))
        })
    }

    /// The in-scope search on one of the lookups' own connections (with their `ef_search`);
    /// `None` when there are none or all are busy.
    fn search_direct(
        &self,
        scope: ScopeId,
        embedding: &[f32],
        k: usize,
    ) -> Option<Result<Vec<Near>, CacheError>> {
        let s = &self.shared;
        let d = s.direct.as_ref()?;
        let (v, k, now) = match s.search_params(embedding, k) {
            Ok(Some(p)) => p,
            Ok(None) => return Some(Ok(Vec::new())),
            Err(e) => return Some(Err(e.into())),
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&&scope.0[..], &v, &now, &k];
        let rows = d.query("search", direct::Stmt::Nearest, &params, s.timeout)?;
        Some(
            s.note(rows.and_then(|rows| neighbours(rows, scope)))
                .map_err(CacheError::from),
        )
    }

    /// The in-scope search through the pool, with `ef_search`.
    fn search_pooled(
        &self,
        scope: ScopeId,
        embedding: &[f32],
        k: usize,
    ) -> Result<Vec<Near>, CacheError> {
        let s = &self.shared;
        let Some((v, k, now)) = s.search_params(embedding, k)? else {
            return Ok(Vec::new());
        };
        self.run("search", async {
            let c = s.client("search").await?;
            let st = c
                .prepare_cached(&s.sql.nearest)
                .await
                .map_err(PgError::db("search"))?;
            let rows = c
                .query(&st, &[&&scope.0[..], &v, &now, &k])
                .await
                .map_err(PgError::db("search"))?;
            neighbours(rows, scope)
        })
    }

    async fn one(&self, op: &'static str, sql: &str, id: &[u8]) -> Result<Option<Entry>, PgError> {
        let c = self.shared.client(op).await?;
        let st = c.prepare_cached(sql).await.map_err(PgError::db(op))?;
        entry_of(
            c.query_opt(&st, &[&id])
                .await
                .map_err(PgError::db(op))?
                .as_ref(),
        )
    }
}

impl Backend for PostgresBackend {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn remote(&self) -> bool {
        true
    }

    fn put_chain(
        &self,
        id: &str,
        record: &[u8],
        now_ms: u64,
        expires_ms: u64,
        limits: super::ChainLimits,
    ) -> Result<(), CacheError> {
        let s = &self.shared;
        self.run(
            "chain write",
            s.put_chain(id, record, now_ms, expires_ms, limits),
        )
    }

    fn get_chain(&self, id: &str, now_ms: u64) -> Result<Option<Vec<u8>>, CacheError> {
        self.run("chain read", self.shared.get_chain(id, now_ms))
    }

    fn get_exact(&self, scope: ScopeId, prompt: &str) -> Result<Option<Entry>, CacheError> {
        let key = exact_key(scope, prompt);
        let s = &self.shared;
        if let Some(d) = &s.direct {
            let op = "exact lookup";
            let key: &[u8] = &key;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
            if let Some(rows) = d.query(op, direct::Stmt::Exact, &params, s.timeout) {
                return Ok(s.note(rows.and_then(|rows| entry_of(rows.first())))?);
            }
        }
        self.run(
            "exact lookup",
            self.one("exact lookup", &self.shared.sql.get_exact, &key),
        )
    }

    fn get(&self, id: EntryId) -> Result<Option<Entry>, CacheError> {
        let s = &self.shared;
        self.run("read", async {
            let c = s.client("read").await?;
            let st = c
                .prepare_cached(&s.sql.get)
                .await
                .map_err(PgError::db("read"))?;
            let row = c
                .query_opt(&st, &[&(id as i64)])
                .await
                .map_err(PgError::db("read"))?;
            entry_of(row.as_ref())
        })
    }

    fn nearest(
        &self,
        scope: ScopeId,
        embedding: &[f32],
        k: usize,
    ) -> Result<Vec<Near>, CacheError> {
        let s = &self.shared;
        if !s.first_pass {
            // The lookups' own connections search with `ef_search` itself.
            if let Some(found) = self.search_direct(scope, embedding, k) {
                return found;
            }
        }
        self.search_pooled(scope, embedding, k)
    }

    fn nearest_reaching(
        &self,
        scope: ScopeId,
        embedding: &[f32],
        k: usize,
        floor: f32,
    ) -> Result<Vec<Near>, CacheError> {
        let s = &self.shared;
        if !s.first_pass {
            return self.nearest(scope, embedding, k);
        }
        match self.search_direct(scope, embedding, k) {
            Some(Ok(first)) if first.first().is_some_and(|n| n.similarity >= floor) => Ok(first),
            Some(Err(e)) => Err(e),
            Some(Ok(_)) => {
                s.second_searches.fetch_add(1, Ordering::Relaxed);
                self.search_pooled(scope, embedding, k)
            }
            // Every lookup connection is busy: one full search through the pool.
            None => self.search_pooled(scope, embedding, k),
        }
    }

    fn record_hit(&self, id: EntryId, now_ms: u64) -> Result<(), CacheError> {
        let mut h = self.shared.hits.lock();
        let full = h.len() >= MAX_PENDING_HITS;
        match h.get_mut(&(id as i64)) {
            Some((n, t)) => {
                *n += 1;
                *t = (*t).max(ms(now_ms));
            }
            None if full => {
                self.shared.hits_dropped.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                h.insert(id as i64, (1, ms(now_ms)));
            }
        }
        Ok(())
    }

    fn insert(&self, e: NewEntry) -> Result<EntryId, CacheError> {
        let s = &self.shared;
        if let Some(v) = &e.embedding {
            check_vector(v, s.dim)?;
        }
        let vector = e.embedding.clone().map(Vector::from);
        self.run("insert", async {
            let c = s.client("insert").await?;
            let st = c
                .prepare_cached(&s.sql.insert)
                .await
                .map_err(PgError::db("insert"))?;
            let (id, inserted) = insert_row(&c, &st, &e, vector).await?;
            if inserted {
                s.count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(id as u64)
        })
    }

    /// Imports in transactions of [`IMPORT_TX_ROWS`] rows: one commit (one WAL flush) per
    /// transaction instead of one per entry, each bounded by the statement timeout.
    fn import_batch(&self, entries: Vec<NewEntry>) -> (usize, Result<(), CacheError>) {
        let s = &self.shared;
        let mut stored = 0;
        let mut rows = entries.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<NewEntry> = rows.by_ref().take(IMPORT_TX_ROWS).collect();
            if let Some(bad) = chunk.iter().find_map(|e| {
                e.embedding
                    .as_ref()
                    .and_then(|v| check_vector(v, s.dim).err())
            }) {
                return (stored, Err(bad.into()));
            }
            let result = self.run("insert", async {
                let mut c = s.client("insert").await?;
                let tx = c.transaction().await.map_err(PgError::db("insert"))?;
                let st = tx
                    .prepare_cached(&s.sql.insert)
                    .await
                    .map_err(PgError::db("insert"))?;
                let mut inserted = 0;
                for e in &chunk {
                    let vector = e.embedding.clone().map(Vector::from);
                    inserted += insert_row(&tx, &st, e, vector).await?.1 as usize;
                }
                tx.commit().await.map_err(PgError::db("insert"))?;
                Ok(inserted)
            });
            match result {
                Ok(inserted) => {
                    s.count.fetch_add(inserted, Ordering::Relaxed);
                    stored += chunk.len();
                }
                Err(e) => return (stored, Err(e)),
            }
        }
        (stored, Ok(()))
    }

    fn sweep_expired(&self, now_ms: u64, limit: usize) -> Result<usize, CacheError> {
        self.run("sweep", self.shared.sweep(now_ms, limit))
    }

    fn remove(&self, id: EntryId) -> Result<Option<Entry>, CacheError> {
        self.remove_entry(id)
    }

    fn scan(
        &self,
        after: Option<EntryId>,
        limit: usize,
    ) -> Result<Vec<super::Scanned>, CacheError> {
        self.scan_entries(after, limit)
    }

    fn len(&self) -> usize {
        self.shared.count.load(Ordering::Relaxed)
    }

    /// Inserts are committed when they return: only pending hits are written here.
    fn flush(&self) -> Result<(), CacheError> {
        self.flush_hits()
    }

    fn fleet_singleflight(&self) -> bool {
        !self.shared.flight_hold.is_zero()
    }

    fn claim_flight(&self, key: &ExactKey) -> Result<Option<Claim>, CacheError> {
        self.claim(key)
    }

    fn flight_state(&self, key: &ExactKey) -> Result<Claim, CacheError> {
        self.state(key)
    }

    fn release_flight(&self, key: &ExactKey, token: u64) {
        self.release(key, token)
    }

    fn health(&self) -> Health {
        match &*self.shared.degraded.lock() {
            None => Health::Ready,
            Some(why) => Health::Degraded(why.clone()),
        }
    }

    fn stats(&self) -> BackendStats {
        BackendStats {
            errors: self.shared.errors.load(Ordering::Relaxed),
            hits_dropped: self.shared.hits_dropped.load(Ordering::Relaxed),
            degraded: self.shared.degraded.lock().is_some(),
            connections: self.shared.pool.status().size
                + self
                    .shared
                    .direct
                    .as_ref()
                    .map_or(0, |d| d.open_connections()),
            second_searches: self.shared.second_searches.load(Ordering::Relaxed),
        }
    }
}

/// Runs the prepared insert statement for one entry (alone or inside a transaction); returns
/// its id and whether it is a new row (not a replacement).
async fn insert_row<C: deadpool_postgres::GenericClient>(
    c: &C,
    st: &tokio_postgres::Statement,
    e: &NewEntry,
    vector: Option<Vector>,
) -> Result<(i64, bool), PgError> {
    let key = exact_key(e.scope, &e.prompt);
    let row = c
        .query_one(
            st,
            &[
                &&e.scope.0[..],
                &&key[..],
                &e.prompt,
                &vector,
                &Json(&e.response),
                &ms(e.created_ms),
                &ms(e.expires_ms),
                &e.namespace,
            ],
        )
        .await
        .map_err(PgError::db("insert"))?;
    Ok((row.get(0), row.get(1)))
}
