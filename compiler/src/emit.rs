//! Stage 5: emitters. A plan becomes the files of a bundle: `plan.json`, `docker-compose.yaml`,
//! `.env.example` and `bundle.json` (with a content hash). Pure functions of their input: no
//! timestamps, no absolute paths, ordered maps only.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::model::Project;
use crate::plan::Plan;

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

/// Emits every file of one instance's bundle, for docker-compose.
pub fn bundle(plan: &Plan, project: &Project) -> Bundle {
    bundle_for(plan, project, Targets::default())
}

/// Emits every file of one instance's bundle, for `targets`.
pub fn bundle_for(plan: &Plan, project: &Project, targets: Targets) -> Bundle {
    let plan_json = serde_json::to_string_pretty(plan).expect("plans serialize") + "\n";
    let mut files = vec![EmittedFile {
        name: "plan.json",
        contents: plan_json,
    }];
    if targets.compose {
        files.push(EmittedFile {
            name: "docker-compose.yaml",
            contents: compose(plan, project),
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
        contents: env_example(plan),
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

/// `.env.example`: the secret names this instance reads, never their values.
pub fn env_example(plan: &Plan) -> String {
    let mut out = format!(
        "# Secrets of {} for {}: copy this file to .env and set each before `docker-compose up`\n# (or export them for `weft run`). On Kubernetes, the customer's Secret from .env:\n#   {}\n",
        plan.integration,
        plan.customer,
        crate::kubernetes::secret_command(plan)
    );
    for name in &plan.secrets {
        out.push_str(&format!("{name}=\n"));
    }
    out
}

const HEALTH_PORT: u16 = 9090;

/// `step.<flow>.<step>`: neither names nor ids contain dots, so service names never collide.
pub fn service_name(flow: &str, step: &str) -> String {
    format!("step.{flow}.{step}")
}

fn environment<'a>(plan: &Plan, secrets: impl IntoIterator<Item = &'a str>) -> Value {
    let mut env = serde_json::Map::new();
    env.insert("WEFT_BROKER_URL".into(), json!(plan.runtime.broker_url));
    env.insert("WEFT_BUNDLE".into(), json!("/bundle"));
    // Many small containers: mimalloc commits arenas lazily and returns freed memory at once
    // (idle RSS about 21 MB instead of 30 MB per process).
    env.insert("MIMALLOC_ARENA_EAGER_COMMIT".into(), json!("0"));
    env.insert("MIMALLOC_PURGE_DELAY".into(), json!("0"));
    for s in secrets {
        env.insert(s.to_string(), json!(format!("${{{s}}}")));
    }
    Value::Object(env)
}

fn healthcheck(port: u16) -> Value {
    json!({
        "test": ["CMD", "/weft", "health", "--url", format!("http://127.0.0.1:{port}/healthz")],
        "interval": "10s",
        "timeout": "3s",
        "retries": 3,
        "start_period": "5s",
    })
}

/// `docker-compose.yaml`: the broker, the trigger gateway, and one service per step.
pub fn compose(plan: &Plan, project: &Project) -> String {
    let runtime = &project.images.runtime;
    let port = plan.runtime.port;
    let mut services = serde_json::Map::new();
    services.insert(
        "broker".into(),
        json!({
            "image": project.images.broker,
            "command": ["--jetstream", "--store_dir", "/data", "--http_port", "8222"],
            "volumes": ["broker-data:/data"],
            "restart": "unless-stopped",
        }),
    );
    // The gateway runs the triggers: it needs the secrets of webhook auth and poll calls.
    services.insert(
        "gateway".into(),
        json!({
            "image": runtime,
            "command": ["gateway", "--bundle", "/bundle", "--port", port.to_string(), "--health-port", HEALTH_PORT.to_string()],
            "ports": [format!("{port}:{port}")],
            "environment": environment(plan, plan.trigger_secrets()),
            "volumes": ["./:/bundle:ro"],
            "depends_on": ["broker"],
            "restart": "unless-stopped",
            "healthcheck": healthcheck(HEALTH_PORT),
        }),
    );
    for flow in &plan.flows {
        if !flow.enabled {
            continue;
        }
        for step in &flow.steps {
            services.insert(
                service_name(&flow.name, &step.id),
                json!({
                    "image": runtime,
                    "command": ["step", "--bundle", "/bundle", "--flow", flow.name, "--step", step.id, "--health-port", HEALTH_PORT.to_string()],
                    "environment": environment(plan, step.secrets.iter().map(String::as_str)),
                    "volumes": ["./:/bundle:ro"],
                    "depends_on": ["broker"],
                    "restart": "unless-stopped",
                    "deploy": {
                        "replicas": step.replicas,
                        "restart_policy": { "condition": "on-failure" },
                    },
                    "healthcheck": healthcheck(HEALTH_PORT),
                }),
            );
        }
    }
    let doc = json!({
        "version": "3.8",
        "services": services,
        "volumes": { "broker-data": {} },
    });
    let header = format!(
        "# Generated by weft from integrations/{}: do not edit; run `weft build`.\n# Secrets are read from .env (see .env.example).\n",
        plan.integration
    );
    header + &serde_saphyr::to_string(&doc).expect("compose serializes")
}
