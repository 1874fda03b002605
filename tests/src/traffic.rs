//! Sending traffic through Envoy from several connections at once, so every Envoy worker serves some.

use std::collections::BTreeMap;

use crate::client::{Client, Reply};

/// Sends `n` GETs to `url` over `connections` keep-alive connections, building each request's headers
/// from its index; returns the replies in index order. A transport error fails the whole run.
pub fn drive(
    url: &str,
    n: usize,
    connections: usize,
    headers: impl Fn(usize) -> Vec<(String, String)> + Sync,
) -> Vec<Reply> {
    let connections = connections.max(1);
    let mut out: Vec<(usize, Reply)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..connections)
            .map(|t| {
                let headers = &headers;
                s.spawn(move || {
                    let client = Client::default();
                    let mut replies = Vec::new();
                    for i in (t..n).step_by(connections) {
                        let h = headers(i);
                        let h: Vec<(&str, &str)> =
                            h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                        match client.get(url, &h) {
                            Ok(r) => replies.push((i, r)),
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(replies)
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(Ok(replies)) => replies,
                Ok(Err(e)) => panic!("request through envoy failed: {e:#}"),
                Err(_) => panic!("traffic thread panicked"),
            })
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// Replies per answering arm.
pub fn count_by_arm(replies: &[Reply]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in replies {
        *m.entry(r.served_by.clone()).or_default() += 1;
    }
    m
}

/// Header builder for requests that carry none.
pub fn no_headers(_: usize) -> Vec<(String, String)> {
    Vec::new()
}
