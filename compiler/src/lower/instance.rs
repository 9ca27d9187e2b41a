//! A checked instance lowered into its plan: config values resolved (defaults filled in, secrets
//! as references), queues prefixed with the customer and integration, the secrets each
//! container reads recorded.

use std::collections::{BTreeMap, BTreeSet};

use super::integration::CompiledIntegration;
use super::secrets::record_secrets;
use crate::check::CheckedProject;
use crate::instance::CheckedInstance;
use crate::model::ConfigType;
use crate::plan::{self, ConfigValue, PLAN_FORMAT, Plan};

/// The broker of container mode: the compose service `broker`.
pub const BROKER_URL: &str = "nats://broker:4222";

/// Lowers a checked instance of `integration` into its plan.
pub fn instance(
    checked: &CheckedInstance<'_>,
    integration: &CompiledIntegration,
    project: &CheckedProject,
) -> Plan {
    let (config, secrets) = config_values(checked, integration);
    let (version, commit) = match &checked.published {
        Some((version, commit)) => (format!("v{version}"), Some(commit.clone())),
        None => ("draft".to_string(), None),
    };
    let mut plan = Plan {
        format: PLAN_FORMAT,
        integration: integration.name.clone(),
        customer: checked.customer.clone(),
        version,
        commit,
        config,
        connections: integration.connections.clone(),
        components: integration.components.clone(),
        flows: instance_flows(checked, integration),
        secrets: secrets.into_iter().collect(),
        policy: plan::Policy {
            deny_private_addresses: project.model.policy.deny_private_addresses,
        },
        runtime: plan::RuntimeSettings {
            port: project.model.gateway.port,
            max_body: project.max_body,
            broker_url: BROKER_URL.to_string(),
        },
    };
    record_secrets(&mut plan);
    plan
}

/// Every config value of the instance (secrets as references, defaults for what it leaves
/// out) and the secret environment variables they name.
fn config_values(
    checked: &CheckedInstance<'_>,
    integration: &CompiledIntegration,
) -> (BTreeMap<String, ConfigValue>, BTreeSet<String>) {
    let given = &checked.model.config;
    let mut config = BTreeMap::new();
    let mut secrets = BTreeSet::new();
    for (key, value) in given {
        let Some(var) = integration.config.get(key) else {
            continue;
        };
        let resolved = if var.kind == ConfigType::Secret {
            let name = value["secret"].as_str().unwrap_or_default().to_string();
            secrets.insert(name.clone());
            ConfigValue::Secret { secret: name }
        } else {
            ConfigValue::Value(value.clone())
        };
        config.insert(key.clone(), resolved);
    }
    for (key, var) in &integration.config {
        if let Some(default) = &var.default
            && !given.contains_key(key)
        {
            config.insert(key.clone(), ConfigValue::Value(default.clone()));
        }
    }
    (config, secrets)
}

/// The integration's flows for this instance: enabled as it says, queues prefixed with
/// `weft.<customer>.<integration>`.
fn instance_flows(
    checked: &CheckedInstance<'_>,
    integration: &CompiledIntegration,
) -> Vec<plan::Flow> {
    let prefix = format!("weft.{}.{}", checked.customer, integration.name);
    integration
        .flows
        .iter()
        .map(|f| {
            let mut f = f.clone();
            f.enabled = checked.model.flows.get(&f.name).is_none_or(|s| s.enabled);
            if let plan::Trigger::Schedule { cron, .. } = &mut f.trigger
                && let Some(resolved) = checked.crons.get(&f.name)
            {
                cron.clone_from(resolved);
            }
            f.entry_queue = f.entry_queue.map(|q| format!("{prefix}.{q}"));
            for s in &mut f.steps {
                s.queue = format!("{prefix}.{}", s.queue);
                if let Some(&replicas) = checked.model.replicas.get(&s.id) {
                    s.replicas = replicas;
                }
            }
            for e in &mut f.edges {
                e.queue = format!("{prefix}.{}", e.queue);
            }
            f
        })
        .collect()
}
