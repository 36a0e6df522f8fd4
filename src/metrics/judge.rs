//! The LLM judge's metrics (`cache::judge`, issue 13): its verdicts, its latency, and the
//! tokens and money it spends. Kept apart from the upstream totals (`deja_tokens_upstream_total`,
//! `deja_cost_upstream_usd_total`), which count only answers sent to clients; the judge's spend
//! is what a semantic hit costs on top. Labels are fixed strings.

use prometheus::{Counter, Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

pub struct JudgeMetrics {
    /// `deja_judge_calls_total{verdict}`: same, different, cached (answered from the verdict
    /// cache), or why there was no verdict: timeout, error, unparsable, busy, too_long.
    pub calls: IntCounterVec,
    /// `deja_judge_duration_seconds`: calls that went upstream, timeouts included.
    pub seconds: Histogram,
    /// `deja_judge_tokens_total{kind}`: prompt and completion tokens the upstream reported.
    pub tokens: IntCounterVec,
    /// `deja_judge_cost_usd_total`: those tokens priced by the `[[prices]]` glob of the model.
    pub cost_usd: Counter,
}

impl JudgeMetrics {
    pub(super) fn new(latency_buckets: &[f64]) -> Result<JudgeMetrics, prometheus::Error> {
        Ok(JudgeMetrics {
            calls: IntCounterVec::new(
                Opts::new(
                    "deja_judge_calls_total",
                    "LLM judge calls by verdict (same, different, cached) or by why there was none \
                     (timeout, error, unparsable, busy, too_long: each a miss).",
                ),
                &["verdict"],
            )?,
            seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "deja_judge_duration_seconds",
                    "LLM judge calls sent upstream: time to a verdict or to the timeout.",
                )
                .buckets(latency_buckets.to_vec()),
            )?,
            tokens: IntCounterVec::new(
                Opts::new(
                    "deja_judge_tokens_total",
                    "Tokens the LLM judge spent, by kind (prompt/completion).",
                ),
                &["kind"],
            )?,
            cost_usd: Counter::new(
                "deja_judge_cost_usd_total",
                "Money the LLM judge spent, priced by [[prices]].",
            )?,
        })
    }

    pub(super) fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.calls.clone()))?;
        registry.register(Box::new(self.seconds.clone()))?;
        registry.register(Box::new(self.tokens.clone()))?;
        registry.register(Box::new(self.cost_usd.clone()))?;
        Ok(())
    }
}
