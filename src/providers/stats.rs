//! Per-provider counters the router bumps on the hot path (plain atomics, no locks). The metrics
//! layer reads them through [`ProviderStatsSnapshot`]; nothing here knows about Prometheus.

use crate::providers::breaker::BreakerState;
use crate::providers::error::ProviderErrorKind;
use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters for one provider.
#[derive(Debug, Default)]
pub struct ProviderStats {
    /// Requests actually sent upstream (breaker rejections and missing keys excluded).
    pub attempts: AtomicU64,
    /// Attempts that produced a response (2xx, or a non-retryable status passed through).
    pub responses: AtomicU64,
    /// Retries on this provider after a retryable failure.
    pub retries: AtomicU64,
    /// Times the router gave up on this provider for a request and moved to the next target.
    pub fallbacks: AtomicU64,
    errors: [AtomicU64; ProviderErrorKind::LABELS.len()],
}

impl ProviderStats {
    pub(crate) fn record_error(&self, kind: &ProviderErrorKind) {
        let label = kind.label();
        if let Some(i) = ProviderErrorKind::LABELS.iter().position(|l| *l == label) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Errors so far with this [`ProviderErrorKind::label`] (stream errors after the headers
    /// included).
    pub fn errors(&self, label: &str) -> u64 {
        ProviderErrorKind::LABELS
            .iter()
            .position(|l| *l == label)
            .map(|i| self.errors[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

/// Point-in-time copy of one provider's counters and breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderStatsSnapshot {
    pub provider: String,
    pub attempts: u64,
    pub responses: u64,
    pub retries: u64,
    pub fallbacks: u64,
    /// Every error label with its count (zeros included, so series exist from the start).
    pub errors: Vec<(&'static str, u64)>,
    pub breaker: BreakerState,
    /// How many times the breaker opened.
    pub breaker_opened: u64,
}

impl ProviderStatsSnapshot {
    pub(crate) fn new(
        provider: &str,
        stats: &ProviderStats,
        breaker: BreakerState,
        breaker_opened: u64,
    ) -> Self {
        ProviderStatsSnapshot {
            provider: provider.to_string(),
            attempts: stats.attempts.load(Ordering::Relaxed),
            responses: stats.responses.load(Ordering::Relaxed),
            retries: stats.retries.load(Ordering::Relaxed),
            fallbacks: stats.fallbacks.load(Ordering::Relaxed),
            errors: ProviderErrorKind::LABELS
                .iter()
                .map(|l| (*l, stats.errors(l)))
                .collect(),
            breaker,
            breaker_opened,
        }
    }

    /// Count for one error label (0 for an unknown label).
    pub fn errors(&self, label: &str) -> u64 {
        self.errors
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }
}
