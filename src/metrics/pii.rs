//! Personal-data metrics (`crate::pii`, issue 16): how many values of each kind were found
//! where, and what became of the requests. Labels are fixed strings (kinds, sources, actions);
//! values are never recorded.

use prometheus::{IntCounterVec, Opts, Registry};

use crate::pii::PiiKind;

pub struct PiiMetrics {
    /// `deja_pii_detections_total{kind,source}`: values found, by kind, in a `prompt` (the
    /// request's texts), an `answer` from upstream, or a `cached` answer a hit would have served.
    pub detections: IntCounterVec,
    /// `deja_pii_actions_total{action}`: requests `skipped` (served uncached), `redacted`,
    /// `blocked` (400), answers `not_cached`, hits `refused` (served from upstream instead).
    pub actions: IntCounterVec,
}

/// Where a value was found.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    Prompt,
    Answer,
    Cached,
}

impl PiiMetrics {
    pub fn new(registry: &Registry) -> Result<PiiMetrics, prometheus::Error> {
        let m = PiiMetrics {
            detections: IntCounterVec::new(
                Opts::new(
                    "deja_pii_detections_total",
                    "Personal data values found, by kind and where (prompt, answer, cached); \
                     never the values.",
                ),
                &["kind", "source"],
            )?,
            actions: IntCounterVec::new(
                Opts::new(
                    "deja_pii_actions_total",
                    "What personal data caused: skipped (served uncached), redacted, blocked, \
                     not_cached (an answer), refused (a hit served from upstream instead).",
                ),
                &["action"],
            )?,
        };
        registry.register(Box::new(m.detections.clone()))?;
        registry.register(Box::new(m.actions.clone()))?;
        Ok(m)
    }

    pub fn found(&self, kinds: &[(PiiKind, usize)], source: Source) {
        let source = match source {
            Source::Prompt => "prompt",
            Source::Answer => "answer",
            Source::Cached => "cached",
        };
        for (k, n) in kinds {
            self.detections
                .with_label_values(&[k.label(), source])
                .inc_by(*n as u64);
        }
    }

    pub fn action(&self, action: &'static str) {
        self.actions.with_label_values(&[action]).inc();
    }
}
