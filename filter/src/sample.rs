//! Random variates the bandit needs, from a `fastrand::Rng` passed in (tests seed it; the filter
//! seeds it from the host). Standard algorithms, small enough to keep the wasm lean:
//! normal by Box-Muller, gamma by Marsaglia & Tsang ("A simple method for generating gamma variables",
//! ACM TOMS 26(3), 2000) with the `U^(1/a)` boost for shape < 1, beta as `X / (X + Y)` of two gammas.

use fastrand::Rng;

/// Uniform in the open interval (0, 1).
fn open_unit(rng: &mut Rng) -> f64 {
    loop {
        let u = rng.f64();
        if u > 0.0 {
            return u;
        }
    }
}

pub fn standard_normal(rng: &mut Rng) -> f64 {
    let (u1, u2) = (open_unit(rng), rng.f64());
    libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(2.0 * std::f64::consts::PI * u2)
}

/// Gamma(shape, 1). `shape` must be positive and finite; other values yield NaN.
pub fn gamma(rng: &mut Rng, shape: f64) -> f64 {
    if !(shape > 0.0 && shape.is_finite()) {
        return f64::NAN;
    }
    if shape < 1.0 {
        return gamma(rng, shape + 1.0) * libm::pow(open_unit(rng), 1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / libm::sqrt(9.0 * d);
    loop {
        let x = standard_normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = open_unit(rng);
        if u < 1.0 - 0.0331 * x * x * x * x
            || libm::log(u) < 0.5 * x * x + d * (1.0 - v + libm::log(v))
        {
            return d * v;
        }
    }
}

/// Beta(alpha, beta).
pub fn beta(rng: &mut Rng, alpha: f64, beta: f64) -> f64 {
    let x = gamma(rng, alpha);
    let y = gamma(rng, beta);
    x / (x + y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sample mean and variance of Beta(a, b) against the closed forms a/(a+b) and
    /// ab/((a+b)^2 (a+b+1)); bounds are 6 standard errors of each estimator (the variance's from its
    /// fourth central moment, estimated from the same sample).
    #[test]
    fn beta_moments_match_closed_form() {
        let mut rng = Rng::with_seed(11);
        for (a, b) in [
            (1.0, 1.0),
            (0.5, 0.5),
            (2.0, 5.0),
            (30.0, 70.0),
            (0.3, 4.0),
            (701.0, 301.0),
        ] {
            let n = 200_000;
            let xs: Vec<f64> = (0..n).map(|_| beta(&mut rng, a, b)).collect();
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let m4 = xs.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n as f64;
            let want_mean = a / (a + b);
            let want_var = a * b / ((a + b).powi(2) * (a + b + 1.0));
            let se_mean = (want_var / n as f64).sqrt();
            let se_var = ((m4 - var * var) / n as f64).sqrt();
            assert!(
                (mean - want_mean).abs() < 6.0 * se_mean,
                "Beta({a},{b}) mean {mean} vs {want_mean}"
            );
            assert!(
                (var - want_var).abs() < 6.0 * se_var,
                "Beta({a},{b}) var {var} vs {want_var}"
            );
            assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
        }
    }

    #[test]
    fn gamma_rejects_bad_shapes_without_looping() {
        let mut rng = Rng::with_seed(1);
        assert!(gamma(&mut rng, 0.0).is_nan());
        assert!(gamma(&mut rng, -1.0).is_nan());
        assert!(gamma(&mut rng, f64::INFINITY).is_nan());
    }
}
