//! How a bandit rollout ends: the probability that each arm is the best, from the Beta posteriors
//! of the fleet's counts, computed by quadrature rather than by sampling so that status, the
//! decision and `make sim` agree to the digit and every call takes bounded time.
//!
//! P(arm i is best) = integral of f_i(x) * product over j != i of F_j(x) dx, with f and F the Beta
//! posterior densities and distribution functions. Each arm has its own grid (`POINTS_PER_ARM`
//! across mean +- 20 sd, clipped to [0, 1]), so a narrow posterior (10^7 trials) is resolved as
//! finely as a wide one; F_j is the trapezoid cumulative integral of f_j on j's grid,
//! interpolated, and arm i's integral runs over i's grid. Checked against scipy's adaptive
//! quadrature (`bestarm::tests`) to 1e-4, posteriors piled against 0 or 1 included.

use serde::Serialize;
use statrs::function::beta::ln_beta;

/// Grid points of each arm. 2048 across 40 sd: a spacing of 0.02 sd. The trapezoid's error is
/// of order (spacing / scale)^2 / 12 where a posterior is cut off by 0 or 1 at its peak (there
/// Beta(n, 1) is an exponential of scale 1/n): 3e-5, far below the 1e-3 that matters for a
/// 0.95 threshold.
const POINTS_PER_ARM: usize = 2048;
/// Half-width of an arm's own grid in posterior standard deviations. A posterior piled against
/// 0 or 1 (no failure in 10^7 trials) has an exponential tail, not a normal one: beyond 20 sd
/// it holds less than 1e-8 (e^-21 for Beta(n, 1)).
const SPREAD_SD: f64 = 20.0;

/// One arm's Beta posterior: Beta(prior + reward, prior + trials - reward).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BetaPosterior {
    pub alpha: f64,
    pub beta: f64,
}

impl BetaPosterior {
    /// Beta(1 + reward, 1 + trials - reward), the uniform prior status uses; `None` for counts
    /// that cannot be (reward above trials, or not finite).
    pub fn from_counts(trials: u64, reward: f64) -> Option<Self> {
        let failures = trials as f64 - reward;
        (reward.is_finite() && reward >= 0.0 && failures >= 0.0).then_some(Self {
            alpha: 1.0 + reward,
            beta: 1.0 + failures,
        })
    }

    fn mean(&self) -> f64 {
        self.alpha / (self.alpha + self.beta)
    }

    fn sd(&self) -> f64 {
        let n = self.alpha + self.beta;
        (self.alpha * self.beta / (n * n * (n + 1.0))).sqrt()
    }

    fn density(&self, x: f64, ln_norm: f64) -> f64 {
        let ln = |shape: f64, v: f64| {
            if shape == 1.0 {
                0.0
            } else {
                (shape - 1.0) * v.ln()
            }
        };
        (ln(self.alpha, x) + ln(self.beta, 1.0 - x) - ln_norm).exp()
    }
}

/// P(best) for each arm (in the order given), summing to 1; `None` with no arm or a posterior
/// whose shapes are not finite and >= 1.
pub fn prob_best(arms: &[BetaPosterior]) -> Option<Vec<f64>> {
    if arms.is_empty()
        || arms.iter().any(|a| {
            !(a.alpha.is_finite() && a.beta.is_finite() && a.alpha >= 1.0 && a.beta >= 1.0)
        })
    {
        return None;
    }
    if arms.len() == 1 {
        return Some(vec![1.0]);
    }
    let tables: Vec<Table> = arms.iter().map(Table::new).collect();
    let mut p: Vec<f64> = tables
        .iter()
        .enumerate()
        .map(|(i, own)| {
            // Over arm i's own grid only: a panel never spans a gap where its density is not
            // resolved (the error a shared grid makes for a posterior piled against 0 or 1).
            let integrand: Vec<f64> = own
                .x
                .iter()
                .zip(&own.f)
                .map(|(&x, &f)| {
                    let others: f64 = tables
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .map(|(_, t)| t.cdf(x))
                        .product();
                    f * others
                })
                .collect();
            trapezoid(&own.x, &integrand) / own.mass
        })
        .collect();
    let sum: f64 = p.iter().sum();
    if !(sum.is_finite() && sum > 0.0) {
        return None;
    }
    for v in &mut p {
        *v /= sum;
    }
    Some(p)
}

/// One arm's density on its own grid, and its distribution function from it.
struct Table {
    x: Vec<f64>,
    f: Vec<f64>,
    /// The trapezoid cumulative integral of `f`, normalised to end at 1.
    cumulative: Vec<f64>,
    mass: f64,
}

impl Table {
    fn new(a: &BetaPosterior) -> Self {
        let (m, s) = (a.mean(), a.sd());
        let lo = (m - SPREAD_SD * s).max(0.0);
        let hi = (m + SPREAD_SD * s).min(1.0);
        let step = (hi - lo) / (POINTS_PER_ARM - 1) as f64;
        let x: Vec<f64> = (0..POINTS_PER_ARM).map(|k| lo + step * k as f64).collect();
        let ln_norm = ln_beta(a.alpha, a.beta);
        let f: Vec<f64> = x.iter().map(|&v| a.density(v, ln_norm)).collect();
        let mut acc = 0.0;
        let mut cumulative = Vec::with_capacity(x.len());
        cumulative.push(0.0);
        for k in 1..x.len() {
            acc += 0.5 * (f[k] + f[k - 1]) * (x[k] - x[k - 1]);
            cumulative.push(acc);
        }
        if acc > 0.0 {
            for v in &mut cumulative {
                *v /= acc;
            }
        }
        Self {
            x,
            f,
            cumulative,
            mass: acc,
        }
    }

    /// F(v): 0 below the grid, 1 above it.
    fn cdf(&self, v: f64) -> f64 {
        let k = self.x.partition_point(|&x| x <= v);
        if k == 0 {
            return 0.0;
        }
        if k >= self.x.len() {
            return 1.0;
        }
        let (x0, x1) = (self.x[k - 1], self.x[k]);
        let h = x1 - x0;
        if !(h > 0.0 && self.mass > 0.0) {
            return self.cumulative[k];
        }
        // The integral of the density's linear interpolant, as the trapezoid integrates it.
        let (f0, f1, t) = (self.f[k - 1], self.f[k], v - x0);
        self.cumulative[k - 1] + (f0 * t + (f1 - f0) * t * t / (2.0 * h)) / self.mass
    }
}

fn trapezoid(x: &[f64], f: &[f64]) -> f64 {
    (1..x.len())
        .map(|k| 0.5 * (f[k] + f[k - 1]) * (x[k] - x[k - 1]))
        .sum()
}

/// A bandit's verdict at one check: each arm's P(best) and the leader.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BestArm {
    /// (arm, trials, reward, P(best)), in the spec's order (baseline first).
    pub arms: Vec<(String, u64, f64, f64)>,
    /// Index into `arms` of the arm most probably best.
    pub leader: usize,
    pub method: &'static str,
}

/// How `BestArm` figures are computed, for status and the record.
pub const METHOD: &str = "P(best) by quadrature over Beta(1 + rewards, 1 + trials - rewards) posteriors of the fleet's bandit counts (every Envoy's trials and the posted rewards)";

/// `METHOD` in a few words, for event details.
pub const METHOD_SHORT: &str =
    "quadrature over Beta(1 + rewards, 1 + failures) posteriors of the fleet's counts";

impl BestArm {
    /// From each arm's (name, trials, reward); `None` when a count is impossible.
    pub fn from_counts(counts: &[(String, u64, f64)]) -> Option<Self> {
        let posteriors: Vec<BetaPosterior> = counts
            .iter()
            .map(|(_, t, r)| BetaPosterior::from_counts(*t, *r))
            .collect::<Option<_>>()?;
        let p = prob_best(&posteriors)?;
        let leader = p
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        Some(Self {
            arms: counts
                .iter()
                .zip(&p)
                .map(|((name, t, r), &pb)| (name.clone(), *t, *r, pb))
                .collect(),
            leader,
            method: METHOD,
        })
    }

    /// The candidate (any arm but `baseline`) with the highest P(best).
    pub fn best_candidate(&self, baseline: &str) -> Option<String> {
        self.arms
            .iter()
            .filter(|a| a.0 != baseline)
            .max_by(|a, b| a.3.total_cmp(&b.3))
            .map(|a| a.0.clone())
    }

    pub fn leader_name(&self) -> &str {
        &self.arms[self.leader].0
    }

    pub fn leader_p(&self) -> f64 {
        self.arms[self.leader].3
    }

    /// `v1 0.0012 (400 trials), v2 0.9988 (3600 trials)`: the evidence a decision records.
    pub fn describe(&self) -> String {
        self.arms
            .iter()
            .map(|(name, t, r, p)| {
                let rate = if *t > 0 { r / *t as f64 } else { 0.0 };
                format!("{name} {p:.4} ({t} trials, reward rate {rate:.4})")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The bandit's P(best) per live arm from the fleet's counts (every Envoy's trials, the posted
/// rewards); `None` before any trial. A reward above its trials (rewards posted for decisions
/// whose trials the next report brings) counts as at most the trials.
pub fn best_arm(
    spec: &crate::spec::Spec,
    fleet: &std::collections::BTreeMap<String, crate::window::BanditCounts>,
) -> Option<BestArm> {
    let counts: Vec<(String, u64, f64)> = spec
        .arms()
        .into_iter()
        .map(|arm| {
            let c = fleet.get(arm).copied().unwrap_or_default();
            let reward = (c.reward_micros as f64 / 1e6).min(c.trials as f64);
            (arm.to_owned(), c.trials, reward)
        })
        .collect();
    if counts.iter().all(|(_, t, _)| *t == 0) {
        return None;
    }
    BestArm::from_counts(&counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beta(alpha: f64, beta: f64) -> BetaPosterior {
        BetaPosterior { alpha, beta }
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < tol, "got {got:?}, want {want:?}");
        }
    }

    /// References: scipy 1.17.1, `integrate.quad` of `beta.pdf(x, a_i, b_i) * prod(beta.cdf(x,
    /// a_j, b_j))` over each arm's 1e-14..1-1e-14 quantiles (epsrel 1e-11); the two-arm case also
    /// by Evan Miller's closed form for P(p_B > p_A) with integer shapes ("Formulas for Bayesian
    /// A/B Testing", 2015): 0.9751730331528113.
    #[test]
    fn matches_scipy_quadrature() {
        let two = prob_best(&[beta(11.0, 91.0), beta(21.0, 81.0)]).unwrap();
        assert_close(&two, &[0.024826966847115384, 0.9751730331528646], 1e-4);
        let three = prob_best(&[beta(41.0, 361.0), beta(51.0, 351.0), beta(56.0, 346.0)]).unwrap();
        assert_close(
            &three,
            &[
                0.024419249291790648,
                0.29196815215263927,
                0.6836125985555406,
            ],
            1e-4,
        );
        let five = prob_best(&[
            beta(101.0, 901.0),
            beta(111.0, 891.0),
            beta(121.0, 881.0),
            beta(131.0, 871.0),
            beta(151.0, 851.0),
        ])
        .unwrap();
        assert_close(
            &five,
            &[
                0.00011637175662979061,
                0.0019968582868028772,
                0.017852939810478193,
                0.09469334385564021,
                0.8853404862903982,
            ],
            1e-4,
        );
        // A wide, a very narrow and a flat posterior together: each is resolved on its own points.
        let mixed = prob_best(&[beta(4.0, 8.0), beta(30_001.0, 70_001.0), beta(1.0, 1.0)]).unwrap();
        assert_close(
            &mixed,
            &[0.2412118864044861, 0.12914270525512547, 0.6296454083403653],
            1e-4,
        );
        // A million trials each, rates 0.1 and 0.1005.
        let big = prob_best(&[beta(100_001.0, 900_001.0), beta(100_501.0, 899_501.0)]).unwrap();
        assert_close(&big, &[0.11955746323434294, 0.8804425367656402], 1e-4);
    }

    #[test]
    fn identical_arms_share_it_and_nonsense_is_refused() {
        let same = prob_best(&[beta(50.0, 50.0); 4]).unwrap();
        assert_close(&same, &[0.25; 4], 1e-6);
        assert_eq!(prob_best(&[beta(3.0, 4.0)]), Some(vec![1.0]));
        assert!(prob_best(&[]).is_none());
        assert!(prob_best(&[beta(0.5, 2.0), beta(2.0, 2.0)]).is_none());
        assert!(BetaPosterior::from_counts(5, 6.0).is_none());
        let b = BestArm::from_counts(&[("v1".into(), 1000, 300.0), ("v2".into(), 1000, 950.0)])
            .unwrap();
        assert_eq!(b.leader_name(), "v2");
        assert_eq!(b.best_candidate("v2").as_deref(), Some("v1"));
        assert!(b.leader_p() > 0.999_999, "{b:?}");
    }

    /// Posteriors piled against 1 or 0 (a healthy arm under `reward.source: status`: no or one
    /// failure in 10^6 to 10^7 trials), where a grid shared by all arms put false mass in the
    /// gap to the boundary (0.8168 for an exact 0.75). References: scipy 1.17.1 quad as above,
    /// with the posterior's mean as a break point.
    #[test]
    fn posteriors_piled_against_a_boundary_match_scipy() {
        let p = prob_best(&[beta(1e7 + 1.0, 1.0), beta(1e7, 2.0)]).unwrap();
        assert_close(&p, &[0.7500000126613607, 0.24999998766722165], 1e-4);
        let p = prob_best(&[beta(1e6 + 1.0, 1.0), beta(1e6, 2.0), beta(1e6 - 1.0, 3.0)]).unwrap();
        assert_close(
            &p,
            &[0.7037038888886653, 0.22222214815371535, 0.07407396296224475],
            1e-4,
        );
        let p = prob_best(&[beta(1.0, 1e7 + 1.0), beta(2.0, 1e7), beta(1.0, 2e6 + 1.0)]).unwrap();
        assert_close(
            &p,
            &[0.07782371235212313, 0.26216721617412336, 0.6600090714649969],
            1e-4,
        );
    }

    /// 10^7 trials at rates 0 and 1 (the extremes a healthy arm reaches): finite, decided.
    #[test]
    fn extreme_counts_stay_finite() {
        let p = prob_best(&[beta(1.0, 1e7 + 1.0), beta(1e7 + 1.0, 1.0)]).unwrap();
        assert_close(&p, &[0.0, 1.0], 1e-9);
    }
}
