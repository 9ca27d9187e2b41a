//! Data-driven diagnostic tests: every fixture in `tests/diagnostics/<code>/<case>.yaml` is a
//! small repository (files separated by `# file: <path>` lines; `# unreadable: <path> <reason>`
//! stands for a file that could not be read from disk). Its diagnostics, rendered without
//! colour, are snapshotted, and each must include the code its folder is named after.

use std::path::Path;

use weft_compiler::compile;
use weft_compiler::diagnostic::{Code, render_human};
use weft_compiler::repo::Sources;

/// Splits a fixture into the files of a repository.
fn sources(text: &str) -> Sources {
    let mut sources = Sources::default();
    let mut current: Option<(String, String)> = None;
    for line in text.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("# unreadable: ") {
            if let Some((p, t)) = current.take() {
                sources.add(p, t);
            }
            let (path, reason) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
            sources.add_unreadable(path, reason);
        } else if let Some(path) = line.strip_prefix("# file: ") {
            if let Some((p, t)) = current.take() {
                sources.add(p, t);
            }
            current = Some((path.trim().to_string(), String::new()));
        } else if let Some((_, t)) = current.as_mut() {
            t.push_str(line);
        }
    }
    if let Some((p, t)) = current {
        sources.add(p, t);
    }
    sources.sort();
    sources
}

fn render(sources: &Sources) -> (String, Vec<Code>) {
    let compilation = compile(sources);
    let mut out = String::new();
    for d in &compilation.diagnostics {
        out.push_str(&render_human(d, &sources.files, false));
    }
    (
        out,
        compilation.diagnostics.iter().map(|d| d.code).collect(),
    )
}

#[test]
fn fixtures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/diagnostics");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    let mut seen_codes = Vec::new();
    let mut failures = Vec::new();
    for dir in dirs {
        let code_name = dir.file_name().unwrap().to_string_lossy().to_string();
        let code = Code::ALL
            .iter()
            .copied()
            .find(|c| c.name() == code_name)
            .unwrap_or_else(|| panic!("{code_name}: no diagnostic code of that name"));
        seen_codes.push(code);
        let mut cases: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        cases.sort();
        assert!(!cases.is_empty(), "{code_name}: no fixture");
        for case in cases {
            let text = std::fs::read_to_string(&case).unwrap();
            let sources = sources(&text);
            let (rendered, codes) = render(&sources);
            let name = format!(
                "{code_name}__{}",
                case.file_stem().unwrap().to_string_lossy()
            );
            if !codes.contains(&code) {
                failures.push(format!(
                    "{name}: expected a `{code_name}` diagnostic, got {codes:?}\n{rendered}"
                ));
            }
            insta::assert_snapshot!(name, rendered);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let missing: Vec<_> = Code::ALL
        .iter()
        .filter(|c| !seen_codes.contains(c))
        .map(|c| c.name())
        .collect();
    assert!(missing.is_empty(), "codes without a fixture: {missing:?}");
}

#[test]
fn a_fixture_without_problems_is_clean() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clean.yaml"))
            .unwrap();
    let (rendered, _) = render(&sources(&text));
    assert_eq!(rendered, "");
}
