//! `make sim`, the filter's guard (`ramp_filter::guard`): how often it trips when the candidate is
//! as good as the baseline (one Envoy, and a fleet of 100 each running its own), how soon it trips
//! on a fault, and what one evaluation costs, through the guard's own functions, seeded. Writes
//! `tests/bench/results/guard-sim.{md,json}`.

use std::hint::black_box;
use std::time::Instant;

use anyhow::Result;
use fastrand::Rng;
use ramp_filter::guard::{
    ln_gamma, ln_start_weight, ArmTally, Bound, GuardTest, Window, DEFAULT_ALPHA,
    DEFAULT_MIN_ERRORS,
};
use ramp_filter::guard_share::{GuardRecord, CHECKPOINTS_KEPT, CHECKPOINT_EVERY};
use serde_json::{json, Value};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One arm's stream: where its next error is, drawn as geometric gaps (one draw per error, not one
/// per response). Its rate is `before` up to response `fault_at` and `after` from then on (the gap
/// is redrawn at the fault, exact since the geometric distribution is memoryless).
struct Errors {
    before: f64,
    after: f64,
    fault_at: u64,
    next: u64,
}

/// Responses up to and including the next error: Geometric(p) on {1, 2, ...}.
fn gap(p: f64, rng: &mut Rng) -> u64 {
    if p <= 0.0 {
        return u64::MAX / 4;
    }
    if p >= 1.0 {
        return 1;
    }
    let u = 1.0 - rng.f64(); // (0, 1]
    1 + (u.ln() / (1.0 - p).ln()).floor().min(1e18) as u64
}

impl Errors {
    fn new(before: f64, after: f64, fault_at: u64, rng: &mut Rng) -> Self {
        let mut e = Errors {
            before,
            after,
            fault_at,
            next: 0,
        };
        e.advance(rng);
        e
    }

    fn advance(&mut self, rng: &mut Rng) {
        let from = self.next;
        if from < self.fault_at {
            let next = from.saturating_add(gap(self.before, rng));
            if next <= self.fault_at {
                self.next = next;
                return;
            }
            self.next = self.fault_at.saturating_add(gap(self.after, rng));
        } else {
            self.next = from.saturating_add(gap(self.after, rng));
        }
    }
}

/// Whether the MLE of these counts is in the null: then the e-value is at most 1 (the mixture is
/// at most the likelihood at the MLE). The same conditions as `GuardTest::log_evidence`.
fn mle_in_null(test: &GuardTest, c: ArmTally, b: ArmTally) -> bool {
    let (ec, nc) = (c.errors.min(c.requests) as f64, c.requests as f64);
    match test.bound {
        Bound::MaxErrorRate(p0) => nc == 0.0 || ec / nc <= p0.clamp(0.0, 1.0),
        Bound::VsBaseline { max_increase } => {
            let (eb, nb) = (b.errors.min(b.requests) as f64, b.requests as f64);
            nc == 0.0 || nb == 0.0 || ec / nc <= eb / nb + max_increase.clamp(0.0, 1.0)
        }
    }
}

/// `n (phat - p)^2 / (p (1 - p))`, an upper bound on `n KL(phat || p)` (KL <= chi-square); 0 when
/// `phat = p`, `+inf` when `p` is 0 or 1 and differs.
fn chi2(n: f64, phat: f64, p: f64) -> f64 {
    if phat == p {
        0.0
    } else if p <= 0.0 || p >= 1.0 {
        f64::INFINITY
    } else {
        n * (phat - p) * (phat - p) / (p * (1.0 - p))
    }
}

/// An upper bound on `ln E` of one window with no logarithm in it: E is at most the likelihood
/// ratio of the MLE to any point of the null (the mixture is at most the likelihood at the MLE),
/// and that ratio's log is `sum n KL(phat || p)`, at most the chi-square. The null's point: the
/// bound itself, or (q + d, q) with q the pooled rate shifted by d. 0 when the MLE is in the null.
fn ln_e_bound(test: &GuardTest, c: ArmTally, b: ArmTally) -> f64 {
    if mle_in_null(test, c, b) {
        return 0.0;
    }
    let (ec, nc) = (c.errors.min(c.requests) as f64, c.requests as f64);
    match test.bound {
        Bound::MaxErrorRate(p0) => chi2(nc, ec / nc, p0.clamp(0.0, 1.0)),
        Bound::VsBaseline { max_increase } => {
            let d = max_increase.clamp(0.0, 1.0);
            let (eb, nb) = (b.errors.min(b.requests) as f64, b.requests as f64);
            let q = ((ec + eb - d * nc) / (nc + nb)).clamp(0.0, 1.0 - d);
            chi2(nc, ec / nc, q + d) + chi2(nb, eb / nb, q)
        }
    }
}

/// The first screen of `trips_any` below on the record itself, without building its windows: false
/// when no window's `ln_e_bound` reaches ln(1/alpha) (or the epoch has too few candidate errors),
/// so that the record's windows would not trip. Arm 0 the baseline, arm 1 the candidate.
fn may_trip(test: &GuardTest, record: &GuardRecord) -> bool {
    let (b, c) = (record.arms[0], record.arms[1]);
    if c.errors < test.min_errors {
        return false;
    }
    let threshold = -test.alpha.ln();
    ln_e_bound(test, c, b) >= threshold
        || record
            .checkpoints
            .iter()
            .any(|(_, then)| ln_e_bound(test, minus(c, then[1]), minus(b, then[0])) >= threshold)
}

/// `test.trips_any(epoch_errors, windows)`, the filter's decision, asked only when it can be yes.
/// The sum of `w_k E_k` is at most the largest `E_k` (the weights sum to at most 1), so when every
/// window's `ln_e_bound` is below ln(1/alpha) the answer is no; next, an upper bound on the sum
/// with each window whose MLE is in the null counted at E = 1 must reach 1/alpha. The answer is
/// the same as asking `trips_any` at every look; most looks cost a few divisions.
/// `RAMP_SIM_GUARD_NO_SCREEN=1` asks `trips_any` at every look.
fn trips_any(test: &GuardTest, epoch_errors: u64, windows: &[Window], screen: bool) -> bool {
    if epoch_errors < test.min_errors {
        return false;
    }
    if screen {
        let threshold = -test.alpha.ln();
        if windows
            .iter()
            .all(|w| ln_e_bound(test, w.candidate, w.baseline) < threshold)
        {
            return false;
        }
        let bound: f64 = windows
            .iter()
            .map(|w| {
                let ln_e = if mle_in_null(test, w.candidate, w.baseline) {
                    0.0
                } else {
                    test.log_evidence(w.candidate, w.baseline)
                };
                (w.ln_weight + ln_e).exp()
            })
            .sum();
        // A margin of 1e-9 for rounding: the screen only skips looks clearly below.
        if bound.ln() < threshold - 1e-9 {
            return false;
        }
    }
    test.trips_any(epoch_errors, windows)
}

/// Where each test tripped (the candidate's responses then), `None` if not by the horizon.
#[derive(Clone, Copy, Debug, Default)]
struct Trips {
    /// The filter's test: `trips_any` over the windows of a `GuardRecord` merged at every look.
    windows: Option<u64>,
    /// The epoch-only test: `trips` on the cumulative counts, at the same looks.
    epoch: Option<u64>,
}

/// What a run simulates: the candidate's 5xx rate before and from response `fault_at` (per
/// arm), the baseline's, the last response per arm, the look schedule, which tests.
#[derive(Clone, Copy)]
struct Scenario {
    healthy: f64,
    faulty: f64,
    fault_at: u64,
    baseline: f64,
    horizon: u64,
    look_every: u64,
    epoch_too: bool,
    screen: bool,
}

fn minus(a: ArmTally, b: ArmTally) -> ArmTally {
    ArmTally {
        requests: a.requests - b.requests,
        errors: a.errors - b.errors,
    }
}

/// One stream through one Envoy's guard: the arms' responses alternate (50/50, the candidate's
/// t-th before the baseline's t-th); the guard looks after every candidate error (the candidate's
/// t-th response and the baseline's t-1 merged) and after every `look_every` responses per arm, up
/// to `horizon` per arm. At each look the counts since the last one are merged into the Envoy's
/// `GuardRecord` (`GuardRecord::add`, what `merged` does, checkpoints included) and the filter's
/// test is asked over `record.windows`; the epoch-only test, if asked for, on the same counts.
fn run(test: &GuardTest, sc: &Scenario, seed: u64) -> Trips {
    let mut rng = Rng::with_seed(seed);
    let mut c = Errors::new(sc.healthy, sc.faulty, sc.fault_at, &mut rng);
    let mut b = Errors::new(sc.baseline, sc.baseline, 0, &mut rng);
    let (mut ec, mut eb) = (0u64, 0u64);
    let mut tick = sc.look_every;
    // Arm 0 the baseline, arm 1 the candidate.
    let mut record = GuardRecord::new(1, 2);
    let (mut seen_c, mut seen_b) = (ArmTally::default(), ArmTally::default());
    let mut out = Trips::default();
    let (mut want_windows, mut want_epoch) = (true, sc.epoch_too);
    while want_windows || want_epoch {
        let at = c.next.min(b.next).min(tick);
        if at > sc.horizon {
            break;
        }
        let (cand, base) = if c.next <= b.next && c.next <= tick {
            ec += 1;
            let t = c.next;
            c.advance(&mut rng);
            (
                ArmTally {
                    requests: t,
                    errors: ec,
                },
                ArmTally {
                    requests: t - 1,
                    errors: eb,
                },
            )
        } else if b.next <= tick {
            eb += 1;
            b.advance(&mut rng);
            continue;
        } else {
            let t = tick;
            tick += sc.look_every;
            let at = |errors| ArmTally {
                requests: t,
                errors,
            };
            (at(ec), at(eb))
        };
        let t = cand.requests;
        if want_windows {
            record.add(&[minus(base, seen_b), minus(cand, seen_c)], 0);
            (seen_c, seen_b) = (cand, base);
            if (!sc.screen || may_trip(test, &record))
                && trips_any(
                    test,
                    record.arms[1].errors,
                    &record.windows(1, 0),
                    sc.screen,
                )
            {
                out.windows = Some(t);
                want_windows = false;
            }
        }
        if want_epoch && test.trips(cand, base) {
            out.epoch = Some(t);
            want_epoch = false;
        }
    }
    out
}

/// `n` seeded runs over all cores; run i's seed depends only on (`seed`, i), so the results do
/// not depend on the number of threads.
fn runs(test: &GuardTest, sc: &Scenario, n: usize, seed: u64) -> Vec<Trips> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let mut out = vec![Trips::default(); n];
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (k, part) in out.chunks_mut(chunk).enumerate() {
            s.spawn(move || {
                for (j, slot) in part.iter_mut().enumerate() {
                    let i = (k * chunk + j) as u64;
                    *slot = run(test, sc, seed.wrapping_mul(1_000_003).wrapping_add(i));
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

/// The q-quantile of trip points, a run that never tripped counting as beyond everything.
fn quantile(at: &[Option<u64>], q: f64) -> Option<u64> {
    let mut v: Vec<u64> = at.iter().map(|t| t.unwrap_or(u64::MAX)).collect();
    v.sort_unstable();
    v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .filter(|t| *t != u64::MAX)
}

fn show(v: Option<u64>, scale: f64, beyond: u64) -> String {
    match v {
        Some(v) => format!("{:.0}", v as f64 * scale),
        None => format!("> {beyond}"),
    }
}

fn main() -> Result<()> {
    let started = Instant::now();
    let aa_runs = env_or("RAMP_SIM_GUARD_AA_RUNS", 2000);
    let detect_runs = env_or("RAMP_SIM_GUARD_DETECT_RUNS", 1000);
    let late_runs = env_or("RAMP_SIM_GUARD_LATE_RUNS", 1000);
    let fleets = env_or("RAMP_SIM_GUARD_FLEETS", 200);
    let horizon = env_or("RAMP_SIM_GUARD_HORIZON", 1_000_000) as u64;
    let late_healthy = env_or("RAMP_SIM_GUARD_LATE_HEALTHY", 1_000_000) as u64;
    let screen = env_or("RAMP_SIM_GUARD_NO_SCREEN", 0) == 0;
    let look = 50;
    let alpha_pct = DEFAULT_ALPHA * 100.0;
    let scenario = |healthy: f64, faulty: f64, fault_at: u64, baseline: f64| Scenario {
        healthy,
        faulty,
        fault_at,
        baseline,
        horizon: fault_at + horizon,
        look_every: look,
        epoch_too: false,
        screen,
    };

    // 1. A/A, one Envoy.
    let mut md = format!(
        "# The guard\n\n`make sim` (`ramp-sim-guard`): the filter's own guard, natively, seeded. alpha {DEFAULT_ALPHA}, \
         min_errors {DEFAULT_MIN_ERRORS}. Rates are +- one standard error. The arms' responses alternate (50/50 traffic) \
         through one Envoy's `guard_share::GuardRecord`: the guard looks after every candidate error (the candidate's \
         t-th response and the baseline's t-1 merged) and after every {look} responses per arm (a 100 ms tick at \
         1,000 rps), up to {horizon} responses per arm. At each look the counts since the last are merged into the \
         record (`GuardRecord::add`, the arithmetic of `merged`; a checkpoint every {CHECKPOINT_EVERY} responses, the \
         newest {CHECKPOINTS_KEPT} kept) and the filter's test is asked: `GuardTest::trips_any` over `record.windows`, \
         the epoch's counts at weight 1/2 and those since each kept checkpoint k at 1/(2k(k+1)). One worker: the filter's \
         workers each merge at their ticks and at their candidate 5xx, and every look is a point of the one sequence of \
         the record's totals, so merging everything at every look is the finest schedule of that sequence, at least as \
         many looks as the filter's (more looks can only add trips). \"Epoch only\" is the previous test, \
         `GuardTest::trips` on the epoch's counts, at the same looks.{}\n\n\
         ## A/A: both arms at the same 5xx rate (false trips)\n\n\
         The bound: at most alpha = {alpha_pct}% of runs, however often it looks (Ville's inequality, the windows' \
         weights summing to 1).\n\n\
         | 5xx rate | bound | runs | tripped | exact 95% upper limit |\n|---:|---|---:|---:|---:|\n",
        if screen {
            " A look is passed to `trips_any` only when upper bounds on its sum reach 1/alpha (the largest window's \
             chi-square statistic, which bounds its ln E, then the sum with each window whose maximum likelihood is \
             in the null counted at E = 1); below them `trips_any` says no, so the decisions are the same \
             (`RAMP_SIM_GUARD_NO_SCREEN=1` asks it at every look, and gives the same table)."
        } else {
            ""
        }
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
                &scenario(p, p, 0, p),
                aa_runs,
                100 + 10 * i as u64 + j as u64,
            );
            let k = out.iter().filter(|t| t.windows.is_some()).count();
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
        eprintln!("A/A {p} done at {:.1} s", started.elapsed().as_secs_f64());
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
        let out = runs(
            &test,
            &scenario(0.01, 0.01, 0, 0.01),
            aa_runs,
            150 + j as u64,
        );
        let r = rate(out.iter().filter(|t| t.windows.is_some()).count(), aa_runs);
        md += &format!("| 1% | {} | {aa_runs} | {} |\n", bound_name(bound), pct(r));
        loose_json.push(json!({"p": 0.01, "alpha": 0.05, "min_errors": 0, "bound": format!("{bound:?}"), "runs": aa_runs, "tripped": r}));
    }
    eprintln!("A/A done at {:.1} s", started.elapsed().as_secs_f64());

    // 2. Detection, the fault from the start.
    md += &format!(
        "\n## Detection: a faulty candidate from the start\n\n{detect_runs} runs per row; a run stops when both tests \
         have tripped. The candidate's responses until the trip, and the same in ms at 500 candidate rps (1,000 rps, \
         50% share). Percentiles over all runs (a run that never trips counts as beyond the horizon).\n\n\
         | candidate 5xx | baseline 5xx | bound | tripped by {horizon} | median responses | p90 responses | median ms | p90 ms | epoch only: median | p90 |\n\
         |---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n"
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
        let sc = Scenario {
            epoch_too: true,
            ..scenario(pc, pc, 0, pb)
        };
        let out = runs(&guard(bound), &sc, detect_runs, 200 + i as u64);
        let w: Vec<Option<u64>> = out.iter().map(|t| t.windows).collect();
        let e: Vec<Option<u64>> = out.iter().map(|t| t.epoch).collect();
        let tripped = rate(w.iter().filter(|t| t.is_some()).count(), detect_runs);
        let (med, p90) = (quantile(&w, 0.5), quantile(&w, 0.9));
        let (emed, ep90) = (quantile(&e, 0.5), quantile(&e, 0.9));
        md += &format!(
            "| {:.2}% | {}% | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            pc * 100.0,
            pb * 100.0,
            bound_name(bound),
            pct(tripped),
            show(med, 1.0, horizon),
            show(p90, 1.0, horizon),
            show(med, 2.0, 2 * horizon),
            show(p90, 2.0, 2 * horizon),
            show(emed, 1.0, horizon),
            show(ep90, 1.0, horizon),
        );
        detect_json.push(json!({"candidate": pc, "baseline": pb, "bound": format!("{bound:?}"), "runs": detect_runs,
            "tripped": tripped, "median_responses": med, "p90_responses": p90,
            "epoch_only": {"median_responses": emed, "p90_responses": ep90}}));
    }
    eprintln!("detection done at {:.1} s", started.elapsed().as_secs_f64());

    // 3. Detection, a late fault.
    md += &format!(
        "\n## Detection: a fault late in the stage\n\n{late_runs} runs per row. The candidate is as healthy as the \
         baseline for {late_healthy} responses per arm, then faulty; a run goes on to {horizon} responses per arm after \
         the fault, or until both tests have tripped. The candidate's responses from the fault to the trip, percentiles \
         over the runs not tripped before the fault (a run that never trips counts as beyond the horizon). The \
         checkpoints' windows judge the fault on the counts since the checkpoint before it; the epoch-only test on \
         every healthy response since the stage began.\n\n\
         | candidate 5xx from the fault | baseline 5xx | bound | tripped before the fault | tripped after | median responses | p90 | epoch only: tripped after | median | p90 |\n\
         |---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let mut late_json = Vec::new();
    let late = [
        (1.0 / 3.0, 0.001, Bound::VsBaseline { max_increase: 0.0 }),
        (0.05, 0.01, Bound::VsBaseline { max_increase: 0.0 }),
        (1.0 / 3.0, 0.001, Bound::MaxErrorRate(0.05)),
    ];
    for (i, (pc, pb, bound)) in late.into_iter().enumerate() {
        let sc = Scenario {
            epoch_too: true,
            ..scenario(pb, pc, late_healthy, pb)
        };
        let out = runs(&guard(bound), &sc, late_runs, 400 + i as u64);
        let split = |pick: fn(&Trips) -> Option<u64>| {
            let before = out
                .iter()
                .filter(|t| pick(t).is_some_and(|t| t <= late_healthy))
                .count();
            let after: Vec<Option<u64>> = out
                .iter()
                .map(pick)
                .filter(|t| t.is_none_or(|t| t > late_healthy))
                .map(|t| t.map(|t| t - late_healthy))
                .collect();
            (before, after)
        };
        let (wb, w) = split(|t| t.windows);
        let (eb, e) = split(|t| t.epoch);
        let tripped = |v: &[Option<u64>]| rate(v.iter().filter(|t| t.is_some()).count(), v.len());
        let (med, p90) = (quantile(&w, 0.5), quantile(&w, 0.9));
        let (emed, ep90) = (quantile(&e, 0.5), quantile(&e, 0.9));
        md += &format!(
            "| {:.2}% | {}% | {} | {wb} / {eb} (epoch only) | {} | {} | {} | {} | {} | {} |\n",
            pc * 100.0,
            pb * 100.0,
            bound_name(bound),
            pct(tripped(&w)),
            show(med, 1.0, horizon),
            show(p90, 1.0, horizon),
            pct(tripped(&e)),
            show(emed, 1.0, horizon),
            show(ep90, 1.0, horizon),
        );
        late_json.push(json!({"candidate_after": pc, "baseline": pb, "bound": format!("{bound:?}"), "runs": late_runs,
            "healthy_per_arm": late_healthy, "tripped_before": wb, "tripped_after": tripped(&w),
            "median_responses_from_fault": med, "p90_responses_from_fault": p90,
            "epoch_only": {"tripped_before": eb, "tripped_after": tripped(&e),
                "median_responses_from_fault": emed, "p90_responses_from_fault": ep90}}));
        eprintln!("late {i} done at {:.1} s", started.elapsed().as_secs_f64());
    }

    // 4. Fleet.
    let envoys = 100usize;
    let fleet_per_arm = env_or("RAMP_SIM_GUARD_FLEET_PER_ARM", 1_000_000) as u64;
    let per_envoy = fleet_per_arm / envoys as u64;
    let share = 0.5;
    md += &format!(
        "\n## Fleet: {envoys} Envoys, each with its own guard, A/A\n\n\
         A service at 1,000 rps with the candidate at a {:.0}% share, spread evenly over {envoys} Envoys (10 rps each, \
         5 per arm per second, so a 100 ms tick sees at most a response or two per arm: each Envoy's record is merged \
         and its guard looks after every response per arm, an upper bound on the ticks' looks). {fleet_per_arm} \
         responses per arm fleet-wide (about {:.0} minutes), {per_envoy} per arm per Envoy. {fleets} fleets per row. \
         Envoys are independent streams.\n\n\
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
        let sc = Scenario {
            horizon: per_envoy,
            look_every: 1,
            ..scenario(p, p, 0, p)
        };
        let out = runs(&guard(bound), &sc, fleets * envoys, 300 + i as u64);
        let tripped: Vec<usize> = out
            .chunks(envoys)
            .map(|f| f.iter().filter(|t| t.windows.is_some()).count())
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
        eprintln!("fleet {i} done at {:.1} s", started.elapsed().as_secs_f64());
    }

    // 5. The cost of one evaluation.
    let (cost_md, cost_json) = cost();
    md += &cost_md;
    md += &format!(
        "\nWall time of this run: {:.1} s on {} threads.\n",
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |t| t.get())
    );

    let results = json!({
        "alpha": DEFAULT_ALPHA, "min_errors": DEFAULT_MIN_ERRORS, "horizon_per_arm": horizon, "look_every_per_arm": look,
        "checkpoint_every": CHECKPOINT_EVERY, "checkpoints_kept": CHECKPOINTS_KEPT, "screened": screen,
        "aa": aa_json, "aa_alpha_0_05": loose_json, "detection": detect_json, "late_fault": late_json,
        "fleet": fleet_json, "ns_per_evaluation": cost_json,
    });
    ramp_tools::write_results("guard-sim", &md, &results)?;
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
    // The filter's test over a full record's windows: the epoch and 8 checkpoints, each window a
    // share of the epoch's counts.
    let t = guard(Bound::VsBaseline { max_increase: 0.0 });
    let part = |a: ArmTally, k: u64| ArmTally {
        requests: a.requests * (9 - k) / 9,
        errors: (a.errors * (9 - k) / 9).max(5),
    };
    let sets: Vec<(u64, Vec<Window>)> = tallies
        .iter()
        .map(|(c, b)| {
            let ws = (0..=CHECKPOINTS_KEPT as u64)
                .map(|k| Window {
                    ln_weight: ln_start_weight(if k == 0 { 0 } else { 10 + k }),
                    candidate: part(*c, k),
                    baseline: part(*b, k),
                })
                .collect();
            (c.errors, ws)
        })
        .collect();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        let mut trips = 0u32;
        for _ in 0..20 {
            for (e, ws) in &sets {
                trips += u32::from(t.trips_any(black_box(*e), black_box(ws)));
            }
        }
        black_box(trips);
        best = best.min(start.elapsed().as_nanos() as f64 / (20 * sets.len()) as f64);
    }
    md += &format!(
        "| `trips_any`, `max_increase 0`, over {} windows (the epoch and {CHECKPOINTS_KEPT} checkpoints) | {best:.0} |\n",
        CHECKPOINTS_KEPT + 1
    );
    js.insert("trips_any_9_windows_max_increase_0".into(), json!(best));
    (md, Value::Object(js))
}
