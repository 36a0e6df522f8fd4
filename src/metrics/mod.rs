//! Prometheus metrics, every name prefixed `deja_`. Label values come only from small fixed sets
//! (api, outcome, reason, guard, error kind) or from the config (provider names, route and price
//! globs, see [`cost::model_label`]): never from what a client sent (model names, namespaces,
//! keys), so clients cannot grow the series count, and never a tenant. Rendering happens on
//! scrape; recording is a few atomic adds on the request path.

pub mod audit;
pub mod backend;
pub mod chains;
pub mod cost;
pub mod judge;
pub mod keys;
pub mod namespaces;
pub mod pii;
pub mod quality;
pub mod shadow_judge;
pub mod verifier;

use prometheus::core::Collector;
use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub embed_seconds: Histogram,
    pub search_seconds: Histogram,
    pub upstream_seconds: HistogramVec,
    pub similarity: HistogramVec,
    pub tokens_saved: IntCounterVec,
    pub tokens_upstream: IntCounterVec,
    pub cost_saved: CounterVec,
    pub cost_upstream: CounterVec,
    pub tokens_estimated: IntCounter,
    pub provider_attempts: IntCounterVec,
    pub provider_retries: IntCounterVec,
    pub provider_fallbacks: IntCounterVec,
    pub breaker_state: IntGaugeVec,
    pub breaker_opened: IntCounterVec,
    pub entries: IntGauge,
    pub store_entries_dropped: IntCounter,
    pub inserts: IntCounter,
    pub not_cached: IntCounterVec,
    pub guard_vetoes: IntCounterVec,
    /// Decisions of the verifier on semantic candidates between the bars and above.
    pub verifier_decisions: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub singleflight_waits: IntCounter,
    pub reloads: IntCounterVec,
    /// The LLM judge's `deja_judge_*` metrics.
    pub judge: judge::JudgeMetrics,
    /// `deja_response_chains_total` (`previous_response_id`).
    pub chains: chains::ChainMetrics,
    /// The verifier model's `deja_verifier_model_*` metrics.
    pub verifier_model: verifier::VerifierMetrics,
    /// Personal data: `deja_pii_*` (issue 16).
    pub pii: pii::PiiMetrics,
    /// Deja keys: `deja_key_*` (issue 16).
    pub keys: keys::KeyMetrics,
    /// The audit log: `deja_audit_*` (issue 16).
    pub audit: audit::AuditMetrics,
    /// Lookups by namespace and model, for `/admin/stats` only (not Prometheus labels).
    pub lookups: namespaces::NamespaceLookups,
    /// The shadow checks' judge: `deja_shadow_judge_*` (issue 17).
    pub shadow_judge: shadow_judge::ShadowJudgeMetrics,
    /// The storage backend's `deja_backend_*` metrics.
    pub backend: backend::BackendMetrics,
    /// Hit quality on live traffic: `deja_feedback_*`, `deja_shadow_*` (issue 17).
    pub quality: quality::QualityMetrics,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 4.0,
    8.0, 16.0, 32.0, 64.0,
];

const SIMILARITY_BUCKETS: &[f64] = &[
    0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0,
];

/// Creates metrics and registers each as it is made, so that a family is one call.
struct Families(Registry);

impl Families {
    fn add<M: Collector + Clone + 'static>(&self, metric: M) -> Result<M, prometheus::Error> {
        self.0.register(Box::new(metric.clone()))?;
        Ok(metric)
    }

    fn counter(&self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        self.add(IntCounter::new(name, help)?)
    }

    fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    /// A float counter (money).
    fn amounts(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<CounterVec, prometheus::Error> {
        self.add(CounterVec::new(Opts::new(name, help), labels)?)
    }

    fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        self.add(IntGauge::new(name, help)?)
    }

    fn gauges(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, prometheus::Error> {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    /// A histogram of seconds, on [`LATENCY_BUCKETS`].
    fn latency(&self, name: &str, help: &str) -> Result<Histogram, prometheus::Error> {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.add(Histogram::with_opts(opts)?)
    }

    fn histograms(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> Result<HistogramVec, prometheus::Error> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(HistogramVec::new(opts, labels)?)
    }
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let f = Families(Registry::new());
        Ok(Metrics {
            // Requests and where their time goes.
            requests: f.counters(
                "deja_requests_total",
                "Requests by API and cache outcome (exact_hit, semantic_hit, miss, bypass, error).",
                &["api", "outcome"],
            )?,
            request_seconds: f.histograms(
                "deja_request_duration_seconds",
                "Time to response headers (hits: whole response), by outcome.",
                LATENCY_BUCKETS,
                &["outcome"],
            )?,
            embed_seconds: f.latency(
                "deja_embed_duration_seconds",
                "Embedding time per lookup (queueing included).",
            )?,
            search_seconds: f.latency(
                "deja_search_duration_seconds",
                "Index search + candidate fetch + guards per lookup.",
            )?,
            upstream_seconds: f.histograms(
                "deja_upstream_duration_seconds",
                "Upstream time to response headers, by provider.",
                LATENCY_BUCKETS,
                &["provider"],
            )?,
            similarity: f.histograms(
                "deja_similarity",
                "Best similarity per semantic lookup: hits and near-misses.",
                SIMILARITY_BUCKETS,
                &["result"],
            )?,
            // Tokens and money.
            tokens_saved: f.counters(
                "deja_tokens_saved_total",
                "Tokens of answers served from cache instead of upstream, by model glob and kind (prompt/completion).",
                &["model", "kind"],
            )?,
            tokens_upstream: f.counters(
                "deja_tokens_upstream_total",
                "Tokens of upstream answers, by model glob and kind (prompt/completion).",
                &["model", "kind"],
            )?,
            cost_saved: f.amounts(
                "deja_cost_saved_usd_total",
                "Money not spent upstream thanks to hits, by [[prices]] glob.",
                &["model"],
            )?,
            cost_upstream: f.amounts(
                "deja_cost_upstream_usd_total",
                "Money spent upstream, by [[prices]] glob.",
                &["model"],
            )?,
            tokens_estimated: f.counter(
                "deja_tokens_estimated_total",
                "Upstream answers whose usage was estimated with a tokenizer (the stream carried none).",
            )?,
            // Providers.
            provider_attempts: f.counters(
                "deja_provider_attempts_total",
                "Upstream attempts by provider.",
                &["provider"],
            )?,
            provider_retries: f.counters(
                "deja_provider_retries_total",
                "Retries by provider.",
                &["provider"],
            )?,
            provider_fallbacks: f.counters(
                "deja_provider_fallbacks_total",
                "Fallbacks away from a provider.",
                &["provider"],
            )?,
            breaker_state: f.gauges(
                "deja_breaker_state",
                "Circuit breaker per provider: 0 closed, 1 open, 2 half-open.",
                &["provider"],
            )?,
            breaker_opened: f.counters(
                "deja_breaker_opened_total",
                "Times a provider's breaker opened.",
                &["provider"],
            )?,
            // The cache and its store.
            entries: f.gauge("deja_cache_entries", "Entries in the store.")?,
            store_entries_dropped: f.counter(
                "deja_store_entries_dropped_total",
                "Entries the store lost to truncated or damaged files, found when it was opened.",
            )?,
            inserts: f.counter("deja_cache_inserts_total", "Answers written to the cache.")?,
            not_cached: f.counters(
                "deja_not_cached_total",
                "Upstream answers not written, by reason.",
                &["reason"],
            )?,
            guard_vetoes: f.counters(
                "deja_guard_vetoes_total",
                "Semantic candidates above threshold vetoed by a precision guard.",
                &["guard"],
            )?,
            verifier_decisions: f.counters(
                "deja_verifier_decisions_total",
                "Decisions on the most similar semantic candidate once it passed the guards: \
                 skipped (served on cosine alone), lexical (served, verified), model (served, \
                 the verifier model said same), judge (served, judged), unverified (not served).",
                &["decision"],
            )?,
            upstream_errors: f.counters(
                "deja_upstream_errors_total",
                "Failed upstream calls by provider and kind.",
                &["provider", "kind"],
            )?,
            singleflight_waits: f.counter(
                "deja_singleflight_waits_total",
                "Misses that waited for an identical in-flight request.",
            )?,
            // Operations.
            reloads: f.counters(
                "deja_config_reloads_total",
                "Config reloads by result.",
                &["result"],
            )?,
            judge: {
                let judge = judge::JudgeMetrics::new(LATENCY_BUCKETS)?;
                judge.register(&f.0)?;
                judge
            },
            verifier_model: {
                let model = verifier::VerifierMetrics::new()?;
                model.register(&f.0)?;
                model
            },
            pii: pii::PiiMetrics::new(&f.0)?,
            chains: chains::ChainMetrics::new(&f.0)?,
            keys: keys::KeyMetrics::new(&f.0)?,
            audit: audit::AuditMetrics::new(&f.0)?,
            lookups: namespaces::NamespaceLookups::default(),
            shadow_judge: shadow_judge::ShadowJudgeMetrics::new(&f.0)?,
            backend: {
                let backend = backend::BackendMetrics::new()?;
                backend.register(&f.0)?;
                backend
            },
            quality: quality::QualityMetrics::new(&f.0)?,
            registry: f.0,
        })
    }

    /// Brings `deja_store_entries_dropped_total` up to what opening the store found.
    pub fn store_lost(&self, recovery: &crate::store::Recovery) {
        let (found, shown) = (
            recovery.lost_entries as u64,
            self.store_entries_dropped.get(),
        );
        if found > shown {
            self.store_entries_dropped.inc_by(found - shown);
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_prefixed_and_rendered() {
        let m = Metrics::new().unwrap();
        m.requests.with_label_values(&["chat", "miss"]).inc();
        m.similarity.with_label_values(&["hit"]).observe(0.97);
        m.upstream_errors
            .with_label_values(&["openai", "timeout"])
            .inc();
        let text = m.render();
        assert!(
            text.contains("deja_requests_total{api=\"chat\",outcome=\"miss\"} 1"),
            "{text}"
        );
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.starts_with("deja_"), "{line}");
        }
    }

    #[test]
    fn issue12_store_losses_are_exported_once() {
        let m = Metrics::new().unwrap();
        let lost = crate::store::Recovery {
            lost_flushed_writes: true,
            lost_entries: 177,
        };
        m.store_lost(&lost);
        m.store_lost(&lost);
        assert!(
            m.render().contains("deja_store_entries_dropped_total 177"),
            "{}",
            m.render()
        );
    }
}
