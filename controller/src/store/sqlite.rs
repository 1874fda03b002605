//! The store port's SQLite adapter (`super::Store`): the controller's durable state in SQLite: every rollout's spec, its state and live-state version,
//! the totals its current stage started from, the newest report of each Envoy, and an event history.
//! Every change is one transaction, so a restart resumes exactly where the last commit left off.
//! One process writes a database: `open` takes an exclusive lock on `<db>.lock` for as long as the
//! store lives, and checks the file's integrity first. The schema carries its version
//! (`PRAGMA user_version`); `open` brings an older database up to date, so every database any
//! earlier rampctl wrote still opens.

use std::fs::File;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{ArmFeedback, Event, NewEvent, Record, StoreError, StoredRow};
use crate::report::{CheckPoint, DecisionRecord, SeriesKept, SERIES_MAX};
use crate::window::Report;

/// The schema version `open` leaves a database at. 0: the first schema (no version set);
/// 1: events carry a decision record, and each rollout has a per-check series.
pub const SCHEMA_VERSION: i64 = 1;

pub struct Store {
    db: Connection,
    /// Held (locked) for the store's life: a second `rampctl serve` on the same file refuses.
    _lock: File,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let lock_path = {
            let mut p = path.as_os_str().to_owned();
            p.push(".lock");
            std::path::PathBuf::from(p)
        };
        let shown = |p: &Path| p.display().to_string();
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StoreError::LockFile {
                lock: shown(&lock_path),
                source,
            })?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked {
                db: shown(path),
                lock: shown(&lock_path),
            });
        }
        let db = Connection::open(path)?;
        let damaged = |detail: String| StoreError::Damaged {
            db: shown(path),
            detail,
        };
        let check: String = db
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| damaged(e.to_string()))?;
        if check != "ok" {
            return Err(damaged(check));
        }
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
        migrate(&db)?;
        Ok(Self { db, _lock: lock })
    }

    pub fn insert(&mut self, rec: &Record, at_ms: u64) -> Result<(), StoreError> {
        self.insert_recorded(rec, at_ms, None)
    }

    /// `insert`, its `applied` event keeping `record` (the spec it started with).
    pub fn insert_recorded(
        &mut self,
        rec: &Record,
        at_ms: u64,
        record: Option<&DecisionRecord>,
    ) -> Result<(), StoreError> {
        let record = record.map(serde_json::to_string).transpose()?;
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
            "INSERT INTO events (rollout, at_ms, kind, detail, record) VALUES (?1, ?2, 'applied', 'stage 1 started', ?3)",
            params![rec.name, at_ms as i64, record],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<Record, StoreError> {
        let mut stmt = self
            .db
            .prepare("SELECT name, spec, state, version, base FROM rollouts WHERE name = ?1")?;
        let mut rows = stmt.query([name])?;
        match rows.next()? {
            Some(r) => row(r),
            None => Err(StoreError::NotFound(name.to_owned())),
        }
    }

    /// Every rollout, each with its own result: one row that cannot be decoded is reported under
    /// its name (as well as it can be read) and does not hide the others.
    pub fn list(&self) -> Result<Vec<StoredRow>, StoreError> {
        let mut stmt = self.db.prepare(
            "SELECT CAST(name AS BLOB), spec, state, version, base FROM rollouts ORDER BY name",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let name = match r.get_ref(0)? {
                rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => {
                    String::from_utf8_lossy(b).into_owned()
                }
                other => format!("{other:?}"),
            };
            out.push((name, row(r)));
        }
        Ok(out)
    }

    /// Writes `next` only if the stored rollout is still `expected` (same state and version):
    /// returns false, writing nothing, when another writer (an operator's command, the
    /// reconciler) changed it meanwhile.
    pub fn update_if(
        &mut self,
        expected: &Record,
        next: &Record,
        event: Option<(&str, &str)>,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        let events: Vec<NewEvent> = event
            .map(|(kind, detail)| NewEvent::new(kind, detail, None))
            .into_iter()
            .collect();
        self.update_if_recorded(expected, next, &events, at_ms)
    }

    /// `update_if` with any number of events, each with its decision record.
    pub fn update_if_recorded(
        &mut self,
        expected: &Record,
        next: &Record,
        events: &[NewEvent],
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        let tx = self.db.transaction()?;
        let current: Option<(String, i64)> = tx
            .query_row(
                "SELECT state, version FROM rollouts WHERE name = ?1",
                [&expected.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((state, version)) = current else {
            return Err(StoreError::NotFound(expected.name.clone()));
        };
        let stored: crate::machine::State = serde_json::from_str(&state)?;
        if stored != expected.state || version as u64 != expected.version {
            return Ok(false);
        }
        write_record(&tx, next, events, at_ms)?;
        tx.commit()?;
        Ok(true)
    }

    /// Writes a rollout's new state (and version and base) and an event, atomically.
    pub fn update(
        &mut self,
        rec: &Record,
        event: Option<(&str, &str)>,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        let events: Vec<NewEvent> = event
            .map(|(kind, detail)| NewEvent::new(kind, detail, None))
            .into_iter()
            .collect();
        let tx = self.db.transaction()?;
        write_record(&tx, rec, &events, at_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Keeps each report (validated: `seq` fits SQLite's signed integer) that is newer than what
    /// is stored for its instance, all in one transaction; returns how many were.
    pub fn put_reports<'a>(
        &mut self,
        reports: impl IntoIterator<Item = (&'a str, &'a Report)>,
    ) -> Result<usize, StoreError> {
        let tx = self.db.transaction()?;
        let mut kept = 0;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO reports (rollout, instance, seq, body) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (rollout, instance) DO UPDATE SET seq = excluded.seq, body = excluded.body
                 WHERE excluded.seq > reports.seq",
            )?;
            for (rollout, report) in reports {
                let seq = i64::try_from(report.seq).unwrap_or(i64::MAX);
                kept += stmt.execute(params![
                    rollout,
                    report.instance,
                    seq,
                    serde_json::to_string(report)?
                ])?;
            }
        }
        tx.commit()?;
        Ok(kept)
    }

    /// Keeps `report` if it is newer than what is stored for its instance; returns whether it was.
    pub fn put_report(&mut self, rollout: &str, report: &Report) -> Result<bool, StoreError> {
        Ok(self.put_reports([(rollout, report)])? > 0)
    }

    /// The newest report of each instance, each decoded on its own (a damaged row does not hide
    /// the others; the caller says which was skipped).
    pub fn reports(&self, rollout: &str) -> Result<Vec<Result<Report, StoreError>>, StoreError> {
        let mut stmt = self
            .db
            .prepare("SELECT body FROM reports WHERE rollout = ?1")?;
        let bodies = stmt.query_map([rollout], |r| r.get::<_, String>(0))?;
        Ok(bodies.map(|b| Ok(serde_json::from_str(&b?)?)).collect())
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
        Ok(n > 0)
    }

    /// Per arm, all feedback so far.
    pub fn feedback_totals(&self, rollout: &str) -> Result<Vec<ArmFeedback>, StoreError> {
        let mut stmt = self.db.prepare(
            "SELECT arm, COUNT(correct), COALESCE(SUM(correct), 0), COUNT(reward), COALESCE(SUM(CAST(ROUND(reward * 1000000) AS INTEGER)), 0)
             FROM feedback WHERE rollout = ?1 AND decision NOT LIKE '%.pre' GROUP BY arm",
        )?;
        let rows = stmt.query_map([rollout], |r| {
            Ok(ArmFeedback {
                arm: r.get(0)?,
                labelled: r.get::<_, i64>(1)? as u64,
                correct: r.get::<_, i64>(2)? as u64,
                rewarded: r.get::<_, i64>(3)? as u64,
                reward_micros: r.get::<_, i64>(4)? as u64,
                ..ArmFeedback::new("")
            })
        })?;
        let mut out: Vec<ArmFeedback> = rows.collect::<Result<_, _>>()?;
        // The bucket is the top 6 bits of the decision number: its first two hex digits / 4
        // (before a pre-period id's `.pre`, four characters further left; either case, as
        // `parse_decision` takes both).
        let mut stmt = self.db.prepare(
            "SELECT arm, pre,
                    (instr('0123456789abcdef', lower(substr(decision, -16 - 4 * pre, 1))) - 1) * 4
                      + (instr('0123456789abcdef', lower(substr(decision, -15 - 4 * pre, 1))) - 1) / 4 AS bucket,
                    SUM(CAST(ROUND(reward * 1000000) AS INTEGER))
             FROM (SELECT arm, decision, reward, decision LIKE '%.pre' AS pre FROM feedback
                   WHERE rollout = ?1 AND reward IS NOT NULL)
             GROUP BY arm, pre, bucket",
        )?;
        let rows = stmt.query_map([rollout], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (arm, pre, bucket, micros) = row?;
            let Ok(bucket) = usize::try_from(bucket) else {
                continue;
            };
            if !out.iter().any(|f| f.arm == arm) {
                out.push(ArmFeedback::new(&arm));
            }
            if let Some(f) = out.iter_mut().find(|f| f.arm == arm) {
                let micros = micros.max(0) as u64;
                if pre {
                    f.add_pre_reward(bucket, micros);
                } else {
                    f.add_bucket_reward(bucket, micros);
                }
            }
        }
        Ok(out)
    }

    /// A trivial query: the database answers.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.db.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    pub fn events(&self, rollout: &str) -> Result<Vec<Event>, StoreError> {
        let mut stmt = self.db.prepare(
            "SELECT at_ms, kind, detail, record FROM events WHERE rollout = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([rollout], |r| {
            Ok(Event {
                at_ms: r.get::<_, i64>(0)? as u64,
                kind: r.get(1)?,
                detail: r.get(2)?,
                record: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Adds checks to a rollout's series, in order, in one transaction. The series keeps at most
    /// `SERIES_MAX` of them: when it is full every other one kept is dropped and from then on
    /// only every second check is kept (then every fourth, ...), so the points stay spread over
    /// the whole rollout.
    pub fn put_checks(&mut self, rollout: &str, points: &[CheckPoint]) -> Result<(), StoreError> {
        let tx = self.db.transaction()?;
        let (mut next, mut every): (i64, i64) = tx
            .query_row(
                "SELECT next_n, every FROM check_series WHERE rollout = ?1",
                [rollout],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((0, 1));
        let mut kept: i64 = tx.query_row(
            "SELECT COUNT(*) FROM checks WHERE rollout = ?1",
            [rollout],
            |r| r.get(0),
        )?;
        for p in points {
            let n = next;
            next += 1;
            if n % every.max(1) != 0 {
                continue;
            }
            let body = serde_json::to_string(&CheckPoint {
                n: n as u64,
                ..p.clone()
            })?;
            tx.execute(
                "INSERT OR REPLACE INTO checks (rollout, n, at_ms, body) VALUES (?1, ?2, ?3, ?4)",
                params![rollout, n, p.at_ms as i64, body],
            )?;
            kept += 1;
            if kept >= SERIES_MAX as i64 {
                every = every.saturating_mul(2);
                let dropped = tx.execute(
                    "DELETE FROM checks WHERE rollout = ?1 AND n % ?2 != 0",
                    params![rollout, every],
                )?;
                kept -= dropped as i64;
            }
        }
        tx.execute(
            "INSERT INTO check_series (rollout, next_n, every) VALUES (?1, ?2, ?3)
             ON CONFLICT (rollout) DO UPDATE SET next_n = excluded.next_n, every = excluded.every",
            params![rollout, next, every],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A rollout's per-check series, oldest first, and how much of it is kept. A row that
    /// cannot be decoded is left out (the others still plot).
    pub fn checks(&self, rollout: &str) -> Result<(Vec<CheckPoint>, SeriesKept), StoreError> {
        let kept = self
            .db
            .query_row(
                "SELECT next_n, every FROM check_series WHERE rollout = ?1",
                [rollout],
                |r| {
                    Ok(SeriesKept {
                        checks: r.get::<_, i64>(0)? as u64,
                        every: r.get::<_, i64>(1)? as u64,
                    })
                },
            )
            .optional()?
            .unwrap_or_default();
        let mut stmt = self
            .db
            .prepare("SELECT body FROM checks WHERE rollout = ?1 ORDER BY n")?;
        let bodies = stmt.query_map([rollout], |r| r.get::<_, String>(0))?;
        let mut points = Vec::new();
        for body in bodies {
            if let Ok(p) = serde_json::from_str(&body?) {
                points.push(p);
            }
        }
        Ok((points, kept))
    }
}

/// Brings a database any earlier rampctl wrote up to `SCHEMA_VERSION`, each step in its own
/// transaction with the version it reaches, so an interrupted upgrade resumes where it stopped.
fn migrate(db: &Connection) -> Result<(), StoreError> {
    let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 1 {
        // Decision records beside the events they explain, and the per-check series.
        let has_record = db
            .prepare("SELECT 1 FROM pragma_table_info('events') WHERE name = 'record'")?
            .exists([])?;
        let add_record = if has_record {
            ""
        } else {
            "ALTER TABLE events ADD COLUMN record TEXT;"
        };
        db.execute_batch(&format!(
            "BEGIN;
             {add_record}
             CREATE TABLE IF NOT EXISTS checks (
               rollout TEXT NOT NULL, n INTEGER NOT NULL, at_ms INTEGER NOT NULL, body TEXT NOT NULL,
               PRIMARY KEY (rollout, n));
             CREATE TABLE IF NOT EXISTS check_series (
               rollout TEXT PRIMARY KEY, next_n INTEGER NOT NULL, every INTEGER NOT NULL);
             PRAGMA user_version = 1;
             COMMIT;"
        ))?;
    }
    Ok(())
}

fn write_record(
    tx: &rusqlite::Transaction<'_>,
    rec: &Record,
    events: &[NewEvent],
    at_ms: u64,
) -> Result<(), StoreError> {
    let n = tx.execute(
        "UPDATE rollouts SET state = ?2, version = ?3, base = ?4, spec = ?5 WHERE name = ?1",
        params![
            rec.name,
            serde_json::to_string(&rec.state)?,
            rec.version as i64,
            serde_json::to_string(&rec.base)?,
            rec.spec_text
        ],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(rec.name.clone()));
    }
    for e in events {
        let record = e.record.as_ref().map(serde_json::to_string).transpose()?;
        tx.execute(
            "INSERT INTO events (rollout, at_ms, kind, detail, record) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![rec.name, at_ms as i64, e.kind, e.detail, record],
        )?;
    }
    Ok(())
}

/// One stored rollout; a column that is not what it should be is `Undecodable`, naming it.
fn row(r: &rusqlite::Row<'_>) -> Result<Record, StoreError> {
    let text = |i: usize, column: &str| -> Result<String, StoreError> {
        let bytes = r
            .get_ref(i)?
            .as_bytes()
            .map_err(|e| StoreError::Undecodable(format!("column {column}: {e}")))?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| StoreError::Undecodable(format!("column {column}: {e}")))
    };
    let json_of = |column: &str, t: &str| StoreError::Undecodable(format!("column {column}: {t}"));
    let (name, spec_text, state, base) = (
        text(0, "name")?,
        text(1, "spec")?,
        text(2, "state")?,
        text(4, "base")?,
    );
    let version: i64 = r.get(3)?;
    Ok(Record {
        name,
        spec_text,
        state: serde_json::from_str(&state).map_err(|e| json_of("state", &e.to_string()))?,
        version: version as u64,
        base: serde_json::from_str(&base).map_err(|e| json_of("base", &e.to_string()))?,
    })
}

/// The driver's errors, as the port carries them (it names no driver).
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// The port, over the methods above.
impl super::Store for Store {
    fn ping(&self) -> Result<(), StoreError> {
        Store::ping(self)
    }

    fn get(&self, name: &str) -> Result<Record, StoreError> {
        Store::get(self, name)
    }

    fn list(&self) -> Result<Vec<StoredRow>, StoreError> {
        Store::list(self)
    }

    fn insert_recorded(
        &mut self,
        rec: &Record,
        at_ms: u64,
        record: Option<&DecisionRecord>,
    ) -> Result<(), StoreError> {
        Store::insert_recorded(self, rec, at_ms, record)
    }

    fn update_if_recorded(
        &mut self,
        before: &Record,
        next: &Record,
        events: &[NewEvent],
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        Store::update_if_recorded(self, before, next, events, at_ms)
    }

    fn events(&self, rollout: &str) -> Result<Vec<Event>, StoreError> {
        Store::events(self, rollout)
    }

    fn reports(&self, rollout: &str) -> Result<Vec<Result<Report, StoreError>>, StoreError> {
        Store::reports(self, rollout)
    }

    fn put_reports(&mut self, reports: &[(&str, &Report)]) -> Result<usize, StoreError> {
        Store::put_reports(self, reports.iter().copied())
    }

    fn put_feedback(
        &mut self,
        rollout: &str,
        decision: &str,
        arm: &str,
        correct: Option<bool>,
        reward: Option<f64>,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        Store::put_feedback(self, rollout, decision, arm, correct, reward, at_ms)
    }

    fn feedback_totals(&self, rollout: &str) -> Result<Vec<ArmFeedback>, StoreError> {
        Store::feedback_totals(self, rollout)
    }

    fn put_checks(&mut self, rollout: &str, points: &[CheckPoint]) -> Result<(), StoreError> {
        Store::put_checks(self, rollout, points)
    }

    fn checks(&self, rollout: &str) -> Result<(Vec<CheckPoint>, SeriesKept), StoreError> {
        Store::checks(self, rollout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::State;
    use crate::registry::ReportBook;
    use crate::window::Totals;
    use std::collections::BTreeMap;

    fn temp_db(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("ramp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ramp.db");
        (dir, path)
    }

    fn record(name: &str) -> Record {
        Record {
            name: name.into(),
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
        }
    }

    fn report(instance: &str, seq: u64) -> Report {
        serde_json::from_value(serde_json::json!({"instance": instance, "seq": seq, "arms": {}}))
            .unwrap()
    }

    #[test]
    fn records_survive_reopening_and_reports_only_move_forward() {
        let (dir, path) = temp_db("store");
        let rec = record("r");
        {
            let mut s = Store::open(&path).unwrap();
            s.insert(&rec, 5).unwrap();
            assert!(matches!(s.insert(&rec, 6), Err(StoreError::Exists(_))));
            let mut next = rec.clone();
            next.state.stage = 1;
            next.version = 2;
            s.update(&next, Some(("advance", "to stage 2")), 7).unwrap();
            assert!(s.put_report("r", &report("a", 10)).unwrap());
            assert!(
                !s.put_report("r", &report("a", 9)).unwrap(),
                "older: ignored"
            );
        }
        let s = Store::open(&path).unwrap();
        let got = s.get("r").unwrap();
        assert_eq!((got.state.stage, got.version), (1, 2));
        assert_eq!(s.reports("r").unwrap()[0].as_ref().unwrap().seq, 10);
        assert_eq!(
            s.events("r")
                .unwrap()
                .iter()
                .map(|e| e.kind.as_str())
                .collect::<Vec<_>>(),
            vec!["applied", "advance"]
        );
        assert!(matches!(s.get("nope"), Err(StoreError::NotFound(_))));
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Issue "rampctl under fire", item 8: two `rampctl serve` on one database both ran check
    /// loops. The second open of a database now fails while the first store lives, and names the
    /// lock; once the first is gone the database opens again.
    #[test]
    fn a_second_writer_on_the_same_database_is_refused() {
        let (dir, path) = temp_db("lock");
        let first = Store::open(&path).unwrap();
        let second = Store::open(&path);
        match second {
            Err(e @ StoreError::Locked { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("ramp.db.lock") && msg.contains("another rampctl serve"),
                    "{msg}"
                );
            }
            other => panic!("expected Locked, got {:?}", other.map(|_| ())),
        }
        drop(first);
        assert!(Store::open(&path).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Issue "rampctl under fire", item 10 (integrity): a damaged file is named as damaged at
    /// start instead of answering 500 "invalid utf-8 sequence" later.
    #[test]
    fn a_damaged_database_is_refused_at_open_with_a_clear_message() {
        let (dir, path) = temp_db("damaged");
        {
            let mut s = Store::open(&path).unwrap();
            for i in 0..200 {
                s.insert(&record(&format!("r{i}")), 1).unwrap();
            }
            s.db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 8192);
        // Overwrite the second page (a b-tree page) with garbage, leaving the header intact.
        for b in &mut bytes[4096..8192] {
            *b = 0xA5;
        }
        std::fs::write(&path, bytes).unwrap();
        match Store::open(&path) {
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("damaged")
                        || msg.contains("malformed")
                        || msg.contains("not a database"),
                    "{msg}"
                );
            }
            Ok(_) => panic!("a damaged database opened"),
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Issue "rampctl under fire", item 5: one undecodable row made `list` fail and every rollout
    /// stop silently. Each row now has its own result.
    #[test]
    fn an_undecodable_row_is_reported_on_its_own() {
        let (dir, path) = temp_db("badrow");
        let mut s = Store::open(&path).unwrap();
        s.insert(&record("good"), 1).unwrap();
        s.insert(&record("bad"), 1).unwrap();
        s.db.execute(
            "UPDATE rollouts SET state = CAST(X'80FF' AS TEXT) WHERE name = 'bad'",
            [],
        )
        .unwrap();
        let rows = s.list().unwrap();
        assert_eq!(rows.len(), 2);
        let bad = rows.iter().find(|(n, _)| n == "bad").unwrap();
        assert!(
            matches!(&bad.1, Err(StoreError::Undecodable(m)) if m.contains("state")),
            "{:?}",
            bad.1
        );
        assert!(rows.iter().find(|(n, _)| n == "good").unwrap().1.is_ok());
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A database written before decision records (schema 0: events without `record`, no
    /// series tables) opens, keeps its rows, and takes records and checks from then on.
    #[test]
    fn a_database_from_before_decision_records_opens_and_is_upgraded() {
        let (dir, path) = temp_db("schema0");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE rollouts (
                   name TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL,
                   version INTEGER NOT NULL, base TEXT NOT NULL);
                 CREATE TABLE reports (
                   rollout TEXT NOT NULL, instance TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,
                   PRIMARY KEY (rollout, instance));
                 CREATE TABLE feedback (
                   rollout TEXT NOT NULL, decision TEXT NOT NULL, arm TEXT NOT NULL,
                   correct INTEGER, reward REAL, at_ms INTEGER NOT NULL,
                   PRIMARY KEY (rollout, decision));
                 CREATE TABLE events (
                   id INTEGER PRIMARY KEY AUTOINCREMENT, rollout TEXT NOT NULL, at_ms INTEGER NOT NULL,
                   kind TEXT NOT NULL, detail TEXT NOT NULL);
                 INSERT INTO rollouts VALUES ('r', 'x', '{\"stage\":0,\"phase\":\"progressing\",\"stage_started_ms\":5,\"failed_checks\":0,\"reason\":null}', 1, '{}');
                 INSERT INTO events (rollout, at_ms, kind, detail) VALUES ('r', 5, 'applied', 'stage 1 started');",
            )
            .unwrap();
        }
        for _ in 0..2 {
            // Twice: an upgraded database opens again as it is.
            let mut s = Store::open(&path).unwrap();
            let version: i64 =
                s.db.query_row("PRAGMA user_version", [], |r| r.get(0))
                    .unwrap();
            assert_eq!(version, SCHEMA_VERSION);
            assert_eq!(s.get("r").unwrap().version, 1);
            let events = s.events("r").unwrap();
            assert_eq!(
                (events[0].kind.as_str(), &events[0].record),
                ("applied", &None)
            );
            let rec = s.get("r").unwrap();
            let record = DecisionRecord {
                spec_revision: "abc".into(),
                spec: None,
                stage: 1,
                weights_before: BTreeMap::new(),
                weights_after: BTreeMap::new(),
                figures: Some(serde_json::json!({"checks": []})),
            };
            s.update_if_recorded(
                &rec,
                &rec,
                &[NewEvent::new("check_failed", "why", Some(record.clone()))],
                6,
            )
            .unwrap();
            let last = s.events("r").unwrap().pop().unwrap();
            let back: DecisionRecord =
                serde_json::from_str(last.record.as_deref().unwrap()).unwrap();
            assert_eq!(back, record);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The series keeps at most `SERIES_MAX` checks, spread over the whole rollout: at the
    /// limit every other one goes and only every second check is kept from then on.
    #[test]
    fn the_check_series_is_bounded_and_spans_the_rollout() {
        let (dir, path) = temp_db("series");
        let mut s = Store::open(&path).unwrap();
        let point = |at_ms: u64| CheckPoint {
            n: 0,
            at_ms,
            stage: 1,
            phase: crate::machine::Phase::Progressing,
            weights: BTreeMap::new(),
            arms: BTreeMap::new(),
            rules: Vec::new(),
            ab: Vec::new(),
            p_best: BTreeMap::new(),
            srm_p: None,
        };
        let (few, kept) = {
            s.put_checks("r", &[point(1), point(2), point(3)]).unwrap();
            s.checks("r").unwrap()
        };
        assert_eq!(few.iter().map(|p| p.n).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(
            kept,
            SeriesKept {
                checks: 3,
                every: 1
            }
        );
        // 10,000 checks in batches, as the flusher writes them.
        let all: Vec<CheckPoint> = (3..10_000).map(point).collect();
        for batch in all.chunks(37) {
            s.put_checks("r", batch).unwrap();
        }
        let (points, kept) = s.checks("r").unwrap();
        assert_eq!(kept.checks, 10_000);
        assert_eq!(kept.every, 8);
        assert!(
            (SERIES_MAX / 2..=SERIES_MAX).contains(&points.len()),
            "{}",
            points.len()
        );
        assert!(points.iter().all(|p| p.n % 8 == 0 && p.at_ms == p.n.max(1)));
        assert_eq!(points.first().map(|p| p.n), Some(0), "the start is kept");
        assert!(points.last().is_some_and(|p| p.n >= 9_992), "and the end");
        assert!(s.checks("other").unwrap().0.is_empty());
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_conditional_update_writes_nothing_when_the_rollout_changed_meanwhile() {
        let (dir, path) = temp_db("cas");
        let mut s = Store::open(&path).unwrap();
        let rec = record("r");
        s.insert(&rec, 1).unwrap();
        let mut by_operator = rec.clone();
        by_operator.state.phase = crate::machine::Phase::Paused;
        assert!(s
            .update_if(&rec, &by_operator, Some(("command", "pause")), 2)
            .unwrap());
        let mut by_check = rec.clone();
        by_check.state.stage = 1;
        assert!(
            !s.update_if(&rec, &by_check, None, 3).unwrap(),
            "based on the old state"
        );
        assert_eq!(
            s.get("r").unwrap().state.phase,
            crate::machine::Phase::Paused
        );
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The fleet counts kept up to date report by report (the server's `ReportBook`) equal the
    /// ones a restarted controller rebuilds from the tables; an older report and a repeated
    /// feedback change neither.
    #[test]
    fn fleet_counts_kept_in_memory_match_a_rebuild_from_the_tables() {
        let (dir, path) = temp_db("fleet");
        let report = |instance: &str, seq: u64, trials: u64| -> Report {
            serde_json::from_value(
                serde_json::json!({"instance": instance, "seq": seq, "arms": {"v2": {
                "requests": trials, "responses": {},
                "latency_ms": {"le": [], "counts": []},
                "bandit": {"trials": trials, "reward_micros": trials * 250_000}}}}),
            )
            .unwrap()
        };
        let arms = ["v1", "v2"];
        let mut live = ReportBook::default();
        {
            let mut s = Store::open(&path).unwrap();
            for (instance, seq, trials) in [("a", 1, 10), ("b", 1, 5), ("a", 2, 30), ("a", 1, 99)] {
                let r = report(instance, seq, trials);
                s.put_report("r", &r).unwrap();
                live.accept(r);
            }
            use ramp_protocol::decision::{format_decision, with_bucket};
            for (number, bucket, correct, reward) in [
                (1, 5, None, 1.0),
                (1, 5, None, 1.0),
                (2, 63, Some(true), 0.3333333),
                (3, 63, None, 0.5),
            ] {
                let decision = format_decision("v2", with_bucket(number, bucket));
                if s.put_feedback("r", &decision, "v2", correct, Some(reward), 1)
                    .unwrap()
                {
                    let micros = (reward * 1e6).round() as u64;
                    live.feedback_recorded("v2", bucket, correct, Some(micros));
                }
            }
            // Pre-period decisions (`.pre`): CUPED's covariate, apart from the arm's rewards.
            for (number, bucket, reward) in [(4, 7, 1.0), (4, 7, 1.0), (5, 7, 0.25), (6, 62, 0.5)] {
                let decision = format!(
                    "{}{}",
                    format_decision("v2", with_bucket(number, bucket)),
                    ramp_protocol::decision::PRE_PERIOD_SUFFIX
                );
                if s.put_feedback("r", &decision, "v2", Some(true), Some(reward), 1)
                    .unwrap()
                {
                    live.pre_feedback_recorded("v2", bucket, (reward * 1e6).round() as u64);
                }
            }
        }
        let s = Store::open(&path).unwrap();
        let mut rebuilt = ReportBook::default();
        for r in s.reports("r").unwrap() {
            rebuilt.accept(r.unwrap());
        }
        for f in s.feedback_totals("r").unwrap() {
            rebuilt.feedback.insert(f.arm.clone(), f);
        }
        assert_eq!(live.remote(None, &arms), rebuilt.remote(None, &arms));
        assert_eq!(
            live.remote(Some("a"), &arms),
            rebuilt.remote(Some("a"), &arms)
        );
        assert_eq!(
            live.remote(None, &arms)["v2"],
            crate::window::BanditCounts {
                trials: 35,
                reward_micros: 35 * 250_000 + 1_000_000 + 333_333 + 500_000
            }
        );
        // Rewards per analysis bucket (the decision id's top 6 bits), the same after a rebuild.
        let buckets = &rebuilt.feedback["v2"].bucket_reward_micros;
        assert_eq!((buckets[5], buckets[63]), (1_000_000, 833_333));
        assert_eq!(buckets, &live.feedback["v2"].bucket_reward_micros);
        let pre = &rebuilt.feedback["v2"].bucket_pre_reward_micros;
        assert_eq!((pre[7], pre[62], pre[5]), (1_250_000, 500_000, 0));
        assert_eq!(pre, &live.feedback["v2"].bucket_pre_reward_micros);
        assert_eq!(
            (
                rebuilt.feedback["v2"].labelled,
                rebuilt.feedback["v2"].rewarded
            ),
            (live.feedback["v2"].labelled, 3),
            "pre-period feedback is no reward of the arm"
        );
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
