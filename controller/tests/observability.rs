//! What a platform team's tooling sees of a real `rampctl serve`: probes (`/healthz`, `/readyz`),
//! the Prometheus exposition on `/metrics`, and the `event` hook told of every transition, in
//! Ramp's JSON or as a Slack-compatible message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{report, start, temp_dir, Api};
use ramp_tests::canned::CannedServer;
use ramp_tests::controller::METRICS_TOKEN;
use serde_json::Value;

/// `GET path` as text, with `token` as the bearer credential if any.
fn get_text(s: &common::Serve, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = ureq::get(&s.url(path));
    if let Some(t) = token {
        req = req.set("authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{path}: {e}"),
    }
}

/// The value of the sample `series` (name and labels as exposed) in an exposition text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn probes_and_metrics_show_the_rollouts_and_what_was_served() {
    let s = start(&temp_dir("observe"));
    assert_eq!(get_text(&s, "/healthz", None), (200, "ok\n".to_owned()));
    let (code, ready) = get_text(&s, "/readyz", None);
    assert_eq!(code, 200, "{ready}");
    s.applied("name: obs\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 0.2\nstages: [{weight: 20, min_duration_s: 600, rules: [{metric: error_rate, max: 0.05, min_samples: 10}]}, {weight: 100}]\n");
    let (code, v) = s.report("obs", &report("a", 1, &[("v1", 400, 4), ("v2", 100, 30)]));
    assert_eq!(code, 204, "{v}");
    for _ in 0..3 {
        assert_eq!(s.req("GET", "/v1/rollouts/obs/state", None, false).0, 200);
    }
    // A failing rule: 30% errors against max 0.05 (sure, even over 100 requests).
    s.wait_until("obs", Duration::from_secs(10), |st| {
        st["failed_checks"] == 1
    });
    let (code, text) = get_text(&s, "/metrics", Some(METRICS_TOKEN));
    assert_eq!(code, 200);
    let at = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}:\n{text}"));
    assert_eq!(at(r#"ramp_controller_reports_total{rollout="obs"}"#), 1.0);
    assert_eq!(at(r#"ramp_controller_polls_total{rollout="obs"}"#), 3.0);
    assert!(at(r#"ramp_controller_checks_total{rollout="obs"}"#) >= 1.0);
    assert!(at(r#"ramp_controller_failed_checks_total{rollout="obs"}"#) >= 1.0);
    assert_eq!(
        at(r#"ramp_controller_rollout_phase{rollout="obs",phase="progressing"}"#),
        1.0
    );
    assert_eq!(
        at(r#"ramp_controller_rollout_phase{rollout="obs",phase="succeeded"}"#),
        0.0
    );
    assert_eq!(at(r#"ramp_controller_rollout_stage{rollout="obs"}"#), 1.0);
    assert_eq!(
        at(r#"ramp_controller_rollout_weight_percent{rollout="obs",arm="v2"}"#),
        20.0
    );
    let rule = r#"{rollout="obs",arm="v2",metric="error_rate",bound="max"}"#;
    assert_eq!(at(&format!("ramp_controller_rule_value{rule}")), 0.3);
    assert_eq!(at(&format!("ramp_controller_rule_limit{rule}")), 0.05);
    assert_eq!(at(&format!("ramp_controller_rule_failing{rule}")), 1.0);
    assert_eq!(at("ramp_controller_reconcilers_running"), 1.0);
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
}

#[test]
fn every_transition_reaches_the_event_hooks_as_json_and_as_slack_text() {
    let s = start(&temp_dir("events"));
    let (json_hook, slack_hook) = (
        CannedServer::start(0, 200, "{}").unwrap(),
        CannedServer::start(0, 200, "ok").unwrap(),
    );
    s.applied(&format!(
        "name: told\narms: [{{name: v1, role: baseline}}, {{name: v2, role: candidate}}]\ncheck_interval_s: 0.2\nhooks:\n  - {{on: event, url: \"{}/ramp\"}}\n  - {{on: event, url: \"{}/slack\", format: slack}}\nstages: [{{weight: 10, min_duration_s: 600}}, {{weight: 100}}]\n",
        json_hook.url(),
        slack_hook.url()
    ));
    assert_eq!(
        s.req(
            "POST",
            "/v1/rollouts/told/commands",
            Some(r#"{"command":"pause"}"#),
            true
        )
        .0,
        200
    );
    assert_eq!(
        s.req(
            "POST",
            "/v1/rollouts/told/commands",
            Some(r#"{"command":"roll_back"}"#),
            true
        )
        .0,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let bodies = |hook: &CannedServer| hook.bodies.lock().unwrap().clone();
    while (bodies(&json_hook).len() < 3 || bodies(&slack_hook).len() < 3)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Each event is sent on its own task, so two close together may arrive in either order:
    // `at_ms` says which came first.
    let mut events: Vec<Value> = bodies(&json_hook)
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    events.sort_by_key(|e| e["at_ms"].as_u64());
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"applied"), "{events:?}");
    assert_eq!(kinds.last(), Some(&"command"), "{events:?}");
    let last = events.last().unwrap();
    assert_eq!(
        (&last["phase"], &last["weights"]["v2"], &last["hook"]),
        (
            &Value::from("rolled_back"),
            &Value::from(0.0),
            &Value::from("event")
        ),
        "{last}"
    );
    let texts: Vec<String> = bodies(&slack_hook)
        .iter()
        .map(|b| {
            serde_json::from_str::<Value>(b).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("Ramp told: applied [v1 90.0%, v2 10.0%]: rollout applied")),
        "{texts:?}"
    );
    assert_eq!(texts.len(), events.len(), "{texts:?}");
    let (_, metrics) = get_text(&s, "/metrics", Some(METRICS_TOKEN));
    assert_eq!(
        sample(
            &metrics,
            r#"ramp_controller_rollbacks_total{rollout="told"}"#
        ),
        Some(1.0),
        "an operator's rollback counts: {metrics}"
    );
}
