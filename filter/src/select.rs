//! Per-request arm choice: override, then sticky key, then the strategy; the baseline when nothing
//! else can answer. Pure: the glue hands in what it read from the request and an RNG.

use fastrand::Rng;

use crate::bandit::{self, Evidence};
use crate::bucket::sticky_arm;
use crate::config::Rollout;

/// What the glue read from the request that matters for the choice.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestKeys<'a> {
    pub override_value: Option<&'a str>,
    pub sticky_key: Option<&'a str>,
}

/// Why an arm was chosen; the reason is logged at debug level and useful in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Override,
    Sticky,
    /// No key yet: a fresh one was issued (cookie) and the arm follows from it.
    NewStickyKey,
    Weighted,
    Bandit,
    /// No arm had a positive weight (e.g. a live state that zeroed them all): fail open to the baseline.
    Baseline,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub arm: usize,
    pub reason: Reason,
    /// A key issued to this client, to be sent back as a cookie.
    pub new_sticky_key: Option<String>,
}

/// Picks the arm for one request. `weights` are the live weights (parallel to `rollout.arms`): the
/// static config's at first, the controller's later. A weight of 0 means the arm takes no traffic,
/// whatever override or pin asks for it. `bandit` is what the bandit decides from (ignored by the
/// weighted strategy).
pub fn choose(
    rollout: &Rollout,
    weights: &[f64],
    bandit: Evidence<'_>,
    keys: RequestKeys<'_>,
    rng: &mut Rng,
) -> Decision {
    let live = |i: usize| weights.get(i).is_some_and(|&w| w > 0.0);
    let decided = |arm, reason| Decision {
        arm,
        reason,
        new_sticky_key: None,
    };

    if let (Some(ov), Some(value)) = (&rollout.override_, keys.override_value) {
        if let Some(&arm) = ov.values.get(value) {
            if live(arm) {
                return decided(arm, Reason::Override);
            }
        }
    }

    if let Some(sticky) = &rollout.sticky {
        let arms = || {
            rollout
                .arms
                .iter()
                .map(|a| a.name.as_str())
                .zip(weights.iter().copied())
        };
        match keys.sticky_key.filter(|k| !k.is_empty()) {
            Some(key) => {
                if let Some(arm) = sticky_arm(&sticky.salt, key, arms()) {
                    return decided(arm, Reason::Sticky);
                }
            }
            None if sticky.set_cookie => {
                let key = new_key(rng);
                if let Some(arm) = sticky_arm(&sticky.salt, &key, arms()) {
                    return Decision {
                        arm,
                        reason: Reason::NewStickyKey,
                        new_sticky_key: Some(key),
                    };
                }
            }
            None => {}
        }
    }

    let picked = match &rollout.bandit {
        Some(b) => bandit::decide(b, bandit, weights, rng).map(|a| (a, Reason::Bandit)),
        None => weighted_pick(weights, rng).map(|a| (a, Reason::Weighted)),
    };
    match picked {
        Some((arm, reason)) => decided(arm, reason),
        None => decided(rollout.baseline, Reason::Baseline),
    }
}

/// In an A/B test's pre-period, the arm the experiment's weights `pre_weights` will give sticky
/// key `key` (the same hash as `choose`'s, so the same user lands there later); `None` outside a
/// pre-period or without stickiness.
pub fn pre_period_arm(rollout: &Rollout, pre_weights: &[f64], key: &str) -> Option<usize> {
    if pre_weights.is_empty() {
        return None;
    }
    let sticky = rollout.sticky.as_ref()?;
    let names = rollout.arms.iter().map(|a| a.name.as_str());
    sticky_arm(&sticky.salt, key, names.zip(pre_weights.iter().copied()))
}

/// Draws an arm with probability proportional to its weight; `None` when no weight is positive.
pub fn weighted_pick(weights: &[f64], rng: &mut Rng) -> Option<usize> {
    let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
    if !(total > 0.0 && total.is_finite()) {
        return None;
    }
    let mut point = rng.f64() * total;
    let mut last_live = None;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            if point < w {
                return Some(i);
            }
            point -= w;
            last_live = Some(i);
        }
    }
    // Rounding can leave `point` a hair above the last weight.
    last_live
}

/// 128 random bits as 32 hex digits: unguessable enough that clients cannot aim at an arm.
fn new_key(rng: &mut Rng) -> String {
    format!("{:016x}{:016x}", rng.u64(..), rng.u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::ArmCounts;

    fn rollout(extra: &str) -> Rollout {
        let json = format!(
            r#"{{"rollout":"t","arms":[{{"name":"v1","weight":90}},{{"name":"v2","weight":10}}]{extra}}}"#
        );
        Rollout::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn override_wins_only_for_live_mapped_arms() {
        let r = rollout(r#","override":{"header":"canary","values":{"true":"v2"}}"#);
        let mut rng = Rng::with_seed(1);
        let keys = RequestKeys {
            override_value: Some("true"),
            sticky_key: None,
        };
        assert_eq!(
            choose(&r, &[90.0, 10.0], Evidence::default(), keys, &mut rng).reason,
            Reason::Override
        );
        assert_eq!(
            choose(&r, &[90.0, 10.0], Evidence::default(), keys, &mut rng).arm,
            1
        );
        // A rolled-back arm is never forced.
        assert_eq!(
            choose(&r, &[100.0, 0.0], Evidence::default(), keys, &mut rng).arm,
            0
        );
        let other = RequestKeys {
            override_value: Some("yes"),
            sticky_key: None,
        };
        assert_eq!(
            choose(&r, &[0.0, 10.0], Evidence::default(), other, &mut rng).reason,
            Reason::Weighted
        );
    }

    #[test]
    fn sticky_key_decides_and_weight_zero_overrides_pins() {
        let r = rollout(r#","sticky":{"source":"header","name":"x-user"}"#);
        let mut rng = Rng::with_seed(2);
        for u in 0..500 {
            let key = format!("u{u}");
            let keys = RequestKeys {
                override_value: None,
                sticky_key: Some(&key),
            };
            let first = choose(&r, &[90.0, 10.0], Evidence::default(), keys, &mut rng);
            assert_eq!(first.reason, Reason::Sticky);
            for _ in 0..3 {
                assert_eq!(
                    choose(&r, &[90.0, 10.0], Evidence::default(), keys, &mut rng),
                    first
                );
            }
            assert_eq!(
                choose(&r, &[100.0, 0.0], Evidence::default(), keys, &mut rng).arm,
                0
            );
        }
    }

    #[test]
    fn missing_key_issues_one_only_when_asked() {
        let cookie = rollout(r#","sticky":{"source":"cookie","name":"uid","set_cookie":true}"#);
        let mut rng = Rng::with_seed(3);
        let d = choose(
            &cookie,
            &[90.0, 10.0],
            Evidence::default(),
            RequestKeys::default(),
            &mut rng,
        );
        assert_eq!(d.reason, Reason::NewStickyKey);
        let key = d.new_sticky_key.clone().unwrap();
        assert_eq!(key.len(), 32);
        // The client that comes back with the issued key lands where the first request went.
        let again = RequestKeys {
            override_value: None,
            sticky_key: Some(&key),
        };
        assert_eq!(
            choose(&cookie, &[90.0, 10.0], Evidence::default(), again, &mut rng).arm,
            d.arm
        );

        let header = rollout(r#","sticky":{"source":"header","name":"x-user"}"#);
        let d = choose(
            &header,
            &[90.0, 10.0],
            Evidence::default(),
            RequestKeys::default(),
            &mut rng,
        );
        assert_eq!((d.reason, d.new_sticky_key), (Reason::Weighted, None));
    }

    #[test]
    fn bandit_strategy_decides_from_counts_after_override_and_sticky() {
        let json = r#"{"rollout":"b","arms":[{"name":"v1","weight":1},{"name":"v2","weight":1}],
            "strategy":"bandit","bandit":{"policy":"epsilon_greedy","epsilon":0}}"#;
        let r = Rollout::from_json(json.as_bytes()).unwrap();
        let counts = [
            ArmCounts {
                trials: 100,
                reward_micros: 10_000_000,
            },
            ArmCounts {
                trials: 100,
                reward_micros: 90_000_000,
            },
        ];
        let mut rng = Rng::with_seed(9);
        let d = choose(
            &r,
            &[1.0, 1.0],
            Evidence::cumulative(&counts),
            RequestKeys::default(),
            &mut rng,
        );
        assert_eq!((d.arm, d.reason), (1, Reason::Bandit));
        // The bandit never revives a rolled-back arm.
        let d = choose(
            &r,
            &[1.0, 0.0],
            Evidence::cumulative(&counts),
            RequestKeys::default(),
            &mut rng,
        );
        assert_eq!((d.arm, d.reason), (0, Reason::Bandit));
    }

    #[test]
    fn all_zero_live_weights_fail_open_to_baseline() {
        let r = rollout(r#","baseline":"v2""#);
        let mut rng = Rng::with_seed(4);
        let d = choose(
            &r,
            &[0.0, 0.0],
            Evidence::default(),
            RequestKeys::default(),
            &mut rng,
        );
        assert_eq!((d.arm, d.reason), (1, Reason::Baseline));
        assert_eq!(weighted_pick(&[f64::NAN, 0.0], &mut rng), None);
        assert_eq!(weighted_pick(&[], &mut rng), None);
    }

    /// Exact binomial bounds: with n = 100000 and p = 0.1, the count of arm 1 has sd = 94.9; 5 sd
    /// (|z| > 5 has probability 5.7e-7, standard normal table) bounds it at 10000 +- 475.
    #[test]
    fn weighted_pick_follows_weights() {
        let mut rng = Rng::with_seed(5);
        let n = 100_000;
        let hits = (0..n)
            .filter(|_| weighted_pick(&[90.0, 10.0], &mut rng) == Some(1))
            .count();
        assert!((9_525..=10_475).contains(&hits), "{hits}");
        assert!((0..1000).all(|_| weighted_pick(&[0.0, 3.0, 0.0], &mut rng) == Some(1)));
    }
}
