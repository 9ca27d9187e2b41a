//! Template rendering for the runtime: minijinja in a sandbox (a fuel limit per render, no
//! loader so no filesystem, undefined variables are errors). Templates are compiled once per
//! step when the runtime starts; a string that is exactly one `{{ expr }}` keeps the
//! expression's type, any other template renders to a string.
//!
//! Fuel bounds the instructions a render runs; it does not bound what a value costs once
//! built (`[1, 2] * n` is one instruction, a lazy sequence of `2n` items). So every rendered
//! value is converted to JSON under a byte budget ([`max_output`]), a template's text output
//! is written through the same bound, and `tojson` caps its indent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use minijinja::value::{Kwargs, Serde, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Expression, Template, UndefinedBehavior};
use serde_json::Value;

use crate::error::TemplateError;
pub use crate::scope::Scope;
use crate::scope::{Part, Read};

/// Fuel per render: bounds the work one template can do (loops, filters).
const FUEL: u64 = 200_000;

/// Nesting deeper than this in a rendered value is refused.
pub(crate) const MAX_DEPTH: usize = 64;

/// The widest `tojson` indent.
const MAX_INDENT: usize = 16;

/// Bytes one rendered value may take (its JSON size, and at least 16 bytes per value, about
/// what it costs in memory); see [`set_max_output`].
static MAX_OUTPUT: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_OUTPUT);

/// The default bound of a rendered value or a step's output: 4 MB.
pub const DEFAULT_MAX_OUTPUT: usize = 4_000_000;

/// Sets the bound of every rendered value and step output, for the whole process.
pub fn set_max_output(bytes: usize) {
    MAX_OUTPUT.store(bytes.max(1024), Ordering::Relaxed);
}

/// The bound of every rendered value and step output, in bytes.
pub fn max_output() -> usize {
    MAX_OUTPUT.load(Ordering::Relaxed)
}

/// A value with its templates compiled. A template's compiled form is shared by every value
/// with the same source (see [`Renderer::compile`]).
pub enum Compiled {
    Literal(Value),
    Expr(
        Arc<Expression<'static, 'static>>,
        &'static str,
        Option<Arc<Read>>,
    ),
    Template(Arc<Template<'static, 'static>>, Option<Arc<Vec<Part>>>),
    Array(Vec<Compiled>),
    Object(Vec<(String, Compiled)>),
}

/// The template environment, shared by every step for the life of the process, and every
/// template compiled so far by source: one compiled template costs about 12 KB (minijinja
/// keeps room for 256 instructions), and the instances and versions of a fleet repeat theirs.
#[derive(Clone, Copy)]
pub struct Renderer {
    env: &'static Environment<'static>,
    compiled: &'static Mutex<HashMap<&'static str, Shared>>,
}

/// A compiled template or expression, shared by source.
#[derive(Clone)]
enum Shared {
    Expr(
        Arc<Expression<'static, 'static>>,
        &'static str,
        Option<Arc<Read>>,
    ),
    Template(Arc<Template<'static, 'static>>, Option<Arc<Vec<Part>>>),
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

impl Renderer {
    pub fn new() -> Renderer {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.add_filter("tojson", bounded_tojson);
        env.set_formatter(bounded_formatter);
        // Plans live as long as the process: the environment and compiled templates do too.
        Renderer {
            env: Box::leak(Box::new(env)),
            compiled: Box::leak(Box::default()),
        }
    }

    /// The compiled form of template source `s`, compiled at its first use.
    fn shared(&self, s: &str) -> Result<Shared, TemplateError> {
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = compiled.get(s) {
            return Ok(found.clone());
        }
        // Compiled templates borrow their source: it lives as long as the process.
        let source: &'static str = Box::leak(s.to_string().into_boxed_str());
        let trimmed = source.trim();
        let inner = trimmed
            .strip_prefix("{{")
            .and_then(|t| t.strip_suffix("}}"))
            .filter(|t| !t.contains("{{") && !t.contains("}}") && !t.contains("{%"));
        let shared = match inner {
            Some(expr) => {
                let expr = expr.trim();
                let compiled = self
                    .env
                    .compile_expression(expr)
                    .map_err(|e| syntax(s, &e))?;
                Shared::Expr(Arc::new(compiled), expr, Read::parse(expr).map(Arc::new))
            }
            None => Shared::Template(
                Arc::new(
                    self.env
                        .template_from_str(source)
                        .map_err(|e| syntax(s, &e))?,
                ),
                Part::split(source).map(Arc::new),
            ),
        };
        compiled.insert(source, shared.clone());
        Ok(shared)
    }

    /// Compiles every template inside `value`.
    pub fn compile(&self, value: &Value) -> Result<Compiled, TemplateError> {
        Ok(match value {
            Value::String(s) if s.contains("{{") || s.contains("{%") => match self.shared(s)? {
                Shared::Expr(expr, source, path) => Compiled::Expr(expr, source, path),
                Shared::Template(template, parts) => Compiled::Template(template, parts),
            },
            Value::Array(items) => Compiled::Array(
                items
                    .iter()
                    .map(|v| self.compile(v))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Compiled::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.compile(v)?)))
                    .collect::<Result<_, TemplateError>>()?,
            ),
            other => Compiled::Literal(other.clone()),
        })
    }
}

/// The context templates see, converted once per message.
pub fn context(value: &Value) -> minijinja::Value {
    minijinja::Value::from(Serde(value))
}

/// Renders a compiled value in a context.
pub fn render(compiled: &Compiled, ctx: &minijinja::Value) -> Result<Value, TemplateError> {
    render_in(compiled, &Scope::of(ctx.clone()))
}

/// Renders a compiled value in a scope: templates that only read paths read the scope's JSON
/// documents in place; the others evaluate in its minijinja context.
pub fn render_in(compiled: &Compiled, scope: &Scope<'_>) -> Result<Value, TemplateError> {
    Ok(match compiled {
        Compiled::Literal(v) => v.clone(),
        Compiled::Expr(_, _, Some(read)) if let Some(v) = scope.evaluate(read) => v,
        Compiled::Template(_, Some(parts)) if let Some(text) = scope.join(parts) => {
            Value::String(text)
        }
        Compiled::Expr(expr, source, _) => {
            let v = expr
                .eval(scope.context().clone())
                .map_err(|e| describe(&e, source))?;
            if v.is_undefined() {
                return Err(TemplateError::Undefined(source.to_string()));
            }
            let mut budget = max_output();
            to_json(&v, &mut budget, 0).map_err(|e| e.in_template(source))?
        }
        Compiled::Template(t, _) => {
            let mut out = BoundedText::new(max_output());
            match t.render_captured_to(scope.context().clone(), &mut out) {
                Ok(_) => Value::String(out.into_string()),
                Err(e) if out.overflowed || e.to_string().contains("exceeds") => {
                    return Err(Bound::TooLarge.in_template(t.source()));
                }
                Err(e) => return Err(describe(&e, t.source())),
            }
        }
        Compiled::Array(items) => Value::Array(
            items
                .iter()
                .map(|c| render_in(c, scope))
                .collect::<Result<_, _>>()?,
        ),
        Compiled::Object(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, c)| Ok((k.clone(), render_in(c, scope)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
    })
}

/// Why a rendered value was refused.
pub(crate) enum Bound {
    TooLarge,
    TooDeep,
}

impl Bound {
    fn in_template(self, source: &str) -> TemplateError {
        match self {
            Bound::TooLarge => TemplateError::TooLarge {
                source_text: source.to_string(),
                limit: max_output(),
            },
            Bound::TooDeep => TemplateError::Render {
                source_text: source.to_string(),
                detail: format!("the value nests deeper than {MAX_DEPTH} levels"),
            },
        }
    }
}

/// What every value costs against the output bound (about its size in memory); a number,
/// a string and a map key cost this and what [`NUMBER_COST`], [`text_cost`] and [`key_cost`]
/// add. [`to_json`] and the direct reads of [`crate::scope`] charge the same.
pub(crate) const VALUE_COST: usize = 16;
pub(crate) const NUMBER_COST: usize = 8;

/// A string's cost: its text and quotes.
pub(crate) fn text_cost(text: &str) -> usize {
    text.len() + 2
}

/// A map key's cost: its text, quotes and colon.
pub(crate) fn key_cost(key: &str) -> usize {
    key.len() + 3
}

pub(crate) fn charge(budget: &mut usize, bytes: usize) -> Result<(), Bound> {
    *budget = budget.checked_sub(bytes).ok_or(Bound::TooLarge)?;
    Ok(())
}

/// Converts a template value to JSON, charging about its JSON size to `budget`: a lazy
/// sequence is refused as it grows, never materialized whole.
fn to_json(v: &minijinja::Value, budget: &mut usize, depth: usize) -> Result<Value, Bound> {
    if depth > MAX_DEPTH {
        return Err(Bound::TooDeep);
    }
    // About what a value costs in memory, not only in JSON text: a list of a million small
    // numbers is refused long before it takes hundreds of megabytes.
    charge(budget, VALUE_COST)?;
    Ok(match v.kind() {
        ValueKind::Undefined | ValueKind::None => Value::Null,
        ValueKind::Bool => Value::Bool(v.is_true()),
        ValueKind::Number => {
            charge(budget, NUMBER_COST)?;
            // A number serializes as what it is (25.0 stays a float).
            serde_json::to_value(v).unwrap_or(Value::Null)
        }
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            charge(budget, text_cost(s))?;
            Value::String(s.to_string())
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let mut items = Vec::new();
            for item in v.try_iter().map_err(|_| Bound::TooLarge)? {
                items.push(to_json(&item, budget, depth + 1)?);
            }
            Value::Array(items)
        }
        ValueKind::Map => {
            let mut map = serde_json::Map::new();
            for key in v.try_iter().map_err(|_| Bound::TooLarge)? {
                let name = key.as_str().map_or_else(|| key.to_string(), str::to_string);
                charge(budget, key_cost(&name))?;
                let value = v.get_item(&key).unwrap_or_default();
                map.insert(name, to_json(&value, budget, depth + 1)?);
            }
            Value::Object(map)
        }
        _ => {
            let text = v.to_string();
            charge(budget, text_cost(&text))?;
            Value::String(text)
        }
    })
}

/// A template's text output, refused once it passes the bound.
struct BoundedText {
    buf: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl BoundedText {
    fn new(limit: usize) -> BoundedText {
        BoundedText {
            buf: Vec::new(),
            limit,
            overflowed: false,
        }
    }

    fn into_string(self) -> String {
        String::from_utf8(self.buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

impl std::io::Write for BoundedText {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other("the rendered text is too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes `{{ value }}` into a template's text: a sequence or mapping is measured under the
/// output bound before it is formatted, so a lazy sequence of millions is refused, not written.
fn bounded_formatter(
    out: &mut minijinja::Output<'_>,
    state: &mut minijinja::State<'_, '_>,
    value: &minijinja::Value,
) -> Result<(), Error> {
    if matches!(
        value.kind(),
        ValueKind::Seq | ValueKind::Iterable | ValueKind::Map
    ) {
        let mut budget = max_output();
        if to_json(value, &mut budget, 0).is_err() {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("the rendered value exceeds {} bytes", max_output()),
            ));
        }
    }
    minijinja::escape_formatter(out, state, value)
}

/// `tojson` with its indent capped and its size bounded like any rendered value.
fn bounded_tojson(
    value: &minijinja::Value,
    indent: Option<minijinja::Value>,
    args: Kwargs,
) -> Result<minijinja::Value, Error> {
    let indent = match indent {
        Some(indent) => Some(indent),
        None => args.get("indent")?,
    };
    args.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.kind() == ValueKind::Bool => v.is_true().then_some(2),
        Some(v) => Some(usize::try_from(v)?.min(MAX_INDENT)),
    };
    let mut budget = max_output();
    let json = to_json(value, &mut budget, 0).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: the value exceeds {} bytes", max_output()),
        )
    })?;
    let text = match indent {
        None => serde_json::to_string(&json),
        Some(n) => {
            let pad = vec![b' '; n];
            let formatter = serde_json::ser::PrettyFormatter::with_indent(&pad);
            let mut out = Vec::new();
            let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
            serde::Serialize::serialize(&json, &mut ser)
                .map(|_| String::from_utf8(out).unwrap_or_default())
        }
    }
    .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    if text.len() > max_output() {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: the value exceeds {} bytes", max_output()),
        ));
    }
    Ok(minijinja::Value::from_safe_string(text))
}

fn describe(e: &minijinja::Error, source: &str) -> TemplateError {
    let detail = e
        .detail()
        .map(str::to_string)
        .unwrap_or_else(|| e.kind().to_string());
    TemplateError::Render {
        source_text: source.to_string(),
        detail,
    }
}

fn syntax(source: &str, e: &minijinja::Error) -> TemplateError {
    TemplateError::Syntax {
        source_text: source.to_string(),
        detail: e.to_string(),
    }
}

/// A JSON object of `fields`, in order, the values moved in: `json!` would copy each value
/// through the serializer first.
pub fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect(),
    )
}

/// Whether a rendered value counts as true (branch conditions).
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty() && s != "false",
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_source_is_compiled_once_and_shared() {
        let r = Renderer::new();
        let compile = |s: &str| r.compile(&json!(s)).unwrap();
        let (Compiled::Template(a, _), Compiled::Template(b, _)) =
            (compile("x {{ y }}"), compile("x {{ y }}"))
        else {
            panic!("templates");
        };
        assert!(Arc::ptr_eq(&a, &b));
        let (Compiled::Expr(a, _, _), Compiled::Expr(b, source, _)) =
            (compile("{{ y.z }}"), compile("{{ y.z }}"))
        else {
            panic!("expressions");
        };
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(source, "y.z");
        let ctx = context(&json!({ "y": { "z": 4 } }));
        assert_eq!(render(&compile(" {{ y.z }} "), &ctx).unwrap(), json!(4));
    }

    #[test]
    fn a_path_divided_by_a_number_reads_as_minijinja_divides() {
        let r = Renderer::new();
        for divisor in ["100", "3", "0.5", "7.25"] {
            let source = format!("{{{{ trigger.body.n / {divisor} }}}}");
            let compiled = r.compile(&json!(source)).unwrap();
            assert!(
                matches!(&compiled, Compiled::Expr(_, _, Some(_))),
                "{source} is read directly"
            );
            for n in [
                json!(1001),
                json!(1000),
                json!(-7),
                json!(0),
                json!(2.5),
                json!(1e300),
                json!(u64::MAX),
                json!(i64::MIN),
                json!(true),
                json!("12"),
                json!(null),
            ] {
                let trigger = json!({ "body": { "n": n } });
                let minijinja = render(&compiled, &context(&json!({ "trigger": trigger })));
                let scope = crate::scope::Scope::new(
                    vec![("trigger", crate::scope::Root::Value(&trigger))],
                    || context(&json!({ "trigger": trigger })),
                );
                let direct = render_in(&compiled, &scope);
                assert_eq!(
                    format!("{direct:?}"),
                    format!("{minijinja:?}"),
                    "{n} / {divisor}"
                );
            }
        }
    }

    #[test]
    fn single_expressions_keep_their_type_and_templates_render_strings() {
        let r = Renderer::new();
        let c = r
            .compile(&json!({ "n": "{{ trigger.body.amount_cents / 100 }}", "s": "id {{ trigger.body.id }}", "l": "{{ trigger.body.lines }}", "k": 3 }))
            .unwrap();
        let ctx = context(
            &json!({ "trigger": { "body": { "amount_cents": 1250, "id": "A1", "lines": [1, 2] } } }),
        );
        let v = render(&c, &ctx).unwrap();
        assert_eq!(v, json!({ "n": 12.5, "s": "id A1", "l": [1, 2], "k": 3 }));
    }

    #[test]
    fn values_past_the_output_bound_are_refused_without_being_built() {
        let r = Renderer::new();
        let ctx = context(&json!({ "trigger": { "body": { "n": 10_000_000 } } }));
        for template in [
            "{{ [1,2,3,4,5,6,7,8,9,10] * trigger.body.n }}",
            "items: {{ [1,2,3,4,5,6,7,8,9,10] * trigger.body.n }}",
            "{{ ([1,2,3,4,5,6,7,8,9,10] * trigger.body.n) | tojson }}",
            "{{ 'abc' | tojson(indent=trigger.body.n) }}{{ [1] * 2000000 }}",
        ] {
            let started = std::time::Instant::now();
            let c = r.compile(&json!(template)).unwrap();
            let err = render(&c, &ctx).unwrap_err().to_string();
            assert!(
                err.contains("exceeds") || err.contains("too large"),
                "{template}: {err}"
            );
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{template}"
            );
        }
        // A huge indent is capped, not allocated.
        let c = r
            .compile(&json!("{{ {'a': 1} | tojson(indent=trigger.body.n) }}"))
            .unwrap();
        let v = render(&c, &ctx).unwrap();
        assert_eq!(v, json!(format!("{{\n{}\"a\": 1\n}}", " ".repeat(16))));
    }

    #[test]
    fn undefined_variables_are_errors_and_fuel_bounds_work() {
        let r = Renderer::new();
        let c = r.compile(&json!("{{ trigger.nope.deeper }}")).unwrap();
        assert!(render(&c, &context(&json!({ "trigger": {} }))).is_err());
        let c = r.compile(&json!("hello {{ missing }}")).unwrap();
        assert!(render(&c, &context(&json!({}))).is_err());
        let c = r
            .compile(&json!(
                "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
            ))
            .unwrap();
        let err = render(&c, &context(&json!({}))).unwrap_err();
        assert!(err.to_string().contains("fuel"), "{err}");
    }
}
