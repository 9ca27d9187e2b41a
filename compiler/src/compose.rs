//! A bundle's `docker-compose.yaml` as typed values: [`crate::emit`] builds and writes a
//! [`ComposeFile`], and `weft up` reads the same types back, so the file docker-compose runs and
//! the containers `weft up` creates cannot describe different topologies. Only the subset of the
//! compose format that weft emits is modelled; unknown keys are refused when reading.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The compose file format weft emits (docker-compose 1.27+ and the compose plugin read it).
pub const COMPOSE_VERSION: &str = "3.8";

/// Label keys set on every container (and read by `weft ps` and `weft down`).
pub mod label {
    /// The customer of the bundle.
    pub const CUSTOMER: &str = "weft.customer";
    /// The integration of the bundle.
    pub const INTEGRATION: &str = "weft.integration";
    /// What the container is: [`super::Role`].
    pub const ROLE: &str = "weft.role";
    /// The flow of a step container.
    pub const FLOW: &str = "weft.flow";
    /// The step of a step container.
    pub const STEP: &str = "weft.step";
    /// The component a component container runs.
    pub const COMPONENT: &str = "weft.component";
}

/// What a service is, as its `weft.role` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The NATS JetStream broker.
    Broker,
    /// The trigger gateway (webhooks, schedules, polls; the execution history).
    Gateway,
    /// One step's worker; replicas share the step's consumer.
    Step,
    /// A custom component's container.
    Component,
}

impl Role {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Broker => "broker",
            Role::Gateway => "gateway",
            Role::Step => "step",
            Role::Component => "component",
        }
    }

    /// The role a label value names.
    pub fn parse(text: &str) -> Option<Role> {
        [Role::Broker, Role::Gateway, Role::Step, Role::Component]
            .into_iter()
            .find(|r| r.as_str() == text)
    }
}

/// A compose file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeFile {
    /// [`COMPOSE_VERSION`].
    pub version: String,
    /// Services by name (sorted).
    pub services: BTreeMap<String, Service>,
    /// Named volumes (sorted).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, NamedVolume>,
}

impl ComposeFile {
    /// Reads a compose file that weft emitted.
    pub fn from_yaml(text: &str) -> Result<ComposeFile, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// The file as YAML (without the header comment).
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("compose files serialize")
    }
}

/// A named volume (no options: the local driver).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedVolume {}

/// One service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The image, usually `${VARIABLE:-default}`.
    pub image: String,
    /// Arguments to the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment variables; values may be `${VARIABLE}` (read from `.env`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Published ports, `HOST_IP:HOST_PORT:CONTAINER_PORT`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Mounts, `SOURCE:TARGET[:ro]`: a named volume, or a path relative to the bundle folder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// `weft.*` labels (see [`label`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `/etc/hosts` entries, `NAME:ADDRESS`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// Services started first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<String, DependsOn>,
    /// Restart policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// How the engine checks the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// Replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
}

impl Service {
    /// The service's role label.
    pub fn role(&self) -> Option<Role> {
        self.labels.get(label::ROLE).and_then(|r| Role::parse(r))
    }

    /// Containers the service runs.
    pub fn replicas(&self) -> u32 {
        self.deploy.as_ref().map_or(1, |d| d.replicas)
    }
}

/// A dependency's condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DependsOn {
    /// `service_started`.
    pub condition: String,
}

/// A container healthcheck.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    /// `["CMD", program, args...]`.
    pub test: Vec<String>,
    /// Time between checks, e.g. `10s`.
    pub interval: String,
    /// Time one check may take.
    pub timeout: String,
    /// Failures in a row before the container is unhealthy.
    pub retries: u32,
    /// Grace time after start.
    pub start_period: String,
}

/// `deploy:`: only the replica count (docker-compose 1.29 honours it with `up`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// Containers of the service.
    pub replicas: u32,
}

/// One entry of a service's `volumes:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount<'a> {
    /// A named volume of the file.
    Volume {
        name: &'a str,
        target: &'a str,
        read_only: bool,
    },
    /// A path relative to the bundle folder (starts with `./`).
    Bind {
        source: &'a str,
        target: &'a str,
        read_only: bool,
    },
}

impl<'a> Mount<'a> {
    /// Reads `SOURCE:TARGET[:ro]`; `None` for anything else.
    pub fn parse(text: &'a str) -> Option<Mount<'a>> {
        let mut parts = text.split(':');
        let source = parts.next()?;
        let target = parts.next()?;
        let read_only = match parts.next() {
            None => false,
            Some("ro") => true,
            Some(_) => return None,
        };
        if parts.next().is_some() || !target.starts_with('/') || source.is_empty() {
            return None;
        }
        Some(if source.starts_with("./") {
            Mount::Bind {
                source,
                target,
                read_only,
            }
        } else {
            Mount::Volume {
                name: source,
                target,
                read_only,
            }
        })
    }
}

/// Replaces `${NAME}` and `${NAME:-default}` (and `$$`) as docker-compose does, looking names
/// up with `lookup`; returns the names that had no value and no default.
pub fn interpolate(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{')
            && let Some(end) = inner.find('}')
        {
            let expr = &inner[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            match (
                lookup(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => missing.push(name.to_string()),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    (out, missing)
}

#[cfg(test)]
mod tests {
    use super::{Mount, interpolate};

    #[test]
    fn interpolates_like_compose() {
        let lookup = |name: &str| match name {
            "SET" => Some("value".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(
            interpolate("a ${SET} ${UNSET:-d} ${EMPTY:-e} $$x ${EMPTY}", &lookup),
            ("a value d e $x ".to_string(), vec![])
        );
        assert_eq!(
            interpolate("${A}-${B:-b}-${C}", &lookup),
            ("-b-".to_string(), vec!["A".to_string(), "C".to_string()])
        );
    }

    #[test]
    fn reads_mounts() {
        assert_eq!(
            Mount::parse("broker-data:/data"),
            Some(Mount::Volume {
                name: "broker-data",
                target: "/data",
                read_only: false
            })
        );
        assert_eq!(
            Mount::parse("./plan.json:/bundle/plan.json:ro"),
            Some(Mount::Bind {
                source: "./plan.json",
                target: "/bundle/plan.json",
                read_only: true
            })
        );
        assert_eq!(Mount::parse("relative:target"), None);
        assert_eq!(Mount::parse("a:/b:rw:x"), None);
    }
}
