//! Singleflight for misses: concurrent identical misses (same scope and exact key, see
//! [`crate::store::exact_key`]) make one upstream call. The first request becomes the leader
//! and holds a [`Flight`] until its answer is stored (or it gives up); the others wait for that
//! and then look the cache up again, by the same exact key. If the leader fails, each follower
//! goes upstream on its own: a failure is never shared.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::store::{exact_key, ScopeId};

/// The exact key: a follower looks the leader's entry up by it.
type Key = [u8; 48];

#[derive(Default)]
pub struct Singleflight {
    flights: Mutex<HashMap<Key, watch::Receiver<bool>>>,
}

/// Held by the leader; dropping it releases the followers (and, after them, the fleet-wide
/// claim it holds, if any: see [`crate::cache::fleet`]).
pub struct Flight {
    key: Key,
    owner: Arc<Singleflight>,
    done: watch::Sender<bool>,
    fleet: Option<crate::cache::fleet::FleetClaim>,
}

impl Flight {
    /// Keeps the fleet-wide claim until this flight ends.
    pub fn hold(&mut self, claim: Option<crate::cache::fleet::FleetClaim>) {
        self.fleet = claim;
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.owner.flights.lock().remove(&self.key);
        let _ = self.done.send(true);
    }
}

pub enum Role {
    Leader(Flight),
    /// Another request is fetching this answer; wait with [`Follower::wait`].
    Follower(Follower),
}

pub struct Follower {
    rx: watch::Receiver<bool>,
}

impl Follower {
    /// Waits until the leader is done or `limit` passes. Returns whether the leader finished.
    pub async fn wait(mut self, limit: Duration) -> bool {
        let done = tokio::time::timeout(limit, self.rx.wait_for(|d| *d)).await;
        matches!(done, Ok(Ok(_)))
    }
}

impl Singleflight {
    pub fn new() -> Arc<Singleflight> {
        Arc::new(Singleflight::default())
    }

    pub fn join(self: &Arc<Self>, scope: ScopeId, prompt: &str) -> Role {
        let key = exact_key(scope, prompt);
        let mut flights = self.flights.lock();
        if let Some(rx) = flights.get(&key) {
            return Role::Follower(Follower { rx: rx.clone() });
        }
        let (tx, rx) = watch::channel(false);
        flights.insert(key, rx);
        Role::Leader(Flight {
            key,
            owner: self.clone(),
            done: tx,
            fleet: None,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.flights.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_caller_follows_until_leader_drops() {
        let sf = Singleflight::new();
        let scope = ScopeId([1; 16]);
        let leader = match sf.join(scope, "q") {
            Role::Leader(f) => f,
            Role::Follower(_) => panic!("first caller must lead"),
        };
        let follower = match sf.join(scope, "q") {
            Role::Follower(f) => f,
            Role::Leader(_) => panic!("second caller must follow"),
        };
        assert!(matches!(sf.join(scope, "other"), Role::Leader(_)));
        let waiter = tokio::spawn(follower.wait(Duration::from_secs(5)));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(leader);
        assert!(waiter.await.unwrap());
        assert_eq!(sf.in_flight(), 0);
        assert!(matches!(sf.join(scope, "q"), Role::Leader(_)));
    }

    #[test]
    fn flights_are_keyed_by_the_exact_key() {
        let sf = Singleflight::new();
        let scope = ScopeId([3; 16]);
        let _leader = sf.join(scope, "How do I reset my password");
        assert!(matches!(
            sf.join(scope, "how do I reset my password?"),
            Role::Follower(_)
        ));
        let _code = sf.join(scope, "print(x)");
        assert!(matches!(sf.join(scope, "Print(X)"), Role::Leader(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn follower_gives_up_after_limit() {
        let sf = Singleflight::new();
        let scope = ScopeId([2; 16]);
        let _leader = sf.join(scope, "q");
        let Role::Follower(f) = sf.join(scope, "q") else {
            panic!("must follow")
        };
        assert!(!f.wait(Duration::from_millis(50)).await);
    }
}
