//! `trigger.<field>` is checked against what the runtime sets for the flow's trigger kind, and
//! for a payload dispatched to it.

use weft_compiler::repo::Sources;

/// The messages of the diagnostics of an integration with `flows`.
fn messages(flows: &str) -> Vec<String> {
    let mut sources = Sources::default();
    let text = format!("weft: 1\nname: acme\nflows:\n{flows}");
    sources.add("integrations/acme/integration.yaml", text);
    let c = weft_compiler::check(&sources);
    c.diagnostics.iter().map(|d| d.message.clone()).collect()
}

/// One flow with `trigger` and a step logging `message`.
fn flow(name: &str, trigger: &str, message: &str) -> String {
    format!(
        "  {name}:\n    trigger: {trigger}\n    steps: [{{ id: say, uses: log, with: {{ message: \"{message}\" }} }}]\n"
    )
}

#[test]
fn each_kind_has_its_fields() {
    let webhook = "{ webhook: { path: /x } }";
    let ok = [
        (
            webhook,
            "{{ trigger.body.id }} {{ trigger.headers }} {{ trigger.query.page }} {{ trigger.method }} {{ trigger.path }}",
        ),
        (
            "{ schedule: { cron: '0 2 * * *' } }",
            "{{ trigger.time }} {{ trigger.scheduled_at }}",
        ),
        (
            "{ poll: { every: 5m, uses: http.get, with: { url: 'https://x.example' } } }",
            "{{ trigger.item.id }} {{ trigger.cursor }}",
        ),
        (
            "{ deploy: {} }",
            "{{ trigger.deployed }} {{ trigger.plan_hash }}",
        ),
    ];
    for (trigger, message) in ok {
        assert_eq!(
            messages(&flow("f", trigger, message)),
            Vec::<String>::new(),
            "{trigger}"
        );
    }
    let refused = [
        (webhook, "{{ trigger.time }}"),
        ("{ schedule: { cron: '0 2 * * *' } }", "{{ trigger.body }}"),
        (
            "{ poll: { every: 5m, uses: http.get, with: { url: 'https://x.example' } } }",
            "{{ trigger.body }}",
        ),
        ("{ deploy: {} }", "{{ trigger.item }}"),
    ];
    for (trigger, message) in refused {
        assert_eq!(
            messages(&flow("f", trigger, message)).len(),
            1,
            "{trigger}: {message}"
        );
    }
}

#[test]
fn a_dispatched_flow_also_has_the_payload() {
    let source = "  nightly:\n    trigger: { schedule: { cron: '0 2 * * *' } }\n    steps:\n      - id: each\n        uses: for_each\n        with: { items: '{{ [1, 2] }}' }\n        steps: [{ id: send, uses: dispatch, with: { flow: one, payload: '{{ item }}' } }]\n";
    let target = flow(
        "one",
        "{ deploy: {} }",
        "{{ trigger.body }} {{ trigger.dispatched_from.flow }} {{ trigger.plan_hash }}",
    );
    assert_eq!(messages(&format!("{source}{target}")), Vec::<String>::new());
    // Without the dispatch, the same flow has no payload.
    assert_eq!(
        messages(&target),
        [
            "`trigger` has no field `body` here",
            "`trigger` has no field `dispatched_from` here"
        ]
    );
}
