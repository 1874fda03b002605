//! What status shows of a rollout: where it stands and the figures of its last check, with the
//! exact JSON shapes the API has always had.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::machine::Phase;
use crate::posterior::Posterior;
use crate::spec::{AbMetric, Metric, OnFail, StrategyKind};
use crate::window::ShadowFigures;

/// A rollout as `status`, `list`, `apply` and the commands answer it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    #[serde(flatten)]
    pub rollout: RolloutStatus,
    /// The file that manages it under `--specs` (`status` only).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedBy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RolloutStatus {
    /// Where it stands, and the figures of its last check.
    Loaded(Box<Loaded>),
    /// Its stored row or spec cannot be decoded: phase `error`, and why.
    Unloadable(Unloadable),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Loaded {
    #[serde(flatten)]
    pub state: StateSummary,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unloadable {
    /// Named in `status` and `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub phase: ErrorPhase,
    pub reason: String,
}

/// The phase an unloadable rollout shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorPhase {
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManagedBy {
    pub spec_file: String,
    /// What is wrong with that file now (it then changes nothing).
    pub spec_file_error: Option<String>,
}

/// Where a rollout stands: its arms, phase, stage and the weights the filters are told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateSummary {
    pub name: String,
    pub baseline: String,
    pub candidate: String,
    pub candidates: Vec<String>,
    pub winner: Option<String>,
    pub strategy: StrategyKind,
    pub phase: Phase,
    /// 1-based.
    pub stage: usize,
    pub stages: usize,
    /// Every arm's weight in percent.
    pub weights: BTreeMap<String, f64>,
    pub version: u64,
    pub failed_checks: u32,
    pub reason: Option<String>,
    pub override_weight: Option<f64>,
    /// `manual` or `auto`.
    pub promotion: String,
    pub stage_started_ms: u64,
    pub stage_min_duration_ms: Option<u64>,
    pub stage_min_requests: Option<u64>,
}

/// What status shows of the checks: the last one's figures (before the first: empty ones), and
/// why the last attempt had none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(into = "FiguresWire", from = "FiguresWire")]
pub struct Figures {
    pub last: Option<CheckFigures>,
    /// The metric source did not answer at the last check.
    pub error: Option<String>,
}

impl Figures {
    /// As status shows them (what a decision record keeps).
    pub fn to_json(&self) -> Option<Value> {
        serde_json::to_value(self).ok()
    }
}

/// The figures of one check, which are the figures its rules were judged on, with the stage's
/// beside them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckFigures {
    /// Per rule and candidate: the window it was judged on.
    pub checks: Vec<RuleCheck>,
    pub ab_test: Option<AbTestFigures>,
    /// A bandit's posterior per arm, with P(best); `null` for an arm with neither.
    pub bandit: Option<BTreeMap<String, Option<BanditArm>>>,
    pub best_arm: Option<BestArmFigures>,
    pub checked_at_ms: u64,
    /// 1-based.
    pub checked_stage: usize,
    /// Each arm's figures since the stage began.
    pub window: BTreeMap<String, ArmFigures>,
    /// The sample-ratio check (`sequential::SrmResult`, as it serializes).
    pub sample_ratio: Option<Value>,
    /// The guard the filters run in this stage, and how many Envoys' guards cut each candidate off.
    pub guard: Option<GuardFigures>,
}

/// The live state's guard as status shows it, with the trips the filters reported in its epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardFigures {
    #[serde(flatten)]
    pub pushed: ramp_protocol::live::LiveGuard,
    /// Per candidate, the Envoys whose guard cut it off in this epoch.
    pub tripped: BTreeMap<String, usize>,
}

/// The JSON `Figures` has always had: before any check the empty lists; a source's failure adds
/// `figures_error` (alone, before the first check).
#[derive(Serialize, Deserialize)]
struct FiguresWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checks: Option<Vec<RuleCheck>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    ab_test: Option<Option<AbTestFigures>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    bandit: Option<Option<BTreeMap<String, Option<BanditArm>>>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    best_arm: Option<Option<BestArmFigures>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    checked_at_ms: Option<Option<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checked_stage: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    window: Option<BTreeMap<String, ArmFigures>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    sample_ratio: Option<Option<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    guard: Option<GuardFigures>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    figures_error: Option<String>,
}

impl From<Figures> for FiguresWire {
    fn from(f: Figures) -> Self {
        match f.last {
            Some(c) => FiguresWire {
                checks: Some(c.checks),
                ab_test: Some(c.ab_test),
                bandit: Some(c.bandit),
                best_arm: Some(c.best_arm),
                checked_at_ms: Some(Some(c.checked_at_ms)),
                checked_stage: Some(c.checked_stage),
                window: Some(c.window),
                sample_ratio: Some(c.sample_ratio),
                guard: c.guard,
                figures_error: f.error,
            },
            None if f.error.is_some() => FiguresWire {
                checks: None,
                ab_test: None,
                bandit: None,
                best_arm: None,
                checked_at_ms: None,
                checked_stage: None,
                window: None,
                sample_ratio: None,
                guard: None,
                figures_error: f.error,
            },
            None => FiguresWire {
                checks: Some(Vec::new()),
                ab_test: Some(None),
                bandit: Some(None),
                best_arm: None,
                checked_at_ms: Some(None),
                checked_stage: None,
                window: Some(BTreeMap::new()),
                sample_ratio: None,
                guard: None,
                figures_error: None,
            },
        }
    }
}

impl From<FiguresWire> for Figures {
    fn from(w: FiguresWire) -> Self {
        let last = match (w.checked_at_ms.flatten(), w.checked_stage) {
            (Some(checked_at_ms), Some(checked_stage)) => Some(CheckFigures {
                checks: w.checks.unwrap_or_default(),
                ab_test: w.ab_test.flatten(),
                bandit: w.bandit.flatten(),
                best_arm: w.best_arm.flatten(),
                checked_at_ms,
                checked_stage,
                window: w.window.unwrap_or_default(),
                sample_ratio: w.sample_ratio.flatten(),
                guard: w.guard,
            }),
            _ => None,
        };
        Figures {
            last,
            error: w.figures_error,
        }
    }
}

/// A field that is present (`null` included) reads as `Some`; with `default`, an absent one as
/// `None`: so `Option<Option<_>>` tells "absent" from "null" as the JSON does.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A figure that JSON could not hold (not finite: written as `null`) reads back as NaN, so one
/// odd figure does not make a whole status unreadable.
fn number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One rule on one candidate at a check: on the window it was judged on, and on the stage's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleCheck {
    /// Index into the stage's rules.
    pub rule: usize,
    pub arm: String,
    pub metric: Metric,
    /// `max`, `min`, `max_worse_than_baseline`, `max_increase` or `max_decrease`.
    pub bound: String,
    #[serde(deserialize_with = "number")]
    pub limit: f64,
    pub value: Option<f64>,
    /// `None` for a custom rule: its figure has no sample size.
    pub samples: Option<u64>,
    pub min_samples: Option<u64>,
    pub verdict: CheckVerdict,
    pub reason: Option<String>,
    pub dry_run: bool,
    pub on_fail: OnFail,
    pub stage_value: Option<f64>,
    pub stage_samples: Option<u64>,
    /// The evidence behind a shadow or latency verdict: TOST's p-value (`shadow_equivalent`),
    /// the paired t-test's (`shadow_guide`), Mann-Whitney's (`latency_slower`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub tost_p: Option<Option<f64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub t_test_p: Option<Option<f64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub mann_whitney_p: Option<Option<f64>>,
    /// A custom rule's source and why it has no value.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomCheck>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckVerdict {
    Pass,
    Fail,
    NotEnoughData,
}

/// What status shows of a custom rule's check besides value and verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomCheck {
    pub name: String,
    /// `prometheus` or `web`.
    pub source: String,
    /// The query as sent, or the URL (redacted); `None` when it was not asked.
    pub asked: Option<String>,
    pub baseline_value: Option<f64>,
    pub checks_without_value: u32,
    /// The checks in a row without a value that pause the rollout.
    pub pause_after: u32,
}

/// The A/B test of stage 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbTestFigures {
    pub metric: AbMetric,
    pub planned_per_arm: u64,
    pub test: String,
    #[serde(deserialize_with = "number")]
    pub mixture_sd: f64,
    /// `holm` with several candidates.
    pub correction: Option<String>,
    /// The first candidate's comparison (`sequential::SequentialResult` and the fixed-horizon
    /// `abtest::AbResult`, as they serialize).
    pub result: Option<Value>,
    pub fixed_horizon: Option<Value>,
    pub comparisons: Vec<AbComparison>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbComparison {
    pub arm: String,
    pub result: Option<Value>,
    pub fixed_horizon: Option<Value>,
    /// Rejected by Holm's correction at 1 - confidence.
    pub rejected: bool,
}

/// A bandit arm's posterior of its reward rate, and P(best).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanditArm {
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub posterior: Option<Posterior>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_best: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestArmFigures {
    pub leader: String,
    #[serde(deserialize_with = "number")]
    pub p_best: f64,
    pub promote_at: Option<f64>,
    pub method: String,
}

/// One arm's figures over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmFigures {
    pub requests: u64,
    pub errors: u64,
    pub local_replies: u64,
    #[serde(deserialize_with = "number")]
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub accuracy: Option<f64>,
    pub labelled: u64,
    pub shadow: ShadowFigures,
    /// The shadow comparison's statistics (`shadowstats::ShadowStats`, as it serializes).
    pub shadow_stats: Option<Value>,
    /// What an A/B test's pre-period counted for the users this arm gets (CUPED's covariate).
    #[serde(default)]
    pub pre_period: Option<PrePeriodFigures>,
}

/// The pre-period's totals for one arm's users: requests, 5xx and rewards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrePeriodFigures {
    pub requests: u64,
    pub errors: u64,
    pub reward: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Status before any check, and after a source failed, keeps the JSON it always had.
    #[test]
    fn figures_without_a_check_keep_their_json() {
        let none = serde_json::to_value(Figures::default()).unwrap();
        assert_eq!(
            none,
            json!({"checks": [], "window": {}, "ab_test": null, "bandit": null, "checked_at_ms": null})
        );
        let failed = Figures {
            last: None,
            error: Some("prometheus did not answer within 10 s".into()),
        };
        let json = serde_json::to_value(&failed).unwrap();
        assert_eq!(
            json,
            json!({"figures_error": "prometheus did not answer within 10 s"})
        );
        assert_eq!(serde_json::from_value::<Figures>(json).unwrap(), failed);
        let unloadable = Status {
            rollout: RolloutStatus::Unloadable(Unloadable {
                name: Some("r".into()),
                phase: ErrorPhase::Error,
                reason: "cannot be loaded: x".into(),
            }),
            managed: Some(ManagedBy {
                spec_file: "r.yaml".into(),
                spec_file_error: None,
            }),
        };
        let json = serde_json::to_value(&unloadable).unwrap();
        assert_eq!(
            json,
            json!({"name": "r", "phase": "error", "reason": "cannot be loaded: x", "spec_file": "r.yaml", "spec_file_error": null})
        );
        assert_eq!(serde_json::from_value::<Status>(json).unwrap(), unloadable);
    }
}
