//! Ramp's end-to-end harness: real Envoy processes with the built filter, test model servers on
//! loopback, and the helpers that the tests and the tools (`tests/tools`: `make demo`, `make bench`,
//! `make sim`, `make images`) share.

pub mod canned;
pub mod client;
pub mod controller;
pub mod envoy;
pub mod guard;
pub mod kpi;
pub mod oci;
pub mod postgres;
pub mod procfs;
pub mod prom;
pub mod prometheus;
pub mod state_server;
pub mod traffic;
pub mod upstream;

use anyhow::Result;

pub use client::{Client, Reply};
pub use envoy::{Envoy, EnvoyConfig};
pub use traffic::{count_by_arm, drive, no_headers, Traffic};
pub use upstream::ModelServer;

/// Two model servers ("v1", "v2") and an Envoy running `envoy/ramp.yaml` in front of them with the
/// given filter config: the setup most tests and the demo start from.
pub struct TwoArms {
    pub v1: ModelServer,
    pub v2: ModelServer,
    pub envoy: Envoy,
}

impl TwoArms {
    pub fn start(filter_config: &serde_json::Value, concurrency: u32) -> Result<Self> {
        let v1 = ModelServer::start("v1")?;
        let v2 = ModelServer::start("v2")?;
        let config = two_arm_config(filter_config, v1.port, v2.port)?;
        let envoy = Envoy::start(&config, concurrency)?;
        Ok(Self { v1, v2, envoy })
    }
}

/// `envoy/ramp.yaml` pointed at two model servers, with `filter_config` as the filter's JSON.
pub fn two_arm_config(filter_config: &serde_json::Value, v1: u16, v2: u16) -> Result<EnvoyConfig> {
    EnvoyConfig::from_repo("ramp.yaml")?
        .upstream("model_v1", v1)?
        .upstream("model_v2", v2)?
        .plugin_config("ramp", filter_config)
}

/// The same, with the `rampctl` cluster pointed at a controller (or its stand-in) on `controller`,
/// and the filter carrying the harness controller's report token as a user's deployment does: the
/// token in the VM's environment (`RAMP_REPORT_TOKEN`), named by `controller.token_env` unless the
/// config names another variable.
pub fn two_arm_config_with_controller(
    filter_config: &serde_json::Value,
    v1: u16,
    v2: u16,
    controller: u16,
) -> Result<EnvoyConfig> {
    let mut filter_config = filter_config.clone();
    if let Some(ctl) = filter_config
        .get_mut("controller")
        .and_then(|c| c.as_object_mut())
    {
        ctl.entry("token_env")
            .or_insert_with(|| "RAMP_REPORT_TOKEN".into());
    }
    two_arm_config(&filter_config, v1, v2)?
        .upstream("rampctl", controller)?
        .vm_env("ramp", "RAMP_REPORT_TOKEN", controller::REPORT_TOKEN)
}
