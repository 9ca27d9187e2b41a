//! Built-in steps: their names and the JSON Schemas of their inputs (`with`).

use std::sync::LazyLock;

use jsonschema::Validator;
use serde_json::{Value, json};

use crate::schema::compile_schema;

/// A built-in step kind.
pub struct Builtin {
    pub name: &'static str,
    pub description: &'static str,
    /// Schema of `with`.
    pub input: Value,
    pub validator: Validator,
}

/// Step kinds that hold other steps (branch cases, loop bodies).
pub const BRANCH: &str = "branch";
pub const FOR_EACH: &str = "for_each";
pub const DISPATCH: &str = "dispatch";
pub const RESPOND: &str = "respond";

fn duration() -> Value {
    json!({ "type": "string", "pattern": "^([0-9]+ ?(ms|s|m|h|d) ?)+$" })
}

fn string_map() -> Value {
    json!({ "type": "object", "additionalProperties": { "type": "string" } })
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": properties,
    })
}

fn definitions() -> Vec<(&'static str, &'static str, Value)> {
    let http_common = |with_method: bool, with_body: bool| {
        let mut props = json!({
            "url": { "type": "string", "description": "Absolute http(s) URL" },
            "headers": string_map(),
            "query": { "type": "object" },
            "timeout": duration(),
            "idempotency_header": { "type": "string", "description": "Header that carries the message's idempotency key" },
        });
        if with_method {
            props["method"] = json!({ "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] });
        }
        if with_body {
            props["body"] = json!({});
        }
        props
    };
    vec![
        (
            "transform",
            "Computes a value from templates",
            object(&["value"], json!({ "value": {} })),
        ),
        (
            BRANCH,
            "Runs the steps of the first case whose `when` is true",
            json!({ "type": "object" }),
        ),
        (
            FOR_EACH,
            "Fans out: runs its `steps` once per item",
            object(
                &["items"],
                json!({ "items": { "type": ["array", "string"] } }),
            ),
        ),
        (
            "http.request",
            "Calls an HTTP API",
            object(&["method", "url"], http_common(true, true)),
        ),
        (
            "http.get",
            "GET request",
            object(&["url"], http_common(false, false)),
        ),
        (
            "http.post",
            "POST request",
            object(&["url"], http_common(false, true)),
        ),
        (
            RESPOND,
            "Answers a `respond: sync` webhook",
            object(
                &[],
                json!({
                    "status": { "type": "integer", "minimum": 100, "maximum": 599 },
                    "headers": string_map(),
                    "body": {},
                }),
            ),
        ),
        (
            "log",
            "Writes a log line",
            object(
                &["message"],
                json!({
                    "message": { "type": "string" },
                    "level": { "enum": ["debug", "info", "warn", "error"] },
                }),
            ),
        ),
        (
            "delay",
            "Waits before the next step",
            object(&["duration"], json!({ "duration": duration() })),
        ),
        (
            "file.list",
            "Lists files in a folder",
            object(
                &["folder"],
                json!({
                    "folder": { "type": "string" },
                    "pattern": { "type": "string", "description": "Glob such as `*.csv`" },
                }),
            ),
        ),
        (
            "file.read",
            "Reads a file",
            object(
                &["path"],
                json!({
                    "path": { "type": "string" },
                    "format": { "enum": ["text", "json", "base64"] },
                }),
            ),
        ),
        (
            "file.write",
            "Writes a file",
            object(
                &["path", "content"],
                json!({
                    "path": { "type": "string" },
                    "content": {},
                    "mode": { "enum": ["overwrite", "append", "create"] },
                }),
            ),
        ),
        (
            "file.move",
            "Moves a file",
            object(
                &["from", "to"],
                json!({
                    "from": { "type": "string" },
                    "to": { "type": "string" },
                }),
            ),
        ),
        (
            "csv.parse",
            "Parses CSV text into rows",
            object(
                &["text"],
                json!({
                    "text": { "type": "string" },
                    "delimiter": { "type": "string", "minLength": 1, "maxLength": 1 },
                    "header": { "type": "boolean" },
                }),
            ),
        ),
        (
            "csv.write",
            "Writes rows as CSV text",
            object(
                &["rows"],
                json!({
                    "rows": { "type": ["array", "string"] },
                    "columns": { "type": "array", "items": { "type": "string" } },
                    "delimiter": { "type": "string", "minLength": 1, "maxLength": 1 },
                }),
            ),
        ),
        (
            DISPATCH,
            "Hands a payload to a sibling flow",
            object(
                &["flow"],
                json!({
                    "flow": { "type": "string", "pattern": "^[a-z][a-z0-9-]*$" },
                    "payload": {},
                }),
            ),
        ),
    ]
}

static BUILTINS: LazyLock<Vec<Builtin>> = LazyLock::new(|| {
    definitions()
        .into_iter()
        .map(|(name, description, input)| Builtin {
            name,
            description,
            validator: compile_schema(&input).expect("built-in schemas compile"),
            input,
        })
        .collect()
});

pub fn get(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|b| b.name)
}

/// Actions a poll trigger may call without a component.
pub fn pollable(name: &str) -> bool {
    matches!(name, "http.request" | "http.get" | "file.list")
}
