//! An integration's config variables: `values` only on enums, defaults that fit their type
//! (never for a secret), and a warning for a variable that nothing reads.

use std::collections::BTreeSet;

use serde_json::Value;

use super::IntegrationChecker;
use crate::config_value::check_config_value;
use crate::diagnostic::{Code, Diagnostic, closest};
use crate::model::{ConfigType, Integration};
use crate::path;
use crate::template::{self, RefSeg, is_template};

/// The config variables the templates of `value` read; `None` when one reads `config` as a
/// whole or with a computed subscript (then any variable may be read).
fn config_reads(value: &Value, out: &mut BTreeSet<String>) -> Option<()> {
    match value {
        Value::String(s) if is_template(s) => {
            for r in template::references(s).unwrap_or_default() {
                if r.name(0) != Some("config") {
                    continue;
                }
                match r.segs.get(1) {
                    Some(RefSeg::Name(n)) => {
                        out.insert(n.clone());
                    }
                    _ => return None,
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                config_reads(item, out)?;
            }
        }
        Value::Object(map) => {
            for v in map.values() {
                config_reads(v, out)?;
            }
        }
        _ => {}
    }
    Some(())
}

impl IntegrationChecker<'_, '_> {
    pub(super) fn check_config(&mut self, m: &Integration) {
        for (name, var) in &m.config {
            let at = path!["config", name];
            if var.kind == ConfigType::Enum && var.values.as_ref().is_none_or(Vec::is_empty) {
                self.error(
                    Code::MissingField,
                    "an `enum` variable needs `values`",
                    &at,
                    "no values listed",
                );
            }
            if var.kind != ConfigType::Enum && var.values.is_some() {
                self.error(
                    Code::InvalidValue,
                    "only `enum` variables take `values`",
                    &path!["config", name, "values"],
                    "not an enum",
                );
            }
            if let Some(default) = &var.default {
                if var.kind == ConfigType::Secret {
                    self.error(
                        Code::LiteralSecret,
                        "a secret cannot have a default",
                        &path!["config", name, "default"],
                        "secrets come from each instance",
                    )
                    .help = Some(
                        "remove the default; each instance gives `{ secret: ENV_NAME }`".into(),
                    );
                    let span = self.site.span(&path!["config", name, "default"]);
                    if let Some(d) = self.out.last_mut() {
                        d.redact.push(span);
                    }
                } else if let Err((code, message)) = check_config_value(var, default) {
                    self.error(
                        code,
                        message,
                        &path!["config", name, "default"],
                        "default does not fit the type",
                    );
                }
            }
        }
    }

    /// A warning for each config variable that no template reads: not a connection's, a
    /// trigger's (webhook auth, poll, schedule) nor a step's.
    pub(super) fn check_unused_config(&mut self, m: &Integration) {
        if m.config.is_empty() {
            return;
        }
        let mut used = BTreeSet::new();
        for part in [
            serde_json::to_value(&m.connections),
            serde_json::to_value(&m.flows),
        ] {
            if config_reads(&part.unwrap_or_default(), &mut used).is_none() {
                return;
            }
        }
        // `config.min_amout` is reported as unknown, with `min_amount` suggested: not twice.
        let declared = || m.config.keys().map(String::as_str);
        let misspelt: BTreeSet<&str> = used
            .iter()
            .filter(|u| !m.config.contains_key(*u))
            .filter_map(|u| closest(u, declared()))
            .collect();
        let unread = declared().filter(|k| !used.contains(*k) && !misspelt.contains(k));
        for name in unread {
            let span = self.site.key_span(&path!["config", name]);
            self.out.push(
                Diagnostic::warning(
                    Code::UnusedConfig,
                    format!("config variable `{name}` is never read"),
                )
                .at(self.loaded.file, span, "no template reads it")
                .help(format!(
                    "read it as `{{{{ config.{name} }}}}` in a step, a connection or a trigger, or remove it"
                )),
            );
        }
    }
}
