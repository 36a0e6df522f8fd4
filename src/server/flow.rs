//! The cached endpoints' HTTP adapter, shared by every inbound API. It turns HTTP into the
//! cache's typed stages and back: parse and validate the body, build the
//! [`CacheRequest`], plan and look it up (`cache::request`, `cache::lookup`), then render a hit
//! or forward the miss to the routed provider and hand the answer to the miss's
//! [`Settle`](crate::cache::miss::Settle) (`cache::miss`), which tees, accounts and stores it
//! off the response path. No cache decision is made here.

use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::collect::NotCacheable;
use crate::api::error::ApiError;
use crate::api::inbound::{self, Rendered};
use crate::api::ApiKind;
use crate::cache::lookup::{Hit, LookedUp};
use crate::cache::miss::Miss;
use crate::cache::request::CacheRequest;
use crate::metrics::cost;
use crate::providers::{RouterError, UpstreamBody, UpstreamRequest};
use crate::server::headers::{client_key, forwardable_headers, DejaHeaders};
use crate::server::state::AppState;

/// Entry point for `POST /v1/chat/completions`, `/v1/completions`, `/v1/messages` and
/// `/v1/responses`.
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
            err.into_response_for(Some(api))
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
    let parsed = inbound::parse_request(api, &body)?;
    let controls = crate::server::headers::controls(headers)?;
    let req = CacheRequest::new(
        api,
        parsed,
        controls,
        client_key(headers),
        state.config(),
        started,
    )?;
    if state.router().route(req.model()).is_none() {
        return Err(ApiError::NoRoute {
            model: req.model().to_string(),
        });
    }
    let looked = req
        .plan(state.engine())
        .look_up(
            state.metrics(),
            &state.0.singleflight,
            state.judge().as_deref(),
        )
        .await;
    match looked {
        LookedUp::Hit(hit) => Ok(respond_hit(state, &req, hit)),
        LookedUp::Miss(miss) => forward(state, &req, headers, body, miss).await,
    }
}

/// Renders a stored answer as this API's response (JSON or a replayed SSE stream).
fn respond_hit(state: &AppState, req: &CacheRequest, hit: Hit) -> Response {
    let m = state.metrics();
    let Hit {
        entry,
        kind,
        similarity,
        verified,
        trace,
    } = hit;
    let usage = entry.response.usage.unwrap_or_default();
    cost::record_saved(m, &req.config, req.model(), &usage);
    let body = inbound::render_hit(
        req.api,
        &entry.response,
        req.canonical.stream,
        req.canonical.include_usage,
        req.model(),
        &req.body,
    );
    let elapsed = req.started.elapsed();
    m.requests
        .with_label_values(&[req.api.as_str(), kind.label()])
        .inc();
    m.request_seconds
        .with_label_values(&[kind.label()])
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        api = req.api.as_str(),
        outcome = kind.as_str(),
        similarity,
        entry = entry.id,
        ms = elapsed.as_secs_f64() * 1e3,
        "request"
    );
    let mut deja = DejaHeaders::new(kind.as_str());
    deja.similarity(similarity);
    if let Some(v) = verified {
        deja.verified(v.as_str());
    }
    if let Some((score, _)) = trace.model {
        deja.verifier_score(score);
    }
    deja.entry(entry.id);
    deja.timing(&trace, None, elapsed);
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

/// Sends the request upstream and streams the answer back; the miss settles it afterwards.
async fn forward(
    state: &AppState,
    req: &CacheRequest,
    headers: &HeaderMap,
    body: Bytes,
    miss: Miss,
) -> Result<Response, ApiError> {
    let mut upstream_req =
        UpstreamRequest::post_bytes(req.api.upstream_path(), body, req.canonical.stream)
            .with_client_key(req.client_key().map(str::to_string))
            .with_api(req.api);
    upstream_req.headers = forwardable_headers(headers);
    let up_started = Instant::now();
    let resp = state.router().send(upstream_req, req.model()).await?;
    let upstream_time = up_started.elapsed();
    let m = state.metrics();
    m.upstream_seconds
        .with_label_values(&[&resp.provider])
        .observe(upstream_time.as_secs_f64());
    let outcome = miss.outcome();
    m.requests
        .with_label_values(&[req.api.as_str(), outcome])
        .inc();
    let total = req.started.elapsed();
    m.request_seconds
        .with_label_values(&[outcome])
        .observe(total.as_secs_f64());
    tracing::info!(
        api = req.api.as_str(),
        outcome,
        provider = %resp.provider,
        status = resp.status,
        best_similarity = miss.best,
        lookup_ms = miss.trace.total().as_secs_f64() * 1e3,
        upstream_ms = upstream_time.as_secs_f64() * 1e3,
        "request"
    );

    let mut deja = DejaHeaders::new(outcome);
    deja.provider(&resp.provider);
    deja.timing(
        &miss.trace,
        Some(upstream_time),
        total.saturating_sub(upstream_time),
    );
    if let Some(b) = miss.best {
        deja.nearest(b);
    }
    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let ok = status.is_success();
    let settle = miss.settle(req, state.metrics_handle(), &resp.provider);
    let mut response = match resp.body {
        UpstreamBody::Json(bytes) => {
            let answer = if ok {
                inbound::collect_json(
                    req.api,
                    &bytes,
                    &resp.provider,
                    req.config.cache.max_entry_bytes,
                )
            } else {
                Err(NotCacheable::UpstreamError)
            };
            state.0.background.spawn(settle.finish(answer));
            let mut r = Response::new(Body::from(bytes));
            *r.status_mut() = status;
            copy_upstream_headers(&resp.headers, r.headers_mut());
            r
        }
        UpstreamBody::Stream(upstream) => {
            let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
            let max_event_bytes = resp.max_event_bytes;
            state
                .0
                .background
                .spawn(settle.tee(upstream, tx, max_event_bytes));
            let mut r = sse_response(Body::from_stream(ReceiverStream::new(rx)));
            *r.status_mut() = status;
            copy_upstream_headers(&resp.headers, r.headers_mut());
            r
        }
    };
    deja.apply(response.headers_mut());
    Ok(response)
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
            RouterError::AllFailed { .. } => {
                let retry_after_s = e.retry_after_secs();
                match e.status() {
                    429 => ApiError::RateLimited { retry_after_s },
                    504 => ApiError::UpstreamTimeout,
                    503 => ApiError::ProviderUnavailable {
                        message: e.client_message(),
                        retry_after_s,
                    },
                    _ => ApiError::UpstreamUnavailable {
                        message: e.client_message(),
                    },
                }
            }
        }
    }
}
