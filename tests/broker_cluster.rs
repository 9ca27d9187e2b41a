//! `weft run --broker` on a 3-node NATS JetStream cluster (three `nats-server` processes on
//! loopback, streams with 3 replicas): every event the gateway answered 2xx reaches the sink
//! when weft is killed with SIGKILL mid-load and restarted, and when a node is killed with
//! SIGKILL mid-load (one weft is not connected to, then the one it is).

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{CountingSink, WeftProcess, binary, free_port, short_timeout_reference_repo};

/// The stream weft creates for the reference flow.
const STREAM: &str = "weft_acme_reference_orders";
/// Events per scenario: `SENDERS` senders of `PER_SENDER` events each.
const SENDERS: usize = 6;
const PER_SENDER: usize = 100;
/// Pause of a sender after each accepted event: the load is spread over seconds.
const PACE: Duration = Duration::from_millis(40);
/// From a test's start: senders stop sending events again after `LOAD_FOR`, and every accepted
/// event must have reached the sink by `DELIVERED_BY` (the test's whole run stays under two minutes).
const LOAD_FOR: Duration = Duration::from_secs(60);
const DELIVERED_BY: Duration = Duration::from_secs(100);

/// One `nats-server` of the cluster; its configuration, ports and store folder outlive a kill.
struct Node {
    name: String,
    config: PathBuf,
    log: PathBuf,
    client: u16,
    http: u16,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new("nats-server")
                .arg("-c")
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("nats-server starts"),
        );
    }

    /// SIGKILL: no lame-duck mode, no leadership hand-off.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client)
    }

    /// A JSON page of the node's monitoring endpoint.
    async fn monitor(&self, client: &reqwest::Client, path: &str) -> Option<Value> {
        let r = client
            .get(format!("http://127.0.0.1:{}{path}", self.http))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// `/healthz` answers 200: JetStream is up and current with the cluster.
    async fn healthy(&self, client: &reqwest::Client) -> bool {
        client
            .get(format!("http://127.0.0.1:{}/healthz", self.http))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    }

    /// The meta leader this node knows, if any.
    async fn meta_leader(&self, client: &reqwest::Client) -> Option<String> {
        let jsz = self.monitor(client, "/jsz").await?;
        let leader = jsz["meta_cluster"]["leader"].as_str()?;
        (!leader.is_empty()).then(|| leader.to_string())
    }

    /// Routes open from this node to the others.
    async fn routes(&self, client: &reqwest::Client) -> u64 {
        self.monitor(client, "/routez")
            .await
            .and_then(|r| r["num_routes"].as_u64())
            .unwrap_or(0)
    }

    /// Client connections open on this node.
    async fn connections(&self, client: &reqwest::Client) -> u64 {
        self.monitor(client, "/connz")
            .await
            .and_then(|c| c["num_connections"].as_u64())
            .unwrap_or(0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Three clustered `nats-server -js` processes, each with its own ports and store folder.
struct Cluster {
    nodes: Vec<Node>,
    monitor: reqwest::Client,
}

impl Cluster {
    /// Starts the nodes and waits for a meta leader; fails the test (never skips it) when
    /// `nats-server` is missing.
    async fn start(dir: &Path) -> Cluster {
        support::require_nats_server();
        let mut taken = HashSet::new();
        let mut port = || loop {
            let p = free_port();
            if taken.insert(p) {
                break p;
            }
        };
        // (client, cluster, http) ports of each node.
        let ports: Vec<(u16, u16, u16)> = (0..3).map(|_| (port(), port(), port())).collect();
        let mut nodes = Vec::new();
        for (i, &(client, route, http)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let folder = dir.join(&name);
            std::fs::create_dir_all(&folder).unwrap();
            let routes: Vec<String> = ports
                .iter()
                .filter(|p| p.1 != route)
                .map(|p| format!("\"nats-route://127.0.0.1:{}\"", p.1))
                .collect();
            let config = folder.join("nats.conf");
            // `sync_interval: always`: every write is flushed before the server acknowledges it.
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nhost: 127.0.0.1\nport: {client}\nhttp: \"127.0.0.1:{http}\"\n\
                     jetstream {{ store_dir: \"{}\", sync_interval: always }}\n\
                     cluster {{ name: weft, listen: \"127.0.0.1:{route}\", routes: [{}] }}\n",
                    folder.join("js").display(),
                    routes.join(", ")
                ),
            )
            .unwrap();
            let mut node = Node {
                log: folder.join("nats.log"),
                name,
                config,
                client,
                http,
                child: None,
            };
            node.spawn();
            nodes.push(node);
        }
        let cluster = Cluster {
            nodes,
            monitor: support::http_client(Duration::from_secs(2)),
        };
        cluster.wait_ready(Duration::from_secs(60)).await;
        cluster
    }

    /// Waits until every running node is healthy, knows a running meta leader (after a kill,
    /// the others name the dead one until they elect a successor) and has its routes to every
    /// other running node: a JetStream API answer sent while routes are still being set up
    /// can be lost, and `weft run` exits when creating its streams or consumers times out.
    async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let running: Vec<&Node> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
        // Per peer: three pooled routes and one for the system account.
        let routes = 4 * (running.len() as u64 - 1);
        loop {
            let mut ready = true;
            for node in &running {
                let leader = node.meta_leader(&self.monitor).await;
                ready = ready
                    && node.healthy(&self.monitor).await
                    && running.iter().any(|n| Some(&n.name) == leader.as_ref())
                    && node.routes(&self.monitor).await == routes;
            }
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the NATS cluster did not become ready in {timeout:?}; {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The flow's stream as the first running node reports it (`/jsz?streams=true`).
    async fn stream(&self) -> Option<Value> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Some(jsz) = node.monitor(&self.monitor, "/jsz?streams=true").await else {
                continue;
            };
            let found = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .find(|s| s["name"] == STREAM);
            if let Some(stream) = found {
                return Some(stream.clone());
            }
        }
        None
    }

    /// The stream's leader and its replica count (leader and followers).
    async fn stream_placement(&self) -> (String, usize) {
        let stream = self.stream().await.expect("weft created the flow's stream");
        let cluster = &stream["cluster"];
        let leader = cluster["leader"].as_str().unwrap_or_default().to_string();
        let followers = cluster["replicas"].as_array().map_or(0, Vec::len);
        let replicas = followers + usize::from(!leader.is_empty());
        (leader, replicas)
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The end of each node's log, for failure messages.
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {} log:\n{}", n.name, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The scratch of one scenario: the cluster, the reference repository (delivering to a
/// counting sink), a data folder, a log and a port for `weft run --broker`.
struct Setup {
    /// Kept for the test's life: the folder is removed when it drops.
    _dir: tempfile::TempDir,
    cluster: Cluster,
    sink: CountingSink,
    repo: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
}

impl Setup {
    async fn new() -> Setup {
        let (sink, sink_addr) = CountingSink::start().await;
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::start(dir.path()).await;
        let repo = short_timeout_reference_repo(dir.path(), sink_addr);
        Setup {
            data: dir.path().join("data"),
            log: dir.path().join("weft.log"),
            port: free_port(),
            cluster,
            sink,
            repo,
            _dir: dir,
        }
    }

    /// Both scenarios' start: weft on n1 (see [`Setup::spawn_weft`]), its stream on 3
    /// replicas, and its connection to n1 checked; returns weft and the stream's leader.
    async fn start_weft(&self) -> (WeftProcess, String) {
        let weft = self.spawn_weft().await;
        let (leader, replicas) = self.cluster.stream_placement().await;
        assert_eq!(
            replicas, 3,
            "--broker-replicas 3: the stream has 3 replicas"
        );
        assert!(
            self.cluster.nodes[0]
                .connections(&self.cluster.monitor)
                .await
                > 0,
            "weft is connected to n1"
        );
        (weft, leader)
    }

    /// `weft run --broker <n1> --broker-replicas 3`, once healthy (fails with weft's log if it
    /// exits first). One URL (`--broker` also takes a comma-separated list): the test needs to
    /// know the node weft is connected to, and the client learns the other nodes from the
    /// server's INFO.
    async fn spawn_weft(&self) -> WeftProcess {
        let url = self.cluster.nodes[0].url();
        let mut weft = WeftProcess::spawn_args(
            &binary(),
            &self.repo,
            &self.data,
            self.port,
            &self.log,
            &["--broker", url.as_str(), "--broker-replicas", "3"],
        );
        let client = support::http_client(Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let healthy = client
                .get(format!("http://127.0.0.1:{}/healthz", self.port))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if healthy {
                return weft;
            }
            let exited = weft.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "weft run did not become healthy ({exited:?}); log: {}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default(),
                self.cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// What the senders saw.
#[derive(Default)]
struct Sent {
    /// Ids answered 2xx.
    accepted: Mutex<Vec<String>>,
    /// Posts answered 503 or refused at connect, sent again.
    retried: AtomicUsize,
    /// Posts with no answer (cut by a kill, timed out): maybe stored, not sent again.
    unanswered: AtomicUsize,
    /// Any other answer: (id, status).
    other: Mutex<Vec<(String, u16)>>,
}

impl Sent {
    fn accepted(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Waits until at least `n` events were accepted.
    async fn wait_accepted(&self, n: usize, timeout: Duration, log: &Path) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let accepted = self.accepted();
            if accepted >= n {
                return accepted;
            }
            assert!(
                Instant::now() < deadline,
                "only {accepted} events accepted after {timeout:?} (waiting for {n}); log: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `SENDERS` paced senders posting events `<prefix>-<s>-<i>`. An event answered 503 (the
/// broker could not store it) or refused at connect (weft restarting) was not accepted: it is
/// sent again, until `deadline`.
fn load(
    port: u16,
    prefix: &str,
    deadline: Instant,
) -> (Arc<Sent>, Vec<tokio::task::JoinHandle<()>>) {
    let client = support::http_client(Duration::from_secs(10));
    let sent = Arc::new(Sent::default());
    let handles = (0..SENDERS)
        .map(|s| {
            let (client, sent, prefix) = (client.clone(), sent.clone(), prefix.to_string());
            tokio::spawn(async move {
                for i in 0..PER_SENDER {
                    let id = format!("{prefix}-{s}-{i}");
                    while Instant::now() < deadline {
                        match support::post_reference(&client, port, &id).await {
                            Ok(r) if r.status().is_success() => {
                                sent.accepted.lock().unwrap().push(id.clone());
                                tokio::time::sleep(PACE).await;
                                break;
                            }
                            Ok(r) if r.status() == 503 => {}
                            Err(e) if e.is_connect() => {}
                            Ok(r) => {
                                sent.other
                                    .lock()
                                    .unwrap()
                                    .push((id.clone(), r.status().as_u16()));
                                break;
                            }
                            Err(_) => {
                                sent.unanswered.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                        sent.retried.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    (sent, handles)
}

/// Waits for the senders, then until every accepted event reached the sink (until
/// `deadline`); fails if one is lost; prints the counts. Then waits until the cluster is whole
/// again, and checks that `weft` kept running through it all.
async fn check(
    setup: &Setup,
    weft: &mut WeftProcess,
    scenario: &str,
    sent: &Sent,
    senders: Vec<tokio::task::JoinHandle<()>>,
    deadline: Instant,
) {
    for s in senders {
        s.await.unwrap();
    }
    let accepted = sent.accepted.lock().unwrap().clone();
    let other = sent.other.lock().unwrap().clone();
    assert!(
        other.is_empty(),
        "unexpected answers (id, status): {other:?}"
    );
    assert!(
        accepted.len() >= SENDERS * PER_SENDER * 9 / 10,
        "{scenario}: only {} of {} events accepted; log: {}",
        accepted.len(),
        SENDERS * PER_SENDER,
        std::fs::read_to_string(&setup.log).unwrap_or_default()
    );
    while Instant::now() < deadline {
        let all = {
            let seen = setup.sink.seen.lock().unwrap();
            accepted.iter().all(|id| seen.contains_key(id))
        };
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = setup.sink.seen.lock().unwrap().clone();
    support::assert_none_lost(&accepted, |id| seen.contains_key(id), &setup.log);
    let delivered = accepted.iter().filter(|id| seen.contains_key(*id)).count();
    let duplicated = accepted.iter().filter(|id| seen[*id].0 > 1).count();
    let extra: usize = accepted.iter().map(|id| seen[id].0 - 1).sum();
    eprintln!(
        "{scenario}: accepted {}, delivered unique {delivered}, duplicates {duplicated} ({extra} extra arrivals); \
         {} posts retried after 503 or a refused connection, {} unanswered, {} distinct ids at the sink",
        accepted.len(),
        sent.retried.load(Ordering::Relaxed),
        sent.unanswered.load(Ordering::Relaxed),
        seen.len()
    );
    wait_whole(&setup.cluster).await;
    assert!(
        weft.child.try_wait().unwrap().is_none(),
        "{scenario}: weft kept running through the node's kill"
    );
}

/// Waits until the killed node is back and every node is current again.
async fn wait_whole(cluster: &Cluster) {
    cluster.wait_ready(Duration::from_secs(30)).await;
    let (leader, replicas) = cluster.stream_placement().await;
    assert_eq!(
        replicas, 3,
        "the stream is back to 3 replicas (leader {leader})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_survive_weft_kill_9_then_killing_a_node_weft_is_not_connected_to() {
    let started = Instant::now();
    let mut setup = Setup::new().await;
    let (mut weft, _) = setup.start_weft().await;
    let monitor = setup.cluster.monitor.clone();

    let (sent, senders) = load(setup.port, "f", started + LOAD_FOR);
    // weft is killed with SIGKILL mid-load and restarted (what it held unsettled comes back
    // once its `ack_wait` passes; events refused at connect meanwhile are sent again).
    let at_weft_kill = sent
        .wait_accepted(150, Duration::from_secs(30), &setup.log)
        .await;
    let delivered_at_weft_kill = setup.sink.distinct();
    weft.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut weft = setup.spawn_weft().await;
    // Then a node weft is not connected to: the stream's leader unless it is n1 (weft's
    // node), else the meta leader unless it is n1, else n2.
    let at_node_kill = sent
        .wait_accepted(300, Duration::from_secs(30), &setup.log)
        .await;
    let (leader, _) = setup.cluster.stream_placement().await;
    let meta = setup.cluster.nodes[1]
        .meta_leader(&monitor)
        .await
        .unwrap_or_default();
    let victim = [leader.as_str(), meta.as_str()]
        .into_iter()
        .filter_map(|name| setup.cluster.index(name))
        .find(|&i| i != 0)
        .unwrap_or(1);
    let victim_name = setup.cluster.nodes[victim].name.clone();
    setup.cluster.nodes[victim].kill9();
    let node_killed = Instant::now();
    // The load goes on on two nodes (once they elected the leaders the victim held).
    let after = sent
        .wait_accepted(at_node_kill + 150, Duration::from_secs(40), &setup.log)
        .await;
    let resumed = node_killed.elapsed();
    // The killed node comes back while the load goes on, and catches up.
    setup.cluster.nodes[victim].spawn();
    check(
        &setup,
        &mut weft,
        "cluster, weft and a node weft is not connected to killed",
        &sent,
        senders,
        started + DELIVERED_BY,
    )
    .await;
    eprintln!(
        "cluster, weft and a node weft is not connected to killed: weft at {at_weft_kill} accepted \
         ({delivered_at_weft_kill} delivered then); {victim_name} (stream leader {leader}, meta leader {meta}) \
         at {at_node_kill} accepted, {} more accepted within {resumed:?}; took {:?}",
        after - at_node_kill,
        started.elapsed()
    );
    drop(weft);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_survive_killing_the_node_weft_is_connected_to() {
    let started = Instant::now();
    let mut setup = Setup::new().await;
    let (mut weft, leader) = setup.start_weft().await;
    let monitor = setup.cluster.monitor.clone();
    let meta = setup.cluster.nodes[1]
        .meta_leader(&monitor)
        .await
        .unwrap_or_default();

    let (sent, senders) = load(setup.port, "c", started + LOAD_FOR);
    let at_kill = sent
        .wait_accepted(150, Duration::from_secs(30), &setup.log)
        .await;
    setup.cluster.nodes[0].kill9();
    let killed = Instant::now();
    // weft reconnects to a node it learned from n1's INFO and the load goes on.
    let after = sent
        .wait_accepted(at_kill + 150, Duration::from_secs(40), &setup.log)
        .await;
    let resumed = killed.elapsed();
    let mut elsewhere = 0;
    for node in &setup.cluster.nodes[1..] {
        elsewhere += node.connections(&monitor).await;
    }
    assert!(elsewhere > 0, "weft reconnected to n2 or n3");
    // n1 comes back while the load goes on and catches up.
    setup.cluster.nodes[0].spawn();
    check(
        &setup,
        &mut weft,
        "cluster, weft's node killed",
        &sent,
        senders,
        started + DELIVERED_BY,
    )
    .await;
    eprintln!(
        "cluster, weft's node killed: killed n1 (stream leader {leader}, meta leader {meta}) at {at_kill} accepted, \
         {} more accepted within {resumed:?}; took {:?}",
        after - at_kill,
        started.elapsed()
    );
    drop(weft);
}
