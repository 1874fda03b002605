//! `make sim`, the filter's guard (`ramp_filter::guard`): how often it trips when the candidate is
//! as good as the baseline (one Envoy, and a fleet of 100 each running its own), how soon it trips
//! on a fault, and what one evaluation costs, through the guard's own functions, seeded. Writes
//! `tests/bench/results/guard-sim.{md,json}`.

use std::hint::black_box;
use std::time::Instant;

use anyhow::Result;
use fastrand::Rng;
use ramp_filter::guard::{ln_gamma, ArmTally, Bound, GuardTest, DEFAULT_ALPHA, DEFAULT_MIN_ERRORS};
use ramp_tests::envoy::repo_root;
use serde_json::{json, Value};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One arm's stream: where its next error is, drawn as geometric gaps (one draw per error, not one
/// per response).
struct Errors {
    p: f64,
    next: u64,
}

impl Errors {
    fn new(p: f64, rng: &mut Rng) -> Self {
        let mut e = Errors { p, next: 0 };
        e.next = e.gap(rng);
        e
    }

    /// Responses up to and including the next error: Geometric(p) on {1, 2, ...}.
    fn gap(&self, rng: &mut Rng) -> u64 {
        if self.p <= 0.0 {
            return u64::MAX / 4;
        }
        if self.p >= 1.0 {
            return 1;
        }
        let u = 1.0 - rng.f64(); // (0, 1]
        1 + (u.ln() / (1.0 - self.p).ln()).floor().min(1e18) as u64
    }

    fn advance(&mut self, rng: &mut Rng) {
        self.next = self.next.saturating_add(self.gap(rng));
    }
}

/// One stream through one guard: the arms' responses alternate (50/50, the candidate's t-th
/// before the baseline's t-th); the guard looks after every candidate error and after every
/// `look_every` responses per arm, up to `horizon` per arm. The candidate's responses at the trip.
fn run(
    test: &GuardTest,
    pc: f64,
    pb: f64,
    horizon: u64,
    look_every: u64,
    seed: u64,
) -> Option<u64> {
    let mut rng = Rng::with_seed(seed);
    let (mut c, mut b) = (Errors::new(pc, &mut rng), Errors::new(pb, &mut rng));
    let (mut ec, mut eb) = (0u64, 0u64);
    let mut tick = look_every;
    loop {
        let at = c.next.min(b.next).min(tick);
        if at > horizon {
            return None;
        }
        if c.next <= b.next && c.next <= tick {
            ec += 1;
            let t = c.next;
            let cand = ArmTally {
                requests: t,
                errors: ec,
            };
            let base = ArmTally {
                requests: t - 1,
                errors: eb,
            };
            if test.trips(cand, base) {
                return Some(t);
            }
            c.advance(&mut rng);
        } else if b.next <= tick {
            eb += 1;
            b.advance(&mut rng);
        } else {
            let cand = ArmTally {
                requests: tick,
                errors: ec,
            };
            let base = ArmTally {
                requests: tick,
                errors: eb,
            };
            if test.trips(cand, base) {
                return Some(tick);
            }
            tick += look_every;
        }
    }
}

/// `runs` seeded runs over all cores; run i's seed depends only on (`seed`, i), so the results do
/// not depend on the number of threads.
fn runs(
    test: &GuardTest,
    pc: f64,
    pb: f64,
    horizon: u64,
    look: u64,
    n: usize,
    seed: u64,
) -> Vec<Option<u64>> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let mut out = vec![None; n];
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (k, part) in out.chunks_mut(chunk).enumerate() {
            s.spawn(move || {
                for (j, slot) in part.iter_mut().enumerate() {
                    let i = (k * chunk + j) as u64;
                    *slot = run(
                        test,
                        pc,
                        pb,
                        horizon,
                        look,
                        seed.wrapping_mul(1_000_003).wrapping_add(i),
                    );
                }
            });
        }
    });
    out
}

/// A rate and its standard error.
fn rate(k: usize, n: usize) -> (f64, f64) {
    let p = k as f64 / n.max(1) as f64;
    (p, (p * (1.0 - p) / n.max(1) as f64).sqrt())
}

/// The exact (Clopper-Pearson) one-sided 95% upper limit on a rate seen `k` times in `n`.
fn upper95(k: usize, n: usize) -> f64 {
    if k >= n {
        return 1.0;
    }
    let nf = n as f64;
    let ln_choose = |i: f64| ln_gamma(nf + 1.0) - ln_gamma(i + 1.0) - ln_gamma(nf - i + 1.0);
    let cdf = |p: f64| -> f64 {
        (0..=k)
            .map(|i| {
                let i = i as f64;
                (ln_choose(i) + i * p.ln() + (nf - i) * (-p).ln_1p()).exp()
            })
            .sum()
    };
    let (mut lo, mut hi) = (k as f64 / nf, 1.0);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if cdf(mid) > 0.05 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

fn pct((p, se): (f64, f64)) -> String {
    format!("{:.3}% +- {:.3}%", p * 100.0, se * 100.0)
}

fn bound_name(b: Bound) -> String {
    match b {
        Bound::MaxErrorRate(p0) => format!("`max_error_rate {p0}`"),
        Bound::VsBaseline { max_increase } => {
            format!("`max_increase {max_increase}` (vs baseline)")
        }
    }
}

fn guard(bound: Bound) -> GuardTest {
    GuardTest {
        alpha: DEFAULT_ALPHA,
        min_errors: DEFAULT_MIN_ERRORS,
        bound,
    }
}

fn main() -> Result<()> {
    let started = Instant::now();
    let aa_runs = env_or("RAMP_SIM_GUARD_AA_RUNS", 2000);
    let detect_runs = env_or("RAMP_SIM_GUARD_DETECT_RUNS", 1000);
    let fleets = env_or("RAMP_SIM_GUARD_FLEETS", 200);
    let horizon = env_or("RAMP_SIM_GUARD_HORIZON", 1_000_000) as u64;
    let look = 50;
    let alpha_pct = DEFAULT_ALPHA * 100.0;

    // 1. A/A, one Envoy.
    let mut md = format!(
        "# The guard\n\n`make sim` (`ramp-sim-guard`): the filter's own `guard::GuardTest`, natively, seeded. alpha {DEFAULT_ALPHA}, \
         min_errors {DEFAULT_MIN_ERRORS}. Rates are +- one standard error. The arms' responses alternate (50/50 traffic); \
         the guard looks after every candidate error and after every {look} responses per arm (a 100 ms tick at 1,000 rps), \
         up to {horizon} responses per arm.\n\n\
         ## A/A: both arms at the same 5xx rate (false trips)\n\n\
         The bound: at most alpha = {alpha_pct}% of runs, however often it looks (Ville's inequality); the target was 1%.\n\n\
         | 5xx rate | bound | runs | tripped | exact 95% upper limit |\n|---:|---|---:|---:|---:|\n"
    );
    let mut aa_json = Vec::new();
    for (i, p) in [0.001, 0.01, 0.05].into_iter().enumerate() {
        for (j, bound) in [
            Bound::VsBaseline { max_increase: 0.0 },
            Bound::MaxErrorRate(p),
        ]
        .into_iter()
        .enumerate()
        {
            let out = runs(
                &guard(bound),
                p,
                p,
                horizon,
                look,
                aa_runs,
                100 + 10 * i as u64 + j as u64,
            );
            let k = out.iter().filter(|t| t.is_some()).count();
            let r = rate(k, aa_runs);
            let upper = upper95(k, aa_runs);
            md += &format!(
                "| {}% | {} | {aa_runs} | {} | {:.3}% |\n",
                p * 100.0,
                bound_name(bound),
                pct(r),
                upper * 100.0
            );
            aa_json.push(json!({"p": p, "bound": format!("{bound:?}"), "runs": aa_runs, "tripped": r, "upper95": upper}));
        }
    }

    // The same at a loose alpha and no min_errors: at alpha 0.001 a correct test and a broken but
    // timid one both show no trips; here the bound is close enough to be checked.
    md += "\nThe same at alpha 0.05 and min_errors 0, where the bound can be seen to hold rather than be far away:\n\n\
           | 5xx rate | bound | runs | tripped (bound 5%) |\n|---:|---|---:|---:|\n";
    let mut loose_json = Vec::new();
    for (j, bound) in [
        Bound::VsBaseline { max_increase: 0.0 },
        Bound::MaxErrorRate(0.01),
    ]
    .into_iter()
    .enumerate()
    {
        let test = GuardTest {
            alpha: 0.05,
            min_errors: 0,
            bound,
        };
        let out = runs(&test, 0.01, 0.01, horizon, look, aa_runs, 150 + j as u64);
        let r = rate(out.iter().filter(|t| t.is_some()).count(), aa_runs);
        md += &format!("| 1% | {} | {aa_runs} | {} |\n", bound_name(bound), pct(r));
        loose_json.push(json!({"p": 0.01, "alpha": 0.05, "min_errors": 0, "bound": format!("{bound:?}"), "runs": aa_runs, "tripped": r}));
    }
    eprintln!("A/A done at {:.1} s", started.elapsed().as_secs_f64());
    // 2. Detection.
    md += &format!(
        "\n## Detection: a faulty candidate\n\n{detect_runs} runs per row; a run stops at the trip. Responses per arm \
         until the trip (the candidate's), and the same in ms at 500 candidate rps (1,000 rps, 50% share). \
         Percentiles over all runs (a run that never trips counts as beyond the horizon).\n\n\
         | candidate 5xx | baseline 5xx | bound | tripped by {horizon} | median responses | p90 responses | median ms | p90 ms |\n\
         |---:|---:|---|---:|---:|---:|---:|---:|\n"
    );
    let mut detect_json = Vec::new();
    let faults = [
        (1.0 / 3.0, 0.001, Bound::VsBaseline { max_increase: 0.0 }),
        (1.0 / 3.0, 0.001, Bound::MaxErrorRate(0.01)),
        (0.05, 0.001, Bound::VsBaseline { max_increase: 0.0 }),
        (0.05, 0.01, Bound::VsBaseline { max_increase: 0.0 }),
        (0.05, 0.01, Bound::VsBaseline { max_increase: 0.01 }),
        (0.02, 0.01, Bound::VsBaseline { max_increase: 0.0 }),
        (0.02, 0.01, Bound::MaxErrorRate(0.01)),
    ];
    for (i, (pc, pb, bound)) in faults.into_iter().enumerate() {
        let out = runs(
            &guard(bound),
            pc,
            pb,
            horizon,
            look,
            detect_runs,
            200 + i as u64,
        );
        let mut at: Vec<u64> = out.iter().map(|t| t.unwrap_or(u64::MAX)).collect();
        at.sort_unstable();
        let q = |f: f64| {
            at.get(((at.len() as f64 * f) as usize).min(at.len().saturating_sub(1)))
                .copied()
        };
        let show = |v: Option<u64>, scale: f64| match v {
            Some(v) if v != u64::MAX => format!("{:.0}", v as f64 * scale),
            _ => format!("> {horizon}"),
        };
        let tripped = rate(out.iter().filter(|t| t.is_some()).count(), detect_runs);
        let (med, p90) = (q(0.5), q(0.9));
        md += &format!(
            "| {:.2}% | {}% | {} | {} | {} | {} | {} | {} |\n",
            pc * 100.0,
            pb * 100.0,
            bound_name(bound),
            pct(tripped),
            show(med, 1.0),
            show(p90, 1.0),
            show(med, 2.0),
            show(p90, 2.0),
        );
        let finite = |v: Option<u64>| v.filter(|v| *v != u64::MAX);
        detect_json.push(json!({"candidate": pc, "baseline": pb, "bound": format!("{bound:?}"), "runs": detect_runs,
            "tripped": tripped, "median_responses": finite(med), "p90_responses": finite(p90)}));
    }

    eprintln!("detection done at {:.1} s", started.elapsed().as_secs_f64());
    // 3. Fleet.
    let envoys = 100usize;
    let fleet_per_arm = env_or("RAMP_SIM_GUARD_FLEET_PER_ARM", 1_000_000) as u64;
    let per_envoy = fleet_per_arm / envoys as u64;
    let share = 0.5;
    md += &format!(
        "\n## Fleet: {envoys} Envoys, each with its own guard, A/A\n\n\
         A service at 1,000 rps with the candidate at a {:.0}% share, spread evenly over {envoys} Envoys (10 rps each, \
         5 per arm per second, so a 100 ms tick sees at most a response or two per arm: the guard looks after every \
         response per arm, an upper bound on the ticks' looks). {fleet_per_arm} responses per arm fleet-wide (about \
         {:.0} minutes), {per_envoy} per arm per Envoy. {fleets} fleets per row. Envoys are independent streams.\n\n\
         One Envoy's trip moves only that Envoy's share of the candidate to the baseline: the capacity lost is \
         (Envoys tripped) x {:.0}% / {envoys} of the traffic. A rollback of the candidate, fleet-wide, is the \
         controller's decision, on its own fleet-level rules over the merged counts; no Envoy's guard makes it.\n\n\
         The bound: each Envoy trips with probability at most alpha, so at most {:.1} Envoys are tripped on average \
         and at most {:.1}% of fleets see a trip (1 - (1 - alpha)^{envoys}, the Envoys' streams being independent).\n\n\
         | 5xx rate | bound | fleets with >= 1 trip | mean Envoys tripped | capacity share lost (mean) | per-Envoy trip rate |\n\
         |---:|---|---:|---:|---:|---:|\n",
        share * 100.0,
        fleet_per_arm as f64 / 500.0 / 60.0,
        share * 100.0,
        envoys as f64 * DEFAULT_ALPHA,
        (1.0 - (1.0 - DEFAULT_ALPHA).powi(envoys as i32)) * 100.0,
    );
    let mut fleet_json = Vec::new();
    let fleet_rows = [
        (0.01, Bound::VsBaseline { max_increase: 0.0 }),
        (0.001, Bound::VsBaseline { max_increase: 0.0 }),
        (0.01, Bound::MaxErrorRate(0.01)),
    ];
    for (i, (p, bound)) in fleet_rows.into_iter().enumerate() {
        let out = runs(
            &guard(bound),
            p,
            p,
            per_envoy,
            1,
            fleets * envoys,
            300 + i as u64,
        );
        let tripped: Vec<usize> = out
            .chunks(envoys)
            .map(|f| f.iter().filter(|t| t.is_some()).count())
            .collect();
        let any = rate(tripped.iter().filter(|k| **k > 0).count(), fleets);
        let mean = tripped.iter().sum::<usize>() as f64 / fleets as f64;
        let var = tripped
            .iter()
            .map(|k| (*k as f64 - mean).powi(2))
            .sum::<f64>()
            / fleets.max(2) as f64;
        let se = (var / fleets as f64).sqrt();
        let per_envoy_rate = rate(tripped.iter().sum(), fleets * envoys);
        md += &format!(
            "| {}% | {} | {} | {mean:.3} +- {se:.3} | {:.4}% | {} |\n",
            p * 100.0,
            bound_name(bound),
            pct(any),
            mean * share / envoys as f64 * 100.0,
            pct(per_envoy_rate)
        );
        fleet_json.push(json!({"p": p, "bound": format!("{bound:?}"), "fleets": fleets, "envoys": envoys,
            "per_envoy_per_arm": per_envoy, "any_trip": any, "mean_tripped": [mean, se],
            "capacity_lost_mean": mean * share / envoys as f64, "per_envoy_trip_rate": per_envoy_rate}));
    }

    eprintln!("fleet done at {:.1} s", started.elapsed().as_secs_f64());
    // 4. The cost of one evaluation.
    let (cost_md, cost_json) = cost();
    md += &cost_md;
    md += &format!(
        "\nWall time of this run: {:.1} s.\n",
        started.elapsed().as_secs_f64()
    );

    let results = json!({
        "alpha": DEFAULT_ALPHA, "min_errors": DEFAULT_MIN_ERRORS, "horizon_per_arm": horizon, "look_every_per_arm": look,
        "aa": aa_json, "aa_alpha_0_05": loose_json, "detection": detect_json, "fleet": fleet_json, "ns_per_evaluation": cost_json,
    });
    let out = repo_root().join("tests/bench/results");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("guard-sim.md"), &md)?;
    std::fs::write(
        out.join("guard-sim.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    println!("{md}");
    Ok(())
}

/// Nanoseconds per `trips` call, one thread, natively, over tallies like those a guard sees
/// (past min_errors, so the evidence is computed every time).
fn cost() -> (String, Value) {
    let cases: Vec<(&str, Bound)> = vec![
        ("`max_error_rate 0.01`", Bound::MaxErrorRate(0.01)),
        (
            "`max_increase 0` (closed form)",
            Bound::VsBaseline { max_increase: 0.0 },
        ),
        (
            "`max_increase 0.01` (Newton on the boundary)",
            Bound::VsBaseline { max_increase: 0.01 },
        ),
    ];
    let mut rng = Rng::with_seed(7);
    let tallies: Vec<(ArmTally, ArmTally)> = (0..1024)
        .map(|_| {
            let n = rng.u64(1_000..10_000_000);
            let pc = rng.f64() * 0.05;
            let pb = rng.f64() * 0.02;
            let c = ArmTally {
                requests: n,
                errors: ((n as f64 * pc) as u64).max(5),
            };
            let b = ArmTally {
                requests: n,
                errors: (n as f64 * pb) as u64,
            };
            (c, b)
        })
        .collect();
    let mut md = String::from(
        "\n## Cost of one evaluation\n\n`GuardTest::trips` on 1,024 tallies (1,000 to 10^7 requests per arm, candidate \
         0-5%, baseline 0-2% errors, at least 5 candidate errors), natively, release build, one thread, best of 5 \
         passes of 200 rounds. No allocation.\n\n| bound | ns per evaluation |\n|---|---:|\n",
    );
    let mut js = serde_json::Map::new();
    for (name, bound) in cases {
        let t = guard(bound);
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let start = Instant::now();
            let mut trips = 0u32;
            for _ in 0..200 {
                for (c, b) in &tallies {
                    trips += u32::from(t.trips(black_box(*c), black_box(*b)));
                }
            }
            black_box(trips);
            best = best.min(start.elapsed().as_nanos() as f64 / (200 * tallies.len()) as f64);
        }
        md += &format!("| {name} | {best:.0} |\n");
        js.insert(format!("{bound:?}"), json!(best));
    }
    (md, Value::Object(js))
}
