//! A file with schema errors does not hide the semantic errors of other files; only errors
//! about the broken file itself, and about references to its names, are left out.

use weft_compiler::diagnostic::Code;
use weft_compiler::repo::Sources;

fn codes(files: &[(&str, &str)]) -> Vec<(String, Code)> {
    let mut sources = Sources::default();
    for (path, text) in files {
        sources.add(*path, *text);
    }
    sources.sort();
    let c = weft_compiler::check(&sources);
    c.diagnostics
        .iter()
        .map(|d| (sources.files[d.labels[0].file].path.clone(), d.code))
        .collect()
}

const SCHEMA_ERROR: &str =
    "weft: 1\nname: alpha\nflows:\n  x:\n    trigger: { deploy: {} }\n    stepz: []\n";
const SEMANTIC_ERROR: &str = "weft: 1\nname: beta\nflows:\n  x:\n    trigger: { deploy: {} }\n    steps: [{ id: s, uses: log, with: { message: \"{{ trigger_body }}\" } }]\n";

#[test]
fn a_schema_error_and_a_semantic_error_in_one_run() {
    let found = codes(&[
        ("integrations/alpha/integration.yaml", SCHEMA_ERROR),
        ("integrations/beta/integration.yaml", SEMANTIC_ERROR),
        // An instance of the broken integration: nothing to report about it.
        (
            "instances/acme/alpha.yaml",
            "weft: 1\nintegration: alpha\nconfig: { x: 1 }\n",
        ),
        // An instance with an error of its own, of an integration without errors.
        (
            "instances/acme/gamma.yaml",
            "weft: 1\nintegration: gamma\nconfig: { nope: 1 }\n",
        ),
        (
            "integrations/gamma/integration.yaml",
            "weft: 1\nname: gamma\nflows:\n  x:\n    trigger: { deploy: {} }\n",
        ),
    ]);
    assert_eq!(
        found,
        [
            (
                "instances/acme/gamma.yaml".to_string(),
                Code::UnknownConfigKey
            ),
            (
                "integrations/alpha/integration.yaml".to_string(),
                Code::UnknownKey
            ),
            (
                "integrations/beta/integration.yaml".to_string(),
                Code::UnknownVariable
            ),
        ]
    );
}

#[test]
fn a_broken_component_hides_only_references_to_it() {
    let found = codes(&[
        (
            "components/crm/component.yaml",
            "weft: 1\nname: crm\nactionz: {}\n",
        ),
        (
            "integrations/beta/integration.yaml",
            "weft: 1\nname: beta\nflows:\n  x:\n    trigger: { deploy: {} }\n    steps:\n      - { id: a, uses: crm.add }\n      - { id: b, uses: lgo }\n",
        ),
    ]);
    let codes: Vec<Code> = found.iter().map(|(_, c)| *c).collect();
    assert_eq!(
        codes,
        [Code::MissingField, Code::UnknownKey, Code::UnknownComponent]
    );
    assert_eq!(found[2].0, "integrations/beta/integration.yaml");
}
