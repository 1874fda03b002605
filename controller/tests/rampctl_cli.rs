//! `rampctl validate` as an operator runs it: a real process, real files, exit codes and output.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn rampctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rampctl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn validates_the_guides_schedule_and_prints_the_plan() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/canary.yaml");
    let (code, out, _) = rampctl(&["validate", "-f", example]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("rollout fraud-model: v1 (baseline) -> v2 (candidate)"),
        "{out}"
    );
    assert!(
        out.contains("stage 3:    25%  at least 3600 s and 2500 candidate requests"),
        "{out}"
    );
    let (code, out, _) = rampctl(&["validate", "-f", example, "--json"]);
    assert_eq!(
        (code, out.trim()),
        (0, r#"{"name":"fraud-model","stages":5,"valid":true}"#)
    );
}

#[test]
fn every_example_validates_and_the_ab_test_shows_its_planned_sample() {
    for name in ["canary", "ab-test", "abn-test", "bandit", "shadow"] {
        let path = format!("{}/examples/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
        let (code, out, err) = rampctl(&["validate", "-f", &path]);
        assert_eq!(code, 0, "{name}: {out}{err}");
    }
    let ab = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ab-test.yaml");
    let (_, out, _) = rampctl(&["validate", "-f", ab]);
    assert!(
        out.contains(
            "A/B test on Conversion at 95% confidence, planned sample 57756 requests per arm"
        ),
        "{out}"
    );
    assert!(out.contains("manual promotion"), "{out}");
}

#[test]
fn a_bad_spec_exits_2_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("rampctl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "name: r\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\nstages: [{weight: 5, rules: [{metric: error_rate, max: 1.5}]}, {weight: 100}]\n").unwrap();
    let (code, _, err) = rampctl(&["validate", "-f", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains(
            "invalid rollout spec: stages[0].rules[0].max: a rate is a fraction in [0, 1], got 1.5"
        ),
        "{err}"
    );
    let (code, out, _) = rampctl(&["validate", "-f", bad.to_str().unwrap(), "--json"]);
    assert_eq!(code, 2);
    assert!(out.contains(r#""field":"stages[0].rules[0].max""#), "{out}");
    let (code, _, err) = rampctl(&["validate", "-f", "/nonexistent/spec.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("reading /nonexistent/spec.yaml"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// `status --watch` gates a CI job as `kubectl argo rollouts status --timeout` does: the exit
/// code says how the rollout ended, against a real `rampctl serve`.
#[test]
fn status_watch_exit_codes_tell_success_rollback_abort_and_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let controller =
        ramp_tests::controller::Controller::start(&dir.path().join("ramp.db"), "t0ken").unwrap();
    let arms = "arms: [{name: v1, role: baseline}, {name: v2, role: candidate}]";
    let spec = |name: &str, stages: &str| {
        format!("name: {name}\n{arms}\ncheck_interval_s: 0.2\nstages: {stages}\n")
    };
    controller.apply(&spec("quick", "[{weight: 100}]")).unwrap();
    for name in ["held", "backed", "stopped"] {
        controller
            .apply(&spec(
                name,
                "[{weight: 50, min_duration_s: 600}, {weight: 100}]",
            ))
            .unwrap();
    }
    let watch = |name: &str, timeout: &str| {
        controller
            .cli(
                &["status", name, "--watch", "--timeout", timeout, "--json"],
                false,
            )
            .unwrap()
    };
    let (code, out, _) = watch("quick", "30s");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(r#""phase":"succeeded""#), "{out}");
    let (code, _, err) = watch("held", "1s");
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("held is still progressing after 1s"), "{err}");
    assert_eq!(controller.cli(&["rollback", "backed"], true).unwrap().0, 0);
    assert_eq!(watch("backed", "30s").0, 3);
    assert_eq!(controller.cli(&["abort", "stopped"], true).unwrap().0, 0);
    assert_eq!(watch("stopped", "30s").0, 4);
    assert_eq!(watch("nonexistent", "30s").0, 2);
    let (code, _, err) = controller
        .cli(&["status", "held", "--watch", "--timeout", "soon"], false)
        .unwrap();
    assert_eq!(code, 2, "clap refuses a bad duration: {err}");
    assert!(err.contains("a number and a unit"), "{err}");
}

#[test]
fn version_and_shell_completions() {
    let (code, out, _) = rampctl(&["version"]);
    assert_eq!((code, out.trim()), (0, "rampctl 0.1.0"));
    for (shell, marker) in [
        ("bash", "complete -F _rampctl"),
        ("zsh", "#compdef rampctl"),
        ("fish", "complete -c rampctl"),
    ] {
        let (code, out, err) = rampctl(&["completion", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains(marker),
            "{shell}: {}",
            &out[..out.len().min(200)]
        );
        assert!(
            out.contains("set-weight"),
            "{shell} completes the subcommands"
        );
    }
}

/// With several candidates an operator promotes one by name; a name that is not a candidate is
/// refused naming the field.
#[test]
fn promote_names_one_of_several_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let controller =
        ramp_tests::controller::Controller::start(&dir.path().join("ramp.db"), "t0ken").unwrap();
    controller
        .apply("name: abn\nstrategy: ab_test\nab_test: {metric: conversion}\narms: [{name: a, role: baseline}, {name: b, role: candidate}, {name: c, role: candidate}]\nstages: [{weight: 60, min_duration_s: 600}, {weight: 100}]\n")
        .unwrap();
    let (code, _, err) = controller
        .cli(&["promote", "abn", "--full", "--arm", "a"], true)
        .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("\"a\" is not a candidate of this rollout (b, c)"),
        "{err}"
    );
    let (code, out, err) = controller
        .cli(&["promote", "abn", "--full", "--arm", "c", "--json"], true)
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            &v["phase"],
            &v["winner"],
            &v["weights"]["c"],
            &v["weights"]["b"]
        ),
        (
            &serde_json::json!("succeeded"),
            &serde_json::json!("c"),
            &serde_json::json!(100.0),
            &serde_json::json!(0.0)
        ),
        "{v}"
    );
    let kinds = controller.events("abn").unwrap();
    assert_eq!(kinds.last().unwrap().1, "promote_full c", "{kinds:?}");
}
