//! `rampctl report --html FILE`: the decision record as one self-contained page a reviewer opens
//! in any browser, offline: the plots are SVG drawn here (no chart library, nothing fetched), the
//! decisions' figures sit in `<details>` blocks. Each plotted series is a `<g class="series">`
//! whose `data-series` names it and which holds one `<circle>` per check that has a value, so a
//! test can count what a browser laid out against the JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::report::{utc, CheckPoint, RolloutReport};

/// Colours of the arms, baseline first (Okabe-Ito, readable by colour-blind readers).
const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
];
const FAIL: &str = "#C62828";
const WIDTH: f64 = 920.0;
const HEIGHT: f64 = 230.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;

/// `&`, `<`, `>` and quotes made safe for HTML text and attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The name a series carries in `data-series`, the same one tests build from the JSON.
pub fn series_key(kind: &str, parts: &[&str]) -> String {
    std::iter::once(kind)
        .chain(parts.iter().copied())
        .collect::<Vec<_>>()
        .join(":")
}

/// One series of points `(time ms, value, failed)`, in one colour.
struct Series {
    key: String,
    label: String,
    colour: String,
    points: Vec<(u64, f64, bool)>,
    /// Draw the line as steps (a weight holds until it changes).
    steps: bool,
    /// Vertical bars `(time, low, high)` drawn under the points (a confidence sequence).
    bars: Vec<(u64, f64, f64)>,
}

/// A plot: its series over the report's time span, with optional horizontal reference lines.
struct Plot<'a> {
    title: String,
    y_label: &'a str,
    series: Vec<Series>,
    /// (value, label) lines across the plot: a rule's bound, zero difference.
    lines: Vec<(f64, String)>,
    /// Fixed y range; else from the data and the lines.
    y_range: Option<(f64, f64)>,
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_owned()
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.1e}")
    }
}

impl Plot<'_> {
    fn svg(&self, (t0, t1): (u64, u64)) -> String {
        let (mut lo, mut hi) = self.y_range.unwrap_or((f64::INFINITY, f64::NEG_INFINITY));
        if self.y_range.is_none() {
            let values = self
                .series
                .iter()
                .flat_map(|s| {
                    s.points
                        .iter()
                        .map(|p| p.1)
                        .chain(s.bars.iter().flat_map(|b| [b.1, b.2]))
                })
                .chain(self.lines.iter().map(|l| l.0))
                .filter(|v| v.is_finite());
            for v in values {
                lo = lo.min(v);
                hi = hi.max(v);
            }
            if !lo.is_finite() {
                (lo, hi) = (0.0, 1.0);
            }
            let pad = ((hi - lo) * 0.08)
                .max(hi.abs().max(lo.abs()) * 0.02)
                .max(1e-9);
            // Counts and rates never go below zero: the axis does not either.
            let floor = if lo >= 0.0 { 0.0 } else { f64::NEG_INFINITY };
            (lo, hi) = ((lo - pad).max(floor), hi + pad);
        }
        let span = (t1.saturating_sub(t0)).max(1) as f64;
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let x = |t: u64| LEFT + (t.saturating_sub(t0) as f64 / span) * plot_w;
        let y = |v: f64| TOP + (1.0 - (v - lo) / (hi - lo)) * plot_h;
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}">"#,
            escape(&self.title)
        );
        let _ = write!(
            svg,
            r#"<text x="{LEFT}" y="18" class="title">{}</text>"#,
            escape(&self.title)
        );
        let _ = write!(
            svg,
            r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#bbb"/>"##
        );
        for i in 0..=4 {
            let v = lo + (hi - lo) * f64::from(i) / 4.0;
            let yy = y(v);
            let _ = write!(
                svg,
                r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#e4e4e4"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                yy + 4.0,
                fmt_num(v)
            );
            let t = t0 + ((t1.saturating_sub(t0)) as f64 * f64::from(i) / 4.0) as u64;
            let xx = x(t);
            let _ = write!(
                svg,
                r#"<text x="{xx:.1}" y="{}" class="tick" text-anchor="middle">+{:.0} s</text>"#,
                TOP + plot_h + 16.0,
                t.saturating_sub(t0) as f64 / 1000.0
            );
        }
        let _ = write!(
            svg,
            r#"<text x="14" y="{:.1}" class="tick" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"#,
            TOP + plot_h / 2.0,
            TOP + plot_h / 2.0,
            escape(self.y_label)
        );
        for (v, label) in &self.lines {
            let yy = y(*v);
            let _ = write!(
                svg,
                r##"<line class="bound" x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#555" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                LEFT + plot_w - 4.0,
                if yy - TOP < 14.0 { yy + 13.0 } else { yy - 4.0 },
                escape(label)
            );
        }
        for (i, s) in self.series.iter().enumerate() {
            let _ = write!(
                svg,
                r#"<g class="series" data-series="{}" data-points="{}">"#,
                escape(&s.key),
                s.points.len()
            );
            for &(t, low, high) in &s.bars {
                let _ = write!(
                    svg,
                    r#"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="{3}" stroke-opacity="0.35" stroke-width="3"/>"#,
                    x(t),
                    y(low),
                    y(high),
                    s.colour
                );
            }
            let mut path = String::new();
            let mut last: Option<(f64, f64)> = None;
            for &(t, v, _) in &s.points {
                let (xx, yy) = (x(t), y(v));
                match last {
                    None => {
                        let _ = write!(path, "M{xx:.1},{yy:.1}");
                    }
                    Some((_, py)) if s.steps => {
                        let _ = write!(path, " L{xx:.1},{py:.1} L{xx:.1},{yy:.1}");
                    }
                    Some(_) => {
                        let _ = write!(path, " L{xx:.1},{yy:.1}");
                    }
                }
                last = Some((xx, yy));
            }
            if !path.is_empty() {
                let _ = write!(
                    svg,
                    r#"<path d="{path}" fill="none" stroke="{}" stroke-width="1.6"/>"#,
                    s.colour
                );
            }
            for &(t, v, failed) in &s.points {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="{}" fill="{}"><title>+{:.1} s: {}</title></circle>"#,
                    x(t),
                    y(v),
                    if failed { 3.5 } else { 2.4 },
                    if failed { FAIL } else { s.colour.as_str() },
                    t.saturating_sub(t0) as f64 / 1000.0,
                    fmt_num(v)
                );
            }
            let _ = write!(
                svg,
                r#"<text x="{}" y="{:.1}" class="legend" fill="{}">{}</text></g>"#,
                LEFT + plot_w + 6.0,
                TOP + 12.0 + 14.0 * i as f64,
                s.colour,
                escape(&s.label)
            );
        }
        svg.push_str("</svg>");
        svg
    }
}

/// Each arm's colour, baseline first.
fn colours(r: &RolloutReport) -> BTreeMap<String, String> {
    std::iter::once(&r.baseline)
        .chain(&r.candidates)
        .enumerate()
        .map(|(i, a)| (a.clone(), PALETTE[i % PALETTE.len()].to_owned()))
        .collect()
}

fn arms(r: &RolloutReport) -> Vec<String> {
    std::iter::once(r.baseline.clone())
        .chain(r.candidates.iter().cloned())
        .collect()
}

/// One rule on one arm as plotted across the rollout (the same rule in several stages is one
/// series): its key, label and bound.
fn rule_identity(p: &crate::report::RulePoint) -> (String, String) {
    let limit = p.limit.to_string();
    let key = series_key("rule", &[&p.metric, &p.bound, &limit, &p.arm]);
    let bound = match p.bound.as_str() {
        "max" => format!("<= {limit}"),
        "min" => format!(">= {limit}"),
        _ => format!("at most {limit} worse than the baseline"),
    };
    let dry = if p.dry_run { " (dry run)" } else { "" };
    (key, format!("{} {bound} on {}{dry}", p.metric, p.arm))
}

/// One rule's series as plotted: key, label, bound kind, limit, points.
type RuleSeries = (String, String, String, f64, Vec<(u64, f64, bool)>);

/// The plots: weights, each rule against its bound, the A/B confidence sequences, P(best),
/// requests per arm.
fn plots(r: &RolloutReport) -> Vec<String> {
    let checks: &[CheckPoint] = &r.checks;
    let times = checks
        .iter()
        .map(|c| c.at_ms)
        .chain(r.events.iter().map(|e| e.at_ms));
    let (t0, t1) = times.fold((u64::MAX, 0), |(a, b), t| (a.min(t), b.max(t)));
    let span = if t0 == u64::MAX { (0, 1) } else { (t0, t1) };
    let colour = colours(r);
    let arms = arms(r);
    let mut out = Vec::new();
    let per_arm = |key: &str, value: &dyn Fn(&CheckPoint, &str) -> Option<f64>, steps: bool| {
        arms.iter()
            .map(|arm| Series {
                key: series_key(key, &[arm]),
                label: arm.clone(),
                colour: colour.get(arm).cloned().unwrap_or_default(),
                points: checks
                    .iter()
                    .filter_map(|c| value(c, arm).map(|v| (c.at_ms, v, false)))
                    .collect(),
                steps,
                bars: Vec::new(),
            })
            .collect::<Vec<_>>()
    };
    let mut weights = per_arm("weights", &|c, arm| c.weights.get(arm).copied(), true);
    // The weights after the last transition (a promotion ends the checks) close each line.
    if let Some(last) = r.events.iter().rev().find_map(|e| {
        e.record
            .as_ref()
            .map(|rec| (e.at_ms, rec.weights_after.clone()))
    }) {
        for s in &mut weights {
            if let (Some(w), Some(&(t, _, _))) = (last.1.get(&s.label), s.points.last()) {
                if last.0 > t {
                    s.label = format!("{} (now {w}%)", s.label);
                }
            }
        }
    }
    out.push(
        Plot {
            title: "Weights per arm at each check (%)".to_owned(),
            y_label: "weight %",
            series: weights,
            lines: Vec::new(),
            y_range: Some((0.0, 100.0)),
        }
        .svg(span),
    );
    // Rules, in the order they first appear, each with its points: one pass over the checks.
    let mut rules: Vec<RuleSeries> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for c in checks {
        for p in &c.rules {
            let (key, label) = rule_identity(p);
            let i = *index.entry(key.clone()).or_insert_with(|| {
                rules.push((key, label, p.bound.clone(), p.limit, Vec::new()));
                rules.len() - 1
            });
            if let (Some(v), Some(rule)) = (p.value, rules.get_mut(i)) {
                rule.4.push((c.at_ms, v, p.verdict == "fail"));
            }
        }
    }
    for (key, label, bound, limit, points) in rules {
        let arm = key.rsplit(':').next().unwrap_or_default().to_owned();
        let lines = if bound == "max_worse_than_baseline" {
            Vec::new()
        } else {
            vec![(limit, format!("{bound} {}", fmt_num(limit)))]
        };
        out.push(
            Plot {
                title: format!(
                    "Rule {label}: its value at each check{}",
                    if lines.is_empty() {
                        " (the bound is relative to the baseline's value)"
                    } else {
                        " against its bound"
                    }
                ),
                y_label: "value",
                series: vec![Series {
                    key,
                    label: arm.clone(),
                    colour: colour.get(&arm).cloned().unwrap_or_default(),
                    points,
                    steps: false,
                    bars: Vec::new(),
                }],
                lines,
                y_range: None,
            }
            .svg(span),
        );
    }
    // The A/B confidence sequences: the estimate with its always-valid interval.
    let ab_arms: Vec<String> = r
        .candidates
        .iter()
        .filter(|a| checks.iter().any(|c| c.ab.iter().any(|p| &p.arm == *a)))
        .cloned()
        .collect();
    if !ab_arms.is_empty() {
        let series = ab_arms
            .iter()
            .map(|arm| {
                let ab: Vec<&crate::report::AbPoint> = checks
                    .iter()
                    .flat_map(|c| c.ab.iter().filter(|p| &p.arm == arm))
                    .collect();
                let at: Vec<u64> = checks
                    .iter()
                    .flat_map(|c| c.ab.iter().filter(|p| &p.arm == arm).map(|_| c.at_ms))
                    .collect();
                Series {
                    key: series_key("ab", &[arm]),
                    label: format!("{arm} - {}", r.baseline),
                    colour: colour.get(arm).cloned().unwrap_or_default(),
                    points: ab
                        .iter()
                        .zip(&at)
                        .map(|(p, &t)| (t, (p.lower + p.upper) / 2.0, false))
                        .collect(),
                    steps: false,
                    bars: ab
                        .iter()
                        .zip(&at)
                        .map(|(p, &t)| (t, p.lower, p.upper))
                        .collect(),
                }
            })
            .collect();
        out.push(
            Plot {
                title: "A/B: the confidence sequence of each candidate's difference from the baseline (valid at every check)".to_owned(),
                y_label: "difference",
                series,
                lines: vec![(0.0, "no difference".to_owned())],
                y_range: None,
            }
            .svg(span),
        );
    }
    if checks.iter().any(|c| !c.p_best.is_empty()) {
        out.push(
            Plot {
                title: "Bandit: each arm's probability of being the best".to_owned(),
                y_label: "P(best)",
                series: per_arm("p_best", &|c, arm| c.p_best.get(arm).copied(), false),
                lines: Vec::new(),
                y_range: Some((0.0, 1.0)),
            }
            .svg(span),
        );
    }
    out.push(
        Plot {
            title: "Requests per arm since its stage began, at each check".to_owned(),
            y_label: "requests",
            series: per_arm(
                "requests",
                &|c, arm| c.arms.get(arm).map(|a| a.requests as f64),
                false,
            ),
            lines: Vec::new(),
            y_range: None,
        }
        .svg(span),
    );
    out
}

/// A decision record's figures as small tables.
fn figures_html(f: &Value) -> String {
    let mut out = String::new();
    let cell = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::Number(n) => n
            .as_f64()
            .map_or_else(|| n.to_string(), |x| escape(&fmt_num(x))),
        Value::String(s) => escape(s),
        other => escape(&other.to_string()),
    };
    if let Some(w) = f["window"].as_object() {
        out.push_str("<table><tr><th>arm</th><th>requests</th><th>errors</th><th>error rate</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th></tr>");
        for (arm, a) in w {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(arm),
                cell(&a["requests"]),
                cell(&a["errors"]),
                cell(&a["error_rate"]),
                cell(&a["p50_ms"]),
                cell(&a["p95_ms"]),
                cell(&a["p99_ms"])
            );
        }
        out.push_str("</table>");
    }
    if let Some(checks) = f["checks"].as_array().filter(|c| !c.is_empty()) {
        out.push_str("<table><tr><th>rule</th><th>arm</th><th>bound</th><th>value</th><th>samples</th><th>verdict</th><th>reason</th></tr>");
        for c in checks {
            let failed = c["verdict"] == "fail";
            let _ = write!(
                out,
                "<tr{}><td>{}{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if failed { " class=\"fail\"" } else { "" },
                cell(&c["metric"]),
                if c["dry_run"] == true {
                    " (dry run)"
                } else if c["on_fail"] == "pause" {
                    " (on_fail: pause)"
                } else {
                    ""
                },
                cell(&c["arm"]),
                cell(&c["bound"]),
                cell(&c["limit"]),
                cell(&c["value"]),
                cell(&c["samples"]),
                cell(&c["verdict"]),
                cell(&c["reason"])
            );
        }
        out.push_str("</table>");
    }
    for c in f["ab_test"]["comparisons"].as_array().into_iter().flatten() {
        let r = &c["result"];
        if r.is_object() {
            let _ = write!(
                out,
                "<p>A/B {}: {} vs baseline {}, always-valid p = {}, confidence sequence [{}, {}]{}</p>",
                cell(&c["arm"]),
                cell(&r["candidate_rate"]),
                cell(&r["baseline_rate"]),
                cell(&r["p_value"]),
                cell(&r["interval"][0]),
                cell(&r["interval"][1]),
                if c["rejected"] == true { ", significant" } else { "" }
            );
        }
    }
    if let Some(b) = f["best_arm"].as_object() {
        let _ = write!(
            out,
            "<p>Bandit: {} leads with P(best) {} (promote at {})</p>",
            cell(&b["leader"]),
            cell(&b["p_best"]),
            cell(&b["promote_at"])
        );
    }
    if let Some(s) = f["sample_ratio"].as_object() {
        let _ = write!(
            out,
            "<p>Sample ratio ({}): always-valid p = {}{}</p>",
            cell(&s["unit"]),
            cell(&s["p_value"]),
            if s["mismatch"] == true {
                ", mismatch"
            } else {
                ""
            }
        );
    }
    out
}

/// The whole page.
pub fn page(r: &RolloutReport) -> String {
    let arm_order = arms(r);
    let weights = arm_order
        .iter()
        .filter_map(|a| r.weights.get(a).map(|w| format!("{a} {w}%")))
        .collect::<Vec<_>>()
        .join(", ");
    let phase = crate::spec::wire_name(&r.phase);
    let strategy = crate::spec::wire_name(&r.strategy);
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Ramp report: {name}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 980px; }}
h1 {{ font-size: 20px; margin-bottom: 4px; }} h2 {{ font-size: 16px; margin-top: 28px; }}
.plot {{ display: block; margin: 10px 0; }} .title {{ font-size: 13px; font-weight: 600; }}
.tick, .legend {{ font-size: 11px; fill: #444; }} .legend {{ font-weight: 600; }}
table {{ border-collapse: collapse; margin: 6px 0; font-size: 12px; }}
td, th {{ border: 1px solid #ddd; padding: 2px 6px; text-align: left; }}
tr.fail td {{ background: #fdecea; }} details {{ margin: 4px 0 10px 18px; }}
.event {{ margin: 6px 0 0; }} .kind {{ font-weight: 600; }} code {{ font-size: 12px; }}
pre {{ background: #f6f6f6; padding: 8px; font-size: 12px; overflow-x: auto; }}
</style></head><body>
<h1>Rollout {name}</h1>
<p>{strategy}, baseline {baseline}, candidates {candidates}: <b>{phase}</b> at stage {stage}/{stages} [{weights}], spec revision <code>{rev}</code>{reason}</p>
<p>{n_checks} checks kept of {n_run} run (one in {every}); {n_events} events. Red points are failed checks; dashed lines are bounds.</p>
"#,
        name = escape(&r.name),
        strategy = escape(&strategy),
        baseline = escape(&r.baseline),
        candidates = escape(&r.candidates.join(", ")),
        phase = escape(&phase),
        stage = r.stage,
        stages = r.stages,
        weights = escape(&weights),
        rev = escape(&r.spec_revision),
        reason = r
            .reason
            .as_deref()
            .map(|x| format!("<br>reason: {}", escape(x)))
            .unwrap_or_default(),
        n_checks = r.checks.len(),
        n_run = r.series.checks,
        every = r.series.every.max(1),
        n_events = r.events.len(),
    );
    html.push_str("<h2>Over time</h2>\n");
    for svg in plots(r) {
        html.push_str(&svg);
        html.push('\n');
    }
    html.push_str("<h2>Decisions, with the figures each was made on</h2>\n");
    let start = r.events.first().map_or(0, |e| e.at_ms);
    for e in &r.events {
        let _ = write!(
            html,
            r#"<p class="event">+{:.1} s ({}) <span class="kind">{}</span>: {}</p>"#,
            e.at_ms.saturating_sub(start) as f64 / 1000.0,
            escape(&utc(e.at_ms)),
            escape(&e.kind),
            escape(&e.detail)
        );
        if let Some(rec) = &e.record {
            let moved = |w: &BTreeMap<String, f64>| {
                arm_order
                    .iter()
                    .filter_map(|a| w.get(a).map(|p| format!("{a} {p}%")))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let weights = if rec.weights_before == rec.weights_after {
                format!("[{}]", moved(&rec.weights_after))
            } else {
                format!(
                    "[{}] -> [{}]",
                    moved(&rec.weights_before),
                    moved(&rec.weights_after)
                )
            };
            let _ = write!(
                html,
                "<details><summary>spec <code>{}</code>, stage {}, weights {}{}</summary>",
                escape(&rec.spec_revision),
                rec.stage,
                escape(&weights),
                if rec.figures.is_some() {
                    ": the figures it was decided on"
                } else {
                    ""
                }
            );
            if let Some(f) = &rec.figures {
                html.push_str(&figures_html(f));
            }
            if let Some(spec) = &rec.spec {
                let _ = write!(html, "<pre>{}</pre>", escape(spec));
            }
            html.push_str("</details>\n");
        }
    }
    let _ = writeln!(
        html,
        "<h2>Spec in force (revision <code>{}</code>)</h2><pre>{}</pre>",
        escape(&r.spec_revision),
        escape(&r.spec)
    );
    // Marks, on each series, how many of its points the browser laid out: what a headless
    // browser's test reads back (the page needs no script to be read).
    html.push_str(
        "<script>for (const g of document.querySelectorAll('g.series')) { g.setAttribute('data-rendered', [...g.querySelectorAll('circle')].filter(c => c.getBoundingClientRect().width > 0).length); }</script>\n</body></html>\n",
    );
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Phase;
    use crate::report::{AbPoint, ArmPoint, RulePoint, SeriesKept};

    fn report() -> RolloutReport {
        let point = |i: u64| CheckPoint {
            n: i,
            at_ms: 1_000 + i * 500,
            stage: 1,
            phase: Phase::Progressing,
            weights: [("v1".to_owned(), 50.0), ("v2".to_owned(), 50.0)].into(),
            arms: [(
                "v2".to_owned(),
                ArmPoint {
                    requests: 10 * i,
                    errors: i,
                    p95_ms: None,
                },
            )]
            .into(),
            rules: vec![RulePoint {
                rule: 0,
                arm: "v2".into(),
                metric: "error_rate".into(),
                bound: "max".into(),
                limit: 0.05,
                value: (i > 1).then_some(0.1),
                verdict: if i > 1 { "fail" } else { "not_enough_data" }.into(),
                dry_run: true,
            }],
            ab: vec![AbPoint {
                arm: "v2".into(),
                lower: -0.1 / (i + 1) as f64,
                upper: 0.2 / (i + 1) as f64,
                p_value: 0.5,
            }],
            p_best: BTreeMap::new(),
            srm_p: None,
        };
        RolloutReport {
            name: "r<&>".into(),
            strategy: crate::spec::StrategyKind::AbTest,
            baseline: "v1".into(),
            candidates: vec!["v2".into()],
            phase: Phase::Progressing,
            stage: 1,
            stages: 2,
            weights: [("v1".to_owned(), 50.0), ("v2".to_owned(), 50.0)].into(),
            reason: None,
            spec_revision: "abc".into(),
            spec: "name: r".into(),
            events: Vec::new(),
            checks: (0..6).map(point).collect(),
            series: SeriesKept {
                checks: 6,
                every: 1,
            },
        }
    }

    fn circles_in(html: &str, key: &str) -> usize {
        let start = html
            .find(&format!("data-series=\"{key}\""))
            .unwrap_or_else(|| panic!("no series {key}"));
        let end = start + html[start..].find("</g>").unwrap();
        html[start..end].matches("<circle").count()
    }

    /// Every series holds one circle per check that has its value, and text is escaped.
    #[test]
    fn each_series_has_a_point_per_check_with_a_value() {
        let html = page(&report());
        assert_eq!(circles_in(&html, "weights:v1"), 6);
        assert_eq!(circles_in(&html, "requests:v2"), 6);
        assert_eq!(circles_in(&html, "requests:v1"), 0, "no figures for v1");
        assert_eq!(circles_in(&html, "rule:error_rate:max:0.05:v2"), 4);
        assert_eq!(circles_in(&html, "ab:v2"), 6);
        assert!(html.contains("Rollout r&lt;&amp;&gt;"));
        assert!(!html.contains(" src="), "nothing fetched");
        assert_eq!(
            html.matches("<svg").count(),
            4,
            "weights, the rule, the A/B sequence, requests"
        );
    }
}
