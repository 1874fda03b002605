//! The unit of analysis: the request, or the user when the filters' assignment is sticky. A
//! user's requests are correlated, so counting them as independent trials overstates the
//! evidence; sticky filters put every user in one of 64 analysis buckets (a hash of the key,
//! independent of the arm) and the tests then take the buckets as the independent units.

use crate::abtest::Proportion;
use crate::cuped::{adjusted_difference, Cluster};
use crate::sequential::Comparison;
use crate::sequential::RateEstimate;
use crate::window::ArmWindow;

/// What a rate counts, per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Rewards posted through `/feedback`, in [0, 1] each.
    Conversion,
    /// Responses that were not 5xx.
    Success,
    /// Responses that were 5xx.
    Error,
}

fn total(w: &ArmWindow, outcome: Outcome) -> f64 {
    match outcome {
        Outcome::Conversion => w.reward_micros as f64 / 1e6,
        Outcome::Success => w.requests.saturating_sub(w.errors) as f64,
        Outcome::Error => w.errors as f64,
    }
}

/// The outcome's total per bucket from per-bucket requests, 5xx and rewards (millionths).
fn outcome_per_bucket(
    requests: &[u64],
    errors: &[u64],
    rewards: &[u64],
    outcome: Outcome,
) -> Vec<f64> {
    let at = |v: &[u64], j: usize| v.get(j).copied().unwrap_or(0);
    (0..requests.len())
        .map(|j| match outcome {
            Outcome::Conversion => at(rewards, j) as f64 / 1e6,
            Outcome::Success => at(requests, j).saturating_sub(at(errors, j)) as f64,
            Outcome::Error => at(errors, j) as f64,
        })
        .collect()
}

fn per_bucket(w: &ArmWindow, outcome: Outcome) -> Vec<f64> {
    let b = &w.buckets;
    outcome_per_bucket(&b.requests, &b.errors, &b.reward_micros, outcome)
}

/// The pre-period's outcome total per bucket (CUPED's covariate), or empty without one.
fn pre_per_bucket(w: &ArmWindow, outcome: Outcome) -> Vec<f64> {
    let b = &w.buckets;
    outcome_per_bucket(
        &b.pre_requests,
        &b.pre_errors,
        &b.pre_reward_micros,
        outcome,
    )
}

/// The (arm, bucket) clusters of both arms with their pre-period figures, for CUPED.
fn clusters(baseline: &ArmWindow, candidate: &ArmWindow, outcome: Outcome) -> Vec<Cluster> {
    let of = |w: &ArmWindow, is_candidate: bool| {
        let (post, pre) = (per_bucket(w, outcome), pre_per_bucket(w, outcome));
        let b = &w.buckets;
        (0..b.requests.len())
            .map(|j| Cluster {
                candidate: is_candidate,
                trials: b.requests[j] as f64,
                successes: post[j],
                pre_trials: b.pre_requests.get(j).copied().unwrap_or(0) as f64,
                pre_successes: pre.get(j).copied().unwrap_or(0.0),
            })
            .collect::<Vec<_>>()
    };
    let mut all = of(baseline, false);
    all.extend(of(candidate, true));
    all
}

/// Whether both arms carry a pre-period (an `ab_test` that began with one).
fn has_pre_period(baseline: &ArmWindow, candidate: &ArmWindow) -> bool {
    let any = |w: &ArmWindow| w.buckets.pre_requests.iter().any(|&n| n > 0);
    any(baseline) && any(candidate)
}

/// `estimates`, with the difference adjusted by CUPED when both arms are bucketed and carry a
/// pre-period that varies across buckets.
pub fn compare(
    baseline: &ArmWindow,
    candidate: &ArmWindow,
    outcome: Outcome,
) -> Option<Comparison> {
    let (b, c) = estimates(baseline, candidate, outcome)?;
    let adjusted = (b.unit == "user_bucket" && has_pre_period(baseline, candidate))
        .then(|| adjusted_difference(&clusters(baseline, candidate, outcome)))
        .flatten();
    Some(Comparison {
        baseline: b,
        candidate: c,
        adjusted,
    })
}

/// Whether the window holds analysis buckets with requests in them.
pub fn bucketed(w: &ArmWindow) -> bool {
    w.buckets.requests.iter().any(|&n| n > 0)
}

/// The (baseline, candidate) rate estimates: per user bucket when both arms have buckets,
/// else per request. `None` while an arm has nothing to estimate from.
pub fn estimates(
    baseline: &ArmWindow,
    candidate: &ArmWindow,
    outcome: Outcome,
) -> Option<(RateEstimate, RateEstimate)> {
    if bucketed(baseline) && bucketed(candidate) {
        let estimate =
            |w: &ArmWindow| RateEstimate::per_bucket(&per_bucket(w, outcome), &w.buckets.requests);
        return Some((estimate(baseline)?, estimate(candidate)?));
    }
    let estimate = |w: &ArmWindow| {
        RateEstimate::per_request(Proportion {
            successes: total(w, outcome),
            trials: w.requests,
        })
    };
    Some((estimate(baseline)?, estimate(candidate)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::BucketCounts;

    /// A bucketed window whose pre-period error rate per bucket predicts the rate since.
    fn window(shift: u64) -> ArmWindow {
        let requests: Vec<u64> = (0..64).map(|j| 100 + j % 5).collect();
        let errors: Vec<u64> = (0..64).map(|j| (j * 7 + shift) % 13).collect();
        ArmWindow {
            requests: requests.iter().sum(),
            errors: errors.iter().sum(),
            buckets: BucketCounts {
                pre_requests: vec![100; 64],
                pre_errors: errors.iter().map(|e| e + (e % 2)).collect(),
                requests,
                errors,
                ..BucketCounts::default()
            },
            ..ArmWindow::default()
        }
    }

    #[test]
    fn a_pre_period_adjusts_the_error_comparison_and_without_one_nothing_changes() {
        let (b, c) = (window(0), window(3));
        let cmp = compare(&b, &c, Outcome::Error).unwrap();
        let a = cmp.adjusted.expect("both arms carry a pre-period");
        assert!(a.variance_reduction() > 0.9, "{a:?}");
        assert!(a.slope > 0.5, "{a:?}");
        let mut plain = c.clone();
        plain.buckets.pre_requests.clear();
        plain.buckets.pre_errors.clear();
        let cmp = compare(&b, &plain, Outcome::Error).unwrap();
        assert_eq!(
            cmp.adjusted, None,
            "one arm without a pre-period: the plain test"
        );
        assert_eq!(cmp.candidate.unit, "user_bucket");
    }
}
