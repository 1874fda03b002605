//! What an Envoy reports to the controller: per arm, cumulative request counts, responses by class
//! and a latency histogram, summed over all its workers in shared data. Cumulative totals with an
//! instance id and a sequence number mean a lost report is made up by the next one and a repeated
//! one changes nothing.

use crate::counters::ArmCounts;
use crate::shadow::TOTAL_NAMES;

pub use ramp_protocol::report::LATENCY_BOUNDS_MS;
const SLOTS: usize = 1 + 4 + LATENCY_BOUNDS_MS.len() + 1;

/// One arm's counts: requests, responses by class (2xx..5xx), latency buckets (not cumulative).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArmReport {
    slots: [u64; SLOTS],
}

impl Default for ArmReport {
    fn default() -> Self {
        Self { slots: [0; SLOTS] }
    }
}

impl ArmReport {
    pub fn add_request(&mut self) {
        self.slots[0] += 1;
    }

    /// A response of class `class` (0 = 2xx .. 3 = 5xx) after `latency_ms`.
    pub fn add_response(&mut self, class: usize, latency_ms: u64) {
        if let Some(c) = self.slots.get_mut(1 + class.min(3)) {
            *c += 1;
        }
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|&b| latency_ms <= b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.slots[5 + bucket] += 1;
    }

    pub fn requests(&self) -> u64 {
        self.slots[0]
    }

    pub fn responses(&self) -> [u64; 4] {
        [self.slots[1], self.slots[2], self.slots[3], self.slots[4]]
    }

    /// Cumulative bucket counts, as Prometheus lays them out (the last is +Inf).
    pub fn cumulative_latency(&self) -> Vec<u64> {
        self.slots[5..]
            .iter()
            .scan(0, |acc, &c| {
                *acc += c;
                Some(*acc)
            })
            .collect()
    }

    pub fn is_zero(&self) -> bool {
        self.slots.iter().all(|&c| c == 0)
    }

    /// The counts in shared data's layout (`add_le_u64s`, `decode`).
    pub fn slots(&self) -> &[u64] {
        &self.slots
    }

    pub fn decode(bytes: &[u8]) -> Option<ArmReport> {
        if bytes.len() != SLOTS * 8 {
            return None;
        }
        let mut slots = [0u64; SLOTS];
        for (slot, chunk) in slots.iter_mut().zip(bytes.chunks_exact(8)) {
            *slot = u64::from_le_bytes(chunk.try_into().ok()?);
        }
        Some(ArmReport { slots })
    }
}

/// `stored` (little-endian u64s, or nothing yet) plus `delta`, encoded; `None` when the stored bytes
/// are not an array of `delta`'s length (never overwrite a value that is not ours).
pub fn add_le_u64s(stored: Option<&[u8]>, delta: &[u64]) -> Option<Vec<u8>> {
    let sum = |i: usize, d: u64| -> Option<u64> {
        match stored {
            None | Some([]) => Some(d),
            Some(b) => {
                let chunk = b.get(i * 8..i * 8 + 8)?;
                Some(u64::from_le_bytes(chunk.try_into().ok()?).saturating_add(d))
            }
        }
    };
    if stored.is_some_and(|b| !b.is_empty() && b.len() != delta.len() * 8) {
        return None;
    }
    let mut out = Vec::with_capacity(delta.len() * 8);
    for (i, &d) in delta.iter().enumerate() {
        out.extend_from_slice(&sum(i, d)?.to_le_bytes());
    }
    Some(out)
}

pub fn decode_le_u64s(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| c.try_into().map_or(0, u64::from_le_bytes))
        .collect()
}

pub fn shadow_key(rollout: &str) -> String {
    format!("ramp.ctl.v1.{rollout}.shadow")
}

pub fn counts_key(rollout: &str, arm: &str) -> String {
    format!("ramp.ctl.v1.{rollout}.counts.{arm}")
}

pub fn instance_key(rollout: &str) -> String {
    format!("ramp.ctl.v1.{rollout}.instance")
}

/// The report body: `{"instance","seq","arms":{"v1":{"requests","responses":{"2xx",..},
/// "latency_ms":{"le":[5,..,"+Inf"],"counts":[cumulative..]}}}}`. Hand-written JSON: serde's
/// serializer would cost the wasm more than this function.
/// With the bandit on, each arm also carries `"bandit":{"trials","reward_micros"}`: this Envoy's
/// totals, which the controller adds into the other Envoys' live state.
/// With shadow compare mode on, `"shadow":{"sent",..}` carries this Envoy's comparison totals.
pub fn report_json(
    instance: &str,
    seq: u64,
    arms: &[(&str, ArmReport, Option<ArmCounts>)],
    shadow: Option<&[u64]>,
) -> String {
    let le: Vec<String> = LATENCY_BOUNDS_MS
        .iter()
        .map(u64::to_string)
        .chain(["\"+Inf\"".to_owned()])
        .collect();
    let arms: Vec<String> = arms
        .iter()
        .map(|(name, r, bandit)| {
            let [a, b, c, d] = r.responses();
            let counts: Vec<String> = r.cumulative_latency().iter().map(u64::to_string).collect();
            let bandit = bandit.map_or(String::new(), |k| {
                format!(
                    ",\"bandit\":{{\"trials\":{},\"reward_micros\":{}}}",
                    k.trials, k.reward_micros
                )
            });
            format!(
                "\"{name}\":{{\"requests\":{},\"responses\":{{\"2xx\":{a},\"3xx\":{b},\"4xx\":{c},\"5xx\":{d}}},\"latency_ms\":{{\"le\":[{}],\"counts\":[{}]}}{bandit}}}",
                r.requests(),
                le.join(","),
                counts.join(",")
            )
        })
        .collect();
    let shadow = shadow.map_or(String::new(), |values| {
        let fields: Vec<String> = TOTAL_NAMES
            .iter()
            .zip(values)
            .map(|(name, v)| format!("\"{name}\":{v}"))
            .collect();
        format!(",\"shadow\":{{{}}}", fields.join(","))
    });
    format!(
        "{{\"instance\":\"{instance}\",\"seq\":{seq},\"arms\":{{{}}}{shadow}}}",
        arms.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_encode_and_render() {
        let mut a = ArmReport::default();
        a.add_request();
        a.add_request();
        a.add_response(0, 3);
        a.add_response(3, 120);
        a.add_response(9, 99_999);
        // Two workers' counts added in shared data, as the filter does on tick.
        let once = add_le_u64s(None, a.slots()).unwrap();
        let b = ArmReport::decode(&add_le_u64s(Some(&once), a.slots()).unwrap()).unwrap();
        assert_eq!(b.requests(), 4);
        assert_eq!(b.responses(), [2, 0, 0, 4]);
        assert_eq!(ArmReport::decode(&once), Some(a));
        assert_eq!(ArmReport::decode(&[0; 7]), None);
        let cum = a.cumulative_latency();
        assert_eq!(
            (cum[0], cum[5], cum[11]),
            (1, 2, 3),
            "<=5 ms, <=150 ms, +Inf"
        );
        let bandit = ArmCounts {
            trials: 9,
            reward_micros: 4_500_000,
        };
        let json = report_json("abc", 7, &[("v1", a, None), ("v2", a, Some(bandit))], None);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["arms"]["v1"]["responses"]["5xx"], 2);
        assert_eq!(v["arms"]["v1"]["latency_ms"]["le"][11], "+Inf");
        assert_eq!(v["arms"]["v1"]["latency_ms"]["counts"][11], 3);
        assert!(v["arms"]["v1"].get("bandit").is_none());
        assert_eq!(v["arms"]["v2"]["bandit"]["reward_micros"], 4_500_000);
        assert_eq!(v["arms"]["v2"]["requests"], 2);
        assert!(v.get("shadow").is_none());
        assert_eq!(
            (v["instance"].as_str(), v["seq"].as_u64()),
            (Some("abc"), Some(7))
        );
        let mut values = [0u64; 15];
        values[1] = 40;
        values[14] = 7;
        let with_shadow: serde_json::Value =
            serde_json::from_str(&report_json("abc", 8, &[], Some(&values))).unwrap();
        assert_eq!(
            (
                with_shadow["shadow"]["pairs"].as_u64(),
                with_shadow["shadow"]["labelled_pairs"].as_u64()
            ),
            (Some(40), Some(7))
        );
    }

    #[test]
    fn u64_arrays_add_in_place_and_foreign_bytes_are_left_alone() {
        let first = add_le_u64s(None, &[1, 2, 3]).unwrap();
        let second = add_le_u64s(Some(&first), &[10, 0, u64::MAX]).unwrap();
        assert_eq!(decode_le_u64s(&second), vec![11, 2, u64::MAX]);
        assert_eq!(add_le_u64s(Some(&[1, 2, 3]), &[1]), None);
        assert_eq!(add_le_u64s(Some(&second), &[1, 2]), None, "length differs");
    }
}
