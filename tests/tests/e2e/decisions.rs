//! Decisions with more than two arms and the sample-ratio guard, in real Envoys with the filter
//! and a real `rampctl serve`: an A/B/n test picks the planted winner through the feedback
//! endpoint, and a route that drops part of one arm's requests holds the rollout.

use std::time::{Duration, Instant};

use ramp_tests::controller::{Controller, Rig};
use ramp_tests::{two_arm_config_with_controller, Client, Envoy, ModelServer};
use serde_json::{json, Value};

fn decision_of(r: &ramp_tests::Reply) -> String {
    r.header("x-ramp-decision")
        .expect("decision header")
        .to_owned()
}

fn status(controller: &Controller, rollout: &str) -> Value {
    controller
        .call("GET", &format!("/v1/rollouts/{rollout}"), None, false)
        .unwrap()
        .1
}

#[test]
fn an_ab_n_test_promotes_the_planted_winner_of_three_arms() {
    let rig = Rig::start().unwrap();
    let controller = &rig.controller;
    let v3 = ModelServer::start("v3").unwrap();
    let cfg = json!({
        "rollout": "abn",
        "arms": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}, {"name": "v3", "weight": 0}],
        "decision_header": "x-ramp-decision",
        "controller": {"cluster": "rampctl", "poll_ms": 250}
    });
    let config = two_arm_config_with_controller(&cfg, rig.v1.port, rig.v2.port, controller.port)
        .and_then(|c| c.extra_arm("v3", v3.port))
        .unwrap();
    let envoy = Envoy::start(&config, 2).unwrap();
    controller
        .apply("name: abn\nstrategy: ab_test\nab_test: {metric: conversion, confidence: 0.95}\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}, {name: v3, role: candidate}]\ncheck_interval_s: 0.5\nstages: [{weight: 66, min_requests: 300}, {weight: 100}]\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));

    // Conversions: v1 1 in 7 (14%), v2 1 in 5 (20%), v3 1 in 3 (33%). At 300 a side the mSPRT
    // finds v3 better (p far below 0.025, Holm's first threshold) and v2 not (p about 0.5).
    let client = Client::default();
    let one_in = |arm: &str| match arm {
        "v1" => 7,
        "v2" => 5,
        _ => 3,
    };
    let mut seen = std::collections::BTreeMap::<String, u64>::new();
    let mut during = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(90);
    let done = loop {
        let r = client.get(&envoy.url("/predict"), &[]).unwrap();
        let n = seen.entry(r.served_by.clone()).or_default();
        *n += 1;
        if n.is_multiple_of(one_in(&r.served_by)) {
            let body = json!({"decision": decision_of(&r), "reward": 1.0}).to_string();
            let (code, v) = controller
                .call("POST", "/v1/rollouts/abn/feedback", Some(&body), true)
                .unwrap();
            assert_eq!(code, 200, "{v}");
        }
        if seen.values().sum::<u64>().is_multiple_of(50) {
            let st = status(controller, "abn");
            if st["stage"] == 1 && st["ab_test"]["comparisons"].as_array().is_some() {
                during = st.clone();
            }
            if st["phase"] != "progressing" || st["stage"] != 1 || Instant::now() > deadline {
                break st;
            }
        }
    };
    let total: u64 = seen.values().sum();
    for arm in ["v1", "v2", "v3"] {
        let share = seen.get(arm).copied().unwrap_or(0) as f64 / total as f64;
        assert!((0.25..0.42).contains(&share), "a third each: {seen:?}");
    }
    assert_eq!(done["winner"], "v3", "{done}");
    assert_eq!(
        (
            &done["weights"]["v1"],
            &done["weights"]["v2"],
            &done["weights"]["v3"]
        ),
        (&json!(0.0), &json!(0.0), &json!(100.0)),
        "{done}"
    );
    let comparisons = during["ab_test"]["comparisons"].as_array().unwrap();
    assert_eq!(during["ab_test"]["correction"], "holm", "{during}");
    assert_eq!(comparisons.len(), 2, "{during}");
    let events = controller.events("abn").unwrap();
    assert!(
        events.iter().any(|(kind, detail)| kind == "advance"
            && detail.starts_with("stage 2 at 100%; A/B test: v3 is the winner")),
        "{events:?}"
    );
    // The filters follow: every request now goes to v3.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let served: Vec<String> = (0..20)
            .map(|_| client.get(&envoy.url("/predict"), &[]).unwrap().served_by)
            .collect();
        if served.iter().all(|s| s == "v3") {
            break;
        }
        assert!(Instant::now() < deadline, "still not all v3: {served:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_route_that_drops_part_of_one_arms_requests_holds_the_rollout_on_the_sample_ratio() {
    let rig = Rig::start().unwrap();
    let controller = &rig.controller;
    let cfg = json!({
        "rollout": "srm",
        "arms": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
        "controller": {"cluster": "rampctl", "poll_ms": 250}
    });
    // Envoy's fault filter answers 5% of the requests routed to v2 with its own 503: the filter
    // assigned them, the model never saw them.
    let config = two_arm_config_with_controller(&cfg, rig.v1.port, rig.v2.port, controller.port)
        .and_then(|c| c.drop_share("v2", 5))
        .unwrap();
    let envoy = Envoy::start(&config, 2).unwrap();
    controller
        .apply("name: srm\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 0.5\nstages: [{weight: 50, min_duration_s: 3600}, {weight: 100}]\n")
        .unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let url = envoy.url("/predict");
    let held = std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let client = Client::default();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = client.get(&url, &[]);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let st = loop {
            std::thread::sleep(Duration::from_millis(500));
            let st = status(controller, "srm");
            if st["phase"] != "progressing" || Instant::now() > deadline {
                break st;
            }
        };
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        st
    });
    assert_eq!(held["phase"], "paused", "{held}");
    let reason = held["reason"].as_str().unwrap_or_default();
    // The exposure test (Envoy's own replies, arm against arm) flags it within a few checks,
    // long before the split test on answered requests would (about 20,000 requests for 5%).
    assert!(
        reason.starts_with(
            "sample ratio mismatch: exposure lost after routing: Envoy answered v1 0 of "
        ) && reason.contains(", p = ")
            && reason.contains("itself; equal loss on every arm would share those replies"),
        "{held}"
    );
    // The dropped share is visible: Envoy's own replies on v2, none on v1.
    let v2 = &held["window"]["v2"];
    let dropped = v2["local_replies"].as_f64().unwrap() / v2["requests"].as_f64().unwrap();
    assert!((0.02..0.09).contains(&dropped), "{held}");
    assert_eq!(held["window"]["v1"]["local_replies"], 0, "{held}");
    assert_eq!(
        held["weights"]["v2"], 50.0,
        "no verdict, no promotion: {held}"
    );
}

#[test]
fn a_sticky_ab_test_takes_users_as_the_units() {
    let rig = Rig::start().unwrap();
    let controller = &rig.controller;
    let cfg = json!({
        "rollout": "users",
        "arms": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
        "sticky": {"source": "header", "name": "x-user-id", "salt": "ab"},
        "decision_header": "x-ramp-decision",
        "controller": {"cluster": "rampctl", "poll_ms": 250}
    });
    let config =
        two_arm_config_with_controller(&cfg, rig.v1.port, rig.v2.port, controller.port).unwrap();
    let envoy = Envoy::start(&config, 2).unwrap();
    controller
        .apply("name: users\nstrategy: ab_test\nab_test: {metric: conversion, confidence: 0.95}\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 0.5\nstages: [{weight: 50, min_requests: 100, min_duration_s: 600}, {weight: 100}]\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));

    // Users make 4 requests each; on v2 every third user converts on every request, on v1
    // every seventh: conversions cluster by user, as they do. Users keep coming until the
    // sample-ratio check (which starts a settling time after the split) has counted some.
    let client = Client::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut users = 0u64;
    let st = loop {
        let id = format!("user-{users}");
        for _ in 0..4 {
            let r = client
                .get(&envoy.url("/predict"), &[("x-user-id", id.as_str())])
                .unwrap();
            let one_in = if r.served_by == "v2" { 3 } else { 7 };
            if users.is_multiple_of(one_in) {
                let body = json!({"decision": decision_of(&r), "reward": 1.0}).to_string();
                let (code, v) = controller
                    .call("POST", "/v1/rollouts/users/feedback", Some(&body), true)
                    .unwrap();
                assert_eq!(code, 200, "{v}");
            }
        }
        users += 1;
        if users.is_multiple_of(25) {
            let st = status(controller, "users");
            let counted = st["sample_ratio"]["counts"]
                .as_array()
                .map_or(0, |c| c.iter().filter_map(Value::as_u64).sum::<u64>());
            if (st["ab_test"]["result"]["unit"] == "user_bucket" && counted >= 200)
                || Instant::now() > deadline
            {
                break st;
            }
        }
    };
    // The reports carry each arm's requests per analysis bucket: the A/B test and the
    // sample-ratio check both take users' buckets as the units.
    let result = &st["ab_test"]["result"];
    assert_eq!(result["unit"], "user_bucket", "{st}");
    assert_eq!(st["sample_ratio"]["unit"], "user_bucket", "{st}");
    assert_eq!(st["sample_ratio"]["mismatch"], false, "{st}");
    assert!(
        result["candidate_rate"].as_f64().unwrap() > result["baseline_rate"].as_f64().unwrap(),
        "{st}"
    );
}

#[test]
fn a_five_arm_bandit_learns_from_the_fleet_and_its_counts_are_exact() {
    let rig = Rig::start().unwrap();
    let controller = &rig.controller;
    let extra: Vec<ModelServer> = ["v3", "v4", "v5"]
        .iter()
        .map(|a| ModelServer::start(a).unwrap())
        .collect();
    let arms = ["v1", "v2", "v3", "v4", "v5"];
    let cfg = json!({
        "rollout": "five",
        "arms": arms.iter().map(|a| json!({"name": a, "weight": 1})).collect::<Vec<_>>(),
        "strategy": "bandit",
        "bandit": {"policy": "thompson", "warmup": 20, "reward": {"source": "feedback"}},
        "decision_header": "x-ramp-decision",
        "controller": {"cluster": "rampctl", "poll_ms": 250}
    });
    let mut config =
        two_arm_config_with_controller(&cfg, rig.v1.port, rig.v2.port, controller.port).unwrap();
    for (arm, server) in ["v3", "v4", "v5"].iter().zip(&extra) {
        config = config.extra_arm(arm, server.port).unwrap();
    }
    let (a, b) = (
        Envoy::start(&config, 2).unwrap(),
        Envoy::start(&config, 2).unwrap(),
    );
    controller
        .apply("name: five\nstrategy: bandit\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}, {name: v3, role: candidate}, {name: v4, role: candidate}, {name: v5, role: candidate}]\ncheck_interval_s: 0.5\nstages: [{weight: 80, min_duration_s: 3600}, {weight: 100}]\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let st = status(controller, "five");
    for arm in arms {
        assert_eq!(st["weights"][arm], json!(20.0), "every arm live: {st}");
    }

    // Through Envoy A: v4 converts 9 in 10 decisions, the others 1 in 10.
    let client = Client::default();
    let mut seen = std::collections::BTreeMap::<String, u64>::new();
    let mut converted = std::collections::BTreeMap::<String, u64>::new();
    for _ in 0..500 {
        let r = client.get(&a.url("/predict"), &[]).unwrap();
        let n = seen.entry(r.served_by.clone()).or_default();
        *n += 1;
        let converts = if r.served_by == "v4" {
            !n.is_multiple_of(10)
        } else {
            n.is_multiple_of(10)
        };
        if converts {
            let body = json!({"decision": decision_of(&r), "reward": 1.0}).to_string();
            let (code, v) = controller
                .call("POST", "/v1/rollouts/five/feedback", Some(&body), true)
                .unwrap();
            assert_eq!(code, 200, "{v}");
            *converted.entry(r.served_by.clone()).or_default() += 1;
        }
    }
    for arm in arms {
        assert!(
            seen.get(arm).copied().unwrap_or(0) >= 20,
            "the warm-up explores every arm: {seen:?}"
        );
    }
    // Exact: the fleet's trials are the requests served, its rewards the conversions posted.
    let want: Value = arms
        .iter()
        .map(|&arm| {
            (
                arm.to_owned(),
                json!({"trials": seen.get(arm).copied().unwrap_or(0),
                       "reward_micros": converted.get(arm).copied().unwrap_or(0) * 1_000_000}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    let fleet = || {
        controller
            .call("GET", "/v1/rollouts/five/state", None, false)
            .unwrap()
            .1["bandit"]
            .clone()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet() != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fleet(), want);
    // Envoy B has served nothing, yet it starts from the fleet's counts: v4 at once.
    std::thread::sleep(Duration::from_millis(1500));
    let replies = ramp_tests::drive(&b.url("/predict"), 200, 1, ramp_tests::no_headers);
    let on_b = ramp_tests::count_by_arm(&replies);
    assert!(
        on_b.get("v4").copied().unwrap_or(0) >= 180,
        "a fresh Envoy uses the fleet's counts: {on_b:?} (fleet: {want})"
    );
}
