//! The operator API's types (status, commands, feedback, the list and the history), as
//! kube-core's are to kube-rs: no IO, one definition that `rampctl serve` answers with and the
//! `rampctl` CLI reads, so the two cannot drift apart. Requests are read with the field errors
//! the API has always answered, in the same order.

mod read;
mod request;
mod status;

pub use read::{ErrorAnswer, History, HistoryEvent, RolloutList};
pub use request::{CommandRequest, FeedbackAnswer, FeedbackRequest};
pub use status::{
    AbComparison, AbTestFigures, ArmFigures, BanditArm, BestArmFigures, CheckFigures, CheckVerdict,
    CustomCheck, ErrorPhase, Figures, GuardFigures, Loaded, ManagedBy, PrePeriodFigures,
    RolloutStatus, RuleCheck, StateSummary, Status, Unloadable,
};

/// A request field that is refused, and why: the API answers it as
/// `{"error": "<field>: <reason>", "field": ..., "reason": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

pub(crate) fn field(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}
