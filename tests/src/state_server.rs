//! A stand-in for the controller's state endpoint, `GET /v1/rollouts/<rollout>/state`, serving a
//! document the test sets, so the filter's side of the live-state channel is tested against real
//! HTTP before `rampctl serve` exists. It counts polls, so a test can check one poller per Envoy, and
//! keeps the bodies of `POST /v1/rollouts/<rollout>/reports`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

pub struct StateServer {
    pub port: u16,
    /// The body served (HTTP 200); `None` answers 503.
    pub document: Arc<Mutex<Option<String>>>,
    /// Report (and webhook) bodies received, oldest first.
    pub reports: Arc<Mutex<Vec<String>>>,
    /// When set, POSTs are answered 500 (a failing webhook).
    pub fail_posts: Arc<AtomicBool>,
    /// POSTs are answered after this many milliseconds (a slow webhook).
    pub post_delay_ms: Arc<AtomicU64>,
    polls: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl StateServer {
    pub fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0")
    }

    /// Binds a given address (to come back on the same port after a simulated outage).
    pub fn start_on(addr: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let port = listener.local_addr()?.port();
        let document: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let polls = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let reports = Arc::new(Mutex::new(Vec::new()));
        let fail_posts = Arc::new(AtomicBool::new(false));
        let post_delay_ms = Arc::new(AtomicU64::new(0));
        let shared = Shared {
            fail_posts: fail_posts.clone(),
            post_delay_ms: post_delay_ms.clone(),
            doc: document.clone(),
            polls: polls.clone(),
            halt: stop.clone(),
            reports: reports.clone(),
        };
        thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.halt.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = shared.clone();
                thread::spawn(move || serve(stream, &shared));
            }
        });
        Ok(Self {
            port,
            document,
            reports,
            fail_posts,
            post_delay_ms,
            polls,
            stop,
        })
    }

    pub fn set(&self, doc: &serde_json::Value) {
        if let Ok(mut d) = self.document.lock() {
            *d = Some(doc.to_string());
        }
    }

    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::SeqCst)
    }
}

impl Drop for StateServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[derive(Clone)]
struct Shared {
    fail_posts: Arc<AtomicBool>,
    post_delay_ms: Arc<AtomicU64>,
    doc: Arc<Mutex<Option<String>>>,
    polls: Arc<AtomicU64>,
    halt: Arc<AtomicBool>,
    reports: Arc<Mutex<Vec<String>>>,
}

fn serve(stream: TcpStream, shared: &Shared) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0
            || shared.halt.load(Ordering::Relaxed)
        {
            return;
        }
        let post = line.starts_with(b"POST ");
        let mut length = 0usize;
        loop {
            let mut h = Vec::new();
            if reader.read_until(b'\n', &mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == b"\r\n" || h == b"\n" {
                break;
            }
            let h = String::from_utf8_lossy(&h).to_ascii_lowercase();
            if let Some(v) = h.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let reply = if post {
            if let Ok(mut r) = shared.reports.lock() {
                r.push(String::from_utf8_lossy(&body).into_owned());
            }
            let delay = shared.post_delay_ms.load(Ordering::Relaxed);
            thread::sleep(std::time::Duration::from_millis(delay));
            if shared.fail_posts.load(Ordering::Relaxed) {
                "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n".to_owned()
            } else {
                "HTTP/1.1 204 No Content\r\n\r\n".to_owned()
            }
        } else {
            shared.polls.fetch_add(1, Ordering::SeqCst);
            match shared.doc.lock().ok().and_then(|d| d.clone()) {
                Some(b) => format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}", b.len()),
                None => "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_owned(),
            }
        };
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
