//! Property tests: whatever the input, the compiler returns diagnostics and never panics; and
//! the same sources always give the same plans.

use proptest::prelude::*;
use weft_compiler::compile;
use weft_compiler::repo::Sources;

const SEED: &str = include_str!("clean.yaml");

/// The clean fixture split into files (same `# file:` format as the diagnostic fixtures).
fn seed_files() -> Vec<(String, String)> {
    let mut files = Vec::new();
    for chunk in SEED.split("# file: ").skip(1) {
        let (path, text) = chunk.split_once('\n').unwrap();
        files.push((path.trim().to_string(), text.to_string()));
    }
    files
}

fn sources_from(files: &[(String, String)]) -> Sources {
    let mut s = Sources::default();
    for (p, t) in files {
        s.add(p.clone(), t.clone());
    }
    s
}

fn mutate(text: &str, edits: &[(usize, u8, u8)]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for &(pos, op, byte) in edits {
        if bytes.is_empty() {
            break;
        }
        let i = pos % bytes.len();
        const CHARS: &[u8] = b" :-{}[]\"'#\n\tab1{%}|>&*!";
        let ch = CHARS[byte as usize % CHARS.len()];
        match op % 3 {
            0 => {
                bytes.remove(i);
            }
            1 => bytes.insert(i, ch),
            _ => bytes[i] = ch,
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn mutated_repositories_never_panic(file in 0usize..4, edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)) {
        let mut files = seed_files();
        let i = file % files.len();
        files[i].1 = mutate(&files[i].1, &edits);
        let compilation = compile(&sources_from(&files));
        // Whatever happened, every diagnostic points inside a file that exists.
        for d in &compilation.diagnostics {
            for l in &d.labels {
                prop_assert!(l.file < files.len());
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let mut s = Sources::default();
        s.add("integrations/x/integration.yaml", text.clone());
        s.add("instances/c/x.yaml", text);
        let _ = compile(&s);
    }
}

#[test]
fn compilation_is_deterministic() {
    let files = seed_files();
    let first = compile(&sources_from(&files));
    assert!(first.diagnostics.is_empty());
    for _ in 0..5 {
        let again = compile(&sources_from(&files));
        assert_eq!(first.plans, again.plans);
    }
}
