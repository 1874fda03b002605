//! `make demo`: a real Envoy with the Ramp filter in front of two model servers. Shows the weighted
//! split, sticky users, a canary ramp that never moves a user back, the override header and the
//! per-arm metrics, then stops everything. `RAMP_DEMO_HOLD=1` keeps it running for your own curls.

use std::collections::BTreeSet;

use anyhow::Result;
use ramp_tests::prom::sample;
use ramp_tests::{count_by_arm, drive, no_headers, two_arm_config, Envoy, ModelServer};
use serde_json::{json, Value};

fn filter_config(canary: f64) -> Value {
    json!({
        "rollout": "demo",
        "arms": [
            {"name": "v1", "weight": 100.0 - canary, "cluster": "model_v1"},
            {"name": "v2", "weight": canary, "cluster": "model_v2"}
        ],
        "sticky": {"source": "header", "name": "x-user-id"},
        "override": {"header": "canary", "values": {"true": "v2"}},
        "response_header": "x-ramp-arm"
    })
}

fn bar(share: f64) -> String {
    let n = (share * 40.0).round() as usize;
    format!("{}{}", "#".repeat(n), ".".repeat(40 - n.min(40)))
}

fn user_header(i: usize) -> Vec<(String, String)> {
    vec![("x-user-id".to_owned(), format!("user-{i}"))]
}

fn main() -> Result<()> {
    let v1 = ModelServer::start("v1")?;
    let v2 = ModelServer::start("v2")?;
    println!("== Ramp demo ==");
    println!(
        "model servers: v1 on 127.0.0.1:{}, v2 on 127.0.0.1:{}",
        v1.port, v2.port
    );

    let mut envoy = Envoy::start(&two_arm_config(&filter_config(10.0), v1.port, v2.port)?, 2)?;
    println!(
        "Envoy {} (2 workers) with ramp_filter.wasm: {}  admin: {}",
        ramp_tests::envoy::envoy_binary().display(),
        envoy.url("/"),
        envoy.admin_url("/")
    );

    println!("\n1. Weighted split: 2000 anonymous requests, weights v1=90 v2=10");
    let replies = drive(&envoy.url("/predict"), 2000, 4, no_headers);
    let counts = count_by_arm(&replies);
    for (arm, n) in &counts {
        let share = *n as f64 / replies.len() as f64;
        println!("   {arm}  {}  {n:>5}  {:5.1}%", bar(share), share * 100.0);
    }

    println!("\n2. Sticky users: 200 users (header x-user-id), 5 requests each");
    let replies = drive(&envoy.url("/predict"), 1000, 4, |i| user_header(i / 5));
    let consistent = (0..200)
        .filter(|u| {
            let arms: BTreeSet<_> = replies[u * 5..u * 5 + 5]
                .iter()
                .map(|r| &r.served_by)
                .collect();
            arms.len() == 1
        })
        .count();
    let on_canary = (0..200)
        .filter(|u| replies[u * 5].served_by == "v2")
        .count();
    println!("   {consistent}/200 users saw one arm on all 5 requests; {on_canary} users are on the canary v2");

    println!("\n3. Canary ramp 5% -> 10% -> 25% -> 50% -> 100% for 1000 users (Envoy restarted per stage)");
    println!(
        "   stage   canary users   share                                       moved in  moved out"
    );
    let mut previous: BTreeSet<usize> = BTreeSet::new();
    for canary in [5.0, 10.0, 25.0, 50.0, 100.0] {
        drop(envoy);
        envoy = Envoy::start(
            &two_arm_config(&filter_config(canary), v1.port, v2.port)?,
            2,
        )?;
        let replies = drive(&envoy.url("/predict"), 1000, 4, user_header);
        let now: BTreeSet<usize> = (0..1000)
            .filter(|&u| replies[u].served_by == "v2")
            .collect();
        let moved_in = now.difference(&previous).count();
        let moved_out = previous.difference(&now).count();
        let share = now.len() as f64 / 1000.0;
        println!(
            "   {canary:>4}%   {:>5}          {}  {moved_in:>8}  {moved_out:>9}",
            now.len(),
            bar(share)
        );
        previous = now;
    }
    drop(envoy);
    let mut envoy = Envoy::start(&two_arm_config(&filter_config(10.0), v1.port, v2.port)?, 2)?;

    println!(
        "\n4. Override header 'canary: true' (configured) and a spoofed 'x-ramp-arm' (stripped)"
    );
    let forced = drive(&envoy.url("/predict"), 20, 2, |_| {
        vec![("canary".into(), "true".into())]
    });
    println!("   canary: true      -> {:?}", count_by_arm(&forced));
    let spoofed = drive(&envoy.url("/predict"), 20, 2, |_| {
        vec![("x-ramp-arm".into(), "v2".into())]
    });
    println!(
        "   x-ramp-arm: v2    -> {:?}  (the client cannot pick its arm)",
        count_by_arm(&spoofed)
    );

    println!(
        "\n5. Per-arm metrics from {}",
        envoy.admin_url("/stats/prometheus")
    );
    drive(&envoy.url("/predict"), 300, 2, no_headers);
    drive(&envoy.url("/fail"), 100, 2, no_headers);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let text = envoy.prometheus()?;
    for arm in ["v1", "v2"] {
        let get = |name: &str, extra: &[(&str, &str)]| {
            let mut want = vec![("rollout", "demo"), ("arm", arm)];
            want.extend_from_slice(extra);
            sample(&text, name, &want).unwrap_or(0.0)
        };
        println!(
            "   ramp_requests{{rollout=\"demo\",arm=\"{arm}\"}} {:>4}   2xx {:>4}   5xx {:>4}   latency samples {:>4}",
            get("ramp_requests", &[]),
            get("ramp_responses", &[("class", "2xx")]),
            get("ramp_responses", &[("class", "5xx")]),
            get("ramp_latency_ms_count", &[])
        );
    }

    if std::env::var_os("RAMP_DEMO_HOLD").is_some() {
        println!(
            "\nRunning until Ctrl-C. Try: curl -si {} -H 'x-user-id: alice'",
            envoy.url("/predict")
        );
        loop {
            std::thread::park();
        }
    }
    envoy.stop();
    println!("\nDone: Envoy and the model servers are stopped.");
    Ok(())
}
