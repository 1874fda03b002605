//! Ramp's filter: per request, pick which model version ("arm") serves it, inside Envoy.
//!
//! The library is pure Rust with no host calls (config, selection, hashing, stat names), so it is
//! unit-tested natively, proven identical under wasm, and shared with the controller. The proxy-wasm
//! glue lives in [`glue`], compiled only for `wasm32-wasip1`, and stays thin.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod bandit;
pub mod bucket;
pub mod config;
pub mod counters;
pub mod headermap;
pub mod jsonpath;
pub mod jsonpick;
pub mod live;
pub mod metrics;
pub mod report;
pub mod request;
pub mod sample;
pub mod select;
pub mod shadow;
pub mod sim;

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod glue;
