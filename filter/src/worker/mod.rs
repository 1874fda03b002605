//! One worker's orchestration, generic over the [`Host`]: configure, the tick (counters, the
//! poller lease, live-state polls and reports), the controller's answers, shadow callouts. The
//! request path is [`Exchange`]. Nothing here may panic: a panic traps the VM for the whole
//! worker, so every borrow and host error degrades to "keep what we had".

mod exchange;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use fastrand::Rng;

pub use exchange::Exchange;

use crate::config::{Controller, Rollout, ShadowMode};
use crate::counters::{counts_slots, decode_counts, shared_key, WorkerCounts, CREATE_ONLY_CAS};
use crate::discount::Discounted;
use crate::host::{Body, Callout, Host, Map, MetricKind, SetError};
use crate::jsonpick::pick;
use crate::live::{lease_key, parse, state_key, Applied, Lease};
use crate::metrics::{all_arm_stat_names, fail_open_stat_name, Tally};
use crate::report::{
    add_le_u64s, counts_key, decode_le_u64s, instance_key, moments_key, report_json, shadow_key,
    ArmReport,
};
use crate::shadow::{
    classify_callout, compare, decode_moments, encode_moments, moments_json, numeric_pair,
    record_line, Book, Observed, Pair, ShadowMoments, Totals, TOTAL_NAMES, UPSTREAM_TIME_HEADER,
};

/// How often a worker flushes its counters into Envoy's stats and applies the newest live state:
/// a rollback the poller learned reaches every worker within one tick.
pub const TICK_MS: u64 = 100;
/// Extra time a long poll's callout gets beyond the wait it asked the controller for.
const POLL_SLACK_MS: u64 = 2_000;
/// How long a report may take.
const REPORT_TIMEOUT_MS: u64 = 2_000;

/// Metric ids of one arm, as the host returned them.
struct ArmMetrics {
    requests: u32,
    local_replies: u32,
    responses: [u32; 4],
    /// Cumulative latency bucket counters, `le` ascending, `+Inf` last.
    latency_buckets: Vec<u32>,
    /// Bandit gauges (trials, reward sum in millionths, recent share in ppm), when the bandit is on.
    bandit: Option<[u32; 3]>,
}

/// This worker's side of the live-state channel.
struct LiveLink {
    lease_key: String,
    state_key: String,
    /// CAS of the state last applied, so an unchanged state is not decoded again.
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
    /// Counts already in Envoy's counters but not yet added into shared data, per arm.
    unshared: RefCell<Vec<ArmReport>>,
    counts_keys: Vec<String>,
    instance_key: String,
    /// `Authorization` value of the polls and reports, when `controller.token_env` names a token.
    report_auth: Option<String>,
    /// Shadow comparison totals of this worker not yet in shared data (empty: compare mode is off).
    shadow_pending: RefCell<Vec<u64>>,
    shadow_key: String,
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
    /// Exact sums of the numeric prediction pairs not yet in shared data (compare mode with a
    /// JSON pointer), and their Envoy metrics: the maximum |difference| gauge, then one counter per
    /// disagreement threshold.
    moments: Option<MomentsState>,
}

struct MomentsState {
    pending: ShadowMoments,
    key: String,
    max_gauge: u32,
    beyond_counters: Vec<u32>,
}

/// The bandit's per-worker state: counts, and the shared-data key of each arm.
struct BanditState {
    counts: RefCell<WorkerCounts>,
    /// With `bandit.discount` < 1: the factor, and the discounted counts the policy samples,
    /// brought up to `counts` whenever the tick refreshes those (one tick behind at most). A new
    /// config starts them afresh: its first tick takes the history as one evenly spread batch.
    discounted: Option<(f64, RefCell<Discounted>)>,
    keys: Vec<String>,
}

impl BanditState {
    fn refresh_discounted(&self, counts: &WorkerCounts) {
        if let Some((gamma, Ok(mut d))) = self
            .discounted
            .as_ref()
            .map(|(g, d)| (*g, d.try_borrow_mut()))
        {
            d.update(counts.view(), gamma);
        }
    }
}

/// What a worker's HTTP contexts share: the active config, its metrics and the live weights.
struct Active {
    rollout: Rollout,
    /// The static config's weights until the controller's live state replaces them.
    weights: RefCell<Vec<f64>>,
    /// The experiment's weights while an A/B test's pre-period runs, else empty.
    pre_weights: RefCell<Vec<f64>>,
    live: Option<LiveLink>,
    metrics: Vec<ArmMetrics>,
    fail_open: u32,
    /// This tick's counts: a host call per request and counter costs throughput, so the worker
    /// adds them up and flushes them on tick, to Envoy's counters and to the report.
    tally: RefCell<Tally>,
    bandit: Option<BanditState>,
    shadow: Option<RefCell<ShadowState>>,
}

impl Active {
    fn count(&self, f: impl FnOnce(&mut Tally)) {
        if let Ok(mut t) = self.tally.try_borrow_mut() {
            f(&mut t);
        }
    }

    fn shadow_count(&self, f: impl FnOnce(&mut Totals)) {
        if let Some(Ok(mut st)) = self.shadow.as_ref().map(RefCell::try_borrow_mut) {
            f(&mut st.totals);
        }
    }
}

/// One worker VM: its active config, its RNG, its shadow queue and its id for the poller lease.
pub struct Worker<H: Host + Clone> {
    host: H,
    active: Option<Rc<Active>>,
    rng: Rc<RefCell<Rng>>,
    queue: Option<u32>,
    worker_id: u64,
}

/// Adds `delta` into the u64 array under `key` in shared data (bounded read-modify-CAS loop) and
/// returns the new total; `None` when it could not (contention, foreign bytes under our key): the
/// caller keeps the delta for the next tick, so nothing is lost or counted twice.
fn cas_add(host: &impl Host, key: &str, delta: &[u64]) -> Option<Vec<u8>> {
    cas_merge(host, key, |stored| add_le_u64s(stored, delta))
}

/// The bounded read-modify-CAS loop of [`cas_add`], for any merge: `merge` returns the new value
/// from the stored one, or `None` when the stored bytes are not ours.
fn cas_merge(
    host: &impl Host,
    key: &str,
    merge: impl Fn(Option<&[u8]>) -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    for _ in 0..8 {
        let (stored, cas) = host.shared_get(key)?;
        let Some(total) = merge(stored.as_deref()) else {
            log::warn!("ramp: shared data {key:?} holds foreign bytes; not merging");
            return None;
        };
        match host.shared_set(key, &total, cas.unwrap_or(CREATE_ONLY_CAS)) {
            Ok(()) => return Some(total),
            Err(SetError::CasMismatch) => continue,
            Err(SetError::Other) => return None,
        }
    }
    None
}

impl<H: Host + Clone> Worker<H> {
    /// A worker VM starting: `seed` comes from the host's clock and random source.
    pub fn start(host: H, seed: u64) -> Self {
        let mut rng = Rng::with_seed(seed);
        // One queue per worker VM: an HTTP context enqueues a shadow copy, and this worker's root
        // context sends it, so the callout outlives the request (a callout from an HTTP context
        // is cancelled when its request ends).
        let queue = host.register_queue(&format!("ramp.shadow.{:016x}", rng.u64(..)));
        let worker_id = rng.u64(1..);
        Worker {
            host,
            active: None,
            rng: Rc::new(RefCell::new(rng)),
            queue,
            worker_id,
        }
    }

    fn now_ms(&self) -> u64 {
        self.host.now_us() / 1000
    }

    /// The HTTP side of one request.
    pub fn exchange(&self) -> Exchange<H> {
        Exchange::new(self.host.clone(), self.active.clone(), self.rng.clone())
    }

    /// A new plugin config: `true` when it is active; `false` (logged) keeps the previous one.
    pub fn configure(&mut self, bytes: &[u8]) -> bool {
        let rollout = match Rollout::from_json(bytes) {
            Ok(r) => r,
            Err(e) => {
                log::error!("ramp: {e}; config refused");
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
            Some(name) => match self.host.env(name) {
                Some(token) if !token.is_empty() => Some(format!("Bearer {token}")),
                _ => {
                    log::error!("ramp: invalid ramp config: controller.token_env: {name} is not set in the wasm VM (vm_config.environment_variables); config refused");
                    return false;
                }
            },
        };
        let Some((metrics, fail_open)) = self.define_metrics(&rollout) else {
            log::error!("ramp: cannot define metrics; config refused");
            return false;
        };
        log::info!(
            "ramp: rollout {:?} configured with {} arms",
            rollout.name,
            rollout.arms.len()
        );
        if let Some(old) = self.active.take() {
            self.flush(&old);
        }
        let arms = rollout.arms.len();
        let bandit = rollout.bandit.as_ref().map(|b| BanditState {
            counts: RefCell::new(WorkerCounts::new(arms)),
            discounted: (b.discount < 1.0)
                .then(|| (b.discount, RefCell::new(Discounted::new(arms)))),
            keys: rollout
                .arms
                .iter()
                .map(|a| shared_key(&rollout.name, &a.name))
                .collect(),
        });
        let compare = rollout
            .shadow
            .as_ref()
            .is_some_and(|s| s.mode == ShadowMode::Compare);
        let shadow = match (&rollout.shadow, self.shadow_metrics(&rollout)) {
            (Some(sh), Some(metrics)) => Some(RefCell::new(ShadowState {
                book: Book::new(sh.max_pending),
                calls: Vec::new(),
                totals: Totals::default(),
                next_id: 0,
                queue: self.queue,
                metrics,
                moments: self.moments_state(&rollout),
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
            unshared: RefCell::new(vec![ArmReport::default(); arms]),
            counts_keys: rollout
                .arms
                .iter()
                .map(|a| counts_key(&rollout.name, &a.name))
                .collect(),
            instance_key: instance_key(&rollout.name),
            report_auth,
            shadow_pending: RefCell::new(if compare {
                vec![0; TOTAL_NAMES.len()]
            } else {
                Vec::new()
            }),
            shadow_key: shadow_key(&rollout.name),
        });
        self.active = Some(Rc::new(Active {
            weights: RefCell::new(rollout.weights()),
            pre_weights: RefCell::new(Vec::new()),
            live,
            tally: RefCell::new(Tally::new(arms)),
            bandit,
            shadow,
            rollout,
            metrics,
            fail_open,
        }));
        true
    }

    fn define_metrics(&self, rollout: &Rollout) -> Option<(Vec<ArmMetrics>, u32)> {
        let counter = |name: &str| self.host.define_metric(MetricKind::Counter, name);
        let gauge = |name: &str| self.host.define_metric(MetricKind::Gauge, name);
        let mut out = Vec::with_capacity(rollout.arms.len());
        for names in all_arm_stat_names(rollout) {
            let mut responses = [0u32; 4];
            for (slot, name) in responses.iter_mut().zip(&names.responses) {
                *slot = counter(name)?;
            }
            let bandit = match rollout.bandit {
                Some(_) => Some([
                    counter(&names.bandit_trials)?,
                    counter(&names.bandit_reward_millionths)?,
                    gauge(&names.bandit_share_parts_per_million)?,
                ]),
                None => None,
            };
            out.push(ArmMetrics {
                requests: counter(&names.requests)?,
                local_replies: counter(&names.local_replies)?,
                responses,
                latency_buckets: names
                    .latency_buckets
                    .iter()
                    .map(|n| counter(n))
                    .collect::<Option<_>>()?,
                bandit,
            });
        }
        Some((out, counter(&fail_open_stat_name(&rollout.name))?))
    }

    fn shadow_metrics(&self, rollout: &Rollout) -> Option<Vec<u32>> {
        TOTAL_NAMES
            .iter()
            .map(|n| {
                self.host.define_metric(
                    MetricKind::Counter,
                    &crate::metrics::shadow_stat_name(&rollout.name, n),
                )
            })
            .collect()
    }

    /// The exact prediction sums, when compare mode compares values (a JSON pointer).
    fn moments_state(&self, rollout: &Rollout) -> Option<MomentsState> {
        let sh = rollout
            .shadow
            .as_ref()
            .filter(|s| s.mode == ShadowMode::Compare && s.json_pointer.is_some())?;
        let prefix = format!("ramp.rollout.{}.shadow", rollout.name);
        let beyond_counters = sh
            .disagreement_thresholds
            .iter()
            .map(|t| {
                self.host.define_metric(
                    MetricKind::Counter,
                    &format!("{prefix}.beyond_total.gt_{t}"),
                )
            })
            .collect::<Option<_>>()?;
        Some(MomentsState {
            pending: ShadowMoments::with_thresholds(&sh.disagreement_thresholds),
            key: moments_key(&rollout.name),
            max_gauge: self.host.define_metric(
                MetricKind::Gauge,
                &format!("{prefix}.max_abs_diff_millionths"),
            )?,
            beyond_counters,
        })
    }

    /// Adds this worker's prediction sums into shared data (exact: integer sums, the maximum by
    /// max) and shows the Envoy's maximum; what cannot be written waits for the next tick.
    fn flush_moments(&self, m: &mut MomentsState) {
        if m.pending.n == 0 {
            return;
        }
        let thresholds = m.pending.thresholds.clone();
        let merged = cas_merge(&self.host, &m.key, |stored| {
            let mut total = match stored {
                None | Some([]) => ShadowMoments::with_thresholds(&thresholds),
                Some(b) => decode_moments(b, &thresholds)?,
            };
            total.add(&m.pending);
            Some(encode_moments(&total))
        });
        let Some(total) = merged.and_then(|b| decode_moments(&b, &thresholds)) else {
            return;
        };
        for (&id, &n) in m.beyond_counters.iter().zip(&m.pending.beyond) {
            self.add(id, n);
        }
        self.host
            .record_metric(m.max_gauge, total.max_abs_diff_micros);
        m.pending = ShadowMoments::with_thresholds(&thresholds);
    }

    /// Every tick: counters to Envoy and shared data, the newest live state applied, and (on the
    /// worker holding the lease) the poll and the report.
    pub fn tick(&mut self) {
        let Some(active) = self.active.clone() else {
            return;
        };
        self.flush(&active);
        let (Some(link), Some(ctl)) = (&active.live, &active.rollout.controller) else {
            return;
        };
        self.flush_report_counts(link);
        self.apply_live_state(&active, link);
        let ticks = link.ticks.get() + 1;
        link.ticks.set(ticks);
        let every = (ctl.poll_ms / TICK_MS).max(1);
        let report_due = ticks % every == 0;
        let now = self.now_ms();
        let poll_due = link.call.get().is_none() && now >= link.next_poll_ms.get();
        if !(report_due || poll_due) {
            return;
        }
        if !self.hold_lease(link, ctl.poll_ms) {
            // Another worker polls: look at the lease again a poll period from now, not on every
            // tick.
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

    /// This tick's tally into Envoy's counters (and, with a controller, into the counts that go
    /// to shared data for the report); bandit counts and shadow totals likewise.
    fn flush(&self, active: &Active) {
        let tally = match active.tally.try_borrow_mut() {
            Ok(mut t) => t.take(),
            Err(_) => return,
        };
        for (counts, m) in tally.arms.iter().zip(&active.metrics) {
            if counts.is_zero() {
                continue;
            }
            self.add(m.requests, counts.requests());
            self.add(m.local_replies, counts.local_replies());
            for (&id, n) in m.responses.iter().zip(counts.responses()) {
                self.add(id, n);
            }
            for (&id, n) in m.latency_buckets.iter().zip(counts.cumulative_latency()) {
                self.add(id, n);
            }
        }
        self.add(active.fail_open, tally.fail_open);
        if let Some(Ok(mut unshared)) = active.live.as_ref().map(|l| l.unshared.try_borrow_mut()) {
            for (u, counts) in unshared.iter_mut().zip(&tally.arms) {
                u.add(counts);
            }
        }
        if let Some(b) = &active.bandit {
            if let Ok(mut counts) = b.counts.try_borrow_mut() {
                self.sync_bandit_counts(&b.keys, &mut counts, &active.metrics);
                self.publish_bandit_share(&active.metrics, &mut counts);
                b.refresh_discounted(&counts);
            }
        }
        if let Some(state) = &active.shadow {
            if let Ok(mut st) = state.try_borrow_mut() {
                let max_age = active.rollout.shadow.as_ref().map_or(0, |s| s.timeout_ms) + 10_000;
                let expired = st.book.expire(self.now_ms(), max_age);
                st.totals.unpaired += expired as u64;
                let values = st.totals.take();
                if let Some(Ok(mut pending)) = active
                    .live
                    .as_ref()
                    .map(|l| l.shadow_pending.try_borrow_mut())
                {
                    for (p, v) in pending.iter_mut().zip(values) {
                        *p = p.saturating_add(v);
                    }
                }
                for (&id, v) in st.metrics.iter().zip(values) {
                    self.add(id, v);
                }
                if let Some(m) = st.moments.as_mut() {
                    self.flush_moments(m);
                }
            }
        }
    }

    /// Adds `n` to counter `id` (no call for 0). A failed increment is dropped, not retried:
    /// Envoy's counters are the dashboard's; the report path keeps its own copy.
    fn add(&self, id: u32, n: u64) {
        if n > 0 {
            self.host.increment_metric(id, n);
        }
    }

    /// Adds this worker's report counts (and shadow totals) into the per-Envoy totals in shared
    /// data, keeping what could not be written, as for the bandit counters.
    fn flush_report_counts(&self, link: &LiveLink) {
        if let Ok(mut unshared) = link.unshared.try_borrow_mut() {
            for (delta, key) in unshared.iter_mut().zip(&link.counts_keys) {
                if !delta.is_zero() && cas_add(&self.host, key, delta.slots()).is_some() {
                    *delta = ArmReport::default();
                }
            }
        }
        if let Ok(mut shadow) = link.shadow_pending.try_borrow_mut() {
            if shadow.iter().any(|&v| v > 0)
                && cas_add(&self.host, &link.shadow_key, &shadow).is_some()
            {
                shadow.iter_mut().for_each(|v| *v = 0);
            }
        }
    }

    /// Adds this worker's unflushed bandit trials into shared data and reads back every arm's
    /// total. A delta that cannot be written stays pending for the next tick, so no trial is lost
    /// or counted twice.
    /// Adds this worker's pending bandit counts to shared data; what reached it also goes to the
    /// arm's counters (each worker adds its own, so Envoy's sum is the Envoy's total).
    fn sync_bandit_counts(
        &self,
        keys: &[String],
        counts: &mut WorkerCounts,
        metrics: &[ArmMetrics],
    ) {
        for (arm, key) in keys.iter().enumerate() {
            let delta = counts.pending(arm);
            if delta.is_zero() {
                if let Some(total) = self
                    .host
                    .shared_get(key)
                    .and_then(|(b, _)| decode_counts(&b?))
                {
                    counts.observed(arm, total);
                }
            } else if let Some(total) =
                cas_add(&self.host, key, &counts_slots(&delta)).and_then(|t| decode_counts(&t))
            {
                counts.flushed(arm, delta, total);
                if let Some([trials, reward, _]) = metrics.get(arm).and_then(|m| m.bandit) {
                    self.add(trials, delta.trials);
                    self.add(reward, delta.reward_micros);
                }
            }
        }
    }

    fn publish_bandit_share(&self, metrics: &[ArmMetrics], counts: &mut WorkerCounts) {
        let shares = counts.recent_shares_ppm();
        for (arm, m) in metrics.iter().enumerate() {
            let Some([_, _, share]) = m.bandit else {
                continue;
            };
            if let Some(s) = shares.as_ref().and_then(|s| s.get(arm)) {
                self.host.record_metric(share, *s);
            }
        }
    }

    /// Takes or renews the per-Envoy poller lease (three poll periods long); true if this worker
    /// holds it.
    fn hold_lease(&self, link: &LiveLink, poll_ms: u64) -> bool {
        let Some((stored, cas)) = self.host.shared_get(&link.lease_key) else {
            return false;
        };
        let now = self.now_ms();
        if !Lease::may_take(stored.as_deref(), self.worker_id, now) {
            return false;
        }
        let lease = Lease {
            holder: self.worker_id,
            until_ms: now + 3 * poll_ms,
        };
        let taken = self
            .host
            .shared_set(
                &link.lease_key,
                &lease.encode(),
                cas.unwrap_or(CREATE_ONLY_CAS),
            )
            .is_ok();
        let previous = stored.as_deref().and_then(Lease::decode).map(|l| l.holder);
        if taken && previous != Some(self.worker_id) {
            log::info!(
                "ramp: worker {:016x} now polls the controller (lease was {previous:x?})",
                self.worker_id
            );
        }
        taken
    }

    /// Asks the controller for the live state. With a known version the poll waits up to a poll
    /// period for a change (`version` and `wait_ms`), so a decision reaches this Envoy at once;
    /// a controller that does not wait answers at once, and the next poll starts a period later.
    fn poll_state(&self, active: &Active, link: &LiveLink, ctl: &Controller, now: u64) {
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
        link.next_poll_ms.set(now + ctl.poll_ms);
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", ctl.authority.as_str()),
        ];
        // The live state is not public either: the controller asks for the report token.
        if let Some(auth) = &link.report_auth {
            headers.push(("authorization", auth.as_str()));
        }
        let token = self.host.dispatch(&Callout {
            cluster: &ctl.cluster,
            headers: &headers,
            body: None,
            timeout_ms: ctl.poll_ms + POLL_SLACK_MS,
        });
        link.call.set(token);
    }

    /// This Envoy's id for reports: made once by whichever worker gets there first.
    fn instance_id(&self, link: &LiveLink) -> Option<String> {
        if let Some((Some(id), _)) = self.host.shared_get(&link.instance_key) {
            return String::from_utf8(id).ok();
        }
        let seed = self
            .rng
            .try_borrow_mut()
            .map_or(self.worker_id, |mut r| r.u64(..));
        let fresh = format!("{seed:016x}");
        let _ = self
            .host
            .shared_set(&link.instance_key, fresh.as_bytes(), CREATE_ONLY_CAS);
        let (id, _) = self.host.shared_get(&link.instance_key)?;
        String::from_utf8(id?).ok()
    }

    /// Posts this Envoy's cumulative counts (all workers, from shared data) to the controller.
    fn send_report(&self, active: &Active, link: &LiveLink, ctl: &Controller) {
        let Some(instance) = self.instance_id(link) else {
            return;
        };
        let shared = |key: &str| self.host.shared_get(key).and_then(|(b, _)| b);
        let bandit_keys = active.bandit.as_ref().map(|b| b.keys.as_slice());
        let arms: Vec<_> = active
            .rollout
            .arms
            .iter()
            .zip(&link.counts_keys)
            .enumerate()
            .map(|(i, (arm, key))| {
                let total = shared(key).and_then(|b| ArmReport::decode(&b));
                // This Envoy's bandit totals (all workers), for the other Envoys' live state.
                let bandit = bandit_keys.and_then(|keys| keys.get(i)).map(|k| {
                    shared(k)
                        .and_then(|b| decode_counts(&b))
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
                shared(&link.shadow_key).map_or(vec![0; TOTAL_NAMES.len()], |b| decode_le_u64s(&b))
            });
        let moments = active
            .shadow
            .as_ref()
            .and_then(|st| st.try_borrow().ok())
            .and_then(|st| {
                let m = st.moments.as_ref()?;
                let stored = shared(&m.key)?;
                decode_moments(&stored, &m.pending.thresholds)
            })
            .map(|m| moments_json(&m));
        let body = report_json(
            &instance,
            self.now_ms(),
            &arms,
            // The user-level analysis needs buckets only when a user keeps their arm.
            active.rollout.sticky.is_some(),
            shadow.as_deref(),
            moments.as_deref(),
        );
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
        let token = self.host.dispatch(&Callout {
            cluster: &ctl.cluster,
            headers: &headers,
            body: Some(body.as_bytes()),
            timeout_ms: REPORT_TIMEOUT_MS,
        });
        link.report_call.set(token);
    }

    /// A callout's answer arrived: a poll, a report or a shadow copy.
    pub fn on_callout(&mut self, token: u32, body_size: usize) {
        let Some(active) = self.active.clone() else {
            return;
        };
        if let Some(link) = active.live.as_ref() {
            if link.call.get() == Some(token) {
                link.call.set(None);
                self.on_state_polled(&active, link, body_size);
                return;
            }
            if link.report_call.get() == Some(token) {
                // A lost report is made up by the next one: totals are cumulative.
                link.report_call.set(None);
                return;
            }
        }
        self.on_shadow_answer(&active, token, body_size);
    }

    /// The controller answered a poll: check it once, and publish a valid, newer state to every
    /// worker via shared data in its checked binary form.
    fn on_state_polled(&self, active: &Active, link: &LiveLink, body_size: usize) {
        let status = self.host.header(Map::CalloutResponse, ":status");
        if status.as_deref() != Some(b"200") {
            return; // Unreachable or unhappy controller: every worker keeps the state it has.
        }
        let body = self
            .host
            .body(Body::CalloutResponse, 0, body_size)
            .unwrap_or_default();
        let state = match parse(&body).and_then(|d| Applied::check(&d, &active.rollout)) {
            Ok(state) => state,
            Err(e) => {
                log::warn!(
                    "ramp: rollout {:?}: {e}; keeping the last good state",
                    active.rollout.name
                );
                return;
            }
        };
        if link.known_version.get() != Some(state.version) {
            // A change answered the long poll early: ask again at once, with the new version.
            link.next_poll_ms.set(0);
        }
        link.known_version.set(Some(state.version));
        let Some((stored, cas)) = self.host.shared_get(&link.state_key) else {
            return;
        };
        let arms = active.rollout.arms.len();
        let old = stored.as_deref().and_then(|b| Applied::decode(b, arms));
        if state.replaces(old.as_ref()) {
            let _ = self.host.shared_set(
                &link.state_key,
                &state.encode(),
                cas.unwrap_or(CREATE_ONLY_CAS),
            );
            // This worker need not wait for its tick; the others apply it on theirs.
            self.apply_live_state(active, link);
        }
    }

    /// Applies the newest state in shared data to this worker, if it changed since the last tick.
    fn apply_live_state(&self, active: &Active, link: &LiveLink) {
        let Some((Some(bytes), cas)) = self.host.shared_get(&link.state_key) else {
            return;
        };
        if cas == link.applied.get() {
            return;
        }
        link.applied.set(cas);
        let Some(state) = Applied::decode(&bytes, active.rollout.arms.len()) else {
            log::warn!(
                "ramp: rollout {:?}: shared live state is not for this config; keeping the last good state",
                active.rollout.name
            );
            return;
        };
        if let Some(b) = &active.bandit {
            if let Ok(mut counts) = b.counts.try_borrow_mut() {
                counts.set_remote(&state.bandit);
                b.refresh_discounted(&counts);
            }
        }
        if let Ok(mut current) = active.weights.try_borrow_mut() {
            if *current != state.weights {
                log::info!(
                    "ramp: rollout {:?}: live state version {}: weights {:?}",
                    active.rollout.name,
                    state.version,
                    state.weights
                );
            }
            *current = state.weights;
        }
        if let Ok(mut pre) = active.pre_weights.try_borrow_mut() {
            *pre = state.pre_weights;
        }
    }

    /// The shadow model's answer to a copy (or Envoy's local reply about it).
    fn on_shadow_answer(&self, active: &Active, token: u32, body_size: usize) {
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
                        failure: Some(crate::shadow::Failure::Refused),
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
fn record_pair(rollout: &str, st: &mut ShadowState, pair: &Pair) {
    let c = compare(pair);
    st.totals.add(pair, &c);
    if let (Some(m), Some((x, y))) = (st.moments.as_mut(), numeric_pair(pair)) {
        m.pending.add_pair(x, y);
    }
    log::info!("{}", record_line(rollout, pair, &c));
}
