//! One Envoy's guard in shared data, which every worker merges into: the epoch it counts for,
//! the arms tripped (and those already reported), per arm the responses and 5xx counted in that
//! epoch, and the counts at the newest checkpoints (one every `CHECKPOINT_EVERY` responses), the
//! start points of the test's later windows. Workers count locally and add their counts once a
//! tick (or at a candidate's 5xx), so the test sees the Envoy's responses, not one worker's.

use crate::guard::{ln_start_weight, ArmTally, Window};

/// Marks the bytes as ours, so anything else under the key is replaced, never merged.
const MAGIC: &[u8; 4] = b"RGD3";

/// Responses (all arms) between checkpoints: a fault is judged on at most about this many
/// healthy responses from before it, whenever in the stage it begins.
pub const CHECKPOINT_EVERY: u64 = 1_000;
/// Responses a worker counts before it merges them and looks (besides its tick): a look decided by
/// how many responses, never by what they were. 32 keeps the host calls it costs to one CAS per 32
/// requests while a 1,000 rps Envoy of two workers still looks every 32 ms.
pub const MERGE_EVERY: u32 = 32;
/// Checkpoints kept, newest first to go: older start points are left out (which only lowers
/// the test's sum), and the epoch's start is always in.
pub const CHECKPOINTS_KEPT: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardRecord {
    pub epoch: u64,
    /// The live state version the epoch was taken from (0: the static config's).
    pub version: u64,
    /// Bit `i`: arm `i` is tripped in this epoch (at most 16 arms: `names::MAX_ARMS`).
    pub tripped: u64,
    /// Bit `i`: a report said so already.
    pub reported: u64,
    pub arms: Vec<ArmTally>,
    /// Checkpoints taken in this epoch, and the total responses at which the next is due.
    pub checkpoints_taken: u64,
    pub next_checkpoint_at: u64,
    /// The newest checkpoints, oldest first: its number (1-based) and every arm's counts then.
    pub checkpoints: Vec<(u64, Vec<ArmTally>)>,
}

impl GuardRecord {
    pub fn new(epoch: u64, arms: usize) -> Self {
        GuardRecord {
            epoch,
            version: 0,
            tripped: 0,
            reported: 0,
            arms: vec![ArmTally::default(); arms],
            checkpoints_taken: 0,
            next_checkpoint_at: CHECKPOINT_EVERY,
            checkpoints: Vec::new(),
        }
    }

    /// The windows the test of `candidate` against `baseline` looks at: since the epoch began,
    /// and since each checkpoint kept, each with its start's weight.
    pub fn windows(&self, candidate: usize, baseline: usize) -> Vec<Window> {
        let at = |arms: &[ArmTally], i: usize| arms.get(i).copied().unwrap_or_default();
        let since = |then: &[ArmTally], i: usize| {
            let (now, then) = (at(&self.arms, i), at(then, i));
            ArmTally {
                requests: now.requests.saturating_sub(then.requests),
                errors: now.errors.saturating_sub(then.errors),
            }
        };
        let mut out = Vec::with_capacity(1 + self.checkpoints.len());
        out.push(Window {
            ln_weight: ln_start_weight(0),
            candidate: at(&self.arms, candidate),
            baseline: at(&self.arms, baseline),
        });
        for (k, then) in &self.checkpoints {
            out.push(Window {
                ln_weight: ln_start_weight(*k),
                candidate: since(then, candidate),
                baseline: since(then, baseline),
            });
        }
        out
    }

    /// `RGD3`, the epoch, its version, the trip and report bits, the checkpoints taken, the next one's due
    /// count, the checkpoints kept, then per arm its requests and 5xx, then per checkpoint kept
    /// its number and per arm the same (little-endian u64s).
    pub fn encode(&self) -> Vec<u8> {
        let arms = self.arms.len();
        let mut out = Vec::with_capacity(4 + 56 + (1 + self.checkpoints.len()) * (8 + arms * 16));
        out.extend_from_slice(MAGIC);
        let kept = self.checkpoints.len() as u64;
        for w in [
            self.epoch,
            self.version,
            self.tripped,
            self.reported,
            self.checkpoints_taken,
            self.next_checkpoint_at,
            kept,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        push_tallies(&mut out, &self.arms);
        for (k, ts) in &self.checkpoints {
            out.extend_from_slice(&k.to_le_bytes());
            push_tallies(&mut out, ts);
        }
        out
    }

    /// The record of a config of `arms` arms; `None` for anything else (another layout, another
    /// config's arm count, foreign bytes).
    pub fn decode(bytes: &[u8], arms: usize) -> Option<Self> {
        let rest = bytes.strip_prefix(MAGIC)?;
        if rest.len() % 8 != 0 {
            return None;
        }
        let words: Vec<u64> = rest
            .chunks_exact(8)
            .filter_map(|c| Some(u64::from_le_bytes(c.try_into().ok()?)))
            .collect();
        let (head, rest) = words.split_at_checked(7)?;
        let kept = usize::try_from(head[6])
            .ok()
            .filter(|&k| k <= CHECKPOINTS_KEPT)?;
        if rest.len() != arms * 2 + kept * (1 + arms * 2) {
            return None;
        }
        let tallies = |ws: &[u64]| -> Vec<ArmTally> {
            ws.chunks_exact(2)
                .map(|c| ArmTally {
                    requests: c[0],
                    errors: c[1],
                })
                .collect()
        };
        let (now, rows) = rest.split_at_checked(arms * 2)?;
        let checkpoints = rows
            .chunks_exact(1 + arms * 2)
            .map(|row| (row[0], tallies(&row[1..])))
            .collect();
        Some(GuardRecord {
            epoch: head[0],
            version: head[1],
            tripped: head[2],
            reported: head[3],
            checkpoints_taken: head[4],
            next_checkpoint_at: head[5],
            arms: tallies(now),
            checkpoints,
        })
    }

    /// The stored record with a worker's counts of `epoch` added and `trips` set: a newer epoch
    /// starts afresh; `None` when the stored one is newer than the worker's (the worker has not
    /// applied the newest live state yet, and its counts are of an epoch that is over).
    ///
    /// Which epoch is newer is told by `version`, the live state's version the worker took its
    /// epoch from (filters only ever apply newer states), not by the epochs themselves: a
    /// controller's clock may step back between stages (another replica's), and then a newer
    /// stage's epoch is a smaller number.
    pub fn merged(
        stored: Option<&[u8]>,
        epoch: u64,
        version: u64,
        delta: &[ArmTally],
        trips: u64,
    ) -> Option<Self> {
        let mut record = match stored.and_then(|b| GuardRecord::decode(b, delta.len())) {
            Some(r) if r.epoch == epoch => r,
            Some(r) if r.version > version => return None,
            _ => GuardRecord {
                version,
                ..GuardRecord::new(epoch, delta.len())
            },
        };
        record.add(delta, trips);
        Some(record)
    }

    /// A worker's counts of this record's epoch added and `trips` set, and a checkpoint taken
    /// if the responses counted reached the next one's due count: `merged` without the bytes.
    pub fn add(&mut self, delta: &[ArmTally], trips: u64) {
        for (total, d) in self.arms.iter_mut().zip(delta) {
            total.requests = total.requests.saturating_add(d.requests);
            total.errors = total.errors.saturating_add(d.errors);
        }
        self.tripped |= trips;
        // A checkpoint is due by the responses counted, never by their outcomes: its window is a
        // test started at a time the data did not choose.
        let responses = self
            .arms
            .iter()
            .fold(0u64, |n, t| n.saturating_add(t.requests));
        if responses >= self.next_checkpoint_at {
            self.checkpoints_taken = self.checkpoints_taken.saturating_add(1);
            self.checkpoints
                .push((self.checkpoints_taken, self.arms.clone()));
            if self.checkpoints.len() > CHECKPOINTS_KEPT {
                self.checkpoints.remove(0);
            }
            self.next_checkpoint_at = responses.saturating_add(CHECKPOINT_EVERY);
        }
    }
}

fn push_tallies(out: &mut Vec<u8>, tallies: &[ArmTally]) {
    for a in tallies {
        out.extend_from_slice(&a.requests.to_le_bytes());
        out.extend_from_slice(&a.errors.to_le_bytes());
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
            version: 12,
            tripped: 0b10,
            reported: 0b10,
            arms: vec![tally(100, 1), tally(50, 20)],
            checkpoints_taken: 3,
            next_checkpoint_at: 4_000,
            checkpoints: vec![
                (2, vec![tally(10, 0), tally(5, 1)]),
                (3, vec![tally(60, 1), tally(30, 9)]),
            ],
        };
        assert_eq!(GuardRecord::decode(&r.encode(), 2), Some(r.clone()));
        let fresh = GuardRecord::new(1, 2);
        assert_eq!(GuardRecord::decode(&fresh.encode(), 2), Some(fresh));
        assert_eq!(
            GuardRecord::decode(&r.encode(), 3),
            None,
            "another config's arms"
        );
        assert_eq!(GuardRecord::decode(b"RGD3", 0), None);
        assert_eq!(GuardRecord::decode(&[0; 60], 2), None, "foreign bytes");
    }

    #[test]
    fn merging_adds_within_an_epoch_starts_afresh_on_a_newer_one_and_never_goes_back() {
        let delta = [tally(10, 1), tally(10, 4)];
        let first = GuardRecord::merged(None, 3, 3, &delta, 0).unwrap();
        let second = GuardRecord::merged(Some(&first.encode()), 3, 3, &delta, 0b10).unwrap();
        assert_eq!(second.arms, vec![tally(20, 2), tally(20, 8)]);
        assert_eq!(second.tripped, 0b10);
        let newer = GuardRecord::merged(Some(&second.encode()), 4, 4, &delta, 0).unwrap();
        assert_eq!((newer.epoch, newer.tripped), (4, 0));
        assert_eq!(newer.arms, delta.to_vec());
        assert_eq!(
            GuardRecord::merged(Some(&newer.encode()), 3, 3, &delta, 0),
            None,
            "a worker still on epoch 3 must not undo epoch 4"
        );
        let full = [tally(u64::MAX / 2, u64::MAX / 2), tally(0, 0)];
        let saturated = GuardRecord::merged(Some(&newer.encode()), 4, 4, &full, 0).unwrap();
        assert_eq!(
            saturated.arms[0],
            tally(u64::MAX / 2 + 10, u64::MAX / 2 + 1)
        );
        let again = GuardRecord::merged(Some(&saturated.encode()), 4, 4, &full, 0).unwrap();
        assert_eq!(again.arms[0], tally(u64::MAX, u64::MAX), "saturates");
    }

    #[test]
    fn the_newer_live_state_wins_whatever_its_epochs_number() {
        let delta = [tally(10, 1), tally(10, 4)];
        // Stage 2's epoch (its start, by another replica's clock) is below stage 1's.
        let stage1 = GuardRecord::merged(None, 5_000, 7, &delta, 0b10).unwrap();
        let stage2 = GuardRecord::merged(Some(&stage1.encode()), 4_000, 9, &delta, 0).unwrap();
        assert_eq!(
            (stage2.epoch, stage2.version, stage2.tripped),
            (4_000, 9, 0)
        );
        assert_eq!(
            GuardRecord::merged(Some(&stage2.encode()), 5_000, 7, &delta, 0),
            None,
            "a worker still on stage 1 leaves stage 2 alone"
        );
    }

    #[test]
    fn a_checkpoint_every_thousand_responses_and_the_newest_eight_kept() {
        let mut stored: Option<Vec<u8>> = None;
        let delta = [tally(150, 1), tally(100, 3)];
        let mut record = GuardRecord::new(1, 2);
        for _ in 0..100 {
            record = GuardRecord::merged(stored.as_deref(), 1, 1, &delta, 0).unwrap();
            stored = Some(record.encode());
        }
        // 25,000 responses: one checkpoint at each merge that reached the next thousand.
        assert_eq!(record.checkpoints_taken, 25);
        assert_eq!(record.checkpoints.len(), CHECKPOINTS_KEPT);
        assert_eq!(record.checkpoints.last().unwrap().0, 25);
        assert_eq!(record.checkpoints[0].0, 18);
        let windows = record.windows(1, 0);
        assert_eq!(windows.len(), 1 + CHECKPOINTS_KEPT);
        assert_eq!(windows[0].candidate, tally(10_000, 300));
        // The newest checkpoint was the last merge: its window is empty.
        assert_eq!(windows.last().unwrap().candidate, tally(0, 0));
        assert_eq!(
            windows[1].candidate,
            tally(2_800, 84),
            "since checkpoint 18, 7 checkpoints (28 merges) ago"
        );
        assert!(windows[1].ln_weight < windows[0].ln_weight);
    }
}

/// A reviewer's probe, kept: the false-trip rate of an A/A stage with many workers, when looks
/// are decided by response counts and ticks (as the worker does) and when they are triggered by
/// a candidate's 5xx (as it once did).
#[cfg(test)]
mod many_workers {
    use super::*;
    use crate::guard::{Bound, GuardTest};

    /// Share of `runs` A/A stages (both arms at 5xx rate `p`, `workers` workers, `per_tick`
    /// responses per worker per tick, interleaved at random) in which the guard trips.
    fn false_trips(workers: usize, per_tick: usize, ticks: usize, p: f64, on_error: bool) -> f64 {
        let test = GuardTest {
            alpha: 0.05,
            min_errors: 5,
            bound: Bound::MaxErrorRate(p),
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let runs = 100;
        let mut tripped = 0;
        for _ in 0..runs {
            let mut stored: Option<Vec<u8>> = None;
            let mut pending = vec![([ArmTally::default(); 2], 0u32); workers];
            let look = |stored: &mut Option<Vec<u8>>, (delta, n): &mut ([ArmTally; 2], u32)| {
                let r = GuardRecord::merged(stored.as_deref(), 1, 1, &delta[..], 0).unwrap();
                *stored = Some(r.encode());
                (*delta, *n) = ([ArmTally::default(); 2], 0);
                test.trips_any(r.arms[1].errors, &r.windows(1, 0))
            };
            'run: for _ in 0..ticks {
                for _ in 0..workers * per_tick {
                    let w = rng.usize(0..workers);
                    let (arm, error) = (rng.usize(0..2), rng.f64() < p);
                    let (delta, n) = &mut pending[w];
                    delta[arm].requests += 1;
                    delta[arm].errors += u64::from(error);
                    *n += 1;
                    let due = if on_error {
                        error && arm == 1
                    } else {
                        *n >= MERGE_EVERY
                    };
                    if due && look(&mut stored, &mut pending[w]) {
                        tripped += 1;
                        break 'run;
                    }
                }
                for w in pending.iter_mut() {
                    if look(&mut stored, w) {
                        tripped += 1;
                        break 'run;
                    }
                }
            }
        }
        f64::from(tripped) / f64::from(runs)
    }

    #[test]
    fn looks_by_count_keep_the_bound_and_looks_by_outcome_do_not() {
        // 16 workers, 100 responses each per 100 ms tick, 1% 5xx on both arms, 5 s of a stage.
        let by_count = false_trips(16, 100, 50, 0.01, false);
        let by_error = false_trips(16, 100, 50, 0.01, true);
        eprintln!("A/A false trips at alpha 0.05: looks by count {by_count}, by 5xx {by_error}");
        // 100 runs: alpha 0.05 plus three standard errors (0.065).
        assert!(by_count <= 0.05 + 0.066, "looks by count: {by_count}");
        assert!(by_error > 0.2, "the probe tells the two apart: {by_error}");
    }
}

#[cfg(test)]
mod add_tests {
    use super::*;

    #[test]
    fn adding_in_memory_is_merging_the_bytes() {
        let delta = [
            ArmTally {
                requests: 70,
                errors: 1,
            },
            ArmTally {
                requests: 60,
                errors: 9,
            },
        ];
        let mut record = GuardRecord::new(2, 2);
        for i in 0..200u64 {
            let merged = GuardRecord::merged(Some(&record.encode()), 2, 2, &delta, i % 3).unwrap();
            record.add(&delta, i % 3);
            assert_eq!(record, merged);
        }
        assert_eq!(record.checkpoints.len(), CHECKPOINTS_KEPT);
    }
}
