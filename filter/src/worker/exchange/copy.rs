//! One request's shadow: in mirror mode the header Envoy's mirror policy routes on; in compare
//! mode a copy of the request opened in the worker's book, its body appended as it passes, handed
//! to the root context to send, and the primary's answer reported for pairing.

use std::cell::RefCell;

use super::headers::RequestHeaders;
use super::{Exchange, MIRROR_HEADER};
use crate::config::{Shadow, ShadowMode};
use crate::headermap::pairs;
use crate::host::{Body, Host, Map};
use crate::jsonpick::pick;
use crate::shadow::{copy_header, eligibility, Eligibility, Observed};
use crate::worker::shadow_calls::record_pair;
use crate::worker::{Active, ShadowState};

/// This request's compare-mode copy, by its book id.
pub(super) struct ShadowCopy {
    id: u64,
    /// The request body is still arriving.
    request_open: bool,
    /// The primary's status and latency, once its headers came.
    pub(super) primary: Option<(Option<u32>, u64)>,
    /// The primary's body so far (only when a JSON pointer is compared), up to the body limit.
    body: Vec<u8>,
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
    /// Decides whether this request is shadowed and starts it: mirror mode sets the header Envoy's
    /// mirror policy routes on; compare mode opens a copy in the book.
    pub(super) fn start_shadow(
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

    pub(super) fn shadow_response_body(&mut self, body_size: usize, end_of_stream: bool) {
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

    /// The primary's answer is complete: report it to the book, which pairs it when the shadow's
    /// is in.
    pub(super) fn finish_primary(&mut self) {
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
            record_pair(&active.rollout.name, &mut st, &pair);
        }
    }

    /// A request that ended before its body did will never be sent: free its place at once.
    pub(super) fn abandon_copy(&self) {
        if let (Some(copy), Some(active)) = (&self.shadow, &self.active) {
            if let Some(Ok(mut st)) = active.shadow.as_ref().map(RefCell::try_borrow_mut) {
                st.book.abandon(copy.id);
            }
        }
    }
}
