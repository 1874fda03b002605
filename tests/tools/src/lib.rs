//! Ramp's product tools, apart from the tests: `make demo` (`ramp-demo`), `make bench`
//! (`ramp-bench`, `ramp-bench-controller`, `ramp-bench-hostile`, `ramp-bench-checks`,
//! `ramp-bench-replicas`, `ramp-bench-guard`), `make sim` (`ramp-sim`, `ramp-sim-decisions`,
//! `ramp-sim-rollouts`, `ramp-sim-guard`) and `make images` (`ramp-images`).
//! They start Envoy, rampctl and model servers through the tests crate's harness (`ramp_tests`);
//! what only they need lives here.

pub mod oci;
pub mod seeds;
pub mod wrk;
