//! Requests no well-behaved client sends must neither kill the filter's VM nor skip the filter:
//! header values that are not UTF-8 (HTTP allows obs-text bytes), empty and huge sticky keys.

use std::io::{Read, Write};
use std::net::TcpStream;

use ramp_tests::{drive, TwoArms};
use serde_json::json;

/// Sends raw request bytes on a fresh connection and returns the response head.
fn raw_request(port: u16, head: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(head).unwrap();
    let mut buf = vec![0; 4096];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn non_utf8_keys_and_odd_headers_are_served_and_the_vm_survives() {
    let cfg = json!({
        "rollout": "hostile",
        "arms": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
        "sticky": {"source": "header", "name": "x-user-id"},
        "override": {"header": "canary", "values": {"true": "v2"}},
        "response_header": "x-ramp-arm"
    });
    let setup = TwoArms::start(&cfg, 2).unwrap();
    let port = *setup.envoy.listeners.values().next().unwrap();
    let mut heads: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nhost: a\r\nx-user-id: \xff\xfe\x80\r\nconnection: close\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nhost: a\r\ncanary: \xc3\x28\r\nx-ramp-arm: \xff\r\nconnection: close\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nhost: a\r\nx-user-id:\r\nconnection: close\r\n\r\n".to_vec(),
    ];
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-user-id: {}\r\nconnection: close\r\n\r\n",
        "u".repeat(30_000)
    );
    heads.push(huge.into_bytes());
    for head in &heads {
        for _ in 0..5 {
            let reply = raw_request(port, head);
            assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
            // The filter ran: it told the client its arm.
            assert!(reply.contains("x-ramp-arm: v"), "{reply}");
        }
    }
    // The same non-UTF-8 key always lands on the same arm (lossy decoding is deterministic).
    let arms: std::collections::BTreeSet<String> = (0..10)
        .map(|_| {
            let r = raw_request(port, &heads[0]);
            r.lines()
                .find(|l| l.starts_with("x-ramp-arm:"))
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(arms.len(), 1, "{arms:?}");
    // And ordinary traffic on both workers still passes through a live filter.
    let replies = drive(&setup.envoy.url("/"), 100, 4, ramp_tests::no_headers);
    assert!(replies
        .iter()
        .all(|r| r.status == 200 && r.told_arm.is_some()));
    assert!(
        !setup.envoy.log().contains("panic"),
        "{}",
        setup.envoy.log()
    );
}
