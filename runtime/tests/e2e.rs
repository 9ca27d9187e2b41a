//! End-to-end tests of the runtime: real HTTP servers on 127.0.0.1, a real store on disk, the
//! compiler producing the plans. No mock of weft itself.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use support::{Running, SECRET, Sink, TOKEN, repo};
use weft_compiler::repo::Sources;
use weft_runtime::{Options, auth, history};
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_event_runs_through_transform_branch_and_post() {
    let (sink, addr) = Sink::start().await;
    let rt = Running::start(&repo(addr, ""), None).await;
    let r = rt
        .post_order(&json!({ "id": "o-1", "amount_cents": 2500 }))
        .await;
    assert_eq!(r.status(), 202);
    let execution = r.json::<Value>().await.unwrap()["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    sink.wait_for(1).await;
    let (headers, body) = sink.received.lock().unwrap()[0].clone();
    assert_eq!(body, json!({ "id": "o-1", "amount": 25.0 }));
    assert_eq!(headers["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(headers["idempotency-key"], format!("{execution}:push"));
    // Below the minimum: the default case runs, nothing is posted.
    assert_eq!(
        rt.post_order(&json!({ "id": "o-2", "amount_cents": 100 }))
            .await
            .status(),
        202
    );
    rt.wait_finished(2).await;
    assert_eq!(sink.count(), 1);
    let conn = history::open(rt.dir.path()).unwrap();
    let detail = history::execution(&conn, &execution).unwrap().unwrap();
    assert_eq!(detail.execution.status, "succeeded");
    let steps: Vec<&str> = detail.steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(steps, ["contact", "big-enough", "push"]);
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_nothing_is_enqueued() {
    let (sink, addr) = Sink::start().await;
    let rt = Running::start(&repo(addr, ""), None).await;
    let url = format!("{}/hooks/acme/orders/orders", rt.url);
    // Bad signature.
    let r = rt
        .client
        .post(&url)
        .header("content-type", "application/json")
        .header("X-Signature", "sha256=00ff")
        .body("{\"id\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // No signature.
    let r = rt.client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Malformed JSON, correctly signed.
    let raw = b"{\"id\": ".to_vec();
    let r = rt
        .client
        .post(&url)
        .header("content-type", "application/json")
        .header("X-Signature", auth::sign_hmac(SECRET.as_bytes(), &raw))
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("malformed JSON"));
    // 50 MB: refused with 413 before it is buffered (the limit here is 1 MB): the answer comes
    // after the headers alone, without a byte of the body sent.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = rt.url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /hooks/acme/orders/orders HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-Signature: sha256=00\r\nContent-Length: {}\r\n\r\n",
            50 * 1024 * 1024
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .expect("answered before the body")
            .unwrap();
        let status_line = String::from_utf8_lossy(&answer[..n]).to_string();
        assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
    }
    // Unknown path.
    assert_eq!(
        rt.client
            .post(format!("{}/hooks/acme/orders/nope", rt.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert!(rt.executions().is_empty(), "nothing was enqueued");
    assert_eq!(sink.count(), 0);
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_is_retried_until_it_recovers() {
    let (sink, addr) = Sink::start().await;
    sink.script.lock().unwrap().extend([503, 500]);
    let rt = Running::start(&repo(addr, ""), None).await;
    let r = rt
        .post_order(&json!({ "id": "o-3", "amount_cents": 5000 }))
        .await;
    let execution = r.json::<Value>().await.unwrap()["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    sink.wait_for(1).await;
    rt.wait_finished(1).await;
    let conn = history::open(rt.dir.path()).unwrap();
    let detail = history::execution(&conn, &execution).unwrap().unwrap();
    let push: Vec<(u32, &str)> = detail
        .steps
        .iter()
        .filter(|s| s.step == "push")
        .map(|s| (s.attempt, s.status.as_str()))
        .collect();
    assert_eq!(push, [(1, "retrying"), (2, "retrying"), (3, "succeeded")]);
    assert_eq!(detail.execution.status, "succeeded");
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_sink_dead_letters_then_replays_after_a_fix() {
    let (sink, addr) = Sink::start().await;
    *sink.always.lock().unwrap() = Some(503);
    let rt = Running::start(&repo(addr, ""), None).await;
    rt.post_order(&json!({ "id": "o-4", "amount_cents": 5000 }))
        .await;
    rt.wait_finished(1).await;
    let conn = history::open(rt.dir.path()).unwrap();
    let letters = history::dead_letters(&conn).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].step, "push");
    assert!(letters[0].error.contains("503"), "{}", letters[0].error);
    assert_eq!(rt.executions()[0].status, "failed");
    // The fix: the sink recovers; the dead letter is replayed (as `weft dlq replay` does).
    *sink.always.lock().unwrap() = None;
    let store =
        weft_runtime::store::Store::open(&rt.dir.path().join("weft.db"), Box::new(|_| {})).unwrap();
    store
        .commit(vec![weft_runtime::store::Op::RequestReplay {
            dead_letter: letters[0].id,
        }])
        .await
        .unwrap();
    sink.wait_for(1).await;
    for _ in 0..200 {
        if rt.executions()[0].status == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(rt.executions()[0].status, "succeeded");
    assert!(history::dead_letters(&conn).unwrap().is_empty());
    rt.stop().await;
}

const SYNC_FLOWS: &str = r#"  lookup:
    trigger: { webhook: { path: /lookup, respond: sync, timeout: 2s } }
    steps:
      - id: found
        uses: transform
        with: { value: { sku: "{{ trigger.body.sku }}", stock: 7 } }
      - id: answer
        uses: respond
        with: { status: 200, body: { sku: "{{ steps.found.sku }}", in_stock: "{{ steps.found.stock }}" } }
  slow:
    trigger: { webhook: { path: /slow, respond: sync, timeout: 300ms } }
    steps:
      - { id: wait, uses: delay, with: { duration: 1s } }
      - { id: answer, uses: respond, with: { status: 200, body: late } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_webhooks_answer_with_the_respond_step_or_time_out() {
    let (_sink, addr) = Sink::start().await;
    let rt = Running::start(&repo(addr, SYNC_FLOWS), None).await;
    let r = rt
        .client
        .post(format!("{}/hooks/acme/orders/lookup", rt.url))
        .json(&json!({ "sku": "A-1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-weft-execution-id"));
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "sku": "A-1", "in_stock": 7 })
    );
    let r = rt
        .client
        .post(format!("{}/hooks/acme/orders/slow", rt.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let execution = r.json::<Value>().await.unwrap()["execution_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The execution keeps running after the timeout.
    for _ in 0..200 {
        let conn = history::open(rt.dir.path()).unwrap();
        if history::execution(&conn, &execution)
            .unwrap()
            .is_some_and(|d| d.execution.status == "succeeded")
        {
            rt.stop().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the slow execution did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_appear_only_where_they_are_used() {
    let (sink, addr) = Sink::start().await;
    *sink.always.lock().unwrap() = Some(500);
    let extra = r#"  leaky:
    trigger: { webhook: { path: /leaky } }
    steps:
      - { id: say, uses: log, with: { message: "token is {{ config.token }}" } }
      - { id: fail, uses: http.post, with: { url: "{{ config.sink_url }}/x?t={{ config.token }}", body: "{{ config.token }}" }, retry: { attempts: 2, initial: 10ms }, on_error: dead_letter }
      - { id: never, uses: transform, with: { value: "{{ config.nope_missing }}" } }
"#;
    let mut sources = repo(addr, extra);
    // `config.nope_missing` is a compile error; keep the template failure for run time instead.
    for f in &mut sources.files {
        f.text = f.text.replace(
            "{{ config.nope_missing }}",
            "{{ trigger.body.missing.deeper }}",
        );
    }
    let sources = {
        let mut s = Sources::default();
        for f in sources.files {
            s.add(f.path, f.text);
        }
        s
    };
    let rt = Running::start(&sources, None).await;
    rt.client
        .post(format!("{}/hooks/acme/orders/leaky", rt.url))
        .json(&json!({ "secret_echo": TOKEN }))
        .send()
        .await
        .unwrap();
    rt.wait_finished(1).await;
    let dir = rt.stop().await;
    // Everything the runtime wrote down: history, dead letters, the database file itself.
    let conn = history::open(dir.path()).unwrap();
    let mut written = String::new();
    for e in history::executions(&conn, None, None, 100).unwrap() {
        written
            .push_str(&serde_json::to_string(&history::execution(&conn, &e.id).unwrap()).unwrap());
    }
    written.push_str(&serde_json::to_string(&history::dead_letters(&conn).unwrap()).unwrap());
    assert!(written.contains("***"), "secrets are masked: {written}");
    for canary in [TOKEN, SECRET] {
        assert!(
            !written.contains(canary),
            "{canary} leaked into the history: {written}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_standard_webhook_id_is_enqueued_once() {
    let (_sink, addr) = Sink::start().await;
    let extra = r#"  std:
    trigger: { webhook: { path: /std, auth: { standard_webhooks: { secret: "{{ config.hook_secret }}" } } } }
    steps:
      - { id: note, uses: log, with: { message: "{{ trigger.body.n }}" } }
"#;
    let rt = Running::start(&repo(addr, extra), None).await;
    let body = br#"{"n":1}"#;
    let ts = chrono::Utc::now().timestamp();
    let sig = auth::sign_standard(&auth::standard_key(SECRET), "msg_1", ts, body);
    let send = || {
        rt.client
            .post(format!("{}/hooks/acme/orders/std", rt.url))
            .header("content-type", "application/json")
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig.clone())
            .body(body.to_vec())
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 202);
    let again = send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "duplicate");
    // An old timestamp is refused.
    let old = auth::sign_standard(&auth::standard_key(SECRET), "msg_2", ts - 600, body);
    let r = rt
        .client
        .post(format!("{}/hooks/acme/orders/std", rt.url))
        .header("webhook-id", "msg_2")
        .header("webhook-timestamp", (ts - 600).to_string())
        .header("webhook-signature", old)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    rt.wait_finished(1).await;
    assert_eq!(rt.executions().len(), 1);
    rt.stop().await;
}

#[test]
fn missing_secrets_are_named_before_anything_starts() {
    let sources = repo("127.0.0.1:9".parse().unwrap(), "");
    let plans = weft_compiler::compile(&sources).plans;
    let err = weft_runtime::resolve_secrets(&plans, &|_| None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HOOK_SECRET") && err.contains("CRM_TOKEN"),
        "{err}"
    );
}

/// An API with `total` orders, listed after a cursor: `GET /orders?after=N` → up to 5 orders.
async fn orders_api(total: usize) -> (SocketAddr, Arc<Mutex<usize>>) {
    let calls = Arc::new(Mutex::new(0usize));
    let counter = calls.clone();
    let app = Router::new().route(
        "/orders",
        axum::routing::get(
            move |axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>| {
                let counter = counter.clone();
                async move {
                    *counter.lock().unwrap() += 1;
                    let after: usize = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
                    let items: Vec<Value> = (after + 1..=total.min(after + 5))
                        .map(|n| json!({ "n": n }))
                        .collect();
                    axum::Json(json!({ "orders": items }))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_cursor_survives_a_restart_without_double_or_gap() {
    let (sink, sink_addr) = Sink::start().await;
    let (api, _) = orders_api(12).await;
    let extra = format!(
        r#"  poll-orders:
    trigger:
      poll:
        every: 100ms
        uses: http.get
        with: {{ url: "http://{api}/orders", query: {{ after: "{{{{ cursor | default(0) }}}}" }} }}
        items: "{{{{ output.orders }}}}"
        cursor: "{{{{ (items | map(attribute='n') | max) }}}}"
    steps:
      - {{ id: deliver, uses: http.post, with: {{ url: "{{{{ config.sink_url }}}}/seen", body: {{ id: "{{{{ trigger.item.n }}}}" }} }} }}
"#
    );
    let sources = repo(sink_addr, &extra);
    let rt = Running::start(&sources, None).await;
    // Let it take a page or two, then stop mid-way.
    for _ in 0..200 {
        if sink.count() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dir = rt.stop().await;
    let before = sink.count();
    let rt = Running::start(&sources, Some(dir)).await;
    sink.wait_for(12).await;
    tokio::time::sleep(Duration::from_millis(400)).await; // more polls: nothing new must arrive
    let ids: Vec<String> = sink
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b["id"].to_string())
        .collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 12, "no gap: {ids:?}");
    assert_eq!(ids.len(), 12, "no double (stopped after {before}): {ids:?}");
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_runs_once_per_occurrence_across_restarts() {
    let (_sink, sink_addr) = Sink::start().await;
    let extra = r#"  every-second:
    trigger: { schedule: { cron: "* * * * * *", timezone: Europe/Berlin } }
    steps:
      - { id: tick, uses: log, with: { message: "tick {{ trigger.time }}" } }
"#;
    let sources = repo(sink_addr, extra);
    let rt = Running::start(&sources, None).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let dir = rt.stop().await;
    let rt = Running::start(&sources, Some(dir)).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let conn = history::open(rt.dir.path()).unwrap();
    let runs = history::executions(&conn, Some("every-second"), None, 100).unwrap();
    let mut times: Vec<String> = runs
        .iter()
        .map(|e| {
            history::execution(&conn, &e.id).unwrap().unwrap().trigger["scheduled_at"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let total = times.len();
    times.sort();
    times.dedup();
    assert_eq!(times.len(), total, "an occurrence ran twice: {times:?}");
    assert!(
        total >= 3,
        "the schedule ran before and after the restart: {times:?}"
    );
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_fan_out_and_dispatch_starts_the_sibling_flow() {
    let (sink, sink_addr) = Sink::start().await;
    let extra = r#"  lines:
    trigger: { webhook: { path: /lines } }
    steps:
      - id: each
        uses: for_each
        with: { items: "{{ trigger.body.lines }}" }
        steps:
          - { id: line, uses: http.post, with: { url: "{{ config.sink_url }}/lines", body: { sku: "{{ item.sku }}", position: "{{ index }}" } } }
      - { id: hand-over, uses: dispatch, with: { flow: audit, payload: { count: "{{ steps.each.count }}" } } }
  audit:
    trigger: { webhook: { path: /audit } }
    steps:
      - { id: record, uses: http.post, with: { url: "{{ config.sink_url }}/audit", body: { lines: "{{ trigger.body.count }}" } } }
"#;
    let rt = Running::start(&repo(sink_addr, extra), None).await;
    let r = rt
        .client
        .post(format!("{}/hooks/acme/orders/lines", rt.url))
        .json(&json!({ "lines": [{ "sku": "A" }, { "sku": "B" }, { "sku": "C" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    sink.wait_for(4).await;
    let bodies: Vec<Value> = sink
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    for sku in ["A", "B", "C"] {
        assert!(bodies.iter().any(|b| b["sku"] == sku), "{bodies:?}");
    }
    assert!(bodies.contains(&json!({ "lines": 3 })), "{bodies:?}");
    // Each loop item has its own idempotency key.
    let keys: HashSet<String> = sink
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|(h, _)| h["idempotency-key"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(keys.len(), 4);
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_are_served() {
    let (sink, addr) = Sink::start().await;
    let rt = Running::start(&repo(addr, ""), None).await;
    rt.post_order(&json!({ "id": "m-1", "amount_cents": 5000 }))
        .await;
    sink.wait_for(1).await;
    assert_eq!(
        rt.client
            .get(format!("{}/healthz", rt.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = rt
        .client
        .get(format!("{}/metrics", rt.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "weft_queue_depth",
        "weft_step_duration_seconds_bucket",
        "weft_webhook_requests_total",
        "weft_executions_started_total",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_components_run_over_http() {
    // The component's container: POST /actions/<action> with {input, connection} → {output}.
    let calls: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = calls.clone();
    let app = Router::new().route(
        "/actions/{action}",
        post(
            move |axum::extract::Path(action): axum::extract::Path<String>,
                  axum::Json(body): axum::Json<Value>| {
                let seen = seen.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push(json!({ "action": action, "body": body }));
                    if body["input"]["sku"] == "unknown" {
                        return (
                            StatusCode::NOT_FOUND,
                            axum::Json(json!({ "error": "no such sku" })),
                        );
                    }
                    (
                        StatusCode::OK,
                        axum::Json(
                            json!({ "output": { "score": 42, "sku": body["input"]["sku"] } }),
                        ),
                    )
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let component_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (sink, sink_addr) = Sink::start().await;
    let extra = r#"  score:
    trigger: { webhook: { path: /score } }
    steps:
      - { id: rate, uses: scorer.rate, connection: scoring, with: { sku: "{{ trigger.body.sku }}" }, on_error: fail }
      - { id: keep, uses: http.post, with: { url: "{{ config.sink_url }}/scores", body: "{{ steps.rate }}" } }
"#;
    let mut sources = repo(sink_addr, extra);
    for f in &mut sources.files {
        if f.path == "integrations/orders/integration.yaml" {
            f.text = f.text.replacen("flows:\n", "connections:\n  scoring: { component: scorer, auth: api_key, with: { key: \"{{ config.token }}\" } }\nflows:\n", 1);
        }
    }
    sources.add(
        "components/scorer/component.yaml",
        "weft: 1\nname: scorer\nimage: registry.example/scorer:1\nauth:\n  api_key: { fields: { key: { type: secret } } }\nactions:\n  rate:\n    input: { type: object, required: [sku], properties: { sku: { type: string } } }\n",
    );
    sources.sort();
    let urls = HashMap::from([("scorer".to_string(), format!("http://{component_addr}"))]);
    let rt = Running::start_with(&sources, None, urls).await;
    rt.client
        .post(format!("{}/hooks/acme/orders/score", rt.url))
        .json(&json!({ "sku": "A-1" }))
        .send()
        .await
        .unwrap();
    sink.wait_for(1).await;
    assert_eq!(
        sink.received.lock().unwrap()[0].1,
        json!({ "score": 42, "sku": "A-1" })
    );
    let first = calls.lock().unwrap()[0].clone();
    assert_eq!(first["action"], "rate");
    assert_eq!(
        first["body"]["connection"]["key"], TOKEN,
        "the connection's fields go to the component"
    );
    // A 4xx from the component is a permanent failure: no retry, the execution fails.
    rt.client
        .post(format!("{}/hooks/acme/orders/score", rt.url))
        .json(&json!({ "sku": "unknown" }))
        .send()
        .await
        .unwrap();
    rt.wait_finished(2).await;
    assert_eq!(calls.lock().unwrap().len(), 2, "not retried");
    assert!(rt.executions().iter().any(|e| e.status == "failed"));
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runtime_per_data_folder() {
    let (_sink, addr) = Sink::start().await;
    let sources = repo(addr, "");
    let rt = Running::start(&sources, None).await;
    let plans = weft_compiler::compile(&sources).plans;
    let options = Options {
        data_dir: rt.dir.path().to_path_buf(),
        ..Default::default()
    };
    let err = weft_runtime::start(plans, options, support::secrets())
        .await
        .err()
        .expect("a second runtime is refused");
    assert!(matches!(err, weft_runtime::StartError::Locked(_)), "{err}");
    assert!(err.to_string().contains("another `weft run`"), "{err}");
    rt.stop().await;
}
