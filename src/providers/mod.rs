//! The upstream side of deja: on a cache miss, [`Router::send`] picks the route for the
//! request's model and walks its provider chain (retries with jittered backoff, fallback,
//! circuit breakers, timeouts) until one provider answers. Answers come back as the upstream's
//! own bytes ([`UpstreamBody::Json`] or a live [`UpstreamBody::Stream`] of SSE bytes) so the
//! server can forward them untouched while teeing them through [`SseParser`] for the cache.
//! This layer never looks inside an answer, never caches, and never logs an API key.
//!
//! # Layout
//! - [`settings`]: plain provider and route settings (the config layer fills them).
//! - `client`: one provider, one attempt, in its wire dialect (OpenAI-compatible today).
//! - `breaker`: per-provider circuit breaker.
//! - [`router`]: route by model glob, retries, backoff, fallback.
//! - [`sse`]: incremental SSE parser for the server's tee.
//! - [`error`], [`stats`], [`types`]: errors, counters for metrics, request/response types.

mod breaker;
mod client;
pub mod error;
pub mod router;
pub mod settings;
pub mod sse;
pub mod stats;
pub mod types;

pub use breaker::BreakerState;
pub use error::{ProviderError, ProviderErrorKind, RouterConfigError, RouterError};
pub use router::{Route, Router};
pub use settings::{ProviderKind, ProviderSettings, RouteSettings, RouteTarget};
pub use sse::{SseEvent, SseParser};
pub use stats::{ProviderStats, ProviderStatsSnapshot};
pub use types::{ByteStream, UpstreamBody, UpstreamRequest, UpstreamResponse};
