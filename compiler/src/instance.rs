//! Stage 3: checks each instance against its integration and builds its plan.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::check::{CompiledIntegration, check_config_value};
use crate::diagnostic::{Code, Diagnostic, did_you_mean};
use crate::load::Loaded;
use crate::model::{ConfigType, Instance};
use crate::path;
use crate::plan::{self, ConfigValue, PLAN_FORMAT, Plan};

/// Which version of its integration an instance runs, as resolved by the caller.
pub enum Resolved<'a> {
    /// The working tree.
    Draft,
    /// A published version, compiled from its tag's commit.
    Published {
        version: u32,
        integration: &'a CompiledIntegration,
        commit: &'a str,
    },
    /// The pin cannot be honoured.
    Failed {
        code: Code,
        message: String,
        help: String,
    },
}

/// Checks an instance; returns its plan when it has no errors.
pub fn instance(
    loaded: &Loaded<Instance>,
    integrations: &BTreeMap<String, CompiledIntegration>,
    known_integrations: &BTreeSet<String>,
    project: &crate::model::Project,
    build_plan: bool,
    resolved: Resolved<'_>,
) -> (Option<Plan>, Vec<Diagnostic>) {
    let mut out = Vec::new();
    let m = &loaded.model;
    let file = loaded.file;
    let root = &loaded.root;
    let customer = m
        .customer
        .as_ref()
        .map_or(loaded.folder.clone(), |c| c.0.clone());
    let valid_name = |n: &str| {
        n.starts_with(|c: char| c.is_ascii_lowercase())
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if m.customer.is_none() && !valid_name(&loaded.folder) {
        // The folder names the customer, and the customer names queues and bundle folders.
        out.push(
            Diagnostic::error(
                Code::InvalidValue,
                format!("`instances/{}` is not a valid customer name", loaded.folder),
            )
            .at(
                file,
                root.key_span(&path!["integration"]),
                "the instance's customer comes from its folder",
            )
            .help("customer names use lower-case letters, digits and `-`, and start with a letter"),
        );
    }
    if m.customer.as_ref().is_some_and(|c| c.0 != loaded.folder) {
        out.push(
            Diagnostic::error(
                Code::MisplacedFile,
                format!(
                    "instance of customer `{customer}` lies in folder `instances/{}`",
                    loaded.folder
                ),
            )
            .at(
                file,
                root.at(&path!["customer"]).span.clone(),
                "differs from the folder",
            )
            .help(format!(
                "move the file to `instances/{customer}/`, or drop `customer:`"
            )),
        );
    }
    if m.integration.0 != loaded.stem {
        out.push(
            Diagnostic::error(
                Code::MisplacedFile,
                format!(
                    "instance of `{}` is named `{}.yaml`",
                    m.integration.0, loaded.stem
                ),
            )
            .at(
                file,
                root.at(&path!["integration"]).span.clone(),
                "differs from the file name",
            )
            .help(format!(
                "name the file `instances/{}/{}.yaml`",
                loaded.folder, m.integration.0
            )),
        );
    }
    let (version, commit, published) = match resolved {
        Resolved::Draft => ("draft".to_string(), None, None),
        Resolved::Published {
            version,
            integration,
            commit,
        } => (
            format!("v{version}"),
            Some(commit.to_string()),
            Some(integration),
        ),
        Resolved::Failed {
            code,
            message,
            help,
        } => {
            let at = if root.entry("version").is_some() {
                path!["version"]
            } else {
                path!["integration"]
            };
            out.push(
                Diagnostic::error(code, message)
                    .at(file, root.at(&at).span.clone(), "pinned here")
                    .help(help),
            );
            return (None, out);
        }
    };
    let Some(integration) = published.or_else(|| integrations.get(&m.integration.0)) else {
        if !known_integrations.contains(&m.integration.0) {
            out.push(
                Diagnostic::error(
                    Code::UnknownIntegration,
                    format!("unknown integration `{}`", m.integration.0),
                )
                .at(
                    file,
                    root.at(&path!["integration"]).span.clone(),
                    "not in integrations/",
                )
                .help_opt(did_you_mean(
                    &m.integration.0,
                    known_integrations.iter().map(String::as_str),
                )),
            );
        }
        // An integration with errors of its own: they are reported there.
        return (None, out);
    };
    let mut config = BTreeMap::new();
    let mut secrets = BTreeSet::new();
    for (key, value) in &m.config {
        let key_span = root.key_span(&path!["config", key]);
        let Some(var) = integration.config.get(key) else {
            out.push(
                Diagnostic::error(
                    Code::UnknownConfigKey,
                    format!("`{}` has no config variable `{key}`", integration.name),
                )
                .at(file, key_span, "unknown key")
                .help_opt(
                    did_you_mean(key, integration.config.keys().map(String::as_str)).or_else(
                        || {
                            Some(format!(
                                "variables: {}",
                                integration
                                    .config
                                    .keys()
                                    .cloned()
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ))
                        },
                    ),
                ),
            );
            continue;
        };
        let span = root.at(&path!["config", key]).span.clone();
        match check_config_value(var, value) {
            Ok(()) => {}
            Err((code, message)) => {
                let help = match code {
                    Code::LiteralSecret => Some(format!(
                        "write `{key}: {{ secret: {} }}` and set that variable in the environment",
                        key.to_uppercase()
                    )),
                    _ => var.values.as_ref().and_then(|v| {
                        did_you_mean(
                            value.as_str().unwrap_or_default(),
                            v.iter().map(String::as_str),
                        )
                    }),
                };
                // A literal secret is never echoed back.
                let label = if code == Code::LiteralSecret {
                    "literal secret".to_string()
                } else {
                    format!(
                        "declared as `type: {}`",
                        format!("{:?}", var.kind).to_lowercase()
                    )
                };
                let mut diag = Diagnostic::error(code, format!("config `{key}`: {message}"))
                    .at(file, span.clone(), label)
                    .help_opt(help);
                if var.kind == ConfigType::Secret {
                    diag = diag.redact(span);
                }
                out.push(diag);
                continue;
            }
        }
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
        if config.contains_key(key) || m.config.contains_key(key) {
            continue;
        }
        match &var.default {
            Some(default) => {
                config.insert(key.clone(), ConfigValue::Value(default.clone()));
            }
            None => {
                let at = if root.entry("config").is_some() {
                    root.key_span(&path!["config"])
                } else {
                    root.key_span(&path!["integration"])
                };
                let example = if var.kind == ConfigType::Secret {
                    format!("{{ secret: {} }}", key.to_uppercase())
                } else {
                    "<value>".to_string()
                };
                out.push(
                    Diagnostic::error(
                        Code::MissingConfigValue,
                        format!("config `{key}` has no value"),
                    )
                    .at(file, at, format!("`{key}` is required (no default)"))
                    .help(format!("add `{key}: {example}` under `config:`")),
                );
            }
        }
    }
    for name in m.flows.keys() {
        if !integration.flows.iter().any(|f| &f.name == name) {
            out.push(
                Diagnostic::error(
                    Code::UnknownFlow,
                    format!("`{}` has no flow `{name}`", integration.name),
                )
                .at(file, root.key_span(&path!["flows", name]), "unknown flow")
                .help_opt(did_you_mean(
                    name,
                    integration.flows.iter().map(|f| f.name.as_str()),
                )),
            );
        }
    }
    if !build_plan || out.iter().any(Diagnostic::is_error) {
        return (None, out);
    }
    let prefix = format!("weft.{customer}.{}", integration.name);
    let flows = integration
        .flows
        .iter()
        .map(|f| {
            let mut f = f.clone();
            f.enabled = m.flows.get(&f.name).is_none_or(|s| s.enabled);
            f.entry_queue = f.entry_queue.map(|q| format!("{prefix}.{q}"));
            for s in &mut f.steps {
                s.queue = format!("{prefix}.{}", s.queue);
            }
            for e in &mut f.edges {
                e.queue = format!("{prefix}.{}", e.queue);
            }
            f
        })
        .collect();
    let plan = Plan {
        format: PLAN_FORMAT,
        integration: integration.name.clone(),
        customer,
        version,
        commit,
        config,
        connections: integration.connections.clone(),
        components: integration.components.clone(),
        flows,
        secrets: secrets.into_iter().collect(),
        policy: plan::Policy {
            deny_private_addresses: project.policy.deny_private_addresses,
        },
        runtime: plan::RuntimeSettings {
            port: project.gateway.port,
            max_body: crate::size::parse_size(&project.gateway.max_body).unwrap_or(10_000_000),
            broker_url: BROKER_URL.to_string(),
        },
    };
    let mut plan = plan;
    record_secrets(&mut plan);
    (Some(plan), out)
}

/// The broker of container mode: the compose service `broker`.
pub const BROKER_URL: &str = "nats://broker:4222";

/// Records on the plan which secrets each trigger and each step reads, so that a container
/// gets only the secrets it needs.
fn record_secrets(plan: &mut Plan) {
    let mut flows = std::mem::take(&mut plan.flows);
    for flow in &mut flows {
        let mut trigger = BTreeSet::new();
        match &flow.trigger {
            plan::Trigger::Webhook {
                auth: Some(auth), ..
            } => secrets_read(&Value::from(auth.secret_template()), plan, &mut trigger),
            plan::Trigger::Poll {
                with, connection, ..
            } => {
                for v in with.values() {
                    secrets_read(v, plan, &mut trigger);
                }
                if let Some(conn) = connection.as_ref().and_then(|c| plan.connections.get(c)) {
                    for v in conn.with.values() {
                        secrets_read(v, plan, &mut trigger);
                    }
                }
            }
            _ => {}
        }
        flow.trigger_secrets = trigger.into_iter().collect();
        for step in &mut flow.steps {
            step.secrets = step_secrets(plan, step).into_iter().collect();
        }
    }
    plan.flows = flows;
}

/// The secret environment variables a value's templates read (through `config.<secret>`).
fn secrets_read(value: &Value, plan: &Plan, out: &mut BTreeSet<String>) {
    match value {
        Value::String(s) if crate::template::is_template(s) => {
            if let Ok(refs) = crate::template::references(s) {
                for r in refs {
                    if r.name(0) == Some("config")
                        && let Some(ConfigValue::Secret { secret }) =
                            r.name(1).and_then(|k| plan.config.get(k))
                    {
                        out.insert(secret.clone());
                    }
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| secrets_read(v, plan, out)),
        Value::Object(map) => map.values().for_each(|v| secrets_read(v, plan, out)),
        _ => {}
    }
}

/// The secrets one step needs: those its inputs and its connection read.
fn step_secrets(plan: &Plan, step: &plan::Step) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for v in step.with.values() {
        secrets_read(v, plan, &mut out);
    }
    if let Some(conn) = step
        .connection
        .as_ref()
        .and_then(|c| plan.connections.get(c))
    {
        for v in conn.with.values() {
            secrets_read(v, plan, &mut out);
        }
    }
    out
}
