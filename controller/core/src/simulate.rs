//! Seeded simulations of the decisions a check makes, through the same functions (`machine::ab_result`,
//! `machine::ab_fixed_horizon`, `sequential::srm`): how often an A/A test declares a winner when
//! it is looked at every 1,000 requests, how soon a real lift is found, how often a correct split
//! is flagged and how soon a wrong one is. `make sim` runs them large (tests/bench/results/
//! decisions.md); the unit tests run them small and hold the guarantees.

use fastrand::Rng;
use serde::Serialize;

use crate::abtest::Winner;
use crate::machine::{ab_fixed_horizon, ab_holm, ab_result};
use crate::rules::ArmWindow;
use crate::sequential::{srm, srm_by_bucket};
use crate::spec::AbTest;
use crate::window::BucketCounts;

/// Successes in `n` Bernoulli(p) trials.
fn binomial(rng: &mut Rng, n: u64, p: f64) -> u64 {
    (0..n).filter(|_| rng.f64() < p).count() as u64
}

fn conversions(requests: u64, conversions: u64) -> ArmWindow {
    ArmWindow {
        requests,
        reward_micros: conversions * 1_000_000,
        ..Default::default()
    }
}

/// What the A/B simulation found.
#[derive(Debug, Clone, Serialize)]
pub struct AbSim {
    pub experiments: usize,
    /// Experiments where the sequential test declared a winner at some look.
    pub sequential_decided: usize,
    /// ... of those, for the candidate.
    pub sequential_candidate: usize,
    /// Experiments where the fixed-horizon z-test, re-run at every look, declared a winner.
    pub fixed_every_look_decided: usize,
    /// Experiments where the fixed-horizon z-test at the last look only declared a winner.
    pub fixed_once_decided: usize,
    /// Requests per arm at the sequential decisions (sorted).
    pub requests_at_decision: Vec<u64>,
}

impl AbSim {
    pub fn rate(count: usize, of: usize) -> (f64, f64) {
        let p = count as f64 / of.max(1) as f64;
        (p, (p * (1.0 - p) / of.max(1) as f64).sqrt())
    }

    pub fn median_requests(&self) -> Option<u64> {
        self.requests_at_decision
            .get(self.requests_at_decision.len() / 2)
            .copied()
    }
}

/// `experiments` A/B experiments with rates `baseline` and `candidate`, a look every `step`
/// requests per arm up to `horizon`, seeded.
pub fn ab_sim(
    ab: &AbTest,
    baseline: f64,
    candidate: f64,
    experiments: usize,
    step: u64,
    horizon: u64,
    seed: u64,
) -> AbSim {
    let mut rng = Rng::with_seed(seed);
    let mut out = AbSim {
        experiments,
        sequential_decided: 0,
        sequential_candidate: 0,
        fixed_every_look_decided: 0,
        fixed_once_decided: 0,
        requests_at_decision: Vec::new(),
    };
    for _ in 0..experiments {
        let (mut n, mut a, mut b) = (0, 0, 0);
        let (mut sequential, mut fixed_any) = (None, false);
        while n < horizon {
            n += step;
            a += binomial(&mut rng, step, baseline);
            b += binomial(&mut rng, step, candidate);
            let (bw, cw) = (conversions(n, a), conversions(n, b));
            if sequential.is_none() {
                if let Some(r) = ab_result(ab, &cw, &bw).filter(|r| r.winner != Winner::Neither) {
                    sequential = Some((r.winner, n));
                }
            }
            let fixed = ab_fixed_horizon(ab, &cw, &bw).is_some_and(|r| r.winner != Winner::Neither);
            fixed_any |= fixed;
            if n >= horizon && fixed {
                out.fixed_once_decided += 1;
            }
        }
        if let Some((winner, at)) = sequential {
            out.sequential_decided += 1;
            out.sequential_candidate += usize::from(winner == Winner::Candidate);
            out.requests_at_decision.push(at);
        }
        out.fixed_every_look_decided += usize::from(fixed_any);
    }
    out.requests_at_decision.sort_unstable();
    out
}

/// What the A/B/n simulation found.
#[derive(Debug, Clone, Serialize)]
pub struct AbnSim {
    pub experiments: usize,
    pub candidates: usize,
    /// Experiments where Holm's correction declared any candidate different from the baseline
    /// (better or worse) at some look: the family-wise errors when every arm is the same.
    pub any_declared: usize,
    /// Experiments where some candidate was declared better (what promotes one).
    pub any_better: usize,
}

/// `experiments` A/B/n experiments: the baseline at `baseline`, each candidate at its rate in
/// `candidates`, a look every `step` requests per arm up to `horizon`, decided as a check does
/// (`machine::ab_holm`: the mSPRT per candidate with Holm's correction).
pub fn abn_sim(
    ab: &AbTest,
    baseline: f64,
    candidates: &[f64],
    experiments: usize,
    step: u64,
    horizon: u64,
    seed: u64,
) -> AbnSim {
    let mut rng = Rng::with_seed(seed);
    let mut out = AbnSim {
        experiments,
        candidates: candidates.len(),
        any_declared: 0,
        any_better: 0,
    };
    for _ in 0..experiments {
        let (mut n, mut base) = (0, 0);
        let mut conv = vec![0; candidates.len()];
        let (mut declared, mut better) = (false, false);
        while n < horizon && !declared {
            n += step;
            base += binomial(&mut rng, step, baseline);
            for (c, &rate) in conv.iter_mut().zip(candidates) {
                *c += binomial(&mut rng, step, rate);
            }
            let windows: Vec<(ArmWindow, ArmWindow)> = conv
                .iter()
                .map(|&c| (conversions(n, c), conversions(n, base)))
                .collect();
            for (r, rejected) in ab_holm(ab, &windows) {
                if rejected {
                    declared = true;
                    better |= r.is_some_and(|r| r.difference > 0.0);
                }
            }
        }
        out.any_declared += usize::from(declared);
        out.any_better += usize::from(better);
    }
    out
}

/// What the sticky-users simulation found: A/A experiments (and correct splits) where each user
/// keeps one arm and makes several requests with a propensity of their own.
#[derive(Debug, Clone, Serialize)]
pub struct StickySim {
    pub experiments: usize,
    /// A/B: experiments where the test on user buckets declared a winner at some look.
    pub user_level_decided: usize,
    /// ... where the same mSPRT with requests as the units did.
    pub per_request_decided: usize,
    /// SRM: runs the bucket-level check flagged, and the multinomial check on requests.
    pub srm_user_level_flagged: usize,
    pub srm_per_request_flagged: usize,
}

/// One arm's users so far, as a check sees them: requests and conversions, in total and per
/// analysis bucket.
struct StickyArm {
    requests: u64,
    conversions: u64,
    buckets: Vec<(u64, u64)>,
}

impl Default for StickyArm {
    fn default() -> Self {
        StickyArm {
            requests: 0,
            conversions: 0,
            buckets: vec![(0, 0); ramp_protocol::report::BUCKETS],
        }
    }
}

impl StickyArm {
    fn window(&self, with_buckets: bool) -> ArmWindow {
        let mut w = conversions(self.requests, self.conversions);
        if with_buckets {
            w.buckets = BucketCounts {
                requests: self.buckets.iter().map(|b| b.0).collect(),
                errors: vec![0; ramp_protocol::report::BUCKETS],
                reward_micros: self.buckets.iter().map(|b| b.1 * 1_000_000).collect(),
                ..BucketCounts::default()
            };
        }
        w
    }
}

/// `experiments` A/A experiments with sticky users: each user is assigned 50/50 and to a random
/// analysis bucket, makes `requests_per_user` requests, and converts on each with a propensity
/// drawn from Beta(1, `beta_b`) (mean 1 / (1 + beta_b)). A look every `users_per_look` users
/// (about `users_per_look * requests_per_user / 2` requests per arm), `looks` looks. Both the A/B
/// test (`machine::ab_result` with and without the buckets) and the sample-ratio checks
/// (`sequential::srm_by_bucket` and `sequential::srm`) run at every look.
pub fn sticky_sim(
    ab: &AbTest,
    experiments: usize,
    users_per_look: u64,
    looks: u64,
    requests_per_user: u64,
    beta_b: f64,
    seed: u64,
) -> StickySim {
    let mut rng = Rng::with_seed(seed);
    let mut out = StickySim {
        experiments,
        user_level_decided: 0,
        per_request_decided: 0,
        srm_user_level_flagged: 0,
        srm_per_request_flagged: 0,
    };
    for _ in 0..experiments {
        let mut arms = [StickyArm::default(), StickyArm::default()];
        let (mut user_ab, mut request_ab, mut user_srm, mut request_srm) =
            (false, false, false, false);
        for _ in 0..looks {
            for _ in 0..users_per_look {
                // Beta(1, b) by inversion: 1 - U^(1/b).
                let propensity = 1.0 - rng.f64().powf(1.0 / beta_b);
                let arm = &mut arms[usize::from(rng.bool())];
                let bucket = rng.usize(..ramp_protocol::report::BUCKETS);
                let converted = binomial(&mut rng, requests_per_user, propensity);
                arm.requests += requests_per_user;
                arm.conversions += converted;
                arm.buckets[bucket].0 += requests_per_user;
                arm.buckets[bucket].1 += converted;
            }
            let decided = |with_buckets: bool| {
                let (b, c) = (arms[0].window(with_buckets), arms[1].window(with_buckets));
                ab_result(ab, &c, &b).is_some_and(|r| r.winner != Winner::Neither)
            };
            user_ab |= decided(true);
            request_ab |= decided(false);
            let by_bucket: Vec<Vec<u64>> = arms
                .iter()
                .map(|a| a.buckets.iter().map(|b| b.0).collect())
                .collect();
            let slices: Vec<&[u64]> = by_bucket.iter().map(Vec::as_slice).collect();
            user_srm |= srm_by_bucket(&slices, &[50.0, 50.0], crate::stage_history::SRM_ALPHA)
                .is_some_and(|r| r.mismatch);
            request_srm |= srm(
                &[arms[0].requests, arms[1].requests],
                &[50.0, 50.0],
                crate::stage_history::SRM_ALPHA,
            )
            .is_some_and(|r| r.mismatch);
        }
        out.user_level_decided += usize::from(user_ab);
        out.per_request_decided += usize::from(request_ab);
        out.srm_user_level_flagged += usize::from(user_srm);
        out.srm_per_request_flagged += usize::from(request_srm);
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct SrmSim {
    pub runs: usize,
    /// Runs the check flagged at some look.
    pub flagged: usize,
    /// Total requests at the first flag (sorted).
    pub requests_at_flag: Vec<u64>,
}

/// `runs` splits where a request goes to the candidate with probability `candidate_share`,
/// checked against a 50/50 configuration at level `alpha` every `step` requests up to `horizon`.
pub fn srm_sim(
    candidate_share: f64,
    runs: usize,
    step: u64,
    horizon: u64,
    alpha: f64,
    seed: u64,
) -> SrmSim {
    let mut rng = Rng::with_seed(seed);
    let mut out = SrmSim {
        runs,
        flagged: 0,
        requests_at_flag: Vec::new(),
    };
    for _ in 0..runs {
        let (mut n, mut c) = (0, 0);
        while n < horizon {
            n += step;
            c += binomial(&mut rng, step, candidate_share);
            if srm(&[n - c, c], &[50.0, 50.0], alpha).is_some_and(|r| r.mismatch) {
                out.flagged += 1;
                out.requests_at_flag.push(n);
                break;
            }
        }
    }
    out.requests_at_flag.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Spec;
    use crate::stage_history::SRM_ALPHA;

    fn ab() -> AbTest {
        Spec::parse("name: ab\nstrategy: ab_test\narms: [{name: a, role: baseline}, {name: b, role: candidate}]\nab_test: {metric: conversion, confidence: 0.95, baseline_rate: 0.1, min_detectable_lift: 0.1}\nstages: [{weight: 50}, {weight: 100}]\n")
            .unwrap()
            .ab_test
            .unwrap()
    }

    /// A smaller run of `make sim`'s: 300 A/A experiments, 10% conversion, a look every 1,000
    /// requests per arm up to 30,000 (30 looks). The sequential test's false-positive rate stays
    /// within 0.05 + 2 standard errors; the z-test re-run at every look does not.
    #[test]
    fn an_aa_test_looked_at_every_check_keeps_its_error_rate() {
        let s = ab_sim(&ab(), 0.1, 0.1, 300, 1000, 30_000, 7);
        let (rate, se) = AbSim::rate(s.sequential_decided, s.experiments);
        assert!(rate <= 0.05 + 2.0 * se, "{rate} +- {se}: {s:?}");
        let (peeking, _) = AbSim::rate(s.fixed_every_look_decided, s.experiments);
        assert!(
            peeking > 0.1,
            "the peeking z-test is far above 5%: {peeking}"
        );
    }

    /// A smaller A/B/n run: one baseline and two identical candidates, 300 experiments, 30 looks:
    /// Holm keeps the family-wise rate within 0.05 + 2 SE; a 30% lift on one candidate is found.
    #[test]
    fn an_aa_test_with_two_candidates_keeps_the_family_wise_rate() {
        let s = abn_sim(&ab(), 0.1, &[0.1, 0.1], 300, 1000, 30_000, 8);
        let (rate, se) = AbSim::rate(s.any_declared, s.experiments);
        assert!(rate <= 0.05 + 2.0 * se, "{rate} +- {se}: {s:?}");
        let found = abn_sim(&ab(), 0.1, &[0.1, 0.13], 20, 1000, 30_000, 9);
        assert!(found.any_better >= 18, "{found:?}");
    }

    /// A smaller sticky-users run: 200 A/A experiments, 20 requests per user, Beta(1, 9)
    /// propensities, 30 looks of 100 users. With buckets as the units the A/B test's
    /// false-positive rate stays within 0.05 + 2 SE and the bucket SRM check within 1% + 2 SE;
    /// counting requests as independent does not.
    #[test]
    fn sticky_users_are_analysed_as_users() {
        let s = sticky_sim(&ab(), 200, 100, 30, 20, 9.0, 21);
        let (rate, se) = AbSim::rate(s.user_level_decided, s.experiments);
        assert!(rate <= 0.05 + 2.0 * se, "{rate} +- {se}: {s:?}");
        let (srm_rate, srm_se) = AbSim::rate(s.srm_user_level_flagged, s.experiments);
        assert!(srm_rate <= 0.01 + 2.0 * srm_se.max(0.007), "{s:?}");
        assert!(
            s.per_request_decided > s.user_level_decided
                && s.srm_per_request_flagged > s.srm_user_level_flagged,
            "requests as units overstate the evidence: {s:?}"
        );
    }

    /// A smaller SRM run: 50/50 never flagged in 200 runs (the bound is 1%); 45/55 always found.
    #[test]
    fn the_srm_check_rarely_flags_a_correct_split_and_finds_a_wrong_one() {
        let fine = srm_sim(0.5, 200, 1000, 50_000, SRM_ALPHA, 3);
        assert!(fine.flagged <= 4, "{fine:?}");
        let wrong = srm_sim(0.55, 50, 1000, 50_000, SRM_ALPHA, 4);
        assert_eq!(wrong.flagged, 50, "{wrong:?}");
    }
}

/// One arm of the guardrail simulation: its error rate and its latency, log-normal with this
/// median (ms) and log-sd.
#[derive(Debug, Clone, Copy)]
pub struct ArmModel {
    pub error_rate: f64,
    pub median_ms: f64,
    pub log_sd: f64,
}

/// What the guardrail simulation found for one rule set and one pair of arms.
#[derive(Debug, Clone, Serialize)]
pub struct GuardrailSim {
    pub rollouts: usize,
    /// Rolled back within the checks, judged as rampctl does now (`check::rule_looks` and
    /// `check::check`: confidence sequences, alpha spent over rules and windows).
    pub rolled_back: usize,
    /// The check (1-based) at which each of those rolled back, sorted.
    pub checks_to_rollback: Vec<u64>,
    /// Rolled back as rampctl judged before issue 24: each rule's point estimate on the newest
    /// window holding `min_samples` (`check::judged_windows`, `rules::point_verdict`),
    /// `failure_threshold` failing checks in a row.
    pub rolled_back_before: usize,
    pub checks_to_rollback_before: Vec<u64>,
}

impl GuardrailSim {
    pub fn median(v: &[u64]) -> Option<u64> {
        v.get(v.len() / 2).copied()
    }
}

/// A log-normal latency in ms.
fn latency_ms(rng: &mut Rng, m: &ArmModel) -> f64 {
    // Box-Muller: one standard normal from two uniforms.
    let (u1, u2) = (rng.f64().max(1e-300), rng.f64());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    m.median_ms * (m.log_sd * z).exp()
}

/// Adds `n` requests drawn from `m` to an arm's cumulative totals (the filter's latency bounds).
pub fn serve(rng: &mut Rng, t: &mut crate::window::ArmTotals, m: &ArmModel, n: u64) {
    if t.le.is_empty() {
        t.le = ramp_protocol::report::latency_le()
            .into_iter()
            .map(|b| b.0)
            .collect();
        t.counts = vec![0; t.le.len()];
    }
    let mut per_bucket = vec![0u64; t.le.len()];
    for _ in 0..n {
        let ms = latency_ms(rng, m);
        let i = t.le.partition_point(|&b| b < ms).min(t.le.len() - 1);
        per_bucket[i] += 1;
    }
    let mut below = 0;
    for (c, add) in t.counts.iter_mut().zip(&per_bucket) {
        below += add;
        *c += below;
    }
    t.requests += n;
    t.errors += binomial(rng, n, m.error_rate);
}

/// `rollouts` canary rollouts of `spec` (its first stage held: a long `min_duration_s`), each
/// `checks` checks of `per_check` requests per arm drawn from `baseline` and `candidate`, judged
/// both ways (`GuardrailSim`); seeded.
pub fn guardrail_sim(
    spec: &crate::spec::Spec,
    baseline: ArmModel,
    candidate: ArmModel,
    rollouts: usize,
    checks: u64,
    per_check: u64,
    seed: u64,
) -> GuardrailSim {
    use crate::check::{check, judged_windows, rule_looks};
    use crate::lookback::Lookback;
    use crate::machine::{Phase, State};
    use crate::record::Record;
    use crate::rules::{point_verdict, Verdict};

    let mut rng = Rng::with_seed(seed);
    let mut out = GuardrailSim {
        rollouts,
        rolled_back: 0,
        checks_to_rollback: Vec::new(),
        rolled_back_before: 0,
        checks_to_rollback_before: Vec::new(),
    };
    let rules = spec
        .stages
        .first()
        .map(|s| s.rules.clone())
        .unwrap_or_default();
    for _ in 0..rollouts {
        let mut rec = Record {
            name: spec.name.clone(),
            spec_text: String::new(),
            state: State::start(spec, 0),
            version: 1,
            base: crate::window::Totals::default(),
        };
        let mut totals = crate::window::Totals::default();
        let mut earlier = Lookback::default();
        let (mut now_done, mut before_done, mut before_failed) = (false, false, 0u32);
        for k in 1..=checks {
            serve(
                &mut rng,
                totals.entry(spec.baseline.clone()).or_default(),
                &baseline,
                per_check,
            );
            serve(
                &mut rng,
                totals.entry(spec.candidate.clone()).or_default(),
                &candidate,
                per_check,
            );
            if !now_done {
                let looks = rule_looks(&rec, spec, &totals, &earlier, k - 1);
                if let Some((next, _)) =
                    check(&rec, spec, &totals, &looks, k * 1000, Default::default())
                {
                    rec = next;
                }
                if rec.state.phase == Phase::RolledBack {
                    now_done = true;
                    out.rolled_back += 1;
                    out.checks_to_rollback.push(k);
                }
            }
            if !before_done {
                let judged = judged_windows(&rec, spec, &totals, &earlier);
                let failing = rules.iter().zip(&judged).any(|(rule, per_candidate)| {
                    per_candidate
                        .iter()
                        .any(|(c, b)| matches!(point_verdict(rule, c, b), Verdict::Fail { .. }))
                });
                before_failed = if failing { before_failed + 1 } else { 0 };
                if before_failed >= spec.failure_threshold {
                    before_done = true;
                    out.rolled_back_before += 1;
                    out.checks_to_rollback_before.push(k);
                }
            }
            earlier.push(totals.clone());
            if now_done && before_done {
                break;
            }
        }
    }
    out.checks_to_rollback.sort_unstable();
    out.checks_to_rollback_before.sort_unstable();
    out
}
