//! Reading values out of Envoy's `/stats/prometheus` text, by metric name and labels.

/// The value of the sample `name{labels}` whose labels include all of `want` (name = value pairs).
pub fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let has = |k: &str, v: &str| labels.split(',').any(|kv| kv == format!("{k}=\"{v}\""));
            want.iter()
                .all(|(k, v)| has(k, v))
                .then(|| value.parse().ok())?
        })
}

/// The Prometheus name of a shadow total as the report names it (`pairs`, `diff_pos_micros`):
/// `ramp_shadow_pairs_total`, `ramp_shadow_diff_pos_millionths_total`.
pub fn shadow_metric(total: &str) -> String {
    format!(
        "ramp_shadow_{}_total",
        total.replace("_micros", "_millionths")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_labelled_samples() {
        let text = "# TYPE ramp_requests_total counter\nramp_requests_total{rollout=\"d\",arm=\"v1\"} 5\nramp_requests_total{rollout=\"d\",arm=\"v2\"} 7\nup 1\n";
        assert_eq!(
            sample(text, "ramp_requests_total", &[("arm", "v2")]),
            Some(7.0)
        );
        assert_eq!(sample(text, "ramp_requests_total", &[("arm", "v3")]), None);
        assert_eq!(sample(text, "up", &[]), Some(1.0));
    }
}
