//! The streaming part of an arm's report (`"stream"`), when the filter's config has `stream`: per
//! arm, the 2xx responses whose body was watched to its end, histograms of their time to first
//! body byte, to end of stream and per output token after the first, and the tokens the model
//! said it used (OpenAI `usage`). Cumulative like the rest of a report; validated at the edge so a
//! bad reporter cannot make a fleet sum overflow or a quantile come from a malformed histogram.

use serde::{Deserialize, Serialize};

use crate::report::{bound_ms, bounded, Latency, LATENCY_BOUNDS_US};
use crate::FieldError;

/// One arm's streamed responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamReport {
    /// Responses watched from their headers to their end of stream.
    pub responses: u64,
    /// Time from the request's headers to the response's first body byte: the time to first
    /// token of a streamed answer. Latency's bounds.
    pub ttft_ms: Latency,
    /// Time from the request's headers to the response's end of stream.
    pub duration_ms: Latency,
    /// Per response with at least two completion tokens: (end - first byte) / (tokens - 1).
    pub tpot_ms: Latency,
    /// Responses whose body carried a `usage` block (with `stream.tokens`).
    #[serde(default)]
    pub token_responses: u64,
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

impl StreamReport {
    /// `answered`: the arm's responses, which bound the streamed ones.
    pub fn validate(&self, at: &str, answered: u64) -> Result<(), FieldError> {
        let responses = bounded(format!("{at}.responses"), self.responses)?;
        if responses > answered {
            return Err(FieldError::new(
                format!("{at}.responses"),
                format!("{responses} streamed responses for {answered} responses"),
            ));
        }
        validate_histogram(&self.ttft_ms, &format!("{at}.ttft_ms"), responses)?;
        validate_histogram(&self.duration_ms, &format!("{at}.duration_ms"), responses)?;
        let token_responses = bounded(format!("{at}.token_responses"), self.token_responses)?;
        if token_responses > responses {
            return Err(FieldError::new(
                format!("{at}.token_responses"),
                format!("{token_responses} responses with tokens for {responses} streamed"),
            ));
        }
        validate_histogram(&self.tpot_ms, &format!("{at}.tpot_ms"), token_responses)?;
        bounded(format!("{at}.prompt_tokens"), self.prompt_tokens)?;
        bounded(format!("{at}.completion_tokens"), self.completion_tokens)?;
        Ok(())
    }
}

/// A cumulative histogram on the filter's latency bounds, at most `total` observations.
pub fn validate_histogram(h: &Latency, at: &str, total: u64) -> Result<(), FieldError> {
    let expected = LATENCY_BOUNDS_US
        .iter()
        .map(|&b| bound_ms(b))
        .chain([f64::INFINITY]);
    if h.le.iter().map(|l| l.0).ne(expected) {
        return Err(FieldError::new(
            format!("{at}.le"),
            "must be the filter's bucket bounds (0.1 ms to 60000 ms, 1 to 9 in each decade) and \"+Inf\"",
        ));
    }
    if h.counts.len() != h.le.len() {
        return Err(FieldError::new(
            format!("{at}.counts"),
            format!("{} counts for {} bounds", h.counts.len(), h.le.len()),
        ));
    }
    if h.counts.windows(2).any(|w| w[1] < w[0]) {
        return Err(FieldError::new(
            format!("{at}.counts"),
            "cumulative counts must not decrease",
        ));
    }
    if let Some(&last) = h.counts.last() {
        if last > total {
            return Err(FieldError::new(
                format!("{at}.counts"),
                format!("{last} observations for {total} responses"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::latency_le;

    fn hist(total: u64) -> Latency {
        let le = latency_le();
        let mut counts = vec![0; le.len()];
        for c in counts.iter_mut().skip(20) {
            *c = total;
        }
        Latency { le, counts }
    }

    fn report() -> StreamReport {
        StreamReport {
            responses: 10,
            ttft_ms: hist(10),
            duration_ms: hist(10),
            tpot_ms: hist(8),
            token_responses: 8,
            prompt_tokens: 80,
            completion_tokens: 400,
        }
    }

    #[test]
    fn a_consistent_stream_part_passes_and_each_inconsistency_names_its_field() {
        assert_eq!(report().validate("arms.v1.stream", 10), Ok(()));
        let err = |r: StreamReport, answered| r.validate("arms.v1.stream", answered).unwrap_err();
        assert_eq!(err(report(), 9).field, "arms.v1.stream.responses");
        let mut r = report();
        r.ttft_ms.counts[30] = 11;
        assert_eq!(err(r, 10).field, "arms.v1.stream.ttft_ms.counts");
        let mut r = report();
        r.duration_ms.counts[40] = 3;
        assert_eq!(err(r, 10).field, "arms.v1.stream.duration_ms.counts");
        let mut r = report();
        r.tpot_ms.le.pop();
        assert_eq!(err(r, 10).field, "arms.v1.stream.tpot_ms.le");
        let mut r = report();
        r.token_responses = 11;
        assert_eq!(err(r, 10).field, "arms.v1.stream.token_responses");
        let mut r = report();
        r.completion_tokens = (1 << 53) + 1;
        assert_eq!(err(r, 10).field, "arms.v1.stream.completion_tokens");
    }
}
