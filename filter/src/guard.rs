//! The guard's statistics: an anytime-valid test, on counts alone, that a candidate's 5xx rate is too high.
//!
//! Sequential universal inference (Wasserman, Ramdas & Balakrishnan, "Universal inference", PNAS
//! 2020): the e-value is `E = m(data) / sup_{H0} L(data)`, where `m` is a Beta(1/2, 1/2)
//! (Jeffreys, Krichevsky–Trofimov) mixture of Bernoulli likelihoods, one per arm, and the
//! denominator is the likelihood maximised over the null. For any true null parameter `θ0`,
//! `E_t <= m_t / L_θ0,t`, a nonnegative martingale with mean 1, so Ville's inequality gives
//! `P(sup_t E_t >= 1/alpha) <= alpha` however often it is looked at. Both parts depend on the
//! counts only (the mixture is exchangeable), so workers may merge counts in any order.
//!
//! Why Jeffreys: its regret against the best fixed rate is `1/2 ln n + O(1)` uniformly, including
//! near rate 0, where 5xx rates live; a uniform prior loses `ln n` there, which is evidence lost.
//!
//! The arithmetic avoids the cancellation of `ln Γ` differences at large counts: `ln B` is written
//! in Stirling form and the likelihood ratio through Loader's deviance `bd0` (as R's `dbinom`
//! does), so `log_evidence` stays accurate to far below the threshold at counts of 10^15 and
//! finite (never NaN) up to `u64::MAX`. One evaluation takes 60 to 190 ns natively (`make sim`) and
//! allocates nothing.

/// The false-trip bound used when none is configured.
pub const DEFAULT_ALPHA: f64 = 0.001;
/// Candidate errors needed before the guard may trip, whatever the evidence.
pub const DEFAULT_MIN_ERRORS: u64 = 5;

/// One arm's responses and, of them, 5xx.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArmTally {
    pub requests: u64,
    pub errors: u64,
}

/// The null hypothesis the guard tests against (it trips when the data rule it out).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// H0: the candidate's error rate is at most this (the baseline is not used).
    MaxErrorRate(f64),
    /// H0: the candidate's error rate is at most the baseline's plus `max_increase` (>= 0).
    VsBaseline { max_increase: f64 },
}

/// The guard's sequential test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardTest {
    /// The bound on the probability of ever tripping when the null holds, in (0, 1).
    pub alpha: f64,
    /// Candidate errors needed before a trip.
    pub min_errors: u64,
    pub bound: Bound,
}

impl Default for GuardTest {
    fn default() -> Self {
        GuardTest {
            alpha: DEFAULT_ALPHA,
            min_errors: DEFAULT_MIN_ERRORS,
            bound: Bound::VsBaseline { max_increase: 0.0 },
        }
    }
}

impl GuardTest {
    /// ln of the e-value (0 or below: no evidence). Never NaN; `+inf` only when the null cannot
    /// have produced the counts (a candidate error under `MaxErrorRate(0)`). Errors above requests
    /// count as requests; a NaN bound gives 0.
    pub fn log_evidence(&self, candidate: ArmTally, baseline: ArmTally) -> f64 {
        let (ec, fc) = counts(candidate);
        match self.bound {
            Bound::MaxErrorRate(p0) => {
                if p0.is_nan() || ec + fc == 0.0 {
                    return 0.0;
                }
                let p0 = p0.clamp(0.0, 1.0);
                let n = ec + fc;
                if ec / n <= p0 {
                    log_ratio(ec, fc, ec / n, fc / n)
                } else {
                    log_ratio(ec, fc, p0, 1.0 - p0)
                }
            }
            Bound::VsBaseline { max_increase } => {
                if max_increase.is_nan() {
                    return 0.0;
                }
                let d = max_increase.clamp(0.0, 1.0);
                let (eb, fb) = counts(baseline);
                let (nc, nb) = (ec + fc, eb + fb);
                if nc == 0.0 {
                    return arm_at_mle(eb, fb);
                }
                if nb == 0.0 || ec / nc <= eb / nb + d {
                    // The unconstrained maximum is in the null: E <= 1 up to the mixture's regret.
                    return arm_at_mle(ec, fc) + arm_at_mle(eb, fb);
                }
                if d == 0.0 {
                    // The pooled rate, its complement from the successes so that it keeps its
                    // digits when the rate is near 1.
                    let n = nc + nb;
                    let (p, not_p) = ((ec + eb) / n, (fc + fb) / n);
                    return log_ratio(ec, fc, p, not_p) + log_ratio(eb, fb, p, not_p);
                }
                let q = boundary_baseline_rate(ec, fc, eb, fb, d);
                let pc = (q + d).min(1.0);
                log_ratio(ec, fc, pc, (1.0 - q - d).max(0.0)) + log_ratio(eb, fb, q, 1.0 - q)
            }
        }
    }

    /// Whether to cut the candidate's traffic now: at least `min_errors` candidate errors and
    /// `E >= 1/alpha`. An `alpha` outside (0, 1) (or NaN) never trips.
    pub fn trips(&self, candidate: ArmTally, baseline: ArmTally) -> bool {
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return false;
        }
        let errors = candidate.errors.min(candidate.requests);
        errors >= self.min_errors
            && self.log_evidence(candidate, baseline) >= -libm::log(self.alpha)
    }
}

/// The counts since one start point, and the ln of that start's prior weight ([`ln_start_weight`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub ln_weight: f64,
    pub candidate: ArmTally,
    pub baseline: ArmTally,
}

/// The weight of start point `k`: the epoch's start (`k` = 0) 1/2, checkpoint `k` >= 1
/// 1/(2k(k+1)); they sum to 1.
pub fn ln_start_weight(k: u64) -> f64 {
    if k == 0 {
        -core::f64::consts::LN_2
    } else {
        let k = k as f64;
        -(core::f64::consts::LN_2 + libm::log(k) + libm::log(k + 1.0))
    }
}

impl GuardTest {
    /// The test over several start points: trips when ln(sum of w_k E_k) >= ln(1/alpha), with
    /// E_k the e-value of the counts since start `k` and at least `min_errors` candidate errors
    /// in the epoch. Each E_k is a test supermartingale from its start (1 before it, the start
    /// decided by response counts, never by outcomes), and the weights sum to at most 1, so the
    /// sum is one too and Ville's bound `alpha` holds for it, however often it is looked at;
    /// leaving a start point out only lowers the sum. What it buys: a fault that begins late in
    /// a long stage is judged on the counts since the checkpoint before it, not diluted by every
    /// healthy response since the stage began, at the price of the checkpoint's weight.
    pub fn trips_any(&self, epoch_errors: u64, windows: &[Window]) -> bool {
        if !(self.alpha > 0.0 && self.alpha < 1.0) || epoch_errors < self.min_errors {
            return false;
        }
        let terms = windows
            .iter()
            .map(|w| w.ln_weight + self.log_evidence(w.candidate, w.baseline));
        let top = terms.clone().fold(f64::NEG_INFINITY, f64::max);
        if top.is_nan() || top == f64::NEG_INFINITY {
            return false;
        }
        if top == f64::INFINITY {
            return true;
        }
        let sum: f64 = terms.map(|t| libm::exp(t - top)).sum();
        top + libm::log(sum) >= -libm::log(self.alpha)
    }
}

/// (errors, successes) as floats, errors clamped to requests.
fn counts(t: ArmTally) -> (f64, f64) {
    let e = t.errors.min(t.requests);
    (e as f64, (t.requests - e) as f64)
}

fn arm_at_mle(e: f64, f: f64) -> f64 {
    if e + f == 0.0 {
        0.0
    } else {
        log_ratio(e, f, e / (e + f), f / (e + f))
    }
}

const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;
const LN_PI: f64 = 1.144_729_885_849_400_2;

/// `ln m(e, f) - ln L_p(e, f)`: the Jeffreys mixture's log marginal likelihood of `e` errors and
/// `f` successes minus the Bernoulli log likelihood at rate `p`, with `0 ln 0 = 0`. `not_p` is
/// `1 - p`, passed in so that callers that know it exactly (from counts) keep its digits.
fn log_ratio(e: f64, f: f64, p: f64, not_p: f64) -> f64 {
    if (e > 0.0 && p <= 0.0) || (f > 0.0 && not_p <= 0.0) {
        return f64::INFINITY;
    }
    if p <= 0.0 {
        return ln_beta(0.5, f + 0.5) - LN_PI;
    }
    if not_p <= 0.0 {
        return ln_beta(e + 0.5, 0.5) - LN_PI;
    }
    let (x, y) = (e + 0.5, f + 0.5);
    let s = x + y;
    // ln B(x, y) in Stirling form minus e ln p + f ln(1-p); see `ln_beta`.
    // The ln terms folded into two: ln p + ln((1 - p) s / (x y)), with s / (x y) = 1/x + 1/y (no
    // overflow; p stays alone so that a subnormal p cannot underflow the product to 0).
    bd0(x, s * p)
        + bd0(y, s * not_p)
        + 0.5 * (libm::log(p) + libm::log(not_p * (1.0 / x + 1.0 / y)))
        + HALF_LN_2PI
        + stirling_error(x)
        + stirling_error(y)
        - stirling_error(s)
        - LN_PI
}

/// Loader's deviance term `x ln(x/m) + m - x`, accurate when `x` is close to `m`.
fn bd0(x: f64, m: f64) -> f64 {
    if (x - m).abs() < 0.1 * (x + m) {
        let v = (x - m) / (x + m);
        let mut s = (x - m) * v;
        let mut ej = 2.0 * x * v;
        let v2 = v * v;
        let mut j = 3.0;
        while j < 200.0 {
            ej *= v2;
            let next = s + ej / j;
            if next == s {
                break;
            }
            s = next;
            j += 2.0;
        }
        s
    } else {
        x * libm::log(x / m) + m - x
    }
}

/// `δ(x) = ln Γ(x) - (x - 1/2) ln x + x - ln(2π)/2`, Stirling's error.
fn stirling_error(x: f64) -> f64 {
    if x < 10.0 {
        return libm::lgamma(x) - (x - 0.5) * libm::log(x) + x - HALF_LN_2PI;
    }
    // The series' first six terms; the next is below 2e-14 at x = 10.
    let r = 1.0 / x;
    let r2 = r * r;
    r * (1.0 / 12.0
        - r2 * (1.0 / 360.0 - r2 * (1.0 / 1260.0 - r2 * (1.0 / 1680.0 - r2 * (1.0 / 1188.0)))))
}

/// `ln Γ(x)` for `x > 0` (musl's algorithm through `libm`, the same bits natively and in wasm);
/// `+inf` for `x <= 0` or NaN.
pub fn ln_gamma(x: f64) -> f64 {
    if x > 0.0 {
        libm::lgamma(x)
    } else {
        f64::INFINITY
    }
}

/// `ln B(x, y)` for `x, y > 0`, with no cancellation at large arguments: Stirling's form
/// `x ln(x/s) + y ln(y/s) + ln(s/(xy))/2 + ln(2π)/2 + δ(x) + δ(y) - δ(s)`, `s = x + y`.
/// `+inf` outside the domain.
pub fn ln_beta(x: f64, y: f64) -> f64 {
    if !(x > 0.0 && y > 0.0) || x.is_infinite() || y.is_infinite() {
        return f64::INFINITY;
    }
    let s = x + y;
    let (lo, hi) = if x <= y { (x, y) } else { (y, x) };
    lo * libm::log(lo / s)
        + hi * libm::log1p(-lo / s)
        + 0.5 * (libm::log(s) - libm::log(x) - libm::log(y))
        + HALF_LN_2PI
        + stirling_error(x)
        + stirling_error(y)
        - stirling_error(s)
}

/// The baseline rate `q` in `[0, 1 - d]` that maximises the joint likelihood on the null's
/// boundary `p_c = q + d`: `g(q) = ec ln(q+d) + fc ln(1-q-d) + eb ln q + fb ln(1-q)` is concave,
/// so Newton's method kept inside a shrinking bracket finds the root of `g'`.
fn boundary_baseline_rate(ec: f64, fc: f64, eb: f64, fb: f64, d: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 1.0 - d);
    let slope = |q: f64| {
        let term = |count: f64, denom: f64| if count > 0.0 { count / denom } else { 0.0 };
        let curve = |count: f64, denom: f64| {
            if count > 0.0 {
                count / (denom * denom)
            } else {
                0.0
            }
        };
        let (pc, qc, qb) = (q + d, (1.0 - q - d).max(0.0), 1.0 - q);
        (
            term(ec, pc) - term(fc, qc) + term(eb, q) - term(fb, qb),
            -(curve(ec, pc) + curve(fc, qc) + curve(eb, q) + curve(fb, qb)),
        )
    };
    if slope(lo).0 <= 0.0 {
        return lo;
    }
    if slope(hi).0 >= 0.0 {
        return hi;
    }
    // Start from the pooled rate shifted by d, which is the answer when d is small.
    let n = ec + fc + eb + fb;
    let mut q = ((ec + eb - d * (ec + fc)) / n).clamp(0.0, hi);
    if !(q > lo && q < hi) {
        q = 0.5 * (lo + hi);
    }
    for _ in 0..200 {
        let (g1, g2) = slope(q);
        if g1 > 0.0 {
            lo = q;
        } else if g1 < 0.0 {
            hi = q;
        } else {
            return q;
        }
        let mut next = q - g1 / g2;
        if !(next > lo && next < hi) {
            next = 0.5 * (lo + hi);
        }
        if (next - q).abs() <= 1e-15 * q || hi - lo <= 1e-15 * hi {
            return next;
        }
        q = next;
    }
    q
}

#[cfg(test)]
// The references are pasted as their sources printed them.
#[allow(clippy::excessive_precision)]
mod tests {
    use super::*;

    fn arm(requests: u64, errors: u64) -> ArmTally {
        ArmTally { requests, errors }
    }

    fn test(bound: Bound) -> GuardTest {
        GuardTest {
            bound,
            ..GuardTest::default()
        }
    }

    fn close(got: f64, want: f64, rel: f64) {
        let tol = rel * want.abs().max(1.0);
        assert!((got - want).abs() <= tol, "got {got}, want {want}");
    }

    // References: scipy 1.17.1, scipy.special.gammaln / betaln (the script is in the message of
    // the commit that added this module).
    #[test]
    fn ln_gamma_and_ln_beta_match_scipy() {
        for (x, want) in [
            (0.5, 0.5723649429247),
            (1e-3, 6.907178885383853),
            (1.5, -0.12078223763524526),
            (3.7, 1.428072326665388),
            (10.0, 12.801827480081469),
            (123.456, 469.6055471299295),
            (1e6, 12815504.569147611),
            (1e15, 3.3538776394910668e16),
        ] {
            close(ln_gamma(x), want, 1e-12);
        }
        for (x, y, want) in [
            (0.5, 0.5, 1.1447298858494),
            (0.5, 1e6 + 0.5, -6.335390461057438),
            (3.5, 7.25, -6.266313171974905),
            (12.5, 100.5, -39.580917619830664),
            (1e-3, 2.0, 6.906755778649054),
            (1000.5, 99000.5, -5604.991002604715),
        ] {
            close(ln_beta(x, y), want, 1e-11);
            close(ln_beta(y, x), want, 1e-11);
        }
    }

    // References: scipy 1.17.1, numerator betaln(e+1/2, n-e+1/2) - betaln(1/2, 1/2) per arm,
    // denominator xlogy/xlog1py at the null's maximiser, found for the vs-baseline boundary by
    // scipy.optimize.minimize_scalar(method="bounded", xatol=1e-13) and a 220,000-point grid.
    #[test]
    fn log_evidence_matches_scipy() {
        for ((n, e, p0), want) in [
            ((1000, 30, 0.01), 9.480579098082245),
            ((1000, 30, 0.05), -3.681184079690155),
            ((20000, 40, 0.001), 2.5573175623036377),
            ((50, 50, 0.5), 32.12648262402016),
        ] {
            let got = test(Bound::MaxErrorRate(p0)).log_evidence(arm(n, e), ArmTally::default());
            close(got, want, 1e-9);
        }
        for ((nc, ec, nb, eb, d), want) in [
            ((1000, 30, 1000, 10, 0.0), -2.030618711588147),
            ((5000, 150, 5000, 50, 0.01), -2.2156692873688826),
            ((300, 100, 300, 0, 0.02), 65.75592796905187),
            (
                (1_000_000, 20000, 1_000_000, 10000, 0.005),
                419.0828413971758,
            ),
            ((10, 10, 10, 0, 0.0), 10.390639018006002),
            ((200, 200, 50, 3, 0.1), 80.58739017213435),
            ((1000, 10, 1000, 20, 0.0), -7.365836528972679),
            ((2000, 60, 3000, 30, 0.015), -7.515066732855132),
            ((5000, 200, 5000, 50, 0.01), 13.506139981825754),
            ((1_000_000, 11000, 1_000_000, 10000, 0.0), 9.804081685753772),
        ] {
            let t = test(Bound::VsBaseline { max_increase: d });
            close(t.log_evidence(arm(nc, ec), arm(nb, eb)), want, 1e-8);
        }
    }

    #[test]
    fn edges_never_nan_or_panic() {
        let big = 1u64 << 63;
        let tallies = [
            arm(0, 0),
            arm(0, 5),
            arm(10, 50),
            arm(1, 1),
            arm(1, 0),
            arm(big, 0),
            arm(big, big),
            arm(big, big / 100),
            arm(u64::MAX, u64::MAX / 3),
            arm(u64::MAX, 1),
        ];
        let bounds = [
            Bound::MaxErrorRate(0.0),
            Bound::MaxErrorRate(1.0),
            Bound::MaxErrorRate(-0.5),
            Bound::MaxErrorRate(2.0),
            Bound::MaxErrorRate(f64::NAN),
            Bound::MaxErrorRate(1e-300),
            Bound::MaxErrorRate(5e-324),
            Bound::VsBaseline { max_increase: 0.0 },
            Bound::VsBaseline {
                max_increase: 1e-12,
            },
            Bound::VsBaseline { max_increase: 0.5 },
            Bound::VsBaseline {
                max_increase: 1.0 - 1e-12,
            },
            Bound::VsBaseline {
                max_increase: 1.0 - 1e-17,
            },
            Bound::VsBaseline { max_increase: 1.0 },
            Bound::VsBaseline { max_increase: 7.0 },
            Bound::VsBaseline { max_increase: -1.0 },
            Bound::VsBaseline {
                max_increase: f64::NAN,
            },
            Bound::VsBaseline {
                max_increase: f64::INFINITY,
            },
        ];
        for alpha in [0.001, 0.0, -1.0, 1.0, 5.0, f64::NAN, f64::INFINITY] {
            for bound in bounds {
                let t = GuardTest {
                    alpha,
                    min_errors: 0,
                    bound,
                };
                for c in tallies {
                    for b in tallies {
                        let ev = t.log_evidence(c, b);
                        assert!(!ev.is_nan(), "{t:?} {c:?} {b:?}");
                        let trips = t.trips(c, b);
                        if !(alpha > 0.0 && alpha < 1.0) {
                            assert!(!trips);
                        }
                    }
                }
            }
        }
        // No data, no evidence; errors above requests are requests.
        let t = test(Bound::VsBaseline { max_increase: 0.0 });
        assert_eq!(t.log_evidence(arm(0, 0), arm(0, 0)), 0.0);
        assert_eq!(
            t.log_evidence(arm(10, 50), arm(100, 1)),
            t.log_evidence(arm(10, 10), arm(100, 1))
        );
        // Only the impossible is infinite: an error under MaxErrorRate(0).
        let zero = test(Bound::MaxErrorRate(0.0));
        assert_eq!(zero.log_evidence(arm(5, 1), arm(0, 0)), f64::INFINITY);
        assert!(zero.log_evidence(arm(5, 0), arm(0, 0)) <= 0.0);
        // d at (or rounding to) 1 leaves nothing to rule out.
        for d in [1.0 - 1e-17, 1.0, 3.0] {
            let t = test(Bound::VsBaseline { max_increase: d });
            assert!(t.log_evidence(arm(100, 100), arm(100, 0)) <= 0.0);
        }
        let t = test(Bound::VsBaseline {
            max_increase: 1.0 - 1e-12,
        });
        assert!(t.log_evidence(arm(100, 100), arm(100, 0)).is_finite());
    }

    #[test]
    fn random_inputs_never_nan() {
        // Counts drawn over every scale (log-uniform to 2^64), errors anywhere from 0 to above
        // the requests, bounds including the degenerate ones.
        let mut rng = fastrand::Rng::with_seed(23);
        let count = |rng: &mut fastrand::Rng| {
            let bits = rng.u32(0..=64);
            if bits == 0 {
                0
            } else {
                rng.u64(..) >> (64 - bits)
            }
        };
        for _ in 0..50_000 {
            let (nc, nb) = (count(&mut rng), count(&mut rng));
            let ec = if rng.bool() {
                count(&mut rng)
            } else {
                (nc as f64 * rng.f64() * 0.1) as u64
            };
            let eb = if rng.bool() {
                count(&mut rng)
            } else {
                (nb as f64 * rng.f64() * 0.1) as u64
            };
            let x = match rng.u8(0..4) {
                0 => 0.0,
                1 => rng.f64(),
                2 => rng.f64() * 1e-6,
                _ => 1.0 - rng.f64() * 1e-9,
            };
            let bound = if rng.bool() {
                Bound::MaxErrorRate(x)
            } else {
                Bound::VsBaseline { max_increase: x }
            };
            let t = GuardTest {
                alpha: 0.001,
                min_errors: 0,
                bound,
            };
            let (c, b) = (arm(nc, ec), arm(nb, eb));
            let ev = t.log_evidence(c, b);
            assert!(!ev.is_nan(), "{t:?} {c:?} {b:?}");
            // Only MaxErrorRate(0) with a candidate error may be infinite.
            if ev.is_infinite() {
                assert!(
                    ev > 0.0 && bound == Bound::MaxErrorRate(0.0),
                    "{t:?} {c:?} {b:?}"
                );
            }
        }
    }

    // References: mpmath 1.3.0 at 60 digits, the same formulas as above (ln B through mpmath.beta),
    // where f64 ln-gamma differences would have lost every digit.
    #[test]
    fn huge_counts_stay_accurate() {
        let t = test(Bound::VsBaseline { max_increase: 0.0 });
        for ((n, ec, eb), want, tol) in [
            (
                (1_000_000_000_000u64, 11_000_000_000, 10_000_000_000),
                24071155.072626642,
                1e-3,
            ),
            (
                (
                    1_000_000_000_000_000,
                    10_000_000_000_000,
                    10_000_000_000_000,
                ),
                -34.990359100200149,
                1e-6,
            ),
            (
                (
                    1_000_000_000_000_000_000,
                    10_000_001_000_000_000,
                    10_000_000_000_000_000,
                ),
                -16.645590376529414,
                1e-4,
            ),
            (
                (1 << 63, (1 << 63) / 100, (1 << 63) / 100),
                -44.119855080566009,
                1e-4,
            ),
        ] {
            let got = t.log_evidence(arm(n, ec), arm(n, eb));
            assert!(
                (got - want).abs() <= tol,
                "{n} {ec} {eb}: got {got}, want {want}"
            );
        }
        // A pooled rate within 4e-18 of 1: its complement must come from the counts, not 1 - p
        // (which rounds to 0 and made this infinite).
        let got = t.log_evidence(arm(8_628_908_540_051_337_521, u64::MAX), arm(35, 1));
        assert!((got - 1367.5989253253177).abs() <= 1e-6, "{got}");
        let m = test(Bound::MaxErrorRate(0.01));
        let n = 1_000_000_000_000_000;
        for (e, want) in [
            (10_000_000_000_000, -17.495179550100074),
            (10_000_100_000_000, 487.55365901001958),
        ] {
            let got = m.log_evidence(arm(n, e), ArmTally::default());
            assert!((got - want).abs() <= 1e-5, "{e}: got {got}, want {want}");
        }
    }

    #[test]
    fn more_candidate_errors_never_lower_positive_evidence() {
        let bounds = [
            Bound::MaxErrorRate(0.01),
            Bound::MaxErrorRate(0.3),
            Bound::VsBaseline { max_increase: 0.0 },
            Bound::VsBaseline { max_increase: 0.02 },
            Bound::VsBaseline { max_increase: 0.3 },
        ];
        for bound in bounds {
            let t = test(bound);
            for (n, baseline) in [(50, arm(50, 1)), (1000, arm(1000, 10)), (3000, arm(500, 0))] {
                let mut last = f64::NEG_INFINITY;
                for e in 0..=n {
                    let ev = t.log_evidence(arm(n, e), baseline).max(0.0);
                    assert!(ev >= last - 1e-9, "{bound:?} n {n} e {e}: {ev} < {last}");
                    last = ev;
                }
            }
        }
    }

    #[test]
    fn trips_needs_min_errors_and_the_threshold() {
        let t = test(Bound::VsBaseline { max_increase: 0.0 });
        // 4 errors in 4 requests against a clean baseline: strong evidence, below min_errors.
        assert!(t.log_evidence(arm(4, 4), arm(10_000, 0)) > -libm::log(DEFAULT_ALPHA));
        assert!(!t.trips(arm(4, 4), arm(10_000, 0)));
        assert!(t.trips(arm(5, 5), arm(10_000, 0)));
        assert!(!t.trips(arm(1000, 10), arm(1000, 10)));
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    fn t(requests: u64, errors: u64) -> ArmTally {
        ArmTally { requests, errors }
    }

    #[test]
    fn start_weights_sum_to_one() {
        let sum: f64 = (0..200_000).map(|k| libm::exp(ln_start_weight(k))).sum();
        // The tail beyond K is 1/(2(K+1)).
        assert!((sum + 0.5 / 200_000.0 - 1.0).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn a_late_fault_is_judged_on_the_counts_since_the_checkpoint_before_it() {
        let test = GuardTest::default();
        // 200,000 healthy responses per arm, then 300 of the candidate's at 1/3 5xx: on the
        // stage's counts a clean baseline still shows it, but against a bound it is drowned.
        let bound = GuardTest {
            bound: Bound::MaxErrorRate(0.05),
            ..test
        };
        let epoch = Window {
            ln_weight: ln_start_weight(0),
            candidate: t(200_300, 100),
            baseline: t(200_300, 0),
        };
        assert!(!bound.trips(epoch.candidate, epoch.baseline));
        let since = Window {
            ln_weight: ln_start_weight(400),
            candidate: t(800, 100),
            baseline: t(800, 0),
        };
        assert!(bound.trips_any(100, &[epoch, since]));
        assert!(test.trips_any(100, &[epoch, since]));
        // The same checkpoint on healthy counts: nothing.
        let healthy = Window {
            candidate: t(800, 1),
            ..since
        };
        assert!(!bound.trips_any(100, &[epoch, healthy]));
        assert!(
            !bound.trips_any(4, &[since]),
            "min_errors counts the epoch's errors"
        );
        assert!(!bound.trips_any(100, &[]));
        // The epoch's start alone at weight 1 is the single test.
        let alone = Window {
            ln_weight: 0.0,
            ..epoch
        };
        for b in [test, bound] {
            assert_eq!(
                b.trips_any(100, &[alone]),
                b.trips(epoch.candidate, epoch.baseline)
            );
        }
    }
}
