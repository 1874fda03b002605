//! A custom rule's verdict (`spec::custom`): the candidate's figure against the bound or the
//! baseline's. A child of `rules` because `rules::evaluate` hands custom rules over to it and it
//! answers in `rules`' own `Verdict`. No value is never a pass, and never a failed check either.

use super::Verdict;
use crate::spec::custom::CustomRule;
use crate::spec::{Bound, Rule};
use crate::window::ArmWindow;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::custom::test_specs::{custom, spec_with, window_with};

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
}
