//! What an Envoy reports to the controller: per arm, cumulative request counts, responses by class
//! and a latency histogram, summed over all its workers in shared data. The same counts, taken
//! once per request, feed Envoy's own counters (see `metrics::Tally`). Cumulative totals with an
//! instance id and a sequence number mean a lost report is made up by the next one and a repeated
//! one changes nothing.

use crate::counters::ArmCounts;
use crate::shadow::TOTAL_NAMES;
use crate::stream::StreamCounts;

pub use ramp_protocol::report::LATENCY_BOUNDS_US;
use ramp_protocol::report::{bound_ms_text, BUCKETS};
const LATENCY_SLOTS: usize = LATENCY_BOUNDS_US.len() + 1;
const LOCAL_REPLY_SLOT: usize = 5 + LATENCY_SLOTS;
const BUCKET_REQUESTS: usize = LOCAL_REPLY_SLOT + 1;
const BUCKET_ERRORS: usize = BUCKET_REQUESTS + BUCKETS;
const PRE_REQUESTS: usize = BUCKET_ERRORS + BUCKETS;
const PRE_ERRORS: usize = PRE_REQUESTS + BUCKETS;
const SLOTS: usize = PRE_ERRORS + BUCKETS;

/// One arm's counts: requests, responses by class (2xx..5xx), latency buckets (not cumulative),
/// Envoy's own replies, requests and 5xx per analysis bucket, and the same in an A/B test's
/// pre-period for the users the experiment will give this arm.
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
    /// A request, in analysis bucket `bucket` when it has one (sticky rollouts).
    pub fn add_request(&mut self, bucket: Option<usize>) {
        self.slots[0] += 1;
        if let Some(c) = bucket.and_then(|b| self.slots.get_mut(BUCKET_REQUESTS + b % BUCKETS)) {
            *c += 1;
        }
    }

    /// A response of class `class` (0 = 2xx .. 3 = 5xx) after `latency_us`, to a request of
    /// analysis bucket `bucket`.
    pub fn add_response(&mut self, class: usize, latency_us: u64, bucket: Option<usize>) {
        if let Some(c) = self.slots.get_mut(1 + class.min(3)) {
            *c += 1;
        }
        if class >= 3 {
            if let Some(c) = bucket.and_then(|b| self.slots.get_mut(BUCKET_ERRORS + b % BUCKETS)) {
                *c += 1;
            }
        }
        // Bounds are inclusive upper bounds, as Prometheus' `le`.
        let bucket = LATENCY_BOUNDS_US.partition_point(|&b| b < latency_us);
        if let Some(c) = self.slots.get_mut(5 + bucket) {
            *c += 1;
        }
    }

    /// In the pre-period: a request of a user in `bucket` whom the experiment will give this arm
    /// (the baseline served it), and whether it was a 5xx.
    pub fn add_pre_request(&mut self, bucket: usize) {
        if let Some(c) = self.slots.get_mut(PRE_REQUESTS + bucket % BUCKETS) {
            *c += 1;
        }
    }

    pub fn add_pre_error(&mut self, bucket: usize) {
        if let Some(c) = self.slots.get_mut(PRE_ERRORS + bucket % BUCKETS) {
            *c += 1;
        }
    }

    /// The pre-period's requests and 5xx per bucket.
    pub fn pre_buckets(&self) -> (&[u64], &[u64]) {
        (
            &self.slots[PRE_REQUESTS..PRE_ERRORS],
            &self.slots[PRE_ERRORS..SLOTS],
        )
    }

    /// A response Envoy made itself: the model never answered this request.
    pub fn add_local_reply(&mut self) {
        self.slots[LOCAL_REPLY_SLOT] += 1;
    }

    pub fn requests(&self) -> u64 {
        self.slots[0]
    }

    pub fn local_replies(&self) -> u64 {
        self.slots[LOCAL_REPLY_SLOT]
    }

    /// Requests per analysis bucket, then 5xx per bucket.
    pub fn buckets(&self) -> (&[u64], &[u64]) {
        (
            &self.slots[BUCKET_REQUESTS..BUCKET_ERRORS],
            &self.slots[BUCKET_ERRORS..PRE_REQUESTS],
        )
    }

    pub fn responses(&self) -> [u64; 4] {
        [self.slots[1], self.slots[2], self.slots[3], self.slots[4]]
    }

    /// Cumulative bucket counts, as Prometheus lays them out (the last is +Inf).
    pub fn cumulative_latency(&self) -> Vec<u64> {
        cumulative(&self.slots[5..LOCAL_REPLY_SLOT])
    }

    pub fn is_zero(&self) -> bool {
        self.slots.iter().all(|&c| c == 0)
    }

    /// Adds `other`'s counts (saturating: shared data never wraps).
    pub fn add(&mut self, other: &ArmReport) {
        add_slots(&mut self.slots, &other.slots);
    }

    /// The counts in shared data's layout (`add_le_u64s`, `decode`).
    pub fn slots(&self) -> &[u64] {
        &self.slots
    }

    pub fn decode(bytes: &[u8]) -> Option<ArmReport> {
        decode_slots(bytes).map(|slots| ArmReport { slots })
    }
}

/// Running sums of per-bucket counts: a histogram as Prometheus lays it out.
pub(crate) fn cumulative(per_bucket: &[u64]) -> Vec<u64> {
    per_bucket
        .iter()
        .scan(0u64, |acc, &c| {
            *acc = acc.saturating_add(c);
            Some(*acc)
        })
        .collect()
}

/// `acc += add`, slot by slot, saturating (shared data never wraps).
pub(crate) fn add_slots(acc: &mut [u64], add: &[u64]) {
    for (a, b) in acc.iter_mut().zip(add) {
        *a = a.saturating_add(*b);
    }
}

/// Counters in shared data's layout (little-endian u64s), exactly `N` of them or `None`.
pub(crate) fn decode_slots<const N: usize>(bytes: &[u8]) -> Option<[u64; N]> {
    if bytes.len() != N * 8 {
        return None;
    }
    let mut slots = [0u64; N];
    for (slot, chunk) in slots.iter_mut().zip(bytes.chunks_exact(8)) {
        *slot = u64::from_le_bytes(chunk.try_into().ok()?);
    }
    Some(slots)
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

/// The bucket bounds as a report's `le` lists them: `0.1,0.2,..,60000,"+Inf"`.
pub fn le_json() -> String {
    LATENCY_BOUNDS_US
        .iter()
        .map(|&b| bound_ms_text(b))
        .chain(["\"+Inf\"".to_owned()])
        .collect::<Vec<_>>()
        .join(",")
}

/// The report body: `{"instance","seq","arms":{"v1":{"requests","responses":{"2xx",..},
/// "latency_ms":{"le":[0.1,..,60000,"+Inf"],"counts":[cumulative..]}}}}`, the protocol's
/// `Report` (a test reads it back with those serde types and writes it again, to the same JSON). Hand-written JSON: serde's
/// serializer would cost the wasm more than this function.
/// With the bandit on, each arm also carries `"bandit":{"trials","reward_micros"}`: this Envoy's
/// totals, which the controller adds into the other Envoys' live state.
/// With `stream`, each arm also carries `"stream":{"responses","ttft_ms",..}` (`StreamCounts::json`).
/// With shadow compare mode on, `"shadow":{"sent",..}` carries this Envoy's comparison totals,
/// and `shadow_moments` (already JSON, `shadow::moments_json`) the exact prediction sums.
pub fn report_json(
    instance: &str,
    seq: u64,
    arms: &[(&str, ArmReport, Option<ArmCounts>, Option<StreamCounts>)],
    buckets: bool,
    shadow: Option<&[u64]>,
    moments: Option<&str>,
    guard: Option<&str>,
) -> String {
    let join = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let le = le_json();
    let arms: Vec<String> = arms
        .iter()
        .map(|(name, r, bandit, stream)| {
            let stream = stream.map_or(String::new(), |s| format!(",\"stream\":{}", s.json(&le)));
            let [a, b, c, d] = r.responses();
            let counts: Vec<String> = r.cumulative_latency().iter().map(u64::to_string).collect();
            let bandit = bandit.map_or(String::new(), |k| {
                format!(
                    ",\"bandit\":{{\"trials\":{},\"reward_micros\":{}}}",
                    k.trials, k.reward_micros
                )
            });
            let buckets = if buckets {
                let (requests, errors) = r.buckets();
                let (pre_requests, pre_errors) = r.pre_buckets();
                let pre = if pre_requests.iter().any(|&n| n > 0) {
                    format!(
                        ",\"pre_requests\":[{}],\"pre_errors\":[{}]",
                        join(pre_requests),
                        join(pre_errors)
                    )
                } else {
                    String::new()
                };
                format!(
                    ",\"buckets\":{{\"requests\":[{}],\"errors\":[{}]{pre}}}",
                    join(requests),
                    join(errors)
                )
            } else {
                String::new()
            };
            format!(
                "\"{name}\":{{\"requests\":{},\"local_replies\":{},\"responses\":{{\"2xx\":{a},\"3xx\":{b},\"4xx\":{c},\"5xx\":{d}}},\"latency_ms\":{{\"le\":[{le}],\"counts\":[{}]}}{buckets}{bandit}{stream}}}",
                r.requests(),
                r.local_replies(),
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
    let moments = moments.map_or(String::new(), |m| format!(",\"shadow_moments\":{m}"));
    let guard = guard.map_or(String::new(), |g| format!(",\"guard\":{g}"));
    format!(
        "{{\"instance\":\"{instance}\",\"seq\":{seq},\"arms\":{{{}}}{shadow}{moments}{guard}}}",
        arms.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use ramp_protocol::report::{Report, MAX_COUNT};

    #[test]
    fn counts_merge_encode_and_render() {
        let mut a = ArmReport::default();
        a.add_request(Some(0));
        a.add_request(Some(63));
        a.add_response(0, 100, Some(0));
        a.add_response(3, 120_000, Some(63));
        a.add_response(9, 99_999_999, Some(63));
        // Two workers' counts added in shared data, as the filter does on tick.
        let once = add_le_u64s(None, a.slots()).unwrap();
        let b = ArmReport::decode(&add_le_u64s(Some(&once), a.slots()).unwrap()).unwrap();
        assert_eq!(b.requests(), 4);
        assert_eq!(b.responses(), [2, 0, 0, 4]);
        assert_eq!((b.buckets().0[63], b.buckets().1[63]), (2, 4));
        assert_eq!(ArmReport::decode(&once), Some(a));
        assert_eq!(ArmReport::decode(&[0; 7]), None);
        let cum = a.cumulative_latency();
        // 0.1 ms lands in `le 0.1` (inclusive); 120 ms in `le 200` (index 28); 100 s in +Inf.
        assert_eq!(
            (cum[0], cum[27], cum[28], cum[50], cum[51]),
            (1, 1, 2, 2, 3)
        );
    }

    /// The hand-written JSON against the protocol's serde types, both ways: it parses into a
    /// `Report` with the same counts, passes the controller's validation, and serde writes that
    /// `Report` back as the same JSON document.
    #[test]
    fn the_hand_written_report_is_the_protocols_report_both_ways() {
        let mut a = ArmReport::default();
        for (i, us) in [50, 100, 101, 950, 1_000, 59_999_999, 60_000_001]
            .iter()
            .enumerate()
        {
            a.add_request(Some(i * 9));
            a.add_response(i % 4, *us, Some(i * 9));
        }
        let bandit = ArmCounts {
            trials: 9,
            reward_micros: 4_500_000,
        };
        let mut shadow = [0u64; TOTAL_NAMES.len()];
        shadow[0] = 41;
        shadow[1] = 40;
        shadow[14] = 7;
        shadow[15] = 1;
        shadow[16] = 3_500_000;
        let mut moments = crate::shadow::ShadowMoments {
            thresholds: vec![0.01, 0.5],
            beyond: vec![0, 0],
            ..Default::default()
        };
        for (x, y) in [(1.0, 1.5), (-2.25, -2.0), (1e9, -1e9)] {
            moments.add_pair(x, y);
        }
        let mut stream = StreamCounts::default();
        stream.add(&crate::stream::Streamed {
            first_byte_us: 90_000,
            end_us: 900_000,
            tokens: Some((5, 41)),
        });
        let text = report_json(
            "00ab",
            7,
            &[("v1", a, None, None), ("v2", a, Some(bandit), Some(stream))],
            true,
            Some(&shadow),
            Some(&crate::shadow::moments_json(&moments)),
            Some(r#"{"epoch":5,"tripped":["v2"]}"#),
        );
        let parsed: Report = serde_json::from_str(&text).unwrap();
        let guard = parsed.guard.as_ref().unwrap();
        assert_eq!(
            (guard.epoch, guard.tripped.as_slice()),
            (5, &["v2".to_owned()][..])
        );
        assert_eq!(parsed.validate(&["v1", "v2"]), Ok(()));
        let v1 = &parsed.arms["v1"];
        assert_eq!(v1.requests, a.requests());
        assert_eq!(v1.responses["5xx"], a.responses()[3]);
        assert_eq!(v1.latency_ms.counts, a.cumulative_latency());
        assert_eq!(
            v1.latency_ms.counts[..3],
            [2, 3, 3],
            "0.05 and 0.1 ms in le 0.1; 0.101 ms in le 0.2"
        );
        assert_eq!(parsed.arms["v2"].bandit, Some(bandit));
        let st = parsed.arms["v2"].stream.as_ref().unwrap();
        assert_eq!((st.responses, st.completion_tokens), (1, 41));
        assert_eq!(st.tpot_ms.counts, stream.cumulative()[2]);
        assert!(v1.stream.is_none());
        let b = v1.buckets.as_ref().unwrap();
        assert_eq!((b.requests[27], b.errors[27], b.errors[54]), (1, 1, 0));
        assert!(v1.bandit.is_none());
        let totals = parsed.shadow.as_ref().unwrap();
        assert_eq!(
            (
                totals["pairs"],
                totals["labelled_pairs"],
                totals["shadow_refused"]
            ),
            (40, 7, 1)
        );
        assert_eq!(parsed.shadow_moments.as_ref(), Some(&moments));
        let m = &moments;
        assert_eq!(
            (m.n, m.beyond.as_slice(), m.max_abs_diff_micros),
            (3, &[3, 1][..], 2_000_000_000_000_000)
        );
        assert_eq!(
            m.sum_xy.0,
            1_500_000_000_000 + 4_500_000_000_000 - 10i128.pow(30)
        );
        let by_serde = serde_json::to_value(&parsed).unwrap();
        let by_hand: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(by_serde, by_hand);
        assert!(report_json("x", 1, &[], false, None, None, None)
            .parse::<serde_json::Value>()
            .is_ok());
        let no_shadow: Report = serde_json::from_str(&report_json(
            "x",
            1,
            &[("v1", a, None, None)],
            false,
            None,
            None,
            None,
        ))
        .unwrap();
        assert!(no_shadow.shadow.is_none());
        assert!(
            no_shadow.arms["v1"].buckets.is_none(),
            "no buckets unless sticky"
        );
        assert!(a.requests() < MAX_COUNT);
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
