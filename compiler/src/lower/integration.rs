//! A checked integration lowered: its connections, the components its steps use, and its flows
//! as plan types, with the step graphs kept for `weft graph`.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde_json::Value;

use super::flow::{lower_flow, lower_method};
use crate::check::{CheckedIntegration, UsedComponent};
use crate::graph::StepGraph;
use crate::instance::Target;
use crate::model::{self, ConfigVar, StepDefaults};
use crate::plan;
use crate::template::is_template;

/// An integration that passed every check, ready to be instantiated per customer.
#[derive(Debug, Clone)]
pub struct CompiledIntegration {
    pub name: String,
    pub config: IndexMap<String, ConfigVar>,
    pub connections: BTreeMap<String, plan::Connection>,
    pub components: BTreeMap<String, plan::Component>,
    /// Plan flows with queue names relative to the instance (`<flow>.<step>`).
    pub flows: Vec<plan::Flow>,
    pub graphs: Vec<(String, StepGraph)>,
    /// `when` of each branch case, per flow and branch step, for graph labels.
    pub cases: BTreeMap<(String, String), Vec<String>>,
}

impl CompiledIntegration {
    /// `sha256:…` of what the integration compiles to, independent of comments, formatting,
    /// key order and flow order: what `weft publish` compares to decide on a new version.
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut flows: Vec<&plan::Flow> = self.flows.iter().collect();
        flows.sort_by(|a, b| a.name.cmp(&b.name));
        let value = serde_json::json!({
            "config": self.config,
            "connections": self.connections,
            "components": self.components,
            "flows": flows,
        });
        let bytes = serde_json::to_vec(&canonical(value)).unwrap_or_default();
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
    }

    /// What an instance of this integration is checked against.
    pub fn target(&self) -> Target<'_> {
        Target {
            name: &self.name,
            config: &self.config,
            flows: self.flows.iter().map(|f| f.name.as_str()).collect(),
            steps: {
                let mut steps: Vec<&str> = self
                    .flows
                    .iter()
                    .flat_map(|f| f.steps.iter().map(|s| s.id.as_str()))
                    .collect();
                steps.sort_unstable();
                steps.dedup();
                steps
            },
            fused_steps: self
                .flows
                .iter()
                .flat_map(|f| f.steps.iter().filter(|s| s.fused).map(|s| s.id.as_str()))
                .collect(),
            schedules: self
                .flows
                .iter()
                .filter_map(|f| match &f.trigger {
                    plan::Trigger::Schedule { cron, .. } if is_template(cron) => {
                        Some((f.name.as_str(), cron.as_str()))
                    }
                    _ => None,
                })
                .collect(),
        }
    }
}

/// A JSON value with every object's keys sorted.
fn canonical(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> =
                map.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// Lowers a checked integration; `defaults` are the project's step defaults.
pub fn integration(
    checked: CheckedIntegration<'_>,
    defaults: &StepDefaults,
) -> CompiledIntegration {
    let m = checked.model;
    let mut flows = Vec::new();
    let mut graphs = Vec::new();
    for flow in checked.flows {
        let name = flow.name.to_string();
        let (plan_flow, graph) = lower_flow(flow, defaults);
        flows.push(plan_flow);
        graphs.push((name, graph));
    }
    CompiledIntegration {
        name: m.name.0.clone(),
        config: m.config.clone(),
        connections: lower_connections(&m.connections),
        components: lower_components(&checked.components_used),
        flows,
        graphs,
        cases: checked.cases,
    }
}

fn lower_connections(
    connections: &IndexMap<String, model::Connection>,
) -> BTreeMap<String, plan::Connection> {
    connections
        .iter()
        .map(|(name, conn)| {
            let lowered = plan::Connection {
                component: conn.component.clone(),
                auth: lower_auth_kind(&conn.auth),
                with: conn.with.clone().into_iter().collect(),
            };
            (name.clone(), lowered)
        })
        .collect()
}

/// A connection's auth kind; an unknown kind has been reported against the component.
fn lower_auth_kind(kind: &str) -> plan::AuthKind {
    match kind {
        "bearer" => plan::AuthKind::Bearer,
        "basic" => plan::AuthKind::Basic,
        "api_key" => plan::AuthKind::ApiKey,
        _ => plan::AuthKind::None,
    }
}

/// The components the steps use, each with only the actions they call.
fn lower_components(
    used: &BTreeMap<String, UsedComponent<'_>>,
) -> BTreeMap<String, plan::Component> {
    used.iter()
        .map(|(name, used)| {
            let c = used.model;
            let actions = used
                .actions
                .iter()
                .filter_map(|a| Some((a.clone(), lower_action(c.actions.get(a)?))))
                .collect();
            let component = plan::Component {
                version: c.version.clone(),
                base_url: c.base_url.clone(),
                image: c.image.clone(),
                actions,
            };
            (name.clone(), component)
        })
        .collect()
}

fn lower_action(action: &model::Action) -> plan::Action {
    plan::Action {
        http: action.http.as_ref().map(|h| plan::HttpCall {
            method: lower_method(h.method),
            path: h.path.clone(),
            query: h.query.clone().into_iter().collect(),
            headers: h.headers.clone().into_iter().collect(),
            body: h.body.clone(),
        }),
        input: action.input.clone(),
    }
}
