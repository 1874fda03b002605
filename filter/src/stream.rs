//! Streamed responses, when the config has `stream`: what the request path watches of a response
//! body (its first byte, its end, the tail where an OpenAI-compatible model puts `usage`), the
//! per-arm counts it adds up (the same layout in the tally, in shared data and in the report),
//! and their Envoy stat names. A rollout without `stream` builds none of this and reads no body.

use ramp_protocol::report::{bound_ms_text, LATENCY_BOUNDS_US};

const HIST: usize = LATENCY_BOUNDS_US.len() + 1;
const TTFT: usize = 1;
const DURATION: usize = TTFT + HIST;
const TPOT: usize = DURATION + HIST;
const TOKEN_RESPONSES: usize = TPOT + HIST;
const PROMPT: usize = TOKEN_RESPONSES + 1;
const COMPLETION: usize = PROMPT + 1;
const SLOTS: usize = COMPLETION + 1;

/// How much of a body's end is kept to find its `usage`: the last SSE event (or a JSON body's
/// closing fields) with room for `[DONE]` after it.
pub const TAIL_BYTES: usize = 2048;

/// One arm's streamed responses: their count, three histograms (not cumulative: time to first
/// byte, to end of stream, per output token) and the tokens `usage` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCounts {
    slots: [u64; SLOTS],
}

impl Default for StreamCounts {
    fn default() -> Self {
        Self { slots: [0; SLOTS] }
    }
}

/// A finished stream as the request path measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streamed {
    pub first_byte_us: u64,
    pub end_us: u64,
    /// (prompt, completion) tokens, when the body carried `usage`.
    pub tokens: Option<(u64, u64)>,
}

impl Streamed {
    /// Time per output token after the first, in µs: (end - first byte) / (completion - 1).
    pub fn tpot_us(&self) -> Option<u64> {
        let (_, completion) = self.tokens?;
        (completion >= 2).then(|| self.end_us.saturating_sub(self.first_byte_us) / (completion - 1))
    }
}

fn bucket(us: u64) -> usize {
    // Inclusive upper bounds, as Prometheus' `le` and the latency buckets.
    LATENCY_BOUNDS_US.partition_point(|&b| b < us)
}

impl StreamCounts {
    pub fn add(&mut self, s: &Streamed) {
        self.slots[0] += 1;
        self.slots[TTFT + bucket(s.first_byte_us)] += 1;
        self.slots[DURATION + bucket(s.end_us)] += 1;
        if let Some((prompt, completion)) = s.tokens {
            self.slots[TOKEN_RESPONSES] += 1;
            self.slots[PROMPT] = self.slots[PROMPT].saturating_add(prompt);
            self.slots[COMPLETION] = self.slots[COMPLETION].saturating_add(completion);
        }
        if let Some(t) = s.tpot_us() {
            self.slots[TPOT + bucket(t)] += 1;
        }
    }

    pub fn responses(&self) -> u64 {
        self.slots[0]
    }

    /// (responses with `usage`, prompt tokens, completion tokens).
    pub fn tokens(&self) -> [u64; 3] {
        [
            self.slots[TOKEN_RESPONSES],
            self.slots[PROMPT],
            self.slots[COMPLETION],
        ]
    }

    /// The three histograms, cumulative as Prometheus lays them out (`+Inf` last): time to first
    /// byte, to end of stream, per output token.
    pub fn cumulative(&self) -> [Vec<u64>; 3] {
        [TTFT, DURATION, TPOT].map(|at| crate::report::cumulative(&self.slots[at..at + HIST]))
    }

    pub fn is_zero(&self) -> bool {
        self.slots.iter().all(|&c| c == 0)
    }

    pub fn merge(&mut self, other: &StreamCounts) {
        crate::report::add_slots(&mut self.slots, &other.slots);
    }

    /// The counts in shared data's layout (`report::add_le_u64s`, `decode`).
    pub fn slots(&self) -> &[u64] {
        &self.slots
    }

    pub fn decode(bytes: &[u8]) -> Option<StreamCounts> {
        crate::report::decode_slots(bytes).map(|slots| StreamCounts { slots })
    }

    /// The report's `"stream"` object (`ramp_protocol::stream::StreamReport`).
    pub fn json(&self, le: &str) -> String {
        let join = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let [ttft, duration, tpot] = self.cumulative();
        let [token_responses, prompt, completion] = self.tokens();
        format!(
            "{{\"responses\":{},\"ttft_ms\":{{\"le\":[{le}],\"counts\":[{}]}},\"duration_ms\":{{\"le\":[{le}],\"counts\":[{}]}},\"tpot_ms\":{{\"le\":[{le}],\"counts\":[{}]}},\"token_responses\":{token_responses},\"prompt_tokens\":{prompt},\"completion_tokens\":{completion}}}",
            self.responses(),
            join(&ttft),
            join(&duration),
            join(&tpot),
        )
    }
}

/// A response body being watched: when it started, its first byte, and (with `stream.tokens`)
/// its last [`TAIL_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub arm: usize,
    pub started_us: u64,
    pub first_byte_us: Option<u64>,
    /// `None` unless tokens are read.
    pub tail: Option<Vec<u8>>,
}

impl Watch {
    /// Keeps the last [`TAIL_BYTES`] of the body seen so far.
    pub fn push_tail(&mut self, chunk: &[u8]) {
        let Some(tail) = self.tail.as_mut() else {
            return;
        };
        let chunk = &chunk[chunk.len().saturating_sub(TAIL_BYTES)..];
        let keep = TAIL_BYTES - chunk.len();
        if tail.len() > keep {
            tail.drain(..tail.len() - keep);
        }
        tail.extend_from_slice(chunk);
    }

    /// The stream ended at `now_us`.
    pub fn finish(&self, now_us: u64) -> Streamed {
        let end_us = now_us.saturating_sub(self.started_us);
        Streamed {
            first_byte_us: self
                .first_byte_us
                .map_or(end_us, |f| f.saturating_sub(self.started_us)),
            end_us,
            tokens: self.tail.as_deref().and_then(usage),
        }
    }
}

/// `(prompt_tokens, completion_tokens)` of the last `"usage"` object in `body`: OpenAI's
/// chat and completion answers carry it in the JSON body, and streamed ones in their last
/// `data:` event (with `stream_options.include_usage`). A scan, not a JSON parse: the tail may
/// start mid-event.
pub fn usage(body: &[u8]) -> Option<(u64, u64)> {
    let at = find_last(body, b"\"usage\"")?;
    let rest = &body[at..];
    let end = rest.iter().position(|&b| b == b'}').unwrap_or(rest.len());
    let block = &rest[..end];
    Some((
        number_after(block, b"\"prompt_tokens\"")?,
        number_after(block, b"\"completion_tokens\"")?,
    ))
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

fn number_after(block: &[u8], key: &[u8]) -> Option<u64> {
    let at = block.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = block[at..].iter().skip_while(|b| b.is_ascii_whitespace());
    let mut rest = rest.skip_while(|&&b| b == b':' || b.is_ascii_whitespace());
    let mut n: u64 = 0;
    let mut digits = 0;
    for &b in rest.by_ref() {
        if !b.is_ascii_digit() || digits == 15 {
            break;
        }
        n = n * 10 + u64::from(b - b'0');
        digits += 1;
    }
    (digits > 0).then_some(n)
}

/// Envoy stat names of one arm's streaming metrics: three cumulative histograms as bucket
/// counters (the latency buckets' layout and bounds), then the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatNames {
    /// `ttft_milliseconds_bucket`, `stream_duration_milliseconds_bucket`,
    /// `tpot_milliseconds_bucket`, each `.le_0.1` .. `.le_+Inf`.
    pub buckets: [Vec<String>; 3],
    /// `stream_responses_total`, `token_responses_total`, `prompt_tokens_total`,
    /// `completion_tokens_total`.
    pub counters: [String; 4],
}

pub fn stream_stat_names(rollout: &str, arm: &str) -> StreamStatNames {
    let prefix = format!("ramp.rollout.{rollout}.arm.{arm}");
    let hist = |name: &str| -> Vec<String> {
        LATENCY_BOUNDS_US
            .iter()
            .map(|&b| bound_ms_text(b))
            .chain(["+Inf".to_owned()])
            .map(|le| format!("{prefix}.{name}_milliseconds_bucket.le_{le}"))
            .collect()
    };
    StreamStatNames {
        buckets: [hist("ttft"), hist("stream_duration"), hist("tpot")],
        counters: [
            "stream_responses",
            "token_responses",
            "prompt_tokens",
            "completion_tokens",
        ]
        .map(|n| format!("{prefix}.{n}_total")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_the_last_sse_event_or_a_json_body() {
        let sse = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\": 34,\"total_tokens\":46}}\n\ndata: [DONE]\n\n";
        assert_eq!(usage(sse), Some((12, 34)));
        let json = br#"{"id":"x","choices":[{"message":{"content":"ok"}}],"usage": {"completion_tokens": 7, "prompt_tokens": 3}}"#;
        assert_eq!(usage(json), Some((3, 7)));
        assert_eq!(usage(b"data: {\"usage\":null}"), None);
        assert_eq!(usage(b"no usage here"), None);
        // A usage block cut by the tail's start is not read.
        assert_eq!(usage(b"ompt_tokens\":5,\"completion_tokens\":6}"), None);
    }

    #[test]
    fn the_tail_keeps_the_last_bytes_across_chunks() {
        let mut w = Watch {
            arm: 0,
            started_us: 0,
            first_byte_us: None,
            tail: Some(Vec::new()),
        };
        w.push_tail(&[b'a'; 3000]);
        assert_eq!(w.tail.as_ref().unwrap().len(), TAIL_BYTES);
        w.push_tail(b"xyz");
        let tail = w.tail.as_ref().unwrap();
        assert_eq!(tail.len(), TAIL_BYTES);
        assert!(tail.ends_with(b"axyz"));
    }

    #[test]
    fn a_stream_lands_in_its_buckets_and_tpot_needs_two_tokens() {
        let w = Watch {
            arm: 0,
            started_us: 1_000,
            first_byte_us: Some(151_000),
            tail: Some(br#"{"usage":{"prompt_tokens":4,"completion_tokens":11}}"#.to_vec()),
        };
        let s = w.finish(1_151_000);
        assert_eq!(s.first_byte_us, 150_000);
        assert_eq!(s.end_us, 1_150_000);
        assert_eq!(s.tpot_us(), Some(100_000));
        let mut c = StreamCounts::default();
        c.add(&s);
        c.add(&Streamed {
            first_byte_us: 200,
            end_us: 200,
            tokens: Some((1, 1)),
        });
        let [ttft, duration, tpot] = c.cumulative();
        let at = |ms: u64| {
            LATENCY_BOUNDS_US
                .iter()
                .position(|&b| b == ms * 1000)
                .unwrap()
        };
        assert_eq!((ttft[at(100)], ttft[at(200)], ttft[51]), (1, 2, 2));
        assert_eq!((duration[at(1000)], duration[at(2000)]), (1, 2));
        assert_eq!((tpot[at(90)], tpot[at(100)], tpot[51]), (0, 1, 1));
        assert_eq!(c.tokens(), [2, 5, 12]);
        assert_eq!(
            StreamCounts::decode(&crate::report::add_le_u64s(None, c.slots()).unwrap()),
            Some(c)
        );
        let parsed: ramp_protocol::stream::StreamReport =
            serde_json::from_str(&c.json(&crate::report::le_json())).unwrap();
        assert_eq!(parsed.validate("s", 2), Ok(()));
        assert_eq!(parsed.completion_tokens, 12);
    }

    #[test]
    fn stat_names_follow_the_latency_layout() {
        let n = stream_stat_names("demo", "v1");
        assert_eq!(
            n.buckets[0][0],
            "ramp.rollout.demo.arm.v1.ttft_milliseconds_bucket.le_0.1"
        );
        assert_eq!(
            n.buckets[1][51],
            "ramp.rollout.demo.arm.v1.stream_duration_milliseconds_bucket.le_+Inf"
        );
        assert_eq!(
            n.counters[3],
            "ramp.rollout.demo.arm.v1.completion_tokens_total"
        );
    }
}
