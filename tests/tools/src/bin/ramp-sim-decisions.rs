//! `make sim`, the decisions: A/A false positives, power and time to decision of the sequential
//! A/B test against the fixed-horizon z-test re-run at every look, three arms with Holm's
//! correction, sticky users analysed as users, and the sample-ratio check's false alarms and
//! detection, all through rampctl's own decision functions
//! (`ramp_controller::simulate`), seeded. Writes `tests/bench/results/decisions.{md,json}`.

use anyhow::{Context, Result};
use ramp_controller::abtest::sample_size_per_arm;
use ramp_controller::reconciler::SRM_ALPHA;
use ramp_controller::simulate::{
    ab_sim, abn_sim, guardrail_sim, srm_sim, sticky_sim, AbSim, ArmModel, GuardrailSim,
};
use ramp_controller::spec::Spec;
use ramp_tests::envoy::repo_root;
use serde_json::json;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let experiments = env_or("RAMP_SIM_EXPERIMENTS", 2000);
    let spec = Spec::parse("name: ab\nstrategy: ab_test\narms: [{name: a, role: baseline}, {name: b, role: candidate}]\nab_test: {metric: conversion, confidence: 0.95, baseline_rate: 0.1, min_detectable_lift: 0.1}\nstages: [{weight: 50}, {weight: 100}]\n")
        .context("the simulation's spec")?;
    let ab = spec.ab_test.context("ab_test")?;
    let (step, horizon) = (1000, 100_000);
    let aa = ab_sim(&ab, 0.10, 0.10, experiments, step, horizon, 11);
    let lift = ab_sim(&ab, 0.10, 0.11, experiments, step, horizon, 12);
    let plan = sample_size_per_arm(0.10, 0.10, 0.05, 0.8).unwrap_or(0);
    let three = abn_sim(&ab, 0.10, &[0.10, 0.10], experiments, step, horizon, 15);
    let three_rate = AbSim::rate(three.any_declared, three.experiments);
    // Sticky users: 20 requests each, propensities Beta(1, 9); a look every 100 users (about
    // 1,000 requests per arm), 100 looks (about 100,000 requests per arm).
    let sticky = sticky_sim(&ab, experiments, 100, 100, 20, 9.0, 16);
    let sticky_user = AbSim::rate(sticky.user_level_decided, sticky.experiments);
    let sticky_request = AbSim::rate(sticky.per_request_decided, sticky.experiments);
    let sticky_srm_user = AbSim::rate(sticky.srm_user_level_flagged, sticky.experiments);
    let sticky_srm_request = AbSim::rate(sticky.srm_per_request_flagged, sticky.experiments);
    let srm_runs = env_or("RAMP_SIM_SRM_RUNS", 2000);
    let fine = srm_sim(0.50, srm_runs, 1000, 200_000, SRM_ALPHA, 13);
    let skew = srm_sim(0.51, srm_runs, 1000, 100_000, SRM_ALPHA, 14);

    let pct = |(p, se): (f64, f64)| format!("{:.2}% +- {:.2}%", p * 100.0, se * 100.0);
    let n = aa.experiments;
    let aa_seq = AbSim::rate(aa.sequential_decided, n);
    let aa_peek = AbSim::rate(aa.fixed_every_look_decided, n);
    let aa_once = AbSim::rate(aa.fixed_once_decided, n);
    let power = AbSim::rate(lift.sequential_candidate, n);
    let fine_rate = AbSim::rate(fine.flagged, fine.runs);
    let skew_rate = AbSim::rate(skew.flagged, skew.runs);
    let md = format!(
        "# Decisions\n\n`make sim` (`ramp-sim-decisions`): rampctl's own decision functions (`machine::ab_result`, \
         `machine::ab_fixed_horizon`, `machine::ab_holm`, `sequential::srm`, `sequential::srm_by_bucket`), natively, seeded. Rates are +- one standard error.\n\n\
         ## A/B: mSPRT (always valid) vs the fixed-horizon z-test re-run at every look\n\n\
         {n} experiments, conversion 10%, a look every {step} requests per arm up to {horizon} per arm ({} looks), \
         confidence 0.95, mixture sd {:.4} (baseline_rate x min_detectable_lift).\n\n\
         | | A/A: declared a winner | 10% -> 11%: candidate found by {horizon} per arm | median requests per arm to that decision |\n\
         |---|---:|---:|---:|\n\
         | mSPRT (what rampctl decides with) | {} | {} | {} |\n\
         | z-test at every look (what rampctl did before) | {} | | |\n\
         | z-test once, at {horizon} per arm | {} | | |\n\n\
         The fixed-horizon plan for 10% -> 11% at 80% power: {plan} requests per arm. The A/A target: at most 0.05 + 2 SE = {:.2}%.\n\n\
         ## A/B/n: one baseline, two candidates, all three the same (A/A/A)\n\n\
         {} experiments, 10%, a look every {step} requests per arm up to {horizon} per arm; each candidate's mSPRT against \
         the baseline with Holm's correction (`machine::ab_holm`, what a check decides with). Family-wise \
         false positives (any candidate declared better or worse at any look): {} (target: at most 5% + 2 SE = {:.2}%).\n\n\
         ## Sticky users: the user, not the request, as the unit\n\n\
         {} A/A experiments; each user keeps one arm (50/50) and one of 64 analysis buckets, makes 20 requests and \
         converts on each with a propensity of their own drawn from Beta(1, 9) (mean 10%); a look every 100 users \
         (about 1,000 requests per arm) up to 10,000 users (about 100,000 requests per arm).\n\n\
         | | A/B: declared a winner (target <= 5% + 2 SE) | correct 50/50 split flagged as SRM (target <= 1%) |\n|---|---:|---:|\n\
         | buckets as the units (what rampctl does for sticky filters) | {} | {} |\n\
         | requests as the units | {} | {} |\n\n\
         ## Sample-ratio check (Dirichlet-multinomial, alpha {SRM_ALPHA})\n\n\
         | split (configured 50/50) | runs | flagged | requests at the flag (median) |\n|---|---:|---:|---:|\n\
         | 50/50, a look every 1000 requests up to 200,000 | {} | {} | |\n\
         | 49/51, a look every 1000 requests up to 100,000 | {} | {} | {} |\n",
        horizon / step,
        ab.mixture_sd,
        pct(aa_seq),
        pct(power),
        lift.median_requests().map_or("-".to_owned(), |m| m.to_string()),
        pct(aa_peek),
        pct(aa_once),
        (0.05 + 2.0 * aa_seq.1) * 100.0,
        three.experiments,
        pct(three_rate),
        (0.05 + 2.0 * three_rate.1) * 100.0,
        sticky.experiments,
        pct(sticky_user),
        pct(sticky_srm_user),
        pct(sticky_request),
        pct(sticky_srm_request),
        fine.runs,
        pct(fine_rate),
        skew.runs,
        pct(skew_rate),
        skew.requests_at_flag
            .get(skew.requests_at_flag.len() / 2)
            .map_or("-".to_owned(), |m| m.to_string()),
    );
    let results = json!({
        "experiments": n, "look_every": step, "horizon_per_arm": horizon,
        "aa": {"sequential": aa_seq, "fixed_every_look": aa_peek, "fixed_once": aa_once},
        "power_10_to_11": {"detected": power, "median_requests_per_arm": lift.median_requests(), "fixed_plan_per_arm": plan},
        "three_arms_aa_family_wise": three_rate,
        "sticky_users": {"ab_user_level": sticky_user, "ab_per_request": sticky_request,
                         "srm_user_level": sticky_srm_user, "srm_per_request": sticky_srm_request},
        "srm": {"fifty_fifty_flagged": fine_rate, "forty_nine_fifty_one_flagged": skew_rate},
    });
    let (guard_md, guard_json) = guardrails(env_or("RAMP_SIM_GUARDRAIL_ROLLOUTS", 1000))?;
    let md = format!("{md}\n{guard_md}");
    let mut results = results;
    results["guardrails"] = guard_json;
    let out = repo_root().join("tests/bench/results");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("decisions.md"), &md)?;
    std::fs::write(
        out.join("decisions.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    println!("{md}");
    Ok(())
}

/// Issue 24's table: canary rollouts whose candidate is identical to the baseline (2% errors,
/// log-normal latency with median 20 ms), 100 checks of 500 requests per arm, failure threshold
/// 2, per rule set: how many are rolled back, judged as rampctl does now and as it did before;
/// then a candidate twice as bad on one guardrail under all four rules, and how soon it goes.
fn guardrails(rollouts: usize) -> Result<(String, serde_json::Value)> {
    const RULES: [(&str, &str); 4] = [
        (
            "`error_rate_vs_baseline max 0`",
            "{metric: error_rate_vs_baseline, max: 0}",
        ),
        (
            "`latency_slower max 0.55`",
            "{metric: latency_slower, max: 0.55}",
        ),
        (
            "`latency_p95 max_worse_than_baseline 5` (ms)",
            "{metric: latency_p95, max_worse_than_baseline: 5}",
        ),
        (
            "`error_rate max 0.03` (true rate 0.02)",
            "{metric: error_rate, max: 0.03}",
        ),
    ];
    let spec_with = |rules: &[&str]| {
        Spec::parse(&format!(
            "name: g\narms: [{{name: v1, role: baseline}}, {{name: v2, role: candidate}}]\nfailure_threshold: 2\nstages: [{{weight: 50, min_duration_s: 100000000, rules: [{}]}}, {{weight: 100}}]\n",
            rules.join(", ")
        ))
        .context("the guardrail simulation's spec")
    };
    let base = ArmModel {
        error_rate: 0.02,
        median_ms: 20.0,
        log_sd: 0.5,
    };
    let (checks, per_check) = (100, 500);
    let pct = |n: usize| {
        let (p, se) = AbSim::rate(n, rollouts);
        format!("{:.1}% +- {:.1}%", p * 100.0, se * 100.0)
    };
    let median = |v: &[u64]| GuardrailSim::median(v).map_or("-".to_owned(), |m| m.to_string());
    let mut md = format!(
        "## Guardrails under repeated looks (issue 24)\n\n{rollouts} canary rollouts per row through rampctl's own functions (`reconciler::rule_looks`, \
         `reconciler::check`; before: `reconciler::judged_windows` and `rules::point_verdict`, the point estimate on the newest window \
         holding `min_samples`), {checks} checks of {per_check} requests per arm, `failure_threshold: 2`, default `min_samples` (100). \
         Now a rule fails when its confidence sequence lies beyond the bound; the stage's alpha ({}) is split over its rules and over the \
         windows looked at (the whole stage and the last 1, 2, 4, ... checks).\n\n\
         ### A/A: the candidate identical to the baseline (2% errors, latency log-normal, median 20 ms)\n\n\
         | rules | rolled back before | rolled back now |\n|---|---:|---:|\n",
        ramp_controller::guardrail::GUARDRAIL_ALPHA
    );
    let mut json_rows = Vec::new();
    let mut seed = 100;
    let all: Vec<&str> = RULES.iter().map(|(_, r)| *r).collect();
    for (label, rules) in
        RULES
            .iter()
            .map(|(l, r)| (l.to_string(), vec![*r]))
            .chain(std::iter::once((
                "all four together".to_owned(),
                all.clone(),
            )))
    {
        seed += 1;
        let sim = guardrail_sim(
            &spec_with(&rules)?,
            base,
            base,
            rollouts,
            checks,
            per_check,
            seed,
        );
        md.push_str(&format!(
            "| {label} | {} | {} |\n",
            pct(sim.rolled_back_before),
            pct(sim.rolled_back)
        ));
        json_rows.push(json!({"rules": label, "aa": sim}));
    }
    md.push_str(
        "\n### A candidate twice as bad on one guardrail, all four rules\n\n\
         | candidate | rolled back before (median check) | rolled back now (median check) |\n|---|---:|---:|\n",
    );
    let spec = spec_with(&all)?;
    for (label, candidate) in [
        (
            "4% errors (2x)",
            ArmModel {
                error_rate: 0.04,
                ..base
            },
        ),
        (
            "latency 2x (median 40 ms)",
            ArmModel {
                median_ms: 40.0,
                ..base
            },
        ),
        (
            "latency 1.25x (median 25 ms)",
            ArmModel {
                median_ms: 25.0,
                ..base
            },
        ),
    ] {
        seed += 1;
        let sim = guardrail_sim(&spec, base, candidate, rollouts, checks, per_check, seed);
        md.push_str(&format!(
            "| {label} | {} ({}) | {} ({}) |\n",
            pct(sim.rolled_back_before),
            median(&sim.checks_to_rollback_before),
            pct(sim.rolled_back),
            median(&sim.checks_to_rollback)
        ));
        json_rows.push(json!({"candidate": label, "all_four": sim}));
    }
    Ok((md, json!(json_rows)))
}
