//! The live state `rampctl` serves on `GET /v1/rollouts/<rollout>/state` and every filter polls:
//! a versioned document of arm weights plus the bandit counts the asking Envoy does not hold
//! itself. The controller serializes this type and the filter parses it, so the two cannot drift.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::report::BanditCounts;

/// Unknown fields are allowed when reading: a newer controller may add some, and a filter must
/// keep working against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveState {
    /// Grows with every change the controller saves; a filter applies only newer documents.
    pub version: u64,
    /// The stage the rollout is at, counted from 1 (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<u64>,
    /// Arm name to weight; arms left out get 0.
    pub weights: BTreeMap<String, f64>,
    #[serde(default)]
    pub rolled_back: bool,
    /// Bandit counts from outside the asking Envoy: the other Envoys' (as they last reported)
    /// plus the delayed rewards applications posted. Added to its own counts, never replacing them.
    #[serde(default)]
    pub bandit: BTreeMap<String, BanditCounts>,
    /// In an A/B test's pre-period (the candidate still at 0): the weights the experiment will
    /// have. Sticky filters count each user's requests under the arm these weights give the
    /// user (`Buckets::pre_requests`), CUPED's covariate. Empty otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pre_weights: BTreeMap<String, f64>,
    /// The in-filter guard while a candidate serves users, from the stage's error-rate rules;
    /// absent: no guard (a filter with a controller drops its static one once a state arrives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<LiveGuard>,
}

/// The guard the controller pushes: each Envoy runs this sequential test on every candidate arm's
/// 5xx and sends an arm that trips it to the baseline (the filter's `guard` config has the same
/// fields but `epoch`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LiveGuard {
    /// Counts and trips start afresh when it changes (a new stage or revision): a trip holds for
    /// the stage it happened in.
    pub epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_errors: Option<u64>,
    /// Test the candidate's 5xx rate against this bound...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// ...or against the baseline's plus this (the default, with 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_increase: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_newer_fields() {
        let doc = LiveState {
            version: 9,
            stage: Some(2),
            weights: [("v1".to_owned(), 90.0), ("v2".to_owned(), 10.0)].into(),
            rolled_back: false,
            bandit: [(
                "v2".to_owned(),
                BanditCounts {
                    trials: 4,
                    reward_micros: 2_500_000,
                },
            )]
            .into(),
            pre_weights: [("v1".to_owned(), 50.0), ("v2".to_owned(), 50.0)].into(),
            guard: Some(LiveGuard {
                epoch: 7,
                alpha: Some(0.001),
                min_errors: None,
                max_error_rate: None,
                max_increase: Some(0.01),
            }),
        };
        let text = serde_json::to_string(&doc).unwrap();
        assert_eq!(serde_json::from_str::<LiveState>(&text).unwrap(), doc);
        let newer = r#"{"version":3,"weights":{"v1":1},"canary_note":"x"}"#;
        let parsed: LiveState = serde_json::from_str(newer).unwrap();
        assert_eq!(
            (parsed.version, parsed.stage, parsed.rolled_back),
            (3, None, false)
        );
        assert!(parsed.bandit.is_empty() && parsed.pre_weights.is_empty());
        assert!(parsed.guard.is_none());
        assert!(serde_json::from_str::<LiveState>(r#"{"weights":{}}"#).is_err());
    }
}
