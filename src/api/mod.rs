//! The wire-format layer: OpenAI (and Anthropic) request/response types, request parsing with
//! field-precise errors, rendering a cached answer as a real response (JSON or SSE replay), and
//! collecting an upstream answer (JSON or SSE) into a cacheable [`crate::store::CachedResponse`].
//! Serde and bytes only: this layer never decides cacheability policy, talks to the network or
//! touches the store.

pub mod anthropic;
// pub mod canonical;
pub mod collect;
pub mod error;
pub mod openai;
pub mod parse;
pub mod render;
pub mod sse;

pub use error::{ApiError, Dialect};
