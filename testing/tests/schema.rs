//! `schemas/test.schema.json` stays equal to what the test file model generates, and every
//! property is described. `WEFT_BLESS=1 cargo test -p weft-testing --test schema` rewrites it.

use std::path::Path;

use weft_compiler::schema::compile_schema;
use weft_testing::load::PUBLISHED_SCHEMA;
use weft_testing::model::json_schema;

#[test]
fn the_test_schema_matches_the_model() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/test.schema.json");
    let schema = json_schema();
    let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
    if std::env::var_os("WEFT_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    assert!(
        PUBLISHED_SCHEMA == text,
        "{} is stale: run `WEFT_BLESS=1 cargo test -p weft-testing --test schema` and review the diff",
        path.display()
    );
    compile_schema(&schema).expect("the schema compiles");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
}

#[test]
fn every_property_of_the_test_schema_is_described() {
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
                walk(name, def, missing);
            }
        }
    }
    let mut missing = Vec::new();
    walk("", &json_schema(), &mut missing);
    assert!(
        missing.is_empty(),
        "properties without a description: {missing:#?}"
    );
}
