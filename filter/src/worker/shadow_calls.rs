//! Compare-mode shadow copies as callouts: the copies this worker's HTTP contexts queued are sent
//! from the root context (a callout from an HTTP context would be cancelled when its request
//! ends), and the shadow model's answers are classified and paired with the primary's.

use super::{Active, ShadowState, Worker};
use crate::host::{Body, Callout, Host, Map};
use crate::jsonpick::pick;
use crate::shadow::{
    classify_callout, compare, numeric_pair, record_line, Failure, Observed, Pair,
    UPSTREAM_TIME_HEADER,
};

impl<H: Host + Clone> Worker<H> {
    /// The shadow model's answer to a copy (or Envoy's local reply about it).
    pub(super) fn on_shadow_answer(&self, active: &Active, token: u32, body_size: usize) {
        let (Some(state), Some(shadow)) = (&active.shadow, &active.rollout.shadow) else {
            return;
        };
        let Ok(mut st) = state.try_borrow_mut() else {
            return;
        };
        let Some(i) = st.calls.iter().position(|c| c.0 == token) else {
            return;
        };
        let (_, id, sent_ms) = st.calls.swap_remove(i);
        let latency_ms = self.now_ms().saturating_sub(sent_ms);
        let status = self
            .host
            .header(Map::CalloutResponse, ":status")
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u32>().ok());
        let failure = match status {
            Some(s) if s < 500 => None,
            _ => {
                let from_upstream = self
                    .host
                    .header(Map::CalloutResponse, UPSTREAM_TIME_HEADER)
                    .is_some();
                let start = self
                    .host
                    .body(Body::CalloutResponse, 0, body_size.min(64))
                    .unwrap_or_default();
                classify_callout(
                    status,
                    from_upstream,
                    &start,
                    latency_ms >= shadow.timeout_ms,
                )
            }
        };
        let value = match (failure, shadow.json_pointer.as_deref()) {
            (None, Some(ptr)) => self
                .host
                .body(
                    Body::CalloutResponse,
                    0,
                    body_size.min(shadow.max_body_bytes),
                )
                .and_then(|body| pick(&body, ptr)),
            _ => None,
        };
        let seen = Observed {
            status: if failure.is_some() { None } else { status },
            latency_ms,
            value,
            failure,
        };
        if let Some(pair) = st.book.shadow_done(id, seen) {
            record_pair(&active.rollout.name, &mut st, &pair);
        }
    }

    /// Copies queued by this worker's HTTP contexts: send each as a callout.
    pub fn on_queue_ready(&mut self, queue: u32) {
        let Some(active) = self.active.clone() else {
            return;
        };
        let (Some(state), Some(shadow)) = (&active.shadow, &active.rollout.shadow) else {
            return;
        };
        while let Some(bytes) = self.host.dequeue(queue) {
            let Ok(id) = <[u8; 8]>::try_from(bytes.as_slice()).map(u64::from_le_bytes) else {
                continue;
            };
            let Some((headers, body)) = state
                .try_borrow_mut()
                .ok()
                .and_then(|mut st| st.book.take_request(id))
            else {
                continue;
            };
            let refs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let sent = self.host.dispatch(&Callout {
                cluster: &shadow.cluster,
                headers: &refs,
                body: (!body.is_empty()).then_some(body.as_slice()),
                timeout_ms: shadow.timeout_ms,
            });
            let Ok(mut st) = state.try_borrow_mut() else {
                continue;
            };
            match sent {
                Some(token) => {
                    st.calls.push((token, id, self.now_ms()));
                    st.totals.sent += 1;
                }
                None => {
                    let failed = Observed {
                        status: None,
                        latency_ms: 0,
                        value: None,
                        failure: Some(Failure::Refused),
                    };
                    if let Some(pair) = st.book.shadow_done(id, failed) {
                        record_pair(&active.rollout.name, &mut st, &pair);
                    }
                }
            }
        }
    }
}

/// A completed pair: its log record, the totals and the prediction sums.
pub(super) fn record_pair(rollout: &str, st: &mut ShadowState, pair: &Pair) {
    let c = compare(pair);
    st.totals.add(pair, &c);
    if let (Some(m), Some((x, y))) = (st.moments.as_mut(), numeric_pair(pair)) {
        m.pending.add_pair(x, y);
    }
    log::info!("{}", record_line(rollout, pair, &c));
}
