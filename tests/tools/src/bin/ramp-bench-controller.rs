//! `make bench`, controller part, against a real `rampctl serve` (release build, `RAMPCTL_BIN`):
//! 1. What one filter poll of `GET /v1/rollouts/<r>/state` costs as the fleet grows (N instances'
//!    reports posted, then timed polls over one keep-alive connection).
//! 2. Whether polls wait on anything else: the poll p99 while (a) another rollout's Prometheus
//!    answers in 2 s, (b) another rollout's hook takes 5 s, (c) 200 clients post reports, at 10 Hz
//!    each and as fast as they can; each as a ratio to the idle p99 of the same run (target <= 2x).
//! 3. Report intake: reports the controller absorbs per second of its own CPU time (one core)
//!    with 1, 100 and 2,000 Envoys reporting (goal: 10,000 Envoys at 1 Hz on one core).
//!
//! Writes `tests/bench/results/controller-state.md`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ramp_tests::canned::{CannedServer, EMPTY_PROMETHEUS};
use ramp_tests::controller::Controller;
use ramp_tests::envoy::repo_root;
use ramp_tests::procfs::cpu_seconds;

const POLLS: usize = 2000;
const ARMS: &str = "arms: [{name: v1, role: baseline}, {name: v2, role: candidate}]";

/// `POLLS` timed state polls of `rollout` over one connection: (median, p99) in microseconds.
fn polls(controller: &Controller, rollout: &str) -> Result<(f64, f64)> {
    let agent = ureq::agent();
    let url = controller.url(&format!("/v1/rollouts/{rollout}/state?instance=envoy-0"));
    let mut times = Vec::with_capacity(POLLS);
    for _ in 0..POLLS {
        let t = Instant::now();
        let body = agent.get(&url).call()?.into_string()?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
        ensure!(body.contains("\"weights\""), "not a state: {body}");
    }
    times.sort_by(f64::total_cmp);
    Ok((times[POLLS / 2], times[POLLS * 99 / 100]))
}

/// Posts reports from `clients` threads over `fleet` instance ids (each with a rising `seq`) for
/// `secs`; returns (reports accepted per wall second, per controller CPU second).
fn intake(controller: &Controller, fleet: usize, clients: usize, secs: f64) -> Result<(f64, f64)> {
    let pid = controller.pid().context("controller pid")?;
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let seq0 = 1_000_000 * fleet as u64; // above anything posted before for these ids
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            let url = controller.url("/v1/rollouts/bench/reports");
            std::thread::spawn(move || {
                let agent = ureq::agent();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let instance = (c + clients * n as usize) % fleet;
                    if let Ok(r) = agent
                        .post(&url)
                        .send_string(&ramp_tools::synthetic_report(instance, seq0 + n))
                    {
                        if r.status() == 204 {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    n += 1;
                }
            })
        })
        .collect();
    let (cpu0, t0) = (cpu_seconds(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (n, wall, cpu) = (
        accepted.load(Ordering::Relaxed) as f64,
        t0.elapsed().as_secs_f64(),
        cpu_seconds(pid)? - cpu0,
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    Ok((n / wall, n / cpu.max(0.01)))
}

/// The poll p99 of `bench` while 200 clients post reports over 2,000 instance ids to `target`
/// (the controller's report URL, or another server's as a control), each waiting `period`
/// between posts (`None`: none).
fn with_posters(controller: &Controller, target: &str, period: Option<Duration>) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let base = 10_000_000_000 + u64::from(period.is_none()) * 10_000_000_000;
    let posters: Vec<_> = (0..200)
        .map(|i| {
            let stop = stop.clone();
            let url = target.to_owned();
            std::thread::spawn(move || {
                let agent = ureq::agent();
                let mut seq = base;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let _ = agent
                        .post(&url)
                        .send_string(&ramp_tools::synthetic_report(i * 10, seq));
                    seq += 1;
                    if let Some(p) = period {
                        std::thread::sleep(p.saturating_sub(t.elapsed()));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let p99 = polls(controller, "bench")?.1;
    stop.store(true, Ordering::Relaxed);
    for p in posters {
        let _ = p.join();
    }
    Ok(p99)
}

fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Open, so the posters and pollers need no header: a token check is one constant-time
    // compare, not what this bench measures.
    let controller = Controller::start_with(
        &dir.path().join("ramp.db"),
        "bench",
        0,
        &["--insecure-no-auth"],
    )?;
    controller.apply(&format!("name: bench\nstrategy: bandit\n{ARMS}\nstages: [{{weight: 50, min_duration_s: 86400}}, {{weight: 100}}]\n"))?;
    let agent = ureq::agent();
    let mut rows = Vec::new();
    let mut posted = 0;
    for fleet in [1usize, 10, 100, 500, 2000] {
        while posted < fleet {
            let code = agent
                .post(&controller.url("/v1/rollouts/bench/reports"))
                .send_string(&ramp_tools::synthetic_report(posted, 1))?
                .status();
            ensure!(code == 204, "report answered {code}");
            posted += 1;
        }
        std::thread::sleep(Duration::from_millis(300)); // the flusher has written them
        let (median, p99) = polls(&controller, "bench")?;
        println!("{fleet:>5} Envoys reporting: poll median {median:.0} us, p99 {p99:.0} us");
        rows.push((fleet, median, p99));
    }
    let idle_p99 = rows[rows.len() - 1].2;

    // (a) Another rollout whose Prometheus answers in 2 s: its checks wait, polls do not.
    let prometheus = CannedServer::start(0, 200, EMPTY_PROMETHEUS)?;
    controller.apply(&format!(
        "name: promslow\n{ARMS}\ncheck_interval_s: 0.5\nmetrics: {{prometheus: '{}'}}\nstages: [{{weight: 50, min_duration_s: 86400}}, {{weight: 100}}]\n",
        format_args!("http://127.0.0.1:{}", prometheus.port)
    ))?;
    prometheus.delay_ms.store(2000, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    let slow_prometheus = polls(&controller, "bench")?
        .1
        .max(polls(&controller, "promslow")?.1);
    ensure!(
        prometheus.hits.load(Ordering::Relaxed) > 3,
        "Prometheus was not queried"
    );

    // (b) Another rollout whose before_promotion hook takes 5 s.
    let hook = CannedServer::start(5000, 200, "{}")?;
    controller.apply(&format!(
        "name: hooked\n{ARMS}\ncheck_interval_s: 0.2\nhooks: [{{on: before_promotion, url: 'http://127.0.0.1:{}/hook', timeout_s: 30, retries: 0}}]\nstages: [{{weight: 10}}, {{weight: 100}}]\n",
        hook.port
    ))?;
    let t = Instant::now();
    while hook.hits.load(Ordering::Relaxed) == 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(
        hook.hits.load(Ordering::Relaxed) > 0,
        "the hook was not called"
    );
    let slow_hook = polls(&controller, "bench")?
        .1
        .max(polls(&controller, "hooked")?.1);

    // (c) 200 clients posting reports: at 10 Hz each (2,000 reports/s, 2,000 Envoys at their
    // default 1 Hz), then as fast as they can (the machine's two cores saturated).
    let reports = controller.url("/v1/rollouts/bench/reports");
    let tenth = Some(Duration::from_millis(100));
    let paced = with_posters(&controller, &reports, tenth)?;
    let flat_out = with_posters(&controller, &reports, None)?;
    // Control: the same 200 clients at 10 Hz posting to another server on this machine, so the
    // controller has nothing more to do and only the machine is busier.
    let elsewhere = CannedServer::start(0, 204, "")?;
    let control = with_posters(
        &controller,
        &format!("http://127.0.0.1:{}/", elsewhere.port),
        tenth,
    )?;
    let loads = [
        (
            "another rollout's Prometheus answers in 2 s",
            slow_prometheus,
        ),
        (
            "another rollout's before_promotion hook takes 5 s",
            slow_hook,
        ),
        (
            "200 clients post reports at 10 Hz each (2,000 reports/s)",
            paced,
        ),
        (
            "200 clients post reports as fast as they can (CPU saturated)",
            flat_out,
        ),
        (
            "control: the same 200 clients at 10 Hz post to another server",
            control,
        ),
    ];
    for (what, p99) in &loads {
        println!(
            "while {what}: poll p99 {p99:.0} us ({:.2}x idle)",
            p99 / idle_p99
        );
    }

    // Report intake per CPU second of the controller.
    let mut intakes = Vec::new();
    for fleet in [1usize, 100, 2000] {
        let (per_wall, per_cpu) = intake(&controller, fleet, 8, 3.0)?;
        println!("{fleet:>5} Envoys: {per_wall:.0} reports/s absorbed, {per_cpu:.0} per CPU second of the controller");
        intakes.push((fleet, per_wall, per_cpu));
    }

    let base = rows[0].1;
    let mut md = String::from(
        "# Controller: state polls and report intake\n\n\
         `make bench` (`tests/tools/src/bin/ramp-bench-controller.rs`): a release `rampctl serve` on loopback, \
         timed at the client; ratios are within this run, on a shared 2-core machine.\n\n\
         ## One filter poll as the fleet grows\n\n\
         N Envoys' reports posted, then 2000 `GET /v1/rollouts/<r>/state?instance=...` over one keep-alive connection.\n\n\
         | Envoys reporting | poll median (us) | poll p99 (us) | median vs 1 Envoy |\n|---|---|---|---|\n",
    );
    for (fleet, median, p99) in &rows {
        md.push_str(&format!(
            "| {fleet} | {median:.0} | {p99:.0} | {:.2} |\n",
            median / base
        ));
    }
    md.push_str(
        "\n## Polls under load\n\n2000 polls (of the busy rollout and of another, the worse p99 of the two) \
         while the controller is busy elsewhere; target <= 2x the idle p99 (2,000 Envoys row above).\n\n\
         | while | poll p99 (us) | vs idle p99 |\n|---|---|---|\n",
    );
    for (what, p99) in &loads {
        md.push_str(&format!("| {what} | {p99:.0} | {:.2} |\n", p99 / idle_p99));
    }
    md.push_str(
        "\n## Report intake\n\n8 clients post reports over N instance ids (rising `seq`) for 3 s; \
         reports accepted (204) per wall second and per second of the controller's own CPU time \
         (`/proc/<pid>/stat`; the clients share the machine, so per CPU second is the figure for one \
         dedicated core). Goal: 10,000 Envoys at 1 Hz on one core.\n\n\
         | Envoys | reports/s (wall) | reports per controller CPU second |\n|---|---|---|\n",
    );
    for (fleet, wall, cpu) in &intakes {
        md.push_str(&format!("| {fleet} | {wall:.0} | {cpu:.0} |\n"));
    }
    let out = repo_root().join("tests/bench/results/controller-state.md");
    std::fs::write(&out, md)?;
    println!("wrote {}", out.display());
    Ok(())
}
