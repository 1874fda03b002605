//! What `status`, `list` and the answers to `apply` and commands show of a rollout (`api::Status`):
//! its state (from the published record) and the figures of the reconciler's last check, which
//! are the figures the rules were judged on, with the stage's figures beside them, labelled.

use serde_json::{json, Value};

use crate::api::{
    AbComparison, AbTestFigures, ArmFigures, BanditArm, BestArmFigures, CheckFigures, CheckVerdict,
    PrePeriodFigures, RuleCheck, StateSummary,
};
use crate::machine::{self, State};
use crate::posterior::posterior;
use crate::record::Record;
use crate::rules::{evaluate, ArmWindow, Verdict};
use crate::shadowstats::{shadow_stats, tost_p};
use crate::spec::{Metric, Spec, StrategyKind};
use crate::window::{window, BanditCounts, Totals};

/// Every arm's weight the filters are told now, as a JSON object (`{"v1": 95.0, "v2": 5.0}`).
pub fn weights_json(state: &State, spec: &Spec) -> Value {
    Value::Object(
        state
            .arm_weights(spec)
            .into_iter()
            .map(|(arm, w)| (arm, json!(w)))
            .collect(),
    )
}

/// The state part of a rollout's status.
pub fn state_summary(rec: &Record, spec: &Spec) -> StateSummary {
    let stage = spec.stages.get(rec.state.stage);
    StateSummary {
        name: rec.name.clone(),
        baseline: spec.baseline.clone(),
        candidate: spec.candidate.clone(),
        candidates: spec.candidates.clone(),
        winner: rec.state.winner.clone(),
        strategy: spec.strategy,
        phase: rec.state.phase,
        stage: rec.state.stage + 1,
        stages: spec.stages.len(),
        weights: rec.state.arm_weights(spec).into_iter().collect(),
        version: rec.version,
        failed_checks: rec.state.failed_checks,
        reason: rec.state.reason.clone(),
        override_weight: rec.state.override_weight,
        promotion: if spec.manual_promotion {
            "manual"
        } else {
            "auto"
        }
        .to_owned(),
        stage_started_ms: rec.state.stage_started_ms,
        stage_min_duration_ms: stage.map(|s| s.min_duration_ms),
        stage_min_requests: stage.map(|s| s.min_requests),
    }
}

fn arm_figures(w: &ArmWindow) -> ArmFigures {
    ArmFigures {
        requests: w.requests,
        errors: w.errors,
        local_replies: w.local_replies,
        error_rate: if w.requests > 0 {
            w.errors as f64 / w.requests as f64
        } else {
            0.0
        },
        p50_ms: w.latency.quantile(0.50),
        p95_ms: w.latency.quantile(0.95),
        p99_ms: w.latency.quantile(0.99),
        accuracy: (w.labelled > 0).then(|| w.correct as f64 / w.labelled as f64),
        labelled: w.labelled,
        shadow: w.shadow.clone(),
        shadow_stats: shadow_stats(&w.shadow.moments).map(|s| json!(s)),
        pre_period: pre_period_figures(w),
    }
}

/// What sticky filters counted in an A/B test's pre-period for the users this arm gets.
fn pre_period_figures(w: &ArmWindow) -> Option<PrePeriodFigures> {
    let b = &w.buckets;
    let sum = |v: &[u64]| v.iter().fold(0u64, |a, &x| a.saturating_add(x));
    (!b.pre_requests.is_empty()).then(|| PrePeriodFigures {
        requests: sum(&b.pre_requests),
        errors: sum(&b.pre_errors),
        reward: sum(&b.pre_reward_micros) as f64 / 1e6,
    })
}

/// A verdict as status names it.
pub fn verdict_of(v: &Verdict) -> CheckVerdict {
    match v {
        Verdict::Pass { .. } => CheckVerdict::Pass,
        Verdict::Fail { .. } => CheckVerdict::Fail,
        Verdict::NotEnoughData { .. } => CheckVerdict::NotEnoughData,
    }
}

/// The figures of one check: per rule and candidate the windows it was judged on (`judged`,
/// `[rule][candidate]` pairs of candidate and baseline), and the stage's windows so far beside
/// them.
pub fn figures(
    rec: &Record,
    spec: &Spec,
    totals: &Totals,
    judged: &[Vec<(ArmWindow, ArmWindow)>],
    fleet_bandit: Option<&std::collections::BTreeMap<String, BanditCounts>>,
    best: Option<&crate::bestarm::BestArm>,
    checked_at_ms: u64,
) -> CheckFigures {
    let state: &State = &rec.state;
    let stage_windows = crate::check::stage_windows(rec, spec, totals);
    let baseline = window(totals, &rec.base, &spec.baseline);
    let rules = spec
        .stages
        .get(state.stage)
        .map(|s| s.rules.as_slice())
        .unwrap_or_default();
    let checks: Vec<RuleCheck> = rules
        .iter()
        .enumerate()
        .zip(judged)
        .flat_map(|((index, rule), per_candidate)| {
            per_candidate
                .iter()
                .zip(&stage_windows)
                .zip(&spec.candidates)
                .map(move |((judged, stage), arm)| (index, rule, judged, stage, arm))
        })
        .map(|(index, rule, (c, b), (candidate, baseline), arm)| {
            let verdict = evaluate(rule, c, b);
            let (value, reason) = match &verdict {
                Verdict::Pass { value } => (Some(*value), None),
                Verdict::Fail { value, reason } => (Some(*value), Some(reason.clone())),
                Verdict::NotEnoughData { samples, needed } => {
                    (None, Some(format!("{samples} of {needed} samples")))
                }
            };
            let stage_value = match evaluate(rule, candidate, baseline) {
                Verdict::Pass { value } | Verdict::Fail { value, .. } => Some(value),
                Verdict::NotEnoughData { .. } => None,
            };
            let limit = rule.bound.limit();
            let mut check = RuleCheck {
                rule: index,
                arm: arm.clone(),
                metric: rule.metric,
                bound: rule.bound.name().to_owned(),
                limit,
                value,
                samples: Some(c.samples(rule.metric)),
                min_samples: Some(rule.min_samples),
                verdict: verdict_of(&verdict),
                reason,
                dry_run: rule.dry_run,
                on_fail: rule.on_fail,
                stage_value,
                stage_samples: Some(candidate.samples(rule.metric)),
                tost_p: None,
                t_test_p: None,
                mann_whitney_p: None,
                custom: None,
            };
            // The evidence behind a shadow verdict: TOST's p-value for the tolerance, the paired
            // t-test's for the guide's preset.
            let stats = shadow_stats(&c.shadow.moments);
            match rule.metric {
                Metric::ShadowEquivalent => {
                    check.tost_p = Some(stats.as_ref().and_then(|s| tost_p(s, limit)));
                }
                Metric::ShadowGuide => {
                    check.t_test_p = Some(stats.as_ref().and_then(|s| s.t_p));
                }
                Metric::LatencySlower | Metric::TtftSlower => {
                    check.mann_whitney_p = Some(
                        crate::ranktest::candidate_slower(
                            c.histogram(rule.metric),
                            b.histogram(rule.metric),
                        )
                        .map(|r| r.p_value),
                    );
                }
                Metric::Custom => {
                    if let Some(custom) = &rule.custom {
                        crate::custom_verdict::describe(rule, custom, c, b, &mut check);
                    }
                }
                _ => {}
            }
            check
        })
        .collect();
    let ab_test = spec
        .ab_test
        .as_ref()
        .filter(|ab| state.stage == ab.experiment_stage)
        .map(|ab| {
            let comparisons = machine::ab_comparisons(ab, &stage_windows);
            let first = comparisons.first();
            AbTestFigures {
                metric: ab.metric,
                planned_per_arm: ab.planned_per_arm,
                test: "mSPRT (always valid)".to_owned(),
                mixture_sd: ab.mixture_sd,
                correction: (comparisons.len() > 1).then(|| "holm".to_owned()),
                result: first.and_then(|c| c.0.as_ref()).map(|r| json!(r)),
                fixed_horizon: first.and_then(|c| c.1.as_ref()).map(|r| json!(r)),
                comparisons: comparisons
                    .iter()
                    .zip(&spec.candidates)
                    .map(|((result, fixed, rejected), arm)| AbComparison {
                        arm: arm.clone(),
                        result: result.as_ref().map(|r| json!(r)),
                        fixed_horizon: fixed.as_ref().map(|r| json!(r)),
                        rejected: *rejected,
                    })
                    .collect(),
            }
        });
    let bandit = (spec.strategy == StrategyKind::Bandit)
        .then_some(fleet_bandit)
        .flatten()
        .map(|counts| {
            counts
                .iter()
                .map(|(arm, c)| {
                    let posterior = posterior(c.trials, c.reward_micros as f64 / 1e6, 0.95);
                    let p_best = best
                        .and_then(|b| b.arms.iter().find(|a| &a.0 == arm))
                        .map(|(.., pb)| *pb);
                    let shown = (posterior.is_some() || p_best.is_some())
                        .then_some(BanditArm { posterior, p_best });
                    (arm.clone(), shown)
                })
                .collect()
        });
    let best_arm = best.filter(|_| bandit.is_some()).map(|b| BestArmFigures {
        leader: b.leader_name().to_owned(),
        p_best: b.leader_p(),
        promote_at: spec.bandit.as_ref().map(|x| x.promote_at),
        method: b.method.to_owned(),
    });
    CheckFigures {
        checks,
        ab_test,
        bandit,
        best_arm,
        checked_at_ms,
        checked_stage: state.stage + 1,
        window: std::iter::once((spec.baseline.clone(), arm_figures(&baseline)))
            .chain(
                spec.candidates
                    .iter()
                    .zip(&stage_windows)
                    .map(|(arm, (c, _))| (arm.clone(), arm_figures(c))),
            )
            .collect(),
        sample_ratio: None,
        guard: None,
    }
}
