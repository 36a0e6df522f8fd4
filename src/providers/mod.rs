//! The upstream side of deja: on a cache miss, [`Router::send`] picks the route for the
//! request's model and walks its provider chain (retries with jittered backoff, fallback,
//! circuit breakers, timeouts) until one provider answers. Providers are OpenAI-compatible,
//! Azure OpenAI or Anthropic ([`ProviderKind`]); a request declares its client API
//! ([`crate::api::ApiKind`], none for pass-through), and a provider that does not speak it gets
//! it translated ([`translate`]) with its answer translated back, so fallback works across
//! kinds. Answers come back in the request's API ([`UpstreamBody::Json`] or a live
//! [`UpstreamBody::Stream`] of SSE bytes, the upstream's own bytes when no translation was
//! needed) so the server can forward them while teeing them through [`SseParser`] for the cache.
//! This layer never caches and never logs an API key.
//!
//! # Layout
//! - [`settings`]: plain provider and route settings (the config layer fills them).
//! - `client`: one provider, one attempt: addressing and authentication per kind.
//! - [`translate`]: OpenAI chat ⇄ Anthropic Messages requests, answers, errors and streams.
//! - `shape`: the least a 2xx answer must be on an endpoint deja understands.
//! - `breaker`: per-provider circuit breaker, settled once per request.
//! - [`router`]: route by model glob, retries, backoff, fallback.
//! - [`sse`]: incremental SSE parser (with its caps) for the server's tee and the translator.
//! - [`error`], [`stats`], [`types`]: errors, counters for metrics, request/response types.

mod breaker;
mod client;
pub mod error;
pub mod router;
pub mod settings;
mod shape;
pub mod sse;
pub mod stats;
pub mod translate;
pub mod types;

pub use breaker::BreakerState;
pub use error::{ProviderError, ProviderErrorKind, RouterConfigError, RouterError};
pub use router::{Route, Router};
pub use settings::{ProviderKind, ProviderSettings, RouteSettings, RouteTarget};
pub use settings::{ANTHROPIC_DEFAULT_VERSION, AZURE_DEFAULT_API_VERSION};
pub use settings::{DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_STREAM_TIMEOUT};
pub use sse::{SseBounds, SseEvent, SseOverflow, SseParser, DEFAULT_MAX_EVENT_BYTES};
pub use stats::{ProviderStats, ProviderStatsSnapshot};
pub use translate::{TranslateError, DEFAULT_MAX_TOKENS};
pub use types::{ByteStream, UpstreamBody, UpstreamRequest, UpstreamResponse};
