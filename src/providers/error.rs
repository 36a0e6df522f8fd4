//! Errors of the upstream layer: one attempt's [`ProviderError`] (with whether it is worth
//! retrying and how long the upstream asked us to wait), the router's aggregate
//! [`RouterError`], and [`RouterConfigError`] for settings that cannot be built. Bodies carried
//! here are truncated and meant for logs only; they must never be sent to clients verbatim.

use reqwest::header::HeaderMap;
use std::fmt;
use std::time::{Duration, SystemTime};

/// Longest upstream error body kept for logs.
const MAX_LOGGED_BODY: usize = 512;

/// What went wrong on one attempt against one provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderErrorKind {
    /// TCP/TLS connection could not be established.
    Connect,
    /// No response headers within `request_timeout`, or a stream went silent past
    /// `read_timeout`.
    Timeout,
    /// The upstream answered with a retryable status (429 or 5xx). Other statuses are passed
    /// through as responses, not errors. `body` is truncated, for logs only.
    Status { status: u16, body: String },
    /// The upstream spoke something that is not valid HTTP, or the request could not be built.
    Protocol,
    /// The connection broke after the headers, before the body was complete.
    StreamCut,
    /// The answer broke one of this provider's size caps: a body over `max_response_bytes`, or
    /// an SSE line or event over `max_event_bytes`. Reading stopped there. Not retryable: the
    /// same request is likely to get the same answer.
    TooLarge {
        /// The config key whose cap was hit (`max_response_bytes`, `max_event_bytes`).
        setting: &'static str,
        limit: usize,
    },
    /// A 2xx answer on an endpoint deja understands is not valid JSON of that endpoint's shape
    /// (`what` says which, for logs and clients; it never quotes the body). Not retryable: the
    /// upstream did the work, a retry would pay for it again.
    BadResponse { what: String },
    /// This provider's circuit breaker is open; no request was sent.
    CircuitOpen,
    /// `api_key_env` names a variable that is unset or empty; no request was sent.
    NoApiKey,
    /// The request cannot be said faithfully in this provider's API (e.g. `n > 1` or `logprobs`
    /// for Anthropic); no request was sent. Not retryable; the client should get a 400 with
    /// `message`, which names the parameter and never contains secrets.
    Untranslatable { message: String },
}

impl ProviderErrorKind {
    /// Low-cardinality label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ProviderErrorKind::Connect => "connect",
            ProviderErrorKind::Timeout => "timeout",
            ProviderErrorKind::Status { status: 429, .. } => "rate_limited",
            ProviderErrorKind::Status { status, .. } if *status >= 500 => "server_error",
            ProviderErrorKind::Status { .. } => "status",
            ProviderErrorKind::Protocol => "protocol",
            ProviderErrorKind::StreamCut => "stream_cut",
            ProviderErrorKind::TooLarge { .. } => "too_large",
            ProviderErrorKind::BadResponse { .. } => "bad_response",
            ProviderErrorKind::CircuitOpen => "circuit_open",
            ProviderErrorKind::NoApiKey => "no_api_key",
            ProviderErrorKind::Untranslatable { .. } => "untranslatable",
        }
    }

    /// Every label [`ProviderErrorKind::label`] can return, for pre-registering metrics.
    pub const LABELS: [&'static str; 12] = [
        "connect",
        "timeout",
        "rate_limited",
        "server_error",
        "status",
        "protocol",
        "stream_cut",
        "too_large",
        "bad_response",
        "circuit_open",
        "no_api_key",
        "untranslatable",
    ];
}

impl ProviderErrorKind {
    /// The cause as a client may read it: the label, or a short text for the kinds whose
    /// label alone would not tell the client what to change. Never a body, URL or key.
    pub fn client_reason(&self) -> String {
        match self {
            ProviderErrorKind::Status { status, .. } => format!("HTTP {status}"),
            ProviderErrorKind::TooLarge { .. } | ProviderErrorKind::BadResponse { .. } => {
                self.to_string()
            }
            ProviderErrorKind::CircuitOpen => "circuit breaker open".to_string(),
            other => other.label().to_string(),
        }
    }
}

impl fmt::Display for ProviderErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderErrorKind::Connect => f.write_str("connect failed"),
            ProviderErrorKind::Timeout => f.write_str("timed out"),
            ProviderErrorKind::Status { status, body } => {
                write!(f, "upstream returned HTTP {status}: {body}")
            }
            ProviderErrorKind::Protocol => f.write_str("protocol error"),
            ProviderErrorKind::StreamCut => f.write_str("stream cut before completion"),
            ProviderErrorKind::TooLarge { setting, limit } => {
                write!(f, "answer over the {setting} cap of {limit} bytes")
            }
            ProviderErrorKind::BadResponse { what } => write!(f, "malformed answer: {what}"),
            ProviderErrorKind::CircuitOpen => f.write_str("circuit breaker open"),
            ProviderErrorKind::NoApiKey => f.write_str("API key environment variable not set"),
            ProviderErrorKind::Untranslatable { message } => {
                write!(f, "request cannot be translated: {message}")
            }
        }
    }
}

/// One failed attempt against one provider.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("provider `{provider}`: {kind}{}", detail_suffix(.detail))]
pub struct ProviderError {
    pub provider: String,
    pub kind: ProviderErrorKind,
    /// From `Retry-After` (seconds or HTTP date) or `retry-after-ms` on the failed response.
    pub retry_after: Option<Duration>,
    /// Underlying cause (transport error text), for logs.
    pub detail: String,
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

impl ProviderError {
    pub fn new(provider: impl Into<String>, kind: ProviderErrorKind) -> ProviderError {
        ProviderError {
            provider: provider.into(),
            kind,
            retry_after: None,
            detail: String::new(),
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> ProviderError {
        self.detail = detail.into();
        self
    }

    /// Failure built from a retryable status response.
    pub fn status(provider: &str, status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
        ProviderError {
            provider: provider.to_string(),
            kind: ProviderErrorKind::Status {
                status,
                body: truncate_body(body),
            },
            retry_after: parse_retry_after(headers, SystemTime::now()),
            detail: String::new(),
        }
    }

    /// Worth another attempt (same provider after backoff, or the next target): connection
    /// failures, timeouts, cut streams, 429 and 5xx, and an open breaker. Never other 4xx.
    pub fn retryable(&self) -> bool {
        match &self.kind {
            ProviderErrorKind::Connect
            | ProviderErrorKind::Timeout
            | ProviderErrorKind::StreamCut
            | ProviderErrorKind::CircuitOpen => true,
            ProviderErrorKind::Status { status, .. } => is_retryable_status(*status),
            ProviderErrorKind::Protocol
            | ProviderErrorKind::TooLarge { .. }
            | ProviderErrorKind::BadResponse { .. }
            | ProviderErrorKind::NoApiKey
            | ProviderErrorKind::Untranslatable { .. } => false,
        }
    }

    pub fn is_rate_limited(&self) -> bool {
        matches!(self.kind, ProviderErrorKind::Status { status: 429, .. })
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ProviderErrorKind::Timeout)
    }

    /// The client-facing reason when the request could not be translated for this provider.
    pub fn untranslatable_message(&self) -> Option<&str> {
        match &self.kind {
            ProviderErrorKind::Untranslatable { message } => Some(message),
            _ => None,
        }
    }
}

/// 429 and 5xx: the upstream may answer differently on the next try.
pub fn is_retryable_status(status: u16) -> bool {
    status == 429 || (500..=599).contains(&status)
}

fn truncate_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.len() <= MAX_LOGGED_BODY {
        return text.into_owned();
    }
    let mut end = MAX_LOGGED_BODY;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// `retry-after-ms` (OpenAI, Azure) wins over `Retry-After`, which may be delta-seconds
/// (fractions tolerated) or an HTTP date (relative to `now`; a past date means "now").
pub fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        if (0.0..1e9).contains(&secs) {
            return Some(Duration::from_secs_f64(secs));
        }
        return None;
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Why [`crate::providers::Router::send`] produced no response.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("no route matches model `{model}`")]
    NoRoute { model: String },
    #[error("no such provider `{provider}`")]
    UnknownProvider { provider: String },
    #[error("all upstream attempts failed: {}", summarize(.attempts))]
    AllFailed {
        /// Every attempt in order, as (provider name, error).
        attempts: Vec<(String, ProviderError)>,
    },
}

fn summarize(attempts: &[(String, ProviderError)]) -> String {
    let parts: Vec<String> = attempts.iter().map(|(_, e)| e.to_string()).collect();
    parts.join("; ")
}

impl RouterError {
    /// HTTP status for the client: `NoRoute`/`UnknownProvider` → 404; `AllFailed` → 400 when
    /// no target could take the request in its API (see [`RouterError::untranslatable`]), 429
    /// when every real attempt was rate limited, 504 when every one timed out, 503 when no
    /// attempt was made because every breaker was open, else 502. Breaker rejections are
    /// ignored when real attempts exist, since they only echo those attempts' earlier failures;
    /// untranslatable targets are ignored when another target was tried, since they say
    /// nothing about upstream health.
    pub fn status(&self) -> u16 {
        match self {
            RouterError::NoRoute { .. } | RouterError::UnknownProvider { .. } => 404,
            RouterError::AllFailed { attempts } => {
                if self.untranslatable().is_some() {
                    return 400;
                }
                let real: Vec<&ProviderError> = attempts
                    .iter()
                    .map(|(_, e)| e)
                    .filter(|e| {
                        e.kind != ProviderErrorKind::CircuitOpen
                            && e.untranslatable_message().is_none()
                    })
                    .collect();
                if real.is_empty() {
                    if attempts.is_empty() {
                        502
                    } else {
                        503
                    }
                } else if real.iter().all(|e| e.is_rate_limited()) {
                    429
                } else if real.iter().all(|e| e.is_timeout()) {
                    504
                } else {
                    502
                }
            }
        }
    }

    /// When every attempt failed because the request could not be translated for its provider
    /// (no upstream was called): the first such reason, for a 400 answer to the client.
    pub fn untranslatable(&self) -> Option<&str> {
        match self {
            RouterError::AllFailed { attempts } if !attempts.is_empty() => {
                let mut first = None;
                for (_, e) in attempts {
                    match e.untranslatable_message() {
                        Some(m) => {
                            first.get_or_insert(m);
                        }
                        None => return None,
                    }
                }
                first
            }
            _ => None,
        }
    }

    /// What the client is told about an `AllFailed`: each attempt's provider and
    /// [`ProviderErrorKind::client_reason`], or, for the 503 of [`RouterError::status`], which
    /// providers' breakers are open and when to come back. Never a URL, key or body.
    pub fn client_message(&self) -> String {
        let RouterError::AllFailed { attempts } = self else {
            return self.to_string();
        };
        if self.status() == 503 {
            let mut names: Vec<&str> = attempts
                .iter()
                .filter(|(_, e)| e.kind == ProviderErrorKind::CircuitOpen)
                .map(|(p, _)| p.as_str())
                .collect();
            names.dedup();
            let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            let wait = self.retry_after_secs().unwrap_or(1);
            let list = names.join(", ");
            return if names.len() == 1 {
                format!(
                    "provider {list} is failing: its circuit breaker is open and deja sends it \
                     no requests for now; retry in {wait} s"
                )
            } else {
                format!(
                    "providers {list} are failing: their circuit breakers are open and deja \
                     sends them no requests for now; retry in {wait} s"
                )
            };
        }
        let causes: Vec<String> = attempts
            .iter()
            .map(|(p, err)| format!("{p}: {}", err.kind.client_reason()))
            .collect();
        format!("every upstream attempt failed ({})", causes.join("; "))
    }

    /// [`RouterError::retry_after`] in whole seconds for a `Retry-After` header: rounded up,
    /// and at least 1 (a client told 0 would come back at once).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after().map(|d| {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            secs.max(1)
        })
    }

    /// Shortest `Retry-After` any attempt was given, for the client's own `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RouterError::AllFailed { attempts } => {
                attempts.iter().filter_map(|(_, e)| e.retry_after).min()
            }
            _ => None,
        }
    }
}

/// Settings the router cannot be built from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterConfigError {
    #[error("provider `{0}` is defined twice")]
    DuplicateProvider(String),
    #[error("provider `{provider}`: invalid base_url `{url}`: {message}")]
    BadBaseUrl {
        provider: String,
        url: String,
        message: String,
    },
    #[error("provider `{provider}`: invalid extra header `{header}`")]
    BadHeader { provider: String, header: String },
    #[error("provider `{provider}`: cannot build HTTP client: {message}")]
    HttpClient { provider: String, message: String },
    #[error("route `{glob}`: invalid model glob: {message}")]
    BadGlob { glob: String, message: String },
    #[error("route `{glob}` has no targets")]
    EmptyRoute { glob: String },
    #[error("route `{glob}` names unknown provider `{provider}`")]
    UnknownProvider { glob: String, provider: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_seconds_ms_and_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "3")]), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "1.5")]), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after(
                &headers(&[("retry-after", "3"), ("retry-after-ms", "250")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", &date)]), now),
            Some(Duration::from_secs(7))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", &past)]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "soon")]), now),
            None
        );
        assert_eq!(
            parse_retry_after(&headers(&[("retry-after", "-1")]), now),
            None
        );
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn retryable_classification() {
        let st = |s| {
            ProviderError::new(
                "p",
                ProviderErrorKind::Status {
                    status: s,
                    body: "".into(),
                },
            )
        };
        assert!(st(429).retryable());
        assert!(st(500).retryable());
        assert!(st(503).retryable());
        assert!(!st(400).retryable());
        assert!(!st(401).retryable());
        assert!(!st(404).retryable());
        assert!(ProviderError::new("p", ProviderErrorKind::Connect).retryable());
        assert!(ProviderError::new("p", ProviderErrorKind::Timeout).retryable());
        assert!(ProviderError::new("p", ProviderErrorKind::CircuitOpen).retryable());
        assert!(!ProviderError::new("p", ProviderErrorKind::NoApiKey).retryable());
    }

    #[test]
    fn aggregate_status() {
        let e = |k| ("p".to_string(), ProviderError::new("p", k));
        let rl = || ProviderErrorKind::Status {
            status: 429,
            body: String::new(),
        };
        let all = |v| RouterError::AllFailed { attempts: v };
        assert_eq!(all(vec![e(rl()), e(rl())]).status(), 429);
        assert_eq!(
            all(vec![e(rl()), e(ProviderErrorKind::CircuitOpen)]).status(),
            429
        );
        assert_eq!(all(vec![e(ProviderErrorKind::Timeout)]).status(), 504);
        assert_eq!(
            all(vec![e(rl()), e(ProviderErrorKind::Timeout)]).status(),
            502
        );
        assert_eq!(all(vec![e(ProviderErrorKind::CircuitOpen)]).status(), 503);
        assert_eq!(RouterError::NoRoute { model: "m".into() }.status(), 404);
    }

    #[test]
    fn untranslatable_is_a_400_only_when_no_target_could_take_it() {
        let untranslatable = |m: &str| {
            (
                "a".to_string(),
                ProviderError::new(
                    "a",
                    ProviderErrorKind::Untranslatable {
                        message: m.to_string(),
                    },
                ),
            )
        };
        let e = ProviderError::new(
            "a",
            ProviderErrorKind::Untranslatable {
                message: "x".into(),
            },
        );
        assert!(!e.retryable());
        assert_eq!(e.kind.label(), "untranslatable");
        assert!(ProviderErrorKind::LABELS.contains(&"untranslatable"));
        let all = |v| RouterError::AllFailed { attempts: v };
        let only = all(vec![untranslatable("`n` > 1"), untranslatable("`seed`")]);
        assert_eq!(only.status(), 400);
        assert_eq!(only.untranslatable(), Some("`n` > 1"));
        let rl = (
            "b".to_string(),
            ProviderError::new(
                "b",
                ProviderErrorKind::Status {
                    status: 429,
                    body: String::new(),
                },
            ),
        );
        let mixed = all(vec![rl.clone(), untranslatable("`seed`")]);
        assert_eq!(mixed.untranslatable(), None);
        assert_eq!(mixed.status(), 429);
        let timeout = (
            "b".to_string(),
            ProviderError::new("b", ProviderErrorKind::Timeout),
        );
        assert_eq!(all(vec![timeout, untranslatable("x")]).status(), 504);
        assert_eq!(all(vec![]).untranslatable(), None);
    }

    #[test]
    fn long_bodies_are_truncated_on_char_boundary() {
        let body = "é".repeat(600);
        let e = ProviderError::status("p", 500, &HeaderMap::new(), body.as_bytes());
        match e.kind {
            ProviderErrorKind::Status { body, .. } => assert!(body.len() <= MAX_LOGGED_BODY + 3),
            other => panic!("unexpected {other:?}"),
        }
    }
}
