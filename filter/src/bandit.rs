//! Bandit policies: epsilon-greedy, Thompson sampling (Beta-Bernoulli, optionally discounted),
//! top-two Thompson sampling, UCB1 and KL-UCB, with a minimum share per arm and a warm-up. Pure:
//! counts and the RNG come in, an arm index goes out. Arms with weight 0 (rolled back) are never
//! chosen.

use fastrand::Rng;

use crate::config::{Bandit, Policy};
use crate::counters::ArmCounts;
use crate::discount::Decayed;
use crate::{kl_ucb, sample};

/// Posterior draws top-two Thompson sampling makes, at most, to find a challenger after the
/// first draw named the leader. When the leader is all but certain no draw will name another
/// arm, so the bound is what a request pays then (each draw is two gamma variates per arm); the
/// last draw's runner-up stands in for the challenger.
pub const TOP_TWO_MAX_REDRAWS: u32 = 4;

/// What a policy decides from: the cumulative counts (the fleet's shared totals plus the
/// worker's unflushed ones) and, when `bandit.discount` < 1, their discounted form, which the
/// Thompson policies sample instead. Warm-up and untried arms always go by the cumulative counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Evidence<'a> {
    pub counts: &'a [ArmCounts],
    pub discounted: Option<&'a [Decayed]>,
}

impl<'a> Evidence<'a> {
    pub fn cumulative(counts: &'a [ArmCounts]) -> Self {
        Self {
            counts,
            discounted: None,
        }
    }

    /// The Beta posterior's (alpha, beta) of arm `i`: the prior plus successes and failures,
    /// discounted ones when there are.
    fn posterior(&self, b: &Bandit, i: usize) -> (f64, f64) {
        let (trials, successes) = match self.discounted.and_then(|d| d.get(i)) {
            Some(d) => (d.trials, d.reward),
            None => {
                let c = self.counts.get(i).copied().unwrap_or_default();
                (c.trials as f64, c.reward())
            }
        };
        let failures = (trials - successes).max(0.0);
        (b.prior_alpha + successes, b.prior_beta + failures)
    }
}

/// The arm for the next request, from cumulative counts alone (see [`decide`]).
pub fn choose(b: &Bandit, counts: &[ArmCounts], weights: &[f64], rng: &mut Rng) -> Option<usize> {
    decide(b, Evidence::cumulative(counts), weights, rng)
}

/// The arm for the next request; `None` when no arm has a positive weight.
pub fn decide(b: &Bandit, ev: Evidence<'_>, weights: &[f64], rng: &mut Rng) -> Option<usize> {
    let counts = ev.counts;
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
    let mut thompson_draw = |rng: &mut Rng, i: usize| {
        let (alpha, beta) = ev.posterior(b, i);
        sample::beta(rng, alpha, beta)
    };
    match b.policy {
        Policy::EpsilonGreedy => {
            if rng.f64() < b.epsilon {
                return uniform(rng, &live);
            }
            argmax(rng, counts.len(), &live, &mut |_, i| {
                mean_or_infinity(&counts[i])
            })
        }
        Policy::Thompson => argmax(rng, counts.len(), &live, &mut thompson_draw),
        Policy::TopTwoThompson => {
            let (leader, runner_up) = top_two(rng, counts.len(), &live, &mut thompson_draw)?;
            if n_live == 1 || rng.f64() < b.top_two_beta {
                return Some(leader);
            }
            let mut fallback = runner_up;
            for _ in 0..TOP_TWO_MAX_REDRAWS {
                let (best, second) = top_two(rng, counts.len(), &live, &mut thompson_draw)?;
                if best != leader {
                    return Some(best);
                }
                fallback = second;
            }
            fallback.or(Some(leader))
        }
        Policy::Ucb1 | Policy::KlUcb => {
            let untried = |i: usize| live(i) && counts[i].trials == 0;
            if let Some(i) = uniform(rng, &untried) {
                return Some(i);
            }
            let total: u64 = (0..counts.len())
                .filter(|&i| live(i))
                .map(|i| counts[i].trials)
                .sum();
            let log_total = libm::log(total.max(1) as f64);
            if b.policy == Policy::KlUcb {
                return kl_ucb_argmax(rng, counts, &live, log_total);
            }
            argmax(rng, counts.len(), &live, &mut |_, i| {
                let n = counts[i].trials as f64;
                counts[i].reward() / n + libm::sqrt(2.0 * log_total / n)
            })
        }
    }
}

/// The live arm with the highest KL-UCB index (every live arm has trials). The exact index,
/// a Newton search, is computed first for the arm with the highest closed-form bound on it, then
/// only for arms whose bound still reaches that index: once the counts have settled the others'
/// bounds fall short, and a decision costs one search instead of one per arm.
fn kl_ucb_argmax(
    rng: &mut Rng,
    counts: &[ArmCounts],
    live: &dyn Fn(usize) -> bool,
    log_total: f64,
) -> Option<usize> {
    let mean_and_n = |i: usize| {
        let n = counts[i].trials as f64;
        (counts[i].reward() / n, n)
    };
    let bound = |i: usize| {
        let (mean, n) = mean_and_n(i);
        kl_ucb::upper_bound(mean, log_total / n)
    };
    let first = argmax(rng, counts.len(), live, &mut |_, i| bound(i))?;
    let (mean, n) = mean_and_n(first);
    let floor = kl_ucb::index(mean, n, log_total);
    argmax(rng, counts.len(), live, &mut |_, i| {
        if i == first {
            floor
        } else if bound(i) < floor {
            f64::NEG_INFINITY
        } else {
            let (mean, n) = mean_and_n(i);
            kl_ucb::index(mean, n, log_total)
        }
    })
}

/// A per-arm score, behind a pointer so that the ranking is compiled once, not once per policy
/// (wasm size; the call is cheap next to a posterior draw).
type Score<'a> = &'a mut dyn FnMut(&mut Rng, usize) -> f64;

/// The index with the highest score among those `keep` allows; ties broken uniformly at random, so
/// equal arms share traffic instead of the first one taking it all.
fn argmax(
    rng: &mut Rng,
    n: usize,
    keep: &dyn Fn(usize) -> bool,
    score: Score<'_>,
) -> Option<usize> {
    top_two(rng, n, keep, score).map(|(best, _)| best)
}

/// The best index of one round of scores (as [`argmax`]) and the second best, if any.
fn top_two(
    rng: &mut Rng,
    n: usize,
    keep: &dyn Fn(usize) -> bool,
    score: Score<'_>,
) -> Option<(usize, Option<usize>)> {
    let mut best: Option<(usize, f64)> = None;
    let mut second: Option<(usize, f64)> = None;
    let mut ties = 0;
    for i in (0..n).filter(|&i| keep(i)) {
        let s = score(rng, i);
        if s.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if s == b => {
                ties += 1;
                if rng.usize(..ties) == 0 {
                    second = best;
                    best = Some((i, s));
                } else {
                    second = Some((i, s));
                }
            }
            Some((_, b)) if s < b => {
                if second.is_none_or(|(_, t)| s > t) {
                    second = Some((i, s));
                }
            }
            _ => {
                second = best;
                best = Some((i, s));
                ties = 1;
            }
        }
    }
    best.map(|(i, _)| (i, second.map(|(j, _)| j)))
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Counts from (trials, whole rewards) pairs.
    pub(crate) fn counts(pairs: &[(u64, u64)]) -> Vec<ArmCounts> {
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

    /// KL-UCB's bonus shrinks near 0 where UCB1's does not. T = 1000: arm 0 (100 trials, no
    /// success) has KL index 1 - 1000^(-1/100) = 0.0667 by hand, but UCB1 gives it
    /// sqrt(2 ln 1000 / 100) = 0.3717; arm 1 (900 trials, mean 0.15) has KL index 0.19771
    /// (scipy brentq, see `kl_ucb`'s tests) and UCB1 0.2739. UCB1 picks arm 0, KL-UCB arm 1.
    #[test]
    fn kl_ucb_picks_the_highest_kl_index_and_untried_arms_first() {
        let c = counts(&[(100, 0), (900, 135)]);
        let mut rng = Rng::with_seed(1);
        let kl = Bandit::with_policy(Policy::KlUcb);
        assert_eq!(choose(&kl, &c, &[1.0, 1.0], &mut rng), Some(1));
        let ucb1 = Bandit::with_policy(Policy::Ucb1);
        assert_eq!(choose(&ucb1, &c, &[1.0, 1.0], &mut rng), Some(0));
        let fresh = counts(&[(100, 0), (900, 135), (0, 0)]);
        assert_eq!(choose(&kl, &fresh, &[1.0; 3], &mut rng), Some(2));
        assert_eq!(choose(&kl, &fresh, &[1.0, 1.0, 0.0], &mut rng), Some(1));
    }

    /// Skipping arms by their bound never changes the winner: against the plain argmax of the
    /// exact indices over random counts (ties have probability ~0 here).
    #[test]
    fn kl_ucb_pruning_keeps_the_argmax_of_the_indices() {
        let b = Bandit::with_policy(Policy::KlUcb);
        let mut rng = Rng::with_seed(7);
        for _ in 0..2000 {
            let k = rng.usize(1..=6);
            let c: Vec<ArmCounts> = (0..k)
                .map(|_| {
                    let trials = rng.u64(1..100_000);
                    ArmCounts {
                        trials,
                        reward_micros: rng.u64(..=trials) * 1_000_000,
                    }
                })
                .collect();
            let w: Vec<f64> = (0..k)
                .map(|i| if i == 0 || rng.bool() { 1.0 } else { 0.0 })
                .collect();
            let log_t = libm::log(
                c.iter()
                    .zip(&w)
                    .filter(|(_, &w)| w > 0.0)
                    .map(|(c, _)| c.trials)
                    .sum::<u64>() as f64,
            );
            let index = |i: usize| {
                let n = c[i].trials as f64;
                kl_ucb::index(c[i].reward() / n, n, log_t)
            };
            let want = (0..k)
                .filter(|&i| w[i] > 0.0)
                .max_by(|&x, &y| index(x).total_cmp(&index(y)));
            assert_eq!(choose(&b, &c, &w, &mut rng), want, "{c:?} {w:?}");
        }
    }

    /// Posteriors Beta(101, 901) and Beta(901, 101) never swap order in a draw (P = 6e-322,
    /// scipy quad), so no redraw finds a challenger and the runner-up stands in: the leader gets
    /// exactly a beta share, binomial noise aside (sd sqrt(0.21 / 40000) = 0.0023).
    #[test]
    fn top_two_gives_a_clear_leader_its_beta_share() {
        let c = counts(&[(1000, 100), (1000, 900)]);
        for beta in [0.5, 0.3, 0.9] {
            let mut b = Bandit::with_policy(Policy::TopTwoThompson);
            b.top_two_beta = beta;
            let s = shares(&b, &c, &[1.0, 1.0], 40_000);
            assert!((s[1] - beta).abs() < 0.01, "beta {beta}: {s:?}");
        }
        // Two equal challengers split the rest evenly; a lone live arm takes everything.
        let b = Bandit::with_policy(Policy::TopTwoThompson);
        let three = counts(&[(1000, 100), (1000, 900), (1000, 100)]);
        let s = shares(&b, &three, &[1.0; 3], 40_000);
        assert!(
            (s[1] - 0.5).abs() < 0.01 && (s[0] - 0.25).abs() < 0.01,
            "{s:?}"
        );
        let s = shares(&b, &three, &[1.0, 0.0, 0.0], 1000);
        assert_eq!(s[0], 1.0);
    }

    /// Two arms: the first draw names arm 1 with a = P(Beta(21, 81) > Beta(11, 91)) = 0.975173
    /// (scipy.integrate.quad of pdf x cdf); with probability beta that arm plays, otherwise the
    /// challenger is the other arm. So arm 1's share is beta a + (1 - beta)(1 - a) = 0.785104 for
    /// beta = 0.8, and exactly 1/2 for beta = 1/2 whatever the counts.
    #[test]
    fn top_two_share_of_two_arms_is_hand_computable() {
        let c = counts(&[(100, 10), (100, 20)]);
        let mut b = Bandit::with_policy(Policy::TopTwoThompson);
        b.top_two_beta = 0.8;
        let s = shares(&b, &c, &[1.0, 1.0], 40_000);
        assert!((s[1] - 0.785_104).abs() < 0.01, "{s:?}");
        b.top_two_beta = 0.5;
        let s = shares(&b, &c, &[1.0, 1.0], 40_000);
        assert!((s[1] - 0.5).abs() < 0.01, "{s:?}");
    }

    /// Discounted counts replace the cumulative ones in the posterior: cumulative counts that
    /// favour arm 0 lose to discounted counts that favour arm 1 (Beta(1, 91) against Beta(21, 81),
    /// P(arm 0 wins) < 1e-6), while warm-up still goes by the cumulative trials.
    #[test]
    fn thompson_samples_the_discounted_counts_when_given() {
        let c = counts(&[(1000, 900), (1000, 100)]);
        let d = [
            Decayed {
                trials: 90.0,
                reward: 0.0,
            },
            Decayed {
                trials: 100.0,
                reward: 20.0,
            },
        ];
        let ev = Evidence {
            counts: &c,
            discounted: Some(&d),
        };
        let mut rng = Rng::with_seed(9);
        for policy in [Policy::Thompson, Policy::TopTwoThompson] {
            let mut b = Bandit::with_policy(policy);
            b.top_two_beta = 0.99;
            let ones = (0..1000)
                .filter(|_| decide(&b, ev, &[1.0, 1.0], &mut rng) == Some(1))
                .count();
            assert!(ones > 970, "{policy:?}: {ones}");
        }
        let mut b = Bandit::with_policy(Policy::Thompson);
        b.warmup = 2000;
        let c = counts(&[(1000, 900), (5000, 100)]);
        let ev = Evidence {
            counts: &c,
            discounted: Some(&d),
        };
        assert_eq!(decide(&b, ev, &[1.0, 1.0], &mut rng), Some(0));
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
