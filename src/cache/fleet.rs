//! Singleflight across the replicas that share a backend (PostgreSQL): the in-process
//! [`super::singleflight`] makes the misses of one process wait for one leader; that leader then
//! [`join`]s the fleet here. If another replica already fetches the same answer (same exact
//! key), it waits for it, bounded, polling the backend: served from the stored answer when it
//! lands, upstream itself when the holder gives up without one, stops renewing its claim (it
//! died), or [`FLEET_WAIT`] passes. Errors fail open: the miss goes upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::backend::{Backend, Claim, ExactKey};
use crate::cache::engine::CacheEngine;
use crate::metrics::Metrics;
use crate::store::{exact_key, Entry, ScopeId};

/// The longest a replica waits for another's answer, however long that one renews its claim
/// (as long as an in-process follower waits for its leader).
pub const FLEET_WAIT: Duration = crate::cache::lookup::FOLLOWER_WAIT;
/// Polls start this often and slow down to [`POLL_MAX`].
const POLL_FIRST: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(100);
/// Claims tried at most (the first, then after holders that gave up without an answer).
const CLAIMS: usize = 3;

/// A fleet-wide claim, released (in the background) when dropped.
pub struct FleetClaim {
    backend: Arc<dyn Backend>,
    key: ExactKey,
    token: u64,
}

impl Drop for FleetClaim {
    fn drop(&mut self) {
        self.backend.release_flight(&self.key, self.token);
    }
}

pub enum Joined {
    /// Go upstream, holding the claim when there is one.
    Lead(Option<FleetClaim>),
    /// Another replica stored the answer meanwhile.
    Served(Entry),
}

/// Claims the miss for the fleet or waits for the replica that holds it. See the module docs.
pub async fn join(engine: &CacheEngine, metrics: &Metrics, scope: ScopeId, prompt: &str) -> Joined {
    if !engine.backend().fleet_singleflight() {
        return Joined::Lead(None);
    }
    let count = |outcome: &str| {
        metrics
            .backend
            .fleet_flights
            .with_label_values(&[outcome])
            .inc()
    };
    let key = exact_key(scope, prompt);
    let started = Instant::now();
    let mut claims = 1;
    let mut waited = false;
    let mut state = engine
        .claim_flight(key)
        .await
        .map(|c| c.unwrap_or(Claim::Free));
    let mut poll = POLL_FIRST;
    loop {
        match state {
            Ok(Claim::Led(token)) => {
                count(if waited { "took_over" } else { "led" });
                let claim = FleetClaim {
                    backend: engine.backend_arc(),
                    key,
                    token,
                };
                return Joined::Lead(Some(claim));
            }
            Ok(Claim::Stored) => {
                if let Ok(Some(entry)) = engine.exact(scope, prompt.to_string()).await {
                    count(if waited { "served" } else { "stored" });
                    return Joined::Served(entry);
                }
                count("unclaimed");
                return Joined::Lead(None);
            }
            Ok(Claim::Held(_)) if started.elapsed() < FLEET_WAIT => {
                waited = true;
                tokio::time::sleep(poll).await;
                poll = (poll * 3 / 2).min(POLL_MAX);
                state = engine.flight_state(key).await;
            }
            // The holder gave up without an answer, or its claim ran out: claim it (again).
            Ok(Claim::Free) if claims < CLAIMS && started.elapsed() < FLEET_WAIT => {
                claims += 1;
                state = engine
                    .claim_flight(key)
                    .await
                    .map(|c| c.unwrap_or(Claim::Free));
            }
            Ok(_) => {
                count("unclaimed");
                return Joined::Lead(None);
            }
            Err(e) => {
                tracing::warn!(error = %e, "fleet singleflight failed; going upstream");
                count("error");
                return Joined::Lead(None);
            }
        }
    }
}
