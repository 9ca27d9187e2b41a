//! `dispatch` steps: the flow they name exists, and flows never dispatch to each other in a
//! cycle (a payload must not come back to a flow it passed through).

use std::collections::{BTreeMap, BTreeSet};

use petgraph::graph::{DiGraph, NodeIndex};
use serde::Deserialize;
use serde_json::Value;

use super::IntegrationChecker;
use super::steps::FlowWalk;
use crate::builtins::{BRANCH, DISPATCH};
use crate::diagnostic::{Code, Diagnostic, did_you_mean};
use crate::model::{BranchWith, Integration, Step};
use crate::yaml::Path;

/// A dispatch from one flow to another: source, target, and the path of the step's `flow:`.
pub(super) type DispatchEdge = (String, String, Path);

/// The flows that some `dispatch` step of the integration names (`flow:` is a literal name):
/// their `trigger` may also be a dispatched payload.
pub(super) fn dispatch_targets(m: &Integration) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for flow in m.flows.values() {
        collect_targets(&flow.steps, &mut out);
    }
    out
}

/// The targets of the `dispatch` steps of a sequence, branch cases and loop bodies included.
fn collect_targets(steps: &[Step], out: &mut BTreeSet<String>) {
    for s in steps {
        if s.uses == DISPATCH
            && let Some(target) = s.with.get("flow").and_then(Value::as_str)
        {
            out.insert(target.to_string());
        }
        if let Some(body) = &s.steps {
            collect_targets(body, out);
        }
        if s.uses == BRANCH
            && let Ok(with) = BranchWith::deserialize(&s.with)
        {
            for case in &with.cases {
                collect_targets(&case.steps, out);
            }
            collect_targets(&with.default, out);
        }
    }
}

impl IntegrationChecker<'_, '_> {
    /// The flow a `dispatch` step names (at `at`) is one of this integration's.
    pub(super) fn check_dispatch_target(
        &mut self,
        m: &Integration,
        walk: &mut FlowWalk<'_>,
        target: &str,
        at: Path,
    ) {
        if m.flows.contains_key(target) {
            walk.dispatches.push((target.to_string(), at));
        } else {
            let help = did_you_mean(target, m.flows.keys().map(String::as_str));
            self.error(
                Code::UnknownFlow,
                format!("unknown flow `{target}`"),
                &at,
                "no such flow in this integration",
            )
            .help = help;
        }
    }

    /// One diagnostic per cycle of flows that dispatch to each other.
    pub(super) fn check_dispatch_cycles(&mut self, m: &Integration, edges: &[DispatchEdge]) {
        let mut graph = DiGraph::<&str, usize>::new();
        let nodes: BTreeMap<&str, NodeIndex> = m
            .flows
            .keys()
            .map(|k| (k.as_str(), graph.add_node(k.as_str())))
            .collect();
        for (i, (from, to, _)) in edges.iter().enumerate() {
            graph.add_edge(nodes[from.as_str()], nodes[to.as_str()], i);
        }
        for scc in petgraph::algo::tarjan_scc(&graph) {
            let cyclic = scc.len() > 1 || graph.contains_edge(scc[0], scc[0]);
            if !cyclic {
                continue;
            }
            let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
            let mut names: Vec<&str> = scc.iter().map(|n| graph[*n]).collect();
            names.sort_by_key(|n| m.flows.get_index_of(*n));
            let mut diag = Diagnostic::error(
                Code::DispatchCycle,
                format!(
                    "flows dispatch to each other in a cycle: {}",
                    names.join(" → ")
                ),
            );
            for e in graph.edge_indices() {
                let (a, b) = graph.edge_endpoints(e).expect("edge");
                if members.contains(&a) && members.contains(&b) {
                    let (from, to, at) = &edges[graph[e]];
                    diag = diag.at(
                        self.loaded.file,
                        self.site.span(at),
                        format!("`{from}` dispatches to `{to}`"),
                    );
                }
            }
            self.out.push(
                diag.help("a dispatched payload must not come back to a flow it passed through"),
            );
        }
    }
}
