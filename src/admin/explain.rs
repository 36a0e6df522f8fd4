//! `POST /admin/explain`: why would this request hit or miss? A dry run of the request path's
//! own stages on a body as a client would send it: wire validation, the request headers that
//! matter (`authorization`/`x-api-key` for the tenant, `x-deja-*`, `cache-control`), the PII
//! screen, the plan (`cache::policy`), the exact lookup and the semantic decision
//! ([`CacheEngine::decide_blocking`], the function the request path calls, which runs
//! `cache::verify::decide_with`). Nothing is written, no hit is recorded, no rate-limit token
//! is taken, nothing goes upstream: the LLM judge is not asked (an uncertain candidate is
//! reported as such), and the PII screen counts into a scratch registry.
//!
//! Body: `{"path": "/v1/chat/completions", "body": {...}, "headers": {...}, "top": 5}`
//! (`path` defaults to chat, `top` to [`DEFAULT_TOP`], at most [`MAX_TOP`]).

use std::collections::BTreeMap;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::AdminState;
use crate::api::error::ApiError;
use crate::api::{inbound, ApiKind};
use crate::cache::privacy;
use crate::cache::request::{CacheRequest, Planned};
use crate::cache::verify::Rule;
use crate::config::KeyHash;
use crate::server::headers::client_key;
use crate::store::{exact_key, Entry};

pub const DEFAULT_TOP: usize = 5;
pub const MAX_TOP: usize = 50;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainRequest {
    path: Option<String>,
    body: Value,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    top: Option<usize>,
}

fn api_for(path: &str) -> Option<ApiKind> {
    Some(match path {
        "/v1/chat/completions" => ApiKind::Chat,
        "/v1/completions" => ApiKind::Completions,
        "/v1/messages" => ApiKind::Messages,
        "/v1/responses" => ApiKind::Responses,
        _ => return None,
    })
}

pub async fn explain(State(state): State<AdminState>, body: Body) -> Response {
    let bytes = match crate::server::read_body(&state.app, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response_for(None),
    };
    match run(&state, &bytes).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response_for(None),
    }
}

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::invalid_request(message, Some(param.to_string()))
}

async fn run(state: &AdminState, bytes: &[u8]) -> Result<Value, ApiError> {
    let req: ExplainRequest = serde_json::from_slice(bytes).map_err(|e| {
        bad(
            format!("explain takes {{\"path\", \"body\", \"headers\", \"top\"}}: {e}"),
            "body",
        )
    })?;
    let path = req.path.as_deref().unwrap_or("/v1/chat/completions");
    let api = api_for(path).ok_or_else(|| {
        bad(
            format!(
                "'{path}' is not a cached endpoint (/v1/chat/completions, /v1/completions, \
                 /v1/messages, /v1/responses)"
            ),
            "path",
        )
    })?;
    let top = req.top.unwrap_or(DEFAULT_TOP);
    if !(1..=MAX_TOP).contains(&top) {
        return Err(bad(format!("top must be between 1 and {MAX_TOP}"), "top"));
    }
    let mut headers = HeaderMap::new();
    for (k, v) in &req.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| bad(format!("'{k}' is not a header name"), "headers"))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| bad(format!("header {k}: not a valid value"), "headers"))?;
        headers.insert(name, value);
    }
    let body = serde_json::to_vec(&req.body)
        .map_err(|e| ApiError::internal(format!("re-encoding the body: {e}")))?;

    // The request path's stages, in the flow's order (server::flow::run).
    let mut parsed = inbound::parse_request(api, &body)?;
    let controls = crate::server::headers::controls(&headers)?;
    let config = state.app.config();
    let model = parsed
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let key = client_key(&headers);
    let deja_key = match config.keys.auth {
        crate::config::AuthMode::Passthrough => None,
        crate::config::AuthMode::Keys => {
            let found = key
                .as_deref()
                .and_then(|k| config.keys.find(&KeyHash::of(k)));
            match found {
                Some(k) => Some(k.clone()),
                None => {
                    return Ok(decided(
                        json!({"api": api.as_str(), "model": model}),
                        "refused",
                        "server.auth = \"keys\" and the request carries no listed deja key: a \
                         real request gets 401",
                    ))
                }
            }
        }
    };
    let pii_mode = config.pii.mode_for(&model);
    let scratch = crate::metrics::pii::PiiMetrics::new(&prometheus::Registry::new())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let screened = match privacy::screen(pii_mode, &mut parsed, &scratch) {
        Ok(s) => s,
        Err(e) => {
            return Ok(decided(
                json!({"api": api.as_str(), "model": model}),
                "refused",
                &format!("the PII screen refuses it ({})", e.status()),
            ))
        }
    };
    let req = CacheRequest::new(
        api,
        parsed,
        controls,
        deja_key.is_none().then_some(key).flatten(),
        config.clone(),
        Instant::now(),
    )?;
    let req = match &deja_key {
        Some(k) => req.with_tenant(k.tenant()),
        None => req,
    };
    let mut out = json!({"api": api.as_str(), "model": req.model()});
    if state.app.router().route(req.model()).is_none() {
        return Ok(decided(
            out,
            "refused",
            "no [[routes]] entry matches the model: a real request gets 404",
        ));
    }
    if screened.skips_cache() {
        return Ok(decided(
            out,
            "bypass",
            "the prompt holds personal data ([pii] mode = \"skip-cache\")",
        ));
    }
    let (engine, plan) = match req.plan(state.app.engine()) {
        Planned::Bypass(reason) => return Ok(decided(out, "bypass", reason.as_str())),
        Planned::Cached { engine, plan } => (engine, plan),
    };
    out["scope"] = json!(plan.scope.to_hex());
    out["exact_key"] = json!(hex::encode(exact_key(plan.scope, &plan.prompt)));
    out["prompt"] = json!(plan.prompt);
    out["plan"] = json!({
        "read": plan.read,
        "write": plan.write,
        "semantic": plan.semantic,
        "ttl_s": plan.ttl.as_secs(),
        "rule": rule_json(&plan.rule, engine.guards_enabled()),
    });
    if !plan.read {
        return Ok(decided(
            out,
            "miss",
            "Cache-Control: no-cache: the cache is not read (the answer replaces the entry)",
        ));
    }
    let exact = {
        let (e, scope, prompt) = (engine.clone(), plan.scope, plan.prompt.clone());
        blocking(move || e.peek_exact_blocking(scope, &prompt)).await?
    };
    out["exact"] = json!({"entry": exact.as_ref().map(|e| e.id)});
    if let Some(entry) = exact {
        return Ok(served(out, pii_mode, &entry, "exact-hit", 1.0, None, None));
    }
    if !plan.semantic {
        return Ok(decided(
            out,
            "miss",
            "no exact match, and the semantic layer is skipped (conversation longer than \
             cache.max_turns, or an empty prompt)",
        ));
    }
    let embedding = engine
        .embedder()
        .embed(&plan.prompt)
        .await
        .map_err(|e| ApiError::internal(format!("embedding failed: {e}")))?;
    let (outcome, candidates) = {
        let (e, scope, prompt, rule) = (engine.clone(), plan.scope, plan.prompt.clone(), plan.rule);
        blocking(move || {
            let outcome = e.decide_blocking(scope, &prompt, &embedding, &rule)?;
            let top = e.top_candidates_blocking(scope, &prompt, &embedding, top)?;
            Ok((outcome, top))
        })
        .await?
    };
    out["candidates"] = json!(candidates
        .iter()
        .map(|(c, e)| json!({
            "id": c.id,
            "similarity": c.similarity,
            "guard": c.guard.as_str(),
            "same_content": c.same_content,
            "prompt": e.prompt,
            "model": e.response.model,
        }))
        .collect::<Vec<_>>());
    out["best_similarity"] = json!(outcome.best);
    if let Some((score, took)) = outcome.model {
        out["verifier_model"] = json!({"p_same": score, "ms": took.as_secs_f64() * 1e3});
    }
    if let Some((entry, similarity, verified)) = &outcome.hit {
        return Ok(served(
            out,
            pii_mode,
            entry,
            "semantic-hit",
            *similarity,
            Some(verified.as_str()),
            outcome.model.map(|(s, _)| s),
        ));
    }
    if let Some((entry, similarity)) = &outcome.uncertain {
        let judge = state.app.judge().is_some();
        out["decision"] = json!({
            "outcome": if judge { "uncertain" } else { "miss" },
            "entry": entry.id,
            "similarity": similarity,
            "reason": if judge {
                "between the bars: the LLM judge decides (not asked by explain); a yes is a \
                 semantic-hit, anything else a miss"
            } else {
                "between the bars and no judge configured"
            },
        });
        return Ok(out);
    }
    let reason = if let Some(g) = outcome.vetoed.first() {
        format!("the {} guard vetoed the most similar candidate", g.as_str())
    } else if outcome.unverified {
        "the most similar candidate is between the bars and no verifier confirmed it".into()
    } else if outcome.best.is_some() {
        "the most similar candidate is below every bar".into()
    } else {
        "no candidate in this scope".into()
    };
    out["decision"] = json!({
        "outcome": "miss",
        "reason": reason,
        "vetoed": outcome.vetoed.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        "unverified": outcome.unverified,
    });
    Ok(out)
}

/// A hit, unless the stored answer holds personal data the flow refuses to serve.
fn served(
    mut out: Value,
    pii_mode: crate::config::PiiMode,
    entry: &Entry,
    outcome: &str,
    similarity: f32,
    verified: Option<&str>,
    verifier_score: Option<f32>,
) -> Value {
    let scratch = crate::metrics::pii::PiiMetrics::new(&prometheus::Registry::new());
    let refused = scratch.is_ok_and(|m| {
        privacy::answer_has_pii(
            pii_mode,
            &entry.response.content,
            &m,
            crate::metrics::pii::Source::Cached,
        )
    });
    out["decision"] = if refused {
        json!({
            "outcome": "bypass",
            "entry": entry.id,
            "reason": "the stored answer holds personal data: it is not served",
        })
    } else {
        json!({
            "outcome": outcome,
            "entry": entry.id,
            "similarity": similarity,
            "verified": verified,
            "verifier_score": verifier_score,
        })
    };
    out
}

fn decided(mut out: Value, outcome: &str, reason: &str) -> Value {
    out["decision"] = json!({"outcome": outcome, "reason": reason});
    out
}

fn rule_json(rule: &Rule, engine_guards: bool) -> Value {
    json!({
        "threshold": rule.threshold,
        "verified_threshold": rule.verified_threshold,
        "guards": rule.guards && engine_guards,
        "judge_floor": rule.judge_floor,
        "model_floor": rule.model.map(|m| m.floor),
        "model_threshold": rule.model.map(|m| m.threshold),
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::cache::CacheError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::internal(format!("cache: {e}"))),
        Err(e) => Err(ApiError::internal(format!("task failed: {e}"))),
    }
}
