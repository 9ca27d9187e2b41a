//! The compile driver: runs the stages in order — [`load`], [`check`] and [`lower`] per
//! integration, then [`instance`] and [`lower`] per instance — and compiles the published
//! versions that instances pin.

use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;

use crate::check::{self, CheckedProject};
use crate::diagnostic::{Code, Diagnostic};
use crate::instance::{self, Pin};
use crate::load::{self, Loaded, Repo};
use crate::lower::{self, CompiledIntegration};
use crate::model::{Instance, Integration, NamedVersion, Project, StepDefaults, VersionPin};
use crate::path;
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

fn run(sources: &Sources, build_plans: bool, versions: &dyn Versions) -> Compilation {
    let (repo, mut diagnostics) = load::load(sources);
    let checked_project = check::project(&sources.files, &repo, &mut diagnostics);
    let ctx = check::components(&sources.files, &repo, &mut diagnostics);
    // Step defaults with errors are not applied: no plan is built then.
    let no_defaults = StepDefaults::default();
    let defaults = checked_project
        .as_ref()
        .map_or(&no_defaults, |p| &p.model.defaults);
    let unique = unique_integrations(&repo, &mut diagnostics);
    let compiled: Vec<_> = unique
        .par_iter()
        .map(|loaded| {
            let (checked, diags) = check::integration(&ctx, loaded);
            let compiled = checked.map(|c| lower::integration(c, defaults));
            (compiled, diags)
        })
        .collect();
    let mut integrations = BTreeMap::new();
    for (compiled, diags) in compiled {
        diagnostics.extend(diags);
        if let Some(c) = compiled {
            integrations.insert(c.name.clone(), c);
        }
    }
    let instances = Instances {
        integrations: &integrations,
        known: known_integrations(&repo),
        pins: resolve_pins(&repo, versions),
        versions,
        project: checked_project.as_ref(),
        build_plans,
    };
    let compiled: Vec<_> = repo
        .instances
        .par_iter()
        .map(|loaded| instances.compile(loaded))
        .collect();
    let mut plans = Vec::new();
    for (plan, diags) in compiled {
        diagnostics.extend(diags);
        plans.extend(plan);
    }
    plans.sort_by(|a, b| (&a.customer, &a.integration).cmp(&(&b.customer, &b.integration)));
    diagnostics.sort_by_key(Diagnostic::sort_key);
    let project = match checked_project {
        Some(p) => p.model,
        None => check::project_model(&repo),
    };
    Compilation {
        diagnostics,
        integrations,
        plans,
        project,
    }
}

/// The integrations to compile: the first of each name (a second one is reported).
fn unique_integrations<'r>(
    repo: &'r Repo,
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<&'r Loaded<Integration>> {
    let mut seen: BTreeMap<&str, &Loaded<Integration>> = BTreeMap::new();
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
    unique
}

/// Every integration's name, those with errors included.
fn known_integrations(repo: &Repo) -> BTreeSet<String> {
    repo.integrations
        .iter()
        .map(|i| i.model.name.0.clone())
        .chain(repo.broken_integrations.iter().cloned())
        .collect()
}

type PinKey = (String, u32);
/// Why a pin cannot be honoured: code, message, help.
type PinError = (Code, String, String);
/// A pinned version compiled from its commit, or why it could not be.
type Pinned = Result<(CompiledIntegration, String), PinError>;

/// The version number an instance pins: `None` for `draft`, `Err` for `latest` when nothing is
/// published.
fn pinned_number(
    instance: &Instance,
    versions: &dyn Versions,
) -> Option<Result<u32, NoPublishedVersion>> {
    match instance.version {
        VersionPin::Number(n) => Some(Ok(n)),
        VersionPin::Named(NamedVersion::Latest) => Some(
            versions
                .latest(&instance.integration.0)
                .ok_or(NoPublishedVersion),
        ),
        VersionPin::Named(NamedVersion::Draft) => None,
    }
}

/// `latest` is pinned, and nothing is published.
struct NoPublishedVersion;

/// Compiles each published version that instances pin, once.
fn resolve_pins(repo: &Repo, versions: &dyn Versions) -> BTreeMap<PinKey, Pinned> {
    let wanted: BTreeSet<PinKey> = repo
        .instances
        .iter()
        .filter_map(|i| {
            let n = pinned_number(&i.model, versions)?.ok()?;
            Some((i.model.integration.0.clone(), n))
        })
        .collect();
    wanted
        .into_par_iter()
        .map(|(name, n)| {
            let result = compile_published(repo, versions, &name, n);
            ((name, n), result)
        })
        .collect()
}

/// Compiles version `n` of integration `name` from its commit.
fn compile_published(repo: &Repo, versions: &dyn Versions, name: &str, n: u32) -> Pinned {
    let unavailable = repo
        .versions
        .iter()
        .any(|v| v.folder == name && v.model.unavailable.contains(&n));
    if unavailable {
        return Err((
            Code::UnavailableVersion,
            format!("version {n} of `{name}` is marked unavailable"),
            format!(
                "pin another version; see integrations/{name}/versions.yaml and `weft versions {name}`"
            ),
        ));
    }
    let (snapshot, commit) = versions.sources_at(name, n).map_err(|e| {
        (
            Code::UnknownVersion,
            e,
            format!("see `weft versions {name}`, or use `version: draft`"),
        )
    })?;
    let mut compiled = compile(&integration_sources(&snapshot, name));
    match compiled.integrations.remove(name) {
        Some(ci) => Ok((ci, commit)),
        None => Err((
            Code::UnknownVersion,
            format!(
                "version {n} of `{name}` does not compile with today's weft ({} at {})",
                compiled.error_count(),
                &commit[..commit.len().min(10)]
            ),
            "pin another version, or publish a fixed one".to_string(),
        )),
    }
}

/// What every instance is compiled against.
struct Instances<'c> {
    integrations: &'c BTreeMap<String, CompiledIntegration>,
    /// Every integration's name, those with errors included.
    known: BTreeSet<String>,
    pins: BTreeMap<PinKey, Pinned>,
    versions: &'c dyn Versions,
    /// `None` when the project settings have errors: no plan is built then.
    project: Option<&'c CheckedProject>,
    build_plans: bool,
}

impl Instances<'_> {
    /// Checks an instance and, when it has no errors and plans are built, lowers it.
    fn compile(&self, loaded: &Loaded<Instance>) -> (Option<Plan>, Vec<Diagnostic>) {
        let (pin, published) = self.resolve(&loaded.model);
        let integration = published.or_else(|| self.integrations.get(&loaded.model.integration.0));
        let target = integration.map(CompiledIntegration::target);
        let (checked, diags) = instance::check(loaded, pin, target.as_ref(), &self.known);
        let plan = match (checked, integration, self.project) {
            (Some(checked), Some(integration), Some(project)) if self.build_plans => {
                Some(lower::instance(&checked, integration, project))
            }
            _ => None,
        };
        (plan, diags)
    }

    /// The version an instance runs and, for a published one, its compiled integration.
    fn resolve(&self, m: &Instance) -> (Pin<'_>, Option<&CompiledIntegration>) {
        let name = &m.integration.0;
        match pinned_number(m, self.versions) {
            None => (Pin::Draft, None),
            Some(Err(NoPublishedVersion)) => {
                let failed = Pin::Failed {
                    code: Code::UnknownVersion,
                    message: format!("`{name}` has no published version"),
                    help: "publish one with `weft publish`, or use `version: draft`".into(),
                };
                (failed, None)
            }
            Some(Ok(n)) => match self.pins.get(&(name.clone(), n)) {
                Some(Ok((ci, commit))) => (Pin::Published { version: n, commit }, Some(ci)),
                Some(Err((code, message, help))) => {
                    let failed = Pin::Failed {
                        code: *code,
                        message: message.clone(),
                        help: help.clone(),
                    };
                    (failed, None)
                }
                None => (Pin::Draft, None),
            },
        }
    }
}
