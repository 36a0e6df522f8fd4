//! One configured provider: its pooled HTTP client, breaker and counters, and a single attempt
//! (`send_once`) in its wire dialect. Retries, backoff and fallback belong to the router; this
//! file never sleeps or loops. API keys are read from the environment per request and never
//! logged.

use crate::providers::breaker::{CircuitBreaker, Permit};
use crate::providers::error::{
    is_retryable_status, ProviderError, ProviderErrorKind, RouterConfigError,
};
use crate::providers::settings::{ProviderKind, ProviderSettings};
use crate::providers::stats::ProviderStats;
use crate::providers::types::{
    keep_response_header, UpstreamBody, UpstreamRequest, UpstreamResponse,
};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use std::error::Error as _;
use std::sync::Arc;
use tokio::time::Instant;

/// Request headers a caller may not pass through: the transport or the provider sets them.
const NEVER_FORWARD: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "authorization",
    // Bodies are forwarded raw, so they must arrive uncompressed.
    "accept-encoding",
    "te",
    "upgrade",
    "keep-alive",
];

pub(crate) struct Provider {
    pub(crate) settings: ProviderSettings,
    base: String,
    client: reqwest::Client,
    extra_headers: HeaderMap,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) stats: Arc<ProviderStats>,
}

impl Provider {
    pub(crate) fn new(settings: ProviderSettings) -> Result<Provider, RouterConfigError> {
        let name = settings.name.clone();
        let base = settings.base_url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base).map_err(|e| RouterConfigError::BadBaseUrl {
            provider: name.clone(),
            url: settings.base_url.clone(),
            message: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(RouterConfigError::BadBaseUrl {
                provider: name,
                url: settings.base_url.clone(),
                message: "scheme must be http or https".to_string(),
            });
        }
        let mut extra_headers = HeaderMap::new();
        for (k, v) in &settings.extra_headers {
            let bad = || RouterConfigError::BadHeader {
                provider: name.clone(),
                header: k.clone(),
            };
            let key = HeaderName::from_bytes(k.as_bytes()).map_err(|_| bad())?;
            let mut value = HeaderValue::from_str(v).map_err(|_| bad())?;
            value.set_sensitive(true);
            extra_headers.append(key, value);
        }
        // One client per provider: its pool keeps connections warm to that host only.
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| RouterConfigError::HttpClient {
                provider: name.clone(),
                message: e.to_string(),
            })?;
        Ok(Provider {
            breaker: CircuitBreaker::new(settings.breaker_failures, settings.breaker_cooldown),
            settings,
            base,
            client,
            extra_headers,
            stats: Arc::new(ProviderStats::default()),
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.settings.name
    }

    fn error(&self, kind: ProviderErrorKind) -> ProviderError {
        ProviderError::new(self.settings.name.clone(), kind)
    }

    /// The key to send: the provider's own (read now, so rotation needs no restart), else the
    /// client's.
    fn api_key(&self, req: &UpstreamRequest) -> Result<Option<String>, ProviderError> {
        match &self.settings.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(key) if !key.trim().is_empty() => Ok(Some(key.trim().to_string())),
                _ => Err(self
                    .error(ProviderErrorKind::NoApiKey)
                    .with_detail(format!("environment variable {var} is unset or empty"))),
            },
            None => Ok(req.client_key.clone()),
        }
    }

    /// Dialect-specific addressing and authentication.
    fn build_request(
        &self,
        req: &UpstreamRequest,
        body: Bytes,
        key: Option<String>,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &req.headers {
            if !NEVER_FORWARD.contains(&name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
        if !body.is_empty() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let url = match self.settings.kind {
            ProviderKind::OpenAi => {
                if let Some(key) = key {
                    let mut value =
                        HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                            self.error(ProviderErrorKind::Protocol)
                                .with_detail("API key is not a valid header value")
                        })?;
                    value.set_sensitive(true);
                    headers.insert(AUTHORIZATION, value);
                }
                format!("{}{}", self.base, req.path)
            }
        };
        for (name, value) in &self.extra_headers {
            headers.insert(name.clone(), value.clone());
        }
        let mut builder = self
            .client
            .request(req.method.clone(), url)
            .headers(headers);
        if !body.is_empty() {
            builder = builder.body(body);
        }
        Ok(builder)
    }

    /// One attempt. A 2xx or a non-retryable status is `Ok`; 429/5xx, transport failures and
    /// timeouts are `Err`. Settles the breaker permit and bumps counters.
    pub(crate) async fn send_once(
        &self,
        req: &UpstreamRequest,
        body: Bytes,
        model: Option<String>,
    ) -> Result<UpstreamResponse, ProviderError> {
        let key = self
            .api_key(req)
            .inspect_err(|e| self.stats.record_error(&e.kind))?;
        let Some(permit) = self.breaker.acquire() else {
            let err = self.error(ProviderErrorKind::CircuitOpen);
            self.stats.record_error(&err.kind);
            return Err(err);
        };
        let builder = match self.build_request(req, body, key) {
            Ok(b) => b,
            Err(e) => return Err(self.settle_error(permit, e)),
        };
        ProviderStats::bump(&self.stats.attempts);
        let deadline = Instant::now() + self.settings.request_timeout;
        let resp = match tokio::time::timeout_at(deadline, builder.send()).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                let err = self.error(classify(&e)).with_detail(error_chain(&e));
                return Err(self.settle_error(permit, err));
            }
            Err(_) => {
                let err = self
                    .error(ProviderErrorKind::Timeout)
                    .with_detail("no response headers within request_timeout");
                return Err(self.settle_error(permit, err));
            }
        };
        let status = resp.status().as_u16();
        let mut headers = HeaderMap::new();
        for (name, value) in resp.headers() {
            if keep_response_header(name.as_str()) {
                headers.append(name.clone(), value.clone());
            }
        }
        let success = (200..300).contains(&status);
        if success && req.stream {
            permit.success();
            ProviderStats::bump(&self.stats.responses);
            return Ok(UpstreamResponse {
                provider: self.settings.name.clone(),
                model,
                status,
                headers,
                body: UpstreamBody::Stream(self.byte_stream(resp)),
            });
        }
        let body = match tokio::time::timeout_at(deadline, resp.bytes()).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                let err = self
                    .error(ProviderErrorKind::StreamCut)
                    .with_detail(error_chain(&e));
                return Err(self.settle_error(permit, err));
            }
            Err(_) => {
                let err = self
                    .error(ProviderErrorKind::Timeout)
                    .with_detail("body not complete within request_timeout");
                return Err(self.settle_error(permit, err));
            }
        };
        if is_retryable_status(status) {
            let err = ProviderError::status(&self.settings.name, status, &headers, &body);
            return Err(self.settle_error(permit, err));
        }
        permit.success();
        ProviderStats::bump(&self.stats.responses);
        Ok(UpstreamResponse {
            provider: self.settings.name.clone(),
            model,
            status,
            headers,
            body: UpstreamBody::Json(body),
        })
    }

    /// Retryable failures count against the breaker; the rest say nothing about health.
    fn settle_error(&self, permit: Permit<'_>, err: ProviderError) -> ProviderError {
        self.stats.record_error(&err.kind);
        if err.retryable() {
            permit.failure();
        } else {
            drop(permit);
        }
        tracing::debug!(provider = %self.settings.name, error = %err, "upstream attempt failed");
        err
    }

    /// The raw body stream, ended by an error on a cut connection or a silence longer than
    /// `read_timeout`.
    fn byte_stream(&self, resp: reqwest::Response) -> crate::providers::types::ByteStream {
        struct State {
            inner: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
            provider: String,
            read_timeout: std::time::Duration,
            stats: Arc<ProviderStats>,
        }
        let state = State {
            inner: resp.bytes_stream().boxed(),
            provider: self.settings.name.clone(),
            read_timeout: self.settings.read_timeout,
            stats: Arc::clone(&self.stats),
        };
        futures::stream::unfold(Some(state), |state| async move {
            let mut st = state?;
            let fail = |st: &State, kind, detail: String| {
                st.stats.record_error(&kind);
                ProviderError::new(st.provider.clone(), kind).with_detail(detail)
            };
            match tokio::time::timeout(st.read_timeout, st.inner.next()).await {
                Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(st))),
                Ok(None) => None,
                Ok(Some(Err(e))) => {
                    let err = fail(&st, ProviderErrorKind::StreamCut, error_chain(&e));
                    Some((Err(err), None))
                }
                Err(_) => {
                    let detail = format!("stream silent for {:?}", st.read_timeout);
                    let err = fail(&st, ProviderErrorKind::Timeout, detail);
                    Some((Err(err), None))
                }
            }
        })
        .boxed()
    }
}

fn classify(e: &reqwest::Error) -> ProviderErrorKind {
    if e.is_builder() || e.is_redirect() {
        ProviderErrorKind::Protocol
    } else if e.is_connect() {
        ProviderErrorKind::Connect
    } else if e.is_timeout() {
        ProviderErrorKind::Timeout
    } else if e.is_body() || e.is_decode() {
        ProviderErrorKind::StreamCut
    } else {
        // The connection broke or the upstream hung up before sending headers: as transient
        // as a refused connection.
        ProviderErrorKind::Connect
    }
}

/// `reqwest` hides the useful part ("connection refused") in the source chain.
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
