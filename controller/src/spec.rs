//! The rollout spec an operator applies (`rampctl apply -f`): arms and their roles, the strategy, the
//! stages with their rules, how often to check and how many failed checks roll back. YAML or JSON,
//! parsed strictly; every error names the field and the reason.

use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid rollout spec: {field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Baseline,
    Candidate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Weighted stages 5% -> ... -> 100%.
    #[default]
    Canary,
    /// The candidate is tested at 0%, then switched to 100% at once.
    BlueGreen,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmSpec {
    pub name: String,
    pub role: Role,
}

/// The quantity a rule checks on the candidate (and, for relative bounds, on the baseline).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of responses that were 5xx.
    ErrorRate,
    /// Latency percentiles from the per-arm histograms, in milliseconds.
    LatencyP50,
    LatencyP95,
    LatencyP99,
    /// Share of predictions that matched ground truth reported through the API.
    Accuracy,
}

impl Metric {
    pub fn percentile(self) -> Option<f64> {
        match self {
            Metric::LatencyP50 => Some(0.50),
            Metric::LatencyP95 => Some(0.95),
            Metric::LatencyP99 => Some(0.99),
            _ => None,
        }
    }

    /// Whether larger values are worse (latency, errors) or better (accuracy).
    pub fn higher_is_worse(self) -> bool {
        !matches!(self, Metric::Accuracy)
    }
}

/// One rule as written: exactly one bound.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub metric: Metric,
    /// Absolute: the candidate's value may not exceed this (error rate, latency).
    #[serde(default)]
    pub max: Option<f64>,
    /// Absolute: the candidate's value may not fall below this (accuracy).
    #[serde(default)]
    pub min: Option<f64>,
    /// Relative: the candidate may be at most this much worse than the baseline over the same
    /// window (a difference in the metric's unit: 0.01 error rate, 20 ms, 0.03 accuracy).
    #[serde(default)]
    pub max_worse_than_baseline: Option<f64>,
    /// Samples the candidate needs in the window before the rule can fail.
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
}

fn default_min_samples() -> u64 {
    100
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    Max(f64),
    Min(f64),
    WorseThanBaseline(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub metric: Metric,
    pub bound: Bound,
    pub min_samples: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    /// Candidate's share of traffic in this stage, in percent.
    pub weight: f64,
    /// The stage lasts at least this long, in seconds.
    #[serde(default)]
    pub min_duration_s: u64,
    /// ...and until the candidate has served this many requests.
    #[serde(default)]
    pub min_requests: u64,
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    pub name: String,
    pub arms: Vec<ArmSpec>,
    #[serde(default)]
    pub strategy: StrategyKind,
    pub stages: Vec<RawStage>,
    /// Seconds between checks.
    #[serde(default = "default_interval")]
    pub check_interval_s: f64,
    /// Consecutive failed checks that roll back.
    #[serde(default = "default_threshold")]
    pub failure_threshold: u32,
    /// Where the figures come from: the filters' own reports (default) or a Prometheus server.
    #[serde(default)]
    pub metrics: Option<RawMetrics>,
    #[serde(default)]
    pub hooks: Vec<Hook>,
    /// `manual`: the rollout waits before its last stage (100%) until `rampctl promote`.
    #[serde(default)]
    pub promotion: Promotion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Promotion {
    #[default]
    Auto,
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    /// Before the rollout starts, while the candidate is at 0%: a smoke test of the candidate.
    BeforeStart,
    /// Before each move to a higher weight (not the final promotion).
    BeforeStep,
    /// Before the candidate gets all traffic.
    BeforePromotion,
    /// After a rollback (a notification: its answer changes nothing).
    OnRollback,
}

/// An HTTP webhook: POSTed a JSON event; any 2xx passes. A failed pre-hook holds the step like a
/// failed check (and counts toward the failure threshold).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub on: HookPoint,
    pub url: String,
    #[serde(default = "default_hook_timeout")]
    pub timeout_s: f64,
    /// Extra attempts after a failure.
    #[serde(default = "default_hook_retries")]
    pub retries: u32,
}

fn default_hook_timeout() -> f64 {
    5.0
}
fn default_hook_retries() -> u32 {
    2
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Base URL of a Prometheus server that scrapes the Envoys' `/stats/prometheus`.
    pub prometheus: String,
}

fn default_interval() -> f64 {
    60.0
}
fn default_threshold() -> u32 {
    2
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub weight: f64,
    pub min_duration_ms: u64,
    pub min_requests: u64,
    pub rules: Vec<Rule>,
}

/// A validated spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub name: String,
    pub baseline: String,
    pub candidate: String,
    pub strategy: StrategyKind,
    pub stages: Vec<Stage>,
    pub check_interval_ms: u64,
    pub failure_threshold: u32,
    /// Prometheus base URL when the figures come from Prometheus; `None`: the filters' reports.
    pub prometheus: Option<String>,
    pub hooks: Vec<Hook>,
    pub manual_promotion: bool,
}

impl Spec {
    /// Parses YAML (or JSON, which is YAML) and validates it.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let raw: RawSpec = serde_yaml::from_str(text).map_err(|e| {
            let msg = e.to_string();
            // serde_yaml prefixes the path: "stages[0].weight: invalid type: ..."
            match msg.split_once(": ") {
                Some((path, reason)) if !path.contains(' ') => err(path, reason),
                _ => err("(root)", msg),
            }
        })?;
        Self::validate(raw)
    }

    pub fn validate(raw: RawSpec) -> Result<Self, SpecError> {
        if raw.name.is_empty()
            || !raw
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(err(
                "name",
                format!("{:?}: use ASCII letters, digits, '-' and '_'", raw.name),
            ));
        }
        let role = |r: Role| raw.arms.iter().filter(|a| a.role == r).collect::<Vec<_>>();
        let (baselines, candidates) = (role(Role::Baseline), role(Role::Candidate));
        if raw.arms.len() != 2 || baselines.len() != 1 || candidates.len() != 1 {
            return Err(err("arms", "exactly one baseline and one candidate arm"));
        }
        if baselines[0].name == candidates[0].name {
            return Err(err("arms[1].name", "the two arms need different names"));
        }
        if raw.stages.is_empty() {
            return Err(err("stages", "at least one stage"));
        }
        let mut stages = Vec::with_capacity(raw.stages.len());
        let mut previous = -1.0;
        for (i, s) in raw.stages.iter().enumerate() {
            let field = |f: &str| format!("stages[{i}].{f}");
            if !(s.weight.is_finite() && (0.0..=100.0).contains(&s.weight)) {
                return Err(err(
                    field("weight"),
                    format!("must be in [0, 100], got {}", s.weight),
                ));
            }
            if s.weight < previous {
                return Err(err(
                    field("weight"),
                    format!(
                        "{} is below the previous stage's {previous}: stages only ramp up",
                        s.weight
                    ),
                ));
            }
            previous = s.weight;
            let mut rules = Vec::with_capacity(s.rules.len());
            for (j, r) in s.rules.iter().enumerate() {
                rules.push(validate_rule(r, &format!("stages[{i}].rules[{j}]"))?);
            }
            stages.push(Stage {
                weight: s.weight,
                min_duration_ms: s.min_duration_s.saturating_mul(1000),
                min_requests: s.min_requests,
                rules,
            });
        }
        if stages.last().is_some_and(|s| s.weight != 100.0) {
            return Err(err(
                format!("stages[{}].weight", stages.len() - 1),
                "the last stage must be 100 (full promotion)",
            ));
        }
        if raw.strategy == StrategyKind::BlueGreen
            && !(stages.len() == 2 && stages[0].weight == 0.0)
        {
            return Err(err(
                "stages",
                "blue_green has two stages: 0 (test the candidate) and 100 (switch)",
            ));
        }
        if !(raw.check_interval_s.is_finite() && raw.check_interval_s >= 0.1) {
            return Err(err(
                "check_interval_s",
                format!("must be at least 0.1, got {}", raw.check_interval_s),
            ));
        }
        if raw.failure_threshold == 0 {
            return Err(err("failure_threshold", "must be at least 1"));
        }
        for (i, h) in raw.hooks.iter().enumerate() {
            if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                return Err(err(
                    format!("hooks[{i}].url"),
                    format!("{:?} is not an http(s) URL", h.url),
                ));
            }
            if !(h.timeout_s.is_finite() && h.timeout_s > 0.0 && h.timeout_s <= 300.0) {
                return Err(err(format!("hooks[{i}].timeout_s"), "must be in (0, 300]"));
            }
        }
        if let Some(m) = &raw.metrics {
            if !(m.prometheus.starts_with("http://") || m.prometheus.starts_with("https://")) {
                return Err(err(
                    "metrics.prometheus",
                    format!("{:?} is not an http(s) URL", m.prometheus),
                ));
            }
        }
        Ok(Spec {
            name: raw.name,
            baseline: baselines[0].name.clone(),
            candidate: candidates[0].name.clone(),
            strategy: raw.strategy,
            stages,
            check_interval_ms: (raw.check_interval_s * 1000.0).round() as u64,
            failure_threshold: raw.failure_threshold,
            prometheus: raw.metrics.map(|m| m.prometheus),
            hooks: raw.hooks,
            manual_promotion: raw.promotion == Promotion::Manual,
        })
    }
}

fn validate_rule(r: &RawRule, field: &str) -> Result<Rule, SpecError> {
    let bounds = [
        r.max.map(Bound::Max),
        r.min.map(Bound::Min),
        r.max_worse_than_baseline.map(Bound::WorseThanBaseline),
    ];
    let mut set = bounds.iter().flatten();
    let (Some(&bound), None) = (set.next(), set.next()) else {
        return Err(err(
            field,
            "exactly one of max, min, max_worse_than_baseline",
        ));
    };
    let (value, name) = match bound {
        Bound::Max(v) => (v, "max"),
        Bound::Min(v) => (v, "min"),
        Bound::WorseThanBaseline(v) => (v, "max_worse_than_baseline"),
    };
    if !(value.is_finite() && value >= 0.0) {
        return Err(err(
            format!("{field}.{name}"),
            format!("must be a finite number >= 0, got {value}"),
        ));
    }
    let rate = matches!(r.metric, Metric::ErrorRate | Metric::Accuracy);
    if rate && value > 1.0 {
        return Err(err(
            format!("{field}.{name}"),
            format!("a rate is a fraction in [0, 1], got {value}"),
        ));
    }
    match (r.metric.higher_is_worse(), bound) {
        (true, Bound::Min(_)) => {
            return Err(err(
                format!("{field}.min"),
                "this metric is bounded above: use max",
            ))
        }
        (false, Bound::Max(_)) => {
            return Err(err(
                format!("{field}.max"),
                "accuracy is bounded below: use min",
            ))
        }
        _ => {}
    }
    Ok(Rule {
        metric: r.metric,
        bound,
        min_samples: r.min_samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedule of the deployment-strategies guide ("Rollout Schedule Example" table).
    const GUIDE: &str = include_str!("../examples/canary.yaml");

    #[test]
    fn the_guides_schedule_parses() {
        let s = Spec::parse(GUIDE).unwrap();
        assert_eq!(
            s.stages.iter().map(|s| s.weight).collect::<Vec<_>>(),
            vec![5.0, 10.0, 25.0, 50.0, 100.0]
        );
        assert_eq!(s.stages[2].min_duration_ms, 3_600_000);
        assert_eq!((s.baseline.as_str(), s.candidate.as_str()), ("v1", "v2"));
        assert_eq!(
            s.stages[0].rules[0],
            Rule {
                metric: Metric::ErrorRate,
                bound: Bound::Max(0.02),
                min_samples: 100
            }
        );
        assert_eq!(
            s.stages[1].rules[1],
            Rule {
                metric: Metric::LatencyP95,
                bound: Bound::Max(130.0),
                min_samples: 100
            }
        );
        assert_eq!(s.stages[2].rules[1].bound, Bound::WorseThanBaseline(0.03));
        assert!(s.stages[4].rules.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let base = |stages: &str| {
            format!("name: r\narms: [{{name: v1, role: baseline}}, {{name: v2, role: candidate}}]\nstages: {stages}\n")
        };
        for (text, field, reason) in [
            (base("[{weight: 150}]"), "stages[0].weight", "[0, 100]"),
            (
                base("[{weight: 50}, {weight: 10}, {weight: 100}]"),
                "stages[1].weight",
                "ramp up",
            ),
            (base("[{weight: 50}]"), "stages[0].weight", "last stage"),
            (
                base("[{weight: 100, rules: [{metric: error_rate}]}]"),
                "stages[0].rules[0]",
                "exactly one",
            ),
            (
                base("[{weight: 100, rules: [{metric: error_rate, max: 2}]}]"),
                "stages[0].rules[0].max",
                "fraction",
            ),
            (
                base("[{weight: 100, rules: [{metric: accuracy, max: 0.9}]}]"),
                "stages[0].rules[0].max",
                "use min",
            ),
            (
                base("[{weight: 100, rules: [{metric: latency_p97, max: 9}]}]"),
                "stages[0].rules[0].metric",
                "unknown variant",
            ),
            (base("[{weight: '5'}]"), "stages[0].weight", "invalid type"),
            (
                base("[{weight: 100, wieght: 5}]"),
                "stages[0]",
                "unknown field `wieght`",
            ),
            (
                "name: r\narms: [{name: v1, role: baseline}]\nstages: [{weight: 100}]\n".into(),
                "arms",
                "one baseline and one candidate",
            ),
            (
                "name: 'a b'\narms: []\nstages: []\n".into(),
                "name",
                "letters",
            ),
        ] {
            let e = Spec::parse(&text).unwrap_err();
            assert_eq!(e.field, field, "{text}\n{e}");
            assert!(e.reason.contains(reason), "{text}\n{e}");
        }
    }
}
