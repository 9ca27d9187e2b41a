//! The engine: one worker loop per step, fed from in-memory queues that mirror the store. A
//! message is taken, its step runs, and in one durable commit the step's successors are
//! enqueued, its run recorded and the message acknowledged. Failures retry with exponential
//! backoff and jitter, then follow the step's `on_error`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, Semaphore, oneshot};
use weft_plan::{self as plan, Builtin, EdgeKind, OnError, Plan};

use crate::metrics::{Metrics, StepLabels};
use crate::redact::Redactor;
use crate::render::{self, Compiled, Renderer};
use crate::steps::{self, ActionCall, Outcome, RenderedHttp, Reply, StepEnv, StepError};
use crate::store::{NewExecution, NewMessage, Op, Queue, StepRun, StoredMessage};

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// What travels with a message: everything the next step's templates may read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub instance: String,
    pub flow: String,
    pub step: String,
    pub trigger: Value,
    #[serde(default)]
    pub steps: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Position in nested loops (`/3/1`), part of the idempotency key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}

/// A queue in memory: the messages of one step that are due, in order.
#[derive(Default)]
pub struct WorkQueue {
    items: Mutex<VecDeque<StoredMessage>>,
    notify: Notify,
}

impl WorkQueue {
    fn push(&self, m: StoredMessage) {
        self.items.lock().expect("queue lock").push_back(m);
        self.notify.notify_one();
    }

    async fn pop(&self) -> StoredMessage {
        loop {
            if let Some(m) = self.items.lock().expect("queue lock").pop_front() {
                return m;
            }
            self.notify.notified().await;
        }
    }

    pub fn len(&self) -> usize {
        self.items.lock().expect("queue lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Routes committed messages to their in-memory queues (called on the store's writer thread).
pub struct Dispatch {
    pub queues: HashMap<String, Arc<WorkQueue>>,
    /// Messages waiting or in flight, for admission control at the gateway.
    pub pending: AtomicUsize,
    handle: tokio::runtime::Handle,
}

impl Dispatch {
    pub fn new(queues: HashMap<String, Arc<WorkQueue>>, handle: tokio::runtime::Handle) -> Self {
        Dispatch {
            queues,
            pending: AtomicUsize::new(0),
            handle,
        }
    }

    pub fn deliver(&self, messages: &[StoredMessage]) {
        let now = now_ms();
        for m in messages {
            let Some(queue) = self.queues.get(&m.queue).cloned() else {
                continue; // not ours: stays in the store
            };
            self.pending.fetch_add(1, Ordering::Relaxed);
            if m.visible_at > now {
                let m = m.clone();
                let delay = Duration::from_millis((m.visible_at - now) as u64);
                self.handle.spawn(async move {
                    tokio::time::sleep(delay).await;
                    queue.push(m);
                });
            } else {
                queue.push(m.clone());
            }
        }
    }
}

/// A step ready to run: its plan, compiled templates and outgoing edges.
pub struct StepRt {
    pub step: plan::Step,
    pub with: Compiled,
    /// Branch conditions, in order.
    pub cases: Vec<Compiled>,
    pub action: Option<ActionRt>,
    pub edges: Vec<plan::Edge>,
    pub labels: StepLabels,
}

pub struct ActionRt {
    pub component: String,
    pub action: String,
    pub http: Option<HttpRt>,
}

impl ActionRt {
    /// The request to send: the `http` templates rendered over `input` and `connection`.
    pub fn render(
        &self,
        input: &Value,
        connection: Option<&Map<String, Value>>,
    ) -> Result<ActionCall, String> {
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

pub struct HttpRt {
    pub method: plan::HttpMethod,
    pub path: Compiled,
    pub query: Compiled,
    pub headers: Compiled,
    pub body: Option<Compiled>,
}

pub struct FlowRt {
    pub name: String,
    pub entry_queue: Option<String>,
    pub steps: HashMap<String, Arc<StepRt>>,
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

/// Everything the workers share.
pub struct Engine {
    /// The durable queue: the embedded store, or another backend behind the same trait.
    pub store: Arc<dyn Queue>,
    pub dispatch: Arc<Dispatch>,
    pub instances: HashMap<String, Arc<InstanceRt>>,
    pub renderer: Renderer,
    pub http: reqwest::Client,
    pub deny_private: bool,
    /// Base URLs of custom components' containers, by component.
    pub component_urls: HashMap<String, String>,
    pub redactor: Redactor,
    pub metrics: Metrics,
    /// Sync webhooks waiting for their `respond` step, by execution.
    pub waiters: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
    pub stopping: AtomicBool,
    pub in_flight: AtomicUsize,
    pub idle: Notify,
}

impl Engine {
    /// Starts an execution of a flow: one commit records it and enqueues its first message.
    /// Returns the execution id once durable.
    pub async fn start_execution(
        &self,
        instance: &InstanceRt,
        flow: &str,
        trigger: Value,
        extra: Vec<Op>,
    ) -> Result<String, String> {
        let id = ulid::Ulid::new().to_string();
        let ops = self.start_ops(instance, flow, trigger, &id, extra)?;
        self.store.commit(ops).await?;
        self.metrics.executions.inc();
        Ok(id)
    }

    /// The ops that start an execution (also used inside larger commits: dispatch, polls).
    pub fn start_ops(
        &self,
        instance: &InstanceRt,
        flow: &str,
        trigger: Value,
        id: &str,
        extra: Vec<Op>,
    ) -> Result<Vec<Op>, String> {
        let f = instance
            .flows
            .get(flow)
            .ok_or_else(|| format!("no flow `{flow}`"))?;
        let at = now_ms();
        let mut ops = vec![Op::StartExecution(NewExecution {
            id: id.to_string(),
            instance: instance.key.clone(),
            flow: flow.to_string(),
            trigger: self.redactor.json(&trigger),
            started_at: at,
        })];
        ops.extend(extra);
        match &f.entry_queue {
            Some(queue) => {
                let first = f
                    .steps
                    .values()
                    .find(|s| &s.step.queue == queue)
                    .map(|s| s.step.id.clone())
                    .unwrap_or_default();
                let envelope = Envelope {
                    instance: instance.key.clone(),
                    flow: flow.to_string(),
                    step: first,
                    trigger,
                    steps: Map::new(),
                    item: None,
                    index: None,
                    path: String::new(),
                };
                ops.push(Op::Enqueue(NewMessage {
                    queue: queue.clone(),
                    execution: id.to_string(),
                    visible_at: at,
                    attempt: 1,
                    body: serde_json::to_string(&envelope).map_err(|e| e.to_string())?,
                }));
                ops.push(Op::Pending {
                    execution: id.to_string(),
                    delta: 1,
                    at,
                });
            }
            None => ops.push(Op::Pending {
                execution: id.to_string(),
                delta: 0,
                at,
            }),
        }
        Ok(ops)
    }

    /// Runs the worker loop of one step until the engine stops.
    pub async fn worker(
        self: Arc<Self>,
        instance: Arc<InstanceRt>,
        step: Arc<StepRt>,
        queue: Arc<WorkQueue>,
        concurrency: usize,
    ) {
        let permits = Arc::new(Semaphore::new(concurrency));
        loop {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            let message = tokio::select! {
                m = queue.pop() => m,
                _ = self.idle.notified(), if self.stopping.load(Ordering::Relaxed) => return,
            };
            if self.stopping.load(Ordering::Relaxed) {
                queue.push(message); // stays in the store; runs after the restart
                return;
            }
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            let engine = self.clone();
            let instance = instance.clone();
            let step = step.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                engine.handle(&instance, &step, &queue, message).await;
                engine.dispatch.pending.fetch_sub(1, Ordering::Relaxed);
                if engine.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
                    engine.idle.notify_waiters();
                }
                drop(permit);
            });
        }
    }

    /// The template context of a message. Config and `instance` are converted once per
    /// instance; only the message's own parts are converted here.
    fn context(&self, instance: &InstanceRt, env: &Envelope) -> minijinja::Value {
        use minijinja::value::Serde;
        let mut ctx = std::collections::BTreeMap::new();
        ctx.insert("trigger", minijinja::Value::from(Serde(&env.trigger)));
        ctx.insert("steps", minijinja::Value::from(Serde(&env.steps)));
        ctx.insert("config", instance.config_template.clone());
        ctx.insert("instance", instance.instance_template.clone());
        ctx.insert("connections", instance.connections_template.clone());
        if let Some(item) = &env.item {
            ctx.insert("item", minijinja::Value::from(Serde(item)));
            ctx.insert("index", minijinja::Value::from(env.index.unwrap_or(0)));
        }
        minijinja::Value::from(ctx)
    }

    async fn handle(
        &self,
        instance: &InstanceRt,
        step: &StepRt,
        queue: &WorkQueue,
        message: StoredMessage,
    ) {
        let envelope: Envelope = match serde_json::from_str(&message.body) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(message = message.id, "unreadable message: {e}");
                let ops = vec![
                    Op::DeadLetter {
                        id: message.id,
                        step: step.step.id.clone(),
                        error: format!("unreadable message: {e}"),
                        at: now_ms(),
                    },
                    Op::Pending {
                        execution: message.execution.clone(),
                        delta: -1,
                        at: now_ms(),
                    },
                ];
                let _ = self.store.commit(ops).await;
                return;
            }
        };
        let started_at = now_ms();
        let clock = Instant::now();
        let ctx = self.context(instance, &envelope);
        let mut input_seen = Value::Null;
        // The idempotency key: one per execution, step and loop position.
        let key = format!("{}:{}{}", message.execution, step.step.id, envelope.path);
        let connection = step
            .step
            .connection
            .as_ref()
            .and_then(|c| instance.plan.connections.get(c).map(|plan| (c, plan)));
        let result = self
            .run_step(instance, step, &key, &ctx, &mut input_seen, connection)
            .await;
        let elapsed = clock.elapsed();
        self.metrics
            .step_seconds
            .get_or_create(&step.labels)
            .observe(elapsed.as_secs_f64());
        let input_record = Some(self.redactor.json(&input_seen));
        let at = now_ms();
        let mut run = StepRun {
            execution: message.execution.clone(),
            step: step.step.id.clone(),
            attempt: message.attempt,
            status: "succeeded",
            input: input_record,
            output: None,
            error: None,
            started_at,
            duration_ms: elapsed.as_millis() as i64,
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(error) => {
                let retry = &step.step.retry;
                let message_text = self.redactor.str(&error.message);
                if error.retryable && message.attempt < retry.attempts {
                    self.metrics.retries.get_or_create(&step.labels).inc();
                    let delay = backoff(retry, message.attempt);
                    tracing::warn!(step = %step.step.id, execution = %message.execution, attempt = message.attempt, "attempt failed, retrying in {delay:?}: {message_text}");
                    run.status = "retrying";
                    run.error = Some(message_text);
                    let ops = vec![
                        Op::Reschedule {
                            id: message.id,
                            visible_at: at + delay.as_millis() as i64,
                            attempt: message.attempt + 1,
                        },
                        Op::RecordStep(run),
                    ];
                    self.commit_or_requeue(ops, queue, message, None).await;
                    return;
                }
                run.status = "failed";
                run.error = Some(message_text.clone());
                match step.step.on_error {
                    OnError::Continue => {
                        tracing::warn!(step = %step.step.id, execution = %message.execution, "step failed, continuing: {message_text}");
                        StepResult::Output(json!({ "error": message_text }))
                    }
                    OnError::DeadLetter | OnError::Fail => {
                        let dead = step.step.on_error == OnError::DeadLetter;
                        tracing::error!(step = %step.step.id, execution = %message.execution, "step failed{}: {message_text}", if dead { ", dead-lettered" } else { "" });
                        let mut ops = vec![];
                        if dead {
                            self.metrics.dead_letters.get_or_create(&step.labels).inc();
                            ops.push(Op::DeadLetter {
                                id: message.id,
                                step: step.step.id.clone(),
                                error: message_text.clone(),
                                at,
                            });
                        } else {
                            ops.push(Op::Ack(message.id));
                        }
                        ops.push(Op::RecordStep(run));
                        ops.push(Op::FailExecution {
                            execution: message.execution.clone(),
                            error: format!("step `{}`: {message_text}", step.step.id),
                        });
                        ops.push(Op::Pending {
                            execution: message.execution.clone(),
                            delta: -1,
                            at,
                        });
                        self.commit_or_requeue(ops, queue, message, None).await;
                        return;
                    }
                }
            }
        };
        // Route the outcome along the step's edges.
        let mut ops = vec![Op::Ack(message.id)];
        let mut next = Vec::new();
        let mut reply = None;
        // What the step produced, and which of its edges carry it on (with a loop item each).
        let (output, routes): (Value, Vec<Route>) = match outcome {
            StepResult::Output(v) | StepResult::Outcome(Outcome::Output(v)) => {
                (v, vec![(EdgeKind::Next, None)])
            }
            StepResult::Branch(choice) => (
                json!({ "case": choice.map_or(json!("default"), |c| json!(c)) }),
                vec![(choice.map_or(EdgeKind::Default, EdgeKind::Case), None)],
            ),
            StepResult::Outcome(Outcome::FanOut(items)) => {
                let out = json!({ "count": items.len() });
                let mut routes: Vec<_> = items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| (EdgeKind::Body, Some((i, item))))
                    .collect();
                routes.push((EdgeKind::Next, None));
                (out, routes)
            }
            StepResult::Outcome(Outcome::Respond(r)) => {
                let out = json!({ "status": r.status, "body": r.body });
                reply = Some(r);
                (out, vec![(EdgeKind::Next, None)])
            }
            StepResult::Outcome(Outcome::Dispatch { flow, payload }) => {
                let id = ulid::Ulid::new().to_string();
                let trigger = json!({ "body": payload, "dispatched_from": { "flow": envelope.flow, "execution": message.execution } });
                match self.start_ops(instance, &flow, trigger, &id, vec![]) {
                    Ok(start) => ops.extend(start),
                    Err(e) => tracing::error!("dispatch to `{flow}`: {e}"),
                }
                (
                    json!({ "execution": id, "flow": flow }),
                    vec![(EdgeKind::Next, None)],
                )
            }
        };
        for (kind, item) in routes {
            next.extend(self.follow(instance, step, &envelope, &message, kind, &output, item));
        }
        if run.status == "succeeded" {
            run.output = Some(self.redactor.json(&output));
        }
        let count = next.len() as i64;
        ops.extend(next.into_iter().map(Op::Enqueue));
        ops.push(Op::RecordStep(run));
        ops.push(Op::Pending {
            execution: message.execution.clone(),
            delta: count - 1,
            at,
        });
        let execution = message.execution.clone();
        self.commit_or_requeue(ops, queue, message, reply.map(|r| (execution, r)))
            .await;
    }

    /// Commits; on a store failure the message goes back to its queue after a pause (it is still
    /// in the store, so nothing is lost). Returns whether the commit happened.
    async fn commit_or_requeue(
        &self,
        ops: Vec<Op>,
        queue: &WorkQueue,
        message: StoredMessage,
        reply: Option<(String, Reply)>,
    ) -> bool {
        match self.store.commit(ops).await {
            Ok(committed) => {
                // The `respond` step's reply goes first: its commit may also finish the execution.
                if let Some((execution, reply)) = reply
                    && let Some(waiter) = self.waiters.lock().expect("waiters").remove(&execution)
                {
                    let _ = waiter.send(reply);
                }
                for (execution, status) in committed.finished {
                    // A sync webhook whose flow ended without a reply.
                    if let Some(waiter) = self.waiters.lock().expect("waiters").remove(&execution) {
                        let _ = waiter.send(Reply { status: 502, headers: Default::default(), body: json!({ "error": format!("the flow ended ({status}) without a `respond` step"), "execution_id": execution }) });
                    }
                }
                true
            }
            Err(e) => {
                tracing::error!("store commit failed, retrying the message: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.dispatch.pending.fetch_add(1, Ordering::Relaxed);
                queue.push(message);
                false
            }
        }
    }

    /// The messages for the targets of this step's edges of one kind.
    #[allow(clippy::too_many_arguments)]
    fn follow(
        &self,
        instance: &InstanceRt,
        step: &StepRt,
        envelope: &Envelope,
        message: &StoredMessage,
        kind: EdgeKind,
        output: &Value,
        item: Option<(usize, Value)>,
    ) -> Vec<NewMessage> {
        let Some(flow) = instance.flows.get(&envelope.flow) else {
            return Vec::new();
        };
        step.edges
            .iter()
            .filter(|e| e.kind == kind)
            .filter_map(|e| {
                let target = flow.steps.get(&e.to)?;
                let mut next = envelope.clone();
                next.step = e.to.clone();
                next.steps.insert(step.step.id.clone(), output.clone());
                if let Some((i, value)) = &item {
                    next.item = Some(value.clone());
                    next.index = Some(*i);
                    next.path = format!("{}/{i}", envelope.path);
                }
                Some(NewMessage {
                    queue: target.step.queue.clone(),
                    execution: message.execution.clone(),
                    visible_at: now_ms(),
                    attempt: 1,
                    body: serde_json::to_string(&next).ok()?,
                })
            })
            .collect()
    }

    async fn run_step(
        &self,
        instance: &InstanceRt,
        step: &StepRt,
        key: &str,
        ctx: &minijinja::Value,
        input_seen: &mut Value,
        connection: Option<(&String, &plan::Connection)>,
    ) -> Result<StepResult, StepError> {
        if step.step.uses.is(Builtin::Branch) {
            for (i, case) in step.cases.iter().enumerate() {
                let v = render::render(case, ctx).map_err(StepError::permanent)?;
                if render::truthy(&v) {
                    return Ok(StepResult::Branch(Some(i)));
                }
            }
            return Ok(StepResult::Branch(None));
        }
        let input = render::render(&step.with, ctx).map_err(StepError::permanent)?;
        *input_seen = input.clone();
        let connection = match connection {
            Some((name, plan)) => {
                let fields = instance
                    .connections
                    .get(name)
                    .ok_or_else(|| StepError::permanent(format!("unknown connection `{name}`")))?;
                Some((plan, fields.clone()))
            }
            None => None,
        };
        let action = step
            .action
            .as_ref()
            .map(|a| a.render(&input, connection.as_ref().map(|(_, f)| f)))
            .transpose()
            .map_err(StepError::permanent)?;
        let timeout = Duration::from_millis(step.step.timeout_ms);
        let env = StepEnv {
            http: &self.http,
            redactor: &self.redactor,
            deny_private: self.deny_private,
            idempotency_key: key,
            timeout,
            plan: &instance.plan,
            connection,
            action,
            component_urls: &self.component_urls,
        };
        let uses = step.step.uses.clone();
        // The step runs under the step's time limit; a panic is a failed attempt, never a dead worker.
        let fut = std::panic::AssertUnwindSafe(steps::run(&uses, input, &env));
        let guarded = futures_catch_unwind(fut);
        match tokio::time::timeout(timeout + Duration::from_secs(1), guarded).await {
            Err(_) => Err(StepError::retryable(format!("timed out after {timeout:?}"))),
            Ok(Err(panic)) => Err(StepError::permanent(format!("the step panicked: {panic}"))),
            Ok(Ok(result)) => result.map(StepResult::Outcome),
        }
    }
}

/// An edge kind to follow, with the loop item it carries (for `for_each` bodies).
type Route = (EdgeKind, Option<(usize, Value)>);

/// What running a step produced, before routing.
enum StepResult {
    Output(Value),
    Branch(Option<usize>),
    Outcome(Outcome),
}

/// Runs a future, turning a panic into an error.
async fn futures_catch_unwind<F: std::future::Future>(
    fut: std::panic::AssertUnwindSafe<F>,
) -> Result<F::Output, String> {
    use std::pin::pin;
    let mut fut = pin!(fut);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(payload) => {
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                std::task::Poll::Ready(Err(text))
            }
        }
    })
    .await
}

/// Exponential (or fixed) backoff with jitter: a random wait between half and all of the step.
pub fn backoff(retry: &plan::RetryPolicy, attempt: u32) -> Duration {
    let base = match retry.backoff {
        plan::Backoff::Fixed => retry.initial_ms,
        plan::Backoff::Exponential => retry
            .initial_ms
            .saturating_mul(1u64 << (attempt.saturating_sub(1)).min(30)),
    }
    .min(retry.max_ms.max(retry.initial_ms));
    let half = base / 2;
    Duration::from_millis(half + fastrand::u64(0..=half.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let retry = plan::RetryPolicy {
            attempts: 10,
            backoff: plan::Backoff::Exponential,
            initial_ms: 100,
            max_ms: 1000,
        };
        for attempt in 1..10 {
            let d = backoff(&retry, attempt).as_millis() as u64;
            let base = (100u64 << (attempt - 1)).min(1000);
            assert!(
                d >= base / 2 && d <= base + 1,
                "attempt {attempt}: {d}ms vs {base}ms"
            );
        }
    }
}
