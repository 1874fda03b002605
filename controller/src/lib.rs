//! Ramp's controller core: rollout specs, rule evaluation and the stage machine, as plain functions
//! over data (no network, no clock), so every decision is unit-tested. `rampctl` is the binary edge.

pub mod abtest;
pub mod auth;
pub mod bestarm;
pub mod connections;
pub mod custom_fetch;
pub mod custom_metrics;
pub mod custom_template;
pub mod custom_verdict;
pub mod exposure;
pub mod gitops;
pub mod guardrail;
pub mod histogram;
pub mod lookback;
pub mod machine;
pub mod posterior;
pub mod prometheus;
pub mod ranktest;
pub mod reconciler;
pub mod redact;
pub mod registry;
pub mod report;
pub mod report_html;
pub mod rules;
pub mod sequential;
pub mod server;
pub mod shadowstats;
pub mod simulate;
pub mod spec;
pub mod store;
pub mod summary;
pub mod telemetry;
pub mod tls;
pub mod units;
pub mod watcher;
pub mod window;
