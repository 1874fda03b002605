//! `rampctl serve`: the HTTP API (filters poll state and post reports; operators apply specs and
//! send commands) and the loop that checks each progressing rollout on its interval. The decisions
//! are `machine::step`; this module moves data between HTTP, SQLite and that function.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::machine::{self, Action, Command, Phase, State};
use crate::posterior::posterior;
use crate::rules::{evaluate, Verdict};
use crate::spec::{Bound, HookPoint, Spec};
use crate::store::{Record, Store, StoreError};
use crate::window::{sum_reports, sum_shadow, window, Report, Totals};

pub struct Config {
    pub listen: SocketAddr,
    pub db: PathBuf,
    /// Bearer token required for mutating calls; `None` leaves them open (local use only).
    pub token: Option<String>,
    /// Bearer token the filters' reports must carry (their `controller.token_env`); `None`: open.
    pub report_token: Option<String>,
}

struct App {
    store: Mutex<Store>,
    token: Option<String>,
    report_token: Option<String>,
}

type Shared = Arc<App>;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs until the process is stopped.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let app = Arc::new(App {
        store: Mutex::new(Store::open(&cfg.db)?),
        token: cfg.token,
        report_token: cfg.report_token,
    });
    let router = Router::new()
        .route("/v1/rollouts", get(list).post(apply))
        .route("/v1/rollouts/{name}", get(status))
        .route("/v1/rollouts/{name}/state", get(live_state))
        .route("/v1/rollouts/{name}/reports", post(report))
        .route("/v1/rollouts/{name}/commands", post(command))
        .route("/v1/rollouts/{name}/history", get(history))
        .route("/v1/rollouts/{name}/feedback", post(feedback))
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    eprintln!("rampctl: serving on http://{}", listener.local_addr()?);
    tokio::spawn(check_loop(app));
    axum::serve(listener, router).await?;
    Ok(())
}

/// An API error: status and a JSON body `{"error": ..., "field": ...}`.
struct ApiError(StatusCode, Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = match e {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Exists(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, json!({"error": e.to_string()}))
    }
}

fn bad(code: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(code, json!({"error": msg.into()}))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    match &app.token {
        Some(token) if bearer(headers) != Some(token.as_str()) => Err(bad(
            StatusCode::UNAUTHORIZED,
            "this call changes a rollout: it needs 'Authorization: Bearer <token>'",
        )),
        _ => Ok(()),
    }
}

/// Reports steer rollbacks like commands do; with `--report-token` they must carry it (or the
/// operator's token).
fn authorize_report(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(report_token) = &app.report_token else {
        return Ok(());
    };
    let given = bearer(headers);
    if given == Some(report_token.as_str()) || (given.is_some() && given == app.token.as_deref()) {
        Ok(())
    } else {
        Err(bad(
            StatusCode::UNAUTHORIZED,
            "reports need 'Authorization: Bearer <report token>' (the filter's controller.token_env)",
        ))
    }
}

fn store(app: &App) -> Result<std::sync::MutexGuard<'_, Store>, ApiError> {
    app.store
        .lock()
        .map_err(|_| bad(StatusCode::INTERNAL_SERVER_ERROR, "store lock poisoned"))
}

/// The rollout's cumulative totals from its source (the filters' reports, or Prometheus), with the
/// ground truth the applications reported.
fn totals_of(store: &Store, spec: &Spec) -> Result<Totals, ApiError> {
    let reports = store.reports(&spec.name)?;
    let mut totals = match &spec.prometheus {
        Some(url) => {
            tokio::task::block_in_place(|| crate::prometheus::fetch_totals(url, &spec.name))
                .map_err(|e| bad(StatusCode::BAD_GATEWAY, e.to_string()))?
        }
        None => sum_reports(&reports),
    };
    // Copies are mirrored to the candidate; only the filters report comparisons (either source).
    totals.entry(spec.candidate.clone()).or_default().shadow = sum_shadow(&reports);
    for f in store.feedback_totals(&spec.name)? {
        let t = totals.entry(f.arm).or_default();
        t.labelled = f.labelled;
        t.correct = f.correct;
        t.reward_micros = f.reward_micros;
    }
    Ok(totals)
}

/// Delayed feedback for one decision (the id the filter put in the decision header):
/// `{"decision": "v2.00ab..", "correct": true}` (ground truth) and/or `"reward": 0.7`.
async fn feedback(
    AxState(app): AxState<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Result<Json<Value>, ApiError> {
    // Feedback steers rollbacks and the bandit: only callers holding the token may post it.
    authorize(&app, &headers)?;
    let v: Value = serde_json::from_str(&body)
        .map_err(|e| bad(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let decision = v["decision"].as_str().ok_or_else(|| {
        bad(
            StatusCode::BAD_REQUEST,
            "decision: required, the id from the decision header",
        )
    })?;
    let arm = decision.split_once('.').map(|(a, _)| a).unwrap_or("");
    let correct = v
        .get("correct")
        .map(|c| {
            c.as_bool()
                .ok_or_else(|| bad(StatusCode::BAD_REQUEST, "correct: must be true or false"))
        })
        .transpose()?;
    let reward = v
        .get("reward")
        .map(|r| {
            r.as_f64()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    bad(
                        StatusCode::BAD_REQUEST,
                        "reward: must be a number in [0, 1]",
                    )
                })
        })
        .transpose()?;
    if correct.is_none() && reward.is_none() {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            "give correct (ground truth) or reward",
        ));
    }
    let mut store = store(&app)?;
    let (_, spec) = load(&store, &name)?;
    if arm != spec.baseline && arm != spec.candidate {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            format!("decision: {decision:?} names no arm of rollout {name:?}"),
        ));
    }
    let recorded = store.put_feedback(&name, decision, arm, correct, reward, now_ms())?;
    Ok(Json(json!({"recorded": recorded})))
}

/// The bandit counts of the whole fleet (every Envoy's newest report) plus the delayed rewards,
/// without what `requester` (an Envoy's instance id) holds itself.
fn fleet_bandit(
    store: &mut Store,
    spec: &Spec,
    requester: Option<&str>,
) -> Result<std::collections::BTreeMap<String, crate::window::BanditCounts>, StoreError> {
    Ok(store
        .fleet(&spec.name)?
        .remote(requester, &[&spec.baseline, &spec.candidate]))
}

fn summary(rec: &Record, spec: &Spec, totals: &Totals, store: &mut Store) -> Value {
    let (bw, cw) = rec.state.weights(spec);
    let arm = |name: &str| {
        let w = window(totals, &rec.base, name);
        json!({"requests": w.requests, "errors": w.errors,
               "error_rate": if w.requests > 0 { w.errors as f64 / w.requests as f64 } else { 0.0 },
               "p95_ms": w.latency.quantile(0.95),
               "accuracy": if w.labelled > 0 { Some(w.correct as f64 / w.labelled as f64) } else { None }, "labelled": w.labelled,
               "shadow": w.shadow})
    };
    let stage = spec.stages.get(rec.state.stage);
    // The stage's rules against the stage's window so far, for `status`: figure, bound, verdict.
    let (candidate, baseline) = (
        window(totals, &rec.base, &spec.candidate),
        window(totals, &rec.base, &spec.baseline),
    );
    let checks: Vec<Value> = stage
        .map(|s| s.rules.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|rule| {
            let (verdict, value) = match evaluate(rule, &candidate, &baseline) {
                Verdict::Pass { value } => ("pass", Some(value)),
                Verdict::Fail { value, .. } => ("fail", Some(value)),
                Verdict::NotEnoughData { .. } => ("not_enough_data", None),
            };
            let (bound, limit) = match rule.bound {
                Bound::Max(v) => ("max", v),
                Bound::Min(v) => ("min", v),
                Bound::WorseThanBaseline(v) => ("max_worse_than_baseline", v),
            };
            json!({"metric": rule.metric, "bound": bound, "limit": limit, "value": value,
                   "samples": candidate.samples(rule.metric), "min_samples": rule.min_samples, "verdict": verdict})
        })
        .collect();
    let ab_test = spec
        .ab_test
        .as_ref()
        .filter(|_| rec.state.stage == 0)
        .map(|ab| {
            json!({"metric": ab.metric, "planned_per_arm": ab.planned_per_arm,
                   "result": machine::ab_result(ab, &candidate, &baseline)})
        });
    let bandit = (spec.strategy == crate::spec::StrategyKind::Bandit)
        .then(|| fleet_bandit(store, spec, None).ok())
        .flatten()
        .map(|counts| {
            counts
                .into_iter()
                .map(|(arm, c)| {
                    let p = posterior(c.trials, c.reward_micros as f64 / 1e6, 0.95);
                    (arm, json!(p))
                })
                .collect::<serde_json::Map<_, _>>()
        });
    json!({
        "ab_test": ab_test, "bandit": bandit, "strategy": spec.strategy,
        "checks": checks, "override_weight": rec.state.override_weight,
        "promotion": if spec.manual_promotion { "manual" } else { "auto" },
        "name": rec.name, "baseline": spec.baseline, "candidate": spec.candidate, "phase": rec.state.phase, "stage": rec.state.stage + 1, "stages": spec.stages.len(),
        "weights": {spec.baseline.clone(): bw, spec.candidate.clone(): cw},
        "version": rec.version, "failed_checks": rec.state.failed_checks, "reason": rec.state.reason,
        "stage_started_ms": rec.state.stage_started_ms,
        "stage_min_duration_ms": stage.map(|s| s.min_duration_ms), "stage_min_requests": stage.map(|s| s.min_requests),
        "window": {spec.baseline.clone(): arm(&spec.baseline), spec.candidate.clone(): arm(&spec.candidate)},
    })
}

fn load(store: &Store, name: &str) -> Result<(Record, Spec), ApiError> {
    let rec = store.get(name)?;
    let spec = Spec::parse(&rec.spec_text)
        .map_err(|e| bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((rec, spec))
}

async fn apply(
    AxState(app): AxState<Shared>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let spec = Spec::parse(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            json!({"error": e.to_string(), "field": e.field, "reason": e.reason}),
        )
    })?;
    let mut store = store(&app)?;
    let now = now_ms();
    let rec = Record {
        name: spec.name.clone(),
        spec_text: body,
        state: State::start(&spec, now),
        version: 1,
        base: totals_of(&store, &spec)?,
    };
    store.insert(&rec, now)?;
    Ok((
        StatusCode::CREATED,
        Json(summary(&rec, &spec, &rec.base, &mut store)),
    )
        .into_response())
}

async fn list(AxState(app): AxState<Shared>) -> Result<Json<Value>, ApiError> {
    let mut store = store(&app)?;
    let mut out = Vec::new();
    for rec in store.list()? {
        if let Ok(spec) = Spec::parse(&rec.spec_text) {
            let totals = totals_of(&store, &spec)?;
            out.push(summary(&rec, &spec, &totals, &mut store));
        }
    }
    Ok(Json(json!({"rollouts": out})))
}

async fn status(
    AxState(app): AxState<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut store = store(&app)?;
    let (rec, spec) = load(&store, &name)?;
    let totals = totals_of(&store, &spec)?;
    Ok(Json(summary(&rec, &spec, &totals, &mut store)))
}

/// What the filters poll: the weights, and the bandit counts the asking Envoy (`?instance=`, as
/// in its reports) does not hold itself.
async fn live_state(
    AxState(app): AxState<Shared>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let mut store = store(&app)?;
    let (rec, spec) = load(&store, &name)?;
    let (bw, cw) = rec.state.weights(&spec);
    let bandit = fleet_bandit(&mut store, &spec, query.get("instance").map(String::as_str))?;
    Ok(Json(json!({
        "version": rec.version,
        "stage": rec.state.stage + 1,
        "weights": {spec.baseline.clone(): bw, spec.candidate.clone(): cw},
        "rolled_back": rec.state.phase == Phase::RolledBack,
        "bandit": bandit,
    })))
}

async fn report(
    AxState(app): AxState<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Result<StatusCode, ApiError> {
    authorize_report(&app, &headers)?;
    let parsed: Report = serde_json::from_str(&body)
        .map_err(|e| bad(StatusCode::BAD_REQUEST, format!("report: {e}")))?;
    store(&app)?.put_report(&name, &parsed, &body)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn command(
    AxState(app): AxState<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    let body: Value = serde_json::from_str(&body)
        .map_err(|e| bad(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let cmd: Command = match serde_json::from_value(body.clone()) {
        Ok(c) => c,
        Err(_) if body["command"] == "set_weight" => {
            return Err(bad(
                StatusCode::BAD_REQUEST,
                "weight: required with set_weight, the candidate's percentage in [0, 100]",
            ))
        }
        Err(_) => return Err(bad(
            StatusCode::BAD_REQUEST,
            "command: one of promote, promote_full, pause, resume, roll_back, abort, set_weight",
        )),
    };
    let mut store = store(&app)?;
    let (mut rec, spec) = load(&store, &name)?;
    let now = now_ms();
    let next = machine::command(&spec, &rec.state, cmd, now).map_err(|e| match e {
        machine::CommandError::Transition { .. } => bad(StatusCode::CONFLICT, e.to_string()),
        machine::CommandError::Invalid { .. } => bad(StatusCode::BAD_REQUEST, e.to_string()),
    })?;
    let rolled_back = next.phase == Phase::RolledBack && rec.state.phase != Phase::RolledBack;
    let totals = totals_of(&store, &spec)?;
    if next.stage != rec.state.stage {
        rec.base = totals.clone();
    }
    if next.weights(&spec) != rec.state.weights(&spec) {
        rec.version += 1;
    }
    rec.state = next;
    store.update(&rec, Some(("command", &command_text(&cmd))), now)?;
    let answer = summary(&rec, &spec, &totals, &mut store);
    drop(store);
    if rolled_back {
        // Told after the answer's state is stored, without holding up the answer.
        let reason = rec.state.reason.clone();
        tokio::task::spawn_blocking(move || notify_rollback(&spec, reason.as_deref()));
    }
    Ok(Json(answer))
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

async fn history(
    AxState(app): AxState<Shared>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = store(&app)?;
    store.get(&name)?;
    let events: Vec<Value> = store
        .events(&name)?
        .into_iter()
        .map(|e| json!({"at_ms": e.at_ms, "kind": e.kind, "detail": e.detail}))
        .collect();
    Ok(Json(json!({"events": events})))
}

/// One check of a rollout: the record to store (if anything changed) and the event to log.
/// `earlier` holds the totals of this stage's previous checks, newest first; each rule judges the
/// most recent window (now minus one of them, or minus the stage base) that has its `min_samples`.
pub fn check(
    rec: &Record,
    spec: &Spec,
    totals: &Totals,
    earlier: &[Totals],
    now: u64,
) -> Option<(Record, Option<(String, String)>)> {
    let stage_windows = (
        window(totals, &rec.base, &spec.candidate),
        window(totals, &rec.base, &spec.baseline),
    );
    let windows = |rule: &crate::spec::Rule| {
        let pick = |from: &Totals| {
            (
                window(totals, from, &spec.candidate),
                window(totals, from, &spec.baseline),
            )
        };
        earlier
            .iter()
            .map(pick)
            .find(|(c, b)| {
                // Only a relative bound needs the baseline's samples too.
                let relative = matches!(rule.bound, crate::spec::Bound::WorseThanBaseline(_));
                c.samples(rule.metric) >= rule.min_samples
                    && (!relative || b.samples(rule.metric) >= rule.min_samples)
            })
            .unwrap_or_else(|| pick(&rec.base))
    };
    let (state, action) = machine::step(spec, &rec.state, now, &stage_windows, &windows);
    if state == rec.state {
        return None;
    }
    let mut next = rec.clone();
    if state.weights(spec) != rec.state.weights(spec) {
        next.version += 1;
    }
    if state.stage != rec.state.stage {
        next.base = totals.clone();
    }
    next.state = state;
    let event = match action {
        Action::Advance { to_stage } => Some((
            "advance".to_owned(),
            format!(
                "stage {} at {}%",
                to_stage + 1,
                spec.stages[to_stage].weight
            ),
        )),
        Action::Promote => Some((
            "promoted".to_owned(),
            "candidate has all traffic".to_owned(),
        )),
        Action::RollBack { reason } => Some(("rolled_back".to_owned(), reason)),
        Action::Hold(Some(reason)) if next.state.failed_checks > rec.state.failed_checks => {
            Some(("check_failed".to_owned(), reason))
        }
        Action::Hold(Some(reason))
            if reason == machine::AWAITING_PROMOTION
                && rec.state.reason.as_deref() != Some(machine::AWAITING_PROMOTION) =>
        {
            Some(("awaiting_promotion".to_owned(), reason))
        }
        Action::Hold(_) => None,
    };
    Some((next, event))
}

/// POSTs `event` to every hook at `point`; the first failure (after retries) is the error.
fn run_hooks(spec: &Spec, point: HookPoint, event: &Value) -> Result<(), String> {
    for hook in spec.hooks.iter().filter(|h| h.on == point) {
        let mut last = String::new();
        let ok = (0..=hook.retries).any(|_| {
            let sent = ureq::post(&hook.url)
                .timeout(Duration::from_secs_f64(hook.timeout_s))
                .set("content-type", "application/json")
                .send_string(&event.to_string());
            match sent {
                Ok(_) => true,
                Err(e) => {
                    last = e.to_string();
                    false
                }
            }
        });
        if !ok {
            return Err(format!("{point:?} hook {} failed: {last}", hook.url));
        }
    }
    Ok(())
}

/// The hook point a decided transition must pass first, if any.
fn pre_hook(spec: &Spec, before: &State, after: &State) -> Option<HookPoint> {
    let (_, from) = before.weights(spec);
    let (_, to) = after.weights(spec);
    if to <= from {
        None
    } else if to >= 100.0 {
        Some(HookPoint::BeforePromotion)
    } else {
        Some(HookPoint::BeforeStep)
    }
}

async fn check_loop(app: Shared) {
    // Per rollout: when it was last checked, its stage then, and this stage's check totals, newest first.
    let mut last: HashMap<String, (u64, usize, std::collections::VecDeque<Totals>)> =
        HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let records = match app.store.lock() {
            Ok(store) => store.list().unwrap_or_default(),
            Err(_) => continue,
        };
        for rec in records {
            if !matches!(rec.state.phase, Phase::Progressing | Phase::Starting) {
                continue;
            }
            let Ok(spec) = Spec::parse(&rec.spec_text) else {
                continue;
            };
            let now = now_ms();
            let due = last
                .get(&rec.name)
                .is_none_or(|(t, _, _)| now.saturating_sub(*t) >= spec.check_interval_ms);
            if !due {
                continue;
            }
            if rec.state.phase == Phase::Starting {
                last.insert(rec.name.clone(), (now, rec.state.stage, Default::default()));
                let (next, event) = smoke_test(&rec, &spec);
                save(&app, &rec, &next, event, &spec, now);
                continue;
            }
            let totals = {
                let Ok(store) = app.store.lock() else {
                    continue;
                };
                match totals_of(&store, &spec) {
                    Ok(t) => t,
                    Err(ApiError(_, e)) => {
                        eprintln!(
                            "rampctl: {}: no figures this check: {}",
                            rec.name, e["error"]
                        );
                        continue;
                    }
                }
            };
            // Snapshots belong to one stage; after a restart they start over from the stage's base.
            let entry =
                last.entry(rec.name.clone())
                    .or_insert((now, rec.state.stage, Default::default()));
            if entry.1 != rec.state.stage {
                entry.2.clear();
                entry.1 = rec.state.stage;
            }
            entry.0 = now;
            let earlier: Vec<Totals> = entry.2.iter().cloned().collect();
            entry.2.push_front(totals.clone());
            entry.2.truncate(600);
            let Some((mut next, mut event)) = check(&rec, &spec, &totals, &earlier, now) else {
                continue;
            };
            // Pre-hooks run without the store locked: the filters keep polling meanwhile.
            if let Some(point) = pre_hook(&spec, &rec.state, &next.state) {
                let (bw, cw) = next.state.weights(&spec);
                let payload = json!({"rollout": rec.name, "hook": point, "to_stage": next.state.stage + 1,
                                     "weights": {spec.baseline.clone(): bw, spec.candidate.clone(): cw}});
                if let Err(why) = tokio::task::block_in_place(|| run_hooks(&spec, point, &payload))
                {
                    let (state, action) = machine::hook_failed(&spec, &rec.state, why.clone());
                    next = Record {
                        state,
                        ..rec.clone()
                    };
                    event = Some(match action {
                        Action::RollBack { reason } => {
                            next.version = rec.version + 1;
                            ("rolled_back".to_owned(), reason)
                        }
                        _ => ("hook_failed".to_owned(), why),
                    });
                }
            }
            save(&app, &rec, &next, event, &spec, now);
        }
    }
}

/// The `before_start` hooks of a rollout in `Starting`: stage 1 begins when they pass; a failure
/// counts like a failed check.
fn smoke_test(rec: &Record, spec: &Spec) -> (Record, Option<(String, String)>) {
    let payload =
        json!({"rollout": rec.name, "hook": HookPoint::BeforeStart, "candidate": spec.candidate});
    match tokio::task::block_in_place(|| run_hooks(spec, HookPoint::BeforeStart, &payload)) {
        Ok(()) => (
            Record {
                state: rec.state.started(now_ms()),
                version: rec.version + 1,
                ..rec.clone()
            },
            Some((
                "started".to_owned(),
                "before_start hooks passed; stage 1 started".to_owned(),
            )),
        ),
        Err(why) => {
            let (state, action) = machine::hook_failed(spec, &rec.state, why.clone());
            let next = Record {
                state,
                ..rec.clone()
            };
            let event = match action {
                Action::RollBack { reason } => ("rolled_back".to_owned(), reason),
                _ => ("hook_failed".to_owned(), why),
            };
            (next, Some(event))
        }
    }
}

/// Stores a check's outcome, unless the rollout changed meanwhile (an operator's command while the
/// hooks ran): that command wins and this check is dropped. Tells the `on_rollback` hooks.
fn save(
    app: &App,
    before: &Record,
    next: &Record,
    event: Option<(String, String)>,
    spec: &Spec,
    now: u64,
) {
    let saved = match app.store.lock() {
        Ok(mut store) => match store.get(&before.name) {
            Ok(current) if current.state == before.state && current.version == before.version => {
                store.update(
                    next,
                    event.as_ref().map(|(k, d)| (k.as_str(), d.as_str())),
                    now,
                )
            }
            Ok(_) => {
                eprintln!(
                    "rampctl: {}: changed by an operator during the check; check dropped",
                    before.name
                );
                return;
            }
            Err(e) => Err(e),
        },
        Err(_) => return,
    };
    match (saved, &event) {
        (Err(e), _) => eprintln!("rampctl: {}: {e}", before.name),
        (Ok(()), Some((kind, detail))) => eprintln!("rampctl: {}: {kind}: {detail}", before.name),
        _ => {}
    }
    if next.state.phase == Phase::RolledBack && before.state.phase != Phase::RolledBack {
        tokio::task::block_in_place(|| notify_rollback(spec, next.state.reason.as_deref()));
    }
}

/// Tells the `on_rollback` hooks; their answer changes nothing, a failure is only logged.
fn notify_rollback(spec: &Spec, reason: Option<&str>) {
    let payload = json!({"rollout": spec.name, "hook": HookPoint::OnRollback, "reason": reason});
    if let Err(e) = run_hooks(spec, HookPoint::OnRollback, &payload) {
        eprintln!("rampctl: {}: {e}", spec.name);
    }
}
