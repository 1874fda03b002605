//! Prometheus as a metric source: the same cumulative per-arm counters the filters export on
//! Envoy's `/stats/prometheus` (ramp_requests_total, ramp_responses_total,
//! ramp_latency_milliseconds_bucket, ramp_local_replies_total), read with
//! instant PromQL queries and summed over every Envoy Prometheus scrapes. The result has the shape of
//! the filters' own reports, so windows and rules are computed the same way from either source.

use std::collections::BTreeMap;

use serde::Deserialize;
use thiserror::Error;

use crate::window::{ArmTotals, Totals};

#[derive(Debug, Error)]
pub enum PromError {
    #[error("prometheus at {url}: {reason}")]
    Query { url: String, reason: String },
}

/// The envelope of every answer of Prometheus' HTTP API: `status`, then `data` or `error`.
#[derive(Deserialize)]
struct Answer<D> {
    status: String,
    #[serde(default = "Option::default")]
    data: Option<D>,
    #[serde(default)]
    error: Option<String>,
}

/// Why an API answer holds no data.
#[derive(Debug)]
pub(crate) enum Unanswered {
    /// Not the API's JSON.
    NotJson(String),
    /// `status` is not `success`: Prometheus' error, or the status.
    Refused(String),
}

/// The `data` of an API answer (`None` when it has none), or why it failed; shared by the
/// rollout's own queries and the custom-metric rules.
pub(crate) fn answer_data<D: serde::de::DeserializeOwned>(
    body: &str,
) -> Result<Option<D>, Unanswered> {
    let a: Answer<D> =
        serde_json::from_str(body).map_err(|e| Unanswered::NotJson(e.to_string()))?;
    if a.status != "success" {
        return Err(Unanswered::Refused(
            a.error.unwrap_or_else(|| format!("status {}", a.status)),
        ));
    }
    Ok(a.data)
}

#[derive(Deserialize)]
struct Data {
    result: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// The PromQL queries for one rollout; `rollout` is validated to `[A-Za-z0-9_-]`, so it needs no
/// escaping inside the label matcher.
pub fn queries(rollout: &str) -> [String; 4] {
    [
        format!("sum by (arm) (ramp_requests_total{{rollout=\"{rollout}\"}})"),
        format!("sum by (arm) (ramp_responses_total{{rollout=\"{rollout}\",class=\"5xx\"}})"),
        format!("sum by (arm, le) (ramp_latency_milliseconds_bucket{{rollout=\"{rollout}\"}})"),
        format!("sum by (arm) (ramp_local_replies_total{{rollout=\"{rollout}\"}})"),
    ]
}

/// Builds totals from the query answers (JSON bodies of `/api/v1/query`), in `queries`' order.
pub fn totals_from_answers(
    requests: &str,
    errors: &str,
    buckets: &str,
    local_replies: &str,
) -> Result<Totals, String> {
    let parse = |body: &str| -> Result<Vec<Sample>, String> {
        match answer_data::<Data>(body) {
            Ok(data) => Ok(data.map(|d| d.result).unwrap_or_default()),
            Err(Unanswered::NotJson(e)) => Err(format!("unexpected answer: {e}")),
            Err(Unanswered::Refused(why)) => Err(why),
        }
    };
    let value = |s: &Sample| {
        s.value
            .1
            .parse::<f64>()
            .map(|v| v.max(0.0).round() as u64)
            .unwrap_or(0)
    };
    let mut out = Totals::new();
    for s in parse(requests)? {
        if let Some(arm) = s.metric.get("arm") {
            out.entry(arm.clone()).or_default().requests = value(&s);
        }
    }
    for s in parse(errors)? {
        if let Some(arm) = s.metric.get("arm") {
            out.entry(arm.clone()).or_default().errors = value(&s);
        }
    }
    for s in parse(local_replies)? {
        if let Some(arm) = s.metric.get("arm") {
            out.entry(arm.clone()).or_default().local_replies = value(&s);
        }
    }
    let mut per_arm: BTreeMap<String, Vec<(f64, u64)>> = BTreeMap::new();
    for s in parse(buckets)? {
        let (Some(arm), Some(le)) = (s.metric.get("arm"), s.metric.get("le")) else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        if !bound.is_nan() {
            per_arm
                .entry(arm.clone())
                .or_default()
                .push((bound, value(&s)));
        }
    }
    for (arm, mut b) in per_arm {
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        let t: &mut ArmTotals = out.entry(arm).or_default();
        t.le = b.iter().map(|x| x.0).collect();
        t.counts = b.iter().map(|x| x.1).collect();
    }
    Ok(out)
}

/// Queries Prometheus at `url` (e.g. `http://127.0.0.1:9090`, or https) for the rollout's totals,
/// through `agent` (`tls::Outgoing::prometheus`).
pub fn fetch_totals(agent: &ureq::Agent, url: &str, rollout: &str) -> Result<Totals, PromError> {
    let err = |reason: String| PromError::Query {
        url: url.to_owned(),
        reason,
    };
    let mut bodies = Vec::with_capacity(4);
    for q in queries(rollout) {
        let body = agent
            .get(&format!("{}/api/v1/query", url.trim_end_matches('/')))
            .query("query", &q)
            .timeout(std::time::Duration::from_secs(5))
            .call()
            .map_err(|e| err(crate::tls::explain(&e)))?
            .into_string()
            .map_err(|e| err(e.to_string()))?;
        bodies.push(body);
    }
    totals_from_answers(&bodies[0], &bodies[1], &bodies[2], &bodies[3]).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers in the shape of Prometheus' HTTP API documentation (`/api/v1/query`, resultType vector).
    #[test]
    fn answers_become_totals() {
        let v = |rows: &str| {
            format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{rows}]}}}}"#)
        };
        let t = totals_from_answers(
            &v(r#"{"metric":{"arm":"v1"},"value":[1.7e9,"900"]},{"metric":{"arm":"v2"},"value":[1.7e9,"100"]}"#),
            &v(r#"{"metric":{"arm":"v2"},"value":[1.7e9,"7"]}"#),
            &v(r#"{"metric":{"arm":"v2","le":"+Inf"},"value":[1.7e9,"100"]},{"metric":{"arm":"v2","le":"5"},"value":[1.7e9,"60"]}"#),
            &v(r#"{"metric":{"arm":"v2"},"value":[1.7e9,"3"]}"#),
        )
        .unwrap();
        assert_eq!((t["v2"].local_replies, t["v1"].local_replies), (3, 0));
        assert_eq!(
            (
                t["v1"].requests,
                t["v2"].requests,
                t["v2"].errors,
                t["v1"].errors
            ),
            (900, 100, 7, 0)
        );
        assert_eq!(
            (t["v2"].le.clone(), t["v2"].counts.clone()),
            (vec![5.0, f64::INFINITY], vec![60, 100])
        );
        let bad = totals_from_answers(
            r#"{"status":"error","error":"parse error"}"#,
            &v(""),
            &v(""),
            &v(""),
        );
        assert_eq!(bad, Err("parse error".into()));
    }
}
