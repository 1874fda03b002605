//! The worker's orchestration against the in-memory host: what used to be provable only inside
//! Envoy (CAS conflicts, the lease, the newer-state rule, rewards, shadow pairing, request cost).

use serde_json::{json, Value};
// On a wasm target with no system interface these run under wasm-bindgen-test (`make wasm-test`):
// the worker reaches its host only through the `Host` trait.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::counters::decode_counts;
use crate::host::{Host, Map};
use crate::keys::{bandit_key, counts_key, state_key};
use crate::memhost::{logs, MemHost};
use crate::report::ArmReport;
use crate::shadow::UPSTREAM_TIME_HEADER;

const CONTROLLED: &str = r#"{"rollout":"r","arms":[{"name":"v1","weight":100},{"name":"v2","weight":0}],
    "controller":{"cluster":"rampctl","poll_ms":500}}"#;

fn worker(host: &MemHost, config: &str, seed: u64) -> Worker<MemHost> {
    let mut w = Worker::start(host.clone(), seed);
    let ok = w.configure(config.as_bytes());
    assert!(ok, "config refused: {:?}", logs());
    w
}

/// One request through the worker's request path; returns the arm it was routed to.
fn request(w: &Worker<MemHost>, host: &MemHost, headers: &[(&str, &str)], status: u32) -> String {
    request_answered(w, host, headers, |_| status)
}

/// The same, answered with the status `status_of` gives the arm it was routed to.
fn request_answered(
    w: &Worker<MemHost>,
    host: &MemHost,
    headers: &[(&str, &str)],
    mut status_of: impl FnMut(&str) -> u32,
) -> String {
    host.new_request(headers);
    let mut x = w.exchange();
    x.on_request_headers(true);
    let arm = host
        .header_of(Map::Request, "x-ramp-arm")
        .unwrap_or_default();
    host.advance_ms(1);
    host.respond(status_of(&arm), &[], b"");
    x.on_response_headers(true);
    arm
}

fn polls(host: &MemHost) -> Vec<crate::memhost::SentCallout> {
    host.with(|m| {
        m.callouts
            .iter()
            .filter(|c| c.header(":path").is_some_and(|p| p.contains("/state")))
            .cloned()
            .collect()
    })
}

/// The newest report this Envoy posted (reports are cumulative: it holds every count so far).
fn newest_report(host: &MemHost) -> ramp_protocol::report::Report {
    let report = host
        .with(|m| m.callouts.clone())
        .into_iter()
        .rfind(|c| c.header(":path") == Some("/v1/rollouts/r/reports"))
        .expect("a report");
    serde_json::from_slice(report.body.as_deref().unwrap()).unwrap()
}

fn answer_poll(w: &mut Worker<MemHost>, host: &MemHost, token: u32, doc: &Value) {
    let body = doc.to_string();
    host.callout_answer(Some(200), &[], body.as_bytes());
    w.on_callout(token, body.len());
}

#[test]
fn a_cas_conflict_keeps_the_delta_for_the_next_tick() {
    let host = MemHost::default();
    let mut a = worker(&host, CONTROLLED, 1);
    let mut b = worker(&host, CONTROLLED, 2);
    for _ in 0..3 {
        request(&a, &host, &[], 200);
    }
    request(&b, &host, &[], 200);
    a.tick();
    b.tick();
    for _ in 0..5 {
        request(&a, &host, &[], 500);
    }
    // Every conditional write of the next tick loses to "another worker".
    host.with(|m| m.conflicts = 1_000);
    a.tick();
    host.with(|m| m.conflicts = 0);
    let key = counts_key("r", "v1");
    let stored = || {
        host.shared_get(&key)
            .and_then(|(b, _)| ArmReport::decode(&b?))
            .unwrap()
    };
    assert_eq!(stored().requests(), 4, "the lost tick added nothing");
    a.tick();
    assert_eq!(stored().requests(), 9, "and nothing was lost either");
    assert_eq!(stored().responses(), [4, 0, 0, 5]);
    // Envoy's counters saw each request once, although it was flushed to two places.
    assert_eq!(host.metric("ramp.rollout.r.arm.v1.requests_total"), Some(9));
    assert_eq!(
        host.metric("ramp.rollout.r.arm.v1.latency_milliseconds_bucket.le_1"),
        Some(9)
    );
    assert_eq!(
        host.metric("ramp.rollout.r.arm.v1.latency_milliseconds_bucket.le_0.9"),
        Some(0)
    );
}

#[test]
fn bandit_trials_survive_contention_exactly() {
    let config = r#"{"rollout":"b","arms":[{"name":"v1","weight":1},{"name":"v2","weight":1}],
        "strategy":"bandit","bandit":{"policy":"epsilon_greedy","epsilon":0.5}}"#;
    let host = MemHost::default();
    let mut a = worker(&host, config, 3);
    let mut b = worker(&host, config, 4);
    for _ in 0..40 {
        request(&a, &host, &[], 200);
        request(&b, &host, &[], 503);
    }
    a.tick();
    host.with(|m| m.conflicts = 1_000);
    b.tick();
    host.with(|m| m.conflicts = 0);
    b.tick();
    a.tick();
    let total = |arm: &str| {
        host.shared_get(&bandit_key("b", arm))
            .and_then(|(v, _)| decode_counts(&v?))
            .unwrap_or_default()
    };
    let (v1, v2) = (total("v1"), total("v2"));
    assert_eq!(v1.trials + v2.trials, 80);
    assert_eq!(
        (v1.reward_micros + v2.reward_micros) / 1_000_000,
        40,
        "a's 40 successes, b's 40 failures"
    );
}

#[test]
fn the_lease_passes_to_another_worker_when_the_holder_stops() {
    let host = MemHost::default();
    host.with(|m| m.now_us = 1_000_000_000);
    let mut a = worker(&host, CONTROLLED, 5);
    let mut b = worker(&host, CONTROLLED, 6);
    a.tick();
    b.tick();
    assert_eq!(polls(&host).len(), 1, "one poller per Envoy");
    // `a` stops (its VM is gone): after three poll periods its lease is free.
    for _ in 0..25 {
        host.advance_ms(TICK_MS);
        b.tick();
    }
    assert_eq!(polls(&host).len(), 2, "b took over");
    assert!(host.logged("now polls the controller"));
    // And `a`, back, does not poll beside it.
    a.tick();
    assert_eq!(polls(&host).len(), 2);
}

#[test]
fn stale_and_invalid_states_are_refused_and_the_last_good_kept() {
    let host = MemHost::default();
    let mut a = worker(&host, CONTROLLED, 7);
    let mut b = worker(&host, CONTROLLED, 8);
    a.tick();
    let token = polls(&host)[0].token;
    answer_poll(
        &mut a,
        &host,
        token,
        &json!({"version": 5, "weights": {"v2": 100}, "stage": 5}),
    );
    assert_eq!(
        request(&a, &host, &[], 200),
        "v2",
        "the poller applies at once"
    );
    assert_eq!(request(&b, &host, &[], 200), "v1", "b has not ticked yet");
    b.tick();
    assert_eq!(request(&b, &host, &[], 200), "v2", "b applies on its tick");
    let next = |w: &mut Worker<MemHost>| {
        host.advance_ms(600);
        w.tick();
        polls(&host).last().unwrap().token
    };
    let t = next(&mut a);
    assert!(polls(&host)
        .last()
        .unwrap()
        .header(":path")
        .unwrap()
        .contains("version=5&wait_ms=500"));
    answer_poll(
        &mut a,
        &host,
        t,
        &json!({"version": 4, "weights": {"v1": 100}}),
    );
    let t = next(&mut a);
    answer_poll(
        &mut a,
        &host,
        t,
        &json!({"version": 6, "weights": {"v9": 100}}),
    );
    let t = next(&mut a);
    answer_poll(
        &mut a,
        &host,
        t,
        &json!({"version": 6, "weights": {"v1": -1}}),
    );
    let t = next(&mut a);
    host.callout_answer(Some(503), &[], b"{}");
    a.on_callout(t, 2);
    b.tick();
    for w in [&a, &b] {
        assert_eq!(
            request(w, &host, &[], 200),
            "v2",
            "the last good state stays"
        );
    }
    assert!(host.logged("weights.v9: no such arm"));
    // Foreign bytes under the key are never applied either.
    host.shared_set(&state_key("r"), b"{\"version\":99}", 0)
        .unwrap();
    b.tick();
    assert_eq!(request(&b, &host, &[], 200), "v2");
}

#[test]
fn the_reward_is_read_from_each_source() {
    let cases = [
        (json!({"source": "status"}), 200, None, 1_000_000),
        (json!({"source": "status"}), 503, None, 0),
        (
            json!({"source": "status", "success": ["404"]}),
            404,
            None,
            1_000_000,
        ),
        (
            json!({"source": "latency", "threshold_ms": 5}),
            200,
            None,
            1_000_000,
        ),
        (
            json!({"source": "latency", "threshold_ms": 5}),
            503,
            None,
            0,
        ),
        (json!({"source": "header"}), 200, Some("0.25"), 250_000),
        (json!({"source": "header"}), 200, Some("7"), 0),
        (
            json!({"source": "header", "name": "x-score"}),
            200,
            Some("0.5"),
            500_000,
        ),
    ];
    for (reward, status, header, micros) in cases {
        let config = json!({"rollout": "w", "arms": [{"name": "v1", "weight": 1}],
            "strategy": "bandit", "bandit": {"policy": "thompson", "reward": reward.clone()}});
        let host = MemHost::default();
        let mut w = worker(&host, &config.to_string(), 9);
        host.new_request(&[]);
        let mut x = w.exchange();
        x.on_request_headers(true);
        host.advance_ms(1);
        let name = reward["name"].as_str().unwrap_or("x-ramp-reward");
        let extra: Vec<(&str, &str)> = header.map(|v| (name, v)).into_iter().collect();
        host.respond(status, &extra, b"");
        x.on_response_headers(true);
        if header.is_some() {
            assert_eq!(
                host.header_of(Map::Response, name),
                None,
                "{reward}: header removed"
            );
        }
        w.tick();
        let c = host
            .shared_get(&bandit_key("w", "v1"))
            .and_then(|(b, _)| decode_counts(&b?))
            .unwrap();
        assert_eq!(
            (c.trials, c.reward_micros),
            (1, micros),
            "{reward} {status} {header:?}"
        );
    }
}

const SHADOWED: &str = r#"{"rollout":"s","arms":[{"name":"v1","weight":1}],
    "shadow":{"cluster":"model_shadow","mode":"compare","timeout_ms":1000,"json_pointer":"/p"}}"#;

/// Sends one request with a shadow copy; returns the copy's callout token.
fn shadowed_request(w: &mut Worker<MemHost>, host: &MemHost) -> (Exchange<MemHost>, u32) {
    host.new_request(&[(":method", "GET"), ("x-request-id", "rid")]);
    let mut x = w.exchange();
    x.on_request_headers(true);
    let queue = host.with(|m| m.queues.len() as u32 - 1);
    w.on_queue_ready(queue);
    let copy = host.with(|m| m.callouts.last().cloned()).unwrap();
    assert_eq!(
        (copy.cluster.as_str(), copy.timeout_ms),
        ("model_shadow", 1000)
    );
    assert_eq!(copy.header("x-ramp-shadow-copy"), Some("1"));
    assert!(copy.body.is_none());
    (x, copy.token)
}

fn primary_answers(x: &mut Exchange<MemHost>, host: &MemHost, body: &[u8]) {
    host.respond(200, &[], body);
    x.on_response_headers(false);
    x.on_response_body(body.len(), true);
}

fn shadow_totals(host: &MemHost) -> [u64; 4] {
    let get = |n: &str| {
        host.metric(&crate::metrics::shadow_stat_name("s", n))
            .unwrap_or(0)
    };
    [
        get("pairs"),
        get("shadow_timeouts"),
        get("shadow_refused"),
        get("shadow_errors"),
    ]
}

#[test]
fn shadow_pairs_form_in_either_order() {
    let host = MemHost::default();
    let mut w = worker(&host, SHADOWED, 10);
    // The primary first, then the shadow.
    let (mut x, token) = shadowed_request(&mut w, &host);
    primary_answers(&mut x, &host, br#"{"p":1.0}"#);
    drop(x);
    host.callout_answer(Some(200), &[(UPSTREAM_TIME_HEADER, "3")], br#"{"p":1.5}"#);
    w.on_callout(token, 9);
    // The shadow first, then the primary.
    let (mut x, token) = shadowed_request(&mut w, &host);
    host.callout_answer(Some(200), &[(UPSTREAM_TIME_HEADER, "3")], br#"{"p":2.0}"#);
    w.on_callout(token, 9);
    primary_answers(&mut x, &host, br#"{"p":2.0}"#);
    drop(x);
    w.tick();
    assert_eq!(shadow_totals(&host), [2, 0, 0, 0]);
    assert_eq!(
        host.metric("ramp.rollout.s.shadow.value_pairs_total"),
        Some(2)
    );
    assert_eq!(
        host.metric("ramp.rollout.s.shadow.diff_pos_millionths_total"),
        Some(500_000)
    );
    let lines = logs()
        .iter()
        .filter(|(_, l)| l.starts_with("ramp-shadow "))
        .count();
    assert_eq!(lines, 2);
}

/// A callout's status, headers, body and how long after sending it arrives (ms).
type Answer<'a> = (Option<u32>, &'a [(&'a str, &'a str)], &'a [u8], u64);

#[test]
fn timeouts_refusals_and_the_models_errors_are_told_apart() {
    let host = MemHost::default();
    let mut w = worker(&host, SHADOWED, 11);
    let answers: [Answer; 4] = [
        // Envoy's local reply after `timeout_ms`.
        (Some(504), &[], b"upstream request timeout", 1000),
        // Envoy's local reply for a closed port.
        (
            Some(503),
            &[],
            b"upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            2,
        ),
        // The model's own 500, which went through Envoy's router.
        (Some(500), &[(UPSTREAM_TIME_HEADER, "1")], b"boom", 2),
        // A reset with no answer at all.
        (None, &[], b"", 2),
    ];
    for (status, headers, body, after_ms) in answers {
        let (mut x, token) = shadowed_request(&mut w, &host);
        primary_answers(&mut x, &host, br#"{"p":1}"#);
        drop(x);
        host.advance_ms(after_ms);
        host.callout_answer(status, headers, body);
        w.on_callout(token, body.len());
    }
    w.tick();
    assert_eq!(shadow_totals(&host), [4, 1, 2, 1]);
}

#[test]
fn a_copy_with_no_answer_expires_unpaired() {
    let host = MemHost::default();
    let mut w = worker(&host, SHADOWED, 12);
    let (mut x, _token) = shadowed_request(&mut w, &host);
    primary_answers(&mut x, &host, br#"{"p":1}"#);
    drop(x);
    host.advance_ms(1000 + 10_001);
    w.tick();
    assert_eq!(host.metric("ramp.rollout.s.shadow.unpaired_total"), Some(1));
    assert_eq!(shadow_totals(&host)[0], 0);
}

/// Host calls per request, the request path's cost (`make bench` measures it in Envoy): by
/// default the routing header set (replacing the client's), two clock reads and the status read;
/// counters wait for the tick. `strip_all` reads the whole header map first; sticky reads its key
/// (from that map under `strip_all`) and sets the response header the benchmark's config names.
#[test]
fn a_request_costs_four_host_calls_and_counters_wait_for_the_tick() {
    const WEIGHTED: &str =
        r#""rollout":"c","arms":[{"name":"v1","weight":1},{"name":"v2","weight":1}]"#;
    const STICKY: &str = r#""rollout":"s","arms":[{"name":"v1","weight":90},{"name":"v2","weight":10}],
        "sticky":{"source":"header","name":"x-user-id"},"response_header":"x-ramp-arm""#;
    const BANDIT: &str = r#""rollout":"b","arms":[{"name":"v1","weight":1},{"name":"v2","weight":1}],
        "strategy":"bandit","bandit":{"policy":"thompson"}"#;
    const STICKY_BARE: &str = r#""rollout":"s","arms":[{"name":"v1","weight":90},{"name":"v2","weight":10}],
        "sticky":{"source":"header","name":"x-user-id"}"#;
    let cases: [(&str, &str, &[&str]); 7] = [
        (WEIGHTED, "", &["set_header", "now", "header", "now"]),
        (
            STICKY_BARE,
            "",
            &["header", "set_header", "now", "header", "now"],
        ),
        (
            STICKY,
            "",
            &["header", "set_header", "now", "header", "now", "set_header"],
        ),
        (BANDIT, "", &["set_header", "now", "header", "now"]),
        (
            WEIGHTED,
            r#","client_headers":"strip_all""#,
            &["request_header_pairs", "set_header", "now", "header", "now"],
        ),
        (
            STICKY,
            r#","client_headers":"strip_all""#,
            &[
                "request_header_pairs",
                "set_header",
                "now",
                "header",
                "now",
                "set_header",
            ],
        ),
        (
            BANDIT,
            r#","client_headers":"strip_all""#,
            &["request_header_pairs", "set_header", "now", "header", "now"],
        ),
    ];
    for (i, (rollout, mode, want)) in cases.into_iter().enumerate() {
        let config = format!("{{{rollout}{mode}}}");
        let host = MemHost::default();
        let w = worker(&host, &config, 13 + i as u64);
        request(
            &w,
            &host,
            &[
                (":path", "/"),
                ("x-user-id", "user-7"),
                ("x-ramp-arm", "v2"),
            ],
            200,
        );
        assert_eq!(host.with(|m| m.calls.clone()), want, "{config}");
    }
}

#[test]
fn the_report_carries_every_workers_counts_and_is_the_protocols_report() {
    let config = r#"{"rollout":"r","arms":[{"name":"v1","weight":1},{"name":"v2","weight":1}],
        "controller":{"cluster":"rampctl","poll_ms":200,"token_env":"RAMP_TOKEN"}}"#;
    let host = MemHost::default();
    host.with(|m| m.env.insert("RAMP_TOKEN".into(), "s3cret".into()));
    let mut a = worker(&host, config, 14);
    let mut b = worker(&host, config, 15);
    for _ in 0..30 {
        request(&a, &host, &[], 200);
        request(&b, &host, &[], 404);
    }
    a.tick(); // takes the lease and polls
    b.tick(); // adds its counts to shared data
    a.tick(); // reports
    let sent = host.with(|m| m.callouts.clone());
    let poll = &sent[0];
    assert_eq!((poll.cluster.as_str(), poll.timeout_ms), ("rampctl", 2_200));
    // Issue 20: the live state needs the report token as well.
    assert_eq!(poll.header("authorization"), Some("Bearer s3cret"));
    let report = sent
        .iter()
        .find(|c| c.header(":path") == Some("/v1/rollouts/r/reports"))
        .expect("a report on the second tick");
    assert_eq!(report.header("authorization"), Some("Bearer s3cret"));
    let parsed: ramp_protocol::report::Report =
        serde_json::from_slice(report.body.as_deref().unwrap()).unwrap();
    assert_eq!(parsed.validate(&["v1", "v2"]), Ok(()));
    let arms = &parsed.arms;
    assert_eq!(arms["v1"].requests + arms["v2"].requests, 60);
    let fours: u64 = arms.values().map(|a| a.responses["4xx"]).sum();
    assert_eq!(fours, 30, "b's answers, counted once");
    // Without the token in the VM's environment the config is refused, naming the field.
    let other = MemHost::default();
    let mut w = Worker::start(other.clone(), 16);
    assert!(!w.configure(config.as_bytes()));
    assert!(other.logged("controller.token_env: RAMP_TOKEN is not set"));
}

#[test]
fn sticky_reports_count_users_buckets_and_envoys_own_replies() {
    let config = r#"{"rollout":"r","arms":[{"name":"v1","weight":1},{"name":"v2","weight":1}],
        "sticky":{"source":"header","name":"x-user-id"},"decision_header":"x-ramp-decision",
        "controller":{"cluster":"rampctl","poll_ms":200}}"#;
    let host = MemHost::default();
    let mut w = worker(&host, config, 21);
    let mut arms = std::collections::BTreeMap::new();
    for user in ["ann", "bob", "cy"] {
        for _ in 0..3 {
            host.new_request(&[("x-user-id", user)]);
            let mut x = w.exchange();
            x.on_request_headers(true);
            host.advance_ms(1);
            // The model's own 503 carries the router's upstream time; Envoy's own does not.
            let upstream = [(crate::shadow::UPSTREAM_TIME_HEADER, "1")];
            let from_model = user != "cy";
            host.respond(503, if from_model { &upstream[..] } else { &[] }, b"");
            x.on_response_headers(true);
            let decision = host.header_of(Map::Response, "x-ramp-decision").unwrap();
            let (arm, number) = ramp_protocol::decision::parse_decision(&decision).unwrap();
            assert_eq!(
                ramp_protocol::decision::bucket_of(number),
                crate::bucket::analysis_bucket(user),
                "the decision id carries the user's bucket"
            );
            arms.insert(user, arm.to_owned());
        }
    }
    w.tick();
    w.tick();
    let parsed = newest_report(&host);
    assert_eq!(parsed.validate(&["v1", "v2"]), Ok(()));
    for (user, arm) in &arms {
        let b = parsed.arms[arm]
            .buckets
            .as_ref()
            .expect("buckets when sticky");
        let bucket = crate::bucket::analysis_bucket(user);
        assert!(b.requests[bucket] >= 3 && b.errors[bucket] >= 3, "{b:?}");
    }
    let local: u64 = parsed.arms.values().map(|a| a.local_replies).sum();
    assert_eq!(local, 3, "cy's three answers came from Envoy itself");
}

/// `client_headers: strip_owned` (the default) reads only the headers a rollout needs: a weighted
/// request costs four host calls (no header map), sticky one more for its key. The routing,
/// cluster, mirror and copy-marker headers a client sent are still replaced or removed; other
/// `x-ramp-*` headers pass.
#[test]
fn strip_owned_reads_only_the_headers_a_rollout_needs() {
    let owned = r#""client_headers":"strip_owned""#;
    let host = MemHost::default();
    let w = worker(
        &host,
        &format!(
            r#"{{"rollout":"o","arms":[{{"name":"v1","weight":1}},{{"name":"v2","weight":1}}],{owned}}}"#
        ),
        15,
    );
    request(&w, &host, &[(":path", "/"), ("x-ramp-arm", "v9")], 200);
    assert_eq!(
        host.with(|m| m.calls.clone()),
        ["set_header", "now", "header", "now"]
    );
    let arm = host.header_of(Map::Request, "x-ramp-arm").unwrap();
    assert!(
        arm == "v1" || arm == "v2",
        "the client's arm was replaced: {arm}"
    );

    let host = MemHost::default();
    let w = worker(
        &host,
        &format!(
            r#"{{"rollout":"s","arms":[{{"name":"v1","weight":90,"cluster":"c1"}},{{"name":"v2","weight":10}}],
               "sticky":{{"source":"header","name":"x-user-id"}},{owned}}}"#
        ),
        16,
    );
    let user = (0..100)
        .map(|i| format!("user-{i}"))
        .find(|u| crate::bucket::sticky_arm("s", u, [("v1", 90.0), ("v2", 10.0)]) == Some(1))
        .unwrap();
    let arm = request(
        &w,
        &host,
        &[
            (":path", "/"),
            ("x-user-id", &user),
            ("x-ramp-cluster", "c1"),
            ("x-ramp-reward", "1"),
        ],
        200,
    );
    assert_eq!(
        arm, "v2",
        "the sticky key read with one call picks the same arm"
    );
    assert_eq!(
        host.with(|m| m.calls.clone()),
        ["header", "set_header", "set_header", "now", "header", "now"],
        "the key, the routing header, the cluster header removed for an arm without one"
    );
    assert_eq!(host.header_of(Map::Request, "x-ramp-cluster"), None);
    assert_eq!(
        host.header_of(Map::Request, "x-ramp-reward").as_deref(),
        Some("1"),
        "headers the filter does not own pass"
    );

    // In compare mode the copy marker is the filter's: a client cannot mark its own request as a
    // copy (a model may skip side effects for copies).
    let host = MemHost::default();
    let w = worker(&host, SHADOWED, 17);
    request(
        &w,
        &host,
        &[(":method", "POST"), ("x-ramp-shadow-copy", "1")],
        200,
    );
    assert_eq!(host.header_of(Map::Request, "x-ramp-shadow-copy"), None);
}

/// With `discount`, the tick brings the discounted counts up to the worker's view (its own
/// trials and, through the live state, the fleet's); between ticks they stay as they were.
/// gamma = 0.5: a batch of n trials weighs (1 - 0.5^n) / 0.5 in all, 1.998 for n = 10.
#[test]
fn discounted_counts_follow_the_ticks_and_the_fleets_counts() {
    let config = r#"{"rollout":"d","arms":[{"name":"v1","weight":1},{"name":"v2","weight":1}],
        "strategy":"bandit","bandit":{"policy":"thompson","discount":0.5},
        "controller":{"cluster":"rampctl","poll_ms":500}}"#;
    let host = MemHost::default();
    let mut w = worker(&host, config, 5);
    let discounted = |w: &Worker<MemHost>| {
        let b = w.active.as_ref().unwrap().bandit.as_ref().unwrap();
        b.discounted.as_ref().unwrap().1.borrow().counts().to_vec()
    };
    for _ in 0..10 {
        request(&w, &host, &[], 200);
    }
    let total = |d: &[crate::discount::Decayed]| d.iter().map(|c| c.trials).sum::<f64>();
    assert_eq!(total(&discounted(&w)), 0.0, "not before the tick");
    w.tick();
    let d = discounted(&w);
    assert!((total(&d) - 1.998_046_875).abs() < 1e-9, "{d:?}");
    assert!(
        d.iter().all(|c| c.reward == c.trials),
        "every trial a success: {d:?}"
    );
    // 1,000 failures of v2 from the other Envoys: v1's trials decay to nothing.
    let token = polls(&host)[0].token;
    answer_poll(
        &mut w,
        &host,
        token,
        &json!({"version": 1, "weights": {"v1": 1, "v2": 1},
                "bandit": {"v2": {"trials": 1000, "reward_micros": 0}}}),
    );
    let d = discounted(&w);
    assert!(
        d[0].trials < 1e-100 && (d[1].trials - 2.0).abs() < 1e-9,
        "{d:?}"
    );
    assert!(d[1].reward < 1e-100, "{d:?}");
}

/// An A/B test's pre-period: the baseline serves everyone, and each user's requests and 5xx are
/// also counted under the arm the experiment's weights will give them (CUPED's covariate), by
/// the same hash that places them later; their decision ids name that arm with `.pre`.
#[test]
fn a_pre_period_counts_users_under_the_arm_they_will_get() {
    let config = r#"{"rollout":"r","arms":[{"name":"v1","weight":100},{"name":"v2","weight":0}],
        "sticky":{"source":"header","name":"x-user-id"},"decision_header":"x-ramp-decision",
        "controller":{"cluster":"rampctl","poll_ms":200}}"#;
    let host = MemHost::default();
    let mut w = worker(&host, config, 23);
    w.tick();
    let token = polls(&host)[0].token;
    let pre =
        json!({"version": 2, "weights": {"v1": 100, "v2": 0}, "pre_weights": {"v1": 50, "v2": 50}});
    answer_poll(&mut w, &host, token, &pre);
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let mut will_get = std::collections::BTreeMap::new();
    for user in &users {
        host.new_request(&[("x-user-id", user)]);
        let mut x = w.exchange();
        x.on_request_headers(true);
        let served = host.header_of(Map::Request, "x-ramp-arm").unwrap();
        assert_eq!(served, "v1", "the baseline serves the pre-period");
        host.advance_ms(1);
        host.respond(503, &[(crate::shadow::UPSTREAM_TIME_HEADER, "1")], b"");
        x.on_response_headers(true);
        let decision = host.header_of(Map::Response, "x-ramp-decision").unwrap();
        let (id, pre) = ramp_protocol::decision::split_pre_period(&decision);
        assert!(pre, "{decision}");
        let (arm, _) = ramp_protocol::decision::parse_decision(id).unwrap();
        will_get.insert(user.clone(), arm.to_owned());
    }
    assert!(will_get.values().any(|a| a == "v2") && will_get.values().any(|a| a == "v1"));
    w.tick();
    w.tick();
    let parsed = newest_report(&host);
    assert_eq!(parsed.validate(&["v1", "v2"]), Ok(()));
    assert_eq!(parsed.arms["v2"].requests, 0, "the candidate served nobody");
    let mut expected: std::collections::BTreeMap<&str, Vec<u64>> =
        [("v1", vec![0; 64]), ("v2", vec![0; 64])].into();
    for (user, arm) in &will_get {
        expected.get_mut(arm.as_str()).unwrap()[crate::bucket::analysis_bucket(user)] += 1;
    }
    for arm in ["v1", "v2"] {
        let b = parsed.arms[arm].buckets.as_ref().unwrap();
        assert_eq!(b.pre_requests, expected[arm], "{arm}");
        assert_eq!(b.pre_errors, expected[arm], "every answer was a 503");
    }
    // The experiment begins: the same users land on the arms the pre-period counted them under,
    // and nothing more is counted as pre-period.
    let t = {
        host.advance_ms(300);
        w.tick();
        polls(&host).last().unwrap().token
    };
    answer_poll(
        &mut w,
        &host,
        t,
        &json!({"version": 3, "weights": {"v1": 50, "v2": 50}}),
    );
    for user in &users {
        let arm = request(&w, &host, &[("x-user-id", user)], 200);
        assert_eq!(arm, will_get[user], "{user}");
        let decision = host.header_of(Map::Response, "x-ramp-decision").unwrap();
        assert!(!ramp_protocol::decision::split_pre_period(&decision).1);
    }
}

/// A streamed answer, as a model sends it: headers at once, the first chunk after `ttft_ms`, then
/// one chunk per token every `tpot_ms`, the last event carrying `usage`.
fn stream_request(w: &Worker<MemHost>, host: &MemHost, ttft_ms: u64, tpot_ms: u64, tokens: u64) {
    host.new_request(&[]);
    let mut x = w.exchange();
    x.on_request_headers(true);
    host.advance_ms(2);
    host.respond(200, &[("content-type", "text/event-stream")], b"");
    x.on_response_headers(false);
    host.advance_ms(ttft_ms - 2);
    for t in 0..tokens {
        if t > 0 {
            host.advance_ms(tpot_ms);
        }
        let chunk = b"data: {\"choices\":[{\"delta\":{\"content\":\"tok\"}}]}\n\n";
        host.with(|m| m.response_body = chunk.to_vec());
        x.on_response_body(chunk.len(), false);
    }
    let last = format!("data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":{tokens}}}}}\n\ndata: [DONE]\n\n");
    host.with(|m| m.response_body = last.as_bytes().to_vec());
    x.on_response_body(last.len(), true);
}

#[test]
fn streamed_answers_are_timed_and_their_tokens_counted_per_arm_in_metrics_and_report() {
    let config = r#"{"rollout":"r","arms":[{"name":"v1","weight":1},{"name":"v2","weight":0}],
        "controller":{"cluster":"rampctl","poll_ms":200},"stream":{"tokens":true}}"#;
    let host = MemHost::default();
    let mut w = worker(&host, config, 21);
    for _ in 0..3 {
        // 150 ms to the first token, 11 tokens 20 ms apart: 350 ms in all, 20 ms per token.
        stream_request(&w, &host, 150, 20, 11);
    }
    // A 5xx is not a stream, nor is an answer without a body.
    request(&w, &host, &[], 503);
    request(&w, &host, &[], 200);
    w.tick();
    let m = |name: &str| host.metric(&format!("ramp.rollout.r.arm.v1.{name}"));
    assert_eq!(m("stream_responses_total"), Some(3));
    assert_eq!(m("ttft_milliseconds_bucket.le_100"), Some(0));
    assert_eq!(m("ttft_milliseconds_bucket.le_200"), Some(3));
    assert_eq!(m("stream_duration_milliseconds_bucket.le_300"), Some(0));
    assert_eq!(m("stream_duration_milliseconds_bucket.le_400"), Some(3));
    assert_eq!(m("tpot_milliseconds_bucket.le_10"), Some(0));
    assert_eq!(m("tpot_milliseconds_bucket.le_20"), Some(3));
    assert_eq!(m("completion_tokens_total"), Some(33));
    assert_eq!(m("prompt_tokens_total"), Some(27));
    assert_eq!(m("token_responses_total"), Some(3));
    w.tick();
    w.tick();
    let parsed = newest_report(&host);
    assert_eq!(parsed.validate(&["v1", "v2"]), Ok(()));
    let s = parsed.arms["v1"].stream.as_ref().expect("the stream part");
    assert_eq!((s.responses, s.token_responses), (3, 3));
    assert_eq!((s.prompt_tokens, s.completion_tokens), (27, 33));
    assert_eq!(s.ttft_ms.counts[51], 3);
    assert_eq!(
        parsed.arms["v2"].stream.as_ref().map(|s| s.responses),
        Some(0)
    );
}

/// Without `stream`, a response body costs nothing: no clock read, no body read.
#[test]
fn without_stream_a_body_costs_no_host_call() {
    let host = MemHost::default();
    let w = worker(
        &host,
        r#"{"rollout":"c","arms":[{"name":"v1","weight":1}]}"#,
        22,
    );
    host.new_request(&[]);
    let mut x = w.exchange();
    x.on_request_headers(true);
    host.respond(
        200,
        &[("content-type", "text/event-stream")],
        b"data: x\n\n",
    );
    x.on_response_headers(false);
    host.with(|m| m.calls.clear());
    x.on_response_body(9, false);
    x.on_response_body(9, true);
    assert!(host.with(|m| m.calls.is_empty()));
    // With `stream` but `event_stream_only`, a JSON answer is not watched.
    let host = MemHost::default();
    let w = worker(
        &host,
        r#"{"rollout":"c","arms":[{"name":"v1","weight":1}],"stream":{"event_stream_only":true}}"#,
        23,
    );
    host.new_request(&[]);
    let mut x = w.exchange();
    x.on_request_headers(true);
    host.respond(200, &[("content-type", "application/json")], b"{}");
    x.on_response_headers(false);
    host.with(|m| m.calls.clear());
    x.on_response_body(2, true);
    assert!(host.with(|m| m.calls.is_empty()));
}

/// One request answered by an arm's model: `fails(arm)` says whether it answers 5xx.
fn request_by_arm(
    w: &Worker<MemHost>,
    host: &MemHost,
    mut fails: impl FnMut(&str) -> bool,
) -> String {
    request_answered(w, host, &[], |arm| if fails(arm) { 503 } else { 200 })
}

const GUARDED: &str = r#"{"rollout":"r","arms":[{"name":"v1","weight":50},{"name":"v2","weight":50}],
    "guard":{"max_increase":0}}"#;

#[test]
fn the_guard_cuts_a_failing_candidate_in_the_worker_that_sees_it_and_then_in_the_others() {
    let host = MemHost::default();
    let a = worker(&host, GUARDED, 31);
    let mut b = worker(&host, GUARDED, 32);
    // Healthy: both arms serve, nothing trips.
    let mut served = [0, 0];
    for _ in 0..400 {
        for w in [&a, &b] {
            served[usize::from(request_by_arm(w, &host, |_| false) == "v2")] += 1;
        }
    }
    b.tick();
    assert!(served[1] > 300, "{served:?}");
    // v2 fails every request: worker a, which sees them, trips at one of its merges (every 32
    // responses), before any tick.
    let mut to_v2 = 0;
    for _ in 0..200 {
        to_v2 += usize::from(request_by_arm(&a, &host, |arm| arm == "v2") == "v2");
    }
    assert!((5..60).contains(&to_v2), "a tripped after {to_v2} failures");
    assert_eq!(
        host.metric("ramp.rollout.r.arm.v2.guard_trips_total"),
        Some(1)
    );
    assert!(host.logged("guard: arm 1 tripped its test"));
    for _ in 0..100 {
        assert_eq!(request_by_arm(&a, &host, |_| false), "v1");
    }
    // b learns it at its next merge (its 32nd response since its tick) or its tick.
    let before: usize = (0..31)
        .map(|_| usize::from(request_by_arm(&b, &host, |_| false) == "v2"))
        .sum();
    assert!(before > 5, "b still splits before its next merge: {before}");
    request_by_arm(&b, &host, |_| false);
    for _ in 0..100 {
        assert_eq!(request_by_arm(&b, &host, |_| false), "v1");
    }
    b.tick();
    assert_eq!(
        host.metric("ramp.rollout.r.arm.v2.guard_trips_total"),
        Some(1),
        "one trip, counted once per Envoy"
    );
}

#[test]
fn an_equally_good_candidate_never_trips_and_a_handful_of_errors_never_does() {
    let host = MemHost::default();
    let mut w = worker(&host, GUARDED, 33);
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..20_000 {
        request_by_arm(&w, &host, |_| rng.u32(..100) < 2);
        if i % 100 == 0 {
            w.tick();
        }
    }
    assert_eq!(
        host.metric("ramp.rollout.r.arm.v2.guard_trips_total"),
        Some(0)
    );
    // At low traffic, four failures in four requests are not enough (min_errors 5).
    let host = MemHost::default();
    let w = worker(&host, GUARDED, 34);
    let mut failures = 0;
    while failures < 4 {
        failures += usize::from(request_by_arm(&w, &host, |arm| arm == "v2") == "v2");
    }
    assert_eq!(
        host.metric("ramp.rollout.r.arm.v2.guard_trips_total"),
        Some(0)
    );
}

#[test]
fn the_controllers_guard_trips_reports_at_once_and_a_new_epoch_starts_afresh() {
    let host = MemHost::default();
    let config = r#"{"rollout":"r","arms":[{"name":"v1","weight":100},{"name":"v2","weight":0}],
        "controller":{"cluster":"rampctl","poll_ms":60000}}"#;
    let mut w = worker(&host, config, 35);
    w.tick(); // polls
    let token = polls(&host)[0].token;
    let state = |epoch: u64| {
        json!({"version": epoch, "weights": {"v1": 50, "v2": 50},
               "guard": {"epoch": epoch, "max_increase": 0.0}})
    };
    answer_poll(&mut w, &host, token, &state(1));
    let reports = |host: &MemHost| {
        host.with(|m| {
            m.callouts
                .iter()
                .filter(|c| c.header(":path") == Some("/v1/rollouts/r/reports"))
                .count()
        })
    };
    let before = reports(&host);
    for _ in 0..200 {
        request_by_arm(&w, &host, |arm| arm == "v2");
    }
    w.tick();
    assert_eq!(reports(&host), before + 1, "the trip is reported at once");
    let report = newest_report(&host);
    let guard = report.guard.expect("the report says what the guard did");
    assert_eq!((guard.epoch, guard.tripped), (1, vec!["v2".to_owned()]));
    w.tick();
    assert_eq!(reports(&host), before + 1, "and once");
    for _ in 0..50 {
        assert_eq!(request_by_arm(&w, &host, |_| false), "v1");
    }
    // The next stage's state carries a new epoch: the candidate serves again.
    w.tick();
    let token = polls(&host).last().unwrap().token;
    answer_poll(&mut w, &host, token, &state(2));
    let back: usize = (0..100)
        .map(|_| usize::from(request_by_arm(&w, &host, |_| false) == "v2"))
        .sum();
    assert!(back > 20, "{back}");
    // A state without a guard turns it off; a bad one is refused by field.
    let bad = json!({"version": 3, "weights": {"v1": 1}, "guard": {"epoch": 3, "alpha": 2.0}});
    w.tick();
    let token = polls(&host).last().unwrap().token;
    answer_poll(&mut w, &host, token, &bad);
    assert!(host.logged("live state guard.alpha: must be in (0, 0.5], got 2"));
}

#[test]
fn a_fault_late_in_a_long_stage_trips_as_soon_as_one_at_its_start() {
    let config = r#"{"rollout":"r","arms":[{"name":"v1","weight":50},{"name":"v2","weight":50}],
        "guard":{"max_error_rate":0.05}}"#;
    let failures_to_trip = |healthy: usize| {
        let host = MemHost::default();
        let mut w = worker(&host, config, 36);
        for i in 0..healthy {
            request_by_arm(&w, &host, |_| false);
            if i % 50 == 0 {
                w.tick();
            }
        }
        let mut failures = 0;
        while host.metric("ramp.rollout.r.arm.v2.guard_trips_total") == Some(0) && failures < 5_000
        {
            failures += usize::from(request_by_arm(&w, &host, |arm| arm == "v2") == "v2");
        }
        failures
    };
    let early = failures_to_trip(0);
    let late = failures_to_trip(50_000);
    // On the stage's counts alone, 25,000 healthy candidate responses would need about 1,300
    // failures before the rate even reached 5%; the checkpoint before the fault sees it at once.
    eprintln!(
        "failures to trip: {early} at the stage's start, {late} after 50,000 healthy responses"
    );
    assert!(early <= 20, "{early}");
    assert!(late <= 150, "late: {late} failures (early: {early})");
}

/// A reviewer's probe, kept: a new static config (a fixed v2) starts without the old config's trip.
#[test]
fn a_new_static_config_starts_without_the_old_configs_trip() {
    let host = MemHost::default();
    let a = worker(&host, GUARDED, 41);
    for _ in 0..200 {
        request_by_arm(&a, &host, |arm| arm == "v2");
    }
    assert_eq!(
        host.metric("ramp.rollout.r.arm.v2.guard_trips_total"),
        Some(1)
    );
    let fixed = r#"{"rollout":"r","arms":[{"name":"v1","weight":50},{"name":"v2","weight":50,"cluster":"v2-fixed"}],
        "guard":{"max_error_rate":0.2}}"#;
    let mut b = worker(&host, fixed, 42);
    b.tick();
    let to_v2: usize = (0..200)
        .map(|_| usize::from(request_by_arm(&b, &host, |_| false) == "v2"))
        .sum();
    assert!(
        to_v2 > 50,
        "the new config's v2 gets {to_v2} of 200 requests"
    );
}
