//! Golden vectors for the sticky hash and assignment. The same file runs natively (`cargo test`),
//! as wasm32-wasip1 under Node's WASI and as wasm32-unknown-unknown under wasm-bindgen-test
//! (`make wasm-test`), so a user gets the same arm from the filter in any Envoy, from the
//! controller, and from any future version: changing these values re-shuffles every user of
//! every rollout and must never happen by accident.
#![allow(clippy::unwrap_used)]

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use ramp_filter::bandit::Evidence;
use ramp_filter::bucket::{key_hash, sticky_arm, unit_interval};
use ramp_filter::config::Rollout;
use ramp_filter::select::{choose, RequestKeys};

#[test]
fn key_hash_golden_vectors() {
    assert_eq!(key_hash("demo", "alice", "v1"), 0x07de8764b547066f);
    assert_eq!(key_hash("demo", "alice", "v2"), 0x07663d463d8c750e);
    assert_eq!(key_hash("", "", ""), 0x0992e16d4af04425);
    assert_eq!(key_hash("s1", "user-42", "canary"), 0x4c385c13f1bb107b);
}

#[test]
fn unit_interval_and_log_are_bit_identical() {
    let u = unit_interval(0x07de8764b547066f);
    // Cross-checked with CPython: struct.pack('<d', math.log(u)) (glibc's log) gives the same bits.
    assert_eq!(u.to_bits(), 0x3f9f7a1d92d51c20);
    assert_eq!(libm::log(u).to_bits(), 0xc00bdb9324cbcf44);
}

/// 10,000 users over three arms: the per-arm counts and a digest of the whole assignment sequence.
#[test]
fn sticky_assignment_golden_digest() {
    let arms = [("v1", 70.0), ("v2", 20.0), ("v3", 10.0)];
    let mut digest: u64 = 0xcbf29ce484222325;
    let mut counts = [0u32; 3];
    for u in 0..10_000 {
        let i = sticky_arm("golden", &format!("user-{u}"), arms.iter().copied()).unwrap();
        counts[i] += 1;
        digest = (digest ^ i as u64).wrapping_mul(0x100000001b3);
    }
    assert_eq!(counts, [7027, 2006, 967]);
    assert_eq!(digest, 0x00c00a41a0b1bb4f);
}

#[test]
fn config_validation_and_choice_agree() {
    let r = Rollout::from_json(
        br#"{"rollout":"golden","arms":[{"name":"v1","weight":70},{"name":"v2","weight":20},{"name":"v3","weight":10}],
            "sticky":{"source":"header","name":"x-user"}}"#,
    )
    .unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let keys = RequestKeys {
        override_value: None,
        sticky_key: Some("user-0"),
    };
    let direct = sticky_arm(
        "golden",
        "user-0",
        [("v1", 70.0), ("v2", 20.0), ("v3", 10.0)],
    )
    .unwrap();
    assert_eq!(
        choose(&r, &r.weights(), Evidence::default(), keys, &mut rng).arm,
        direct
    );
    let bad =
        Rollout::from_json(br#"{"rollout":"g","arms":[{"name":"v1","weight":-1}]}"#).unwrap_err();
    assert_eq!(bad.field, "arms[0].weight");
}
