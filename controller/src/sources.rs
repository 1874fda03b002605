//! Where a rollout's figures come from: the filters' reports (the report book) or Prometheus, with
//! the shadow comparisons and the posted feedback beside them. Prometheus is asked without any
//! lock held, and within a budget.

use std::time::Duration;

use thiserror::Error;

use crate::redact::redact_text;
use crate::registry::Rollout;
use crate::spec::Spec;
use crate::tls::Outgoing;
use crate::window::Totals;

/// Longest a Prometheus source may take to answer one check.
const PROMETHEUS_BUDGET: Duration = Duration::from_secs(10);

/// Why a rollout has no figures now.
#[derive(Debug, Error)]
pub enum SourceError {
    /// Prometheus' own error, redacted (a source URL may carry credentials).
    #[error("{0}")]
    Prometheus(String),
    #[error("prometheus query task: {0}")]
    Task(String),
    #[error("prometheus did not answer within {0} s")]
    Timeout(u64),
}

/// The rollout's cumulative totals now: the filters' reports (or Prometheus), the shadow
/// comparisons and the feedback. No lock is held while Prometheus answers.
pub async fn totals_now(
    outgoing: &Outgoing,
    handle: &Rollout,
    spec: &Spec,
) -> Result<Totals, SourceError> {
    let from_prometheus = prometheus_totals(outgoing, spec).await?;
    Ok(complete_totals(handle, spec, from_prometheus))
}

/// The request figures from the rollout's Prometheus source, if it has one.
pub async fn prometheus_totals(
    outgoing: &Outgoing,
    spec: &Spec,
) -> Result<Option<Totals>, SourceError> {
    let Some(url) = &spec.prometheus else {
        return Ok(None);
    };
    let (url, name) = (url.clone(), spec.name.clone());
    let streams = spec
        .stages
        .iter()
        .any(|s| s.rules.iter().any(|r| r.metric.is_stream()));
    let agent = outgoing.prometheus.clone();
    let query = tokio::task::spawn_blocking(move || {
        crate::prometheus::fetch_totals(&agent, &url, &name, streams)
    });
    match tokio::time::timeout(PROMETHEUS_BUDGET, query).await {
        Ok(Ok(Ok(t))) => Ok(Some(t)),
        Ok(Ok(Err(e))) => Err(SourceError::Prometheus(redact_text(&e.to_string()))),
        Ok(Err(e)) => Err(SourceError::Task(e.to_string())),
        Err(_) => Err(SourceError::Timeout(PROMETHEUS_BUDGET.as_secs())),
    }
}

/// `totals_now` once Prometheus (if it is the source) has answered: the reports' sums (all
/// instances' newest reports: CPU work, so checks do it on a blocking thread), the shadow
/// comparisons and the feedback.
pub fn complete_totals(handle: &Rollout, spec: &Spec, from_prometheus: Option<Totals>) -> Totals {
    let (from_reports, shadow, feedback) = {
        let book = handle.reports();
        (
            spec.prometheus.is_none().then(|| book.totals()),
            book.shadow(),
            book.feedback.clone(),
        )
    };
    let mut totals = from_reports.or(from_prometheus).unwrap_or_default();
    // Copies are mirrored to the candidate; only the filters report comparisons (either source).
    totals.entry(spec.candidate.clone()).or_default().shadow = shadow;
    for (arm, f) in feedback {
        let t = totals.entry(arm).or_default();
        t.labelled = f.labelled;
        t.correct = f.correct;
        t.reward_micros = f.reward_micros;
        t.buckets.reward_micros = f.bucket_reward_micros;
        t.buckets.pre_reward_micros = f.bucket_pre_reward_micros;
    }
    totals
}
