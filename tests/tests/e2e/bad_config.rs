//! A bad filter config makes Envoy refuse it, and Envoy's log carries our message naming the field.

use ramp_tests::{two_arm_config, Envoy};
use serde_json::json;

fn refused_with(cfg: serde_json::Value, message: &str) {
    let config = two_arm_config(&cfg, 1, 1).unwrap();
    let log = Envoy::start_expecting_refusal(&config).unwrap();
    assert!(
        log.contains(message),
        "expected {message:?} in Envoy's log:\n{log}"
    );
}

#[test]
fn negative_weight_is_refused_naming_the_field() {
    refused_with(
        json!({"rollout": "bad", "arms": [{"name": "v1", "weight": 10}, {"name": "v2", "weight": -5}]}),
        "invalid ramp config: arms[1].weight: must be a finite number >= 0, got -5; config refused",
    );
}

#[test]
fn all_zero_weights_unknown_fields_and_unknown_override_targets_are_refused() {
    refused_with(
        json!({"rollout": "bad", "arms": [{"name": "v1", "weight": 0}, {"name": "v2", "weight": 0}]}),
        "invalid ramp config: arms: every weight is zero",
    );
    refused_with(
        json!({"rollout": "bad", "arms": [{"name": "v1", "weight": 1}], "stickyy": {}}),
        "invalid ramp config: stickyy: unknown field `stickyy`",
    );
    refused_with(
        json!({"rollout": "bad", "arms": [{"name": "v1", "weight": 1}],
               "override": {"header": "canary", "values": {"true": "v3"}}}),
        "invalid ramp config: override.values.true: names no arm: \"v3\"",
    );
}
