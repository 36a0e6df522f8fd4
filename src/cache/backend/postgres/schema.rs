//! The schema deja owns in PostgreSQL, and its migration at start. Every replica runs
//! [`migrate`] when it opens; it holds a transaction-scoped advisory lock, so replicas that
//! start at once take turns, and every statement is idempotent (`IF NOT EXISTS`), so running it
//! again changes nothing. The metadata table records the schema version, the embedding model
//! and the dimension: a database written with another model is refused, as the sled store
//! refuses one.
//!
//! Names are interpolated into DDL, which is why `cache.postgres.schema` is validated to a
//! plain lowercase identifier (`config::backend`); values always go as parameters.

use super::PgError;

/// The schema version this deja writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Advisory lock key every deja migration takes (any schema: `CREATE EXTENSION` is global).
const MIGRATION_LOCK: i64 = 0x6465_6a61_2d6d_6967; // "deja-mig"

/// Qualified names of the schema's objects.
#[derive(Clone, Debug)]
pub struct Names {
    pub schema: String,
    pub entries: String,
    pub meta: String,
    pub seq: String,
    /// Fleet-wide singleflight claims (unlogged: short-lived, worthless after a crash).
    pub flights: String,
    /// Conversation records of Responses answers (`previous_response_id`).
    pub chains: String,
}

impl Names {
    pub fn new(schema: &str) -> Names {
        Names {
            schema: schema.to_string(),
            entries: format!("{schema}.entries"),
            meta: format!("{schema}.meta"),
            seq: format!("{schema}.entries_id_seq"),
            flights: format!("{schema}.flights"),
            chains: format!("{schema}.response_chains"),
        }
    }
}

fn ddl(n: &Names, dim: usize) -> String {
    let (s, e) = (&n.schema, &n.entries);
    format!(
        "CREATE TABLE IF NOT EXISTS {e} (
            id          bigserial PRIMARY KEY,
            scope       bytea  NOT NULL,
            exact_key   bytea  NOT NULL,
            prompt      text   NOT NULL,
            embedding   vector({dim}),
            response    jsonb  NOT NULL,
            created_ms  bigint NOT NULL,
            expires_ms  bigint NOT NULL,
            last_hit_ms bigint NOT NULL,
            hits        bigint NOT NULL DEFAULT 0
        );
        -- The tenant of each entry (admin stats and purge). Added by a later deja: a nullable
        -- column without a default is a catalog change, no rewrite; rows written before it
        -- (or by an older replica still running) read NULL, namespace unknown.
        ALTER TABLE {e} ADD COLUMN IF NOT EXISTS namespace text;
        CREATE UNIQUE INDEX IF NOT EXISTS entries_exact_key ON {e} (exact_key);
        CREATE INDEX IF NOT EXISTS entries_scope ON {e} (scope);
        CREATE INDEX IF NOT EXISTS entries_expires ON {e} (expires_ms);
        CREATE INDEX IF NOT EXISTS entries_last_hit ON {e} (last_hit_ms);
        {hnsw};
        COMMENT ON TABLE {e} IS 'deja cache entries (schema {s}, owned and migrated by deja)';
        CREATE UNLOGGED TABLE IF NOT EXISTS {f} (
            exact_key   bytea  PRIMARY KEY,
            token       bigint NOT NULL,
            deadline_ms bigint NOT NULL
        );
        COMMENT ON TABLE {f} IS 'deja: which replica is fetching which miss, until when';
        CREATE TABLE IF NOT EXISTS {c} (
            id          text   PRIMARY KEY,
            record      bytea  NOT NULL,
            expires_ms  bigint NOT NULL
        );
        CREATE INDEX IF NOT EXISTS response_chains_expires ON {c} (expires_ms);
        COMMENT ON TABLE {c} IS 'deja: the conversation behind each Responses answer, by response id';",
        f = n.flights,
        c = n.chains,
        hnsw = embedding_index(n)
    )
}

/// The HNSW index of the entries' embeddings: `m` = 16 (pgvector's default) and
/// `ef_construction` = 128 (pgvector's is 64). On 1M real MiniLM vectors in one scope, 64 gave
/// recall@1 0.983 at `ef_search` 100 and 128 gave 0.992, with faster searches (2.1 against
/// 2.8 ms p50); the build takes about twice as long (docs/benchmarks.md §8). An index made
/// by an older deja keeps its parameters (`IF NOT EXISTS`); drop it and restart one replica
/// to rebuild it. Its own statement so that a bulk load (`benches/pg_scale.rs`) can drop it,
/// load, and build exactly this index afterwards.
pub fn embedding_index(n: &Names) -> String {
    format!(
        "CREATE INDEX IF NOT EXISTS {EMBEDDING_INDEX} ON {} USING hnsw (embedding vector_cosine_ops) \
         WITH (m = 16, ef_construction = 128)",
        n.entries
    )
}

/// The name of [`embedding_index`] (in the schema).
pub const EMBEDDING_INDEX: &str = "entries_embedding";

/// Creates or checks the schema; the caller's client must not be in a transaction.
pub async fn migrate(
    client: &mut tokio_postgres::Client,
    names: &Names,
    model_id: &str,
    dim: usize,
) -> Result<(), PgError> {
    let tx = client.transaction().await.map_err(PgError::db("migrate"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(PgError::db("migrate"))?;
    // Every start re-runs the `IF NOT EXISTS` statements: their "already exists" notices
    // are not news.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await
        .map_err(PgError::db("migrate"))?;
    tx.batch_execute(&format!(
        "CREATE EXTENSION IF NOT EXISTS vector;
         CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {m} (key text PRIMARY KEY, value text NOT NULL);",
        s = names.schema,
        m = names.meta
    ))
    .await
    .map_err(PgError::db("migrate"))?;
    let rows = tx
        .query(&format!("SELECT key, value FROM {}", names.meta), &[])
        .await
        .map_err(PgError::db("migrate"))?;
    let get = |k: &str| {
        rows.iter()
            .find(|r| r.get::<_, &str>(0) == k)
            .map(|r| r.get::<_, String>(1))
    };
    match get("schema_version") {
        None => {
            for (k, v) in [
                ("schema_version", SCHEMA_VERSION.to_string()),
                ("model_id", model_id.to_string()),
                ("dim", dim.to_string()),
            ] {
                tx.execute(
                    &format!("INSERT INTO {} (key, value) VALUES ($1, $2)", names.meta),
                    &[&k, &v],
                )
                .await
                .map_err(PgError::db("migrate"))?;
            }
        }
        Some(found) => {
            let found_version: u32 = found.parse().unwrap_or(u32::MAX);
            if found_version > SCHEMA_VERSION {
                return Err(PgError::SchemaMismatch {
                    schema: names.schema.clone(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            let stored_model = get("model_id").unwrap_or_default();
            let stored_dim = get("dim").unwrap_or_default();
            if stored_model != model_id || stored_dim != dim.to_string() {
                return Err(PgError::ModelMismatch {
                    schema: names.schema.clone(),
                    stored: format!("{stored_model} ({stored_dim} dimensions)"),
                    configured: format!("{model_id} ({dim} dimensions)"),
                });
            }
        }
    }
    tx.batch_execute(&ddl(names, dim))
        .await
        .map_err(PgError::db("migrate"))?;
    tx.commit().await.map_err(PgError::db("migrate"))?;
    Ok(())
}
