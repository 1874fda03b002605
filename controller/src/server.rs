//! `rampctl serve`: the HTTP API (filters poll state and post reports; operators apply specs and
//! send commands). Concurrency model: each rollout has a published snapshot (`registry`) that
//! polls read and long-poll on, never waiting on a check; one reconciler task per rollout
//! (`reconciler`) does the checks and their IO; SQLite is touched on blocking threads only, for
//! one statement or transaction at a time; reports are validated on arrival, kept in memory and
//! written to SQLite in batches by one flusher task.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::auth::{Access, Caller, Refusal, TokenOptions, Tokens};
use crate::hooks::notify_rollback;
use crate::machine::{self, Command, Phase, State};
use crate::redact::redact_text;
use crate::registry::{Accepted, Loaded, Pending, ReportBook, Rollout, View};
use crate::report::{DecisionRecord, ReportEvent, RolloutReport};
use crate::sources::totals_now;
use crate::spec::{Spec, MAX_SPEC_BYTES};
use crate::store::{NewEvent, Record, Store, StoreError};
use crate::summary::summary;
use crate::window::Report;
use ramp_protocol::live::LiveState;

pub struct Config {
    pub listen: SocketAddr,
    pub db: PathBuf,
    /// Who may call what (`--auth-token`, `--report-token`, `--read-token`, `--metrics-token`,
    /// `--insecure-no-auth`).
    pub tokens: TokenOptions,
    /// A directory of rollout specs to reconcile (`--specs`), and how often to read it.
    pub specs: Option<PathBuf>,
    pub specs_every: Duration,
    /// At most this many API connections at a time (`--max-connections`); `None`: 10,000, or
    /// what the open-files limit allows.
    pub max_connections: Option<usize>,
    /// A PEM file of CAs that outgoing https (hooks, Prometheus) trusts besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// Largest report body (a report of two arms with shadow totals is about 1 KB).
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// Largest feedback or command body.
pub const MAX_SMALL_BYTES: usize = 4 * 1024;
/// Longest a state poll may wait for a change (`wait_ms`).
pub const MAX_WAIT_MS: u64 = 30_000;
/// How often accepted reports are written to SQLite. Reports are cumulative, so a crash loses
/// nothing that the Envoys' next reports do not bring back.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

pub struct App {
    /// SQLite. Locked only on blocking threads (`App::db`), for one statement or transaction.
    store: Mutex<Store>,
    /// The rollouts by name. Held only to look one up or add one.
    rollouts: RwLock<BTreeMap<String, Arc<Rollout>>>,
    pending: Mutex<Pending>,
    tokens: Tokens,
    pub telemetry: crate::telemetry::Telemetry,
    /// What the last scan of `--specs` found (`GET /v1/specs`).
    pub specs: RwLock<crate::watcher::SpecsSeen>,
    pub connections: Arc<crate::connections::ConnectionStats>,
    /// The agents hooks and Prometheus are called with, and the roots their https trusts.
    pub outgoing: crate::tls::Outgoing,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl App {
    /// Runs `f` on the store, on a blocking thread.
    pub async fn db<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let app = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = app.store.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut store)
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Undecodable(format!("store task: {e}"))))
    }

    pub fn rollout(&self, name: &str) -> Option<Arc<Rollout>> {
        self.rollouts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn all(&self) -> Vec<Arc<Rollout>> {
        self.rollouts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Stores `next` if the rollout is still `before`, and publishes it in the same critical
    /// section (so two writers' snapshots cannot be published out of order). False: changed
    /// meanwhile, nothing written.
    pub async fn commit(
        self: &Arc<Self>,
        handle: &Arc<Rollout>,
        before: &Record,
        next: &Record,
        spec: &Arc<Spec>,
        event: Option<(String, String)>,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        let events = event
            .map(|(kind, detail)| NewEvent::new(&kind, &detail, None))
            .into_iter()
            .collect();
        self.commit_recorded(handle, before, next, spec, events, at_ms)
            .await
    }

    /// `commit` with any number of events, each with the decision record it was made on.
    pub async fn commit_recorded(
        self: &Arc<Self>,
        handle: &Arc<Rollout>,
        before: &Record,
        next: &Record,
        spec: &Arc<Spec>,
        events: Vec<NewEvent>,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        let (events_for_hooks, spec_for_hooks, next_for_hooks) =
            (events.clone(), spec.clone(), next.clone());
        let (handle, before, next, spec) =
            (handle.clone(), before.clone(), next.clone(), spec.clone());
        self.db(move |store| {
            let saved = store.update_if_recorded(&before, &next, &events, at_ms)?;
            if saved {
                handle.publish_record(next, spec);
            }
            Ok(saved)
        })
        .await
        .inspect(|&saved| {
            if saved {
                for e in &events_for_hooks {
                    self.transition(&spec_for_hooks, &next_for_hooks, &e.kind, &e.detail);
                }
            }
        })
    }

    /// A stored transition: counted, and told to the `event` hooks on their own task.
    fn transition(&self, spec: &Arc<Spec>, rec: &Record, kind: &str, detail: &str) {
        // Nothing follows a rollback but refusals, so a stored transition into it is the one.
        self.telemetry
            .event(&rec.name, rec.state.phase == Phase::RolledBack);
        if spec
            .hooks
            .iter()
            .any(|h| h.on == crate::spec::HookPoint::Event)
        {
            let payload = crate::hooks::event_payload(spec, rec, kind, detail);
            tokio::spawn(crate::hooks::notify_event(
                self.outgoing.hooks.clone(),
                spec.clone(),
                payload,
            ));
        }
    }
}

/// Runs until the process is stopped.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let tokens = Tokens::new(cfg.tokens)?;
    if tokens.is_open() {
        eprintln!(
            "rampctl: WARNING: --insecure-no-auth: anyone who can reach {} can read, report on and change every rollout",
            cfg.listen
        );
    }
    // Before the store: a CA file that cannot be used stops the start, not every hook later.
    let outgoing = crate::tls::Outgoing::new(cfg.ca_file.as_deref())?;
    let db = cfg.db.clone();
    let (store, loaded) = tokio::task::spawn_blocking(move || load(&db)).await??;
    let app = Arc::new(App {
        store: Mutex::new(store),
        rollouts: RwLock::new(BTreeMap::new()),
        pending: Mutex::new(Pending::default()),
        tokens,
        telemetry: crate::telemetry::Telemetry::default(),
        specs: RwLock::new(crate::watcher::SpecsSeen::default()),
        connections: Arc::default(),
        outgoing,
    });
    for handle in loaded {
        register(&app, handle);
    }
    let small = DefaultBodyLimit::max(MAX_SMALL_BYTES);
    let guard = |access| axum::middleware::from_fn_with_state((app.clone(), access), require);
    let router = Router::new()
        .route(
            "/v1/rollouts",
            get(list)
                .route_layer(guard(Access::Read))
                .merge(post(apply).route_layer(guard(Access::Change)))
                .layer(DefaultBodyLimit::max(MAX_SPEC_BYTES)),
        )
        .route(
            "/v1/rollouts/{name}",
            get(status).route_layer(guard(Access::Read)),
        )
        .route(
            "/v1/rollouts/{name}/state",
            get(live_state).route_layer(guard(Access::Poll)),
        )
        .route(
            "/v1/rollouts/{name}/reports",
            post(report)
                .route_layer(guard(Access::Report))
                .layer(DefaultBodyLimit::max(MAX_REPORT_BYTES)),
        )
        .route(
            "/v1/rollouts/{name}/commands",
            post(command)
                .route_layer(guard(Access::Change))
                .layer(small),
        )
        .route(
            "/v1/rollouts/{name}/history",
            get(history).route_layer(guard(Access::Read)),
        )
        .route(
            "/v1/rollouts/{name}/report",
            get(rollout_report).route_layer(guard(Access::Read)),
        )
        .route(
            "/v1/rollouts/{name}/feedback",
            post(feedback)
                .route_layer(guard(Access::Change))
                .layer(small),
        )
        .route("/metrics", get(metrics).route_layer(guard(Access::Metrics)))
        .route("/v1/specs", get(specs).route_layer(guard(Access::Read)))
        // Probes carry no credential (kubelet's do not).
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(axum::middleware::from_fn(within_budget))
        .with_state(app.clone());
    let listener = crate::connections::listen(cfg.listen)?;
    let max_connections = crate::connections::connection_limit(cfg.max_connections);
    eprintln!(
        "rampctl: at most {max_connections} connections, each closed after {} s without a request",
        crate::connections::HEADER_TIMEOUT.as_secs()
    );
    eprintln!("rampctl: outgoing https trusts {}", app.outgoing.trusted);
    eprintln!("rampctl: serving on http://{}", listener.local_addr()?);
    if let Some(dir) = cfg.specs {
        tokio::spawn(crate::watcher::watch(app.clone(), dir, cfg.specs_every));
    }
    tokio::spawn(flush_reports(app.clone()));
    tokio::spawn(crate::connections::trim_memory(Duration::from_secs(5)));
    crate::connections::serve(listener, router, max_connections, app.connections.clone()).await?;
    Ok(())
}

/// `/metrics`: the controller's own figures in Prometheus' text format, from the snapshots.
/// Rendered off the async workers, one rendering for concurrent scrapes (`Telemetry::scrape`).
async fn metrics(AxState(app): AxState<Arc<App>>) -> Response {
    let source = app.clone();
    let text = app.telemetry.scrape(move || {
        let views: Vec<(String, Arc<View>)> = source
            .all()
            .into_iter()
            .map(|h| (h.name.clone(), h.current()))
            .collect();
        source.telemetry.render(&views)
    });
    match text.await {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// `/readyz`: ready when the store answers (within 2 s), every rollout has its reconciler and the
/// specs directory (with `--specs`) was read in its last scan.
async fn readyz(AxState(app): AxState<Arc<App>>) -> Response {
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
        None => Json(json!({"ready": true, "rollouts": rollouts, "reconcilers": running}))
            .into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": why})),
        )
            .into_response(),
    }
}

/// Opens the store and reads every rollout back. A row or spec that cannot be decoded becomes a
/// rollout in phase `error` (logged, shown by `list` and `status`); the others go on.
fn load(db: &std::path::Path) -> anyhow::Result<(Store, Vec<Rollout>)> {
    let store = Store::open(db)?;
    let mut out = Vec::new();
    for (name, row) in store.list()? {
        let loaded = row.and_then(|rec| {
            let spec = Spec::parse(&rec.spec_text)
                .map_err(|e| StoreError::Undecodable(format!("stored spec: {e}")))?;
            Ok((rec, spec))
        });
        let mut book = ReportBook::default();
        let view = match loaded {
            Ok((rec, spec)) => {
                let arms = spec.arms();
                for r in store.reports(&name)? {
                    match r.map_err(|e| e.to_string()).and_then(|r| {
                        r.validate(&arms).map_err(|e| e.to_string())?;
                        Ok(r)
                    }) {
                        Ok(r) => {
                            book.accept(r);
                        }
                        Err(e) => eprintln!("rampctl: {name}: a stored report was skipped: {e}"),
                    }
                }
                book.unsaved.clear();
                for f in store.feedback_totals(&name)? {
                    book.feedback.insert(f.arm.clone(), f);
                }
                View {
                    loaded: Loaded::Ok {
                        rec,
                        spec: Arc::new(spec),
                    },
                    figures: None,
                }
            }
            Err(e) => {
                let reason = format!("cannot be loaded: {e}");
                eprintln!("rampctl: rollout {name:?} {reason}");
                View {
                    loaded: Loaded::Error { reason },
                    figures: None,
                }
            }
        };
        out.push(Rollout::new(name, view, book));
    }
    Ok((store, out))
}

/// Makes the rollout visible to the API and starts its reconciler.
fn register(app: &Arc<App>, handle: Rollout) {
    let handle = Arc::new(handle);
    app.rollouts
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(handle.name.clone(), handle.clone());
    tokio::spawn(crate::reconciler::run(app.clone(), handle));
}

/// Writes the reports accepted since the last pass, in one transaction.
async fn flush_reports(app: Arc<App>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tick.tick().await;
        let mut batch: Vec<(String, Arc<Report>)> = Vec::new();
        for handle in app.all() {
            let mut book = handle.reports();
            for instance in std::mem::take(&mut book.unsaved) {
                if let Some(r) = book.newest.get(&instance) {
                    batch.push((handle.name.clone(), r.clone()));
                }
            }
        }
        flush_checks(&app).await;
        if batch.is_empty() {
            continue;
        }
        // Which instances to mark unsaved again if the write fails (names, not the reports).
        let marks: Vec<(String, String)> = batch
            .iter()
            .map(|(name, r)| (name.clone(), r.instance.clone()))
            .collect();
        let written = app
            .db(move |s| s.put_reports(batch.iter().map(|(n, r)| (n.as_str(), &**r))))
            .await;
        if let Err(e) = written {
            eprintln!("rampctl: reports not written (kept for the next pass): {e}");
            for (name, instance) in marks {
                if let Some(h) = app.rollout(&name) {
                    h.reports().unsaved.insert(instance);
                }
            }
        }
    }
}

/// Writes the checks queued since the last pass (the report's series), one transaction per
/// rollout; a failed write puts them back for the next pass.
async fn flush_checks(app: &Arc<App>) {
    for handle in app.all() {
        let points = handle.take_checks();
        if points.is_empty() {
            continue;
        }
        let (name, again) = (handle.name.clone(), points.clone());
        if let Err(e) = app.db(move |s| s.put_checks(&name, &points)).await {
            eprintln!(
                "rampctl: {}: checks not written (kept for the next pass): {e}",
                handle.name
            );
            handle.return_checks(again);
        }
    }
}

/// An API error: status and a JSON body `{"error": ..., "field": ..., "reason": ...}`.
pub struct ApiError(StatusCode, Value);

impl ApiError {
    /// The message the answer carries.
    pub fn message(&self) -> String {
        self.1["error"]
            .as_str()
            .map_or_else(|| self.1.to_string(), str::to_owned)
    }
}

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

/// A 4xx that names the field.
fn field_error(code: StatusCode, field: &str, reason: impl Into<String>) -> ApiError {
    let reason = reason.into();
    ApiError(
        code,
        json!({"error": format!("{field}: {reason}"), "field": field, "reason": reason}),
    )
}

/// The body, or 413 naming the limit.
fn body(b: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        let code = e.status();
        if code == StatusCode::PAYLOAD_TOO_LARGE {
            field_error(code, "body", format!("larger than {limit} bytes"))
        } else {
            field_error(code, "body", e.body_text())
        }
    })
}

fn json_body(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| field_error(StatusCode::BAD_REQUEST, "body", e.to_string()))
}

/// Longest a request may take, body and answer included: a long poll's wait and then some, so
/// a client trickling a body one byte at a time cannot hold its connection for good.
pub const REQUEST_BUDGET: Duration = Duration::from_millis(MAX_WAIT_MS + 30_000);

async fn within_budget(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_BUDGET, next.run(request)).await {
        Ok(answer) => answer,
        Err(_) => bad(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request took longer than {} s (a body sent too slowly)",
                REQUEST_BUDGET.as_secs()
            ),
        )
        .into_response(),
    }
}

/// Lets a call through when its credential may make it (`crate::auth`): 401 without a valid
/// token, 403 with a valid token of another kind, each saying which token the call needs.
async fn require(
    AxState((app, access)): AxState<(Arc<App>, Access)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let needs = match access {
        Access::Change => "the operator's token (rampctl serve --auth-token)",
        Access::Read => "the read-only token (--read-token) or the operator's",
        Access::Poll => {
            "the report token (the filter's controller.token_env, --report-token) or a reader's"
        }
        Access::Report => {
            "the report token (the filter's controller.token_env, --report-token) or the operator's"
        }
        Access::Metrics => {
            "the metrics token (--metrics-token), the read-only token or the operator's"
        }
    };
    match app.tokens.check(access, given) {
        Ok(()) => next.run(request).await,
        Err(Refusal::Unauthenticated) => {
            let mut r = bad(
                StatusCode::UNAUTHORIZED,
                format!("this call needs 'Authorization: Bearer <token>' with {needs}"),
            )
            .into_response();
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            r
        }
        Err(Refusal::Forbidden(caller)) => {
            let holder = match caller {
                Caller::Operator => "operator",
                Caller::Reader => "read-only",
                Caller::Reporter => "report",
                Caller::Scraper => "metrics",
            };
            bad(
                StatusCode::FORBIDDEN,
                format!("the {holder} token may not make this call: it needs {needs}"),
            )
            .into_response()
        }
    }
}

/// An operator's small JSON body (a command, feedback), at most `MAX_SMALL_BYTES` (the route checked the token).
fn operator_json(raw: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    json_body(&body(raw, MAX_SMALL_BYTES)?)
}

fn not_found(name: &str) -> ApiError {
    let shown: String = name.chars().take(64).collect();
    bad(StatusCode::NOT_FOUND, format!("no rollout named {shown:?}"))
}

/// The view's record and spec, or 503: the rollout cannot be loaded (the filters keep their
/// last state).
fn ok_or_503<'a>(name: &str, view: &'a View) -> Result<(&'a Record, &'a Arc<Spec>), ApiError> {
    match &view.loaded {
        Loaded::Ok { rec, spec } => Ok((rec, spec)),
        Loaded::Error { reason } => Err(bad(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("rollout {name:?} {reason}"),
        )),
    }
}

/// The rollout and its loaded record and spec, or 404 / 503 (cannot be loaded).
fn loaded(app: &App, name: &str) -> Result<(Arc<Rollout>, Record, Arc<Spec>), ApiError> {
    let handle = app.rollout(name).ok_or_else(|| not_found(name))?;
    let view = handle.current();
    let (rec, spec) = ok_or_503(name, &view)?;
    let (rec, spec) = (rec.clone(), spec.clone());
    Ok((handle, rec, spec))
}

fn named(name: &str, view: &View) -> Value {
    let mut v = summary(view);
    v["name"] = json!(name);
    v
}

async fn list(AxState(app): AxState<Arc<App>>) -> Json<Value> {
    let out: Vec<Value> = app
        .all()
        .iter()
        .map(|h| named(&h.name, &h.current()))
        .collect();
    Json(json!({"rollouts": out}))
}

async fn status(
    AxState(app): AxState<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let handle = app.rollout(&name).ok_or_else(|| not_found(&name))?;
    let mut answer = named(&name, &handle.current());
    if let Some((file, error)) = app
        .specs
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .file_of(&name)
    {
        answer["spec_file"] = json!(file);
        answer["spec_file_error"] = json!(error);
    }
    Ok(Json(answer))
}

/// `GET /v1/specs`: what the last scan of the `--specs` directory found, file by file.
async fn specs(AxState(app): AxState<Arc<App>>) -> Json<Value> {
    Json(json!(*app.specs.read().unwrap_or_else(|p| p.into_inner())))
}

fn query_u64(query: &HashMap<String, String>, field: &str) -> Result<Option<u64>, ApiError> {
    query
        .get(field)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                field_error(
                    StatusCode::BAD_REQUEST,
                    field,
                    "must be a whole number of at most 20 digits",
                )
            })
        })
        .transpose()
}

/// What the filters poll: the weights, and the bandit counts the asking Envoy (`?instance=`, as
/// in its reports) does not hold itself. With `?version=N&wait_ms=M` the answer waits (at most
/// `MAX_WAIT_MS`) until the state's version is no longer N: a filter whose poll is open learns a
/// rollback as soon as it is decided.
async fn live_state(
    AxState(app): AxState<Arc<App>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<LiveState>, ApiError> {
    let handle = app.rollout(&name).ok_or_else(|| not_found(&name))?;
    let known = query_u64(&query, "version")?;
    let wait = query_u64(&query, "wait_ms")?.unwrap_or(0).min(MAX_WAIT_MS);
    let mut rx = handle.view.subscribe();
    if let Some(known) = known.filter(|_| wait > 0) {
        let changed = rx.wait_for(|v| v.version() != Some(known));
        let _ = tokio::time::timeout(Duration::from_millis(wait), changed).await;
    }
    let view = rx.borrow().clone();
    let (rec, spec) = ok_or_503(&name, &view)?;
    app.telemetry.poll(&name);
    let bandit = handle
        .reports()
        .remote(query.get("instance").map(String::as_str), &spec.arms());
    Ok(Json(LiveState {
        version: rec.version,
        stage: Some(rec.state.stage as u64 + 1),
        weights: rec.state.arm_weights(spec).into_iter().collect(),
        rolled_back: rec.state.phase == Phase::RolledBack,
        bandit,
    }))
}

/// A filter's report: parsed and validated here, once, against the rollout's arms; kept in memory
/// (the newest per instance) and written to SQLite by the flusher.
/// How far a report's `seq` (the filter's clock) may be ahead of the controller's: clock skew
/// between hosts, not more.
pub const MAX_SEQ_AHEAD_MS: u64 = 600_000;

async fn report(
    AxState(app): AxState<Arc<App>>,
    Path(name): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = body(raw, MAX_REPORT_BYTES)?;
    let parsed: Report = serde_json::from_slice(&raw)
        .map_err(|e| field_error(StatusCode::BAD_REQUEST, "report", e.to_string()))?;
    // A filter's `seq` is its clock in ms. One far ahead would make every later report of that
    // instance look stale (frozen counts, a rollout that never sees its failures), and it is
    // stored, so it would outlive a restart.
    let ahead = parsed.seq.saturating_sub(now_ms());
    if ahead > MAX_SEQ_AHEAD_MS {
        return Err(field_error(
            StatusCode::BAD_REQUEST,
            "seq",
            format!(
                "{} is {} s ahead of this controller's clock; a filter's seq is its clock in ms since the epoch (at most {} s ahead is taken)",
                parsed.seq,
                ahead / 1000,
                MAX_SEQ_AHEAD_MS / 1000
            ),
        ));
    }
    let Some(handle) = app.rollout(&name) else {
        ramp_protocol::names::check_name(&name)
            .map_err(|r| field_error(StatusCode::NOT_FOUND, "rollout", r))?;
        // Before `rampctl apply`: kept in memory only, as the rollout's starting point.
        let max_arms = ramp_protocol::names::MAX_ARMS;
        if parsed.arms.len() > max_arms {
            return Err(field_error(
                StatusCode::BAD_REQUEST,
                "arms",
                format!(
                    "{} arms: a rollout has at most {max_arms}",
                    parsed.arms.len()
                ),
            ));
        }
        parsed
            .validate(&parsed.arms.keys().map(String::as_str).collect::<Vec<_>>())
            .map_err(|e| field_error(StatusCode::BAD_REQUEST, &e.field, e.reason))?;
        let kept = app.pending.lock().unwrap_or_else(|p| p.into_inner()).keep(
            &name,
            &parsed.instance,
            parsed.seq,
            &raw,
        );
        return match kept {
            Ok(()) => Ok((
                StatusCode::ACCEPTED,
                Json(json!({"accepted": "no rollout of this name yet: kept in memory (not stored) as its starting point"})),
            )
                .into_response()),
            Err(crate::registry::PendingFull::Bytes) => Err(bad(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "reports for rollouts not applied yet hold {} MiB already: apply the rollout first",
                    crate::registry::MAX_PENDING_BYTES >> 20
                ),
            )),
            Err(_) => Ok(not_found(&name).into_response()),
        };
    };
    let (_, _, spec) = loaded(&app, &name)?;
    parsed
        .validate(&spec.arms())
        .map_err(|e| field_error(StatusCode::BAD_REQUEST, &e.field, e.reason))?;
    let accepted = handle.reports().accept(parsed);
    match accepted {
        Accepted::Newer | Accepted::Stale => {
            app.telemetry.report(&name);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Accepted::Full => Err(bad(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "instance: this rollout already has reports from {} Envoys",
                crate::registry::MAX_INSTANCES
            ),
        )),
    }
}

async fn apply(
    AxState(app): AxState<Arc<App>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = body(raw, MAX_SPEC_BYTES)?;
    let text = String::from_utf8(raw.to_vec())
        .map_err(|_| field_error(StatusCode::BAD_REQUEST, "body", "not UTF-8"))?;
    let parsed = {
        let text = text.clone();
        tokio::task::spawn_blocking(move || Spec::parse(&text))
            .await
            .map_err(|e| bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    };
    let spec = Arc::new(parsed.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            json!({"error": e.to_string(), "field": e.field, "reason": e.reason}),
        )
    })?);
    let answer = create(&app, text, spec, "rollout applied").await?;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// Starts a rollout from a validated spec (`apply`, or a new file under `--specs`); `detail` is
/// its first event's. The answer is its summary.
pub async fn create(
    app: &Arc<App>,
    text: String,
    spec: Arc<Spec>,
    detail: &str,
) -> Result<Value, ApiError> {
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
    let base = totals_now(&app.outgoing, &handle, &spec)
        .await
        .map_err(|e| bad(StatusCode::BAD_GATEWAY, e))?;
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
    app.transition(&spec, &rec, "applied", detail);
    let answer = summary(&handle.current());
    register(app, handle);
    Ok(answer)
}

async fn command(
    AxState(app): AxState<Arc<App>>,
    Path(name): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let v = operator_json(raw)?;
    let cmd: Command = match serde_json::from_value(v.clone()) {
        Ok(c) => c,
        Err(_) if v["command"] == "set_weight" => {
            return Err(field_error(
                StatusCode::BAD_REQUEST,
                "weight",
                "required with set_weight, the candidate's percentage in [0, 100]",
            ))
        }
        Err(_) => {
            return Err(field_error(
                StatusCode::BAD_REQUEST,
                "command",
                "one of promote, promote_full, pause, resume, roll_back, abort, set_weight",
            ))
        }
    };
    // `promote` may name the candidate to promote when there are several.
    let arm = match (&v["arm"], cmd) {
        (Value::Null, _) => None,
        (Value::String(a), Command::Promote | Command::PromoteFull) => Some(a.clone()),
        (Value::String(_), _) => {
            return Err(field_error(
                StatusCode::BAD_REQUEST,
                "arm",
                "only with promote or promote_full",
            ))
        }
        _ => {
            return Err(field_error(
                StatusCode::BAD_REQUEST,
                "arm",
                "the name of a candidate arm",
            ))
        }
    };
    let refused = |e: machine::CommandError| match e {
        machine::CommandError::Transition { .. } => bad(StatusCode::CONFLICT, e.to_string()),
        machine::CommandError::Invalid { field, ref reason } => {
            field_error(StatusCode::BAD_REQUEST, field, reason.clone())
        }
    };
    // Another writer (the reconciler) may commit in between: then decide again on its result.
    for _ in 0..5 {
        let (handle, rec, spec) = loaded(&app, &name)?;
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
        let mut next = rec.clone();
        if state.stage != rec.state.stage {
            next.base = totals_now(&app.outgoing, &handle, &spec)
                .await
                .map_err(|e| bad(StatusCode::BAD_GATEWAY, e))?;
        }
        if state.arm_weights(&spec) != rec.state.arm_weights(&spec) {
            next.version += 1;
        }
        next.state = state;
        let mut text = command_text(&cmd);
        if let Some(arm) = &arm {
            text.push_str(&format!(" {arm}"));
        }
        // An operator decides on what status showed: the last check's figures.
        let figures = handle.current().figures.as_deref().cloned();
        let record = DecisionRecord::new(&spec, &rec.spec_text, &rec.state, &next.state, figures);
        let events = vec![NewEvent::new("command", &text, Some(record))];
        if app
            .commit_recorded(&handle, &rec, &next, &spec, events, now)
            .await?
        {
            handle.wake.notify_one();
            if next.state.phase == Phase::RolledBack && rec.state.phase != Phase::RolledBack {
                // Told after the answer's state is stored, without holding up the answer.
                tokio::spawn(notify_rollback(
                    app.outgoing.hooks.clone(),
                    spec.clone(),
                    next.state.reason.clone(),
                ));
            }
            return Ok(Json(summary(&handle.current())));
        }
    }
    Err(bad(
        StatusCode::CONFLICT,
        "the rollout kept changing while this command was applied; send it again",
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

async fn history(
    AxState(app): AxState<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if app.rollout(&name).is_none() {
        return Err(not_found(&name));
    }
    let events = app.db(move |s| s.events(&name)).await?;
    let events: Vec<Value> = events
        .into_iter()
        .map(|e| json!({"at_ms": e.at_ms, "kind": e.kind, "detail": redact_text(&e.detail)}))
        .collect();
    Ok(Json(json!({"events": events})))
}

/// `GET /v1/rollouts/{name}/report`: the decision record (`report::Report`): every event with
/// the figures it was decided on, and the per-check series. URLs are redacted as in `history`;
/// checks reach the store within a flush (250 ms) of being made.
async fn rollout_report(
    AxState(app): AxState<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<RolloutReport>, ApiError> {
    let (_, rec, spec) = loaded(&app, &name)?;
    let rollout = name.clone();
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
    Ok(Json(RolloutReport {
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
    }))
}

/// Delayed feedback for one decision (the id the filter put in the decision header):
/// `{"decision": "v2.00000000000000ab", "correct": true}` (ground truth) and/or `"reward": 0.7`.
async fn feedback(
    AxState(app): AxState<Arc<App>>,
    Path(name): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    // Feedback steers rollbacks and the bandit: only callers holding the token may post it.
    let v = operator_json(raw)?;
    if let Some(extra) = v.as_object().and_then(|o| {
        o.keys()
            .find(|k| !["decision", "correct", "reward"].contains(&k.as_str()))
    }) {
        let shown: String = extra.chars().take(32).collect();
        return Err(field_error(
            StatusCode::BAD_REQUEST,
            &shown,
            "unknown field (decision, correct, reward)",
        ));
    }
    let decision = v["decision"].as_str().ok_or_else(|| {
        field_error(
            StatusCode::BAD_REQUEST,
            "decision",
            "required, the id from the decision header",
        )
    })?;
    let (arm, number) = ramp_protocol::decision::parse_decision(decision)
        .map_err(|r| field_error(StatusCode::BAD_REQUEST, "decision", r))?;
    let correct = v
        .get("correct")
        .map(|c| {
            c.as_bool().ok_or_else(|| {
                field_error(StatusCode::BAD_REQUEST, "correct", "must be true or false")
            })
        })
        .transpose()?;
    let reward = v
        .get("reward")
        .map(|r| {
            r.as_f64()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    field_error(
                        StatusCode::BAD_REQUEST,
                        "reward",
                        "must be a number in [0, 1]",
                    )
                })
        })
        .transpose()?;
    if correct.is_none() && reward.is_none() {
        return Err(field_error(
            StatusCode::BAD_REQUEST,
            "correct",
            "give correct (ground truth) or reward",
        ));
    }
    let (handle, _, spec) = loaded(&app, &name)?;
    if !spec.is_arm(arm) {
        return Err(field_error(
            StatusCode::BAD_REQUEST,
            "decision",
            format!("{decision:?} names no arm of rollout {name:?}"),
        ));
    }
    let (rollout, decision, arm) = (name.clone(), decision.to_owned(), arm.to_owned());
    let arm_again = arm.clone();
    let recorded = app
        .db(move |s| s.put_feedback(&rollout, &decision, &arm, correct, reward, now_ms()))
        .await?;
    if recorded {
        // Rounded as the SQL sum in `feedback_totals` rounds each row.
        let micros = reward.map(|r| (r * 1e6).round() as u64);
        handle.reports().feedback_recorded(
            &arm_again,
            ramp_protocol::decision::bucket_of(number),
            correct,
            micros,
        );
    }
    Ok(Json(json!({"recorded": recorded})))
}
