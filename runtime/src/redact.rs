//! Secret redaction: every secret value the runtime holds is replaced by `***` in anything it
//! writes down — logs, execution history, dead letters, errors returned to callers.

use serde_json::Value;

#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Longest first, so that a secret containing another is masked whole.
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 4).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    pub fn str(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }

    pub fn value(&self, value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.str(s)),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.value(v)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (self.str(k), self.value(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// JSON text of a value, redacted.
    pub fn json(&self, value: &Value) -> String {
        serde_json::to_string(&self.value(value)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_longest_first() {
        let r = Redactor::new(["tok-123456".to_string(), "tok-1234567890".to_string()]);
        assert_eq!(r.str("a tok-1234567890 b tok-123456"), "a *** b ***");
        let v = r.value(&serde_json::json!({ "h": ["Bearer tok-123456"] }));
        assert_eq!(v, serde_json::json!({ "h": ["Bearer ***"] }));
    }
}
