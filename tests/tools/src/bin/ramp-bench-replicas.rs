//! Report intake per CPU second, SQLite beside PostgreSQL, and with 1 and 3 replicas on one
//! PostgreSQL (issue 21): 8 clients post reports over 100 instance ids (rising `seq`) for 3 s,
//! spread over the replicas; reports accepted (204) per wall second, per CPU second of the
//! controllers, and per CPU second of the controllers and the database server together.
//!
//! Writes `tests/bench/results/replicas-intake.md`. Needs a release `rampctl` in `RAMPCTL_BIN`
//! (`make bench` builds it) and Debian's postgresql.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ramp_tests::controller::Controller;
use ramp_tests::envoy::repo_root;
use ramp_tests::postgres::Postgres;
use ramp_tests::procfs::cpu_seconds;

const SPEC: &str = "name: bench\nstrategy: bandit\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\nstages: [{weight: 50, min_duration_s: 86400}, {weight: 100}]\n";
const FLEET: usize = 100;
const CLIENTS: usize = 8;
const SECS: f64 = 3.0;

struct Row {
    what: String,
    per_wall: f64,
    per_rampctl_cpu: f64,
    per_all_cpu: Option<f64>,
}

fn controllers_cpu(cs: &[Controller]) -> Result<f64> {
    cs.iter()
        .map(|c| cpu_seconds(c.pid().context("pid")?))
        .sum()
}

fn intake(what: &str, cs: &[Controller], pg: Option<&Postgres>) -> Result<Row> {
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            let url = cs[c % cs.len()].url("/v1/rollouts/bench/reports");
            std::thread::spawn(move || {
                let agent = ureq::agent();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let instance = (c + CLIENTS * n as usize) % FLEET;
                    if let Ok(r) = agent
                        .post(&url)
                        .send_string(&ramp_tools::synthetic_report(instance, 1_000 + n))
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
    let db_cpu = || pg.map(Postgres::cpu_seconds).transpose();
    let (cpu0, db0, t0) = (controllers_cpu(cs)?, db_cpu()?, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(SECS));
    let (n, wall) = (
        accepted.load(Ordering::Relaxed) as f64,
        t0.elapsed().as_secs_f64(),
    );
    let (cpu, db) = (controllers_cpu(cs)? - cpu0, db_cpu()?);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let db = db.zip(db0).map(|(b, a)| b - a);
    println!("{what}: {n} reports in {wall:.2} s; CPU s: rampctl {cpu:.2}, PostgreSQL {db:?}");
    let row = Row {
        what: what.to_owned(),
        per_wall: n / wall,
        per_rampctl_cpu: n / cpu.max(0.01),
        per_all_cpu: db.map(|d| n / (cpu + d).max(0.01)),
    };
    println!(
        "{what}: {:.0} reports/s, {:.0} per rampctl CPU s, {:?} per rampctl+PostgreSQL CPU s",
        row.per_wall, row.per_rampctl_cpu, row.per_all_cpu
    );
    Ok(row)
}

fn serve(dir: &std::path::Path, n: usize, store: Option<&str>) -> Result<Controller> {
    let mut args = vec!["--insecure-no-auth"];
    if let Some(url) = store {
        args.extend(["--store", url]);
    }
    Controller::start_with(&dir.join(format!("ramp-{n}.db")), "bench", 0, &args)
}

fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();
    {
        let c = serve(dir.path(), 0, None)?;
        c.apply(SPEC)?;
        rows.push(intake("SQLite, 1 rampctl", std::slice::from_ref(&c), None)?);
    }
    for replicas in [1usize, 3] {
        let pg = Postgres::start()?;
        let cs: Vec<Controller> = (0..replicas)
            .map(|n| serve(dir.path(), 10 + n, Some(&pg.url())))
            .collect::<Result<_>>()?;
        cs[0].apply(SPEC)?;
        for c in &cs {
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.call("GET", "/v1/rollouts/bench", None, false)?.0 != 200 {
                ensure!(Instant::now() < deadline, "a replica never saw the rollout");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let what = format!(
            "PostgreSQL, {replicas} rampctl replica{}",
            if replicas > 1 { "s" } else { "" }
        );
        rows.push(intake(&what, &cs, Some(&pg))?);
    }
    let mut md = format!(
        "# Replicas: report intake, SQLite beside PostgreSQL\n\n\
         `RAMPCTL_BIN=target/release/rampctl cargo run --release -p ramp-tools --bin ramp-bench-replicas` \
         (`tests/tools/src/bin/ramp-bench-replicas.rs`): {CLIENTS} clients post reports over {FLEET} \
         instance ids (rising `seq`) for {SECS} s, spread over the replicas; reports accepted (204) \
         per wall second, per CPU second of the rampctl processes, and per CPU second of rampctl and \
         the PostgreSQL server's processes together (`/proc/<pid>/stat`). Everything shares one \
         2-core machine with the clients, so the wall figures are bounded by the machine, not by \
         rampctl; the per-CPU-second figures say what one dedicated core carries (they count the servers' CPU only, whatever the clients' build). The \
         PostgreSQL column is coarse: the server's processes are counted in 10 ms ticks, a few \
         ticks per run (the batched upserts cost it little). The test \
         PostgreSQL runs with `fsync=off` (SQLite with `synchronous=FULL`), so its figures leave \
         out the disk.\n\n\
         | store | reports/s (wall) | per rampctl CPU s | per rampctl + PostgreSQL CPU s |\n|---|---|---|---|\n"
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {} |\n",
            r.what,
            r.per_wall,
            r.per_rampctl_cpu,
            r.per_all_cpu.map_or("-".to_owned(), |v| format!("{v:.0}"))
        ));
    }
    md.push_str(
        "\nReports are kept in memory on arrival and written to the store in batches every 250 ms \
         (one transaction per batch), so intake costs the store one upsert per Envoy per batch, \
         not one per report; with replicas every replica also reads every rollout's reports once \
         a second (its refresh), which grows with the fleet, not with the report rate. The fleet \
         a set of replicas carries is the per-CPU figure times the cores given to rampctl, as long \
         as the one PostgreSQL keeps up with the batches.\n",
    );
    let path = repo_root().join("tests/bench/results/replicas-intake.md");
    std::fs::write(&path, md)?;
    println!("wrote {}", path.display());
    Ok(())
}
