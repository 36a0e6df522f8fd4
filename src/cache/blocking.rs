//! Bounded blocking work for lookups. A lookup's store read and index search run on tokio's
//! blocking threads (never on the async ones), at most [`LookupLimits::threads`] at once; a
//! lookup waits for a slot in a queue of at most [`LookupLimits::queue`], and if its blocking
//! part has not finished within [`LookupLimits::timeout`] it gives up with
//! [`CacheError::Busy`], which the request path treats as a miss and forwards. So a wedged
//! store or a burst that outruns the cores costs bounded threads and bounded latency, never a
//! hang. A lookup that gave up still holds its slot until its job really ends, so the bound on
//! threads holds even then.
//!
//! Nothing here adds a thread hand-off: taking a free slot is an atomic operation on the
//! calling task, and the job goes to tokio's blocking pool exactly as before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, TryAcquireError};

use super::engine::CacheError;

/// How much blocking work lookups may have in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupLimits {
    /// Blocking jobs of lookups running at once.
    pub threads: usize,
    /// Lookups waiting for a slot; one more is answered [`CacheError::Busy`] at once.
    pub queue: usize,
    /// How long one blocking step of a lookup (the exact read, or the search) may take, waiting
    /// for a slot included, before it is given up as a miss.
    pub timeout: Duration,
}

impl LookupLimits {
    /// Two jobs per core (a lookup is part CPU, part store read that may wait on the disk), at
    /// least 4 and at most 64; a queue of 64 per slot; half a second: a lookup normally takes
    /// well under a millisecond, and the upstream call a miss leads to takes far longer.
    pub fn for_cores(cores: usize) -> Self {
        let threads = cores.saturating_mul(2).clamp(4, 64);
        LookupLimits {
            threads,
            queue: threads * 64,
            timeout: Duration::from_millis(500),
        }
    }
}

impl Default for LookupLimits {
    /// [`LookupLimits::for_cores`] with this machine's cores.
    fn default() -> Self {
        Self::for_cores(std::thread::available_parallelism().map_or(1, usize::from))
    }
}

/// Blocking threads that work other than lookups may hold at once: inserts
/// ([`super::engine::INSERT_THREADS`]), the flusher, sweeps, snapshots, reloads, start-up, token
/// estimates.
const OTHER_BLOCKING_THREADS: usize = 16;

/// The size to give tokio's blocking pool (`max_blocking_threads`): every lookup slot plus the
/// other blocking work, so a lookup with a slot rarely waits for a thread.
pub fn runtime_blocking_threads(limits: &LookupLimits) -> usize {
    limits.threads + super::engine::INSERT_THREADS + OTHER_BLOCKING_THREADS
}

/// The slots lookups' blocking jobs take.
pub(crate) struct LookupGate {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    limits: LookupLimits,
}

/// Counts a lookup as waiting while it exists (a cancelled wait included).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LookupGate {
    pub(crate) fn new(limits: LookupLimits) -> Self {
        let limits = LookupLimits {
            threads: limits.threads.max(1),
            ..limits
        };
        LookupGate {
            slots: Arc::new(Semaphore::new(limits.threads)),
            waiting: AtomicUsize::new(0),
            limits,
        }
    }

    /// Runs `f` on a blocking thread once a slot is free; [`CacheError::Busy`] if the queue is
    /// full, or if no slot came free and `f` finished within the timeout.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce() -> Result<T, CacheError> + Send + 'static,
    ) -> Result<T, CacheError> {
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let busy = |waited: bool| CacheError::Busy {
            what,
            threads: self.limits.threads,
            reason: if waited { "timed out" } else { "queue full" },
        };
        let slot = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(TryAcquireError::Closed) => {
                return Err(CacheError::Join("lookup gate closed".into()))
            }
            Err(TryAcquireError::NoPermits) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.limits.queue {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(busy(false));
                }
                let _waiting = Waiting(&self.waiting);
                let slots = Arc::clone(&self.slots);
                match tokio::time::timeout_at(deadline, slots.acquire_owned()).await {
                    Ok(Ok(slot)) => slot,
                    Ok(Err(closed)) => return Err(CacheError::Join(closed.to_string())),
                    Err(_) => return Err(busy(true)),
                }
            }
        };
        let job = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            f()
        });
        match tokio::time::timeout_at(deadline, job).await {
            Ok(joined) => joined.map_err(|e| CacheError::Join(e.to_string()))?,
            // The job goes on and frees its slot when it ends.
            Err(_) => Err(busy(true)),
        }
    }

    /// Slots taken right now.
    #[cfg(test)]
    pub(crate) fn running(&self) -> usize {
        self.limits.threads - self.slots.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    // Real time, short: tokio does not auto-advance a paused clock while a blocking job runs,
    // and a blocked job is what these tests need.
    const TIMEOUT: Duration = Duration::from_millis(100);

    fn gate(threads: usize, queue: usize) -> LookupGate {
        LookupGate::new(LookupLimits {
            threads,
            queue,
            timeout: TIMEOUT,
        })
    }

    /// Occupies one slot with a job that runs until the returned sender is dropped.
    async fn block_one(gate: &Arc<LookupGate>) -> mpsc::Sender<()> {
        let (release, wait) = mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel();
        let g = Arc::clone(gate);
        tokio::spawn(async move {
            let _ = g
                .run("test", move || {
                    let _ = started.send(());
                    let _ = wait.recv();
                    Ok(())
                })
                .await;
        });
        running.await.unwrap();
        release
    }

    #[tokio::test]
    async fn issue12_a_full_lookup_pool_answers_busy_within_the_timeout() {
        let gate = Arc::new(gate(1, 8));
        let release = block_one(&gate).await;
        assert_eq!(gate.running(), 1);
        let started = tokio::time::Instant::now();
        let out = gate.run("exact lookup", || Ok(1)).await;
        assert!(
            matches!(
                out,
                Err(CacheError::Busy {
                    reason: "timed out",
                    ..
                })
            ),
            "{out:?}"
        );
        // It waited out the timeout, and no longer (give or take a loaded machine).
        let waited = started.elapsed();
        assert!(waited >= TIMEOUT && waited < 20 * TIMEOUT, "{waited:?}");
        // Freed, the slot serves the next lookup.
        drop(release);
        for _ in 0..100 {
            if gate.running() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(gate.run("exact lookup", || Ok(2)).await.unwrap(), 2);
    }

    /// A job slower than the timeout is given up on, but keeps its slot until it ends: the
    /// number of threads stays bounded.
    #[tokio::test]
    async fn a_slow_job_is_a_timeout_and_keeps_its_slot_until_it_ends() {
        let gate = gate(1, 8);
        let (release, wait) = mpsc::channel::<()>();
        let out = gate
            .run("search", move || {
                let _ = wait.recv();
                Ok(())
            })
            .await;
        assert!(matches!(out, Err(CacheError::Busy { .. })), "{out:?}");
        assert_eq!(gate.running(), 1);
        drop(release);
    }

    #[tokio::test]
    async fn past_the_queue_a_lookup_is_busy_at_once() {
        let gate = Arc::new(gate(1, 1));
        let release = block_one(&gate).await;
        // One waits in the queue...
        let g = Arc::clone(&gate);
        let queued = tokio::spawn(async move { g.run("exact lookup", || Ok(())).await });
        tokio::task::yield_now().await;
        while gate.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        // ...the next is turned away without waiting.
        let started = tokio::time::Instant::now();
        let out = gate.run("exact lookup", || Ok(())).await;
        assert!(
            matches!(
                out,
                Err(CacheError::Busy {
                    reason: "queue full",
                    ..
                })
            ),
            "{out:?}"
        );
        assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
        drop(release);
        let _ = queued.await.unwrap();
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);
    }

    /// What the gate adds to one blocking step: the same trivial job through a bare
    /// `spawn_blocking` (the old path) and through the gate, interleaved. Printed, not asserted:
    /// `cargo test --lib cache::blocking::tests::gate_overhead -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn gate_overhead() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let gate = LookupGate::new(LookupLimits::default());
        rt.block_on(async {
            let (mut bare, mut gated) = (Vec::new(), Vec::new());
            for round in 0..40_000 {
                let started = std::time::Instant::now();
                if round % 2 == 0 {
                    let _ = tokio::task::spawn_blocking(|| Ok::<_, CacheError>(1))
                        .await
                        .unwrap();
                    bare.push(started.elapsed());
                } else {
                    let _ = gate.run("bench", || Ok(1)).await.unwrap();
                    gated.push(started.elapsed());
                }
            }
            for (name, mut v) in [("spawn_blocking", bare), ("gate", gated)] {
                v.sort();
                let mean = v.iter().sum::<Duration>() / v.len() as u32;
                let (p50, p99) = (v[v.len() / 2], v[v.len() * 99 / 100]);
                println!("{name}: mean {mean:?}, p50 {p50:?}, p99 {p99:?}");
            }
        });
    }

    mod engine {
        //! The gate inside a real engine.
        use super::super::*;
        use crate::cache::{CacheEngine, EngineSettings, Lookup, LookupTrace};
        use crate::embed::EmbedPool;
        use crate::embed::{EmbedSettings, HashEmbedder};
        use crate::index::IndexConfig;
        use crate::store::{CachedResponse, ScopeId};
        use crate::store::{FinishReason, StoreConfig};
        use std::time::Instant;

        const DIM: usize = 16;

        fn engine(dir: &std::path::Path, limits: LookupLimits) -> CacheEngine {
            let store =
                crate::store::Store::open(&StoreConfig::new(dir, "deja/hashing-16", DIM)).unwrap();
            let index = crate::index::ScopedIndex::new(IndexConfig {
                dim: DIM,
                ..IndexConfig::default()
            })
            .unwrap();
            let pool = EmbedPool::new(Arc::new(HashEmbedder::new(DIM)), &EmbedSettings::default());
            let settings = EngineSettings::default();
            CacheEngine::open_with_limits(store, index, Arc::new(pool), settings, None, limits)
                .unwrap()
                .0
        }

        /// With every lookup thread taken by a job that does not end, a lookup of a stored prompt
        /// comes back `Busy` (which the request path forwards as a miss) after the timeout instead
        /// of waiting; once the thread is free, the same lookup is a hit.
        #[tokio::test]
        async fn issue12_a_busy_lookup_pool_is_a_miss_not_a_hang() {
            let dir = tempfile::tempdir().unwrap();
            let timeout = Duration::from_millis(100);
            let limits = LookupLimits {
                threads: 1,
                queue: 4,
                timeout,
            };
            let engine = engine(dir.path(), limits);
            let scope = ScopeId::from_bytes(b"t");
            let answer = CachedResponse {
                model: "m".into(),
                content: "4".into(),
                finish_reason: FinishReason::Stop,
                usage: None,
                provider: "p".into(),
                system_fingerprint: None,
                tool_calls: Vec::new(),
            };
            let ttl = Duration::from_secs(60);
            engine
                .insert(scope, "2+2?".into(), None, answer, ttl, None)
                .await
                .unwrap();

            let (release, wait) = std::sync::mpsc::channel::<()>();
            let (started, running) = tokio::sync::oneshot::channel();
            let e2 = engine.clone();
            let blocker = tokio::spawn(async move {
                e2.lookup_gate()
                    .run("test", move || {
                        let _ = started.send(());
                        let _ = wait.recv();
                        Ok(())
                    })
                    .await
            });
            running.await.unwrap();

            let began = Instant::now();
            let mut trace = LookupTrace::default();
            let rule = crate::cache::verify::Rule::cosine(0.9, true);
            let out = engine.lookup(scope, "2+2?", true, rule, &mut trace).await;
            let waited = began.elapsed();
            assert!(matches!(out, Err(CacheError::Busy { .. })), "{out:?}");
            assert!(waited >= timeout && waited < 20 * timeout, "{waited:?}");
            assert!(matches!(
                engine.exact(scope, "2+2?".into()).await,
                Err(CacheError::Busy { .. })
            ));

            drop(release);
            let _ = blocker.await.unwrap();
            let out = engine.lookup(scope, "2+2?", true, rule, &mut trace).await;
            assert!(matches!(out, Ok(Lookup::Exact(_))), "{out:?}");
        }
    }

    #[test]
    fn limits_scale_with_cores_within_bounds() {
        assert_eq!(LookupLimits::for_cores(1).threads, 4);
        assert_eq!(LookupLimits::for_cores(8).threads, 16);
        assert_eq!(LookupLimits::for_cores(1_000).threads, 64);
        let limits = LookupLimits::for_cores(2);
        assert!(runtime_blocking_threads(&limits) > limits.threads);
    }
}
