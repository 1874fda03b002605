//! The filter's static configuration: the JSON that Envoy's `configuration` and Istio's `pluginConfig`
//! deliver, parsed strictly and validated into a [`Rollout`] whose errors name the field and the reason.

use std::collections::BTreeMap;

use serde::Deserialize;
use thiserror::Error;

use crate::guard::{Bound, GuardTest};

/// Why a configuration was refused. `field` is a path such as `arms[1].weight`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid ramp config: {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The configuration as written. Unknown fields are errors, so a typo never silently does nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub rollout: String,
    pub arms: Vec<RawArm>,
    /// The arm that failures fall back to; defaults to the first arm.
    #[serde(default)]
    pub baseline: Option<String>,
    #[serde(default)]
    pub strategy: Strategy,
    /// Required when `strategy` is `bandit`.
    #[serde(default)]
    pub bandit: Option<RawBandit>,
    #[serde(default = "default_routing_header")]
    pub routing_header: String,
    #[serde(default = "default_cluster_header")]
    pub cluster_header: String,
    #[serde(default)]
    pub sticky: Option<RawSticky>,
    #[serde(default, rename = "override")]
    pub override_: Option<RawOverride>,
    /// Response header that tells the client which arm served it; none when absent.
    #[serde(default)]
    pub response_header: Option<String>,
    /// Send a sample of requests to a shadow model as well; users only ever see the primary's answer.
    #[serde(default)]
    pub shadow: Option<RawShadow>,
    /// Where the live rollout state comes from; without it the static weights apply.
    #[serde(default)]
    pub controller: Option<RawController>,
    /// Response header with a decision id (`<arm>.<random>`) the application can post feedback for.
    #[serde(default)]
    pub decision_header: Option<String>,
    /// Which client-sent headers the filter removes, and so how it reads the request's headers.
    #[serde(default)]
    pub client_headers: ClientHeaders,
    /// Watch response bodies: time to first byte, to end of stream, tokens. Off when absent, and
    /// then no body is read or timed.
    #[serde(default)]
    pub stream: Option<Stream>,
    /// Cut a failing candidate off in this Envoy at once: a sequential test on each candidate
    /// arm's 5xx (`guard::GuardTest`). With a controller, its live state's guard replaces this.
    #[serde(default)]
    pub guard: Option<RawGuard>,
}

/// The guard as written (the controller's `LiveGuard` has the same fields and an epoch).
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    /// The chance, per Envoy and epoch, that an arm as good as the bound trips it at all.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// 5xx an arm must have before it can trip: a handful of errors never cuts it off.
    #[serde(default)]
    pub min_errors: Option<u64>,
    /// Test against this 5xx rate...
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    /// ...or against the baseline's plus this (the default, with 0).
    #[serde(default)]
    pub max_increase: Option<f64>,
}

impl RawGuard {
    /// The test these fields ask for; errors name the field under `at` (`guard`, or the live
    /// state's `guard`).
    pub fn test(&self, at: &str) -> Result<GuardTest, ConfigError> {
        let alpha = self.alpha.unwrap_or(crate::guard::DEFAULT_ALPHA);
        if !(alpha.is_finite() && alpha > 0.0 && alpha <= 0.5) {
            return Err(ConfigError::new(
                format!("{at}.alpha"),
                format!("must be in (0, 0.5], got {alpha}"),
            ));
        }
        let min_errors = self.min_errors.unwrap_or(crate::guard::DEFAULT_MIN_ERRORS);
        if min_errors == 0 {
            return Err(ConfigError::new(
                format!("{at}.min_errors"),
                "must be at least 1",
            ));
        }
        let bound =
            match (self.max_error_rate, self.max_increase) {
                (Some(_), Some(_)) => return Err(ConfigError::new(
                    at,
                    "give max_error_rate (a bound) or max_increase (over the baseline), not both",
                )),
                (Some(p), None) if p.is_finite() && p > 0.0 && p < 1.0 => Bound::MaxErrorRate(p),
                (Some(p), None) => {
                    return Err(ConfigError::new(
                        format!("{at}.max_error_rate"),
                        format!("must be in (0, 1), got {p}"),
                    ))
                }
                (None, d) => {
                    let d = d.unwrap_or(0.0);
                    if !(d.is_finite() && (0.0..1.0).contains(&d)) {
                        return Err(ConfigError::new(
                            format!("{at}.max_increase"),
                            format!("must be in [0, 1), got {d}"),
                        ));
                    }
                    Bound::VsBaseline { max_increase: d }
                }
            };
        Ok(GuardTest {
            alpha,
            min_errors,
            bound,
        })
    }
}

/// Streamed responses measured per arm (`stream` in the config): every 2xx response of the
/// rollout, or only `text/event-stream` ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stream {
    /// Watch only responses whose `content-type` is `text/event-stream` (one more header read
    /// per response); by default every 2xx response with a body.
    #[serde(default)]
    pub event_stream_only: bool,
    /// Read the prompt and completion tokens of OpenAI-compatible answers: the `usage` object in
    /// the JSON body or the last SSE event (the body's last 2 KiB are kept to find it).
    #[serde(default)]
    pub tokens: bool,
}

/// What the filter removes of the headers a client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientHeaders {
    /// Every `x-ramp-*` header, the routing and the cluster header: the whole header map is read
    /// once per request to find them (3 to 8% of a naive router's cost, see filter/README.md's
    /// "Performance").
    StripAll,
    /// The headers this rollout gives a meaning to: the routing header (replaced), the cluster
    /// header when an arm has a cluster, the mirror header in mirror mode and the copy marker in
    /// compare mode (replaced or removed). The filter then reads just the headers the rollout
    /// needs, one host call each; headers Ramp does not act on reach the model as any other.
    #[default]
    StripOwned,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawController {
    /// Envoy cluster of `rampctl serve`.
    pub cluster: String,
    /// `:authority` of the calls; defaults to the cluster name.
    #[serde(default)]
    pub authority: Option<String>,
    /// How often one worker per Envoy polls the state, in ms.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// Name of an environment variable of the wasm VM (Envoy `vm_config.environment_variables`,
    /// Istio `vmConfig.env`) holding the bearer token the polls and reports carry (`rampctl serve
    /// --report-token`). An env var, not the config, so the token can come from a Secret.
    #[serde(default)]
    pub token_env: Option<String>,
}

fn default_poll_ms() -> u64 {
    1000
}

/// A validated controller section.
#[derive(Debug, Clone, PartialEq)]
pub struct Controller {
    pub cluster: String,
    pub authority: String,
    pub poll_ms: u64,
    pub token_env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowMode {
    /// Envoy mirrors the request (route `request_mirror_policies` with `cluster_header`); no comparison.
    #[default]
    Mirror,
    /// The filter sends the copy itself and compares the shadow's answer with the primary's.
    Compare,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    /// Envoy cluster of the shadow model.
    pub cluster: String,
    #[serde(default)]
    pub mode: ShadowMode,
    /// Share of eligible requests to shadow, in percent.
    #[serde(default = "default_shadow_percent")]
    pub percent: f64,
    /// compare: how long to wait for the shadow's answer.
    #[serde(default = "default_shadow_timeout")]
    pub timeout_ms: u64,
    /// Methods that may be shadowed. Default: those without side effects; mirroring a POST duplicates
    /// it, so a user must list it (model inference is usually a side-effect-free POST).
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// compare: header set on the shadow copy, so the shadow can tell copies from live traffic.
    #[serde(default = "default_shadow_marker")]
    pub marker_header: String,
    /// compare: requests with larger bodies are not shadowed (counted as skipped).
    #[serde(default = "default_shadow_body")]
    pub max_body_bytes: usize,
    /// compare: copies waiting for an answer per worker; more are dropped and counted.
    #[serde(default = "default_shadow_pending")]
    pub max_pending: usize,
    /// compare: the `:authority` of the copy; defaults to the cluster name.
    #[serde(default)]
    pub authority: Option<String>,
    /// compare: the JSON pointer of the prediction in both answers, e.g. `/prediction`.
    #[serde(default)]
    pub json_pointer: Option<String>,
    /// compare: absolute differences between the two predictions to count pairs beyond (at most
    /// four, ascending), e.g. `[0.01, 0.1]`: the "large disagreements" of the comparison.
    #[serde(default)]
    pub disagreement_thresholds: Vec<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArm {
    pub name: String,
    pub weight: f64,
    /// Envoy cluster for `cluster_header` routing; arms without one are routed by the routing header only.
    #[serde(default)]
    pub cluster: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    Weighted,
    Bandit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    EpsilonGreedy,
    Thompson,
    Ucb1,
    /// Garivier & Cappé (2011): UCB with the Bernoulli KL divergence's confidence bound.
    KlUcb,
    /// Russo (2016): Thompson sampling that gives the posterior's runner-up a fixed share, for
    /// finding the best arm rather than earning the most on the way.
    TopTwoThompson,
}

impl Policy {
    /// The policies that sample Beta posteriors, and so take `prior` and `discount`.
    pub fn is_thompson(self) -> bool {
        matches!(self, Policy::Thompson | Policy::TopTwoThompson)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBandit {
    pub policy: Policy,
    /// epsilon_greedy: share of requests drawn uniformly at random.
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
    /// thompson, top_two_thompson: Beta(alpha, beta) prior on each arm's success rate.
    #[serde(default)]
    pub prior: Option<RawPrior>,
    /// top_two_thompson: share of requests that go to the posterior draw's best arm; the rest
    /// go to a challenger. In (0, 1); default 0.5. NaN when not given (JSON has no NaN).
    #[serde(default = "unset")]
    pub top_two_beta: f64,
    /// thompson, top_two_thompson: per-trial decay of older trials' weight, in (0, 1]; 1 (the
    /// default) keeps every trial, 0.999 remembers about the last 1,000. NaN when not given.
    #[serde(default = "unset")]
    pub discount: f64,
    /// Every arm (with weight > 0) gets at least this share of traffic, so none starves.
    #[serde(default)]
    pub min_share: f64,
    /// Trials every arm must have before the policy exploits.
    #[serde(default)]
    pub warmup: u64,
    #[serde(default)]
    pub reward: RawReward,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrior {
    pub alpha: f64,
    pub beta: f64,
}

/// What counts as a success for the bandit. A flat struct rather than an internally tagged enum:
/// serde's tagged-enum buffering costs tens of KB of wasm.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReward {
    #[serde(default)]
    pub source: RewardSource,
    /// status: 1 exactly for these codes or classes, e.g. `["2xx", "404"]`; default: 1 unless 5xx.
    #[serde(default)]
    pub success: Option<Vec<String>>,
    /// latency: 1 when the response headers arrive within this many ms and the status is not 5xx.
    #[serde(default)]
    pub threshold_ms: Option<u64>,
    /// header: the model server's own verdict, a number in [0, 1] in this response header (default
    /// `x-ramp-reward`), removed before the response reaches the client; missing or invalid counts 0.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardSource {
    #[default]
    Status,
    Latency,
    Header,
    /// Delayed rewards (conversions) the application posts to the controller with the decision
    /// id; the filter counts the trial, the controller sums the rewards and pushes them back.
    Feedback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    Header,
    Cookie,
    Query,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub source: KeySource,
    /// Header, cookie or query-parameter name that carries the user's key.
    pub name: String,
    /// Mixed into the hash so two rollouts split the same users independently; defaults to the rollout name.
    #[serde(default)]
    pub salt: Option<String>,
    /// Cookie source only: give a client without the cookie a fresh random key, so it stays sticky.
    #[serde(default)]
    pub set_cookie: bool,
    #[serde(default = "default_cookie_max_age")]
    pub cookie_max_age_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverride {
    pub header: String,
    /// Header value -> arm it forces, e.g. `{"true": "v2"}` for Istio's `canary: true` pattern.
    pub values: BTreeMap<String, String>,
}

fn default_shadow_percent() -> f64 {
    100.0
}
fn default_shadow_timeout() -> u64 {
    1000
}
fn default_shadow_marker() -> String {
    "x-ramp-shadow-copy".to_owned()
}
fn default_shadow_body() -> usize {
    64 * 1024
}
fn default_shadow_pending() -> usize {
    64
}
/// Russo's (2016) default: with beta = 1/2 the posterior's error probability decays at least
/// half as fast as with the best beta for the arms at hand, whatever they are.
const DEFAULT_TOP_TWO_BETA: f64 = 0.5;
/// An optional number that must not be given with the wrong policy is NaN when absent (JSON has
/// no NaN, so no config can set it): 0.4 KB less wasm than `Option<f64>`'s deserializer.
fn unset() -> f64 {
    f64::NAN
}
fn set(v: f64) -> Option<f64> {
    (!v.is_nan()).then_some(v)
}
fn default_epsilon() -> f64 {
    0.1
}
fn default_reward_header() -> String {
    "x-ramp-reward".to_owned()
}
fn default_routing_header() -> String {
    "x-ramp-arm".to_owned()
}
fn default_cluster_header() -> String {
    "x-ramp-cluster".to_owned()
}
fn default_cookie_max_age() -> u64 {
    30 * 24 * 3600
}

/// One arm, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    pub name: String,
    pub weight: f64,
    pub cluster: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sticky {
    pub source: KeySource,
    pub name: String,
    pub salt: String,
    pub set_cookie: bool,
    pub cookie_max_age_s: u64,
}

/// A validated bandit section.
#[derive(Debug, Clone, PartialEq)]
pub struct Bandit {
    pub policy: Policy,
    pub epsilon: f64,
    pub prior_alpha: f64,
    pub prior_beta: f64,
    pub top_two_beta: f64,
    /// 1 when off.
    pub discount: f64,
    pub min_share: f64,
    pub warmup: u64,
    pub reward: Reward,
}

impl Bandit {
    /// A bandit with every setting at its config default: what `{"policy": ...}` alone gives.
    pub fn with_policy(policy: Policy) -> Self {
        Self {
            policy,
            epsilon: default_epsilon(),
            prior_alpha: 1.0,
            prior_beta: 1.0,
            top_two_beta: DEFAULT_TOP_TWO_BETA,
            discount: 1.0,
            min_share: 0.0,
            warmup: 0,
            reward: Reward::Status(vec![StatusMatch::Below500]),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reward {
    /// Success iff the status matches one of these (exact code, or class when `class` is set).
    Status(Vec<StatusMatch>),
    LatencyBelowMs(u64),
    Header(String),
    /// 0 at response time; the reward arrives later through the controller's live state.
    Feedback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Code(u32),
    /// 2 for "2xx".
    Class(u32),
    /// Default: anything below 500.
    Below500,
}

impl Reward {
    /// The reward of a finished request, when it does not come from a header.
    pub fn from_status_and_latency(&self, status: u32, latency_ms: u64) -> Option<f64> {
        let ok = match self {
            Reward::Status(matches) => matches.iter().any(|m| match *m {
                StatusMatch::Code(c) => c == status,
                StatusMatch::Class(c) => status / 100 == c,
                StatusMatch::Below500 => status < 500,
            }),
            Reward::LatencyBelowMs(limit) => status < 500 && latency_ms <= *limit,
            Reward::Header(_) => return None,
            Reward::Feedback => false,
        };
        Some(if ok { 1.0 } else { 0.0 })
    }

    /// A reward header's value: a number in [0, 1]; anything else is 0.
    pub fn parse_header_value(value: &[u8]) -> f64 {
        std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|r| (0.0..=1.0).contains(r))
            .unwrap_or(0.0)
    }
}

/// A validated shadow section.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    pub cluster: String,
    pub mode: ShadowMode,
    /// In [0, 1].
    pub fraction: f64,
    pub timeout_ms: u64,
    /// Upper-case method names.
    pub methods: Vec<String>,
    pub marker_header: String,
    pub max_body_bytes: usize,
    pub max_pending: usize,
    pub authority: String,
    pub json_pointer: Option<String>,
    pub disagreement_thresholds: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub header: String,
    /// Header value -> arm index.
    pub values: BTreeMap<String, usize>,
}

/// A configuration that passed validation; everything the request path needs, resolved to indices.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub name: String,
    pub arms: Vec<Arm>,
    pub baseline: usize,
    pub strategy: Strategy,
    /// Present exactly when `strategy` is `bandit`.
    pub bandit: Option<Bandit>,
    pub routing_header: String,
    pub cluster_header: String,
    pub sticky: Option<Sticky>,
    pub override_: Option<Override>,
    pub response_header: Option<String>,
    pub shadow: Option<Shadow>,
    pub controller: Option<Controller>,
    pub decision_header: Option<String>,
    pub client_headers: ClientHeaders,
    pub stream: Option<Stream>,
    /// The static guard (epoch 0), until a controller's live state says otherwise.
    pub guard: Option<GuardTest>,
    /// Some arm routes by `cluster_header`: then a client's copy of that header is the filter's to
    /// replace or remove on every request (worked out once here, not per request).
    pub routes_by_cluster: bool,
}

impl Rollout {
    /// Parses and validates the JSON bytes the host hands to `on_configure`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| {
            let field = crate::jsonpath::path_at(bytes, e.line(), e.column());
            ConfigError::new(field, strip_position(&e.to_string()))
        })?;
        Self::validate(raw)
    }

    pub fn validate(raw: RawConfig) -> Result<Self, ConfigError> {
        check_name("rollout", &raw.rollout)?;
        if raw.arms.is_empty() {
            return Err(ConfigError::new("arms", "at least one arm is required"));
        }
        if raw.arms.len() > MAX_ARMS {
            return Err(ConfigError::new(
                "arms",
                format!("at most {MAX_ARMS} arms (each has its own stats and shared-data key)"),
            ));
        }
        let mut arms = Vec::with_capacity(raw.arms.len());
        for (i, arm) in raw.arms.iter().enumerate() {
            check_name(&format!("arms[{i}].name"), &arm.name)?;
            if let Some(j) = raw.arms[..i].iter().position(|a| a.name == arm.name) {
                return Err(ConfigError::new(
                    format!("arms[{i}].name"),
                    format!("duplicate arm name {:?} (also arms[{j}])", arm.name),
                ));
            }
            if !arm.weight.is_finite() || arm.weight < 0.0 {
                return Err(ConfigError::new(
                    format!("arms[{i}].weight"),
                    format!("must be a finite number >= 0, got {}", arm.weight),
                ));
            }
            if let Some(cluster) = &arm.cluster {
                if cluster.is_empty() {
                    return Err(ConfigError::new(
                        format!("arms[{i}].cluster"),
                        "must not be empty (omit it instead)",
                    ));
                }
            }
            arms.push(Arm {
                name: arm.name.clone(),
                weight: arm.weight,
                cluster: arm.cluster.clone(),
            });
        }
        if arms.iter().all(|a| a.weight == 0.0) {
            return Err(ConfigError::new(
                "arms",
                "every weight is zero: at least one arm must receive traffic",
            ));
        }
        let baseline = match &raw.baseline {
            None => 0,
            Some(name) => arm_index(&arms, name)
                .ok_or_else(|| ConfigError::new("baseline", format!("names no arm: {name:?}")))?,
        };
        check_header("routing_header", &raw.routing_header)?;
        check_header("cluster_header", &raw.cluster_header)?;
        if raw.routing_header == raw.cluster_header {
            return Err(ConfigError::new(
                "cluster_header",
                "must differ from routing_header",
            ));
        }
        if let Some(h) = &raw.response_header {
            check_header("response_header", h)?;
        }
        let bandit = match (raw.strategy, raw.bandit) {
            (Strategy::Bandit, Some(b)) => Some(validate_bandit(b, arms.len())?),
            (Strategy::Bandit, None) => {
                return Err(ConfigError::new(
                    "bandit",
                    "required when strategy is \"bandit\"",
                ))
            }
            (Strategy::Weighted, Some(_)) => {
                return Err(ConfigError::new(
                    "bandit",
                    "only applies when strategy is \"bandit\"",
                ))
            }
            (Strategy::Weighted, None) => None,
        };
        let sticky = raw
            .sticky
            .map(|s| validate_sticky(s, &raw.rollout))
            .transpose()?;
        let override_ = raw
            .override_
            .map(|o| validate_override(o, &arms))
            .transpose()?;
        if bandit
            .as_ref()
            .is_some_and(|b| b.reward == Reward::Feedback)
            && (raw.controller.is_none() || raw.decision_header.is_none())
        {
            return Err(ConfigError::new(
                "bandit.reward.source",
                "\"feedback\" needs a controller section (rewards arrive in its live state) and a decision_header (the id the application posts rewards with)",
            ));
        }
        Ok(Self {
            name: raw.rollout,
            routes_by_cluster: arms.iter().any(|a| a.cluster.is_some()),
            arms,
            baseline,
            strategy: raw.strategy,
            bandit,
            routing_header: raw.routing_header.to_ascii_lowercase(),
            cluster_header: raw.cluster_header.to_ascii_lowercase(),
            sticky,
            override_,
            response_header: raw.response_header.map(|h| h.to_ascii_lowercase()),
            shadow: raw.shadow.map(validate_shadow).transpose()?,
            controller: raw.controller.map(validate_controller).transpose()?,
            decision_header: match raw.decision_header {
                Some(h) => {
                    check_header("decision_header", &h)?;
                    Some(h.to_ascii_lowercase())
                }
                None => None,
            },
            client_headers: raw.client_headers,
            stream: raw.stream,
            guard: raw.guard.map(|g| g.test("guard")).transpose()?,
        })
    }

    pub fn weights(&self) -> Vec<f64> {
        self.arms.iter().map(|a| a.weight).collect()
    }

    pub fn arm_index(&self, name: &str) -> Option<usize> {
        arm_index(&self.arms, name)
    }
}

fn validate_controller(c: RawController) -> Result<Controller, ConfigError> {
    if c.cluster.is_empty() {
        return Err(ConfigError::new("controller.cluster", "must not be empty"));
    }
    if !(100..=60_000).contains(&c.poll_ms) {
        return Err(ConfigError::new(
            "controller.poll_ms",
            format!("must be in [100, 60000], got {}", c.poll_ms),
        ));
    }
    if let Some(name) = &c.token_env {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(ConfigError::new(
                "controller.token_env",
                format!(
                    "{name:?} is not an environment variable name (ASCII letters, digits, '_')"
                ),
            ));
        }
    }
    Ok(Controller {
        authority: c.authority.unwrap_or_else(|| c.cluster.clone()),
        cluster: c.cluster,
        poll_ms: c.poll_ms,
        token_env: c.token_env,
    })
}

fn validate_shadow(s: RawShadow) -> Result<Shadow, ConfigError> {
    if s.cluster.is_empty() {
        return Err(ConfigError::new("shadow.cluster", "must not be empty"));
    }
    if !(s.percent.is_finite() && (0.0..=100.0).contains(&s.percent)) {
        return Err(ConfigError::new(
            "shadow.percent",
            format!("must be in [0, 100], got {}", s.percent),
        ));
    }
    if s.timeout_ms == 0 {
        return Err(ConfigError::new("shadow.timeout_ms", "must be > 0"));
    }
    if s.max_pending == 0 {
        return Err(ConfigError::new("shadow.max_pending", "must be > 0"));
    }
    check_header("shadow.marker_header", &s.marker_header)?;
    let methods = s
        .methods
        .unwrap_or_else(|| ["GET", "HEAD", "OPTIONS"].map(String::from).to_vec());
    for (i, m) in methods.iter().enumerate() {
        if !is_cookie_token(m) {
            return Err(ConfigError::new(
                format!("shadow.methods[{i}]"),
                format!("{m:?} is not an HTTP method"),
            ));
        }
    }
    if let Some(p) = &s.json_pointer {
        if !(p.is_empty() || p.starts_with('/')) {
            return Err(ConfigError::new(
                "shadow.json_pointer",
                "a JSON pointer starts with '/' (RFC 6901)",
            ));
        }
    }
    if s.mode == ShadowMode::Mirror && s.json_pointer.is_some() {
        return Err(ConfigError::new(
            "shadow.json_pointer",
            "only applies to mode \"compare\"",
        ));
    }
    let thresholds = &s.disagreement_thresholds;
    if thresholds.len() > ramp_protocol::moments::MAX_THRESHOLDS
        || thresholds.iter().any(|t| !(t.is_finite() && *t > 0.0))
        || thresholds.windows(2).any(|w| w[1] <= w[0])
    {
        return Err(ConfigError::new(
            "shadow.disagreement_thresholds",
            "at most 4 absolute differences, each > 0, ascending",
        ));
    }
    if !thresholds.is_empty() && s.json_pointer.is_none() {
        return Err(ConfigError::new(
            "shadow.disagreement_thresholds",
            "needs shadow.json_pointer (the predictions to compare)",
        ));
    }
    Ok(Shadow {
        disagreement_thresholds: s.disagreement_thresholds,
        authority: s.authority.unwrap_or_else(|| s.cluster.clone()),
        cluster: s.cluster,
        mode: s.mode,
        fraction: s.percent / 100.0,
        timeout_ms: s.timeout_ms,
        methods: methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
        marker_header: s.marker_header.to_ascii_lowercase(),
        max_body_bytes: s.max_body_bytes,
        max_pending: s.max_pending,
        json_pointer: s.json_pointer,
    })
}

pub use ramp_protocol::names::MAX_ARMS;

fn validate_bandit(b: RawBandit, arms: usize) -> Result<Bandit, ConfigError> {
    if !(0.0..=1.0).contains(&b.epsilon) {
        return Err(ConfigError::new(
            "bandit.epsilon",
            format!("must be in [0, 1], got {}", b.epsilon),
        ));
    }
    if !(0.0..=1.0).contains(&b.min_share) || b.min_share * arms as f64 > 1.0 {
        return Err(ConfigError::new(
            "bandit.min_share",
            format!(
                "must be in [0, 1/arms] = [0, {:.4}], got {}",
                1.0 / arms as f64,
                b.min_share
            ),
        ));
    }
    let prior = b.prior.unwrap_or(RawPrior {
        alpha: 1.0,
        beta: 1.0,
    });
    for (field, v) in [
        ("bandit.prior.alpha", prior.alpha),
        ("bandit.prior.beta", prior.beta),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(ConfigError::new(
                field,
                format!("must be a finite number > 0, got {v}"),
            ));
        }
    }
    let thompson_only = "only applies to policies \"thompson\" and \"top_two_thompson\"";
    if b.prior.is_some() && !b.policy.is_thompson() {
        return Err(ConfigError::new("bandit.prior", thompson_only));
    }
    let top_two_beta = match set(b.top_two_beta) {
        Some(_) if b.policy != Policy::TopTwoThompson => {
            return Err(ConfigError::new(
                "bandit.top_two_beta",
                "only applies to policy \"top_two_thompson\"",
            ))
        }
        Some(v) if !(v > 0.0 && v < 1.0) => {
            return Err(ConfigError::new(
                "bandit.top_two_beta",
                format!("must be in (0, 1), got {v}"),
            ))
        }
        Some(v) => v,
        None => DEFAULT_TOP_TWO_BETA,
    };
    let discount = match set(b.discount) {
        Some(_) if !b.policy.is_thompson() => {
            return Err(ConfigError::new("bandit.discount", thompson_only))
        }
        Some(v) if !(v > 0.0 && v <= 1.0) => {
            return Err(ConfigError::new(
                "bandit.discount",
                format!("must be in (0, 1], got {v}"),
            ))
        }
        Some(v) => v,
        None => 1.0,
    };
    let r = b.reward;
    let only = |field: &str, set: bool, source: &str| {
        if set {
            Err(ConfigError::new(
                format!("bandit.reward.{field}"),
                format!("only applies to source \"{source}\""),
            ))
        } else {
            Ok(())
        }
    };
    if r.source != RewardSource::Status {
        only("success", r.success.is_some(), "status")?;
    }
    if r.source != RewardSource::Latency {
        only("threshold_ms", r.threshold_ms.is_some(), "latency")?;
    }
    if r.source != RewardSource::Header {
        only("name", r.name.is_some(), "header")?;
    }
    let reward = match (r.source, r.success) {
        (RewardSource::Status, None) => Reward::Status(vec![StatusMatch::Below500]),
        (RewardSource::Status, Some(list)) => {
            if list.is_empty() {
                return Err(ConfigError::new(
                    "bandit.reward.success",
                    "must list at least one code or class",
                ));
            }
            let mut matches = Vec::with_capacity(list.len());
            for (i, v) in list.iter().enumerate() {
                matches.push(parse_status_match(v).ok_or_else(|| {
                    ConfigError::new(
                        format!("bandit.reward.success[{i}]"),
                        format!("expected a status code (\"100\"-\"599\") or a class like \"2xx\", got {v:?}"),
                    )
                })?);
            }
            Reward::Status(matches)
        }
        (RewardSource::Latency, _) => match r.threshold_ms {
            None => {
                return Err(ConfigError::new(
                    "bandit.reward.threshold_ms",
                    "required for source \"latency\"",
                ))
            }
            Some(0) => {
                return Err(ConfigError::new(
                    "bandit.reward.threshold_ms",
                    "must be > 0",
                ))
            }
            Some(ms) => Reward::LatencyBelowMs(ms),
        },
        (RewardSource::Header, _) => {
            let name = r.name.unwrap_or_else(default_reward_header);
            check_header("bandit.reward.name", &name)?;
            Reward::Header(name.to_ascii_lowercase())
        }
        (RewardSource::Feedback, _) => Reward::Feedback,
    };
    Ok(Bandit {
        policy: b.policy,
        epsilon: b.epsilon,
        prior_alpha: prior.alpha,
        prior_beta: prior.beta,
        top_two_beta,
        discount,
        min_share: b.min_share,
        warmup: b.warmup,
        reward,
    })
}

fn parse_status_match(s: &str) -> Option<StatusMatch> {
    if let Ok(code) = s.parse::<u32>() {
        return (100..=599)
            .contains(&code)
            .then_some(StatusMatch::Code(code));
    }
    let class = s.strip_suffix("xx")?.parse::<u32>().ok()?;
    (1..=5)
        .contains(&class)
        .then_some(StatusMatch::Class(class))
}

fn arm_index(arms: &[Arm], name: &str) -> Option<usize> {
    arms.iter().position(|a| a.name == name)
}

fn validate_sticky(s: RawSticky, rollout: &str) -> Result<Sticky, ConfigError> {
    if s.name.is_empty() {
        return Err(ConfigError::new("sticky.name", "must not be empty"));
    }
    if s.source == KeySource::Header {
        check_header("sticky.name", &s.name)?;
    }
    if s.set_cookie && s.source != KeySource::Cookie {
        return Err(ConfigError::new(
            "sticky.set_cookie",
            "only works with source \"cookie\"",
        ));
    }
    if s.source == KeySource::Cookie && !is_cookie_token(&s.name) {
        return Err(ConfigError::new(
            "sticky.name",
            format!("{:?} is not a valid cookie name", s.name),
        ));
    }
    let name = if s.source == KeySource::Header {
        s.name.to_ascii_lowercase()
    } else {
        s.name
    };
    Ok(Sticky {
        source: s.source,
        name,
        salt: s.salt.unwrap_or_else(|| rollout.to_owned()),
        set_cookie: s.set_cookie,
        cookie_max_age_s: s.cookie_max_age_s,
    })
}

fn validate_override(o: RawOverride, arms: &[Arm]) -> Result<Override, ConfigError> {
    check_header("override.header", &o.header)?;
    if o.values.is_empty() {
        return Err(ConfigError::new(
            "override.values",
            "must map at least one header value to an arm",
        ));
    }
    let mut values = BTreeMap::new();
    for (value, arm) in o.values {
        let idx = arm_index(arms, &arm).ok_or_else(|| {
            ConfigError::new(
                format!("override.values.{value}"),
                format!("names no arm: {arm:?}"),
            )
        })?;
        values.insert(value, idx);
    }
    Ok(Override {
        header: o.header.to_ascii_lowercase(),
        values,
    })
}

/// Rollout and arm names become parts of Envoy stat names and header values, so they stay plain
/// (the rule is the wire protocol's, shared with rampctl's specs).
fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    ramp_protocol::names::check_name(name).map_err(|reason| ConfigError::new(field, reason))
}

fn check_header(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::new(field, "must not be empty"));
    }
    if name.starts_with(':') {
        return Err(ConfigError::new(
            field,
            "pseudo-headers cannot be used here",
        ));
    }
    if !is_cookie_token(name) {
        return Err(ConfigError::new(
            field,
            format!("{name:?} is not a valid HTTP header name"),
        ));
    }
    Ok(())
}

/// RFC 7230 `token`, which is also what RFC 6265 allows as a cookie name.
fn is_cookie_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// serde_json appends "at line L column C"; the field path already says where.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> ConfigError {
        Rollout::from_json(json.as_bytes()).unwrap_err()
    }

    const OK: &str =
        r#"{"rollout":"demo","arms":[{"name":"v1","weight":95},{"name":"v2","weight":5}]}"#;

    #[test]
    fn defaults_fill_everything_but_the_arms() {
        let r = Rollout::from_json(OK.as_bytes()).unwrap();
        assert_eq!(r.baseline, 0);
        assert_eq!(r.strategy, Strategy::Weighted);
        assert_eq!(r.routing_header, "x-ramp-arm");
        assert_eq!(r.cluster_header, "x-ramp-cluster");
        assert!(r.sticky.is_none() && r.override_.is_none() && r.response_header.is_none());
        assert_eq!(r.weights(), vec![95.0, 5.0]);
    }

    #[test]
    fn full_config_resolves_names_to_indices() {
        let r = Rollout::from_json(
            br#"{"rollout":"fraud","baseline":"v1","arms":[{"name":"v2","weight":5,"cluster":"m2"},
            {"name":"v1","weight":95,"cluster":"m1"}],
            "sticky":{"source":"cookie","name":"uid","set_cookie":true},
            "override":{"header":"Canary","values":{"true":"v2"}},"response_header":"X-Model"}"#,
        )
        .unwrap();
        assert_eq!(r.baseline, 1);
        let s = r.sticky.unwrap();
        assert_eq!(
            (s.source, s.salt.as_str(), s.set_cookie),
            (KeySource::Cookie, "fraud", true)
        );
        let o = r.override_.unwrap();
        assert_eq!(o.header, "canary");
        assert_eq!(o.values["true"], 0);
        assert_eq!(r.response_header.as_deref(), Some("x-model"));
    }

    #[test]
    fn errors_name_the_field_and_the_reason() {
        let cases: &[(&str, &str, &str)] = &[
            (
                r#"{"rollout":"d","arms":[{"name":"a","weight":-1}]}"#,
                "arms[0].weight",
                ">= 0",
            ),
            (
                r#"{"rollout":"d","arms":[{"name":"a","weight":0},{"name":"b","weight":0}]}"#,
                "arms",
                "every weight is zero",
            ),
            (
                r#"{"rollout":"d","arms":[{"name":"a","weight":1},{"name":"a","weight":1}]}"#,
                "arms[1].name",
                "duplicate",
            ),
            (
                r#"{"rollout":"d","arms":[{"name":"","weight":1}]}"#,
                "arms[0].name",
                "empty",
            ),
            (
                r#"{"rollout":"d","arms":[{"name":"a.b","weight":1}]}"#,
                "arms[0].name",
                "may only contain",
            ),
            (r#"{"rollout":"d","arms":[]}"#, "arms", "at least one"),
            (
                r#"{"rollout":"d","arms":[{"name":"a","weight":1}],"controller":{"cluster":"c","token_env":"MY TOKEN"}}"#,
                "controller.token_env",
                "not an environment variable name",
            ),
            (
                r#"{"rollout":"d","arms":[{"name":"a","weight":1}],"strategy":"bandit","bandit":{"policy":"thompson","reward":{"source":"feedback"}},"decision_header":"x-d"}"#,
                "bandit.reward.source",
                "needs a controller section",
            ),
            (
                r#"{"rollout":"d","arms":[{"name":"a","weight":"5"}]}"#,
                "arms[0].weight",
                "invalid type",
            ),
            (
                r#"{"rollout":"d","arms":[{"name":"a","weight":1,"wieght":2}]}"#,
                "arms[0].wieght",
                "unknown field",
            ),
            (
                r#"{"rollout":"d","arms":[{"name":"a","weight":1}],"colour":1}"#,
                "colour",
                "unknown field",
            ),
            (
                r#"{"arms":[{"name":"a","weight":1}]}"#,
                "(root)",
                "missing field `rollout`",
            ),
            (
                r#"{"rollout":"d","arms":[{"name":"a","weight":1}],"baseline":"z"}"#,
                "baseline",
                "names no arm",
            ),
            (
                r#"{"rollout":"d","arms":[{"name":"a","weight":1}],"override":{"header":"canary","values":{"true":"v9"}}}"#,
                "override.values.true",
                "names no arm",
            ),
            (
                r#"{"rollout":"d","arms":[{"name":"a","weight":1}],"sticky":{"source":"header","name":"x-u","set_cookie":true}}"#,
                "sticky.set_cookie",
                "cookie",
            ),
            (
                r#"{"rollout":"d","arms":[{"name":"a","weight":1}],"sticky":{"source":"ip","name":"x"}}"#,
                "sticky.source",
                "unknown variant",
            ),
            (
                r#"{"rollout":"d","arms":[{"name":"a","weight":1}],"routing_header":"bad header"}"#,
                "routing_header",
                "not a valid HTTP header",
            ),
            (
                r#"{"rollout":"d","arms":[{"name":"a","weight":1}],"strategy":"roulette"}"#,
                "strategy",
                "unknown variant",
            ),
            (r#"not json"#, "(root)", "expected"),
        ];
        for (json, field, reason) in cases {
            let e = err(json);
            assert_eq!(&e.field, field, "{json}: {e}");
            assert!(e.reason.contains(reason), "{json}: {e}");
            assert!(!e.reason.contains("line 1"), "{e}");
        }
    }

    #[test]
    fn bandit_section_is_validated() {
        let base = |b: &str| {
            format!(
                r#"{{"rollout":"b","arms":[{{"name":"a","weight":1}},{{"name":"c","weight":1}}],"strategy":"bandit"{b}}}"#
            )
        };
        let ok = Rollout::from_json(base(r#","bandit":{"policy":"thompson","warmup":10,"prior":{"alpha":2,"beta":3},"reward":{"source":"status","success":["200","3xx"]}}"#).as_bytes()).unwrap();
        let b = ok.bandit.unwrap();
        assert_eq!((b.prior_alpha, b.prior_beta, b.warmup), (2.0, 3.0, 10));
        assert_eq!(
            b.reward,
            Reward::Status(vec![StatusMatch::Code(200), StatusMatch::Class(3)])
        );
        let cases: &[(&str, &str, &str)] = &[
            ("", "bandit", "required"),
            (
                r#","bandit":{"policy":"ucb2"}"#,
                "bandit.policy",
                "unknown variant",
            ),
            (
                r#","bandit":{"policy":"epsilon_greedy","epsilon":1.5}"#,
                "bandit.epsilon",
                "[0, 1]",
            ),
            (
                r#","bandit":{"policy":"thompson","min_share":0.6}"#,
                "bandit.min_share",
                "1/arms",
            ),
            (
                r#","bandit":{"policy":"thompson","prior":{"alpha":0,"beta":1}}"#,
                "bandit.prior.alpha",
                "> 0",
            ),
            (
                r#","bandit":{"policy":"ucb1","prior":{"alpha":1,"beta":1}}"#,
                "bandit.prior",
                "thompson",
            ),
            (
                r#","bandit":{"policy":"thompson","reward":{"source":"status","success":["9xx"]}}"#,
                "bandit.reward.success[0]",
                "class",
            ),
            (
                r#","bandit":{"policy":"thompson","reward":{"source":"latency"}}"#,
                "bandit.reward.threshold_ms",
                "required",
            ),
            (
                r#","bandit":{"policy":"thompson","reward":{"source":"header","threshold_ms":5}}"#,
                "bandit.reward.threshold_ms",
                "latency",
            ),
            (
                r#","bandit":{"policy":"thompson","reward":{"source":"vibes"}}"#,
                "bandit.reward.source",
                "unknown variant",
            ),
            (
                r#","bandit":{"policy":"top_two_thompson","top_two_beta":1}"#,
                "bandit.top_two_beta",
                "(0, 1)",
            ),
            (
                r#","bandit":{"policy":"thompson","top_two_beta":0.5}"#,
                "bandit.top_two_beta",
                "top_two_thompson",
            ),
            (
                r#","bandit":{"policy":"thompson","discount":0}"#,
                "bandit.discount",
                "(0, 1]",
            ),
            (
                r#","bandit":{"policy":"kl_ucb","discount":0.99}"#,
                "bandit.discount",
                "thompson",
            ),
            (
                r#","bandit":{"policy":"kl_ucb","prior":{"alpha":1,"beta":1}}"#,
                "bandit.prior",
                "top_two_thompson",
            ),
        ];
        for (extra, field, reason) in cases {
            let e = err(&base(extra));
            assert_eq!(&e.field, field, "{extra}: {e}");
            assert!(e.reason.contains(reason), "{extra}: {e}");
        }
        let two = Rollout::from_json(base(r#","bandit":{"policy":"top_two_thompson","top_two_beta":0.3,"discount":0.999,"prior":{"alpha":2,"beta":8}}"#).as_bytes()).unwrap();
        let b = two.bandit.unwrap();
        assert_eq!(
            (b.policy, b.top_two_beta, b.discount, b.prior_alpha),
            (Policy::TopTwoThompson, 0.3, 0.999, 2.0)
        );
        let kl = Rollout::from_json(base(r#","bandit":{"policy":"kl_ucb"}"#).as_bytes()).unwrap();
        let b = kl.bandit.unwrap();
        assert_eq!(
            (b.policy, b.top_two_beta, b.discount),
            (Policy::KlUcb, 0.5, 1.0)
        );
        let weighted = err(
            r#"{"rollout":"b","arms":[{"name":"a","weight":1}],"bandit":{"policy":"thompson"}}"#,
        );
        assert_eq!(weighted.field, "bandit");
    }

    #[test]
    fn shadow_section_defaults_and_errors() {
        let r = Rollout::from_json(
            br#"{"rollout":"s","arms":[{"name":"a","weight":1}],"shadow":{"cluster":"m2"}}"#,
        )
        .unwrap();
        let s = r.shadow.unwrap();
        assert_eq!(
            (s.mode, s.fraction, s.authority.as_str()),
            (ShadowMode::Mirror, 1.0, "m2")
        );
        assert_eq!(s.methods, vec!["GET", "HEAD", "OPTIONS"]);
        for (shadow, field, reason) in [
            (
                r#"{"cluster":"m","percent":150}"#,
                "shadow.percent",
                "[0, 100]",
            ),
            (r#"{"cluster":""}"#, "shadow.cluster", "empty"),
            (
                r#"{"cluster":"m","mode":"compare","json_pointer":"/p","disagreement_thresholds":[0.1,0.01]}"#,
                "shadow.disagreement_thresholds",
                "ascending",
            ),
            (
                r#"{"cluster":"m","mode":"compare","disagreement_thresholds":[0.1]}"#,
                "shadow.disagreement_thresholds",
                "json_pointer",
            ),
            (
                r#"{"cluster":"m","methods":["PO ST"]}"#,
                "shadow.methods[0]",
                "method",
            ),
            (
                r#"{"cluster":"m","mode":"compare","json_pointer":"prediction"}"#,
                "shadow.json_pointer",
                "RFC 6901",
            ),
            (
                r#"{"cluster":"m","json_pointer":"/p"}"#,
                "shadow.json_pointer",
                "compare",
            ),
            (
                r#"{"cluster":"m","mode":"tee"}"#,
                "shadow.mode",
                "unknown variant",
            ),
        ] {
            let e = err(&format!(
                r#"{{"rollout":"s","arms":[{{"name":"a","weight":1}}],"shadow":{shadow}}}"#
            ));
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains(reason), "{e}");
        }
    }

    #[test]
    fn rewards_from_status_latency_and_header() {
        let below500 = Reward::Status(vec![StatusMatch::Below500]);
        assert_eq!(below500.from_status_and_latency(404, 9), Some(1.0));
        assert_eq!(below500.from_status_and_latency(503, 9), Some(0.0));
        let fast = Reward::LatencyBelowMs(100);
        assert_eq!(fast.from_status_and_latency(200, 100), Some(1.0));
        assert_eq!(fast.from_status_and_latency(200, 101), Some(0.0));
        assert_eq!(fast.from_status_and_latency(500, 1), Some(0.0));
        assert_eq!(
            Reward::Header("x".into()).from_status_and_latency(200, 1),
            None
        );
        assert_eq!(Reward::parse_header_value(b" 0.25 "), 0.25);
        for bad in [&b"1.5"[..], b"-0.1", b"NaN", b"", b"\xff", b"one"] {
            assert_eq!(Reward::parse_header_value(bad), 0.0);
        }
    }

    #[test]
    fn display_is_one_line_for_logs() {
        let e = err(r#"{"rollout":"d","arms":[{"name":"a","weight":-1}]}"#);
        assert_eq!(
            e.to_string(),
            "invalid ramp config: arms[0].weight: must be a finite number >= 0, got -1"
        );
    }
}
