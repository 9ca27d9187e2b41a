//! Which secrets each trigger and each step of a plan reads, so that a container gets only the
//! secrets it needs.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::plan::{self, ConfigValue, Plan};
use crate::template;

/// Records on the plan which secrets each trigger and each step reads.
pub(super) fn record_secrets(plan: &mut Plan) {
    let mut flows = std::mem::take(&mut plan.flows);
    for flow in &mut flows {
        flow.trigger_secrets = trigger_secrets(plan, &flow.trigger).into_iter().collect();
        for step in &mut flow.steps {
            step.secrets = step_secrets(plan, step).into_iter().collect();
        }
    }
    plan.flows = flows;
}

/// The secrets a trigger needs: those its webhook auth, or its poll and that poll's connection,
/// read.
fn trigger_secrets(plan: &Plan, trigger: &plan::Trigger) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    match trigger {
        plan::Trigger::Webhook {
            auth: Some(auth), ..
        } => secrets_read(&Value::from(auth.secret_template()), plan, &mut out),
        plan::Trigger::Poll {
            with, connection, ..
        } => {
            for v in with.values() {
                secrets_read(v, plan, &mut out);
            }
            if let Some(conn) = connection.as_ref().and_then(|c| plan.connections.get(c)) {
                for v in conn.with.values() {
                    secrets_read(v, plan, &mut out);
                }
            }
        }
        _ => {}
    }
    out
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

/// The secret environment variables a value's templates read (through `config.<secret>`).
fn secrets_read(value: &Value, plan: &Plan, out: &mut BTreeSet<String>) {
    match value {
        Value::String(s) if template::is_template(s) => {
            if let Ok(refs) = template::references(s) {
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
