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
        if let Some(base) = &moves.base {
            next.base = base.clone();
        }
        if let Some(text) = moves.spec_text {
            next.spec_text = text;
        }
        next.state = state;
        // CUPED: leaving the pre-period for the experiment keeps the base the pre-period began
        // from; before the experiment (or without a pre-period) there is none.
        let experiment = spec.ab_test.as_ref().map_or(0, |ab| ab.experiment_stage);
        if experiment == 0 || next.state.stage < experiment {
            next.state.pre_period_base = None;
        } else if self.state.in_pre_period(was)
            && next.state.stage == experiment
            && moves.base.is_some()
        {
            next.state.pre_period_base = Some(Box::new(
                self.base
                    .iter()
                    .map(|(arm, t)| (arm.clone(), t.buckets.pre_only()))
                    .collect(),
            ));
        }
        next
    }
}
