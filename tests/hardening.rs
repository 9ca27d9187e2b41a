//! Attacks that need the real process: a poison message that kills `weft run` whenever its
//! step runs, and an egress policy that a proxy in the environment must not bypass.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::any;
use support::{Scratch, WeftProcess};

/// A sink that counts deliveries per id and SIGKILLs the weft process when `poison` arrives:
/// a step that takes the process down, as an out-of-memory kill would.
#[derive(Clone, Default)]
struct KillingSink {
    seen: Arc<Mutex<HashMap<String, usize>>>,
    victim: Arc<Mutex<Option<u32>>>,
}

impl KillingSink {
    async fn start() -> (KillingSink, SocketAddr) {
        let sink = KillingSink::default();
        async fn handle(State(sink): State<KillingSink>, body: Bytes) -> &'static str {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let id = v["id"].as_str().unwrap_or_default().to_string();
            *sink.seen.lock().unwrap().entry(id.clone()).or_default() += 1;
            if id == "poison"
                && let Some(pid) = *sink.victim.lock().unwrap()
            {
                // The shell's own `kill`: no procps needed.
                let _ = std::process::Command::new("sh")
                    .args(["-c", &format!("kill -9 {pid}")])
                    .status();
            }
            "{}"
        }
        let app = Router::new()
            .route("/orders", any(handle))
            .with_state(sink.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (sink, addr)
    }

    fn count(&self, id: &str) -> usize {
        self.seen.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

async fn post_event(port: u16, id: &str) -> reqwest::StatusCode {
    let client = support::http_client(Duration::from_secs(5));
    support::post_reference(&client, port, id)
        .await
        .unwrap()
        .status()
}

/// Waits until the child exits by itself (killed by the sink); false after `limit`.
async fn exited(weft: &mut WeftProcess, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if weft.child.try_wait().unwrap().is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_quarantined_after_three_crashes() {
    let (sink, sink_addr) = KillingSink::start().await;
    let scratch = Scratch::reference(sink_addr);
    let (port, data) = (scratch.port, scratch.data.clone());
    let mut weft = scratch.spawn(&[]);
    *sink.victim.lock().unwrap() = Some(weft.child.id());
    weft.wait_healthy().await;
    for i in 0..10 {
        assert_eq!(post_event(port, &format!("ok-{i}")).await, 202);
    }
    assert_eq!(post_event(port, "poison").await, 202);
    let mut crashes = 0;
    while exited(&mut weft, Duration::from_secs(10)).await {
        crashes += 1;
        assert!(
            crashes <= 3,
            "the poison message keeps crashing the runtime"
        );
        // The restarted process resumes the poison message at once: it may die before it
        // is ever healthy.
        weft = scratch.spawn(&[]);
        *sink.victim.lock().unwrap() = Some(weft.child.id());
    }
    weft.wait_healthy().await;
    assert_eq!(crashes, 3, "three crashes, then quarantine");
    assert_eq!(sink.count("poison"), 3);
    // The rest of the instance keeps working: earlier events and new ones are delivered.
    assert_eq!(post_event(port, "after").await, 202);
    for _ in 0..200 {
        if sink.count("after") > 0 && (0..10).all(|i| sink.count(&format!("ok-{i}")) > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(sink.count("after") > 0);
    assert!((0..10).all(|i| sink.count(&format!("ok-{i}")) > 0));
    weft.kill9();
    let conn = weft_runtime::history::open(&data).unwrap();
    let dead = weft_runtime::history::dead_letters(&conn).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].error.contains("quarantined"), "{}", dead[0].error);
    println!("poison message: {crashes} crashes, then quarantined; 11 other events delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_policy_is_not_bypassed_through_a_proxy() {
    // A "proxy" that would forward anything: with the policy on, it must receive nothing.
    let (proxy, proxy_addr) = KillingSink::start().await;
    let (sink, sink_addr) = KillingSink::start().await;
    let scratch = Scratch::reference(sink_addr);
    let (port, data) = (scratch.port, scratch.data.clone());
    let proxy_url = format!("http://{proxy_addr}");
    let mut weft = scratch.spawn(&[
        ("HTTP_PROXY", &proxy_url),
        ("http_proxy", &proxy_url),
        ("ALL_PROXY", &proxy_url),
        ("WEFT_DENY_PRIVATE_ADDRESSES", "1"),
    ]);
    weft.wait_healthy().await;
    assert_eq!(post_event(port, "e-1").await, 202);
    let mut finished = false;
    for _ in 0..200 {
        let conn = weft_runtime::history::open(&data).unwrap();
        let done = weft_runtime::history::executions(&conn, None, None, 10).unwrap();
        if done.iter().any(|e| e.finished_at.is_some()) {
            assert_ne!(done[0].status, "succeeded");
            assert!(
                done[0]
                    .error
                    .as_deref()
                    .unwrap_or_default()
                    .contains("egress policy"),
                "{:?}",
                done[0].error
            );
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    weft.kill9();
    assert!(finished, "the execution did not finish");
    assert_eq!(proxy.seen.lock().unwrap().len(), 0, "the proxy was used");
    assert_eq!(
        sink.seen.lock().unwrap().len(),
        0,
        "the private sink was reached"
    );
}
