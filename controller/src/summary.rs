//! What `status`, `list` and the answers to `apply` and commands show of a rollout: its state
//! (from the published record) and the figures of the reconciler's last check, which are the
//! figures the rules were judged on, with the stage's figures beside them, labelled.

use serde_json::{json, Value};

use crate::machine::{self, State};
use crate::posterior::posterior;
use crate::registry::{Loaded, View};
use crate::rules::{evaluate, ArmWindow, Verdict};
use crate::shadowstats::{shadow_stats, tost_p};
use crate::spec::{Metric, Spec, StrategyKind};
use crate::store::Record;
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

/// The state part of a rollout's summary.
pub fn state_summary(rec: &Record, spec: &Spec) -> Value {
    let weights = weights_json(&rec.state, spec);
    let stage = spec.stages.get(rec.state.stage);
    json!({
        "name": rec.name, "baseline": spec.baseline, "candidate": spec.candidate,
        "candidates": spec.candidates, "winner": rec.state.winner,
        "strategy": spec.strategy, "phase": rec.state.phase,
        "stage": rec.state.stage + 1, "stages": spec.stages.len(),
        "weights": weights,
        "version": rec.version, "failed_checks": rec.state.failed_checks, "reason": rec.state.reason,
        "override_weight": rec.state.override_weight,
        "promotion": if spec.manual_promotion { "manual" } else { "auto" },
        "stage_started_ms": rec.state.stage_started_ms,
        "stage_min_duration_ms": stage.map(|s| s.min_duration_ms),
        "stage_min_requests": stage.map(|s| s.min_requests),
    })
}

/// A rollout as `status` shows it: state, then the last check's figures (empty before it).
pub fn summary(view: &View) -> Value {
    let mut out = match &view.loaded {
        Loaded::Ok { rec, spec } => state_summary(rec, spec),
        Loaded::Error { reason } => {
            return json!({"phase": "error", "reason": reason});
        }
    };
    let figures = view.figures.as_deref().cloned().unwrap_or_else(|| {
        json!({"checks": [], "window": {}, "ab_test": null, "bandit": null, "checked_at_ms": null})
    });
    if let (Some(o), Value::Object(f)) = (out.as_object_mut(), figures) {
        o.extend(f);
    }
    out
}

fn arm_figures(w: &ArmWindow) -> Value {
    json!({"requests": w.requests, "errors": w.errors, "local_replies": w.local_replies,
           "error_rate": if w.requests > 0 { w.errors as f64 / w.requests as f64 } else { 0.0 },
           "p50_ms": w.latency.quantile(0.50), "p95_ms": w.latency.quantile(0.95),
           "p99_ms": w.latency.quantile(0.99),
           "accuracy": (w.labelled > 0).then(|| w.correct as f64 / w.labelled as f64),
           "labelled": w.labelled, "shadow": w.shadow,
           "shadow_stats": shadow_stats(&w.shadow.moments)})
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
) -> Value {
    let state: &State = &rec.state;
    let stage_windows = crate::check::stage_windows(rec, spec, totals);
    let baseline = window(totals, &rec.base, &spec.baseline);
    let rules = spec
        .stages
        .get(state.stage)
        .map(|s| s.rules.as_slice())
        .unwrap_or_default();
    let checks: Vec<Value> = rules
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
            let (verdict, value, reason) = match evaluate(rule, c, b) {
                Verdict::Pass { value } => ("pass", Some(value), None),
                Verdict::Fail { value, reason } => ("fail", Some(value), Some(reason)),
                Verdict::NotEnoughData { samples, needed } => (
                    "not_enough_data",
                    None,
                    Some(format!("{samples} of {needed} samples")),
                ),
            };
            let stage_value = match evaluate(rule, candidate, baseline) {
                Verdict::Pass { value } | Verdict::Fail { value, .. } => Some(value),
                Verdict::NotEnoughData { .. } => None,
            };
            let (bound, limit) = (rule.bound.name(), rule.bound.limit());
            let mut check = json!({"rule": index, "arm": arm, "metric": rule.metric, "bound": bound, "limit": limit,
                   "value": value, "samples": c.samples(rule.metric),
                   "min_samples": rule.min_samples, "verdict": verdict, "reason": reason,
                   "dry_run": rule.dry_run, "on_fail": rule.on_fail,
                   "stage_value": stage_value, "stage_samples": candidate.samples(rule.metric)});
            // The evidence behind a shadow verdict: TOST's p-value for the tolerance, the paired
            // t-test's for the guide's preset.
            let stats = shadow_stats(&c.shadow.moments);
            match rule.metric {
                Metric::ShadowEquivalent => {
                    check["tost_p"] = json!(stats.as_ref().and_then(|s| tost_p(s, limit)));
                }
                Metric::ShadowGuide => {
                    check["t_test_p"] = json!(stats.as_ref().and_then(|s| s.t_p));
                }
                Metric::LatencySlower => {
                    check["mann_whitney_p"] =
                        json!(crate::ranktest::candidate_slower(&c.latency, &b.latency)
                            .map(|r| r.p_value));
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
        .filter(|_| state.stage == 0)
        .map(|ab| {
            let comparisons = machine::ab_comparisons(ab, &stage_windows);
            let first = comparisons.first();
            json!({"metric": ab.metric, "planned_per_arm": ab.planned_per_arm,
               "test": "mSPRT (always valid)", "mixture_sd": ab.mixture_sd,
               "correction": (comparisons.len() > 1).then_some("holm"),
               "result": first.map(|c| &c.0),
               "fixed_horizon": first.map(|c| &c.1),
               "comparisons": comparisons.iter().zip(&spec.candidates).map(|((result, fixed, rejected), arm)| {
                   json!({"arm": arm, "result": result, "fixed_horizon": fixed, "rejected": rejected})
               }).collect::<Vec<_>>()})
        });
    let bandit = (spec.strategy == StrategyKind::Bandit)
        .then_some(fleet_bandit)
        .flatten()
        .map(|counts| {
            counts
                .iter()
                .map(|(arm, c)| {
                    let mut p = json!(posterior(c.trials, c.reward_micros as f64 / 1e6, 0.95));
                    if let Some((.., pb)) = best.and_then(|b| b.arms.iter().find(|a| &a.0 == arm)) {
                        p["p_best"] = json!(pb);
                    }
                    (arm.clone(), p)
                })
                .collect::<serde_json::Map<_, _>>()
        });
    let best_arm = best.filter(|_| bandit.is_some()).map(|b| {
        json!({"leader": b.leader_name(), "p_best": b.leader_p(),
               "promote_at": spec.bandit.as_ref().map(|x| x.promote_at), "method": b.method})
    });
    json!({
        "checks": checks, "ab_test": ab_test, "bandit": bandit, "best_arm": best_arm,
        "checked_at_ms": checked_at_ms, "checked_stage": state.stage + 1,
        "window": std::iter::once((spec.baseline.clone(), arm_figures(&baseline)))
            .chain(spec.candidates.iter().zip(&stage_windows).map(|(arm, (c, _))| (arm.clone(), arm_figures(c))))
            .collect::<serde_json::Map<_, _>>(),
    })
}
