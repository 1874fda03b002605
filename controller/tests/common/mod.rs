//! `rampctl serve` as a real process for the controller's own tests: a fresh database in a
//! temporary folder, port 0 (the address is read from its log), killed on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TOKEN: &str = "op-token";

pub struct Serve {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A new empty folder for one test's database.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("rampctl-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `rampctl serve` to completion or until it serves; `Err` holds its log when it exited.
pub fn try_start(dir: &Path, extra: &[&str]) -> Result<Serve, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rampctl"))
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.join("ramp.db"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("rampctl: serving on http://") {
                let _ = tx.send(Some(addr.to_owned()));
            }
            sink.lock().unwrap().push(line);
        }
        let _ = tx.send(None);
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(addr)) => Ok(Serve {
            child,
            port: addr.rsplit(':').next().unwrap().parse().unwrap(),
            dir: dir.to_owned(),
            log,
        }),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            Err(log.lock().unwrap().join("\n"))
        }
    }
}

pub fn start(dir: &Path) -> Serve {
    try_start(dir, &["--auth-token", TOKEN]).unwrap()
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Status and JSON answer (Null when the body is not JSON).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>, auth: bool) -> (u16, Value) {
        self.call_bytes(method, path, body.map(str::as_bytes), auth)
    }

    pub fn call_bytes(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        auth: bool,
    ) -> (u16, Value) {
        let mut req = ureq::request(method, &self.url(path)).timeout(Duration::from_secs(60));
        if auth {
            req = req.set("authorization", &format!("Bearer {TOKEN}"));
        }
        let resp = match body {
            Some(b) => req.send_bytes(b),
            None => req.call(),
        };
        let resp = match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let text = resp.into_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn apply(&self, spec: &str) -> Value {
        let (code, v) = self.call("POST", "/v1/rollouts", Some(spec), true);
        assert_eq!(code, 201, "{v}");
        v
    }

    pub fn status(&self, name: &str) -> Value {
        self.call("GET", &format!("/v1/rollouts/{name}"), None, false)
            .1
    }

    pub fn wait_for(&self, name: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
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

    pub fn report(&self, rollout: &str, body: &Value) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/v1/rollouts/{rollout}/reports"),
            Some(&body.to_string()),
            false,
        )
    }

    /// How long one state poll takes.
    pub fn timed_poll(&self, rollout: &str) -> (u16, Duration) {
        let t = Instant::now();
        let (code, _) = self.call("GET", &format!("/v1/rollouts/{rollout}/state"), None, false);
        (code, t.elapsed())
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
                "latency_ms": {"le": [5,10,25,50,100,150,250,500,1000,2500,5000,"+Inf"],
                               "counts": vec![requests; 12]}
            }),
        );
    }
    serde_json::json!({"instance": instance, "seq": seq, "arms": out})
}

/// A one-route HTTP server on loopback that answers every request with `status` and `body` after
/// `delay_ms` (changeable while it runs), and counts the requests. Stops with the test process.
pub struct SlowServer {
    pub port: u16,
    pub delay_ms: Arc<AtomicU64>,
    pub status: Arc<AtomicU64>,
    pub hits: Arc<AtomicU64>,
}

impl SlowServer {
    pub fn start(delay_ms: u64, status: u16, body: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let delay = Arc::new(AtomicU64::new(delay_ms));
        let code = Arc::new(AtomicU64::new(u64::from(status)));
        let hits = Arc::new(AtomicU64::new(0));
        let (d, c, h) = (delay.clone(), code.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (d, c, h) = (d.clone(), c.clone(), h.clone());
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = [0u8; 8192];
                    let mut seen = Vec::new();
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if seen.len() >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    h.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(d.load(Ordering::Relaxed)));
                    let answer = format!(
                        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        c.load(Ordering::Relaxed),
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes());
                });
            }
        });
        Self {
            port,
            delay_ms: delay,
            status: code,
            hits,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// An empty but valid Prometheus answer to any instant query.
pub const EMPTY_PROMETHEUS: &str =
    r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;

impl Serve {
    /// Posts `len` bytes of JSON whitespace, ignoring a failed write: the server answers 413 once
    /// it has read past its limit and closes without reading the rest, so a client sending far
    /// more sees a broken pipe (as ureq does); the answer is read from the socket all the same.
    pub fn oversized(&self, path: &str, len: usize) -> (u16, Value) {
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
