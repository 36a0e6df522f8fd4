//! The cached endpoints' flow, shared by every inbound API: parse → canonical request → plan →
//! (exact → semantic) lookup → hit: render the stored answer; miss: singleflight → routed
//! provider → stream the answer back while teeing it → insert after the response, off the
//! response path. Handlers stay thin; wire details live in `api`, decisions in `cache`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::canonical::{ApiKind, CanonicalRequest};
use crate::api::collect::NotCacheable;
use crate::api::error::ApiError;
use crate::api::inbound::{self, not_cacheable_label, Rendered, StreamCollector};
use crate::cache::policy::{self, CachePlan, Plan, RequestControls};
use crate::cache::singleflight::{Flight, Role};
use crate::cache::{CacheEngine, Lookup, LookupTrace};
use crate::metrics::cost;
use crate::providers::{ProviderErrorKind, RouterError, SseParser, UpstreamBody, UpstreamRequest};
use crate::server::headers::{client_key, forwardable_headers, header_str, DejaHeaders};
use crate::server::state::AppState;
use crate::store::{CachedResponse, Entry};
use serde_json::{Map, Value};

/// Entry point for `POST /v1/chat/completions`, `/v1/completions` and `/v1/messages`.
pub async fn handle(state: AppState, api: ApiKind, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    match run(&state, api, &headers, body, started).await {
        Ok(resp) => resp,
        Err(err) => {
            state
                .metrics()
                .requests
                .with_label_values(&[api.as_str(), "error"])
                .inc();
            if err.status().is_server_error() {
                tracing::warn!(api = api.as_str(), error = %err, "request failed");
            } else {
                tracing::info!(api = api.as_str(), error = %err, "request rejected");
            }
            err.into_response_for(api.dialect())
        }
    }
}

async fn run(
    state: &AppState,
    api: ApiKind,
    headers: &HeaderMap,
    body: Bytes,
    started: Instant,
) -> Result<Response, ApiError> {
    let map = inbound::parse_request(api, &body)?;
    let canonical = match api {
        ApiKind::Chat => CanonicalRequest::from_chat(&map),
        ApiKind::Completions => CanonicalRequest::from_completions(&map),
        ApiKind::Messages => CanonicalRequest::from_messages(&map),
    };
    let controls = RequestControls::parse(
        header_str(headers, "cache-control"),
        header_str(headers, "x-deja-threshold"),
        header_str(headers, "x-deja-ttl"),
        header_str(headers, "x-deja-namespace"),
    )
    .map_err(|e| ApiError::invalid_request(e.to_string(), None))?;
    let config = state.config();
    let router = state.router();
    if router.route(&canonical.model).is_none() {
        return Err(ApiError::NoRoute {
            model: canonical.model.clone(),
        });
    }
    let key = client_key(headers);
    // issue 12 (policy): a namespace the key was not granted is a 403, before anything else.
    let tenant = policy::tenant(&config, key.as_deref(), &controls)?;
    let ctx = Ctx {
        state,
        api,
        canonical: &canonical,
        headers,
        key: key.clone(),
        request: Arc::new(map),
        started,
    };

    let plan = match state.engine() {
        None => Plan::Bypass(policy::BypassReason::Warming),
        Some(_) => policy::plan(&config, &canonical, &tenant, &controls),
    };
    let (engine, plan) = match (state.engine(), plan) {
        (Some(engine), Plan::Use(p)) => (engine.clone(), p),
        (_, Plan::Bypass(reason)) => {
            tracing::debug!(reason = reason.as_str(), "cache bypassed");
            return ctx
                .forward(body, None, "bypass", &LookupTrace::default(), None)
                .await;
        }
        (None, Plan::Use(_)) => {
            return ctx
                .forward(body, None, "bypass", &LookupTrace::default(), None)
                .await
        }
    };

    let mut timings = LookupTrace::default();
    let mut best = None;
    let mut embedding = None;
    if plan.read {
        let lookup = engine
            .lookup(
                plan.scope,
                &plan.prompt,
                plan.semantic,
                plan.threshold,
                &mut timings,
            )
            .await;
        let m = state.metrics();
        for guard in &timings.vetoed {
            m.guard_vetoes.with_label_values(&[guard.as_str()]).inc();
        }
        if plan.semantic && !timings.embed.is_zero() {
            m.embed_seconds.observe(timings.embed.as_secs_f64());
            m.search_seconds.observe(timings.search.as_secs_f64());
        }
        match lookup {
            Ok(Lookup::Exact(entry)) => return Ok(ctx.hit(entry, "exact-hit", 1.0, &timings)),
            Ok(Lookup::Semantic { entry, similarity }) => {
                m.similarity
                    .with_label_values(&["hit"])
                    .observe(similarity as f64);
                return Ok(ctx.hit(entry, "semantic-hit", similarity, &timings));
            }
            Ok(Lookup::Miss {
                embedding: e,
                best: b,
            }) => {
                if let Some(b) = b {
                    m.similarity.with_label_values(&["miss"]).observe(b as f64);
                }
                embedding = e;
                best = b;
            }
            // A broken cache must not break the chatbot: log it and forward.
            Err(e) => tracing::error!(error = %e, "cache lookup failed; forwarding uncached"),
        }
    }

    let mut flight = None;
    if plan.write {
        match state.0.singleflight.join(plan.scope, &plan.prompt) {
            Role::Leader(f) => flight = Some(f),
            // issue 12 (policy): `no-cache` (plan.read false) must not be answered from the
            // leader's entry; it asks upstream itself, and its answer replaces the entry.
            Role::Follower(_) if !plan.read => {}
            Role::Follower(waiter) => {
                state.metrics().singleflight_waits.inc();
                let limit = Duration::from_secs(120);
                if waiter.wait(limit).await {
                    let scope = plan.scope;
                    let prompt = plan.prompt.clone();
                    let e2 = engine.clone();
                    let again =
                        tokio::task::spawn_blocking(move || e2.exact_blocking(scope, &prompt))
                            .await;
                    if let Ok(Ok(Some(entry))) = again {
                        return Ok(ctx.hit(entry, "exact-hit", 1.0, &timings));
                    }
                }
            }
        }
    }
    let job = plan.write.then(|| InsertJob {
        engine,
        embedding,
        flight,
        plan: plan.clone(),
    });
    ctx.forward(body, job, "miss", &timings, best).await
}

/// What happens once an upstream answer is complete: its tokens are accounted for (estimated
/// when a stream carried no usage), then it is stored when the plan says so.
struct Settle {
    api: ApiKind,
    model: String,
    request: Arc<Map<String, Value>>,
    job: Option<InsertJob>,
}

impl Settle {
    async fn run(self, state: AppState, answer: Result<CachedResponse, NotCacheable>) {
        let answer = match answer {
            Ok(mut a) => {
                if a.usage.is_none() {
                    let (api, request, content) =
                        (self.api, self.request.clone(), a.content.clone());
                    // Tokenizing is CPU work (and loads the BPE once): keep it off the runtime.
                    let estimate = tokio::task::spawn_blocking(move || {
                        cost::estimate_usage(api, &request, &content)
                    })
                    .await;
                    if let Ok(u) = estimate {
                        state.metrics().tokens_estimated.inc();
                        a.usage = Some(u);
                    }
                }
                if let Some(u) = &a.usage {
                    cost::record_upstream(state.metrics(), &state.config(), &self.model, u);
                }
                Ok(a)
            }
            Err(e) => Err(e),
        };
        if let Some(job) = self.job {
            job.run(state, answer).await;
        }
    }
}

/// What to store once the upstream answer completed normally.
struct InsertJob {
    engine: CacheEngine,
    plan: CachePlan,
    embedding: Option<Arc<[f32]>>,
    /// Released (waking followers) when the insert is done or abandoned.
    flight: Option<Flight>,
}

impl InsertJob {
    async fn run(self, state: AppState, answer: Result<CachedResponse, NotCacheable>) {
        let answer = match answer {
            Ok(a) => a,
            Err(reason) => {
                state
                    .metrics()
                    .not_cached
                    .with_label_values(&[not_cacheable_label(&reason)])
                    .inc();
                tracing::debug!(reason = %reason, "answer not cached");
                return;
            }
        };
        let embedding = match (self.plan.semantic, self.embedding) {
            (false, _) => None,
            (true, Some(e)) => Some(e),
            // `no-cache` skipped the lookup, so the prompt has not been embedded yet.
            (true, None) => match self.engine.embedder().embed(&self.plan.prompt).await {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(error = %e, "embedding for insert failed; storing exact-only");
                    None
                }
            },
        };
        let res = self
            .engine
            .insert(
                self.plan.scope,
                self.plan.prompt.clone(),
                embedding,
                answer,
                self.plan.ttl,
            )
            .await;
        match res {
            Ok(id) => {
                let m = state.metrics();
                m.inserts.inc();
                m.entries.set(self.engine.store().len() as i64);
                tracing::debug!(entry = id, "answer cached");
            }
            Err(e) => tracing::error!(error = %e, "cache insert failed"),
        }
        drop(self.flight);
    }
}

struct Ctx<'a> {
    state: &'a AppState,
    api: ApiKind,
    canonical: &'a CanonicalRequest,
    headers: &'a HeaderMap,
    key: Option<String>,
    /// The parsed request, kept for token estimation after the response.
    request: Arc<Map<String, Value>>,
    started: Instant,
}

impl Ctx<'_> {
    fn hit(
        &self,
        entry: Entry,
        outcome: &'static str,
        similarity: f32,
        trace: &LookupTrace,
    ) -> Response {
        let m = self.state.metrics();
        let usage = entry.response.usage.unwrap_or_default();
        cost::record_saved(m, &self.state.config(), &self.canonical.model, &usage);
        let body = inbound::render_hit(
            self.api,
            &entry.response,
            self.canonical.stream,
            self.canonical.include_usage,
            &self.canonical.model,
        );
        let elapsed = self.started.elapsed();
        let label = outcome.replace('-', "_");
        m.requests
            .with_label_values(&[self.api.as_str(), &label])
            .inc();
        m.request_seconds
            .with_label_values(&[&label])
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            api = self.api.as_str(),
            outcome,
            similarity,
            entry = entry.id,
            ms = elapsed.as_secs_f64() * 1e3,
            "request"
        );
        let mut deja = DejaHeaders::new(outcome);
        deja.similarity(similarity);
        deja.entry(entry.id);
        deja.timing(trace, None, elapsed);
        deja.tokens_saved(usage.total());
        let mut resp = match body {
            Rendered::Json(bytes) => json_response(StatusCode::OK, bytes),
            Rendered::Sse(events) => {
                let stream = futures::stream::iter(events.into_iter().map(Ok::<_, std::io::Error>));
                sse_response(Body::from_stream(stream))
            }
        };
        deja.apply(resp.headers_mut());
        resp
    }

    /// Sends the request upstream and streams the answer back; `job` stores it afterwards.
    async fn forward(
        &self,
        body: Bytes,
        job: Option<InsertJob>,
        outcome: &'static str,
        trace: &LookupTrace,
        best: Option<f32>,
    ) -> Result<Response, ApiError> {
        let state = self.state.clone();
        let mut upstream_req =
            UpstreamRequest::post_bytes(self.api.upstream_path(), body, self.canonical.stream)
                .with_client_key(self.key.clone())
                .with_dialect(self.api.into());
        upstream_req.headers = forwardable_headers(self.headers);
        let router = state.router();
        let up_started = Instant::now();
        let resp = router.send(upstream_req, &self.canonical.model).await?;
        let upstream_time = up_started.elapsed();
        let m = state.metrics();
        m.upstream_seconds
            .with_label_values(&[&resp.provider])
            .observe(upstream_time.as_secs_f64());
        let label = outcome;
        m.requests
            .with_label_values(&[self.api.as_str(), label])
            .inc();
        let overhead = self.started.elapsed().saturating_sub(upstream_time);
        m.request_seconds
            .with_label_values(&[label])
            .observe(self.started.elapsed().as_secs_f64());
        tracing::info!(
            api = self.api.as_str(),
            outcome,
            provider = %resp.provider,
            status = resp.status,
            best_similarity = best,
            lookup_ms = trace.total().as_secs_f64() * 1e3,
            upstream_ms = upstream_time.as_secs_f64() * 1e3,
            "request"
        );

        let mut deja = DejaHeaders::new(outcome);
        deja.provider(&resp.provider);
        deja.timing(trace, Some(upstream_time), overhead);
        if let Some(b) = best {
            deja.nearest(b);
        }
        let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let ok = status.is_success();
        let provider = resp.provider.clone();
        let settle = Settle {
            api: self.api,
            model: self.canonical.model.clone(),
            request: self.request.clone(),
            job,
        };
        let mut response = match resp.body {
            UpstreamBody::Json(bytes) => {
                let answer = if ok {
                    inbound::collect_json(self.api, &bytes, &provider)
                } else {
                    Err(NotCacheable::UpstreamError)
                };
                let st = state.clone();
                state.0.background.spawn(settle.run(st, answer));
                let mut r = Response::new(Body::from(bytes));
                *r.status_mut() = status;
                copy_upstream_headers(&resp.headers, r.headers_mut());
                r
            }
            UpstreamBody::Stream(upstream) => {
                let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
                let api = self.api;
                let st = state.clone();
                state.0.background.spawn(async move {
                    tee_stream(st, api, provider, upstream, tx, settle).await;
                });
                let mut r = sse_response(Body::from_stream(ReceiverStream::new(rx)));
                *r.status_mut() = status;
                copy_upstream_headers(&resp.headers, r.headers_mut());
                r
            }
        };
        deja.apply(response.headers_mut());
        Ok(response)
    }
}

/// Forwards upstream SSE bytes to the client as they arrive while collecting the answer. If the
/// client goes away the upstream is still read to the end when the answer is to be cached (it
/// is paid for either way); otherwise reading stops.
async fn tee_stream(
    state: AppState,
    api: ApiKind,
    provider: String,
    mut upstream: crate::providers::ByteStream,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    settle: Settle,
) {
    let mut parser = SseParser::new();
    let mut collector = StreamCollector::new(api, &provider);
    let mut client_gone = false;
    let mut failed = None;
    while let Some(chunk) = upstream.next().await {
        match chunk {
            Ok(bytes) => {
                for event in parser.feed(&bytes) {
                    collector.push_event_data(&event.data);
                }
                if !client_gone && tx.send(Ok(bytes)).await.is_err() {
                    client_gone = true;
                    if settle.job.is_none() {
                        failed = Some(());
                        break;
                    }
                }
            }
            Err(e) => {
                // The router's stats count the cut; /metrics exports them.
                tracing::warn!(provider = %provider, error = %e, "upstream stream failed");
                let _ = tx
                    .send(Err(std::io::Error::other("upstream stream interrupted")))
                    .await;
                failed = Some(());
                break;
            }
        }
    }
    drop(tx);
    let answer = match failed {
        Some(()) => Err(NotCacheable::Truncated),
        None => collector.finish(),
    };
    settle.run(state, answer).await;
}

fn json_response(status: StatusCode, bytes: Bytes) -> Response {
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn sse_response(body: Body) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    r
}

fn copy_upstream_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        to.insert(k.clone(), v.clone());
    }
}

/// Client-facing error for a failed upstream call: names each attempt's provider and cause
/// (status, timeout, connect failure), never upstream URLs or bodies.
impl From<RouterError> for ApiError {
    fn from(e: RouterError) -> ApiError {
        if let Some(m) = e.untranslatable() {
            return ApiError::invalid_request(m.to_string(), None);
        }
        match e {
            RouterError::NoRoute { model } => ApiError::NoRoute { model },
            RouterError::UnknownProvider { provider } => {
                ApiError::internal(format!("route names unknown provider {provider}"))
            }
            RouterError::AllFailed { ref attempts } => {
                let causes: Vec<String> = attempts
                    .iter()
                    .map(|(p, err)| match &err.kind {
                        ProviderErrorKind::Status { status, .. } => format!("{p}: HTTP {status}"),
                        other => format!("{p}: {}", other.label()),
                    })
                    .collect();
                let message = format!("every upstream attempt failed ({})", causes.join("; "));
                let retry_after_s = e.retry_after().map(|d| d.as_secs().max(1));
                match e.status() {
                    429 => ApiError::RateLimited { retry_after_s },
                    504 => ApiError::UpstreamTimeout,
                    503 => ApiError::Overloaded { retry_after_s },
                    _ => ApiError::UpstreamUnavailable { message },
                }
            }
        }
    }
}
