//! `plan.json`: the contract between weft's compiler and its runtime (the in-process runtime,
//! the gateway and the step workers). Nothing here comes from the source model: a change to the
//! YAML format changes a plan only through the compiler's lowering stage. Every map is ordered,
//! so the same sources always serialize to the same bytes. [`Plan::from_json`] checks the
//! format version before anything else.

pub mod broker_names;
pub mod builtin;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use builtin::{Builtin, Family};

/// Version of the plan format; a runtime refuses a plan of any other version.
/// 2: typed `uses`, branch cases, connection auth kinds, per-step secrets, runtime settings.
pub const PLAN_FORMAT: u32 = 2;

/// A plan that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("not a weft plan: {0}")]
    Malformed(String),
    #[error(
        "this bundle was built for plan format {found}, and this weft reads format {expected}: rebuild it with `weft build` from this version"
    )]
    Version { found: u64, expected: u32 },
}

/// One instance's compiled integration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "weft plan (plan.json)")]
pub struct Plan {
    /// The plan format version ([`PLAN_FORMAT`]).
    pub format: u32,
    /// The integration's name.
    pub integration: String,
    /// The customer whose instance this is.
    pub customer: String,
    /// `draft` or `v<N>`.
    pub version: String,
    /// The git commit the integration was compiled from (absent for a working tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Resolved config: literal values, secrets as environment variable names only.
    pub config: BTreeMap<String, ConfigValue>,
    /// Connections by name: credentials bound to a component's auth kind.
    pub connections: BTreeMap<String, Connection>,
    /// The components the plan uses, with the actions it calls.
    pub components: BTreeMap<String, Component>,
    /// Flows in declaration order.
    pub flows: Vec<Flow>,
    /// Environment variables the instance needs at run time (sorted).
    pub secrets: Vec<String>,
    /// Rules the runtime enforces.
    pub policy: Policy,
    /// How the instance is served: gateway port, body limit, broker.
    pub runtime: RuntimeSettings,
}

impl Plan {
    /// Reads a plan, checking its format version: a bundle built by another version of weft
    /// gets a clear error rather than a field-by-field complaint. The document is parsed once
    /// when it reads (a fleet loads thousands); only a failure looks at the format alone.
    pub fn from_json(text: &str) -> Result<Plan, PlanError> {
        let expected = |found: u64| PlanError::Version {
            found,
            expected: PLAN_FORMAT,
        };
        let parse_error = match serde_json::from_str::<Plan>(text) {
            Ok(plan) if plan.format == PLAN_FORMAT => return Ok(plan),
            Ok(plan) => return Err(expected(u64::from(plan.format))),
            Err(e) => e,
        };
        /// Only the format: the rest of the document is skipped, not built.
        #[derive(Deserialize)]
        struct Format {
            format: Option<u64>,
        }
        let format = match serde_json::from_str::<Format>(text) {
            Ok(Format { format }) => format,
            // Not an object, or a format that is not a number: say what is missing.
            Err(_) => serde_json::from_str::<Value>(text)
                .map_err(|e| PlanError::Malformed(e.to_string()))?
                .get("format")
                .and_then(Value::as_u64),
        };
        let found = format.ok_or_else(|| PlanError::Malformed("no `format` field".into()))?;
        if found != u64::from(PLAN_FORMAT) {
            return Err(expected(found));
        }
        Err(PlanError::Malformed(parse_error.to_string()))
    }

    /// `<customer>/<integration>`: the instance's key in logs, metrics and queues.
    pub fn instance_key(&self) -> String {
        format!("{}/{}", self.customer, self.integration)
    }

    /// The secrets the triggers read (webhook auth, poll calls): what a gateway needs.
    pub fn trigger_secrets(&self) -> BTreeSet<&str> {
        self.flows
            .iter()
            .flat_map(|f| f.trigger_secrets.iter().map(String::as_str))
            .collect()
    }

    /// The secrets the gateway's process reads: its triggers' and those of the fused steps
    /// it runs (the pure steps right after a trigger).
    pub fn gateway_secrets(&self) -> BTreeSet<&str> {
        let mut secrets = self.trigger_secrets();
        for flow in &self.flows {
            secrets.extend(
                flow.fused_with(None)
                    .flat_map(|s| s.secrets.iter().map(String::as_str)),
            );
        }
        secrets
    }
}

/// A config value as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ConfigValue {
    /// Read from the environment variable at run time; never stored.
    Secret {
        /// The environment variable that holds the value.
        secret: String,
    },
    /// A literal value.
    Value(Value),
}

/// How a connection authenticates its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `Authorization: Basic base64(username:password)`.
    Basic,
    /// A header (`header`, default `X-API-Key`) carrying `key`.
    ApiKey,
    /// No credentials.
    None,
}

/// Credentials bound to a component's auth kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// The component the connection authenticates against.
    pub component: String,
    /// The auth kind.
    pub auth: AuthKind,
    /// Field values: templates over `config`, rendered by the runtime.
    pub with: BTreeMap<String, Value>,
}

/// A component as the plan uses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// The component's version, if it declares one.
    pub version: Option<String>,
    /// Base URL of the component's REST API.
    pub base_url: Option<String>,
    /// Container of a custom component; actions without `http` are POSTed to it.
    pub image: Option<String>,
    /// The actions the plan calls.
    pub actions: BTreeMap<String, Action>,
}

/// One action of a component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// Declarative REST call; absent for custom code in `image`.
    pub http: Option<HttpCall>,
    /// JSON Schema of the action's input (checked by the compiler on literal inputs).
    pub input: Option<Value>,
}

/// HTTP methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
}

impl HttpMethod {
    pub const fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Head => "HEAD",
        }
    }
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A declarative REST call; every string is a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCall {
    /// The HTTP method.
    pub method: HttpMethod,
    /// Path below the base URL.
    pub path: String,
    /// Query parameters.
    pub query: BTreeMap<String, Value>,
    /// Request headers.
    pub headers: BTreeMap<String, String>,
    /// Request body.
    pub body: Option<Value>,
}

/// One flow: a trigger and its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    /// The flow's name.
    pub name: String,
    /// Whether the instance runs the flow.
    pub enabled: bool,
    /// What starts an execution.
    pub trigger: Trigger,
    /// Secret environment variables the trigger reads (sorted).
    pub trigger_secrets: Vec<String>,
    /// Queue the trigger writes to (the first step's input); absent for a flow without steps.
    pub entry_queue: Option<String>,
    /// Steps in topological order, ties broken by declaration order.
    pub steps: Vec<Step>,
    /// What links the trigger and the steps.
    pub edges: Vec<Edge>,
}

impl Flow {
    /// The step whose process runs fused step `step` (`None`: the trigger's, the gateway):
    /// edges are followed back through fused steps to the first step with a queue hop of its
    /// own. A step reached along several edges belongs to its first edge's leader.
    pub fn fused_leader(&self, step: &str) -> Option<&str> {
        let mut at = step;
        for _ in 0..=self.steps.len() {
            let from = self.edges.iter().find(|e| e.to == at)?.from.as_str();
            match self.steps.iter().find(|s| s.id == from) {
                Some(s) if s.fused => at = &s.id,
                Some(s) => return Some(&s.id),
                None => return None, // the trigger
            }
        }
        None
    }

    /// The secrets the process of step `step` reads: its own and its fused steps'.
    pub fn step_process_secrets<'a>(&'a self, step: &'a Step) -> BTreeSet<&'a str> {
        std::iter::once(step)
            .chain(self.fused_with(Some(&step.id)))
            .flat_map(|s| s.secrets.iter().map(String::as_str))
            .collect()
    }

    /// The steps with a process of their own (every step but the fused ones).
    pub fn leading_steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| !s.fused)
    }

    /// The fused steps run in the process of `leader` (a step id, or `None`: the trigger's).
    pub fn fused_with<'a>(
        &'a self,
        leader: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Step> + 'a {
        self.steps
            .iter()
            .filter(move |s| s.fused && self.fused_leader(&s.id) == leader)
    }
}

/// Whether steps of this kind run fused (see [`Step::fused`]).
pub fn is_pure(uses: &Uses) -> bool {
    [
        Builtin::Transform,
        Builtin::Branch,
        Builtin::Log,
        Builtin::Respond,
    ]
    .into_iter()
    .any(|b| uses.is(b))
}

/// When a webhook's caller gets its answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Respond {
    /// 202 once the event is stored.
    #[default]
    Async,
    /// The answer of the flow's `respond` step.
    Sync,
}

/// What starts an execution of a flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// An HTTP call to the gateway.
    Webhook {
        /// The accepted method.
        method: HttpMethod,
        /// Path below `/hooks/<customer>/<integration>`.
        path: String,
        /// How callers authenticate.
        auth: Option<WebhookAuth>,
        /// When the caller gets its answer.
        respond: Respond,
        /// How long a sync caller waits, in milliseconds.
        timeout_ms: u64,
    },
    /// A cron schedule.
    Schedule {
        /// Cron expression.
        cron: String,
        /// IANA timezone.
        timezone: String,
    },
    /// An API polled with a saved cursor.
    Poll {
        /// Interval in milliseconds (at least 1).
        every_ms: u64,
        /// The action called.
        uses: Uses,
        /// The connection the action authenticates with.
        connection: Option<String>,
        /// The action's inputs (templates).
        with: BTreeMap<String, Value>,
        /// Template selecting the list of new items from the answer.
        items: Option<String>,
        /// Template computing the next cursor.
        cursor: Option<String>,
    },
    /// Once per deployed plan.
    Deploy,
}

/// Webhook authentication; secrets are templates over `config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookAuth {
    /// HMAC-SHA256 of the raw body.
    HmacSha256 {
        /// The shared secret.
        secret: String,
        /// The header carrying the signature.
        header: String,
    },
    /// Standard Webhooks.
    StandardWebhooks {
        /// The signing secret (`whsec_…`).
        secret: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The expected token.
        token: String,
    },
}

impl WebhookAuth {
    /// The template that yields the secret compared against the request.
    pub fn secret_template(&self) -> &str {
        match self {
            WebhookAuth::HmacSha256 { secret, .. } | WebhookAuth::StandardWebhooks { secret } => {
                secret
            }
            WebhookAuth::Bearer { token } => token,
        }
    }
}

/// What a step runs: a built-in or a component's action. Written as in the source
/// (`transform`, `http.post`, `crm.create_contact`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Uses {
    Builtin(Builtin),
    Action { component: String, action: String },
}

impl Uses {
    /// Reads `uses:` text: a built-in name, else `component.action`.
    pub fn parse(text: &str) -> Option<Uses> {
        if let Some(b) = Builtin::from_name(text) {
            return Some(Uses::Builtin(b));
        }
        let (component, action) = text.split_once('.')?;
        (!component.is_empty() && !action.is_empty()).then(|| Uses::Action {
            component: component.to_string(),
            action: action.to_string(),
        })
    }

    pub fn builtin(&self) -> Option<Builtin> {
        match self {
            Uses::Builtin(b) => Some(*b),
            Uses::Action { .. } => None,
        }
    }

    pub fn is(&self, builtin: Builtin) -> bool {
        self.builtin() == Some(builtin)
    }
}

impl fmt::Display for Uses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uses::Builtin(b) => f.write_str(b.name()),
            Uses::Action { component, action } => write!(f, "{component}.{action}"),
        }
    }
}

impl From<Uses> for String {
    fn from(u: Uses) -> String {
        u.to_string()
    }
}

impl TryFrom<String> for Uses {
    type Error = String;
    fn try_from(text: String) -> Result<Uses, String> {
        Uses::parse(&text)
            .ok_or_else(|| format!("`{text}` is neither a built-in step nor `component.action`"))
    }
}

impl JsonSchema for Uses {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Uses".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A built-in step (`transform`, `http.post`, ...) or `component.action`",
            "type": "string",
            "pattern": "^[a-z_]+(\\.[a-z_][a-z0-9_-]*)?$|^[a-z][a-z0-9-]*\\.[a-z_][a-z0-9_-]*$"
        })
    }
}

/// One case of a `branch` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BranchCase {
    /// A template that evaluates to true or false.
    pub when: String,
}

/// One step of a flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique within the integration.
    pub id: String,
    /// A built-in or `component.action`.
    pub uses: Uses,
    /// The step's input queue.
    pub queue: String,
    /// Inputs with templates kept as source, rendered by the runtime per message (empty for
    /// `branch`, whose conditions are in `cases`).
    pub with: BTreeMap<String, Value>,
    /// A `branch` step's cases, tried in order (edge `case(i)` leads to case `i`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cases: Vec<BranchCase>,
    /// The connection a component action authenticates with.
    pub connection: Option<String>,
    /// Attempts and backoff.
    pub retry: RetryPolicy,
    /// What happens once retries are exhausted.
    pub on_error: OnError,
    /// Time limit of one attempt, in milliseconds.
    pub timeout_ms: u64,
    /// Workers (containers) running the step.
    pub replicas: u32,
    /// A pure step (`transform`, `branch`, `log`, `respond`: no side effect, deterministic)
    /// runs inline, in the same durable commit as what its predecessor produced, with no queue
    /// hop of its own; its process is its group leader's (see [`Flow::fused_leader`]). Its
    /// queue still serves a failed inline run, which is retried there like any other step's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fused: bool,
    /// The enclosing `for_each` step, for steps of a loop body.
    pub for_each: Option<String>,
    /// Secret environment variables the step's inputs and connection read (sorted).
    pub secrets: Vec<String>,
    /// Kubernetes requests and limits of the step's containers, when the step sets its own
    /// (the project's defaults otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// Kubernetes resource requests and limits of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Resources {
    /// What the scheduler reserves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceAmounts>,
    /// The most the container may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceAmounts>,
}

/// CPU and memory, as Kubernetes quantities (`250m`, `1`, `128Mi`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceAmounts {
    /// CPU, e.g. `250m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory, e.g. `128Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// Retry backoff.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// Doubles per attempt, with jitter.
    #[default]
    Exponential,
    /// The same delay every time.
    Fixed,
}

/// A step's retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// How the delay grows.
    pub backoff: Backoff,
    /// First delay, in milliseconds.
    pub initial_ms: u64,
    /// Largest delay, in milliseconds.
    pub max_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Backoff::Exponential,
            initial_ms: 1_000,
            max_ms: 60_000,
        }
    }
}

/// What happens once a step's retries are exhausted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Keep the message in the dead-letter queue, replayable.
    #[default]
    DeadLetter,
    /// Go on with the next step; the step's output is `{ "error": ... }`.
    Continue,
    /// Stop the execution and mark it failed.
    Fail,
}

/// What links two nodes of a flow.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// The next step in series.
    Next,
    /// The first step of a branch case (index into `cases`).
    Case(usize),
    /// The first step of a branch's `default`, or what follows when no case matches.
    Default,
    /// The first step of a `for_each` body, once per item.
    Body,
}

/// An edge of a flow's step graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    /// `trigger` or a step id.
    pub from: String,
    /// A step id.
    pub to: String,
    /// What kind of link.
    pub kind: EdgeKind,
    /// The queue that carries messages along this edge (the target's input queue).
    pub queue: String,
}

/// Rules the runtime enforces for an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Refuse HTTP calls to private, loopback and link-local addresses.
    pub deny_private_addresses: bool,
}

/// How an instance is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// The port the gateway listens on.
    pub port: u16,
    /// Largest accepted webhook body, in bytes.
    pub max_body: u64,
    /// The NATS JetStream broker of container mode.
    pub broker_url: String,
}

/// Status of one attempt of a step, as history records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepRunStatus {
    /// The step produced its output.
    Succeeded,
    /// The attempt failed and another follows.
    Retrying,
    /// The last attempt failed.
    Failed,
}

impl StepRunStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            StepRunStatus::Succeeded => "succeeded",
            StepRunStatus::Retrying => "retrying",
            StepRunStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for StepRunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON Schema of `plan.json` (draft 2020-12), published as `schemas/plan.schema.json`.
pub fn json_schema() -> Value {
    schemars::schema_for!(Plan).to_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_round_trips_as_text() {
        for text in ["transform", "http.post", "crm.create_contact"] {
            let uses = Uses::parse(text).unwrap();
            assert_eq!(uses.to_string(), text);
            let json = serde_json::to_value(&uses).unwrap();
            assert_eq!(json, Value::String(text.into()));
            assert_eq!(serde_json::from_value::<Uses>(json).unwrap(), uses);
        }
        assert!(Uses::parse("nonsense").is_none());
        assert!(Uses::parse("http.post").unwrap().is(Builtin::HttpPost));
    }

    #[test]
    fn another_format_is_refused_with_a_clear_error() {
        let err = Plan::from_json(r#"{"format": 1, "integration": "x"}"#).unwrap_err();
        assert!(
            err.to_string().contains("rebuild it with `weft build`"),
            "{err}"
        );
        let err = Plan::from_json("[]").unwrap_err();
        assert!(err.to_string().contains("no `format`"), "{err}");
    }

    #[test]
    fn another_format_or_no_format_is_named_before_any_field() {
        assert!(matches!(
            Plan::from_json(r#"{"format": 999, "customer": 1}"#),
            Err(PlanError::Version { found: 999, .. })
        ));
        for text in ["{}", "[]", r#"{"format": "1"}"#] {
            assert!(
                matches!(Plan::from_json(text), Err(PlanError::Malformed(ref m)) if m.contains("format")),
                "{text}"
            );
        }
        let wrong_field = format!(r#"{{"format": {PLAN_FORMAT}, "customer": 1}}"#);
        assert!(matches!(
            Plan::from_json(&wrong_field),
            Err(PlanError::Malformed(_))
        ));
    }
}
