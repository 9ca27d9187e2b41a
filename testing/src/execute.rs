//! Running one test on the real runtime, offline: the instance's plan starts in a scratch data
//! folder with dummy secrets, every HTTP request is answered by the test's mocks (and recorded),
//! retries and `delay` steps pass on a virtual clock, and what the executions did is read back
//! from the execution history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_plan::{Builtin, Plan, Trigger};
use weft_runtime::history::{self, ExecutionDetail};
use weft_runtime::offline::{MockRequest, MockResponse, OfflineHooks, StepOverride};
use weft_runtime::redact::Redactor;

use crate::load::LoadedTest;
use crate::model::{HttpMock, Mock, StepMock};
use crate::wildcard;

/// How long one test may take in real time before it is reported as stuck.
pub const REAL_TIME_LIMIT: Duration = Duration::from_secs(30);

/// What a test's executions did.
#[derive(Debug, Default)]
pub struct Observed {
    /// The executions the test started (one, or one per poll item), in order.
    pub executions: Vec<ExecutionDetail>,
    /// Every execution of the run, those started by `dispatch` included.
    pub all: Vec<ExecutionDetail>,
    /// Executions the test started that were dead-lettered.
    pub dead_lettered: BTreeSet<String>,
    /// Every HTTP request sent, in order.
    pub requests: Vec<MockRequest>,
    /// Requests no mock matched.
    pub unmatched: Vec<MockRequest>,
    /// Retry backoff and `delay` steps, on the virtual clock.
    pub virtual_time: Duration,
    /// The executions did not finish within [`REAL_TIME_LIMIT`].
    pub stuck: bool,
}

/// Why a test could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("starting the runtime: {0}")]
    Start(String),
    #[error("starting the flow: {0}")]
    Trigger(String),
    #[error("reading the execution history: {0}")]
    History(String),
    #[error("preparing the scratch folder: {0}")]
    Scratch(#[from] std::io::Error),
}

/// The test's mocks, as the runtime's offline hooks.
#[derive(Debug)]
struct Mocks {
    flow: String,
    http: Vec<HttpMock>,
    steps: Vec<StepMock>,
    /// How many requests each HTTP mock has answered.
    used: Mutex<Vec<u32>>,
    requests: Mutex<Vec<MockRequest>>,
    unmatched: Mutex<Vec<MockRequest>>,
    virtual_ms: AtomicU64,
    /// The runtime's: the test's (dummy) secrets are `***` in what is recorded and matched,
    /// as in the execution history.
    redactor: std::sync::OnceLock<Redactor>,
}

impl Mocks {
    fn redact(&self, mut request: MockRequest) -> MockRequest {
        if let Some(r) = self.redactor.get() {
            request.url = r.str(&request.url);
            request.headers = request
                .headers
                .into_iter()
                .map(|(k, v)| (k, r.str(&v)))
                .collect();
            request.body = r.value(&request.body);
        }
        request
    }
}

impl OfflineHooks for Mocks {
    fn http(&self, request: MockRequest) -> Result<MockResponse, String> {
        let request = self.redact(request);
        lock(&self.requests).push(request.clone());
        let mut used = lock(&self.used);
        let found = self.http.iter().enumerate().find(|(i, mock)| {
            mock.times.is_none_or(|t| used[*i] < t)
                && mock
                    .request
                    .method
                    .as_ref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(&request.method))
                && wildcard::matches(&mock.request.url, &request.url)
        });
        match found {
            Some((i, mock)) => {
                used[i] += 1;
                Ok(MockResponse {
                    status: mock.response.status,
                    headers: mock.response.headers.clone(),
                    body: mock.response.body.clone(),
                })
            }
            None => {
                let reason = format!(
                    "no mock answers {} {} (weft test sends no request to the network)",
                    request.method, request.url
                );
                lock(&self.unmatched).push(request);
                Err(reason)
            }
        }
    }

    fn step(&self, flow: &str, step: &str) -> Option<StepOverride> {
        if flow != self.flow {
            return None;
        }
        let mock = self.steps.iter().find(|m| m.step == step)?;
        Some(match (&mock.output, &mock.error) {
            (Some(output), _) => StepOverride::Output(output.clone()),
            (None, Some(error)) => StepOverride::Error {
                status: error.status,
                message: error
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("mocked failure ({})", error.status)),
            },
            (None, None) => StepOverride::Output(Value::Null),
        })
    }

    fn advance(&self, duration: Duration) {
        self.virtual_ms
            .fetch_add(duration.as_millis() as u64, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one test on `plan` (the test's customer's instance of its integration). `scratch` is
/// the working folder: the test's `files` are written there first.
pub async fn execute(
    test: &LoadedTest,
    plan: &Plan,
    scratch: &std::path::Path,
) -> Result<Observed, ExecuteError> {
    let m = &test.model;
    for (path, text) in &m.files {
        let target = scratch.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(target, text)?;
    }
    let (http, steps) = m
        .mocks
        .iter()
        .fold((Vec::new(), Vec::new()), |mut acc, mock| {
            match mock {
                Mock::Http(h) => acc.0.push(h.clone()),
                Mock::Step(s) => acc.1.push(s.clone()),
            }
            acc
        });
    let mocks = Arc::new(Mocks {
        flow: m.flow.clone(),
        used: Mutex::new(vec![0; http.len()]),
        http,
        steps,
        requests: Mutex::default(),
        unmatched: Mutex::default(),
        virtual_ms: AtomicU64::new(0),
        redactor: std::sync::OnceLock::new(),
    });
    let data = tempfile::tempdir()?;
    // Dummy values: the flow reads its secrets as usual, and nothing real is at hand.
    let secrets: HashMap<String, String> = plan
        .secrets
        .iter()
        .map(|s| (s.clone(), format!("test-secret-{}", s.to_lowercase())))
        .collect();
    let options = weft_runtime::Options {
        data_dir: data.path().to_path_buf(),
        offline: Some(mocks.clone()),
        ..Default::default()
    };
    let runtime = weft_runtime::start(vec![plan.clone()], options, secrets)
        .await
        .map_err(|e| ExecuteError::Start(e.to_string()))?;
    let _ = mocks
        .redactor
        .set(Redactor::clone(&runtime.engine().redactor()));
    let mut started = Vec::new();
    for trigger in triggers(test, plan) {
        let id = runtime
            .start_flow(&m.customer, &m.flow, trigger)
            .await
            .map_err(|e| ExecuteError::Trigger(e.to_string()))?;
        started.push(id);
    }
    let stuck = !settle(&runtime, data.path()).await?;
    runtime.stop();
    let conn = history::open(data.path()).map_err(ExecuteError::History)?;
    let mut all = Vec::new();
    for execution in
        history::executions(&conn, None, None, i64::MAX).map_err(ExecuteError::History)?
    {
        if let Some(detail) =
            history::execution(&conn, &execution.id).map_err(ExecuteError::History)?
        {
            all.push(detail);
        }
    }
    // The executions the test started, in order, then those they dispatched, by start time.
    all.sort_by_key(|d| {
        (
            started
                .iter()
                .position(|s| *s == d.execution.id)
                .unwrap_or(usize::MAX),
            d.execution.started_at,
        )
    });
    let executions = started
        .iter()
        .filter_map(|id| history::execution(&conn, id).ok().flatten())
        .collect();
    let dead_lettered = history::dead_letters(&conn)
        .map_err(ExecuteError::History)?
        .into_iter()
        .map(|d| d.execution)
        .filter(|e| started.contains(e))
        .collect();
    let mut requests = lock(&mocks.requests).clone();
    // Steps run concurrently (loop items, dispatched flows): list requests in the flow's
    // order instead of arrival order — by execution, then by loop position (the items of a
    // loop one after the other, after what runs outside it); retries of one message stay in
    // the order they were sent.
    let order: HashMap<&str, usize> = all
        .iter()
        .enumerate()
        .map(|(i, d)| (d.execution.id.as_str(), i))
        .collect();
    requests.sort_by_cached_key(|r| logical_position(&r.key, &order));
    let mut unmatched = lock(&mocks.unmatched).clone();
    unmatched.sort_by_cached_key(|r| logical_position(&r.key, &order));
    Ok(Observed {
        executions,
        all,
        dead_lettered,
        requests,
        unmatched,
        virtual_time: Duration::from_millis(mocks.virtual_ms.load(Ordering::Relaxed)),
        stuck,
    })
}

/// Where a request stands in the flow: its execution's place, then its loop position (from
/// the idempotency key `<execution>:<step>[/<item>...]`).
fn logical_position(key: &str, order: &HashMap<&str, usize>) -> (usize, Vec<usize>) {
    let (execution, rest) = key.split_once(':').unwrap_or((key, ""));
    let path = rest
        .find('/')
        .map(|at| {
            rest[at..]
                .split('/')
                .filter_map(|i| i.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    (order.get(execution).copied().unwrap_or(usize::MAX), path)
}

/// Waits until no work is left and every execution has finished; `false` past the limit.
async fn settle(
    runtime: &weft_runtime::Runtime,
    data: &std::path::Path,
) -> Result<bool, ExecuteError> {
    let deadline = Instant::now() + REAL_TIME_LIMIT;
    let conn = history::open(data).map_err(ExecuteError::History)?;
    loop {
        let engine = runtime.engine();
        if engine.pending() == 0 && engine.in_flight() == 0 {
            let executions =
                history::executions(&conn, None, None, i64::MAX).map_err(ExecuteError::History)?;
            if executions.iter().all(|e| e.finished_at.is_some()) {
                return Ok(true);
            }
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The trigger values the test's executions start with: one, or one per poll item.
fn triggers(test: &LoadedTest, plan: &Plan) -> Vec<Value> {
    let t = &test.model.trigger;
    let flow = plan.flows.iter().find(|f| f.name == test.model.flow);
    let mut base = serde_json::Map::new();
    match flow.map(|f| &f.trigger) {
        Some(Trigger::Webhook { path, method, .. }) => {
            base.insert("method".into(), json!(method));
            base.insert("path".into(), json!(path));
            base.insert("headers".into(), json!(t.headers));
            base.insert("query".into(), Value::Object(t.query.clone()));
        }
        Some(Trigger::Schedule { .. }) => {
            let time = t
                .time
                .clone()
                .unwrap_or_else(|| "2024-01-01T00:00:00+00:00".into());
            let utc = chrono::DateTime::parse_from_rfc3339(&time)
                .map(|d| d.with_timezone(&chrono::Utc).to_rfc3339())
                .unwrap_or_else(|_| time.clone());
            base.insert("time".into(), json!(time));
            base.insert("scheduled_at".into(), json!(utc));
        }
        Some(Trigger::Deploy) => {
            base.insert("deployed".into(), json!(true));
            base.insert("plan_hash".into(), json!("test"));
        }
        Some(Trigger::Poll { .. }) | None => {}
    }
    if let Some(body) = &t.body {
        base.insert("body".into(), body.clone());
    }
    if let Some(cursor) = &t.cursor {
        base.insert("cursor".into(), cursor.clone());
    }
    let items: Vec<Value> = match (&t.items, &t.item) {
        (Some(items), _) => items.clone(),
        (None, Some(item)) => vec![item.clone()],
        (None, None) => return vec![Value::Object(base)],
    };
    items
        .into_iter()
        .map(|item| {
            let mut trigger = base.clone();
            trigger.insert("item".into(), item);
            trigger.entry("cursor").or_insert(Value::Null);
            Value::Object(trigger)
        })
        .collect()
}

/// What a run reached, for `--coverage`: steps that ran, and branch cases taken, per flow.
#[derive(Debug, Default, Clone)]
pub struct Reached {
    /// `(flow, step)`.
    pub steps: BTreeSet<(String, String)>,
    /// `(flow, branch step, case)`: the case's index, or `default`.
    pub cases: BTreeSet<(String, String, String)>,
}

impl Reached {
    pub fn record(&mut self, observed: &Observed) {
        for execution in &observed.all {
            let flow = &execution.execution.flow;
            for run in &execution.steps {
                self.steps.insert((flow.clone(), run.step.clone()));
                if let Some(case) = run.output.get("case") {
                    let case = case
                        .as_u64()
                        .map_or_else(|| "default".to_string(), |c| c.to_string());
                    self.cases.insert((flow.clone(), run.step.clone(), case));
                }
            }
        }
    }
}

/// The output of the step run that answered a sync webhook: the first `respond` step's.
pub fn reply<'o>(observed: &'o Observed, plan: &Plan, flow: &str) -> Option<&'o Value> {
    let responds: BTreeSet<&str> = plan
        .flows
        .iter()
        .filter(|f| f.name == flow)
        .flat_map(|f| &f.steps)
        .filter(|s| s.uses.is(Builtin::Respond))
        .map(|s| s.id.as_str())
        .collect();
    observed
        .executions
        .iter()
        .flat_map(|e| &e.steps)
        .find(|r| responds.contains(r.step.as_str()) && r.status == "succeeded")
        .map(|r| &r.output)
}

/// The runs of each step in the executions the test started, in order.
pub fn runs_by_step(observed: &Observed) -> BTreeMap<&str, Vec<&history::StepRunRecord>> {
    let mut by_step: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for run in observed.executions.iter().flat_map(|e| &e.steps) {
        by_step.entry(run.step.as_str()).or_default().push(run);
    }
    by_step
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MockAnswer, RequestMatch};

    fn request(url: &str) -> MockRequest {
        MockRequest {
            flow: "f".into(),
            step: "s".into(),
            key: "E:s".into(),
            method: "POST".into(),
            url: url.into(),
            headers: BTreeMap::new(),
            body: Value::Null,
        }
    }

    fn mock(url: &str, status: u16, times: Option<u32>) -> HttpMock {
        HttpMock {
            request: RequestMatch {
                method: Some("post".into()),
                url: url.into(),
            },
            response: MockAnswer {
                status,
                ..MockAnswer::default()
            },
            times,
        }
    }

    #[test]
    fn mocks_answer_in_order_each_at_most_its_times_and_record_every_request() {
        let mocks = Mocks {
            flow: "f".into(),
            http: vec![
                mock("https://x.example/a", 503, Some(2)),
                mock("https://x.example/*", 201, None),
            ],
            steps: Vec::new(),
            used: Mutex::new(vec![0, 0]),
            requests: Mutex::default(),
            unmatched: Mutex::default(),
            virtual_ms: AtomicU64::new(0),
            redactor: std::sync::OnceLock::from(Redactor::new(["s3cr3t".to_string()])),
        };
        let statuses: Vec<u16> = (0..3)
            .map(|_| mocks.http(request("https://x.example/a")).unwrap().status)
            .collect();
        assert_eq!(statuses, [503, 503, 201]);
        let err = mocks
            .http(request("https://y.example/a?token=s3cr3t"))
            .unwrap_err();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(
            err.contains("no mock answers POST https://y.example/a"),
            "{err}"
        );
        assert_eq!(lock(&mocks.requests).len(), 4);
        assert_eq!(lock(&mocks.unmatched).len(), 1);
    }

    #[test]
    fn requests_are_ordered_by_execution_then_loop_position() {
        let order: HashMap<&str, usize> = [("A", 0), ("B", 1)].into_iter().collect();
        let mut keys = vec!["B:post", "A:note/1", "A:fetch", "A:note/0", "A:note/0/2"];
        keys.sort_by_cached_key(|k| logical_position(k, &order));
        assert_eq!(
            keys,
            ["A:fetch", "A:note/0", "A:note/0/2", "A:note/1", "B:post"]
        );
    }
}
