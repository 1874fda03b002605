//! The Grafana dashboard against a real Prometheus: it scrapes an Envoy running the filter (a
//! bandit rollout with shadow compare mode) and `rampctl serve`'s `/metrics`, and every query in
//! `istio/grafana/ramp-dashboard.json` returns series.

use std::time::{Duration, Instant};

use ramp_tests::controller::Rig;
use ramp_tests::envoy::repo_root;
use ramp_tests::prometheus::Prometheus;
use ramp_tests::{two_arm_config_with_controller, Envoy, ModelServer, Traffic};
use serde_json::{json, Value};

#[test]
fn every_dashboard_query_returns_series_from_the_filters_and_the_controller() {
    let rig = Rig::start().unwrap();
    let controller = &rig.controller;
    let shadow = ModelServer::start("shadow").unwrap();
    let cfg = json!({
        "rollout": "dash",
        "arms": [{"name": "v1", "weight": 1}, {"name": "v2", "weight": 1}],
        "strategy": "bandit",
        "bandit": {"policy": "thompson", "reward": {"source": "status"}},
        "shadow": {"cluster": "model_shadow", "mode": "compare", "json_pointer": "/prediction",
                   "disagreement_thresholds": [0.5]},
        "controller": {"cluster": "rampctl", "poll_ms": 250}
    });
    let config = two_arm_config_with_controller(&cfg, rig.v1.port, rig.v2.port, controller.port)
        .and_then(|c| c.extra_arm("shadow", shadow.port))
        .unwrap();
    let envoy = Envoy::start(&config, 2).unwrap();
    controller
        .apply("name: dash\nstrategy: bandit\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 0.5\nstages: [{weight: 50, min_duration_s: 600, rules: [{metric: error_rate, max: 0.5, min_samples: 10}]}, {weight: 100}]\n")
        .unwrap();
    // A second rollout, rolled back by an operator: the controller's rollback counters move.
    controller
        .apply("name: other\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\nstages: [{weight: 10, min_duration_s: 600}, {weight: 100}]\n")
        .unwrap();
    assert_eq!(controller.command("other", "roll_back").unwrap().0, 200);
    let prometheus = Prometheus::start_with(&[envoy.admin_port], &[controller.port]).unwrap();
    let traffic = Traffic::start(envoy.url("/predict"), 2);

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("istio/grafana/ramp-dashboard.json")).unwrap(),
    )
    .unwrap();
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(queries.len() >= 15, "{queries:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missing = queries.clone();
    while !missing.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        missing.retain(|q| {
            let answer = prometheus.query(q).unwrap();
            assert_eq!(answer["status"], "success", "{q}: {answer}");
            answer["data"]["result"]
                .as_array()
                .is_none_or(Vec::is_empty)
        });
    }
    traffic.finish();
    assert!(missing.is_empty(), "queries without series: {missing:#?}");
    // The controller's own series are there with their labels.
    let phase = prometheus
        .query("ramp_controller_rollout_phase{rollout=\"other\",phase=\"rolled_back\"}")
        .unwrap();
    assert_eq!(phase["data"]["result"][0]["value"][1], "1", "{phase}");
}
