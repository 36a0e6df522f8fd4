//! What goes to an upstream and what comes back. The request body is the final wire body (the
//! api layer built it); the response keeps the upstream's bytes untouched so that the server can
//! forward them byte for byte. Nothing here parses or re-encodes a body.

use crate::providers::error::ProviderError;
use bytes::Bytes;
use futures::stream::BoxStream;
use reqwest::header::HeaderMap;
use reqwest::Method;
use std::fmt;

/// One call to make upstream, independent of which provider ends up answering it.
#[derive(Clone)]
pub struct UpstreamRequest {
    /// Appended to the provider's base URL: `/chat/completions`, `/completions`, `/models`, or
    /// any other `/...` for passthrough.
    pub path: String,
    pub method: Method,
    /// Final wire body (OpenAI JSON); empty for GET. The router only touches it to rename the
    /// `model` field for a target that asks for it.
    pub body: Bytes,
    /// The client asked for SSE: a 2xx answer comes back as [`UpstreamBody::Stream`].
    pub stream: bool,
    /// The client's own bearer token, forwarded to providers without `api_key_env`.
    pub client_key: Option<String>,
    /// Extra per-request headers to forward (e.g. `OpenAI-Beta`); the provider's
    /// authentication and `extra_headers` take precedence.
    pub headers: HeaderMap,
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
        }
    }

    pub fn with_client_key(mut self, key: Option<String>) -> Self {
        self.client_key = key;
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
/// stay upstream.
pub(crate) fn keep_response_header(name: &str) -> bool {
    name == "content-type"
        || name == "x-request-id"
        || name == "retry-after"
        || name == "retry-after-ms"
        || name.starts_with("openai-")
        || name.starts_with("x-ratelimit-")
}
