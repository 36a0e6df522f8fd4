//! The heart of deja: policy (scope, cacheability, thresholds), precision guards, and the engine
//! that orchestrates exact lookup → embedding → index search → guards, and inserts answers after
//! they were served. Unit-testable without HTTP; the server and `deja bench` both call it.
pub mod blocking;
pub mod engine;
pub mod guards;
pub mod policy;
pub mod restore;
pub mod singleflight;

pub use blocking::LookupLimits;
pub use engine::{CacheEngine, CacheError, Candidate, EngineSettings, Lookup, LookupTrace};
pub use restore::{load_index, IndexLoad};
