//! Shared server state: `AppState(Arc<Inner>)`, cheap to clone into every handler. The config
//! and the provider router sit behind locks that hot reload swaps whole; a handler takes one
//! snapshot at its start and uses it to the end, so a reload never changes a request mid-way.
//! The cache engine is set once the model is loaded and the store is open (until then requests
//! are forwarded uncached and `/readyz` says 503). The LLM judge (`[cache.judge]`), when
//! configured, is built with the router and swapped with it on reload.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use tokio_util::task::TaskTracker;

use crate::cache::judge::{Judge, JudgeSettings};
use crate::cache::singleflight::Singleflight;
use crate::cache::CacheEngine;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::providers::Router;

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub config: RwLock<Arc<Config>>,
    pub router: RwLock<Arc<Router>>,
    pub engine: OnceLock<CacheEngine>,
    /// The LLM judge for uncertain semantic candidates; `None` without `[cache.judge]`.
    pub judge: RwLock<Option<Arc<Judge>>>,
    pub metrics: Arc<Metrics>,
    pub singleflight: Arc<Singleflight>,
    /// Deja keys' rate-limit buckets (`server.auth = "keys"`).
    pub access: crate::cache::access::Access,
    /// Deja keys' tokens per minute and budgets (`<cache.dir>/usage`).
    pub ledger: Arc<crate::cache::budget::Ledger>,
    /// The audit log (`[audit] path`), started at bind; a reload does not move it.
    pub audit: OnceLock<Option<Arc<crate::audit::AuditLog>>>,
    /// Cache inserts running after their response was sent; drained on shutdown.
    pub background: TaskTracker,
    /// The file hot reload reads, when the config came from one.
    pub config_path: Option<PathBuf>,
    /// Feedback, shadow checks and recorded pairs (issue 17), built once the engine is ready.
    pub quality: OnceLock<Arc<crate::quality::Quality>>,
    /// Deja keys made through the admin API (`<cache.dir>/admin-keys.json`), merged into every
    /// config snapshot, the reloaded ones included (`admin::keys`).
    pub admin_keys: parking_lot::Mutex<Vec<crate::config::keys::RawKey>>,
    /// Admin key changes, one at a time (each rewrites the file).
    pub admin_keys_write: tokio::sync::Mutex<()>,
}

impl AppState {
    pub fn new(
        config: Config,
        router: Router,
        metrics: Metrics,
        config_path: Option<PathBuf>,
    ) -> AppState {
        let router = Arc::new(router);
        let metrics = Arc::new(metrics);
        let judge = JudgeSettings::from_config(&config)
            .map(|s| Arc::new(Judge::new(s, Arc::clone(&router), Arc::clone(&metrics))));
        let ledger = Arc::new(crate::cache::budget::Ledger::new(
            config.cache.dir.join("usage"),
        ));
        AppState(Arc::new(Inner {
            config: RwLock::new(Arc::new(config)),
            router: RwLock::new(router),
            engine: OnceLock::new(),
            judge: RwLock::new(judge),
            metrics,
            singleflight: Singleflight::new(),
            access: Default::default(),
            ledger,
            audit: OnceLock::new(),
            background: TaskTracker::new(),
            config_path,
            quality: OnceLock::new(),
            admin_keys: parking_lot::Mutex::new(Vec::new()),
            admin_keys_write: tokio::sync::Mutex::new(()),
        }))
    }

    /// The audit log, when `[audit] path` is set.
    pub fn audit(&self) -> Option<&Arc<crate::audit::AuditLog>> {
        self.0.audit.get().and_then(Option::as_ref)
    }

    pub fn config(&self) -> Arc<Config> {
        self.0.config.read().clone()
    }

    pub fn router(&self) -> Arc<Router> {
        self.0.router.read().clone()
    }

    pub fn engine(&self) -> Option<&CacheEngine> {
        self.0.engine.get()
    }

    /// The LLM judge lookup asks about an uncertain semantic candidate, when one is
    /// configured. Take it once per request, like [`AppState::config`].
    pub fn judge(&self) -> Option<Arc<Judge>> {
        self.0.judge.read().clone()
    }

    /// The judge for a config about to be swapped in with `router`: kept (with its verdicts)
    /// when the question is unchanged, rebuilt when it changed, gone without `[cache.judge]`.
    pub fn judge_for(&self, config: &Config, router: &Arc<Router>) -> Option<Arc<Judge>> {
        let settings = JudgeSettings::from_config(config)?;
        let judge = match self.judge() {
            Some(old) => old.reconfigure(settings, Arc::clone(router)),
            None => Judge::new(settings, Arc::clone(router), self.metrics_handle()),
        };
        Some(Arc::new(judge))
    }

    /// Feedback, shadow checks and recorded pairs; `None` until the engine is ready (or when it
    /// has no ledger). Built on first use, inside the runtime.
    pub fn quality(&self) -> Option<Arc<crate::quality::Quality>> {
        if let Some(q) = self.0.quality.get() {
            return Some(Arc::clone(q));
        }
        let engine = self.engine()?;
        let q = crate::quality::Quality::new(
            engine,
            &self.config().cache.quality,
            self.metrics_handle(),
        )?;
        Some(Arc::clone(self.0.quality.get_or_init(|| Arc::new(q))))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// An owned handle on the metrics, for work that outlives the request (inserts, tees).
    pub fn metrics_handle(&self) -> Arc<Metrics> {
        self.0.metrics.clone()
    }
}
