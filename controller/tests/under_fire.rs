//! `rampctl serve` under hostile or unlucky input, as a real process over real HTTP: one test per
//! numbered item of the issue "rampctl under fire" (each doc comment says which), each of which
//! failed on the controller before its redesign (one global lock held across checks, hooks and
//! Prometheus; reports stored unchecked).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{report, start, temp_dir, try_start, Api, TOKEN};
use ramp_tests::canned::{CannedServer as SlowServer, EMPTY_PROMETHEUS};
use serde_json::json;

const ARMS: &str = "arms: [{name: v1, role: baseline}, {name: v2, role: candidate}]";

fn canary(name: &str, extra: &str) -> String {
    format!("name: {name}\n{ARMS}\ncheck_interval_s: 0.2\n{extra}")
}

/// Item 1: a report with u64::MAX counts panicked in the sum with the lock held (500 "store lock
/// poisoned" on every endpoint) or wrapped in release. Counts above 2^53 are refused naming the
/// field; at the limit from two reporters the totals add up without wrapping, and every endpoint
/// keeps answering.
#[test]
fn item1_huge_counts_are_refused_or_summed_without_wrapping() {
    let s = start(&temp_dir("huge"));
    s.applied(&canary(
        "huge",
        "stages: [{weight: 50, min_duration_s: 600}, {weight: 100}]",
    ));
    let mut r = report("a", 1, &[("v2", 1, 0)]);
    r["arms"]["v2"]["requests"] = json!(u64::MAX);
    let (code, v) = s.report("huge", &r);
    assert_eq!(
        (code, v["field"].as_str()),
        (400, Some("arms.v2.requests")),
        "{v}"
    );
    let limit = 1u64 << 53;
    for instance in ["a", "b"] {
        let mut r = report(instance, 1, &[("v2", 0, 0)]);
        r["arms"]["v2"]["requests"] = json!(limit);
        r["arms"]["v2"]["responses"]["2xx"] = json!(limit);
        assert_eq!(s.report("huge", &r).0, 204);
    }
    // A check may come between the two reports: wait for both (a wrapped sum never gets there).
    let v = s.wait_until("huge", Duration::from_secs(5), |v| {
        v["window"]["v2"]["requests"].as_u64().unwrap_or(0) >= 2 * limit
    });
    assert_eq!(
        v["window"]["v2"]["requests"].as_u64(),
        Some(2 * limit),
        "{v}"
    );
    assert_eq!(s.req("GET", "/v1/rollouts", None, false).0, 200);
    assert_eq!(s.timed_poll("huge").0, 200);
}

/// Item 2: a healthy bandit arm with 10^7 trials and reward rate 0 made the credible interval
/// loop forever with the lock held: status, polls and reports froze.
#[test]
fn item2_a_bandit_with_ten_million_trials_still_answers() {
    let s = start(&temp_dir("bandit"));
    s.applied(&format!(
        "name: b\n{ARMS}\nstrategy: bandit\ncheck_interval_s: 0.2\nstages: [{{weight: 50, min_duration_s: 600}}, {{weight: 100}}]"
    ));
    let mut r = report("a", 1, &[("v1", 10_000_000, 0), ("v2", 10_000_000, 0)]);
    r["arms"]["v1"]["bandit"] = json!({"trials": 10_000_000u64, "reward_micros": 0});
    r["arms"]["v2"]["bandit"] =
        json!({"trials": 10_000_000u64, "reward_micros": 10_000_000_000_000u64});
    assert_eq!(s.report("b", &r).0, 204);
    let t = Instant::now();
    let v = s.wait_until("b", Duration::from_secs(5), |v| {
        v["bandit"]["v1"]["trials"] == 10_000_000
    });
    assert!(t.elapsed() < Duration::from_secs(5));
    let (lo, hi) = (
        v["bandit"]["v1"]["interval"][0].as_f64().unwrap(),
        v["bandit"]["v1"]["interval"][1].as_f64().unwrap(),
    );
    assert!(lo >= 0.0 && hi < 1e-6, "{v}");
    assert!(
        v["bandit"]["v2"]["interval"][0].as_f64().unwrap() > 0.999_999,
        "{v}"
    );
    let (code, took) = s.timed_poll("b");
    assert_eq!(code, 200);
    assert!(took < Duration::from_secs(1), "{took:?}");
}

/// Item 3: Prometheus was queried with the lock held, so a 2 s Prometheus made every filter's
/// poll take 5.5-6 s, and one rollout whose Prometheus was down made `GET /v1/rollouts` answer 502
/// for all. Polls now come from the snapshot; list shows the failing source as that rollout's
/// figures error.
#[test]
fn item3_a_slow_or_dead_prometheus_delays_no_poll_and_breaks_no_list() {
    let s = start(&temp_dir("prom"));
    let prom = SlowServer::start(0, 200, EMPTY_PROMETHEUS).unwrap();
    s.applied(&canary(
        "other",
        "stages: [{weight: 50, min_duration_s: 600}, {weight: 100}]",
    ));
    s.applied(&canary(
        "promslow",
        &format!("metrics: {{prometheus: '{}'}}\nstages: [{{weight: 50, min_duration_s: 600}}, {{weight: 100}}]", prom.url()),
    ));
    prom.delay_ms.store(2000, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500)); // a check is now waiting on Prometheus
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        for name in ["promslow", "other"] {
            let (code, took) = s.timed_poll(name);
            assert_eq!(code, 200);
            worst = worst.max(took);
        }
    }
    assert!(worst < Duration::from_millis(500), "slowest poll {worst:?}");
    prom.delay_ms.store(0, Ordering::Relaxed);
    prom.status.store(503, Ordering::Relaxed);
    let v = s.wait_until("promslow", Duration::from_secs(10), |v| {
        v["figures_error"].is_string()
    });
    assert!(v["figures_error"].as_str().unwrap().contains("503"), "{v}");
    let (code, list) = s.req("GET", "/v1/rollouts", None, false);
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["rollouts"].as_array().unwrap().len(), 2);
}

/// Item 4: hooks ran inside the single check loop, so one slow hook stopped every other
/// rollout's checks; `retries` had no bound.
#[test]
fn item4_a_slow_hook_delays_only_its_own_rollout() {
    let s = start(&temp_dir("hooks"));
    let hook = SlowServer::start(5000, 200, "{}").unwrap();
    s.applied(&canary(
        "hooked",
        &format!("hooks: [{{on: before_promotion, url: '{}/hook', timeout_s: 10, retries: 0}}]\nstages: [{{weight: 10}}, {{weight: 100}}]", hook.url()),
    ));
    let t = Instant::now();
    while hook.hits.load(Ordering::Relaxed) == 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "hook never called");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.applied(&canary("free", "stages: [{weight: 10}, {weight: 100}]"));
    let v = s.wait_until("free", Duration::from_secs(3), |v| {
        v["phase"] == "succeeded"
    });
    assert_eq!(v["weights"]["v2"], 100.0);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "promoted while the other's hook still ran"
    );
    assert_eq!(
        s.status("hooked")["phase"],
        "progressing",
        "still in its hook"
    );
    let (code, v) = s.req(
        "POST",
        "/v1/rollouts",
        Some(&canary("greedy", "hooks: [{on: before_step, url: 'http://127.0.0.1:1/', retries: 11}]\nstages: [{weight: 10}, {weight: 100}]")),
        true,
    );
    assert_eq!(
        (code, v["field"].as_str()),
        (400, Some("hooks[0].retries")),
        "{v}"
    );
}

/// Item 5: one undecodable row stopped every rollout silently. It is now listed as `error` with
/// the reason, polls for it answer 503, and the other rollouts go on.
#[test]
fn item5_an_undecodable_row_is_shown_as_error_and_the_others_go_on() {
    let dir = temp_dir("badrow");
    {
        let s = start(&dir);
        s.applied(&canary(
            "broken",
            "stages: [{weight: 10, min_duration_s: 600}, {weight: 100}]",
        ));
        s.applied(&canary(
            "healthy",
            "stages: [{weight: 10, min_duration_s: 1}, {weight: 100}]",
        ));
        s.req(
            "POST",
            "/v1/rollouts/healthy/commands",
            Some(r#"{"command":"pause"}"#),
            true,
        );
    }
    let db = rusqlite::Connection::open(dir.join("ramp.db")).unwrap();
    db.execute(
        "UPDATE rollouts SET state = '{\"stage\": \"nonsense\"}' WHERE name = 'broken'",
        [],
    )
    .unwrap();
    drop(db);
    let s = start(&dir);
    let (code, list) = s.req("GET", "/v1/rollouts", None, false);
    assert_eq!(code, 200);
    let broken = list["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "broken")
        .unwrap()
        .clone();
    assert_eq!(broken["phase"], "error", "{list}");
    assert!(
        broken["reason"].as_str().unwrap().contains("state"),
        "{broken}"
    );
    assert_eq!(s.timed_poll("broken").0, 503);
    assert!(s
        .log()
        .iter()
        .any(|l| l.contains("\"broken\" cannot be loaded")));
    s.req(
        "POST",
        "/v1/rollouts/healthy/commands",
        Some(r#"{"command":"resume"}"#),
        true,
    );
    s.wait_until("healthy", Duration::from_secs(5), |v| {
        v["phase"] == "succeeded"
    });
}

/// Item 6: a 2 MB `[[[[...]]]]` spec took 63 s to reject on the async workers, and two of them
/// timed out every poll. Too large is 413 at once; too deep is 400 before the YAML parser runs.
#[test]
fn item6_huge_or_deeply_nested_specs_are_refused_at_once() {
    let s = start(&temp_dir("nested"));
    s.applied(&canary(
        "x",
        "stages: [{weight: 10, min_duration_s: 600}, {weight: 100}]",
    ));
    let t = Instant::now();
    let (code, v) = s.oversized("/v1/rollouts", 256 * 1024 + 1024);
    assert_eq!((code, v["field"].as_str()), (413, Some("body")), "{v}");
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (code, v) = s.req("POST", "/v1/rollouts", Some(&deep), true);
    assert_eq!(code, 400);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("nested more than 32"),
        "{v}"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(s.timed_poll("x").1 < Duration::from_millis(500));
}

/// Item 7: reports were stored unchecked (unknown rollouts and arms, 5xx above requests, empty or
/// 10k-character ids, 2 MB of extra fields), and `seq` u64::MAX became -1 so an older report
/// replaced a newer one. Feedback ids were not checked.
#[test]
fn item7_reports_and_feedback_are_validated_at_the_edge() {
    let s = start(&temp_dir("reports"));
    s.applied(&canary(
        "r",
        "stages: [{weight: 50, min_duration_s: 600}, {weight: 100}]",
    ));
    let refused = |body: serde_json::Value, code: u16, field: &str| {
        let (got, v) = s.report("r", &body);
        assert_eq!(
            (got, v["field"].as_str()),
            (code, Some(field)),
            "{body} -> {v}"
        );
    };
    refused(report("a", 1, &[("v9", 1, 0)]), 400, "arms.v9");
    let mut r = report("a", 1, &[("v2", 10, 0)]);
    r["arms"]["v2"]["responses"]["5xx"] = json!(11);
    refused(r, 400, "arms.v2.responses");
    refused(report("", 1, &[("v2", 1, 0)]), 400, "instance");
    refused(
        report(&"i".repeat(10_000), 1, &[("v2", 1, 0)]),
        400,
        "instance",
    );
    refused(report("a", u64::MAX, &[("v2", 1, 0)]), 400, "seq");
    let (code, v) = s.oversized("/v1/rollouts/r/reports", 64 * 1024 + 1024);
    assert_eq!((code, v["field"].as_str()), (413, Some("body")), "{v}");
    let mut r = report("a", 1, &[("v2", 1, 0)]);
    r["junk"] = json!(1);
    refused(r, 400, "report");
    let (code, v) = s.report("no/such", &report("a", 1, &[("v2", 1, 0)]));
    assert_eq!(code, 404, "{v}");
    // Newest wins by seq, whatever order they arrive in.
    assert_eq!(s.report("r", &report("a", 1_000, &[("v2", 100, 0)])).0, 204);
    assert_eq!(s.report("r", &report("a", 999, &[("v2", 5, 0)])).0, 204);
    s.wait_until("r", Duration::from_secs(5), |v| {
        v["window"]["v2"]["requests"] == 100
    });
    let feedback = |body: &str| s.req("POST", "/v1/rollouts/r/feedback", Some(body), true);
    let (code, v) = s.oversized("/v1/rollouts/r/feedback", 4 * 1024 + 1024);
    assert_eq!((code, v["field"].as_str()), (413, Some("body")), "{v}");
    let (code, v) = feedback(r#"{"decision": "v2.12", "correct": true}"#);
    assert_eq!((code, v["field"].as_str()), (400, Some("decision")), "{v}");
    let (code, v) = feedback(r#"{"decision": "v3.00000000000000ab", "correct": true}"#);
    assert_eq!((code, v["field"].as_str()), (400, Some("decision")), "{v}");
    let (code, v) = feedback(r#"{"decision": "v2.00000000000000ab", "correct": true}"#);
    assert_eq!((code, v["recorded"].as_bool()), (200, Some(true)), "{v}");
}

/// Item 8: two `rampctl serve` on one `--db` both ran check loops and their fleet counts
/// diverged. The second refuses to start and says why.
#[test]
fn item8_a_second_serve_on_the_same_database_refuses_to_start() {
    let dir = temp_dir("twice");
    let _first = start(&dir);
    let second = try_start(&dir, TOKEN);
    let log = second.err().expect("the second serve must not start");
    assert!(log.contains("in use by another rampctl serve"), "{log}");
}

/// Item 9: a hook URL with `user:pass@` or `?api_key=` showed in status and history; a
/// Prometheus URL with credentials showed in a 502 body.
#[test]
fn item9_credentials_in_urls_never_leave() {
    let s = start(&temp_dir("secrets"));
    s.applied(&canary(
        "sec",
        "failure_threshold: 1\nhooks: [{on: before_promotion, url: 'http://admin:hunter2@127.0.0.1:1/hook?api_key=k3y', timeout_s: 1, retries: 0}]\nstages: [{weight: 10}, {weight: 100}]",
    ));
    let v = s.wait_until("sec", Duration::from_secs(10), |v| {
        v["phase"] == "rolled_back"
    });
    let history = s.req("GET", "/v1/rollouts/sec/history", None, false).1;
    for text in [v.to_string(), history.to_string()] {
        assert!(!text.contains("hunter2") && !text.contains("k3y"), "{text}");
        assert!(text.contains("***@127.0.0.1:1/hook?api_key=***"), "{text}");
    }
    let (code, v) = s.req(
        "POST",
        "/v1/rollouts",
        Some(&canary("prom", "metrics: {prometheus: 'http://u:pw0rd@127.0.0.1:1/?token=t0k'}\nstages: [{weight: 10}, {weight: 100}]")),
        true,
    );
    assert_eq!(code, 502, "{v}");
    assert!(
        !v.to_string().contains("pw0rd") && !v.to_string().contains("t0k"),
        "{v}"
    );
}

/// Item 10: names the filter refuses were accepted (so the rollout could never be served), an
/// empty `--auth-token` silently locked every mutation out, the `Bearer` scheme was case
/// sensitive, and a damaged database only showed as 500s later.
#[test]
fn item10_names_tokens_and_a_damaged_database() {
    let s = start(&temp_dir("names"));
    for (spec, field) in [
        ("name: ''\n".to_owned() + ARMS, "name"),
        ("name: 'a b'\n".to_owned() + ARMS, "name"),
        (format!("name: {}\n{ARMS}", "n".repeat(65)), "name"),
        ("name: 123\n".to_owned() + ARMS, "name"),
        (
            "name: ok\narms: [{name: 'a/b', role: baseline}, {name: v2, role: candidate}]"
                .to_owned(),
            "arms[0].name",
        ),
    ] {
        let spec = format!("{spec}\nstages: [{{weight: 100}}]");
        let (code, v) = s.req("POST", "/v1/rollouts", Some(&spec), true);
        assert_eq!(
            (code, v["field"].as_str()),
            (400, Some(field)),
            "{spec}: {v}"
        );
    }
    let lower = ureq::post(&s.url("/v1/rollouts"))
        .set("authorization", &format!("bearer {TOKEN}"))
        .send_string(&canary("lower", "stages: [{weight: 100}]"));
    assert_eq!(lower.map(|r| r.status()).ok(), Some(201));
    let empty = try_start(&temp_dir("empty-token"), "");
    assert!(empty.err().unwrap().contains("empty token"));
    let dir = temp_dir("damaged");
    std::fs::write(dir.join("ramp.db"), vec![0x5Au8; 64 * 1024]).unwrap();
    let log = try_start(&dir, TOKEN).err().unwrap();
    assert!(
        log.contains("damaged") || log.contains("not a database"),
        "{log}"
    );
}

/// Item 11: status showed a rule `[ok]` on the stage's figures while the loop failed it on the
/// window since the last check. Status now shows the judged figures, the stage's beside them.
#[test]
fn item11_status_shows_the_figures_the_loop_judged() {
    let s = start(&temp_dir("judged"));
    s.applied(&canary(
        "j",
        "failure_threshold: 1\nstages:\n  - {weight: 50, min_duration_s: 600, rules: [{metric: error_rate, max: 0.05, min_samples: 10}]}\n  - {weight: 100}",
    ));
    assert_eq!(s.report("j", &report("a", 1, &[("v2", 1000, 0)])).0, 204);
    s.wait_until("j", Duration::from_secs(5), |v| {
        v["checks"][0]["samples"] == 1000
    });
    std::thread::sleep(Duration::from_millis(500)); // later checks: nothing new
    assert_eq!(s.report("j", &report("a", 2, &[("v2", 1020, 20)])).0, 204);
    let v = s.wait_until("j", Duration::from_secs(5), |v| v["phase"] == "rolled_back");
    let check = &v["checks"][0];
    assert_eq!(check["verdict"], "fail", "{v}");
    assert_eq!(
        (check["value"].as_f64(), check["samples"].as_u64()),
        (Some(1.0), Some(20)),
        "{v}"
    );
    let stage = check["stage_value"].as_f64().unwrap();
    assert!((stage - 20.0 / 1020.0).abs() < 1e-9, "{v}");
}

/// Long poll: a poll that names the version it has waits, and returns as soon as a decision
/// changes the version (here an operator's rollback).
#[test]
fn a_long_poll_returns_as_soon_as_the_version_changes() {
    let s = start(&temp_dir("longpoll"));
    s.applied(&canary(
        "lp",
        "stages: [{weight: 50, min_duration_s: 600}, {weight: 100}]",
    ));
    let url = s.url("/v1/rollouts/lp/state?version=1&wait_ms=5000");
    let waiter = std::thread::spawn(move || {
        let text = ureq::get(&url)
            .set(
                "authorization",
                &format!("Bearer {}", ramp_tests::controller::REPORT_TOKEN),
            )
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        (Instant::now(), v)
    });
    std::thread::sleep(Duration::from_millis(500));
    let (code, _) = s.req(
        "POST",
        "/v1/rollouts/lp/commands",
        Some(r#"{"command":"roll_back"}"#),
        true,
    );
    let decided = Instant::now();
    assert_eq!(code, 200);
    let (answered, v) = waiter.join().unwrap();
    assert_eq!(
        (v["version"].as_u64(), v["rolled_back"].as_bool()),
        (Some(2), Some(true)),
        "{v}"
    );
    assert!(answered.saturating_duration_since(decided) < Duration::from_millis(100));
    let t = Instant::now();
    let (code, v) = s.req(
        "GET",
        "/v1/rollouts/lp/state?version=2&wait_ms=300",
        None,
        false,
    );
    assert_eq!((code, v["version"].as_u64()), (200, Some(2)));
    assert!(
        t.elapsed() >= Duration::from_millis(280),
        "waited for a change that did not come"
    );
    let (code, v) = s.req("GET", "/v1/rollouts/lp/state?version=x", None, false);
    assert_eq!((code, v["field"].as_str()), (400, Some("version")));
}

/// Issue 20, item 7 (in part): one report with `seq = 2^63 - 1` for a real instance made that
/// Envoy's later reports stale, so a failing candidate stayed progressing. A seq more than ten
/// minutes ahead of the controller's clock is refused naming the field, and the real reports
/// keep counting.
#[test]
fn a_report_from_the_far_future_cannot_freeze_an_instance() {
    let s = start(&temp_dir("future"));
    s.applied(&canary(
        "future",
        "stages: [{weight: 50, min_duration_s: 600}, {weight: 100}]",
    ));
    let mut r = report("envoy-a", (1u64 << 63) - 1, &[("v2", 0, 0)]);
    let (code, v) = s.report("future", &r);
    assert_eq!((code, v["field"].as_str()), (400, Some("seq")), "{v}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    r = report("envoy-a", now_ms, &[("v2", 100, 50)]);
    assert_eq!(s.report("future", &r).0, 204);
    let v = s.wait_until("future", Duration::from_secs(5), |v| {
        v["window"]["v2"]["requests"] == 100
    });
    assert_eq!(v["window"]["v2"]["errors"], 50, "{v}");
}

/// Issue 20, item 6: event hooks to an endpoint that never answers took a blocking thread each;
/// ~530 pause/resume commands put 512 threads into hook calls, and another rollout's failing
/// candidate was not rolled back for 36 s (commands and `apply` timed out). Notifications now
/// have bounded slots of their own (4 in flight a rollout, 32 in all, more are dropped and
/// logged), so the store and the other rollouts' checks keep their threads.
#[test]
fn hooks_that_never_answer_cannot_starve_another_rollouts_rollback() {
    let s = start(&temp_dir("starve"));
    let hang = SlowServer::start(60_000, 200, "{}").unwrap();
    s.applied(&canary(
        "noisy",
        &format!("hooks: [{{on: event, url: '{}/e', timeout_s: 60, retries: 0}}]\nstages: [{{weight: 10, min_duration_s: 600}}, {{weight: 100}}]", hang.url()),
    ));
    for _ in 0..300 {
        for command in ["pause", "resume"] {
            let body = format!(r#"{{"command":"{command}"}}"#);
            let (code, v) = s.req("POST", "/v1/rollouts/noisy/commands", Some(&body), true);
            assert_eq!(code, 200, "{v}");
        }
    }
    let hung = hang.hits.load(Ordering::Relaxed);
    assert!(hung <= 32, "{hung} notifications hang at once");
    let t = Instant::now();
    s.applied(&canary(
        "victim",
        "failure_threshold: 1\nstages: [{weight: 10, rules: [{metric: error_rate, max: 0.1, min_samples: 10}]}, {weight: 100}]",
    ));
    let r = report("envoy-a", 1, &[("v1", 100, 0), ("v2", 100, 100)]);
    assert_eq!(s.report("victim", &r).0, 204);
    s.wait_until("victim", Duration::from_secs(10), |v| {
        v["phase"] == "rolled_back"
    });
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

/// Hostile values at the new edges: a report for a rollout not applied yet with more arms than
/// a rollout may have, and bandit decision settings of the wrong type or range, each refused
/// naming the field.
#[test]
fn new_inputs_refuse_hostile_values_naming_the_field() {
    let s = start(&temp_dir("hostile-new"));
    let arms: Vec<(String, u64, u64)> = (0..17).map(|i| (format!("a{i}"), 1, 0)).collect();
    let named: Vec<(&str, u64, u64)> = arms.iter().map(|(a, n, e)| (a.as_str(), *n, *e)).collect();
    let (code, v) = s.report("not-applied-yet", &report("envoy-a", 1, &named));
    assert_eq!((code, v["field"].as_str()), (400, Some("arms")), "{v}");
    let bandit = |settings: &str| {
        format!("name: b\n{ARMS}\nstrategy: bandit\nbandit: {settings}\nstages: [{{weight: 50}}, {{weight: 100}}]")
    };
    for (settings, field) in [
        ("{promote_at: 1.0}", "bandit.promote_at"),
        ("{promote_at: \"high\"}", "bandit"),
        ("{confirm: 1.5}", "bandit.confirm"),
        ("{confirm: \"yes\"}", "bandit"),
        ("{promote_at: 0.9, extra: 1}", "bandit"),
    ] {
        let (code, v) = s.req("POST", "/v1/rollouts", Some(&bandit(settings)), true);
        assert_eq!(code, 400, "{settings}: {v}");
        assert!(
            v["field"].as_str().is_some_and(|f| f.starts_with(field)),
            "{settings}: {v}"
        );
    }
}
