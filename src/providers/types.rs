//! What goes to an upstream and what comes back. The request body is the client's wire body in
//! its API ([`ApiKind`], or none for a pass-through request); the response comes back in that
//! same API: the upstream's own bytes when the provider speaks it, else translated per attempt
//! by `providers::translate`. Nothing here parses or re-encodes a body.

use crate::api::ApiKind;
use crate::providers::error::ProviderError;
use bytes::Bytes;
use futures::stream::BoxStream;
use reqwest::header::HeaderMap;
use reqwest::Method;
use std::fmt;

/// One call to make upstream, independent of which provider ends up answering it.
#[derive(Clone)]
pub struct UpstreamRequest {
    /// Appended to an OpenAI provider's base URL: `/chat/completions`, `/completions`,
    /// `/models`, or any other `/...`. Azure and Anthropic map it onto their own layouts
    /// (`/openai/deployments/{model}/...`, `/v1/...`), and a translated request goes to the
    /// path of the API it was translated into.
    pub path: String,
    pub method: Method,
    /// Wire body in `api`; empty for GET. The router touches it only to rename the `model`
    /// field for a target that asks for it, the provider only to translate it.
    pub body: Bytes,
    /// The client asked for SSE: a 2xx answer comes back as [`UpstreamBody::Stream`].
    pub stream: bool,
    /// The client's own bearer token, forwarded to providers without `api_key_env`.
    pub client_key: Option<String>,
    /// Extra per-request headers to forward (e.g. `OpenAI-Beta`); the provider's
    /// authentication and `extra_headers` take precedence.
    pub headers: HeaderMap,
    /// The client API `body` is written in; a provider of another kind gets it translated (and
    /// its answer translated back). `None` (the default: pass-through) sends it untouched to
    /// `path` (after the provider's addressing) and leaves the answer as it comes.
    pub api: Option<ApiKind>,
    /// Whether a failed attempt may be sent again (retried, or tried on the next target). True
    /// unless [`UpstreamRequest::resend_if_idempotent`] says otherwise: a completion has no
    /// side effect.
    pub resend: bool,
}

impl UpstreamRequest {
    /// `POST path` with a JSON body.
    pub fn post_json(path: impl Into<String>, body: &serde_json::Value, stream: bool) -> Self {
        UpstreamRequest {
            path: path.into(),
            method: Method::POST,
            // Serializing a Value cannot fail (its map keys are strings).
            body: Bytes::from(serde_json::to_vec(body).unwrap_or_default()),
            stream,
            client_key: None,
            headers: HeaderMap::new(),
            api: None,
            resend: true,
        }
    }

    /// `POST path` with an already-encoded JSON body.
    pub fn post_bytes(path: impl Into<String>, body: Bytes, stream: bool) -> Self {
        UpstreamRequest {
            path: path.into(),
            method: Method::POST,
            body,
            stream,
            client_key: None,
            headers: HeaderMap::new(),
            api: None,
            resend: true,
        }
    }

    /// `GET path` (e.g. `/models`).
    pub fn get(path: impl Into<String>) -> Self {
        UpstreamRequest {
            path: path.into(),
            method: Method::GET,
            body: Bytes::new(),
            stream: false,
            client_key: None,
            headers: HeaderMap::new(),
            api: None,
            resend: true,
        }
    }

    pub fn with_client_key(mut self, key: Option<String>) -> Self {
        self.client_key = key;
        self
    }

    /// Declare the body's API so that providers of another kind translate it.
    pub fn with_api(mut self, api: ApiKind) -> Self {
        self.api = Some(api);
        self
    }

    /// Send a failed attempt again (retry it, or try the next target) only when `method` is
    /// idempotent (RFC 9110 §9.2.2): for pass-through requests, since a `POST /files` or
    /// `/batches` whose answer was lost may still have taken effect.
    pub fn resend_if_idempotent(mut self) -> Self {
        self.resend = self.method.is_idempotent();
        self
    }
}

impl fmt::Debug for UpstreamRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamRequest")
            .field("path", &self.path)
            .field("method", &self.method)
            .field("body_len", &self.body.len())
            .field("stream", &self.stream)
            .field(
                "client_key",
                &self.client_key.as_ref().map(|_| "<redacted>"),
            )
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("api", &self.api)
            .field("resend", &self.resend)
            .finish()
    }
}

/// Raw SSE bytes as they arrive; an `Err` ends the stream (cut connection or idle timeout).
pub type ByteStream = BoxStream<'static, Result<Bytes, ProviderError>>;

/// The upstream's body: buffered JSON (every non-streaming answer, and every non-2xx answer),
/// or the live SSE byte stream of a successful streaming request.
pub enum UpstreamBody {
    Json(Bytes),
    Stream(ByteStream),
}

impl fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamBody::Json(b) => f.debug_tuple("Json").field(&b.len()).finish(),
            UpstreamBody::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

/// An answer from one provider: a 2xx, or a non-retryable status passed through as is.
#[derive(Debug)]
pub struct UpstreamResponse {
    /// Name of the provider that answered.
    pub provider: String,
    /// Model name sent upstream (after a target's rename), if the body had one.
    pub model: Option<String>,
    pub status: u16,
    /// Headers worth forwarding: `content-type`, `x-request-id`, `openai-*`, `x-ratelimit-*`,
    /// `retry-after*`.
    pub headers: HeaderMap,
    pub body: UpstreamBody,
    /// The answering provider's `max_event_bytes`: the cap for whoever parses the stream's
    /// events (the provider already cut the stream where it was broken).
    pub max_event_bytes: usize,
}

impl UpstreamResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The buffered body, if it is not a stream.
    pub fn json_bytes(&self) -> Option<&Bytes> {
        match &self.body {
            UpstreamBody::Json(b) => Some(b),
            UpstreamBody::Stream(_) => None,
        }
    }
}

/// Response headers forwarded to the client; the rest (hop-by-hop, cookies, server details)
/// stay upstream. `request-id` and `anthropic-ratelimit-*` are Anthropic's equivalents of
/// OpenAI's `x-request-id` and `x-ratelimit-*`.
pub(crate) fn keep_response_header(name: &str) -> bool {
    name == "content-type"
        || name == "x-request-id"
        || name == "request-id"
        || name == "retry-after"
        || name == "retry-after-ms"
        || name.starts_with("openai-")
        || name.starts_with("x-ratelimit-")
        || name.starts_with("anthropic-ratelimit-")
}
