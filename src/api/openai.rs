//! OpenAI wire types: the requests of `POST /v1/chat/completions` and `POST /v1/completions`,
//! and the responses and stream chunks of both. Serde only: no cache or HTTP logic lives here.
//!
//! Requests must round-trip without loss, because deja forwards them upstream and hashes them
//! into the cache scope: every struct keeps fields it does not know in a flattened `extra` map,
//! and fields deja never interprets (tools, response_format, ...) stay raw JSON values.
//! Response types are lenient on input (OpenAI-compatible servers omit fields) and emit
//! OpenAI's exact shape on output (`"refusal": null`, `"logprobs": null`, ...).

mod request;
mod response;

pub use request::*;
pub use response::*;
