//! Streamed model answers (issue 23): model servers that stream OpenAI-style server-sent events
//! with a set time to first token, a real Envoy with the filter's `stream` on, a real `rampctl
//! serve`. A candidate whose first token comes 40% later than the baseline's, at 10% of the
//! traffic, is rolled back by `ttft_slower` within two checks of having its samples; one whose
//! first token comes as soon is promoted, and Envoy's stats show the streaming metrics.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ramp_tests::controller::{Controller, Rig};
use ramp_tests::prom::sample;
use ramp_tests::upstream::STREAM_PROMPT_TOKENS;
use ramp_tests::{two_arm_config_with_controller, Envoy, ModelServer, Traffic};
use serde_json::json;

/// The baseline's time to first token, and the gap between tokens.
const TTFT_MS: u64 = 50;
const INTER_TOKEN_MS: u64 = 4;
const TOKENS: u64 = 8;
/// Checks a second; rules need this many streamed answers of each arm.
const CHECK_INTERVAL_S: f64 = 1.0;
const MIN_SAMPLES: u64 = 30;

struct Setup {
    v1: ModelServer,
    v2: ModelServer,
    controller: Controller,
    envoy: Envoy,
    _dir: tempfile::TempDir,
}

fn setup(rollout: &str, candidate_ttft_ms: u64) -> Setup {
    let Rig {
        controller,
        v1,
        v2,
        dir,
    } = Rig::start().unwrap();
    for (server, ttft) in [(&v1, TTFT_MS), (&v2, candidate_ttft_ms)] {
        let b = &server.behaviour;
        b.stream_tokens.store(TOKENS, Ordering::Relaxed);
        b.ttft_ms.store(ttft, Ordering::Relaxed);
        b.inter_token_ms.store(INTER_TOKEN_MS, Ordering::Relaxed);
        b.usage.store(true, Ordering::Relaxed);
    }
    let filter = json!({
        "rollout": rollout,
        "arms": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
        "controller": {"cluster": "rampctl", "poll_ms": 250},
        "stream": {"event_stream_only": true, "tokens": true}
    });
    let config =
        two_arm_config_with_controller(&filter, v1.port, v2.port, controller.port).unwrap();
    let envoy = Envoy::start(&config, 2).unwrap();
    Setup {
        v1,
        v2,
        controller,
        envoy,
        _dir: dir,
    }
}

fn spec(name: &str, min_duration_s: u64) -> String {
    format!(
        "name: {name}
arms: [{{name: v1, role: baseline}}, {{name: v2, role: candidate}}]
check_interval_s: {CHECK_INTERVAL_S}
failure_threshold: 2
stages:
  - weight: 10
    min_duration_s: {min_duration_s}
    min_requests: {MIN_SAMPLES}
    rules:
      - {{metric: ttft_slower, max: 0.55, min_samples: {MIN_SAMPLES}}}
      - {{metric: ttft_p95, max: 1000, min_samples: {MIN_SAMPLES}}}
  - {{weight: 100}}
"
    )
}

/// The rollout's checks as status shows them, one entry per check: when it ran, and the
/// `ttft_slower` rule's verdict and samples.
fn watch_checks(
    controller: &Controller,
    name: &str,
    timeout: Duration,
) -> (serde_json::Value, Vec<(u64, String, u64)>) {
    let mut checks: Vec<(u64, String, u64)> = Vec::new();
    let deadline = Instant::now() + timeout;
    loop {
        let v = controller.wait_for(name, Duration::ZERO, |_| true).unwrap();
        let at = v["checked_at_ms"].as_u64().unwrap_or(0);
        let rule = v["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["metric"] == "ttft_slower"));
        if let Some(rule) = rule {
            if checks.last().is_none_or(|c| c.0 != at) {
                checks.push((
                    at,
                    rule["verdict"].as_str().unwrap_or_default().to_owned(),
                    rule["samples"].as_u64().unwrap_or(0),
                ));
            }
        }
        if v["phase"] != "progressing" || Instant::now() > deadline {
            return (v, checks);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_candidate_with_a_40_percent_later_first_token_is_rolled_back_within_two_checks() {
    let s = setup("ttft-slow", TTFT_MS * 14 / 10);
    s.controller.apply(&spec("ttft-slow", 600)).unwrap();
    let traffic = Traffic::start(s.envoy.url("/v1/chat/completions"), 8);
    let (status, checks) = watch_checks(&s.controller, "ttft-slow", Duration::from_secs(60));
    traffic.finish();
    eprintln!("ttft_slower checks (checked_at_ms, verdict, samples): {checks:?}");
    assert_eq!(status["phase"], "rolled_back", "{status}");
    let reason = status["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("first token later than baseline") && reason.contains("with confidence"),
        "{reason}"
    );
    // Every check that had its samples failed, and the second one rolled back (the status may
    // show the rolled-back rollout's last check once more).
    let judged: Vec<_> = checks.iter().filter(|c| c.1 != "not_enough_data").collect();
    assert!(
        !judged.is_empty() && judged.iter().all(|c| c.1 == "fail"),
        "{checks:?}"
    );
    let distinct: std::collections::BTreeSet<u64> = judged.iter().map(|c| c.0).collect();
    assert!(
        distinct.len() <= 2,
        "rolled back within two checks: {checks:?}"
    );
    assert!(s.v1.served() > 0 && s.v2.served() > 0);
    assert_eq!(
        s.controller.event_kinds("ttft-slow").unwrap(),
        ["applied", "check_failed", "rolled_back"],
        "one failed check, then the rollback at the second"
    );
}

#[test]
fn a_candidate_with_an_equal_first_token_is_promoted_and_envoy_shows_the_stream_metrics() {
    let s = setup("ttft-equal", TTFT_MS);
    s.controller.apply(&spec("ttft-equal", 3)).unwrap();
    let traffic = Traffic::start(s.envoy.url("/v1/chat/completions"), 8);
    let (status, checks) = watch_checks(&s.controller, "ttft-equal", Duration::from_secs(60));
    let done = s
        .controller
        .wait_for("ttft-equal", Duration::from_secs(30), |v| {
            v["phase"] != "progressing"
        })
        .unwrap();
    traffic.finish();
    eprintln!("ttft_slower checks (checked_at_ms, verdict, samples): {checks:?}");
    assert_eq!(done["phase"], "succeeded", "{status}");
    assert!(
        checks.iter().all(|c| c.1 != "fail"),
        "an equal candidate never fails: {checks:?}"
    );
    assert!(
        checks.iter().any(|c| c.1 == "pass" && c.2 >= MIN_SAMPLES),
        "it passed on its samples: {checks:?}"
    );
    // Envoy's own stats, with Prometheus names and labels.
    let text = s.envoy.prometheus().unwrap();
    let get = |name: &str, labels: &[(&str, &str)]| {
        let mut want = vec![("rollout", "ttft-equal"), ("arm", "v2")];
        want.extend_from_slice(labels);
        sample(&text, name, &want).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
    };
    let streamed = get("ramp_stream_responses_total", &[]);
    assert!(streamed >= MIN_SAMPLES as f64, "{streamed}");
    assert_eq!(
        get("ramp_ttft_milliseconds_bucket", &[("le", "+Inf")]),
        streamed
    );
    assert_eq!(get("ramp_ttft_milliseconds_bucket", &[("le", "40")]), 0.0);
    let total_ms = (TTFT_MS + (TOKENS - 1) * INTER_TOKEN_MS) as f64;
    assert_eq!(
        get("ramp_stream_duration_milliseconds_bucket", &[("le", "60")]),
        0.0,
        "a stream lasts at least {total_ms} ms"
    );
    assert_eq!(
        get("ramp_tpot_milliseconds_bucket", &[("le", "+Inf")]),
        streamed
    );
    assert_eq!(get("ramp_token_responses_total", &[]), streamed);
    assert_eq!(
        get("ramp_completion_tokens_total", &[]),
        streamed * TOKENS as f64
    );
    assert_eq!(
        get("ramp_prompt_tokens_total", &[]),
        streamed * STREAM_PROMPT_TOKENS as f64
    );
    assert!(s.v1.served() > 0 && s.v2.served() > 0);
}
