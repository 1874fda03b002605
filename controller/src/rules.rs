//! Whether a candidate passes a stage's rules over a window: absolute bounds on its own figures, or
//! bounds relative to the baseline arm over the same window, each with a minimum sample size below
//! which the rule neither passes nor fails.

use ramp_protocol::moments::ShadowMoments;

use crate::histogram::Histogram;
use crate::ranktest::candidate_slower;
use crate::shadowstats::{equivalence_reach, shadow_stats};
use crate::spec::{Bound, Metric, Rule};

/// The guide's promotion criterion keeps "no significant difference" at this level.
pub const GUIDE_T_TEST_P: f64 = 0.05;

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
    pub buckets: crate::window::BucketCounts,
}

/// Shadow comparison counts (filter compare mode), cumulative or over a window.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
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

impl ShadowFigures {
    pub fn since(&self, base: &ShadowFigures) -> ShadowFigures {
        ShadowFigures {
            // A restarted source (counts went down): this window is everything it has now.
            moments: self
                .moments
                .since(&base.moments)
                .unwrap_or_else(|| self.moments.clone()),
            pairs: self.pairs.saturating_sub(base.pairs),
            failed: self.failed.saturating_sub(base.failed),
            unreachable: self.unreachable.saturating_sub(base.unreachable),
            labelled: self.labelled.saturating_sub(base.labelled),
            agree: self.agree.saturating_sub(base.agree),
        }
    }
}

impl ArmWindow {
    /// How many samples the metric rests on in this window.
    pub fn samples(&self, metric: Metric) -> u64 {
        self.value(metric).1
    }

    /// The metric's value and the samples it rests on.
    fn value(&self, metric: Metric) -> (Option<f64>, u64) {
        match metric {
            Metric::ErrorRate => (
                (self.requests > 0).then(|| self.errors as f64 / self.requests as f64),
                self.requests,
            ),
            Metric::Accuracy => (
                (self.labelled > 0).then(|| self.correct as f64 / self.labelled as f64),
                self.labelled,
            ),
            // Judged against the baseline in `evaluate`; its samples are the requests.
            Metric::ErrorRateVsBaseline => (None, self.requests),
            Metric::ShadowAgreement => (
                (self.shadow.labelled > 0)
                    .then(|| self.shadow.agree as f64 / self.shadow.labelled as f64),
                self.shadow.labelled,
            ),
            Metric::ShadowErrorRate => {
                // Over the copies the model answered: a timeout or a refused connection is
                // Envoy's reply, not the model's error (issue 11).
                let answered = self.shadow.pairs.saturating_sub(self.shadow.unreachable);
                (
                    (answered > 0).then(|| self.shadow.failed as f64 / answered as f64),
                    answered,
                )
            }
            Metric::ShadowCorrelation
            | Metric::ShadowMeanDiff
            | Metric::ShadowEquivalent
            | Metric::ShadowGuide => {
                let stats = shadow_stats(&self.shadow.moments);
                let value = stats.as_ref().and_then(|s| match metric {
                    Metric::ShadowCorrelation | Metric::ShadowGuide => s.correlation,
                    Metric::ShadowMeanDiff => Some(s.mean_diff.abs()),
                    _ => equivalence_reach(s),
                });
                (value, self.shadow.moments.n)
            }
            m => (
                m.percentile().and_then(|q| self.latency.quantile(q)),
                self.latency.count(),
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass {
        value: f64,
    },
    Fail {
        value: f64,
        reason: String,
    },
    /// Too few samples (candidate, or baseline for a relative bound) to judge.
    NotEnoughData {
        samples: u64,
        needed: u64,
    },
}

pub fn evaluate(rule: &Rule, candidate: &ArmWindow, baseline: &ArmWindow) -> Verdict {
    if rule.metric == Metric::LatencySlower {
        return latency_slower(rule, candidate, baseline);
    }
    if rule.metric == Metric::ErrorRateVsBaseline {
        return error_rate_vs_baseline(rule, candidate, baseline);
    }
    let (value, samples) = candidate.value(rule.metric);
    let Some(value) = value.filter(|_| samples >= rule.min_samples) else {
        return Verdict::NotEnoughData {
            samples,
            needed: rule.min_samples,
        };
    };
    let name = metric_name(rule.metric);
    let fail = |reason: String| Verdict::Fail { value, reason };
    if rule.metric == Metric::ShadowGuide {
        // The guide's recommendation: correlation above the bound and a paired t-test that finds
        // no significant difference.
        let p = shadow_stats(&candidate.shadow.moments).and_then(|s| s.t_p);
        if let Some(p) = p.filter(|&p| p <= GUIDE_T_TEST_P) {
            return fail(format!(
                "paired t-test finds a difference (p = {p:.3e} <= {GUIDE_T_TEST_P})"
            ));
        }
    }
    match rule.bound {
        Bound::Max(max) if value > max => fail(format!("{name} {value:.4} > max {max}")),
        Bound::Min(min) if value < min => fail(format!("{name} {value:.4} < min {min}")),
        Bound::WorseThanBaseline(allowed) => {
            let (base, base_samples) = baseline.value(rule.metric);
            let Some(base) = base.filter(|_| base_samples >= rule.min_samples) else {
                return Verdict::NotEnoughData {
                    samples: base_samples,
                    needed: rule.min_samples,
                };
            };
            let worse_by = if rule.metric.higher_is_worse() {
                value - base
            } else {
                base - value
            };
            if worse_by > allowed {
                fail(format!("{name} {value:.4} is {worse_by:.4} worse than baseline {base:.4} (allowed {allowed})"))
            } else {
                Verdict::Pass { value }
            }
        }
        _ => Verdict::Pass { value },
    }
}

/// Confidence of the sequence behind `error_rate_vs_baseline`.
pub const ERROR_EXCESS_CONFIDENCE: f64 = 0.95;
/// Its mixture sd: an excess of one point of error rate.
pub const ERROR_EXCESS_MIXTURE_SD: f64 = 0.01;

/// `error_rate_vs_baseline`: fails when the candidate's error rate exceeds the baseline's by more
/// than `max` with 95% confidence, by the mSPRT's confidence sequence (valid at every check).
fn error_rate_vs_baseline(rule: &Rule, candidate: &ArmWindow, baseline: &ArmWindow) -> Verdict {
    let fewest = candidate.requests.min(baseline.requests);
    let result = crate::units::estimates(baseline, candidate, crate::units::Outcome::Error)
        .and_then(|(b, c)| {
            crate::sequential::msprt_estimates(
                b,
                c,
                1.0 - ERROR_EXCESS_CONFIDENCE,
                ERROR_EXCESS_MIXTURE_SD,
            )
        });
    if fewest < rule.min_samples {
        return Verdict::NotEnoughData {
            samples: fewest,
            needed: rule.min_samples,
        };
    }
    // No errors on either arm (no variation): no excess to see.
    let Some(r) = result else {
        return Verdict::Pass { value: 0.0 };
    };
    let value = r.difference;
    match rule.bound {
        Bound::Max(max) if r.interval.0 > max => Verdict::Fail {
            value,
            reason: format!(
                "error rate {:.4} vs baseline {:.4}: the excess is above {max} with 95% confidence (always-valid interval [{:.4}, {:.4}])",
                r.candidate_rate, r.baseline_rate, r.interval.0, r.interval.1
            ),
        },
        _ => Verdict::Pass { value },
    }
}

/// Level of the Mann-Whitney test behind `latency_slower`.
pub const LATENCY_SLOWER_ALPHA: f64 = 0.01;

/// `latency_slower`: the candidate's latency distribution against the baseline's, same window.
fn latency_slower(rule: &Rule, candidate: &ArmWindow, baseline: &ArmWindow) -> Verdict {
    let fewest = candidate.latency.count().min(baseline.latency.count());
    let result = candidate_slower(&candidate.latency, &baseline.latency);
    let Some(r) = result.filter(|_| fewest >= rule.min_samples) else {
        return Verdict::NotEnoughData {
            samples: fewest,
            needed: rule.min_samples,
        };
    };
    let value = r.probability_slower;
    match rule.bound {
        Bound::Max(max) if value > max && r.p_value < LATENCY_SLOWER_ALPHA => Verdict::Fail {
            value,
            reason: format!(
                "candidate slower than baseline: P(a candidate request is slower) {value:.3} > max {max}, Mann-Whitney p = {:.1e}",
                r.p_value
            ),
        },
        _ => Verdict::Pass { value },
    }
}

fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::ErrorRate => "error rate",
        Metric::LatencyP50 => "P50 latency (ms)",
        Metric::LatencyP95 => "P95 latency (ms)",
        Metric::LatencyP99 => "P99 latency (ms)",
        Metric::LatencySlower => "P(candidate request slower)",
        Metric::ErrorRateVsBaseline => "error rate minus the baseline's",
        Metric::Accuracy => "accuracy",
        Metric::ShadowAgreement => "shadow agreement",
        Metric::ShadowErrorRate => "shadow error rate",
        Metric::ShadowCorrelation => "shadow correlation",
        Metric::ShadowMeanDiff => "shadow |mean difference|",
        Metric::ShadowEquivalent => "shadow 90% interval of the mean difference reaches",
        Metric::ShadowGuide => "shadow correlation (guide preset)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paired(pairs: impl Iterator<Item = (f64, f64)>) -> ArmWindow {
        let mut m = ShadowMoments::default();
        for (x, y) in pairs {
            m.add_pair(x, y);
        }
        ArmWindow {
            shadow: ShadowFigures {
                moments: m,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn shadow_comparison_rules_judge_the_predictions() {
        let xs = || (0..200).map(|i| 0.2 + (i % 50) as f64 / 100.0);
        // 5% higher: correlated, but not the same model.
        let scaled = paired(xs().map(|x| (x, x * 1.05)));
        // The same model up to a tiny alternating wobble.
        let same = paired(
            xs().enumerate()
                .map(|(i, x)| (x, x + if i % 2 == 0 { 0.001 } else { -0.001 })),
        );
        let check = |metric, bound, w: &ArmWindow| {
            matches!(
                evaluate(&rule(metric, bound), w, &ArmWindow::default()),
                Verdict::Pass { .. }
            )
        };
        assert!(!check(Metric::ShadowEquivalent, Bound::Max(0.01), &scaled));
        assert!(check(Metric::ShadowEquivalent, Bound::Max(0.01), &same));
        assert!(check(Metric::ShadowCorrelation, Bound::Min(0.95), &scaled));
        assert!(!check(Metric::ShadowMeanDiff, Bound::Max(0.01), &scaled));
        assert!(check(Metric::ShadowMeanDiff, Bound::Max(0.01), &same));
        // The guide's preset: correlated, but the t-test sees the 5% bias, so it does not pass...
        assert!(!check(Metric::ShadowGuide, Bound::Min(0.95), &scaled));
        // ...and passes the wobble, as it should.
        assert!(check(Metric::ShadowGuide, Bound::Min(0.95), &same));
        let few = paired(xs().take(3).map(|x| (x, x)));
        assert!(matches!(
            evaluate(
                &rule(Metric::ShadowEquivalent, Bound::Max(0.01)),
                &few,
                &ArmWindow::default()
            ),
            Verdict::NotEnoughData { samples: 3, .. }
        ));
    }

    #[test]
    fn error_rate_vs_baseline_needs_confidence_not_a_point_estimate() {
        let r = rule(Metric::ErrorRateVsBaseline, Bound::Max(0.01));
        let arm = |requests, errors| ArmWindow {
            requests,
            errors,
            ..Default::default()
        };
        // 3% vs 1% over 200 each: the point estimate is 0.02 above, but the interval is wide.
        assert!(matches!(
            evaluate(&r, &arm(200, 6), &arm(200, 2)),
            Verdict::Pass { .. }
        ));
        // The same rates over 20,000 each: the excess is surely above 0.01.
        assert!(matches!(
            evaluate(&r, &arm(20_000, 600), &arm(20_000, 200)),
            Verdict::Fail { ref reason, .. } if reason.contains("95% confidence")
        ));
        assert!(matches!(
            evaluate(&r, &arm(50, 50), &arm(50, 0)),
            Verdict::NotEnoughData { .. }
        ));
        assert_eq!(
            evaluate(&r, &arm(500, 0), &arm(500, 0)),
            Verdict::Pass { value: 0.0 }
        );
    }

    #[test]
    fn latency_slower_compares_the_distributions() {
        let lat = |per_bucket: &[u64]| ArmWindow {
            latency: Histogram::from_bucket_counts(per_bucket),
            ..Default::default()
        };
        let r = rule(Metric::LatencySlower, Bound::Max(0.55));
        // Slower by one bucket for most requests: P(slower) 0.68, p = 0.00037 (ranktest's scipy
        // reference), but too few samples for this rule's 100.
        let slower = lat(&[3, 10, 25, 12, 5]);
        let base = lat(&[8, 20, 15, 6, 1]);
        assert!(matches!(
            evaluate(&r, &slower, &base),
            Verdict::NotEnoughData { samples: 50, .. }
        ));
        let many = |w: &[u64]| lat(&w.iter().map(|c| c * 10).collect::<Vec<_>>());
        assert!(matches!(
            evaluate(&r, &many(&[3, 10, 25, 12, 5]), &many(&[8, 20, 15, 6, 1])),
            Verdict::Fail { ref reason, .. } if reason.contains("Mann-Whitney")
        ));
        // The same distribution: passes, P(slower) 0.5.
        assert_eq!(
            evaluate(&r, &many(&[8, 20, 15, 6, 1]), &many(&[8, 20, 15, 6, 1])),
            Verdict::Pass { value: 0.5 }
        );
    }

    #[test]
    fn the_shadow_error_rate_is_over_the_copies_the_model_answered() {
        let w = |pairs, failed, unreachable| ArmWindow {
            shadow: ShadowFigures {
                pairs,
                failed,
                unreachable,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            w(100, 5, 50).value(Metric::ShadowErrorRate),
            (Some(0.1), 50)
        );
        assert_eq!(
            w(100, 0, 100).value(Metric::ShadowErrorRate),
            (None, 0),
            "a shadow nobody reached has no error rate, and no samples to pass a stage on"
        );
    }

    fn rule(metric: Metric, bound: Bound) -> Rule {
        Rule {
            metric,
            bound,
            min_samples: 100,
            dry_run: false,
            on_fail: crate::spec::OnFail::Rollback,
        }
    }

    fn arm(requests: u64, errors: u64) -> ArmWindow {
        ArmWindow {
            requests,
            errors,
            ..Default::default()
        }
    }

    #[test]
    fn absolute_error_rate() {
        let r = rule(Metric::ErrorRate, Bound::Max(0.02));
        assert_eq!(
            evaluate(&r, &arm(1000, 20), &arm(0, 0)),
            Verdict::Pass { value: 0.02 }
        );
        assert!(matches!(
            evaluate(&r, &arm(1000, 21), &arm(0, 0)),
            Verdict::Fail { .. }
        ));
        assert_eq!(
            evaluate(&r, &arm(99, 99), &arm(0, 0)),
            Verdict::NotEnoughData {
                samples: 99,
                needed: 100
            }
        );
    }

    #[test]
    fn relative_bounds_compare_with_the_baseline() {
        let r = rule(Metric::ErrorRate, Bound::WorseThanBaseline(0.01));
        assert!(
            matches!(
                evaluate(&r, &arm(1000, 25), &arm(10_000, 160)),
                Verdict::Pass { .. }
            ),
            "2.5% vs 1.6%"
        );
        assert!(
            matches!(
                evaluate(&r, &arm(1000, 30), &arm(10_000, 160)),
                Verdict::Fail { .. }
            ),
            "3.0% vs 1.6%"
        );
        assert!(matches!(
            evaluate(&r, &arm(1000, 30), &arm(50, 0)),
            Verdict::NotEnoughData { .. }
        ));
        let acc = rule(Metric::Accuracy, Bound::WorseThanBaseline(0.03));
        let with = |labelled, correct| ArmWindow {
            labelled,
            correct,
            ..Default::default()
        };
        assert!(
            matches!(
                evaluate(&acc, &with(200, 180), &with(1000, 920)),
                Verdict::Pass { .. }
            ),
            "0.90 vs 0.92"
        );
        let Verdict::Fail { reason, .. } = evaluate(&acc, &with(200, 170), &with(1000, 920)) else {
            panic!()
        };
        assert!(
            reason.contains("0.0700 worse than baseline 0.9200"),
            "{reason}"
        );
    }

    #[test]
    fn latency_percentiles_from_histograms() {
        let r = rule(Metric::LatencyP95, Bound::Max(150.0));
        let latency = Histogram {
            buckets: vec![(100.0, 90), (250.0, 100), (f64::INFINITY, 100)],
        };
        // rank 95 is 5 of 10 into (100, 250]: 175 ms.
        let w = ArmWindow {
            latency,
            ..Default::default()
        };
        assert_eq!(
            evaluate(&r, &w, &ArmWindow::default()),
            Verdict::Fail {
                value: 175.0,
                reason: "P95 latency (ms) 175.0000 > max 150".into()
            }
        );
    }
}
