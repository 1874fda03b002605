//! Envoy stat names for the per-arm metrics, and the per-worker tally that feeds them. The names
//! carry the rollout and arm as dotted segments; the `stats_tags` in our Envoy configs turn them
//! into `rollout`, `arm`, `class`, `le` and `threshold` labels. Named as Prometheus expects:
//! counters end in `_total`, units are spelled out (`milliseconds`, `millionths`).

use ramp_protocol::report::bound_ms_text;

use crate::config::Rollout;
use crate::report::{ArmReport, LATENCY_BOUNDS_US};
use crate::stream::{StreamCounts, Streamed};

/// Response classes counted per arm; anything else (1xx, unparsable) is not counted as a response.
pub const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// Stat names of one arm, in the order the glue defines them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmStatNames {
    pub requests: String,
    /// Responses Envoy made itself (the model never answered).
    pub local_replies: String,
    pub responses: [String; 4],
    /// One counter per latency bucket, cumulative (`le`), the report's bounds then `+Inf`:
    /// `latency_milliseconds_bucket.le_0.1` .. `.le_+Inf`. Counters, so a worker adds a tick's
    /// responses in one call per bucket instead of one histogram call per response.
    pub latency_buckets: Vec<String>,
    /// Bandit counters (this worker's trials and reward sum in millionths, added as they reach
    /// shared data) and a gauge: the arm's share of the trials added during the last tick, in
    /// parts per million.
    pub bandit_trials: String,
    pub bandit_reward_millionths: String,
    pub bandit_share_parts_per_million: String,
}

pub fn arm_stat_names(rollout: &str, arm: &str) -> ArmStatNames {
    let prefix = format!("ramp.rollout.{rollout}.arm.{arm}");
    ArmStatNames {
        requests: format!("{prefix}.requests_total"),
        local_replies: format!("{prefix}.local_replies_total"),
        responses: CLASSES.map(|c| format!("{prefix}.responses_total.{c}")),
        latency_buckets: LATENCY_BOUNDS_US
            .iter()
            .map(|&b| bound_ms_text(b))
            .chain(["+Inf".to_owned()])
            .map(|le| format!("{prefix}.latency_milliseconds_bucket.le_{le}"))
            .collect(),
        bandit_trials: format!("{prefix}.bandit_trials_total"),
        bandit_reward_millionths: format!("{prefix}.bandit_reward_millionths_total"),
        bandit_share_parts_per_million: format!("{prefix}.bandit_share_parts_per_million"),
    }
}

pub fn all_arm_stat_names(rollout: &Rollout) -> Vec<ArmStatNames> {
    rollout
        .arms
        .iter()
        .map(|a| arm_stat_names(&rollout.name, &a.name))
        .collect()
}

/// Stat counting the times this Envoy's guard cut an arm off (`ramp_guard_trips_total`).
pub fn guard_trips_stat_name(rollout: &str, arm: &str) -> String {
    format!("ramp.rollout.{rollout}.arm.{arm}.guard_trips_total")
}

/// Stat counting requests that failed open to the baseline because of an internal fault.
pub fn fail_open_stat_name(rollout: &str) -> String {
    format!("ramp.rollout.{rollout}.fail_open_total")
}

/// Stat name of a shadow total (`SHADOW_TOTAL_NAMES`, the report's names): a counter, so
/// `_total`, with `_micros` spelled out as `_millionths`.
pub fn shadow_stat_name(rollout: &str, total: &str) -> String {
    let name = total.replace("_micros", "_millionths");
    format!("ramp.rollout.{rollout}.shadow.{name}_total")
}

/// Stats of the exact prediction sums (compare mode with a JSON pointer): a counter of the pairs
/// whose |difference| is beyond each disagreement threshold, and a gauge of this Envoy's largest.
pub fn beyond_stat_name(rollout: &str, threshold: f64) -> String {
    format!("ramp.rollout.{rollout}.shadow.beyond_total.gt_{threshold}")
}

pub fn max_abs_diff_stat_name(rollout: &str) -> String {
    format!("ramp.rollout.{rollout}.shadow.max_abs_diff_millionths")
}

/// What a worker counted since its last tick, per arm: one tally per request feeds both Envoy's
/// counters and the reports (counted once, flushed twice).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub arms: Vec<ArmReport>,
    pub fail_open: u64,
    /// Per arm with `stream` in the config, else empty.
    pub streams: Vec<StreamCounts>,
}

impl Tally {
    pub fn new(arms: usize) -> Self {
        Self {
            arms: vec![ArmReport::default(); arms],
            fail_open: 0,
            streams: Vec::new(),
        }
    }

    /// A tally that also counts streamed responses.
    pub fn with_streams(arms: usize) -> Self {
        Self {
            streams: vec![StreamCounts::default(); arms],
            ..Self::new(arms)
        }
    }

    pub fn add_stream(&mut self, arm: usize, s: &Streamed) {
        if let Some(c) = self.streams.get_mut(arm) {
            c.add(s);
        }
    }

    pub fn add_request(&mut self, arm: usize, bucket: Option<usize>) {
        if let Some(a) = self.arms.get_mut(arm) {
            a.add_request(bucket);
        }
    }

    pub fn add_response(
        &mut self,
        arm: usize,
        class: usize,
        latency_us: u64,
        bucket: Option<usize>,
    ) {
        if let Some(a) = self.arms.get_mut(arm) {
            a.add_response(class, latency_us, bucket);
        }
    }

    /// A pre-period request in `bucket` of a user the experiment will give `pre_arm`.
    pub fn add_pre_request(&mut self, pre_arm: usize, bucket: usize) {
        if let Some(a) = self.arms.get_mut(pre_arm) {
            a.add_pre_request(bucket);
        }
    }

    pub fn add_pre_error(&mut self, pre_arm: usize, bucket: usize) {
        if let Some(a) = self.arms.get_mut(pre_arm) {
            a.add_pre_error(bucket);
        }
    }

    pub fn add_local_reply(&mut self, arm: usize) {
        if let Some(a) = self.arms.get_mut(arm) {
            a.add_local_reply();
        }
    }

    /// Hands over the counts and starts a new tally.
    pub fn take(&mut self) -> Tally {
        let fresh = Tally {
            streams: vec![StreamCounts::default(); self.streams.len()],
            ..Tally::new(self.arms.len())
        };
        std::mem::replace(self, fresh)
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
        assert_eq!(n.requests, "ramp.rollout.demo.arm.v1.requests_total");
        assert_eq!(
            n.responses[3],
            "ramp.rollout.demo.arm.v1.responses_total.5xx"
        );
        assert_eq!(
            n.latency_buckets[0],
            "ramp.rollout.demo.arm.v1.latency_milliseconds_bucket.le_0.1"
        );
        assert_eq!(
            n.latency_buckets[51],
            "ramp.rollout.demo.arm.v1.latency_milliseconds_bucket.le_+Inf"
        );
        assert_eq!(
            shadow_stat_name("demo", "diff_sq_micros"),
            "ramp.rollout.demo.shadow.diff_sq_millionths_total"
        );
    }

    #[test]
    fn the_tally_ignores_out_of_range_indices_and_starts_over_when_taken() {
        let mut t = Tally::new(1);
        t.add_request(0, Some(1));
        t.add_request(7, None);
        t.add_response(0, 3, 250, Some(1));
        t.add_response(0, 9, 250, None);
        t.add_response(3, 0, 250, Some(1));
        let taken = t.take();
        assert_eq!(taken.arms[0].requests(), 1);
        assert_eq!(taken.arms[0].responses(), [0, 0, 0, 2]);
        assert_eq!(t, Tally::new(1));
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
