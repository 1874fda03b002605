//! From the filters' reports to the windows the rules judge. Each Envoy reports cumulative per-arm
//! totals under its instance id; the controller keeps the newest report per instance, sums them
//! (one Envoy or many give the same totals), and a stage's window is the totals now minus the
//! totals when the stage began.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use ramp_protocol::moments::ShadowMoments;

use crate::histogram::Histogram;
use crate::spec::custom::ArmMeasurements;

/// One arm's cumulative figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmTotals {
    pub requests: u64,
    pub errors: u64,
    /// Responses Envoy made itself: requests routed to the arm that its model never answered.
    #[serde(default)]
    pub local_replies: u64,
    /// Latency bucket bounds (ms; the last is infinite) and cumulative counts.
    #[serde(with = "bounds")]
    pub le: Vec<f64>,
    pub counts: Vec<u64>,
    /// Ground truth reported for this arm's predictions, and how many were right.
    #[serde(default)]
    pub labelled: u64,
    #[serde(default)]
    pub correct: u64,
    /// Delayed rewards posted for this arm's decisions, summed in millionths.
    #[serde(default)]
    pub reward_micros: u64,
    /// Shadow comparisons of copies mirrored to this arm.
    #[serde(default)]
    pub shadow: ShadowFigures,
    /// Per analysis bucket (sticky filters only): requests, 5xx, posted rewards in millionths.
    #[serde(default)]
    pub buckets: BucketCounts,
    /// The custom rules' figures at this check (`custom_verdict::attach`): point values that each
    /// window takes as they are; never stored, as no later check needs them.
    #[serde(skip)]
    pub custom: ArmMeasurements,
}

/// Counts per analysis bucket: `BUCKETS` each, or all empty when the filters report none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BucketCounts {
    pub requests: Vec<u64>,
    pub errors: Vec<u64>,
    pub reward_micros: Vec<u64>,
    /// The pre-period (an `ab_test`'s 0% stage, when the filters count each user under the arm
    /// the experiment will give them): requests, 5xx and rewards per bucket, CUPED's covariate.
    /// Totals are cumulative over the rollout's life; a check scopes them to the current
    /// pre-period (`check::scope_pre_period`) and windows take them from there as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_requests: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_errors: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_reward_micros: Vec<u64>,
}

/// One arm's figures over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArmWindow {
    pub requests: u64,
    /// Responses that were 5xx.
    pub errors: u64,
    /// Responses Envoy made itself (the model never answered): the sample-ratio check counts the
    /// requests that reached the model.
    pub local_replies: u64,
    /// Latency in milliseconds.
    pub latency: Histogram,
    /// Predictions with reported ground truth, and how many were right.
    pub labelled: u64,
    pub correct: u64,
    /// Delayed rewards (conversions) posted for the arm's decisions, in millionths.
    pub reward_micros: u64,
    /// Copies of live requests mirrored to this arm and compared with the primary's answers.
    pub shadow: ShadowFigures,
    /// The same counts per analysis bucket, when the filters' assignment is sticky.
    pub buckets: BucketCounts,
    /// The custom rules' figures at this check, by rule name: point values from the team's own
    /// source, the same in every window.
    pub custom: ArmMeasurements,
}

/// Shadow comparison counts (filter compare mode), cumulative or over a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowFigures {
    /// Copies whose answer was paired with the primary's.
    pub pairs: u64,
    /// Of those, the shadow model itself answered 5xx.
    pub failed: u64,
    /// Of those, no answer came from the model: Envoy timed the copy out or could not connect.
    /// Not the model's error, so not in `shadow_error_rate`; shown so a dead shadow is visible.
    #[serde(default)]
    pub unreachable: u64,
    /// Pairs where both answers had a value to compare, and how many of those agreed.
    pub labelled: u64,
    pub agree: u64,
    /// The exact sums of the numeric prediction pairs (compare mode with a JSON pointer).
    #[serde(default)]
    pub moments: ShadowMoments,
}

/// `acc + add`, elementwise, saturating; an empty side counts as zeros.
fn add_each(acc: &mut Vec<u64>, add: &[u64]) {
    if acc.len() < add.len() {
        acc.resize(add.len(), 0);
    }
    for (a, b) in acc.iter_mut().zip(add) {
        *a = a.saturating_add(*b);
    }
}

/// `now - base`, elementwise, saturating; an empty base counts as zeros.
fn since_each(now: &[u64], base: &[u64]) -> Vec<u64> {
    now.iter()
        .enumerate()
        .map(|(i, n)| n.saturating_sub(base.get(i).copied().unwrap_or(0)))
        .collect()
}

impl BucketCounts {
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Only the pre-period counts (a CUPED base).
    pub fn pre_only(&self) -> BucketCounts {
        BucketCounts {
            pre_requests: self.pre_requests.clone(),
            pre_errors: self.pre_errors.clone(),
            pre_reward_micros: self.pre_reward_micros.clone(),
            ..BucketCounts::default()
        }
    }

    /// The pre-period counts since `base`'s, or none.
    pub fn scope_pre_period(&mut self, base: Option<&BucketCounts>) {
        match base {
            Some(b) => {
                self.pre_requests = since_each(&self.pre_requests, &b.pre_requests);
                self.pre_errors = since_each(&self.pre_errors, &b.pre_errors);
                self.pre_reward_micros = since_each(&self.pre_reward_micros, &b.pre_reward_micros);
            }
            None => {
                self.pre_requests.clear();
                self.pre_errors.clear();
                self.pre_reward_micros.clear();
            }
        }
    }

    fn since(&self, base: &BucketCounts) -> BucketCounts {
        BucketCounts {
            requests: since_each(&self.requests, &base.requests),
            errors: since_each(&self.errors, &base.errors),
            reward_micros: since_each(&self.reward_micros, &base.reward_micros),
            pre_requests: self.pre_requests.clone(),
            pre_errors: self.pre_errors.clone(),
            pre_reward_micros: self.pre_reward_micros.clone(),
        }
    }
}

pub type Totals = BTreeMap<String, ArmTotals>;

/// JSON has no infinity (serde_json writes `null` and will not read it back as a number): store the
/// +Inf bound as `null` on purpose, and read `null` back as +Inf.
mod bounds {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(le: &[f64], s: S) -> Result<S::Ok, S::Error> {
        le.iter()
            .map(|b| b.is_finite().then_some(*b))
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<Option<f64>>::deserialize(d)?
            .into_iter()
            .map(|b| b.unwrap_or(f64::INFINITY))
            .collect())
    }
}

pub use ramp_protocol::report::{ArmReport as ReportedArm, BanditCounts, Report};

/// The shadow comparisons of every instance's newest report (sums saturate at u64::MAX; reports
/// are validated to at most 2^53 each, so that takes over 2,048 reporters at the limit).
pub fn sum_shadow<'a>(reports: impl IntoIterator<Item = &'a Report>) -> ShadowFigures {
    let mut out = ShadowFigures::default();
    for r in reports {
        if let Some(m) = &r.shadow_moments {
            out.moments.add(m);
        }
        let Some(s) = r.shadow.as_ref() else {
            continue;
        };
        let get = |k: &str| s.get(k).copied().unwrap_or(0);
        out.pairs = out.pairs.saturating_add(get("pairs"));
        out.failed = out.failed.saturating_add(get("shadow_errors"));
        out.unreachable = out
            .unreachable
            .saturating_add(get("shadow_timeouts").saturating_add(get("shadow_refused")));
        out.labelled = out.labelled.saturating_add(get("labelled_pairs"));
        out.agree = out.agree.saturating_add(get("label_agree"));
    }
    out
}

/// One arm's report as totals.
fn arm_totals(arm: &ReportedArm) -> ArmTotals {
    ArmTotals {
        requests: arm.requests,
        errors: arm.responses.get("5xx").copied().unwrap_or(0),
        local_replies: arm.local_replies,
        buckets: arm
            .buckets
            .as_ref()
            .map_or_else(BucketCounts::default, |b| BucketCounts {
                requests: b.requests.clone(),
                errors: b.errors.clone(),
                pre_requests: b.pre_requests.clone(),
                pre_errors: b.pre_errors.clone(),
                ..BucketCounts::default()
            }),
        le: arm.latency_ms.le.iter().map(|l| l.0).collect(),
        counts: arm.latency_ms.counts.clone(),
        ..ArmTotals::default()
    }
}

/// Sums the newest report of every instance. Sums saturate at u64::MAX instead of wrapping: each
/// report is validated to at most 2^53 per counter, so a sum saturates only past 2,048 reporters
/// all at that limit, and then it stays at the ceiling rather than turning small.
pub fn sum_reports<'a>(reports: impl IntoIterator<Item = &'a Report>) -> Totals {
    let mut out = Totals::new();
    for r in reports {
        for (arm, figures) in &r.arms {
            let t = arm_totals(figures);
            let acc = out.entry(arm.clone()).or_default();
            acc.requests = acc.requests.saturating_add(t.requests);
            acc.errors = acc.errors.saturating_add(t.errors);
            acc.local_replies = acc.local_replies.saturating_add(t.local_replies);
            add_each(&mut acc.buckets.requests, &t.buckets.requests);
            add_each(&mut acc.buckets.errors, &t.buckets.errors);
            add_each(&mut acc.buckets.pre_requests, &t.buckets.pre_requests);
            add_each(&mut acc.buckets.pre_errors, &t.buckets.pre_errors);
            if acc.le.is_empty() {
                acc.le = t.le;
                acc.counts = t.counts;
            } else if acc.le == t.le {
                for (a, b) in acc.counts.iter_mut().zip(&t.counts) {
                    *a = a.saturating_add(*b);
                }
            }
        }
    }
    out
}

/// The window of one arm: `now` minus `base` (the totals when the stage began).
pub fn window(now: &Totals, base: &Totals, arm: &str) -> ArmWindow {
    let zero = ArmTotals::default();
    let (n, b) = (
        now.get(arm).unwrap_or(&zero),
        base.get(arm).unwrap_or(&zero),
    );
    let hist = |t: &ArmTotals| Histogram {
        buckets: t.le.iter().copied().zip(t.counts.iter().copied()).collect(),
    };
    ArmWindow {
        requests: n.requests.saturating_sub(b.requests),
        errors: n.errors.saturating_sub(b.errors),
        local_replies: n.local_replies.saturating_sub(b.local_replies),
        buckets: n.buckets.since(&b.buckets),
        latency: hist(n).since(&hist(b)).unwrap_or_else(|| hist(n)),
        labelled: n.labelled.saturating_sub(b.labelled),
        correct: n.correct.saturating_sub(b.correct),
        reward_micros: n.reward_micros.saturating_sub(b.reward_micros),
        shadow: n.shadow.since(&b.shadow),
        custom: n.custom.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(instance: &str, v2_requests: u64, v2_errors: u64) -> Report {
        serde_json::from_value(serde_json::json!({
            "instance": instance, "seq": 1,
            "arms": {"v2": {"requests": v2_requests, "responses": {"2xx": v2_requests - v2_errors, "5xx": v2_errors},
                             "latency_ms": {"le": [100, "+Inf"], "counts": [v2_requests, v2_requests]}}}
        }))
        .unwrap()
    }

    #[test]
    fn instances_add_up_and_windows_subtract_the_stage_start() {
        let now = sum_reports(&[report("a", 300, 30), report("b", 200, 10)]);
        assert_eq!(
            (
                now["v2"].requests,
                now["v2"].errors,
                now["v2"].counts.clone()
            ),
            (500, 40, vec![500, 500])
        );
        let base = sum_reports(&[report("a", 100, 0)]);
        let w = window(&now, &base, "v2");
        assert_eq!((w.requests, w.errors, w.latency.count()), (400, 40, 400));
        assert_eq!(window(&now, &base, "v9"), ArmWindow::default());
        let stored: Totals = serde_json::from_str(&serde_json::to_string(&now).unwrap()).unwrap();
        assert_eq!(stored, now, "+Inf bounds survive the store");
    }

    #[test]
    fn shadow_comparisons_of_every_instance_add_up() {
        let with_shadow = |instance: &str, pairs: u64, agree: u64| -> Report {
            serde_json::from_value(serde_json::json!({
                "instance": instance, "seq": 1, "arms": {},
                "shadow": {"sent": pairs + 1, "pairs": pairs, "shadow_errors": 1, "shadow_timeouts": 2, "shadow_refused": 1,
                           "labelled_pairs": pairs - 3, "label_agree": agree, "mirrored": 0}
            }))
            .unwrap()
        };
        let total = sum_shadow(&[
            with_shadow("a", 100, 90),
            with_shadow("b", 50, 40),
            report("c", 1, 0),
        ]);
        assert_eq!(
            total,
            ShadowFigures {
                pairs: 150,
                failed: 2,
                unreachable: 6,
                labelled: 144,
                agree: 130,
                moments: Default::default(),
            }
        );
    }
}
