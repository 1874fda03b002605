//! The request path: one [`Exchange`] per HTTP request. It reads the request's headers once,
//! picks the arm, sets the routing headers, and on the response counts the outcome into the
//! worker's tally (no host call per counter: they are flushed on tick). Never panics; any
//! internal fault sends the request to the baseline arm.

use std::cell::RefCell;
use std::rc::Rc;

use fastrand::Rng;

use super::{Active, ShadowState};
use crate::bandit::Evidence;
use crate::config::{ClientHeaders, KeySource, Reward, Rollout, Shadow, ShadowMode};
use crate::headermap::{find, pairs};
use crate::host::{Body, Host, Map};
use crate::jsonpick::pick;
use crate::metrics::class_index;
use crate::request::{cookie_value, must_strip, query_value, set_cookie_value, sticky_source};
use crate::select::{choose, Decision, Reason, RequestKeys};
use crate::shadow::{copy_header, eligibility, Eligibility, Observed};

/// Request header that selects the mirror cluster in Envoy's `request_mirror_policies`.
pub const MIRROR_HEADER: &str = "x-ramp-shadow";

/// The arm a request went to, kept for the response side.
struct Chosen {
    arm: usize,
    /// The request's analysis bucket: its sticky key's (`None` without one).
    bucket: Option<usize>,
    /// In an A/B test's pre-period: the arm the experiment will give this user.
    pre_arm: Option<usize>,
    started_us: u64,
    set_cookie: Option<String>,
}

/// This request's compare-mode copy, by its book id.
struct ShadowCopy {
    id: u64,
    /// The request body is still arriving.
    request_open: bool,
    /// The primary's status and latency, once its headers came.
    primary: Option<(Option<u32>, u64)>,
    /// The primary's body so far (only when a JSON pointer is compared), up to the body limit.
    body: Vec<u8>,
}

pub struct Exchange<H: Host> {
    host: H,
    active: Option<Rc<Active>>,
    rng: Rc<RefCell<Rng>>,
    chosen: Option<Chosen>,
    shadow: Option<ShadowCopy>,
}

impl<H: Host> Drop for Exchange<H> {
    fn drop(&mut self) {
        // A request that ended before its body did will never be sent: free its place at once.
        if let (Some(copy), Some(active)) = (&self.shadow, &self.active) {
            if let Some(Ok(mut st)) = active.shadow.as_ref().map(RefCell::try_borrow_mut) {
                st.book.abandon(copy.id);
            }
        }
    }
}

/// A request header as text, from the header map read once per request (no host call). Headers
/// the filter strips count as absent. Several values (HTTP/2 may split `cookie`) are joined with
/// "; ". Lossy UTF-8: any client can send a value that is not UTF-8, and the lossy form stays
/// deterministic, so such a sticky key still maps to one arm everywhere.
fn request_header(rollout: &Rollout, serialized: &[u8], name: &str) -> Option<String> {
    if must_strip(rollout, name.as_bytes()) {
        return None;
    }
    let mut values = find(serialized, name).map(String::from_utf8_lossy);
    let first = values.next()?.into_owned();
    Some(values.fold(first, |acc, v| acc + "; " + &v))
}

/// The request's headers as the filter reads them: the whole map once (`strip_all`, which needs
/// every name to strip), or only the ones asked for, one host call each (`strip_owned`).
enum RequestHeaders {
    Map(Vec<u8>),
    Each,
}

impl RequestHeaders {
    fn get(&self, host: &impl Host, rollout: &Rollout, name: &str) -> Option<String> {
        match self {
            RequestHeaders::Map(serialized) => request_header(rollout, serialized, name),
            RequestHeaders::Each if must_strip(rollout, name.as_bytes()) => None,
            // The value's own buffer when it is UTF-8, as it nearly always is (no copy).
            RequestHeaders::Each => host.header(Map::Request, name).map(|v| {
                String::from_utf8(v)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            }),
        }
    }
}

fn sticky_key(get: impl Fn(&str) -> Option<String>, rollout: &Rollout) -> Option<String> {
    let (source, name) = sticky_source(rollout)?;
    match source {
        KeySource::Header => get(name),
        KeySource::Cookie => cookie_value(&get("cookie")?, name).map(str::to_owned),
        KeySource::Query => query_value(&get(":path")?, name).map(str::to_owned),
    }
}

/// Hands a complete copy to this worker's root context, which sends it from `on_queue_ready`.
fn hand_off(host: &impl Host, st: &mut ShadowState, id: u64) {
    let queued = st.queue.is_some_and(|q| host.enqueue(q, &id.to_le_bytes()));
    if !queued {
        st.book.take_request(id);
        st.totals.dropped += 1;
    }
}

impl<H: Host> Exchange<H> {
    pub(super) fn new(host: H, active: Option<Rc<Active>>, rng: Rc<RefCell<Rng>>) -> Self {
        Exchange {
            host,
            active,
            rng,
            chosen: None,
            shadow: None,
        }
    }

    pub fn on_request_headers(&mut self, end_of_stream: bool) {
        let Some(active) = self.active.clone() else {
            return;
        };
        let rollout = &active.rollout;
        let headers = match rollout.client_headers {
            ClientHeaders::StripAll => {
                let serialized = self.host.request_header_pairs().unwrap_or_default();
                self.strip_client_headers(rollout, &serialized);
                RequestHeaders::Map(serialized)
            }
            ClientHeaders::StripOwned => RequestHeaders::Each,
        };
        let get = |name: &str| headers.get(&self.host, rollout, name);
        let override_value = rollout.override_.as_ref().and_then(|o| get(&o.header));
        let sticky_key = sticky_key(get, rollout);
        let keys = RequestKeys {
            override_value: override_value.as_deref(),
            sticky_key: sticky_key.as_deref(),
        };
        let counts = active
            .bandit
            .as_ref()
            .and_then(|b| b.counts.try_borrow().ok());
        let discounted = active
            .bandit
            .as_ref()
            .and_then(|b| b.discounted.as_ref())
            .and_then(|(_, d)| d.try_borrow().ok());
        let evidence = Evidence {
            counts: counts.as_ref().map_or(&[][..], |c| c.view()),
            discounted: discounted.as_ref().map(|d| d.counts()),
        };
        // Borrowed, not cloned: this runs per request. (The borrow cannot fail on one thread; the
        // static weights are only a panic-free fallback.)
        let live_weights = active.weights.try_borrow().ok();
        let static_weights;
        let weights: &[f64] = match &live_weights {
            Some(w) => w,
            None => {
                static_weights = rollout.weights();
                &static_weights
            }
        };
        let decision = match self.rng.try_borrow_mut() {
            Ok(mut rng) => choose(rollout, weights, evidence, keys, &mut rng),
            Err(_) => {
                active.count(|t| t.fail_open += 1);
                Decision {
                    arm: rollout.baseline,
                    reason: Reason::Baseline,
                    new_sticky_key: None,
                }
            }
        };
        drop(discounted);
        drop(counts);
        drop(live_weights);
        let Some(arm) = rollout.arms.get(decision.arm) else {
            return;
        };
        self.host
            .set_header(Map::Request, &rollout.routing_header, Some(&arm.name));
        match &arm.cluster {
            Some(cluster) => {
                self.host
                    .set_header(Map::Request, &rollout.cluster_header, Some(cluster))
            }
            // Stripped already with the rest under `strip_all`; a client's value must not steer
            // a `cluster_header` route to a cluster that is not this arm's.
            None if matches!(headers, RequestHeaders::Each) && rollout.routes_by_cluster => self
                .host
                .set_header(Map::Request, &rollout.cluster_header, None),
            None => {}
        }
        // A user's requests share a bucket (a hash of the key, independent of the arm's), so the
        // controller can treat buckets, not requests, as the independent units. Without a key the
        // request is the unit and needs none.
        let key = sticky_key.as_deref().or(decision.new_sticky_key.as_deref());
        let bucket = key.map(crate::bucket::analysis_bucket);
        let pre_arm = match (key, active.pre_weights.try_borrow()) {
            (Some(key), Ok(pre)) => crate::select::pre_period_arm(rollout, &pre, key),
            _ => None,
        };
        active.count(|t| {
            t.add_request(decision.arm, bucket);
            if let (Some(p), Some(b)) = (pre_arm, bucket) {
                t.add_pre_request(p, b);
            }
        });
        if let Some(shadow) = &rollout.shadow {
            self.start_shadow(&active, shadow, &headers, end_of_stream);
        }
        let set_cookie = match (&rollout.sticky, decision.new_sticky_key) {
            (Some(s), Some(key)) => Some(set_cookie_value(&s.name, &key, s.cookie_max_age_s)),
            _ => None,
        };
        self.chosen = Some(Chosen {
            arm: decision.arm,
            bucket,
            pre_arm,
            started_us: self.host.now_us(),
            set_cookie,
        });
    }

    /// Removes every header a client may not set, from the header map read once. The routing
    /// header is left to `set_header`, which replaces whatever the client sent.
    fn strip_client_headers(&self, rollout: &Rollout, serialized: &[u8]) {
        for (name, _) in pairs(serialized) {
            if must_strip(rollout, name)
                && !name.eq_ignore_ascii_case(rollout.routing_header.as_bytes())
            {
                if let Ok(name) = std::str::from_utf8(name) {
                    self.host.set_header(Map::Request, name, None);
                }
            }
        }
    }

    /// Decides whether this request is shadowed and starts it: mirror mode sets the header Envoy's
    /// mirror policy routes on; compare mode opens a copy in the book.
    fn start_shadow(
        &mut self,
        active: &Active,
        shadow: &Shadow,
        request_headers: &RequestHeaders,
        end_of_stream: bool,
    ) {
        let header = |name: &str| request_headers.get(&self.host, &active.rollout, name);
        let method = header(":method").unwrap_or_default();
        let length = header("content-length").and_then(|l| l.trim().parse().ok());
        let draw = self.rng.try_borrow_mut().map_or(1.0, |mut r| r.f64());
        let eligible = eligibility(shadow, &method, length, draw);
        // Under `strip_owned` a client's own mirror header is still the filter's to remove, and
        // so is the copy marker on a primary: a model may skip side effects for a marked copy.
        if matches!(request_headers, RequestHeaders::Each) {
            match shadow.mode {
                ShadowMode::Mirror if eligible != Eligibility::Yes => {
                    self.host.set_header(Map::Request, MIRROR_HEADER, None)
                }
                ShadowMode::Mirror => {}
                ShadowMode::Compare => {
                    self.host
                        .set_header(Map::Request, &shadow.marker_header, None)
                }
            }
        }
        // Compare mode copies the request's headers: the whole map, read once here if not yet.
        let read_now;
        let serialized: &[u8] = match request_headers {
            RequestHeaders::Map(s) => s,
            RequestHeaders::Each
                if eligible == Eligibility::Yes && shadow.mode != ShadowMode::Mirror =>
            {
                read_now = self.host.request_header_pairs().unwrap_or_default();
                &read_now
            }
            RequestHeaders::Each => &[],
        };
        match eligible {
            Eligibility::No => {}
            Eligibility::BodyTooLarge => active.shadow_count(|t| t.skipped_body += 1),
            Eligibility::Yes if shadow.mode == ShadowMode::Mirror => {
                self.host
                    .set_header(Map::Request, MIRROR_HEADER, Some(&shadow.cluster));
                active.shadow_count(|t| t.mirrored += 1);
            }
            Eligibility::Yes => {
                let Some(Ok(mut st)) = active.shadow.as_ref().map(RefCell::try_borrow_mut) else {
                    return;
                };
                let mut headers: Vec<(String, String)> = pairs(serialized)
                    .filter_map(|(k, v)| {
                        let k = std::str::from_utf8(k).ok()?;
                        copy_header(k)
                            .then(|| (k.to_owned(), String::from_utf8_lossy(v).into_owned()))
                    })
                    .collect();
                headers.push((":authority".to_owned(), shadow.authority.clone()));
                headers.push((shadow.marker_header.clone(), "1".to_owned()));
                let id = st.next_id;
                st.next_id += 1;
                let request_id = header("x-request-id").unwrap_or_else(|| format!("local-{id}"));
                if st
                    .book
                    .open(id, request_id, headers, self.host.now_us() / 1000)
                    .is_err()
                {
                    st.totals.dropped += 1;
                    return;
                }
                if end_of_stream {
                    hand_off(&self.host, &mut st, id);
                }
                self.shadow = Some(ShadowCopy {
                    id,
                    request_open: !end_of_stream,
                    primary: None,
                    body: Vec::new(),
                });
            }
        }
    }

    pub fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) {
        let (Some(active), Some(copy)) = (self.active.clone(), self.shadow.as_mut()) else {
            return;
        };
        if !copy.request_open {
            return;
        }
        let (Some(state), Some(shadow)) = (&active.shadow, &active.rollout.shadow) else {
            return;
        };
        // Read as the chunks pass (Continue), so the primary is never held back for the copy.
        let chunk = self
            .host
            .body(Body::Request, 0, body_size)
            .unwrap_or_default();
        let Ok(mut st) = state.try_borrow_mut() else {
            return;
        };
        if !st.book.append_body(copy.id, &chunk, shadow.max_body_bytes) {
            st.totals.skipped_body += 1;
            self.shadow = None;
        } else if end_of_stream {
            copy.request_open = false;
            hand_off(&self.host, &mut st, copy.id);
        }
    }

    pub fn on_response_headers(&mut self, end_of_stream: bool) {
        self.response_headers();
        if end_of_stream {
            self.finish_primary();
        }
    }

    pub fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) {
        let Some(copy) = self.shadow.as_mut() else {
            return;
        };
        let limit = self
            .active
            .as_ref()
            .and_then(|a| a.rollout.shadow.as_ref())
            .filter(|s| s.json_pointer.is_some())
            .map_or(0, |s| s.max_body_bytes);
        if copy.primary.is_some() && copy.body.len() < limit {
            if let Some(chunk) = self.host.body(Body::Response, 0, body_size) {
                let room = limit - copy.body.len();
                copy.body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
        }
        if end_of_stream {
            self.finish_primary();
        }
    }

    fn response_headers(&mut self) {
        let (Some(active), Some(chosen)) = (self.active.clone(), self.chosen.take()) else {
            return;
        };
        let status = self
            .host
            .header(Map::Response, ":status")
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u32>().ok());
        // One clock read per response serves the tally, the shadow and the bandit.
        let elapsed_us = self.host.now_us().saturating_sub(chosen.started_us);
        if let Some(class) = status.and_then(class_index) {
            active.count(|t| {
                t.add_response(chosen.arm, class, elapsed_us, chosen.bucket);
                if let (3, Some(p), Some(b)) = (class, chosen.pre_arm, chosen.bucket) {
                    t.add_pre_error(p, b);
                }
            });
        }
        // Envoy's own replies (a fault, no route, no upstream) are 4xx/5xx without the router's
        // upstream-time header: the model never saw the request. One more header read, on
        // errors only, keeps the healthy path's cost.
        if status.is_some_and(|s| (400..600).contains(&s))
            && self
                .host
                .header(Map::Response, crate::shadow::UPSTREAM_TIME_HEADER)
                .is_none()
        {
            active.count(|t| t.add_local_reply(chosen.arm));
        }
        if let Some(copy) = self.shadow.as_mut() {
            copy.primary = Some((status, elapsed_us / 1000));
        }
        let rollout = &active.rollout;
        if let (Some(state), Some(b)) = (&active.bandit, &rollout.bandit) {
            let reward = match &b.reward {
                Reward::Header(name) => {
                    let value = self.host.header(Map::Response, name);
                    self.host.set_header(Map::Response, name, None);
                    value.map_or(0.0, |v| Reward::parse_header_value(&v))
                }
                other => other
                    .from_status_and_latency(status.unwrap_or(0), elapsed_us / 1000)
                    .unwrap_or(0.0),
            };
            if let Ok(mut counts) = state.counts.try_borrow_mut() {
                counts.record(chosen.arm, reward);
            }
        }
        let arm = rollout.arms.get(chosen.arm);
        // In a pre-period the decision id names the arm the experiment will give the user, so
        // the feedback posted for it becomes that arm's covariate (`.pre`), not its reward.
        let decided = chosen.pre_arm.and_then(|p| rollout.arms.get(p)).or(arm);
        if let (Some(header), Some(arm)) = (&rollout.response_header, arm) {
            self.host.set_header(Map::Response, header, Some(&arm.name));
        }
        if let Some(cookie) = chosen.set_cookie {
            self.host.add_header(Map::Response, "set-cookie", &cookie);
        }
        if let (Some(header), Some(arm)) = (&rollout.decision_header, decided) {
            let random = self.rng.try_borrow_mut().map_or(0, |mut r| r.u64(..));
            // Without a bucket the id's top bits stay random, as the controller reads them.
            let id = chosen
                .bucket
                .map_or(random, |b| ramp_protocol::decision::with_bucket(random, b));
            let mut decision = ramp_protocol::decision::format_decision(&arm.name, id);
            if chosen.pre_arm.is_some() {
                decision.push_str(ramp_protocol::decision::PRE_PERIOD_SUFFIX);
            }
            self.host.set_header(Map::Response, header, Some(&decision));
        }
    }

    /// The primary's answer is complete: report it to the book, which pairs it when the shadow's
    /// is in.
    fn finish_primary(&mut self) {
        let Some(active) = self.active.clone() else {
            return;
        };
        let (Some(state), Some(shadow)) = (&active.shadow, &active.rollout.shadow) else {
            return;
        };
        let Some(copy) = self.shadow.take() else {
            return;
        };
        let Some((status, latency_ms)) = copy.primary else {
            return;
        };
        let Ok(mut st) = state.try_borrow_mut() else {
            return;
        };
        if copy.request_open {
            // The primary answered before the request body ended; the copy was never sent.
            st.book.abandon(copy.id);
            return;
        }
        let value = shadow
            .json_pointer
            .as_deref()
            .and_then(|p| pick(&copy.body, p));
        let seen = Observed {
            status,
            latency_ms,
            value,
            failure: None,
        };
        if let Some(pair) = st.book.primary_done(copy.id, seen) {
            super::record_pair(&active.rollout.name, &mut st, &pair);
        }
    }
}
