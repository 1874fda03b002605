//! What an operator, a probe or a scraper reads: status, the list, the history, the decision
//! record, the specs directory, readiness and the controller's own metrics. URLs in what is read
//! back from the store are redacted here: specs and reasons may carry credentials.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::{App, Error};
use crate::api::{
    History, HistoryEvent, Loaded as Shown, ManagedBy, RolloutList, RolloutStatus, Status,
    Unloadable,
};
use crate::gitops::SpecsSeen;
use crate::redact::redact_text;
use crate::registry::{Loaded, View};
use crate::report::{DecisionRecord, ReportEvent, RolloutReport};
use crate::status::state_summary;

/// A rollout as the answers to `apply` and the commands show it: its state, then the last
/// check's figures (empty before it).
pub fn summary(view: &View) -> Status {
    let rollout = match &view.loaded {
        Loaded::Ok { rec, spec } => RolloutStatus::Loaded(Box::new(Shown {
            state: state_summary(rec, spec),
            figures: view.figures.as_deref().cloned().unwrap_or_default(),
        })),
        Loaded::Error { reason } => RolloutStatus::Unloadable(Unloadable {
            name: None,
            phase: crate::api::ErrorPhase::Error,
            reason: reason.clone(),
        }),
    };
    Status {
        rollout,
        managed: None,
    }
}

/// A rollout as `status` and `list` show it: its summary, named.
fn named(name: &str, view: &View) -> Status {
    let mut status = summary(view);
    match &mut status.rollout {
        RolloutStatus::Loaded(shown) => shown.state.name = name.to_owned(),
        RolloutStatus::Unloadable(u) => u.name = Some(name.to_owned()),
    }
    status
}

/// Every rollout (`GET /v1/rollouts`).
pub fn list(app: &App) -> RolloutList {
    RolloutList {
        rollouts: app
            .all()
            .iter()
            .map(|h| named(&h.name, &h.current()))
            .collect(),
    }
}

/// One rollout (`GET /v1/rollouts/{name}`), with the file that manages it under `--specs`.
pub fn status(app: &App, name: &str) -> Result<Status, Error> {
    let handle = app.named(name)?;
    let mut answer = named(name, &handle.current());
    if let Some((file, error)) = app
        .specs
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .file_of(name)
    {
        answer.managed = Some(ManagedBy {
            spec_file: file,
            spec_file_error: error,
        });
    }
    Ok(answer)
}

/// What the last scan of the `--specs` directory found, file by file.
pub fn specs(app: &App) -> SpecsSeen {
    app.specs.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The rollout's events, oldest first, URLs redacted.
pub async fn history(app: &Arc<App>, name: &str) -> Result<History, Error> {
    app.named(name)?;
    let rollout = name.to_owned();
    let events = app.db(move |s| s.events(&rollout)).await?;
    let events = events
        .into_iter()
        .map(|e| HistoryEvent {
            at_ms: e.at_ms,
            kind: e.kind,
            detail: redact_text(&e.detail),
        })
        .collect();
    Ok(History { events })
}

/// The decision record (`report::RolloutReport`): every event with the figures it was decided
/// on, and the per-check series. URLs are redacted as in `history`; checks reach the store
/// within a flush (250 ms) of being made.
pub async fn rollout_report(app: &Arc<App>, name: &str) -> Result<RolloutReport, Error> {
    let (_, rec, spec) = app.loaded(name)?;
    let rollout = name.to_owned();
    let (events, (checks, series)) = app
        .db(move |s| Ok((s.events(&rollout)?, s.checks(&rollout)?)))
        .await?;
    let events = events
        .into_iter()
        .map(|e| {
            // A record that cannot be read leaves its event without one, not the report.
            let record = e
                .record
                .as_deref()
                .and_then(|r| serde_json::from_str::<DecisionRecord>(r).ok())
                .map(|mut r| {
                    r.spec = r.spec.as_deref().map(redact_text);
                    r
                });
            ReportEvent {
                at_ms: e.at_ms,
                kind: e.kind,
                detail: redact_text(&e.detail),
                record,
            }
        })
        .collect();
    Ok(RolloutReport {
        name: rec.name.clone(),
        strategy: spec.strategy,
        baseline: spec.baseline.clone(),
        candidates: spec.candidates.clone(),
        phase: rec.state.phase,
        stage: rec.state.stage + 1,
        stages: spec.stages.len(),
        weights: rec.state.arm_weights(&spec).into_iter().collect(),
        reason: rec.state.reason.as_deref().map(redact_text),
        spec_revision: crate::report::spec_revision(&rec.spec_text),
        spec: redact_text(&rec.spec_text),
        events,
        checks,
        series,
    })
}

/// Readiness (`/readyz`): the store answers (within 2 s), every rollout has its reconciler and
/// the specs directory (with `--specs`) was read in its last scan. `Err`: why not.
pub async fn readiness(app: &Arc<App>) -> Result<Value, String> {
    let store = tokio::time::timeout(Duration::from_secs(2), app.db(|s| s.ping())).await;
    let rollouts = app.all().len();
    let specs_error = app
        .specs
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .error
        .clone();
    let running = app
        .telemetry
        .reconcilers
        .load(std::sync::atomic::Ordering::Relaxed);
    let problem = match store {
        Err(_) => Some("store: no answer within 2 s".to_owned()),
        Ok(Err(e)) => Some(format!("store: {e}")),
        Ok(Ok(())) if running < rollouts => Some(format!(
            "reconcilers: {running} running for {rollouts} rollouts"
        )),
        Ok(Ok(())) if specs_error.is_some() => specs_error.map(|e| format!("specs directory: {e}")),
        Ok(Ok(())) => None,
    };
    match problem {
        None => Ok(json!({"ready": true, "rollouts": rollouts, "reconcilers": running})),
        Some(why) => Err(why),
    }
}

/// The controller's own figures in Prometheus' text format, from the snapshots. Rendered off the
/// async workers, one rendering for concurrent scrapes (`Telemetry::scrape`).
pub async fn metrics(app: &Arc<App>) -> Result<axum::body::Bytes, String> {
    let source = app.clone();
    app.telemetry
        .scrape(move || {
            let views: Vec<(String, Arc<View>)> = source
                .all()
                .into_iter()
                .map(|h| (h.name.clone(), h.current()))
                .collect();
            source.telemetry.render(&views)
        })
        .await
}
