//! `make bench`: what one Envoy worker spends per request without a wasm filter, with an empty
//! proxy-wasm filter, with a naive router (`tests/naive-router`, with and without per-request
//! metrics) and with Ramp (weighted, sticky, Thompson bandit; by default and with
//! `client_headers: strip_all`; sticky also without its response header, and with Envoy setting it). This machine's speed swings by 2x within seconds, so every variant
//! is measured *at the same time* as the yardstick, the naive router with metrics: two Envoys from
//! `envoy/bench.yaml`, both pinned to core 1, each loaded by its own wrk on core 0, and each one's
//! CPU time per request read from its own threads. Whatever slows the core slows both, and the
//! ratio holds. Writes `tests/bench/results/filter-throughput.{md,json}`.

use std::process::Command;

use anyhow::{anyhow, Result};
use ramp_tests::{Envoy, EnvoyConfig};
use ramp_tools::wrk::{env_or, median_of, pin, start_wrk_on, Run, WRK_SCRIPT};
use serde_json::json;

/// The yardstick every variant is measured against: a naive router that also measures latency.
const YARDSTICK: &str = "naive_router_metrics";

/// Every listener of `envoy/bench.yaml`, and issue 11's floor for Ramp's: capacity against the
/// yardstick. The yardstick against itself is the method's A/A check (it should read 1).
const VARIANTS: [(&str, Option<f64>); 13] = [
    ("no_filter", None),
    ("empty_wasm", None),
    ("naive_router", None),
    (YARDSTICK, None),
    ("ramp_weighted", Some(1.0)),
    // Sticky as in every run since the first: the key read, and the arm in a response header.
    ("ramp_sticky", Some(0.97)),
    // Sticky alone, like for like with the yardstick, which sets no response header.
    ("ramp_sticky_bare", Some(0.97)),
    // Sticky alone, the arm told by Envoy's `response_headers_to_add` from the routing header.
    ("ramp_sticky_route_header", None),
    ("ramp_bandit", Some(0.97)),
    // The same three with `client_headers: strip_all` (the header map read to strip every x-ramp-*).
    ("ramp_weighted_strip_all", Some(1.0)),
    ("ramp_sticky_strip_all", Some(0.97)),
    ("ramp_bandit_strip_all", Some(0.97)),
    // Weighted with the guard (`ramp-bench-guard` measures it against weighted directly).
    ("ramp_weighted_guard", None),
];

fn main() -> Result<()> {
    let rounds = env_or("RAMP_BENCH_ROUNDS", 9) as usize;
    let seconds = env_or("RAMP_BENCH_SECONDS", 2);
    let connections = env_or("RAMP_BENCH_CONNECTIONS", 32);
    // Two Envoys, every thread of both on core 1, wrk on core 0: the pair shares one core's
    // fortunes, and neither queues behind its load generator.
    let config = EnvoyConfig::from_repo("bench.yaml")?;
    let envoys = [Envoy::start(&config, 1)?, Envoy::start(&config, 1)?];
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // On a single core everything shares it; the pair still sees the same machine.
    let envoy_core = if cores >= 2 { 1 } else { 0 };
    for e in &envoys {
        pin(e, envoy_core)?;
    }
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("bench.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    // Warm-up: every listener of both Envoys once, so V8 has compiled and tiered each module.
    for e in &envoys {
        for (v, _) in VARIANTS {
            start_wrk_on(e, v, &script, 1, connections)?.finish(e)?;
        }
    }

    // runs[i][round] = (variant's run, yardstick's run at the same time).
    let mut runs: Vec<Vec<(Run, Run)>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        // The two Envoys swap roles every round, so a difference between the processes (memory
        // layout, which one the scheduler favours) cancels.
        let (mine, theirs) = if round % 2 == 0 {
            (&envoys[0], &envoys[1])
        } else {
            (&envoys[1], &envoys[0])
        };
        for k in 0..VARIANTS.len() {
            let i = (k + round) % VARIANTS.len();
            let variant = VARIANTS[i].0;
            let load = |envoy: &Envoy, listener: &str| {
                start_wrk_on(envoy, listener, &script, seconds, connections)
            };
            let yard = load(theirs, YARDSTICK)?;
            let run = load(mine, variant)?;
            let (run, yard) = (run.finish(mine)?, yard.finish(theirs)?);
            eprintln!(
                "round {round} {variant:<24} {:>7.2} us/request vs yardstick {:>7.2}: {:.3}",
                run.cpu_us,
                yard.cpu_us,
                yard.cpu_us / run.cpu_us
            );
            runs[i].push((run, yard));
        }
    }

    // Capacity of a CPU-bound worker is inversely proportional to its CPU per request.
    let capacity: Vec<f64> = runs
        .iter()
        .map(|r| median_of(r, |(run, yard)| yard.cpu_us / run.cpu_us))
        .collect();
    let index = |name: &str| VARIANTS.iter().position(|(v, _)| *v == name);
    let (no_filter, empty) = (
        index("no_filter").ok_or_else(|| anyhow!("no_filter"))?,
        index("empty_wasm").ok_or_else(|| anyhow!("empty_wasm"))?,
    );
    let wasm_size = std::fs::metadata(ramp_tests::envoy::ramp_wasm())?.len();
    let date = String::from_utf8(
        Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%dT%H:%M:%SZ")
            .output()?
            .stdout,
    )?;

    let mut md = format!(
        "# Filter throughput\n\n`make bench` run of {}: Envoy 1.40.0, `--concurrency 1`, direct responses \
         (no upstream), wrk -t1 -c{connections} with a fresh `x-user-id` per request; {cores} cores.\n\n\
         Each variant runs at the same time as the yardstick (the naive router with metrics): two \
         Envoys, both pinned to core 1, each loaded by its own wrk on core 0 for {seconds} s, the two \
         Envoys swapping roles every round; {rounds} rounds, variants in rotated order. This machine's \
         speed swings by 2x within seconds (see the CPU/request column), and measuring the pair at \
         once cancels that: whatever slows the core slows both.\n\n\
         - CPU/request: the Envoy's own CPU time (all its threads, /proc schedstat) over the requests \
         wrk completed; median over rounds, for scale only.\n\
         - capacity vs the yardstick = yardstick CPU/request / variant CPU/request in the same \
         window, median over rounds: what one worker can serve, the figure of record. The yardstick \
         against itself is the method's A/A check.\n\
         - capacity vs no filter and vs the empty filter: the variant's capacity over theirs, both \
         against the yardstick.\n\n\
         | variant | CPU us/req | capacity vs naive router with metrics | rounds min..max | capacity vs no filter | capacity vs empty wasm | req/s |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        date.trim()
    );
    let mut variants_json = Vec::new();
    let mut targets = Vec::new();
    for (i, (variant, floor)) in VARIANTS.iter().enumerate() {
        let ratios: Vec<f64> = runs[i]
            .iter()
            .map(|(run, yard)| yard.cpu_us / run.cpu_us)
            .collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::INFINITY, 0.0_f64), |(lo, hi), &r| {
                (lo.min(r), hi.max(r))
            });
        let cpu = median_of(&runs[i], |(run, _)| run.cpu_us);
        let rps = median_of(&runs[i], |(run, _)| run.rps);
        md.push_str(&format!(
            "| {variant} | {cpu:.2} | {:.3} | {lo:.3}..{hi:.3} | {:.3} | {:.3} | {rps:.0} |\n",
            capacity[i],
            capacity[i] / capacity[no_filter],
            capacity[i] / capacity[empty],
        ));
        variants_json.push(json!({
            "name": variant,
            "cpu_us_per_request": cpu,
            "rps": rps,
            "capacity_vs_naive_router_metrics": capacity[i],
            "capacity_vs_no_filter": capacity[i] / capacity[no_filter],
            "capacity_vs_empty_wasm": capacity[i] / capacity[empty],
            "rounds": ratios,
        }));
        if let Some(floor) = floor {
            let met = capacity[i] >= *floor;
            targets.push(
                json!({"variant": variant, "ratio": capacity[i], "target": floor, "met": met}),
            );
        }
    }
    md.push_str(HOST_CALLS);
    for t in &targets {
        md.push_str(&format!(
            "- {}: {:.3} (target >= {}): {}\n",
            t["variant"].as_str().unwrap_or_default(),
            t["ratio"].as_f64().unwrap_or_default(),
            t["target"],
            if t["met"] == true { "met" } else { "missed" },
        ));
    }
    md.push_str(&format!(
        "\nramp_filter.wasm (release): {wasm_size} bytes\n"
    ));
    let results = json!({
        "date": date.trim(),
        "envoy": "1.40.0",
        "concurrency": 1,
        "method": "each variant concurrently with the yardstick, two Envoys pinned to one core",
        "wrk": {"threads": 1, "connections": connections, "seconds": seconds, "rounds": rounds},
        "variants": variants_json,
        "targets_vs_naive_router_metrics": targets,
        "ramp_wasm_bytes": wasm_size,
    });
    let out_dir = ramp_tools::write_results("filter-throughput", &md, &results)?;
    println!("written to {}", out_dir.display());
    Ok(())
}

/// What the targets are judged by, and the request path's host calls (counted natively against
/// the in-memory host in `worker::tests`).
const HOST_CALLS: &str = "\nTargets (issue 11): capacity against the naive router with metrics. \
Host calls per request, counted natively against the in-memory host (`worker::tests`): weighted 4, \
sticky 6 (the key read; the arm set in a response header), sticky bare 5, bandit 4; with \
`client_headers: strip_all` weighted 5, sticky 6 (the key found in the header map), bandit 5; the \
naive router with metrics makes 6. A host call that returns data costs two crossings of the wasm \
boundary (the host calls back into the module to allocate), so the yardstick crosses 8 times, \
weighted 5, sticky 8, sticky bare 7, bandit 5.\n\n";
