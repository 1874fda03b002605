//! The guard scenario, shared by the end-to-end tests (`tests/tests/e2e/guard.rs`) and `make
//! bench` (`ramp-bench-guard`): two model servers (v1 the baseline, v2 the candidate) behind
//! several Envoys (`--concurrency 2` each), a 50/50 split, paced traffic through every Envoy;
//! healthy for a while, then the candidate fails one request in `fail_every`. Measured per Envoy:
//! "fault to 0%", the time from the fault to the send time of the last request that Envoy routed
//! to the candidate (the candidate answers with `x-served-by`, failing or not), once at least
//! `quiet` of later traffic went to the baseline alone.
//!
//! The split and the guard come from the filter config ([`Mode::Guard`]) or from a `rampctl
//! serve` with a rollout at 50% and an error-rate rule ([`Mode::Controller`]), with or without the
//! guard rampctl pushes in the live state.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::controller::{Controller, Rig};
use crate::prom::sample;
use crate::{two_arm_config, two_arm_config_with_controller, Envoy, ModelServer, Traffic};

/// Where the split and the guard come from.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Static 50/50 weights and this `guard` section in the filter config; no controller.
    Guard(Value),
    /// A rampctl rollout at 50% (`check_interval_s` 1, `failure_threshold` 2, `rule`), its guard
    /// in the live state on or off (`guard: {enabled: ...}` in the spec).
    Controller { rule: String, guard: bool },
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub rollout: String,
    pub mode: Mode,
    pub envoys: usize,
    /// Requests a second through each Envoy, and the keep-alive connections that carry them.
    pub rps_per_envoy: f64,
    pub connections: usize,
    /// How long the healthy candidate serves before the fault.
    pub healthy: Duration,
    /// The candidate fails one request in this many once faulty.
    pub fail_every: u64,
    /// Traffic that must reach the baseline alone after the last request to the candidate.
    pub quiet: Duration,
    /// How long to wait for every Envoy to reach 0%.
    pub timeout: Duration,
}

impl Scenario {
    pub fn new(rollout: &str, mode: Mode) -> Self {
        Self {
            rollout: rollout.to_owned(),
            mode,
            envoys: 2,
            rps_per_envoy: 500.0,
            connections: 8,
            healthy: Duration::from_secs(3),
            fail_every: 3,
            quiet: Duration::from_secs(1),
            timeout: Duration::from_secs(20),
        }
    }
}

/// What one Envoy saw.
#[derive(Debug, Clone)]
pub struct EnvoyOutcome {
    /// The candidate's share of the answers during the healthy period, and their number.
    pub healthy_share: f64,
    pub healthy_answers: usize,
    /// `ramp_guard_trips_total{arm="v2"}` at the fault (0 when absent).
    pub trips_at_fault: f64,
    /// Fault to the last request routed to the candidate; `None` if it never reached 0%.
    pub fault_to_zero: Option<Duration>,
    /// `ramp_guard_trips_total{arm="v2"}` once at 0% (0 when absent).
    pub trips: f64,
    /// The candidate's share of the answers in the last second of the run (after the wait for
    /// 0% and, with a controller, for the rollback): 0 unless something sent traffic back.
    pub share_at_end: f64,
    /// Answers a second over the whole run, and requests that failed below HTTP.
    pub achieved_rps: f64,
    pub errors: u64,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub envoys: Vec<EnvoyOutcome>,
    /// With a controller: the rollout's status once rolled back (or at the timeout), its history
    /// (kind, detail), and the time from the fault to its `rolled_back` event.
    pub status: Option<Value>,
    pub events: Vec<(String, String)>,
    pub fault_to_decision: Option<Duration>,
}

impl Outcome {
    /// The first Envoy to reach 0% (the one that tripped), if any did.
    pub fn first_to_zero(&self) -> Option<Duration> {
        self.envoys.iter().filter_map(|e| e.fault_to_zero).min()
    }

    /// When every Envoy was at 0%, if all got there.
    pub fn every_to_zero(&self) -> Option<Duration> {
        self.envoys
            .iter()
            .map(|e| e.fault_to_zero)
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max()
    }
}

/// `ramp_guard_trips_total{rollout, arm}` on one Envoy, 0 when absent.
pub fn trips(envoy: &Envoy, rollout: &str, arm: &str) -> Result<f64> {
    let text = envoy.prometheus()?;
    Ok(sample(
        &text,
        "ramp_guard_trips_total",
        &[("rollout", rollout), ("arm", arm)],
    )
    .unwrap_or(0.0))
}

/// The rollout spec of [`Mode::Controller`]: a stage at 50% that never ends on time alone.
pub fn controller_spec(rollout: &str, rule: &str, guard: bool) -> String {
    format!(
        "name: {rollout}\narms: [{{name: v1, role: baseline}}, {{name: v2, role: candidate}}]\n\
         check_interval_s: 1\nfailure_threshold: 2\nguard: {{enabled: {guard}}}\nstages:\n  \
         - {{weight: 50, min_duration_s: 600, rules: [{rule}]}}\n  - {{weight: 100}}\n"
    )
}

/// A wall-clock time in milliseconds since the epoch for a monotonic instant in the past.
fn wall_ms(t: Instant) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(t.elapsed()).as_millis() as i64
}

/// The processes of one run; dropped (and so stopped) together, on failure too.
struct Running {
    v2: ModelServer,
    v1: ModelServer,
    controller: Option<(Controller, tempfile::TempDir)>,
    envoys: Vec<Envoy>,
}

fn start(s: &Scenario) -> Result<Running> {
    match &s.mode {
        Mode::Guard(guard) => {
            let v1 = ModelServer::start("v1")?;
            let v2 = ModelServer::start("v2")?;
            let filter = json!({
                "rollout": s.rollout,
                "arms": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
                "guard": guard,
            });
            let config = two_arm_config(&filter, v1.port, v2.port)?;
            let envoys = (0..s.envoys)
                .map(|_| Envoy::start(&config, 2))
                .collect::<Result<_>>()?;
            Ok(Running {
                v2,
                v1,
                controller: None,
                envoys,
            })
        }
        Mode::Controller { rule, guard } => {
            let Rig {
                controller,
                v1,
                v2,
                dir,
            } = Rig::start()?;
            let filter = json!({
                "rollout": s.rollout,
                "arms": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
                "controller": {"cluster": "rampctl"},
            });
            let config =
                two_arm_config_with_controller(&filter, v1.port, v2.port, controller.port)?;
            let envoys = (0..s.envoys)
                .map(|_| Envoy::start(&config, 2))
                .collect::<Result<_>>()?;
            controller.apply(&controller_spec(&s.rollout, rule, *guard))?;
            Ok(Running {
                v2,
                v1,
                controller: Some((controller, dir)),
                envoys,
            })
        }
    }
}

/// Runs the scenario once, from fresh processes.
pub fn run(s: &Scenario) -> Result<Outcome> {
    let r = start(s)?;
    let traffic: Vec<Traffic> = r
        .envoys
        .iter()
        .map(|e| Traffic::paced(e.url("/predict"), s.connections, s.rps_per_envoy))
        .collect();
    // With a controller, the healthy period starts once every Envoy applies the stage's 50%.
    if r.controller.is_some() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let recent = Instant::now() - Duration::from_millis(500);
            let live = traffic.iter().all(|t| {
                let (v2, n) = t.share_since("v2", recent);
                n > 0 && v2 * 4 > n
            });
            if live {
                break;
            }
            if Instant::now() > deadline {
                bail!("the rollout's 50% never reached every Envoy");
            }
        }
    }
    let healthy_from = Instant::now();
    std::thread::sleep(s.healthy);
    let mut healthy = Vec::new();
    for (envoy, t) in r.envoys.iter().zip(&traffic) {
        let (v2, n) = t.share_since("v2", healthy_from);
        healthy.push((
            v2 as f64 / n.max(1) as f64,
            n,
            trips(envoy, &s.rollout, "v2")?,
        ));
    }

    let fault = Instant::now();
    r.v2.behaviour
        .fail_every
        .store(s.fail_every, Ordering::Relaxed);
    let deadline = fault + s.timeout;
    let zero: Vec<Option<Instant>> = traffic
        .iter()
        .map(|t| {
            let left = deadline.saturating_duration_since(Instant::now());
            t.wait_stopped_reaching("v2", s.quiet, left)
        })
        .collect();

    let (mut status, mut events, mut fault_to_decision) = (None, Vec::new(), None);
    if let Some((c, _)) = &r.controller {
        let st = c.wait_for(&s.rollout, s.timeout.min(Duration::from_secs(10)), |v| {
            v["phase"] == "rolled_back"
        })?;
        let (_, history) = c.call(
            "GET",
            &format!("/v1/rollouts/{}/history", s.rollout),
            None,
            false,
        )?;
        let decided = history["events"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["kind"] == "rolled_back")
            .and_then(|e| e["at_ms"].as_i64());
        fault_to_decision = decided
            .map(|ms| Duration::from_millis(ms.saturating_sub(wall_ms(fault)).max(0) as u64));
        events = c.events(&s.rollout)?;
        status = Some(st);
    }

    let last_second = Instant::now() - Duration::from_secs(1);
    let mut envoys = Vec::new();
    for (((envoy, t), (share, n, trips_at_fault)), zero) in
        r.envoys.iter().zip(&traffic).zip(healthy).zip(zero)
    {
        let answers = t.answers();
        let span = match (
            answers.iter().map(|a| a.sent).min(),
            answers.iter().map(|a| a.sent).max(),
        ) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        envoys.push(EnvoyOutcome {
            healthy_share: share,
            healthy_answers: n,
            trips_at_fault,
            fault_to_zero: zero.map(|z| z.saturating_duration_since(fault)),
            trips: trips(envoy, &s.rollout, "v2")?,
            share_at_end: {
                let (v2, n) = t.share_since("v2", last_second);
                v2 as f64 / n.max(1) as f64
            },
            achieved_rps: answers.len() as f64 / span.max(0.001),
            errors: t.errors(),
        });
    }
    drop(traffic);
    Ok(Outcome {
        envoys,
        status,
        events,
        fault_to_decision,
    })
}

/// An A/A run of the guard alone: the same setup with no fault, both arms failing each request
/// independently with chance `permille`/1000 (binomial noise, as a real fleet has) for `length`.
/// Returns per Envoy `ramp_guard_trips_total{arm="v2"}` at the end: a trip here is a false one.
pub fn false_trips(s: &Scenario, permille: u64, length: Duration) -> Result<Vec<f64>> {
    let r = start(s)?;
    for m in [&r.v1, &r.v2] {
        m.behaviour
            .fail_chance_permille
            .store(permille, Ordering::Relaxed);
    }
    let traffic: Vec<Traffic> = r
        .envoys
        .iter()
        .map(|e| Traffic::paced(e.url("/predict"), s.connections, s.rps_per_envoy))
        .collect();
    std::thread::sleep(length);
    let trips = r
        .envoys
        .iter()
        .map(|e| trips(e, &s.rollout, "v2"))
        .collect::<Result<_>>()?;
    drop(traffic);
    Ok(trips)
}
