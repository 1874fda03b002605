//! One worker's orchestration, generic over the [`Host`]. This file holds the worker's state and
//! its entry points; each concern has a file of its own:
//! - `configure`: a new plugin config, its Envoy metrics, and the state below built for it;
//! - `shared`: the read-modify-CAS loop that adds a worker's counts into shared data;
//! - `flush`: the tick's tally into Envoy's counters and shared data (bandit, shadow, reports);
//! - `cycle`: the tick, the poller lease, live-state polls and reports;
//! - `guard`: the guard's counts, test and trips, on the request path and the tick;
//! - `live_state`: the newest live state applied to this worker;
//! - `shadow_calls`: compare-mode copies sent as callouts, and the shadow model's answers;
//! - `exchange`: the request path, one per HTTP request.
//!
//! Nothing here may panic: a panic traps the VM for the whole worker, so every borrow and host
//! error degrades to "keep what we had".

mod configure;
mod cycle;
mod exchange;
mod flush;
mod guard;
mod live_state;
mod shadow_calls;
mod shared;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use fastrand::Rng;

pub use exchange::Exchange;

use crate::config::Rollout;
use crate::counters::WorkerCounts;
use crate::discount::Discounted;
use crate::host::Host;
use crate::metrics::Tally;
use crate::report::ArmReport;
use crate::shadow::{Book, ShadowMoments, Totals};
use crate::stream::StreamCounts;

/// How often a worker flushes its counters into Envoy's stats and applies the newest live state:
/// a rollback the poller learned reaches every worker within one tick.
pub const TICK_MS: u64 = 100;

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

/// What a worker keeps per arm of the active config, in the config's arm order. (The live weights
/// stay one slice, which the selection reads per request, and the tally one value, which the
/// request path counts into and the tick takes whole.)
struct Arm {
    metrics: ArmMetrics,
    /// With a controller: the shared-data key of this Envoy's report totals for the arm.
    counts_key: Option<String>,
    /// Counts already in Envoy's counters but not yet added under `counts_key`.
    unshared: Cell<ArmReport>,
    /// With the bandit: the shared-data key of this Envoy's bandit totals for the arm.
    bandit_key: Option<String>,
    /// With `stream`: the arm's streaming metrics and report totals.
    stream: Option<StreamArm>,
}

/// One arm's streaming side (config `stream`).
struct StreamArm {
    /// Bucket counters of the three histograms (ttft, duration, tpot), then the four counters,
    /// in `stream::StreamStatNames` order.
    buckets: [Vec<u32>; 3],
    counters: [u32; 4],
    /// With a controller: the shared-data key of this Envoy's streaming totals for the arm.
    key: Option<String>,
    unshared: Cell<StreamCounts>,
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

/// The bandit's per-worker state: this worker's view of the counts.
struct BanditState {
    counts: RefCell<WorkerCounts>,
    /// With `bandit.discount` < 1: the factor, and the discounted counts the policy samples,
    /// brought up to `counts` whenever the tick refreshes those (one tick behind at most). A new
    /// config starts them afresh: its first tick takes the history as one evenly spread batch.
    discounted: Option<(f64, RefCell<Discounted>)>,
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
    arms: Vec<Arm>,
    fail_open: u32,
    /// This tick's counts: a host call per request and counter costs throughput, so the worker
    /// adds them up and flushes them on tick, to Envoy's counters and to the report.
    tally: RefCell<Tally>,
    bandit: Option<BanditState>,
    shadow: Option<RefCell<ShadowState>>,
    /// With a `guard` in the config, or a controller that may push one.
    guard: Option<guard::GuardState>,
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

impl<H: Host + Clone> Worker<H> {
    /// A worker VM starting: `seed` comes from the host's clock and random source.
    pub fn start(host: H, seed: u64) -> Self {
        let mut rng = Rng::with_seed(seed);
        // One queue per worker VM: an HTTP context enqueues a shadow copy, and this worker's root
        // context sends it, so the callout outlives the request (a callout from an HTTP context
        // is cancelled when its request ends).
        let queue = host.register_queue(&crate::keys::shadow_queue(rng.u64(..)));
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
}
