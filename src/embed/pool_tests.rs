//! Tests of the embedding pool with instrumented in-memory embedders (no model needed).

use super::*;
use crate::embed::HashEmbedder;
use parking_lot::Condvar;
use std::sync::atomic::AtomicUsize;

/// A HashEmbedder that counts calls and texts, can be held at a gate, and fails on "poison".
struct Probe {
    inner: HashEmbedder,
    calls: AtomicUsize,
    texts: AtomicUsize,
    /// Texts of the call currently waiting at the gate.
    waiting: AtomicUsize,
    gate: Mutex<bool>,
    opened: Condvar,
}

impl Probe {
    fn new(gated: bool) -> Arc<Self> {
        Arc::new(Self {
            inner: HashEmbedder::new(64),
            calls: AtomicUsize::new(0),
            texts: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            gate: Mutex::new(!gated),
            opened: Condvar::new(),
        })
    }

    fn open(&self) {
        *self.gate.lock() = true;
        self.opened.notify_all();
    }
}

impl Embedder for Probe {
    fn model_id(&self) -> &str {
        "probe"
    }

    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        {
            let mut open = self.gate.lock();
            if !*open {
                self.waiting.store(texts.len(), Ordering::SeqCst);
                while !*open {
                    self.opened.wait(&mut open);
                }
            }
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.texts.fetch_add(texts.len(), Ordering::SeqCst);
        if texts.contains(&"panic") {
            panic!("probe asked to panic");
        }
        if texts.contains(&"poison") {
            return Err(EmbedError::Tokenizer("poisoned input".into()));
        }
        self.inner.embed_batch(texts)
    }
}

fn settings(threads: usize, max_batch: usize, lru: usize, queue: usize) -> EmbedSettings {
    EmbedSettings {
        threads,
        max_batch,
        lru_capacity: lru,
        queue_capacity: queue,
        ..EmbedSettings::default()
    }
}

/// Polls (without sleeping) until `cond` holds; the worker runs on its own thread.
async fn until(cond: impl Fn() -> bool) {
    while !cond() {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_deduplicated() {
    let probe = Probe::new(true);
    let pool = Arc::new(EmbedPool::new(probe.clone(), &settings(1, 16, 1000, 128)));
    let texts: Vec<String> = (0..64)
        .map(|i| format!("question number {}", i % 48))
        .collect();
    let tasks: Vec<_> = texts
        .iter()
        .cloned()
        .map(|t| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.embed(&t).await })
        })
        .collect();
    // All 64 jobs are either queued or in the call held at the gate.
    until(|| pool.stats().queued + probe.waiting.load(Ordering::SeqCst) == 64).await;
    probe.open();
    let direct = HashEmbedder::new(64);
    for (task, text) in tasks.into_iter().zip(&texts) {
        let got = task.await.unwrap().unwrap();
        assert_eq!(&got[..], &direct.embed_one(text)[..], "{text}");
    }
    let stats = pool.stats();
    let calls = probe.calls.load(Ordering::SeqCst);
    assert_eq!(stats.batches as usize, calls);
    // One held call, then the other 63 jobs in batches of at most 16.
    assert!(
        calls <= 1 + 63usize.div_ceil(16),
        "{calls} batches for 64 requests"
    );
    assert!(calls < 64);
    // 16 repeats: deduplicated in a batch or answered from the LRU, never embedded twice.
    assert_eq!(probe.texts.load(Ordering::SeqCst), 48);
    assert!(stats.mean_batch_size > 1.0);
}

#[tokio::test]
async fn lru_hit_skips_the_model() {
    let probe = Probe::new(false);
    let pool = EmbedPool::new(probe.clone(), &settings(1, 8, 16, 8));
    let a = pool.embed("reset my password").await.unwrap();
    let b = pool.embed("reset my password").await.unwrap();
    assert_eq!(a, b);
    assert_eq!(probe.calls.load(Ordering::SeqCst), 1);
    let stats = pool.stats();
    assert_eq!((stats.lru_hits, stats.lru_misses), (1, 1));

    let probe = Probe::new(false);
    let no_cache = EmbedPool::new(probe.clone(), &settings(1, 8, 0, 8));
    no_cache.embed("reset my password").await.unwrap();
    no_cache.embed("reset my password").await.unwrap();
    assert_eq!(probe.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_overloaded_not_a_wait() {
    let probe = Probe::new(true);
    let pool = Arc::new(EmbedPool::new(probe.clone(), &settings(1, 1, 0, 1)));
    let first = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { pool.embed("one").await }
    });
    until(|| probe.waiting.load(Ordering::SeqCst) == 1).await;
    let second = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { pool.embed("two").await }
    });
    until(|| pool.stats().queued == 1).await;
    assert!(matches!(
        pool.embed("three").await,
        Err(EmbedError::Overloaded)
    ));
    assert_eq!(pool.stats().rejected, 1);
    probe.open();
    assert!(first.await.unwrap().is_ok());
    assert!(second.await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_queues_without_waiting_and_abandoned_jobs_are_skipped() {
    let probe = Probe::new(true);
    let pool = Arc::new(EmbedPool::new(probe.clone(), &settings(1, 1, 16, 8)));
    // From a plain thread, as the engine's blocking lookup does: it returns at once although
    // the model is held at the gate.
    let held = {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || pool.submit("one"))
            .join()
            .unwrap()
            .unwrap()
    };
    until(|| probe.waiting.load(Ordering::SeqCst) == 1).await;
    let abandoned = pool.submit("two").unwrap();
    until(|| pool.stats().queued == 1).await;
    drop(abandoned);
    probe.open();
    let direct = HashEmbedder::new(64);
    let one = held.wait().await.unwrap();
    assert_eq!(&one[..], &direct.embed_one("one")[..]);
    // One worker takes jobs in order: once "three" is answered, "two" has been seen.
    let three = pool.submit("three").unwrap().wait().await.unwrap();
    assert_eq!(&three[..], &direct.embed_one("three")[..]);
    assert_eq!(
        probe.texts.load(Ordering::SeqCst),
        2,
        "the abandoned job was embedded"
    );
    // A repeat is answered from the LRU without the workers.
    let before = pool.stats().lru_hits;
    assert_eq!(pool.submit("one").unwrap().wait().await.unwrap(), one);
    assert_eq!(pool.stats().lru_hits, before + 1);
    assert_eq!(probe.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_bad_input_fails_alone_and_panics_are_contained() {
    let probe = Probe::new(false);
    let pool = EmbedPool::new(probe.clone(), &settings(1, 8, 0, 8));
    let (good, bad) = tokio::join!(pool.embed("fine text"), pool.embed("poison"));
    assert!(good.is_ok());
    assert!(matches!(bad, Err(EmbedError::Tokenizer(_))), "{bad:?}");
    assert!(matches!(
        pool.embed("panic").await,
        Err(EmbedError::Internal(_))
    ));
    assert!(pool.embed("still works").await.is_ok());
}

#[test]
fn embed_many_blocking_chunks_by_max_batch() {
    let probe = Probe::new(false);
    let pool = EmbedPool::new(probe.clone(), &settings(1, 16, 100, 8));
    let texts: Vec<String> = (0..40).map(|i| format!("text {i}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let out = pool.embed_many_blocking(&refs).unwrap();
    assert_eq!(out.len(), 40);
    assert_eq!(probe.calls.load(Ordering::SeqCst), 3);
    assert_eq!(out[39], HashEmbedder::new(64).embed_one("text 39"));
    assert_eq!(pool.model_id(), "probe");
    assert_eq!(pool.dim(), 64);
}

#[test]
fn dropping_the_pool_stops_its_threads() {
    let probe = Probe::new(false);
    let pool = EmbedPool::new(probe.clone(), &settings(3, 8, 8, 8));
    assert_eq!(Arc::strong_count(&probe), 2);
    drop(pool);
    // Each worker held the embedder through the shared state; all are joined and gone.
    assert_eq!(Arc::strong_count(&probe), 1);
}

/// `has_idle_worker` (the engine's test before it embeds during an exact lookup) is false
/// while every worker embeds or a job waits, and true again once they are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn has_idle_worker_follows_the_workers() {
    let probe = Probe::new(true);
    let pool = Arc::new(EmbedPool::new(probe.clone(), &settings(1, 1, 16, 8)));
    assert!(pool.has_idle_worker());
    let held = pool.submit("one").unwrap();
    until(|| probe.waiting.load(Ordering::SeqCst) == 1).await;
    assert!(!pool.has_idle_worker(), "the only worker is embedding");
    let queued = pool.submit("two").unwrap();
    assert!(!pool.has_idle_worker());
    probe.open();
    held.wait().await.unwrap();
    queued.wait().await.unwrap();
    until(|| pool.has_idle_worker()).await;
}
