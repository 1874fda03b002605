//! What a stored transition is called: in the history, the decision record, the `event` hooks and
//! the log. One enum, written as the same strings every stored event and API answer has always
//! carried, so stored histories read back unchanged.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A rollout was created (`apply`, or a new file under `--specs`).
    Applied,
    /// An operator's command.
    Command,
    /// A check moved the rollout to its next stage.
    Advance,
    /// The candidate has all traffic.
    Promoted,
    Paused,
    RolledBack,
    /// A failed check short of the rollback threshold.
    CheckFailed,
    /// `promotion: manual` and the last gate is passed.
    AwaitingPromotion,
    /// A dry-run rule started failing (not acted on).
    DryRunFailed,
    /// A gating hook refused a step, short of the rollback threshold.
    HookFailed,
    /// The `before_start` hooks passed: stage 1 began.
    Started,
    /// The managing file was edited.
    SpecChanged,
    /// The managing file changed the arms or the strategy: stage 1 again.
    NewRevision,
    /// The managing file was removed; the rollout is left as it is.
    SpecRemoved,
    /// An Envoy's guard cut a candidate off; the rollout was judged at once.
    GuardTripped,
    /// The rules passed on the fleet's figures while some Envoys' guards had cut a candidate
    /// off: those guards start afresh.
    GuardRearmed,
}

impl EventKind {
    pub const ALL: [EventKind; 16] = [
        EventKind::Applied,
        EventKind::Command,
        EventKind::Advance,
        EventKind::Promoted,
        EventKind::Paused,
        EventKind::RolledBack,
        EventKind::CheckFailed,
        EventKind::AwaitingPromotion,
        EventKind::DryRunFailed,
        EventKind::HookFailed,
        EventKind::Started,
        EventKind::SpecChanged,
        EventKind::NewRevision,
        EventKind::SpecRemoved,
        EventKind::GuardTripped,
        EventKind::GuardRearmed,
    ];

    /// The name stored and shown (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Applied => "applied",
            EventKind::Command => "command",
            EventKind::Advance => "advance",
            EventKind::Promoted => "promoted",
            EventKind::Paused => "paused",
            EventKind::RolledBack => "rolled_back",
            EventKind::CheckFailed => "check_failed",
            EventKind::AwaitingPromotion => "awaiting_promotion",
            EventKind::DryRunFailed => "dry_run_failed",
            EventKind::HookFailed => "hook_failed",
            EventKind::Started => "started",
            EventKind::SpecChanged => "spec_changed",
            EventKind::NewRevision => "new_revision",
            EventKind::SpecRemoved => "spec_removed",
            EventKind::GuardTripped => "guard_tripped",
            EventKind::GuardRearmed => "guard_rearmed",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for EventKind {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// So a kind compares with the name a stored event carries.
impl PartialEq<&str> for EventKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for EventKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// A transition's event before it is stored: its kind and what it says.
pub type Event = (EventKind, String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_stored_under_its_serde_name() {
        for kind in EventKind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, serde_json::json!(kind.as_str()));
            assert_eq!(serde_json::from_value::<EventKind>(json).unwrap(), kind);
        }
    }
}
