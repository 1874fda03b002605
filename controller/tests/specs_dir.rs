//! `rampctl serve --specs DIR` as a process: a new baseline, candidate set or strategy in a file
//! starts a new revision at stage 1, and a second file naming the same rollout is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{temp_dir, Api, TOKEN};

fn spec(candidate: &str) -> String {
    format!("name: rev\narms: [{{name: v1, role: baseline}}, {{name: {candidate}, role: candidate}}]\ncheck_interval_s: 0.2\nstages: [{{weight: 30, min_duration_s: 600}}, {{weight: 100}}]\n")
}

#[test]
fn a_new_candidate_in_a_file_starts_a_new_revision_and_duplicates_are_refused() {
    let dir = temp_dir("specs");
    let specs = dir.join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(specs.join("rev.yaml"), spec("v2")).unwrap();
    let s = common::Serve::start_binary(
        std::path::Path::new(env!("CARGO_BIN_EXE_rampctl")),
        &dir.join("ramp.db"),
        TOKEN,
        0,
        &[
            "--specs",
            specs.to_str().unwrap(),
            "--specs-interval-s",
            "0.2",
        ],
    )
    .unwrap();
    let first = s.wait_until("rev", Duration::from_secs(10), |v| v["candidate"] == "v2");
    assert_eq!(
        s.req(
            "POST",
            "/v1/rollouts/rev/commands",
            Some(r#"{"command":"promote"}"#),
            true
        )
        .0,
        200
    );
    s.wait_until("rev", Duration::from_secs(10), |v| v["stage"] == 2);
    std::fs::write(specs.join("rev.yaml"), spec("v3")).unwrap();
    std::fs::write(specs.join("z-copy.yaml"), spec("v2")).unwrap();
    let next = s.wait_until("rev", Duration::from_secs(10), |v| v["candidate"] == "v3");
    assert_eq!(
        (&next["stage"], &next["weights"]["v3"], &next["phase"]),
        (
            &serde_json::json!(1),
            &serde_json::json!(30.0),
            &serde_json::json!("progressing")
        ),
        "{next}"
    );
    assert!(
        next["version"].as_u64() > first["version"].as_u64(),
        "{next}"
    );
    let (_, h) = s.req("GET", "/v1/rollouts/rev/history", None, false);
    assert!(
        h["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "new_revision"
                && e["detail"].as_str().unwrap().contains("(v2 -> v3)")),
        "{h}"
    );
    let (_, seen) = s.req("GET", "/v1/specs", None, false);
    assert_eq!(
        seen["files"][1]["error"], "rollout \"rev\" is already defined in rev.yaml",
        "{seen}"
    );
}
