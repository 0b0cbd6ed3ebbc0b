//! The house plan, held: every module of src/ sits in a layer and uses only modules of its own
//! layer or below (`use crate::X` from a higher layer fails), and no files use each other in a
//! cycle. The layers are documented in src/lib.rs. Reads src/ as text, with std only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module's layer; the root (lib.rs: the dispatch and the Error every command
/// returns) is in the top layer with the commands.
const LAYERS: &[(&str, u8)] = &[
    ("config", 1),
    ("aws", 1),
    ("iam", 1),
    ("poll", 1),
    ("output", 1),
    ("limits", 1),
    ("render", 1),
    ("signal", 1),
    ("resolve", 2),
    ("probe", 2),
    ("tags", 2),
    ("records", 2),
    ("janitor", 3),
    ("lease", 3),
    ("ami", 4),
    ("rollout", 4),
    ("prune", 4),
    ("publish", 4),
    ("commands", 5),
    ("cli", 5),
    ("", 5),
];

#[test]
fn modules_use_only_their_layer_or_below_and_never_in_a_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = BTreeMap::new();
    read_tree(root, &root.join("src"), &mut files);
    assert!(files.len() > 20, "src/ read: {:?}", files.keys());
    let (problems, edges) = analyse(&files);
    // The reading itself works: uses known to be there are found.
    for (from, to) in [
        ("rollout::refresh", "rollout::stack"),
        ("commands::pipeline", "ami"),
        ("janitor", "tags"),
        ("aws::call", "poll"),
        ("", "commands"),
    ] {
        assert!(
            edges.get(from).is_some_and(|e| e.contains(to)),
            "{from} uses {to}: {edges:#?}"
        );
    }
    assert!(
        problems.is_empty(),
        "the house plan (src/lib.rs, Layers) is broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_finds_a_use_from_a_higher_layer_and_a_cycle() {
    let files: BTreeMap<String, String> = [
        (
            "src/lib.rs",
            "pub mod aws;\npub mod janitor;\npub mod rollout;\n",
        ),
        (
            "src/aws/mod.rs",
            "pub mod call;\nuse crate::janitor::Janitor;\n",
        ),
        (
            "src/aws/call.rs",
            "// crate::rollout in a comment is no use\n",
        ),
        ("src/janitor.rs", "use crate::aws::{self, call::Call};\n"),
        (
            "src/rollout/mod.rs",
            "pub mod a;\npub mod b;\nuse a::Plan;\n",
        ),
        ("src/rollout/a.rs", "use super::b::Stack;\n"),
        (
            "src/rollout/b.rs",
            "use super::a::Plan;\n#[cfg(test)]\nmod tests { use crate::commands; }\n",
        ),
    ]
    .into_iter()
    .map(|(p, t)| (p.to_owned(), t.to_owned()))
    .collect();
    let (problems, _) = analyse(&files);
    assert!(
        problems
            .iter()
            .any(|p| p == "src/aws/mod.rs (layer 1) uses janitor (layer 3)"),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("cycle") && p.contains("rollout::a -> rollout::b -> rollout::a")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("cycle: aws -> janitor -> aws")),
        "{problems:#?}"
    );
    assert_eq!(
        problems.len(),
        3,
        "comments and unit tests are not uses: {problems:#?}"
    );
}

/// Every .rs file under `dir` but main.rs (the binary, which uses the library as `bake::`).
fn read_tree(root: &Path, dir: &Path, files: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_tree(root, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("src/main.rs") {
            let name = path.strip_prefix(root).unwrap().display().to_string();
            files.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// Uses between modules (files), module → modules it uses.
type Edges = BTreeMap<String, BTreeSet<String>>;

/// The problems with a tree of sources (path → text): unknown top-level modules, uses of a
/// higher layer, and cycles between files; and the uses found.
fn analyse(files: &BTreeMap<String, String>) -> (Vec<String>, Edges) {
    let modules: BTreeMap<String, &str> = files
        .keys()
        .map(|path| (module_of(path), path.as_str()))
        .collect();
    let mut problems = Vec::new();
    let mut edges = Edges::new();
    for (module, path) in &modules {
        let from = top(module);
        let Some(from_layer) = layer(from) else {
            problems.push(format!(
                "{path}: module `{from}` has no layer in tests/layers.rs"
            ));
            continue;
        };
        for used in uses(module, &code(&files[*path]), &modules) {
            let to = top(&used);
            match layer(to) {
                Some(to_layer) if to_layer > from_layer => problems.push(format!(
                    "{path} (layer {from_layer}) uses {to} (layer {to_layer})"
                )),
                _ => {}
            }
            // The root is the top: the commands return its Error, and it dispatches to them.
            if !used.is_empty() && used != *module {
                edges.entry(module.clone()).or_default().insert(used);
            }
        }
    }
    problems.extend(
        cycles(&edges)
            .into_iter()
            .map(|c| format!("cycle: {}", c.join(" -> "))),
    );
    (problems, edges)
}

/// `src/a/b.rs` → `a::b`, `src/a/mod.rs` → `a`, `src/lib.rs` → `` (the root).
fn module_of(path: &str) -> String {
    let inner = path
        .trim_start_matches("src/")
        .trim_end_matches(".rs")
        .trim_end_matches("/mod")
        .trim_end_matches("lib");
    inner.trim_end_matches('/').replace('/', "::")
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or("")
}

fn layer(top: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == top).map(|(_, l)| *l)
}

/// The code of a file without its unit tests (from `#[cfg(test)]` on) and comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules (files) `module`'s code uses: `crate::a::b::Item` (the longest known module
/// prefix), `super::x`, grouped `crate::{a, b::c}`, and its own child modules by name.
fn uses(module: &str, code: &str, modules: &BTreeMap<String, &str>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let parent = |m: &str| {
        m.rsplit_once("::")
            .map_or(String::new(), |(p, _)| p.to_owned())
    };
    let is_mod_file = modules
        .get(module)
        .is_some_and(|p| p.ends_with("/mod.rs") || p.ends_with("src/lib.rs"));
    let mut resolve = |base: &str, paths: Vec<Vec<String>>| {
        for segments in paths {
            let mut best = base.to_owned();
            let mut current = base.to_owned();
            for segment in &segments {
                current = if current.is_empty() {
                    segment.clone()
                } else {
                    format!("{current}::{segment}")
                };
                if modules.contains_key(&current) {
                    best = current.clone();
                } else {
                    break;
                }
            }
            found.insert(best);
        }
    };
    for (at, _) in code.match_indices("crate::") {
        if boundary(code, at) {
            resolve("", paths(&code[at + "crate::".len()..]));
        }
    }
    for (at, _) in code.match_indices("super::") {
        if boundary(code, at) {
            // `super` of module a::b (a/b.rs) is a; of a (a.rs or a/mod.rs) the root.
            let mut base = parent(module);
            let mut rest = &code[at + "super::".len()..];
            while let Some(more) = rest.strip_prefix("super::") {
                base = parent(&base);
                rest = more;
            }
            resolve(&base, paths(rest));
        }
    }
    // A parent's own children, named bare (`use stack::Stack;`, `preflight::plan(...)`).
    if is_mod_file {
        let children: Vec<&String> = modules
            .keys()
            .filter(|m| parent(m) == module && !m.is_empty())
            .collect();
        for child in children {
            let name = child.rsplit("::").next().unwrap_or(child);
            let needle = format!("{name}::");
            if code
                .match_indices(&needle)
                .any(|(at, _)| boundary(code, at))
            {
                found.insert(child.clone());
            }
        }
    }
    found
}

/// True when `at` starts a path (not `x::crate::` nor `my_crate::`).
fn boundary(code: &str, at: usize) -> bool {
    let before = code[..at].chars().next_back();
    !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
}

/// The paths at the start of `rest`: `a::b::C` or a group `{a, b::{c, d}}`, as segments.
fn paths(rest: &str) -> Vec<Vec<String>> {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0;
        let mut items = Vec::new();
        let mut item = String::new();
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(std::mem::take(&mut item));
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        items.push(item);
        return items.iter().flat_map(|i| paths(i)).collect();
    }
    let mut segments = Vec::new();
    let mut rest = rest;
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segments.push(rest[..end].to_owned());
        match rest[end..].strip_prefix("::") {
            Some(more) if !more.starts_with('{') => rest = more,
            Some(more) => {
                let base = segments.join("::");
                return paths(more)
                    .into_iter()
                    .map(|tail| {
                        let mut all: Vec<String> = base.split("::").map(str::to_owned).collect();
                        all.extend(tail);
                        all
                    })
                    .collect();
            }
            None => break,
        }
    }
    vec![segments]
}

/// Every cycle found by a depth-first walk, each as the modules around it.
fn cycles(edges: &Edges) -> Vec<Vec<String>> {
    fn walk(
        node: &str,
        edges: &Edges,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            found.push(cycle);
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            walk(next, edges, stack, done, found);
        }
        stack.pop();
        done.insert(node.to_owned());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        walk(node, edges, &mut Vec::new(), &mut done, &mut found);
    }
    found
}
