//! The rollout spec an operator applies (`rampctl apply -f`): arms and their roles, the strategy, the
//! stages with their rules, how often to check and how many failed checks roll back. YAML or JSON,
//! parsed strictly; every error names the field and the reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use thiserror::Error;

/// The custom rules' part of the spec: a custom rule is a rule whose figure the team's own
/// source gives, so its grammar and the spec's refer to each other.
pub mod custom;
pub mod guard;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Weighted stages 5% -> ... -> 100%.
    #[default]
    Canary,
    /// The candidate is tested at 0%, then switched to 100% at once.
    BlueGreen,
    /// A fixed split (the first stage's weight) until the stage's minimums are met, then a
    /// two-proportion z-test decides: promote a better candidate, roll back a worse one, hold when
    /// the test is inconclusive.
    AbTest,
    /// Both arms live while the filters' bandit (strategy "bandit" in their config) shares the
    /// traffic out; the controller guards with the rules, sums the bandit counts of every Envoy and
    /// the delayed rewards, and pushes them back.
    Bandit,
    /// The candidate serves no user: the filters mirror live requests to it (shadow compare mode)
    /// and the first stage's shadow rules judge its answers; then it is switched to 100%.
    Shadow,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmSpec {
    #[serde(deserialize_with = "text")]
    pub name: String,
    pub role: Role,
    /// What the arm's model costs per 1,000 tokens, for `cost_per_1k_requests`.
    #[serde(default)]
    pub price_per_1k_tokens: Option<Price>,
}

/// An arm's price per 1,000 tokens, prompt and completion apart (as model providers price them),
/// in any currency unit (the rule's bound is in the same one).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub prompt: f64,
    pub completion: f64,
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
    /// The candidate's error rate minus the baseline's over the same window (use `max`, the
    /// excess allowed, e.g. 0.01): fails only when the 95% confidence sequence of the difference
    /// (the mSPRT's, valid however often it is checked) lies wholly above `max`.
    ErrorRateVsBaseline,
    /// The probability that a candidate request is slower than a baseline one over the same
    /// window (Mann-Whitney on the two latency histograms; use `max`, e.g. 0.55): fails when it is
    /// above `max` and the test finds the candidate slower (one-sided p < 0.01).
    LatencySlower,
    /// Share of predictions that matched ground truth reported through the API.
    Accuracy,
    /// Share of mirrored copies whose answer (the filter's `shadow.json_pointer`) equals the
    /// primary's: judged at 0%, with no user seeing the candidate.
    ShadowAgreement,
    /// Share of the copies the shadow model answered with a 5xx.
    ShadowErrorRate,
    /// Pearson's correlation between the primary's and the shadow's predictions (use `min`).
    ShadowCorrelation,
    /// |mean of shadow - primary| in the predictions' unit (use `max`).
    ShadowMeanDiff,
    /// Equivalence (TOST at 5%): passes when the 90% confidence interval of the mean difference
    /// lies within +-`max`, the tolerance, in the predictions' unit.
    ShadowEquivalent,
    /// The deployment-strategies guide's recommendation: correlation >= `min` (the guide: 0.95)
    /// and a paired t-test with p > 0.05.
    ShadowGuide,
    /// The team's own figure per arm, from a PromQL query template or a JSON endpoint: a point
    /// value, no samples (`custom`).
    Custom,
    /// Streamed responses (the filter's `stream`): percentiles of the time to first token (the
    /// response's first body byte), in milliseconds, from the filters' histograms.
    TtftP95,
    TtftP99,
    /// The 95th percentile of the time per output token after the first, per response:
    /// (end of stream - first byte) / (completion tokens - 1), in ms (needs `stream.tokens`).
    TpotP95,
    /// The 95th percentile of the time to the end of a streamed response, in ms.
    DurationP95,
    /// Mean completion tokens per streamed response that reported `usage`.
    TokensPerRequest,
    /// Mean cost of 1,000 responses at the arm's `price_per_1k_tokens` (prompt and completion).
    #[serde(rename = "cost_per_1k_requests")]
    CostPer1kRequests,
    /// As `latency_slower`, on the time to first token: the probability that a candidate
    /// response's first token comes later than a baseline one's (use `max`, e.g. 0.55).
    TtftSlower,
}

impl Metric {
    pub fn percentile(self) -> Option<f64> {
        match self {
            Metric::LatencyP50 => Some(0.50),
            Metric::LatencyP95 => Some(0.95),
            Metric::LatencyP99 => Some(0.99),
            Metric::TtftP95 | Metric::TpotP95 | Metric::DurationP95 => Some(0.95),
            Metric::TtftP99 => Some(0.99),
            _ => None,
        }
    }

    /// Measured on streamed responses (the filters' `stream` figures): their samples are the
    /// streamed responses.
    pub fn is_stream(self) -> bool {
        matches!(
            self,
            Metric::TtftP95
                | Metric::TtftP99
                | Metric::TpotP95
                | Metric::DurationP95
                | Metric::TokensPerRequest
                | Metric::CostPer1kRequests
                | Metric::TtftSlower
        )
    }

    /// Whether larger values are worse (latency, errors) or better (accuracy, agreement).
    pub fn higher_is_worse(self) -> bool {
        !matches!(
            self,
            Metric::Accuracy
                | Metric::ShadowAgreement
                | Metric::ShadowCorrelation
                | Metric::ShadowGuide
        )
    }

    /// Compares the candidate with the baseline itself (so it needs both arms' samples, and a
    /// `max_worse_than_baseline` bound would compare twice).
    pub fn against_baseline(self) -> bool {
        matches!(
            self,
            Metric::LatencySlower | Metric::ErrorRateVsBaseline | Metric::TtftSlower
        )
    }

    /// Judged on mirrored copies, so it has data while the candidate serves no user.
    pub fn is_shadow(self) -> bool {
        matches!(
            self,
            Metric::ShadowAgreement
                | Metric::ShadowErrorRate
                | Metric::ShadowCorrelation
                | Metric::ShadowMeanDiff
                | Metric::ShadowEquivalent
                | Metric::ShadowGuide
        )
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
    /// Samples the candidate needs in the window before the rule can fail (default 100).
    #[serde(default)]
    pub min_samples: Option<u64>,
    // `metric: custom` only (`custom` validates them; other metrics refuse them).
    /// The custom figure's name, unique in its stage.
    #[serde(default)]
    pub name: Option<custom::Text>,
    /// Its source: a PromQL query template...
    #[serde(default)]
    pub prometheus: Option<custom::RawPrometheusSource>,
    /// ...or a JSON endpoint.
    #[serde(default)]
    pub web: Option<custom::RawWebSource>,
    /// Relative: the candidate's figure may be at most this share of |baseline's| above it.
    #[serde(default)]
    pub max_increase: Option<f64>,
    /// Relative: ...or below it.
    #[serde(default)]
    pub max_decrease: Option<f64>,
    /// With `max_worse_than_baseline`: which way the figure is worse.
    #[serde(default)]
    pub higher_is: Option<custom::HigherIs>,
    /// Checks in a row without a value before the rollout pauses.
    #[serde(default)]
    pub no_data_checks: Option<u32>,
    /// Judged, shown and recorded, never acted on: a rule being tried before it gates.
    #[serde(default)]
    pub dry_run: bool,
    /// What the rule's failure does once the failed checks reach `failure_threshold`.
    #[serde(default)]
    pub on_fail: OnFail,
}

/// What a failing rule does at the failure threshold: roll the candidate back (the default), or
/// pause the rollout where it is for an operator to decide (`resume` or `rollback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFail {
    #[default]
    Rollback,
    Pause,
}

/// The name an enum value has in specs and the API (its serde name: `error_rate`,
/// `progressing`, `canary`), or "" for a value that does not serialize to a string.
pub fn wire_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn default_min_samples() -> u64 {
    100
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    Max(f64),
    Min(f64),
    WorseThanBaseline(f64),
    /// Custom metrics: at most this share of |the baseline's figure| above it...
    MaxIncrease(f64),
    /// ...or below it.
    MaxDecrease(f64),
}

impl Bound {
    /// The spec field that sets it.
    pub fn name(self) -> &'static str {
        match self {
            Bound::Max(_) => "max",
            Bound::Min(_) => "min",
            Bound::WorseThanBaseline(_) => "max_worse_than_baseline",
            Bound::MaxIncrease(_) => "max_increase",
            Bound::MaxDecrease(_) => "max_decrease",
        }
    }

    pub fn limit(self) -> f64 {
        match self {
            Bound::Max(v)
            | Bound::Min(v)
            | Bound::WorseThanBaseline(v)
            | Bound::MaxIncrease(v)
            | Bound::MaxDecrease(v) => v,
        }
    }

    /// Whether the candidate is compared with the baseline's figure.
    pub fn is_relative(self) -> bool {
        !matches!(self, Bound::Max(_) | Bound::Min(_))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub metric: Metric,
    pub bound: Bound,
    pub min_samples: u64,
    /// `metric: custom`: the figure's definition (its source and name).
    pub custom: Option<Arc<custom::CustomRule>>,
    /// Judged and recorded, never acted on (`machine::step` leaves it out of every decision).
    pub dry_run: bool,
    pub on_fail: OnFail,
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
    #[serde(deserialize_with = "text")]
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
    /// The experiment of `strategy: ab_test`.
    #[serde(default)]
    pub ab_test: Option<RawAbTest>,
    /// How a `strategy: bandit` rollout decides (defaults when absent).
    #[serde(default)]
    pub bandit: Option<RawBanditSpec>,
    /// The filters' own guard on the candidates' 5xx (on by default with an error-rate rule).
    #[serde(default)]
    pub guard: Option<guard::RawGuardSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBanditSpec {
    /// The rollout ends once one arm's posterior probability of being the best reaches this:
    /// that arm is promoted (a candidate) or kept (the baseline, and the rollout rolls back).
    #[serde(default = "default_promote_at")]
    pub promote_at: f64,
    /// Before a candidate replaces the baseline, the mSPRT must find it better at this
    /// confidence (`false`: P(best) alone decides).
    #[serde(default)]
    pub confirm: Option<ConfirmSetting>,
}

/// `confirm: 0.95` (a confidence) or `confirm: false`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ConfirmSetting {
    Off(bool),
    Confidence(f64),
}

fn default_promote_at() -> f64 {
    0.95
}

/// A validated bandit decision rule: present exactly when the strategy is `bandit`.
#[derive(Debug, Clone, PartialEq)]
pub struct BanditSpec {
    pub promote_at: f64,
    /// The mSPRT's confidence a candidate must beat the baseline at; `None`: off.
    pub confirm_confidence: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAbTest {
    /// What "success" is for the test.
    #[serde(default)]
    pub metric: AbMetric,
    /// Confidence level: the sequential test's error rate is 1 - confidence however often the
    /// rollout is checked, e.g. 0.95.
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    /// The sequential test's tuning: the standard deviation of the normal mixture over the
    /// difference of the two rates (absolute). Default: baseline_rate * min_detectable_lift when
    /// both are given, else 0.05. Closest to the effect expected decides soonest.
    #[serde(default)]
    pub mixture_sd: Option<f64>,
    /// Sample-size planning: with the baseline's expected rate, the smallest relative lift worth
    /// detecting and the power, the fixed-horizon plan (shown for reference; the sequential test
    /// needs no fixed sample).
    #[serde(default)]
    pub baseline_rate: Option<f64>,
    #[serde(default)]
    pub min_detectable_lift: Option<f64>,
    #[serde(default = "default_power")]
    pub power: f64,
}

fn default_confidence() -> f64 {
    0.95
}
fn default_power() -> f64 {
    0.8
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbMetric {
    /// Rewards the application posted per decision (`/feedback`), over the arm's requests.
    #[default]
    Conversion,
    /// Responses that were not 5xx, over the arm's requests.
    SuccessRate,
}

/// A validated A/B experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct AbTest {
    pub metric: AbMetric,
    pub confidence: f64,
    /// The fixed-horizon plan's requests per arm (0 without planning); shown, not waited for.
    pub planned_per_arm: u64,
    /// The mSPRT mixture's standard deviation over the difference of rates.
    pub mixture_sd: f64,
    /// The stage the test decides in: 0, or 1 after a 0% pre-period (CUPED's covariate).
    pub experiment_stage: usize,
}

/// The mixture sd without planning figures: a difference of 5 points of rate.
pub const DEFAULT_MIXTURE_SD: f64 = 0.05;

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
    /// After every stored transition (applied, advance, check_failed, paused, promoted,
    /// rolled_back, commands...), as Flagger's `event` webhook: a notification, its answer
    /// changes nothing.
    Event,
}

/// What a hook is POSTed: Ramp's JSON event, or a Slack-compatible `{"text": ...}` (incoming
/// webhooks of Slack, Mattermost, Rocket.Chat and Google Chat take it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookFormat {
    #[default]
    Json,
    Slack,
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
    #[serde(default)]
    pub format: HookFormat,
}

/// Extra attempts a hook may ask for; the attempts together also stop at `HOOK_BUDGET_S`.
pub const MAX_HOOK_RETRIES: u32 = 10;
/// Longest a hook point's hooks may take together (all attempts), in seconds; past it they fail.
pub const HOOK_BUDGET_S: f64 = 300.0;

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
    /// The first candidate: the only one, except in `ab_test` and `bandit`.
    pub candidate: String,
    /// Every candidate in the spec's order (`candidate` first).
    pub candidates: Vec<String>,
    pub strategy: StrategyKind,
    pub stages: Vec<Stage>,
    pub check_interval_ms: u64,
    pub failure_threshold: u32,
    /// Prometheus base URL when the figures come from Prometheus; `None`: the filters' reports.
    pub prometheus: Option<String>,
    pub hooks: Vec<Hook>,
    pub manual_promotion: bool,
    pub ab_test: Option<AbTest>,
    pub bandit: Option<BanditSpec>,
    /// Each arm's price per 1,000 tokens, where the spec gives one.
    pub prices: BTreeMap<String, Price>,
    /// The in-filter guard's settings (`guard::live_guard` derives what the filters get).
    pub guard: guard::RawGuardSpec,
}

impl Spec {
    /// The baseline, then the candidates: the arms reports and feedback may name.
    pub fn arms(&self) -> Vec<&str> {
        std::iter::once(self.baseline.as_str())
            .chain(self.candidates.iter().map(String::as_str))
            .collect()
    }

    pub fn is_arm(&self, name: &str) -> bool {
        name == self.baseline || self.candidates.iter().any(|c| c == name)
    }
}

/// A YAML string and nothing else: `name: 123` is a number, not the name "123".
pub(crate) fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string (quote names that look like numbers or booleans)")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
    }
    d.deserialize_any(Text)
}

/// Largest spec accepted, in bytes (a real one is a few KB).
pub const MAX_SPEC_BYTES: usize = 256 * 1024;
/// Deepest nesting of YAML/JSON collections accepted (a real spec nests 5 deep). The YAML parser
/// takes time quadratic in the depth, so depth is checked before parsing.
pub const MAX_SPEC_DEPTH: usize = 32;

/// Refuses a text too large or too deeply nested to be a spec, in one linear pass: flow
/// collections (`[`, `{`) outside quotes and comments, and block nesting by indentation (two
/// columns a level, as `rampctl validate` writes; wider indents count as fewer levels).
fn check_shape(text: &str) -> Result<(), SpecError> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(err(
            "(root)",
            format!(
                "{} bytes is more than a spec may have ({MAX_SPEC_BYTES})",
                text.len()
            ),
        ));
    }
    let too_deep = || {
        err(
            "(root)",
            format!("nested more than {MAX_SPEC_DEPTH} levels deep"),
        )
    };
    let (mut depth, mut quote, mut comment, mut line_start, mut prev) =
        (0usize, None::<char>, false, true, ' ');
    let mut indent = 0usize;
    for c in text.chars() {
        if c == '\n' {
            comment = false;
            line_start = true;
            indent = 0;
            prev = c;
            continue;
        }
        if line_start {
            if c == ' ' || c == '-' {
                indent += 1;
                if indent / 2 > MAX_SPEC_DEPTH * 2 {
                    return Err(too_deep());
                }
                prev = c;
                continue;
            }
            line_start = false;
        }
        match (quote, c) {
            _ if comment => {}
            (Some('"'), '"') if prev != '\\' => quote = None,
            (Some('\''), '\'') => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') if prev.is_whitespace() => comment = true,
            (None, '[' | '{') => {
                depth += 1;
                if depth > MAX_SPEC_DEPTH {
                    return Err(too_deep());
                }
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    Ok(())
}

impl Spec {
    /// Parses YAML (or JSON, which is YAML) and validates it. Linear-time shape checks (size,
    /// nesting) come first; callers on an async runtime run this on a blocking thread.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        check_shape(text)?;
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
        // The filter's own rule: a rollout or arm it would refuse could never be served.
        ramp_protocol::names::check_name(&raw.name).map_err(|r| err("name", r))?;
        for (i, arm) in raw.arms.iter().enumerate() {
            ramp_protocol::names::check_name(&arm.name)
                .map_err(|r| err(format!("arms[{i}].name"), r))?;
        }
        let role = |r: Role| raw.arms.iter().filter(|a| a.role == r).collect::<Vec<_>>();
        let (baselines, candidates) = (role(Role::Baseline), role(Role::Candidate));
        if baselines.len() != 1 || candidates.is_empty() {
            return Err(err(
                "arms",
                "exactly one baseline and at least one candidate arm",
            ));
        }
        let max_arms = ramp_protocol::names::MAX_ARMS;
        if raw.arms.len() > max_arms {
            return Err(err(
                "arms",
                format!(
                    "at most {max_arms} arms (the filter's limit), got {}",
                    raw.arms.len()
                ),
            ));
        }
        for (i, arm) in raw.arms.iter().enumerate() {
            if raw.arms[..i].iter().any(|a| a.name == arm.name) {
                return Err(err(
                    format!("arms[{i}].name"),
                    format!("{:?} is listed twice: arms need different names", arm.name),
                ));
            }
        }
        // One new version ramps, switches or is mirrored; several compete only in an experiment.
        if candidates.len() > 1
            && !matches!(raw.strategy, StrategyKind::AbTest | StrategyKind::Bandit)
        {
            return Err(err(
                "arms",
                format!(
                    "{} candidates: only ab_test and bandit compare several (canary, blue_green and shadow take one)",
                    candidates.len()
                ),
            ));
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
            custom::check_stage(
                &rules,
                |j| format!("stages[{i}].rules[{j}]"),
                raw.metrics.as_ref().map(|m| m.prometheus.as_str()),
            )?;
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
        let ab_test = validate_strategy(&raw, &stages)?;
        let bandit = match (raw.strategy, &raw.bandit) {
            (StrategyKind::Bandit, b) => {
                let promote_at = b.as_ref().map_or_else(default_promote_at, |b| b.promote_at);
                if !(promote_at > 0.5 && promote_at < 1.0) {
                    return Err(err(
                        "bandit.promote_at",
                        format!("must be in (0.5, 1) (a probability that one arm is the best), got {promote_at}"),
                    ));
                }
                let confirm_confidence = match b.as_ref().and_then(|b| b.confirm) {
                    None | Some(ConfirmSetting::Off(true)) => Some(0.95),
                    Some(ConfirmSetting::Off(false)) => None,
                    Some(ConfirmSetting::Confidence(c)) if c > 0.5 && c < 1.0 => Some(c),
                    Some(ConfirmSetting::Confidence(c)) => {
                        return Err(err(
                            "bandit.confirm",
                            format!("a confidence in (0.5, 1), or false; got {c}"),
                        ))
                    }
                };
                Some(BanditSpec {
                    promote_at,
                    confirm_confidence,
                })
            }
            (_, Some(_)) => return Err(err("bandit", "only applies to strategy bandit")),
            (_, None) => None,
        };
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
            if h.retries > MAX_HOOK_RETRIES {
                return Err(err(
                    format!("hooks[{i}].retries"),
                    format!("at most {MAX_HOOK_RETRIES}, got {}", h.retries),
                ));
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
        let mut prices = BTreeMap::new();
        for (i, arm) in raw.arms.iter().enumerate() {
            let Some(p) = arm.price_per_1k_tokens else {
                continue;
            };
            if ![p.prompt, p.completion]
                .iter()
                .all(|v| v.is_finite() && *v >= 0.0)
            {
                return Err(err(
                    format!("arms[{i}].price_per_1k_tokens"),
                    "prompt and completion must be finite numbers >= 0",
                ));
            }
            prices.insert(arm.name.clone(), p);
        }
        for (i, s) in stages.iter().enumerate() {
            let costed = s
                .rules
                .iter()
                .position(|r| r.metric == Metric::CostPer1kRequests);
            if let (Some(j), Some(arm)) = (
                costed,
                raw.arms.iter().find(|a| a.price_per_1k_tokens.is_none()),
            ) {
                return Err(err(
                    format!("stages[{i}].rules[{j}]"),
                    format!(
                        "cost_per_1k_requests needs every arm's price_per_1k_tokens; {:?} has none",
                        arm.name
                    ),
                ));
            }
        }
        let guard = raw.guard.unwrap_or_default().validate()?;
        Ok(Spec {
            guard,
            prices,
            name: raw.name,
            baseline: baselines[0].name.clone(),
            candidate: candidates[0].name.clone(),
            candidates: candidates.iter().map(|a| a.name.clone()).collect(),
            strategy: raw.strategy,
            stages,
            check_interval_ms: (raw.check_interval_s * 1000.0).round() as u64,
            failure_threshold: raw.failure_threshold,
            prometheus: raw.metrics.map(|m| m.prometheus),
            hooks: raw.hooks,
            manual_promotion: raw.promotion == Promotion::Manual,
            ab_test,
            bandit,
        })
    }
}

/// Each strategy's shape of stages, and the A/B experiment's settings.
fn validate_strategy(raw: &RawSpec, stages: &[Stage]) -> Result<Option<AbTest>, SpecError> {
    // From stage `from` (an A/B test's 0% pre-period comes before).
    let live_both = |why: &str, from: usize| {
        match stages
            .iter()
            .enumerate()
            .take(stages.len() - 1)
            .skip(from)
            .find(|(_, s)| !(s.weight > 0.0 && s.weight < 100.0))
        {
            Some((i, s)) => Err(err(
                format!("stages[{i}].weight"),
                format!("{why}: every stage before the last keeps both arms live (0 < weight < 100), got {}", s.weight),
            )),
            None => Ok(()),
        }
    };
    // At 0% the candidate serves nobody: only rules on mirrored copies have anything to judge,
    // and the team's own figures (its memory, a smoke test's score), which need no traffic.
    for (i, s) in stages.iter().enumerate().filter(|(_, s)| s.weight == 0.0) {
        if let Some(j) = s
            .rules
            .iter()
            .position(|r| !r.metric.is_shadow() && r.metric != Metric::Custom)
        {
            return Err(err(
                format!("stages[{i}].rules[{j}].metric"),
                "a 0% stage serves no user: only shadow rules (shadow_agreement, shadow_error_rate, shadow_correlation, shadow_mean_diff, shadow_equivalent, shadow_guide) and custom rules can be judged there",
            ));
        }
    }
    match raw.strategy {
        StrategyKind::Shadow => {
            if raw.ab_test.is_some() {
                return Err(err("ab_test", "only applies to strategy ab_test"));
            }
            if !(stages.len() == 2 && stages[0].weight == 0.0) {
                return Err(err(
                    "stages",
                    "shadow has two stages: 0 (mirrored copies judged by shadow rules) and 100",
                ));
            }
            if stages[0].rules.is_empty() {
                return Err(err(
                    "stages[0].rules",
                    "shadow needs at least one rule (shadow_agreement, shadow_error_rate, shadow_correlation, shadow_mean_diff, shadow_equivalent, shadow_guide) to judge the copies",
                ));
            }
            Ok(None)
        }
        StrategyKind::Canary | StrategyKind::BlueGreen => {
            if raw.ab_test.is_some() {
                return Err(err("ab_test", "only applies to strategy ab_test"));
            }
            Ok(None)
        }
        StrategyKind::Bandit => {
            if raw.ab_test.is_some() {
                return Err(err("ab_test", "only applies to strategy ab_test"));
            }
            if stages.len() < 2 {
                return Err(err(
                    "stages",
                    "bandit needs a stage below 100 where the bandit learns, then 100: the arm most probably best is promoted from the last stage below 100",
                ));
            }
            live_both("bandit", 0)?;
            Ok(None)
        }
        StrategyKind::AbTest => {
            // A first stage at 0% is the pre-period: sticky filters count each user under the
            // arm the experiment will give them, and the test adjusts for it (CUPED).
            let pre_period = stages.len() == 3 && stages[0].weight == 0.0;
            if !(stages.len() == 2 || pre_period) {
                return Err(err(
                    "stages",
                    "ab_test has two stages: the experiment (its weight is the candidate's share) and 100; or three, with a 0% pre-period first",
                ));
            }
            if pre_period && stages[0].min_requests > 0 {
                return Err(err(
                    "stages[0].min_requests",
                    "the pre-period serves the candidates nothing: it lasts min_duration_s instead",
                ));
            }
            if pre_period && stages[0].min_duration_ms == 0 {
                return Err(err(
                    "stages[0].min_duration_s",
                    "the pre-period must last: CUPED's covariate is what sticky filters count during it (e.g. 3600)",
                ));
            }
            if stages[stages.len() - 2].weight == 0.0 {
                return Err(err(
                    format!("stages[{}].weight", stages.len() - 2),
                    "the experiment must give the candidates traffic (above 0)",
                ));
            }
            live_both("ab_test", usize::from(pre_period))?;
            let t = raw.ab_test.clone().ok_or_else(|| {
                err(
                    "ab_test",
                    "required with strategy ab_test (metric, confidence)",
                )
            })?;
            if !(t.confidence > 0.5 && t.confidence < 1.0) {
                return Err(err(
                    "ab_test.confidence",
                    format!("must be in (0.5, 1), got {}", t.confidence),
                ));
            }
            if !(t.power > 0.5 && t.power < 1.0) {
                return Err(err(
                    "ab_test.power",
                    format!("must be in (0.5, 1), got {}", t.power),
                ));
            }
            let planned_per_arm = match (t.baseline_rate, t.min_detectable_lift) {
                (None, None) => 0,
                (Some(rate), Some(lift)) => {
                    crate::abtest::sample_size_per_arm(rate, lift, 1.0 - t.confidence, t.power)
                        .map_err(|e| err(format!("ab_test.{}", e.field), e.reason))?
                }
                (Some(_), None) => {
                    return Err(err(
                        "ab_test.min_detectable_lift",
                        "required with baseline_rate (sample-size planning needs both)",
                    ))
                }
                (None, Some(_)) => {
                    return Err(err(
                        "ab_test.baseline_rate",
                        "required with min_detectable_lift (sample-size planning needs both)",
                    ))
                }
            };
            let mixture_sd = match (t.mixture_sd, t.baseline_rate, t.min_detectable_lift) {
                (Some(sd), _, _) => sd,
                (None, Some(rate), Some(lift)) => rate * lift,
                _ => DEFAULT_MIXTURE_SD,
            };
            if !(mixture_sd > 0.0 && mixture_sd <= 1.0) {
                return Err(err(
                    "ab_test.mixture_sd",
                    format!("must be in (0, 1] (a difference of rates), got {mixture_sd}"),
                ));
            }
            Ok(Some(AbTest {
                metric: t.metric,
                confidence: t.confidence,
                planned_per_arm,
                mixture_sd,
                experiment_stage: usize::from(pre_period),
            }))
        }
    }
}

fn validate_rule(r: &RawRule, field: &str) -> Result<Rule, SpecError> {
    if r.metric == Metric::Custom {
        return custom::validate(r, field);
    }
    custom::refuse_custom_fields(r, field)?;
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
    let (value, name) = (bound.limit(), bound.name());
    if !(value.is_finite() && value >= 0.0) {
        return Err(err(
            format!("{field}.{name}"),
            format!("must be a finite number >= 0, got {value}"),
        ));
    }
    let rate = !matches!(
        r.metric,
        Metric::LatencyP50
            | Metric::LatencyP95
            | Metric::LatencyP99
            | Metric::ShadowMeanDiff
            | Metric::ShadowEquivalent
            | Metric::TtftP95
            | Metric::TtftP99
            | Metric::TpotP95
            | Metric::DurationP95
            | Metric::TokensPerRequest
            | Metric::CostPer1kRequests
    );
    let paired = matches!(
        r.metric,
        Metric::ShadowCorrelation
            | Metric::ShadowMeanDiff
            | Metric::ShadowEquivalent
            | Metric::ShadowGuide
    );
    if r.metric.against_baseline() && matches!(bound, Bound::WorseThanBaseline(_)) {
        return Err(err(
            format!("{field}.max_worse_than_baseline"),
            "this metric already compares with the baseline: use max",
        ));
    }
    if paired && matches!(bound, Bound::WorseThanBaseline(_)) {
        return Err(err(
            format!("{field}.max_worse_than_baseline"),
            "a shadow comparison is already relative to the primary: use max or min",
        ));
    }
    if r.metric == Metric::ShadowEquivalent && value == 0.0 {
        return Err(err(
            format!("{field}.max"),
            "the equivalence tolerance must be > 0",
        ));
    }
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
                "this metric is bounded below (higher is better): use min",
            ))
        }
        _ => {}
    }
    Ok(Rule {
        metric: r.metric,
        bound,
        min_samples: r.min_samples.unwrap_or_else(default_min_samples),
        custom: None,
        dry_run: r.dry_run,
        on_fail: r.on_fail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedule of the deployment-strategies guide ("Rollout Schedule Example" table).
    const GUIDE: &str = include_str!("../../examples/canary.yaml");

    /// Every example spec in `controller/examples/` is valid.
    #[test]
    fn the_examples_parse() {
        for (name, text) in [
            ("ab-test", include_str!("../../examples/ab-test.yaml")),
            (
                "ab-test-cuped",
                include_str!("../../examples/ab-test-cuped.yaml"),
            ),
            ("abn-test", include_str!("../../examples/abn-test.yaml")),
            ("bandit", include_str!("../../examples/bandit.yaml")),
            ("canary", GUIDE),
            ("shadow", include_str!("../../examples/shadow.yaml")),
        ] {
            let spec = Spec::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(spec.arms().len(), if name == "abn-test" { 4 } else { 2 });
        }
    }

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
                min_samples: 100,
                custom: None,
                dry_run: false,
                on_fail: OnFail::Rollback,
            }
        );
        assert_eq!(
            s.stages[1].rules[1],
            Rule {
                metric: Metric::LatencyP95,
                bound: Bound::Max(130.0),
                min_samples: 100,
                custom: None,
                dry_run: false,
                on_fail: OnFail::Rollback,
            }
        );
        assert_eq!(s.stages[2].rules[1].bound, Bound::WorseThanBaseline(0.03));
        assert!(s.stages[4].rules.is_empty());
    }

    /// `dry_run` and `on_fail` per rule, with their defaults: acted on, rolling back.
    #[test]
    fn rules_may_be_dry_runs_or_pause_on_failure() {
        let s = Spec::parse("name: r\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\nstages:\n  - weight: 50\n    rules:\n      - {metric: error_rate, max: 0.02}\n      - {metric: latency_p95, max: 200, dry_run: true}\n      - {metric: latency_p99, max: 500, on_fail: pause}\n      - {metric: accuracy, min: 0.9, on_fail: rollback, dry_run: false}\n  - {weight: 100}\n").unwrap();
        let rules = &s.stages[0].rules;
        assert_eq!(
            rules
                .iter()
                .map(|r| (r.dry_run, r.on_fail))
                .collect::<Vec<_>>(),
            vec![
                (false, OnFail::Rollback),
                (true, OnFail::Rollback),
                (false, OnFail::Pause),
                (false, OnFail::Rollback)
            ]
        );
    }

    /// An A/B test may begin with a 0% pre-period (CUPED): it must last, the test decides in the
    /// next stage, and meanwhile the live state carries the experiment's weights.
    #[test]
    fn an_ab_test_may_begin_with_a_pre_period() {
        let ab = |stages: &str| {
            Spec::parse(&format!("name: r\nstrategy: ab_test\nab_test: {{metric: conversion}}\narms: [{{name: v1, role: baseline}}, {{name: v2, role: candidate}}]\nstages: {stages}\n"))
        };
        let s = ab("[{weight: 0, min_duration_s: 600}, {weight: 30}, {weight: 100}]").unwrap();
        assert_eq!(s.ab_test.as_ref().unwrap().experiment_stage, 1);
        assert_eq!(
            ab("[{weight: 30}, {weight: 100}]")
                .unwrap()
                .ab_test
                .unwrap()
                .experiment_stage,
            0
        );
        let mut state = crate::machine::State::start(&s, 0);
        assert_eq!(
            state.pre_weights(&s),
            vec![("v1".to_owned(), 70.0), ("v2".to_owned(), 30.0)]
        );
        assert_eq!(
            state.arm_weights(&s)[1].1,
            0.0,
            "the candidate serves nobody yet"
        );
        state.stage = 1;
        assert!(state.pre_weights(&s).is_empty(), "the experiment has begun");
        for (stages, field, reason) in [
            (
                "[{weight: 0}, {weight: 30}, {weight: 100}]",
                "stages[0].min_duration_s",
                "must last",
            ),
            (
                "[{weight: 0, min_duration_s: 60}, {weight: 100}]",
                "stages[0].weight",
                "above 0",
            ),
            (
                "[{weight: 10, min_duration_s: 60}, {weight: 30}, {weight: 100}]",
                "stages",
                "0% pre-period",
            ),
        ] {
            let e = ab(stages).unwrap_err();
            assert_eq!(e.field, field, "{stages}: {e}");
            assert!(e.reason.contains(reason), "{stages}: {e}");
        }
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
                "one baseline and at least one candidate",
            ),
            (
                "name: r\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}, {name: v3, role: candidate}]\nstages: [{weight: 100}]\n".into(),
                "arms",
                "only ab_test and bandit compare several",
            ),
            (
                "name: r\nstrategy: bandit\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}, {name: v2, role: candidate}]\nstages: [{weight: 50}, {weight: 100}]\n".into(),
                "arms[2].name",
                "listed twice",
            ),
            (
                format!(
                    "name: r\nstrategy: bandit\narms: [{{name: v0, role: baseline}}, {}]\nstages: [{{weight: 50}}, {{weight: 100}}]\n",
                    (1..=16).map(|i| format!("{{name: v{i}, role: candidate}}")).collect::<Vec<_>>().join(", ")
                ),
                "arms",
                "at most 16 arms",
            ),
            (
                format!("strategy: bandit\n{}", base("[{weight: 0}, {weight: 100}]")),
                "stages[0].weight",
                "both arms live",
            ),
            (
                format!(
                    "strategy: ab_test\n{}",
                    base("[{weight: 50}, {weight: 100}]")
                ),
                "ab_test",
                "required",
            ),
            (
                format!(
                    "strategy: ab_test\nab_test: {{confidence: 1.5}}\n{}",
                    base("[{weight: 50}, {weight: 100}]")
                ),
                "ab_test.confidence",
                "(0.5, 1)",
            ),
            (
                format!(
                    "strategy: ab_test\nab_test: {{baseline_rate: 0.1}}\n{}",
                    base("[{weight: 50}, {weight: 100}]")
                ),
                "ab_test.min_detectable_lift",
                "needs both",
            ),
            (
                format!(
                    "strategy: ab_test\nab_test: {{}}\n{}",
                    base("[{weight: 10}, {weight: 50}, {weight: 100}]")
                ),
                "stages",
                "two stages",
            ),
            (
                format!(
                    "strategy: blue_green\n{}",
                    base("[{weight: 0, rules: [{metric: error_rate, max: 0.1}]}, {weight: 100}]")
                ),
                "stages[0].rules[0].metric",
                "only shadow rules",
            ),
            (
                base("[{weight: 0, rules: [{metric: shadow_equivalent, max: 0}]}, {weight: 100}]"),
                "stages[0].rules[0].max",
                "tolerance must be > 0",
            ),
            (
                base("[{weight: 0, rules: [{metric: shadow_correlation, max: 0.9}]}, {weight: 100}]"),
                "stages[0].rules[0].max",
                "use min",
            ),
            (
                base("[{weight: 0, rules: [{metric: shadow_mean_diff, max_worse_than_baseline: 0.1}]}, {weight: 100}]"),
                "stages[0].rules[0].max_worse_than_baseline",
                "already relative",
            ),
            (
                format!("strategy: shadow\n{}", base("[{weight: 0}, {weight: 100}]")),
                "stages[0].rules",
                "at least one rule",
            ),
            (
                base("[{weight: 100, rules: [{metric: shadow_agreement, max: 0.9}]}]"),
                "stages[0].rules[0].max",
                "use min",
            ),
            (
                format!("ab_test: {{}}\n{}", base("[{weight: 100}]")),
                "ab_test",
                "only applies",
            ),
            (
                "name: 'a b'\narms: []\nstages: []\n".into(),
                "name",
                "letters",
            ),
            (
                base("[{weight: 100, rules: [{metric: error_rate, max: 0.1, on_fail: abort}]}]"),
                "stages[0].rules[0].on_fail",
                "unknown variant `abort`, expected `rollback` or `pause`",
            ),
            (
                base("[{weight: 100, rules: [{metric: error_rate, max: 0.1, dry_run: 'yes'}]}]"),
                "stages[0].rules[0].dry_run",
                "invalid type",
            ),
            (
                base("[{weight: 100, rules: [{metric: error_rate, max: 0.1, dryrun: true}]}]"),
                "stages[0].rules[0]",
                "unknown field `dryrun`",
            ),
        ] {
            let e = Spec::parse(&text).unwrap_err();
            assert_eq!(e.field, field, "{text}\n{e}");
            assert!(e.reason.contains(reason), "{text}\n{e}");
        }
    }

    #[test]
    fn streaming_rules_parse_and_cost_needs_every_arms_price() {
        let spec = |prices: &str| {
            format!(
                "name: chat
arms:
- {{name: v1, role: baseline{prices}}}
- {{name: v2, role: candidate, price_per_1k_tokens: {{prompt: 0.5, completion: 1.5}}}}
stages:
- weight: 10
  rules:
  - {{metric: ttft_slower, max: 0.55}}
  - {{metric: ttft_p95, max: 800}}
  - {{metric: tpot_p95, max_worse_than_baseline: 5}}
  - {{metric: duration_p95, max: 20000}}
  - {{metric: tokens_per_request, max: 600}}
  - {{metric: cost_per_1k_requests, max_worse_than_baseline: 0.2}}
- weight: 100
"
            )
        };
        let s = Spec::parse(&spec(
            ", price_per_1k_tokens: {prompt: 0.4, completion: 1.2}",
        ))
        .unwrap();
        let metrics: Vec<Metric> = s.stages[0].rules.iter().map(|r| r.metric).collect();
        assert_eq!(metrics[0], Metric::TtftSlower);
        assert!(metrics.iter().all(|m| m.is_stream()));
        assert_eq!(s.prices["v1"].completion, 1.2);
        let e = Spec::parse(&spec("")).unwrap_err().to_string();
        assert!(
            e.contains("stages[0].rules[5]") && e.contains("\"v1\" has none"),
            "{e}"
        );
        let e = Spec::parse(&spec(", price_per_1k_tokens: {prompt: -1, completion: 1}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("arms[0].price_per_1k_tokens"), "{e}");
        let e = Spec::parse(
            &spec("").replace("ttft_slower, max", "ttft_slower, max_worse_than_baseline"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("use max"), "{e}");
    }
}
