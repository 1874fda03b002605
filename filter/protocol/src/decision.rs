//! The decision id a filter puts in its decision header and the application posts back with
//! its feedback: `<arm>.<16 hex digits>`. Written by the filter, parsed by the controller. The
//! top 6 bits of the number are the request's analysis bucket (the user's, when assignment is
//! sticky), so a posted reward lands in the bucket its request was counted in.

use crate::names::check_name;

/// The analysis bucket a decision number carries (its top 6 bits).
pub fn bucket_of(id: u64) -> usize {
    (id >> 58) as usize
}

/// `random` with its top 6 bits replaced by `bucket` (taken modulo 64).
pub fn with_bucket(random: u64, bucket: usize) -> u64 {
    (random & (u64::MAX >> 6)) | (((bucket as u64) & 63) << 58)
}

/// What ends the id of a decision of an A/B test's pre-period: the id names the arm the
/// experiment will give the user while the baseline served the request, and its feedback is
/// that arm's covariate (CUPED), not a reward of the arm. A suffix rather than a bit of the
/// number, whose bits older filters fill at random.
pub const PRE_PERIOD_SUFFIX: &str = ".pre";

/// The id without its pre-period suffix, and whether it had one.
pub fn split_pre_period(text: &str) -> (&str, bool) {
    match text.strip_suffix(PRE_PERIOD_SUFFIX) {
        Some(id) => (id, true),
        None => (text, false),
    }
}

/// The id of one routing decision to `arm`.
pub fn format_decision(arm: &str, id: u64) -> String {
    format!("{arm}.{id:016x}")
}

/// The arm and number of a decision id, or why it is not one.
pub fn parse_decision(text: &str) -> Result<(&str, u64), String> {
    let (arm, hex) = text.rsplit_once('.').ok_or_else(|| {
        "must be <arm>.<16 hex digits>, as the decision header gave it".to_owned()
    })?;
    check_name(arm).map_err(|e| format!("arm part: {e}"))?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("must end in '.' and 16 hex digits, as the decision header gave it".to_owned());
    }
    let id = u64::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
    Ok((arm, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_malformed_ones_are_refused() {
        let id = format_decision("v2", 0xab);
        assert_eq!(id, "v2.00000000000000ab");
        assert_eq!(parse_decision(&id), Ok(("v2", 0xab)));
        assert_eq!(
            parse_decision(&format_decision("v1", u64::MAX)),
            Ok(("v1", u64::MAX))
        );
        for bad in [
            "v2",
            "v2.12",
            ".00000000000000ab",
            "v 2.00000000000000ab",
            "v2.0000000000000zab",
        ] {
            assert!(parse_decision(bad).is_err(), "{bad}");
        }
        assert!(parse_decision(&format!("{}.00000000000000ab", "a".repeat(500))).is_err());
        for bucket in [0, 1, 37, 63] {
            let id = with_bucket(u64::MAX, bucket);
            assert_eq!(bucket_of(id), bucket);
            assert_eq!(id & (u64::MAX >> 6), u64::MAX >> 6, "the rest is kept");
        }
        assert_eq!(bucket_of(with_bucket(0, 64 + 5)), 5);
        let pre = format!("{}{PRE_PERIOD_SUFFIX}", format_decision("v2", 0xab));
        assert_eq!(split_pre_period(&pre), ("v2.00000000000000ab", true));
        assert_eq!(
            split_pre_period("v2.00000000000000ab"),
            ("v2.00000000000000ab", false)
        );
        assert!(
            parse_decision(&pre).is_err(),
            "the suffix is split off first"
        );
    }
}
