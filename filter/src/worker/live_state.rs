//! The newest live state in shared data applied to this worker: the weights the selection reads,
//! the experiment's weights during an A/B test's pre-period, and the fleet's bandit counts. Every
//! worker applies it on its tick; the poller applies it as soon as it publishes it.

use super::{Active, LiveLink, Worker};
use crate::host::Host;
use crate::live::Applied;

impl<H: Host + Clone> Worker<H> {
    /// Applies the newest state in shared data to this worker, if it changed since the last tick.
    pub(super) fn apply_live_state(&self, active: &Active, link: &LiveLink) {
        let Some((Some(bytes), cas)) = self.host.shared_get(&link.state_key) else {
            return;
        };
        if cas == link.applied.get() {
            return;
        }
        link.applied.set(cas);
        let Some(state) = Applied::decode(&bytes, active.rollout.arms.len()) else {
            log::warn!(
                "ramp: rollout {:?}: shared live state is not for this config; keeping the last good state",
                active.rollout.name
            );
            return;
        };
        if let Some(b) = &active.bandit {
            if let Ok(mut counts) = b.counts.try_borrow_mut() {
                counts.set_remote(&state.bandit);
                b.refresh_discounted(&counts);
            }
        }
        if let Ok(mut current) = active.weights.try_borrow_mut() {
            if *current != state.weights {
                log::info!(
                    "ramp: rollout {:?}: live state version {}: weights {:?}",
                    active.rollout.name,
                    state.version,
                    state.weights
                );
            }
            *current = state.weights;
        }
        if let Ok(mut pre) = active.pre_weights.try_borrow_mut() {
            *pre = state.pre_weights;
        }
        if let Some(guard) = &active.guard {
            guard.set_test(state.guard, state.version);
        }
    }
}
