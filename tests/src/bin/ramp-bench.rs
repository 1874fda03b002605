//! `make bench`: throughput of one Envoy worker without a wasm filter, with an empty proxy-wasm
//! filter, with a naive router (`tests/naive-router`, with and without per-request metrics), and
//! with Ramp (weighted, sticky, Thompson bandit), measured with wrk side by side in one run. Rounds rotate
//! the order so drift on a shared machine hits every variant alike. The ratios are computed within each
//! round (variants measured seconds apart) and the median over rounds is reported, which cancels the
//! machine's slow drift; absolute figures are medians too. Writes
//! `tests/bench/results/filter-throughput.{md,json}`.

use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use ramp_tests::envoy::repo_root;
use ramp_tests::{Envoy, EnvoyConfig};
use serde_json::json;

const VARIANTS: [&str; 7] = [
    "no_filter",
    "empty_wasm",
    "naive_router",
    "naive_router_metrics",
    "ramp_weighted",
    "ramp_sticky",
    "ramp_bandit",
];

/// Every request carries a fresh user id, so the sticky variant hashes a new key each time.
const WRK_SCRIPT: &str = r#"
math.randomseed(42)
request = function()
  wrk.headers["x-user-id"] = "user-" .. math.random(1, 1000000)
  return wrk.format(nil, "/predict")
end
"#;

/// Index of the yardstick: the naive router that also measures latency.
const NAIVE_METRICS: usize = 3;

struct Run {
    rps: f64,
    /// Envoy CPU time per request, in microseconds.
    cpu_us: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wrk(
    envoy: &Envoy,
    url: &str,
    script: &std::path::Path,
    seconds: u64,
    connections: u64,
) -> Result<Run> {
    let cpu_before = envoy.cpu_ns().ok_or_else(|| anyhow!("envoy is gone"))?;
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .context("running wrk (make bench installs it)")?;
    let cpu_used = envoy.cpu_ns().ok_or_else(|| anyhow!("envoy is gone"))? - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk failed or saw errors:\n{text}");
    }
    let field = |prefix: &str| -> Result<String> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix).map(|v| v.trim().to_owned()))
            .ok_or_else(|| anyhow!("no {prefix:?} in wrk output:\n{text}"))
    };
    let requests: f64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.trim().to_owned())
        })
        .ok_or_else(|| anyhow!("no request count in wrk output:\n{text}"))?
        .parse()?;
    Ok(Run {
        cpu_us: cpu_used as f64 / 1e3 / requests,
        rps: field("Requests/sec:")?.parse()?,
        p50_ms: millis(&field("50%")?)?,
        p99_ms: millis(&field("99%")?)?,
    })
}

fn millis(v: &str) -> Result<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        bail!("unknown wrk duration {v:?}")
    };
    Ok(num.parse::<f64>()? * scale)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let rounds = env_or("RAMP_BENCH_ROUNDS", 7) as usize;
    let seconds = env_or("RAMP_BENCH_SECONDS", 5);
    let connections = env_or("RAMP_BENCH_CONNECTIONS", 32);
    let envoy = Envoy::start(&EnvoyConfig::from_repo("bench.yaml")?, 1)?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("bench.lua");
    std::fs::write(&script, WRK_SCRIPT)?;

    let mut runs: Vec<Vec<Run>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for v in VARIANTS {
        wrk(
            &envoy,
            &envoy.listener_url(v, "/")?,
            &script,
            1,
            connections,
        )?; // warm-up
    }
    for round in 0..rounds {
        for k in 0..VARIANTS.len() {
            let i = (k + round) % VARIANTS.len();
            let run = wrk(
                &envoy,
                &envoy.listener_url(VARIANTS[i], "/")?,
                &script,
                seconds,
                connections,
            )?;
            eprintln!(
                "round {round} {:<14} {:>8.0} req/s {:>7.2} us CPU/request",
                VARIANTS[i], run.rps, run.cpu_us
            );
            runs[i].push(run);
        }
    }

    let med = |i: usize, f: fn(&Run) -> f64| median(runs[i].iter().map(f).collect());
    // Ratios are paired within a round, then the median over rounds is taken.
    let paired = |i: usize, base: usize, f: fn(&Run, &Run) -> f64| {
        median(
            (0..rounds)
                .map(|r| f(&runs[i][r], &runs[base][r]))
                .collect(),
        )
    };
    let rps_ratio = |a: &Run, b: &Run| a.rps / b.rps;
    // Capacity of a CPU-bound worker is inversely proportional to CPU per request.
    let cpu_ratio = |a: &Run, b: &Run| b.cpu_us / a.cpu_us;
    let wasm_size = std::fs::metadata(ramp_tests::envoy::ramp_wasm())?.len();
    let date = String::from_utf8(
        Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%dT%H:%M:%SZ")
            .output()?
            .stdout,
    )?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);

    let mut md = format!(
        "# Filter throughput\n\n`make bench` run of {}: Envoy 1.40.0, `--concurrency 1`, direct responses (no upstream), \
         wrk -t1 -c{connections} with a fresh `x-user-id` per request, {rounds} rounds x {seconds} s per variant, \
         order rotated each round; {cores} cores.\n\n\
         - req/s, p50, p99, CPU/request: medians over rounds.\n\
         - capacity ratio = CPU/request of the reference / CPU/request of the variant (Envoy's own CPU time from \
         /proc schedstat, divided by completed requests): what one worker can serve, and the figure of record, \
         because throughput on this shared machine swings with its neighbours.\n\
         - throughput ratio = req/s of the variant / req/s of the reference in the same round.\n\
         Both ratios are medians of per-round ratios.\n\n\
         | variant | req/s | p50 ms | p99 ms | CPU us/req | capacity vs no filter | capacity vs empty wasm | capacity vs naive router with metrics | throughput vs empty wasm |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        date.trim()
    );
    let mut variants_json = Vec::new();
    for (i, v) in VARIANTS.iter().enumerate() {
        let row = json!({
            "name": v,
            "rps": med(i, |r| r.rps),
            "p50_ms": med(i, |r| r.p50_ms),
            "p99_ms": med(i, |r| r.p99_ms),
            "cpu_us_per_request": med(i, |r| r.cpu_us),
            "capacity_vs_no_filter": paired(i, 0, cpu_ratio),
            "capacity_vs_empty_wasm": paired(i, 1, cpu_ratio),
            "capacity_vs_naive_router_metrics": paired(i, NAIVE_METRICS, cpu_ratio),
            "throughput_vs_no_filter": paired(i, 0, rps_ratio),
            "throughput_vs_empty_wasm": paired(i, 1, rps_ratio),
        });
        md.push_str(&format!(
            "| {v} | {:.0} | {:.3} | {:.3} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            row["rps"].as_f64().unwrap_or_default(),
            row["p50_ms"].as_f64().unwrap_or_default(),
            row["p99_ms"].as_f64().unwrap_or_default(),
            row["cpu_us_per_request"].as_f64().unwrap_or_default(),
            row["capacity_vs_no_filter"].as_f64().unwrap_or_default(),
            row["capacity_vs_empty_wasm"].as_f64().unwrap_or_default(),
            row["capacity_vs_naive_router_metrics"]
                .as_f64()
                .unwrap_or_default(),
            row["throughput_vs_empty_wasm"].as_f64().unwrap_or_default(),
        ));
        variants_json.push(row);
    }
    // Issue 11's targets: Ramp's request path at or below the naive router that measures latency
    // (capacity ratio >= 1 for weighted, >= 0.97 for sticky and bandit). The rotated rounds above
    // compare runs up to half a minute apart, and this shared machine's speed swings by 2x within
    // seconds; so each target is measured back to back: yardstick, variant, yardstick, short runs,
    // many rounds, and the variant's CPU/request is compared with the mean of the two yardstick
    // runs around it. (Running both at once on two Envoys was tried: with four busy processes on
    // two cores the per-process figures scatter more, not less.)
    let pair_rounds = env_or("RAMP_BENCH_PAIR_ROUNDS", 15) as usize;
    let pair_seconds = env_or("RAMP_BENCH_PAIR_SECONDS", 1);
    // The same three with `client_headers: strip_owned` (only the headers a rollout needs read).
    let targets_of = [
        ("ramp_weighted", 1.0),
        ("ramp_sticky", 0.97),
        ("ramp_bandit", 0.97),
        ("ramp_weighted_owned", 1.0),
        ("ramp_sticky_owned", 0.97),
        ("ramp_bandit_owned", 0.97),
    ];
    let mut pair_ratios: Vec<Vec<f64>> = targets_of.iter().map(|_| Vec::new()).collect();
    let yardstick_url = envoy.listener_url(VARIANTS[NAIVE_METRICS], "/")?;
    for round in 0..pair_rounds {
        for k in 0..targets_of.len() {
            let t = (k + round) % targets_of.len();
            let before = wrk(&envoy, &yardstick_url, &script, pair_seconds, connections)?;
            let run = wrk(
                &envoy,
                &envoy.listener_url(targets_of[t].0, "/")?,
                &script,
                pair_seconds,
                connections,
            )?;
            let after = wrk(&envoy, &yardstick_url, &script, pair_seconds, connections)?;
            let ratio = (before.cpu_us + after.cpu_us) / 2.0 / run.cpu_us;
            eprintln!(
                "pair round {round} {:<14} {:>7.2} us vs yardstick {:.2}/{:.2} us: {ratio:.3}",
                targets_of[t].0, run.cpu_us, before.cpu_us, after.cpu_us
            );
            pair_ratios[t].push(ratio);
        }
    }
    md.push_str(&format!(
        "\nTargets against the naive router with metrics: capacity ratio (yardstick CPU/request / \
         variant CPU/request), measured back to back (yardstick, variant, yardstick; {pair_seconds} s each), \
         median of {pair_rounds} rounds, order rotated. Host calls per request (counted natively against \
         the in-memory host, `worker::tests`): weighted 5, sticky 6 (its config also sets a response \
         header), bandit 5; with `client_headers: strip_owned` weighted 4, sticky 6 (the key read \
         alone), bandit 4; the naive router with metrics makes 6.\n\n"
    ));
    let mut targets = Vec::new();
    for ((variant, floor), ratios) in targets_of.iter().zip(pair_ratios) {
        let ratio = median(ratios.clone());
        let met = ratio >= *floor;
        md.push_str(&format!(
            "- {variant}: {ratio:.3} (target >= {floor}): {} (rounds: {})\n",
            if met { "met" } else { "missed" },
            ratios
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        targets.push(json!({"variant": variant, "ratio": ratio, "target": floor, "met": met, "rounds": ratios}));
    }
    md.push_str(&format!(
        "\nramp_filter.wasm (release): {wasm_size} bytes\n"
    ));
    let results = json!({
        "date": date.trim(),
        "envoy": "1.40.0",
        "concurrency": 1,
        "wrk": {"threads": 1, "connections": connections, "seconds": seconds, "rounds": rounds},
        "variants": variants_json,
        "targets_vs_naive_router_metrics": targets,
        "ramp_wasm_bytes": wasm_size,
    });
    let out_dir = repo_root().join("tests/bench/results");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("filter-throughput.md"), &md)?;
    std::fs::write(
        out_dir.join("filter-throughput.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    println!("{md}");
    println!("written to {}", out_dir.display());
    drop(envoy);
    Ok(())
}
