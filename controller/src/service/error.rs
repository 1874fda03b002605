//! Why the service refused or failed, in domain terms; the HTTP layer gives each its status.

use thiserror::Error;

use crate::sources::SourceError;
use crate::spec::SpecError;
use crate::store::StoreError;

#[derive(Debug, Error)]
pub enum Error {
    /// No rollout of this name (the name is shown up to 64 characters: it is the caller's).
    #[error("no rollout named {:?}", .0.chars().take(64).collect::<String>())]
    NoRollout(String),
    /// Its stored row or spec cannot be decoded; the filters keep their last state.
    #[error("rollout {name:?} {reason}")]
    Unloadable { name: String, reason: String },
    /// A request field the service refuses, and why.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A report for a rollout that does not exist, under a name no rollout can have.
    #[error("rollout: {0}")]
    BadName(String),
    /// A spec that does not validate.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The rollout is not in a state the request can apply to, or kept changing under it.
    #[error("{0}")]
    Conflict(String),
    /// A metric source (Prometheus) did not answer.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A bound on what is kept in memory is reached.
    #[error("{0}")]
    Full(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A task of the service's own died.
    #[error("{0}")]
    Task(String),
}

impl Error {
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}
