//! `weft executions export`: a real execution from the history turned into a test file — its
//! trigger, every HTTP exchange of its `http.*` steps as a mock (from the step runs' recorded
//! input and output), component actions as step mocks, and what the other steps output as
//! expectations. The history is already redacted: masked secrets stay masked.

use serde_json::{Map, Value};
use weft_plan::{Builtin, Plan, Trigger, Uses};
use weft_runtime::history::{ExecutionDetail, StepRunRecord};

use crate::model::{
    Expect, ExpectedStatus, HttpMock, Mock, MockAnswer, RequestExpect, RequestMatch, StepExpect,
    StepFailure, StepMock, TestFile, TestTrigger,
};

/// Why an execution cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("execution {0} is still running")]
    Running(String),
    #[error("no compiled instance `{0}` with flow `{1}` in the repository")]
    UnknownFlow(String, String),
}

/// The test file that replays `execution` (of `plan`'s flow); `dead_lettered` says whether it
/// ended in the dead-letter queue.
pub fn export(
    execution: &ExecutionDetail,
    plans: &[Plan],
    dead_lettered: bool,
) -> Result<TestFile, ExportError> {
    let e = &execution.execution;
    if e.finished_at.is_none() {
        return Err(ExportError::Running(e.id.clone()));
    }
    let unknown = || ExportError::UnknownFlow(e.instance.clone(), e.flow.clone());
    let (customer, integration) = e.instance.split_once('/').ok_or_else(unknown)?;
    let plan = plans
        .iter()
        .find(|p| p.customer == customer && p.integration == integration)
        .ok_or_else(unknown)?;
    let flow = plan
        .flows
        .iter()
        .find(|f| f.name == e.flow)
        .ok_or_else(unknown)?;
    let uses = |step: &str| flow.steps.iter().find(|s| s.id == step).map(|s| &s.uses);
    let mut mocks = Vec::new();
    let mut requests = Vec::new();
    let mut steps = std::collections::BTreeMap::new();
    let mut mocked_steps = std::collections::BTreeSet::new();
    for run in &execution.steps {
        match uses(&run.step) {
            Some(Uses::Builtin(b)) if is_http(*b) => {
                let Some((method, url)) = request_of(*b, &run.input) else {
                    continue;
                };
                let body = run.input.get("body").cloned().filter(|b| !b.is_null());
                requests.push(RequestExpect {
                    method: Some(method.clone()),
                    url: Some(url.clone()),
                    headers: Default::default(),
                    body: body.clone(),
                });
                mocks.push(Mock::Http(HttpMock {
                    request: RequestMatch {
                        method: Some(method),
                        url,
                    },
                    response: answer_of(run),
                    times: Some(1),
                }));
            }
            Some(Uses::Action { .. }) if mocked_steps.insert(run.step.clone()) => {
                mocks.push(Mock::Step(step_mock(execution, &run.step)));
            }
            Some(Uses::Action { .. }) => {}
            // A dispatch's output names the execution it started: new in every run.
            Some(Uses::Builtin(Builtin::Dispatch)) => {}
            Some(_) if run.status == "succeeded" => {
                steps.insert(
                    run.step.clone(),
                    StepExpect {
                        output: Some(run.output.clone()),
                        attempts: None,
                    },
                );
            }
            _ => {}
        }
    }
    let status = match (e.status.as_str(), dead_lettered) {
        (_, true) => ExpectedStatus::DeadLettered,
        ("failed", false) => ExpectedStatus::Failed,
        _ => ExpectedStatus::Succeeded,
    };
    Ok(TestFile {
        name: Some(format!("execution {} of {}", e.id, e.flow)),
        customer: customer.to_string(),
        flow: e.flow.clone(),
        trigger: trigger_of(&flow.trigger, &execution.trigger),
        files: Default::default(),
        mocks,
        expect: Expect {
            status,
            steps,
            skipped: Vec::new(),
            requests: Some(requests),
            reply: None,
        },
    })
}

fn is_http(b: Builtin) -> bool {
    matches!(
        b,
        Builtin::HttpGet | Builtin::HttpPost | Builtin::HttpRequest
    )
}

/// The method and full URL an `http.*` step sent, from its rendered input: the query is
/// appended as the runtime appends it (form-urlencoded).
fn request_of(builtin: Builtin, input: &Value) -> Option<(String, String)> {
    let method = match builtin {
        Builtin::HttpGet => "GET".to_string(),
        Builtin::HttpPost => "POST".to_string(),
        _ => input.get("method")?.as_str()?.to_string(),
    };
    let mut url = url::Url::parse(input.get("url")?.as_str()?).ok()?;
    if let Some(query) = input.get("query").and_then(Value::as_object) {
        let pairs: Vec<(String, String)> = query
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                )
            })
            .collect();
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
    }
    Some((method, url.to_string()))
}

/// What the upstream answered one attempt: the recorded output of a successful one, else the
/// status named in the error (`... answered 503`), else 503.
fn answer_of(run: &StepRunRecord) -> MockAnswer {
    if run.status == "succeeded" {
        return MockAnswer {
            status: run
                .output
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or(200),
            headers: Default::default(),
            body: run.output.get("body").cloned().unwrap_or(Value::Null),
        };
    }
    MockAnswer {
        status: status_in(run.error.as_deref()).unwrap_or(503),
        headers: Default::default(),
        body: Value::Null,
    }
}

fn status_in(error: Option<&str>) -> Option<u16> {
    let rest = error?.split(" answered ").nth(1)?;
    rest.get(..3)?.parse().ok()
}

/// A component action replaced by what it output (its last successful run), or by its failure.
fn step_mock(execution: &ExecutionDetail, step: &str) -> StepMock {
    let runs: Vec<&StepRunRecord> = execution.steps.iter().filter(|r| r.step == step).collect();
    match runs.iter().rev().find(|r| r.status == "succeeded") {
        Some(run) => StepMock {
            step: step.to_string(),
            output: Some(run.output.clone()),
            error: None,
        },
        None => {
            let error = runs.last().and_then(|r| r.error.clone());
            StepMock {
                step: step.to_string(),
                output: None,
                error: Some(StepFailure {
                    status: status_in(error.as_deref()).unwrap_or(503),
                    message: error,
                }),
            }
        }
    }
}

/// The test's trigger from the recorded one: what the trigger kind reads.
fn trigger_of(kind: &Trigger, recorded: &Value) -> TestTrigger {
    let get = |k: &str| recorded.get(k).filter(|v| !v.is_null()).cloned();
    let mut trigger = TestTrigger {
        body: get("body"),
        ..Default::default()
    };
    match kind {
        Trigger::Webhook { .. } => {
            trigger.query = get("query")
                .and_then(|q| q.as_object().cloned())
                .unwrap_or_else(Map::new);
        }
        Trigger::Schedule { .. } => {
            trigger.time = get("time").and_then(|t| t.as_str().map(str::to_string));
        }
        Trigger::Poll { .. } => {
            trigger.item = get("item");
            trigger.cursor = get("cursor");
        }
        Trigger::Deploy => {}
    }
    trigger
}

/// The test file as YAML, with the schema modeline for a file in
/// `integrations/<integration>/tests/`.
pub fn to_yaml(test: &TestFile) -> Result<String, String> {
    let body = serde_saphyr::to_string(test).map_err(|e| e.to_string())?;
    Ok(format!(
        "# yaml-language-server: $schema=../../../schemas/test.schema.json\n{body}"
    ))
}
