//! Issue 20, item 9: outgoing https. `ureq` was built without TLS, so every https hook and https
//! Prometheus failed with "no TLS backend is configured" (a `before_start` hook rolled the rollout
//! back). Here a real `rampctl serve` calls real https servers whose certificates a test CA made
//! at test time signed: trusted with `--ca-file`, refused as untrusted without it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::https::{HttpsServer, TestCa};
use common::{temp_dir, try_start_with, Api, TOKEN};
use ramp_tests::prometheus::Prometheus;
use serde_json::Value;

/// A canary with a `before_start` hook at `url` that rolls back at its first failure.
fn smoke_tested(name: &str, url: &str) -> String {
    format!(
        "name: {name}\narms: [{{name: v1, role: baseline}}, {{name: v2, role: candidate}}]\ncheck_interval_s: 0.2\nfailure_threshold: 1\nhooks: [{{on: before_start, url: '{url}', timeout_s: 5, retries: 0}}]\nstages: [{{weight: 10, min_duration_s: 600}}, {{weight: 100}}]\n"
    )
}

#[test]
fn a_before_start_hook_over_https_passes_when_ca_file_names_its_ca() {
    let ca = TestCa::new();
    let hook = HttpsServer::start(&ca, |_| (200, "{}".into()));
    let s = try_start_with(&temp_dir("tls-hook"), TOKEN, &["--ca-file", ca.ca_file()]).unwrap();
    // The start-up log says what outgoing https trusts: the system's roots and the CA file.
    let said = s.log().join("\n");
    assert!(
        said.contains("outgoing https trusts") && said.contains(ca.ca_file()),
        "{said}"
    );
    s.applied(&smoke_tested("tlsok", &hook.url("/smoke")));
    let v = s.wait_until("tlsok", Duration::from_secs(10), |v| {
        v["phase"] != "starting"
    });
    assert_eq!(v["phase"], "progressing", "{v}");
    assert_eq!(v["weights"]["v2"], 10.0, "{v}");
    let got = hook.requests.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].method.as_str(), got[0].target.as_str()),
        ("POST", "/smoke")
    );
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    let payload: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(
        payload,
        serde_json::json!({"rollout": "tlsok", "hook": "before_start", "candidate": "v2"})
    );
    assert_eq!(hook.refused_handshakes.load(Ordering::Relaxed), 0);
}

#[test]
fn without_ca_file_an_https_hook_is_refused_as_untrusted_and_the_rollout_never_starts() {
    let ca = TestCa::new();
    let hook = HttpsServer::start(&ca, |_| (200, "{}".into()));
    let s = try_start_with(&temp_dir("tls-untrusted"), TOKEN, &[]).unwrap();
    // Credentials in the URL must not come back in any error text, TLS's included.
    let url = format!("https://ops:s3cret@127.0.0.1:{}/smoke?token=t0k", hook.port);
    s.applied(&smoke_tested("tlsbad", &url));
    let v = s.wait_until("tlsbad", Duration::from_secs(10), |v| {
        v["phase"] == "rolled_back"
    });
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "BeforeStart hook https://***@127.0.0.1:{}/smoke?token=*** failed",
            hook.port
        )),
        "{reason}"
    );
    assert!(
        reason.contains("the server's certificate is not trusted: no trusted root signed it"),
        "{reason}"
    );
    assert!(!reason.contains("no TLS backend"), "{reason}");
    assert_eq!(v["weights"]["v2"], 0.0, "{v}");
    let history = s.req("GET", "/v1/rollouts/tlsbad/history", None, false).1;
    let kinds: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(!kinds.contains(&"started"), "{kinds:?}");
    for text in [v.to_string(), history.to_string(), s.log().join("\n")] {
        assert!(!text.contains("s3cret") && !text.contains("t0k"), "{text}");
    }
    // The handshake failed, so the hook never received the event.
    assert!(hook.requests.lock().unwrap().is_empty());
    assert!(hook.refused_handshakes.load(Ordering::Relaxed) >= 1);
}

#[test]
fn serve_refuses_to_start_with_a_ca_file_it_cannot_use() {
    let dir = temp_dir("tls-badca");
    let missing = dir.join("missing.pem");
    let not_pem = dir.join("notes.txt");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    for (path, reason) in [
        (&missing, "cannot be read"),
        (&not_pem, "holds no PEM certificate"),
    ] {
        let path = path.to_str().unwrap();
        let said = try_start_with(&dir, TOKEN, &["--ca-file", path])
            .err()
            .expect("refused");
        assert!(
            said.contains(&format!("--ca-file {path}: {reason}")),
            "{said}"
        );
    }
}

/// Debian's Prometheus serving its API over https (`--web.config.file`), scraping a target over
/// https too; killed on drop. Its https address is `tls_url`.
fn tls_prometheus(ca: &TestCa, target_port: u16) -> Prometheus {
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: envoy\n    scheme: https\n    metrics_path: /stats/prometheus\n    tls_config: {{ca_file: '{}'}}\n    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n",
        ca.ca_file()
    );
    let web = format!(
        "tls_server_config:\n  cert_file: '{}'\n  key_file: '{}'\n",
        ca.cert_pem.display(),
        ca.key_pem.display()
    );
    Prometheus::spawn(&config, Some(&web)).unwrap()
}

fn tls_url(p: &Prometheus) -> String {
    format!("https://127.0.0.1:{}", p.port)
}

#[test]
fn an_https_prometheus_is_read_when_ca_file_names_its_ca() {
    let ca = TestCa::new();
    // The Envoys' counters, as `/stats/prometheus` exposes them; the test makes them grow.
    let served = Arc::new(AtomicU64::new(0));
    let counts = served.clone();
    let envoy = HttpsServer::start(&ca, move |_| {
        let n = counts.load(Ordering::Relaxed);
        (
            200,
            format!(
                "ramp_requests_total{{rollout=\"tlsprom\",arm=\"v1\"}} {}\nramp_requests_total{{rollout=\"tlsprom\",arm=\"v2\"}} {n}\n",
                9 * n
            ),
        )
    });
    let prom = tls_prometheus(&ca, envoy.port);
    // The test's own client trusts the CA too: wait until Prometheus has scraped a sample.
    let client = ramp_controller::tls::api_agent(Some(&ca.ca_pem)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let scraped = client
            .get(&format!("{}/api/v1/query", tls_url(&prom)))
            .query("query", "ramp_requests_total")
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v["data"]["result"].as_array().is_some_and(|r| r.len() == 2));
        if scraped {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped the target"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let spec = format!(
        "name: tlsprom\narms: [{{name: v1, role: baseline}}, {{name: v2, role: candidate}}]\ncheck_interval_s: 0.2\nmetrics: {{prometheus: '{}'}}\nstages: [{{weight: 10, min_duration_s: 600}}, {{weight: 100}}]\n",
        tls_url(&prom)
    );

    // Without the CA, applying needs the base totals from Prometheus and is refused, saying why.
    let untrusting = try_start_with(&temp_dir("tls-prom-no"), TOKEN, &[]).unwrap();
    let (code, v) = untrusting.req("POST", "/v1/rollouts", Some(&spec), true);
    assert_eq!(code, 502, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("the server's certificate is not trusted")),
        "{v}"
    );

    let s = try_start_with(&temp_dir("tls-prom"), TOKEN, &["--ca-file", ca.ca_file()]).unwrap();
    s.applied(&spec);
    served.fetch_add(500, Ordering::Relaxed);
    // The window grows by what Prometheus scraped since the rollout's base: 500 and 4,500.
    let v = s.wait_until("tlsprom", Duration::from_secs(30), |v| {
        v["window"]["v2"]["requests"] == 500
    });
    assert_eq!(v["window"]["v1"]["requests"], 4500, "{v}");
    assert!(v.get("figures_error").is_none_or(Value::is_null), "{v}");
}

fn rampctl(args: &[&str], ca_env: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(common::rampctl_binary());
    cmd.args(args)
        .env_remove("RAMPCTL_CA_FILE")
        .env_remove("RAMPCTL_SERVER")
        .env_remove("RAMPCTL_TOKEN");
    if let Some(path) = ca_env {
        cmd.env("RAMPCTL_CA_FILE", path);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The CLI against a controller behind TLS (here a TLS-terminating proxy in front of a real
/// `rampctl serve`, as an ingress would be): `--ca-file` or RAMPCTL_CA_FILE makes it trusted.
#[test]
fn rampctl_reaches_an_https_server_with_ca_file_and_refuses_an_untrusted_one() {
    let ca = TestCa::new();
    let s = try_start_with(&temp_dir("tls-cli"), TOKEN, &[]).unwrap();
    let backend = s.url("");
    let front = HttpsServer::start(&ca, move |req| {
        let mut call = ureq::request(&req.method, &format!("{backend}{}", req.target));
        if let Some(auth) = req.header("authorization") {
            call = call.set("authorization", auth);
        }
        let answer = if req.method == "GET" {
            call.call()
        } else {
            call.send_string(&req.body)
        };
        match answer {
            Ok(r) | Err(ureq::Error::Status(_, r)) => (r.status(), r.into_string().unwrap()),
            Err(e) => (502, format!("{{\"error\": \"{e}\"}}")),
        }
    });
    let server = front.url("");
    let dir = temp_dir("tls-cli-spec");
    let spec = dir.join("spec.yaml");
    std::fs::write(
        &spec,
        "name: tlscli\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\nstages: [{weight: 10, min_duration_s: 600}, {weight: 100}]\n",
    )
    .unwrap();
    let spec = spec.to_str().unwrap();

    let (code, out, err) = rampctl(
        &[
            "--server",
            &server,
            "--token",
            TOKEN,
            "--ca-file",
            ca.ca_file(),
            "apply",
            "-f",
            spec,
            "--json",
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["name"],
        "tlscli"
    );
    let (code, out, err) = rampctl(
        &[
            "--server",
            &server,
            "--token",
            ramp_tests::controller::READ_TOKEN,
            "status",
            "tlscli",
            "--json",
        ],
        Some(ca.ca_file()),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["phase"],
        "progressing"
    );

    // Not trusted without the CA: exit 2 (cannot reach the API), saying why.
    let (code, _, err) = rampctl(&["--server", &server, "status", "tlscli"], None);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("cannot reach the controller at {server}"))
            && err.contains("the server's certificate is not trusted"),
        "{err}"
    );
    // A CA file that cannot be used is a local error (1) naming the flag, before any call.
    let missing = dir.join("missing.pem");
    let (code, _, err) = rampctl(&["--server", &server, "status", "tlscli"], missing.to_str());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("--ca-file {}: cannot be read", missing.display())),
        "{err}"
    );
    // Commands that call no API do not read it.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/canary.yaml");
    assert_eq!(rampctl(&["validate", "-f", example], missing.to_str()).0, 0);
    assert!(front.refused_handshakes.load(Ordering::Relaxed) >= 1);
}
