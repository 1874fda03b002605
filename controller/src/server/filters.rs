//! The filters' endpoints: the live state they poll (long polls included) and the reports they
//! post.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::body::{body, query_u64};
use super::error::{field_error, ApiError};
use super::{MAX_REPORT_BYTES, MAX_WAIT_MS};
use crate::service::{self, App, ReportTaken};
use crate::window::Report;
use ramp_protocol::live::LiveState;

/// What the filters poll (`service::live_state`): `?instance=` names the asking Envoy, and
/// `?version=N&wait_ms=M` waits (at most `MAX_WAIT_MS`) until the version is no longer N.
pub async fn live_state(
    AxState(app): AxState<Arc<App>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<LiveState>, ApiError> {
    // An unknown rollout is answered before a malformed query, as it always was.
    app.named(&name).map_err(ApiError::from)?;
    let known = query_u64(&query, "version")?;
    let wait = query_u64(&query, "wait_ms")?.unwrap_or(0).min(MAX_WAIT_MS);
    let instance = query.get("instance").map(String::as_str);
    let state =
        service::live_state(&app, &name, known, Duration::from_millis(wait), instance).await?;
    Ok(Json(state))
}

/// A filter's report: parsed here, once, then validated and kept by the service.
pub async fn report(
    AxState(app): AxState<Arc<App>>,
    Path(name): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = body(raw, MAX_REPORT_BYTES)?;
    let parsed: Report = serde_json::from_slice(&raw)
        .map_err(|e| field_error(StatusCode::BAD_REQUEST, "report", e.to_string()))?;
    Ok(match service::accept_report(&app, &name, parsed, &raw)? {
        ReportTaken::Counted => StatusCode::NO_CONTENT.into_response(),
        ReportTaken::Pending => (
            StatusCode::ACCEPTED,
            Json(json!({"accepted": "no rollout of this name yet: kept in memory (not stored) as its starting point"})),
        )
            .into_response(),
    })
}
