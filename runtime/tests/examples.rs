//! Every example runs events through, end to end: for each fixture in
//! `examples/<example>/integrations/<integration>/tests/*.json`, the flow runs on the embedded
//! runtime against local stand-ins for the APIs the example calls (answering with the
//! fixture's `responses`), and the execution must end as the fixture expects.
//!
//! Fixture format:
//! ```json
//! { "customer": "globex", "flow": "order-created",
//!   "trigger": { "body": { ... } },
//!   "responses": { "GET /articles/A-1": { "status": 200, "body": { ... } } },
//!   "files": { "data/inbox/prices.csv": "sku,price\nA,1\n" },
//!   "expect": "succeeded", "expect_requests": 1 }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::Value;
use weft_runtime::{Options, history};

#[derive(Debug, Deserialize)]
struct Fixture {
    customer: String,
    flow: String,
    trigger: Value,
    #[serde(default)]
    responses: BTreeMap<String, Response>,
    #[serde(default)]
    files: BTreeMap<String, String>,
    #[serde(default = "succeeded")]
    expect: String,
    #[serde(default)]
    expect_requests: usize,
}

fn succeeded() -> String {
    "succeeded".into()
}

#[derive(Debug, Clone, Deserialize)]
struct Response {
    #[serde(default = "ok")]
    status: u16,
    #[serde(default)]
    body: Value,
}

fn ok() -> u16 {
    200
}

/// Stand-ins for every API: answer from the current fixture's responses, record each request.
#[derive(Clone, Default)]
struct Stubs {
    responses: Arc<Mutex<BTreeMap<String, Response>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn answer(
    State(stubs): State<Stubs>,
    method: Method,
    uri: Uri,
    _body: Bytes,
) -> axum::response::Response {
    let key = format!("{method} {}", uri.path());
    stubs.requests.lock().unwrap().push(key.clone());
    let response = stubs
        .responses
        .lock()
        .unwrap()
        .get(&key)
        .cloned()
        .unwrap_or(Response {
            status: 200,
            body: serde_json::json!({}),
        });
    (
        StatusCode::from_u16(response.status).unwrap(),
        axum::Json(response.body),
    )
        .into_response()
}

fn loopback_ports(value: &Value, out: &mut HashSet<u16>) {
    match value {
        Value::String(s) => {
            if let Some(rest) = s.strip_prefix("http://127.0.0.1:")
                && let Ok(port) = rest.split(['/', '?']).next().unwrap_or_default().parse()
            {
                out.insert(port);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| loopback_ports(v, out)),
        Value::Object(map) => map.values().for_each(|v| loopback_ports(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_runs_its_fixtures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut examples: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    examples.sort();
    let stubs = Stubs::default();
    let mut bound = HashSet::new();
    let mut ran = 0;
    // File steps work relative to the current folder: give them a scratch one.
    let scratch = tempfile::tempdir().unwrap();
    std::env::set_current_dir(scratch.path()).unwrap();
    for example in examples {
        let sources = weft_compiler::repo::read_repo(&example).unwrap();
        let compilation = weft_compiler::compile(&sources);
        assert_eq!(compilation.error_count(), 0, "{}", example.display());
        let mut fixtures = Vec::new();
        for integration in std::fs::read_dir(example.join("integrations")).unwrap() {
            let tests = integration.unwrap().path().join("tests");
            if let Ok(entries) = std::fs::read_dir(&tests) {
                for f in entries {
                    let f = f.unwrap().path();
                    if f.extension().is_some_and(|e| e == "json") {
                        let fixture: Fixture =
                            serde_json::from_str(&std::fs::read_to_string(&f).unwrap())
                                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                        fixtures.push((f, fixture));
                    }
                }
            }
        }
        fixtures.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(
            !fixtures.is_empty(),
            "{}: no fixture under integrations/*/tests/",
            example.display()
        );
        // Stand-ins on every loopback port the example's config points at.
        let mut ports = HashSet::new();
        for plan in &compilation.plans {
            loopback_ports(&serde_json::to_value(&plan.config).unwrap(), &mut ports);
        }
        for port in ports {
            if bound.insert(port) {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap_or_else(|e| panic!("port {port}: {e}"));
                let app = axum::Router::new()
                    .fallback(answer)
                    .with_state(stubs.clone());
                tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            }
        }
        let secrets: HashMap<String, String> = compilation
            .plans
            .iter()
            .flat_map(|p| {
                p.secrets
                    .iter()
                    .map(|s| (s.clone(), format!("test-{}", s.to_lowercase())))
            })
            .collect();
        let data = tempfile::tempdir().unwrap();
        let options = Options {
            data_dir: data.path().to_path_buf(),
            ..Default::default()
        };
        let runtime = weft_runtime::start(compilation.plans.clone(), options, secrets)
            .await
            .unwrap();
        for (path, fixture) in &fixtures {
            *stubs.responses.lock().unwrap() = fixture.responses.clone();
            stubs.requests.lock().unwrap().clear();
            for (file, text) in &fixture.files {
                let p = scratch.path().join(file);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, text).unwrap();
            }
            let id = runtime
                .start_flow(&fixture.customer, &fixture.flow, fixture.trigger.clone())
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let mut status = String::new();
            for _ in 0..400 {
                let conn = history::open(data.path()).unwrap();
                if let Some(d) = history::execution(&conn, &id).unwrap()
                    && d.execution.finished_at.is_some()
                {
                    status = d.execution.status.clone();
                    if status != fixture.expect {
                        panic!(
                            "{}: execution {status}, expected {}: {:#?}",
                            path.display(),
                            fixture.expect,
                            d.steps
                                .iter()
                                .map(|s| (&s.step, &s.status, &s.error))
                                .collect::<Vec<_>>()
                        );
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            assert_eq!(
                status,
                fixture.expect,
                "{}: the execution did not finish",
                path.display()
            );
            let requests = stubs.requests.lock().unwrap().len();
            assert!(
                requests >= fixture.expect_requests,
                "{}: {requests} API calls, expected at least {}",
                path.display(),
                fixture.expect_requests
            );
            ran += 1;
        }
        runtime.stop();
    }
    assert!(ran >= 9, "ran {ran} fixtures");
}
