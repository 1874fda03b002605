//! `guard:` in a rollout spec: the settings of the filters' own guard (`crate::guard` derives
//! what the filters get from them and the stage's rules).

use serde::Deserialize;

use super::SpecError;

/// `guard:` in a rollout spec. On unless `enabled: false`; the defaults are the filter's.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuardSpec {
    #[serde(default = "on")]
    pub enabled: bool,
    /// Per Envoy and stage, the chance that a candidate as good as the rule's bound trips it.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// 5xx a candidate needs in an Envoy before that Envoy's guard can trip.
    #[serde(default)]
    pub min_errors: Option<u64>,
}

fn on() -> bool {
    true
}

impl Default for RawGuardSpec {
    fn default() -> Self {
        RawGuardSpec {
            enabled: true,
            alpha: None,
            min_errors: None,
        }
    }
}

impl RawGuardSpec {
    pub fn validate(self) -> Result<Self, SpecError> {
        if let Some(a) = self.alpha {
            if !(a.is_finite() && a > 0.0 && a <= 0.5) {
                return Err(SpecError {
                    field: "guard.alpha".into(),
                    reason: format!("must be in (0, 0.5], got {a}"),
                });
            }
        }
        if self.min_errors == Some(0) {
            return Err(SpecError {
                field: "guard.min_errors".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(self)
    }
}
