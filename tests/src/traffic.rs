//! Sending traffic through Envoy from several connections at once, so every Envoy worker serves some.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// One answer `Traffic` saw.
#[derive(Debug, Clone)]
pub struct Answer {
    /// When the request was sent.
    pub sent: Instant,
    /// When its answer came.
    pub at: Instant,
    /// The model that answered (`x-served-by`; empty when Envoy answered itself).
    pub served_by: String,
    /// The arm the filter chose, when its config sets a `response_header` (`x-ramp-arm`): it is
    /// there on Envoy's own replies too, so it shows the split the filter applies.
    pub told_arm: Option<String>,
    pub status: u16,
}

impl Answer {
    /// The arm the filter chose, else the model that answered.
    pub fn arm(&self) -> &str {
        self.told_arm.as_deref().unwrap_or(&self.served_by)
    }
}

/// Sends requests until stopped (or dropped), recording each answer.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Answer>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    errors: Arc<AtomicU64>,
}

/// How many requests a paced connection that fell behind may send back to back to catch up.
pub const PACED_CATCH_UP: u32 = 3;

/// See [`Traffic::stopped_reaching`].
pub fn stopped_reaching(answers: &[Answer], arm: &str, quiet: Duration) -> Option<Instant> {
    let last = answers
        .iter()
        .filter(|a| a.served_by == arm)
        .map(|a| a.sent)
        .max()?;
    let newest = answers.iter().map(|a| a.sent).max()?;
    (newest.saturating_duration_since(last) >= quiet).then_some(last)
}

impl Traffic {
    pub fn start(url: String, connections: usize) -> Self {
        Self::start_with(connections, move |_| url.clone())
    }

    /// The same with each request's URL made from its number on its connection (a query that
    /// varies, for models whose answers should differ).
    pub fn start_with(
        connections: usize,
        url: impl Fn(u64) -> String + Send + Sync + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let url = Arc::new(url);
        let threads = (0..connections)
            .map(|_| {
                let (stop, seen, url) = (stop.clone(), seen.clone(), url.clone());
                std::thread::spawn(move || {
                    let client = Client::default();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let sent = Instant::now();
                        if let Ok(r) = client.get(&url(n), &[]) {
                            seen.lock().unwrap_or_else(|p| p.into_inner()).push(Answer {
                                sent,
                                at: Instant::now(),
                                served_by: r.served_by,
                                told_arm: r.told_arm,
                                status: r.status,
                            });
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
            errors: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sends `rps` GETs a second in total to `url` over `connections` keep-alive connections,
    /// each on its own schedule (one request every `connections / rps` seconds, the connections'
    /// schedules staggered evenly), whatever the answers take: an open-loop load, as far as one
    /// request in flight per connection allows. A connection that falls behind (a slow answer)
    /// catches up by at most [`PACED_CATCH_UP`] requests sent back to back; slots missed beyond
    /// that are skipped, not burst. Transport errors are counted ([`Traffic::errors`]), not
    /// recorded as answers.
    pub fn paced(url: String, connections: usize, rps: f64) -> Self {
        let connections = connections.max(1);
        let interval = Duration::from_secs_f64(connections as f64 / rps.max(0.001));
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let threads = (0..connections)
            .map(|c| {
                let (stop, seen, errors, url) =
                    (stop.clone(), seen.clone(), errors.clone(), url.clone());
                std::thread::spawn(move || {
                    let client = Client::default();
                    let mut next = start + interval.mul_f64(c as f64 / connections as f64);
                    let slack = interval * PACED_CATCH_UP;
                    while !stop.load(Ordering::Relaxed) {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else if now - next > slack {
                            next = now.checked_sub(slack).unwrap_or(now);
                        }
                        let sent = Instant::now();
                        match client.get(&url, &[]) {
                            Ok(r) => seen.lock().unwrap_or_else(|p| p.into_inner()).push(Answer {
                                sent,
                                at: Instant::now(),
                                served_by: r.served_by,
                                told_arm: r.told_arm,
                                status: r.status,
                            }),
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        next += interval;
                    }
                })
            })
            .collect();
        Self {
            stop,
            seen,
            threads,
            errors,
        }
    }

    /// Requests that failed below HTTP (connection refused or reset, timeouts).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The send time of the last request `arm` answered, once every request sent in at least
    /// `quiet` after it was answered by another arm; `None` until then (or if `arm` never
    /// answered). After a fault, this is when the load stopped reaching `arm`.
    pub fn stopped_reaching(&self, arm: &str, quiet: Duration) -> Option<Instant> {
        stopped_reaching(&self.answers(), arm, quiet)
    }

    /// Waits up to `timeout` for [`Traffic::stopped_reaching`] to hold, polling every 50 ms.
    pub fn wait_stopped_reaching(
        &self,
        arm: &str,
        quiet: Duration,
        timeout: Duration,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = self.stopped_reaching(arm, quiet) {
                return Some(t);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every answer so far: when, and which arm served it.
    pub fn seen(&self) -> Vec<(Instant, String)> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|a| (a.at, a.served_by.clone()))
            .collect()
    }

    /// Every answer so far, in full.
    pub fn answers(&self) -> Vec<Answer> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Answers so far.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Share of answers from `arm` among those after `since`.
    pub fn share_since(&self, arm: &str, since: Instant) -> (usize, usize) {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let after: Vec<_> = seen.iter().filter(|a| a.at >= since).collect();
        (
            after.iter().filter(|a| a.served_by == arm).count(),
            after.len(),
        )
    }

    pub fn finish(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

/// A test that fails part-way stops its load too, instead of leaving it spinning on a dead Envoy.
impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(sent: Instant, arm: &str) -> Answer {
        Answer {
            sent,
            at: sent,
            served_by: arm.to_owned(),
            told_arm: None,
            status: 200,
        }
    }

    #[test]
    fn traffic_stopped_reaching_an_arm_only_after_a_quiet_second() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut answers = vec![
            answer(ms(0), "v2"),
            answer(ms(100), "v1"),
            answer(ms(300), "v2"),
        ];
        answers.push(answer(ms(900), "v1"));
        let quiet = Duration::from_secs(1);
        assert_eq!(stopped_reaching(&answers, "v2", quiet), None);
        answers.push(answer(ms(1300), "v1"));
        assert_eq!(stopped_reaching(&answers, "v2", quiet), Some(ms(300)));
        assert_eq!(stopped_reaching(&answers, "v3", quiet), None);
    }
}
