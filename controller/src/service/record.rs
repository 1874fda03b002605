//! Recording a transition, the one way every writer does it (an operator's command, a check, a
//! spec file's change): the next record (`Record::transition` decided it) and its events are
//! stored if the rollout is still what the writer read, published in the same critical section,
//! counted, and told to the `event` hooks.

use std::sync::Arc;

use super::App;
use crate::events::{Event, EventKind};
use crate::machine::Phase;
use crate::record::Record;
use crate::registry::Rollout;
use crate::report::DecisionRecord;
use crate::spec::{HookPoint, Spec};
use crate::store::{NewEvent, StoreError};

/// A transition to record.
pub struct Transition<'a> {
    pub spec: &'a Arc<Spec>,
    /// The rollout as the writer read it, and as it decided it.
    pub before: &'a Record,
    pub next: &'a Record,
    pub events: Vec<Event>,
    /// What the events were decided on; each event keeps it.
    pub decided_on: Option<DecisionRecord>,
    pub at_ms: u64,
}

impl App {
    /// Stores the change if the rollout is still `before`, and publishes it in the same critical
    /// section (so two writers' snapshots cannot be published out of order). False: changed
    /// meanwhile, nothing written.
    pub async fn record(
        self: &Arc<Self>,
        handle: &Arc<Rollout>,
        change: Transition<'_>,
    ) -> Result<bool, StoreError> {
        let stored: Vec<NewEvent> = change
            .events
            .iter()
            .map(|(kind, detail)| NewEvent::new(kind.as_str(), detail, change.decided_on.clone()))
            .collect();
        let (spec_for_hooks, next_for_hooks) = (change.spec.clone(), change.next.clone());
        let (handle, before, next, spec) = (
            handle.clone(),
            change.before.clone(),
            change.next.clone(),
            change.spec.clone(),
        );
        let at_ms = change.at_ms;
        self.db(move |store| {
            let saved = store.update_if_recorded(&before, &next, &stored, at_ms)?;
            if saved {
                handle.publish_record(next, spec);
            }
            Ok(saved)
        })
        .await
        .inspect(|&saved| {
            if saved {
                for (kind, detail) in &change.events {
                    self.told(&spec_for_hooks, &next_for_hooks, *kind, detail);
                }
            }
        })
    }

    /// A stored transition: counted, and told to the `event` hooks on their own task.
    pub(super) fn told(&self, spec: &Arc<Spec>, rec: &Record, kind: EventKind, detail: &str) {
        // Nothing follows a rollback but refusals, so a stored transition into it is the one.
        self.telemetry
            .event(&rec.name, rec.state.phase == Phase::RolledBack);
        if spec.hooks.iter().any(|h| h.on == HookPoint::Event) {
            let payload = crate::hooks::event_payload(spec, rec, kind.as_str(), detail);
            tokio::spawn(crate::hooks::notify_event(
                self.outgoing.hooks.clone(),
                spec.clone(),
                payload,
            ));
        }
    }
}
