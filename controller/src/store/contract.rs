//! The port's contract, run against both adapters: the same calls give the same answers on
//! SQLite and on a real PostgreSQL (`ramp_tests::postgres`, started by the test), and on
//! PostgreSQL the guarantees replicas rely on hold between several connections (stores) at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use super::{postgres, sqlite, NewEvent, Store, StoreError};
use crate::machine::{Phase, State};
use crate::record::Record;
use crate::report::{CheckPoint, DecisionRecord};
use crate::window::{Report, Totals};
use ramp_protocol::decision::{format_decision, with_bucket, PRE_PERIOD_SUFFIX};
use ramp_tests::postgres::Postgres;

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

fn report(instance: &str, seq: u64, trials: u64) -> Report {
    serde_json::from_value(
        serde_json::json!({"instance": instance, "seq": seq, "arms": {"b": {
        "requests": trials, "responses": {},
        "latency_ms": {"le": [], "counts": []},
        "bandit": {"trials": trials, "reward_micros": trials * 250_000}}}}),
    )
    .unwrap()
}

fn point(at_ms: u64) -> CheckPoint {
    CheckPoint {
        n: 0,
        at_ms,
        stage: 1,
        phase: Phase::Progressing,
        weights: BTreeMap::new(),
        arms: BTreeMap::new(),
        rules: Vec::new(),
        ab: Vec::new(),
        p_best: BTreeMap::new(),
        srm_p: None,
    }
}

/// Everything a store answers, as text, after the same script of calls.
fn script(s: &mut dyn Store) -> Vec<String> {
    let mut seen = Vec::new();
    let rec = record("r");
    let decided = DecisionRecord {
        spec_revision: "abc".into(),
        spec: None,
        stage: 1,
        weights_before: BTreeMap::new(),
        weights_after: BTreeMap::new(),
        figures: Some(serde_json::json!({"checks": [1, 2]})),
    };
    s.insert_recorded(&rec, 5, Some(&decided)).unwrap();
    s.insert_recorded(&record("other"), 6, None).unwrap();
    seen.push(format!(
        "{:?}",
        s.insert_recorded(&rec, 7, None).map_err(|e| e.to_string())
    ));
    let mut paused = rec.clone();
    paused.state.phase = Phase::Paused;
    paused.version = 2;
    let ev = [NewEvent::new("command", "pause", Some(decided.clone()))];
    seen.push(format!("{:?}", s.update_if_recorded(&rec, &paused, &ev, 8)));
    let mut stale = rec.clone();
    stale.state.stage = 1;
    seen.push(format!("{:?}", s.update_if_recorded(&rec, &stale, &[], 9)));
    seen.push(format!(
        "{:?}",
        s.update_if_recorded(&record("none"), &stale, &[], 9)
            .map_err(|e| e.to_string())
    ));
    for (_, row) in s.list().unwrap() {
        let r = row.unwrap();
        seen.push(format!(
            "{} {:?} {} {:?}",
            r.name, r.state, r.version, r.base
        ));
    }
    for e in s.events("r").unwrap() {
        seen.push(format!("{e:?}"));
    }
    let (a9, a10, b1, a2) = (
        report("a", 9, 1),
        report("a", 10, 2),
        report("b", 1, 3),
        report("a", 2, 99),
    );
    seen.push(format!("{:?}", s.put_reports(&[("r", &a9), ("r", &b1)])));
    seen.push(format!("{:?}", s.put_reports(&[("r", &a10), ("r", &a2)])));
    let mut reports: Vec<(String, u64)> = s
        .reports("r")
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .map(|r| (r.instance.clone(), r.seq))
        .collect();
    reports.sort();
    seen.push(format!("{reports:?}"));
    for (number, bucket, correct, reward, pre) in [
        (1, 5, None, Some(1.0), false),
        (1, 5, Some(false), Some(2.0), false),
        (2, 63, Some(true), Some(0.3333333), false),
        (3, 63, Some(false), None, false),
        (4, 7, Some(true), Some(1.0), true),
        (5, 62, None, Some(0.25), true),
    ] {
        let mut decision = format_decision("b", with_bucket(number, bucket));
        if pre {
            decision.push_str(PRE_PERIOD_SUFFIX);
        }
        seen.push(format!(
            "{:?}",
            s.put_feedback("r", &decision, "b", correct, reward, 10)
        ));
    }
    seen.push(format!("{:?}", s.feedback_totals("r")));
    let points: Vec<CheckPoint> = (0..2_500).map(point).collect();
    for batch in points.chunks(300) {
        s.put_checks("r", batch).unwrap();
    }
    let (kept, series) = s.checks("r").unwrap();
    seen.push(format!(
        "{} {:?} {:?}",
        kept.len(),
        kept.first().map(|p| p.n),
        series
    ));
    seen.push(format!("{:?}", s.ping()));
    seen
}

#[test]
fn both_adapters_answer_the_same_script_alike() {
    let dir = tempfile::tempdir().unwrap();
    let mut lite = sqlite::Store::open(&dir.path().join("ramp.db")).unwrap();
    let pg = Postgres::start().unwrap();
    let mut post = postgres::Store::open(&pg.url()).unwrap();
    let (a, b) = (script(&mut lite), script(&mut post));
    assert!(a.len() > 15, "{}", a.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y);
    }
    assert_eq!(a.len(), b.len());
    // Figures for the other replicas: kept by PostgreSQL, the last one written.
    assert_eq!(post.figures("r").unwrap(), None);
    post.put_figures("r", "{\"a\":1}").unwrap();
    post.put_figures("r", "{\"a\":2}").unwrap();
    assert_eq!(post.figures("r").unwrap().as_deref(), Some("{\"a\":2}"));
    assert_eq!(lite.figures("r").unwrap(), None);
    // Opening again (a second replica starting) keeps everything.
    let again = postgres::Store::open(&pg.url()).unwrap();
    assert_eq!(again.list().unwrap().len(), 2);
}

/// Replicas deciding on the same record at once: one transition commits, the others are told
/// false, and the history holds it once.
#[test]
fn on_postgres_a_transition_commits_once_among_racing_replicas() {
    let pg = Postgres::start().unwrap();
    let url = pg.url();
    postgres::Store::open(&url)
        .unwrap()
        .insert_recorded(&record("r"), 1, None)
        .unwrap();
    const REPLICAS: usize = 6;
    let barrier = Arc::new(Barrier::new(REPLICAS));
    let wins: usize = (0..REPLICAS)
        .map(|i| {
            let (url, barrier) = (url.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut s = postgres::Store::open(&url).unwrap();
                let before = record("r");
                let mut next = before.clone();
                next.state.stage = 1;
                next.version = 2;
                let ev = [NewEvent::new("advance", &format!("by {i}"), None)];
                barrier.wait();
                usize::from(s.update_if_recorded(&before, &next, &ev, 2).unwrap())
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .sum();
    assert_eq!(wins, 1);
    let s = postgres::Store::open(&url).unwrap();
    let kinds: Vec<String> = s.events("r").unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["applied", "advance"]);
}

/// Reports of one Envoy taken by different replicas, in any order: the newest `seq` is kept.
/// Feedback for one decision posted to several replicas counts once.
#[test]
fn on_postgres_reports_and_feedback_are_kept_once_whichever_replica_took_them() {
    let pg = Postgres::start().unwrap();
    let url = pg.url();
    let mut first = postgres::Store::open(&url).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|replica| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut s = postgres::Store::open(&url).unwrap();
                let mut took = 0;
                for seq in (0..200u64).filter(|seq| seq % 4 == replica).rev() {
                    let r = report("envoy-1", seq, seq);
                    took += s.put_reports(&[("r", &r)]).unwrap();
                    let decision = format_decision("b", with_bucket(seq % 50, 3));
                    s.put_feedback("r", &decision, "b", Some(true), Some(0.5), 1)
                        .unwrap();
                }
                took
            })
        })
        .collect();
    let took: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!((1..=200).contains(&took), "{took}");
    let reports = first.reports("r").unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].as_ref().unwrap().seq, 199);
    let totals = first.feedback_totals("r").unwrap();
    assert_eq!(
        (totals[0].labelled, totals[0].reward_micros),
        (50, 25_000_000)
    );
    assert!(!first
        .put_feedback(
            "r",
            &format_decision("b", with_bucket(1, 3)),
            "b",
            None,
            None,
            2
        )
        .unwrap());
    assert!(matches!(
        first.insert_recorded(&record("r"), 1, None),
        Ok(())
    ));
    assert!(matches!(
        first.insert_recorded(&record("r"), 1, None),
        Err(StoreError::Exists(_))
    ));
}
