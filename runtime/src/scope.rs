//! What templates read, and the templates that need no template engine. Most templates in
//! integrations read one path (`{{ steps.fetch.body }}`, `{{ config.url }}`), divide one by a
//! number (`{{ trigger.body.amount_cents / 100 }}`) or join text with path reads (`Bearer
//! {{ config.token }}`): these read the JSON documents in place, without converting anything
//! into minijinja values. Any other template, and any read these cannot
//! answer exactly as minijinja would (a missing key, a float in text, a value past the output
//! bound), evaluates in the minijinja context, built only then.

use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::render::{MAX_DEPTH, NUMBER_COST, VALUE_COST, charge, key_cost, max_output, text_cost};

/// A document templates read by its name (`trigger`, `steps`, `config`).
#[derive(Clone, Copy)]
pub enum Root<'a> {
    Value(&'a Value),
    Map(&'a Map<String, Value>),
}

/// What one render reads: documents by name, and the minijinja context for the rest.
pub struct Scope<'a> {
    roots: Vec<(&'static str, Root<'a>)>,
    context: OnceLock<minijinja::Value>,
    build: Option<Box<dyn Fn() -> minijinja::Value + Send + Sync + 'a>>,
}

impl<'a> Scope<'a> {
    /// A scope of a minijinja context only.
    pub fn of(context: minijinja::Value) -> Scope<'a> {
        Scope {
            roots: Vec::new(),
            context: OnceLock::from(context),
            build: None,
        }
    }

    /// A scope of documents; `build` makes the same documents' minijinja context when a
    /// template needs it.
    pub fn new(
        roots: Vec<(&'static str, Root<'a>)>,
        build: impl Fn() -> minijinja::Value + Send + Sync + 'a,
    ) -> Scope<'a> {
        Scope {
            roots,
            context: OnceLock::new(),
            build: Some(Box::new(build)),
        }
    }

    /// The minijinja context, built at the first call.
    pub fn context(&self) -> &minijinja::Value {
        self.context.get_or_init(|| match &self.build {
            Some(build) => build(),
            None => minijinja::Value::UNDEFINED,
        })
    }

    /// The value at `path`, when it is there and within the output bound.
    pub(crate) fn read(&self, path: &Path) -> Option<&'a Value> {
        let root = self
            .roots
            .iter()
            .find(|(name, _)| *name == path.root)
            .map(|(_, root)| *root)?;
        let mut steps = path.steps.iter();
        let mut node = match root {
            Root::Value(v) => v,
            Root::Map(m) => match steps.next()? {
                Step::Key(k) => m.get(k)?,
                Step::Index(_) => return None,
            },
        };
        for step in steps {
            node = match (node, step) {
                (Value::Object(m), Step::Key(k)) => m.get(k)?,
                (Value::Array(items), Step::Index(i)) => items.get(*i)?,
                _ => return None,
            };
        }
        let mut budget = max_output();
        fits(node, &mut budget, 0).then_some(node)
    }

    /// The value of an expression that is a path, or a path divided by a number, when it is
    /// what minijinja would answer (minijinja divides as floats: `1001 / 100` is 10.01, and
    /// `1000 / 100` is 10.0).
    pub(crate) fn evaluate(&self, read: &Read) -> Option<Value> {
        let value = self.read(&read.path)?;
        let Some(divisor) = read.divisor else {
            return Some(value.clone());
        };
        // Only numbers: minijinja would count a boolean as 0 or 1, and refuse the rest with
        // its own error.
        let quotient = value.as_number()?.as_f64()? / divisor;
        let quotient = Value::from(serde_json::Number::from_f64(quotient)?);
        let mut budget = max_output();
        fits(&quotient, &mut budget, 0).then_some(quotient)
    }

    /// The text of a template made of text and path reads, when every read is text, an
    /// integer or a boolean (what minijinja writes the same way).
    pub(crate) fn join(&self, parts: &[Part]) -> Option<String> {
        let mut out = String::new();
        for part in parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Read(path) => match self.read(path)? {
                    Value::String(s) => out.push_str(s),
                    Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                    Value::Number(n) if !n.is_f64() => out.push_str(&n.to_string()),
                    _ => return None,
                },
            }
            if out.len() > max_output() {
                return None;
            }
        }
        Some(out)
    }
}

/// Whether a value is within the output bound, charged as `render` charges what it converts.
fn fits(v: &Value, budget: &mut usize, depth: usize) -> bool {
    if depth > MAX_DEPTH || charge(budget, VALUE_COST).is_err() {
        return false;
    }
    match v {
        Value::Null | Value::Bool(_) => true,
        Value::Number(_) => charge(budget, NUMBER_COST).is_ok(),
        Value::String(s) => charge(budget, text_cost(s)).is_ok(),
        Value::Array(items) => items.iter().all(|item| fits(item, budget, depth + 1)),
        Value::Object(map) => map
            .iter()
            .all(|(k, item)| charge(budget, key_cost(k)).is_ok() && fits(item, budget, depth + 1)),
    }
}

/// What a single-expression template reads: a path, or a path divided by a number literal.
#[derive(Debug, PartialEq)]
pub struct Read {
    path: Path,
    /// A nonzero, finite divisor.
    divisor: Option<f64>,
}

impl Read {
    /// The read an expression is, when it is a path or `path / number`.
    pub fn parse(expr: &str) -> Option<Read> {
        if let Some(path) = Path::parse(expr) {
            return Some(Read {
                path,
                divisor: None,
            });
        }
        let (path, divisor) = expr.split_once('/')?;
        Some(Read {
            path: Path::parse(path)?,
            divisor: Some(number_literal(divisor.trim()).filter(|d| *d != 0.0)?),
        })
    }
}

/// An integer or decimal literal of at most 15 digits (`100`, `0.5`): no sign, exponent,
/// `//` or name.
fn number_literal(text: &str) -> Option<f64> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) if !fraction.is_empty() => (whole, fraction),
        Some(_) => return None,
        None => (text, ""),
    };
    let digits = whole.len() + fraction.len();
    let all_digits = whole
        .bytes()
        .chain(fraction.bytes())
        .all(|b| b.is_ascii_digit());
    if whole.is_empty() || digits > 15 || !all_digits {
        return None;
    }
    text.parse().ok()
}

/// A path read: a name, then keys and indexes (`steps.fetch.body`, `trigger.items[0]`).
#[derive(Debug, PartialEq)]
pub struct Path {
    root: String,
    steps: Vec<Step>,
}

#[derive(Debug, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

impl Path {
    /// The path an expression reads, when it is only a path.
    pub fn parse(expr: &str) -> Option<Path> {
        let expr = expr.trim();
        let (root, mut rest) = identifier(expr)?;
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let (key, after) = identifier(after)?;
                steps.push(Step::Key(key.to_string()));
                rest = after;
            } else if let Some(after) = rest.strip_prefix('[') {
                let (inside, after) = after.split_once(']')?;
                steps.push(subscript(inside.trim())?);
                rest = after;
            } else {
                return None;
            }
        }
        Some(Path {
            root: root.to_string(),
            steps,
        })
    }
}

fn identifier(s: &str) -> Option<(&str, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    let name = &s[..end];
    let first = name.chars().next()?;
    (first.is_ascii_alphabetic() || first == '_').then_some((name, &s[end..]))
}

fn subscript(inside: &str) -> Option<Step> {
    if !inside.is_empty() && inside.bytes().all(|b| b.is_ascii_digit()) {
        return inside.parse().ok().map(Step::Index);
    }
    let quote = inside.chars().next().filter(|q| *q == '"' || *q == '\'')?;
    let key = inside.strip_prefix(quote)?.strip_suffix(quote)?;
    (!key.contains(['\\', '"', '\''])).then(|| Step::Key(key.to_string()))
}

/// A piece of a template that joins text and path reads.
#[derive(Debug, PartialEq)]
pub enum Part {
    Text(String),
    Read(Path),
}

impl Part {
    /// The parts of a template, when it is only text and `{{ path }}` reads: no blocks,
    /// comments, filters, whitespace control, or final newline (minijinja drops one).
    pub fn split(source: &str) -> Option<Vec<Part>> {
        if source.ends_with('\n') {
            return None;
        }
        let mut parts = Vec::new();
        let mut rest = source;
        while !rest.is_empty() {
            let Some(open) = rest.find("{{") else {
                parts.push(Part::Text(text(rest)?));
                break;
            };
            if open > 0 {
                parts.push(Part::Text(text(&rest[..open])?));
            }
            let inside = &rest[open + 2..];
            let close = inside.find("}}")?;
            let expr = &inside[..close];
            if expr.starts_with(['-', '+']) || expr.ends_with(['-', '+']) {
                return None;
            }
            parts.push(Part::Read(Path::parse(expr)?));
            rest = &inside[close + 2..];
        }
        parts
            .iter()
            .any(|p| matches!(p, Part::Read(_)))
            .then_some(parts)
    }
}

/// Template text with no tag of its own.
fn text(s: &str) -> Option<String> {
    (!s.contains("{%") && !s.contains("{#") && !s.contains("}}")).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_and_joined_text_are_recognised_and_nothing_else() {
        assert_eq!(
            Path::parse(" steps.fetch.body[0]['a b'] "),
            Some(Path {
                root: "steps".into(),
                steps: vec![
                    Step::Key("fetch".into()),
                    Step::Key("body".into()),
                    Step::Index(0),
                    Step::Key("a b".into()),
                ],
            })
        );
        assert_eq!(
            Read::parse("trigger.body.cents / 100"),
            Some(Read {
                path: Path::parse("trigger.body.cents").unwrap(),
                divisor: Some(100.0),
            })
        );
        for not_a_read in [
            "a // 100",
            "a / 0",
            "a / 0.0",
            "a / -1",
            "a / b",
            "a / 1e2",
            "a / 1.",
            "a / .5",
            "1 / 2",
            "a / 2 / 2",
            "a * 2",
        ] {
            assert_eq!(Read::parse(not_a_read), None, "{not_a_read}");
        }
        for not_a_path in [
            "a / 100",
            "a | upper",
            "a.b()",
            "a[-1]",
            "a[b]",
            "1",
            "'x'",
            "a .b",
        ] {
            assert_eq!(Path::parse(not_a_path), None, "{not_a_path}");
        }
        assert!(Part::split("Bearer {{ config.token }}").is_some());
        assert!(Part::split("{{ a }}/orders/{{ b.id }}").is_some());
        for not_joined in [
            "plain",
            "{% if a %}x{% endif %}",
            "{{- a }}",
            "{{ a }}\n",
            "{# c #}{{ a }}",
            "{{ a | upper }}",
            "x }} {{ a }}",
        ] {
            assert_eq!(Part::split(not_joined), None, "{not_joined}");
        }
    }

    #[test]
    fn reads_answer_only_what_minijinja_would_write_the_same_way() {
        let trigger = json!({ "body": { "id": 7, "name": "Ada", "ratio": 2.5, "ok": true, "items": [1, 2] } });
        let steps: Map<String, Value> = [("fetch".to_string(), json!({ "status": 200 }))]
            .into_iter()
            .collect();
        let scope = Scope::new(
            vec![
                ("trigger", Root::Value(&trigger)),
                ("steps", Root::Map(&steps)),
            ],
            || minijinja::Value::UNDEFINED,
        );
        let read = |expr: &str| scope.read(&Path::parse(expr).unwrap()).cloned();
        assert_eq!(read("trigger.body.items[1]"), Some(json!(2)));
        assert_eq!(read("steps.fetch"), Some(json!({ "status": 200 })));
        assert_eq!(read("trigger.body.missing"), None);
        assert_eq!(read("trigger.body.items.first"), None);
        assert_eq!(read("steps"), None);
        assert_eq!(read("config.url"), None);
        let join = |source: &str| scope.join(&Part::split(source).unwrap());
        assert_eq!(
            join("{{ trigger.body.name }} #{{ trigger.body.id }} {{ trigger.body.ok }}"),
            Some("Ada #7 true".into())
        );
        assert_eq!(join("{{ trigger.body.ratio }}"), None);
        assert_eq!(join("{{ trigger.body.items }}"), None);
    }
}
