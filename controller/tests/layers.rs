//! Issue 21: no module of rampctl or of its pure core imports a module that imports it back, so
//! the layers (HTTP, service and runtime, ports and adapters, core) stay readable one way. The
//! graph is read from the sources: every `crate::a::b` path and `use crate::{..}` group outside
//! tests, `super::` in child modules, each resolved to the top-level module it names (a child
//! module counts with its parent). Counted as strongly connected groups of more than one module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`service::record`) -> source, without its tests and comments.
fn modules(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let rel = path.strip_prefix(src).ok()?.to_str()?.to_owned();
            if rel.starts_with("bin/") || rel == "lib.rs" {
                return None;
            }
            let name = rel
                .trim_end_matches(".rs")
                .trim_end_matches("/mod")
                .replace('/', "::");
            let text = std::fs::read_to_string(&path).ok()?;
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let code: String = code
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            Some((name, code))
        })
        .collect()
}

/// The paths a module names under `crate::` (and `super::`), each as written.
fn named_paths(name: &str, code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect::<String>()
            .trim_end_matches(':')
            .to_owned()
    };
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            out.extend(inner.split(',').map(|p| ident(p.trim())));
        } else {
            out.push(ident(rest));
        }
    }
    if let Some((parent, _)) = name.rsplit_once("::") {
        for (i, _) in code.match_indices("super::") {
            out.push(format!("{parent}::{}", ident(&code[i + "super::".len()..])));
        }
    }
    out
}

/// Top-level module -> the top-level modules it imports.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_owned();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, code) in &mods {
        let from = top(name);
        g.entry(from.clone()).or_default();
        for path in named_paths(name, code) {
            let parts: Vec<&str> = path.split("::").collect();
            let named = (1..=parts.len())
                .rev()
                .map(|n| parts[..n].join("::"))
                .find(|m| mods.contains_key(m));
            if let Some(to) = named.map(|m| top(&m)).filter(|t| *t != from) {
                g.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    g
}

/// The groups of modules that import each other (strongly connected, more than one module).
fn loops(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Two modules are in one group when each reaches the other.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(m) = todo.pop() {
            for next in g.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> = g.keys().map(|m| (m, reach(m))).collect();
    let mut groups: BTreeSet<Vec<String>> = BTreeSet::new();
    for (m, r) in &reached {
        let group: Vec<String> = r
            .iter()
            .filter(|o| reached.get(o).is_some_and(|back| back.contains(*m)))
            .cloned()
            .collect();
        if group.len() > 1 {
            groups.insert(group);
        }
    }
    groups.into_iter().collect()
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for src in [root.join("src"), root.join("core/src")] {
        let g = graph(&src);
        assert!(g.len() > 10, "{}: {} modules read", src.display(), g.len());
        assert_eq!(loops(&g), Vec::<Vec<String>>::new(), "{}", src.display());
    }
}

/// The reader finds a loop where there is one (so a pass is not a reader that finds nothing).
#[test]
fn a_loop_is_found() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(loops(&g), vec![vec!["a", "b", "c"]]);
    let code = "use crate::{registry::View, store::Store};\nfn f() { crate::clock::now_ms(); }";
    assert_eq!(
        named_paths("service::read", code),
        ["registry::View", "store::Store", "clock::now_ms"]
    );
}
