//! Guardrails that hold however often they are looked at. A rule is checked every few seconds
//! for the whole of a stage; comparing each check's point estimate with the bound rolled back an
//! identical candidate in 33 of 50 rollouts (`error_rate max 0.03`, true rate 0.02). Here a rule
//! fails only when a confidence *sequence* (an interval sequence that covers the truth at every
//! look at once with probability at least 1 - alpha) lies beyond its bound:
//! - rates (error rate, accuracy, shadow agreement and errors) and their difference from the
//!   baseline's: the normal-mixture confidence sequence of Robbins (1970), the one the A/B test's
//!   mSPRT inverts (Johari, Koomen, Pekelis and Walsh, Operations Research 2022), on the estimate
//!   and its variance per request, or per user bucket for sticky filters (`units`); asymptotic,
//!   as the A/B test is;
//! - latency percentiles: the time-uniform Dvoretzky-Kiefer-Wolfowitz bound of Howard and Ramdas
//!   ("Sequential estimation of quantiles with applications to A/B-testing and best-arm
//!   identification", Bernoulli 2022, Theorem 2), which holds for every threshold and every
//!   sample size at once, read at the histogram's bucket bounds only, so a bucket's width can
//!   make the bounds wider but never wrong;
//! - `latency_slower`: the Mann-Whitney probability with its tie-corrected variance under the
//!   normal mixture (asymptotic).
//!
//! The reconciler spends alpha over the windows it looks at (`start_weight`) and splits it over a
//! stage's rules and candidates (Bonferroni, which is Holm's first step: the only step that
//! matters when any rule's failure rolls back).

use std::cell::RefCell;
use std::collections::HashMap;

use crate::histogram::Histogram;
use crate::sequential::RateEstimate;

/// The chance, per stage, that any rule fails a candidate that is within all its bounds.
pub const GUARDRAIL_ALPHA: f64 = 0.01;

/// The share of alpha a window starting after the stage's `start`-th check gets: 1/2 for the
/// whole stage (start 0), 1 / (2 s (s + 1)) for start s >= 1. They sum to 1, so every window of
/// every start can be tested with its share and the stage's chance of a false failure stays
/// within alpha (a union bound: each start's windows form one confidence sequence).
pub fn start_weight(start: u64) -> f64 {
    if start == 0 {
        0.5
    } else {
        let s = start as f64;
        1.0 / (2.0 * s * (s + 1.0))
    }
}

/// The mixture's sds over the effect: from small deviations a long stage can detect to the large
/// ones a few hundred requests show. One sd tunes the sequence for one sample size (its interval
/// is widest, relative to the best it could be, far from it); the average of the likelihood
/// ratios over several is a mixture too, and costs only ln(8) in the threshold.
pub const MIXTURE_SDS: [f64; 8] = [0.002, 0.005, 0.0125, 0.03, 0.075, 0.18, 0.45, 1.1];

/// ln of the normal-mixture likelihood ratio for a deviation `h` of an estimate with variance
/// `v`, mixture sd `tau`: ln sqrt(v / (v + tau^2)) + h^2 tau^2 / (2 v (v + tau^2)).
fn ln_ratio(h: f64, v: f64, tau: f64) -> f64 {
    let t2 = tau * tau;
    0.5 * (v / (v + t2)).ln() + h * h * t2 / (2.0 * v * (v + t2))
}

/// Half-width of the confidence sequence at level 1 - `alpha` for an estimate with variance
/// `v`, the likelihood ratio averaged over `sds`: the deviation h at which it reaches 1 / alpha
/// (Ville's inequality bounds the chance it ever does for the true value by alpha). `None` for a
/// variance that is not positive.
pub fn half_width_over(sds: &[f64], v: f64, alpha: f64) -> Option<f64> {
    if !(v.is_finite() && v > 0.0 && alpha > 0.0 && alpha < 1.0) || sds.is_empty() {
        return None;
    }
    let target = (1.0 / alpha).ln();
    let ln_mean = |h: f64| {
        let terms: Vec<f64> = sds.iter().map(|&t| ln_ratio(h, v, t)).collect();
        let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        top + (terms.iter().map(|x| (x - top).exp()).sum::<f64>() / sds.len() as f64).ln()
    };
    let mut hi = v.sqrt();
    while ln_mean(hi) < target {
        hi *= 2.0;
        if !hi.is_finite() {
            return None;
        }
    }
    let mut lo = 0.0;
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if ln_mean(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(hi)
}

/// `half_width_over` the guardrails' `MIXTURE_SDS`.
pub fn half_width(v: f64, alpha: f64) -> Option<f64> {
    half_width_over(&MIXTURE_SDS, v, alpha)
}

/// A rate's variance, floored by the binomial variance at the Laplace estimate (S + 1) / (n + 2):
/// with no event yet (or every trial one) the plain estimate's variance is 0, and a normal
/// interval of width 0 would fail a candidate on its first error.
pub fn floored(est: RateEstimate, trials: u64) -> RateEstimate {
    RateEstimate {
        variance: est.variance.max(laplace_variance(est.rate, trials)),
        ..est
    }
}

/// The binomial variance of a rate over `trials` at the Laplace estimate (S + 1) / (n + 2).
pub fn laplace_variance(rate: f64, trials: u64) -> f64 {
    let n = trials.max(1) as f64;
    let laplace = (rate * n + 1.0) / (n + 2.0);
    laplace * (1.0 - laplace) / n
}

/// The interval for a rate at level 1 - `alpha`.
pub fn rate_interval(est: RateEstimate, alpha: f64) -> Option<(f64, f64)> {
    let half = half_width(est.variance, alpha)?;
    Some((est.rate - half, est.rate + half))
}

/// Howard and Ramdas' time-uniform DKW bound: with probability at least 1 - `alpha`, for every
/// sample size t >= `t_min` and every x at once, |F_t(x) - F(x)| <= A sqrt((ln(1 + ln(t /
/// t_min)) + C) / t), A = 0.85 and C solved from alpha (their Theorem 2; the `confseq`
/// package's `empirical_process_lil_bound`). Infinite below `t_min`.
pub fn dkw_epsilon(t: u64, alpha: f64, t_min: u64) -> f64 {
    let (t, t_min) = (t as f64, t_min.max(1) as f64);
    if t < t_min {
        return f64::INFINITY;
    }
    let c = lil_constant(alpha);
    LIL_A * (((1.0 + (t / t_min).ln()).ln() + c) / t).sqrt()
}

const LIL_A: f64 = 0.85;

/// C for `dkw_epsilon`: the smallest C whose error bound, minimized over the epoch spacing eta,
/// is alpha. Solved once per alpha (bisection on monotone functions only; bounded work).
fn lil_constant(alpha: f64) -> f64 {
    thread_local! {
        static SOLVED: RefCell<HashMap<u64, f64>> = RefCell::new(HashMap::new());
    }
    if let Some(c) = SOLVED.with(|s| s.borrow().get(&alpha.to_bits()).copied()) {
        return c;
    }
    let a = LIL_A;
    // The bound's error for (C, eta), from the proof of Theorem 2.
    let error = |c: f64, eta: f64| {
        let gamma_sq = 2.0 / eta * (a - (2.0 * (eta - 1.0) / c).sqrt()).powi(2);
        if gamma_sq <= 1.0 {
            f64::INFINITY
        } else {
            4.0 * (-gamma_sq * c).exp() * (1.0 + 1.0 / ((gamma_sq - 1.0) * eta.ln()))
        }
    };
    let best_error = |c: f64| {
        // eta ranges over (1, eta_max], eta_max where sqrt(eta/2) + sqrt(2(eta-1)/C) = A.
        let (mut lo, mut hi) = (1.0, 2.0 * a * a);
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if (mid / 2.0).sqrt() + (2.0 * (mid - 1.0) / c).sqrt() - a > 0.0 {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        // The error is unimodal in eta: golden-section search.
        let (mut x0, mut x1) = (1.0 + 1e-12, lo);
        let g = 0.5 * (5f64.sqrt() - 1.0);
        for _ in 0..200 {
            let (m1, m2) = (x1 - g * (x1 - x0), x0 + g * (x1 - x0));
            if error(c, m1) < error(c, m2) {
                x1 = m2;
            } else {
                x0 = m1;
            }
        }
        error(c, 0.5 * (x0 + x1))
    };
    // The error falls as C grows: bisect for error = alpha.
    let (mut lo, mut hi) = (1.0, 5.0);
    while best_error(hi) > alpha && hi < 1e6 {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if best_error(mid) > alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    SOLVED.with(|s| s.borrow_mut().insert(alpha.to_bits(), hi));
    hi
}

/// Bounds (lower, upper) on the `p` quantile of the distribution a histogram samples, valid at
/// every look with probability 1 - `alpha` (`dkw_epsilon`), at bucket bounds: the lower one is
/// the largest bound below which fewer than p - eps of the observations fall (so the quantile is
/// above it), the upper one the smallest bound below which at least p + eps fall. 0 and
/// infinity when the data cannot say.
pub fn quantile_bounds(h: &Histogram, p: f64, alpha: f64, t_min: u64) -> (f64, f64) {
    let n = h.count();
    let eps = dkw_epsilon(n, alpha, t_min);
    if n == 0 || !eps.is_finite() {
        return (0.0, f64::INFINITY);
    }
    let share = |c: u64| c as f64 / n as f64;
    let lower = h
        .buckets
        .iter()
        .filter(|(bound, c)| bound.is_finite() && share(*c) < p - eps)
        .map(|(bound, _)| *bound)
        .fold(0.0, f64::max);
    let upper = h
        .buckets
        .iter()
        .find(|(bound, c)| bound.is_finite() && share(*c) >= p + eps)
        .map_or(f64::INFINITY, |(bound, _)| *bound);
    (lower, upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: `confseq` (Howard's own implementation), test `EmpiricalProcessLILTest`:
    /// empirical_process_lil_bound(1000, 0.05, 100, 0.85) = 0.08204769.
    #[test]
    fn the_time_uniform_dkw_bound_matches_its_authors_implementation() {
        let eps = dkw_epsilon(1000, 0.05, 100);
        assert!((eps - 0.08204769).abs() < 1e-5, "{eps}");
        assert!(dkw_epsilon(99, 0.05, 100).is_infinite());
        assert!(dkw_epsilon(10_000, 0.01, 100) < dkw_epsilon(1_000, 0.01, 100));
        assert!(dkw_epsilon(1_000, 0.001, 100) > dkw_epsilon(1_000, 0.01, 100));
    }

    /// With one sd the half-width is the closed form the mSPRT's confidence sequence uses
    /// (sequential.rs), checked by hand: v = 1e-4, tau = 0.01, alpha = 0.05: sqrt(2e-4 * (2 *
    /// ln 20 + ln 2)) = sqrt(2e-4 * 6.6846) = 0.036564. Averaging over sds is about as narrow
    /// where one sd fits, and much narrower than a wrong single sd elsewhere.
    #[test]
    fn the_half_width_is_the_mixture_formula() {
        let h = half_width_over(&[0.01], 1e-4, 0.05).unwrap();
        assert!((h - 0.036564).abs() < 1e-5, "{h}");
        assert!(half_width(0.0, 0.05).is_none());
        let mixed = half_width(1e-4, 0.05).unwrap();
        assert!(mixed > 0.8 * h && mixed < 1.3 * h, "{mixed} vs {h}");
        // 200 requests at 20% errors: v = 8e-4. A single sd of 0.01 gives +-0.26; the mixture
        // +-0.11.
        let single = half_width_over(&[0.01], 8e-4, 0.01).unwrap();
        let wide = half_width(8e-4, 0.01).unwrap();
        assert!(single > 0.25 && wide < 0.12, "{single} {wide}");
    }

    #[test]
    fn start_weights_sum_to_one() {
        let sum: f64 = (0..1_000_000).map(start_weight).sum();
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");
    }

    /// The quantile bounds use bucket bounds only: with 10,000 observations spread evenly over
    /// buckets 1..100 ms, the p95 lies in [~93, ~97] at alpha 0.01, and its bounds bracket 95.
    #[test]
    fn quantile_bounds_bracket_the_quantile_at_bucket_bounds() {
        let h = Histogram::from_bucket_counts(&[100; 100]);
        let (lo, hi) = quantile_bounds(&h, 0.95, 0.01, 32);
        assert!(lo < 95.0 && hi >= 95.0, "({lo}, {hi})");
        assert!(lo == lo.round() && hi == hi.round(), "bucket bounds");
        assert!(lo > 85.0 && hi < 100.0, "({lo}, {hi})");
        let few = Histogram::from_bucket_counts(&[1; 10]);
        assert_eq!(quantile_bounds(&few, 0.95, 0.01, 32), (0.0, f64::INFINITY));
    }
}
