//! Per-provider circuit breaker: after `threshold` consecutive failed *requests* it opens and
//! rejects at once for `cooldown`, then lets exactly one probe request through (half-open); the
//! probe's success closes it, its failure re-opens it. Time is `tokio::time::Instant` so tests
//! can pause and advance the clock. The lock is never held across an `.await`.
//!
//! One permit covers one client request's attempts on this provider, retries included (the
//! router holds it across them), so the breaker counts what a client sees, not how many times
//! the router retried: with the openai SDK's default retries one failing call is 3 requests
//! (and 9 attempts with deja's default `max_retries`), below the default threshold of 5. A
//! failure rate over a window (resilience4j, Hystrix) would also ignore a lone failure, but
//! needs a window and a minimum volume tuned per deployment, and at the low request rates of
//! a team proxy a dead provider would never reach that volume; consecutive failed requests
//! need no tuning and open after two failed SDK calls, which is what an operator expects.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// What a breaker does with the next request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are rejected without being sent.
    Open,
    /// Cooldown is over: the next request is a probe (or one is in flight).
    HalfOpen,
}

impl BreakerState {
    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(&self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
    opened: AtomicU64,
}

impl CircuitBreaker {
    /// `threshold == 0` disables the breaker.
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> CircuitBreaker {
        CircuitBreaker {
            threshold,
            cooldown,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            opened: AtomicU64::new(0),
        }
    }

    /// A permit to send one request (all its attempts), or, when the breaker rejects it, how
    /// long until it lets a probe through (zero while a probe is in flight).
    pub(crate) fn acquire(&self) -> Result<Permit<'_>, Duration> {
        let mut inner = self.inner.lock();
        let probe = match &mut *inner {
            Inner::Closed { .. } => false,
            Inner::Open { until } => {
                let now = Instant::now();
                if now < *until {
                    return Err(*until - now);
                }
                *inner = Inner::HalfOpen { probing: true };
                true
            }
            Inner::HalfOpen { probing } => {
                if *probing {
                    return Err(Duration::ZERO);
                }
                *probing = true;
                true
            }
        };
        Ok(Permit {
            breaker: self,
            probe,
            settled: false,
        })
    }

    pub(crate) fn state(&self) -> BreakerState {
        match &*self.inner.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if Instant::now() < *until => BreakerState::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How many times this breaker has opened (including re-opens after a failed probe).
    pub(crate) fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn open(&self, inner: &mut Inner) {
        *inner = Inner::Open {
            until: Instant::now() + self.cooldown,
        };
        self.opened.fetch_add(1, Ordering::Relaxed);
    }
}

/// Outcome slot for one request. Dropping it unsettled (request cancelled, or an outcome that
/// says nothing about upstream health) frees the probe slot so the breaker cannot stick.
#[must_use = "settle the permit with success() or failure(), or drop it to say nothing"]
pub(crate) struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    settled: bool,
}

impl Permit<'_> {
    /// The request got an answer (any non-retryable status counts: the upstream is up).
    pub(crate) fn success(mut self) {
        self.settled = true;
        let mut inner = self.breaker.inner.lock();
        if self.probe {
            *inner = Inner::Closed { failures: 0 };
        } else if let Inner::Closed { failures } = &mut *inner {
            *failures = 0;
        }
    }

    /// The request failed after all its attempts on this provider.
    pub(crate) fn failure(mut self) {
        self.settled = true;
        if self.breaker.threshold == 0 {
            return;
        }
        let mut inner = self.breaker.inner.lock();
        if self.probe {
            self.breaker.open(&mut inner);
        } else if let Inner::Closed { failures } = &mut *inner {
            *failures += 1;
            if *failures >= self.breaker.threshold {
                self.breaker.open(&mut inner);
            }
        }
        // A late failure from a request sent before the breaker opened changes nothing.
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            let mut inner = self.breaker.inner.lock();
            if let Inner::HalfOpen { probing } = &mut *inner {
                *probing = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_then_half_opens_one_probe() {
        let b = CircuitBreaker::new(3, Duration::from_secs(30));
        for _ in 0..2 {
            b.acquire().ok().unwrap().failure();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.acquire().ok().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.times_opened(), 1);
        assert!(b.acquire().is_err());

        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(
            b.acquire().err(),
            Some(Duration::from_secs(1)),
            "remaining cooldown"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.acquire().ok().unwrap();
        assert_eq!(
            b.acquire().err(),
            Some(Duration::ZERO),
            "only one probe at a time"
        );
        probe.failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.times_opened(), 2);

        tokio::time::advance(Duration::from_secs(30)).await;
        b.acquire().ok().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_consecutive_count() {
        let b = CircuitBreaker::new(2, Duration::from_secs(1));
        b.acquire().ok().unwrap().failure();
        b.acquire().ok().unwrap().success();
        b.acquire().ok().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.acquire().ok().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_probe_frees_the_slot() {
        let b = CircuitBreaker::new(1, Duration::from_secs(1));
        b.acquire().ok().unwrap().failure();
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(b.acquire().ok().unwrap());
        assert!(
            b.acquire().is_ok(),
            "a cancelled probe must not wedge the breaker"
        );
    }

    #[tokio::test]
    async fn zero_threshold_disables() {
        let b = CircuitBreaker::new(0, Duration::from_secs(1));
        for _ in 0..100 {
            b.acquire().ok().unwrap().failure();
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
