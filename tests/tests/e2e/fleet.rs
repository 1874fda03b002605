//! Strategies beyond the canary: a bandit whose counts the controller sums over every Envoy and the
//! delayed rewards applications post, an A/B test decided by a z-test on conversions, and a shadow
//! rollout judged on mirrored copies while the candidate serves no user. Real Envoys with the
//! filter, a real `rampctl serve`, model servers.

use std::time::{Duration, Instant};

use ramp_tests::controller::{Controller, Rig};
use ramp_tests::{two_arm_config_with_controller, Client, Envoy};
use serde_json::{json, Value};

fn decision_of(r: &ramp_tests::Reply) -> String {
    r.header("x-ramp-decision")
        .expect("decision header")
        .to_owned()
}

/// Posts a conversion (reward 1) for one decision, with the token.
fn convert(controller: &Controller, rollout: &str, decision: &str) {
    let body = json!({"decision": decision, "reward": 1.0}).to_string();
    let (code, v) = controller
        .call(
            "POST",
            &format!("/v1/rollouts/{rollout}/feedback"),
            Some(&body),
            true,
        )
        .unwrap();
    assert_eq!((code, v["recorded"].as_bool()), (200, Some(true)), "{v}");
}

/// The fleet's bandit counts as the controller serves them to an Envoy it has no report from.
fn fleet_counts(controller: &Controller, rollout: &str) -> Value {
    controller
        .call("GET", &format!("/v1/rollouts/{rollout}/state"), None, false)
        .unwrap()
        .1["bandit"]
        .clone()
}

#[test]
fn a_fresh_envoy_starts_from_what_the_fleet_learned_and_counts_are_exact() {
    let rig = Rig::start().unwrap();
    let (controller, v1, v2) = (&rig.controller, &rig.v1, &rig.v2);
    let cfg = json!({
        "rollout": "fleet",
        "arms": [{"name": "v1", "weight": 1}, {"name": "v2", "weight": 1}],
        "strategy": "bandit",
        // The warm-up makes phase 1 explore both arms however fast A learns from the rewards.
        "bandit": {"policy": "thompson", "warmup": 40, "reward": {"source": "feedback"}},
        "decision_header": "x-ramp-decision",
        "controller": {"cluster": "rampctl", "poll_ms": 250}
    });
    let config = two_arm_config_with_controller(&cfg, v1.port, v2.port, controller.port).unwrap();
    let (a, b) = (
        Envoy::start(&config, 2).unwrap(),
        Envoy::start(&config, 2).unwrap(),
    );
    controller
        .apply("name: fleet\nstrategy: bandit\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 0.5\nstages: [{weight: 50, min_duration_s: 3600}, {weight: 100}]\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));

    // Through Envoy A only: the application converts 1 in 10 of v1's decisions, 9 in 10 of v2's.
    let client = Client::default();
    let (mut seen, mut converted) = ([0u64; 2], [0u64; 2]);
    for _ in 0..400 {
        let r = client.get(&a.url("/predict"), &[]).unwrap();
        let i = usize::from(r.served_by == "v2");
        seen[i] += 1;
        let converts = if i == 0 {
            seen[0] % 10 == 0
        } else {
            seen[1] % 10 != 0
        };
        if converts {
            convert(controller, "fleet", &decision_of(&r));
            converted[i] += 1;
        }
    }
    assert_eq!(seen, [v1.served(), v2.served()]);
    assert!(
        seen[0] >= 40 && seen[1] >= 40,
        "the warm-up explores both arms: {seen:?}"
    );

    // Exact: the fleet's trials are the requests served, its rewards the conversions posted.
    let want = json!({
        "v1": {"trials": seen[0], "reward_micros": converted[0] * 1_000_000},
        "v2": {"trials": seen[1], "reward_micros": converted[1] * 1_000_000},
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet_counts(controller, "fleet") != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fleet_counts(controller, "fleet"), want);

    // Envoy B has served nothing, yet it polls A's counts and the rewards: it favours v2 at once.
    std::thread::sleep(Duration::from_millis(1500));
    let replies = ramp_tests::drive(&b.url("/predict"), 200, 1, ramp_tests::no_headers);
    let on_b = ramp_tests::count_by_arm(&replies);
    // With ~10% vs ~90% over tens of trials each, Thompson picks v1 with probability < 1e-6 per
    // request; the 5% allowance is for the first ticks.
    assert!(
        on_b.get("v2").copied().unwrap_or(0) >= 190,
        "a fresh Envoy uses the fleet's counts: {on_b:?} (fleet: {want})"
    );

    let total = json!({
        "v1": {"trials": v1.served(), "reward_micros": converted[0] * 1_000_000},
        "v2": {"trials": v2.served(), "reward_micros": converted[1] * 1_000_000},
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet_counts(controller, "fleet") != total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        fleet_counts(controller, "fleet"),
        total,
        "two Envoys' trials add up exactly"
    );
    assert_eq!(v1.served() + v2.served(), 600);
    let (_, status) = controller
        .call("GET", "/v1/rollouts/fleet", None, false)
        .unwrap();
    let (lo, hi) = (
        status["bandit"]["v2"]["interval"][0].as_f64().unwrap(),
        status["bandit"]["v2"]["interval"][1].as_f64().unwrap(),
    );
    assert!(lo < hi && hi <= 1.0, "credible interval {status}");
}

#[test]
fn an_ab_test_on_conversions_promotes_the_significantly_better_candidate() {
    let rig = Rig::start().unwrap();
    let (controller, v1, v2) = (&rig.controller, &rig.v1, &rig.v2);
    let cfg = json!({
        "rollout": "ab",
        "arms": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
        "decision_header": "x-ramp-decision",
        "controller": {"cluster": "rampctl", "poll_ms": 250}
    });
    let envoy = Envoy::start(
        &two_arm_config_with_controller(&cfg, v1.port, v2.port, controller.port).unwrap(),
        2,
    )
    .unwrap();
    controller
        .apply("name: ab\nstrategy: ab_test\nab_test: {metric: conversion, confidence: 0.95}\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 0.5\nstages: [{weight: 50, min_requests: 300}, {weight: 100}]\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));

    // v1 converts 1 in 7 (14%), v2 1 in 3 (33%): with 300 a side, z is about 5.
    let client = Client::default();
    let mut seen = [0u64; 2];
    let mut during = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let r = client.get(&envoy.url("/predict"), &[]).unwrap();
        let i = usize::from(r.served_by == "v2");
        seen[i] += 1;
        if (i == 0 && seen[0] % 7 == 0) || (i == 1 && seen[1] % 3 == 0) {
            convert(controller, "ab", &decision_of(&r));
        }
        if (seen[0] + seen[1]) % 50 == 0 {
            let (_, st) = controller
                .call("GET", "/v1/rollouts/ab", None, false)
                .unwrap();
            if st["stage"] == 1 && st["ab_test"]["result"].is_object() {
                during = st.clone();
            }
            if st["phase"] != "progressing" || st["stage"] != 1 || Instant::now() > deadline {
                break st;
            }
        }
    };
    assert_eq!(status["weights"]["v2"], 100.0, "{status}");
    // A status sampled during the test, or, if the decision came between two samples, the
    // figures the advance was decided on (its decision record).
    if during.is_null() {
        let (_, report) = controller
            .call("GET", "/v1/rollouts/ab/report", None, false)
            .unwrap();
        during = report["events"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["kind"] == "advance")
            .map(|e| e["record"]["figures"].clone())
            .unwrap_or_default();
    }
    let result = &during["ab_test"]["result"];
    assert!(
        (0.40..0.60).contains(&(seen[1] as f64 / (seen[0] + seen[1]) as f64)),
        "the experiment split 50/50: {seen:?}"
    );
    assert!(
        result["candidate_rate"].as_f64().unwrap() > result["baseline_rate"].as_f64().unwrap(),
        "{during}"
    );
    let events = controller.events("ab").unwrap();
    assert!(
        events.iter().any(|(kind, detail)| kind == "advance"
            && detail.starts_with("stage 2 at 100%; A/B test: the candidate is better (mSPRT")),
        "{events:?}"
    );
}

/// A shadow rollout of v2 through one Envoy: copies of every request go to v2 (compare mode on the
/// `prediction` field); requests carry `x` = 1 one time in `one_in`, else 0, so a candidate that
/// scales its prediction disagrees exactly on those.
fn shadow_rollout(name: &str, v2_scale_milli: u64, one_in: u64) -> (Value, Vec<String>) {
    let rig = Rig::start().unwrap();
    let (controller, v1, v2) = (&rig.controller, &rig.v1, &rig.v2);
    v2.behaviour
        .prediction_milli
        .store(v2_scale_milli, std::sync::atomic::Ordering::Relaxed);
    let cfg = json!({
        "rollout": name,
        "arms": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
        "shadow": {"cluster": "model_v2", "mode": "compare", "percent": 100, "json_pointer": "/prediction"},
        "controller": {"cluster": "rampctl", "poll_ms": 250}
    });
    let envoy = Envoy::start(
        &two_arm_config_with_controller(&cfg, v1.port, v2.port, controller.port).unwrap(),
        2,
    )
    .unwrap();
    controller
        .apply(&format!("name: {name}\nstrategy: shadow\narms: [{{name: v1, role: baseline}}, {{name: v2, role: candidate}}]\ncheck_interval_s: 0.5\nfailure_threshold: 2\nstages:\n  - {{weight: 0, min_requests: 300, rules: [{{metric: shadow_agreement, min: 0.95, min_samples: 100}}, {{metric: shadow_error_rate, max: 0.02, min_samples: 100}}]}}\n  - {{weight: 100}}\n"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let client = Client::default();
    let mut arms = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0u64;
    let status = loop {
        i += 1;
        let x = u64::from(i.is_multiple_of(one_in));
        let r = client
            .get(&envoy.url(&format!("/predict?x={x}")), &[])
            .unwrap();
        arms.push(r.served_by);
        if i.is_multiple_of(50) {
            let (_, st) = controller
                .call("GET", &format!("/v1/rollouts/{name}"), None, false)
                .unwrap();
            if st["phase"] != "progressing" || st["stage"] != 1 || Instant::now() > deadline {
                break st;
            }
        }
    };
    (status, arms)
}

#[test]
fn a_shadow_candidate_that_agrees_is_promoted_without_serving_anyone_first() {
    let (status, arms) = shadow_rollout("shadowok", 1000, 10);
    assert_eq!(status["weights"]["v2"], 100.0, "{status}");
    let served_by_v2_before = arms.iter().rev().skip(60).filter(|a| *a == "v2").count();
    assert_eq!(
        served_by_v2_before, 0,
        "no user reached v2 while it was judged"
    );
    // Promotion needs 300 compared copies (min_requests at 0%) with the rules passing on 100+.
    assert!(arms.len() >= 300, "promoted after {} requests", arms.len());
}

#[test]
fn a_shadow_candidate_that_disagrees_is_rolled_back_and_never_serves() {
    // v2 answers 1.1 where v1 answers 1: it disagrees on 1 request in 5 (agreement 0.8 < 0.95).
    let (status, arms) = shadow_rollout("shadowbad", 1100, 5);
    assert_eq!(status["phase"], "rolled_back", "{status}");
    let reason = status["reason"].as_str().unwrap();
    // One copy in five disagrees; a check's window need not hold an exact multiple of five.
    let agreement: f64 = reason
        .split("shadow agreement ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0);
    assert!((0.75..=0.85).contains(&agreement), "{reason}");
    assert!(arms.iter().all(|a| a == "v1"), "v2 never served a user");
}
