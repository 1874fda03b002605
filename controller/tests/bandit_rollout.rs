//! A bandit rollout through a real `rampctl serve` from `apply` to its end, fed reports as the
//! filters write them: it ends on P(best) (the best arm, not the first candidate, takes all
//! traffic), the bandit's own skew never pauses it, lost exposure on one arm does, and a hand
//! promotion picks the arm most probably best.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{report, start, temp_dir, Api, Serve};
use serde_json::{json, Value};

const THREE: &str =
    "arms: [{name: v1, role: baseline}, {name: v2, role: candidate}, {name: v3, role: candidate}]";

/// One Envoy's cumulative report: per arm (requests, local replies, bandit trials, rewards).
fn bandit_report(seq: u64, arms: &[(&str, u64, u64, u64, u64)]) -> Value {
    let plain: Vec<(&str, u64, u64)> = arms.iter().map(|&(a, n, ..)| (a, n, 0)).collect();
    let mut r = report("envoy-a", seq, &plain);
    for &(arm, _, lost, trials, rewards) in arms {
        r["arms"][arm]["local_replies"] = json!(lost);
        r["arms"][arm]["bandit"] = json!({"trials": trials, "reward_micros": rewards * 1_000_000});
    }
    r
}

fn kinds(s: &Serve, name: &str) -> Vec<String> {
    s.req("GET", &format!("/v1/rollouts/{name}/history"), None, false)
        .1["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e["kind"].as_str().unwrap(),
                e["detail"].as_str().unwrap()
            )
        })
        .collect()
}

fn weights(s: &Serve, name: &str) -> Value {
    s.req("GET", &format!("/v1/rollouts/{name}/state"), None, false)
        .1["weights"]
        .clone()
}

#[test]
fn a_bandit_rollout_ends_by_promoting_the_arm_most_probably_best() {
    let s = start(&temp_dir("bandit-ends"));
    s.applied(&format!(
        "name: b\n{THREE}\nstrategy: bandit\ncheck_interval_s: 0.2\nstages: [{{weight: 50, min_requests: 1000}}, {{weight: 100}}]"
    ));
    // Five seconds of a bandit that has moved nearly all traffic to v3 while the arms look
    // alike (equal reward rates): past the sample-ratio check's settling time, and no pause.
    let mut seq = 0;
    for step in 1..=25u64 {
        seq += 1;
        let (v1, v2, v3) = (50 + step, 50 + step, 100 * step);
        let r = bandit_report(
            seq,
            &[
                ("v1", v1, 0, v1, v1 / 10),
                ("v2", v2, 0, v2, v2 / 10),
                ("v3", v3, 0, v3, v3 / 10),
            ],
        );
        assert_eq!(s.report("b", &r).0, 204);
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = s.status("b");
    assert_eq!(v["phase"], "progressing", "{v}");
    assert_eq!(v["sample_ratio"]["unit"], "exposure", "{v}");
    assert!(
        v["best_arm"]["method"]
            .as_str()
            .is_some_and(|m| m.starts_with("P(best) by quadrature")),
        "{v}"
    );
    let p_sum: f64 = ["v1", "v2", "v3"]
        .iter()
        .map(|a| v["bandit"][a]["p_best"].as_f64().unwrap())
        .sum();
    assert!((p_sum - 1.0).abs() < 1e-9, "{v}");
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("< promote_at 0.95")),
        "{v}"
    );
    // Now v2, not the first candidate... the second, converts at 30% against 10%.
    seq += 1;
    let r = bandit_report(
        seq,
        &[
            ("v1", 2000, 0, 2000, 200),
            ("v2", 2000, 0, 2000, 600),
            ("v3", 2500, 0, 2500, 250),
        ],
    );
    assert_eq!(s.report("b", &r).0, 204);
    let done = s.wait_until("b", Duration::from_secs(10), |v| v["phase"] == "succeeded");
    assert_eq!(done["winner"], "v2", "{done}");
    assert_eq!(weights(&s, "b"), json!({"v1": 0.0, "v2": 100.0, "v3": 0.0}));
    let history = kinds(&s, "b");
    assert!(
        !history.iter().any(|e| e.starts_with("paused")),
        "{history:?}"
    );
    let advance = history
        .iter()
        .find(|e| e.starts_with("advance"))
        .expect("an advance event");
    assert!(
        advance.contains("v2 is the best arm with P(best) 1.0000 >= promote_at 0.95")
            && advance.contains("v1 0.0000 (2000 trials, reward rate 0.1000)"),
        "{advance}"
    );
    assert!(
        history.last().is_some_and(|e| e.starts_with("promoted")),
        "{history:?}"
    );
}

#[test]
fn a_bandit_rollout_pauses_when_envoy_answers_part_of_one_arms_requests() {
    let s = start(&temp_dir("bandit-exposure"));
    s.applied("name: e\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\nstrategy: bandit\ncheck_interval_s: 0.2\nstages: [{weight: 50, min_duration_s: 600}, {weight: 100}]");
    let mut seq = 0;
    let (mut v1, mut v2, mut lost) = (0, 0, 0);
    let mut post = |v1: u64, v2: u64, lost: u64| {
        seq += 1;
        let r = bandit_report(
            seq,
            &[("v1", v1, 0, v1, v1 / 2), ("v2", v2, lost, v2, v2 / 2)],
        );
        assert_eq!(s.report("e", &r).0, 204);
        std::thread::sleep(Duration::from_millis(200));
    };
    // Past the settling time with no loss: the check starts counting.
    for _ in 0..20 {
        (v1, v2) = (v1 + 40, v2 + 160);
        post(v1, v2, lost);
    }
    assert_eq!(s.status("e")["phase"], "progressing");
    // Then Envoy answers 5% of v2's requests itself (a fault filter after routing).
    for _ in 0..25 {
        (v1, v2, lost) = (v1 + 40, v2 + 160, lost + 8);
        post(v1, v2, lost);
        if s.status("e")["phase"] == "paused" {
            break;
        }
    }
    let v = s.wait_until("e", Duration::from_secs(5), |v| v["phase"] == "paused");
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(
            "sample ratio mismatch: exposure lost after routing: Envoy answered v1 0 of"
        ) && reason.contains("itself; equal loss on every arm would share those replies"),
        "{reason}"
    );
}

#[test]
fn promoting_a_bandit_by_hand_picks_the_candidate_most_probably_best() {
    let s = start(&temp_dir("bandit-promote"));
    s.applied(&format!(
        "name: p\n{THREE}\nstrategy: bandit\ncheck_interval_s: 0.2\nstages: [{{weight: 50, min_duration_s: 600}}, {{weight: 100}}]"
    ));
    let r = bandit_report(
        1,
        &[
            ("v1", 500, 0, 500, 50),
            ("v2", 500, 0, 500, 50),
            ("v3", 500, 0, 500, 150),
        ],
    );
    assert_eq!(s.report("p", &r).0, 204);
    s.wait_until("p", Duration::from_secs(5), |v| {
        v["best_arm"]["leader"] == "v3"
    });
    let (code, v) = s.req(
        "POST",
        "/v1/rollouts/p/commands",
        Some(r#"{"command": "promote_full"}"#),
        true,
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(weights(&s, "p"), json!({"v1": 0.0, "v2": 0.0, "v3": 100.0}));
}
