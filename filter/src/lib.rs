//! Ramp's filter: per request, pick which model version ("arm") serves it, inside Envoy.
//!
//! The library is pure Rust with no host calls (config, selection, hashing, stat names), so it is
//! unit-tested natively, proven identical under wasm, and shared with the controller. The
//! orchestration ([`worker`]) is generic over a [`host::Host`] and tested natively against an
//! in-memory host; the proxy-wasm adapter (`proxy`, compiled only for `wasm32-wasip1`) implements
//! that trait with Envoy's host calls and is the only code allowed `unsafe` (two raw ABI calls).
#![deny(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[forbid(unsafe_code)]
pub mod bandit;
#[forbid(unsafe_code)]
pub mod bucket;
#[forbid(unsafe_code)]
pub mod config;
#[forbid(unsafe_code)]
pub mod counters;
#[forbid(unsafe_code)]
pub mod discount;
#[forbid(unsafe_code)]
pub mod headermap;
#[forbid(unsafe_code)]
pub mod host;
#[forbid(unsafe_code)]
pub mod jsonpath;
#[forbid(unsafe_code)]
pub mod jsonpick;
#[forbid(unsafe_code)]
pub mod kl_ucb;
#[forbid(unsafe_code)]
pub mod live;
#[cfg(test)]
#[forbid(unsafe_code)]
mod memhost;
#[forbid(unsafe_code)]
pub mod metrics;
#[forbid(unsafe_code)]
pub mod report;
#[forbid(unsafe_code)]
pub mod request;
#[forbid(unsafe_code)]
pub mod sample;
#[forbid(unsafe_code)]
pub mod select;
#[forbid(unsafe_code)]
pub mod shadow;
#[forbid(unsafe_code)]
pub mod sim;
#[forbid(unsafe_code)]
pub mod worker;

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod proxy;
