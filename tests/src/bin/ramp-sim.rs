//! `make sim`: the bandit policies (the filter's own code, natively) against Bernoulli arms with known
//! rates, with the filter's tick delay, reporting mean cumulative regret over seeds. Writes
//! `tests/bench/results/bandit-regret.{md,json}`.

use anyhow::Result;
use ramp_filter::config::{Bandit, Policy};
use ramp_filter::sim::{lai_robbins_coefficient, simulate, Scenario};
use ramp_tests::envoy::repo_root;
use serde_json::json;

const STEPS: u64 = 100_000;
const CHECKPOINTS: [u64; 4] = [100, 1_000, 10_000, 100_000];

fn main() -> Result<()> {
    let seeds: u64 = std::env::var("RAMP_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let arm_sets: [(&str, Vec<f64>); 2] = [
        ("2 arms (0.10, 0.15)", vec![0.10, 0.15]),
        ("5 arms (0.10 .. 0.15)", vec![0.10, 0.11, 0.12, 0.13, 0.15]),
    ];
    // A tick of 1 s at 1000 requests/s per Envoy is 1000 decisions on a stale snapshot.
    let delays: [(u64, &str); 3] = [
        (0, "0 (every step)"),
        (100, "1 s at 100 req/s"),
        (1000, "1 s at 1000 req/s"),
    ];
    let policies = [
        ("epsilon_greedy (0.1)", Policy::EpsilonGreedy),
        ("thompson", Policy::Thompson),
        ("ucb1", Policy::Ucb1),
    ];

    let mut md = format!(
        "# Bandit regret\n\n`make sim`: mean cumulative pseudo-regret (sum of best rate - chosen rate) over {seeds} seeds, \
         {STEPS} steps. Delay: decisions see the counts of the last flush, as the filter's workers do between ticks.\n\
         Growth per decade = (R(1e5) - R(1e4)) / (R(1e4) - R(1e3)): about 1 for logarithmic regret, 10 for linear.\n\
         Lai-Robbins: the asymptotic lower bound is c ln T; c is given per arm set and R(1e5) / ln(1e5) is comparable to it.\n\n\
         | arms | policy | delay | R(1e2) | R(1e3) | R(1e4) | R(1e5) | growth per decade | R(1e5)/ln(1e5) | Lai-Robbins c | best-arm pulls |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let mut rows = Vec::new();
    for (label, rates) in &arm_sets {
        let lr = lai_robbins_coefficient(rates);
        for (pname, policy) in policies {
            for (delay, dlabel) in delays {
                let scenario = Scenario {
                    rates: rates.clone(),
                    steps: STEPS,
                    delay,
                    checkpoints: CHECKPOINTS.to_vec(),
                };
                let b = Bandit::with_policy(policy);
                let outcomes: Vec<_> = std::thread::scope(|s| {
                    let halves: Vec<_> = [0, 1]
                        .map(|h| {
                            let (b, sc) = (&b, &scenario);
                            s.spawn(move || {
                                (0..seeds)
                                    .filter(|x| x % 2 == h)
                                    .map(|seed| simulate(b, sc, seed))
                                    .collect::<Vec<_>>()
                            })
                        })
                        .into_iter()
                        .collect();
                    halves
                        .into_iter()
                        .flat_map(|h| h.join().unwrap_or_default())
                        .collect()
                });
                let mean_at = |k: usize| {
                    outcomes.iter().map(|o| o.regret[k].1).sum::<f64>() / outcomes.len() as f64
                };
                let r: Vec<f64> = (0..CHECKPOINTS.len()).map(mean_at).collect();
                let best = rates.len() - 1;
                let best_share = outcomes
                    .iter()
                    .map(|o| o.pulls[best] as f64 / STEPS as f64)
                    .sum::<f64>()
                    / outcomes.len() as f64;
                let growth = (r[3] - r[2]) / (r[2] - r[1]);
                md.push_str(&format!(
                    "| {label} | {pname} | {dlabel} | {:.1} | {:.1} | {:.1} | {:.1} | {growth:.2} | {:.1} | {lr:.1} | {:.1}% |\n",
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    r[3] / (STEPS as f64).ln(),
                    best_share * 100.0
                ));
                rows.push(json!({"arms": rates, "policy": pname, "delay_steps": delay, "regret": CHECKPOINTS.iter().zip(&r).map(|(c, v)| json!([c, v])).collect::<Vec<_>>(), "growth_per_decade": growth, "lai_robbins_c": lr, "best_arm_share": best_share}));
                eprintln!("{label} {pname} delay {delay}: R(1e5) = {:.1}", r[3]);
            }
        }
    }
    let dir = repo_root().join("tests/bench/results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("bandit-regret.md"), &md)?;
    std::fs::write(
        dir.join("bandit-regret.json"),
        serde_json::to_string_pretty(&json!({"seeds": seeds, "steps": STEPS, "rows": rows}))?,
    )?;
    println!("{md}");
    Ok(())
}
