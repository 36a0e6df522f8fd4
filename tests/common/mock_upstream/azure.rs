//! Azure OpenAI's addressing for the mock upstream: `POST /openai/deployments/{deployment}/
//! chat/completions?api-version=…` (and `/completions`) with an `api-key` header, answered
//! with OpenAI's bodies and Azure-shaped routing and auth errors. Test-only.

use super::openai::openai_completion;
use super::{error, json_planned, Behaviour, Planned};
use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{json, Value};

/// `POST /openai/deployments/{dep}/chat/completions?api-version=…` (and `/completions`): the
/// OpenAI answer, after Azure's own checks (api-version, api-key).
pub(super) fn plan(
    b: &Behaviour,
    call: u64,
    path: &str,
    query: Option<&str>,
    req_headers: &HeaderMap,
    body: &Value,
    headers: Vec<(&'static str, String)>,
) -> Planned {
    let azure_error = |headers, status: u16, message: &str| {
        let body = json!({"error": {"code": status.to_string(), "message": message}});
        json_planned(headers, status, Bytes::from(body.to_string()))
    };
    if path == "/openai/v1/responses" {
        // The v1 surface: the deployment is the body's `model`, no `api-version`.
        if req_headers.get("api-key").is_none() && req_headers.get("authorization").is_none() {
            return azure_error(
                headers,
                401,
                "Access denied due to invalid subscription key.",
            );
        }
        return super::responses::plan(b, call, body, headers);
    }
    let route = path.strip_prefix("/openai/deployments/").and_then(|rest| {
        let (dep, op) = rest.split_once('/')?;
        match op {
            "chat/completions" => Some((dep, true)),
            "completions" => Some((dep, false)),
            _ => None,
        }
    });
    let version = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .any(|p| p.starts_with("api-version=") && p.len() > "api-version=".len());
    let (Some((deployment, chat)), true) = (route, version) else {
        return azure_error(headers, 404, "Resource not found");
    };
    let has = |name: &str| req_headers.get(name).is_some_and(|v| !v.is_empty());
    if !has("api-key") && !has("authorization") {
        return azure_error(
            headers,
            401,
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
        );
    }
    if !body.is_object() {
        return error(
            headers,
            400,
            "We could not parse the JSON body of your request.",
            None,
        );
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(deployment)
        .to_string();
    openai_completion(b, call, body, &model, chat, headers)
}
