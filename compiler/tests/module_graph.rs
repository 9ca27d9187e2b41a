//! The compiler's top-level modules depend on each other one way: the graph of `crate::<module>`
//! references between them (read from the sources) has no cycle.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

/// The crate root: items of `lib.rs` (`crate::compile`, `crate::Versions`, ...) belong to it.
const ROOT: &str = "lib";

/// A reference from one module to another: where it was seen.
#[derive(Debug, Clone)]
struct Seen {
    file: String,
    line: usize,
}

struct ModuleGraph {
    graph: DiGraph<String, Seen>,
    nodes: BTreeMap<String, NodeIndex>,
}

impl ModuleGraph {
    fn edge(&self, from: &str, to: &str) -> Option<&Seen> {
        let e = self.graph.find_edge(self.nodes[from], self.nodes[to])?;
        Some(&self.graph[e])
    }
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `check/steps.rs` → `check`, `lib.rs` → the root.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file with its line comments (doc comments included) blanked out, so that
/// offsets keep their line.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| match line.trim_start().starts_with("//") {
            true => "",
            false => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn leading_ident(text: &str) -> &str {
    let end = text.find(|c: char| !is_ident_char(c)).unwrap_or(text.len());
    &text[..end]
}

/// The first segment of each path after `prefix` (`crate::` or, in `lib.rs`, `use `), with its
/// offset: `crate::check::Context` → `check`; `crate::{path, scope}` → `path`, `scope` (groups
/// may span lines).
fn referenced_names(code: &str, prefix: &str) -> Vec<(usize, String)> {
    let mut names = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| is_ident_char(c) || c == ':') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && is_ident_char(c) => {
                        names.push((at, leading_ident(&group[i..]).to_string()));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = leading_ident(rest);
            if !name.is_empty() {
                names.push((at, name.to_string()));
            }
        }
    }
    names
}

/// Names declared `mod <name>;` in `lib.rs`, external crates re-exported there (`pub use
/// weft_plan as plan;`), and exported macros with the module that defines them.
struct Declarations {
    modules: BTreeSet<String>,
    external: BTreeSet<String>,
    macros: BTreeMap<String, String>,
}

fn declarations(src: &Path, files: &[PathBuf]) -> Declarations {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let mut modules = BTreeSet::new();
    let mut external = BTreeSet::new();
    for line in code_of(&lib).lines() {
        let line = line.trim().trim_start_matches("pub ");
        if let Some(name) = line.strip_prefix("mod ") {
            modules.insert(name.trim_end_matches(';').trim().to_string());
        }
        if let Some(used) = line.strip_prefix("use ")
            && let Some((path, alias)) = used.trim_end_matches(';').split_once(" as ")
            && !path.contains("::")
        {
            external.insert(alias.trim().to_string());
        }
    }
    let mut macros = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut exported = false;
        for line in code_of(&text).lines() {
            let line = line.trim();
            if line == "#[macro_export]" {
                exported = true;
            } else if let Some(rest) = line.strip_prefix("macro_rules! ") {
                if exported {
                    macros.insert(leading_ident(rest).to_string(), module_of(src, file));
                }
                exported = false;
            }
        }
    }
    Declarations {
        modules,
        external,
        macros,
    }
}

fn module_graph() -> ModuleGraph {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let decl = declarations(&src, &files);
    let mut graph = DiGraph::new();
    let mut nodes = BTreeMap::new();
    for name in decl.modules.iter().map(String::as_str).chain([ROOT]) {
        nodes.insert(name.to_string(), graph.add_node(name.to_string()));
    }
    for file in &files {
        let from = module_of(&src, file);
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let mut names = referenced_names(&code, "crate::");
        if from == ROOT {
            // The root names its modules without `crate::`: `pub use pipeline::compile;`.
            names.extend(referenced_names(&code, "use "));
        }
        for (at, name) in names {
            let to = if decl.modules.contains(&name) {
                name
            } else if let Some(module) = decl.macros.get(&name) {
                module.clone()
            } else if decl.external.contains(&name) || name == "self" {
                continue;
            } else {
                ROOT.to_string()
            };
            if to == from {
                continue;
            }
            let (a, b) = (nodes[&from], nodes[&to]);
            if graph.find_edge(a, b).is_none() {
                let file = file.strip_prefix(&src).unwrap().display().to_string();
                let line = code[..at].matches('\n').count() + 1;
                graph.add_edge(a, b, Seen { file, line });
            }
        }
    }
    ModuleGraph { graph, nodes }
}

/// A cycle through the nodes of a strongly connected component, as a path back to its start.
fn cycle_in(graph: &DiGraph<String, Seen>, scc: &[NodeIndex]) -> Vec<NodeIndex> {
    let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
    let start = scc[0];
    let mut came_from: BTreeMap<NodeIndex, NodeIndex> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for next in graph.neighbors(n) {
            if !members.contains(&next) || came_from.contains_key(&next) {
                continue;
            }
            came_from.insert(next, n);
            if next == start {
                let mut path = vec![start];
                let mut at = n;
                while at != start {
                    path.push(at);
                    at = came_from[&at];
                }
                path.push(start);
                path.reverse();
                return path;
            }
            queue.push_back(next);
        }
    }
    scc.to_vec()
}

#[test]
fn top_level_modules_form_no_cycle() {
    let m = module_graph();
    if toposort(&m.graph, None).is_ok() {
        return;
    }
    let mut report = String::new();
    for scc in tarjan_scc(&m.graph).into_iter().filter(|s| s.len() > 1) {
        let cycle = cycle_in(&m.graph, &scc);
        let names: Vec<&str> = cycle.iter().map(|n| m.graph[*n].as_str()).collect();
        report.push_str(&format!("cycle: {}\n", names.join(" → ")));
        for pair in cycle.windows(2) {
            let (from, to) = (&m.graph[pair[0]], &m.graph[pair[1]]);
            let seen = m.edge(from, to).expect("an edge of the cycle");
            report.push_str(&format!(
                "  {from} → {to}: src/{}:{}\n",
                seen.file, seen.line
            ));
        }
    }
    panic!("the compiler's modules depend on each other in a circle:\n{report}");
}

/// The reader sees the references it must: a guard against a test that passes because it reads
/// nothing.
#[test]
fn the_graph_has_the_stages_in_their_order() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let decl = declarations(&src, &files);
    assert_eq!(decl.macros.get("path").map(String::as_str), Some("yaml"));
    assert!(decl.external.contains("plan") && decl.modules.contains("check"));
    let m = module_graph();
    for (from, to) in [
        ("load", "repo"),
        ("check", "load"),
        ("check", "config_value"),
        ("instance", "config_value"),
        ("lower", "check"),
        ("lower", "instance"),
        ("pipeline", "lower"),
        ("build", "emit"),
        ("ops", ROOT),
        (ROOT, "pipeline"),
    ] {
        assert!(
            m.edge(from, to).is_some(),
            "no reference from {from} to {to}"
        );
    }
    for (from, to) in [
        ("repo", "emit"),
        ("repo", "build"),
        ("check", "lower"),
        ("check", "instance"),
        ("instance", "lower"),
        ("instance", "check"),
        ("emit", "instance"),
    ] {
        assert!(
            m.edge(from, to).is_none(),
            "{from} depends on {to}: {:?}",
            m.edge(from, to)
        );
    }
}
