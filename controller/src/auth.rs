//! Who may call what: operators' calls (apply, commands, feedback) and the filters' reports carry
//! bearer tokens. The scheme is matched case-insensitively (RFC 7235 section 2.1) and tokens are
//! compared in constant time, so a timing probe learns nothing about a token's prefix.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "{0}: an empty token would lock every caller out; leave the option out to run without one"
    )]
    Empty(&'static str),
}

/// The tokens `rampctl serve` checks; `None` leaves that kind of call open.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    operator: Option<String>,
    report: Option<String>,
}

impl Tokens {
    pub fn new(operator: Option<String>, report: Option<String>) -> Result<Self, TokenError> {
        if operator.as_deref() == Some("") {
            return Err(TokenError::Empty("--auth-token"));
        }
        if report.as_deref() == Some("") {
            return Err(TokenError::Empty("--report-token"));
        }
        Ok(Self { operator, report })
    }

    /// May this `Authorization` header change a rollout?
    pub fn operator_may(&self, authorization: Option<&[u8]>) -> bool {
        match &self.operator {
            None => true,
            Some(t) => bearer(authorization).is_some_and(|given| equal(given, t.as_bytes())),
        }
    }

    /// May it post a report? The report token, or the operator's.
    pub fn reporter_may(&self, authorization: Option<&[u8]>) -> bool {
        let Some(report) = &self.report else {
            return true;
        };
        let given = bearer(authorization);
        given.is_some_and(|g| {
            // Both compared, whatever the first answer, so the time does not tell which matched.
            let as_report = equal(g, report.as_bytes());
            let as_operator = self
                .operator
                .as_ref()
                .is_some_and(|o| equal(g, o.as_bytes()));
            as_report | as_operator
        })
    }
}

/// The credentials of a `Bearer` authorization value.
fn bearer(authorization: Option<&[u8]>) -> Option<&[u8]> {
    let value = authorization?;
    let value = value.trim_ascii();
    let space = value.iter().position(|b| *b == b' ' || *b == b'\t')?;
    let (scheme, rest) = value.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Constant-time equality: every byte is looked at whatever differs first. The length is not
/// secret (an attacker knows the token format), so unequal lengths answer at once.
fn equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue "rampctl under fire", item 10: `bearer` in another case was refused, an empty token
    /// silently locked every mutation out.
    #[test]
    fn bearer_in_any_case_passes_and_empty_tokens_are_refused_at_start() {
        let t = Tokens::new(Some("s3cret".into()), Some("rep".into())).unwrap();
        for ok in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER  s3cret ",
            "BeArEr\ts3cret",
        ] {
            assert!(t.operator_may(Some(ok.as_bytes())), "{ok}");
        }
        for no in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "s3cret",
            "Bearer",
            "",
        ] {
            assert!(!t.operator_may(Some(no.as_bytes())), "{no}");
        }
        assert!(!t.operator_may(None));
        assert!(t.reporter_may(Some(b"bearer rep")));
        assert!(
            t.reporter_may(Some(b"Bearer s3cret")),
            "the operator's token too"
        );
        assert!(!t.reporter_may(Some(b"Bearer nope")));
        assert_eq!(
            Tokens::new(Some(String::new()), None).unwrap_err(),
            TokenError::Empty("--auth-token")
        );
        assert_eq!(
            Tokens::new(None, Some(String::new())).unwrap_err(),
            TokenError::Empty("--report-token")
        );
        let open = Tokens::new(None, None).unwrap();
        assert!(open.operator_may(None) && open.reporter_may(None));
    }
}
