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
}

pub fn arm_stat_names(rollout: &str, arm: &str) -> ArmStatNames {
    let prefix = format!("ramp.rollout.{rollout}.arm.{arm}");
    ArmStatNames {
        requests: format!("{prefix}.requests"),
        responses: CLASSES.map(|c| format!("{prefix}.responses.{c}")),
        latency_ms: format!("{prefix}.latency_ms"),
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
    fn classes() {
        assert_eq!(class_index(200), Some(0));
        assert_eq!(class_index(404), Some(2));
        assert_eq!(class_index(503), Some(3));
        assert_eq!(class_index(101), None);
        assert_eq!(class_index(0), None);
    }
}
