//! The verifier model's metrics (`[cache.verifier]`, a cross-encoder scoring semantic
//! candidates): how often it ran, what it said, and how long it took on the lookup path.
//! Labels are fixed strings.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

/// Buckets for a CPU forward pass of a small cross-encoder (sub-millisecond to a long prompt).
const MODEL_BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25,
];

pub struct VerifierMetrics {
    /// `deja_verifier_model_calls_total{verdict}`: same (served) or different (not served by
    /// the model; the judge may still serve it).
    pub calls: IntCounterVec,
    /// `deja_verifier_model_seconds`: one scoring (both directions for an NLI model).
    pub seconds: Histogram,
}

impl VerifierMetrics {
    pub(super) fn new() -> Result<VerifierMetrics, prometheus::Error> {
        Ok(VerifierMetrics {
            calls: IntCounterVec::new(
                Opts::new(
                    "deja_verifier_model_calls_total",
                    "Semantic candidates scored by the verifier model, by verdict (same: served, \
                     different: not served by the model).",
                ),
                &["verdict"],
            )?,
            seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "deja_verifier_model_seconds",
                    "Time the verifier model took to score one candidate.",
                )
                .buckets(MODEL_BUCKETS.to_vec()),
            )?,
        })
    }

    pub(super) fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.calls.clone()))?;
        registry.register(Box::new(self.seconds.clone()))?;
        Ok(())
    }

    /// Counts one scoring: `served` says whether the model's yes served the candidate.
    pub fn record(&self, served: bool, took: std::time::Duration) {
        let verdict = if served { "same" } else { "different" };
        self.calls.with_label_values(&[verdict]).inc();
        self.seconds.observe(took.as_secs_f64());
    }
}
