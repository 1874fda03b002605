//! Prometheus as a metric source: the same cumulative per-arm counters the filters export on
//! Envoy's `/stats/prometheus` (ramp_requests_total, ramp_responses_total,
//! ramp_latency_milliseconds_bucket, ramp_local_replies_total), read with
//! instant PromQL queries and summed over every Envoy Prometheus scrapes; for rollouts with
//! streaming rules also the `stream` figures (ramp_ttft_milliseconds_bucket and its kin, the
//! token counters). The result has the shape of
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

/// The queries of the streaming figures: three histograms by `le`, then four counters.
pub fn stream_queries(rollout: &str) -> [String; 7] {
    let hist = |m: &str| {
        format!("sum by (arm, le) (ramp_{m}_milliseconds_bucket{{rollout=\"{rollout}\"}})")
    };
    let counter = |m: &str| format!("sum by (arm) (ramp_{m}_total{{rollout=\"{rollout}\"}})");
    [
        hist("ttft"),
        hist("stream_duration"),
        hist("tpot"),
        counter("stream_responses"),
        counter("token_responses"),
        counter("prompt_tokens"),
        counter("completion_tokens"),
    ]
}

fn parse(body: &str) -> Result<Vec<Sample>, String> {
    match answer_data::<Data>(body) {
        Ok(data) => Ok(data.map(|d| d.result).unwrap_or_default()),
        Err(Unanswered::NotJson(e)) => Err(format!("unexpected answer: {e}")),
        Err(Unanswered::Refused(why)) => Err(why),
    }
}

fn value(s: &Sample) -> u64 {
    s.value
        .1
        .parse::<f64>()
        .map(|v| v.max(0.0).round() as u64)
        .unwrap_or(0)
}

/// Per arm, a histogram's `(le, count)` pairs sorted by bound.
fn histograms(body: &str) -> Result<BTreeMap<String, Vec<(f64, u64)>>, String> {
    let mut per_arm: BTreeMap<String, Vec<(f64, u64)>> = BTreeMap::new();
    for s in parse(body)? {
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
    for b in per_arm.values_mut() {
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
    }
    Ok(per_arm)
}

/// Adds the streaming figures (answers in `stream_queries`' order) to `totals`. A histogram
/// whose bounds are not the filters' own is left out, as the reports would refuse it.
pub fn add_stream_answers(totals: &mut Totals, bodies: &[String]) -> Result<(), String> {
    let le: Vec<f64> = ramp_protocol::report::latency_le()
        .into_iter()
        .map(|l| l.0)
        .collect();
    for (i, body) in bodies.iter().enumerate().take(3) {
        for (arm, b) in histograms(body)? {
            if b.iter().map(|x| x.0).ne(le.iter().copied()) {
                continue;
            }
            let counts = b.iter().map(|x| x.1).collect();
            let st = &mut totals.entry(arm).or_default().stream;
            match i {
                0 => st.ttft = counts,
                1 => st.duration = counts,
                _ => st.tpot = counts,
            }
        }
    }
    for (i, body) in bodies.iter().enumerate().skip(3) {
        for s in parse(body)? {
            if let Some(arm) = s.metric.get("arm") {
                let st = &mut totals.entry(arm.clone()).or_default().stream;
                let slot = match i {
                    3 => &mut st.responses,
                    4 => &mut st.token_responses,
                    5 => &mut st.prompt_tokens,
                    _ => &mut st.completion_tokens,
                };
                *slot = value(&s);
            }
        }
    }
    Ok(())
}

/// Builds totals from the query answers (JSON bodies of `/api/v1/query`), in `queries`' order.
pub fn totals_from_answers(
    requests: &str,
    errors: &str,
    buckets: &str,
    local_replies: &str,
) -> Result<Totals, String> {
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
    for (arm, b) in histograms(buckets)? {
        let t: &mut ArmTotals = out.entry(arm).or_default();
        t.le = b.iter().map(|x| x.0).collect();
        t.counts = b.iter().map(|x| x.1).collect();
    }
    Ok(out)
}

/// Queries Prometheus at `url` (e.g. `http://127.0.0.1:9090`, or https) for the rollout's totals,
/// through `agent` (`tls::Outgoing::prometheus`); with `streams` (the spec has streaming rules)
/// the streaming figures too, seven more queries.
pub fn fetch_totals(
    agent: &ureq::Agent,
    url: &str,
    rollout: &str,
    streams: bool,
) -> Result<Totals, PromError> {
    let err = |reason: String| PromError::Query {
        url: url.to_owned(),
        reason,
    };
    let mut bodies = Vec::with_capacity(11);
    let stream_queries = streams.then(|| stream_queries(rollout));
    for q in queries(rollout)
        .iter()
        .chain(stream_queries.iter().flatten())
    {
        let body = agent
            .get(&format!("{}/api/v1/query", url.trim_end_matches('/')))
            .query("query", q)
            .timeout(std::time::Duration::from_secs(5))
            .call()
            .map_err(|e| err(crate::tls::explain(&e)))?
            .into_string()
            .map_err(|e| err(e.to_string()))?;
        bodies.push(body);
    }
    let mut totals =
        totals_from_answers(&bodies[0], &bodies[1], &bodies[2], &bodies[3]).map_err(err)?;
    if streams {
        add_stream_answers(&mut totals, &bodies[4..]).map_err(err)?;
    }
    Ok(totals)
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

    #[test]
    fn streaming_answers_fill_the_stream_figures() {
        let v = |rows: String| {
            format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{rows}]}}}}"#)
        };
        let le = ramp_protocol::report::latency_le();
        let hist = |n: u64| {
            v(le.iter()
                .enumerate()
                .map(|(i, l)| {
                    let bound = if l.0.is_finite() {
                        l.0.to_string()
                    } else {
                        "+Inf".into()
                    };
                    let c = if i >= 25 { n } else { 0 };
                    format!(r#"{{"metric":{{"arm":"v2","le":"{bound}"}},"value":[1.7e9,"{c}"]}}"#)
                })
                .collect::<Vec<_>>()
                .join(","))
        };
        let count = |n: u64| {
            v(format!(
                r#"{{"metric":{{"arm":"v2"}},"value":[1.7e9,"{n}"]}}"#
            ))
        };
        let mut t = Totals::new();
        let bodies = [
            hist(40),
            hist(40),
            hist(30),
            count(40),
            count(30),
            count(300),
            count(900),
        ];
        add_stream_answers(&mut t, &bodies).unwrap();
        let s = &t["v2"].stream;
        assert_eq!(
            (s.responses, s.token_responses, s.completion_tokens),
            (40, 30, 900)
        );
        assert_eq!((s.ttft.len(), s.ttft[25], s.tpot[51]), (52, 40, 30));
        assert!(
            stream_queries("chat")[0].contains("ramp_ttft_milliseconds_bucket{rollout=\"chat\"}")
        );
    }
}
