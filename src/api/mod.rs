//! The wire-format layer: OpenAI (and Anthropic) request/response types, request parsing with
//! field-precise errors, rendering a cached answer as a real response (JSON or SSE replay), and
//! collecting an upstream answer (JSON or SSE) into a cacheable [`crate::store::CachedResponse`].
//! Serde and bytes only: this layer never decides cacheability policy, talks to the network or
//! touches the store.
//!
//! # Layout (in request order)
//! - [`parse`]: body bytes → [`openai::ChatCompletionRequest`] / [`openai::CompletionRequest`] /
//!   [`anthropic::MessagesRequest`], or an [`ApiError`] naming the field (`messages[2].role`).
//! - [`openai`], [`anthropic`]: lossless wire types (unknown fields kept in `extra`).
//! - [`responses`]: the Responses API: validation, its chat form (the cache's key and the
//!   translators' input), rendering and collecting.
//! - [`render`] (and `anthropic::render_*`): a cache hit → JSON body or SSE replay events.
//! - [`sse`]: SSE framing, and the incremental decoder a miss's upstream stream is teed through.
//! - [`collect`] (and `anthropic::collect_*`): upstream answer → `CachedResponse` or the
//!   [`collect::NotCacheable`] reason.
//! - [`error`]: [`ApiError`], its status codes and both error body shapes.
//! - [`kind`]: [`ApiKind`], which client API a request speaks (cache scope, dispatch, error
//!   shape, provider translation).
//! - [`text`]: the text of a message's content, one join rule for every API.
//! - [`exact_form`]: the text the exact layer keys on (prose folded for case and trailing
//!   punctuation; code, names and quotations kept as they are).

pub mod anthropic;
pub mod canonical;
pub mod collect;
pub mod error;
pub mod exact_form;
pub mod inbound;
pub mod kind;
pub mod openai;
pub mod parse;
pub mod render;
pub mod responses;
pub mod sse;
pub mod template;
pub mod text;

pub use collect::NotCacheable;
pub use error::ApiError;
pub use kind::ApiKind;
