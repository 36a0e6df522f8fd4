//! Deja-key metrics (`cache::access`, issue 16). The `key` label is a `[[keys]]` name from the
//! config (or `unknown` for a missing or unlisted key): never a key, its hash, or anything a
//! client chose, so the series are bounded by the config.

use prometheus::{CounterVec, IntCounterVec, Opts, Registry};

pub struct KeyMetrics {
    /// `deja_key_requests_total{key,result}`: `allowed`, `unauthorized`, `forbidden` (model),
    /// `rate_limited` (rpm), `over_tpm`, `over_budget`.
    pub requests: IntCounterVec,
    /// `deja_key_cost_usd_total{key,kind}`: `spent` upstream (settled, priced with
    /// `[[prices]]`) and `saved` by cached answers.
    pub cost: CounterVec,
}

impl KeyMetrics {
    pub(super) fn new(registry: &Registry) -> Result<KeyMetrics, prometheus::Error> {
        let m = KeyMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "deja_key_requests_total",
                    "Requests by deja key name (from [[keys]]; `unknown` for a missing or \
                     unlisted key) and result: allowed, unauthorized, forbidden, rate_limited \
                     (rpm), over_tpm, over_budget.",
                ),
                &["key", "result"],
            )?,
            cost: CounterVec::new(
                Opts::new(
                    "deja_key_cost_usd_total",
                    "USD by deja key name: spent upstream (settled) and saved by cached answers.",
                ),
                &["key", "kind"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.cost.clone()))?;
        Ok(m)
    }
}
