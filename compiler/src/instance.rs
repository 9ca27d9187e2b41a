//! Stage 3: validation of instances. Each instance is checked against the integration (and
//! version) it runs: its place in the repository, its config values and secrets, its flow
//! settings. An instance without errors becomes a [`CheckedInstance`], which
//! [`crate::lower`] turns into a plan.

mod schedules;

use std::collections::{BTreeMap, BTreeSet};

use indexmap::IndexMap;

use crate::config_value::check_config_value;
use crate::diagnostic::{Code, Diagnostic, did_you_mean};
use crate::load::Loaded;
use crate::model::{ConfigType, ConfigVar, Instance};
use crate::path;
use crate::source::FileId;
use crate::yaml::Node;

/// Which version of its integration an instance runs, as resolved by the caller.
pub enum Pin<'a> {
    /// The working tree.
    Draft,
    /// A published version, compiled from its tag's commit.
    Published { version: u32, commit: &'a str },
    /// The pin cannot be honoured.
    Failed {
        code: Code,
        message: String,
        help: String,
    },
}

/// What an instance is checked against: its integration's name, config variables and flows.
pub struct Target<'a> {
    pub name: &'a str,
    pub config: &'a IndexMap<String, ConfigVar>,
    pub flows: Vec<&'a str>,
    /// Every step id of every flow.
    pub steps: Vec<&'a str>,
    /// The pure steps, which run fused in their leader's process (no replicas of their own).
    pub fused_steps: Vec<&'a str>,
    /// Schedules that are templates over config: flow and template.
    pub schedules: Vec<(&'a str, &'a str)>,
}

/// An instance that passed every check, ready to be lowered.
pub struct CheckedInstance<'a> {
    pub model: &'a Instance,
    /// The customer: `customer:`, or the folder.
    pub customer: String,
    /// The published version run, with its commit; `None` for the working tree.
    pub published: Option<(u32, String)>,
    /// The cron expression of each schedule that is a template, by flow.
    pub crons: BTreeMap<String, String>,
}

/// Checks an instance against `target`, the integration its pin resolves to (`None` when there
/// is none without errors); `known_integrations` includes those with errors. Returns the
/// checked instance when it has no errors.
pub fn check<'a>(
    loaded: &'a Loaded<Instance>,
    pin: Pin<'_>,
    target: Option<&Target<'_>>,
    known_integrations: &BTreeSet<String>,
) -> (Option<CheckedInstance<'a>>, Vec<Diagnostic>) {
    let mut out = Vec::new();
    let m = &loaded.model;
    let customer = m
        .customer
        .as_ref()
        .map_or(loaded.folder.clone(), |c| c.0.clone());
    check_place(loaded, &customer, &mut out);
    let published = match pin {
        Pin::Draft => None,
        Pin::Published { version, commit } => Some((version, commit.to_string())),
        Pin::Failed {
            code,
            message,
            help,
        } => {
            let root = &loaded.root;
            let at = if root.entry("version").is_some() {
                path!["version"]
            } else {
                path!["integration"]
            };
            out.push(
                Diagnostic::error(code, message)
                    .at(loaded.file, root.at(&at).span.clone(), "pinned here")
                    .help(help),
            );
            return (None, out);
        }
    };
    let Some(target) = target else {
        if !known_integrations.contains(&m.integration.0) {
            out.push(unknown_integration(loaded, known_integrations));
        }
        // An integration with errors of its own: they are reported there.
        return (None, out);
    };
    check_config_values(loaded, target, &mut out);
    check_missing_config(loaded, target, &mut out);
    check_flow_settings(loaded, target, &mut out);
    check_replicas(loaded, target, &mut out);
    // Schedules are resolved from values that fit their variables.
    let crons = if out.iter().any(Diagnostic::is_error) {
        BTreeMap::new()
    } else {
        schedules::resolve_schedules(loaded, target, &mut out)
    };
    let checked = CheckedInstance {
        model: m,
        customer,
        published,
        crons,
    };
    let ok = !out.iter().any(Diagnostic::is_error);
    (ok.then_some(checked), out)
}

/// The customer's folder and the file's name match the instance.
fn check_place(loaded: &Loaded<Instance>, customer: &str, out: &mut Vec<Diagnostic>) {
    let m = &loaded.model;
    let (file, root) = (loaded.file, &loaded.root);
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
}

fn unknown_integration(loaded: &Loaded<Instance>, known: &BTreeSet<String>) -> Diagnostic {
    let name = &loaded.model.integration.0;
    Diagnostic::error(
        Code::UnknownIntegration,
        format!("unknown integration `{name}`"),
    )
    .at(
        loaded.file,
        loaded.root.at(&path!["integration"]).span.clone(),
        "not in integrations/",
    )
    .help_opt(did_you_mean(name, known.iter().map(String::as_str)))
}

/// Each config value is for a variable of the integration and fits it; secrets are never
/// literal.
fn check_config_values(loaded: &Loaded<Instance>, target: &Target<'_>, out: &mut Vec<Diagnostic>) {
    let (file, root) = (loaded.file, &loaded.root);
    for (key, value) in &loaded.model.config {
        let Some(var) = target.config.get(key) else {
            out.push(unknown_config_key(file, root, target, key));
            continue;
        };
        let Err((code, message)) = check_config_value(var, value) else {
            continue;
        };
        let span = root.at(&path!["config", key]).span.clone();
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
    }
}

fn unknown_config_key(file: FileId, root: &Node, target: &Target<'_>, key: &str) -> Diagnostic {
    let variables = || {
        Some(format!(
            "variables: {}",
            target.config.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    };
    Diagnostic::error(
        Code::UnknownConfigKey,
        format!("`{}` has no config variable `{key}`", target.name),
    )
    .at(file, root.key_span(&path!["config", key]), "unknown key")
    .help_opt(did_you_mean(key, target.config.keys().map(String::as_str)).or_else(variables))
}

/// Every variable without a default has a value.
fn check_missing_config(loaded: &Loaded<Instance>, target: &Target<'_>, out: &mut Vec<Diagnostic>) {
    let root = &loaded.root;
    for (key, var) in target.config {
        if loaded.model.config.contains_key(key) || var.default.is_some() {
            continue;
        }
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
            .at(loaded.file, at, format!("`{key}` is required (no default)"))
            .help(format!("add `{key}: {example}` under `config:`")),
        );
    }
}

/// Most replicas of one step.
pub const MAX_REPLICAS: u32 = 100;

/// `replicas:` names steps of the integration, each with 1 to [`MAX_REPLICAS`] replicas.
fn check_replicas(loaded: &Loaded<Instance>, target: &Target<'_>, out: &mut Vec<Diagnostic>) {
    for (step, &count) in &loaded.model.replicas {
        let at = path!["replicas", step];
        if !target.steps.contains(&step.as_str()) {
            out.push(
                Diagnostic::error(
                    Code::UnknownStep,
                    format!("`{}` has no step `{step}`", target.name),
                )
                .at(loaded.file, loaded.root.key_span(&at), "unknown step")
                .help_opt(did_you_mean(step, target.steps.iter().copied())),
            );
        } else if target.fused_steps.contains(&step.as_str()) {
            out.push(
                Diagnostic::warning(
                    Code::InvalidValue,
                    format!(
                        "`{step}` is a pure step: it runs fused, in the process of the step before it, and has no replicas of its own"
                    ),
                )
                .at(loaded.file, loaded.root.key_span(&at), "no effect")
                .help("scale the step with a side effect before it (an HTTP call, a component action)"),
            );
        } else if !(1..=MAX_REPLICAS).contains(&count) {
            out.push(
                Diagnostic::error(
                    Code::InvalidValue,
                    format!("`{step}` has {count} replicas; a step runs 1 to {MAX_REPLICAS}"),
                )
                .at(
                    loaded.file,
                    loaded.root.at(&at).span.clone(),
                    "out of range",
                ),
            );
        }
    }
}

/// Flow settings name flows of the integration.
fn check_flow_settings(loaded: &Loaded<Instance>, target: &Target<'_>, out: &mut Vec<Diagnostic>) {
    for name in loaded.model.flows.keys() {
        if !target.flows.contains(&name.as_str()) {
            out.push(
                Diagnostic::error(
                    Code::UnknownFlow,
                    format!("`{}` has no flow `{name}`", target.name),
                )
                .at(
                    loaded.file,
                    loaded.root.key_span(&path!["flows", name]),
                    "unknown flow",
                )
                .help_opt(did_you_mean(name, target.flows.iter().copied())),
            );
        }
    }
}
