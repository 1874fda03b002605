//! Loading an Envoy with wrk and reading what it cost: the method `make bench` measures capacity
//! by (`ramp-bench`, `ramp-bench-guard`). Each Envoy's CPU time per request, read from its own
//! threads, with the load generator pinned to core 0 and the Envoys to core 1.

use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use ramp_tests::Envoy;

/// Every request carries a fresh user id, so the sticky variant hashes a new key each time.
pub const WRK_SCRIPT: &str = r#"
math.randomseed(42)
request = function()
  wrk.headers["x-user-id"] = "user-" .. math.random(1, 1000000)
  return wrk.format(nil, "/predict")
end
"#;

pub struct Run {
    pub rps: f64,
    /// Envoy CPU time per request, in microseconds.
    pub cpu_us: f64,
}

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A wrk run under way against one Envoy, with that Envoy's CPU time when it started.
pub struct Pending {
    child: std::process::Child,
    cpu_before: u64,
}

/// Starts wrk on core 0 (the Envoys are pinned to core 1, so they never queue behind wrk).
/// `start_wrk` on one of the Envoy's listeners, by name.
pub fn start_wrk_on(
    envoy: &Envoy,
    listener: &str,
    script: &std::path::Path,
    seconds: u64,
    connections: u64,
) -> Result<Pending> {
    start_wrk(
        envoy,
        &envoy.listener_url(listener, "/")?,
        script,
        seconds,
        connections,
    )
}

pub fn start_wrk(
    envoy: &Envoy,
    url: &str,
    script: &std::path::Path,
    seconds: u64,
    connections: u64,
) -> Result<Pending> {
    let cpu_before = envoy.cpu_ns().ok_or_else(|| anyhow!("envoy is gone"))?;
    let child = Command::new("taskset")
        .args([
            "-c",
            "0",
            "wrk",
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "-s",
        ])
        .arg(script)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("running wrk (make bench installs it)")?;
    Ok(Pending { child, cpu_before })
}

impl Pending {
    pub fn finish(self, envoy: &Envoy) -> Result<Run> {
        let out = self.child.wait_with_output()?;
        let cpu_used = envoy.cpu_ns().ok_or_else(|| anyhow!("envoy is gone"))? - self.cpu_before;
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
        })
    }
}

/// Every Envoy thread on `core`; wrk runs on core 0.
pub fn pin(envoy: &Envoy, core: usize) -> Result<()> {
    let pid = envoy.pid().ok_or_else(|| anyhow!("envoy is gone"))?;
    let pinned = Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()])
        .output()
        .context("taskset (util-linux)")?;
    if !pinned.status.success() {
        bail!("taskset: {}", String::from_utf8_lossy(&pinned.stderr));
    }
    Ok(())
}

/// Runs `f` on the rows of `runs` (one per round) and takes the median.
pub fn median_of<T>(rows: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(rows.iter().map(f).collect())
}

/// The middle value (the mean of the two middle ones for an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
