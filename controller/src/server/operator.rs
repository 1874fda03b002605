//! The operator's endpoints: apply, list, status, commands, history, the decision record,
//! feedback and the specs directory. Each reads the request, asks the service, and answers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::body::{body, operator_json};
use super::error::{field_error, ApiError};
use crate::api::{CommandRequest, FeedbackAnswer, FeedbackRequest, History, RolloutList, Status};
use crate::gitops::SpecsSeen;
use crate::report::RolloutReport;
use crate::service::{self, App};
use crate::spec::MAX_SPEC_BYTES;

pub async fn apply(
    AxState(app): AxState<Arc<App>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = body(raw, MAX_SPEC_BYTES)?;
    let text = String::from_utf8(raw.to_vec())
        .map_err(|_| field_error(StatusCode::BAD_REQUEST, "body", "not UTF-8"))?;
    let answer = service::apply(&app, text).await?;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

pub async fn list(AxState(app): AxState<Arc<App>>) -> Json<RolloutList> {
    Json(service::list(&app))
}

pub async fn status(
    AxState(app): AxState<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<Status>, ApiError> {
    Ok(Json(service::status(&app, &name)?))
}

pub async fn command(
    AxState(app): AxState<Arc<App>>,
    Path(name): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<Status>, ApiError> {
    let req = CommandRequest::from_json(&operator_json(raw)?)?;
    Ok(Json(
        service::command(&app, &name, req.command, req.arm).await?,
    ))
}

pub async fn history(
    AxState(app): AxState<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<History>, ApiError> {
    Ok(Json(service::history(&app, &name).await?))
}

/// `GET /v1/rollouts/{name}/report`: the decision record (`report::RolloutReport`).
pub async fn rollout_report(
    AxState(app): AxState<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<RolloutReport>, ApiError> {
    Ok(Json(service::rollout_report(&app, &name).await?))
}

/// Delayed feedback for one decision (`api::FeedbackRequest`).
pub async fn feedback(
    AxState(app): AxState<Arc<App>>,
    Path(name): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<FeedbackAnswer>, ApiError> {
    let req = FeedbackRequest::from_json(&operator_json(raw)?)?;
    Ok(Json(service::feedback(&app, &name, req).await?))
}

/// `GET /v1/specs`: what the last scan of the `--specs` directory found, file by file.
pub async fn specs(AxState(app): AxState<Arc<App>>) -> Json<SpecsSeen> {
    Json(service::specs(&app))
}
