//! Fleet benchmark: many customers in one `weft run`.
//!
//! 1. Scale: a repository of 1,000 integrations (8 steps in 2 flows each: a signed webhook and a
//!    daily schedule; six of their templates name the integration, so no two integrations
//!    compile alike) with 1, 5 and 10 instances of each, built with `weft build` and run from
//!    the bundles. Prints, per size: the time to build, the time from `weft run` to a healthy
//!    gateway, the idle RSS, the RSS each added instance costs (the slope from the size before),
//!    the CPU the idle fleet uses, and the time a reload takes to route one more customer
//!    (added to the folder, then SIGHUP).
//! 2. Fairness: customers A, B and C on one integration whose step posts to a sink that answers
//!    in 20 ms, with 16 slots at the step. B sends 100 events/s alone, then beside A sending
//!    10× as many (more than the step can deliver), then beside C whose upstream never answers.
//!    Prints B's p50/p99 from request to delivery in each phase, its ratio to B alone, and
//!    what A got of the capacity left.
//!
//! Run: `cargo bench --bench fleet`. `WEFT_BENCH_FLEET=1000,5000` changes the sizes,
//! `WEFT_BENCH_INTEGRATIONS=N` the integrations (default 1,000), `WEFT_BENCH_BINARY=PATH` the
//! `weft` binary measured; `WEFT_BENCH_KEEP=1` keeps the generated repositories and bundles.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{CountingSink, WeftProcess, free_port, http_client, sign};

/// Steps per integration: 6 in the webhook flow, 2 in the schedule.
const STEPS: usize = 8;

fn integration(i: usize) -> String {
    format!(
        r#"weft: 1
name: integration-{i}
config:
  crm_url: {{ type: url, default: "http://127.0.0.1:9" }}
  token: {{ type: secret }}
  hook_secret: {{ type: secret }}
  min_amount: {{ type: integer, default: 0 }}
  region: {{ type: enum, values: [eu, us], default: eu }}
flows:
  orders:
    trigger:
      webhook:
        path: /orders
        auth: {{ hmac_sha256: {{ secret: "{{{{ config.hook_secret }}}}", header: X-Signature }} }}
    steps:
      - id: shape
        uses: transform
        with: {{ value: {{ id: "{{{{ trigger.body.id }}}}", amount: "{{{{ trigger.body.amount_cents / 100 }}}}", region: "{{{{ config.region }}}}" }} }}
      - id: route
        uses: branch
        with:
          cases:
            - when: "{{{{ steps.shape.amount >= config.min_amount }}}}"
              steps:
                - id: push
                  uses: http.post
                  with: {{ url: "{{{{ config.crm_url }}}}/orders/{i}", headers: {{ Authorization: "Bearer {{{{ config.token }}}}" }}, body: "{{{{ steps.shape }}}}" }}
                  retry: {{ attempts: 5, initial: 1s, max: 1m }}
          default:
            - {{ id: skipped, uses: log, with: {{ message: "skipped {{{{ trigger.body.id }}}} in {i}" }} }}
      - id: audit
        uses: http.post
        with: {{ url: "{{{{ config.crm_url }}}}/audit/{i}", body: {{ id: "{{{{ steps.shape.id }}}}" }} }}
      - id: done
        uses: log
        with: {{ message: "order {{{{ steps.shape.id }}}} done in {i}" }}
  nightly:
    trigger: {{ schedule: {{ cron: "0 0 3 * * *", timezone: Europe/Berlin }} }}
    steps:
      - {{ id: report, uses: http.get, with: {{ url: "{{{{ config.crm_url }}}}/report/{i}" }} }}
      - {{ id: said, uses: log, with: {{ message: "report {i}: {{{{ steps.report.status }}}}" }} }}
"#
    )
}

fn instance(i: usize, customer: usize) -> String {
    format!(
        "weft: 1\nintegration: integration-{i}\nconfig:\n  crm_url: http://127.0.0.1:{}\n  token: {{ secret: CRM_TOKEN }}\n  hook_secret: {{ secret: HOOK_SECRET }}\n  min_amount: {}\n",
        10_000 + customer,
        customer % 7
    )
}

/// Writes the repository: `integrations` integrations, `per` instances of each.
fn fleet_repo(dir: &Path, integrations: usize, per: usize) {
    let mut files = vec![(
        "weft.yaml".to_string(),
        "weft: 1\nname: fleet\n".to_string(),
    )];
    for i in 0..integrations {
        files.push((
            format!("integrations/integration-{i}/integration.yaml"),
            integration(i),
        ));
        for c in 0..per {
            files.push((
                format!("instances/customer-{c}/integration-{i}.yaml"),
                instance(i, c),
            ));
        }
    }
    let files: Vec<(&str, String)> = files.iter().map(|(p, t)| (p.as_str(), t.clone())).collect();
    support::write_files(dir, &files);
}

fn binary() -> PathBuf {
    std::env::var_os("WEFT_BENCH_BINARY").map_or_else(support::binary, PathBuf::from)
}

/// `weft build REPO --out OUT`, which must succeed.
fn weft_build(repo: &Path, out: &Path) {
    let built = Command::new(binary())
        .arg("build")
        .arg(repo)
        .arg("--out")
        .arg(out)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "weft build: {}",
        String::from_utf8_lossy(&built.stderr)
    );
}

/// One row of the scale table.
struct Row {
    instances: usize,
    build_s: f64,
    ready_s: f64,
    rss_mb: f64,
    idle_cpu_ms_per_s: f64,
    /// From SIGHUP to the webhook of an instance added to the folder being routed.
    reload_ms: f64,
}

async fn scale_row(integrations: usize, instances: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let out = dir.path().join("dist");
    if std::env::var_os("WEFT_BENCH_KEEP").is_some() {
        println!("(kept: {})", dir.path().display());
    }
    fleet_repo(&repo, integrations, instances / integrations);
    let started = Instant::now();
    weft_build(&repo, &out);
    let build_s = started.elapsed().as_secs_f64();
    let port = free_port();
    let log = dir.path().join("weft.log");
    let started = Instant::now();
    let mut weft = WeftProcess::spawn(&binary(), &out, &dir.path().join("data"), port, &log);
    let client = http_client(Duration::from_secs(2));
    loop {
        if client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "weft run did not become healthy: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = weft.child.id();
    let rss_mb = support::status_kib(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0;
    let before = support::cpu_seconds(pid);
    let idle = Duration::from_secs(5);
    tokio::time::sleep(idle).await;
    let idle_cpu_ms_per_s = (support::cpu_seconds(pid) - before) * 1000.0 / idle.as_secs_f64();
    let reload_ms = reload_one(&dir.path().join("extra"), &out, pid, port).await;
    weft.kill9();
    if std::env::var_os("WEFT_BENCH_KEEP").is_some() {
        let _ = dir.keep();
    }
    Row {
        instances,
        build_s,
        ready_s,
        rss_mb,
        idle_cpu_ms_per_s,
        reload_ms,
    }
}

/// Adds a customer of `integration-0` to the running fleet's folder `out` (built from a
/// repository of that integration alone: the same version), sends SIGHUP to `pid`, and returns
/// the milliseconds until its webhook is routed (401 unsigned, where it was 404).
async fn reload_one(scratch: &Path, out: &Path, pid: u32, port: u16) -> f64 {
    let repo = scratch.join("repo");
    support::write_files(
        &repo,
        &[
            ("weft.yaml", "weft: 1\nname: fleet\n".to_string()),
            (
                "integrations/integration-0/integration.yaml",
                integration(0),
            ),
            ("instances/customer-new/integration-0.yaml", instance(0, 99)),
        ],
    );
    weft_build(&repo, &scratch.join("dist"));
    std::fs::rename(scratch.join("dist/customer-new"), out.join("customer-new")).unwrap();
    let client = http_client(Duration::from_secs(5));
    let url = format!("http://127.0.0.1:{port}/hooks/customer-new/integration-0/orders");
    let started = Instant::now();
    let hup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    loop {
        let status = client.post(&url).body("{}").send().await.unwrap().status();
        if status != 404 {
            assert_eq!(status, 401, "routed, and the signature checked");
            return started.elapsed().as_secs_f64() * 1000.0;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no reload");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A server that accepts connections and never answers: an upstream that is down.
async fn black_hole() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// What one customer's paced sender measured.
struct Paced {
    sent: Vec<(String, Instant)>,
    accepted: usize,
}

/// Sends signed events to `customer`'s webhook at `rate` per second for `length`, open-loop
/// (a slow answer does not slow the sender; at most 512 requests are in flight).
async fn paced(port: u16, customer: &str, prefix: &str, rate: u32, length: Duration) -> Paced {
    let client = http_client(Duration::from_secs(30));
    let url = format!("http://127.0.0.1:{port}/hooks/{customer}/reference/orders");
    let sent: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(512));
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let end = Instant::now() + length;
    let mut tasks = Vec::new();
    let mut n = 0;
    while Instant::now() < end {
        tick.tick().await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let id = format!("{prefix}-{n}");
        n += 1;
        let body =
            serde_json::to_vec(&serde_json::json!({ "id": id, "amount_cents": 1000, "sent": 0 }))
                .unwrap();
        let (client, url, sent, accepted) =
            (client.clone(), url.clone(), sent.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            let r = client
                .post(&url)
                .header("content-type", "application/json")
                .header("X-Signature", sign(&body))
                .body(body)
                .send()
                .await;
            if r.is_ok_and(|r| r.status().is_success()) {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                sent.lock().unwrap().push((id, at));
            }
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    Paced {
        accepted: accepted.load(std::sync::atomic::Ordering::Relaxed),
        sent,
    }
}

/// p50 and p99 from request to delivery of `paced`'s accepted events, waiting up to 30 s for
/// the last ones.
async fn latencies(sink: &CountingSink, paced: &Paced) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all_arrived = {
            let seen = sink.seen.lock().unwrap();
            paced.sent.iter().all(|(id, _)| seen.contains_key(id))
        };
        if all_arrived || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = sink.seen.lock().unwrap();
    let mut ms: Vec<f64> = paced
        .sent
        .iter()
        .filter_map(|(id, at)| {
            seen.get(id)
                .map(|(_, arrived)| (*arrived - *at).as_secs_f64() * 1e3)
        })
        .collect();
    assert_eq!(ms.len(), paced.sent.len(), "every accepted event arrived");
    ms.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
    (pct(0.5), pct(0.99))
}

/// Arrivals at the sink of events whose id starts with `prefix`, between `from` and `to`.
fn arrivals(sink: &CountingSink, prefix: &str, from: Instant, to: Instant) -> usize {
    sink.seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, (_, at))| id.starts_with(prefix) && *at >= from && *at <= to)
        .count()
}

async fn fairness() {
    const SLOTS: usize = 16;
    const LATENCY_MS: u64 = 20;
    const B_RATE: u32 = 100;
    let phase = Duration::from_secs(8);
    let (sink, sink_addr) = CountingSink::start_slow(Duration::from_millis(LATENCY_MS)).await;
    let hole = black_hole().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    support::reference_repo(&repo, sink_addr);
    let same = support::REFERENCE_INSTANCE.to_string();
    let hung = format!("{same}  sink_url: http://{hole}\n");
    support::write_files(
        &repo,
        &[
            ("instances/a/reference.yaml", same.clone()),
            ("instances/b/reference.yaml", same),
            ("instances/c/reference.yaml", hung),
        ],
    );
    let port = free_port();
    let log = dir.path().join("weft.log");
    let weft = WeftProcess::spawn_args(
        &binary(),
        &repo,
        &dir.path().join("data"),
        port,
        &log,
        &["--step-concurrency", &SLOTS.to_string()],
    );
    weft.wait_healthy().await;
    let capacity = SLOTS as f64 * 1000.0 / LATENCY_MS as f64;
    println!(
        "\nfairness: one step with {SLOTS} slots posting to a sink that answers in {LATENCY_MS} ms ({capacity:.0} deliveries/s at most); B sends {B_RATE}/s for {}s",
        phase.as_secs()
    );
    // Warm up the connections and the store.
    paced(port, "b", "warm", 50, Duration::from_secs(1)).await;

    let alone = paced(port, "b", "b1", B_RATE, phase).await;
    let (q50, q99) = latencies(&sink, &alone).await;
    println!(
        "  B alone                          B p50 {q50:6.1} ms  p99 {q99:6.1} ms  ({} accepted)",
        alone.accepted
    );

    let from = Instant::now();
    let (a, b) = tokio::join!(
        paced(port, "a", "a2", B_RATE * 10, phase),
        paced(port, "b", "b2", B_RATE, phase)
    );
    let to = Instant::now();
    let (p50, p99) = latencies(&sink, &b).await;
    // A's backlog drains before the next phase.
    latencies(&sink, &a).await;
    let a_rate = arrivals(&sink, "a2-", from, to) as f64 / (to - from).as_secs_f64();
    let left = capacity - b.accepted as f64 / phase.as_secs_f64();
    println!(
        "  A at {}/s beside B              B p50 {p50:6.1} ms  p99 {p99:6.1} ms  ({:.2}× alone); A delivered {a_rate:.0}/s of the {left:.0}/s left ({} accepted)",
        B_RATE * 10,
        p99 / q99,
        a.accepted
    );

    let (_c, b) = tokio::join!(
        paced(port, "c", "c3", B_RATE, phase),
        paced(port, "b", "b3", B_RATE, phase)
    );
    let (h50, h99) = latencies(&sink, &b).await;
    println!(
        "  C's upstream hangs, C at {B_RATE}/s     B p50 {h50:6.1} ms  p99 {h99:6.1} ms  ({:.2}× alone)",
        h99 / q99
    );
    let mut weft = weft;
    weft.kill9();
}

#[tokio::main]
async fn main() {
    let integrations: usize = std::env::var("WEFT_BENCH_INTEGRATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let sizes: Vec<usize> = std::env::var("WEFT_BENCH_FLEET")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 5000, 10_000]);
    println!(
        "fleet: {integrations} integrations of {STEPS} steps in 2 flows (a signed webhook, a daily schedule), run from `weft build` bundles"
    );
    println!(
        "\n{:>9} {:>7} {:>9} {:>10} {:>12} {:>14} {:>14} {:>10}",
        "instances",
        "flows",
        "build s",
        "ready s",
        "idle RSS MB",
        "KB/instance",
        "idle CPU ms/s",
        "reload ms"
    );
    let mut previous: Option<Row> = None;
    for &n in &sizes {
        let row = scale_row(integrations, n.max(integrations)).await;
        let slope = previous.as_ref().map_or("—".to_string(), |p| {
            format!(
                "{:.1}",
                (row.rss_mb - p.rss_mb) * 1024.0 / (row.instances - p.instances) as f64
            )
        });
        println!(
            "{:>9} {:>7} {:>9.2} {:>10.2} {:>12.1} {:>14} {:>14.2} {:>10.0}",
            row.instances,
            row.instances * 2,
            row.build_s,
            row.ready_s,
            row.rss_mb,
            slope,
            row.idle_cpu_ms_per_s,
            row.reload_ms
        );
        previous = Some(row);
    }
    fairness().await;
}
