//! deja: a semantic-cache-first LLM proxy.
//!
//! # Layout
//!
//! One request walks the modules in this order:
//!
//! 1. [`server`]: its accept loop bounds each connection (header, idle and body timeouts, a
//!    connection limit), axum routes the request, and the handler hands the body to the API
//!    layer; other `/v1/*` paths are passed through uncached. It holds no cache logic.
//! 2. [`api`]: wire types for OpenAI chat/completions and Anthropic messages; each request is
//!    normalized into one canonical request, and answers are rendered back (JSON or SSE).
//! 3. [`cache`]: the policy decides whether the request is cacheable, derives its hard scope
//!    (tenant, model, system prompt, earlier turns, output-changing parameters) and threshold,
//!    then runs exact lookup → embedding → index search → precision guards.
//! 4. [`embed`], [`index`], [`store`]: the local sentence-transformer (candle, on its own
//!    threads), the per-scope vector index (flat or HNSW), and the sled store that is the source
//!    of truth for every entry.
//! 5. [`providers`]: on a miss, the routed provider chain answers; the answer streams back to the
//!    client and is inserted into store and index after the response, off the hot path.
//!
//! [`config`] turns `config.toml` into a validated [`config::Config`]; [`metrics`] exports
//! Prometheus counters; [`bench`] replays labeled datasets through the same [`cache`] code to
//! choose a threshold.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod api;
pub mod bench;
pub mod cache;
pub mod config;
pub mod embed;
pub mod index;
pub mod metrics;
pub mod providers;
pub mod server;
pub mod store;
