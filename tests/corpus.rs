//! The corpus: every example repository and every shipped integration compiles with no
//! diagnostic at all, and every example yields at least one bundle.

use std::path::Path;

use weft_compiler::diagnostic::render_human;
use weft_compiler::repo::read_repo;

fn assert_clean(repo: &Path) -> usize {
    let sources = read_repo(repo).unwrap_or_else(|e| panic!("{}: {e}", repo.display()));
    let compilation = weft_compiler::compile(&sources);
    let rendered: String = compilation
        .diagnostics
        .iter()
        .map(|d| render_human(d, &sources.files, false))
        .collect();
    assert!(rendered.is_empty(), "{}:\n{rendered}", repo.display());
    compilation.plans.len()
}

#[test]
fn every_example_compiles_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 9,
        "one example per integration pattern: {dirs:?}"
    );
    for dir in dirs {
        let plans = assert_clean(&dir);
        assert!(
            plans > 0,
            "{}: an example has at least one instance",
            dir.display()
        );
    }
}

#[test]
fn shipped_integrations_compile_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = read_repo(root).unwrap();
    let integrations = sources
        .files
        .iter()
        .filter(|f| f.path.starts_with("integrations/"))
        .count();
    assert!(integrations >= 3, "a few ready integrations ship with weft");
    assert_clean(root);
}
