//! The hooks a spec names (`spec::Hook`): gates a transition must pass (`before_start`,
//! `before_step`, `before_promotion`) and notifications (`event`, `on_rollback`). Each call blocks
//! a thread (ureq), so calls are bounded here, all rollouts together and per rollout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::clock::now_ms;
use crate::record::Record;
use crate::redact::redact_text;
use crate::spec::{HookFormat, HookPoint, Spec, HOOK_BUDGET_S};
use crate::status::weights_json;

/// POSTs `event` to every hook at `point` through `agent` (`tls::Outgoing::hooks`, which follows
/// no redirects); the first failure (after retries) is the error. All attempts together stop at
/// `HOOK_BUDGET_S`. Blocking: run it on a blocking thread.
pub fn run_hooks(
    agent: &ureq::Agent,
    spec: &Spec,
    point: HookPoint,
    event: &Value,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs_f64(HOOK_BUDGET_S);
    for hook in spec.hooks.iter().filter(|h| h.on == point) {
        let mut last = String::new();
        let ok = (0..=hook.retries).any(|_| {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                last = format!("out of the hooks' {HOOK_BUDGET_S} s budget");
                return false;
            }
            let body = match hook.format {
                HookFormat::Json => event.to_string(),
                HookFormat::Slack => json!({ "text": slack_text(event) }).to_string(),
            };
            let sent = agent
                .post(&hook.url)
                .timeout(Duration::from_secs_f64(hook.timeout_s).min(left))
                .set("content-type", "application/json")
                .send_string(&body);
            match sent {
                Ok(r) if (200..300).contains(&r.status()) => true,
                Ok(r) => {
                    last = format!("answered {} (only a 2xx passes)", r.status());
                    false
                }
                Err(e) => {
                    last = crate::tls::explain(&e);
                    false
                }
            }
        });
        if !ok {
            return Err(redact_text(&format!(
                "{point:?} hook {} failed: {last}",
                hook.url
            )));
        }
    }
    Ok(())
}

/// Hook calls block a thread each (ureq). They take a slot here before they take a thread, so
/// they never use up the blocking pool the store (SQLite) and the specs scan need, and a flood
/// of notifications to an endpoint that never answers cannot delay another rollout's gate.
static GATE_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(GATE_HOOKS_AT_ONCE);
static NOTICE_SLOTS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(NOTICE_HOOKS_AT_ONCE);
/// Gating hooks (`before_*`) running at once, all rollouts together; more wait their turn.
pub const GATE_HOOKS_AT_ONCE: usize = 32;
/// Notifications (`event`, `on_rollback`) in flight at once, all rollouts together, and per
/// rollout; past either, a notification is dropped and logged (it changes nothing anyway).
pub const NOTICE_HOOKS_AT_ONCE: usize = 32;
pub const NOTICES_PER_ROLLOUT: usize = 4;
static NOTICES_IN_FLIGHT: std::sync::Mutex<std::collections::BTreeMap<String, usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

pub async fn call(
    agent: &ureq::Agent,
    spec: &Arc<Spec>,
    point: HookPoint,
    event: Value,
) -> Result<(), String> {
    let notice = matches!(point, HookPoint::Event | HookPoint::OnRollback);
    let _slot = if notice {
        let Ok(slot) = NOTICE_SLOTS.try_acquire() else {
            return Err(format!(
                "{point:?} hook dropped: {NOTICE_HOOKS_AT_ONCE} notifications are in flight already"
            ));
        };
        slot
    } else {
        GATE_SLOTS
            .acquire()
            .await
            .map_err(|e| format!("hook slots: {e}"))?
    };
    // Per rollout, for notifications: released when this call ends, however it ends.
    struct InFlight(Option<String>);
    impl Drop for InFlight {
        fn drop(&mut self) {
            if let Some(name) = self.0.take() {
                let mut m = NOTICES_IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(n) = m.get_mut(&name) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        m.remove(&name);
                    }
                }
            }
        }
    }
    let _in_flight = if notice {
        let mut m = NOTICES_IN_FLIGHT.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(spec.name.clone()).or_insert(0);
        if *n >= NOTICES_PER_ROLLOUT {
            return Err(format!(
                "{point:?} hook dropped: {NOTICES_PER_ROLLOUT} notifications of this rollout are in flight already"
            ));
        }
        *n += 1;
        InFlight(Some(spec.name.clone()))
    } else {
        InFlight(None)
    };
    let (agent, spec) = (agent.clone(), spec.clone());
    tokio::task::spawn_blocking(move || run_hooks(&agent, &spec, point, &event))
        .await
        .unwrap_or_else(|e| Err(format!("hook task: {e}")))
}

/// One line for a chat channel: `Ramp fraud-model: rolled_back: stage 2 (10%): error rate ...`.
fn slack_text(event: &Value) -> String {
    let field = |k: &str| event[k].as_str().map(str::to_owned);
    let what = field("kind").or_else(|| field("hook")).unwrap_or_default();
    let detail = field("detail")
        .or_else(|| field("reason"))
        .unwrap_or_default();
    let weights = event["weights"]
        .as_object()
        .map(|w| {
            let shown: Vec<String> = w.iter().map(|(a, p)| format!("{a} {p}%")).collect();
            format!(" [{}]", shown.join(", "))
        })
        .unwrap_or_default();
    format!(
        "Ramp {}: {what}{weights}: {detail}",
        field("rollout").unwrap_or_default()
    )
}

/// The `event` hooks' JSON: the transition and where the rollout stands after it.
pub fn event_payload(spec: &Spec, rec: &Record, kind: &str, detail: &str) -> Value {
    let weights = weights_json(&rec.state, spec);
    json!({"rollout": rec.name, "hook": HookPoint::Event, "kind": kind, "detail": detail,
           "phase": rec.state.phase, "stage": rec.state.stage + 1, "weights": weights,
           "version": rec.version, "at_ms": now_ms()})
}

/// Tells the `event` hooks; their answer changes nothing, a failure is only logged.
pub async fn notify_event(agent: ureq::Agent, spec: Arc<Spec>, payload: Value) {
    if let Err(e) = call(&agent, &spec, HookPoint::Event, payload).await {
        eprintln!("rampctl: {}: {e}", spec.name);
    }
}

/// Tells the `on_rollback` hooks; their answer changes nothing, a failure is only logged.
pub async fn notify_rollback(agent: ureq::Agent, spec: Arc<Spec>, reason: Option<String>) {
    let payload = json!({"rollout": spec.name, "hook": HookPoint::OnRollback, "reason": reason});
    if let Err(e) = call(&agent, &spec, HookPoint::OnRollback, payload).await {
        eprintln!("rampctl: {}: {e}", spec.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Outgoing;

    /// Issue 20, item 9: a 3xx from a gating hook passed (ureq followed it as a GET). Only a 2xx
    /// passes now, and nothing is followed.
    #[test]
    fn a_hook_that_redirects_does_not_pass() {
        let redirect = ramp_tests::canned::CannedServer::start(0, 302, "moved").unwrap();
        let ok = ramp_tests::canned::CannedServer::start(0, 204, "").unwrap();
        let spec = |port: u16| {
            Spec::parse(&format!("name: r\narms: [{{name: v1, role: baseline}}, {{name: v2, role: candidate}}]\nhooks: [{{on: before_step, url: 'http://127.0.0.1:{port}/gate', retries: 0}}]\nstages: [{{weight: 10}}, {{weight: 100}}]\n")).unwrap()
        };
        let event = json!({"rollout": "r"});
        let agent = Outgoing::new(None).unwrap().hooks;
        let refused =
            run_hooks(&agent, &spec(redirect.port), HookPoint::BeforeStep, &event).unwrap_err();
        assert!(
            refused.contains("answered 302 (only a 2xx passes)"),
            "{refused}"
        );
        assert!(run_hooks(&agent, &spec(ok.port), HookPoint::BeforeStep, &event).is_ok());
    }
}
