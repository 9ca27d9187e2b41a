//! Stage 5, Kubernetes: a plan becomes the manifests of its bundle (`weft build --target k8s`):
//! a Deployment per step service of the compose file (same set, same replicas), the gateway's
//! Deployment with a Service and a volume, one Deployment and Service per custom component
//! image, a ConfigMap holding the plan, a ServiceAccount, and, with `--autoscale`, a KEDA
//! `ScaledObject` per step on its consumer's lag. Typed objects from `k8s-openapi`, valid by
//! construction; pure functions of their input (no timestamps, no absolute paths).
//!
//! Secrets are referenced by name only: each secret environment variable is a `secretKeyRef`
//! to the customer's Secret ([`secret_name`]), key = the variable's name.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use sha2::{Digest, Sha256};
use weft_plan::broker_names;

use crate::model::{Project, ResourceAmounts, Resources};
use crate::plan::{self as plan_types, Plan};

/// The port weft's containers listen on (the gateway's webhooks; a step's health).
pub(crate) const PORT: i32 = 8080;
/// The port custom component containers listen on (the runtime's default component URL).
const COMPONENT_PORT: i32 = 8080;
/// The non-root user weft's containers run as.
pub(crate) const USER: i64 = 65532;
/// Kubernetes object names (DNS labels) are at most this long.
const MAX_NAME: usize = 63;

/// The Secret holding a customer's secret environment variables, one key per variable.
pub fn secret_name(customer: &str) -> String {
    dns_name(&["weft", customer])
}

/// The `kubectl` command that creates the customer's Secret from the bundle's `.env`.
pub fn secret_command(plan: &Plan) -> String {
    format!(
        "kubectl create secret generic {} --from-env-file=.env",
        secret_name(&plan.customer)
    )
}

/// A DNS-1123 label from parts: lower case, `[a-z0-9-]`, at most 63 characters (a longer one
/// keeps its start and ends with a hash of the whole, so names stay unique).
pub fn dns_name(parts: &[&str]) -> String {
    let joined: String = parts
        .join("-")
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    let trimmed = joined.trim_matches('-').to_string();
    if trimmed.len() <= MAX_NAME {
        return trimmed;
    }
    let hash = hex::encode(&Sha256::digest(trimmed.as_bytes())[..4]);
    format!(
        "{}-{hash}",
        trimmed[..MAX_NAME - hash.len() - 1].trim_end_matches('-')
    )
}

/// A label value: at most 63 characters of `[A-Za-z0-9._-]`, starting and ending alphanumeric.
pub(crate) fn label_value(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .take(MAX_NAME)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// What one workload of a bundle is.
struct Workload<'a> {
    /// `gateway`, `step` or `component`.
    role: &'a str,
    /// The object name.
    name: String,
    flow: Option<&'a str>,
    step: Option<&'a str>,
}

/// The labels every object of a bundle carries: which bundle, customer and integration.
fn bundle_labels(plan: &Plan) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/part-of".into(),
            label_value(&bundle_name(plan)),
        ),
        ("app.kubernetes.io/managed-by".into(), "weft".into()),
        ("weft.customer".into(), label_value(&plan.customer)),
        ("weft.integration".into(), label_value(&plan.integration)),
    ])
}

impl Workload<'_> {
    fn labels(&self, plan: &Plan) -> BTreeMap<String, String> {
        let mut labels = selector(&self.name);
        labels.extend(bundle_labels(plan));
        labels.insert("app.kubernetes.io/component".into(), label_value(self.role));
        labels.insert("weft.role".into(), label_value(self.role));
        if let Some(flow) = self.flow {
            labels.insert("weft.flow".into(), label_value(flow));
        }
        if let Some(step) = self.step {
            labels.insert("weft.step".into(), label_value(step));
        }
        labels
    }
}

/// The labels a workload's pods are selected by.
pub(crate) fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "weft".to_string()),
        ("app.kubernetes.io/instance".to_string(), label_value(name)),
    ])
}

/// `weft-<customer>-<integration>`: the prefix of every object of a bundle.
fn bundle_name(plan: &Plan) -> String {
    dns_name(&["weft", &plan.customer, &plan.integration])
}

/// The name of a step's Deployment: the bundle's prefix and the compose service's name
/// (`step.<flow>.<step>`) as a DNS label.
pub fn step_name(plan: &Plan, flow: &str, step: &str) -> String {
    dns_name(&[&bundle_name(plan), "step", flow, step])
}

/// The manifests of one bundle, by file name: `kubernetes.yaml`, and `keda.yaml` with
/// `autoscale`.
pub fn manifests(plan: &Plan, project: &Project, autoscale: bool) -> Vec<(&'static str, String)> {
    let base = bundle_name(plan);
    let mut docs: Vec<String> = Vec::new();
    let account = ServiceAccount {
        metadata: meta(&base, plan, None),
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    docs.push(yaml(&account));
    let plan_map = format!("{base}-plan");
    let config = ConfigMap {
        metadata: meta(&plan_map, plan, None),
        data: Some(BTreeMap::from([(
            "plan.json".to_string(),
            serde_json::to_string_pretty(plan).expect("plans serialize") + "\n",
        )])),
        ..Default::default()
    };
    docs.push(yaml(&config));

    // The gateway: one replica on a volume (its history, dead letters and trigger state).
    let gateway = Workload {
        role: "gateway",
        name: dns_name(&[&base, "gateway"]),
        flow: None,
        step: None,
    };
    let data_claim = format!("{}-data", gateway.name);
    docs.push(yaml(&gateway_claim(
        &data_claim,
        gateway.labels(plan),
        project,
    )));
    let mut env = runtime_env(project);
    env.push(plain_env("WEFT_DATA_DIR", "/data"));
    env.extend(secret_env(plan, plan.gateway_secrets()));
    let container = Container {
        args: Some(strings(&[
            "gateway",
            "/bundle",
            "--listen",
            "0.0.0.0",
            "--port",
            &PORT.to_string(),
        ])),
        env: Some(env),
        volume_mounts: Some(vec![
            mount("plan", "/bundle", true),
            mount("data", "/data", false),
        ]),
        ..weft_container(project, None)
    };
    let volumes = vec![
        plan_volume(&plan_map),
        Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: data_claim,
                read_only: None,
            }),
            ..Default::default()
        },
    ];
    // Recreate: the volume is ReadWriteOnce, and two gateways would both run the triggers.
    docs.push(yaml(&deployment(
        &gateway.name,
        gateway.labels(plan),
        &base,
        1,
        container,
        volumes,
        "Recreate",
    )));
    docs.push(yaml(&service(&gateway.name, gateway.labels(plan), PORT)));

    for flow in plan.flows.iter().filter(|f| f.enabled) {
        for step in flow.leading_steps() {
            let workload = Workload {
                role: "step",
                name: step_name(plan, &flow.name, &step.id),
                flow: Some(&flow.name),
                step: Some(&step.id),
            };
            let mut env = runtime_env(project);
            env.extend(component_env(plan));
            env.extend(secret_env(plan, flow.step_process_secrets(step)));
            let container = Container {
                args: Some(strings(&[
                    "step",
                    "/bundle",
                    "--flow",
                    &flow.name,
                    "--step",
                    &step.id,
                    "--listen",
                    "0.0.0.0",
                    "--port",
                    &PORT.to_string(),
                ])),
                env: Some(env),
                volume_mounts: Some(vec![mount("plan", "/bundle", true)]),
                ..weft_container(project, step.resources.as_ref())
            };
            docs.push(yaml(&deployment(
                &workload.name,
                workload.labels(plan),
                &base,
                step.replicas,
                container,
                vec![plan_volume(&plan_map)],
                "RollingUpdate",
            )));
        }
    }

    for (name, component) in &plan.components {
        let Some(image) = &component.image else {
            continue;
        };
        let workload = Workload {
            role: "component",
            name: component_service(plan, name),
            flow: None,
            step: None,
        };
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(COMPONENT_PORT),
                host: None,
            }),
            period_seconds: Some(10),
            ..Default::default()
        };
        let container = Container {
            name: "component".into(),
            image: Some(image.clone()),
            ports: Some(vec![container_port(COMPONENT_PORT)]),
            liveness_probe: Some(tcp.clone()),
            readiness_probe: Some(tcp),
            resources: Some(resources(&project.kubernetes.resources, None)),
            security_context: Some(container_security()),
            ..Default::default()
        };
        docs.push(yaml(&deployment(
            &workload.name,
            workload.labels(plan),
            &base,
            1,
            container,
            Vec::new(),
            "RollingUpdate",
        )));
        docs.push(yaml(&service(
            &workload.name,
            workload.labels(plan),
            COMPONENT_PORT,
        )));
    }

    let header = format!(
        "# Generated by weft from integrations/{}: do not edit; run `weft build --target k8s`.\n# Create the customer's Secret first: {}\n",
        plan.integration,
        secret_command(plan)
    );
    let mut files = vec![("kubernetes.yaml", header + &docs.join("---\n"))];
    if autoscale {
        files.push(("keda.yaml", scaled_objects(plan, project)));
    }
    files
}

/// One KEDA `ScaledObject` per step, scaling its Deployment on the lag of its consumer
/// (KEDA's `nats-jetstream` scaler), between 1 and ten times its replicas.
fn scaled_objects(plan: &Plan, project: &Project) -> String {
    let mut docs = Vec::new();
    for flow in plan.flows.iter().filter(|f| f.enabled) {
        for step in flow.leading_steps() {
            let name = step_name(plan, &flow.name, &step.id);
            let workload = Workload {
                role: "step",
                name: name.clone(),
                flow: Some(&flow.name),
                step: Some(&step.id),
            };
            let object = json!({
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": { "name": name, "labels": workload.labels(plan) },
                "spec": {
                    "scaleTargetRef": { "name": name },
                    "minReplicaCount": step.replicas,
                    "maxReplicaCount": (step.replicas * 10).min(crate::instance::MAX_REPLICAS),
                    "triggers": [{
                        "type": "nats-jetstream",
                        "metadata": {
                            "natsServerMonitoringEndpoint": project.broker.monitoring,
                            "account": "$G",
                            "stream": broker_names::flow_stream(&plan.customer, &plan.integration, &flow.name),
                            "consumer": broker_names::step_consumer(&step.id),
                            "lagThreshold": "100",
                        },
                    }],
                },
            });
            docs.push(serde_saphyr::to_string(&object).expect("objects serialize"));
        }
    }
    format!(
        "# Generated by weft: KEDA autoscalers of {}'s steps for {} (`weft build --target k8s --autoscale`).\n",
        plan.integration, plan.customer
    ) + &docs.join("---\n")
}

/// The Service name of a custom component, which the bundle's steps call.
fn component_service(plan: &Plan, component: &str) -> String {
    dns_name(&[&bundle_name(plan), "component", component])
}

/// `WEFT_COMPONENT_URL_<NAME>` for each custom component: its Service in this bundle.
fn component_env(plan: &Plan) -> Vec<EnvVar> {
    plan.components
        .iter()
        .filter(|(_, c)| c.image.is_some())
        .map(|(name, _)| {
            plain_env(
                &format!(
                    "WEFT_COMPONENT_URL_{}",
                    name.to_ascii_uppercase().replace('-', "_")
                ),
                &format!("http://{}:{COMPONENT_PORT}", component_service(plan, name)),
            )
        })
        .collect()
}

pub(crate) fn yaml<T: serde::Serialize>(object: &T) -> String {
    serde_saphyr::to_string(object).expect("objects serialize")
}

pub(crate) fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn meta(name: &str, plan: &Plan, workload: Option<&Workload<'_>>) -> ObjectMeta {
    let labels = match workload {
        Some(w) => w.labels(plan),
        None => {
            let mut labels = bundle_labels(plan);
            labels.insert("app.kubernetes.io/name".into(), "weft".into());
            labels
        }
    };
    ObjectMeta {
        name: Some(name.to_string()),
        labels: Some(labels),
        ..Default::default()
    }
}

pub(crate) fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The broker and the allocator's lean settings (many small containers).
pub(crate) fn runtime_env(project: &Project) -> Vec<EnvVar> {
    vec![
        plain_env("WEFT_BROKER_URL", &project.broker.url),
        plain_env(
            "WEFT_BROKER_REPLICAS",
            &project.broker.stream_replicas.to_string(),
        ),
        plain_env("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
        plain_env("MIMALLOC_PURGE_DELAY", "0"),
    ]
}

/// Each secret variable from the customer's Secret, by name: no value is ever emitted.
fn secret_env<'a>(plan: &Plan, names: impl IntoIterator<Item = &'a str>) -> Vec<EnvVar> {
    let secret = secret_name(&plan.customer);
    names
        .into_iter()
        .map(|name| EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.clone(),
                    key: name.into(),
                    optional: None,
                }),
                ..Default::default()
            }),
        })
        .collect()
}

pub(crate) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn plan_volume(config_map: &str) -> Volume {
    Volume {
        name: "plan".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_port(port: i32) -> ContainerPort {
    ContainerPort {
        container_port: port,
        name: Some("http".into()),
        ..Default::default()
    }
}

/// Non-root, no privilege escalation, read-only root filesystem, no capabilities.
fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..Default::default()
    }
}

/// A weft container (gateway or step) without its arguments, environment and mounts.
pub(crate) fn weft_container(
    project: &Project,
    step_resources: Option<&plan_types::Resources>,
) -> Container {
    let health = |period| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        ..Default::default()
    };
    Container {
        name: "weft".into(),
        image: Some(project.images.runtime.clone()),
        ports: Some(vec![container_port(PORT)]),
        liveness_probe: Some(health(10)),
        readiness_probe: Some(health(5)),
        resources: Some(resources(&project.kubernetes.resources, step_resources)),
        security_context: Some(container_security()),
        ..Default::default()
    }
}

/// The step's requests and limits, field by field over the project's defaults.
fn resources(defaults: &Resources, step: Option<&plan_types::Resources>) -> ResourceRequirements {
    let pick = |default: &Option<ResourceAmounts>,
                own: Option<&plan_types::ResourceAmounts>|
     -> Option<BTreeMap<String, Quantity>> {
        let cpu = own
            .and_then(|o| o.cpu.clone())
            .or_else(|| default.as_ref().and_then(|d| d.cpu.clone()));
        let memory = own
            .and_then(|o| o.memory.clone())
            .or_else(|| default.as_ref().and_then(|d| d.memory.clone()));
        let map: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), Quantity(v))))
            .collect();
        (!map.is_empty()).then_some(map)
    };
    ResourceRequirements {
        requests: pick(&defaults.requests, step.and_then(|s| s.requests.as_ref())),
        limits: pick(&defaults.limits, step.and_then(|s| s.limits.as_ref())),
        ..Default::default()
    }
}

/// The gateway's volume claim `name` (its history, dead letters and trigger state), of
/// `kubernetes.gateway_storage`.
pub(crate) fn gateway_claim(
    name: &str,
    labels: BTreeMap<String, String>,
    project: &Project,
) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(project.kubernetes.gateway_storage.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Deployment `name` (labelled `labels`, its pods too) of `replicas` pods of one container,
/// non-root, under `account`.
pub(crate) fn deployment(
    name: &str,
    labels: BTreeMap<String, String>,
    account: &str,
    replicas: u32,
    container: Container,
    volumes: Vec<Volume>,
    strategy: &str,
) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(selector(name)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some(strategy.into()),
                ..Default::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(account.into()),
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(USER),
                        run_as_group: Some(USER),
                        fs_group: Some(USER),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Service `name` (labelled `labels`) in front of the pods of the Deployment `name`.
pub(crate) fn service(name: &str, labels: BTreeMap<String, String>, port: i32) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(selector(name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                target_port: Some(IntOrString::String("http".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        assert_eq!(
            dns_name(&["weft", "Acme", "step.orders.push"]),
            "weft-acme-step-orders-push"
        );
        let long = dns_name(&["weft", &"x".repeat(80)]);
        assert_eq!(long.len(), 63);
        assert_ne!(long, dns_name(&["weft", &"x".repeat(81)]));
        assert_eq!(label_value("-a.b_c-"), "a.b_c");
    }

    #[test]
    fn a_step_overrides_the_default_resources_field_by_field() {
        let defaults = crate::model::KubernetesSettings::default().resources;
        let own = plan_types::Resources {
            requests: None,
            limits: Some(plan_types::ResourceAmounts {
                cpu: None,
                memory: Some("1Gi".into()),
            }),
        };
        let merged = resources(&defaults, Some(&own));
        let limits = merged.limits.unwrap();
        assert_eq!(limits["memory"], Quantity("1Gi".into()));
        assert_eq!(limits["cpu"], Quantity("1".into()));
        assert_eq!(merged.requests.unwrap()["memory"], Quantity("32Mi".into()));
    }
}
