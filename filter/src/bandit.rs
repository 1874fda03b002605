//! Bandit policies: epsilon-greedy, Thompson sampling (Beta-Bernoulli) and UCB1, with a minimum share
//! per arm and a warm-up. Pure: counts and the RNG come in, an arm index goes out. Arms with weight 0
//! (rolled back) are never chosen.

use fastrand::Rng;

use crate::config::{Bandit, Policy};
use crate::counters::ArmCounts;
use crate::sample;

/// The arm for the next request, from the counts the worker knows (shared totals plus its own
/// unflushed ones); `None` when no arm has a positive weight.
pub fn choose(b: &Bandit, counts: &[ArmCounts], weights: &[f64], rng: &mut Rng) -> Option<usize> {
    let live = |i: usize| weights.get(i).is_some_and(|&w| w > 0.0);
    let n_live = (0..counts.len()).filter(|&i| live(i)).count();
    if n_live == 0 {
        return None;
    }
    let uniform =
        |rng: &mut Rng, keep: &dyn Fn(usize) -> bool| random_among(rng, counts.len(), keep);

    if b.min_share > 0.0 && rng.f64() < b.min_share * n_live as f64 {
        return uniform(rng, &live);
    }
    if b.warmup > 0 {
        let cold = |i: usize| live(i) && counts[i].trials < b.warmup;
        if let Some(i) = uniform(rng, &cold) {
            return Some(i);
        }
    }
    match b.policy {
        Policy::EpsilonGreedy => {
            if rng.f64() < b.epsilon {
                return uniform(rng, &live);
            }
            argmax(rng, counts.len(), &live, |_, i| {
                mean_or_infinity(&counts[i])
            })
        }
        Policy::Thompson => argmax(rng, counts.len(), &live, |rng, i| {
            let c = &counts[i];
            let successes = c.reward();
            let failures = (c.trials as f64 - successes).max(0.0);
            sample::beta(rng, b.prior_alpha + successes, b.prior_beta + failures)
        }),
        Policy::Ucb1 => {
            let untried = |i: usize| live(i) && counts[i].trials == 0;
            if let Some(i) = uniform(rng, &untried) {
                return Some(i);
            }
            let total: u64 = (0..counts.len())
                .filter(|&i| live(i))
                .map(|i| counts[i].trials)
                .sum();
            let log_total = libm::log(total.max(1) as f64);
            argmax(rng, counts.len(), &live, |_, i| {
                let n = counts[i].trials as f64;
                counts[i].reward() / n + libm::sqrt(2.0 * log_total / n)
            })
        }
    }
}

fn mean_or_infinity(c: &ArmCounts) -> f64 {
    if c.trials == 0 {
        f64::INFINITY
    } else {
        c.reward() / c.trials as f64
    }
}

/// Uniform among `0..n` where `keep` holds (reservoir sampling, no allocation).
fn random_among(rng: &mut Rng, n: usize, keep: &dyn Fn(usize) -> bool) -> Option<usize> {
    let mut chosen = None;
    for (seen, i) in (0..n).filter(|&i| keep(i)).enumerate() {
        if rng.usize(..=seen) == 0 {
            chosen = Some(i);
        }
    }
    chosen
}

/// The index with the highest score among those `keep` allows; ties broken uniformly at random, so
/// equal arms share traffic instead of the first one taking it all.
fn argmax(
    rng: &mut Rng,
    n: usize,
    keep: &dyn Fn(usize) -> bool,
    mut score: impl FnMut(&mut Rng, usize) -> f64,
) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    let mut ties = 0;
    for i in (0..n).filter(|&i| keep(i)) {
        let s = score(rng, i);
        if s.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if s < b => {}
            Some((_, b)) if s == b => {
                ties += 1;
                if rng.usize(..ties) == 0 {
                    best = Some((i, s));
                }
            }
            _ => {
                best = Some((i, s));
                ties = 1;
            }
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(u64, u64)]) -> Vec<ArmCounts> {
        pairs
            .iter()
            .map(|&(t, r)| ArmCounts {
                trials: t,
                reward_micros: r * 1_000_000,
            })
            .collect()
    }

    fn shares(b: &Bandit, c: &[ArmCounts], w: &[f64], n: usize) -> Vec<f64> {
        let mut rng = Rng::with_seed(42);
        let mut hits = vec![0usize; c.len()];
        for _ in 0..n {
            hits[choose(b, c, w, &mut rng).unwrap()] += 1;
        }
        hits.iter().map(|&h| h as f64 / n as f64).collect()
    }

    /// epsilon = 0.1 over 3 arms: the greedy arm gets 0.9 + 0.1/3 = 0.9333, the others 0.0333 each.
    #[test]
    fn epsilon_greedy_shares_are_hand_computable() {
        let s = shares(
            &Bandit::with_policy(Policy::EpsilonGreedy),
            &counts(&[(100, 50), (100, 70), (100, 10)]),
            &[1.0; 3],
            100_000,
        );
        for (got, want) in s.iter().zip([0.1 / 3.0, 0.9 + 0.1 / 3.0, 0.1 / 3.0]) {
            assert!((got - want).abs() < 0.005, "{s:?}");
        }
    }

    /// UCB1 by hand: T = 30, arm 0 mean 0.5 (n = 10) -> 0.5 + sqrt(2 ln 30 / 10) = 1.3248;
    /// arm 1 mean 0.6 (n = 20) -> 0.6 + sqrt(2 ln 30 / 20) = 1.1832: arm 0 wins despite the lower mean.
    #[test]
    fn ucb1_picks_the_highest_upper_bound_and_untried_arms_first() {
        let b = Bandit::with_policy(Policy::Ucb1);
        let mut rng = Rng::with_seed(1);
        assert_eq!(
            choose(&b, &counts(&[(10, 5), (20, 12)]), &[1.0, 1.0], &mut rng),
            Some(0)
        );
        assert_eq!(
            choose(&b, &counts(&[(10, 5), (0, 0)]), &[1.0, 1.0], &mut rng),
            Some(1)
        );
        // A rolled-back arm is never tried, untried or not.
        assert_eq!(
            choose(&b, &counts(&[(10, 5), (0, 0)]), &[1.0, 0.0], &mut rng),
            Some(0)
        );
    }

    /// Thompson: P(Beta(11, 91) > Beta(21, 81)) (means 0.108 vs 0.206) is about 0.025 by normal
    /// approximation of the difference (sd 0.049, gap 0.098: z = 1.99, tail 0.023).
    #[test]
    fn thompson_prefers_the_better_posterior_in_proportion() {
        let s = shares(
            &Bandit::with_policy(Policy::Thompson),
            &counts(&[(100, 10), (100, 20)]),
            &[1.0, 1.0],
            40_000,
        );
        assert!((s[0] - 0.023).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn min_share_and_warmup_keep_arms_alive() {
        let mut b = Bandit::with_policy(Policy::EpsilonGreedy);
        b.epsilon = 0.0;
        b.min_share = 0.1;
        // Greedy would give arm 0 nothing; the floor gives it 0.1 (0.2 uniform over two arms).
        let s = shares(&b, &counts(&[(100, 10), (100, 90)]), &[1.0, 1.0], 100_000);
        assert!((s[0] - 0.1).abs() < 0.005, "{s:?}");
        b.min_share = 0.0;
        b.warmup = 50;
        let s = shares(&b, &counts(&[(10, 1), (100, 90)]), &[1.0, 1.0], 1000);
        assert_eq!(s[0], 1.0, "the arm below warm-up gets every request");
    }

    #[test]
    fn no_live_arm_means_no_choice_and_ties_are_shared() {
        let b = Bandit::with_policy(Policy::EpsilonGreedy);
        let mut rng = Rng::with_seed(3);
        assert_eq!(choose(&b, &counts(&[(1, 1)]), &[0.0], &mut rng), None);
        let s = shares(
            &Bandit::with_policy(Policy::Ucb1),
            &counts(&[(50, 25), (50, 25)]),
            &[1.0, 1.0],
            20_000,
        );
        assert!((s[0] - 0.5).abs() < 0.02, "{s:?}");
    }
}
