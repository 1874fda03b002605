//! The guard on the request path and the tick: each response of a guarded rollout counted per
//! arm; every `MERGE_EVERY` responses and every tick a worker adds its counts into the Envoy's
//! record in shared data and runs each candidate's test on the record that write left; a trip
//! sends the arm's requests to the baseline at once, in this worker and in shared data for the
//! others (each applies it at its next tick).
//!
//! Why these looks, for the test's guarantee (Ville's inequality, about one growing sequence of
//! counts): every look is at a record a CAS write left, so all workers' looks are points of one
//! sequence; and a worker writes when it has counted so many responses or when its tick comes,
//! never because of what a response was. Merging at a candidate's 5xx would hand the test the
//! failures at once and the successes only at the tick, which with 16 workers tripped a healthy
//! candidate in 31% of stages at alpha 0.001 (a reviewer's probe, now `guard_share`'s test).

use std::cell::{Cell, RefCell};

use super::shared::cas_merge;
use crate::guard::{ArmTally, GuardTest};
use crate::guard_share::{GuardRecord, MERGE_EVERY};
use crate::host::Host;

pub(super) struct GuardState {
    key: String,
    baseline: usize,
    /// The test in force and its epoch: the static config's (epoch 0) until a live state says
    /// otherwise. `None`: nothing is counted or cut.
    test: Cell<Option<(u64, GuardTest)>>,
    /// This worker's counts not yet in shared data.
    pending: RefCell<Vec<ArmTally>>,
    /// The Envoy's record as this worker's last merge left it (its own counts included).
    merged: RefCell<Option<GuardRecord>>,
    /// Bit `i`: arm `i` goes to the baseline. Read per request, so a `Cell`, not shared data.
    tripped: Cell<u64>,
    /// Per arm, `ramp_guard_trips_total`.
    trips_metric: Vec<u32>,
    /// Responses counted since this worker's last merge.
    unmerged: Cell<u32>,
    /// The live state version the epoch came from (0: the static config's).
    version: Cell<u64>,
}

impl GuardState {
    pub(super) fn new(
        key: String,
        baseline: usize,
        test: Option<GuardTest>,
        trips_metric: Vec<u32>,
    ) -> Self {
        let arms = trips_metric.len();
        GuardState {
            key,
            baseline,
            test: Cell::new(test.map(|t| (0, t))),
            pending: RefCell::new(vec![ArmTally::default(); arms]),
            merged: RefCell::new(None),
            tripped: Cell::new(0),
            trips_metric,
            unmerged: Cell::new(0),
            version: Cell::new(0),
        }
    }

    /// The arm a request goes to: the baseline instead of a tripped arm.
    pub(super) fn redirect(&self, arm: usize) -> usize {
        if arm < 64 && self.tripped.get() & (1 << arm) != 0 {
            self.baseline
        } else {
            arm
        }
    }

    fn is_tripped(&self, arm: usize) -> bool {
        arm < 64 && self.tripped.get() & (1 << arm) != 0
    }

    /// A response of `arm`: counted; every `MERGE_EVERY` responses, merged and looked at.
    pub(super) fn count(&self, host: &impl Host, arm: usize, error: bool) {
        if self.test.get().is_none() {
            return;
        }
        if let Ok(mut pending) = self.pending.try_borrow_mut() {
            if let Some(t) = pending.get_mut(arm) {
                t.requests = t.requests.saturating_add(1);
                t.errors = t.errors.saturating_add(u64::from(error));
            }
        }
        let unmerged = self.unmerged.get().saturating_add(1);
        self.unmerged.set(unmerged);
        if unmerged >= MERGE_EVERY {
            self.look(host);
        }
    }

    /// Merges this worker's counts and runs every candidate's test on the record that write left;
    /// trips what it rules out. The record, or `None` when there is no guard or the write failed
    /// (the counts then stay pending).
    fn look(&self, host: &impl Host) -> Option<GuardRecord> {
        let (epoch, test) = self.test.get()?;
        let record = self.merge(host, epoch, 0)?;
        self.adopt(&record);
        let due = (0..record.arms.len())
            .filter(|&i| i != self.baseline && !self.is_tripped(i) && self.trips(&test, i))
            .fold(0u64, |acc, i| acc | (1 << i));
        if due != 0 {
            self.trip(host, epoch, due);
        }
        Some(GuardRecord {
            tripped: self.tripped.get(),
            ..record
        })
    }

    /// Whether `arm`'s test trips on the Envoy's record as this worker's last write left it:
    /// over the windows since the epoch began and since each checkpoint kept.
    fn trips(&self, test: &GuardTest, arm: usize) -> bool {
        let Ok(merged) = self.merged.try_borrow() else {
            return false;
        };
        let Some(record) = merged.as_ref() else {
            return false;
        };
        let errors = record.arms.get(arm).map_or(0, |t| t.errors);
        test.trips_any(errors, &record.windows(arm, self.baseline))
    }

    /// Sends the arms of `trips` to the baseline in this worker at once, and in shared data for
    /// the others; the worker whose write set the bit counts the trip.
    fn trip(&self, host: &impl Host, epoch: u64, trips: u64) {
        self.tripped.set(self.tripped.get() | trips);
        if let Some(record) = self.merge(host, epoch, trips) {
            self.adopt(&record);
        }
    }

    /// Adds this worker's counts (and `trips`) into shared data; `None` when it could not, and
    /// then the counts stay pending.
    fn merge(&self, host: &impl Host, epoch: u64, trips: u64) -> Option<GuardRecord> {
        let delta = self.pending.try_borrow().ok()?.clone();
        let before = Cell::new(0u64);
        let written = cas_merge(host, &self.key, |stored| {
            let record = GuardRecord::merged(stored, epoch, self.version.get(), &delta, trips)?;
            let old = stored.and_then(|b| GuardRecord::decode(b, delta.len()));
            before.set(old.filter(|o| o.epoch == epoch).map_or(0, |o| o.tripped));
            Some(record.encode())
        })?;
        if let Ok(mut pending) = self.pending.try_borrow_mut() {
            pending.iter_mut().for_each(|t| *t = ArmTally::default());
        }
        self.unmerged.set(0);
        let record = GuardRecord::decode(&written, delta.len())?;
        // Set by this write, not by another worker's before it.
        let newly = record.tripped & !before.get();
        for (i, &metric) in self.trips_metric.iter().enumerate() {
            if newly & (1 << i) != 0 {
                host.increment_metric(metric, 1);
                log::warn!(
                    "ramp: guard: arm {i} tripped its test (epoch {epoch}; {} responses, {} 5xx in this Envoy); sending its requests to the baseline",
                    record.arms.get(i).map_or(0, |t| t.requests),
                    record.arms.get(i).map_or(0, |t| t.errors)
                );
            }
        }
        Some(record)
    }

    /// The Envoy's record as this worker's view: its counts and trips.
    fn adopt(&self, record: &GuardRecord) {
        if let Ok(mut merged) = self.merged.try_borrow_mut() {
            *merged = Some(record.clone());
        }
        self.tripped.set(self.tripped.get() | record.tripped);
    }

    /// The tick: this worker's counts into shared data, the other workers' trips taken, and every
    /// candidate's test run on the Envoy's counts (a baseline's successes can tip it too).
    /// Returns the Envoy's record, for the report.
    pub(super) fn sync(&self, host: &impl Host) -> Option<GuardRecord> {
        self.look(host)
    }

    /// Marks `arms` reported in shared data; true when this worker's write did it (so exactly one
    /// worker sends the trip's report at once).
    pub(super) fn mark_reported(&self, host: &impl Host, epoch: u64, arms: u64) -> bool {
        let n = self.trips_metric.len();
        let marked = Cell::new(false);
        let written = cas_merge(host, &self.key, |stored| {
            let mut r = stored.and_then(|b| GuardRecord::decode(b, n))?;
            marked.set(r.epoch == epoch && r.reported & arms != arms);
            if marked.get() {
                r.reported |= arms;
            }
            Some(r.encode())
        });
        written.is_some() && marked.get()
    }

    /// The live state's guard (from state `version`): a new epoch (or none) starts the counts and
    /// trips afresh.
    pub(super) fn set_test(&self, test: Option<(u64, GuardTest)>, version: u64) {
        let old = self.test.replace(test);
        if old.map(|(e, _)| e) != test.map(|(e, _)| e) {
            self.version.set(version);
            if let Ok(mut v) = self.pending.try_borrow_mut() {
                v.iter_mut().for_each(|t| *t = ArmTally::default());
            }
            if let Ok(mut m) = self.merged.try_borrow_mut() {
                *m = None;
            }
            self.tripped.set(0);
        }
    }

    /// The report's `guard`: the epoch and the arms this Envoy tripped in it (from shared data,
    /// so whichever worker reports says what every worker did).
    /// Only a controller's guard (epoch 1 or later) is reported: a controller that pushes none may
    /// not know the field.
    pub(super) fn report_json(&self, host: &impl Host, arms: &[&str]) -> Option<String> {
        let (epoch, _) = self.test.get().filter(|(e, _)| *e > 0)?;
        let stored = host.shared_get(&self.key).and_then(|(b, _)| b);
        let tripped = stored
            .and_then(|b| GuardRecord::decode(&b, arms.len()))
            .filter(|r| r.epoch == epoch)
            .map_or(0, |r| r.tripped);
        let names: Vec<String> = arms
            .iter()
            .enumerate()
            .filter(|(i, _)| tripped & (1 << i) != 0)
            .map(|(_, a)| format!("\"{a}\""))
            .collect();
        Some(format!(
            "{{\"epoch\":{epoch},\"tripped\":[{}]}}",
            names.join(",")
        ))
    }
}
