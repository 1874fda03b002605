//! What an Envoy posts to `POST /v1/rollouts/<rollout>/reports`: its cumulative per-arm counts
//! under an instance id and a sequence number (so a lost report is made up by the next and a
//! repeated one changes nothing). The filter writes this JSON by hand to stay small; these types
//! read it, and `validate` is the controller's check at the edge: every counter bounded and
//! consistent, so sums over the fleet cannot overflow or be steered by one bad reporter.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::moments::ShadowMoments;
use crate::names::check_instance;
use crate::stream::{validate_histogram, StreamReport};
use crate::FieldError;

/// Upper bounds of the latency buckets in microseconds; a last, unbounded bucket follows.
/// Log-linear (1 to 9 in every decade) from 0.1 ms to 60 s: a sub-millisecond model and a long
/// LLM call are both resolved to within one step of their decade. Reports and Envoy's own
/// counters (`metrics::latency_bucket_names` in the filter) use exactly these bounds, so both
/// sources give the same percentile.
pub const LATENCY_BOUNDS_US: [u64; 51] = latency_bounds();

const fn latency_bounds() -> [u64; 51] {
    let mut out = [0u64; 51];
    let mut i = 0;
    let mut decade = 100;
    while i < 51 {
        let step = (i % 9) as u64 + 1;
        out[i] = step * decade;
        if step == 9 {
            decade *= 10;
        }
        i += 1;
    }
    out
}

/// A bound as reports and stat names write it, in milliseconds: `0.1`, `2`, `60000`.
pub fn bound_ms_text(us: u64) -> String {
    let (ms, frac) = (us / 1000, us % 1000);
    if frac == 0 {
        ms.to_string()
    } else {
        format!("{ms}.{}", format!("{frac:03}").trim_end_matches('0'))
    }
}

/// The `le` list every report's latency carries: the bounds in ms, then `+Inf`.
pub fn latency_le() -> Vec<Le> {
    LATENCY_BOUNDS_US
        .iter()
        .map(|&b| Le(bound_ms(b)))
        .chain([Le(f64::INFINITY)])
        .collect()
}

/// A bound in milliseconds, as a report's `le` carries it.
pub fn bound_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The shadow compare-mode totals a report may carry, in the filter's order.
pub const SHADOW_TOTAL_NAMES: [&str; 24] = [
    "sent",
    "pairs",
    "status_agree",
    "value_pairs",
    "label_agree",
    "diff_pos_micros",
    "diff_neg_micros",
    "diff_sq_micros",
    "shadow_errors",
    "shadow_timeouts",
    "skipped_body",
    "dropped",
    "unpaired",
    "mirrored",
    "labelled_pairs",
    "shadow_refused",
    "sum_x_pos_micros",
    "sum_x_neg_micros",
    "sum_y_pos_micros",
    "sum_y_neg_micros",
    "sum_xx_micros",
    "sum_yy_micros",
    "sum_xy_pos_micros",
    "sum_xy_neg_micros",
];

/// Largest count a report may carry: 2^53. No Envoy counts that far (285 years at a million
/// requests a second), the value is exact as a JSON number everywhere, and sums over 2,048
/// reporters still fit in a u64 (the controller saturates beyond that rather than wrap).
pub const MAX_COUNT: u64 = 1 << 53;

/// Largest sequence number: it is stored as SQLite's signed 64-bit integer.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// The response classes a report counts.
pub const RESPONSE_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub instance: String,
    pub seq: u64,
    pub arms: BTreeMap<String, ArmReport>,
    /// Shadow compare-mode totals (`SHADOW_TOTAL_NAMES`), when compare mode is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<BTreeMap<String, u64>>,
    /// The sums of the numeric prediction pairs, when compare mode has a JSON pointer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_moments: Option<ShadowMoments>,
    /// The arms this Envoy's guard cut off in the guard's current epoch (sent at once on a trip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardReport>,
}

/// What a filter's guard did: in `epoch` (the live state's), the arms it sent to the baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardReport {
    pub epoch: u64,
    pub tripped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmReport {
    pub requests: u64,
    /// Responses Envoy made itself rather than the model (no `x-envoy-upstream-service-time`:
    /// no route, no healthy upstream, a timeout, a fault injected, a rate limit): requests routed
    /// to the arm that its model never answered. Absent in older filters' reports.
    #[serde(default)]
    pub local_replies: u64,
    /// By class, `2xx` to `5xx`.
    pub responses: BTreeMap<String, u64>,
    pub latency_ms: Latency,
    /// Per analysis bucket (the user's bucket when assignment is sticky), requests and 5xx
    /// responses, when the filter's assignment is sticky: the units of the user-level analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Buckets>,
    /// This Envoy's bandit totals for the arm, when the filter runs a bandit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandit: Option<BanditCounts>,
    /// Streamed responses' timings and tokens, when the filter's config has `stream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamReport>,
}

/// Analysis buckets per arm: a sticky key's bucket is a hash of the key (independent of its
/// arm), so users, not requests, are spread over them.
pub const BUCKETS: usize = 64;

/// One arm's counts per analysis bucket, `BUCKETS` each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Buckets {
    pub requests: Vec<u64>,
    pub errors: Vec<u64>,
    /// In an A/B test's pre-period (the live state's `pre_weights`), requests and 5xx of the
    /// users the experiment will give this arm, served meanwhile by the baseline: the covariate
    /// of CUPED. Not part of this arm's totals. Absent outside a pre-period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_requests: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_errors: Vec<u64>,
}

/// Cumulative latency buckets as Prometheus lays them out: `le` bounds in ms, the last `"+Inf"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    pub le: Vec<Le>,
    pub counts: Vec<u64>,
}

/// One bucket bound: a number, or the string `"+Inf"` (JSON has no infinity).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Le(pub f64);

impl Serialize for Le {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_finite() && self.0.fract() == 0.0 && self.0.abs() < 1e15 {
            // Whole bounds as integers, as the filter writes them (`60000`, not `60000.0`).
            s.serialize_i64(self.0 as i64)
        } else if self.0.is_finite() {
            s.serialize_f64(self.0)
        } else {
            s.serialize_str("+Inf")
        }
    }
}

impl<'de> Deserialize<'de> for Le {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(v) if v.is_finite() => Ok(Le(v)),
            Raw::Text(t) if t == "+Inf" => Ok(Le(f64::INFINITY)),
            _ => Err(serde::de::Error::custom(
                "a bucket bound is a finite number or \"+Inf\"",
            )),
        }
    }
}

/// A bandit's trials and summed rewards (millionths, so sums are exact in any order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanditCounts {
    pub trials: u64,
    pub reward_micros: u64,
}

/// Rewards are in [0, 1]; counted in millionths.
pub const REWARD_SCALE: f64 = 1_000_000.0;

impl BanditCounts {
    pub fn add_trial(&mut self, reward: f64) {
        self.trials = self.trials.saturating_add(1);
        let micros = (reward.clamp(0.0, 1.0) * REWARD_SCALE).round() as u64;
        self.reward_micros = self.reward_micros.saturating_add(micros);
    }

    /// The summed reward as a number.
    pub fn reward(&self) -> f64 {
        self.reward_micros as f64 / REWARD_SCALE
    }

    pub fn is_zero(&self) -> bool {
        self.trials == 0 && self.reward_micros == 0
    }

    /// Both counts added, saturating at u64::MAX rather than wrapping.
    pub fn saturating_add(self, other: BanditCounts) -> BanditCounts {
        BanditCounts {
            trials: self.trials.saturating_add(other.trials),
            reward_micros: self.reward_micros.saturating_add(other.reward_micros),
        }
    }
}

pub(crate) fn bounded(field: impl Into<String>, v: u64) -> Result<u64, FieldError> {
    if v > MAX_COUNT {
        Err(FieldError::new(
            field,
            format!("{v} is above the largest count a report may carry (2^53)"),
        ))
    } else {
        Ok(v)
    }
}

impl Report {
    /// Checks everything the controller relies on, against the rollout's `arms`. The first
    /// problem found names its field.
    pub fn validate(&self, arms: &[&str]) -> Result<(), FieldError> {
        check_instance(&self.instance).map_err(|r| FieldError::new("instance", r))?;
        if self.seq > MAX_SEQ {
            return Err(FieldError::new(
                "seq",
                format!(
                    "{} is above the largest sequence number, 2^63 - 1",
                    self.seq
                ),
            ));
        }
        for (name, arm) in &self.arms {
            if !arms.contains(&name.as_str()) {
                let shown: String = name.chars().take(64).collect();
                return Err(FieldError::new(
                    format!("arms.{shown}"),
                    format!("not an arm of this rollout ({})", arms.join(", ")),
                ));
            }
            arm.validate(&format!("arms.{name}"))?;
        }
        if let Some(shadow) = &self.shadow {
            validate_shadow(shadow)?;
        }
        if let Some(m) = &self.shadow_moments {
            m.validate()?;
        }
        if let Some(g) = &self.guard {
            if g.tripped.len() > arms.len() {
                return Err(FieldError::new(
                    "guard.tripped",
                    format!(
                        "{} arms named; the rollout has {}",
                        g.tripped.len(),
                        arms.len()
                    ),
                ));
            }
            for (i, name) in g.tripped.iter().enumerate() {
                if !arms.contains(&name.as_str()) {
                    return Err(FieldError::new(
                        format!("guard.tripped[{i}]"),
                        format!("not an arm of this rollout ({})", arms.join(", ")),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl ArmReport {
    fn validate(&self, at: &str) -> Result<(), FieldError> {
        let requests = bounded(format!("{at}.requests"), self.requests)?;
        let mut answered: u64 = 0;
        for (class, &n) in &self.responses {
            if !RESPONSE_CLASSES.contains(&class.as_str()) {
                let shown: String = class.chars().take(16).collect();
                return Err(FieldError::new(
                    format!("{at}.responses.{shown}"),
                    "response classes are 2xx, 3xx, 4xx and 5xx",
                ));
            }
            answered = answered.saturating_add(bounded(format!("{at}.responses.{class}"), n)?);
        }
        if answered > requests {
            return Err(FieldError::new(
                format!("{at}.responses"),
                format!("{answered} responses for {requests} requests"),
            ));
        }
        if let Some(b) = &self.buckets {
            for (name, counts, total) in [
                ("requests", &b.requests, requests),
                (
                    "errors",
                    &b.errors,
                    self.responses.get("5xx").copied().unwrap_or(0),
                ),
            ] {
                let field = format!("{at}.buckets.{name}");
                if counts.len() != BUCKETS {
                    return Err(FieldError::new(
                        field,
                        format!("{} buckets, not {BUCKETS}", counts.len()),
                    ));
                }
                let mut sum: u64 = 0;
                for &c in counts.iter() {
                    sum = sum.saturating_add(bounded(field.clone(), c)?);
                }
                if sum > total {
                    return Err(FieldError::new(
                        field,
                        format!("{sum} in the buckets, {total} in the arm's total"),
                    ));
                }
            }
            validate_pre_period(b, at)?;
        }
        let local = bounded(format!("{at}.local_replies"), self.local_replies)?;
        if local > answered {
            return Err(FieldError::new(
                format!("{at}.local_replies"),
                format!("{local} local replies among {answered} responses"),
            ));
        }
        validate_histogram(&self.latency_ms, &format!("{at}.latency_ms"), answered)?;
        if let Some(stream) = &self.stream {
            stream.validate(&format!("{at}.stream"), answered)?;
        }
        if let Some(b) = self.bandit {
            let trials = bounded(format!("{at}.bandit.trials"), b.trials)?;
            if b.reward_micros > trials.saturating_mul(1_000_000) {
                return Err(FieldError::new(
                    format!("{at}.bandit.reward_micros"),
                    format!(
                        "{} is more than one reward (10^6) per trial ({trials} trials)",
                        b.reward_micros
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The pre-period counts: both or neither, `BUCKETS` each, bounded, no more 5xx than requests in
/// a bucket. They are not the arm's own requests, so no total bounds them.
fn validate_pre_period(b: &Buckets, at: &str) -> Result<(), FieldError> {
    if b.pre_requests.is_empty() && b.pre_errors.is_empty() {
        return Ok(());
    }
    for (name, counts) in [
        ("pre_requests", &b.pre_requests),
        ("pre_errors", &b.pre_errors),
    ] {
        if counts.len() != BUCKETS {
            return Err(FieldError::new(
                format!("{at}.buckets.{name}"),
                format!("{} buckets, not {BUCKETS}", counts.len()),
            ));
        }
    }
    for (j, (&n, &e)) in b.pre_requests.iter().zip(&b.pre_errors).enumerate() {
        let n = bounded(format!("{at}.buckets.pre_requests[{j}]"), n)?;
        if bounded(format!("{at}.buckets.pre_errors[{j}]"), e)? > n {
            return Err(FieldError::new(
                format!("{at}.buckets.pre_errors[{j}]"),
                format!("{e} errors for {n} requests"),
            ));
        }
    }
    Ok(())
}

fn validate_shadow(shadow: &BTreeMap<String, u64>) -> Result<(), FieldError> {
    for (name, &v) in shadow {
        if !SHADOW_TOTAL_NAMES.contains(&name.as_str()) {
            let shown: String = name.chars().take(32).collect();
            return Err(FieldError::new(
                format!("shadow.{shown}"),
                "not a shadow total the filter reports",
            ));
        }
        // Sums of differences and predictions (micros) may grow large; counts of copies may not.
        if !(name.starts_with("diff_") || name.starts_with("sum_")) {
            bounded(format!("shadow.{name}"), v)?;
        }
    }
    let get = |k: &str| shadow.get(k).copied().unwrap_or(0);
    let checks = [
        (
            "shadow.shadow_errors",
            get("shadow_errors")
                .saturating_add(get("shadow_timeouts"))
                .saturating_add(get("shadow_refused")),
            "pairs",
            get("pairs"),
        ),
        (
            "shadow.labelled_pairs",
            get("labelled_pairs"),
            "pairs",
            get("pairs"),
        ),
        (
            "shadow.label_agree",
            get("label_agree"),
            "labelled_pairs",
            get("labelled_pairs"),
        ),
    ];
    for (field, v, of, limit) in checks {
        if v > limit {
            return Err(FieldError::new(
                field,
                format!("{v} is more than {of} ({limit})"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        // As the filter's `report_json` writes it (the filter's own test checks it writes this).
        let le: Vec<String> = LATENCY_BOUNDS_US
            .iter()
            .map(|&b| bound_ms_text(b))
            .chain(["\"+Inf\"".to_owned()])
            .collect();
        let counts: Vec<String> = (0..=LATENCY_BOUNDS_US.len())
            .map(|i| (i / 5).min(10).to_string())
            .collect();
        format!(
            r#"{{"instance":"00ab","seq":17,"arms":{{"v2":{{"requests":10,"responses":{{"2xx":8,"3xx":0,"4xx":0,"5xx":2}},"latency_ms":{{"le":[{}],"counts":[{}]}},"bandit":{{"trials":10,"reward_micros":4000000}}}}}},"shadow":{{"sent":3,"pairs":3,"labelled_pairs":2,"label_agree":1}}}}"#,
            le.join(","),
            counts.join(",")
        )
    }

    #[test]
    fn a_hostile_guard_in_a_report_is_refused_by_field() {
        let with = |guard: &str| {
            let text = format!(r#"{{"instance":"e1","seq":1,"arms":{{}},"guard":{guard}}}"#);
            serde_json::from_str::<Report>(&text).map(|r| r.validate(&["v1", "v2"]))
        };
        let field = |guard: &str| with(guard).unwrap().unwrap_err().field;
        assert_eq!(with(r#"{"epoch":3,"tripped":["v2"]}"#).unwrap(), Ok(()));
        assert_eq!(field(r#"{"epoch":3,"tripped":["v9"]}"#), "guard.tripped[0]");
        assert_eq!(
            field(r#"{"epoch":3,"tripped":["v1","v2","v2"]}"#),
            "guard.tripped"
        );
        assert!(with(r#"{"epoch":-1,"tripped":[]}"#).is_err(), "wrong type");
        assert!(
            with(r#"{"epoch":3,"tripped":[],"x":1}"#).is_err(),
            "unknown field"
        );
    }

    #[test]
    fn bounds_are_log_linear_from_a_tenth_of_a_millisecond_to_a_minute() {
        assert_eq!(&LATENCY_BOUNDS_US[..3], &[100, 200, 300]);
        assert_eq!(&LATENCY_BOUNDS_US[8..11], &[900, 1000, 2000]);
        assert_eq!(LATENCY_BOUNDS_US[50], 60_000_000);
        assert!(LATENCY_BOUNDS_US.windows(2).all(|w| w[0] < w[1]));
        let texts: Vec<String> = [100, 250, 1000, 1500, 60_000_000]
            .iter()
            .map(|&b| bound_ms_text(b))
            .collect();
        assert_eq!(texts, ["0.1", "0.25", "1", "1.5", "60000"]);
        for &b in &LATENCY_BOUNDS_US {
            assert_eq!(bound_ms_text(b).parse::<f64>().unwrap(), bound_ms(b));
        }
    }

    #[test]
    fn bandit_counts_add_rewards_in_millionths() {
        let mut c = BanditCounts::default();
        c.add_trial(0.25);
        c.add_trial(7.0);
        c.add_trial(f64::NAN);
        assert_eq!((c.trials, c.reward_micros), (3, 1_250_000));
        assert!((c.reward() - 1.25).abs() < 1e-12);
        assert!(!c.is_zero() && BanditCounts::default().is_zero());
    }

    fn parsed(text: &str) -> Report {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_report_as_the_filter_writes_it_round_trips_and_validates() {
        let r = parsed(&sample());
        assert_eq!(r.validate(&["v1", "v2"]), Ok(()));
        assert_eq!(r.arms["v2"].latency_ms.le[51], Le(f64::INFINITY));
        let again: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }

    fn refused(edit: impl Fn(&mut serde_json::Value)) -> FieldError {
        let mut v: serde_json::Value = serde_json::from_str(&sample()).unwrap();
        edit(&mut v);
        let r: Report = serde_json::from_value(v).unwrap();
        r.validate(&["v1", "v2"]).unwrap_err()
    }

    /// The pre-period counts are not the arm's own, so no total bounds them; but they come in
    /// pairs of 64, bounded, with no more 5xx than requests in a bucket.
    #[test]
    fn pre_period_counts_are_checked_by_name() {
        let with_pre = |pre_requests: serde_json::Value, pre_errors: serde_json::Value| {
            move |v: &mut serde_json::Value| {
                v["arms"]["v2"]["buckets"] = serde_json::json!({
                    "requests": vec![0; BUCKETS], "errors": vec![0; BUCKETS],
                    "pre_requests": pre_requests.clone(), "pre_errors": pre_errors.clone()});
            }
        };
        let mut ok: serde_json::Value = serde_json::from_str(&sample()).unwrap();
        with_pre(vec![500u64; BUCKETS].into(), vec![3u64; BUCKETS].into())(&mut ok);
        let r: Report = serde_json::from_value(ok).unwrap();
        assert_eq!(
            r.validate(&["v1", "v2"]),
            Ok(()),
            "more than the arm's own requests"
        );
        let f = |e: FieldError| e.field;
        assert_eq!(
            f(refused(with_pre(
                vec![1u64; 3].into(),
                vec![0u64; 3].into()
            ))),
            "arms.v2.buckets.pre_requests"
        );
        assert_eq!(
            f(refused(with_pre(
                vec![1u64; BUCKETS].into(),
                serde_json::json!([])
            ))),
            "arms.v2.buckets.pre_errors"
        );
        let mut errors = vec![0u64; BUCKETS];
        errors[9] = 2;
        assert_eq!(
            f(refused(with_pre(vec![1u64; BUCKETS].into(), errors.into()))),
            "arms.v2.buckets.pre_errors[9]"
        );
        let mut huge = vec![0u64; BUCKETS];
        huge[0] = u64::MAX;
        assert_eq!(
            f(refused(with_pre(huge.into(), vec![0u64; BUCKETS].into()))),
            "arms.v2.buckets.pre_requests[0]"
        );
    }

    #[test]
    fn every_inconsistent_or_oversized_counter_is_refused_by_name() {
        let f = |e: FieldError| e.field;
        assert_eq!(f(refused(|v| v["instance"] = "".into())), "instance");
        assert_eq!(
            f(refused(|v| v["instance"] = "x".repeat(10_000).into())),
            "instance"
        );
        assert_eq!(f(refused(|v| v["seq"] = u64::MAX.into())), "seq");
        assert_eq!(
            f(refused(|v| v["arms"]["v9"] = v["arms"]["v2"].clone())),
            "arms.v9"
        );
        assert_eq!(
            f(refused(|v| v["arms"]["v2"]["requests"] = u64::MAX.into())),
            "arms.v2.requests"
        );
        assert_eq!(
            f(refused(|v| v["arms"]["v2"]["responses"]["5xx"] = 20.into())),
            "arms.v2.responses"
        );
        assert_eq!(
            f(refused(|v| v["arms"]["v2"]["responses"]["6xx"] = 0.into())),
            "arms.v2.responses.6xx"
        );
        assert_eq!(
            f(refused(
                |v| v["arms"]["v2"]["latency_ms"]["le"][0] = 1.into()
            )),
            "arms.v2.latency_ms.le"
        );
        assert_eq!(
            f(refused(
                |v| v["arms"]["v2"]["latency_ms"]["counts"][0] = 5.into()
            )),
            "arms.v2.latency_ms.counts"
        );
        assert_eq!(
            f(refused(
                |v| v["arms"]["v2"]["bandit"]["reward_micros"] = 11_000_000.into()
            )),
            "arms.v2.bandit.reward_micros"
        );
        assert_eq!(
            f(refused(
                |v| v["arms"]["v2"]["bandit"]["trials"] = (MAX_COUNT + 1).into()
            )),
            "arms.v2.bandit.trials"
        );
        assert_eq!(
            f(refused(|v| v["shadow"]["label_agree"] = 5.into())),
            "shadow.label_agree"
        );
        assert_eq!(
            f(refused(|v| v["shadow"]["bogus"] = 0.into())),
            "shadow.bogus"
        );
    }

    #[test]
    fn unknown_fields_and_bad_bounds_do_not_parse() {
        let extra = sample().replacen("{\"instance\"", "{\"junk\":[1,2],\"instance\"", 1);
        assert!(serde_json::from_str::<Report>(&extra).is_err());
        let inf = sample().replace("\"+Inf\"", "\"inf\"");
        assert!(serde_json::from_str::<Report>(&inf).is_err());
    }
}
