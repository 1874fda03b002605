//! Replicas of `rampctl serve` on one PostgreSQL (`--store postgres://...`): every replica answers
//! everything, and each keeps its snapshots current with the others' commits. A commit announces
//! the rollout on a channel (`NOTIFY`, delivered on commit); a thread here listens and the
//! rollout is refreshed from the store at once, which publishes it and wakes its long polls.
//! Every `RESYNC_EVERY` all rollouts are refreshed as well: the reports and feedback other
//! replicas took, new rollouts, and anything a lost listening connection missed. Which replica
//! reconciles a rollout is its lease's business (`store::postgres::Leases`, asked through
//! `App::leads` by the reconciler).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::service::App;

/// How often every rollout is refreshed from the store, notifications or not.
pub const RESYNC_EVERY: Duration = Duration::from_secs(1);

/// How often a replica that does not hold a rollout's lease tries to take it.
pub const LEASE_RETRY: Duration = Duration::from_millis(500);

/// Starts the listening thread and the task that refreshes what it hears of.
pub fn follow(app: Arc<App>, url: String) {
    // `None`: refresh everything.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
    std::thread::spawn(move || {
        crate::store::postgres::listen(&url, |rollout| tx.send(rollout.map(str::to_owned)).is_ok())
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RESYNC_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut all = false;
            let mut names = BTreeSet::new();
            tokio::select! {
                got = rx.recv() => match got {
                    Some(Some(name)) => { names.insert(name); }
                    Some(None) => all = true,
                    None => return,
                },
                _ = tick.tick() => all = true,
            }
            // Whatever else arrived meanwhile, once each.
            while let Ok(more) = rx.try_recv() {
                match more {
                    Some(name) => {
                        names.insert(name);
                    }
                    None => all = true,
                }
            }
            if all {
                if let Err(e) = app.refresh_all().await {
                    eprintln!("rampctl: replicas: not refreshed from the store: {e}");
                }
                continue;
            }
            for name in names {
                if let Err(e) = app.refresh(&name).await {
                    eprintln!("rampctl: {name}: not refreshed from the store: {e}");
                }
            }
        }
    });
}
