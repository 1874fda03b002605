//! The unit of analysis: the request, or the user when the filters' assignment is sticky. A
//! user's requests are correlated, so counting them as independent trials overstates the
//! evidence; sticky filters put every user in one of 64 analysis buckets (a hash of the key,
//! independent of the arm) and the tests then take the buckets as the independent units.

use crate::abtest::Proportion;
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

fn per_bucket(w: &ArmWindow, outcome: Outcome) -> Vec<f64> {
    let b = &w.buckets;
    let at = |v: &[u64], j: usize| v.get(j).copied().unwrap_or(0);
    (0..b.requests.len())
        .map(|j| match outcome {
            Outcome::Conversion => at(&b.reward_micros, j) as f64 / 1e6,
            Outcome::Success => at(&b.requests, j).saturating_sub(at(&b.errors, j)) as f64,
            Outcome::Error => at(&b.errors, j) as f64,
        })
        .collect()
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
