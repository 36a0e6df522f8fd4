//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod mock_upstream;
pub mod binary;
pub mod harness;
