//! `make sim`, the decisions: A/A false positives, power and time to decision of the sequential
//! A/B test against the fixed-horizon z-test re-run at every look, three arms with Holm's
//! correction, sticky users analysed as users, and the sample-ratio check's false alarms and
//! detection, guardrails under repeated looks and CUPED, all through rampctl's own decision functions
//! (`ramp_controller::simulate`), seeded. Writes `tests/bench/results/decisions.{md,json}`.

use anyhow::{Context, Result};
use ramp_controller::abtest::sample_size_per_arm;
use ramp_controller::cuped_sim::{cuped_sim, CupedSimParams};
use ramp_controller::reconciler::SRM_ALPHA;
use ramp_controller::simulate::{
    ab_sim, abn_sim, guardrail_sim, srm_sim, sticky_sim, AbSim, ArmModel, GuardrailSim,
};
use ramp_controller::spec::Spec;
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
    let (cuped_md, cuped_json) = cuped(&ab, env_or("RAMP_SIM_CUPED_EXPERIMENTS", 2000));
    let md = format!("{md}\n{guard_md}\n{cuped_md}");
    let mut results = results;
    results["guardrails"] = guard_json;
    results["cuped"] = cuped_json;
    ramp_tools::write_results("decisions", &md, &results)?;
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

/// Issue 24's CUPED rows: a fixed population of returning users (`cuped_sim::cuped_sim`), the
/// plain user-bucket test (what rampctl did before) against the same test on CUPED-adjusted
/// differences, both through `machine::ab_result`.
fn cuped(ab: &ramp_controller::spec::AbTest, experiments: usize) -> (String, serde_json::Value) {
    let users = 10_000;
    let run = |lift: f64, seed: u64| {
        cuped_sim(
            ab,
            &CupedSimParams {
                experiments,
                users,
                pre_requests: 20,
                rounds: 40,
                requests_per_look: 1_000,
                mean: 0.1,
                concentration: 60.0 / 7.0,
                lift,
                seed,
            },
        )
    };
    let pct = |(p, se): (f64, f64)| format!("{:.2}% +- {:.2}%", p * 100.0, se * 100.0);
    let median = |m: Option<u64>| m.map_or("beyond the horizon".to_owned(), |m| m.to_string());
    let mut rows = String::new();
    let mut json_rows = Vec::new();
    for (lift, seed) in [(0.065, 41), (0.10, 42)] {
        let s = run(lift, seed);
        let (plain, cuped) = (
            s.plain.median_requests(experiments),
            s.cuped.median_requests(experiments),
        );
        // The round the plain test's median decision falls in, and how the users' pre-period
        // and experiment rates correlate by then (measured).
        let round = plain.map(|m| (m as usize * 2).div_ceil(users).max(1));
        let correlation = round
            .and_then(|r| {
                s.user_correlation_by_round
                    .get(r.min(s.user_correlation_by_round.len()) - 1)
            })
            .copied();
        let fewer = plain.zip(cuped).map(|(p, c)| 1.0 - c as f64 / p as f64);
        rows.push_str(&format!(
            "| +{:.1}% (10% -> {:.2}%) | {} | {} | {} | {} | {} | {} | {:.0}% |\n",
            lift * 100.0,
            10.0 * (1.0 + lift),
            correlation.map_or("-".to_owned(), |c| format!("{c:.2}")),
            pct(AbSim::rate(s.plain.decided, experiments)),
            pct(AbSim::rate(s.cuped.decided, experiments)),
            median(plain),
            median(cuped),
            fewer.map_or("-".to_owned(), |f| format!("{:.0}%", f * 100.0)),
            s.mean_variance_reduction * 100.0,
        ));
        json_rows.push(json!({"lift": lift, "user_correlation_at_plain_median": correlation,
            "plain": {"decided": s.plain.decided, "median_requests_per_arm": plain},
            "cuped": {"decided": s.cuped.decided, "median_requests_per_arm": cuped},
            "fewer_requests": fewer, "mean_variance_reduction_at_last_look": s.mean_variance_reduction}));
    }
    let aa = run(0.0, 43);
    let (aa_plain, aa_cuped) = (
        AbSim::rate(aa.plain.decided, experiments),
        AbSim::rate(aa.cuped.decided, experiments),
    );
    let corr_end = aa
        .user_correlation_by_round
        .get(19)
        .copied()
        .unwrap_or(f64::NAN);
    let md = format!(
        "## CUPED: the pre-period as a covariate (issue 24)\n\n\
         `cuped_sim::cuped_sim` through `machine::ab_result`, {experiments} experiments a row. {users} returning users, \
         each with a conversion propensity from Beta(m k, (1 - m) k), m = 10%, k = 60/7, assigned 50/50 and to one of \
         64 analysis buckets; in the pre-period each makes 20 requests, counted per bucket under the arm the \
         experiment will give them; then every user makes one request a round, in random order, for up to 40 rounds \
         (400,000 requests), a look every 1,000 requests. A user's pre-period rate and experiment rate then correlate by \
         1 / sqrt((1 + k/20)(1 + k/r)) after r rounds: 0.7 at 20 rounds (measured: {corr_end:.2}). Before: buckets as the \
         units, no covariate. Now: the same mSPRT on the regression-adjusted difference (`cuped::adjusted_difference`, \
         checked against statsmodels' cluster-robust OLS).\n\n\
         | candidate | per-user correlation at today's median decision | decided before | decided with CUPED | median requests per arm to a decision, before | with CUPED | fewer requests | variance removed at the decision (or the last look) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n{rows}\n\
         A/A (the candidate the same): declared a winner before {}, with CUPED {} (target: at most 5% + 2 SE = {:.2}%).\n\n\
         The gain grows with how well the pre-period predicts a user at the decision: early decisions (a large lift, few \
         requests per user so far) gain less than 1 - rho^2. The median counts an undecided experiment as beyond the \
         horizon.\n",
        pct(aa_plain),
        pct(aa_cuped),
        (0.05 + 2.0 * aa_cuped.1) * 100.0,
    );
    let json = json!({"rows": json_rows, "aa": {"plain": aa_plain, "cuped": aa_cuped},
        "user_correlation_at_round_20": corr_end});
    (md, json)
}
