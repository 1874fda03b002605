//! A rollout as it is stored and published: its spec's text, where the stage machine stands, the
//! live-state version the filters go by, and the totals its stage started from.

use crate::machine::State;
use crate::window::Totals;

/// One rollout as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub name: String,
    pub spec_text: String,
    pub state: State,
    /// Bumped whenever the weights the filters should apply change.
    pub version: u64,
    /// Totals when the current stage began.
    pub base: Totals,
}
