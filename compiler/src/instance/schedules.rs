//! Schedules that are templates over config, resolved with one instance's values (given or
//! defaults) and parsed with croner; a value that is not a cron expression is reported on the
//! instance file, where the customer's value is.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::Target;
use crate::cron;
use crate::diagnostic::{Code, Diagnostic};
use crate::load::Loaded;
use crate::model::{ConfigType, Instance};
use crate::path;
use crate::template;

/// The cron expression of each templated schedule, by flow; a diagnostic for each that does
/// not resolve to a valid one.
pub(super) fn resolve_schedules(
    loaded: &Loaded<Instance>,
    target: &Target<'_>,
    out: &mut Vec<Diagnostic>,
) -> BTreeMap<String, String> {
    let mut crons = BTreeMap::new();
    if target.schedules.is_empty() {
        return crons;
    }
    let config = config_values(loaded, target);
    for &(flow, text) in &target.schedules {
        let problem = match cron::resolve(text, &config) {
            Err(e) => format!("it cannot be rendered: {e}"),
            Ok(expr) => match cron::parse_error(&expr) {
                None => {
                    crons.insert(flow.to_string(), expr);
                    continue;
                }
                Some(reason) => format!("`{expr}` is not a cron expression: {reason}"),
            },
        };
        out.push(schedule_error(loaded, flow, text, problem));
    }
    crons
}

/// The instance's non-secret config values, defaults filled in (schedules read no secret).
fn config_values(loaded: &Loaded<Instance>, target: &Target<'_>) -> Map<String, Value> {
    target
        .config
        .iter()
        .filter(|(_, var)| var.kind != ConfigType::Secret)
        .filter_map(|(key, var)| {
            let value = loaded.model.config.get(key).or(var.default.as_ref())?;
            Some((key.clone(), value.clone()))
        })
        .collect()
}

/// Points at the instance's value the schedule reads, or at `integration:` when the schedule
/// reads only defaults.
fn schedule_error(
    loaded: &Loaded<Instance>,
    flow: &str,
    text: &str,
    problem: String,
) -> Diagnostic {
    let root = &loaded.root;
    let given = template::references(text)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| r.name(1).map(str::to_string))
        .find(|var| loaded.model.config.contains_key(var));
    let (span, label) = match &given {
        Some(var) => (
            root.at(&path!["config", var]).span.clone(),
            format!("read by the schedule of flow `{flow}`"),
        ),
        None => (
            root.at(&path!["integration"]).span.clone(),
            format!("the schedule of flow `{flow}` reads the defaults"),
        ),
    };
    Diagnostic::error(
        Code::InvalidSchedule,
        format!("the schedule of flow `{flow}` is not valid for this instance: {problem}"),
    )
    .at(loaded.file, span, label)
    .help(format!(
        "`{text}` must give {}",
        "a cron expression: 5 fields `minute hour day month weekday`, e.g. `0 2 * * *`"
    ))
}
