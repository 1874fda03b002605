//! One Envoy's guard in shared data, which every worker merges into: the epoch it counts for,
//! the arms tripped (and those already reported), and per arm the responses and 5xx counted in
//! that epoch. Workers count locally and add their counts once a tick, so the test sees the
//! Envoy's responses, not one worker's.

use crate::guard::ArmTally;

/// Marks the bytes as ours, so anything else under the key is replaced, never merged.
const MAGIC: &[u8; 4] = b"RGD1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardRecord {
    pub epoch: u64,
    /// Bit `i`: arm `i` is tripped in this epoch (at most 16 arms: `names::MAX_ARMS`).
    pub tripped: u64,
    /// Bit `i`: a report said so already.
    pub reported: u64,
    pub arms: Vec<ArmTally>,
}

impl GuardRecord {
    pub fn new(epoch: u64, arms: usize) -> Self {
        GuardRecord {
            epoch,
            tripped: 0,
            reported: 0,
            arms: vec![ArmTally::default(); arms],
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(28 + self.arms.len() * 16);
        out.extend_from_slice(MAGIC);
        for w in [self.epoch, self.tripped, self.reported] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for a in &self.arms {
            out.extend_from_slice(&a.requests.to_le_bytes());
            out.extend_from_slice(&a.errors.to_le_bytes());
        }
        out
    }

    /// The record of a config of `arms` arms; `None` for anything else (another layout, another
    /// config's arm count, foreign bytes).
    pub fn decode(bytes: &[u8], arms: usize) -> Option<Self> {
        let rest = bytes.strip_prefix(MAGIC)?;
        if rest.len() != 24 + arms * 16 {
            return None;
        }
        let words: Vec<u64> = rest
            .chunks_exact(8)
            .filter_map(|c| Some(u64::from_le_bytes(c.try_into().ok()?)))
            .collect();
        let (head, tallies) = words.split_at_checked(3)?;
        Some(GuardRecord {
            epoch: head[0],
            tripped: head[1],
            reported: head[2],
            arms: tallies
                .chunks_exact(2)
                .map(|c| ArmTally {
                    requests: c[0],
                    errors: c[1],
                })
                .collect(),
        })
    }

    /// The stored record with a worker's counts of `epoch` added and `trips` set: a newer epoch
    /// starts afresh; `None` when the stored one is newer than the worker's (the worker has not
    /// applied the newest live state yet, and its counts are of an epoch that is over).
    pub fn merged(
        stored: Option<&[u8]>,
        epoch: u64,
        delta: &[ArmTally],
        trips: u64,
    ) -> Option<Self> {
        let fresh = || GuardRecord::new(epoch, delta.len());
        let mut record = match stored.and_then(|b| GuardRecord::decode(b, delta.len())) {
            Some(r) if r.epoch > epoch => return None,
            Some(r) if r.epoch == epoch => r,
            _ => fresh(),
        };
        for (total, d) in record.arms.iter_mut().zip(delta) {
            total.requests = total.requests.saturating_add(d.requests);
            total.errors = total.errors.saturating_add(d.errors);
        }
        record.tripped |= trips;
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(requests: u64, errors: u64) -> ArmTally {
        ArmTally { requests, errors }
    }

    #[test]
    fn round_trips_and_refuses_other_layouts() {
        let r = GuardRecord {
            epoch: 9,
            tripped: 0b10,
            reported: 0b10,
            arms: vec![tally(100, 1), tally(50, 20)],
        };
        assert_eq!(GuardRecord::decode(&r.encode(), 2), Some(r.clone()));
        assert_eq!(
            GuardRecord::decode(&r.encode(), 3),
            None,
            "another config's arms"
        );
        assert_eq!(GuardRecord::decode(b"RGD1", 0), None);
        assert_eq!(GuardRecord::decode(&[0; 60], 2), None, "foreign bytes");
    }

    #[test]
    fn merging_adds_within_an_epoch_starts_afresh_on_a_newer_one_and_never_goes_back() {
        let delta = [tally(10, 1), tally(10, 4)];
        let first = GuardRecord::merged(None, 3, &delta, 0).unwrap();
        let second = GuardRecord::merged(Some(&first.encode()), 3, &delta, 0b10).unwrap();
        assert_eq!(second.arms, vec![tally(20, 2), tally(20, 8)]);
        assert_eq!(second.tripped, 0b10);
        let newer = GuardRecord::merged(Some(&second.encode()), 4, &delta, 0).unwrap();
        assert_eq!((newer.epoch, newer.tripped), (4, 0));
        assert_eq!(newer.arms, delta.to_vec());
        assert_eq!(
            GuardRecord::merged(Some(&newer.encode()), 3, &delta, 0),
            None,
            "a worker still on epoch 3 must not undo epoch 4"
        );
        let full = [tally(u64::MAX, u64::MAX), tally(0, 0)];
        let saturated = GuardRecord::merged(Some(&newer.encode()), 4, &full, 0).unwrap();
        assert_eq!(saturated.arms[0], tally(u64::MAX, u64::MAX));
    }
}
