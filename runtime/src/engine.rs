//! The engine: one worker loop per step, fed from in-memory queues that mirror the store. A
//! message is taken, its step runs, and in one durable commit the step's successors are
//! enqueued, its run recorded and the message acknowledged. Failures retry with exponential
//! backoff and jitter, then follow the step's `on_error`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::FutureExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, Semaphore, oneshot};
use weft_plan::{self as plan, Builtin, EdgeKind, OnError, StepRunStatus};

pub use crate::clock::now_ms;
use crate::dispatch::{Dispatch, Lane, LaneTable, StepQueue};
use crate::error::TriggerError;
use crate::inflight::InflightSlots;
use crate::instance::{InstanceMap, InstanceRt, StepRt};
use crate::json_view::{Document, JsonView};
use crate::metrics::{Metrics, StepLabels};
use crate::offline::{OfflineHooks, StepOverride};
use crate::redact::Redactor;
use crate::render::{self, Renderer};
use crate::scope::{Root, Scope};
use crate::steps::{self, ActionCall, Outcome, Reply, StepEnv, StepError};
use crate::store::{NewExecution, NewMessage, Op, Queue, StepRun, StoredMessage};

/// What travels with a message: everything the next step's templates may read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub instance: String,
    pub flow: String,
    pub step: String,
    /// Shared, not copied, by the envelopes of one execution and the templates that read it.
    pub trigger: Arc<Value>,
    #[serde(default)]
    pub steps: Arc<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Position in nested loops (`/3/1`), part of the idempotency key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// `trigger` as JSON text, when this process wrote it (for the execution's record): every
    /// message of the execution that leaves from here carries the same text instead of
    /// serializing the trigger again (see [`Envelope::to_json`]). Never stored.
    #[serde(skip)]
    pub trigger_json: Option<Arc<str>>,
}

impl Envelope {
    /// The envelope as JSON text, as `serde_json::to_string` writes it, with the trigger's
    /// text copied in when it was written before.
    pub fn to_json(&self) -> String {
        let Some(trigger) = &self.trigger_json else {
            return serde_json::to_string(self).expect("an envelope serializes");
        };
        let text = |s: &str| serde_json::to_string(s).expect("a string serializes");
        let steps = serde_json::to_string(&*self.steps).expect("step outputs serialize");
        let mut out = String::with_capacity(trigger.len() + steps.len() + 128);
        out.push_str("{\"instance\":");
        out.push_str(&text(&self.instance));
        out.push_str(",\"flow\":");
        out.push_str(&text(&self.flow));
        out.push_str(",\"step\":");
        out.push_str(&text(&self.step));
        out.push_str(",\"trigger\":");
        out.push_str(trigger);
        out.push_str(",\"steps\":");
        out.push_str(&steps);
        if let Some(item) = &self.item {
            out.push_str(",\"item\":");
            out.push_str(&serde_json::to_string(item).expect("an item serializes"));
        }
        if let Some(index) = self.index {
            out.push_str(",\"index\":");
            out.push_str(&index.to_string());
        }
        if !self.path.is_empty() {
            out.push_str(",\"path\":");
            out.push_str(&text(&self.path));
        }
        out.push('}');
        out
    }
}

/// What the engine is made of; see [`Engine::new`].
pub struct EngineParts {
    /// The durable queue: the embedded store, or another backend behind the same trait.
    pub store: Arc<dyn Queue>,
    pub dispatch: Arc<Dispatch>,
    pub instances: InstanceMap,
    pub renderer: Renderer,
    pub http: reqwest::Client,
    pub deny_private: bool,
    /// Base URLs of custom components' containers, by component.
    pub component_urls: HashMap<String, String>,
    pub redactor: Redactor,
    /// Marks of the messages running now, for quarantining poison messages (the embedded
    /// store's; the broker backend counts deliveries instead).
    pub inflight: Option<InflightSlots>,
    /// `weft test`'s mocks and virtual clock (see [`crate::offline`]).
    pub offline: Option<Arc<dyn OfflineHooks>>,
}

/// Everything the workers share.
pub struct Engine {
    store: Arc<dyn Queue>,
    dispatch: Arc<Dispatch>,
    /// Swapped whole by a reload.
    instances: ArcSwap<InstanceMap>,
    renderer: Renderer,
    http: reqwest::Client,
    deny_private: bool,
    component_urls: HashMap<String, String>,
    /// Swapped whole by a reload (it masks the secrets of every instance).
    redactor: ArcSwap<Redactor>,
    inflight: Option<InflightSlots>,
    offline: Option<Arc<dyn OfflineHooks>>,
    metrics: Metrics,
    /// Sync webhooks waiting for their `respond` step, by execution.
    waiters: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
    stopping: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// What running a step produced, before routing.
enum StepResult {
    Output(Value),
    Branch(Option<usize>),
    Outcome(Outcome),
}

/// An edge kind to follow, with the loop item it carries (for `for_each` bodies).
type Route = (EdgeKind, Option<(usize, Value)>);

/// A message on its way to a step: the step, and the envelope it gets.
type Hop = (Arc<StepRt>, Envelope);

/// One attempt of a step: its record for the history and what it produced.
struct Attempt {
    run: StepRun,
    result: Result<StepResult, StepError>,
}

/// What follows a failed attempt.
enum AfterFailure {
    /// Retry later, or stop the execution: the ops settle the message.
    Settled(Vec<Op>),
    /// `on_error: continue`: go on with this output.
    Continue(Value),
}

impl Engine {
    pub fn new(parts: EngineParts) -> Engine {
        Engine {
            store: parts.store,
            dispatch: parts.dispatch,
            instances: ArcSwap::from_pointee(parts.instances),
            renderer: parts.renderer,
            http: parts.http,
            deny_private: parts.deny_private,
            component_urls: parts.component_urls,
            redactor: ArcSwap::from_pointee(parts.redactor),
            inflight: parts.inflight,
            offline: parts.offline,
            metrics: Metrics::new(),
            waiters: Mutex::default(),
            stopping: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// Routes committed messages to the step queues.
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    pub fn store(&self) -> &dyn Queue {
        self.store.as_ref()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What masks every secret now (a reload swaps it).
    pub fn redactor(&self) -> Arc<Redactor> {
        self.redactor.load_full()
    }

    /// Masks the secrets of a reloaded set of instances from now on.
    pub fn set_redactor(&self, redactor: Redactor) {
        self.redactor.store(Arc::new(redactor));
    }

    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }

    /// Every instance now, keyed `<customer>/<integration>` (a reload swaps the whole map).
    pub fn instances(&self) -> Arc<InstanceMap> {
        self.instances.load_full()
    }

    /// Runs `instances` from now on (a reload; see [`crate::reload`]).
    pub fn set_instances(&self, instances: InstanceMap) {
        self.instances.store(Arc::new(instances));
    }

    /// The instance of `customer` that has a flow named `flow`.
    pub fn instance_with_flow(&self, customer: &str, flow: &str) -> Option<Arc<InstanceRt>> {
        self.instances
            .load()
            .values()
            .find(|i| i.customer == customer && i.flow(flow).is_some())
            .cloned()
    }

    /// Messages waiting in memory for a step's queue.
    pub fn queue_depth(&self, queue: &str) -> usize {
        self.dispatch.lane(queue).map_or(0, |l| l.len())
    }

    /// Messages waiting or in flight, for admission control at the gateway.
    pub fn pending(&self) -> usize {
        self.dispatch.pending.load(Ordering::Relaxed)
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Takes no new work: workers return once their queue is idle.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.idle.notify_waiters();
    }

    /// Steps running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Routes messages just committed (or found at start) to their queues.
    pub fn deliver(&self, messages: Vec<StoredMessage>) {
        self.dispatch.deliver(messages);
    }

    /// Registers a sync webhook's wait for its execution's `respond` step.
    pub fn await_reply(&self, execution: &str) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        self.lock_waiters().insert(execution.to_string(), tx);
        rx
    }

    /// Drops a wait (the caller gave up, or the event was not stored).
    pub fn forget_reply(&self, execution: &str) {
        self.lock_waiters().remove(execution);
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Reply>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a step (or a poll) needs besides its input.
    pub fn step_env<'a>(
        &'a self,
        instance: &'a InstanceRt,
        idempotency_key: &'a str,
        timeout: Duration,
        connection: Option<(&'a plan::Connection, Map<String, Value>)>,
        action: Option<ActionCall>,
    ) -> StepEnv<'a> {
        StepEnv {
            http: &self.http,
            redactor: self.redactor.load_full(),
            deny_private: self.deny_private,
            idempotency_key,
            timeout,
            plan: instance.plan(),
            connection,
            action,
            component_urls: &self.component_urls,
            offline: self.offline.as_deref(),
            flow: "",
            step: "",
        }
    }

    /// Starts an execution of a flow: one commit records it and enqueues its first message.
    /// Returns the execution id once durable.
    pub async fn start_execution(
        &self,
        instance: &InstanceRt,
        flow: &str,
        trigger: Value,
        extra: Vec<Op>,
    ) -> Result<String, TriggerError> {
        let id = ulid::Ulid::new().to_string();
        let ops = self.start_ops(instance, flow, trigger, &id, extra).await?;
        let committed = self.store.commit(ops).await?;
        self.release_replies(committed);
        self.metrics.executions.inc();
        Ok(id)
    }

    /// The ops that start an execution (also used inside larger commits: polls). The flow's
    /// first steps run here when they are fused (pure): their records go into the same commit,
    /// and only the first step with a side effect is enqueued.
    pub async fn start_ops(
        &self,
        instance: &InstanceRt,
        flow: &str,
        trigger: Value,
        id: &str,
        extra: Vec<Op>,
    ) -> Result<Vec<Op>, TriggerError> {
        let (start, first) = self.opening(instance, flow, trigger, id)?;
        let mut ops = vec![start];
        ops.extend(extra);
        let enqueued = match first {
            Some(first) => self.pass_on(instance, id, vec![first], &mut ops).await,
            None => 0,
        };
        ops.push(Op::Pending {
            execution: id.to_string(),
            delta: enqueued,
            at: now_ms(),
        });
        Ok(ops)
    }

    /// An execution's record, and its first step with the envelope it gets (none for a flow
    /// without steps).
    fn opening(
        &self,
        instance: &InstanceRt,
        flow: &str,
        trigger: Value,
        id: &str,
    ) -> Result<(Op, Option<Hop>), TriggerError> {
        let f = instance
            .flow(flow)
            .ok_or_else(|| TriggerError::UnknownFlow(flow.to_string()))?;
        // Written once: masked for the execution's record; its messages carry it as it is.
        let text = serde_json::to_string(&trigger).expect("a trigger serializes");
        let trigger_json: Arc<str> = Arc::from(text.as_str());
        let start = Op::StartExecution(NewExecution {
            id: id.to_string(),
            instance: instance.key.clone(),
            flow: flow.to_string(),
            trigger: self.redactor.load().json_text(text),
            started_at: now_ms(),
        });
        let first = f.entry.as_ref().map(|first| {
            let envelope = Envelope {
                instance: instance.key.clone(),
                flow: flow.to_string(),
                step: first.step.id.clone(),
                trigger: Arc::new(trigger),
                steps: Arc::default(),
                item: None,
                index: None,
                path: String::new(),
                trigger_json: Some(trigger_json),
            };
            (first.clone(), envelope)
        });
        Ok((start, first))
    }

    /// The queued message that carries `envelope` to `instance`'s `step`.
    fn message(
        instance: &InstanceRt,
        step: &StepRt,
        envelope: Envelope,
        execution: &str,
    ) -> NewMessage {
        NewMessage {
            queue: instance.queue_of(step),
            execution: execution.to_string(),
            visible_at: now_ms(),
            attempt: 1,
            body: envelope.to_json(),
            parsed: Some(Arc::new(envelope)),
        }
    }

    /// Runs the worker loop of one step until the engine stops, for every instance in
    /// `lanes` (the lanes of `queue`, in order): at most `concurrency` messages at once.
    pub async fn worker(
        self: Arc<Self>,
        step: Arc<StepRt>,
        queue: Arc<StepQueue>,
        lanes: Arc<LaneTable>,
        concurrency: usize,
    ) {
        let permits = Arc::new(Semaphore::new(concurrency));
        loop {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            let (index, message) = tokio::select! {
                m = queue.pop() => m,
                _ = self.idle.notified(), if self.is_stopping() => return,
            };
            if self.is_stopping() {
                queue.give_back(index, message); // stays in the store; runs after the restart
                return;
            }
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            let engine = self.clone();
            let (instance, lane) = lanes.load()[index].clone();
            let step = step.clone();
            tokio::spawn(async move {
                engine.handle(&instance, &step, &lane, message).await;
                engine.dispatch.settled(&lane);
                if engine.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
                    engine.idle.notify_waiters();
                }
                drop(permit);
            });
        }
    }

    /// Runs one message through its step and settles it in one commit.
    async fn handle(
        &self,
        instance: &InstanceRt,
        step: &StepRt,
        lane: &Lane,
        message: StoredMessage,
    ) {
        // Until its commit, the message is marked as running: should the step kill the
        // process, the next start counts it (see `inflight`).
        let running = self.inflight.as_ref().map(|s| s.claim(message.id));
        let parsed = match message.parsed.clone() {
            Some(envelope) => Ok(envelope),
            None => serde_json::from_str(&message.body).map(Arc::new),
        };
        let envelope = match parsed {
            Ok(e) => e,
            Err(e) => {
                let ops = self.unreadable(step, &message, &e.to_string());
                self.settle(ops, lane, message, running).await;
                return;
            }
        };
        let Attempt { mut run, result } = self
            .attempt(
                instance,
                step,
                &envelope,
                &message.execution,
                message.attempt,
            )
            .await;
        let result = match result {
            Ok(result) => result,
            Err(error) => match self.after_failure(step, &message, &mut run, error) {
                AfterFailure::Settled(ops) => {
                    self.settle(ops, lane, message, running).await;
                    return;
                }
                AfterFailure::Continue(output) => StepResult::Output(output),
            },
        };
        let ops = self
            .route(instance, step, &envelope, &message, result, run)
            .await;
        self.settle(ops, lane, message, running).await;
    }

    /// Commits what a message's step led to, then frees its in-flight slot: cleared if the
    /// message stays queued (a retry, a failed commit), left as it is if the commit took the
    /// message off the queue (see [`crate::inflight::Slot::settled`]).
    async fn settle(
        &self,
        ops: Vec<Op>,
        lane: &Lane,
        message: StoredMessage,
        running: Option<crate::inflight::Slot<'_>>,
    ) {
        let id = message.id;
        let taken_off = ops.iter().any(
            |op| matches!(op, Op::Ack(acked) | Op::DeadLetter { id: acked, .. } if *acked == id),
        );
        if self.commit_or_requeue(ops, lane, message).await
            && taken_off
            && let Some(slot) = running
        {
            slot.settled();
        }
    }

    /// A message whose envelope cannot be read: dead-lettered, and its execution failed (it
    /// cannot go on, and must not look succeeded).
    fn unreadable(&self, step: &StepRt, message: &StoredMessage, error: &str) -> Vec<Op> {
        tracing::error!(message = message.id, "unreadable message: {error}");
        self.give_up(
            message,
            &step.step.id,
            format!("unreadable message: {error}"),
        )
    }

    /// The ops that take a message out of its execution for good: its dead letter (the body
    /// with secrets masked), the execution failed with `error`, and one message fewer pending.
    pub fn give_up(&self, message: &StoredMessage, step: &str, error: String) -> Vec<Op> {
        let at = now_ms();
        vec![
            Op::DeadLetter {
                id: message.id,
                step: step.to_string(),
                error: error.clone(),
                at,
                body: Some(self.redactor.load().str(&message.body)),
            },
            Op::FailExecution {
                execution: message.execution.clone(),
                error: format!("step `{step}`: {error}"),
            },
            Op::Pending {
                execution: message.execution.clone(),
                delta: -1,
                at,
            },
        ]
    }

    /// Runs the step once, timing it and recording its (redacted) input.
    async fn attempt(
        &self,
        instance: &InstanceRt,
        step: &StepRt,
        envelope: &Envelope,
        execution: &str,
        attempt: u32,
    ) -> Attempt {
        let started_at = now_ms();
        let clock = Instant::now();
        let scope = self.scope(instance, envelope);
        let mut input_seen = None;
        // The idempotency key: one per execution, step and loop position. A fused step is
        // pure (no HTTP call, no component): it sends none.
        let key = if step.step.fused {
            String::new()
        } else {
            format!("{execution}:{}{}", step.step.id, envelope.path)
        };
        let result = self
            .run_step(instance, step, &key, &scope, &mut input_seen)
            .await;
        let elapsed = clock.elapsed();
        self.metrics
            .step_seconds
            .get_or_create(&StepLabels {
                queue: instance.queue_of(step),
            })
            .observe(elapsed.as_secs_f64());
        let run = StepRun {
            execution: execution.to_string(),
            step: step.step.id.clone(),
            attempt,
            status: StepRunStatus::Succeeded,
            input: Some(input_seen.unwrap_or_else(|| "null".to_string())),
            output: None,
            error: None,
            started_at,
            duration_ms: elapsed.as_millis() as i64,
        };
        Attempt { run, result }
    }

    /// A failed attempt: retry with backoff, or follow the step's `on_error`.
    fn after_failure(
        &self,
        step: &StepRt,
        message: &StoredMessage,
        run: &mut StepRun,
        error: StepError,
    ) -> AfterFailure {
        let retry = &step.step.retry;
        let text = self.redactor.load().str(&error.message);
        let id = &step.step.id;
        let execution = &message.execution;
        let at = now_ms();
        let labels = StepLabels {
            queue: message.queue.clone(),
        };
        run.error = Some(text.clone());
        if error.retryable && message.attempt < retry.attempts {
            self.metrics.retries.get_or_create(&labels).inc();
            let delay = backoff(retry, message.attempt);
            tracing::warn!(step = %id, execution = %execution, attempt = message.attempt, "attempt failed, retrying in {delay:?}: {text}");
            run.status = StepRunStatus::Retrying;
            // Offline, the wait passes on the virtual clock: the retry is due at once.
            let wait = match &self.offline {
                Some(offline) => {
                    offline.advance(backoff_base(retry, message.attempt));
                    0
                }
                None => delay.as_millis() as i64,
            };
            return AfterFailure::Settled(vec![
                Op::Reschedule {
                    id: message.id,
                    visible_at: at + wait,
                    attempt: message.attempt + 1,
                },
                Op::RecordStep(run.clone()),
            ]);
        }
        run.status = StepRunStatus::Failed;
        if step.step.on_error == OnError::Continue {
            tracing::warn!(step = %id, execution = %execution, "step failed, continuing: {text}");
            return AfterFailure::Continue(json!({ "error": text }));
        }
        let dead = step.step.on_error == OnError::DeadLetter;
        tracing::error!(step = %id, execution = %execution, "step failed{}: {text}", if dead { ", dead-lettered" } else { "" });
        let settle = if dead {
            self.metrics.dead_letters.get_or_create(&labels).inc();
            Op::DeadLetter {
                id: message.id,
                step: id.clone(),
                error: text.clone(),
                at,
                // What the step's data held of secrets is masked; a replay reads config and
                // connections afresh, so templates over `config.<secret>` get real values.
                body: Some(self.redactor.load().str(&message.body)),
            }
        } else {
            Op::Ack(message.id)
        };
        AfterFailure::Settled(vec![
            settle,
            Op::RecordStep(run.clone()),
            Op::FailExecution {
                execution: execution.clone(),
                error: format!("step `{id}`: {text}"),
            },
            Op::Pending {
                execution: execution.clone(),
                delta: -1,
                at,
            },
        ])
    }

    /// Routes what a step produced along its edges: the ack, the successors (fused ones run
    /// here), the step's record, a sync reply and the execution's pending count, for one commit.
    async fn route(
        &self,
        instance: &InstanceRt,
        step: &StepRt,
        envelope: &Envelope,
        message: &StoredMessage,
        result: StepResult,
        mut run: StepRun,
    ) -> Vec<Op> {
        let mut ops = vec![Op::Ack(message.id)];
        let (output, routes) =
            self.produce(instance, envelope, &message.execution, result, &mut ops);
        if run.status == StepRunStatus::Succeeded {
            run.output = Some(self.redactor.load().json(&output));
        }
        let next = self.successors(instance, step, envelope, routes, output);
        ops.push(Op::RecordStep(run));
        let enqueued = self
            .pass_on(instance, &message.execution, next, &mut ops)
            .await;
        ops.push(Op::Pending {
            execution: message.execution.clone(),
            delta: enqueued - 1,
            at: now_ms(),
        });
        ops
    }

    /// What a step produced, and which of its edges carry it on (with a loop item each); a
    /// reply or a dispatch adds its ops to `ops`.
    fn produce(
        &self,
        instance: &InstanceRt,
        envelope: &Envelope,
        execution: &str,
        result: StepResult,
        ops: &mut Vec<Op>,
    ) -> (Value, Vec<Route>) {
        match result {
            StepResult::Output(v) | StepResult::Outcome(Outcome::Output(v)) => {
                (v, vec![(EdgeKind::Next, None)])
            }
            StepResult::Branch(choice) => (
                json!({ "case": choice.map_or(json!("default"), |c| json!(c)) }),
                vec![(choice.map_or(EdgeKind::Default, EdgeKind::Case), None)],
            ),
            StepResult::Outcome(Outcome::FanOut(items)) => {
                let out = json!({ "count": items.len() });
                let mut routes: Vec<Route> = items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| (EdgeKind::Body, Some((i, item))))
                    .collect();
                routes.push((EdgeKind::Next, None));
                (out, routes)
            }
            StepResult::Outcome(Outcome::Respond(r)) => {
                let out =
                    crate::render::object([("status", r.status.into()), ("body", r.body.clone())]);
                ops.push(Op::Reply {
                    execution: execution.to_string(),
                    reply: r,
                });
                (out, vec![(EdgeKind::Next, None)])
            }
            StepResult::Outcome(Outcome::Dispatch { flow, payload }) => {
                let (out, start) = self.dispatch_ops(instance, envelope, execution, &flow, payload);
                ops.extend(start);
                (out, vec![(EdgeKind::Next, None)])
            }
        }
    }

    /// Passes messages on to their steps: a fused step runs here, now, and its record (and
    /// reply) joins `ops`, and so on along its own edges; every other step's message is
    /// enqueued. Returns how many messages were enqueued.
    ///
    /// A fused step is pure, so running it again after a crash gives the same result: it needs
    /// no durable hop of its own. A failed inline run leaves no trace; the step's message is
    /// enqueued instead, and its own queue retries it and follows its `on_error`.
    async fn pass_on(
        &self,
        instance: &InstanceRt,
        execution: &str,
        successors: Vec<Hop>,
        ops: &mut Vec<Op>,
    ) -> i64 {
        let mut work: std::collections::VecDeque<_> = successors.into();
        let mut enqueued = 0;
        while let Some((step, envelope)) = work.pop_front() {
            if step.step.fused {
                let Attempt { mut run, result } =
                    self.attempt(instance, &step, &envelope, execution, 1).await;
                if let Ok(result) = result {
                    let (output, routes) =
                        self.produce(instance, &envelope, execution, result, ops);
                    run.output = Some(self.redactor.load().json(&output));
                    work.extend(self.successors(instance, &step, &envelope, routes, output));
                    ops.push(Op::RecordStep(run));
                    continue;
                }
            }
            ops.push(Op::Enqueue(Self::message(
                instance, &step, envelope, execution,
            )));
            enqueued += 1;
        }
        enqueued
    }

    /// The ops that start the dispatched flow, and the dispatch step's output. The compiler
    /// checks dispatch targets; a target missing at run time is an error in the step's output.
    /// The dispatched flow's first step is enqueued, fused or not (its queue serves it).
    fn dispatch_ops(
        &self,
        instance: &InstanceRt,
        envelope: &Envelope,
        execution: &str,
        flow: &str,
        payload: Value,
    ) -> (Value, Vec<Op>) {
        let id = ulid::Ulid::new().to_string();
        let trigger = json!({ "body": payload, "dispatched_from": { "flow": envelope.flow, "execution": execution } });
        match self.opening(instance, flow, trigger, &id) {
            Ok((start, first)) => {
                let mut ops = vec![start];
                let delta = i64::from(first.is_some());
                ops.extend(
                    first.map(|(step, env)| Op::Enqueue(Self::message(instance, &step, env, &id))),
                );
                ops.push(Op::Pending {
                    execution: id.clone(),
                    delta,
                    at: now_ms(),
                });
                (json!({ "execution": id, "flow": flow }), ops)
            }
            Err(e) => {
                tracing::error!("dispatch to `{flow}`: {e}");
                (json!({ "error": e.to_string(), "flow": flow }), Vec::new())
            }
        }
    }

    /// Commits what settles a message. A failed commit (a full disk, say) is retried with
    /// backoff — the step's work is kept, never redone. Should the engine stop meanwhile, the
    /// message goes back to its queue: it is still in the store, so nothing is lost, and it runs
    /// again at the next start. Returns whether the commit happened.
    async fn commit_or_requeue(&self, ops: Vec<Op>, lane: &Lane, message: StoredMessage) -> bool {
        match self.commit_with_retry(ops).await {
            Ok(committed) => {
                self.release_replies(committed);
                true
            }
            Err(e) if self.store.halted().is_some() => {
                // The store stopped for good: the message is in it (or its commit was), so the
                // next start runs it again if it must; running it again here would repeat its
                // side effect for nothing.
                tracing::error!(
                    "store commit failed, the store has stopped; the message runs again at the next start: {e}"
                );
                false
            }
            Err(e) => {
                tracing::error!(
                    "store commit failed while stopping; the message runs again at the next start: {e}"
                );
                self.dispatch.requeue(lane, message);
                false
            }
        }
    }

    /// Answers the sync webhooks waiting here for what a commit released: `respond` steps'
    /// replies first (the same commit may also finish the execution), then a 502 for each
    /// execution that ended without one.
    pub fn release_replies(&self, committed: crate::store::Committed) {
        let mut waiters = self.lock_waiters();
        for (execution, reply) in committed.replies {
            if let Some(waiter) = waiters.remove(&execution) {
                let _ = waiter.send(reply);
            }
        }
        for (execution, status) in committed.finished {
            if let Some(waiter) = waiters.remove(&execution) {
                let _ = waiter.send(Reply {
                    status: 502,
                    headers: Default::default(),
                    body: json!({ "error": format!("the flow ended ({status}) without a `respond` step"), "execution_id": execution }),
                });
            }
        }
    }

    /// Retries a commit with backoff (50 ms doubling to 5 s) until it succeeds or the engine
    /// stops.
    async fn commit_with_retry(
        &self,
        ops: Vec<Op>,
    ) -> Result<crate::store::Committed, crate::store::StoreError> {
        let mut delay = Duration::from_millis(50);
        let mut ops = ops;
        loop {
            // The ops come back with a failure: no copy is made in case one is needed.
            match self.store.commit_keeping(ops).await {
                Ok(committed) => return Ok(committed),
                Err((e, None)) => return Err(e),
                Err((e, Some(_))) if self.is_stopping() => return Err(e),
                Err((e, Some(back))) => {
                    tracing::error!("store commit failed, retrying the commit in {delay:?}: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    ops = back;
                }
            }
        }
    }

    /// What a message's templates read: path reads take the trigger, step outputs, config
    /// and loop item as they are; other templates get the context of [`Engine::context`].
    fn scope<'a>(&'a self, instance: &'a InstanceRt, env: &'a Envelope) -> Scope<'a> {
        let mut roots = vec![
            ("trigger", Root::Value(&env.trigger)),
            ("steps", Root::Map(&env.steps)),
            ("config", Root::Value(&instance.config)),
            ("instance", Root::Value(&instance.instance_value)),
        ];
        if let Some(item) = &env.item {
            roots.push(("item", Root::Value(item)));
        }
        Scope::new(roots, move || Self::context(instance, env))
    }

    /// The template context of a message. Config and `instance` are converted once per
    /// instance; the trigger and step outputs are read where templates read them.
    fn context(instance: &InstanceRt, env: &Envelope) -> minijinja::Value {
        use minijinja::value::Serde;
        let mut ctx = std::collections::BTreeMap::new();
        ctx.insert(
            "trigger",
            JsonView::of(Document::Value(env.trigger.clone())),
        );
        ctx.insert("steps", JsonView::of(Document::Map(env.steps.clone())));
        ctx.insert("config", instance.config_template.clone());
        ctx.insert("instance", instance.instance_template.clone());
        ctx.insert("connections", instance.connections_template.clone());
        if let Some(item) = &env.item {
            ctx.insert("item", minijinja::Value::from(Serde(item)));
            ctx.insert("index", minijinja::Value::from(env.index.unwrap_or(0)));
        }
        minijinja::Value::from(ctx)
    }

    /// The targets of this step's routes, with the envelopes they get: the step's output is
    /// added to each, copied for all but the last, which takes it.
    fn successors(
        &self,
        instance: &InstanceRt,
        step: &StepRt,
        envelope: &Envelope,
        routes: Vec<Route>,
        output: Value,
    ) -> Vec<Hop> {
        let mut next = Vec::new();
        for (kind, item) in routes {
            next.extend(self.follow(instance, step, envelope, kind, item));
        }
        if let Some(((_, last), rest)) = next.split_last_mut() {
            for (_, envelope) in rest {
                Arc::make_mut(&mut envelope.steps).insert(step.step.id.clone(), output.clone());
            }
            Arc::make_mut(&mut last.steps).insert(step.step.id.clone(), output);
        }
        next
    }

    /// The targets of this step's edges of one kind, with the envelopes they get (without the
    /// step's output: see [`Engine::successors`]).
    fn follow(
        &self,
        instance: &InstanceRt,
        step: &StepRt,
        envelope: &Envelope,
        kind: EdgeKind,
        item: Option<(usize, Value)>,
    ) -> Vec<Hop> {
        let Some(flow) = instance.flow(&envelope.flow) else {
            return Vec::new();
        };
        step.edges
            .iter()
            .filter(|e| e.kind == kind)
            .filter_map(|e| {
                let target = flow.steps.get(&e.to)?;
                let mut next = envelope.clone();
                next.step = e.to.clone();
                if let Some((i, value)) = &item {
                    next.item = Some(value.clone());
                    next.index = Some(*i);
                    next.path = format!("{}/{i}", envelope.path);
                }
                Some((target.clone(), next))
            })
            .collect()
    }

    /// Renders the step's input and runs it under its time limit; a panic is a failed
    /// attempt, never a dead worker.
    async fn run_step(
        &self,
        instance: &InstanceRt,
        step: &StepRt,
        key: &str,
        scope: &Scope<'_>,
        input_seen: &mut Option<String>,
    ) -> Result<StepResult, StepError> {
        let permanent = |e: crate::error::TemplateError| StepError::permanent(e.to_string());
        if let Some(replaced) = self
            .offline
            .as_ref()
            .and_then(|o| o.step(&step.flow, &step.step.id))
        {
            return match replaced {
                StepOverride::Output(output) => Ok(StepResult::Output(output)),
                StepOverride::Error { status, message } if StepOverride::retryable(status) => {
                    Err(StepError::retryable(message))
                }
                StepOverride::Error { message, .. } => Err(StepError::permanent(message)),
            };
        }
        if step.step.uses.is(Builtin::Branch) {
            for (i, case) in step.cases.iter().enumerate() {
                if render::truthy(&render::render_in(case, scope).map_err(permanent)?) {
                    return Ok(StepResult::Branch(Some(i)));
                }
            }
            return Ok(StepResult::Branch(None));
        }
        let input = render::render_in(&step.with, scope).map_err(permanent)?;
        *input_seen = Some(self.redactor.load().json(&input));
        let connection = match &step.step.connection {
            Some(name) => {
                let conn = instance.plan().connections.get(name);
                let fields = instance.connections.get(name);
                match conn.zip(fields) {
                    Some((conn, fields)) => Some((conn, fields.clone())),
                    None => {
                        return Err(StepError::permanent(format!("unknown connection `{name}`")));
                    }
                }
            }
            None => None,
        };
        let action = step
            .action
            .as_ref()
            .map(|a| a.render(&input, connection.as_ref().map(|(_, f)| f)))
            .transpose()
            .map_err(permanent)?;
        let timeout = Duration::from_millis(step.step.timeout_ms);
        let mut env = self.step_env(instance, key, timeout, connection, action);
        env.flow = &step.flow;
        env.step = &step.step.id;
        let run = std::panic::AssertUnwindSafe(steps::run(&step.step.uses, input, &env));
        let outcome = match tokio::time::timeout(
            timeout + Duration::from_secs(1),
            run.catch_unwind(),
        )
        .await
        {
            Err(_) => Err(StepError::retryable(format!("timed out after {timeout:?}"))),
            Ok(Err(panic)) => Err(StepError::permanent(format!(
                "the step panicked: {}",
                panic_message(&panic)
            ))),
            Ok(Ok(result)) => result,
        }?;
        if let Outcome::Dispatch { flow, .. } = &outcome
            && instance.flow(flow).is_none()
        {
            return Err(StepError::permanent(format!(
                "`{}` has no flow `{flow}` to dispatch to",
                instance.integration()
            )));
        }
        Ok(StepResult::Outcome(outcome))
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The wait after failed attempt `attempt`, before jitter: exponential (or fixed), capped.
/// `weft test`'s virtual clock advances by it, so that its reports do not vary.
pub fn backoff_base(retry: &plan::RetryPolicy, attempt: u32) -> Duration {
    let ms = match retry.backoff {
        plan::Backoff::Fixed => retry.initial_ms,
        plan::Backoff::Exponential => retry
            .initial_ms
            .saturating_mul(1u64 << (attempt.saturating_sub(1)).min(30)),
    }
    .min(retry.max_ms.max(retry.initial_ms));
    Duration::from_millis(ms)
}

/// Exponential (or fixed) backoff with jitter: a random wait between half and all of the step.
pub fn backoff(retry: &plan::RetryPolicy, attempt: u32) -> Duration {
    let base = backoff_base(retry, attempt).as_millis() as u64;
    let half = base / 2;
    Duration::from_millis(half + fastrand::u64(0..=half.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_with_its_triggers_text_writes_what_serde_writes() {
        let trigger = json!({ "body": { "id": "o-1", "note": "a \"quoted\"\nline", "n": [1, 2.5, null] }, "headers": { "x-a": "b" } });
        let mut steps = Map::new();
        steps.insert("shape".into(), json!({ "total": 12.5, "ok": true }));
        let mut envelope = Envelope {
            instance: "acme/orders".into(),
            flow: "sync \"it\"".into(),
            step: "push".into(),
            trigger: Arc::new(trigger.clone()),
            steps: Arc::new(steps),
            item: None,
            index: None,
            path: String::new(),
            trigger_json: None,
        };
        let text = serde_json::to_string(&trigger).unwrap().into();
        for (item, index, path) in [
            (None, None, ""),
            (Some(json!({ "sku": "A" })), Some(3), "/3"),
            (Some(json!("x")), Some(0), "/0/1"),
        ] {
            envelope.item = item;
            envelope.index = index;
            envelope.path = path.into();
            envelope.trigger_json = None;
            let expected = serde_json::to_string(&envelope).unwrap();
            assert_eq!(envelope.to_json(), expected);
            envelope.trigger_json = Some(Arc::clone(&text));
            assert_eq!(envelope.to_json(), expected);
            let back: Envelope = serde_json::from_str(&envelope.to_json()).unwrap();
            assert_eq!(*back.trigger, trigger);
        }
    }

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
