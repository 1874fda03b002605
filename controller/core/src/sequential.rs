//! Tests whose error guarantees hold however often they are looked at, for decisions a rollout
//! re-checks every few seconds:
//! - the A/B comparison: the mixture sequential probability ratio test (mSPRT) of Johari,
//!   Koomen, Pekelis and Walsh ("Always Valid Inference: Continuous Monitoring of A/B Tests",
//!   Operations Research 2022) on the difference of two rates with a normal mixture N(0, tau^2)
//!   over the effect, giving an always-valid p-value and a confidence sequence;
//! - the sample-ratio check: the Dirichlet-multinomial sequential test of Lindon and Malek
//!   ("Anytime-Valid Inference for Multinomial Count Data", NeurIPS 2022), whose Bayes factor is a
//!   martingale under the configured split, so the chance it ever crosses 1/alpha is at most alpha
//!   (under a bandit, whose split is the policy's, `exposure` tests lost exposure instead).
//!
//! Closed forms only (ln-gamma from statrs), so every call ends in bounded time.

use serde::Serialize;
use statrs::function::gamma::ln_gamma;

use crate::abtest::{Proportion, Winner};
use crate::cuped::Adjusted;

/// The mSPRT's figures at one look.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SequentialResult {
    pub baseline_rate: f64,
    pub candidate_rate: f64,
    /// candidate - baseline.
    pub difference: f64,
    pub relative_lift: Option<f64>,
    /// The mixture likelihood ratio against "no difference".
    pub likelihood_ratio: f64,
    /// min(1, 1 / likelihood ratio): a p-value valid at any look (the decision is made at the
    /// first look where it falls below alpha).
    pub p_value: f64,
    /// The confidence sequence for the difference at level 1 - alpha: covers the true difference
    /// at every look at once with probability 1 - alpha.
    pub interval: (f64, f64),
    pub alpha: f64,
    /// The mixture's standard deviation over the difference (the test's tuning parameter).
    pub tau: f64,
    pub winner: Winner,
    /// The unit whose variance the test used: `request`, `user_bucket` when sticky filters
    /// report analysis buckets, or `user_bucket_cuped` when the difference is also adjusted by
    /// the buckets' pre-period (`cuped`).
    pub unit: &'static str,
    /// CUPED's figures when the difference is adjusted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuped: Option<CupedFigures>,
}

/// ln of the normal-mixture likelihood ratio for an estimate `theta` with variance `v` against 0,
/// the mixture N(0, `t2`) over the effect: ln sqrt(V / (V + tau^2)) + theta^2 tau^2 / (2 V (V + tau^2)).
fn ln_mixture_ratio(theta: f64, v: f64, t2: f64) -> f64 {
    0.5 * (v / (v + t2)).ln() + theta * theta * t2 / (2.0 * v * (v + t2))
}

/// One arm's rate and the variance of that estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateEstimate {
    pub rate: f64,
    pub variance: f64,
    pub unit: &'static str,
}

impl RateEstimate {
    /// Requests as independent trials: the binomial variance. `None` without trials.
    pub fn per_request(p: Proportion) -> Option<Self> {
        (p.trials > 0).then(|| {
            let rate = p.rate();
            RateEstimate {
                rate,
                variance: rate * (1.0 - rate) / p.trials as f64,
                unit: "request",
            }
        })
    }

    /// Buckets as the independent units (each user's requests all in one bucket): the ratio
    /// S/N over buckets with the delta-method variance G/(G-1) * sum_j (s_j - r n_j)^2 / N^2, G
    /// the buckets with trials (Deng, Knoblich and Lu, "Applying the Delta Method in Metric
    /// Analytics", KDD 2018; the cluster-robust variance of an intercept-only regression).
    /// `None` with fewer than two buckets holding trials.
    pub fn per_bucket(successes: &[f64], trials: &[u64]) -> Option<Self> {
        let n: f64 = trials.iter().map(|&t| t as f64).sum();
        let s: f64 = successes.iter().take(trials.len()).sum();
        let g = trials.iter().filter(|&&t| t > 0).count();
        if g < 2 || n <= 0.0 {
            return None;
        }
        let rate = s / n;
        let squares: f64 = successes
            .iter()
            .zip(trials)
            .map(|(&s, &t)| (s - rate * t as f64).powi(2))
            .sum();
        let g = g as f64;
        Some(RateEstimate {
            rate,
            variance: g / (g - 1.0) * squares / (n * n),
            unit: "user_bucket",
        })
    }
}

/// The mSPRT of `candidate` against `baseline` at level `alpha` with mixture sd `tau`; `None`
/// while an arm has no trials or neither rate varies.
pub fn msprt(
    baseline: Proportion,
    candidate: Proportion,
    alpha: f64,
    tau: f64,
) -> Option<SequentialResult> {
    msprt_estimates(
        RateEstimate::per_request(baseline)?,
        RateEstimate::per_request(candidate)?,
        alpha,
        tau,
    )
}

/// The mSPRT on two rate estimates with their variances (per request or per bucket).
pub fn msprt_estimates(
    baseline: RateEstimate,
    candidate: RateEstimate,
    alpha: f64,
    tau: f64,
) -> Option<SequentialResult> {
    msprt_compared(
        Comparison {
            baseline,
            candidate,
            adjusted: None,
        },
        alpha,
        tau,
    )
}

/// The two arms' plain rates with the adjusted difference, as the mSPRT takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub baseline: RateEstimate,
    pub candidate: RateEstimate,
    pub adjusted: Option<Adjusted>,
}

/// What CUPED changed in a test: the plain difference and variance beside the adjusted ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CupedFigures {
    pub unadjusted_difference: f64,
    pub unadjusted_variance: f64,
    pub variance: f64,
    /// 1 - variance / unadjusted_variance.
    pub variance_reduction: f64,
    /// theta, the slope on each bucket's pre-period rate.
    pub slope: f64,
    pub clusters: usize,
}

/// The mSPRT on a comparison: on the CUPED-adjusted difference and its variance when there is
/// one, else on the plain difference with the two estimates' variances summed.
pub fn msprt_compared(cmp: Comparison, alpha: f64, tau: f64) -> Option<SequentialResult> {
    let (baseline, candidate) = (cmp.baseline, cmp.candidate);
    if tau.is_nan() || tau <= 0.0 || !(alpha > 0.0 && alpha < 1.0) {
        return None;
    }
    let (pa, pb) = (baseline.rate, candidate.rate);
    let (theta, v, unit, cuped) = match cmp.adjusted {
        Some(a) => (
            a.difference,
            a.variance,
            crate::cuped::CUPED_UNIT,
            Some(CupedFigures {
                unadjusted_difference: pb - pa,
                unadjusted_variance: a.unadjusted_variance,
                variance: a.variance,
                variance_reduction: a.variance_reduction(),
                slope: a.slope,
                clusters: a.clusters,
            }),
        ),
        None => (
            pb - pa,
            baseline.variance + candidate.variance,
            if baseline.unit == candidate.unit {
                candidate.unit
            } else {
                "mixed"
            },
            None,
        ),
    };
    if !(v.is_finite() && v > 0.0) {
        return None;
    }
    let t2 = tau * tau;
    let ln_lambda = ln_mixture_ratio(theta, v, t2);
    let p_value = (-ln_lambda).exp().min(1.0);
    let half = ((v * (v + t2) / t2) * (2.0 * (1.0 / alpha).ln() + ((v + t2) / v).ln())).sqrt();
    let winner = match (p_value < alpha, theta > 0.0) {
        (false, _) => Winner::Neither,
        (true, true) => Winner::Candidate,
        (true, false) => Winner::Baseline,
    };
    Some(SequentialResult {
        baseline_rate: pa,
        candidate_rate: pb,
        difference: theta,
        relative_lift: (pa > 0.0).then(|| theta / pa),
        likelihood_ratio: ln_lambda.exp(),
        p_value,
        interval: (theta - half, theta + half),
        alpha,
        tau,
        winner,
        unit,
        cuped,
    })
}

/// Holm's step-down correction ("A simple sequentially rejective multiple test procedure",
/// Scand. J. Statistics 1979): which of `p_values` are rejected with the family-wise error rate
/// at most `alpha`. Valid for any dependence between the tests, and for always-valid p-values at
/// any look (each true null's p-value falls below alpha / m0 at some look with probability at
/// most alpha / m0).
pub fn holm(p_values: &[f64], alpha: f64) -> Vec<bool> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut rejected = vec![false; m];
    for (rank, &i) in order.iter().enumerate() {
        // A NaN p-value rejects nothing, and stops the step-down there.
        let within = p_values[i] <= alpha / (m - rank) as f64;
        if !within {
            break;
        }
        rejected[i] = true;
    }
    rejected
}

/// The sample-ratio check at one look.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SrmResult {
    /// The configured split (shares summing to 1) and the observed one.
    pub expected: Vec<f64>,
    pub observed: Vec<f64>,
    pub counts: Vec<u64>,
    pub bayes_factor: f64,
    /// min(1, 1 / Bayes factor): valid at any look.
    pub p_value: f64,
    pub alpha: f64,
    pub mismatch: bool,
    /// What was counted as independent: `request` (the multinomial test), `user_bucket`
    /// (sticky assignment: each live arm's share tested with buckets as the units), or
    /// `exposure` (a bandit: `counts` are Envoy's own replies per arm, `expected` and `observed`
    /// their shares, see `exposure`).
    pub unit: &'static str,
    /// With `exposure`: each arm's responses, of which `counts` Envoy made itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub responses: Vec<u64>,
}

/// `SrmResult::unit` of the exposure check between live arms.
pub const EXPOSURE_UNIT: &str = "exposure";
/// `SrmResult::unit` of one live arm's loss against the split before: `counts` and `responses`
/// are (before, now), `expected` and `observed` the two loss rates.
pub const EXPOSURE_SWITCH_UNIT: &str = "exposure_since_switch";

impl From<crate::exposure::ExposureResult> for SrmResult {
    fn from(e: crate::exposure::ExposureResult) -> Self {
        let shares = |v: Vec<f64>| {
            let total: f64 = v.iter().sum();
            v.into_iter()
                .map(|x| if total > 0.0 { x / total } else { 0.0 })
                .collect::<Vec<f64>>()
        };
        Self {
            expected: shares(e.expected_local_replies),
            observed: shares(e.local_replies.iter().map(|&l| l as f64).collect()),
            counts: e.local_replies,
            bayes_factor: e.likelihood_ratio,
            p_value: e.p_value,
            alpha: e.alpha,
            mismatch: e.mismatch,
            unit: EXPOSURE_UNIT,
            responses: e.responses,
        }
    }
}

/// The bucket-level check's mixture sd over an arm's share: one point (49/51 against 50/50).
pub const SRM_SHARE_MIXTURE_SD: f64 = 0.01;

/// The sample-ratio check when assignment is sticky: a user's requests all go to one arm, so
/// request counts are not multinomial and the test above would raise false alarms. Instead each
/// live arm's share of the requests (all but the last arm's; with two arms one share says all)
/// is tested against its weight by the mSPRT with the buckets' cluster-robust variance
/// (`RateEstimate::per_bucket`), Bonferroni over the arms tested. `buckets[a][j]`: requests of
/// arm a in bucket j. `None` with fewer than two live arms or two buckets.
pub fn srm_by_bucket(buckets: &[&[u64]], weights: &[f64], alpha: f64) -> Option<SrmResult> {
    let k = buckets.len();
    if k < 2 || weights.len() != k || weights.iter().any(|w| !(w.is_finite() && *w > 0.0)) {
        return None;
    }
    let total_w: f64 = weights.iter().sum();
    let expected: Vec<f64> = weights.iter().map(|w| w / total_w).collect();
    let width = buckets.iter().map(|b| b.len()).max().unwrap_or(0);
    let at = |a: usize, j: usize| buckets[a].get(j).copied().unwrap_or(0);
    let per_bucket: Vec<u64> = (0..width).map(|j| (0..k).map(|a| at(a, j)).sum()).collect();
    let counts: Vec<u64> = buckets.iter().map(|b| b.iter().sum()).collect();
    let n: u64 = counts.iter().sum();
    let observed: Vec<f64> = counts
        .iter()
        .map(|&c| if n > 0 { c as f64 / n as f64 } else { 0.0 })
        .collect();
    let t2 = SRM_SHARE_MIXTURE_SD * SRM_SHARE_MIXTURE_SD;
    let mut ln_max = f64::NEG_INFINITY;
    for (a, &share) in expected.iter().enumerate().take(k - 1) {
        let s: Vec<f64> = (0..width).map(|j| at(a, j) as f64).collect();
        let e = RateEstimate::per_bucket(&s, &per_bucket)?;
        let v = e.variance;
        let theta = e.rate - share;
        let ln_lambda = if v > 0.0 {
            ln_mixture_ratio(theta, v, t2)
        } else if theta == 0.0 {
            0.0
        } else {
            // Every bucket at exactly the same off share: as strong as evidence gets.
            f64::INFINITY
        };
        ln_max = ln_max.max(ln_lambda);
    }
    let tested = (k - 1) as f64;
    let p_value = (tested * (-ln_max).exp()).min(1.0);
    Some(SrmResult {
        expected,
        observed,
        counts,
        bayes_factor: ln_max.exp(),
        p_value,
        alpha,
        mismatch: p_value < alpha,
        unit: "user_bucket",
        responses: Vec::new(),
    })
}

/// The prior's concentration: Dirichlet(k * expected). Lindon and Malek's default scale; larger
/// values react later to large mismatches and sooner to small ones.
pub const SRM_CONCENTRATION: f64 = 100.0;

/// The Dirichlet-multinomial test of `counts` against the shares `weights` (any positive scale)
/// at level `alpha`. Arms with weight 0 must have no requests (any is a mismatch, p = 0); they are
/// left out of the test otherwise. `None` with fewer than two live arms.
pub fn srm(counts: &[u64], weights: &[f64], alpha: f64) -> Option<SrmResult> {
    if counts.len() != weights.len() || weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
        return None;
    }
    let total_w: f64 = weights.iter().sum();
    let n: u64 = counts.iter().sum();
    if total_w.is_nan() || total_w <= 0.0 {
        return None;
    }
    let expected: Vec<f64> = weights.iter().map(|w| w / total_w).collect();
    let observed: Vec<f64> = counts
        .iter()
        .map(|&c| if n > 0 { c as f64 / n as f64 } else { 0.0 })
        .collect();
    let live: Vec<usize> = (0..weights.len()).filter(|&i| expected[i] > 0.0).collect();
    let stray = (0..weights.len()).any(|i| expected[i] == 0.0 && counts[i] > 0);
    if live.len() < 2 && !stray {
        return None;
    }
    let ln_bf = if stray {
        f64::INFINITY
    } else {
        let a: Vec<f64> = live
            .iter()
            .map(|&i| SRM_CONCENTRATION * expected[i])
            .collect();
        let c: Vec<f64> = live.iter().map(|&i| counts[i] as f64).collect();
        let ln_beta = |x: &[f64]| -> f64 {
            x.iter().map(|&v| ln_gamma(v)).sum::<f64>() - ln_gamma(x.iter().sum())
        };
        let posterior: Vec<f64> = a.iter().zip(&c).map(|(a, c)| a + c).collect();
        let ln_null: f64 = live
            .iter()
            .zip(&c)
            .map(|(&i, &c)| c * expected[i].ln())
            .sum();
        ln_beta(&posterior) - ln_beta(&a) - ln_null
    };
    let p_value = (-ln_bf).exp().min(1.0);
    Some(SrmResult {
        expected,
        observed,
        counts: counts.to_vec(),
        bayes_factor: ln_bf.exp(),
        p_value,
        alpha,
        mismatch: p_value < alpha,
        unit: "request",
        responses: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prop(successes: u64, trials: u64) -> Proportion {
        Proportion {
            successes: successes as f64,
            trials,
        }
    }

    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs()
    }

    /// Reference values by numerical integration of the mixture likelihood ratio, independent of
    /// the closed form (scipy 1.17.1):
    ///   V = pa(1-pa)/na + pb(1-pb)/nb
    ///   f = lambda th: norm.pdf(theta_hat, th, sqrt(V)) * norm.pdf(th, 0, tau)
    ///   Lambda = integrate.quad(f, -1, 1, points=[theta_hat])[0] / norm.pdf(theta_hat, 0, sqrt(V))
    /// 1000/10000 vs 1100/10000, tau 0.01 -> 3.7361767519202256
    /// 500/5000 vs 560/5000, tau 0.02     -> 1.6688372954032358
    /// 100/1000 vs 100/1000, tau 0.01     -> 0.8017837257372735
    #[test]
    fn the_mixture_likelihood_ratio_matches_numerical_integration() {
        for (a, b, tau, want) in [
            (
                prop(1000, 10_000),
                prop(1100, 10_000),
                0.01,
                3.7361767519202256,
            ),
            (prop(500, 5000), prop(560, 5000), 0.02, 1.6688372954032358),
            (prop(100, 1000), prop(100, 1000), 0.01, 0.8017837257372735),
        ] {
            let r = msprt(a, b, 0.05, tau).unwrap();
            assert!(close(r.likelihood_ratio, want, 1e-6), "{r:?} vs {want}");
            assert!(close(r.p_value, (1.0 / want).min(1.0), 1e-6));
            assert_eq!(r.winner, Winner::Neither);
            // The confidence sequence excludes 0 exactly when the p-value is below alpha.
            assert!(r.interval.0 < 0.0 && r.interval.1 > 0.0, "{r:?}");
        }
        let clear = msprt(prop(1000, 10_000), prop(1300, 10_000), 0.05, 0.01).unwrap();
        assert_eq!(clear.winner, Winner::Candidate);
        assert!(clear.interval.0 > 0.0 && clear.p_value < 0.05, "{clear:?}");
        assert!(
            msprt(prop(0, 100), prop(0, 100), 0.05, 0.01).is_none(),
            "no variation"
        );
        assert!(msprt(prop(0, 0), prop(1, 10), 0.05, 0.01).is_none());
    }

    /// Reference values: the cluster-robust variance of an intercept-only regression on the
    /// per-request outcomes, clustered by bucket (statsmodels 0.15.0):
    ///   sm.OLS(y, np.ones(len(y))).fit(cov_type="cluster", cov_kwds={"groups": g})
    ///   -> params[0], bse[0] ** 2
    /// buckets (successes, trials) (3,10) (0,4) (7,12) (2,9) (5,5)
    ///   -> 0.42500000000000016, 0.015358398437500007
    /// (0.5,3) (2.25,4) (0,2) (1,6) -> 0.25, 0.012592592592592594
    #[test]
    fn the_bucket_variance_is_the_cluster_robust_one() {
        for (successes, trials, rate, variance) in [
            (
                vec![3.0, 0.0, 7.0, 2.0, 5.0],
                vec![10, 4, 12, 9, 5],
                0.42500000000000016,
                0.015358398437500007,
            ),
            (
                vec![0.5, 2.25, 0.0, 1.0, 0.0],
                vec![3, 4, 2, 6, 0],
                0.25,
                0.012592592592592594,
            ),
        ] {
            let e = RateEstimate::per_bucket(&successes, &trials).unwrap();
            assert!(close(e.rate, rate, 1e-12), "{e:?}");
            assert!(close(e.variance, variance, 1e-12), "{e:?}");
            assert_eq!(e.unit, "user_bucket");
        }
        assert!(
            RateEstimate::per_bucket(&[1.0, 0.0], &[5, 0]).is_none(),
            "one bucket"
        );
    }

    /// The bucket-level check: a share off in every bucket is a mismatch; the same totals made of
    /// a few heavy users (whole buckets on one arm) are not evidence of one, though the
    /// multinomial test on requests would say so.
    #[test]
    fn the_bucket_srm_check_counts_users() {
        let even: Vec<u64> = vec![500; 64];
        let skewed_v2: Vec<u64> = vec![440; 64];
        let r = srm_by_bucket(&[&even, &skewed_v2], &[50.0, 50.0], 0.01).unwrap();
        assert!(r.mismatch && r.unit == "user_bucket", "{r:?}");
        assert!(
            !srm_by_bucket(&[&even, &even], &[50.0, 50.0], 0.01)
                .unwrap()
                .mismatch
        );
        // 64 buckets, each a handful of heavy users: v1 gets 1,100 or 900 per bucket at random,
        // v2 the rest of 2,000. Totals 51.6/48.4 over 128,000 requests.
        let v1: Vec<u64> = (0..64)
            .map(|j| if j % 8 < 5 { 1100 } else { 900 })
            .collect();
        let v2: Vec<u64> = v1.iter().map(|c| 2000 - c).collect();
        let users = srm_by_bucket(&[&v1, &v2], &[50.0, 50.0], 0.01).unwrap();
        let requests = srm(&[v1.iter().sum(), v2.iter().sum()], &[50.0, 50.0], 0.01).unwrap();
        assert!(
            !users.mismatch && requests.mismatch,
            "{users:?} {requests:?}"
        );
        assert!(srm_by_bucket(&[&even], &[100.0], 0.01).is_none());
    }

    /// Reference decisions from statsmodels 0.15.0:
    ///   multipletests(p, alpha=0.05, method="holm")[0]
    /// [0.01, 0.04, 0.03] -> [T, F, F]; [0.02, 0.03, 0.04] -> [F, F, F];
    /// [0.001, 0.2, 0.024, 0.013] -> [T, F, T, T]; [0.06, 0.01] -> [F, T].
    #[test]
    fn holm_rejects_what_statsmodels_rejects() {
        for (p, want) in [
            (vec![0.01, 0.04, 0.03], vec![true, false, false]),
            (vec![0.02, 0.03, 0.04], vec![false, false, false]),
            (
                vec![0.001, 0.2, 0.024, 0.013],
                vec![true, false, true, true],
            ),
            (vec![0.06, 0.01], vec![false, true]),
        ] {
            assert_eq!(holm(&p, 0.05), want, "{p:?}");
        }
        assert_eq!(holm(&[f64::NAN, 0.001], 0.05), vec![false, true]);
        assert!(holm(&[], 0.05).is_empty());
    }

    /// Reference values: for two arms the Dirichlet-multinomial is the beta-binomial, so the
    /// Bayes factor of a sequence is (scipy 1.17.1)
    ///   stats.betabinom.pmf(n1, n, k*p0, k*(1-p0)) / stats.binom.pmf(n1, n, p0), k = 100
    /// 4900/5100 at 0.5 -> 0.7192747246562986; 5020/4980 at 0.5 -> 0.10744034738627518;
    /// 900/1100 at 0.5 -> 3035.630639742884; 3000/7000 at 0.25 -> 3.2203635023340306e26.
    #[test]
    fn the_srm_bayes_factor_matches_the_beta_binomial() {
        for (n1, n2, p0, want) in [
            (4900, 5100, 0.5, 0.7192747246562986),
            (5020, 4980, 0.5, 0.10744034738627518),
            (900, 1100, 0.5, 3035.630639742884),
            (3000, 7000, 0.25, 3.2203635023340306e26),
        ] {
            let r = srm(&[n1, n2], &[p0, 1.0 - p0], 0.01).unwrap();
            assert!(close(r.bayes_factor, want, 1e-8), "{r:?} vs {want}");
        }
        let r = srm(&[900, 1100], &[50.0, 50.0], 0.01).unwrap();
        assert!(r.mismatch && r.p_value < 0.001, "{r:?}");
        assert_eq!(r.observed, vec![0.45, 0.55]);
        assert!(!srm(&[5020, 4980], &[1.0, 1.0], 0.01).unwrap().mismatch);
        // A request to an arm at weight 0 is a mismatch outright; no live pair, nothing to test.
        assert!(srm(&[10, 1], &[100.0, 0.0], 0.01).unwrap().mismatch);
        assert!(srm(&[10, 0], &[100.0, 0.0], 0.01).is_none());
        assert!(srm(&[1, 2], &[1.0], 0.01).is_none());
    }
}
