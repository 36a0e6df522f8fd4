//! deja: a semantic-cache-first LLM proxy.
//!
//! # Layout
//!
//! One request walks the modules in this order:
//!
//! 1. [`server`]: its accept loop bounds each connection (header, idle and body timeouts, a
//!    connection limit), axum routes the request, and `server::flow` adapts HTTP to the cache's
//!    stages; other `/v1/*` paths are passed through uncached (`server::passthrough`). It makes
//!    no cache decision.
//! 2. [`api`]: wire types for OpenAI chat/completions, the Responses API and Anthropic
//!    messages; each body is validated and normalized into one canonical request (a Responses
//!    request through its chat form, so both share answers), and answers are rendered back
//!    (JSON or a replayed SSE stream).
//! 3. [`cache`]: the request path as typed stages. `cache::access` admits the request
//!    (`server.auth = "keys"`: a listed deja key, its models, its rate limit) and
//!    `cache::privacy` screens it for personal data ([`pii`]'s detectors: skip the cache,
//!    redact, or refuse); `cache::request` builds the per-request
//!    context and plans it (`cache::policy`: hard scope, decision rule, read/write, TTL);
//!    `cache::lookup` runs exact lookup → embedding → index search → the decision rule
//!    (`cache::verify`: precision guards, cosine, the lexical verifier, the optional verifier
//!    model (a cross-encoder, `embed::PairModel`), and for uncertain candidates the optional
//!    LLM judge, `cache::judge`) and yields a hit or a miss; `cache::miss` owns a miss until
//!    its upstream answer is complete,
//!    then tees, accounts and stores it off the response path.
//! 4. [`embed`], [`index`], [`store`]: the local sentence encoder (deja's native
//!    AMX/AVX-512/AVX2 BERT on CPU, candle on GPU, on its own threads), the per-scope vector
//!    index (flat below a size, HNSW above), and the sled store that is the source of truth for
//!    every entry.
//! 5. [`providers`]: on a miss, the routed provider chain answers (retries, fallback, circuit
//!    breakers, translation between OpenAI chat, Responses and Anthropic, tool calls
//!    included); the answer streams back to the
//!    client while `cache::miss` collects it.
//!
//! [`quality`] measures hit quality on live traffic: feedback on served hits tightens an
//! entry's own threshold, shadow checks compare a share of semantic hits with fresh upstream
//! answers, and both record labeled pairs that `deja bench` calibrates on.
//! The operator's side: [`admin`] serves a second, token-protected listener (stats, explain,
//! delete/purge, export/import, reload, a dashboard page) over the same engine and backend.
//!
//! [`config`] turns `config.toml` into a validated [`config::Config`]; [`metrics`] exports
//! Prometheus counters with bounded labels; [`bench`] replays labeled datasets through the same
//! [`cache`] engine to choose a threshold.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
// Unsafe code states its proof: every unsafe operation sits in an `unsafe {}` block, even inside
// an `unsafe fn`, and every block says which invariant makes it sound and where it is set up.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod admin;
pub mod api;
pub mod audit;
pub mod bench;
pub mod cache;
pub mod config;
pub mod embed;
pub mod index;
pub mod metrics;
pub mod pii;
pub mod providers;
pub mod quality;
pub mod server;
pub mod store;
