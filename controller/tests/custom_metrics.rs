//! Issue 24, the team's own metrics: rules whose figure comes from the team's Prometheus (a PromQL
//! template per arm) or a JSON endpoint (`web`), through a real `rampctl serve`, a real Prometheus
//! scraping the test model servers' own `/metrics`, and real HTTP endpoints. No Envoy: a custom
//! figure needs no traffic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{start, temp_dir, Api};
use ramp_tests::canned::CannedServer;
use ramp_tests::kpi::KpiServer;
use ramp_tests::prometheus::Prometheus;
use ramp_tests::ModelServer;
use serde_json::Value;

const ARMS: &str = "arms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\n";

/// A canary held in its first stage (10%) with these rules, checked every 0.2 s.
fn canary(name: &str, rules: &str) -> String {
    format!(
        "name: {name}\n{ARMS}check_interval_s: 0.2\nfailure_threshold: 2\nstages: [{{weight: 10, min_duration_s: 600, rules: [{rules}]}}, {{weight: 100}}]\n"
    )
}

/// The status entry of custom rule `name`.
fn check<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

fn confidence(m: &ModelServer, v: f64) {
    m.behaviour
        .confidence_micros
        .store((v * 1e6) as u64, Ordering::Relaxed);
}

/// Waits until `query` returns `n` series.
fn wait_for_series(prometheus: &Prometheus, query: &str, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = prometheus.query(query).unwrap();
        if answer["data"]["result"].as_array().map(Vec::len) == Some(n) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{answer}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Refused at the edge naming the field, with no URL's secrets in the answer.
#[test]
fn bad_custom_rules_are_refused_naming_the_field() {
    let s = start(&temp_dir("custom-bad"));
    for (rule, field, reason) in [
        (
            "{metric: custom, name: c, web: {url: 'http://ops:s3cret@kpi/{{arm}}/{{model}}?key=k3y', json_pointer: /v}, max: 1}",
            "stages[0].rules[0].web.url",
            "`{{model}}` is not a placeholder",
        ),
        (
            "{metric: custom, name: c, prometheus: {url: 'http://ops:s3cret@p:9090/?key=k3y', query: 'up{arm={{arm}}}'}, min: 1}",
            "stages[0].rules[0].prometheus.query",
            "inside a quoted label value",
        ),
        (
            "{metric: custom, name: c, prometheus: {url: 'gopher://ops:s3cret@p/?key=k3y', query: 'up{arm=\"{{arm}}\"}'}, min: 1}",
            "stages[0].rules[0].prometheus.url",
            "http:// or https://",
        ),
        (
            "{metric: custom, name: c, web: {url: 'http://kpi/{{arm}}', json_pointer: /v}, max_worse_than_baseline: 0.1}",
            "stages[0].rules[0].higher_is",
            "required",
        ),
    ] {
        let (code, v) = s.req("POST", "/v1/rollouts", Some(&canary("bad", rule)), true);
        assert_eq!(code, 400, "{v}");
        assert_eq!(v["field"], field, "{v}");
        assert!(v["reason"].as_str().unwrap().contains(reason), "{v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{v}");
        let text = v.to_string();
        assert!(!text.contains("s3cret") && !text.contains("k3y"), "{text}");
    }
}

/// A PromQL template read through a real Prometheus that scrapes the model servers' own
/// `/metrics`: the baseline's figure beside the candidate's, a series that does not exist and a
/// query Prometheus refuses shown with their reasons, and a candidate whose own metric turns
/// worse than the baseline's rolled back.
#[test]
fn a_promql_template_judges_the_model_servers_own_metric_through_a_real_prometheus() {
    let (v1, v2) = (
        ModelServer::start("v1").unwrap(),
        ModelServer::start("v2").unwrap(),
    );
    confidence(&v1, 0.92);
    confidence(&v2, 0.90);
    let prometheus = Prometheus::start_scraping(&[], &[], &[v1.port, v2.port]).unwrap();
    // Prometheus has scraped both servers before the rollout starts: before that the query has
    // no value, and three such checks would pause it.
    wait_for_series(&prometheus, "model_confidence", 2);
    let s = start(&temp_dir("custom-prom"));
    let url = prometheus.url("");
    s.applied(&format!(
        "name: promconf\n{ARMS}check_interval_s: 0.5\nfailure_threshold: 2\nmetrics: {{prometheus: '{url}'}}\nstages:\n- weight: 10\n  min_duration_s: 600\n  rules:\n  - {{metric: custom, name: confidence, prometheus: {{query: 'avg(model_confidence{{arm=\"{{{{arm}}}}\"}})'}}, max_worse_than_baseline: 0.05, higher_is: better}}\n  - {{metric: custom, name: calibration, prometheus: {{url: '{url}', query: 'avg(model_calibration{{arm=\"{{{{arm}}}}\"}})'}}, min: 0.5, no_data_checks: 100}}\n  - {{metric: custom, name: broken, prometheus: {{query: 'avg(model_confidence{{arm=\"{{{{arm}}}}\"}}'}}, min: 0.5, no_data_checks: 100}}\n- weight: 100\n"
    ));
    let healthy = s.wait_until("promconf", Duration::from_secs(30), |v| {
        check(v, "confidence")["verdict"] == "pass"
    });
    let c = check(&healthy, "confidence");
    assert_eq!(
        (c["value"].as_f64(), c["baseline_value"].as_f64()),
        (Some(0.9), Some(0.92)),
        "{c}"
    );
    assert_eq!(c["source"], "prometheus");
    assert_eq!(c["asked"], "avg(model_confidence{arm=\"v2\"})");
    let missing = check(&healthy, "calibration");
    assert_eq!(missing["verdict"], "not_enough_data", "{missing}");
    assert_eq!(
        missing["reason"],
        "no value: the query returned no series (no values found)"
    );
    let broken = check(&healthy, "broken");
    let why = broken["reason"].as_str().unwrap();
    assert!(
        why.starts_with("no value: answered 400: ") && why.contains("parse error"),
        "{why}"
    );
    assert_eq!(
        healthy["phase"], "progressing",
        "no value is no pass, and no failure"
    );
    assert_eq!(healthy["stage"], 1);

    confidence(&v2, 0.70);
    let v = s.wait_until("promconf", Duration::from_secs(30), |v| {
        v["phase"] == "rolled_back"
    });
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains(
            "custom metric confidence 0.7000 is 0.2200 worse than baseline 0.9200 (allowed 0.05)"
        ),
        "{reason}"
    );
    assert_eq!(v["weights"]["v2"], 0.0);
}

/// A `web` source: the team's JSON API read per arm with a JSON pointer; a candidate 24% below
/// the baseline's figure under `max_decrease: 0.1` is rolled back; `rampctl status` shows the
/// rule's figures and reason like the others'.
#[test]
fn a_web_source_rolls_back_a_candidate_whose_own_figure_is_worse() {
    let (v1, v2) = (
        ModelServer::start("v1").unwrap(),
        ModelServer::start("v2").unwrap(),
    );
    confidence(&v1, 0.92);
    confidence(&v2, 0.90);
    let kpi = KpiServer::start(&[&v1, &v2]).unwrap();
    let s = start(&temp_dir("custom-web"));
    let url = kpi.url("/rollouts/{{rollout}}/arms/{{arm}}");
    s.applied(&canary(
        "webconf",
        &format!("{{metric: custom, name: confidence, web: {{url: '{url}', json_pointer: /model/confidence}}, max_decrease: 0.1}}"),
    ));
    let healthy = s.wait_until("webconf", Duration::from_secs(10), |v| {
        check(v, "confidence")["verdict"] == "pass"
    });
    let c = check(&healthy, "confidence");
    assert_eq!(
        (c["value"].as_f64(), c["baseline_value"].as_f64()),
        (Some(0.9), Some(0.92)),
        "{c}"
    );
    assert_eq!(c["asked"], kpi.url("/rollouts/webconf/arms/v2"));
    let (code, out, _) = s.cli(&["status", "webconf"], false).unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("check custom confidence")
            && out.contains("0.9000 >= baseline 0.9200 - 10% [ok] (web;"),
        "{out}"
    );

    confidence(&v2, 0.70);
    let v = s.wait_until("webconf", Duration::from_secs(10), |v| {
        v["phase"] == "rolled_back"
    });
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains(
            "custom metric confidence 0.7000 is 23.9% below baseline 0.9200 (allowed 10%)"
        ),
        "{reason}"
    );
    let kinds = s.event_kinds("webconf").unwrap();
    assert_eq!(
        kinds.iter().filter(|k| *k == "check_failed").count(),
        1,
        "failure_threshold 2: one failed check, then the rollback: {kinds:?}"
    );
    let (_, out, _) = s.cli(&["status", "webconf"], false).unwrap();
    assert!(
        out.contains("[fail]") && out.contains("23.9% below baseline"),
        "{out}"
    );
}

/// Sources that give no value (an error status, an answer past 1 MiB, a pointer to nothing, a
/// string that is no number, an endpoint slower than a call may take) are never a pass and
/// never a rollback: after `no_data_checks` checks the rollout pauses, saying why, at the
/// weight it had; URLs' secrets stay masked.
#[test]
fn a_source_without_a_value_pauses_the_rollout_saying_why() {
    let s = start(&temp_dir("custom-nodata"));
    let huge: &'static str =
        Box::leak(format!("{{\"v\": [{}0]}}", "0,".repeat(600_000)).into_boxed_str());
    let servers = [
        (
            "down",
            CannedServer::start(0, 503, r#"{"error": "warming up"}"#).unwrap(),
            "answered 503: warming up",
        ),
        (
            "huge",
            CannedServer::start(0, 200, huge).unwrap(),
            "the answer is larger than 1 MiB",
        ),
        (
            "nothing",
            CannedServer::start(0, 200, r#"{"w": 1}"#).unwrap(),
            "nothing at JSON pointer \"/v\"",
        ),
        (
            "word",
            CannedServer::start(0, 200, r#"{"v": "high"}"#).unwrap(),
            "the value is \"high\", not a number",
        ),
        (
            "slow",
            CannedServer::start(7_000, 200, r#"{"v": 1}"#).unwrap(),
            "timed out",
        ),
    ];
    for (name, server, _) in &servers {
        let url = format!(
            "http://ops:s3cret@127.0.0.1:{}/kpi/{{{{arm}}}}?key=k3y",
            server.port
        );
        s.applied(&canary(
            name,
            &format!("{{metric: custom, name: kpi, web: {{url: '{url}', json_pointer: /v}}, min: 0.5, no_data_checks: 2}}"),
        ));
    }
    for (name, _, said) in &servers {
        let v = s.wait_until(name, Duration::from_secs(40), |v| {
            v["phase"] != "progressing"
        });
        assert_eq!(v["phase"], "paused", "{v}");
        let reason = v["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("custom metric kpi: no value for 2 checks in a row (v2: ")
                && reason.contains(said)
                && reason.ends_with("resume once the source answers"),
            "{name}: {reason}"
        );
        assert_eq!(v["weights"]["v2"], 10.0, "{v}");
        let c = check(&v, "kpi");
        assert_eq!(c["verdict"], "not_enough_data", "{c}");
        assert!(c["reason"].as_str().unwrap().contains(said), "{c}");
        let history = s
            .req("GET", &format!("/v1/rollouts/{name}/history"), None, false)
            .1;
        for text in [v.to_string(), history.to_string()] {
            assert!(!text.contains("s3cret") && !text.contains("k3y"), "{text}");
        }
        let kinds = s.event_kinds(name).unwrap();
        assert_eq!(kinds, ["applied", "paused"], "{name}");
    }
}
