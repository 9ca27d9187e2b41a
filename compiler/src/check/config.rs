//! An integration's config variables: `values` only on enums, and defaults that fit their type
//! (never for a secret).

use super::IntegrationChecker;
use crate::config_value::check_config_value;
use crate::diagnostic::Code;
use crate::model::{ConfigType, Integration};
use crate::path;

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
}
