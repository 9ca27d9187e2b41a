//! The container topology on a real Docker engine (`.ci/run` starts dockerd; without one these
//! tests fail, never skip): `weft image build` builds both images (once per binary, shared by
//! the tests of this file under a lock); `weft up` runs a bundle's containers, labelled and
//! healthy, `weft ps` and `weft logs` show them and `weft down` leaves nothing; the emitted
//! compose file runs as is under Debian's docker-compose 1.29 and carries an event end to end;
//! a missing image is named with the command that builds it, an unreachable engine with the hint
//! to start dockerd; 2,000 signed events go through the containers while the HTTP step's
//! replicas and the broker are SIGKILLed, none lost; a fleet of 100 instances (`weft build
//! --fleet`) runs in four containers, each delivery with its own customer's credentials.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptionsBuilder};
use support::{CountingSink, binary, docker_block, free_port, http_client, text, weft};

/// The tags the tests build (not the release defaults, which a user may have built).
const RUNTIME_IMAGE: &str = "weft-test/runtime:latest";
const BROKER_IMAGE: &str = "weft-test/nats:latest";

/// `weft up BUNDLE` with the test images on `port` (90 s to become healthy), off the async
/// threads.
async fn weft_up(bundle: &str, port: u16, extra: &[&str]) -> Output {
    let port = port.to_string();
    let args: Vec<String> = [
        "up",
        bundle,
        "--runtime-image",
        RUNTIME_IMAGE,
        "--broker-image",
        BROKER_IMAGE,
        "--port",
        &port,
        "--timeout",
        "90",
    ]
    .iter()
    .chain(extra)
    .map(|a| a.to_string())
    .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        weft(&args)
    })
    .await
    .unwrap()
}

/// Builds both images unless this very binary built them already: the test processes of this
/// file take turns on a lock file, and a stamp (binary size and modification time, and the
/// image ids) says whether the images on the engine are this binary's.
fn images() {
    let lock_path = std::env::temp_dir().join("weft-test-images.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.lock().unwrap();
    let meta = std::fs::metadata(binary()).unwrap();
    let stamp_path = std::env::temp_dir().join("weft-test-images.stamp");
    let identity = format!(
        "{} {} {:?}",
        binary().display(),
        meta.len(),
        meta.modified().unwrap()
    );
    let ids = || -> Option<String> {
        let runtime = docker_block(|d| async move { d.inspect_image(RUNTIME_IMAGE).await.ok() })?;
        let broker = docker_block(|d| async move { d.inspect_image(BROKER_IMAGE).await.ok() })?;
        Some(format!("{:?} {:?}", runtime.id, broker.id))
    };
    if let (Ok(stamp), Some(ids)) = (std::fs::read_to_string(&stamp_path), ids())
        && stamp == format!("{identity}\n{ids}")
    {
        return;
    }
    let previous =
        docker_block(
            |d| async move { d.inspect_image(RUNTIME_IMAGE).await.ok().and_then(|i| i.id) },
        );
    for args in [
        &["image", "build", "--tag", RUNTIME_IMAGE][..],
        &[
            "image",
            "build",
            "--broker",
            "--tag",
            BROKER_IMAGE,
            "--format",
            "json",
        ][..],
    ] {
        let out = weft(args);
        assert!(out.status.success(), "weft {args:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains(args[args.iter().position(|a| *a == "--tag").unwrap() + 1])
        );
    }
    std::fs::write(&stamp_path, format!("{identity}\n{}", ids().unwrap())).unwrap();
    // The last binary's runtime image (hundreds of MB for a debug build), untagged now.
    if let Some(previous) = previous {
        docker_block(|d| async move {
            let _ = d
                .remove_image(
                    &previous,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                )
                .await;
        });
    }
}

/// Every container (any state) labelled with this customer.
fn containers_of(customer: &str) -> Vec<bollard::models::ContainerSummary> {
    let customer = customer.to_string();
    docker_block(|d| async move {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("weft.customer={customer}")],
        )]);
        d.list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap()
    })
}

/// A one-flow repository with no secrets: a webhook, a transform, and an HTTP POST (two
/// replicas) to `sink` (as the containers reach it), for `customer`.
fn plain_repo(dir: &Path, customer: &str, sink: &str) {
    let files = [
        ("weft.yaml", "weft: 1\nname: plain\n".to_string()),
        (
            "integrations/relay/integration.yaml",
            format!(
                r#"weft: 1
name: relay
description: A webhook relayed to a sink
config:
  sink_url: {{ type: url, default: "http://{sink}" }}
flows:
  orders:
    trigger:
      webhook: {{ path: /orders }}
    steps:
      - id: shape
        uses: transform
        with: {{ value: {{ id: "{{{{ trigger.body.id }}}}" }} }}
      - id: deliver
        uses: http.post
        with: {{ url: "{{{{ config.sink_url }}}}/orders", body: "{{{{ steps.shape }}}}" }}
        retry: {{ attempts: 10, initial: 200ms, max: 2s }}
        replicas: 2
"#
            ),
        ),
        (
            &format!("instances/{customer}/relay.yaml"),
            "weft: 1\nintegration: relay\n".to_string(),
        ),
    ];
    for (path, contents) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }
}

/// `weft build` of `repo`; returns the one bundle folder.
fn build(repo: &Path, out: &Path) -> PathBuf {
    let built = weft(&["build", repo.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(built.status.success(), "{}", text(&built.stderr));
    let customer = std::fs::read_dir(out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::read_dir(customer)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

/// Polls the gateway's /healthz on the host until it answers 200 (at most 90 s).
async fn wait_gateway(port: u16) {
    let client = http_client(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ok = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway on {port} never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Posts `{ id }` to the relay's webhook and waits (at most 60 s) until the sink has it.
async fn relay_one(port: u16, customer: &str, sink: &CountingSink, id: &str) {
    let client = http_client(Duration::from_secs(10));
    let answer = client
        .post(format!(
            "http://127.0.0.1:{port}/hooks/{customer}/relay/orders"
        ))
        .json(&serde_json::json!({ "id": id }))
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_success(),
        "{}: {}",
        answer.status(),
        answer.text().await.unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sink.seen.lock().unwrap().contains_key(id) {
        assert!(Instant::now() < deadline, "{id} never reached the sink");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The images, a sink the containers reach, and the bundle of [`plain_repo`] for `customer`
/// (in the returned folder).
async fn relay_bundle(customer: &str) -> (CountingSink, tempfile::TempDir, PathBuf) {
    images();
    let (sink, addr) = CountingSink::start_on("0.0.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    plain_repo(
        &dir.path().join("repo"),
        customer,
        &format!("host.docker.internal:{}", addr.port()),
    );
    let bundle = build(&dir.path().join("repo"), &dir.path().join("dist"));
    (sink, dir, bundle)
}

/// `weft down BUNDLE --volumes` when dropped: a test's containers go whatever happens.
struct DownOnDrop(String);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = weft(&["down", &self.0, "--volumes"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_labelled_healthy_containers_then_ps_logs_and_down_leave_nothing() {
    let customer = "up-test";
    let (sink, _dir, bundle) = relay_bundle(customer).await;
    let bundle_arg = bundle.to_str().unwrap().to_string();
    // Taken down whatever happens next (the test's own `down` runs first and checks it).
    let _guard = DownOnDrop(bundle_arg.clone());
    let port = free_port();
    let started = Instant::now();
    let up = weft_up(&bundle_arg, port, &["--format", "json"]).await;
    assert!(up.status.success(), "weft up: {}", text(&up.stderr));
    eprintln!("weft up took {:.1} s", started.elapsed().as_secs_f64());
    let table: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    let services: HashMap<&str, &serde_json::Value> = table
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["service"].as_str().unwrap(), s))
        .collect();
    // broker, gateway and deliver: the pure `shape` runs fused in the gateway.
    assert_eq!(services.len(), 3, "{table}");
    assert_eq!(services["step.orders.deliver"]["replicas"], 2);
    assert_eq!(services["gateway"]["state"], "healthy");
    assert_eq!(services["gateway"]["port"], format!("127.0.0.1:{port}"));
    assert_eq!(services["broker"]["state"], "running");

    // Every container: labelled, named after the bundle, on the bundle's network.
    let containers = containers_of(customer);
    assert_eq!(containers.len(), 4);
    for c in &containers {
        let labels = c.labels.clone().unwrap();
        let name = c.names.as_ref().unwrap()[0]
            .trim_start_matches('/')
            .to_string();
        assert!(name.starts_with("weft-up-test-relay-"), "{name}");
        assert_eq!(labels["weft.integration"], "relay");
        let role = labels["weft.role"].as_str();
        assert!(
            ["broker", "gateway", "step"].contains(&role),
            "{name}: {role}"
        );
        if role == "step" {
            assert_eq!(labels["weft.flow"], "orders");
            // `shape` is pure: it runs fused, in the gateway, with no container of its own.
            assert_eq!(labels["weft.step"], "deliver");
        }
        let inspect = docker_block(|d| async move {
            d.inspect_container(&name, None::<InspectContainerOptions>)
                .await
                .unwrap()
        });
        let networks = inspect.network_settings.unwrap().networks.unwrap();
        assert!(networks.contains_key("weft-up-test-relay"), "{networks:?}");
    }

    // An event through the containers: gateway (and its fused shape) → broker → deliver → the sink.
    relay_one(port, customer, &sink, "up-1").await;

    // `up` again recreates the containers (the volumes stay), and they work as before.
    let again = weft_up(&bundle_arg, port, &[]).await;
    assert!(
        again.status.success(),
        "weft up again: {}",
        text(&again.stderr)
    );
    assert!(text(&again.stdout).contains("step.orders.deliver"));
    assert_eq!(containers_of(customer).len(), 4);
    relay_one(port, customer, &sink, "up-2").await;

    // The history the step containers sent lives in the gateway's volume, read with the
    // image's own weft (`docker exec`; WEFT_DATA_DIR is set): both executions succeeded.
    let gateway = Command::new("docker")
        .args(["ps", "--format", "{{.Names}}", "--filter"])
        .arg(format!("label=weft.customer={customer}"))
        .args(["--filter", "label=weft.role=gateway"])
        .output()
        .unwrap();
    let gateway = text(&gateway.stdout).trim().to_string();
    assert!(!gateway.is_empty(), "the gateway container is listed");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let history = Command::new("docker")
            .args(["exec", &gateway, "/weft", "executions", "--format", "json"])
            .output()
            .unwrap();
        assert!(history.status.success(), "{}", text(&history.stderr));
        let list: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
        let succeeded = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["status"] == "succeeded")
            .count();
        if succeeded >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway's history shows {succeeded} succeeded executions: {list}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let ps = weft(&["ps", &bundle_arg]);
    assert!(ps.status.success(), "{}", text(&ps.stderr));
    let listing = text(&ps.stdout);
    assert!(
        listing.contains("step.orders.deliver") && listing.contains("2/2"),
        "{listing}"
    );
    let all = weft(&["ps", "--format", "json"]);
    let all: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|row| row["customer"] == customer && row["service"] == "gateway"),
        "{all}"
    );
    let logs = weft(&["logs", &bundle_arg, "gateway"]);
    assert!(logs.status.success(), "{}", text(&logs.stderr));
    let log_text = text(&logs.stdout);
    assert!(log_text.contains("gateway | "), "{log_text}");
    assert!(log_text.contains("listening"), "{log_text}");
    let unknown = weft(&["logs", &bundle_arg, "no-such-service"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("step.orders.deliver"));

    let down = weft(&["down", &bundle_arg, "--volumes"]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert!(
        containers_of(customer).is_empty(),
        "containers left after down"
    );
    let leftovers = docker_block(|d| async move {
        let network = d.inspect_network("weft-up-test-relay", None).await.is_ok();
        let volume = d
            .inspect_volume("weft-up-test-relay_broker-data")
            .await
            .is_ok();
        (network, volume)
    });
    assert_eq!(
        leftovers,
        (false, false),
        "network or volume left after down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emitted_compose_file_runs_under_docker_compose() {
    let customer = "compose-test";
    let (sink, _dir, bundle) = relay_bundle(customer).await;
    // As a user would: .env from .env.example (no secrets in this integration).
    std::fs::copy(bundle.join(".env.example"), bundle.join(".env")).unwrap();
    let port = free_port();
    let compose =
        {
            let bundle = bundle.clone();
            move |args: &[&str]| {
                Command::new("docker-compose")
            .args(args)
            .current_dir(&bundle)
            .env("WEFT_RUNTIME_IMAGE", RUNTIME_IMAGE)
            .env("WEFT_BROKER_IMAGE", BROKER_IMAGE)
            .env("WEFT_PORT", port.to_string())
            .output()
            .expect("docker-compose is installed (apt-get install docker-compose; .ci/run does)")
            }
        };
    let up = tokio::task::spawn_blocking({
        let compose = compose.clone();
        move || compose(&["up", "-d"])
    })
    .await
    .unwrap();
    // Taken down whatever happens next.
    struct Down<F: Fn(&[&str]) -> Output>(F);
    impl<F: Fn(&[&str]) -> Output> Drop for Down<F> {
        fn drop(&mut self) {
            let _ = (self.0)(&["down", "-v"]);
        }
    }
    let guard = Down(compose.clone());
    assert!(
        up.status.success(),
        "docker-compose up: {}",
        text(&up.stderr)
    );
    wait_gateway(port).await;
    let containers = containers_of(customer);
    // broker, gateway (which runs the fused `shape`), and deliver twice (deploy.replicas).
    assert_eq!(containers.len(), 4);
    for c in &containers {
        let labels = c.labels.as_ref().unwrap();
        assert_eq!(
            labels["com.docker.compose.project"],
            "weft-compose-test-relay"
        );
        assert!(labels.contains_key("weft.role"));
    }
    relay_one(port, customer, &sink, "compose-1").await;
    drop(guard);
    assert!(
        containers_of(customer).is_empty(),
        "containers left after down -v"
    );
}

#[test]
fn a_missing_image_is_named_with_the_command_that_builds_it() {
    let dir = tempfile::tempdir().unwrap();
    plain_repo(
        &dir.path().join("repo"),
        "missing-test",
        "host.docker.internal:9",
    );
    let bundle = build(&dir.path().join("repo"), &dir.path().join("dist"));
    let out = weft(&[
        "up",
        bundle.to_str().unwrap(),
        "--runtime-image",
        "weft-test/absent:none",
        "--broker-image",
        "weft-test/absent-broker:none",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("weft image build --tag weft-test/absent:none"),
        "{stderr}"
    );
    assert!(
        stderr.contains("weft image build --broker --tag weft-test/absent-broker:none"),
        "{stderr}"
    );
    assert!(containers_of("missing-test").is_empty());
}

/// What the chaos task did, and when (accepted events at the time).
#[derive(Debug, Default)]
struct Chaos {
    log: Vec<(usize, String)>,
}

/// SIGKILLs a container and starts it again (as a crashed container is restarted).
async fn kill_and_start(docker: &Docker, name: &str) {
    docker
        .kill_container(
            name,
            Some(
                bollard::query_parameters::KillContainerOptionsBuilder::default()
                    .signal("SIGKILL")
                    .build(),
            ),
        )
        .await
        .unwrap();
    docker.start_container(name, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_events_survive_killed_http_step_containers_and_a_broker_kill() {
    const EVENTS: usize = 2_000;
    images();
    let (sink, addr) = CountingSink::start_on("0.0.0.0").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    support::reference_repo(&repo, format!("host.docker.internal:{}", addr.port()));
    // Two replicas of the HTTP step, and a short timeout: a killed replica's messages come back
    // to the other after the step's timeout + 5 s.
    let integration = repo.join("integrations/reference/integration.yaml");
    let source = std::fs::read_to_string(&integration).unwrap();
    let anchor = "retry: { attempts: 10, initial: 100ms, max: 2s }";
    assert!(source.contains(anchor));
    std::fs::write(
        &integration,
        source.replace(
            anchor,
            &format!("{anchor}\n                  timeout: 5s\n                  replicas: 2"),
        ),
    )
    .unwrap();
    let bundle = build(&repo, &dir.path().join("dist"));
    std::fs::write(
        bundle.join(".env"),
        format!(
            "HOOK_SECRET={}\nCRM_TOKEN={}\n",
            support::HOOK_SECRET,
            support::TOKEN
        ),
    )
    .unwrap();
    let bundle_arg = bundle.to_str().unwrap().to_string();
    let _guard = DownOnDrop(bundle_arg.clone());
    let port = free_port();
    let up = weft_up(&bundle_arg, port, &[]).await;
    assert!(up.status.success(), "weft up: {}", text(&up.stderr));

    // Each container has only the secrets it reads.
    let envs = docker_block(|d| async move {
        let mut envs = HashMap::new();
        for name in [
            "weft-acme-reference-gateway",
            "weft-acme-reference-step.orders.deliver-1",
        ] {
            let inspect = d
                .inspect_container(name, None::<InspectContainerOptions>)
                .await
                .unwrap();
            envs.insert(name, inspect.config.unwrap().env.unwrap().join(" "));
        }
        envs
    });
    assert!(envs["weft-acme-reference-gateway"].contains("HOOK_SECRET="));
    assert!(!envs["weft-acme-reference-gateway"].contains("CRM_TOKEN="));
    assert!(envs["weft-acme-reference-step.orders.deliver-1"].contains("CRM_TOKEN="));
    assert!(!envs["weft-acme-reference-step.orders.deliver-1"].contains("HOOK_SECRET="));

    // 16 senders; each event is posted until the gateway accepts it (503 while the broker is
    // down), at most 60 s.
    let started = Instant::now();
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..16 {
        let (accepted, next) = (accepted.clone(), next.clone());
        senders.push(tokio::spawn(async move {
            let client = http_client(Duration::from_secs(10));
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= EVENTS {
                    return;
                }
                let id = format!("c{n}");
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match support::post_reference(&client, port, &id).await {
                        Ok(r) if r.status().is_success() => break,
                        _ => {
                            assert!(Instant::now() < deadline, "{id} never accepted");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                accepted.lock().unwrap().push(id);
            }
        }));
    }
    // The chaos: the HTTP step's replicas SIGKILLed (one, then the other) and the broker
    // SIGKILLed, each started again, while events keep coming.
    let chaos = {
        let accepted = accepted.clone();
        let sink = sink.clone();
        tokio::task::spawn_blocking(move || {
            let mut chaos = Chaos::default();
            let plan = [
                (400, "weft-acme-reference-step.orders.deliver-1"),
                (900, "weft-acme-reference-step.orders.deliver-2"),
                (1_400, "weft-acme-reference-broker"),
            ];
            for (at, name) in plan {
                let deadline = Instant::now() + Duration::from_secs(120);
                while accepted.lock().unwrap().len() < at {
                    assert!(Instant::now() < deadline, "the load stalled before {at}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                let now = accepted.lock().unwrap().len();
                docker_block(|d| async move { kill_and_start(&d, name).await });
                chaos.log.push((
                    now,
                    format!("{name} killed with {} delivered", sink.distinct()),
                ));
            }
            chaos
        })
    };
    for s in senders {
        s.await.unwrap();
    }
    let chaos = chaos.await.unwrap();
    let accepted = accepted.lock().unwrap().clone();
    let accept_secs = started.elapsed().as_secs_f64();
    assert_eq!(accepted.len(), EVENTS);
    let deadline = Instant::now() + Duration::from_secs(120);
    while accepted
        .iter()
        .any(|id| !sink.seen.lock().unwrap().contains_key(id))
    {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = dir.path().join("containers.log");
    std::fs::write(&logs, weft(&["logs", &bundle_arg, "--tail", "40"]).stdout).unwrap();
    let seen = sink.seen.lock().unwrap().clone();
    support::assert_none_lost(&accepted, |id| seen.contains_key(id), &logs);
    let duplicates: usize = seen.values().map(|(n, _)| n - 1).sum();
    eprintln!(
        "containers: {EVENTS} accepted in {accept_secs:.1} s, all delivered in {:.1} s, {duplicates} duplicate deliveries; {:?}",
        started.elapsed().as_secs_f64(),
        chaos.log
    );
    // No secret in any container's log.
    let all_logs = text(&weft(&["logs", &bundle_arg]).stdout);
    assert!(!all_logs.contains(support::HOOK_SECRET) && !all_logs.contains(support::TOKEN));
}

#[test]
fn an_unreachable_engine_says_to_start_dockerd() {
    let out = Command::new(binary())
        .args(["ps"])
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("cannot reach the Docker engine"),
        "{stderr}"
    );
    assert!(stderr.contains("start dockerd"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_a_hundred_instances_shares_containers_and_keeps_customers_apart() {
    const CUSTOMERS: usize = 100;
    images();
    let (sink, sink_addr) = support::CredentialSink::start_on("0.0.0.0").await;
    let sink_port = sink_addr.port();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let sink_url = format!("http://host.docker.internal:{sink_port}");
    let mut files = vec![
        (
            "weft.yaml".to_string(),
            "weft: 1\nname: fleet-test\n".to_string(),
        ),
        (
            "integrations/relay/integration.yaml".to_string(),
            format!(
                r#"weft: 1
name: relay
config:
  sink_url: {{ type: url, default: "{sink_url}" }}
  token: {{ type: secret }}
flows:
  orders:
    trigger:
      webhook: {{ path: /orders }}
    steps:
      - id: shape
        uses: transform
        with: {{ value: {{ id: "{{{{ trigger.body.id }}}}" }} }}
      - id: deliver
        uses: http.post
        with:
          url: "{{{{ config.sink_url }}}}/orders"
          headers: {{ Authorization: "Bearer {{{{ config.token }}}}" }}
          body: "{{{{ steps.shape }}}}"
        retry: {{ attempts: 4, initial: 200ms, max: 1s }}
        replicas: 2
"#
            ),
        ),
    ];
    let customers: Vec<String> = (0..CUSTOMERS).map(|c| format!("c{c:03}")).collect();
    let mut dotenv = String::new();
    for customer in &customers {
        let variable = format!("TOKEN_{}", customer.to_uppercase());
        let mut text =
            format!("weft: 1\nintegration: relay\nconfig:\n  token: {{ secret: {variable} }}\n");
        // c000's upstream is down: every call answers 503.
        if customer == "c000" {
            text.push_str(&format!("  sink_url: {sink_url}/down\n"));
        }
        files.push((format!("instances/{customer}/relay.yaml"), text));
        dotenv.push_str(&format!("{variable}={}\n", support::fleet_token(customer)));
    }
    let files: Vec<(&str, String)> = files.iter().map(|(p, t)| (p.as_str(), t.clone())).collect();
    support::write_files(&repo, &files);
    let out = dir.path().join("dist");
    let build_fleet = || {
        let built = weft(&[
            "build",
            repo.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--fleet",
        ]);
        assert!(built.status.success(), "{}", text(&built.stderr));
    };
    build_fleet();
    let fleet = out.join("fleet");
    // The operator's .env: the project name from .env.example, and every customer's token.
    let example = std::fs::read_to_string(fleet.join(".env.example")).unwrap();
    let project: String = example
        .lines()
        .filter(|l| l.starts_with("COMPOSE_PROJECT_NAME="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(fleet.join(".env"), project + &dotenv).unwrap();
    let fleet_arg = fleet.to_str().unwrap().to_string();
    let _guard = DownOnDrop(fleet_arg.clone());
    let port = free_port();
    let up = weft_up(&fleet_arg, port, &["--format", "json"]).await;
    assert!(up.status.success(), "weft up: {}", text(&up.stderr));
    let table: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    let services: Vec<&str> = table
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    // One broker, one gateway, one HTTP step (two replicas) for the 100 customers.
    assert_eq!(
        services,
        ["broker", "gateway", "step.relay.orders.deliver"],
        "{table}"
    );
    assert_eq!(containers_of("fleet").len(), 4);
    wait_gateway(port).await;

    // c001 and c002 interleaved, c000 (upstream down) beside them, one event for each other.
    let client = http_client(Duration::from_secs(10));
    let events = support::fleet_events(&customers, 40, 8);
    for (customer, id) in &events {
        let r = client
            .post(format!(
                "http://127.0.0.1:{port}/hooks/{customer}/relay/orders"
            ))
            .json(&serde_json::json!({ "id": id }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{customer}: {:?}", r.text().await);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline
        && !events
            .iter()
            .filter(|(c, _)| c != "c000")
            .all(|(_, id)| sink.snapshot().contains_key(id))
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing lost, nothing crossed: each arrival with its own customer's token, at its own
    // upstream.
    let down = support::assert_fleet_apart(&events, &sink.snapshot(), Path::new("/dev/null"));
    eprintln!(
        "fleet of {CUSTOMERS} instances in 4 containers: {} events of 99 customers delivered with their own tokens; c000's failing upstream called {down} times",
        events.iter().filter(|(c, _)| c != "c000").count(),
    );

    // c100 moves in and c099 out while the fleet runs: the repository changes and is built
    // again; c100's token goes in the secrets folder (a container's environment is fixed).
    let started = started_at(&containers_of("fleet"));
    std::fs::remove_dir_all(repo.join("instances/c099")).unwrap();
    support::write_files(
        &repo,
        &[(
            "instances/c100/relay.yaml",
            "weft: 1\nintegration: relay\nconfig:\n  token: { secret: TOKEN_C100 }\n".to_string(),
        )],
    );
    std::fs::write(
        fleet.join("secrets/TOKEN_C100"),
        support::fleet_token("c100"),
    )
    .unwrap();
    build_fleet();
    assert!(!fleet.join("plans/c099").exists(), "c099's plan is gone");
    let post = |customer: &'static str, id: String| {
        let client = client.clone();
        async move {
            client
                .post(format!(
                    "http://127.0.0.1:{port}/hooks/{customer}/relay/orders"
                ))
                .json(&serde_json::json!({ "id": id }))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while post("c100", "c100-probe".into()).await != 202 {
        assert!(
            Instant::now() < deadline,
            "the gateway routes c100 within a minute: {}",
            text(&weft(&["logs", &fleet_arg, "--tail", "30"]).stdout)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut added = vec![("c100".to_string(), "c100-probe".to_string())];
    for i in 0..10 {
        let id = format!("c100-{i}");
        assert_eq!(post("c100", id.clone()).await, 202);
        added.push(("c100".to_string(), id));
    }
    assert_eq!(post("c099", "c099-after".into()).await, 404, "c099 is gone");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !added.iter().all(|(_, id)| sink.snapshot().contains_key(id))
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    support::assert_fleet_apart(&added, &sink.snapshot(), Path::new("/dev/null"));
    assert_eq!(
        started_at(&containers_of("fleet")),
        started,
        "no container restarted"
    );
}

/// Each container's id and when it last started, sorted.
fn started_at(containers: &[bollard::models::ContainerSummary]) -> Vec<(String, String)> {
    let ids: Vec<String> = containers.iter().filter_map(|c| c.id.clone()).collect();
    let mut started = docker_block(|d| async move {
        let mut started = Vec::new();
        for id in ids {
            let inspect = d
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
                .unwrap();
            let at = inspect.state.and_then(|s| s.started_at).unwrap_or_default();
            started.push((id, at));
        }
        started
    });
    started.sort();
    started
}
