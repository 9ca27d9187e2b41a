//! Connections: templates in their `with`, a known component, an auth kind it accepts, and the
//! fields that auth kind declares (every required one set, no unknown one).

use serde_json::Value;

use super::{IntegrationChecker, ResolvedComponent};
use crate::diagnostic::{Code, Diagnostic, did_you_mean};
use crate::model::{Connection, Integration};
use crate::path;
use crate::scope::{Scope, check_value};
use crate::yaml::Seg;

impl IntegrationChecker<'_, '_> {
    pub(super) fn check_connections(&mut self, m: &Integration) {
        let scope = Scope::config_only(&m.config);
        for (name, conn) in &m.connections {
            let mut p = path!["connections", name];
            p.push(Seg::Key("with".into()));
            let with = Value::Object(conn.with.clone().into_iter().collect());
            let mut diags = Vec::new();
            check_value(&self.site, &mut p, &with, &scope, &mut diags);
            self.out.extend(diags);
            match self.ctx.components.get(&conn.component) {
                None if self.ctx.broken_components.contains(&conn.component) => {}
                None => {
                    let help = did_you_mean(
                        &conn.component,
                        self.ctx.components.keys().map(String::as_str),
                    );
                    self.error(
                        Code::UnknownComponent,
                        format!("unknown component `{}`", conn.component),
                        &path!["connections", name, "component"],
                        "not in components/",
                    )
                    .help = help;
                }
                Some(comp) => self.check_connection_auth(name, conn, comp),
            }
        }
    }

    /// The connection's auth kind is one its component accepts, with the fields it declares.
    fn check_connection_auth(&mut self, name: &str, conn: &Connection, comp: &ResolvedComponent) {
        let c = &comp.loaded.model;
        let Some(kind) = c.auth.get(&conn.auth) else {
            if conn.auth == "none" && c.auth.is_empty() {
                return;
            }
            let kinds: Vec<&str> = c.auth.keys().map(String::as_str).collect();
            self.error(
                Code::ConnectionMismatch,
                format!(
                    "component `{}` does not accept auth `{}`",
                    conn.component, conn.auth
                ),
                &path!["connections", name, "auth"],
                "unknown auth kind",
            )
            .help = did_you_mean(&conn.auth, kinds.iter().copied())
                .or_else(|| Some(format!("it accepts: {}", kinds.join(", "))));
            return;
        };
        for key in conn.with.keys() {
            if !kind.fields.contains_key(key) {
                let help = did_you_mean(key, kind.fields.keys().map(String::as_str));
                let span = self.site.key_span(&path!["connections", name, "with", key]);
                self.out.push(
                    Diagnostic::error(
                        Code::ConnectionMismatch,
                        format!(
                            "auth `{}` of `{}` has no field `{key}`",
                            conn.auth, conn.component
                        ),
                    )
                    .at(self.loaded.file, span, "unknown field")
                    .help_opt(help),
                );
            }
        }
        for (field, spec) in &kind.fields {
            if spec.required && !conn.with.contains_key(field) {
                self.error(
                    Code::ConnectionMismatch,
                    format!("connection `{name}` does not set `{field}`"),
                    &path!["connections", name],
                    format!("`{field}` is required by auth `{}`", conn.auth),
                );
            }
        }
    }
}
