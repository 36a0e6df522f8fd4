//! Pass-through: `/v1/*` paths deja does not cache (`GET /v1/models`, embeddings, files, ...)
//! go to the first provider of the matching route, uncached, with the provider's key. That key
//! must only ever reach the provider's API, so a path is checked here before anything is sent:
//! no `.`/`..` segment (raw or percent-encoded, in any case, even encoded twice), no encoded
//! slash and no backslash, which URL parsers or upstream servers may read as separators.
//! `providers::client` checks the final URL again.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use percent_encoding::percent_decode;

use crate::api::error::ApiError;
use crate::api::ApiKind;
use crate::providers::{UpstreamBody, UpstreamRequest};
use crate::server::headers;
use crate::server::state::AppState;

/// Longest client path echoed in an error message.
const MAX_ECHOED_PATH: usize = 200;

/// Why a pass-through path is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// A `.` or `..` segment, however it is encoded.
    DotSegment,
    /// An encoded `/` or a `\` (raw or encoded): a separator to some parsers, not to others.
    Separator,
    /// A control character, raw or encoded.
    Control,
    /// Still percent-encoded after several rounds of decoding.
    TooEncoded,
}

impl PathError {
    fn reason(&self) -> &'static str {
        match self {
            PathError::DotSegment => "'.' and '..' path segments are not allowed",
            PathError::Separator => "encoded slashes and backslashes are not allowed in a path",
            PathError::Control => "control characters are not allowed in a path",
            PathError::TooEncoded => "a path segment is percent-encoded too many times",
        }
    }
}

/// The path to send upstream for a request path under `/v1` (`/v1/files/abc` → `/files/abc`),
/// or why it is refused. Segments are decoded until no escape is left, so `%252e%252e` is the
/// `..` an upstream that decodes twice would see.
pub fn upstream_path(path: &str) -> Result<&str, PathError> {
    let rest = path.strip_prefix("/v1").unwrap_or(path);
    for segment in rest.split('/') {
        if segment.contains('\\') {
            return Err(PathError::Separator);
        }
        let mut bytes = segment.as_bytes().to_vec();
        let mut rounds = 0;
        while bytes.contains(&b'%') {
            let decoded: Vec<u8> = percent_decode(&bytes).collect();
            if decoded == bytes {
                break;
            }
            rounds += 1;
            if rounds > 3 {
                return Err(PathError::TooEncoded);
            }
            bytes = decoded;
        }
        if bytes == b"." || bytes == b".." {
            return Err(PathError::DotSegment);
        }
        if bytes.iter().any(|b| *b == b'/' || *b == b'\\') {
            return Err(PathError::Separator);
        }
        if bytes.iter().any(|b| b.is_ascii_control()) {
            return Err(PathError::Control);
        }
    }
    Ok(rest)
}

pub async fn passthrough(State(state): State<AppState>, req: Request) -> Response {
    let api = ApiKind::for_path(req.uri().path());
    match forward(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response_for(api),
    }
}

async fn forward(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let path = upstream_path(parts.uri.path()).map_err(|e| {
        let mut shown = parts.uri.path().to_string();
        if shown.len() > MAX_ECHOED_PATH {
            let mut end = MAX_ECHOED_PATH;
            while !shown.is_char_boundary(end) {
                end -= 1;
            }
            shown.truncate(end);
            shown.push('…');
        }
        ApiError::invalid_request(
            format!("Invalid URL ({} {shown}): {}", parts.method, e.reason()),
            None,
        )
    })?;
    let path = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let bytes = super::read_body(state, body).await?;
    let model = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("model").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or_default();
    // In keys mode the deja key is checked like on the cached paths and never sent upstream.
    let config = state.config();
    let client_key = headers::client_key(&parts.headers);
    let admitted = state.0.access.admit(
        &config.keys,
        client_key.as_deref(),
        Some(model.as_str()).filter(|m| !m.is_empty()),
        &state.metrics().keys.requests,
    )?;
    let mut up = UpstreamRequest::post_bytes(path, bytes, false)
        .with_client_key(admitted.is_none().then_some(client_key).flatten());
    up.headers = headers::passthrough_headers(&parts.headers);
    up.method = parts.method.clone();
    if parts.method == Method::GET {
        up.body = axum::body::Bytes::new();
    }
    let resp = state
        .router()
        .send(up.resend_if_idempotent(), &model)
        .await?;
    let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = match resp.body {
        UpstreamBody::Json(b) => Body::from(b),
        UpstreamBody::Stream(s) => Body::from_stream(s),
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    for (k, v) in &resp.headers {
        r.headers_mut().insert(k.clone(), v.clone());
    }
    r.headers_mut()
        .insert("x-deja-cache", HeaderValue::from_static("bypass"));
    r.headers_mut().insert(
        "x-deja-provider",
        HeaderValue::from_str(&resp.provider).unwrap_or(HeaderValue::from_static("unknown")),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue12_passthrough_rejects_dot_segments() {
        for path in [
            "/v1/../_calls",
            "/v1/./models",
            "/v1/models/../../_calls",
            "/v1/%2e%2e/_calls",
            "/v1/%2E%2e/_calls",
            "/v1/.%2E/_calls",
            "/v1/%2e./_calls",
            "/v1/%2e/models",
            "/v1/%252e%252e/_calls",
            "/v1/models/..",
        ] {
            assert_eq!(upstream_path(path), Err(PathError::DotSegment), "{path}");
        }
        for path in [
            "/v1/..%2f_calls",
            "/v1/models%2F..%2F..%2F_calls",
            "/v1/..\\_calls",
            "/v1/%5c../_calls",
            "/v1/..%5C_calls",
            "/v1/%252f",
        ] {
            assert_eq!(upstream_path(path), Err(PathError::Separator), "{path}");
        }
        assert_eq!(upstream_path("/v1/a%00b"), Err(PathError::Control));
        assert_eq!(upstream_path("/v1/%2525252e"), Err(PathError::TooEncoded));
    }

    #[test]
    fn ordinary_paths_pass_unchanged() {
        for (path, up) in [
            ("/v1/models", "/models"),
            ("/v1/models/gpt-4o", "/models/gpt-4o"),
            ("/v1/files/file-abc/content", "/files/file-abc/content"),
            ("/v1/v1/models", "/v1/models"),
            ("/v1/models/my%20model", "/models/my%20model"),
            ("/v1/...", "/..."),
            ("/v1/.well-known", "/.well-known"),
            ("/v1/a..b", "/a..b"),
            ("/v1/100%", "/100%"),
        ] {
            assert_eq!(upstream_path(path), Ok(up), "{path}");
        }
    }

    #[test]
    fn anthropic_paths_get_anthropic_errors() {
        assert_eq!(
            ApiKind::for_path("/v1/messages/batches"),
            Some(ApiKind::Messages)
        );
        assert_eq!(ApiKind::for_path("/v1/messages"), Some(ApiKind::Messages));
        assert_eq!(ApiKind::for_path("/v1/messagesx"), None);
        assert_eq!(ApiKind::for_path("/v1/models"), None);
    }
}
