//! Per-arm metrics on Envoy's `/stats/prometheus`, with `rollout`, `arm` and `class` labels, counting
//! exactly what the model servers saw.

use std::time::{Duration, Instant};

use ramp_tests::prom::sample;
use ramp_tests::{drive, TwoArms};
use serde_json::json;

#[test]
fn metrics_count_requests_classes_and_latency_per_arm() {
    let cfg = json!({"rollout": "metrics", "arms": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}]});
    let setup = TwoArms::start(&cfg, 2).unwrap();
    let n = 400;
    // Every fourth request asks the model to fail, so both arms see some 5xx.
    let replies: Vec<_> = (0..4)
        .flat_map(|k| {
            let path = if k == 0 { "/fail" } else { "/ok" };
            drive(&setup.envoy.url(path), n / 4, 2, ramp_tests::no_headers)
        })
        .collect();
    let count = |arm: &str, status: u16| {
        replies
            .iter()
            .filter(|r| r.served_by == arm && r.status == status)
            .count()
    };

    let labels = |arm: &'static str| [("rollout", "metrics"), ("arm", arm)];
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = setup.envoy.prometheus().unwrap();
        let total = |name: &str| -> f64 {
            ["v1", "v2"]
                .iter()
                .filter_map(|a| sample(&text, name, &[("arm", a)]))
                .sum()
        };
        let total_inf = |name: &str| -> f64 {
            ["v1", "v2"]
                .iter()
                .filter_map(|a| sample(&text, name, &[("arm", a), ("le", "+Inf")]))
                .sum()
        };
        // Counters (latency buckets too) are flushed on each worker's tick.
        let done = total_inf("ramp_latency_milliseconds_bucket") as usize == n
            && total("ramp_requests_total") as usize == n;
        if done || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for (arm, server) in [("v1", &setup.v1), ("v2", &setup.v2)] {
        let get = |name: &str, extra: &[(&'static str, &'static str)]| {
            let mut want = labels(arm).to_vec();
            want.extend_from_slice(extra);
            sample(&text, name, &want).unwrap_or_else(|| panic!("no {name}{want:?} in:\n{text}"))
                as usize
        };
        assert!(server.served() > 50, "{arm} served {}", server.served());
        assert_eq!(
            get("ramp_requests_total", &[]),
            server.served() as usize,
            "{arm}"
        );
        assert_eq!(
            get("ramp_responses_total", &[("class", "2xx")]),
            count(arm, 200),
            "{arm}"
        );
        assert_eq!(
            get("ramp_responses_total", &[("class", "5xx")]),
            count(arm, 500),
            "{arm}"
        );
        assert_eq!(get("ramp_responses_total", &[("class", "4xx")]), 0, "{arm}");
        assert_eq!(
            get("ramp_latency_milliseconds_bucket", &[("le", "+Inf")]),
            server.served() as usize,
            "{arm}"
        );
    }
    assert_eq!(
        sample(&text, "ramp_fail_open_total", &[("rollout", "metrics")]),
        Some(0.0)
    );
}
