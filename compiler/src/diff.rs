//! Semantic diff of two compilations of a repository (a pull request's base and head): per
//! integration, what flows, steps, triggers, config variables and connections were added,
//! removed or changed, field by field; per customer, config and enabled flows, and the text
//! diff of the emitted docker-compose file. Breaking changes are flagged.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::Compilation;
use crate::emit;
use crate::lower::CompiledIntegration;
use crate::plan::{Plan, Trigger};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Added,
    Removed,
    Changed,
}

/// One field that differs: `path` inside the changed item, old → new.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// An item of an integration that was added, removed or changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// `flow`, `trigger`, `step`, `config`, `connection`.
    pub kind: &'static str,
    /// e.g. `order-created` or `order-created/push`.
    pub name: String,
    pub status: Status,
    pub fields: Vec<FieldChange>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IntegrationDiff {
    pub name: String,
    pub status: Status,
    /// Customers whose instances run this integration (on either side).
    pub customers: Vec<String>,
    pub changes: Vec<Change>,
    pub breaking: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceDiff {
    pub customer: String,
    pub integration: String,
    pub status: Status,
    pub fields: Vec<FieldChange>,
    /// Unified diff of `docker-compose.yaml`.
    pub compose: String,
    pub breaking: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RepoDiff {
    pub integrations: Vec<IntegrationDiff>,
    pub instances: Vec<InstanceDiff>,
}

impl RepoDiff {
    pub fn is_empty(&self) -> bool {
        self.integrations.is_empty() && self.instances.is_empty()
    }

    pub fn breaking_count(&self) -> usize {
        self.integrations
            .iter()
            .map(|i| i.breaking.len())
            .sum::<usize>()
            + self
                .instances
                .iter()
                .map(|i| i.breaking.len())
                .sum::<usize>()
    }
}

/// Field-level differences between two JSON values.
pub fn fields(old: &Value, new: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

fn walk(path: &str, old: &Value, new: &Value, out: &mut Vec<FieldChange>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => walk(&p, x, y, out),
                    (x, y) => out.push(FieldChange {
                        path: p,
                        old: x.cloned(),
                        new: y.cloned(),
                    }),
                }
            }
        }
        (a, b) if a != b => out.push(FieldChange {
            path: if path.is_empty() {
                "value".into()
            } else {
                path.to_string()
            },
            old: Some(a.clone()),
            new: Some(b.clone()),
        }),
        _ => {}
    }
}

fn keyed<T: Serialize>(items: impl IntoIterator<Item = (String, T)>) -> BTreeMap<String, Value> {
    items
        .into_iter()
        .map(|(k, v)| (k, serde_json::to_value(v).unwrap_or(Value::Null)))
        .collect()
}

fn compare(
    kind: &'static str,
    old: &BTreeMap<String, Value>,
    new: &BTreeMap<String, Value>,
    out: &mut Vec<Change>,
) {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let change = match (old.get(name), new.get(name)) {
            (None, Some(v)) => Change {
                kind,
                name: name.clone(),
                status: Status::Added,
                fields: fields(&Value::Null, v)
                    .into_iter()
                    .filter(|f| f.path != "value")
                    .collect(),
            },
            (Some(_), None) => Change {
                kind,
                name: name.clone(),
                status: Status::Removed,
                fields: Vec::new(),
            },
            (Some(a), Some(b)) if a != b => Change {
                kind,
                name: name.clone(),
                status: Status::Changed,
                fields: fields(a, b),
            },
            _ => continue,
        };
        out.push(change);
    }
}

fn customers(old: &[&Plan], new: &[&Plan]) -> Vec<String> {
    old.iter()
        .chain(new)
        .map(|p| p.customer.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn webhook_path(flow: &crate::plan::Flow) -> Option<&str> {
    match &flow.trigger {
        Trigger::Webhook { path, .. } => Some(path),
        _ => None,
    }
}

fn integration_diff(
    name: &str,
    old: Option<&CompiledIntegration>,
    new: Option<&CompiledIntegration>,
    old_plans: &[&Plan],
    new_plans: &[&Plan],
) -> Option<IntegrationDiff> {
    let whole = |status, breaking| IntegrationDiff {
        name: name.into(),
        status,
        customers: customers(old_plans, new_plans),
        changes: Vec::new(),
        breaking,
    };
    let (old, new) = match (old, new) {
        (None, None) => return None,
        (None, Some(_)) => return Some(whole(Status::Added, Vec::new())),
        (Some(_), None) => {
            let users: Vec<String> = old_plans.iter().map(|p| p.customer.clone()).collect();
            let breaking = if users.is_empty() {
                Vec::new()
            } else {
                vec![format!(
                    "integration removed while instances use it: {}",
                    users.join(", ")
                )]
            };
            return Some(whole(Status::Removed, breaking));
        }
        (Some(a), Some(b)) => (a, b),
    };
    let changes = changes(old, new);
    // Breaking changes: what breaks callers or existing instances.
    let mut breaking = removed_config_in_use(old, new, old_plans);
    breaking.extend(required_config_added(old, new, old_plans, new_plans));
    breaking.extend(moved_webhooks(old, new));
    if changes.is_empty() && breaking.is_empty() {
        return None;
    }
    Some(IntegrationDiff {
        changes,
        breaking,
        ..whole(Status::Changed, Vec::new())
    })
}

/// Config variables, connections, flows, triggers and steps added, removed or changed.
fn changes(old: &CompiledIntegration, new: &CompiledIntegration) -> Vec<Change> {
    let mut changes = Vec::new();
    compare(
        "config",
        &keyed(old.config.iter().map(|(k, v)| (k.clone(), v))),
        &keyed(new.config.iter().map(|(k, v)| (k.clone(), v))),
        &mut changes,
    );
    compare(
        "connection",
        &keyed(old.connections.clone()),
        &keyed(new.connections.clone()),
        &mut changes,
    );
    let flows = |c: &CompiledIntegration| {
        keyed(
            c.flows
                .iter()
                .map(|f| (f.name.clone(), serde_json::json!({ "enabled": f.enabled }))),
        )
    };
    compare("flow", &flows(old), &flows(new), &mut changes);
    let triggers =
        |c: &CompiledIntegration| keyed(c.flows.iter().map(|f| (f.name.clone(), &f.trigger)));
    compare("trigger", &triggers(old), &triggers(new), &mut changes);
    compare("step", &steps(old), &steps(new), &mut changes);
    changes
}

/// Every step by `<flow>/<id>`, without its queue, with where it sits in the graph.
fn steps(c: &CompiledIntegration) -> BTreeMap<String, Value> {
    keyed(c.flows.iter().flat_map(|f| {
        f.steps.iter().map(move |s| {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            if let Value::Object(m) = &mut v {
                m.remove("queue");
                // Where the step sits in the graph: its incoming edges.
                let from: Vec<Value> = f
                    .edges
                    .iter()
                    .filter(|e| e.to == s.id)
                    .map(|e| serde_json::json!({ "from": e.from, "kind": e.kind }))
                    .collect();
                m.insert("after".into(), Value::Array(from));
            }
            (format!("{}/{}", f.name, s.id), v)
        })
    }))
}

/// Config variables removed while instances set them.
fn removed_config_in_use(
    old: &CompiledIntegration,
    new: &CompiledIntegration,
    old_plans: &[&Plan],
) -> Vec<String> {
    let mut breaking = Vec::new();
    for (var, _) in old
        .config
        .iter()
        .filter(|(k, _)| !new.config.contains_key(*k))
    {
        let users: Vec<&str> = old_plans
            .iter()
            .filter(|p| p.config.contains_key(var))
            .map(|p| p.customer.as_str())
            .collect();
        if !users.is_empty() {
            breaking.push(format!(
                "config variable `{var}` removed; instances rely on it: {}",
                users.join(", ")
            ));
        }
    }
    breaking
}

/// Config variables that became required (no default) where instances do not set them.
fn required_config_added(
    old: &CompiledIntegration,
    new: &CompiledIntegration,
    old_plans: &[&Plan],
    new_plans: &[&Plan],
) -> Vec<String> {
    let mut breaking = Vec::new();
    for (var, _) in new.config.iter().filter(|(_, v)| v.default.is_none()) {
        let was_required = old.config.get(var).is_some_and(|o| o.default.is_none());
        if was_required {
            continue;
        }
        let affected: Vec<&str> = old_plans
            .iter()
            .map(|p| p.customer.as_str())
            .filter(|c| {
                !new_plans
                    .iter()
                    .any(|n| n.customer == *c && n.config.contains_key(var))
            })
            .collect();
        if !affected.is_empty() || old_plans.is_empty() {
            breaking.push(format!(
                "required config variable `{var}` added without a default{}",
                if affected.is_empty() {
                    String::new()
                } else {
                    format!("; missing for {}", affected.join(", "))
                }
            ));
        }
    }
    breaking
}

/// Webhook flows whose path moved, or that were removed: callers must change.
fn moved_webhooks(old: &CompiledIntegration, new: &CompiledIntegration) -> Vec<String> {
    let mut breaking = Vec::new();
    for f in &old.flows {
        let Some(old_path) = webhook_path(f) else {
            continue;
        };
        match new.flows.iter().find(|n| n.name == f.name) {
            Some(n) if webhook_path(n) != Some(old_path) => breaking.push(format!("webhook of flow `{}` moved from `{old_path}` to `{}`: callers must change their URL", f.name, webhook_path(n).unwrap_or("(no webhook)"))),
            None => breaking.push(format!("webhook flow `{}` (`{old_path}`) removed", f.name)),
            _ => {}
        }
    }
    breaking
}

/// The semantic diff between two compilations (base, head).
pub fn diff(old: &Compilation, new: &Compilation) -> RepoDiff {
    let mut out = RepoDiff::default();
    let names: BTreeSet<&String> = old
        .integrations
        .keys()
        .chain(new.integrations.keys())
        .collect();
    for name in names {
        let old_plans: Vec<&Plan> = old
            .plans
            .iter()
            .filter(|p| &p.integration == name)
            .collect();
        let new_plans: Vec<&Plan> = new
            .plans
            .iter()
            .filter(|p| &p.integration == name)
            .collect();
        if let Some(d) = integration_diff(
            name,
            old.integrations.get(name),
            new.integrations.get(name),
            &old_plans,
            &new_plans,
        ) {
            out.integrations.push(d);
        }
    }
    let key = |p: &Plan| (p.customer.clone(), p.integration.clone());
    let olds: BTreeMap<_, &Plan> = old.plans.iter().map(|p| (key(p), p)).collect();
    let news: BTreeMap<_, &Plan> = new.plans.iter().map(|p| (key(p), p)).collect();
    let keys: BTreeSet<_> = olds.keys().chain(news.keys()).cloned().collect();
    let same_project =
        serde_json::to_value(&old.project).ok() == serde_json::to_value(&new.project).ok();
    let (old_ports, new_ports) = (emit::host_ports(&old.plans), emit::host_ports(&new.plans));
    for k in keys {
        let (a, b) = (olds.get(&k), news.get(&k));
        if same_project && a.is_some() && a == b {
            continue; // same plan, same project: same compose file
        }
        let compose = |p: Option<&&Plan>, c: &Compilation, ports: &BTreeMap<String, u16>| {
            p.map(|p| emit::compose(p, &c.project, ports[&emit::bundle_dir(p)]))
                .unwrap_or_default()
        };
        let (ca, cb) = (compose(a, old, &old_ports), compose(b, new, &new_ports));
        let text = similar::TextDiff::from_lines(&ca, &cb)
            .unified_diff()
            .context_radius(2)
            .header("a/docker-compose.yaml", "b/docker-compose.yaml")
            .to_string();
        let view = |p: &Plan| {
            serde_json::json!({
                "config": p.config,
                "flows": p.flows.iter().map(|f| (f.name.clone(), f.enabled)).collect::<BTreeMap<_, _>>(),
                "version": p.version,
            })
        };
        let (status, fields) = match (a, b) {
            (None, Some(_)) => (Status::Added, Vec::new()),
            (Some(_), None) => (Status::Removed, Vec::new()),
            (Some(a), Some(b)) => (Status::Changed, fields(&view(a), &view(b))),
            (None, None) => continue,
        };
        let mut breaking = Vec::new();
        if let (Some(a), Some(b)) = (a, b) {
            for f in &a.flows {
                if let (Some(old_path), Some(n)) =
                    (webhook_path(f), b.flows.iter().find(|n| n.name == f.name))
                    && webhook_path(n) != Some(old_path)
                {
                    breaking.push(format!(
                        "webhook URL of `{}` changes: /hooks/{}/{}{old_path} → {}",
                        f.name,
                        a.customer,
                        a.integration,
                        webhook_path(n).map_or("(none)".into(), |p| format!(
                            "/hooks/{}/{}{p}",
                            b.customer, b.integration
                        ))
                    ));
                }
            }
        }
        if status == Status::Changed && fields.is_empty() && ca == cb && breaking.is_empty() {
            continue;
        }
        out.instances.push(InstanceDiff {
            customer: k.0,
            integration: k.1,
            status,
            fields,
            compose: text,
            breaking,
        });
    }
    out
}
