//! A checked flow lowered: its steps (with the project's defaults filled in), the edges of its
//! step graph, each naming the queue it becomes, and its trigger.

use std::collections::BTreeMap;

use petgraph::graph::NodeIndex;
use serde::Deserialize;

use crate::check::CheckedFlow;
use crate::graph::StepGraph;
use crate::model::{self, BranchWith, Step, StepDefaults};
use crate::plan::{self, Builtin, RetryPolicy, Uses};

/// A step's attempt time limit, and a sync webhook's, when none is set.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// Lowers a flow; queue names are relative to the instance (`<flow>.<step>`).
pub(super) fn lower_flow(
    flow: CheckedFlow<'_>,
    defaults: &StepDefaults,
) -> (plan::Flow, StepGraph) {
    let name = flow.name;
    let graph = flow.graph;
    let steps = flow
        .steps
        .iter()
        .map(|s| lower_step(&s.step, name, s.for_each.as_deref(), defaults))
        .collect();
    let queue_of = |n: NodeIndex| format!("{name}.{}", graph[n].id);
    let edges = graph
        .edge_indices()
        .filter_map(|e| {
            let (a, b) = graph.edge_endpoints(e)?;
            Some(plan::Edge {
                from: graph[a].id.clone(),
                to: graph[b].id.clone(),
                kind: graph[e],
                queue: queue_of(b),
            })
        })
        .collect();
    let entry_queue = flow.flow.steps.first().map(|s| format!("{name}.{}", s.id));
    let lowered = plan::Flow {
        name: name.to_string(),
        enabled: true,
        trigger: lower_trigger(&flow.flow.trigger),
        trigger_secrets: Vec::new(),
        entry_queue,
        steps,
        edges,
    };
    (lowered, graph)
}

/// Lowers a step of flow `flow`, in the body of the `for_each` step `for_each`.
fn lower_step(
    step: &Step,
    flow: &str,
    for_each: Option<&str>,
    defaults: &StepDefaults,
) -> plan::Step {
    // An unparsable `uses` has been reported by the check; no plan is emitted then.
    let uses = parse_uses(&step.uses);
    let (with, cases) = if uses.is(Builtin::Branch) {
        // Case steps become nodes of the graph; the plan keeps the conditions.
        let cases = BranchWith::deserialize(&step.with)
            .map(|w| {
                w.cases
                    .into_iter()
                    .map(|c| plan::BranchCase { when: c.when })
                    .collect()
            })
            .unwrap_or_default();
        (BTreeMap::new(), cases)
    } else {
        let with = step
            .with
            .as_object()
            .map(|m| m.clone().into_iter().collect())
            .unwrap_or_default();
        (with, Vec::new())
    };
    plan::Step {
        id: step.id.clone(),
        fused: plan::is_pure(&uses),
        uses,
        queue: format!("{flow}.{}", step.id),
        with,
        cases,
        connection: step.connection.clone(),
        retry: lower_retry(step.retry.as_ref().or(defaults.retry.as_ref())),
        on_error: lower_on_error(step.on_error.or(defaults.on_error).unwrap_or_default()),
        timeout_ms: step
            .timeout
            .as_ref()
            .or(defaults.timeout.as_ref())
            .map_or(DEFAULT_TIMEOUT_MS, |d| duration_ms(&d.0)),
        replicas: step.replicas.or(defaults.replicas).unwrap_or(1),
        for_each: for_each.map(str::to_string),
        secrets: Vec::new(),
        resources: step.resources.as_ref().map(crate::model::Resources::lower),
    }
}

/// A `uses` of a step or poll; the check has reported one that does not parse.
fn parse_uses(uses: &str) -> Uses {
    Uses::parse(uses).unwrap_or_else(|| Uses::Action {
        component: uses.to_string(),
        action: String::new(),
    })
}

fn lower_retry(retry: Option<&model::Retry>) -> RetryPolicy {
    let base = RetryPolicy::default();
    retry.map_or(base, |r| RetryPolicy {
        attempts: r.attempts,
        backoff: match r.backoff {
            model::Backoff::Exponential => plan::Backoff::Exponential,
            model::Backoff::Fixed => plan::Backoff::Fixed,
        },
        initial_ms: r
            .initial
            .as_ref()
            .map_or(base.initial_ms, |d| duration_ms(&d.0)),
        max_ms: r.max.as_ref().map_or(base.max_ms, |d| duration_ms(&d.0)),
    })
}

fn lower_trigger(t: &model::Trigger) -> plan::Trigger {
    if let Some(w) = &t.webhook {
        plan::Trigger::Webhook {
            method: lower_method(w.method),
            path: w.path.clone(),
            auth: w.auth.as_ref().and_then(lower_webhook_auth),
            respond: match w.respond {
                model::Respond::Async => plan::Respond::Async,
                model::Respond::Sync => plan::Respond::Sync,
            },
            timeout_ms: w
                .timeout
                .as_ref()
                .map_or(DEFAULT_TIMEOUT_MS, |d| duration_ms(&d.0)),
        }
    } else if let Some(s) = &t.schedule {
        plan::Trigger::Schedule {
            cron: s.cron.clone(),
            timezone: s.timezone.clone(),
        }
    } else if let Some(p) = &t.poll {
        plan::Trigger::Poll {
            every_ms: duration_ms(&p.every.0),
            uses: parse_uses(&p.uses),
            connection: p.connection.clone(),
            with: p.with.clone().into_iter().collect(),
            items: p.items.clone(),
            cursor: p.cursor.clone(),
        }
    } else {
        plan::Trigger::Deploy
    }
}

fn lower_webhook_auth(a: &model::WebhookAuth) -> Option<plan::WebhookAuth> {
    if let Some(h) = &a.hmac_sha256 {
        Some(plan::WebhookAuth::HmacSha256 {
            secret: h.secret.clone(),
            header: h.header.clone(),
        })
    } else if let Some(s) = &a.standard_webhooks {
        Some(plan::WebhookAuth::StandardWebhooks {
            secret: s.secret.clone(),
        })
    } else {
        a.bearer.as_ref().map(|b| plan::WebhookAuth::Bearer {
            token: b.token.clone(),
        })
    }
}

/// A duration the check has accepted (humantime reads it, in 64 bits of milliseconds), in
/// milliseconds.
fn duration_ms(text: &str) -> u64 {
    crate::duration::parse_ms(text).expect("durations are checked before lowering")
}

pub(super) fn lower_method(m: model::HttpMethod) -> plan::HttpMethod {
    match m {
        model::HttpMethod::Get => plan::HttpMethod::Get,
        model::HttpMethod::Post => plan::HttpMethod::Post,
        model::HttpMethod::Put => plan::HttpMethod::Put,
        model::HttpMethod::Patch => plan::HttpMethod::Patch,
        model::HttpMethod::Delete => plan::HttpMethod::Delete,
        model::HttpMethod::Head => plan::HttpMethod::Head,
    }
}

fn lower_on_error(o: model::OnError) -> plan::OnError {
    match o {
        model::OnError::DeadLetter => plan::OnError::DeadLetter,
        model::OnError::Continue => plan::OnError::Continue,
        model::OnError::Fail => plan::OnError::Fail,
    }
}
