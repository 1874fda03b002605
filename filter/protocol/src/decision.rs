//! The decision id a filter puts in its decision header and the application posts back with
//! its feedback: `<arm>.<16 hex digits>`. Written by the filter, parsed by the controller.

use crate::names::check_name;

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
    }
}
