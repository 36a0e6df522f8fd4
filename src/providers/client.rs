//! One configured provider: its pooled HTTP client, breaker and counters, and a single attempt
//! (`send_once`) in its vendor's API: addressing and authentication per [`ProviderKind`], and
//! the request/answer translation of `providers::translate` when the request's API is not
//! the provider's, and the bounds on what comes back (`max_response_bytes`, `max_event_bytes`,
//! `stream_timeout`, the shape of a 2xx). Retries, backoff, fallback and the breaker belong to
//! the router; this file never sleeps or loops over attempts. API keys are read from the environment per request and never logged.

use crate::api::ApiKind;
use crate::providers::breaker::CircuitBreaker;
use crate::providers::error::{
    is_retryable_status, ProviderError, ProviderErrorKind, RouterConfigError,
};
use crate::providers::settings::{ProviderKind, ProviderSettings};
use crate::providers::shape;
use crate::providers::sse::{SseBounds, SseParser};
use crate::providers::stats::ProviderStats;
use crate::providers::translate::{self, TranslateError, Translation};
use crate::providers::types::{
    keep_response_header, UpstreamBody, UpstreamRequest, UpstreamResponse,
};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use std::error::Error as _;
use std::sync::Arc;
use tokio::time::Instant;

/// Request headers a caller may not pass through: the transport or the provider sets them.
const NEVER_FORWARD: [&str; 11] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "authorization",
    "x-api-key",
    "api-key",
    // Bodies are forwarded raw, so they must arrive uncompressed.
    "accept-encoding",
    "te",
    "upgrade",
    "keep-alive",
];

pub(crate) struct Provider {
    pub(crate) settings: ProviderSettings,
    base: String,
    /// Every URL this provider sends to has `base`'s origin and a path under this prefix.
    api_prefix: ApiPrefix,
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
        let api_prefix = ApiPrefix::of(&parsed, settings.kind);
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
            api_prefix,
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

    /// Translate `body` (already renamed for this target) for this provider: what the attempts
    /// send. An untranslatable request fails here, before any upstream call.
    pub(crate) fn prepare(
        &self,
        req: &UpstreamRequest,
        body: Bytes,
    ) -> Result<Prepared, ProviderError> {
        let kind = self.settings.kind;
        let translated = translate::translate_request(kind, req.api, &body).map_err(|e| {
            let err = self.translate_error(e);
            self.stats.record_error(&err.kind);
            err
        })?;
        Ok(match translated {
            None => Prepared {
                body,
                upstream: req.api,
                translation: None,
            },
            Some((body, t)) => Prepared {
                body,
                upstream: Some(t.upstream),
                translation: Some(t),
            },
        })
    }

    fn translate_error(&self, e: TranslateError) -> ProviderError {
        translate_error(&self.settings.name, e)
    }

    /// The URL of one attempt, refused unless it stays under the provider's API prefix: URL
    /// parsing resolves `..` and `%2e%2e` segments, which would otherwise reach the upstream
    /// host's other endpoints with the operator's key (the server refuses such paths first;
    /// this holds for every caller).
    fn url(
        &self,
        req: &UpstreamRequest,
        prepared: &Prepared,
        model: Option<&str>,
    ) -> Result<reqwest::Url, ProviderError> {
        let url = self.address(req, prepared, model)?;
        if !self.api_prefix.contains(&url) {
            return Err(self
                .error(ProviderErrorKind::Protocol)
                .with_detail("request path leaves the provider's API prefix"));
        }
        Ok(url)
    }

    /// The URL of one attempt, per kind (see [`ProviderKind`]).
    fn address(
        &self,
        req: &UpstreamRequest,
        prepared: &Prepared,
        model: Option<&str>,
    ) -> Result<reqwest::Url, ProviderError> {
        let bad = |detail: String| self.error(ProviderErrorKind::Protocol).with_detail(detail);
        let text = match self.settings.kind {
            ProviderKind::OpenAi | ProviderKind::Gemini => match prepared.upstream {
                _ if prepared.translation.is_none() => format!("{}{}", self.base, req.path),
                Some(ApiKind::Completions) => format!("{}/completions", self.base),
                _ => format!("{}/chat/completions", self.base),
            },
            // Azure serves the Responses API only on its OpenAI-compatible v1 surface: no
            // deployment in the path (the body's `model`, renamed by the route, names it) and
            // no `api-version`.
            ProviderKind::Azure if prepared.upstream == Some(ApiKind::Responses) => {
                format!("{}/openai/v1/responses", self.base)
            }
            ProviderKind::Azure => {
                let op = match prepared.upstream {
                    Some(ApiKind::Chat) => Some("/chat/completions"),
                    Some(ApiKind::Completions) => Some("/completions"),
                    _ => ["/chat/completions", "/completions", "/embeddings"]
                        .into_iter()
                        .find(|p| req.path == *p),
                };
                let mut url = match op {
                    Some(op) => {
                        let deployment = model
                            .map(str::to_owned)
                            .or_else(|| body_model(&prepared.body))
                            .ok_or_else(|| {
                                bad("an Azure request needs a model (the deployment name)".into())
                            })?;
                        let mut url =
                            reqwest::Url::parse(&self.base).map_err(|e| bad(e.to_string()))?;
                        url.path_segments_mut()
                            .map_err(|_| bad("base_url cannot take a path".into()))?
                            .pop_if_empty()
                            .extend(["openai", "deployments", &deployment])
                            .extend(op.split('/').filter(|s| !s.is_empty()));
                        url
                    }
                    None => reqwest::Url::parse(&format!("{}/openai{}", self.base, req.path))
                        .map_err(|e| bad(e.to_string()))?,
                };
                if let Some(v) = self.settings.effective_api_version() {
                    url.query_pairs_mut().append_pair("api-version", v);
                }
                return Ok(url);
            }
            ProviderKind::Anthropic => match prepared.upstream {
                Some(ApiKind::Messages) => format!("{}/v1/messages", self.base),
                _ if req.path.starts_with("/v1/") => format!("{}{}", self.base, req.path),
                _ => format!("{}/v1{}", self.base, req.path),
            },
        };
        reqwest::Url::parse(&text).map_err(|e| bad(e.to_string()))
    }

    /// Vendor-specific addressing and authentication.
    fn build_request(
        &self,
        req: &UpstreamRequest,
        prepared: &Prepared,
        model: Option<&str>,
        key: Option<String>,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let kind = self.settings.kind;
        let mut headers = HeaderMap::new();
        for (name, value) in &req.headers {
            let n = name.as_str();
            // A translated request must not carry the other vendor's flags (`anthropic-beta`
            // to OpenAI, `openai-beta` to Anthropic).
            let foreign = prepared.translation.is_some()
                && match kind {
                    ProviderKind::Anthropic => n.starts_with("openai-"),
                    ProviderKind::OpenAi | ProviderKind::Azure | ProviderKind::Gemini => {
                        n.starts_with("anthropic-")
                    }
                };
            if !NEVER_FORWARD.contains(&n) && !foreign {
                headers.append(name.clone(), value.clone());
            }
        }
        // A translated body is JSON deja wrote; any other keeps the client's type (a multipart
        // upload needs its boundary), JSON when the caller gave none.
        let keep_type = prepared.translation.is_none() && headers.contains_key(CONTENT_TYPE);
        if !prepared.body.is_empty() && !keep_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(key) = key {
            let (name, value) = match kind {
                ProviderKind::OpenAi | ProviderKind::Gemini => {
                    (AUTHORIZATION, format!("Bearer {key}"))
                }
                ProviderKind::Azure => (HeaderName::from_static("api-key"), key),
                ProviderKind::Anthropic => (HeaderName::from_static("x-api-key"), key),
            };
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                self.error(ProviderErrorKind::Protocol)
                    .with_detail("API key is not a valid header value")
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        if kind == ProviderKind::Anthropic {
            if let Some(v) = self.settings.effective_api_version() {
                let value = HeaderValue::from_str(v).map_err(|_| {
                    self.error(ProviderErrorKind::Protocol)
                        .with_detail("api_version is not a valid header value")
                })?;
                headers.insert(HeaderName::from_static("anthropic-version"), value);
            }
        }
        for (name, value) in &self.extra_headers {
            headers.insert(name.clone(), value.clone());
        }
        let url = self.url(req, prepared, model)?;
        let mut builder = self
            .client
            .request(req.method.clone(), url)
            .headers(headers);
        if !prepared.body.is_empty() {
            builder = builder.body(prepared.body.clone());
        }
        Ok(builder)
    }

    /// One attempt. A 2xx or a non-retryable status is `Ok` (translated into the request's
    /// API when `prepared` says so); 429/5xx, transport failures and timeouts are `Err`, and
    /// so are a body over `max_response_bytes` and a 2xx that is not the shape of its endpoint.
    /// Bumps counters; the breaker is the router's, settled once per request.
    pub(crate) async fn send_once(
        &self,
        req: &UpstreamRequest,
        prepared: &Prepared,
        model: Option<String>,
    ) -> Result<UpstreamResponse, ProviderError> {
        let key = self
            .api_key(req)
            .inspect_err(|e| self.stats.record_error(&e.kind))?;
        let builder = self
            .build_request(req, prepared, model.as_deref(), key)
            .map_err(|e| self.settle_error(e))?;
        ProviderStats::bump(&self.stats.attempts);
        let sent = Instant::now();
        let deadline = sent + self.settings.request_timeout;
        let resp = match tokio::time::timeout_at(deadline, builder.send()).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                let err = self.error(classify(&e)).with_detail(error_chain(&e));
                return Err(self.settle_error(err));
            }
            Err(_) => {
                let err = self
                    .error(ProviderErrorKind::Timeout)
                    .with_detail("no response headers within request_timeout");
                return Err(self.settle_error(err));
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
            ProviderStats::bump(&self.stats.responses);
            let mut stream = self.byte_stream(resp, sent + self.settings.stream_timeout);
            if let Some(t) = &prepared.translation {
                stream = self.translated_stream(t, stream);
            }
            return Ok(UpstreamResponse {
                provider: self.settings.name.clone(),
                model,
                status,
                headers,
                body: UpstreamBody::Stream(stream),
                max_event_bytes: self.settings.max_event_bytes,
            });
        }
        let body = self
            .read_body(resp, deadline)
            .await
            .map_err(|e| self.settle_error(e))?;
        if is_retryable_status(status) {
            let err = ProviderError::status(&self.settings.name, status, &headers, &body);
            return Err(self.settle_error(err));
        }
        if success {
            self.check_shape(prepared.upstream, &body)
                .await
                .map_err(|e| self.settle_error(e))?;
        }
        let body = match &prepared.translation {
            None => body,
            Some(t) => {
                let translated = t.response_json(status, &body).map_err(|e| {
                    let err = self.translate_error(e);
                    self.stats.record_error(&err.kind);
                    err
                })?;
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                translated
            }
        };
        ProviderStats::bump(&self.stats.responses);
        Ok(UpstreamResponse {
            provider: self.settings.name.clone(),
            model,
            status,
            headers,
            body: UpstreamBody::Json(body),
            max_event_bytes: self.settings.max_event_bytes,
        })
    }

    /// The whole body, read chunk by chunk and refused at `max_response_bytes` (before reading
    /// anything when `Content-Length` already says so), by `deadline`.
    async fn read_body(
        &self,
        mut resp: reqwest::Response,
        deadline: Instant,
    ) -> Result<Bytes, ProviderError> {
        let cap = self.settings.max_response_bytes;
        let too_large = || {
            self.error(ProviderErrorKind::TooLarge {
                setting: "max_response_bytes",
                limit: cap,
            })
        };
        let announced = resp.content_length().unwrap_or(0);
        if announced > cap as u64 {
            return Err(too_large().with_detail(format!("content-length {announced}")));
        }
        let mut body = BytesMut::with_capacity(announced as usize);
        loop {
            match tokio::time::timeout_at(deadline, resp.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    if body.len() + chunk.len() > cap {
                        // Dropping `resp` closes the connection: nothing more is read.
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(Ok(None)) => return Ok(body.freeze()),
                Ok(Err(e)) => {
                    return Err(self
                        .error(ProviderErrorKind::StreamCut)
                        .with_detail(error_chain(&e)))
                }
                Err(_) => {
                    return Err(self
                        .error(ProviderErrorKind::Timeout)
                        .with_detail("body not complete within request_timeout"))
                }
            }
        }
    }

    /// [`shape::check`], on a blocking thread for a body big enough to take a while to scan.
    async fn check_shape(&self, api: Option<ApiKind>, body: &Bytes) -> Result<(), ProviderError> {
        const INLINE: usize = 256 << 10;
        let result = if body.len() <= INLINE {
            shape::check(api, body)
        } else {
            let body = body.clone();
            tokio::task::spawn_blocking(move || shape::check(api, &body))
                .await
                .unwrap_or_else(|e| {
                    let what = "could not be checked".to_string();
                    Err((ProviderErrorKind::BadResponse { what }, e.to_string()))
                })
        };
        result.map_err(|(kind, detail)| self.error(kind).with_detail(detail))
    }

    /// The upstream stream translated into the request's API; translation failures are
    /// counted like the stream errors of `byte_stream`.
    fn translated_stream(
        &self,
        t: &Translation,
        inner: crate::providers::types::ByteStream,
    ) -> crate::providers::types::ByteStream {
        let provider = self.settings.name.clone();
        let stats = Arc::clone(&self.stats);
        let on_error = Box::new(move |e: TranslateError| {
            let err = translate_error(&provider, e);
            stats.record_error(&err.kind);
            err
        });
        let parser = SseParser::with_limit(self.settings.max_event_bytes);
        let name = &self.settings.name;
        translate::translate_stream_with(inner, t.stream_translator(), on_error, parser, name)
    }

    /// Counts a failed attempt and logs it; retrying and the breaker are the router's.
    fn settle_error(&self, err: ProviderError) -> ProviderError {
        self.stats.record_error(&err.kind);
        tracing::debug!(provider = %self.settings.name, error = %err, "upstream attempt failed");
        err
    }

    /// The raw body stream, ended by an error on a cut connection, a silence longer than
    /// `read_timeout`, the `deadline` (`stream_timeout` after the request was sent), or a line
    /// or event over `max_event_bytes`.
    fn byte_stream(
        &self,
        resp: reqwest::Response,
        deadline: Instant,
    ) -> crate::providers::types::ByteStream {
        struct State {
            inner: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
            provider: String,
            read_timeout: std::time::Duration,
            deadline: Instant,
            bounds: SseBounds,
            stats: Arc<ProviderStats>,
        }
        let state = State {
            inner: resp.bytes_stream().boxed(),
            provider: self.settings.name.clone(),
            read_timeout: self.settings.read_timeout,
            deadline,
            bounds: SseBounds::new(self.settings.max_event_bytes),
            stats: Arc::clone(&self.stats),
        };
        futures::stream::unfold(Some(state), |state| async move {
            let mut st = state?;
            let fail = |st: &State, kind, detail: String| {
                st.stats.record_error(&kind);
                ProviderError::new(st.provider.clone(), kind).with_detail(detail)
            };
            let silent_until = Instant::now() + st.read_timeout;
            match tokio::time::timeout_at(silent_until.min(st.deadline), st.inner.next()).await {
                Ok(Some(Ok(chunk))) => match st.bounds.check(&chunk) {
                    Ok(()) => Some((Ok(chunk), Some(st))),
                    Err(o) => {
                        let kind = ProviderErrorKind::TooLarge {
                            setting: "max_event_bytes",
                            limit: o.limit(),
                        };
                        let err = fail(&st, kind, o.to_string());
                        Some((Err(err), None))
                    }
                },
                Ok(None) => None,
                Ok(Some(Err(e))) => {
                    let err = fail(&st, ProviderErrorKind::StreamCut, error_chain(&e));
                    Some((Err(err), None))
                }
                Err(_) => {
                    let detail = if Instant::now() >= st.deadline {
                        "stream not complete within stream_timeout".to_string()
                    } else {
                        format!("stream silent for {:?}", st.read_timeout)
                    };
                    let err = fail(&st, ProviderErrorKind::Timeout, detail);
                    Some((Err(err), None))
                }
            }
        })
        .boxed()
    }
}

/// The origin and path prefix a provider's URLs must keep: the base URL's, plus `/openai` for
/// Azure and `/v1` for Anthropic (see [`ProviderKind`]).
struct ApiPrefix {
    origin: reqwest::Url,
    /// Ends with `/`.
    path: String,
}

impl ApiPrefix {
    fn of(base: &reqwest::Url, kind: ProviderKind) -> ApiPrefix {
        let mut path = base.path().trim_end_matches('/').to_string();
        path.push_str(match kind {
            ProviderKind::OpenAi | ProviderKind::Gemini => "",
            ProviderKind::Azure => "/openai",
            ProviderKind::Anthropic => "/v1",
        });
        path.push('/');
        ApiPrefix {
            origin: base.clone(),
            path,
        }
    }

    fn contains(&self, url: &reqwest::Url) -> bool {
        url.origin() == self.origin.origin()
            && url.username().is_empty()
            && url.password().is_none()
            && url.path().starts_with(&self.path)
    }
}

/// What the attempts of one target send, prepared once before its retries.
pub(crate) struct Prepared {
    pub(crate) body: Bytes,
    /// The API `body` is in (`None`: pass-through).
    pub(crate) upstream: Option<ApiKind>,
    /// How answers go back into the request's API; `None` when they pass through.
    pub(crate) translation: Option<Translation>,
}

/// Request side: `Untranslatable` (a 400 for the client). Answer side: an answer the inbound
/// API cannot carry is a `Protocol` failure; an upstream error event or an early end is a cut
/// stream.
fn translate_error(provider: &str, e: TranslateError) -> ProviderError {
    match e {
        TranslateError::Untranslatable(message) => {
            ProviderError::new(provider, ProviderErrorKind::Untranslatable { message })
        }
        TranslateError::Unrepresentable(m) => {
            ProviderError::new(provider, ProviderErrorKind::Protocol).with_detail(m)
        }
        e @ (TranslateError::UpstreamError(_) | TranslateError::Truncated(_)) => {
            ProviderError::new(provider, ProviderErrorKind::StreamCut).with_detail(e.to_string())
        }
        TranslateError::Overflow(o) => ProviderError::new(
            provider,
            ProviderErrorKind::TooLarge {
                setting: "max_event_bytes",
                limit: o.limit(),
            },
        ),
    }
}

/// The `model` of a JSON body, for an Azure deployment when the router passed none.
fn body_model(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct M {
        model: String,
    }
    serde_json::from_slice::<M>(body).ok().map(|m| m.model)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn url_of(settings: ProviderSettings, req: &UpstreamRequest, model: Option<&str>) -> String {
        let p = Provider::new(settings).unwrap();
        let prepared = p.prepare(req, req.body.clone()).unwrap();
        p.url(req, &prepared, model).unwrap().to_string()
    }

    fn chat(api: Option<ApiKind>) -> UpstreamRequest {
        let body =
            serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
        let mut req = UpstreamRequest::post_json("/chat/completions", &body, false);
        req.api = api;
        req
    }

    #[test]
    fn urls_per_kind_and_api() {
        let openai = || ProviderSettings::openai("o", "http://h/v1/");
        let azure = || ProviderSettings::azure("z", "https://res.openai.azure.com/");
        let anthropic = || ProviderSettings::anthropic("a", "https://api.anthropic.com");
        assert_eq!(
            url_of(openai(), &chat(Some(ApiKind::Chat)), Some("gpt-4o")),
            "http://h/v1/chat/completions"
        );
        assert_eq!(
            url_of(openai(), &UpstreamRequest::get("/models"), None),
            "http://h/v1/models"
        );
        assert_eq!(
            url_of(azure(), &chat(Some(ApiKind::Chat)), Some("my dep")),
            "https://res.openai.azure.com/openai/deployments/my%20dep/chat/completions?api-version=2024-10-21"
        );
        let mut pinned = azure();
        pinned.api_version = Some("2025-01-01-preview".into());
        assert_eq!(
            url_of(pinned, &chat(None), None),
            "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2025-01-01-preview"
        );
        assert_eq!(
            url_of(azure(), &UpstreamRequest::get("/models"), None),
            "https://res.openai.azure.com/openai/models?api-version=2024-10-21"
        );
        let legacy = UpstreamRequest::post_json(
            "/completions",
            &serde_json::json!({"model": "inst", "prompt": "x"}),
            false,
        )
        .with_api(ApiKind::Completions);
        assert_eq!(
            url_of(azure(), &legacy, Some("inst")),
            "https://res.openai.azure.com/openai/deployments/inst/completions?api-version=2024-10-21"
        );
        assert_eq!(
            url_of(anthropic(), &chat(Some(ApiKind::Chat)), Some("claude")),
            "https://api.anthropic.com/v1/messages"
        );
        assert_eq!(
            url_of(anthropic(), &UpstreamRequest::get("/models"), None),
            "https://api.anthropic.com/v1/models"
        );
        let messages = UpstreamRequest::post_json(
            "/messages",
            &serde_json::json!({"model": "gpt-4o", "max_tokens": 5,
                                "messages": [{"role": "user", "content": "hi"}]}),
            false,
        )
        .with_api(ApiKind::Messages);
        assert_eq!(
            url_of(openai(), &messages, Some("gpt-4o")),
            "http://h/v1/chat/completions"
        );
    }

    #[test]
    fn issue12_urls_never_leave_the_api_prefix() {
        let kinds = [
            ProviderSettings::openai("o", "http://h/v1/"),
            ProviderSettings::azure("z", "https://res.openai.azure.com/"),
            ProviderSettings::anthropic("a", "https://api.anthropic.com"),
        ];
        for settings in kinds {
            let name = settings.name.clone();
            let p = Provider::new(settings).unwrap();
            for path in [
                "/../_calls",
                "/%2e%2e/_calls",
                "/%2E%2e/_calls",
                "/.%2e/_calls",
                "/models/../../_calls",
                "/..\\_calls",
                "/../../../x",
            ] {
                let req = UpstreamRequest::get(path);
                let prepared = p.prepare(&req, req.body.clone()).unwrap();
                let got = p.url(&req, &prepared, None);
                assert!(got.is_err(), "{name} {path}: {got:?}");
            }
            let req = UpstreamRequest::get("/models");
            let prepared = p.prepare(&req, req.body.clone()).unwrap();
            assert!(p.url(&req, &prepared, None).is_ok(), "{name}");
        }
    }

    #[test]
    fn untranslatable_requests_fail_before_any_attempt() {
        let p = Provider::new(ProviderSettings::anthropic("a", "http://127.0.0.1:9")).unwrap();
        let req = UpstreamRequest::post_json(
            "/completions",
            &serde_json::json!({"model": "m", "prompt": "x"}),
            false,
        )
        .with_api(ApiKind::Completions);
        let err = p.prepare(&req, req.body.clone()).err().unwrap();
        assert!(matches!(err.kind, ProviderErrorKind::Untranslatable { .. }));
        assert_eq!(p.stats.errors("untranslatable"), 1);
        assert_eq!(
            p.stats.attempts.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}
