//! The other reads an operator makes: the list, the history, and error answers.

use serde::{Deserialize, Serialize};

use super::Status;

/// `GET /v1/rollouts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutList {
    pub rollouts: Vec<Status>,
}

/// `GET /v1/rollouts/{name}/history`: the events, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub events: Vec<HistoryEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub at_ms: u64,
    /// An `EventKind`'s name (kept as text: a history may hold kinds this rampctl does not know).
    pub kind: String,
    pub detail: String,
}

/// An error answer: `{"error": ...}`, with the field at fault when there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
