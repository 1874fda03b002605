//! An in-memory [`Host`] for native tests of the worker: shared data with Envoy's CAS rules
//! (proxy-wasm-cpp-host `shared_data.cc`: a CAS of 0 always writes, a missing key is created
//! whatever the CAS, an existing key needs its current CAS), queues, metrics, callouts the test
//! answers, and one request's header maps. Clones share everything, as the workers of one Envoy
//! share its shared data. The filter's `log` records are captured per test thread ([`logs`]).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use log::Level;

use crate::host::{Body, Callout, Host, Map, MetricKind, SetError, Shared};

thread_local! {
    static LOGS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
}

/// The tests' `log` backend: every record, at every level, kept for the thread that logged it
/// (each test runs on a thread of its own).
struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        LOGS.with(|l| {
            l.borrow_mut()
                .push((record.level(), record.args().to_string()))
        });
    }

    fn flush(&self) {}
}

/// What the filter logged on this thread since its last `MemHost` was made.
pub fn logs() -> Vec<(Level, String)> {
    LOGS.with(|l| l.borrow().clone())
}

#[derive(Debug, Clone)]
pub struct SentCallout {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
}

impl SentCallout {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
pub struct Mem {
    pub now_us: u64,
    pub env: HashMap<String, String>,
    pub shared: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    /// The next this many conditional writes fail with a CAS mismatch (another worker won).
    pub conflicts: u32,
    pub queues: Vec<(String, VecDeque<Vec<u8>>)>,
    /// (kind, name, value): counters add, gauges hold the last value.
    pub metrics: Vec<(MetricKind, String, u64)>,
    pub callouts: Vec<SentCallout>,
    next_token: u32,
    /// Every host call a request made, by name, to count the request path's cost.
    pub calls: Vec<&'static str>,
    pub request: Vec<(String, String)>,
    pub response: Vec<(String, String)>,
    pub callout_response: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    pub response_body: Vec<u8>,
    pub callout_body: Vec<u8>,
}

#[derive(Clone)]
pub struct MemHost(pub Rc<RefCell<Mem>>);

impl Default for MemHost {
    /// A fresh host, and a fresh log: the `log` facade is global, so the records are the thread's.
    fn default() -> Self {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            if log::set_logger(&Capture).is_ok() {
                log::set_max_level(log::LevelFilter::Trace);
            }
        });
        LOGS.with(|l| l.borrow_mut().clear());
        MemHost(Rc::default())
    }
}

impl MemHost {
    pub fn with<T>(&self, f: impl FnOnce(&mut Mem) -> T) -> T {
        f(&mut self.0.borrow_mut())
    }

    pub fn advance_ms(&self, ms: u64) {
        self.with(|m| m.now_us += ms * 1000);
    }

    pub fn metric(&self, name: &str) -> Option<u64> {
        self.with(|m| {
            m.metrics
                .iter()
                .find(|(_, n, _)| n == name)
                .map(|(_, _, v)| *v)
        })
    }

    /// Whether the filter logged a line containing `part` (see [`logs`]).
    pub fn logged(&self, part: &str) -> bool {
        logs().iter().any(|(_, l)| l.contains(part))
    }

    /// A fresh request with these headers (and no response yet).
    pub fn new_request(&self, headers: &[(&str, &str)]) {
        self.with(|m| {
            m.request = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            m.response.clear();
            m.response_body.clear();
            m.request_body.clear();
            m.calls.clear();
        });
    }

    pub fn respond(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        self.with(|m| {
            m.response = [(":status".to_owned(), status.to_string())]
                .into_iter()
                .chain(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())))
                .collect();
            m.response_body = body.to_vec();
        });
    }

    /// Stages the answer the next `Worker::on_callout` reads.
    pub fn callout_answer(&self, status: Option<u32>, headers: &[(&str, &str)], body: &[u8]) {
        self.with(|m| {
            m.callout_response = status
                .map(|s| (":status".to_owned(), s.to_string()))
                .into_iter()
                .chain(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())))
                .collect();
            m.callout_body = body.to_vec();
        });
    }

    pub fn header_of(&self, map: Map, name: &str) -> Option<String> {
        self.with(|m| {
            let list = match map {
                Map::Request => &m.request,
                Map::Response => &m.response,
                Map::CalloutResponse => &m.callout_response,
            };
            list.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        })
    }
}

/// The ABI's serialized map of `map` (`headermap::serialize`).
fn serialize(map: &[(String, String)]) -> Vec<u8> {
    let pairs: Vec<(&[u8], &[u8])> = map
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    crate::headermap::serialize(&pairs)
}

impl Host for MemHost {
    fn now_us(&self) -> u64 {
        self.with(|m| {
            m.calls.push("now");
            m.now_us
        })
    }

    fn env(&self, name: &str) -> Option<String> {
        self.with(|m| m.env.get(name).cloned())
    }

    fn shared_get(&self, key: &str) -> Option<Shared> {
        self.with(|m| {
            Some(match m.shared.get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            })
        })
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        self.with(|m| {
            if let Some((_, current)) = m.shared.get(key) {
                if m.conflicts > 0 {
                    m.conflicts -= 1;
                    return Err(SetError::CasMismatch);
                }
                if cas != 0 && cas != *current {
                    return Err(SetError::CasMismatch);
                }
            }
            m.next_cas += 1;
            let fresh = m.next_cas;
            m.shared.insert(key.to_owned(), (value.to_vec(), fresh));
            Ok(())
        })
    }

    fn register_queue(&self, name: &str) -> Option<u32> {
        self.with(|m| {
            m.queues.push((name.to_owned(), VecDeque::new()));
            Some(m.queues.len() as u32 - 1)
        })
    }

    fn enqueue(&self, queue: u32, value: &[u8]) -> bool {
        self.with(|m| match m.queues.get_mut(queue as usize) {
            Some((_, q)) => {
                q.push_back(value.to_vec());
                true
            }
            None => false,
        })
    }

    fn dequeue(&self, queue: u32) -> Option<Vec<u8>> {
        self.with(|m| m.queues.get_mut(queue as usize)?.1.pop_front())
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        self.with(|m| {
            if let Some(i) = m.metrics.iter().position(|(_, n, _)| n == name) {
                return Some(i as u32);
            }
            m.metrics.push((kind, name.to_owned(), 0));
            Some(m.metrics.len() as u32 - 1)
        })
    }

    fn increment_metric(&self, id: u32, by: u64) -> bool {
        self.with(|m| {
            m.calls.push("increment_metric");
            match m.metrics.get_mut(id as usize) {
                Some((_, _, v)) => {
                    *v += by;
                    true
                }
                None => false,
            }
        })
    }

    fn record_metric(&self, id: u32, value: u64) {
        self.with(|m| {
            m.calls.push("record_metric");
            if let Some((_, _, v)) = m.metrics.get_mut(id as usize) {
                *v = value;
            }
        });
    }

    fn dispatch(&self, call: &Callout<'_>) -> Option<u32> {
        self.with(|m| {
            m.next_token += 1;
            let token = m.next_token;
            m.callouts.push(SentCallout {
                token,
                cluster: call.cluster.to_owned(),
                headers: call
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: call.body.map(<[u8]>::to_vec),
                timeout_ms: call.timeout_ms,
            });
            Some(token)
        })
    }

    fn request_header_pairs(&self) -> Option<Vec<u8>> {
        self.with(|m| {
            m.calls.push("request_header_pairs");
            Some(serialize(&m.request))
        })
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        self.with(|m| m.calls.push("header"));
        self.header_of(map, name).map(String::into_bytes)
    }

    fn set_header(&self, map: Map, name: &str, value: Option<&str>) {
        self.with(|m| {
            m.calls.push("set_header");
            let list = match map {
                Map::Request => &mut m.request,
                Map::Response => &mut m.response,
                Map::CalloutResponse => &mut m.callout_response,
            };
            list.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
            if let Some(v) = value {
                list.push((name.to_owned(), v.to_owned()));
            }
        });
    }

    fn add_header(&self, map: Map, name: &str, value: &str) {
        self.with(|m| {
            m.calls.push("add_header");
            let list = match map {
                Map::Request => &mut m.request,
                Map::Response => &mut m.response,
                Map::CalloutResponse => &mut m.callout_response,
            };
            list.push((name.to_owned(), value.to_owned()));
        });
    }

    fn body(&self, which: Body, start: usize, size: usize) -> Option<Vec<u8>> {
        self.with(|m| {
            let b = match which {
                Body::Request => &m.request_body,
                Body::Response => &m.response_body,
                Body::CalloutResponse => &m.callout_body,
            };
            let end = (start + size).min(b.len());
            Some(b.get(start.min(end)..end)?.to_vec())
        })
    }
}
