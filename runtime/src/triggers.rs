//! Triggers that are not webhooks: schedules (cron in a timezone), polls (with a saved cursor)
//! and deploy-time flows. Their state lives in the store and changes in the same commit as the
//! executions they start: a restart neither runs a schedule twice nor skips one, and a poll's
//! cursor never moves past items that were not enqueued.

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

/// Runs a schedule until the engine stops. The last fired time is saved with each execution;
/// after a restart, an occurrence missed while the process was down runs once.
pub async fn schedule(
    engine: Arc<Engine>,
    instance: Arc<InstanceRt>,
    flow: String,
    schedule: Arc<ScheduleRt>,
) {
    let (cron, tz) = (&schedule.cron, schedule.timezone);
    let key = format!("schedule:{}:{flow}", instance.key);
    let mut last: i64 = engine
        .store()
        .state(&key)
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_millis());
    while !engine.is_stopping() {
        let after = tz
            .timestamp_millis_opt(last)
            .single()
            .unwrap_or_else(|| tz.from_utc_datetime(&Utc::now().naive_utc()));
        let Ok(next) = cron.find_next_occurrence(&after, false) else {
            tracing::error!(flow = %flow, instance = %instance.key, "the schedule has no next occurrence; it stops");
            return;
        };
        let due = next.timestamp_millis();
        let wait = due - now_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait.min(60_000) as u64)).await;
            continue; // re-check (stop flag, clock changes)
        }
        let trigger = json!({ "time": next.to_rfc3339(), "scheduled_at": next.with_timezone(&Utc).to_rfc3339() });
        let extra = vec![Op::SetState {
            key: key.clone(),
            value: due.to_string(),
        }];
        match engine
            .start_execution(&instance, &flow, trigger, extra)
            .await
        {
            Ok(id) => {
                tracing::info!(flow = %flow, instance = %instance.key, execution = %id, "schedule fired for {next}");
                // Missed occurrences collapse into this one run: continue from now.
                last = due.max(now_ms() - 1000);
            }
            Err(e) => {
                tracing::error!("schedule {flow}: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
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

/// Polls until the engine stops: one execution per new item, and the new cursor saved in the
/// same commit as those executions.
pub async fn poll(engine: Arc<Engine>, instance: Arc<InstanceRt>, flow: String, poll: Arc<PollRt>) {
    let key = format!("cursor:{}:{flow}", instance.key);
    while !engine.is_stopping() {
        if let Err(e) = poll_once(&engine, &instance, &flow, &poll, &key).await {
            tracing::warn!(flow = %flow, instance = %instance.key, "poll failed: {}", engine.redactor().str(&e.to_string()));
        }
        tokio::time::sleep(poll.every).await;
    }
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
    let plan = instance.plan.connections.get(name).ok_or_else(missing)?;
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
