//! The tick's tally flushed: into Envoy's counters (each worker adds its own, so Envoy's sum is
//! the Envoy's total) and into the per-Envoy totals in shared data that the bandit and the
//! reports read. Counted once per request, flushed to both places once per tick.

use super::shared::{cas_add, cas_merge};
use super::{Active, Arm, LiveLink, MomentsState, Worker};
use crate::counters::{counts_slots, decode_counts, WorkerCounts};
use crate::host::Host;
use crate::report::ArmReport;
use crate::shadow::{decode_moments, encode_moments, ShadowMoments};
use crate::stream::StreamCounts;

impl<H: Host + Clone> Worker<H> {
    /// This tick's tally into Envoy's counters (and, with a controller, into the counts that go
    /// to shared data for the report); bandit counts and shadow totals likewise.
    pub(super) fn flush(&self, active: &Active) {
        let tally = match active.tally.try_borrow_mut() {
            Ok(mut t) => t.take(),
            Err(_) => return,
        };
        for (arm, counts) in active.arms.iter().zip(&tally.streams) {
            self.flush_stream(arm, counts);
        }
        for (arm, counts) in active.arms.iter().zip(&tally.arms) {
            if counts.is_zero() {
                continue;
            }
            let m = &arm.metrics;
            self.add(m.requests, counts.requests());
            self.add(m.local_replies, counts.local_replies());
            for (&id, n) in m.responses.iter().zip(counts.responses()) {
                self.add(id, n);
            }
            for (&id, n) in m.latency_buckets.iter().zip(counts.cumulative_latency()) {
                self.add(id, n);
            }
            if arm.counts_key.is_some() {
                let mut unshared = arm.unshared.get();
                unshared.add(counts);
                arm.unshared.set(unshared);
            }
        }
        self.add(active.fail_open, tally.fail_open);
        if let Some(b) = &active.bandit {
            if let Ok(mut counts) = b.counts.try_borrow_mut() {
                self.sync_bandit_counts(&active.arms, &mut counts);
                self.publish_bandit_share(&active.arms, &mut counts);
                b.refresh_discounted(&counts);
            }
        }
        if let Some(state) = &active.shadow {
            if let Ok(mut st) = state.try_borrow_mut() {
                let max_age = active.rollout.shadow.as_ref().map_or(0, |s| s.timeout_ms) + 10_000;
                let expired = st.book.expire(self.now_ms(), max_age);
                st.totals.unpaired += expired as u64;
                let values = st.totals.take();
                if let Some(Ok(mut pending)) = active
                    .live
                    .as_ref()
                    .map(|l| l.shadow_pending.try_borrow_mut())
                {
                    for (p, v) in pending.iter_mut().zip(values) {
                        *p = p.saturating_add(v);
                    }
                }
                for (&id, v) in st.metrics.iter().zip(values) {
                    self.add(id, v);
                }
                if let Some(m) = st.moments.as_mut() {
                    self.flush_moments(m);
                }
            }
        }
    }

    /// One arm's streamed responses of this tick into Envoy's counters and its report totals.
    fn flush_stream(&self, arm: &Arm, counts: &StreamCounts) {
        let Some(st) = arm.stream.as_ref().filter(|_| !counts.is_zero()) else {
            return;
        };
        for (ids, cumulative) in st.buckets.iter().zip(counts.cumulative()) {
            for (&id, n) in ids.iter().zip(cumulative) {
                self.add(id, n);
            }
        }
        let [token_responses, prompt, completion] = counts.tokens();
        for (&id, n) in
            st.counters
                .iter()
                .zip([counts.responses(), token_responses, prompt, completion])
        {
            self.add(id, n);
        }
        if st.key.is_some() {
            let mut unshared = st.unshared.get();
            unshared.merge(counts);
            st.unshared.set(unshared);
        }
    }

    /// Adds `n` to counter `id` (no call for 0). A failed increment is dropped, not retried:
    /// Envoy's counters are the dashboard's; the report path keeps its own copy.
    fn add(&self, id: u32, n: u64) {
        if n > 0 {
            self.host.increment_metric(id, n);
        }
    }

    /// Adds this worker's report counts (and shadow totals) into the per-Envoy totals in shared
    /// data, keeping what could not be written, as for the bandit counters.
    pub(super) fn flush_report_counts(&self, arms: &[Arm], link: &LiveLink) {
        for arm in arms {
            let delta = arm.unshared.get();
            if let Some(key) = &arm.counts_key {
                if !delta.is_zero() && cas_add(&self.host, key, delta.slots()).is_some() {
                    arm.unshared.set(ArmReport::default());
                }
            }
            if let Some((st, key)) = arm.stream.as_ref().and_then(|s| Some((s, s.key.as_ref()?))) {
                let delta = st.unshared.get();
                if !delta.is_zero() && cas_add(&self.host, key, delta.slots()).is_some() {
                    st.unshared.set(StreamCounts::default());
                }
            }
        }
        if let Ok(mut shadow) = link.shadow_pending.try_borrow_mut() {
            if shadow.iter().any(|&v| v > 0)
                && cas_add(&self.host, &link.shadow_key, &shadow).is_some()
            {
                shadow.iter_mut().for_each(|v| *v = 0);
            }
        }
    }

    /// Adds this worker's pending bandit counts to shared data and reads back every arm's total.
    /// A delta that cannot be written stays pending for the next tick, so no trial is lost or
    /// counted twice; what reached shared data also goes to the arm's counters.
    fn sync_bandit_counts(&self, arms: &[Arm], counts: &mut WorkerCounts) {
        for (i, arm) in arms.iter().enumerate() {
            let Some(key) = &arm.bandit_key else {
                continue;
            };
            let delta = counts.pending(i);
            if delta.is_zero() {
                if let Some(total) = self
                    .host
                    .shared_get(key)
                    .and_then(|(b, _)| decode_counts(&b?))
                {
                    counts.observed(i, total);
                }
            } else if let Some(total) =
                cas_add(&self.host, key, &counts_slots(&delta)).and_then(|t| decode_counts(&t))
            {
                counts.flushed(i, delta, total);
                if let Some([trials, reward, _]) = arm.metrics.bandit {
                    self.add(trials, delta.trials);
                    self.add(reward, delta.reward_micros);
                }
            }
        }
    }

    fn publish_bandit_share(&self, arms: &[Arm], counts: &mut WorkerCounts) {
        let shares = counts.recent_shares_ppm();
        for (i, arm) in arms.iter().enumerate() {
            let Some([_, _, share]) = arm.metrics.bandit else {
                continue;
            };
            if let Some(s) = shares.as_ref().and_then(|s| s.get(i)) {
                self.host.record_metric(share, *s);
            }
        }
    }

    /// Adds this worker's prediction sums into shared data (exact: integer sums, the maximum by
    /// max) and shows the Envoy's maximum; what cannot be written waits for the next tick.
    fn flush_moments(&self, m: &mut MomentsState) {
        if m.pending.n == 0 {
            return;
        }
        let thresholds = m.pending.thresholds.clone();
        let merged = cas_merge(&self.host, &m.key, |stored| {
            let mut total = match stored {
                None | Some([]) => ShadowMoments::with_thresholds(&thresholds),
                Some(b) => decode_moments(b, &thresholds)?,
            };
            total.add(&m.pending);
            Some(encode_moments(&total))
        });
        let Some(total) = merged.and_then(|b| decode_moments(&b, &thresholds)) else {
            return;
        };
        for (&id, &n) in m.beyond_counters.iter().zip(&m.pending.beyond) {
            self.add(id, n);
        }
        self.host
            .record_metric(m.max_gauge, total.max_abs_diff_micros);
        m.pending = ShadowMoments::with_thresholds(&thresholds);
    }
}
