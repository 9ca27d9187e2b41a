//! `weft test --coverage`: per flow, the steps and branch cases no test reached.

use std::collections::BTreeMap;

use serde::Serialize;
use weft_plan::{Builtin, Plan};

use crate::execute::Reached;

/// What no test reached in one flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowCoverage {
    pub integration: String,
    pub flow: String,
    /// Steps of the flow.
    pub steps: usize,
    /// Steps no test ran, in the flow's order.
    pub missed_steps: Vec<String>,
    /// Branch cases no test took: `<branch step> case <n>` (from 0, as in the branch step's
    /// output `{ case: n }`), or
    /// `<branch step> default`.
    pub missed_cases: Vec<String>,
}

/// Coverage of every flow of the integrations in `plans` (each flow once, whichever customer
/// ran it), ordered by integration and flow declaration.
pub fn coverage(plans: &[Plan], reached: &Reached, integration: Option<&str>) -> Vec<FlowCoverage> {
    let mut seen: BTreeMap<(String, String), FlowCoverage> = BTreeMap::new();
    let mut order = Vec::new();
    for plan in plans {
        if integration.is_some_and(|i| i != plan.integration) {
            continue;
        }
        for flow in &plan.flows {
            let key = (plan.integration.clone(), flow.name.clone());
            if seen.contains_key(&key) {
                continue;
            }
            let ran = |step: &str| {
                reached
                    .steps
                    .contains(&(flow.name.clone(), step.to_string()))
            };
            let taken = |step: &str, case: &str| {
                reached
                    .cases
                    .contains(&(flow.name.clone(), step.to_string(), case.to_string()))
            };
            let missed_steps = flow
                .steps
                .iter()
                .filter(|s| !ran(&s.id))
                .map(|s| s.id.clone())
                .collect();
            let mut missed_cases = Vec::new();
            for step in flow.steps.iter().filter(|s| s.uses.is(Builtin::Branch)) {
                for i in 0..step.cases.len() {
                    if !taken(&step.id, &i.to_string()) {
                        missed_cases.push(format!("{} case {i}", step.id));
                    }
                }
                if !taken(&step.id, "default") {
                    missed_cases.push(format!("{} default", step.id));
                }
            }
            order.push(key.clone());
            seen.insert(
                key,
                FlowCoverage {
                    integration: plan.integration.clone(),
                    flow: flow.name.clone(),
                    steps: flow.steps.len(),
                    missed_steps,
                    missed_cases,
                },
            );
        }
    }
    let mut out: Vec<FlowCoverage> = order.into_iter().filter_map(|k| seen.remove(&k)).collect();
    out.sort_by(|a, b| a.integration.cmp(&b.integration));
    out
}
