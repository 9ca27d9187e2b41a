//! Stage 5: emitters. A plan becomes the files of a bundle: `plan.json`, `docker-compose.yaml`
//! (typed as [`crate::compose`]), `nats.conf`, `.env.example` and `bundle.json` (with a content
//! hash). Pure functions of their input: no timestamps, no absolute paths, ordered maps only.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::compose::{self, ComposeFile, DependsOn, Deploy, Healthcheck, Role, Service, label};
use crate::model::Project;
use crate::plan::{Family, Plan, Uses};

/// One emitted file: its path inside the bundle folder and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmittedFile {
    pub name: &'static str,
    pub contents: String,
}

/// The folder of a bundle inside the output directory.
pub fn bundle_dir(plan: &Plan) -> String {
    format!("{}/{}", plan.customer, plan.integration)
}

/// `weft-<customer>-<integration>`: the docker-compose project name (`.env.example` sets it as
/// `COMPOSE_PROJECT_NAME`), the prefix of every container and volume `weft up` creates, and
/// the name of its network.
pub fn compose_project(plan: &Plan) -> String {
    format!("weft-{}-{}", plan.customer, plan.integration)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The files of one instance's bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub files: Vec<EmittedFile>,
    /// `sha256:<hex>` over every other file's name and bytes (recorded in `bundle.json`).
    pub content_hash: String,
}

/// Host ports the gateways are published on: below Linux's ephemeral ports (32768 and up), so
/// that a port picked by the kernel for an outgoing connection never holds one.
pub const HOST_PORTS: std::ops::Range<u16> = 20_000..30_000;

/// Each bundle's host port, keyed by [`bundle_dir`]: a hash of `<customer>/<integration>`
/// into [`HOST_PORTS`], moved to the next free port past a collision among these plans. Bundles
/// take their ports in order of the port they hash to, so adding a bundle moves another only
/// when both hash into the same run of taken ports.
pub fn host_ports(plans: &[Plan]) -> BTreeMap<String, u16> {
    let span = u32::from(HOST_PORTS.end - HOST_PORTS.start);
    let home = |key: &str| {
        let digest = Sha256::digest(key.as_bytes());
        u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % span
    };
    let mut wanted: Vec<(u32, String)> = plans
        .iter()
        .map(bundle_dir)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|key| (home(&key), key))
        .collect();
    wanted.sort();
    let mut taken = BTreeSet::new();
    let mut ports = BTreeMap::new();
    for (slot, key) in wanted {
        let free = (0..span)
            .map(|i| (slot + i) % span)
            .find(|s| !taken.contains(s))
            .expect("fewer bundles than ports");
        taken.insert(free);
        let port = HOST_PORTS.start + u16::try_from(free).expect("within the range");
        ports.insert(key, port);
    }
    ports
}

/// What a bundle holds besides its plan: `weft build --target compose,k8s [--autoscale]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    /// `docker-compose.yaml` (the default).
    pub compose: bool,
    /// `kubernetes.yaml`.
    pub kubernetes: bool,
    /// `keda.yaml`: KEDA autoscalers of the steps (with `kubernetes`).
    pub autoscale: bool,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            compose: true,
            kubernetes: false,
            autoscale: false,
        }
    }
}

/// Emits every file of one instance's bundle, for docker-compose. `host_port` is the
/// gateway's port on the host, from [`host_ports`].
pub fn bundle(plan: &Plan, project: &Project, host_port: u16) -> Bundle {
    bundle_for(plan, project, Targets::default(), host_port)
}

/// Emits every file of one instance's bundle, for `targets`.
pub fn bundle_for(plan: &Plan, project: &Project, targets: Targets, host_port: u16) -> Bundle {
    let plan_json = serde_json::to_string_pretty(plan).expect("plans serialize") + "\n";
    let mut files = vec![EmittedFile {
        name: "plan.json",
        contents: plan_json,
    }];
    if targets.compose {
        files.push(EmittedFile {
            name: "docker-compose.yaml",
            contents: compose(plan, project, host_port),
        });
        files.push(EmittedFile {
            name: "nats.conf",
            contents: NATS_CONF.to_string(),
        });
    }
    if targets.kubernetes {
        files.extend(
            crate::kubernetes::manifests(plan, project, targets.autoscale)
                .into_iter()
                .map(|(name, contents)| EmittedFile { name, contents }),
        );
    }
    files.push(EmittedFile {
        name: ".env.example",
        contents: env_example(plan, project, host_port),
    });
    let mut hasher = Sha256::new();
    let mut file_hashes = serde_json::Map::new();
    for f in &files {
        hasher.update(f.name.as_bytes());
        hasher.update([0]);
        hasher.update(f.contents.as_bytes());
        hasher.update([0]);
        file_hashes.insert(
            f.name.to_string(),
            json!(format!("sha256:{}", sha256_hex(f.contents.as_bytes()))),
        );
    }
    let content_hash = hex::encode(hasher.finalize());
    let components: serde_json::Map<String, Value> = plan
        .components
        .iter()
        .map(|(name, c)| (name.clone(), json!(c.version)))
        .collect();
    let bundle = json!({
        "format": 1,
        "integration": plan.integration,
        "customer": plan.customer,
        "version": plan.version,
        "commit": plan.commit,
        "content_hash": format!("sha256:{content_hash}"),
        "files": file_hashes,
        "components": components,
        "port": host_port,
        "compose_project": compose_project(plan),
        "weft": env!("CARGO_PKG_VERSION"),
    });
    files.insert(
        0,
        EmittedFile {
            name: "bundle.json",
            contents: serde_json::to_string_pretty(&bundle).expect("json") + "\n",
        },
    );
    Bundle {
        files,
        content_hash: format!("sha256:{content_hash}"),
    }
}

/// `.env.example`: the compose project name, the optional overrides, and the secret names this
/// instance reads, never their values.
pub fn env_example(plan: &Plan, project: &Project, host_port: u16) -> String {
    let mut out = format!(
        "# {} for {}: copy this file to .env beside docker-compose.yaml and set each secret;\n\
         # docker-compose and `weft up` read it (variables of the environment win).\n\
         # The compose project (docker-compose 1.29 has no `name:` in the file).\n\
         COMPOSE_PROJECT_NAME={}\n\
         # The gateway's port on 127.0.0.1 (default {host_port}).\n\
         # WEFT_PORT={host_port}\n\
         # Images (defaults from weft.yaml's `images:`).\n\
         # WEFT_RUNTIME_IMAGE={}\n\
         # WEFT_BROKER_IMAGE={}\n",
        plan.integration,
        plan.customer,
        compose_project(plan),
        project.images.runtime,
        project.images.broker,
    );
    out.push_str(&format!(
        "# On Kubernetes, the customer's Secret from .env:\n#   {}\n",
        crate::kubernetes::secret_command(plan)
    ));
    if !plan.secrets.is_empty() {
        out.push_str("# Secrets.\n");
    }
    for name in &plan.secrets {
        out.push_str(&format!("{name}=\n"));
    }
    out
}

/// `nats.conf`, mounted into the broker: JetStream with every write flushed to disk before it
/// is acknowledged (`sync_interval: always`), and the monitoring port (`/healthz`).
pub const NATS_CONF: &str = "\
# Generated by weft: the broker of this bundle's containers.
port: 4222
http_port: 8222
jetstream {
  store_dir: /data
  # Flush every write before acknowledging it: an acknowledged message survives a power loss.
  sync_interval: always
}
";

/// The port of a step container's `/healthz` and `/metrics` (the gateway listens on the plan's
/// `runtime.port`, weft.yaml's `gateway.port`).
pub const STEP_HEALTH_PORT: u16 = 9090;
/// Where the bundle's plan is mounted in gateway and step containers.
pub const BUNDLE_MOUNT: &str = "/bundle";
/// The gateway's data folder (the execution history) in its container.
pub const GATEWAY_DATA: &str = "/data";
/// The host's address as seen from the containers (`extra_hosts`).
pub const HOST_GATEWAY: &str = "host.docker.internal:host-gateway";

/// `step.<flow>.<step>`: neither names nor ids contain dots, so service names never collide.
pub fn service_name(flow: &str, step: &str) -> String {
    format!("step.{flow}.{step}")
}

/// The arguments of a gateway container listening on `port` (`weft gateway ...`).
pub fn gateway_command(port: u16) -> Vec<String> {
    [
        "gateway",
        BUNDLE_MOUNT,
        "--listen",
        "0.0.0.0",
        "--port",
        &port.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// The arguments of a step container (`weft step ...`).
pub fn step_command(flow: &str, step: &str) -> Vec<String> {
    [
        "step",
        BUNDLE_MOUNT,
        "--flow",
        flow,
        "--step",
        step,
        "--listen",
        "0.0.0.0",
        "--port",
        &STEP_HEALTH_PORT.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

pub(crate) fn environment<'a>(
    plan: &Plan,
    secrets: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("WEFT_BROKER_URL".into(), plan.runtime.broker_url.clone());
    // Many small containers: mimalloc commits arenas lazily and returns freed memory at once
    // (idle RSS about 21 MB instead of 30 MB per process).
    env.insert("MIMALLOC_ARENA_EAGER_COMMIT".into(), "0".into());
    env.insert("MIMALLOC_PURGE_DELAY".into(), "0".into());
    for s in secrets {
        env.insert(s.to_string(), format!("${{{s}}}"));
    }
    env
}

pub(crate) fn healthcheck(port: u16) -> Healthcheck {
    Healthcheck {
        test: vec![
            "CMD".into(),
            "/weft".into(),
            "health".into(),
            "--url".into(),
            format!("http://127.0.0.1:{port}/healthz"),
        ],
        interval: "5s".into(),
        timeout: "3s".into(),
        retries: 3,
        start_period: "5s".into(),
    }
}

fn labels(plan: &Plan, role: Role) -> BTreeMap<String, String> {
    BTreeMap::from([
        (label::CUSTOMER.to_string(), plan.customer.clone()),
        (label::INTEGRATION.to_string(), plan.integration.clone()),
        (label::ROLE.to_string(), role.as_str().to_string()),
    ])
}

pub(crate) fn after_broker() -> BTreeMap<String, DependsOn> {
    BTreeMap::from([(
        "broker".to_string(),
        DependsOn {
            condition: "service_started".into(),
        },
    )])
}

/// The broker's service: NATS JetStream with `nats.conf` beside the compose file and its data
/// on the `broker-data` volume.
pub(crate) fn broker_service(project: &Project, labels: BTreeMap<String, String>) -> Service {
    Service {
        image: format!("${{WEFT_BROKER_IMAGE:-{}}}", project.images.broker),
        command: vec!["--config".into(), "/etc/nats/nats.conf".into()],
        environment: BTreeMap::new(),
        ports: Vec::new(),
        volumes: vec![
            "broker-data:/data".into(),
            "./nats.conf:/etc/nats/nats.conf:ro".into(),
        ],
        labels,
        extra_hosts: Vec::new(),
        depends_on: BTreeMap::new(),
        restart: Some("unless-stopped".into()),
        healthcheck: None,
        deploy: None,
    }
}

/// The service of a custom component: its name (the host the runtime calls,
/// `http://<name>:8080`), unless that is a service name weft takes.
pub fn component_service(component: &str) -> String {
    match component {
        "broker" | "gateway" => format!("component.{component}"),
        _ => component.to_string(),
    }
}

/// The folders `file.*` steps work in, as absolute paths in their containers (relative paths
/// are resolved from `/`, the containers' working folder): the literal start of each path or
/// folder, with `config` values substituted, up to its last `/`.
pub fn file_folders(plan: &Plan) -> BTreeSet<String> {
    let mut folders = BTreeSet::new();
    for step in plan
        .flows
        .iter()
        .filter(|f| f.enabled)
        .flat_map(|f| &f.steps)
    {
        if step.uses.builtin().map(|b| b.family()) != Some(Family::File) {
            continue;
        }
        for (field, value) in &step.with {
            let Some(text) = value.as_str() else { continue };
            let (literal, whole) = literal_prefix(plan, text);
            let folder = match (field.as_str(), whole) {
                ("folder", true) => literal.as_str(),
                ("folder" | "path" | "from" | "to", _) => {
                    literal.rsplit_once('/').map_or("", |(dir, _)| dir)
                }
                _ => continue,
            };
            if let Some(folder) = container_path(folder) {
                folders.insert(folder);
            }
        }
    }
    folders
}

/// `text` with `{{ config.NAME }}` replaced by literal string values, up to the first other
/// template expression; `true` when that is the whole text.
fn literal_prefix(plan: &Plan, text: &str) -> (String, bool) {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find("}}") else {
            return (out, false);
        };
        let expr = rest[open + 2..open + close].trim();
        let value = expr
            .strip_prefix("config.")
            .and_then(|name| plan.config.get(name))
            .and_then(|v| match v {
                crate::plan::ConfigValue::Value(Value::String(s)) if !s.contains("{{") => {
                    Some(s.as_str())
                }
                _ => None,
            });
        match value {
            Some(v) => out.push_str(v),
            None => return (out, false),
        }
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    (out, true)
}

/// An absolute, normalised path for `folder` (relative to `/`); `None` for the root, an empty
/// text or a path that climbs with `..`.
fn container_path(folder: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in folder.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| format!("/{}", parts.join("/")))
}

/// The named volumes that hold `folders`, each with where it is mounted: one volume at their
/// common parent folder (so a `file.move` between them is a rename on one file system), else
/// one per outermost folder.
pub fn file_volumes(folders: &BTreeSet<String>) -> BTreeMap<String, String> {
    let split = |f: &str| {
        f.trim_start_matches('/')
            .split('/')
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let mut common: Option<Vec<String>> = None;
    for f in folders {
        let parts = split(f);
        common = Some(match common {
            None => parts,
            Some(c) => c
                .into_iter()
                .zip(parts)
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| a)
                .collect(),
        });
    }
    let mounts: Vec<String> = match common {
        None => return BTreeMap::new(),
        Some(c) if !c.is_empty() => vec![format!("/{}", c.join("/"))],
        Some(_) => folders
            .iter()
            .filter(|f| {
                !folders
                    .iter()
                    .any(|o| o != *f && f.starts_with(&format!("{o}/")))
            })
            .cloned()
            .collect(),
    };
    mounts
        .into_iter()
        .map(|target| (volume_name(&target), target))
        .collect()
}

/// `files-<path with / as ->`, with a short hash when the path has other characters.
fn volume_name(target: &str) -> String {
    let path = target.trim_start_matches('/');
    let plain = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'));
    let clean: String = path
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if plain {
        format!("files-{clean}")
    } else {
        format!("files-{clean}-{}", &sha256_hex(target.as_bytes())[..8])
    }
}

/// The compose file of a bundle: the broker, the trigger gateway (published on
/// `127.0.0.1:<host_port>`), one service per step (with its replicas) and one per custom
/// component image.
pub fn compose_file(plan: &Plan, project: &Project, host_port: u16) -> ComposeFile {
    let runtime = format!("${{WEFT_RUNTIME_IMAGE:-{}}}", project.images.runtime);
    let plan_mount = format!("./plan.json:{BUNDLE_MOUNT}/plan.json:ro");
    let mut services = BTreeMap::new();
    let mut volumes = BTreeMap::new();
    volumes.insert("broker-data".to_string(), compose::NamedVolume {});
    volumes.insert("gateway-data".to_string(), compose::NamedVolume {});
    services.insert(
        "broker".to_string(),
        broker_service(project, labels(plan, Role::Broker)),
    );
    // Custom components are reached at http://<component>:8080 unless renamed here.
    let mut component_env = BTreeMap::new();
    for (name, component) in &plan.components {
        let Some(image) = &component.image else {
            continue;
        };
        let service = component_service(name);
        if service != *name {
            component_env.insert(
                format!(
                    "WEFT_COMPONENT_URL_{}",
                    name.to_uppercase().replace('-', "_")
                ),
                format!("http://{service}:8080"),
            );
        }
        let mut component_labels = labels(plan, Role::Component);
        component_labels.insert(label::COMPONENT.to_string(), name.clone());
        services.insert(
            service,
            Service {
                image: image.clone(),
                command: Vec::new(),
                environment: BTreeMap::new(),
                ports: Vec::new(),
                volumes: Vec::new(),
                labels: component_labels,
                extra_hosts: vec![HOST_GATEWAY.into()],
                depends_on: BTreeMap::new(),
                restart: Some("unless-stopped".into()),
                healthcheck: None,
                deploy: None,
            },
        );
    }
    // The gateway runs the triggers and the fused steps right after them: it needs the
    // secrets of webhook auth, poll calls and those steps.
    let mut gateway_env = environment(plan, plan.gateway_secrets());
    gateway_env.insert("WEFT_DATA_DIR".into(), GATEWAY_DATA.into());
    gateway_env.extend(component_env.clone());
    services.insert(
        "gateway".to_string(),
        Service {
            image: runtime.clone(),
            command: gateway_command(plan.runtime.port),
            environment: gateway_env,
            ports: vec![format!(
                "127.0.0.1:${{WEFT_PORT:-{host_port}}}:{}",
                plan.runtime.port
            )],
            volumes: vec![plan_mount.clone(), format!("gateway-data:{GATEWAY_DATA}")],
            labels: labels(plan, Role::Gateway),
            extra_hosts: vec![HOST_GATEWAY.into()],
            depends_on: after_broker(),
            restart: Some("unless-stopped".into()),
            healthcheck: Some(healthcheck(plan.runtime.port)),
            deploy: None,
        },
    );
    let file_volumes = file_volumes(&file_folders(plan));
    for name in file_volumes.keys() {
        volumes.insert(name.clone(), compose::NamedVolume {});
    }
    for flow in plan.flows.iter().filter(|f| f.enabled) {
        // A fused step runs in its leader's container (see `weft_plan::Step::fused`).
        for step in flow.leading_steps() {
            let mut step_volumes = vec![plan_mount.clone()];
            if step.uses.builtin().map(|b| b.family()) == Some(Family::File) {
                step_volumes.extend(
                    file_volumes
                        .iter()
                        .map(|(name, target)| format!("{name}:{target}")),
                );
            }
            let mut step_labels = labels(plan, Role::Step);
            step_labels.insert(label::FLOW.to_string(), flow.name.clone());
            step_labels.insert(label::STEP.to_string(), step.id.clone());
            let mut env = environment(plan, flow.step_process_secrets(step));
            if matches!(step.uses, Uses::Action { .. }) {
                env.extend(component_env.clone());
            }
            services.insert(
                service_name(&flow.name, &step.id),
                Service {
                    image: runtime.clone(),
                    command: step_command(&flow.name, &step.id),
                    environment: env,
                    ports: Vec::new(),
                    volumes: step_volumes,
                    labels: step_labels,
                    extra_hosts: vec![HOST_GATEWAY.into()],
                    depends_on: after_broker(),
                    restart: Some("unless-stopped".into()),
                    healthcheck: Some(healthcheck(STEP_HEALTH_PORT)),
                    deploy: Some(Deploy {
                        replicas: step.replicas.max(1),
                    }),
                },
            );
        }
    }
    ComposeFile {
        version: compose::COMPOSE_VERSION.into(),
        services,
        volumes,
    }
}

/// `docker-compose.yaml`: [`compose_file`] with a header saying how to run it.
pub fn compose(plan: &Plan, project: &Project, host_port: u16) -> String {
    let header = format!(
        "# Generated by weft from integrations/{}: do not edit; run `weft build`.\n\
         # Copy .env.example to .env and set its secrets, then `docker-compose up -d` here\n\
         # (or `weft up .`). The gateway listens on 127.0.0.1:${{WEFT_PORT:-{host_port}}}.\n",
        plan.integration
    );
    header + &compose_file(plan, project, host_port).to_yaml()
}
