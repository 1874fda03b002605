//! Rules on the team's own metrics (`metric: custom`), as Flagger's MetricTemplate and Argo
//! Rollouts' AnalysisTemplate: a figure per arm from a PromQL query template or a JSON endpoint,
//! judged against a bound or against the baseline arm's figure. Here are the definitions and their
//! validation; the templates are `custom_template`'s, the calls a check makes `custom_plan`'s (and
//! rampctl's `custom_fetch` makes them), the verdicts `rules::custom`'s and the pause without data
//! `custom_verdict`'s.
//!
//! A custom figure is an opaque value from the team's system, judged as a point value: there is
//! no sample size, so `min_samples` does not apply, and a failing figure rolls back only after the
//! rollout's `failure_threshold` consecutive failed checks, as other rules do. An error or an
//! empty result is never a pass: the rule has no value (the stage cannot advance), and after
//! `no_data_checks` consecutive checks without one the rollout pauses, saying why.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::custom_template::Template;
use crate::spec::{Bound, Metric, RawRule, Rule, SpecError};

/// Checks in a row without a value before the rollout pauses, unless the rule says.
pub const DEFAULT_NO_DATA_CHECKS: u32 = 3;
/// The most a rule may ask for: past it a dead source would hold a rollout unseen for long.
pub const MAX_NO_DATA_CHECKS: u32 = 100;
/// Custom rules a stage may have: each costs a call per arm at every check, within one budget.
pub const MAX_CUSTOM_RULES: usize = 8;

/// A YAML string and nothing else (`name: 123` is refused), as the spec's names are.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Text(#[serde(deserialize_with = "crate::spec::text")] pub String);

/// Which way a custom figure gets worse, for `max_worse_than_baseline` (`max`, `min`,
/// `max_increase` and `max_decrease` say it themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HigherIs {
    Better,
    Worse,
}

/// The span `{{window}}` stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// The check interval: the span since the previous check, as the other rules judge.
    #[default]
    Check,
    /// The stage so far.
    Stage,
}

/// `prometheus:` of a custom rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrometheusSource {
    /// Base URL; default: the spec's `metrics.prometheus`.
    #[serde(default)]
    pub url: Option<Text>,
    /// An instant query returning one value per arm.
    pub query: Text,
    #[serde(default)]
    pub window: WindowKind,
}

/// `web:` of a custom rule: a GET answered with JSON.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebSource {
    pub url: Text,
    /// RFC 6901 pointer to the number in the answer (`""`: the whole answer).
    pub json_pointer: Text,
    #[serde(default)]
    pub window: WindowKind,
}

/// Where a rule's figure comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// `url` `None`: the spec's `metrics.prometheus` (`check_stage` made sure there is one).
    Prometheus {
        url: Option<String>,
        query: Template,
    },
    Web {
        url: Template,
        pointer: String,
    },
}

impl Source {
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Prometheus { .. } => "prometheus",
            Source::Web { .. } => "web",
        }
    }
}

/// A validated custom rule (the bound is the `Rule`'s).
#[derive(Debug, Clone, PartialEq)]
pub struct CustomRule {
    pub name: String,
    pub source: Source,
    pub window: WindowKind,
    /// For `max_worse_than_baseline`: whether a higher figure is the worse one.
    pub higher_is_worse: bool,
    /// Checks in a row without a value before the rollout pauses.
    pub no_data_checks: u32,
}

/// One arm's figure for one rule at one check.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// The figure, or why there is none (an error, an empty result): never a pass.
    pub value: Result<f64, String>,
    /// What was asked: the PromQL query as sent, or the URL (redacted).
    pub asked: String,
    /// Consecutive checks, this one included, in which the rule had no value for some arm.
    pub checks_without_value: u32,
}

/// One arm's figures at a check, by rule name.
pub type ArmMeasurements = BTreeMap<String, Measurement>;
/// A check's figures, by arm.
pub type Measured = BTreeMap<String, ArmMeasurements>;

fn spec_err(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The fields only `metric: custom` takes, as written, for a rule of another metric.
pub fn refuse_custom_fields(r: &RawRule, field: &str) -> Result<(), SpecError> {
    let given = [
        ("name", r.name.is_some()),
        ("prometheus", r.prometheus.is_some()),
        ("web", r.web.is_some()),
        ("max_increase", r.max_increase.is_some()),
        ("max_decrease", r.max_decrease.is_some()),
        ("higher_is", r.higher_is.is_some()),
        ("no_data_checks", r.no_data_checks.is_some()),
    ];
    match given.iter().find(|(_, set)| *set) {
        Some((name, _)) => Err(spec_err(
            format!("{field}.{name}"),
            "only with metric: custom (the team's own figure)",
        )),
        None => Ok(()),
    }
}

/// A `metric: custom` rule as written, validated; errors name the field and never quote a URL.
pub fn validate(r: &RawRule, field: &str) -> Result<Rule, SpecError> {
    let at = |f: &str| format!("{field}.{f}");
    let name = r.name.as_ref().map(|n| n.0.clone()).ok_or_else(|| {
        spec_err(
            at("name"),
            "required with metric custom: it names the figure in status and reasons",
        )
    })?;
    ramp_protocol::names::check_name(&name).map_err(|e| spec_err(at("name"), e))?;
    if r.min_samples.is_some() {
        return Err(spec_err(
            at("min_samples"),
            "a custom figure is one value from your own system with no sample size: it takes no min_samples",
        ));
    }
    let (source, window) = match (&r.prometheus, &r.web) {
        (Some(p), None) => {
            if let Some(url) = &p.url {
                if !crate::custom_template::is_http_url(&url.0) {
                    return Err(spec_err(
                        at("prometheus.url"),
                        "must be an http:// or https:// URL",
                    ));
                }
            }
            let query = Template::promql(&p.query.0)
                .map_err(|e| spec_err(at("prometheus.query"), e.to_string()))?;
            let url = p.url.as_ref().map(|u| u.0.clone());
            (Source::Prometheus { url, query }, p.window)
        }
        (None, Some(w)) => {
            let url =
                Template::url(&w.url.0).map_err(|e| spec_err(at("web.url"), e.to_string()))?;
            check_pointer(&w.json_pointer.0).map_err(|e| spec_err(at("web.json_pointer"), e))?;
            let pointer = w.json_pointer.0.clone();
            (Source::Web { url, pointer }, w.window)
        }
        (Some(_), Some(_)) => {
            return Err(spec_err(field, "exactly one source: prometheus or web"));
        }
        (None, None) => {
            return Err(spec_err(
                field,
                "metric custom needs a source: prometheus (a PromQL query template) or web (a JSON endpoint)",
            ));
        }
    };
    let bounds = [
        r.max.map(Bound::Max),
        r.min.map(Bound::Min),
        r.max_worse_than_baseline.map(Bound::WorseThanBaseline),
        r.max_increase.map(Bound::MaxIncrease),
        r.max_decrease.map(Bound::MaxDecrease),
    ];
    let mut set = bounds.iter().flatten();
    let (Some(&bound), None) = (set.next(), set.next()) else {
        return Err(spec_err(
            field,
            "exactly one of max, min, max_worse_than_baseline, max_increase, max_decrease",
        ));
    };
    let value = bound.limit();
    let absolute = matches!(bound, Bound::Max(_) | Bound::Min(_));
    // An absolute bound on the team's figure may be any number (a KPI can be negative); a
    // difference or a share of the baseline's figure is an allowance, at least 0.
    if !(value.is_finite() && (absolute || value >= 0.0)) {
        let wanted = if absolute {
            "a finite number"
        } else {
            "a finite number >= 0"
        };
        return Err(spec_err(
            at(bound.name()),
            format!("must be {wanted}, got {value}"),
        ));
    }
    let higher_is_worse = match (bound, r.higher_is) {
        (Bound::WorseThanBaseline(_), Some(h)) => h == HigherIs::Worse,
        (Bound::WorseThanBaseline(_), None) => {
            return Err(spec_err(
                at("higher_is"),
                "required with max_worse_than_baseline: better or worse (which way the figure gets worse)",
            ));
        }
        (_, Some(_)) => {
            return Err(spec_err(
                at("higher_is"),
                "only with max_worse_than_baseline: the other bounds say which way is worse",
            ));
        }
        (b, None) => !matches!(b, Bound::Min(_) | Bound::MaxDecrease(_)),
    };
    let no_data_checks = r.no_data_checks.unwrap_or(DEFAULT_NO_DATA_CHECKS);
    if !(1..=MAX_NO_DATA_CHECKS).contains(&no_data_checks) {
        return Err(spec_err(
            at("no_data_checks"),
            format!("must be in [1, {MAX_NO_DATA_CHECKS}], got {no_data_checks}"),
        ));
    }
    Ok(Rule {
        metric: Metric::Custom,
        bound,
        // Point values: any window holds one.
        min_samples: 0,
        dry_run: r.dry_run,
        on_fail: r.on_fail,
        custom: Some(Arc::new(CustomRule {
            name,
            source,
            window,
            higher_is_worse,
            no_data_checks,
        })),
    })
}

/// RFC 6901: empty, or `/`-separated tokens in which `~` is only `~0` or `~1`.
fn check_pointer(p: &str) -> Result<(), String> {
    if !(p.is_empty() || p.starts_with('/')) {
        return Err(format!(
            "{p:?} is not a JSON pointer (RFC 6901): it starts with / (e.g. /data/value), or is empty for the whole answer"
        ));
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "{p:?}: ~ must be followed by 0 (for ~) or 1 (for /) in a JSON pointer"
            ));
        }
    }
    Ok(())
}

/// A stage's custom rules together: unique names, not too many, and a Prometheus for each
/// query (its own `url` or `metrics.prometheus`). `field(j)` names rule `j`.
pub fn check_stage(
    rules: &[Rule],
    field: impl Fn(usize) -> String,
    default_prometheus: Option<&str>,
) -> Result<(), SpecError> {
    let custom: Vec<(usize, &CustomRule)> = rules
        .iter()
        .enumerate()
        .filter_map(|(j, r)| r.custom.as_deref().map(|c| (j, c)))
        .collect();
    if let Some((j, _)) = custom.get(MAX_CUSTOM_RULES) {
        return Err(spec_err(
            field(*j),
            format!("at most {MAX_CUSTOM_RULES} custom rules a stage"),
        ));
    }
    for (k, (j, c)) in custom.iter().enumerate() {
        if custom[..k].iter().any(|(_, o)| o.name == c.name) {
            return Err(spec_err(
                format!("{}.name", field(*j)),
                format!(
                    "{:?} is used twice in this stage: custom rules need different names",
                    c.name
                ),
            ));
        }
        if matches!(c.source, Source::Prometheus { url: None, .. }) && default_prometheus.is_none()
        {
            return Err(spec_err(
                format!("{}.prometheus.url", field(*j)),
                "required unless metrics.prometheus is set",
            ));
        }
    }
    Ok(())
}

/// Specs with one custom rule, for this module's tests and `custom_verdict`'s.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod test_specs {
    use super::*;
    pub(crate) use crate::spec::Spec;

    pub const ARMS: &str = "arms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\n";

    /// An arm's window holding rule `rule`'s measurement: a value or why there is none.
    pub fn window_with(rule: &str, value: Result<f64, &str>) -> crate::window::ArmWindow {
        let m = Measurement {
            value: value.map_err(str::to_owned),
            asked: "q".into(),
            checks_without_value: 0,
        };
        crate::window::ArmWindow {
            custom: [(rule.to_owned(), m)].into(),
            ..Default::default()
        }
    }

    /// A canary whose first stage has `rule` (a flow mapping).
    pub fn spec_with(rule: &str) -> Result<Spec, SpecError> {
        Spec::parse(&format!(
            "name: fraud\n{ARMS}check_interval_s: 30\nstages: [{{weight: 10, min_duration_s: 600, rules: [{rule}]}}, {{weight: 100}}]\n"
        ))
    }

    pub fn custom(spec: &Spec) -> (&Rule, &CustomRule) {
        let r = &spec.stages[0].rules[0];
        (r, r.custom.as_deref().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::test_specs::*;
    use super::*;

    #[test]
    fn the_issue_s_example_and_a_web_source_parse() {
        let s = spec_with(
            r#"{metric: custom, name: p_confidence, prometheus: {url: 'http://prom:9090', query: 'avg(model_confidence{arm="{{arm}}"})'}, min: 0.8}"#,
        )
        .unwrap();
        let (r, c) = custom(&s);
        assert_eq!(
            (r.metric, r.bound, r.min_samples),
            (Metric::Custom, Bound::Min(0.8), 0)
        );
        assert_eq!(c.name, "p_confidence");
        assert_eq!(c.no_data_checks, DEFAULT_NO_DATA_CHECKS);
        assert!(!c.higher_is_worse);
        let s = spec_with(
            "{metric: custom, name: gpu_memory, web: {url: 'https://kpi/{{rollout}}/{{arm}}', json_pointer: /memory/used, window: stage}, max_increase: 0.1, no_data_checks: 5}",
        )
        .unwrap();
        let (r, c) = custom(&s);
        assert_eq!(r.bound, Bound::MaxIncrease(0.1));
        assert_eq!((c.window, c.no_data_checks), (WindowKind::Stage, 5));
        assert!(matches!(&c.source, Source::Web { pointer, .. } if pointer == "/memory/used"));
        // The URL may come from metrics.prometheus.
        let s = Spec::parse(&format!(
            "name: r\n{ARMS}metrics: {{prometheus: 'http://prom:9090'}}\nstages: [{{weight: 10, rules: [{{metric: custom, name: c, prometheus: {{query: 'x{{arm=\"{{{{arm}}}}\"}}'}}, max_worse_than_baseline: 0.1, higher_is: worse}}]}}, {{weight: 100}}]\n"
        ))
        .unwrap();
        assert!(custom(&s).1.higher_is_worse);
        // At 0% the team's figure needs no traffic (a blue-green candidate's own metric).
        assert!(Spec::parse(&format!(
            "name: r\nstrategy: blue_green\n{ARMS}stages: [{{weight: 0, rules: [{{metric: custom, name: mem, web: {{url: 'http://x/{{{{arm}}}}', json_pointer: ''}}, max: 0.9}}]}}, {{weight: 100}}]\n"
        ))
        .is_ok());
    }

    #[test]
    fn the_example_parses() {
        let s = Spec::parse(include_str!("../../../examples/custom-metrics.yaml")).unwrap();
        let custom: Vec<(&str, &str, &str)> = s.stages[0]
            .rules
            .iter()
            .filter_map(|r| Some((r.custom.as_deref()?, r.bound.name())))
            .map(|(c, bound)| (c.name.as_str(), c.source.kind(), bound))
            .collect();
        assert_eq!(
            custom,
            [
                ("confidence", "prometheus", "max_worse_than_baseline"),
                ("gpu_memory", "prometheus", "max"),
                ("approval_rate", "web", "max_decrease")
            ]
        );
    }

    #[test]
    fn errors_name_the_field_and_never_quote_a_url() {
        let prom =
            r#"prometheus: {url: 'http://u:pw0rd@prom:9090/?key=k3y', query: 'x{arm="{{arm}}"}'}"#;
        let web = "web: {url: 'http://u:pw0rd@kpi/{{arm}}?key=k3y', json_pointer: /v}";
        for (rule, field, reason) in [
            (format!("{{metric: custom, {prom}, max: 1}}"), "stages[0].rules[0].name", "required"),
            (format!("{{metric: custom, name: 'a b', {prom}, max: 1}}"), "stages[0].rules[0].name", "letters"),
            ("{metric: custom, name: c, max: 1}".to_owned(), "stages[0].rules[0]", "needs a source"),
            (format!("{{metric: custom, name: c, {prom}, {web}, max: 1}}"), "stages[0].rules[0]", "exactly one source"),
            (format!("{{metric: custom, name: c, {prom}}}"), "stages[0].rules[0]", "exactly one of max, min"),
            (format!("{{metric: custom, name: c, {prom}, max: 1, min: 0}}"), "stages[0].rules[0]", "exactly one of"),
            (format!("{{metric: custom, name: c, {prom}, max: .nan}}"), "stages[0].rules[0].max", "finite"),
            (format!("{{metric: custom, name: c, {prom}, max_increase: -0.1}}"), "stages[0].rules[0].max_increase", ">= 0"),
            (format!("{{metric: custom, name: c, {prom}, max_worse_than_baseline: 0.1}}"), "stages[0].rules[0].higher_is", "required"),
            (format!("{{metric: custom, name: c, {prom}, max: 1, higher_is: worse}}"), "stages[0].rules[0].higher_is", "only with max_worse_than_baseline"),
            (format!("{{metric: custom, name: c, {prom}, max: 1, min_samples: 10}}"), "stages[0].rules[0].min_samples", "no sample size"),
            (format!("{{metric: custom, name: c, {prom}, max: 1, no_data_checks: 0}}"), "stages[0].rules[0].no_data_checks", "[1, 100]"),
            ("{metric: custom, name: c, prometheus: {url: 'ftp://u:pw0rd@p/?key=k3y', query: 'x{arm=\"{{arm}}\"}'}, max: 1}".to_owned(), "stages[0].rules[0].prometheus.url", "http://"),
            ("{metric: custom, name: c, prometheus: {query: 'x{arm=\"{{arm}}\"}'}, max: 1}".to_owned(), "stages[0].rules[0].prometheus.url", "metrics.prometheus"),
            ("{metric: custom, name: c, prometheus: {url: 'http://p', query: 'x{arm={{arm}}}'}, max: 1}".to_owned(), "stages[0].rules[0].prometheus.query", "quoted label value"),
            ("{metric: custom, name: c, prometheus: {url: 'http://p', query: 'sum(x)'}, max: 1}".to_owned(), "stages[0].rules[0].prometheus.query", "{{arm}}"),
            ("{metric: custom, name: c, prometheus: {url: 'http://p', query: 'x{arm=\"{{arm}}\"}', lookback: 5}, max: 1}".to_owned(), "stages[0].rules[0].prometheus", "unknown field `lookback`"),
            ("{metric: custom, name: c, web: {url: 'ftp://u:pw0rd@kpi/{{arm}}', json_pointer: /v}, max: 1}".to_owned(), "stages[0].rules[0].web.url", "http://"),
            ("{metric: custom, name: c, web: {url: 'http://u:pw0rd@kpi/{{arm}}/{{version}}?key=k3y', json_pointer: /v}, max: 1}".to_owned(), "stages[0].rules[0].web.url", "{{version}}"),
            ("{metric: custom, name: c, web: {url: 'http://kpi/{{arm}}', json_pointer: v}, max: 1}".to_owned(), "stages[0].rules[0].web.json_pointer", "starts with /"),
            ("{metric: custom, name: c, web: {url: 'http://kpi/{{arm}}', json_pointer: /a~2}, max: 1}".to_owned(), "stages[0].rules[0].web.json_pointer", "~ must be followed"),
            (format!("{{metric: error_rate, max: 0.1, {prom}}}"), "stages[0].rules[0].prometheus", "only with metric: custom"),
            ("{metric: error_rate, max: 0.1, name: e}".to_owned(), "stages[0].rules[0].name", "only with metric: custom"),
            ("{metric: latency_p95, max_increase: 0.1}".to_owned(), "stages[0].rules[0].max_increase", "only with metric: custom"),
            (format!("{{metric: custom, name: c, {prom}, max: 1}}, {{metric: custom, name: c, {web}, min: 0}}"), "stages[0].rules[1].name", "used twice"),
        ] {
            let e = spec_with(&rule).unwrap_err();
            assert_eq!(e.field, field, "{rule}\n{e}");
            assert!(e.reason.contains(reason), "{rule}\n{e}");
            let shown = e.to_string();
            assert!(!shown.contains("pw0rd") && !shown.contains("k3y"), "{shown}");
        }
        let many: Vec<String> = (0..=MAX_CUSTOM_RULES)
            .map(|i| format!("{{metric: custom, name: c{i}, web: {{url: 'http://k/{{{{arm}}}}', json_pointer: /v}}, max: 1}}"))
            .collect();
        let e = spec_with(&many.join(", ")).unwrap_err();
        assert_eq!(
            e.field,
            format!("stages[0].rules[{MAX_CUSTOM_RULES}]"),
            "{e}"
        );
    }
}
