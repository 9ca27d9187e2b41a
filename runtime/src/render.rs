//! Template rendering for the runtime: minijinja in a sandbox (a fuel limit per render, no
//! loader so no filesystem, undefined variables are errors). Templates are compiled once per
//! step when the runtime starts; a string that is exactly one `{{ expr }}` keeps the
//! expression's type, any other template renders to a string.

use minijinja::value::Serde;
use minijinja::{Environment, Expression, Template, UndefinedBehavior};
use serde_json::Value;

use crate::error::TemplateError;

/// Fuel per render: bounds the work one template can do (loops, filters).
const FUEL: u64 = 200_000;

/// A value with its templates compiled.
pub enum Compiled {
    Literal(Value),
    Expr(Expression<'static, 'static>, &'static str),
    Template(Template<'static, 'static>),
    Array(Vec<Compiled>),
    Object(Vec<(String, Compiled)>),
}

/// The template environment, shared by every step for the life of the process.
#[derive(Clone, Copy)]
pub struct Renderer {
    env: &'static Environment<'static>,
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
        // Plans live as long as the process: the environment and compiled templates do too.
        Renderer {
            env: Box::leak(Box::new(env)),
        }
    }

    /// Compiles every template inside `value`.
    pub fn compile(&self, value: &Value) -> Result<Compiled, TemplateError> {
        Ok(match value {
            Value::String(s) if s.contains("{{") || s.contains("{%") => {
                let trimmed = s.trim();
                let inner = trimmed
                    .strip_prefix("{{")
                    .and_then(|t| t.strip_suffix("}}"))
                    .filter(|t| !t.contains("{{") && !t.contains("}}") && !t.contains("{%"));
                match inner {
                    Some(expr) => {
                        let source: &'static str =
                            Box::leak(expr.trim().to_string().into_boxed_str());
                        let compiled = self
                            .env
                            .compile_expression(source)
                            .map_err(|e| syntax(s, &e))?;
                        Compiled::Expr(compiled, source)
                    }
                    None => {
                        let source: &'static str = Box::leak(s.clone().into_boxed_str());
                        Compiled::Template(
                            self.env
                                .template_from_str(source)
                                .map_err(|e| syntax(s, &e))?,
                        )
                    }
                }
            }
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
    Ok(match compiled {
        Compiled::Literal(v) => v.clone(),
        Compiled::Expr(expr, source) => {
            let v = expr.eval(ctx.clone()).map_err(|e| describe(&e, source))?;
            if v.is_undefined() {
                return Err(TemplateError::Undefined(source.to_string()));
            }
            serde_json::to_value(&v).map_err(|e| TemplateError::Render {
                source_text: source.to_string(),
                detail: e.to_string(),
            })?
        }
        Compiled::Template(t) => Value::String(
            t.render(ctx.clone())
                .map_err(|e| describe(&e, t.source()))?,
        ),
        Compiled::Array(items) => Value::Array(
            items
                .iter()
                .map(|c| render(c, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Compiled::Object(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, c)| Ok((k.clone(), render(c, ctx)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
    })
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
