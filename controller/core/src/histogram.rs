//! Latency percentiles from cumulative histogram buckets, computed the way Prometheus'
//! `histogram_quantile` does (promql/quantile.go, `bucketQuantile`), so a rule checked from the
//! filters' own reports and one checked through PromQL agree on the same data.

/// Cumulative buckets: `(upper bound, count of observations <= bound)`, bounds increasing, the last
/// one `f64::INFINITY`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// From counts per bucket (not cumulative) with bounds 1, 2, .. and `+Inf` after them.
    pub fn from_bucket_counts(per_bucket: &[u64]) -> Histogram {
        let mut total = 0;
        let mut buckets: Vec<(f64, u64)> = per_bucket
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                total += c;
                ((i + 1) as f64, total)
            })
            .collect();
        buckets.push((f64::INFINITY, total));
        Histogram { buckets }
    }

    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |b| b.1)
    }

    /// The `q` quantile (0 <= q <= 1), or `None` with no observations or malformed buckets.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let b = &self.buckets;
        if !(0.0..=1.0).contains(&q) || b.len() < 2 || b.last()?.0 != f64::INFINITY {
            return None;
        }
        if b.windows(2).any(|w| w[1].0 <= w[0].0 || w[1].1 < w[0].1) {
            return None;
        }
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let i = b.iter().position(|&(_, c)| c as f64 >= rank)?;
        if i == b.len() - 1 {
            // In the +Inf bucket: Prometheus answers the highest finite bound.
            return Some(b[b.len() - 2].0);
        }
        let (end, count) = b[i];
        let (start, below) = if i == 0 {
            // The first bucket starts at 0 when its bound is positive.
            (if end > 0.0 { 0.0 } else { end }, 0)
        } else {
            (b[i - 1].0, b[i - 1].1)
        };
        let in_bucket = (count - below) as f64;
        if in_bucket == 0.0 {
            return Some(end);
        }
        Some(start + (end - start) * (rank - below as f64) / in_bucket)
    }

    /// This window's observations: `self` (now) minus `earlier` (at the window's start), bucket by
    /// bucket; `None` when the bucket layouts differ or a count went down (a restarted source).
    pub fn since(&self, earlier: &Histogram) -> Option<Histogram> {
        if earlier.buckets.is_empty() {
            return Some(self.clone());
        }
        if earlier.buckets.len() != self.buckets.len() {
            return None;
        }
        let buckets = self
            .buckets
            .iter()
            .zip(&earlier.buckets)
            .map(|(&(le, now), &(le0, then))| (le == le0 && now >= then).then(|| (le, now - then)))
            .collect::<Option<Vec<_>>>()?;
        Some(Histogram { buckets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(b: &[(f64, u64)]) -> Histogram {
        Histogram {
            buckets: b.to_vec(),
        }
    }

    /// Worked by hand with Prometheus' algorithm: 50 observations <= 100, 30 in (100, 200], 20 above.
    /// q = 0.5: rank 50 lands at the top of the first bucket, 0 + 100 * 50/50 = 100.
    /// q = 0.65: rank 65 is 15 of 30 into (100, 200], 100 + 100 * 15/30 = 150.
    /// q = 0.9: rank 90 is in +Inf, so the answer is the highest finite bound, 200.
    #[test]
    fn quantiles_match_prometheus_bucket_quantile() {
        let x = h(&[(100.0, 50), (200.0, 80), (f64::INFINITY, 100)]);
        assert_eq!(x.quantile(0.5), Some(100.0));
        assert_eq!(x.quantile(0.65), Some(150.0));
        assert_eq!(x.quantile(0.9), Some(200.0));
        assert_eq!(x.quantile(0.0), Some(0.0));
    }

    #[test]
    fn bad_or_empty_histograms_have_no_quantile() {
        assert_eq!(h(&[]).quantile(0.5), None);
        assert_eq!(h(&[(1.0, 0), (f64::INFINITY, 0)]).quantile(0.5), None);
        assert_eq!(
            h(&[(1.0, 5), (2.0, 3), (f64::INFINITY, 9)]).quantile(0.5),
            None,
            "counts must not fall"
        );
        assert_eq!(h(&[(1.0, 5), (2.0, 9)]).quantile(0.5), None, "needs +Inf");
        assert_eq!(h(&[(1.0, 5), (f64::INFINITY, 9)]).quantile(1.5), None);
    }

    #[test]
    fn windows_subtract_bucket_by_bucket() {
        let now = h(&[(100.0, 70), (f64::INFINITY, 100)]);
        let then = h(&[(100.0, 60), (f64::INFINITY, 80)]);
        assert_eq!(
            now.since(&then),
            Some(h(&[(100.0, 10), (f64::INFINITY, 20)]))
        );
        assert_eq!(then.since(&now), None, "counters went down");
        assert_eq!(now.since(&h(&[])), Some(now.clone()));
    }
}
