//! Reading a request the way the selection needs it: which client headers to drop, and the sticky
//! key from a header, a cookie or a query parameter. Pure string work, so it is tested natively.

use crate::config::{KeySource, Rollout};

/// Headers a client may not set: every `x-ramp-*` header (a client must not pick its own arm, fake a
/// reward or trigger a mirror) plus the configured routing and cluster headers, whatever their names.
/// The override header survives when the config names one, so the override can be read.
/// Takes the raw name bytes from the host and allocates nothing: it runs for every header of every request.
pub fn must_strip(rollout: &Rollout, name: &[u8]) -> bool {
    let is = |h: &str| name.eq_ignore_ascii_case(h.as_bytes());
    if rollout.override_.as_ref().is_some_and(|o| is(&o.header)) {
        return false;
    }
    name.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"x-ramp-"))
        || is(&rollout.routing_header)
        || is(&rollout.cluster_header)
}

/// Where the sticky key comes from, so the glue reads only that one thing from the host.
pub fn sticky_source(rollout: &Rollout) -> Option<(KeySource, &str)> {
    rollout.sticky.as_ref().map(|s| (s.source, s.name.as_str()))
}

/// The value of cookie `name` in a `Cookie` header (RFC 6265 section 4.2: `a=1; b=2`).
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// The raw (not percent-decoded) value of query parameter `name` in a `:path`.
pub fn query_value<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let query = path.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The `Set-Cookie` value that hands a client its sticky key.
pub fn set_cookie_value(name: &str, key: &str, max_age_s: u64) -> String {
    format!("{name}={key}; Path=/; Max-Age={max_age_s}; HttpOnly; SameSite=Lax")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ramp_and_routing_headers_but_keeps_the_override() {
        let r = Rollout::from_json(
            br#"{"rollout":"t","arms":[{"name":"a","weight":1}],"routing_header":"x-model",
                "override":{"header":"x-ramp-force","values":{"1":"a"}}}"#,
        )
        .unwrap();
        assert!(must_strip(&r, b"X-Ramp-Arm"));
        assert!(must_strip(&r, b"x-ramp-shadow"));
        assert!(must_strip(&r, b"X-Model"));
        assert!(must_strip(&r, b"x-ramp-cluster"));
        assert!(!must_strip(&r, b"x-ramp-force"));
        assert!(!must_strip(&r, b"x-user-id"));
        assert!(!must_strip(&r, b"x-ramp"));
        assert!(!must_strip(&r, b"\xff\xfe"));
    }

    #[test]
    fn cookie_parsing() {
        assert_eq!(cookie_value("a=1; uid=abc; b=2", "uid"), Some("abc"));
        assert_eq!(cookie_value("uid=\"q\"", "uid"), Some("q"));
        assert_eq!(cookie_value("xuid=1;uid=2", "uid"), Some("2"));
        assert_eq!(cookie_value("a=1", "uid"), None);
        assert_eq!(cookie_value("", "uid"), None);
    }

    #[test]
    fn query_parsing() {
        assert_eq!(query_value("/p?user=7&x=1", "user"), Some("7"));
        assert_eq!(query_value("/p?x=1&user=a%20b#frag", "user"), Some("a%20b"));
        assert_eq!(query_value("/p?username=7", "user"), None);
        assert_eq!(query_value("/p?user", "user"), Some(""));
        assert_eq!(query_value("/p", "user"), None);
    }

    #[test]
    fn cookie_attributes() {
        assert_eq!(
            set_cookie_value("uid", "k", 60),
            "uid=k; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"
        );
    }
}
