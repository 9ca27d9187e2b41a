//! Triggers that are not webhooks: schedules (cron in a timezone), polls (with a saved cursor)
//! and deploy-time flows. Their state lives in the store and changes in the same commit as the
//! executions they start: a restart neither runs a schedule twice nor skips one, and a poll's
//! cursor never moves past items that were not enqueued.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

use crate::clock::now_ms;
use crate::engine::Engine;
use crate::error::TriggerError;
use crate::instance::InstanceRt;
use crate::render::{self, Compiled};
use crate::steps;
use crate::store::Op;

/// A schedule, parsed when the runtime starts.
pub struct ScheduleRt {
    pub cron: croner::Cron,
    pub timezone: chrono_tz::Tz,
}

impl ScheduleRt {
    pub fn new(cron: &str, timezone: &str) -> Result<ScheduleRt, String> {
        Ok(ScheduleRt {
            cron: croner::Cron::from_str(cron)
                .map_err(|e| format!("invalid cron `{cron}`: {e}"))?,
            timezone: timezone
                .parse()
                .map_err(|_| format!("unknown timezone `{timezone}`"))?,
        })
    }
}

/// A schedule or a poll of one instance's flow, fired by the [`timer_wheel`].
pub struct Timer {
    pub instance: Arc<InstanceRt>,
    pub flow: String,
    pub kind: Timed,
}

/// What a timer fires.
pub enum Timed {
    Schedule(Arc<ScheduleRt>),
    Poll(Arc<PollRt>),
}

/// The longest the wheel sleeps: it looks at the clock (and the stop flag) at least this often.
const LONGEST_SLEEP_MS: i64 = 60_000;

/// Fires every schedule and poll of the runtime from one task: timers wait in a heap by due
/// time, and an idle fleet costs one sleeping task, not one per instance. A firing runs in a
/// task of its own and hands its timer's next due time back.
///
/// A schedule's last fired time is saved with each execution; after a restart, an occurrence
/// missed while the process was down runs once. A poll runs at start, then `every` after each
/// poll ends.
pub async fn timer_wheel(
    engine: Arc<Engine>,
    mut added: tokio::sync::mpsc::UnboundedReceiver<Vec<Timer>>,
) {
    // The wheel's timers, by index, as they arrive (at start, then from reloads); a retired
    // instance's timer is dropped from the heap when it is next due.
    let mut all: Vec<Arc<Timer>> = Vec::new();
    // Entries are (due, timer, last fired time): a schedule's last fired time travels with its
    // entry (a timer is armed again only once its firing ends); polls keep 0.
    let (rearm, mut due_again) = tokio::sync::mpsc::unbounded_channel::<Armed>();
    let mut heap = BinaryHeap::new();
    let arm = |all: &mut Vec<Arc<Timer>>, heap: &mut BinaryHeap<Reverse<Armed>>, timer| {
        let i = all.len();
        all.push(Arc::new(timer));
        if let Some((due, fired)) = first_due(&engine, &all[i]) {
            heap.push(Reverse((due, i, fired)));
        }
    };
    while !engine.is_stopping() {
        let wait = heap
            .peek()
            .map_or(LONGEST_SLEEP_MS, |Reverse((due, _, _))| due - now_ms())
            .clamp(0, LONGEST_SLEEP_MS);
        tokio::select! {
            Some(entry) = due_again.recv() => heap.push(Reverse(entry)),
            Some(timers) = added.recv() => {
                for timer in timers {
                    arm(&mut all, &mut heap, timer);
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {
                if engine.is_stopping() {
                    return;
                }
                let now = now_ms();
                while let Some(&Reverse((due, i, fired))) = heap.peek() {
                    if due > now {
                        break;
                    }
                    heap.pop();
                    tokio::spawn(fire(
                        engine.clone(),
                        all[i].clone(),
                        i,
                        fired,
                        rearm.clone(),
                    ));
                }
            }
        }
    }
}

/// When a timer first fires, with the last fired time its entry starts with: a schedule's
/// next occurrence after the last one saved (or after now), a poll at once.
fn first_due(engine: &Engine, timer: &Timer) -> Option<(i64, i64)> {
    match &timer.kind {
        Timed::Schedule(schedule) => {
            let fired = engine
                .store()
                .state(&schedule_key(timer))
                .ok()
                .flatten()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(now_ms);
            let due = next_occurrence(schedule, fired).map(|(due, _)| (due, fired));
            if due.is_none() {
                no_next_occurrence(timer);
            }
            due
        }
        Timed::Poll(_) => Some((now_ms(), 0)),
    }
}

/// A timer in the wheel: (due, timer, last fired time).
type Armed = (i64, usize, i64);

/// Runs `timer` (the wheel's timer `i`; a schedule last fired at `fired`) once and sends it
/// back to the wheel with its next due time. A retired instance's timer is dropped.
async fn fire(
    engine: Arc<Engine>,
    timer: Arc<Timer>,
    i: usize,
    fired: i64,
    rearm: tokio::sync::mpsc::UnboundedSender<Armed>,
) {
    if engine.is_stopping() || timer.instance.is_retired() {
        return;
    }
    let timer = &*timer;
    let next = match &timer.kind {
        Timed::Poll(poll) => {
            let key = format!("cursor:{}:{}", timer.instance.key, timer.flow);
            if let Err(e) = poll_once(&engine, &timer.instance, &timer.flow, poll, &key).await {
                tracing::warn!(flow = %timer.flow, instance = %timer.instance.key, "poll failed: {}", engine.redactor().str(&e.to_string()));
            }
            Some((now_ms() + poll.every.as_millis() as i64, fired))
        }
        Timed::Schedule(schedule) => match fire_schedule(&engine, timer, schedule, fired).await {
            Some(fired) => next_occurrence(schedule, fired).map(|(due, _)| (due, fired)),
            None => Some((now_ms() + 1000, fired)),
        },
    };
    match next {
        Some((due, fired)) => {
            let _ = rearm.send((due, i, fired));
        }
        None => no_next_occurrence(timer),
    }
}

/// Starts the execution of the schedule's occurrence after `fired`, if it is due (the clock may
/// have moved back since it was armed). Returns the new last fired time, or `None` when the
/// start failed (it is tried again in a second).
async fn fire_schedule(
    engine: &Engine,
    timer: &Timer,
    schedule: &ScheduleRt,
    fired: i64,
) -> Option<i64> {
    let Some((due, next)) = next_occurrence(schedule, fired) else {
        return Some(fired); // no next occurrence: the wheel drops it
    };
    if due > now_ms() {
        return Some(fired); // not yet: armed again for `due`
    }
    let trigger =
        json!({ "time": next.to_rfc3339(), "scheduled_at": next.with_timezone(&Utc).to_rfc3339() });
    let extra = vec![Op::SetState {
        key: schedule_key(timer),
        value: due.to_string(),
    }];
    match engine
        .start_execution(&timer.instance, &timer.flow, trigger, extra)
        .await
    {
        Ok(id) => {
            tracing::info!(flow = %timer.flow, instance = %timer.instance.key, execution = %id, "schedule fired for {next}");
            // Missed occurrences collapse into this one run: continue from now.
            Some(due.max(now_ms() - 1000))
        }
        Err(e) => {
            tracing::error!("schedule {}: {e}", timer.flow);
            None
        }
    }
}

fn schedule_key(timer: &Timer) -> String {
    format!("schedule:{}:{}", timer.instance.key, timer.flow)
}

/// The schedule's first occurrence after `after` (ms), as ms and as a time in its timezone.
fn next_occurrence(
    schedule: &ScheduleRt,
    after: i64,
) -> Option<(i64, chrono::DateTime<chrono_tz::Tz>)> {
    let tz = schedule.timezone;
    let after = tz
        .timestamp_millis_opt(after)
        .single()
        .unwrap_or_else(|| tz.from_utc_datetime(&Utc::now().naive_utc()));
    let next = schedule.cron.find_next_occurrence(&after, false).ok()?;
    Some((next.timestamp_millis(), next))
}

fn no_next_occurrence(timer: &Timer) {
    tracing::error!(flow = %timer.flow, instance = %timer.instance.key, "the schedule has no next occurrence; it stops");
}

/// A compiled poll trigger.
pub struct PollRt {
    pub every: Duration,
    pub uses: weft_plan::Uses,
    /// The component action polled, compiled once (`None` for `http.*` and `file.list`).
    pub action: Option<crate::instance::ActionRt>,
    pub connection: Option<String>,
    pub with: Compiled,
    pub items: Option<Compiled>,
    pub cursor: Option<Compiled>,
}

async fn poll_once(
    engine: &Engine,
    instance: &InstanceRt,
    flow: &str,
    poll: &PollRt,
    key: &str,
) -> Result<(), TriggerError> {
    let cursor: Value = engine
        .store()
        .state(key)?
        .map(|v| serde_json::from_str(&v).unwrap_or(Value::String(v)))
        .unwrap_or(Value::Null);
    let mut base = json!({ "config": instance.config, "instance": instance.instance_value });
    if !cursor.is_null() {
        base["cursor"] = cursor.clone();
    }
    let input = render::render(&poll.with, &render::context(&base))?;
    let connection = match &poll.connection {
        Some(name) => Some(poll_connection(instance, name)?),
        None => None,
    };
    let action = poll
        .action
        .as_ref()
        .map(|a| a.render(&input, connection.as_ref().map(|(_, f)| f)))
        .transpose()?;
    let idempotency = format!("poll:{}:{flow}:{}", instance.key, now_ms());
    let env = engine.step_env(
        instance,
        &idempotency,
        Duration::from_secs(30),
        connection,
        action,
    );
    let output = match steps::run(&poll.uses, input, &env)
        .await
        .map_err(|e| TriggerError::Poll(e.message))?
    {
        steps::Outcome::Output(v) => v,
        _ => Value::Null,
    };
    // http.* outputs carry the payload in `body`.
    let payload = if poll
        .uses
        .builtin()
        .is_some_and(|b| b.family() == weft_plan::Family::Http)
    {
        output.get("body").cloned().unwrap_or(Value::Null)
    } else {
        output
    };
    let mut scope = base.clone();
    scope["output"] = payload.clone();
    let items = match &poll.items {
        Some(t) => render::render(t, &render::context(&scope))?,
        None => payload,
    };
    let Value::Array(items) = items else {
        return Err(TriggerError::Poll("the poll's items are not a list".into()));
    };
    scope["items"] = Value::Array(items.clone());
    let next_cursor = match &poll.cursor {
        Some(t) if !items.is_empty() => Some(render::render(t, &render::context(&scope))?),
        _ => None,
    };
    if items.is_empty() {
        return Ok(());
    }
    let mut ops = Vec::new();
    for item in &items {
        let id = ulid::Ulid::new().to_string();
        ops.extend(
            engine
                .start_ops(
                    instance,
                    flow,
                    json!({ "item": item, "cursor": cursor }),
                    &id,
                    vec![],
                )
                .await?,
        );
    }
    if let Some(c) = next_cursor {
        ops.push(Op::SetState {
            key: key.to_string(),
            value: serde_json::to_string(&c).unwrap_or_default(),
        });
    }
    engine.store().commit(ops).await?;
    engine.metrics().executions.inc_by(items.len() as u64);
    tracing::info!(flow = %flow, instance = %instance.key, "poll found {} new item(s)", items.len());
    Ok(())
}

/// A poll's connection with its rendered fields.
fn poll_connection<'i>(
    instance: &'i InstanceRt,
    name: &str,
) -> Result<(&'i weft_plan::Connection, serde_json::Map<String, Value>), TriggerError> {
    let missing = || TriggerError::Poll(format!("no connection `{name}`"));
    let plan = instance.plan().connections.get(name).ok_or_else(missing)?;
    let fields = instance.connections.get(name).ok_or_else(missing)?;
    Ok((plan, fields.clone()))
}

/// Runs a deploy flow once per version of the instance's plan.
pub async fn deploy(
    engine: Arc<Engine>,
    instance: Arc<InstanceRt>,
    flow: String,
    plan_hash: String,
) {
    let key = format!("deploy:{}:{flow}", instance.key);
    if engine.store().state(&key).ok().flatten().as_deref() == Some(plan_hash.as_str()) {
        return;
    }
    let trigger = json!({ "deployed": true, "plan_hash": plan_hash });
    match engine
        .start_execution(
            &instance,
            &flow,
            trigger,
            vec![Op::SetState {
                key,
                value: plan_hash,
            }],
        )
        .await
    {
        Ok(id) => {
            tracing::info!(flow = %flow, instance = %instance.key, execution = %id, "deploy flow started")
        }
        Err(e) => tracing::error!("deploy flow {flow}: {e}"),
    }
}
