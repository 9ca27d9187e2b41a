//! Sync webhooks: the caller waits for a `respond` step, so a sync flow needs one, and every
//! path through it must meet one (branch defaults and empty cases included).

use std::collections::BTreeMap;

use petgraph::Direction;
use serde::Deserialize;

use super::{CheckedFlow, CheckedStep, IntegrationChecker};
use crate::builtins::{BRANCH, RESPOND};
use crate::diagnostic::Code;
use crate::graph::{EdgeKind, topological_order};
use crate::model::BranchWith;
use crate::path;
use crate::yaml::Path;

impl IntegrationChecker<'_, '_> {
    /// A flow that answers its webhook synchronously has a `respond` step.
    pub(super) fn check_sync_flow_has_respond(&mut self, name: &str, respond_steps: usize) {
        if respond_steps == 0 {
            self.error(
                Code::InvalidStepInput,
                format!(
                    "flow `{name}` answers its webhook synchronously but has no `respond` step"
                ),
                &path!["flows", name, "trigger", "webhook", "respond"],
                "`sync` waits for a `respond` step",
            )
            .help = Some("add a step `uses: respond`, or use `respond: async`".into());
        }
    }

    /// Every path through a sync flow must meet a `respond` step, or the caller waits for the
    /// timeout. Loop bodies are left out (they run per item). `id_paths` locates each step id.
    pub(super) fn check_every_path_responds(
        &mut self,
        flow: &CheckedFlow<'_>,
        id_paths: &BTreeMap<String, Path>,
    ) {
        let name = flow.name;
        let graph = &flow.graph;
        let order = topological_order(graph)
            .expect("a flow's step graph is acyclic: every edge leads to a step added after it");
        // Looked up by id in the order the steps run, as the plan lists them.
        let step = |id: &str| flow.steps.iter().find(|s| s.step.id == id);
        let mut responded = vec![false; graph.node_count()];
        for n in order {
            let is_respond = step(&graph[n].id).is_some_and(|s| s.step.uses == RESPOND);
            let mut preds = graph.neighbors_directed(n, Direction::Incoming).peekable();
            let all_preds = preds.peek().is_some() && preds.all(|p| responded[p.index()]);
            responded[n.index()] = is_respond || all_preds;
        }
        for n in graph.node_indices() {
            let mut terminal = graph
                .neighbors_directed(n, Direction::Outgoing)
                .next()
                .is_none();
            // A branch whose `default` (or an empty case) leads nowhere ends a path itself.
            if let Some(s) = step(&graph[n].id).filter(|s| s.step.uses == BRANCH) {
                let cases = case_count(s);
                let has = |kind: EdgeKind| {
                    graph
                        .edges_directed(n, Direction::Outgoing)
                        .any(|e| *e.weight() == kind)
                };
                terminal |= !has(EdgeKind::Default) || (0..cases).any(|k| !has(EdgeKind::Case(k)));
            }
            let in_loop = step(&graph[n].id).is_some_and(|s| s.for_each.is_some());
            if terminal && !in_loop && !responded[n.index()] {
                let at = id_paths
                    .get(&graph[n].id)
                    .cloned()
                    .unwrap_or_else(|| path!["flows", name]);
                self.error(
                    Code::InvalidStepInput,
                    format!(
                        "flow `{name}` can end at `{}` without a `respond` step",
                        graph[n].id
                    ),
                    &at,
                    "the sync caller would wait for the timeout",
                )
                .help =
                    Some("add a `respond` step on this path (every branch case included)".into());
            }
        }
    }
}

/// The number of cases of a branch step (none when its `with` does not parse).
fn case_count(step: &CheckedStep<'_>) -> usize {
    BranchWith::deserialize(&step.step.with).map_or(0, |w| w.cases.len())
}
