//! The response side of the request path: the outcome counted into the tally, the bandit's
//! reward, and the headers the response carries (the arm, a new sticky cookie, the decision id).

use super::Exchange;
use crate::config::Reward;
use crate::host::{Host, Map};
use crate::metrics::class_index;
use crate::shadow::UPSTREAM_TIME_HEADER;
use crate::stream::Watch;

impl<H: Host> Exchange<H> {
    pub(super) fn response_headers(&mut self) {
        let (Some(active), Some(chosen)) = (self.active.clone(), self.chosen.take()) else {
            return;
        };
        let status = self
            .host
            .header(Map::Response, ":status")
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u32>().ok());
        // One clock read per response serves the tally, the shadow and the bandit.
        let elapsed_us = self.host.now_us().saturating_sub(chosen.started_us);
        if let Some(class) = status.and_then(class_index) {
            if let Some(guard) = &active.guard {
                guard.count(&self.host, chosen.arm, class == 3);
            }
            active.count(|t| {
                t.add_response(chosen.arm, class, elapsed_us, chosen.bucket);
                if let (3, Some(p), Some(b)) = (class, chosen.pre_arm, chosen.bucket) {
                    t.add_pre_error(p, b);
                }
            });
        }
        // Envoy's own replies (a fault, no route, no upstream) are 4xx/5xx without the router's
        // upstream-time header: the model never saw the request. One more header read, on
        // errors only, keeps the healthy path's cost.
        if status.is_some_and(|s| (400..600).contains(&s))
            && self
                .host
                .header(Map::Response, UPSTREAM_TIME_HEADER)
                .is_none()
        {
            active.count(|t| t.add_local_reply(chosen.arm));
        }
        if let Some(copy) = self.shadow.as_mut() {
            copy.primary = Some((status, elapsed_us / 1000));
        }
        let rollout = &active.rollout;
        if let Some(stream) = rollout
            .stream
            .filter(|_| status.is_some_and(|s| (200..300).contains(&s)))
        {
            let event_stream = || {
                self.host
                    .header(Map::Response, "content-type")
                    .is_some_and(|v| v.starts_with(b"text/event-stream"))
            };
            if !stream.event_stream_only || event_stream() {
                self.watch = Some(Watch {
                    arm: chosen.arm,
                    started_us: chosen.started_us,
                    first_byte_us: None,
                    tail: stream.tokens.then(Vec::new),
                });
            }
        }
        if let (Some(state), Some(b)) = (&active.bandit, &rollout.bandit) {
            let reward = match &b.reward {
                Reward::Header(name) => {
                    let value = self.host.header(Map::Response, name);
                    self.host.set_header(Map::Response, name, None);
                    value.map_or(0.0, |v| Reward::parse_header_value(&v))
                }
                other => other
                    .from_status_and_latency(status.unwrap_or(0), elapsed_us / 1000)
                    .unwrap_or(0.0),
            };
            if let Ok(mut counts) = state.counts.try_borrow_mut() {
                counts.record(chosen.arm, reward);
            }
        }
        let arm = rollout.arms.get(chosen.arm);
        // In a pre-period the decision id names the arm the experiment will give the user, so
        // the feedback posted for it becomes that arm's covariate (`.pre`), not its reward.
        let decided = chosen.pre_arm.and_then(|p| rollout.arms.get(p)).or(arm);
        if let (Some(header), Some(arm)) = (&rollout.response_header, arm) {
            self.host.set_header(Map::Response, header, Some(&arm.name));
        }
        if let Some(cookie) = chosen.set_cookie {
            self.host.add_header(Map::Response, "set-cookie", &cookie);
        }
        if let (Some(header), Some(arm)) = (&rollout.decision_header, decided) {
            let random = self.rng.try_borrow_mut().map_or(0, |mut r| r.u64(..));
            // Without a bucket the id's top bits stay random, as the controller reads them.
            let id = chosen
                .bucket
                .map_or(random, |b| ramp_protocol::decision::with_bucket(random, b));
            let mut decision = ramp_protocol::decision::format_decision(&arm.name, id);
            if chosen.pre_arm.is_some() {
                decision.push_str(ramp_protocol::decision::PRE_PERIOD_SUFFIX);
            }
            self.host.set_header(Map::Response, header, Some(&decision));
        }
    }
}
