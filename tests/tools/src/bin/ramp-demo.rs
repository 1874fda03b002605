//! `make demo`: real Envoys with the Ramp filter in front of model servers, and `rampctl serve`. First
//! a healthy candidate walks its stages to 100% and a faulty one is rolled back on its own; then the
//! filter alone: the weighted split, sticky users, a canary ramp that never moves a user back, the override header, the per-arm
//! metrics, a bandit finding the better model and a shadow model compared with production, then
//! stops everything. `RAMP_DEMO_HOLD=1` keeps it running for your own curls.

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

/// Prints one status line from the controller's API, with the split the client actually observed.
fn status_line(status: &Value, observed_v2: f64) -> String {
    let w = &status["weights"];
    format!(
        "   stage {}/{} {:<12} target v2 {:>5}%  observed v2 {} {:>5.1}%  window v2: {} req, error rate {:.3}{}",
        status["stage"],
        status["stages"],
        status["phase"].as_str().unwrap_or("?"),
        w["v2"],
        bar(observed_v2 / 100.0),
        observed_v2,
        status["window"]["v2"]["requests"],
        status["window"]["v2"]["error_rate"].as_f64().unwrap_or(0.0),
        status["reason"].as_str().map(|r| format!("  ({r})")).unwrap_or_default()
    )
}

/// Drives one rollout to its end, printing a live status line per second.
fn watch_rollout(
    controller: &ramp_tests::controller::Controller,
    envoy: &Envoy,
    name: &str,
    mut on_second: impl FnMut(u32),
) -> Result<Value> {
    let client = ramp_tests::Client::default();
    for second in 0..60 {
        on_second(second);
        let t = std::time::Instant::now();
        let mut seen = (0, 0);
        while t.elapsed() < std::time::Duration::from_secs(1) {
            if let Ok(r) = client.get(&envoy.url("/predict"), &[]) {
                seen = (seen.0 + usize::from(r.served_by == "v2"), seen.1 + 1);
            }
        }
        let (_, status) = controller.call("GET", &format!("/v1/rollouts/{name}"), None, false)?;
        println!(
            "{}",
            status_line(&status, 100.0 * seen.0 as f64 / seen.1.max(1) as f64)
        );
        if status["phase"] != "progressing" {
            return Ok(status);
        }
    }
    Ok(Value::Null)
}

/// The main act: `rampctl serve` walks a healthy candidate to 100% and rolls a faulty one back.
fn rollout_demo() -> Result<()> {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir()?;
    let controller =
        ramp_tests::controller::Controller::start(&dir.path().join("ramp.db"), "demo-token")?;
    println!(
        "rampctl serve on {} (SQLite {}; operator token demo-token, the filters' report token \
         from their VM environment)",
        controller.url(""),
        dir.path().join("ramp.db").display()
    );
    for (name, faulty) in [("healthy-model", false), ("faulty-model", true)] {
        let (v1, v2) = (ModelServer::start("v1")?, ModelServer::start("v2")?);
        let cfg = json!({"rollout": name, "arms": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
                         "controller": {"cluster": "rampctl", "poll_ms": 250}});
        let envoy = Envoy::start(
            &ramp_tests::two_arm_config_with_controller(&cfg, v1.port, v2.port, controller.port)?,
            2,
        )?;
        let spec = format!(
            "name: {name}\narms: [{{name: v1, role: baseline}}, {{name: v2, role: candidate}}]\ncheck_interval_s: 1\nfailure_threshold: 2\nstages:\n  - {{weight: 10, min_duration_s: 3, min_requests: 20, rules: [{{metric: error_rate, max: 0.05, min_samples: 10}}]}}\n  - {{weight: 25, min_duration_s: 3, min_requests: 20, rules: [{{metric: error_rate, max: 0.05, min_samples: 10}}]}}\n  - {{weight: 50, min_duration_s: 3, min_requests: 20, rules: [{{metric: error_rate, max: 0.05, min_samples: 10}}]}}\n  - {{weight: 100}}\n"
        );
        println!(
            "\n{} rollout {name:?}: stages 10% -> 25% -> 50% -> 100%, 3 s each, rolled back when the candidate's error rate passes 5% twice in a row, or at once when the filters' guard cuts a plainly failing candidate off",
            if faulty { "B." } else { "A." }
        );
        let (code, answer) = controller.call("POST", "/v1/rollouts", Some(&spec), true)?;
        anyhow::ensure!(code == 201, "apply failed: {answer}");
        let mut fault_at = None;
        let end = watch_rollout(&controller, &envoy, name, |second| {
            if !faulty && second == 4 {
                // What an operator sees: the real command line against the same controller.
                println!("   $ rampctl status {name}");
                if let Ok((_, out, _)) = controller.cli(&["status", name], false) {
                    for line in out.lines() {
                        println!("   | {line}");
                    }
                }
            }
            if faulty && second == 5 {
                v2.behaviour.fail_every.store(3, Ordering::Relaxed);
                fault_at = Some(std::time::Instant::now());
                println!("   >>> the candidate starts failing one request in three");
            }
        })?;
        match (end["phase"].as_str(), fault_at) {
            (Some("rolled_back"), Some(t)) => {
                println!(
                    "   rolled back automatically {:.1} s after the fault: {}",
                    t.elapsed().as_secs_f64(),
                    end["reason"].as_str().unwrap_or("")
                );
                std::thread::sleep(std::time::Duration::from_millis(800));
                let after = drive(&envoy.url("/predict"), 200, 2, no_headers);
                let on_v2 = after.iter().filter(|r| r.served_by == "v2").count();
                println!("   the filters now send {on_v2} of 200 requests to the candidate");
            }
            (Some(phase), _) => println!("   finished: {phase}"),
            _ => println!("   (still running after a minute)"),
        }
        let (_, history) =
            controller.call("GET", &format!("/v1/rollouts/{name}/history"), None, false)?;
        let events: Vec<String> = history["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{} ({})",
                    e["kind"].as_str().unwrap_or(""),
                    e["detail"].as_str().unwrap_or("")
                )
            })
            .collect();
        println!("   history: {}", events.join(" -> "));
        // The decision record a reviewer signs off: as text here, and one page with its plots.
        let page = ramp_tests::envoy::repo_root().join(format!("target/demo/{name}-report.html"));
        if let Some(dir) = page.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let page_arg = page.display().to_string();
        let (code, out, err) = controller.cli(&["report", name, "--html", &page_arg], false)?;
        if code == 0 {
            println!("   $ rampctl report {name} --html {page_arg}");
            for line in out.lines() {
                println!("   | {line}");
            }
        } else {
            println!("   (rampctl report answered {code}: {err})");
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    println!("== Ramp demo ==");
    rollout_demo()?;
    let v1 = ModelServer::start("v1")?;
    let v2 = ModelServer::start("v2")?;
    println!("\n== The filter on its own ==");
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
        "\n4. Override header 'canary: true' (configured) and a spoofed 'x-ramp-arm' (replaced)"
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
            "   ramp_requests_total{{rollout=\"demo\",arm=\"{arm}\"}} {:>4}   2xx {:>4}   5xx {:>4}   latency samples {:>4}",
            get("ramp_requests_total", &[]),
            get("ramp_responses_total", &[("class", "2xx")]),
            get("ramp_responses_total", &[("class", "5xx")]),
            get("ramp_latency_milliseconds_bucket", &[("le", "+Inf")])
        );
    }

    envoy.stop();
    bandit_demo(&v1, &v2)?;
    shadow_demo()?;

    if std::env::var_os("RAMP_DEMO_HOLD").is_some() {
        let envoy = Envoy::start(&two_arm_config(&filter_config(10.0), v1.port, v2.port)?, 2)?;
        println!(
            "\nRunning until Ctrl-C. Try: curl -si {} -H 'x-user-id: alice'",
            envoy.url("/predict")
        );
        loop {
            std::thread::park();
        }
    }
    println!("\nDone: Envoy and the model servers are stopped.");
    Ok(())
}

/// A Thompson-sampling bandit finds the better model: v1 fails 30% of requests, v2 5%.
fn bandit_demo(v1: &ModelServer, v2: &ModelServer) -> Result<()> {
    use std::sync::atomic::Ordering;
    println!("\n6. Bandit (Thompson sampling, 4 workers): v1 fails 30% of requests, v2 fails 5%");
    v1.behaviour.fail_permille.store(300, Ordering::Relaxed);
    v2.behaviour.fail_permille.store(50, Ordering::Relaxed);
    let cfg = json!({
        "rollout": "bandit-demo",
        "arms": [{"name": "v1", "weight": 1}, {"name": "v2", "weight": 1}],
        "strategy": "bandit",
        "bandit": {"policy": "thompson", "warmup": 20}
    });
    let envoy = Envoy::start(&two_arm_config(&cfg, v1.port, v2.port)?, 4)?;
    for batch in 1..=4 {
        let replies = drive(&envoy.url("/predict"), 1000, 4, no_headers);
        let v2_share = replies.iter().filter(|r| r.served_by == "v2").count() as f64 / 10.0;
        println!(
            "   batch {batch} (1000 requests): v2 {}  {v2_share:5.1}%",
            bar(v2_share / 100.0)
        );
        std::thread::sleep(std::time::Duration::from_millis(700));
    }
    let text = envoy.prometheus()?;
    for arm in ["v1", "v2"] {
        let l = [("rollout", "bandit-demo"), ("arm", arm)];
        let trials = sample(&text, "ramp_bandit_trials_total", &l).unwrap_or(0.0);
        let reward = sample(&text, "ramp_bandit_reward_millionths_total", &l).unwrap_or(0.0) / 1e6;
        println!(
            "   ramp_bandit_trials_total{{arm=\"{arm}\"}} {trials:>5}  successes {reward:>5}  success rate {:.3}",
            reward / trials.max(1.0)
        );
    }
    v1.behaviour.fail_permille.store(0, Ordering::Relaxed);
    v2.behaviour.fail_permille.store(0, Ordering::Relaxed);
    Ok(())
}

/// A shadow model answers copies of live requests; the filter compares its predictions with v1's.
fn shadow_demo() -> Result<()> {
    use std::sync::atomic::Ordering;
    println!("\n7. Shadow (compare mode): every request is also sent to a candidate that predicts 5% higher");
    let primary = ModelServer::start("v1")?;
    let candidate = ModelServer::start("shadow")?;
    candidate
        .behaviour
        .prediction_milli
        .store(1050, Ordering::Relaxed);
    let config = ramp_tests::EnvoyConfig::from_repo("shadow.yaml")?
        .upstream("model_v1", primary.port)?
        .upstream("model_shadow", candidate.port)?;
    let envoy = Envoy::start(&config, 2)?;
    let replies = drive(&envoy.url("/predict?x=10"), 300, 2, no_headers);
    let users_saw: std::collections::BTreeSet<String> = replies
        .iter()
        .map(|r| r.body["prediction"].to_string())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let text = envoy.prometheus()?;
    let get = |n: &str| {
        sample(
            &text,
            &ramp_tests::prom::shadow_metric(n),
            &[("rollout", "shadow-demo")],
        )
        .unwrap_or(0.0)
    };
    let pairs = get("pairs");
    let mean = (get("diff_pos_micros") - get("diff_neg_micros")) / 1e6 / pairs.max(1.0);
    println!(
        "   users saw predictions {users_saw:?} (v1 only); the candidate answered {} copies",
        candidate.served()
    );
    println!(
        "   pairs {pairs}, status agreement {:.1}%, mean difference shadow - primary {mean:.3} (x = 10, so 0.5 expected)",
        100.0 * get("status_agree") / pairs.max(1.0)
    );
    if let Some(line) = envoy
        .log()
        .lines()
        .find_map(|l| l.split_once("ramp-shadow ").map(|(_, r)| r.to_owned()))
    {
        println!("   a record from Envoy's log: {line}");
    }
    Ok(())
}
