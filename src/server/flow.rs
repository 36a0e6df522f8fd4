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
use crate::api::responses::chain;
use crate::api::ApiKind;
use crate::audit::Pending;
use crate::cache::access::{openai_duration, RateState};
use crate::cache::budget;
use crate::cache::chains::{self, ChainWrite, Resolved, WriteContext};
use crate::cache::lookup::{Hit, LookedUp};
use crate::cache::miss::Miss;
use crate::cache::privacy::{self, Screened};
use crate::cache::request::CacheRequest;
use crate::config::keys::KeyConfig;
use crate::metrics::{cost, pii};
use crate::pii::stream::StreamRestorer;
use crate::providers::{RouterError, UpstreamBody, UpstreamRequest};
use crate::quality::ServedAnswer;
use crate::server::headers::{client_key, forwardable_headers, DejaHeaders};
use crate::server::state::AppState;

/// Entry point for `POST /v1/chat/completions`, `/v1/completions`, `/v1/messages` and
/// `/v1/responses`.
pub async fn handle(state: AppState, api: ApiKind, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    match run(&state, api, &headers, body, started).await {
        Ok(resp) => resp,
        Err(err) => {
            if let Some(log) = state.audit() {
                let status = err.status().as_u16();
                crate::audit::error_line(log, api.as_str(), status, err.to_string(), started);
            }
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
    let config = state.config();
    let body = crate::api::template::apply(&config, api, body)?;
    let mut parsed = inbound::parse_request(api, &body)?;
    let controls = crate::server::headers::controls(headers)?;
    let admitted = state.0.access.admit(
        &config.keys,
        client_key(headers).as_deref(),
        Some(parsed_model(&parsed)),
        &state.metrics().keys.requests,
    )?;
    let pii_mode = config.pii.mode_for(parsed_model(&parsed));
    let screened = privacy::screen(pii_mode, &mut parsed, &state.metrics().pii)?;
    // A redacted body is what the upstream gets; an unchanged one is forwarded byte for byte.
    let body = match &screened {
        Screened::Redacted(_) => Bytes::from(serde_json::to_vec(&parsed).map_err(|e| {
            ApiError::internal(format!("re-serializing a redacted body failed: {e}"))
        })?),
        _ => body,
    };
    let req = CacheRequest::new(
        api,
        parsed,
        controls,
        // A deja key never goes upstream: the provider's own key is used.
        admitted.is_none().then(|| client_key(headers)).flatten(),
        config,
        started,
    )?;
    let req = match &admitted {
        Some(a) => req.with_tenant(a.key.tenant()),
        None => req,
    };
    // A Responses follow-up (`previous_response_id`) becomes the stateless request it stands
    // for when deja knows the conversation; upstream gets that body when only deja knows it.
    let resolved = match api {
        ApiKind::Responses => {
            let cfg = &req.config.cache.chains;
            chains::resolve(state.engine(), cfg, &req.body, &req.tenant, state.metrics()).await?
        }
        _ => Resolved::Plain,
    };
    let (req, body) = match &resolved {
        Resolved::Known {
            body: expanded,
            forward_expanded,
            ..
        } => {
            let forwarded = match forward_expanded {
                true => Bytes::from(serde_json::to_vec(expanded).map_err(|e| {
                    ApiError::internal(format!("serializing a resolved follow-up failed: {e}"))
                })?),
                false => body,
            };
            (req.with_body(expanded.clone()), forwarded)
        }
        _ => (req, body),
    };
    let chain = ChainWrite::new(WriteContext {
        engine: state.engine(),
        cfg: &req.config.cache.chains,
        api,
        body: &req.body,
        resolved: &resolved,
        tenant: &req.tenant,
        clean: matches!(screened, Screened::Clean),
        pii: pii_mode,
        max_bytes: req.config.server.max_body_bytes,
        metrics: state.metrics_handle(),
    });
    let key = admitted.as_ref().map(|a| &a.key);
    let mut audit = state
        .audit()
        .map(|log| Pending::begin(log, &req, key.map(|k| k.name.as_str())));
    if state.router().route(req.model()).is_none() {
        return Err(ApiError::NoRoute {
            model: req.model().to_string(),
        });
    }
    let looked = if screened.skips_cache() {
        LookedUp::Miss(Miss::bypass())
    } else {
        req.plan(state.engine())
            .look_up(
                state.metrics(),
                &state.0.singleflight,
                state.judge().as_deref(),
            )
            .await
    };
    (state.metrics().lookups).count(&req.tenant, req.model(), looked.outcome());
    let mut resp = match looked {
        LookedUp::Hit(mut hit) => {
            let pii = &state.metrics().pii;
            let content = &hit.entry.response.content;
            let calls = &hit.entry.response.tool_calls;
            let has_pii = |t: &str| privacy::answer_has_pii(pii_mode, t, pii, pii::Source::Cached);
            // An entry stored before `[pii]` applied (or under `off`) is not served.
            if has_pii(content) || calls.iter().any(|c| has_pii(&c.arguments)) {
                pii.action("refused");
                let caller = Caller { key, audit, chain };
                forward(
                    state,
                    &req,
                    headers,
                    body,
                    Miss::bypass(),
                    &screened,
                    caller,
                )
                .await?
            } else {
                let price = req.config.price_for(req.model());
                let usage = hit.entry.response.usage;
                if let Some(k) = key {
                    budget::count_saved(&state.metrics().keys, &k.name, price, usage);
                }
                if let Some(line) = audit.take() {
                    let (outcome, entry) = (hit.kind.as_str(), hit.entry.id);
                    line.hit(outcome, hit.similarity, entry, usage, price, content);
                }
                if let Some(r) = screened.redaction() {
                    hit.entry.response.content = r.restore(content);
                    // Arguments are JSON text: restored values go in JSON-escaped.
                    for c in &mut hit.entry.response.tool_calls {
                        let restored = r.restore_json(&Bytes::from(c.arguments.clone()));
                        c.arguments = String::from_utf8_lossy(&restored).into_owned();
                    }
                }
                let echo = resolved.previous_id();
                let (resp, finished) = respond_hit(state, &req, hit, echo, chain.is_some());
                if let (Some(w), Some(v)) = (chain, finished) {
                    w.record(&v).await;
                }
                resp
            }
        }
        LookedUp::Miss(miss) => {
            let caller = Caller { key, audit, chain };
            forward(state, &req, headers, body, miss, &screened, caller).await?
        }
    };
    if let Some(rate) = admitted.as_ref().and_then(|a| a.requests) {
        rate_headers(&rate, resp.headers_mut());
    }
    if let Some(key) = admitted
        .as_ref()
        .map(|a| &a.key)
        .filter(|k| k.has_spend_limits())
    {
        let left = state.0.ledger.remaining(key, budget::Now::system());
        left.apply(resp.headers_mut());
    }
    Ok(resp)
}

/// Who asked (the deja key, in keys mode), the request's audit line, and where its answer's
/// conversation is remembered (Responses, `cache::chains`).
struct Caller<'a> {
    key: Option<&'a KeyConfig>,
    audit: Option<Pending>,
    chain: Option<ChainWrite>,
}

/// `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests`
/// as OpenAI sends them, for the deja key's own limit.
fn rate_headers(rate: &RateState, h: &mut HeaderMap) {
    h.insert("x-ratelimit-limit-requests", HeaderValue::from(rate.limit));
    h.insert(
        "x-ratelimit-remaining-requests",
        HeaderValue::from(rate.remaining),
    );
    if let Ok(v) = HeaderValue::from_str(&openai_duration(rate.reset)) {
        h.insert("x-ratelimit-reset-requests", v);
    }
}

/// The `model` of a validated body (wire validation has checked it is a string).
fn parsed_model(body: &serde_json::Map<String, serde_json::Value>) -> &str {
    body.get("model")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
}

/// Renders a stored answer as this API's response (JSON or a replayed SSE stream), echoing
/// `previous_id` (a resolved Responses follow-up's), and returns with it the finished
/// `response` object when `want_response` (to remember its conversation).
fn respond_hit(
    state: &AppState,
    req: &CacheRequest,
    hit: Hit,
    previous_id: Option<&str>,
    want_response: bool,
) -> (Response, Option<serde_json::Value>) {
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
    let echoed = previous_id.map(|id| {
        let mut b = (*req.body).clone();
        b.insert("previous_response_id".into(), id.into());
        b
    });
    let body = inbound::render_hit(
        req.api,
        &entry.response,
        req.canonical.stream,
        req.canonical.include_usage,
        req.model(),
        echoed.as_ref().unwrap_or(&req.body),
    );
    let finished = match (&body, want_response) {
        (_, false) => None,
        (Rendered::Json(bytes), true) => serde_json::from_slice(bytes).ok(),
        (Rendered::Sse(events), true) => chain::response_of_events(events),
    };
    // Remembered for feedback and maybe offered to a shadow check: inside `elapsed`, so the
    // hit's `deja;dur` shows what it costs.
    let response_id = state.quality().and_then(|q| {
        let served = ServedAnswer {
            entry: &entry,
            kind,
            similarity,
        };
        q.served(req, served, state.router())
    });
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
    if let Some(id) = response_id {
        deja.response_id(id);
    }
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
    (resp, finished)
}

/// Sends the request upstream and streams the answer back; the miss settles it afterwards.
async fn forward(
    state: &AppState,
    req: &CacheRequest,
    headers: &HeaderMap,
    body: Bytes,
    miss: Miss,
    screened: &Screened,
    caller: Caller<'_>,
) -> Result<Response, ApiError> {
    let ledger = &state.0.ledger;
    let charge = budget::reserve_for(ledger, caller.key, req, &state.metrics().keys).await?;
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
    let (miss_best, lookup_ms) = (miss.best, miss.trace.total().as_secs_f64() * 1e3);
    let settle = miss
        .settle(req, state.metrics_handle(), &resp.provider)
        .restoring(
            screened
                .redaction()
                .filter(|_| ok)
                .map(|r| StreamRestorer::new(r.clone(), req.api)),
        )
        .charging(charge)
        .auditing(caller.audit.map(|mut line| {
            let r = &mut line.record;
            r.provider = Some(resp.provider.clone());
            (r.outcome, r.status, r.similarity) = (outcome, resp.status, miss_best);
            r.ms.push(("lookup", lookup_ms));
            r.ms.push(("upstream", upstream_time.as_secs_f64() * 1e3));
            line
        }));
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
            // Remembered before the client has the id to name in a follow-up.
            if let (Some(w), true) = (caller.chain, ok) {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    w.record(&v).await;
                }
            }
            let mut r = match screened.redaction() {
                Some(red) if ok => Response::new(Body::from(red.restore_json(&bytes))),
                _ => Response::new(Body::from(bytes)),
            };
            *r.status_mut() = status;
            copy_upstream_headers(&resp.headers, r.headers_mut());
            if screened.redaction().is_some() {
                // The restored body has another length; hyper sets the right one.
                r.headers_mut().remove(axum::http::header::CONTENT_LENGTH);
            }
            r
        }
        UpstreamBody::Stream(upstream) => {
            let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
            let max_event_bytes = resp.max_event_bytes;
            let settle = settle.chaining(caller.chain.filter(|_| ok));
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
