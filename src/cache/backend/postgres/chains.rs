//! Conversation records of Responses answers (`crate::cache::chains`) in the shared database,
//! so a follow-up finds its conversation whichever replica it reaches. One row per response id
//! with its expiry; bounded as the embedded records are: an expired row is never returned and
//! each write deletes a few ([`SWEEP_PER_WRITE`]), and every [`CAP_EVERY`] writes a replica
//! deletes the rows past `max` (soonest-expiring first, in batches of [`super::DELETE_BATCH`]),
//! then sums the records' sizes and, past `max_bytes`, deletes the soonest-expiring rows that
//! make up the excess.

use std::sync::atomic::{AtomicU64, Ordering};

use super::schema::Names;
use super::{ms, PgError, Shared, DELETE_BATCH};
use crate::store::chains::ChainLimits;

/// Expired rows one write deletes at most.
const SWEEP_PER_WRITE: i64 = 8;
/// Writes between two checks of the row count against `max`.
pub const CAP_EVERY: u64 = 64;

pub(super) struct ChainSql {
    put: String,
    get: String,
    sweep: String,
    cap: String,
    bytes: String,
    trim: String,
    writes: AtomicU64,
}

impl ChainSql {
    pub(super) fn new(n: &Names) -> ChainSql {
        let c = &n.chains;
        ChainSql {
            put: format!(
                "INSERT INTO {c} (id, record, expires_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record,
                    expires_ms = EXCLUDED.expires_ms"
            ),
            get: format!("SELECT record FROM {c} WHERE id = $1 AND expires_ms > $2"),
            sweep: format!(
                "DELETE FROM {c} WHERE id IN (
                    SELECT id FROM {c} WHERE expires_ms <= $1 ORDER BY expires_ms
                    LIMIT {SWEEP_PER_WRITE} FOR UPDATE SKIP LOCKED)"
            ),
            // The rows past the newest `max` (by expiry), a batch at a time.
            cap: format!(
                "DELETE FROM {c} WHERE id IN (
                    SELECT id FROM {c} ORDER BY expires_ms DESC, id OFFSET $1
                    LIMIT {DELETE_BATCH} FOR UPDATE SKIP LOCKED)"
            ),
            bytes: format!(
                "SELECT coalesce(sum(octet_length(record) + octet_length(id)), 0)::bigint FROM {c}"
            ),
            // The soonest-expiring rows whose sizes add up to the excess `$1` (the row that
            // crosses it included).
            trim: format!(
                "DELETE FROM {c} WHERE id IN (
                    SELECT id FROM (
                        SELECT id, sum(octet_length(record) + octet_length(id))
                            OVER (ORDER BY expires_ms, id) - octet_length(record) - octet_length(id)
                            AS before
                        FROM {c}) t
                    WHERE before < $1)"
            ),
            writes: AtomicU64::new(0),
        }
    }
}

impl Shared {
    pub(super) async fn put_chain(
        &self,
        id: &str,
        record: &[u8],
        now_ms: u64,
        expires_ms: u64,
        limits: ChainLimits,
    ) -> Result<(), PgError> {
        let c = self.client("chain write").await?;
        let sql = &self.chain_sql;
        let st = c
            .prepare_cached(&sql.put)
            .await
            .map_err(PgError::db("chain write"))?;
        c.execute(&st, &[&id, &record, &ms(expires_ms)])
            .await
            .map_err(PgError::db("chain write"))?;
        c.execute(&sql.sweep, &[&ms(now_ms)])
            .await
            .map_err(PgError::db("chain sweep"))?;
        if sql
            .writes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(CAP_EVERY)
        {
            let keep = limits.max.min(i64::MAX as usize) as i64;
            while c
                .execute(&sql.cap, &[&keep])
                .await
                .map_err(PgError::db("chain cap"))?
                >= DELETE_BATCH as u64
            {}
            let held: i64 = c
                .query_one(&sql.bytes, &[])
                .await
                .map_err(PgError::db("chain cap"))?
                .get(0);
            let budget = limits.max_bytes.min(i64::MAX as u64) as i64;
            if held > budget {
                c.execute(&sql.trim, &[&(held - budget)])
                    .await
                    .map_err(PgError::db("chain cap"))?;
            }
        }
        Ok(())
    }

    pub(super) async fn get_chain(
        &self,
        id: &str,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, PgError> {
        let c = self.client("chain read").await?;
        let st = c
            .prepare_cached(&self.chain_sql.get)
            .await
            .map_err(PgError::db("chain read"))?;
        let row = c
            .query_opt(&st, &[&id, &ms(now_ms)])
            .await
            .map_err(PgError::db("chain read"))?;
        Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
    }
}
