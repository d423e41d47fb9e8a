//! `cargo xtask lint`'s module-cycle check: within each crate root (a lib, a
//! bin), which modules name which (`crate::a::b`, `super::x`, in `use` lines
//! and paths alike), and whether any set of modules names each other in a
//! circle. A module in a cycle cannot be read alone; the check names the
//! modules of each cycle so the fix (a leaf module) is easy to see.
//!
//! Deliberately small: it reads `mod x;` declarations from the root down and
//! skips comments, `$crate::` (macros) and inline `#[cfg(test)]` modules
//! (tests may use anything). Paths a file names without `crate::`/`super::`
//! (its own children, other crates) are not edges.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// The crate roots checked, relative to the workspace root.
pub const ROOTS: &[&str] = &[
    "lb-common/src/lib.rs",
    "lb-agent/src/lib.rs",
    "lb-agent/src/main.rs",
    "xtask/src/main.rs",
    "lb-ebpf/src/lib.rs",
    "lb-ebpf/src/main.rs",
    "tests/src/lib.rs",
    "tests/bench/src/lib.rs",
    "tests/bench/src/main.rs",
    "tests/bench/traffic/src/lib.rs",
];

/// One crate root's modules (`a::b`, "" for the root) and the modules each
/// names.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Reads the modules reachable from `root` and their edges.
pub fn graph(root: &Path) -> Result<Graph> {
    let mut files = Vec::new();
    collect(root, root.parent().unwrap_or(Path::new(".")), String::new(), &mut files)?;
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut g = Graph::new();
    for (module, text) in &files {
        let mut to = BTreeSet::new();
        for path in paths(&strip(text)) {
            if let Some(target) = resolve(module, &path, &modules) {
                if &target != module {
                    to.insert(target);
                }
            }
        }
        g.insert(module.clone(), to);
    }
    Ok(g)
}

/// `file`, whose children live in `dir`, is module `module`; adds it and its
/// `mod x;` children to `out`.
fn collect(file: &Path, dir: &Path, module: String, out: &mut Vec<(String, String)>) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    for child in declared(&strip(&text)) {
        let (plain, nested) = (dir.join(format!("{child}.rs")), dir.join(&child).join("mod.rs"));
        let (path, child_dir) = if plain.exists() { (plain, dir.join(&child)) } else { (nested, dir.join(&child)) };
        let name = if module.is_empty() { child } else { format!("{module}::{child}") };
        collect(&path, &child_dir, name, out)?;
    }
    out.push((module, text));
    Ok(())
}

/// Names of `mod x;` declarations (not inline `mod x { ... }`).
fn declared(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        let l = l.strip_prefix("pub(crate) ").or_else(|| l.strip_prefix("pub ")).unwrap_or(l);
        if let Some(rest) = l.strip_prefix("mod ") {
            if let Some(name) = rest.strip_suffix(';') {
                out.push(name.trim().to_string());
            }
        }
    }
    out
}

/// The text without comments and without inline `#[cfg(test)] mod` blocks.
fn strip(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" && lines.peek().is_some_and(|n| n.trim_start().starts_with("mod ") && n.trim_end().ends_with('{')) {
            // Skip to the block's closing brace at the same indentation.
            let indent = &line[..line.len() - line.trim_start().len()];
            let close = format!("{indent}}}");
            for l in lines.by_ref() {
                if l.trim_end() == close {
                    break;
                }
            }
            continue;
        }
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every path starting with `crate::` or `super::`, `use` groups expanded
/// (`crate::{a, b::{c, d}}` gives `crate::a`, `crate::b::c`, `crate::b::d`).
fn paths(text: &str) -> Vec<Vec<String>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts = |w: &str| b[i..].starts_with(w.as_bytes()) && (i == 0 || !is_ident(b[i - 1]) && b[i - 1] != b'$' && b[i - 1] != b':');
        if starts("crate::") || starts("super::") {
            let mut prefix = Vec::new();
            i = tree(text, i, &mut prefix, &mut out);
        } else {
            i += 1;
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Parses one path tree at `i` (segments, `::`, `{...}` groups) under
/// `prefix`; pushes each complete path; returns where it ended.
fn tree(text: &str, mut i: usize, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let b = text.as_bytes();
    let depth = prefix.len();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'{' {
            i += 1;
            loop {
                i = tree(text, i, prefix, out);
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                match b.get(i) {
                    Some(b',') => i += 1,
                    Some(b'}') => {
                        i += 1;
                        break;
                    }
                    _ => break,
                }
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                if b.get(i) == Some(&b'}') {
                    i += 1;
                    break;
                }
            }
            prefix.truncate(depth);
            return i;
        }
        let start = i;
        while i < b.len() && (is_ident(b[i]) || b[i] == b'*') {
            i += 1;
        }
        if start == i {
            break;
        }
        prefix.push(text[start..i].to_string());
        if b[i..].starts_with(b"::") {
            i += 2;
        } else {
            break;
        }
    }
    if prefix.len() > depth {
        out.push(prefix.clone());
    }
    prefix.truncate(depth);
    i
}

/// The module a path from `module` names: the longest known module prefix
/// after `crate`/`super` are replaced by what they stand for.
fn resolve(module: &str, path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let mut base: Vec<&str> = if module.is_empty() { vec![] } else { module.split("::").collect() };
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut best = base.join("::");
    let mut cur = base.clone();
    for seg in rest {
        if seg == "self" {
            continue;
        }
        cur.push(seg);
        let m = cur.join("::");
        if modules.contains(&m) {
            best = m;
        } else {
            break;
        }
    }
    Some(best)
}

/// The cycles of `g`: each strongly connected set of two or more modules.
pub fn cycles(g: &Graph) -> Vec<Vec<String>> {
    // Tarjan's algorithm over the (small) module graph.
    struct S<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut S<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        for w in s.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut set = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                set.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if set.len() > 1 {
                set.sort();
                s.out.push(set);
            }
        }
    }
    let mut s = S { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on: BTreeSet::new(), out: Vec::new() };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}

/// Checks every root in [`ROOTS`] under `workspace`; an error lists each cycle.
pub fn check(workspace: &Path) -> Result<()> {
    let mut found = Vec::new();
    for root in ROOTS {
        let path: PathBuf = workspace.join(root);
        for c in cycles(&graph(&path)?) {
            let names: Vec<String> = c.iter().map(|m| if m.is_empty() { "(root)".into() } else { m.clone() }).collect();
            found.push(format!("{root}: {}", names.join(" ↔ ")));
        }
    }
    if !found.is_empty() {
        anyhow::bail!("module cycles (give the shared items a leaf module):\n  {}", found.join("\n  "));
    }
    println!("xtask lint: no module cycles in {} crate roots", ROOTS.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn paths_expand_use_groups() {
        let p = paths("use crate::{a, b::{c, d::E}, f::*};\nlet x = super::g::h(1);\n$crate::no::thing\nlb_agent::crate_ish::x");
        let got: Vec<String> = p.iter().map(|p| p.join("::")).collect();
        assert_eq!(got, ["crate::a", "crate::b::c", "crate::b::d::E", "crate::f::*", "super::g::h"]);
    }

    #[test]
    fn resolve_takes_the_longest_module_prefix() {
        let mods = set(&["", "a", "a::b", "c"]);
        let p = |s: &str| s.split("::").map(String::from).collect::<Vec<_>>();
        assert_eq!(resolve("c", &p("crate::a::b::Thing"), &mods).as_deref(), Some("a::b"));
        assert_eq!(resolve("a::b", &p("super::Thing"), &mods).as_deref(), Some("a"));
        assert_eq!(resolve("a::b", &p("super::super::c::f"), &mods).as_deref(), Some("c"));
        assert_eq!(resolve("c", &p("crate::Root"), &mods).as_deref(), Some(""));
    }

    #[test]
    fn comments_and_test_modules_are_not_edges() {
        let text = "use crate::a; // crate::b\n#[cfg(test)]\nmod tests {\n    use crate::c;\n}\nfn f() { crate::d::g() }\n";
        let got: Vec<String> = paths(&strip(text)).iter().map(|p| p.join("::")).collect();
        assert_eq!(got, ["crate::a", "crate::d::g"]);
    }

    #[test]
    fn finds_each_cycle_once() {
        let g: Graph = [
            ("a", vec!["b"]),
            ("b", vec!["c"]),
            ("c", vec!["a"]),
            ("d", vec!["e", "a"]),
            ("e", vec!["d"]),
            ("f", vec!["a"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), set(&v)))
        .collect();
        assert_eq!(cycles(&g), [vec!["a", "b", "c"], vec!["d", "e"]]);
    }

    #[test]
    fn reads_a_crate_from_its_root() {
        let dir = std::env::temp_dir().join(format!("xtask-cycles-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("m")).unwrap();
        std::fs::write(dir.join("lib.rs"), "pub mod m;\nmod n;\n").unwrap();
        std::fs::write(dir.join("m.rs"), "mod k;\nuse crate::n::X;\n").unwrap();
        std::fs::write(dir.join("m/k.rs"), "use super::Y;\n").unwrap();
        std::fs::write(dir.join("n.rs"), "pub use crate::m::k::Z;\n").unwrap();
        let g = graph(&dir.join("lib.rs"));
        std::fs::remove_dir_all(&dir).unwrap();
        let g = g.unwrap();
        assert_eq!(g["m"], set(&["n"]));
        assert_eq!(g["m::k"], set(&["m"]));
        assert_eq!(g["n"], set(&["m::k"]));
        assert_eq!(cycles(&g), [vec!["m", "m::k", "n"]]);
    }

    /// The workspace itself: what `cargo xtask lint` enforces.
    #[test]
    fn the_workspace_has_no_module_cycles() {
        check(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()).unwrap();
    }
}
