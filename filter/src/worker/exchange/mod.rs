//! The request path: one [`Exchange`] per HTTP request. It reads the request's headers once,
//! picks the arm, sets the routing headers, and on the response counts the outcome into the
//! worker's tally (no host call per counter: they are flushed on tick). Never panics; any
//! internal fault sends the request to the baseline arm. The request's headers are read as
//! `headers` says, its shadow is `copy`'s, and the response side is `response`.

mod copy;
mod headers;
mod response;

use std::cell::RefCell;
use std::rc::Rc;

use fastrand::Rng;

use self::copy::ShadowCopy;
use self::headers::{sticky_key, strip_client_headers, RequestHeaders};
use super::Active;
use crate::bandit::Evidence;
use crate::config::ClientHeaders;
use crate::host::{Body, Host, Map};
use crate::request::set_cookie_value;
use crate::select::{choose, Decision, Reason, RequestKeys};
use crate::stream::Watch;

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

pub struct Exchange<H: Host> {
    host: H,
    active: Option<Rc<Active>>,
    rng: Rc<RefCell<Rng>>,
    chosen: Option<Chosen>,
    shadow: Option<ShadowCopy>,
    /// The response body being watched (config `stream`).
    watch: Option<Watch>,
}

impl<H: Host> Drop for Exchange<H> {
    fn drop(&mut self) {
        self.abandon_copy();
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
            watch: None,
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
                strip_client_headers(&self.host, rollout, &serialized);
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
        let mut decision = match self.rng.try_borrow_mut() {
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
        if let Some(guard) = &active.guard {
            decision.arm = guard.redirect(decision.arm);
        }
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
        // request is the unit and needs none; an empty key is none, as `choose` takes it.
        let key = sticky_key
            .as_deref()
            .filter(|k| !k.is_empty())
            .or(decision.new_sticky_key.as_deref());
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

    pub fn on_response_headers(&mut self, end_of_stream: bool) {
        self.response_headers();
        if end_of_stream {
            // No body: nothing streamed.
            self.watch = None;
            self.finish_primary();
        }
    }

    pub fn on_response_body(&mut self, body_size: usize, end_of_stream: bool) {
        if self.watch.is_some() {
            self.watch_body(body_size, end_of_stream);
        }
        self.shadow_response_body(body_size, end_of_stream);
    }

    /// A chunk of a watched body: its first byte's time, its tail (for `usage`), its end. One
    /// clock read at the first chunk and one at the end; with tokens, one body read per chunk.
    fn watch_body(&mut self, body_size: usize, end_of_stream: bool) {
        let Some(watch) = self.watch.as_mut() else {
            return;
        };
        if watch.first_byte_us.is_none() && body_size > 0 {
            watch.first_byte_us = Some(self.host.now_us());
        }
        if watch.tail.is_some() && body_size > 0 {
            if let Some(chunk) = self.host.body(Body::Response, 0, body_size) {
                watch.push_tail(&chunk);
            }
        }
        if end_of_stream {
            if let (Some(watch), Some(active)) = (self.watch.take(), self.active.as_ref()) {
                let streamed = watch.finish(self.host.now_us());
                active.count(|t| t.add_stream(watch.arm, &streamed));
            }
        }
    }
}
