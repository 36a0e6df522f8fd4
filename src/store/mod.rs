//! The sled store (in progress).
pub mod entry;
pub use entry::*;
