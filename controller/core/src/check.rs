//! One check of a rollout, as plain functions of its record, spec and totals: the windows each
//! rule is judged on, the stage machine's decision and the events it writes, and what a refused
//! pre-hook changes instead. rampctl's reconciler does the IO around them (figures, hooks, store).

use std::collections::HashMap;

use crate::bestarm::BestArm;
use crate::events::{Event, EventKind};
use crate::guardrail::{self, GUARDRAIL_ALPHA};
use crate::lookback::Lookback;
use crate::machine::{self, Action, Phase, State};
use crate::record::{Moves, Record};
use crate::rules::{ArmWindow, Look};
use crate::spec::{Bound, HookPoint, Rule, Spec};
use crate::window::{window, Totals};

/// For each rule of the current stage and each candidate, the (candidate, baseline) windows it is
/// judged on: the most recent one (now minus an earlier check's totals, newest first) that holds
/// its `min_samples`, else the whole stage. Indexed `[rule][candidate]`. `Lookback` finds that
/// check without building a window per earlier check, so this costs the same with 10 or 600 kept.
pub fn judged_windows(
    rec: &Record,
    spec: &Spec,
    totals: &Totals,
    earlier: &Lookback,
) -> Vec<Vec<(ArmWindow, ArmWindow)>> {
    let rules: &[Rule] = spec
        .stages
        .get(rec.state.stage)
        .map(|s| s.rules.as_slice())
        .unwrap_or_default();
    // Rules that chose the same start (often all: the stage's) share its windows, built once per
    // arm: the baseline's otherwise again for every rule and candidate.
    let mut built: HashMap<(Option<usize>, &str), ArmWindow> = HashMap::new();
    let mut window_from = |from: Option<usize>, arm| {
        built
            .entry((from, arm))
            .or_insert_with(|| {
                let base = from.and_then(|i| earlier.get(i)).unwrap_or(&rec.base);
                window(totals, base, arm)
            })
            .clone()
    };
    rules
        .iter()
        .map(|rule| {
            // Only a relative bound (or a comparison of distributions) needs the baseline's
            // samples too.
            let relative =
                matches!(rule.bound, Bound::WorseThanBaseline(_)) || rule.metric.against_baseline();
            spec.candidates
                .iter()
                .map(|candidate| {
                    let from = earlier.newest_holding(
                        totals,
                        rule.metric,
                        rule.min_samples,
                        candidate,
                        relative.then_some(spec.baseline.as_str()),
                    );
                    (
                        window_from(from, candidate.as_str()),
                        window_from(from, spec.baseline.as_str()),
                    )
                })
                .collect()
        })
        .collect()
}

/// For each rule of the current stage and each candidate, the windows the rule is judged on and
/// the level of each (`guardrail`): the whole stage, and the windows since the 1st, 2nd, 4th,
/// 8th, ... latest check (those still kept), so a candidate that turns bad late in a long stage
/// is caught from the checks since. `checks` counts this stage's checks before this one (the
/// snapshots pushed to `earlier`). The stage's alpha is split evenly over its rules and
/// candidates, and each rule's over the windows' starts by `guardrail::start_weight`: the
/// chance that any rule ever fails a candidate within its bounds in this stage is at most
/// `GUARDRAIL_ALPHA`, however many checks it lasts. Indexed `[rule][candidate][window]`.
pub fn rule_looks(
    rec: &Record,
    spec: &Spec,
    totals: &Totals,
    earlier: &Lookback,
    checks: u64,
) -> Vec<Vec<Vec<Look>>> {
    let rules: &[Rule] = spec
        .stages
        .get(rec.state.stage)
        .map(|s| s.rules.as_slice())
        .unwrap_or_default();
    let tests = (rules.len() * spec.candidates.len()).max(1) as f64;
    let per_rule = GUARDRAIL_ALPHA / tests;
    // (start, snapshot): the stage's base is start 0; snapshot i (newest first) holds the totals
    // after check `checks - i` of this stage.
    let mut starts: Vec<(u64, &Totals)> = vec![(0, &rec.base)];
    let mut back = 1usize;
    while back <= earlier.len() && (back as u64) <= checks {
        if let Some(snapshot) = earlier.get(back - 1) {
            starts.push((checks + 1 - back as u64, snapshot));
        }
        back *= 2;
    }
    let arms: Vec<&str> = spec
        .candidates
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(spec.baseline.as_str()))
        .collect();
    // Each start's windows built once per arm, shared by every rule.
    let built: Vec<HashMap<&str, ArmWindow>> = starts
        .iter()
        .map(|(_, from)| arms.iter().map(|a| (*a, window(totals, from, a))).collect())
        .collect();
    rules
        .iter()
        .map(|_| {
            spec.candidates
                .iter()
                .map(|candidate| {
                    starts
                        .iter()
                        .zip(&built)
                        .map(|((start, _), w)| Look {
                            candidate: w.get(candidate.as_str()).cloned().unwrap_or_default(),
                            baseline: w.get(spec.baseline.as_str()).cloned().unwrap_or_default(),
                            alpha: per_rule * guardrail::start_weight(*start),
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// What a check sees besides the windows: the sample-ratio test, the best arm (a bandit) and
/// the guards' trips not judged yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen<'a> {
    pub srm: Option<&'a crate::sequential::SrmResult>,
    pub best: Option<&'a BestArm>,
    pub trips: &'a [crate::guard::Trip],
    /// Where the guards stand in the epoch (all trips so far, and the Envoys reporting).
    pub standing: Option<&'a crate::guard::Standing>,
}

/// One check of a progressing rollout on the windows `rule_looks` chose: the record to store
/// (if anything changed) and the events to log (the guards' trips judged, a dry-run rule that started failing,
/// then the decision's).
pub fn check(
    rec: &Record,
    spec: &Spec,
    totals: &Totals,
    looks: &[Vec<Vec<Look>>],
    now: u64,
    seen: Seen<'_>,
) -> Option<(Record, Vec<Event>)> {
    let Seen {
        srm,
        best,
        trips,
        standing,
    } = seen;
    let stage_windows = stage_windows(rec, spec, totals);
    let rules: &[Rule] = spec
        .stages
        .get(rec.state.stage)
        .map(|s| s.rules.as_slice())
        .unwrap_or_default();
    let windows = |rule: &Rule, candidate: usize| {
        rules
            .iter()
            .position(|r| std::ptr::eq(r, rule))
            .and_then(|i| looks.get(i)?.get(candidate).cloned())
            .unwrap_or_default()
    };
    let verdicts = machine::judge_rules(spec, &rec.state, &windows);
    // An Envoy's guard cut a candidate off, and a rule it stands in for fails on the fleet's
    // figures too: two tests agree, so the rollback is not held for `failure_threshold`.
    let confirmed = verdicts.iter().any(|v| {
        matches!(v.verdict, crate::rules::Verdict::Fail { .. })
            && rules.get(v.rule).is_some_and(crate::guard::confirms)
            // The failing candidate is the one a guard cut off, not another.
            && spec
                .candidates
                .get(v.candidate)
                .is_some_and(|c| trips.iter().any(|t| &t.arm == c))
    });
    let at_once;
    let judged_by = if confirmed {
        at_once = Spec {
            failure_threshold: 1,
            ..spec.clone()
        };
        &at_once
    } else {
        spec
    };
    let (mut state, mut action) = machine::decide(
        judged_by,
        &rec.state,
        now,
        &stage_windows,
        &verdicts,
        srm,
        best,
    );
    let mut rearmed = None;
    let ruled = state.phase == Phase::RolledBack;
    if state.phase == Phase::Progressing {
        if let Some(g) = standing {
            (state, action, rearmed) = stand_by_trips(spec, rec, g, state, action, now);
        }
    }
    let outcome = match (state.phase == Phase::RolledBack, confirmed && ruled) {
        (true, true) => "the fleet's figures confirm it: rolled back at once",
        (true, false) if !ruled => "every Envoy reporting has cut it off: rolled back",
        (true, false) => "rolled back by the rules",
        _ => "the fleet's figures do not confirm it at this check: those Envoys keep it off, and the others' figures decide",
    };
    let tripped = trip_event(trips, outcome);
    if state == rec.state && tripped.is_none() && rearmed.is_none() {
        return None;
    }
    if confirmed && state.phase == Phase::RolledBack {
        if let Some(reason) = state.reason.as_mut() {
            reason.push_str(&format!(
                "; at once, confirming the guard's trip in {} Envoy(s)",
                trips.len()
            ));
        }
    }
    let moves = Moves {
        base: (state.stage != rec.state.stage).then(|| totals.clone()),
        ..Moves::default()
    };
    let next = rec.transition(spec, spec, state, moves);
    // A decision's evidence (the A/B test's figures) goes into its event.
    let evidence = next
        .state
        .reason
        .as_deref()
        .map_or(String::new(), |r| format!("; {r}"));
    let event = match action {
        Action::Advance { to_stage } => Some((
            EventKind::Advance,
            format!(
                "stage {} at {}%{evidence}",
                to_stage + 1,
                spec.stages[to_stage].weight
            ),
        )),
        Action::Promote => Some((
            EventKind::Promoted,
            format!("candidate has all traffic{evidence}"),
        )),
        Action::Hold(Some(reason)) if next.state.phase == Phase::Paused => {
            Some((EventKind::Paused, reason))
        }
        // Confirming a trip, the event says so as the state's reason does.
        Action::RollBack { reason } => Some((
            EventKind::RolledBack,
            next.state.reason.clone().unwrap_or(reason),
        )),
        Action::Hold(Some(reason)) if next.state.failed_checks > rec.state.failed_checks => {
            Some((EventKind::CheckFailed, reason))
        }
        Action::Hold(Some(reason))
            if reason == machine::AWAITING_PROMOTION
                && rec.state.reason.as_deref() != Some(machine::AWAITING_PROMOTION) =>
        {
            Some((EventKind::AwaitingPromotion, reason))
        }
        Action::Hold(_) => None,
    };
    // Data from a split that is not the configured one is judged by nothing, dry runs included.
    let mismatch = srm.is_some_and(|s| s.mismatch);
    let mut events: Vec<Event> = tripped.into_iter().chain(rearmed).collect();
    events.extend(
        (!mismatch)
            .then(|| dry_run_started(rec, spec, rules, &verdicts))
            .flatten(),
    );
    events.extend(event);
    Some((next, events))
}

/// What standing trips do to a decision the rules made. A candidate every Envoy reporting has cut
/// off is rolled back: each Envoy ruled its 5xx rate above the bound at level alpha on its own
/// responses, and none serves it any more, so no rule could ever gather the evidence. While only
/// some Envoys cut a candidate off, the others' figures decide: the stage does not advance on a
/// check that would have advanced it, but re-arms those Envoys' guards (a new epoch: they serve the
/// candidate again, their trip judged by the others' figures); the next check goes on if none trips
/// again. The re-arming event, if any.
fn stand_by_trips(
    spec: &Spec,
    rec: &Record,
    standing: &crate::guard::Standing,
    state: State,
    action: Action,
    now: u64,
) -> (State, Action, Option<Event>) {
    let weight = spec.stages.get(rec.state.stage).map_or(0.0, |s| s.weight);
    if let Some(arm) = standing.everywhere() {
        let reason = format!(
            "stage {} ({weight}%): the guard of every Envoy reporting ({}) cut {arm} off: each found its 5xx rate above the bound at level alpha on its own responses, and none serves it any more",
            rec.state.stage + 1,
            standing.envoys
        );
        let next = State {
            phase: Phase::RolledBack,
            reason: Some(reason.clone()),
            ..state
        };
        return (next, Action::RollBack { reason }, None);
    }
    let cut: Vec<String> = standing
        .tripped
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(arm, n)| format!("{arm} in {n} of {} Envoys", standing.envoys))
        .collect();
    if cut.is_empty() || !matches!(action, Action::Advance { .. } | Action::Promote) {
        return (state, action, None);
    }
    let why = format!(
        "the rules pass on the fleet's figures while guards cut off {}: those guards are re-armed (the candidate serves there again) and the stage goes on at a check with no new trip",
        cut.join(", ")
    );
    let held = State {
        guard_rearmed_ms: Some(now.max(crate::guard::epoch(&rec.state) + 1)),
        reason: Some(why.clone()),
        ..rec.state.clone()
    };
    (
        held,
        Action::Hold(Some(why.clone())),
        Some((EventKind::GuardRearmed, why)),
    )
}

/// The event of the guards' trips this check judged: which Envoys cut which candidates off, and
/// what the fleet's figures made of it.
fn trip_event(trips: &[crate::guard::Trip], outcome: &str) -> Option<Event> {
    let first = trips.first()?;
    let mut arms: Vec<&str> = trips.iter().map(|t| t.arm.as_str()).collect();
    arms.sort_unstable();
    arms.dedup();
    Some((
        EventKind::GuardTripped,
        format!(
            "the guard of {} Envoy(s) (first {}) cut {} off in epoch {}; {outcome}",
            trips.len(),
            first.instance,
            arms.join(", "),
            first.epoch
        ),
    ))
}

/// The event of the dry-run rules that fail at this check and did not at the last one: a
/// failure is recorded when it starts (with the figures), not at every check while it lasts.
fn dry_run_started(
    rec: &Record,
    spec: &Spec,
    rules: &[Rule],
    verdicts: &[machine::RuleVerdict],
) -> Option<Event> {
    let several = spec.candidates.len() > 1;
    let started: Vec<String> = verdicts
        .iter()
        .filter_map(|v| {
            let rule = rules.get(v.rule).filter(|r| r.dry_run)?;
            let crate::rules::Verdict::Fail { reason, .. } = &v.verdict else {
                return None;
            };
            let arm = spec.candidates.get(v.candidate)?;
            let key = machine::dry_run_key(v.rule, arm);
            if rec.state.dry_run_failing.contains(&key) {
                return None;
            }
            let on = if several {
                format!(" on {arm}")
            } else {
                String::new()
            };
            Some(format!(
                "{}{on} (dry run, not acted on): {reason}",
                machine::rule_label(rule)
            ))
        })
        .collect();
    let stage = spec.stages.get(rec.state.stage)?;
    (!started.is_empty()).then(|| {
        (
            EventKind::DryRunFailed,
            format!(
                "stage {} ({}%): {}",
                rec.state.stage + 1,
                stage.weight,
                started.join("; ")
            ),
        )
    })
}

/// The hook point a decided transition must pass first, if any.
pub fn pre_hook(spec: &Spec, before: &State, after: &State) -> Option<HookPoint> {
    let (_, from) = before.weights(spec);
    let (_, to) = after.weights(spec);
    if to <= from {
        None
    } else if to >= 100.0 {
        Some(HookPoint::BeforePromotion)
    } else {
        Some(HookPoint::BeforeStep)
    }
}

/// A failed pre-hook: the check's decision is replaced by `machine::hook_failed`'s.
pub fn after_failed_hook(rec: &Record, spec: &Spec, why: String) -> (Record, Event) {
    let (state, action) = machine::hook_failed(spec, &rec.state, why.clone());
    let next = rec.transition(spec, spec, state, Moves::default());
    let event = match action {
        Action::RollBack { reason } => (EventKind::RolledBack, reason),
        _ => (EventKind::HookFailed, why),
    };
    (next, event)
}

/// Each candidate's (candidate, baseline) window since the stage began, in `spec.candidates` order.
pub fn stage_windows(rec: &Record, spec: &Spec, totals: &Totals) -> Vec<(ArmWindow, ArmWindow)> {
    let baseline = window(totals, &rec.base, &spec.baseline);
    spec.candidates
        .iter()
        .map(|c| (window(totals, &rec.base, c), baseline.clone()))
        .collect()
}

/// CUPED's covariate in `totals`, scoped to this rollout's pre-period: in the pre-period, the
/// counts since it began (the stage's base); in the experiment that follows, since the base kept
/// when it began (`State::pre_period_base`); anywhere else, none, so no other stage or strategy
/// adjusts by counts an earlier revision or pre-period left behind.
pub fn scope_pre_period(totals: &mut Totals, rec: &Record, spec: &Spec) {
    let experiment = spec.ab_test.as_ref().map_or(0, |ab| ab.experiment_stage);
    let in_experiment = experiment > 0 && rec.state.stage == experiment;
    for (arm, t) in totals.iter_mut() {
        let base = if rec.state.in_pre_period(spec) {
            Some(
                rec.base
                    .get(arm)
                    .map_or_else(Default::default, |b| b.buckets.clone()),
            )
        } else if in_experiment {
            rec.state
                .pre_period_base
                .as_ref()
                .map(|b| b.get(arm).cloned().unwrap_or_default())
        } else {
            None
        };
        t.buckets.scope_pre_period(base.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::ArmTotals;
    use std::collections::VecDeque;

    pub(super) fn record(spec: &Spec) -> Record {
        Record {
            name: "r".into(),
            spec_text: String::new(),
            state: machine::State::start(spec, 0),
            version: 1,
            base: Totals::default(),
        }
    }

    /// `judged_windows` as it was before `Lookback`: for each earlier check, newest first, both
    /// windows built, until one holds the rule's samples.
    fn scanned_windows(
        rec: &Record,
        spec: &Spec,
        totals: &Totals,
        earlier: &[Totals],
    ) -> Vec<Vec<(ArmWindow, ArmWindow)>> {
        let rules = &spec.stages[rec.state.stage].rules;
        rules
            .iter()
            .map(|rule| {
                let relative = matches!(rule.bound, Bound::WorseThanBaseline(_))
                    || rule.metric.against_baseline();
                spec.candidates
                    .iter()
                    .map(|candidate| {
                        let pick = |from: &Totals| {
                            (
                                window(totals, from, candidate),
                                window(totals, from, &spec.baseline),
                            )
                        };
                        earlier
                            .iter()
                            .map(pick)
                            .find(|(c, b)| {
                                c.samples(rule.metric) >= rule.min_samples
                                    && (!relative || b.samples(rule.metric) >= rule.min_samples)
                            })
                            .unwrap_or_else(|| pick(&rec.base))
                    })
                    .collect()
            })
            .collect()
    }

    /// Issue 20, item 10: the windows the rules judge are the ones the scan over every earlier
    /// check chose, check after check, for a fleet of Envoys with uneven traffic per arm where
    /// now and then one leaves (its counts leave the totals) and another joins.
    #[test]
    fn judged_windows_are_the_scans() {
        let spec = Spec::parse(
            "name: r\nstrategy: ab_test\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}, {name: v3, role: candidate}]\nab_test: {metric: success_rate}\n\
             stages:\n- weight: 50\n  rules:\n\
             \x20 - {metric: error_rate, max: 0.1, min_samples: 30}\n\
             \x20 - {metric: latency_p95, max: 100, min_samples: 50}\n\
             \x20 - {metric: latency_slower, max: 0.6, min_samples: 40}\n\
             \x20 - {metric: error_rate_vs_baseline, max: 0.01, min_samples: 60}\n\
             \x20 - {metric: accuracy, max_worse_than_baseline: 0.05, min_samples: 20}\n\
             \x20 - {metric: error_rate, max_worse_than_baseline: 0.05, min_samples: 200}\n\
             - weight: 100\n",
        )
        .unwrap();
        let mut rng = fastrand::Rng::with_seed(2020);
        let mut chose_earlier = 0;
        for _ in 0..20 {
            let mut rec = record(&spec);
            let mut envoys: Vec<Totals> = vec![Totals::new(); 3];
            let sum = |envoys: &[Totals]| {
                let mut out = Totals::new();
                for (arm, t) in envoys.iter().flatten() {
                    let acc: &mut ArmTotals = out.entry(arm.clone()).or_default();
                    acc.requests += t.requests;
                    acc.errors += t.errors;
                    acc.labelled += t.labelled;
                    acc.correct += t.correct;
                    acc.le = t.le.clone();
                    acc.counts.resize(t.counts.len(), 0);
                    for (a, b) in acc.counts.iter_mut().zip(&t.counts) {
                        *a += b;
                    }
                }
                out
            };
            let mut earlier: VecDeque<Totals> = VecDeque::new();
            let mut kept = Lookback::new(40);
            for step in 0..120 {
                for envoy in envoys.iter_mut() {
                    for arm in ["v1", "v2", "v3"] {
                        let t = envoy.entry(arm.to_owned()).or_insert_with(|| ArmTotals {
                            le: vec![50.0, 100.0, f64::INFINITY],
                            counts: vec![0; 3],
                            ..Default::default()
                        });
                        let n = rng.u64(0..6);
                        t.requests += n;
                        t.errors += rng.u64(0..=n.min(1));
                        t.labelled += rng.u64(0..3);
                        t.correct += rng.u64(0..2);
                        let fast = rng.u64(0..=n);
                        let slow = rng.u64(0..=n - fast);
                        t.counts[0] += fast;
                        t.counts[1] += fast + slow;
                        t.counts[2] += n;
                    }
                }
                if rng.u8(0..12) == 0 {
                    envoys[rng.usize(0..3)] = Totals::new();
                }
                let now = sum(&envoys);
                if step == 10 {
                    // The stage's base is some check's totals.
                    rec.base = now.clone();
                }
                let want = scanned_windows(&rec, &spec, &now, earlier.make_contiguous());
                let got = judged_windows(&rec, &spec, &now, &kept);
                assert_eq!(got, want, "check {step}");
                chose_earlier += want
                    .iter()
                    .flatten()
                    .filter(|w| **w != stage_windows(&rec, &spec, &now)[0])
                    .count();
                earlier.push_front(now.clone());
                earlier.truncate(40);
                kept.push(now);
            }
        }
        assert!(chose_earlier > 1000, "{chose_earlier}");
    }

    fn with_pre(n: u64) -> ArmTotals {
        ArmTotals {
            buckets: crate::window::BucketCounts {
                pre_requests: vec![n; 64],
                pre_errors: vec![0; 64],
                pre_reward_micros: vec![n * 1_000; 64],
                ..Default::default()
            },
            ..ArmTotals::default()
        }
    }

    /// A revision's pre-period starts from what earlier ones left; the experiment after it
    /// keeps that base; any other stage or strategy sees no pre-period at all.
    #[test]
    fn the_pre_period_is_this_revisions_alone() {
        let spec = Spec::parse("name: r\nstrategy: ab_test\nab_test: {metric: conversion}\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\nstages: [{weight: 0, min_duration_s: 600}, {weight: 50}, {weight: 100}]\n").unwrap();
        let rec = Record {
            base: [("v2".to_owned(), with_pre(7))].into(),
            ..record(&spec)
        };
        let now: Totals = [("v2".to_owned(), with_pre(10))].into();
        let scoped = |rec: &Record, spec: &Spec| {
            let mut t = now.clone();
            scope_pre_period(&mut t, rec, spec);
            t["v2"].buckets.pre_requests.clone()
        };
        assert_eq!(
            scoped(&rec, &spec),
            vec![3; 64],
            "in the pre-period: since it began"
        );
        let experiment = machine::State {
            stage: 1,
            ..rec.state.clone()
        };
        let moves = Moves {
            base: Some(now.clone()),
            ..Moves::default()
        };
        let moved = rec.transition(&spec, &spec, experiment, moves);
        assert_eq!(
            scoped(&moved, &spec),
            vec![3; 64],
            "the experiment keeps the pre-period's base"
        );
        let promoted = machine::State {
            stage: 2,
            ..moved.state.clone()
        };
        let promoted = moved.transition(&spec, &spec, promoted, Moves::default());
        assert!(
            scoped(&promoted, &spec).is_empty(),
            "none after the experiment"
        );
        let canary = Spec::parse("name: r\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\nstages: [{weight: 50}, {weight: 100}]\n").unwrap();
        assert!(
            scoped(&rec, &canary).is_empty(),
            "a canary takes no covariate"
        );
    }
}

#[cfg(test)]
mod guard_tests {
    use super::*;
    use crate::guard::Trip;
    use crate::window::ArmTotals;

    /// An arm's totals: 500 requests, `errors` of them 5xx.
    fn arm(errors: u64) -> ArmTotals {
        ArmTotals {
            requests: 500,
            errors,
            ..ArmTotals::default()
        }
    }

    /// A guard's trip is judged at the check it wakes: a failing error rule it stands in for
    /// rolls back at once (no `failure_threshold` wait), a passing one only records the trip.
    #[test]
    fn a_trip_confirmed_by_the_fleets_figures_rolls_back_at_once() {
        let spec = Spec::parse("name: r\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\nfailure_threshold: 3\nstages:\n  - {weight: 50, rules: [{metric: error_rate, max: 0.05, min_samples: 50}]}\n  - {weight: 100}\n").unwrap();
        let rec = super::tests::record(&spec);
        let totals = |v2_errors: u64| -> Totals {
            [("v1".to_owned(), arm(0)), ("v2".to_owned(), arm(v2_errors))].into()
        };
        let trips = [Trip {
            instance: "00ab".into(),
            arm: "v2".into(),
            epoch: 1,
        }];
        let run = |t: &Totals, trips: &[Trip]| {
            let looks = rule_looks(&rec, &spec, t, &Lookback::default(), 0);
            let seen = Seen {
                trips,
                ..Seen::default()
            };
            check(&rec, &spec, t, &looks, 1_000, seen).unwrap()
        };
        let failing = totals(170);
        let (plain, events) = run(&failing, &[]);
        assert_eq!(
            (plain.state.phase, plain.state.failed_checks),
            (Phase::Progressing, 1)
        );
        assert_eq!(events.last().unwrap().0, EventKind::CheckFailed);
        let (at_once, events) = run(&failing, &trips);
        assert_eq!(at_once.state.phase, Phase::RolledBack);
        assert!(at_once
            .state
            .reason
            .as_deref()
            .unwrap()
            .contains("guard's trip in 1 Envoy"));
        let kinds: Vec<EventKind> = events.iter().map(|e| e.0).collect();
        assert_eq!(kinds, [EventKind::GuardTripped, EventKind::RolledBack]);
        assert!(events[0].1.contains("confirm it"));
        // Healthy on the fleet's figures: the trip is recorded, the rollout goes on.
        let (held, events) = run(&totals(5), &trips);
        assert_eq!(held.state.phase, Phase::Progressing);
        assert_eq!(events[0].0, EventKind::GuardTripped);
        assert!(events[0].1.contains("do not confirm it"));
    }

    /// Trips that stand: a candidate every Envoy cut off is rolled back (no rule can see it any
    /// more); one some Envoys cut off holds a stage the rules would advance, and re-arms them.
    #[test]
    fn standing_trips_roll_back_everywhere_and_re_arm_somewhere() {
        let spec = Spec::parse("name: r\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\nstages:\n  - {weight: 50, rules: [{metric: error_rate, max: 0.05, min_samples: 50}]}\n  - {weight: 100}\n").unwrap();
        let rec = super::tests::record(&spec);
        let healthy: Totals = [("v1".to_owned(), arm(0)), ("v2".to_owned(), arm(1))].into();
        let looks = rule_looks(&rec, &spec, &healthy, &Lookback::default(), 0);
        let run = |tripped: usize, envoys: usize| {
            let standing = crate::guard::Standing {
                tripped: [("v2".to_owned(), tripped)].into(),
                envoys,
            };
            let seen = Seen {
                standing: Some(&standing),
                ..Seen::default()
            };
            check(&rec, &spec, &healthy, &looks, 5_000, seen).unwrap()
        };
        let (everywhere, _) = run(2, 2);
        assert_eq!(everywhere.state.phase, Phase::RolledBack);
        assert!(everywhere
            .state
            .reason
            .unwrap()
            .contains("every Envoy reporting (2) cut v2 off"));
        let (somewhere, events) = run(1, 2);
        assert_eq!(
            (somewhere.state.phase, somewhere.state.stage),
            (Phase::Progressing, 0),
            "the stage waits"
        );
        assert_eq!(somewhere.state.guard_rearmed_ms, Some(5_000));
        assert_eq!(crate::guard::epoch(&somewhere.state), 5_000, "a new epoch");
        assert_eq!(events.last().unwrap().0, EventKind::GuardRearmed);
        // Without trips the same check advances.
        let (free, _) = run(0, 2);
        assert_eq!(free.state.stage, 1);
    }

    /// A reviewer's probe, kept: an Envoy's guard cut v2 off while the error rule fails for v3
    /// only; that is no confirmation, so `failure_threshold` (3) holds.
    #[test]
    fn a_trip_of_one_candidate_does_not_confirm_another_candidates_failure() {
        let spec = Spec::parse("name: r\nstrategy: ab_test\nab_test: {metric: conversion}\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}, {name: v3, role: candidate}]\nfailure_threshold: 3\nstages:\n  - {weight: 50, rules: [{metric: error_rate, max: 0.05, min_samples: 50}]}\n  - {weight: 100}\n").unwrap();
        let rec = super::tests::record(&spec);
        let totals: Totals = [
            ("v1".to_owned(), arm(0)),
            ("v2".to_owned(), arm(5)),
            ("v3".to_owned(), arm(170)),
        ]
        .into();
        let trip = |arm: &str| Trip {
            instance: "00ab".into(),
            arm: arm.into(),
            epoch: 1,
        };
        let looks = rule_looks(&rec, &spec, &totals, &Lookback::default(), 0);
        let run = |trips: &[Trip]| {
            let seen = Seen {
                trips,
                ..Seen::default()
            };
            check(&rec, &spec, &totals, &looks, 1_000, seen).unwrap().0
        };
        let other = run(&[trip("v2")]);
        assert_eq!(
            other.state.phase,
            Phase::Progressing,
            "{:?}",
            other.state.reason
        );
        assert_eq!(
            run(&[trip("v1")]).state.phase,
            Phase::Progressing,
            "the baseline's name"
        );
        assert_eq!(run(&[trip("v3")]).state.phase, Phase::RolledBack);
    }
}
