//! weft's compiler: GitOps repository text in, diagnostics and per-instance bundles out.
//!
//! Stages, each a function with its own types (see ARCHITECTURE.md):
//! [`repo`] (the only IO) → [`load`] (YAML tree, schema, model) → [`check`] (references,
//! graphs) → [`instance`] (config, plans) → [`emit`] (bundle files).

pub mod builtins;
pub mod check;
pub mod diagnostic;
pub mod diff;
pub mod emit;
pub mod git;
pub mod graph;
pub mod instance;
pub mod load;
pub mod model;
pub mod plan;
pub mod repo;
pub mod schema;
pub mod scope;
pub mod source;
pub mod template;
pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;

use crate::check::CompiledIntegration;
use crate::diagnostic::{Code, Diagnostic};
use crate::model::Project;
use crate::plan::Plan;
use crate::repo::Sources;

/// Everything a compilation produces.
#[derive(Debug)]
pub struct Compilation {
    /// Every problem found, ordered by file and position.
    pub diagnostics: Vec<Diagnostic>,
    /// Integrations without errors, by name.
    pub integrations: BTreeMap<String, CompiledIntegration>,
    /// One plan per instance without errors, ordered by customer and integration.
    pub plans: Vec<Plan>,
    pub project: Project,
}

impl Compilation {
    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    pub fn warning_count(&self) -> usize {
        self.diagnostics.len() - self.error_count()
    }
}

/// Compiles a repository's sources: checks everything and builds every instance's plan.
pub fn compile(sources: &Sources) -> Compilation {
    run(sources, true)
}

/// Checks a repository's sources: every diagnostic [`compile`] finds, without building plans.
pub fn check(sources: &Sources) -> Compilation {
    run(sources, false)
}

fn run(sources: &Sources, build_plans: bool) -> Compilation {
    let (repo, mut diagnostics) = load::load(sources);
    let ctx = check::components(&sources.files, &repo, &mut diagnostics);

    let mut seen: BTreeMap<&str, &load::Loaded<model::Integration>> = BTreeMap::new();
    let mut unique = Vec::new();
    for loaded in &repo.integrations {
        let name = loaded.model.name.0.as_str();
        if let Some(first) = seen.get(name) {
            diagnostics.push(
                Diagnostic::error(
                    Code::DuplicateName,
                    format!("two integrations are named `{name}`"),
                )
                .at(
                    loaded.file,
                    loaded.root.at(&path!["name"]).span.clone(),
                    "second definition",
                )
                .at(
                    first.file,
                    first.root.at(&path!["name"]).span.clone(),
                    "first definition",
                ),
            );
        } else {
            seen.insert(name, loaded);
            unique.push(loaded);
        }
    }
    let checked: Vec<_> = unique
        .par_iter()
        .map(|loaded| check::integration(&ctx, loaded))
        .collect();
    let mut integrations = BTreeMap::new();
    for (compiled, diags) in checked {
        diagnostics.extend(diags);
        if let Some(c) = compiled {
            integrations.insert(c.name.clone(), c);
        }
    }
    let known: BTreeSet<String> = repo
        .integrations
        .iter()
        .map(|i| i.model.name.0.clone())
        .chain(repo.broken_integrations.iter().cloned())
        .collect();
    let instances: Vec<_> = repo
        .instances
        .par_iter()
        .map(|loaded| {
            instance::instance(
                loaded,
                &integrations,
                &known,
                &ctx.project.policy,
                build_plans,
            )
        })
        .collect();
    let mut plans = Vec::new();
    for (plan, diags) in instances {
        diagnostics.extend(diags);
        plans.extend(plan);
    }
    plans.sort_by(|a, b| (&a.customer, &a.integration).cmp(&(&b.customer, &b.integration)));
    diagnostics.sort_by_key(Diagnostic::sort_key);
    Compilation {
        diagnostics,
        integrations,
        plans,
        project: ctx.project,
    }
}
