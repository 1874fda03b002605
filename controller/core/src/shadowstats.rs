//! Judging a shadow from the filters' exact prediction sums (`ShadowMoments`): the paired
//! differences d = shadow - primary (mean, standard deviation, paired t-test), Pearson's
//! correlation between the two models' predictions, and TOST, the two one-sided tests of
//! equivalence (Schuirmann 1987): the mean difference lies within +-tolerance when the 90%
//! confidence interval of the mean lies inside it, which is the same as both one-sided tests
//! rejecting at 5%. Every path ends in a bounded number of steps (see `posterior`).
//!
//! Sums are integers (millionths; squares and products in 10^-12), so the centred sums
//! n*sum(d^2) - (sum d)^2 and n*sum(xy) - sum(x)*sum(y) are computed exactly in 128 bits when
//! they fit, and in f64 only beyond that.

use ramp_protocol::moments::ShadowMoments;
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal};
use statrs::function::beta::beta_reg;

/// Above this many degrees of freedom Student's t is the normal distribution to 1e-5.
const NORMAL_FROM_DF: f64 = 1e5;
const HALVINGS: usize = 80;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowStats {
    /// Numeric pairs compared.
    pub n: u64,
    /// Mean of shadow - primary.
    pub mean_diff: f64,
    /// Sample standard deviation of the differences (n - 1); `None` below two pairs.
    pub sd_diff: Option<f64>,
    /// Pearson's r; `None` when either model's predictions are constant (r is undefined).
    pub correlation: Option<f64>,
    /// Paired t statistic and two-sided p-value (H0: mean difference 0); `None` below two pairs.
    /// All differences equal: t is 0 (p 1) when they are all 0, else infinite (p 0).
    pub t: Option<f64>,
    pub t_p: Option<f64>,
    /// 90% confidence interval of the mean difference: the TOST interval.
    pub ci90: Option<(f64, f64)>,
    /// Largest |difference| since the filters started.
    pub max_abs_diff: f64,
    /// Pairs differing by more than each configured threshold: (threshold, count).
    pub beyond: Vec<(f64, u64)>,
}

/// Student's t CDF with `df` degrees of freedom, bounded (a capped continued fraction).
pub fn t_cdf(t: f64, df: f64) -> f64 {
    if t.is_nan() {
        return f64::NAN;
    }
    if t.is_infinite() {
        return if t > 0.0 { 1.0 } else { 0.0 };
    }
    if df > NORMAL_FROM_DF {
        return Normal::standard().cdf(t);
    }
    let tail = 0.5 * beta_reg(df / 2.0, 0.5, df / (df + t * t));
    if t > 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The `p` quantile (0.5 < p < 1) of Student's t, by bisection on the CDF.
pub fn t_quantile(p: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 1e3);
    for _ in 0..HALVINGS {
        let mid = (lo + hi) / 2.0;
        if t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

/// n*sum(ab) - sum(a)*sum(b), exactly when it fits in 128 bits.
fn centred(n: i128, sum_ab: i128, sum_a: i128, sum_b: i128) -> f64 {
    match n
        .checked_mul(sum_ab)
        .zip(sum_a.checked_mul(sum_b))
        .and_then(|(a, b)| a.checked_sub(b))
    {
        Some(v) => v as f64,
        None => n as f64 * sum_ab as f64 - sum_a as f64 * sum_b as f64,
    }
}

pub fn shadow_stats(m: &ShadowMoments) -> Option<ShadowStats> {
    if m.n == 0 {
        return None;
    }
    let n = m.n as i128;
    let (sx, sy, sxx, syy, sxy) = (m.sum_x.0, m.sum_y.0, m.sum_xx.0, m.sum_yy.0, m.sum_xy.0);
    // d = y - x, in millionths: sum d and sum d^2 = syy - 2 sxy + sxx, exactly.
    let sd_sum = sy - sx;
    let sdd = syy
        .checked_sub(sxy.saturating_mul(2))
        .and_then(|v| v.checked_add(sxx));
    let nf = m.n as f64;
    let mean_diff = sd_sum as f64 / nf / 1e6;
    let (mut sd_diff, mut t, mut t_p, mut ci90) = (None, None, None, None);
    if m.n >= 2 {
        let ss = match sdd {
            Some(sdd) => centred(n, sdd, sd_sum, sd_sum),
            None => nf * (syy as f64 - 2.0 * sxy as f64 + sxx as f64) - (sd_sum as f64).powi(2),
        }
        .max(0.0);
        // ss = n * sum((d - mean)^2), in 10^-12.
        let var = ss / (nf * (nf - 1.0)) / 1e12;
        let sd = var.sqrt();
        let df = nf - 1.0;
        let se = sd / nf.sqrt();
        sd_diff = Some(sd);
        if se > 0.0 {
            let tv = mean_diff / se;
            t = Some(tv);
            t_p = Some((2.0 * (1.0 - t_cdf(tv.abs(), df))).clamp(0.0, 1.0));
            let half = t_quantile(0.95, df) * se;
            ci90 = Some((mean_diff - half, mean_diff + half));
        } else {
            // Every difference equal: no spread to test against.
            let identical = sd_sum == 0;
            t = Some(if identical {
                0.0
            } else {
                f64::INFINITY.copysign(mean_diff)
            });
            t_p = Some(if identical { 1.0 } else { 0.0 });
            ci90 = Some((mean_diff, mean_diff));
        }
    }
    let sxx_c = centred(n, sxx, sx, sx);
    let syy_c = centred(n, syy, sy, sy);
    let correlation = (sxx_c > 0.0 && syy_c > 0.0)
        .then(|| (centred(n, sxy, sx, sy) / (sxx_c.sqrt() * syy_c.sqrt())).clamp(-1.0, 1.0));
    Some(ShadowStats {
        n: m.n,
        mean_diff,
        sd_diff,
        correlation,
        t,
        t_p,
        ci90,
        max_abs_diff: m.max_abs_diff_micros as f64 / 1e6,
        beyond: m
            .thresholds
            .iter()
            .copied()
            .zip(m.beyond.iter().copied())
            .collect(),
    })
}

/// TOST p-value for equivalence within +-`tolerance`: the larger of the two one-sided p-values
/// (H0: mean <= -tolerance, H0: mean >= tolerance). Equivalent at 5% when below 0.05.
pub fn tost_p(s: &ShadowStats, tolerance: f64) -> Option<f64> {
    let (sd, df) = (s.sd_diff?, s.n as f64 - 1.0);
    let se = sd / (s.n as f64).sqrt();
    if se == 0.0 {
        return Some(if s.mean_diff.abs() < tolerance {
            0.0
        } else {
            1.0
        });
    }
    let p_lower = 1.0 - t_cdf((s.mean_diff + tolerance) / se, df);
    let p_upper = t_cdf((s.mean_diff - tolerance) / se, df);
    Some(p_lower.max(p_upper))
}

/// How far the 90% interval reaches from 0: TOST finds equivalence within a tolerance exactly
/// when this is below it. The value `shadow_equivalent` rules compare with their `max`.
pub fn equivalence_reach(s: &ShadowStats) -> Option<f64> {
    s.ci90.map(|(lo, hi)| lo.abs().max(hi.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramp_protocol::moments::Wide;

    fn moments(pairs: &[(f64, f64)]) -> ShadowMoments {
        let mut m = ShadowMoments::default();
        for &(x, y) in pairs {
            m.add_pair(x, y);
        }
        m
    }

    fn close(got: f64, want: f64, tol: f64) -> bool {
        (got - want).abs() <= tol * want.abs().max(1e-300)
    }

    /// Reference values: scipy 1.17.1 and statsmodels 0.15.0 on the same pairs:
    ///   x = [1, 2, 3, 4, 5, 6, 7, 8]
    ///   y = [1.1, 1.9, 3.2, 4.05, 5.3, 5.9, 7.15, 8.2]
    ///   scipy.stats.pearsonr(x, y).statistic          -> 0.9984457886897151
    ///   scipy.stats.ttest_rel(y, x)                    -> t 1.965214737762071, p 0.09012451886639224
    ///   (y - x).mean(), (y - x).std(ddof=1)           -> 0.1, 0.1439245834257848
    ///   statsmodels ttost_paired(y, x, -0.2, 0.2)[0]  -> 0.04506225943319605
    ///   statsmodels ttost_paired(y, x, -0.1, 0.1)[0]  -> 0.4999999999999998
    ///   scipy.stats.t.ppf(0.95, 7)                     -> 1.8945786050900062
    #[test]
    fn every_statistic_matches_scipy_and_statsmodels() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let y = [1.1, 1.9, 3.2, 4.05, 5.3, 5.9, 7.15, 8.2];
        let pairs: Vec<(f64, f64)> = x.iter().copied().zip(y.iter().copied()).collect();
        let s = shadow_stats(&moments(&pairs)).unwrap();
        assert!(
            close(s.correlation.unwrap(), 0.9984457886897151, 1e-12),
            "{s:?}"
        );
        assert!(close(s.t.unwrap(), 1.965214737762071, 1e-9), "{s:?}");
        assert!(close(s.t_p.unwrap(), 0.09012451886639224, 1e-7), "{s:?}");
        assert!(close(s.mean_diff, 0.1, 1e-12));
        assert!(close(s.sd_diff.unwrap(), 0.1439245834257848, 1e-12));
        assert!(close(tost_p(&s, 0.2).unwrap(), 0.04506225943319605, 1e-7));
        assert!(close(tost_p(&s, 0.1).unwrap(), 0.4999999999999998, 1e-7));
        assert!(close(t_quantile(0.95, 7.0), 1.8945786050900062, 1e-10));
        // The interval and TOST agree: equivalent within 0.2 (p < 0.05), not within 0.19.
        let reach = equivalence_reach(&s).unwrap();
        assert!(reach < 0.2 && reach > 0.19, "{reach}");
        assert!(close(s.max_abs_diff, 0.3, 1e-12));
    }

    #[test]
    fn edge_cases_have_clear_answers() {
        // All differences zero: identical models.
        let same = shadow_stats(&moments(&[(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)])).unwrap();
        assert_eq!(
            (same.t, same.t_p, same.ci90),
            (Some(0.0), Some(1.0), Some((0.0, 0.0)))
        );
        assert_eq!(same.correlation, Some(1.0));
        assert_eq!(tost_p(&same, 0.01), Some(0.0));
        // A constant shift: no spread, a certain difference.
        let shifted = shadow_stats(&moments(&[(1.0, 1.5), (2.0, 2.5)])).unwrap();
        assert_eq!((shifted.t, shifted.t_p), (Some(f64::INFINITY), Some(0.0)));
        assert_eq!(tost_p(&shifted, 0.1), Some(1.0));
        // Constant predictions: no correlation is defined.
        let flat = shadow_stats(&moments(&[(1.0, 0.9), (1.0, 1.2), (1.0, 1.0)])).unwrap();
        assert_eq!(flat.correlation, None);
        assert!(flat.t.is_some());
        // One pair: a mean, nothing else.
        let one = shadow_stats(&moments(&[(1.0, 1.25)])).unwrap();
        assert_eq!(
            (one.mean_diff, one.sd_diff, one.t, one.ci90),
            (0.25, None, None, None)
        );
        assert_eq!(tost_p(&one, 1.0), None);
        assert!(shadow_stats(&ShadowMoments::default()).is_none());
    }

    #[test]
    fn sums_too_large_for_exact_centring_still_give_finite_answers() {
        // 2^53 pairs (the most a report may count) of predictions near 1000: n * sum(x^2) is
        // about 10^50, beyond 128 bits, so the f64 path answers.
        let n = 1u64 << 53;
        let (x, y) = (10i128.pow(9), 10i128.pow(9) + 1_000);
        let m = ShadowMoments {
            n,
            sum_x: Wide(x * n as i128),
            sum_y: Wide(y * n as i128),
            sum_xx: Wide(x * x * n as i128),
            sum_yy: Wide(y * y * n as i128),
            sum_xy: Wide(x * y * n as i128),
            ..ShadowMoments::default()
        };
        let s = shadow_stats(&m).unwrap();
        assert!(close(s.mean_diff, 0.001, 1e-9), "{s:?}");
        assert!(s.sd_diff.unwrap().is_finite(), "{s:?}");
        assert!(s.t_p.unwrap().is_finite());
        let started = std::time::Instant::now();
        for df in [1.0, 7.0, 1e4, 1e9, 1e15] {
            assert!(t_quantile(0.95, df).is_finite());
            assert!(t_cdf(1.5, df).is_finite());
        }
        assert!(started.elapsed().as_secs() < 5, "bounded work");
    }
}
