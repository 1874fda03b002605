//! Whether a candidate passes a stage's rules over a window: absolute bounds on its own figures, or
//! bounds relative to the baseline arm over the same window, each with a minimum sample size below
//! which the rule neither passes nor fails.

use crate::abtest::Proportion;
use crate::guardrail::{self, GUARDRAIL_ALPHA};
use crate::histogram::Histogram;
use crate::ranktest::candidate_slower;
use crate::sequential::RateEstimate;
use crate::shadowstats::{equivalence_reach, shadow_stats};
use crate::spec::{Bound, Metric, Rule};
// The windows are `window`'s; named here too, where rules have always found them.
pub use crate::window::{ArmWindow, ShadowFigures};

pub mod custom;

/// The guide's promotion criterion keeps "no significant difference" at this level.
pub const GUIDE_T_TEST_P: f64 = 0.05;

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
            // A point value per rule (`custom::evaluate`), with no sample size.
            Metric::Custom => (None, 0),
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
            Metric::TokensPerRequest => {
                let s = &self.stream;
                (
                    (s.token_responses > 0)
                        .then(|| s.completion_tokens as f64 / s.token_responses as f64),
                    s.responses,
                )
            }
            Metric::CostPer1kRequests => {
                let s = &self.stream;
                let cost = self.price.filter(|_| s.token_responses > 0).map(|p| {
                    (s.prompt_tokens as f64 * p.prompt + s.completion_tokens as f64 * p.completion)
                        / s.token_responses as f64
                });
                (cost, s.responses)
            }
            Metric::TtftSlower => (None, self.stream.responses),
            m => (
                m.percentile().and_then(|q| self.histogram(m).quantile(q)),
                if m.is_stream() {
                    self.stream.responses
                } else {
                    self.latency.count()
                },
            ),
        }
    }

    /// The histogram a percentile or rank rule reads: latency, or a streamed response's time to
    /// first token, per output token or to its end.
    pub fn histogram(&self, metric: Metric) -> &Histogram {
        match metric {
            Metric::TtftP95 | Metric::TtftP99 | Metric::TtftSlower => &self.stream.ttft,
            Metric::TpotP95 => &self.stream.tpot,
            Metric::DurationP95 => &self.stream.duration,
            _ => &self.latency,
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

/// One window a rule is judged on, and the level it is judged at there.
#[derive(Debug, Clone, PartialEq)]
pub struct Look {
    pub candidate: ArmWindow,
    pub baseline: ArmWindow,
    pub alpha: f64,
}

/// A rule's verdict over the windows a check looks at (`check::rule_looks`; the first is
/// the whole stage): it fails if it fails on any of them at that window's level, else it is what
/// the first says (passing, or waiting for `min_samples`).
pub fn judge(rule: &Rule, looks: &[Look]) -> Verdict {
    let mut verdicts = looks
        .iter()
        .map(|l| evaluate_at(rule, &l.candidate, &l.baseline, l.alpha));
    let Some(first) = verdicts.next() else {
        return Verdict::NotEnoughData {
            samples: 0,
            needed: rule.min_samples,
        };
    };
    if matches!(first, Verdict::Fail { .. }) {
        return first;
    }
    verdicts
        .find(|v| matches!(v, Verdict::Fail { .. }))
        .unwrap_or(first)
}

/// A rule's verdict on one window at the stage's level (`guardrail::GUARDRAIL_ALPHA`): what
/// status shows for the windows it lists.
pub fn evaluate(rule: &Rule, candidate: &ArmWindow, baseline: &ArmWindow) -> Verdict {
    evaluate_at(rule, candidate, baseline, GUARDRAIL_ALPHA)
}

/// A rule's verdict on one window, failing only when a confidence sequence at level 1 - `alpha`
/// lies beyond the bound (`guardrail`), so the chance of a false failure over every look at the
/// window's start is at most alpha. The shadow comparisons of numeric predictions (correlation,
/// mean difference, equivalence, the guide's preset) keep their own tests (`shadowstats`).
pub fn evaluate_at(
    rule: &Rule,
    candidate: &ArmWindow,
    baseline: &ArmWindow,
    alpha: f64,
) -> Verdict {
    if let Some(custom) = &rule.custom {
        return self::custom::evaluate(rule, custom, candidate, baseline);
    }
    match rule.metric {
        Metric::LatencySlower | Metric::TtftSlower => {
            latency_slower(rule, candidate, baseline, alpha)
        }
        // Means of per-response figures the filters report as sums only: no variance to build
        // a confidence sequence on, so judged as points over the window (as custom figures are).
        Metric::TokensPerRequest | Metric::CostPer1kRequests => {
            point_verdict(rule, candidate, baseline)
        }
        Metric::ErrorRateVsBaseline => error_rate_vs_baseline(rule, candidate, baseline, alpha),
        Metric::ShadowCorrelation
        | Metric::ShadowMeanDiff
        | Metric::ShadowEquivalent
        | Metric::ShadowGuide => point_verdict(rule, candidate, baseline),
        m if m.percentile().is_some() => latency_quantile(rule, candidate, baseline, alpha),
        _ => rate_rule(rule, candidate, baseline, alpha),
    }
}

/// A rate metric's estimate over a window (per user bucket for sticky filters' error rates) and
/// the trials it rests on.
fn rate_estimate(w: &ArmWindow, metric: Metric) -> Option<(RateEstimate, u64)> {
    let plain = |successes: u64, trials: u64| {
        RateEstimate::per_request(Proportion {
            successes: successes as f64,
            trials,
        })
        .map(|e| (guardrail::floored(e, trials), trials))
    };
    match metric {
        Metric::ErrorRate if crate::units::bucketed(w) => {
            let errors: Vec<f64> = w.buckets.errors.iter().map(|&e| e as f64).collect();
            RateEstimate::per_bucket(&errors, &w.buckets.requests)
                .map(|e| (guardrail::floored(e, w.requests), w.requests))
        }
        Metric::ErrorRate => plain(w.errors, w.requests),
        Metric::Accuracy => plain(w.correct, w.labelled),
        Metric::ShadowAgreement => plain(w.shadow.agree, w.shadow.labelled),
        Metric::ShadowErrorRate => plain(
            w.shadow.failed,
            w.shadow.pairs.saturating_sub(w.shadow.unreachable),
        ),
        _ => None,
    }
}

/// Rates against an absolute bound (the confidence sequence beyond it) or the baseline's (the
/// sequence for the difference beyond the allowed margin: a non-inferiority test).
fn rate_rule(rule: &Rule, candidate: &ArmWindow, baseline: &ArmWindow, alpha: f64) -> Verdict {
    let name = metric_name(rule.metric);
    let samples = candidate.samples(rule.metric);
    let estimate = rate_estimate(candidate, rule.metric).filter(|_| samples >= rule.min_samples);
    let Some((c, _)) = estimate else {
        return Verdict::NotEnoughData {
            samples,
            needed: rule.min_samples,
        };
    };
    let value = c.rate;
    let shown = |(lo, hi): (f64, f64)| format!("[{lo:.4}, {hi:.4}]");
    match rule.bound {
        Bound::Max(max) | Bound::Min(max) => {
            let is_max = matches!(rule.bound, Bound::Max(_));
            let Some(interval) = guardrail::rate_interval(c, alpha) else {
                return Verdict::Pass { value };
            };
            let beyond = if is_max {
                interval.0 > max
            } else {
                interval.1 < max
            };
            if beyond {
                let (word, side) = if is_max { (">", "max") } else { ("<", "min") };
                Verdict::Fail {
                    value,
                    reason: format!(
                        "{name} {value:.4} {word} {side} {max} with confidence (always-valid interval {}, alpha {alpha:.2e})",
                        shown(interval)
                    ),
                }
            } else {
                Verdict::Pass { value }
            }
        }
        // Relative shares are for `metric: custom` only (the spec refuses them elsewhere).
        Bound::MaxIncrease(_) | Bound::MaxDecrease(_) => Verdict::Pass { value },
        Bound::WorseThanBaseline(allowed) => {
            let base_samples = baseline.samples(rule.metric);
            let base =
                rate_estimate(baseline, rule.metric).filter(|_| base_samples >= rule.min_samples);
            let Some((b, _)) = base else {
                return Verdict::NotEnoughData {
                    samples: base_samples,
                    needed: rule.min_samples,
                };
            };
            let worse_by = if rule.metric.higher_is_worse() {
                c.rate - b.rate
            } else {
                b.rate - c.rate
            };
            let half = guardrail::half_width(c.variance + b.variance, alpha);
            match half {
                Some(half) if worse_by - half > allowed => Verdict::Fail {
                    value,
                    reason: format!(
                        "{name} {value:.4} is {worse_by:.4} worse than baseline {:.4}, more than {allowed} with confidence (always-valid interval {}, alpha {alpha:.2e})",
                        b.rate,
                        shown((worse_by - half, worse_by + half))
                    ),
                },
                _ => Verdict::Pass { value },
            }
        }
    }
}

/// Latency percentiles: the candidate's percentile is above the bound (or above the baseline's
/// by more than the margin) when their time-uniform bounds say so, each at half the level.
fn latency_quantile(
    rule: &Rule,
    candidate: &ArmWindow,
    baseline: &ArmWindow,
    alpha: f64,
) -> Verdict {
    let name = metric_name(rule.metric);
    let (c_hist, b_hist) = (
        candidate.histogram(rule.metric),
        baseline.histogram(rule.metric),
    );
    let samples = c_hist.count();
    let (Some(p), Some(value)) = (
        rule.metric.percentile(),
        candidate
            .value(rule.metric)
            .0
            .filter(|_| samples >= rule.min_samples),
    ) else {
        return Verdict::NotEnoughData {
            samples,
            needed: rule.min_samples,
        };
    };
    let t_min = rule.min_samples.max(32);
    let fail = |reason: String| Verdict::Fail { value, reason };
    match rule.bound {
        Bound::Max(max) => {
            let (above, _) = guardrail::quantile_bounds(c_hist, p, alpha, t_min);
            if above >= max {
                return fail(format!(
                    "{name} {value:.1} > max {max} with confidence (more than {:.0}% of responses slower than {above} ms, time-uniform DKW bound, alpha {alpha:.2e})",
                    (1.0 - p) * 100.0
                ));
            }
            Verdict::Pass { value }
        }
        Bound::Min(min) => {
            let (_, below) = guardrail::quantile_bounds(c_hist, p, alpha, t_min);
            if below < min {
                return fail(format!(
                    "{name} {value:.1} < min {min} with confidence (at or below {below} ms, time-uniform DKW bound, alpha {alpha:.2e})"
                ));
            }
            Verdict::Pass { value }
        }
        Bound::MaxIncrease(_) | Bound::MaxDecrease(_) => Verdict::Pass { value },
        Bound::WorseThanBaseline(allowed) => {
            let base_samples = b_hist.count();
            let Some(base) = baseline
                .value(rule.metric)
                .0
                .filter(|_| base_samples >= rule.min_samples)
            else {
                return Verdict::NotEnoughData {
                    samples: base_samples,
                    needed: rule.min_samples,
                };
            };
            let (c_above, _) = guardrail::quantile_bounds(c_hist, p, alpha / 2.0, t_min);
            let (_, b_below) = guardrail::quantile_bounds(b_hist, p, alpha / 2.0, t_min);
            if c_above - b_below >= allowed {
                return fail(format!(
                    "{name} {value:.1} vs baseline {base:.1}: worse by more than {allowed} with confidence (candidate's above {c_above} ms, baseline's at most {b_below} ms, time-uniform DKW bounds, alpha {alpha:.2e})"
                ));
            }
            Verdict::Pass { value }
        }
    }
}

/// How rampctl judged a rule before issue 24, the point estimate of each check's window against
/// the bound (and a fixed-horizon test for `latency_slower`): kept for the numeric shadow
/// comparisons, whose tests are their own, and for `make sim`'s comparison of the two.
pub fn point_verdict(rule: &Rule, candidate: &ArmWindow, baseline: &ArmWindow) -> Verdict {
    if matches!(rule.metric, Metric::LatencySlower | Metric::TtftSlower) {
        return latency_slower_fixed(rule, candidate, baseline);
    }
    if rule.metric == Metric::ErrorRateVsBaseline {
        return error_rate_vs_baseline(rule, candidate, baseline, 1.0 - ERROR_EXCESS_CONFIDENCE);
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
/// than `max` with confidence 1 - `alpha`, by the mSPRT's confidence sequence (valid at every
/// check).
fn error_rate_vs_baseline(
    rule: &Rule,
    candidate: &ArmWindow,
    baseline: &ArmWindow,
    alpha: f64,
) -> Verdict {
    let fewest = candidate.requests.min(baseline.requests);
    let floor = |w: &ArmWindow, e: RateEstimate| guardrail::floored(e, w.requests);
    let result =
        crate::units::compare(baseline, candidate, crate::units::Outcome::Error).and_then(|cmp| {
            let (b, c) = (
                floor(baseline, cmp.baseline),
                floor(candidate, cmp.candidate),
            );
            // CUPED may take the variance down to the per-request binomial one at the Laplace
            // estimates (the floor), not below: a guardrail stays conservative with few errors.
            let adjusted = cmp.adjusted.map(|a| crate::cuped::Adjusted {
                variance: a.variance.max(
                    guardrail::laplace_variance(b.rate, baseline.requests)
                        + guardrail::laplace_variance(c.rate, candidate.requests),
                ),
                ..a
            });
            crate::sequential::msprt_compared(
                crate::sequential::Comparison {
                    baseline: b,
                    candidate: c,
                    adjusted,
                },
                alpha,
                ERROR_EXCESS_MIXTURE_SD,
            )
        });
    if fewest < rule.min_samples {
        return Verdict::NotEnoughData {
            samples: fewest,
            needed: rule.min_samples,
        };
    }
    let Some(r) = result else {
        return Verdict::Pass { value: 0.0 };
    };
    let value = r.difference;
    match rule.bound {
        Bound::Max(max) if r.interval.0 > max => Verdict::Fail {
            value,
            reason: format!(
                "error rate {:.4} vs baseline {:.4}: the excess is above {max} with confidence (always-valid interval{} [{:.4}, {:.4}], alpha {alpha:.2e})",
                r.candidate_rate,
                r.baseline_rate,
                if r.cuped.is_some() { " of the CUPED-adjusted excess" } else { "" },
                r.interval.0,
                r.interval.1
            ),
        },
        _ => Verdict::Pass { value },
    }
}

/// Level of the Mann-Whitney test behind `latency_slower`.
pub const LATENCY_SLOWER_ALPHA: f64 = 0.01;

/// `latency_slower`: fails when the probability that a candidate request is slower than a
/// baseline one is above `max` with confidence 1 - `alpha` (the normal mixture on the
/// Mann-Whitney estimate and its tie-corrected variance).
fn latency_slower(rule: &Rule, candidate: &ArmWindow, baseline: &ArmWindow, alpha: f64) -> Verdict {
    let r = match slower(rule, candidate, baseline) {
        Ok(r) => r,
        Err(waiting) => return waiting,
    };
    let value = r.probability_slower;
    let what = if rule.metric == Metric::TtftSlower {
        "first token later than baseline: P(a candidate response's first token comes later)"
    } else {
        "candidate slower than baseline: P(a candidate request is slower)"
    };
    // DeLong's variance is 0 when the two arms do not overlap at all (every candidate request
    // slower): floored, as a rate's is, so such a candidate fails instead of passing unjudged.
    let n = (r.candidate_samples + r.baseline_samples).max(1) as f64;
    let smoothed = (value * n + 1.0) / (n + 2.0);
    let variance = if r.variance.is_finite() {
        r.variance.max(smoothed * (1.0 - smoothed) / n)
    } else {
        r.variance
    };
    let half = guardrail::half_width(variance, alpha);
    match (rule.bound, half) {
        (Bound::Max(max), Some(half)) if value - half > max => Verdict::Fail {
            value,
            reason: format!(
                "{what} {value:.3} > max {max} with confidence (always-valid interval [{:.3}, {:.3}], alpha {alpha:.2e})",
                (value - half).max(0.0),
                (value + half).min(1.0)
            ),
        },
        _ => Verdict::Pass { value },
    }
}

/// The rank comparison of the two arms' latencies, or why there is none yet (fewer than
/// `min_samples` on either arm).
fn slower(
    rule: &Rule,
    candidate: &ArmWindow,
    baseline: &ArmWindow,
) -> Result<crate::ranktest::SlowerResult, Verdict> {
    let (c, b) = (
        candidate.histogram(rule.metric),
        baseline.histogram(rule.metric),
    );
    let fewest = c.count().min(b.count());
    candidate_slower(c, b)
        .filter(|_| fewest >= rule.min_samples)
        .ok_or(Verdict::NotEnoughData {
            samples: fewest,
            needed: rule.min_samples,
        })
}

/// `latency_slower` as judged before issue 24: the fixed-horizon Mann-Whitney test at every check.
fn latency_slower_fixed(rule: &Rule, candidate: &ArmWindow, baseline: &ArmWindow) -> Verdict {
    let r = match slower(rule, candidate, baseline) {
        Ok(r) => r,
        Err(waiting) => return waiting,
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
        Metric::Custom => "custom metric",
        Metric::TtftP95 => "P95 time to first token (ms)",
        Metric::TtftP99 => "P99 time to first token (ms)",
        Metric::TpotP95 => "P95 time per output token (ms)",
        Metric::DurationP95 => "P95 stream duration (ms)",
        Metric::TokensPerRequest => "completion tokens per response",
        Metric::CostPer1kRequests => "cost per 1,000 responses",
        Metric::TtftSlower => "P(candidate's first token later)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::Histogram;
    use ramp_protocol::moments::ShadowMoments;

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
            Verdict::Fail { ref reason, .. } if reason.contains("with confidence")
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
            Verdict::Fail { ref reason, .. } if reason.contains("always-valid interval")
        ));
        // Every candidate request slower than every baseline one (DeLong's variance is 0).
        assert!(matches!(
            evaluate(&r, &many(&[0, 0, 0, 0, 20]), &many(&[20, 0, 0, 0, 0])),
            Verdict::Fail { .. }
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
            custom: None,
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

    /// Issue 24: an error rate a point above its bound failed at the check it was seen. Now the
    /// rule fails when the always-valid interval lies above the bound. 6% over 1,000: the
    /// interval is about [0.03, 0.09] at alpha 0.01.
    #[test]
    fn absolute_error_rate() {
        let r = rule(Metric::ErrorRate, Bound::Max(0.02));
        assert_eq!(
            evaluate(&r, &arm(1000, 21), &arm(0, 0)),
            Verdict::Pass { value: 0.021 },
            "a point estimate just above the bound is no evidence"
        );
        let Verdict::Fail { reason, .. } = evaluate(&r, &arm(1000, 60), &arm(0, 0)) else {
            panic!("6% against a 2% bound")
        };
        assert!(
            reason.contains("with confidence (always-valid interval [0.03"),
            "{reason}"
        );
        assert!(
            matches!(
                evaluate(&r, &arm(200, 40), &arm(0, 0)),
                Verdict::Fail { .. }
            ),
            "20% over 200 requests is caught at once"
        );
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
                evaluate(&r, &arm(1000, 30), &arm(10_000, 160)),
                Verdict::Pass { .. }
            ),
            "3.0% vs 1.6%: 0.014 worse, not surely more than 0.01"
        );
        assert!(
            matches!(
                evaluate(&r, &arm(1000, 60), &arm(10_000, 160)),
                Verdict::Fail { .. }
            ),
            "6.0% vs 1.6%"
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
                evaluate(&acc, &with(200, 170), &with(1000, 920)),
                Verdict::Pass { .. }
            ),
            "0.85 vs 0.92 over 200: not sure"
        );
        let Verdict::Fail { reason, .. } = evaluate(&acc, &with(4000, 3400), &with(10_000, 9200))
        else {
            panic!()
        };
        assert!(
            reason.contains("0.0700 worse than baseline 0.9200"),
            "{reason}"
        );
    }

    /// Latency percentiles are judged at bucket bounds: 10% of 10,000 requests in (100, 250] ms
    /// puts the P95 above 100 ms for sure, but nothing says it is above 150 (a point estimate by
    /// interpolation said 175).
    #[test]
    fn latency_percentiles_from_histograms() {
        let w = |n: u64| ArmWindow {
            latency: Histogram {
                buckets: vec![(100.0, 9 * n), (250.0, 10 * n), (f64::INFINITY, 10 * n)],
            },
            ..Default::default()
        };
        let at = |max| rule(Metric::LatencyP95, Bound::Max(max));
        assert_eq!(
            evaluate(&at(150.0), &w(1000), &ArmWindow::default()),
            Verdict::Pass { value: 175.0 }
        );
        let Verdict::Fail { reason, .. } = evaluate(&at(100.0), &w(1000), &ArmWindow::default())
        else {
            panic!("P95 surely above 100")
        };
        assert!(reason.contains("slower than 100 ms"), "{reason}");
        assert!(
            matches!(
                evaluate(&at(100.0), &w(10), &ArmWindow::default()),
                Verdict::Pass { .. }
            ),
            "100 requests are too few to be sure"
        );
        // Against the baseline: the candidate's P95 above 100 for sure, the baseline's at most
        // 20: more than 50 ms worse.
        let fast = ArmWindow {
            latency: Histogram {
                buckets: vec![(20.0, 10_000), (100.0, 10_000), (f64::INFINITY, 10_000)],
            },
            ..Default::default()
        };
        let rel = rule(Metric::LatencyP95, Bound::WorseThanBaseline(50.0));
        assert!(matches!(
            evaluate(&rel, &w(1000), &fast),
            Verdict::Fail { .. }
        ));
        assert!(matches!(evaluate(&rel, &fast, &fast), Verdict::Pass { .. }));
    }

    /// Streamed responses whose first token comes after `ttft_ms` times 0.8 to 1.2 (evenly), each
    /// with `tokens` completion tokens 20 ms apart.
    fn streamed(n: u64, ttft_ms: f64, tokens: u64) -> ArmWindow {
        let le: Vec<f64> = ramp_protocol::report::latency_le()
            .into_iter()
            .map(|l| l.0)
            .collect();
        let hist = |values: &[f64]| Histogram {
            buckets: le
                .iter()
                .map(|&b| (b, values.iter().filter(|&&v| v <= b).count() as u64))
                .collect(),
        };
        let ttft: Vec<f64> = (0..n)
            .map(|i| ttft_ms * (0.8 + 0.4 * i as f64 / n as f64))
            .collect();
        let end: Vec<f64> = ttft
            .iter()
            .map(|t| t + 20.0 * (tokens - 1) as f64)
            .collect();
        ArmWindow {
            requests: n,
            stream: crate::window::StreamWindow {
                responses: n,
                token_responses: n,
                prompt_tokens: 10 * n,
                completion_tokens: tokens * n,
                ttft: hist(&ttft),
                duration: hist(&end),
                tpot: hist(&vec![20.0; n as usize]),
            },
            price: Some(crate::spec::Price {
                prompt: 0.5,
                completion: 1.5,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn streaming_rules_read_the_stream_figures() {
        let base = streamed(2_000, 200.0, 50);
        let slow = streamed(200, 280.0, 50);
        let same = streamed(200, 200.0, 50);
        let fails = |m: Metric, b: Bound, c: &ArmWindow| {
            matches!(evaluate(&rule(m, b), c, &base), Verdict::Fail { .. })
        };
        // A first token 40% later at a tenth of the traffic: the rank test on the time to first
        // token sees it at 200 responses, and not an equal candidate.
        assert!(fails(Metric::TtftSlower, Bound::Max(0.55), &slow));
        assert!(!fails(Metric::TtftSlower, Bound::Max(0.55), &same));
        assert!(fails(Metric::TtftP95, Bound::Max(250.0), &slow));
        assert!(!fails(Metric::TtftP95, Bound::Max(250.0), &same));
        // A relative percentile bound needs both arms' time-uniform bounds a bucket apart: 240
        // and 336 ms share the bucket edge 300 here, so only the rank test sees this candidate.
        assert!(!fails(
            Metric::TtftP99,
            Bound::WorseThanBaseline(20.0),
            &slow
        ));
        // With 20,000 each the 95th percentiles' bounds are close enough to tell 320..480 ms from
        // 160..240 ms.
        let rel = rule(Metric::TtftP95, Bound::WorseThanBaseline(20.0));
        let (big_base, big_slow) = (streamed(20_000, 200.0, 5), streamed(20_000, 400.0, 5));
        assert!(matches!(
            evaluate(&rel, &big_slow, &big_base),
            Verdict::Fail { .. }
        ));
        assert!(matches!(
            evaluate(&rel, &big_base, &big_base),
            Verdict::Pass { .. }
        ));
        assert!(!fails(Metric::TpotP95, Bound::Max(30.0), &slow));
        assert!(fails(Metric::TpotP95, Bound::Max(10.0), &slow));
        // 280 * 1.2 + 49 * 20 ms = 1316 ms at most.
        assert!(!fails(Metric::DurationP95, Bound::Max(2_000.0), &slow));
        assert!(fails(Metric::DurationP95, Bound::Max(1_000.0), &slow));
        // 50 completion tokens; (10 * 0.5 + 50 * 1.5) / 1000 per response: 80 per 1,000.
        assert_eq!(slow.value(Metric::TokensPerRequest), (Some(50.0), 200));
        assert_eq!(slow.value(Metric::CostPer1kRequests), (Some(80.0), 200));
        assert!(fails(Metric::CostPer1kRequests, Bound::Max(70.0), &slow));
        assert!(!fails(Metric::CostPer1kRequests, Bound::Max(90.0), &slow));
        assert!(fails(Metric::TokensPerRequest, Bound::Max(40.0), &slow));
        // Too few streamed responses: no verdict yet, whatever the latency says.
        assert_eq!(
            evaluate(
                &rule(Metric::TtftP95, Bound::Max(1.0)),
                &streamed(50, 200.0, 5),
                &base
            ),
            Verdict::NotEnoughData {
                samples: 50,
                needed: 100
            }
        );
        let unpriced = ArmWindow {
            price: None,
            ..slow.clone()
        };
        assert!(!fails(
            Metric::CostPer1kRequests,
            Bound::Max(0.0),
            &unpriced
        ));
    }
}
