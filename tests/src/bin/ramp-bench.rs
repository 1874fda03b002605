//! `make bench`: throughput of one Envoy worker without a wasm filter, with an empty proxy-wasm
//! filter, and with Ramp (weighted, sticky), measured with wrk side by side in one run. Rounds rotate
//! the order so drift on a shared machine hits every variant alike; the figures are medians, and the
//! results that matter are the ratios. Writes `tests/bench/results/filter-throughput.{md,json}`.

use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use ramp_tests::envoy::repo_root;
use ramp_tests::{Envoy, EnvoyConfig};
use serde_json::json;

const VARIANTS: [&str; 4] = ["no_filter", "empty_wasm", "ramp_weighted", "ramp_sticky"];

/// Every request carries a fresh user id, so the sticky variant hashes a new key each time.
const WRK_SCRIPT: &str = r#"
math.randomseed(42)
request = function()
  wrk.headers["x-user-id"] = "user-" .. math.random(1, 1000000)
  return wrk.format(nil, "/predict")
end
"#;

struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wrk(url: &str, script: &std::path::Path, seconds: u64, connections: u64) -> Result<Run> {
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
    Ok(Run {
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
    let rounds = env_or("RAMP_BENCH_ROUNDS", 5) as usize;
    let seconds = env_or("RAMP_BENCH_SECONDS", 5);
    let connections = env_or("RAMP_BENCH_CONNECTIONS", 32);
    let envoy = Envoy::start(&EnvoyConfig::from_repo("bench.yaml")?, 1)?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("bench.lua");
    std::fs::write(&script, WRK_SCRIPT)?;

    let mut runs: Vec<Vec<Run>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for v in VARIANTS {
        wrk(&envoy.listener_url(v, "/")?, &script, 1, connections)?; // warm-up
    }
    for round in 0..rounds {
        for k in 0..VARIANTS.len() {
            let i = (k + round) % VARIANTS.len();
            let run = wrk(
                &envoy.listener_url(VARIANTS[i], "/")?,
                &script,
                seconds,
                connections,
            )?;
            eprintln!("round {round} {:<14} {:>10.0} req/s", VARIANTS[i], run.rps);
            runs[i].push(run);
        }
    }

    let rps: Vec<f64> = runs
        .iter()
        .map(|r| median(r.iter().map(|x| x.rps).collect()))
        .collect();
    let p50: Vec<f64> = runs
        .iter()
        .map(|r| median(r.iter().map(|x| x.p50_ms).collect()))
        .collect();
    let p99: Vec<f64> = runs
        .iter()
        .map(|r| median(r.iter().map(|x| x.p99_ms).collect()))
        .collect();
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
        "# Filter throughput\n\n{} UTC-stamped run of `make bench`: Envoy 1.40.0, `--concurrency 1`, direct responses, \
         wrk -t1 -c{connections}, {rounds} rounds x {seconds} s per variant (order rotated), medians; {cores} cores.\n\n\
         | variant | req/s | p50 ms | p99 ms | vs no filter | vs empty wasm |\n|---|---:|---:|---:|---:|---:|\n",
        date.trim()
    );
    for (i, v) in VARIANTS.iter().enumerate() {
        md.push_str(&format!(
            "| {v} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            rps[i],
            p50[i],
            p99[i],
            rps[i] / rps[0],
            rps[i] / rps[1]
        ));
    }
    md.push_str(&format!(
        "\nramp_filter.wasm (release): {wasm_size} bytes\n"
    ));
    let results = json!({
        "date": date.trim(),
        "envoy": "1.40.0",
        "concurrency": 1,
        "wrk": {"threads": 1, "connections": connections, "seconds": seconds, "rounds": rounds},
        "variants": VARIANTS.iter().enumerate().map(|(i, v)| json!({
            "name": v, "rps": rps[i], "p50_ms": p50[i], "p99_ms": p99[i],
            "ratio_vs_no_filter": rps[i] / rps[0], "ratio_vs_empty_wasm": rps[i] / rps[1],
        })).collect::<Vec<_>>(),
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
