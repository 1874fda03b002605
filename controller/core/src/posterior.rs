//! What the bandit has learned, for `status`: each arm's Beta posterior over its reward rate
//! (uniform Beta(1, 1) prior) with an equal-tailed credible interval. Every path ends in a bounded
//! number of steps: statrs' `Beta::inverse_cdf` can loop forever on large counts (seen at 10^7
//! trials with rate 0 or 1), so the quantiles are found by a fixed number of bisection steps on
//! statrs' regularized incomplete beta (a continued fraction capped at 140 terms), and by the
//! normal approximation once both shape parameters are large enough for it to be exact to a
//! fraction of the interval's width.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};
use statrs::function::beta::beta_reg;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Posterior {
    pub trials: u64,
    /// Sum of rewards in [0, 1].
    pub reward: f64,
    /// Posterior mean of the reward rate.
    pub mean: f64,
    pub interval: (f64, f64),
    pub level: f64,
}

/// Both shapes above this: the Beta's skewness is below 0.01 and the normal quantile is used.
const NORMAL_FROM: f64 = 1e5;
/// Bisection halvings: 2^-80 is far below f64 resolution near any quantile of interest.
const HALVINGS: usize = 80;

/// Beta(1 + reward, 1 + trials - reward); `None` for nonsense counts (reward above trials).
pub fn posterior(trials: u64, reward: f64, level: f64) -> Option<Posterior> {
    let failures = trials as f64 - reward;
    if !(reward >= 0.0 && failures >= 0.0 && level > 0.0 && level < 1.0) {
        return None;
    }
    let (a, b) = (1.0 + reward, 1.0 + failures);
    let tail = (1.0 - level) / 2.0;
    Some(Posterior {
        trials,
        reward,
        mean: a / (a + b),
        interval: (beta_quantile(a, b, tail), beta_quantile(a, b, 1.0 - tail)),
        level,
    })
}

/// The `p` quantile of Beta(a, b), a, b >= 1, in a bounded number of steps.
fn beta_quantile(a: f64, b: f64, p: f64) -> f64 {
    if a > NORMAL_FROM && b > NORMAL_FROM {
        let n = a + b;
        let mean = a / n;
        let sd = (a * b / (n * n * (n + 1.0))).sqrt();
        let z = Normal::standard().inverse_cdf(p);
        return (mean + z * sd).clamp(0.0, 1.0);
    }
    // Closed forms where one shape is 1: Beta(1, b) has cdf 1 - (1 - x)^b, Beta(a, 1) has x^a.
    if a == 1.0 {
        return -((1.0 - p).ln() / b).exp_m1();
    }
    if b == 1.0 {
        return p.powf(1.0 / a);
    }
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    for _ in 0..HALVINGS {
        let mid = 0.5 * (lo + hi);
        if beta_reg(a, b, mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn close(got: f64, want: f64, tol: f64) -> bool {
        (got - want).abs() <= tol * want.abs().max(1e-300)
    }

    /// Reference: scipy 1.17.1, `scipy.stats.beta.ppf([0.025, 0.975], a, b)`.
    #[test]
    fn credible_intervals_match_scipy() {
        // 2 successes in 10 trials: Beta(3, 9).
        let p = posterior(10, 2.0, 0.95).unwrap();
        assert!((p.interval.0 - 0.06021773).abs() < 1e-6, "{p:?}");
        assert!((p.interval.1 - 0.51775585).abs() < 1e-6, "{p:?}");
        assert!((p.mean - 0.25).abs() < 1e-12);
        // 180 of 200: Beta(181, 21).
        let p = posterior(200, 180.0, 0.95).unwrap();
        assert!((p.interval.0 - 0.85051347).abs() < 1e-6, "{p:?}");
        assert!((p.interval.1 - 0.93415414).abs() < 1e-6, "{p:?}");
        assert_eq!(posterior(5, 6.0, 0.95), None);
    }

    /// Issue "rampctl under fire", item 2: a healthy bandit arm with 10^7 trials and reward rate 0
    /// or 1 made statrs' `Beta::inverse_cdf` loop forever while the store lock was held. Every
    /// size and rate now answers at once, and the figures match scipy 1.17.1:
    /// `scipy.stats.beta.ppf([0.025, 0.975], 1 + trials*rate, 1 + trials*(1 - rate))`
    /// (`python3 -c "import scipy.stats as st; print(st.beta.ppf([0.025, 0.975], a, b))"`).
    #[test]
    fn posteriors_terminate_and_match_scipy_at_any_size_and_rate() {
        let cases: [(u64, f64, (f64, f64)); 11] = [
            (0, 0.0, (0.025, 0.975)),
            (1, 0.0, (0.01257911709342505, 0.841886116991581)),
            (1, 0.5, (0.06083027592009732, 0.9391697240799026)),
            (1, 1.0, (0.15811388300841897, 0.9874208829065749)),
            (
                10_000_000,
                0.0,
                (2.5317805420459767e-09, 3.688878404834665e-07),
            ),
            (10_000_000, 0.5, (0.4996901025368515, 0.5003098974631486)),
            (10_000_000, 1.0, (0.9999996311121595, 0.9999999974682194)),
            (
                1_000_000_000_000,
                0.0,
                (2.5317807984264238e-14, 3.688879454103443e-12),
            ),
            (
                1_000_000_000_000,
                0.5,
                (0.4999990200180078, 0.5000009799819922),
            ),
            (
                1_000_000_000_000,
                1.0,
                (0.9999999999963112, 0.9999999999999747),
            ),
            (1_000, 0.3, (0.2724135650368101, 0.32913954106374615)),
        ];
        for (trials, rate, (lo, hi)) in cases {
            let started = Instant::now();
            let p = posterior(trials, trials as f64 * rate, 0.95).unwrap();
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{trials} {rate}"
            );
            assert!(
                close(p.interval.0, lo, 1e-6),
                "{trials} {rate}: {p:?} vs {lo}"
            );
            assert!(
                close(p.interval.1, hi, 1e-6),
                "{trials} {rate}: {p:?} vs {hi}"
            );
        }
    }
}
