//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod binary;
pub mod harness;
pub mod mock_upstream;
pub mod postgres;
pub mod providers;
