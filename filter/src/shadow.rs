//! Shadow traffic: which requests to copy, which headers the copy carries, and pairing the shadow's
//! answer with the primary's (they finish in either order) into a comparison, a log record and
//! running totals and the exact sums of the predictions. Pure; the worker moves bytes and time in
//! and out.

pub use ramp_protocol::moments::ShadowMoments;
use ramp_protocol::moments::{wide_text, Wide, MAX_MOMENT_VALUE};

use crate::config::Shadow;
use crate::jsonpick::Scalar;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eligibility {
    /// Not sampled, or a method that may not be shadowed.
    No,
    /// Sampled, but the declared body is over the limit: counted as skipped.
    BodyTooLarge,
    Yes,
}

/// `draw` is uniform in [0, 1).
pub fn eligibility(
    s: &Shadow,
    method: &str,
    content_length: Option<usize>,
    draw: f64,
) -> Eligibility {
    if !s.methods.iter().any(|m| m.eq_ignore_ascii_case(method)) || draw >= s.fraction {
        return Eligibility::No;
    }
    if content_length.is_some_and(|n| n > s.max_body_bytes) {
        return Eligibility::BodyTooLarge;
    }
    Eligibility::Yes
}

/// Whether a request header goes onto the copy. Hop-by-hop headers and lengths are the host's
/// business, `x-ramp-*` are ours, and `:authority` is replaced by the shadow's.
pub fn copy_header(name: &str) -> bool {
    const DROP: [&str; 9] = [
        ":authority",
        ":scheme",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-connection",
        "content-length",
    ];
    let lower = name.to_ascii_lowercase();
    !lower.starts_with("x-ramp-") && !DROP.contains(&lower.as_str())
}

/// One side's answer. `status` is `None` when the model gave none (timeout, reset, unreachable),
/// and `failure` then says which.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub status: Option<u32>,
    pub latency_ms: u64,
    pub value: Option<Scalar>,
    pub failure: Option<Failure>,
}

/// Why a copy got no answer from the shadow model itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer within `timeout_ms`.
    Timeout,
    /// No connection: refused, reset before an answer, or no healthy host.
    Refused,
}

impl Failure {
    fn name(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Refused => "refused",
        }
    }
}

/// Envoy's router marks every answer that came from an upstream with this header; its own local
/// replies (504 on timeout, 503 on a failed connection) do not carry it.
pub const UPSTREAM_TIME_HEADER: &str = "x-envoy-upstream-service-time";

/// Tells the shadow model's own answer from Envoy's local reply about it. A callout's `status`
/// (`None`: the stream was reset with no answer), whether the answer came from the upstream
/// (`UPSTREAM_TIME_HEADER` present), and the start of its body. A 5xx that Envoy made itself is
/// a timeout (504, "upstream request timeout") or a failed connection (503, "upstream connect
/// error ...", "no healthy upstream"), not the model's error. `timed_out`: the answer came no
/// sooner than the callout's timeout.
pub fn classify_callout(
    status: Option<u32>,
    from_upstream: bool,
    body: &[u8],
    timed_out: bool,
) -> Option<Failure> {
    let status = match status {
        None if timed_out => return Some(Failure::Timeout),
        None => return Some(Failure::Refused),
        Some(s) => s,
    };
    if from_upstream || status < 500 {
        return None;
    }
    if status == 504 || timed_out || body.starts_with(b"upstream request timeout") {
        Some(Failure::Timeout)
    } else {
        Some(Failure::Refused)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub request_id: String,
    pub primary: Observed,
    pub shadow: Observed,
}

/// A copy ready to send: its headers (pseudo-headers included) and body.
pub type Copy = (Vec<(String, String)>, Vec<u8>);

struct Entry {
    request_id: String,
    request: Option<Copy>,
    body_done: bool,
    primary: Option<Observed>,
    shadow: Option<Observed>,
    opened_ms: u64,
}

/// Copies in flight on one worker, bounded so a slow shadow cannot grow memory without limit. A few
/// dozen entries: a vector scanned linearly is as fast as a map here and much smaller in wasm.
pub struct Book {
    entries: Vec<(u64, Entry)>,
    max: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Book {
    pub fn new(max: usize) -> Self {
        Self {
            entries: Vec::new(),
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn open(
        &mut self,
        id: u64,
        request_id: String,
        headers: Vec<(String, String)>,
        now_ms: u64,
    ) -> Result<(), Full> {
        if self.entries.len() >= self.max {
            return Err(Full);
        }
        self.entries.push((
            id,
            Entry {
                request_id,
                request: Some((headers, Vec::new())),
                body_done: false,
                primary: None,
                shadow: None,
                opened_ms: now_ms,
            },
        ));
        Ok(())
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Entry> {
        self.entries
            .iter_mut()
            .find(|(k, _)| *k == id)
            .map(|(_, e)| e)
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let i = self.entries.iter().position(|(k, _)| *k == id)?;
        Some(self.entries.swap_remove(i).1)
    }

    /// Adds a body chunk; `false` (and the entry is gone) when the body outgrew `limit`.
    pub fn append_body(&mut self, id: u64, chunk: &[u8], limit: usize) -> bool {
        let Some(entry) = self.get_mut(id) else {
            return false;
        };
        if let Some((_, body)) = entry.request.as_mut() {
            if body.len() + chunk.len() > limit {
                self.remove(id);
                return false;
            }
            body.extend_from_slice(chunk);
        }
        true
    }

    /// The request is complete: hands out headers and body for sending (once).
    pub fn take_request(&mut self, id: u64) -> Option<Copy> {
        let entry = self.get_mut(id)?;
        entry.body_done = true;
        entry.request.take()
    }

    pub fn primary_done(&mut self, id: u64, seen: Observed) -> Option<Pair> {
        self.get_mut(id)?.primary = Some(seen);
        self.pair_if_complete(id)
    }

    pub fn shadow_done(&mut self, id: u64, seen: Observed) -> Option<Pair> {
        self.get_mut(id)?.shadow = Some(seen);
        self.pair_if_complete(id)
    }

    /// Forgets a copy that will never be paired (e.g. the client went away before the body ended).
    pub fn abandon(&mut self, id: u64) -> bool {
        let open = self.entries.iter().any(|(k, e)| *k == id && !e.body_done);
        open && self.remove(id).is_some()
    }

    fn pair_if_complete(&mut self, id: u64) -> Option<Pair> {
        let e = self.get_mut(id)?;
        if e.primary.is_none() || e.shadow.is_none() {
            return None;
        }
        let e = self.remove(id)?;
        Some(Pair {
            request_id: e.request_id,
            primary: e.primary?,
            shadow: e.shadow?,
        })
    }

    /// Drops entries older than `max_age_ms`; returns how many.
    pub fn expire(&mut self, now_ms: u64, max_age_ms: u64) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|(_, e)| now_ms.saturating_sub(e.opened_ms) <= max_age_ms);
        before - self.entries.len()
    }
}

/// What one pair says.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub status_agree: bool,
    /// Shadow minus primary.
    pub latency_diff_ms: i64,
    /// Shadow minus primary, when both values are numbers.
    pub value_diff: Option<f64>,
    /// Whether the values are equal as labels, when both exist.
    pub label_agree: Option<bool>,
}

pub fn compare(p: &Pair) -> Comparison {
    let (a, b) = (&p.primary.value, &p.shadow.value);
    let value_diff = match (a, b) {
        (Some(Scalar::Number(x)), Some(Scalar::Number(y))) => Some(y - x),
        _ => None,
    };
    Comparison {
        status_agree: p.primary.status.is_some() && p.primary.status == p.shadow.status,
        latency_diff_ms: p.shadow.latency_ms as i64 - p.primary.latency_ms as i64,
        value_diff,
        label_agree: match (a, b) {
            (Some(x), Some(y)) => Some(x.label() == y.label()),
            _ => None,
        },
    }
}

/// Running totals, exported as counters. Differences are summed in millionths, as integers, so
/// the mean and variance of the paired differences can be computed exactly downstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub sent: u64,
    pub pairs: u64,
    pub status_agree: u64,
    pub value_pairs: u64,
    pub label_agree: u64,
    pub diff_pos_micros: u64,
    pub diff_neg_micros: u64,
    pub diff_sq_micros: u64,
    pub shadow_errors: u64,
    pub shadow_timeouts: u64,
    pub skipped_body: u64,
    pub dropped: u64,
    pub unpaired: u64,
    pub mirrored: u64,
    /// Pairs where both answers had a value at the JSON pointer: the denominator of `label_agree`.
    pub labelled_pairs: u64,
    /// Copies that reached no shadow model (refused, reset, no healthy host).
    pub shadow_refused: u64,
    /// Sums over numeric pairs of the primary's prediction x and the shadow's y, in millionths
    /// (signed sums split by sign, as Envoy's counters only grow): Prometheus' view of the
    /// correlation. The exact sums for the controller are [`ShadowMoments`].
    pub sum_x_pos_micros: u64,
    pub sum_x_neg_micros: u64,
    pub sum_y_pos_micros: u64,
    pub sum_y_neg_micros: u64,
    pub sum_xx_micros: u64,
    pub sum_yy_micros: u64,
    pub sum_xy_pos_micros: u64,
    pub sum_xy_neg_micros: u64,
}

/// A pair's predictions as numbers within the range the sums take (see `ramp_protocol::moments`).
pub fn numeric_pair(p: &Pair) -> Option<(f64, f64)> {
    match (&p.primary.value, &p.shadow.value) {
        (Some(Scalar::Number(x)), Some(Scalar::Number(y)))
            if x.abs() <= MAX_MOMENT_VALUE && y.abs() <= MAX_MOMENT_VALUE =>
        {
            Some((*x, *y))
        }
        _ => None,
    }
}

/// The sums in shared data: n, the five sums as (low, high) words, the maximum, then one count
/// per threshold; little-endian u64s.
pub fn encode_moments(m: &ShadowMoments) -> Vec<u8> {
    let mut words = vec![m.n];
    for w in [m.sum_x, m.sum_y, m.sum_xx, m.sum_yy, m.sum_xy] {
        words.push(w.0 as u64);
        words.push((w.0 >> 64) as u64);
    }
    words.push(m.max_abs_diff_micros);
    words.extend_from_slice(&m.beyond);
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The sums as `encode_moments` wrote them, for a config with `thresholds`; `None` for another
/// layout (never merge into bytes that are not ours).
pub fn decode_moments(bytes: &[u8], thresholds: &[f64]) -> Option<ShadowMoments> {
    let words = crate::report::decode_le_u64s(bytes);
    if bytes.len() != (12 + thresholds.len()) * 8 {
        return None;
    }
    let wide = |i: usize| {
        Wide((words[i] as i128 & 0xFFFF_FFFF_FFFF_FFFF) | ((words[i + 1] as i128) << 64))
    };
    Some(ShadowMoments {
        n: words[0],
        sum_x: wide(1),
        sum_y: wide(3),
        sum_xx: wide(5),
        sum_yy: wide(7),
        sum_xy: wide(9),
        max_abs_diff_micros: words[11],
        thresholds: thresholds.to_vec(),
        beyond: words[12..].to_vec(),
    })
}

/// The report's `"shadow_moments"` object, hand-written as the rest of the report.
pub fn moments_json(m: &ShadowMoments) -> String {
    let list = |v: Vec<String>| v.join(",");
    format!(
        "{{\"n\":{},\"sum_x\":\"{}\",\"sum_y\":\"{}\",\"sum_xx\":\"{}\",\"sum_yy\":\"{}\",\"sum_xy\":\"{}\",\"max_abs_diff_micros\":{},\"thresholds\":[{}],\"beyond\":[{}]}}",
        m.n,
        wide_text(m.sum_x.0),
        wide_text(m.sum_y.0),
        wide_text(m.sum_xx.0),
        wide_text(m.sum_yy.0),
        wide_text(m.sum_xy.0),
        m.max_abs_diff_micros,
        list(m.thresholds.iter().map(|t| format!("{t}")).collect()),
        list(m.beyond.iter().map(u64::to_string).collect()),
    )
}

/// Stat names, in the order of [`Totals::values`] (the wire protocol's report keys).
pub use ramp_protocol::report::SHADOW_TOTAL_NAMES as TOTAL_NAMES;

impl Totals {
    pub fn add(&mut self, p: &Pair, c: &Comparison) {
        self.pairs += 1;
        self.status_agree += u64::from(c.status_agree);
        match (p.shadow.failure, p.shadow.status) {
            (Some(Failure::Timeout), _) => self.shadow_timeouts += 1,
            (Some(Failure::Refused), _) | (None, None) => self.shadow_refused += 1,
            (None, Some(s)) if s >= 500 => self.shadow_errors += 1,
            _ => {}
        }
        if let Some(agree) = c.label_agree {
            self.labelled_pairs += 1;
            self.label_agree += u64::from(agree);
        }
        if let Some(d) = c.value_diff.filter(|d| d.is_finite()) {
            self.value_pairs += 1;
            let micros = (d.abs() * 1e6).round() as u64;
            if d >= 0.0 {
                self.diff_pos_micros += micros;
            } else {
                self.diff_neg_micros += micros;
            }
            self.diff_sq_micros += (d * d * 1e6).round() as u64;
        }
        if let Some((x, y)) = numeric_pair(p) {
            let split = |v: f64, pos: &mut u64, neg: &mut u64| {
                let micros = (v.abs() * 1e6).round() as u64;
                if v >= 0.0 {
                    *pos = pos.saturating_add(micros);
                } else {
                    *neg = neg.saturating_add(micros);
                }
            };
            split(x, &mut self.sum_x_pos_micros, &mut self.sum_x_neg_micros);
            split(y, &mut self.sum_y_pos_micros, &mut self.sum_y_neg_micros);
            split(
                x * y,
                &mut self.sum_xy_pos_micros,
                &mut self.sum_xy_neg_micros,
            );
            let sq = |v: f64| (v * v * 1e6).round() as u64;
            self.sum_xx_micros = self.sum_xx_micros.saturating_add(sq(x));
            self.sum_yy_micros = self.sum_yy_micros.saturating_add(sq(y));
        }
    }

    pub fn values(&self) -> [u64; TOTAL_NAMES.len()] {
        [
            self.sent,
            self.pairs,
            self.status_agree,
            self.value_pairs,
            self.label_agree,
            self.diff_pos_micros,
            self.diff_neg_micros,
            self.diff_sq_micros,
            self.shadow_errors,
            self.shadow_timeouts,
            self.skipped_body,
            self.dropped,
            self.unpaired,
            self.mirrored,
            self.labelled_pairs,
            self.shadow_refused,
            self.sum_x_pos_micros,
            self.sum_x_neg_micros,
            self.sum_y_pos_micros,
            self.sum_y_neg_micros,
            self.sum_xx_micros,
            self.sum_yy_micros,
            self.sum_xy_pos_micros,
            self.sum_xy_neg_micros,
        ]
    }

    /// Zeroes the fields whose counts were handed to the host.
    pub fn take(&mut self) -> [u64; TOTAL_NAMES.len()] {
        std::mem::take(self).values()
    }
}

/// One structured log line per pair, JSON after a fixed prefix, for offline analysis.
pub fn record_line(rollout: &str, p: &Pair, c: &Comparison) -> String {
    let num = |v: &Option<Scalar>| match v {
        Some(Scalar::Number(n)) if n.is_finite() => format!("{n}"),
        Some(Scalar::Text(t)) => json_string(t),
        Some(Scalar::Bool(b)) => b.to_string(),
        _ => "null".to_owned(),
    };
    let status = |s: Option<u32>| s.map_or("null".to_owned(), |s| s.to_string());
    let failure = p
        .shadow
        .failure
        .map_or("null".to_owned(), |f| format!("\"{}\"", f.name()));
    format!(
        "ramp-shadow {{\"rollout\":{},\"request_id\":{},\"primary\":{{\"status\":{},\"latency_ms\":{},\"value\":{}}},\"shadow\":{{\"status\":{},\"latency_ms\":{},\"value\":{},\"failure\":{}}},\"status_agree\":{},\"value_diff\":{}}}",
        json_string(rollout),
        json_string(&p.request_id),
        status(p.primary.status),
        p.primary.latency_ms,
        num(&p.primary.value),
        status(p.shadow.status),
        p.shadow.latency_ms,
        num(&p.shadow.value),
        failure,
        c.status_agree,
        c.value_diff.filter(|d| d.is_finite()).map_or("null".to_owned(), |d| format!("{d}")),
    )
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rollout;

    fn shadow(extra: &str) -> Shadow {
        let json = format!(
            r#"{{"rollout":"s","arms":[{{"name":"a","weight":1}}],"shadow":{{"cluster":"m"{extra}}}}}"#
        );
        Rollout::from_json(json.as_bytes()).unwrap().shadow.unwrap()
    }

    fn seen(status: Option<u32>, ms: u64, v: f64) -> Observed {
        Observed {
            status,
            latency_ms: ms,
            value: Some(Scalar::Number(v)),
            failure: None,
        }
    }

    #[test]
    fn eligibility_by_method_sample_and_size() {
        let s = shadow(r#","percent":10,"methods":["POST"],"max_body_bytes":100"#);
        assert_eq!(eligibility(&s, "GET", None, 0.0), Eligibility::No);
        assert_eq!(eligibility(&s, "post", Some(10), 0.05), Eligibility::Yes);
        assert_eq!(eligibility(&s, "POST", Some(10), 0.10), Eligibility::No);
        assert_eq!(
            eligibility(&s, "POST", Some(101), 0.0),
            Eligibility::BodyTooLarge
        );
        assert!(
            copy_header(":path")
                && copy_header("content-type")
                && !copy_header("X-Ramp-Arm")
                && !copy_header(":authority")
        );
    }

    #[test]
    fn pairs_complete_in_either_order_and_the_book_is_bounded() {
        let mut b = Book::new(2);
        b.open(1, "r1".into(), vec![], 0).unwrap();
        b.open(2, "r2".into(), vec![], 0).unwrap();
        assert_eq!(b.open(3, "r3".into(), vec![], 0), Err(Full));
        assert!(b.append_body(1, b"abc", 5));
        assert!(!b.append_body(2, b"abcdef", 5), "over the limit: dropped");
        assert_eq!(b.len(), 1);
        assert_eq!(b.take_request(1), Some((vec![], b"abc".to_vec())));
        assert_eq!(b.take_request(1), None, "sent once");
        assert!(b.shadow_done(1, seen(Some(200), 9, 1.5)).is_none());
        let pair = b.primary_done(1, seen(Some(200), 4, 1.0)).unwrap();
        assert_eq!(pair.request_id, "r1");
        assert!(b.is_empty());
        b.open(4, "r4".into(), vec![], 0).unwrap();
        assert!(b.primary_done(4, seen(Some(200), 4, 1.0)).is_none());
        assert_eq!(b.expire(10_000, 5_000), 1);
    }

    #[test]
    fn comparison_and_totals() {
        let pair = Pair {
            request_id: "x\"y".into(),
            primary: seen(Some(200), 10, 0.5),
            shadow: seen(Some(200), 14, 0.75),
        };
        let c = compare(&pair);
        assert_eq!(
            c,
            Comparison {
                status_agree: true,
                latency_diff_ms: 4,
                value_diff: Some(0.25),
                label_agree: Some(false)
            }
        );
        let mut t = Totals::default();
        t.add(&pair, &c);
        let down = Pair {
            request_id: "z".into(),
            primary: seen(Some(200), 10, 2.0),
            shadow: Observed {
                status: None,
                latency_ms: 1000,
                value: None,
                failure: Some(Failure::Timeout),
            },
        };
        t.add(&down, &compare(&down));
        let mut refused = down.clone();
        refused.shadow.failure = Some(Failure::Refused);
        t.add(&refused, &compare(&refused));
        let mut erring = down.clone();
        (erring.shadow.failure, erring.shadow.status) = (None, Some(500));
        t.add(&erring, &compare(&erring));
        assert_eq!((t.pairs, t.status_agree, t.value_pairs), (4, 1, 1));
        assert_eq!(
            (t.shadow_timeouts, t.shadow_refused, t.shadow_errors),
            (1, 1, 1),
            "a timeout, a refused connection and the model's own 500, each counted once"
        );
        assert_eq!((t.diff_pos_micros, t.diff_sq_micros), (250_000, 62_500));
        let line = record_line("r", &pair, &c);
        assert!(
            line.starts_with("ramp-shadow {\"rollout\":\"r\",\"request_id\":\"x\\\"y\""),
            "{line}"
        );
        assert!(
            line.ends_with("\"status_agree\":true,\"value_diff\":0.25}"),
            "{line}"
        );
        assert!(line.contains("\"failure\":null"), "{line}");
        assert!(record_line("r", &down, &compare(&down)).contains("\"failure\":\"timeout\""));
        assert_eq!(t.take()[1], 4);
        assert_eq!(t, Totals::default());
    }

    #[test]
    fn wide_sums_print_as_core_prints_them() {
        for v in [
            0,
            7,
            -7,
            10i128.pow(18),
            -(10i128.pow(30)) - 5,
            i128::MAX,
            i128::MIN + 1,
        ] {
            assert_eq!(wide_text(v), ramp_protocol::moments::wide_text(v));
        }
    }

    #[test]
    fn envoys_local_replies_are_not_the_models_errors() {
        // Bodies as Envoy 1.40's router writes them (source/common/router/router.cc).
        let c = classify_callout;
        assert_eq!(
            c(Some(504), false, b"upstream request timeout", true),
            Some(Failure::Timeout)
        );
        assert_eq!(
            c(Some(504), false, b"upstream request timeout", false),
            Some(Failure::Timeout)
        );
        assert_eq!(
            c(Some(503), false, b"upstream connect error or disconnect/reset before headers. reset reason: connection failure", false),
            Some(Failure::Refused)
        );
        assert_eq!(
            c(Some(503), false, b"no healthy upstream", false),
            Some(Failure::Refused)
        );
        assert_eq!(c(None, false, b"", false), Some(Failure::Refused));
        assert_eq!(c(None, false, b"", true), Some(Failure::Timeout));
        assert_eq!(
            c(Some(500), true, b"boom", false),
            None,
            "the model's own 500"
        );
        assert_eq!(c(Some(504), true, b"", true), None, "the model's own 504");
        assert_eq!(c(Some(200), false, b"ok", true), None);
    }
}
