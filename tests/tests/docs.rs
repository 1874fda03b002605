//! The docs hold: in every tracked Markdown file, every relative link names a tracked file or
//! folder (and a `#anchor` a heading there, by GitHub's slug rules, or a source line `#L12`), and
//! every example in a fenced block parses and validates with the parser that will read it:
//! rollout specs with rampctl's (`Spec::parse`, what `rampctl validate` runs), filter configs with
//! the filter's (`Rollout::from_json`, what `on_configure` runs). A block says what it is with a
//! comment on the line before it, `<!-- check: KIND -->` (the kinds are in `check_block`, and in
//! tests/README.md); `yaml` and `json` blocks must have one, and a block in another language that
//! parses as YAML or JSON is refused too, so no example escapes unmarked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};
use ramp_tests::envoy::repo_root;
use serde::Deserialize as _;

#[test]
fn every_link_resolves_and_every_example_validates() {
    let repo = Repo::load();
    let mut problems = Vec::new();
    for (file, doc) in &repo.docs {
        for link in &doc.links {
            if let Err(why) = repo.resolve(file, &link.dest) {
                problems.push(format!("{file}:{}: link `{}`: {why}", link.line, link.dest));
            }
        }
        for block in &doc.blocks {
            if let Err(why) = check_block(block) {
                problems.push(format!("{file}:{}: {why}", block.line));
            }
        }
        problems.extend(doc.problems.iter().map(|p| format!("{file}:{p}")));
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) in the docs:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The tracked files (as `git ls-files` lists them: what a clone, and GitHub, has), and the
/// Markdown ones parsed.
struct Repo {
    root: PathBuf,
    tracked: BTreeSet<String>,
    folders: BTreeSet<String>,
    docs: BTreeMap<String, Doc>,
}

impl Repo {
    fn load() -> Self {
        let root = repo_root();
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["ls-files", "-z"])
            .output()
            .expect("git ls-files (the docs test reads what the repository tracks)");
        assert!(out.status.success(), "git ls-files: {out:?}");
        let tracked: BTreeSet<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split('\0')
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect();
        let mut folders = BTreeSet::from([String::new()]);
        for f in &tracked {
            let mut p = Path::new(f);
            while let Some(parent) = p.parent() {
                folders.insert(parent.to_string_lossy().into_owned());
                p = parent;
            }
        }
        let docs = tracked
            .iter()
            .filter(|f| f.ends_with(".md"))
            .map(|f| {
                let text = std::fs::read_to_string(root.join(f)).unwrap();
                (f.clone(), Doc::parse(&text))
            })
            .collect();
        Self {
            root,
            tracked,
            folders,
            docs,
        }
    }

    /// Checks a link written in `from`: its path is tracked (a file or a folder) and its anchor,
    /// if any, is there.
    fn resolve(&self, from: &str, dest: &str) -> Result<(), String> {
        if has_scheme(dest) {
            return Ok(());
        }
        let (path, anchor) = match dest.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (dest, None),
        };
        let target = if path.is_empty() {
            from.to_owned()
        } else {
            let base = if let Some(abs) = path.strip_prefix('/') {
                PathBuf::from(abs)
            } else {
                Path::new(from).parent().unwrap_or(Path::new("")).join(path)
            };
            normalize(&base).ok_or("leaves the repository")?
        };
        let target = target.trim_end_matches('/').to_owned();
        if self.folders.contains(&target) {
            return match anchor {
                None => Ok(()),
                Some(a) => Err(format!("`{target}` is a folder; #{a} names nothing there")),
            };
        }
        if !self.tracked.contains(&target) {
            return Err(format!(
                "`{target}` is not a tracked file or folder{}",
                if self.root.join(&target).exists() {
                    " (it exists here: `git add` it, or link to what a clone has)"
                } else {
                    ""
                }
            ));
        }
        let Some(anchor) = anchor else { return Ok(()) };
        if target.ends_with(".md") {
            let anchors = &self.docs[&target].anchors;
            if anchors.contains(anchor) {
                Ok(())
            } else {
                Err(format!(
                    "no heading in `{target}` has the anchor #{anchor} (its anchors: {})",
                    anchors.iter().cloned().collect::<Vec<_>>().join(", ")
                ))
            }
        } else {
            let lines = std::fs::read_to_string(self.root.join(&target))
                .map(|t| t.lines().count())
                .unwrap_or(0);
            let line_anchor = anchor
                .split('-')
                .map(|l| l.strip_prefix('L').and_then(|n| n.parse::<usize>().ok()))
                .collect::<Option<Vec<_>>>();
            match line_anchor {
                Some(ns) if ns.iter().all(|&n| (1..=lines).contains(&n)) => Ok(()),
                _ => Err(format!(
                    "#{anchor} in `{target}` ({lines} lines) is not a line anchor such as #L12"
                )),
            }
        }
    }
}

fn has_scheme(dest: &str) -> bool {
    match dest.split_once(':') {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        }
        None => false,
    }
}

/// `a/b/../c` as `a/c`, percent-escapes decoded; None if it climbs out of the repository.
fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(percent_decode(&p.to_string_lossy())),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// GitHub's anchor for a heading: its text lower-cased, every character but letters, digits,
/// spaces, `-` and `_` dropped, spaces turned into `-`; a repeat gets `-1`, `-2`, ...
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

struct Link {
    dest: String,
    line: usize,
}

struct Block {
    lang: String,
    marker: Option<String>,
    text: String,
    line: usize,
}

/// What the checks need from one Markdown file.
struct Doc {
    links: Vec<Link>,
    blocks: Vec<Block>,
    anchors: BTreeSet<String>,
    /// Markers that mark nothing, indented code blocks: `line: why`.
    problems: Vec<String>,
}

const MARKER: &str = "<!-- check:";

impl Doc {
    fn parse(text: &str) -> Self {
        let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
        let mut doc = Doc {
            links: Vec::new(),
            blocks: Vec::new(),
            anchors: BTreeSet::new(),
            problems: Vec::new(),
        };
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut heading: Option<String> = None;
        let mut block: Option<Block> = None;
        // A marker waits for the next block; anything else in between leaves it marking nothing.
        let mut marker: Option<(String, usize)> = None;
        let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
        for (event, range) in Parser::new_ext(text, options).into_offset_iter() {
            let line = line_of(range.start);
            match event {
                Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
                Event::End(TagEnd::Heading(_)) => {
                    let s = slug(&heading.take().unwrap_or_default());
                    let n = seen.entry(s.clone()).or_insert(0);
                    doc.anchors
                        .insert(if *n == 0 { s } else { format!("{s}-{n}") });
                    *n += 1;
                }
                Event::Text(t) | Event::Code(t) => {
                    if let Some(h) = heading.as_mut() {
                        h.push_str(&t);
                    }
                    if let Some(b) = block.as_mut() {
                        b.text.push_str(&t);
                    }
                }
                Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                    doc.links.push(Link {
                        dest: dest_url.to_string(),
                        line,
                    })
                }
                Event::Start(Tag::CodeBlock(kind)) => {
                    let lang = match kind {
                        CodeBlockKind::Fenced(info) => {
                            info.split_whitespace().next().unwrap_or("").to_owned()
                        }
                        CodeBlockKind::Indented => {
                            doc.problems.push(format!(
                                "{line}: an indented code block: fence it and say its language"
                            ));
                            String::new()
                        }
                    };
                    block = Some(Block {
                        lang,
                        marker: marker.take().map(|m| m.0),
                        text: String::new(),
                        line,
                    });
                }
                Event::End(TagEnd::CodeBlock) => doc.blocks.extend(block.take()),
                Event::Html(html) | Event::InlineHtml(html) => {
                    for attr in ["href=\"", "src=\""] {
                        for (i, _) in html.match_indices(attr) {
                            let rest = &html[i + attr.len()..];
                            let dest = rest.split('"').next().unwrap_or("");
                            doc.links.push(Link {
                                dest: dest.to_owned(),
                                line,
                            });
                        }
                    }
                    for attr in ["name=\"", "id=\""] {
                        for (i, _) in html.match_indices(attr) {
                            let rest = &html[i + attr.len()..];
                            doc.anchors
                                .insert(rest.split('"').next().unwrap_or("").to_owned());
                        }
                    }
                    if let Some(start) = html.find(MARKER) {
                        let rest = &html[start + MARKER.len()..];
                        let kind = rest.split("-->").next().unwrap_or("").trim().to_owned();
                        if let Some((_, at)) = marker.replace((kind, line)) {
                            doc.problems
                                .push(format!("{at}: a check marker before no code block"));
                        }
                    }
                }
                Event::Start(Tag::HtmlBlock) | Event::End(TagEnd::HtmlBlock) => {}
                Event::Start(_) => {
                    if let Some((_, at)) = marker.take() {
                        doc.problems.push(format!(
                            "{at}: a check marker before no code block (it must be on the line \
                             before the block's fence)"
                        ));
                    }
                }
                _ => {}
            }
        }
        if let Some((_, at)) = marker {
            doc.problems
                .push(format!("{at}: a check marker before no code block"));
        }
        doc
    }
}

/// What a spec block that is part of a spec leaves out, filled in so the parser can judge the rest.
const SPEC_BASE: &str = "name: docs-example
arms: [{name: v1, role: baseline}, {name: v2, role: candidate}]
stages: [{weight: 100}]
";

/// Checks a block as its marker says. The kinds:
/// - `rollout-spec`: a whole rollout spec, through `Spec::parse`;
/// - `rollout-spec-part`: some of a spec's top-level fields; those it leaves out come from
///   `SPEC_BASE`, then `Spec::parse`;
/// - `filter-config`: the filter's JSON, through `Rollout::from_json`;
/// - `envoy`: YAML, a mapping; `kubernetes`: YAML documents, each with `apiVersion` and `kind`;
/// - `yaml`, `json`: parses;
/// - `partial: WHY`: deliberately not whole, so not checked; the reason is required.
fn check_block(b: &Block) -> Result<(), String> {
    let Some(marker) = &b.marker else {
        return match b.lang.as_str() {
            "" => Err("a code block without a language: say one (`text` for output)".into()),
            "yaml" | "yml" | "json" => Err(format!(
                "a {} block without a check marker: put `<!-- check: KIND -->` on the line \
                 before it (see tests/README.md)",
                b.lang
            )),
            _ if looks_like_config(&b.text) => Err(format!(
                "a {} block that parses as YAML or JSON: make it a yaml or json block with a \
                 check marker, or mark it `<!-- check: partial: WHY -->`",
                b.lang
            )),
            _ => Ok(()),
        };
    };
    let (kind, why) = match marker.split_once(':') {
        Some((k, w)) => (k.trim(), w.trim()),
        None => (marker.as_str(), ""),
    };
    match kind {
        "rollout-spec" => ramp_controller::spec::Spec::parse(&b.text)
            .map(drop)
            .map_err(|e| format!("rollout spec refused: {e}")),
        "rollout-spec-part" => {
            let part: serde_yaml::Mapping = serde_yaml::from_str(&b.text)
                .map_err(|e| format!("rollout spec part: not a YAML mapping: {e}"))?;
            let mut spec: serde_yaml::Mapping = serde_yaml::from_str(SPEC_BASE).unwrap();
            spec.extend(part);
            ramp_controller::spec::Spec::parse(&serde_yaml::to_string(&spec).unwrap())
                .map(drop)
                .map_err(|e| format!("rollout spec part refused: {e}"))
        }
        "filter-config" => ramp_filter::config::Rollout::from_json(b.text.as_bytes())
            .map(drop)
            .map_err(|e| format!("filter config refused: {e}")),
        "envoy" => match serde_yaml::from_str::<serde_yaml::Value>(&b.text) {
            Ok(serde_yaml::Value::Mapping(_)) => Ok(()),
            Ok(other) => Err(format!("envoy config: not a mapping: {other:?}")),
            Err(e) => Err(format!("envoy config: not YAML: {e}")),
        },
        "kubernetes" => {
            for doc in serde_yaml::Deserializer::from_str(&b.text) {
                let v = serde_yaml::Value::deserialize(doc)
                    .map_err(|e| format!("kubernetes manifest: not YAML: {e}"))?;
                if v.get("apiVersion").is_none() || v.get("kind").is_none() {
                    return Err(
                        "kubernetes manifest: a document without apiVersion and kind".into(),
                    );
                }
            }
            Ok(())
        }
        "yaml" => serde_yaml::from_str::<serde_yaml::Value>(&b.text)
            .map(drop)
            .map_err(|e| format!("not YAML: {e}")),
        "json" => serde_json::from_str::<serde_json::Value>(&b.text)
            .map(drop)
            .map_err(|e| format!("not JSON: {e}")),
        "partial" if !why.is_empty() => Ok(()),
        "partial" => {
            Err("`check: partial` needs the reason: `<!-- check: partial: WHY -->`".into())
        }
        other => Err(format!(
            "unknown check marker `{other}` (rollout-spec, rollout-spec-part, filter-config, \
             envoy, kubernetes, yaml, json, partial: WHY)"
        )),
    }
}

/// A block in another language that is really a config: a JSON object or array, or YAML that is
/// a mapping (or a list of mappings).
fn looks_like_config(text: &str) -> bool {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        return v.is_object() || v.is_array();
    }
    match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(serde_yaml::Value::Mapping(m)) => !m.is_empty(),
        Ok(serde_yaml::Value::Sequence(s)) => s.iter().any(serde_yaml::Value::is_mapping),
        _ => false,
    }
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(
        slug("The decision record (`rampctl report`)"),
        "the-decision-record-rampctl-report"
    );
    assert_eq!(
        slug("The team's own metrics (`metric: custom`)"),
        "the-teams-own-metrics-metric-custom"
    );
    assert_eq!(slug("How `make bench` measures"), "how-make-bench-measures");
    assert_eq!(
        slug("Inside: the concurrency model"),
        "inside-the-concurrency-model"
    );
    let doc = Doc::parse("# A\n## A\n### A b_c\n");
    assert_eq!(
        doc.anchors.into_iter().collect::<Vec<_>>(),
        ["a", "a-1", "a-b_c"]
    );
}

#[test]
fn markers_mark_the_next_block_only() {
    let doc = Doc::parse(
        "<!-- check: json -->\n```json\n{}\n```\n\n<!-- check: yaml -->\n\ntext\n\n```yaml\na: 1\n```\n",
    );
    assert_eq!(doc.blocks[0].marker.as_deref(), Some("json"));
    assert_eq!(doc.blocks[1].marker, None);
    assert_eq!(doc.problems.len(), 1, "{:?}", doc.problems);
    assert!(check_block(&doc.blocks[1]).is_err());
}
