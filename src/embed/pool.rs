//! The embedding worker pool: the only place the async world meets the model. `embed` checks an
//! LRU of recent embeddings, then puts a job on a bounded queue and awaits a oneshot; dedicated
//! OS threads (never tokio's) take a job, drain whatever else is already waiting up to
//! `max_batch` (micro-batching without a fixed delay: under load batches grow by themselves, at
//! rest a lone request goes straight through), run one `embed_batch`, and answer every job.
//! It never blocks the caller: a full queue is [`EmbedError::Overloaded`] at once.

use super::{EmbedError, EmbedSettings, Embedder};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use lru::LruCache;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;

type Reply = Result<Arc<[f32]>, EmbedError>;

struct Job {
    text: String,
    reply: oneshot::Sender<Reply>,
}

/// LRU key: blake3 of the text, so a long prompt costs 32 bytes in the cache, not its length.
type Key = [u8; 32];

fn key(text: &str) -> Key {
    *blake3::hash(text.as_bytes()).as_bytes()
}

struct Shared {
    embedder: Arc<dyn Embedder>,
    lru: Option<Mutex<LruCache<Key, Arc<[f32]>>>>,
    max_batch: usize,
    shutdown: AtomicBool,
    lru_hits: AtomicU64,
    lru_misses: AtomicU64,
    batches: AtomicU64,
    batched_texts: AtomicU64,
    rejected: AtomicU64,
    /// Workers embedding right now.
    busy: AtomicUsize,
}

/// An embedding on its way: from [`EmbedPool::submit`]. Dropping it abandons the job (a worker
/// that has not started it skips it).
pub struct Pending(PendingState);

enum PendingState {
    Ready(Arc<[f32]>),
    Queued(oneshot::Receiver<Reply>),
}

impl Pending {
    pub async fn wait(self) -> Result<Arc<[f32]>, EmbedError> {
        match self.0 {
            PendingState::Ready(v) => Ok(v),
            PendingState::Queued(answer) => answer.await.map_err(|_| EmbedError::ShutDown)?,
        }
    }
}

/// Counters since the pool started.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PoolStats {
    pub lru_hits: u64,
    pub lru_misses: u64,
    /// `embed_batch` calls made by the workers.
    pub batches: u64,
    /// Texts those calls embedded.
    pub texts_embedded: u64,
    pub mean_batch_size: f64,
    /// Requests refused with [`EmbedError::Overloaded`].
    pub rejected: u64,
    /// Jobs waiting right now.
    pub queued: usize,
}

/// Owns the model and its worker threads; dropping it stops them (queued jobs get
/// [`EmbedError::ShutDown`], a batch in progress finishes first).
pub struct EmbedPool {
    shared: Arc<Shared>,
    tx: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl EmbedPool {
    /// Starts `settings.threads` workers (at least one) over a queue of `queue_capacity` jobs.
    pub fn new(embedder: Arc<dyn Embedder>, settings: &EmbedSettings) -> Self {
        let lru =
            NonZeroUsize::new(settings.lru_capacity).map(|cap| Mutex::new(LruCache::new(cap)));
        let shared = Arc::new(Shared {
            embedder,
            lru,
            max_batch: settings.max_batch.max(1),
            shutdown: AtomicBool::new(false),
            lru_hits: AtomicU64::new(0),
            lru_misses: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batched_texts: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        });
        let (tx, rx) = crossbeam_channel::bounded(settings.queue_capacity.max(1));
        let mut workers = Vec::new();
        for i in 0..settings.threads.max(1) {
            let (shared, rx) = (Arc::clone(&shared), rx.clone());
            match std::thread::Builder::new()
                .name(format!("deja-embed-{i}"))
                .spawn(move || worker_loop(&shared, &rx))
            {
                Ok(handle) => workers.push(handle),
                Err(e) => tracing::error!(error = %e, "cannot start embedding worker {i}"),
            }
        }
        // Without a worker, a queued job would wait forever: refuse instead.
        let tx = (!workers.is_empty()).then_some(tx);
        Self {
            shared,
            tx,
            workers,
        }
    }

    pub fn model_id(&self) -> &str {
        self.shared.embedder.model_id()
    }

    pub fn dim(&self) -> usize {
        self.shared.embedder.dim()
    }

    /// The model and what runs it.
    pub fn describe(&self) -> String {
        self.shared.embedder.describe()
    }

    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.shared.embedder
    }

    /// The embedding of `text` (expected already normalized by the caller). Never blocks the
    /// runtime; the model runs on the pool's threads.
    pub async fn embed(&self, text: &str) -> Result<Arc<[f32]>, EmbedError> {
        self.submit(text)?.wait().await
    }

    /// Queues `text` without waiting: an LRU hit is answered at once, anything else goes to the
    /// workers. Synchronous and non-blocking (a full queue is [`EmbedError::Overloaded`]), so a
    /// blocking task can hand a prompt straight to the workers and leave the waiting to async
    /// code, saving a thread hand-off on the request path.
    pub fn submit(&self, text: &str) -> Result<Pending, EmbedError> {
        if let Some(hit) = self.shared.lru_get(&key(text)) {
            self.shared.lru_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Pending(PendingState::Ready(hit)));
        }
        self.shared.lru_misses.fetch_add(1, Ordering::Relaxed);
        let tx = self.tx.as_ref().ok_or(EmbedError::ShutDown)?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            text: text.to_string(),
            reply,
        };
        match tx.try_send(job) {
            Ok(()) => Ok(Pending(PendingState::Queued(answer))),
            Err(TrySendError::Full(_)) => {
                self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                Err(EmbedError::Overloaded)
            }
            Err(TrySendError::Disconnected(_)) => Err(EmbedError::ShutDown),
        }
    }

    /// Whether a job queued now would start at once: nothing waits and a worker is free.
    pub fn has_idle_worker(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.is_empty())
            && self.shared.busy.load(Ordering::Relaxed) < self.workers.len()
    }

    /// Embeds on the caller's thread in chunks of `max_batch`, bypassing queue and LRU: for
    /// benchmarks and bulk re-embedding. Blocking: never call it on an async worker thread.
    pub fn embed_many_blocking(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.shared.max_batch) {
            let vecs = self.shared.embedder.embed_batch(chunk)?;
            check_shape(&vecs, chunk.len(), self.dim())?;
            out.extend(vecs);
        }
        Ok(out)
    }

    pub fn stats(&self) -> PoolStats {
        let s = &self.shared;
        let batches = s.batches.load(Ordering::Relaxed);
        let texts = s.batched_texts.load(Ordering::Relaxed);
        PoolStats {
            lru_hits: s.lru_hits.load(Ordering::Relaxed),
            lru_misses: s.lru_misses.load(Ordering::Relaxed),
            batches,
            texts_embedded: texts,
            mean_batch_size: if batches == 0 {
                0.0
            } else {
                texts as f64 / batches as f64
            },
            rejected: s.rejected.load(Ordering::Relaxed),
            queued: self.tx.as_ref().map_or(0, Sender::len),
        }
    }
}

impl Drop for EmbedPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.tx.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl Shared {
    fn lru_get(&self, k: &Key) -> Option<Arc<[f32]>> {
        self.lru.as_ref()?.lock().get(k).cloned()
    }

    /// One `embed_batch`, shielded from panics and checked for shape.
    fn run(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batched_texts
            .fetch_add(texts.len() as u64, Ordering::Relaxed);
        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.embedder.embed_batch(texts)))
                .map_err(|_| EmbedError::Internal("the embedder panicked".into()))?;
        let vecs = result?;
        check_shape(&vecs, texts.len(), self.embedder.dim())?;
        Ok(vecs)
    }

    /// Embeds distinct texts; if the batch fails, retries one by one so a single bad input only
    /// fails its own request.
    fn embed_unique(&self, texts: &[&str]) -> Vec<Reply> {
        match self.run(texts) {
            Ok(vecs) => vecs.into_iter().map(|v| Ok(Arc::from(v))).collect(),
            Err(e) if texts.len() == 1 => vec![Err(e)],
            Err(e) => {
                tracing::warn!(error = %e, size = texts.len(), "embedding batch failed; retrying one by one");
                texts
                    .iter()
                    .map(|t| {
                        self.run(std::slice::from_ref(t))
                            .and_then(|mut v| v.pop().ok_or(EmbedError::Internal("empty".into())))
                            .map(Arc::from)
                    })
                    .collect()
            }
        }
    }
}

fn check_shape(vecs: &[Vec<f32>], expected: usize, dim: usize) -> Result<(), EmbedError> {
    if vecs.len() != expected {
        return Err(EmbedError::Internal(format!(
            "embedder returned {} vectors for {expected} texts",
            vecs.len()
        )));
    }
    if let Some(bad) = vecs.iter().find(|v| v.len() != dim) {
        return Err(EmbedError::Internal(format!(
            "embedder returned a vector of length {} (dim {dim})",
            bad.len()
        )));
    }
    Ok(())
}

fn worker_loop(shared: &Shared, rx: &Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < shared.max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if shared.shutdown.load(Ordering::SeqCst) {
            for job in jobs {
                let _ = job.reply.send(Err(EmbedError::ShutDown));
            }
            continue;
        }
        process(shared, jobs);
    }
}

fn process(shared: &Shared, jobs: Vec<Job>) {
    // Callers that gave up (timeout, disconnect) need no work.
    let mut pending = Vec::with_capacity(jobs.len());
    for job in jobs.into_iter().filter(|j| !j.reply.is_closed()) {
        let k = key(&job.text);
        // An identical text may have been answered while this one waited in the queue.
        match shared.lru_get(&k) {
            Some(hit) => {
                let _ = job.reply.send(Ok(hit));
            }
            None => pending.push((k, job)),
        }
    }
    if pending.is_empty() {
        return;
    }
    let mut index: HashMap<Key, usize> = HashMap::with_capacity(pending.len());
    let mut unique: Vec<&str> = Vec::with_capacity(pending.len());
    let slots: Vec<usize> = pending
        .iter()
        .map(|(k, job)| {
            *index.entry(*k).or_insert_with(|| {
                unique.push(job.text.as_str());
                unique.len() - 1
            })
        })
        .collect();
    shared.busy.fetch_add(1, Ordering::Relaxed);
    let mut results = shared.embed_unique(&unique);
    shared.busy.fetch_sub(1, Ordering::Relaxed);
    if let Some(lru) = &shared.lru {
        let mut lru = lru.lock();
        for (k, slot) in &index {
            if let Some(Ok(v)) = results.get(*slot) {
                lru.put(*k, Arc::clone(v));
            }
        }
    }
    for ((_, job), slot) in pending.into_iter().zip(slots) {
        let reply = match results.get_mut(slot) {
            Some(Ok(v)) => Ok(Arc::clone(v)),
            // The first job gets the original error; a duplicate of the same text gets its text.
            Some(entry) => {
                let text = entry
                    .as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                std::mem::replace(entry, Err(EmbedError::Internal(text)))
            }
            None => Err(EmbedError::Internal("missing result".into())),
        };
        let _ = job.reply.send(reply);
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
