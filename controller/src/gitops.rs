//! `rampctl serve --specs DIR`: the rollouts as files (a ConfigMap or a git-synced volume),
//! reconciled every few seconds. A new file starts a rollout; an edited one changes the running
//! rollout from its next check (a new baseline, candidate set or strategy starts a new revision at
//! stage 1 instead); a removed one leaves its rollout as it is (abort it with `rampctl abort`),
//! which is Argo CD's default too: deleting a file must not stop a rollout by accident. Invalid
//! files change nothing and are reported (`GET /v1/specs`, the log, and the managed rollout's
//! status). The decisions here are pure; the scan is a plain read, and the writes are the
//! watcher's (through the service).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::machine::{Phase, State};
use crate::spec::{Spec, MAX_SPEC_BYTES};

/// One file of the directory, read and parsed.
pub struct SpecFile {
    pub file: String,
    pub parsed: Result<(String, Spec), String>,
}

/// Reads every `*.yaml`, `*.yml` and `*.json` in `dir` (not hidden ones: a ConfigMap volume's
/// `..data` links), sorted by name. The directory is input from whoever can commit to it, so a
/// file is read only when it is a regular file inside the directory (a ConfigMap's links into
/// `..data/` are; a link to `/etc/passwd` or a mounted token is not), opened without blocking (a
/// FIFO cannot hang the scan) and read up to the spec size limit; and an error never quotes what
/// the file holds. Blocking: run it on a blocking thread.
pub fn scan(dir: &Path) -> Result<Vec<SpecFile>, String> {
    let root = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let entries = std::fs::read_dir(&root).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            !n.starts_with('.')
                && [".yaml", ".yml", ".json"]
                    .iter()
                    .any(|ext| n.ends_with(ext))
        })
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|file| {
            let parsed = read_spec(&root, &root.join(&file));
            SpecFile { file, parsed }
        })
        .collect())
}

fn read_spec(root: &Path, path: &Path) -> Result<(String, Spec), String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let real = std::fs::canonicalize(path).map_err(|e| format!("cannot read: {e}"))?;
    if !real.starts_with(root) {
        return Err("a link to a file outside the specs directory: not read".to_owned());
    }
    let regular = |m: std::io::Result<std::fs::Metadata>| m.is_ok_and(|m| m.is_file());
    if !regular(std::fs::metadata(&real)) {
        return Err(
            "not a regular file (a directory, FIFO, socket or device): not read".to_owned(),
        );
    }
    // Non-blocking, and checked again once open: a FIFO swapped in after the check above must
    // not hang the scan.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&real)
        .map_err(|e| format!("cannot read: {e}"))?;
    if !regular(file.metadata()) {
        return Err(
            "not a regular file (a directory, FIFO, socket or device): not read".to_owned(),
        );
    }
    let mut bytes = Vec::new();
    file.take(MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
    let spec = Spec::parse(&text).map_err(|e| without_content(&e.to_string()))?;
    Ok((text, spec))
}

/// A parse error with every quoted piece of the file (serde quotes the values it refused) and
/// every URL's secrets taken out: the field and the reason stay.
pub fn without_content(error: &str) -> String {
    let mut out = String::with_capacity(error.len());
    let mut quoted = false;
    for c in error.chars() {
        match (c, quoted) {
            ('"', false) => {
                quoted = true;
                out.push_str("\"…");
            }
            ('"', true) => {
                quoted = false;
                out.push('"');
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    if quoted {
        out.push('"');
    }
    crate::redact::redact_text(&out)
}

/// What a valid file asks of its rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// No rollout of this name: start one.
    Create,
    /// The same text as the rollout's: nothing to do.
    Unchanged,
    /// Stages, rules, hooks, timing: the running rollout takes them from its next check, in the
    /// stage it is in.
    Edit,
    /// Another baseline, candidate set or strategy: a new revision starts at stage 1.
    NewRevision,
}

/// How a file's spec relates to the rollout of its name (`None`: no such rollout).
pub fn classify(current: Option<(&str, &Spec)>, text: &str, spec: &Spec) -> Change {
    match current {
        None => Change::Create,
        Some((old_text, _)) if old_text == text => Change::Unchanged,
        Some((_, old))
            if old.baseline != spec.baseline
                || old.candidates != spec.candidates
                || old.strategy != spec.strategy =>
        {
            Change::NewRevision
        }
        Some(_) => Change::Edit,
    }
}

/// The files of one scan, with the rollout each valid one manages: a rollout a file managed
/// (`managed`: rollout -> file) stays that file's while the file exists, valid or not, so a typo
/// never hands it to another file; otherwise the first file (by name) to define a rollout owns
/// it. A file naming a rollout another owns is an error.
pub fn owners(
    files: &[SpecFile],
    managed: &BTreeMap<String, String>,
) -> (BTreeMap<String, usize>, BTreeMap<usize, String>) {
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors: BTreeMap<usize, String> = BTreeMap::new();
    for (rollout, file) in managed {
        if let Some(i) = files.iter().position(|f| &f.file == file) {
            // A file now naming another rollout gives up the old one.
            let renamed = matches!(&files[i].parsed, Ok((_, spec)) if &spec.name != rollout);
            if !renamed {
                owner.insert(rollout.clone(), i);
            }
        }
    }
    for (i, f) in files.iter().enumerate() {
        if let Ok((_, spec)) = &f.parsed {
            if let Some(&first) = owner.get(&spec.name).filter(|&&o| o != i) {
                errors.insert(
                    i,
                    format!(
                        "rollout {:?} is already defined in {}{}",
                        spec.name,
                        files[first].file,
                        if files[first].parsed.is_err() {
                            " (which has an error to fix; it keeps the rollout while it exists)"
                        } else {
                            ""
                        }
                    ),
                );
                continue;
            }
        }
        match &f.parsed {
            Err(e) => {
                errors.insert(i, e.clone());
            }
            Ok((_, spec)) => {
                owner.insert(spec.name.clone(), i);
            }
        }
    }
    (owner, errors)
}

/// Where an edited spec puts a running rollout: the weight in force is kept, not the stage
/// index, so an edit never raises the candidate's share by itself (removing a stage already
/// passed must not jump to the next one, past its hooks or a manual gate). The stage is the
/// last one whose weight is at most the weight in force; when every stage is above it, the
/// first stage held at the weight in force (`override_weight`) until its check passes, which
/// raises it through the same path as any step (`machine::step`, its hooks and gates).
pub fn state_after_edit(state: &State, old: &Spec, new: &Spec) -> State {
    let mut next = state.clone();
    let last = new.stages.len().saturating_sub(1);
    if !matches!(state.phase, Phase::Progressing | Phase::Paused) {
        next.stage = state.stage.min(last);
        return next;
    }
    let (_, in_force) = state.weights(old);
    // Once an A/B test's experiment has begun, an edit never sends it back to its 0%
    // pre-period: its users have seen the candidate.
    let past_pre_period = old
        .ab_test
        .as_ref()
        .is_some_and(|ab| ab.experiment_stage > 0 && state.stage >= ab.experiment_stage);
    let floor = match &new.ab_test {
        Some(ab) if past_pre_period => ab.experiment_stage.min(last),
        _ => 0,
    };
    match new.stages[floor..]
        .iter()
        .rposition(|s| s.weight <= in_force)
        .map(|i| i + floor)
    {
        Some(i) => {
            next.stage = i;
            // An operator's held weight stays held (it is above or at the stage's).
            if next
                .override_weight
                .is_some_and(|w| w == new.stages[i].weight)
            {
                next.override_weight = None;
            }
        }
        None => {
            next.stage = floor;
            next.override_weight = Some(in_force);
        }
    }
    next
}

/// One file as the last scan found it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FileSeen {
    pub file: String,
    /// The rollout it defines (when it parses).
    pub rollout: Option<String>,
    /// What the scan did: `created`, `unchanged`, `edited`, `new_revision`; `None` on an error.
    pub change: Option<Change>,
    pub error: Option<String>,
}

/// What `GET /v1/specs` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpecsSeen {
    pub dir: Option<String>,
    pub scanned_at_ms: Option<u64>,
    /// The directory itself could not be read.
    pub error: Option<String>,
    pub files: Vec<FileSeen>,
    /// Rollout -> the file that manages it (kept while the file is invalid, dropped when it is
    /// removed).
    #[serde(skip)]
    pub managed: BTreeMap<String, String>,
}

impl SpecsSeen {
    /// The file managing `rollout` and its current error, if any.
    pub fn file_of(&self, rollout: &str) -> Option<(String, Option<String>)> {
        let file = self.managed.get(rollout)?;
        let error = self
            .files
            .iter()
            .find(|f| &f.file == file)
            .and_then(|f| f.error.clone());
        Some((file.clone(), error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(candidates: &str, stages: &str) -> (String, Spec) {
        let text = format!("name: r\narms: [{{name: v1, role: baseline}}, {candidates}]\nstrategy: bandit\nstages: {stages}\n");
        let spec = Spec::parse(&text).unwrap();
        (text, spec)
    }

    #[test]
    fn edits_and_revisions_are_told_apart() {
        let (t1, s1) = spec(
            "{name: v2, role: candidate}",
            "[{weight: 10}, {weight: 100}]",
        );
        let (t2, s2) = spec(
            "{name: v2, role: candidate}",
            "[{weight: 20}, {weight: 100}]",
        );
        let (t3, s3) = spec(
            "{name: v3, role: candidate}",
            "[{weight: 10}, {weight: 100}]",
        );
        assert_eq!(classify(None, &t1, &s1), Change::Create);
        assert_eq!(classify(Some((&t1, &s1)), &t1, &s1), Change::Unchanged);
        assert_eq!(classify(Some((&t1, &s1)), &t2, &s2), Change::Edit);
        assert_eq!(classify(Some((&t1, &s1)), &t3, &s3), Change::NewRevision);
        let at = |stage: usize| State {
            stage,
            ..State::start(&s1, 0)
        };
        assert_eq!(state_after_edit(&at(1), &s1, &s2).stage, 1);
        assert_eq!(state_after_edit(&at(0), &s1, &s2).stage, 0);
    }

    #[test]
    fn the_first_file_owns_a_rollout_and_invalid_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let good = "name: r\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\nstages: [{weight: 100}]\n";
        std::fs::write(dir.path().join("a.yaml"), good).unwrap();
        std::fs::write(dir.path().join("b.yml"), good).unwrap();
        std::fs::write(dir.path().join("c.json"), "{\"name\": 5}").unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), good).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let files = scan(dir.path()).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(names, ["a.yaml", "b.yml", "c.json"]);
        let (owner, errors) = owners(&files, &BTreeMap::new());
        assert_eq!(owner.get("r"), Some(&0));
        assert_eq!(
            errors.get(&1).map(String::as_str),
            Some("rollout \"r\" is already defined in a.yaml")
        );
        assert!(errors[&2].contains("name"), "{errors:?}");
        assert!(scan(&dir.path().join("missing")).is_err());
    }

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).unwrap();
    }

    const GOOD: &str = "name: r\narms: [{name: v1, role: baseline}, {name: v2, role: candidate}]\nstages: [{weight: 10}, {weight: 50}, {weight: 100}]\n";

    /// Issue 20, item 2: a typo in the file that manages a rollout handed it to another file
    /// naming the same rollout. It stays the first file's while that file exists.
    #[test]
    fn a_typo_in_the_managing_file_does_not_hand_its_rollout_to_another() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.yaml",
            &GOOD.replace("arms:", "strategy: canry\narms:"),
        );
        write(dir.path(), "b.yaml", &GOOD.replace("{weight: 10}, ", ""));
        let files = scan(dir.path()).unwrap();
        let managed: BTreeMap<String, String> = [("r".to_owned(), "a.yaml".to_owned())].into();
        let (owner, errors) = owners(&files, &managed);
        assert_eq!(owner.get("r"), Some(&0));
        assert!(errors[&0].contains("strategy"), "{errors:?}");
        assert_eq!(
            errors[&1],
            "rollout \"r\" is already defined in a.yaml (which has an error to fix; it keeps the rollout while it exists)"
        );
        // Without the history (a fresh controller) the first valid file takes it, as before.
        assert_eq!(owners(&files, &BTreeMap::new()).0.get("r"), Some(&1));
    }

    /// Issue 20, items 1 and 4: a link out of the directory is not read (its content never
    /// reaches an error), a FIFO does not hang the scan, a link within the directory (a
    /// ConfigMap's `..data`) is read, and a parse error quotes nothing of the file.
    #[test]
    fn only_regular_files_inside_the_directory_are_read_and_errors_quote_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "token", "s3cr3t-token-value");
        std::os::unix::fs::symlink(outside.path().join("token"), dir.path().join("tok.yaml"))
            .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd.yaml")).unwrap();
        let fifo = dir.path().join("pipe.yaml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        write(&dir.path().join("..data"), "r.yaml", GOOD);
        std::os::unix::fs::symlink("..data/r.yaml", dir.path().join("r.yaml")).unwrap();
        write(
            dir.path(),
            "secret.yaml",
            "name: [\"hunter2-password\"]\nhooks: [{on: event, url: 'https://u:pw@h/x?key=abc'}]\n",
        );
        let started = std::time::Instant::now();
        let files = scan(dir.path()).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let by_name = |n: &str| files.iter().find(|f| f.file == n).unwrap();
        assert_eq!(
            by_name("tok.yaml")
                .parsed
                .as_ref()
                .err()
                .map(String::as_str),
            Some("a link to a file outside the specs directory: not read")
        );
        assert!(by_name("passwd.yaml").parsed.is_err());
        assert!(by_name("pipe.yaml")
            .parsed
            .as_ref()
            .err()
            .is_some_and(|e| e.starts_with("not a regular file")),);
        assert_eq!(by_name("r.yaml").parsed.as_ref().unwrap().1.name, "r");
        let e = by_name("secret.yaml").parsed.as_ref().err().unwrap();
        assert!(
            !e.contains("hunter2") && !e.contains("pw@") && e.contains("name"),
            "{e}"
        );
        for f in &files {
            if let Err(e) = &f.parsed {
                assert!(!e.contains("s3cr3t") && !e.contains("root:"), "{e}");
            }
        }
    }

    /// Issue 20, item 3: removing a stage already passed promoted to 100% at the next scan
    /// (the stage index was kept, so it pointed past the gate). The weight in force is kept.
    #[test]
    fn an_edit_keeps_the_weight_in_force_not_the_stage_index() {
        let old = Spec::parse(GOOD).unwrap();
        let at_50 = State {
            stage: 1,
            ..State::start(&old, 0)
        };
        assert_eq!(at_50.weights(&old).1, 50.0);
        let fewer = Spec::parse(&GOOD.replace("{weight: 10}, ", "")).unwrap();
        let next = state_after_edit(&at_50, &old, &fewer);
        assert_eq!((next.stage, next.weights(&fewer).1), (0, 50.0));
        // Every new stage above the weight in force: the first, held at 50% until its check.
        let higher =
            Spec::parse(&GOOD.replace("{weight: 10}, {weight: 50}", "{weight: 60}, {weight: 80}"))
                .unwrap();
        let held = state_after_edit(&at_50, &old, &higher);
        assert_eq!((held.stage, held.weights(&higher).1), (0, 50.0));
        let (raised, action) = crate::machine::step(
            &higher,
            &held,
            1,
            &[(Default::default(), Default::default())],
            &|_, _| Vec::new(),
            None,
            None,
        );
        assert_eq!(action, crate::machine::Action::Advance { to_stage: 0 });
        assert_eq!((raised.stage, raised.weights(&higher).1), (0, 60.0));
    }

    /// An edit that raises an A/B test's split while it runs does not send it back to its 0%
    /// pre-period (where the candidate's users would be counted again as if unexposed).
    #[test]
    fn an_edit_never_sends_a_running_experiment_back_to_its_pre_period() {
        let ab = |split: u32| {
            Spec::parse(&format!("name: r\nstrategy: ab_test\nab_test: {{metric: conversion}}\narms: [{{name: v1, role: baseline}}, {{name: v2, role: candidate}}]\nstages: [{{weight: 0, min_duration_s: 600}}, {{weight: {split}}}, {{weight: 100}}]\n")).unwrap()
        };
        let (old, new) = (ab(50), ab(60));
        let running = State {
            stage: 1,
            ..State::start(&old, 0)
        };
        let next = state_after_edit(&running, &old, &new);
        assert_eq!(
            (next.stage, next.weights(&new).1),
            (1, 50.0),
            "held at 50% in the split"
        );
        assert!(next.pre_weights(&new).is_empty());
        // In the pre-period an edit keeps it there.
        let before = State::start(&old, 0);
        assert_eq!(state_after_edit(&before, &old, &new).stage, 0);
    }
}
