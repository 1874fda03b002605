//! The HTTP layer of `rampctl serve`: filters poll the live state and post reports; operators
//! apply specs, send commands and read status. Handlers translate requests and the service's
//! errors, nothing more: what a rollout does is the service's (`crate::service`).

mod body;
mod error;
mod filters;
mod guard;
mod operator;
mod probes;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

pub use error::ApiError;
pub use guard::REQUEST_BUDGET;

use crate::auth::{Access, Tokens};
use crate::service::App;
use crate::spec::MAX_SPEC_BYTES;
use guard::{require, within_budget};

// Where callers have always found these.
pub use crate::clock::now_ms;
pub use crate::service::MAX_SEQ_AHEAD_MS;

/// Largest report body (a report of two arms with shadow totals is about 1 KB).
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// Largest feedback or command body.
pub const MAX_SMALL_BYTES: usize = 4 * 1024;
/// Longest a state poll may wait for a change (`wait_ms`).
pub const MAX_WAIT_MS: u64 = 30_000;

/// The routes, each behind the token it needs and the body limit it allows.
pub fn router(app: Arc<App>, tokens: Arc<Tokens>) -> Router {
    let small = DefaultBodyLimit::max(MAX_SMALL_BYTES);
    let guard = |access| axum::middleware::from_fn_with_state((tokens.clone(), access), require);
    Router::new()
        .route(
            "/v1/rollouts",
            get(operator::list)
                .route_layer(guard(Access::Read))
                .merge(post(operator::apply).route_layer(guard(Access::Change)))
                .layer(DefaultBodyLimit::max(MAX_SPEC_BYTES)),
        )
        .route(
            "/v1/rollouts/{name}",
            get(operator::status).route_layer(guard(Access::Read)),
        )
        .route(
            "/v1/rollouts/{name}/state",
            get(filters::live_state).route_layer(guard(Access::Poll)),
        )
        .route(
            "/v1/rollouts/{name}/reports",
            post(filters::report)
                .route_layer(guard(Access::Report))
                .layer(DefaultBodyLimit::max(MAX_REPORT_BYTES)),
        )
        .route(
            "/v1/rollouts/{name}/commands",
            post(operator::command)
                .route_layer(guard(Access::Change))
                .layer(small),
        )
        .route(
            "/v1/rollouts/{name}/history",
            get(operator::history).route_layer(guard(Access::Read)),
        )
        .route(
            "/v1/rollouts/{name}/report",
            get(operator::rollout_report).route_layer(guard(Access::Read)),
        )
        .route(
            "/v1/rollouts/{name}/feedback",
            post(operator::feedback)
                .route_layer(guard(Access::Change))
                .layer(small),
        )
        .route(
            "/metrics",
            get(probes::metrics).route_layer(guard(Access::Metrics)),
        )
        .route(
            "/v1/specs",
            get(operator::specs).route_layer(guard(Access::Read)),
        )
        // Probes carry no credential (kubelet's do not).
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(probes::readyz))
        .layer(axum::middleware::from_fn(within_budget))
        .with_state(app)
}
