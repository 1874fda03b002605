//! Envoy stat names for the per-arm metrics. The names carry the rollout and arm as dotted segments;
//! the `stats_tags` in our Envoy configs turn them into `rollout`, `arm` and `class` labels.

use crate::config::Rollout;

/// Response classes counted per arm; anything else (1xx, unparsable) is not counted as a response.
pub const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// Stat names of one arm, in the order the glue defines them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmStatNames {
    pub requests: String,
    pub responses: [String; 4],
    pub latency_ms: String,
    /// Bandit gauges, from the shared totals: trials, reward sum in millionths, and the arm's share of
    /// the trials added during the last tick, in parts per million.
    pub bandit_trials: String,
    pub bandit_reward_micros: String,
    pub bandit_share_ppm: String,
}

pub fn arm_stat_names(rollout: &str, arm: &str) -> ArmStatNames {
    let prefix = format!("ramp.rollout.{rollout}.arm.{arm}");
    ArmStatNames {
        requests: format!("{prefix}.requests"),
        responses: CLASSES.map(|c| format!("{prefix}.responses.{c}")),
        latency_ms: format!("{prefix}.latency_ms"),
        bandit_trials: format!("{prefix}.bandit_trials"),
        bandit_reward_micros: format!("{prefix}.bandit_reward_micros"),
        bandit_share_ppm: format!("{prefix}.bandit_share_ppm"),
    }
}

pub fn all_arm_stat_names(rollout: &Rollout) -> Vec<ArmStatNames> {
    rollout
        .arms
        .iter()
        .map(|a| arm_stat_names(&rollout.name, &a.name))
        .collect()
}

/// Stat counting requests that failed open to the baseline because of an internal fault.
pub fn fail_open_stat_name(rollout: &str) -> String {
    format!("ramp.rollout.{rollout}.fail_open")
}

/// Per-arm counts a worker has not yet added to Envoy's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingCounts {
    pub arms: Vec<PendingArm>,
    pub fail_open: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingArm {
    pub requests: u64,
    /// Indexed like [`CLASSES`].
    pub responses: [u64; 4],
}

impl PendingCounts {
    pub fn new(rollout: &Rollout) -> Self {
        Self {
            arms: vec![PendingArm::default(); rollout.arms.len()],
            fail_open: 0,
        }
    }

    pub fn add_request(&mut self, arm: usize) {
        if let Some(a) = self.arms.get_mut(arm) {
            a.requests += 1;
        }
    }

    pub fn add_response(&mut self, arm: usize, class: usize) {
        if let Some(c) = self
            .arms
            .get_mut(arm)
            .and_then(|a| a.responses.get_mut(class))
        {
            *c += 1;
        }
    }
}

/// Index into [`CLASSES`] for an HTTP status.
pub fn class_index(status: u32) -> Option<usize> {
    match status {
        200..=299 => Some(0),
        300..=399 => Some(1),
        400..=499 => Some(2),
        500..=599 => Some(3),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_stats_tags_regexes_layout() {
        let n = arm_stat_names("demo", "v1");
        assert_eq!(n.requests, "ramp.rollout.demo.arm.v1.requests");
        assert_eq!(n.responses[3], "ramp.rollout.demo.arm.v1.responses.5xx");
        assert_eq!(n.latency_ms, "ramp.rollout.demo.arm.v1.latency_ms");
    }

    #[test]
    fn pending_counts_ignore_out_of_range_indices() {
        let r = Rollout::from_json(br#"{"rollout":"t","arms":[{"name":"a","weight":1}]}"#).unwrap();
        let mut p = PendingCounts::new(&r);
        p.add_request(0);
        p.add_request(7);
        p.add_response(0, 3);
        p.add_response(0, 9);
        p.add_response(3, 0);
        assert_eq!(
            p.arms,
            vec![PendingArm {
                requests: 1,
                responses: [0, 0, 0, 1]
            }]
        );
    }

    #[test]
    fn classes() {
        assert_eq!(class_index(200), Some(0));
        assert_eq!(class_index(404), Some(2));
        assert_eq!(class_index(503), Some(3));
        assert_eq!(class_index(101), None);
        assert_eq!(class_index(0), None);
    }
}
