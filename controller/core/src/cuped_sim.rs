//! A seeded simulation of CUPED through `machine::ab_result`: how many requests an A/B test of
//! sticky users needs to decide with and without the pre-period, and how often an A/A test
//! declares a winner with it. `make sim` runs it large (tests/bench/results/decisions.md); the
//! unit tests run it small.
//!
//! The model: a fixed population of returning users, each with a conversion propensity p ~
//! Beta(m k, (1 - m) k), assigned 50/50 (the candidate multiplies p by 1 + lift) and to one of 64
//! analysis buckets. In the pre-period every user makes `pre_requests` requests; the filters count
//! them per bucket under the arm the experiment will give the user. Then the experiment runs in
//! rounds, every user making one request a round, in a random order, looked at every
//! `requests_per_look` requests. A user's observed rates over n1 and n2 requests correlate by
//! 1 / sqrt((1 + k / n1) (1 + k / n2)) (Beta-binomial), which the simulation also measures.

use fastrand::Rng;
use serde::Serialize;

use crate::abtest::Winner;
use crate::machine::ab_result;
use crate::rules::ArmWindow;
use crate::spec::AbTest;
use crate::window::BucketCounts;

const BUCKETS: usize = ramp_protocol::report::BUCKETS;

#[derive(Debug, Clone, Serialize)]
pub struct CupedSimParams {
    pub experiments: usize,
    pub users: usize,
    pub pre_requests: u64,
    pub rounds: u64,
    pub requests_per_look: u64,
    /// m: the mean propensity.
    pub mean: f64,
    /// k: the Beta's concentration (smaller: users differ more).
    pub concentration: f64,
    /// The candidate's relative lift (0 for A/A).
    pub lift: f64,
    pub seed: u64,
}

/// What one method found over the experiments.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Decisions {
    pub decided: usize,
    /// ... of those, for the candidate.
    pub candidate: usize,
    /// Requests per arm (the larger arm's count) at each decision, sorted.
    pub requests_at_decision: Vec<u64>,
}

impl Decisions {
    /// The median over all `experiments`, an undecided one counting as beyond the horizon:
    /// `None` when half of them or more never decided.
    pub fn median_requests(&self, experiments: usize) -> Option<u64> {
        self.requests_at_decision
            .get(experiments.saturating_sub(1) / 2)
            .copied()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CupedSim {
    pub params: CupedSimParams,
    /// Buckets as the units, no covariate (what rampctl did before).
    pub plain: Decisions,
    /// The same windows with the pre-period: CUPED.
    pub cuped: Decisions,
    /// Measured over the first experiment's users: the correlation of each user's pre-period
    /// rate with their experiment rate after r rounds, r = 1..=rounds.
    pub user_correlation_by_round: Vec<f64>,
    /// The mean share of the difference's variance CUPED removed, at the last look.
    pub mean_variance_reduction: f64,
}

/// A Gamma(shape, 1) draw: Marsaglia and Tsang ("A Simple Method for Generating Gamma
/// Variables", ACM TOMS 2000), with U^(1/shape) for shape < 1.
fn gamma(rng: &mut Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        return gamma(rng, shape + 1.0) * rng.f64().max(f64::MIN_POSITIVE).powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let (x, v) = loop {
            let x = normal(rng);
            let v = 1.0 + c * x;
            if v > 0.0 {
                break (x, v * v * v);
            }
        };
        let u = rng.f64();
        if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut Rng) -> f64 {
    let u = rng.f64().max(f64::MIN_POSITIVE);
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * rng.f64()).cos()
}

fn beta(rng: &mut Rng, a: f64, b: f64) -> f64 {
    let x = gamma(rng, a);
    x / (x + gamma(rng, b))
}

struct User {
    candidate: bool,
    bucket: usize,
    p: f64,
    pre_conversions: u64,
    conversions: u64,
    requests: u64,
}

#[derive(Clone)]
struct Arm {
    requests: [u64; BUCKETS],
    conversions: [u64; BUCKETS],
    pre_requests: [u64; BUCKETS],
    pre_conversions: [u64; BUCKETS],
}

impl Arm {
    fn window(&self, with_pre: bool) -> ArmWindow {
        let micros = |v: &[u64; BUCKETS]| v.iter().map(|c| c * 1_000_000).collect::<Vec<_>>();
        let requests: u64 = self.requests.iter().sum();
        ArmWindow {
            requests,
            reward_micros: self.conversions.iter().sum::<u64>() * 1_000_000,
            buckets: BucketCounts {
                requests: self.requests.to_vec(),
                errors: vec![0; BUCKETS],
                reward_micros: micros(&self.conversions),
                pre_requests: if with_pre {
                    self.pre_requests.to_vec()
                } else {
                    Vec::new()
                },
                pre_errors: Vec::new(),
                pre_reward_micros: if with_pre {
                    micros(&self.pre_conversions)
                } else {
                    Vec::new()
                },
            },
            ..Default::default()
        }
    }
}

fn correlation(pairs: &[(f64, f64)]) -> f64 {
    let n = pairs.len() as f64;
    let (mx, my) = pairs
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in pairs {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    sxy / (sxx * syy).sqrt()
}

pub fn cuped_sim(ab: &AbTest, params: &CupedSimParams) -> CupedSim {
    let mut rng = Rng::with_seed(params.seed);
    let (a, b) = (
        params.mean * params.concentration,
        (1.0 - params.mean) * params.concentration,
    );
    let mut out = CupedSim {
        params: params.clone(),
        plain: Decisions::default(),
        cuped: Decisions::default(),
        user_correlation_by_round: Vec::new(),
        mean_variance_reduction: 0.0,
    };
    let mut reductions = 0.0;
    for experiment in 0..params.experiments {
        let mut users: Vec<User> = (0..params.users)
            .map(|_| {
                let p = beta(&mut rng, a, b);
                User {
                    candidate: rng.bool(),
                    bucket: rng.usize(..BUCKETS),
                    p,
                    pre_conversions: (0..params.pre_requests).filter(|_| rng.f64() < p).count()
                        as u64,
                    conversions: 0,
                    requests: 0,
                }
            })
            .collect();
        let empty = Arm {
            requests: [0; BUCKETS],
            conversions: [0; BUCKETS],
            pre_requests: [0; BUCKETS],
            pre_conversions: [0; BUCKETS],
        };
        let mut arms = [empty.clone(), empty];
        for u in &users {
            let arm = &mut arms[usize::from(u.candidate)];
            arm.pre_requests[u.bucket] += params.pre_requests;
            arm.pre_conversions[u.bucket] += u.pre_conversions;
        }
        let mut order: Vec<usize> = (0..users.len()).collect();
        let (mut plain_done, mut cuped_done) = (false, false);
        let mut since_look = 0;
        let mut last_reduction = None;
        for _ in 0..params.rounds {
            rng.shuffle(&mut order);
            for &i in &order {
                let u = &mut users[i];
                let p = if u.candidate {
                    (u.p * (1.0 + params.lift)).min(1.0)
                } else {
                    u.p
                };
                let converted = u64::from(rng.f64() < p);
                u.requests += 1;
                u.conversions += converted;
                let arm = &mut arms[usize::from(u.candidate)];
                arm.requests[u.bucket] += 1;
                arm.conversions[u.bucket] += converted;
                since_look += 1;
                if since_look < params.requests_per_look {
                    continue;
                }
                since_look = 0;
                let per_arm = |arms: &[Arm; 2]| {
                    arms.iter()
                        .map(|a| a.requests.iter().sum::<u64>())
                        .max()
                        .unwrap_or(0)
                };
                for (with_pre, done, record) in [
                    (false, &mut plain_done, &mut out.plain),
                    (true, &mut cuped_done, &mut out.cuped),
                ] {
                    if *done {
                        continue;
                    }
                    let r = ab_result(ab, &arms[1].window(with_pre), &arms[0].window(with_pre));
                    if with_pre {
                        last_reduction = r
                            .as_ref()
                            .and_then(|r| r.cuped.as_ref())
                            .map(|c| c.variance_reduction)
                            .or(last_reduction);
                    }
                    if let Some(r) = r.filter(|r| r.winner != Winner::Neither) {
                        *done = true;
                        record.decided += 1;
                        record.candidate += usize::from(r.winner == Winner::Candidate);
                        record.requests_at_decision.push(per_arm(&arms));
                    }
                }
            }
            if experiment == 0 {
                let pairs: Vec<(f64, f64)> = users
                    .iter()
                    .map(|u| {
                        (
                            u.pre_conversions as f64 / params.pre_requests as f64,
                            u.conversions as f64 / u.requests as f64,
                        )
                    })
                    .collect();
                out.user_correlation_by_round.push(correlation(&pairs));
            }
        }
        reductions += last_reduction.unwrap_or(0.0);
    }
    out.mean_variance_reduction = reductions / params.experiments.max(1) as f64;
    out.plain.requests_at_decision.sort_unstable();
    out.cuped.requests_at_decision.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::AbMetric;

    fn ab() -> AbTest {
        AbTest {
            metric: AbMetric::Conversion,
            confidence: 0.95,
            planned_per_arm: 0,
            mixture_sd: 0.01,
            experiment_stage: 0,
        }
    }

    fn params(lift: f64, experiments: usize) -> CupedSimParams {
        CupedSimParams {
            experiments,
            users: 2_000,
            pre_requests: 20,
            rounds: 40,
            requests_per_look: 1_000,
            mean: 0.1,
            concentration: 60.0 / 7.0,
            lift,
            seed: 7,
        }
    }

    /// Beta-binomial: two rates over n1 and n2 requests of one user correlate by
    /// 1 / sqrt((1 + k / n1)(1 + k / n2)); at k = 60/7 and 20 requests each that is 0.7.
    #[test]
    fn the_users_correlation_is_the_beta_binomial_one() {
        let s = cuped_sim(&ab(), &params(0.0, 1));
        let at_20 = s.user_correlation_by_round[19];
        assert!((at_20 - 0.7).abs() < 0.04, "{at_20}");
    }

    /// A smaller run of `make sim`'s rows (2,000 users, 40 experiments, +20%): CUPED decides
    /// more often, on fewer requests, and keeps the A/A rate.
    #[test]
    fn cuped_finds_a_lift_with_fewer_requests_and_keeps_the_aa_rate() {
        let s = cuped_sim(&ab(), &params(0.2, 40));
        let (plain, cuped) = (s.plain.median_requests(40), s.cuped.median_requests(40));
        assert!(s.cuped.decided >= s.plain.decided, "{s:?}");
        assert!(
            (cuped.unwrap() as f64) < 0.8 * plain.unwrap() as f64,
            "{plain:?} {cuped:?}"
        );
        assert!(
            s.mean_variance_reduction > 0.2,
            "{}",
            s.mean_variance_reduction
        );
        let aa = cuped_sim(&ab(), &params(0.0, 40));
        assert!(aa.cuped.decided <= 5, "{aa:?}");
    }
}
