//! The trigger gateway: webhooks at `/hooks/<customer>/<integration><path>`, `/healthz` and
//! `/metrics`. A call is routed, admitted and its auth headers checked before its body is read;
//! a body over the limit is refused with 413 before it is buffered, and bodies in flight share
//! one byte budget; the signature is checked on the raw body before anything is enqueued; an
//! accepted call is answered only once its execution is durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weft_plan::{self as plan, Respond, Trigger};

use crate::auth::{self, Verdict, WebhookAuth};
use crate::engine::Engine;
use crate::error::{StartError, TemplateError};
use crate::instance::{InstanceMap, InstanceRt};
use crate::metrics::StepLabels;
use crate::nesting::{MAX_NESTING, nesting};
use crate::render;
use crate::store::{Op, StoreError};

/// A webhook route.
pub struct Hook {
    pub instance: Arc<InstanceRt>,
    pub flow: String,
    pub method: Method,
    pub auth: WebhookAuth,
    pub respond: Respond,
    pub timeout: Duration,
    pub enabled: bool,
    /// Largest accepted body, in bytes (the plan's `runtime.max_body`, at most the gateway's).
    pub max_body: usize,
}

/// The gateway's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Above this many messages waiting, new calls get 503 (backpressure at the edge).
    pub max_pending: usize,
    /// Messages one instance may have waiting or in flight.
    pub max_instance_pending: usize,
    /// Largest accepted webhook body, in bytes.
    pub max_body: usize,
    /// Bytes of webhook bodies being received at once, across all calls; beyond it, 503.
    pub body_budget: usize,
    /// How long a caller may take to send its body.
    pub body_timeout: Duration,
}

/// Budget permits are counted in KiB.
const BUDGET_UNIT: usize = 1024;

/// Webhook routes by `(customer, integration, path)`.
pub type Hooks = HashMap<(String, String, String), Arc<Hook>>;

pub struct GatewayState {
    engine: Arc<Engine>,
    /// Swapped whole by a reload.
    hooks: ArcSwap<Hooks>,
    limits: Limits,
    /// [`Limits::max_instance_pending`], which a reload may change (one instance or several).
    max_instance_pending: AtomicUsize,
    budget: Arc<Semaphore>,
}

impl GatewayState {
    pub fn new(engine: Arc<Engine>, hooks: Hooks, limits: Limits) -> GatewayState {
        let permits = (limits.body_budget / BUDGET_UNIT).clamp(1, Semaphore::MAX_PERMITS);
        GatewayState {
            engine,
            hooks: ArcSwap::from_pointee(hooks),
            max_instance_pending: AtomicUsize::new(limits.max_instance_pending),
            budget: Arc::new(Semaphore::new(permits)),
            limits,
        }
    }

    /// Routes `hooks` from now on, each instance refused past `max_instance_pending` (a reload).
    pub fn set_hooks(&self, hooks: Hooks, max_instance_pending: usize) {
        self.hooks.store(Arc::new(hooks));
        self.max_instance_pending
            .store(max_instance_pending, Ordering::Relaxed);
    }
}

/// Every webhook route of `instances`, with its auth secrets rendered from config.
pub fn hooks(instances: &InstanceMap, max_body: usize) -> Result<Hooks, StartError> {
    let mut hooks = HashMap::new();
    for instance in instances.values() {
        for (flow, enabled) in instance.flows() {
            let Trigger::Webhook {
                method,
                path,
                auth,
                respond,
                timeout_ms,
            } = &flow.trigger
            else {
                continue;
            };
            let secret = instance.version.flows[&flow.name].webhook_secret.as_ref();
            let auth = resolve_auth(instance, auth.as_ref(), secret).map_err(|source| {
                StartError::Template {
                    instance: instance.key.clone(),
                    part: format!("{} webhook auth", flow.name),
                    source,
                }
            })?;
            let plan_limit =
                usize::try_from(instance.plan().runtime.max_body).unwrap_or(usize::MAX);
            let key = (
                instance.customer.clone(),
                instance.integration().to_string(),
                path.clone(),
            );
            let hook = Hook {
                instance: instance.clone(),
                flow: flow.name.clone(),
                method: method.as_str().parse().unwrap_or(Method::POST),
                auth,
                respond: *respond,
                timeout: Duration::from_millis(*timeout_ms),
                enabled,
                max_body: plan_limit.min(max_body),
            };
            hooks.insert(key, Arc::new(hook));
        }
    }
    Ok(hooks)
}

/// A webhook's auth with its secret (`secret`, the auth's template compiled) rendered from the
/// instance's config.
fn resolve_auth(
    instance: &InstanceRt,
    auth: Option<&plan::WebhookAuth>,
    secret: Option<&render::Compiled>,
) -> Result<WebhookAuth, TemplateError> {
    let (Some(auth), Some(compiled)) = (auth, secret) else {
        return Ok(WebhookAuth::None);
    };
    let ctx = render::context(&json!({ "config": instance.config }));
    let value = render::render(compiled, &ctx)?;
    let secret = value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_string);
    Ok(match auth {
        plan::WebhookAuth::HmacSha256 { header, .. } => {
            WebhookAuth::hmac(secret.as_bytes(), header.clone())
        }
        plan::WebhookAuth::StandardWebhooks { .. } => WebhookAuth::standard(&secret),
        plan::WebhookAuth::Bearer { .. } => WebhookAuth::Bearer {
            token: secret.into_bytes(),
        },
    })
}

pub fn app(state: Arc<GatewayState>) -> Router {
    // The webhook handler enforces the limit itself (413 before reading); this bounds the rest.
    let limit = state.limits.max_body;
    Router::new()
        .route("/hooks/{customer}/{integration}/{*path}", any(webhook))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<GatewayState>>) -> Response {
    let engine = &state.engine;
    for instance in engine.instances().values() {
        for step in instance.enabled_steps() {
            let queue = instance.queue_of(step);
            let depth = engine.queue_depth(&queue);
            engine
                .metrics()
                .queue_depth
                .get_or_create(&StepLabels { queue })
                .set(depth as i64);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        engine.metrics().encode(),
    )
        .into_response()
}

fn count(state: &GatewayState, status: StatusCode) {
    let labels = crate::metrics::StatusLabels {
        status: status.as_u16().to_string(),
    };
    state.engine.metrics().webhooks.get_or_create(&labels).inc();
}

fn reply(state: &GatewayState, status: StatusCode, body: Value) -> Response {
    count(state, status);
    (status, axum::Json(body)).into_response()
}

/// A call turned away: its status and JSON body.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    body: Value,
    /// Close the connection: the caller's body may be left unread.
    close: bool,
    retry_after: bool,
}

impl Refusal {
    fn new(status: StatusCode, body: Value) -> Refusal {
        Refusal {
            status,
            body,
            close: false,
            retry_after: false,
        }
    }

    fn closing(status: StatusCode, body: Value) -> Refusal {
        Refusal {
            close: true,
            ..Refusal::new(status, body)
        }
    }

    fn respond(self, state: &GatewayState) -> Response {
        let mut r = reply(state, self.status, self.body);
        if self.close {
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        if self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

/// A webhook call as received, before its body is read.
struct Call {
    customer: String,
    integration: String,
    path: String,
    method: Method,
    query: Option<String>,
    headers: HeaderMap,
}

async fn webhook(
    State(state): State<Arc<GatewayState>>,
    Path((customer, integration, path)): Path<(String, String, String)>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Response {
    let call = Call {
        customer,
        integration,
        path: format!("/{path}"),
        method,
        query,
        headers,
    };
    match accept(&state, &call, request.into_body()).await {
        Ok(response) => response,
        Err(refusal) => refusal.respond(&state),
    }
}

/// Route, admission and auth headers first; then the body within the budget; then the
/// signature; then one durable commit; then, for sync flows, the flow's reply.
async fn accept(state: &GatewayState, call: &Call, body: Body) -> Result<Response, Refusal> {
    let hook = route(state, call)?;
    let hook = &*hook;
    admit(state, hook)?;
    if let Some(why) = auth::precheck(&hook.auth, &call.headers) {
        return Err(unauthorized(hook, why));
    }
    let (bytes, _budget) = read_body(state, hook, &call.headers, body).await?;
    let now = chrono::Utc::now().timestamp();
    let dedup_id = match auth::verify(&hook.auth, &call.headers, &bytes, now) {
        Verdict::Ok => None,
        Verdict::OkWithId(id) => Some(id),
        Verdict::Denied(why) => return Err(unauthorized(hook, why)),
    };
    let trigger = trigger_value(call, parse_body(&call.headers, &bytes)?);
    drop(bytes);
    let execution = ulid::Ulid::new().to_string();
    let waiter = (hook.respond == Respond::Sync).then(|| state.engine.await_reply(&execution));
    if let Err(refusal) = enqueue(state, hook, trigger, &execution, dedup_id).await {
        state.engine.forget_reply(&execution);
        return Err(refusal);
    }
    let Some(waiter) = waiter else {
        return Ok(reply(
            state,
            StatusCode::ACCEPTED,
            json!({ "execution_id": execution }),
        ));
    };
    Ok(sync_reply(state, hook, &execution, waiter).await)
}

fn route(state: &GatewayState, call: &Call) -> Result<Arc<Hook>, Refusal> {
    let key = (
        call.customer.clone(),
        call.integration.clone(),
        call.path.clone(),
    );
    let Some(hook) = state.hooks.load().get(&key).cloned() else {
        return Err(Refusal::closing(
            StatusCode::NOT_FOUND,
            json!({ "error": "no webhook at this path" }),
        ));
    };
    if call.method != hook.method {
        return Err(Refusal::closing(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({ "error": format!("this webhook accepts {}", hook.method) }),
        ));
    }
    if !hook.enabled {
        return Err(Refusal::closing(
            StatusCode::NOT_FOUND,
            json!({ "error": "this flow is disabled" }),
        ));
    }
    Ok(hook)
}

/// Takes an event unless the process is stopping or busy: busy for this instance first (its
/// own backlog is at its share), then for everyone.
fn admit(state: &GatewayState, hook: &Hook) -> Result<(), Refusal> {
    let engine = &state.engine;
    if engine.is_stopping() {
        return Err(Refusal::closing(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "shutting down" }),
        ));
    }
    if hook.instance.pending.load(Ordering::Relaxed)
        >= state.max_instance_pending.load(Ordering::Relaxed)
    {
        return Err(busy(
            "busy: too many of this instance's messages waiting, retry later",
        ));
    }
    if engine.pending() >= state.limits.max_pending {
        return Err(busy("busy: too many messages waiting, retry later"));
    }
    Ok(())
}

fn busy(why: &str) -> Refusal {
    Refusal {
        retry_after: true,
        ..Refusal::closing(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": why }))
    }
}

fn unauthorized(hook: &Hook, why: &str) -> Refusal {
    tracing::warn!(flow = %hook.flow, instance = %hook.instance.key, "webhook refused: {why}");
    Refusal::closing(StatusCode::UNAUTHORIZED, json!({ "error": "unauthorized" }))
}

fn too_large(limit: usize) -> Refusal {
    Refusal::closing(
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({ "error": format!("the body exceeds {limit} bytes") }),
    )
}

/// Reads the body within the hook's limit, the shared byte budget and the body timeout. The
/// returned permits hold the body's share of the budget until dropped.
async fn read_body(
    state: &GatewayState,
    hook: &Hook,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, Vec<OwnedSemaphorePermit>), Refusal> {
    // Refuse an oversized body from its Content-Length, before reading any of it; a body
    // without one is cut off at the limit while it streams in.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > hook.max_body) {
        return Err(too_large(hook.max_body));
    }
    let read = collect_within(body, hook.max_body, &state.budget);
    match tokio::time::timeout(state.limits.body_timeout, read).await {
        Err(_) => Err(Refusal::closing(
            StatusCode::REQUEST_TIMEOUT,
            json!({ "error": format!("the body did not arrive within {:?}", state.limits.body_timeout) }),
        )),
        Ok(Err(BodyError::TooLarge)) => Err(too_large(hook.max_body)),
        Ok(Err(BodyError::OverBudget)) => {
            Err(busy("busy: too many bodies being received, retry later"))
        }
        Ok(Err(BodyError::Broken)) => Err(Refusal::closing(
            StatusCode::BAD_REQUEST,
            json!({ "error": "the body could not be read" }),
        )),
        Ok(Ok(read)) => Ok(read),
    }
}

/// Why a body was not read whole.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    OverBudget,
    Broken,
}

/// Collects a body of at most `limit` bytes, taking its size from `budget` (in KiB) as it
/// arrives: the bytes held by all calls at once stay bounded. Chunks are kept as they come
/// (no buffer doubling beyond what is charged) and joined once at the end.
pub async fn collect_within(
    mut body: Body,
    limit: usize,
    budget: &Arc<Semaphore>,
) -> Result<(Bytes, Vec<OwnedSemaphorePermit>), BodyError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    let mut permits = Vec::new();
    let mut reserved = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Broken)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if total + data.len() > limit {
            return Err(BodyError::TooLarge);
        }
        total += data.len();
        let needed = total.div_ceil(BUDGET_UNIT);
        if needed > reserved {
            let more = u32::try_from(needed - reserved).map_err(|_| BodyError::OverBudget)?;
            let permit = budget
                .clone()
                .try_acquire_many_owned(more)
                .map_err(|_| BodyError::OverBudget)?;
            permits.push(permit);
            reserved = needed;
        }
        chunks.push(data);
    }
    let bytes = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => {
            let mut joined = Vec::with_capacity(total);
            for c in chunks {
                joined.extend_from_slice(&c);
            }
            Bytes::from(joined)
        }
    };
    Ok((bytes, permits))
}

/// JSON for JSON content types (and text that parses as JSON), else the text itself.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, Refusal> {
    let value = parse_body_value(headers, body)?;
    if nesting(&value) > MAX_NESTING {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            json!({ "error": format!("the body nests deeper than {MAX_NESTING} levels") }),
        ));
    }
    Ok(value)
}

fn parse_body_value(headers: &HeaderMap, body: &[u8]) -> Result<Value, Refusal> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json") || ct.contains("+json"));
    if is_json {
        return serde_json::from_slice::<Value>(body).map_err(|e| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                json!({ "error": format!("malformed JSON body: {e}") }),
            )
        });
    }
    match std::str::from_utf8(body) {
        Ok(text) => {
            Ok(serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())))
        }
        Err(_) => Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!({ "error": "the body is neither JSON nor UTF-8 text" }),
        )),
    }
}

/// `trigger` as the flow's templates see it; credentials headers are left out.
fn trigger_value(call: &Call, body: Value) -> Value {
    let headers: serde_json::Map<String, Value> = call
        .headers
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "authorization" | "cookie"))
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                Value::String(v.to_str().unwrap_or_default().to_string()),
            )
        })
        .collect();
    let query: serde_json::Map<String, Value> = call
        .query
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect()
        })
        .unwrap_or_default();
    crate::render::object([
        ("body", body),
        ("headers", Value::Object(headers)),
        ("query", Value::Object(query)),
        ("method", call.method.as_str().into()),
        ("path", call.path.as_str().into()),
    ])
}

/// Stores the execution durably; a repeated Standard Webhooks id is answered 200 `duplicate`.
async fn enqueue(
    state: &GatewayState,
    hook: &Hook,
    trigger: Value,
    execution: &str,
    dedup_id: Option<String>,
) -> Result<(), Refusal> {
    let engine = &state.engine;
    let mut extra = Vec::new();
    if let Some(id) = &dedup_id {
        // A repeated Standard Webhooks id is enqueued once: the claim fails the whole commit.
        extra.push(Op::Claim {
            key: format!("webhook-id:{}:{}:{id}", hook.instance.key, hook.flow),
            at: crate::clock::now_ms(),
        });
    }
    let ops = engine
        .start_ops(&hook.instance, &hook.flow, trigger, execution, extra)
        .await
        .map_err(|e| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": e.to_string() }),
            )
        })?;
    match engine.store().commit(ops).await {
        Ok(committed) => {
            // Fused steps ran in the commit: a `respond` among them answers now.
            engine.release_replies(committed);
            engine.metrics().executions.inc();
            Ok(())
        }
        Err(StoreError::Duplicate(_)) => Err(Refusal::new(
            StatusCode::OK,
            json!({ "status": "duplicate", "webhook_id": dedup_id }),
        )),
        Err(e) => {
            tracing::error!("enqueueing a webhook failed: {e}");
            Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": "could not store the event; retry later" }),
            ))
        }
    }
}

/// Waits for the flow's `respond` step, up to the webhook's timeout.
async fn sync_reply(
    state: &GatewayState,
    hook: &Hook,
    execution: &str,
    waiter: tokio::sync::oneshot::Receiver<crate::steps::Reply>,
) -> Response {
    let Ok(Ok(r)) = tokio::time::timeout(hook.timeout, waiter).await else {
        state.engine.forget_reply(execution);
        return reply(
            state,
            StatusCode::GATEWAY_TIMEOUT,
            json!({ "error": "the flow did not answer in time; it keeps running", "execution_id": execution }),
        );
    };
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    count(state, status);
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
        header::HeaderValue::from_str(execution).expect("ulid is ascii"),
    );
    response
}
