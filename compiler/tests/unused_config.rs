//! `unused-config`: a warning for a config variable nothing reads; reads in step inputs, branch
//! conditions, polls, schedules, webhook auth and connections all count.

use weft_compiler::diagnostic::{Code, Severity};
use weft_compiler::repo::Sources;

fn unused(config: &str, rest: &str) -> Vec<String> {
    let mut sources = Sources::default();
    let text = format!("weft: 1\nname: acme\nconfig:\n{config}{rest}");
    sources.add("integrations/acme/integration.yaml", text);
    let c = weft_compiler::check(&sources);
    assert!(
        c.diagnostics
            .iter()
            .all(|d| d.code == Code::UnusedConfig && d.severity == Severity::Warning),
        "{:?}",
        c.diagnostics
    );
    c.diagnostics.iter().map(|d| d.message.clone()).collect()
}

const CONFIG: &str = "  a: { type: string, default: x }\n  b: { type: string, default: \"0 2 * * *\" }\n  c: { type: string, default: x }\n";

#[test]
fn every_kind_of_read_counts() {
    let flows = "flows:\n  nightly:\n    trigger: { schedule: { cron: \"{{ config.b }}\" } }\n    steps:\n      - id: pick\n        uses: branch\n        with:\n          cases:\n            - when: \"{{ config.a == 'x' }}\"\n              steps: [{ id: say, uses: log, with: { message: hi } }]\n  poll:\n    trigger: { poll: { every: 5m, uses: http.get, with: { url: \"https://x.example/{{ config.c }}\" } } }\n";
    assert_eq!(unused(CONFIG, flows), Vec::<String>::new());
}

#[test]
fn an_unread_variable_is_reported_once() {
    let flows = "flows:\n  a:\n    trigger: { deploy: {} }\n    steps: [{ id: say, uses: log, with: { message: \"{{ config.a }}\" } }]\n";
    assert_eq!(
        unused(CONFIG, flows),
        [
            "config variable `b` is never read",
            "config variable `c` is never read"
        ]
    );
}

#[test]
fn a_computed_read_may_read_any() {
    let flows = "flows:\n  a:\n    trigger: { deploy: {} }\n    steps: [{ id: say, uses: log, with: { message: \"{{ config[trigger.deployed] }}\" } }]\n";
    assert_eq!(unused(CONFIG, flows), Vec::<String>::new());
}

#[test]
fn a_misspelt_read_is_reported_once() {
    let mut sources = Sources::default();
    let text = "weft: 1\nname: acme\nconfig:\n  region: { type: string, default: eu }\nflows:\n  a:\n    trigger: { deploy: {} }\n    steps: [{ id: say, uses: log, with: { message: \"{{ config.regoin }}\" } }]\n";
    sources.add("integrations/acme/integration.yaml", text);
    let c = weft_compiler::check(&sources);
    let codes: Vec<Code> = c.diagnostics.iter().map(|d| d.code).collect();
    assert_eq!(codes, [Code::UnknownConfigVariable]);
}
