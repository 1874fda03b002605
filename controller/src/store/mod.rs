//! The store, as a port: what the service, the runtime and the start-up need to keep durably
//! (every rollout's record, its events with their decision records, the newest report of each
//! Envoy, the feedback and the per-check series). Every change is one transaction, and a
//! transition commits only if the rollout is still what it was read as (`update_if_recorded`,
//! a compare-and-set like a resourceVersion). The adapters are `sqlite` (one process, the
//! default) and `postgres` (replicas on one database); the calls block, so the
//! service makes them on blocking threads (`service::App::db`).

pub mod postgres;
pub mod sqlite;

#[cfg(test)]
mod contract;

use thiserror::Error;

pub use crate::record::Record;
use crate::report::{CheckPoint, DecisionRecord, SeriesKept};
use crate::window::Report;
use ramp_protocol::report::BUCKETS;

/// What the rest of rampctl asks of a store. Object-safe: `App` holds a `Box<dyn Store>`.
pub trait Store: Send {
    /// Answers when the store can be used (`/readyz`).
    fn ping(&self) -> Result<(), StoreError>;
    /// One rollout as stored (`NotFound` when there is none).
    fn get(&self, name: &str) -> Result<Record, StoreError>;
    /// Every rollout, each as its record or why it cannot be decoded.
    fn list(&self) -> Result<Vec<StoredRow>, StoreError>;
    /// A new rollout, with its `applied` event and that event's decision record.
    fn insert_recorded(
        &mut self,
        rec: &Record,
        at_ms: u64,
        record: Option<&DecisionRecord>,
    ) -> Result<(), StoreError>;
    /// Stores `next` and `events` if the stored rollout is still `before`; false (nothing
    /// written) when it changed meanwhile.
    fn update_if_recorded(
        &mut self,
        before: &Record,
        next: &Record,
        events: &[NewEvent],
        at_ms: u64,
    ) -> Result<bool, StoreError>;
    /// The rollout's events, oldest first.
    fn events(&self, rollout: &str) -> Result<Vec<Event>, StoreError>;
    /// The newest report of each Envoy, each as stored or why it cannot be read.
    fn reports(&self, rollout: &str) -> Result<Vec<Result<Report, StoreError>>, StoreError>;
    /// Keeps each (rollout, report) that is newer than the stored one of its instance; how
    /// many were kept.
    fn put_reports(&mut self, reports: &[(&str, &Report)]) -> Result<usize, StoreError>;
    /// Feedback for one decision; false when that decision already has some (idempotent).
    fn put_feedback(
        &mut self,
        rollout: &str,
        decision: &str,
        arm: &str,
        correct: Option<bool>,
        reward: Option<f64>,
        at_ms: u64,
    ) -> Result<bool, StoreError>;
    /// The feedback per arm, summed.
    fn feedback_totals(&self, rollout: &str) -> Result<Vec<ArmFeedback>, StoreError>;
    /// Appends checks to the rollout's series (which stays within `report::SERIES_MAX`).
    fn put_checks(&mut self, rollout: &str, points: &[CheckPoint]) -> Result<(), StoreError>;
    /// The rollout's series, and what it kept of it.
    fn checks(&self, rollout: &str) -> Result<(Vec<CheckPoint>, SeriesKept), StoreError>;
    /// Replicas: the last check's figures (status JSON) of the replica that checks the rollout,
    /// for the others to show. One process keeps them in memory only: the default keeps none.
    fn put_figures(&mut self, _rollout: &str, _figures: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// What `put_figures` kept last (`None`: nothing, or a store that keeps none).
    fn figures(&self, _rollout: &str) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
}

/// Which replica reconciles a rollout, when several share a store: a lease per rollout that
/// dies with its holder (`postgres::Leases`: a session-level advisory lock). Blocking, like
/// `Store`.
pub trait Leases: Send + Sync {
    /// True while this replica holds `rollout`'s lease, taking it when it is free; false while
    /// another replica holds it.
    fn hold(&self, rollout: &str) -> Result<bool, StoreError>;
}

#[derive(Debug, Error)]
pub enum StoreError {
    /// The adapter's own error (`sqlite`: rusqlite's), as text: the port names no driver.
    #[error("database: {0}")]
    Database(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("rollout {0:?} already exists")]
    Exists(String),
    #[error("no rollout named {0:?}")]
    NotFound(String),
    #[error("stored row cannot be read: {0}")]
    Undecodable(String),
    #[error("{db} is in use by another rampctl serve (lock {lock} is held): one process writes a database")]
    Locked { db: String, lock: String },
    #[error(
        "{db} is damaged (PRAGMA quick_check: {detail}); restore it from a backup or move it aside"
    )]
    Damaged { db: String, detail: String },
    #[error("lock file {lock}: {source}")]
    LockFile {
        lock: String,
        source: std::io::Error,
    },
}

/// A rollout's name (as well as it can be read) and its record or why it cannot be decoded.
pub type StoredRow = (String, Result<Record, StoreError>);

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at_ms: u64,
    pub kind: String,
    pub detail: String,
    /// The decision record (JSON, `report::DecisionRecord`) stored with it; `None` for events
    /// stored before records existed, and for those that decide nothing.
    pub record: Option<String>,
}

/// An event to store with a transition, and what it was decided on. `kind` is an `EventKind`'s
/// name (`service` makes them); the store keeps whatever it is given.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: String,
    pub detail: String,
    pub record: Option<DecisionRecord>,
}

impl NewEvent {
    pub fn new(kind: &str, detail: &str, record: Option<DecisionRecord>) -> Self {
        Self {
            kind: kind.to_owned(),
            detail: detail.to_owned(),
            record,
        }
    }
}

/// Feedback for one arm, summed over all its decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmFeedback {
    pub arm: String,
    /// Decisions with ground truth, and how many were right.
    pub labelled: u64,
    pub correct: u64,
    /// Decisions with a reward, and their sum in millionths (integers, as the filters count, so
    /// sums are exact and the same in any order).
    pub rewarded: u64,
    pub reward_micros: u64,
    /// The same rewards per analysis bucket (the decision id's top 6 bits): `BUCKETS` sums, or
    /// empty when none.
    pub bucket_reward_micros: Vec<u64>,
    /// Rewards posted for an A/B test's pre-period decisions (`.pre` ids) of users the
    /// experiment gives this arm, per bucket: CUPED's covariate, not this arm's rewards.
    pub bucket_pre_reward_micros: Vec<u64>,
}

/// Adds `micros` to bucket `bucket` of `sums`, made `BUCKETS` long on first use.
fn add_to_bucket(sums: &mut Vec<u64>, bucket: usize, micros: u64) {
    if sums.is_empty() {
        *sums = vec![0; BUCKETS];
    }
    if let Some(b) = sums.get_mut(bucket % BUCKETS) {
        *b = b.saturating_add(micros);
    }
}

impl ArmFeedback {
    pub fn new(arm: &str) -> Self {
        ArmFeedback {
            arm: arm.to_owned(),
            labelled: 0,
            correct: 0,
            rewarded: 0,
            reward_micros: 0,
            bucket_reward_micros: Vec::new(),
            bucket_pre_reward_micros: Vec::new(),
        }
    }

    /// Adds a reward posted for a decision of analysis bucket `bucket`.
    pub fn add_bucket_reward(&mut self, bucket: usize, micros: u64) {
        add_to_bucket(&mut self.bucket_reward_micros, bucket, micros);
    }

    /// Adds a reward posted for a pre-period decision of analysis bucket `bucket`.
    pub fn add_pre_reward(&mut self, bucket: usize, micros: u64) {
        add_to_bucket(&mut self.bucket_pre_reward_micros, bucket, micros);
    }
}
