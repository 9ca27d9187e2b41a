//! One instance (customer × integration) made ready to run from its plan: config with secrets
//! filled in, connections rendered, every template compiled once, queues and poll triggers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use weft_plan::{self as plan, ConfigValue, Plan, Trigger};

use crate::error::{StartError, TemplateError};
use crate::metrics::StepLabels;
use crate::render::{self, Compiled, Renderer};
use crate::steps::{ActionCall, RenderedHttp};
use crate::triggers::{PollRt, ScheduleRt};

/// A step ready to run: its plan, compiled templates and outgoing edges.
pub struct StepRt {
    /// The flow the step belongs to.
    pub flow: String,
    pub step: plan::Step,
    pub with: Compiled,
    /// Branch conditions, in order.
    pub cases: Vec<Compiled>,
    pub action: Option<ActionRt>,
    pub edges: Vec<plan::Edge>,
    pub labels: StepLabels,
}

/// A component action with its `http` templates compiled.
pub struct ActionRt {
    pub component: String,
    pub action: String,
    pub http: Option<HttpRt>,
}

pub struct HttpRt {
    pub method: plan::HttpMethod,
    pub path: Compiled,
    pub query: Compiled,
    pub headers: Compiled,
    pub body: Option<Compiled>,
}

impl ActionRt {
    /// The request to send: the `http` templates rendered over `input` and `connection`.
    pub fn render(
        &self,
        input: &Value,
        connection: Option<&Map<String, Value>>,
    ) -> Result<ActionCall, TemplateError> {
        let http = match &self.http {
            Some(h) => {
                let ctx = render::context(&json!({ "input": input, "connection": connection }));
                let r = |c: &Compiled| render::render(c, &ctx);
                Some(RenderedHttp {
                    method: h.method,
                    path: r(&h.path)?.as_str().unwrap_or_default().to_string(),
                    query: r(&h.query)?.as_object().cloned().unwrap_or_default(),
                    headers: r(&h.headers)?.as_object().cloned().unwrap_or_default(),
                    body: h.body.as_ref().map(r).transpose()?,
                })
            }
            None => None,
        };
        Ok(ActionCall {
            component: self.component.clone(),
            action: self.action.clone(),
            http,
        })
    }
}

pub struct FlowRt {
    pub name: String,
    pub entry_queue: Option<String>,
    pub steps: HashMap<String, Arc<StepRt>>,
    /// The poll trigger, compiled (`None` for other triggers).
    pub poll: Option<Arc<PollRt>>,
    /// The schedule, parsed (`None` for other triggers).
    pub schedule: Option<Arc<ScheduleRt>>,
}

/// One instance (customer × integration) ready to run.
pub struct InstanceRt {
    pub key: String,
    pub plan: Plan,
    /// Config with secret values filled in from the environment.
    pub config: Value,
    /// `instance` as templates see it.
    pub instance_value: Value,
    /// `config` and `instance` converted for templates once.
    pub config_template: minijinja::Value,
    pub instance_template: minijinja::Value,
    /// Connection fields, rendered once at start (they read only `config`).
    pub connections: HashMap<String, Map<String, Value>>,
    pub connections_template: minijinja::Value,
    pub flows: HashMap<String, FlowRt>,
}

impl InstanceRt {
    /// Builds an instance from its plan: `secrets` holds every secret's value by name, and
    /// `public_url` is where callers reach the gateway (for `instance.flows[...].url`).
    pub fn build(
        plan: &Plan,
        renderer: &Renderer,
        secrets: &HashMap<String, String>,
        public_url: &str,
    ) -> Result<InstanceRt, StartError> {
        let key = plan.instance_key();
        let template_error = |part: String| {
            let instance = key.clone();
            move |source| StartError::Template {
                instance,
                part,
                source,
            }
        };
        let config = resolve_config(plan, secrets);
        let instance_value = instance_value(plan, public_url);
        let connections = render_connections(plan, renderer, &config)
            .map_err(|(name, e)| template_error(format!("connection `{name}`"))(e))?;
        let mut flows = HashMap::new();
        for flow in &plan.flows {
            let built = FlowBuilder {
                plan,
                renderer,
                key: &key,
            }
            .build(flow)?;
            flows.insert(flow.name.clone(), built);
        }
        let config = Value::Object(config);
        Ok(InstanceRt {
            key,
            plan: plan.clone(),
            config_template: render::context(&config),
            connections_template: render::context(
                &serde_json::to_value(&connections).unwrap_or_default(),
            ),
            instance_template: render::context(&instance_value),
            config,
            instance_value,
            connections,
            flows,
        })
    }

    /// The plan of flow `name` (one of the instance's flows).
    pub fn flow_plan(&self, name: &str) -> &plan::Flow {
        self.plan
            .flows
            .iter()
            .find(|f| f.name == name)
            .expect("a flow of the instance")
    }

    /// Every step of the instance's enabled flows.
    pub fn enabled_steps(&self) -> impl Iterator<Item = &Arc<StepRt>> {
        self.plan
            .flows
            .iter()
            .filter(|f| f.enabled)
            .flat_map(|f| self.flows[&f.name].steps.values())
    }
}

/// Config values, secrets read from `secrets`.
fn resolve_config(plan: &Plan, secrets: &HashMap<String, String>) -> Map<String, Value> {
    plan.config
        .iter()
        .map(|(k, v)| {
            let value = match v {
                ConfigValue::Secret { secret } => {
                    Value::String(secrets.get(secret).cloned().unwrap_or_default())
                }
                ConfigValue::Value(v) => v.clone(),
            };
            (k.clone(), value)
        })
        .collect()
}

/// `instance` as templates see it: names, version and each flow's webhook URL.
fn instance_value(plan: &Plan, public_url: &str) -> Value {
    let hooks_base = format!(
        "{}/hooks/{}/{}",
        public_url.trim_end_matches('/'),
        plan.customer,
        plan.integration
    );
    let flows: Map<String, Value> = plan
        .flows
        .iter()
        .map(|f| {
            let url = match &f.trigger {
                Trigger::Webhook { path, .. } => Value::String(format!("{hooks_base}{path}")),
                _ => Value::Null,
            };
            (f.name.clone(), json!({ "url": url, "enabled": f.enabled }))
        })
        .collect();
    json!({ "customer": plan.customer, "integration": plan.integration, "version": plan.version, "flows": flows })
}

/// Connection fields read only `config`: they are rendered once.
fn render_connections(
    plan: &Plan,
    renderer: &Renderer,
    config: &Map<String, Value>,
) -> Result<HashMap<String, Map<String, Value>>, (String, TemplateError)> {
    let ctx = render::context(&json!({ "config": config }));
    plan.connections
        .iter()
        .map(|(name, c)| {
            let fields = renderer
                .compile(&to_value(&c.with))
                .and_then(|compiled| render::render(&compiled, &ctx))
                .map_err(|e| (name.clone(), e))?;
            Ok((
                name.clone(),
                fields.as_object().cloned().unwrap_or_default(),
            ))
        })
        .collect()
}

fn to_value(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Compiles the steps and the poll trigger of one flow.
struct FlowBuilder<'a> {
    plan: &'a Plan,
    renderer: &'a Renderer,
    key: &'a str,
}

impl FlowBuilder<'_> {
    fn template_error(&self, part: String) -> impl FnOnce(TemplateError) -> StartError {
        let instance = self.key.to_string();
        move |source| StartError::Template {
            instance,
            part,
            source,
        }
    }

    fn build(&self, flow: &plan::Flow) -> Result<FlowRt, StartError> {
        let mut steps = HashMap::new();
        for step in &flow.steps {
            steps.insert(step.id.clone(), Arc::new(self.step(flow, step)?));
        }
        let poll = match &flow.trigger {
            Trigger::Poll { .. } => Some(Arc::new(self.poll(flow)?)),
            _ => None,
        };
        let schedule = match &flow.trigger {
            Trigger::Schedule { cron, timezone } => Some(Arc::new(
                ScheduleRt::new(cron, timezone).map_err(|message| StartError::Plan {
                    instance: self.key.to_string(),
                    message: format!("flow `{}`: {message}", flow.name),
                })?,
            )),
            _ => None,
        };
        Ok(FlowRt {
            name: flow.name.clone(),
            entry_queue: flow.entry_queue.clone(),
            steps,
            poll,
            schedule,
        })
    }

    fn step(&self, flow: &plan::Flow, step: &plan::Step) -> Result<StepRt, StartError> {
        let part = format!("{}.{}", flow.name, step.id);
        let cases = step
            .cases
            .iter()
            .map(|c| self.renderer.compile(&Value::String(c.when.clone())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.template_error(part.clone()))?;
        Ok(StepRt {
            flow: flow.name.clone(),
            with: self
                .renderer
                .compile(&to_value(&step.with))
                .map_err(self.template_error(part.clone()))?,
            cases,
            action: self.action(&step.uses)?,
            edges: flow
                .edges
                .iter()
                .filter(|e| e.from == step.id)
                .cloned()
                .collect(),
            labels: StepLabels {
                queue: step.queue.clone(),
            },
            step: step.clone(),
        })
    }

    fn poll(&self, flow: &plan::Flow) -> Result<PollRt, StartError> {
        let Trigger::Poll {
            every_ms,
            uses,
            connection,
            with,
            items,
            cursor,
        } = &flow.trigger
        else {
            unreachable!("called for poll triggers only");
        };
        let compile = |v: &Value| {
            self.renderer
                .compile(v)
                .map_err(self.template_error(format!("{} poll", flow.name)))
        };
        Ok(PollRt {
            every: Duration::from_millis(*every_ms),
            uses: uses.clone(),
            action: self.action(uses)?,
            connection: connection.clone(),
            with: compile(&to_value(with))?,
            items: items.as_ref().map(|t| compile(&json!(t))).transpose()?,
            cursor: cursor.as_ref().map(|t| compile(&json!(t))).transpose()?,
        })
    }

    /// A component action with its `http` templates compiled; `None` for built-in steps.
    fn action(&self, uses: &plan::Uses) -> Result<Option<ActionRt>, StartError> {
        let plan::Uses::Action { component, action } = uses else {
            return Ok(None);
        };
        let spec = self
            .plan
            .components
            .get(component)
            .and_then(|c| c.actions.get(action))
            .ok_or_else(|| StartError::Plan {
                instance: self.key.to_string(),
                message: format!("no action `{uses}` among the plan's components"),
            })?;
        let http = match &spec.http {
            Some(h) => Some(
                self.http(h)
                    .map_err(self.template_error(uses.to_string()))?,
            ),
            None => None,
        };
        Ok(Some(ActionRt {
            component: component.clone(),
            action: action.clone(),
            http,
        }))
    }

    fn http(&self, h: &plan::HttpCall) -> Result<HttpRt, TemplateError> {
        Ok(HttpRt {
            method: h.method,
            path: self.renderer.compile(&json!(h.path))?,
            query: self.renderer.compile(&to_value(&h.query))?,
            headers: self.renderer.compile(&to_value(&h.headers))?,
            body: h
                .body
                .as_ref()
                .map(|b| self.renderer.compile(b))
                .transpose()?,
        })
    }
}
