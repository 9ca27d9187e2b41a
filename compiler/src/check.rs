//! Stage 2: resolves references and checks integrations and components, building each flow's
//! step graph and its plan (with queue names relative to the instance).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use indexmap::IndexMap;
use jsonschema::Validator;
use petgraph::graph::NodeIndex;
use serde::Deserialize;
use serde_json::Value;

use crate::builtins::{self, BRANCH, DISPATCH, FOR_EACH, RESPOND};
use crate::diagnostic::{Code, Diagnostic, did_you_mean};
use crate::graph::{GraphNode, Shape, StepGraph, topological_order};
use crate::load::{Loaded, Repo};
use crate::model::{
    self, BranchWith, Component, ConfigType, ConfigVar, Flow, Integration, Project, Respond, Step,
};
use crate::plan::{self, Builtin, EdgeKind, RetryPolicy, Uses};
use crate::schema::{compile_schema, validate_with};
use crate::scope::{Scope, Site, StepScope, check_template, check_value};
use crate::source::SourceFile;
use crate::template::is_template;
use crate::yaml::{Path, Seg};
use crate::{path, scope};
use weft_plan::Family;

/// An integration that passed every check, ready to be instantiated per customer.
#[derive(Debug, Clone)]
pub struct CompiledIntegration {
    pub name: String,
    pub config: IndexMap<String, ConfigVar>,
    pub connections: BTreeMap<String, plan::Connection>,
    pub components: BTreeMap<String, plan::Component>,
    /// Plan flows with queue names relative to the instance (`<flow>.<step>`).
    pub flows: Vec<plan::Flow>,
    pub graphs: Vec<(String, StepGraph)>,
    /// `when` of each branch case, per flow and branch step, for graph labels.
    pub cases: BTreeMap<(String, String), Vec<String>>,
}

impl CompiledIntegration {
    /// `sha256:…` of what the integration compiles to, independent of comments, formatting,
    /// key order and flow order: what `weft publish` compares to decide on a new version.
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut flows: Vec<&plan::Flow> = self.flows.iter().collect();
        flows.sort_by(|a, b| a.name.cmp(&b.name));
        let value = serde_json::json!({
            "config": self.config,
            "connections": self.connections,
            "components": self.components,
            "flows": flows,
        });
        let bytes = serde_json::to_vec(&canonical(value)).unwrap_or_default();
        let digest: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256:{digest}")
    }
}

/// A JSON value with every object's keys sorted.
fn canonical(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> =
                map.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// A component with its action input schemas compiled.
pub struct ResolvedComponent<'r> {
    pub loaded: &'r Loaded<Component>,
    pub inputs: BTreeMap<String, (Value, Validator)>,
}

pub struct Context<'r> {
    pub files: &'r [SourceFile],
    pub project: Project,
    pub components: BTreeMap<String, ResolvedComponent<'r>>,
    pub broken_components: BTreeSet<String>,
}

fn duration_ms(text: &str) -> u64 {
    humantime::parse_duration(text)
        .map(|d: Duration| d.as_millis() as u64)
        .unwrap_or(0)
}

fn site<'a, T>(files: &'a [SourceFile], loaded: &'a Loaded<T>) -> Site<'a> {
    Site {
        file: loaded.file,
        source: &files[loaded.file],
        root: &loaded.root,
    }
}

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
        if c.name.0 != loaded.folder {
            out.push(
                Diagnostic::error(
                    Code::MisplacedFile,
                    format!(
                        "component `{}` lies in folder `components/{}`",
                        c.name.0, loaded.folder
                    ),
                )
                .at(
                    loaded.file,
                    site.span(&path!["name"]),
                    "name differs from its folder",
                )
                .help(format!("rename the folder to `components/{}`", c.name.0)),
            );
        }
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
        for (kind, auth) in &c.auth {
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
                };
                let http_value = serde_json::to_value(http).unwrap_or_default();
                check_value(
                    &site,
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
                        Diagnostic::error(Code::InvalidValue, format!("invalid input schema: {e}"))
                            .at(
                                loaded.file,
                                site.span(&path!["actions", name, "input"]),
                                "not a valid JSON Schema",
                            ),
                    ),
                }
            }
        }
        resolved.insert(c.name.0.clone(), ResolvedComponent { loaded, inputs });
    }
    Context {
        files,
        project: repo
            .project
            .as_ref()
            .map(|p| p.model.clone())
            .unwrap_or_else(|| Project {
                weft: model::FormatVersion(1),
                name: None,
                images: Default::default(),
                gateway: Default::default(),
                defaults: Default::default(),
                policy: Default::default(),
            }),
        components: resolved,
        broken_components: repo.broken_components.iter().cloned().collect(),
    }
}

/// Checks a config value (an instance's, or a default) against its variable.
pub fn check_config_value(var: &ConfigVar, value: &Value) -> Result<(), (Code, String)> {
    let is_secret_ref = value
        .as_object()
        .is_some_and(|m| m.len() == 1 && m.get("secret").is_some_and(Value::is_string));
    if var.kind == ConfigType::Secret {
        if is_secret_ref {
            let name = value["secret"].as_str().unwrap_or_default();
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            return if ok {
                Ok(())
            } else {
                Err((
                    Code::InvalidConfigValue,
                    format!("`{name}` is not an environment variable name (A-Z, 0-9, _)"),
                ))
            };
        }
        return Err((
            Code::LiteralSecret,
            "a secret is given as a literal value".into(),
        ));
    }
    if is_secret_ref {
        return Err((
            Code::InvalidConfigValue,
            "only `secret` variables are read from the environment".into(),
        ));
    }
    let ok = match var.kind {
        ConfigType::String => value.is_string(),
        ConfigType::Integer => value.is_i64() || value.is_u64(),
        ConfigType::Number => value.is_number(),
        ConfigType::Boolean => value.is_boolean(),
        ConfigType::Json | ConfigType::Secret => true,
        ConfigType::Url => {
            return match value.as_str().map(url::Url::parse) {
                Some(Ok(u)) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
                Some(Ok(u)) => Err((
                    Code::InvalidConfigValue,
                    format!("expected an http(s) URL, found scheme `{}`", u.scheme()),
                )),
                Some(Err(e)) => Err((Code::InvalidConfigValue, format!("not a URL: {e}"))),
                None => Err((
                    Code::InvalidConfigValue,
                    format!("expected a URL, found {}", kind_of(value)),
                )),
            };
        }
        ConfigType::Enum => {
            let values = var.values.clone().unwrap_or_default();
            return match value.as_str() {
                Some(s) if values.iter().any(|v| v == s) => Ok(()),
                _ => Err((
                    Code::InvalidConfigValue,
                    format!(
                        "`{}` is not one of {}",
                        value
                            .as_str()
                            .map_or_else(|| value.to_string(), str::to_string),
                        values
                            .iter()
                            .map(|v| format!("`{v}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            };
        }
    };
    if ok {
        Ok(())
    } else {
        Err((
            Code::InvalidConfigValue,
            format!("expected {}, found {}", type_name(var.kind), kind_of(value)),
        ))
    }
}

fn type_name(kind: ConfigType) -> &'static str {
    match kind {
        ConfigType::String => "a string",
        ConfigType::Integer => "an integer",
        ConfigType::Number => "a number",
        ConfigType::Boolean => "a boolean",
        ConfigType::Url => "a URL",
        ConfigType::Secret => "a secret reference",
        ConfigType::Enum => "one of the values",
        ConfigType::Json => "any value",
    }
}

pub fn kind_of(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::String(s) => format!("\"{s}\""),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// Everything one flow's walk collects.
struct FlowBuild<'a> {
    flow_name: &'a str,
    all_ids: BTreeSet<String>,
    first_seen: BTreeMap<String, Path>,
    graph: StepGraph,
    steps: Vec<(NodeIndex, plan::Step)>,
    dispatches: Vec<(String, Path)>,
    respond_steps: usize,
    cases: BTreeMap<(String, String), Vec<String>>,
}

struct IntegrationChecker<'a, 'r> {
    ctx: &'a Context<'r>,
    loaded: &'a Loaded<Integration>,
    site: Site<'a>,
    out: Vec<Diagnostic>,
    connections_used: BTreeSet<String>,
    components_used: BTreeMap<String, BTreeSet<String>>,
}

/// Checks one integration; returns its compiled form when it has no errors.
pub fn integration(
    ctx: &Context<'_>,
    loaded: &Loaded<Integration>,
) -> (Option<CompiledIntegration>, Vec<Diagnostic>) {
    let mut checker = IntegrationChecker {
        ctx,
        loaded,
        site: site(ctx.files, loaded),
        out: Vec::new(),
        connections_used: BTreeSet::new(),
        components_used: BTreeMap::new(),
    };
    let compiled = checker.run();
    let ok = !checker.out.iter().any(Diagnostic::is_error);
    (compiled.filter(|_| ok), checker.out)
}

impl IntegrationChecker<'_, '_> {
    fn error(
        &mut self,
        code: Code,
        message: impl Into<String>,
        path: &[Seg],
        label: impl Into<String>,
    ) -> &mut Diagnostic {
        let d = Diagnostic::error(code, message).at(self.loaded.file, self.site.span(path), label);
        self.out.push(d);
        self.out.last_mut().expect("just pushed")
    }

    fn run(&mut self) -> Option<CompiledIntegration> {
        let loaded = self.loaded;
        let m = &loaded.model;
        if m.name.0 != self.loaded.folder {
            self.error(
                Code::MisplacedFile,
                format!(
                    "integration `{}` lies in folder `integrations/{}`",
                    m.name.0, self.loaded.folder
                ),
                &path!["name"],
                "name differs from its folder",
            )
            .help = Some(format!("rename the folder to `integrations/{}`", m.name.0));
        }
        self.check_config(m);
        let connections = self.check_connections(m);
        let mut flows = Vec::new();
        let mut graphs = Vec::new();
        let mut cases = BTreeMap::new();
        let mut dispatch_edges: Vec<(String, String, Path)> = Vec::new();
        let mut webhook_paths: BTreeMap<(String, String), String> = BTreeMap::new();
        for (name, flow) in &m.flows {
            self.check_trigger(m, name, flow, &mut webhook_paths);
            let build = self.check_flow(m, name, flow);
            if flow
                .trigger
                .webhook
                .as_ref()
                .is_some_and(|w| w.respond == Respond::Sync)
                && build.respond_steps == 0
            {
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
            for (target, at) in &build.dispatches {
                dispatch_edges.push((name.clone(), target.clone(), at.clone()));
            }
            cases.extend(build.cases.clone());
            let sync_with_respond = flow
                .trigger
                .webhook
                .as_ref()
                .is_some_and(|w| w.respond == Respond::Sync)
                && build.respond_steps > 0;
            let id_paths = build.first_seen.clone();
            let (plan_flow, graph) = self.finish_flow(name, flow, build);
            if sync_with_respond {
                self.check_every_path_responds(name, &plan_flow, &graph, &id_paths);
            }
            flows.push(plan_flow);
            graphs.push((name.clone(), graph));
        }
        self.check_dispatch_cycles(m, &dispatch_edges);
        let components = self.plan_components();
        Some(CompiledIntegration {
            name: m.name.0.clone(),
            config: m.config.clone(),
            connections,
            components,
            flows,
            graphs,
            cases,
        })
    }

    fn check_config(&mut self, m: &Integration) {
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

    fn check_connections(&mut self, m: &Integration) -> BTreeMap<String, plan::Connection> {
        let mut out = BTreeMap::new();
        let scope = Scope {
            vars: &["config"],
            config: Some(&m.config),
            connections: None,
            steps: None,
            flows: None,
        };
        for (name, conn) in &m.connections {
            let at = path!["connections", name];
            let mut p = at.clone();
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
                Some(comp) => {
                    let c = &comp.loaded.model;
                    match c.auth.get(&conn.auth) {
                        None if conn.auth == "none" && c.auth.is_empty() => {}
                        None => {
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
                        }
                        Some(kind) => {
                            for key in conn.with.keys() {
                                if !kind.fields.contains_key(key) {
                                    let help =
                                        did_you_mean(key, kind.fields.keys().map(String::as_str));
                                    let span = self.site.key_span(&path![
                                        "connections",
                                        name,
                                        "with",
                                        key
                                    ]);
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
                                        &at,
                                        format!("`{field}` is required by auth `{}`", conn.auth),
                                    );
                                }
                            }
                        }
                    }
                }
            }
            out.insert(
                name.clone(),
                plan::Connection {
                    component: conn.component.clone(),
                    auth: lower_auth_kind(&conn.auth),
                    with: conn.with.clone().into_iter().collect(),
                },
            );
        }
        out
    }

    fn check_trigger(
        &mut self,
        m: &Integration,
        name: &str,
        flow: &Flow,
        webhook_paths: &mut BTreeMap<(String, String), String>,
    ) {
        let t = &flow.trigger;
        let base = path!["flows", name, "trigger"];
        let config_scope = Scope {
            vars: &["config"],
            config: Some(&m.config),
            connections: None,
            steps: None,
            flows: None,
        };
        if let Some(w) = &t.webhook {
            let key = (format!("{:?}", w.method), w.path.clone());
            if let Some(first) = webhook_paths.get(&key) {
                let first_span = self
                    .site
                    .span(&path!["flows", first, "trigger", "webhook", "path"]);
                let span = self
                    .site
                    .span(&path!["flows", name, "trigger", "webhook", "path"]);
                self.out.push(
                    Diagnostic::error(
                        Code::DuplicateWebhookPath,
                        format!("two webhook flows listen on `{}`", w.path),
                    )
                    .at(
                        self.loaded.file,
                        span,
                        format!("flow `{name}` listens here"),
                    )
                    .at(
                        self.loaded.file,
                        first_span,
                        format!("flow `{first}` listens here too"),
                    )
                    .help("give each webhook flow its own path"),
                );
            } else {
                webhook_paths.insert(key, name.to_string());
            }
            if let Some(auth) = &w.auth {
                let auth_value = serde_json::to_value(auth).unwrap_or_default();
                let mut p = base.clone();
                p.extend(path!["webhook", "auth"]);
                let mut diags = Vec::new();
                check_value(&self.site, &mut p, &auth_value, &config_scope, &mut diags);
                self.out.extend(diags);
            }
        }
        if let Some(s) = &t.schedule {
            if let Err(e) = s.cron.parse::<croner::Cron>() {
                let reason = e
                    .to_string()
                    .trim_end_matches('.')
                    .to_lowercase()
                    .replace("component error: ", "");
                self.error(Code::InvalidSchedule, format!("invalid cron expression: {reason}"), &path!["flows", name, "trigger", "schedule", "cron"], "cannot be parsed")
                    .help = Some("five fields `minute hour day month weekday` (or six, seconds first), e.g. `0 2 * * *`".into());
            }
            if s.timezone.parse::<chrono_tz::Tz>().is_err() {
                let help =
                    did_you_mean(&s.timezone, chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()));
                self.error(
                    Code::InvalidSchedule,
                    format!("unknown timezone `{}`", s.timezone),
                    &path!["flows", name, "trigger", "schedule", "timezone"],
                    "not an IANA timezone",
                )
                .help = help
                    .or_else(|| Some("use an IANA name such as `Europe/Berlin` or `UTC`".into()));
            }
        }
        if let Some(p) = &t.poll {
            let at = path!["flows", name, "trigger", "poll"];
            self.check_uses(m, &p.uses, p.connection.as_deref(), &at, true);
            let poll_scope = Scope {
                vars: &["config", "cursor", "instance"],
                config: Some(&m.config),
                connections: Some(&m.connections),
                steps: None,
                flows: Some(&m.flows),
            };
            let with = Value::Object(p.with.clone().into_iter().collect());
            let mut diags = Vec::new();
            let mut wp = at.clone();
            wp.push(Seg::Key("with".into()));
            check_value(&self.site, &mut wp, &with, &poll_scope, &mut diags);
            if let Some(items) = &p.items {
                let scope = Scope {
                    vars: &["output", "cursor", "config"],
                    ..poll_scope
                };
                let mut ip = at.clone();
                ip.push(Seg::Key("items".into()));
                check_template(&self.site, &ip, items, &scope, &mut diags);
            }
            if let Some(cursor) = &p.cursor {
                let scope = Scope {
                    vars: &["items", "cursor", "output", "config"],
                    ..poll_scope
                };
                let mut cp = at.clone();
                cp.push(Seg::Key("cursor".into()));
                check_template(&self.site, &cp, cursor, &scope, &mut diags);
            }
            self.out.extend(diags);
        }
    }

    /// Checks a `uses` (step or poll): built-in, or `component.action` with a fitting connection.
    fn check_uses(
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
        if let Some(conn) = connection {
            if !m.connections.contains_key(conn) {
                let help = did_you_mean(conn, m.connections.keys().map(String::as_str));
                self.error(
                    Code::UnknownConnection,
                    format!("unknown connection `{conn}`"),
                    &conn_path,
                    "not declared under `connections:`",
                )
                .help = help;
            } else {
                self.connections_used.insert(conn.to_string());
            }
        }
        if let Some(builtin) = builtins::get(uses).map(|b| b.builtin) {
            if poll && !builtin.pollable() {
                self.error(
                    Code::InvalidStepInput,
                    format!("`{uses}` cannot be polled"),
                    &uses_path,
                    "not a pollable action",
                )
                .help = Some(
                    "poll a component action, `http.get`, `http.request` or `file.list`".into(),
                );
            }
            if connection.is_some() && builtin.family() != Family::Http {
                self.error(
                    Code::ConnectionMismatch,
                    format!("`{uses}` takes no connection"),
                    &conn_path,
                    "not used",
                );
            }
            return;
        }
        let Some((component, action)) = uses.split_once('.') else {
            let help = did_you_mean(uses, builtins::names()).unwrap_or_else(|| {
                "use a built-in step (`transform`, `branch`, `http.request`, ...) or `<component>.<action>`".into()
            });
            self.error(
                Code::UnknownComponent,
                format!("unknown step kind `{uses}`"),
                &uses_path,
                "neither built in nor `component.action`",
            )
            .help = Some(help);
            return;
        };
        let Some(comp) = self.ctx.components.get(component) else {
            if !self.ctx.broken_components.contains(component) {
                let candidates: Vec<String> = self
                    .ctx
                    .components
                    .keys()
                    .cloned()
                    .chain(builtins::names().map(str::to_string))
                    .collect();
                let help = did_you_mean(component, candidates.iter().map(String::as_str))
                    .or_else(|| did_you_mean(uses, builtins::names()));
                self.error(
                    Code::UnknownComponent,
                    format!("unknown component `{component}`"),
                    &uses_path,
                    "not built in, nor in components/",
                )
                .help = help;
            }
            return;
        };
        let c = &comp.loaded.model;
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
                &uses_path,
                "unknown action",
            )
            .help = help;
            return;
        }
        self.components_used
            .entry(component.to_string())
            .or_default()
            .insert(action.to_string());
        let needs_auth = c.auth.keys().any(|k| k != "none");
        match connection.and_then(|n| m.connections.get(n).map(|conn| (n, conn))) {
            Some((n, conn)) if conn.component != component => {
                self.error(
                    Code::ConnectionMismatch,
                    format!(
                        "connection `{n}` is for `{}`, not `{component}`",
                        conn.component
                    ),
                    &conn_path,
                    "wrong component",
                )
                .help = m
                    .connections
                    .iter()
                    .find(|(_, c)| c.component == component)
                    .map(|(k, _)| format!("did you mean `{k}`?"));
            }
            None if connection.is_none() && needs_auth => {
                let candidate = m
                    .connections
                    .iter()
                    .find(|(_, c)| c.component == component)
                    .map(|(k, _)| k.clone());
                self.error(
                    Code::ConnectionMismatch,
                    format!("`{uses}` needs a connection"),
                    &uses_path,
                    format!("`{component}` requires auth"),
                )
                .help = Some(match candidate {
                    Some(k) => format!("add `connection: {k}`"),
                    None => format!(
                        "declare a connection to `{component}` under `connections:` and add `connection: <name>`"
                    ),
                });
            }
            _ => {}
        }
    }

    fn check_flow<'f>(&mut self, m: &Integration, name: &'f str, flow: &Flow) -> FlowBuild<'f> {
        let mut build = FlowBuild {
            flow_name: name,
            all_ids: BTreeSet::new(),
            first_seen: BTreeMap::new(),
            graph: StepGraph::new(),
            steps: Vec::new(),
            dispatches: Vec::new(),
            respond_steps: 0,
            cases: BTreeMap::new(),
        };
        collect_ids(&flow.steps, &mut build.all_ids);
        let trigger_label = match (
            &flow.trigger.webhook,
            &flow.trigger.schedule,
            &flow.trigger.poll,
        ) {
            (Some(w), _, _) => format!("webhook {}", w.path),
            (_, Some(s), _) => format!("schedule {}", s.cron),
            (_, _, Some(p)) => format!("poll {} every {}", p.uses, p.every.0),
            _ => "deploy".to_string(),
        };
        let trigger = build.graph.add_node(GraphNode {
            id: "trigger".into(),
            label: trigger_label,
            shape: Shape::Trigger,
        });
        let base = path!["flows", name, "steps"];
        let mut visible = Vec::new();
        self.walk(
            m,
            &mut build,
            &flow.steps,
            &base,
            vec![(trigger, EdgeKind::Next)],
            &mut visible,
            None,
        );
        build
    }

    /// Checks a sequence of steps and wires it into the graph. `preds` are the dangling edges
    /// that lead into the sequence; returns the dangling edges that leave it.
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &mut self,
        m: &Integration,
        build: &mut FlowBuild<'_>,
        steps: &[Step],
        base: &[Seg],
        mut preds: Vec<(NodeIndex, EdgeKind)>,
        visible: &mut Vec<String>,
        for_each: Option<&str>,
    ) -> Vec<(NodeIndex, EdgeKind)> {
        for (i, step) in steps.iter().enumerate() {
            let mut at = base.to_vec();
            at.push(Seg::Index(i));
            self.check_step(m, build, step, &at, visible, for_each);
            let shape = match step.uses.as_str() {
                BRANCH => Shape::Branch,
                FOR_EACH => Shape::Loop,
                _ => Shape::Step,
            };
            let node = build.graph.add_node(GraphNode {
                id: step.id.clone(),
                label: step.uses.clone(),
                shape,
            });
            for (p, kind) in preds.drain(..) {
                build.graph.add_edge(p, node, kind);
            }
            build
                .steps
                .push((node, self.plan_step(step, build.flow_name, for_each)));
            match step.uses.as_str() {
                BRANCH => {
                    let with = BranchWith::deserialize(&step.with).ok();
                    if let Some(with) = with {
                        let mut whens = Vec::new();
                        for (k, case) in with.cases.iter().enumerate() {
                            whens.push(case.when.clone());
                            let mut case_path = at.clone();
                            case_path.extend(path!["with", "cases", k, "steps"]);
                            let mut case_visible = visible.clone();
                            preds.extend(self.walk(
                                m,
                                build,
                                &case.steps,
                                &case_path,
                                vec![(node, EdgeKind::Case(k))],
                                &mut case_visible,
                                for_each,
                            ));
                        }
                        let mut default_path = at.clone();
                        default_path.extend(path!["with", "default"]);
                        let mut default_visible = visible.clone();
                        preds.extend(self.walk(
                            m,
                            build,
                            &with.default,
                            &default_path,
                            vec![(node, EdgeKind::Default)],
                            &mut default_visible,
                            for_each,
                        ));
                        build
                            .cases
                            .insert((build.flow_name.to_string(), step.id.clone()), whens);
                    }
                }
                FOR_EACH => {
                    let mut body_path = at.clone();
                    body_path.push(Seg::Key("steps".into()));
                    let mut body_visible = visible.clone();
                    let body = step.steps.clone().unwrap_or_default();
                    // The body's last step ends the item's path: nothing joins the fan-out.
                    self.walk(
                        m,
                        build,
                        &body,
                        &body_path,
                        vec![(node, EdgeKind::Body)],
                        &mut body_visible,
                        Some(&step.id),
                    );
                    preds.push((node, EdgeKind::Next));
                }
                _ => preds.push((node, EdgeKind::Next)),
            }
            visible.push(step.id.clone());
        }
        preds
    }

    fn check_step(
        &mut self,
        m: &Integration,
        build: &mut FlowBuild<'_>,
        step: &Step,
        at: &[Seg],
        visible: &[String],
        for_each: Option<&str>,
    ) {
        let mut id_path = at.to_vec();
        id_path.push(Seg::Key("id".into()));
        if let Some(first) = build.first_seen.get(&step.id) {
            let first_span = self.site.span(first);
            let span = self.site.span(&id_path);
            self.out.push(
                Diagnostic::error(
                    Code::DuplicateStepId,
                    format!("duplicate step id `{}`", step.id),
                )
                .at(self.loaded.file, span, "used again here")
                .at(self.loaded.file, first_span, "first used here")
                .help("step ids are unique in their flow, branch cases and loop bodies included"),
            );
        } else {
            build.first_seen.insert(step.id.clone(), id_path.clone());
        }
        self.check_uses(m, &step.uses, step.connection.as_deref(), at, false);
        let mut steps_path = at.to_vec();
        steps_path.push(Seg::Key("steps".into()));
        match (step.uses.as_str(), &step.steps) {
            (FOR_EACH, None) => {
                self.error(
                    Code::MissingField,
                    "a `for_each` step needs `steps`",
                    at,
                    "no loop body",
                )
                .help = Some("add `steps:` with the steps to run for each item".into());
            }
            (FOR_EACH, Some(_)) => {}
            (_, Some(_)) => {
                let help = if step.uses == BRANCH {
                    "branch steps list their steps under `with: { cases: [{ when, steps }], default }`"
                } else {
                    "move these steps after this one in the flow"
                };
                let span = self.site.key_span(&steps_path);
                self.out.push(
                    Diagnostic::error(Code::UnknownKey, "only `for_each` steps have `steps`")
                        .at(self.loaded.file, span, "not a loop")
                        .help(help),
                );
            }
            _ => {}
        }
        // Inputs against the action's schema; template values are checked at run time.
        let with = &step.with;
        let mut with_path = at.to_vec();
        with_path.push(Seg::Key("with".into()));
        let skip = |v: &Value| v.as_str().is_some_and(is_template);
        let input_schema = match builtins::get(&step.uses) {
            Some(b) => Some((&b.input, &b.validator)),
            None => step.uses.split_once('.').and_then(|(component, action)| {
                self.ctx
                    .components
                    .get(component)
                    .and_then(|c| c.inputs.get(action))
                    .map(|(s, v)| (s, v))
            }),
        };
        if let Some((schema, validator)) = input_schema {
            let diags = validate_with(
                validator,
                schema,
                self.loaded.file,
                &self.loaded.root,
                with,
                &with_path,
                &skip,
            );
            self.out.extend(diags.into_iter().map(as_step_input));
        }
        // Templates against the scope of this step.
        let mut vars = vec!["trigger", "steps", "config", "instance", "connections"];
        if for_each.is_some() {
            vars.extend(["item", "index"]);
        }
        let scope = Scope {
            vars: &vars,
            config: Some(&m.config),
            connections: Some(&m.connections),
            steps: Some(StepScope {
                visible,
                all: &build.all_ids,
            }),
            flows: Some(&m.flows),
        };
        let mut diags = Vec::new();
        if step.uses == BRANCH {
            if let Some(Value::Array(cases)) = step.with.get("cases") {
                for (k, case) in cases.iter().enumerate() {
                    if let Some(when) = case.get("when").and_then(Value::as_str) {
                        let mut p = with_path.clone();
                        p.extend(path!["cases", k, "when"]);
                        scope::check_template(&self.site, &p, when, &scope, &mut diags);
                    }
                }
            }
        } else {
            check_value(&self.site, &mut with_path.clone(), with, &scope, &mut diags);
        }
        self.out.extend(diags);
        if step.uses == DISPATCH
            && let Some(target) = step.with.get("flow").and_then(Value::as_str)
        {
            let mut p = with_path.clone();
            p.push(Seg::Key("flow".into()));
            if m.flows.contains_key(target) {
                build.dispatches.push((target.to_string(), p));
            } else {
                let help = did_you_mean(target, m.flows.keys().map(String::as_str));
                self.error(
                    Code::UnknownFlow,
                    format!("unknown flow `{target}`"),
                    &p,
                    "no such flow in this integration",
                )
                .help = help;
            }
        }
        if step.uses == RESPOND {
            build.respond_steps += 1;
        }
    }

    fn plan_step(&self, step: &Step, flow: &str, for_each: Option<&str>) -> plan::Step {
        let defaults = &self.ctx.project.defaults;
        let retry = step.retry.as_ref().or(defaults.retry.as_ref());
        let base = RetryPolicy::default();
        let retry = retry.map_or(base, |r| RetryPolicy {
            attempts: r.attempts,
            backoff: match r.backoff {
                model::Backoff::Exponential => plan::Backoff::Exponential,
                model::Backoff::Fixed => plan::Backoff::Fixed,
            },
            initial_ms: r
                .initial
                .as_ref()
                .map_or(base.initial_ms, |d| duration_ms(&d.0)),
            max_ms: r.max.as_ref().map_or(base.max_ms, |d| duration_ms(&d.0)),
        });
        // An unparsable `uses` has been reported by `check_uses`; no plan is emitted then.
        let uses = Uses::parse(&step.uses).unwrap_or_else(|| Uses::Action {
            component: step.uses.clone(),
            action: String::new(),
        });
        let (with, cases) = if uses.is(Builtin::Branch) {
            // Case steps become nodes of the graph; the plan keeps the conditions.
            let cases = BranchWith::deserialize(&step.with)
                .map(|w| {
                    w.cases
                        .into_iter()
                        .map(|c| plan::BranchCase { when: c.when })
                        .collect()
                })
                .unwrap_or_default();
            (BTreeMap::new(), cases)
        } else {
            let with = step
                .with
                .as_object()
                .map(|m| m.clone().into_iter().collect())
                .unwrap_or_default();
            (with, Vec::new())
        };
        plan::Step {
            id: step.id.clone(),
            uses,
            queue: format!("{flow}.{}", step.id),
            with,
            cases,
            connection: step.connection.clone(),
            retry,
            on_error: lower_on_error(step.on_error.or(defaults.on_error).unwrap_or_default()),
            timeout_ms: step
                .timeout
                .as_ref()
                .or(defaults.timeout.as_ref())
                .map_or(30_000, |d| duration_ms(&d.0)),
            replicas: step.replicas.or(defaults.replicas).unwrap_or(1),
            for_each: for_each.map(str::to_string),
            secrets: Vec::new(),
        }
    }

    /// A sync webhook waits for a `respond` step: every path through the flow must meet one,
    /// or the caller waits for the timeout. Loop bodies are left out (they run per item).
    fn check_every_path_responds(
        &mut self,
        name: &str,
        flow: &plan::Flow,
        graph: &StepGraph,
        id_paths: &BTreeMap<String, Path>,
    ) {
        let Some(order) = topological_order(graph) else {
            return;
        };
        let step = |id: &str| flow.steps.iter().find(|s| s.id == id);
        let mut responded = vec![false; graph.node_count()];
        for n in order {
            let id = &graph[n].id;
            let is_respond = step(id).is_some_and(|s| s.uses.is(Builtin::Respond));
            let mut preds = graph
                .neighbors_directed(n, petgraph::Direction::Incoming)
                .peekable();
            let all_preds = preds.peek().is_some() && preds.all(|p| responded[p.index()]);
            responded[n.index()] = is_respond || all_preds;
        }
        for n in graph.node_indices() {
            let mut terminal = graph
                .neighbors_directed(n, petgraph::Direction::Outgoing)
                .next()
                .is_none();
            // A branch whose `default` (or an empty case) leads nowhere ends a path itself.
            if let Some(s) = step(&graph[n].id).filter(|s| s.uses.is(Builtin::Branch)) {
                let cases = s.cases.len();
                let has = |kind: EdgeKind| {
                    graph
                        .edges_directed(n, petgraph::Direction::Outgoing)
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

    fn finish_flow(
        &mut self,
        name: &str,
        flow: &Flow,
        build: FlowBuild<'_>,
    ) -> (plan::Flow, StepGraph) {
        let graph = build.graph;
        let order = topological_order(&graph);
        let order = match order {
            Some(order) => order,
            None => {
                self.error(
                    Code::DispatchCycle,
                    format!("flow `{name}` has a cycle"),
                    &path!["flows", name],
                    "cycle",
                );
                graph.node_indices().collect()
            }
        };
        let mut by_node: BTreeMap<NodeIndex, plan::Step> = build.steps.into_iter().collect();
        let steps: Vec<plan::Step> = order.iter().filter_map(|n| by_node.remove(n)).collect();
        let queue_of = |n: NodeIndex| format!("{name}.{}", graph[n].id);
        let edges = graph
            .edge_indices()
            .filter_map(|e| {
                let (a, b) = graph.edge_endpoints(e)?;
                Some(plan::Edge {
                    from: graph[a].id.clone(),
                    to: graph[b].id.clone(),
                    kind: graph[e],
                    queue: queue_of(b),
                })
            })
            .collect();
        let t = &flow.trigger;
        let trigger = if let Some(w) = &t.webhook {
            plan::Trigger::Webhook {
                method: lower_method(w.method),
                path: w.path.clone(),
                auth: w.auth.as_ref().and_then(|a| {
                    if let Some(h) = &a.hmac_sha256 {
                        Some(plan::WebhookAuth::HmacSha256 {
                            secret: h.secret.clone(),
                            header: h.header.clone(),
                        })
                    } else if let Some(s) = &a.standard_webhooks {
                        Some(plan::WebhookAuth::StandardWebhooks {
                            secret: s.secret.clone(),
                        })
                    } else {
                        a.bearer.as_ref().map(|b| plan::WebhookAuth::Bearer {
                            token: b.token.clone(),
                        })
                    }
                }),
                respond: match w.respond {
                    Respond::Async => plan::Respond::Async,
                    Respond::Sync => plan::Respond::Sync,
                },
                timeout_ms: w.timeout.as_ref().map_or(30_000, |d| duration_ms(&d.0)),
            }
        } else if let Some(s) = &t.schedule {
            plan::Trigger::Schedule {
                cron: s.cron.clone(),
                timezone: s.timezone.clone(),
            }
        } else if let Some(p) = &t.poll {
            plan::Trigger::Poll {
                every_ms: duration_ms(&p.every.0),
                uses: Uses::parse(&p.uses).unwrap_or_else(|| Uses::Action {
                    component: p.uses.clone(),
                    action: String::new(),
                }),
                connection: p.connection.clone(),
                with: p.with.clone().into_iter().collect(),
                items: p.items.clone(),
                cursor: p.cursor.clone(),
            }
        } else {
            plan::Trigger::Deploy
        };
        let entry_queue = flow.steps.first().map(|s| format!("{name}.{}", s.id));
        (
            plan::Flow {
                name: name.to_string(),
                enabled: true,
                trigger,
                trigger_secrets: Vec::new(),
                entry_queue,
                steps,
                edges,
            },
            graph,
        )
    }

    fn check_dispatch_cycles(&mut self, m: &Integration, edges: &[(String, String, Path)]) {
        let mut graph = petgraph::graph::DiGraph::<&str, usize>::new();
        let nodes: BTreeMap<&str, NodeIndex> = m
            .flows
            .keys()
            .map(|k| (k.as_str(), graph.add_node(k.as_str())))
            .collect();
        for (i, (from, to, _)) in edges.iter().enumerate() {
            graph.add_edge(nodes[from.as_str()], nodes[to.as_str()], i);
        }
        for scc in petgraph::algo::tarjan_scc(&graph) {
            let cyclic = scc.len() > 1 || graph.contains_edge(scc[0], scc[0]);
            if !cyclic {
                continue;
            }
            let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
            let mut names: Vec<&str> = scc.iter().map(|n| graph[*n]).collect();
            names.sort_by_key(|n| m.flows.get_index_of(*n));
            let mut diag = Diagnostic::error(
                Code::DispatchCycle,
                format!(
                    "flows dispatch to each other in a cycle: {}",
                    names.join(" → ")
                ),
            );
            for e in graph.edge_indices() {
                let (a, b) = graph.edge_endpoints(e).expect("edge");
                if members.contains(&a) && members.contains(&b) {
                    let (from, to, at) = &edges[graph[e]];
                    diag = diag.at(
                        self.loaded.file,
                        self.site.span(at),
                        format!("`{from}` dispatches to `{to}`"),
                    );
                }
            }
            self.out.push(
                diag.help("a dispatched payload must not come back to a flow it passed through"),
            );
        }
    }

    fn plan_components(&self) -> BTreeMap<String, plan::Component> {
        self.components_used
            .iter()
            .filter_map(|(name, actions)| {
                let comp = self.ctx.components.get(name)?;
                let c = &comp.loaded.model;
                Some((
                    name.clone(),
                    plan::Component {
                        version: c.version.clone(),
                        base_url: c.base_url.clone(),
                        image: c.image.clone(),
                        actions: actions
                            .iter()
                            .filter_map(|a| {
                                let action = c.actions.get(a)?;
                                Some((
                                    a.clone(),
                                    plan::Action {
                                        http: action.http.as_ref().map(|h| plan::HttpCall {
                                            method: lower_method(h.method),
                                            path: h.path.clone(),
                                            query: h.query.clone().into_iter().collect(),
                                            headers: h.headers.clone().into_iter().collect(),
                                            body: h.body.clone(),
                                        }),
                                        input: action.input.clone(),
                                    },
                                ))
                            })
                            .collect(),
                    },
                ))
            })
            .collect()
    }
}

fn as_step_input(mut d: Diagnostic) -> Diagnostic {
    if matches!(
        d.code,
        Code::WrongType | Code::InvalidValue | Code::MissingField | Code::UnknownKey
    ) {
        d.code = Code::InvalidStepInput;
    }
    d
}

fn collect_ids(steps: &[Step], out: &mut BTreeSet<String>) {
    for s in steps {
        out.insert(s.id.clone());
        if let Some(body) = &s.steps {
            collect_ids(body, out);
        }
        if s.uses == BRANCH
            && let Ok(with) = BranchWith::deserialize(&s.with)
        {
            for case in &with.cases {
                collect_ids(&case.steps, out);
            }
            collect_ids(&with.default, out);
        }
    }
}

fn lower_method(m: model::HttpMethod) -> plan::HttpMethod {
    match m {
        model::HttpMethod::Get => plan::HttpMethod::Get,
        model::HttpMethod::Post => plan::HttpMethod::Post,
        model::HttpMethod::Put => plan::HttpMethod::Put,
        model::HttpMethod::Patch => plan::HttpMethod::Patch,
        model::HttpMethod::Delete => plan::HttpMethod::Delete,
        model::HttpMethod::Head => plan::HttpMethod::Head,
    }
}

fn lower_on_error(o: model::OnError) -> plan::OnError {
    match o {
        model::OnError::DeadLetter => plan::OnError::DeadLetter,
        model::OnError::Continue => plan::OnError::Continue,
        model::OnError::Fail => plan::OnError::Fail,
    }
}

/// A connection's auth kind; an unknown kind has been reported against the component.
fn lower_auth_kind(kind: &str) -> plan::AuthKind {
    match kind {
        "bearer" => plan::AuthKind::Bearer,
        "basic" => plan::AuthKind::Basic,
        "api_key" => plan::AuthKind::ApiKey,
        _ => plan::AuthKind::None,
    }
}
