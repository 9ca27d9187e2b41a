//! The NATS JetStream backend of [`Queue`]: messages live in one work-queue stream per flow,
//! one durable pull consumer per step; history, trigger state, claims and dead letters stay in
//! the local SQLite [`Store`].
//!
//! A commit keeps weft's promise without a shared transaction: claims (and the execution's row)
//! are applied first, so a duplicate fails the request before anything is published; then every
//! successor is published and its acknowledgement from the broker awaited (with a stable
//! `Nats-Msg-Id`, so a retried commit is deduplicated by the broker); then the history is
//! committed; only then is the input message settled (ack, nak with a delay, or terminated after
//! its dead letter is recorded). A crash between these steps can only run work again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt as _;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// The JetStream-backed queue.
pub struct JetStreamQueue {
    js: jetstream::Context,
    store: Store,
    replicas: usize,
    held: Mutex<HashMap<i64, Held>>,
    next_id: AtomicI64,
}

/// A stream or consumer name: `[a-z0-9_-]`, everything else `-`.
fn name(text: &str) -> String {
    text.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '-') => c,
            _ => '-',
        })
        .collect()
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
    /// Connects to the broker at `url`; history and state go to `store`.
    pub async fn connect(
        url: &str,
        store: Store,
        replicas: usize,
    ) -> Result<JetStreamQueue, StoreError> {
        // Reconnect quickly (every 100 ms, growing to 1 s): while the broker is away, webhooks
        // get 503 and settles wait.
        let client = async_nats::ConnectOptions::new()
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100 * attempts.min(10) as u64)
            })
            .connect(url)
            .await
            .map_err(broker(format!("connecting to {url}")))?;
        Ok(JetStreamQueue {
            js: jetstream::new(client),
            store,
            replicas: replicas.max(1),
            held: Mutex::default(),
            next_id: AtomicI64::new(1),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates (or updates) the stream of every enabled flow and the consumer of each of its
    /// steps, then starts one fetch loop per step.
    pub async fn start(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        step_concurrency: usize,
    ) -> Result<(), StoreError> {
        for instance in engine.instances() {
            for flow in instance.plan.flows.iter().filter(|f| f.enabled) {
                let steps: Vec<&Arc<StepRt>> = instance.flows[&flow.name].steps.values().collect();
                let stream = self.stream(instance, &flow.name, &steps).await?;
                for step in steps {
                    let consumer = self.consumer(&stream, step).await?;
                    let concurrency = step_concurrency.max(1) * step.step.replicas.max(1) as usize;
                    tokio::spawn(self.clone().fetch_loop(
                        engine.clone(),
                        step.clone(),
                        consumer,
                        concurrency,
                    ));
                }
            }
        }
        Ok(())
    }

    async fn stream(
        &self,
        instance: &InstanceRt,
        flow: &str,
        steps: &[&Arc<StepRt>],
    ) -> Result<stream::Stream, StoreError> {
        let stream_name = name(&format!(
            "weft_{}_{}_{flow}",
            instance.plan.customer, instance.plan.integration
        ));
        let config = stream::Config {
            name: stream_name.clone(),
            subjects: steps.iter().map(|s| s.step.queue.clone()).collect(),
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        self.js
            .create_or_update_stream(config)
            .await
            .map_err(broker(format!("creating stream {stream_name}")))?;
        self.js
            .get_stream(&stream_name)
            .await
            .map_err(broker(format!("opening stream {stream_name}")))
    }

    async fn consumer(
        &self,
        stream: &stream::Stream,
        step: &StepRt,
    ) -> Result<consumer::PullConsumer, StoreError> {
        let durable = name(&step.step.id);
        let config = consumer::pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: step.step.queue.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_millis(step.step.timeout_ms) + ACK_WAIT_MARGIN,
            max_deliver: i64::from(step.step.retry.attempts + EXTRA_DELIVERIES + 2),
            ..Default::default()
        };
        stream
            .create_consumer(config)
            .await
            .map_err(broker(format!("creating consumer {durable}")))
    }

    /// Pulls the step's messages in batches, at most `concurrency` unsettled at once, and
    /// hands them to the engine's in-memory queue.
    async fn fetch_loop(
        self: Arc<Self>,
        engine: Arc<Engine>,
        step: Arc<StepRt>,
        consumer: consumer::PullConsumer,
        concurrency: usize,
    ) {
        let slots = Arc::new(Semaphore::new(concurrency));
        while !engine.is_stopping() {
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
            let batch = consumer
                .fetch()
                .max_messages(permits.len())
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let mut messages = match batch {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(step = %step.step.id, "fetching from the broker: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            while let Some(next) = messages.next().await {
                let (Ok(message), Some(permit)) = (next, permits.pop()) else {
                    break;
                };
                self.take(&engine, &step, message, permit).await;
            }
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
        engine.deliver(&[stored]);
    }

    /// Applies a request in the order that keeps the promise (see the module's doc).
    async fn commit_ops(&self, ops: Vec<Op>) -> Result<Committed, StoreError> {
        let first: Vec<Op> = ops
            .iter()
            .filter(|o| matches!(o, Op::Claim { .. } | Op::StartExecution(_)))
            .cloned()
            .collect();
        if !first.is_empty() {
            self.store.commit(first.clone()).await?;
        }
        if let Err(e) = self.publish(&ops).await {
            // A request that settles a message is retried as is by the engine; one that starts
            // executions (a webhook, a trigger) is not: take its claims back.
            let settles = ops.iter().any(|o| {
                matches!(
                    o,
                    Op::Ack(_) | Op::Reschedule { .. } | Op::DeadLetter { .. }
                )
            });
            if !settles {
                self.undo(&first).await;
            }
            return Err(e);
        }
        let mut history = Vec::new();
        let mut settle = Vec::new();
        for op in ops {
            match op {
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
        let committed = if history.is_empty() {
            Committed::default()
        } else {
            self.store.commit(history).await?
        };
        for s in settle {
            self.settle(s).await;
        }
        Ok(committed)
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

    /// Takes back the claims of a request whose messages could not be published, and fails
    /// the execution it had started.
    async fn undo(&self, first: &[Op]) {
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
            && let Err(e) = self.store.commit(undo).await
        {
            tracing::error!("taking back the claims of an unpublished request: {e}");
        }
    }

    /// Publishes every message the request enqueues (or replays) and awaits the broker's
    /// acknowledgements.
    async fn publish(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut acks = Vec::new();
        for op in ops {
            let (queue, execution, body, id) = match op {
                Op::Enqueue(m) => (
                    m.queue.clone(),
                    m.execution.clone(),
                    m.body.clone(),
                    message_id(&m.queue, &m.execution, &m.body),
                ),
                Op::Replay { dead_letter, at } => {
                    let Some((queue, execution, body)) = self.store.dead_letter(*dead_letter)?
                    else {
                        continue;
                    };
                    (queue, execution, body, format!("replay:{dead_letter}:{at}"))
                }
                _ => continue,
            };
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            headers.insert(EXECUTION_HEADER, execution.as_str());
            let ack = self
                .js
                .publish_with_headers(queue.clone(), headers, body.into_bytes().into())
                .await
                .map_err(broker(format!("publishing to {queue}")))?;
            acks.push((queue, ack));
        }
        for (queue, ack) in acks {
            ack.await
                .map_err(broker(format!("publishing to {queue} (acknowledgement)")))?;
        }
        Ok(())
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
    let at = now_ms();
    vec![
        Op::DeadLetter {
            id: message.id,
            step: step_id.clone(),
            error: error.clone(),
            at,
            body: Some(engine.redactor().str(&message.body)),
        },
        Op::FailExecution {
            execution: message.execution.clone(),
            error: format!("step `{step_id}`: {error}"),
        },
        Op::Pending {
            execution: message.execution.clone(),
            delta: -1,
            at,
        },
    ]
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
        self.store.state(key)
    }
    fn replay_requests(&self) -> Result<Vec<i64>, StoreError> {
        self.store.replay_requests()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_only_safe_characters() {
        assert_eq!(name("weft_Acme_ref.v2_orders"), "weft_acme_ref-v2_orders");
        assert_eq!(message_id("q", "e", "b"), message_id("q", "e", "b"));
        assert_ne!(message_id("q", "e", "b"), message_id("q", "eb", ""));
    }
}
