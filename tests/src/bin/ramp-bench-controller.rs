//! `make bench`, controller part: what one filter poll of `GET /v1/rollouts/<r>/state` costs as the
//! fleet grows. Every poll carries the fleet's bandit counts minus the asking Envoy's own; the store
//! keeps them current report by report, so the cost should not grow with the number of Envoys.
//! A real `rampctl serve` (release build, `RAMPCTL_BIN`), N instances' reports posted, then timed
//! polls over one keep-alive connection. Writes `tests/bench/results/controller-state.md`.

use std::time::Instant;

use anyhow::{ensure, Result};
use ramp_tests::controller::Controller;
use ramp_tests::envoy::repo_root;
use serde_json::json;

fn report(instance: usize) -> String {
    let arm = |n: u64| {
        json!({"requests": n, "responses": {"2xx": n, "3xx": 0, "4xx": 0, "5xx": 0},
               "latency_ms": {"le": [5, 10, 25, 50, 100, 150, 250, 500, 1000, 2500, 5000, "+Inf"],
                              "counts": vec![n; 12]},
               "bandit": {"trials": n, "reward_micros": n * 500_000}})
    };
    json!({"instance": format!("envoy-{instance}"), "seq": 1, "arms": {"v1": arm(100), "v2": arm(50)}})
        .to_string()
}

fn main() -> Result<()> {
    let polls = 2000;
    let dir = tempfile::tempdir()?;
    let controller = Controller::start(&dir.path().join("ramp.db"), "bench")?;
    controller.apply("name: bench\nstrategy: bandit\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\nstages: [{weight: 50, min_duration_s: 86400}, {weight: 100}]\n")?;
    let agent = ureq::agent();
    let mut rows = Vec::new();
    let mut posted = 0;
    for fleet in [1usize, 10, 100, 500, 2000] {
        while posted < fleet {
            let code = agent
                .post(&controller.url("/v1/rollouts/bench/reports"))
                .send_string(&report(posted))?
                .status();
            ensure!(code == 204, "report answered {code}");
            posted += 1;
        }
        let url = controller.url("/v1/rollouts/bench/state?instance=envoy-0");
        let mut times = Vec::with_capacity(polls);
        for _ in 0..polls {
            let t = Instant::now();
            let body = agent.get(&url).call()?.into_string()?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
            ensure!(body.contains("\"bandit\""), "no bandit counts in {body}");
        }
        times.sort_by(f64::total_cmp);
        let (median, p99) = (times[polls / 2], times[polls * 99 / 100]);
        println!("{fleet:>5} Envoys reporting: poll median {median:.0} us, p99 {p99:.0} us");
        rows.push((fleet, median, p99));
    }
    let base = rows[0].1;
    let mut md = String::from(
        "# Controller: cost of one filter poll as the fleet grows\n\n\
         `make bench` (`tests/src/bin/ramp-bench-controller.rs`): a release `rampctl serve`, N Envoys' \
         reports posted, then 2000 `GET /v1/rollouts/<r>/state?instance=...` over one keep-alive \
         connection, timed at the client on loopback. Ratios are within this run.\n\n\
         | Envoys reporting | poll median (us) | poll p99 (us) | median vs 1 Envoy |\n|---|---|---|---|\n",
    );
    for (fleet, median, p99) in &rows {
        md.push_str(&format!(
            "| {fleet} | {median:.0} | {p99:.0} | {:.2} |\n",
            median / base
        ));
    }
    let out = repo_root().join("tests/bench/results/controller-state.md");
    std::fs::write(&out, md)?;
    println!("wrote {}", out.display());
    Ok(())
}
