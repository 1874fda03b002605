//! What the controller tells Prometheus and probes about itself, in the text exposition format by
//! the `prometheus-client` crate: counters kept as things happen (checks, failed checks,
//! rollbacks, reports, polls) and, per rollout, gauges read at scrape time from the published
//! snapshots (phase, stage, weights, each rule's last value and bound), so a scrape never waits
//! on a check. The text is rendered on a blocking thread, and one rendering serves every scrape
//! that arrives while it runs or within `SCRAPE_MAX_AGE` of its start.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::CheckVerdict;
use axum::body::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::registry::{Loaded, View};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByRollout {
    rollout: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByPhase {
    rollout: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByArm {
    rollout: String,
    arm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByRule {
    rollout: String,
    arm: String,
    metric: String,
    bound: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The phases a rollout can be in, as status names them; `error`: it cannot be loaded.
pub const PHASES: [&str; 7] = [
    "starting",
    "progressing",
    "paused",
    "succeeded",
    "rolled_back",
    "aborted",
    "error",
];

/// Counters the server and the reconcilers bump as things happen.
#[derive(Default)]
pub struct Telemetry {
    checks: Family<ByRollout, Counter>,
    failed_checks: Family<ByRollout, Counter>,
    rollbacks: Family<ByRollout, Counter>,
    reports: Family<ByRollout, Counter>,
    polls: Family<ByRollout, Counter>,
    events: Family<ByRollout, Counter>,
    /// Reconciler tasks alive: one per loaded rollout when all is well.
    pub reconcilers: AtomicUsize,
    /// The last rendering of `/metrics`. Held (an async lock: waiters hold no thread) while a
    /// rendering runs, so concurrent scrapes wait for that one instead of each rendering again.
    scraped: tokio::sync::Mutex<Option<Rendered>>,
}

/// How long after it started one rendering of `/metrics` answers further scrapes. Scrapers ask
/// every 15 s or so; twelve at once each rendering 2,000 rollouts (52.6 MB) kept the async
/// workers from answering state polls for 7.9 s (issue 20, item 8).
pub const SCRAPE_MAX_AGE: Duration = Duration::from_secs(1);

/// One rendering of the exposition text, shared (`Bytes`: a clone is a reference).
struct Rendered {
    started: Instant,
    done: Instant,
    text: Bytes,
}

fn by(rollout: &str) -> ByRollout {
    ByRollout {
        rollout: rollout.to_owned(),
    }
}

impl Telemetry {
    pub fn check(&self, rollout: &str, failed: bool) {
        self.checks.get_or_create(&by(rollout)).inc();
        if failed {
            self.failed_checks.get_or_create(&by(rollout)).inc();
        }
    }

    /// A transition stored with its event; those that rolled back (a rule or an operator) are
    /// counted apart too.
    pub fn event(&self, rollout: &str, rolled_back: bool) {
        self.events.get_or_create(&by(rollout)).inc();
        if rolled_back {
            self.rollbacks.get_or_create(&by(rollout)).inc();
        }
    }

    pub fn report(&self, rollout: &str) {
        self.reports.get_or_create(&by(rollout)).inc();
    }

    pub fn poll(&self, rollout: &str) {
        self.polls.get_or_create(&by(rollout)).inc();
    }

    /// `/metrics`' text: `render` runs on a blocking thread (a large fleet's text takes long
    /// enough to hold up the polls an async worker would serve meanwhile), unless a rendering
    /// that finished after this scrape arrived (it ran while this one waited), or one started at
    /// most `SCRAPE_MAX_AGE` before it, can answer instead.
    pub async fn scrape(
        &self,
        render: impl FnOnce() -> String + Send + 'static,
    ) -> Result<Bytes, String> {
        let asked = Instant::now();
        let mut last = self.scraped.lock().await;
        if let Some(r) = last.as_ref() {
            if r.done >= asked || asked.saturating_duration_since(r.started) <= SCRAPE_MAX_AGE {
                return Ok(r.text.clone());
            }
        }
        let started = Instant::now();
        let text = Bytes::from(
            tokio::task::spawn_blocking(render)
                .await
                .map_err(|e| format!("metrics task: {e}"))?,
        );
        *last = Some(Rendered {
            started,
            done: Instant::now(),
            text: text.clone(),
        });
        Ok(text)
    }

    /// The exposition text: the counters, and gauges from each rollout's snapshot.
    pub fn render(&self, views: &[(String, Arc<View>)]) -> String {
        let mut registry = Registry::with_prefix("ramp_controller");
        for (name, help, family) in [
            (
                "checks",
                "Checks of a progressing rollout's figures",
                &self.checks,
            ),
            (
                "failed_checks",
                "Checks where a rule failed",
                &self.failed_checks,
            ),
            (
                "rollbacks",
                "Rollbacks, automatic or by an operator",
                &self.rollbacks,
            ),
            ("reports", "Filter reports accepted", &self.reports),
            ("polls", "Live-state polls answered", &self.polls),
            (
                "events",
                "Transitions stored (each also fires the event hooks)",
                &self.events,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        let reconcilers: Gauge = Gauge::default();
        reconcilers.set(self.reconcilers.load(Ordering::Relaxed) as i64);
        registry.register(
            "reconcilers_running",
            "Reconciler tasks alive (one per loadable rollout)",
            reconcilers,
        );
        let phase = Family::<ByPhase, Gauge>::default();
        let stage = Family::<ByRollout, Gauge>::default();
        let weight = Family::<ByArm, FloatGauge>::default();
        let rule_value = Family::<ByRule, FloatGauge>::default();
        let rule_limit = Family::<ByRule, FloatGauge>::default();
        let rule_failing = Family::<ByRule, Gauge>::default();
        for (name, view) in views {
            // Every rollout's counters exist from the start (at 0), so rates and increases
            // have series before the first rollback or failed check.
            for family in [
                &self.checks,
                &self.failed_checks,
                &self.rollbacks,
                &self.reports,
                &self.polls,
                &self.events,
            ] {
                let _ = family.get_or_create(&by(name));
            }
            let now = match &view.loaded {
                Loaded::Ok { rec, spec } => {
                    stage
                        .get_or_create(&by(name))
                        .set(rec.state.stage as i64 + 1);
                    for (arm, w) in rec.state.arm_weights(spec) {
                        weight
                            .get_or_create(&ByArm {
                                rollout: name.clone(),
                                arm,
                            })
                            .set(w);
                    }
                    crate::spec::wire_name(&rec.state.phase)
                }
                Loaded::Error { .. } => "error".to_owned(),
            };
            for p in PHASES {
                phase
                    .get_or_create(&ByPhase {
                        rollout: name.clone(),
                        phase: p.to_owned(),
                    })
                    .set(i64::from(p == now));
            }
            let checks = view
                .figures
                .as_deref()
                .and_then(|f| f.last.as_ref())
                .map(|f| f.checks.as_slice());
            for c in checks.into_iter().flatten() {
                let labels = ByRule {
                    rollout: name.clone(),
                    arm: c.arm.clone(),
                    // Custom rules by name: two of them must not share one series.
                    metric: c.custom.as_ref().map_or_else(
                        || crate::spec::wire_name(&c.metric),
                        |custom| format!("custom:{}", custom.name),
                    ),
                    bound: c.bound.clone(),
                };
                // A value that JSON cannot hold (not finite) was never shown either.
                if let Some(v) = c.value.filter(|v| v.is_finite()) {
                    rule_value.get_or_create(&labels).set(v);
                }
                if c.limit.is_finite() {
                    rule_limit.get_or_create(&labels).set(c.limit);
                }
                rule_failing
                    .get_or_create(&labels)
                    .set(i64::from(c.verdict == CheckVerdict::Fail));
            }
        }
        registry.register(
            "rollout_phase",
            "1 for the rollout's phase, 0 for the others",
            phase,
        );
        registry.register(
            "rollout_stage",
            "The stage the rollout is in (1-based)",
            stage,
        );
        registry.register(
            "rollout_weight_percent",
            "Each arm's weight the filters are told to apply",
            weight,
        );
        registry.register(
            "rule_value",
            "Each rule's figure at the last check (absent while it lacks samples)",
            rule_value,
        );
        registry.register("rule_limit", "Each rule's bound", rule_limit);
        registry.register(
            "rule_failing",
            "1 when the rule failed at the last check",
            rule_failing,
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Twelve scrapes at once cost one rendering; a scrape after `SCRAPE_MAX_AGE` renders again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_scrapes_share_one_rendering() {
        let telemetry = Arc::new(Telemetry::default());
        let renders = Arc::new(AtomicUsize::new(0));
        let scrape = |telemetry: Arc<Telemetry>, renders: Arc<AtomicUsize>| async move {
            telemetry
                .scrape(move || {
                    let n = renders.fetch_add(1, Ordering::SeqCst) + 1;
                    // Long enough for the other scrapes to arrive while it runs.
                    std::thread::sleep(Duration::from_millis(200));
                    format!("rendering {n}\n")
                })
                .await
        };
        let scrapes: Vec<_> = (0..12)
            .map(|_| tokio::spawn(scrape(telemetry.clone(), renders.clone())))
            .collect();
        for s in scrapes {
            assert_eq!(s.await.unwrap().unwrap(), "rendering 1\n");
        }
        assert_eq!(renders.load(Ordering::SeqCst), 1);
        tokio::time::sleep(SCRAPE_MAX_AGE + Duration::from_millis(100)).await;
        let later = scrape(telemetry.clone(), renders.clone()).await.unwrap();
        assert_eq!(later, "rendering 2\n");
    }
}
