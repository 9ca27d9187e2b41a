//! Runtime benchmark on the reference flow — signed webhook → map → HTTP POST to a local sink
//! → reply with the sink's answer — run by `weft run` (a separate process, embedded durable
//! queue, fsync'd group commits) with `respond: sync` and with `respond: async`, and in the same
//! run by a hand-written axum + reqwest handler with no queue (also a separate process: this
//! bench re-executed as one).
//! Prints, per run and as ranges over the runs: delivered events/s, p50/p99 from request to
//! delivery at 16 and 64 concurrent senders, the ratios to the hand-written handler, CPU seconds
//! per 1,000 events of each server process, and weft's idle and peak RSS.
//! Run: `cargo bench --bench reference`. `WEFT_BENCH_EVENTS=N` changes the events per load
//! (default 20,000), `WEFT_BENCH_RUNS=N` the runs (default 3), `WEFT_BENCH_BINARY=PATH` the
//! `weft` binary measured (default: the one built with the bench), to compare two builds.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use support::{CountingSink, Figures, WeftProcess, binary, free_port, http_client, load};

/// Set in the re-executed bench: the sink the hand-written handler posts to.
const HANDWRITTEN_SINK: &str = "WEFT_BENCH_HANDWRITTEN_SINK";
/// With [`HANDWRITTEN_SINK`]: only write the bench's repository, posting to that sink, into
/// this folder, and stop (`benches/instructions.sh` runs the same flow).
const WRITE_REPO: &str = "WEFT_BENCH_WRITE_REPO";

/// The hand-written handler: check the signature, map, POST, answer with the sink's reply.
async fn handwritten(sink: SocketAddr) -> SocketAddr {
    #[derive(Clone)]
    struct S {
        client: reqwest::Client,
        sink: String,
    }
    async fn handle(
        State(s): State<S>,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::response::Response {
        let sig = headers
            .get("x-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if support::sign(&body) != sig {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        let shaped = serde_json::json!({ "id": v["id"], "amount": v["amount_cents"].as_f64().unwrap_or(0.0) / 100.0, "sent": v["sent"] });
        let r = s
            .client
            .post(&s.sink)
            .bearer_auth(support::TOKEN)
            .json(&shaped)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => match r.json::<serde_json::Value>().await {
                Ok(answer) => {
                    axum::Json(serde_json::json!({ "delivered": answer })).into_response()
                }
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            },
            _ => StatusCode::BAD_GATEWAY.into_response(),
        }
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

/// The bench's repository: the reference flow twice, answering at once (`orders`) and with the
/// sink's reply (`orders-sync`).
fn repo(dir: &Path, sink: SocketAddr) {
    let flow = |respond: &str, reply: &str| {
        format!(
            r#"    trigger:
      webhook:
        path: /{path}
        respond: {respond}
        auth: {{ hmac_sha256: {{ secret: "{{{{ config.hook_secret }}}}", header: X-Signature }} }}
    steps:
      - id: shape
        uses: transform
        with:
          value: {{ id: "{{{{ trigger.body.id }}}}", amount: "{{{{ trigger.body.amount_cents / 100 }}}}", sent: "{{{{ trigger.body.sent }}}}" }}
      - id: deliver
        uses: http.post
        with:
          url: "{{{{ config.sink_url }}}}/orders"
          headers: {{ Authorization: "Bearer {{{{ config.token }}}}" }}
          body: "{{{{ steps.shape }}}}"
        retry: {{ attempts: 10, initial: 100ms, max: 2s }}
{reply}"#,
            path = if respond == "sync" {
                "orders-sync"
            } else {
                "orders"
            },
        )
    };
    let reply = r#"      - id: reply
        uses: respond
        with: { body: { delivered: "{{ steps.deliver.body }}" } }
"#;
    let integration = format!(
        "weft: 1\nname: reference\ndescription: The reference flow\nconfig:\n  sink_url: {{ type: url, default: \"http://{sink}\" }}\n  hook_secret: {{ type: secret }}\n  token: {{ type: secret }}\nflows:\n  orders:\n{}  orders-sync:\n{}",
        flow("async", ""),
        flow("sync", reply)
    );
    let files = [
        ("weft.yaml", "weft: 1\nname: reference\n".to_string()),
        ("integrations/reference/integration.yaml", integration),
        (
            "instances/acme/reference.yaml",
            support::REFERENCE_INSTANCE.to_string(),
        ),
    ];
    support::write_files(dir, &files);
}

/// A KiB figure of a process's status, 0 once it is gone.
fn status_kib(pid: u32, field: &str) -> u64 {
    support::status_kib(pid, field).unwrap_or(0)
}

/// One load against one server, with the server's CPU time over it.
struct Measured {
    figures: Figures,
    cpu_per_1k: f64,
}

async fn measure(
    url: &str,
    sink: &CountingSink,
    prefix: &str,
    events: usize,
    concurrency: usize,
    pid: u32,
) -> Measured {
    let before = support::cpu_seconds(pid);
    let figures = load(url, sink, prefix, events, concurrency).await;
    let cpu = support::cpu_seconds(pid) - before;
    assert_eq!(
        figures.delivered, events,
        "{prefix}: every event is delivered"
    );
    Measured {
        cpu_per_1k: cpu * 1000.0 / figures.delivered.max(1) as f64,
        figures,
    }
}

/// `min–max` of a column, or one figure when the runs agree to the digit.
fn range(values: &[f64], decimals: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (a, b) = (format!("{min:.decimals$}"), format!("{max:.decimals$}"));
    if a == b { a } else { format!("{a}–{b}") }
}

/// Starts the hand-written handler as its own process and reads its address.
fn spawn_handwritten(sink: SocketAddr) -> (Child, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(HANDWRITTEN_SINK, sink.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().parse().unwrap())
}

fn main() {
    if let (Ok(dir), Ok(sink)) = (std::env::var(WRITE_REPO), std::env::var(HANDWRITTEN_SINK)) {
        repo(Path::new(&dir), sink.parse().unwrap());
        return;
    }
    if let Ok(sink) = std::env::var(HANDWRITTEN_SINK) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let addr = handwritten(sink.parse().unwrap()).await;
            println!("{addr}");
            std::future::pending::<()>().await
        });
        return;
    }
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let events = env("WEFT_BENCH_EVENTS", 20_000);
    let runs = env("WEFT_BENCH_RUNS", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (sink, sink_addr) = CountingSink::start().await;
        let dir = tempfile::tempdir().unwrap();
        let repo_dir = dir.path().join("repo");
        repo(&repo_dir, sink_addr);
        let port = free_port();
        let weft_binary = std::env::var_os("WEFT_BENCH_BINARY").map_or_else(binary, std::path::PathBuf::from);
        let weft = WeftProcess::spawn(&weft_binary, &repo_dir, &dir.path().join("data"), port, &dir.path().join("weft.log"));
        weft.wait_healthy().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let weft_pid = weft.child.id();
        let idle_rss = status_kib(weft_pid, "VmRSS:");
        let (mut hand, hand_addr) = spawn_handwritten(sink_addr);
        let hand_pid = hand.id();
        let targets = [
            ("hand-written, no queue", format!("http://{hand_addr}/hooks/acme/reference/orders"), hand_pid),
            ("weft run, respond: sync", format!("http://127.0.0.1:{port}/hooks/acme/reference/orders-sync"), weft_pid),
            ("weft run, respond: async", format!("http://127.0.0.1:{port}/hooks/acme/reference/orders"), weft_pid),
        ];
        for (i, (_, url, _)) in targets.iter().enumerate() {
            load(url, &sink, &format!("warm{i}"), 1_000, 16).await;
        }
        println!("reference flow: signed webhook → map → HTTP POST → reply; {events} events per load, {runs} runs, {} cores; weft pid {weft_pid}", std::thread::available_parallelism().map_or(0, |n| n.get()));
        println!("{:<4} {:<26} {:>7} {:>11} {:>8} {:>8} {:>9} {:>13}", "run", "", "senders", "delivered/s", "p50 ms", "p99 ms", "× hand", "CPU s/1k ev");
        // [concurrency][target] → per-run (events/s, p99, cpu/1k)
        let mut table: Vec<Vec<Vec<(f64, f64, f64)>>> = vec![vec![Vec::new(); targets.len()]; 2];
        for run in 1..=runs {
            for (c, concurrency) in [16usize, 64].into_iter().enumerate() {
                let mut hand_rate = f64::NAN;
                for (t, (name, url, pid)) in targets.iter().enumerate() {
                    let m = measure(url, &sink, &format!("r{run}c{concurrency}t{t}"), events, concurrency, *pid).await;
                    let rate = m.figures.delivered_per_sec;
                    if t == 0 {
                        hand_rate = rate;
                    }
                    println!("{run:<4} {name:<26} {concurrency:>7} {rate:>11.0} {:>8.2} {:>8.2} {:>8.2}× {:>13.3}", m.figures.p50_ms, m.figures.p99_ms, rate / hand_rate, m.cpu_per_1k);
                    table[c][t].push((rate, m.figures.p99_ms, m.cpu_per_1k));
                }
            }
        }
        println!();
        println!("ranges over {runs} runs:");
        println!("{:<26} {:>7} {:>15} {:>13} {:>15} {:>13} {:>11}", "", "senders", "delivered/s", "× hand", "p99 ms", "CPU s/1k ev", "CPU × hand");
        for (c, concurrency) in [16usize, 64].into_iter().enumerate() {
            for (t, (name, _, _)) in targets.iter().enumerate() {
                let rows = &table[c][t];
                let hand = &table[c][0];
                let column = |f: &dyn Fn(usize) -> f64| (0..rows.len()).map(f).collect::<Vec<f64>>();
                println!(
                    "{name:<26} {concurrency:>7} {:>15} {:>12}× {:>15} {:>13} {:>10}×",
                    range(&column(&|r| rows[r].0), 0),
                    range(&column(&|r| rows[r].0 / hand[r].0), 2),
                    range(&column(&|r| rows[r].1), 2),
                    range(&column(&|r| rows[r].2), 3),
                    range(&column(&|r| rows[r].2 / hand[r].2), 2),
                );
            }
        }
        let peak = status_kib(weft_pid, "VmHWM:");
        println!(
            "weft RSS: idle {:.1} MB, peak {:.1} MB; hand-written peak {:.1} MB",
            idle_rss as f64 / 1024.0,
            peak as f64 / 1024.0,
            status_kib(hand_pid, "VmHWM:") as f64 / 1024.0
        );
        let dupes = sink.seen.lock().unwrap().values().filter(|(n, _)| *n > 1).count();
        println!("duplicate deliveries: {dupes}");
        let _ = hand.kill();
        let _ = hand.wait();
    });
}
