//! Sticky assignment: stable across requests, workers and restarts, identical to the native library,
//! and monotone when the canary ramps up.

use std::collections::BTreeSet;

use ramp_filter::bucket::sticky_arm;
use ramp_tests::{drive, Envoy, TwoArms};
use serde_json::{json, Value};

fn sticky_config(canary: f64) -> Value {
    json!({
        "rollout": "sticky",
        "arms": [{"name": "v1", "weight": 100.0 - canary}, {"name": "v2", "weight": canary}],
        "sticky": {"source": "header", "name": "x-user-id", "salt": "s1"},
        "response_header": "x-ramp-arm"
    })
}

fn user_headers(users: usize, repeats: usize) -> impl Fn(usize) -> Vec<(String, String)> + Sync {
    move |i| {
        vec![(
            "x-user-id".to_owned(),
            format!("user-{}", (i / repeats) % users),
        )]
    }
}

/// The arm the native library assigns, for comparison with what the wasm filter did in Envoy.
fn native_arm(user: usize, canary: f64) -> &'static str {
    let arms = [("v1", 100.0 - canary), ("v2", canary)];
    let i = sticky_arm("s1", &format!("user-{user}"), arms.iter().copied()).unwrap();
    arms[i].0
}

#[test]
fn same_key_same_arm_across_requests_workers_and_restart() {
    let (users, repeats) = (300, 3);
    let mut setup = TwoArms::start(&sticky_config(30.0), 2).unwrap();
    let before = drive(
        &setup.envoy.url("/"),
        users * repeats,
        3,
        user_headers(users, repeats),
    );
    for (i, r) in before.iter().enumerate() {
        let user = i / repeats;
        assert_eq!(
            r.served_by,
            native_arm(user, 30.0),
            "user-{user}: wasm in Envoy differs from native"
        );
        assert_eq!(r.told_arm.as_deref(), Some(r.served_by.as_str()));
    }
    setup.envoy.restart().unwrap();
    let after = drive(&setup.envoy.url("/"), users, 2, user_headers(users, 1));
    for (u, r) in after.iter().enumerate() {
        assert_eq!(
            r.served_by,
            before[u * repeats].served_by,
            "user-{u} moved after restart"
        );
    }
    let on_canary = after.iter().filter(|r| r.served_by == "v2").count();
    assert!(
        (50..=130).contains(&on_canary),
        "{on_canary} of {users} on a 30% canary"
    );
}

#[test]
fn ramping_the_canary_never_moves_a_user_out_of_it() {
    let users = 1000;
    let v1 = ramp_tests::ModelServer::start("v1").unwrap();
    let v2 = ramp_tests::ModelServer::start("v2").unwrap();
    let mut previous: Option<BTreeSet<usize>> = None;
    for canary in [5.0, 10.0, 25.0, 50.0] {
        let config = ramp_tests::two_arm_config(&sticky_config(canary), v1.port, v2.port).unwrap();
        let envoy = Envoy::start(&config, 2).unwrap();
        let replies = drive(&envoy.url("/"), users, 4, user_headers(users, 1));
        let now: BTreeSet<usize> = (0..users)
            .filter(|&u| replies[u].served_by == "v2")
            .collect();
        // Share within 5 binomial standard deviations of the weight (miss probability < 1e-6).
        let p = canary / 100.0;
        let sd = (users as f64 * p * (1.0 - p)).sqrt();
        assert!(
            ((now.len() as f64) - users as f64 * p).abs() < 5.0 * sd,
            "{} at {canary}%",
            now.len()
        );
        if let Some(prev) = &previous {
            let left: Vec<_> = prev.difference(&now).collect();
            assert!(
                left.is_empty(),
                "users {left:?} left the canary when it went to {canary}%"
            );
            assert!(now.len() > prev.len());
        }
        previous = Some(now);
    }
}

#[test]
fn a_cookie_is_issued_once_and_keeps_the_client_sticky() {
    let cfg = json!({
        "rollout": "cookie",
        "arms": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
        "sticky": {"source": "cookie", "name": "ramp_uid", "set_cookie": true, "cookie_max_age_s": 600}
    });
    let setup = TwoArms::start(&cfg, 2).unwrap();
    let mut arms_seen = BTreeSet::new();
    for _ in 0..40 {
        let client = ramp_tests::Client::default();
        let first = client.get(&setup.envoy.url("/"), &[]).unwrap();
        let cookie = first
            .set_cookie
            .clone()
            .expect("a client without the cookie gets one");
        assert!(
            cookie.contains("Max-Age=600") && cookie.contains("HttpOnly"),
            "{cookie}"
        );
        let pair = cookie.split(';').next().unwrap().to_owned();
        for _ in 0..3 {
            let again = client
                .get(&setup.envoy.url("/"), &[("cookie", &pair)])
                .unwrap();
            assert_eq!(again.served_by, first.served_by, "{pair}");
            assert!(
                again.set_cookie.is_none(),
                "a client with the cookie keeps it"
            );
        }
        arms_seen.insert(first.served_by);
    }
    // 40 fresh clients on a 50/50 split all landing on one arm has probability 2 * 2^-40.
    assert_eq!(arms_seen.len(), 2);
}

#[test]
fn a_query_parameter_can_be_the_key() {
    let cfg = json!({
        "rollout": "query",
        "arms": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
        "sticky": {"source": "query", "name": "user"}
    });
    let setup = TwoArms::start(&cfg, 2).unwrap();
    let client = ramp_tests::Client::default();
    for u in 0..60 {
        let url = setup.envoy.url(&format!("/predict?x=1&user=q{u}"));
        let arms = [("v1", 50.0), ("v2", 50.0)];
        let want = arms[sticky_arm("query", &format!("q{u}"), arms.iter().copied()).unwrap()].0;
        for _ in 0..2 {
            assert_eq!(client.get(&url, &[]).unwrap().served_by, want, "q{u}");
        }
    }
}
