//! `weft test`: integrations tested like code, offline. Every test file under
//! `integrations/<integration>/tests/` ([`model`]) is read and checked ([`load`]), run on the
//! real runtime with its HTTP requests answered by mocks and its retries on a virtual clock
//! ([`execute`]), and compared with its expectations ([`expect`]); [`report`] prints the
//! results for people, machines and CI, [`coverage`] what no test reached. [`export`] turns a
//! real execution from the history into a test file.

pub mod coverage;
pub mod execute;
pub mod expect;
pub mod export;
pub mod load;
pub mod model;
pub mod problem;
pub mod report;
pub mod wildcard;

use std::path::Path;
use std::time::Duration;

use weft_compiler::source::SourceFile;
use weft_plan::Plan;

use crate::execute::Reached;
use crate::problem::Problem;

/// Which tests to run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only this integration's tests.
    pub integration: Option<String>,
    /// Only tests whose name or file path contains this text.
    pub filter: Option<String>,
}

/// One test's result.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// Index in [`Run::files`].
    pub file: usize,
    pub name: String,
    pub integration: String,
    /// Empty when the file could not be read as a test.
    pub flow: String,
    /// Problems of the file, or failed expectations: none when the test passed.
    pub problems: Vec<Problem>,
    /// Retry backoff and `delay` steps, on the virtual clock.
    pub virtual_time: Duration,
}

impl TestResult {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Every test's result, in file order.
#[derive(Debug)]
pub struct Run {
    /// The test files, repo-relative (what problems point into).
    pub files: Vec<SourceFile>,
    pub results: Vec<TestResult>,
    /// What the tests reached, for `--coverage`.
    pub reached: Reached,
}

impl Run {
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| !r.passed()).count()
    }
}

/// Why tests could not run (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Unreadable(#[from] load::Unreadable),
    #[error("{file}: {source}")]
    Execute {
        file: String,
        source: execute::ExecuteError,
    },
}

/// Runs the selected tests of the repository at `root` on its compiled `plans`, one after the
/// other. File steps work in a scratch folder per test: the process's working folder is that
/// folder while a test runs (and restored after), so call this from one thread only.
pub async fn run(root: &Path, plans: &[Plan], selection: &Selection) -> Result<Run, RunError> {
    let files = load::read_test_files(root, selection.integration.as_deref())?;
    let mut results = Vec::new();
    let mut reached = Reached::default();
    let home = std::env::current_dir().ok();
    for (file, source) in files.iter().enumerate() {
        let loaded = load::load(file, source, plans);
        let name = match &loaded {
            Ok(test) => test.name.clone(),
            Err(_) => stem(&source.path),
        };
        if let Some(filter) = &selection.filter
            && !name.contains(filter.as_str())
            && !source.path.contains(filter.as_str())
        {
            continue;
        }
        let integration = source
            .path
            .split('/')
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let test = match loaded {
            Ok(test) => test,
            Err(problems) => {
                results.push(TestResult {
                    file,
                    name,
                    integration,
                    flow: String::new(),
                    problems,
                    virtual_time: Duration::ZERO,
                });
                continue;
            }
        };
        let plan = plans
            .iter()
            .find(|p| p.integration == test.integration && p.customer == test.model.customer)
            .expect("load checked the customer's instance");
        let execute_error = |source| RunError::Execute {
            file: source_path(&files, file),
            source,
        };
        let scratch =
            tempfile::tempdir().map_err(|e| execute_error(execute::ExecuteError::Scratch(e)))?;
        std::env::set_current_dir(scratch.path())
            .map_err(|e| execute_error(execute::ExecuteError::Scratch(e)))?;
        let observed = execute::execute(&test, plan, scratch.path()).await;
        if let Some(home) = &home {
            let _ = std::env::set_current_dir(home);
        }
        let observed = observed.map_err(execute_error)?;
        reached.record(&observed);
        results.push(TestResult {
            file,
            name: test.name.clone(),
            integration: test.integration.clone(),
            flow: test.model.flow.clone(),
            problems: expect::check(&test, plan, &observed),
            virtual_time: observed.virtual_time,
        });
    }
    Ok(Run {
        files,
        results,
        reached,
    })
}

fn source_path(files: &[SourceFile], file: usize) -> String {
    files[file].path.clone()
}

fn stem(path: &str) -> String {
    path.rsplit('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches(".yaml")
        .trim_end_matches(".yml")
        .to_string()
}
