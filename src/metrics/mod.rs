//! Prometheus metrics, every name prefixed `deja_`. Label values come only from small fixed sets
//! (api, outcome, reason, guard, error kind) or from the config (provider names, route and price
//! globs, see [`cost::model_label`]): never from what a client sent (model names, namespaces,
//! keys), so clients cannot grow the series count, and never a tenant. Rendering happens on
//! scrape; recording is a few atomic adds on the request path.

pub mod cost;
pub mod judge;

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
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
    pub breaker_state: prometheus::IntGaugeVec,
    pub breaker_opened: IntCounterVec,
    pub entries: IntGauge,
    pub store_entries_dropped: IntCounter,
    pub inserts: IntCounter,
    pub not_cached: IntCounterVec,
    pub guard_vetoes: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub singleflight_waits: IntCounter,
    pub reloads: IntCounterVec,
    /// The LLM judge's `deja_judge_*` metrics.
    pub judge: judge::JudgeMetrics,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 4.0,
    8.0, 16.0, 32.0, 64.0,
];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let m = Metrics {
            requests: counter_vec(
                "deja_requests_total",
                "Requests by API and cache outcome (exact_hit, semantic_hit, miss, bypass, error).",
                &["api", "outcome"],
            )?,
            request_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "deja_request_duration_seconds",
                    "Time to response headers (hits: whole response), by outcome.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["outcome"],
            )?,
            embed_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "deja_embed_duration_seconds",
                    "Embedding time per lookup (queueing included).",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            search_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "deja_search_duration_seconds",
                    "Index search + candidate fetch + guards per lookup.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            upstream_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "deja_upstream_duration_seconds",
                    "Upstream time to response headers, by provider.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["provider"],
            )?,
            similarity: HistogramVec::new(
                HistogramOpts::new(
                    "deja_similarity",
                    "Best similarity per semantic lookup: hits and near-misses.",
                )
                .buckets(vec![
                    0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98,
                    0.99, 1.0,
                ]),
                &["result"],
            )?,
            tokens_saved: counter_vec(
                "deja_tokens_saved_total",
                "Tokens of answers served from cache instead of upstream, by model glob and kind (prompt/completion).",
                &["model", "kind"],
            )?,
            tokens_upstream: counter_vec(
                "deja_tokens_upstream_total",
                "Tokens of upstream answers, by model glob and kind (prompt/completion).",
                &["model", "kind"],
            )?,
            cost_saved: CounterVec::new(
                Opts::new("deja_cost_saved_usd_total", "Money not spent upstream thanks to hits, by [[prices]] glob."),
                &["model"],
            )?,
            cost_upstream: CounterVec::new(
                Opts::new("deja_cost_upstream_usd_total", "Money spent upstream, by [[prices]] glob."),
                &["model"],
            )?,
            tokens_estimated: IntCounter::new(
                "deja_tokens_estimated_total",
                "Upstream answers whose usage was estimated with a tokenizer (the stream carried none).",
            )?,
            provider_attempts: counter_vec("deja_provider_attempts_total", "Upstream attempts by provider.", &["provider"])?,
            provider_retries: counter_vec("deja_provider_retries_total", "Retries by provider.", &["provider"])?,
            provider_fallbacks: counter_vec("deja_provider_fallbacks_total", "Fallbacks away from a provider.", &["provider"])?,
            breaker_state: prometheus::IntGaugeVec::new(
                Opts::new("deja_breaker_state", "Circuit breaker per provider: 0 closed, 1 open, 2 half-open."),
                &["provider"],
            )?,
            breaker_opened: counter_vec("deja_breaker_opened_total", "Times a provider's breaker opened.", &["provider"])?,
            entries: IntGauge::new("deja_cache_entries", "Entries in the store.")?,
            store_entries_dropped: IntCounter::new(
                "deja_store_entries_dropped_total",
                "Entries the store lost to truncated or damaged files, found when it was opened.",
            )?,
            inserts: IntCounter::new("deja_cache_inserts_total", "Answers written to the cache.")?,
            not_cached: counter_vec(
                "deja_not_cached_total",
                "Upstream answers not written, by reason.",
                &["reason"],
            )?,
            guard_vetoes: counter_vec(
                "deja_guard_vetoes_total",
                "Semantic candidates above threshold vetoed by a precision guard.",
                &["guard"],
            )?,
            upstream_errors: counter_vec(
                "deja_upstream_errors_total",
                "Failed upstream calls by provider and kind.",
                &["provider", "kind"],
            )?,
            singleflight_waits: IntCounter::new(
                "deja_singleflight_waits_total",
                "Misses that waited for an identical in-flight request.",
            )?,
            reloads: counter_vec(
                "deja_config_reloads_total",
                "Config reloads by result.",
                &["result"],
            )?,
            judge: judge::JudgeMetrics::new(LATENCY_BUCKETS)?,
            registry,
        };
        m.registry.register(Box::new(m.requests.clone()))?;
        m.registry.register(Box::new(m.request_seconds.clone()))?;
        m.registry.register(Box::new(m.embed_seconds.clone()))?;
        m.registry.register(Box::new(m.search_seconds.clone()))?;
        m.registry.register(Box::new(m.upstream_seconds.clone()))?;
        m.registry.register(Box::new(m.similarity.clone()))?;
        m.registry.register(Box::new(m.tokens_saved.clone()))?;
        m.registry.register(Box::new(m.tokens_upstream.clone()))?;
        m.registry.register(Box::new(m.cost_saved.clone()))?;
        m.registry.register(Box::new(m.cost_upstream.clone()))?;
        m.registry.register(Box::new(m.tokens_estimated.clone()))?;
        m.registry.register(Box::new(m.provider_attempts.clone()))?;
        m.registry.register(Box::new(m.provider_retries.clone()))?;
        m.registry
            .register(Box::new(m.provider_fallbacks.clone()))?;
        m.registry.register(Box::new(m.breaker_state.clone()))?;
        m.registry.register(Box::new(m.breaker_opened.clone()))?;
        m.registry.register(Box::new(m.entries.clone()))?;
        m.registry
            .register(Box::new(m.store_entries_dropped.clone()))?;
        m.registry.register(Box::new(m.inserts.clone()))?;
        m.registry.register(Box::new(m.not_cached.clone()))?;
        m.registry.register(Box::new(m.guard_vetoes.clone()))?;
        m.registry.register(Box::new(m.upstream_errors.clone()))?;
        m.registry
            .register(Box::new(m.singleflight_waits.clone()))?;
        m.registry.register(Box::new(m.reloads.clone()))?;
        m.judge.register(&m.registry)?;
        Ok(m)
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
