//! How the request path reads the request's headers: the whole map once (`strip_all`, which
//! needs every name to strip), or only the ones a rollout asks for, one host call each
//! (`strip_owned`). Either way a header the filter owns reads as absent, so a client cannot steer
//! its own request.

use crate::config::{KeySource, Rollout};
use crate::headermap::{find, pairs};
use crate::host::{Host, Map};
use crate::request::{cookie_value, must_strip, query_value, sticky_source};

/// A request header as text, from the header map read once per request (no host call). Headers
/// the filter strips count as absent. Several values (HTTP/2 may split `cookie`) are joined with
/// "; ". Lossy UTF-8: any client can send a value that is not UTF-8, and the lossy form stays
/// deterministic, so such a sticky key still maps to one arm everywhere.
fn request_header(rollout: &Rollout, serialized: &[u8], name: &str) -> Option<String> {
    if must_strip(rollout, name.as_bytes()) {
        return None;
    }
    let mut values = find(serialized, name).map(String::from_utf8_lossy);
    let first = values.next()?.into_owned();
    Some(values.fold(first, |acc, v| acc + "; " + &v))
}

/// The request's headers as the filter reads them.
pub(super) enum RequestHeaders {
    Map(Vec<u8>),
    Each,
}

impl RequestHeaders {
    pub(super) fn get(&self, host: &impl Host, rollout: &Rollout, name: &str) -> Option<String> {
        match self {
            RequestHeaders::Map(serialized) => request_header(rollout, serialized, name),
            RequestHeaders::Each if must_strip(rollout, name.as_bytes()) => None,
            // The value's own buffer when it is UTF-8, as it nearly always is (no copy).
            RequestHeaders::Each => host.header(Map::Request, name).map(|v| {
                String::from_utf8(v)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            }),
        }
    }
}

pub(super) fn sticky_key(
    get: impl Fn(&str) -> Option<String>,
    rollout: &Rollout,
) -> Option<String> {
    let (source, name) = sticky_source(rollout)?;
    match source {
        KeySource::Header => get(name),
        KeySource::Cookie => cookie_value(&get("cookie")?, name).map(str::to_owned),
        KeySource::Query => query_value(&get(":path")?, name).map(str::to_owned),
    }
}

/// Removes every header a client may not set, from the header map read once. The routing header
/// is left to `set_header`, which replaces whatever the client sent.
pub(super) fn strip_client_headers(host: &impl Host, rollout: &Rollout, serialized: &[u8]) {
    for (name, _) in pairs(serialized) {
        if must_strip(rollout, name)
            && !name.eq_ignore_ascii_case(rollout.routing_header.as_bytes())
        {
            if let Ok(name) = std::str::from_utf8(name) {
                host.set_header(Map::Request, name, None);
            }
        }
    }
}
