//! Walking the host's serialized header map in place. The SDK's own decoder copies every header into
//! two `String`s (most of Ramp's per-request cost in `make bench`) and panics on a header value that is
//! not UTF-8, which any client can send; this one borrows, checks every bound and stops at the first
//! malformed entry.
//!
//! Layout (proxy-wasm ABI 0.2): `u32 count`, then `count` pairs of `u32 name_len, u32 value_len`, then
//! for each pair `name \0 value \0`; integers little-endian.

/// Iterator over `(name, value)` byte slices of a serialized header map.
pub struct Pairs<'a> {
    bytes: &'a [u8],
    count: usize,
    next: usize,
    data: usize,
}

pub fn pairs(bytes: &[u8]) -> Pairs<'_> {
    let count = read_u32(bytes, 0).unwrap_or(0) as usize;
    // A count that cannot fit in the buffer is malformed: yield nothing.
    let data = count
        .checked_mul(8)
        .and_then(|n| n.checked_add(4))
        .filter(|&d| d <= bytes.len());
    Pairs {
        bytes,
        count: if data.is_some() { count } else { 0 },
        next: 0,
        data: data.unwrap_or(0),
    }
}

/// The values of header `name` (ASCII case-insensitive), in order.
pub fn find<'a>(serialized: &'a [u8], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    pairs(serialized)
        .filter(move |(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            return None;
        }
        let header = 4 + self.next * 8;
        let name_len = read_u32(self.bytes, header)? as usize;
        let value_len = read_u32(self.bytes, header + 4)? as usize;
        let name_end = self.data.checked_add(name_len)?;
        let value_start = name_end.checked_add(1)?;
        let value_end = value_start.checked_add(value_len)?;
        let name = self.bytes.get(self.data..name_end)?;
        let value = self.bytes.get(value_start..value_end)?;
        self.data = value_end.checked_add(1)?;
        self.next += 1;
        Some((name, value))
    }
}

/// The ABI's layout written from pairs, as the host does: for the in-memory host and the tests.
#[cfg(test)]
pub(crate) fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        out.extend((k.len() as u32).to_le_bytes());
        out.extend((v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend(*k);
        out.push(0);
        out.extend(*v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_including_non_utf8_values() {
        let input: &[(&[u8], &[u8])] = &[
            (b":path", b"/p"),
            (b"x-ramp-arm", b"v2"),
            (b"x-user", b"\xff\xfe"),
            (b"e", b""),
        ];
        let bytes = serialize(input);
        let got: Vec<_> = pairs(&bytes).collect();
        assert_eq!(got, input.to_vec());
    }

    #[test]
    fn find_is_case_insensitive_and_keeps_order() {
        let bytes = serialize(&[(b"cookie", b"a=1"), (b"X-User", b"u"), (b"Cookie", b"b=2")]);
        assert_eq!(find(&bytes, "x-user").collect::<Vec<_>>(), vec![&b"u"[..]]);
        assert_eq!(
            find(&bytes, "cookie").collect::<Vec<_>>(),
            vec![&b"a=1"[..], &b"b=2"[..]]
        );
        assert_eq!(find(&bytes, "missing").count(), 0);
    }

    #[test]
    fn malformed_maps_yield_what_is_whole_and_never_panic() {
        assert_eq!(pairs(&[]).count(), 0);
        assert_eq!(pairs(&[1, 0]).count(), 0);
        assert_eq!(pairs(&u32::MAX.to_le_bytes()).count(), 0);
        let bytes = serialize(&[(b"a", b"1"), (b"b", b"2")]);
        for cut in 0..bytes.len() {
            let n = pairs(&bytes[..cut]).count();
            // Only the final NUL may be missing for the second pair to count as whole.
            assert!(n <= 1 || cut == bytes.len() - 1, "cut at {cut} yielded {n}");
        }
        let mut lying = serialize(&[(b"a", b"1")]);
        lying[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(pairs(&lying).count(), 0);
    }
}
