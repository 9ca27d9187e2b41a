//! A test run's results for people (rustc-style failures and a summary), machines (one JSON
//! document), CI dashboards (JUnit XML, quick-junit) and pull requests (GitHub annotations).
//! Nothing here depends on time or machine: the same run prints the same bytes.

use std::fmt::Write as _;

use serde::Serialize;

use crate::coverage::FlowCoverage;
use crate::problem::ProblemJson;
use crate::{Run, TestResult};

/// Human output: one line per test, then each failure rendered rustc-style, then a summary.
pub fn human(run: &Run, color: bool) -> String {
    let mut out = String::new();
    for r in &run.results {
        let verdict = if r.passed() { "ok" } else { "FAILED" };
        let _ = write!(out, "test {} ({}) ... {verdict}", r.name, path(run, r));
        if !r.virtual_time.is_zero() {
            let _ = write!(out, " (virtual time {})", seconds(r));
        }
        out.push('\n');
    }
    for r in run.results.iter().filter(|r| !r.passed()) {
        let _ = writeln!(out, "\n---- {} ----", r.name);
        for p in &r.problems {
            out.push_str(&p.render_human(&run.files, color));
        }
    }
    let _ = writeln!(out, "\n{}", summary(run));
    out
}

/// `test result: ok. 3 passed; 0 failed`.
pub fn summary(run: &Run) -> String {
    let failed = run.failed();
    let passed = run.results.len() - failed;
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    format!("test result: {verdict}. {passed} passed; {failed} failed")
}

fn path<'r>(run: &'r Run, r: &TestResult) -> &'r str {
    &run.files[r.file].path
}

fn seconds(r: &TestResult) -> String {
    format!("{:.1} s", r.virtual_time.as_secs_f64())
}

#[derive(Serialize)]
struct JsonRun<'r> {
    passed: usize,
    failed: usize,
    tests: Vec<JsonTest<'r>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    coverage: Option<&'r [FlowCoverage]>,
}

#[derive(Serialize)]
struct JsonTest<'r> {
    name: &'r str,
    file: &'r str,
    integration: &'r str,
    flow: &'r str,
    passed: bool,
    virtual_time_ms: u128,
    problems: Vec<ProblemJson>,
}

/// One JSON document: counts, every test with its problems, and coverage when asked for.
pub fn json(run: &Run, coverage: Option<&[FlowCoverage]>) -> String {
    let failed = run.failed();
    let doc = JsonRun {
        passed: run.results.len() - failed,
        failed,
        tests: run
            .results
            .iter()
            .map(|r| JsonTest {
                name: &r.name,
                file: path(run, r),
                integration: &r.integration,
                flow: &r.flow,
                passed: r.passed(),
                virtual_time_ms: r.virtual_time.as_millis(),
                problems: r.problems.iter().map(|p| p.to_json(&run.files)).collect(),
            })
            .collect(),
        coverage,
    };
    serde_json::to_string_pretty(&doc).expect("a report serializes") + "\n"
}

/// JUnit XML: one suite per integration, one case per test; a failure's text is the
/// rustc-style rendering of its problems.
pub fn junit(run: &Run) -> String {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("weft test");
    let mut suites: Vec<TestSuite> = Vec::new();
    for r in &run.results {
        let status = if r.passed() {
            TestCaseStatus::success()
        } else {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            let first = &r.problems[0];
            let (_, line, _) = first.location(&run.files);
            status.set_message(format!("{} (line {line})", first.message));
            status.set_type(first.code);
            let text: String = r
                .problems
                .iter()
                .map(|p| p.render_human(&run.files, false))
                .collect();
            status.set_description(text);
            status
        };
        let mut case = TestCase::new(r.name.as_str(), status);
        case.set_classname(format!("{}.{}", r.integration, r.flow));
        case.extra.insert("file".into(), path(run, r).into());
        if suites
            .last()
            .is_none_or(|s| s.name.as_str() != r.integration)
        {
            suites.push(TestSuite::new(r.integration.as_str()));
        }
        suites.last_mut().expect("pushed").add_test_case(case);
    }
    report.add_test_suites(suites);
    report.to_string().expect("a report serializes") + "\n"
}

/// GitHub Actions annotations: one `::error` per problem, on the test file's line, then a
/// `::notice` with the summary.
pub fn github(run: &Run) -> String {
    let mut out = String::new();
    for r in &run.results {
        for p in &r.problems {
            out.push_str(&p.render_github(&run.files, &r.name));
            out.push('\n');
        }
    }
    let _ = writeln!(out, "::notice title=weft test::{}", summary(run));
    out
}

/// Coverage for people: per flow, what no test reached.
pub fn coverage_human(coverage: &[FlowCoverage]) -> String {
    let mut out = String::from("\ncoverage:\n");
    for f in coverage {
        let reached = f.steps - f.missed_steps.len();
        let _ = write!(
            out,
            "  {}/{}: {reached}/{} steps",
            f.integration, f.flow, f.steps
        );
        if f.missed_steps.is_empty() && f.missed_cases.is_empty() {
            out.push_str(", every branch case\n");
            continue;
        }
        out.push('\n');
        if !f.missed_steps.is_empty() {
            let _ = writeln!(out, "    steps no test ran: {}", f.missed_steps.join(", "));
        }
        if !f.missed_cases.is_empty() {
            let _ = writeln!(
                out,
                "    branch cases no test took: {}",
                f.missed_cases.join(", ")
            );
        }
    }
    out
}
