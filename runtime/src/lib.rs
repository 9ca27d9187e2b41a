//! weft's runtime: executes compiled plans on a durable queue, in one process.
//!
//! [`start`] resolves secrets, compiles every template, opens the store ([`store`]), reloads
//! what was in flight, and starts one worker loop per step ([`engine`]), the schedules, polls and
//! deploy flows ([`triggers`]). [`serve`] runs the webhook gateway ([`gateway`]) until Ctrl-C or
//! SIGTERM, then drains in-flight work within a deadline.

pub mod auth;
pub mod engine;
pub mod gateway;
pub mod history;
pub mod http;
pub mod metrics;
pub mod redact;
pub mod render;
pub mod steps;
pub mod store;
pub mod triggers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use weft_plan::{self as plan, ConfigValue, Plan, Trigger};

use crate::engine::{ActionRt, Dispatch, Engine, FlowRt, HttpRt, InstanceRt, StepRt, WorkQueue};
use crate::gateway::{GatewayState, Hook};
use crate::metrics::{Metrics, StepLabels};
use crate::redact::Redactor;
use crate::render::Renderer;
use crate::store::{Op, Store};

/// Runtime knobs (flags of `weft run`); what flows mean lives in the plans.
#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Base URL the outside world reaches the gateway at (for `instance.flows[...].url`).
    pub public_url: String,
    pub max_body: usize,
    pub deny_private: bool,
    /// Messages a step works on at once (replicas × this in the embedded runtime).
    pub step_concurrency: usize,
    pub max_pending: usize,
    pub drain_timeout: Duration,
    pub keep_executions: i64,
    pub keep_days: i64,
    /// Base URLs of custom components (`image:`), by component name.
    pub component_urls: HashMap<String, String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            data_dir: PathBuf::from(".weft"),
            listen: "127.0.0.1:8080".parse().expect("address"),
            public_url: "http://127.0.0.1:8080".into(),
            max_body: 10 * 1024 * 1024,
            deny_private: false,
            step_concurrency: 64,
            max_pending: 200_000,
            drain_timeout: Duration::from_secs(10),
            keep_executions: 10_000,
            keep_days: 7,
            component_urls: HashMap::new(),
        }
    }
}

/// A started runtime.
pub struct Runtime {
    pub engine: Arc<Engine>,
    /// Held for the life of the runtime: the data folder's lock.
    pub lock: Arc<std::fs::File>,
    pub gateway: Arc<GatewayState>,
    pub options: Options,
}

/// Resolves every plan's secrets from the environment: all missing names are reported at once,
/// and nothing starts half-configured.
pub fn resolve_secrets(
    plans: &[Plan],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<HashMap<String, String>, String> {
    let mut values = HashMap::new();
    let mut missing = Vec::new();
    for plan in plans {
        for name in &plan.secrets {
            match lookup(name) {
                Some(v) if !v.is_empty() => {
                    values.insert(name.clone(), v);
                }
                _ => missing.push(format!(
                    "{name} (for {}/{})",
                    plan.customer, plan.integration
                )),
            }
        }
    }
    if missing.is_empty() {
        Ok(values)
    } else {
        missing.sort();
        missing.dedup();
        Err(format!(
            "missing secret environment variable{}: {}",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", ")
        ))
    }
}

fn compile_http(renderer: &Renderer, h: &plan::HttpCall) -> Result<HttpRt, String> {
    Ok(HttpRt {
        method: h.method,
        path: renderer.compile(&json!(h.path))?,
        query: renderer.compile(&serde_json::to_value(&h.query).map_err(|e| e.to_string())?)?,
        headers: renderer.compile(&serde_json::to_value(&h.headers).map_err(|e| e.to_string())?)?,
        body: h.body.as_ref().map(|b| renderer.compile(b)).transpose()?,
    })
}

/// A component action (`component.action`) with its `http` templates compiled; `None` for
/// built-in steps.
fn compile_action(
    renderer: &Renderer,
    plan: &Plan,
    uses: &plan::Uses,
) -> Result<Option<ActionRt>, String> {
    let plan::Uses::Action { component, action } = uses else {
        return Ok(None);
    };
    let spec = plan
        .components
        .get(component)
        .ok_or_else(|| format!("no component {component}"))?
        .actions
        .get(action)
        .ok_or_else(|| format!("no action {uses}"))?;
    Ok(Some(ActionRt {
        component: component.to_string(),
        action: action.to_string(),
        http: spec
            .http
            .as_ref()
            .map(|h| compile_http(renderer, h))
            .transpose()?,
    }))
}

fn plan_hash(plan: &Plan) -> String {
    let bytes = serde_json::to_vec(plan).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Starts the runtime: everything but the HTTP listener.
pub async fn start(
    plans: Vec<Plan>,
    options: Options,
    secrets: HashMap<String, String>,
) -> Result<Runtime, String> {
    let renderer = Renderer::new();
    let redactor = Redactor::new(secrets.values().cloned());
    let mut instances: HashMap<String, Arc<InstanceRt>> = HashMap::new();
    let mut queues: HashMap<String, Arc<WorkQueue>> = HashMap::new();
    let mut polls = Vec::new();
    for plan in &plans {
        let key = format!("{}/{}", plan.customer, plan.integration);
        let config: Map<String, Value> = plan
            .config
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
            .collect();
        let hooks_base = format!(
            "{}/hooks/{}/{}",
            options.public_url.trim_end_matches('/'),
            plan.customer,
            plan.integration
        );
        let flow_urls: Map<String, Value> = plan
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
        let instance_value = json!({ "customer": plan.customer, "integration": plan.integration, "version": plan.version, "flows": flow_urls });
        // Connection fields read only `config`: render them once.
        let config_ctx = render::context(&json!({ "config": Value::Object(config.clone()) }));
        let mut connections = HashMap::new();
        for (name, c) in &plan.connections {
            let compiled =
                renderer.compile(&serde_json::to_value(&c.with).map_err(|e| e.to_string())?)?;
            let fields = render::render(&compiled, &config_ctx)
                .map_err(|e| format!("{key}: connection `{name}`: {e}"))?;
            connections.insert(
                name.clone(),
                fields.as_object().cloned().unwrap_or_default(),
            );
        }
        let mut flows = HashMap::new();
        for flow in &plan.flows {
            let mut steps = HashMap::new();
            for step in &flow.steps {
                let with_value = serde_json::to_value(&step.with).map_err(|e| e.to_string())?;
                let cases = step
                    .cases
                    .iter()
                    .map(|c| renderer.compile(&Value::String(c.when.clone())))
                    .collect::<Result<Vec<_>, _>>()?;
                let action = compile_action(&renderer, plan, &step.uses)
                    .map_err(|e| format!("{key}: {e}"))?;
                let edges = flow
                    .edges
                    .iter()
                    .filter(|e| e.from == step.id)
                    .cloned()
                    .collect();
                queues.insert(step.queue.clone(), Arc::new(WorkQueue::default()));
                steps.insert(
                    step.id.clone(),
                    Arc::new(StepRt {
                        with: renderer
                            .compile(&with_value)
                            .map_err(|e| format!("{key} {}.{}: {e}", flow.name, step.id))?,
                        cases,
                        action,
                        edges,
                        labels: StepLabels {
                            queue: step.queue.clone(),
                        },
                        step: step.clone(),
                    }),
                );
            }
            if let Trigger::Poll {
                every_ms,
                uses,
                connection,
                with,
                items,
                cursor,
            } = &flow.trigger
            {
                polls.push((
                    key.clone(),
                    flow.name.clone(),
                    triggers::PollRt {
                        every: Duration::from_millis(*every_ms),
                        uses: uses.clone(),
                        action: compile_action(&renderer, plan, uses)
                            .map_err(|e| format!("{key}: {e}"))?,
                        connection: connection.clone(),
                        with: renderer
                            .compile(&serde_json::to_value(with).map_err(|e| e.to_string())?)?,
                        items: items
                            .as_ref()
                            .map(|t| renderer.compile(&json!(t)))
                            .transpose()?,
                        cursor: cursor
                            .as_ref()
                            .map(|t| renderer.compile(&json!(t)))
                            .transpose()?,
                    },
                ));
            }
            flows.insert(
                flow.name.clone(),
                FlowRt {
                    name: flow.name.clone(),
                    entry_queue: flow.entry_queue.clone(),
                    steps,
                },
            );
        }
        let config = Value::Object(config);
        instances.insert(
            key.clone(),
            Arc::new(InstanceRt {
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
            }),
        );
    }

    std::fs::create_dir_all(&options.data_dir)
        .map_err(|e| format!("creating {}: {e}", options.data_dir.display()))?;
    // One process per data folder: two would both run the same messages.
    let lock_path = options.data_dir.join("weft.lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| format!("creating {}: {e}", lock_path.display()))?;
    lock.try_lock().map_err(|_| {
        format!(
            "another `weft run` is using {}; give this one its own --data-dir",
            options.data_dir.display()
        )
    })?;
    let dispatch = Arc::new(Dispatch::new(
        queues.clone(),
        tokio::runtime::Handle::current(),
    ));
    let on_commit = {
        let dispatch = dispatch.clone();
        Box::new(move |messages: &[store::StoredMessage]| dispatch.deliver(messages))
    };
    let store = Store::open(&options.data_dir.join("weft.db"), on_commit)?;
    let engine = Arc::new(Engine {
        store: Arc::new(store.clone()),
        dispatch: dispatch.clone(),
        instances: instances.clone(),
        renderer,
        http: http::client(options.deny_private),
        deny_private: options.deny_private,
        component_urls: options.component_urls.clone(),
        redactor,
        metrics: Metrics::new(),
        waiters: Default::default(),
        stopping: Default::default(),
        in_flight: Default::default(),
        idle: Default::default(),
    });

    // What was in flight at the last stop runs again (at-least-once).
    let pending = store.pending_messages()?;
    if !pending.is_empty() {
        tracing::info!(
            "resuming {} message(s) from {}",
            pending.len(),
            options.data_dir.display()
        );
    }
    dispatch.deliver(&pending);

    for instance in instances.values() {
        for flow in &instance.plan.flows {
            if !flow.enabled {
                continue;
            }
            let rt = &instance.flows[&flow.name];
            for step in rt.steps.values() {
                let queue = queues[&step.step.queue].clone();
                let concurrency = options.step_concurrency * step.step.replicas.max(1) as usize;
                tokio::spawn(engine.clone().worker(
                    instance.clone(),
                    step.clone(),
                    queue,
                    concurrency,
                ));
            }
            match &flow.trigger {
                Trigger::Schedule { cron, timezone } => {
                    tokio::spawn(triggers::schedule(
                        engine.clone(),
                        instance.clone(),
                        flow.name.clone(),
                        cron.clone(),
                        timezone.clone(),
                    ));
                }
                Trigger::Deploy => {
                    tokio::spawn(triggers::deploy(
                        engine.clone(),
                        instance.clone(),
                        flow.name.clone(),
                        plan_hash(&instance.plan),
                    ));
                }
                _ => {}
            }
        }
    }
    for (key, flow, poll) in polls {
        let instance = instances[&key].clone();
        if instance
            .plan
            .flows
            .iter()
            .any(|f| f.name == flow && f.enabled)
        {
            tokio::spawn(triggers::poll(engine.clone(), instance, flow, poll));
        }
    }
    tokio::spawn(watch_store(engine.clone()));
    tokio::spawn(prune(
        engine.clone(),
        options.keep_executions,
        options.keep_days,
    ));

    let mut hooks = HashMap::new();
    for instance in instances.values() {
        for flow in &instance.plan.flows {
            if let Trigger::Webhook {
                method,
                path,
                auth,
                respond,
                timeout_ms,
            } = &flow.trigger
            {
                let ctx = render::context(&json!({ "config": instance.config }));
                let secret = |t: &str| -> Result<String, String> {
                    let v = render::render(&engine.renderer.compile(&json!(t))?, &ctx)?;
                    Ok(v.as_str().map_or_else(|| v.to_string(), str::to_string))
                };
                let auth = match auth {
                    None => auth::WebhookAuth::None,
                    Some(plan::WebhookAuth::HmacSha256 { secret: s, header }) => {
                        auth::WebhookAuth::Hmac {
                            secret: secret(s)?.into_bytes(),
                            header: header.clone(),
                        }
                    }
                    Some(plan::WebhookAuth::StandardWebhooks { secret: s }) => {
                        auth::WebhookAuth::Standard {
                            key: auth::standard_key(&secret(s)?),
                        }
                    }
                    Some(plan::WebhookAuth::Bearer { token }) => auth::WebhookAuth::Bearer {
                        token: secret(token)?.into_bytes(),
                    },
                };
                let method = serde_json::to_value(method)
                    .ok()
                    .and_then(|m| m.as_str().and_then(|m| m.parse().ok()))
                    .unwrap_or(axum::http::Method::POST);
                hooks.insert(
                    (
                        instance.plan.customer.clone(),
                        instance.plan.integration.clone(),
                        path.clone(),
                    ),
                    Hook {
                        instance: instance.clone(),
                        flow: flow.name.clone(),
                        method,
                        auth,
                        respond: *respond,
                        timeout: Duration::from_millis(*timeout_ms),
                        enabled: flow.enabled,
                    },
                );
            }
        }
    }
    let gateway = Arc::new(GatewayState {
        engine: engine.clone(),
        hooks,
        max_pending: options.max_pending,
        max_body: options.max_body,
    });
    Ok(Runtime {
        engine,
        gateway,
        options,
        lock: Arc::new(lock),
    })
}

/// Applies replay requests (from `weft dlq replay`, possibly run from another process).
async fn watch_store(engine: Arc<Engine>) {
    let mut interval = tokio::time::interval(Duration::from_millis(500));
    while !engine.stopping.load(Ordering::Relaxed) {
        interval.tick().await;
        match engine.store.replay_requests() {
            Ok(ids) if !ids.is_empty() => {
                let at = engine::now_ms();
                let ops = ids
                    .iter()
                    .map(|&dead_letter| Op::Replay { dead_letter, at })
                    .collect();
                match engine.store.commit(ops).await {
                    Ok(_) => tracing::info!("replayed {} dead letter(s)", ids.len()),
                    Err(e) => tracing::warn!("replaying dead letters: {e}"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("watching the store: {e}"),
        }
    }
}

/// Bounds the execution history: by count and by age.
async fn prune(engine: Arc<Engine>, keep: i64, days: i64) {
    let mut interval = tokio::time::interval(Duration::from_secs(60));
    while !engine.stopping.load(Ordering::Relaxed) {
        interval.tick().await;
        let before = engine::now_ms() - days * 86_400_000;
        if let Err(e) = engine.store.commit(vec![Op::Prune { keep, before }]).await {
            tracing::warn!("pruning the execution history: {e}");
        }
    }
}

/// Serves the gateway until `shutdown` resolves, then drains in-flight work.
pub async fn serve(
    runtime: Runtime,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(runtime.options.listen)
        .await
        .map_err(|e| format!("listening on {}: {e}", runtime.options.listen))?;
    serve_on(runtime, listener, shutdown).await
}

pub async fn serve_on(
    runtime: Runtime,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let app = gateway::app(runtime.gateway.clone(), runtime.options.max_body);
    let engine = runtime.engine.clone();
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("gateway listening on http://{local}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("stopping: no new work; draining in-flight steps");
            engine.stopping.store(true, Ordering::Relaxed);
            engine.idle.notify_waiters();
        })
        .await
        .map_err(|e| e.to_string())?;
    let engine = runtime.engine;
    let deadline = tokio::time::Instant::now() + runtime.options.drain_timeout;
    while engine.in_flight.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = engine.in_flight.load(Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(
            "{left} step(s) still running at the drain deadline; they run again at the next start"
        );
    }
    Ok(())
}
