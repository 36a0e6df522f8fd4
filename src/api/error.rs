//! `ApiError`: every error deja's HTTP edge can answer with, mapped exhaustively to a status code
//! and to the body shape the client's SDK expects (OpenAI `{"error":{...}}` or Anthropic
//! `{"type":"error","error":{...}}`). This module must never put internal detail (paths, source
//! errors, upstream URLs) in a client-facing body: `Internal` is logged here and answered with a
//! generic text.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::api::ApiKind;

/// An error answered at the edge.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all (syntax error, wrong content).
    #[error("invalid JSON body: {message}")]
    InvalidJson { message: String },
    /// The JSON is well-formed but the request is not valid; `param` names the offending field
    /// path (`messages[2].role`).
    #[error("invalid request: {message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    /// `[pii] mode = "block"` found personal data of these kinds (never the values).
    #[error("request contains personal data: {kinds}")]
    PersonalData { kinds: String },
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// The client's credentials were refused by deja itself.
    #[error("unauthorized: {message}")]
    Unauthorized { message: String },
    /// The client may not use what it asked for (a namespace it was not granted).
    #[error("forbidden: {message}")]
    Forbidden { message: String },
    /// No such endpoint.
    #[error("no endpoint {method} {path}")]
    NotFound { method: String, path: String },
    /// The request names something deja does not have (a response id feedback is about);
    /// `param` names the field.
    #[error("not found: {message}")]
    UnknownId { message: String, param: String },
    /// A Responses follow-up names a response deja made (`resp_dj…`) but no longer remembers
    /// (expired, evicted, another tenant's): 400 as OpenAI answers an unknown id.
    #[error("previous response {id} not found")]
    PreviousResponseNotFound { id: String },
    /// The request conflicts with what exists (an admin key name taken, a key the config file
    /// defines): 409, `param` names the field.
    #[error("conflict: {message}")]
    Conflict { message: String, param: String },
    /// The endpoint exists but not for this method (`GET /v1/chat/completions`).
    #[error("method {method} not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// The request line or a header could not be parsed (a bad `Content-Length`, a control
    /// character in a header value, ...): answered by the connection layer before routing.
    #[error("malformed request head")]
    MalformedHead,
    #[error("request URI too long")]
    UriTooLong,
    #[error("request headers too large")]
    HeadersTooLarge,
    /// The client did not send its whole body within `server.body_read_timeout`.
    #[error("request body not received within {seconds} s")]
    BodyTimeout { seconds: f64 },
    /// No provider route serves this model.
    #[error("no route for model {model}")]
    NoRoute { model: String },
    /// The upstream answered with an error; its status and body are relayed.
    #[error("upstream answered {status}")]
    Upstream { status: u16, body: Bytes },
    /// No upstream could be reached or every provider in the chain failed.
    #[error("upstream unavailable: {message}")]
    UpstreamUnavailable { message: String },
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// No request was sent: every provider for the model has its circuit breaker open.
    /// `message` names the providers (never their URLs); `retry_after_s` is the remaining
    /// cooldown.
    #[error("providers unavailable: {message}")]
    ProviderUnavailable {
        message: String,
        retry_after_s: Option<u64>,
    },
    #[error("rate limited")]
    RateLimited { retry_after_s: Option<u64> },
    /// A deja key may not use this model (`[[keys]] models`).
    #[error("model not allowed for this key: {message}")]
    ModelNotAllowed { message: String },
    /// A deja key reached one of its own limits (`[[keys]] rpm`, `tpm`, budgets); `message`
    /// says which, `code` is `rate_limit_exceeded` or (a spent budget) `insufficient_quota`.
    #[error("key limit reached: {message}")]
    KeyLimited {
        message: String,
        retry_after_s: u64,
        code: &'static str,
    },
    /// deja is shedding load (queues full, shutting down).
    #[error("overloaded")]
    Overloaded { retry_after_s: Option<u64> },
    /// A bug or an environment failure inside deja; `detail` is logged, never sent.
    #[error("internal error: {detail}")]
    Internal { detail: String },
}

/// The error fields shared by both body shapes.
struct Parts {
    message: String,
    openai_type: &'static str,
    anthropic_type: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid_request(message: impl Into<String>, param: Option<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param,
        }
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        ApiError::Internal {
            detail: detail.into(),
        }
    }

    /// HTTP status. Exhaustive on purpose: a new variant must decide its status here.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson { .. }
            | ApiError::InvalidRequest { .. }
            | ApiError::PersonalData { .. }
            | ApiError::PreviousResponseNotFound { .. }
            | ApiError::MalformedHead => StatusCode::BAD_REQUEST,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::UriTooLong => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } | ApiError::ModelNotAllowed { .. } => StatusCode::FORBIDDEN,
            ApiError::KeyLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound { .. } | ApiError::NoRoute { .. } | ApiError::UnknownId { .. } => {
                StatusCode::NOT_FOUND
            }
            ApiError::Upstream { status, .. } => match StatusCode::from_u16(*status) {
                // A 2xx/3xx "error" is an upstream bug; anything non-error becomes a bad gateway.
                Ok(s) if s.is_client_error() || s.is_server_error() => s,
                _ => StatusCode::BAD_GATEWAY,
            },
            ApiError::UpstreamUnavailable { .. } => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::ProviderUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds for a `Retry-After` header, when the variant carries one.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after_s }
            | ApiError::Overloaded { retry_after_s }
            | ApiError::ProviderUnavailable { retry_after_s, .. } => *retry_after_s,
            ApiError::KeyLimited { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        }
    }

    fn parts(&self) -> Parts {
        let status = self.status();
        let (openai_type, anthropic_type) = types_for_status(status);
        let mut parts = Parts {
            message: String::new(),
            openai_type,
            anthropic_type,
            param: None,
            code: None,
        };
        match self {
            ApiError::InvalidJson { message } => {
                parts.message = format!(
                    "We could not parse the JSON body of your request: {message}. The API expects \
                     a JSON payload."
                );
            }
            ApiError::InvalidRequest { message, param } => {
                parts.message = message.clone();
                parts.param = param.clone();
            }
            ApiError::PersonalData { kinds } => {
                parts.message = format!(
                    "The request contains personal data ({kinds}); this deja refuses such \
                     requests ([pii] mode = \"block\"). Remove it and retry."
                );
                parts.code = Some("pii_detected");
            }
            ApiError::BodyTooLarge { limit } => {
                parts.message = format!("Request body too large: the limit is {limit} bytes.");
                parts.code = Some("request_too_large");
            }
            ApiError::Unauthorized { message } => {
                parts.message = message.clone();
                parts.code = Some("invalid_api_key");
            }
            ApiError::Forbidden { message } => {
                parts.message = message.clone();
                parts.code = Some("namespace_not_granted");
            }
            ApiError::NotFound { method, path } => {
                parts.message = format!("Invalid URL ({method} {path})");
            }
            ApiError::Conflict { message, param } => {
                parts.message = message.clone();
                parts.param = Some(param.clone());
                parts.code = Some("conflict");
            }
            ApiError::PreviousResponseNotFound { id } => {
                // The id is the client's: echoed, but never more than a real id's length.
                let shown: String = id.chars().take(64).collect();
                let cut = if shown.len() < id.len() { "…" } else { "" };
                parts.message = format!("Previous response with id '{shown}{cut}' not found.");
                parts.param = Some("previous_response_id".into());
                parts.code = Some("previous_response_not_found");
            }
            ApiError::UnknownId { message, param } => {
                parts.message = message.clone();
                parts.param = Some(param.clone());
                parts.code = Some("not_found");
            }
            ApiError::MethodNotAllowed { method, path } => {
                parts.message = format!("Method not allowed ({method} {path})");
                parts.code = Some("method_not_allowed");
            }
            ApiError::MalformedHead => {
                parts.message = "The request could not be parsed: its request line or one of \
                                 its headers is malformed (e.g. an invalid header name or value, \
                                 or a bad Content-Length)."
                    .into();
            }
            ApiError::UriTooLong => {
                parts.message = "The request URI is too long.".into();
                parts.code = Some("uri_too_long");
            }
            ApiError::HeadersTooLarge => {
                parts.message = "The request headers are too large or too many.".into();
                parts.code = Some("request_header_fields_too_large");
            }
            ApiError::BodyTimeout { seconds } => {
                parts.message =
                    format!("The request body was not received within {seconds} seconds.");
                parts.code = Some("request_timeout");
            }
            ApiError::NoRoute { model } => {
                parts.message =
                    format!("The model `{model}` does not exist or you do not have access to it.");
                parts.param = Some("model".to_string());
                parts.code = Some("model_not_found");
            }
            ApiError::Upstream { status, body } => {
                parts.message = upstream_message(body)
                    .unwrap_or_else(|| format!("The upstream provider answered HTTP {status}."));
            }
            // The message may name a provider but never its URL or key: callers build it from
            // provider names only.
            ApiError::UpstreamUnavailable { message } => {
                parts.message = message.clone();
            }
            ApiError::UpstreamTimeout => {
                parts.message = "The upstream provider did not answer in time.".to_string();
                parts.code = Some("timeout");
            }
            ApiError::ProviderUnavailable { message, .. } => {
                parts.message = message.clone();
                parts.code = Some("circuit_open");
            }
            ApiError::RateLimited { .. } => {
                parts.message = "Rate limit reached, please retry later.".to_string();
                parts.code = Some("rate_limit_exceeded");
            }
            ApiError::ModelNotAllowed { message } => {
                parts.message = message.clone();
                parts.param = Some("model".to_string());
                parts.code = Some("model_not_allowed");
            }
            ApiError::KeyLimited { message, code, .. } => {
                parts.message = message.clone();
                parts.code = Some(code);
            }
            ApiError::Overloaded { .. } => {
                parts.message = "The server is overloaded, please retry later.".to_string();
                parts.code = Some("overloaded");
            }
            ApiError::Internal { .. } => {
                parts.message = "The server had an error while processing your request.".into();
            }
        }
        parts
    }

    /// `{"error":{"message","type","param","code"}}`. An upstream body that is already
    /// OpenAI-shaped is relayed unchanged.
    pub fn to_openai_body(&self) -> Value {
        if let ApiError::Upstream { body, .. } = self {
            if let Ok(v) = serde_json::from_slice::<Value>(body) {
                if v.get("error").is_some_and(Value::is_object) && v.get("type").is_none() {
                    return v;
                }
            }
        }
        let p = self.parts();
        json!({
            "error": {
                "message": p.message,
                "type": p.openai_type,
                "param": p.param,
                "code": p.code,
            }
        })
    }

    /// `{"type":"error","error":{"type","message"}}`. An upstream body that is already
    /// Anthropic-shaped is relayed unchanged.
    pub fn to_anthropic_body(&self) -> Value {
        if let ApiError::Upstream { body, .. } = self {
            if let Ok(v) = serde_json::from_slice::<Value>(body) {
                if v.get("type").and_then(Value::as_str) == Some("error")
                    && v.get("error").is_some_and(Value::is_object)
                {
                    return v;
                }
            }
        }
        let p = self.parts();
        let message = match p.param {
            Some(param) if !p.message.contains(&param) => format!("{param}: {}", p.message),
            _ => p.message,
        };
        json!({
            "type": "error",
            "error": { "type": p.anthropic_type, "message": message }
        })
    }

    /// The error body a client of `api` expects: Anthropic's shape for [`ApiKind::Messages`],
    /// OpenAI's for the OpenAI APIs and for pass-through requests (`None`; see
    /// [`ApiKind::for_path`] for those under `/v1/messages`).
    pub fn body_for(&self, api: Option<ApiKind>) -> Value {
        match api {
            Some(ApiKind::Messages) => self.to_anthropic_body(),
            Some(ApiKind::Chat | ApiKind::Completions | ApiKind::Responses) | None => {
                self.to_openai_body()
            }
        }
    }

    /// The full HTTP response for a client of `api` (body shape as in [`ApiError::body_for`]).
    /// Logs `Internal` detail (the only place it goes).
    pub fn into_response_for(self, api: Option<ApiKind>) -> Response {
        if let ApiError::Internal { detail } = &self {
            tracing::error!(detail = %detail, "internal error answered with 500");
        }
        let body = self.body_for(api);
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = (self.status(), bytes).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after_s() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_for(None)
    }
}

/// `type` strings by status: OpenAI's and Anthropic's vocabularies.
fn types_for_status(status: StatusCode) -> (&'static str, &'static str) {
    match status.as_u16() {
        400 | 404 | 413 | 422 => (
            "invalid_request_error",
            match status.as_u16() {
                404 => "not_found_error",
                413 => "request_too_large",
                _ => "invalid_request_error",
            },
        ),
        401 => ("invalid_request_error", "authentication_error"),
        403 => ("invalid_request_error", "permission_error"),
        429 => ("rate_limit_error", "rate_limit_error"),
        503 | 529 => ("server_error", "overloaded_error"),
        504 => ("server_error", "timeout_error"),
        500 => ("server_error", "api_error"),
        s if s >= 500 => ("api_error", "api_error"),
        _ => ("invalid_request_error", "invalid_request_error"),
    }
}

/// The human message inside an upstream error body of either shape, if any.
fn upstream_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let msg = v.get("error").and_then(|e| match e {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("message").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    })?;
    Some(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_variants() -> Vec<ApiError> {
        vec![
            ApiError::InvalidJson {
                message: "EOF".into(),
            },
            ApiError::invalid_request("bad", Some("messages".into())),
            ApiError::BodyTooLarge { limit: 10 },
            ApiError::Unauthorized {
                message: "no".into(),
            },
            ApiError::Forbidden {
                message: "not granted".into(),
            },
            ApiError::NotFound {
                method: "POST".into(),
                path: "/v1/x".into(),
            },
            ApiError::MethodNotAllowed {
                method: "GET".into(),
                path: "/v1/chat/completions".into(),
            },
            ApiError::MalformedHead,
            ApiError::UriTooLong,
            ApiError::HeadersTooLarge,
            ApiError::BodyTimeout { seconds: 30.0 },
            ApiError::NoRoute { model: "m".into() },
            ApiError::Upstream {
                status: 418,
                body: Bytes::new(),
            },
            ApiError::UpstreamUnavailable {
                message: "all providers failed".into(),
            },
            ApiError::UpstreamTimeout,
            ApiError::ProviderUnavailable {
                message: "provider `a` is not taking requests".into(),
                retry_after_s: Some(7),
            },
            ApiError::RateLimited {
                retry_after_s: Some(3),
            },
            ApiError::Overloaded {
                retry_after_s: None,
            },
            ApiError::internal("sled: /var/lib/deja/db corrupted"),
        ]
    }

    #[test]
    fn status_mapping() {
        let got: Vec<u16> = all_variants().iter().map(|e| e.status().as_u16()).collect();
        assert_eq!(
            got,
            vec![
                400, 400, 413, 401, 403, 404, 405, 400, 414, 431, 408, 404, 418, 502, 504, 503,
                429, 503, 500
            ]
        );
        let weird = ApiError::Upstream {
            status: 200,
            body: Bytes::new(),
        };
        assert_eq!(weird.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn openai_body_shape_for_every_variant() {
        for e in all_variants() {
            let b = e.to_openai_body();
            let err = b["error"].as_object().expect("error object");
            for key in ["message", "type", "param", "code"] {
                assert!(err.contains_key(key), "{key} missing for {e:?}");
            }
            assert!(!err["message"].as_str().unwrap_or("").is_empty());
        }
        let b = ApiError::invalid_request("x", Some("messages[2].role".into())).to_openai_body();
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["param"], "messages[2].role");
        let b = ApiError::RateLimited {
            retry_after_s: None,
        }
        .to_openai_body();
        assert_eq!(b["error"]["type"], "rate_limit_error");
        assert_eq!(
            ApiError::internal("x").to_openai_body()["error"]["type"],
            "server_error"
        );
    }

    #[test]
    fn anthropic_body_shape_for_every_variant() {
        for e in all_variants() {
            let b = e.to_anthropic_body();
            assert_eq!(b["type"], "error");
            assert!(b["error"]["type"].is_string());
            assert!(b["error"]["message"].is_string());
        }
        let b = ApiError::Overloaded {
            retry_after_s: None,
        }
        .to_anthropic_body();
        assert_eq!(b["error"]["type"], "overloaded_error");
        let b = ApiError::NoRoute { model: "m".into() }.to_anthropic_body();
        assert_eq!(b["error"]["type"], "not_found_error");
    }

    #[test]
    fn internal_detail_never_reaches_the_client() {
        let e = ApiError::internal("sled: /var/lib/deja/db corrupted");
        for body in [e.to_openai_body(), e.to_anthropic_body()] {
            let s = body.to_string();
            assert!(!s.contains("sled") && !s.contains("/var/lib"), "{s}");
        }
    }

    #[test]
    fn upstream_bodies_are_relayed_or_wrapped() {
        let openai = br#"{"error":{"message":"Incorrect API key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        let e = ApiError::Upstream {
            status: 401,
            body: Bytes::from_static(openai),
        };
        assert_eq!(
            e.to_openai_body(),
            serde_json::from_slice::<Value>(openai).unwrap()
        );
        let a = e.to_anthropic_body();
        assert_eq!(a["error"]["type"], "authentication_error");
        assert_eq!(a["error"]["message"], "Incorrect API key");

        let anthropic =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let e = ApiError::Upstream {
            status: 529,
            body: Bytes::from_static(anthropic),
        };
        assert_eq!(e.status().as_u16(), 529);
        assert_eq!(e.to_anthropic_body()["error"]["type"], "overloaded_error");
        let o = e.to_openai_body();
        assert_eq!(o["error"]["message"], "Overloaded");
        assert_eq!(o["error"]["type"], "server_error");

        let e = ApiError::Upstream {
            status: 502,
            body: Bytes::from_static(b"<html>bad gateway</html>"),
        };
        assert_eq!(
            e.to_openai_body()["error"]["message"],
            "The upstream provider answered HTTP 502."
        );
    }

    #[tokio::test]
    async fn into_response_sets_json_and_retry_after() {
        let resp = ApiError::RateLimited {
            retry_after_s: Some(7),
        }
        .into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(resp.headers()[header::RETRY_AFTER], "7");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");

        let resp = ApiError::BodyTooLarge { limit: 5 }.into_response_for(Some(ApiKind::Messages));
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "request_too_large");
    }
}
