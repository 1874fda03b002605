//! `make bench`: how soon a failing candidate stops getting traffic, with the in-filter guard and
//! without it, and what the guard costs on the request path.
//!
//! Fault to 0%: the guard scenario (`ramp_tests::guard`, the one `tests/tests/e2e/guard.rs`
//! asserts on): two Envoys (`--concurrency 2`) in front of the same two model servers, paced
//! traffic through each (1,000 requests/s by default), a 50/50 split, 3 s healthy, then the
//! candidate fails one request in three. Per Envoy, the time from the fault to the send time of
//! the last request it routed to the candidate (followed by at least 1 s of traffic to the
//! baseline alone). Three variants, from fresh processes every run, in rotated order:
//! - the guard alone: `"guard": {"max_increase": 0.0}` in the filter config, static weights;
//! - rampctl without the guard: a rollout at 50%, `check_interval_s: 1`, `failure_threshold: 2`,
//!   rule `error_rate max 0.05`, the spec's `guard: {enabled: false}`;
//! - rampctl with the guard it pushes in the live state (the same spec, `enabled: true`), which
//!   rampctl derives from the rule as a bound (`max_error_rate: 0.05`);
//! - the same with rule `error_rate_vs_baseline max 0` instead, which rampctl derives as
//!   `max_increase: 0` (what the guard alone runs).
//!
//! Capacity: `envoy/bench.yaml`'s `ramp_weighted_guard` (Ramp weighted with a guard) against
//! `ramp_weighted` (the same without), measured at the same time by `ramp_tools::wrk` (two Envoys
//! pinned to one core, each loaded by its own wrk, roles swapped every round); and
//! `ramp_weighted` against itself, the method's A/A check.
//!
//! False trips: the guard alone with no fault, both arms failing 2% at random, 20 s a run.
//!
//! Knobs: `RAMP_BENCH_GUARD_RUNS` (10), `RAMP_BENCH_GUARD_RPS` (per Envoy, 1000),
//! `RAMP_BENCH_GUARD_AA_RUNS` (5), `RAMP_BENCH_GUARD_ROUNDS` (capacity rounds, 10), `RAMP_BENCH_GUARD_HISTORY_RUNS` (3). Writes `tests/bench/results/guard.{md,json}`.
//! Needs a release `rampctl` in `RAMPCTL_BIN` (`make bench` builds it) and wrk.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use ramp_tests::guard::{false_trips, run, Mode, Outcome, Scenario};
use ramp_tests::{Envoy, EnvoyConfig};
use ramp_tools::wrk::{env_or, median, pin, start_wrk_on, WRK_SCRIPT};
use serde_json::{json, Value};

/// The rule rampctl judges (and derives its guard from).
const RULE: &str = "{metric: error_rate, max: 0.05, min_samples: 10}";
/// The same against the baseline: rampctl's guard then tests the candidate against the baseline
/// (`max_increase`), as the guard alone does, instead of against the bound (`max_error_rate`).
const RULE_VS_BASELINE: &str = "{metric: error_rate_vs_baseline, max: 0.0, min_samples: 10}";
/// Targets for the variants with a guard, on the medians over runs.
const TARGET_TRIPPING_MS: f64 = 300.0;
const TARGET_EVERY_MS: f64 = 500.0;

struct Variant {
    key: &'static str,
    what: &'static str,
    mode: Mode,
    /// The guard's targets apply.
    guarded: bool,
}

fn variants() -> Vec<Variant> {
    vec![
        Variant {
            key: "guard",
            what: "guard alone (filter config, no controller)",
            mode: Mode::Guard(json!({"max_increase": 0.0})),
            guarded: true,
        },
        Variant {
            key: "rampctl",
            what: "rampctl without the guard",
            mode: Mode::Controller {
                rule: RULE.into(),
                guard: false,
            },
            guarded: false,
        },
        Variant {
            key: "rampctl_guard",
            what: "rampctl with the guard",
            mode: Mode::Controller {
                rule: RULE.into(),
                guard: true,
            },
            guarded: true,
        },
        Variant {
            key: "rampctl_guard_vs_baseline",
            what: "rampctl with the guard, rule `error_rate_vs_baseline max 0`",
            mode: Mode::Controller {
                rule: RULE_VS_BASELINE.into(),
                guard: true,
            },
            guarded: true,
        },
    ]
}

/// The nearest-rank percentile of `v` (`q` in 0..=1); NaN when empty.
fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1e3)
}

fn outcome_json(o: &Outcome) -> Value {
    json!({
        "tripping_envoy_ms": ms(o.first_to_zero()),
        "every_envoy_ms": ms(o.every_to_zero()),
        "fault_to_decision_ms": ms(o.fault_to_decision),
        "phase": o.status.as_ref().map(|s| s["phase"].clone()),
        "events": o.events.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        "envoys": o.envoys.iter().map(|e| json!({
            "fault_to_zero_ms": ms(e.fault_to_zero),
            "healthy_share": e.healthy_share,
            "healthy_answers": e.healthy_answers,
            "trips_at_fault": e.trips_at_fault,
            "trips": e.trips,
            "share_at_end": e.share_at_end,
            "achieved_rps": e.achieved_rps,
            "transport_errors": e.errors,
        })).collect::<Vec<_>>(),
    })
}

/// Median, p90 and max of the runs that got there, and how many did not.
struct Summary {
    median: f64,
    p90: f64,
    max: f64,
    missing: usize,
}

fn summarize(v: &[Option<f64>]) -> Summary {
    let got: Vec<f64> = v.iter().flatten().copied().collect();
    Summary {
        median: median(got.clone()),
        p90: percentile(got.clone(), 0.9),
        max: got.iter().copied().fold(f64::NAN, f64::max),
        missing: v.len() - got.len(),
    }
}

impl Summary {
    fn cell(&self) -> String {
        let missing = if self.missing > 0 {
            format!(" ({} never)", self.missing)
        } else {
            String::new()
        };
        format!(
            "{:.0} / {:.0} / {:.0}{missing}",
            self.median, self.p90, self.max
        )
    }

    fn json(&self) -> Value {
        json!({"median_ms": self.median, "p90_ms": self.p90, "max_ms": self.max,
               "runs_never_at_zero": self.missing})
    }
}

/// Capacity with the guard over capacity without, per round; and without over without (A/A).
fn capacity(rounds: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let (seconds, connections) = (2, 32);
    let config = EnvoyConfig::from_repo("bench.yaml")?;
    let envoys = [Envoy::start(&config, 1)?, Envoy::start(&config, 1)?];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for e in &envoys {
        pin(e, if cores >= 2 { 1 } else { 0 })?;
    }
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("bench.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    for e in &envoys {
        for l in ["ramp_weighted", "ramp_weighted_guard"] {
            start_wrk_on(e, l, &script, 1, connections)?.finish(e)?;
        }
    }
    let (mut guard, mut aa) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (mine, theirs) = if round % 2 == 0 {
            (&envoys[0], &envoys[1])
        } else {
            (&envoys[1], &envoys[0])
        };
        for (variant, out) in [
            ("ramp_weighted_guard", &mut guard),
            ("ramp_weighted", &mut aa),
        ] {
            let load = |envoy: &Envoy, listener: &str| {
                start_wrk_on(envoy, listener, &script, seconds, connections)
            };
            let base = load(theirs, "ramp_weighted")?;
            let run = load(mine, variant)?;
            let (run, base) = (run.finish(mine)?, base.finish(theirs)?);
            let ratio = base.cpu_us / run.cpu_us;
            eprintln!(
                "capacity round {round} {variant:<20} {:.2} us/request vs ramp_weighted {:.2}: {ratio:.3}",
                run.cpu_us, base.cpu_us
            );
            out.push(ratio);
        }
    }
    Ok((guard, aa))
}

fn main() -> Result<()> {
    let runs = env_or("RAMP_BENCH_GUARD_RUNS", 10) as usize;
    let rps = env_or("RAMP_BENCH_GUARD_RPS", 1000) as f64;
    // Even, so each Envoy is the measured one as often as the other.
    let rounds = env_or("RAMP_BENCH_GUARD_ROUNDS", 10) as usize;
    let variants = variants();
    let mut outcomes: Vec<Vec<Outcome>> = variants.iter().map(|_| Vec::new()).collect();
    for r in 0..runs {
        for k in 0..variants.len() {
            let i = (k + r) % variants.len();
            let v = &variants[i];
            let mut s = Scenario::new(
                &format!("bench-{}", v.key.replace('_', "-")),
                v.mode.clone(),
            );
            s.rps_per_envoy = rps;
            // Every figure here is expected within seconds; a run that never gets there is
            // reported as such, not waited on.
            s.timeout = Duration::from_secs(8);
            let o = run(&s)?;
            eprintln!(
                "run {r} {:<14} tripping envoy {:?} ms, every envoy {:?} ms, decision {:?} ms, trips {:?}, healthy trips {:?}, phase {:?}, share at end {:?}, events {:?}",
                v.key,
                ms(o.first_to_zero()).map(f64::round),
                ms(o.every_to_zero()).map(f64::round),
                ms(o.fault_to_decision).map(f64::round),
                o.envoys.iter().map(|e| e.trips).collect::<Vec<_>>(),
                o.envoys.iter().map(|e| e.trips_at_fault).collect::<Vec<_>>(),
                o.status.as_ref().map(|s| s["phase"].clone()),
                o.envoys.iter().map(|e| e.share_at_end).collect::<Vec<_>>(),
                o.events.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            );
            outcomes[i].push(o);
        }
    }
    // A/A: no fault, both arms failing 2% of requests at random; any trip is a false one.
    let (aa_runs, aa_secs, aa_permille) = (env_or("RAMP_BENCH_GUARD_AA_RUNS", 5), 20, 20);
    let mut aa_trips = Vec::new();
    for r in 0..aa_runs {
        let mut s = Scenario::new("bench-aa", Mode::Guard(json!({"max_increase": 0.0})));
        s.rps_per_envoy = rps;
        let t = false_trips(&s, aa_permille, Duration::from_secs(aa_secs))?;
        eprintln!("A/A run {r}: trips per Envoy {t:?}");
        aa_trips.extend(t);
    }
    let aa_tripped = aa_trips.iter().filter(|t| **t > 0.0).count();
    // The guard's test runs on the epoch's counts so far: how long the candidate was healthy
    // before the fault may slow a trip.
    let history_runs = env_or("RAMP_BENCH_GUARD_HISTORY_RUNS", 3) as usize;
    let mut history = Vec::new();
    for (guard, healthy_s) in [
        (json!({"max_error_rate": 0.05}), 3),
        (json!({"max_error_rate": 0.05}), 12),
        (json!({"max_increase": 0.0}), 12),
    ] {
        let mut got = Vec::new();
        for r in 0..history_runs {
            let mut s = Scenario::new("bench-history", Mode::Guard(guard.clone()));
            s.rps_per_envoy = rps;
            s.healthy = Duration::from_secs(healthy_s);
            let o = run(&s)?;
            eprintln!(
                "history run {r} {guard} healthy {healthy_s} s: tripping envoy {:?} ms, every envoy {:?} ms",
                ms(o.first_to_zero()).map(f64::round),
                ms(o.every_to_zero()).map(f64::round),
            );
            got.push(o);
        }
        history.push((guard, healthy_s, got));
    }
    eprintln!("capacity: {rounds} rounds");
    let (guard_capacity, aa_capacity) = capacity(rounds)?;

    let date = String::from_utf8(
        Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .output()?
            .stdout,
    )?;
    let date = date.trim();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut md = format!(
        "# The guard: fault to 0%, and its cost\n\n\
         `make bench` run of {date} (`tests/tools/src/bin/ramp-bench-guard.rs`), {cores} cores, \
         Envoy 1.40.0. Two Envoys (`--concurrency 2`) in front of the same two model servers, \
         {rps:.0} paced requests/s through each over 8 keep-alive connections, a 50/50 split; 3 s \
         healthy, then the candidate fails one request in three. **Fault to 0%**, per Envoy: from \
         the fault to the send time of the last request that Envoy routed to the candidate, with at \
         least 1 s of traffic to the baseline alone after it. The tripping Envoy is the first of the \
         two to get there; every Envoy of two, the later. {runs} runs per variant, each from fresh \
         processes, variants in rotated order; median / p90 / max over the runs, in ms.\n\n\
         - guard alone: `\"guard\": {{\"max_increase\": 0.0}}` in the filter config, static weights, \
         no controller;\n\
         - rampctl without the guard: a rollout at 50% (`check_interval_s: 1`, `failure_threshold: \
         2`, rule `{RULE}`), `guard: {{enabled: false}}` in the spec;\n\
         - rampctl with the guard: the same spec with the guard rampctl pushes in the live state, \
         derived from the rule as a bound (`max_error_rate: 0.05`);\n\
         - rampctl with the guard, `error_rate_vs_baseline`: the rule `{RULE_VS_BASELINE}` instead, \
         from which rampctl derives `max_increase: 0`, the guard alone's test.\n\n\
         | variant | tripping Envoy (ms) | every Envoy of two (ms) | fault to rolled_back (ms) | rollout's phase at the end (runs) | runs with a trip while healthy | trips per Envoy | runs with the candidate serving at the end | answers/s per Envoy (min) |\n\
         |---|---:|---:|---:|---|---:|---|---:|---:|\n"
    );
    let mut variants_json = Vec::new();
    let mut targets = Vec::new();
    let mut warnings = Vec::new();
    for (v, os) in variants.iter().zip(&outcomes) {
        let first = summarize(&os.iter().map(|o| ms(o.first_to_zero())).collect::<Vec<_>>());
        let every = summarize(&os.iter().map(|o| ms(o.every_to_zero())).collect::<Vec<_>>());
        let decided: Vec<Option<f64>> = os.iter().map(|o| ms(o.fault_to_decision)).collect();
        let decision = summarize(&decided);
        let healthy_trips = os
            .iter()
            .filter(|o| o.envoys.iter().any(|e| e.trips_at_fault > 0.0))
            .count();
        let mut trips: Vec<String> = os
            .iter()
            .flat_map(|o| o.envoys.iter().map(|e| format!("{}", e.trips)))
            .collect();
        trips.sort();
        trips.dedup();
        let min_rps = os
            .iter()
            .flat_map(|o| o.envoys.iter().map(|e| e.achieved_rps))
            .fold(f64::INFINITY, f64::min);
        let mut phases = std::collections::BTreeMap::<String, usize>::new();
        for o in os {
            if let Some(st) = &o.status {
                *phases
                    .entry(st["phase"].as_str().unwrap_or("?").to_owned())
                    .or_default() += 1;
            }
        }
        let phases: Vec<String> = phases.iter().map(|(p, n)| format!("{p} {n}")).collect();
        let serving_at_end = os
            .iter()
            .filter(|o| o.envoys.iter().any(|e| e.share_at_end > 0.0))
            .count();
        if serving_at_end > 0 {
            warnings.push(format!(
                "- **{}: in {serving_at_end} of {} runs the candidate served again at the end** \
                 (its share in the run's last second above 0; rollout phases {}): the fault-to-0% \
                 figures of those runs are the first 0%, which did not last.\n",
                v.what,
                os.len(),
                if phases.is_empty() {
                    "-".to_owned()
                } else {
                    phases.join(", ")
                },
            ));
        }
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {healthy_trips} of {} | {} | {serving_at_end} of {} | {min_rps:.0} |\n",
            v.what,
            first.cell(),
            every.cell(),
            if matches!(v.mode, Mode::Controller { .. }) {
                decision.cell()
            } else {
                "-".to_owned()
            },
            if phases.is_empty() {
                "-".to_owned()
            } else {
                phases.join(", ")
            },
            os.len(),
            trips.join(", "),
            os.len(),
        ));
        if v.guarded {
            for (what, s, target) in [
                ("tripping Envoy", &first, TARGET_TRIPPING_MS),
                ("every Envoy of two", &every, TARGET_EVERY_MS),
            ] {
                // A 0% that did not last (the candidate serving again at the end) is not met.
                let met = s.missing == 0 && serving_at_end == 0 && s.median <= target;
                targets.push(
                    json!({"variant": v.key, "figure": what, "median_ms": s.median,
                                    "target_ms": target, "met": met}),
                );
            }
        }
        variants_json.push(json!({
            "name": v.key,
            "what": v.what,
            "tripping_envoy": first.json(),
            "every_envoy": every.json(),
            "fault_to_rolled_back": decision.json(),
            "runs_with_a_trip_while_healthy": healthy_trips,
            "runs": os.iter().map(outcome_json).collect::<Vec<_>>(),
        }));
    }
    // Per round, the guard's ratio over the A/A's: both measured on the same Envoy against the
    // same other one, so what differs between the two processes cancels within the round.
    let paired: Vec<f64> = guard_capacity
        .iter()
        .zip(&aa_capacity)
        .map(|(g, a)| g / a)
        .collect();
    let cap = median(paired.clone());
    let raw = median(guard_capacity.clone());
    let aa = median(aa_capacity.clone());
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{lo:.3}..{hi:.3}")
    };
    if !warnings.is_empty() {
        md.push('\n');
        for w in &warnings {
            md.push_str(w);
        }
    }
    md.push_str(&format!(
        "\nTargets (medians; for the variants with a guard): the tripping Envoy <= {TARGET_TRIPPING_MS} ms, \
         every Envoy of two <= {TARGET_EVERY_MS} ms, and the 0% lasting (no run with the candidate \
         serving at the end).\n"
    ));
    for t in &targets {
        md.push_str(&format!(
            "- {} {}: {:.0} ms (target <= {}): {}\n",
            t["variant"].as_str().unwrap_or_default(),
            t["figure"].as_str().unwrap_or_default(),
            t["median_ms"].as_f64().unwrap_or(f64::NAN),
            t["target_ms"],
            if t["met"] == true { "met" } else { "missed" },
        ));
    }
    md.push_str(&format!(
        "\n## False trips (A/A)\n\n\
         The guard alone (`max_increase: 0.0`, default alpha and min_errors), no fault: both arms \
         fail {:.0}% of requests at random (independent draws), {rps:.0} requests/s through each of \
         two Envoys for {aa_secs} s, {aa_runs} runs: **{aa_tripped} of {} Envoys tripped** (each a \
         false trip; the test's alpha is 0.001 per Envoy and epoch).\n",
        aa_permille as f64 / 10.0,
        aa_trips.len(),
    ));
    md.push_str(&format!(
        "\n## Healthy history before the fault (guard alone)\n\n\
         The guard tests each arm on its counts since the epoch began (for the filter config's \
         guard, since its config was loaded; for rampctl's, since the stage did), healthy \
         responses included, and on those since each of the newest checkpoints (one every 1,000 \
         responses), so a long healthy history costs little. The same scenario with the guard against a bound and against the baseline, the \
         candidate healthy for 3 s or 12 s before it fails one request in three; {history_runs} \
         runs each, median / max in ms.\n\n\
         | guard | healthy before the fault | tripping Envoy (ms) | every Envoy of two (ms) |\n\
         |---|---:|---:|---:|\n"
    ));
    let mut history_json = Vec::new();
    for (guard, healthy_s, os) in &history {
        let first = summarize(&os.iter().map(|o| ms(o.first_to_zero())).collect::<Vec<_>>());
        let every = summarize(&os.iter().map(|o| ms(o.every_to_zero())).collect::<Vec<_>>());
        let cell = |s: &Summary| {
            let never = if s.missing > 0 {
                format!(" ({} never)", s.missing)
            } else {
                String::new()
            };
            format!("{:.0} / {:.0}{never}", s.median, s.max)
        };
        md.push_str(&format!(
            "| `{guard}` | {healthy_s} s | {} | {} |\n",
            cell(&first),
            cell(&every)
        ));
        history_json.push(json!({"guard": guard, "healthy_s": healthy_s,
                                 "tripping_envoy": first.json(), "every_envoy": every.json()}));
    }
    let cap_met = cap >= 0.98;
    md.push_str(&format!(
        "\n## Capacity with the guard\n\n\
         `envoy/bench.yaml`'s `ramp_weighted_guard` (Ramp weighted, 90/10, with `\"guard\": \
         {{\"max_increase\": 0.0}}`) against `ramp_weighted` (the same without), by `make bench`'s \
         method (`ramp_tools::wrk`): two Envoys (`--concurrency 1`) pinned to one core, each loaded \
         by its own wrk (-t1 -c32, 2 s) at the same time, roles swapped every round; capacity = \
         CPU/request of `ramp_weighted` on the other Envoy / CPU/request of the pair's variant; \
         {rounds} rounds, median. Each round measures both pairs with the same roles, so the \
         figure of record is, per round, the guard's ratio over the A/A's (what differs between \
         the two processes cancels; here it swung the raw ratios by about 3% with the roles). \
         Direct responses, all 200: the guard counts every response (its test runs on a \
         candidate's 5xx, so never here).\n\n\
         | pair | capacity ratio (median) | rounds min..max |\n|---|---:|---:|\n\
         | with the guard / without, over the round's A/A (of record) | {cap:.3} | {} |\n\
         | with the guard / without, raw | {raw:.3} | {} |\n\
         | without / without (A/A) | {aa:.3} | {} |\n\n\
         Target: within 2% (>= 0.98): {}.\n",
        range(&paired),
        range(&guard_capacity),
        range(&aa_capacity),
        if cap_met { "met" } else { "missed" },
    ));
    let results = json!({
        "date": date,
        "envoy": "1.40.0",
        "cores": cores,
        "rps_per_envoy": rps,
        "envoys": 2,
        "fail_every": 3,
        "runs": runs,
        "variants": variants_json,
        "targets": targets,
        "history": history_json,
        "aa": {"runs": aa_runs, "seconds": aa_secs, "fail_chance_permille": aa_permille,
               "trips_per_envoy": aa_trips, "envoys_tripped": aa_tripped},
        "capacity": {
            "with_guard_over_without": cap,
            "method": "per round: (with guard / without) over (without / without), same roles",
            "paired_rounds": paired,
            "raw": raw,
            "rounds": guard_capacity,
            "aa": aa,
            "aa_rounds": aa_capacity,
            "target": 0.98,
            "met": cap_met,
        },
    });
    let out = ramp_tools::write_results("guard", &md, &results)?;
    println!("written to {}", out.display());
    if outcomes.iter().all(Vec::is_empty) {
        bail!("no runs");
    }
    Ok(())
}
