//! A bundle's containers as `weft up` creates them, read from the bundle's own
//! `docker-compose.yaml` (typed as `weft_compiler::compose`) and `plan.json`: the same services,
//! commands, labels, mounts and ports docker-compose would run, with `${VARIABLE}`s resolved
//! from flags, the environment and the bundle's `.env`, in that order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use weft_compiler::compose::{self, ComposeFile, Mount, Role, label};
use weft_compiler::plan::Plan;

/// A bundle folder, or an output folder with the fleet topology (`weft build --fleet`), read.
#[derive(Debug)]
pub struct Bundle {
    /// The folder, absolute (bind mounts need it).
    pub dir: PathBuf,
    /// The customer and integration its containers are labelled with (`fleet` and the project's
    /// name for a fleet).
    pub customer: String,
    pub integration: String,
    pub compose: ComposeFile,
    /// `weft-<customer>-<integration>`: container, network and volume prefix.
    pub project: String,
    /// `.env`, when the bundle has one.
    pub dotenv: BTreeMap<String, String>,
}

impl Bundle {
    /// Reads `plan.json`, `docker-compose.yaml` and `.env` (if present) from `dir`; a folder
    /// with no `plan.json` is a fleet, named by its gateway's labels.
    pub fn read(dir: &Path) -> anyhow::Result<Bundle> {
        let dir = std::fs::canonicalize(dir)
            .with_context(|| format!("{} is not a bundle folder", dir.display()))?;
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).with_context(|| {
                format!(
                    "reading {} (a bundle folder written by `weft build`)",
                    dir.join(name).display()
                )
            })
        };
        let plan = if dir.join("plan.json").is_file() || !dir.join("docker-compose.yaml").is_file()
        {
            Some(
                Plan::from_json(&read("plan.json")?)
                    .with_context(|| format!("{}/plan.json cannot be run", dir.display()))?,
            )
        } else {
            None
        };
        let compose = ComposeFile::from_yaml(&read("docker-compose.yaml")?).map_err(|e| {
            anyhow::anyhow!(
                "{}/docker-compose.yaml is not a compose file weft emitted (rebuild it with `weft build`): {e}",
                dir.display()
            )
        })?;
        let dotenv = match std::fs::read_to_string(dir.join(".env")) {
            Ok(text) => parse_dotenv(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).context(format!("reading {}/.env", dir.display())),
        };
        let (customer, integration) = match &plan {
            Some(plan) => (plan.customer.clone(), plan.integration.clone()),
            None => {
                let gateway = compose.services.get("gateway").with_context(|| {
                    format!(
                        "{}/docker-compose.yaml has no gateway service",
                        dir.display()
                    )
                })?;
                let name = |key: &str| gateway.labels.get(key).cloned().unwrap_or_default();
                (name(label::CUSTOMER), name(label::INTEGRATION))
            }
        };
        let project = format!("weft-{customer}-{integration}");
        Ok(Bundle {
            dir,
            customer,
            integration,
            compose,
            project,
            dotenv,
        })
    }

    /// The network `weft up` creates.
    pub fn network(&self) -> String {
        self.project.clone()
    }

    /// The engine's name of one of the file's named volumes.
    pub fn volume(&self, name: &str) -> String {
        format!("{}_{name}", self.project)
    }

    /// Every container of the bundle, with variables resolved by `lookup` first (flags), then
    /// the environment, then `.env`. A variable with neither a value nor a default (a secret) is
    /// an error naming each one, never a value.
    pub fn containers(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> anyhow::Result<Vec<ContainerSpec>> {
        let lookup = |name: &str| {
            overrides
                .get(name)
                .cloned()
                .or_else(|| std::env::var(name).ok())
                .or_else(|| self.dotenv.get(name).cloned())
        };
        let mut missing = std::collections::BTreeSet::new();
        let mut resolve = |text: &str| {
            let (value, absent) = compose::interpolate(text, &lookup);
            missing.extend(absent);
            value
        };
        let mut specs = Vec::new();
        for (service_name, service) in &self.compose.services {
            let role = service.role().with_context(|| {
                format!("service {service_name} has no weft.role label: rebuild the bundle")
            })?;
            let image = resolve(&service.image);
            let env: BTreeMap<String, String> = service
                .environment
                .iter()
                .map(|(k, v)| (k.clone(), resolve(v)))
                .collect();
            let port = match service.ports.first() {
                Some(text) => Some(PortSpec::parse(&resolve(text)).with_context(|| {
                    format!("service {service_name}: port `{text}` is not HOST_IP:HOST_PORT:PORT")
                })?),
                None => None,
            };
            let mut mounts = Vec::new();
            for text in &service.volumes {
                mounts.push(match Mount::parse(text) {
                    Some(Mount::Volume {
                        name,
                        target,
                        read_only,
                    }) => MountSpec {
                        volume: true,
                        source: self.volume(name),
                        target: target.to_string(),
                        read_only,
                    },
                    Some(Mount::Bind {
                        source,
                        target,
                        read_only,
                    }) => MountSpec {
                        volume: false,
                        source: self
                            .dir
                            .join(source.trim_start_matches("./"))
                            .to_string_lossy()
                            .into_owned(),
                        target: target.to_string(),
                        read_only,
                    },
                    None => bail!("service {service_name}: mount `{text}` is not SOURCE:TARGET"),
                });
            }
            let healthcheck = match &service.healthcheck {
                Some(h) => Some(HealthSpec {
                    test: h.test.clone(),
                    interval_ms: duration_ms(&h.interval)?,
                    timeout_ms: duration_ms(&h.timeout)?,
                    retries: h.retries,
                    start_period_ms: duration_ms(&h.start_period)?,
                }),
                None => None,
            };
            let replicas = service.replicas();
            for replica in 1..=replicas {
                let name = if role == Role::Step {
                    format!("{}-{service_name}-{replica}", self.project)
                } else {
                    format!("{}-{service_name}", self.project)
                };
                specs.push(ContainerSpec {
                    name,
                    service: service_name.clone(),
                    role,
                    image: image.clone(),
                    command: service.command.clone(),
                    env: env.clone(),
                    labels: service.labels.clone(),
                    mounts: mounts.clone(),
                    port: port.clone(),
                    extra_hosts: service.extra_hosts.clone(),
                    healthcheck: healthcheck.clone(),
                    restart: service.restart.clone(),
                });
            }
        }
        if !missing.is_empty() {
            bail!(
                "{} variable(s) have no value: {}\n  hint: set them in the environment or in {}/.env (see .env.example)",
                missing.len(),
                missing.into_iter().collect::<Vec<_>>().join(", "),
                self.dir.display()
            );
        }
        // The broker first: the others connect to it as they start.
        specs.sort_by_key(|s| (s.role != Role::Broker, s.name.clone()));
        Ok(specs)
    }
}

fn duration_ms(text: &str) -> anyhow::Result<u64> {
    weft_compiler::duration::parse_ms(text).with_context(|| format!("`{text}` is not a duration"))
}

/// `KEY=VALUE` lines; `#` comments and blank lines skipped; one pair of quotes removed.
pub fn parse_dotenv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let unquoted = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            (k.trim().to_string(), unquoted.to_string())
        })
        .collect()
}

/// One container to create.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// `weft-<customer>-<integration>-<service>[-<replica>]`.
    pub name: String,
    pub service: String,
    pub role: Role,
    pub image: String,
    pub command: Vec<String>,
    /// Resolved: holds secret values. Never printed.
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub mounts: Vec<MountSpec>,
    pub port: Option<PortSpec>,
    pub extra_hosts: Vec<String>,
    pub healthcheck: Option<HealthSpec>,
    pub restart: Option<String>,
}

/// A mount: a named volume (its engine name) or a host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub volume: bool,
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
}

impl PortSpec {
    /// `HOST_IP:HOST_PORT:CONTAINER_PORT`.
    pub fn parse(text: &str) -> Option<PortSpec> {
        let mut parts = text.split(':');
        let spec = PortSpec {
            host_ip: parts.next()?.to_string(),
            host_port: parts.next()?.parse().ok()?,
            container_port: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(spec)
    }
}

/// A healthcheck with its durations read.
#[derive(Debug, Clone)]
pub struct HealthSpec {
    pub test: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{Bundle, PortSpec, parse_dotenv};

    #[test]
    fn reads_dotenv_and_ports() {
        let env = parse_dotenv("# c\nA=1\n B = \"two\" \nC='3'\nEMPTY=\n\nnot a pair\n");
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "two");
        assert_eq!(env["C"], "3");
        assert_eq!(env["EMPTY"], "");
        assert_eq!(env.len(), 4);
        assert_eq!(
            PortSpec::parse("127.0.0.1:23456:8080"),
            Some(PortSpec {
                host_ip: "127.0.0.1".into(),
                host_port: 23456,
                container_port: 8080
            })
        );
        assert_eq!(PortSpec::parse("127.0.0.1:x:8080"), None);
    }

    /// The containers of an example's bundle: names, replicas, resolved images and ports, the
    /// secrets named (not shown) when missing.
    #[test]
    fn containers_of_a_built_bundle() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let sources = weft_compiler::repo::read_repo(&root.join("examples/event-import")).unwrap();
        let compilation = weft_compiler::compile(&sources);
        let out = tempfile::tempdir().unwrap();
        let written = weft_compiler::build::write_bundles(
            out.path(),
            &compilation.plans,
            &compilation.project,
        )
        .unwrap();
        let (rel, _) = &written[0];
        let bundle = Bundle::read(&out.path().join(rel)).unwrap();
        let plan = &weft_compiler::plan::Plan::from_json(
            &std::fs::read_to_string(out.path().join(rel).join("plan.json")).unwrap(),
        )
        .unwrap();
        let missing = bundle.containers(&BTreeMap::new()).unwrap_err().to_string();
        for secret in &plan.secrets {
            assert!(missing.contains(secret.as_str()), "{missing}");
        }
        let mut overrides: BTreeMap<String, String> = plan
            .secrets
            .iter()
            .map(|s| (s.clone(), "canary-secret-value".to_string()))
            .collect();
        overrides.insert("WEFT_RUNTIME_IMAGE".into(), "local/weft:test".into());
        overrides.insert("WEFT_PORT".into(), "24001".into());
        let specs = bundle.containers(&overrides).unwrap();
        assert_eq!(specs[0].service, "broker");
        assert!(specs[0].name.ends_with("-broker"));
        let gateway = specs.iter().find(|s| s.service == "gateway").unwrap();
        assert_eq!(gateway.image, "local/weft:test");
        assert_eq!(gateway.port.as_ref().unwrap().host_port, 24001);
        assert_eq!(gateway.command[0], "gateway");
        let steps: usize = plan
            .flows
            .iter()
            .filter(|f| f.enabled)
            .flat_map(|f| f.leading_steps())
            .map(|s| s.replicas.max(1) as usize)
            .sum();
        assert_eq!(
            specs
                .iter()
                .filter(|s| s.service.starts_with("step."))
                .count(),
            steps
        );
        assert!(specs.iter().all(|s| s.name.starts_with(&bundle.project)));
        assert!(
            specs
                .iter()
                .filter(|s| s.service != "broker")
                .all(|s| s.mounts.iter().any(|m| m.target == "/bundle/plan.json"))
        );
    }
}
