//! The KL-UCB index (Garivier & Cappé, "The KL-UCB algorithm for bounded stochastic bandits and
//! beyond", COLT 2011) for rewards in [0, 1]: the largest rate `q >= mean` that `n` trials at
//! `mean` do not rule out, `n * KL(mean, q) <= ln t`. UCB1's bonus ignores where the mean is; this
//! one shrinks near 0 and 1, which is where conversion-like rewards live, so KL-UCB spends far
//! fewer pulls on arms that are close but worse. A module of its own because the root finding,
//! not the policy, is what needs its bounds and tests.
//!
//! The paper's `c ln ln t` term is left out (c = 0): its experiments use c = 0 as well, and the
//! term only serves the proof.

/// Newton steps per index at most. Over a grid of means 0..0.999, trials 1..1e6 and totals up to
/// 1e9 the iteration below needs at most 4 (2 on average) to reach `STEP_TOLERANCE`, so the
/// cap only bounds the work of inputs nobody has seen.
pub const MAX_NEWTON_STEPS: u32 = 5;

/// A step that moves `q` by less than this ends the search. Newton's error after such a step is
/// of the order of its square (below 1e-10 on the grid): indices that close never change which
/// arm wins in a way the noise of the counts would not.
const STEP_TOLERANCE: f64 = 1e-7;

/// Bernoulli KL divergence `KL(p || q)`, with `0 ln 0 = 0`.
pub fn bernoulli_kl(p: f64, q: f64) -> f64 {
    let mut kl = 0.0;
    if p > 0.0 {
        kl += p * libm::log(p / q);
    }
    if p < 1.0 {
        kl += (1.0 - p) * libm::log((1.0 - p) / (1.0 - q));
    }
    kl
}

/// The KL-UCB index of an arm with mean reward `mean` over `n > 0` trials, when the exploration
/// level is `log_t` (ln of the total trials): the root of `KL(mean, q) = log_t / n` on
/// `[mean, 1]`.
pub fn index(mean: f64, n: f64, log_t: f64) -> f64 {
    solve(mean, log_t / n).0
}

/// A closed-form upper bound on the root of `KL(p, q) = d`, cheap (one square root). From
/// `KL(p, q) = integral from p to q of (s - p) / (s (1 - s)) ds >= (q - p)^2 / (2 V)`, with `V`
/// the largest `s (1 - s)` on `[p, q]`: `p (1 - p)` when p >= 1/2, `q (1 - q)` when q <= 1/2
/// (a quadratic in q), 1/4 otherwise (Pinsker). Tight when `q` is close to `p`, i.e. for arms
/// with many trials.
pub fn upper_bound(mean: f64, d: f64) -> f64 {
    let p = clamp_mean(mean);
    if d.is_nan() || d <= 0.0 {
        return p;
    }
    if !d.is_finite() {
        return 1.0;
    }
    let q = if p >= 0.5 {
        p + libm::sqrt(2.0 * p * (1.0 - p) * d)
    } else {
        let below_half = (p + d + libm::sqrt(d * (2.0 * p * (1.0 - p) + d))) / (1.0 + 2.0 * d);
        if below_half <= 0.5 {
            below_half
        } else {
            p + libm::sqrt(d / 2.0)
        }
    };
    q.min(1.0)
}

fn clamp_mean(mean: f64) -> f64 {
    if mean.is_nan() {
        0.0
    } else {
        mean.clamp(0.0, 1.0)
    }
}

/// The root of `KL(p, q) = d` on `[p, 1]` and the Newton steps it took (the tests pin the bound
/// on work).
///
/// Newton's method in `u = -ln(1 - q)`, where the equation is convex and increasing and becomes
/// linear as `q -> 1`, so steps from the right of the root descend onto it without overshooting
/// (in `q` itself the pole at 1 makes steps tiny). Every iterate is at or above the root:
/// stopping after a bounded number of steps leaves the index optimistic, never too low.
pub(crate) fn solve(mean: f64, d: f64) -> (f64, u32) {
    let p = clamp_mean(mean);
    if p >= 1.0 || d.is_nan() || d <= 0.0 {
        return (p, 0);
    }
    if !d.is_finite() {
        return (1.0, 0);
    }
    // Start at the tighter of two bounds on the root: [`upper_bound`], and, dropping
    // -p ln q >= 0 from the KL, (1 - p) u - H(p) <= KL, linear in u, which bounds the root
    // even when q is within 1e-16 of 1.
    let entropy = -xlogx(p) - xlogx(1.0 - p);
    let mut u = (d + entropy) / (1.0 - p);
    let q_start = upper_bound(p, d);
    if q_start < 1.0 {
        u = u.min(-libm::log(1.0 - q_start));
    }
    let mut steps = 0;
    while steps < MAX_NEWTON_STEPS {
        let one_minus_q = exp(-u);
        let q = 1.0 - one_minus_q;
        // g(u) = KL(p, q) - d written in u; g'(u) = (1 - p) - p (1 - q) / q.
        let g = -entropy - p * libm::log(q) + (1.0 - p) * u - d;
        let slope = (1.0 - p) - p * one_minus_q / q;
        if !(g > 0.0 && slope > 0.0) {
            break;
        }
        let du = g / slope;
        u -= du;
        steps += 1;
        // q moves by (1 - q)(1 - e^-du), at most (1 - q) du.
        if one_minus_q * du < STEP_TOLERANCE {
            break;
        }
    }
    ((1.0 - exp(-u)).max(p), steps)
}

/// `e^x` through `pow`, which the filter links already (the sampler uses it), where `exp` would
/// add half a kilobyte to a wasm with a size budget. Its relative error is about `|x|` ulps
/// (1e-14 at `u` = 100, where `q` is within 1e-43 of 1), far below what the index needs.
fn exp(x: f64) -> f64 {
    libm::pow(std::f64::consts::E, x)
}

fn xlogx(x: f64) -> f64 {
    if x > 0.0 {
        x * libm::log(x)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference roots of `n KL(p, q) = ln t` on `[p, 1)` from scipy 1.17.1:
    /// `scipy.optimize.brentq(lambda q: n*kl(p, q) - math.log(t), p, math.nextafter(1, 0),
    /// xtol=1e-15, rtol=1e-15)`, with `kl` the Bernoulli KL in plain Python (`0 ln 0 = 0`).
    #[test]
    fn index_matches_scipy_brentq() {
        let cases: &[(f64, f64, f64, f64)] = &[
            (0.5, 10.0, 30.0, 0.8512493117031982),
            (0.6, 20.0, 30.0, 0.8429971427330707),
            (0.1, 100.0, 1000.0, 0.24573500989937982),
            (0.15, 5000.0, 1e5, 0.17528824895784276),
            (0.13, 20000.0, 1e5, 0.14169336459939177),
            (0.9, 10.0, 100.0, 0.9996112212845608),
            (0.01, 1000.0, 1e6, 0.036369385963043996),
            (0.5, 1.0, 1e5, 0.9999999999750004),
            (0.999, 1e6, 1e9, 0.9991899325487449),
            (0.15, 900.0, 1000.0, 0.1977063653207839),
        ];
        for &(p, n, t, want) in cases {
            let got = index(p, n, libm::log(t));
            assert!(
                (got - want).abs() < 1e-9,
                "({p}, {n}, {t}): {got} vs {want}"
            );
        }
    }

    /// Cases by hand: with no successes `n KL(0, q) = -n ln(1 - q)`, so the index is
    /// `1 - t^(-1/n)` (n = 10, t = 100: 1 - 100^-0.1 = 0.369043); a perfect arm's index is 1;
    /// with ln t = 0 (one trial in all) nothing is ruled out beyond the mean itself.
    #[test]
    fn hand_cases() {
        assert!((index(0.0, 10.0, libm::log(100.0)) - 0.369_042_655_5).abs() < 1e-9);
        assert_eq!(index(1.0, 3.0, 5.0), 1.0);
        assert_eq!(index(0.3, 1.0, 0.0), 0.3);
        assert_eq!(index(0.3, 0.0, 1.0), 1.0, "no trials: nothing is ruled out");
        assert_eq!(index(f64::NAN, 1.0, 1.0), index(0.0, 1.0, 1.0));
        assert!(bernoulli_kl(0.0, 0.5) > 0.0 && bernoulli_kl(1.0, 0.5).is_finite());
    }

    /// The work bound and the accuracy over a grid, against plain bisection of the same
    /// equation to 1e-13 (200 halvings; an independent method, not the Newton iteration).
    #[test]
    fn newton_stays_within_its_step_bound_and_above_the_root() {
        let bisect = |p: f64, d: f64| {
            let (mut lo, mut hi) = (p, 1.0);
            for _ in 0..200 {
                let mid = 0.5 * (lo + hi);
                if bernoulli_kl(p, mid) > d {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            hi
        };
        let (mut total, mut count, mut worst) = (0u32, 0u32, 0u32);
        for p in [
            0.0, 1e-4, 0.001, 0.01, 0.05, 0.1, 0.13, 0.15, 0.3, 0.49, 0.5, 0.51, 0.7, 0.9, 0.99,
            0.999,
        ] {
            for n in [1.0, 2.0, 5.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6] {
                for t in [2.0, 10.0, 100.0, 1e3, 1e5, 1e7, 1e9] {
                    if t < n {
                        continue;
                    }
                    let (q, steps) = solve(p, libm::log(t) / n);
                    assert!(q <= upper_bound(p, libm::log(t) / n));
                    let want = bisect(p, libm::log(t) / n);
                    assert!(q >= want - 1e-12, "({p}, {n}, {t}): {q} below {want}");
                    assert!(q - want < 1e-9, "({p}, {n}, {t}): {q} vs {want}");
                    worst = worst.max(steps);
                    total += steps;
                    count += 1;
                }
            }
        }
        assert!(worst <= 4, "worst case {worst} steps");
        assert!(f64::from(total) / f64::from(count) < 2.5);
    }
}
