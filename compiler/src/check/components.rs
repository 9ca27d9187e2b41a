//! Components: their place and name, the fields each auth kind needs, and their actions (what
//! runs them, their templates, their input schemas, compiled here once for every step).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Context, ResolvedComponent, site};
use crate::diagnostic::{Code, Diagnostic};
use crate::load::{Loaded, Repo};
use crate::model::Component;
use crate::path;
use crate::schema::compile_schema;
use crate::scope::{Scope, Site, check_value};
use crate::source::SourceFile;

/// Checks components and compiles their action input schemas.
pub fn components<'r>(
    files: &'r [SourceFile],
    repo: &'r Repo,
    out: &mut Vec<Diagnostic>,
) -> Context<'r> {
    let mut resolved: BTreeMap<String, ResolvedComponent<'r>> = BTreeMap::new();
    for loaded in &repo.components {
        let c = &loaded.model;
        let site = site(files, loaded);
        check_folder(loaded, &site, out);
        if let Some(first) = resolved.get(&c.name.0) {
            out.push(
                Diagnostic::error(
                    Code::DuplicateName,
                    format!("two components are named `{}`", c.name.0),
                )
                .at(loaded.file, site.span(&path!["name"]), "second definition")
                .at(
                    first.loaded.file,
                    first.loaded.root.at(&path!["name"]).span.clone(),
                    "first definition",
                ),
            );
            continue;
        }
        check_auth_fields(loaded, &site, out);
        let inputs = check_actions(loaded, &site, out);
        resolved.insert(c.name.0.clone(), ResolvedComponent { loaded, inputs });
    }
    Context {
        files,
        components: resolved,
        broken_components: repo.broken_components.iter().cloned().collect(),
    }
}

/// A component lies in the folder of its name.
fn check_folder(loaded: &Loaded<Component>, site: &Site<'_>, out: &mut Vec<Diagnostic>) {
    let name = &loaded.model.name.0;
    if *name != loaded.folder {
        out.push(
            Diagnostic::error(
                Code::MisplacedFile,
                format!(
                    "component `{name}` lies in folder `components/{}`",
                    loaded.folder
                ),
            )
            .at(
                loaded.file,
                site.span(&path!["name"]),
                "name differs from its folder",
            )
            .help(format!("rename the folder to `components/{name}`")),
        );
    }
}

/// Each auth kind declares the fields its credentials are made of.
fn check_auth_fields(loaded: &Loaded<Component>, site: &Site<'_>, out: &mut Vec<Diagnostic>) {
    for (kind, auth) in &loaded.model.auth {
        let needed: &[&str] = match kind.as_str() {
            "bearer" => &["token"],
            "basic" => &["username", "password"],
            "api_key" => &["key"],
            _ => &[],
        };
        for field in needed {
            if !auth.fields.contains_key(*field) {
                out.push(
                    Diagnostic::error(
                        Code::MissingField,
                        format!("auth kind `{kind}` needs a field `{field}`"),
                    )
                    .at(
                        loaded.file,
                        site.key_span(&path!["auth", kind]),
                        "declared here",
                    )
                    .help(format!("add `{field}: {{ type: secret }}` under `fields:`")),
                );
            }
        }
    }
}

/// Checks each action; returns the compiled input schemas, by action.
fn check_actions(
    loaded: &Loaded<Component>,
    site: &Site<'_>,
    out: &mut Vec<Diagnostic>,
) -> BTreeMap<String, (Value, jsonschema::Validator)> {
    let c = &loaded.model;
    let mut inputs = BTreeMap::new();
    for (name, action) in &c.actions {
        if action.http.is_none() && c.image.is_none() {
            out.push(
                Diagnostic::error(
                    Code::MissingField,
                    format!("action `{name}` has no `http` call and the component no `image`"),
                )
                .at(loaded.file, site.key_span(&path!["actions", name]), "nothing runs this action")
                .help("describe the REST call under `http:`, or set the component's `image:` for custom code"),
            );
        }
        if let Some(http) = &action.http {
            let scope = Scope {
                vars: &["input", "connection"],
                config: None,
                connections: None,
                steps: None,
                flows: None,
                trigger: None,
            };
            let http_value = serde_json::to_value(http).unwrap_or_default();
            check_value(
                site,
                &mut path!["actions", name, "http"],
                &http_value,
                &scope,
                out,
            );
        }
        if let Some(schema) = &action.input {
            match compile_schema(schema) {
                Ok(v) => {
                    inputs.insert(name.clone(), (schema.clone(), v));
                }
                Err(e) => out.push(
                    Diagnostic::error(Code::InvalidValue, format!("invalid input schema: {e}")).at(
                        loaded.file,
                        site.span(&path!["actions", name, "input"]),
                        "not a valid JSON Schema",
                    ),
                ),
            }
        }
    }
    inputs
}
