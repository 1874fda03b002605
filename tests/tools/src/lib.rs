//! Ramp's product tools, apart from the tests: `make demo` (`ramp-demo`), `make bench`
//! (`ramp-bench`, `ramp-bench-controller`, `ramp-bench-hostile`, `ramp-bench-checks`,
//! `ramp-bench-replicas`, `ramp-bench-guard`), `make sim` (`ramp-sim`, `ramp-sim-decisions`,
//! `ramp-sim-rollouts`, `ramp-sim-guard`) and `make images` (`ramp-images`).
//! They start Envoy, rampctl and model servers through the tests crate's harness (`ramp_tests`);
//! what only they need lives here.

pub mod oci;
pub mod seeds;
pub mod wrk;

/// Writes a run's results as `tests/bench/results/<stem>.md` and `<stem>.json`, and prints the
/// Markdown: what every bench and simulation leaves for the docs to quote.
pub fn write_results(
    stem: &str,
    md: &str,
    json: &serde_json::Value,
) -> anyhow::Result<std::path::PathBuf> {
    let out = ramp_tests::envoy::repo_root().join("tests/bench/results");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join(format!("{stem}.md")), md)?;
    std::fs::write(
        out.join(format!("{stem}.json")),
        serde_json::to_string_pretty(json)?,
    )?;
    println!("{md}");
    Ok(out)
}

/// A synthetic filter report for the controller benches: Envoy `instance`'s cumulative counts at
/// `seq`, two arms with bandit totals.
pub fn synthetic_report(instance: usize, seq: u64) -> String {
    let arm = |n: u64| {
        serde_json::json!({"requests": n, "responses": {"2xx": n, "3xx": 0, "4xx": 0, "5xx": 0},
               "latency_ms": {"le": ramp_protocol::report::latency_le(),
                              "counts": vec![n; 52]},
               "bandit": {"trials": n, "reward_micros": n * 500_000}})
    };
    serde_json::json!({"instance": format!("envoy-{instance}"), "seq": seq,
           "arms": {"v1": arm(100 + seq), "v2": arm(50 + seq)}})
    .to_string()
}
