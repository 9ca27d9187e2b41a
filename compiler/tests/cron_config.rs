//! A schedule may be a template over config: each instance's plan gets its own cron
//! expression, checked with that instance's values.

use weft_compiler::diagnostic::Code;
use weft_compiler::plan::Trigger;
use weft_compiler::repo::Sources;

const INTEGRATION: &str = "weft: 1\nname: acme\nconfig:\n  nightly_at: { type: string, default: \"0 2 * * *\" }\nflows:\n  nightly:\n    trigger: { schedule: { cron: \"{{ config.nightly_at }}\" } }\n    steps: [{ id: say, uses: log, with: { message: hi } }]\n";

fn compile(instances: &[(&str, &str)]) -> weft_compiler::Compilation {
    let mut sources = Sources::default();
    sources.add("integrations/acme/integration.yaml", INTEGRATION);
    for (customer, text) in instances {
        sources.add(format!("instances/{customer}/acme.yaml"), *text);
    }
    sources.sort();
    weft_compiler::compile(&sources)
}

#[test]
fn each_instance_gets_its_own_schedule() {
    let c = compile(&[
        (
            "beta",
            "weft: 1\nintegration: acme\nconfig: { nightly_at: \"30 5 * * 1-5\" }\n",
        ),
        ("gamma", "weft: 1\nintegration: acme\n"),
    ]);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let crons: Vec<String> = c
        .plans
        .iter()
        .map(|p| match &p.flows[0].trigger {
            Trigger::Schedule { cron, .. } => cron.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(crons, ["30 5 * * 1-5", "0 2 * * *"]);
    // The integration itself keeps the template.
    let ci = &c.integrations["acme"];
    assert!(
        matches!(&ci.flows[0].trigger, Trigger::Schedule { cron, .. } if cron == "{{ config.nightly_at }}")
    );
}

#[test]
fn an_invalid_value_is_reported_on_the_instance() {
    let c = compile(&[
        (
            "beta",
            "weft: 1\nintegration: acme\nconfig: { nightly_at: \"0 25 * * *\" }\n",
        ),
        ("gamma", "weft: 1\nintegration: acme\n"),
    ]);
    let found: Vec<(Code, usize)> = c
        .diagnostics
        .iter()
        .map(|d| (d.code, d.labels[0].file))
        .collect();
    // File 0: instances/beta/acme.yaml.
    assert_eq!(found, [(Code::InvalidSchedule, 0)]);
    assert!(c.diagnostics[0].message.contains("`0 25 * * *`"));
    assert_eq!(c.plans.len(), 1);
    assert_eq!(c.plans[0].customer, "gamma");
}

#[test]
fn a_literal_invalid_cron_says_what_is_allowed() {
    let text = INTEGRATION.replace("{{ config.nightly_at }}", "{ config.nightly_at }");
    let mut sources = Sources::default();
    sources.add("integrations/acme/integration.yaml", text);
    let c = weft_compiler::compile(&sources);
    // And a warning: `nightly_at` is no longer read.
    let errors: Vec<_> = c.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert_eq!(errors.len(), 1);
    let message = &errors[0].message;
    assert!(
        message.contains("5 fields") && message.contains("template over config"),
        "{message}"
    );
    assert!(!message.contains("illegal character"), "{message}");
}
