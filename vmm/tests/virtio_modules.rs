//! The virtio device model has no import loops: no file under
//! `src/devices/virtio` reaches back to itself through the modules it
//! uses (`use` paths and inline `super::`/`crate::devices::virtio::`
//! paths). Re-exports (`pub use`) are a folder's public face, not a
//! dependency, and test-only code (`tests.rs`, `*_tests.rs`,
//! `test_utils.rs`, `test_chains.rs`, `#[cfg(test)] mod tests`) may use
//! anything. A device folder reads one way: `config.rs` and the backend
//! at the bottom, `event_handler.rs` above them, `device.rs` on top.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// Every module file under `root` (the `virtio` folder), by module path.
fn modules(root: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<Module, PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            if p.is_dir() {
                let mut m = prefix.to_vec();
                m.push(name);
                walk(&p, &m, out);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                let mut m = prefix.to_vec();
                if stem != "mod" {
                    m.push(stem.to_string());
                }
                out.insert(m, p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, &[], &mut out);
    out
}

fn test_only(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_str().unwrap();
    name == "tests.rs"
        || name.ends_with("_tests.rs")
        || name == "test_utils.rs"
        || name == "test_chains.rs"
}

/// The source without comments and without a trailing `#[cfg(test)]`
/// module.
fn production_source(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `use a::{b, c::{d, e}}` → a::b, a::c::d, a::c::e.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.len() - 1];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(p).into_iter().map(move |e| format!("{prefix}{e}")))
        .collect()
}

/// The paths a file uses: `use` trees (not `pub use`) and inline paths.
fn used_paths(source: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = source;
    let mut body = String::new();
    // `use` statements (up to `;`), re-exports left out.
    while let Some(i) = rest.find("use ") {
        let before = &rest[..i];
        body.push_str(before);
        let at_word = before
            .chars()
            .last()
            .is_none_or(|c| !c.is_alphanumeric() && c != '_');
        let Some(end) = rest[i..].find(';') else {
            break;
        };
        let stmt = &rest[i + 4..i + end];
        let reexport = before.trim_end().ends_with("pub") || before.trim_end().ends_with(')');
        if at_word && !reexport {
            paths.extend(expand(stmt.trim()));
        }
        rest = &rest[i + end + 1..];
    }
    body.push_str(rest);
    // Inline paths.
    for start in ["crate::devices::virtio::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = body[from..].find(start) {
            let at = from + i;
            let prev = body[..at].chars().last();
            from = at + start.len();
            if prev.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let end = body[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(body.len(), |e| at + e);
            paths.push(body[at..end].to_string());
        }
    }
    paths
}

/// The deepest module of `known` a path from `from` names.
fn resolve(from: &Module, path: &str, known: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut at: Module = if segs.starts_with(&["crate", "devices", "virtio"]) {
        segs.drain(..3);
        Vec::new()
    } else if segs.first() == Some(&"super") || segs.first() == Some(&"self") {
        let mut m = from.clone();
        // A file module's `self` is itself; `super` is its parent.
        while let Some(&s) = segs.first() {
            match s {
                "super" => {
                    m.pop()?;
                }
                "self" => {}
                _ => break,
            }
            segs.remove(0);
        }
        m
    } else {
        return None;
    };
    for s in segs {
        let mut next = at.clone();
        next.push(s.to_string());
        if known.contains_key(&next) {
            at = next;
        } else {
            break;
        }
    }
    Some(at)
}

/// The import graph of the tree at `root`, test-only code left out.
fn graph(root: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let known = modules(root);
    let mut g = BTreeMap::new();
    for (m, path) in &known {
        if test_only(path) {
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap();
        let targets: BTreeSet<Module> = used_paths(&production_source(&text))
            .iter()
            .filter_map(|p| resolve(m, p, &known))
            .filter(|t| t != m && !test_only(&known[t]))
            .collect();
        g.insert(m.clone(), targets);
    }
    g
}

/// A loop in `g`, as the modules along it.
fn find_loop(g: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        m: &Module,
        g: &BTreeMap<Module, BTreeSet<Module>>,
        stack: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(m.clone());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.clone());
        for t in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(t, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.clone());
        None
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(c) = visit(m, g, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

fn show(cycle: &[Module]) -> String {
    cycle
        .iter()
        .map(|m| {
            if m.is_empty() {
                "virtio".to_string()
            } else {
                m.join("::")
            }
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[test]
fn the_virtio_modules_have_no_import_loop() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/devices/virtio");
    let g = graph(&root);
    assert!(
        g.len() > 40,
        "only {} modules found under {}",
        g.len(),
        root.display()
    );
    assert!(
        g[&vec!["vsock".to_string(), "device".to_string()]]
            .contains(&vec!["vsock".to_string(), "event_handler".to_string()]),
        "the graph misses vsock::device -> vsock::event_handler"
    );
    if let Some(c) = find_loop(&g) {
        panic!("import loop in the virtio device model: {}", show(&c));
    }
}

/// Every device folder has the same files.
#[test]
fn every_device_folder_has_the_same_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/devices/virtio");
    for device in ["block", "fs", "net", "rng", "vsock"] {
        for file in [
            "mod.rs",
            "device.rs",
            "event_handler.rs",
            "config.rs",
            "persist.rs",
            "tests.rs",
        ] {
            let p = root.join(device).join(file);
            assert!(p.is_file(), "{} is missing", p.display());
        }
    }
}

/// The checker finds the loop the vsock device once had (device.rs used
/// worker.rs to run its thread, worker.rs used device.rs for the core).
#[test]
fn the_checker_finds_a_device_worker_loop_and_ignores_reexports() {
    let dir = std::env::temp_dir().join(format!("cocoon-modgraph-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dev = dir.join("vsock");
    std::fs::create_dir_all(&dev).unwrap();
    let write = |name: &str, text: &str| std::fs::write(dev.join(name), text).unwrap();
    write(
        "mod.rs",
        "pub mod device;\nmod worker;\npub use device::Vsock;\n",
    );
    write(
        "device.rs",
        "use super::worker::{self, WorkerHandle};\npub struct Vsock;\npub struct VsockCore;\n",
    );
    write(
        "worker.rs",
        "// use super::nothing;\nfn run(c: super::device::VsockCore) {}\n",
    );
    write("tests.rs", "use super::device::*;\nuse super::worker::*;\n");
    std::fs::write(dir.join("mod.rs"), "pub mod vsock;\n").unwrap();
    let g = graph(&dir);
    let c = find_loop(&g).expect("the loop is not found");
    assert_eq!(show(&c), "vsock::device -> vsock::worker -> vsock::device");
    // Without the inline path back, no loop (the re-export and the test
    // file do not count).
    write("worker.rs", "fn run() {}\n");
    assert_eq!(find_loop(&graph(&dir)), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn use_trees_expand() {
    assert_eq!(
        expand("super::{a, b::{c, d}, e}"),
        vec!["super::a", "super::b::c", "super::b::d", "super::e"]
    );
}
