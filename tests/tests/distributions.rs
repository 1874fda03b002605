//! The filter's hand-written Beta sampler against an independent implementation of the Beta CDF
//! (statrs), by the Kolmogorov-Smirnov test.
#![allow(clippy::unwrap_used)]

use ramp_filter::sample::beta;
use statrs::distribution::{Beta, ContinuousCDF};

/// Critical value of the KS statistic at alpha = 0.001 for large n: 1.9495 / sqrt(n)
/// (asymptotic Kolmogorov distribution; Smirnov 1948, "Table for estimating the goodness of fit of
/// empirical distributions", Ann. Math. Stat. 19(2)).
#[test]
fn beta_samples_follow_the_beta_cdf() {
    let n = 20_000;
    let critical = 1.9495 / (n as f64).sqrt();
    let mut rng = fastrand::Rng::with_seed(2024);
    for (a, b) in [
        (1.0, 1.0),
        (0.5, 0.5),
        (2.0, 5.0),
        (0.2, 3.0),
        (50.0, 150.0),
        (951.0, 51.0),
    ] {
        let mut xs: Vec<f64> = (0..n).map(|_| beta(&mut rng, a, b)).collect();
        xs.sort_by(f64::total_cmp);
        let cdf = Beta::new(a, b).unwrap();
        let d = xs
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let f = cdf.cdf(x);
                (f - i as f64 / n as f64)
                    .abs()
                    .max(((i + 1) as f64 / n as f64 - f).abs())
            })
            .fold(0.0, f64::max);
        assert!(
            d < critical,
            "Beta({a}, {b}): KS D = {d:.5} >= {critical:.5}"
        );
    }
}
