//! CUPED from `apply` to promotion, in a real Envoy with the filter and a real `rampctl serve`:
//! during an A/B test's 0% pre-period the baseline serves everyone while the filter counts each
//! user under the arm the experiment will give them (the same sticky hash), decision ids name
//! that arm with `.pre`, and their feedback becomes the covariate; then the test decides on the
//! adjusted difference.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ramp_tests::controller::{Controller, Rig};
use ramp_tests::{two_arm_config_with_controller, Client, Envoy};
use serde_json::{json, Value};

fn status(controller: &Controller) -> Value {
    controller
        .call("GET", "/v1/rollouts/cuped", None, false)
        .unwrap()
        .1
}

fn post_reward(controller: &Controller, decision: &str) {
    let body = json!({"decision": decision, "reward": 1.0}).to_string();
    let (code, v) = controller
        .call("POST", "/v1/rollouts/cuped/feedback", Some(&body), true)
        .unwrap();
    assert_eq!(code, 200, "{v}");
}

#[test]
fn a_pre_period_is_counted_under_the_arm_each_user_will_get_and_the_test_adjusts_for_it() {
    let rig = Rig::start().unwrap();
    let controller = &rig.controller;
    let cfg = json!({
        "rollout": "cuped",
        "arms": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
        "sticky": {"source": "header", "name": "x-user-id", "salt": "cuped"},
        "decision_header": "x-ramp-decision",
        "controller": {"cluster": "rampctl", "poll_ms": 250}
    });
    let config =
        two_arm_config_with_controller(&cfg, rig.v1.port, rig.v2.port, controller.port).unwrap();
    let envoy = Envoy::start(&config, 2).unwrap();
    controller
        .apply("name: cuped\nstrategy: ab_test\nab_test: {metric: conversion, confidence: 0.95}\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 0.5\nstages: [{weight: 0, min_duration_s: 4}, {weight: 50, min_requests: 200}, {weight: 100}]\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));

    // Users differ a lot and keep their habits: one in three converts on 70% of requests, the
    // rest on 5%; on v2 everyone converts 1.5 times as often (capped at 100%).
    let mut rng = fastrand::Rng::with_seed(24);
    let users: Vec<(String, f64)> = (0..200)
        .map(|i| (format!("user-{i}"), if i % 3 == 0 { 0.7 } else { 0.05 }))
        .collect();
    let client = Client::default();

    // The pre-period: every reply from v1, its decision id naming the arm the user will get.
    let mut will_get: BTreeMap<String, String> = BTreeMap::new();
    let (mut pre_requests, mut pre_rewards) = (BTreeMap::new(), BTreeMap::new());
    for (user, p) in &users {
        for _ in 0..5 {
            let r = client
                .get(&envoy.url("/predict"), &[("x-user-id", user.as_str())])
                .unwrap();
            let decision = r.header("x-ramp-decision").unwrap().to_owned();
            let Some(id) = decision.strip_suffix(".pre") else {
                break; // the experiment began: this user's pre-period is over
            };
            assert_eq!(r.served_by, "v1", "the baseline serves the pre-period");
            let arm = id.rsplit_once('.').unwrap().0.to_owned();
            let first = will_get.entry(user.clone()).or_insert_with(|| arm.clone());
            assert_eq!(*first, arm, "{user}: one arm for all of a user's requests");
            *pre_requests.entry(arm.clone()).or_insert(0u64) += 1;
            if rng.f64() < *p {
                post_reward(controller, &decision);
                *pre_rewards.entry(arm).or_insert(0.0) += 1.0;
            }
        }
    }
    assert!(
        will_get.values().filter(|a| *a == "v2").count() > 50
            && will_get.values().filter(|a| *a == "v1").count() > 50,
        "about half the users will get each arm: {will_get:?}"
    );

    // Wait for the experiment, then every user lands where the pre-period counted them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(controller)["stage"] != 2 {
        assert!(Instant::now() < deadline, "{}", status(controller));
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = status(controller);
    for arm in ["v1", "v2"] {
        let pre = &st["window"][arm]["pre_period"];
        assert_eq!(pre["requests"], json!(pre_requests[arm]), "{arm}: {st}");
        let reward = pre["reward"].as_f64().unwrap();
        assert!((reward - pre_rewards[arm]).abs() < 1e-6, "{arm}: {st}");
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut round = 0;
    let (during, done) = loop {
        let mut order: Vec<&(String, f64)> = users.iter().collect();
        rng.shuffle(&mut order);
        for (user, p) in order {
            let r = client
                .get(&envoy.url("/predict"), &[("x-user-id", user.as_str())])
                .unwrap();
            let decision = r.header("x-ramp-decision").unwrap().to_owned();
            if decision.ends_with(".pre") {
                continue; // an Envoy worker that has not polled the experiment's state yet
            }
            if let Some(arm) = will_get.get(user) {
                assert_eq!(
                    &r.served_by, arm,
                    "{user} moved away from its pre-period arm"
                );
            }
            let p = if r.served_by == "v2" {
                (p * 1.5).min(1.0)
            } else {
                *p
            };
            if rng.f64() < p {
                post_reward(controller, &decision);
            }
        }
        round += 1;
        let st = status(controller);
        if st["ab_test"]["result"]["unit"] == "user_bucket_cuped" || Instant::now() > deadline {
            let during = st;
            // Carry on to the verdict.
            let done = loop {
                let st = status(controller);
                if st["phase"] != "progressing" || st["stage"] != 2 || Instant::now() > deadline {
                    break st;
                }
                for (user, _) in users.iter().take(40) {
                    let r = client
                        .get(&envoy.url("/predict"), &[("x-user-id", user.as_str())])
                        .unwrap();
                    if r.served_by == "v2" {
                        post_reward(controller, r.header("x-ramp-decision").unwrap());
                    }
                }
            };
            break (during, done);
        }
    };
    let result = &during["ab_test"]["result"];
    assert_eq!(
        result["unit"], "user_bucket_cuped",
        "after {round} rounds: {during}"
    );
    let cuped = &result["cuped"];
    assert!(
        cuped["variance_reduction"].as_f64().unwrap() > 0.1,
        "users' habits explain much of the variance: {cuped}"
    );
    assert!(cuped["slope"].as_f64().unwrap() > 0.0, "{cuped}");
    assert_eq!(
        (&done["stage"], &done["weights"]["v2"]),
        (&json!(3), &json!(100.0)),
        "promoted: {done}"
    );
    let events = controller.events("cuped").unwrap();
    assert!(
        events.iter().any(|(kind, detail)| kind == "advance"
            && detail.contains("the candidate is better")
            && detail.contains("CUPED")),
        "{events:?}"
    );
}
