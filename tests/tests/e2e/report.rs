//! Rules tried dry, rules that pause, and the decision record, in real Envoys with the filter and
//! a real `rampctl serve`: a failing dry-run rule is recorded and the rollout is still promoted;
//! `on_fail: pause` pauses where a rule would roll back; `rampctl report` keeps each decision's
//! figures, and its HTML page, rendered by a real headless Chromium, plots every check the JSON
//! holds (a screenshot goes to `tests/bench/results/report.png`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ramp_controller::report::RolloutReport;
use ramp_controller::report_html::series_key;
use ramp_tests::controller::{Controller, Rig};
use ramp_tests::{two_arm_config_with_controller, Envoy, Traffic};
use serde_json::{json, Value};

fn filter_config(rollout: &str) -> Value {
    json!({
        "rollout": rollout,
        "arms": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
        "controller": {"cluster": "rampctl", "poll_ms": 250}
    })
}

fn envoy_for(rig: &Rig, rollout: &str) -> Envoy {
    let config = two_arm_config_with_controller(
        &filter_config(rollout),
        rig.v1.port,
        rig.v2.port,
        rig.controller.port,
    )
    .unwrap();
    Envoy::start(&config, 2).unwrap()
}

/// The report as the CLI reads it (`rampctl report NAME --json`), once the checks made so far
/// have been written (the flusher writes them every 250 ms).
fn report_of(controller: &Controller, rollout: &str) -> (Value, RolloutReport) {
    std::thread::sleep(Duration::from_millis(700));
    let (code, out, err) = controller
        .cli(&["report", rollout, "--json"], false)
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let typed: RolloutReport = serde_json::from_value(v.clone()).unwrap();
    (v, typed)
}

/// The candidate fails 1 request in 5. The dry-run rule (`error_rate max 0.02`) fails at every
/// check, yet the rollout walks on and is promoted: its failure is one `dry_run_failed` event
/// (when it started, not one per check), with the figures in the decision record, and every
/// check of the series shows it failing, marked as a dry run.
#[test]
fn a_failing_dry_run_rule_is_recorded_and_the_rollout_is_still_promoted() {
    let rig = Rig::start().unwrap();
    let envoy = envoy_for(&rig, "dry");
    rig.v2.behaviour.fail_every.store(5, Ordering::Relaxed);
    rig.controller
        .apply("name: dry\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 0.5\nfailure_threshold: 1\nstages:\n  - {weight: 50, min_duration_s: 3, min_requests: 100, rules: [{metric: error_rate, max: 0.5, min_samples: 20}, {metric: error_rate, max: 0.02, min_samples: 20, dry_run: true}]}\n  - {weight: 100}\n")
        .unwrap();
    let traffic = Traffic::start(envoy.url("/predict"), 3);
    let done = rig
        .controller
        .wait_for("dry", Duration::from_secs(60), |v| {
            v["phase"] != "progressing"
        })
        .unwrap();
    traffic.finish();
    assert_eq!(done["phase"], "succeeded", "{done}");
    let events = rig.controller.events("dry").unwrap();
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["applied", "dry_run_failed", "advance", "promoted"],
        "{events:?}"
    );
    let (_, detail) = &events[1];
    assert!(
        detail.starts_with(
            "stage 1 (50%): rule error_rate max 0.02 (dry run, not acted on): error rate 0."
        ) && detail.contains("> max 0.02"),
        "{detail}"
    );

    let (_, report) = report_of(&rig.controller, "dry");
    let recorded = report
        .events
        .iter()
        .find(|e| e.kind == "dry_run_failed")
        .and_then(|e| e.record.clone())
        .expect("the dry-run failure keeps its figures");
    let figures = recorded.figures.expect("figures");
    let dry = figures["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["dry_run"] == true)
        .unwrap();
    assert_eq!(dry["verdict"], "fail", "{figures}");
    assert!(dry["value"].as_f64().unwrap() > 0.1, "{figures}");
    assert!(
        dry["reason"].as_str().unwrap().contains("> max 0.02"),
        "{figures}"
    );
    assert!(figures["window"]["v2"]["p50_ms"].is_number(), "{figures}");
    // The advance was decided on figures in which the dry run failed, and says so.
    let advance = report.events.iter().find(|e| e.kind == "advance").unwrap();
    let on = advance.record.as_ref().unwrap();
    assert_eq!(on.weights_before["v2"], 50.0);
    assert_eq!(on.weights_after["v2"], 100.0);
    assert!(on.figures.as_ref().unwrap()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["dry_run"] == true && c["verdict"] == "fail"));
    // Every check of stage 1 once the rules had their samples: the dry run failed, the acting
    // rule passed (stage 2 has no rules).
    let judged: Vec<&ramp_controller::report::CheckPoint> = report
        .checks
        .iter()
        .filter(|c| c.stage == 1 && c.rules.iter().all(|r| r.verdict != "not_enough_data"))
        .collect();
    assert!(judged.len() >= 4, "{:?}", report.checks);
    // The acting rule passes at every one; the dry run fails once the evidence is sure (a rule
    // fails only when its confidence sequence is beyond the bound, which takes a few checks of
    // data), and from then on.
    let verdicts: Vec<(&str, &str)> = judged
        .iter()
        .map(|c| {
            let dry = c.rules.iter().find(|r| r.dry_run).unwrap();
            let acting = c.rules.iter().find(|r| !r.dry_run).unwrap();
            (dry.verdict.as_str(), acting.verdict.as_str())
        })
        .collect();
    assert!(verdicts.iter().all(|(_, a)| *a == "pass"), "{verdicts:?}");
    let first_fail = verdicts.iter().position(|(d, _)| *d == "fail");
    assert!(
        first_fail.is_some_and(|i| verdicts[i..].iter().all(|(d, _)| *d == "fail")),
        "{verdicts:?}"
    );
    let (code, text, err) = rig.controller.cli(&["report", "dry"], false).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("dry_run_failed"), "{text}");
    assert!(
        text.contains("rule   v2 error_rate <= 0.02 (dry run): value 0."),
        "{text}"
    );
}

/// `on_fail: pause`: the candidate failing 1 request in 2 pauses the rollout at the threshold
/// (a rule without it would roll back), the pause names the rule, the candidate keeps its 50%,
/// and nothing is rolled back.
#[test]
fn a_rule_with_on_fail_pause_pauses_instead_of_rolling_back() {
    let rig = Rig::start().unwrap();
    let envoy = envoy_for(&rig, "pausing");
    rig.controller
        .apply("name: pausing\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 0.5\nfailure_threshold: 2\nstages:\n  - {weight: 50, min_duration_s: 600, rules: [{metric: error_rate, max: 0.05, min_samples: 20, on_fail: pause}]}\n  - {weight: 100}\n")
        .unwrap();
    let traffic = Traffic::start(envoy.url("/predict"), 3);
    std::thread::sleep(Duration::from_secs(2));
    rig.v2.behaviour.fail_every.store(2, Ordering::Relaxed);
    let paused = rig
        .controller
        .wait_for("pausing", Duration::from_secs(30), |v| {
            v["phase"] != "progressing"
        })
        .unwrap();
    // The filters keep sending the candidate its share while an operator decides.
    std::thread::sleep(Duration::from_millis(1500));
    let from = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let (to_v2, n) = traffic.share_since("v2", from);
    traffic.finish();
    assert_eq!(paused["phase"], "paused", "{paused}");
    assert_eq!(paused["weights"]["v2"], 50.0, "{paused}");
    let reason = paused["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(
            "paused by rule error_rate max 0.05 (on_fail: pause) at stage 1 (50%): error rate 0."
        ),
        "{reason}"
    );
    assert!(to_v2 * 4 > n, "still 50% to the candidate: {to_v2}/{n}");
    let kinds = rig.controller.event_kinds("pausing").unwrap();
    assert_eq!(
        kinds,
        ["applied", "check_failed", "paused"],
        "paused, not rolled back"
    );
    let (_, report) = report_of(&rig.controller, "pausing");
    let pause = report.events.iter().find(|e| e.kind == "paused").unwrap();
    let rec = pause.record.as_ref().unwrap();
    assert_eq!(rec.weights_before, rec.weights_after);
    let check = &rec.figures.as_ref().unwrap()["checks"][0];
    assert_eq!(
        (&check["verdict"], &check["on_fail"]),
        (&json!("fail"), &json!("pause")),
        "{check}"
    );
    // An operator can still roll it back from the pause.
    let (code, out, err) = rig
        .controller
        .cli(&["rollback", "pausing", "--json"], true)
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"rolled_back\""), "{out}");
}

/// `chromium`, or a failure that says how to install it: a test of the page that silently
/// passed without a browser would prove nothing.
fn chromium() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("chromium"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "chromium is not installed, and this test renders the report page in it: \
             `apt-get install -y chromium` (Debian's package; `make e2e` installs it)"
        )
    })
}

/// Runs headless Chromium on `page` with `args`; its stdout. Killed after 90 s.
fn run_chromium(page: &Path, args: &[String], profile: &Path) -> String {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).map(|_| out)
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium exited with {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium took more than 90 s on {}", page.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader.join().unwrap().unwrap()
}

/// The `<g class="series">` groups of a DOM as Chromium serialised it: per `data-series`, the
/// circles inside and what the page's own script counted as laid out (`data-rendered`).
fn series_in(dom: &str) -> BTreeMap<String, (usize, Option<usize>)> {
    let mut out = BTreeMap::new();
    let mut rest = dom;
    while let Some(at) = rest.find("<g class=\"series\"") {
        rest = &rest[at..];
        let head_end = rest.find('>').unwrap();
        let head = &rest[..head_end];
        let attr = |name: &str| {
            let start = head.find(&format!("{name}=\""))? + name.len() + 2;
            Some(head[start..].split('"').next()?.to_owned())
        };
        let end = rest.find("</g>").unwrap();
        let circles = rest[..end].matches("<circle").count();
        out.insert(
            attr("data-series").unwrap(),
            (circles, attr("data-rendered").and_then(|r| r.parse().ok())),
        );
        rest = &rest[end..];
    }
    out
}

/// The series a report's page must plot, and how many points each: from the JSON alone.
fn expected_series(r: &RolloutReport) -> BTreeMap<String, usize> {
    let mut want = BTreeMap::new();
    let arms: Vec<&String> = std::iter::once(&r.baseline).chain(&r.candidates).collect();
    for arm in &arms {
        let count = |f: &dyn Fn(&ramp_controller::report::CheckPoint) -> bool| {
            r.checks.iter().filter(|c| f(c)).count()
        };
        want.insert(
            series_key("weights", &[arm]),
            count(&|c| c.weights.contains_key(*arm)),
        );
        want.insert(
            series_key("requests", &[arm]),
            count(&|c| c.arms.contains_key(*arm)),
        );
    }
    for c in &r.checks {
        for p in &c.rules {
            let key = series_key("rule", &[&p.metric, &p.bound, &p.limit.to_string(), &p.arm]);
            *want.entry(key).or_insert(0) += usize::from(p.value.is_some());
        }
        for p in &c.ab {
            *want.entry(series_key("ab", &[&p.arm])).or_insert(0) += 1;
        }
    }
    want
}

/// An A/B test on the success rate (the baseline fails 1 request in 8, the candidate never)
/// with an acting rule and a dry-run rule that fails: the candidate is promoted; the page
/// `rampctl report --html` writes is rendered by headless Chromium, and every series it plots
/// has one point per check the JSON holds (weights and requests per arm, each rule's values, the
/// A/B confidence sequence), all laid out; the screenshot goes to tests/bench/results/.
#[test]
fn the_report_page_plots_every_check_the_json_holds_in_a_real_browser() {
    let browser = chromium();
    let rig = Rig::start().unwrap();
    let envoy = envoy_for(&rig, "abr");
    rig.v1.behaviour.fail_every.store(8, Ordering::Relaxed);
    rig.controller
        .apply("name: abr\nstrategy: ab_test\nab_test: {metric: success_rate, confidence: 0.95}\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 0.5\nstages:\n  - {weight: 50, min_duration_s: 4, min_requests: 200, rules: [{metric: error_rate, max: 0.05, min_samples: 20}, {metric: latency_p50, max: 0.1, min_samples: 20, dry_run: true}]}\n  - {weight: 100}\n")
        .unwrap();
    let traffic = Traffic::start(envoy.url("/predict"), 3);
    let done = rig
        .controller
        .wait_for("abr", Duration::from_secs(90), |v| {
            v["phase"] != "progressing"
        })
        .unwrap();
    traffic.finish();
    assert_eq!(done["phase"], "succeeded", "{done}");
    let (json, report) = report_of(&rig.controller, "abr");
    assert!(report.checks.len() >= 6, "{json}");
    assert!(
        report.checks.iter().filter(|c| !c.ab.is_empty()).count() >= 4,
        "the A/B sequence at several checks: {json}"
    );
    let promoted = report.events.iter().find(|e| e.kind == "advance").unwrap();
    let ab = &promoted.record.as_ref().unwrap().figures.as_ref().unwrap()["ab_test"];
    assert_eq!(ab["result"]["winner"], "candidate", "{ab}");

    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("abr.html");
    let (code, _, err) = rig
        .controller
        .cli(&["report", "abr", "--html", page.to_str().unwrap()], false)
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains(" src=") && !html.contains("href=\"http"),
        "self-contained"
    );

    let dom = run_chromium(
        &page,
        &[
            "--dump-dom".to_owned(),
            "--virtual-time-budget=2000".to_owned(),
        ],
        &dir.path().join("profile-dom"),
    );
    let got = series_in(&dom);
    let want = expected_series(&report);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the plotted series are the JSON's"
    );
    for (key, &n) in &want {
        let (circles, rendered) = got[key];
        assert_eq!(
            circles, n,
            "{key}: points in the page against checks in the JSON"
        );
        assert_eq!(rendered, Some(n), "{key}: points the browser laid out");
    }
    assert!(want["ab:v2"] >= 4 && want["weights:v1"] == report.checks.len());

    let results = ramp_tests::envoy::repo_root().join("tests/bench/results");
    std::fs::create_dir_all(&results).unwrap();
    let shot = results.join("report.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &page,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1000,2200".to_owned(),
        ],
        &dir.path().join("profile-shot"),
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "a screenshot of the page ({} bytes)",
        png.len()
    );
    let (_, text, _) = rig.controller.cli(&["report", "abr"], false).unwrap();
    std::fs::write(results.join("report.txt"), &text).unwrap();
    eprintln!(
        "report page rendered by {}: {} series checked; screenshot {}",
        browser.display(),
        want.len(),
        shot.display()
    );
}
