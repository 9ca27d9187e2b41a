//! Runtime benchmark on the reference flow — signed webhook → transform → branch → HTTP POST to
//! a local sink — against `weft run` (a separate process, embedded durable queue, fsync'd group
//! commits) and, in the same run, a minimal hand-written handler with no queue.
//! Prints accepted events/s and p50/p99 from request to delivery at 16 and 64 concurrent
//! senders, and weft's idle and peak RSS. Run: `cargo bench --bench reference`.
//! `WEFT_BENCH_EVENTS=N` changes the events per run (default 20,000).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use support::{CountingSink, WeftProcess, binary, free_port, http_client, reference_repo, sign};

struct Figures {
    accepted_per_sec: f64,
    delivered_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Sends `events` signed events with `concurrency` senders; waits for every delivery.
async fn load(
    url: &str,
    sink: &CountingSink,
    prefix: &str,
    events: usize,
    concurrency: usize,
) -> Figures {
    let client = http_client(Duration::from_secs(30));
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, sent_at, next, url, prefix) = (
            client.clone(),
            sent_at.clone(),
            next.clone(),
            url.to_string(),
            prefix.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= events {
                    return accepted;
                }
                let id = format!("{prefix}-{i}");
                let body = serde_json::to_vec(
                    &serde_json::json!({ "id": id, "amount_cents": 1000 + i, "sent": 0 }),
                )
                .unwrap();
                let signature = sign(&body);
                sent_at.lock().unwrap().insert(id, Instant::now());
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("X-Signature", signature)
                    .body(body)
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    accepted += 1;
                }
            }
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    let accept_time = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    let prefix_dash = format!("{prefix}-");
    loop {
        let delivered = sink
            .seen
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(&prefix_dash))
            .count();
        if delivered >= accepted || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = sink.seen.lock().unwrap();
    let sent = sent_at.lock().unwrap();
    let mut latencies: Vec<f64> = Vec::new();
    let mut last = start;
    for (id, at) in sent.iter() {
        if let Some((_, arrived)) = seen.get(id) {
            latencies.push(arrived.saturating_duration_since(*at).as_secs_f64() * 1000.0);
            last = last.max(*arrived);
        }
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Figures {
        accepted_per_sec: accepted as f64 / accept_time.as_secs_f64(),
        delivered_per_sec: latencies.len() as f64 / last.duration_since(start).as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

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
