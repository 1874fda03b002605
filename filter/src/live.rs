//! The live rollout state the controller pushes: a versioned document of arm weights. The filter
//! validates it against its own arms and keeps the last good state when a document is bad; which
//! worker polls is decided by a lease in shared data, so each Envoy polls once, not once per worker.

use std::collections::BTreeMap;

use serde::Deserialize;
use thiserror::Error;

use crate::config::Rollout;
use crate::counters::ArmCounts;

/// As the controller serves it. Unknown fields are allowed: newer controllers may add some.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LiveState {
    pub version: u64,
    pub weights: BTreeMap<String, f64>,
    #[serde(default)]
    pub rolled_back: bool,
    /// Bandit counts this Envoy does not hold itself: the other Envoys' (as they last reported)
    /// plus the delayed rewards applications posted. Added to the local counts, never replacing them.
    #[serde(default)]
    pub bandit: BTreeMap<String, RemoteCounts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct RemoteCounts {
    pub trials: u64,
    pub reward_micros: u64,
}

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
}

impl LiveState {
    pub fn parse(bytes: &[u8]) -> Result<Self, LiveError> {
        serde_json::from_slice(bytes).map_err(|e| LiveError::Json(e.to_string()))
    }

    /// The weights to apply, parallel to the config's arms; arms the document leaves out get 0.
    pub fn weights_for(&self, rollout: &Rollout) -> Result<Vec<f64>, LiveError> {
        let mut out = vec![0.0; rollout.arms.len()];
        for (name, &w) in &self.weights {
            let i = rollout
                .arm_index(name)
                .ok_or_else(|| LiveError::UnknownArm(name.clone()))?;
            if !(w.is_finite() && w >= 0.0) {
                return Err(LiveError::BadWeight(name.clone()));
            }
            out[i] = w;
        }
        if out.iter().all(|&w| w == 0.0) {
            return Err(LiveError::AllZero);
        }
        Ok(out)
    }

    /// The remote bandit counts, parallel to the config's arms.
    pub fn bandit_for(&self, rollout: &Rollout) -> Result<Vec<ArmCounts>, LiveError> {
        let mut out = vec![ArmCounts::default(); rollout.arms.len()];
        for (name, c) in &self.bandit {
            let i = rollout
                .arm_index(name)
                .ok_or_else(|| LiveError::UnknownBanditArm(name.clone()))?;
            out[i] = ArmCounts {
                trials: c.trials,
                reward_micros: c.reward_micros,
            };
        }
        Ok(out)
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

pub fn lease_key(rollout: &str) -> String {
    format!("ramp.ctl.v1.{rollout}.lease")
}

pub fn state_key(rollout: &str) -> String {
    format!("ramp.ctl.v1.{rollout}.state")
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

    #[test]
    fn weights_follow_the_document_and_bad_ones_are_refused() {
        let r = rollout();
        let doc =
            LiveState::parse(br#"{"version":3,"weights":{"v2":25,"v1":75},"stage":2}"#).unwrap();
        assert_eq!(doc.weights_for(&r), Ok(vec![75.0, 25.0]));
        let only =
            LiveState::parse(br#"{"version":4,"weights":{"v2":100},"rolled_back":false}"#).unwrap();
        assert_eq!(only.weights_for(&r), Ok(vec![0.0, 100.0]));
        let unknown = LiveState::parse(br#"{"version":5,"weights":{"v3":1}}"#).unwrap();
        assert_eq!(
            unknown.weights_for(&r),
            Err(LiveError::UnknownArm("v3".into()))
        );
        let zero = LiveState::parse(br#"{"version":5,"weights":{"v1":0}}"#).unwrap();
        assert_eq!(zero.weights_for(&r), Err(LiveError::AllZero));
        let neg = LiveState::parse(br#"{"version":5,"weights":{"v1":-1}}"#).unwrap();
        assert_eq!(neg.weights_for(&r), Err(LiveError::BadWeight("v1".into())));
        let counted = LiveState::parse(
            br#"{"version":6,"weights":{"v1":1},"bandit":{"v2":{"trials":40,"reward_micros":3000000}}}"#,
        )
        .unwrap();
        assert_eq!(
            counted.bandit_for(&r),
            Ok(vec![
                ArmCounts::default(),
                ArmCounts {
                    trials: 40,
                    reward_micros: 3_000_000
                }
            ])
        );
        let stray = LiveState::parse(
            br#"{"version":6,"weights":{"v1":1},"bandit":{"v7":{"trials":1,"reward_micros":0}}}"#,
        )
        .unwrap();
        assert_eq!(
            stray.bandit_for(&r),
            Err(LiveError::UnknownBanditArm("v7".into()))
        );
        assert!(matches!(
            LiveState::parse(b"<html>"),
            Err(LiveError::Json(_))
        ));
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
