//! Comparing what a test's executions did with its `expect`: each failed expectation becomes a
//! [`Problem`] at the expected value's place in the test file, naming the step and the field
//! path, with the expected and the actual value.

use serde_json::Value;
use weft_compiler::path;
use weft_compiler::yaml::{Node, Seg};
use weft_plan::Plan;

use crate::execute::{Observed, REAL_TIME_LIMIT, reply, runs_by_step};
use crate::load::LoadedTest;
use crate::model::{ExpectedStatus, Mock};
use crate::problem::Problem;
use crate::wildcard;

/// One difference found by [`subset`]: where (below the compared value), expected, actual.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub path: Vec<Seg>,
    pub expected: String,
    /// `None`: the field is missing.
    pub actual: Option<String>,
}

/// Whether `actual` contains `expected`: a mapping when each of its keys matches, a list when it
/// has as many items and each matches, numbers by value (`500` equals `500.0`), anything else
/// when equal. Every difference is reported.
pub fn subset(expected: &Value, actual: &Value) -> Vec<Mismatch> {
    let mut out = Vec::new();
    walk(expected, actual, &mut Vec::new(), &mut out);
    out
}

fn walk(expected: &Value, actual: &Value, path: &mut Vec<Seg>, out: &mut Vec<Mismatch>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                path.push(Seg::Key(k.clone()));
                match a.get(k) {
                    Some(av) => walk(ev, av, path, out),
                    None => out.push(Mismatch {
                        path: path.clone(),
                        expected: show(ev),
                        actual: None,
                    }),
                }
                path.pop();
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                path.push(Seg::Index(i));
                walk(ev, av, path, out);
                path.pop();
            }
        }
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => {}
        _ if expected == actual => {}
        _ => out.push(Mismatch {
            path: path.clone(),
            expected: show(expected),
            actual: Some(show(actual)),
        }),
    }
}

/// A value in a message: compact JSON, cut at 200 characters.
pub fn show(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() <= 200 {
        text
    } else {
        format!("{}…", text.chars().take(200).collect::<String>())
    }
}

/// `a.b[2].c`, or `(the whole value)` for an empty path.
pub fn dotted(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() {
        "(the whole value)".into()
    } else {
        out
    }
}

/// Every failed expectation of a test.
pub fn check(test: &LoadedTest, plan: &Plan, observed: &Observed) -> Vec<Problem> {
    let mut c = Checker {
        test,
        root: &test.root,
        problems: Vec::new(),
    };
    if observed.stuck {
        c.problem(
            "timed-out",
            format!(
                "the executions did not finish within {} s of real time",
                REAL_TIME_LIMIT.as_secs()
            ),
            &path!["flow"],
            "this flow",
            None,
        );
    }
    c.unmatched(observed);
    c.status(observed);
    c.steps(observed);
    c.requests(observed);
    c.reply(observed, plan);
    c.problems.sort_by_key(|p| p.span.start);
    c.problems
}

struct Checker<'t> {
    test: &'t LoadedTest,
    root: &'t Node,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(
        &mut self,
        code: &'static str,
        message: String,
        at: &[Seg],
        label: &str,
        help: Option<String>,
    ) {
        let span = self.root.at(at).span.clone();
        self.problems
            .push(Problem::new(code, message, self.test.file, span, label).help(help));
    }

    /// The place of a key (for "this key's value was wrong" when the value is a mapping).
    fn key_problem(&mut self, code: &'static str, message: String, at: &[Seg], label: &str) {
        let span = self.root.key_span(at);
        self.problems
            .push(Problem::new(code, message, self.test.file, span, label));
    }

    fn unmatched(&mut self, observed: &Observed) {
        for request in &observed.unmatched {
            let step = if request.step.is_empty() {
                String::new()
            } else {
                format!("step `{}` sent ", request.step)
            };
            let help = format!(
                "add a mock: `- request: {{ method: {}, url: \"{}\" }}` with a `response:`",
                request.method, request.url
            );
            // Point at the mock that comes closest (same method, fewest edits to the URL).
            let closest = self
                .test
                .model
                .mocks
                .iter()
                .enumerate()
                .filter_map(|(i, m)| match m {
                    Mock::Http(h) => Some((i, h)),
                    Mock::Step(_) => None,
                })
                .filter(|(_, h)| {
                    h.request
                        .method
                        .as_ref()
                        .is_none_or(|m| m.eq_ignore_ascii_case(&request.method))
                })
                .min_by_key(|(_, h)| strsim::levenshtein(&h.request.url, &request.url));
            let (span, label) = match closest {
                Some((i, _)) => (
                    self.root
                        .at(&path!["mocks", i, "request", "url"])
                        .span
                        .clone(),
                    "the closest mock: its URL differs".to_string(),
                ),
                None if self.root.get(&Seg::from("mocks")).is_some() => (
                    self.root.key_span(&path!["mocks"]),
                    format!("no mock here answers {}", request.method),
                ),
                None => (
                    self.root.at(&path!["flow"]).span.clone(),
                    "this flow's test has no mocks".to_string(),
                ),
            };
            self.problems.push(
                Problem::new(
                    "unmatched-request",
                    format!(
                        "{step}{} {} and no mock answers it",
                        request.method, request.url
                    ),
                    self.test.file,
                    span,
                    label,
                )
                .help(Some(help)),
            );
        }
    }

    fn status(&mut self, observed: &Observed) {
        let expected = self.test.model.expect.status;
        let written = self
            .root
            .at(&path!["expect"])
            .get(&Seg::from("status"))
            .is_some();
        let (at, default) = if written {
            (path!["expect", "status"], "")
        } else {
            (path!["flow"], " (the default)")
        };
        for execution in &observed.executions {
            let e = &execution.execution;
            let dead = observed.dead_lettered.contains(&e.id);
            let ok = match expected {
                ExpectedStatus::Succeeded => e.status == "succeeded",
                ExpectedStatus::Failed => e.status == "failed",
                ExpectedStatus::DeadLettered => dead,
            };
            if ok {
                continue;
            }
            let actual = if dead {
                "dead_lettered"
            } else {
                e.status.as_str()
            };
            self.problem(
                "wrong-status",
                format!(
                    "the execution ended `{actual}`, expected `{}`",
                    expected.as_str()
                ),
                &at,
                &format!("expected `{}`{default}", expected.as_str()),
                e.error
                    .clone()
                    .map(|error| format!("the execution's error: {error}")),
            );
        }
    }

    fn steps(&mut self, observed: &Observed) {
        let runs = runs_by_step(observed);
        let expect = &self.test.model.expect;
        for (id, step) in &expect.steps {
            let base = path!["expect", "steps", id.as_str()];
            let Some(step_runs) = runs.get(id.as_str()) else {
                self.key_problem(
                    "step-not-run",
                    format!("step `{id}` did not run"),
                    &base,
                    "expected to run",
                );
                continue;
            };
            if let Some(attempts) = step.attempts {
                let actual = step_runs.len() as u32;
                if actual != attempts {
                    let mut at = base.clone();
                    at.push(Seg::from("attempts"));
                    self.problem(
                        "wrong-attempts",
                        format!("step `{id}` ran {actual} attempt(s), expected {attempts}"),
                        &at,
                        &format!("expected {attempts}"),
                        None,
                    );
                }
            }
            let Some(expected) = &step.output else {
                continue;
            };
            let mut at = base.clone();
            at.push(Seg::from("output"));
            let Some(run) = step_runs.iter().rev().find(|r| r.status == "succeeded") else {
                let error = step_runs.last().and_then(|r| r.error.clone());
                self.problem(
                    "step-failed",
                    format!("step `{id}` has no output: it failed"),
                    &at,
                    "expected this output",
                    error.map(|e| format!("its error: {e}")),
                );
                continue;
            };
            for m in subset(expected, &run.output) {
                let mut field = at.clone();
                field.extend(m.path.iter().cloned());
                let message = match &m.actual {
                    Some(actual) => format!(
                        "step `{id}`: output `{}` is {actual}, expected {}",
                        dotted(&m.path),
                        m.expected
                    ),
                    None => format!(
                        "step `{id}`: output `{}` is missing, expected {}",
                        dotted(&m.path),
                        m.expected
                    ),
                };
                self.problem(
                    "wrong-output",
                    message,
                    &field,
                    "expected here",
                    Some(format!("the step's output: {}", show(&run.output))),
                );
            }
        }
        for (i, id) in expect.skipped.iter().enumerate() {
            if runs.contains_key(id.as_str()) {
                self.problem(
                    "step-ran",
                    format!("step `{id}` ran, expected it not to"),
                    &path!["expect", "skipped", i],
                    "expected not to run",
                    None,
                );
            }
        }
    }

    fn requests(&mut self, observed: &Observed) {
        let Some(expected) = &self.test.model.expect.requests else {
            return;
        };
        let sent = &observed.requests;
        for (i, e) in expected.iter().enumerate() {
            let base = path!["expect", "requests", i];
            let Some(actual) = sent.get(i) else {
                self.problem(
                    "missing-request",
                    format!(
                        "request {} was not sent: {} request(s) were",
                        i + 1,
                        sent.len()
                    ),
                    &base,
                    "expected this request",
                    None,
                );
                continue;
            };
            let what = format!("request {} ({} {})", i + 1, actual.method, actual.url);
            if let Some(method) = &e.method
                && !method.eq_ignore_ascii_case(&actual.method)
            {
                let mut at = base.clone();
                at.push(Seg::from("method"));
                self.problem(
                    "wrong-request",
                    format!("{what}: method is {}, expected {method}", actual.method),
                    &at,
                    "expected here",
                    None,
                );
            }
            if let Some(url) = &e.url
                && !wildcard::matches(url, &actual.url)
            {
                let mut at = base.clone();
                at.push(Seg::from("url"));
                self.problem(
                    "wrong-request",
                    format!("{what}: url is {}, expected {url}", actual.url),
                    &at,
                    "expected here",
                    None,
                );
            }
            for (name, value) in &e.headers {
                let found = actual.headers.get(&name.to_ascii_lowercase());
                if found != Some(value) {
                    let mut at = base.clone();
                    at.extend([Seg::from("headers"), Seg::from(name.as_str())]);
                    let actual = found.map_or("missing".to_string(), |v| format!("`{v}`"));
                    self.problem(
                        "wrong-request",
                        format!("{what}: header `{name}` is {actual}, expected `{value}`"),
                        &at,
                        "expected here",
                        None,
                    );
                }
            }
            if let Some(body) = &e.body {
                let mut at = base.clone();
                at.push(Seg::from("body"));
                for m in subset(body, &actual.body) {
                    let mut field = at.clone();
                    field.extend(m.path.iter().cloned());
                    let found = m.actual.clone().unwrap_or_else(|| "missing".into());
                    self.problem(
                        "wrong-request",
                        format!(
                            "{what}: body `{}` is {found}, expected {}",
                            dotted(&m.path),
                            m.expected
                        ),
                        &field,
                        "expected here",
                        Some(format!("the body sent: {}", show(&actual.body))),
                    );
                }
            }
        }
        if sent.len() > expected.len() {
            let extra: Vec<String> = sent[expected.len()..]
                .iter()
                .map(|r| format!("{} {}", r.method, r.url))
                .collect();
            self.key_problem(
                "extra-request",
                format!(
                    "{} more request(s) were sent than expected: {}",
                    extra.len(),
                    extra.join(", ")
                ),
                &path!["expect", "requests"],
                "the expected requests",
            );
        }
    }

    fn reply(&mut self, observed: &Observed, plan: &Plan) {
        let Some(expected) = &self.test.model.expect.reply else {
            return;
        };
        let base = path!["expect", "reply"];
        let Some(actual) = reply(observed, plan, &self.test.model.flow) else {
            self.key_problem(
                "wrong-reply",
                "no `respond` step answered".into(),
                &base,
                "expected a reply",
            );
            return;
        };
        if let Some(status) = expected.status
            && actual.get("status").and_then(Value::as_u64) != Some(u64::from(status))
        {
            let found = actual.get("status").map_or("missing".into(), show);
            self.problem(
                "wrong-reply",
                format!("the reply's status is {found}, expected {status}"),
                &path!["expect", "reply", "status"],
                "expected here",
                None,
            );
        }
        if let Some(body) = &expected.body {
            let actual_body = actual.get("body").cloned().unwrap_or(Value::Null);
            for m in subset(body, &actual_body) {
                let mut field = path!["expect", "reply", "body"];
                field.extend(m.path.iter().cloned());
                let found = m.actual.clone().unwrap_or_else(|| "missing".into());
                self.problem(
                    "wrong-reply",
                    format!(
                        "the reply's body `{}` is {found}, expected {}",
                        dotted(&m.path),
                        m.expected
                    ),
                    &field,
                    "expected here",
                    Some(format!("the reply's body: {}", show(&actual_body))),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_reports_every_difference_with_its_path() {
        let expected = json!({ "a": 500, "b": { "c": "x", "d": [1, 2] }, "e": true });
        let actual = json!({ "a": 500.0, "b": { "c": "y", "d": [1, 3] }, "f": 1 });
        let found: Vec<(String, String, Option<String>)> = subset(&expected, &actual)
            .into_iter()
            .map(|m| (dotted(&m.path), m.expected, m.actual))
            .collect();
        assert_eq!(
            found,
            vec![
                ("b.c".into(), "\"x\"".into(), Some("\"y\"".into())),
                ("b.d[1]".into(), "2".into(), Some("3".into())),
                ("e".into(), "true".into(), None),
            ]
        );
    }

    #[test]
    fn lists_of_another_length_differ_as_a_whole() {
        let m = subset(&json!({ "a": [1] }), &json!({ "a": [1, 2] }));
        assert_eq!(m.len(), 1);
        assert_eq!(dotted(&m[0].path), "a");
    }
}
