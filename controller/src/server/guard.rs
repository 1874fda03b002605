//! The API's gates, before any handler: the caller's token must allow the call (`crate::auth`),
//! and no request may take longer than `REQUEST_BUDGET`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::error::bad;
use super::MAX_WAIT_MS;
use crate::auth::{Access, Caller, Refusal, Tokens};

/// Longest a request may take, body and answer included: a long poll's wait and then some, so
/// a client trickling a body one byte at a time cannot hold its connection for good.
pub const REQUEST_BUDGET: Duration = Duration::from_millis(MAX_WAIT_MS + 30_000);

pub async fn within_budget(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
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
pub async fn require(
    AxState((tokens, access)): AxState<(Arc<Tokens>, Access)>,
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
    match tokens.check(access, given) {
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
