//! The trigger gateway: webhooks at `/hooks/<customer>/<integration><path>`, `/healthz` and
//! `/metrics`. Authentication is checked on the raw body before anything is enqueued; a body
//! over the limit is refused with 413 before it is buffered; an accepted call is answered only
//! once its execution is durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::{Value, json};
use weft_plan::Respond;

use crate::auth::{self, Verdict, WebhookAuth};
use crate::engine::{Engine, InstanceRt};
use crate::store::Op;

/// A webhook route.
pub struct Hook {
    pub instance: Arc<InstanceRt>,
    pub flow: String,
    pub method: Method,
    pub auth: WebhookAuth,
    pub respond: Respond,
    pub timeout: Duration,
    pub enabled: bool,
}

pub struct GatewayState {
    pub engine: Arc<Engine>,
    /// By `(customer, integration, path)`.
    pub hooks: HashMap<(String, String, String), Hook>,
    /// Above this many messages waiting, new calls get 503 (backpressure at the edge).
    pub max_pending: usize,
    /// Largest accepted webhook body, in bytes.
    pub max_body: usize,
}

pub fn app(state: Arc<GatewayState>, max_body: usize) -> Router {
    Router::new()
        .route("/hooks/{customer}/{integration}/{*path}", any(webhook))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        // The webhook handler enforces the limit itself (413 before reading); this bounds the rest.
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<GatewayState>>) -> Response {
    let engine = &state.engine;
    for instance in engine.instances.values() {
        for flow in instance.flows.values() {
            for step in flow.steps.values() {
                let depth = engine
                    .dispatch
                    .queues
                    .get(&step.step.queue)
                    .map_or(0, |q| q.len());
                engine
                    .metrics
                    .queue_depth
                    .get_or_create(&step.labels)
                    .set(depth as i64);
            }
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        engine.metrics.encode(),
    )
        .into_response()
}

fn count(state: &GatewayState, status: StatusCode) {
    let labels = crate::metrics::StatusLabels {
        status: status.as_u16().to_string(),
    };
    state.engine.metrics.webhooks.get_or_create(&labels).inc();
}

fn reply(state: &GatewayState, status: StatusCode, body: Value) -> Response {
    count(state, status);
    (status, axum::Json(body)).into_response()
}

async fn webhook(
    State(state): State<Arc<GatewayState>>,
    Path((customer, integration, path)): Path<(String, String, String)>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Response {
    // Refuse an oversized body from its Content-Length, before reading any of it; a body
    // without one is cut off at the limit while it streams in.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > state.max_body) {
        let mut r = reply(
            &state,
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({ "error": format!("the body exceeds {} bytes", state.max_body) }),
        );
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return r;
    }
    let body: Bytes = match axum::body::to_bytes(request.into_body(), state.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return reply(
                &state,
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({ "error": format!("the body exceeds {} bytes", state.max_body) }),
            );
        }
    };
    let key = (customer, integration, format!("/{path}"));
    let Some(hook) = state.hooks.get(&key) else {
        return reply(
            &state,
            StatusCode::NOT_FOUND,
            json!({ "error": "no webhook at this path" }),
        );
    };
    if method != hook.method {
        return reply(
            &state,
            StatusCode::METHOD_NOT_ALLOWED,
            json!({ "error": format!("this webhook accepts {}", hook.method) }),
        );
    }
    let now = chrono::Utc::now().timestamp();
    let dedup_id = match auth::verify(&hook.auth, &headers, &body, now) {
        Verdict::Ok => None,
        Verdict::OkWithId(id) => Some(id),
        Verdict::Denied(why) => {
            tracing::warn!(flow = %hook.flow, instance = %hook.instance.key, "webhook refused: {why}");
            return reply(
                &state,
                StatusCode::UNAUTHORIZED,
                json!({ "error": "unauthorized" }),
            );
        }
    };
    if !hook.enabled {
        return reply(
            &state,
            StatusCode::NOT_FOUND,
            json!({ "error": "this flow is disabled" }),
        );
    }
    let engine = &state.engine;
    if engine.stopping.load(Ordering::Relaxed) {
        return reply(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "shutting down" }),
        );
    }
    if engine.dispatch.pending.load(Ordering::Relaxed) >= state.max_pending {
        let mut r = reply(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "busy: too many messages waiting, retry later" }),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return r;
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json") || ct.contains("+json"));
    let parsed = if body.is_empty() {
        Value::Null
    } else if is_json {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => v,
            Err(e) => {
                return reply(
                    &state,
                    StatusCode::BAD_REQUEST,
                    json!({ "error": format!("malformed JSON body: {e}") }),
                );
            }
        }
    } else {
        match std::str::from_utf8(&body) {
            Ok(text) => {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
            }
            Err(_) => {
                return reply(
                    &state,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    json!({ "error": "the body is neither JSON nor UTF-8 text" }),
                );
            }
        }
    };
    let header_map: serde_json::Map<String, Value> = headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "authorization" | "cookie"))
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                Value::String(v.to_str().unwrap_or_default().to_string()),
            )
        })
        .collect();
    let query_map: serde_json::Map<String, Value> = query
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect()
        })
        .unwrap_or_default();
    let trigger = json!({ "body": parsed, "headers": header_map, "query": query_map, "method": method.as_str(), "path": key.2 });
    let mut extra = Vec::new();
    if let Some(id) = &dedup_id {
        // A repeated Standard Webhooks id is enqueued once: the claim fails the whole commit.
        extra.push(Op::Claim {
            key: format!("webhook-id:{}:{}:{id}", hook.instance.key, hook.flow),
        });
    }
    let sync = hook.respond == Respond::Sync;
    let execution = ulid::Ulid::new().to_string();
    let waiter = if sync {
        let (tx, rx) = tokio::sync::oneshot::channel();
        engine
            .waiters
            .lock()
            .expect("waiters")
            .insert(execution.clone(), tx);
        Some(rx)
    } else {
        None
    };
    let ops = match engine.start_ops(&hook.instance, &hook.flow, trigger, &execution, extra) {
        Ok(ops) => ops,
        Err(e) => {
            return reply(
                &state,
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": e }),
            );
        }
    };
    if let Err(e) = engine.store.commit(ops).await {
        engine.waiters.lock().expect("waiters").remove(&execution);
        if e.contains("UNIQUE constraint failed: state.key") {
            return reply(
                &state,
                StatusCode::OK,
                json!({ "status": "duplicate", "webhook_id": dedup_id }),
            );
        }
        tracing::error!("enqueueing a webhook failed: {e}");
        return reply(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "could not store the event; retry later" }),
        );
    }
    engine.metrics.executions.inc();
    let Some(waiter) = waiter else {
        return reply(
            &state,
            StatusCode::ACCEPTED,
            json!({ "execution_id": execution }),
        );
    };
    match tokio::time::timeout(hook.timeout, waiter).await {
        Ok(Ok(r)) => {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
            count(&state, status);
            let mut response = match r.body {
                Value::String(s) => (status, s).into_response(),
                other => (status, axum::Json(other)).into_response(),
            };
            for (k, v) in &r.headers {
                if let (Ok(name), Ok(value)) = (
                    header::HeaderName::from_bytes(k.as_bytes()),
                    header::HeaderValue::from_str(v),
                ) {
                    response.headers_mut().insert(name, value);
                }
            }
            response.headers_mut().insert(
                "x-weft-execution-id",
                header::HeaderValue::from_str(&execution).expect("ulid is ascii"),
            );
            response
        }
        _ => {
            engine.waiters.lock().expect("waiters").remove(&execution);
            reply(
                &state,
                StatusCode::GATEWAY_TIMEOUT,
                json!({ "error": "the flow did not answer in time; it keeps running", "execution_id": execution }),
            )
        }
    }
}
