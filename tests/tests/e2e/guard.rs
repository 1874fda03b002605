//! The in-filter guard: two Envoys (`--concurrency 2`) in front of the same two model servers,
//! 500 paced requests a second through each, a 50/50 split. The candidate is healthy for 3 s (no
//! trip), then fails one request in three: every Envoy's guard trips once and sends the
//! candidate's requests to the baseline. With a controller, the guard rampctl pushes trips and
//! rampctl rolls the rollout back at once. Timing targets belong to `make bench`
//! (`ramp-bench-guard`) on these shared machines; here the bounds are generous and the figures
//! printed.

use std::time::Duration;

use ramp_tests::guard::{run, Mode, Outcome, Scenario};
use serde_json::json;

fn print(what: &str, o: &Outcome) {
    for (i, e) in o.envoys.iter().enumerate() {
        eprintln!(
            "{what}: envoy {i}: healthy share {:.3} of {}, trips at fault {}, fault -> 0% {:?}, \
             trips {}, {:.0} answers/s, {} transport errors",
            e.healthy_share,
            e.healthy_answers,
            e.trips_at_fault,
            e.fault_to_zero,
            e.trips,
            e.achieved_rps,
            e.errors
        );
    }
    if o.status.is_some() {
        eprintln!(
            "{what}: fault -> rolled_back {:?}; events {:?}",
            o.fault_to_decision, o.events
        );
    }
}

fn assert_healthy_then_zero(o: &Outcome, bound: Duration) {
    for (i, e) in o.envoys.iter().enumerate() {
        assert_eq!(e.trips_at_fault, 0.0, "envoy {i} tripped while healthy");
        assert!(
            (0.35..0.65).contains(&e.healthy_share),
            "envoy {i}: the healthy candidate serves about half: {e:?}"
        );
        let took = e
            .fault_to_zero
            .unwrap_or_else(|| panic!("envoy {i} never routed 0% to the candidate: {e:?}"));
        assert!(
            took <= bound,
            "envoy {i}: fault -> 0% took {took:?} (bound {bound:?})"
        );
    }
}

#[test]
fn the_guard_sends_a_failing_candidates_traffic_to_the_baseline_on_every_envoy() {
    let s = Scenario::new("guard", Mode::Guard(json!({"max_increase": 0.0})));
    let o = run(&s).unwrap();
    print("guard alone", &o);
    assert_healthy_then_zero(&o, Duration::from_secs(2));
    for (i, e) in o.envoys.iter().enumerate() {
        assert_eq!(e.trips, 1.0, "envoy {i} trips once: {e:?}");
        assert_eq!(
            e.share_at_end, 0.0,
            "envoy {i} keeps the candidate off: {e:?}"
        );
    }
}

/// rampctl's guard derived from `error_rate_vs_baseline max 0` (`max_increase: 0`): the guard
/// trips on both Envoys, rampctl confirms the trip with the fleet's figures and rolls back.
#[test]
fn the_guard_rampctl_pushes_trips_and_rampctl_rolls_back() {
    let s = Scenario::new(
        "guarded",
        Mode::Controller {
            rule: "{metric: error_rate_vs_baseline, max: 0.0, min_samples: 10}".into(),
            guard: true,
        },
    );
    let o = run(&s).unwrap();
    print("rampctl with the guard", &o);
    assert_rolled_back_by_the_guard(&o, ("max_increase", 0.0), Duration::from_secs(2));
}

/// The same with rule `error_rate max 0.05`, from which rampctl derives a bound
/// (`max_error_rate: 0.05`), at 1,000 requests/s per Envoy, where both Envoys' guards often trip
/// (within about 0.3 s) before the fleet's figures confirm the rule. The candidate then gets no
/// more traffic, so no more evidence: this once left the rollout `progressing` with the candidate
/// cut off (5 of 10 bench runs), and before that paused on the sample-ratio check, serving the
/// candidate again (8 of 10). Now a candidate every Envoy cut off is rolled back, and the
/// sample-ratio check stands aside once a guard has tripped.
#[test]
fn the_guard_rampctl_derives_from_a_bound_trips_and_rampctl_rolls_back() {
    let mut s = Scenario::new(
        "bounded",
        Mode::Controller {
            rule: "{metric: error_rate, max: 0.05, min_samples: 10}".into(),
            guard: true,
        },
    );
    s.rps_per_envoy = 1000.0;
    let o = run(&s).unwrap();
    print("rampctl with the guard from a bound", &o);
    // A bound needs more 5xx than a clean baseline to be ruled out (main's bound for it: 4 s).
    assert_rolled_back_by_the_guard(&o, ("max_error_rate", 0.05), Duration::from_secs(4));
}

/// `guard`: the field of the guard rampctl derived from the rule, and its value.
fn assert_rolled_back_by_the_guard(o: &Outcome, guard: (&str, f64), bound: Duration) {
    let status = o.status.as_ref().unwrap();
    assert_eq!(status["phase"], "rolled_back", "{status}");
    // Status shows the guard the filters ran and how many Envoys' guards cut the candidate off.
    assert_eq!(status["guard"][guard.0], guard.1, "{status}");
    assert!(
        status["guard"]["tripped"]["v2"].as_u64() >= Some(1),
        "{status}"
    );
    assert!(
        status["reason"]
            .as_str()
            .is_some_and(|r| r.contains("confirming the guard's trip") || r.contains("cut v2 off")),
        "{status}"
    );
    assert!(
        o.events.iter().any(|(k, _)| k == "guard_tripped"),
        "a guard event in the history: {:?}",
        o.events
    );
    assert_healthy_then_zero(o, bound);
    assert!(
        o.envoys.iter().any(|e| e.trips >= 1.0),
        "a guard tripped: {:?}",
        o.envoys
    );
    for (i, e) in o.envoys.iter().enumerate() {
        assert_eq!(
            e.share_at_end, 0.0,
            "envoy {i}: the candidate gets no traffic after the rollback: {e:?}"
        );
    }
}
