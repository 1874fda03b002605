//! The calls behind custom rules: per arm, an instant PromQL query or a GET of a JSON endpoint,
//! through the agent `tls::Outgoing` built at start (its roots, `--ca-file`), on a blocking
//! thread as the Prometheus source's queries are, bounded in time (each call, and all of a
//! check's together) and in the bytes read. A failure is a reason, redacted, never a value.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::custom_plan::{plan, Call, Target};
use crate::machine::{Phase, State};
use crate::prometheus::Unanswered;
use crate::redact::redact_text;
use crate::spec::custom::{Measured, Measurement};
use crate::spec::Spec;
use crate::tls::Outgoing;

/// Longest one call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest all of a check's custom calls may take together: a check runs them one after the
/// other, each with at most an equal share of what is left, so a dead source cannot starve the
/// calls after it.
pub const CHECK_BUDGET: Duration = Duration::from_secs(10);
/// Most bytes of an answer read; a larger one is a failed measurement.
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

/// Why a call gave no value.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum NoValue {
    /// Not sent or not answered (connection, TLS, timeout): the agent's words, URL included.
    #[error("{0}")]
    Call(String),
    #[error("answered {status}{said}")]
    Status { status: u16, said: String },
    #[error("the answer is larger than {} MiB", MAX_BODY_BYTES >> 20)]
    TooLarge,
    #[error("the answer cannot be read: {0}")]
    Read(String),
    #[error("the answer is not JSON: {0}")]
    NotJson(String),
    #[error("prometheus refused the query: {0}")]
    Refused(String),
    #[error("the query returned no series (no values found)")]
    NoSeries,
    #[error("the query returned {0} series: aggregate it to one value per arm (sum, avg, max)")]
    Series(usize),
    #[error("the query returned a {0}, not a vector or a scalar")]
    ResultType(String),
    #[error("nothing at JSON pointer {0:?}")]
    NoPointer(String),
    #[error("the value is {0}, not a number")]
    NotNumber(String),
    #[error("the value is {0}, not a finite number")]
    NotFinite(String),
    #[error("not asked: the check's {} s for custom metrics ran out", CHECK_BUDGET.as_secs())]
    OutOfBudget,
}

/// Reads at most `MAX_BODY_BYTES` of an answer.
fn read_body(resp: ureq::Response) -> Result<String, NoValue> {
    let mut bytes = Vec::new();
    resp.into_reader()
        .take(MAX_BODY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| NoValue::Read(e.to_string()))?;
    if bytes.len() as u64 > MAX_BODY_BYTES {
        return Err(NoValue::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| NoValue::Read("not UTF-8".into()))
}

/// Sends a GET; the body of a 2xx, else the status with what the answer's JSON `error` says (as
/// Prometheus explains a query it refuses), at most 300 characters of it.
fn get(req: ureq::Request) -> Result<String, NoValue> {
    match req.set("accept", "application/json").call() {
        Ok(resp) => read_body(resp),
        Err(ureq::Error::Status(status, resp)) => {
            let said = read_body(resp)
                .ok()
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                .and_then(|v| v["error"].as_str().map(|e| e.chars().take(300).collect()))
                .map_or(String::new(), |e: String| format!(": {e}"));
            Err(NoValue::Status { status, said })
        }
        Err(e) => Err(NoValue::Call(crate::tls::explain(&e))),
    }
}

/// A finite number from a Prometheus sample value or a JSON string.
fn number(text: &str) -> Result<f64, NoValue> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| NoValue::NotNumber(format!("{text:?}")))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(NoValue::NotFinite(text.to_owned()))
    }
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Value,
}

/// The one value of an instant query's answer (Prometheus' `/api/v1/query`): a vector of exactly
/// one sample, or a scalar.
pub fn prometheus_value(body: &str) -> Result<f64, NoValue> {
    let data = crate::prometheus::answer_data::<Data>(body).map_err(|e| match e {
        Unanswered::NotJson(e) => NoValue::NotJson(e),
        Unanswered::Refused(why) => NoValue::Refused(why),
    })?;
    let Some(data) = data else {
        return Err(NoValue::NoSeries);
    };
    let sample_value = |pair: &Value| match pair.get(1).and_then(Value::as_str) {
        Some(v) => number(v),
        None => Err(NoValue::NotNumber(pair.to_string())),
    };
    match data.result_type.as_str() {
        "vector" => match data.result.as_array().map(Vec::as_slice) {
            None | Some([]) => Err(NoValue::NoSeries),
            Some([one]) => sample_value(&one["value"]),
            Some(many) => Err(NoValue::Series(many.len())),
        },
        "scalar" => sample_value(&data.result),
        other => Err(NoValue::ResultType(other.to_owned())),
    }
}

/// The number at `pointer` (RFC 6901) in a JSON answer: a JSON number, or a string holding one.
pub fn web_value(body: &str, pointer: &str) -> Result<f64, NoValue> {
    let doc: Value = serde_json::from_str(body).map_err(|e| NoValue::NotJson(e.to_string()))?;
    match doc.pointer(pointer) {
        None => Err(NoValue::NoPointer(pointer.to_owned())),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .ok_or_else(|| NoValue::NotFinite(n.to_string())),
        Some(Value::String(s)) => number(s),
        Some(other) => Err(NoValue::NotNumber(match other {
            Value::Null => "null".to_owned(),
            Value::Bool(b) => b.to_string(),
            Value::Array(_) => "an array".to_owned(),
            _ => "an object".to_owned(),
        })),
    }
}

/// One call, within `timeout`. Blocking.
pub fn fetch(agent: &ureq::Agent, target: &Target, timeout: Duration) -> Result<f64, NoValue> {
    match target {
        Target::Prometheus { base, query } => {
            let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
            let body = get(agent.get(&url).query("query", query).timeout(timeout))?;
            prometheus_value(&body)
        }
        Target::Web { url, pointer } => {
            let body = get(agent.get(url).timeout(timeout))?;
            web_value(&body, pointer)
        }
    }
}

/// Every call of a check, one after the other, all done by `deadline`: each gets at most
/// `CALL_TIMEOUT` and an equal share of the time left. Blocking: run it on a blocking thread.
pub fn run(agent: &ureq::Agent, calls: Vec<Call>, deadline: Instant) -> Measured {
    let mut out = Measured::new();
    let count = calls.len();
    for (i, call) in calls.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / u32::try_from(count - i).unwrap_or(u32::MAX);
        let value = if share.is_zero() {
            Err(NoValue::OutOfBudget)
        } else {
            fetch(agent, &call.target, share.min(CALL_TIMEOUT))
        };
        let m = Measurement {
            // The agent's errors name the URL, credentials and all.
            value: value.map_err(|e| redact_text(&e.to_string())),
            asked: call.asked,
            checks_without_value: 0,
        };
        out.entry(call.arm).or_default().insert(call.rule, m);
    }
    out
}

/// The figures of the current stage's custom rules for this check, off the async workers and
/// with no lock held. Measured while the rollout progresses or is paused (status shows whether
/// the source answers again); nothing in other phases.
pub async fn measure(
    outgoing: &Outgoing,
    spec: &Arc<Spec>,
    state: &State,
    now_ms: u64,
) -> Measured {
    if !matches!(state.phase, Phase::Progressing | Phase::Paused) {
        return Measured::new();
    }
    let (calls, mut measured) = plan(spec, state, now_ms);
    if calls.is_empty() {
        return measured;
    }
    let asked: Vec<(String, String, String)> = calls
        .iter()
        .map(|c| (c.arm.clone(), c.rule.clone(), c.asked.clone()))
        .collect();
    let agent = outgoing.prometheus.clone();
    let deadline = Instant::now() + CHECK_BUDGET;
    let task = tokio::task::spawn_blocking(move || run(&agent, calls, deadline));
    // The calls end by the deadline themselves; this only guards against a stuck thread pool.
    let got = match tokio::time::timeout(CHECK_BUDGET + Duration::from_secs(1), task).await {
        Ok(Ok(got)) => Ok(got),
        Ok(Err(e)) => Err(format!("custom metrics task: {e}")),
        Err(_) => Err(NoValue::OutOfBudget.to_string()),
    };
    match got {
        Ok(got) => {
            for (arm, figures) in got {
                measured.entry(arm).or_default().extend(figures);
            }
        }
        Err(why) => {
            for (arm, rule, asked) in asked {
                let m = Measurement {
                    value: Err(why.clone()),
                    asked,
                    checks_without_value: 0,
                };
                measured.entry(arm).or_default().insert(rule, m);
            }
        }
    }
    measured
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramp_tests::canned::CannedServer;

    fn vector(rows: &str) -> String {
        format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{rows}]}}}}"#)
    }

    /// Answers in the shape of Prometheus' HTTP API documentation (`/api/v1/query`).
    #[test]
    fn an_instant_query_gives_one_value_or_says_why_not() {
        let one = vector(r#"{"metric":{"arm":"v2"},"value":[1.7e9,"0.93"]}"#);
        assert_eq!(prometheus_value(&one), Ok(0.93));
        let scalar =
            r#"{"status":"success","data":{"resultType":"scalar","result":[1.7e9,"-2.5"]}}"#;
        assert_eq!(prometheus_value(scalar), Ok(-2.5));
        assert_eq!(prometheus_value(&vector("")), Err(NoValue::NoSeries));
        let two =
            vector(r#"{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}"#);
        assert_eq!(prometheus_value(&two), Err(NoValue::Series(2)));
        // 0/0 with no traffic: NaN is no figure.
        let nan = vector(r#"{"metric":{},"value":[1.7e9,"NaN"]}"#);
        assert_eq!(
            prometheus_value(&nan),
            Err(NoValue::NotFinite("NaN".into()))
        );
        let inf = vector(r#"{"metric":{},"value":[1.7e9,"+Inf"]}"#);
        assert_eq!(
            prometheus_value(&inf),
            Err(NoValue::NotFinite("+Inf".into()))
        );
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert_eq!(
            prometheus_value(matrix),
            Err(NoValue::ResultType("matrix".into()))
        );
        let refused = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert_eq!(
            prometheus_value(refused),
            Err(NoValue::Refused("parse error".into()))
        );
        assert!(matches!(
            prometheus_value("<html>"),
            Err(NoValue::NotJson(_))
        ));
    }

    #[test]
    fn a_json_pointer_finds_the_number() {
        let body = r#"{"data": {"value": 0.93, "text": " 12.5 ", "a/b": 7, "none": null, "on": true, "list": [1, 2]}}"#;
        assert_eq!(web_value(body, "/data/value"), Ok(0.93));
        assert_eq!(web_value(body, "/data/text"), Ok(12.5));
        assert_eq!(web_value(body, "/data/a~1b"), Ok(7.0));
        assert_eq!(web_value(body, "/data/list/1"), Ok(2.0));
        assert_eq!(web_value("3", ""), Ok(3.0));
        assert_eq!(
            web_value(body, "/data/missing"),
            Err(NoValue::NoPointer("/data/missing".into()))
        );
        assert_eq!(
            web_value(body, "/data/none"),
            Err(NoValue::NotNumber("null".into()))
        );
        assert_eq!(
            web_value(body, "/data/on"),
            Err(NoValue::NotNumber("true".into()))
        );
        assert_eq!(
            web_value(body, "/data"),
            Err(NoValue::NotNumber("an object".into()))
        );
        assert_eq!(
            web_value(r#"{"v": "high"}"#, "/v"),
            Err(NoValue::NotNumber("\"high\"".into()))
        );
        assert!(matches!(web_value("{", "/v"), Err(NoValue::NotJson(_))));
    }

    fn call(port: u16, path: &str) -> Call {
        let url = format!("http://user:s3cret@127.0.0.1:{port}{path}?key=k3y");
        Call {
            rule: "conf".into(),
            arm: "v2".into(),
            asked: crate::redact::redact_url(&url),
            target: Target::Web {
                url,
                pointer: "/v".into(),
            },
        }
    }

    fn reason(m: &Measured) -> String {
        match &m["v2"]["conf"].value {
            Err(e) => e.clone(),
            Ok(v) => format!("a value: {v}"),
        }
    }

    /// Real HTTP servers on loopback: the value, a refusal, an answer too large, one too slow,
    /// and a port nobody listens on; each failure is a reason with the URL's secrets masked.
    #[test]
    fn calls_are_bounded_and_their_failures_are_reasons() {
        let agent = Outgoing::new(None).unwrap().prometheus;
        let soon = || Instant::now() + CHECK_BUDGET;
        let ok = CannedServer::start(0, 200, r#"{"v": 0.93}"#).unwrap();
        let got = run(&agent, vec![call(ok.port, "/kpi")], soon());
        assert_eq!(got["v2"]["conf"].value, Ok(0.93));
        assert_eq!(
            got["v2"]["conf"].asked,
            format!("http://***@127.0.0.1:{}/kpi?key=***", ok.port)
        );
        let down = CannedServer::start(0, 503, r#"{"error": "warming up"}"#).unwrap();
        let got = run(&agent, vec![call(down.port, "/kpi")], soon());
        assert_eq!(reason(&got), "answered 503: warming up");
        let huge: &'static str = Box::leak(format!("[{}0]", "0,".repeat(600_000)).into_boxed_str());
        let big = CannedServer::start(0, 200, huge).unwrap();
        let got = run(&agent, vec![call(big.port, "/kpi")], soon());
        assert_eq!(reason(&got), "the answer is larger than 1 MiB");
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let got = run(&agent, vec![call(port, "/kpi")], soon());
        let why = reason(&got);
        assert!(
            why.contains("Connection Failed") || why.contains("onnection refused"),
            "{why}"
        );
        assert!(!why.contains("s3cret") && !why.contains("k3y"), "{why}");
        // A source that never answers in time: the call ends at its share of the budget, and
        // the calls after it still get theirs.
        let slow = CannedServer::start(3_000, 200, r#"{"v": 1}"#).unwrap();
        let t = Instant::now();
        let after = Call {
            arm: "v1".into(),
            ..call(ok.port, "/kpi")
        };
        let got = run(
            &agent,
            vec![call(slow.port, "/kpi"), after],
            Instant::now() + Duration::from_secs(2),
        );
        assert!(
            t.elapsed() < Duration::from_millis(2_500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(
            got["v1"]["conf"].value,
            Ok(0.93),
            "the next call had its share"
        );
        assert!(
            reason(&got).contains("timed out") || reason(&got).contains("Timeout"),
            "{}",
            reason(&got)
        );
        let t = Instant::now();
        let spent = run(&agent, vec![call(ok.port, "/kpi")], Instant::now());
        assert_eq!(reason(&spent), NoValue::OutOfBudget.to_string());
        assert!(t.elapsed() < Duration::from_millis(100));
    }
}
