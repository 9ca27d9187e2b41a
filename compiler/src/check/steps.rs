//! Steps: a walk over each flow's steps (branch cases and loop bodies included) that checks
//! every step (unique id, `uses`, nested `steps`, inputs against the action's schema, templates
//! against what is in scope) and wires the flow's step graph.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use petgraph::graph::NodeIndex;
use serde::Deserialize;
use serde_json::Value;

use super::triggers::trigger_fields;
use super::{CheckedFlow, CheckedStep, IntegrationChecker};
use crate::builtins::{self, BRANCH, FOR_EACH, RESPOND};
use crate::diagnostic::{Code, Diagnostic};
use crate::graph::{EdgeKind, GraphNode, Shape, StepGraph, topological_order};
use crate::model::{BranchWith, Flow, Integration, Step};
use crate::path;
use crate::schema::validate_with;
use crate::scope::{Scope, StepScope, check_template, check_value};
use crate::template::is_template;
use crate::yaml::{Path, Seg};

/// Everything one flow's walk collects.
pub(super) struct FlowWalk<'a> {
    flow_name: &'a str,
    /// Every step id of the flow, to tell a later step from an unknown one.
    all_ids: BTreeSet<String>,
    /// The path of each step id where it is first used.
    pub(super) first_seen: BTreeMap<String, Path>,
    graph: StepGraph,
    steps: Vec<CheckedStep<'a>>,
    /// Flows this flow dispatches to, with the path of each `flow:`.
    pub(super) dispatches: Vec<(String, Path)>,
    pub(super) respond_steps: usize,
    /// `when` of each branch case, per flow and branch step.
    pub(super) cases: BTreeMap<(String, String), Vec<String>>,
    /// The fields of `trigger` the flow's templates may read.
    trigger_fields: Vec<&'static str>,
}

/// Where a sequence of steps stands: its path, the steps that ran on every path before it, and
/// the loop it is the body of.
struct Sequence {
    at: Path,
    visible: Vec<String>,
    for_each: Option<String>,
}

impl Sequence {
    /// A sequence nested in the step at `at` (a branch case or a loop body), under `segs`.
    fn nested(&self, at: &[Seg], segs: Path, for_each: Option<String>) -> Sequence {
        let mut nested_at = at.to_vec();
        nested_at.extend(segs);
        Sequence {
            at: nested_at,
            visible: self.visible.clone(),
            for_each,
        }
    }
}

/// The dangling edges leading into, or out of, a sequence of steps.
type Ends = Vec<(NodeIndex, EdgeKind)>;

impl<'a> FlowWalk<'a> {
    /// The checked flow: steps in topological order of the graph.
    pub(super) fn finish(self, flow: &'a Flow) -> CheckedFlow<'a> {
        let order = topological_order(&self.graph)
            .expect("a flow's step graph is acyclic: every edge leads to a step added after it");
        let mut by_node: BTreeMap<NodeIndex, CheckedStep<'a>> =
            self.steps.into_iter().map(|s| (s.node, s)).collect();
        let steps = order.iter().filter_map(|n| by_node.remove(n)).collect();
        CheckedFlow {
            name: self.flow_name,
            flow,
            graph: self.graph,
            steps,
        }
    }
}

impl<'a> IntegrationChecker<'a, '_> {
    /// Checks a flow's steps and builds its step graph; `dispatched` when a `dispatch` step
    /// names the flow.
    pub(super) fn check_flow(
        &mut self,
        m: &'a Integration,
        name: &'a str,
        flow: &'a Flow,
        dispatched: bool,
    ) -> FlowWalk<'a> {
        let mut walk = FlowWalk {
            flow_name: name,
            all_ids: BTreeSet::new(),
            first_seen: BTreeMap::new(),
            graph: StepGraph::new(),
            steps: Vec::new(),
            dispatches: Vec::new(),
            respond_steps: 0,
            cases: BTreeMap::new(),
            trigger_fields: trigger_fields(&flow.trigger, dispatched),
        };
        collect_ids(&flow.steps, &mut walk.all_ids);
        let trigger = walk.graph.add_node(GraphNode {
            id: "trigger".into(),
            label: trigger_label(flow),
            shape: Shape::Trigger,
        });
        let mut top = Sequence {
            at: path!["flows", name, "steps"],
            visible: Vec::new(),
            for_each: None,
        };
        let steps = flow.steps.iter().map(Cow::Borrowed).collect();
        self.walk(
            m,
            &mut walk,
            steps,
            &mut top,
            vec![(trigger, EdgeKind::Next)],
        );
        walk
    }

    /// Checks a sequence of steps and wires it into the graph. `preds` are the dangling edges
    /// that lead into the sequence; returns the dangling edges that leave it.
    fn walk(
        &mut self,
        m: &Integration,
        walk: &mut FlowWalk<'a>,
        steps: Vec<Cow<'a, Step>>,
        seq: &mut Sequence,
        mut preds: Ends,
    ) -> Ends {
        for (i, step) in steps.into_iter().enumerate() {
            let mut at = seq.at.clone();
            at.push(Seg::Index(i));
            self.check_step(m, walk, &step, &at, seq);
            let shape = match step.uses.as_str() {
                BRANCH => Shape::Branch,
                FOR_EACH => Shape::Loop,
                _ => Shape::Step,
            };
            let node = walk.graph.add_node(GraphNode {
                id: step.id.clone(),
                label: step.uses.clone(),
                shape,
            });
            for (p, kind) in preds.drain(..) {
                walk.graph.add_edge(p, node, kind);
            }
            match step.uses.as_str() {
                BRANCH => preds.extend(self.walk_branch(m, walk, &step, node, &at, seq)),
                FOR_EACH => {
                    // The body's last step ends the item's path: nothing joins the fan-out.
                    let mut body = seq.nested(&at, path!["steps"], Some(step.id.clone()));
                    let edges = vec![(node, EdgeKind::Body)];
                    self.walk(m, walk, loop_body(&step), &mut body, edges);
                    preds.push((node, EdgeKind::Next));
                }
                _ => preds.push((node, EdgeKind::Next)),
            }
            seq.visible.push(step.id.clone());
            walk.steps.push(CheckedStep {
                step,
                node,
                for_each: seq.for_each.clone(),
            });
        }
        preds
    }

    /// Walks each case and the default of a branch step; returns the edges leaving them all.
    fn walk_branch(
        &mut self,
        m: &Integration,
        walk: &mut FlowWalk<'a>,
        step: &Step,
        node: NodeIndex,
        at: &[Seg],
        seq: &Sequence,
    ) -> Ends {
        let mut ends = Vec::new();
        let Ok(with) = BranchWith::deserialize(&step.with) else {
            return ends;
        };
        let mut whens = Vec::new();
        for (k, case) in with.cases.into_iter().enumerate() {
            whens.push(case.when);
            let segs = path!["with", "cases", k, "steps"];
            let mut case_seq = seq.nested(at, segs, seq.for_each.clone());
            let steps = case.steps.into_iter().map(Cow::Owned).collect();
            ends.extend(self.walk(
                m,
                walk,
                steps,
                &mut case_seq,
                vec![(node, EdgeKind::Case(k))],
            ));
        }
        let mut default_seq = seq.nested(at, path!["with", "default"], seq.for_each.clone());
        let steps = with.default.into_iter().map(Cow::Owned).collect();
        let edges = vec![(node, EdgeKind::Default)];
        ends.extend(self.walk(m, walk, steps, &mut default_seq, edges));
        walk.cases
            .insert((walk.flow_name.to_string(), step.id.clone()), whens);
        ends
    }

    fn check_step(
        &mut self,
        m: &Integration,
        walk: &mut FlowWalk<'_>,
        step: &Step,
        at: &[Seg],
        seq: &Sequence,
    ) {
        self.check_step_id(walk, step, at);
        self.check_step_durations(step, at);
        self.check_uses(m, &step.uses, step.connection.as_deref(), at, false);
        self.check_nested_steps(step, at);
        let mut with_path = at.to_vec();
        with_path.push(Seg::Key("with".into()));
        self.check_step_input(step, &with_path);
        self.check_step_templates(m, walk, step, &with_path, seq);
        if step.uses == builtins::DISPATCH
            && let Some(target) = step.with.get("flow").and_then(Value::as_str)
        {
            let mut p = with_path.clone();
            p.push(Seg::Key("flow".into()));
            self.check_dispatch_target(m, walk, target, p);
        }
        if step.uses == RESPOND {
            walk.respond_steps += 1;
        }
    }

    /// The step's time limit and retry waits are neither zero nor too long.
    fn check_step_durations(&mut self, step: &Step, at: &[Seg]) {
        let under = |segs: Path| {
            let mut p = at.to_vec();
            p.extend(segs);
            p
        };
        self.check_duration(&under(path!["timeout"]), step.timeout.as_ref());
        if let Some(retry) = &step.retry {
            self.check_duration(&under(path!["retry", "initial"]), retry.initial.as_ref());
            self.check_duration(&under(path!["retry", "max"]), retry.max.as_ref());
        }
    }

    /// Step ids are unique in their flow.
    fn check_step_id(&mut self, walk: &mut FlowWalk<'_>, step: &Step, at: &[Seg]) {
        let mut id_path = at.to_vec();
        id_path.push(Seg::Key("id".into()));
        if let Some(first) = walk.first_seen.get(&step.id) {
            let first_span = self.site.span(first);
            let span = self.site.span(&id_path);
            self.out.push(
                Diagnostic::error(
                    Code::DuplicateStepId,
                    format!("duplicate step id `{}`", step.id),
                )
                .at(self.loaded.file, span, "used again here")
                .at(self.loaded.file, first_span, "first used here")
                .help("step ids are unique in their flow, branch cases and loop bodies included"),
            );
        } else {
            walk.first_seen.insert(step.id.clone(), id_path);
        }
    }

    /// Only `for_each` steps have `steps`, and they must.
    fn check_nested_steps(&mut self, step: &Step, at: &[Seg]) {
        let mut steps_path = at.to_vec();
        steps_path.push(Seg::Key("steps".into()));
        match (step.uses.as_str(), &step.steps) {
            (FOR_EACH, None) => {
                self.error(
                    Code::MissingField,
                    "a `for_each` step needs `steps`",
                    at,
                    "no loop body",
                )
                .help = Some("add `steps:` with the steps to run for each item".into());
            }
            (FOR_EACH, Some(_)) => {}
            (_, Some(_)) => {
                let help = if step.uses == BRANCH {
                    "branch steps list their steps under `with: { cases: [{ when, steps }], default }`"
                } else {
                    "move these steps after this one in the flow"
                };
                let span = self.site.key_span(&steps_path);
                self.out.push(
                    Diagnostic::error(Code::UnknownKey, "only `for_each` steps have `steps`")
                        .at(self.loaded.file, span, "not a loop")
                        .help(help),
                );
            }
            _ => {}
        }
    }

    /// Literal inputs against the action's schema; templated values are not checked (here or at
    /// run time).
    fn check_step_input(&mut self, step: &Step, with_path: &[Seg]) {
        let skip = |v: &Value| v.as_str().is_some_and(is_template);
        let input_schema = match builtins::get(&step.uses) {
            Some(b) => Some((&b.input, &b.validator)),
            None => step.uses.split_once('.').and_then(|(component, action)| {
                self.ctx
                    .components
                    .get(component)
                    .and_then(|c| c.inputs.get(action))
                    .map(|(s, v)| (s, v))
            }),
        };
        if let Some((schema, validator)) = input_schema {
            let diags = validate_with(
                validator,
                schema,
                self.loaded.file,
                &self.loaded.root,
                &step.with,
                with_path,
                &skip,
            );
            self.out.extend(diags.into_iter().map(as_step_input));
        }
    }

    /// Templates against the scope of this step: the steps that ran before it on every path.
    fn check_step_templates(
        &mut self,
        m: &Integration,
        walk: &FlowWalk<'_>,
        step: &Step,
        with_path: &[Seg],
        seq: &Sequence,
    ) {
        let mut vars = vec!["trigger", "steps", "config", "instance", "connections"];
        if seq.for_each.is_some() {
            vars.extend(["item", "index"]);
        }
        let scope = Scope {
            vars: &vars,
            config: Some(&m.config),
            connections: Some(&m.connections),
            steps: Some(StepScope {
                visible: &seq.visible,
                all: &walk.all_ids,
            }),
            flows: Some(&m.flows),
            trigger: Some(&walk.trigger_fields),
        };
        let mut diags = Vec::new();
        if step.uses == BRANCH {
            if let Some(Value::Array(cases)) = step.with.get("cases") {
                for (k, case) in cases.iter().enumerate() {
                    if let Some(when) = case.get("when").and_then(Value::as_str) {
                        let mut p = with_path.to_vec();
                        p.extend(path!["cases", k, "when"]);
                        check_template(&self.site, &p, when, &scope, &mut diags);
                    }
                }
            }
        } else {
            check_value(
                &self.site,
                &mut with_path.to_vec(),
                &step.with,
                &scope,
                &mut diags,
            );
        }
        self.out.extend(diags);
    }
}

/// How the trigger node of a flow's graph is labelled.
fn trigger_label(flow: &Flow) -> String {
    match (
        &flow.trigger.webhook,
        &flow.trigger.schedule,
        &flow.trigger.poll,
    ) {
        (Some(w), _, _) => format!("webhook {}", w.path),
        (_, Some(s), _) => format!("schedule {}", s.cron),
        (_, _, Some(p)) => format!("poll {} every {}", p.uses, p.every.0),
        _ => "deploy".to_string(),
    }
}

/// The body of a `for_each` step, borrowed as far as the step is.
fn loop_body<'a>(step: &Cow<'a, Step>) -> Vec<Cow<'a, Step>> {
    match step {
        Cow::Borrowed(step) => {
            let step: &'a Step = step;
            step.steps.iter().flatten().map(Cow::Borrowed).collect()
        }
        Cow::Owned(step) => step
            .steps
            .iter()
            .flatten()
            .cloned()
            .map(Cow::Owned)
            .collect(),
    }
}

/// Schema errors in a step's input are all reported as `invalid-step-input`.
fn as_step_input(mut d: Diagnostic) -> Diagnostic {
    if matches!(
        d.code,
        Code::WrongType | Code::InvalidValue | Code::MissingField | Code::UnknownKey
    ) {
        d.code = Code::InvalidStepInput;
    }
    d
}

/// Every step id of a sequence, branch cases and loop bodies included.
fn collect_ids(steps: &[Step], out: &mut BTreeSet<String>) {
    for s in steps {
        out.insert(s.id.clone());
        if let Some(body) = &s.steps {
            collect_ids(body, out);
        }
        if s.uses == BRANCH
            && let Ok(with) = BranchWith::deserialize(&s.with)
        {
            for case in &with.cases {
                collect_ids(&case.steps, out);
            }
            collect_ids(&with.default, out);
        }
    }
}
