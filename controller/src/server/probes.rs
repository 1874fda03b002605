//! What probes and Prometheus read: `/readyz` and the controller's own `/metrics`.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::service::{self, App};

/// `/metrics`: the controller's own figures in Prometheus' text format.
pub async fn metrics(AxState(app): AxState<Arc<App>>) -> Response {
    match service::metrics(&app).await {
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

/// `/readyz` (`service::readiness`): 503 with the reason when not ready.
pub async fn readyz(AxState(app): AxState<Arc<App>>) -> Response {
    match service::readiness(&app).await {
        Ok(ready) => Json(ready).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": why})),
        )
            .into_response(),
    }
}
