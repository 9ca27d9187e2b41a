//! In-memory work queues that mirror the store: a committed message is routed to its step's
//! queue (at once, or when its retry delay has passed); workers pop from there.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::store::StoredMessage;

/// A queue in memory: the messages of one step that are due, in order.
#[derive(Default)]
pub struct WorkQueue {
    items: Mutex<VecDeque<StoredMessage>>,
    notify: Notify,
}

impl WorkQueue {
    pub fn push(&self, m: StoredMessage) {
        self.items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(m);
        self.notify.notify_one();
    }

    pub async fn pop(&self) -> StoredMessage {
        loop {
            if let Some(m) = self
                .items
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
            {
                return m;
            }
            self.notify.notified().await;
        }
    }

    pub fn len(&self) -> usize {
        self.items.lock().unwrap_or_else(|p| p.into_inner()).len()
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
