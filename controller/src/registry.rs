//! What `rampctl serve` holds in memory per rollout, so reads never wait on a check: the published
//! view (record, spec and the figures of the last check) behind a `watch` channel that polls read
//! and long-polls wait on, and the newest report of each Envoy with the fleet's bandit counts
//! behind a mutex that is only ever held for a few additions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Notify};

use crate::api::Figures;
use crate::report::CheckPoint;
use crate::spec::Spec;
use crate::store::{ArmFeedback, Record};
use crate::window::{sum_reports, sum_shadow, BanditCounts, Report, Totals};

/// Most Envoys one rollout keeps reports of; a new instance past it is refused (429).
pub const MAX_INSTANCES: usize = 10_000;

/// A rollout as the API serves it.
#[derive(Debug, Clone)]
pub enum Loaded {
    Ok {
        rec: Record,
        spec: Arc<Spec>,
    },
    /// Its row or spec cannot be decoded: shown as phase `error` with the reason; the others go on.
    Error {
        reason: String,
    },
}

/// The snapshot readers get.
#[derive(Debug, Clone)]
pub struct View {
    pub loaded: Loaded,
    /// The last check's figures (what the reconciler judged), `None` before the first.
    pub figures: Option<Arc<Figures>>,
}

impl View {
    /// The live-state version, for long polls (`None` for a rollout that cannot be loaded).
    pub fn version(&self) -> Option<u64> {
        match &self.loaded {
            Loaded::Ok { rec, .. } => Some(rec.version),
            Loaded::Error { .. } => None,
        }
    }
}

/// Each Envoy's newest report and what follows from them. The fleet's bandit sums are kept
/// current report by report, so a poll costs a few additions, not a scan of every report.
#[derive(Debug, Default)]
pub struct ReportBook {
    /// Shared, so the flusher copies pointers, not reports, while it holds the lock.
    pub newest: BTreeMap<String, Arc<Report>>,
    /// Per arm, the bandit counts of every instance's newest report, summed (saturating).
    bandit_total: BTreeMap<String, BanditCounts>,
    /// Reports accepted since the last write to the store.
    pub unsaved: BTreeSet<String>,
    /// Feedback per arm (ground truth and rewards), kept current as it is posted.
    pub feedback: BTreeMap<String, ArmFeedback>,
}

/// What `ReportBook::accept` did with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    Newer,
    /// Its `seq` is not above the stored one: a repeat or a late arrival, changing nothing.
    Stale,
    /// A new instance beyond `MAX_INSTANCES`.
    Full,
}

impl ReportBook {
    /// A reward for a pre-period decision (`.pre`) of a user the experiment gives `arm` was
    /// recorded: CUPED's covariate, kept apart from the arm's own rewards.
    pub fn pre_feedback_recorded(&mut self, arm: &str, bucket: usize, reward_micros: u64) {
        self.feedback
            .entry(arm.to_owned())
            .or_insert_with(|| ArmFeedback::new(arm))
            .add_pre_reward(bucket, reward_micros);
    }

    /// Feedback for one decision to `arm` was recorded (the first for that decision).
    pub fn feedback_recorded(
        &mut self,
        arm: &str,
        bucket: usize,
        correct: Option<bool>,
        reward_micros: Option<u64>,
    ) {
        let f = self
            .feedback
            .entry(arm.to_owned())
            .or_insert_with(|| ArmFeedback::new(arm));
        if let Some(c) = correct {
            f.labelled = f.labelled.saturating_add(1);
            f.correct = f.correct.saturating_add(u64::from(c));
        }
        if let Some(r) = reward_micros {
            f.rewarded = f.rewarded.saturating_add(1);
            f.reward_micros = f.reward_micros.saturating_add(r);
            f.add_bucket_reward(bucket, r);
        }
    }

    /// What an Envoy does not hold itself: every other instance's bandit counts plus the delayed
    /// rewards (`requester` `None`: the whole fleet). Only `arms` are listed: a filter refuses a
    /// state that names an arm it does not have.
    pub fn remote(&self, requester: Option<&str>, arms: &[&str]) -> BTreeMap<String, BanditCounts> {
        let own = requester.and_then(|r| self.newest.get(r));
        arms.iter()
            .map(|&arm| {
                let total = self.bandit_total.get(arm).copied().unwrap_or_default();
                let mine = own.map(|r| bandit_of(r, arm)).unwrap_or_default();
                let delayed = self.feedback.get(arm).map_or(0, |f| f.reward_micros);
                (
                    arm.to_owned(),
                    BanditCounts {
                        trials: total.trials.saturating_sub(mine.trials),
                        reward_micros: total
                            .reward_micros
                            .saturating_sub(mine.reward_micros)
                            .saturating_add(delayed),
                    },
                )
            })
            .collect()
    }

    pub fn accept(&mut self, report: Report) -> Accepted {
        self.accept_within(report, MAX_INSTANCES)
    }

    /// `accept`, with room for at most `max_instances` Envoys.
    fn accept_within(&mut self, report: Report, max_instances: usize) -> Accepted {
        match self.newest.get(&report.instance) {
            Some(old) if old.seq >= report.seq => return Accepted::Stale,
            None if self.newest.len() >= max_instances => return Accepted::Full,
            _ => {}
        }
        let old = self.newest.get(&report.instance);
        let arms: BTreeSet<&String> = report
            .arms
            .keys()
            .chain(old.iter().flat_map(|o| o.arms.keys()))
            .collect();
        for arm in arms {
            // The instance's old counts leave the sum and its new ones join it.
            let before = old.map(|o| bandit_of(o, arm)).unwrap_or_default();
            let t = self.bandit_total.entry(arm.clone()).or_default();
            *t = BanditCounts {
                trials: t.trials.saturating_sub(before.trials),
                reward_micros: t.reward_micros.saturating_sub(before.reward_micros),
            }
            .saturating_add(bandit_of(&report, arm));
        }
        self.unsaved.insert(report.instance.clone());
        self.newest
            .insert(report.instance.clone(), Arc::new(report));
        Accepted::Newer
    }

    /// The rollout's totals from the reports (Prometheus sources replace the request figures).
    pub fn totals(&self) -> Totals {
        sum_reports(self.newest.values().map(|r| &**r))
    }

    pub fn shadow(&self) -> crate::rules::ShadowFigures {
        sum_shadow(self.newest.values().map(|r| &**r))
    }
}

/// `report`'s bandit counts for `arm` (zero when it has none).
fn bandit_of(report: &Report, arm: &str) -> BanditCounts {
    report
        .arms
        .get(arm)
        .and_then(|a| a.bandit)
        .unwrap_or_default()
}

/// One rollout's handle, shared by the API handlers and its reconciler task.
pub struct Rollout {
    pub name: String,
    pub view: watch::Sender<Arc<View>>,
    reports: Mutex<ReportBook>,
    /// Wakes the reconciler early (an operator's command changed the state).
    pub wake: Notify,
    /// Checks not written to the store yet (the flusher writes them in batches).
    checks: Mutex<Vec<CheckPoint>>,
    /// Figures published since the flusher last looked.
    figures_unsaved: std::sync::atomic::AtomicBool,
    /// The filters' guard trips, from their reports.
    guard_trips: Mutex<ramp_controller_core::guard::TripBook>,
}

/// Most checks one rollout holds unwritten; past it (a store that keeps failing) the oldest go.
pub const MAX_PENDING_CHECKS: usize = 1_000;

impl Rollout {
    pub fn new(name: String, view: View, book: ReportBook) -> Self {
        Self {
            name,
            view: watch::Sender::new(Arc::new(view)),
            reports: Mutex::new(book),
            wake: Notify::new(),
            checks: Mutex::new(Vec::new()),
            figures_unsaved: std::sync::atomic::AtomicBool::new(false),
            guard_trips: Mutex::new(Default::default()),
        }
    }

    pub fn guard_trips(&self) -> MutexGuard<'_, ramp_controller_core::guard::TripBook> {
        self.guard_trips.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a check's point for the store.
    pub fn push_check(&self, point: CheckPoint) {
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        if checks.len() >= MAX_PENDING_CHECKS {
            checks.remove(0);
        }
        checks.push(point);
    }

    /// The checks queued since the last call, oldest first.
    pub fn take_checks(&self) -> Vec<CheckPoint> {
        std::mem::take(&mut *self.checks.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts back checks a failed write took, before any queued since (bounded as `push_check`).
    pub fn return_checks(&self, mut points: Vec<CheckPoint>) {
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        points.append(&mut checks);
        let over = points.len().saturating_sub(MAX_PENDING_CHECKS);
        points.drain(..over);
        *checks = points;
    }

    pub fn current(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// The report book. Holders only add, compare or copy: no IO and nothing unbounded. A
    /// poisoned lock (a panic elsewhere while held) still holds consistent data: every change
    /// to the book is made in an order that leaves it whole.
    pub fn reports(&self) -> MutexGuard<'_, ReportBook> {
        self.reports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a new record (keeping the figures), if it is not older than the published one.
    pub fn publish_record(&self, rec: Record, spec: Arc<Spec>) {
        self.view.send_modify(|v| {
            let figures = v.figures.clone();
            *v = Arc::new(View {
                loaded: Loaded::Ok { rec, spec },
                figures,
            });
        });
    }

    /// `publish_figures` for figures another replica checked (read from the store): shown if
    /// they are of a later check than the ones shown, and not written back.
    pub fn show_stored_figures(&self, figures: Figures) {
        let at = |f: Option<&Figures>| f.and_then(|f| f.last.as_ref()).map(|l| l.checked_at_ms);
        self.view.send_if_modified(|v| {
            if at(Some(&figures)) <= at(v.figures.as_deref()) {
                return false;
            }
            *v = Arc::new(View {
                loaded: v.loaded.clone(),
                figures: Some(Arc::new(figures)),
            });
            true
        });
    }

    /// Whether figures were published since the last call (the flusher writes them for the
    /// other replicas).
    pub fn take_figures_unsaved(&self) -> bool {
        self.figures_unsaved
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn publish_figures(&self, figures: Figures) {
        self.figures_unsaved
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.view.send_modify(|v| {
            *v = Arc::new(View {
                loaded: v.loaded.clone(),
                figures: Some(Arc::new(figures)),
            });
        });
    }
}

/// Reports for rollouts not applied yet: kept in memory only (never stored), for a few rollouts
/// and instances, so the counts an Envoy had before `rampctl apply` become the rollout's starting
/// point instead of counting as the first stage's traffic.
/// One rollout's pending reports: by instance, the newest `seq` and its body.
type PendingBook = BTreeMap<String, (u64, Box<[u8]>)>;

#[derive(Debug, Default)]
pub struct Pending {
    /// Per rollout name, per instance: the newest report's `seq` and its body as sent. Bodies,
    /// not parsed reports, so what is held is what is counted (parsed, a report takes about
    /// three times its body: 64 MiB of bodies held 230 MB); they are parsed again on `take`.
    books: BTreeMap<String, PendingBook>,
    /// The kept bodies' bytes together: a count bound alone let 64 KiB reports of made-up
    /// arms hold 7.5 GB.
    bytes: usize,
}

/// Rollout names with pending reports, and instances per name, kept at most.
pub const MAX_PENDING_ROLLOUTS: usize = 32;
pub const MAX_PENDING_INSTANCES: usize = 1_000;
/// The pending reports' bodies together, at most.
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;

/// Why a pending report was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingFull {
    Rollouts,
    Instances,
    Bytes,
}

impl Pending {
    /// Keeps the report `body` (already validated; from `instance`, numbered `seq`) for
    /// `rollout`, unless a bound is reached. An older or repeated report is not kept, and is no
    /// error.
    pub fn keep(
        &mut self,
        rollout: &str,
        instance: &str,
        seq: u64,
        body: &[u8],
    ) -> Result<(), PendingFull> {
        let book = self.books.get(rollout);
        if book.is_none() && self.books.len() >= MAX_PENDING_ROLLOUTS {
            return Err(PendingFull::Rollouts);
        }
        let old = book.and_then(|b| b.get(instance));
        let replaced = match old {
            Some((old_seq, _)) if *old_seq >= seq => return Ok(()),
            Some((_, old_body)) => old_body.len(),
            None if book.map_or(0, BTreeMap::len) >= MAX_PENDING_INSTANCES => {
                return Err(PendingFull::Instances)
            }
            None => 0,
        };
        let bytes = self
            .bytes
            .saturating_sub(replaced)
            .saturating_add(body.len());
        if bytes > MAX_PENDING_BYTES {
            return Err(PendingFull::Bytes);
        }
        self.books
            .entry(rollout.to_owned())
            .or_default()
            .insert(instance.to_owned(), (seq, body.into()));
        self.bytes = bytes;
        Ok(())
    }

    /// The pending report bodies of `rollout`, taken out (`parse_pending` reads them: up to
    /// 64 MiB of JSON, which is not parsed while the lock on `Pending` is held).
    pub fn take(&mut self, rollout: &str) -> Vec<Box<[u8]>> {
        let Some(book) = self.books.remove(rollout) else {
            return Vec::new();
        };
        book.into_values()
            .map(|(_, body)| {
                self.bytes = self.bytes.saturating_sub(body.len());
                body
            })
            .collect()
    }
}

/// The reports among `bodies` whose arms are all `arms` (the others are dropped).
pub fn parse_pending(bodies: &[Box<[u8]>], arms: &[&str]) -> Vec<Report> {
    bodies
        .iter()
        .filter_map(|body| serde_json::from_slice::<Report>(body).ok())
        .filter(|r| r.validate(arms).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(instance: &str, seq: u64, requests: u64) -> Report {
        serde_json::from_value(serde_json::json!({
            "instance": instance, "seq": seq,
            "arms": {"v2": {"requests": requests, "responses": {"2xx": requests},
                "latency_ms": {"le": ramp_protocol::report::latency_le(),
                               "counts": vec![requests; 52]}}}
        }))
        .unwrap()
    }

    #[test]
    fn newer_reports_replace_older_ones_and_repeats_change_nothing() {
        let mut book = ReportBook::default();
        assert_eq!(book.accept(report("a", 2, 10)), Accepted::Newer);
        assert_eq!(book.accept(report("a", 2, 99)), Accepted::Stale);
        assert_eq!(book.accept(report("a", 1, 99)), Accepted::Stale);
        assert_eq!(book.accept(report("b", 1, 5)), Accepted::Newer);
        assert_eq!(book.totals()["v2"].requests, 15);
        assert_eq!(book.accept(report("a", 3, 20)), Accepted::Newer);
        assert_eq!(book.totals()["v2"].requests, 25);
    }

    #[test]
    fn fleet_counts_leave_the_requester_out_add_delayed_rewards_and_replace_reports() {
        let with_bandit = |instance: &str, seq: u64, trials: u64, micros: u64| -> Report {
            let mut r = report(instance, seq, trials);
            r.arms.get_mut("v2").unwrap().bandit = Some(BanditCounts {
                trials,
                reward_micros: micros,
            });
            r
        };
        let mut book = ReportBook::default();
        book.accept(with_bandit("a", 1, 60, 30_000_000));
        book.accept(with_bandit("a", 2, 100, 60_000_000)); // newer totals replace, not add
        book.accept(with_bandit("b", 1, 50, 10_000_000));
        book.feedback_recorded("v2", 0, None, Some(5_000_000));
        book.feedback_recorded("v9", 0, None, Some(1));
        let for_a = book.remote(Some("a"), &["v1", "v2"]);
        assert_eq!(
            for_a["v2"],
            BanditCounts {
                trials: 50,
                reward_micros: 15_000_000
            }
        );
        assert_eq!(for_a["v1"], BanditCounts::default());
        assert!(!for_a.contains_key("v9"), "only the rollout's arms");
        assert_eq!(
            book.remote(None, &["v1", "v2"])["v2"],
            BanditCounts {
                trials: 150,
                reward_micros: 75_000_000
            }
        );
        assert_eq!(
            book.remote(Some("stranger"), &["v2"])["v2"].trials,
            150,
            "an instance with no report yet gets everything"
        );
        // An arm that leaves an instance's report leaves the sum too.
        book.accept(report("b", 2, 0));
        assert_eq!(book.remote(None, &["v2"])["v2"].trials, 100);
    }

    /// A report body as a filter sends it, padded with trailing spaces to `len` bytes.
    fn body(instance: &str, seq: u64, len: usize) -> Vec<u8> {
        let mut b = serde_json::to_vec(&report(instance, seq, 1)).unwrap();
        b.resize(len.max(b.len()), b' ');
        b
    }

    #[test]
    fn pending_reports_are_bounded_and_filtered_by_the_applied_arms() {
        let mut p = Pending::default();
        for i in 0..MAX_PENDING_ROLLOUTS {
            assert!(p.keep(&format!("r{i}"), "a", 1, &body("a", 1, 0)).is_ok());
        }
        assert_eq!(
            p.keep("one-too-many", "a", 1, &body("a", 1, 0)),
            Err(PendingFull::Rollouts)
        );
        assert_eq!(parse_pending(&p.take("r0"), &["v1", "v2"]).len(), 1);
        assert!(
            parse_pending(&p.take("r1"), &["v1", "v3"]).is_empty(),
            "v2 is not an arm"
        );
        assert!(p.take("r0").is_empty(), "taken once");
    }

    /// Issue 20, item 5: pending reports were bounded by count, not bytes. Their bodies together
    /// stay under `MAX_PENDING_BYTES`; replacing an instance's report frees its old size, an
    /// older one is not kept, and taking a rollout's reports frees theirs.
    #[test]
    fn pending_reports_are_bounded_by_bytes() {
        let mut p = Pending::default();
        let big = MAX_PENDING_BYTES / 4;
        for i in 0..4 {
            let id = format!("i{i}");
            assert_eq!(p.keep("r", &id, 1, &body(&id, 1, big)), Ok(()));
        }
        assert_eq!(
            p.keep("r", "i9", 1, &body("i9", 1, big)),
            Err(PendingFull::Bytes)
        );
        assert_eq!(
            p.keep("r", "i0", 2, &body("i0", 2, big)),
            Ok(()),
            "a newer report replaces"
        );
        assert_eq!(p.keep("r", "i0", 1, &body("i0", 1, big)), Ok(()));
        let taken = parse_pending(&p.take("r"), &["v2"]);
        assert_eq!(taken.len(), 4);
        assert!(
            taken.iter().any(|r| r.instance == "i0" && r.seq == 2),
            "the newest of i0 is kept, not the older one sent after it"
        );
        assert_eq!(p.keep("s", "i9", 1, &body("i9", 1, big)), Ok(()));
    }
}
