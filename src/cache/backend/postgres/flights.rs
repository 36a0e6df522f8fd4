//! Singleflight across replicas: concurrent identical misses on different replicas make one
//! upstream call. The replica that meets a miss first claims it with a row of the `flights`
//! table (its exact key, a random token, a deadline on the database's clock); the others see
//! the row and wait (the engine polls [`Backend::flight_state`], see `cache::fleet`) until the
//! answer is stored, the claim is released without one, or its deadline passes.
//!
//! - **Renewal**: the holder's maintenance task pushes the deadline of every claim it holds
//!   `cache.postgres.singleflight_timeout` ahead every [`super::MAINTENANCE_EVERY`], so a slow
//!   upstream call keeps the others waiting (up to the engine's own bound), while a replica
//!   that died (`kill -9`) stops renewing and holds nobody back for longer than the timeout.
//! - **Taking over**: a claim whose deadline passed is overwritten by the next claimant in the
//!   same statement (`ON CONFLICT … DO UPDATE … WHERE deadline passed`).
//! - **Bounded**: a replica holds at most [`MAX_CLAIMS`] claims (past it, misses go upstream
//!   unclaimed), releases each when its answer is stored or abandoned, and expired rows left by
//!   dead replicas are deleted in batches of [`super::DELETE_BATCH`].
//! - **Fail open**: a degraded database is not asked (the miss goes upstream at once); a
//!   failed claim or poll sends the miss upstream.
//!
//! [`Backend::flight_state`]: crate::cache::backend::Backend::flight_state

use std::sync::Arc;
use std::time::Duration;

use super::schema::Names;
use super::{PgError, PostgresBackend, Shared, DELETE_BATCH};
use crate::cache::backend::{Claim, ExactKey};
use crate::cache::engine::CacheError;

/// Claims one replica holds at most.
pub const MAX_CLAIMS: usize = 4096;

/// The database's clock in milliseconds: every replica compares deadlines on one clock.
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

pub(super) struct FlightSql {
    claim: String,
    state: String,
    renew: String,
    release: String,
    stale: String,
}

impl FlightSql {
    pub(super) fn new(n: &Names) -> FlightSql {
        let (e, f) = (&n.entries, &n.flights);
        FlightSql {
            // A live entry wins over any claim; otherwise insert the claim, or take over one
            // whose deadline passed; report what is there either way.
            claim: format!(
                "WITH t AS (SELECT {NOW_MS} AS now),
                 live AS (SELECT 1 FROM {e}, t WHERE exact_key = $1 AND expires_ms > t.now),
                 claim AS (
                    INSERT INTO {f} AS f (exact_key, token, deadline_ms)
                    SELECT $1, $2, t.now + $3 FROM t WHERE NOT EXISTS (SELECT 1 FROM live)
                    ON CONFLICT (exact_key) DO UPDATE
                        SET token = EXCLUDED.token, deadline_ms = EXCLUDED.deadline_ms
                        WHERE f.deadline_ms <= EXCLUDED.deadline_ms - $3
                    RETURNING 1)
                 SELECT EXISTS (SELECT 1 FROM live), EXISTS (SELECT 1 FROM claim),
                        (SELECT f.deadline_ms - t.now FROM {f} f, t WHERE f.exact_key = $1)"
            ),
            state: format!(
                "WITH t AS (SELECT {NOW_MS} AS now)
                 SELECT EXISTS (SELECT 1 FROM {e}, t WHERE exact_key = $1 AND expires_ms > t.now),
                        (SELECT f.deadline_ms - t.now FROM {f} f, t WHERE f.exact_key = $1)"
            ),
            renew: format!(
                "UPDATE {f} AS f SET deadline_ms = {NOW_MS} + $3
                 FROM unnest($1::bytea[], $2::bigint[]) AS v(k, t)
                 WHERE f.exact_key = v.k AND f.token = v.t"
            ),
            release: format!("DELETE FROM {f} WHERE exact_key = $1 AND token = $2"),
            stale: format!(
                "DELETE FROM {f} WHERE exact_key IN (
                    SELECT exact_key FROM {f} WHERE deadline_ms < {NOW_MS} LIMIT {DELETE_BATCH}
                    FOR UPDATE SKIP LOCKED)"
            ),
        }
    }
}

fn hold_ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// What a claim or a poll found: a live entry, whether this call claimed, the holder's time left.
fn outcome(stored: bool, led: Option<i64>, remaining: Option<i64>) -> Claim {
    match (stored, led, remaining) {
        (true, _, _) => Claim::Stored,
        (false, Some(token), _) => Claim::Led(token as u64),
        (false, None, Some(ms)) if ms > 0 => Claim::Held(Duration::from_millis(ms as u64)),
        _ => Claim::Free,
    }
}

impl Shared {
    /// Pushes the deadline of every claim this replica holds (the maintenance task, each
    /// round): a live holder keeps the others waiting, a dead one stops.
    pub(super) async fn renew_claims(&self) -> Result<(), PgError> {
        let (keys, tokens): (Vec<Vec<u8>>, Vec<i64>) = {
            let claims = self.claims.lock();
            if claims.is_empty() {
                return Ok(());
            }
            claims.iter().map(|(k, t)| (k.to_vec(), *t)).unzip()
        };
        let c = self.client("renew").await?;
        let st = c
            .prepare_cached(&self.flight_sql.renew)
            .await
            .map_err(PgError::db("renew"))?;
        c.execute(&st, &[&keys, &tokens, &hold_ms(self.flight_hold)])
            .await
            .map_err(PgError::db("renew"))?;
        Ok(())
    }

    /// Deletes claims whose deadline passed (left by replicas that died), one batch.
    pub(super) async fn delete_stale_claims(&self) -> Result<u64, PgError> {
        let c = self.client("flights").await?;
        c.execute(&self.flight_sql.stale, &[])
            .await
            .map_err(PgError::db("flights"))
    }
}

impl PostgresBackend {
    pub(super) fn claim(&self, key: &ExactKey) -> Result<Option<Claim>, CacheError> {
        let s = &self.shared;
        if s.flight_hold.is_zero() {
            return Ok(None);
        }
        // Waiting on a database that fails would only add its timeout to the miss.
        if s.degraded.lock().is_some() || s.claims.lock().len() >= MAX_CLAIMS {
            return Ok(Some(Claim::Free));
        }
        let token: i64 = rand::random();
        let found = self.run("singleflight", async {
            let c = s.client("singleflight").await?;
            let st = c
                .prepare_cached(&s.flight_sql.claim)
                .await
                .map_err(PgError::db("singleflight"))?;
            let row = c
                .query_one(&st, &[&&key[..], &token, &hold_ms(s.flight_hold)])
                .await
                .map_err(PgError::db("singleflight"))?;
            let led: bool = row.get(1);
            Ok(outcome(row.get(0), led.then_some(token), row.get(2)))
        })?;
        if let Claim::Led(_) = found {
            s.claims.lock().insert(*key, token);
        }
        Ok(Some(found))
    }

    pub(super) fn state(&self, key: &ExactKey) -> Result<Claim, CacheError> {
        let s = &self.shared;
        self.run("singleflight", async {
            let c = s.client("singleflight").await?;
            let st = c
                .prepare_cached(&s.flight_sql.state)
                .await
                .map_err(PgError::db("singleflight"))?;
            let row = c
                .query_one(&st, &[&&key[..]])
                .await
                .map_err(PgError::db("singleflight"))?;
            Ok(outcome(row.get(0), None, row.get(1)))
        })
    }

    /// Stops renewing the claim and deletes its row in the background.
    pub(super) fn release(&self, key: &ExactKey, token: u64) {
        let token = token as i64;
        {
            let mut claims = self.shared.claims.lock();
            if claims.get(key) != Some(&token) {
                return;
            }
            claims.remove(key);
        }
        let s = Arc::clone(&self.shared);
        let key = *key;
        self.handle.spawn(async move {
            let release = async {
                let c = s.client("release").await?;
                let st = c
                    .prepare_cached(&s.flight_sql.release)
                    .await
                    .map_err(PgError::db("release"))?;
                c.execute(&st, &[&&key[..], &token])
                    .await
                    .map_err(PgError::db("release"))?;
                Ok(())
            };
            // A claim that could not be deleted runs out at its deadline.
            let _ = s.bounded("release", release).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_answer_wins_then_the_claim_then_the_holder() {
        assert_eq!(outcome(true, Some(7), Some(100)), Claim::Stored);
        assert_eq!(outcome(false, Some(-1), Some(100)), Claim::Led(u64::MAX));
        assert_eq!(
            outcome(false, None, Some(250)),
            Claim::Held(Duration::from_millis(250))
        );
        // A deadline that passed (or a row gone) holds nobody back.
        assert_eq!(outcome(false, None, Some(0)), Claim::Free);
        assert_eq!(outcome(false, None, Some(-5)), Claim::Free);
        assert_eq!(outcome(false, None, None), Claim::Free);
    }
}
