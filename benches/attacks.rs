//! The hardening review's attacks, re-measured against `weft run` (a separate process): what
//! each costs the process now. Prints one line per attack; asserts nothing (the tests in
//! `tests/hardening.rs` and `runtime/tests/hardening.rs` do). Run: `cargo bench --bench attacks`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{CountingSink, Scratch, WeftProcess, binary, sign};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bomb_integration(repo: &Path) {
    let files = [
        (
            "integrations/bombs/integration.yaml",
            r#"weft: 1
name: bombs
flows:
  repeat:
    trigger: { webhook: { path: /repeat } }
    steps:
      - { id: grow, uses: transform, with: { value: "{{ [1,2,3,4,5,6,7,8,9,10] * trigger.body.n }}" } }
  indent:
    trigger: { webhook: { path: /indent } }
    steps:
      - { id: pretty, uses: transform, with: { value: "{{ trigger.body | tojson(indent=trigger.body.n) }}" } }
"#,
        ),
        ("instances/acme/bombs.yaml", "weft: 1\nintegration: bombs\n"),
    ];
    for (path, text) in files {
        let p = repo.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

fn mib(kib: Option<u64>) -> f64 {
    kib.unwrap_or(0) as f64 / 1024.0
}

/// Opens `n` connections that each announce `announced` bytes to `path`, send `sent` of them
/// and stall; returns the status lines they got within `wait`.
async fn stalled_bodies(
    port: u16,
    path: &str,
    n: usize,
    announced: usize,
    sent: usize,
    wait: Duration,
) -> (Vec<TcpStream>, Vec<String>) {
    let mut streams = Vec::new();
    for _ in 0..n {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
            continue;
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nX-Signature: {}\r\nContent-Type: application/json\r\nContent-Length: {announced}\r\n\r\n",
            sign(b"x")
        );
        let _ = s.write_all(head.as_bytes()).await;
        let chunk = vec![b' '; 64 * 1024];
        let mut left = sent;
        while left > 0 {
            let k = left.min(chunk.len());
            if tokio::time::timeout(Duration::from_millis(200), s.write_all(&chunk[..k]))
                .await
                .map_or(true, |r| r.is_err())
            {
                break;
            }
            left -= k;
        }
        streams.push(s);
    }
    tokio::time::sleep(wait).await;
    let mut statuses = Vec::new();
    for s in &mut streams {
        let mut buf = [0u8; 64];
        if let Ok(Ok(k)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await
            && k > 0
        {
            statuses.push(String::from_utf8_lossy(&buf[9..12.min(k)]).into_owned());
        }
    }
    (streams, statuses)
}

fn summarize(statuses: &[String]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for s in statuses {
        *counts.entry(s.as_str()).or_insert(0) += 1;
    }
    counts
        .iter()
        .map(|(s, n)| format!("{n}×{s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn bomb(weft: &WeftProcess, path: &str, n: u64) -> (f64, f64) {
    let client = support::http_client(Duration::from_secs(60));
    let started = Instant::now();
    let r = client
        .post(format!(
            "http://127.0.0.1:{}/hooks/acme/bombs{path}",
            weft.port
        ))
        .json(&serde_json::json!({ "n": n }))
        .send()
        .await
        .unwrap();
    let id = r.json::<serde_json::Value>().await.unwrap()["execution_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut peak = 0u64;
    for _ in 0..2000 {
        peak = peak.max(weft.rss_kib().unwrap_or(0));
        let out = std::process::Command::new(binary())
            .args(["executions", "show", &id, "--format", "json", "--data-dir"])
            .arg(weft_data(weft))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("\"finished_at\":") && !text.contains("\"finished_at\":null") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (started.elapsed().as_secs_f64(), peak as f64 / 1024.0)
}

static DATA: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

fn weft_data(_: &WeftProcess) -> &'static Path {
    DATA.get().unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let (_sink, sink_addr) = CountingSink::start().await;
    let scratch = Scratch::reference(sink_addr);
    bomb_integration(&scratch.repo);
    DATA.set(scratch.data.clone()).unwrap();
    let port = scratch.port;
    let mut weft = scratch.spawn(&[("WEFT_LOG", "warn"), ("WEFT_READ_TIMEOUT", "5")]);
    weft.wait_healthy().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "attack                                             | answers            | RSS after (MiB)"
    );
    println!(
        "idle                                               |                    | {:.1}",
        mib(weft.rss_kib())
    );

    for (label, path, n, announced, sent) in [
        (
            "40 × 9 MiB to an unknown path, stalled",
            "/hooks/acme/nope/x",
            40,
            9 << 20,
            9 << 20,
        ),
        (
            "100 × 9 MiB to an unknown path, stalled",
            "/hooks/acme/nope/x",
            100,
            9 << 20,
            9 << 20,
        ),
        (
            "100 × 8 MiB of 9 MB to a real webhook, stalled",
            "/hooks/acme/reference/orders",
            100,
            9_000_000,
            8 << 20,
        ),
    ] {
        let (streams, statuses) =
            stalled_bodies(port, path, n, announced, sent, Duration::from_secs(1)).await;
        println!(
            "{label:50} | {:18} | {:.1}",
            summarize(&statuses),
            mib(weft.rss_kib())
        );
        drop(streams);
    }

    // 1,100 partial headers: all closed at the read timeout (5 s here).
    let mut partial = Vec::new();
    for _ in 0..1100 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
            let _ = s
                .write_all(b"POST /hooks/acme/reference/orders HTTP/1.1\r\nHost: x\r\n")
                .await;
            partial.push(s);
        }
    }
    let opened = partial.len();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let mut open = 0;
    for s in &mut partial {
        let mut buf = [0u8; 16];
        if let Err(_) | Ok(Ok(1..)) =
            tokio::time::timeout(Duration::from_millis(5), s.read(&mut buf)).await
        {
            open += 1;
        }
    }
    drop(partial);
    println!(
        "{opened} partial headers, after the read timeout    | {open} still open       | {:.1}",
        mib(weft.rss_kib())
    );
    let healthy = support::http_client(Duration::from_secs(2))
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .is_ok();
    println!(
        "healthz afterwards                                 | {}                 |",
        if healthy { "200" } else { "down" }
    );

    for (path, n) in [
        ("/repeat", 1_000_000u64),
        ("/repeat", 10_000_000),
        ("/indent", 1_000_000_000),
    ] {
        let (secs, peak) = bomb(&weft, path, n).await;
        println!(
            "template bomb {path} n={n:<11}              | failed in {secs:.2} s   | peak {peak:.1}"
        );
    }
    weft.kill9();
}
