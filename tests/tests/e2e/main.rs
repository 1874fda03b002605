//! End-to-end tests: the release `.wasm` in a real Envoy (`--concurrency 2`), real model servers on
//! loopback. One binary, so the tests run in parallel threads; each starts its own Envoy on free ports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod bad_config;
mod bandit;
mod cuped;
mod custom_metrics;
mod decisions;
mod fleet;
mod gitops;
mod guard;
mod hostile_input;
mod live_state;
mod matrix;
mod metrics;
mod observability;
mod override_header;
mod replicas;
mod report;
mod rollout;
mod shadow;
mod shadow_verdicts;
mod split;
mod sticky;
mod streaming;
