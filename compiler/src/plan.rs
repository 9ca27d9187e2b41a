//! The compiled plan: the contract between the compiler and the runtime (`plan.json`).
//! The runtime reads these types and nothing else; every map is ordered so that the same
//! sources always serialize to the same bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::model::{Backoff, HttpMethod, OnError, Policy, Respond};

/// Version of the plan format.
pub const PLAN_FORMAT: u32 = 1;

/// One instance's compiled integration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format: u32,
    pub integration: String,
    pub customer: String,
    /// `draft` or `v<N>`.
    pub version: String,
    /// The git commit the integration was compiled from (`None` for a working tree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Resolved config: literal values, secrets as environment variable names only.
    pub config: BTreeMap<String, ConfigValue>,
    pub connections: BTreeMap<String, Connection>,
    /// The components the plan uses, with the actions it calls.
    pub components: BTreeMap<String, Component>,
    /// Flows in declaration order.
    pub flows: Vec<Flow>,
    /// Environment variables the instance needs at run time (sorted).
    pub secrets: Vec<String>,
    /// The project's runtime policy.
    #[serde(default)]
    pub policy: Policy,
}

/// A config value as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    /// Read from the environment variable at run time; never stored.
    Secret {
        secret: String,
    },
    Value(Value),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub component: String,
    /// `bearer`, `basic`, `api_key` or `none`.
    pub auth: String,
    /// Field values: templates over `config`, rendered by the runtime.
    pub with: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    pub version: Option<String>,
    pub base_url: Option<String>,
    /// Container of a custom component; actions without `http` are POSTed to it.
    pub image: Option<String>,
    pub actions: BTreeMap<String, Action>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Declarative REST call; `None` for custom code in `image`.
    pub http: Option<HttpCall>,
    /// JSON Schema of the action's input, checked again at run time on rendered values.
    pub input: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpCall {
    pub method: HttpMethod,
    pub path: String,
    pub query: BTreeMap<String, Value>,
    pub headers: BTreeMap<String, String>,
    pub body: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    pub name: String,
    pub enabled: bool,
    pub trigger: Trigger,
    /// Queue the trigger writes to (the first step's input), `None` for a flow without steps.
    pub entry_queue: Option<String>,
    /// Steps in topological order, ties broken by declaration order.
    pub steps: Vec<Step>,
    pub edges: Vec<Edge>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Webhook {
        method: HttpMethod,
        /// Path below `/hooks/<customer>/<integration>`.
        path: String,
        auth: Option<WebhookAuth>,
        respond: Respond,
        timeout_ms: u64,
    },
    Schedule {
        cron: String,
        timezone: String,
    },
    Poll {
        every_ms: u64,
        uses: String,
        connection: Option<String>,
        with: BTreeMap<String, Value>,
        items: Option<String>,
        cursor: Option<String>,
    },
    Deploy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookAuth {
    HmacSha256 { secret: String, header: String },
    StandardWebhooks { secret: String },
    Bearer { token: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: String,
    /// A built-in (`transform`, `http.request`, ...) or `component.action`.
    pub uses: String,
    /// The step's input queue.
    pub queue: String,
    /// Inputs with templates kept as source, rendered by the runtime per message.
    pub with: BTreeMap<String, Value>,
    pub connection: Option<String>,
    pub retry: RetryPolicy,
    pub on_error: OnError,
    pub timeout_ms: u64,
    pub replicas: u32,
    /// The enclosing `for_each` step, for steps of a loop body.
    pub for_each: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub backoff: Backoff,
    pub initial_ms: u64,
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

/// What links two nodes of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    /// `trigger` or a step id.
    pub from: String,
    pub to: String,
    pub kind: EdgeKind,
    /// The queue that carries messages along this edge (the target's input queue).
    pub queue: String,
}
