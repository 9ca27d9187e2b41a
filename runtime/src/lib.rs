//! weft's runtime: executes compiled plans on a durable queue, in one process.
//!
//! [`start`] builds the runtime from named parts: each instance from its plan ([`instance`]),
//! the data folder (a lock and the [`store`]), the [`engine`] with what was in flight at the last
//! stop, the worker loops and triggers ([`triggers`]), and the gateway's routes ([`gateway`]).
//! [`serve`] runs the gateway until Ctrl-C or SIGTERM, then drains in-flight work within a
//! deadline.

pub mod auth;
pub mod broker;
mod clock;
pub mod dispatch;
pub mod engine;
pub mod error;
pub mod gateway;
pub mod history;
pub mod http;
pub mod inflight;
pub mod instance;
mod json_view;
pub mod metrics;
pub mod nesting;
pub mod offline;
pub mod redact;
mod reload;
pub mod render;
pub mod scope;
pub mod steps;
pub mod store;
pub mod triggers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use weft_plan::{Plan, broker_names};

use crate::dispatch::Dispatch;
use crate::engine::{Engine, EngineParts};
pub use crate::error::{StartError, TriggerError};
use crate::gateway::{GatewayState, Limits};
use crate::inflight::InflightSlots;
use crate::instance::InstanceRt;
use crate::redact::Redactor;
use crate::render::Renderer;
use crate::store::{Op, Store};

pub use crate::reload::{Reloaded, Reloader};

/// Runtime knobs (flags of `weft run`); what flows mean lives in the plans.
#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Base URL the outside world reaches the gateway at (for `instance.flows[...].url`).
    pub public_url: String,
    pub max_body: usize,
    /// Bytes of webhook bodies received at once, across all calls.
    pub body_budget: usize,
    /// How long a caller may take to send a request's headers, and then its body.
    pub read_timeout: Duration,
    pub deny_private: bool,
    /// Messages a step works on at once (replicas × this in the embedded runtime), shared by
    /// every instance of its integration version.
    pub step_concurrency: usize,
    /// Messages one instance may have running at once at a step it shares with other
    /// instances. `None`: three quarters of the step's slots (the rest stay free for the
    /// others even when one customer's upstream hangs).
    pub instance_concurrency: Option<usize>,
    pub max_pending: usize,
    /// Messages one instance may have waiting or in flight when the runtime serves several;
    /// past it, its webhooks get 503 while other customers' are still taken. `None`: a
    /// quarter of `max_pending`.
    pub max_instance_pending: Option<usize>,
    pub drain_timeout: Duration,
    pub keep_executions: i64,
    pub keep_days: i64,
    /// Base URLs of custom components (`image:`), by component name.
    pub component_urls: HashMap<String, String>,
    /// Connections open at once; past it, new ones are closed at once.
    pub max_connections: usize,
    /// Largest size of the store file; past it, commits fail and are retried (as on a full
    /// disk) and webhooks get 503. `None`: the disk's size.
    pub max_store_bytes: Option<u64>,
    /// Bytes one rendered value or step output may take.
    pub max_output: usize,
    /// A NATS JetStream server (`nats://HOST:PORT`) to keep the queues on instead of the
    /// embedded store; history, state and dead letters stay in the data folder.
    pub broker: Option<String>,
    /// Replicas of each stream on the broker.
    pub broker_replicas: usize,
    /// What this process runs: everything (`weft run`), or one part of a bundle's container
    /// topology on the broker (`weft gateway`, `weft step`).
    pub role: Role,
    /// The processes on the broker run a fleet (a `weft build` output folder, not one bundle):
    /// step workers publish their history on the fleet's one stream, which the gateway
    /// applies, rather than on a stream per instance (thousands of idle consumers).
    pub fleet: bool,
    /// `weft test`: mocks answer every HTTP request, steps may be replaced, retries and
    /// `delay` steps run on a virtual clock, and no trigger fires by itself.
    pub offline: Option<Arc<dyn offline::OfflineHooks>>,
}

impl Role {
    /// Whether this process runs `flow`'s step `step`: a step's process also serves the
    /// queues of the fused steps it leads, and the gateway those right after a trigger (see
    /// `weft_plan::Step::fused`).
    pub fn runs_step(&self, flow: &weft_plan::Flow, step: &weft_plan::Step) -> bool {
        match self {
            Role::All => true,
            Role::Gateway => step.fused && flow.fused_leader(&step.id).is_none(),
            Role::Step { flow: f, step: s } => {
                *f == flow.name
                    && (step.id == *s || step.fused && flow.fused_leader(&step.id) == Some(s))
            }
        }
    }

    /// How many of `step`'s replicas this process is: all of them in one process, one in a
    /// step's container (its siblings are other containers on the same consumer).
    pub fn replicas_here(&self, step: &weft_plan::Step) -> usize {
        match self {
            Role::All | Role::Gateway => step.replicas.max(1) as usize,
            Role::Step { .. } => 1,
        }
    }
}

/// The part of the work one process does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Role {
    /// Triggers, the gateway and every step, in one process (`weft run`).
    #[default]
    All,
    /// Triggers and the gateway; steps run in other processes, on the broker. Keeps the
    /// execution history, which step workers send through the broker.
    Gateway,
    /// One step of one flow, from its consumer on the broker (`weft step`); serves only
    /// `/healthz` and `/metrics`.
    Step { flow: String, step: String },
}

impl Default for Options {
    fn default() -> Self {
        Options {
            data_dir: PathBuf::from(".weft"),
            listen: "127.0.0.1:8080".parse().expect("address"),
            public_url: "http://127.0.0.1:8080".into(),
            max_body: 10_000_000,
            body_budget: 64 * 1024 * 1024,
            read_timeout: Duration::from_secs(30),
            deny_private: false,
            step_concurrency: 64,
            instance_concurrency: None,
            max_pending: 200_000,
            max_instance_pending: None,
            drain_timeout: Duration::from_secs(10),
            keep_executions: 10_000,
            keep_days: 7,
            component_urls: HashMap::new(),
            max_connections: 4096,
            max_store_bytes: None,
            max_output: render::DEFAULT_MAX_OUTPUT,
            broker: None,
            broker_replicas: 1,
            role: Role::All,
            fleet: false,
            offline: None,
        }
    }
}

/// A started runtime.
pub struct Runtime {
    engine: Arc<Engine>,
    /// Held for the life of the runtime: the data folder's lock.
    _lock: Option<std::fs::File>,
    gateway: Arc<GatewayState>,
    reloader: Arc<Reloader>,
    options: Options,
}

impl Runtime {
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Reloads the plans while the runtime runs (add, replace and remove instances).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// Starts an execution of `flow` in `customer`'s instance that has it, as a trigger would.
    pub async fn start_flow(
        &self,
        customer: &str,
        flow: &str,
        trigger: Value,
    ) -> Result<String, TriggerError> {
        let instance = self
            .engine
            .instance_with_flow(customer, flow)
            .ok_or_else(|| TriggerError::UnknownInstance {
                customer: customer.to_string(),
                flow: flow.to_string(),
            })?
            .clone();
        self.engine
            .start_execution(&instance, flow, trigger, vec![])
            .await
    }

    /// Takes no new work; what is queued stays in the store for the next start.
    pub fn stop(&self) {
        self.engine.stop();
    }
}

/// Resolves every plan's secrets from the environment: all missing names are reported at once,
/// and nothing starts half-configured.
pub fn resolve_secrets(
    plans: &[Plan],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<HashMap<String, String>, StartError> {
    resolve_role_secrets(plans, &Role::All, lookup)
}

/// Resolves the secrets `role` needs (a step's container gets only its step's secrets, the
/// gateway only its triggers'); others found in the environment are read too.
pub fn resolve_role_secrets(
    plans: &[Plan],
    role: &Role,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<HashMap<String, String>, StartError> {
    let mut values = HashMap::new();
    let mut missing = Vec::new();
    for plan in plans {
        let needed: std::collections::BTreeSet<&str> = match role {
            Role::All => plan.secrets.iter().map(String::as_str).collect(),
            Role::Gateway => plan.gateway_secrets(),
            Role::Step { flow, step } => plan
                .flows
                .iter()
                .filter(|f| &f.name == flow)
                .flat_map(|f| {
                    f.steps
                        .iter()
                        .filter(|s| &s.id == step)
                        .flat_map(|s| f.step_process_secrets(s))
                })
                .collect(),
        };
        for name in &plan.secrets {
            match lookup(name) {
                Some(v) if !v.is_empty() => {
                    values.insert(name.clone(), v);
                }
                _ if needed.contains(name.as_str()) => {
                    missing.push(format!("{name} (for {})", plan.instance_key()));
                }
                _ => {}
            }
        }
    }
    if missing.is_empty() {
        return Ok(values);
    }
    missing.sort();
    missing.dedup();
    Err(StartError::MissingSecrets(missing))
}

/// Starts the runtime: everything but the HTTP listener.
pub async fn start(
    plans: Vec<Plan>,
    options: Options,
    secrets: HashMap<String, String>,
) -> Result<Runtime, StartError> {
    render::set_max_output(options.max_output);
    check_role(&plans, &options)?;
    let renderer = Renderer::new();
    let mut versions = instance::Versions::new();
    let instances = build_instances(
        &plans,
        &renderer,
        &secrets,
        &options.public_url,
        &mut versions,
    )?;
    let mut groups = reload::StepGroups::default();
    let (lanes, new_groups) = {
        let all: Vec<Arc<InstanceRt>> = instances.values().cloned().collect();
        groups.add(&all, &options)
    };
    // A step worker has no data folder: it keeps nothing.
    let lock = match options.role {
        Role::Step { .. } => None,
        Role::All | Role::Gateway => Some(lock_data_folder(&options.data_dir)?),
    };
    let dispatch = Arc::new(Dispatch::new(
        lanes.into_iter().collect(),
        tokio::runtime::Handle::current(),
    ));
    let queues = open_queues(&plans, &options, &dispatch).await?;
    let redactor = redactor(&secrets, &instances);
    let engine = Arc::new(Engine::new(EngineParts {
        store: queues.queue.clone(),
        dispatch: dispatch.clone(),
        instances,
        renderer,
        http: http::client(options.deny_private),
        deny_private: options.deny_private,
        component_urls: options.component_urls.clone(),
        redactor,
        inflight: queues.inflight,
        offline: options.offline.clone(),
    }));
    resume(&engine, &options.data_dir, &queues.running_at_stop).await?;
    reload::spawn_workers(&engine, new_groups);
    if let Some(broker) = &queues.broker {
        broker
            .start(&engine, options.step_concurrency, &options.role)
            .await?;
    }
    let mut timers = None;
    let hooks = if let Role::Step { .. } = options.role {
        HashMap::new()
    } else if options.offline.is_some() {
        // A test starts each execution itself.
        gateway::hooks(&engine.instances(), options.max_body)?
    } else {
        let all: Vec<Arc<InstanceRt>> = engine.instances().values().cloned().collect();
        let (added, wheel) = tokio::sync::mpsc::unbounded_channel();
        let _ = added.send(reload::start_triggers(&engine, &all));
        tokio::spawn(triggers::timer_wheel(engine.clone(), wheel));
        timers = Some(added);
        spawn_housekeeping(&engine, &options);
        gateway::hooks(&engine.instances(), options.max_body)?
    };
    let limits = Limits {
        max_pending: options.max_pending,
        max_instance_pending: reload::max_instance_pending(&options, engine.instances().len()),
        max_body: options.max_body,
        body_budget: options.body_budget,
        body_timeout: options.read_timeout,
    };
    let gateway = Arc::new(GatewayState::new(engine.clone(), hooks, limits));
    let reloader = Arc::new(Reloader {
        engine: engine.clone(),
        gateway: gateway.clone(),
        broker: queues.broker.clone(),
        timers,
        options: options.clone(),
        state: tokio::sync::Mutex::new(reload::ReloadState {
            versions,
            groups,
            secrets,
        }),
    });
    // Thousands of plans take a while to free: not before the gateway serves.
    rayon::spawn(move || drop(plans));
    Ok(Runtime {
        engine,
        _lock: lock,
        gateway,
        reloader,
        options,
    })
}

/// The gateway and step roles run on a broker; a step's role names a step of the plans.
pub(crate) fn check_role(plans: &[Plan], options: &Options) -> Result<(), StartError> {
    if options.role != Role::All && options.broker.is_none() {
        return Err(StartError::Role(
            "the gateway and step processes need a broker (--broker nats://HOST:PORT)".into(),
        ));
    }
    if let Role::Step { flow, step } = &options.role {
        let Some(found) = plans
            .iter()
            .flat_map(|p| p.flows.iter())
            .find(|f| &f.name == flow)
        else {
            let flows: Vec<_> = plans
                .iter()
                .flat_map(|p| &p.flows)
                .map(|f| f.name.as_str())
                .collect();
            return Err(StartError::Role(format!(
                "no flow `{flow}` in the bundle (its flows: {})",
                flows.join(", ")
            )));
        };
        let Some(found_step) = found.steps.iter().find(|s| &s.id == step) else {
            let steps: Vec<_> = found.leading_steps().map(|s| s.id.as_str()).collect();
            return Err(StartError::Role(format!(
                "flow `{flow}` has no step `{step}` (its steps with a process: {})",
                steps.join(", ")
            )));
        };
        if found_step.fused {
            let leader = found
                .fused_leader(step)
                .map_or("the gateway".to_string(), |l| {
                    format!("the process of step `{l}`")
                });
            return Err(StartError::Role(format!(
                "step `{step}` is pure and fused: it runs inline, in {leader}"
            )));
        }
        let mut integrations: Vec<&str> = plans.iter().map(|p| p.integration.as_str()).collect();
        integrations.sort_unstable();
        integrations.dedup();
        if integrations.len() != 1 {
            return Err(StartError::Role(format!(
                "a step process runs one integration's step, for each of its instances: these plans are of {} (choose one with --integration)",
                integrations.join(", ")
            )));
        }
    }
    Ok(())
}

/// Every instance, ready to run, by `<customer>/<integration>`: each integration version is
/// compiled once and shared by its instances (and kept in `versions` for reloads).
fn build_instances(
    plans: &[Plan],
    renderer: &Renderer,
    secrets: &HashMap<String, String>,
    public_url: &str,
    versions: &mut instance::Versions,
) -> Result<HashMap<String, Arc<InstanceRt>>, StartError> {
    let built = instance::build_instances(plans, renderer, secrets, public_url, versions)?;
    let instances: HashMap<String, Arc<InstanceRt>> = built
        .into_iter()
        .map(|i| (i.key.clone(), Arc::new(i)))
        .collect();
    tracing::debug!(
        "{} instance(s) of {} integration version(s)",
        instances.len(),
        versions.len()
    );
    Ok(instances)
}

/// Masks every secret, and the basic-auth credentials weft encodes from them.
pub(crate) fn redactor(
    secrets: &HashMap<String, String>,
    instances: &HashMap<String, Arc<InstanceRt>>,
) -> Redactor {
    let basic = instances.values().flat_map(|i| {
        i.plan()
            .connections
            .iter()
            .filter(|(_, c)| c.auth == weft_plan::AuthKind::Basic)
            .filter_map(|(name, _)| i.connections.get(name))
            .map(|fields| {
                (
                    steps::connection_field(fields, "username"),
                    steps::connection_field(fields, "password"),
                )
            })
    });
    Redactor::with_derived_forms(secrets.values().cloned(), basic)
}

/// One process per data folder: two would both run the same messages.
fn lock_data_folder(dir: &Path) -> Result<std::fs::File, StartError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StartError::DataFolder { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let lock_path = dir.join("weft.lock");
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    lock.try_lock()
        .map_err(|_| StartError::Locked(dir.to_path_buf()))?;
    Ok(lock)
}

/// The durable queue the engine runs on, with what the embedded mode found in flight.
struct Queues {
    queue: Arc<dyn store::Queue>,
    broker: Option<Arc<broker::JetStreamQueue>>,
    inflight: Option<InflightSlots>,
    running_at_stop: Vec<i64>,
}

/// The embedded store (with its in-flight slots), or the broker backend when one is named.
async fn open_queues(
    plans: &[Plan],
    options: &Options,
    dispatch: &Arc<Dispatch>,
) -> Result<Queues, StartError> {
    if let Some(url) = &options.broker {
        let history = match &options.role {
            // A step worker keeps nothing: its history goes to the gateway, on its instance's
            // history stream, or on the fleet's when it runs several instances.
            Role::Step { .. } => broker::HistorySink::Stream {
                subject: match plans {
                    [plan] if !options.fleet => {
                        broker::history_subject(&plan.customer, &plan.integration)
                    }
                    _ => broker_names::FLEET_HISTORY_SUBJECT.to_string(),
                },
            },
            Role::All | Role::Gateway => broker::HistorySink::Store(Store::open_with(
                &options.data_dir.join("weft.db"),
                Box::new(|_: Vec<store::StoredMessage>| {}),
                options.max_store_bytes,
            )?),
        };
        let queue = Arc::new(
            broker::JetStreamQueue::connect(url, history, options.broker_replicas, options.fleet)
                .await?,
        );
        tracing::info!("queues on the NATS JetStream broker at {url}");
        return Ok(Queues {
            queue: queue.clone(),
            broker: Some(queue),
            inflight: None,
            running_at_stop: Vec::new(),
        });
    }
    let store = open_store(&options.data_dir, dispatch, options.max_store_bytes)?;
    let (inflight, running_at_stop) =
        InflightSlots::open(&options.data_dir).map_err(|source| StartError::DataFolder {
            path: options.data_dir.join("inflight.slots"),
            source,
        })?;
    Ok(Queues {
        queue: Arc::new(store),
        broker: None,
        inflight: Some(inflight),
        running_at_stop,
    })
}

/// The embedded store; every commit routes what it enqueued to the in-memory queues.
fn open_store(
    dir: &Path,
    dispatch: &Arc<Dispatch>,
    max_bytes: Option<u64>,
) -> Result<Store, StartError> {
    let dispatch = dispatch.clone();
    let on_commit = Box::new(move |messages: Vec<store::StoredMessage>| dispatch.deliver(messages));
    Ok(Store::open_with(
        &dir.join("weft.db"),
        on_commit,
        max_bytes,
    )?)
}

/// What was in flight at the last stop runs again (at-least-once), except a message whose
/// step was running at [`inflight::QUARANTINE_AFTER`] stops: it goes to the dead-letter queue.
async fn resume(engine: &Engine, dir: &Path, running_at_stop: &[i64]) -> Result<(), StartError> {
    let pending = engine.store().pending_messages()?;
    let mut ops = Vec::new();
    let mut deliver = Vec::with_capacity(pending.len());
    for mut message in pending {
        if running_at_stop.contains(&message.id) {
            message.crashes += 1;
            if message.crashes >= inflight::QUARANTINE_AFTER {
                ops.extend(quarantine(engine, &message));
                continue;
            }
            ops.push(Op::SetCrashes {
                id: message.id,
                crashes: message.crashes,
            });
        }
        deliver.push(message);
    }
    if !ops.is_empty() {
        engine.store().commit(ops).await?;
    }
    if !deliver.is_empty() {
        tracing::info!(
            "resuming {} message(s) from {}",
            deliver.len(),
            dir.display()
        );
    }
    engine.deliver(deliver);
    Ok(())
}

/// Dead-letters a message whose step was running each time the process stopped.
fn quarantine(engine: &Engine, message: &store::StoredMessage) -> Vec<Op> {
    let step = serde_json::from_str::<engine::Envelope>(&message.body)
        .map(|e| e.step)
        .unwrap_or_else(|_| "unknown".into());
    let error = format!(
        "quarantined: the process stopped {} times while step `{step}` ran this message",
        message.crashes
    );
    tracing::error!(message = message.id, execution = %message.execution, "{error}");
    engine.give_up(message, &step, error)
}

/// Replays requested from other processes, and history retention.
fn spawn_housekeeping(engine: &Arc<Engine>, options: &Options) {
    tokio::spawn(watch_replays(engine.clone()));
    tokio::spawn(prune(
        engine.clone(),
        options.keep_executions,
        options.keep_days,
    ));
}

/// Applies replay requests (from `weft dlq replay`, possibly run from another process).
async fn watch_replays(engine: Arc<Engine>) {
    let mut interval = tokio::time::interval(Duration::from_millis(500));
    while !engine.is_stopping() {
        interval.tick().await;
        match engine.store().replay_requests() {
            Ok(ids) if !ids.is_empty() => {
                let at = clock::now_ms();
                let ops = ids
                    .iter()
                    .map(|&dead_letter| Op::Replay { dead_letter, at })
                    .collect();
                match engine.store().commit(ops).await {
                    Ok(_) => tracing::info!("replayed {} dead letter(s)", ids.len()),
                    Err(e) => tracing::warn!("replaying dead letters: {e}"),
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("watching the store: {e}"),
        }
    }
}

/// Bounds the execution history, by count and by age, a batch at a time: every tenth of a
/// second while there is history to prune, and again at once while whole batches go (a busy
/// instance's history stays near `keep` without one long commit); while there is none, the
/// look backs off to every 5 seconds, so an idle process stays idle. Webhook-id claims are
/// pruned once a minute.
async fn prune(engine: Arc<Engine>, keep: i64, days: i64) {
    const BUSY: Duration = Duration::from_millis(100);
    const IDLE: Duration = Duration::from_secs(5);
    let mut wait = BUSY;
    let mut claims_pruned_at = tokio::time::Instant::now();
    while !engine.is_stopping() {
        tokio::time::sleep(wait).await;
        loop {
            let now = clock::now_ms();
            let claims_due = claims_pruned_at.elapsed() >= Duration::from_secs(60);
            if claims_due {
                claims_pruned_at = tokio::time::Instant::now();
            }
            let prune = Op::Prune {
                keep,
                before: now - days * 86_400_000,
                claims_before: claims_due.then(|| now - 2 * auth::TOLERANCE_SECS * 1000),
            };
            match engine.store().commit(vec![prune]).await {
                Ok(c) if c.pruned == store::PRUNE_BATCH && !engine.is_stopping() => {}
                Ok(c) => {
                    wait = if c.pruned > 0 {
                        BUSY
                    } else {
                        (wait * 2).min(IDLE)
                    };
                    break;
                }
                Err(e) => {
                    tracing::warn!("pruning the execution history: {e}");
                    wait = IDLE;
                    break;
                }
            }
        }
    }
}

/// Serves the gateway until `shutdown` resolves, then drains in-flight work.
pub async fn serve(
    runtime: Runtime,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let address = runtime.options.listen;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Listen { address, source })?;
    serve_on(runtime, listener, shutdown).await
}

/// Serves the gateway on a bound listener until `shutdown` resolves, then drains.
///
/// Connections are served by hyper directly so that slow callers are bounded: a request's
/// headers must arrive within `read_timeout` (an idle keep-alive connection is closed after
/// it too), and at most `max_connections` are open at once — past it, new ones are closed at
/// once rather than starving the process of file descriptors.
pub async fn serve_on(
    runtime: Runtime,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let app = gateway::app(runtime.gateway.clone());
    let address = listener.local_addr().map_err(|source| StartError::Listen {
        address: runtime.options.listen,
        source,
    })?;
    tracing::info!("gateway listening on http://{address}");
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(runtime.options.read_timeout)
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(
        runtime.options.max_connections.max(1),
    ));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut halted = std::pin::pin!(runtime.engine.store().until_halted());
    let mut failure = None;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
            e = &mut halted => {
                failure = Some(e);
                break;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection =
            graceful.watch(http1.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    tracing::info!("stopping: no new work; draining in-flight steps");
    runtime.engine.stop();
    let drain_timeout = runtime.options.drain_timeout;
    let _ = tokio::time::timeout(drain_timeout, graceful.shutdown()).await;
    drain(&runtime.engine, drain_timeout).await;
    match failure {
        // The process stops with the store's error; the next start recovers what is durable.
        Some(e) => Err(StartError::Store(e)),
        None => Ok(()),
    }
}

/// Waits for running steps to finish, up to `timeout`.
async fn drain(engine: &Engine, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while engine.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = engine.in_flight();
    if left > 0 {
        tracing::warn!(
            "{left} step(s) still running at the drain deadline; they run again at the next start"
        );
    }
}
