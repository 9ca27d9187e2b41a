//! `weft up`: runs a bundle's containers on the local Docker engine, as its
//! `docker-compose.yaml` describes them: a network, the broker with its volume, the gateway
//! (published on 127.0.0.1), one container per step replica, one per component image. Waits
//! until each is healthy (or running, without a healthcheck) and prints them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HealthStatusEnum, HostConfig,
    Mount as EngineMount, MountType, NetworkCreateRequest, NetworkingConfig, PortBinding,
    RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{CreateContainerOptionsBuilder, LogsOptionsBuilder};
use futures_util::StreamExt as _;
use weft_compiler::compose::{Role, label};

use crate::deployment::{Bundle, ContainerSpec};
use crate::docker::{self, DockerError, EXIT_CODES};
use crate::report::OutputFormat;

const EXAMPLES: &str = "\
Examples:
  weft image build && weft image build --broker
  weft up dist/globex/event-import --broker-image weft/nats:2.15.1
  weft up dist/globex/event-import --port 8080 --format json

Secrets are read from the environment, then from the bundle's .env (see .env.example); a
missing one stops `up` before anything starts, naming it. Containers are named
weft-<customer>-<integration>-<service>[-<replica>]; running `up` again recreates them (the
broker's and gateway's volumes are kept; `weft down --volumes` removes them).";

/// Run a bundle's containers on the local Docker engine and wait until they are healthy.
#[derive(Debug, clap::Args)]
#[command(after_help = format!("{EXAMPLES}\n\n{EXIT_CODES}"))]
pub struct Args {
    /// The bundle folder (dist/<customer>/<integration>).
    pub bundle: PathBuf,
    /// The broker image (default: WEFT_BROKER_IMAGE, else the compose file's).
    #[arg(long)]
    pub broker_image: Option<String>,
    /// The runtime image (default: WEFT_RUNTIME_IMAGE, else the compose file's).
    #[arg(long)]
    pub runtime_image: Option<String>,
    /// The gateway's port on 127.0.0.1 (default: WEFT_PORT, else the bundle's own).
    #[arg(long)]
    pub port: Option<u16>,
    /// Seconds to wait for every container to be healthy.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Output: human (a table) or json.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    pub format: OutputFormat,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    docker::exit(up(args))
}

fn up(args: Args) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::read(&args.bundle)?;
    let mut overrides = BTreeMap::new();
    if let Some(image) = &args.broker_image {
        overrides.insert("WEFT_BROKER_IMAGE".to_string(), image.clone());
    }
    if let Some(image) = &args.runtime_image {
        overrides.insert("WEFT_RUNTIME_IMAGE".to_string(), image.clone());
    }
    if let Some(port) = args.port {
        overrides.insert("WEFT_PORT".to_string(), port.to_string());
    }
    let specs = bundle.containers(&overrides)?;
    let timeout = Duration::from_secs(args.timeout);
    let states = docker::block_on(async {
        let docker = docker::connect().await?;
        check_images(&docker, &specs).await?;
        start(&docker, &bundle, &specs).await?;
        wait_healthy(&docker, &specs, timeout).await
    })??;
    print_services(&specs, &states, args.format);
    Ok(ExitCode::SUCCESS)
}

/// Fails naming the command that builds each missing image.
async fn check_images(docker: &Docker, specs: &[ContainerSpec]) -> anyhow::Result<()> {
    let mut checked = BTreeMap::new();
    for spec in specs {
        if checked.contains_key(&spec.image) {
            continue;
        }
        let missing = match docker.inspect_image(&spec.image).await {
            Ok(_) => false,
            Err(e) if docker::is_not_found(&e) => true,
            Err(e) => return Err(e).context(format!("inspecting image {}", spec.image)),
        };
        checked.insert(spec.image.clone(), (missing, spec.role));
    }
    let missing: Vec<String> = checked
        .iter()
        .filter(|(_, (missing, _))| *missing)
        .map(|(image, (_, role))| match role {
            Role::Gateway | Role::Step => {
                format!("{image} (build it: `weft image build --tag {image}`)")
            }
            Role::Broker => {
                format!("{image} (build it: `weft image build --broker --tag {image}`, or pull it)")
            }
            Role::Component => format!("{image} (the component's image: build or pull it)"),
        })
        .collect();
    if !missing.is_empty() {
        return Err(DockerError::MissingImage(format!(
            "image(s) not on this Docker engine: {}",
            missing.join("; ")
        ))
        .into());
    }
    Ok(())
}

/// Removes the bundle's old containers, then creates the network, the volumes and the
/// containers, and starts them (the broker first).
async fn start(docker: &Docker, bundle: &Bundle, specs: &[ContainerSpec]) -> anyhow::Result<()> {
    let old = docker::bundle_containers(docker, &bundle.customer, &bundle.integration).await?;
    for c in &old {
        let name = docker::container_name(c);
        eprintln!("removing old container {name}");
        docker::force_remove(docker, name).await?;
    }
    let bundle_labels: HashMap<String, String> = HashMap::from([
        (label::CUSTOMER.to_string(), bundle.customer.clone()),
        (label::INTEGRATION.to_string(), bundle.integration.clone()),
    ]);
    let network = bundle.network();
    match docker.inspect_network(&network, None).await {
        Ok(_) => {}
        Err(e) if docker::is_not_found(&e) => {
            eprintln!("creating network {network}");
            docker
                .create_network(NetworkCreateRequest {
                    name: network.clone(),
                    driver: Some("bridge".into()),
                    labels: Some(bundle_labels.clone()),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("creating network {network}"))?;
        }
        Err(e) => return Err(e).context(format!("inspecting network {network}")),
    }
    for name in bundle.compose.volumes.keys() {
        let volume = bundle.volume(name);
        docker
            .create_volume(VolumeCreateRequest {
                name: Some(volume.clone()),
                labels: Some(bundle_labels.clone()),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating volume {volume}"))?;
    }
    for spec in specs {
        eprintln!("starting {}", spec.name);
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        docker
            .create_container(Some(options), container_body(spec, &network))
            .await
            .with_context(|| format!("creating container {}", spec.name))?;
        docker
            .start_container(&spec.name, None)
            .await
            .with_context(|| format!("starting container {}", spec.name))?;
    }
    Ok(())
}

/// The engine's description of one container.
fn container_body(spec: &ContainerSpec, network: &str) -> ContainerCreateBody {
    let ms = |ms: u64| i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
    let port_key = spec
        .port
        .as_ref()
        .map(|p| format!("{}/tcp", p.container_port));
    let port_bindings = spec.port.as_ref().map(|p| {
        HashMap::from([(
            format!("{}/tcp", p.container_port),
            Some(vec![PortBinding {
                host_ip: Some(p.host_ip.clone()),
                host_port: Some(p.host_port.to_string()),
            }]),
        )])
    });
    let mounts = spec
        .mounts
        .iter()
        .map(|m| EngineMount {
            target: Some(m.target.clone()),
            source: Some(m.source.clone()),
            typ: Some(if m.volume {
                MountType::VOLUME
            } else {
                MountType::BIND
            }),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    let restart = match spec.restart.as_deref() {
        Some("always") => Some(RestartPolicyNameEnum::ALWAYS),
        Some("unless-stopped") => Some(RestartPolicyNameEnum::UNLESS_STOPPED),
        Some("on-failure") => Some(RestartPolicyNameEnum::ON_FAILURE),
        _ => None,
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        exposed_ports: port_key.map(|k| vec![k]),
        healthcheck: spec.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: Some(ms(h.interval_ms)),
            timeout: Some(ms(h.timeout_ms)),
            retries: Some(i64::from(h.retries)),
            start_period: Some(ms(h.start_period_ms)),
            ..Default::default()
        }),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_string()),
            port_bindings,
            mounts: Some(mounts),
            extra_hosts: (!spec.extra_hosts.is_empty()).then(|| spec.extra_hosts.clone()),
            restart_policy: restart.map(|name| RestartPolicy {
                name: Some(name),
                maximum_retry_count: None,
            }),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.to_string(),
                EndpointSettings {
                    aliases: Some(vec![spec.service.clone()]),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    }
}

/// A container's state as `up` and `ps` print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Healthy,
    Running,
    Starting,
    Unhealthy,
    Exited(i64),
    Other(String),
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Healthy => f.write_str("healthy"),
            State::Running => f.write_str("running"),
            State::Starting => f.write_str("starting"),
            State::Unhealthy => f.write_str("unhealthy"),
            State::Exited(code) => write!(f, "exited ({code})"),
            State::Other(s) => f.write_str(s),
        }
    }
}

/// Reads one container's state.
pub async fn state_of(docker: &Docker, name: &str) -> anyhow::Result<State> {
    let info = docker
        .inspect_container(name, None)
        .await
        .with_context(|| format!("inspecting {name}"))?;
    let state = info.state.unwrap_or_default();
    if state.restarting == Some(true) {
        return Ok(State::Other("restarting".into()));
    }
    if state.running != Some(true) {
        return Ok(State::Exited(state.exit_code.unwrap_or(0)));
    }
    Ok(match state.health.and_then(|h| h.status) {
        Some(HealthStatusEnum::HEALTHY) => State::Healthy,
        Some(HealthStatusEnum::UNHEALTHY) => State::Unhealthy,
        Some(HealthStatusEnum::STARTING) => State::Starting,
        _ => State::Running,
    })
}

/// Polls until every container is healthy (running, for those without a healthcheck); fails
/// early when one exits or restarts, showing the end of its log.
async fn wait_healthy(
    docker: &Docker,
    specs: &[ContainerSpec],
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, State>> {
    let started = Instant::now();
    let mut last_report = 0;
    loop {
        let mut states = BTreeMap::new();
        for spec in specs {
            let state = state_of(docker, &spec.name).await?;
            if matches!(state, State::Exited(_)) || state == State::Other("restarting".into()) {
                let tail = log_tail(docker, &spec.name).await;
                return Err(DockerError::NotHealthy(format!(
                    "{} is {state}; its last log lines:\n{tail}",
                    spec.name
                ))
                .into());
            }
            states.insert(spec.name.clone(), state);
        }
        let ready = specs
            .iter()
            .filter(|s| {
                let state = &states[&s.name];
                *state == State::Healthy || (s.healthcheck.is_none() && *state == State::Running)
            })
            .count();
        if ready == specs.len() {
            eprintln!(
                "{ready}/{} containers ready in {:.1} s",
                specs.len(),
                started.elapsed().as_secs_f64()
            );
            return Ok(states);
        }
        let elapsed = started.elapsed();
        if elapsed >= timeout {
            let waiting: Vec<String> = specs
                .iter()
                .filter(|s| states[&s.name] != State::Healthy && states[&s.name] != State::Running)
                .map(|s| format!("{} ({})", s.name, states[&s.name]))
                .collect();
            return Err(DockerError::NotHealthy(format!(
                "not healthy after {} s: {}",
                timeout.as_secs(),
                waiting.join(", ")
            ))
            .into());
        }
        if elapsed.as_secs() >= last_report + 5 || last_report == 0 {
            last_report = elapsed.as_secs().max(1);
            eprintln!(
                "waiting: {ready}/{} containers ready ({} s)",
                specs.len(),
                elapsed.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The last lines a container wrote (the runtime masks secrets in its logs).
async fn log_tail(docker: &Docker, name: &str) -> String {
    let options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail("20")
        .build();
    let mut out = String::new();
    let mut stream = docker.logs(name, Some(options));
    while let Some(Ok(chunk)) = stream.next().await {
        out.push_str(&format!("  {chunk}"));
    }
    out
}

/// One line per service: replicas ready, state, the published port.
fn print_services(specs: &[ContainerSpec], states: &BTreeMap<String, State>, format: OutputFormat) {
    let mut services: BTreeMap<(bool, &str), Vec<&ContainerSpec>> = BTreeMap::new();
    for spec in specs {
        services
            .entry((spec.role != Role::Broker, &spec.service))
            .or_default()
            .push(spec);
    }
    let rows: Vec<serde_json::Value> = services
        .values()
        .map(|replicas| {
            let first = replicas[0];
            // The first replica that is not healthy speaks for the service.
            let state = replicas
                .iter()
                .map(|r| &states[&r.name])
                .find(|s| **s != State::Healthy)
                .unwrap_or(&states[&first.name]);
            serde_json::json!({
                "service": first.service,
                "role": first.role.as_str(),
                "replicas": replicas.len(),
                "state": state.to_string(),
                "port": first.port.as_ref().map(|p| format!("{}:{}", p.host_ip, p.host_port)),
                "containers": replicas.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    match format {
        OutputFormat::Json => println!("{}", serde_json::Value::Array(rows)),
        OutputFormat::Human => {
            let width = rows
                .iter()
                .map(|r| r["service"].as_str().unwrap_or("").len())
                .max()
                .unwrap_or(7)
                .max(7);
            println!("{:width$}  REPLICAS  STATE      PORT", "SERVICE");
            for r in &rows {
                println!(
                    "{:width$}  {:<8}  {:<9}  {}",
                    r["service"].as_str().unwrap_or(""),
                    r["replicas"].to_string(),
                    r["state"].as_str().unwrap_or(""),
                    r["port"].as_str().unwrap_or("")
                );
            }
        }
    }
}
