//! rampctl: walks Ramp rollouts through their stages and rolls back on its own. Layers, each using
//! only the ones below it (`serve` puts them together):
//!
//! 1. HTTP (`server`, with `auth` and `connections`): translates requests and domain errors.
//! 2. The service (`service`: create, command, feedback, commit a transition) and the runtime
//!    (`reconciler`: one task per rollout; `watcher`: the specs directory; `flusher`: reports
//!    and checks to the store), over the in-memory snapshots (`registry`).
//! 3. Ports and their adapters: the store (`store`, SQLite behind it), the metric sources
//!    (`sources`, `prometheus`, `custom_fetch`), the hooks (`hooks`), outgoing TLS (`tls`), the
//!    specs directory (`gitops`).
//! 4. The pure core, its own crate (`ramp-controller-core`), re-exported below under the paths
//!    its modules always had.

pub mod auth;
pub mod clock;
pub mod connections;
pub mod custom_fetch;
pub mod flusher;
pub mod gitops;
pub mod hooks;
pub mod prometheus;
pub mod reconciler;
pub mod registry;
pub mod replicas;
pub mod serve;
pub mod server;
pub mod service;
pub mod sources;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod watcher;

pub use ramp_controller_core::{
    abtest, api, bestarm, check, cuped, cuped_sim, custom_plan, custom_template, custom_verdict,
    events, exposure, guardrail, histogram, lookback, machine, posterior, ranktest, record, redact,
    report, report_html, rules, sequential, shadowstats, simulate, spec, stage_history, status,
    units, window,
};
