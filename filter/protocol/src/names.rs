//! Rollout and arm names become parts of Envoy stat names, URL paths and header values, so both
//! the filter's config and the controller's spec accept only plain ones, by this one rule.

/// Arms per rollout, in the filter's config and the controller's spec alike: bounds the stats and
/// the shared-data key set.
pub const MAX_ARMS: usize = 16;

/// Longest name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// `Ok` for 1 to 64 ASCII letters, digits, `-` and `_`; otherwise why not.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("must be at most {MAX_NAME_LEN} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "{name:?} may only contain ASCII letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

/// Instance ids (an Envoy's, in its reports): like names, plus `.` and `:` (host:port ids).
pub fn check_instance(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_NAME_LEN {
        return Err(format!("must be 1 to {MAX_NAME_LEN} characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return Err("may only contain ASCII letters, digits, '-', '_', '.' and ':'".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_and_everything_else_says_why() {
        assert!(check_name("fraud-model_v2").is_ok());
        assert!(check_name(&"a".repeat(64)).is_ok());
        assert_eq!(check_name(""), Err("must not be empty".to_owned()));
        assert!(check_name(&"a".repeat(65)).unwrap_err().contains("64"));
        for bad in ["a b", "a/b", "é", "a.b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_instance("0123456789abcdef").is_ok());
        assert!(check_instance("10.0.0.1:15000").is_ok());
        assert!(check_instance("").is_err());
        assert!(check_instance("a/b").is_err());
    }
}
