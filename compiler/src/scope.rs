//! Template scopes: which variables a template may read where it stands, and the diagnostics
//! for every reference that reads something that is not there.

use std::collections::BTreeSet;

use indexmap::IndexMap;
use serde_json::Value;

use crate::diagnostic::{Code, Diagnostic, did_you_mean};
use crate::model::{ConfigVar, Connection, Flow};
use crate::source::{FileId, SourceFile};
use crate::template::{self, RefSeg, Reference};
use crate::yaml::{Node, NodeKind, Seg, Span};

/// The steps a template inside a flow may read.
#[derive(Debug, Clone, Copy)]
pub struct StepScope<'a> {
    /// Steps that have run on every path to here.
    pub visible: &'a [String],
    /// Every step id of the flow (to tell "later" from "unknown").
    pub all: &'a BTreeSet<String>,
}

/// What a template may read.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub vars: &'a [&'a str],
    pub config: Option<&'a IndexMap<String, ConfigVar>>,
    pub connections: Option<&'a IndexMap<String, Connection>>,
    pub steps: Option<StepScope<'a>>,
    pub flows: Option<&'a IndexMap<String, Flow>>,
    /// The fields `trigger` has here, by the flow's trigger kind; `None` when they are not
    /// checked.
    pub trigger: Option<&'a [&'a str]>,
}

impl<'a> Scope<'a> {
    /// Templates that may read `config` only (connections, webhook auth, cron).
    pub fn config_only(config: &'a IndexMap<String, ConfigVar>) -> Scope<'a> {
        Scope {
            vars: &["config"],
            config: Some(config),
            connections: None,
            steps: None,
            flows: None,
            trigger: None,
        }
    }
}

/// Where a value lies: its file, the file's tree, and the path of the value in it.
pub struct Site<'a> {
    pub file: FileId,
    pub source: &'a SourceFile,
    pub root: &'a Node,
}

impl Site<'_> {
    pub fn span(&self, path: &[Seg]) -> Span {
        self.root.at(path).span.clone()
    }

    pub fn key_span(&self, path: &[Seg]) -> Span {
        self.root.key_span(path)
    }

    /// The exact span of `sub` (a byte range of the string value at `path`) in the file.
    pub fn locate(&self, path: &[Seg], value: &str, sub: std::ops::Range<usize>) -> Span {
        let node = self.root.at(path);
        let exact = matches!(&node.kind, NodeKind::Str(s, _) if s == value);
        if !exact {
            return node.span.clone();
        }
        let raw = self.source.text.get(node.span.clone()).unwrap_or_default();
        let quote = usize::from(raw.starts_with(['"', '\'']));
        let inner = &raw[quote..];
        if inner.starts_with(value) {
            let base = node.span.start + quote;
            return base + sub.start..base + sub.end;
        }
        // Escapes or block scalars: find the referenced text itself.
        let needle = value.get(sub.clone()).unwrap_or_default();
        match raw.find(needle) {
            Some(pos) if !needle.is_empty() => {
                node.span.start + pos..node.span.start + pos + needle.len()
            }
            _ => node.span.clone(),
        }
    }
}

/// Checks every template in `value` (found at `path`) against `scope`.
pub fn check_value(
    site: &Site<'_>,
    path: &mut Vec<Seg>,
    value: &Value,
    scope: &Scope<'_>,
    out: &mut Vec<Diagnostic>,
) {
    match value {
        Value::String(s) => check_template(site, path, s, scope, out),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                check_value(site, path, item, scope, out);
                path.pop();
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                path.push(Seg::Key(k.clone()));
                check_value(site, path, v, scope, out);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Checks one string, if it is a template.
pub fn check_template(
    site: &Site<'_>,
    path: &[Seg],
    text: &str,
    scope: &Scope<'_>,
    out: &mut Vec<Diagnostic>,
) {
    if !template::is_template(text) {
        return;
    }
    match template::references(text) {
        Err(e) => {
            let span = match e.span {
                Some(r) => site.locate(path, text, r),
                None => site.span(path),
            };
            let diag = if e.too_deep {
                Diagnostic::error(Code::TooDeep, "template expression too deep")
                    .at(site.file, span, e.message)
                    .help("split the expression: compute parts in earlier `transform` steps")
            } else {
                Diagnostic::error(Code::TemplateSyntax, "invalid template")
                    .at(site.file, span, e.message)
            };
            out.push(diag);
        }
        Ok(refs) => {
            // `steps.big-order` parses as `steps.big - order`: one diagnostic, not two.
            let mut hyphen_end = None;
            for r in refs {
                if hyphen_end.is_some_and(|end| r.span.start == end + 1) {
                    continue;
                }
                if let Some(d) = check_reference(site, path, text, &r, scope) {
                    if d.help
                        .as_deref()
                        .is_some_and(|h| h.starts_with("ids with `-`"))
                    {
                        hyphen_end = Some(r.span.end);
                    }
                    out.push(d);
                }
            }
        }
    }
}

fn check_reference(
    site: &Site<'_>,
    path: &[Seg],
    text: &str,
    r: &Reference,
    scope: &Scope<'_>,
) -> Option<Diagnostic> {
    // Located only for a diagnostic: most references are fine.
    let span = || site.locate(path, text, r.span.clone());
    let first = r.name(0)?;
    if !scope.vars.contains(&first) {
        let mut help = did_you_mean(first, scope.vars.iter().copied());
        if help.is_none() {
            if scope.steps.is_some_and(|s| s.all.contains(first)) {
                help = Some(format!("step outputs are read as `steps.{first}`"));
            } else if scope.config.is_some_and(|c| c.contains_key(first)) {
                help = Some(format!("config variables are read as `config.{first}`"));
            } else {
                help = Some(format!("in scope here: {}", ticks(scope.vars)));
            }
        }
        return Some(
            Diagnostic::error(Code::UnknownVariable, format!("unknown variable `{first}`"))
                .at(site.file, span(), "not in scope here")
                .help_opt(help),
        );
    }
    let second = match r.segs.get(1) {
        Some(RefSeg::Name(n)) => n.as_str(),
        _ => return None,
    };
    match first {
        "config" => {
            let config = scope.config?;
            (!config.contains_key(second)).then(|| {
                Diagnostic::error(
                    Code::UnknownConfigVariable,
                    format!("unknown config variable `{second}`"),
                )
                .at(site.file, span(), "not declared under `config:`")
                .help_opt(
                    did_you_mean(second, config.keys().map(String::as_str)).or_else(|| {
                        Some("declare it under `config:` of the integration".to_string())
                    }),
                )
            })
        }
        "connections" => {
            let connections = scope.connections?;
            (!connections.contains_key(second)).then(|| {
                Diagnostic::error(
                    Code::UnknownConnection,
                    format!("unknown connection `{second}`"),
                )
                .at(site.file, span(), "not declared under `connections:`")
                .help_opt(did_you_mean(second, connections.keys().map(String::as_str)))
            })
        }
        "steps" => {
            let steps = scope.steps?;
            if steps.visible.iter().any(|s| s == second) {
                return None;
            }
            let hyphen = text
                .get(r.span.end..)
                .is_some_and(|rest| rest.starts_with('-'));
            if steps.all.contains(second) {
                Some(
                    Diagnostic::error(
                        Code::UnknownStep,
                        format!("step `{second}` does not run before this step"),
                    )
                    .at(site.file, span(), "not earlier on this path")
                    .help("a template reads only steps that ran earlier on the same path (not later steps, nor steps of another branch case or of a loop body)"),
                )
            } else {
                let hyphenated = steps
                    .all
                    .iter()
                    .find(|id| hyphen && id.starts_with(&format!("{second}-")));
                let help = match hyphenated {
                    Some(id) => Some(format!(
                        "ids with `-` are read with brackets: `steps['{id}']`"
                    )),
                    None => did_you_mean(second, steps.visible.iter().map(String::as_str)),
                };
                Some(
                    Diagnostic::error(
                        Code::UnknownStep,
                        format!("no step `{second}` in this flow"),
                    )
                    .at(site.file, span(), "unknown step")
                    .help_opt(help),
                )
            }
        }
        "trigger" => {
            let fields = scope.trigger?;
            (!fields.contains(&second)).then(|| {
                Diagnostic::error(
                    Code::UnknownVariable,
                    format!("`trigger` has no field `{second}` here"),
                )
                .at(site.file, span(), "not set by this flow's trigger")
                .help_opt(
                    did_you_mean(second, fields.iter().copied())
                        .or_else(|| Some(format!("this flow's trigger has: {}", ticks(fields)))),
                )
            })
        }
        "instance" => {
            const FIELDS: &[&str] = &["customer", "integration", "version", "flows"];
            if !FIELDS.contains(&second) {
                return Some(
                    Diagnostic::error(
                        Code::UnknownVariable,
                        format!("`instance` has no field `{second}`"),
                    )
                    .at(site.file, span(), "unknown field")
                    .help_opt(
                        did_you_mean(second, FIELDS.iter().copied())
                            .or_else(|| Some(format!("fields: {}", ticks(FIELDS)))),
                    ),
                );
            }
            let (Some(flows), Some(flow)) = (scope.flows, r.name(2)) else {
                return None;
            };
            (second == "flows" && !flows.contains_key(flow)).then(|| {
                Diagnostic::error(Code::UnknownFlow, format!("unknown flow `{flow}`"))
                    .at(site.file, span(), "no such flow in this integration")
                    .help_opt(did_you_mean(flow, flows.keys().map(String::as_str)))
            })
        }
        _ => None,
    }
}

fn ticks(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
