//! The earlier checks' totals a rule may look back over, and the choice of the newest one whose
//! window (the totals now minus them) holds a rule's `min_samples`, in time that does not grow
//! with how many are kept.
//!
//! Rules judge the window since the newest earlier check that holds enough samples, else the whole
//! stage (`check::judged_windows`). Scanning every kept check for that, building a window
//! each time, made a check cost grow with the history: 600 snapshots x 8 rules x 15 candidates
//! meant 144,000 windows a check when none held enough (issue 20, item 10). Two facts make a
//! binary search exact instead:
//!
//! - A window's sample count is a scalar of the two arms' totals (`samples_since`), computed
//!   without building the window.
//! - While the totals only grow from one kept check to the next (no Envoy left, no counter reset),
//!   the sample count of "now minus snapshot i" does not fall as i gets older. Where it is
//!   defined by a fallback (a latency histogram or shadow sums that cannot be subtracted, so the
//!   window is everything now has), that happens for the newest snapshots of such a run only, and
//!   the count there is the largest any window can have.
//!
//! So the kept snapshots are split into runs, each of which only grows towards the present
//! (`dominates`, checked once when a snapshot is pushed), and the few counts the searches read
//! are kept per arm in columns as snapshots are pushed (the incremental part); within a run the
//! newest snapshot meeting the rule is found by binary search over those columns, and runs are
//! tried newest first. Only the chosen snapshot's windows are built.
//! An Envoy leaving the fleet starts a new run, so a history with a few such drops costs a few
//! binary searches; only a history whose totals drop at every check degrades to one probe per
//! snapshot, still without building a window. The selection is exactly the scan's; a randomized
//! test compares the two on growing and on arbitrary histories.

use std::collections::{BTreeMap, VecDeque};

use crate::spec::Metric;
use crate::window::{ArmTotals, Totals};

/// The figures a metric's samples are counted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// `requests` (error rates).
    Requests,
    /// `labelled` (accuracy from ground truth).
    Labelled,
    /// `shadow.labelled` (shadow agreement).
    ShadowLabelled,
    /// `shadow.pairs` less `shadow.unreachable` (copies the shadow model answered).
    ShadowAnswered,
    /// `shadow.moments.n` (the comparisons of numeric predictions).
    Moments,
    /// The latency histogram's count (percentiles, `latency_slower`).
    Latency,
    /// `stream.responses` (the streaming rules).
    Streams,
}

fn counted(metric: Metric) -> Counted {
    match metric {
        // A custom figure is a point value every window holds; its rules ask for no samples.
        Metric::ErrorRate | Metric::ErrorRateVsBaseline | Metric::Custom => Counted::Requests,
        Metric::Accuracy => Counted::Labelled,
        Metric::ShadowAgreement => Counted::ShadowLabelled,
        Metric::ShadowErrorRate => Counted::ShadowAnswered,
        Metric::ShadowCorrelation
        | Metric::ShadowMeanDiff
        | Metric::ShadowEquivalent
        | Metric::ShadowGuide => Counted::Moments,
        Metric::LatencyP50 | Metric::LatencyP95 | Metric::LatencyP99 | Metric::LatencySlower => {
            Counted::Latency
        }
        Metric::TtftP95
        | Metric::TtftP99
        | Metric::TpotP95
        | Metric::DurationP95
        | Metric::TokensPerRequest
        | Metric::CostPer1kRequests
        | Metric::TtftSlower => Counted::Streams,
    }
}

/// The buckets `window` makes a histogram of: bounds and counts paired, the shorter one decides.
fn latency_len(t: &ArmTotals) -> usize {
    t.le.len().min(t.counts.len())
}

/// The histogram's count (its last bucket), as `Histogram::count`.
fn latency_count(t: &ArmTotals) -> u64 {
    match latency_len(t) {
        0 => 0,
        n => t.counts[n - 1],
    }
}

/// Whether `Histogram::since` can subtract `base`'s latency buckets from `now`'s: `base` has none,
/// or both have the same bounds and no bucket went down.
fn latency_subtracts(now: &ArmTotals, base: &ArmTotals) -> bool {
    let n = latency_len(base);
    n == 0
        || (n == latency_len(now)
            && (0..n).all(|i| now.le[i] == base.le[i] && now.counts[i] >= base.counts[i]))
}

/// Whether `ShadowMoments::since` can subtract `base`'s sums from `now`'s.
fn moments_subtract(now: &ArmTotals, base: &ArmTotals) -> bool {
    let (n, b) = (&now.shadow.moments, &base.shadow.moments);
    !(b.n > n.n || (b.thresholds != n.thresholds && b.n > 0))
}

/// The samples of `what` in the window `now - base`: `window(now, base, arm).samples(metric)`,
/// without building the window.
fn counted_since(what: Counted, now: &ArmTotals, base: &ArmTotals) -> u64 {
    match what {
        Counted::Requests => now.requests.saturating_sub(base.requests),
        Counted::Labelled => now.labelled.saturating_sub(base.labelled),
        Counted::ShadowLabelled => now.shadow.labelled.saturating_sub(base.shadow.labelled),
        Counted::ShadowAnswered => {
            let pairs = now.shadow.pairs.saturating_sub(base.shadow.pairs);
            let unreachable = now
                .shadow
                .unreachable
                .saturating_sub(base.shadow.unreachable);
            pairs.saturating_sub(unreachable)
        }
        Counted::Moments if moments_subtract(now, base) => {
            now.shadow.moments.n - base.shadow.moments.n
        }
        Counted::Moments => now.shadow.moments.n,
        Counted::Latency if latency_len(base) > 0 && latency_subtracts(now, base) => {
            latency_count(now) - latency_count(base)
        }
        Counted::Latency => latency_count(now),
        Counted::Streams => now.stream.responses.saturating_sub(base.stream.responses),
    }
}

/// The figures the search reads, per arm and kept check: requests, labelled, shadow labelled,
/// shadow pairs, unreachable shadow copies, shadow moments' count, latency count, streamed
/// responses.
type Scalars = [u64; 8];

fn scalars(t: &ArmTotals) -> Scalars {
    [
        t.requests,
        t.labelled,
        t.shadow.labelled,
        t.shadow.pairs,
        t.shadow.unreachable,
        t.shadow.moments.n,
        latency_count(t),
        t.stream.responses,
    ]
}

/// The plain difference of the counts `counted_since` subtracts, from their scalars: equal to it
/// wherever the window is a subtraction (`latency_subtracts`, `moments_subtract`), and O(1),
/// where telling whether it is compares every latency bucket.
fn subtracted_since(what: Counted, now: &Scalars, base: &Scalars) -> u64 {
    let d = |k: usize| now[k].saturating_sub(base[k]);
    match what {
        Counted::Requests => d(0),
        Counted::Labelled => d(1),
        Counted::ShadowLabelled => d(2),
        Counted::ShadowAnswered => d(3).saturating_sub(d(4)),
        Counted::Moments => d(5),
        Counted::Latency => d(6),
        Counted::Streams => d(7),
    }
}

/// `window(now, base, arm).samples(metric)` for one arm's totals, without building the window.
pub fn samples_since(metric: Metric, now: &ArmTotals, base: &ArmTotals) -> u64 {
    counted_since(counted(metric), now, base)
}

/// Whether `older` can precede `newer` in one run: nothing any metric counts went down between
/// them, so for any totals now, each metric's window count does not fall as the snapshot gets
/// older (and where a window falls back to all of now, it does so for the newest of a run only).
fn arm_dominates(newer: &ArmTotals, older: &ArmTotals) -> bool {
    let (a, b) = (&newer.shadow, &older.shadow);
    newer.requests >= older.requests
        && newer.labelled >= older.labelled
        && a.labelled >= b.labelled
        && a.pairs >= b.pairs
        && a.unreachable >= b.unreachable
        // The answered copies (pairs less unreachable ones) grow too.
        && a.pairs - b.pairs >= a.unreachable - b.unreachable
        && a.moments.n >= b.moments.n
        && (b.moments.n == 0 || a.moments.thresholds == b.moments.thresholds)
        && latency_subtracts(newer, older)
        && newer.stream.responses >= older.stream.responses
}

/// `arm_dominates` for every arm either names (an arm one lacks counts as all zeros, as in
/// `window`).
fn dominates(newer: &Totals, older: &Totals) -> bool {
    let zero = ArmTotals::default();
    newer.keys().chain(older.keys()).all(|arm| {
        arm_dominates(
            newer.get(arm).unwrap_or(&zero),
            older.get(arm).unwrap_or(&zero),
        )
    })
}

/// Check totals kept per stage: the windows rules may look back over.
pub const KEPT_CHECKS: usize = 600;

/// `*dst = src.clone()`, reusing `dst`'s allocations (its arms' latency buckets above all).
fn assign(dst: &mut Totals, src: &Totals) {
    dst.retain(|arm, _| src.contains_key(arm));
    for (arm, from) in src {
        match dst.get_mut(arm) {
            Some(to) => assign_arm(to, from),
            None => {
                dst.insert(arm.clone(), from.clone());
            }
        }
    }
}

fn assign_arm(to: &mut ArmTotals, from: &ArmTotals) {
    // Every field named, so a new one cannot be forgotten here.
    let ArmTotals {
        requests,
        errors,
        local_replies,
        le,
        counts,
        labelled,
        correct,
        reward_micros,
        shadow,
        buckets,
        custom,
        stream,
        price,
    } = from;
    to.requests = *requests;
    to.errors = *errors;
    to.local_replies = *local_replies;
    to.le.clone_from(le);
    to.counts.clone_from(counts);
    to.labelled = *labelled;
    to.correct = *correct;
    to.reward_micros = *reward_micros;
    to.shadow.clone_from(shadow);
    to.buckets.requests.clone_from(&buckets.requests);
    to.buckets.errors.clone_from(&buckets.errors);
    to.buckets.reward_micros.clone_from(&buckets.reward_micros);
    to.buckets.pre_requests.clone_from(&buckets.pre_requests);
    to.buckets.pre_errors.clone_from(&buckets.pre_errors);
    to.buckets
        .pre_reward_micros
        .clone_from(&buckets.pre_reward_micros);
    to.custom.clone_from(custom);
    to.stream.clone_from(stream);
    to.price = *price;
}

/// The totals of the checks so far, newest first, at most `cap` of them.
#[derive(Debug)]
pub struct Lookback {
    /// Each with its sequence number: the index of sequence number `s` is `newest - s`.
    kept: VecDeque<(u64, Totals)>,
    /// The sequence numbers of kept snapshots the next newer one does not dominate: where an
    /// older run starts, newest first. Kept as snapshots are pushed.
    run_ends: VecDeque<u64>,
    /// Per arm, the `Scalars` of each kept check, newest first like `kept` (zeros where a check's
    /// totals lack the arm): what the binary searches probe, a few contiguous kilobytes per arm
    /// instead of a map lookup and a pointer chase into a cold snapshot per probe.
    scalars: BTreeMap<String, VecDeque<Scalars>>,
    next: u64,
    cap: usize,
}

impl Default for Lookback {
    fn default() -> Self {
        Self::new(KEPT_CHECKS)
    }
}

impl Lookback {
    pub fn new(cap: usize) -> Self {
        Self {
            kept: VecDeque::new(),
            run_ends: VecDeque::new(),
            scalars: BTreeMap::new(),
            next: 0,
            cap,
        }
    }

    pub fn clear(&mut self) {
        self.kept.clear();
        self.run_ends.clear();
        self.scalars.clear();
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// The totals `i` checks back (0: the newest kept).
    pub fn get(&self, i: usize) -> Option<&Totals> {
        self.kept.get(i).map(|(_, t)| t)
    }

    /// Keeps a check's totals as the newest, dropping the oldest past `cap`.
    pub fn push(&mut self, totals: Totals) {
        if let Some((seq, newest)) = self.kept.front() {
            if !dominates(&totals, newest) {
                self.run_ends.push_front(*seq);
            }
        }
        let kept = self.kept.len();
        for arm in totals.keys() {
            if !self.scalars.contains_key(arm) {
                self.scalars
                    .insert(arm.clone(), std::iter::repeat_n([0; 8], kept).collect());
            }
        }
        for (arm, column) in self.scalars.iter_mut() {
            column.push_front(totals.get(arm).map_or([0; 8], scalars));
            column.truncate(self.cap);
        }
        // Full: the oldest snapshot's memory takes the new totals. Dropping 600-check-old
        // snapshots (dozens of allocations each) and keeping new ones measurably slowed every
        // allocation of a check (the allocator's free lists fragment); reused, the history's
        // memory stays put, as it would with a short history.
        let entry = if self.kept.len() >= self.cap && self.cap > 0 {
            self.kept.pop_back().map(|(_, mut old)| {
                assign(&mut old, &totals);
                old
            })
        } else {
            None
        };
        self.kept.push_front((self.next, entry.unwrap_or(totals)));
        self.next += 1;
        self.kept.truncate(self.cap);
        let oldest = self.kept.back().map_or(self.next, |(s, _)| *s);
        while self.run_ends.back().is_some_and(|s| *s < oldest) {
            self.run_ends.pop_back();
        }
    }

    /// The runs as index ranges `[start, end)`, newest first.
    fn runs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let newest = self.next.saturating_sub(1);
        let starts = self.run_ends.iter().map(move |s| (newest - s) as usize);
        std::iter::once(0)
            .chain(starts.clone())
            .zip(starts.chain(std::iter::once(self.kept.len())))
            .filter(|(start, end)| start < end)
    }

    /// The newest kept snapshot whose window from `now` holds `min_samples` of `metric` for
    /// `candidate` and, when given, for `baseline` too: what a scan newest first would find.
    pub fn newest_holding(
        &self,
        now: &Totals,
        metric: Metric,
        min_samples: u64,
        candidate: &str,
        baseline: Option<&str>,
    ) -> Option<usize> {
        let zero = ArmTotals::default();
        let what = counted(metric);
        let arm_now = |arm: &str| now.get(arm).unwrap_or(&zero);
        let at = |i: usize, arm: &str| {
            self.kept
                .get(i)
                .and_then(|(_, t)| t.get(arm))
                .unwrap_or(&zero)
        };
        let holds =
            |i: usize, arm: &str| counted_since(what, arm_now(arm), at(i, arm)) >= min_samples;
        let meets = |i: usize| holds(i, candidate) && baseline.is_none_or(|b| holds(i, b));
        self.runs().find_map(|(start, end)| {
            // Within a run, per arm: the snapshots whose window cannot be subtracted come first
            // and hold all of now, the largest count any window has; the others hold counts that
            // grow with age. So the snapshots meeting the rule for one arm are some first ones of
            // the run (or none) and all from the first subtracted one that holds enough. That
            // one is where the plain difference of the counts first reaches `min_samples` (it
            // grows with age over the whole run), unless an earlier one falls among the first
            // ones, which then hold enough too and so does the whole run. The newest snapshot
            // meeting the rule for both arms is thus the run's first or one of those two, tried
            // newest first. The difference is a scalar: no histogram is compared in the search.
            let first_reaching = |arm: &str| {
                let now = scalars(arm_now(arm));
                let Some(column) = self.scalars.get(arm) else {
                    // No kept check had the arm: every window is all of now.
                    return if subtracted_since(what, &now, &[0; 8]) >= min_samples {
                        start
                    } else {
                        end
                    };
                };
                start
                    + partition_point(start, end, |i| {
                        let then = column.get(i).unwrap_or(&[0; 8]);
                        subtracted_since(what, &now, then) < min_samples
                    })
            };
            let mut tries = [start, first_reaching(candidate), end];
            if let Some(b) = baseline {
                tries[2] = first_reaching(b);
            }
            tries.sort_unstable();
            tries.into_iter().find(|&i| i < end && meets(i))
        })
    }
}

/// How many of the indices `start..end`, from the start, satisfy `pred` (which holds for a
/// prefix of them): a binary search.
fn partition_point(start: usize, end: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (start, end);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo - start
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::window;
    use ramp_protocol::moments::ShadowMoments;

    const METRICS: [Metric; 13] = [
        Metric::ErrorRate,
        Metric::LatencyP50,
        Metric::LatencyP95,
        Metric::LatencyP99,
        Metric::ErrorRateVsBaseline,
        Metric::LatencySlower,
        Metric::Accuracy,
        Metric::ShadowAgreement,
        Metric::ShadowErrorRate,
        Metric::ShadowCorrelation,
        Metric::ShadowMeanDiff,
        Metric::ShadowEquivalent,
        Metric::ShadowGuide,
    ];

    /// Random arm totals: small counts so that comparisons go every way.
    fn arm(rng: &mut fastrand::Rng) -> ArmTotals {
        let n = rng.usize(0..4);
        let le: Vec<f64> = (0..n)
            .map(|i| {
                if i + 1 == n {
                    f64::INFINITY
                } else {
                    (i + 1) as f64
                }
            })
            .collect();
        let mut c = 0;
        let counts: Vec<u64> = (0..n + rng.usize(0..2))
            .map(|_| {
                c += rng.u64(0..4);
                c
            })
            .collect();
        let mut moments = ShadowMoments::with_thresholds(if rng.bool() { &[1.0] } else { &[] });
        moments.n = rng.u64(0..6);
        ArmTotals {
            requests: rng.u64(0..6),
            labelled: rng.u64(0..6),
            le: if rng.u8(0..8) == 0 { vec![2.0; n] } else { le },
            counts,
            shadow: crate::rules::ShadowFigures {
                pairs: rng.u64(0..6),
                unreachable: rng.u64(0..6),
                labelled: rng.u64(0..6),
                moments,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn sample_counts_are_the_windows() {
        let mut rng = fastrand::Rng::with_seed(20);
        for _ in 0..20_000 {
            let now: Totals = [("a".to_owned(), arm(&mut rng))].into();
            let base: Totals = [("a".to_owned(), arm(&mut rng))].into();
            for m in METRICS {
                assert_eq!(
                    samples_since(m, &now["a"], &base["a"]),
                    window(&now, &base, "a").samples(m),
                    "{m:?}: {now:?} - {base:?}"
                );
            }
        }
    }

    /// The next check's totals of one arm: `prev` grown by a little (latency buckets, shadow
    /// sums and all), and with `drop_one_in` chance something going down or changing shape (an
    /// Envoy leaving, a counter reset, new histogram bounds or shadow thresholds).
    fn grown(rng: &mut fastrand::Rng, prev: &ArmTotals, drop_one_in: u32) -> ArmTotals {
        let mut t = prev.clone();
        if t.le.is_empty() && rng.u8(0..4) > 0 {
            t.le = vec![10.0, 100.0, f64::INFINITY];
            t.counts = vec![0; 3];
        }
        let mut add = 0;
        for c in t.counts.iter_mut() {
            add += rng.u64(0..3);
            *c += add;
        }
        t.requests += rng.u64(0..4);
        t.labelled += rng.u64(0..3);
        let pairs = rng.u64(0..4);
        t.shadow.pairs += pairs;
        t.shadow.unreachable += rng.u64(0..=pairs);
        t.shadow.labelled += rng.u64(0..3);
        t.shadow.moments.n += rng.u64(0..3);
        if drop_one_in > 0 && rng.u32(0..drop_one_in) == 0 {
            let cut = |v: &mut u64, rng: &mut fastrand::Rng| *v = v.saturating_sub(rng.u64(0..20));
            match rng.u8(0..9) {
                0 => cut(&mut t.requests, rng),
                1 => cut(&mut t.labelled, rng),
                2 => cut(&mut t.shadow.pairs, rng),
                3 => cut(&mut t.shadow.unreachable, rng),
                4 => cut(&mut t.shadow.labelled, rng),
                5 => cut(&mut t.shadow.moments.n, rng),
                6 => {
                    // One instance's share of every bucket leaves.
                    for c in t.counts.iter_mut() {
                        *c /= 2;
                    }
                }
                7 => {
                    t.le = vec![5.0, 50.0, f64::INFINITY];
                    t.counts = vec![0; 3];
                }
                _ => t.shadow.moments.thresholds = vec![rng.f64()],
            }
        }
        t
    }

    /// What rampctl's `reconciler::judged_for` did before: a scan newest first, building windows.
    fn scanned(
        kept: &Lookback,
        now: &Totals,
        metric: Metric,
        min: u64,
        candidate: &str,
        baseline: Option<&str>,
    ) -> Option<usize> {
        (0..kept.len()).find(|&i| {
            let Some(from) = kept.get(i) else {
                return false;
            };
            window(now, from, candidate).samples(metric) >= min
                && baseline.is_none_or(|b| window(now, from, b).samples(metric) >= min)
        })
    }

    /// Sums each arm over the Envoys of a fleet, as `sum_reports` does (the moments' counts add
    /// up, the first Envoy's thresholds stand).
    fn fleet_totals(fleet: &[Totals]) -> Totals {
        let mut out = Totals::new();
        for envoy in fleet {
            for (arm, t) in envoy {
                let acc = out.entry(arm.clone()).or_default();
                acc.requests += t.requests;
                acc.labelled += t.labelled;
                acc.shadow.pairs += t.shadow.pairs;
                acc.shadow.unreachable += t.shadow.unreachable;
                acc.shadow.labelled += t.shadow.labelled;
                if acc.shadow.moments.n == 0 {
                    acc.shadow.moments.thresholds = t.shadow.moments.thresholds.clone();
                }
                acc.shadow.moments.n += t.shadow.moments.n;
                if acc.le.is_empty() {
                    acc.le = t.le.clone();
                    acc.counts = t.counts.clone();
                } else if acc.le == t.le {
                    for (a, b) in acc.counts.iter_mut().zip(&t.counts) {
                        *a += b;
                    }
                }
            }
        }
        out
    }

    /// The binary searches choose what the scan chose, check after check, on histories that
    /// only grow, whose fields drop or change shape now and then, of a fleet whose Envoys leave
    /// (every count of theirs leaves the totals at once) and join, and whose totals are
    /// arbitrary at every check. Each rule's `min_samples` is drawn up to the largest window
    /// now allows, so windows of every size decide.
    #[test]
    fn the_search_chooses_what_the_scan_chose() {
        let mut rng = fastrand::Rng::with_seed(10);
        let (mut searched, mut older) = (0, 0);
        for history in 0..400 {
            let mode = history % 6;
            let drop_one_in = [0, 3, 10, 40, 0, 0][mode];
            let mut kept = Lookback::new(rng.usize(1..60));
            let mut now = Totals::new();
            let mut fleet: Vec<Totals> = vec![Totals::new(); 3];
            for _ in 0..rng.usize(1..150) {
                now = match mode {
                    // Envoys of uneven traffic; one in 15 checks one leaves, another joins.
                    4 => {
                        for envoy in fleet.iter_mut() {
                            for a in ["v1", "v2"] {
                                for _ in 0..rng.usize(0..3) {
                                    let t = envoy.entry(a.to_owned()).or_default();
                                    *t = grown(&mut rng, t, 0);
                                }
                            }
                        }
                        if rng.u8(0..15) == 0 {
                            let gone = rng.usize(0..fleet.len());
                            fleet[gone] = Totals::new();
                        }
                        fleet_totals(&fleet)
                    }
                    // Arbitrary totals at every check.
                    5 => ["v1", "v2"]
                        .iter()
                        .map(|a| (a.to_string(), arm(&mut rng)))
                        .collect(),
                    _ => {
                        let mut next = Totals::new();
                        for a in ["v1", "v2"] {
                            // Now and then an arm is missing altogether (all zeros).
                            if drop_one_in > 0 && rng.u8(0..60) == 0 {
                                continue;
                            }
                            let prev = now.get(a).cloned().unwrap_or_default();
                            next.insert(a.to_owned(), grown(&mut rng, &prev, drop_one_in));
                        }
                        next
                    }
                };
                let zero = ArmTotals::default();
                for metric in METRICS {
                    let most = samples_since(metric, now.get("v2").unwrap_or(&zero), &zero);
                    let min = rng.u64(0..=most + 1);
                    let baseline = rng.bool().then_some("v1");
                    let want = scanned(&kept, &now, metric, min, "v2", baseline);
                    let got = kept.newest_holding(&now, metric, min, "v2", baseline);
                    assert_eq!(got, want, "{metric:?} >= {min}, baseline {baseline:?}");
                    searched += 1;
                    older += usize::from(want.is_some_and(|i| i > 0));
                }
                kept.push(now.clone());
            }
        }
        // The cases are not all trivial: many choose a snapshot other than the newest.
        assert!(older > searched / 5, "{older} of {searched}");
    }

    /// A full history's oldest snapshot takes the new totals exactly, whatever arms either has.
    #[test]
    fn reused_snapshots_hold_exactly_the_new_totals() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut kept = Lookback::new(3);
        let mut pushed: VecDeque<Totals> = VecDeque::new();
        for _ in 0..200 {
            let mut totals = Totals::new();
            for a in ["v1", "v2", "v3"] {
                if rng.u8(0..4) == 0 {
                    continue;
                }
                let mut t = arm(&mut rng);
                t.buckets.requests = (0..rng.usize(0..3)).map(|_| rng.u64(0..9)).collect();
                t.errors = rng.u64(0..9);
                t.reward_micros = rng.u64(0..9);
                totals.insert(a.to_owned(), t);
            }
            kept.push(totals.clone());
            pushed.push_front(totals);
            pushed.truncate(3);
            for (i, t) in pushed.iter().enumerate() {
                assert_eq!(kept.get(i), Some(t));
            }
        }
    }

    /// Growing totals make one run, an Envoy leaving starts another, and runs end with the
    /// snapshots kept.
    #[test]
    fn runs_start_where_totals_went_down() {
        let at = |requests: u64| -> Totals {
            [(
                "v2".to_owned(),
                ArmTotals {
                    requests,
                    ..Default::default()
                },
            )]
            .into()
        };
        let mut kept = Lookback::new(4);
        for r in [10, 20, 5, 6] {
            kept.push(at(r));
        }
        // Newest first: 6, 5 | 20, 10.
        assert_eq!(kept.runs().collect::<Vec<_>>(), vec![(0, 2), (2, 4)]);
        assert_eq!(
            kept.newest_holding(&at(7), Metric::ErrorRate, 1, "v2", None),
            Some(0)
        );
        assert_eq!(
            kept.newest_holding(&at(7), Metric::ErrorRate, 2, "v2", None),
            Some(1)
        );
        assert_eq!(
            kept.newest_holding(&at(7), Metric::ErrorRate, 3, "v2", None),
            None
        );
        assert_eq!(
            kept.newest_holding(&at(25), Metric::ErrorRate, 20, "v2", None),
            Some(1)
        );
        assert_eq!(
            kept.newest_holding(&at(25), Metric::ErrorRate, 21, "v2", None),
            None
        );
        kept.push(at(7));
        kept.push(at(8));
        assert_eq!(kept.runs().collect::<Vec<_>>(), vec![(0, 4)]);
        assert_eq!(kept.run_ends.len(), 0, "the run that ended was dropped");
    }
}
