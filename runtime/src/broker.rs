//! The NATS JetStream backend of [`Queue`]: messages live in one work-queue stream per flow,
//! one durable pull consumer per step (shared by the step's replicas); history, trigger state,
//! claims and dead letters stay in one SQLite [`Store`]: this process's (`weft run --broker`,
//! `weft gateway`), or, for a step worker in its own container (`weft step`), the gateway's,
//! which applies the history the workers publish on the instance's history stream.
//!
//! A commit keeps weft's promise without a shared transaction: claims (and the execution's row)
//! are applied first, so a duplicate fails the request before anything is published; then every
//! successor is published and its acknowledgement from the broker awaited; then the history is
//! committed (a step worker publishes it, before the successors, so that the gateway knows an
//! execution before its later steps report); only then is the input message settled (ack, nak
//! with a delay, or terminated after its dead letter is recorded). A crash between these steps
//! can only run work again, and what a rerun publishes carries the same `Nats-Msg-Id` as the
//! first run (derived from the input message's stream sequence), so the broker drops it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt as _;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use weft_plan::broker_names::history_subject;
use weft_plan::broker_names::{self, history_stream};

use crate::Role;
use crate::clock::now_ms;
use crate::engine::{Engine, Envelope};
use crate::instance::{InstanceRt, StepRt};
use crate::store::{
    CommitFuture, Committed, DeadLetterRecord, Op, Queue, Store, StoreError, StoredMessage,
};

/// Header carrying a message's execution id.
const EXECUTION_HEADER: &str = "Weft-Execution";
/// Added to a step's timeout to make its consumer's `ack_wait`.
const ACK_WAIT_MARGIN: Duration = Duration::from_secs(5);
/// Deliveries beyond a step's retry attempts after which a message is dead-lettered
/// (it was redelivered that often without being settled: a crash loop).
const EXTRA_DELIVERIES: u32 = 3;
/// Messages fetched at once by a step's fetch loop, at most.
const BATCH: usize = 64;
/// How long settling a message with the broker may take.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Publishes of one message, at most, before a commit fails (see [`JetStreamQueue::publish`]).
const PUBLISH_TRIES: u32 = 5;
/// How long the declarations at start wait for the broker to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A failure talking to the broker.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct BrokerError {
    action: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

fn broker<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    action: impl Into<String>,
) -> impl FnOnce(E) -> StoreError {
    let action = action.into();
    move |e| {
        StoreError::Broker(Arc::new(BrokerError {
            action,
            source: e.into(),
        }))
    }
}

/// A message taken from the broker, kept until it is settled.
struct Held {
    message: jetstream::Message,
    _permit: OwnedSemaphorePermit,
}

/// How a commit settles one input message.
enum Settle {
    Ack(i64),
    Nak(i64, Duration),
    Term(i64),
}

/// Where a commit's history (step runs, pending counts, dead letters, replies) goes.
pub enum HistorySink {
    /// This process's store (`weft run --broker`, `weft gateway`).
    Store(Store),
    /// The instance's history stream, applied by its gateway (`weft step`): `subject` is
    /// [`history_subject`] of the one instance the process runs.
    Stream { subject: String },
}

/// A batch of history published by a step worker.
#[derive(serde::Serialize, serde::Deserialize)]
struct HistoryBatch {
    ops: Vec<Op>,
}

/// The JetStream-backed queue.
pub struct JetStreamQueue {
    js: jetstream::Context,
    history: HistorySink,
    replicas: usize,
    held: Mutex<HashMap<i64, Held>>,
    next_id: AtomicI64,
    /// Whether the fleet history stream is declared (and applied, in the gateway).
    fleet_history: AtomicBool,
    /// Woken when the client (re)connects: pull requests waiting at the broker may be gone.
    reconnected: Arc<tokio::sync::Notify>,
    /// The processes run a fleet: history travels on the fleet's stream only (see
    /// [`crate::Options::fleet`]).
    fleet: bool,
}

/// The stable broker-side de-duplication id of a message to publish.
fn message_id(queue: &str, execution: &str, body: &str) -> String {
    let mut h = Sha256::new();
    for part in [queue, execution, body] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

impl JetStreamQueue {
    /// Connects to the broker at `url`; history and state go to `history`.
    pub async fn connect(
        url: &str,
        history: HistorySink,
        replicas: usize,
        fleet: bool,
    ) -> Result<JetStreamQueue, StoreError> {
        // `nats://a:4222,nats://b:4222`: any node of a cluster (the client learns the others).
        let servers = url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(broker(format!("reading the broker URL `{url}`")))?;
        // Reconnect quickly (every 100 ms, growing to 1 s): while the broker is away, webhooks
        // get 503 and settles wait. A broker not up yet at start (containers start together)
        // is waited for: the declarations at start are retried.
        let reconnected = Arc::new(tokio::sync::Notify::new());
        let woken = reconnected.clone();
        let client = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let woken = woken.clone();
                async move {
                    if matches!(event, async_nats::Event::Connected) {
                        woken.notify_waiters();
                    }
                }
            })
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100 * attempts.min(10) as u64)
            })
            .retry_on_initial_connect()
            .connect(servers)
            .await
            .map_err(broker(format!("connecting to {url}")))?;
        Ok(JetStreamQueue {
            js: jetstream::new(client),
            history,
            replicas: replicas.max(1),
            held: Mutex::default(),
            next_id: AtomicI64::new(1),
            fleet_history: AtomicBool::new(false),
            reconnected,
            fleet,
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates (or updates) the stream of every enabled flow and each instance's history
    /// stream, then, for each step `role` runs, the step's consumer and a fetch loop. The
    /// gateway also applies the history its instances' step workers publish.
    pub async fn start(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        step_concurrency: usize,
        role: &Role,
    ) -> Result<(), StoreError> {
        let instances: Vec<Arc<InstanceRt>> = engine.instances().values().cloned().collect();
        self.start_instances(engine, &instances, &|_| true, step_concurrency, role)
            .await
    }

    /// [`JetStreamQueue::start`] for `instances`, new to this process (at start, or added or
    /// replaced by a reload): the gateway applies the history streams of those `is_new` says
    /// it does not follow yet. A fetch loop ends when its instance is retired.
    pub async fn start_instances(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        instances: &[Arc<InstanceRt>],
        is_new: &(dyn Fn(&str) -> bool + Sync),
        step_concurrency: usize,
        role: &Role,
    ) -> Result<(), StoreError> {
        // A fleet's step workers publish their history on one stream, and so do workers of
        // several instances: the gateway applies it beside its instances' own, if any.
        let several = engine.instances().len() > 1;
        if (self.fleet || several) && !self.fleet_history.swap(true, Ordering::Relaxed) {
            let fleet = self
                .declare_stream(
                    broker_names::FLEET_HISTORY_STREAM.to_string(),
                    vec![broker_names::FLEET_HISTORY_SUBJECT.to_string()],
                )
                .await?;
            self.apply_history_here(engine, role, &fleet).await?;
        }
        for instance in instances {
            // One bundle's processes: the instance's own history stream.
            if !self.fleet && is_new(&instance.key) {
                let history = self.history_stream(instance).await?;
                self.apply_history_here(engine, role, &history).await?;
            }
            for flow in instance.enabled_flows() {
                let steps: Vec<&Arc<StepRt>> =
                    instance.version.flows[&flow.name].steps.values().collect();
                let stream = self.stream(instance, &flow.name, &steps).await?;
                for step in steps {
                    if !role.runs_step(flow, &step.step) {
                        continue;
                    }
                    let consumer = self
                        .consumer(&stream, step, instance.queue_of(step))
                        .await?;
                    let concurrency = step_concurrency.max(1) * role.replicas_here(&step.step);
                    tokio::spawn(self.clone().fetch_loop(
                        engine.clone(),
                        instance.clone(),
                        step.clone(),
                        consumer,
                        concurrency,
                    ));
                }
            }
        }
        Ok(())
    }

    /// In the gateway (which keeps the store), applies what is published on `history`.
    async fn apply_history_here(
        &self,
        engine: &Arc<Engine>,
        role: &Role,
        history: &stream::Stream,
    ) -> Result<(), StoreError> {
        if let (Role::Gateway, HistorySink::Store(store)) = (role, &self.history) {
            let consumer = history
                .create_consumer(consumer::pull::Config {
                    durable_name: Some("gateway".into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                })
                .await
                .map_err(broker("creating the history consumer"))?;
            tokio::spawn(apply_history(
                engine.clone(),
                store.clone(),
                consumer,
                self.reconnected.clone(),
            ));
        }
        Ok(())
    }

    async fn stream(
        &self,
        instance: &InstanceRt,
        flow: &str,
        steps: &[&Arc<StepRt>],
    ) -> Result<stream::Stream, StoreError> {
        let stream_name =
            broker_names::flow_stream(&instance.customer, instance.integration(), flow);
        // Sorted: every process of a bundle declares the same configuration.
        let mut subjects: Vec<String> = steps.iter().map(|s| instance.queue_of(s)).collect();
        subjects.sort();
        self.declare_stream(stream_name, subjects).await
    }

    /// Creates a work-queue stream, or updates it to this configuration. The processes of a
    /// bundle start together and declare the same streams: a declaration that loses a race
    /// to another is tried again.
    async fn declare_stream(
        &self,
        stream_name: String,
        subjects: Vec<String>,
    ) -> Result<stream::Stream, StoreError> {
        let config = stream::Config {
            name: stream_name.clone(),
            subjects,
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        let what = format!("creating stream {stream_name}");
        until_ready(&what, || async {
            self.js
                .create_or_update_stream(config.clone())
                .await
                .map_err(|e| e.to_string())?;
            self.js
                .get_stream(&stream_name)
                .await
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// The instance's history stream: step workers publish, its gateway applies.
    async fn history_stream(&self, instance: &InstanceRt) -> Result<stream::Stream, StoreError> {
        let (customer, integration) = (&instance.customer, instance.integration());
        let stream_name = history_stream(customer, integration);
        self.declare_stream(stream_name, vec![history_subject(customer, integration)])
            .await
    }

    async fn consumer(
        &self,
        stream: &stream::Stream,
        step: &StepRt,
        queue: String,
    ) -> Result<consumer::PullConsumer, StoreError> {
        let durable = broker_names::step_consumer(&step.step.id);
        let config = consumer::pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: queue,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_millis(step.step.timeout_ms) + ACK_WAIT_MARGIN,
            max_deliver: i64::from(step.step.retry.attempts + EXTRA_DELIVERIES + 2),
            ..Default::default()
        };
        until_ready(&format!("creating consumer {durable}"), || {
            stream.create_consumer(config.clone())
        })
        .await
    }

    /// Pulls the step's messages in batches, at most `concurrency` unsettled at once, and
    /// hands them to the engine's in-memory queue.
    async fn fetch_loop(
        self: Arc<Self>,
        engine: Arc<Engine>,
        instance: Arc<InstanceRt>,
        step: Arc<StepRt>,
        consumer: consumer::PullConsumer,
        concurrency: usize,
    ) {
        let slots = Arc::new(Semaphore::new(concurrency));
        let what = format!("step `{}`", step.step.id);
        let mut idle = IdleBackoff::default();
        while !engine.is_stopping() && !instance.is_retired() {
            let Ok(first) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut permits = vec![first];
            while permits.len() < BATCH {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let expires = idle.expires();
            let Some(mut messages) = fetch(&consumer, permits.len(), expires, &what).await else {
                continue;
            };
            let mut got = 0;
            while let Some(next) = next_or_woken(&mut messages, &self.reconnected).await {
                let (Ok(message), Some(permit)) = (next, permits.pop()) else {
                    break;
                };
                got += 1;
                self.take(&engine, &step, message, permit).await;
            }
            idle.got(got);
        }
    }

    /// Keeps a fetched message until it is settled, and delivers it (or dead-letters it when
    /// it was delivered too often: a crash loop).
    async fn take(
        &self,
        engine: &Engine,
        step: &StepRt,
        message: jetstream::Message,
        permit: OwnedSemaphorePermit,
    ) {
        let attempt = message
            .info()
            .map_or(1, |i| u32::try_from(i.delivered).unwrap_or(u32::MAX));
        let execution = message
            .headers
            .as_ref()
            .and_then(|h| h.get(EXECUTION_HEADER))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        let stored = StoredMessage {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            queue: message.subject.to_string(),
            execution,
            visible_at: 0,
            attempt,
            body: String::from_utf8_lossy(&message.payload).into_owned(),
            crashes: 0,
            parsed: None,
        };
        self.held().insert(
            stored.id,
            Held {
                message,
                _permit: permit,
            },
        );
        if attempt > step.step.retry.attempts + EXTRA_DELIVERIES {
            let ops = crash_loop(engine, step, &stored);
            if let Err(e) = self.commit_ops(ops).await {
                tracing::error!("dead-lettering a crash-looping message: {e}");
            }
            return;
        }
        engine.deliver(vec![stored]);
    }

    /// Applies a request in the order that keeps the promise (see the module's doc).
    async fn commit_ops(&self, ops: Vec<Op>) -> Result<Committed, StoreError> {
        let origin = self.origin(&ops);
        let store = match &self.history {
            HistorySink::Store(store) => store,
            HistorySink::Stream { subject } => {
                return self.commit_via_stream(subject, ops, origin).await;
            }
        };
        // Claims, new executions and their first pending count: a step worker's history may
        // reach this store (the gateway's) as soon as the first message is published.
        let started: Vec<&str> = ops
            .iter()
            .filter_map(|o| match o {
                Op::StartExecution(e) => Some(e.id.as_str()),
                _ => None,
            })
            .collect();
        let is_first = |o: &Op| match o {
            Op::Claim { .. } | Op::StartExecution(_) => true,
            Op::Pending { execution, .. } => started.contains(&execution.as_str()),
            _ => false,
        };
        let first: Vec<Op> = ops.iter().filter(|o| is_first(o)).cloned().collect();
        let rest: Vec<Op> = ops.iter().filter(|o| !is_first(o)).cloned().collect();
        if !first.is_empty() {
            store.commit(first.clone()).await?;
        }
        let outgoing = self.outgoing(&ops, origin.as_ref())?;
        if let Err(e) = self.publish(outgoing).await {
            // A request that settles a message is retried as is by the engine; one that starts
            // executions (a webhook, a trigger) is not: take its claims back.
            if origin.is_none() {
                undo(store, &first).await;
            }
            return Err(e);
        }
        let (history, settle) = self.split(rest, false);
        let committed = if history.is_empty() {
            Committed::default()
        } else {
            store.commit(history).await?
        };
        for s in settle {
            self.settle(s).await;
        }
        Ok(committed)
    }

    /// A step worker's commit: the history goes to the gateway through the instance's history
    /// stream, before the successors (see the module's doc).
    async fn commit_via_stream(
        &self,
        subject: &str,
        ops: Vec<Op>,
        origin: Option<Origin>,
    ) -> Result<Committed, StoreError> {
        let outgoing = self.outgoing(&ops, origin.as_ref())?;
        let (history, settle) = self.split(ops, true);
        if !history.is_empty() {
            let body = serde_json::to_vec(&HistoryBatch { ops: history })
                .map_err(broker("encoding the history"))?;
            let id = match &origin {
                Some(origin) => format!("history:{}", origin.key),
                None => message_id(subject, "", &String::from_utf8_lossy(&body)),
            };
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            self.js
                .publish_with_headers(subject.to_string(), headers, body.into())
                .await
                .map_err(broker(format!("publishing to {subject}")))?
                .await
                .map_err(broker(format!("publishing to {subject} (acknowledgement)")))?;
        }
        self.publish(outgoing).await?;
        for s in settle {
            self.settle(s).await;
        }
        Ok(Committed::default())
    }

    /// The held message a request settles, as a key for the ids of what it publishes: a
    /// rerun of the same delivery (after a crash) publishes the same ids, which the broker
    /// drops; a retry (a later delivery after a nak) is a new attempt with new ids.
    fn origin(&self, ops: &[Op]) -> Option<Origin> {
        let (id, retry) = ops.iter().find_map(|op| match op {
            Op::Ack(id) | Op::DeadLetter { id, .. } => Some((*id, false)),
            Op::Reschedule { id, .. } => Some((*id, true)),
            _ => None,
        })?;
        let held = self.held();
        let info = held.get(&id)?.message.info().ok()?;
        let mut key = format!("{}:{}", info.stream, info.stream_sequence);
        if retry {
            key.push_str(&format!(":{}", info.delivered));
        }
        Some(Origin { key })
    }

    /// Separates what a request records from how it settles its input message. `with_first`:
    /// the claims and new executions go with the history (a step worker has no store of its own).
    fn split(&self, ops: Vec<Op>, with_first: bool) -> (Vec<Op>, Vec<Settle>) {
        let mut history = Vec::new();
        let mut settle = Vec::new();
        for op in ops {
            match op {
                Op::Claim { .. } | Op::StartExecution(_) if with_first => history.push(op),
                Op::Claim { .. }
                | Op::StartExecution(_)
                | Op::Enqueue(_)
                | Op::SetCrashes { .. } => {}
                Op::Replay { dead_letter, .. } => history.push(Op::Replayed { dead_letter }),
                Op::Ack(id) => settle.push(Settle::Ack(id)),
                Op::Reschedule { id, visible_at, .. } => {
                    let delay = Duration::from_millis((visible_at - now_ms()).max(0) as u64);
                    settle.push(Settle::Nak(id, delay));
                }
                Op::DeadLetter {
                    id,
                    step,
                    error,
                    at,
                    body,
                } => {
                    if let Some(record) = self.dead_letter(id, step, error, at, body) {
                        history.push(Op::RecordDeadLetter(record));
                    }
                    settle.push(Settle::Term(id));
                }
                other => history.push(other),
            }
        }
        (history, settle)
    }

    /// The dead-letter record of a held message.
    fn dead_letter(
        &self,
        id: i64,
        step: String,
        error: String,
        at: i64,
        body: Option<String>,
    ) -> Option<DeadLetterRecord> {
        let held = self.held();
        let message = &held.get(&id)?.message;
        Some(DeadLetterRecord {
            queue: message.subject.to_string(),
            execution: message
                .headers
                .as_ref()
                .and_then(|h| h.get(EXECUTION_HEADER))
                .map(|v| v.as_str().to_string())
                .unwrap_or_default(),
            step,
            attempt: message
                .info()
                .map_or(1, |i| u32::try_from(i.delivered).unwrap_or(u32::MAX)),
            body: body.unwrap_or_else(|| String::from_utf8_lossy(&message.payload).into_owned()),
            error,
            at,
        })
    }

    /// The messages a request enqueues (or replays), each with its `Nats-Msg-Id`.
    fn outgoing(&self, ops: &[Op], origin: Option<&Origin>) -> Result<Vec<Outgoing>, StoreError> {
        let mut out = Vec::new();
        for op in ops {
            match op {
                Op::Enqueue(m) => {
                    let id = match origin {
                        Some(origin) => message_id(
                            &m.queue,
                            &m.execution,
                            &format!("{}#{}", origin.key, out.len()),
                        ),
                        None => message_id(&m.queue, &m.execution, &m.body),
                    };
                    out.push(Outgoing {
                        queue: m.queue.clone(),
                        execution: m.execution.clone(),
                        body: m.body.clone().into(),
                        id,
                    });
                }
                Op::Replay { dead_letter, at } => {
                    let HistorySink::Store(store) = &self.history else {
                        continue;
                    };
                    let Some((queue, execution, body)) = store.dead_letter(*dead_letter)? else {
                        continue;
                    };
                    out.push(Outgoing {
                        queue,
                        execution,
                        body: body.into(),
                        id: format!("replay:{dead_letter}:{at}"),
                    });
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Publishes messages and awaits the broker's acknowledgements. A message whose
    /// acknowledgement does not come (a timeout while a cluster elects a leader, say) may be
    /// stored all the same: it is published again under the same `Nats-Msg-Id`, which the
    /// broker de-duplicates, until the broker answers or [`PUBLISH_TRIES`] are spent.
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<(), StoreError> {
        let mut acks = Vec::with_capacity(messages.len());
        for m in &messages {
            acks.push(self.publish_one(m).await);
        }
        for (m, ack) in messages.iter().zip(acks) {
            let first = match ack {
                Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let Err(mut error) = first else {
                continue;
            };
            let mut tries = 1;
            loop {
                if tries >= PUBLISH_TRIES {
                    return Err(broker(format!("publishing to {}", m.queue))(error));
                }
                tracing::warn!("publishing to {}: {error}; publishing again", m.queue);
                tokio::time::sleep(Duration::from_millis(200 * tries as u64)).await;
                tries += 1;
                match self.publish_one(m).await {
                    Ok(ack) => match ack.await {
                        Ok(_) => break,
                        Err(e) => error = e.to_string(),
                    },
                    Err(e) => error = e.to_string(),
                }
            }
        }
        Ok(())
    }

    async fn publish_one(
        &self,
        m: &Outgoing,
    ) -> Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", m.id.as_str());
        headers.insert(EXECUTION_HEADER, m.execution.as_str());
        self.js
            .publish_with_headers(m.queue.clone(), headers, m.body.clone())
            .await
    }

    /// Settles a held message. A failure is only logged: the broker redelivers the message
    /// after its `ack_wait`, and the step runs again (its successors are deduplicated).
    async fn settle(&self, settle: Settle) {
        let (id, kind) = match settle {
            Settle::Ack(id) => (id, AckKind::Ack),
            Settle::Nak(id, delay) => (id, AckKind::Nak(Some(delay))),
            Settle::Term(id) => (id, AckKind::Term),
        };
        let Some(held) = self.held().remove(&id) else {
            return;
        };
        let result = tokio::time::timeout(SETTLE_TIMEOUT, held.message.double_ack_with(kind)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("settling a message with the broker: {e}"),
            Err(_) => tracing::warn!("settling a message with the broker timed out"),
        }
    }
}

/// Takes back the claims of a request whose messages could not be published, and fails the
/// execution it had started.
async fn undo(store: &Store, first: &[Op]) {
    let undo: Vec<Op> = first
        .iter()
        .map(|op| match op {
            Op::Claim { key, .. } => Op::Unclaim { key: key.clone() },
            Op::StartExecution(e) => Op::FailExecution {
                execution: e.id.clone(),
                error: "its first message could not be published to the broker".into(),
            },
            other => other.clone(),
        })
        .collect();
    if !undo.is_empty()
        && let Err(e) = store.commit(undo).await
    {
        tracing::error!("taking back the claims of an unpublished request: {e}");
    }
}

/// Pulls at most `max` messages for `what`, waiting up to a second for them; `None` (after a
/// pause) when the broker cannot be asked: the caller's loop tries again.
/// How long a pull request waits at the broker: a second while messages come, then twice as
/// long after each empty one, up to [`IdleBackoff::LONGEST`]. A waiting request is answered as
/// soon as a message arrives, so an idle consumer costs the broker one request every half
/// minute, not every second (a fleet has thousands), at no cost in latency. A reconnect ends
/// the wait early (see `JetStreamQueue::reconnected`).
struct IdleBackoff(Duration);

impl IdleBackoff {
    const SHORTEST: Duration = Duration::from_secs(1);
    const LONGEST: Duration = Duration::from_secs(30);

    fn expires(&self) -> Duration {
        self.0
    }

    /// A batch brought `got` messages.
    fn got(&mut self, got: usize) {
        self.0 = if got > 0 {
            Self::SHORTEST
        } else {
            (self.0 * 2).min(Self::LONGEST)
        };
    }
}

impl Default for IdleBackoff {
    fn default() -> Self {
        IdleBackoff(Self::SHORTEST)
    }
}

/// The batch's next message, or `None` when it ends or the client reconnected to the broker
/// (a pull request waiting there may be gone with the server it was sent to).
async fn next_or_woken(
    messages: &mut consumer::pull::Batch,
    reconnected: &tokio::sync::Notify,
) -> Option<Result<jetstream::Message, async_nats::Error>> {
    tokio::select! {
        next = messages.next() => next,
        () = reconnected.notified() => None,
    }
}

async fn fetch(
    consumer: &consumer::PullConsumer,
    max: usize,
    expires: Duration,
    what: &str,
) -> Option<consumer::pull::Batch> {
    match consumer
        .fetch()
        .max_messages(max)
        .expires(expires)
        .messages()
        .await
    {
        Ok(messages) => Some(messages),
        Err(e) => {
            tracing::warn!("fetching {what} from the broker: {e}");
            tokio::time::sleep(Duration::from_millis(250)).await;
            None
        }
    }
}

/// The gateway's side of the history stream: applies each batch a step worker published to
/// the store, then answers the sync webhooks it releases. A batch that cannot be read is
/// dropped with an error (it would never apply); one that fails to commit comes back later.
async fn apply_history(
    engine: Arc<Engine>,
    store: Store,
    consumer: consumer::PullConsumer,
    reconnected: Arc<tokio::sync::Notify>,
) {
    let mut idle = IdleBackoff::default();
    while !engine.is_stopping() {
        let Some(mut messages) = fetch(&consumer, BATCH, idle.expires(), "the history").await
        else {
            continue;
        };
        let mut got = 0;
        while let Some(Ok(message)) = next_or_woken(&mut messages, &reconnected).await {
            got += 1;
            let kind = match serde_json::from_slice::<HistoryBatch>(&message.payload) {
                Err(e) => {
                    tracing::error!("dropping an unreadable history batch: {e}");
                    AckKind::Term
                }
                Ok(batch) => match store.commit(batch.ops).await {
                    Ok(committed) => {
                        engine.release_replies(committed);
                        AckKind::Ack
                    }
                    Err(e) => {
                        tracing::warn!("recording the history: {e}; retrying");
                        AckKind::Nak(Some(Duration::from_secs(1)))
                    }
                },
            };
            if let Err(e) = message.double_ack_with(kind).await {
                tracing::warn!("settling a history batch with the broker: {e}");
            }
        }
        idle.got(got);
    }
}

/// Dead-letters a message delivered more often than its step's retries allow.
fn crash_loop(engine: &Engine, step: &StepRt, message: &StoredMessage) -> Vec<Op> {
    let step_id = serde_json::from_str::<Envelope>(&message.body)
        .map(|e| e.step)
        .unwrap_or_else(|_| step.step.id.clone());
    let error = format!(
        "quarantined: delivered {} times without being settled while step `{step_id}` ran it",
        message.attempt
    );
    tracing::error!(execution = %message.execution, "{error}");
    engine.give_up(message, &step_id, error)
}

/// The held message a request settles (see [`JetStreamQueue::origin`]).
struct Origin {
    key: String,
}

/// A message to publish.
struct Outgoing {
    queue: String,
    execution: String,
    body: bytes::Bytes,
    id: String,
}

/// Retries a declaration at start (a stream, a consumer) while the broker is not ready — not
/// reachable yet, or a cluster without a leader — for up to [`READY_TIMEOUT`].
async fn until_ready<T, E, F, Fut>(what: &str, mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!("{what}: {e}; the broker is not ready, trying again in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(broker(what.to_string())(e)),
        }
    }
}

impl Queue for JetStreamQueue {
    fn commit(&self, ops: Vec<Op>) -> CommitFuture<'_> {
        Box::pin(self.commit_ops(ops))
    }
    /// Nothing: the broker redelivers what was in flight once its `ack_wait` has passed.
    fn pending_messages(&self) -> Result<Vec<StoredMessage>, StoreError> {
        Ok(Vec::new())
    }
    fn state(&self, key: &str) -> Result<Option<String>, StoreError> {
        match &self.history {
            HistorySink::Store(store) => store.state(key),
            HistorySink::Stream { .. } => Ok(None),
        }
    }
    fn replay_requests(&self) -> Result<Vec<i64>, StoreError> {
        match &self.history {
            HistorySink::Store(store) => store.replay_requests(),
            HistorySink::Stream { .. } => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable() {
        assert_eq!(message_id("q", "e", "b"), message_id("q", "e", "b"));
        assert_ne!(message_id("q", "e", "b"), message_id("q", "eb", ""));
    }
}
