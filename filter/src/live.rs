//! The live rollout state the controller pushes (the protocol's [`LiveState`]), checked against
//! this filter's arms once, by the worker that polled it, and handed to the other workers as a
//! small binary [`Applied`] in shared data: a change is parsed and validated once per Envoy, not
//! once per worker. Which worker polls is decided by a lease in shared data, so each Envoy polls
//! once, not once per worker.

use thiserror::Error;

use crate::config::{RawGuard, Rollout};
use crate::counters::ArmCounts;
use crate::guard::{Bound, GuardTest};
pub use ramp_protocol::live::LiveState;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LiveError {
    #[error("live state is not valid JSON: {0}")]
    Json(String),
    #[error("live state weights.{0}: no such arm in this filter's config")]
    UnknownArm(String),
    #[error("live state weights.{0}: must be a finite number >= 0")]
    BadWeight(String),
    #[error("live state weights: every arm would get 0")]
    AllZero,
    #[error("live state bandit.{0}: no such arm in this filter's config")]
    UnknownBanditArm(String),
    #[error("live state pre_weights.{0}: no such arm, or not a finite number >= 0")]
    BadPreWeight(String),
    #[error("live state {0}")]
    BadGuard(String),
}

pub fn parse(bytes: &[u8]) -> Result<LiveState, LiveError> {
    serde_json::from_slice(bytes).map_err(|e| LiveError::Json(e.to_string()))
}

/// A live state checked against this filter's arms: what every worker applies.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub version: u64,
    /// Parallel to the config's arms; arms the document left out got 0.
    pub weights: Vec<f64>,
    /// The remote bandit counts, parallel to the config's arms.
    pub bandit: Vec<ArmCounts>,
    /// The experiment's weights in an A/B test's pre-period, parallel to the config's arms;
    /// empty otherwise.
    pub pre_weights: Vec<f64>,
    /// The guard the controller asks for, with its epoch.
    pub guard: Option<(u64, GuardTest)>,
}

/// Marks the binary form, so bytes some other plugin left under our key are never applied.
const MAGIC: &[u8; 4] = b"RLS2";
/// Flags word bits: which optional parts follow the arms.
const HAS_PRE_WEIGHTS: u64 = 1;
const HAS_GUARD: u64 = 2;

impl Applied {
    pub fn check(doc: &LiveState, rollout: &Rollout) -> Result<Applied, LiveError> {
        let mut weights = vec![0.0; rollout.arms.len()];
        for (name, &w) in &doc.weights {
            let i = rollout
                .arm_index(name)
                .ok_or_else(|| LiveError::UnknownArm(name.clone()))?;
            if !(w.is_finite() && w >= 0.0) {
                return Err(LiveError::BadWeight(name.clone()));
            }
            weights[i] = w;
        }
        if weights.iter().all(|&w| w == 0.0) {
            return Err(LiveError::AllZero);
        }
        let mut bandit = vec![ArmCounts::default(); rollout.arms.len()];
        for (name, c) in &doc.bandit {
            let i = rollout
                .arm_index(name)
                .ok_or_else(|| LiveError::UnknownBanditArm(name.clone()))?;
            bandit[i] = *c;
        }
        let mut pre_weights = vec![0.0; rollout.arms.len()];
        for (name, &w) in &doc.pre_weights {
            match rollout.arm_index(name) {
                Some(i) if w.is_finite() && w >= 0.0 => pre_weights[i] = w,
                _ => return Err(LiveError::BadPreWeight(name.clone())),
            }
        }
        if pre_weights.iter().all(|&w| w == 0.0) {
            pre_weights.clear();
        }
        let guard = match &doc.guard {
            None => None,
            Some(g) => {
                let raw = RawGuard {
                    alpha: g.alpha,
                    min_errors: g.min_errors,
                    max_error_rate: g.max_error_rate,
                    max_increase: g.max_increase,
                };
                let test = raw
                    .test("guard")
                    .map_err(|e| LiveError::BadGuard(format!("{}: {}", e.field, e.reason)))?;
                Some((g.epoch, test))
            }
        };
        Ok(Applied {
            version: doc.version,
            weights,
            bandit,
            pre_weights,
            guard,
        })
    }

    /// `RLS2`, the version, a flags word, then per arm its weight's bits, trials and reward
    /// (little-endian); then in a pre-period per arm its pre-period weight's bits; then with a
    /// guard its epoch, alpha's bits, min_errors, kind (0 bound, 1 over the baseline) and value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(60 + self.weights.len() * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        let flags = u64::from(!self.pre_weights.is_empty()) * HAS_PRE_WEIGHTS
            + u64::from(self.guard.is_some()) * HAS_GUARD;
        out.extend_from_slice(&flags.to_le_bytes());
        for (w, c) in self.weights.iter().zip(&self.bandit) {
            out.extend_from_slice(&w.to_bits().to_le_bytes());
            out.extend_from_slice(&c.trials.to_le_bytes());
            out.extend_from_slice(&c.reward_micros.to_le_bytes());
        }
        for w in &self.pre_weights {
            out.extend_from_slice(&w.to_bits().to_le_bytes());
        }
        if let Some((epoch, t)) = &self.guard {
            let (kind, value) = match t.bound {
                Bound::MaxErrorRate(p) => (0u64, p),
                Bound::VsBaseline { max_increase } => (1, max_increase),
            };
            for word in [
                epoch.to_owned(),
                t.alpha.to_bits(),
                t.min_errors,
                kind,
                value.to_bits(),
            ] {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
        out
    }

    /// The binary form for a config of `arms` arms; `None` for anything else (another config's
    /// state, foreign bytes), which is then ignored.
    pub fn decode(bytes: &[u8], arms: usize) -> Option<Applied> {
        let rest = bytes.strip_prefix(MAGIC)?;
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(
                rest.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        let flags = word(1)?;
        let pre_period = flags & HAS_PRE_WEIGHTS != 0;
        let has_guard = flags & HAS_GUARD != 0;
        let words = 2 + arms * 3 + arms * usize::from(pre_period) + 5 * usize::from(has_guard);
        if flags > (HAS_PRE_WEIGHTS | HAS_GUARD) || rest.len() != words * 8 {
            return None;
        }
        let weight = |i: usize| {
            let w = f64::from_bits(word(i)?);
            (w.is_finite() && w >= 0.0).then_some(w)
        };
        let mut weights = Vec::with_capacity(arms);
        let mut bandit = Vec::with_capacity(arms);
        for a in 0..arms {
            weights.push(weight(2 + a * 3)?);
            bandit.push(ArmCounts {
                trials: word(3 + a * 3)?,
                reward_micros: word(4 + a * 3)?,
            });
        }
        let mut pre_weights = Vec::new();
        for a in 0..arms * usize::from(pre_period) {
            pre_weights.push(weight(2 + arms * 3 + a)?);
        }
        let guard = if has_guard {
            let at = 2 + arms * 3 + pre_weights.len();
            let value = f64::from_bits(word(at + 4)?);
            let bound = match word(at + 3)? {
                0 => RawGuard {
                    max_error_rate: Some(value),
                    ..RawGuard::default()
                },
                1 => RawGuard {
                    max_increase: Some(value),
                    ..RawGuard::default()
                },
                _ => return None,
            };
            let raw = RawGuard {
                alpha: Some(f64::from_bits(word(at + 1)?)),
                min_errors: Some(word(at + 2)?),
                ..bound
            };
            Some((word(at)?, raw.test("guard").ok()?))
        } else {
            None
        };
        Some(Applied {
            version: word(0)?,
            weights,
            bandit,
            pre_weights,
            guard,
        })
    }

    /// Whether this state should replace `stored` in shared data: a newer version, or the same
    /// version with new content (the fleet's bandit counts moved while the weights did not).
    pub fn replaces(&self, stored: Option<&Applied>) -> bool {
        stored.is_none_or(|old| {
            self.version > old.version || (self.version == old.version && self != old)
        })
    }
}

/// The poller lease in shared data: who holds it and until when (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub holder: u64,
    pub until_ms: u64,
}

impl Lease {
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.holder.to_le_bytes());
        out[8..].copy_from_slice(&self.until_ms.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        let b: &[u8; 16] = bytes.try_into().ok()?;
        Some(Lease {
            holder: u64::from_le_bytes(b[..8].try_into().ok()?),
            until_ms: u64::from_le_bytes(b[8..].try_into().ok()?),
        })
    }

    /// Whether worker `me` may take (or renew) the lease stored as `stored` at `now_ms`.
    pub fn may_take(stored: Option<&[u8]>, me: u64, now_ms: u64) -> bool {
        match stored.and_then(Lease::decode) {
            None => true,
            Some(l) => l.holder == me || l.until_ms < now_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout() -> Rollout {
        Rollout::from_json(
            br#"{"rollout":"r","arms":[{"name":"v1","weight":100},{"name":"v2","weight":0}]}"#,
        )
        .unwrap()
    }

    fn checked(text: &str) -> Result<Applied, LiveError> {
        Applied::check(&parse(text.as_bytes())?, &rollout())
    }

    /// An A/B test's pre-period weights: parallel to the arms, refused by name when they name
    /// no arm or are not finite and >= 0 (the last good state stays), none when all are 0, and
    /// carried to the other workers in the binary form.
    #[test]
    fn pre_period_weights_are_checked_and_survive_the_binary_form() {
        let a = checked(r#"{"version":5,"weights":{"v1":100},"pre_weights":{"v2":30,"v1":70}}"#)
            .unwrap();
        assert_eq!(a.pre_weights, vec![70.0, 30.0]);
        assert_eq!(Applied::decode(&a.encode(), 2), Some(a.clone()));
        let none = checked(r#"{"version":5,"weights":{"v1":100}}"#).unwrap();
        assert!(none.pre_weights.is_empty());
        assert_eq!(Applied::decode(&none.encode(), 2), Some(none));
        let zero = checked(r#"{"version":5,"weights":{"v1":100},"pre_weights":{"v1":0,"v2":0}}"#);
        assert!(zero.unwrap().pre_weights.is_empty(), "all 0: no pre-period");
        for bad in [r#"{"v9":50}"#, r#"{"v2":-1}"#, r#"{"v2":1e400}"#] {
            let text = format!(r#"{{"version":5,"weights":{{"v1":100}},"pre_weights":{bad}}}"#);
            assert!(
                matches!(
                    checked(&text),
                    Err(LiveError::BadPreWeight(_)) | Err(LiveError::Json(_))
                ),
                "{bad}"
            );
        }
        assert!(checked(r#"{"version":5,"weights":{"v1":100},"pre_weights":{"v2":"x"}}"#).is_err());
        // A binary form with a pre-period part of the wrong length or a NaN is not applied.
        let mut bytes = a.encode();
        bytes.pop();
        assert_eq!(Applied::decode(&bytes, 2), None);
        let mut nan = a.encode();
        let at = nan.len() - 8;
        nan[at..].copy_from_slice(&f64::NAN.to_bits().to_le_bytes());
        assert_eq!(Applied::decode(&nan, 2), None);
    }

    #[test]
    fn weights_follow_the_document_and_bad_ones_are_refused() {
        assert_eq!(
            checked(r#"{"version":3,"weights":{"v2":25,"v1":75},"stage":2}"#).map(|a| a.weights),
            Ok(vec![75.0, 25.0])
        );
        assert_eq!(
            checked(r#"{"version":4,"weights":{"v2":100},"rolled_back":false}"#).map(|a| a.weights),
            Ok(vec![0.0, 100.0])
        );
        assert_eq!(
            checked(r#"{"version":5,"weights":{"v3":1}}"#),
            Err(LiveError::UnknownArm("v3".into()))
        );
        assert_eq!(
            checked(r#"{"version":5,"weights":{"v1":0}}"#),
            Err(LiveError::AllZero)
        );
        assert_eq!(
            checked(r#"{"version":5,"weights":{"v1":-1}}"#),
            Err(LiveError::BadWeight("v1".into()))
        );
        assert_eq!(
            checked(r#"{"version":6,"weights":{"v1":1},"bandit":{"v2":{"trials":40,"reward_micros":3000000}}}"#)
                .map(|a| a.bandit),
            Ok(vec![
                ArmCounts::default(),
                ArmCounts {
                    trials: 40,
                    reward_micros: 3_000_000
                }
            ])
        );
        assert_eq!(
            checked(
                r#"{"version":6,"weights":{"v1":1},"bandit":{"v7":{"trials":1,"reward_micros":0}}}"#
            ),
            Err(LiveError::UnknownBanditArm("v7".into()))
        );
        assert!(matches!(checked("<html>"), Err(LiveError::Json(_))));
    }

    #[test]
    fn the_binary_form_round_trips_and_refuses_foreign_bytes() {
        let a = checked(r#"{"version":6,"weights":{"v1":0.5,"v2":99.5},"bandit":{"v2":{"trials":40,"reward_micros":3000000}}}"#).unwrap();
        let bytes = a.encode();
        assert_eq!(Applied::decode(&bytes, 2), Some(a.clone()));
        assert_eq!(Applied::decode(&bytes, 3), None, "another config's arms");
        assert_eq!(Applied::decode(&bytes[1..], 2), None);
        assert_eq!(Applied::decode(b"{\"version\":1}", 2), None);
        let mut bad = bytes.clone();
        bad[12..20].copy_from_slice(&f64::NAN.to_bits().to_le_bytes());
        assert_eq!(
            Applied::decode(&bad, 2),
            None,
            "a weight no check would pass"
        );
        // Newer versions replace; the same version replaces only with new content.
        let mut newer = a.clone();
        assert!(!newer.replaces(Some(&a)));
        newer.bandit[1].trials += 1;
        assert!(newer.replaces(Some(&a)));
        newer.version = 5;
        assert!(!newer.replaces(Some(&a)), "an older version never replaces");
        assert!(a.replaces(None));
    }

    #[test]
    fn lease_rules() {
        let held = Lease {
            holder: 7,
            until_ms: 1000,
        }
        .encode();
        assert!(Lease::may_take(None, 1, 0));
        assert!(Lease::may_take(Some(&held), 7, 500), "the holder renews");
        assert!(!Lease::may_take(Some(&held), 8, 500), "others wait");
        assert!(
            Lease::may_take(Some(&held), 8, 1001),
            "an expired lease is free"
        );
        assert!(Lease::may_take(Some(&[1, 2]), 8, 0), "garbage is free");
    }
}
