//! The filter's side of the live-state channel: one worker per Envoy polls the controller, every
//! worker applies the newest valid state, and a controller that goes away or sends nonsense leaves
//! the last good state in force.

use std::time::{Duration, Instant};

use ramp_tests::state_server::StateServer;
use ramp_tests::{
    count_by_arm, drive, no_headers, two_arm_config_with_controller, Envoy, ModelServer,
};
use serde_json::json;

/// Polls the split until `want` holds for 200 requests over 4 connections (both workers).
fn wait_for_split(envoy: &Envoy, want: impl Fn(usize) -> bool) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v2 = count_by_arm(&drive(&envoy.url("/"), 200, 4, no_headers))
            .get("v2")
            .copied()
            .unwrap_or(0);
        if want(v2) || Instant::now() > deadline {
            return v2;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn workers_follow_the_controllers_weights_and_keep_the_last_good_state() {
    let (v1, v2) = (
        ModelServer::start("v1").unwrap(),
        ModelServer::start("v2").unwrap(),
    );
    let controller = StateServer::start().unwrap();
    let cfg = json!({
        "rollout": "live",
        "arms": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
        "controller": {"cluster": "rampctl", "poll_ms": 500}
    });
    let envoy = Envoy::start(
        &two_arm_config_with_controller(&cfg, v1.port, v2.port, controller.port).unwrap(),
        4,
    )
    .unwrap();
    // No state yet (the controller answers 503): the static weights hold.
    assert_eq!(wait_for_split(&envoy, |n| n == 0), 0);

    controller.set(&json!({"version": 1, "weights": {"v1": 0, "v2": 100}}));
    let started = Instant::now();
    assert_eq!(
        wait_for_split(&envoy, |n| n == 200),
        200,
        "every worker applies the pushed weights"
    );
    eprintln!(
        "weights applied on all workers {:?} after the controller changed them",
        started.elapsed()
    );

    // Nonsense (an arm this filter does not have) and stale versions are ignored.
    controller.set(&json!({"version": 2, "weights": {"v9": 100}}));
    std::thread::sleep(Duration::from_millis(1500));
    controller.set(&json!({"version": 0, "weights": {"v1": 100}}));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(wait_for_split(&envoy, |n| n == 200), 200);
    assert!(
        envoy.log().contains("live state weights.v9: no such arm"),
        "{}",
        envoy.log()
    );

    // One poller per Envoy, not one per worker: about one poll per 500 ms.
    let (polls, t) = (controller.polls(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let rate = (controller.polls() - polls) as f64 / t.elapsed().as_secs_f64();
    let lease_log: Vec<String> = envoy
        .log()
        .lines()
        .filter(|l| l.contains("now polls"))
        .map(str::to_owned)
        .collect();
    assert!(
        rate < 3.0,
        "{rate:.1} polls/s with 4 workers and poll_ms 500; lease changes:\n{}",
        lease_log.join("\n")
    );

    // The controller goes away: traffic keeps its split.
    let port = controller.port;
    drop(controller);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(wait_for_split(&envoy, |n| n == 200), 200);

    // It comes back with a new state: the filters pick it up.
    let controller = StateServer::start_on(&format!("127.0.0.1:{port}")).unwrap();
    controller.set(&json!({"version": 3, "weights": {"v1": 50, "v2": 50}}));
    let v2_share = wait_for_split(&envoy, |n| (60..=140).contains(&n));
    assert!((60..=140).contains(&v2_share), "{v2_share} of 200 at 50/50");
}

#[test]
fn each_envoy_reports_exact_cumulative_counts_for_all_its_workers() {
    let (v1, v2) = (
        ModelServer::start("v1").unwrap(),
        ModelServer::start("v2").unwrap(),
    );
    v2.behaviour
        .fail_every
        .store(4, std::sync::atomic::Ordering::Relaxed);
    let controller = StateServer::start().unwrap();
    let cfg = json!({
        "rollout": "reports",
        "arms": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
        "controller": {"cluster": "rampctl", "poll_ms": 500}
    });
    let envoy = Envoy::start(
        &two_arm_config_with_controller(&cfg, v1.port, v2.port, controller.port).unwrap(),
        4,
    )
    .unwrap();
    let replies = drive(&envoy.url("/"), 2000, 4, no_headers);
    let failed_v2 = replies
        .iter()
        .filter(|r| r.served_by == "v2" && r.status == 500)
        .count() as u64;

    // Reports are cumulative: wait until one covers everything that was served.
    let deadline = Instant::now() + Duration::from_secs(15);
    let last = loop {
        let last: Option<serde_json::Value> = controller
            .reports
            .lock()
            .unwrap()
            .last()
            .map(|r| serde_json::from_str(r).unwrap());
        let total = last.as_ref().map_or(0, |r| {
            r["arms"]["v1"]["requests"].as_u64().unwrap_or(0)
                + r["arms"]["v2"]["requests"].as_u64().unwrap_or(0)
        });
        if total == 2000 || Instant::now() > deadline {
            break last.unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let arm = |a: &str, f: &str| last["arms"][a][f].as_u64().unwrap();
    assert_eq!(
        (arm("v1", "requests"), arm("v2", "requests")),
        (v1.served(), v2.served()),
        "{last}"
    );
    assert_eq!(
        last["arms"]["v2"]["responses"]["5xx"].as_u64(),
        Some(failed_v2)
    );
    assert_eq!(
        last["arms"]["v2"]["latency_ms"]["counts"][51].as_u64(),
        Some(v2.served()),
        "+Inf bucket = responses"
    );

    // One instance id per Envoy, and sequence numbers that only go up.
    let reports: Vec<serde_json::Value> = controller
        .reports
        .lock()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect();
    let instances: std::collections::BTreeSet<&str> = reports
        .iter()
        .map(|r| r["instance"].as_str().unwrap())
        .collect();
    assert_eq!(instances.len(), 1, "{instances:?}");
    let seqs: Vec<u64> = reports.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{seqs:?}");
}
