//! How a custom rule (`custom_metrics`) judges: its figures ride in the totals into every window,
//! the verdict compares the candidate's with the bound or the baseline's, status shows what was
//! asked and why there is no value, and checks in a row without one pause the rollout. No value
//! is never a pass, and never a failed check either.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::custom_metrics::{CustomRule, Measured, Measurement};
use crate::machine::{Phase, State};
use crate::rules::{ArmWindow, Verdict};
use crate::spec::{Bound, Rule, Spec};
use crate::store::Record;
use crate::window::Totals;

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

/// A custom rule's verdict on the figures in the windows (`rules::evaluate` hands it over).
pub fn evaluate(
    rule: &Rule,
    c: &CustomRule,
    candidate: &ArmWindow,
    baseline: &ArmWindow,
) -> Verdict {
    // No value is not a pass: the rule waits, and `pause_without_data` counts the checks.
    let no_value = Verdict::NotEnoughData {
        samples: 0,
        needed: 1,
    };
    let value_of = |w: &ArmWindow| w.custom.get(&c.name).and_then(|m| m.value.clone().ok());
    let Some(value) = value_of(candidate) else {
        return no_value;
    };
    let name = format!("custom metric {}", c.name);
    let fail = |reason: String| Verdict::Fail { value, reason };
    let v = shown(value);
    let base = if rule.bound.is_relative() {
        match value_of(baseline) {
            Some(b) => b,
            None => return no_value,
        }
    } else {
        0.0
    };
    // Differences with the baseline are computed here, in floating point: 0.92 - 0.87 is
    // 0.05000000000000004. Give them the rounding error they can carry, so a figure exactly
    // at the allowance (as a person reads the numbers) passes.
    let slack = 4.0 * f64::EPSILON * (value.abs() + base.abs());
    match rule.bound {
        Bound::Max(max) if value > max => fail(format!("{name} {v} > max {max}")),
        Bound::Min(min) if value < min => fail(format!("{name} {v} < min {min}")),
        Bound::WorseThanBaseline(allowed) => {
            let worse_by = if c.higher_is_worse {
                value - base
            } else {
                base - value
            };
            if worse_by > allowed + slack {
                fail(format!(
                    "{name} {v} is {} worse than baseline {} (allowed {allowed})",
                    shown(worse_by),
                    shown(base)
                ))
            } else {
                Verdict::Pass { value }
            }
        }
        // Relative to the baseline's magnitude, so a negative baseline works the same way; with
        // a baseline of 0 any increase (or decrease) is too much.
        Bound::MaxIncrease(allowed) if value > base + allowed * base.abs() + slack => {
            fail(format!(
                "{name} {v} is {} above baseline {} (allowed {}%)",
                change(value, base),
                shown(base),
                percent(allowed)
            ))
        }
        Bound::MaxDecrease(allowed) if value < base - allowed * base.abs() - slack => {
            fail(format!(
                "{name} {v} is {} below baseline {} (allowed {}%)",
                change(value, base),
                shown(base),
                percent(allowed)
            ))
        }
        _ => Verdict::Pass { value },
    }
}

/// How far `value` is from `base`: a percentage of |base|, or the difference when base is 0.
fn change(value: f64, base: f64) -> String {
    if base == 0.0 {
        shown((value - base).abs())
    } else {
        format!("{}%", percent((value - base).abs() / base.abs()))
    }
}

fn percent(f: f64) -> String {
    let p = f * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0}")
    } else {
        format!("{p:.1}")
    }
}

/// A figure as reasons show it: four decimals where that says something, else scientific.
fn shown(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || (1e-3..1e9).contains(&a) {
        format!("{v:.4}")
    } else {
        format!("{v:.4e}")
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
    check: &mut Value,
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
    check["name"] = json!(c.name);
    check["source"] = json!(c.source.kind());
    check["asked"] = json!(mine.map(|m| &m.asked));
    check["baseline_value"] = json!(base.and_then(|m| m.value.clone().ok()));
    check["reason"] = json!(why);
    check["checks_without_value"] = json!(without);
    check["pause_after"] = json!(c.no_data_checks);
    for k in ["samples", "min_samples", "stage_samples"] {
        check[k] = Value::Null;
    }
}

/// After the stage machine: a custom rule without a value for its `no_data_checks` checks in a
/// row pauses a rollout the check leaves progressing in its stage, with the reason (a real
/// failure of another rule still rolls back). An operator resumes once the source answers.
pub fn pause_without_data(
    rec: &Record,
    spec: &Spec,
    totals: &Totals,
    decided: Option<(Record, Vec<(String, String)>)>,
) -> Option<(Record, Vec<(String, String)>)> {
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
    events.retain(|(kind, _)| kind == "dry_run_failed");
    events.push(("paused".to_owned(), why));
    Some((next, events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custom_metrics::test_specs::{custom, spec_with};

    fn window_with(rule: &str, value: Result<f64, &str>) -> ArmWindow {
        let m = Measurement {
            value: value.map_err(str::to_owned),
            asked: "q".into(),
            checks_without_value: 0,
        };
        ArmWindow {
            custom: [(rule.to_owned(), m)].into(),
            ..Default::default()
        }
    }

    fn verdict(rule: &str, candidate: Result<f64, &str>, baseline: Result<f64, &str>) -> Verdict {
        let s = spec_with(rule).unwrap();
        let (r, c) = custom(&s);
        evaluate(
            r,
            c,
            &window_with(&c.name, candidate),
            &window_with(&c.name, baseline),
        )
    }

    fn passes(v: &Verdict) -> bool {
        matches!(v, Verdict::Pass { .. })
    }

    #[test]
    fn figures_are_judged_against_a_bound_or_the_baseline_s() {
        let src = "web: {url: 'http://k/{{arm}}', json_pointer: /v}";
        let rule = |bound: &str| format!("{{metric: custom, name: conf, {src}, {bound}}}");
        let no_base = Err("not asked");
        assert!(passes(&verdict(&rule("min: 0.8"), Ok(0.8), no_base)));
        let Verdict::Fail { value, reason } = verdict(&rule("min: 0.8"), Ok(0.71), no_base) else {
            panic!()
        };
        assert_eq!(
            (value, reason.as_str()),
            (0.71, "custom metric conf 0.7100 < min 0.8")
        );
        assert!(
            !passes(&verdict(&rule("max: -5"), Ok(-4.0), no_base)),
            "negative bounds"
        );
        // Higher is better: 0.05 below the baseline is allowed, 0.06 is not.
        let better = rule("max_worse_than_baseline: 0.05, higher_is: better");
        assert!(passes(&verdict(&better, Ok(0.87), Ok(0.92))));
        assert!(passes(&verdict(&better, Ok(0.99), Ok(0.92))));
        let Verdict::Fail { reason, .. } = verdict(&better, Ok(0.86), Ok(0.92)) else {
            panic!()
        };
        assert_eq!(
            reason,
            "custom metric conf 0.8600 is 0.0600 worse than baseline 0.9200 (allowed 0.05)"
        );
        let worse = rule("max_worse_than_baseline: 5, higher_is: worse");
        assert!(passes(&verdict(&worse, Ok(104.0), Ok(100.0))));
        assert!(!passes(&verdict(&worse, Ok(106.0), Ok(100.0))));
        // Relative: a share of the baseline's magnitude.
        let up = rule("max_increase: 0.1");
        assert!(passes(&verdict(&up, Ok(110.0), Ok(100.0))));
        let Verdict::Fail { reason, .. } = verdict(&up, Ok(130.0), Ok(100.0)) else {
            panic!()
        };
        assert_eq!(
            reason,
            "custom metric conf 130.0000 is 30% above baseline 100.0000 (allowed 10%)"
        );
        assert!(
            passes(&verdict(&up, Ok(-95.0), Ok(-100.0))),
            "-95 is 5% above -100"
        );
        assert!(!passes(&verdict(&up, Ok(-85.0), Ok(-100.0))));
        assert!(
            !passes(&verdict(&up, Ok(0.5), Ok(0.0))),
            "any increase over 0"
        );
        assert!(passes(&verdict(&up, Ok(0.0), Ok(0.0))));
        let down = rule("max_decrease: 0.1");
        assert!(passes(&verdict(&down, Ok(0.9), Ok(1.0))));
        let Verdict::Fail { reason, .. } = verdict(&down, Ok(0.7), Ok(0.92)) else {
            panic!()
        };
        assert!(
            reason.contains("23.9% below baseline 0.9200 (allowed 10%)"),
            "{reason}"
        );
        // No value is never a pass, on either side of a relative bound.
        let none = Verdict::NotEnoughData {
            samples: 0,
            needed: 1,
        };
        assert_eq!(verdict(&rule("min: 0.8"), Err("no series"), no_base), none);
        assert_eq!(verdict(&down, Ok(0.9), Err("no series")), none);
        assert_eq!(verdict(&down, Err("no series"), Ok(0.9)), none);
        let s = spec_with(&rule("min: 0.8")).unwrap();
        let (r, c) = custom(&s);
        assert_eq!(
            evaluate(r, c, &ArmWindow::default(), &ArmWindow::default()),
            none,
            "not measured"
        );
    }

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
    ) -> Option<(Record, Vec<(String, String)>)> {
        no_data.observe(&rec.state, &figures);
        let mut totals = Totals::new();
        attach(&mut totals, figures, no_data);
        let looks = crate::reconciler::rule_looks(rec, spec, &totals, &Default::default(), 0);
        let decided = crate::reconciler::check(rec, spec, &totals, &looks, 10_000, None, None);
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
        assert_eq!(event, vec![("paused".to_owned(), why.to_owned())]);
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

    #[test]
    fn status_shows_the_figure_its_source_and_why_it_has_none() {
        let s = spec_with(
            "{metric: custom, name: conf, prometheus: {url: 'http://p', query: 'c{arm=\"{{arm}}\"}'}, max_decrease: 0.1}",
        )
        .unwrap();
        let (r, c) = custom(&s);
        let mut check = json!({"samples": 5});
        describe(
            r,
            c,
            &window_with("conf", Ok(0.7)),
            &window_with("conf", Ok(0.9)),
            &mut check,
        );
        assert_eq!(check["source"], "prometheus");
        assert_eq!(check["baseline_value"], 0.9);
        assert!(
            check["reason"].as_str().unwrap().contains("below baseline"),
            "{check}"
        );
        assert_eq!(check["samples"], Value::Null);
        assert_eq!(check["pause_after"], 3);
        let mut check = json!({});
        let mut gone = window_with("conf", Err("prometheus answered 503"));
        if let Some(m) = gone.custom.get_mut("conf") {
            m.checks_without_value = 2;
        }
        describe(r, c, &gone, &window_with("conf", Ok(0.9)), &mut check);
        assert_eq!(check["reason"], "no value: prometheus answered 503");
        assert_eq!(check["checks_without_value"], 2);
        let mut check = json!({});
        describe(
            r,
            c,
            &window_with("conf", Ok(0.9)),
            &window_with("conf", Err("timeout")),
            &mut check,
        );
        assert_eq!(check["reason"], "no baseline value: timeout");
    }
}
