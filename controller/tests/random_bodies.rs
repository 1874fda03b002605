//! Random report, feedback, command and spec bodies against one real `rampctl serve`: the answer
//! is never a 5xx (no store failure can happen here), the process never dies, and a refused call
//! leaves the rollout exactly as it was (issue "rampctl under fire", property test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Api;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Bodies near the valid ones: each field replaced, dropped or given a hostile value.
fn hostile_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(null)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(1e308)),
        Just(json!("")),
        Just(json!("x".repeat(300))),
        Just(json!("v2.00000000000000ab")),
        Just(json!([[[[[]]]]])),
        Just(json!({"a": {"b": {}}})),
        any::<u32>().prop_map(|n| json!(n)),
        any::<bool>().prop_map(|b| json!(b)),
        "[a-z0-9./ _-]{0,20}".prop_map(|s| json!(s)),
    ]
}

fn mutate(base: Value, paths: Vec<(usize, Option<Value>)>) -> Value {
    let mut v = base;
    for (pick, replacement) in paths {
        let mut at = &mut v;
        // Walk down `pick`'s digits through objects, then replace or remove there.
        let mut p = pick;
        while let Some(obj) = at.as_object_mut() {
            if obj.is_empty() {
                break;
            }
            let keys: Vec<String> = obj.keys().cloned().collect();
            let key = keys[p % keys.len()].clone();
            p /= keys.len().max(1);
            if p == 0 || !obj[&key].is_object() {
                match &replacement {
                    Some(r) => {
                        obj.insert(key, r.clone());
                    }
                    None => {
                        obj.remove(&key);
                    }
                }
                break;
            }
            at = obj.get_mut(&key).unwrap();
        }
    }
    v
}

fn edits() -> impl Strategy<Value = Vec<(usize, Option<Value>)>> {
    prop::collection::vec((any::<usize>(), prop::option::of(hostile_value())), 0..4)
}

/// The parts of a rollout a refused call must not change.
fn fingerprint(s: &common::Serve) -> Value {
    let v = s.status("p");
    json!([
        v["phase"],
        v["stage"],
        v["version"],
        v["weights"],
        v["failed_checks"],
        v["reason"]
    ])
}

#[test]
fn random_bodies_never_get_a_5xx_nor_change_state_when_refused() {
    let s = common::start(&common::temp_dir("props"));
    s.applied("name: p\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 60\nstages: [{weight: 10, min_duration_s: 3600}, {weight: 100}]");
    let report = common::report("inst", 1, &[("v1", 10, 1), ("v2", 5, 0)]);
    let feedback = json!({"decision": "v2.00000000000000ab", "correct": true, "reward": 0.5});
    let command = json!({"command": "set_weight", "weight": 20});
    let spec = json!({"name": "q", "arms": [{"name": "v1", "role": "baseline"}, {"name": "v2", "role": "candidate"}],
                      "stages": [{"weight": 10}, {"weight": 100}]});
    let config = ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&(0usize..4, edits()), |(kind, edits)| {
            let (path, base, auth) = match kind {
                0 => ("/v1/rollouts/p/reports", report.clone(), false),
                1 => ("/v1/rollouts/p/feedback", feedback.clone(), true),
                2 => ("/v1/rollouts/p/commands", command.clone(), true),
                _ => ("/v1/rollouts", spec.clone(), true),
            };
            let body = mutate(base, edits).to_string();
            let before = fingerprint(&s);
            let (code, answer) = s.req("POST", path, Some(&body), auth);
            prop_assert!(code < 500, "{path} {body} -> {code} {answer}");
            if code >= 400 {
                prop_assert_eq!(
                    fingerprint(&s),
                    before,
                    "refused {} {} changed the rollout",
                    path,
                    body
                );
            }
            if kind == 2 && code == 200 {
                // Put the rollout back where the next case expects it.
                let (c, _) = s.req("POST", path, Some(r#"{"command":"resume"}"#), true);
                prop_assert!(c == 200 || c == 409);
            }
            if kind == 3 && code == 201 {
                // A second apply of the same name is a conflict, not a failure.
                prop_assert_eq!(s.req("POST", path, Some(&body), true).0, 409);
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(s.timed_poll("p").0, 200, "the process is alive");
}
