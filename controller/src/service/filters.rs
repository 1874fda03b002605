//! What the filters exchange with the controller: their reports (validated once, on arrival, and
//! kept in memory; the flusher writes them) and the live state they poll (from the published
//! snapshot, waiting for a change when asked to).

use std::time::Duration;

use super::{App, Error};
use crate::clock::now_ms;
use crate::machine::Phase;
use crate::registry::{Accepted, Loaded};
use crate::window::Report;
use ramp_protocol::live::LiveState;

/// How far a report's `seq` (the filter's clock) may be ahead of the controller's: clock skew
/// between hosts, not more.
pub const MAX_SEQ_AHEAD_MS: u64 = 600_000;

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportTaken {
    /// Counted (or an older or repeated one, which changes nothing).
    Counted,
    /// No rollout of this name yet: kept in memory (not stored) as its starting point.
    Pending,
}

/// A filter's report to `name`, parsed from `raw` (kept as sent for a rollout not applied yet).
pub fn accept_report(
    app: &App,
    name: &str,
    parsed: Report,
    raw: &[u8],
) -> Result<ReportTaken, Error> {
    // A filter's `seq` is its clock in ms. One far ahead would make every later report of that
    // instance look stale (frozen counts, a rollout that never sees its failures), and it is
    // stored, so it would outlive a restart.
    let ahead = parsed.seq.saturating_sub(now_ms());
    if ahead > MAX_SEQ_AHEAD_MS {
        return Err(Error::invalid(
            "seq",
            format!(
                "{} is {} s ahead of this controller's clock; a filter's seq is its clock in ms since the epoch (at most {} s ahead is taken)",
                parsed.seq,
                ahead / 1000,
                MAX_SEQ_AHEAD_MS / 1000
            ),
        ));
    }
    let Some(handle) = app.rollout(name) else {
        ramp_protocol::names::check_name(name).map_err(Error::BadName)?;
        // Before `rampctl apply`: kept in memory only, as the rollout's starting point.
        let max_arms = ramp_protocol::names::MAX_ARMS;
        if parsed.arms.len() > max_arms {
            return Err(Error::invalid(
                "arms",
                format!(
                    "{} arms: a rollout has at most {max_arms}",
                    parsed.arms.len()
                ),
            ));
        }
        parsed
            .validate(&parsed.arms.keys().map(String::as_str).collect::<Vec<_>>())
            .map_err(|e| Error::invalid(&e.field, e.reason))?;
        let kept = app.pending.lock().unwrap_or_else(|p| p.into_inner()).keep(
            name,
            &parsed.instance,
            parsed.seq,
            raw,
        );
        return match kept {
            Ok(()) => Ok(ReportTaken::Pending),
            Err(crate::registry::PendingFull::Bytes) => Err(Error::Full(format!(
                "reports for rollouts not applied yet hold {} MiB already: apply the rollout first",
                crate::registry::MAX_PENDING_BYTES >> 20
            ))),
            Err(_) => Err(Error::NoRollout(name.to_owned())),
        };
    };
    let (_, _, spec) = app.loaded(name)?;
    parsed
        .validate(&spec.arms())
        .map_err(|e| Error::invalid(&e.field, e.reason))?;
    let guard = parsed
        .guard
        .as_ref()
        .map(|g| (parsed.instance.clone(), g.epoch, g.tripped.clone()));
    let accepted = handle.reports().accept(parsed);
    match accepted {
        Accepted::Newer | Accepted::Stale => {
            app.telemetry.report(name);
            // A trip is judged at once on the fleet's newest figures, not at the next check.
            if let Some((instance, epoch, tripped)) = guard {
                if handle.guard_trips().observe(&instance, epoch, &tripped) {
                    handle.wake.notify_one();
                }
            }
            Ok(ReportTaken::Counted)
        }
        Accepted::Full => Err(Error::Full(format!(
            "instance: this rollout already has reports from {} Envoys",
            crate::registry::MAX_INSTANCES
        ))),
    }
}

/// What the filters poll: the weights, and the bandit counts the asking Envoy (`instance`, as in
/// its reports) does not hold itself. With `known` (a version the filter has) and a `wait`, the
/// answer waits until the state's version is no longer that one: a filter whose poll is open
/// learns a rollback as soon as it is decided.
pub async fn live_state(
    app: &App,
    name: &str,
    known: Option<u64>,
    wait: Duration,
    instance: Option<&str>,
) -> Result<LiveState, Error> {
    let handle = app.named(name)?;
    let mut rx = handle.view.subscribe();
    if let Some(known) = known.filter(|_| !wait.is_zero()) {
        let changed = rx.wait_for(|v| v.version() != Some(known));
        let _ = tokio::time::timeout(wait, changed).await;
    }
    let view = rx.borrow().clone();
    let (rec, spec) = match &view.loaded {
        Loaded::Ok { rec, spec } => (rec, spec),
        Loaded::Error { reason } => {
            return Err(Error::Unloadable {
                name: name.to_owned(),
                reason: reason.clone(),
            })
        }
    };
    app.telemetry.poll(name);
    let bandit = handle.reports().remote(instance, &spec.arms());
    Ok(LiveState {
        version: rec.version,
        stage: Some(rec.state.stage as u64 + 1),
        weights: rec.state.arm_weights(spec).into_iter().collect(),
        rolled_back: rec.state.phase == Phase::RolledBack,
        bandit,
        pre_weights: rec.state.pre_weights(spec).into_iter().collect(),
        guard: ramp_controller_core::guard::live_guard(spec, &rec.state),
    })
}
