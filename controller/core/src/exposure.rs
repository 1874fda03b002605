//! The sample-ratio check for bandit rollouts. A bandit moves traffic away from the stage's weights
//! on purpose, so comparing each arm's requests with those weights stops every bandit that learns
//! anything. What can still bias its comparisons is exposure lost after routing: a route, a fault
//! filter, a missing upstream or a timeout that answers part of one arm's requests in Envoy, so
//! that arm's model never sees them. This tests exactly that: whether Envoy's own replies (local
//! replies) fall on the arms in proportion to the responses each arm had, check period by check
//! period, whatever split the bandit chose in each period.
//!
//! The test. Under the null hypothesis every routed request is lost with the same chance q,
//! whatever its arm (q unknown, possibly 0). Within one check period, given that period's responses
//! per arm `r_a` (R in all) and its local replies D, the lost requests are a uniform D-subset of
//! the R, so arm a's local replies `x_a` are hypergeometric(R, r_a, D). Against "arm a loses at
//! odds theta times the others'", the binomial likelihood ratio of the period is
//! `theta^x_a / (theta p_a + 1 - p_a)^D` with `p_a = r_a / R`. Its expectation under the null is at
//! most 1 for the hypergeometric too, because the hypergeometric precedes the binomial in the convex
//! order (Hoeffding 1963, "Probability inequalities for sums of bounded random variables", Thm. 4)
//! and `theta^x` is convex in x. So the product over periods, mixed over a grid of theta > 1, is a
//! nonnegative supermartingale under the null, and by Ville's inequality the chance it ever
//! exceeds K / alpha is at most alpha / K; Bonferroni over the K arms keeps the whole check at
//! alpha however many periods it sees. A period with no local reply contributes a factor of 1:
//! a bandit that only shifts traffic can never raise an alarm. (Waudby-Smith and Ramdas, "Estimating
//! means of bounded random variables by betting", JRSS-B 2024, give the general betting frame.)
//!
//! Only arms that lose more than the rest are tested: if the arms' loss rates differ at all, the
//! arm with the highest rate loses more than the others pooled.
//!
//! Under a steady common loss (a few timeouts on every arm) each fixed-theta ratio drifts down,
//! so a test that ran for a day would need hours of evidence to flag a new loss. The test
//! therefore starts afresh every `EPOCH_PERIODS` periods, epoch k at level alpha * 6 / (pi^2
//! k^2): the levels sum to alpha, so the chance of any false flag over all epochs stays alpha
//! (a union bound), and a loss that begins late is judged on recent evidence.

use serde::Serialize;

/// The odds multipliers theta = e^s the mixture is over, equal weights. Large multipliers make a
/// loss on one arm alone (none on the others) decisive after a handful of replies; small ones
/// catch a small excess over a common loss rate.
const LN_THETAS: [f64; 8] = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8];

/// Periods (checks) per epoch of the test.
pub const EPOCH_PERIODS: u32 = 120;

/// The running test over the live arms of one split (a bandit stage).
#[derive(Debug, Clone, PartialEq)]
pub struct ExposureTest {
    /// Per arm, the log likelihood ratio of each theta in this epoch.
    ln_ratio: Vec<[f64; LN_THETAS.len()]>,
    /// The epoch (from 1) and the periods with replies seen in it.
    epoch: u32,
    periods: u32,
    /// Per arm, responses and local replies counted so far, and the local replies expected under
    /// the null (the sum over periods of D * p_a).
    responses: Vec<u64>,
    lost: Vec<u64>,
    expected: Vec<f64>,
}

/// The check's figures at one look.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExposureResult {
    /// Per arm: responses (routed requests that ended), Envoy's own replies among them, and the
    /// local replies expected if every arm lost the same share.
    pub responses: Vec<u64>,
    pub local_replies: Vec<u64>,
    pub expected_local_replies: Vec<f64>,
    /// The arm (index) most out of line, with its mixture likelihood ratio.
    pub worst_arm: usize,
    pub likelihood_ratio: f64,
    /// min(1, K / (the largest ratio x this epoch's share of alpha)): valid at any look
    /// (Bonferroni over the K arms and the epochs).
    pub p_value: f64,
    pub alpha: f64,
    pub mismatch: bool,
}

impl ExposureTest {
    pub fn new(arms: usize) -> Self {
        Self {
            ln_ratio: vec![[0.0; LN_THETAS.len()]; arms],
            epoch: 1,
            periods: 0,
            responses: vec![0; arms],
            lost: vec![0; arms],
            expected: vec![0.0; arms],
        }
    }

    pub fn arms(&self) -> usize {
        self.lost.len()
    }

    /// One check period's increments per arm: responses, and Envoy's own replies among them.
    /// Slices of another length are ignored (the caller's arms changed: it starts a new test).
    pub fn observe(&mut self, responses: &[u64], local_replies: &[u64]) {
        let k = self.arms();
        if responses.len() != k || local_replies.len() != k {
            return;
        }
        // Replies are counted when they end, like responses; clamp in case a report's counters
        // were read between the two (a reply is never more than the responses it is one of).
        let lost: Vec<u64> = local_replies
            .iter()
            .zip(responses)
            .map(|(&l, &r)| l.min(r))
            .collect();
        let total: u64 = responses.iter().sum();
        let d: u64 = lost.iter().sum();
        for a in 0..k {
            self.responses[a] = self.responses[a].saturating_add(responses[a]);
            self.lost[a] = self.lost[a].saturating_add(lost[a]);
        }
        if d == 0 || total == 0 {
            return;
        }
        if self.periods >= EPOCH_PERIODS {
            self.epoch = self.epoch.saturating_add(1);
            self.periods = 0;
            self.ln_ratio
                .iter_mut()
                .for_each(|r| *r = [0.0; LN_THETAS.len()]);
        }
        self.periods += 1;
        let (d, total) = (d as f64, total as f64);
        for a in 0..k {
            let p = responses[a] as f64 / total;
            let x = lost[a] as f64;
            self.expected[a] += d * p;
            for (ln, &s) in self.ln_ratio[a].iter_mut().zip(&LN_THETAS) {
                // ln(theta p + 1 - p) = ln(1 + p (theta - 1)), computed without overflow.
                *ln += x * s - d * (p * s.exp_m1()).ln_1p();
            }
        }
    }

    /// The verdict at level `alpha`; `None` with fewer than two arms.
    pub fn result(&self, alpha: f64) -> Option<ExposureResult> {
        let k = self.arms();
        if k < 2 {
            return None;
        }
        let mixture = |lns: &[f64; LN_THETAS.len()]| {
            // log-mean-exp, stable for ratios far beyond f64's range.
            let top = lns.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            top + (lns.iter().map(|l| (l - top).exp()).sum::<f64>() / lns.len() as f64).ln()
        };
        let (worst_arm, ln_max) = self.ln_ratio.iter().map(mixture).enumerate().fold(
            (0, f64::NEG_INFINITY),
            |best, (a, l)| {
                if l > best.1 {
                    (a, l)
                } else {
                    best
                }
            },
        );
        // This epoch's share of alpha: 6 / (pi^2 k^2).
        let k_epoch = f64::from(self.epoch);
        let spend = 6.0 / (std::f64::consts::PI * std::f64::consts::PI * k_epoch * k_epoch);
        let p_value = (k as f64 * (-ln_max).exp() / spend).min(1.0);
        Some(ExposureResult {
            responses: self.responses.clone(),
            local_replies: self.lost.clone(),
            expected_local_replies: self.expected.clone(),
            worst_arm,
            likelihood_ratio: ln_max.exp(),
            p_value,
            alpha,
            mismatch: p_value < alpha,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bandit that moves all traffic to one arm, with no request lost: never an alarm.
    #[test]
    fn a_learning_bandit_with_no_loss_raises_nothing() {
        let mut t = ExposureTest::new(2);
        for period in 0..1000u64 {
            let to_v2 = 500u64.saturating_add(period).min(1000);
            t.observe(&[1000 - to_v2, to_v2], &[0, 0]);
        }
        let r = t.result(0.01).unwrap();
        assert_eq!((r.p_value, r.mismatch), (1.0, false), "{r:?}");
    }

    /// The likelihood ratio of one period by hand: 2 arms at 300 and 100 responses, 4 local
    /// replies all on arm 1 (p = 0.25). For theta = e^0.1: e^0.4 / (1 + 0.25 (e^0.1 - 1))^4
    /// = 1.4918247 / 1.0262927^4 = 1.4918247 / 1.1093919 = 1.3447228.
    #[test]
    fn one_period_matches_the_hand_computed_ratio() {
        let mut t = ExposureTest::new(2);
        t.observe(&[300, 100], &[0, 4]);
        let want = 1.3447228;
        assert!((t.ln_ratio[1][0].exp() - want).abs() < 1e-6, "{t:?}");
        assert!((t.expected[1] - 1.0).abs() < 1e-12);
    }

    /// A 5% drop of one arm's requests after routing is caught, whatever split the bandit uses:
    /// 200 responses a period, the bandit moving from 50/50 to 95/5, the candidate (the arm the
    /// bandit favours here) losing 5%.
    #[test]
    fn a_five_percent_drop_of_one_arm_is_caught_under_a_moving_split() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut t = ExposureTest::new(2);
        let mut caught_at = None;
        for period in 0..200u64 {
            let share = (0.5 + period as f64 * 0.01).min(0.95);
            let v2 = (200.0 * share) as u64;
            let v1 = 200 - v2;
            let lost = (0..v2).filter(|_| rng.f64() < 0.05).count() as u64;
            t.observe(&[v1, v2], &[0, lost]);
            if caught_at.is_none() && t.result(0.01).unwrap().mismatch {
                caught_at = Some(period);
            }
        }
        // Each of arm 2's replies multiplies the top theta's ratio by about 1 / p (>= 2 here), so
        // about a dozen replies (a few periods) are enough.
        assert!(caught_at.is_some_and(|p| p < 20), "{caught_at:?}");
        assert_eq!(t.result(0.01).unwrap().worst_arm, 1);
    }

    /// The level holds under repeated looks: both arms lose 2% of their requests, the split moves
    /// every period, and the check is looked at after each of 300 periods, in 400 runs. Ville's
    /// inequality bounds the share of runs ever flagged by alpha = 0.05; a supermartingale that
    /// is not tight stays well under it. (A fixed-horizon chi-square test looked at as often
    /// flags far more.) 3 standard errors of a 5% share over 400 runs is 0.033.
    #[test]
    fn a_common_loss_rate_keeps_the_level_under_repeated_looks() {
        let mut rng = fastrand::Rng::with_seed(11);
        let runs = 400;
        let mut flagged = 0;
        for _ in 0..runs {
            let mut t = ExposureTest::new(3);
            let mut ever = false;
            for _ in 0..300 {
                let r: Vec<u64> = (0..3).map(|_| rng.u64(0..200)).collect();
                let l: Vec<u64> = r
                    .iter()
                    .map(|&n| (0..n).filter(|_| rng.f64() < 0.02).count() as u64)
                    .collect();
                t.observe(&r, &l);
                ever |= t.result(0.05).unwrap().mismatch;
            }
            flagged += usize::from(ever);
        }
        assert!(
            (flagged as f64 / runs as f64) < 0.05 + 0.033,
            "{flagged} of {runs}"
        );
    }

    /// After a day of checks under a steady common loss of 1% (17,280 checks of 5 s), a 5% loss
    /// on one arm is still flagged within a few epochs' worth of checks at most, not hours: each
    /// epoch starts afresh.
    #[test]
    fn a_loss_that_begins_late_is_judged_on_recent_evidence() {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut t = ExposureTest::new(2);
        let mut period = |t: &mut ExposureTest, extra: f64| {
            let lost: Vec<u64> = [0.01, 0.01 + extra]
                .iter()
                .map(|&q| (0..250).filter(|_| rng.f64() < q).count() as u64)
                .collect();
            t.observe(&[250, 250], &lost);
        };
        for _ in 0..17_280 {
            period(&mut t, 0.0);
        }
        assert!(!t.result(0.01).unwrap().mismatch);
        let flagged = (0..2 * EPOCH_PERIODS).find(|_| {
            period(&mut t, 0.04);
            t.result(0.01).unwrap().mismatch
        });
        assert!(
            flagged.is_some_and(|n| n < EPOCH_PERIODS + 60),
            "{flagged:?}"
        );
    }

    #[test]
    fn fewer_than_two_arms_or_mismatched_slices_decide_nothing() {
        assert!(ExposureTest::new(1).result(0.01).is_none());
        let mut t = ExposureTest::new(2);
        t.observe(&[10], &[10]);
        assert_eq!(t.result(0.01).unwrap().p_value, 1.0);
    }
}
