//! Header plumbing: who the client is (its key, used only hashed), which request headers travel
//! upstream, and the `x-deja-*` response headers that say what the cache did. API keys never
//! reach a log line from here.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::api::error::ApiError;
use crate::cache::policy::{ControlError, RequestControls};
use crate::cache::LookupTrace;

pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The client's API key: `Authorization: Bearer …` (OpenAI) or `x-api-key` (Anthropic).
pub fn client_key(headers: &HeaderMap) -> Option<String> {
    if let Some(auth) = header_str(headers, "authorization") {
        let auth = auth.trim();
        let token = auth
            .strip_prefix("Bearer ")
            .or_else(|| auth.strip_prefix("bearer "))
            .unwrap_or(auth)
            .trim();
        if !token.is_empty() {
            return Some(token.to_string());
        }
    }
    header_str(headers, "x-api-key")
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

/// Request headers worth passing to the provider (beta flags, versions, org/project ids).
/// Authentication, hop-by-hop and deja's own headers never travel.
pub fn forwardable_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        let keep = n.starts_with("openai-")
            || n.starts_with("anthropic-")
            || n == "x-stainless-helper-method";
        if keep {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The request headers of a pass-through call (`/v1/files`, `/v1/embeddings`, ...): those of
/// [`forwardable_headers`] plus the client's `Content-Type`, since deja does not know these
/// bodies (a multipart upload must keep its boundary).
pub fn passthrough_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = forwardable_headers(headers);
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        out.insert(header::CONTENT_TYPE, ct.clone());
    }
    out
}

/// The client's cache controls (`Cache-Control`, `x-deja-threshold`, `x-deja-ttl`,
/// `x-deja-namespace`). A bad `x-deja-*` value, or one that is not visible ASCII text, is a
/// 400 whose `param` names the header, never silently ignored.
pub fn controls(headers: &HeaderMap) -> Result<RequestControls, ApiError> {
    const DEJA: [&str; 3] = ["x-deja-threshold", "x-deja-ttl", "x-deja-namespace"];
    let mut values = [None; 3];
    for (slot, name) in values.iter_mut().zip(DEJA) {
        if let Some(v) = headers.get(name) {
            *slot = Some(v.to_str().map_err(|_| {
                ApiError::invalid_request(
                    format!("header {name}: the value is not visible ASCII text"),
                    Some(name.to_string()),
                )
            })?);
        }
    }
    let [threshold, ttl, namespace] = values;
    RequestControls::parse(
        header_str(headers, "cache-control"),
        threshold,
        ttl,
        namespace,
    )
    .map_err(|e| {
        let name = match e {
            ControlError::Threshold(_) => "x-deja-threshold",
            ControlError::Ttl(_) | ControlError::TtlTooLong(_) => "x-deja-ttl",
            ControlError::Namespace => "x-deja-namespace",
        };
        ApiError::invalid_request(e.to_string(), Some(name.to_string()))
    })
}

/// The `x-deja-*` headers of one response.
pub struct DejaHeaders {
    values: Vec<(&'static str, String)>,
}

impl DejaHeaders {
    pub fn new(outcome: &str) -> DejaHeaders {
        DejaHeaders {
            values: vec![("x-deja-cache", outcome.to_string())],
        }
    }

    pub fn similarity(&mut self, s: f32) {
        self.values.push(("x-deja-similarity", format!("{s:.4}")));
    }

    /// How a semantic hit was decided: `skipped` (cosine alone), `lexical`, `model`, `judge`.
    pub fn verified(&mut self, how: &str) {
        self.values.push(("x-deja-verified", how.to_string()));
    }

    /// The verifier model's P(same) for the candidate, when it ran.
    pub fn verifier_score(&mut self, score: f32) {
        self.values
            .push(("x-deja-verifier-score", format!("{score:.4}")));
    }

    /// Best similarity seen on a miss (helps choosing a threshold).
    pub fn nearest(&mut self, s: f32) {
        self.values
            .push(("x-deja-nearest-similarity", format!("{s:.4}")));
    }

    pub fn entry(&mut self, id: u64) {
        self.values.push(("x-deja-entry", id.to_string()));
    }

    /// The id feedback names this hit by (`POST /v1/deja/feedback`).
    pub fn response_id(&mut self, id: u128) {
        self.values.push((
            "x-deja-response-id",
            crate::quality::recent::format_response_id(id),
        ));
    }

    pub fn provider(&mut self, p: &str) {
        self.values.push(("x-deja-provider", p.to_string()));
    }

    /// Where deja spent this request, in milliseconds: `x-deja-overhead-ms` (`own`, deja's own
    /// time) and `Server-Timing` (W3C), so a client or a browser's dev tools can tell embedding
    /// from search from the upstream call. Phases that did not run are left out; `deja` there is
    /// the same `own`.
    pub fn timing(&mut self, trace: &LookupTrace, upstream: Option<Duration>, own: Duration) {
        let mut parts = Vec::with_capacity(6);
        for (name, d) in [
            ("exact", Some(trace.exact)),
            ("embed", Some(trace.embed)),
            ("search", Some(trace.search)),
            ("verify", trace.model.map(|(_, d)| d)),
            ("judge", Some(trace.judge)),
            ("upstream", upstream),
        ] {
            if let Some(d) = d.filter(|d| !d.is_zero()) {
                parts.push(format!("{name};dur={:.3}", d.as_secs_f64() * 1e3));
            }
        }
        let own_ms = format!("{:.3}", own.as_secs_f64() * 1e3);
        parts.push(format!("deja;dur={own_ms}"));
        self.values.push(("x-deja-overhead-ms", own_ms));
        self.values.push(("server-timing", parts.join(", ")));
    }

    pub fn tokens_saved(&mut self, n: u32) {
        self.values.push(("x-deja-tokens-saved", n.to_string()));
    }

    pub fn apply(self, headers: &mut HeaderMap) {
        for (name, value) in self.values {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_key_from_bearer_or_x_api_key() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer sk-1"));
        assert_eq!(client_key(&h).as_deref(), Some("sk-1"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("sk-ant"));
        assert_eq!(client_key(&h).as_deref(), Some("sk-ant"));
        assert_eq!(client_key(&HeaderMap::new()), None);
    }

    #[test]
    fn auth_is_never_forwarded_as_is() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer sk-1"));
        h.insert("openai-beta", HeaderValue::from_static("assistants=v2"));
        h.insert("x-deja-threshold", HeaderValue::from_static("0.99"));
        let f = forwardable_headers(&h);
        assert!(f.get("authorization").is_none());
        assert!(f.get("x-deja-threshold").is_none());
        assert_eq!(f.get("openai-beta").unwrap(), "assistants=v2");
    }

    #[test]
    fn passthrough_keeps_the_client_content_type() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("multipart/form-data; boundary=x"),
        );
        h.insert("authorization", HeaderValue::from_static("Bearer sk-1"));
        assert!(forwardable_headers(&h).get("content-type").is_none());
        let p = passthrough_headers(&h);
        assert_eq!(p["content-type"], "multipart/form-data; boundary=x");
        assert!(p.get("authorization").is_none());
    }

    #[test]
    fn issue12_bad_deja_headers_name_the_header() {
        let param = |name: &'static str, value: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_bytes(value).unwrap());
            match controls(&h) {
                Err(ApiError::InvalidRequest { param, message }) => {
                    assert!(message.contains(name), "{message}");
                    param
                }
                other => panic!("{name}: {other:?}"),
            }
        };
        assert_eq!(
            param("x-deja-ttl", b"forever").as_deref(),
            Some("x-deja-ttl")
        );
        assert_eq!(
            param("x-deja-ttl", b"18446744073709552s").as_deref(),
            Some("x-deja-ttl")
        );
        assert_eq!(
            param("x-deja-threshold", b"2").as_deref(),
            Some("x-deja-threshold")
        );
        // obs-text: valid on the wire, but not text deja can read.
        assert_eq!(
            param("x-deja-namespace", b"team-\xff").as_deref(),
            Some("x-deja-namespace")
        );
        let mut h = HeaderMap::new();
        h.insert("x-deja-ttl", HeaderValue::from_static("10m"));
        h.insert("cache-control", HeaderValue::from_static("no-store"));
        let c = controls(&h).unwrap();
        assert_eq!(c.ttl, Some(Duration::from_secs(600)));
        assert!(c.no_store);
    }

    #[test]
    fn server_timing_lists_the_phases_that_ran() {
        let trace = LookupTrace {
            exact: Duration::from_micros(81),
            embed: Duration::from_micros(2_874),
            ..LookupTrace::default()
        };
        let mut d = DejaHeaders::new("miss");
        d.timing(
            &trace,
            Some(Duration::from_micros(600)),
            Duration::from_micros(3_100),
        );
        let mut h = HeaderMap::new();
        d.apply(&mut h);
        assert_eq!(
            h.get("server-timing").unwrap(),
            "exact;dur=0.081, embed;dur=2.874, upstream;dur=0.600, deja;dur=3.100"
        );
        let mut d = DejaHeaders::new("exact-hit");
        d.timing(&LookupTrace::default(), None, Duration::from_micros(40));
        let mut h = HeaderMap::new();
        d.apply(&mut h);
        assert_eq!(h.get("server-timing").unwrap(), "deja;dur=0.040");
    }
}
