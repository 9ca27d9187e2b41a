//! The step graph of a flow (petgraph): nodes are the trigger and the steps, edges carry what
//! links them. Ordered topologically with ties broken by declaration order, and rendered as
//! Mermaid or Graphviz for pull requests.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

pub use crate::plan::EdgeKind;

/// A node of the step graph.
#[derive(Debug, Clone)]
pub struct GraphNode {
    /// `trigger` or the step id.
    pub id: String,
    /// What the node does: the trigger kind or the step's `uses`.
    pub label: String,
    pub shape: Shape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Trigger,
    Step,
    Branch,
    Loop,
}

pub type StepGraph = DiGraph<GraphNode, EdgeKind>;

/// Kahn's algorithm with a min-heap on node index (= declaration order). `None` on a cycle.
pub fn topological_order(graph: &StepGraph) -> Option<Vec<NodeIndex>> {
    let mut indegree: Vec<usize> = graph
        .node_indices()
        .map(|n| graph.neighbors_directed(n, Direction::Incoming).count())
        .collect();
    let mut ready: BinaryHeap<Reverse<NodeIndex>> = graph
        .node_indices()
        .filter(|n| indegree[n.index()] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(graph.node_count());
    while let Some(Reverse(n)) = ready.pop() {
        order.push(n);
        for next in graph.neighbors_directed(n, Direction::Outgoing) {
            indegree[next.index()] -= 1;
            if indegree[next.index()] == 0 {
                ready.push(Reverse(next));
            }
        }
    }
    (order.len() == graph.node_count()).then_some(order)
}

fn edge_label(
    kind: EdgeKind,
    cases: &dyn Fn(NodeIndex, usize) -> String,
    from: NodeIndex,
) -> String {
    match kind {
        EdgeKind::Next => String::new(),
        EdgeKind::Case(i) => cases(from, i),
        EdgeKind::Default => "default".into(),
        EdgeKind::Body => "each item".into(),
    }
}

fn mermaid_escape(s: &str) -> String {
    s.replace('"', "#quot;")
}

/// Mermaid flowchart; `cases(node, i)` names a branch case (its `when`).
pub fn to_mermaid(
    flows: &[(String, &StepGraph)],
    cases: &dyn Fn(&str, NodeIndex, usize) -> String,
) -> String {
    let mut out = String::from("flowchart TD\n");
    for (flow, graph) in flows {
        let prefix = flow.replace('-', "_");
        let _ = writeln!(out, "  subgraph {prefix}[\"{}\"]", mermaid_escape(flow));
        for n in graph.node_indices() {
            let node = &graph[n];
            let id = format!("{prefix}__{}", node.id.replace('-', "_"));
            let text = mermaid_escape(&format!("{}<br/><small>{}</small>", node.id, node.label));
            let shaped = match node.shape {
                Shape::Trigger => format!("{id}([\"{text}\"])"),
                Shape::Step => format!("{id}[\"{text}\"]"),
                Shape::Branch => format!("{id}{{\"{text}\"}}"),
                Shape::Loop => format!("{id}[[\"{text}\"]]"),
            };
            let _ = writeln!(out, "    {shaped}");
        }
        for e in graph.edge_references() {
            let from = format!("{prefix}__{}", graph[e.source()].id.replace('-', "_"));
            let to = format!("{prefix}__{}", graph[e.target()].id.replace('-', "_"));
            let label = edge_label(*e.weight(), &|n, i| cases(flow, n, i), e.source());
            if label.is_empty() {
                let _ = writeln!(out, "    {from} --> {to}");
            } else {
                let _ = writeln!(out, "    {from} -->|\"{}\"| {to}", mermaid_escape(&label));
            }
        }
        out.push_str("  end\n");
    }
    out
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Graphviz DOT.
pub fn to_dot(
    name: &str,
    flows: &[(String, &StepGraph)],
    cases: &dyn Fn(&str, NodeIndex, usize) -> String,
) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=TB;\n  node [fontname=\"Helvetica\"];\n",
        dot_escape(name)
    );
    for (i, (flow, graph)) in flows.iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph cluster_{i} {{\n    label=\"{}\";",
            dot_escape(flow)
        );
        for n in graph.node_indices() {
            let node = &graph[n];
            let shape = match node.shape {
                Shape::Trigger => "oval",
                Shape::Step => "box",
                Shape::Branch => "diamond",
                Shape::Loop => "box3d",
            };
            let _ = writeln!(
                out,
                "    \"{flow}/{}\" [label=\"{}\\n{}\", shape={shape}];",
                dot_escape(&node.id),
                dot_escape(&node.id),
                dot_escape(&node.label)
            );
        }
        for e in graph.edge_references() {
            let label = edge_label(*e.weight(), &|n, i| cases(flow, n, i), e.source());
            let _ = writeln!(
                out,
                "    \"{flow}/{}\" -> \"{flow}/{}\"{};",
                dot_escape(&graph[e.source()].id),
                dot_escape(&graph[e.target()].id),
                if label.is_empty() {
                    String::new()
                } else {
                    format!(" [label=\"{}\"]", dot_escape(&label))
                }
            );
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}
