//! Hit quality on live traffic (issue 17, section 3): are the answers deja serves right on
//! *this* deployment's traffic? Three sources of labels, one ledger:
//!
//! - [`feedback`]: a client (`POST /v1/deja/feedback`) or an operator (the admin API's
//!   `POST /admin/feedback`, [`feedback::admin_feedback`]) says whether a served hit was right.
//!   A wrong semantic hit raises its entry's own threshold above the hit's similarity (in the
//!   spirit of vCache's per-entry thresholds): the decision rule ([`crate::cache::engine`])
//!   then turns that query and every neighbour at or below that similarity away from the entry.
//!   Thresholds only ever tighten.
//! - [`shadow`]: `cache.audit_rate` of semantic hits is asked upstream in the background and
//!   the fresh answer compared with the served one, which estimates the live precision
//!   (`deja_semantic_hit_agreement`, Wilson score interval).
//! - [`pairs`]: every label is a `{"a","b","same"}` row kept in the [`pairs::Ledger`] (bounded,
//!   persisted beside the entries), exported as the `pairs` dataset `deja bench --dataset`
//!   reads (`deja quality export-pairs`, [`Quality::export`]): calibrate on your own traffic.
//!
//! [`shadow_judge`] is the shadow checks' optional LLM judge (`quality.judge_model`).
//!
//! [`recent`] remembers served hits so feedback can name them by response id. Nothing here is
//! on the client's path except [`Quality::served`] (an LRU insert and a queue offer).

pub mod feedback;
pub mod pairs;
pub mod recent;
pub mod shadow;
pub mod shadow_judge;

use std::sync::Arc;

use serde_json::{json, Value};

use crate::cache::{CacheEngine, CacheRequest, HitKind};
use crate::metrics::Metrics;
use crate::providers::Router;
use crate::store::Entry;
use pairs::Ledger;
use recent::{RecentHits, ServedHit};
use shadow::{Auditor, ShadowJob};

/// The server's quality machinery (one per process, built once the engine is ready).
pub struct Quality {
    ledger: Arc<Ledger>,
    recent: RecentHits,
    auditor: Auditor,
    metrics: Arc<Metrics>,
}

/// What [`Quality::served`] needs to know about a hit besides the request.
pub struct ServedAnswer<'a> {
    pub entry: &'a Entry,
    pub kind: HitKind,
    pub similarity: f32,
}

impl Quality {
    /// Built on the engine's ledger; starts the shadow dispatcher (call inside the runtime).
    /// `None` when the engine has no ledger (engines opened without `server::open_engine`).
    pub fn new(
        engine: &CacheEngine,
        config: &crate::config::QualityConfig,
        metrics: Arc<Metrics>,
    ) -> Option<Quality> {
        let ledger = Arc::clone(engine.ledger()?);
        let auditor = Auditor::start(
            config.audit_queue,
            config.audit_concurrency,
            engine.clone(),
            Arc::clone(&metrics),
            Arc::clone(&ledger),
        );
        Some(Quality {
            ledger,
            recent: RecentHits::new(config.recent_hits),
            auditor,
            metrics,
        })
    }

    /// Stops the shadow checks and waits for those under way (a shutdown, bounded by its
    /// grace period).
    pub async fn stop(&self) {
        self.auditor.stop().await;
    }

    /// A hit is being served: remembers it for feedback (its response id is returned, for
    /// `x-deja-response-id`) and, for `cache.audit_rate` of semantic hits, offers a shadow
    /// check. Never waits.
    pub fn served(
        &self,
        req: &CacheRequest,
        hit: ServedAnswer<'_>,
        router: Arc<Router>,
    ) -> Option<u128> {
        let query = req.canonical.prompt.as_deref().unwrap_or_default();
        let id = self.recent.remember(ServedHit {
            entry: hit.entry.id,
            kind: hit.kind,
            query: query.to_string(),
            matched: hit.entry.prompt.clone(),
            similarity: hit.similarity,
            tenant: req.tenant.clone(),
        });
        let rate = req.config.cache.quality.audit_rate;
        if hit.kind == HitKind::Semantic && rate > 0.0 && rand::random::<f64>() < rate {
            self.auditor.offer(ShadowJob {
                api: req.api,
                body: Arc::clone(&req.body),
                model: req.model().to_string(),
                client_key: req.client_key().map(str::to_string),
                served: hit.entry.response.content.clone(),
                query: query.to_string(),
                matched: hit.entry.prompt.clone(),
                similarity: hit.similarity,
                entry: hit.entry.id,
                router,
                config: Arc::clone(&req.config),
            });
        }
        id
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    pub fn recent(&self) -> &RecentHits {
        &self.recent
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The live-precision summary for the dashboard: shadow checks with the estimate and its
    /// 95% Wilson score interval, feedback by verdict, pairs held, entries tightened.
    pub fn summary(&self, config: &crate::config::Config) -> Value {
        let fb = &self.metrics.quality.feedback;
        let count = |verdict: &str| {
            ["semantic", "exact"]
                .iter()
                .map(|k| fb.with_label_values(&[verdict, k]).get())
                .sum::<u64>()
        };
        json!({
            "audit_rate": config.cache.quality.audit_rate,
            "shadow": self.auditor.tally().summary(),
            "feedback": { "correct": count("correct"), "wrong": count("wrong") },
            "pairs": self.ledger.len(),
            "tightened_entries": self.ledger.floors().len(),
            "tightened_misses": self.metrics.quality.tightened.get(),
        })
    }

    /// Writes the recorded pairs as a `pairs` dataset (JSON lines), for the admin export.
    /// Blocking (reads the ledger): call it off the runtime.
    pub fn export(&self, out: &mut dyn std::io::Write) -> Result<usize, pairs::ExportError> {
        self.ledger.export(out)
    }
}

/// Opens the engine's ledger (in the embedded store's database, or a temporary one beside the
/// shared backend) and hands it to the engine, whose lookups then honour the per-entry
/// thresholds it holds. Blocking: call it where the engine is opened.
pub fn attach_ledger(
    engine: &CacheEngine,
    config: &crate::config::QualityConfig,
) -> Result<(), crate::store::StoreError> {
    let ledger = match engine.backend().as_embedded() {
        Some(b) => Ledger::in_store(b.store(), config.max_pairs)?,
        None => Ledger::temporary(config.max_pairs)?,
    };
    if !ledger.floors().is_empty() || !ledger.is_empty() {
        tracing::info!(
            pairs = ledger.len(),
            tightened_entries = ledger.floors().len(),
            "quality ledger loaded"
        );
    }
    engine.set_ledger(Arc::new(ledger));
    Ok(())
}
