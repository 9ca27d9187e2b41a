//! Whether a config value fits its variable: shared by the integration check (defaults) and the
//! instance check (each customer's values), so neither depends on the other.

use serde_json::Value;

use crate::diagnostic::Code;
use crate::model::{ConfigType, ConfigVar};

/// Why a config value does not fit its variable: the diagnostic code and the message.
pub type Misfit = (Code, String);

/// Checks a config value (an instance's, or a default) against its variable.
pub fn check_config_value(var: &ConfigVar, value: &Value) -> Result<(), Misfit> {
    let is_secret_ref = value
        .as_object()
        .is_some_and(|m| m.len() == 1 && m.get("secret").is_some_and(Value::is_string));
    if var.kind == ConfigType::Secret {
        if is_secret_ref {
            return check_secret_name(value["secret"].as_str().unwrap_or_default());
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
    let fits = match var.kind {
        ConfigType::String => value.is_string(),
        ConfigType::Integer => value.is_i64() || value.is_u64(),
        ConfigType::Number => value.is_number(),
        ConfigType::Boolean => value.is_boolean(),
        ConfigType::Json | ConfigType::Secret => true,
        ConfigType::Url => return check_url(value),
        ConfigType::Enum => return check_enum(var, value),
    };
    if fits {
        Ok(())
    } else {
        Err((
            Code::InvalidConfigValue,
            format!("expected {}, found {}", type_name(var.kind), kind_of(value)),
        ))
    }
}

/// A secret reference names an environment variable: `A-Z`, `0-9` and `_`, not digit first.
fn check_secret_name(name: &str) -> Result<(), Misfit> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if valid {
        Ok(())
    } else {
        Err((
            Code::InvalidConfigValue,
            format!("`{name}` is not an environment variable name (A-Z, 0-9, _)"),
        ))
    }
}

fn check_url(value: &Value) -> Result<(), Misfit> {
    match value.as_str().map(url::Url::parse) {
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
    }
}

fn check_enum(var: &ConfigVar, value: &Value) -> Result<(), Misfit> {
    let values = var.values.clone().unwrap_or_default();
    match value.as_str() {
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

/// What a value is, as messages name it: `` `true` ``, `"text"`, `a list`, ...
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
