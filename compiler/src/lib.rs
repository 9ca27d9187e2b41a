//! weft's compiler: GitOps repository text in, diagnostics and per-instance bundles out.
//!
//! Stages, each a function with its own types (see ARCHITECTURE.md):
//! [`repo`] (the only IO) → [`load`] (YAML tree, schema, model) → [`check`] (references,
//! graphs) → [`instance`] (config, plans) → [`emit`] (bundle files).

pub mod build;
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
pub mod repo;
pub mod schema;
pub mod scope;
pub mod size;
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
pub use weft_plan as plan;

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

/// Published versions of integrations, read (from git tags) by the caller: the compiler itself
/// does no IO.
pub trait Versions: Sync {
    /// The newest published version of an integration.
    fn latest(&self, integration: &str) -> Option<u32>;
    /// The repository's sources at a published version's commit, and that commit.
    fn sources_at(&self, integration: &str, version: u32) -> Result<(Sources, String), String>;
}

/// No published versions: the repository is not read from git.
pub struct NoVersions;

impl Versions for NoVersions {
    fn latest(&self, _: &str) -> Option<u32> {
        None
    }
    fn sources_at(&self, integration: &str, version: u32) -> Result<(Sources, String), String> {
        Err(format!(
            "version {version} of `{integration}` cannot be read: published versions are git tags, and this repository is not read from git"
        ))
    }
}

/// Compiles a repository's sources: checks everything and builds every instance's plan.
pub fn compile(sources: &Sources) -> Compilation {
    run(sources, true, &NoVersions)
}

/// Like [`compile`], resolving instances that pin published versions through `versions`.
pub fn compile_with(sources: &Sources, versions: &dyn Versions) -> Compilation {
    run(sources, true, versions)
}

/// Checks a repository's sources: every diagnostic [`compile`] finds, without building plans.
pub fn check(sources: &Sources) -> Compilation {
    run(sources, false, &NoVersions)
}

/// Like [`check`], resolving pinned versions through `versions`.
pub fn check_with(sources: &Sources, versions: &dyn Versions) -> Compilation {
    run(sources, false, versions)
}

/// The sources one integration needs: the project, the components and its own folder.
pub fn integration_sources(sources: &Sources, integration: &str) -> Sources {
    let own = format!("integrations/{integration}/");
    let mut out = Sources::default();
    for f in &sources.files {
        if f.path == "weft.yaml" || f.path.starts_with("components/") || f.path.starts_with(&own) {
            out.add(f.path.clone(), f.text.clone());
        }
    }
    out
}

type PinKey = (String, u32);
/// Why a pin cannot be honoured: code, message, help.
type PinError = (diagnostic::Code, String, String);
/// A pinned version compiled from its commit, or why it could not be.
type Pinned = Result<(CompiledIntegration, String), PinError>;

/// Compiles each published version that instances pin, once.
fn resolve_pins(repo: &load::Repo, versions: &dyn Versions) -> BTreeMap<PinKey, Pinned> {
    use model::{NamedVersion, VersionPin};
    let mut wanted = BTreeSet::new();
    for i in &repo.instances {
        let name = &i.model.integration.0;
        match i.model.version {
            VersionPin::Number(n) => {
                wanted.insert((name.clone(), n));
            }
            VersionPin::Named(NamedVersion::Latest) => {
                if let Some(n) = versions.latest(name) {
                    wanted.insert((name.clone(), n));
                }
            }
            VersionPin::Named(NamedVersion::Draft) => {}
        }
    }
    wanted
        .into_par_iter()
        .map(|(name, n)| {
            let unavailable = repo.versions.iter().any(|v| v.folder == name && v.model.unavailable.contains(&n));
            let result = if unavailable {
                Err((
                    Code::UnavailableVersion,
                    format!("version {n} of `{name}` is marked unavailable"),
                    format!("pin another version; see integrations/{name}/versions.yaml and `weft versions {name}`"),
                ))
            } else {
                match versions.sources_at(&name, n) {
                    Err(e) => Err((Code::UnknownVersion, e, format!("see `weft versions {name}`, or use `version: draft`"))),
                    Ok((snapshot, commit)) => {
                        let mut compiled = compile(&integration_sources(&snapshot, &name));
                        match compiled.integrations.remove(&name) {
                            Some(ci) => Ok((ci, commit)),
                            None => Err((
                                Code::UnknownVersion,
                                format!("version {n} of `{name}` does not compile with today's weft ({} at {})", compiled.error_count(), &commit[..commit.len().min(10)]),
                                "pin another version, or publish a fixed one".to_string(),
                            )),
                        }
                    }
                }
            };
            ((name, n), result)
        })
        .collect()
}

fn run(sources: &Sources, build_plans: bool, versions: &dyn Versions) -> Compilation {
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
    let pins = resolve_pins(&repo, versions);
    let instances: Vec<_> = repo
        .instances
        .par_iter()
        .map(|loaded| {
            use model::{NamedVersion, VersionPin};
            let name = &loaded.model.integration.0;
            let number = match loaded.model.version {
                VersionPin::Number(n) => Some(Ok(n)),
                VersionPin::Named(NamedVersion::Latest) => Some(versions.latest(name).ok_or(())),
                VersionPin::Named(NamedVersion::Draft) => None,
            };
            let resolved = match number {
                None => instance::Resolved::Draft,
                Some(Err(())) => instance::Resolved::Failed {
                    code: Code::UnknownVersion,
                    message: format!("`{name}` has no published version"),
                    help: "publish one with `weft publish`, or use `version: draft`".into(),
                },
                Some(Ok(n)) => match pins.get(&(name.clone(), n)) {
                    Some(Ok((ci, commit))) => instance::Resolved::Published {
                        version: n,
                        integration: ci,
                        commit,
                    },
                    Some(Err((code, message, help))) => instance::Resolved::Failed {
                        code: *code,
                        message: message.clone(),
                        help: help.clone(),
                    },
                    None => instance::Resolved::Draft,
                },
            };
            instance::instance(
                loaded,
                &integrations,
                &known,
                &ctx.project,
                build_plans,
                resolved,
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
