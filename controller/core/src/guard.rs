//! The guard a rollout pushes to its filters (`LiveGuard`): each Envoy runs a sequential test on
//! every candidate's 5xx and cuts a failing one off itself, in well under a second, instead of
//! waiting for the controller's checks. Derived here from the stage's error-rate rules, so the
//! filters cut off what the rules would roll back, and nothing the rules would let pass.

use std::collections::{BTreeMap, BTreeSet};

use ramp_protocol::live::LiveGuard;

use crate::machine::{Phase, State};
use crate::spec::{Bound, Metric, OnFail, Rule, Spec};

/// The rule a guard stands in for, and its bound: an acting (not dry-run) error-rate rule that
/// rolls back. `error_rate_vs_baseline` and `error_rate` with `max_worse_than_baseline` give a
/// margin over the baseline; `error_rate` with `max` a bound. With several, the first relative
/// one (a fleet whose baseline fails too must not cut a candidate that is no worse).
fn guarded(rules: &[Rule]) -> Option<(Option<f64>, Option<f64>)> {
    let acting = || {
        rules
            .iter()
            .filter(|r| !r.dry_run && r.on_fail == OnFail::Rollback)
    };
    let relative = acting().find_map(|r| match (r.metric, r.bound) {
        // A margin of 1 or more can never be exceeded: nothing to guard (and the filters refuse it).
        (Metric::ErrorRateVsBaseline, Bound::Max(d) | Bound::WorseThanBaseline(d))
        | (Metric::ErrorRate, Bound::WorseThanBaseline(d))
            if d < 1.0 =>
        {
            Some((None, Some(d.max(0.0))))
        }
        _ => None,
    });
    relative.or_else(|| {
        acting().find_map(|r| match (r.metric, r.bound) {
            (Metric::ErrorRate, Bound::Max(p)) if p > 0.0 && p < 1.0 => Some((Some(p), None)),
            _ => None,
        })
    })
}

/// Whether a failing rule is one the guard stands in for: a trip it confirms is final.
pub fn confirms(rule: &Rule) -> bool {
    guarded(std::slice::from_ref(rule)).is_some()
}

/// The guard the filters get while candidates serve users in a stage with an error-rate rule:
/// its epoch is the stage's start, so a trip holds for the stage it happened in.
pub fn live_guard(spec: &Spec, state: &State) -> Option<LiveGuard> {
    let g = spec.guard;
    // Paused, the candidate still serves at its weight: the guard stays with it.
    let live = matches!(state.phase, Phase::Progressing | Phase::Paused);
    if !g.enabled || !live || state.in_pre_period(spec) {
        return None;
    }
    let stage = spec.stages.get(state.stage)?;
    let (max_error_rate, max_increase) = guarded(&stage.rules)?;
    let serving = state.weights(spec).1 > 0.0;
    serving.then_some(LiveGuard {
        epoch: state.stage_started_ms.max(1),
        alpha: g.alpha,
        min_errors: g.min_errors,
        max_error_rate,
        max_increase,
    })
}

/// One Envoy's guard cutting one candidate off, as its report said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    pub instance: String,
    pub arm: String,
    pub epoch: u64,
}

/// The trips the filters reported: per Envoy the newest epoch's arms, and those no check has
/// judged yet. Only the newest epoch's are kept (an older stage's trips judge nothing), so it
/// holds at most the report book's Envoys times the arms.
#[derive(Debug, Default)]
pub struct TripBook {
    by_instance: BTreeMap<String, (u64, BTreeSet<String>)>,
    unjudged: Vec<Trip>,
    newest: u64,
}

impl TripBook {
    /// A report's `guard`: true when it names a trip not seen before, so the rollout is judged
    /// at once instead of at its next check.
    pub fn observe(&mut self, instance: &str, epoch: u64, tripped: &[String]) -> bool {
        if epoch < self.newest {
            return false;
        }
        if epoch > self.newest {
            self.newest = epoch;
            self.by_instance.retain(|_, (e, _)| *e == epoch);
            self.unjudged.retain(|t| t.epoch == epoch);
        }
        let entry = self
            .by_instance
            .entry(instance.to_owned())
            .or_insert_with(|| (epoch, BTreeSet::new()));
        if epoch < entry.0 {
            return false; // a report from before this Envoy's newest epoch
        }
        if epoch > entry.0 {
            *entry = (epoch, BTreeSet::new());
        }
        let mut new = false;
        for arm in tripped {
            if entry.1.insert(arm.clone()) {
                self.unjudged.push(Trip {
                    instance: instance.to_owned(),
                    arm: arm.clone(),
                    epoch,
                });
                new = true;
            }
        }
        new
    }

    /// The trips of `epoch` no check has judged yet (those of other epochs are dropped: their
    /// stage is over).
    pub fn take_unjudged(&mut self, epoch: Option<u64>) -> Vec<Trip> {
        let all = std::mem::take(&mut self.unjudged);
        all.into_iter().filter(|t| Some(t.epoch) == epoch).collect()
    }

    /// Per candidate, how many Envoys cut it off in `epoch` (status).
    pub fn tripped(&self, epoch: u64) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (e, arms) in self.by_instance.values() {
            if *e == epoch {
                for a in arms {
                    *out.entry(a.clone()).or_default() += 1;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rules: &str, guard: &str) -> Spec {
        Spec::parse(&format!("name: r\narms: [{{name: v1, role: baseline}}, {{name: v2, role: candidate}}]\n{guard}stages:\n  - {{weight: 10, rules: [{rules}]}}\n  - {{weight: 100}}\n")).unwrap()
    }

    #[test]
    fn the_guard_follows_the_error_rules_that_roll_back() {
        let state = |s: &Spec| State::start(s, 5);
        let s = spec("{metric: error_rate, max: 0.05}", "");
        let g = live_guard(&s, &state(&s)).unwrap();
        assert_eq!(
            (g.epoch, g.max_error_rate, g.max_increase),
            (5, Some(0.05), None)
        );
        let s = spec(
            "{metric: error_rate, max: 0.05}, {metric: error_rate_vs_baseline, max: 0.01}",
            "guard: {alpha: 0.01, min_errors: 8}\n",
        );
        let g = live_guard(&s, &state(&s)).unwrap();
        assert_eq!(
            (g.max_error_rate, g.max_increase, g.alpha, g.min_errors),
            (None, Some(0.01), Some(0.01), Some(8)),
            "relative first"
        );
        for rules in [
            "{metric: latency_p95, max: 100}",
            "{metric: error_rate, max: 0.05, dry_run: true}",
            "{metric: error_rate, max: 0.05, on_fail: pause}",
        ] {
            let s = spec(rules, "");
            assert_eq!(live_guard(&s, &state(&s)), None, "{rules}");
        }
        let s = spec(
            "{metric: error_rate, max: 0.05}",
            "guard: {enabled: false}\n",
        );
        assert_eq!(live_guard(&s, &state(&s)), None);
        // A margin the candidate can never exceed guards nothing.
        let s = spec("{metric: error_rate_vs_baseline, max: 1.0}", "");
        assert_eq!(live_guard(&s, &state(&s)), None);
        // Paused, the candidate still serves: the guard stays.
        let s = spec("{metric: error_rate, max: 0.05}", "");
        let mut paused = state(&s);
        paused.phase = Phase::Paused;
        assert!(live_guard(&s, &paused).is_some());
        let mut done = state(&s);
        done.phase = Phase::RolledBack;
        let s = spec("{metric: error_rate, max: 0.05}", "");
        assert_eq!(live_guard(&s, &done), None);
    }

    #[test]
    fn a_trip_is_new_once_per_envoy_arm_and_epoch() {
        let mut book = TripBook::default();
        let v2 = ["v2".to_owned()];
        assert!(book.observe("a", 5, &v2));
        assert!(!book.observe("a", 5, &v2), "the same trip again");
        assert!(book.observe("b", 5, &v2), "another Envoy");
        assert!(!book.observe("a", 4, &v2), "an older epoch");
        assert_eq!(book.tripped(5)["v2"], 2);
        assert_eq!(book.take_unjudged(Some(5)).len(), 2);
        assert!(book.take_unjudged(Some(5)).is_empty());
        assert!(book.observe("a", 6, &v2), "the next stage");
        assert!(
            !book.observe("b", 5, &v2),
            "a report from a stage that is over"
        );
        assert_eq!(
            book.by_instance.len(),
            1,
            "the older stage's trips are dropped"
        );
        assert!(
            book.take_unjudged(Some(7)).is_empty(),
            "a stage that is over"
        );
    }

    #[test]
    fn bad_guard_settings_are_refused_by_field() {
        for (guard, field) in [
            ("guard: {alpha: 0}\n", "guard.alpha"),
            ("guard: {alpha: 0.9}\n", "guard.alpha"),
            ("guard: {min_errors: 0}\n", "guard.min_errors"),
            ("guard: {enable: false}\n", "guard"),
        ] {
            let text = format!("name: r\narms: [{{name: v1, role: baseline}}, {{name: v2, role: candidate}}]\n{guard}stages: [{{weight: 10}}, {{weight: 100}}]\n");
            let e = Spec::parse(&text).unwrap_err().to_string();
            assert!(e.contains(field), "{guard}: {e}");
        }
    }
}
