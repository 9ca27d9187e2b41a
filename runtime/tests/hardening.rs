//! What hostile callers, hostile upstreams and a full disk do to the runtime: each test is one
//! attack of the hardening review, against a real runtime on 127.0.0.1 and a real store.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Running, Sink, TOKEN, repo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_compiler::repo::Sources;
use weft_runtime::history;
use weft_runtime::store::{NewExecution, NewMessage, Op, Store, StoreError};

/// The orders repository plus one unauthenticated webhook flow whose single step is `step`.
fn repo_with(sink: std::net::SocketAddr, name: &str, steps: &str) -> Sources {
    repo(
        sink,
        &format!(
            "  {name}:\n    trigger:\n      webhook: {{ path: /{name} }}\n    steps:\n{steps}"
        ),
    )
}

/// The run's only execution ended other than succeeded, with an error that mentions `text`.
fn assert_failed_with(rt: &Running, text: &str) {
    let e = &rt.executions()[0];
    assert_ne!(e.status, "succeeded");
    assert!(
        e.error.as_deref().unwrap_or_default().contains(text),
        "{:?}",
        e.error
    );
}

async fn post(rt: &Running, path: &str, body: &Value) -> reqwest::Response {
    rt.client
        .post(format!("{}/hooks/acme/orders/{path}", rt.url))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Reads what the server sends until it closes the connection or `limit` passes.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_answered_before_their_body_is_read() {
    let (_, addr) = Sink::start().await;
    let rt = Running::start(&repo(addr, ""), None).await;
    let host = rt.url.trim_start_matches("http://").to_string();
    // 40 callers each announce 9 MiB for a path with no webhook, and send none of it.
    let mut answered = 0;
    for _ in 0..40 {
        let mut s = TcpStream::connect(&host).await.unwrap();
        let head = format!(
            "POST /hooks/acme/orders/nope HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            9 * 1024 * 1024
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let (text, _) = read_until_closed(&mut s, Duration::from_secs(2)).await;
        assert!(text.starts_with("HTTP/1.1 404"), "{text}");
        answered += 1;
    }
    assert_eq!(answered, 40);
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_in_flight_share_one_budget_and_slow_ones_time_out() {
    let (_, addr) = Sink::start().await;
    let rt = Running::start_tuned(&repo(addr, ""), None, |o| {
        o.body_budget = 256 * 1024;
        o.read_timeout = Duration::from_secs(2);
    })
    .await;
    let host = rt.url.trim_start_matches("http://").to_string();
    let body = vec![b' '; 100 * 1024];
    let mut stalled = Vec::new();
    // Each caller sends 100 KiB of a 900 KiB body, then stalls: two fit the 256 KiB budget.
    for _ in 0..2 {
        let mut s = TcpStream::connect(&host).await.unwrap();
        let head = "POST /hooks/acme/orders/orders HTTP/1.1\r\nHost: x\r\nX-Signature: 00\r\nContent-Type: application/json\r\nContent-Length: 921600\r\n\r\n";
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = TcpStream::connect(&host).await.unwrap();
    let head = "POST /hooks/acme/orders/orders HTTP/1.1\r\nHost: x\r\nX-Signature: 00\r\nContent-Type: application/json\r\nContent-Length: 921600\r\n\r\n";
    third.write_all(head.as_bytes()).await.unwrap();
    let _ = third.write_all(&body).await;
    let (text, _) = read_until_closed(&mut third, Duration::from_secs(3)).await;
    assert!(text.starts_with("HTTP/1.1 503"), "over the budget: {text}");
    // The stalled callers are cut off at the body timeout.
    for mut s in stalled {
        let (text, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(closed);
    }
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_headers_and_idle_connections_are_closed_and_connections_are_capped() {
    let (_, addr) = Sink::start().await;
    let rt = Running::start_tuned(&repo(addr, ""), None, |o| {
        o.read_timeout = Duration::from_secs(1);
        o.max_connections = 8;
    })
    .await;
    let host = rt.url.trim_start_matches("http://").to_string();
    let mut partial = TcpStream::connect(&host).await.unwrap();
    partial
        .write_all(b"POST /hooks/acme/orders/orders HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut partial, Duration::from_secs(4)).await;
    assert!(closed, "a partial header is closed");
    assert!(started.elapsed() < Duration::from_secs(4));
    // Eight idle connections take every slot; a ninth is closed at once.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(&host).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ninth = TcpStream::connect(&host).await.unwrap();
    let (_, closed) = read_until_closed(&mut ninth, Duration::from_millis(800)).await;
    assert!(closed, "past the cap, a connection is closed at once");
    // Idle ones are closed after the read timeout, and the slots come back.
    for s in &mut idle {
        let (_, closed) = read_until_closed(s, Duration::from_secs(4)).await;
        assert!(closed, "an idle connection is closed");
    }
    let r = reqwest::get(format!("{}/healthz", rt.url)).await.unwrap();
    assert_eq!(r.status(), 200);
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_bombs_fail_the_step_without_building_the_value() {
    let (_, addr) = Sink::start().await;
    let steps = "      - { id: grow, uses: transform, with: { value: \"{{ [1,2,3,4,5,6,7,8,9,10] * trigger.body.n }}\" } }\n      - { id: pretty, uses: transform, with: { value: \"{{ 'x' | tojson(indent=trigger.body.n) }}\" } }\n";
    let rt = Running::start(&repo_with(addr, "bomb", steps), None).await;
    let started = Instant::now();
    assert_eq!(
        post(&rt, "bomb", &json!({ "n": 10_000_000 }))
            .await
            .status(),
        202
    );
    rt.wait_finished(1).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(rt.executions()[0].status, "failed");
    assert_failed_with(&rt, "exceeds");
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_is_refused_at_the_gateway() {
    let (_, addr) = Sink::start().await;
    let steps = "      - { id: keep, uses: transform, with: { value: \"{{ trigger.body }}\" } }\n";
    let rt = Running::start(&repo_with(addr, "deep", steps), None).await;
    let nest = |n: usize| (0..n).fold(json!(1), |v, _| json!([v]));
    let r = post(&rt, "deep", &nest(127)).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("nests deeper"));
    assert_eq!(post(&rt, "deep", &nest(60)).await.status(), 202);
    rt.wait_finished(1).await;
    assert_eq!(rt.executions()[0].status, "succeeded");
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_message_fails_its_execution() {
    let (_, addr) = Sink::start().await;
    let sources = repo(addr, "");
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    {
        let store = Store::open(&dir.path().join("weft.db"), Box::new(|_| {})).unwrap();
        store
            .commit(vec![
                Op::StartExecution(NewExecution {
                    id: "ex-1".into(),
                    instance: "acme/orders".into(),
                    flow: "order-created".into(),
                    trigger: "{}".into(),
                    started_at: now,
                }),
                Op::Enqueue(NewMessage {
                    queue: "weft.acme.orders.order-created.contact".into(),
                    execution: "ex-1".into(),
                    visible_at: 0,
                    attempt: 1,
                    body: "{ not json".into(),
                    parsed: None,
                }),
                Op::Pending {
                    execution: "ex-1".into(),
                    delta: 1,
                    at: now,
                },
            ])
            .await
            .unwrap();
    }
    let rt = Running::start(&sources, Some(dir)).await;
    rt.wait_finished(1).await;
    let e = &rt.executions()[0];
    assert_eq!(e.status, "failed", "{:?}", e.error);
    let conn = history::open(rt.dir.path()).unwrap();
    assert_eq!(history::dead_letters(&conn).unwrap().len(), 1);
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_cut_by_the_error_excerpt_is_masked_first() {
    let (sink, addr) = Sink::start().await;
    // The upstream answers 400 with the token straddling the 300-character cut.
    *sink.always.lock().unwrap() = Some(400);
    *sink.answer.lock().unwrap() = Some(format!("{{\"e\":\"{}{TOKEN}\"}}", "x".repeat(290)));
    let rt = Running::start(&repo(addr, ""), None).await;
    rt.post_order(&json!({ "id": "o-1", "amount_cents": 5000 }))
        .await;
    rt.wait_finished(1).await;
    let e = &rt.executions()[0];
    let error = e.error.clone().unwrap_or_default();
    assert!(error.contains("400"), "{error}");
    assert!(
        !error.contains("canary-crm"),
        "a prefix of the token leaked: {error}"
    );
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_keep_no_secret_in_their_body() {
    let (echo, echo_addr) = Sink::start().await;
    *echo.answer.lock().unwrap() = Some("{\"seen\": {headers}}".into());
    let (failing, failing_addr) = Sink::start().await;
    *failing.always.lock().unwrap() = Some(400);
    let steps = format!(
        "      - {{ id: echo, uses: http.post, with: {{ url: \"http://{echo_addr}/x\", headers: {{ Authorization: \"Bearer {{{{ config.token }}}}\" }}, body: {{ a: 1 }} }} }}\n      - {{ id: fail, uses: http.post, with: {{ url: \"http://{failing_addr}/y\", body: \"{{{{ steps.echo.body }}}}\" }} }}\n"
    );
    let rt = Running::start(&repo_with(echo_addr, "leak", &steps), None).await;
    assert_eq!(post(&rt, "leak", &json!({})).await.status(), 202);
    rt.wait_finished(1).await;
    let conn = rusqlite::Connection::open(rt.dir.path().join("weft.db")).unwrap();
    let bodies: Vec<String> = conn
        .prepare("SELECT body FROM dead_letters")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(bodies.len(), 1);
    assert!(!bodies[0].contains(TOKEN), "{}", bodies[0]);
    assert!(bodies[0].contains("Bearer ***"), "{}", bodies[0]);
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_retries_the_commit_not_the_step() {
    let (sink, addr) = Sink::start().await;
    let rt = Running::start_tuned(&repo(addr, ""), None, |o| {
        o.max_store_bytes = Some(160 * 1024);
    })
    .await;
    // Fill the store until the gateway can no longer store events.
    let mut accepted = 0;
    for i in 0..400 {
        let r = rt
            .post_order(
                &json!({ "id": format!("o-{i}"), "amount_cents": 5000, "pad": "p".repeat(2000) }),
            )
            .await;
        if r.status() == 202 {
            accepted += 1;
        } else {
            assert_eq!(r.status(), 503);
            break;
        }
    }
    assert!(accepted > 0 && accepted < 400, "accepted {accepted}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for (_, body) in sink.received.lock().unwrap().iter() {
        *per_id.entry(body["id"].to_string()).or_default() += 1;
    }
    let most = per_id.values().copied().max().unwrap_or(0);
    assert!(
        most <= 1,
        "a step was rerun {most} times while its commit failed"
    );
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upstream_answer_fails_the_step() {
    let (sink, addr) = Sink::start().await;
    *sink.answer.lock().unwrap() = Some(format!("\"{}\"", "z".repeat(200_000)));
    let rt = Running::start_tuned(&repo(addr, ""), None, |o| o.max_output = 64 * 1024).await;
    rt.post_order(&json!({ "id": "o-1", "amount_cents": 5000 }))
        .await;
    rt.wait_finished(1).await;
    assert_failed_with(&rt, "exceeds");
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_to_an_unknown_flow_fails_the_step() {
    let (_, addr) = Sink::start().await;
    // The compiler checks dispatch targets: a plan edited by hand (or built by another version)
    // is how a dispatch reaches a flow that does not exist.
    let steps = "      - { id: hand-off, uses: dispatch, with: { flow: order-created, payload: 1 }, on_error: fail }\n";
    let mut plans = support::compile(&repo_with(addr, "relay", steps));
    for flow in &mut plans[0].flows {
        for step in &mut flow.steps {
            if step.id == "hand-off" {
                step.with.insert("flow".into(), json!("nowhere"));
            }
        }
    }
    let rt = Running::start_plans(plans, None, |_| {}).await;
    assert_eq!(post(&rt, "relay", &json!({})).await.status(), 202);
    rt.wait_finished(1).await;
    assert_eq!(rt.executions()[0].status, "failed");
    assert_failed_with(&rt, "nowhere");
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plans_body_limit_is_the_gateways() {
    let (_, addr) = Sink::start().await;
    let mut sources = Sources::default();
    for (path, text) in repo(addr, "")
        .files
        .iter()
        .map(|f| (f.path.clone(), f.text.clone()))
    {
        let text = if path == "weft.yaml" {
            "weft: 1\ngateway: { max_body: 100KB }\n".to_string()
        } else {
            text
        };
        sources.add(path, text);
    }
    sources.sort();
    let rt = Running::start_tuned(&sources, None, |o| o.max_body = 10_000_000).await;
    let big = json!({ "id": "o-1", "amount_cents": 5, "pad": "p".repeat(150_000) });
    assert_eq!(rt.post_order(&big).await.status(), 413);
    let small = json!({ "id": "o-1", "amount_cents": 5, "pad": "p".repeat(50_000) });
    assert_eq!(rt.post_order(&small).await.status(), 202);
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_in_a_batch_leaves_no_trace_and_fails_no_neighbour() {
    let dir = tempfile::tempdir().unwrap();
    let dispatched: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let seen = dispatched.clone();
    let store = Store::open(
        &dir.path().join("weft.db"),
        Box::new(move |messages: Vec<weft_runtime::store::StoredMessage>| {
            seen.lock()
                .unwrap()
                .extend(messages.into_iter().map(|m| m.execution));
        }),
    )
    .unwrap();
    // Many concurrent requests share group commits (one transaction per batch). Every fifth
    // enqueues a message and then claims a key claimed before: it fails after part of it was
    // applied, and must take none of its batch's other requests with it.
    store
        .commit(vec![Op::Claim {
            key: "taken".into(),
            at: 1,
        }])
        .await
        .unwrap();
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ops = vec![Op::Enqueue(NewMessage {
                    queue: "q".into(),
                    execution: format!("e-{i}"),
                    visible_at: 0,
                    attempt: 1,
                    body: "{}".into(),
                    parsed: None,
                })];
                if i % 5 == 0 {
                    ops.push(Op::Claim {
                        key: "taken".into(),
                        at: 2,
                    });
                }
                (i, store.commit(ops).await)
            })
        })
        .collect();
    let mut committed = Vec::new();
    for task in tasks {
        let (i, result) = task.await.unwrap();
        if i % 5 == 0 {
            assert!(
                matches!(result, Err(StoreError::Duplicate(_))),
                "request {i}: {result:?}"
            );
        } else {
            assert_eq!(result.unwrap().enqueued.len(), 1, "request {i}");
            committed.push(format!("e-{i}"));
        }
    }
    committed.sort();
    let mut stored: Vec<String> = store
        .pending_messages()
        .unwrap()
        .into_iter()
        .map(|m| m.execution)
        .collect();
    stored.sort();
    assert_eq!(
        stored, committed,
        "exactly the successful requests' messages are stored"
    );
    let mut handed_on = dispatched.lock().unwrap().clone();
    handed_on.sort();
    assert_eq!(handed_on, committed, "and only they reach their queues");
    // The last handle gone, the writer finishes and releases the file: it opens again.
    drop(store);
    let again = Store::open(&dir.path().join("weft.db"), Box::new(|_| {})).unwrap();
    assert_eq!(again.pending_messages().unwrap().len(), committed.len());
}

/// A message with an empty body for `execution` on queue `q`.
fn enqueue_on_q(execution: &str) -> Op {
    Op::Enqueue(NewMessage {
        queue: "q".into(),
        execution: execution.into(),
        visible_at: 0,
        attempt: 1,
        body: "{}".into(),
        parsed: None,
    })
}

#[tokio::test]
async fn dead_letter_ids_are_never_reused_and_old_claims_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("weft.db"), Box::new(|_| {})).unwrap();
    let dead = |id: i64| Op::DeadLetter {
        id,
        step: "s".into(),
        error: "e".into(),
        at: 1,
        body: None,
    };
    let first = store
        .commit(vec![enqueue_on_q("a")])
        .await
        .unwrap()
        .enqueued[0];
    store.commit(vec![dead(first)]).await.unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("weft.db")).unwrap();
    let dl_id = |conn: &rusqlite::Connection| -> i64 {
        conn.query_row("SELECT max(id) FROM dead_letters", [], |r| r.get(0))
            .unwrap()
    };
    let first_dead = dl_id(&conn);
    let replayed = store
        .commit(vec![Op::Replay {
            dead_letter: first_dead,
            at: 1,
        }])
        .await
        .unwrap()
        .enqueued[0];
    assert_ne!(replayed, first, "a message id is never reused");
    store.commit(vec![dead(replayed)]).await.unwrap();
    assert_ne!(dl_id(&conn), first_dead, "a dead-letter id is never reused");
    // Claims: a repeat is a typed duplicate until the claim is pruned.
    let claim = |at| Op::Claim {
        key: "webhook-id:acme/orders:flow:msg-1".into(),
        at,
    };
    store.commit(vec![claim(1_000)]).await.unwrap();
    assert!(matches!(
        store.commit(vec![claim(2_000)]).await,
        Err(StoreError::Duplicate(_))
    ));
    store
        .commit(vec![Op::Prune {
            keep: 1000,
            before: 0,
            claims_before: Some(1_500),
        }])
        .await
        .unwrap();
    store.commit(vec![claim(3_000)]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_pruned_oldest_first_in_batches_by_count_and_by_age() {
    use weft_runtime::store::{PRUNE_BATCH, StepRun};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.db");
    let store = Store::open(&path, Box::new(|_| {})).unwrap();
    let total = 2 * PRUNE_BATCH + 700;
    // Executions started a millisecond apart; the third is still running. Each has a step run
    // in its row (the commit that starts it) and one in `step_runs` (a later commit).
    let mut ops = Vec::new();
    let mut later = Vec::new();
    for i in 0..total {
        let id = format!("ex-{i:05}");
        ops.push(Op::StartExecution(NewExecution {
            id: id.clone(),
            instance: "acme/orders".into(),
            flow: "f".into(),
            trigger: "{}".into(),
            started_at: 1_000 + i as i64,
        }));
        let run = StepRun {
            execution: id.clone(),
            step: "s".into(),
            attempt: 1,
            status: weft_plan::StepRunStatus::Succeeded,
            input: None,
            output: Some("{}".into()),
            error: None,
            started_at: 1_000 + i as i64,
            duration_ms: 1,
        };
        later.push(Op::RecordStep(run.clone()));
        ops.push(Op::RecordStep(run));
        ops.push(Op::Pending {
            execution: id,
            delta: i64::from(i == 2),
            at: 1_000 + i as i64,
        });
    }
    store.commit(ops).await.unwrap();
    store.commit(later).await.unwrap();
    let prune = |keep: i64, before: i64| Op::Prune {
        keep,
        before,
        claims_before: None,
    };
    let conn = rusqlite::Connection::open(&path).unwrap();
    let ids = |conn: &rusqlite::Connection, table: &str, column: &str| -> Vec<String> {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT DISTINCT {column} FROM {table} ORDER BY {column}"
            ))
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    // By count: the newest 100 stay, in batches; the running one stays too.
    let mut batches = Vec::new();
    loop {
        let pruned = store.commit(vec![prune(100, 0)]).await.unwrap().pruned;
        batches.push(pruned);
        if pruned < PRUNE_BATCH {
            break;
        }
    }
    let due = total - 100 - 1;
    assert_eq!(
        batches.len(),
        due / PRUNE_BATCH + 1,
        "one batch per commit: {batches:?}"
    );
    assert_eq!(batches.iter().sum::<usize>(), due);
    let kept = ids(&conn, "executions", "id");
    assert_eq!(kept.len(), 101);
    assert_eq!(kept[0], "ex-00002", "a running execution is never pruned");
    assert_eq!(kept[1], format!("ex-{:05}", total - 100));
    assert_eq!(
        ids(&conn, "step_runs", "execution"),
        kept,
        "step runs go with them"
    );
    // By age: those started before the cut go, whatever the count.
    let cut = 1_000 + total as i64 - 40;
    assert_eq!(
        store.commit(vec![prune(10_000, cut)]).await.unwrap().pruned,
        60
    );
    let kept = ids(&conn, "executions", "id");
    assert_eq!(kept.len(), 41);
    assert_eq!(ids(&conn, "step_runs", "execution"), kept);
    assert_eq!(
        store.commit(vec![prune(10_000, cut)]).await.unwrap().pruned,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_cron_in_a_plan_stops_the_start_with_a_clear_error() {
    let (_, addr) = Sink::start().await;
    let sources = repo(
        addr,
        "  nightly:\n    trigger: { schedule: { cron: \"0 3 * * *\" } }\n    steps:\n      - { id: note, uses: log, with: { message: hi } }\n",
    );
    let mut plans = weft_compiler::compile(&sources).plans;
    for flow in &mut plans[0].flows {
        if let weft_plan::Trigger::Schedule { cron, .. } = &mut flow.trigger {
            *cron = "61 * * * *".into();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let options = weft_runtime::Options {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let err = weft_runtime::start(plans, options, support::secrets())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("cron"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_credentials_echoed_by_an_upstream_are_masked() {
    let (echo, addr) = Sink::start().await;
    *echo.answer.lock().unwrap() = Some("{\"seen\": {headers}}".into());
    let mut sources = Sources::default();
    sources.add("weft.yaml", "weft: 1\n");
    sources.add(
        "components/ledger/component.yaml",
        format!(
            "weft: 1\nname: ledger\nbase_url: http://{addr}\nauth:\n  basic:\n    fields:\n      username: {{ type: string }}\n      password: {{ type: secret }}\nactions:\n  post:\n    http: {{ method: POST, path: /entries, body: \"{{{{ input.body }}}}\" }}\n"
        ),
    );
    sources.add(
        "integrations/books/integration.yaml",
        "weft: 1\nname: books\nconfig:\n  password: { type: secret }\nconnections:\n  ledger: { component: ledger, auth: basic, with: { username: ada, password: \"{{ config.password }}\" } }\nflows:\n  entry:\n    trigger: { webhook: { path: /entry } }\n    steps:\n      - { id: book, uses: ledger.post, connection: ledger, with: { body: { n: 1 } } }\n",
    );
    sources.add(
        "instances/acme/books.yaml",
        "weft: 1\nintegration: books\nconfig:\n  password: { secret: CRM_TOKEN }\n",
    );
    sources.sort();
    let rt = Running::start(&sources, None).await;
    let r = rt
        .client
        .post(format!("{}/hooks/acme/books/entry", rt.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    rt.wait_finished(1).await;
    // The upstream saw the real header; weft's history keeps neither the password nor the
    // base64 of `ada:<password>` that carries it.
    let sent = echo.received.lock().unwrap()[0].0["authorization"]
        .to_str()
        .unwrap()
        .to_string();
    let encoded = sent.trim_start_matches("Basic ").to_string();
    assert!(sent.starts_with("Basic ") && encoded.len() > 8, "{sent}");
    let conn = rusqlite::Connection::open(rt.dir.path().join("weft.db")).unwrap();
    let outputs: Vec<String> = conn
        .prepare(
            "SELECT coalesce(output, '') || coalesce(error, '') FROM step_runs
             UNION ALL SELECT coalesce(opening_runs, '') || coalesce(closing_runs, '') FROM executions",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let all = outputs.join("\n");
    assert!(all.contains("Basic ***"), "{all}");
    assert!(!all.contains(&encoded) && !all.contains(TOKEN), "{all}");
    rt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_runs_read_back_in_order_wherever_the_store_wrote_them() {
    use weft_runtime::store::{DeadLetterRecord, StepRun};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.db");
    let store = Store::open(&path, Box::new(|_| {})).unwrap();
    let run = |step: &str, at: i64, output: &str| {
        Op::RecordStep(StepRun {
            execution: "ex-1".into(),
            step: step.into(),
            attempt: 1,
            status: weft_plan::StepRunStatus::Succeeded,
            input: Some(r#"{"n":"a \"quoted\" word"}"#.into()),
            output: Some(output.into()),
            error: (step == "b").then(|| "it said \"no\"\n".to_string()),
            started_at: at,
            duration_ms: 1,
        })
    };
    let pending = |delta: i64, at: i64| Op::Pending {
        execution: "ex-1".into(),
        delta,
        at,
    };
    // The commit that starts it (a fused step, one message on), one in the middle (a message
    // done, another on), the one that finishes it (two steps).
    let start = Op::StartExecution(NewExecution {
        id: "ex-1".into(),
        instance: "acme/orders".into(),
        flow: "f".into(),
        trigger: "{}".into(),
        started_at: 1_000,
    });
    for ops in [
        vec![start, run("a", 1_000, "1"), pending(1, 1_000)],
        vec![run("b", 1_001, "{\"k\":[2]}"), pending(0, 1_001)],
        vec![
            run("c", 1_002, "3"),
            run("d", 1_002, "\"x\""),
            pending(-1, 1_002),
        ],
    ] {
        store.commit(ops).await.unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (opening, closing, rows): (String, String, i64) = conn
        .query_row(
            "SELECT opening_runs, closing_runs, (SELECT count(*) FROM step_runs) FROM executions",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(
        opening.contains("\"a\"") && closing.contains("\"d\""),
        "{opening} {closing}"
    );
    assert_eq!(rows, 1, "the middle commit's run is a row");
    let read = |conn: &rusqlite::Connection| {
        let detail = history::execution(conn, "ex-1").unwrap().unwrap();
        let steps: Vec<(String, Value)> = detail
            .steps
            .iter()
            .map(|s| (s.step.clone(), s.output.clone()))
            .collect();
        (detail, steps)
    };
    let reader = history::open(dir.path()).unwrap();
    let (detail, steps) = read(&reader);
    assert_eq!(detail.execution.status, "succeeded");
    assert_eq!(
        steps,
        [
            ("a".to_string(), json!(1)),
            ("b".to_string(), json!({ "k": [2] })),
            ("c".to_string(), json!(3)),
            ("d".to_string(), json!("x")),
        ]
    );
    assert!(
        detail
            .steps
            .iter()
            .all(|s| s.input == json!({ "n": "a \"quoted\" word" }))
    );
    assert_eq!(detail.steps[1].error.as_deref(), Some("it said \"no\"\n"));
    // Replayed, it finishes again: the first closing runs stay, the new run comes after them.
    store
        .commit(vec![Op::RecordDeadLetter(DeadLetterRecord {
            queue: "q".into(),
            execution: "ex-1".into(),
            step: "e".into(),
            attempt: 1,
            body: "{}".into(),
            error: "boom".into(),
            at: 1_003,
        })])
        .await
        .unwrap();
    let letter = history::dead_letters(&reader).unwrap()[0].id;
    store
        .commit(vec![Op::Replayed {
            dead_letter: letter,
        }])
        .await
        .unwrap();
    assert_eq!(read(&reader).0.execution.status, "running");
    store
        .commit(vec![run("e", 1_004, "5"), pending(-1, 1_004)])
        .await
        .unwrap();
    let (detail, steps) = read(&reader);
    assert_eq!(detail.execution.status, "succeeded");
    let names: Vec<&str> = steps.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_before_executions_held_step_runs_opens_and_reads_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.db");
    {
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE executions (id TEXT PRIMARY KEY, instance TEXT NOT NULL, flow TEXT NOT NULL,
                 status TEXT NOT NULL, pending INTEGER NOT NULL DEFAULT 0, trigger TEXT, error TEXT,
                 started_at INTEGER NOT NULL, finished_at INTEGER);
             CREATE TABLE step_runs (id INTEGER PRIMARY KEY, execution TEXT NOT NULL, step TEXT NOT NULL,
                 attempt INTEGER NOT NULL, status TEXT NOT NULL, input TEXT, output TEXT, error TEXT,
                 started_at INTEGER NOT NULL, duration_ms INTEGER NOT NULL);
             INSERT INTO executions VALUES ('old', 'acme/orders', 'f', 'succeeded', 0, '{}', NULL, 1, 2);
             INSERT INTO step_runs (execution, step, attempt, status, input, output, error, started_at, duration_ms)
                 VALUES ('old', 's', 1, 'succeeded', '{}', '[7]', NULL, 1, 1);",
        )
        .unwrap();
    }
    let store = Store::open(&path, Box::new(|_| {})).unwrap();
    let reader = history::open(dir.path()).unwrap();
    let old = history::execution(&reader, "old").unwrap().unwrap();
    assert_eq!(old.steps.len(), 1);
    assert_eq!(old.steps[0].output, json!([7]));
    store
        .commit(vec![
            Op::StartExecution(NewExecution {
                id: "new".into(),
                instance: "acme/orders".into(),
                flow: "f".into(),
                trigger: "{}".into(),
                started_at: 3,
            }),
            Op::Pending {
                execution: "new".into(),
                delta: 0,
                at: 3,
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        history::execution(&reader, "new")
            .unwrap()
            .unwrap()
            .execution
            .status,
        "succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_of_the_wal_stops_the_store_and_applies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.db");
    let store = Store::open(&path, Box::new(|_| {})).unwrap();
    let start = |id: &str| {
        vec![
            Op::StartExecution(NewExecution {
                id: id.into(),
                instance: "acme/orders".into(),
                flow: "f".into(),
                trigger: "{}".into(),
                started_at: 1,
            }),
            enqueue_on_q(id),
            Op::Pending {
                execution: id.into(),
                delta: 1,
                at: 1,
            },
        ]
    };
    // SQLite keeps writing the WAL it has open; the writer's own sync opens it by its path
    // (at the first commit) and fails: a stand-in for a disk that fails a write-back.
    std::fs::remove_file(dir.path().join("weft.db-wal")).unwrap();
    let (error, back) = store.commit_keeping(start("during")).await.unwrap_err();
    assert!(matches!(error, StoreError::Sync(_)), "{error}");
    assert!(
        back.is_none(),
        "applied ops are not handed back to be applied again"
    );
    use weft_runtime::store::Queue;
    assert!(store.halted().is_some());
    let (later, back) = store.commit_keeping(start("after")).await.unwrap_err();
    assert!(matches!(later, StoreError::Sync(_)), "{later}");
    assert!(back.is_none(), "a halted store refuses at once");
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(5), store.until_halted()).await,
        Ok(StoreError::Sync(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_stops_the_runtime_with_the_stores_error() {
    let (sink, addr) = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let options = weft_runtime::Options {
        data_dir: dir.path().to_path_buf(),
        drain_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let runtime = weft_runtime::start(
        support::compile(&repo(addr, "")),
        options,
        support::secrets(),
    )
    .await
    .unwrap();
    let served = tokio::spawn(weft_runtime::serve_on(
        runtime,
        listener,
        std::future::pending(),
    ));
    std::fs::remove_file(dir.path().join("weft.db-wal")).unwrap();
    let raw = serde_json::to_vec(&json!({ "id": "o-1", "amount_cents": 100 })).unwrap();
    let answer = reqwest::Client::new()
        .post(format!("{url}/hooks/acme/orders/orders"))
        .header("content-type", "application/json")
        .header(
            "X-Signature",
            weft_runtime::auth::sign_hmac(support::SECRET.as_bytes(), &raw),
        )
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503, "the event is not acknowledged");
    let ended = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the runtime stops by itself")
        .unwrap();
    let error = ended.expect_err("with an error").to_string();
    assert!(error.contains("sync"), "{error}");
    assert!(sink.received.lock().unwrap().is_empty(), "no step ran");
}

/// The writer keeps the pending counts of the executions it started; the rows must read the
/// same as if every count were read from its row: through a failure, which keeps an execution
/// failed when its last message is done, and through a request that rolls back.
#[tokio::test]
async fn pending_counts_stay_right_through_failures_and_rolled_back_requests() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.db");
    let store = Store::open(&path, Box::new(|_| {})).unwrap();
    let start = |id: &str| {
        Op::StartExecution(NewExecution {
            id: id.into(),
            instance: "acme/orders".into(),
            flow: "f".into(),
            trigger: "{}".into(),
            started_at: 1_000,
        })
    };
    let pending = |id: &str, delta: i64| Op::Pending {
        execution: id.into(),
        delta,
        at: 2_000,
    };
    let claim = || Op::Claim {
        key: "webhook-id:acme/orders:f:once".into(),
        at: 1,
    };
    let conn = rusqlite::Connection::open(&path).unwrap();
    let row = |id: &str| -> (String, i64, Option<i64>) {
        conn.query_row(
            "SELECT status, pending, finished_at FROM executions WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    };
    // Two messages on; one done; the execution fails; the last one done: failed, finished.
    store
        .commit(vec![start("ex-f"), pending("ex-f", 1), pending("ex-f", 1)])
        .await
        .unwrap();
    store.commit(vec![pending("ex-f", -1)]).await.unwrap();
    store
        .commit(vec![Op::FailExecution {
            execution: "ex-f".into(),
            error: "step `s`: no".into(),
        }])
        .await
        .unwrap();
    let done = store.commit(vec![pending("ex-f", -1)]).await.unwrap();
    assert_eq!(row("ex-f"), ("failed".into(), 0, Some(2_000)));
    assert_eq!(
        done.finished,
        vec![("ex-f".to_string(), "failed".to_string())]
    );

    // A request that counts a message down and then fails (a claim made before) leaves the
    // count where it was.
    store.commit(vec![claim()]).await.unwrap();
    store
        .commit(vec![start("ex-r"), pending("ex-r", 2)])
        .await
        .unwrap();
    let refused = store.commit(vec![pending("ex-r", -1), claim()]).await;
    assert!(refused.is_err(), "the repeated claim fails the request");
    assert_eq!(row("ex-r"), ("running".into(), 2, None));
    store.commit(vec![pending("ex-r", -1)]).await.unwrap();
    assert_eq!(row("ex-r"), ("running".into(), 1, None));
    let done = store.commit(vec![pending("ex-r", -1)]).await.unwrap();
    assert_eq!(row("ex-r"), ("succeeded".into(), 0, Some(2_000)));
    assert_eq!(
        done.finished,
        vec![("ex-r".to_string(), "succeeded".to_string())]
    );
}
