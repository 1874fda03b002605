//! The store port's PostgreSQL adapter (`super::Store`), for replicas: several `rampctl serve` on
//! one database. The tables and their meaning are the SQLite adapter's; what differs is that
//! other writers exist. A transition commits only if the row is still what the writer read
//! (`SELECT ... FOR UPDATE`, then compare-and-set on state and version), reports are kept
//! newest-per-instance by an upsert `WHERE excluded.seq > reports.seq`, feedback is keyed by its
//! decision id, and every committed change of a rollout sends `NOTIFY` on `CHANNEL` with its name,
//! so the other replicas reload it (`super::super::replicas`).

use std::cell::{RefCell, RefMut};

use ::postgres::fallible_iterator::FallibleIterator;
use ::postgres::{Client, NoTls, Transaction};

use super::{ArmFeedback, Event, NewEvent, Record, StoreError, StoredRow};
use crate::report::{CheckPoint, DecisionRecord, SeriesKept, SERIES_MAX};
use crate::window::Report;

/// The channel a committed change of a rollout is announced on; the payload is its name.
pub const CHANNEL: &str = "ramp_rollouts";

/// Held (transaction-scoped) while a replica creates the schema, so two starting at once do not
/// race on `CREATE TABLE IF NOT EXISTS`.
const SCHEMA_LOCK: i64 = 0x5241_4d50_0000_0001;

pub struct Store {
    /// The connection (a `RefCell`: the port's reads take `&self`, the driver wants `&mut`),
    /// made again from `url` when it was lost (the database restarted).
    db: RefCell<Client>,
    url: String,
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS rollouts (
      name TEXT PRIMARY KEY, spec TEXT NOT NULL, state TEXT NOT NULL,
      version BIGINT NOT NULL, base TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS reports (
      rollout TEXT NOT NULL, instance TEXT NOT NULL, seq BIGINT NOT NULL, body TEXT NOT NULL,
      PRIMARY KEY (rollout, instance));
    CREATE TABLE IF NOT EXISTS feedback (
      rollout TEXT NOT NULL, decision TEXT NOT NULL, arm TEXT NOT NULL,
      correct BOOLEAN, reward DOUBLE PRECISION, at_ms BIGINT NOT NULL,
      PRIMARY KEY (rollout, decision));
    CREATE TABLE IF NOT EXISTS events (
      id BIGSERIAL PRIMARY KEY, rollout TEXT NOT NULL, at_ms BIGINT NOT NULL,
      kind TEXT NOT NULL, detail TEXT NOT NULL, record TEXT);
    CREATE INDEX IF NOT EXISTS events_rollout ON events (rollout, id);
    CREATE TABLE IF NOT EXISTS checks (
      rollout TEXT NOT NULL, n BIGINT NOT NULL, at_ms BIGINT NOT NULL, body TEXT NOT NULL,
      PRIMARY KEY (rollout, n));
    CREATE TABLE IF NOT EXISTS check_series (
      rollout TEXT PRIMARY KEY, next_n BIGINT NOT NULL, every BIGINT NOT NULL);
    CREATE TABLE IF NOT EXISTS figures (rollout TEXT PRIMARY KEY, body TEXT NOT NULL);";

impl Store {
    /// Connects to `url` (`postgres://user:password@host:port/db`) and creates the tables if
    /// they are missing.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let mut db = connect(url)?;
        let mut tx = db.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
        tx.batch_execute(SCHEMA)?;
        tx.commit()?;
        Ok(Self {
            db: RefCell::new(db),
            url: url.to_owned(),
        })
    }

    /// The connection, connected again first if it was closed.
    fn client(&self) -> Result<RefMut<'_, Client>, StoreError> {
        let mut db = self.db.borrow_mut();
        if db.is_closed() {
            *db = connect(&self.url)?;
        }
        Ok(db)
    }

    pub fn insert_recorded(
        &mut self,
        rec: &Record,
        at_ms: u64,
        record: Option<&DecisionRecord>,
    ) -> Result<(), StoreError> {
        let record = record.map(serde_json::to_string).transpose()?;
        let mut db = self.client()?;
        let mut tx = db.transaction()?;
        let n = tx.execute(
            "INSERT INTO rollouts (name, spec, state, version, base) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO NOTHING",
            &[
                &rec.name,
                &rec.spec_text,
                &serde_json::to_string(&rec.state)?,
                &(rec.version as i64),
                &serde_json::to_string(&rec.base)?,
            ],
        )?;
        if n == 0 {
            return Err(StoreError::Exists(rec.name.clone()));
        }
        tx.execute(
            "INSERT INTO events (rollout, at_ms, kind, detail, record) VALUES ($1, $2, 'applied', 'stage 1 started', $3)",
            &[&rec.name, &(at_ms as i64), &record],
        )?;
        notify(&mut tx, &rec.name)?;
        tx.commit()?;
        Ok(())
    }

    /// One rollout as stored.
    pub fn get(&self, name: &str) -> Result<Record, StoreError> {
        let row = self.client()?.query_opt(
            "SELECT name, spec, state, version, base FROM rollouts WHERE name = $1",
            &[&name],
        )?;
        match row {
            Some(r) => decode(&r),
            None => Err(StoreError::NotFound(name.to_owned())),
        }
    }

    pub fn list(&self) -> Result<Vec<StoredRow>, StoreError> {
        let rows = self.client()?.query(
            "SELECT name, spec, state, version, base FROM rollouts ORDER BY name",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), decode(r)))
            .collect())
    }

    /// Writes `next` and `events` only if the stored rollout is still `expected` (same state and
    /// version), with the row locked from the read to the commit: of two replicas deciding on the
    /// same record, one commits and the other is told false.
    pub fn update_if_recorded(
        &mut self,
        expected: &Record,
        next: &Record,
        events: &[NewEvent],
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut db = self.client()?;
        let mut tx = db.transaction()?;
        let current = tx.query_opt(
            "SELECT state, version FROM rollouts WHERE name = $1 FOR UPDATE",
            &[&expected.name],
        )?;
        let Some(current) = current else {
            return Err(StoreError::NotFound(expected.name.clone()));
        };
        let stored: crate::machine::State = serde_json::from_str(current.get::<_, &str>(0))?;
        if stored != expected.state || current.get::<_, i64>(1) as u64 != expected.version {
            return Ok(false);
        }
        let n = tx.execute(
            "UPDATE rollouts SET state = $2, version = $3, base = $4, spec = $5 WHERE name = $1",
            &[
                &next.name,
                &serde_json::to_string(&next.state)?,
                &(next.version as i64),
                &serde_json::to_string(&next.base)?,
                &next.spec_text,
            ],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(next.name.clone()));
        }
        for e in events {
            let record = e.record.as_ref().map(serde_json::to_string).transpose()?;
            tx.execute(
                "INSERT INTO events (rollout, at_ms, kind, detail, record) VALUES ($1, $2, $3, $4, $5)",
                &[&next.name, &(at_ms as i64), &e.kind, &e.detail, &record],
            )?;
        }
        notify(&mut tx, &next.name)?;
        tx.commit()?;
        Ok(true)
    }

    pub fn events(&self, rollout: &str) -> Result<Vec<Event>, StoreError> {
        let rows = self.client()?.query(
            "SELECT at_ms, kind, detail, record FROM events WHERE rollout = $1 ORDER BY id",
            &[&rollout],
        )?;
        Ok(rows
            .iter()
            .map(|r| Event {
                at_ms: r.get::<_, i64>(0) as u64,
                kind: r.get(1),
                detail: r.get(2),
                record: r.get(3),
            })
            .collect())
    }

    pub fn reports(&self, rollout: &str) -> Result<Vec<Result<Report, StoreError>>, StoreError> {
        let rows = self
            .client()?
            .query("SELECT body FROM reports WHERE rollout = $1", &[&rollout])?;
        Ok(rows
            .iter()
            .map(|r| Ok(serde_json::from_str(r.get::<_, &str>(0))?))
            .collect())
    }

    /// Keeps each report that is newer (by `seq`) than what any replica stored for its instance,
    /// in one transaction; how many were kept.
    pub fn put_reports(&mut self, reports: &[(&str, &Report)]) -> Result<usize, StoreError> {
        let mut db = self.client()?;
        let mut tx = db.transaction()?;
        let stmt = tx.prepare(
            "INSERT INTO reports (rollout, instance, seq, body) VALUES ($1, $2, $3, $4)
             ON CONFLICT (rollout, instance) DO UPDATE SET seq = excluded.seq, body = excluded.body
             WHERE excluded.seq > reports.seq",
        )?;
        let mut kept = 0;
        for (rollout, report) in reports {
            let seq = i64::try_from(report.seq).unwrap_or(i64::MAX);
            let body = serde_json::to_string(report)?;
            kept += tx.execute(&stmt, &[rollout, &report.instance, &seq, &body])? as usize;
        }
        tx.commit()?;
        Ok(kept)
    }

    pub fn put_feedback(
        &mut self,
        rollout: &str,
        decision: &str,
        arm: &str,
        correct: Option<bool>,
        reward: Option<f64>,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        let n = self.client()?.execute(
            "INSERT INTO feedback (rollout, decision, arm, correct, reward, at_ms) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (rollout, decision) DO NOTHING",
            &[&rollout, &decision, &arm, &correct, &reward, &(at_ms as i64)],
        )?;
        Ok(n > 0)
    }

    /// Per arm, all feedback so far, summed as the SQLite adapter sums it (rewards in
    /// millionths, per analysis bucket: the decision number's top 6 bits).
    pub fn feedback_totals(&self, rollout: &str) -> Result<Vec<ArmFeedback>, StoreError> {
        let rows = self.client()?.query(
            "SELECT arm, COUNT(correct), COALESCE(SUM(correct::int), 0)::bigint, COUNT(reward),
                    COALESCE(SUM(ROUND(reward * 1000000)::bigint), 0)::bigint
             FROM feedback WHERE rollout = $1 AND decision NOT LIKE '%.pre' GROUP BY arm ORDER BY arm",
            &[&rollout],
        )?;
        let mut out: Vec<ArmFeedback> = rows
            .iter()
            .map(|r| ArmFeedback {
                arm: r.get(0),
                labelled: r.get::<_, i64>(1) as u64,
                correct: r.get::<_, i64>(2) as u64,
                rewarded: r.get::<_, i64>(3) as u64,
                reward_micros: r.get::<_, i64>(4) as u64,
                ..ArmFeedback::new("")
            })
            .collect();
        // The two hex digits the bucket is read from: 16 characters from the end (20 before a
        // pre-period id's `.pre`).
        let rows = self.client()?.query(
            "SELECT arm, pre, substr(decision, length(decision) - 15 - 4 * pre::int, 2) AS hex,
                    SUM(ROUND(reward * 1000000)::bigint)::bigint
             FROM (SELECT arm, decision, reward, decision LIKE '%.pre' AS pre FROM feedback
                   WHERE rollout = $1 AND reward IS NOT NULL) AS f
             GROUP BY arm, pre, hex",
            &[&rollout],
        )?;
        for r in &rows {
            let (arm, pre, hex, micros): (String, bool, String, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let digit = |i: usize| -> i64 {
                hex.as_bytes()
                    .get(i)
                    .and_then(|c| "0123456789abcdef".bytes().position(|d| d == *c))
                    .map_or(-1, |d| d as i64)
            };
            let Ok(bucket) = usize::try_from(digit(0) * 4 + digit(1) / 4) else {
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

    pub fn ping(&self) -> Result<(), StoreError> {
        self.client()?.simple_query("SELECT 1")?;
        Ok(())
    }

    /// Adds checks to a rollout's series as the SQLite adapter does (at most `SERIES_MAX`, spread
    /// over the rollout), with the series row locked for the transaction.
    pub fn put_checks(&mut self, rollout: &str, points: &[CheckPoint]) -> Result<(), StoreError> {
        let mut db = self.client()?;
        let mut tx = db.transaction()?;
        tx.execute(
            "INSERT INTO check_series (rollout, next_n, every) VALUES ($1, 0, 1) ON CONFLICT (rollout) DO NOTHING",
            &[&rollout],
        )?;
        let row = tx.query_one(
            "SELECT next_n, every FROM check_series WHERE rollout = $1 FOR UPDATE",
            &[&rollout],
        )?;
        let (mut next, mut every): (i64, i64) = (row.get(0), row.get(1));
        let mut kept: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM checks WHERE rollout = $1",
                &[&rollout],
            )?
            .get(0);
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
                "INSERT INTO checks (rollout, n, at_ms, body) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (rollout, n) DO UPDATE SET at_ms = excluded.at_ms, body = excluded.body",
                &[&rollout, &n, &(p.at_ms as i64), &body],
            )?;
            kept += 1;
            if kept >= SERIES_MAX as i64 {
                every = every.saturating_mul(2);
                let dropped = tx.execute(
                    "DELETE FROM checks WHERE rollout = $1 AND n % $2 != 0",
                    &[&rollout, &every],
                )?;
                kept -= dropped as i64;
            }
        }
        tx.execute(
            "UPDATE check_series SET next_n = $2, every = $3 WHERE rollout = $1",
            &[&rollout, &next, &every],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn checks(&self, rollout: &str) -> Result<(Vec<CheckPoint>, SeriesKept), StoreError> {
        let kept = self
            .client()?
            .query_opt(
                "SELECT next_n, every FROM check_series WHERE rollout = $1",
                &[&rollout],
            )?
            .map(|r| SeriesKept {
                checks: r.get::<_, i64>(0) as u64,
                every: r.get::<_, i64>(1) as u64,
            })
            .unwrap_or_default();
        let rows = self.client()?.query(
            "SELECT body FROM checks WHERE rollout = $1 ORDER BY n",
            &[&rollout],
        )?;
        let points = rows
            .iter()
            .filter_map(|r| serde_json::from_str(r.get::<_, &str>(0)).ok())
            .collect();
        Ok((points, kept))
    }
}

/// How long a holder that cannot be reached (its host or network gone, not just its process)
/// keeps its leases: the lease connection asks the server to end the session after this long
/// without an answer (`tcp_user_timeout`, and keepalives that give up as soon). A process that
/// dies outright loses its leases at once: its kernel closes the connection.
pub const LEASE_PERIOD_S: u32 = 15;

/// Advisory locks' first key: Ramp's (the second is the rollout name's hash). Two names with
/// the same hash share a holder, which is harmless.
const LEASE_CLASS: i32 = 0x5241_4d50;

/// The leases of one replica: a session-level advisory lock per rollout it reconciles, all on
/// one dedicated connection, so they end with the session: when the process dies, or when the
/// server stops hearing from it for `LEASE_PERIOD_S`.
pub struct Leases {
    url: String,
    session: std::sync::Mutex<Session>,
}

#[derive(Default)]
struct Session {
    client: Option<Client>,
    held: std::collections::BTreeSet<String>,
}

impl Leases {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            session: std::sync::Mutex::default(),
        }
    }
}

impl super::Leases for Leases {
    fn hold(&self, rollout: &str) -> Result<bool, StoreError> {
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let Session { client, held } = &mut *session;
        let c = match client {
            Some(c) if !c.is_closed() => c,
            _ => {
                // A new session holds nothing, whatever the lost one did.
                held.clear();
                let mut c = connect(&self.url)?;
                let ms = LEASE_PERIOD_S * 1000;
                let probe = LEASE_PERIOD_S / 5;
                c.batch_execute(&format!(
                    "SET application_name = 'rampctl-leases';
                     SET tcp_user_timeout = {ms};
                     SET tcp_keepalives_idle = {probe};
                     SET tcp_keepalives_interval = {probe};
                     SET tcp_keepalives_count = 4;"
                ))?;
                client.insert(c)
            }
        };
        let answer = if held.contains(rollout) {
            // Held as long as the session lives: ask it.
            c.simple_query("SELECT 1").map(|_| true)
        } else {
            c.query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&LEASE_CLASS, &rollout],
            )
            .map(|r| r.get::<_, bool>(0))
        };
        match answer {
            Ok(true) => {
                held.insert(rollout.to_owned());
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => {
                // The session (and with it every lease) may be gone: start a new one next time.
                *client = None;
                held.clear();
                Err(e.into())
            }
        }
    }
}

/// Listens for committed changes (`CHANNEL`) until `changed` returns false, on a connection of
/// its own, made again when it is lost. `changed` gets `Some(rollout)` for each change and
/// `None` once (re)connected, when changes may have been missed. Blocking: run it on a thread
/// of its own.
pub fn listen(url: &str, mut changed: impl FnMut(Option<&str>) -> bool) {
    loop {
        let session = connect(url).and_then(|mut c| {
            c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
            Ok(c)
        });
        match session {
            Ok(mut c) => {
                if !changed(None) {
                    return;
                }
                let mut notes = c.notifications();
                let mut iter = notes.blocking_iter();
                loop {
                    match iter.next() {
                        Ok(Some(note)) => {
                            if !changed(Some(note.payload())) {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            eprintln!("rampctl: store notifications: {e}; listening again");
                            break;
                        }
                    }
                }
            }
            Err(e) => eprintln!("rampctl: store notifications: {e}; trying again in 1 s"),
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// A connection, without TLS (a sidecar or a private network carries it; `sslmode=require` is
/// refused by the driver rather than silently ignored).
pub fn connect(url: &str) -> Result<Client, StoreError> {
    Ok(Client::connect(url, NoTls)?)
}

/// Announces a change of `rollout` when `tx` commits (PostgreSQL delivers it then, or never).
fn notify(tx: &mut Transaction<'_>, rollout: &str) -> Result<(), StoreError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &rollout])?;
    Ok(())
}

/// One stored rollout; a column that cannot be decoded is `Undecodable`, naming it.
fn decode(r: &::postgres::Row) -> Result<Record, StoreError> {
    let json_of = |column: &str, t: &str| StoreError::Undecodable(format!("column {column}: {t}"));
    let (state, base): (&str, &str) = (r.get(2), r.get(4));
    Ok(Record {
        name: r.get(0),
        spec_text: r.get(1),
        state: serde_json::from_str(state).map_err(|e| json_of("state", &e.to_string()))?,
        version: r.get::<_, i64>(3) as u64,
        base: serde_json::from_str(base).map_err(|e| json_of("base", &e.to_string()))?,
    })
}

/// The driver's errors, as the port carries them (it names no driver).
impl From<::postgres::Error> for StoreError {
    fn from(e: ::postgres::Error) -> Self {
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
        Store::put_reports(self, reports)
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

    fn put_figures(&mut self, rollout: &str, figures: &str) -> Result<(), StoreError> {
        self.client()?.execute(
            "INSERT INTO figures (rollout, body) VALUES ($1, $2)
             ON CONFLICT (rollout) DO UPDATE SET body = excluded.body",
            &[&rollout, &figures],
        )?;
        Ok(())
    }

    fn figures(&self, rollout: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .client()?
            .query_opt("SELECT body FROM figures WHERE rollout = $1", &[&rollout])?
            .map(|r| r.get(0)))
    }
}
