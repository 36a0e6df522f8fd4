//! `previous_response_id` chains' metric (`cache::chains`, issue 15). Labels are fixed strings.

use prometheus::{IntCounterVec, Opts, Registry};

pub struct ChainMetrics {
    /// `deja_response_chains_total{event}`: `resolved` (a follow-up's conversation was known),
    /// `unknown` (a provider's id deja never saw: forwarded as it came, uncached),
    /// `not_found` (a deja id no longer remembered: 400), `recorded`, `too_large` (a
    /// conversation over the record cap: not remembered), `failed` (a read or write error).
    pub events: IntCounterVec,
}

impl ChainMetrics {
    pub(super) fn new(registry: &Registry) -> Result<ChainMetrics, prometheus::Error> {
        let events = IntCounterVec::new(
            Opts::new(
                "deja_response_chains_total",
                "Responses previous_response_id chains by event: resolved, unknown, not_found, \
                 recorded, too_large, failed.",
            ),
            &["event"],
        )?;
        registry.register(Box::new(events.clone()))?;
        Ok(ChainMetrics { events })
    }

    pub fn event(&self, event: &'static str) {
        self.events.with_label_values(&[event]).inc();
    }
}
