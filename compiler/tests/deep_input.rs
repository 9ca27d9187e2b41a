//! Deeply nested input — YAML sequences and mappings, template lookups and filter chains —
//! gets a `too-deep` diagnostic instead of overflowing the stack (which aborts the process).

use weft_compiler::diagnostic::Code;
use weft_compiler::repo::Sources;

/// An integration whose only step logs `message` (YAML text, indented under `with:`).
fn integration(message: &str) -> String {
    format!(
        "weft: 1\nname: acme\nflows:\n  hello:\n    trigger: {{ webhook: {{ path: /hello }} }}\n    steps:\n      - id: say\n        uses: log\n        with:\n          message: {message}\n"
    )
}

/// Compiles one integration file on a thread with the default stack (compilation also runs
/// on rayon's threads), and returns the codes of its diagnostics.
fn codes(text: String) -> Vec<Code> {
    std::thread::spawn(move || {
        let mut sources = Sources::default();
        sources.add("integrations/acme/integration.yaml", text);
        let c = weft_compiler::compile(&sources);
        c.diagnostics.iter().map(|d| d.code).collect()
    })
    .join()
    .expect("compiling does not panic")
}

#[test]
fn a_block_sequence_ten_thousand_deep() {
    let text = format!("{}x\n", "- ".repeat(10_000));
    assert_eq!(text.len(), 20_002);
    assert_eq!(codes(text), [Code::TooDeep]);
}

#[test]
fn block_mappings_nested_as_deep_as_a_file_allows() {
    // One-space indentation: 1,400 levels fit in the 1 MiB a file may have.
    let mut text = String::from("weft: 1\nname: acme\nflows:\n");
    for level in 0..1_400 {
        text.push_str(&" ".repeat(level + 1));
        text.push_str("a:\n");
    }
    text.push_str(&" ".repeat(1_401));
    text.push_str("x\n");
    assert_eq!(codes(text), [Code::TooDeep]);
}

#[test]
fn flow_collections_are_bounded_too() {
    let message = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    assert_eq!(codes(integration(&message)), [Code::TooDeep]);
    let message = format!("{}1{}", "{a: ".repeat(100), "}".repeat(100));
    assert_eq!(codes(integration(&message)), [Code::TooDeep]);
}

#[test]
fn a_lookup_chain_of_fifty_thousand() {
    let message = format!("\"{{{{ trigger.body{} }}}}\"", ".a".repeat(50_000));
    assert_eq!(codes(integration(&message)), [Code::TooDeep]);
}

#[test]
fn a_filter_chain_of_forty_thousand() {
    let message = format!("\"{{{{ trigger.body{} }}}}\"", "|upper".repeat(40_000));
    assert_eq!(codes(integration(&message)), [Code::TooDeep]);
}

#[test]
fn an_operator_chain_and_nested_statements() {
    let message = format!("\"{{{{ 1{} }}}}\"", " + 1".repeat(40_000));
    assert_eq!(codes(integration(&message)), [Code::TooDeep]);
    // minijinja bounds nested statements itself (150 levels): a syntax error.
    let message = format!(
        "\"{}x{}\"",
        "{% if trigger.body %}".repeat(10_000),
        "{% endif %}".repeat(10_000)
    );
    assert_eq!(codes(integration(&message)), [Code::TemplateSyntax]);
}

#[test]
fn long_but_shallow_templates_are_fine() {
    // Many short expressions: each block is bounded on its own.
    let message = format!("\"{}\"", "{{ trigger.body.a.b.c | upper }} ".repeat(2_000));
    assert_eq!(codes(integration(&message)), []);
}
