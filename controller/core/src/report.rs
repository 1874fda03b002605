//! The decision record of a rollout (`rampctl report`, `GET /v1/rollouts/{name}/report`), so a
//! reviewer can answer "why was v2 promoted, on what data, how sure were we" without
//! reconstructing it: every stored transition keeps the figures it was decided on (the spec
//! revision, the windows per arm, each rule's value, bound, verdict and reason, the A/B or bandit
//! evidence, the sample-ratio result), and a bounded per-check series keeps what plots over time
//! need. The types are shared by the server (which builds them) and the CLI (which renders them).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::machine::{Phase, State};
use crate::spec::{Spec, StrategyKind};

/// Most checks a rollout's series keeps. Past it every other one is dropped and from then on
/// only every second check is kept (then every fourth, ...): the series spans the whole rollout
/// with between half this and this many points, however long it runs.
pub const SERIES_MAX: usize = 2_000;

/// A spec's revision: the first 12 hex digits of its text's SHA-256, the same for the same text
/// on any controller.
pub fn spec_revision(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(6).fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// What a transition was decided on, stored with its event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The spec in force when it was decided.
    pub spec_revision: String,
    /// The spec's text, on the events that start or change one (`applied`, `spec_changed`,
    /// `new_revision`): with it the report holds every revision it names. Redacted when served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    /// The stage (1-based) the decision was made in.
    pub stage: usize,
    pub weights_before: BTreeMap<String, f64>,
    pub weights_after: BTreeMap<String, f64>,
    /// The figures of the check it was made on, as `status` showed them (`checks`: each rule's
    /// value, bound, verdict and reason; `window`: each arm's requests, errors and latency
    /// quantiles since the stage began; `ab_test`, `bandit`, `best_arm`, `sample_ratio`).
    /// An operator's command keeps the last check's; `None` before the first check.
    #[serde(default)]
    pub figures: Option<Value>,
}

impl DecisionRecord {
    /// The record of a transition from `before` to `after` under `spec` (text `spec_text`).
    pub fn new(
        spec: &Spec,
        spec_text: &str,
        before: &State,
        after: &State,
        figures: Option<Value>,
    ) -> Self {
        Self {
            spec_revision: spec_revision(spec_text),
            spec: None,
            stage: before.stage + 1,
            weights_before: before.arm_weights(spec).into_iter().collect(),
            weights_after: after.arm_weights(spec).into_iter().collect(),
            figures,
        }
    }

    /// The same, carrying the spec's text (an event that starts or changes a spec).
    pub fn with_spec(mut self, text: &str) -> Self {
        self.spec = Some(text.to_owned());
        self
    }
}

/// One arm's figures at a check: since its stage began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmPoint {
    pub requests: u64,
    pub errors: u64,
    #[serde(default)]
    pub p95_ms: Option<f64>,
}

/// One rule on one candidate at a check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RulePoint {
    /// Index into the stage's rules.
    pub rule: usize,
    pub arm: String,
    pub metric: String,
    /// `max`, `min` or `max_worse_than_baseline`.
    pub bound: String,
    pub limit: f64,
    /// `None` while the rule has too few samples.
    #[serde(default)]
    pub value: Option<f64>,
    /// `pass`, `fail` or `not_enough_data`.
    pub verdict: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// One candidate's A/B confidence sequence at a check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbPoint {
    pub arm: String,
    /// The confidence sequence of the difference (candidate - baseline).
    pub lower: f64,
    pub upper: f64,
    pub p_value: f64,
}

/// One check, compactly: what plots over time need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckPoint {
    /// The check's number in the rollout's series (0 first), given by the store.
    #[serde(default)]
    pub n: u64,
    pub at_ms: u64,
    /// The stage (1-based) and phase when the check ran.
    pub stage: usize,
    pub phase: Phase,
    /// The weights in force while the check's window was served.
    pub weights: BTreeMap<String, f64>,
    pub arms: BTreeMap<String, ArmPoint>,
    pub rules: Vec<RulePoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ab: Vec<AbPoint>,
    /// A bandit's P(best) per arm.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub p_best: BTreeMap<String, f64>,
    /// The sample-ratio check's always-valid p-value, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srm_p: Option<f64>,
}

/// The parts of `status::figures` a check point keeps, read back typed.
#[derive(Deserialize)]
struct FigureCheck {
    #[serde(default)]
    rule: usize,
    arm: String,
    metric: String,
    bound: String,
    limit: f64,
    value: Option<f64>,
    verdict: String,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Deserialize)]
struct FigureArm {
    requests: u64,
    errors: u64,
    p95_ms: Option<f64>,
}

impl CheckPoint {
    /// The point of the check whose figures (`status::figures`, plus `sample_ratio`) are
    /// `figures`, run on `state` at `at_ms`.
    pub fn from_figures(figures: &Value, state: &State, spec: &Spec, at_ms: u64) -> Self {
        let rules = serde_json::from_value::<Vec<FigureCheck>>(figures["checks"].clone())
            .unwrap_or_default()
            .into_iter()
            .map(|c| RulePoint {
                rule: c.rule,
                arm: c.arm,
                metric: c.metric,
                bound: c.bound,
                limit: c.limit,
                value: c.value,
                verdict: c.verdict,
                dry_run: c.dry_run,
            })
            .collect();
        let arms = serde_json::from_value::<BTreeMap<String, FigureArm>>(figures["window"].clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(arm, a)| {
                let point = ArmPoint {
                    requests: a.requests,
                    errors: a.errors,
                    p95_ms: a.p95_ms,
                };
                (arm, point)
            })
            .collect();
        let ab = figures["ab_test"]["comparisons"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let r = &c["result"];
                Some(AbPoint {
                    arm: c["arm"].as_str()?.to_owned(),
                    lower: r["interval"][0].as_f64()?,
                    upper: r["interval"][1].as_f64()?,
                    p_value: r["p_value"].as_f64()?,
                })
            })
            .collect();
        let p_best = figures["bandit"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(arm, p)| Some((arm.clone(), p["p_best"].as_f64()?)))
            .collect();
        Self {
            n: 0,
            at_ms,
            stage: state.stage + 1,
            phase: state.phase,
            weights: state.arm_weights(spec).into_iter().collect(),
            arms,
            rules,
            ab,
            p_best,
            srm_p: figures["sample_ratio"]["p_value"].as_f64(),
        }
    }
}

/// A stored event, with its decision record when it has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportEvent {
    pub at_ms: u64,
    pub kind: String,
    pub detail: String,
    #[serde(default)]
    pub record: Option<DecisionRecord>,
}

/// How much of the per-check series is kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesKept {
    /// Checks run since the series began.
    pub checks: u64,
    /// One check in this many is kept (a power of two).
    pub every: u64,
}

/// A rollout's decision record, as `GET /v1/rollouts/{name}/report` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutReport {
    pub name: String,
    pub strategy: StrategyKind,
    pub baseline: String,
    pub candidates: Vec<String>,
    pub phase: Phase,
    /// 1-based, of `stages`.
    pub stage: usize,
    pub stages: usize,
    pub weights: BTreeMap<String, f64>,
    #[serde(default)]
    pub reason: Option<String>,
    pub spec_revision: String,
    /// The spec in force, URLs redacted.
    pub spec: String,
    /// Every stored transition, oldest first.
    pub events: Vec<ReportEvent>,
    /// The per-check series, oldest first.
    pub checks: Vec<CheckPoint>,
    pub series: SeriesKept,
}

/// `2026-12-02 14:03:07Z` from milliseconds since the epoch (UTC; civil-from-days, Hinnant).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn weights_text(w: &BTreeMap<String, f64>, order: &[&str]) -> String {
    order
        .iter()
        .filter_map(|a| w.get(*a).map(|p| format!("{a} {p}%")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

/// The decision record as plain text: the rollout, then every transition with the figures it
/// was decided on, then a summary of the per-check series.
pub fn text(r: &RolloutReport) -> String {
    let mut out = String::new();
    let arms: Vec<&str> = std::iter::once(r.baseline.as_str())
        .chain(r.candidates.iter().map(String::as_str))
        .collect();
    let phase = crate::spec::wire_name(&r.phase);
    let strategy = crate::spec::wire_name(&r.strategy);
    let _ = writeln!(
        out,
        "rollout {} ({strategy}, {} -> {}): {phase} at stage {}/{} [{}], spec revision {}",
        r.name,
        r.baseline,
        r.candidates.join(", "),
        r.stage,
        r.stages,
        weights_text(&r.weights, &arms),
        r.spec_revision
    );
    if let Some(reason) = &r.reason {
        let _ = writeln!(out, "  reason: {reason}");
    }
    let start = r.events.first().map_or(0, |e| e.at_ms);
    let _ = writeln!(
        out,
        "decisions ({} events from {}; times after the first):",
        r.events.len(),
        utc(start)
    );
    for e in &r.events {
        let _ = writeln!(
            out,
            "  +{:>8.1} s  {:<18} {}",
            e.at_ms.saturating_sub(start) as f64 / 1000.0,
            e.kind,
            e.detail
        );
        if let Some(rec) = &e.record {
            record_text(&mut out, rec, &arms);
        }
    }
    series_text(&mut out, r);
    out
}

/// A decision record's figures, indented under its event.
fn record_text(out: &mut String, rec: &DecisionRecord, arms: &[&str]) {
    let moved = if rec.weights_before == rec.weights_after {
        format!("[{}]", weights_text(&rec.weights_after, arms))
    } else {
        format!(
            "[{}] -> [{}]",
            weights_text(&rec.weights_before, arms),
            weights_text(&rec.weights_after, arms)
        )
    };
    let _ = writeln!(
        out,
        "               spec {}, stage {}, weights {moved}",
        rec.spec_revision, rec.stage
    );
    let Some(f) = &rec.figures else {
        return;
    };
    for (arm, w) in f["window"].as_object().into_iter().flatten() {
        let _ = writeln!(
            out,
            "               window {arm:<8} requests {:>7} errors {:>5} ({}) latency p50 {} p95 {} p99 {} ms",
            w["requests"],
            w["errors"],
            num(&w["error_rate"], 4),
            num(&w["p50_ms"], 1),
            num(&w["p95_ms"], 1),
            num(&w["p99_ms"], 1)
        );
    }
    for c in f["checks"].as_array().into_iter().flatten() {
        let bound = match c["bound"].as_str() {
            Some("max") => "<=",
            Some("min") => ">=",
            _ => "worse than baseline by <=",
        };
        let dry = if c["dry_run"] == true {
            " (dry run)"
        } else if c["on_fail"] == "pause" {
            " (on_fail: pause)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "               rule   {} {} {bound} {}{dry}: value {} on {} samples, {}{}",
            c["arm"].as_str().unwrap_or("?"),
            c["metric"].as_str().unwrap_or("?"),
            c["limit"],
            num(&c["value"], 4),
            c["samples"],
            c["verdict"].as_str().unwrap_or("?"),
            c["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    for c in f["ab_test"]["comparisons"].as_array().into_iter().flatten() {
        let r = &c["result"];
        if r.is_object() {
            let _ = writeln!(
                out,
                "               A/B    {} {} vs baseline {}, always-valid p = {}, confidence sequence{} [{}, {}]{}",
                c["arm"].as_str().unwrap_or("?"),
                num(&r["candidate_rate"], 4),
                num(&r["baseline_rate"], 4),
                num(&r["p_value"], 4),
                if r["cuped"].is_object() {
                    " of the CUPED-adjusted difference"
                } else {
                    ""
                },
                num(&r["interval"][0], 4),
                num(&r["interval"][1], 4),
                if c["rejected"] == true { ", significant" } else { "" }
            );
        }
    }
    if let Some(b) = f["best_arm"].as_object() {
        let _ = writeln!(
            out,
            "               bandit {} leads with P(best) {} (promote at {})",
            b["leader"].as_str().unwrap_or("?"),
            num(&b["p_best"], 4),
            b["promote_at"]
        );
    }
    if let Some(s) = f["sample_ratio"].as_object() {
        let _ = writeln!(
            out,
            "               sample ratio ({}): always-valid p = {}{}",
            s["unit"].as_str().unwrap_or("?"),
            s["p_value"]
                .as_f64()
                .map_or("-".to_owned(), |p| format!("{p:.3e}")),
            if s["mismatch"] == true {
                ", MISMATCH"
            } else {
                ""
            }
        );
    }
}

/// The per-check series in a few lines: how much is kept, and each rule's verdicts over it.
fn series_text(out: &mut String, r: &RolloutReport) {
    let (Some(first), Some(last)) = (r.checks.first(), r.checks.last()) else {
        let _ = writeln!(out, "checks: none recorded");
        return;
    };
    let _ = writeln!(
        out,
        "checks: {} kept of {} run (every {}), {} to {}",
        r.checks.len(),
        r.series.checks,
        r.series.every.max(1),
        utc(first.at_ms),
        utc(last.at_ms)
    );
    let mut verdicts: BTreeMap<(usize, String, String, String), [u64; 3]> = BTreeMap::new();
    for c in &r.checks {
        for p in &c.rules {
            let label = format!(
                "{} {} {}{}",
                p.metric,
                p.bound,
                p.limit,
                if p.dry_run { " (dry run)" } else { "" }
            );
            let counts = verdicts
                .entry((c.stage, p.rule.to_string(), p.arm.clone(), label))
                .or_default();
            match p.verdict.as_str() {
                "pass" => counts[0] += 1,
                "fail" => counts[1] += 1,
                _ => counts[2] += 1,
            }
        }
    }
    for ((stage, _, arm, label), [pass, fail, wait]) in verdicts {
        let _ = writeln!(
            out,
            "  stage {stage} {arm} {label}: passed {pass}, failed {fail}, too few samples {wait}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_the_calendar() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        // `date -u -d @1796220187`: Wed Dec  2 14:03:07 UTC 2026
        assert_eq!(utc(1_796_220_187_000), "2026-12-02 14:03:07Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
    }

    /// A check's point is what its figures showed: rules with their bound, value and verdict
    /// (dry runs marked), each arm's stage window, the A/B interval, the sample-ratio p-value;
    /// the weights are the state's.
    #[test]
    fn a_check_point_keeps_what_the_figures_showed() {
        let spec = Spec::parse("name: r\nstrategy: ab_test\nab_test: {metric: success_rate}\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\nstages: [{weight: 30}, {weight: 100}]\n").unwrap();
        let state = State::start(&spec, 0);
        let figures = serde_json::json!({
            "checks": [{"rule": 1, "arm": "v2", "metric": "error_rate", "bound": "max", "limit": 0.02,
                        "value": 0.05, "verdict": "fail", "dry_run": true, "reason": "error rate 0.0500 > max 0.02"},
                       {"rule": 0, "arm": "v2", "metric": "latency_p95", "bound": "max", "limit": 100.0,
                        "value": null, "verdict": "not_enough_data", "dry_run": false}],
            "window": {"v1": {"requests": 70, "errors": 1, "p95_ms": 12.5}, "v2": {"requests": 30, "errors": 0, "p95_ms": null}},
            "ab_test": {"comparisons": [{"arm": "v2", "result": {"interval": [-0.1, 0.3], "p_value": 0.4}}]},
            "sample_ratio": {"p_value": 0.9}
        });
        let p = CheckPoint::from_figures(&figures, &state, &spec, 1234);
        assert_eq!((p.at_ms, p.stage, p.phase), (1234, 1, Phase::Progressing));
        assert_eq!(p.weights["v2"], 30.0);
        assert_eq!(p.arms["v1"].requests, 70);
        assert_eq!(p.arms["v2"].p95_ms, None);
        assert_eq!(
            (
                p.rules[0].rule,
                p.rules[0].dry_run,
                p.rules[0].value,
                p.rules[0].verdict.as_str()
            ),
            (1, true, Some(0.05), "fail")
        );
        assert_eq!(p.rules[1].value, None);
        assert_eq!(
            p.ab,
            vec![AbPoint {
                arm: "v2".into(),
                lower: -0.1,
                upper: 0.3,
                p_value: 0.4
            }]
        );
        assert_eq!(p.srm_p, Some(0.9));
        // Compact: a rule that acts leaves its dry_run flag out of the stored row.
        let row = serde_json::to_string(&p).unwrap();
        assert_eq!(row.matches("dry_run").count(), 1, "{row}");
    }

    #[test]
    fn a_revision_is_the_texts_hash() {
        assert_eq!(spec_revision("abc"), "ba7816bf8f01");
        assert_ne!(spec_revision("abc "), spec_revision("abc"));
    }
}
