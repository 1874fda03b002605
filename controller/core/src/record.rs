//! A rollout as it is stored and published: its spec's text, where the stage machine stands, the
//! live-state version the filters go by, and the totals its stage started from; and the rule every
//! transition of it follows.

use crate::machine::State;
use crate::spec::Spec;
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

/// What a transition changes besides the state (see `Record::transition`).
#[derive(Debug, Default)]
pub struct Moves {
    /// The totals the new stage starts from, when the transition starts a stage.
    pub base: Option<Totals>,
    /// A new spec text (an edited file, a new revision).
    pub spec_text: Option<String>,
    /// The filters re-read even if the weights stay: the `before_start` hooks passed, a new
    /// revision began.
    pub new_version: bool,
}

impl Record {
    /// The record after a transition to `state`, judged under `spec` (the rollout ran under
    /// `was` until now): the one place the rule is written. The live-state version goes up when
    /// the weights the filters apply change (or `moves.new_version`), so a poll that waits on
    /// the version learns it; the stage's base moves when `moves` gives one.
    pub fn transition(&self, was: &Spec, spec: &Spec, state: State, moves: Moves) -> Record {
        let mut next = self.clone();
        if moves.new_version || state.arm_weights(spec) != self.state.arm_weights(was) {
            next.version += 1;
        }
        if let Some(base) = moves.base {
            next.base = base;
        }
        if let Some(text) = moves.spec_text {
            next.spec_text = text;
        }
        next.state = state;
        next
    }
}
