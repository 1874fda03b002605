//! The sums a shadow comparison needs, exact in fixed point: the filter adds each numeric pair of
//! predictions (x from the primary, y from the shadow) as integers in millionths, so sums over
//! workers and Envoys are exact and order-independent, and the controller derives the mean and
//! spread of the differences, Pearson's correlation, the paired t-test and TOST from them.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::report::MAX_COUNT;
use crate::FieldError;

/// Predictions are counted in millionths: x is added as round(x * 10^6); squares and products
/// are of those integers (units of 10^-12), kept in 128 bits.
pub const MOMENT_SCALE: f64 = 1e6;

/// Predictions beyond +-10^9 are not added to the sums (counted in `value_pairs` only), so no sum
/// can overflow: a square is at most 10^30 and i128 holds 1.7 * 10^38.
pub const MAX_MOMENT_VALUE: f64 = 1e9;

/// At most this many disagreement thresholds.
pub const MAX_THRESHOLDS: usize = 4;

/// A 128-bit sum, written as a string (JSON numbers beyond 2^53 are not exact everywhere):
/// decimal while it fits in 64 bits, else a sign, `0x` and 32 hex digits (the filter writes it
/// without 128-bit decimal formatting, which costs kilobytes of wasm).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wide(pub i128);

/// `Wide`'s text form, written as two 64-bit halves: the filter uses it too, and core's 128-bit
/// formatting would cost it kilobytes of wasm.
pub fn wide_text(v: i128) -> String {
    match i64::try_from(v) {
        Ok(small) => small.to_string(),
        Err(_) => {
            let (sign, m) = (if v < 0 { "-" } else { "" }, v.unsigned_abs());
            format!("{sign}0x{:016x}{:016x}", (m >> 64) as u64, m as u64)
        }
    }
}

fn parse_wide(text: &str) -> Option<i128> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let magnitude = match digits.strip_prefix("0x") {
        Some(hex) if hex.len() == 32 => u128::from_str_radix(hex, 16).ok()?,
        Some(_) => return None,
        None if !digits.is_empty()
            && digits.len() <= 19
            && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            digits.parse::<u128>().ok()?
        }
        None => return None,
    };
    let v = i128::try_from(magnitude).ok()?;
    Some(if negative { -v } else { v })
}

impl Serialize for Wide {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&wide_text(self.0))
    }
}

impl<'de> Deserialize<'de> for Wide {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_wide(&text).map(Wide).ok_or_else(|| {
            serde::de::Error::custom(
                "a sum is a string: a decimal integer of at most 19 digits, or 0x and 32 hex digits",
            )
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowMoments {
    /// Pairs added (both predictions numbers within +-10^9).
    pub n: u64,
    pub sum_x: Wide,
    pub sum_y: Wide,
    pub sum_xx: Wide,
    pub sum_yy: Wide,
    pub sum_xy: Wide,
    /// The largest |y - x| seen, in millionths (since the filter started: a maximum cannot be
    /// windowed by subtraction).
    pub max_abs_diff_micros: u64,
    /// The filter's configured disagreement thresholds (absolute differences)...
    pub thresholds: Vec<f64>,
    /// ...and how many pairs differed by more than each.
    pub beyond: Vec<u64>,
}

impl ShadowMoments {
    /// No pairs yet, counting beyond `thresholds`.
    pub fn with_thresholds(thresholds: &[f64]) -> ShadowMoments {
        ShadowMoments {
            thresholds: thresholds.to_vec(),
            beyond: vec![0; thresholds.len()],
            ..ShadowMoments::default()
        }
    }

    /// Adds one pair of predictions (x the primary's, y the shadow's; both within
    /// +-`MAX_MOMENT_VALUE`): x and y as integers in millionths, squares and products of those
    /// integers in 128 bits, the largest |y - x|, and the thresholds |y - x| exceeds.
    pub fn add_pair(&mut self, x: f64, y: f64) {
        // |x| <= 10^9, so x in millionths fits in 64 bits (a 128-bit float cast costs wasm size).
        let (xq, yq) = (
            (x * MOMENT_SCALE).round() as i64 as i128,
            (y * MOMENT_SCALE).round() as i64 as i128,
        );
        self.n += 1;
        self.sum_x.0 += xq;
        self.sum_y.0 += yq;
        self.sum_xx.0 += xq * xq;
        self.sum_yy.0 += yq * yq;
        self.sum_xy.0 += xq * yq;
        let diff = (yq - xq).unsigned_abs() as u64;
        self.max_abs_diff_micros = self.max_abs_diff_micros.max(diff);
        for (t, b) in self.thresholds.iter().zip(self.beyond.iter_mut()) {
            if (y - x).abs() > *t {
                *b += 1;
            }
        }
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        let at = |f: &str| format!("shadow_moments.{f}");
        if self.n > MAX_COUNT {
            return Err(FieldError::new(at("n"), "above 2^53"));
        }
        let n = self.n as i128;
        let value_bound = n * (MAX_MOMENT_VALUE * MOMENT_SCALE) as i128;
        let square_bound = value_bound.saturating_mul((MAX_MOMENT_VALUE * MOMENT_SCALE) as i128);
        for (name, v) in [("sum_x", self.sum_x), ("sum_y", self.sum_y)] {
            if v.0.abs() > value_bound {
                return Err(FieldError::new(
                    at(name),
                    "larger than n predictions of 10^9 can add up to",
                ));
            }
        }
        for (name, v) in [("sum_xx", self.sum_xx), ("sum_yy", self.sum_yy)] {
            if !(0..=square_bound).contains(&v.0) {
                return Err(FieldError::new(
                    at(name),
                    "a sum of squares is >= 0 and at most n * 10^30",
                ));
            }
        }
        // Cauchy-Schwarz: (sum xy)^2 <= sum xx * sum yy (compared in f64: a consistency check).
        let (xy, xx, yy) = (
            self.sum_xy.0 as f64,
            self.sum_xx.0 as f64,
            self.sum_yy.0 as f64,
        );
        if xy * xy > xx * yy * (1.0 + 1e-9) {
            return Err(FieldError::new(
                at("sum_xy"),
                "(sum_xy)^2 exceeds sum_xx * sum_yy",
            ));
        }
        if self.thresholds.len() > MAX_THRESHOLDS || self.beyond.len() != self.thresholds.len() {
            return Err(FieldError::new(
                at("beyond"),
                format!("one count per threshold, at most {MAX_THRESHOLDS}"),
            ));
        }
        if self
            .thresholds
            .iter()
            .any(|t| !(t.is_finite() && *t >= 0.0))
        {
            return Err(FieldError::new(at("thresholds"), "finite and >= 0"));
        }
        if self.beyond.iter().any(|&b| b > self.n) {
            return Err(FieldError::new(
                at("beyond"),
                "more pairs beyond a threshold than pairs",
            ));
        }
        Ok(())
    }

    /// `self` (now) minus `earlier` (a window's start); the maximum stays cumulative. `None` when
    /// the counts went down (a restarted source) or the thresholds changed.
    pub fn since(&self, earlier: &ShadowMoments) -> Option<ShadowMoments> {
        if earlier.n > self.n || earlier.thresholds != self.thresholds && earlier.n > 0 {
            return None;
        }
        let sub = |a: Wide, b: Wide| Wide(a.0 - b.0);
        Some(ShadowMoments {
            n: self.n - earlier.n,
            sum_x: sub(self.sum_x, earlier.sum_x),
            sum_y: sub(self.sum_y, earlier.sum_y),
            sum_xx: sub(self.sum_xx, earlier.sum_xx),
            sum_yy: sub(self.sum_yy, earlier.sum_yy),
            sum_xy: sub(self.sum_xy, earlier.sum_xy),
            max_abs_diff_micros: self.max_abs_diff_micros,
            thresholds: self.thresholds.clone(),
            beyond: self
                .beyond
                .iter()
                .enumerate()
                .map(|(i, &b)| b.saturating_sub(earlier.beyond.get(i).copied().unwrap_or(0)))
                .collect(),
        })
    }

    /// Adds another Envoy's sums (saturating counts; sums are bounded by validation).
    pub fn add(&mut self, other: &ShadowMoments) {
        if self.n == 0 && self.thresholds.is_empty() {
            *self = ShadowMoments::with_thresholds(&other.thresholds);
        }
        self.n = self.n.saturating_add(other.n);
        for (a, b) in [
            (&mut self.sum_x, other.sum_x),
            (&mut self.sum_y, other.sum_y),
            (&mut self.sum_xx, other.sum_xx),
            (&mut self.sum_yy, other.sum_yy),
            (&mut self.sum_xy, other.sum_xy),
        ] {
            a.0 = a.0.saturating_add(b.0);
        }
        self.max_abs_diff_micros = self.max_abs_diff_micros.max(other.max_abs_diff_micros);
        if self.thresholds == other.thresholds {
            for (a, b) in self.beyond.iter_mut().zip(&other.beyond) {
                *a = a.saturating_add(*b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ShadowMoments {
        ShadowMoments {
            n: 3,
            sum_x: Wide(6_000_000),
            sum_y: Wide(6_300_000),
            sum_xx: Wide(14_000_000_000_000),
            sum_yy: Wide(15_435_000_000_000),
            sum_xy: Wide(14_700_000_000_000),
            max_abs_diff_micros: 150_000,
            thresholds: vec![0.1],
            beyond: vec![1],
        }
    }

    #[test]
    fn round_trips_with_wide_sums_as_strings() {
        let mut m = sample();
        m.sum_xx = Wide(10i128.pow(30));
        m.sum_yy = Wide(10i128.pow(30));
        m.n = 2;
        let text = serde_json::to_string(&m).unwrap();
        assert!(
            text.contains("\"sum_xx\":\"0x0000000c9f2c9cd04674edea40000000\""),
            "10^30 in hex: {text}"
        );
        assert_eq!(serde_json::from_str::<ShadowMoments>(&text).unwrap(), m);
        for v in [
            0,
            -5,
            i64::MAX as i128,
            i64::MAX as i128 + 1,
            -(10i128.pow(30)),
            i128::MAX,
        ] {
            let w: Wide = serde_json::from_str(&serde_json::to_string(&Wide(v)).unwrap()).unwrap();
            assert_eq!(w, Wide(v));
        }
        assert!(
            serde_json::from_str::<Wide>("12").is_err(),
            "a number, not a string"
        );
        for bad in [
            "\"1e5\"",
            "\"\"",
            "\"-\"",
            "\"0x12\"",
            "\"+5\"",
            "\"99999999999999999999\"",
        ] {
            assert!(serde_json::from_str::<Wide>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inconsistent_sums_are_refused_by_name() {
        assert_eq!(sample().validate(), Ok(()));
        let field = |edit: fn(&mut ShadowMoments)| {
            let mut m = sample();
            edit(&mut m);
            m.validate().unwrap_err().field
        };
        assert_eq!(field(|m| m.sum_xx = Wide(-1)), "shadow_moments.sum_xx");
        assert_eq!(field(|m| m.sum_x = Wide(i128::MAX)), "shadow_moments.sum_x");
        assert_eq!(
            field(|m| m.sum_xy = Wide(10i128.pow(20))),
            "shadow_moments.sum_xy"
        );
        assert_eq!(field(|m| m.beyond = vec![9]), "shadow_moments.beyond");
        assert_eq!(field(|m| m.beyond = vec![]), "shadow_moments.beyond");
        assert_eq!(
            field(|m| m.thresholds = vec![f64::NAN]),
            "shadow_moments.thresholds"
        );
        assert_eq!(field(|m| m.n = u64::MAX), "shadow_moments.n");
    }

    #[test]
    fn windows_subtract_and_envoys_add() {
        let a = sample();
        let mut total = ShadowMoments::default();
        total.add(&a);
        total.add(&a);
        assert_eq!(
            (total.n, total.sum_xy, total.beyond.clone()),
            (6, Wide(29_400_000_000_000), vec![2])
        );
        let window = total.since(&a).unwrap();
        assert_eq!(
            window,
            ShadowMoments {
                max_abs_diff_micros: 150_000,
                ..a.clone()
            }
        );
        assert!(a.since(&total).is_none(), "a restarted source");
    }
}
