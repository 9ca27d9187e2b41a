//! The published JSON Schemas (`schemas/`) and the generated docs stay equal to what the model
//! generates. `WEFT_BLESS=1 cargo test` rewrites them after a deliberate change.

use std::path::Path;

use weft_compiler::diagnostic::codes_markdown;
use weft_compiler::schema::{FileKind, compile_schema, generate};

fn check_file(path: &Path, expected: &str) {
    if std::env::var_os("WEFT_BLESS").is_some() {
        std::fs::write(path, expected).unwrap();
        return;
    }
    let actual = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        actual == expected,
        "{} is stale: the model changed. Run `WEFT_BLESS=1 cargo test -p weft-compiler --test schemas` and review the diff",
        path.display()
    );
}

#[test]
fn published_schemas_match_the_model() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    for kind in FileKind::ALL {
        let schema = generate(kind);
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        check_file(&dir.join(kind.schema_file()), &text);
        compile_schema(&schema).expect("the generated schema compiles");
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "schemas are draft 2020-12"
        );
    }
}

#[test]
fn the_plan_schema_matches_the_plan_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/plan.schema.json");
    let schema = weft_plan::json_schema();
    check_file(
        &path,
        &(serde_json::to_string_pretty(&schema).unwrap() + "\n"),
    );
    let validator = compile_schema(&schema).expect("the plan schema compiles");
    // Every plan the examples compile to is valid against it.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("weft.yaml").is_file() {
            continue;
        }
        let sources = weft_compiler::repo::read_repo(&dir).unwrap();
        for plan in weft_compiler::compile(&sources).plans {
            let value = serde_json::to_value(&plan).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{}: {errors:#?}", dir.display());
            checked += 1;
        }
    }
    assert!(checked > 5, "only {checked} plans checked");
}

#[test]
fn every_property_has_a_description() {
    fn walk(path: &str, v: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                let here = format!("{path}.{name}");
                if prop.get("description").is_none() {
                    missing.push(here.clone());
                }
                walk(&here, prop, missing);
            }
        }
        if let Some(defs) = v.get("$defs").and_then(|d| d.as_object()) {
            for (name, def) in defs {
                walk(&format!("$defs.{name}"), def, missing);
            }
        }
    }
    let mut missing = Vec::new();
    for kind in FileKind::ALL {
        walk(kind.schema_file(), &generate(kind), &mut missing);
    }
    walk("plan.schema.json", &weft_plan::json_schema(), &mut missing);
    assert!(
        missing.is_empty(),
        "properties without a description: {missing:#?}"
    );
}

#[test]
fn diagnostic_code_docs_are_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/diagnostics.md");
    check_file(&path, &codes_markdown());
}
