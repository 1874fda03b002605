//! A bandit simulation: policies against Bernoulli arms with known success rates, with the delayed
//! view the filter has (workers decide from the shared totals of the last tick). Reports cumulative
//! pseudo-regret, `sum over steps of (best rate - chosen arm's rate)`, at checkpoints.

use fastrand::Rng;

use crate::bandit::choose;
use crate::config::Bandit;
use crate::counters::ArmCounts;

#[derive(Debug, Clone)]
pub struct Scenario {
    pub rates: Vec<f64>,
    pub steps: u64,
    /// Decisions see counts as of the last flush, every `delay` steps (0: after every step).
    pub delay: u64,
    pub checkpoints: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// (step, cumulative regret) at each checkpoint.
    pub regret: Vec<(u64, f64)>,
    pub pulls: Vec<u64>,
}

pub fn simulate(b: &Bandit, s: &Scenario, seed: u64) -> Outcome {
    let mut rng = Rng::with_seed(seed);
    let best = s.rates.iter().cloned().fold(f64::MIN, f64::max);
    let weights = vec![1.0; s.rates.len()];
    let mut shared = vec![ArmCounts::default(); s.rates.len()];
    let mut pending = shared.clone();
    let mut pulls = vec![0u64; s.rates.len()];
    let mut regret = 0.0;
    let mut out = Vec::with_capacity(s.checkpoints.len());
    for step in 1..=s.steps {
        let arm = choose(b, &shared, &weights, &mut rng).unwrap_or(0);
        let reward = if rng.f64() < s.rates[arm] { 1.0 } else { 0.0 };
        pending[arm].add_trial(reward);
        pulls[arm] += 1;
        regret += best - s.rates[arm];
        if s.delay == 0 || step % s.delay == 0 {
            for (sh, p) in shared.iter_mut().zip(pending.iter_mut()) {
                *sh = sh.saturating_add(std::mem::take(p));
            }
        }
        if s.checkpoints.contains(&step) {
            out.push((step, regret));
        }
    }
    Outcome { regret: out, pulls }
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

fn bernoulli_kl(p: f64, q: f64) -> f64 {
    p * libm::log(p / q) + (1.0 - p) * libm::log((1.0 - p) / (1.0 - q))
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

    #[test]
    fn delay_holds_decisions_to_the_last_flush() {
        // With a delay longer than the run, the policy never sees a count: Thompson stays at 50/50.
        let s = Scenario {
            rates: vec![0.1, 0.9],
            steps: 4_000,
            delay: 1_000_000,
            checkpoints: vec![],
        };
        let o = simulate(&thompson(), &s, 5);
        assert!(
            (o.pulls[0] as f64 / 4000.0 - 0.5).abs() < 0.05,
            "{:?}",
            o.pulls
        );
    }
}
