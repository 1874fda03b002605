//! `make bench`, the controller's checks and scrapes (issue 20, items 8 and 10), against a real
//! `rampctl serve` (release build, `RAMPCTL_BIN`). Every rollout is an A/B/n test of 16 arms with
//! 8 rules whose `min_samples` no window reaches, and one Envoy's report (52 latency buckets per
//! arm), so each check searches every earlier check for a window that holds enough samples:
//!
//! (a) CPU per check of such rollouts checking every 0.1 s, while their histories are about 10
//!     checks long and once they hold the 600 kept (the controller's CPU time from /proc over the
//!     checks counted on /metrics);
//! (b) state polls (p50, p99) and `/readyz` with 1,000 of them checking every 1 s, 15 s and 60 s
//!     after they were applied;
//! (c) one `/metrics` scrape of 2,000 of them (size, time), and state polls while 12 clients
//!     scrape `/metrics` back to back for 10 s.
//!
//! `RAMP_BENCH_LABEL` (`before` or `after`, default `after`) says which entry of
//! `tests/bench/results/controller-checks.json` this run replaces (`RAMP_BENCH_COMMIT`: the commit
//! it measured, default `git rev-parse --short HEAD`); `controller-checks.md` is written from all
//! entries (`RAMP_BENCH_PARTS=a`, say, runs part (a) alone and writes nothing). Not a test:
//! nothing here passes or fails on a time.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ramp_tests::controller::{rampctl_binary, Controller};
use ramp_tests::envoy::repo_root;
use ramp_tests::procfs::{cpu_seconds, rss_mb};
use serde_json::{json, Value};

const ARMS: usize = 16;
const RULES: [&str; 8] = [
    "{metric: error_rate, max: 0.05, min_samples: 1000000000}",
    "{metric: latency_p50, max: 100, min_samples: 1000000000}",
    "{metric: latency_p95, max: 200, min_samples: 1000000000}",
    "{metric: latency_p99, max: 500, min_samples: 1000000000}",
    "{metric: error_rate_vs_baseline, max: 0.01, min_samples: 1000000000}",
    "{metric: latency_slower, max: 0.6, min_samples: 1000000000}",
    "{metric: accuracy, min: 0.9, min_samples: 1000000000}",
    "{metric: error_rate, max_worse_than_baseline: 0.01, min_samples: 1000000000}",
];

fn spec(name: &str, interval_s: f64) -> String {
    let arms: Vec<String> = (1..=ARMS)
        .map(|i| {
            let role = if i == 1 { "baseline" } else { "candidate" };
            format!("{{name: v{i}, role: {role}}}")
        })
        .collect();
    let rules: String = RULES.iter().map(|r| format!("    - {r}\n")).collect();
    format!(
        "name: {name}\nstrategy: ab_test\nab_test: {{metric: success_rate}}\narms: [{}]\ncheck_interval_s: {interval_s}\nstages:\n- weight: 50\n  min_duration_s: 86400\n  rules:\n{rules}- weight: 100\n",
        arms.join(", ")
    )
}

/// One Envoy's report: a few hundred requests per arm over the 52 latency buckets.
fn report() -> String {
    let le = ramp_protocol::report::latency_le();
    let arms: serde_json::Map<String, Value> = (1..=ARMS)
        .map(|i| {
            let n = 300 + i as u64;
            let counts: Vec<u64> = (0..le.len())
                .map(|b| (n * (b as u64 + 1) / le.len() as u64).min(n))
                .collect();
            let arm = json!({"requests": n, "responses": {"2xx": n - 3, "3xx": 0, "4xx": 0, "5xx": 3},
                             "latency_ms": {"le": le, "counts": counts}});
            (format!("v{i}"), arm)
        })
        .collect();
    json!({"instance": "envoy-0", "seq": 1, "arms": arms}).to_string()
}

/// Applies `n` rollouts `<prefix>0..` checking every `interval_s` and posts each its report, from
/// 4 threads.
fn setup(controller: &Controller, prefix: &str, n: usize, interval_s: f64) -> Result<()> {
    let body = report();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let body = &body;
                s.spawn(move || -> Result<()> {
                    let agent = ureq::agent();
                    for i in (t..n).step_by(4) {
                        let name = format!("{prefix}{i}");
                        controller.apply(&spec(&name, interval_s))?;
                        let code = agent
                            .post(&controller.url(&format!("/v1/rollouts/{name}/reports")))
                            .send_string(body)?
                            .status();
                        ensure!(code == 204, "report answered {code}");
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| anyhow::anyhow!("setup thread"))?)
    })
}

/// When the last `scrape` was answered.
static LAST_SCRAPE: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
/// The controller answers scrapes within 1 s of a rendering's start with that rendering; spaced
/// this far apart, each of these scrapes is rendered afresh.
const SCRAPE_SPACING: Duration = Duration::from_millis(1100);

/// One `/metrics` scrape, at least `SCRAPE_SPACING` after the last: its text and how long it took.
fn scrape(controller: &Controller) -> Result<(String, Duration)> {
    let last = *LAST_SCRAPE.lock().map_err(|_| anyhow::anyhow!("lock"))?;
    if let Some(last) = last {
        std::thread::sleep(SCRAPE_SPACING.saturating_sub(last.elapsed()));
    }
    let t = Instant::now();
    let mut text = String::new();
    ureq::get(&controller.url("/metrics"))
        .timeout(Duration::from_secs(120))
        .call()?
        .into_reader()
        .read_to_string(&mut text)?;
    *LAST_SCRAPE.lock().map_err(|_| anyhow::anyhow!("lock"))? = Some(Instant::now());
    Ok((text, t.elapsed()))
}

/// Each rollout's checks so far, from a `/metrics` text.
fn checks(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("ramp_controller_checks_total{rollout=\""))
        .filter_map(|l| {
            let (name, rest) = l.split_once('"')?;
            Some((name.to_owned(), rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// (controller CPU seconds, each rollout's checks, when).
type Sample = (f64, BTreeMap<String, u64>, Instant);

fn sample(controller: &Controller, pid: u32) -> Result<Sample> {
    let (text, _) = scrape(controller)?;
    Ok((cpu_seconds(pid)?, checks(&text), Instant::now()))
}

/// Between two samples: (CPU seconds, checks, wall seconds, the sum over the checks of the
/// history each was judged with: its earlier checks in the stage, at most 600).
fn between(a: &Sample, b: &Sample) -> (f64, u64, f64, f64) {
    let (mut done, mut history) = (0, 0.0);
    for (name, &to) in &b.1 {
        let from = a.1.get(name).copied().unwrap_or(0);
        done += to.saturating_sub(from);
        history += (from..to).map(|k| k.min(600) as f64).sum::<f64>();
    }
    (
        b.0 - a.0,
        done,
        b.2.duration_since(a.2).as_secs_f64(),
        history,
    )
}

/// CPU per check (ms), checks per second, the controller's CPU share and the mean history over
/// the windows `parts`.
fn per_check(parts: &[(f64, u64, f64, f64)]) -> Value {
    let cpu: f64 = parts.iter().map(|p| p.0).sum();
    let done: u64 = parts.iter().map(|p| p.1).sum();
    let wall: f64 = parts.iter().map(|p| p.2).sum();
    let history: f64 = parts.iter().map(|p| p.3).sum();
    json!({"cpu_ms_per_check": cpu * 1e3 / done.max(1) as f64, "checks": done,
           "checks_per_s": done as f64 / wall, "cpu_share": cpu / wall,
           "mean_history": history / done.max(1) as f64, "seconds": wall})
}

/// State polls of `rollout` over one connection, one every `POLL_EVERY` (or as soon as the last
/// answered) for `POLL_FOR`: (p50, p99, max) in ms, and how many.
fn polls(controller: &Controller, rollout: &str) -> Result<Value> {
    let agent = ureq::agent();
    let url = controller.url(&format!("/v1/rollouts/{rollout}/state?instance=envoy-0"));
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < POLL_FOR {
        let t = Instant::now();
        let body = agent.get(&url).call()?.into_string()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        ensure!(body.contains("\"weights\""), "not a state: {body}");
        std::thread::sleep(POLL_EVERY.saturating_sub(t.elapsed()));
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    Ok(json!({"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0), "polls": times.len()}))
}

const POLL_EVERY: Duration = Duration::from_millis(10);
const POLL_FOR: Duration = Duration::from_secs(10);

/// `/readyz`'s time (ms), the worst of three.
fn readyz(controller: &Controller) -> Result<f64> {
    let mut worst: f64 = 0.0;
    for _ in 0..3 {
        let t = Instant::now();
        let _ = ureq::get(&controller.url("/readyz")).call();
        worst = worst.max(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(worst)
}

/// (a) CPU per check at history ~10 and at 600.
fn check_cost(dir: &std::path::Path) -> Result<Value> {
    const ROLLOUTS: usize = 4;
    const ROUNDS: usize = 5;
    let controller = Controller::start(&dir.join("a.db"), "bench")?;
    let pid = controller.pid().context("controller pid")?;
    // Short histories: 4 new rollouts at a time, measured over about their first 15 checks, then
    // rolled back (a rolled-back rollout checks no more); 5 rounds, for enough CPU ticks.
    let mut short = Vec::new();
    for round in 0..ROUNDS {
        let prefix = format!("s{round}-");
        // The round's first scrape must be rendered afresh (`SCRAPE_SPACING`) yet come early in
        // its rollouts' histories: wait before applying them.
        std::thread::sleep(SCRAPE_SPACING);
        setup(&controller, &prefix, ROLLOUTS, 0.1)?;
        std::thread::sleep(Duration::from_millis(300));
        let first = sample(&controller, pid)?;
        std::thread::sleep(Duration::from_millis(1200));
        let second = sample(&controller, pid)?;
        short.push(between(&first, &second));
        for i in 0..ROLLOUTS {
            controller.call(
                "POST",
                &format!("/v1/rollouts/{prefix}{i}/commands"),
                Some(r#"{"command":"roll_back"}"#),
                true,
            )?;
        }
    }
    let short = per_check(&short);
    println!("(a) short histories: {short}");
    // Until every history holds the 600 kept checks (or 240 s, for a controller that cannot
    // keep up; the figures then say how far it got).
    setup(&controller, "a", ROLLOUTS, 0.1)?;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let at = sample(&controller, pid)?;
        let least = (0..ROLLOUTS)
            .map(|i| at.1.get(&format!("a{i}")).copied().unwrap_or(0))
            .min()
            .unwrap_or(0);
        if least >= 610 || Instant::now() > deadline {
            break;
        }
    }
    let from = sample(&controller, pid)?;
    std::thread::sleep(Duration::from_secs(10));
    let to = sample(&controller, pid)?;
    let mut long = per_check(&[between(&from, &to)]);
    long["rss_mb"] = json!(rss_mb(pid)?);
    println!("(a) history 600: {long}");
    let ratio = long["cpu_ms_per_check"].as_f64().unwrap_or(0.0)
        / short["cpu_ms_per_check"].as_f64().unwrap_or(1.0).max(1e-9);
    Ok(
        json!({"rollouts": ROLLOUTS, "interval_s": 0.1, "short_history": short,
              "long_history": long, "ratio_long_to_short": ratio}),
    )
}

/// (b) State polls and `/readyz` with 1,000 rollouts checking every 1 s.
fn idle_polls(dir: &std::path::Path) -> Result<Value> {
    const ROLLOUTS: usize = 1000;
    let controller = Controller::start(&dir.join("b.db"), "bench")?;
    let pid = controller.pid().context("controller pid")?;
    let t = Instant::now();
    setup(&controller, "b", ROLLOUTS, 1.0)?;
    let applied = Instant::now();
    println!(
        "(b) {ROLLOUTS} rollouts applied in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let cpu0 = cpu_seconds(pid)?;
    let mut out = Vec::new();
    for after in [15u64, 60] {
        let wait = Duration::from_secs(after).saturating_sub(applied.elapsed());
        std::thread::sleep(wait);
        let at = applied.elapsed().as_secs_f64();
        let cpu_share = (cpu_seconds(pid)? - cpu0) / at;
        let p = polls(&controller, "b0")?;
        let ready = readyz(&controller)?;
        println!("(b) {at:.0} s after applying: polls {p}, /readyz {ready:.1} ms, controller CPU {cpu_share:.2} cores since");
        out.push(
            json!({"seconds_after_apply": at, "polls": p, "readyz_ms": ready,
                        "cpu_share_since_apply": cpu_share, "rss_mb": rss_mb(pid)?}),
        );
    }
    Ok(json!({"rollouts": ROLLOUTS, "interval_s": 1.0, "samples": out}))
}

/// (c) `/metrics` of 2,000 rollouts: one scrape, and polls while 12 clients scrape.
fn scrapes(dir: &std::path::Path) -> Result<Value> {
    const ROLLOUTS: usize = 2000;
    let controller = Controller::start(&dir.join("c.db"), "bench")?;
    // Checks every 60 s: each rollout's first check (its rule series) at once, then little load.
    setup(&controller, "c", ROLLOUTS, 60.0)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let (text, _) = scrape(&controller)?;
        let c = checks(&text);
        if (c.len() >= ROLLOUTS && c.values().all(|&n| n > 0)) || Instant::now() > deadline {
            break;
        }
    }
    let (text, took) = scrape(&controller)?;
    let one = json!({"bytes": text.len(), "lines": text.lines().count(),
                     "seconds": took.as_secs_f64()});
    drop(text);
    println!("(c) one scrape: {one}");
    let idle = polls(&controller, "c0")?;
    println!("(c) polls, no scrapes: {idle}");
    let stop = Arc::new(AtomicBool::new(false));
    let (done, slowest, spent) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let url = controller.url("/metrics");
    let scrapers: Vec<_> = (0..12)
        .map(|_| {
            let (stop, done, slowest, spent, url) = (
                stop.clone(),
                done.clone(),
                slowest.clone(),
                spent.clone(),
                url.clone(),
            );
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(120))
                    .build();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if let Ok(r) = agent.get(&url).call() {
                        // Read and drop: the scrapers' own cost is not the controller's.
                        let _ = std::io::copy(&mut r.into_reader(), &mut std::io::sink());
                        done.fetch_add(1, Ordering::Relaxed);
                        let ms = t.elapsed().as_millis() as u64;
                        slowest.fetch_max(ms, Ordering::Relaxed);
                        spent.fetch_add(ms, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let busy = polls(&controller, "c0")?;
    stop.store(true, Ordering::Relaxed);
    for s in scrapers {
        let _ = s.join();
    }
    let scraped = done.load(Ordering::Relaxed);
    println!(
        "(c) polls while 12 clients scrape: {busy} ({scraped} scrapes, slowest {} ms)",
        slowest.load(Ordering::Relaxed)
    );
    Ok(
        json!({"rollouts": ROLLOUTS, "arms": ARMS, "one_scrape": one, "polls_idle": idle,
              "polls_during_12_scrapers": busy, "scrapes_answered": scraped,
              "slowest_scrape_ms": slowest.load(Ordering::Relaxed),
              "mean_scrape_ms": spent.load(Ordering::Relaxed) as f64 / scraped.max(1) as f64}),
    )
}

fn markdown(all: &Value) -> String {
    let labels: Vec<&str> = ["before", "after"]
        .into_iter()
        .filter(|l| all.get(*l).is_some())
        .collect();
    let head = |first: &str| {
        let mut h = format!("| {first} |");
        let mut rule = String::from("|---|");
        for l in &labels {
            h.push_str(&format!(
                " {l} ({}) |",
                all[*l]["commit"].as_str().unwrap_or("?")
            ));
            rule.push_str("---|");
        }
        format!("{h}\n{rule}\n")
    };
    let row = |what: &str, f: &dyn Fn(&Value) -> String| {
        let mut r = format!("| {what} |");
        for l in &labels {
            r.push_str(&format!(" {} |", f(&all[*l])));
        }
        r.push('\n');
        r
    };
    let num = |v: &Value, digits: usize| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
    };
    let mut md = String::from(
        "# Controller: check cost and /metrics\n\n\
         `make bench` (`tests/tools/src/bin/ramp-bench-checks.rs`): a release `rampctl serve` on loopback, on a \
         shared 2-core machine. Every rollout is an A/B/n test of 16 arms with 8 rules (error rate, p50, \
         p95, p99, error rate vs baseline, latency_slower, accuracy, error rate worse than baseline) whose \
         `min_samples` (10^9) no window reaches, and one Envoy's report. `before` is the code of issue 20 \
         (each check built a window per earlier check, up to 600, per rule and candidate, on the async \
         workers; every scrape rendered /metrics on an async worker), `after` this branch.\n\n\
         ## (a) CPU per check against history length\n\n\
         Rollouts checking every 0.1 s; the controller's CPU time (/proc, 10 ms ticks) over the checks \
         counted on /metrics. Short histories: 5 rounds of 4 new rollouts, each measured over about its \
         first 15 checks, then rolled back. History 600: 4 rollouts, over 10 s once each has made 610 \
         checks (or after 240 s, if the controller cannot keep up).\n\n",
    );
    md.push_str(&head("figure"));
    for (what, key) in [
        ("short history", "short_history"),
        ("history 600", "long_history"),
    ] {
        md.push_str(&row(&format!("CPU per check, {what} (ms)"), &|v| {
            num(&v["checks"][key]["cpu_ms_per_check"], 2)
        }));
        md.push_str(&row(
            &format!("mean history of the checks measured, {what}"),
            &|v| num(&v["checks"][key]["mean_history"], 0),
        ));
        md.push_str(&row(
            &format!("checks per second achieved, {what} (4 rollouts want 40)"),
            &|v| num(&v["checks"][key]["checks_per_s"], 1),
        ));
        md.push_str(&row(&format!("controller CPU (cores), {what}"), &|v| {
            num(&v["checks"][key]["cpu_share"], 2)
        }));
    }
    md.push_str(&row(
        "controller memory (RSS, MB) with 4 histories of 600 and 20 short ones",
        &|v| num(&v["checks"]["long_history"]["rss_mb"], 0),
    ));
    md.push_str(&row("CPU per check, history 600 / short history", &|v| {
        num(&v["checks"]["ratio_long_to_short"], 2)
    }));
    md.push_str(&row(
        "the same as a share of one core for 100 rollouts checking every 1 s, history 600 (derived: CPU per check x 100/s)",
        &|v| {
            v["checks"]["long_history"]["cpu_ms_per_check"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |ms| format!("{:.0}%", ms * 100.0 / 10.0))
        },
    ));
    md.push_str(
        "\n## (b) State polls with 1,000 rollouts\n\n\
         1,000 rollouts checking every 1 s; `GET /v1/rollouts/<r>/state` over one connection, one every \
         10 ms (or as soon as the last answered) for 10 s, and `/readyz` (worst of 3), 15 s and 60 s \
         after all were applied.\n\n",
    );
    md.push_str(&head("figure"));
    for (i, when) in ["15 s", "60 s"].iter().enumerate() {
        md.push_str(&row(&format!("poll p50 (ms), {when}"), &|v| {
            num(&v["idle_polls"]["samples"][i]["polls"]["p50_ms"], 2)
        }));
        md.push_str(&row(&format!("poll p99 (ms), {when}"), &|v| {
            num(&v["idle_polls"]["samples"][i]["polls"]["p99_ms"], 2)
        }));
        md.push_str(&row(&format!("polls answered in the 10 s, {when}"), &|v| {
            num(&v["idle_polls"]["samples"][i]["polls"]["polls"], 0)
        }));
        md.push_str(&row(&format!("/readyz (ms), {when}"), &|v| {
            num(&v["idle_polls"]["samples"][i]["readyz_ms"], 1)
        }));
        md.push_str(&row(
            &format!("controller memory (RSS, MB), {when}"),
            &|v| num(&v["idle_polls"]["samples"][i]["rss_mb"], 0),
        ));
        md.push_str(&row(
            &format!("controller CPU since applied (cores), {when}"),
            &|v| num(&v["idle_polls"]["samples"][i]["cpu_share_since_apply"], 2),
        ));
    }
    md.push_str(
        "\n## (c) /metrics with 2,000 rollouts of 16 arms\n\n\
         One scrape once every rollout has checked (checks every 60 s), then state polls as in (b) for \
         10 s, idle and while 12 clients scrape /metrics back to back.\n\n",
    );
    md.push_str(&head("figure"));
    md.push_str(&row("one scrape (MB)", &|v| {
        v["metrics"]["one_scrape"]["bytes"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |b| format!("{:.1}", b / 1e6))
    }));
    md.push_str(&row("one scrape (s)", &|v| {
        num(&v["metrics"]["one_scrape"]["seconds"], 2)
    }));
    md.push_str(&row("poll p50 / p99 (ms), no scrapes", &|v| {
        format!(
            "{} / {}",
            num(&v["metrics"]["polls_idle"]["p50_ms"], 2),
            num(&v["metrics"]["polls_idle"]["p99_ms"], 2)
        )
    }));
    md.push_str(&row("poll p50 / p99 / max (ms), 12 scrapers", &|v| {
        format!(
            "{} / {} / {}",
            num(&v["metrics"]["polls_during_12_scrapers"]["p50_ms"], 2),
            num(&v["metrics"]["polls_during_12_scrapers"]["p99_ms"], 2),
            num(&v["metrics"]["polls_during_12_scrapers"]["max_ms"], 0)
        )
    }));
    md.push_str(&row("polls answered in the 10 s, 12 scrapers", &|v| {
        num(&v["metrics"]["polls_during_12_scrapers"]["polls"], 0)
    }));
    md.push_str(&row("scrapes answered (12 clients)", &|v| {
        num(&v["metrics"]["scrapes_answered"], 0)
    }));
    md.push_str(&row("mean scrape, 12 clients (ms)", &|v| {
        num(&v["metrics"]["mean_scrape_ms"], 0)
    }));
    md.push_str(&row("slowest scrape (ms)", &|v| {
        num(&v["metrics"]["slowest_scrape_ms"], 0)
    }));
    md
}

fn main() -> Result<()> {
    let label = std::env::var("RAMP_BENCH_LABEL").unwrap_or_else(|_| "after".to_owned());
    ensure!(
        label == "before" || label == "after",
        "RAMP_BENCH_LABEL is before or after"
    );
    let commit = std::env::var("RAMP_BENCH_COMMIT").unwrap_or_else(|_| {
        std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(repo_root())
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map_or_else(|| "?".to_owned(), |s| s.trim().to_owned())
    });
    println!("{label}: {} ({commit})", rampctl_binary().display());
    // `RAMP_BENCH_PARTS` (e.g. `a`) runs only some parts, and writes no results.
    let parts = std::env::var("RAMP_BENCH_PARTS").unwrap_or_else(|_| "abc".to_owned());
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let checks = if parts.contains('a') {
        check_cost(dir.path())?
    } else {
        Value::Null
    };
    let idle = if parts.contains('b') {
        idle_polls(dir.path())?
    } else {
        Value::Null
    };
    let metrics = if parts.contains('c') {
        scrapes(dir.path())?
    } else {
        Value::Null
    };
    println!("bench took {:.0} s", started.elapsed().as_secs_f64());
    if parts != "abc" {
        return Ok(());
    }
    let out = repo_root().join("tests/bench/results/controller-checks.json");
    let mut all: Value = std::fs::read_to_string(&out)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({}));
    all[&label] =
        json!({"commit": commit, "checks": checks, "idle_polls": idle, "metrics": metrics});
    std::fs::write(&out, serde_json::to_string_pretty(&all)? + "\n")?;
    let md = repo_root().join("tests/bench/results/controller-checks.md");
    std::fs::write(&md, markdown(&all))?;
    println!("wrote {} and {}", out.display(), md.display());
    Ok(())
}
