//! The tick and the live-state channel's cycle: each Envoy's workers elect one poller through a
//! lease in shared data; it long-polls the controller for the live state, publishes a valid,
//! newer one to the other workers, and posts the Envoy's cumulative counts as reports.

use super::shared::CREATE_ONLY_CAS;
use super::{Active, LiveLink, Worker, TICK_MS};
use crate::config::Controller;
use crate::counters::decode_counts;
use crate::host::{Body, Callout, Host, Map};
use crate::live::{parse, Applied, Lease};
use crate::report::{decode_le_u64s, report_json, ArmReport};
use crate::shadow::{decode_moments, moments_json, TOTAL_NAMES};
use crate::stream::StreamCounts;

/// Extra time a long poll's callout gets beyond the wait it asked the controller for.
const POLL_SLACK_MS: u64 = 2_000;
/// How long a report may take.
const REPORT_TIMEOUT_MS: u64 = 2_000;

impl<H: Host + Clone> Worker<H> {
    /// Every tick: counters to Envoy and shared data, the newest live state applied, and (on the
    /// worker holding the lease) the poll and the report.
    pub fn tick(&mut self) {
        let Some(active) = self.active.clone() else {
            return;
        };
        self.flush(&active);
        let guard = active.guard.as_ref().and_then(|g| g.sync(&self.host));
        let (Some(link), Some(ctl)) = (&active.live, &active.rollout.controller) else {
            return;
        };
        self.flush_report_counts(&active.arms, link);
        self.apply_live_state(&active, link);
        // A trip is reported at once, by the one worker whose write marked it, lease or not: the
        // controller then judges the rollout on the fleet's figures without waiting for its check.
        if let (Some(g), Some(record)) = (&active.guard, guard) {
            let unreported = record.tripped & !record.reported;
            if unreported != 0 && g.mark_reported(&self.host, record.epoch, unreported) {
                self.send_report(&active, link, ctl);
            }
        }
        let ticks = link.ticks.get() + 1;
        link.ticks.set(ticks);
        let every = (ctl.poll_ms / TICK_MS).max(1);
        let report_due = ticks % every == 0;
        let now = self.now_ms();
        let poll_due = link.call.get().is_none() && now >= link.next_poll_ms.get();
        if !(report_due || poll_due) {
            return;
        }
        if !self.hold_lease(link, ctl.poll_ms) {
            // Another worker polls: look at the lease again a poll period from now, not on every
            // tick.
            link.next_poll_ms.set(now + ctl.poll_ms);
            return;
        }
        if poll_due {
            self.poll_state(&active, link, ctl, now);
        }
        if report_due && link.report_call.get().is_none() {
            self.send_report(&active, link, ctl);
        }
    }

    /// Takes or renews the per-Envoy poller lease (three poll periods long); true if this worker
    /// holds it.
    fn hold_lease(&self, link: &LiveLink, poll_ms: u64) -> bool {
        let Some((stored, cas)) = self.host.shared_get(&link.lease_key) else {
            return false;
        };
        let now = self.now_ms();
        if !Lease::may_take(stored.as_deref(), self.worker_id, now) {
            return false;
        }
        let lease = Lease {
            holder: self.worker_id,
            until_ms: now + 3 * poll_ms,
        };
        let taken = self
            .host
            .shared_set(
                &link.lease_key,
                &lease.encode(),
                cas.unwrap_or(CREATE_ONLY_CAS),
            )
            .is_ok();
        let previous = stored.as_deref().and_then(Lease::decode).map(|l| l.holder);
        if taken && previous != Some(self.worker_id) {
            log::info!(
                "ramp: worker {:016x} now polls the controller (lease was {previous:x?})",
                self.worker_id
            );
        }
        taken
    }

    /// Asks the controller for the live state. With a known version the poll waits up to a poll
    /// period for a change (`version` and `wait_ms`), so a decision reaches this Envoy at once;
    /// a controller that does not wait answers at once, and the next poll starts a period later.
    fn poll_state(&self, active: &Active, link: &LiveLink, ctl: &Controller, now: u64) {
        // The instance lets the controller leave this Envoy's own bandit counts out.
        let instance = self.instance_id(link).unwrap_or_default();
        let wait = link
            .known_version
            .get()
            .map(|v| format!("&version={v}&wait_ms={}", ctl.poll_ms))
            .unwrap_or_default();
        let path = format!(
            "/v1/rollouts/{}/state?instance={instance}{wait}",
            active.rollout.name
        );
        link.next_poll_ms.set(now + ctl.poll_ms);
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", ctl.authority.as_str()),
        ];
        // The live state is not public either: the controller asks for the report token.
        if let Some(auth) = &link.report_auth {
            headers.push(("authorization", auth.as_str()));
        }
        let token = self.host.dispatch(&Callout {
            cluster: &ctl.cluster,
            headers: &headers,
            body: None,
            timeout_ms: ctl.poll_ms + POLL_SLACK_MS,
        });
        link.call.set(token);
    }

    /// This Envoy's id for reports: made once by whichever worker gets there first.
    fn instance_id(&self, link: &LiveLink) -> Option<String> {
        if let Some((Some(id), _)) = self.host.shared_get(&link.instance_key) {
            return String::from_utf8(id).ok();
        }
        let seed = self
            .rng
            .try_borrow_mut()
            .map_or(self.worker_id, |mut r| r.u64(..));
        let fresh = format!("{seed:016x}");
        let _ = self
            .host
            .shared_set(&link.instance_key, fresh.as_bytes(), CREATE_ONLY_CAS);
        let (id, _) = self.host.shared_get(&link.instance_key)?;
        String::from_utf8(id?).ok()
    }

    /// Posts this Envoy's cumulative counts (all workers, from shared data) to the controller.
    fn send_report(&self, active: &Active, link: &LiveLink, ctl: &Controller) {
        let Some(instance) = self.instance_id(link) else {
            return;
        };
        let shared = |key: &str| self.host.shared_get(key).and_then(|(b, _)| b);
        let arms: Vec<_> = active
            .rollout
            .arms
            .iter()
            .zip(&active.arms)
            .map(|(config, arm)| {
                let total = arm.counts_key.as_deref().and_then(shared);
                let total = total.and_then(|b| ArmReport::decode(&b));
                // This Envoy's bandit totals (all workers), for the other Envoys' live state.
                let bandit = arm.bandit_key.as_deref().map(|k| {
                    shared(k)
                        .and_then(|b| decode_counts(&b))
                        .unwrap_or_default()
                });
                let stream = arm.stream.as_ref().and_then(|s| s.key.as_deref()).map(|k| {
                    shared(k)
                        .and_then(|b| StreamCounts::decode(&b))
                        .unwrap_or_default()
                });
                (
                    config.name.as_str(),
                    total.unwrap_or_default(),
                    bandit,
                    stream,
                )
            })
            .collect();
        let shadow = link
            .shadow_pending
            .try_borrow()
            .is_ok_and(|p| !p.is_empty())
            .then(|| {
                shared(&link.shadow_key).map_or(vec![0; TOTAL_NAMES.len()], |b| decode_le_u64s(&b))
            });
        let moments = active
            .shadow
            .as_ref()
            .and_then(|st| st.try_borrow().ok())
            .and_then(|st| {
                let m = st.moments.as_ref()?;
                let stored = shared(&m.key)?;
                decode_moments(&stored, &m.pending.thresholds)
            })
            .map(|m| moments_json(&m));
        let names: Vec<&str> = active
            .rollout
            .arms
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        let guard = active
            .guard
            .as_ref()
            .and_then(|g| g.report_json(&self.host, &names));
        let body = report_json(
            &instance,
            self.now_ms(),
            &arms,
            // The user-level analysis needs buckets only when a user keeps their arm.
            active.rollout.sticky.is_some(),
            shadow.as_deref(),
            moments.as_deref(),
            guard.as_deref(),
        );
        let path = format!("/v1/rollouts/{}/reports", active.rollout.name);
        let mut headers = vec![
            (":method", "POST"),
            (":path", path.as_str()),
            (":authority", ctl.authority.as_str()),
            ("content-type", "application/json"),
        ];
        if let Some(auth) = &link.report_auth {
            headers.push(("authorization", auth.as_str()));
        }
        let token = self.host.dispatch(&Callout {
            cluster: &ctl.cluster,
            headers: &headers,
            body: Some(body.as_bytes()),
            timeout_ms: REPORT_TIMEOUT_MS,
        });
        link.report_call.set(token);
    }

    /// The controller answered a poll: check it once, and publish a valid, newer state to every
    /// worker via shared data in its checked binary form.
    pub(super) fn on_state_polled(&self, active: &Active, link: &LiveLink, body_size: usize) {
        let status = self.host.header(Map::CalloutResponse, ":status");
        if status.as_deref() != Some(b"200") {
            return; // Unreachable or unhappy controller: every worker keeps the state it has.
        }
        let body = self
            .host
            .body(Body::CalloutResponse, 0, body_size)
            .unwrap_or_default();
        let state = match parse(&body).and_then(|d| Applied::check(&d, &active.rollout)) {
            Ok(state) => state,
            Err(e) => {
                log::warn!(
                    "ramp: rollout {:?}: {e}; keeping the last good state",
                    active.rollout.name
                );
                return;
            }
        };
        if link.known_version.get() != Some(state.version) {
            // A change answered the long poll early: ask again at once, with the new version.
            link.next_poll_ms.set(0);
        }
        link.known_version.set(Some(state.version));
        let Some((stored, cas)) = self.host.shared_get(&link.state_key) else {
            return;
        };
        let arms = active.rollout.arms.len();
        let old = stored.as_deref().and_then(|b| Applied::decode(b, arms));
        if state.replaces(old.as_ref()) {
            let _ = self.host.shared_set(
                &link.state_key,
                &state.encode(),
                cas.unwrap_or(CREATE_ONLY_CAS),
            );
            // This worker need not wait for its tick; the others apply it on theirs.
            self.apply_live_state(active, link);
        }
    }
}
