//! Offline mode for `weft test`: hooks through which a test answers every HTTP request (no
//! network), replaces a step's outcome, and keeps a virtual clock (retry backoff and `delay`
//! steps add to it instead of waiting). Without hooks ([`crate::Options::offline`] is `None`)
//! nothing here runs.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use serde_json::Value;

/// An HTTP request a step (or a component action) would send.
#[derive(Debug, Clone, PartialEq)]
pub struct MockRequest {
    /// The flow and step that sends it.
    pub flow: String,
    pub step: String,
    /// The message's idempotency key: `<execution>:<step>[/<item>...]`.
    pub key: String,
    pub method: String,
    /// The full URL, query included.
    pub url: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The body: parsed JSON, else text, else null.
    pub body: Value,
}

/// The answer a mock gives.
#[derive(Debug, Clone, PartialEq)]
pub struct MockResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    /// Sent as JSON (a string as plain text).
    pub body: Value,
}

/// What replaces a step's run.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOverride {
    /// The step succeeds with this output.
    Output(Value),
    /// The step fails as if its API had answered `status`: 408, 429 and 5xx are retried,
    /// others are permanent.
    Error { status: u16, message: String },
}

/// What a test gives the runtime. Calls come from the step workers, concurrently.
pub trait OfflineHooks: Send + Sync + Debug {
    /// Answers a request, or says why no mock matches (the step then fails permanently).
    fn http(&self, request: MockRequest) -> Result<MockResponse, String>;
    /// Replaces a step's run, or `None` to run the step's own code.
    fn step(&self, flow: &str, step: &str) -> Option<StepOverride>;
    /// Time that would have passed (a retry's backoff, a `delay` step): added to the clock.
    fn advance(&self, duration: Duration);
}

impl StepOverride {
    /// Whether an error with this status is retried (as an HTTP answer would be).
    pub fn retryable(status: u16) -> bool {
        matches!(status, 408 | 429 | 500..=599)
    }
}
