//! Delayed feedback for one decision: ground truth or a reward, stored once per decision id (a
//! repeat changes nothing) and counted at once in the report book, where the rules and the bandit
//! read it. Feedback steers rollbacks and the bandit: only the operator's token may post it.

use std::sync::Arc;

use super::{App, Error};
use crate::api::{FeedbackAnswer, FeedbackRequest};
use crate::clock::now_ms;

pub async fn feedback(
    app: &Arc<App>,
    name: &str,
    req: FeedbackRequest,
) -> Result<FeedbackAnswer, Error> {
    let FeedbackRequest {
        decision,
        correct,
        reward,
    } = req;
    let (id, pre_period) = ramp_protocol::decision::split_pre_period(&decision);
    let (arm, number) =
        ramp_protocol::decision::parse_decision(id).map_err(|r| Error::invalid("decision", r))?;
    let (handle, _, spec) = app.loaded(name)?;
    if !spec.is_arm(arm) {
        return Err(Error::invalid(
            "decision",
            format!("{decision:?} names no arm of rollout {name:?}"),
        ));
    }
    let (rollout, arm) = (name.to_owned(), arm.to_owned());
    // Counted in the book under the store's lock, as the store took it, so a replica's refresh
    // (`App::refresh`, which replaces the book's feedback with the store's totals) cannot count
    // it twice.
    let recorded = app
        .db(move |s| {
            let recorded = s.put_feedback(&rollout, &decision, &arm, correct, reward, now_ms())?;
            if recorded {
                // Rounded as the SQL sum in `feedback_totals` rounds each row.
                let micros = reward.map(|r| (r * 1e6).round() as u64);
                let bucket = ramp_protocol::decision::bucket_of(number);
                match (pre_period, micros) {
                    // A pre-period decision's reward is CUPED's covariate for the arm the id
                    // names.
                    (true, Some(m)) => handle.reports().pre_feedback_recorded(&arm, bucket, m),
                    // Its ground truth is stored, but judges no arm.
                    (true, None) => {}
                    (false, _) => handle
                        .reports()
                        .feedback_recorded(&arm, bucket, correct, micros),
                }
            }
            Ok(recorded)
        })
        .await?;
    Ok(FeedbackAnswer { recorded })
}
