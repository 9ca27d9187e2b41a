//! `uses` of steps and polls: a built-in, or `component.action` of a known component, with a
//! connection that fits (declared, for that component, present when the component needs auth).

use super::{IntegrationChecker, UsedComponent};
use crate::builtins::{self, Builtin};
use crate::diagnostic::{Code, did_you_mean};
use crate::model::{Component, Integration};
use crate::plan::Family;
use crate::yaml::Seg;

/// The paths of a `uses` and of its `connection`.
struct UsesAt {
    uses: Vec<Seg>,
    connection: Vec<Seg>,
}

impl<'r> IntegrationChecker<'_, 'r> {
    /// Checks a `uses` (step or poll) found at `at`, and records the component actions used.
    pub(super) fn check_uses(
        &mut self,
        m: &Integration,
        uses: &str,
        connection: Option<&str>,
        at: &[Seg],
        poll: bool,
    ) {
        let mut uses_path = at.to_vec();
        uses_path.push(Seg::Key("uses".into()));
        let mut conn_path = at.to_vec();
        conn_path.push(Seg::Key("connection".into()));
        let at = UsesAt {
            uses: uses_path,
            connection: conn_path,
        };
        if let Some(conn) = connection
            && !m.connections.contains_key(conn)
        {
            let help = did_you_mean(conn, m.connections.keys().map(String::as_str));
            self.error(
                Code::UnknownConnection,
                format!("unknown connection `{conn}`"),
                &at.connection,
                "not declared under `connections:`",
            )
            .help = help;
        }
        if let Some(builtin) = builtins::get(uses) {
            self.check_builtin_uses(builtin.builtin, uses, connection, &at, poll);
        } else {
            self.check_action_uses(m, uses, connection, &at);
        }
    }

    /// A built-in: pollable when polled, and without a connection unless it makes HTTP calls.
    fn check_builtin_uses(
        &mut self,
        builtin: Builtin,
        uses: &str,
        connection: Option<&str>,
        at: &UsesAt,
        poll: bool,
    ) {
        if poll && !builtin.pollable() {
            self.error(
                Code::InvalidStepInput,
                format!("`{uses}` cannot be polled"),
                &at.uses,
                "not a pollable action",
            )
            .help =
                Some("poll a component action, `http.get`, `http.request` or `file.list`".into());
        }
        if connection.is_some() && builtin.family() != Family::Http {
            self.error(
                Code::ConnectionMismatch,
                format!("`{uses}` takes no connection"),
                &at.connection,
                "not used",
            );
        }
    }

    /// `component.action`: a known component with that action.
    fn check_action_uses(
        &mut self,
        m: &Integration,
        uses: &str,
        connection: Option<&str>,
        at: &UsesAt,
    ) {
        let Some((component, action)) = uses.split_once('.') else {
            let help = did_you_mean(uses, builtins::names()).unwrap_or_else(|| {
                "use a built-in step (`transform`, `branch`, `http.request`, ...) or `<component>.<action>`".into()
            });
            self.error(
                Code::UnknownComponent,
                format!("unknown step kind `{uses}`"),
                &at.uses,
                "neither built in nor `component.action`",
            )
            .help = Some(help);
            return;
        };
        let ctx = self.ctx;
        let Some(comp) = ctx.components.get(component) else {
            if !ctx.broken_components.contains(component) {
                self.unknown_component(uses, component, at);
            }
            return;
        };
        let c: &'r Component = &comp.loaded.model;
        if !c.actions.contains_key(action) {
            let help = did_you_mean(action, c.actions.keys().map(String::as_str)).or_else(|| {
                Some(format!(
                    "`{component}` has: {}",
                    c.actions.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            });
            self.error(
                Code::UnknownAction,
                format!("component `{component}` has no action `{action}`"),
                &at.uses,
                "unknown action",
            )
            .help = help;
            return;
        }
        self.components_used
            .entry(component.to_string())
            .or_insert_with(|| UsedComponent {
                model: c,
                actions: Default::default(),
            })
            .actions
            .insert(action.to_string());
        self.check_action_connection(m, uses, component, c, connection, at);
    }

    /// A `component.action` whose component is neither built in nor in `components/`.
    fn unknown_component(&mut self, uses: &str, component: &str, at: &UsesAt) {
        let components = &self.ctx.components;
        // The whole name first (`csv.writer` → `csv.write`), then the component's.
        let actions: Vec<String> = components
            .iter()
            .flat_map(|(name, c)| {
                let actions = c.loaded.model.actions.keys();
                actions.map(move |a| format!("{name}.{a}"))
            })
            .collect();
        let mut whole: Vec<&str> = builtins::names().collect();
        whole.extend(actions.iter().map(String::as_str));
        let help = did_you_mean(uses, whole)
            .or_else(|| did_you_mean(component, components.keys().map(String::as_str)));
        // `csv.writer` is a built-in family's, not a component's.
        let prefix = format!("{component}.");
        let message = if builtins::names().any(|n| n.starts_with(&prefix)) {
            format!("unknown step kind `{uses}`")
        } else {
            format!("unknown component `{component}`")
        };
        self.error(
            Code::UnknownComponent,
            message,
            &at.uses,
            "not built in, nor in components/",
        )
        .help = help;
    }

    /// The connection of a component action is for that component, and present when it needs
    /// auth.
    fn check_action_connection(
        &mut self,
        m: &Integration,
        uses: &str,
        component: &str,
        c: &Component,
        connection: Option<&str>,
        at: &UsesAt,
    ) {
        let needs_auth = c.auth.keys().any(|k| k != "none");
        let for_component = || {
            m.connections
                .iter()
                .find(|(_, conn)| conn.component == component)
                .map(|(k, _)| k.clone())
        };
        match connection.and_then(|n| m.connections.get(n).map(|conn| (n, conn))) {
            Some((n, conn)) if conn.component != component => {
                self.error(
                    Code::ConnectionMismatch,
                    format!(
                        "connection `{n}` is for `{}`, not `{component}`",
                        conn.component
                    ),
                    &at.connection,
                    "wrong component",
                )
                .help = for_component().map(|k| format!("did you mean `{k}`?"));
            }
            None if connection.is_none() && needs_auth => {
                self.error(
                    Code::ConnectionMismatch,
                    format!("`{uses}` needs a connection"),
                    &at.uses,
                    format!("`{component}` requires auth"),
                )
                .help = Some(match for_component() {
                    Some(k) => format!("add `connection: {k}`"),
                    None => format!(
                        "declare a connection to `{component}` under `connections:` and add `connection: <name>`"
                    ),
                });
            }
            _ => {}
        }
    }
}
