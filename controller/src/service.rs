//! The rollouts as a service: every change to a rollout goes through here (create, command,
//! feedback, record a transition), whoever asks: the HTTP handlers, the reconcilers, the specs
//! watcher. It holds the store port, the published snapshots and the reports kept in memory, and
//! answers with domain results and errors (`Error`), never with HTTP.

mod error;
mod feedback;
mod filters;
mod operator;
mod read;
mod record;
mod replicated;
mod start;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

pub use error::Error;
pub use feedback::feedback;
pub use filters::{accept_report, live_state, ReportTaken, MAX_SEQ_AHEAD_MS};
pub use operator::{apply, command, create};
pub use read::{history, list, metrics, readiness, rollout_report, specs, status, summary};
pub use record::Transition;
pub use start::load;

use crate::gitops::SpecsSeen;
use crate::record::Record;
use crate::registry::{Loaded, Pending, Rollout};
use crate::spec::Spec;
use crate::store::{Leases, Store, StoreError};

/// Starts the runtime's task for a rollout the service has just made visible (its reconciler).
/// A plain function, so the service names no part of the runtime.
pub type Starter = fn(Arc<App>, Arc<Rollout>);

pub struct App {
    /// The store port. Locked only on blocking threads (`App::db`), for one statement or
    /// transaction.
    store: Mutex<Box<dyn Store>>,
    /// The rollouts by name. Held only to look one up or add one.
    rollouts: RwLock<BTreeMap<String, Arc<Rollout>>>,
    /// Reports for rollouts not applied yet (kept in memory only).
    pending: Mutex<Pending>,
    /// What starts a new rollout's reconciler.
    start: Starter,
    pub telemetry: crate::telemetry::Telemetry,
    /// What the last scan of `--specs` found (`GET /v1/specs`).
    pub specs: RwLock<SpecsSeen>,
    /// The agents hooks and Prometheus are called with, and the roots their https trusts.
    pub outgoing: crate::tls::Outgoing,
    /// Replicas sharing the store: which rollouts this one reconciles (`None`: one process,
    /// it reconciles them all).
    leases: Option<Arc<dyn Leases>>,
}

impl App {
    pub fn new(store: Box<dyn Store>, outgoing: crate::tls::Outgoing, start: Starter) -> Self {
        Self {
            store: Mutex::new(store),
            rollouts: RwLock::new(BTreeMap::new()),
            pending: Mutex::new(Pending::default()),
            start,
            telemetry: crate::telemetry::Telemetry::default(),
            specs: RwLock::new(SpecsSeen::default()),
            outgoing,
            leases: None,
        }
    }

    /// One of several replicas on a shared store, reconciling the rollouts whose lease it holds.
    pub fn with_leases(mut self, leases: Arc<dyn Leases>) -> Self {
        self.leases = Some(leases);
        self
    }

    /// One of several replicas (`with_leases`).
    pub fn replicated(&self) -> bool {
        self.leases.is_some()
    }

    /// Whether this process reconciles `rollout` now: always when it is the only one; with
    /// replicas, while it holds the rollout's lease (taken when free). A lease that cannot be
    /// asked about is not held.
    pub async fn leads(&self, rollout: &str) -> bool {
        let Some(leases) = self.leases.clone() else {
            return true;
        };
        let name = rollout.to_owned();
        match tokio::task::spawn_blocking(move || leases.hold(&name)).await {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                eprintln!("rampctl: {rollout}: lease: {e}");
                false
            }
            Err(e) => {
                eprintln!("rampctl: {rollout}: lease task: {e}");
                false
            }
        }
    }

    /// Runs `f` on the store, on a blocking thread.
    pub async fn db<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let app = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = app.store.lock().unwrap_or_else(|p| p.into_inner());
            f(store.as_mut())
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Undecodable(format!("store task: {e}"))))
    }

    pub fn rollout(&self, name: &str) -> Option<Arc<Rollout>> {
        self.rollouts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Rollout>> {
        self.rollouts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The rollout, or `Error::NoRollout`.
    pub fn named(&self, name: &str) -> Result<Arc<Rollout>, Error> {
        self.rollout(name)
            .ok_or_else(|| Error::NoRollout(name.to_owned()))
    }

    /// The rollout and its loaded record and spec, or why not: none of that name, or it cannot
    /// be loaded (the filters keep their last state).
    pub fn loaded(&self, name: &str) -> Result<(Arc<Rollout>, Record, Arc<Spec>), Error> {
        let handle = self.named(name)?;
        let view = handle.current();
        match &view.loaded {
            Loaded::Ok { rec, spec } => Ok((handle.clone(), rec.clone(), spec.clone())),
            Loaded::Error { reason } => Err(Error::Unloadable {
                name: name.to_owned(),
                reason: reason.clone(),
            }),
        }
    }

    /// Makes the rollout visible and starts its reconciler, unless one of that name is there
    /// already (replicas: a refresh may have loaded it from the store first).
    pub fn register(self: &Arc<Self>, handle: Rollout) {
        let handle = Arc::new(handle);
        {
            let mut rollouts = self.rollouts.write().unwrap_or_else(|p| p.into_inner());
            if rollouts.contains_key(&handle.name) {
                return;
            }
            rollouts.insert(handle.name.clone(), handle.clone());
        }
        (self.start)(self.clone(), handle);
    }
}
