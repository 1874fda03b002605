//! `rampctl serve --specs DIR` with a real Envoy: a spec file dropped into the directory is rolled
//! out through the filter, an edit changes the running rollout, an invalid file changes nothing
//! and is reported, and a removed file leaves its rollout as it is.

use std::time::{Duration, Instant};

use ramp_tests::controller::{Controller, Rig};
use ramp_tests::{count_by_arm, drive, no_headers, two_arm_config_with_controller, Envoy};
use serde_json::{json, Value};

fn spec(weight: u32) -> String {
    format!("name: git\narms: [{{name: v1, role: baseline}}, {{name: v2, role: candidate}}]\ncheck_interval_s: 0.5\nstages: [{{weight: {weight}, min_duration_s: 600}}, {{weight: 100}}]\n")
}

fn get(controller: &Controller, path: &str) -> (u16, Value) {
    controller.call("GET", path, None, false).unwrap()
}

/// Waits until `ok` holds for GET `path`; fails with the last answer after 15 s.
fn wait(controller: &Controller, path: &str, ok: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, v) = get(controller, path);
        if ok(code, &v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{path}: {code} {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn share_of_v2(envoy: &Envoy) -> f64 {
    let replies = drive(&envoy.url("/predict"), 400, 2, no_headers);
    count_by_arm(&replies).get("v2").copied().unwrap_or(0) as f64 / 400.0
}

#[test]
fn rollouts_follow_the_files_in_the_specs_directory() {
    let dir = tempfile::tempdir().unwrap();
    let specs = dir.path().to_str().unwrap().to_owned();
    let rig = Rig::start_with(&["--specs", &specs, "--specs-interval-s", "0.3"]).unwrap();
    let controller = &rig.controller;
    let cfg = json!({
        "rollout": "git",
        "arms": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
        "controller": {"cluster": "rampctl", "poll_ms": 250}
    });
    let envoy = Envoy::start(
        &two_arm_config_with_controller(&cfg, rig.v1.port, rig.v2.port, controller.port).unwrap(),
        2,
    )
    .unwrap();

    // A new file starts a rollout, and the filters follow it.
    std::fs::write(dir.path().join("git.yaml"), spec(50)).unwrap();
    wait(controller, "/v1/rollouts/git", |code, v| {
        code == 200 && v["weights"]["v2"] == 50.0
    });
    std::thread::sleep(Duration::from_millis(1000));
    let share = share_of_v2(&envoy);
    assert!((0.40..0.60).contains(&share), "50% from the file: {share}");

    // An edit changes the running rollout from now: the stage's weight drops to 10%.
    std::fs::write(dir.path().join("git.yaml"), spec(10)).unwrap();
    let edited = wait(controller, "/v1/rollouts/git", |_, v| {
        v["weights"]["v2"] == 10.0
    });
    assert_eq!(edited["stage"], 1, "{edited}");
    std::thread::sleep(Duration::from_millis(1000));
    let share = share_of_v2(&envoy);
    assert!((0.04..0.18).contains(&share), "10% after the edit: {share}");

    // An invalid file changes nothing and is reported, in /v1/specs and in the rollout's status.
    std::fs::write(
        dir.path().join("bad.yaml"),
        "name: other\narms: []\nstages: [{weight: 100}]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("git.yaml"),
        spec(10).replace("weight: 10", "weight: 150"),
    )
    .unwrap();
    let seen = wait(controller, "/v1/specs", |_, v| {
        v["files"]
            .as_array()
            .is_some_and(|f| f.len() == 2 && f.iter().all(|f| f["error"].is_string()))
    });
    let files = seen["files"].as_array().unwrap();
    assert!(
        files[0]["error"]
            .as_str()
            .unwrap()
            .contains("arms: exactly one baseline"),
        "{seen}"
    );
    assert!(
        files[1]["error"]
            .as_str()
            .unwrap()
            .contains("stages[0].weight"),
        "{seen}"
    );
    let (_, status) = get(controller, "/v1/rollouts/git");
    assert_eq!(status["weights"]["v2"], 10.0, "unchanged: {status}");
    assert!(
        status["spec_file_error"]
            .as_str()
            .is_some_and(|e| e.contains("stages[0].weight")),
        "{status}"
    );
    let (_, list) = get(controller, "/v1/rollouts");
    assert_eq!(list["rollouts"].as_array().unwrap().len(), 1, "{list}");
    let (code, out, _) = controller.cli(&["specs"], false).unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("INVALID"), "{out}");

    // A removed file leaves the rollout as it is, and says so in its history.
    std::fs::remove_file(dir.path().join("git.yaml")).unwrap();
    wait(controller, "/v1/rollouts/git/history", |_, h| {
        h["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "spec_removed"))
    });
    let (_, status) = get(controller, "/v1/rollouts/git");
    assert_eq!(
        (&status["phase"], &status["weights"]["v2"]),
        (&json!("progressing"), &json!(10.0)),
        "{status}"
    );
    assert_eq!(
        controller.event_kinds("git").unwrap(),
        ["applied", "spec_changed", "spec_removed"]
    );
}
