//! Feedback on served hits: `POST /v1/deja/feedback` for clients (same auth as the other `/v1`
//! calls; a client may only judge hits served to its own tenant) and [`admin_feedback`] for the
//! admin API (any hit). The body names the hit and the verdict:
//!
//! ```json
//! {"response_id": "dejaresp-…", "correct": false}
//! {"entry_id": 42, "correct": true}
//! ```
//!
//! `response_id` is the hit's `x-deja-response-id` header; `entry_id` (its `x-deja-entry`)
//! means the latest remembered hit of that entry. A semantic hit becomes a labeled pair; a
//! wrong one also raises the entry's own threshold to the hit's similarity, so that query and
//! every neighbour at or below that similarity miss it from then on. An exact hit is only
//! counted: there is no similarity to tighten. Each served hit takes one verdict; the hit is
//! forgotten once judged. Bad input is a 400 naming the field, an id deja does not remember a
//! 404; bodies are bounded by [`MAX_FEEDBACK_BYTES`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::cache::HitKind;
use crate::quality::pairs::{RecordedPair, Source};
use crate::quality::recent::{parse_response_id, ServedHit};
use crate::quality::Quality;
use crate::server::headers::{client_key, controls};
use crate::server::AppState;
use crate::store::EntryId;

/// Largest feedback body (bytes); past it a 413.
pub const MAX_FEEDBACK_BYTES: usize = 16 * 1024;

/// Which hit the feedback is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Response(u128),
    Entry(EntryId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackRequest {
    pub target: Target,
    pub correct: bool,
}

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::invalid_request(message, Some(param.to_string()))
}

/// Parses and validates a feedback body.
pub fn parse(body: &[u8]) -> Result<FeedbackRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson {
        message: e.to_string(),
    })?;
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid_request(
            "the feedback body must be a JSON object",
            None,
        ));
    };
    if let Some(unknown) = obj
        .keys()
        .find(|k| !["response_id", "entry_id", "correct"].contains(&k.as_str()))
    {
        return Err(bad(
            format!("unknown field `{unknown}` (expected response_id or entry_id, and correct)"),
            unknown,
        ));
    }
    let correct = match obj.get("correct") {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("`correct` must be true or false", "correct")),
        None => return Err(bad("missing field `correct` (true or false)", "correct")),
    };
    let target = match (obj.get("response_id"), obj.get("entry_id")) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "give either `response_id` or `entry_id`, not both",
                "entry_id",
            ))
        }
        (Some(r), None) => Target::Response(response_id(r)?),
        (None, Some(e)) => Target::Entry(entry_id(e)?),
        (None, None) => {
            return Err(bad(
                "missing field `response_id` (the x-deja-response-id header of the answer) or \
                 `entry_id` (its x-deja-entry header)",
                "response_id",
            ))
        }
    };
    Ok(FeedbackRequest { target, correct })
}

fn response_id(v: &Value) -> Result<u128, ApiError> {
    v.as_str().and_then(parse_response_id).ok_or_else(|| {
        bad(
            "`response_id` must be the x-deja-response-id header of a cached answer \
             (dejaresp- and 32 hex digits)",
            "response_id",
        )
    })
}

/// A number or a string of digits (the header's text).
fn entry_id(v: &Value) -> Result<EntryId, ApiError> {
    let id = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    };
    id.ok_or_else(|| {
        bad(
            "`entry_id` must be a non-negative integer (the x-deja-entry header)",
            "entry_id",
        )
    })
}

/// Applies a verdict. `tenant` restricts it to hits served to that tenant (public endpoint);
/// `None` allows any (admin). Returns the response body.
pub async fn apply(
    quality: &Arc<Quality>,
    fb: FeedbackRequest,
    tenant: Option<&str>,
) -> Result<Value, ApiError> {
    let recent = quality.recent();
    let hit = match fb.target {
        Target::Response(id) => {
            recent
                .take_response(id, tenant)
                .ok_or_else(|| ApiError::UnknownId {
                    message: "no cached answer with this response_id is remembered (unknown, \
                          already judged, or forgotten: deja remembers the last \
                          quality.recent_hits hits)"
                        .into(),
                    param: "response_id".into(),
                })?
        }
        Target::Entry(id) => recent
            .take_entry(id, tenant)
            .ok_or_else(|| ApiError::UnknownId {
                message: format!(
                    "no remembered cached answer of entry {id} (unknown, already judged, or \
                     forgotten: deja remembers the last quality.recent_hits hits)"
                ),
                param: "entry_id".into(),
            })?,
    };
    let verdict = if fb.correct { "correct" } else { "wrong" };
    let kind = match hit.kind {
        HitKind::Exact => "exact",
        HitKind::Semantic => "semantic",
    };
    let m = &quality.metrics().quality;
    m.feedback.with_label_values(&[verdict, kind]).inc();
    tracing::info!(
        entry = hit.entry,
        kind,
        verdict,
        similarity = hit.similarity,
        "feedback"
    );
    let mut out = json!({
        "recorded": false,
        "verdict": verdict,
        "kind": kind,
        "entry_id": hit.entry,
        "similarity": hit.similarity,
        "entry_min_similarity": Value::Null,
    });
    if hit.kind == HitKind::Exact {
        return Ok(out);
    }
    let ledger = Arc::clone(quality.ledger());
    let ServedHit {
        entry,
        query,
        matched,
        similarity,
        ..
    } = hit;
    let correct = fb.correct;
    let written = tokio::task::spawn_blocking(move || {
        let pair = RecordedPair::new(
            &query,
            &matched,
            correct,
            similarity,
            Source::Feedback,
            entry,
        );
        ledger.record(&pair)?;
        if correct {
            Ok(ledger.floors().floor(entry))
        } else {
            ledger.tighten(entry, similarity).map(Some)
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("feedback task failed: {e}")))?
    .map_err(|e| ApiError::internal(format!("recording feedback failed: {e}")))?;
    m.pairs
        .with_label_values(&["feedback", if correct { "true" } else { "false" }])
        .inc();
    out["recorded"] = Value::Bool(true);
    out["entry_min_similarity"] = json!(written);
    Ok(out)
}

/// The admin API's feedback (`POST /admin/feedback`): any remembered hit. Returns the response
/// body; the caller renders errors.
pub async fn admin_feedback(state: &AppState, body: &[u8]) -> Result<Value, ApiError> {
    let fb = parse(body)?;
    apply(&quality_of(state)?, fb, None).await
}

/// An axum handler for [`admin_feedback`], for the admin router to mount.
pub async fn admin_handler(State(state): State<AppState>, body: Body) -> Response {
    render(admin_body(&state, body).await)
}

async fn admin_body(state: &AppState, body: Body) -> Result<Value, ApiError> {
    let bytes = crate::server::read_body_within(state, body, MAX_FEEDBACK_BYTES).await?;
    admin_feedback(state, &bytes).await
}

/// `POST /v1/deja/feedback`.
pub async fn public_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    render(public_feedback(&state, &headers, body).await)
}

/// Admits the caller as the cached endpoints do and judges a hit served to its tenant.
async fn public_feedback(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ApiError> {
    let config = state.config();
    let key = client_key(headers);
    let admitted = state.0.access.admit(
        &config.keys,
        key.as_deref(),
        None,
        &state.metrics().keys.requests,
    )?;
    let tenant = match &admitted {
        Some(a) => a.key.tenant(),
        None => crate::cache::policy::tenant(&config, key.as_deref(), &controls(headers)?)?,
    };
    let bytes = crate::server::read_body_within(state, body, MAX_FEEDBACK_BYTES).await?;
    let fb = parse(&bytes)?;
    apply(&quality_of(state)?, fb, Some(&tenant)).await
}

fn quality_of(state: &AppState) -> Result<Arc<Quality>, ApiError> {
    state.quality().ok_or(ApiError::Overloaded {
        retry_after_s: Some(1),
    })
}

fn render(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(v) => (StatusCode::OK, axum::Json(v)).into_response(),
        Err(e) => {
            tracing::info!(error = %e, "feedback rejected");
            e.into_response_for(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(body: &str) -> (StatusCode, Option<String>) {
        match parse(body.as_bytes()) {
            Err(e) => {
                let p = e.to_openai_body()["error"]["param"]
                    .as_str()
                    .map(str::to_string);
                (e.status(), p)
            }
            Ok(f) => panic!("{body} parsed: {f:?}"),
        }
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let bad = |b| param(b);
        assert_eq!(
            bad(r#"{"response_id":"dejaresp-1"}"#).1.as_deref(),
            Some("correct")
        );
        assert_eq!(
            bad(r#"{"entry_id":3,"correct":"no"}"#).1.as_deref(),
            Some("correct")
        );
        assert_eq!(
            bad(r#"{"correct":false}"#).1.as_deref(),
            Some("response_id")
        );
        assert_eq!(
            bad(r#"{"response_id":"chatcmpl-9","correct":false}"#)
                .1
                .as_deref(),
            Some("response_id")
        );
        assert_eq!(
            bad(r#"{"entry_id":-1,"correct":false}"#).1.as_deref(),
            Some("entry_id")
        );
        assert_eq!(
            bad(r#"{"entry_id":1,"correct":false,"corect":true}"#)
                .1
                .as_deref(),
            Some("corect")
        );
        assert_eq!(
            bad(r#"{"entry_id":1,"response_id":"x","correct":true}"#)
                .1
                .as_deref(),
            Some("entry_id")
        );
        assert_eq!(bad("[1]").0, StatusCode::BAD_REQUEST);
        assert_eq!(bad("{").0, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn good_bodies_parse() {
        let f = parse(br#"{"entry_id":"42","correct":false}"#).unwrap();
        assert_eq!(f.target, Target::Entry(42));
        assert!(!f.correct);
        let id = "dejaresp-000000000000000000000000000000ff";
        let f = parse(format!(r#"{{"response_id":"{id}","correct":true}}"#).as_bytes()).unwrap();
        assert_eq!(f.target, Target::Response(255));
        assert!(f.correct);
    }
}
