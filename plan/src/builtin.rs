//! The built-in steps: one registry read by the compiler (names, input schemas, docs) and the
//! runtime (dispatch), so the two cannot drift apart.

use std::fmt;

use serde_json::{Value, json};

/// The family a built-in belongs to: the runtime keeps one module per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Pure steps and steps that shape the flow: transform, branch, loop, respond, log, delay,
    /// dispatch.
    Control,
    /// HTTP calls.
    Http,
    /// Files in mounted folders.
    File,
    /// CSV text.
    Csv,
}

macro_rules! builtins {
    ($( $variant:ident = $name:literal, $family:ident, $description:literal; )*) => {
        /// A built-in step kind (`uses: transform`, `uses: http.post`, ...).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Builtin {
            $(
                #[doc = $description]
                $variant,
            )*
        }

        impl Builtin {
            /// Every built-in, in the order the docs list them.
            pub const ALL: &'static [Builtin] = &[$(Builtin::$variant),*];

            /// The name users write in `uses:`.
            pub const fn name(self) -> &'static str {
                match self { $(Builtin::$variant => $name),* }
            }

            /// One line for docs and `--help`.
            pub const fn description(self) -> &'static str {
                match self { $(Builtin::$variant => $description),* }
            }

            pub const fn family(self) -> Family {
                match self { $(Builtin::$variant => Family::$family),* }
            }

            /// The built-in called `name`, if any.
            pub fn from_name(name: &str) -> Option<Builtin> {
                match name { $($name => Some(Builtin::$variant),)* _ => None }
            }
        }
    };
}

builtins! {
    Transform = "transform", Control, "Computes a value from templates";
    Branch = "branch", Control, "Runs the steps of the first case whose `when` is true";
    ForEach = "for_each", Control, "Fans out: runs its `steps` once per item";
    HttpRequest = "http.request", Http, "Calls an HTTP API";
    HttpGet = "http.get", Http, "GET request";
    HttpPost = "http.post", Http, "POST request";
    Respond = "respond", Control, "Answers a `respond: sync` webhook";
    Log = "log", Control, "Writes a log line";
    Delay = "delay", Control, "Waits before the next step";
    FileList = "file.list", File, "Lists files in a folder";
    FileRead = "file.read", File, "Reads a file";
    FileWrite = "file.write", File, "Writes a file";
    FileMove = "file.move", File, "Moves a file";
    CsvParse = "csv.parse", Csv, "Parses CSV text into rows";
    CsvWrite = "csv.write", Csv, "Writes rows as CSV text";
    Dispatch = "dispatch", Control, "Hands a payload to a sibling flow";
}

impl fmt::Display for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The grammar of durations in step inputs (`timeout: 30s`, `duration: 1h 30m`).
pub const DURATION_PATTERN: &str = r"^([0-9]+ ?(ms|s|m|h|d) ?)+$";

fn duration() -> Value {
    json!({ "type": "string", "pattern": DURATION_PATTERN })
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

fn http_properties(with_method: bool, with_body: bool) -> Value {
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
}

impl Builtin {
    /// Actions a poll trigger may call without a component.
    pub const fn pollable(self) -> bool {
        matches!(
            self,
            Builtin::HttpRequest | Builtin::HttpGet | Builtin::FileList
        )
    }

    /// The JSON Schema of the step's `with`.
    pub fn input_schema(self) -> Value {
        match self {
            Builtin::Transform => object(&["value"], json!({ "value": {} })),
            // Checked by the source schema (cases with nested steps), not here.
            Builtin::Branch => json!({ "type": "object" }),
            Builtin::ForEach => object(
                &["items"],
                json!({ "items": { "type": ["array", "string"] } }),
            ),
            Builtin::HttpRequest => object(&["method", "url"], http_properties(true, true)),
            Builtin::HttpGet => object(&["url"], http_properties(false, false)),
            Builtin::HttpPost => object(&["url"], http_properties(false, true)),
            Builtin::Respond => object(
                &[],
                json!({
                    "status": { "type": "integer", "minimum": 100, "maximum": 599 },
                    "headers": string_map(),
                    "body": {},
                }),
            ),
            Builtin::Log => object(
                &["message"],
                json!({
                    "message": { "type": "string" },
                    "level": { "enum": ["debug", "info", "warn", "error"] },
                }),
            ),
            Builtin::Delay => object(&["duration"], json!({ "duration": duration() })),
            Builtin::FileList => object(
                &["folder"],
                json!({
                    "folder": { "type": "string" },
                    "pattern": { "type": "string", "description": "Glob such as `*.csv`" },
                }),
            ),
            Builtin::FileRead => object(
                &["path"],
                json!({
                    "path": { "type": "string" },
                    "format": { "enum": ["text", "json", "base64"] },
                }),
            ),
            Builtin::FileWrite => object(
                &["path", "content"],
                json!({
                    "path": { "type": "string" },
                    "content": {},
                    "mode": { "enum": ["overwrite", "append", "create"] },
                }),
            ),
            Builtin::FileMove => object(
                &["from", "to"],
                json!({
                    "from": { "type": "string" },
                    "to": { "type": "string" },
                }),
            ),
            Builtin::CsvParse => object(
                &["text"],
                json!({
                    "text": { "type": "string" },
                    "delimiter": { "type": "string", "minLength": 1, "maxLength": 1 },
                    "header": { "type": "boolean" },
                }),
            ),
            Builtin::CsvWrite => object(
                &["rows"],
                json!({
                    "rows": { "type": ["array", "string"] },
                    "columns": { "type": "array", "items": { "type": "string" } },
                    "delimiter": { "type": "string", "minLength": 1, "maxLength": 1 },
                }),
            ),
            Builtin::Dispatch => object(
                &["flow"],
                json!({
                    "flow": { "type": "string", "pattern": "^[a-z][a-z0-9-]*$" },
                    "payload": {},
                }),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for b in Builtin::ALL {
            assert_eq!(Builtin::from_name(b.name()), Some(*b));
        }
        assert_eq!(Builtin::from_name("crm.create"), None);
    }
}
