//! Stage 2: validation. Resolves references and checks components and integrations, one module
//! per concern; produces diagnostics and, for an integration without errors, a
//! [`CheckedIntegration`] (the validated model with its step graphs) that [`crate::lower`]
//! turns into plan types. Nothing here builds a plan.

mod components;
mod config;
mod connections;
mod dispatch;
mod project;
mod responds;
mod steps;
mod triggers;
mod uses;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use jsonschema::Validator;
use petgraph::graph::NodeIndex;
use serde_json::Value;

pub use components::components;
use dispatch::DispatchEdge;
pub use project::{CheckedProject, project, project_model};
use triggers::WebhookPaths;

use crate::diagnostic::{Code, Diagnostic};
use crate::graph::StepGraph;
use crate::load::Loaded;
use crate::model::{Component, DurationText, Flow, Integration, Respond, Step};
use crate::path;
use crate::scope::Site;
use crate::source::SourceFile;
use crate::yaml::Seg;

/// A component with its action input schemas compiled.
pub struct ResolvedComponent<'r> {
    pub loaded: &'r Loaded<Component>,
    pub inputs: BTreeMap<String, (Value, Validator)>,
}

/// What every integration is checked against: the files and the repository's components.
pub struct Context<'r> {
    pub files: &'r [SourceFile],
    pub components: BTreeMap<String, ResolvedComponent<'r>>,
    /// Components whose files have errors of their own: references to them are not reported.
    pub broken_components: BTreeSet<String>,
}

/// An integration that passed every check, ready to be lowered.
#[derive(Debug)]
pub struct CheckedIntegration<'a> {
    pub model: &'a Integration,
    /// The flows, in declaration order.
    pub flows: Vec<CheckedFlow<'a>>,
    /// The components the steps and polls use, with the actions they call.
    pub components_used: BTreeMap<String, UsedComponent<'a>>,
    /// `when` of each branch case, per flow and branch step, for graph labels.
    pub cases: BTreeMap<(String, String), Vec<String>>,
}

/// A component some step or poll calls, and which of its actions.
#[derive(Debug)]
pub struct UsedComponent<'a> {
    pub model: &'a Component,
    pub actions: BTreeSet<String>,
}

/// A checked flow: its step graph and its steps in the order they run.
#[derive(Debug)]
pub struct CheckedFlow<'a> {
    pub name: &'a str,
    pub flow: &'a Flow,
    pub graph: StepGraph,
    /// Every step (branch cases and loop bodies included) in topological order of the graph,
    /// ties broken by declaration order.
    pub steps: Vec<CheckedStep<'a>>,
}

/// One step of a checked flow.
#[derive(Debug)]
pub struct CheckedStep<'a> {
    /// Borrowed from the model, or owned when it comes from a branch case (parsed from `with`).
    pub step: Cow<'a, Step>,
    /// Its node in the flow's step graph.
    pub node: NodeIndex,
    /// The `for_each` step whose body this step is in.
    pub for_each: Option<String>,
}

/// Where a loaded file's values lie, for diagnostics.
fn site<'a, T>(files: &'a [SourceFile], loaded: &'a Loaded<T>) -> Site<'a> {
    Site {
        file: loaded.file,
        source: &files[loaded.file],
        root: &loaded.root,
    }
}

/// The state shared by the checks of one integration (each concern adds its methods in its own
/// module).
struct IntegrationChecker<'a, 'r> {
    ctx: &'a Context<'r>,
    loaded: &'a Loaded<Integration>,
    site: Site<'a>,
    out: Vec<Diagnostic>,
    components_used: BTreeMap<String, UsedComponent<'r>>,
}

/// Checks one integration; returns its checked form when it has no errors.
pub fn integration<'a>(
    ctx: &'a Context<'_>,
    loaded: &'a Loaded<Integration>,
) -> (Option<CheckedIntegration<'a>>, Vec<Diagnostic>) {
    let mut checker = IntegrationChecker {
        ctx,
        loaded,
        site: site(ctx.files, loaded),
        out: Vec::new(),
        components_used: BTreeMap::new(),
    };
    let checked = checker.run();
    let ok = !checker.out.iter().any(Diagnostic::is_error);
    (ok.then_some(checked), checker.out)
}

impl<'a> IntegrationChecker<'a, '_> {
    fn error(
        &mut self,
        code: Code,
        message: impl Into<String>,
        path: &[Seg],
        label: impl Into<String>,
    ) -> &mut Diagnostic {
        let d = Diagnostic::error(code, message).at(self.loaded.file, self.site.span(path), label);
        self.out.push(d);
        self.out.last_mut().expect("just pushed")
    }

    fn run(&mut self) -> CheckedIntegration<'a> {
        let m: &'a Integration = &self.loaded.model;
        self.check_folder(m);
        self.check_config(m);
        self.check_connections(m);
        let mut flows = Vec::new();
        let mut cases = BTreeMap::new();
        let mut dispatch_edges: Vec<DispatchEdge> = Vec::new();
        let mut webhook_paths = WebhookPaths::new();
        let dispatched = dispatch::dispatch_targets(m);
        for (name, flow) in &m.flows {
            self.check_trigger(m, name, flow, &mut webhook_paths);
            let mut walk = self.check_flow(m, name, flow, dispatched.contains(name));
            let sync = flow
                .trigger
                .webhook
                .as_ref()
                .is_some_and(|w| w.respond == Respond::Sync);
            if sync {
                self.check_sync_flow_has_respond(name, walk.respond_steps);
            }
            for (target, at) in walk.dispatches.drain(..) {
                dispatch_edges.push((name.clone(), target, at));
            }
            cases.append(&mut walk.cases);
            let first_seen = std::mem::take(&mut walk.first_seen);
            let respond_steps = walk.respond_steps;
            let checked = walk.finish(flow);
            if sync && respond_steps > 0 {
                self.check_every_path_responds(&checked, &first_seen);
            }
            flows.push(checked);
        }
        self.check_dispatch_cycles(m, &dispatch_edges);
        self.check_unused_config(m);
        CheckedIntegration {
            model: m,
            flows,
            components_used: std::mem::take(&mut self.components_used),
            cases,
        }
    }

    /// A duration (at `at`) that is zero or too long gets a diagnostic.
    fn check_duration(&mut self, at: &[Seg], d: Option<&DurationText>) {
        if let Some(d) = d {
            self.out
                .extend(project::duration_error(&self.site, at, &d.0));
        }
    }

    /// An integration lies in the folder of its name.
    fn check_folder(&mut self, m: &Integration) {
        if m.name.0 != self.loaded.folder {
            self.error(
                Code::MisplacedFile,
                format!(
                    "integration `{}` lies in folder `integrations/{}`",
                    m.name.0, self.loaded.folder
                ),
                &path!["name"],
                "name differs from its folder",
            )
            .help = Some(format!("rename the folder to `integrations/{}`", m.name.0));
        }
    }
}
