//! Replicas on a shared store: what another replica committed (a transition, a new rollout,
//! the reports and feedback it took) brought into this one's snapshots, so polls, long polls and
//! the reconciler here see it. Each refresh reads the store and publishes under the store's lock,
//! as `App::record` does, so a refresh never publishes a record older than one just committed
//! here.

use std::sync::Arc;

use super::start::load_one;
use super::App;
use crate::registry::{Accepted, Loaded};
use crate::spec::Spec;
use crate::store::StoreError;

impl App {
    /// Brings rollout `name` up to the store: its record (published when it changed, waking the
    /// long polls and the reconciler), the newest report of every Envoy whichever replica took
    /// it, and the feedback totals. A rollout this replica did not know is loaded and started.
    pub async fn refresh(self: &Arc<Self>, name: &str) -> Result<(), StoreError> {
        let Some(handle) = self.rollout(name) else {
            let name = name.to_owned();
            let found = self
                .db(move |s| match s.get(&name) {
                    Ok(rec) => load_one(s, name, Ok(rec)).map(Some),
                    Err(StoreError::NotFound(_)) => Ok(None),
                    Err(e) => Err(e),
                })
                .await?;
            if let Some(rollout) = found {
                if self.rollout(&rollout.name).is_none() {
                    self.register(rollout);
                }
            }
            return Ok(());
        };
        let h = handle.clone();
        let changed = self
            .db(move |s| {
                let stored = s.get(&h.name)?;
                let view = h.current();
                let Loaded::Ok { rec, spec } = &view.loaded else {
                    return Ok(false);
                };
                let changed = *rec != stored;
                let spec = if rec.spec_text == stored.spec_text {
                    spec.clone()
                } else {
                    Arc::new(
                        Spec::parse(&stored.spec_text)
                            .map_err(|e| StoreError::Undecodable(format!("stored spec: {e}")))?,
                    )
                };
                if changed {
                    h.publish_record(stored, spec.clone());
                }
                let arms = spec.arms();
                let reports = s.reports(&h.name)?;
                let feedback = s.feedback_totals(&h.name)?;
                // Another replica's check, if it is newer than the one shown.
                if let Some(figures) = s.figures(&h.name)? {
                    if let Ok(figures) = serde_json::from_str(&figures) {
                        h.show_stored_figures(figures);
                    }
                }
                let mut book = h.reports();
                for r in reports.into_iter().flatten() {
                    if r.validate(&arms).is_err() {
                        continue;
                    }
                    let instance = r.instance.clone();
                    let guard = r.guard.clone();
                    if book.accept(r) == Accepted::Newer {
                        // A trip another replica took in: judged at this replica's next check.
                        if let Some(g) = guard {
                            h.guard_trips().observe(&instance, g.epoch, &g.tripped);
                        }
                        // Stored already: nothing for the flusher.
                        book.unsaved.remove(&instance);
                    }
                }
                book.feedback = feedback.into_iter().map(|f| (f.arm.clone(), f)).collect();
                Ok(changed)
            })
            .await?;
        if changed {
            handle.wake.notify_one();
        }
        Ok(())
    }

    /// `refresh` for every rollout in the store (after a missed notification, and now and then
    /// for the reports other replicas took).
    pub async fn refresh_all(self: &Arc<Self>) -> Result<(), StoreError> {
        let names: Vec<String> = self
            .db(|s| Ok(s.list()?.into_iter().map(|(name, _)| name).collect()))
            .await?;
        for name in names {
            if let Err(e) = self.refresh(&name).await {
                eprintln!("rampctl: {name}: not refreshed from the store: {e}");
            }
        }
        Ok(())
    }
}
