//! In-memory work queues that mirror the store: a committed message is routed to its step's
//! queue (at once, or when its retry delay has passed); workers pop from there.
//!
//! One [`StepQueue`] serves a step of an integration version for every instance that runs it:
//! each instance has its own lane, and the step's worker takes the lanes in turn (round-robin,
//! the lane with the fewest messages running first), so one customer's flood waits behind its
//! own messages, not in front of everyone else's. A lane may hold at most its limit of the
//! step's slots at once: a customer whose upstream hangs fills its own share, not the step.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::store::StoredMessage;

/// The due messages of one step, one lane per instance, served in turn.
pub struct StepQueue {
    state: Mutex<Lanes>,
    notify: Notify,
    /// Messages one lane may have running at once (a reload that adds lanes may lower it).
    lane_limit: AtomicUsize,
}

struct Lanes {
    lanes: Vec<LaneState>,
    /// Lanes with a message to run and room under their limit, in the order they are served.
    turn: VecDeque<usize>,
}

#[derive(Default)]
struct LaneState {
    items: VecDeque<StoredMessage>,
    running: usize,
    in_turn: bool,
}

impl Lanes {
    /// The position in the turn of the first lane with the fewest messages running.
    fn least_running(&self) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (at, &lane) in self.turn.iter().enumerate() {
            let running = self.lanes[lane].running;
            if best.is_none_or(|(_, r)| running < r) {
                best = Some((at, running));
                if running == 0 {
                    break;
                }
            }
        }
        best.map(|(at, _)| at)
    }

    /// Puts `lane` in the turn if it has work and room, and is not there yet.
    fn offer(&mut self, lane: usize, limit: usize) -> bool {
        let l = &mut self.lanes[lane];
        if l.in_turn || l.items.is_empty() || l.running >= limit {
            return false;
        }
        l.in_turn = true;
        self.turn.push_back(lane);
        true
    }
}

impl StepQueue {
    /// A queue with `lanes` lanes, each running at most `lane_limit` messages at once.
    pub fn new(lanes: usize, lane_limit: usize) -> StepQueue {
        StepQueue {
            state: Mutex::new(Lanes {
                lanes: (0..lanes).map(|_| LaneState::default()).collect(),
                turn: VecDeque::new(),
            }),
            notify: Notify::new(),
            lane_limit: AtomicUsize::new(lane_limit.max(1)),
        }
    }

    fn limit(&self) -> usize {
        self.lane_limit.load(Ordering::Relaxed)
    }

    /// Lets each lane run at most `limit` messages at once from now on.
    pub fn set_lane_limit(&self, limit: usize) {
        self.lane_limit.store(limit.max(1), Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `count` empty lanes (instances a reload added); returns the first one's index.
    pub fn add_lanes(&self, count: usize) -> usize {
        let mut state = self.lock();
        let first = state.lanes.len();
        state.lanes.extend((0..count).map(|_| LaneState::default()));
        first
    }

    /// Adds a message at the back of `lane`.
    pub fn push(&self, lane: usize, m: StoredMessage) {
        let mut state = self.lock();
        state.lanes[lane].items.push_back(m);
        if state.offer(lane, self.limit()) {
            drop(state);
            self.notify.notify_one();
        }
    }

    /// The next message, from the lane in turn with the fewest messages running (the first in
    /// turn among equals: round-robin when lanes run alike); the lane counts it as running
    /// until [`StepQueue::finish`]. A light customer's message so goes before a heavy one's
    /// whose slots are full (a flood, or an upstream that hangs).
    pub async fn pop(&self) -> (usize, StoredMessage) {
        loop {
            {
                let mut state = self.lock();
                while let Some(at) = state.least_running() {
                    let lane = state.turn.remove(at).expect("a lane in turn");
                    state.lanes[lane].in_turn = false;
                    let Some(m) = state.lanes[lane].items.pop_front() else {
                        continue;
                    };
                    state.lanes[lane].running += 1;
                    if state.offer(lane, self.limit()) {
                        // More to take: let another waiter see it.
                        self.notify.notify_one();
                    }
                    return (lane, m);
                }
            }
            self.notify.notified().await;
        }
    }

    /// A message popped from `lane` is done.
    pub fn finish(&self, lane: usize) {
        let mut state = self.lock();
        let l = &mut state.lanes[lane];
        l.running = l.running.saturating_sub(1);
        if state.offer(lane, self.limit()) {
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Puts a popped message back at the front of its lane (it was not run).
    pub fn give_back(&self, lane: usize, m: StoredMessage) {
        self.lock().lanes[lane].items.push_front(m);
        self.finish(lane);
    }

    /// Messages waiting in `lane`.
    pub fn lane_len(&self, lane: usize) -> usize {
        self.lock().lanes[lane].items.len()
    }

    /// Messages running now in `lane`.
    pub fn lane_running(&self, lane: usize) -> usize {
        self.lock().lanes[lane].running
    }
}

/// One instance's lane of a step's queue, with the instance's pending count.
#[derive(Clone)]
pub struct Lane {
    pub queue: Arc<StepQueue>,
    pub index: usize,
    /// The instance's messages waiting or in flight.
    pub pending: Arc<AtomicUsize>,
}

impl Lane {
    /// Messages waiting in the lane.
    pub fn len(&self) -> usize {
        self.queue.lane_len(self.index)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The lanes of one step queue, by lane index, with the instance each serves; a reload
/// swaps in a longer table.
pub type LaneTable = ArcSwap<Vec<(Arc<crate::instance::InstanceRt>, Lane)>>;

/// Every instance's step lanes, by queue name.
pub type LaneMap = HashMap<String, Lane>;

/// Routes committed messages to their in-memory queues (called on the store's writer thread).
pub struct Dispatch {
    /// Every instance's step lanes, by queue name; a reload swaps in a larger map.
    lanes: ArcSwap<LaneMap>,
    /// Messages waiting or in flight, for admission control at the gateway.
    pub pending: AtomicUsize,
    handle: tokio::runtime::Handle,
}

impl Dispatch {
    pub fn new(lanes: LaneMap, handle: tokio::runtime::Handle) -> Self {
        Dispatch {
            lanes: ArcSwap::from_pointee(lanes),
            pending: AtomicUsize::new(0),
            handle,
        }
    }

    /// The lane of queue `queue`, if this process runs it.
    pub fn lane(&self, queue: &str) -> Option<Lane> {
        self.lanes.load().get(queue).cloned()
    }

    /// Adds (or, for a replaced instance, repoints) the lanes of `queues`: messages committed
    /// from now on go there.
    pub fn add_lanes(&self, queues: impl IntoIterator<Item = (String, Lane)>) {
        let mut lanes = LaneMap::clone(&self.lanes.load());
        lanes.extend(queues);
        self.lanes.store(Arc::new(lanes));
    }

    pub fn deliver(&self, messages: Vec<StoredMessage>) {
        let now = now_ms();
        let lanes = self.lanes.load();
        for m in messages {
            let Some(lane) = lanes.get(&m.queue).cloned() else {
                continue; // not ours: stays in the store
            };
            self.pending.fetch_add(1, Ordering::Relaxed);
            lane.pending.fetch_add(1, Ordering::Relaxed);
            if m.visible_at > now {
                let delay = Duration::from_millis((m.visible_at - now) as u64);
                self.handle.spawn(async move {
                    tokio::time::sleep(delay).await;
                    lane.queue.push(lane.index, m);
                });
            } else {
                lane.queue.push(lane.index, m);
            }
        }
    }

    /// A message popped from `lane` ran to its commit (or was put back for the next start).
    pub fn settled(&self, lane: &Lane) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        lane.pending.fetch_sub(1, Ordering::Relaxed);
        lane.queue.finish(lane.index);
    }

    /// A popped message goes back to its lane: its commit failed while stopping.
    pub fn requeue(&self, lane: &Lane, m: StoredMessage) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        lane.pending.fetch_add(1, Ordering::Relaxed);
        lane.queue.push(lane.index, m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: i64) -> StoredMessage {
        StoredMessage {
            id,
            queue: "q".into(),
            execution: "e".into(),
            visible_at: 0,
            attempt: 1,
            crashes: 0,
            body: String::new(),
            parsed: None,
        }
    }

    /// The next message, if one comes within 20 ms.
    async fn pop_soon(q: &StepQueue) -> Option<(usize, StoredMessage)> {
        tokio::time::timeout(Duration::from_millis(20), q.pop())
            .await
            .ok()
    }

    async fn pop_now(q: &StepQueue) -> Option<(usize, i64)> {
        pop_soon(q).await.map(|(lane, m)| (lane, m.id))
    }

    #[tokio::test]
    async fn lanes_are_served_in_turn_whatever_their_backlog() {
        let q = StepQueue::new(3, 100);
        for id in 0..10 {
            q.push(0, message(id)); // a flood on lane 0
        }
        q.push(1, message(100));
        q.push(2, message(200));
        q.push(1, message(101));
        let mut order = Vec::new();
        for _ in 0..6 {
            order.push(pop_now(&q).await.expect("a message"));
        }
        assert_eq!(
            order,
            vec![(0, 0), (1, 100), (2, 200), (0, 1), (1, 101), (0, 2)]
        );
    }

    #[tokio::test]
    async fn a_lane_at_its_limit_waits_while_others_run() {
        let q = StepQueue::new(2, 2);
        for id in 0..5 {
            q.push(0, message(id));
        }
        assert_eq!(pop_now(&q).await, Some((0, 0)));
        assert_eq!(pop_now(&q).await, Some((0, 1)));
        // Lane 0 has two running: its third message waits, lane 1's does not.
        assert_eq!(pop_now(&q).await, None);
        q.push(1, message(10));
        assert_eq!(pop_now(&q).await, Some((1, 10)));
        q.finish(0);
        assert_eq!(pop_now(&q).await, Some((0, 2)));
        assert_eq!(q.lane_running(0), 2);
        assert_eq!(q.lane_len(0), 2);
    }

    #[tokio::test]
    async fn the_lane_with_the_fewest_running_goes_first() {
        let q = StepQueue::new(2, 10);
        for id in 0..4 {
            q.push(0, message(id));
        }
        assert_eq!(pop_now(&q).await, Some((0, 0)));
        assert_eq!(pop_now(&q).await, Some((0, 1)));
        // Lane 0 runs two; lane 1, arriving after, goes before lane 0's third.
        q.push(1, message(10));
        q.push(1, message(11));
        assert_eq!(pop_now(&q).await, Some((1, 10)));
        assert_eq!(pop_now(&q).await, Some((1, 11)));
        // Both run two: in turn again.
        assert_eq!(pop_now(&q).await, Some((0, 2)));
    }

    #[tokio::test]
    async fn a_message_given_back_runs_first() {
        let q = StepQueue::new(1, 1);
        q.push(0, message(1));
        q.push(0, message(2));
        let (lane, m) = pop_soon(&q).await.expect("a message");
        q.give_back(lane, m);
        assert_eq!(pop_now(&q).await, Some((0, 1)));
    }
}
