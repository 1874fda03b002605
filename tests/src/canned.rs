//! A stand-in for a slow or failing HTTP dependency of the controller (a Prometheus, a webhook):
//! answers every request with a fixed status and body after a delay, all changeable while it
//! runs, and counts and keeps the requests' bodies. Stops with the test process.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A one-route HTTP server on loopback that answers every request with `status` and `body` after
/// `delay_ms` (changeable while it runs), and counts the requests. Stops with the test process.
pub struct CannedServer {
    pub port: u16,
    pub delay_ms: Arc<AtomicU64>,
    pub status: Arc<AtomicU64>,
    pub hits: Arc<AtomicU64>,
    /// The bodies received, in order.
    pub bodies: Arc<Mutex<Vec<String>>>,
}

impl CannedServer {
    pub fn start(delay_ms: u64, status: u16, body: &'static str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let delay = Arc::new(AtomicU64::new(delay_ms));
        let code = Arc::new(AtomicU64::new(u64::from(status)));
        let hits = Arc::new(AtomicU64::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (d, c, h, kept) = (delay.clone(), code.clone(), hits.clone(), bodies.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (d, c, h, kept) = (d.clone(), c.clone(), h.clone(), kept.clone());
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
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let body = String::from_utf8_lossy(&seen[end + 4..]).into_owned();
                        kept.lock().unwrap_or_else(|p| p.into_inner()).push(body);
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
        Ok(Self {
            port,
            delay_ms: delay,
            status: code,
            hits,
            bodies,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// An empty but valid Prometheus answer to any instant query.
pub const EMPTY_PROMETHEUS: &str =
    r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
