//! `make sim`, bandit rollouts from start to decision: the filter's own policies (`bandit::choose`,
//! counts seen as of the last flush, as workers see them between ticks) with rampctl's own
//! stopping rule (`bestarm::BestArm`, P(best) from the Beta posteriors at every check) and its
//! sample-ratio check for bandits (`exposure::ExposureTest`). Answers three questions: does a
//! bandit rollout promote the true best arm, how many requests does that take, and does its
//! sample-ratio check stay quiet while the bandit learns yet catch a 5% loss on one arm. Writes
//! `tests/bench/results/bandit-rollouts.{md,json}`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use anyhow::Result;
use fastrand::Rng;
use ramp_controller::bestarm::BestArm;
use ramp_controller::exposure::ExposureTest;
use ramp_controller::machine::{bandit_verdict, BanditOutcome};
use ramp_controller::reconciler::SRM_ALPHA;
use ramp_controller::spec::{BanditSpec, Spec};
use ramp_filter::bandit::choose;
use ramp_filter::config::{Bandit, Policy};
use ramp_filter::counters::ArmCounts;
use serde_json::json;

/// How one simulated rollout is run.
#[derive(Clone)]
struct Setup {
    rates: Vec<f64>,
    /// Decisions see the counts of the last flush, every this many requests (the workers' tick).
    flush_every: u64,
    /// A controller check every this many requests.
    check_every: u64,
    /// The stage's `min_requests` (all arms).
    min_requests: u64,
    promote_at: f64,
    /// The mSPRT's confidence a candidate must beat the baseline at (`bandit.confirm`); `None`:
    /// P(best) alone.
    confirm: Option<f64>,
    /// The rollout spec the verdict is made under (arms `arm0`.., `arm0` the baseline).
    spec: Spec,
    /// Undecided by then: counted as no decision.
    max_requests: u64,
    /// Per arm, the share of its routed requests Envoy answers itself (a fault filter after
    /// routing); such a request earns no reward.
    lost: Vec<f64>,
    /// Rewards arrive this many requests later on average (exponential), posted as feedback:
    /// the filter counts the trial at once with reward 0 and the reward joins the counts when it
    /// arrives, as with `reward.source: feedback` today. 0: at once.
    reward_delay_mean: f64,
    /// How a trial with a delayed reward is counted.
    counting: Counting,
    /// Stop deciding (and keep counting regret) to measure a whole run.
    decide: bool,
}

/// Ways to count a trial whose reward comes later. Only `AtOnce` is what the filter does; the
/// others are the rules proposed for it, simulated to decide whether to build them.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Counting {
    /// The trial at once with reward 0, the reward when it arrives (the filter today).
    AtOnce,
    /// The trial when its reward arrives within the attribution window, else (reward 0) when
    /// the window closes; a reward after the window adds to the reward only.
    OnRewardOrWindow(u64),
    /// The trial and its reward only when the window closes; rewards after it are dropped.
    AtWindow(u64),
}

#[derive(Debug, Default, Clone)]
struct Run {
    /// Sum over requests of (best rate - the chosen arm's rate).
    regret: f64,
    /// The arm promoted (or kept), and the requests it took.
    decided: Option<(usize, u64)>,
    /// The first check at which the exposure check flagged, in requests.
    exposure_flag: Option<u64>,
}

impl Setup {
    fn bandit_spec(&self) -> BanditSpec {
        BanditSpec {
            promote_at: self.promote_at,
            confirm_confidence: self.confirm,
        }
    }
}

/// A bandit spec over `k` arms named as the simulation names them.
fn spec_of(k: usize) -> Spec {
    let arms: Vec<String> = (0..k)
        .map(|i| {
            let role = if i == 0 { "baseline" } else { "candidate" };
            format!("{{name: arm{i}, role: {role}}}")
        })
        .collect();
    Spec::parse(&format!(
        "name: sim\nstrategy: bandit\narms: [{}]\nstages: [{{weight: 50}}, {{weight: 100}}]\n",
        arms.join(", ")
    ))
    .unwrap_or_else(|e| panic!("the simulation's spec: {e}"))
}

fn rollout(policy: &Bandit, s: &Setup, seed: u64) -> Run {
    let k = s.rates.len();
    let mut rng = Rng::with_seed(seed);
    let weights = vec![1.0; k];
    let mut shared = vec![ArmCounts::default(); k];
    let mut pending = shared.clone();
    let mut period_responses = vec![0u64; k];
    let mut period_lost = vec![0u64; k];
    let mut exposure = ExposureTest::new(k);
    let mut run = Run::default();
    let names: Vec<String> = (0..k).map(|i| format!("arm{i}")).collect();
    let best_rate = s.rates.iter().copied().fold(f64::MIN, f64::max);
    // Count changes on their way: (step, arm, what): 0 adds a reward, 1 a trial with reward 1,
    // 2 a trial with reward 0.
    let mut due: BinaryHeap<Reverse<(u64, usize, u8)>> = BinaryHeap::new();
    for step in 1..=s.max_requests {
        while let Some(&Reverse((at, arm, what))) = due.peek() {
            if at > step {
                break;
            }
            due.pop();
            let p = &mut pending[arm];
            match what {
                0 => p.reward_micros = p.reward_micros.saturating_add(1_000_000),
                1 => p.add_trial(1.0),
                _ => p.add_trial(0.0),
            }
        }
        let arm = choose(policy, &shared, &weights, &mut rng).unwrap_or(0);
        run.regret += best_rate - s.rates[arm];
        period_responses[arm] += 1;
        let reward = if rng.f64() < s.lost[arm] {
            period_lost[arm] += 1;
            0.0
        } else if rng.f64() < s.rates[arm] {
            1.0
        } else {
            0.0
        };
        if s.reward_delay_mean > 0.0 {
            let delay = (-s.reward_delay_mean * (1.0 - rng.f64()).ln()).ceil() as u64;
            let arrives = step + delay.max(1);
            let success = reward > 0.0;
            match s.counting {
                Counting::AtOnce => {
                    pending[arm].add_trial(0.0);
                    if success {
                        due.push(Reverse((arrives, arm, 0)));
                    }
                }
                Counting::OnRewardOrWindow(w) => {
                    if success && delay < w {
                        due.push(Reverse((arrives, arm, 1)));
                    } else {
                        due.push(Reverse((step + w, arm, 2)));
                        if success {
                            due.push(Reverse((arrives, arm, 0)));
                        }
                    }
                }
                Counting::AtWindow(w) => {
                    let kind = if success && delay < w { 1 } else { 2 };
                    due.push(Reverse((step + w, arm, kind)));
                }
            }
        } else {
            pending[arm].add_trial(reward);
        }
        if step % s.flush_every == 0 {
            for (sh, p) in shared.iter_mut().zip(pending.iter_mut()) {
                *sh = sh.saturating_add(std::mem::take(p));
            }
        }
        if step % s.check_every != 0 {
            continue;
        }
        exposure.observe(&period_responses, &period_lost);
        period_responses.iter_mut().for_each(|c| *c = 0);
        period_lost.iter_mut().for_each(|c| *c = 0);
        if run.exposure_flag.is_none() && exposure.result(SRM_ALPHA).is_some_and(|r| r.mismatch) {
            run.exposure_flag = Some(step);
        }
        if !s.decide || run.decided.is_some() || step < s.min_requests {
            continue;
        }
        // The controller sees the reported counts: the flushed ones.
        let counts: Vec<(String, u64, f64)> = names
            .iter()
            .zip(&shared)
            .map(|(n, c)| (n.clone(), c.trials, c.reward()))
            .collect();
        // rampctl's own verdict (`machine::bandit_verdict`): P(best) picks the arm, and a
        // candidate must also beat the baseline (arm 0) by the mSPRT when `confirm` is on.
        let verdict = bandit_verdict(
            &s.spec,
            &s.bandit_spec(),
            BestArm::from_counts(&counts).as_ref(),
        );
        let decided = match verdict {
            BanditOutcome::Candidate(name, _) => names.iter().position(|n| *n == name),
            BanditOutcome::Baseline(_) => Some(0),
            BanditOutcome::Undecided(_) => None,
        };
        if let Some(arm) = decided {
            run.decided = Some((arm, step));
            if s.lost.iter().all(|&l| l == 0.0) {
                return run;
            }
        }
    }
    run
}

fn runs(policy: &Bandit, s: &Setup, n: u64, seed0: u64) -> Vec<Run> {
    ramp_tools::seeds::on_two_threads(n, seed0, |seed| rollout(policy, s, seed))
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

fn main() -> Result<()> {
    let n: u64 = std::env::var("RAMP_SIM_ROLLOUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let five = Setup {
        rates: vec![0.10, 0.11, 0.12, 0.13, 0.15],
        flush_every: 100,
        check_every: 1000,
        min_requests: 1000,
        promote_at: 0.95,
        confirm: Some(0.95),
        spec: spec_of(5),
        max_requests: 300_000,
        lost: vec![0.0; 5],
        reward_delay_mean: 0.0,
        counting: Counting::AtOnce,
        decide: true,
    };
    let policies = [
        ("thompson", Bandit::with_policy(Policy::Thompson)),
        (
            "top_two_thompson (beta 0.5)",
            Bandit::with_policy(Policy::TopTwoThompson),
        ),
    ];
    let mut md = format!(
        "# Bandit rollouts\n\n`make sim` (`ramp-sim-rollouts`): {n} seeded rollouts per row through the filter's own \
         policies (`bandit::choose`; decisions see the counts of the last flush, every {} requests) and rampctl's own \
         stopping rule (`bestarm`: at a check every {} requests, once {} requests are in, the arm whose P(best) \
         reaches `promote_at` {} wins, a candidate once the mSPRT also finds it better than the baseline, arm 0 \
         (`confirm: 0.95`, the default), through `machine::bandit_verdict`; Beta(1, 1) priors). Undecided after {} requests counts as no decision.\n\n\
         ## Best-arm identification: 5 arms, rates 0.10 / 0.11 / 0.12 / 0.13 / 0.15\n\n\
         | policy | true best promoted | wrong arm promoted | undecided | median requests to the decision | 90th percentile |\n\
         |---|---:|---:|---:|---:|---:|\n",
        five.flush_every, five.check_every, five.min_requests, five.promote_at, five.max_requests
    );
    let mut rows = Vec::new();
    for (name, policy) in &policies {
        let out = runs(policy, &five, n, 1);
        let best = five.rates.len() - 1;
        let right = out
            .iter()
            .filter(|r| r.decided.is_some_and(|(a, _)| a == best))
            .count();
        let wrong = out
            .iter()
            .filter(|r| r.decided.is_some_and(|(a, _)| a != best))
            .count();
        let undecided = out.len() - right - wrong;
        let mut at: Vec<u64> = out
            .iter()
            .filter_map(|r| r.decided.map(|(_, s)| s))
            .collect();
        at.sort_unstable();
        let med = median(at.clone());
        let p90 = at.get(at.len() * 9 / 10).copied();
        let pct = |c: usize| 100.0 * c as f64 / out.len() as f64;
        md.push_str(&format!(
            "| {name} | {:.1}% | {:.1}% | {:.1}% | {} | {} |\n",
            pct(right),
            pct(wrong),
            pct(undecided),
            med.map_or("-".into(), |m| m.to_string()),
            p90.map_or("-".into(), |m| m.to_string())
        ));
        rows.push(
            json!({"policy": name, "runs": out.len(), "true_best": right, "wrong": wrong,
                         "undecided": undecided, "median_requests": med, "p90_requests": p90}),
        );
        eprintln!(
            "best arm, {name}: {right} of {} right, median {med:?}",
            out.len()
        );
    }

    let thompson = Bandit::with_policy(Policy::Thompson);
    // Near ties: P(best) is a posterior probability, not a test with an error rate. Between
    // equal arms it may name either best, and a slightly worse candidate can win.
    md.push_str(
        "\n## Near ties: what the stopping rule does when the arms are (almost) equal\n\n\
         Two arms, Thompson, the same checks; the baseline is arm 0. Undecided after 100,000 requests counts as no decision.\n\n\
         | rates (baseline, candidate) | rule | candidate promoted | baseline kept (rolled back) | undecided | median requests to the decision |\n\
         |---|---|---:|---:|---:|---:|\n",
    );
    let mut ties = Vec::new();
    for (rates, confirm) in [
        (vec![0.10, 0.10], None),
        (vec![0.10, 0.10], Some(0.95)),
        (vec![0.10, 0.098], None),
        (vec![0.10, 0.098], Some(0.95)),
    ] {
        let setup = Setup {
            rates: rates.clone(),
            max_requests: 100_000,
            confirm,
            spec: spec_of(2),
            ..five.clone()
        };
        let rule = if confirm.is_some() {
            "P(best) and the mSPRT against the baseline (`confirm: 0.95`, the default)"
        } else {
            "P(best) alone (`confirm: false`)"
        };
        let out = runs(&thompson, &setup, n, 60_001);
        let count = |arm: usize| {
            out.iter()
                .filter(|r| r.decided.is_some_and(|(a, _)| a == arm))
                .count()
        };
        let (candidate, baseline) = (count(1), count(0));
        let med = median(
            out.iter()
                .filter_map(|r| r.decided.map(|(_, s)| s))
                .collect(),
        );
        let pct = |c: usize| 100.0 * c as f64 / out.len() as f64;
        md.push_str(&format!(
            "| {:.3}, {:.3} | {rule} | {:.1}% | {:.1}% | {:.1}% | {} |\n",
            rates[0],
            rates[1],
            pct(candidate),
            pct(baseline),
            pct(out.len() - candidate - baseline),
            med.map_or("-".into(), |m| m.to_string())
        ));
        ties.push(
            json!({"rates": rates, "confirm": confirm, "runs": out.len(), "candidate_promoted": candidate,
                         "baseline_kept": baseline, "median_requests": med}),
        );
        eprintln!("near tie {rates:?}: candidate {candidate}, baseline {baseline}");
    }

    // The sample-ratio check under a learning bandit: two arms (the guide's 30% vs 5% failures
    // as rewards 0.70 / 0.95), the bandit moving nearly all traffic to the better one; then the
    // same with 5% of the better arm's requests answered by Envoy (a fault filter after routing).
    let two = Setup {
        rates: vec![0.70, 0.95],
        max_requests: 100_000,
        lost: vec![0.0, 0.0],
        spec: spec_of(2),
        ..five.clone()
    };
    let mut quiet = two.clone();
    quiet.decide = false; // look at the check over the whole run
    let learning = runs(&thompson, &quiet, n, 10_001);
    let false_alarms = learning
        .iter()
        .filter(|r| r.exposure_flag.is_some())
        .count();
    let mut dropped = quiet.clone();
    dropped.lost = vec![0.0, 0.05];
    let caught = runs(&thompson, &dropped, n, 20_001);
    let flagged: Vec<u64> = caught.iter().filter_map(|r| r.exposure_flag).collect();
    let mut min_share = thompson.clone();
    min_share.min_share = 0.05;
    let caught_floor = runs(&min_share, &dropped, n, 30_001);
    let flagged_floor: Vec<u64> = caught_floor
        .iter()
        .filter_map(|r| r.exposure_flag)
        .collect();
    md.push_str(&format!(
        "\n## The sample-ratio check under a learning bandit (exposure, alpha {SRM_ALPHA})\n\n\
         Two arms with reward rates 0.70 and 0.95 (30% and 5% failures), Thompson, {} requests, a look at every check.\n\n\
         | scenario | runs | flagged | requests at the flag (median) |\n|---|---:|---:|---:|\n\
         | the bandit learns, nothing lost (the split goes to about 99/1) | {} | {} | |\n\
         | 5% of the better arm's requests answered by Envoy | {} | {} | {} |\n\
         | the same with `min_share: 0.05` (the worse arm keeps 5% of the traffic) | {} | {} | {} |\n\n\
         The old check (requests against the stage's 50/50) paused every one of the learning runs: the split it \
         tests is the one the bandit moves away from on purpose. The loss is found by comparing the arms' loss \
         rates, so it needs some traffic on the other arms: Thompson's own exploration gives some, `min_share` \
         guarantees it.\n",
        quiet.max_requests,
        learning.len(),
        false_alarms,
        caught.len(),
        flagged.len(),
        median(flagged.clone()).map_or("-".into(), |m| m.to_string()),
        caught_floor.len(),
        flagged_floor.len(),
        median(flagged_floor.clone()).map_or("-".into(), |m| m.to_string()),
    ));
    // Delayed rewards as `reward.source: feedback` counts them today: the trial at once with
    // reward 0, the reward when the application posts it (exponential delay, mean 30 ticks of
    // the workers, each `flush_every` requests).
    let delay_mean = 30.0 * five.flush_every as f64;
    md.push_str(&format!(
        "\n## Delayed rewards (feedback), as counted today\n\n\
         The trial counts at once with reward 0; the reward joins the counts when it is posted, after an \
         exponential delay (mean 30 ticks: {delay_mean} requests). Thompson, {n} runs per row. Only the first \
         delayed row is what the filter does; the other two are the counting rules proposed for it (the attribution \
         window is 5 mean delays, which holds 99.3% of the rewards), simulated to see whether they are worth building.\n\n\
         | arms | rewards | regret at 10^5 requests (mean +- SE) | true best promoted | median requests to the decision |\n\
         |---|---|---:|---:|---:|\n"
    ));
    let mut delayed_rows = Vec::new();
    for (label, rates) in [
        ("2 arms (0.10, 0.15)", vec![0.10, 0.15]),
        ("5 arms (0.10 .. 0.15)", five.rates.clone()),
    ] {
        // The attribution window: 5 mean delays holds 99.3% of the rewards.
        let window = (5.0 * delay_mean) as u64;
        for (how, mean, counting) in [
            ("at once", 0.0, Counting::AtOnce),
            (
                "delayed; trial at once (the filter today)",
                delay_mean,
                Counting::AtOnce,
            ),
            (
                "delayed; trial on its reward or when the window closes",
                delay_mean,
                Counting::OnRewardOrWindow(window),
            ),
            (
                "delayed; trial and reward when the window closes",
                delay_mean,
                Counting::AtWindow(window),
            ),
        ] {
            let base = Setup {
                rates: rates.clone(),
                max_requests: 100_000,
                reward_delay_mean: mean,
                counting,
                spec: spec_of(rates.len()),
                ..five.clone()
            };
            let regret_runs = runs(
                &thompson,
                &Setup {
                    decide: false,
                    ..base.clone()
                },
                n,
                40_001,
            );
            let r: Vec<f64> = regret_runs.iter().map(|r| r.regret).collect();
            let mean_r = r.iter().sum::<f64>() / r.len() as f64;
            let se = (r.iter().map(|x| (x - mean_r).powi(2)).sum::<f64>()
                / (r.len() as f64 - 1.0)
                / r.len() as f64)
                .sqrt();
            let decided = runs(
                &thompson,
                &Setup {
                    max_requests: 300_000,
                    ..base
                },
                n,
                50_001,
            );
            let right = decided
                .iter()
                .filter(|x| x.decided.is_some_and(|(a, _)| a == rates.len() - 1))
                .count();
            let med = median(
                decided
                    .iter()
                    .filter_map(|x| x.decided.map(|(_, s)| s))
                    .collect(),
            );
            md.push_str(&format!(
                "| {label} | {how} | {mean_r:.1} +- {se:.1} | {:.1}% | {} |\n",
                100.0 * right as f64 / decided.len() as f64,
                med.map_or("-".into(), |m| m.to_string())
            ));
            delayed_rows.push(json!({"arms": rates, "rewards": how, "regret": mean_r, "regret_se": se,
                                     "true_best": right, "runs": decided.len(), "median_requests": med}));
            eprintln!("delayed {label} {how}: regret {mean_r:.1}");
        }
    }
    let results = json!({
        "runs_per_row": n, "flush_every": five.flush_every, "check_every": five.check_every,
        "min_requests": five.min_requests, "promote_at": five.promote_at, "max_requests": five.max_requests,
        "best_arm_5": rows,
        "near_ties": ties,
        "exposure": {"learning_false_alarms": false_alarms, "runs": learning.len(),
                     "drop_5pct_flagged": flagged.len(), "drop_5pct_median_requests": median(flagged),
                     "drop_5pct_min_share_flagged": flagged_floor.len(),
                     "drop_5pct_min_share_median_requests": median(flagged_floor)},
        "delayed_rewards": delayed_rows,
    });
    ramp_tools::write_results("bandit-rollouts", &md, &results)?;
    Ok(())
}
