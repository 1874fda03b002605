//! The task behind `rampctl serve --specs DIR`: reads the directory every few seconds, does what
//! `gitops` decides through the same service as the API (`service::create`, `App::record`), logs
//! each problem once, and keeps what `GET /v1/specs` and the managed rollouts' status show.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::Figures;
use crate::clock::now_ms;
use crate::events::EventKind;
use crate::gitops::{
    classify, owners, scan, state_after_edit, Change, FileSeen, SpecFile, SpecsSeen,
};
use crate::machine::State;
use crate::record::Moves;
use crate::registry::Loaded;
use crate::report::DecisionRecord;
use crate::service::{create, App, Transition};
use crate::spec::Spec;

/// Longest one scan of the directory may take: past it the scan is reported stuck (in
/// `/v1/specs` and `/readyz`), and no other starts until it ends.
pub const SCAN_BUDGET: Duration = Duration::from_secs(10);

/// A scan of the directory on a blocking thread.
type ScanTask = tokio::task::JoinHandle<Result<Vec<SpecFile>, String>>;

/// Runs until the process ends.
pub async fn watch(app: Arc<App>, dir: PathBuf, every: Duration) {
    let mut logged: BTreeMap<String, String> = BTreeMap::new();
    let mut tick = tokio::time::interval(every);
    // A scan that overran its budget: its thread cannot be stopped, so it is waited for, never
    // doubled (a blocked read would otherwise take a thread at every tick).
    let mut overrun: Option<(ScanTask, u64)> = None;
    loop {
        tick.tick().await;
        let mut scan_task = match overrun.take() {
            Some((task, since)) => {
                if !task.is_finished() {
                    let why = format!(
                        "the scan has not finished for {} s (a file whose reads block?); no other scan starts until it does",
                        now_ms().saturating_sub(since) / 1000
                    );
                    once(&mut logged, "(dir)", &why);
                    let mut specs = app.specs.write().unwrap_or_else(|p| p.into_inner());
                    specs.error = Some(why);
                    overrun = Some((task, since));
                    continue;
                }
                (task, since)
            }
            None => {
                let dir = dir.clone();
                (tokio::task::spawn_blocking(move || scan(&dir)), now_ms())
            }
        };
        let scanned = match tokio::time::timeout(SCAN_BUDGET, &mut scan_task.0).await {
            Ok(done) => done.unwrap_or_else(|e| Err(format!("scan task: {e}"))),
            Err(_) => {
                overrun = Some(scan_task);
                Err(format!(
                    "the scan did not finish within {} s (a file whose reads block?)",
                    SCAN_BUDGET.as_secs()
                ))
            }
        };
        let mut seen = SpecsSeen {
            dir: Some(dir.display().to_string()),
            scanned_at_ms: Some(now_ms()),
            managed: app
                .specs
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .managed
                .clone(),
            ..SpecsSeen::default()
        };
        match scanned {
            Err(e) => {
                once(&mut logged, "(dir)", &e);
                seen.error = Some(e);
            }
            Ok(files) => {
                logged.remove("(dir)");
                reconcile(&app, &files, &mut seen, &mut logged).await;
            }
        }
        *app.specs.write().unwrap_or_else(|p| p.into_inner()) = seen;
    }
}

/// Logs `message` for `key` unless it is what was logged for it last time.
fn once(logged: &mut BTreeMap<String, String>, key: &str, message: &str) {
    if logged.get(key).map(String::as_str) != Some(message) {
        eprintln!("rampctl: specs: {key}: {message}");
        logged.insert(key.to_owned(), message.to_owned());
    }
}

async fn reconcile(
    app: &Arc<App>,
    files: &[SpecFile],
    seen: &mut SpecsSeen,
    logged: &mut BTreeMap<String, String>,
) {
    let (owner, errors) = owners(files, &seen.managed);
    for (i, f) in files.iter().enumerate() {
        let mut row = FileSeen {
            file: f.file.clone(),
            ..FileSeen::default()
        };
        row.rollout = f.parsed.as_ref().ok().map(|(_, s)| s.name.clone());
        // `owners` reports every file that cannot be parsed or names a rollout already defined.
        if let Some(e) = errors.get(&i) {
            row.error = Some(e.clone());
        } else if let Ok((text, spec)) = &f.parsed {
            match apply_file(app, &f.file, text, spec).await {
                Ok(change) => {
                    row.change = Some(change);
                    seen.managed.insert(spec.name.clone(), f.file.clone());
                }
                Err(e) => row.error = Some(e),
            }
        }
        match &row.error {
            Some(e) => once(logged, &f.file, e),
            None => {
                logged.remove(&f.file);
            }
        }
        seen.files.push(row);
    }
    // A managed rollout whose file is gone is left as it is, with an event saying so.
    let present: Vec<&str> = files.iter().map(|f| f.file.as_str()).collect();
    let gone: Vec<(String, String)> = seen
        .managed
        .iter()
        .filter(|(rollout, file)| {
            !present.contains(&file.as_str()) && !owner.contains_key(*rollout)
        })
        .map(|(r, f)| (r.clone(), f.clone()))
        .collect();
    for (rollout, file) in gone {
        seen.managed.remove(&rollout);
        note_removed(app, &rollout, &file).await;
    }
}

/// A valid file: create, edit or start a new revision of its rollout.
async fn apply_file(app: &Arc<App>, file: &str, text: &str, spec: &Spec) -> Result<Change, String> {
    let handle = app.rollout(&spec.name);
    let current = match handle.as_ref().map(|h| h.current()) {
        None => None,
        Some(view) => match &view.loaded {
            Loaded::Ok { rec, spec } => Some((rec.clone(), spec.clone())),
            Loaded::Error { reason } => {
                return Err(format!(
                "rollout {:?} cannot be loaded ({reason}); fix it before its file can change it",
                spec.name
            ))
            }
        },
    };
    let change = classify(
        current
            .as_ref()
            .map(|(r, s)| (r.spec_text.as_str(), s.as_ref())),
        text,
        spec,
    );
    let (Some(handle), Some((rec, old))) = (handle, current) else {
        create(
            app,
            text.to_owned(),
            Arc::new(spec.clone()),
            &format!("rollout applied from {file}"),
        )
        .await
        .map_err(|e| e.to_string())?;
        return Ok(Change::Create);
    };
    let now = now_ms();
    let (next, event) = match change {
        Change::Create | Change::Unchanged => return Ok(Change::Unchanged),
        Change::Edit => {
            let moves = Moves {
                spec_text: Some(text.to_owned()),
                ..Moves::default()
            };
            let next = rec.transition(&old, spec, state_after_edit(&rec.state, &old, spec), moves);
            let detail = format!(
                "{file} changed: the edited spec applies from now, in stage {} at {}% (the weight in force is kept; a raise goes through a check)",
                next.state.stage + 1,
                next.state.weights(spec).1
            );
            (next, (EventKind::SpecChanged, detail))
        }
        Change::NewRevision => {
            let base = crate::sources::totals_now(&app.outgoing, &handle, spec)
                .await
                .map_err(|e| e.to_string())?;
            let moves = Moves {
                base: Some(base),
                spec_text: Some(text.to_owned()),
                new_version: true,
            };
            let next = rec.transition(&old, spec, State::start(spec, now), moves);
            let detail = format!(
                "{file} changed the baseline, candidates or strategy ({} -> {}): a new revision starts at stage 1",
                old.candidates.join(", "),
                spec.candidates.join(", ")
            );
            (next, (EventKind::NewRevision, detail))
        }
    };
    // The report keeps every revision's text with the event that brought it in.
    let figures = handle
        .current()
        .figures
        .as_deref()
        .and_then(Figures::to_json);
    let mut record =
        DecisionRecord::new(spec, text, &rec.state, &next.state, figures).with_spec(text);
    record.weights_before = rec.state.arm_weights(&old).into_iter().collect();
    let transition = Transition {
        spec: &Arc::new(spec.clone()),
        before: &rec,
        next: &next,
        events: vec![event],
        decided_on: Some(record),
        at_ms: now,
    };
    let saved = app
        .record(&handle, transition)
        .await
        .map_err(|e| e.to_string())?;
    if !saved {
        return Err("the rollout changed meanwhile; retried at the next scan".to_owned());
    }
    handle.wake.notify_one();
    Ok(change)
}

/// Records (once) that a managed rollout's file was removed: the rollout is left as it is.
async fn note_removed(app: &Arc<App>, rollout: &str, file: &str) {
    let Some(handle) = app.rollout(rollout) else {
        return;
    };
    let view = handle.current();
    let Loaded::Ok { rec, spec } = &view.loaded else {
        return;
    };
    let detail = format!(
        "{file} was removed: the rollout is left as it is (`rampctl abort {rollout}` stops it)"
    );
    eprintln!("rampctl: specs: {detail}");
    let change = Transition {
        spec,
        before: rec,
        next: rec,
        events: vec![(EventKind::SpecRemoved, detail)],
        decided_on: None,
        at_ms: now_ms(),
    };
    let saved = app.record(&handle, change).await;
    if let Err(e) = saved {
        eprintln!("rampctl: specs: {rollout}: {e}");
    }
}
