//! JSON Schemas: generated from the model (`schemars`), published in `schemas/`, and used to
//! validate every file before it is deserialized; each validation error is mapped back to the
//! exact span it came from.

use std::sync::LazyLock;

use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use jsonschema::{Draft, Validator};
use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::diagnostic::{Code, Diagnostic, did_you_mean};
use crate::model::{BranchWith, Component, Instance, Integration, Project, VersionsFile};
use crate::source::FileId;
use crate::yaml::{Node, NodeKind, Seg};

/// The kinds of files in a repository, each with its own schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileKind {
    Project,
    Component,
    Integration,
    Instance,
    Versions,
}

impl FileKind {
    pub const ALL: [FileKind; 5] = [
        FileKind::Project,
        FileKind::Component,
        FileKind::Integration,
        FileKind::Instance,
        FileKind::Versions,
    ];

    /// The schema's file name in `schemas/`.
    pub fn schema_file(self) -> &'static str {
        match self {
            FileKind::Project => "project.schema.json",
            FileKind::Component => "component.schema.json",
            FileKind::Integration => "integration.schema.json",
            FileKind::Instance => "instance.schema.json",
            FileKind::Versions => "versions.schema.json",
        }
    }

    /// The published schema, as committed in `schemas/` (a test keeps it equal to [`generate`]).
    pub fn published(self) -> &'static str {
        match self {
            FileKind::Project => include_str!("../../schemas/project.schema.json"),
            FileKind::Component => include_str!("../../schemas/component.schema.json"),
            FileKind::Integration => include_str!("../../schemas/integration.schema.json"),
            FileKind::Instance => include_str!("../../schemas/instance.schema.json"),
            FileKind::Versions => include_str!("../../schemas/versions.schema.json"),
        }
    }

    fn validator(self) -> &'static Validator {
        static VALIDATORS: LazyLock<Vec<Validator>> = LazyLock::new(|| {
            FileKind::ALL
                .iter()
                .map(|k| {
                    let schema: Value = serde_json::from_str(k.published())
                        .expect("published schemas are valid JSON (tested)");
                    compile_schema(&schema).expect("published schemas compile (tested)")
                })
                .collect()
        });
        &VALIDATORS[self as usize]
    }
}

/// Compiles a draft 2020-12 schema (also used for component action input schemas).
pub fn compile_schema(schema: &Value) -> Result<Validator, String> {
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .build(schema)
        .map_err(|e| e.to_string())
}

/// Generates the schema of a file kind from the model.
pub fn generate(kind: FileKind) -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let mut root = match kind {
        FileKind::Project => root_for::<Project>(&mut generator),
        FileKind::Component => root_for::<Component>(&mut generator),
        FileKind::Integration => {
            // Branch cases hold steps inside `with`: validate them as steps too.
            generator.subschema_for::<BranchWith>();
            let mut root = root_for::<Integration>(&mut generator);
            root["$defs"]["Step"]["allOf"] = json!([{
                "if": { "properties": { "uses": { "const": "branch" } }, "required": ["uses"] },
                "then": { "properties": { "with": { "$ref": "#/$defs/BranchWith" } } }
            }]);
            root
        }
        FileKind::Instance => root_for::<Instance>(&mut generator),
        FileKind::Versions => root_for::<VersionsFile>(&mut generator),
    };
    let defs = generator.take_definitions(true);
    if !defs.is_empty() {
        let entry = root
            .as_object_mut()
            .expect("root schema is an object")
            .entry("$defs")
            .or_insert_with(|| json!({}));
        for (k, v) in defs {
            entry.as_object_mut().expect("$defs").entry(k).or_insert(v);
        }
    }
    root["$id"] = json!(format!(
        "https://weft.dev/schemas/v1/{}",
        kind.schema_file()
    ));
    strip_null(&mut root);
    sort_keys(&mut root)
}

fn root_for<T: JsonSchema>(generator: &mut schemars::SchemaGenerator) -> Value {
    generator.root_schema_for::<T>().to_value()
}

/// `Option<T>` fields are optional, not nullable: drop the `null` alternatives schemars adds.
fn strip_null(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types[0].clone();
                    map.insert("type".into(), only);
                }
            }
            for key in ["anyOf", "oneOf"] {
                if let Some(Value::Array(alts)) = map.get(key) {
                    let rest: Vec<Value> = alts
                        .iter()
                        .filter(|a| a.get("type") != Some(&json!("null")))
                        .cloned()
                        .collect();
                    if rest.len() == 1 && alts.len() == 2 {
                        map.remove(key);
                        if let Value::Object(inner) = &rest[0] {
                            for (k, val) in inner {
                                map.entry(k.clone()).or_insert(val.clone());
                            }
                        }
                    }
                }
            }
            if let Some(Value::Array(values)) = map.get_mut("enum") {
                values.retain(|e| !e.is_null());
            }
            for val in map.values_mut() {
                strip_null(val);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null),
        _ => {}
    }
}

fn sort_keys(v: &mut Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map
                .iter_mut()
                .map(|(k, v)| (k.clone(), sort_keys(v)))
                .collect();
            entries.sort_by(|a, b| {
                schema_key_rank(&a.0)
                    .cmp(&schema_key_rank(&b.0))
                    .then(a.0.cmp(&b.0))
            });
            Value::Object(entries.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.iter_mut().map(sort_keys).collect()),
        other => other.clone(),
    }
}

/// `$schema`, `$id`, `title`, `description` first: the schema files read top-down.
fn schema_key_rank(key: &str) -> u8 {
    match key {
        "$schema" => 0,
        "$id" => 1,
        "title" => 2,
        "description" => 3,
        "type" => 4,
        _ => 5,
    }
}

/// Validates a file's tree against its kind's schema; every error becomes a diagnostic.
pub fn validate(kind: FileKind, file: FileId, root: &Node, value: &Value) -> Vec<Diagnostic> {
    let schema: &'static Value = published_value(kind);
    validate_with(kind.validator(), schema, file, root, value, &[], &|_| false)
}

fn published_value(kind: FileKind) -> &'static Value {
    static VALUES: LazyLock<Vec<Value>> = LazyLock::new(|| {
        FileKind::ALL
            .iter()
            .map(|k| serde_json::from_str(k.published()).expect("published schemas are JSON"))
            .collect()
    });
    &VALUES[kind as usize]
}

/// Validates `value` (found at `base` inside `root`) against a compiled schema and maps errors
/// to diagnostics. `skip` drops errors about particular instances (templates, whose type is only
/// known at run time).
pub fn validate_with(
    validator: &Validator,
    schema: &Value,
    file: FileId,
    root: &Node,
    value: &Value,
    base: &[Seg],
    skip: &dyn Fn(&Value) -> bool,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    // Valid files are the common case: `is_valid` short-circuits and allocates no errors.
    if validator.is_valid(value) {
        return out;
    }
    for error in validator.iter_errors(value) {
        if skip(error.instance()) {
            continue;
        }
        let mut path: Vec<Seg> = base.to_vec();
        for seg in error.instance_path().iter() {
            path.push(match seg {
                LocationSegment::Property(p) => Seg::Key(p.to_string()),
                LocationSegment::Index(i) => Seg::Index(i),
            });
        }
        let node = root.at(&path);
        let parent_schema = error
            .schema_path()
            .as_str()
            .rsplit_once('/')
            .map(|(parent, _)| schema_at(schema, parent))
            .unwrap_or(None);
        let diag = match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected }
            | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                let known = property_names(parent_schema, schema);
                for key in unexpected {
                    let mut key_path = path.clone();
                    key_path.push(Seg::Key(key.clone()));
                    out.push(
                        Diagnostic::error(Code::UnknownKey, format!("unknown key `{key}`"))
                            .at(file, root.key_span(&key_path), "not a known key here")
                            .help_opt(did_you_mean(key, known.iter().map(String::as_str)).or_else(
                                || {
                                    (!known.is_empty())
                                        .then(|| format!("known keys: {}", known.join(", ")))
                                },
                            )),
                    );
                }
                continue;
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default();
                // Point at the key that holds the incomplete mapping; for list items and the
                // document itself, at the mapping's first key.
                let first_key = match &node.kind {
                    NodeKind::Map(entries) => entries.first().map(|e| e.key_span.clone()),
                    _ => None,
                };
                let span = match (path.last(), first_key) {
                    (Some(Seg::Key(_)), _) => root.key_span(&path),
                    (_, Some(first)) => first,
                    _ => node.span.clone(),
                };
                Diagnostic::error(Code::MissingField, format!("missing field `{name}`")).at(
                    file,
                    span,
                    format!("`{name}` is required here"),
                )
            }
            ValidationErrorKind::Type { kind } => {
                let expected = format!("{kind:?}")
                    .trim_start_matches("Single(")
                    .trim_start_matches("Multiple(")
                    .trim_end_matches(')')
                    .to_lowercase();
                Diagnostic::error(
                    Code::WrongType,
                    format!("expected {}, found {}", a_type(&expected), describe(node)),
                )
                .at(file, node.span.clone(), format!("expected {expected}"))
            }
            ValidationErrorKind::OneOfNotValid { context }
            | ValidationErrorKind::AnyOf { context }
                if !context.is_empty() && context.iter().all(|alt| const_of(alt).is_some()) =>
            {
                // An enum whose variants carry docs: `oneOf` of `const`s.
                let choices: Vec<String> = context.iter().filter_map(|alt| const_of(alt)).collect();
                not_one_of(file, node, error.instance(), &choices)
            }
            ValidationErrorKind::Enum { options } => {
                let choices: Vec<String> = options
                    .as_array()
                    .map(|a| a.iter().map(plain).collect())
                    .unwrap_or_default();
                not_one_of(file, node, error.instance(), &choices)
            }
            ValidationErrorKind::Constant { expected_value } => Diagnostic::error(
                Code::InvalidValue,
                format!("expected `{}`", plain(expected_value)),
            )
            .at(
                file,
                node.span.clone(),
                format!("must be `{}`", plain(expected_value)),
            ),
            ValidationErrorKind::Pattern { pattern } => {
                let got = plain(error.instance());
                let (message, help) = explain_pattern(pattern);
                Diagnostic::error(Code::InvalidValue, format!("`{got}` is not {message}"))
                    .at(file, node.span.clone(), format!("not {message}"))
                    .help(help)
            }
            ValidationErrorKind::PropertyNames { error: inner } => {
                let got = plain(inner.instance());
                let key_span = {
                    let mut key_path = path.clone();
                    key_path.push(Seg::Key(got.clone()));
                    root.key_span(&key_path)
                };
                let (message, help) = match inner.kind() {
                    ValidationErrorKind::Pattern { pattern } => explain_pattern(pattern),
                    ValidationErrorKind::Enum { options } => {
                        let choices: Vec<String> = options
                            .as_array()
                            .map(|a| a.iter().map(plain).collect())
                            .unwrap_or_default();
                        (
                            format!("one of {}", backticked(&choices)),
                            did_you_mean(&got, choices.iter().map(String::as_str))
                                .unwrap_or_else(|| "choose one of those".into()),
                        )
                    }
                    _ => ("allowed here".into(), inner.to_string()),
                };
                Diagnostic::error(Code::InvalidValue, format!("key `{got}` is not {message}"))
                    .at(file, key_span, "this key")
                    .help(help)
            }
            ValidationErrorKind::MinProperties { .. }
            | ValidationErrorKind::MaxProperties { .. }
                if exclusive_choice(parent_schema, schema).is_some() =>
            {
                let names = exclusive_choice(parent_schema, schema).unwrap_or_default();
                Diagnostic::error(
                    Code::InvalidValue,
                    format!("expected exactly one of {}", backticked(&names)),
                )
                .at(file, node.span.clone(), "set exactly one")
            }
            _ => Diagnostic::error(Code::InvalidValue, lower_first(&error.to_string())).at(
                file,
                node.span.clone(),
                "invalid value",
            ),
        };
        out.push(diag);
    }
    out
}

/// "`x` is not one of `a`, `b`", with a suggestion.
fn not_one_of(file: FileId, node: &Node, got: &Value, choices: &[String]) -> Diagnostic {
    let got = plain(got);
    Diagnostic::error(
        Code::InvalidValue,
        format!("`{got}` is not one of {}", backticked(choices)),
    )
    .at(file, node.span.clone(), "not an allowed value")
    .help_opt(did_you_mean(&got, choices.iter().map(String::as_str)))
}

/// The value an alternative of a `oneOf` requires, when it is a single `const`.
fn const_of(errors: &[jsonschema::ValidationError<'_>]) -> Option<String> {
    match errors {
        [only] => match only.kind() {
            ValidationErrorKind::Constant { expected_value } => Some(plain(expected_value)),
            _ => None,
        },
        _ => None,
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn a_type(t: &str) -> String {
    match t {
        "object" => "a mapping".into(),
        "array" => "a list".into(),
        "integer" => "an integer".into(),
        other => format!("a {other}"),
    }
}

fn describe(node: &Node) -> String {
    match &node.kind {
        NodeKind::Null => "nothing (null)".into(),
        NodeKind::Bool(b) => format!("boolean `{b}`"),
        NodeKind::Int(i) => format!("integer `{i}`"),
        NodeKind::Float(f) => format!("number `{f}`"),
        NodeKind::Str(s, _) => format!("string `{}`", truncate(s)),
        NodeKind::Seq(_) => "a list".into(),
        NodeKind::Map(_) => "a mapping".into(),
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn backticked(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn explain_pattern(pattern: &str) -> (String, String) {
    match pattern {
        "^[a-z][a-z0-9-]*$" => (
            "a valid name".into(),
            "names use lower-case letters, digits and `-`, and start with a letter".into(),
        ),
        "^[a-z][a-z0-9_]*$" => (
            "a valid variable name".into(),
            "use lower-case letters, digits and `_`, starting with a letter".into(),
        ),
        "^[a-z][a-z0-9_-]*$" => (
            "a valid id".into(),
            "ids use lower-case letters, digits, `_` and `-`, and start with a letter".into(),
        ),
        "^([0-9]+ ?(ms|s|m|h|d) ?)+$" => (
            "a duration".into(),
            "write durations like `500ms`, `30s`, `5m`, `1h` or `1h 30m`".into(),
        ),
        "^[a-z0-9][a-z0-9 _-]*$" => ("a lower-case label".into(), "labels are lower-case".into()),
        p if p.starts_with("^/") => ("a path".into(), "paths start with `/`".into()),
        p if p.starts_with("^[0-9]+\\.") => (
            "a semantic version".into(),
            "write versions as `MAJOR.MINOR.PATCH`, e.g. `1.2.0`".into(),
        ),
        p => (
            format!("of the form `{p}`"),
            format!("the value must match the regular expression `{p}`"),
        ),
    }
}

/// The schema node at a canonical schema path (a JSON pointer into the root schema).
fn schema_at<'a>(schema: &'a Value, pointer: &str) -> Option<&'a Value> {
    schema.pointer(pointer)
}

fn resolve<'a>(node: &'a Value, root: &'a Value) -> &'a Value {
    match node
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
    {
        Some(target) => root.pointer(target).unwrap_or(node),
        None => node,
    }
}

/// The property names a schema object defines (for "did you mean").
fn property_names(schema: Option<&Value>, root: &Value) -> Vec<String> {
    let Some(schema) = schema else {
        return Vec::new();
    };
    let schema = resolve(schema, root);
    let mut names: Vec<String> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for sub in all {
            names.extend(property_names(Some(sub), root));
        }
    }
    names
}

/// For objects that must have exactly one property (a trigger, a webhook auth), the choices.
fn exclusive_choice(schema: Option<&Value>, root: &Value) -> Option<Vec<String>> {
    let schema = resolve(schema?, root);
    (schema.get("maxProperties") == Some(&json!(1))).then(|| property_names(Some(schema), root))
}
