//! The proxy-wasm glue: reads the host's config and request, calls the pure library, writes headers
//! and metrics back. Kept thin; nothing here may panic (a panic traps the VM for the whole worker).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fastrand::Rng;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

use crate::config::{KeySource, Reward, Rollout, Shadow, ShadowMode};
use crate::counters::{shared_key, ArmCounts, WorkerCounts, CREATE_ONLY_CAS};
use crate::headermap::{find, pairs};
use crate::jsonpick::pick;
use crate::live::{lease_key, state_key, Lease, LiveState};
use crate::metrics::{all_arm_stat_names, class_index, fail_open_stat_name, PendingCounts};
use crate::report::{
    add_le_u64s, counts_key, decode_le_u64s, instance_key, report_json, shadow_key, ArmReport,
};
use crate::request::{cookie_value, must_strip, query_value, set_cookie_value, sticky_source};
use crate::select::{choose, Reason, RequestKeys};
use crate::shadow::{
    compare, copy_header, eligibility, record_line, Book, Eligibility, Observed, Pair, Totals,
    TOTAL_NAMES,
};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("ramp: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(RampRoot::default()) });
}}

/// Metric ids of one arm, as the host returned them.
struct ArmMetrics {
    requests: u32,
    responses: [u32; 4],
    latency_ms: u32,
    /// Bandit gauges (trials, reward sum in millionths, recent share in ppm), when the bandit is on.
    bandit: Option<[u32; 3]>,
}

/// This worker's side of the live-state channel.
struct LiveLink {
    lease_key: String,
    state_key: String,
    /// CAS of the state document last applied, so an unchanged document is not parsed again.
    applied: Cell<Option<u32>>,
    ticks: Cell<u64>,
    /// The poll in flight, if this worker holds the lease.
    call: Cell<Option<u32>>,
    /// The version of the last state polled, sent with the next poll so the controller can hold
    /// it open until the state changes (long poll).
    known_version: Cell<Option<u64>>,
    /// When the next poll may start (ms): a poll period after the previous one started, or at
    /// once after an answer that brought a new version.
    next_poll_ms: Cell<u64>,
    /// The report in flight.
    report_call: Cell<Option<u32>>,
    /// This worker's counts not yet added into shared data, per arm.
    report_pending: RefCell<Vec<ArmReport>>,
    counts_keys: Vec<String>,
    instance_key: String,
    /// `Authorization` value of the reports, when `controller.token_env` names a token.
    report_auth: Option<String>,
    /// Shadow comparison totals of this worker not yet in shared data (empty: compare mode is off).
    shadow_pending: RefCell<Vec<u64>>,
    shadow_key: String,
}

/// Adds `delta` into the u64 array under `key` in shared data (bounded read-modify-CAS loop) and
/// returns the new total; `None` when it could not (contention, foreign bytes under our key): the
/// caller keeps the delta for the next tick, so nothing is lost or counted twice.
fn cas_add(key: &str, delta: &[u64]) -> Option<Vec<u8>> {
    for _ in 0..8 {
        let (stored, cas) = hostcalls::get_shared_data(key).ok()?;
        let Some(total) = add_le_u64s(stored.as_deref(), delta) else {
            log(
                LogLevel::Warn,
                &format!("ramp: shared data {key:?} holds foreign bytes; not merging"),
            );
            return None;
        };
        match hostcalls::set_shared_data(key, Some(&total), Some(cas.unwrap_or(CREATE_ONLY_CAS))) {
            Ok(()) => return Some(total),
            Err(Status::CasMismatch) => continue,
            Err(_) => return None,
        }
    }
    None
}

impl LiveLink {
    /// Adds this worker's report counts (and shadow totals) into the per-Envoy totals in shared
    /// data, keeping what could not be written, as for the bandit counters.
    fn flush_report_counts(&self) {
        if let Ok(mut pending) = self.report_pending.try_borrow_mut() {
            for (delta, key) in pending.iter_mut().zip(&self.counts_keys) {
                if !delta.is_zero() && cas_add(key, delta.slots()).is_some() {
                    *delta = ArmReport::default();
                }
            }
        }
        if let Ok(mut shadow) = self.shadow_pending.try_borrow_mut() {
            if shadow.iter().any(|&v| v > 0) && cas_add(&self.shadow_key, &shadow).is_some() {
                shadow.iter_mut().for_each(|v| *v = 0);
            }
        }
    }

    /// This Envoy's id for reports: made once by whichever worker gets there first.
    fn instance(&self, rng_value: u64) -> Option<String> {
        if let Ok((Some(id), _)) = hostcalls::get_shared_data(&self.instance_key) {
            return String::from_utf8(id).ok();
        }
        let fresh = format!("{rng_value:016x}");
        let _ = hostcalls::set_shared_data(
            &self.instance_key,
            Some(fresh.as_bytes()),
            Some(CREATE_ONLY_CAS),
        );
        let (id, _) = hostcalls::get_shared_data(&self.instance_key).ok()?;
        String::from_utf8(id?).ok()
    }
}

/// Compare-mode shadow state of one worker: copies in flight, callouts by token, running totals.
struct ShadowState {
    book: Book,
    /// Callouts in flight: (token, book id, when it was sent in ms); at most `max_pending`.
    calls: Vec<(u32, u64, u64)>,
    totals: Totals,
    next_id: u64,
    /// This worker's queue, on which HTTP contexts hand copies to the root context to send.
    queue: Option<u32>,
    /// Envoy counter ids, in the order of `shadow::TOTAL_NAMES`.
    metrics: Vec<u32>,
}

/// The bandit's per-worker state: counts, and the shared-data key of each arm.
struct BanditState {
    counts: RefCell<WorkerCounts>,
    keys: Vec<String>,
}

/// How often a worker flushes its counters into Envoy's stats and applies the newest live state:
/// a rollback the poller learned reaches every worker within one tick.
const TICK: Duration = Duration::from_millis(100);
/// Extra time a long poll's callout gets beyond the wait it asked the controller for.
const POLL_SLACK: Duration = Duration::from_secs(2);

/// What a worker's HTTP contexts share: the active config, its metrics and the live weights.
struct Active {
    rollout: Rollout,
    /// The static config's weights until the controller's live state replaces them.
    weights: RefCell<Vec<f64>>,
    live: Option<LiveLink>,
    metrics: Vec<ArmMetrics>,
    fail_open: u32,
    /// Counts not yet added to Envoy's counters: a hostcall per request and counter costs throughput,
    /// so the worker adds them up and flushes on tick (histogram samples cannot be batched).
    pending: RefCell<PendingCounts>,
    bandit: Option<BanditState>,
    shadow: Option<RefCell<ShadowState>>,
}

impl Active {
    fn count(&self, f: impl FnOnce(&mut PendingCounts)) {
        match self.pending.try_borrow_mut() {
            Ok(mut p) => f(&mut p),
            // Unreachable on one thread, but never worth a panic: the count goes straight to Envoy.
            Err(_) => {
                let mut direct = PendingCounts::new(&self.rollout);
                f(&mut direct);
                direct.flush(&self.metrics, self.fail_open);
            }
        }
    }

    fn flush(&self) {
        if let Ok(mut p) = self.pending.try_borrow_mut() {
            p.flush(&self.metrics, self.fail_open);
        }
        if let Some(b) = &self.bandit {
            if let Ok(mut counts) = b.counts.try_borrow_mut() {
                sync_bandit_counts(&b.keys, &mut counts);
                publish_bandit_gauges(&self.metrics, &mut counts);
            }
        }
        if let Some(state) = &self.shadow {
            if let Ok(mut st) = state.try_borrow_mut() {
                let max_age = self.rollout.shadow.as_ref().map_or(0, |s| s.timeout_ms) + 10_000;
                let expired = st.book.expire(now_ms(), max_age);
                st.totals.unpaired += expired as u64;
                let values = st.totals.take();
                if let Some(Ok(mut pending)) = self
                    .live
                    .as_ref()
                    .map(|l| l.shadow_pending.try_borrow_mut())
                {
                    for (p, v) in pending.iter_mut().zip(values) {
                        *p = p.saturating_add(v);
                    }
                }
                for (id, v) in st.metrics.iter().zip(values) {
                    if v > 0 {
                        let _ = hostcalls::increment_metric(*id, v as i64);
                    }
                }
            }
        }
    }

    fn report(&self, arm: usize, f: impl FnOnce(&mut ArmReport)) {
        if let Some(Ok(mut pending)) = self
            .live
            .as_ref()
            .map(|l| l.report_pending.try_borrow_mut())
        {
            if let Some(r) = pending.get_mut(arm) {
                f(r);
            }
        }
    }

    fn shadow_count(&self, f: impl FnOnce(&mut Totals)) {
        if let Some(Ok(mut st)) = self.shadow.as_ref().map(RefCell::try_borrow_mut) {
            f(&mut st.totals);
        }
    }
}

/// Adds this worker's unflushed bandit trials into shared data and reads back every arm's total.
/// Each arm is a bounded read-modify-CAS loop; a delta that cannot be written (contention, foreign
/// bytes under our key) stays pending for the next tick, so no trial is lost or counted twice.
fn sync_bandit_counts(keys: &[String], counts: &mut WorkerCounts) {
    for (arm, key) in keys.iter().enumerate() {
        let delta = counts.pending(arm);
        if delta.is_zero() {
            if let Some(total) = hostcalls::get_shared_data(key)
                .ok()
                .and_then(|(b, _)| ArmCounts::decode(&b?))
            {
                counts.observed(arm, total);
            }
        } else if let Some(total) = cas_add(key, &delta.slots()).and_then(|t| ArmCounts::decode(&t))
        {
            counts.flushed(arm, delta, total);
        }
    }
}

fn publish_bandit_gauges(metrics: &[ArmMetrics], counts: &mut WorkerCounts) {
    let shares = counts.recent_shares_ppm();
    for (arm, m) in metrics.iter().enumerate() {
        let Some([trials, reward, share]) = m.bandit else {
            continue;
        };
        if let Some(total) = counts.shared().get(arm) {
            let _ = hostcalls::record_metric(trials, total.trials);
            let _ = hostcalls::record_metric(reward, total.reward_micros);
        }
        if let Some(s) = shares.as_ref().and_then(|s| s.get(arm)) {
            let _ = hostcalls::record_metric(share, *s);
        }
    }
}

#[derive(Default)]
struct RampRoot {
    active: Option<Rc<Active>>,
    rng: Option<Rc<RefCell<Rng>>>,
    /// This worker's shadow hand-off queue (registered at VM start).
    queue: Option<u32>,
    /// Random id of this worker VM, for the poller lease.
    worker_id: u64,
}

impl RampRoot {
    /// Takes or renews the per-Envoy poller lease (three poll periods long); true if this worker holds it.
    fn hold_lease(&self, link: &LiveLink, poll_ms: u64) -> bool {
        let Ok((stored, cas)) = hostcalls::get_shared_data(&link.lease_key) else {
            return false;
        };
        let now = now_ms();
        if !Lease::may_take(stored.as_deref(), self.worker_id, now) {
            return false;
        }
        let lease = Lease {
            holder: self.worker_id,
            until_ms: now + 3 * poll_ms,
        };
        let taken = hostcalls::set_shared_data(
            &link.lease_key,
            Some(&lease.encode()),
            Some(cas.unwrap_or(CREATE_ONLY_CAS)),
        )
        .is_ok();
        let previous = stored.as_deref().and_then(Lease::decode).map(|l| l.holder);
        if taken && previous != Some(self.worker_id) {
            log(
                LogLevel::Info,
                &format!(
                    "ramp: worker {:016x} now polls the controller (lease was {previous:x?})",
                    self.worker_id
                ),
            );
        }
        taken
    }

    /// Asks the controller for the live state. With a known version the poll waits up to a poll
    /// period for a change (`version` and `wait_ms`), so a decision reaches this Envoy at once;
    /// a controller that does not wait answers at once, and the next poll starts a period later.
    fn poll_state(
        &self,
        active: &Active,
        link: &LiveLink,
        ctl: &crate::config::Controller,
        now: u64,
    ) {
        // The instance lets the controller leave this Envoy's own bandit counts out.
        let instance = self.instance_id(link).unwrap_or_default();
        let wait = link
            .known_version
            .get()
            .map(|v| format!("&version={v}&wait_ms={}", ctl.poll_ms))
            .unwrap_or_default();
        let path = format!(
            "/v1/rollouts/{}/state?instance={instance}{wait}",
            active.rollout.name
        );
        let headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", ctl.authority.as_str()),
        ];
        link.next_poll_ms.set(now + ctl.poll_ms);
        if let Ok(token) = self.dispatch_http_call(
            &ctl.cluster,
            headers,
            None,
            Vec::new(),
            Duration::from_millis(ctl.poll_ms) + POLL_SLACK,
        ) {
            link.call.set(Some(token));
        }
    }

    /// This Envoy's instance id (see `LiveLink::instance`).
    fn instance_id(&self, link: &LiveLink) -> Option<String> {
        let seed = self
            .rng
            .as_ref()
            .and_then(|r| r.try_borrow_mut().ok().map(|mut r| r.u64(..)))
            .unwrap_or(self.worker_id);
        link.instance(seed)
    }

    /// Posts this Envoy's cumulative counts (all workers, from shared data) to the controller.
    fn send_report(&self, active: &Active, link: &LiveLink, ctl: &crate::config::Controller) {
        let Some(instance) = self.instance_id(link) else {
            return;
        };
        let bandit_keys = active.bandit.as_ref().map(|b| b.keys.as_slice());
        let arms: Vec<(&str, ArmReport, Option<ArmCounts>)> = active
            .rollout
            .arms
            .iter()
            .zip(&link.counts_keys)
            .enumerate()
            .map(|(i, (arm, key))| {
                let total = hostcalls::get_shared_data(key)
                    .ok()
                    .and_then(|(b, _)| ArmReport::decode(&b?));
                // This Envoy's bandit totals (all workers), for the other Envoys' live state.
                let bandit = bandit_keys.and_then(|keys| keys.get(i)).map(|k| {
                    hostcalls::get_shared_data(k)
                        .ok()
                        .and_then(|(b, _)| ArmCounts::decode(&b?))
                        .unwrap_or_default()
                });
                (arm.name.as_str(), total.unwrap_or_default(), bandit)
            })
            .collect();
        let shadow = link
            .shadow_pending
            .try_borrow()
            .is_ok_and(|p| !p.is_empty())
            .then(|| {
                hostcalls::get_shared_data(&link.shadow_key)
                    .ok()
                    .and_then(|(b, _)| b)
                    .map_or(vec![0; TOTAL_NAMES.len()], |b| decode_le_u64s(&b))
            });
        let body = report_json(&instance, now_ms(), &arms, shadow.as_deref());
        let path = format!("/v1/rollouts/{}/reports", active.rollout.name);
        let mut headers = vec![
            (":method", "POST"),
            (":path", path.as_str()),
            (":authority", ctl.authority.as_str()),
            ("content-type", "application/json"),
        ];
        if let Some(auth) = &link.report_auth {
            headers.push(("authorization", auth.as_str()));
        }
        if let Ok(token) = self.dispatch_http_call(
            &ctl.cluster,
            headers,
            Some(body.as_bytes()),
            Vec::new(),
            Duration::from_secs(2),
        ) {
            link.report_call.set(Some(token));
        }
    }

    /// The controller answered a poll: publish a valid, newer state to every worker via shared data.
    fn on_state_polled(&self, active: &Active, link: &LiveLink, body_size: usize) {
        link.call.set(None);
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        if status.as_deref() != Some(b"200") {
            return; // Unreachable or unhappy controller: every worker keeps the state it has.
        }
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        let checked = LiveState::parse(&body).and_then(|d| {
            d.weights_for(&active.rollout)?;
            d.bandit_for(&active.rollout)?;
            Ok(d)
        });
        let doc = match checked {
            Ok(doc) => doc,
            Err(e) => {
                log(
                    LogLevel::Warn,
                    &format!(
                        "ramp: rollout {:?}: {e}; keeping the last good state",
                        active.rollout.name
                    ),
                );
                return;
            }
        };
        if link.known_version.get() != Some(doc.version) {
            // A change answered the long poll early: ask again at once, with the new version.
            link.next_poll_ms.set(0);
        }
        link.known_version.set(Some(doc.version));
        let Ok((stored, cas)) = hostcalls::get_shared_data(&link.state_key) else {
            return;
        };
        let newer = stored
            .as_deref()
            .and_then(|b| LiveState::parse(b).ok())
            // Same version, new content: the fleet's bandit counts moved while the weights did not.
            .is_none_or(|old| {
                doc.version > old.version || (doc.version == old.version && doc != old)
            });
        if newer {
            let _ = hostcalls::set_shared_data(
                &link.state_key,
                Some(&body),
                Some(cas.unwrap_or(CREATE_ONLY_CAS)),
            );
            // This worker need not wait for its tick; the others apply it on theirs.
            apply_live_state(active, link);
        }
    }
}

/// Applies the newest state in shared data to this worker, if it changed since the last tick.
fn apply_live_state(active: &Active, link: &LiveLink) {
    let Ok((Some(bytes), cas)) = hostcalls::get_shared_data(&link.state_key) else {
        return;
    };
    if cas == link.applied.get() {
        return;
    }
    link.applied.set(cas);
    match LiveState::parse(&bytes).and_then(|d| {
        let weights = d.weights_for(&active.rollout)?;
        Ok((d.version, weights, d.bandit_for(&active.rollout)?))
    }) {
        Ok((version, weights, remote)) => {
            if let Some(Ok(mut counts)) = active.bandit.as_ref().map(|b| b.counts.try_borrow_mut())
            {
                counts.set_remote(&remote);
            }
            if let Ok(mut current) = active.weights.try_borrow_mut() {
                if *current != weights {
                    log(
                        LogLevel::Info,
                        &format!(
                            "ramp: rollout {:?}: live state version {version}: weights {weights:?}",
                            active.rollout.name
                        ),
                    );
                }
                *current = weights;
            }
        }
        Err(e) => log(
            LogLevel::Warn,
            &format!(
                "ramp: rollout {:?}: {e}; keeping the last good state",
                active.rollout.name
            ),
        ),
    }
}

impl Context for RampRoot {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        let Some(active) = self.active.clone() else {
            return;
        };
        if let Some(link) = active.live.as_ref().filter(|l| l.call.get() == Some(token)) {
            self.on_state_polled(&active, link, body_size);
            return;
        }
        if let Some(link) = active
            .live
            .as_ref()
            .filter(|l| l.report_call.get() == Some(token))
        {
            // A lost report is made up by the next one: totals are cumulative.
            link.report_call.set(None);
            return;
        }
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
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u32>().ok());
        let value = shadow.json_pointer.as_deref().and_then(|ptr| {
            let body = self.get_http_call_response_body(0, body_size.min(shadow.max_body_bytes))?;
            pick(&body, ptr)
        });
        let seen = Observed {
            status,
            latency_ms: now_ms().saturating_sub(sent_ms),
            value,
        };
        if let Some(pair) = st.book.shadow_done(id, seen) {
            record_pair(&active.rollout.name, &mut st.totals, &pair);
        }
    }
}

/// Request header that selects the mirror cluster in Envoy's `request_mirror_policies`.
const MIRROR_HEADER: &str = "x-ramp-shadow";

/// Hands a complete copy to this worker's root context, which sends it from `on_queue_ready`.
fn hand_off(st: &mut ShadowState, id: u64) {
    let queued = st
        .queue
        .is_some_and(|q| hostcalls::enqueue_shared_queue(q, Some(&id.to_le_bytes())).is_ok());
    if !queued {
        st.book.take_request(id);
        st.totals.dropped += 1;
    }
}

/// A completed pair: its log record and the totals.
fn record_pair(rollout: &str, totals: &mut Totals, pair: &Pair) {
    let c = compare(pair);
    totals.add(pair, &c);
    log(LogLevel::Info, &record_line(rollout, pair, &c));
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

impl RootContext for RampRoot {
    fn on_vm_start(&mut self, _: usize) -> bool {
        let mut rng = Rng::with_seed(host_seed(self.get_current_time()));
        // One queue per worker VM: an HTTP context enqueues a shadow copy, and this worker's root
        // context sends it, so the callout outlives the request (a callout from an HTTP context is
        // cancelled when its request ends).
        self.queue =
            hostcalls::register_shared_queue(&format!("ramp.shadow.{:016x}", rng.u64(..))).ok();
        self.worker_id = rng.u64(1..);
        self.rng = Some(Rc::new(RefCell::new(rng)));
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let Some(active) = self.active.clone() else {
            return;
        };
        let (Some(state), Some(shadow)) = (&active.shadow, &active.rollout.shadow) else {
            return;
        };
        while let Ok(Some(bytes)) = hostcalls::dequeue_shared_queue(queue_id) {
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
            let sent = self.dispatch_http_call(
                &shadow.cluster,
                refs,
                (!body.is_empty()).then_some(body.as_slice()),
                Vec::new(),
                Duration::from_millis(shadow.timeout_ms),
            );
            let Ok(mut st) = state.try_borrow_mut() else {
                continue;
            };
            match sent {
                Ok(token) => {
                    st.calls.push((token, id, now_ms()));
                    st.totals.sent += 1;
                }
                Err(_) => {
                    let failed = Observed {
                        status: None,
                        latency_ms: 0,
                        value: None,
                    };
                    if let Some(pair) = st.book.shadow_done(id, failed) {
                        record_pair(&active.rollout.name, &mut st.totals, &pair);
                    }
                }
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(active) = self.active.clone() else {
            return;
        };
        active.flush();
        if let (Some(link), Some(ctl)) = (&active.live, &active.rollout.controller) {
            link.flush_report_counts();
            apply_live_state(&active, link);
            let ticks = link.ticks.get() + 1;
            link.ticks.set(ticks);
            let every = (ctl.poll_ms / TICK.as_millis() as u64).max(1);
            let report_due = ticks % every == 0;
            let now = now_ms();
            let poll_due = link.call.get().is_none() && now >= link.next_poll_ms.get();
            if !(report_due || poll_due) {
                return;
            }
            if !self.hold_lease(link, ctl.poll_ms) {
                // Another worker polls: look at the lease again a poll period from now, not on
                // every tick.
                link.next_poll_ms.set(now + ctl.poll_ms);
                return;
            }
            if poll_due {
                self.poll_state(&active, link, ctl, now);
            }
            if report_due && link.report_call.get().is_none() {
                self.send_report(&active, link, ctl);
            }
        }
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let rollout = match Rollout::from_json(&bytes) {
            Ok(r) => r,
            Err(e) => {
                // Returning false makes Envoy refuse this config; the previous one (if any) stays.
                log(LogLevel::Error, &format!("ramp: {e}; config refused"));
                return false;
            }
        };
        // The report token comes from the VM's environment (a Secret), not from the config.
        let report_auth = match rollout
            .controller
            .as_ref()
            .and_then(|c| c.token_env.as_ref())
        {
            None => None,
            Some(name) => match std::env::var(name) {
                Ok(token) if !token.is_empty() => Some(format!("Bearer {token}")),
                _ => {
                    log(
                        LogLevel::Error,
                        &format!("ramp: invalid ramp config: controller.token_env: {name} is not set in the wasm VM (vm_config.environment_variables); config refused"),
                    );
                    return false;
                }
            },
        };
        match define_metrics(&rollout) {
            Ok((metrics, fail_open)) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "ramp: rollout {:?} configured with {} arms",
                        rollout.name,
                        rollout.arms.len()
                    ),
                );
                if let Some(old) = self.active.take() {
                    old.flush();
                }
                let bandit = rollout.bandit.as_ref().map(|_| BanditState {
                    counts: RefCell::new(WorkerCounts::new(rollout.arms.len())),
                    keys: rollout
                        .arms
                        .iter()
                        .map(|a| shared_key(&rollout.name, &a.name))
                        .collect(),
                });
                let shadow = match (&rollout.shadow, shadow_metrics(&rollout)) {
                    (Some(sh), Ok(metrics)) => Some(RefCell::new(ShadowState {
                        book: Book::new(sh.max_pending),
                        calls: Vec::new(),
                        totals: Totals::default(),
                        next_id: 0,
                        queue: self.queue,
                        metrics,
                    })),
                    _ => None,
                };
                let live = rollout.controller.as_ref().map(|_| LiveLink {
                    lease_key: lease_key(&rollout.name),
                    state_key: state_key(&rollout.name),
                    applied: Cell::new(None),
                    ticks: Cell::new(0),
                    call: Cell::new(None),
                    known_version: Cell::new(None),
                    next_poll_ms: Cell::new(0),
                    report_call: Cell::new(None),
                    report_pending: RefCell::new(vec![ArmReport::default(); rollout.arms.len()]),
                    counts_keys: rollout
                        .arms
                        .iter()
                        .map(|a| counts_key(&rollout.name, &a.name))
                        .collect(),
                    instance_key: instance_key(&rollout.name),
                    report_auth: report_auth.clone(),
                    shadow_pending: RefCell::new(
                        if rollout
                            .shadow
                            .as_ref()
                            .is_some_and(|s| s.mode == ShadowMode::Compare)
                        {
                            vec![0; TOTAL_NAMES.len()]
                        } else {
                            Vec::new()
                        },
                    ),
                    shadow_key: shadow_key(&rollout.name),
                });
                self.active = Some(Rc::new(Active {
                    weights: RefCell::new(rollout.weights()),
                    live,
                    pending: RefCell::new(PendingCounts::new(&rollout)),
                    bandit,
                    shadow,
                    rollout,
                    metrics,
                    fail_open,
                }));
                self.set_tick_period(TICK);
                true
            }
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("ramp: cannot define metrics: {e:?}; config refused"),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        let rng = self.rng.clone().unwrap_or_else(|| {
            Rc::new(RefCell::new(Rng::with_seed(host_seed(
                self.get_current_time(),
            ))))
        });
        Some(Box::new(RampHttp {
            active: self.active.clone(),
            rng,
            chosen: None,
            shadow: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

fn shadow_metrics(rollout: &Rollout) -> Result<Vec<u32>, proxy_wasm::types::Status> {
    TOTAL_NAMES
        .iter()
        .map(|n| {
            hostcalls::define_metric(
                MetricType::Counter,
                &format!("ramp.rollout.{}.shadow.{n}", rollout.name),
            )
        })
        .collect()
}

fn define_metrics(rollout: &Rollout) -> Result<(Vec<ArmMetrics>, u32), proxy_wasm::types::Status> {
    let mut out = Vec::with_capacity(rollout.arms.len());
    for names in all_arm_stat_names(rollout) {
        let mut responses = [0u32; 4];
        for (slot, name) in responses.iter_mut().zip(&names.responses) {
            *slot = hostcalls::define_metric(MetricType::Counter, name)?;
        }
        let bandit = match rollout.bandit {
            Some(_) => Some([
                hostcalls::define_metric(MetricType::Gauge, &names.bandit_trials)?,
                hostcalls::define_metric(MetricType::Gauge, &names.bandit_reward_micros)?,
                hostcalls::define_metric(MetricType::Gauge, &names.bandit_share_ppm)?,
            ]),
            None => None,
        };
        out.push(ArmMetrics {
            requests: hostcalls::define_metric(MetricType::Counter, &names.requests)?,
            responses,
            latency_ms: hostcalls::define_metric(MetricType::Histogram, &names.latency_ms)?,
            bandit,
        });
    }
    let fail_open =
        hostcalls::define_metric(MetricType::Counter, &fail_open_stat_name(&rollout.name))?;
    Ok((out, fail_open))
}

/// The arm a request went to, kept for the response side.
struct Chosen {
    arm: usize,
    started: SystemTime,
    set_cookie: Option<String>,
}

struct RampHttp {
    active: Option<Rc<Active>>,
    rng: Rc<RefCell<Rng>>,
    chosen: Option<Chosen>,
    shadow: Option<ShadowCopy>,
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

impl Context for RampHttp {}

impl Drop for RampHttp {
    fn drop(&mut self) {
        // A request that ended before its body did will never be sent: free its place at once.
        if let (Some(copy), Some(active)) = (&self.shadow, &self.active) {
            if let Some(Ok(mut st)) = active.shadow.as_ref().map(RefCell::try_borrow_mut) {
                st.book.abandon(copy.id);
            }
        }
    }
}

impl RampHttp {
    fn sticky_key(rollout: &Rollout, serialized: &[u8]) -> Option<String> {
        let (source, name) = sticky_source(rollout)?;
        match source {
            KeySource::Header => request_header(rollout, serialized, name),
            KeySource::Cookie => {
                cookie_value(&request_header(rollout, serialized, "cookie")?, name)
                    .map(str::to_owned)
            }
            KeySource::Query => {
                query_value(&request_header(rollout, serialized, ":path")?, name).map(str::to_owned)
            }
        }
    }

    /// Decides whether this request is shadowed and starts it: mirror mode sets the header Envoy's
    /// mirror policy routes on; compare mode opens a copy in the book.
    fn start_shadow(
        &mut self,
        active: &Active,
        shadow: &Shadow,
        serialized: &[u8],
        end_of_stream: bool,
    ) {
        let header = |name: &str| request_header(&active.rollout, serialized, name);
        let method = header(":method").unwrap_or_default();
        let length = header("content-length").and_then(|l| l.trim().parse().ok());
        let draw = self.rng.try_borrow_mut().map_or(1.0, |mut r| r.f64());
        match eligibility(shadow, &method, length, draw) {
            Eligibility::No => {}
            Eligibility::BodyTooLarge => active.shadow_count(|t| t.skipped_body += 1),
            Eligibility::Yes if shadow.mode == ShadowMode::Mirror => {
                self.set_http_request_header(MIRROR_HEADER, Some(&shadow.cluster));
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
                if st.book.open(id, request_id, headers, now_ms()).is_err() {
                    st.totals.dropped += 1;
                    return;
                }
                if end_of_stream {
                    hand_off(&mut st, id);
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

    /// The primary's answer is complete: report it to the book, which pairs it when the shadow's is in.
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
        if copy.request_open {
            // The primary answered before the request body ended; the copy was never sent.
            if let Ok(mut st) = state.try_borrow_mut() {
                st.book.abandon(copy.id);
            }
            return;
        }
        let value = shadow
            .json_pointer
            .as_deref()
            .and_then(|p| pick(&copy.body, p));
        let Ok(mut st) = state.try_borrow_mut() else {
            return;
        };
        if let Some(pair) = st.book.primary_done(
            copy.id,
            Observed {
                status,
                latency_ms,
                value,
            },
        ) {
            record_pair(&active.rollout.name, &mut st.totals, &pair);
        }
    }

    /// Removes every header a client may not set, from the host's header map read once.
    fn strip_client_headers(&self, rollout: &Rollout, serialized: &[u8]) {
        let doomed: Vec<&[u8]> = pairs(serialized)
            .map(|(name, _)| name)
            .filter(|name| must_strip(rollout, name))
            .collect();
        for name in doomed {
            if let Ok(name) = std::str::from_utf8(name) {
                self.set_http_request_header(name, None);
            }
        }
    }
}

/// A request header as text, from the header map read once per request (no hostcall). Headers
/// the filter strips count as absent. Several values (HTTP/2 may split `cookie`) are joined with
/// "; ". Lossy UTF-8: the SDK's own getter panics on a value that is not UTF-8, which any client can
/// send; the lossy form stays deterministic, so such a sticky key still maps to one arm everywhere.
fn request_header(rollout: &Rollout, serialized: &[u8], name: &str) -> Option<String> {
    if must_strip(rollout, name.as_bytes()) {
        return None;
    }
    let mut values = find(serialized, name).map(String::from_utf8_lossy);
    let first = values.next()?.into_owned();
    Some(values.fold(first, |acc, v| acc + "; " + &v))
}

#[link(wasm_import_module = "env")]
extern "C" {
    // Declared here with plain integers (the SDK's version returns an enum, and a value outside it
    // would be undefined behaviour) so the serialized map can be read without the SDK's decoder.
    #[link_name = "proxy_get_header_map_pairs"]
    fn raw_get_header_map_pairs(map_type: u32, data: *mut *mut u8, size: *mut usize) -> u32;
}

/// The request's headers, serialized as the ABI lays them out (see [`crate::headermap`]).
fn raw_request_header_pairs() -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host fills `data`/`size` with a buffer it allocated through this module's
    // `proxy_on_memory_allocate` (the SDK's allocator, a `Vec<u8>` of exactly `size` bytes), which we
    // take ownership of here, as the SDK's own `get_map` does. Status 0 is `Ok`.
    unsafe {
        let status =
            raw_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size);
        if status != 0 || data.is_null() {
            return None;
        }
        Some(Vec::from_raw_parts(data, size, size))
    }
}

impl HttpContext for RampHttp {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let Some(active) = self.active.clone() else {
            return Action::Continue;
        };
        let rollout = &active.rollout;
        let serialized = raw_request_header_pairs().unwrap_or_default();
        self.strip_client_headers(rollout, &serialized);
        let override_value = rollout
            .override_
            .as_ref()
            .and_then(|o| request_header(rollout, &serialized, &o.header));
        let sticky_key = Self::sticky_key(rollout, &serialized);
        let keys = RequestKeys {
            override_value: override_value.as_deref(),
            sticky_key: sticky_key.as_deref(),
        };
        let counts = active
            .bandit
            .as_ref()
            .and_then(|b| b.counts.try_borrow().ok());
        let view = counts.as_ref().map_or(&[][..], |c| c.view());
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
            Ok(mut rng) => choose(rollout, weights, view, keys, &mut rng),
            Err(_) => {
                active.count(|p| p.fail_open += 1);
                crate::select::Decision {
                    arm: rollout.baseline,
                    reason: Reason::Baseline,
                    new_sticky_key: None,
                }
            }
        };
        drop(counts);
        let Some(arm) = rollout.arms.get(decision.arm) else {
            return Action::Continue;
        };
        self.set_http_request_header(&rollout.routing_header, Some(&arm.name));
        if let Some(cluster) = &arm.cluster {
            self.set_http_request_header(&rollout.cluster_header, Some(cluster));
        }
        active.count(|p| p.add_request(decision.arm));
        active.report(decision.arm, ArmReport::add_request);
        if let Some(shadow) = &rollout.shadow {
            self.start_shadow(&active, shadow, &serialized, end_of_stream);
        }
        let set_cookie = match (&rollout.sticky, decision.new_sticky_key) {
            (Some(s), Some(key)) => Some(set_cookie_value(&s.name, &key, s.cookie_max_age_s)),
            _ => None,
        };
        self.chosen = Some(Chosen {
            arm: decision.arm,
            started: self.get_current_time(),
            set_cookie,
        });
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(active), Some(copy)) = (self.active.clone(), self.shadow.as_mut()) else {
            return Action::Continue;
        };
        if !copy.request_open {
            return Action::Continue;
        }
        let (Some(state), Some(shadow)) = (&active.shadow, &active.rollout.shadow) else {
            return Action::Continue;
        };
        // Read as the chunks pass (Continue), so the primary is never held back for the copy.
        let chunk = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let Ok(mut st) = state.try_borrow_mut() else {
            return Action::Continue;
        };
        if !st.book.append_body(copy.id, &chunk, shadow.max_body_bytes) {
            st.totals.skipped_body += 1;
            self.shadow = None;
        } else if end_of_stream {
            copy.request_open = false;
            hand_off(&mut st, copy.id);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(copy) = self.shadow.as_mut() else {
            return Action::Continue;
        };
        let limit = self
            .active
            .as_ref()
            .and_then(|a| a.rollout.shadow.as_ref())
            .map_or(0, |s| s.max_body_bytes);
        if copy.primary.is_some() && copy.body.len() < limit {
            if let Ok(Some(chunk)) =
                hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
            {
                let room = limit - copy.body.len();
                copy.body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
        }
        if end_of_stream {
            self.finish_primary();
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let action = self.response_headers();
        if end_of_stream {
            self.finish_primary();
        }
        action
    }
}

impl RampHttp {
    fn response_headers(&mut self) -> Action {
        let (Some(active), Some(chosen)) = (self.active.as_ref(), self.chosen.take()) else {
            return Action::Continue;
        };
        if let Some(m) = active.metrics.get(chosen.arm) {
            let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
                .ok()
                .flatten()
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u32>().ok());
            let class = status.and_then(class_index);
            if let Some(class) = class {
                active.count(|p| p.add_response(chosen.arm, class));
            }
            // One clock read per response serves the histogram, the report, the shadow and the bandit.
            let elapsed = self
                .get_current_time()
                .duration_since(chosen.started)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            if let Some(class) = class {
                active.report(chosen.arm, |r| r.add_response(class, elapsed));
            }
            let _ = hostcalls::record_metric(m.latency_ms, elapsed);
            if let Some(copy) = self.shadow.as_mut() {
                copy.primary = Some((status, elapsed));
            }
            if let (Some(state), Some(b)) = (&active.bandit, &active.rollout.bandit) {
                let reward = match &b.reward {
                    Reward::Header(name) => {
                        let value =
                            hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
                                .ok()
                                .flatten();
                        self.set_http_response_header(name, None);
                        value.map_or(0.0, |v| Reward::parse_header_value(&v))
                    }
                    other => other
                        .from_status_and_latency(status.unwrap_or(0), elapsed)
                        .unwrap_or(0.0),
                };
                if let Ok(mut counts) = state.counts.try_borrow_mut() {
                    counts.record(chosen.arm, reward);
                }
            }
        }
        let rollout = &active.rollout;
        if let (Some(header), Some(arm)) = (&rollout.response_header, rollout.arms.get(chosen.arm))
        {
            self.set_http_response_header(header, Some(&arm.name));
        }
        if let Some(cookie) = chosen.set_cookie {
            self.add_http_response_header("set-cookie", &cookie);
        }
        if let (Some(header), Some(arm)) = (&rollout.decision_header, rollout.arms.get(chosen.arm))
        {
            let id = self.rng.try_borrow_mut().map_or(0, |mut r| r.u64(..));
            let decision = ramp_protocol::decision::format_decision(&arm.name, id);
            self.set_http_response_header(header, Some(&decision));
        }
        Action::Continue
    }
}

impl PendingCounts {
    /// Adds the pending counts to Envoy's counters and zeroes them.
    fn flush(&mut self, metrics: &[ArmMetrics], fail_open: u32) {
        for (arm, m) in self.arms.iter_mut().zip(metrics) {
            add_to_counter(m.requests, &mut arm.requests);
            for (count, id) in arm.responses.iter_mut().zip(m.responses) {
                add_to_counter(id, count);
            }
        }
        add_to_counter(fail_open, &mut self.fail_open);
    }
}

fn add_to_counter(id: u32, pending: &mut u64) {
    if *pending > 0 && hostcalls::increment_metric(id, *pending as i64).is_ok() {
        *pending = 0;
    }
}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

/// Seed for this worker's RNG: the host's clock mixed with WASI's random source (through std's
/// RandomState), so two workers started in the same nanosecond still differ.
fn host_seed(now: SystemTime) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(nanos);
    h.finish()
}
