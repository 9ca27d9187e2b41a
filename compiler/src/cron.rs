//! Cron expressions of schedule triggers: parsed with croner, as the runtime parses them; a
//! schedule that is a template over `config` is resolved per instance (each customer its own
//! time) and parsed then.

use serde_json::{Map, Value};

/// What a schedule's `cron` may be, for messages.
pub const ALLOWED: &str =
    "a cron expression (5 fields: minute hour day month weekday) or a template over config";

/// A help text with examples of both forms.
pub const EXAMPLES: &str = "e.g. `0 2 * * *` (02:00 daily); 6 fields put seconds first; `@daily`, `@hourly`, ... work too; `\"{{ config.nightly_at }}\"` reads each instance's value";

/// Why croner refuses `expr`, in lower case and without croner's prefixes; `None` when it
/// parses.
pub fn parse_error(expr: &str) -> Option<String> {
    let e = expr.parse::<croner::Cron>().err()?;
    Some(
        e.to_string()
            .trim_end_matches('.')
            .to_lowercase()
            .replace("component error: ", ""),
    )
}

/// Renders a schedule template with an instance's config values (strict: an undefined value is
/// an error).
pub fn resolve(template: &str, config: &Map<String, Value>) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.render_str(
        template,
        minijinja::context! { config => minijinja::Value::from(minijinja::value::Serde(config)) },
    )
    .map(|s| s.trim().to_string())
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        assert_eq!(parse_error("0 2 * * *"), None);
        assert_eq!(parse_error("@daily"), None);
        assert!(parse_error("0 25 * * *").is_some());
        let config = serde_json::json!({ "at": "30 6 * * 1-5" });
        let config = config.as_object().unwrap();
        assert_eq!(
            resolve("{{ config.at }}", config).as_deref(),
            Ok("30 6 * * 1-5")
        );
        assert!(resolve("{{ config.other }}", config).is_err());
    }
}
