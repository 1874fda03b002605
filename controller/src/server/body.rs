//! Reading what a request brings: its body within a limit, JSON, and numbers in the query, each
//! refused with the field it concerns.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde_json::Value;

use super::error::{field_error, ApiError};
use super::MAX_SMALL_BYTES;

/// The body, or 413 naming the limit.
pub fn body(b: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
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

/// An operator's small JSON body (a command, feedback), at most `MAX_SMALL_BYTES` (the route checked the token).
pub fn operator_json(raw: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    json_body(&body(raw, MAX_SMALL_BYTES)?)
}

pub fn query_u64(query: &HashMap<String, String>, field: &str) -> Result<Option<u64>, ApiError> {
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
