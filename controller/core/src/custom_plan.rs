//! The calls a check makes for the current stage's custom rules (`spec::custom`): which arms each
//! rule is judged on, and each call's query or URL with its template filled. Pure: rampctl's
//! `custom_fetch` makes the calls.

use crate::custom_template::{duration, Values};
use crate::machine::State;
use crate::redact::redact_url;
use crate::spec::custom::{Measured, Measurement, Source, WindowKind};
use crate::spec::{Rule, Spec};

/// One call a check makes: a rule's figure for one arm.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub rule: String,
    pub arm: String,
    pub target: Target,
    /// What status shows as asked (`Measurement::asked`).
    pub asked: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// An instant query to `base`'s `/api/v1/query`.
    Prometheus {
        base: String,
        query: String,
    },
    Web {
        url: String,
        pointer: String,
    },
}

/// The arms a rule is judged on at this check: the candidates the stage machine judges (only the
/// winner once there is one), and the baseline when the bound compares with it.
fn arms_of(spec: &Spec, state: &State, rule: &Rule) -> Vec<String> {
    let mut arms: Vec<String> = spec
        .candidates
        .iter()
        .filter(|c| state.winner.as_ref().is_none_or(|w| w == *c))
        .cloned()
        .collect();
    if rule.bound.is_relative() {
        arms.insert(0, spec.baseline.clone());
    }
    arms
}

/// The calls this check makes for the current stage's custom rules, and the figures already
/// known to be missing (a template that cannot be filled with these values).
pub fn plan(spec: &Spec, state: &State, now_ms: u64) -> (Vec<Call>, Measured) {
    let (mut calls, mut missing) = (Vec::new(), Measured::new());
    let rules = spec
        .stages
        .get(state.stage)
        .map(|s| s.rules.as_slice())
        .unwrap_or_default();
    for rule in rules {
        let Some(c) = rule.custom.as_deref() else {
            continue;
        };
        let window = duration(match c.window {
            WindowKind::Check => spec.check_interval_ms,
            WindowKind::Stage => now_ms.saturating_sub(state.stage_started_ms),
        });
        for arm in arms_of(spec, state, rule) {
            let values = Values {
                rollout: &spec.name,
                arm: &arm,
                window: &window,
            };
            let planned = match &c.source {
                Source::Prometheus { url, query } => {
                    let base = url.clone().or_else(|| spec.prometheus.clone());
                    match (base, query.render(&values)) {
                        (Some(base), Ok(query)) => {
                            Ok((query.clone(), Target::Prometheus { base, query }))
                        }
                        (None, _) => Err("no Prometheus to ask".to_owned()),
                        (_, Err(e)) => Err(e.to_string()),
                    }
                }
                Source::Web { url, pointer } => url
                    .render(&values)
                    .map(|u| {
                        let target = Target::Web {
                            url: u.clone(),
                            pointer: pointer.clone(),
                        };
                        (redact_url(&u), target)
                    })
                    .map_err(|e| e.to_string()),
            };
            match planned {
                Ok((asked, target)) => calls.push(Call {
                    rule: c.name.clone(),
                    arm,
                    target,
                    asked,
                }),
                Err(why) => {
                    let m = Measurement {
                        value: Err(why),
                        asked: String::new(),
                        checks_without_value: 0,
                    };
                    missing.entry(arm).or_default().insert(c.name.clone(), m);
                }
            }
        }
    }
    (calls, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_asks_each_judged_arm_with_the_template_filled() {
        let s = Spec::parse(
            "name: fraud\nstrategy: ab_test\nab_test: {}\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}, {name: v3, role: candidate}]\ncheck_interval_s: 1.5\nmetrics: {prometheus: 'http://prom:9090'}\nstages:\n- weight: 50\n  rules:\n  - {metric: custom, name: conf, prometheus: {query: 'avg(rate(c{rollout=\"{{rollout}}\",arm=\"{{arm}}\"}[{{window}}]))'}, min: 0.8}\n  - {metric: custom, name: kpi, web: {url: 'http://u:pw@kpi/{{arm}}?since={{window}}&key=k', json_pointer: /v, window: stage}, max_decrease: 0.1}\n  - {metric: error_rate, max: 0.1}\n- weight: 100\n"
        )
        .unwrap();
        let mut state = State::start(&s, 1_000);
        let (calls, missing) = plan(&s, &state, 61_000);
        assert!(missing.is_empty());
        let shown: Vec<(&str, &str, &str)> = calls
            .iter()
            .map(|c| (c.rule.as_str(), c.arm.as_str(), c.asked.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                (
                    "conf",
                    "v2",
                    r#"avg(rate(c{rollout="fraud",arm="v2"}[2s]))"#
                ),
                (
                    "conf",
                    "v3",
                    r#"avg(rate(c{rollout="fraud",arm="v3"}[2s]))"#
                ),
                ("kpi", "v1", "http://***@kpi/v1?since=***&key=***"),
                ("kpi", "v2", "http://***@kpi/v2?since=***&key=***"),
                ("kpi", "v3", "http://***@kpi/v3?since=***&key=***"),
            ]
        );
        assert_eq!(
            calls[2].target,
            Target::Web {
                url: "http://u:pw@kpi/v1?since=60s&key=k".into(),
                pointer: "/v".into()
            }
        );
        assert!(
            matches!(&calls[0].target, Target::Prometheus { base, .. } if base == "http://prom:9090")
        );
        // Once a candidate won, only it is judged (and asked).
        state.winner = Some("v3".into());
        let (calls, _) = plan(&s, &state, 61_000);
        assert_eq!(
            calls.iter().map(|c| c.arm.as_str()).collect::<Vec<_>>(),
            ["v3", "v1", "v3"]
        );
    }
}
