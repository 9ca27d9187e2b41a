//! Secret redaction: every secret value the runtime holds is replaced by `***` in anything it
//! writes down — logs, execution history, dead letters, errors returned to callers — and so is
//! every form of a secret that weft itself derives: the base64 of a secret, and of the
//! `username:password` of a basic-auth connection, as an upstream might echo them back.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use serde_json::Value;

#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Every secret, and its JSON-escaped form where that differs, matched leftmost-longest
    /// in one pass (a secret containing another is masked whole); `None` without secrets.
    matcher: Option<AhoCorasick>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut patterns: Vec<String> = Vec::new();
        for secret in secrets.into_iter().filter(|s| s.len() >= 4) {
            // Inside JSON text a secret appears escaped (`"` as `\"`, control characters).
            let escaped = serde_json::to_string(&secret).unwrap_or_default();
            let escaped = &escaped[1..escaped.len() - 1];
            if escaped != secret {
                patterns.push(escaped.to_string());
            }
            patterns.push(secret);
        }
        patterns.sort();
        patterns.dedup();
        let matcher = (!patterns.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .expect("plain string patterns build")
        });
        Redactor { matcher }
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
        self.masked(text).unwrap_or_else(|| text.to_string())
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

    /// JSON text of a value, redacted: the text is written once and masked in one pass (a
    /// secret inside a string is in the text in its escaped form, which is matched too). The
    /// result is always JSON: should a mask have cut through the text's syntax (a secret of
    /// digits inside a number, say), the masked text is given as a JSON string instead.
    pub fn json(&self, value: &Value) -> String {
        self.json_text(serde_json::to_string(value).unwrap_or_default())
    }

    /// [`Redactor::json`] of a value already written as JSON text.
    pub fn json_text(&self, text: String) -> String {
        match self.masked(&text) {
            None => text,
            Some(masked) if serde_json::from_str::<serde::de::IgnoredAny>(&masked).is_ok() => {
                masked
            }
            Some(masked) => serde_json::to_string(&masked).unwrap_or_default(),
        }
    }

    /// `text` with every secret replaced, in one scan; `None` when it holds none.
    fn masked(&self, text: &str) -> Option<String> {
        let mut matches = self.matcher.as_ref()?.find_iter(text).peekable();
        matches.peek()?;
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in matches {
            out.push_str(&text[last..m.start()]);
            out.push_str("***");
            last = m.end();
        }
        out.push_str(&text[last..]);
        Some(out)
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

    #[test]
    fn json_text_stays_json_when_a_mask_cuts_through_a_number() {
        let r = Redactor::new(["424242".to_string()]);
        let text = r.json(&serde_json::json!({ "card": 4242424242u64, "note": "x424242" }));
        let back: Value = serde_json::from_str(&text).expect("still JSON");
        let shown = back.as_str().expect("given as a string");
        assert!(!shown.contains("424242"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }

    #[test]
    fn json_text_masks_secrets_that_need_escaping() {
        let r = Redactor::new(["quo\"te-secret".to_string(), "tab\tsecret".to_string()]);
        let v = serde_json::json!({ "a": "x quo\"te-secret y", "b": ["tab\tsecret"], "quo\"te-secret": 1 });
        let text = r.json(&v);
        assert!(
            !text.contains("te-secret") && !text.contains("tsecret"),
            "{text}"
        );
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r.value(&v));
    }
}
