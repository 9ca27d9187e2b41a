//! The test file format (`integrations/<integration>/tests/<name>.yaml`), typed; its JSON Schema
//! (`schemas/test.schema.json`) is generated from these types.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One test of one flow: a trigger, the mocks that answer its calls, what must come out.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// What the test shows, in a few words; the file name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The customer whose instance (its config) the flow runs with.
    pub customer: String,
    /// The flow to run: a flow of the integration the test file belongs to.
    pub flow: String,
    /// What the trigger produced.
    #[serde(default)]
    pub trigger: TestTrigger,
    /// Files to create in the test's scratch folder (the working folder of file steps), by path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// Answers to the flow's HTTP requests, and steps whose outcome is replaced. A request no
    /// mock matches fails the test.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mocks: Vec<Mock>,
    /// What must come out; every key is optional.
    #[serde(default)]
    pub expect: Expect,
}

/// What the trigger produced. Webhook flows read `body`, `headers` and `query`; schedule flows
/// `time`; poll flows `item` (or several `items`, one execution each) and `cursor`; flows
/// started by `dispatch` read `body`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestTrigger {
    /// The webhook's (or a dispatch's) JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The webhook's request headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The webhook's query parameters.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub query: Map<String, Value>,
    /// A schedule's time, RFC 3339 (`2024-06-14T06:30:00+02:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// A poll's item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Value>,
    /// Several poll items: one execution each, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<Value>>,
    /// The saved cursor a poll started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Value>,
}

/// An answer to HTTP requests, or a step's replaced outcome.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Mock {
    Http(HttpMock),
    Step(StepMock),
}

/// Answers every request that matches `request` (at most `times` of them, when given).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpMock {
    /// Which requests this mock answers.
    pub request: RequestMatch,
    /// What it answers (default: status 200, no body).
    #[serde(default)]
    pub response: MockAnswer,
    /// How many requests this mock answers; later ones go to the next matching mock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub times: Option<u32>,
}

/// Which requests a mock answers.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestMatch {
    /// The HTTP method; any method when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The full URL (query included); `*` matches any run of characters.
    pub url: String,
}

/// What a mock answers.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MockAnswer {
    /// The HTTP status.
    #[serde(default = "ok")]
    #[schemars(range(min = 100, max = 599))]
    pub status: u16,
    /// Response headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The body, sent as JSON (a string as plain text).
    #[serde(default)]
    pub body: Value,
}

impl Default for MockAnswer {
    fn default() -> Self {
        MockAnswer {
            status: ok(),
            headers: BTreeMap::new(),
            body: Value::Null,
        }
    }
}

fn ok() -> u16 {
    200
}

/// Replaces a step's run: it outputs `output`, or fails with `error` on every attempt.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepMock {
    /// The step's id.
    pub step: String,
    /// The output the step gives instead of running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The failure the step has instead of running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepFailure>,
}

/// A replaced failure, as if the step's API had answered `status`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepFailure {
    /// 408, 429 and 5xx are retried (per the step's `retry`), other statuses are not.
    #[schemars(range(min = 100, max = 599))]
    pub status: u16,
    /// The error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How the execution must end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
// No doc comments on the variants: the schema then lists them as one `enum`, which the
// schema check reports with a did-you-mean (`Expect::status` describes them).
pub enum ExpectedStatus {
    #[default]
    Succeeded,
    Failed,
    DeadLettered,
}

impl ExpectedStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExpectedStatus::Succeeded => "succeeded",
            ExpectedStatus::Failed => "failed",
            ExpectedStatus::DeadLettered => "dead_lettered",
        }
    }
}

/// What must come out. Outputs and bodies are subset matches: a mapping matches when each of
/// its keys matches, a list when it has as many items and each matches.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// How each execution the test started ends: `succeeded` (the default), `failed` (a step
    /// failed with `on_error: fail`, or was dead-lettered), or `dead_lettered` (retries
    /// exhausted, or a permanent error, with `on_error: dead_letter`).
    #[serde(default)]
    pub status: ExpectedStatus,
    /// Steps that must have run, by id, with what they must have output.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub steps: BTreeMap<String, StepExpect>,
    /// Steps that must not run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// The HTTP requests sent, in order (`[]`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Vec<RequestExpect>>,
    /// A sync webhook's reply (the first `respond` step's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyExpect>,
}

/// A step that must have run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepExpect {
    /// What its (last) output must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// How many attempts it must have taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub attempts: Option<u32>,
}

/// One request that must have been sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestExpect {
    /// The HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The full URL; `*` matches any run of characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Headers it must carry (names in any case).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// What its JSON body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// A sync webhook's reply.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyExpect {
    /// The reply's HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What the reply's body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// The JSON Schema of test files (draft 2020-12), as published in `schemas/test.schema.json`.
pub fn json_schema() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let mut schema = serde_json::to_value(generator.into_root_schema_for::<TestFile>())
        .expect("a schema serializes");
    schema["$id"] = Value::String("https://weft.dev/schemas/v1/test.schema.json".into());
    // A mock with `step` is a step mock, any other an HTTP mock: one schema applies, and its
    // errors (an unknown key, a missing `url`) are reported instead of "no schema matched".
    let description = schema["$defs"]["Mock"]["description"].clone();
    schema["$defs"]["Mock"] = serde_json::json!({
        "description": description,
        "if": { "type": "object", "required": ["step"] },
        "then": { "$ref": "#/$defs/StepMock" },
        "else": { "$ref": "#/$defs/HttpMock" },
    });
    schema
}
