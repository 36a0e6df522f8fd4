//! The storage backend's metrics (`cache::backend`, issue 14): failed calls (each forwarded
//! uncached: the fail-open path), whether it is degraded now, hits not recorded because the
//! pending batch was full, connections open, lookups that searched twice, and how the
//! singleflight across replicas went. The backend counts with atomics; `/metrics` copies them
//! here at scrape time. The labels are the backend kind and the singleflight outcome, fixed
//! strings.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::cache::backend::BackendStats;

pub struct BackendMetrics {
    /// `deja_backend_errors_total{backend}`.
    pub errors: IntCounterVec,
    /// `deja_backend_degraded{backend}`: 1 while the backend fails and requests go uncached.
    pub degraded: IntGaugeVec,
    /// `deja_backend_hits_dropped_total{backend}`.
    pub hits_dropped: IntCounterVec,
    /// `deja_backend_connections{backend}`: connections to the database open now.
    pub connections: IntGaugeVec,
    /// `deja_backend_second_searches_total{backend}`: lookups whose first, cheaper search
    /// found nothing servable and searched again at full effort.
    pub second_searches: IntCounterVec,
    /// `deja_fleet_singleflight_total{outcome}`: misses that joined the fleet-wide singleflight
    /// (`cache::fleet`), by what came of it: `led` (claimed the upstream call), `served` (waited
    /// and got another replica's answer), `stored` (the answer had just landed), `took_over`
    /// (the holder gave up or died; this one claimed it), `unclaimed` (upstream without a claim:
    /// waited too long, or nothing to wait for), `error` (the backend failed: fail open).
    pub fleet_flights: IntCounterVec,
}

impl BackendMetrics {
    pub(super) fn new() -> Result<BackendMetrics, prometheus::Error> {
        Ok(BackendMetrics {
            errors: IntCounterVec::new(
                Opts::new(
                    "deja_backend_errors_total",
                    "Cache backend calls that failed (down, slow, refused); each request \
                     concerned was forwarded uncached.",
                ),
                &["backend"],
            )?,
            degraded: IntGaugeVec::new(
                Opts::new(
                    "deja_backend_degraded",
                    "1 while the cache backend is failing and requests are forwarded uncached.",
                ),
                &["backend"],
            )?,
            hits_dropped: IntCounterVec::new(
                Opts::new(
                    "deja_backend_hits_dropped_total",
                    "Cache hits not recorded for eviction because the pending batch was full.",
                ),
                &["backend"],
            )?,
            connections: IntGaugeVec::new(
                Opts::new(
                    "deja_backend_connections",
                    "Connections to the cache database open now (at most cache.postgres.pool_size).",
                ),
                &["backend"],
            )?,
            second_searches: IntCounterVec::new(
                Opts::new(
                    "deja_backend_second_searches_total",
                    "Lookups whose first search (cache.postgres.first_ef_search) found nothing \
                     servable and searched again with cache.postgres.ef_search.",
                ),
                &["backend"],
            )?,
            fleet_flights: IntCounterVec::new(
                Opts::new(
                    "deja_fleet_singleflight_total",
                    "Misses that joined the singleflight across replicas, by outcome.",
                ),
                &["outcome"],
            )?,
        })
    }

    pub(super) fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.errors.clone()))?;
        registry.register(Box::new(self.degraded.clone()))?;
        registry.register(Box::new(self.hits_dropped.clone()))?;
        registry.register(Box::new(self.connections.clone()))?;
        registry.register(Box::new(self.second_searches.clone()))?;
        registry.register(Box::new(self.fleet_flights.clone()))?;
        Ok(())
    }

    /// Brings the exported values up to the backend's own counters (which only grow).
    pub fn sync(&self, backend: &str, stats: &BackendStats) {
        let forward = |c: &IntCounterVec, value: u64| {
            let c = c.with_label_values(&[backend]);
            if value > c.get() {
                c.inc_by(value - c.get());
            }
        };
        forward(&self.errors, stats.errors);
        forward(&self.hits_dropped, stats.hits_dropped);
        forward(&self.second_searches, stats.second_searches);
        self.degraded
            .with_label_values(&[backend])
            .set(stats.degraded as i64);
        self.connections
            .with_label_values(&[backend])
            .set(stats.connections as i64);
    }
}
