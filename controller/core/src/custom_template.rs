//! The templates of custom rules: a PromQL query or a URL with `{{rollout}}`, `{{arm}}` and
//! `{{window}}` placeholders. Parsed once when the spec is validated, so a placeholder that could
//! not be filled safely is refused there, naming it; filled at each check with the values escaped
//! for where they stand (inside a PromQL string literal, or in a URL), so a value can never end
//! the literal it sits in and add PromQL of its own.

use std::fmt::Write as _;

use thiserror::Error;

/// Longest template accepted, in bytes: a query or URL, not a document.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;

/// What a template may stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    Rollout,
    Arm,
    Window,
}

impl Placeholder {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "rollout" => Some(Self::Rollout),
            "arm" => Some(Self::Arm),
            "window" => Some(Self::Window),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Rollout => "rollout",
            Self::Arm => "arm",
            Self::Window => "window",
        }
    }
}

/// Why a template is refused, or cannot be filled.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_TEMPLATE_BYTES} bytes")]
    TooLong,
    #[error(
        "`{{{{{0}}}}}` is not a placeholder: use {{{{rollout}}}}, {{{{arm}}}} or {{{{window}}}}"
    )]
    Unknown(String),
    #[error("has a `{{{{` that is never closed with `}}}}`")]
    Unclosed,
    #[error(
        "must select the arm with {{{{arm}}}}: the same figure for every arm compares nothing"
    )]
    NoArm,
    #[error("{{{{{0}}}}} must stand inside a quoted label value (e.g. arm=\"{{{{arm}}}}\"), where its value is escaped as a PromQL string")]
    Unquoted(&'static str),
    #[error("has a string literal that is never closed")]
    OpenString,
    #[error("must be an http:// or https:// URL")]
    NotHttp,
    #[error("a value for {{{{{0}}}}} holds a backtick, which a PromQL raw string cannot hold")]
    Backtick(&'static str),
}

/// How a template's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    PromQl,
    Url,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// A placeholder and the PromQL quote it stands inside (`"`, `'` or `` ` ``), if any.
    Slot(Placeholder, Option<char>),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    kind: Kind,
    parts: Vec<Part>,
    /// As written, for status and errors.
    pub text: String,
}

/// The values of one call.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    pub rollout: &'a str,
    pub arm: &'a str,
    /// A Prometheus duration, e.g. `30s`.
    pub window: &'a str,
}

impl<'a> Values<'a> {
    fn get(&self, p: Placeholder) -> &'a str {
        match p {
            Placeholder::Rollout => self.rollout,
            Placeholder::Arm => self.arm,
            Placeholder::Window => self.window,
        }
    }
}

/// Splits `text` at its placeholders; `quote_at(i)` says which PromQL quote byte `i` is inside.
fn split(
    text: &str,
    kind: Kind,
    quote_at: impl Fn(usize) -> Option<char>,
) -> Result<Vec<Part>, TemplateError> {
    if text.trim().is_empty() {
        return Err(TemplateError::Empty);
    }
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(TemplateError::TooLong);
    }
    let mut parts = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or(TemplateError::Unclosed)?;
        let name = after[..close].trim();
        let p = Placeholder::parse(name).ok_or_else(|| TemplateError::Unknown(name.to_owned()))?;
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let quote = match kind {
            Kind::PromQl => quote_at(offset + open),
            Kind::Url => None,
        };
        parts.push(Part::Slot(p, quote));
        let consumed = open + 2 + close + 2;
        offset += consumed;
        rest = &rest[consumed..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    if !parts
        .iter()
        .any(|p| matches!(p, Part::Slot(Placeholder::Arm, _)))
    {
        return Err(TemplateError::NoArm);
    }
    Ok(parts)
}

/// For each byte of a PromQL text, the quote it stands inside, if any: `"` and `'` strings take
/// backslash escapes, raw `` ` `` strings none; `#` outside a string comments out the line.
fn promql_quotes(text: &str) -> Result<Vec<Option<char>>, TemplateError> {
    let mut inside = Vec::with_capacity(text.len());
    let (mut quote, mut escaped, mut comment) = (None::<char>, false, false);
    for c in text.chars() {
        let here = quote;
        match quote {
            _ if comment => comment = c != '\n',
            Some(q) if escaped => {
                escaped = false;
                quote = Some(q);
            }
            Some(q) if c == '\\' && q != '`' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
            None if c == '#' => comment = true,
            None => {}
        }
        // The quote itself counts as outside; a placeholder starts at a byte after it.
        inside.extend(std::iter::repeat_n(
            here.filter(|_| quote.is_some()),
            c.len_utf8(),
        ));
    }
    if quote.is_some() {
        return Err(TemplateError::OpenString);
    }
    Ok(inside)
}

impl Template {
    /// A PromQL query template: `{{rollout}}` and `{{arm}}` only inside string literals (a label
    /// value), `{{window}}` anywhere (a range like `[{{window}}]` is outside any string).
    pub fn promql(text: &str) -> Result<Self, TemplateError> {
        let quotes = promql_quotes(text)?;
        let parts = split(text, Kind::PromQl, |i| quotes.get(i).copied().flatten())?;
        for part in &parts {
            if let Part::Slot(p @ (Placeholder::Rollout | Placeholder::Arm), None) = part {
                return Err(TemplateError::Unquoted(p.name()));
            }
        }
        Ok(Self {
            kind: Kind::PromQl,
            parts,
            text: text.to_owned(),
        })
    }

    /// A URL template: `http://` or `https://`, then placeholders anywhere after the scheme
    /// (a host per arm, a path, a query), each value percent-encoded.
    pub fn url(text: &str) -> Result<Self, TemplateError> {
        // The scheme is checked as written, so no value can stand in it.
        if !is_http_url(text) {
            return Err(TemplateError::NotHttp);
        }
        let parts = split(text, Kind::Url, |_| None)?;
        Ok(Self {
            kind: Kind::Url,
            parts,
            text: text.to_owned(),
        })
    }

    /// The template with `values` filled in, each escaped for where it stands.
    pub fn render(&self, values: &Values) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.text.len() + 64);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Slot(p, quote) => {
                    let v = values.get(*p);
                    match (self.kind, quote) {
                        (Kind::Url, _) => percent_encode(v, &mut out),
                        (Kind::PromQl, None) => out.push_str(&promql_bare(v)),
                        (Kind::PromQl, Some('`')) if v.contains('`') => {
                            return Err(TemplateError::Backtick(p.name()))
                        }
                        (Kind::PromQl, Some('`')) => out.push_str(v),
                        (Kind::PromQl, Some(q)) => promql_escape(v, *q, &mut out),
                    }
                }
            }
        }
        Ok(out)
    }

    /// Whether the template names `{{window}}`.
    pub fn uses_window(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Slot(Placeholder::Window, _)))
    }
}

/// Whether `text` starts with `http://` or `https://` (in any case).
pub fn is_http_url(text: &str) -> bool {
    let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// `v` as the inside of a PromQL string literal quoted with `quote` (Go's escapes, which
/// PromQL's lexer takes): backslash, the quote and control characters escaped.
pub fn promql_escape(v: &str, quote: char, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// A value outside any string (only `{{window}}` stands there): what is not a duration's
/// characters is dropped, so nothing but a duration can appear.
fn promql_bare(v: &str) -> String {
    v.chars().filter(char::is_ascii_alphanumeric).collect()
}

/// RFC 3986: everything but the unreserved characters as `%XX`.
fn percent_encode(v: &str, out: &mut String) {
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// A span in milliseconds as a Prometheus duration in whole seconds, rounded up, at least `1s`.
pub fn duration(ms: u64) -> String {
    format!("{}s", ms.div_ceil(1000).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: Values = Values {
        rollout: "fraud",
        arm: "v2",
        window: "30s",
    };

    #[test]
    fn a_query_is_filled_where_its_placeholders_stand() {
        let t = Template::promql(
            r#"avg(rate(model_confidence_sum{rollout="{{rollout}}", arm='{{ arm }}'}[{{window}}]))"#,
        )
        .unwrap();
        assert_eq!(
            t.render(&V).unwrap(),
            r#"avg(rate(model_confidence_sum{rollout="fraud", arm='v2'}[30s]))"#
        );
        assert!(t.uses_window());
        let raw = Template::promql("x{arm=`{{arm}}`}").unwrap();
        assert_eq!(raw.render(&V).unwrap(), "x{arm=`v2`}");
    }

    /// Arm names are `[A-Za-z0-9_-]` already; were one ever to hold a quote, it would still stay
    /// inside its string literal and add no PromQL.
    #[test]
    fn a_value_cannot_leave_its_string_literal() {
        let t = Template::promql(r#"up{arm="{{arm}}"} > 0"#).unwrap();
        let hostile = Values {
            arm: r#"v2"} or vector(1) # \"#,
            ..V
        };
        let q = t.render(&hostile).unwrap();
        assert_eq!(q, r#"up{arm="v2\"} or vector(1) # \\"} > 0"#);
        // Single quotes escape their own quote.
        let t = Template::promql("up{arm='{{arm}}'}").unwrap();
        let q = t.render(&Values { arm: "a'b\nc", ..V }).unwrap();
        assert_eq!(q, r"up{arm='a\'b\nc'}");
        let raw = Template::promql("up{arm=`{{arm}}`}").unwrap();
        assert_eq!(
            raw.render(&Values { arm: "a`b", ..V }),
            Err(TemplateError::Backtick("arm"))
        );
        // Outside strings only a duration's characters survive.
        let t = Template::promql(r#"rate(x{arm="{{arm}}"}[{{window}}])"#).unwrap();
        let q = t
            .render(&Values {
                window: "5m]) or vector(1",
                ..V
            })
            .unwrap();
        assert_eq!(q, r#"rate(x{arm="v2"}[5morvector1])"#);
    }

    #[test]
    fn templates_that_cannot_be_filled_safely_are_refused() {
        for (text, err) in [
            ("", TemplateError::Empty),
            ("up", TemplateError::NoArm),
            ("up{arm={{arm}}}", TemplateError::Unquoted("arm")),
            (
                r#"up{arm="{{arm}}", r={{rollout}}}"#,
                TemplateError::Unquoted("rollout"),
            ),
            (
                r#"up{arm="{{arm}}"}[{{range}}]"#,
                TemplateError::Unknown("range".into()),
            ),
            (r#"up{arm="{{arm}}"} {{"#, TemplateError::Unclosed),
            (r#"up{arm="{{arm}}}"#, TemplateError::OpenString),
        ] {
            assert_eq!(Template::promql(text), Err(err), "{text}");
        }
        // An escaped quote closes nothing; a comment's quote opens nothing.
        let t = Template::promql("up{arm=\"a\\\"{{arm}}\"} # it's").unwrap();
        assert_eq!(t.render(&V).unwrap(), "up{arm=\"a\\\"v2\"} # it's");
        let long = format!(
            r#"up{{arm="{{{{arm}}}}"}} {}"#,
            " ".repeat(MAX_TEMPLATE_BYTES)
        );
        assert_eq!(Template::promql(&long), Err(TemplateError::TooLong));
    }

    #[test]
    fn urls_are_filled_percent_encoded_after_the_scheme() {
        let t = Template::url("https://kpi.example/v1/{{rollout}}/{{arm}}?w={{window}}").unwrap();
        assert_eq!(
            t.render(&V).unwrap(),
            "https://kpi.example/v1/fraud/v2?w=30s"
        );
        let t = Template::url("http://model-{{arm}}.svc:8080/metrics.json").unwrap();
        assert_eq!(
            t.render(&Values {
                arm: "a b/?&#",
                ..V
            })
            .unwrap(),
            "http://model-a%20b%2F%3F%26%23.svc:8080/metrics.json"
        );
        for (text, err) in [
            ("ftp://x/{{arm}}", TemplateError::NotHttp),
            ("{{arm}}://x", TemplateError::NotHttp),
            ("http://x/", TemplateError::NoArm),
            ("http://x/{{model}}", TemplateError::Unknown("model".into())),
            ("http:/{{arm}}", TemplateError::NotHttp),
        ] {
            assert_eq!(Template::url(text), Err(err), "{text}");
        }
        assert!(Template::url("HTTPS://x/{{arm}}").is_ok());
    }

    #[test]
    fn windows_are_whole_seconds_rounded_up() {
        assert_eq!(duration(30_000), "30s");
        assert_eq!(duration(1_500), "2s");
        assert_eq!(duration(0), "1s");
    }
}
