//! Secret redaction: every secret value the runtime holds is replaced by `***` in anything it
//! writes down — logs, execution history, dead letters, errors returned to callers — and so is
//! every form of a secret that weft itself derives: the base64 of a secret, and of the
//! `username:password` of a basic-auth connection, as an upstream might echo them back.

use base64::Engine as _;
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

    /// Secrets and the forms weft derives from them: `basic` is each basic-auth connection's
    /// `(username, password)`.
    pub fn with_derived_forms(
        secrets: impl IntoIterator<Item = String>,
        basic: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut all = Vec::new();
        for s in secrets {
            all.push(b64(&s));
            all.push(s);
        }
        for (user, password) in basic {
            if !password.is_empty() {
                all.push(b64(&format!("{user}:{password}")));
            }
        }
        Redactor::new(all)
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

    #[test]
    fn derived_forms_are_masked_too() {
        let r = Redactor::with_derived_forms(
            ["s3cr3t-token".to_string()],
            [("ada".to_string(), "pa55word-x".to_string())],
        );
        // base64("ada:pa55word-x") and base64("s3cr3t-token"), as an upstream echoes them.
        let echoed = "Basic YWRhOnBhNTV3b3JkLXg= and czNjcjN0LXRva2Vu";
        assert_eq!(r.str(echoed), "Basic *** and ***");
    }
}
