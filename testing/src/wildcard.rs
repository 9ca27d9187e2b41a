//! URL patterns of mocks and expected requests: `*` matches any run of characters (`/` and `?`
//! included); everything else matches itself.

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn exact_urls_and_stars() {
        assert!(matches("https://a.example/x", "https://a.example/x"));
        assert!(!matches("https://a.example/x", "https://a.example/x/y"));
        assert!(matches("https://a.example/*", "https://a.example/x/y?z=1"));
        assert!(matches("https://*.example/x*", "https://crm.example/x?y=1"));
        assert!(!matches("https://*.example/x", "https://crm.example/y"));
        assert!(matches("*", ""));
        assert!(!matches("a*a", "a"));
    }
}
