//! One instance (customer × integration) made ready to run from its plan: config with secrets
//! filled in, connections rendered, every template compiled once, queues and poll triggers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rayon::prelude::*;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use weft_plan::{self as plan, ConfigValue, Plan, Trigger};

use crate::error::{StartError, TemplateError};
use crate::render::{self, Compiled, Renderer};
use crate::steps::{ActionCall, RenderedHttp};
use crate::triggers::{PollRt, ScheduleRt};

/// A step ready to run: its plan, compiled templates and outgoing edges. Shared by every
/// instance of its integration version; what differs per instance (its queue, its config)
/// comes from the [`InstanceRt`] it runs for.
pub struct StepRt {
    /// The flow the step belongs to.
    pub flow: String,
    /// The step's plan, its queue relative to the instance (see [`InstanceRt::queue_of`]).
    pub step: plan::Step,
    pub with: Compiled,
    /// Branch conditions, in order.
    pub cases: Vec<Compiled>,
    pub action: Option<ActionRt>,
    pub edges: Vec<plan::Edge>,
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

/// One flow of an integration version, compiled.
pub struct FlowRt {
    pub name: String,
    /// The first step (`None` for a flow without steps).
    pub entry: Option<Arc<StepRt>>,
    pub steps: HashMap<String, Arc<StepRt>>,
    /// The poll trigger, compiled (`None` for other triggers).
    pub poll: Option<Arc<PollRt>>,
    /// The schedule, parsed (`None` for other triggers).
    pub schedule: Option<Arc<ScheduleRt>>,
    /// The webhook's auth secret template (`None` for other triggers and open webhooks).
    pub webhook_secret: Option<Compiled>,
}

/// What every instance of one integration version shares: its plan without what differs per
/// instance, and every template compiled once. Instances whose plans differ only in customer,
/// config, secret names, queue names and enabled flows share one.
pub struct VersionRt {
    /// The plan with no customer, config or secret names, queues relative to the instance
    /// (`<flow>.<step>`) and every flow enabled: read those from the [`InstanceRt`].
    pub plan: Plan,
    pub flows: HashMap<String, FlowRt>,
}

impl VersionRt {
    /// Compiles a version from its first instance's plan, with `shared` its [`shared_part`].
    fn build(
        plan: &Plan,
        shared: Plan,
        renderer: &Renderer,
        key: &str,
    ) -> Result<VersionRt, StartError> {
        let mut flows = HashMap::new();
        for flow in &shared.flows {
            let built = FlowBuilder {
                plan,
                renderer,
                key,
            }
            .build(flow)?;
            flows.insert(flow.name.clone(), built);
        }
        Ok(VersionRt {
            plan: shared,
            flows,
        })
    }
}

/// Instances by `<customer>/<integration>`.
pub type InstanceMap = HashMap<String, Arc<InstanceRt>>;

/// The integration versions built so far, by [`VersionKey`] digest: instances added later (a
/// reload) share them.
pub type Versions = HashMap<[u8; 32], Arc<VersionRt>>;

/// Builds every instance, compiling each integration version once for all its instances
/// (and not at all when `versions` has it already; new versions are added there); returns
/// them in the order of `plans`. The work is spread over every core: a fleet has thousands of
/// instances. `secrets` holds every secret's value by name, and `public_url` is where callers
/// reach the gateway (for `instance.flows[...].url`). Of several errors, the first plan's is
/// returned.
pub fn build_instances(
    plans: &[Plan],
    renderer: &Renderer,
    secrets: &HashMap<String, String>,
    public_url: &str,
    versions: &mut Versions,
) -> Result<Vec<InstanceRt>, StartError> {
    let keyed: Vec<(String, [u8; 32])> = plans
        .par_iter()
        .map(|plan| {
            let (flows, prefix) = shared_flows(plan);
            (prefix, VersionKey::of(plan, &flows).digest())
        })
        .collect();
    // Each version is compiled from its first instance's plan.
    let mut first: HashMap<[u8; 32], usize> = HashMap::new();
    for (i, (_, digest)) in keyed.iter().enumerate() {
        if !versions.contains_key(digest) {
            first.entry(*digest).or_insert(i);
        }
    }
    let mut firsts: Vec<usize> = first.into_values().collect();
    firsts.sort_unstable();
    let built: Vec<([u8; 32], Arc<VersionRt>)> = firsts
        .par_iter()
        .map(|&i| {
            let plan = &plans[i];
            let shared = shared_plan(plan, shared_flows(plan).0);
            let version = VersionRt::build(plan, shared, renderer, &plan.instance_key())?;
            Ok((keyed[i].1, Arc::new(version)))
        })
        .collect::<Vec<Result<_, StartError>>>()
        .into_iter()
        .collect::<Result<_, _>>()?;
    versions.extend(built);
    let versions = &*versions;
    plans
        .par_iter()
        .zip(keyed.into_par_iter())
        .map(|(plan, (prefix, digest))| {
            InstanceRt::build(
                plan,
                versions[&digest].clone(),
                prefix,
                renderer,
                secrets,
                public_url,
            )
        })
        .collect::<Vec<_>>()
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
}

impl InstanceRt {
    /// The instance of `plan`, of integration version `version`.
    fn build(
        plan: &Plan,
        version: Arc<VersionRt>,
        queue_prefix: String,
        renderer: &Renderer,
        secrets: &HashMap<String, String>,
        public_url: &str,
    ) -> Result<InstanceRt, StartError> {
        let key = plan.instance_key();
        let config = resolve_config(plan, secrets);
        let instance_value = instance_value(plan, public_url);
        let connections = render_connections(plan, renderer, &config).map_err(|(name, e)| {
            StartError::Template {
                instance: key.clone(),
                part: format!("connection `{name}`"),
                source: e,
            }
        })?;
        let enabled = plan.flows.iter().map(|f| f.enabled).collect();
        let deploy_hash = plan
            .flows
            .iter()
            .any(|f| matches!(f.trigger, Trigger::Deploy))
            .then(|| hex::encode(Sha256::digest(serde_json::to_vec(plan).unwrap_or_default())));
        let config = Value::Object(config);
        Ok(InstanceRt {
            key,
            customer: plan.customer.clone(),
            version,
            queue_prefix,
            enabled,
            deploy_hash,
            config_template: render::context(&config),
            connections_template: render::context(
                &serde_json::to_value(&connections).unwrap_or_default(),
            ),
            instance_template: render::context(&instance_value),
            config,
            instance_value,
            connections,
            pending: Arc::default(),
            retired: AtomicBool::new(false),
        })
    }
}

/// The flows of a plan as every instance of its integration version has them, and the prefix
/// that makes their relative queue names the instance's: every flow enabled, no secret names,
/// queues relative. A plan whose queues do not start with the usual prefix keeps them whole
/// (and so shares its version with no other instance).
fn shared_flows(plan: &Plan) -> (Vec<plan::Flow>, String) {
    let prefix = format!("weft.{}.{}.", plan.customer, plan.integration);
    let relative = |q: &str| q.strip_prefix(&prefix).map(str::to_string);
    let all_prefixed = plan.flows.iter().all(|f| {
        f.entry_queue
            .as_deref()
            .is_none_or(|q| relative(q).is_some())
            && f.steps.iter().all(|s| relative(&s.queue).is_some())
            && f.edges.iter().all(|e| relative(&e.queue).is_some())
    });
    let mut flows = plan.flows.clone();
    for flow in &mut flows {
        flow.enabled = true;
        flow.trigger_secrets.clear();
        for step in &mut flow.steps {
            step.secrets.clear();
        }
        if all_prefixed {
            flow.entry_queue = flow.entry_queue.as_deref().and_then(relative);
            for step in &mut flow.steps {
                step.queue = relative(&step.queue).unwrap_or_default();
            }
            for edge in &mut flow.edges {
                edge.queue = relative(&edge.queue).unwrap_or_default();
            }
        }
    }
    (flows, if all_prefixed { prefix } else { String::new() })
}

/// What identifies a plan's integration version: the plan but its customer, config and secret
/// names, with its flows as [`shared_flows`] makes them. Plans with the same key share one
/// [`VersionRt`].
#[derive(serde::Serialize)]
struct VersionKey<'a> {
    format: u32,
    integration: &'a str,
    version: &'a str,
    commit: &'a Option<String>,
    connections: &'a std::collections::BTreeMap<String, plan::Connection>,
    components: &'a std::collections::BTreeMap<String, plan::Component>,
    flows: &'a [plan::Flow],
    policy: &'a plan::Policy,
    runtime: &'a plan::RuntimeSettings,
}

impl<'a> VersionKey<'a> {
    fn of(plan: &'a Plan, flows: &'a [plan::Flow]) -> VersionKey<'a> {
        // Every field named: a field added to plans must be placed here, in the key or not.
        let Plan {
            format,
            integration,
            customer: _,
            version,
            commit,
            config: _,
            connections,
            components,
            flows: _,
            secrets: _,
            policy,
            runtime,
        } = plan;
        VersionKey {
            format: *format,
            integration,
            version,
            commit,
            connections,
            components,
            flows,
            policy,
            runtime,
        }
    }

    /// The key's SHA-256, streamed (nothing the size of the plan is built).
    fn digest(&self) -> [u8; 32] {
        struct Hashing(Sha256);
        impl std::io::Write for Hashing {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.update(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut hashing = Hashing(Sha256::new());
        serde_json::to_writer(&mut hashing, self).expect("plans serialize");
        hashing.0.finalize().into()
    }
}

/// The plan shared by the instances of `plan`'s version (see [`VersionRt::plan`]).
fn shared_plan(plan: &Plan, flows: Vec<plan::Flow>) -> Plan {
    Plan {
        format: plan.format,
        integration: plan.integration.clone(),
        customer: String::new(),
        version: plan.version.clone(),
        commit: plan.commit.clone(),
        config: Default::default(),
        connections: plan.connections.clone(),
        components: plan.components.clone(),
        flows,
        secrets: Vec::new(),
        policy: plan.policy.clone(),
        runtime: plan.runtime.clone(),
    }
}

/// One instance (customer × integration) ready to run: its integration version (shared) and
/// what is its own.
pub struct InstanceRt {
    pub key: String,
    pub customer: String,
    pub version: Arc<VersionRt>,
    /// Prefixed to the version's relative queue names.
    queue_prefix: String,
    /// Whether the instance runs each of the version's flows, in the plan's order.
    enabled: Vec<bool>,
    /// The hash of the instance's whole plan, when it has a deploy flow (it runs once per hash).
    pub deploy_hash: Option<String>,
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
    /// The instance's messages waiting or in flight (the gateway's per-instance backpressure).
    pub pending: Arc<AtomicUsize>,
    /// Set when a reload removed or replaced the instance: it takes no new work (no webhook,
    /// timer or broker fetch), and what it had queued runs to its end.
    retired: AtomicBool,
}

impl InstanceRt {
    /// Takes the instance out of service (see [`InstanceRt::is_retired`]).
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `other` (the same instance built again, by a reload) runs exactly like this
    /// one: the same version and the same config, secrets, connections and enabled flows.
    pub fn same_as(&self, other: &InstanceRt) -> bool {
        Arc::ptr_eq(&self.version, &other.version)
            && self.key == other.key
            && self.queue_prefix == other.queue_prefix
            && self.enabled == other.enabled
            && self.deploy_hash == other.deploy_hash
            && self.config == other.config
            && self.instance_value == other.instance_value
            && self.connections == other.connections
    }

    /// Whether a reload removed or replaced the instance.
    pub fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The integration's name.
    pub fn integration(&self) -> &str {
        &self.version.plan.integration
    }

    /// The plan shared by the instance's version (see [`VersionRt::plan`]).
    pub fn plan(&self) -> &Plan {
        &self.version.plan
    }

    /// The compiled flow `name`.
    pub fn flow(&self, name: &str) -> Option<&FlowRt> {
        self.version.flows.get(name)
    }

    /// The plan of flow `name` (one of the instance's flows).
    pub fn flow_plan(&self, name: &str) -> &plan::Flow {
        self.version
            .plan
            .flows
            .iter()
            .find(|f| f.name == name)
            .expect("a flow of the instance")
    }

    /// The version's flows with whether this instance runs each.
    pub fn flows(&self) -> impl Iterator<Item = (&plan::Flow, bool)> {
        self.version
            .plan
            .flows
            .iter()
            .zip(self.enabled.iter().copied())
    }

    /// The flows this instance runs.
    pub fn enabled_flows(&self) -> impl Iterator<Item = &plan::Flow> {
        self.flows().filter(|(_, on)| *on).map(|(f, _)| f)
    }

    /// The instance's queue of `step`.
    pub fn queue_of(&self, step: &StepRt) -> String {
        format!("{}{}", self.queue_prefix, step.step.queue)
    }

    /// Every step of the instance's enabled flows.
    pub fn enabled_steps(&self) -> impl Iterator<Item = &Arc<StepRt>> {
        self.enabled_flows()
            .flat_map(|f| self.version.flows[&f.name].steps.values())
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
        let entry = flow
            .entry_queue
            .as_ref()
            .and_then(|queue| steps.values().find(|s| &s.step.queue == queue))
            .cloned();
        let webhook_secret = match &flow.trigger {
            Trigger::Webhook {
                auth: Some(auth), ..
            } => Some(
                self.renderer
                    .compile(&json!(auth.secret_template()))
                    .map_err(self.template_error(format!("{} webhook auth", flow.name)))?,
            ),
            _ => None,
        };
        Ok(FlowRt {
            name: flow.name.clone(),
            entry,
            steps,
            poll,
            schedule,
            webhook_secret,
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
