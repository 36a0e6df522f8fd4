//! Background builds of one scope's index: promotion (flat → HNSW once a scope outgrows
//! [`IndexConfig::flat_max`]) and rebuilds (a fresh graph without tombstones). A build works on
//! a snapshot taken under the scope's lock, on a builder thread; writes that land meanwhile are
//! applied to the old index *and* logged in [`ScopeState::pending`], then replayed onto the new
//! one before the swap, so none is lost. Searches keep using the old index throughout.
//!
//! At most [`Background::max_builds`] builds run at once (half the cores, at least one): many
//! scopes crossing `flat_max` together queue their builds instead of each taking a thread and a
//! core. Builder threads start on demand and end when the queue is empty.
//!
//! It must never hold a scope's lock while building, and never leave `pending` set when a
//! build ends (a panic included), or that scope's writes would be logged forever.

use super::flat::FlatIndex;
use super::hnsw::{GraphNode, HnswIndex};
use super::{IndexConfig, ScopeIndex, VectorSearch, VectorWrite};
use crate::store::EntryId;
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

/// Replays at most this many logged writes while holding the scope's write lock; a longer log
/// is replayed outside the lock first (catch-up rounds), so a burst of inserts during a long
/// build never blocks the scope's searches for long.
const REPLAY_UNDER_LOCK: usize = 256;

/// How often a build checks whether the index it works for was dropped.
const CANCEL_CHECK_EVERY: usize = 256;

/// One scope: its index and, while a build runs, the log of writes the build must replay.
pub(crate) struct ScopeState {
    pub(crate) index: ScopeIndex,
    pub(crate) pending: Option<Vec<PendingOp>>,
    /// Set when the empty scope was dropped from the map; a writer still holding it retries.
    pub(crate) retired: bool,
}

impl ScopeState {
    pub(crate) fn new(dim: usize) -> Self {
        ScopeState {
            index: ScopeIndex::Flat(FlatIndex::new(dim)),
            pending: None,
            retired: false,
        }
    }
}

/// A write made while a build was running (vectors already normalized).
pub(crate) enum PendingOp {
    Insert(EntryId, Vec<f32>),
    Remove(EntryId),
}

pub(crate) type Slot = Arc<RwLock<ScopeState>>;

/// Bookkeeping shared by the index and its build threads.
pub(crate) struct Background {
    /// Builds queued or running.
    in_flight: Mutex<usize>,
    /// Builds waiting for a builder thread, and how many builder threads run.
    queue: Mutex<BuildQueue>,
    /// Builder threads (so builds running) at most at once.
    pub(crate) max_builds: usize,
    /// Builds running right now, and the most that ever ran at once.
    running: AtomicUsize,
    peak_running: AtomicUsize,
    idle: Condvar,
    pub(crate) cancelled: AtomicBool,
    pub(crate) promotions: AtomicU64,
    pub(crate) rebuilds: AtomicU64,
    pub(crate) demotions: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) replayed_ops: AtomicU64,
    /// Snapshots writing a graph right now (each holds its scope's read lock for seconds).
    pub(crate) dumping: AtomicUsize,
    /// Tests hold this to keep builds from starting until they have raced writes against them.
    #[cfg(test)]
    pub(crate) gate: Mutex<()>,
}

#[derive(Default)]
struct BuildQueue {
    waiting: VecDeque<Queued>,
    builders: usize,
}

/// A build waiting for a builder thread.
struct Queued {
    slot: Weak<RwLock<ScopeState>>,
    job: Job,
    cfg: Arc<IndexConfig>,
}

impl Default for Background {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self::with_max_builds((cores / 2).max(1))
    }
}

impl Background {
    pub(crate) fn with_max_builds(max_builds: usize) -> Self {
        Background {
            in_flight: Mutex::new(0),
            queue: Mutex::new(BuildQueue::default()),
            max_builds: max_builds.max(1),
            running: AtomicUsize::new(0),
            peak_running: AtomicUsize::new(0),
            idle: Condvar::new(),
            cancelled: AtomicBool::new(false),
            promotions: AtomicU64::new(0),
            rebuilds: AtomicU64::new(0),
            demotions: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            replayed_ops: AtomicU64::new(0),
            dumping: AtomicUsize::new(0),
            #[cfg(test)]
            gate: Mutex::new(()),
        }
    }

    /// Builds waiting for a builder thread.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queue.lock().waiting.len()
    }

    /// The most builds that ran at once so far.
    #[cfg(test)]
    pub(crate) fn peak_running(&self) -> usize {
        self.peak_running.load(Ordering::Acquire)
    }

    pub(crate) fn in_flight(&self) -> usize {
        *self.in_flight.lock()
    }

    /// Waits until no build runs; false on timeout.
    pub(crate) fn wait_idle(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut n = self.in_flight.lock();
        while *n > 0 {
            if self.idle.wait_until(&mut n, deadline).timed_out() {
                return *n == 0;
            }
        }
        true
    }

    fn finished(&self) {
        let mut n = self.in_flight.lock();
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.idle.notify_all();
        }
    }
}

/// The scope's write lock, without stalling its searches behind a snapshot: parking_lot's lock
/// is fair, so a writer that parks behind a snapshot's long read lock would block every search
/// that arrives after it. While a snapshot runs, writers poll instead of parking (writes are
/// off the response path; searches are not).
pub(crate) fn write_slot<'a>(
    bg: &Background,
    slot: &'a Slot,
) -> parking_lot::RwLockWriteGuard<'a, ScopeState> {
    loop {
        if let Some(guard) = slot.try_write() {
            return guard;
        }
        if bg.dumping.load(Ordering::Acquire) == 0 {
            return slot.write();
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

enum Job {
    Promote(FlatIndex),
    Rebuild(Vec<GraphNode>),
}

#[derive(Clone, Copy)]
enum Outcome {
    Promoted,
    Rebuilt,
    Demoted,
}

/// Starts a build for this scope if it needs one and none is running. Called with the scope's
/// write lock held (`st` is its guarded state).
pub(crate) fn maybe_start(
    cfg: &Arc<IndexConfig>,
    bg: &Arc<Background>,
    slot: &Slot,
    st: &mut ScopeState,
) {
    if st.pending.is_some() || bg.cancelled.load(Ordering::Relaxed) {
        return;
    }
    let job = match &st.index {
        ScopeIndex::Flat(f) if f.len() > cfg.flat_max => Job::Promote(f.clone()),
        ScopeIndex::Hnsw(h) if h.tombstone_fraction() > cfg.rebuild_tombstone_fraction => {
            Job::Rebuild(h.live_nodes())
        }
        _ => return,
    };
    st.pending = Some(Vec::new());
    *bg.in_flight.lock() += 1;
    let queued = Queued {
        slot: Arc::downgrade(slot),
        job,
        cfg: Arc::clone(cfg),
    };
    let mut queue = bg.queue.lock();
    queue.waiting.push_back(queued);
    if queue.builders >= bg.max_builds {
        // A builder thread takes it when it finishes its current build.
        return;
    }
    // The queue stays locked while the thread starts, so a failure can be undone exactly.
    let bg2 = Arc::clone(bg);
    let spawned = std::thread::Builder::new()
        .name("deja-index-build".to_string())
        .spawn(move || builder(bg2));
    match spawned {
        Ok(_) => queue.builders += 1,
        Err(e) => {
            tracing::warn!(error = %e, "could not start an index build thread");
            if queue.builders > 0 {
                // A running builder will take this build.
                return;
            }
            // No builder runs, so the queue held only this build (a builder drains the queue
            // before it ends): take it back; the scope keeps its current index and the next
            // write tries again.
            queue.waiting.pop_back();
            drop(queue);
            st.pending = None;
            bg.failed.fetch_add(1, Ordering::Relaxed);
            bg.finished();
        }
    }
}

/// A builder thread: runs queued builds one after another, and ends when none is left.
fn builder(bg: Arc<Background>) {
    loop {
        let next = {
            let mut queue = bg.queue.lock();
            match queue.waiting.pop_front() {
                Some(next) => next,
                None => {
                    queue.builders -= 1;
                    return;
                }
            }
        };
        let now = bg.running.fetch_add(1, Ordering::AcqRel) + 1;
        bg.peak_running.fetch_max(now, Ordering::AcqRel);
        // A panicking build is cleaned up by its `Guard`; the thread goes on with the queue.
        let build = std::panic::AssertUnwindSafe(|| run(next.slot, next.job, next.cfg, &bg));
        if std::panic::catch_unwind(build).is_err() {
            tracing::warn!("an index build panicked");
        }
        bg.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ends a build however it ends: clears `pending` unless the swap happened, and counts it.
struct Guard {
    slot: Weak<RwLock<ScopeState>>,
    bg: Arc<Background>,
    swapped: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.swapped {
            if let Some(slot) = self.slot.upgrade() {
                write_slot(&self.bg, &slot).pending = None;
                if !self.bg.cancelled.load(Ordering::Relaxed) {
                    self.bg.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("an index build ended without swapping in its result");
                }
            }
        }
        self.bg.finished();
    }
}

fn run(weak: Weak<RwLock<ScopeState>>, job: Job, cfg: Arc<IndexConfig>, bg: &Arc<Background>) {
    let mut guard = Guard {
        slot: weak.clone(),
        bg: Arc::clone(bg),
        swapped: false,
    };
    #[cfg(test)]
    drop(bg.gate.lock());
    let Some((mut fresh, outcome)) = build(job, &cfg, bg) else {
        return;
    };
    loop {
        let Some(slot) = weak.upgrade() else {
            return;
        };
        let mut st = write_slot(bg, &slot);
        let ops = match st.pending.as_mut() {
            Some(log) => std::mem::take(log),
            None => return,
        };
        if ops.len() <= REPLAY_UNDER_LOCK {
            replay(&mut fresh, ops, bg);
            let old = std::mem::replace(&mut st.index, fresh);
            st.pending = None;
            guard.swapped = true;
            let counter = match outcome {
                Outcome::Promoted => &bg.promotions,
                Outcome::Rebuilt => &bg.rebuilds,
                Outcome::Demoted => &bg.demotions,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            // Writes replayed just now may already call for the next build.
            maybe_start(&cfg, bg, &slot, &mut st);
            drop(st);
            // Dropping a large graph takes a while: not under the lock.
            drop(old);
            return;
        }
        drop(st);
        replay(&mut fresh, ops, bg);
    }
}

/// The new index from a snapshot; `None` if the owning index was dropped meanwhile.
fn build(job: Job, cfg: &IndexConfig, bg: &Background) -> Option<(ScopeIndex, Outcome)> {
    let cancelled =
        |i: usize| i.is_multiple_of(CANCEL_CHECK_EVERY) && bg.cancelled.load(Ordering::Relaxed);
    match job {
        Job::Promote(flat) => {
            let mut h = HnswIndex::new(cfg, flat.len());
            for (i, (id, v)) in flat.iter().enumerate() {
                if cancelled(i) {
                    return None;
                }
                // Ids in a flat index are unique, so this cannot fail.
                let _ = h.insert_prepared(id, v);
            }
            Some((ScopeIndex::Hnsw(h), Outcome::Promoted))
        }
        Job::Rebuild(nodes) if nodes.len() <= cfg.flat_max / 2 => {
            let mut f = FlatIndex::new(cfg.dim);
            for n in &nodes {
                let _ = f.push_prepared(n.id(), &n.unit_vector());
            }
            Some((ScopeIndex::Flat(f), Outcome::Demoted))
        }
        Job::Rebuild(nodes) => {
            let mut h = HnswIndex::new(cfg, nodes.len());
            for (i, n) in nodes.iter().enumerate() {
                if cancelled(i) {
                    return None;
                }
                let _ = h.insert_graph_scaled(n.id(), n.graph_vector());
            }
            Some((ScopeIndex::Hnsw(h), Outcome::Rebuilt))
        }
    }
}

fn replay(index: &mut ScopeIndex, ops: Vec<PendingOp>, bg: &Background) {
    bg.replayed_ops
        .fetch_add(ops.len() as u64, Ordering::Relaxed);
    for op in ops {
        match op {
            PendingOp::Insert(id, v) => {
                // The old index already accepted this id, so it is new to the snapshot too.
                if let Err(e) = index.insert_prepared(id, &v) {
                    tracing::warn!(id, error = %e, "replaying an insert onto a rebuilt index");
                }
            }
            PendingOp::Remove(id) => {
                index.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::synth::Synth;
    use crate::index::ScopedIndex;
    use crate::store::ScopeId;
    use std::time::{Duration, Instant};

    /// `max + 1` scopes outgrow `flat_max` while the builds are held at the gate: `max` builds
    /// run and one waits in the queue; released, all of them finish, never more than `max` at
    /// once.
    #[test]
    fn issue12_index_builds_run_at_most_max_builds_at_once() {
        let max = 2;
        let flat_max = 20;
        let mut idx = ScopedIndex::new(IndexConfig {
            dim: 16,
            flat_max,
            ef_construction: 32,
            ..IndexConfig::default()
        })
        .unwrap();
        idx.bg = Arc::new(Background::with_max_builds(max));
        let mut synth = Synth::new(31, 16, 4);
        let gate = idx.bg.gate.lock();
        for s in 0..=max as u8 {
            for (id, v) in synth.vectors(flat_max + 1).iter().enumerate() {
                idx.insert(ScopeId::from_bytes(&[s]), id as u64, v).unwrap();
            }
        }
        let started = Instant::now();
        while idx.bg.running.load(Ordering::Acquire) < max {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "builds never started"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(idx.bg.queued(), 1);
        assert_eq!(idx.stats().builds_in_flight, max + 1);
        drop(gate);
        assert!(idx.wait_idle(Duration::from_secs(60)));
        let stats = idx.stats();
        assert_eq!((stats.promotions, stats.failed_builds), (max as u64 + 1, 0));
        assert_eq!(stats.hnsw_scopes, max + 1);
        assert_eq!(idx.bg.peak_running(), max);
        assert_eq!(idx.bg.queued(), 0);
        // The builder threads ended with the queue.
        let started = Instant::now();
        while idx.bg.queue.lock().builders > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "builders linger"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
