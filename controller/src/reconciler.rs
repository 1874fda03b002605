//! One task per rollout, in the manner of kube-rs' `reconcile -> Action { requeue_after }`: read
//! the rollout's figures, run the pure `machine::step` on them, run the hooks the decision needs,
//! store the result if nobody changed the rollout meanwhile, publish it, and sleep until the next
//! check or a wake-up. All IO (Prometheus, hooks, the store) happens here, without any lock held
//! across it, so a slow hook or metric source delays only its own rollout.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use thiserror::Error;

use crate::api::{CheckFigures, Figures};
use crate::bestarm::best_arm;
use crate::check::{after_failed_hook, check, judged_windows, pre_hook, rule_looks};
use crate::clock::now_ms;
use crate::events::{Event, EventKind};
use crate::hooks::notify_rollback;
use crate::machine::Phase;
use crate::record::{Moves, Record};
use crate::registry::{Loaded, Rollout, View};
use crate::report::DecisionRecord;
use crate::rules::Look;
use crate::service::{App, Transition};
use crate::sources::{complete_totals, prometheus_totals, SourceError};
use crate::spec::{HookPoint, Rule, Spec};
use crate::stage_history::{srm_check, History};
use crate::status::{figures, verdict_of, weights_json};
use crate::store::StoreError;
use crate::window::Totals;

// Where the sample-ratio tests' level was found before they moved to the core.
pub use crate::stage_history::SRM_ALPHA;

/// What the loop does after a pass, as kube-rs' `Action`: check again after `requeue_after`
/// (counted from the pass's start) or when woken, whichever comes first; `None`: only when woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    pub requeue_after: Option<Duration>,
}

impl Action {
    pub fn requeue(after: Duration) -> Self {
        Action {
            requeue_after: Some(after),
        }
    }

    pub fn await_change() -> Self {
        Action {
            requeue_after: None,
        }
    }
}

/// Why a pass decided nothing.
#[derive(Debug, Error)]
pub enum ReconcileError {
    /// The rollout's metric source did not answer (status shows it as `figures_error`).
    #[error("no figures this check: {0}")]
    NoFigures(SourceError),
    /// The check's CPU work died on its thread (a panic); the next check starts over.
    #[error("check task: {0}")]
    CheckTask(String),
    /// An operator's command changed the rollout while the check's hooks ran: it wins.
    #[error("changed by an operator during the check; check dropped")]
    Changed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What follows a failed pass, beside it as kube-rs puts its error policy: it is logged, and the
/// next check comes at the usual interval (a source that is down is asked again then).
fn error_policy(name: &str, error: &ReconcileError, spec: &Spec) -> Action {
    match error {
        // Run on a blocking thread with no rollout in hand when it died.
        ReconcileError::CheckTask(_) => eprintln!("rampctl: {error}"),
        _ => eprintln!("rampctl: {name}: {error}"),
    }
    Action::requeue(Duration::from_millis(spec.check_interval_ms))
}

/// The reconciler of one rollout; runs until the process ends.
pub async fn run(app: Arc<App>, handle: Arc<Rollout>) {
    /// Counts this task among the running reconcilers (`/readyz`) until it ends.
    struct Running(Arc<App>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0
                .telemetry
                .reconcilers
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    app.telemetry
        .reconcilers
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _running = Running(app.clone());
    let mut history = History::default();
    let mut figured = false;
    let mut leading = false;
    loop {
        let leads = app.leads(&handle.name).await;
        if leads != leading && app.replicated() {
            let now = if leads {
                "reconciles it (lease taken)"
            } else {
                "no longer reconciles it"
            };
            eprintln!("rampctl: {}: this replica {now}", handle.name);
        }
        leading = leads;
        if !leads {
            // Another replica reconciles it; take over when its lease ends.
            tokio::select! {
                _ = tokio::time::sleep(crate::replicas::LEASE_RETRY) => {}
                _ = handle.wake.notified() => {}
            }
            continue;
        }
        if app.replicated() {
            // Decide on what every replica committed and took, not only this one.
            if let Err(e) = app.refresh(&handle.name).await {
                eprintln!(
                    "rampctl: {}: not refreshed from the store: {e}",
                    handle.name
                );
            }
        }
        let view = handle.current();
        // Checks start a fixed interval apart, however long each took (a fault is caught within
        // threshold + 1 intervals, not that plus the checks' own time).
        let started = tokio::time::Instant::now();
        let action = match &view.loaded {
            Loaded::Ok { rec, spec } if !(is_done(rec) && figured) => {
                let action = reconcile(&app, &handle, rec, spec, &view, &mut history)
                    .await
                    .unwrap_or_else(|e| error_policy(&rec.name, &e, spec));
                figured = true;
                action
            }
            // Cannot be loaded, or done with the figures of the deciding check (they stay what
            // status shows): nothing to do until something changes it.
            _ => Action::await_change(),
        };
        match action.requeue_after {
            Some(after) => tokio::select! {
                _ = tokio::time::sleep_until(started + after) => {}
                _ = handle.wake.notified() => {}
            },
            None => handle.wake.notified().await,
        }
    }
}

/// Promoted, rolled back or aborted: no check changes it any more.
fn is_done(rec: &Record) -> bool {
    matches!(
        rec.state.phase,
        Phase::Succeeded | Phase::RolledBack | Phase::Aborted
    )
}

/// One pass over `view` (whose record and spec are `rec` and `spec`): figures, then (progressing
/// or starting) the decision, its hooks and its storage.
async fn reconcile(
    app: &Arc<App>,
    handle: &Arc<Rollout>,
    rec: &Record,
    spec: &Arc<Spec>,
    view: &Arc<View>,
    history: &mut History,
) -> Result<Action, ReconcileError> {
    let next_check = Action::requeue(Duration::from_millis(spec.check_interval_ms));
    let now = now_ms();
    let (from_prometheus, measured) = tokio::join!(
        prometheus_totals(&app.outgoing, spec),
        crate::custom_fetch::measure(&app.outgoing, spec, &rec.state, now)
    );
    let from_prometheus = match from_prometheus {
        Ok(t) => t,
        Err(why) => {
            let mut f = handle
                .current()
                .figures
                .as_deref()
                .cloned()
                .unwrap_or_default();
            f.error = Some(why.to_string());
            handle.publish_figures(f);
            return Err(ReconcileError::NoFigures(why));
        }
    };
    let decided = judge(app, handle, view, from_prometheus, measured, history, now).await?;
    let (next, events) = match rec.state.phase {
        Phase::Starting => {
            let (next, event) = smoke_test(&app.outgoing.hooks, rec, spec).await;
            (next, event.into_iter().collect())
        }
        Phase::Progressing => {
            let Some((mut next, mut events)) = decided else {
                return Ok(next_check);
            };
            if let Some(point) = pre_hook(spec, &rec.state, &next.state) {
                let payload = json!({"rollout": rec.name, "hook": point, "to_stage": next.state.stage + 1,
                                     "weights": weights_json(&next.state, spec)});
                if let Err(why) =
                    crate::hooks::call(&app.outgoing.hooks, spec, point, payload).await
                {
                    // The check's state is not stored, so a dry run failing now is recorded
                    // at the next check that is.
                    let (n, e) = after_failed_hook(rec, spec, why);
                    (next, events) = (n, vec![e]);
                }
            }
            (next, events)
        }
        _ => return Ok(next_check),
    };
    save(app, handle, rec, &next, events, spec).await?;
    Ok(next_check)
}

/// Checks whose CPU work (`judge_now`) runs at once, all rollouts together; more wait their turn
/// without holding a thread. One per core: more would not finish sooner, and each holds a thread
/// of the blocking pool that the store (SQLite) and the hooks use too.
fn check_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        tokio::sync::Semaphore::new(cores)
    })
}

/// `judge_now` on a blocking thread: a check's figures, windows, rules, stage machine, best arm
/// and sample-ratio tests take milliseconds for 16 arms and 8 rules, which on an async worker
/// would hold up every poll, report and scrape queued behind it. `spawn_blocking` rather than
/// `block_in_place`: the latter needs the multi-thread runtime (it panics on the current-thread
/// one tests use), hands the worker's other tasks to a new worker at each call, and bounds
/// nothing; here `check_slots` bounds how many run at once.
async fn judge(
    app: &Arc<App>,
    handle: &Arc<Rollout>,
    view: &Arc<View>,
    from_prometheus: Option<Totals>,
    measured: crate::spec::custom::Measured,
    history: &mut History,
    now: u64,
) -> Result<Option<(Record, Vec<Event>)>, ReconcileError> {
    let _slot = check_slots()
        .acquire()
        .await
        .map_err(|e| ReconcileError::CheckTask(e.to_string()))?;
    // The history moves to the blocking thread and back; a check that dies (a panic) loses it,
    // and the next check starts over as after a restart.
    let mut moved = std::mem::take(history);
    let (app, handle, view) = (app.clone(), handle.clone(), view.clone());
    let task = tokio::task::spawn_blocking(move || {
        let decided = judge_now(
            &app,
            &handle,
            &view,
            from_prometheus,
            measured,
            &mut moved,
            now,
        );
        (moved, decided)
    });
    match task.await {
        Ok((back, decided)) => {
            *history = back;
            Ok(decided)
        }
        Err(e) => Err(ReconcileError::CheckTask(e.to_string())),
    }
}

/// A check's CPU work: the totals, the windows the rules judge, the sample-ratio tests, the best
/// arm and the figures (published), and for a progressing rollout the decision (`check`). No IO
/// and no lock held but the report book's, briefly.
fn judge_now(
    app: &App,
    handle: &Rollout,
    view: &View,
    from_prometheus: Option<Totals>,
    measured: crate::spec::custom::Measured,
    history: &mut History,
    now: u64,
) -> Option<(Record, Vec<Event>)> {
    let Loaded::Ok { rec, spec } = &view.loaded else {
        return None;
    };
    let mut totals = complete_totals(handle, spec, from_prometheus);
    crate::check::scope_pre_period(&mut totals, rec, spec);
    history.no_data.observe(&rec.state, &measured);
    crate::custom_verdict::attach(&mut totals, measured, &history.no_data);
    ramp_controller_core::window::attach_prices(&mut totals, &spec.prices);
    // Snapshots belong to one stage; after a restart they start over from the stage's base.
    let stage = (rec.state.stage, rec.state.stage_started_ms);
    if history.stage != Some(stage) {
        history.earlier.clear();
        history.checks = 0;
        history.stage = Some(stage);
    }
    let judged = judged_windows(rec, spec, &totals, &history.earlier);
    let looks = if rec.state.phase == Phase::Progressing {
        rule_looks(rec, spec, &totals, &history.earlier, history.checks)
    } else {
        Vec::new()
    };
    let guard = ramp_controller_core::guard::live_guard(spec, &rec.state);
    let tripped = guard
        .as_ref()
        .map(|g| handle.guard_trips().tripped(g.epoch))
        .unwrap_or_default();
    // A trip moves that Envoy's share of the candidate to the baseline, so the split is no longer
    // the configured one, by design: the sample-ratio check stands aside for the rest of the
    // stage (the next stage is a new epoch and a new split), instead of pausing on the guard's
    // own redirect.
    let srm = if tripped.is_empty() {
        srm_check(history, rec, spec, &totals, now)
    } else {
        None
    };
    let fleet = (spec.strategy == crate::spec::StrategyKind::Bandit)
        .then(|| handle.reports().remote(None, &spec.arms()));
    let best = fleet.as_ref().and_then(|f| best_arm(spec, f));
    // P(best) once a check: the decision and status use the same figures.
    let mut shown = figures(
        rec,
        spec,
        &totals,
        &judged,
        fleet.as_ref(),
        best.as_ref(),
        now,
    );
    shown.sample_ratio = srm.as_ref().map(|s| json!(s));
    shown.guard = guard.map(|pushed| crate::api::GuardFigures { tripped, pushed });
    show_decision_verdicts(&mut shown, rec, spec, &looks);
    // The series for the report's plots: one point a check, written in batches by the flusher.
    handle.push_check(crate::report::CheckPoint::from_figures(
        &json!(shown),
        &rec.state,
        spec,
        now,
    ));
    handle.publish_figures(Figures {
        last: Some(shown),
        error: None,
    });
    let decided = (rec.state.phase == Phase::Progressing).then(|| {
        let epoch = ramp_controller_core::guard::live_guard(spec, &rec.state).map(|g| g.epoch);
        let trips = handle.guard_trips().take_unjudged(epoch);
        let seen = crate::check::Seen {
            srm: srm.as_ref(),
            best: best.as_ref(),
            trips: &trips,
        };
        let decided = check(rec, spec, &totals, &looks, now, seen);
        let decided = crate::custom_verdict::pause_without_data(rec, spec, &totals, decided);
        let failed = decided.as_ref().is_some_and(|(n, _)| {
            n.state.failed_checks > rec.state.failed_checks
                || (n.state.phase == Phase::RolledBack && rec.state.failed_checks > 0)
        });
        app.telemetry.check(&rec.name, failed);
        decided
    });
    // Kept last, so the check's totals move into the history instead of being copied there.
    history.earlier.push(totals);
    history.checks += 1;
    decided.flatten()
}

/// Status shows, per rule and candidate, the verdict the check decides with (over every window
/// looked at, each at its level), not one recomputed on the window shown: the two can differ, and
/// what is shown must be what is acted on.
fn show_decision_verdicts(
    shown: &mut CheckFigures,
    rec: &Record,
    spec: &Spec,
    looks: &[Vec<Vec<Look>>],
) {
    let rules: &[Rule] = spec
        .stages
        .get(rec.state.stage)
        .map(|s| s.rules.as_slice())
        .unwrap_or_default();
    let n = spec.candidates.len();
    let checks = &mut shown.checks;
    for (ri, rule) in rules.iter().enumerate() {
        for ci in 0..n {
            let (Some(looks), Some(entry)) = (
                looks.get(ri).and_then(|r| r.get(ci)),
                checks.get_mut(ri * n + ci),
            ) else {
                continue;
            };
            let verdict = crate::rules::judge(rule, looks);
            entry.verdict = verdict_of(&verdict);
            if let crate::rules::Verdict::Fail { reason, .. } = verdict {
                entry.reason = Some(reason);
            }
        }
    }
}

/// The `before_start` hooks of a rollout in `Starting`: stage 1 begins when they pass; a failure
/// counts like a failed check.
async fn smoke_test(
    agent: &ureq::Agent,
    rec: &Record,
    spec: &Arc<Spec>,
) -> (Record, Option<Event>) {
    let payload =
        json!({"rollout": rec.name, "hook": HookPoint::BeforeStart, "candidate": spec.candidate});
    match crate::hooks::call(agent, spec, HookPoint::BeforeStart, payload).await {
        Ok(()) => {
            let moves = Moves {
                new_version: true,
                ..Moves::default()
            };
            let next = rec.transition(spec, spec, rec.state.started(now_ms()), moves);
            let event = "before_start hooks passed; stage 1 started".to_owned();
            (next, Some((EventKind::Started, event)))
        }
        Err(why) => {
            let (next, event) = after_failed_hook(rec, spec, why);
            (next, Some(event))
        }
    }
}

/// Stores a check's outcome, unless the rollout changed meanwhile (an operator's command while the
/// hooks ran): that command wins and this check is dropped. Each event keeps the figures of the
/// check it was decided on (those just published). Tells the `on_rollback` hooks.
async fn save(
    app: &Arc<App>,
    handle: &Arc<Rollout>,
    before: &Record,
    next: &Record,
    events: Vec<Event>,
    spec: &Arc<Spec>,
) -> Result<(), ReconcileError> {
    let name = before.name.clone();
    // Only this task publishes this rollout's figures: these are the check's.
    let figures = handle
        .current()
        .figures
        .as_deref()
        .and_then(Figures::to_json);
    let record = DecisionRecord::new(spec, &before.spec_text, &before.state, &next.state, figures);
    let transition = Transition {
        spec,
        before,
        next,
        events: events.clone(),
        decided_on: Some(record),
        at_ms: now_ms(),
    };
    if !app.record(handle, transition).await? {
        return Err(ReconcileError::Changed);
    }
    for (kind, detail) in &events {
        eprintln!("rampctl: {name}: {kind}: {detail}");
    }
    if next.state.phase == Phase::RolledBack && before.state.phase != Phase::RolledBack {
        notify_rollback(
            app.outgoing.hooks.clone(),
            spec.clone(),
            next.state.reason.clone(),
        )
        .await;
    }
    Ok(())
}
