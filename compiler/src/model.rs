//! The typed source model: what users write in `weft.yaml`, `components/`, `integrations/` and
//! `instances/`. The JSON Schemas in `schemas/` are generated from these types (doc comments
//! become descriptions), so the model and the published schemas cannot drift apart.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The format version; `1` is the only one so far.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[schemars(extend("const" = 1))]
pub struct FormatVersion(pub u32);

/// A name: lower-case letters, digits and `-`, starting with a letter.
#[derive(
    Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct Name(#[schemars(regex(pattern = r"^[a-z][a-z0-9-]*$"))] pub String);

/// A duration such as `500ms`, `30s`, `5m`, `1h` or `1h 30m`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct DurationText(
    #[schemars(regex(pattern = weft_plan::builtin::DURATION_PATTERN))] pub String,
);

/// `weft.yaml` at the repository root: project-wide defaults.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "weft project (weft.yaml)")]
pub struct Project {
    /// Format version of this file: always `1`.
    pub weft: FormatVersion,
    /// The project's name, shown in bundles and logs.
    pub name: Option<Name>,
    /// Container images the emitted docker-compose files run.
    #[serde(default)]
    pub images: Images,
    /// The trigger gateway that serves webhooks.
    #[serde(default)]
    pub gateway: Gateway,
    /// Defaults for every step that does not set its own.
    #[serde(default)]
    pub defaults: StepDefaults,
    /// Rules the runtime enforces for every instance.
    #[serde(default)]
    pub policy: Policy,
    /// The NATS JetStream broker of Kubernetes deployments (external to the bundles).
    #[serde(default)]
    pub broker: BrokerSettings,
    /// Kubernetes output (`weft build --target k8s`).
    #[serde(default)]
    pub kubernetes: KubernetesSettings,
}

/// The broker bundles use on Kubernetes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// Its URL; the default is the service the official NATS Helm chart creates (release
    /// `nats`, same namespace). docker-compose bundles run their own broker.
    #[serde(default = "default_broker_url")]
    pub url: String,
    /// Its monitoring endpoint (`host:port`), which KEDA's NATS JetStream scaler reads
    /// (`--autoscale`).
    #[serde(default = "default_broker_monitoring")]
    pub monitoring: String,
    /// Copies of each stream the broker keeps (3 on a 3-node JetStream cluster).
    #[serde(default = "default_stream_replicas")]
    #[schemars(range(min = 1, max = 5))]
    pub stream_replicas: u8,
}

fn default_stream_replicas() -> u8 {
    1
}

fn default_broker_url() -> String {
    "nats://nats:4222".into()
}
fn default_broker_monitoring() -> String {
    "nats:8222".into()
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            url: default_broker_url(),
            monitoring: default_broker_monitoring(),
            stream_replicas: default_stream_replicas(),
        }
    }
}

/// Defaults of the Kubernetes manifests.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSettings {
    /// Requests and limits of every container whose step sets none.
    #[serde(default = "default_resources")]
    pub resources: Resources,
    /// Size of the gateway's volume (execution history, dead letters, trigger state).
    #[serde(default = "default_gateway_storage")]
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|Ti)$"))]
    pub gateway_storage: String,
}

fn default_resources() -> Resources {
    Resources {
        requests: Some(ResourceAmounts {
            cpu: Some("50m".into()),
            memory: Some("32Mi".into()),
        }),
        limits: Some(ResourceAmounts {
            cpu: Some("1".into()),
            memory: Some("256Mi".into()),
        }),
    }
}
fn default_gateway_storage() -> String {
    "1Gi".into()
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            resources: default_resources(),
            gateway_storage: default_gateway_storage(),
        }
    }
}

/// Runtime policy for multi-tenant hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Refuse HTTP calls to private, loopback and link-local addresses (checked on the resolved
    /// address, redirects included).
    #[serde(default)]
    pub deny_private_addresses: bool,
}

/// Container images used by `docker-compose.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Images {
    /// The weft runtime image (gateway and steps); `WEFT_RUNTIME_IMAGE` overrides it when the
    /// compose file runs.
    #[serde(default = "default_runtime_image")]
    pub runtime: String,
    /// The NATS JetStream broker image; `WEFT_BROKER_IMAGE` overrides it when the compose file
    /// runs.
    #[serde(default = "default_broker_image")]
    pub broker: String,
}

/// The image `weft image build` tags by default: this version of weft.
fn default_runtime_image() -> String {
    format!("weft/runtime:{}", env!("CARGO_PKG_VERSION"))
}
/// The official NATS image (a JetStream server); `weft image build --broker` builds a local one.
fn default_broker_image() -> String {
    "nats:2.11".into()
}

impl Default for Images {
    fn default() -> Self {
        Images {
            runtime: default_runtime_image(),
            broker: default_broker_image(),
        }
    }
}

/// The trigger gateway.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    /// The port the gateway listens on in its container (each bundle publishes it on its own
    /// host port).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Largest accepted webhook body, e.g. `10MB`.
    #[serde(default = "default_max_body")]
    #[schemars(regex(pattern = r"^[0-9]+ ?(B|KB|MB|KiB|MiB)$"))]
    pub max_body: String,
}

fn default_port() -> u16 {
    8080
}
fn default_max_body() -> String {
    "10MB".into()
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            port: default_port(),
            max_body: default_max_body(),
        }
    }
}

/// Defaults applied to steps.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDefaults {
    /// Retry policy of steps that set none.
    pub retry: Option<Retry>,
    /// What to do once retries are exhausted.
    pub on_error: Option<OnError>,
    /// Container replicas per step.
    #[schemars(range(min = 1))]
    pub replicas: Option<u32>,
    /// Time limit of one attempt of a step.
    pub timeout: Option<DurationText>,
}

/// `integrations/<name>/integration.yaml`: one integration, one or more flows.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "weft integration")]
pub struct Integration {
    /// Format version of this file: always `1`.
    pub weft: FormatVersion,
    /// Unique in the repository; the folder is named the same.
    pub name: Name,
    /// One line shown in listings and the marketplace catalog.
    pub description: Option<String>,
    /// Marketplace category, e.g. `ERP`.
    pub category: Option<String>,
    /// Lower-case labels for filtering.
    #[serde(default)]
    pub labels: Vec<Label>,
    /// Path of an icon, relative to the integration's folder.
    pub icon: Option<String>,
    /// Offered as a starting point by `weft new integration --from`.
    #[serde(default)]
    pub template: bool,
    /// Config variables: what each customer's instance sets.
    #[serde(default)]
    #[schemars(extend("propertyNames" = {"pattern": "^[a-z][a-z0-9_]*$"}))]
    pub config: IndexMap<String, ConfigVar>,
    /// Credentials bound to a component's auth kind.
    #[serde(default)]
    #[schemars(extend("propertyNames" = {"pattern": "^[a-z][a-z0-9_-]*$"}))]
    pub connections: IndexMap<String, Connection>,
    /// The flows: each has exactly one trigger and steps run in series.
    #[schemars(extend("propertyNames" = {"pattern": "^[a-z][a-z0-9-]*$"}, "minProperties" = 1))]
    pub flows: IndexMap<String, Flow>,
}

/// A lower-case label.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct Label(#[schemars(regex(pattern = r"^[a-z0-9][a-z0-9 _-]*$"))] pub String);

/// A config variable.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigVar {
    /// The variable's type; instances are checked against it.
    #[serde(rename = "type")]
    pub kind: ConfigType,
    /// Value used when an instance sets none; without a default the variable is required.
    pub default: Option<Value>,
    /// The allowed values of an `enum` variable.
    pub values: Option<Vec<String>>,
    /// Shown to whoever configures an instance.
    pub description: Option<String>,
}

/// Types of config variables.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConfigType {
    String,
    Integer,
    Number,
    Boolean,
    /// An absolute `http` or `https` URL.
    Url,
    /// A secret: instances give `{ secret: ENV_NAME }`, never the value.
    Secret,
    /// One of `values`.
    Enum,
    /// Any JSON value.
    Json,
}

/// A connection: a component's credentials, filled from config.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// The component (in `components/`) this connection authenticates against.
    pub component: String,
    /// The auth kind, one of those the component accepts (`bearer`, `basic`, `api_key`, `none`).
    pub auth: String,
    /// Values for the auth kind's fields; usually templates over `config`.
    #[serde(default)]
    pub with: IndexMap<String, Value>,
}

/// A flow: one trigger, then steps in series.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    /// What the flow does.
    pub description: Option<String>,
    /// What starts the flow: exactly one of `webhook`, `schedule`, `poll` or `deploy`.
    pub trigger: Trigger,
    /// The steps, run in series.
    #[serde(default)]
    pub steps: Vec<Step>,
}

/// What starts a flow: exactly one kind.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct Trigger {
    /// An HTTP call to the gateway at `/hooks/<customer>/<integration><path>`.
    pub webhook: Option<WebhookTrigger>,
    /// A cron schedule.
    pub schedule: Option<ScheduleTrigger>,
    /// Poll an API action at an interval, remembering a cursor.
    pub poll: Option<PollTrigger>,
    /// Runs once when an instance is deployed or its version changes.
    pub deploy: Option<DeployTrigger>,
}

/// A webhook trigger.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookTrigger {
    /// Path below the integration's hook URL; starts with `/`.
    #[schemars(regex(pattern = r"^/[A-Za-z0-9/_.~-]*$"))]
    pub path: String,
    /// Accepted HTTP method.
    #[serde(default = "default_webhook_method")]
    pub method: HttpMethod,
    /// How callers prove who they are.
    pub auth: Option<WebhookAuth>,
    /// `async`: answer 202 with an execution id; `sync`: wait for the flow's `respond` step.
    #[serde(default)]
    pub respond: Respond,
    /// How long a `sync` webhook waits for its `respond` step before answering 504.
    pub timeout: Option<DurationText>,
}

fn default_webhook_method() -> HttpMethod {
    HttpMethod::Post
}

/// How a webhook reply is produced.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Respond {
    #[default]
    Async,
    Sync,
}

/// Webhook authentication: exactly one kind.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct WebhookAuth {
    /// HMAC-SHA256 of the raw body, sent as `sha256=<hex>` or `<hex>`.
    pub hmac_sha256: Option<HmacAuth>,
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    pub standard_webhooks: Option<SecretAuth>,
    /// `Authorization: Bearer <token>`.
    pub bearer: Option<BearerAuth>,
}

/// HMAC-SHA256 signature check.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacAuth {
    /// The shared secret; a template over a `secret` config variable.
    pub secret: String,
    /// The header carrying the signature.
    #[serde(default = "default_signature_header")]
    pub header: String,
}

fn default_signature_header() -> String {
    "X-Signature".into()
}

/// A signature scheme keyed by one secret.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretAuth {
    /// The shared secret; a template over a `secret` config variable.
    pub secret: String,
}

/// A bearer token check.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BearerAuth {
    /// The expected token; a template over a `secret` config variable.
    pub token: String,
}

/// A schedule trigger.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTrigger {
    /// Cron expression: 5 fields (minute precision) or 6 (seconds first); `@daily` and friends;
    /// or a template over `config`, resolved per instance.
    pub cron: String,
    /// IANA timezone the expression is read in, e.g. `Europe/Berlin`.
    #[serde(default = "default_timezone")]
    pub timezone: String,
}

fn default_timezone() -> String {
    "UTC".into()
}

/// A polling trigger: calls an action at an interval and emits one message per new item.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PollTrigger {
    /// Interval between polls.
    pub every: DurationText,
    /// The action to call: `component.action` or `http.get`/`http.request`.
    pub uses: String,
    /// The connection the action authenticates with.
    pub connection: Option<String>,
    /// The action's input; may read `cursor` (the saved cursor, undefined on the first poll).
    #[serde(default)]
    pub with: IndexMap<String, Value>,
    /// Template selecting the list of items from the action's `output` (default: the output itself).
    pub items: Option<String>,
    /// Template computing the next cursor from `items` (the new items) and `cursor`.
    pub cursor: Option<String>,
}

/// A deploy-time trigger: no options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployTrigger {}

/// One step of a flow.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique in its flow; later steps read this step's output as `steps.<id>`.
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_-]*$"))]
    pub id: String,
    /// What the step does: a built-in (`transform`, `branch`, `http.request`, ...) or `component.action`.
    pub uses: String,
    /// What the step is for.
    pub description: Option<String>,
    /// The connection a component action authenticates with.
    pub connection: Option<String>,
    /// The step's input: literal values and templates.
    #[serde(default = "empty_object")]
    #[schemars(with = "IndexMap<String, Value>")]
    pub with: Value,
    /// The loop body of a `for_each` step, run once per item.
    pub steps: Option<Vec<Step>>,
    /// Retry policy for failed attempts.
    pub retry: Option<Retry>,
    /// What happens once retries are exhausted.
    pub on_error: Option<OnError>,
    /// Time limit of one attempt.
    pub timeout: Option<DurationText>,
    /// Container replicas (scale-out) of this step.
    #[schemars(range(min = 1))]
    pub replicas: Option<u32>,
    /// Kubernetes requests and limits of this step's containers (`weft build --target k8s`),
    /// instead of weft.yaml's `kubernetes.resources`.
    pub resources: Option<Resources>,
}

/// Kubernetes resource requests and limits of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// What the scheduler reserves for the container.
    pub requests: Option<ResourceAmounts>,
    /// The most the container may use.
    pub limits: Option<ResourceAmounts>,
}

/// CPU and memory as Kubernetes quantities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceAmounts {
    /// CPU, e.g. `250m` or `1`.
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?m?$"))]
    pub cpu: Option<String>,
    /// Memory, e.g. `128Mi` or `1Gi`.
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub memory: Option<String>,
}

impl Resources {
    /// The plan's form.
    pub fn lower(&self) -> crate::plan::Resources {
        let amounts = |a: &Option<ResourceAmounts>| {
            a.as_ref().map(|a| crate::plan::ResourceAmounts {
                cpu: a.cpu.clone(),
                memory: a.memory.clone(),
            })
        };
        crate::plan::Resources {
            requests: amounts(&self.requests),
            limits: amounts(&self.limits),
        }
    }
}

/// Retry policy.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Total attempts, the first included.
    #[schemars(range(min = 1, max = 100))]
    pub attempts: u32,
    /// How the wait between attempts grows.
    #[serde(default)]
    pub backoff: Backoff,
    /// Wait before the second attempt.
    pub initial: Option<DurationText>,
    /// Longest wait between attempts.
    pub max: Option<DurationText>,
}

/// Backoff between attempts (with jitter).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    #[default]
    Exponential,
    Fixed,
}

/// What happens once a step's retries are exhausted.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Keep the message in the dead-letter queue, replayable with `weft dlq replay`.
    #[default]
    DeadLetter,
    /// Go on with the next step; the step's output is `{ "error": ... }`.
    Continue,
    /// Stop the execution and mark it failed.
    Fail,
}

/// HTTP methods.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
}

/// The input of a `branch` step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BranchWith {
    /// Cases tried in order; the first whose `when` is true runs.
    pub cases: Vec<BranchCase>,
    /// Steps run when no case matches.
    #[serde(default)]
    pub default: Vec<Step>,
}

/// One case of a branch.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BranchCase {
    /// A template that evaluates to true or false.
    pub when: String,
    /// The steps of this case.
    pub steps: Vec<Step>,
}

/// `components/<name>/component.yaml`: a connector.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "weft component")]
pub struct Component {
    /// Format version of this file: always `1`.
    pub weft: FormatVersion,
    /// Unique in the repository; steps use `<name>.<action>`.
    pub name: Name,
    /// Semantic version of the component.
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+([-+].*)?$"))]
    pub version: Option<String>,
    /// What the component connects to.
    pub description: Option<String>,
    /// Default base URL of the API; a connection's `base_url` field overrides it.
    pub base_url: Option<String>,
    /// The auth kinds the component accepts, with their fields.
    #[serde(default)]
    #[schemars(extend("propertyNames" = {"enum": ["bearer", "basic", "api_key", "none"]}))]
    pub auth: IndexMap<String, AuthKind>,
    /// One action per API endpoint.
    #[schemars(extend("propertyNames" = {"pattern": "^[a-z][a-z0-9_]*$"}, "minProperties" = 1))]
    pub actions: IndexMap<String, Action>,
    /// Custom code: a container answering `POST /actions/<action>`; actions without `http` run there.
    pub image: Option<String>,
}

/// An auth kind and its fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthKind {
    /// Fields a connection of this kind fills in.
    #[serde(default)]
    pub fields: IndexMap<String, AuthField>,
}

/// A field of an auth kind.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthField {
    /// `string`, `url` or `secret`.
    #[serde(rename = "type")]
    pub kind: ConfigType,
    /// Whether a connection must set it.
    #[serde(default = "yes")]
    pub required: bool,
    /// What the field holds.
    pub description: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

fn yes() -> bool {
    true
}

/// A component action.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// What the action does.
    pub description: Option<String>,
    /// JSON Schema of the step's `with`.
    pub input: Option<Value>,
    /// JSON Schema of the action's output.
    pub output: Option<Value>,
    /// A declarative REST call; without it the component's `image` runs the action.
    pub http: Option<HttpAction>,
}

/// A declarative REST call; every string may be a template over `input` and `connection`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpAction {
    /// HTTP method.
    pub method: HttpMethod,
    /// Path appended to the connection's base URL.
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    /// Query parameters.
    #[serde(default)]
    pub query: IndexMap<String, Value>,
    /// Request headers.
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// Request body (sent as JSON).
    pub body: Option<Value>,
}

/// `instances/<customer>/<integration>.yaml`: one customer's deployment of one integration.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "weft instance")]
pub struct Instance {
    /// Format version of this file: always `1`.
    pub weft: FormatVersion,
    /// The integration deployed.
    pub integration: Name,
    /// `draft` (the working tree, the default), `latest`, or a published version number.
    #[serde(default)]
    pub version: VersionPin,
    /// The customer; defaults to the folder name, and must match it when given.
    pub customer: Option<Name>,
    /// Values of the integration's config variables; secrets as `{ secret: ENV_NAME }`.
    #[serde(default)]
    pub config: IndexMap<String, Value>,
    /// Per-flow settings.
    #[serde(default)]
    pub flows: IndexMap<String, FlowSetting>,
    /// Container replicas of steps, by step id (1 to 100), overriding the integration's
    /// `replicas`; the same numbers in docker-compose and Kubernetes output.
    #[serde(default)]
    pub replicas: IndexMap<String, u32>,
}

/// Which version of an integration an instance runs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum VersionPin {
    /// A published version number.
    Number(#[schemars(range(min = 1))] u32),
    /// `draft` or `latest`.
    Named(NamedVersion),
}

impl Default for VersionPin {
    fn default() -> Self {
        VersionPin::Named(NamedVersion::Draft)
    }
}

/// Named versions.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NamedVersion {
    Draft,
    Latest,
}

/// An instance's setting for one flow.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowSetting {
    /// A disabled flow is compiled but not run.
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// `integrations/<name>/versions.yaml`: which published versions may still be pinned.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "weft integration versions")]
pub struct VersionsFile {
    /// Format version of this file: always `1`.
    pub weft: FormatVersion,
    /// Published versions instances may no longer pin (withdrawn, like a marketplace toggle).
    #[serde(default)]
    pub unavailable: Vec<u32>,
}
