//! The module map's rules, checked over the sources (test-only):
//! - pure format code does no I/O: a pure module mentions none of the crates
//!   and std modules that do file, network or database I/O;
//! - and imports nothing of this crate that is not pure itself;
//! - dependencies point one way: no cycle between top-level modules.
//!
//! The sources are read from `src/` when the test runs, so a new file is
//! checked without being listed here. Comments and `#[cfg(test)] mod tests`
//! blocks are not code the module ships, and are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules that must stay pure (with everything below them).
const PURE: &[&str] = &[
    "api::etf",
    "api::snippets",
    "auth",
    "bundle",
    "catalog::query",
    "hosted::rules",
    "index",
    "manifest",
    "plan",
    "registry",
    "server::http",
    "server::paths",
    "tarball",
    "ui::view",
    "version",
];

/// Names whose presence in a pure module means it does I/O. Built from
/// pieces so this file does not trip its own check.
fn banned() -> [String; 5] {
    [
        ["std::", "fs"].concat(),
        ["std::", "net"].concat(),
        ["tok", "io::"].concat(),
        ["req", "west"].concat(),
        ["rusq", "lite"].concat(),
    ]
}

/// Every source file as (module path, code without comments and tests).
fn sources() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("list src") {
            let path = entry.expect("list src").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).expect("under src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            match parts.as_slice() {
                // The binary is another crate; it uses this one as a library.
                [only] if only == "main" => continue,
                [only] if only == "lib" => parts.clear(),
                _ => {}
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            out.insert(parts.join("::"), code_of(&text));
        }
    }
    out
}

/// The text without `//` comments and without the unit-test module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.trim_start().starts_with("//") {
            true => "",
            false => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths `code` names through `crate::`, `super::` and `self::`,
/// made absolute from module `module` (groups like `crate::{a, b::c}` give
/// one path each).
fn references(module: &str, code: &str) -> Vec<Vec<String>> {
    let here: Vec<String> = match module {
        "" => Vec::new(),
        m => m.split("::").map(str::to_owned).collect(),
    };
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let start_ok = i == 0 || !is_ident(bytes[i - 1] as char) && bytes[i - 1] != b':';
        let base = if !start_ok {
            None
        } else if rest.starts_with("crate::") {
            Some((Vec::new(), "crate::".len()))
        } else if rest.starts_with("self::") {
            Some((here.clone(), "self::".len()))
        } else if rest.starts_with("super::") {
            let mut base = here.clone();
            let mut len = 0;
            while code[i + len..].starts_with("super::") {
                base.pop();
                len += "super::".len();
            }
            Some((base, len))
        } else {
            None
        };
        let Some((base, len)) = base else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        i += len;
        paths_at(&code[i..], &base, &mut out);
    }
    out
}

/// Reads `a::b` or `{a, b::c}` at the start of `text`, appending each
/// path to `base`.
fn paths_at(text: &str, base: &[String], out: &mut Vec<Vec<String>>) {
    if let Some(group) = text.strip_prefix('{') {
        let mut depth = 0;
        let mut item_start = 0;
        for (at, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    paths_at(group[item_start..at].trim(), base, out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    paths_at(group[item_start..at].trim(), base, out);
                    item_start = at + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let mut path = base.to_vec();
    let mut rest = text;
    loop {
        let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        path.push(rest[..end].to_owned());
        rest = &rest[end..];
        match rest.strip_prefix("::") {
            Some(more) if more.starts_with('{') => return paths_at(more, &path, out),
            Some(more) => rest = more,
            None => break,
        }
    }
    out.push(path);
}

/// The longest module of `modules` that `path` starts with.
fn resolve(path: &[String], modules: &BTreeSet<String>) -> String {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains(m))
        .unwrap_or_default()
}

fn is_pure(module: &str) -> bool {
    PURE.iter()
        .any(|p| module == *p || module.starts_with(&format!("{p}::")))
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or_default()
}

/// Every edge from a module to another module of the crate.
fn edges(sources: &BTreeMap<String, String>) -> BTreeSet<(String, String)> {
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let mut out = BTreeSet::new();
    for (module, code) in sources {
        for path in references(module, code) {
            let target = resolve(&path, &modules);
            if !target.is_empty() && &target != module {
                out.insert((module.clone(), target));
            }
        }
    }
    out
}

/// The I/O names and impure imports of pure modules, one line each.
fn purity_violations(sources: &BTreeMap<String, String>) -> Vec<String> {
    let mut found = Vec::new();
    for (module, code) in sources.iter().filter(|(m, _)| is_pure(m)) {
        for needle in &banned() {
            if code.contains(needle.as_str()) {
                found.push(format!("{module} mentions `{needle}`"));
            }
        }
    }
    for (from, to) in edges(sources) {
        // `super::` from a pure submodule names its parent; what the parent
        // itself imports is checked on its own.
        let parent = from.starts_with(&format!("{to}::"));
        if is_pure(&from) && !is_pure(&to) && !parent {
            found.push(format!("pure {from} imports {to}"));
        }
    }
    found
}

/// The cycles between top-level modules, each as the modules on it.
fn cycles(edges: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (from, to) in edges {
        let (a, b) = (top(from), top(to));
        if a != b && !a.is_empty() {
            graph.entry(a).or_default().insert(b);
        }
    }
    // A node is on a cycle when it can reach itself; report each cycle's
    // members once, as the set of nodes that reach each other.
    let reach = |start: &str| {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = graph.get(start).into_iter().flatten().copied().collect();
        while let Some(n) = stack.pop() {
            if seen.insert(n) {
                stack.extend(graph.get(n).into_iter().flatten().copied());
            }
        }
        seen
    };
    let reaches: BTreeMap<&str, BTreeSet<&str>> = graph.keys().map(|n| (*n, reach(n))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for (node, seen) in &reaches {
        if !seen.contains(node) {
            continue;
        }
        let members: Vec<String> = seen
            .iter()
            .filter(|m| reaches.get(*m).is_some_and(|r| r.contains(node)))
            .map(|m| m.to_string())
            .collect();
        if !out.contains(&members) {
            out.push(members);
        }
    }
    out
}

#[test]
fn pure_modules_do_no_io_and_import_only_pure_modules() {
    let found = purity_violations(&sources());
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn no_cycle_between_modules() {
    let found = cycles(&edges(&sources()));
    assert!(
        found.is_empty(),
        "modules that depend on each other: {found:?}"
    );
}

#[test]
fn the_checks_catch_what_they_look_for() {
    let fake = |files: &[(&str, &str)]| -> BTreeMap<String, String> {
        files
            .iter()
            .map(|(m, t)| (m.to_string(), code_of(t)))
            .collect()
    };
    let io = ["use std::", "fs::File;"].concat();
    assert_eq!(
        purity_violations(&fake(&[("manifest", &io)])).len(),
        1,
        "I/O in a pure module"
    );
    let sources = fake(&[
        ("store", "use crate::upstream::Validators;"),
        ("store::db", "use super::Store;"),
        ("upstream", "pub fn f() { crate::store::db::open(); }"),
        (
            "plan",
            "use crate::{registry::proto, store::db::{self, X}};",
        ),
        ("registry", "// crate::store in a comment is no import"),
    ]);
    assert_eq!(purity_violations(&sources), ["pure plan imports store::db"]);
    assert_eq!(cycles(&edges(&sources)), [vec!["store", "upstream"]]);
    assert!(references("registry", &sources["registry"]).is_empty());
    assert_eq!(
        references("a::b", "use super::super::c::{d, e::f};"),
        [vec!["c", "d"], vec!["c", "e", "f"]]
    );
}
