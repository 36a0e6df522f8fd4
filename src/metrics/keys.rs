//! Deja-key metrics (`cache::access`, issue 16). The `key` label is a `[[keys]]` name from the
//! config (or `unknown` for a missing or unlisted key): never a key, its hash, or anything a
//! client chose, so the series are bounded by the config.

use prometheus::{IntCounterVec, Opts, Registry};

pub struct KeyMetrics {
    /// `deja_key_requests_total{key,result}`: `allowed`, `unauthorized`, `forbidden` (model),
    /// `rate_limited`.
    pub requests: IntCounterVec,
}

impl KeyMetrics {
    pub(super) fn new(registry: &Registry) -> Result<KeyMetrics, prometheus::Error> {
        let m = KeyMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "deja_key_requests_total",
                    "Requests by deja key name (from [[keys]]; `unknown` for a missing or \
                     unlisted key) and result: allowed, unauthorized, forbidden, rate_limited.",
                ),
                &["key", "result"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        Ok(m)
    }
}
