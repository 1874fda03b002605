//! `rampctl serve --specs DIR`: the rollouts as files (a ConfigMap or a git-synced volume),
//! reconciled every few seconds. A new file starts a rollout; an edited one changes the running
//! rollout from its next check (a new baseline, candidate set or strategy starts a new revision at
//! stage 1 instead); a removed one leaves its rollout as it is (abort it with `rampctl abort`),
//! which is Argo CD's default too: deleting a file must not stop a rollout by accident. Invalid
//! files change nothing and are reported (`GET /v1/specs`, the log, and the managed rollout's
//! status). The decisions here are pure; the scan and the writes are the server's.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::spec::{Spec, MAX_SPEC_BYTES};

/// One file of the directory, read and parsed.
pub struct SpecFile {
    pub file: String,
    pub parsed: Result<(String, Spec), String>,
}

/// Reads every `*.yaml`, `*.yml` and `*.json` in `dir` (not hidden ones: a ConfigMap volume's
/// `..data` links), sorted by name. Blocking: run it on a blocking thread.
pub fn scan(dir: &Path) -> Result<Vec<SpecFile>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
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
            let parsed = read_spec(&dir.join(&file));
            SpecFile { file, parsed }
        })
        .collect())
}

fn read_spec(path: &Path) -> Result<(String, Spec), String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SPEC_BYTES as u64 + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read: {e}"))?;
    let spec = Spec::parse(&text).map_err(|e| e.to_string())?;
    Ok((text, spec))
}

/// What a valid file asks of its rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// The files of one scan, with the rollout each valid one manages: the first file (by name) to
/// define a rollout owns it; a later one naming the same rollout is an error.
pub fn owners(files: &[SpecFile]) -> (BTreeMap<String, usize>, BTreeMap<usize, String>) {
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors: BTreeMap<usize, String> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        match &f.parsed {
            Err(e) => {
                errors.insert(i, e.clone());
            }
            Ok((_, spec)) => match owner.get(&spec.name) {
                Some(&first) => {
                    errors.insert(
                        i,
                        format!(
                            "rollout {:?} is already defined in {}",
                            spec.name, files[first].file
                        ),
                    );
                }
                None => {
                    owner.insert(spec.name.clone(), i);
                }
            },
        }
    }
    (owner, errors)
}

/// The rollout the stage index should be in under an edited spec: the same, or the new last
/// stage when the spec now has fewer.
pub fn stage_after_edit(stage: usize, spec: &Spec) -> usize {
    stage.min(spec.stages.len().saturating_sub(1))
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
        assert_eq!(stage_after_edit(3, &s2), 1);
        assert_eq!(stage_after_edit(0, &s2), 0);
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
        let (owner, errors) = owners(&files);
        assert_eq!(owner.get("r"), Some(&0));
        assert_eq!(
            errors.get(&1).map(String::as_str),
            Some("rollout \"r\" is already defined in a.yaml")
        );
        assert!(errors[&2].contains("name"), "{errors:?}");
        assert!(scan(&dir.path().join("missing")).is_err());
    }
}
