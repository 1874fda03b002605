//! Who may call what. Every endpoint but `/healthz` and `/readyz` needs a bearer token unless the
//! operator starts `rampctl serve --insecure-no-auth`: the operator's token changes rollouts, the
//! filters' report token posts reports and polls live state, a read-only token reads, and
//! `/metrics` may have a token of its own. The scheme is matched case-insensitively (RFC 7235
//! section 2.1) and tokens are compared in constant time, so a timing probe learns nothing about a
//! token's prefix.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("{0}: an empty token would lock every caller out")]
    Empty(&'static str),
    #[error(
        "{0} is required: every endpoint but /healthz and /readyz needs a credential \
         (start with --insecure-no-auth to leave every endpoint open, e.g. on a laptop)"
    )]
    Missing(&'static str),
    #[error("--insecure-no-auth leaves every endpoint open, so {0} would never be checked; give one or the other")]
    OpenWithToken(&'static str),
    #[error("{0} and {1} are the same token: each kind of caller needs its own, or the weaker one can do what the stronger can")]
    Reused(&'static str, &'static str),
}

/// What a call needs: the least credential that may make it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Apply, commands, feedback: the operator's token.
    Change,
    /// Status, list, history, `/v1/specs`: the read-only token (or the operator's).
    Read,
    /// A filter's live-state poll: the report token (or a reader's).
    Poll,
    /// A filter's report: the report token (or the operator's).
    Report,
    /// `/metrics`: its own token, a reader's or the operator's.
    Metrics,
}

/// The credential a caller presented, once matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Operator,
    Reader,
    Reporter,
    Scraper,
}

impl Caller {
    fn may(self, access: Access) -> bool {
        use {Access as A, Caller as C};
        matches!(
            (self, access),
            (C::Operator, _)
                | (C::Reader, A::Read | A::Poll | A::Metrics)
                | (C::Reporter, A::Poll | A::Report)
                | (C::Scraper, A::Metrics)
        )
    }
}

/// Why a call was refused: no (valid) credential, or one that may not make this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// HTTP 401.
    Unauthenticated,
    /// HTTP 403: the token is valid, for another kind of call.
    Forbidden(Caller),
}

/// The tokens `rampctl serve` checks.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// `--insecure-no-auth`: every call passes.
    open: bool,
    operator: Option<String>,
    read: Option<String>,
    report: Option<String>,
    metrics: Option<String>,
}

/// The tokens as given on the command line (or their environment variables).
#[derive(Debug, Clone, Default)]
pub struct TokenOptions {
    pub operator: Option<String>,
    pub read: Option<String>,
    pub report: Option<String>,
    pub metrics: Option<String>,
    pub insecure_no_auth: bool,
}

impl Tokens {
    /// Secure by default: the operator's and the report token are required unless
    /// `insecure_no_auth`; the read-only and metrics tokens are optional (readers can use the
    /// operator's token).
    pub fn new(o: TokenOptions) -> Result<Self, TokenError> {
        let named = [
            ("--auth-token", &o.operator),
            ("--read-token", &o.read),
            ("--report-token", &o.report),
            ("--metrics-token", &o.metrics),
        ];
        for (flag, token) in named {
            match token.as_deref() {
                Some(_) if o.insecure_no_auth => return Err(TokenError::OpenWithToken(flag)),
                Some(t) if t.trim().is_empty() => return Err(TokenError::Empty(flag)),
                _ => {}
            }
        }
        for (i, (a, ta)) in named.iter().enumerate() {
            for (b, tb) in &named[i + 1..] {
                let same = match (ta, tb) {
                    (Some(x), Some(y)) => x.trim() == y.trim(),
                    _ => false,
                };
                if same {
                    return Err(TokenError::Reused(a, b));
                }
            }
        }
        if !o.insecure_no_auth {
            if o.operator.is_none() {
                return Err(TokenError::Missing("--auth-token"));
            }
            if o.report.is_none() {
                return Err(TokenError::Missing("--report-token"));
            }
        }
        // A token read from a Secret file often ends in a newline, and a client's header is
        // trimmed (`bearer`): the stored token is trimmed too, or nobody could ever match it.
        let trimmed = |t: Option<String>| t.map(|t| t.trim().to_owned());
        Ok(Self {
            open: o.insecure_no_auth,
            operator: trimmed(o.operator),
            read: trimmed(o.read),
            report: trimmed(o.report),
            metrics: trimmed(o.metrics),
        })
    }

    /// Every endpoint open (`--insecure-no-auth`).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Whose token this `Authorization` value carries, if any.
    pub fn caller(&self, authorization: Option<&[u8]>) -> Option<Caller> {
        let given = bearer(authorization)?;
        // Every token is compared, whatever matched first, so the time does not tell which did.
        let mut found = None;
        for (caller, token) in [
            (Caller::Scraper, &self.metrics),
            (Caller::Reporter, &self.report),
            (Caller::Reader, &self.read),
            (Caller::Operator, &self.operator),
        ] {
            if token.as_ref().is_some_and(|t| equal(given, t.as_bytes())) {
                found = Some(caller);
            }
        }
        found
    }

    /// May a call with this `Authorization` value have `access`?
    pub fn check(&self, access: Access, authorization: Option<&[u8]>) -> Result<(), Refusal> {
        if self.open {
            return Ok(());
        }
        match self.caller(authorization) {
            None => Err(Refusal::Unauthenticated),
            Some(c) if c.may(access) => Ok(()),
            Some(c) => Err(Refusal::Forbidden(c)),
        }
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

    fn all_four() -> Tokens {
        Tokens::new(TokenOptions {
            operator: Some("s3cret".into()),
            read: Some("look".into()),
            report: Some("rep".into()),
            metrics: Some("scrape".into()),
            insecure_no_auth: false,
        })
        .unwrap()
    }

    /// Issue "rampctl under fire", item 10: `bearer` in another case was refused, an empty token
    /// silently locked every mutation out.
    #[test]
    fn bearer_in_any_case_passes_and_empty_tokens_are_refused_at_start() {
        let t = all_four();
        for ok in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER  s3cret ",
            "BeArEr\ts3cret",
        ] {
            assert_eq!(t.check(Access::Change, Some(ok.as_bytes())), Ok(()), "{ok}");
        }
        for no in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "s3cret",
            "Bearer",
            "",
        ] {
            assert_eq!(
                t.check(Access::Change, Some(no.as_bytes())),
                Err(Refusal::Unauthenticated),
                "{no}"
            );
        }
        assert_eq!(t.check(Access::Read, None), Err(Refusal::Unauthenticated));
        for flag in [
            "--auth-token",
            "--read-token",
            "--report-token",
            "--metrics-token",
        ] {
            let mut o = TokenOptions {
                operator: Some("a".into()),
                report: Some("b".into()),
                ..TokenOptions::default()
            };
            let empty = Some(" ".to_owned());
            match flag {
                "--auth-token" => o.operator = empty,
                "--read-token" => o.read = empty,
                "--report-token" => o.report = empty,
                _ => o.metrics = empty,
            }
            assert_eq!(Tokens::new(o).unwrap_err(), TokenError::Empty(flag));
        }
    }

    /// Issue 20, item 7: without tokens every endpoint was open (one made-up report rolled a
    /// rollout back). Now a start without them is refused unless the flag says so.
    #[test]
    fn serving_without_credentials_needs_the_flag_that_says_so() {
        let none = TokenOptions::default();
        assert_eq!(
            Tokens::new(none.clone()).unwrap_err(),
            TokenError::Missing("--auth-token")
        );
        let operator_only = TokenOptions {
            operator: Some("a".into()),
            ..none.clone()
        };
        assert_eq!(
            Tokens::new(operator_only).unwrap_err(),
            TokenError::Missing("--report-token")
        );
        let open = Tokens::new(TokenOptions {
            insecure_no_auth: true,
            ..none.clone()
        })
        .unwrap();
        assert!(open.is_open());
        assert_eq!(open.check(Access::Change, None), Ok(()));
        let contradictory = TokenOptions {
            insecure_no_auth: true,
            read: Some("r".into()),
            ..none
        };
        assert_eq!(
            Tokens::new(contradictory).unwrap_err(),
            TokenError::OpenWithToken("--read-token")
        );
        let reused = TokenOptions {
            operator: Some("same".into()),
            report: Some("same".into()),
            ..TokenOptions::default()
        };
        assert_eq!(
            Tokens::new(reused).unwrap_err(),
            TokenError::Reused("--auth-token", "--report-token")
        );
    }

    /// Each kind of token makes the calls its holder needs and no more: a filter's report token
    /// cannot read status or change a rollout, a reader cannot post reports.
    #[test]
    fn each_token_makes_only_its_own_kind_of_call() {
        let t = all_four();
        let allowed = |token: &str| -> Vec<Access> {
            let header = format!("Bearer {token}");
            [
                Access::Change,
                Access::Read,
                Access::Poll,
                Access::Report,
                Access::Metrics,
            ]
            .into_iter()
            .filter(|a| t.check(*a, Some(header.as_bytes())).is_ok())
            .collect()
        };
        use Access::*;
        assert_eq!(allowed("s3cret"), vec![Change, Read, Poll, Report, Metrics]);
        assert_eq!(allowed("look"), vec![Read, Poll, Metrics]);
        assert_eq!(allowed("rep"), vec![Poll, Report]);
        assert_eq!(allowed("scrape"), vec![Metrics]);
        // A token from a Secret file with its newline still matches what clients send.
        let from_file = Tokens::new(TokenOptions {
            operator: Some("op\n".into()),
            report: Some(" rep\t".into()),
            ..TokenOptions::default()
        })
        .unwrap();
        assert_eq!(from_file.check(Change, Some(b"Bearer op")), Ok(()));
        assert_eq!(from_file.check(Report, Some(b"Bearer rep")), Ok(()));
        assert_eq!(allowed("nope"), Vec::<Access>::new());
        assert_eq!(
            t.check(Change, Some(b"Bearer rep")),
            Err(Refusal::Forbidden(Caller::Reporter))
        );
    }
}
