//! The observed split matches the configured weights.

use ramp_tests::{count_by_arm, drive, no_headers, TwoArms};
use serde_json::json;
use statrs::distribution::{ChiSquared, ContinuousCDF};

#[test]
fn weighted_split_matches_weights_chi_square() {
    let cfg = json!({"rollout": "split", "arms": [{"name": "v1", "weight": 70}, {"name": "v2", "weight": 30}]});
    let setup = TwoArms::start(&cfg, 2).unwrap();
    let n = 4000;
    let replies = drive(&setup.envoy.url("/predict"), n, 4, no_headers);
    assert!(replies.iter().all(|r| r.status == 200));
    let counts = count_by_arm(&replies);
    let observed = [
        counts.get("v1").copied().unwrap_or(0),
        counts.get("v2").copied().unwrap_or(0),
    ];
    assert_eq!(observed[0] + observed[1], n, "{counts:?}");

    // Pearson chi-square, df = 1, alpha = 1e-6: a correct filter fails this once in a million runs,
    // while a split off by 5 points (65/35) scores about 48 and fails every time.
    // The critical value is z^2 for z = qnorm(1 - 5e-7) = 4.891638 (R's qnorm), i.e. 23.928.
    let critical = ChiSquared::new(1.0).unwrap().inverse_cdf(1.0 - 1e-6);
    assert!((critical - 4.891638f64.powi(2)).abs() < 1e-3, "{critical}");
    let expected = [n as f64 * 0.7, n as f64 * 0.3];
    let chi2: f64 = observed
        .iter()
        .zip(expected)
        .map(|(&o, e)| (o as f64 - e).powi(2) / e)
        .sum();
    assert!(
        chi2 < critical,
        "chi2 {chi2:.2} >= {critical:.2}: observed {observed:?}, expected {expected:?}"
    );

    // Both workers took part (four connections), and the model servers saw exactly these requests.
    assert_eq!(setup.v1.served() as usize, observed[0]);
    assert_eq!(setup.v2.served() as usize, observed[1]);
}
