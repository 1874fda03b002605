//! An operator's changes: a new rollout from a spec (`apply`, or a new file under `--specs`) and
//! the commands (promote, pause, resume, roll back, abort, set a weight).

use std::sync::Arc;

use super::read::summary;
use super::Transition;
use super::{App, Error};
use crate::api::{Figures, Status};
use crate::clock::now_ms;
use crate::events::EventKind;
use crate::hooks::notify_rollback;
use crate::machine::{self, Command, Phase, State};
use crate::record::{Moves, Record};
use crate::registry::{Loaded, ReportBook, Rollout, View};
use crate::report::DecisionRecord;
use crate::sources::totals_now;
use crate::spec::Spec;
use crate::store::StoreError;

/// `apply`: a spec's text (validated on a blocking thread: a spec may be large) becomes a new
/// rollout. The answer is its summary.
pub async fn apply(app: &Arc<App>, text: String) -> Result<Status, Error> {
    let parsed = {
        let text = text.clone();
        tokio::task::spawn_blocking(move || Spec::parse(&text))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    };
    let spec = Arc::new(parsed?);
    create(app, text, spec, "rollout applied").await
}

/// Starts a rollout from a validated spec (`apply`, or a new file under `--specs`); `detail` is
/// its first event's. The answer is its summary.
pub async fn create(
    app: &Arc<App>,
    text: String,
    spec: Arc<Spec>,
    detail: &str,
) -> Result<Status, Error> {
    if app.rollout(&spec.name).is_some() {
        return Err(StoreError::Exists(spec.name.clone()).into());
    }
    let mut book = ReportBook::default();
    let bodies = app
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take(&spec.name);
    let arms: Vec<String> = spec.arms().iter().map(|a| (*a).to_owned()).collect();
    // Up to 64 MiB of JSON: parsed on a blocking thread, not on a worker serving polls.
    let earlier = tokio::task::spawn_blocking(move || {
        let arms: Vec<&str> = arms.iter().map(String::as_str).collect();
        crate::registry::parse_pending(&bodies, &arms)
    })
    .await
    .unwrap_or_default();
    for r in earlier {
        book.accept(r);
    }
    // Not registered until stored, so no reader sees this placeholder view; the record
    // replaces it once the base totals (which need the report book) are known.
    let handle = Rollout::new(
        spec.name.clone(),
        View {
            loaded: Loaded::Error {
                reason: "being applied".into(),
            },
            figures: None,
        },
        book,
    );
    let base = totals_now(&app.outgoing, &handle, &spec).await?;
    let now = now_ms();
    let rec = Record {
        name: spec.name.clone(),
        spec_text: text,
        state: State::start(&spec, now),
        version: 1,
        base,
    };
    let stored = rec.clone();
    let record = DecisionRecord::new(&spec, &rec.spec_text, &rec.state, &rec.state, None)
        .with_spec(&rec.spec_text);
    app.db(move |s| s.insert_recorded(&stored, now, Some(&record)))
        .await?;
    handle.publish_record(rec.clone(), spec.clone());
    app.told(&spec, &rec, EventKind::Applied, detail);
    let answer = summary(&handle.current());
    app.register(handle);
    Ok(answer)
}

/// An operator's command on `name`, `arm` naming the candidate a promotion promotes. The
/// answer is the rollout's summary after it.
pub async fn command(
    app: &Arc<App>,
    name: &str,
    cmd: Command,
    arm: Option<String>,
) -> Result<Status, Error> {
    let refused = |e: machine::CommandError| match e {
        machine::CommandError::Transition { .. } => Error::Conflict(e.to_string()),
        machine::CommandError::Invalid { field, ref reason } => Error::invalid(field, reason),
    };
    // Another writer (the reconciler) may commit in between: then decide again on its result.
    for _ in 0..5 {
        let (handle, rec, spec) = app.loaded(name)?;
        let now = now_ms();
        let mut state = machine::command(&spec, &rec.state, cmd, now).map_err(refused)?;
        // A bandit promoted by hand with no arm named: the candidate most probably best, not
        // the first one listed.
        let arm = arm.clone().or_else(|| {
            // Only a promotion to 100% picks one: at an earlier stage every arm stays live.
            let to_full = state.weights(&spec).1 >= 100.0;
            (to_full && spec.bandit.is_some() && rec.state.winner.is_none())
                .then(|| {
                    let fleet = handle.reports().remote(None, &spec.arms());
                    crate::bestarm::best_arm(&spec, &fleet)?.best_candidate(&spec.baseline)
                })
                .flatten()
        });
        if let Some(arm) = &arm {
            state = machine::promote_arm(&spec, &state, arm).map_err(refused)?;
        }
        let base = if state.stage != rec.state.stage {
            Some(totals_now(&app.outgoing, &handle, &spec).await?)
        } else {
            None
        };
        let next = rec.transition(
            &spec,
            &spec,
            state,
            Moves {
                base,
                ..Moves::default()
            },
        );
        let mut text = command_text(&cmd);
        if let Some(arm) = &arm {
            text.push_str(&format!(" {arm}"));
        }
        // An operator decides on what status showed: the last check's figures.
        let figures = handle
            .current()
            .figures
            .as_deref()
            .and_then(Figures::to_json);
        let record = DecisionRecord::new(&spec, &rec.spec_text, &rec.state, &next.state, figures);
        let change = Transition {
            spec: &spec,
            before: &rec,
            next: &next,
            events: vec![(EventKind::Command, text)],
            decided_on: Some(record),
            at_ms: now,
        };
        if app.record(&handle, change).await? {
            handle.wake.notify_one();
            if next.state.phase == Phase::RolledBack && rec.state.phase != Phase::RolledBack {
                // Told after the answer's state is stored, without holding up the answer.
                tokio::spawn(notify_rollback(
                    app.outgoing.hooks.clone(),
                    spec.clone(),
                    next.state.reason.clone(),
                ));
            }
            return Ok(summary(&handle.current()));
        }
    }
    Err(Error::Conflict(
        "the rollout kept changing while this command was applied; send it again".to_owned(),
    ))
}

fn command_text(cmd: &Command) -> String {
    match cmd {
        Command::SetWeight { weight } => format!("set_weight {weight}%"),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| v["command"].as_str().map(str::to_owned))
            .unwrap_or_default(),
    }
}
