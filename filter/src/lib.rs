//! Ramp's filter: per request, pick which model version ("arm") serves it, inside Envoy.
//!
//! The library is pure Rust with no host calls (config, selection, hashing, stat names), so it is
//! unit-tested natively, proven identical under wasm, and shared with the controller. The
//! orchestration ([`worker`]) is generic over a [`host::Host`] and tested natively against an
//! in-memory host; it logs through the `log` facade. The proxy-wasm adapter, a crate of its own
//! (`filter/adapter`, the module Envoy loads), implements that trait with Envoy's host calls and
//! routes the log records to Envoy's log; it holds the only `unsafe` code, so this crate has none.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod bandit;
pub mod bucket;
pub mod config;
pub mod counters;
pub mod discount;
pub mod guard;
pub mod guard_share;
pub mod headermap;
pub mod host;
pub mod jsonpath;
pub mod jsonpick;
pub mod keys;
pub mod kl_ucb;
pub mod live;
#[cfg(test)]
mod memhost;
pub mod metrics;
pub mod report;
pub mod request;
pub mod sample;
pub mod select;
pub mod shadow;
pub mod sim;
pub mod stream;
pub mod worker;
