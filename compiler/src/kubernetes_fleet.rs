//! The fleet topology on Kubernetes (`weft build --fleet --target k8s`): one gateway Deployment
//! (with its Service and volume) for every customer's webhooks, schedules and polls, and one
//! Deployment per integration, flow and step with a process, whose replicas serve every
//! instance of that integration; the broker is the cluster's (`broker.url`).
//!
//! A fleet's plans do not fit one ConfigMap (Kubernetes refuses objects over 1 MiB), so they
//! are split over numbered ConfigMaps ([`SHARD_BYTES`] of plans each) projected into one folder,
//! one `<customer>.<integration>.plan.json` per instance. The pods mount more shards than are
//! used, each optional: a fleet that grows by a shard or two changes ConfigMaps only, not the
//! pod template, and the processes reload what changed (`--reload-every`) without a restart.
//! Secrets come the same way, from one Secret of the fleet mounted as files
//! (`--secrets-dir`): a customer added later brings its secrets by an update of that Secret.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapProjection, PersistentVolumeClaimVolumeSource, ProjectedVolumeSource,
    SecretVolumeSource, ServiceAccount, Volume, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::fleet::{self, SECRETS_MOUNT};
use crate::kubernetes::{
    PORT, deployment, dns_name, gateway_claim, label_value, mount, plain_env, runtime_env,
    selector, service, weft_container, yaml,
};
use crate::model::Project;
use crate::plan::Plan;

/// Bytes of plans one ConfigMap holds at most: well under the 1 MiB Kubernetes allows an
/// object, with room for its metadata.
pub const SHARD_BYTES: usize = 900 * 1024;

/// `weft-fleet-<name>`: the prefix of every object of the fleet.
fn fleet_base(project: &Project) -> String {
    dns_name(&["weft", fleet::FLEET_CUSTOMER, &fleet::fleet_name(project)])
}

/// The Secret the fleet reads its secrets from, one key per variable.
pub fn secret_name(project: &Project) -> String {
    dns_name(&[&fleet_base(project), "secrets"])
}

/// The labels every object of the fleet carries.
fn fleet_labels(project: &Project) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/part-of".into(),
            label_value(&fleet_base(project)),
        ),
        ("app.kubernetes.io/managed-by".into(), "weft".into()),
        ("app.kubernetes.io/name".into(), "weft".into()),
        ("weft.customer".into(), fleet::FLEET_CUSTOMER.into()),
        (
            "weft.integration".into(),
            label_value(&fleet::fleet_name(project)),
        ),
    ])
}

/// The labels of a workload `name` of the fleet in `role`, serving `step` (integration, flow,
/// step) when it is a step's.
fn workload_labels(
    project: &Project,
    name: &str,
    role: &str,
    step: Option<(&str, &str, &str)>,
) -> BTreeMap<String, String> {
    let mut labels = fleet_labels(project);
    labels.extend(selector(name));
    labels.insert("app.kubernetes.io/component".into(), role.into());
    labels.insert("weft.role".into(), role.into());
    if let Some((integration, flow, step)) = step {
        labels.insert("weft.serves".into(), label_value(integration));
        labels.insert("weft.flow".into(), label_value(flow));
        labels.insert("weft.step".into(), label_value(step));
    }
    labels
}

/// The ConfigMap key of an instance's plan: `<customer>.<integration>.plan.json`.
fn plan_key(plan: &Plan) -> String {
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c,
                _ => '-',
            })
            .collect()
    };
    format!(
        "{}.{}.plan.json",
        clean(&plan.customer),
        clean(&plan.integration)
    )
}

/// The plans, by key, split in order into shards of at most [`SHARD_BYTES`].
fn plan_shards(plans: &[Plan]) -> Result<Vec<BTreeMap<String, String>>, String> {
    let mut keyed: Vec<(String, String)> = plans
        .iter()
        .map(|p| {
            (
                plan_key(p),
                serde_json::to_string(p).expect("plans serialize"),
            )
        })
        .collect();
    keyed.sort();
    let mut shards: Vec<BTreeMap<String, String>> = Vec::new();
    let mut size = 0;
    for (key, text) in keyed {
        let bytes = key.len() + text.len();
        if bytes > SHARD_BYTES {
            return Err(format!(
                "the plan of {key} is {bytes} bytes, more than a ConfigMap holds ({SHARD_BYTES})"
            ));
        }
        if shards.is_empty() || size + bytes > SHARD_BYTES {
            shards.push(BTreeMap::new());
            size = 0;
        }
        size += bytes;
        shards.last_mut().expect("a shard").insert(key, text);
    }
    Ok(shards)
}

/// How many shards the pods mount: twice those used, at least four, a power of two (the pod
/// template changes only when the fleet outgrows it).
fn mounted_shards(used: usize) -> usize {
    (used * 2).max(4).next_power_of_two()
}

/// The name of plan shard `n`.
fn shard_name(base: &str, n: usize) -> String {
    format!("{base}-plans-{n}")
}

/// The volumes every pod of the fleet mounts: the plans (every shard, optional) and the
/// fleet's Secret (optional: a fleet without secrets needs none).
fn fleet_volumes(base: &str, project: &Project, shards: usize) -> Vec<Volume> {
    let sources = (0..shards)
        .map(|n| VolumeProjection {
            config_map: Some(ConfigMapProjection {
                name: shard_name(base, n),
                optional: Some(true),
                items: None,
            }),
            ..Default::default()
        })
        .collect();
    vec![
        Volume {
            name: "plans".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(sources),
                default_mode: None,
            }),
            ..Default::default()
        },
        Volume {
            name: "secrets".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name(project)),
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

/// The fleet's `kubernetes.yaml`: a ServiceAccount, the plan shards, the gateway (Deployment,
/// Service, PersistentVolumeClaim) and a Deployment per integration, flow and step.
pub fn manifests(plans: &[Plan], project: &Project) -> Result<String, String> {
    fleet::check_fleet(plans)?;
    let base = fleet_base(project);
    let labels = fleet_labels(project);
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_string()),
        labels: Some(labels.clone()),
        ..Default::default()
    };
    let mut docs = vec![yaml(&ServiceAccount {
        metadata: meta(&base),
        automount_service_account_token: Some(false),
        ..Default::default()
    })];
    let shards = plan_shards(plans)?;
    for (n, data) in shards.iter().enumerate() {
        docs.push(yaml(&ConfigMap {
            metadata: meta(&shard_name(&base, n)),
            data: Some(data.clone()),
            ..Default::default()
        }));
    }
    let mounted = mounted_shards(shards.len());
    let mounts = vec![
        mount("plans", fleet::FLEET_MOUNT, true),
        mount("secrets", SECRETS_MOUNT, true),
    ];
    let mut env = runtime_env(project);
    env.push(plain_env("WEFT_SECRETS_DIR", SECRETS_MOUNT));

    // The gateway: one replica on a volume (history, dead letters and trigger state).
    let gateway = dns_name(&[&base, "gateway"]);
    let gateway_labels = workload_labels(project, &gateway, "gateway", None);
    let claim = format!("{gateway}-data");
    docs.push(yaml(&gateway_claim(
        &claim,
        gateway_labels.clone(),
        project,
    )));
    let mut gateway_env = env.clone();
    gateway_env.push(plain_env("WEFT_DATA_DIR", "/data"));
    let mut volumes = fleet_volumes(&base, project, mounted);
    volumes.push(Volume {
        name: "data".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim,
            read_only: None,
        }),
        ..Default::default()
    });
    let container = k8s_openapi::api::core::v1::Container {
        args: Some(fleet::gateway_command(PORT as u16)),
        env: Some(gateway_env),
        volume_mounts: Some(
            mounts
                .iter()
                .cloned()
                .chain([mount("data", "/data", false)])
                .collect(),
        ),
        ..weft_container(project, None)
    };
    // Recreate: the volume is ReadWriteOnce, and two gateways would both run the triggers.
    docs.push(yaml(&deployment(
        &gateway,
        gateway_labels.clone(),
        &base,
        1,
        container,
        volumes,
        "Recreate",
    )));
    docs.push(yaml(&service(&gateway, gateway_labels, PORT)));

    for ((integration, flow, step), (_, replicas)) in fleet::fleet_steps(plans) {
        let name = dns_name(&[&base, "step", &integration, &flow, &step]);
        let labels = workload_labels(project, &name, "step", Some((&integration, &flow, &step)));
        let container = k8s_openapi::api::core::v1::Container {
            args: Some(fleet::step_command(&integration, &flow, &step, PORT as u16)),
            env: Some(env.clone()),
            volume_mounts: Some(mounts.clone()),
            ..weft_container(project, None)
        };
        docs.push(yaml(&deployment(
            &name,
            labels,
            &base,
            replicas,
            container,
            fleet_volumes(&base, project, mounted),
            "RollingUpdate",
        )));
    }
    let secret = secret_name(project);
    let header = format!(
        "# Generated by weft: the fleet topology of {} instance(s) on Kubernetes; do not edit, run\n\
         # `weft build --fleet --target k8s`. The broker is the cluster's ({}).\n\
         # Create the fleet's Secret first, from the fleet's .env (every instance's secrets):\n\
         #   kubectl create secret generic {secret} --from-env-file=.env\n\
         # and update it the same way (add --dry-run=client -o yaml | kubectl apply -f -). Apply\n\
         # this file with `kubectl apply --server-side -f kubernetes.yaml` (its ConfigMaps are too\n\
         # large for client-side apply's annotation). The pods read the Secret and the plans as\n\
         # files and reload within a minute of a change, without a restart.\n",
        plans.len(),
        project.broker.url,
    );
    Ok(header + &docs.join("---\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_mounted_grow_by_powers_of_two() {
        assert_eq!([0, 1, 2, 3, 5, 9].map(mounted_shards), [4, 4, 4, 8, 16, 32]);
    }
}
