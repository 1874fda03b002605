//! What a rollout is made of when rampctl starts: its stored record and spec, the newest report of
//! each Envoy and the feedback totals, read back from the store into the in-memory snapshots.

use std::sync::Arc;

use crate::registry::{Loaded, ReportBook, Rollout, View};
use crate::spec::Spec;
use crate::store::{Store, StoreError};

/// Reads every rollout back from the store, at start. A row or spec that cannot be decoded
/// becomes a rollout in phase `error` (logged, shown by `list` and `status`); the others go on.
/// Blocking: run it on a blocking thread.
pub fn load(store: &dyn Store) -> Result<Vec<Rollout>, StoreError> {
    store
        .list()?
        .into_iter()
        .map(|(name, row)| load_one(store, name, row))
        .collect()
}

/// One rollout as `load` reads it, from its stored row.
pub(super) fn load_one(
    store: &dyn Store,
    name: String,
    row: Result<crate::record::Record, StoreError>,
) -> Result<Rollout, StoreError> {
    {
        let loaded = row.and_then(|rec| {
            let spec = Spec::parse(&rec.spec_text)
                .map_err(|e| StoreError::Undecodable(format!("stored spec: {e}")))?;
            Ok((rec, spec))
        });
        let mut book = ReportBook::default();
        let view = match loaded {
            Ok((rec, spec)) => {
                let arms = spec.arms();
                for r in store.reports(&name)? {
                    match r.map_err(|e| e.to_string()).and_then(|r| {
                        r.validate(&arms).map_err(|e| e.to_string())?;
                        Ok(r)
                    }) {
                        Ok(r) => {
                            book.accept(r);
                        }
                        Err(e) => eprintln!("rampctl: {name}: a stored report was skipped: {e}"),
                    }
                }
                book.unsaved.clear();
                for f in store.feedback_totals(&name)? {
                    book.feedback.insert(f.arm.clone(), f);
                }
                View {
                    loaded: Loaded::Ok {
                        rec,
                        spec: Arc::new(spec),
                    },
                    figures: None,
                }
            }
            Err(e) => {
                let reason = format!("cannot be loaded: {e}");
                eprintln!("rampctl: rollout {name:?} {reason}");
                View {
                    loaded: Loaded::Error { reason },
                    figures: None,
                }
            }
        };
        Ok(Rollout::new(name, view, book))
    }
}
