//! CUPED (Deng, Xu, Kohavi and Walker, "Improving the Sensitivity of Online Controlled
//! Experiments by Utilizing Pre-Experiment Data", WSDM 2013): a difference of rates adjusted by
//! what each analysis bucket's users did before the candidate got traffic, which explains part of
//! the between-user variance and so needs fewer requests for the same decision.
//!
//! The units are (arm, analysis bucket) clusters: every user's requests fall in one. The
//! estimator is the request-level least-squares regression y = b0 + b1 candidate + b2 (x - mean x),
//! x the cluster's pre-period rate, with the cluster-robust (CR1) variance of b1; every regressor
//! is constant within a cluster, so per-cluster sums are sufficient statistics and the result
//! equals statsmodels' `OLS(...).fit(cov_type="cluster")` on the requests themselves (checked in
//! the tests). b1 is the adjusted difference candidate - baseline; the common slope b2 is CUPED's
//! theta.

/// One (arm, bucket) cluster's counts: after the split began and in the pre-period.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cluster {
    pub candidate: bool,
    pub trials: f64,
    pub successes: f64,
    pub pre_trials: f64,
    pub pre_successes: f64,
}

/// The adjusted difference and what the adjustment gained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adjusted {
    /// b1: candidate - baseline, adjusted for the pre-period.
    pub difference: f64,
    /// Its cluster-robust variance.
    pub variance: f64,
    /// The same regression without the covariate: the plain difference's variance.
    pub unadjusted_variance: f64,
    /// theta: the common slope on the pre-period rate.
    pub slope: f64,
    /// Clusters with requests (the units).
    pub clusters: usize,
}

impl Adjusted {
    /// 1 - adjusted / unadjusted variance: the share of the variance the pre-period explained.
    pub fn variance_reduction(&self) -> f64 {
        1.0 - self.variance / self.unadjusted_variance
    }
}

/// The pre-period rate of each cluster with requests; a cluster without pre-period requests
/// takes the pooled pre-period rate (mean imputation keeps b1 unbiased: x stays pre-treatment).
fn covariates(clusters: &[&Cluster]) -> Option<Vec<f64>> {
    let (s, n) = clusters.iter().fold((0.0, 0.0), |(s, n), c| {
        (s + c.pre_successes, n + c.pre_trials)
    });
    if n <= 0.0 {
        return None;
    }
    let pooled = s / n;
    Some(
        clusters
            .iter()
            .map(|c| {
                if c.pre_trials > 0.0 {
                    c.pre_successes / c.pre_trials
                } else {
                    pooled
                }
            })
            .collect(),
    )
}

/// Request-level OLS with regressors constant within clusters, from per-cluster (requests, sum of
/// outcomes, regressors): the coefficients and their CR1 covariance, with statsmodels' default
/// small-sample factor G/(G-1) (N-1)/(N-K). `None` when the design is singular or G <= K.
fn clustered_ols<const K: usize>(
    rows: &[(f64, f64, [f64; K])],
) -> Option<([f64; K], [[f64; K]; K])> {
    let mut xtx = [[0.0; K]; K];
    let mut xty = [0.0; K];
    for (n, s, z) in rows {
        for i in 0..K {
            xty[i] += s * z[i];
            for j in 0..K {
                xtx[i][j] += n * z[i] * z[j];
            }
        }
    }
    let bread = invert(xtx)?;
    let beta: [f64; K] = std::array::from_fn(|i| (0..K).map(|j| bread[i][j] * xty[j]).sum());
    let mut meat = [[0.0; K]; K];
    for (n, s, z) in rows {
        let fitted: f64 = (0..K).map(|i| z[i] * beta[i]).sum();
        let residual = s - n * fitted;
        for i in 0..K {
            for j in 0..K {
                meat[i][j] += residual * residual * z[i] * z[j];
            }
        }
    }
    let g = rows.len() as f64;
    let n: f64 = rows.iter().map(|r| r.0).sum();
    if g <= K as f64 || n <= K as f64 {
        return None;
    }
    let factor = g / (g - 1.0) * (n - 1.0) / (n - K as f64);
    let cov = std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            factor
                * (0..K)
                    .flat_map(|a| (0..K).map(move |b| (a, b)))
                    .map(|(a, b)| bread[i][a] * meat[a][b] * bread[b][j])
                    .sum::<f64>()
        })
    });
    Some((beta, cov))
}

/// Gauss-Jordan with partial pivoting; `None` when a pivot is negligible (a regressor that does
/// not vary, e.g. every cluster with the same pre-period rate).
fn invert<const K: usize>(m: [[f64; K]; K]) -> Option<[[f64; K]; K]> {
    let scale = (0..K).map(|i| m[i][i].abs()).fold(0.0, f64::max);
    let (mut a, mut inv) = (m, [[0.0; K]; K]);
    for (i, row) in inv.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    for col in 0..K {
        let pivot = (col..K).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))?;
        // A NaN pivot is not greater than anything: singular as well.
        let negligible =
            a[pivot][col].abs().partial_cmp(&(scale * 1e-12)) != Some(std::cmp::Ordering::Greater);
        if negligible {
            return None;
        }
        a.swap(col, pivot);
        inv.swap(col, pivot);
        let p = a[col][col];
        for j in 0..K {
            a[col][j] /= p;
            inv[col][j] /= p;
        }
        for r in 0..K {
            if r != col {
                let f = a[r][col];
                for j in 0..K {
                    a[r][j] -= f * a[col][j];
                    inv[r][j] -= f * inv[col][j];
                }
            }
        }
    }
    Some(inv)
}

/// The CUPED-adjusted difference over `clusters`; `None` without pre-period requests, without
/// clusters of both arms, or when the pre-period rate does not vary (nothing to adjust by).
pub fn adjusted_difference(clusters: &[Cluster]) -> Option<Adjusted> {
    let live: Vec<&Cluster> = clusters.iter().filter(|c| c.trials > 0.0).collect();
    if !(live.iter().any(|c| c.candidate) && live.iter().any(|c| !c.candidate)) {
        return None;
    }
    let x = covariates(&live)?;
    let n: f64 = live.iter().map(|c| c.trials).sum();
    let mean_x = live.iter().zip(&x).map(|(c, x)| c.trials * x).sum::<f64>() / n;
    let t = |c: &Cluster| if c.candidate { 1.0 } else { 0.0 };
    let with: Vec<(f64, f64, [f64; 3])> = live
        .iter()
        .zip(&x)
        .map(|(c, x)| (c.trials, c.successes, [1.0, t(c), x - mean_x]))
        .collect();
    let without: Vec<(f64, f64, [f64; 2])> = live
        .iter()
        .map(|c| (c.trials, c.successes, [1.0, t(c)]))
        .collect();
    let (beta, cov) = clustered_ols(&with)?;
    let (_, plain) = clustered_ols(&without)?;
    let ok = |v: f64| v.is_finite() && v > 0.0;
    (ok(cov[1][1]) && ok(plain[1][1]) && beta.iter().all(|b| b.is_finite())).then(|| Adjusted {
        difference: beta[1],
        variance: cov[1][1],
        unadjusted_variance: plain[1][1],
        slope: beta[2],
        clusters: live.len(),
    })
}

/// `RateEstimate::unit` of an estimate adjusted by CUPED.
pub const CUPED_UNIT: &str = "user_bucket_cuped";

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(candidate: bool, n: f64, s: f64, pn: f64, ps: f64) -> Cluster {
        Cluster {
            candidate,
            trials: n,
            successes: s,
            pre_trials: pn,
            pre_successes: ps,
        }
    }

    /// Reference values from statsmodels 0.15.0 (Python 3.11), on the requests themselves:
    /// every cluster expanded to `n` rows of y (s ones, n - s zeros), x its pre-period rate
    /// (the pooled one where it had no pre-period requests), then
    /// `sm.OLS(y, sm.add_constant(np.column_stack([t, x - x.mean()]))).fit(cov_type="cluster",
    /// cov_kwds={"groups": cluster_id})` for `params[1]` and `bse[1] ** 2`, and the same without
    /// the covariate for the plain variance.
    #[test]
    fn matches_statsmodels_cluster_robust_ols_on_the_requests() {
        let clusters = [
            cluster(false, 10.0, 3.0, 12.0, 4.0),
            cluster(false, 8.0, 1.0, 9.0, 1.0),
            cluster(false, 12.0, 6.0, 10.0, 6.0),
            cluster(false, 7.0, 2.0, 0.0, 0.0),
            cluster(false, 9.0, 4.0, 11.0, 3.0),
            cluster(true, 11.0, 5.0, 10.0, 3.0),
            cluster(true, 6.0, 1.0, 8.0, 2.0),
            cluster(true, 13.0, 8.0, 12.0, 7.0),
            cluster(true, 9.0, 2.0, 9.0, 1.0),
            cluster(true, 10.0, 6.0, 10.0, 5.0),
        ];
        let a = adjusted_difference(&clusters).unwrap();
        let close = |got: f64, want: f64| (got - want).abs() <= 1e-9 * want.abs().max(1e-12);
        assert!(close(a.difference, REF_DIFFERENCE), "{a:?}");
        assert!(close(a.variance, REF_VARIANCE), "{a:?}");
        assert!(close(a.unadjusted_variance, REF_PLAIN_VARIANCE), "{a:?}");
        assert!(close(a.slope, REF_SLOPE), "{a:?}");
        assert_eq!(a.clusters, 10);
    }

    const REF_DIFFERENCE: f64 = 0.08519210976647433;
    const REF_VARIANCE: f64 = 0.0024203156086248035;
    const REF_PLAIN_VARIANCE: f64 = 0.010627087188351128;
    const REF_SLOPE: f64 = 0.7984889702548637;

    #[test]
    fn nothing_to_adjust_by_gives_none() {
        let flat = [
            cluster(false, 10.0, 3.0, 10.0, 5.0),
            cluster(false, 10.0, 4.0, 10.0, 5.0),
            cluster(true, 10.0, 3.0, 10.0, 5.0),
            cluster(true, 10.0, 6.0, 10.0, 5.0),
            cluster(true, 10.0, 2.0, 10.0, 5.0),
        ];
        assert_eq!(adjusted_difference(&flat), None, "a constant covariate");
        let no_pre: Vec<Cluster> = flat
            .iter()
            .map(|c| Cluster {
                pre_trials: 0.0,
                pre_successes: 0.0,
                ..*c
            })
            .collect();
        assert_eq!(adjusted_difference(&no_pre), None, "no pre-period");
        let one_arm: Vec<Cluster> = flat.iter().filter(|c| c.candidate).copied().collect();
        assert_eq!(adjusted_difference(&one_arm), None, "one arm");
    }
}
