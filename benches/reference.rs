//! Runtime benchmark on the reference flow — signed webhook → transform → branch → HTTP POST to
//! a local sink — against `weft run` (a separate process, embedded durable queue, fsync'd group
//! commits) and, in the same run, a minimal hand-written handler with no queue.
//! Prints accepted events/s and p50/p99 from request to delivery at 16 and 64 concurrent
//! senders, and weft's idle and peak RSS. Run: `cargo bench --bench reference`.
//! `WEFT_BENCH_EVENTS=N` changes the events per run (default 20,000).

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use support::{CountingSink, WeftProcess, binary, free_port, http_client, load, reference_repo};

/// The hand-written handler: check the signature, transform, branch, POST — no queue.
async fn handwritten(sink: SocketAddr) -> SocketAddr {
    #[derive(Clone)]
    struct S {
        client: reqwest::Client,
        sink: String,
    }
    async fn handle(State(s): State<S>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let sig = headers
            .get("x-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if support::sign(&body) != sig {
            return StatusCode::UNAUTHORIZED;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return StatusCode::BAD_REQUEST;
        };
        let shaped = serde_json::json!({ "id": v["id"], "amount": v["amount_cents"].as_f64().unwrap_or(0.0) / 100.0, "sent": v["sent"] });
        if shaped["amount"].as_f64().unwrap_or(0.0) >= 0.0 {
            let r = s
                .client
                .post(&s.sink)
                .bearer_auth(support::TOKEN)
                .json(&shaped)
                .send()
                .await;
            if !r.is_ok_and(|r| r.status().is_success()) {
                return StatusCode::BAD_GATEWAY;
            }
        }
        StatusCode::ACCEPTED
    }
    let state = S {
        client: http_client(Duration::from_secs(10)),
        sink: format!("http://{sink}/orders"),
    };
    let app = axum::Router::new()
        .route("/hooks/acme/reference/orders", post(handle))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn main() {
    let events: usize = std::env::var("WEFT_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (sink, sink_addr) = CountingSink::start().await;
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        reference_repo(&repo, sink_addr);
        let port = free_port();
        let weft = WeftProcess::spawn(&binary(), &repo, &dir.path().join("data"), port, &dir.path().join("weft.log"));
        weft.wait_healthy().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_rss = weft.rss_kib().unwrap_or(0);
        let hand = handwritten(sink_addr).await;
        let weft_url = format!("http://127.0.0.1:{port}/hooks/acme/reference/orders");
        let hand_url = format!("http://{hand}/hooks/acme/reference/orders");
        // Warm both up.
        load(&weft_url, &sink, "warm-w", 500, 16).await;
        load(&hand_url, &sink, "warm-h", 500, 16).await;
        println!("reference flow: signed webhook → transform → branch → HTTP POST; {events} events per run; 2 cores");
        println!("{:<34} {:>11} {:>11} {:>9} {:>9}", "", "accepted/s", "delivered/s", "p50 ms", "p99 ms");
        let mut rows = Vec::new();
        for concurrency in [16, 64] {
            let w = load(&weft_url, &sink, &format!("w{concurrency}"), events, concurrency).await;
            let h = load(&hand_url, &sink, &format!("h{concurrency}"), events, concurrency).await;
            println!("{:<34} {:>11.0} {:>11.0} {:>9.2} {:>9.2}", format!("weft run (durable), {concurrency} senders"), w.accepted_per_sec, w.delivered_per_sec, w.p50_ms, w.p99_ms);
            println!("{:<34} {:>11.0} {:>11.0} {:>9.2} {:>9.2}", format!("hand-written, no queue, {concurrency} senders"), h.accepted_per_sec, h.delivered_per_sec, h.p50_ms, h.p99_ms);
            rows.push((concurrency, w.delivered_per_sec / h.delivered_per_sec));
        }
        for (c, ratio) in rows {
            println!("weft / hand-written delivered events/s at {c} senders: {ratio:.2}×");
        }
        let peak = std::fs::read_to_string(format!("/proc/{}/status", weft.child.id()))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()))
            .unwrap_or(0);
        println!("weft RSS: idle {:.1} MB, peak {:.1} MB", idle_rss as f64 / 1024.0, peak as f64 / 1024.0);
        // The same process with mimalloc's lazy arena commit and immediate purge (as in compose).
        let lean_port = free_port();
        let lean = WeftProcess::spawn_with_env(
            &binary(),
            &repo,
            &dir.path().join("data-lean"),
            lean_port,
            &dir.path().join("weft-lean.log"),
            &[("MIMALLOC_ARENA_EAGER_COMMIT", "0"), ("MIMALLOC_PURGE_DELAY", "0")],
        );
        lean.wait_healthy().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("weft RSS with MIMALLOC_ARENA_EAGER_COMMIT=0 MIMALLOC_PURGE_DELAY=0: idle {:.1} MB", lean.rss_kib().unwrap_or(0) as f64 / 1024.0);
        let dupes = sink.seen.lock().unwrap().values().filter(|(n, _)| *n > 1).count();
        println!("duplicate deliveries: {dupes}");
    });
}
