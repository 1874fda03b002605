//! The API's errors: a status and a JSON body `{"error": ...}`, with `"field"` and `"reason"`
//! when one request field is at fault. The service's errors get their status here, and only here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::api::FieldError;
use crate::service::Error;
use crate::store::StoreError;

pub struct ApiError(pub StatusCode, pub Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

pub fn bad(code: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(code, json!({"error": msg.into()}))
}

/// A 4xx that names the field.
pub fn field_error(code: StatusCode, field: &str, reason: impl Into<String>) -> ApiError {
    let reason = reason.into();
    ApiError(
        code,
        json!({"error": format!("{field}: {reason}"), "field": field, "reason": reason}),
    )
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        field_error(StatusCode::BAD_REQUEST, &e.field, e.reason)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = match e {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Exists(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        bad(code, e.to_string())
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::NoRollout(_) => bad(StatusCode::NOT_FOUND, e.to_string()),
            Error::Unloadable { .. } => bad(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            Error::Invalid { field, reason } => {
                field_error(StatusCode::BAD_REQUEST, &field, reason)
            }
            Error::BadName(reason) => field_error(StatusCode::NOT_FOUND, "rollout", reason),
            Error::Spec(e) => ApiError(
                StatusCode::BAD_REQUEST,
                json!({"error": e.to_string(), "field": e.field, "reason": e.reason}),
            ),
            Error::Conflict(why) => bad(StatusCode::CONFLICT, why),
            Error::Source(e) => bad(StatusCode::BAD_GATEWAY, e.to_string()),
            Error::Full(why) => bad(StatusCode::TOO_MANY_REQUESTS, why),
            Error::Store(e) => e.into(),
            Error::Task(why) => bad(StatusCode::INTERNAL_SERVER_ERROR, why),
        }
    }
}
