//! The controller's durable state in SQLite: every rollout's spec, its state and live-state version,
//! the totals its current stage started from, the newest report of each Envoy, and an event history.
//! Every change is one transaction, so a restart resumes exactly where the last commit left off.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use thiserror::Error;

use crate::machine::State;
use crate::window::{FleetCounts, Report, Totals};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("rollout {0:?} already exists")]
    Exists(String),
    #[error("no rollout named {0:?}")]
    NotFound(String),
}

/// One rollout as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub name: String,
    pub spec_text: String,
    pub state: State,
    /// Bumped whenever the weights the filters should apply change.
    pub version: u64,
    /// Totals when the current stage began.
    pub base: Totals,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at_ms: u64,
    pub kind: String,
    pub detail: String,
}

pub struct Store {
    db: Connection,
    /// Per rollout, the fleet's bandit counts, built from the tables on first use and then kept
    /// current by `put_report` and `put_feedback` (every write goes through them), so the filters'
    /// polls cost no scan.
    fleet: HashMap<String, FleetCounts>,
}

/// Feedback for one arm, summed over all its decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmFeedback {
    pub arm: String,
    /// Decisions with ground truth, and how many were right.
    pub labelled: u64,
    pub correct: u64,
    /// Decisions with a reward, and their sum in millionths (integers, as the filters count, so
    /// sums are exact and the same in any order).
    pub rewarded: u64,
    pub reward_micros: u64,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Connection::open(path)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS rollouts (
               name TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL,
               version INTEGER NOT NULL, base TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS reports (
               rollout TEXT NOT NULL, instance TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,
               PRIMARY KEY (rollout, instance));
             CREATE TABLE IF NOT EXISTS feedback (
               rollout TEXT NOT NULL, decision TEXT NOT NULL, arm TEXT NOT NULL,
               correct INTEGER, reward REAL, at_ms INTEGER NOT NULL,
               PRIMARY KEY (rollout, decision));
             CREATE TABLE IF NOT EXISTS events (
               id INTEGER PRIMARY KEY AUTOINCREMENT, rollout TEXT NOT NULL, at_ms INTEGER NOT NULL,
               kind TEXT NOT NULL, detail TEXT NOT NULL);",
        )?;
        Ok(Self {
            db,
            fleet: HashMap::new(),
        })
    }

    pub fn insert(&mut self, rec: &Record, at_ms: u64) -> Result<(), StoreError> {
        let tx = self.db.transaction()?;
        let exists: Option<i64> = tx
            .query_row("SELECT 1 FROM rollouts WHERE name = ?1", [&rec.name], |r| {
                r.get(0)
            })
            .optional()?;
        if exists.is_some() {
            return Err(StoreError::Exists(rec.name.clone()));
        }
        tx.execute(
            "INSERT INTO rollouts (name, spec, state, version, base) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                rec.name,
                rec.spec_text,
                serde_json::to_string(&rec.state)?,
                rec.version as i64,
                serde_json::to_string(&rec.base)?
            ],
        )?;
        tx.execute(
            "INSERT INTO events (rollout, at_ms, kind, detail) VALUES (?1, ?2, 'applied', 'stage 1 started')",
            params![rec.name, at_ms as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<Record, StoreError> {
        self.db
            .query_row(
                "SELECT name, spec, state, version, base FROM rollouts WHERE name = ?1",
                [name],
                row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound(name.to_owned()))?
    }

    pub fn list(&self) -> Result<Vec<Record>, StoreError> {
        let mut stmt = self
            .db
            .prepare("SELECT name, spec, state, version, base FROM rollouts ORDER BY name")?;
        let rows = stmt.query_map([], row)?;
        rows.map(|r| r?).collect()
    }

    /// Writes a rollout's new state (and version and base) and an event, atomically.
    pub fn update(
        &mut self,
        rec: &Record,
        event: Option<(&str, &str)>,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        let tx = self.db.transaction()?;
        let n = tx.execute(
            "UPDATE rollouts SET state = ?2, version = ?3, base = ?4 WHERE name = ?1",
            params![
                rec.name,
                serde_json::to_string(&rec.state)?,
                rec.version as i64,
                serde_json::to_string(&rec.base)?
            ],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(rec.name.clone()));
        }
        if let Some((kind, detail)) = event {
            tx.execute(
                "INSERT INTO events (rollout, at_ms, kind, detail) VALUES (?1, ?2, ?3, ?4)",
                params![rec.name, at_ms as i64, kind, detail],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Keeps `report` if it is newer than what is stored for its instance; returns whether it was.
    pub fn put_report(
        &mut self,
        rollout: &str,
        report: &Report,
        body: &str,
    ) -> Result<bool, StoreError> {
        let n = self.db.execute(
            "INSERT INTO reports (rollout, instance, seq, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (rollout, instance) DO UPDATE SET seq = excluded.seq, body = excluded.body
             WHERE excluded.seq > reports.seq",
            params![rollout, report.instance, report.seq as i64, body],
        )?;
        if n > 0 {
            if let Some(f) = self.fleet.get_mut(rollout) {
                f.reported(report);
            }
        }
        Ok(n > 0)
    }

    pub fn reports(&self, rollout: &str) -> Result<Vec<Report>, StoreError> {
        let mut stmt = self
            .db
            .prepare("SELECT body FROM reports WHERE rollout = ?1")?;
        let bodies = stmt.query_map([rollout], |r| r.get::<_, String>(0))?;
        bodies.map(|b| Ok(serde_json::from_str(&b?)?)).collect()
    }

    /// Records feedback for one decision, once: a repeat of the same decision id changes nothing and
    /// returns false.
    pub fn put_feedback(
        &mut self,
        rollout: &str,
        decision: &str,
        arm: &str,
        correct: Option<bool>,
        reward: Option<f64>,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        let n = self.db.execute(
            "INSERT OR IGNORE INTO feedback (rollout, decision, arm, correct, reward, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![rollout, decision, arm, correct, reward, at_ms as i64],
        )?;
        if let (true, Some(r), Some(f)) = (n > 0, reward, self.fleet.get_mut(rollout)) {
            // Rounded as the SQL sum in `feedback_totals` rounds each row.
            f.rewarded(arm, (r * 1e6).round() as u64);
        }
        Ok(n > 0)
    }

    /// The fleet's bandit counts of `rollout` (see `FleetCounts`).
    pub fn fleet(&mut self, rollout: &str) -> Result<&FleetCounts, StoreError> {
        if !self.fleet.contains_key(rollout) {
            let mut f = FleetCounts::default();
            for r in self.reports(rollout)? {
                f.reported(&r);
            }
            for fb in self.feedback_totals(rollout)? {
                f.rewarded(&fb.arm, fb.reward_micros);
            }
            self.fleet.insert(rollout.to_owned(), f);
        }
        self.fleet
            .get(rollout)
            .ok_or_else(|| StoreError::NotFound(rollout.to_owned()))
    }

    /// Per arm, all feedback so far.
    pub fn feedback_totals(&self, rollout: &str) -> Result<Vec<ArmFeedback>, StoreError> {
        let mut stmt = self.db.prepare(
            "SELECT arm, COUNT(correct), COALESCE(SUM(correct), 0), COUNT(reward), COALESCE(SUM(CAST(ROUND(reward * 1000000) AS INTEGER)), 0)
             FROM feedback WHERE rollout = ?1 GROUP BY arm",
        )?;
        let rows = stmt.query_map([rollout], |r| {
            Ok(ArmFeedback {
                arm: r.get(0)?,
                labelled: r.get::<_, i64>(1)? as u64,
                correct: r.get::<_, i64>(2)? as u64,
                rewarded: r.get::<_, i64>(3)? as u64,
                reward_micros: r.get::<_, i64>(4)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn events(&self, rollout: &str) -> Result<Vec<Event>, StoreError> {
        let mut stmt = self
            .db
            .prepare("SELECT at_ms, kind, detail FROM events WHERE rollout = ?1 ORDER BY id")?;
        let rows = stmt.query_map([rollout], |r| {
            Ok(Event {
                at_ms: r.get::<_, i64>(0)? as u64,
                kind: r.get(1)?,
                detail: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Record, StoreError>> {
    let (name, spec_text, state, version, base): (String, String, String, i64, String) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
    Ok((|| {
        Ok(Record {
            name,
            spec_text,
            state: serde_json::from_str(&state)?,
            version: version as u64,
            base: serde_json::from_str(&base)?,
        })
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening_and_reports_only_move_forward() {
        let dir = std::env::temp_dir().join(format!("ramp-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ramp.db");
        let rec = Record {
            name: "r".into(),
            spec_text: "x".into(),
            state: State::start(
                &crate::spec::Spec::parse(
                    "name: r\narms: [{name: a, role: baseline}, {name: b, role: candidate}]\nstages: [{weight: 100}]",
                )
                .unwrap(),
                5,
            ),
            version: 1,
            base: Totals::new(),
        };
        {
            let mut s = Store::open(&path).unwrap();
            s.insert(&rec, 5).unwrap();
            assert!(matches!(s.insert(&rec, 6), Err(StoreError::Exists(_))));
            let mut next = rec.clone();
            next.state.stage = 1;
            next.version = 2;
            s.update(&next, Some(("advance", "to stage 2")), 7).unwrap();
            let report = |seq| {
                serde_json::from_value::<Report>(
                    serde_json::json!({"instance": "a", "seq": seq, "arms": {}}),
                )
                .unwrap()
            };
            assert!(s
                .put_report("r", &report(10), r#"{"instance":"a","seq":10,"arms":{}}"#)
                .unwrap());
            assert!(
                !s.put_report("r", &report(9), r#"{"instance":"a","seq":9,"arms":{}}"#)
                    .unwrap(),
                "older: ignored"
            );
        }
        let s = Store::open(&path).unwrap();
        let got = s.get("r").unwrap();
        assert_eq!((got.state.stage, got.version), (1, 2));
        assert_eq!(s.reports("r").unwrap()[0].seq, 10);
        assert_eq!(
            s.events("r")
                .unwrap()
                .iter()
                .map(|e| e.kind.as_str())
                .collect::<Vec<_>>(),
            vec!["applied", "advance"]
        );
        assert!(matches!(s.get("nope"), Err(StoreError::NotFound(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The fleet counts kept up to date write by write equal the ones a restarted controller
    /// rebuilds from the tables; an older report and a repeated feedback change neither.
    #[test]
    fn fleet_counts_kept_in_memory_match_a_rebuild_from_the_tables() {
        let dir = std::env::temp_dir().join(format!("ramp-fleet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ramp.db");
        let report = |instance: &str, seq: u64, trials: u64| {
            let v = serde_json::json!({"instance": instance, "seq": seq, "arms": {"v2": {
                "requests": trials, "responses": {}, "latency_ms": {"le": [], "counts": []},
                "bandit": {"trials": trials, "reward_micros": trials * 250_000}}}});
            (
                serde_json::from_value::<Report>(v.clone()).unwrap(),
                v.to_string(),
            )
        };
        let arms = ["v1", "v2"];
        let live = {
            let mut s = Store::open(&path).unwrap();
            assert_eq!(s.fleet("r").unwrap().remote(None, &arms)["v2"].trials, 0);
            for (instance, seq, trials) in [("a", 1, 10), ("b", 1, 5), ("a", 2, 30), ("a", 1, 99)] {
                let (r, body) = report(instance, seq, trials);
                s.put_report("r", &r, &body).unwrap();
            }
            s.put_feedback("r", "v2.1", "v2", None, Some(1.0), 1)
                .unwrap();
            s.put_feedback("r", "v2.1", "v2", None, Some(1.0), 2)
                .unwrap();
            s.put_feedback("r", "v2.2", "v2", Some(true), Some(0.3333333), 3)
                .unwrap();
            s.fleet("r").unwrap().clone()
        };
        let rebuilt = Store::open(&path).unwrap().fleet("r").unwrap().clone();
        assert_eq!(live.remote(None, &arms), rebuilt.remote(None, &arms));
        assert_eq!(
            live.remote(Some("a"), &arms),
            rebuilt.remote(Some("a"), &arms)
        );
        assert_eq!(
            live.remote(None, &arms)["v2"],
            crate::window::BanditCounts {
                trials: 35,
                reward_micros: 35 * 250_000 + 1_000_000 + 333_333
            }
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
