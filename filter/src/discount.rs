//! Discounted counts for discounted Thompson sampling (Raj & Kalyani, "Taming non-stationary
//! bandits: a Bayesian approach", 2017): every trial's weight decays by `gamma` per later trial,
//! so an arm whose rate changed is judged by its recent trials, with an effective memory of about
//! `1 / (1 - gamma)` trials. The filter only ever sees cumulative counts (the fleet's totals plus
//! the worker's own), so this type turns successive cumulative snapshots into discounted counts;
//! it is pure, and its memory is two numbers and one snapshot per arm.

use crate::counters::ArmCounts;

/// One arm's discounted trials and reward sum.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Decayed {
    pub trials: f64,
    pub reward: f64,
}

/// Discounted counts and the cumulative snapshot they were last brought up to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Discounted {
    counts: Vec<Decayed>,
    seen: Vec<ArmCounts>,
}

impl Discounted {
    pub fn new(arms: usize) -> Self {
        Self {
            counts: vec![Decayed::default(); arms],
            seen: vec![ArmCounts::default(); arms],
        }
    }

    pub fn counts(&self) -> &[Decayed] {
        &self.counts
    }

    /// Brings the counts up to `cumulative`. With `n` trials new since the last update (over all
    /// arms), the kept counts decay by `gamma^n`, as `n` steps of the paper's per-step decay would.
    /// The order of the new trials inside the batch is unknown, so each is weighted by the mean
    /// decay of a batch spread evenly over the `n` steps, `(1 - gamma^n) / (n (1 - gamma))`:
    /// exact for a batch of one, and the total weight stays below `1 / (1 - gamma)` however the
    /// trials are batched. An arm whose cumulative count went down (a live state that dropped
    /// the fleet's counts) adds nothing and is re-based; its kept counts stay. No allocation.
    pub fn update(&mut self, cumulative: &[ArmCounts], gamma: f64) {
        let new_trials: u64 = self
            .seen
            .iter()
            .zip(cumulative)
            .map(|(seen, now)| now.trials.saturating_sub(seen.trials))
            .sum();
        let n = new_trials as f64;
        let decay = libm::pow(gamma, n);
        let batch_weight = if new_trials == 0 || gamma >= 1.0 {
            1.0
        } else {
            (1.0 - decay) / (n * (1.0 - gamma))
        };
        for ((kept, seen), now) in self.counts.iter_mut().zip(&mut self.seen).zip(cumulative) {
            let trials = now.trials.saturating_sub(seen.trials) as f64;
            let reward = now.reward_micros.saturating_sub(seen.reward_micros) as f64
                / crate::counters::REWARD_SCALE;
            kept.trials = kept.trials * decay + trials * batch_weight;
            kept.reward = kept.reward * decay + reward * batch_weight;
            *seen = *now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::bandit::tests::counts as snap;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// One trial at a time is the paper's recursion: with gamma = 0.5, arm 0 succeeds, then arm 1
    /// fails, then arm 0 succeeds: arm 0 holds 1 * 0.25 + 1 = 1.25 trials and reward, arm 1
    /// 1 * 0.5 = 0.5 trials and no reward.
    #[test]
    fn single_trials_follow_the_per_step_recursion() {
        let mut d = Discounted::new(2);
        for s in [&[(1, 1), (0, 0)], &[(1, 1), (1, 0)], &[(2, 2), (1, 0)]] {
            d.update(&snap(s), 0.5);
        }
        let c = d.counts();
        assert!(
            close(c[0].trials, 1.25) && close(c[0].reward, 1.25),
            "{c:?}"
        );
        assert!(close(c[1].trials, 0.5) && close(c[1].reward, 0.0), "{c:?}");
    }

    /// A batch of n trials weighs sum over k < n of gamma^k = (1 - gamma^n) / (1 - gamma) in
    /// total (gamma = 0.9, n = 10: (1 - 0.9^10) / 0.1 = 6.5132), and earlier counts decay by
    /// gamma^n (0.9^10 = 0.34868).
    #[test]
    fn a_batch_weighs_what_its_steps_would() {
        let mut d = Discounted::new(2);
        d.update(&snap(&[(4, 2), (6, 0)]), 0.9);
        let total: f64 = d.counts().iter().map(|c| c.trials).sum();
        assert!(close(total, 6.513_215_599), "{total}");
        assert!(close(d.counts()[0].reward / d.counts()[0].trials, 0.5));
        let before = d.counts()[1].trials;
        d.update(&snap(&[(14, 2), (6, 0)]), 0.9);
        assert!(close(d.counts()[1].trials, before * 0.348_678_440_1));
        // Unchanged snapshot: nothing decays.
        let kept = d.clone();
        d.update(&snap(&[(14, 2), (6, 0)]), 0.9);
        assert_eq!(d, kept);
    }

    #[test]
    fn gamma_one_is_the_cumulative_count_and_a_drop_only_rebases() {
        let mut d = Discounted::new(2);
        d.update(&snap(&[(10, 3), (5, 5)]), 1.0);
        d.update(&snap(&[(12, 4), (5, 5)]), 1.0);
        assert_eq!(
            d.counts(),
            &[
                Decayed {
                    trials: 12.0,
                    reward: 4.0
                },
                Decayed {
                    trials: 5.0,
                    reward: 5.0
                }
            ]
        );
        d.update(&snap(&[(2, 0), (5, 5)]), 1.0);
        assert_eq!(d.counts()[0].trials, 12.0, "a lower total removes nothing");
        d.update(&snap(&[(3, 1), (5, 5)]), 1.0);
        assert_eq!(
            d.counts()[0].trials,
            13.0,
            "and counts on from the new base"
        );
        // A snapshot of another length touches only the arms both have.
        d.update(&snap(&[(4, 1)]), 1.0);
        assert_eq!(d.counts()[0].trials, 14.0);
    }
}
