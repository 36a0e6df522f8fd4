//! The HTTP edge: axum router, handlers, health/readiness, metrics endpoint, start-up and
//! graceful shutdown. Thin by design: connections are accepted and bounded in [`conn`], the
//! cache flow lives in [`flow`] (which calls `cache`), uncached `/v1/*` paths in
//! [`passthrough`], wire formats in `api`, upstream calls in `providers`.
//!
//! Start-up binds the socket first and loads the model and the store in the background, so
//! `/healthz` answers at once, `/readyz` says 503 until the cache is ready, and requests that
//! arrive meanwhile are forwarded uncached (`x-deja-cache: bypass`) instead of failing.

pub mod conn;
pub mod flow;
pub mod headers;
pub mod passthrough;
pub mod reload;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use tokio::net::TcpListener;

use crate::api::error::ApiError;
use crate::api::ApiKind;
use crate::cache::{CacheEngine, EngineSettings};
use crate::config::Config;
use crate::embed::{EmbedPool, EmbedSettings, Embedder};
use crate::index::{IndexConfig, ScopedIndex};
use crate::metrics::Metrics;
use crate::providers::{ProviderSettings, RouteSettings, Router};
use crate::store::{Store, StoreConfig};
pub use state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid provider/route configuration: {0}")]
    Routes(String),
    #[error("metrics registry: {0}")]
    Metrics(String),
    /// The store or the index could not be opened (`main` says "cache start-up failed").
    #[error("cannot open the cache: {0}")]
    Cache(String),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    /// `[admin]` cannot start (its token is not set).
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error("cannot open the audit log: {0}")]
    Audit(String),
    /// `<cache.dir>/admin-keys.json` (keys made through the admin API) cannot be read.
    #[error("{0}")]
    AdminKeys(String),
}

/// Builds the provider router from the validated config.
pub fn build_router(config: &Config) -> Result<Router, ServeError> {
    let providers = config
        .providers
        .iter()
        .map(ProviderSettings::from)
        .collect();
    let routes = config.routes.iter().map(RouteSettings::from).collect();
    Router::new(providers, routes).map_err(|e| ServeError::Routes(e.to_string()))
}

/// Opens the store, fills the index from it and wraps the embedder: everything the cache
/// needs. Blocking (model inference threads start, sled opens, the index is rebuilt): call it
/// from a blocking thread.
pub fn open_engine(
    config: &Config,
    embedder: Arc<dyn Embedder>,
) -> Result<CacheEngine, ServeError> {
    open_engine_env(config, embedder, &|name| std::env::var(name).ok())
}

/// [`open_engine`] with the environment `env` answers (the shared backend's URL comes from it).
pub fn open_engine_env(
    config: &Config,
    embedder: Arc<dyn Embedder>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<CacheEngine, ServeError> {
    if let crate::config::BackendConfig::Postgres(pg) = &config.cache.backend {
        let backend = crate::cache::backend::PostgresBackend::open(
            pg,
            env,
            embedder.model_id(),
            embedder.dim(),
            config.cache.max_entries,
        )
        .map_err(|e| ServeError::Cache(e.to_string()))?;
        let pool = Arc::new(EmbedPool::new(
            embedder,
            &EmbedSettings::from(&config.embedding),
        ));
        let settings = EngineSettings::from(&config.cache);
        let limits = crate::cache::LookupLimits::default();
        let engine = CacheEngine::with_backend(Arc::new(backend), pool, settings, limits);
        attach_ledger(&engine, config)?;
        return Ok(engine);
    }
    let dim = embedder.dim();
    let store = Store::open(&StoreConfig {
        dir: config.cache.dir.clone(),
        model_id: embedder.model_id().to_string(),
        dim,
        max_entries: config.cache.max_entries,
        flush_every: config.cache.flush_interval,
    })
    .map_err(|e| ServeError::Cache(e.to_string()))?;
    let index = ScopedIndex::new(IndexConfig {
        dim,
        ..IndexConfig::from(&config.index)
    })
    .map_err(|e| ServeError::Cache(e.to_string()))?;
    let pool = Arc::new(EmbedPool::new(
        embedder,
        &EmbedSettings::from(&config.embedding),
    ));
    let snapshots = config.index.snapshot.then(|| snapshot_dir(config));
    let settings = EngineSettings::from(&config.cache);
    let (engine, load) = CacheEngine::open(store, index, pool, settings, snapshots)
        .map_err(|e| ServeError::Cache(e.to_string()))?;
    attach_ledger(&engine, config)?;
    if let Some(v) = &config.cache.verifier {
        let threads = config.embedding.compute_threads;
        let model =
            crate::embed::load_verifier(v, threads, &crate::embed::ResolveOptions::from_env())
                .map_err(|e| ServeError::Cache(format!("cache.verifier: {e}")))?;
        tracing::info!(verifier = %model.describe(), "verifier model loaded");
        engine.set_pair_scorer(Some(Arc::new(model)));
    }
    tracing::info!(
        entries = load.entries,
        restored_scopes = load.restored_scopes,
        restored = load.restored,
        replayed = load.replayed,
        stale = load.stale,
        lost_in_store = load.lost_in_store,
        snapshot_problems = load.discarded.len(),
        secs = load.elapsed.as_secs_f64(),
        "index loaded"
    );
    Ok(engine)
}

/// The quality ledger (feedback's thresholds, recorded pairs) beside the engine's entries.
fn attach_ledger(engine: &CacheEngine, config: &Config) -> Result<(), ServeError> {
    crate::quality::attach_ledger(engine, &config.cache.quality)
        .map_err(|e| ServeError::Cache(format!("quality ledger: {e}")))
}

/// Where index snapshots live: beside the store, in the cache directory.
pub fn snapshot_dir(config: &Config) -> PathBuf {
    config.cache.dir.join(crate::index::snapshot::DIR_NAME)
}

/// A bound server, not yet serving.
pub struct Server {
    listener: TcpListener,
    /// The admin listener (`[admin] listen`) with its token.
    admin: Option<(TcpListener, crate::admin::Token)>,
    state: AppState,
}

impl Server {
    pub async fn bind(config: Config, config_path: Option<PathBuf>) -> Result<Server, ServeError> {
        Server::bind_env(config, config_path, &|name| std::env::var(name).ok()).await
    }

    /// [`Server::bind`] with the environment `env` answers (the admin token comes from it).
    pub async fn bind_env(
        config: Config,
        config_path: Option<PathBuf>,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<Server, ServeError> {
        let router = build_router(&config)?;
        let metrics = Metrics::new().map_err(|e| ServeError::Metrics(e.to_string()))?;
        let addr = config.server.listen;
        conn::fit_open_file_limit(config.server.max_connections);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let admin = match config.admin.listen {
            None => None,
            Some(addr) => {
                let token = crate::admin::Token::from_env(&config.admin.token_env, env)?;
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Bind { addr, source })?;
                Some((l, token))
            }
        };
        let spends = config.keys.keys.iter().any(|k| k.has_spend_limits());
        let audit = config.audit.clone();
        let lines = metrics.audit.lines.clone();
        let audit =
            tokio::task::spawn_blocking(move || crate::audit::AuditLog::start(&audit, lines))
                .await
                .map_err(|e| ServeError::Audit(e.to_string()))?
                .map_err(|e| ServeError::Audit(e.to_string()))?;
        let keys_file = crate::admin::keys::file(&config);
        let admin_keys = tokio::task::spawn_blocking(move || crate::admin::keys::load(&keys_file))
            .await
            .map_err(|e| ServeError::AdminKeys(e.to_string()))?
            .map_err(ServeError::AdminKeys)?;
        let spends = spends || crate::admin::keys::any_spend_limits(&admin_keys);
        let state = AppState::new(config, router, metrics, config_path);
        crate::admin::keys::install(&state, admin_keys);
        let _ = state.0.audit.set(audit.map(Arc::new));
        if spends {
            // Key budgets are read back before the first request (blocking: sled opens).
            let ledger = state.0.ledger.clone();
            let _ = tokio::task::spawn_blocking(move || ledger.open_blocking()).await;
        }
        Ok(Server {
            listener,
            admin,
            state,
        })
    }

    /// Where the admin listener is bound, when `[admin] listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests, waits (bounded) for
    /// pending cache inserts and flushes the store.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let state = self.state.clone();
        let grace = state.config().server.shutdown_grace;
        let sweeper = tokio::spawn(sweep_loop(state.clone()));
        let snapshotter = tokio::spawn(snapshot_loop(state.clone()));
        let app = app(state.clone());
        let limits = conn::ConnLimits::from(&state.config().server);
        // One shutdown for both listeners; the admin one has the public one's bounds.
        let stop = tokio_util::sync::CancellationToken::new();
        let admin = self.admin.map(|(listener, token)| {
            let admin = crate::admin::AdminState::new(state.clone(), token);
            let sampler = tokio::spawn(crate::admin::stats::sample_loop(admin.clone()));
            let stopped = stop.clone().cancelled_owned();
            tokio::spawn(async move {
                conn::serve(listener, crate::admin::router(admin), limits, stopped).await;
                sampler.abort();
            })
        });
        let stopping = stop.clone();
        let shutdown = async move {
            shutdown.await;
            stopping.cancel();
        };
        conn::serve(self.listener, app, limits, shutdown).await;
        stop.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        sweeper.abort();
        snapshotter.abort();
        state.0.background.close();
        if tokio::time::timeout(grace, state.0.background.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown: pending cache inserts abandoned after {grace:?}");
        }
        // The shadow checks hold the engine: they end before it is flushed and let go.
        if let Some(quality) = state.0.quality.get() {
            if tokio::time::timeout(grace, quality.stop()).await.is_err() {
                tracing::warn!("shutdown: shadow checks abandoned after {grace:?}");
            }
        }
        let ledger = state.0.ledger.clone();
        let _ = tokio::task::spawn_blocking(move || ledger.close_blocking()).await;
        if let Some(audit) = state.audit().cloned() {
            let _ = tokio::task::spawn_blocking(move || audit.close_blocking()).await;
        }
        if let Some(engine) = state.engine().cloned() {
            take_snapshot(engine.clone(), "shutdown").await;
            match tokio::task::spawn_blocking(move || engine.flush_blocking()).await {
                Ok(Ok(())) => tracing::info!("store flushed"),
                Ok(Err(e)) => tracing::error!(error = %e, "store flush failed"),
                Err(e) => tracing::error!(error = %e, "store flush task failed"),
            }
        }
        Ok(())
    }
}

/// The axum application.
pub fn app(state: AppState) -> axum::Router {
    // `[admin] metrics = true` moves /metrics to the admin listener (`crate::admin`).
    let public_metrics = state.config().admin.public_metrics();
    let router = axum::Router::new();
    let router = if public_metrics {
        router.route("/metrics", get(metrics))
    } else {
        router
    };
    router
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/messages", post(messages))
        .route("/v1/responses", post(responses))
        .route(
            "/v1/deja/feedback",
            post(crate::quality::feedback::public_handler),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/templates", get(templates))
        .route("/v1/{*rest}", any(passthrough::passthrough))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The whole request body, within `server.max_body_bytes` (else 413) and
/// `server.body_read_timeout` (else 408: a client that stops sending mid-body must not hold a
/// handler and its connection).
pub(crate) async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    read_body_within(state, body, state.config().server.max_body_bytes).await
}

/// [`read_body`] with its own size limit (smaller bodies, such as feedback's).
pub(crate) async fn read_body_within(
    state: &AppState,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let timeout = state.config().server.body_read_timeout;
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if is_length_limit(&e) => Err(ApiError::BodyTooLarge { limit }),
        Ok(Err(e)) => Err(ApiError::invalid_request(
            format!("could not read the request body: {e}"),
            None,
        )),
        Err(_) => Err(ApiError::BodyTimeout {
            seconds: timeout.as_secs_f64(),
        }),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

async fn cached(state: AppState, api: ApiKind, headers: HeaderMap, body: Body) -> Response {
    match read_body(&state, body).await {
        Ok(bytes) => flow::handle(state, api, headers, bytes).await,
        Err(e) => e.into_response_for(Some(api)),
    }
}

async fn chat(State(s): State<AppState>, h: HeaderMap, body: Body) -> Response {
    cached(s, ApiKind::Chat, h, body).await
}

async fn completions(State(s): State<AppState>, h: HeaderMap, body: Body) -> Response {
    cached(s, ApiKind::Completions, h, body).await
}

async fn messages(State(s): State<AppState>, h: HeaderMap, body: Body) -> Response {
    cached(s, ApiKind::Messages, h, body).await
}

async fn responses(State(s): State<AppState>, h: HeaderMap, body: Body) -> Response {
    cached(s, ApiKind::Responses, h, body).await
}

/// `GET /v1/templates`: the `[[templates]]` a client may call (in keys mode, a deja key is
/// needed and only templates on models the key may use are listed).
async fn templates(State(state): State<AppState>, req_headers: HeaderMap) -> Response {
    let config = state.config();
    let key = headers::client_key(&req_headers);
    let admitted = state.0.access.admit(
        &config.keys,
        key.as_deref(),
        None,
        &state.metrics().keys.requests,
    );
    let mut list = match admitted {
        Ok(a) => (a, crate::api::template::list(&config)),
        Err(e) => return e.into_response_for(Some(ApiKind::Chat)),
    };
    if let (Some(a), Some(data)) = (&list.0, list.1["data"].as_array_mut()) {
        data.retain(|t| t["model"].as_str().is_some_and(|m| a.key.allows_model(m)));
    }
    axum::Json(list.1).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.engine().map(CacheEngine::health) {
        Some(crate::cache::backend::Health::Ready) => (StatusCode::OK, "ready\n").into_response(),
        // Still 200: requests are served (forwarded uncached), and a load balancer that took
        // every replica out because the shared database is down would turn a slower service
        // into none. `deja_backend_degraded` is the alerting signal.
        Some(crate::cache::backend::Health::Degraded(why)) => (
            StatusCode::OK,
            format!("degraded: cache backend unavailable, requests forwarded uncached ({why})\n"),
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "loading model and store\n").into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    metrics_response(&state)
}

/// The Prometheus text of every metric, refreshed from the engine and the router first.
pub fn metrics_response(state: &AppState) -> Response {
    if let Some(engine) = state.engine() {
        let m = state.metrics();
        m.entries.set(engine.entries() as i64);
        m.store_lost(&engine.backend().recovery());
        m.backend
            .sync(engine.backend().kind(), &engine.backend().stats());
    }
    sync_provider_metrics(state);
    let mut r = state.metrics().render().into_response();
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// Copies the router's own counters into Prometheus at scrape time (the router counts with
/// plain atomics on the request path). Counters only move forward: a rebuilt router starts from
/// zero, and its counts are added once they pass what was already exported.
fn sync_provider_metrics(state: &AppState) {
    let m = state.metrics();
    let forward = |c: &prometheus::IntCounterVec, provider: &str, value: u64| {
        let counter = c.with_label_values(&[provider]);
        let current = counter.get();
        if value > current {
            counter.inc_by(value - current);
        }
    };
    for snap in state.router().stats() {
        let p = snap.provider.as_str();
        forward(&m.provider_attempts, p, snap.attempts);
        forward(&m.provider_retries, p, snap.retries);
        forward(&m.provider_fallbacks, p, snap.fallbacks);
        forward(&m.breaker_opened, p, snap.breaker_opened);
        for (kind, count) in &snap.errors {
            let counter = m.upstream_errors.with_label_values(&[p, kind]);
            let current = counter.get();
            if *count > current {
                counter.inc_by(count - current);
            }
        }
        m.breaker_state
            .with_label_values(&[p])
            .set(snap.breaker.as_gauge());
    }
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::NotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
    .into_response_for(ApiKind::for_path(uri.path()))
}

/// `GET /v1/chat/completions` and the like: a JSON 405 (axum's own has no body).
async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
    .into_response_for(ApiKind::for_path(uri.path()))
}

/// Removes expired entries once a minute, off the runtime.
async fn sweep_loop(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let Some(engine) = state.engine().cloned() else {
            continue;
        };
        let res = tokio::task::spawn_blocking(move || engine.sweep_expired_blocking(10_000)).await;
        match res {
            Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "expired entries swept"),
            Ok(Err(e)) => tracing::warn!(error = %e, "expiry sweep failed"),
            _ => {}
        }
    }
}

/// Snapshots the index every `index.snapshot_every` (read at each round, so a reload applies)
/// when it changed, so a crash loses at most that much restore work, never data.
async fn snapshot_loop(state: AppState) {
    loop {
        let every = state.config().index.snapshot_every;
        tokio::time::sleep(if every.is_zero() {
            Duration::from_secs(60)
        } else {
            every
        })
        .await;
        let cfg = state.config();
        if !cfg.index.snapshot || cfg.index.snapshot_every.is_zero() {
            continue;
        }
        if let Some(engine) = state.engine().cloned() {
            take_snapshot(engine, "periodic").await;
        }
    }
}

/// Writes an index snapshot if the index changed, and logs the outcome. An aborted snapshot
/// (the task cancelled, the process killed) leaves the previous one in force.
async fn take_snapshot(engine: CacheEngine, why: &'static str) {
    let started = std::time::Instant::now();
    match tokio::task::spawn_blocking(move || engine.snapshot_blocking()).await {
        Ok(Ok(Some(s))) => tracing::info!(
            why,
            scopes = s.scopes,
            nodes = s.nodes,
            mib = s.bytes / (1 << 20),
            secs = started.elapsed().as_secs_f64(),
            "index snapshot written"
        ),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::warn!(why, error = %e, "index snapshot failed"),
        Err(e) => tracing::warn!(why, error = %e, "index snapshot task failed"),
    }
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; draining");
}
