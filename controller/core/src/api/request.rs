//! What an operator sends: commands and feedback, read from JSON with the API's field errors.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{field, FieldError};
use crate::machine::Command;

/// `POST /v1/rollouts/{name}/commands`: `{"command": "pause"}`, `{"command": "set_weight",
/// "weight": 30}`, `{"command": "promote", "arm": "v3"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandRequest {
    #[serde(flatten)]
    pub command: Command,
    /// With `promote` or `promote_full`: the candidate that takes the candidates' share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
}

impl CommandRequest {
    /// The command a JSON body asks for.
    pub fn from_json(v: &Value) -> Result<Self, FieldError> {
        let command: Command = match serde_json::from_value(v.clone()) {
            Ok(c) => c,
            Err(_) if v["command"] == "set_weight" => {
                return Err(field(
                    "weight",
                    "required with set_weight, the candidate's percentage in [0, 100]",
                ))
            }
            Err(_) => {
                return Err(field(
                    "command",
                    "one of promote, promote_full, pause, resume, roll_back, abort, set_weight",
                ))
            }
        };
        // `promote` may name the candidate to promote when there are several.
        let arm = match (&v["arm"], command) {
            (Value::Null, _) => None,
            (Value::String(a), Command::Promote | Command::PromoteFull) => Some(a.clone()),
            (Value::String(_), _) => return Err(field("arm", "only with promote or promote_full")),
            _ => return Err(field("arm", "the name of a candidate arm")),
        };
        Ok(Self { command, arm })
    }
}

/// `POST /v1/rollouts/{name}/feedback`: delayed feedback for one decision (the id the filter put
/// in the decision header), `{"decision": "v2.00000000000000ab", "correct": true}` (ground
/// truth) and/or `"reward": 0.7`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackRequest {
    pub decision: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward: Option<f64>,
}

impl FeedbackRequest {
    /// The feedback a JSON body gives; the decision id must be one the filters make.
    pub fn from_json(v: &Value) -> Result<Self, FieldError> {
        if let Some(extra) = v.as_object().and_then(|o| {
            o.keys()
                .find(|k| !["decision", "correct", "reward"].contains(&k.as_str()))
        }) {
            let shown: String = extra.chars().take(32).collect();
            return Err(field(&shown, "unknown field (decision, correct, reward)"));
        }
        let decision = v["decision"]
            .as_str()
            .ok_or_else(|| field("decision", "required, the id from the decision header"))?;
        let (id, _) = ramp_protocol::decision::split_pre_period(decision);
        ramp_protocol::decision::parse_decision(id).map_err(|r| field("decision", r))?;
        let correct = v
            .get("correct")
            .map(|c| {
                c.as_bool()
                    .ok_or_else(|| field("correct", "must be true or false"))
            })
            .transpose()?;
        let reward = v
            .get("reward")
            .map(|r| {
                r.as_f64()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| field("reward", "must be a number in [0, 1]"))
            })
            .transpose()?;
        if correct.is_none() && reward.is_none() {
            return Err(field("correct", "give correct (ground truth) or reward"));
        }
        Ok(Self {
            decision: decision.to_owned(),
            correct,
            reward,
        })
    }
}

/// The answer to feedback: false when the decision already had some (feedback is idempotent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackAnswer {
    pub recorded: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn commands_read_and_written_as_the_api_has_them() {
        for body in [
            json!({"command": "pause"}),
            json!({"command": "set_weight", "weight": 30.0}),
            json!({"command": "promote", "arm": "v3"}),
        ] {
            let c = CommandRequest::from_json(&body).unwrap();
            assert_eq!(serde_json::to_value(&c).unwrap(), body);
        }
        let refused = |v: Value| CommandRequest::from_json(&v).unwrap_err().to_string();
        assert!(refused(json!({"command": "set_weight"})).starts_with("weight: required"));
        assert!(refused(json!({"command": "jump"})).starts_with("command: one of"));
        assert_eq!(
            refused(json!({"command": "pause", "arm": "v2"})),
            "arm: only with promote or promote_full"
        );
    }

    #[test]
    fn feedback_errors_come_in_the_order_they_always_did() {
        let refused = |v: Value| FeedbackRequest::from_json(&v).unwrap_err().field;
        assert_eq!(refused(json!({"decision": "x", "extra": 1})), "extra");
        assert_eq!(refused(json!({"correct": "yes"})), "decision");
        assert_eq!(
            refused(json!({"decision": "x", "correct": "yes"})),
            "decision"
        );
        let id = "v2.00000000000000ab";
        assert_eq!(
            refused(json!({"decision": id, "correct": "yes"})),
            "correct"
        );
        assert_eq!(refused(json!({"decision": id, "reward": 2})), "reward");
        assert_eq!(refused(json!({"decision": id})), "correct");
        let ok = FeedbackRequest::from_json(&json!({"decision": id, "reward": 0.5})).unwrap();
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            json!({"decision": id, "reward": 0.5})
        );
    }
}
