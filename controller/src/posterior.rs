//! What the bandit has learned, for `status`: each arm's Beta posterior over its reward rate
//! (uniform Beta(1, 1) prior) with an equal-tailed credible interval, from `statrs`.

use serde::Serialize;
use statrs::distribution::{Beta, ContinuousCDF};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Posterior {
    pub trials: u64,
    /// Sum of rewards in [0, 1].
    pub reward: f64,
    /// Posterior mean of the reward rate.
    pub mean: f64,
    pub interval: (f64, f64),
    pub level: f64,
}

/// Beta(1 + reward, 1 + trials - reward); `None` for nonsense counts (reward above trials).
pub fn posterior(trials: u64, reward: f64, level: f64) -> Option<Posterior> {
    let failures = trials as f64 - reward;
    if !(reward >= 0.0 && failures >= 0.0 && level > 0.0 && level < 1.0) {
        return None;
    }
    let (a, b) = (1.0 + reward, 1.0 + failures);
    let dist = Beta::new(a, b).ok()?;
    let tail = (1.0 - level) / 2.0;
    Some(Posterior {
        trials,
        reward,
        mean: a / (a + b),
        interval: (dist.inverse_cdf(tail), dist.inverse_cdf(1.0 - tail)),
        level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
