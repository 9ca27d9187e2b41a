//! Many customers in one runtime: instances of one integration version share its compiled
//! steps but keep their own config and credentials; one customer's flood or slow upstream
//! neither starves the others at a shared step nor fills the gateway for them.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::{GLOBEX_TOKEN, Running, Sink, TOKEN, repo};
use weft_compiler::repo::Sources;

/// A flow whose one step holds its slot for `duration`.
fn slow_flow(duration: &str) -> String {
    format!(
        r#"  slow:
    trigger:
      webhook:
        path: /slow
        auth: {{ hmac_sha256: {{ secret: "{{{{ config.hook_secret }}}}", header: X-Signature }} }}
    steps:
      - {{ id: wait, uses: delay, with: {{ duration: {duration} }} }}
"#
    )
}

/// The orders repository with acme, globex (its own token, a lower minimum) and initech (its
/// orders flow disabled) as customers.
fn three_customers(sources: Sources) -> Sources {
    let mut s = sources;
    s.add(
        "instances/globex/orders.yaml",
        "weft: 1\nintegration: orders\nconfig:\n  hook_secret: { secret: HOOK_SECRET }\n  token: { secret: CRM_TOKEN_GLOBEX }\n  min_amount: 0\n",
    );
    s.add(
        "instances/initech/orders.yaml",
        "weft: 1\nintegration: orders\nconfig:\n  hook_secret: { secret: HOOK_SECRET }\n  token: { secret: CRM_TOKEN }\nflows:\n  order-created: { enabled: false }\n",
    );
    s.sort();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_their_version_and_keep_their_own_config() {
    let (sink, addr) = Sink::start().await;
    let sources = three_customers(repo(addr, ""));
    let plans = support::compile(&sources);
    let dir = tempfile::tempdir().unwrap();
    let runtime = weft_runtime::start(
        plans,
        weft_runtime::Options {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        },
        support::secrets(),
    )
    .await
    .unwrap();
    let instances: Vec<_> = runtime.engine().instances().values().cloned().collect();
    assert_eq!(instances.len(), 3);
    assert!(
        instances
            .iter()
            .all(|i| Arc::ptr_eq(&i.version, &instances[0].version)),
        "one compiled version for the three customers"
    );
    let acme = instances.iter().find(|i| i.customer == "acme").unwrap();
    let globex = instances.iter().find(|i| i.customer == "globex").unwrap();
    let push = acme.flow("order-created").unwrap().steps["push"].clone();
    assert_eq!(acme.queue_of(&push), "weft.acme.orders.order-created.push");
    assert_eq!(
        globex.queue_of(&push),
        "weft.globex.orders.order-created.push"
    );
    runtime.stop();

    let rt = Running::start(&sources, None).await;
    // 5 is below acme's minimum (10) and above globex's (0): each reads its own config.
    for customer in ["acme", "globex"] {
        let r = rt
            .post_signed(
                customer,
                "/orders",
                &json!({ "id": customer, "amount_cents": 500 }),
            )
            .await;
        assert_eq!(r.status(), 202);
        let r = rt
            .post_signed(
                customer,
                "/orders",
                &json!({ "id": format!("{customer}-big"), "amount_cents": 5000 }),
            )
            .await;
        assert_eq!(r.status(), 202);
    }
    let r = rt
        .post_signed(
            "initech",
            "/orders",
            &json!({ "id": "i", "amount_cents": 5000 }),
        )
        .await;
    assert_eq!(r.status(), 404, "initech's flow is disabled");
    sink.wait_for(3).await;
    rt.wait_finished(4).await;
    assert_eq!(sink.count(), 3, "each delivered once");
    let received: Vec<(String, String)> = tokens_by_id(&sink).into_iter().collect();
    assert_eq!(
        received,
        [
            ("acme-big".to_string(), format!("Bearer {TOKEN}")),
            ("globex".to_string(), format!("Bearer {GLOBEX_TOKEN}")),
            ("globex-big".to_string(), format!("Bearer {GLOBEX_TOKEN}")),
        ],
        "each delivery carries its own customer's credentials"
    );
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_customer_gets_503_while_the_others_are_taken() {
    let (_sink, addr) = Sink::start().await;
    let sources = three_customers(repo(addr, &slow_flow("3s")));
    let rt = Running::start_tuned(&sources, None, |o| o.max_instance_pending = Some(3)).await;
    for i in 0..3 {
        let r = rt.post_signed("acme", "/slow", &json!({ "n": i })).await;
        assert_eq!(r.status(), 202);
    }
    let r = rt.post_signed("acme", "/slow", &json!({ "n": 3 })).await;
    assert_eq!(r.status(), 503, "acme has its share waiting");
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("this instance"),
        "{body}"
    );
    let r = rt.post_signed("globex", "/slow", &json!({ "n": 0 })).await;
    assert_eq!(r.status(), 202, "globex is still taken");
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_step_serves_customers_in_turn_and_keeps_slots_for_the_others() {
    let (_sink, addr) = Sink::start().await;
    let sources = three_customers(repo(addr, &slow_flow("150ms")));
    // Two slots at each step; one customer may hold at most one of them.
    let rt = Running::start_tuned(&sources, None, |o| {
        o.step_concurrency = 2;
        o.instance_concurrency = Some(1);
    })
    .await;
    for i in 0..12 {
        let r = rt.post_signed("acme", "/slow", &json!({ "n": i })).await;
        assert_eq!(r.status(), 202);
    }
    let r = rt.post_signed("globex", "/slow", &json!({ "n": 0 })).await;
    assert_eq!(r.status(), 202);
    let globex: String = r.json::<Value>().await.unwrap()["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    // acme's backlog takes 12 × 150 ms in its one slot; globex runs in the other at once.
    let mut finished_before = None;
    for _ in 0..200 {
        let executions = rt.executions();
        if executions
            .iter()
            .any(|e| e.id == globex && e.finished_at.is_some())
        {
            finished_before = Some(
                executions
                    .iter()
                    .filter(|e| e.id != globex && e.finished_at.is_some())
                    .count(),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acme_done = finished_before.expect("globex's execution finished");
    assert!(
        acme_done <= 3,
        "globex waited behind acme's backlog: {acme_done} of acme's 12 finished first"
    );
    rt.wait_finished(13).await;
    rt.stop().await;
}

/// The bearer token of each delivery at the sink, by event id.
fn tokens_by_id(sink: &Sink) -> std::collections::BTreeMap<String, String> {
    sink.received
        .lock()
        .unwrap()
        .iter()
        .map(|(headers, body)| {
            (
                body["id"].as_str().unwrap().to_string(),
                headers["authorization"].to_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_replaces_and_removes_instances_while_serving() {
    let (sink, addr) = Sink::start().await;
    let rt = Running::start(&three_customers(repo(addr, "")), None).await;
    let version = rt.reloader_version("acme/orders");
    for customer in ["acme", "globex"] {
        let body = json!({ "id": format!("{customer}-before"), "amount_cents": 5000 });
        assert_eq!(
            rt.post_signed(customer, "/orders", &body).await.status(),
            202
        );
    }
    sink.wait_for(2).await;

    // The next plans: acme's minimum lowered (replaced), globex and initech gone, hooli new
    // with a secret of its own.
    let mut sources = repo(addr, "");
    sources
        .files
        .retain(|f| f.path != "instances/acme/orders.yaml");
    sources.add(
        "instances/acme/orders.yaml",
        "weft: 1\nintegration: orders\nconfig:\n  hook_secret: { secret: HOOK_SECRET }\n  token: { secret: CRM_TOKEN }\n  min_amount: 1\n",
    );
    sources.add(
        "instances/hooli/orders.yaml",
        "weft: 1\nintegration: orders\nconfig:\n  hook_secret: { secret: HOOK_SECRET }\n  token: { secret: CRM_TOKEN_HOOLI }\n",
    );
    sources.sort();
    let mut secrets = support::secrets();
    secrets.insert("CRM_TOKEN_HOOLI".into(), "canary-hooli-token-77c2".into());
    let reloaded = rt
        .reloader
        .reload(support::compile(&sources), secrets.clone())
        .await
        .unwrap();
    assert_eq!(reloaded.added, ["hooli/orders"]);
    assert_eq!(reloaded.replaced, ["acme/orders"]);
    assert_eq!(reloaded.removed, ["globex/orders", "initech/orders"]);
    assert_eq!(reloaded.unchanged, 0);
    assert!(
        Arc::ptr_eq(&version, &rt.reloader_version("hooli/orders")),
        "the added instance shares the version compiled at start"
    );

    // 5 is now above acme's minimum; hooli delivers with its own token; globex is gone.
    for (customer, cents) in [("acme", 500), ("hooli", 5000)] {
        let body = json!({ "id": format!("{customer}-after"), "amount_cents": cents });
        assert_eq!(
            rt.post_signed(customer, "/orders", &body).await.status(),
            202
        );
    }
    let body = json!({ "id": "globex-after", "amount_cents": 5000 });
    assert_eq!(
        rt.post_signed("globex", "/orders", &body).await.status(),
        404
    );
    sink.wait_for(4).await;
    let tokens = tokens_by_id(&sink);
    assert_eq!(tokens["acme-after"], format!("Bearer {TOKEN}"));
    assert_eq!(tokens["hooli-after"], "Bearer canary-hooli-token-77c2");
    assert_eq!(tokens["globex-before"], format!("Bearer {GLOBEX_TOKEN}"));
    assert_eq!(tokens.len(), 4, "{tokens:?}");

    // The same plans again change nothing; hooli's secret stays masked in the history.
    let again = rt
        .reloader
        .reload(support::compile(&sources), secrets)
        .await
        .unwrap();
    assert_eq!((again.unchanged, again.is_empty()), (2, true));
    rt.wait_finished(4).await;
    let history = serde_json::to_string(&rt.executions()).unwrap();
    assert!(!history.contains("canary-hooli-token-77c2"));
    rt.stop().await;
}
