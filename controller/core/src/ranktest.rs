//! Is the candidate slower than the baseline? The Mann-Whitney U test (Mann and Whitney 1947) on the
//! two arms' latency histograms over the same window, as Kayenta compares a canary's distribution
//! with the baseline's rather than one percentile with a bound. Observations in the same bucket
//! are ties (half a win each); the normal approximation uses the tie-corrected variance and a
//! continuity correction, as `scipy.stats.mannwhitneyu(method="asymptotic")` does. The effect size
//! is the probability that a candidate request is slower than a baseline one (ties count half).

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal};

use crate::histogram::Histogram;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlowerResult {
    /// U for "candidate slower": pairs where the candidate's request was slower, ties half.
    pub u: f64,
    /// U / (n_candidate * n_baseline): the probability a candidate request is slower.
    pub probability_slower: f64,
    /// One-sided p-value (H1: the candidate is slower).
    pub p_value: f64,
    pub candidate_samples: u64,
    pub baseline_samples: u64,
    /// The variance of `probability_slower` whatever the two distributions (DeLong, DeLong and
    /// Clarke-Pearson 1988: the placement values' variances), for the guardrail's confidence
    /// sequence. The variance under equal distributions understates it when the shapes differ
    /// (1.76 times for a two-humped candidate against a one-bucket baseline), and a test at the
    /// bound would then fail a candidate within it more often than its alpha.
    pub variance: f64,
}

/// Per-bucket counts from cumulative ones; `None` if they are not cumulative.
fn per_bucket(h: &Histogram) -> Option<Vec<f64>> {
    let mut below = 0;
    h.buckets
        .iter()
        .map(|&(_, c)| {
            let n = c.checked_sub(below)?;
            below = c;
            Some(n as f64)
        })
        .collect()
}

/// DeLong's variance of P(candidate slower) from per-bucket counts: a candidate observation in
/// bucket k is slower than the baseline's below k and ties (half) with those in k; the sample
/// variances of these placement values over each arm, divided by its size, add up.
fn delong_variance(a: &[f64], b: &[f64], theta: f64) -> f64 {
    let (na, nb): (f64, f64) = (a.iter().sum(), b.iter().sum());
    if na < 2.0 || nb < 2.0 {
        return f64::NAN;
    }
    let (mut below_b, mut above_a) = (0.0, na);
    let (mut s10, mut s01) = (0.0, 0.0);
    for (ai, bi) in a.iter().zip(b) {
        above_a -= ai;
        // A candidate request here beats the baseline's below this bucket, ties with its own.
        let v10 = (below_b + 0.5 * bi) / nb;
        // A baseline request here is beaten by the candidate's above it, ties with those here.
        let v01 = (above_a + 0.5 * ai) / na;
        s10 += ai * (v10 - theta).powi(2);
        s01 += bi * (v01 - theta).powi(2);
        below_b += bi;
    }
    s10 / (na - 1.0) / na + s01 / (nb - 1.0) / nb
}

/// The test of `candidate` against `baseline` (same bucket bounds); `None` when the layouts
/// differ or an arm has no samples.
pub fn candidate_slower(candidate: &Histogram, baseline: &Histogram) -> Option<SlowerResult> {
    let same_bounds = candidate.buckets.len() == baseline.buckets.len()
        && candidate
            .buckets
            .iter()
            .zip(&baseline.buckets)
            .all(|(a, b)| a.0 == b.0);
    if !same_bounds {
        return None;
    }
    let (a, b) = (per_bucket(candidate)?, per_bucket(baseline)?);
    let (na, nb): (f64, f64) = (a.iter().sum(), b.iter().sum());
    if na == 0.0 || nb == 0.0 {
        return None;
    }
    let mut u = 0.0;
    let mut baseline_below = 0.0;
    let mut ties = 0.0;
    for (ai, bi) in a.iter().zip(&b) {
        u += ai * (baseline_below + 0.5 * bi);
        baseline_below += bi;
        let t = ai + bi;
        ties += t * t * t - t;
    }
    let n = na + nb;
    let mean = na * nb / 2.0;
    let var = na * nb / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    let p_value = if var > 0.0 {
        let z = (u - mean - 0.5) / var.sqrt();
        1.0 - Normal::standard().cdf(z)
    } else {
        // Every observation in one bucket: no evidence either way.
        1.0
    };
    Some(SlowerResult {
        u,
        probability_slower: u / (na * nb),
        p_value: p_value.clamp(0.0, 1.0),
        candidate_samples: na as u64,
        baseline_samples: nb as u64,
        variance: delong_variance(&a, &b, u / (na * nb)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(per_bucket: &[u64]) -> Histogram {
        Histogram::from_bucket_counts(per_bucket)
    }

    /// Reference values: scipy 1.17.1 on the same data, each observation its bucket's index,
    /// so a bucket's observations are ties:
    ///   cand = [0]*3 + [1]*10 + [2]*25 + [3]*12 + [4]*5
    ///   base = [0]*8 + [1]*20 + [2]*15 + [3]*6 + [4]*1
    ///   stats.mannwhitneyu(cand, base, alternative='greater', method='asymptotic',
    ///                      use_continuity=True) -> U 1879.0, p 0.00036634731910678775
    ///   identical arms ([0]*50 + [1]*50 each) -> U 5000.0, p 0.5005627771554204
    #[test]
    fn u_and_p_match_scipy_on_binned_data_with_ties() {
        let r = candidate_slower(&hist(&[3, 10, 25, 12, 5]), &hist(&[8, 20, 15, 6, 1])).unwrap();
        assert_eq!(r.u, 1879.0);
        assert!((r.p_value - 0.00036634731910678775).abs() < 1e-12, "{r:?}");
        assert!((r.probability_slower - 0.6832727272727273).abs() < 1e-12);
        let same = candidate_slower(&hist(&[50, 50]), &hist(&[50, 50])).unwrap();
        assert_eq!(same.u, 5000.0);
        assert!(
            (same.p_value - 0.5005627771554204).abs() < 1e-12,
            "{same:?}"
        );
        assert_eq!(same.probability_slower, 0.5);
    }

    /// Reference: DeLong's variance computed by brute force over the raw observations (every
    /// pair's comparison, the placement values' sample variances, ddof 1) in Python:
    ///   cand/base as above -> theta 0.683272727272728, variance 0.0024934984726673014
    ///   [0]*50 + [4]*50 against [2]*100 -> 0.5, 0.0025252525252525255 (the variance under
    ///   equal distributions would be (n + 1) / (12 m n) ~ 0.00168: 1.5 times too small)
    #[test]
    fn the_variance_is_delongs_whatever_the_shapes() {
        let r = candidate_slower(&hist(&[3, 10, 25, 12, 5]), &hist(&[8, 20, 15, 6, 1])).unwrap();
        assert!((r.variance - 0.0024934984726673014).abs() < 1e-15, "{r:?}");
        let humps = candidate_slower(&hist(&[50, 0, 0, 0, 50]), &hist(&[0, 0, 100, 0, 0])).unwrap();
        assert_eq!(humps.probability_slower, 0.5);
        assert!(
            (humps.variance - 0.0025252525252525255).abs() < 1e-15,
            "{humps:?}"
        );
    }

    #[test]
    fn degenerate_inputs_answer_clearly() {
        let one_bucket = candidate_slower(&hist(&[40]), &hist(&[60])).unwrap();
        assert_eq!(
            (one_bucket.p_value, one_bucket.probability_slower),
            (1.0, 0.5)
        );
        assert!(candidate_slower(&hist(&[0, 0]), &hist(&[5, 5])).is_none());
        assert!(candidate_slower(&hist(&[1, 2]), &hist(&[1, 2, 3])).is_none());
        let faster = candidate_slower(&hist(&[90, 10]), &hist(&[10, 90])).unwrap();
        assert!(faster.p_value > 0.99 && faster.probability_slower < 0.2);
    }
}
