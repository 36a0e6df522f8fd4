//! Shadow checks (`cache.audit_rate`): a share of semantic hits is also asked upstream, after
//! the client has its answer, and the fresh answer is compared with the served one by the
//! cosine of the two answers' embeddings (`quality.answer_agreement`), or, with
//! `quality.judge_model`, by an LLM judge's yes or no ([`super::shadow_judge`]; the cosine
//! decides when it gives none). The result is a labeled
//! pair (agree → `same: true`) and one more observation of the live precision of semantic hits.
//!
//! Never on the client's path: a hit only offers a job to a bounded queue
//! (`quality.audit_queue`; a full queue drops the check, counted) and returns. One dispatcher
//! takes a concurrency slot (`quality.audit_concurrency`) before it takes a job, so at most that
//! many checks are upstream and at most the queue's capacity wait. Each check is bounded by
//! [`SHADOW_TIMEOUT`] on top of the provider's own timeouts. Its tokens and cost are counted in
//! `deja_shadow_*`, apart from the upstream totals (which count answers sent to clients).
//!
//! The estimate is agreeing / compared checks, with the **Wilson score interval** at 95%
//! ([`wilson`]): unlike the normal approximation it stays inside [0, 1] and is honest for few
//! checks or a precision near 1, which is where a cache lives. Counts are since the process
//! started. A shadow disagreement is recorded but does not tighten the entry: two answers of a
//! sampled model differ in wording for the same question, so a disagreement is a weaker label
//! than a user's thumbs-down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, Semaphore};

use crate::api::{inbound, ApiKind};
use crate::cache::CacheEngine;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::providers::{Router, UpstreamRequest};
use crate::quality::pairs::{Ledger, RecordedPair, Source};
use crate::store::{EntryId, Usage};

/// Longest a shadow check may take upstream, retries included.
pub const SHADOW_TIMEOUT: Duration = Duration::from_secs(60);

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// The Wilson score interval of `successes` out of `n` at 95%: `(lower, upper)`; `None` when
/// `n` is zero.
pub fn wilson(successes: u64, n: u64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (k, n) = (successes.min(n) as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// One semantic hit to check.
pub struct ShadowJob {
    pub api: ApiKind,
    /// The request body as validated (and redacted, when `[pii]` redacts).
    pub body: Arc<Map<String, Value>>,
    pub model: String,
    pub client_key: Option<String>,
    /// The answer the client got.
    pub served: String,
    pub query: String,
    pub matched: String,
    pub similarity: f32,
    pub entry: EntryId,
    pub router: Arc<Router>,
    pub config: Arc<Config>,
}

/// Counts since start, for the gauges and the dashboard's summary.
#[derive(Default)]
pub struct Tally {
    pub agree: AtomicU64,
    pub disagree: AtomicU64,
    pub errors: AtomicU64,
    pub dropped: AtomicU64,
}

impl Tally {
    fn get(&self) -> (u64, u64, u64, u64) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            g(&self.agree),
            g(&self.disagree),
            g(&self.errors),
            g(&self.dropped),
        )
    }

    /// `{"agree","disagree","errors","dropped","compared","precision","interval"}`.
    pub fn summary(&self) -> Value {
        let (agree, disagree, errors, dropped) = self.get();
        let n = agree + disagree;
        let interval = wilson(agree, n).map(|(lower, upper)| {
            serde_json::json!({
                "method": "wilson", "confidence": 0.95, "lower": lower, "upper": upper,
            })
        });
        serde_json::json!({
            "agree": agree,
            "disagree": disagree,
            "errors": errors,
            "dropped": dropped,
            "compared": n,
            "precision": (n > 0).then(|| agree as f64 / n as f64),
            "interval": interval,
        })
    }
}

/// What a check needs besides its job.
struct Checker {
    engine: CacheEngine,
    metrics: Arc<Metrics>,
    ledger: Arc<Ledger>,
    tally: Arc<Tally>,
}

/// The queue and its dispatcher; the dispatcher stops when this is dropped, or by
/// [`Auditor::stop`], which also waits for it.
pub struct Auditor {
    tx: mpsc::Sender<ShadowJob>,
    tally: Arc<Tally>,
    metrics: Arc<Metrics>,
    dispatcher: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// One permit per check that may run at once (`quality.audit_concurrency`).
    slots: Arc<Semaphore>,
    concurrency: u32,
}

impl Drop for Auditor {
    fn drop(&mut self) {
        if let Some(d) = self.dispatcher.get_mut().take() {
            d.abort();
        }
    }
}

impl Auditor {
    /// Starts the dispatcher (call inside the runtime).
    pub fn start(
        queue: usize,
        concurrency: usize,
        engine: CacheEngine,
        metrics: Arc<Metrics>,
        ledger: Arc<Ledger>,
    ) -> Auditor {
        let (tx, mut rx) = mpsc::channel::<ShadowJob>(queue.max(1));
        let tally = Arc::new(Tally::default());
        let checker = Arc::new(Checker {
            engine,
            metrics: Arc::clone(&metrics),
            ledger,
            tally: Arc::clone(&tally),
        });
        let concurrency = concurrency.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let slots = Arc::new(Semaphore::new(concurrency));
        let dispatcher_slots = Arc::clone(&slots);
        let dispatcher = tokio::spawn(async move {
            let slots = dispatcher_slots;
            loop {
                // A slot first, then a job: a job waits in the bounded queue, never here.
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    break;
                };
                let Some(job) = rx.recv().await else { break };
                let checker = Arc::clone(&checker);
                tokio::spawn(async move {
                    checker.check(job).await;
                    drop(slot);
                });
            }
        });
        Auditor {
            tx,
            tally,
            metrics,
            dispatcher: parking_lot::Mutex::new(Some(dispatcher)),
            slots,
            concurrency: concurrency as u32,
        }
    }

    /// Stops the dispatcher and waits until it and every check under way are done, so that
    /// nothing they hold (the engine among it) outlives the server's shutdown. Checks still
    /// queued are not made.
    pub async fn stop(&self) {
        let dispatcher = self.dispatcher.lock().take();
        if let Some(d) = dispatcher {
            d.abort();
            let _ = d.await;
        }
        // Every permit back: no check runs.
        let _ = self.slots.acquire_many(self.concurrency).await;
    }

    /// Queues a check; a full queue drops it (counted). Never waits.
    pub fn offer(&self, job: ShadowJob) -> bool {
        match self.tx.try_send(job) {
            Ok(()) => true,
            Err(_) => {
                self.tally.dropped.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .quality
                    .shadow
                    .with_label_values(&["dropped"])
                    .inc();
                false
            }
        }
    }

    pub fn tally(&self) -> &Arc<Tally> {
        &self.tally
    }
}

/// The body sent for a shadow check: the client's, answered as one JSON document.
fn shadow_body(body: &Map<String, Value>) -> Result<Bytes, serde_json::Error> {
    let mut body = body.clone();
    body.insert("stream".into(), Value::Bool(false));
    body.remove("stream_options");
    Ok(Bytes::from(serde_json::to_vec(&body)?))
}

impl Checker {
    async fn check(&self, job: ShadowJob) {
        let compared = async {
            let (cosine, fresh) = self.compare(&job).await?;
            let same = self.verdict(&job, cosine, &fresh).await;
            Ok::<_, &'static str>((cosine, same))
        };
        let outcome = match tokio::time::timeout(SHADOW_TIMEOUT, compared).await {
            Ok(Ok(checked)) => Some(checked),
            Ok(Err(why)) => {
                tracing::debug!(why, entry = job.entry, "shadow check without a verdict");
                None
            }
            Err(_) => {
                tracing::debug!(entry = job.entry, "shadow check timed out");
                None
            }
        };
        let q = &self.metrics.quality;
        let Some((cosine, same)) = outcome else {
            self.tally.errors.fetch_add(1, Ordering::Relaxed);
            q.shadow.with_label_values(&["error"]).inc();
            return;
        };
        let (counter, label) = if same {
            (&self.tally.agree, "agree")
        } else {
            (&self.tally.disagree, "disagree")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        q.shadow.with_label_values(&[label]).inc();
        let (agree, disagree, _, _) = self.tally.get();
        let n = agree + disagree;
        q.agreement.set(agree as f64 / n as f64);
        if let Some((lower, upper)) = wilson(agree, n) {
            q.agreement_lower.set(lower);
            q.agreement_upper.set(upper);
        }
        tracing::info!(
            entry = job.entry,
            similarity = job.similarity,
            answer_cosine = cosine,
            agree = same,
            "shadow check"
        );
        let pair = RecordedPair::new(
            &job.query,
            &job.matched,
            same,
            job.similarity,
            Source::Shadow,
            job.entry,
        );
        let ledger = Arc::clone(&self.ledger);
        match tokio::task::spawn_blocking(move || ledger.record(&pair)).await {
            Ok(Ok(())) => q
                .pairs
                .with_label_values(&["shadow", if same { "true" } else { "false" }])
                .inc(),
            Ok(Err(e)) => tracing::warn!(error = %e, "recording a shadow pair failed"),
            Err(e) => tracing::warn!(error = %e, "recording a shadow pair failed"),
        }
    }

    /// Whether the two answers agree: the judge's verdict when `quality.judge_model` names one
    /// and it gives a verdict, else their cosine against `quality.answer_agreement`.
    async fn verdict(&self, job: &ShadowJob, cosine: f32, fresh: &str) -> bool {
        let by_cosine = cosine >= job.config.cache.quality.answer_agreement;
        let Some(model) = &job.config.cache.quality.judge_model else {
            return by_cosine;
        };
        let (query, served) = (&job.query, &job.served);
        let m = &self.metrics;
        match super::shadow_judge::judge(&job.router, &job.config, m, model, query, served, fresh)
            .await
        {
            crate::cache::judge::JudgeVerdict::Same => true,
            crate::cache::judge::JudgeVerdict::Different => false,
            crate::cache::judge::JudgeVerdict::Unavailable(_) => by_cosine,
        }
    }

    /// Asks upstream and returns the cosine of the fresh and the served answers, and the
    /// fresh answer.
    async fn compare(&self, job: &ShadowJob) -> Result<(f32, String), &'static str> {
        let body = shadow_body(&job.body).map_err(|_| "body")?;
        let req = UpstreamRequest::post_bytes(job.api.upstream_path(), body, false)
            .with_client_key(job.client_key.clone())
            .with_api(job.api);
        let resp = job
            .router
            .send(req, &job.model)
            .await
            .map_err(|_| "upstream failed")?;
        if !resp.is_success() {
            return Err("upstream refused");
        }
        let bytes = resp.json_bytes().ok_or("not json")?;
        let max = job.config.cache.max_entry_bytes;
        let fresh = inbound::collect_json(job.api, bytes, &resp.provider, max)
            .map_err(|_| "no comparable answer")?;
        let usage = fresh.usage.unwrap_or_else(|| {
            let text = crate::metrics::cost::completion_text(&fresh.content, &fresh.tool_calls);
            crate::metrics::cost::estimate_usage(job.api, &job.body, &text)
        });
        self.count(&job.config, &job.model, &usage);
        if fresh.content.trim().is_empty() || job.served.trim().is_empty() {
            return Err("empty answer");
        }
        let embed = self.engine.embedder();
        let (a, b) = (
            embed.embed(&job.served).await.map_err(|_| "embedding")?,
            embed.embed(&fresh.content).await.map_err(|_| "embedding")?,
        );
        Ok((
            a.iter().zip(b.iter()).map(|(x, y)| x * y).sum(),
            fresh.content,
        ))
    }

    fn count(&self, config: &Config, model: &str, usage: &Usage) {
        let q = &self.metrics.quality;
        q.shadow_tokens
            .with_label_values(&["prompt"])
            .inc_by(u64::from(usage.prompt_tokens));
        q.shadow_tokens
            .with_label_values(&["completion"])
            .inc_by(u64::from(usage.completion_tokens));
        if let Some(price) = config.price_for(model) {
            q.shadow_cost_usd.inc_by(price.cost(usage));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_reference_values() {
        assert_eq!(wilson(0, 0), None);
        // 95 of 100: (0.8883, 0.9785) in the usual tables.
        let (lo, hi) = wilson(95, 100).unwrap();
        assert!(
            (lo - 0.8883).abs() < 5e-4 && (hi - 0.9785).abs() < 5e-4,
            "{lo} {hi}"
        );
        // All agree: the upper bound is 1, the lower bound honest about few checks.
        let (lo, hi) = wilson(10, 10).unwrap();
        assert!(
            (lo - 0.7225).abs() < 5e-4 && (hi - 1.0).abs() < 1e-12,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(0, 5).unwrap();
        assert!(lo == 0.0 && (hi - 0.4345).abs() < 5e-4, "{lo} {hi}");
    }

    #[test]
    fn the_shadow_body_asks_for_one_json_answer() {
        let body: Map<String, Value> = serde_json::from_str(
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        )
        .unwrap();
        let sent: Value = serde_json::from_slice(&shadow_body(&body).unwrap()).unwrap();
        assert_eq!(sent["stream"], false);
        assert!(sent.get("stream_options").is_none());
        assert_eq!(sent["model"], "m");
    }
}
