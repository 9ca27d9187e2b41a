//! Benchmark of the container topology (`weft up`: broker, gateway, one container per step) on
//! the reference flow, against `weft run` (one process, embedded SQLite queue) in the same run.
//! Builds both images from this release binary, times `weft up` until the gateway serves, runs
//! the reference benchmark's load (1, 16 and 64 senders, signed events) against each, prints
//! accepted/s, delivered/s, p50/p99 from request to delivery and the ratio containers / weft
//! run, and every container's RSS idle and after the load. Needs a Docker engine.
//! Run: `cargo bench --bench containers`; `WEFT_BENCH_EVENTS=N` changes the events per run
//! (default 5,000).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptionsBuilder, RemoveImageOptions,
};
use support::{
    CountingSink, Figures, WeftProcess, binary, docker_block, free_port, http_client, load,
    reference_repo, text, weft,
};

const RUNTIME_IMAGE: &str = "weft/runtime:bench";
const BROKER_IMAGE: &str = "weft/nats:bench";
/// The bundle's customer (not the tests' `acme`, so that a test run beside it does not clash).
const CUSTOMER: &str = "bench";

/// Takes the bundle down with its volumes and deletes the bench images, also on a panic.
struct Cleanup {
    bundle: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(bundle) = &self.bundle {
            let down = weft(&["down", bundle, "--volumes"]);
            if !down.status.success() {
                eprintln!("weft down {bundle} --volumes: {}", text(&down.stderr));
            }
        }
        docker_block(|d| async move {
            for image in [RUNTIME_IMAGE, BROKER_IMAGE] {
                let _ = d
                    .remove_image(image, None::<RemoveImageOptions>, None)
                    .await;
            }
        });
    }
}

/// `weft image build` with `extra` arguments; returns the image's size in bytes.
fn build_image(extra: &[&str], tag: &str) -> u64 {
    let mut args = vec!["image", "build"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--tag", tag, "--format", "json"]);
    let out = weft(&args);
    assert!(out.status.success(), "weft {args:?}: {}", text(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    answer["size"].as_u64().unwrap_or(0)
}

/// `weft build` of `repo` into `out`; returns the one bundle folder.
fn build_bundle(repo: &Path, out: &Path) -> PathBuf {
    let built = weft(&["build", repo.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(built.status.success(), "{}", text(&built.stderr));
    out.join(CUSTOMER).join("reference")
}

/// The bundle's containers, named by role (and step), with their VmRSS in KiB (docker inspect →
/// State.Pid → /proc/PID/status; dockerd runs on this host, so the pids are ours).
fn container_rss() -> BTreeMap<String, u64> {
    docker_block(|d| async move {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("weft.customer={CUSTOMER}")],
        )]);
        let list = d
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap();
        let mut rss = BTreeMap::new();
        for c in list {
            let labels = c.labels.unwrap_or_default();
            let name = c
                .names
                .unwrap_or_default()
                .first()
                .cloned()
                .unwrap_or_default();
            let role = labels.get("weft.role").cloned().unwrap_or_default();
            let key = match labels.get("weft.step") {
                Some(step) => format!("{role} {step} ({})", name.rsplit('-').next().unwrap_or("1")),
                None => role,
            };
            let inspect = d
                .inspect_container(
                    name.trim_start_matches('/'),
                    None::<InspectContainerOptions>,
                )
                .await
                .unwrap();
            let pid = inspect.state.and_then(|s| s.pid).unwrap_or(0);
            let pid = u32::try_from(pid).unwrap_or(0);
            rss.insert(key, support::status_kib(pid, "VmRSS:").unwrap_or(0));
        }
        rss
    })
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn row(label: &str, f: &Figures) {
    println!(
        "{:<32} {:>11.0} {:>11.0} {:>9.2} {:>9.2} {:>7}",
        label,
        f.accepted_per_sec,
        f.delivered_per_sec,
        f.p50_ms,
        f.p99_ms,
        f.accepted - f.delivered
    );
}

fn main() {
    let events: usize = std::env::var("WEFT_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // Reachable from the containers as host.docker.internal (the bridge's gateway address).
        let (sink, sink_addr) = CountingSink::start_on("0.0.0.0").await;
        let dir = tempfile::tempdir().unwrap();
        let mut cleanup = Cleanup { bundle: None };

        let started = Instant::now();
        let runtime_size = build_image(&[], RUNTIME_IMAGE);
        let broker_size = build_image(&["--broker"], BROKER_IMAGE);
        println!(
            "images built in {:.1} s: {RUNTIME_IMAGE} {:.1} MB, {BROKER_IMAGE} {:.1} MB",
            started.elapsed().as_secs_f64(),
            runtime_size as f64 / 1e6,
            broker_size as f64 / 1e6
        );

        // The reference flow as customer `bench`, delivering to the sink as the containers reach it.
        let repo = dir.path().join("repo");
        reference_repo(&repo, format!("host.docker.internal:{}", sink_addr.port()));
        std::fs::rename(repo.join("instances/acme"), repo.join(format!("instances/{CUSTOMER}"))).unwrap();
        let bundle = build_bundle(&repo, &dir.path().join("dist"));
        std::fs::write(bundle.join(".env"), format!("HOOK_SECRET={}\nCRM_TOKEN={}\n", support::HOOK_SECRET, support::TOKEN)).unwrap();
        let bundle_arg = bundle.to_str().unwrap().to_string();
        cleanup.bundle = Some(bundle_arg.clone());

        // `weft up`, timed until the gateway serves and until `weft up` returns (every container
        // running, those with a healthcheck healthy).
        let port = free_port();
        let started = Instant::now();
        let up = tokio::task::spawn_blocking({
            let bundle_arg = bundle_arg.clone();
            move || {
                let up = weft(&[
                    "up", &bundle_arg, "--runtime-image", RUNTIME_IMAGE, "--broker-image", BROKER_IMAGE,
                    "--port", &port.to_string(), "--timeout", "120",
                ]);
                (up, started.elapsed())
            }
        });
        let client = http_client(Duration::from_secs(2));
        let serving = loop {
            if client.get(format!("http://127.0.0.1:{port}/healthz")).send().await.is_ok_and(|r| r.status() == 200) {
                break started.elapsed();
            }
            assert!(started.elapsed() < Duration::from_secs(150), "the gateway never served");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let (up, up_returned) = up.await.unwrap();
        assert!(up.status.success(), "weft up: {}", text(&up.stderr));
        println!(
            "weft up: gateway serving after {:.2} s, weft up returned after {:.2} s",
            serving.as_secs_f64(),
            up_returned.as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = container_rss();

        // `weft run` on the same flow, delivering to the same sink on the host.
        let run_dir = dir.path().join("run");
        let run_repo = run_dir.join("repo");
        reference_repo(&run_repo, format!("127.0.0.1:{}", sink_addr.port()));
        let run_port = free_port();
        let run = WeftProcess::spawn(&binary(), &run_repo, &run_dir.join("data"), run_port, &run_dir.join("weft.log"));
        run.wait_healthy().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let run_idle = run.rss_kib().unwrap_or(0);

        let containers_url = format!("http://127.0.0.1:{port}/hooks/{CUSTOMER}/reference/orders");
        let run_url = format!("http://127.0.0.1:{run_port}/hooks/acme/reference/orders");
        // Warm both up.
        load(&containers_url, &sink, "warm-c", 500, 16).await;
        load(&run_url, &sink, "warm-r", 500, 16).await;

        println!(
            "reference flow: signed webhook → transform → branch → HTTP POST; {events} events per run ({} with 1 sender); {} cores",
            (events / 10).max(100),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );
        println!("{:<32} {:>11} {:>11} {:>9} {:>9} {:>7}", "", "accepted/s", "delivered/s", "p50 ms", "p99 ms", "lost");
        let mut ratios = Vec::new();
        // One sender first (a tenth of the events): the path's own latency, with no backlog.
        for concurrency in [1, 16, 64] {
            let n = if concurrency == 1 { (events / 10).max(100) } else { events };
            let c = load(&containers_url, &sink, &format!("c{concurrency}"), n, concurrency).await;
            let r = load(&run_url, &sink, &format!("r{concurrency}"), n, concurrency).await;
            row(&format!("containers (weft up), {concurrency} sender{}", if concurrency == 1 { "" } else { "s" }), &c);
            row(&format!("weft run (SQLite), {concurrency} sender{}", if concurrency == 1 { "" } else { "s" }), &r);
            ratios.push((concurrency, c.accepted_per_sec / r.accepted_per_sec, c.delivered_per_sec / r.delivered_per_sec));
        }
        for (c, accepted, delivered) in ratios {
            println!("containers / weft run, {c} sender(s): accepted/s {accepted:.2}×, delivered/s {delivered:.2}×");
        }

        let after = container_rss();
        println!("{:<32} {:>10} {:>12}", "RSS (VmRSS)", "idle MB", "after load MB");
        for (service, kib) in &idle {
            println!("{:<32} {:>10.1} {:>12.1}", service, mb(*kib), mb(after.get(service).copied().unwrap_or(0)));
        }
        println!(
            "{:<32} {:>10.1} {:>12.1}",
            "containers, total",
            mb(idle.values().sum()),
            mb(after.values().sum())
        );
        println!("{:<32} {:>10.1} {:>12.1}", "weft run", mb(run_idle), mb(run.rss_kib().unwrap_or(0)));
        let duplicates = |prefix: &str| sink.seen.lock().unwrap().iter().filter(|(k, (n, _))| k.starts_with(prefix) && *n > 1).count();
        println!("duplicate deliveries: containers {}, weft run {}", duplicates("c"), duplicates("r"));
        drop(run);
        // `cleanup` drops here (or while a panic unwinds): down --volumes, images deleted.
    });
}
