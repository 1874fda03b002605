//! Bandit counters as they live in proxy-wasm shared data: per arm, trials and the reward sum in
//! millionths, as two little-endian u64s. Integers, so adding the deltas of many workers and Envoys
//! is exact and order-independent (floating-point sums are neither).

/// The wire protocol's counts (trials, reward sum in millionths): one type on both sides.
pub use ramp_protocol::report::{BanditCounts as ArmCounts, REWARD_SCALE};

/// The counts in shared data's layout (`report::add_le_u64s`, [`decode_counts`]).
pub fn counts_slots(c: &ArmCounts) -> [u64; 2] {
    [c.trials, c.reward_micros]
}

/// `None` for anything that is not exactly 16 bytes: never merge into a value we do not own.
pub fn decode_counts(bytes: &[u8]) -> Option<ArmCounts> {
    let bytes: &[u8; 16] = bytes.try_into().ok()?;
    let (t, r) = bytes.split_at(8);
    Some(ArmCounts {
        trials: u64::from_le_bytes(t.try_into().ok()?),
        reward_micros: u64::from_le_bytes(r.try_into().ok()?),
    })
}

/// A worker's view of the bandit counters: the shared totals as of its last tick, the trials it has
/// not yet written, and their sum, which is what the policy decides from. No per-request allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerCounts {
    shared: Vec<ArmCounts>,
    pending: Vec<ArmCounts>,
    view: Vec<ArmCounts>,
    /// Shared totals at the previous tick, to derive each arm's recent share of trials.
    previous: Vec<ArmCounts>,
    /// Counts from outside this Envoy (other Envoys, delayed rewards), from the live state.
    remote: Vec<ArmCounts>,
}

impl WorkerCounts {
    pub fn new(arms: usize) -> Self {
        let zero = vec![ArmCounts::default(); arms];
        Self {
            shared: zero.clone(),
            pending: zero.clone(),
            view: zero.clone(),
            previous: zero.clone(),
            remote: zero,
        }
    }

    pub fn record(&mut self, arm: usize, reward: f64) {
        if let (Some(p), Some(v)) = (self.pending.get_mut(arm), self.view.get_mut(arm)) {
            p.add_trial(reward);
            v.add_trial(reward);
        }
    }

    pub fn view(&self) -> &[ArmCounts] {
        &self.view
    }

    pub fn pending(&self, arm: usize) -> ArmCounts {
        self.pending.get(arm).copied().unwrap_or_default()
    }

    /// `delta` (what `pending(arm)` was) is now in shared data, whose total became `total`.
    pub fn flushed(&mut self, arm: usize, delta: ArmCounts, total: ArmCounts) {
        if let Some(p) = self.pending.get_mut(arm) {
            p.trials -= delta.trials.min(p.trials);
            p.reward_micros -= delta.reward_micros.min(p.reward_micros);
        }
        self.observed(arm, total);
    }

    /// Shared data holds `total` for `arm` (which includes nothing still pending here).
    pub fn observed(&mut self, arm: usize, total: ArmCounts) {
        if let (Some(s), Some(v), Some(p), Some(r)) = (
            self.shared.get_mut(arm),
            self.view.get_mut(arm),
            self.pending.get(arm),
            self.remote.get(arm),
        ) {
            *s = total;
            *v = total.saturating_add(*p).saturating_add(*r);
        }
    }

    /// The live state's counts from outside this Envoy; the view becomes local plus remote.
    pub fn set_remote(&mut self, remote: &[ArmCounts]) {
        for arm in 0..self.remote.len() {
            if let (Some(r), Some(&total)) = (self.remote.get_mut(arm), self.shared.get(arm)) {
                *r = remote.get(arm).copied().unwrap_or_default();
                self.observed(arm, total);
            }
        }
    }

    /// Each arm's share, in parts per million, of the shared trials added since the last call;
    /// `None` when none were added.
    pub fn recent_shares_ppm(&mut self) -> Option<Vec<u64>> {
        let deltas: Vec<u64> = self
            .shared
            .iter()
            .zip(&self.previous)
            .map(|(now, before)| now.trials.saturating_sub(before.trials))
            .collect();
        self.previous.clone_from(&self.shared);
        let total: u64 = deltas.iter().sum();
        (total > 0).then(|| deltas.iter().map(|d| d * 1_000_000 / total).collect())
    }

    pub fn shared(&self) -> &[ArmCounts] {
        &self.shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_rejects_foreign_bytes() {
        let c = ArmCounts {
            trials: 7,
            reward_micros: 3_250_000,
        };
        let stored = crate::report::add_le_u64s(None, &counts_slots(&c)).unwrap();
        assert_eq!(decode_counts(&stored), Some(c));
        assert_eq!(decode_counts(&[1, 2, 3]), None);
        let sum = crate::report::add_le_u64s(Some(&stored), &counts_slots(&c));
        assert_eq!(
            sum.as_deref().and_then(decode_counts),
            Some(ArmCounts {
                trials: 14,
                reward_micros: 6_500_000
            })
        );
        assert_eq!(crate::report::add_le_u64s(Some(&[9; 15]), &[1, 1]), None);
    }

    #[test]
    fn worker_view_is_shared_plus_pending_through_flushes() {
        let mut w = WorkerCounts::new(2);
        w.record(0, 1.0);
        w.record(0, 0.0);
        w.record(1, 0.5);
        w.record(5, 1.0); // unknown arm: ignored
        assert_eq!(
            w.view()[0],
            ArmCounts {
                trials: 2,
                reward_micros: 1_000_000
            }
        );
        let delta = w.pending(0);
        // Another worker had written 10 trials; ours land on top.
        let total = ArmCounts {
            trials: 12,
            reward_micros: 6_000_000,
        };
        w.record(0, 1.0); // arrives between reading pending and the flush completing
        w.flushed(0, delta, total);
        assert_eq!(
            w.pending(0),
            ArmCounts {
                trials: 1,
                reward_micros: 1_000_000
            }
        );
        assert_eq!(
            w.view()[0],
            ArmCounts {
                trials: 13,
                reward_micros: 7_000_000
            }
        );
        w.observed(
            1,
            ArmCounts {
                trials: 4,
                reward_micros: 0,
            },
        );
        assert_eq!(
            w.view()[1],
            ArmCounts {
                trials: 5,
                reward_micros: 500_000
            }
        );
        assert_eq!(w.recent_shares_ppm(), Some(vec![750_000, 250_000]));
        assert_eq!(w.recent_shares_ppm(), None);
        // The fleet's counts add to the view, and a newer live state replaces (not adds to) them.
        let fleet = ArmCounts {
            trials: 100,
            reward_micros: 90_000_000,
        };
        w.set_remote(&[ArmCounts::default(), fleet]);
        w.set_remote(&[ArmCounts::default(), fleet]);
        assert_eq!(
            w.view()[1],
            ArmCounts {
                trials: 105,
                reward_micros: 90_500_000
            }
        );
        w.record(1, 1.0);
        assert_eq!(w.view()[1].trials, 106);
        w.set_remote(&[]);
        assert_eq!(
            w.view()[1].trials,
            6,
            "remote counts gone with a state that has none"
        );
    }

    #[test]
    fn rewards_are_exact_in_millionths() {
        let mut c = ArmCounts::default();
        for _ in 0..1000 {
            c.add_trial(0.1);
        }
        c.add_trial(7.0);
        c.add_trial(-1.0);
        assert_eq!(
            c,
            ArmCounts {
                trials: 1002,
                reward_micros: 101_000_000
            }
        );
        assert_eq!(c.reward(), 101.0);
    }
}
