//! ARCHITECTURE.md says only what exists: every file or folder it names in backticks is there.

use std::path::Path;

#[test]
fn every_path_the_architecture_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    // Paths in backticks, and the file names at the start of the code map's lines.
    let mut named: Vec<String> = text
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    named.extend(text.lines().filter_map(|l| {
        let first = l.split_whitespace().next()?;
        (first.ends_with(".rs") || first.ends_with('/')).then(|| first.to_string())
    }));
    let mut missing = Vec::new();
    let mut checked = 0;
    for name in named {
        let looks_like_path = (name.ends_with(".rs")
            || name.ends_with(".md")
            || name.ends_with(".json")
            || name.ends_with('/'))
            && !name.contains(' ')
            && !name.contains('<')
            && !name.contains('*');
        // Files of an emitted bundle, not of this repository.
        let emitted = ["plan.json", "bundle.json"].contains(&name.as_str());
        if !looks_like_path || emitted {
            continue;
        }
        checked += 1;
        // A bare file name is looked up anywhere under the crates' sources.
        let found = root.join(&name).exists()
            || [
                "compiler/src",
                "runtime/src",
                "plan/src",
                "testing/src",
                "src",
                "schemas",
                "tests",
            ]
            .iter()
            .any(|dir| root.join(dir).join(&name).exists());
        if !found {
            missing.push(name);
        }
    }
    assert!(checked > 30, "only {checked} paths checked");
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}
