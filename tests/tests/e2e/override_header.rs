//! The override header forces an arm only when configured; client-sent headers never steer the
//! router or the model: by default the ones the rollout owns are replaced or removed, and with
//! `client_headers: strip_all` every `x-ramp-*` header is.

use ramp_tests::{count_by_arm, drive, TwoArms};
use serde_json::json;

fn headers(
    pairs: &'static [(&'static str, &'static str)],
) -> impl Fn(usize) -> Vec<(String, String)> + Sync {
    move |_| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

#[test]
fn configured_override_forces_the_canary() {
    let cfg = json!({
        "rollout": "ovr",
        "arms": [{"name": "v1", "weight": 99}, {"name": "v2", "weight": 1}],
        "override": {"header": "canary", "values": {"true": "v2"}}
    });
    let setup = TwoArms::start(&cfg, 2).unwrap();
    let url = setup.envoy.url("/");
    let forced = drive(&url, 100, 2, headers(&[("canary", "true")]));
    assert_eq!(count_by_arm(&forced).get("v2"), Some(&100));
    // A value the config does not map falls back to the weights (99/1: at most a handful on v2).
    let unmapped = drive(&url, 100, 2, headers(&[("canary", "false")]));
    assert!(count_by_arm(&unmapped).get("v2").copied().unwrap_or(0) < 10);
}

#[test]
fn override_cannot_force_a_rolled_back_arm() {
    let cfg = json!({
        "rollout": "ovr0",
        "arms": [{"name": "v1", "weight": 100}, {"name": "v2", "weight": 0}],
        "override": {"header": "x-ramp-force", "values": {"v2": "v2"}}
    });
    let setup = TwoArms::start(&cfg, 2).unwrap();
    let replies = drive(
        &setup.envoy.url("/"),
        50,
        2,
        headers(&[("x-ramp-force", "v2")]),
    );
    assert_eq!(count_by_arm(&replies).get("v1"), Some(&50));
}

#[test]
fn strip_all_removes_every_client_ramp_header() {
    let cfg = json!({"rollout": "strip", "client_headers": "strip_all", "arms": [{"name": "v1", "weight": 100, "cluster": "model_v1"}, {"name": "v2", "weight": 0}]});
    let setup = TwoArms::start(&cfg, 2).unwrap();
    let spoofed = &[
        ("canary", "true"),
        ("x-ramp-arm", "v2"),
        ("x-ramp-cluster", "model_v2"),
        ("x-ramp-reward", "1"),
        ("X-Ramp-Shadow", "model_v2"),
    ];
    let replies = drive(&setup.envoy.url("/"), 60, 2, headers(spoofed));
    assert_eq!(count_by_arm(&replies).get("v1"), Some(&60));
    for r in &replies {
        // Exactly what the filter set reaches the model; nothing the client forged.
        assert_eq!(
            r.body["headers"],
            json!({"canary": "true", "x-ramp-arm": "v1", "x-ramp-cluster": "model_v1"}),
            "{}",
            r.body
        );
    }
    assert_eq!(setup.v2.served(), 0);
}

/// The default, `client_headers: strip_owned`: a client still cannot pick its arm or its cluster
/// (the routing header is replaced, the cluster header removed for an arm without one), while
/// the `x-ramp-*` headers Ramp does not act on reach the model.
#[test]
fn by_default_clients_cannot_steer_and_other_headers_pass() {
    let cfg = json!({"rollout": "owned",
                     "arms": [{"name": "v1", "weight": 100, "cluster": "model_v1"}, {"name": "v2", "weight": 0}]});
    let setup = TwoArms::start(&cfg, 2).unwrap();
    let spoofed = &[
        ("x-ramp-arm", "v2"),
        ("x-ramp-cluster", "model_v2"),
        ("x-ramp-reward", "1"),
    ];
    let replies = drive(&setup.envoy.url("/"), 40, 2, headers(spoofed));
    assert_eq!(count_by_arm(&replies).get("v1"), Some(&40));
    for r in &replies {
        assert_eq!(
            r.body["headers"],
            json!({"x-ramp-arm": "v1", "x-ramp-cluster": "model_v1", "x-ramp-reward": "1"}),
            "{}",
            r.body
        );
    }
    assert_eq!(setup.v2.served(), 0);
}
