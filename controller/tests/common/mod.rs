//! `rampctl serve` as a real process for the controller's own tests: the e2e harness's
//! `Controller` (`ramp_tests::controller`) started with the binary cargo built for these tests, on
//! a fresh database in a temporary folder, plus the calls these tests make over and over.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod https;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use ramp_tests::controller::Controller as Serve;
use serde_json::Value;

pub const TOKEN: &str = "op-token";

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A new empty folder for one test's database.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("rampctl-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `rampctl serve` on `dir/ramp.db` with operator token `token`; `Err` holds its log when it
/// exited instead of serving.
pub fn try_start(dir: &Path, token: &str) -> Result<Serve, String> {
    try_start_with(dir, token, &[])
}

/// The `rampctl` under test: the one cargo built for these tests, or RAMPCTL_UNDER_TEST, which
/// runs these tests against another build (e.g. an older commit's, to see which of them fail
/// there).
pub fn rampctl_binary() -> PathBuf {
    std::env::var_os("RAMPCTL_UNDER_TEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rampctl")))
}

/// The same with more `serve` arguments (`--ca-file PATH`).
pub fn try_start_with(dir: &Path, token: &str, extra: &[&str]) -> Result<Serve, String> {
    Serve::start_binary(&rampctl_binary(), &dir.join("ramp.db"), token, 0, extra)
        .map_err(|e| format!("{e:#}"))
}

pub fn start(dir: &Path) -> Serve {
    try_start(dir, TOKEN).unwrap()
}

/// The calls these tests make, failing the test on a transport error.
pub trait Api {
    fn req(&self, method: &str, path: &str, body: Option<&str>, auth: bool) -> (u16, Value);
    fn applied(&self, spec: &str) -> Value;
    fn status(&self, name: &str) -> Value;
    /// Polls `status` until `ok` holds; fails the test after `within`.
    fn wait_until(&self, name: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> Value;
    fn report(&self, rollout: &str, body: &Value) -> (u16, Value);
    /// How long one state poll takes.
    fn timed_poll(&self, rollout: &str) -> (u16, Duration);
    fn oversized(&self, path: &str, len: usize) -> (u16, Value);
}

impl Api for Serve {
    fn req(&self, method: &str, path: &str, body: Option<&str>, auth: bool) -> (u16, Value) {
        self.call(method, path, body, auth).unwrap()
    }

    fn applied(&self, spec: &str) -> Value {
        self.apply(spec).unwrap()
    }

    fn status(&self, name: &str) -> Value {
        self.req("GET", &format!("/v1/rollouts/{name}"), None, false)
            .1
    }

    fn wait_until(&self, name: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.status(name);
            if ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting on {name}: {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn report(&self, rollout: &str, body: &Value) -> (u16, Value) {
        self.req(
            "POST",
            &format!("/v1/rollouts/{rollout}/reports"),
            Some(&body.to_string()),
            false,
        )
    }

    fn timed_poll(&self, rollout: &str) -> (u16, Duration) {
        let t = Instant::now();
        let (code, _) = self.req("GET", &format!("/v1/rollouts/{rollout}/state"), None, false);
        (code, t.elapsed())
    }

    /// Posts `len` bytes of JSON whitespace, ignoring a failed write: the server answers 413 once
    /// it has read past its limit and closes without reading the rest, so a client sending far
    /// more sees a broken pipe (as ureq does); the answer is read from the socket all the same.
    fn oversized(&self, path: &str, len: usize) -> (u16, Value) {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
        )
        .unwrap();
        let _ = stream.write_all(&vec![b' '; len]);
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .to_lowercase()
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    let code = head
                        .split(' ')
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    return (code, serde_json::from_str(body).unwrap_or(Value::Null));
                }
            }
        }
        panic!("no answer: {}", String::from_utf8_lossy(&answer));
    }
}

/// A report as the filter writes it: per arm (requests, 5xx), latency all under 5 ms.
pub fn report(instance: &str, seq: u64, arms: &[(&str, u64, u64)]) -> Value {
    let mut out = serde_json::Map::new();
    for &(arm, requests, errors) in arms {
        out.insert(
            arm.to_owned(),
            serde_json::json!({
                "requests": requests,
                "responses": {"2xx": requests - errors, "3xx": 0, "4xx": 0, "5xx": errors},
                "latency_ms": {"le": ramp_protocol::report::latency_le(),
                               "counts": vec![requests; 52]}
            }),
        );
    }
    serde_json::json!({"instance": instance, "seq": seq, "arms": out})
}
