//! A new plugin config: parsed and checked, its Envoy metrics defined, and the worker's state for
//! it built. A config that cannot be made active is refused with a log line naming why, and the
//! previous one (if any) stays.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::guard::GuardState;
use super::{
    Active, Arm, ArmMetrics, BanditState, LiveLink, MomentsState, ShadowState, StreamArm, Worker,
};
use crate::config::{Rollout, ShadowMode};
use crate::counters::WorkerCounts;
use crate::discount::Discounted;
use crate::host::{Host, MetricKind};
use crate::keys::{
    bandit_key, counts_key, guard_key, instance_key, lease_key, moments_key, shadow_key, state_key,
    stream_key,
};
use crate::metrics::{
    all_arm_stat_names, beyond_stat_name, fail_open_stat_name, guard_trips_stat_name,
    max_abs_diff_stat_name, shadow_stat_name, Tally,
};
use crate::report::ArmReport;
use crate::shadow::{Book, ShadowMoments, Totals, TOTAL_NAMES};
use crate::stream::{stream_stat_names, StreamCounts};

impl<H: Host + Clone> Worker<H> {
    /// A new plugin config: `true` when it is active; `false` (logged) keeps the previous one.
    pub fn configure(&mut self, bytes: &[u8]) -> bool {
        let rollout = match Rollout::from_json(bytes) {
            Ok(r) => r,
            Err(e) => {
                log::error!("ramp: {e}; config refused");
                return false;
            }
        };
        // The report token comes from the VM's environment (a Secret), not from the config.
        let report_auth = match rollout
            .controller
            .as_ref()
            .and_then(|c| c.token_env.as_ref())
        {
            None => None,
            Some(name) => match self.host.env(name) {
                Some(token) if !token.is_empty() => Some(format!("Bearer {token}")),
                _ => {
                    log::error!("ramp: invalid ramp config: controller.token_env: {name} is not set in the wasm VM (vm_config.environment_variables); config refused");
                    return false;
                }
            },
        };
        let Some(stream_metrics) = self.define_stream_metrics(&rollout) else {
            log::error!("ramp: cannot define metrics; config refused");
            return false;
        };
        let Some((metrics, fail_open)) = self.define_metrics(&rollout) else {
            log::error!("ramp: cannot define metrics; config refused");
            return false;
        };
        log::info!(
            "ramp: rollout {:?} configured with {} arms",
            rollout.name,
            rollout.arms.len()
        );
        if let Some(old) = self.active.take() {
            self.flush(&old);
        }
        let arms = rollout.arms.len();
        let compare = rollout
            .shadow
            .as_ref()
            .is_some_and(|s| s.mode == ShadowMode::Compare);
        let shadow = match (&rollout.shadow, self.shadow_metrics(&rollout)) {
            (Some(sh), Some(metrics)) => Some(RefCell::new(ShadowState {
                book: Book::new(sh.max_pending),
                calls: Vec::new(),
                totals: Totals::default(),
                next_id: 0,
                queue: self.queue,
                metrics,
                moments: self.moments_state(&rollout),
            })),
            _ => None,
        };
        let live = rollout.controller.as_ref().map(|_| LiveLink {
            lease_key: lease_key(&rollout.name),
            state_key: state_key(&rollout.name),
            applied: Cell::new(None),
            ticks: Cell::new(0),
            call: Cell::new(None),
            known_version: Cell::new(None),
            next_poll_ms: Cell::new(0),
            report_call: Cell::new(None),
            instance_key: instance_key(&rollout.name),
            report_auth,
            shadow_pending: RefCell::new(if compare {
                vec![0; TOTAL_NAMES.len()]
            } else {
                Vec::new()
            }),
            shadow_key: shadow_key(&rollout.name),
        });
        let bandit = rollout.bandit.as_ref().map(|b| BanditState {
            counts: RefCell::new(WorkerCounts::new(arms)),
            discounted: (b.discount < 1.0)
                .then(|| (b.discount, RefCell::new(Discounted::new(arms)))),
        });
        let mut stream_metrics = stream_metrics.into_iter();
        let arms = metrics
            .into_iter()
            .zip(&rollout.arms)
            .map(|(metrics, arm)| Arm {
                metrics,
                counts_key: live.is_some().then(|| counts_key(&rollout.name, &arm.name)),
                unshared: Cell::new(ArmReport::default()),
                bandit_key: bandit
                    .is_some()
                    .then(|| bandit_key(&rollout.name, &arm.name)),
                stream: stream_metrics
                    .next()
                    .flatten()
                    .map(|(buckets, counters)| StreamArm {
                        buckets,
                        counters,
                        key: live.is_some().then(|| stream_key(&rollout.name, &arm.name)),
                        unshared: Cell::new(StreamCounts::default()),
                    }),
            })
            .collect();
        let guard = match (rollout.guard.is_some() || live.is_some())
            .then(|| self.define_guard_metrics(&rollout))
        {
            None => None,
            Some(Some(metrics)) => Some(GuardState::new(
                guard_key(&rollout.name, bytes),
                rollout.baseline,
                rollout.guard,
                metrics,
            )),
            Some(None) => {
                log::error!("ramp: cannot define metrics; config refused");
                return false;
            }
        };
        self.active = Some(Rc::new(Active {
            weights: RefCell::new(rollout.weights()),
            pre_weights: RefCell::new(Vec::new()),
            live,
            tally: RefCell::new(match rollout.stream {
                Some(_) => Tally::with_streams(rollout.arms.len()),
                None => Tally::new(rollout.arms.len()),
            }),
            bandit,
            shadow,
            rollout,
            arms,
            fail_open,
            guard,
        }));
        true
    }

    fn define_metrics(&self, rollout: &Rollout) -> Option<(Vec<ArmMetrics>, u32)> {
        let counter = |name: &str| self.host.define_metric(MetricKind::Counter, name);
        let gauge = |name: &str| self.host.define_metric(MetricKind::Gauge, name);
        let mut out = Vec::with_capacity(rollout.arms.len());
        for names in all_arm_stat_names(rollout) {
            let mut responses = [0u32; 4];
            for (slot, name) in responses.iter_mut().zip(&names.responses) {
                *slot = counter(name)?;
            }
            let bandit = match rollout.bandit {
                Some(_) => Some([
                    counter(&names.bandit_trials)?,
                    counter(&names.bandit_reward_millionths)?,
                    gauge(&names.bandit_share_parts_per_million)?,
                ]),
                None => None,
            };
            out.push(ArmMetrics {
                requests: counter(&names.requests)?,
                local_replies: counter(&names.local_replies)?,
                responses,
                latency_buckets: names
                    .latency_buckets
                    .iter()
                    .map(|n| counter(n))
                    .collect::<Option<_>>()?,
                bandit,
            });
        }
        Some((out, counter(&fail_open_stat_name(&rollout.name))?))
    }

    /// Per arm, `ramp_guard_trips_total`.
    fn define_guard_metrics(&self, rollout: &Rollout) -> Option<Vec<u32>> {
        rollout
            .arms
            .iter()
            .map(|arm| {
                self.host.define_metric(
                    MetricKind::Counter,
                    &guard_trips_stat_name(&rollout.name, &arm.name),
                )
            })
            .collect()
    }

    /// Per arm, the streaming metrics' ids (all `None` without `stream`).
    #[allow(clippy::type_complexity)]
    fn define_stream_metrics(
        &self,
        rollout: &Rollout,
    ) -> Option<Vec<Option<([Vec<u32>; 3], [u32; 4])>>> {
        let counter = |name: &String| self.host.define_metric(MetricKind::Counter, name);
        rollout
            .arms
            .iter()
            .map(|arm| {
                if rollout.stream.is_none() {
                    return Some(None);
                }
                let names = stream_stat_names(&rollout.name, &arm.name);
                let hist = |i: usize| names.buckets[i].iter().map(counter).collect::<Option<_>>();
                let c = |i: usize| counter(&names.counters[i]);
                Some(Some((
                    [hist(0)?, hist(1)?, hist(2)?],
                    [c(0)?, c(1)?, c(2)?, c(3)?],
                )))
            })
            .collect()
    }

    fn shadow_metrics(&self, rollout: &Rollout) -> Option<Vec<u32>> {
        TOTAL_NAMES
            .iter()
            .map(|n| {
                self.host
                    .define_metric(MetricKind::Counter, &shadow_stat_name(&rollout.name, n))
            })
            .collect()
    }

    /// The exact prediction sums, when compare mode compares values (a JSON pointer).
    fn moments_state(&self, rollout: &Rollout) -> Option<MomentsState> {
        let sh = rollout
            .shadow
            .as_ref()
            .filter(|s| s.mode == ShadowMode::Compare && s.json_pointer.is_some())?;
        let beyond_counters = sh
            .disagreement_thresholds
            .iter()
            .map(|&t| {
                self.host
                    .define_metric(MetricKind::Counter, &beyond_stat_name(&rollout.name, t))
            })
            .collect::<Option<_>>()?;
        Some(MomentsState {
            pending: ShadowMoments::with_thresholds(&sh.disagreement_thresholds),
            key: moments_key(&rollout.name),
            max_gauge: self
                .host
                .define_metric(MetricKind::Gauge, &max_abs_diff_stat_name(&rollout.name))?,
            beyond_counters,
        })
    }
}
