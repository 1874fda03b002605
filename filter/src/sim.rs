//! A bandit simulation: policies against Bernoulli arms with known success rates, with the delayed
//! view the filter has (workers decide from the shared totals of the last tick), and optionally a
//! change of rates mid-run (two arms swap), the drift a discounted policy is for. Reports
//! cumulative pseudo-regret, `sum over steps of (best rate - chosen arm's rate)`, at checkpoints,
//! and each arm's pulls within step windows.

use fastrand::Rng;

use crate::bandit::{decide, Evidence};
use crate::config::Bandit;
use crate::counters::ArmCounts;
use crate::discount::Discounted;
use crate::kl_ucb::bernoulli_kl;

#[derive(Debug, Clone, Default)]
pub struct Scenario {
    pub rates: Vec<f64>,
    pub steps: u64,
    /// Decisions see counts as of the last flush, every `delay` steps (0: after every step).
    pub delay: u64,
    pub checkpoints: Vec<u64>,
    /// Drift: after step `at`, arms `a` and `b` trade rates.
    pub swap: Option<Swap>,
    /// Pulls per arm are counted over each window `(from, to)`: the steps after `from`, up to
    /// and including `to` (steps are numbered from 1).
    pub windows: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swap {
    pub at: u64,
    pub a: usize,
    pub b: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// (step, cumulative regret) at each checkpoint.
    pub regret: Vec<(u64, f64)>,
    pub pulls: Vec<u64>,
    /// Pulls per arm in each of the scenario's windows.
    pub window_pulls: Vec<Vec<u64>>,
}

impl Outcome {
    /// Arm `arm`'s share of the pulls in window `w`.
    pub fn window_share(&self, w: usize, arm: usize) -> f64 {
        let Some(pulls) = self.window_pulls.get(w) else {
            return 0.0;
        };
        let total: u64 = pulls.iter().sum();
        if total == 0 {
            return 0.0;
        }
        pulls.get(arm).copied().unwrap_or(0) as f64 / total as f64
    }
}

pub fn simulate(b: &Bandit, s: &Scenario, seed: u64) -> Outcome {
    let mut rng = Rng::with_seed(seed);
    let mut rates = s.rates.clone();
    let best = rates.iter().cloned().fold(f64::MIN, f64::max);
    let weights = vec![1.0; rates.len()];
    let mut shared = vec![ArmCounts::default(); rates.len()];
    let mut pending = shared.clone();
    // The filter's workers bring their discounted counts up to date when the shared ones change.
    let mut discounted = (b.discount < 1.0).then(|| Discounted::new(rates.len()));
    let mut pulls = vec![0u64; rates.len()];
    let mut window_pulls = vec![vec![0u64; rates.len()]; s.windows.len()];
    let mut regret = 0.0;
    let mut out = Vec::with_capacity(s.checkpoints.len());
    for step in 1..=s.steps {
        if let Some(sw) = s.swap.filter(|sw| sw.at + 1 == step) {
            if sw.a < rates.len() && sw.b < rates.len() {
                rates.swap(sw.a, sw.b);
            }
        }
        let ev = Evidence {
            counts: &shared,
            discounted: discounted.as_ref().map(Discounted::counts),
        };
        let arm = decide(b, ev, &weights, &mut rng).unwrap_or(0);
        let reward = if rng.f64() < rates[arm] { 1.0 } else { 0.0 };
        pending[arm].add_trial(reward);
        pulls[arm] += 1;
        for (w, counts) in s.windows.iter().zip(window_pulls.iter_mut()) {
            if w.0 < step && step <= w.1 {
                counts[arm] += 1;
            }
        }
        regret += best - rates[arm];
        if s.delay == 0 || step % s.delay == 0 {
            for (sh, p) in shared.iter_mut().zip(pending.iter_mut()) {
                *sh = sh.saturating_add(std::mem::take(p));
            }
            if let Some(d) = discounted.as_mut() {
                d.update(&shared, b.discount);
            }
        }
        if s.checkpoints.contains(&step) {
            out.push((step, regret));
        }
    }
    Outcome {
        regret: out,
        pulls,
        window_pulls,
    }
}

/// Lai & Robbins (1985): any consistent policy has regret at least
/// `ln(T) * sum over suboptimal arms of (best - p_i) / KL(p_i, best)`; this returns that coefficient.
pub fn lai_robbins_coefficient(rates: &[f64]) -> f64 {
    let best = rates.iter().cloned().fold(f64::MIN, f64::max);
    rates
        .iter()
        .filter(|&&p| p < best)
        .map(|&p| (best - p) / bernoulli_kl(p, best))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;

    fn thompson() -> Bandit {
        Bandit::with_policy(Policy::Thompson)
    }

    #[test]
    fn thompson_regret_grows_sublinearly_and_finds_the_best_arm() {
        let s = Scenario {
            rates: vec![0.1, 0.2],
            steps: 20_000,
            delay: 0,
            checkpoints: vec![2_000, 20_000],
            ..Scenario::default()
        };
        let runs: Vec<Outcome> = (0..8).map(|seed| simulate(&thompson(), &s, seed)).collect();
        let mean = |k: usize| runs.iter().map(|o| o.regret[k].1).sum::<f64>() / runs.len() as f64;
        // Linear regret would grow 10x over the decade; logarithmic grows by about ln(20000)/ln(2000) = 1.3.
        assert!(mean(1) < 3.0 * mean(0), "{} -> {}", mean(0), mean(1));
        assert!(
            runs.iter().all(|o| o.pulls[1] > 18_000),
            "{:?}",
            runs.iter().map(|o| &o.pulls).collect::<Vec<_>>()
        );
    }

    /// Epsilon-greedy keeps exploring: once the greedy arm is right, its regret per step is
    /// epsilon * (K - 1) / K * gap, so 0.1 * 1/2 * 0.8 = 0.04 per step for rates (0.1, 0.9).
    #[test]
    fn epsilon_greedy_regret_is_linear_with_the_closed_form_slope() {
        let mut b = thompson();
        b.policy = Policy::EpsilonGreedy;
        let s = Scenario {
            rates: vec![0.1, 0.9],
            steps: 60_000,
            delay: 0,
            checkpoints: vec![10_000, 60_000],
            ..Scenario::default()
        };
        let slopes: Vec<f64> = (0..4)
            .map(|seed| {
                let o = simulate(&b, &s, seed);
                (o.regret[1].1 - o.regret[0].1) / 50_000.0
            })
            .collect();
        let mean = slopes.iter().sum::<f64>() / slopes.len() as f64;
        // Binomial noise on 4 x 50,000 steps: sd of the mean slope is about 0.8 * sqrt(0.05 * 0.95 / 200000) = 0.0004.
        assert!((mean - 0.04).abs() < 0.002, "{slopes:?}");
    }

    /// KL(0.1 || 0.2) = 0.1 ln(0.5) + 0.9 ln(0.9/0.8) = 0.036690; coefficient 0.1 / 0.036690 = 2.7255.
    #[test]
    fn lai_robbins_coefficient_by_hand() {
        assert!((lai_robbins_coefficient(&[0.1, 0.2]) - 2.7255).abs() < 1e-3);
    }

    /// Rates 0.2 and 0.8 swap after step 5,000. Plain Thompson carries 5,000 trials of evidence
    /// for arm 1, whose mean falls slowly, (4000 + 0.2 k) / (5000 + k) after k bad trials (0.7 at
    /// k = 1,000), while arm 0's posterior rests on a handful of trials at 0.2 and is rarely drawn
    /// above it: the 1,000 steps after the swap stay mostly on the old arm. With gamma = 0.99 the
    /// memory is about 100 trials and the new best arm takes over within a few hundred steps.
    #[test]
    fn discounting_follows_a_swap_that_plain_thompson_is_slow_to_see() {
        let s = Scenario {
            rates: vec![0.2, 0.8],
            steps: 6_000,
            swap: Some(Swap {
                at: 5_000,
                a: 0,
                b: 1,
            }),
            windows: vec![(0, 5_000), (5_000, 6_000)],
            ..Scenario::default()
        };
        let mut discounted = thompson();
        discounted.discount = 0.99;
        for seed in 0..4 {
            let plain = simulate(&thompson(), &s, seed);
            let disc = simulate(&discounted, &s, seed);
            assert_eq!(plain.window_pulls[0].iter().sum::<u64>(), 5_000);
            assert_eq!(disc.window_pulls[1].iter().sum::<u64>(), 1_000);
            assert!(plain.window_share(0, 1) > 0.95, "{plain:?}");
            assert!(disc.window_share(0, 1) > 0.9, "{disc:?}");
            assert!(plain.window_share(1, 0) < 0.5, "{plain:?}");
            assert!(disc.window_share(1, 0) > 0.85, "{disc:?}");
        }
    }

    #[test]
    fn delay_holds_decisions_to_the_last_flush() {
        // With a delay longer than the run, the policy never sees a count: Thompson stays at 50/50.
        let s = Scenario {
            rates: vec![0.1, 0.9],
            steps: 4_000,
            delay: 1_000_000,
            checkpoints: vec![],
            ..Scenario::default()
        };
        let o = simulate(&thompson(), &s, 5);
        assert!(
            (o.pulls[0] as f64 / 4000.0 - 0.5).abs() < 0.05,
            "{:?}",
            o.pulls
        );
    }
}
