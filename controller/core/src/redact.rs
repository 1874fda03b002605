//! Secrets never leave through a read: URLs in specs (hooks, Prometheus) may carry credentials
//! (`user:pass@`) or keys in the query (`?api_key=`), and they end up in error texts (ureq puts the
//! URL in its errors), reasons, events and API answers. Every such text passes through here first.

/// `url` with its user info and every query value replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let (before_fragment, fragment) = match rest.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (rest, None),
    };
    let (before_query, query) = match before_fragment.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (before_fragment, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_owned(),
    };
    let mut out = String::with_capacity(url.len());
    if let Some(s) = scheme {
        out.push_str(s);
        out.push_str("://");
    }
    out.push_str(&host);
    out.push_str(path);
    if let Some(q) = query {
        out.push('?');
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) => format!("{k}=***"),
                None => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    if fragment.is_some() {
        out.push_str("#***");
    }
    out
}

/// `text` with every `http://` or `https://` URL in it redacted (a URL ends at whitespace or at a
/// quote, bracket or comma that cannot be part of it).
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = find_url(rest) {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')' | ']' | ',')
            })
            .unwrap_or(tail.len());
        // Punctuation that ends a sentence or introduces a message is not part of the URL.
        let end = tail[..end].trim_end_matches([':', '.', ';']).len();
        out.push_str(&redact_url(&tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn find_url(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    match (lower.find("http://"), lower.find("https://")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue "rampctl under fire", item 9: credentials in hook and Prometheus URLs showed up in
    /// status, history and 502 bodies.
    #[test]
    fn credentials_and_query_values_are_masked_everywhere_in_a_text() {
        assert_eq!(
            redact_url("http://user:pass@hooks.example:8080/p/q?api_key=s3cret&x=1#frag"),
            "http://***@hooks.example:8080/p/q?api_key=***&x=***#***"
        );
        assert_eq!(redact_url("http://127.0.0.1:9/ok"), "http://127.0.0.1:9/ok");
        let msg = "BeforeStep hook http://u:p@127.0.0.1:1/hook?token=abc failed: http://u:p@127.0.0.1:1/hook?token=abc: Connection Failed";
        let red = redact_text(msg);
        assert!(!red.contains("abc") && !red.contains("u:p"), "{red}");
        assert_eq!(
            red,
            "BeforeStep hook http://***@127.0.0.1:1/hook?token=*** failed: http://***@127.0.0.1:1/hook?token=***: Connection Failed"
        );
        assert_eq!(redact_text("no url here"), "no url here");
        assert_eq!(
            redact_text("prometheus at \"HTTPS://a:b@p/\""),
            "prometheus at \"HTTPS://***@p/\""
        );
    }
}
