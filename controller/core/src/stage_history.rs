//! The checks of one stage so far, and the sample-ratio tests they feed: whether the split the
//! filters apply is the configured one, and whether Envoy's own replies fall on one arm more
//! than on the others. Kept by the reconciler from check to check; plain data and functions.

use crate::exposure::ExposureTest;
use crate::lookback::Lookback;
use crate::machine::Phase;
use crate::record::Record;
use crate::rules::ArmWindow;
use crate::spec::Spec;
use crate::window::{window, Totals};

/// The checks of one stage so far (their totals, newest first).
#[derive(Default)]
pub struct History {
    /// The stage these checks belong to: its index and when it started (a new revision from
    /// a spec edit starts stage 1 again, with a new start and base).
    pub stage: Option<(usize, u64)>,
    pub earlier: Lookback,
    /// Checks of this stage so far (since this controller started): `earlier` keeps the newest
    /// `KEPT_CHECKS` of them.
    pub checks: u64,
    /// Where the sample-ratio check's window starts: the totals at the first check a settling
    /// time after the split in force began (the filters apply a new split within a poll), kept
    /// for as long as that split is in force (same stage, same weights, not paused since).
    srm_base: Option<(SrmKey, Totals)>,
    /// The exposure test of the split in force: its key, the live arms it tests, the test, and
    /// the totals it last saw.
    exposure: Option<(SrmKey, Vec<String>, ExposureTest, Totals)>,
    /// With one live arm (a blue-green switch, a shadow's baseline): its key, the arm, and the
    /// totals at the split's first check.
    single: Option<(SrmKey, String, Totals)>,
    /// Envoy's own replies and the responses of the split before the one in force, all arms
    /// together: what one live arm's loss is compared with.
    before: Option<(u64, u64)>,
    /// The custom rules' checks in a row without a value.
    pub no_data: crate::custom_verdict::NoData,
}

impl History {
    /// The split in force ends: what its arms lost becomes `before`.
    fn retire(&mut self, totals: &Totals) {
        if let Some((_, _, test, _)) = self.exposure.take() {
            if let Some(r) = test.result(SRM_ALPHA) {
                self.before = Some((r.local_replies.iter().sum(), r.responses.iter().sum()));
            }
        }
        if let Some((_, arm, base)) = self.single.take() {
            let w = window(totals, &base, &arm);
            self.before = Some((w.local_replies, w.latency.count()));
        }
    }
}

/// The mixture sd of the before/after comparison of one arm's loss: a point of rate.
const SWITCH_LOSS_MIXTURE_SD: f64 = 0.01;

/// What the split in force is: the stage, its weights (bits) and when the stage started.
type SrmKey = (usize, u64, u64);

/// Time after a split begins before the sample-ratio check counts requests: the filters apply a
/// new state within a poll (long polls: at once; worker ticks: 100 ms) and reports lag a poll.
pub const SRM_SETTLE_MS: u64 = 3_000;
/// The same through Prometheus, whose figures lag by its scrape interval (15 to 30 s is common):
/// a base taken before the scrape that saw the new split would count the old split's requests.
pub const SRM_SETTLE_PROMETHEUS_MS: u64 = 60_000;
/// The sample-ratio check's level: the chance it ever stops a correct split, over the whole
/// stage however long, is at most 1% (Ville's inequality for the Bayes factor martingale).
pub const SRM_ALPHA: f64 = 0.01;

/// The sample-ratio checks of the split in force; `None` before they have anything to say, or
/// without two live arms. Two tests, each at `SRM_ALPHA`:
/// - exposure (`exposure`), from the split's first check: whether Envoy's own replies fall on one
///   arm more than on the others, period by period. It needs no settling time (it compares the
///   arms within each period, whatever the split) and catches a loss on one arm within a few
///   checks. Under a bandit, whose split is its own, it is the only one.
/// - the split (`sequential::srm`, or per user bucket when sticky): the requests each arm's model
///   answered since a base taken once the split has settled, against the weights.
pub fn srm_check(
    history: &mut History,
    rec: &Record,
    spec: &Spec,
    totals: &Totals,
    now: u64,
) -> Option<crate::sequential::SrmResult> {
    let live: Vec<(String, f64)> = rec
        .state
        .arm_weights(spec)
        .into_iter()
        .filter(|(_, w)| *w > 0.0)
        .collect();
    let (_, share) = rec.state.weights(spec);
    let key = (rec.state.stage, share.to_bits(), rec.state.stage_started_ms);
    if rec.state.phase != Phase::Progressing || live.is_empty() {
        history.srm_base = None;
        history.exposure = None;
        history.single = None;
        return None;
    }
    if let [(arm, _)] = live.as_slice() {
        history.srm_base = None;
        return single_check(history, key, arm, totals);
    }
    let arms: Vec<String> = live.iter().map(|(a, _)| a.clone()).collect();
    let exposure = exposure_check(history, key, &arms, totals);
    if spec.bandit.is_some() {
        return exposure;
    }
    let split = split_check(history, key, &live, spec, totals, now);
    match (exposure, split) {
        (Some(e), _) if e.mismatch => Some(e),
        (e, None) => e,
        (_, s) => s,
    }
}

/// The exposure test of the split `key` over `arms`, one period per check since the last.
fn exposure_check(
    history: &mut History,
    key: SrmKey,
    arms: &[String],
    totals: &Totals,
) -> Option<crate::sequential::SrmResult> {
    // Another split or set of live arms (a winner, a rolled-back candidate) is another test;
    // its first check only takes the totals the next period starts from.
    let same = history
        .exposure
        .as_ref()
        .is_some_and(|(k, tested, _, _)| *k == key && tested.as_slice() == arms);
    if !same {
        history.retire(totals);
        history.exposure = Some((
            key,
            arms.to_vec(),
            ExposureTest::new(arms.len()),
            totals.clone(),
        ));
        return None;
    }
    let (_, _, test, last) = history.exposure.as_mut()?;
    // Counts that went down (an Envoy gone from the fleet, a restart seen through Prometheus)
    // make no period: differences against them would be whole histories.
    let shrank = arms.iter().any(|arm| {
        let zero = crate::window::ArmTotals::default();
        let (n, b) = (
            totals.get(arm).unwrap_or(&zero),
            last.get(arm).unwrap_or(&zero),
        );
        n.requests < b.requests
            || n.local_replies < b.local_replies
            || n.counts.iter().sum::<u64>() < b.counts.iter().sum::<u64>()
            || n.counts.iter().zip(&b.counts).any(|(x, y)| x < y)
    });
    if !shrank {
        let (responses, lost): (Vec<u64>, Vec<u64>) = arms
            .iter()
            .map(|arm| {
                let w = window(totals, last, arm);
                (w.latency.count(), w.local_replies)
            })
            .unzip();
        test.observe(&responses, &lost);
    }
    *last = totals.clone();
    test.result(SRM_ALPHA).map(Into::into)
}

/// One live arm: no split to compare arms within, so its loss (Envoy's own replies among its
/// responses since the split's first check) is compared with the split before's, by the
/// two-proportion mSPRT (valid at every look): a blue-green switch to a green whose requests
/// Envoy partly answers itself holds there.
fn single_check(
    history: &mut History,
    key: SrmKey,
    arm: &str,
    totals: &Totals,
) -> Option<crate::sequential::SrmResult> {
    use crate::abtest::Proportion;
    use crate::sequential::{msprt_estimates, RateEstimate, SrmResult};
    if !history
        .single
        .as_ref()
        .is_some_and(|(k, a, _)| *k == key && a == arm)
    {
        history.retire(totals);
        history.single = Some((key, arm.to_owned(), totals.clone()));
        return None;
    }
    let (_, _, base) = history.single.as_ref()?;
    let (lost_before, responses_before) = history.before?;
    let w = window(totals, base, arm);
    let (lost, responses) = (w.local_replies.min(w.latency.count()), w.latency.count());
    let rate = |lost: u64, n: u64| {
        RateEstimate::per_request(Proportion {
            successes: lost as f64,
            trials: n,
        })
    };
    let r = msprt_estimates(
        rate(lost_before, responses_before)?,
        rate(lost, responses)?,
        SRM_ALPHA,
        SWITCH_LOSS_MIXTURE_SD,
    )?;
    let mismatch = r.p_value < SRM_ALPHA && r.difference > 0.0;
    let share = |l: u64, n: u64| l as f64 / n.max(1) as f64;
    Some(SrmResult {
        expected: vec![share(lost_before, responses_before)],
        observed: vec![share(lost, responses)],
        counts: vec![lost_before, lost],
        bayes_factor: r.likelihood_ratio,
        p_value: r.p_value,
        alpha: SRM_ALPHA,
        mismatch,
        unit: crate::sequential::EXPOSURE_SWITCH_UNIT,
        responses: vec![responses_before, responses],
    })
}

/// The split test of `key` since its base, taking the base when the split has settled.
fn split_check(
    history: &mut History,
    key: SrmKey,
    live: &[(String, f64)],
    spec: &Spec,
    totals: &Totals,
    now: u64,
) -> Option<crate::sequential::SrmResult> {
    match &history.srm_base {
        Some((k, base)) if *k == key => {
            let windows: Vec<ArmWindow> = live
                .iter()
                .map(|(arm, _)| window(totals, base, arm))
                .collect();
            let weights: Vec<f64> = live.iter().map(|(_, w)| *w).collect();
            // Sticky filters report users' buckets: users, not requests, are the units.
            if windows.iter().all(crate::units::bucketed) {
                let buckets: Vec<&[u64]> = windows
                    .iter()
                    .map(|w| w.buckets.requests.as_slice())
                    .collect();
                return crate::sequential::srm_by_bucket(&buckets, &weights, SRM_ALPHA);
            }
            // Exposure is what reached the model: requests an Envoy answered itself (a route
            // that drops them, no upstream) skew the groups compared.
            let counts: Vec<u64> = windows
                .iter()
                .map(|w| w.requests.saturating_sub(w.local_replies))
                .collect();
            crate::sequential::srm(&counts, &weights, SRM_ALPHA)
        }
        _ => {
            let settle = if spec.prometheus.is_some() {
                SRM_SETTLE_PROMETHEUS_MS
            } else {
                SRM_SETTLE_MS
            }
            .max(2 * spec.check_interval_ms);
            // A source with nothing yet is no base: the next figures would count every request
            // since the Envoys started, the old split's included.
            let has_data = totals.values().any(|t| t.requests > 0);
            if has_data && now.saturating_sub(key.2) >= settle {
                history.srm_base = Some((key, totals.clone()));
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine;
    use crate::window::ArmTotals;

    fn totals(v1: u64, v2: u64) -> Totals {
        let arm = |requests| ArmTotals {
            requests,
            ..Default::default()
        };
        [("v1".to_owned(), arm(v1)), ("v2".to_owned(), arm(v2))].into()
    }

    fn record(spec: &Spec) -> Record {
        Record {
            name: "r".into(),
            spec_text: String::new(),
            state: machine::State::start(spec, 0),
            version: 1,
            base: Totals::default(),
        }
    }

    /// The SRM window starts after the settling time, at the first check with figures, and
    /// counts only what came after: the old split's requests before it do not make a mismatch.
    #[test]
    fn the_srm_window_starts_after_the_split_settled() {
        let spec = Spec::parse("name: r\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 1\nstages: [{weight: 50}, {weight: 100}]\n").unwrap();
        let rec = record(&spec);
        let mut h = History::default();
        assert!(srm_check(&mut h, &rec, &spec, &Totals::default(), 5_000).is_none());
        assert!(h.srm_base.is_none(), "no figures yet: no base");
        // 9,000 requests all to v1 before the split took effect, then an even split.
        // Until the split test has a base, only the exposure test answers (nothing lost here).
        let quiet = |r: Option<crate::sequential::SrmResult>| {
            r.is_none_or(|r| r.unit == "exposure" && !r.mismatch)
        };
        assert!(quiet(srm_check(
            &mut h,
            &rec,
            &spec,
            &totals(9_000, 100),
            2_000
        )));
        assert!(h.srm_base.is_none(), "before the settling time");
        assert!(quiet(srm_check(
            &mut h,
            &rec,
            &spec,
            &totals(9_000, 100),
            3_000
        )));
        let fine = srm_check(&mut h, &rec, &spec, &totals(14_020, 5_080), 4_000).unwrap();
        assert!(!fine.mismatch, "{fine:?}");
        assert_eq!(fine.counts, vec![5_020, 4_980]);
        let skewed = srm_check(&mut h, &rec, &spec, &totals(25_000, 10_000), 5_000).unwrap();
        assert!(skewed.mismatch, "16,000/9,900: {skewed:?}");
        // Paused: the window ends; after a resume it starts again from then.
        let mut paused = rec.clone();
        paused.state.phase = Phase::Paused;
        assert!(srm_check(&mut h, &paused, &spec, &totals(25_000, 10_000), 6_000).is_none());
        assert!(h.srm_base.is_none());
        assert!(quiet(srm_check(
            &mut h,
            &rec,
            &spec,
            &totals(25_000, 10_000),
            7_000
        )));
        let after = srm_check(&mut h, &rec, &spec, &totals(25_500, 10_500), 8_000).unwrap();
        assert!(
            !after.mismatch && after.counts == vec![500, 500],
            "{after:?}"
        );
    }

    /// Totals of v1 and v2 from (responses, Envoy's own replies among them), cumulative.
    fn lossy(v1: (u64, u64), v2: (u64, u64)) -> Totals {
        let arm = |(n, lost): (u64, u64)| ArmTotals {
            requests: n,
            local_replies: lost,
            le: vec![100.0, f64::INFINITY],
            counts: vec![n, n],
            ..Default::default()
        };
        [("v1".to_owned(), arm(v1)), ("v2".to_owned(), arm(v2))].into()
    }

    /// Under a bandit the split is the policy's: all traffic on one arm raises nothing, and a
    /// share of one arm's requests answered by Envoy itself (a fault filter, no upstream) does.
    #[test]
    fn a_bandit_is_checked_for_lost_exposure_not_for_its_split() {
        let spec = Spec::parse("name: r\nstrategy: bandit\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 1\nstages: [{weight: 50}, {weight: 100}]\n").unwrap();
        let rec = record(&spec);
        let at = lossy;
        let mut h = History::default();
        assert!(srm_check(&mut h, &rec, &spec, &at((10, 0), (10, 0)), 3_000).is_none());
        let mut v2 = 10;
        for second in 4..60u64 {
            v2 += 500;
            let r = srm_check(&mut h, &rec, &spec, &at((12, 0), (v2, 0)), second * 1000).unwrap();
            assert!(!r.mismatch && r.unit == "exposure", "{r:?}");
        }
        // Now 5% of v2's requests are answered by Envoy, while the bandit still explores v1 a
        // little (with no v1 traffic at all, nothing could tell a loss on v2 alone from one on
        // every arm).
        let (mut v1, mut lost) = (12, 0);
        let flagged = (60..80u64).find(|second| {
            v1 += 50;
            v2 += 500;
            lost += 25;
            srm_check(&mut h, &rec, &spec, &at((v1, 0), (v2, lost)), second * 1000)
                .unwrap()
                .mismatch
        });
        assert!(flagged.is_some_and(|s| s <= 62), "{flagged:?}");
    }

    /// An Envoy leaving the fleet takes its counts out of the totals: that check makes no
    /// period (its differences would be whole histories, a false alarm), the next ones do.
    #[test]
    fn counts_that_go_down_make_no_exposure_period() {
        let spec = Spec::parse("name: r\nstrategy: bandit\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 1\nstages: [{weight: 50}, {weight: 100}]\n").unwrap();
        let rec = record(&spec);
        let at = lossy;
        let mut h = History::default();
        // A long history before the check's base: 20,000 of v1's responses, 2,000 of v2's.
        let (mut v1, mut v2) = ((20_000u64, 400u64), (2_000u64, 40u64));
        assert!(srm_check(&mut h, &rec, &spec, &at(v1, v2), 3_000).is_none());
        // Both arms lose 2%, the bandit now at 5/95.
        for second in 4..7u64 {
            v1 = (v1.0 + 50, v1.1 + 1);
            v2 = (v2.0 + 950, v2.1 + 19);
            let r = srm_check(&mut h, &rec, &spec, &at(v1, v2), second * 1000).unwrap();
            assert!(!r.mismatch, "{r:?}");
        }
        // An instance with 600 of v1's responses and none of its replies leaves during a period
        // like the others: compared with the last totals, v1's history looks like one period.
        let gone = at((v1.0 - 600 + 50, v1.1 + 1), (v2.0 + 950, v2.1 + 19));
        let r = srm_check(&mut h, &rec, &spec, &gone, 7_000).unwrap();
        assert!(!r.mismatch, "{r:?}");
        let next = at((v1.0 - 500, v1.1 + 2), (v2.0 + 1900, v2.1 + 38));
        let r = srm_check(&mut h, &rec, &spec, &next, 8_000).unwrap();
        assert!(!r.mismatch, "{r:?}");
    }

    /// Blue-green: one live arm at a time. After the switch, green's loss (Envoy answering 5%
    /// of its requests itself) is compared with blue's before it, and holds the rollout.
    #[test]
    fn one_live_arm_is_compared_with_the_split_before() {
        let spec = Spec::parse("name: r\nstrategy: blue_green\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 1\nstages: [{weight: 0}, {weight: 100}]\n").unwrap();
        let mut rec = record(&spec);
        let at = lossy;
        let mut h = History::default();
        // Blue alone, nothing lost: nothing before it to compare with.
        for second in 1..=5u64 {
            assert!(srm_check(
                &mut h,
                &rec,
                &spec,
                &at((200 * second, 0), (0, 0)),
                second * 1000
            )
            .is_none());
        }
        // The switch: green alone, losing 5%.
        rec.state.stage = 1;
        rec.state.stage_started_ms = 5_500;
        let mut flagged = None;
        for second in 6..=12u64 {
            let n = 200 * (second - 5);
            let r = srm_check(
                &mut h,
                &rec,
                &spec,
                &at((1000, 0), (n, n / 20)),
                second * 1000,
            );
            if r.as_ref().is_some_and(|r| r.mismatch) {
                flagged = r.map(|r| (second, r));
                break;
            }
        }
        let (second, r) = flagged.expect("green's loss is flagged");
        assert!(second <= 10, "{second}");
        assert_eq!(r.unit, "exposure_since_switch");
        assert_eq!(r.counts[0], 0);
        // The same switch with green losing no more than blue did (1% each) raises nothing.
        let mut h = History::default();
        rec.state.stage = 0;
        rec.state.stage_started_ms = 0;
        for second in 1..=5u64 {
            let n = 200 * second;
            srm_check(
                &mut h,
                &rec,
                &spec,
                &at((n, n / 100), (0, 0)),
                second * 1000,
            );
        }
        rec.state.stage = 1;
        rec.state.stage_started_ms = 5_500;
        for second in 6..=30u64 {
            let n = 200 * (second - 5);
            let r = srm_check(
                &mut h,
                &rec,
                &spec,
                &at((1000, 10), (n, n / 100)),
                second * 1000,
            );
            assert!(r.is_none_or(|r| !r.mismatch));
        }
    }
}
