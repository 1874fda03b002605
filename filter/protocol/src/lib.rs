//! The wire contract between Ramp's filters and `rampctl`, defined once so the two sides cannot
//! drift: the name rules, the report a filter posts, the live state it polls, the decision id it
//! hands out, the latency bucket bounds. Plain data and checks, no IO; both the wasm filter and the controller depend on it.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod decision;
pub mod live;
pub mod moments;
pub mod names;
pub mod report;
pub mod stream;

/// A refused field: which one (a path such as `arms.v2.requests`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for FieldError {}
