//! From the filters' reports to the windows the rules judge. Each Envoy reports cumulative per-arm
//! totals under its instance id; the controller keeps the newest report per instance, sums them
//! (one Envoy or many give the same totals), and a stage's window is the totals now minus the
//! totals when the stage began.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use ramp_protocol::moments::ShadowMoments;

use crate::histogram::Histogram;
use crate::spec::custom::ArmMeasurements;
use crate::spec::Price;

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
    /// Streamed responses (the filters' `stream`), cumulative.
    #[serde(default, skip_serializing_if = "StreamTotals::is_empty")]
    pub stream: StreamTotals,
    /// The arm's price per 1,000 tokens at this check (`attach_prices`), from the spec; never
    /// stored.
    #[serde(skip)]
    pub price: Option<Price>,
}

/// An arm's streamed responses, cumulative: counts, and three histograms on the latency bounds
/// (`ramp_protocol::report::latency_le`), cumulative counts per bound: time to first byte, to end
/// of stream, per output token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamTotals {
    pub responses: u64,
    pub token_responses: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub ttft: Vec<u64>,
    pub duration: Vec<u64>,
    pub tpot: Vec<u64>,
}

impl StreamTotals {
    pub fn is_empty(&self) -> bool {
        self == &StreamTotals::default()
    }

    fn add(&mut self, o: &StreamTotals) {
        self.responses = self.responses.saturating_add(o.responses);
        self.token_responses = self.token_responses.saturating_add(o.token_responses);
        self.prompt_tokens = self.prompt_tokens.saturating_add(o.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(o.completion_tokens);
        add_each(&mut self.ttft, &o.ttft);
        add_each(&mut self.duration, &o.duration);
        add_each(&mut self.tpot, &o.tpot);
    }

    fn since(&self, base: &StreamTotals) -> StreamWindow {
        let hist = |now: &[u64], base: &[u64]| {
            let (n, b) = (stream_histogram(now), stream_histogram(base));
            n.since(&b).unwrap_or(n)
        };
        StreamWindow {
            responses: self.responses.saturating_sub(base.responses),
            token_responses: self.token_responses.saturating_sub(base.token_responses),
            prompt_tokens: self.prompt_tokens.saturating_sub(base.prompt_tokens),
            completion_tokens: self
                .completion_tokens
                .saturating_sub(base.completion_tokens),
            ttft: hist(&self.ttft, &base.ttft),
            duration: hist(&self.duration, &base.duration),
            tpot: hist(&self.tpot, &base.tpot),
        }
    }
}

/// Cumulative counts on the filters' latency bounds as a histogram (empty without counts).
fn stream_histogram(counts: &[u64]) -> Histogram {
    if counts.is_empty() {
        return Histogram::default();
    }
    Histogram {
        buckets: ramp_protocol::report::latency_le()
            .into_iter()
            .map(|l| l.0)
            .zip(counts.iter().copied())
            .collect(),
    }
}

/// An arm's streamed responses over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamWindow {
    pub responses: u64,
    pub token_responses: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Time to first body byte (ms).
    pub ttft: Histogram,
    /// Time to end of stream (ms).
    pub duration: Histogram,
    /// Time per output token after the first (ms), per response with two tokens or more.
    pub tpot: Histogram,
}

/// Each arm's price from the spec, for this check's `cost_per_1k_requests`.
pub fn attach_prices(totals: &mut Totals, prices: &BTreeMap<String, Price>) {
    for (arm, p) in prices {
        totals.entry(arm.clone()).or_default().price = Some(*p);
    }
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
    /// Streamed responses (the filters' `stream`).
    pub stream: StreamWindow,
    /// The arm's price per 1,000 tokens, from the spec.
    pub price: Option<Price>,
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
        stream: arm
            .stream
            .as_ref()
            .map_or_else(StreamTotals::default, |s| StreamTotals {
                responses: s.responses,
                token_responses: s.token_responses,
                prompt_tokens: s.prompt_tokens,
                completion_tokens: s.completion_tokens,
                ttft: s.ttft_ms.counts.clone(),
                duration: s.duration_ms.counts.clone(),
                tpot: s.tpot_ms.counts.clone(),
            }),
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
            acc.stream.add(&t.stream);
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
        stream: n.stream.since(&b.stream),
        price: n.price,
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
    fn streamed_figures_add_up_over_instances_and_windows_subtract_them() {
        let le = ramp_protocol::report::latency_le();
        let streamed = |instance: &str, n: u64| -> Report {
            let at = |i: usize| {
                (0..le.len())
                    .map(|j| if j >= i { n } else { 0 })
                    .collect::<Vec<_>>()
            };
            serde_json::from_value(serde_json::json!({
                "instance": instance, "seq": 1,
                "arms": {"v2": {"requests": n, "responses": {"2xx": n},
                    "latency_ms": {"le": le, "counts": at(10)},
                    "stream": {"responses": n, "ttft_ms": {"le": le, "counts": at(20)},
                        "duration_ms": {"le": le, "counts": at(30)}, "tpot_ms": {"le": le, "counts": at(12)},
                        "token_responses": n, "prompt_tokens": 3 * n, "completion_tokens": 10 * n}}}
            }))
            .unwrap()
        };
        let now = sum_reports(&[streamed("a", 30), streamed("b", 20)]);
        assert_eq!(now["v2"].stream.completion_tokens, 500);
        let base = sum_reports(&[streamed("a", 10)]);
        let w = window(&now, &base, "v2");
        assert_eq!((w.stream.responses, w.stream.prompt_tokens), (40, 120));
        assert_eq!(w.stream.ttft.count(), 40);
        // Bounds 0.1..0.9, 1..9, 10..90: index 20 is 30 ms.
        assert_eq!(w.stream.ttft.quantile(1.0), Some(30.0));
        let stored: Totals = serde_json::from_str(&serde_json::to_string(&now).unwrap()).unwrap();
        assert_eq!(stored, now, "the stream figures survive the store");
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
