//! Sending traffic through Envoy from several connections at once, so every Envoy worker serves some.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::{Client, Reply};

/// Sends `n` GETs to `url` over `connections` keep-alive connections, building each request's headers
/// from its index; returns the replies in index order. A transport error fails the whole run.
pub fn drive(
    url: &str,
    n: usize,
    connections: usize,
    headers: impl Fn(usize) -> Vec<(String, String)> + Sync,
) -> Vec<Reply> {
    let connections = connections.max(1);
    let mut out: Vec<(usize, Reply)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..connections)
            .map(|t| {
                let headers = &headers;
                s.spawn(move || {
                    let client = Client::default();
                    let mut replies = Vec::new();
                    for i in (t..n).step_by(connections) {
                        let h = headers(i);
                        let h: Vec<(&str, &str)> =
                            h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        match client.get(url, &h) {
                            Ok(r) => replies.push((i, r)),
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(replies)
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(Ok(replies)) => replies,
                Ok(Err(e)) => panic!("request through envoy failed: {e:#}"),
                Err(_) => panic!("traffic thread panicked"),
            })
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// Replies per answering arm.
pub fn count_by_arm(replies: &[Reply]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in replies {
        *m.entry(r.served_by.clone()).or_default() += 1;
    }
    m
}

/// Header builder for requests that carry none.
pub fn no_headers(_: usize) -> Vec<(String, String)> {
    Vec::new()
}

/// Sends requests until stopped, recording (when, arm) for each answer.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(url: String, connections: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..connections)
            .map(|_| {
                let (stop, seen, url) = (stop.clone(), seen.clone(), url.clone());
                std::thread::spawn(move || {
                    let client = Client::default();
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(r) = client.get(&url, &[]) {
                            seen.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((Instant::now(), r.served_by));
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Self {
            stop,
            seen,
            threads,
        }
    }

    /// Every answer so far: when, and which arm served it.
    pub fn seen(&self) -> Vec<(Instant, String)> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Share of answers from `arm` among those after `since`.
    pub fn share_since(&self, arm: &str, since: Instant) -> (usize, usize) {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let after: Vec<_> = seen.iter().filter(|(t, _)| *t >= since).collect();
        (after.iter().filter(|(_, a)| a == arm).count(), after.len())
    }

    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
