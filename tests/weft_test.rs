//! `weft test` end to end: every example's tests pass; a wrong URL, a wrong body, a missing mock
//! and a wrong status each fail with the right message and test-file line; test files are
//! checked like sources; the JSON, JUnit and GitHub outputs keep their shape; exit codes.

mod support;

use std::path::Path;

use assert_cmd::Command;
use support::{copy_tree, example};

fn weft() -> Command {
    let mut cmd = Command::cargo_bin("weft").unwrap();
    cmd.env("NO_COLOR", "1").env_remove("WEFT_LOG");
    cmd
}

/// A copy of `examples/event-import` whose only tests are `tests`: (file name, text).
fn event_import_with(tests: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&example("event-import"), dir.path());
    let folder = dir.path().join("integrations/shop-orders-to-crm/tests");
    std::fs::remove_dir_all(&folder).unwrap();
    std::fs::create_dir_all(&folder).unwrap();
    for (name, text) in tests {
        std::fs::write(folder.join(name), text).unwrap();
    }
    dir
}

/// Runs `weft test` with `args` on `dir`: exit code, stdout, stderr.
fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = weft().arg("test").arg(dir).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const BIG_ORDER: &str = "\
name: big order
customer: globex
flow: order-created
trigger:
  body: { id: o-1, amount_cents: 50000, customer: { email: ada@example.com, name: Ada } }
mocks:
  - request: { method: POST, url: \"https://crm.globex.example/customers\" }
    response: { status: 201, body: { id: c-1 } }
expect:
  steps:
    contact: { output: { external_id: o-1, amount: 500 } }
  skipped: [skip]
  requests:
    - { method: POST, url: \"https://crm.globex.example/customers\", body: { external_id: o-1 } }
";

#[test]
fn every_example_passes_its_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut examples: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("weft.yaml").is_file())
        .collect();
    examples.sort();
    let mut passed = 0;
    for dir in &examples {
        let (code, stdout, stderr) = run(dir, &["--format", "json"]);
        let report: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{}: {e}\n{stdout}\n{stderr}", dir.display()));
        assert_eq!(code, 0, "{}: {stdout}{stderr}", dir.display());
        assert_eq!(report["failed"], 0, "{}", dir.display());
        let count = report["passed"].as_u64().unwrap();
        assert!(count >= 2, "{}: only {count} tests", dir.display());
        passed += count;
    }
    assert!(passed >= 24, "{passed} tests passed");
    // No fixture is left in the old JSON format.
    for dir in &examples {
        for integration in std::fs::read_dir(dir.join("integrations")).unwrap() {
            let tests = integration.unwrap().path().join("tests");
            for f in std::fs::read_dir(&tests).into_iter().flatten() {
                let f = f.unwrap().path();
                assert!(
                    f.extension().is_some_and(|e| e == "yaml"),
                    "{}",
                    f.display()
                );
            }
        }
    }
}

#[test]
fn a_passing_test_exits_zero_and_retries_run_on_the_virtual_clock() {
    // Secrets get dummy values, masked in what is recorded, as in the execution history.
    let auth = BIG_ORDER.replace(
        "body: { external_id: o-1 } }",
        "headers: { Authorization: \"Bearer ***\" }, body: { external_id: o-1 } }",
    );
    let dir = event_import_with(&[
        ("auth.yaml", &auth),
        ("big-order.yaml", BIG_ORDER),
        (
            "crm-down.yaml",
            "customer: globex\nflow: order-created\ntrigger: { body: { id: o-2, amount_cents: 50000, customer: { email: a@b.example } } }\nmocks:\n  - request: { method: POST, url: \"https://crm.globex.example/*\" }\n    response: { status: 503 }\nexpect:\n  status: dead_lettered\n  steps: { push: { attempts: 5 } }\n",
        ),
    ]);
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = run(dir.path(), &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // 1 s + 2 s + 4 s + 8 s of backoff, without waiting for it.
    assert!(
        stdout.contains("crm-down.yaml) ... ok (virtual time 15.0 s)"),
        "{stdout}"
    );
    assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
    assert!(
        stdout.contains("test result: ok. 3 passed; 0 failed"),
        "{stdout}"
    );
}

#[test]
fn a_wrong_url_fails_naming_the_request() {
    let test = BIG_ORDER.replace(
        "url: \"https://crm.globex.example/customers\" }\n    response",
        "url: \"https://crm.globex.example/contacts\" }\n    response",
    );
    let dir = event_import_with(&[("wrong-url.yaml", &test)]);
    let (code, stdout, _) = run(dir.path(), &[]);
    assert_eq!(code, 1);
    insta::assert_snapshot!(stdout);
}

#[test]
fn a_wrong_body_fails_at_the_expected_field() {
    let test = BIG_ORDER.replace("body: { external_id: o-1 }", "body: { external_id: o-9 }");
    let dir = event_import_with(&[("wrong-body.yaml", &test)]);
    let (code, stdout, _) = run(dir.path(), &[]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("wrong-body.yaml:14:"),
        "the line of the expected body: {stdout}"
    );
    insta::assert_snapshot!(stdout);
}

#[test]
fn a_request_without_a_mock_fails_the_test() {
    let test =
        BIG_ORDER.split("mocks:").next().unwrap().to_string() + "expect:\n  status: succeeded\n";
    let dir = event_import_with(&[("no-mock.yaml", &test)]);
    let (code, stdout, _) = run(dir.path(), &[]);
    assert_eq!(code, 1);
    insta::assert_snapshot!(stdout);
}

#[test]
fn a_wrong_status_or_output_fails_with_expected_and_actual() {
    let test = BIG_ORDER
        .replace("amount: 500 }", "amount: 5000 }")
        .replace("expect:\n", "expect:\n  status: failed\n");
    let dir = event_import_with(&[("wrong-status.yaml", &test)]);
    let (code, stdout, _) = run(dir.path(), &[]);
    assert_eq!(code, 1);
    insta::assert_snapshot!(stdout);
}

#[test]
fn test_files_are_checked_like_sources() {
    let dir = event_import_with(&[
        (
            "unknown-customer.yaml",
            "customer: globx\nflow: order-created\n",
        ),
        (
            "unknown-flow.yaml",
            "customer: globex\nflow: order-creatd\n",
        ),
        (
            "unknown-step.yaml",
            "customer: globex\nflow: order-created\nmocks:\n  - { step: pusj, output: {} }\n  - { step: big-enough, output: {} }\nexpect:\n  steps: { contakt: {} }\n  skipped: [skip]\n",
        ),
        (
            "unknown-key.yaml",
            "customer: globex\nflow: order-created\nexpext: {}\n",
        ),
        (
            "unsafe-file.yaml",
            "customer: globex\nflow: order-created\nfiles: { \"../../escape.txt\": x, /etc/x: y }\n",
        ),
        (
            "typos.yaml",
            "customer: globex\nflow: order-created\nmocks:\n  - request: { method: POST, url: \"https://x\" }\n    respons: { status: 201 }\n  - { step: push, outptu: {} }\nexpect: { status: done }\n",
        ),
    ]);
    let (code, stdout, _) = run(dir.path(), &[]);
    assert_eq!(code, 1);
    insta::assert_snapshot!(stdout);
}

#[test]
fn junit_github_and_json_outputs() {
    let failing = BIG_ORDER.replace("body: { external_id: o-1 }", "body: { external_id: o-9 }");
    let dir = event_import_with(&[("a-pass.yaml", BIG_ORDER), ("b-fail.yaml", &failing)]);
    let (code, junit, _) = run(dir.path(), &["--format", "junit"]);
    assert_eq!(code, 1);
    insta::assert_snapshot!("junit", junit);
    let (_, github, _) = run(dir.path(), &["--format", "github"]);
    insta::assert_snapshot!("github", github);
    let (_, json, _) = run(dir.path(), &["--format", "json"]);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    insta::assert_json_snapshot!("json", value);
}

#[test]
fn coverage_lists_the_steps_and_cases_no_test_reached() {
    let dir = event_import_with(&[("big-order.yaml", BIG_ORDER)]);
    let (code, stdout, _) = run(dir.path(), &["--coverage"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains(
            "shop-orders-to-crm/order-created: 3/4 steps\n    steps no test ran: skip\n    branch cases no test took: big-enough default"
        ),
        "{stdout}"
    );
    let (_, json, _) = run(dir.path(), &["--coverage", "--format", "json"]);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        value["coverage"][0],
        serde_json::json!({
            "integration": "shop-orders-to-crm", "flow": "order-created", "steps": 4,
            "missed_steps": ["skip"], "missed_cases": ["big-enough default"]
        })
    );
}

#[test]
fn filters_select_tests() {
    let dir = event_import_with(&[("a-pass.yaml", BIG_ORDER), ("other.yaml", BIG_ORDER)]);
    let (code, stdout, _) = run(dir.path(), &["--filter", "other"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("1 passed"), "{stdout}");
    let (code, _, stderr) = run(dir.path(), &["--integration", "nope"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no integration `nope`"), "{stderr}");
}

#[test]
fn an_unreadable_test_file_is_a_usage_error() {
    let dir = event_import_with(&[]);
    std::fs::create_dir(
        dir.path()
            .join("integrations/shop-orders-to-crm/tests/odd.yaml"),
    )
    .unwrap();
    let (code, _, stderr) = run(dir.path(), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("odd.yaml: not a regular file"), "{stderr}");
}

/// Answers any request with 503 once, then 201 with a body that both examples read.
#[derive(Debug, Default)]
struct FlakyUpstream {
    calls: std::sync::Mutex<u32>,
}

impl weft_runtime::offline::OfflineHooks for FlakyUpstream {
    fn http(
        &self,
        request: weft_runtime::offline::MockRequest,
    ) -> Result<weft_runtime::offline::MockResponse, String> {
        let mut calls = self.calls.lock().unwrap();
        *calls += 1;
        let (status, body) = if *calls == 1 {
            (503, serde_json::json!({ "error": "busy" }))
        } else {
            (
                201,
                serde_json::json!({ "id": "c-9", "email": request.body["email"], "items": [{ "sku": "A-100", "available": 5 }] }),
            )
        };
        Ok(weft_runtime::offline::MockResponse {
            status,
            headers: Default::default(),
            body,
        })
    }
    fn step(&self, _: &str, _: &str) -> Option<weft_runtime::offline::StepOverride> {
        None
    }
    fn advance(&self, _: std::time::Duration) {}
}

/// Runs `flow` of `customer` in a copy of `example` on the runtime (its HTTP answered by
/// `hooks`), exports the execution with `weft executions export`, and runs the export with
/// `weft test`: it must pass. Returns the exported file's text.
fn export_and_replay(
    example_name: &str,
    integration: &str,
    customer: &str,
    flow: &str,
    trigger: serde_json::Value,
    hooks: std::sync::Arc<dyn weft_runtime::offline::OfflineHooks>,
) -> String {
    let repo = tempfile::tempdir().unwrap();
    copy_tree(&example(example_name), repo.path());
    let tests = repo
        .path()
        .join("integrations")
        .join(integration)
        .join("tests");
    std::fs::remove_dir_all(&tests).unwrap();
    let data = tempfile::tempdir().unwrap();
    let id = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let sources = weft_compiler::repo::read_repo(repo.path()).unwrap();
        let plans = weft_compiler::compile(&sources).plans;
        let secrets = plans
            .iter()
            .flat_map(|p| {
                p.secrets
                    .iter()
                    .map(|s| (s.clone(), "s3cr3t-value".to_string()))
            })
            .collect();
        let options = weft_runtime::Options {
            data_dir: data.path().to_path_buf(),
            offline: Some(hooks),
            ..Default::default()
        };
        let runtime = weft_runtime::start(plans, options, secrets).await.unwrap();
        let id = runtime.start_flow(customer, flow, trigger).await.unwrap();
        let conn = weft_runtime::history::open(data.path()).unwrap();
        for _ in 0..2000 {
            let done = weft_runtime::history::execution(&conn, &id)
                .unwrap()
                .is_some_and(|d| d.execution.finished_at.is_some());
            if done {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        runtime.stop();
        id
    });
    let file = tests.join("replay.yaml");
    weft()
        .args(["executions", "export", &id, "-o"])
        .arg(&file)
        .arg("--repo")
        .arg(repo.path())
        .arg("--data-dir")
        .arg(data.path())
        .assert()
        .success();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("s3cr3t-value"), "{text}");
    let (code, stdout, stderr) = run(repo.path(), &[]);
    assert_eq!(code, 0, "{text}\n{stdout}{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
    text.replace(&id, "<execution>")
}

#[test]
fn an_exported_execution_replays_as_a_passing_test() {
    // A component action: replaced by its output.
    let text = export_and_replay(
        "event-import",
        "shop-orders-to-crm",
        "globex",
        "order-created",
        serde_json::json!({ "body": { "id": "o-5", "amount_cents": 70000, "customer": { "email": "ada@example.com" } }, "headers": {}, "query": {} }),
        std::sync::Arc::new(FlakyUpstream::default()),
    );
    insta::assert_snapshot!("export_component_action", text);
    // An `http.get` step that fails once: both exchanges become mocks, in order.
    let text = export_and_replay(
        "sync-webhook",
        "stock-check",
        "globex",
        "check-stock",
        serde_json::json!({ "body": { "sku": "A-100", "quantity": 2 }, "headers": {}, "query": {} }),
        std::sync::Arc::new(FlakyUpstream::default()),
    );
    insta::assert_snapshot!("export_http_step", text);
}

/// A small repository: a webhook flow that waits an hour, a poll flow, a step that can fail.
const TIMERS: &[(&str, &str)] = &[
    ("weft.yaml", "weft: 1\n"),
    (
        "integrations/timers/integration.yaml",
        "weft: 1
name: timers
config:
  api_url: { type: url, default: \"http://api.example\" }
flows:
  later:
    trigger: { webhook: { path: /later } }
    steps:
      - { id: wait, uses: delay, with: { duration: 1h } }
      - { id: done, uses: transform, with: { value: { id: \"{{ trigger.body.id }}\" } } }
  items:
    trigger:
      poll: { every: 1m, uses: http.get, with: { url: \"{{ config.api_url }}/items\" }, items: \"{{ output.body }}\" }
    steps:
      - id: push
        uses: http.post
        with: { url: \"{{ config.api_url }}/copies\", body: { n: \"{{ trigger.item.n }}\" } }
        retry: { attempts: 3, backoff: fixed, initial: 10s }
",
    ),
    ("instances/acme/timers.yaml", "weft: 1\nintegration: timers\n"),
    (
        "integrations/timers/tests/delay.yaml",
        "customer: acme
flow: later
trigger: { body: { id: 7 } }
expect:
  steps: { done: { output: { id: 7 } } }
  requests: []
",
    ),
    (
        "integrations/timers/tests/poll-items.yaml",
        "customer: acme
flow: items
trigger: { items: [{ n: 1 }, { n: 2 }] }
mocks:
  - request: { method: POST, url: \"http://api.example/copies\" }
    response: { status: 201 }
expect:
  requests:
    - { method: POST, url: \"http://api.example/copies\", body: { n: 1 } }
    - { method: POST, url: \"http://api.example/copies\", body: { n: 2 } }
",
    ),
    (
        "integrations/timers/tests/step-mock.yaml",
        "customer: acme
flow: items
trigger: { item: { n: 3 } }
mocks:
  - { step: push, error: { status: 503, message: upstream down } }
expect:
  status: dead_lettered
  steps: { push: { attempts: 3 } }
  requests: []
",
    ),
];

#[test]
fn delays_poll_items_and_step_mocks() {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in TIMERS {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let (code, stdout, stderr) = run(dir.path(), &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // The hour passes on the virtual clock; two retries of 10 s each.
    assert!(
        stdout.contains("delay.yaml) ... ok (virtual time 3600.0 s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("step-mock.yaml) ... ok (virtual time 20.0 s)"),
        "{stdout}"
    );
    assert!(stdout.contains("poll-items.yaml) ... ok\n"), "{stdout}");
}

#[test]
fn weft_check_checks_test_files_too() {
    let dir = event_import_with(&[(
        "unknown-flow.yaml",
        "customer: globex\nflow: order-creatd\n",
    )]);
    let out = weft().arg("check").arg(dir.path()).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error[unknown-flow]: `shop-orders-to-crm` has no flow `order-creatd`")
            && stderr.contains("did you mean `order-created`?")
            && stderr.contains("check failed:")
            && stderr.contains("1 problem(s) in test files"),
        "{stderr}"
    );
    // Every example's test files are clean.
    weft()
        .arg("check")
        .arg(example("sync-webhook"))
        .assert()
        .success();
}
