//! Built-in steps and component actions: what a step does with its rendered input, one module
//! per family of [`Builtin`] (dispatched on the shared registry's enum). `branch` conditions are
//! evaluated by the engine (they are templates); everything else is here.

mod component;
mod control;
mod csv;
mod file;
mod http;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
#[cfg(test)]
use weft_plan::Builtin;
use weft_plan::{self as plan, Family, HttpMethod, Uses};

/// What a step produced.
#[derive(Debug)]
pub enum Outcome {
    Output(Value),
    /// One message per item down the loop body.
    FanOut(Vec<Value>),
    /// The reply of a sync webhook (also the step's output).
    Respond(Reply),
    /// Start the sibling flow with this payload as `trigger.body`.
    Dispatch {
        flow: String,
        payload: Value,
    },
}

/// A sync webhook's reply.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

/// A failed attempt. Retryable failures (5xx, connection errors, timeouts) are retried with
/// backoff; permanent ones (4xx, bad input) go straight to `on_error`.
#[derive(Debug, Clone)]
pub struct StepError {
    pub message: String,
    pub retryable: bool,
}

impl StepError {
    pub fn permanent(message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            retryable: false,
        }
    }
    pub fn retryable(message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            retryable: true,
        }
    }
}

/// What a step needs besides its input.
pub struct StepEnv<'a> {
    pub http: &'a reqwest::Client,
    /// Masks secrets in what the step writes to the log.
    pub redactor: Arc<crate::redact::Redactor>,
    pub deny_private: bool,
    /// Sent as `Idempotency-Key` (or the step's `idempotency_header`) on HTTP calls.
    pub idempotency_key: &'a str,
    pub timeout: Duration,
    pub plan: &'a plan::Plan,
    /// The step's connection with its fields rendered.
    pub connection: Option<(&'a plan::Connection, Map<String, Value>)>,
    /// The rendered request of a component action (`http` templates over input and connection).
    pub action: Option<ActionCall>,
    /// Base URLs of custom components' containers, by component.
    pub component_urls: &'a std::collections::HashMap<String, String>,
    /// `weft test`: HTTP answered by mocks, `delay` on the virtual clock.
    pub offline: Option<&'a dyn crate::offline::OfflineHooks>,
    /// The flow and step running (for offline mocks; empty for a poll).
    pub flow: &'a str,
    pub step: &'a str,
}

/// A component action ready to send.
#[derive(Debug, Clone)]
pub struct ActionCall {
    pub component: String,
    pub action: String,
    pub http: Option<RenderedHttp>,
}

#[derive(Debug, Clone)]
pub struct RenderedHttp {
    pub method: HttpMethod,
    pub path: String,
    pub query: Map<String, Value>,
    pub headers: Map<String, Value>,
    pub body: Option<Value>,
}

fn str_field<'v>(input: &'v Value, key: &str) -> Option<&'v str> {
    input.get(key).and_then(Value::as_str)
}

/// A rendered connection field as text (`""` when absent).
pub fn connection_field(fields: &Map<String, Value>, key: &str) -> String {
    fields
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn required_str<'v>(input: &'v Value, key: &str) -> Result<&'v str, StepError> {
    str_field(input, key).ok_or_else(|| StepError::permanent(format!("`{key}` must be a string")))
}

/// Runs one attempt of a step on its rendered input.
pub async fn run(uses: &Uses, input: Value, env: &StepEnv<'_>) -> Result<Outcome, StepError> {
    match uses {
        Uses::Builtin(b) => match b.family() {
            Family::Control => control::run(*b, input, env).await,
            Family::Http => http::run(*b, &input, env).await.map(Outcome::Output),
            Family::File => file::run(*b, &input).await.map(Outcome::Output),
            Family::Csv => csv::run(*b, &input).map(Outcome::Output),
        },
        Uses::Action { .. } => match &env.action {
            Some(call) => component::run(env, call, &input).await.map(Outcome::Output),
            None => Err(StepError::permanent(format!("unknown step kind `{uses}`"))),
        },
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A duration in a step's input (`30s`, `1h 30m`), read by humantime.
fn duration(text: &str) -> Result<Duration, StepError> {
    humantime::parse_duration(text)
        .map_err(|e| StepError::permanent(format!("`{text}` is not a duration: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(duration("5x").is_err());
    }

    #[tokio::test]
    async fn the_egress_policy_refuses_private_addresses() {
        let plan: plan::Plan = serde_json::from_value(json!({
            "format": plan::PLAN_FORMAT, "integration": "x", "customer": "c", "version": "draft",
            "config": {}, "connections": {}, "components": {}, "flows": [], "secrets": [],
            "policy": { "deny_private_addresses": true },
            "runtime": { "port": 8080, "max_body": 1000, "broker_url": "nats://broker:4222" }
        }))
        .unwrap();
        let client = crate::http::client(true);
        let redactor = crate::redact::Redactor::default();
        let urls = std::collections::HashMap::new();
        let env = StepEnv {
            http: &client,
            redactor: Arc::new(redactor),
            deny_private: true,
            idempotency_key: "k",
            timeout: Duration::from_secs(2),
            plan: &plan,
            connection: None,
            action: None,
            component_urls: &urls,
            offline: None,
            flow: "",
            step: "",
        };
        for url in [
            "http://127.0.0.1:9/x",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:9/x",
            "http://[::1]:9/",
        ] {
            let err = run(
                &Uses::Builtin(Builtin::HttpGet),
                json!({ "url": url }),
                &env,
            )
            .await
            .unwrap_err();
            assert!(
                err.message.contains("private") || err.message.contains("egress"),
                "{url}: {}",
                err.message
            );
        }
    }
}
