//! Finding and checking test files: `integrations/<integration>/tests/*.yaml`, parsed with the
//! compiler's spanned YAML loader, checked against `schemas/test.schema.json`, then against the
//! compiled repository (the customer has an instance of the integration, the flow exists, the
//! steps named in `mocks` and `expect` are steps of the flow), with did-you-mean hints.

use std::path::Path;
use std::sync::LazyLock;

use serde_json::Value;
use weft_compiler::diagnostic::did_you_mean;
use weft_compiler::path;
use weft_compiler::plan::{Builtin, Plan};
use weft_compiler::repo::MAX_FILE_BYTES;
use weft_compiler::schema::{compile_schema, validate_with};
use weft_compiler::source::SourceFile;
use weft_compiler::yaml::{self, Node, Seg};

use crate::model::{Mock, TestFile};
use crate::problem::Problem;

/// The published schema of test files (a test keeps it equal to [`crate::model::json_schema`]).
pub const PUBLISHED_SCHEMA: &str = include_str!("../../schemas/test.schema.json");

/// A test file that parsed and passed its schema.
#[derive(Debug, Clone)]
pub struct LoadedTest {
    /// Index in the run's files.
    pub file: usize,
    /// The integration whose `tests/` folder holds the file.
    pub integration: String,
    /// The test's name: `name:`, else the file name without extension.
    pub name: String,
    pub root: Node,
    pub model: TestFile,
}

/// A test file that could not be read (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct Unreadable {
    pub path: String,
    pub reason: String,
}

/// Reads every test file below `root` (of `integration` only, when given), sorted by path.
pub fn read_test_files(
    root: &Path,
    integration: Option<&str>,
) -> Result<Vec<SourceFile>, Unreadable> {
    let unreadable = |path: &Path, reason: String| Unreadable {
        path: path.display().to_string(),
        reason,
    };
    let integrations = root.join("integrations");
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(&integrations) else {
        return Ok(files);
    };
    let mut folders: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .filter(|name| integration.is_none_or(|i| i == name))
        .collect();
    folders.sort();
    for folder in folders {
        let tests = integrations.join(&folder).join("tests");
        let Ok(entries) = std::fs::read_dir(&tests) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && (n.ends_with(".yaml") || n.ends_with(".yml")))
            .collect();
        names.sort();
        for name in names {
            let path = tests.join(&name);
            let meta = std::fs::metadata(&path).map_err(|e| unreadable(&path, e.to_string()))?;
            if !meta.is_file() {
                return Err(unreadable(&path, "not a regular file".into()));
            }
            if meta.len() > MAX_FILE_BYTES {
                return Err(unreadable(
                    &path,
                    format!("{} bytes, more than the limit of 1 MiB", meta.len()),
                ));
            }
            let text =
                std::fs::read_to_string(&path).map_err(|e| unreadable(&path, e.to_string()))?;
            files.push(SourceFile::new(
                format!("integrations/{folder}/tests/{name}"),
                text,
            ));
        }
    }
    Ok(files)
}

/// Parses and checks one test file against the compiled plans. `Err` holds every problem.
pub fn load(file: usize, source: &SourceFile, plans: &[Plan]) -> Result<LoadedTest, Vec<Problem>> {
    let root = yaml::parse(&source.text).map_err(|e| {
        vec![Problem::new("yaml-syntax", e.message, file, e.span, e.label).help(e.help)]
    })?;
    let value = root.to_json();
    let schema_problems = check_schema(file, &root, &value);
    if !schema_problems.is_empty() {
        return Err(schema_problems);
    }
    let model: TestFile = serde_json::from_value(value).map_err(|e| {
        vec![Problem::new(
            "invalid-value",
            format!("invalid test file: {e}"),
            file,
            root.span.clone(),
            "here",
        )]
    })?;
    let mut parts = source.path.split('/');
    let integration = parts.nth(1).unwrap_or_default().to_string();
    let stem = source
        .path
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches(".yaml")
        .trim_end_matches(".yml")
        .to_string();
    let loaded = LoadedTest {
        file,
        name: model.name.clone().unwrap_or(stem),
        integration,
        root,
        model,
    };
    let problems = check_references(&loaded, plans);
    if problems.is_empty() {
        Ok(loaded)
    } else {
        Err(problems)
    }
}

fn check_schema(file: usize, root: &Node, value: &Value) -> Vec<Problem> {
    static SCHEMA: LazyLock<(Value, jsonschema::Validator)> = LazyLock::new(|| {
        let schema: Value =
            serde_json::from_str(PUBLISHED_SCHEMA).expect("the published schema is JSON (tested)");
        let validator = compile_schema(&schema).expect("the published schema compiles (tested)");
        (schema, validator)
    });
    let (schema, validator) = &*SCHEMA;
    validate_with(validator, schema, file, root, value, &[], &|_| false)
        .into_iter()
        .map(|d| {
            let (span, label) = d
                .labels
                .first()
                .map(|l| (l.span.clone(), l.message.clone()))
                .unwrap_or((root.span.clone(), "here".into()));
            Problem::new(d.code.name(), d.message, file, span, label).help(d.help)
        })
        .collect()
}

/// The customer, the flow and every step the file names exist.
fn check_references(test: &LoadedTest, plans: &[Plan]) -> Vec<Problem> {
    let file = test.file;
    let root = &test.root;
    let m = &test.model;
    let mut problems = Vec::new();
    let instances: Vec<&Plan> = plans
        .iter()
        .filter(|p| p.integration == test.integration)
        .collect();
    let Some(plan) = instances.iter().find(|p| p.customer == m.customer) else {
        let customers: Vec<&str> = instances.iter().map(|p| p.customer.as_str()).collect();
        let help = did_you_mean(&m.customer, customers.iter().copied()).or_else(|| {
            Some(if customers.is_empty() {
                format!(
                    "no customer has an instance of `{}` (instances/<customer>/{}.yaml)",
                    test.integration, test.integration
                )
            } else {
                format!("customers with an instance: {}", customers.join(", "))
            })
        });
        problems.push(
            Problem::new(
                "unknown-customer",
                format!(
                    "customer `{}` has no instance of `{}`",
                    m.customer, test.integration
                ),
                file,
                root.at(&path!["customer"]).span.clone(),
                "no instances/<customer>/ file for this integration",
            )
            .help(help),
        );
        return problems;
    };
    let Some(flow) = plan.flows.iter().find(|f| f.name == m.flow) else {
        let flows: Vec<&str> = plan.flows.iter().map(|f| f.name.as_str()).collect();
        problems.push(
            Problem::new(
                "unknown-flow",
                format!("`{}` has no flow `{}`", test.integration, m.flow),
                file,
                root.at(&path!["flow"]).span.clone(),
                "not a flow of this integration",
            )
            .help(
                did_you_mean(&m.flow, flows.iter().copied())
                    .or_else(|| Some(format!("its flows: {}", flows.join(", ")))),
            ),
        );
        return problems;
    };
    let steps: Vec<&str> = flow.steps.iter().map(|s| s.id.as_str()).collect();
    let mut check_step = |id: &str, path: Vec<Seg>, key: bool| {
        if steps.contains(&id) {
            return;
        }
        let span = if key {
            root.key_span(&path)
        } else {
            root.at(&path).span.clone()
        };
        problems.push(
            Problem::new(
                "unknown-step",
                format!("flow `{}` has no step `{id}`", m.flow),
                file,
                span,
                "not a step of this flow",
            )
            .help(
                did_you_mean(id, steps.iter().copied())
                    .or_else(|| Some(format!("its steps: {}", steps.join(", ")))),
            ),
        );
    };
    for id in m.expect.steps.keys() {
        check_step(id, path!["expect", "steps", id.as_str()], true);
    }
    for (i, id) in m.expect.skipped.iter().enumerate() {
        check_step(id, path!["expect", "skipped", i], false);
    }
    for (i, mock) in m.mocks.iter().enumerate() {
        if let Mock::Step(step) = mock {
            check_step(&step.step, path!["mocks", i, "step"], false);
        }
    }
    for path in m.files.keys() {
        // Files are written below the test's scratch folder, never elsewhere.
        let escapes = Path::new(path).components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
        if escapes || path.is_empty() {
            problems.push(
                Problem::new(
                    "invalid-value",
                    format!("`{path}` is not a path inside the test's scratch folder"),
                    file,
                    root.key_span(&path!["files", path.as_str()]),
                    "an absolute path, or one with `..`",
                )
                .help(Some(
                    "give a relative path without `..`, e.g. `data/inbox/prices.csv`".into(),
                )),
            );
        }
    }
    for (i, mock) in m.mocks.iter().enumerate() {
        let Mock::Step(step) = mock else {
            continue;
        };
        let routes = flow
            .steps
            .iter()
            .find(|s| s.id == step.step)
            .map(|s| &s.uses)
            .and_then(|u| {
                [Builtin::Branch, Builtin::ForEach]
                    .into_iter()
                    .find(|b| u.is(*b))
            });
        if let Some(kind) = routes {
            problems.push(
                Problem::new(
                    "invalid-value",
                    format!("step `{}` is a `{kind}`: it cannot be mocked", step.step),
                    file,
                    root.at(&path!["mocks", i, "step"]).span.clone(),
                    "decides where the flow goes",
                )
                .help(Some(
                    "give the trigger that takes the path you want, or mock the steps inside it"
                        .into(),
                )),
            );
        }
    }
    for (i, mock) in m.mocks.iter().enumerate() {
        if let Mock::Step(step) = mock
            && step.output.is_some() == step.error.is_some()
        {
            problems.push(
                Problem::new(
                    "invalid-value",
                    format!(
                        "the mock of step `{}` needs exactly one of `output` and `error`",
                        step.step
                    ),
                    file,
                    root.at(&path!["mocks", i]).span.clone(),
                    "this mock",
                )
                .help(Some(
                    "`output: ...` replaces what the step gives; `error: { status: 503 }` makes it fail"
                        .into(),
                )),
            );
        }
    }
    problems.sort_by_key(|p| p.span.start);
    problems
}
