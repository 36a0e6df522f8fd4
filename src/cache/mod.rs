//! The heart of deja. The cached request path is a chain of typed stages, one module each, in
//! the order a request takes them:
//!
//! 0. [`access`]: who is asking (`server.auth = "keys"`): 401, 403, or a key's rate limit;
//!    [`privacy`]: personal data in the request's texts (`[pii]`): skip the cache, redact,
//!    or refuse;
//! 1. [`request`]: the per-request context ([`CacheRequest`]) and the policy stage
//!    ([`policy`]: scope, cacheability, threshold, read/write, TTL) → [`Planned`];
//! 2. [`lookup`]: exact → embed → search → [`guards`] and the decision rule ([`verify`]) on
//!    the [`engine`] → [`LookedUp`]: a
//!    [`Hit`] to render, or a [`Miss`] (joining the [`singleflight`] when it will write);
//! 3. [`miss`]: once the upstream replied, the miss becomes a [`Settle`] that tees a stream,
//!    accounts tokens and inserts the answer after the response, off the response path.
//!
//! [`judge`] is the optional LLM judge lookup may ask about an uncertain semantic candidate
//! (`[cache.judge]`): a cheap yes/no chat call, its verdicts cached per pair.
//!
//! [`restore`] fills the index from the store at start. Unit-testable without HTTP; the server
//! adapts HTTP to these stages, and `deja bench` calls the same engine.
pub mod access;
pub mod backend;
pub mod blocking;
pub mod budget;
pub mod chains;
pub mod engine;
pub mod fleet;
pub mod guards;
pub mod judge;
pub mod lookup;
pub mod miss;
pub mod policy;
pub mod privacy;
pub mod request;
pub mod restore;
pub mod singleflight;
pub mod verify;

pub use judge::{Judge, JudgeSettings, JudgeVerdict};
pub use lookup::{Hit, HitKind, LookedUp};
pub use miss::{Miss, Settle};
pub use request::{CacheRequest, Planned};

pub use blocking::LookupLimits;
pub use engine::{CacheEngine, CacheError, EngineSettings, Lookup, LookupTrace};

/// The engine-wide knobs of the `[cache]` section. Here rather than in `engine.rs`, which knows
/// nothing of the config.
impl From<&crate::config::CacheConfig> for EngineSettings {
    fn from(c: &crate::config::CacheConfig) -> EngineSettings {
        EngineSettings { guards: c.guards }
    }
}
pub use restore::{load_index, IndexLoad};
pub use verify::{Candidate, Decision, Rule, Verified};
