//! Wire formats: what clients and providers send and expect, and the canonical request.
pub mod canonical;
