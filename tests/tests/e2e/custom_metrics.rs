//! The team's own metrics (issue 24) end to end: a real Envoy with the filter splitting traffic
//! between two model servers, a real `rampctl serve`, and a real Prometheus scraping the Envoy and
//! the model servers' own `/metrics`. A candidate whose own metric (its prediction confidence) is
//! worse than the baseline's is rolled back by a PromQL-template rule and by a `web` rule, and the
//! filters stop sending it traffic; a query that returns nothing holds the rollout with a reason.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ramp_tests::controller::Rig;
use ramp_tests::kpi::KpiServer;
use ramp_tests::prometheus::Prometheus;
use ramp_tests::{two_arm_config_with_controller, Envoy, ModelServer, Traffic};
use serde_json::{json, Value};

const ARMS: &str = "arms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\n";

struct Setup {
    rig: Rig,
    envoy: Envoy,
}

/// The rig and an Envoy (2 workers) whose filter polls the controller for `rollout`'s weights.
fn setup(rollout: &str) -> Setup {
    let rig = Rig::start().unwrap();
    let filter = json!({
        "rollout": rollout,
        "arms": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
        "controller": {"cluster": "rampctl", "poll_ms": 250}
    });
    let config =
        two_arm_config_with_controller(&filter, rig.v1.port, rig.v2.port, rig.controller.port)
            .unwrap();
    let envoy = Envoy::start(&config, 2).unwrap();
    Setup { rig, envoy }
}

fn confidence(m: &ModelServer, v: f64) {
    m.behaviour
        .confidence_micros
        .store((v * 1e6) as u64, Ordering::Relaxed);
}

/// A real Prometheus scraping the Envoy and both model servers, once it holds both servers'
/// `model_confidence` (before that a query has no value, which would count toward a pause).
fn prometheus(s: &Setup) -> Prometheus {
    let p = Prometheus::start_scraping(&[s.envoy.admin_port], &[], &[s.rig.v1.port, s.rig.v2.port])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.query("model_confidence").unwrap()["data"]["result"]
        .as_array()
        .map_or(0, Vec::len)
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped the models"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    p
}

/// The status entry of custom rule `name`.
fn check<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

/// v2's share of the answers in the next `for_ms` milliseconds.
fn v2_share(traffic: &Traffic, for_ms: u64) -> f64 {
    let from = Instant::now();
    std::thread::sleep(Duration::from_millis(for_ms));
    let (v2, n) = traffic.share_since("v2", from);
    v2 as f64 / n.max(1) as f64
}

/// Runs the healthy-then-worse story for a rollout whose spec judges `confidence`: passing while
/// v2's confidence is 0.91 against v1's 0.92, rolled back once it is 0.70, and then the filters
/// send v2 nothing. Returns the rollback's reason.
fn worse_candidate_is_rolled_back(s: &Setup, name: &str, spec: &str) -> String {
    let controller = &s.rig.controller;
    let traffic = Traffic::start(s.envoy.url("/predict"), 2);
    controller.apply(spec).unwrap();
    let healthy = controller
        .wait_for(name, Duration::from_secs(30), |v| {
            check(v, "confidence")["verdict"] == "pass"
        })
        .unwrap();
    let c = check(&healthy, "confidence");
    assert_eq!(c["verdict"], "pass", "{healthy}");
    // An average over the window of a constant gauge: the constant, up to rounding.
    let near = |v: &Value, x: f64| v.as_f64().is_some_and(|v| (v - x).abs() < 1e-9);
    assert!(
        near(&c["value"], 0.91) && near(&c["baseline_value"], 0.92),
        "{c}"
    );
    assert_eq!(
        (&healthy["phase"], &healthy["stage"]),
        (&json!("progressing"), &json!(1))
    );
    std::thread::sleep(Duration::from_millis(1000)); // the filters apply the 50% split
    let before = v2_share(&traffic, 1500);
    assert!(
        (0.3..0.7).contains(&before),
        "v2 serves its half meanwhile: {before}"
    );

    let fault = Instant::now();
    confidence(&s.rig.v2, 0.70);
    let v = controller
        .wait_for(name, Duration::from_secs(30), |v| {
            v["phase"] == "rolled_back"
        })
        .unwrap();
    eprintln!(
        "{name}: rolled back {:.1} s after v2's confidence fell",
        fault.elapsed().as_secs_f64()
    );
    assert_eq!(v["phase"], "rolled_back", "{v}");
    let kinds = controller.event_kinds(name).unwrap();
    assert!(
        kinds.ends_with(&["check_failed".to_owned(), "rolled_back".to_owned()]),
        "two failed checks (the threshold), then the rollback: {kinds:?}"
    );
    let (code, out, _) = controller.cli(&["status", name], false).unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("check custom confidence") && out.contains("[fail]"),
        "{out}"
    );
    // The filters follow the controller: v2 gets nothing.
    std::thread::sleep(Duration::from_millis(1000));
    let after = v2_share(&traffic, 1500);
    traffic.finish();
    assert_eq!(after, 0.0, "v2 still served {after} after the rollback");
    v["reason"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_candidate_whose_own_prometheus_metric_is_worse_is_rolled_back_by_a_promql_rule() {
    let s = setup("promconf");
    confidence(&s.rig.v1, 0.92);
    confidence(&s.rig.v2, 0.91);
    let prometheus = prometheus(&s);
    // The mean of each arm's own gauge over the window since the last check, beside a rule on
    // the filters' own figures.
    let spec = format!(
        "name: promconf\n{ARMS}check_interval_s: 2\nfailure_threshold: 2\nstages:\n- weight: 50\n  min_duration_s: 600\n  rules:\n  - {{metric: error_rate, max: 0.05, min_samples: 10}}\n  - {{metric: custom, name: confidence, prometheus: {{url: '{}', query: 'avg(avg_over_time(model_confidence{{arm=\"{{{{arm}}}}\"}}[{{{{window}}}}]))'}}, max_worse_than_baseline: 0.05, higher_is: better}}\n- weight: 100\n",
        prometheus.url("")
    );
    let reason = worse_candidate_is_rolled_back(&s, "promconf", &spec);
    // The window after the fall holds 0.70 only, unless a scrape lagged into the one before.
    assert!(
        reason.contains("custom metric confidence 0.")
            && reason.contains("worse than baseline 0.9200 (allowed 0.05)"),
        "{reason}"
    );
}

#[test]
fn a_candidate_whose_own_metric_is_worse_is_rolled_back_through_a_web_source() {
    let s = setup("webconf");
    confidence(&s.rig.v1, 0.92);
    confidence(&s.rig.v2, 0.91);
    let kpi = KpiServer::start(&[&s.rig.v1, &s.rig.v2]).unwrap();
    let spec = format!(
        "name: webconf\n{ARMS}check_interval_s: 1\nfailure_threshold: 2\nstages:\n- weight: 50\n  min_duration_s: 600\n  rules:\n  - {{metric: error_rate, max: 0.05, min_samples: 10}}\n  - {{metric: custom, name: confidence, web: {{url: '{}', json_pointer: /model/confidence}}, max_decrease: 0.1}}\n- weight: 100\n",
        kpi.url("/rollouts/{{rollout}}/arms/{{arm}}")
    );
    let reason = worse_candidate_is_rolled_back(&s, "webconf", &spec);
    assert!(
        reason.contains(
            "custom metric confidence 0.7000 is 23.9% below baseline 0.9200 (allowed 10%)"
        ),
        "{reason}"
    );
    assert!(kpi.hits.load(Ordering::Relaxed) > 0);
}

/// A query for a series nobody exports (a typo, a label the new version lacks: Flagger's "no
/// values found") is not a pass: the stage below has no time or request minimum, so a pass would
/// promote at the first check. Nor is it a failure: after three checks the rollout is paused at
/// its weight, saying why, and the filters keep the split.
#[test]
fn a_query_that_returns_nothing_holds_the_rollout_with_a_reason() {
    let s = setup("nodata");
    let prometheus = prometheus(&s);
    let controller = &s.rig.controller;
    let traffic = Traffic::start(s.envoy.url("/predict"), 2);
    // The Prometheus of `metrics` serves the request figures and, by default, the custom query.
    controller
        .apply(&format!(
            "name: nodata\n{ARMS}check_interval_s: 1\nfailure_threshold: 2\nmetrics: {{prometheus: '{}'}}\nstages:\n- weight: 50\n  rules:\n  - {{metric: custom, name: calibration, prometheus: {{query: 'avg(model_calibration{{arm=\"{{{{arm}}}}\"}})'}}, min: 0.8}}\n- weight: 100\n",
            prometheus.url("")
        ))
        .unwrap();
    let v = controller
        .wait_for("nodata", Duration::from_secs(30), |v| {
            v["phase"] != "progressing"
        })
        .unwrap();
    assert_eq!(v["phase"], "paused", "{v}");
    assert_eq!(
        v["reason"],
        "custom metric calibration: no value for 3 checks in a row (v2: the query returned no series (no values found)); resume once the source answers"
    );
    assert_eq!(
        (&v["stage"], &v["weights"]["v2"]),
        (&json!(1), &json!(50.0)),
        "{v}"
    );
    let c = check(&v, "calibration");
    assert_eq!(c["verdict"], "not_enough_data", "{c}");
    assert_eq!(c["asked"], "avg(model_calibration{arm=\"v2\"})");
    assert_eq!(
        c["reason"],
        "no value: the query returned no series (no values found)"
    );
    assert_eq!(
        controller.event_kinds("nodata").unwrap(),
        ["applied", "paused"]
    );
    let (_, out, _) = controller.cli(&["status", "nodata"], false).unwrap();
    assert!(
        out.contains("paused")
            && out.contains("check custom calibration")
            && out.contains("[no value]"),
        "{out}"
    );
    // Held, not rolled back: the filters keep sending v2 its half.
    let share = v2_share(&traffic, 1500);
    traffic.finish();
    assert!((0.3..0.7).contains(&share), "{share}");
}
