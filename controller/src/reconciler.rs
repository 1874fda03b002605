//! One task per rollout, in the manner of kube-rs' `reconcile -> Action { requeue_after }`: read
//! the rollout's figures, run the pure `machine::step` on them, run the hooks the decision needs,
//! store the result if nobody changed the rollout meanwhile, publish it, and sleep until the next
//! check or a wake-up. All IO (Prometheus, hooks, SQLite) happens here, without any lock held
//! across it, so a slow hook or metric source delays only its own rollout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::bestarm::{best_arm, BestArm};
use crate::exposure::ExposureTest;
use crate::guardrail::{self, GUARDRAIL_ALPHA};
use crate::lookback::Lookback;
use crate::machine::{self, Action, Phase, State};
use crate::redact::redact_text;
use crate::registry::{Loaded, Rollout, View};
use crate::report::DecisionRecord;
use crate::rules::{ArmWindow, Look};
use crate::server::{now_ms, App};
use crate::spec::{Bound, HookFormat, HookPoint, Rule, Spec, HOOK_BUDGET_S};
use crate::store::{NewEvent, Record};
use crate::summary::{figures, weights_json};
use crate::tls::Outgoing;
use crate::window::{window, Totals};

/// Longest a Prometheus source may take to answer one check.
const PROMETHEUS_BUDGET: Duration = Duration::from_secs(10);

/// The rollout's cumulative totals now: the filters' reports (or Prometheus), the shadow
/// comparisons and the feedback. No lock is held while Prometheus answers.
pub async fn totals_now(
    outgoing: &Outgoing,
    handle: &Rollout,
    spec: &Spec,
) -> Result<Totals, String> {
    let from_prometheus = prometheus_totals(outgoing, spec).await?;
    Ok(complete_totals(handle, spec, from_prometheus))
}

/// The request figures from the rollout's Prometheus source, if it has one.
async fn prometheus_totals(outgoing: &Outgoing, spec: &Spec) -> Result<Option<Totals>, String> {
    let Some(url) = &spec.prometheus else {
        return Ok(None);
    };
    let (url, name) = (url.clone(), spec.name.clone());
    let agent = outgoing.prometheus.clone();
    let query =
        tokio::task::spawn_blocking(move || crate::prometheus::fetch_totals(&agent, &url, &name));
    match tokio::time::timeout(PROMETHEUS_BUDGET, query).await {
        Ok(Ok(Ok(t))) => Ok(Some(t)),
        Ok(Ok(Err(e))) => Err(redact_text(&e.to_string())),
        Ok(Err(e)) => Err(format!("prometheus query task: {e}")),
        Err(_) => Err(format!(
            "prometheus did not answer within {} s",
            PROMETHEUS_BUDGET.as_secs()
        )),
    }
}

/// `totals_now` once Prometheus (if it is the source) has answered: the reports' sums (all
/// instances' newest reports: CPU work, so checks do it on a blocking thread), the shadow
/// comparisons and the feedback.
fn complete_totals(handle: &Rollout, spec: &Spec, from_prometheus: Option<Totals>) -> Totals {
    let (from_reports, shadow, feedback) = {
        let book = handle.reports();
        (
            spec.prometheus.is_none().then(|| book.totals()),
            book.shadow(),
            book.feedback.clone(),
        )
    };
    let mut totals = from_reports.or(from_prometheus).unwrap_or_default();
    // Copies are mirrored to the candidate; only the filters report comparisons (either source).
    totals.entry(spec.candidate.clone()).or_default().shadow = shadow;
    for (arm, f) in feedback {
        let t = totals.entry(arm).or_default();
        t.labelled = f.labelled;
        t.correct = f.correct;
        t.reward_micros = f.reward_micros;
        t.buckets.reward_micros = f.bucket_reward_micros;
        t.buckets.pre_reward_micros = f.bucket_pre_reward_micros;
    }
    totals
}

/// For each rule of the current stage and each candidate, the (candidate, baseline) windows it is
/// judged on: the most recent one (now minus an earlier check's totals, newest first) that holds
/// its `min_samples`, else the whole stage. Indexed `[rule][candidate]`. `Lookback` finds that
/// check without building a window per earlier check, so this costs the same with 10 or 600 kept.
pub fn judged_windows(
    rec: &Record,
    spec: &Spec,
    totals: &Totals,
    earlier: &Lookback,
) -> Vec<Vec<(ArmWindow, ArmWindow)>> {
    let rules: &[Rule] = spec
        .stages
        .get(rec.state.stage)
        .map(|s| s.rules.as_slice())
        .unwrap_or_default();
    // Rules that chose the same start (often all: the stage's) share its windows, built once per
    // arm: the baseline's otherwise again for every rule and candidate.
    let mut built: HashMap<(Option<usize>, &str), ArmWindow> = HashMap::new();
    let mut window_from = |from: Option<usize>, arm| {
        built
            .entry((from, arm))
            .or_insert_with(|| {
                let base = from.and_then(|i| earlier.get(i)).unwrap_or(&rec.base);
                window(totals, base, arm)
            })
            .clone()
    };
    rules
        .iter()
        .map(|rule| {
            // Only a relative bound (or a comparison of distributions) needs the baseline's
            // samples too.
            let relative =
                matches!(rule.bound, Bound::WorseThanBaseline(_)) || rule.metric.against_baseline();
            spec.candidates
                .iter()
                .map(|candidate| {
                    let from = earlier.newest_holding(
                        totals,
                        rule.metric,
                        rule.min_samples,
                        candidate,
                        relative.then_some(spec.baseline.as_str()),
                    );
                    (
                        window_from(from, candidate.as_str()),
                        window_from(from, spec.baseline.as_str()),
                    )
                })
                .collect()
        })
        .collect()
}

/// For each rule of the current stage and each candidate, the windows the rule is judged on and
/// the level of each (`guardrail`): the whole stage, and the windows since the 1st, 2nd, 4th,
/// 8th, ... latest check (those still kept), so a candidate that turns bad late in a long stage
/// is caught from the checks since. `checks` counts this stage's checks before this one (the
/// snapshots pushed to `earlier`). The stage's alpha is split evenly over its rules and
/// candidates, and each rule's over the windows' starts by `guardrail::start_weight`: the
/// chance that any rule ever fails a candidate within its bounds in this stage is at most
/// `GUARDRAIL_ALPHA`, however many checks it lasts. Indexed `[rule][candidate][window]`.
pub fn rule_looks(
    rec: &Record,
    spec: &Spec,
    totals: &Totals,
    earlier: &Lookback,
    checks: u64,
) -> Vec<Vec<Vec<Look>>> {
    let rules: &[Rule] = spec
        .stages
        .get(rec.state.stage)
        .map(|s| s.rules.as_slice())
        .unwrap_or_default();
    let tests = (rules.len() * spec.candidates.len()).max(1) as f64;
    let per_rule = GUARDRAIL_ALPHA / tests;
    // (start, snapshot): the stage's base is start 0; snapshot i (newest first) holds the totals
    // after check `checks - i` of this stage.
    let mut starts: Vec<(u64, &Totals)> = vec![(0, &rec.base)];
    let mut back = 1usize;
    while back <= earlier.len() && (back as u64) <= checks {
        if let Some(snapshot) = earlier.get(back - 1) {
            starts.push((checks + 1 - back as u64, snapshot));
        }
        back *= 2;
    }
    let arms: Vec<&str> = spec
        .candidates
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(spec.baseline.as_str()))
        .collect();
    // Each start's windows built once per arm, shared by every rule.
    let built: Vec<HashMap<&str, ArmWindow>> = starts
        .iter()
        .map(|(_, from)| arms.iter().map(|a| (*a, window(totals, from, a))).collect())
        .collect();
    rules
        .iter()
        .map(|_| {
            spec.candidates
                .iter()
                .map(|candidate| {
                    starts
                        .iter()
                        .zip(&built)
                        .map(|((start, _), w)| Look {
                            candidate: w.get(candidate.as_str()).cloned().unwrap_or_default(),
                            baseline: w.get(spec.baseline.as_str()).cloned().unwrap_or_default(),
                            alpha: per_rule * guardrail::start_weight(*start),
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// One check of a progressing rollout on the windows `rule_looks` chose: the record to store
/// (if anything changed) and the events to log (a dry-run rule that started failing, then the
/// decision's).
pub fn check(
    rec: &Record,
    spec: &Spec,
    totals: &Totals,
    looks: &[Vec<Vec<Look>>],
    now: u64,
    srm: Option<&crate::sequential::SrmResult>,
    best: Option<&BestArm>,
) -> Option<(Record, Vec<(String, String)>)> {
    let stage_windows = stage_windows(rec, spec, totals);
    let rules: &[Rule] = spec
        .stages
        .get(rec.state.stage)
        .map(|s| s.rules.as_slice())
        .unwrap_or_default();
    let windows = |rule: &Rule, candidate: usize| {
        rules
            .iter()
            .position(|r| std::ptr::eq(r, rule))
            .and_then(|i| looks.get(i)?.get(candidate).cloned())
            .unwrap_or_default()
    };
    let verdicts = machine::judge_rules(spec, &rec.state, &windows);
    let (state, action) =
        machine::decide(spec, &rec.state, now, &stage_windows, &verdicts, srm, best);
    if state == rec.state {
        return None;
    }
    let mut next = rec.clone();
    if state.arm_weights(spec) != rec.state.arm_weights(spec) {
        next.version += 1;
    }
    if state.stage != rec.state.stage {
        next.base = totals.clone();
    }
    next.state = state;
    // A decision's evidence (the A/B test's figures) goes into its event.
    let evidence = next
        .state
        .reason
        .as_deref()
        .map_or(String::new(), |r| format!("; {r}"));
    let event = match action {
        Action::Advance { to_stage } => Some((
            "advance".to_owned(),
            format!(
                "stage {} at {}%{evidence}",
                to_stage + 1,
                spec.stages[to_stage].weight
            ),
        )),
        Action::Promote => Some((
            "promoted".to_owned(),
            format!("candidate has all traffic{evidence}"),
        )),
        Action::Hold(Some(reason)) if next.state.phase == Phase::Paused => {
            Some(("paused".to_owned(), reason))
        }
        Action::RollBack { reason } => Some(("rolled_back".to_owned(), reason)),
        Action::Hold(Some(reason)) if next.state.failed_checks > rec.state.failed_checks => {
            Some(("check_failed".to_owned(), reason))
        }
        Action::Hold(Some(reason))
            if reason == machine::AWAITING_PROMOTION
                && rec.state.reason.as_deref() != Some(machine::AWAITING_PROMOTION) =>
        {
            Some(("awaiting_promotion".to_owned(), reason))
        }
        Action::Hold(_) => None,
    };
    // Data from a split that is not the configured one is judged by nothing, dry runs included.
    let mismatch = srm.is_some_and(|s| s.mismatch);
    let mut events: Vec<(String, String)> = (!mismatch)
        .then(|| dry_run_started(rec, spec, rules, &verdicts))
        .flatten()
        .into_iter()
        .collect();
    events.extend(event);
    Some((next, events))
}

/// The event of the dry-run rules that fail at this check and did not at the last one: a
/// failure is recorded when it starts (with the figures), not at every check while it lasts.
fn dry_run_started(
    rec: &Record,
    spec: &Spec,
    rules: &[Rule],
    verdicts: &[machine::RuleVerdict],
) -> Option<(String, String)> {
    let several = spec.candidates.len() > 1;
    let started: Vec<String> = verdicts
        .iter()
        .filter_map(|v| {
            let rule = rules.get(v.rule).filter(|r| r.dry_run)?;
            let crate::rules::Verdict::Fail { reason, .. } = &v.verdict else {
                return None;
            };
            let arm = spec.candidates.get(v.candidate)?;
            let key = machine::dry_run_key(v.rule, arm);
            if rec.state.dry_run_failing.contains(&key) {
                return None;
            }
            let on = if several {
                format!(" on {arm}")
            } else {
                String::new()
            };
            Some(format!(
                "{}{on} (dry run, not acted on): {reason}",
                machine::rule_label(rule)
            ))
        })
        .collect();
    let stage = spec.stages.get(rec.state.stage)?;
    (!started.is_empty()).then(|| {
        (
            "dry_run_failed".to_owned(),
            format!(
                "stage {} ({}%): {}",
                rec.state.stage + 1,
                stage.weight,
                started.join("; ")
            ),
        )
    })
}

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

async fn hooks(
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

/// The hook point a decided transition must pass first, if any.
fn pre_hook(spec: &Spec, before: &State, after: &State) -> Option<HookPoint> {
    let (_, from) = before.weights(spec);
    let (_, to) = after.weights(spec);
    if to <= from {
        None
    } else if to >= 100.0 {
        Some(HookPoint::BeforePromotion)
    } else {
        Some(HookPoint::BeforeStep)
    }
}

/// A failed pre-hook: the check's decision is replaced by `machine::hook_failed`'s.
fn after_failed_hook(rec: &Record, spec: &Spec, why: String) -> (Record, (String, String)) {
    let (state, action) = machine::hook_failed(spec, &rec.state, why.clone());
    let mut next = Record {
        state,
        ..rec.clone()
    };
    let event = match action {
        Action::RollBack { reason } => {
            if next.state.arm_weights(spec) != rec.state.arm_weights(spec) {
                next.version = rec.version + 1;
            }
            ("rolled_back".to_owned(), reason)
        }
        _ => ("hook_failed".to_owned(), why),
    };
    (next, event)
}

/// The checks of one stage so far (their totals, newest first).
#[derive(Default)]
struct History {
    /// The stage these checks belong to: its index and when it started (a new revision from
    /// a spec edit starts stage 1 again, with a new start and base).
    stage: Option<(usize, u64)>,
    earlier: Lookback,
    /// Checks of this stage so far (since this controller started): `earlier` keeps the newest
    /// `KEPT_CHECKS` of them.
    checks: u64,
    /// Where the sample-ratio check's window starts: the totals at the first check a settling
    /// time after the split in force began (the filters apply a new split within a poll), kept
    /// for as long as that split is in force (same stage, same weights, not paused since).
    srm_base: Option<(SrmKey, Totals)>,
    /// The exposure test of the split in force: its key, the live arms it tests, the test, and
    /// the totals it last saw.
    exposure: Option<(SrmKey, Vec<String>, ExposureTest, Totals)>,
    /// With one live arm (a blue-green switch, a shadow's baseline): its key, the arm, and the
    /// totals at the split's first check.
    single: Option<(SrmKey, String, Totals)>,
    /// Envoy's own replies and the responses of the split before the one in force, all arms
    /// together: what one live arm's loss is compared with.
    before: Option<(u64, u64)>,
    /// The custom rules' checks in a row without a value.
    no_data: crate::custom_verdict::NoData,
}

impl History {
    /// The split in force ends: what its arms lost becomes `before`.
    fn retire(&mut self, totals: &Totals) {
        if let Some((_, _, test, _)) = self.exposure.take() {
            if let Some(r) = test.result(SRM_ALPHA) {
                self.before = Some((r.local_replies.iter().sum(), r.responses.iter().sum()));
            }
        }
        if let Some((_, arm, base)) = self.single.take() {
            let w = window(totals, &base, &arm);
            self.before = Some((w.local_replies, w.latency.count()));
        }
    }
}

/// The mixture sd of the before/after comparison of one arm's loss: a point of rate.
const SWITCH_LOSS_MIXTURE_SD: f64 = 0.01;

/// What the split in force is: the stage, its weights (bits) and when the stage started.
type SrmKey = (usize, u64, u64);

/// Time after a split begins before the sample-ratio check counts requests: the filters apply a
/// new state within a poll (long polls: at once; worker ticks: 100 ms) and reports lag a poll.
pub const SRM_SETTLE_MS: u64 = 3_000;
/// The same through Prometheus, whose figures lag by its scrape interval (15 to 30 s is common):
/// a base taken before the scrape that saw the new split would count the old split's requests.
pub const SRM_SETTLE_PROMETHEUS_MS: u64 = 60_000;
/// The sample-ratio check's level: the chance it ever stops a correct split, over the whole
/// stage however long, is at most 1% (Ville's inequality for the Bayes factor martingale).
pub const SRM_ALPHA: f64 = 0.01;

/// The sample-ratio checks of the split in force; `None` before they have anything to say, or
/// without two live arms. Two tests, each at `SRM_ALPHA`:
/// - exposure (`exposure`), from the split's first check: whether Envoy's own replies fall on one
///   arm more than on the others, period by period. It needs no settling time (it compares the
///   arms within each period, whatever the split) and catches a loss on one arm within a few
///   checks. Under a bandit, whose split is its own, it is the only one.
/// - the split (`sequential::srm`, or per user bucket when sticky): the requests each arm's model
///   answered since a base taken once the split has settled, against the weights.
fn srm_check(
    history: &mut History,
    rec: &Record,
    spec: &Spec,
    totals: &Totals,
    now: u64,
) -> Option<crate::sequential::SrmResult> {
    let live: Vec<(String, f64)> = rec
        .state
        .arm_weights(spec)
        .into_iter()
        .filter(|(_, w)| *w > 0.0)
        .collect();
    let (_, share) = rec.state.weights(spec);
    let key = (rec.state.stage, share.to_bits(), rec.state.stage_started_ms);
    if rec.state.phase != Phase::Progressing || live.is_empty() {
        history.srm_base = None;
        history.exposure = None;
        history.single = None;
        return None;
    }
    if let [(arm, _)] = live.as_slice() {
        history.srm_base = None;
        return single_check(history, key, arm, totals);
    }
    let arms: Vec<String> = live.iter().map(|(a, _)| a.clone()).collect();
    let exposure = exposure_check(history, key, &arms, totals);
    if spec.bandit.is_some() {
        return exposure;
    }
    let split = split_check(history, key, &live, spec, totals, now);
    match (exposure, split) {
        (Some(e), _) if e.mismatch => Some(e),
        (e, None) => e,
        (_, s) => s,
    }
}

/// The exposure test of the split `key` over `arms`, one period per check since the last.
fn exposure_check(
    history: &mut History,
    key: SrmKey,
    arms: &[String],
    totals: &Totals,
) -> Option<crate::sequential::SrmResult> {
    // Another split or set of live arms (a winner, a rolled-back candidate) is another test;
    // its first check only takes the totals the next period starts from.
    let same = history
        .exposure
        .as_ref()
        .is_some_and(|(k, tested, _, _)| *k == key && tested.as_slice() == arms);
    if !same {
        history.retire(totals);
        history.exposure = Some((
            key,
            arms.to_vec(),
            ExposureTest::new(arms.len()),
            totals.clone(),
        ));
        return None;
    }
    let (_, _, test, last) = history.exposure.as_mut()?;
    // Counts that went down (an Envoy gone from the fleet, a restart seen through Prometheus)
    // make no period: differences against them would be whole histories.
    let shrank = arms.iter().any(|arm| {
        let zero = crate::window::ArmTotals::default();
        let (n, b) = (
            totals.get(arm).unwrap_or(&zero),
            last.get(arm).unwrap_or(&zero),
        );
        n.requests < b.requests
            || n.local_replies < b.local_replies
            || n.counts.iter().sum::<u64>() < b.counts.iter().sum::<u64>()
            || n.counts.iter().zip(&b.counts).any(|(x, y)| x < y)
    });
    if !shrank {
        let (responses, lost): (Vec<u64>, Vec<u64>) = arms
            .iter()
            .map(|arm| {
                let w = window(totals, last, arm);
                (w.latency.count(), w.local_replies)
            })
            .unzip();
        test.observe(&responses, &lost);
    }
    *last = totals.clone();
    test.result(SRM_ALPHA).map(Into::into)
}

/// One live arm: no split to compare arms within, so its loss (Envoy's own replies among its
/// responses since the split's first check) is compared with the split before's, by the
/// two-proportion mSPRT (valid at every look): a blue-green switch to a green whose requests
/// Envoy partly answers itself holds there.
fn single_check(
    history: &mut History,
    key: SrmKey,
    arm: &str,
    totals: &Totals,
) -> Option<crate::sequential::SrmResult> {
    use crate::abtest::Proportion;
    use crate::sequential::{msprt_estimates, RateEstimate, SrmResult};
    if !history
        .single
        .as_ref()
        .is_some_and(|(k, a, _)| *k == key && a == arm)
    {
        history.retire(totals);
        history.single = Some((key, arm.to_owned(), totals.clone()));
        return None;
    }
    let (_, _, base) = history.single.as_ref()?;
    let (lost_before, responses_before) = history.before?;
    let w = window(totals, base, arm);
    let (lost, responses) = (w.local_replies.min(w.latency.count()), w.latency.count());
    let rate = |lost: u64, n: u64| {
        RateEstimate::per_request(Proportion {
            successes: lost as f64,
            trials: n,
        })
    };
    let r = msprt_estimates(
        rate(lost_before, responses_before)?,
        rate(lost, responses)?,
        SRM_ALPHA,
        SWITCH_LOSS_MIXTURE_SD,
    )?;
    let mismatch = r.p_value < SRM_ALPHA && r.difference > 0.0;
    let share = |l: u64, n: u64| l as f64 / n.max(1) as f64;
    Some(SrmResult {
        expected: vec![share(lost_before, responses_before)],
        observed: vec![share(lost, responses)],
        counts: vec![lost_before, lost],
        bayes_factor: r.likelihood_ratio,
        p_value: r.p_value,
        alpha: SRM_ALPHA,
        mismatch,
        unit: crate::sequential::EXPOSURE_SWITCH_UNIT,
        responses: vec![responses_before, responses],
    })
}

/// The split test of `key` since its base, taking the base when the split has settled.
fn split_check(
    history: &mut History,
    key: SrmKey,
    live: &[(String, f64)],
    spec: &Spec,
    totals: &Totals,
    now: u64,
) -> Option<crate::sequential::SrmResult> {
    match &history.srm_base {
        Some((k, base)) if *k == key => {
            let windows: Vec<ArmWindow> = live
                .iter()
                .map(|(arm, _)| window(totals, base, arm))
                .collect();
            let weights: Vec<f64> = live.iter().map(|(_, w)| *w).collect();
            // Sticky filters report users' buckets: users, not requests, are the units.
            if windows.iter().all(crate::units::bucketed) {
                let buckets: Vec<&[u64]> = windows
                    .iter()
                    .map(|w| w.buckets.requests.as_slice())
                    .collect();
                return crate::sequential::srm_by_bucket(&buckets, &weights, SRM_ALPHA);
            }
            // Exposure is what reached the model: requests an Envoy answered itself (a route
            // that drops them, no upstream) skew the groups compared.
            let counts: Vec<u64> = windows
                .iter()
                .map(|w| w.requests.saturating_sub(w.local_replies))
                .collect();
            crate::sequential::srm(&counts, &weights, SRM_ALPHA)
        }
        _ => {
            let settle = if spec.prometheus.is_some() {
                SRM_SETTLE_PROMETHEUS_MS
            } else {
                SRM_SETTLE_MS
            }
            .max(2 * spec.check_interval_ms);
            // A source with nothing yet is no base: the next figures would count every request
            // since the Envoys started, the old split's included.
            let has_data = totals.values().any(|t| t.requests > 0);
            if has_data && now.saturating_sub(key.2) >= settle {
                history.srm_base = Some((key, totals.clone()));
            }
            None
        }
    }
}

/// Each candidate's (candidate, baseline) window since the stage began, in `spec.candidates` order.
pub fn stage_windows(rec: &Record, spec: &Spec, totals: &Totals) -> Vec<(ArmWindow, ArmWindow)> {
    let baseline = window(totals, &rec.base, &spec.baseline);
    spec.candidates
        .iter()
        .map(|c| (window(totals, &rec.base, c), baseline.clone()))
        .collect()
}

/// The reconciler of one rollout; runs until the process ends.
pub async fn run(app: Arc<App>, handle: Arc<Rollout>) {
    /// Counts this task among the running reconcilers (`/readyz`) until it ends.
    struct Running(Arc<App>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0
                .telemetry
                .reconcilers
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    app.telemetry
        .reconcilers
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _running = Running(app.clone());
    let mut history = History::default();
    let mut figured = false;
    loop {
        let view = handle.current();
        let Loaded::Ok { rec, spec } = &view.loaded else {
            handle.wake.notified().await;
            continue;
        };
        let terminal = matches!(
            rec.state.phase,
            Phase::Succeeded | Phase::RolledBack | Phase::Aborted
        );
        if terminal && figured {
            // The figures of the deciding check stay what status shows.
            handle.wake.notified().await;
            continue;
        }
        // Checks start a fixed interval apart, however long each took (a fault is caught within
        // threshold + 1 intervals, not that plus the checks' own time).
        let due = tokio::time::Instant::now() + Duration::from_millis(spec.check_interval_ms);
        reconcile(&app, &handle, &view, &mut history).await;
        figured = true;
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = handle.wake.notified() => {}
        }
    }
}

/// One pass: figures, then (progressing or starting) the decision, its hooks and its storage.
async fn reconcile(app: &Arc<App>, handle: &Arc<Rollout>, view: &Arc<View>, history: &mut History) {
    let Loaded::Ok { rec, spec } = &view.loaded else {
        return;
    };
    let now = now_ms();
    let (from_prometheus, measured) = tokio::join!(
        prometheus_totals(&app.outgoing, spec),
        crate::custom_fetch::measure(&app.outgoing, spec, &rec.state, now)
    );
    let from_prometheus = match from_prometheus {
        Ok(t) => t,
        Err(why) => {
            eprintln!("rampctl: {}: no figures this check: {why}", rec.name);
            let mut f = handle
                .current()
                .figures
                .as_deref()
                .cloned()
                .unwrap_or_else(|| json!({}));
            f["figures_error"] = json!(why);
            handle.publish_figures(f);
            return;
        }
    };
    let Some(decided) = judge(app, handle, view, from_prometheus, measured, history, now).await
    else {
        return;
    };
    let (next, events) = match rec.state.phase {
        Phase::Starting => {
            let (next, event) = smoke_test(&app.outgoing.hooks, rec, spec).await;
            (next, event.into_iter().collect())
        }
        Phase::Progressing => {
            let Some((mut next, mut events)) = decided else {
                return;
            };
            if let Some(point) = pre_hook(spec, &rec.state, &next.state) {
                let payload = json!({"rollout": rec.name, "hook": point, "to_stage": next.state.stage + 1,
                                     "weights": weights_json(&next.state, spec)});
                if let Err(why) = hooks(&app.outgoing.hooks, spec, point, payload).await {
                    // The check's state is not stored, so a dry run failing now is recorded
                    // at the next check that is.
                    let (n, e) = after_failed_hook(rec, spec, why);
                    (next, events) = (n, vec![e]);
                }
            }
            (next, events)
        }
        _ => return,
    };
    save(app, handle, rec, &next, events, spec).await;
}

/// Checks whose CPU work (`judge_now`) runs at once, all rollouts together; more wait their turn
/// without holding a thread. One per core: more would not finish sooner, and each holds a thread
/// of the blocking pool that the store (SQLite) and the hooks use too.
fn check_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        tokio::sync::Semaphore::new(cores)
    })
}

/// `judge_now` on a blocking thread: a check's figures, windows, rules, stage machine, best arm
/// and sample-ratio tests take milliseconds for 16 arms and 8 rules, which on an async worker
/// would hold up every poll, report and scrape queued behind it. `spawn_blocking` rather than
/// `block_in_place`: the latter needs the multi-thread runtime (it panics on the current-thread
/// one tests use), hands the worker's other tasks to a new worker at each call, and bounds
/// nothing; here `check_slots` bounds how many run at once. `None`: the check did not run.
async fn judge(
    app: &Arc<App>,
    handle: &Arc<Rollout>,
    view: &Arc<View>,
    from_prometheus: Option<Totals>,
    measured: crate::custom_metrics::Measured,
    history: &mut History,
    now: u64,
) -> Option<Option<(Record, Vec<(String, String)>)>> {
    let _slot = check_slots().acquire().await.ok()?;
    // The history moves to the blocking thread and back; a check that dies (a panic) loses it,
    // and the next check starts over as after a restart.
    let mut moved = std::mem::take(history);
    let (app, handle, view) = (app.clone(), handle.clone(), view.clone());
    let task = tokio::task::spawn_blocking(move || {
        let decided = judge_now(
            &app,
            &handle,
            &view,
            from_prometheus,
            measured,
            &mut moved,
            now,
        );
        (moved, decided)
    });
    match task.await {
        Ok((back, decided)) => {
            *history = back;
            Some(decided)
        }
        Err(e) => {
            eprintln!("rampctl: check task: {e}");
            None
        }
    }
}

/// A check's CPU work: the totals, the windows the rules judge, the sample-ratio tests, the best
/// arm and the figures (published), and for a progressing rollout the decision (`check`). No IO
/// and no lock held but the report book's, briefly.
fn judge_now(
    app: &App,
    handle: &Rollout,
    view: &View,
    from_prometheus: Option<Totals>,
    measured: crate::custom_metrics::Measured,
    history: &mut History,
    now: u64,
) -> Option<(Record, Vec<(String, String)>)> {
    let Loaded::Ok { rec, spec } = &view.loaded else {
        return None;
    };
    let mut totals = complete_totals(handle, spec, from_prometheus);
    history.no_data.observe(&rec.state, &measured);
    crate::custom_verdict::attach(&mut totals, measured, &history.no_data);
    // Snapshots belong to one stage; after a restart they start over from the stage's base.
    let stage = (rec.state.stage, rec.state.stage_started_ms);
    if history.stage != Some(stage) {
        history.earlier.clear();
        history.checks = 0;
        history.stage = Some(stage);
    }
    let judged = judged_windows(rec, spec, &totals, &history.earlier);
    let looks = if rec.state.phase == Phase::Progressing {
        rule_looks(rec, spec, &totals, &history.earlier, history.checks)
    } else {
        Vec::new()
    };
    let srm = srm_check(history, rec, spec, &totals, now);
    let fleet = (spec.strategy == crate::spec::StrategyKind::Bandit)
        .then(|| handle.reports().remote(None, &spec.arms()));
    let best = fleet.as_ref().and_then(|f| best_arm(spec, f));
    // P(best) once a check: the decision and status use the same figures.
    let mut shown = figures(
        rec,
        spec,
        &totals,
        &judged,
        fleet.as_ref(),
        best.as_ref(),
        now,
    );
    shown["sample_ratio"] = json!(srm);
    show_decision_verdicts(&mut shown, rec, spec, &looks);
    // The series for the report's plots: one point a check, written in batches by the flusher.
    handle.push_check(crate::report::CheckPoint::from_figures(
        &shown, &rec.state, spec, now,
    ));
    handle.publish_figures(shown);
    let decided = (rec.state.phase == Phase::Progressing).then(|| {
        let decided = check(rec, spec, &totals, &looks, now, srm.as_ref(), best.as_ref());
        let decided = crate::custom_verdict::pause_without_data(rec, spec, &totals, decided);
        let failed = decided.as_ref().is_some_and(|(n, _)| {
            n.state.failed_checks > rec.state.failed_checks
                || (n.state.phase == Phase::RolledBack && rec.state.failed_checks > 0)
        });
        app.telemetry.check(&rec.name, failed);
        decided
    });
    // Kept last, so the check's totals move into the history instead of being copied there.
    history.earlier.push(totals);
    history.checks += 1;
    decided.flatten()
}

/// Status shows, per rule and candidate, the verdict the check decides with (over every window
/// looked at, each at its level), not one recomputed on the window shown: the two can differ, and
/// what is shown must be what is acted on.
fn show_decision_verdicts(shown: &mut Value, rec: &Record, spec: &Spec, looks: &[Vec<Vec<Look>>]) {
    let rules: &[Rule] = spec
        .stages
        .get(rec.state.stage)
        .map(|s| s.rules.as_slice())
        .unwrap_or_default();
    let n = spec.candidates.len();
    let Some(checks) = shown["checks"].as_array_mut() else {
        return;
    };
    for (ri, rule) in rules.iter().enumerate() {
        for ci in 0..n {
            let (Some(looks), Some(entry)) = (
                looks.get(ri).and_then(|r| r.get(ci)),
                checks.get_mut(ri * n + ci),
            ) else {
                continue;
            };
            let verdict = match crate::rules::judge(rule, looks) {
                crate::rules::Verdict::Pass { .. } => "pass",
                crate::rules::Verdict::Fail { reason, .. } => {
                    entry["reason"] = json!(reason);
                    "fail"
                }
                crate::rules::Verdict::NotEnoughData { .. } => "not_enough_data",
            };
            entry["verdict"] = json!(verdict);
        }
    }
}

/// The `before_start` hooks of a rollout in `Starting`: stage 1 begins when they pass; a failure
/// counts like a failed check.
async fn smoke_test(
    agent: &ureq::Agent,
    rec: &Record,
    spec: &Arc<Spec>,
) -> (Record, Option<(String, String)>) {
    let payload =
        json!({"rollout": rec.name, "hook": HookPoint::BeforeStart, "candidate": spec.candidate});
    match hooks(agent, spec, HookPoint::BeforeStart, payload).await {
        Ok(()) => (
            Record {
                state: rec.state.started(now_ms()),
                version: rec.version + 1,
                ..rec.clone()
            },
            Some((
                "started".to_owned(),
                "before_start hooks passed; stage 1 started".to_owned(),
            )),
        ),
        Err(why) => {
            let (next, event) = after_failed_hook(rec, spec, why);
            (next, Some(event))
        }
    }
}

/// Stores a check's outcome, unless the rollout changed meanwhile (an operator's command while the
/// hooks ran): that command wins and this check is dropped. Each event keeps the figures of the
/// check it was decided on (those just published). Tells the `on_rollback` hooks.
async fn save(
    app: &Arc<App>,
    handle: &Arc<Rollout>,
    before: &Record,
    next: &Record,
    events: Vec<(String, String)>,
    spec: &Arc<Spec>,
) {
    let name = before.name.clone();
    // Only this task publishes this rollout's figures: these are the check's.
    let figures = handle.current().figures.as_deref().cloned();
    let record = DecisionRecord::new(spec, &before.spec_text, &before.state, &next.state, figures);
    let stored: Vec<NewEvent> = events
        .iter()
        .map(|(kind, detail)| NewEvent::new(kind, detail, Some(record.clone())))
        .collect();
    let saved = app
        .commit_recorded(handle, before, next, spec, stored, now_ms())
        .await;
    match &saved {
        Err(e) => eprintln!("rampctl: {name}: {e}"),
        Ok(false) => {
            eprintln!("rampctl: {name}: changed by an operator during the check; check dropped");
            return;
        }
        Ok(true) => {
            for (kind, detail) in &events {
                eprintln!("rampctl: {name}: {kind}: {detail}");
            }
        }
    }
    if saved.is_ok_and(|s| s)
        && next.state.phase == Phase::RolledBack
        && before.state.phase != Phase::RolledBack
    {
        notify_rollback(
            app.outgoing.hooks.clone(),
            spec.clone(),
            next.state.reason.clone(),
        )
        .await;
    }
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
    if let Err(e) = hooks(&agent, &spec, HookPoint::Event, payload).await {
        eprintln!("rampctl: {}: {e}", spec.name);
    }
}

/// Tells the `on_rollback` hooks; their answer changes nothing, a failure is only logged.
pub async fn notify_rollback(agent: ureq::Agent, spec: Arc<Spec>, reason: Option<String>) {
    let payload = json!({"rollout": spec.name, "hook": HookPoint::OnRollback, "reason": reason});
    if let Err(e) = hooks(&agent, &spec, HookPoint::OnRollback, payload).await {
        eprintln!("rampctl: {}: {e}", spec.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::ArmTotals;
    use std::collections::VecDeque;

    fn totals(v1: u64, v2: u64) -> Totals {
        let arm = |requests| ArmTotals {
            requests,
            ..Default::default()
        };
        [("v1".to_owned(), arm(v1)), ("v2".to_owned(), arm(v2))].into()
    }

    fn record(spec: &Spec) -> Record {
        Record {
            name: "r".into(),
            spec_text: String::new(),
            state: machine::State::start(spec, 0),
            version: 1,
            base: Totals::default(),
        }
    }

    /// The SRM window starts after the settling time, at the first check with figures, and
    /// counts only what came after: the old split's requests before it do not make a mismatch.
    #[test]
    fn the_srm_window_starts_after_the_split_settled() {
        let spec = Spec::parse("name: r\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 1\nstages: [{weight: 50}, {weight: 100}]\n").unwrap();
        let rec = record(&spec);
        let mut h = History::default();
        assert!(srm_check(&mut h, &rec, &spec, &Totals::default(), 5_000).is_none());
        assert!(h.srm_base.is_none(), "no figures yet: no base");
        // 9,000 requests all to v1 before the split took effect, then an even split.
        // Until the split test has a base, only the exposure test answers (nothing lost here).
        let quiet = |r: Option<crate::sequential::SrmResult>| {
            r.is_none_or(|r| r.unit == "exposure" && !r.mismatch)
        };
        assert!(quiet(srm_check(
            &mut h,
            &rec,
            &spec,
            &totals(9_000, 100),
            2_000
        )));
        assert!(h.srm_base.is_none(), "before the settling time");
        assert!(quiet(srm_check(
            &mut h,
            &rec,
            &spec,
            &totals(9_000, 100),
            3_000
        )));
        let fine = srm_check(&mut h, &rec, &spec, &totals(14_020, 5_080), 4_000).unwrap();
        assert!(!fine.mismatch, "{fine:?}");
        assert_eq!(fine.counts, vec![5_020, 4_980]);
        let skewed = srm_check(&mut h, &rec, &spec, &totals(25_000, 10_000), 5_000).unwrap();
        assert!(skewed.mismatch, "16,000/9,900: {skewed:?}");
        // Paused: the window ends; after a resume it starts again from then.
        let mut paused = rec.clone();
        paused.state.phase = Phase::Paused;
        assert!(srm_check(&mut h, &paused, &spec, &totals(25_000, 10_000), 6_000).is_none());
        assert!(h.srm_base.is_none());
        assert!(quiet(srm_check(
            &mut h,
            &rec,
            &spec,
            &totals(25_000, 10_000),
            7_000
        )));
        let after = srm_check(&mut h, &rec, &spec, &totals(25_500, 10_500), 8_000).unwrap();
        assert!(
            !after.mismatch && after.counts == vec![500, 500],
            "{after:?}"
        );
    }

    /// `judged_windows` as it was before `Lookback`: for each earlier check, newest first, both
    /// windows built, until one holds the rule's samples.
    fn scanned_windows(
        rec: &Record,
        spec: &Spec,
        totals: &Totals,
        earlier: &[Totals],
    ) -> Vec<Vec<(ArmWindow, ArmWindow)>> {
        let rules = &spec.stages[rec.state.stage].rules;
        rules
            .iter()
            .map(|rule| {
                let relative = matches!(rule.bound, Bound::WorseThanBaseline(_))
                    || rule.metric.against_baseline();
                spec.candidates
                    .iter()
                    .map(|candidate| {
                        let pick = |from: &Totals| {
                            (
                                window(totals, from, candidate),
                                window(totals, from, &spec.baseline),
                            )
                        };
                        earlier
                            .iter()
                            .map(pick)
                            .find(|(c, b)| {
                                c.samples(rule.metric) >= rule.min_samples
                                    && (!relative || b.samples(rule.metric) >= rule.min_samples)
                            })
                            .unwrap_or_else(|| pick(&rec.base))
                    })
                    .collect()
            })
            .collect()
    }

    /// Issue 20, item 10: the windows the rules judge are the ones the scan over every earlier
    /// check chose, check after check, for a fleet of Envoys with uneven traffic per arm where
    /// now and then one leaves (its counts leave the totals) and another joins.
    #[test]
    fn judged_windows_are_the_scans() {
        let spec = Spec::parse(
            "name: r\nstrategy: ab_test\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}, {name: v3, role: candidate}]\nab_test: {metric: success_rate}\n\
             stages:\n- weight: 50\n  rules:\n\
             \x20 - {metric: error_rate, max: 0.1, min_samples: 30}\n\
             \x20 - {metric: latency_p95, max: 100, min_samples: 50}\n\
             \x20 - {metric: latency_slower, max: 0.6, min_samples: 40}\n\
             \x20 - {metric: error_rate_vs_baseline, max: 0.01, min_samples: 60}\n\
             \x20 - {metric: accuracy, max_worse_than_baseline: 0.05, min_samples: 20}\n\
             \x20 - {metric: error_rate, max_worse_than_baseline: 0.05, min_samples: 200}\n\
             - weight: 100\n",
        )
        .unwrap();
        let mut rng = fastrand::Rng::with_seed(2020);
        let mut chose_earlier = 0;
        for _ in 0..20 {
            let mut rec = record(&spec);
            let mut envoys: Vec<Totals> = vec![Totals::new(); 3];
            let sum = |envoys: &[Totals]| {
                let mut out = Totals::new();
                for (arm, t) in envoys.iter().flatten() {
                    let acc: &mut ArmTotals = out.entry(arm.clone()).or_default();
                    acc.requests += t.requests;
                    acc.errors += t.errors;
                    acc.labelled += t.labelled;
                    acc.correct += t.correct;
                    acc.le = t.le.clone();
                    acc.counts.resize(t.counts.len(), 0);
                    for (a, b) in acc.counts.iter_mut().zip(&t.counts) {
                        *a += b;
                    }
                }
                out
            };
            let mut earlier: VecDeque<Totals> = VecDeque::new();
            let mut kept = Lookback::new(40);
            for step in 0..120 {
                for envoy in envoys.iter_mut() {
                    for arm in ["v1", "v2", "v3"] {
                        let t = envoy.entry(arm.to_owned()).or_insert_with(|| ArmTotals {
                            le: vec![50.0, 100.0, f64::INFINITY],
                            counts: vec![0; 3],
                            ..Default::default()
                        });
                        let n = rng.u64(0..6);
                        t.requests += n;
                        t.errors += rng.u64(0..=n.min(1));
                        t.labelled += rng.u64(0..3);
                        t.correct += rng.u64(0..2);
                        let fast = rng.u64(0..=n);
                        let slow = rng.u64(0..=n - fast);
                        t.counts[0] += fast;
                        t.counts[1] += fast + slow;
                        t.counts[2] += n;
                    }
                }
                if rng.u8(0..12) == 0 {
                    envoys[rng.usize(0..3)] = Totals::new();
                }
                let now = sum(&envoys);
                if step == 10 {
                    // The stage's base is some check's totals.
                    rec.base = now.clone();
                }
                let want = scanned_windows(&rec, &spec, &now, earlier.make_contiguous());
                let got = judged_windows(&rec, &spec, &now, &kept);
                assert_eq!(got, want, "check {step}");
                chose_earlier += want
                    .iter()
                    .flatten()
                    .filter(|w| **w != stage_windows(&rec, &spec, &now)[0])
                    .count();
                earlier.push_front(now.clone());
                earlier.truncate(40);
                kept.push(now);
            }
        }
        assert!(chose_earlier > 1000, "{chose_earlier}");
    }

    /// Totals of v1 and v2 from (responses, Envoy's own replies among them), cumulative.
    fn lossy(v1: (u64, u64), v2: (u64, u64)) -> Totals {
        let arm = |(n, lost): (u64, u64)| ArmTotals {
            requests: n,
            local_replies: lost,
            le: vec![100.0, f64::INFINITY],
            counts: vec![n, n],
            ..Default::default()
        };
        [("v1".to_owned(), arm(v1)), ("v2".to_owned(), arm(v2))].into()
    }

    /// Under a bandit the split is the policy's: all traffic on one arm raises nothing, and a
    /// share of one arm's requests answered by Envoy itself (a fault filter, no upstream) does.
    #[test]
    fn a_bandit_is_checked_for_lost_exposure_not_for_its_split() {
        let spec = Spec::parse("name: r\nstrategy: bandit\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 1\nstages: [{weight: 50}, {weight: 100}]\n").unwrap();
        let rec = record(&spec);
        let at = lossy;
        let mut h = History::default();
        assert!(srm_check(&mut h, &rec, &spec, &at((10, 0), (10, 0)), 3_000).is_none());
        let mut v2 = 10;
        for second in 4..60u64 {
            v2 += 500;
            let r = srm_check(&mut h, &rec, &spec, &at((12, 0), (v2, 0)), second * 1000).unwrap();
            assert!(!r.mismatch && r.unit == "exposure", "{r:?}");
        }
        // Now 5% of v2's requests are answered by Envoy, while the bandit still explores v1 a
        // little (with no v1 traffic at all, nothing could tell a loss on v2 alone from one on
        // every arm).
        let (mut v1, mut lost) = (12, 0);
        let flagged = (60..80u64).find(|second| {
            v1 += 50;
            v2 += 500;
            lost += 25;
            srm_check(&mut h, &rec, &spec, &at((v1, 0), (v2, lost)), second * 1000)
                .unwrap()
                .mismatch
        });
        assert!(flagged.is_some_and(|s| s <= 62), "{flagged:?}");
    }

    /// An Envoy leaving the fleet takes its counts out of the totals: that check makes no
    /// period (its differences would be whole histories, a false alarm), the next ones do.
    #[test]
    fn counts_that_go_down_make_no_exposure_period() {
        let spec = Spec::parse("name: r\nstrategy: bandit\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 1\nstages: [{weight: 50}, {weight: 100}]\n").unwrap();
        let rec = record(&spec);
        let at = lossy;
        let mut h = History::default();
        // A long history before the check's base: 20,000 of v1's responses, 2,000 of v2's.
        let (mut v1, mut v2) = ((20_000u64, 400u64), (2_000u64, 40u64));
        assert!(srm_check(&mut h, &rec, &spec, &at(v1, v2), 3_000).is_none());
        // Both arms lose 2%, the bandit now at 5/95.
        for second in 4..7u64 {
            v1 = (v1.0 + 50, v1.1 + 1);
            v2 = (v2.0 + 950, v2.1 + 19);
            let r = srm_check(&mut h, &rec, &spec, &at(v1, v2), second * 1000).unwrap();
            assert!(!r.mismatch, "{r:?}");
        }
        // An instance with 600 of v1's responses and none of its replies leaves during a period
        // like the others: compared with the last totals, v1's history looks like one period.
        let gone = at((v1.0 - 600 + 50, v1.1 + 1), (v2.0 + 950, v2.1 + 19));
        let r = srm_check(&mut h, &rec, &spec, &gone, 7_000).unwrap();
        assert!(!r.mismatch, "{r:?}");
        let next = at((v1.0 - 500, v1.1 + 2), (v2.0 + 1900, v2.1 + 38));
        let r = srm_check(&mut h, &rec, &spec, &next, 8_000).unwrap();
        assert!(!r.mismatch, "{r:?}");
    }

    /// Blue-green: one live arm at a time. After the switch, green's loss (Envoy answering 5%
    /// of its requests itself) is compared with blue's before it, and holds the rollout.
    #[test]
    fn one_live_arm_is_compared_with_the_split_before() {
        let spec = Spec::parse("name: r\nstrategy: blue_green\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\ncheck_interval_s: 1\nstages: [{weight: 0}, {weight: 100}]\n").unwrap();
        let mut rec = record(&spec);
        let at = lossy;
        let mut h = History::default();
        // Blue alone, nothing lost: nothing before it to compare with.
        for second in 1..=5u64 {
            assert!(srm_check(
                &mut h,
                &rec,
                &spec,
                &at((200 * second, 0), (0, 0)),
                second * 1000
            )
            .is_none());
        }
        // The switch: green alone, losing 5%.
        rec.state.stage = 1;
        rec.state.stage_started_ms = 5_500;
        let mut flagged = None;
        for second in 6..=12u64 {
            let n = 200 * (second - 5);
            let r = srm_check(
                &mut h,
                &rec,
                &spec,
                &at((1000, 0), (n, n / 20)),
                second * 1000,
            );
            if r.as_ref().is_some_and(|r| r.mismatch) {
                flagged = r.map(|r| (second, r));
                break;
            }
        }
        let (second, r) = flagged.expect("green's loss is flagged");
        assert!(second <= 10, "{second}");
        assert_eq!(r.unit, "exposure_since_switch");
        assert_eq!(r.counts[0], 0);
        // The same switch with green losing no more than blue did (1% each) raises nothing.
        let mut h = History::default();
        rec.state.stage = 0;
        rec.state.stage_started_ms = 0;
        for second in 1..=5u64 {
            let n = 200 * second;
            srm_check(
                &mut h,
                &rec,
                &spec,
                &at((n, n / 100), (0, 0)),
                second * 1000,
            );
        }
        rec.state.stage = 1;
        rec.state.stage_started_ms = 5_500;
        for second in 6..=30u64 {
            let n = 200 * (second - 5);
            let r = srm_check(
                &mut h,
                &rec,
                &spec,
                &at((1000, 10), (n, n / 100)),
                second * 1000,
            );
            assert!(r.is_none_or(|r| !r.mismatch));
        }
    }

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
