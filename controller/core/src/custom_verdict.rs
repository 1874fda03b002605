//! What a custom rule (`spec::custom`) does around its verdict (`rules::custom`): its figures ride
//! in the totals into every window, status shows what was asked and why there is no value, and
//! checks in a row without one pause the rollout.

use std::collections::BTreeMap;

use crate::api::{CustomCheck, RuleCheck};
use crate::events::{Event, EventKind};
use crate::machine::{Phase, State};
use crate::record::Record;
use crate::rules::custom::evaluate;
use crate::rules::Verdict;
use crate::spec::custom::{CustomRule, Measured, Measurement};
use crate::spec::{Rule, Spec};
use crate::window::{ArmWindow, Totals};

/// Counts, per custom rule, the checks in a row without a value for some arm it judges. Counted
/// while the rollout progresses or is paused (status shows the count); it starts over in a new
/// stage, when the rollout resumes (an operator gives the source its checks again) and in any
/// other phase.
#[derive(Debug, Default)]
pub struct NoData {
    /// The stage last counted, and whether it was progressing then.
    at: Option<(usize, bool)>,
    streaks: BTreeMap<String, u32>,
}

impl NoData {
    pub fn observe(&mut self, state: &State, measured: &Measured) {
        let counting = matches!(state.phase, Phase::Progressing | Phase::Paused);
        let progressing = state.phase == Phase::Progressing;
        let resumed_or_moved = self
            .at
            .is_some_and(|(stage, was)| stage != state.stage || (progressing && !was));
        if !counting || resumed_or_moved {
            self.streaks.clear();
        }
        self.at = counting.then_some((state.stage, progressing));
        if !counting {
            return;
        }
        let mut without: BTreeMap<&str, bool> = BTreeMap::new();
        for (rule, m) in measured.values().flatten() {
            *without.entry(rule).or_default() |= m.value.is_err();
        }
        for (rule, none) in without {
            if none {
                *self.streaks.entry(rule.to_owned()).or_default() += 1;
            } else {
                self.streaks.remove(rule);
            }
        }
    }

    pub fn streak(&self, rule: &str) -> u32 {
        self.streaks.get(rule).copied().unwrap_or(0)
    }
}

/// Puts a check's figures into the totals its windows are built from (each window carries them
/// as they are: point values, not counts), with each rule's count of checks without a value.
pub fn attach(totals: &mut Totals, measured: Measured, no_data: &NoData) {
    for (arm, mut figures) in measured {
        for (rule, m) in figures.iter_mut() {
            m.checks_without_value = no_data.streak(rule);
        }
        totals.entry(arm).or_default().custom = figures;
    }
}

/// What status shows of a custom rule's check besides value and verdict: its name and source,
/// what was asked, the baseline's figure, why there is no value (or why it failed), and the
/// checks without a value against the pause limit. No sample sizes: there are none.
pub fn describe(
    rule: &Rule,
    c: &CustomRule,
    candidate: &ArmWindow,
    baseline: &ArmWindow,
    check: &mut RuleCheck,
) {
    let mine = candidate.custom.get(&c.name);
    let base = rule
        .bound
        .is_relative()
        .then(|| baseline.custom.get(&c.name))
        .flatten();
    let why = match evaluate(rule, c, candidate, baseline) {
        Verdict::Fail { reason, .. } => Some(reason),
        Verdict::Pass { .. } => None,
        Verdict::NotEnoughData { .. } => Some(match (mine, base) {
            (None, _) => "not measured at this check".to_owned(),
            (Some(Measurement { value: Err(e), .. }), _) => format!("no value: {e}"),
            (_, Some(Measurement { value: Err(e), .. })) => format!("no baseline value: {e}"),
            _ => "the baseline was not measured at this check".to_owned(),
        }),
    };
    let without = [mine, base]
        .iter()
        .flatten()
        .map(|m| m.checks_without_value)
        .max()
        .unwrap_or(0);
    check.custom = Some(CustomCheck {
        name: c.name.clone(),
        source: c.source.kind().to_owned(),
        asked: mine.map(|m| m.asked.clone()),
        baseline_value: base.and_then(|m| m.value.clone().ok()),
        checks_without_value: without,
        pause_after: c.no_data_checks,
    });
    check.reason = why;
    check.samples = None;
    check.min_samples = None;
    check.stage_samples = None;
}

/// After the stage machine: a custom rule without a value for its `no_data_checks` checks in a
/// row pauses a rollout the check leaves progressing in its stage, with the reason (a real
/// failure of another rule still rolls back). An operator resumes once the source answers.
pub fn pause_without_data(
    rec: &Record,
    spec: &Spec,
    totals: &Totals,
    decided: Option<(Record, Vec<Event>)>,
) -> Option<(Record, Vec<Event>)> {
    if rec.state.phase != Phase::Progressing {
        return decided;
    }
    let rules = spec
        .stages
        .get(rec.state.stage)
        .map(|s| s.rules.as_slice())
        .unwrap_or_default();
    let due: Vec<String> = rules
        .iter()
        .filter_map(|r| r.custom.as_deref())
        .filter_map(|c| {
            let missing: Vec<(&String, &Measurement)> = totals
                .iter()
                .filter_map(|(arm, t)| t.custom.get(&c.name).map(|m| (arm, m)))
                .filter(|(_, m)| m.value.is_err())
                .collect();
            let checks = missing.iter().map(|(_, m)| m.checks_without_value).max()?;
            (checks >= c.no_data_checks).then(|| {
                let why: Vec<String> = missing
                    .iter()
                    .map(|(arm, m)| {
                        format!(
                            "{arm}: {}",
                            m.value.as_ref().err().map_or("", |e| e.as_str())
                        )
                    })
                    .collect();
                format!(
                    "custom metric {}: no value for {checks} checks in a row ({})",
                    c.name,
                    why.join("; ")
                )
            })
        })
        .collect();
    if due.is_empty() {
        return decided;
    }
    let (mut next, mut events) = decided.unwrap_or_else(|| (rec.clone(), Vec::new()));
    if next.state.phase != Phase::Progressing || next.state.stage != rec.state.stage {
        // Rolled back or paused by the check itself, or moved on: that stands.
        return Some((next, events)).filter(|(n, _)| n != rec);
    }
    let mut why = format!("{}; resume once the source answers", due.join("; "));
    if let Some(other) = next
        .state
        .reason
        .as_deref()
        .filter(|r| Some(*r) != rec.state.reason.as_deref())
    {
        why.push_str(&format!(" (also: {other})"));
    }
    next.state.phase = Phase::Paused;
    next.state.reason = Some(why.clone());
    // The pause replaces the check's own decision; a dry run's failure stays on record.
    events.retain(|(kind, _)| *kind == EventKind::DryRunFailed);
    events.push((EventKind::Paused, why));
    Some((next, events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::custom::test_specs::{custom, spec_with, window_with};
    use serde_json::Value;

    fn missing(rule: &str, arm: &str) -> Measured {
        let m = Measurement {
            value: Err("the query returned no series".into()),
            asked: "q".into(),
            checks_without_value: 0,
        };
        [(arm.to_owned(), [(rule.to_owned(), m)].into())].into()
    }

    fn measured(rule: &str, arm: &str, v: f64) -> Measured {
        let m = Measurement {
            value: Ok(v),
            asked: "q".into(),
            checks_without_value: 0,
        };
        [(arm.to_owned(), [(rule.to_owned(), m)].into())].into()
    }

    /// A check as the reconciler makes it: count, attach, the stage machine, then the pause.
    fn checked(
        rec: &Record,
        spec: &Spec,
        no_data: &mut NoData,
        figures: Measured,
    ) -> Option<(Record, Vec<Event>)> {
        no_data.observe(&rec.state, &figures);
        let mut totals = Totals::new();
        attach(&mut totals, figures, no_data);
        let looks = crate::check::rule_looks(rec, spec, &totals, &Default::default(), 0);
        let decided = crate::check::check(rec, spec, &totals, &looks, 10_000, Default::default());
        pause_without_data(rec, spec, &totals, decided)
    }

    #[test]
    fn no_value_for_n_checks_pauses_and_a_failing_figure_rolls_back() {
        let s = spec_with(
            "{metric: custom, name: conf, web: {url: 'http://k/{{arm}}', json_pointer: /v}, min: 0.8, no_data_checks: 3}",
        )
        .unwrap();
        let mut rec = Record {
            name: "fraud".into(),
            spec_text: String::new(),
            state: State::start(&s, 0),
            version: 1,
            base: Totals::new(),
        };
        let mut no_data = NoData::default();
        // Two checks without a value hold the stage quietly; a value in between starts over.
        for _ in 0..2 {
            assert_eq!(checked(&rec, &s, &mut no_data, missing("conf", "v2")), None);
        }
        assert_eq!(
            checked(&rec, &s, &mut no_data, measured("conf", "v2", 0.9)),
            None
        );
        assert_eq!(no_data.streak("conf"), 0);
        for _ in 0..2 {
            assert_eq!(checked(&rec, &s, &mut no_data, missing("conf", "v2")), None);
        }
        let (paused, event) = checked(&rec, &s, &mut no_data, missing("conf", "v2")).unwrap();
        assert_eq!(paused.state.phase, Phase::Paused);
        assert_eq!(paused.version, rec.version, "the weights stay");
        let why = "custom metric conf: no value for 3 checks in a row (v2: the query returned no series); resume once the source answers";
        assert_eq!(paused.state.reason.as_deref(), Some(why));
        assert_eq!(event, vec![(EventKind::Paused, why.to_owned())]);
        // Paused: still counted (status shows it), nothing decided.
        assert_eq!(
            checked(&paused, &s, &mut no_data, missing("conf", "v2")),
            None
        );
        assert_eq!(no_data.streak("conf"), 4);
        // Resumed: the source has its checks again.
        rec.state.phase = Phase::Progressing;
        assert_eq!(checked(&rec, &s, &mut no_data, missing("conf", "v2")), None);
        assert_eq!(no_data.streak("conf"), 1);
        // A figure below the bound fails like any rule: the threshold's checks roll back.
        let (failed, event) = checked(&rec, &s, &mut no_data, measured("conf", "v2", 0.7)).unwrap();
        assert_eq!(failed.state.failed_checks, 1);
        assert_eq!(event[0].0, "check_failed");
        let (back, event) =
            checked(&failed, &s, &mut no_data, measured("conf", "v2", 0.7)).unwrap();
        assert_eq!(back.state.phase, Phase::RolledBack);
        assert!(event[0].1.contains("custom metric conf 0.7000 < min 0.8"));
    }

    /// A check of `rule` as `status::figures` makes it before `describe` (5 samples).
    fn rule_check(rule: &Rule) -> RuleCheck {
        RuleCheck {
            rule: 0,
            arm: "v2".into(),
            metric: rule.metric,
            bound: rule.bound.name().into(),
            limit: rule.bound.limit(),
            value: None,
            samples: Some(5),
            min_samples: Some(0),
            verdict: crate::api::CheckVerdict::NotEnoughData,
            reason: None,
            dry_run: false,
            on_fail: rule.on_fail,
            stage_value: None,
            stage_samples: Some(5),
            tost_p: None,
            t_test_p: None,
            mann_whitney_p: None,
            custom: None,
        }
    }

    #[test]
    fn status_shows_the_figure_its_source_and_why_it_has_none() {
        let s = spec_with(
            "{metric: custom, name: conf, prometheus: {url: 'http://p', query: 'c{arm=\"{{arm}}\"}'}, max_decrease: 0.1}",
        )
        .unwrap();
        let (r, c) = custom(&s);
        // As status shows it: the check's JSON.
        let shown = |check: &RuleCheck| serde_json::to_value(check).unwrap();
        let mut typed = rule_check(r);
        describe(
            r,
            c,
            &window_with("conf", Ok(0.7)),
            &window_with("conf", Ok(0.9)),
            &mut typed,
        );
        let check = shown(&typed);
        assert_eq!(check["source"], "prometheus");
        assert_eq!(check["baseline_value"], 0.9);
        assert!(
            check["reason"].as_str().unwrap().contains("below baseline"),
            "{check}"
        );
        assert_eq!(check["samples"], Value::Null);
        assert_eq!(check["pause_after"], 3);
        let mut typed = rule_check(r);
        let mut gone = window_with("conf", Err("prometheus answered 503"));
        if let Some(m) = gone.custom.get_mut("conf") {
            m.checks_without_value = 2;
        }
        describe(r, c, &gone, &window_with("conf", Ok(0.9)), &mut typed);
        let check = shown(&typed);
        assert_eq!(check["reason"], "no value: prometheus answered 503");
        assert_eq!(check["checks_without_value"], 2);
        let mut typed = rule_check(r);
        describe(
            r,
            c,
            &window_with("conf", Ok(0.9)),
            &window_with("conf", Err("timeout")),
            &mut typed,
        );
        let check = shown(&typed);
        assert_eq!(check["reason"], "no baseline value: timeout");
    }
}
