//! Durations as users write them (`500ms`, `30s`, `1h 30m`): one grammar (the schema's
//! `DurationText` pattern, which accepts a subset of what humantime reads) and one parser,
//! humantime's, for validation and lowering alike.

/// The milliseconds `text` stands for; `None` when humantime refuses it or it does not fit in
/// 64 bits of milliseconds.
pub fn parse_ms(text: &str) -> Option<u64> {
    let d = humantime::parse_duration(text).ok()?;
    u64::try_from(d.as_millis()).ok()
}

/// Why a duration cannot be used where a wait or a time limit is meant: zero (a hot loop, an
/// immediate timeout) or too long to represent.
pub fn problem(text: &str) -> Option<&'static str> {
    match parse_ms(text) {
        None => Some("too long: it does not fit in 64 bits of milliseconds"),
        Some(0) => Some("zero"),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_ms, problem};

    #[test]
    fn parses_and_refuses() {
        assert_eq!(parse_ms("1h 30m"), Some(5_400_000));
        assert_eq!(parse_ms("5 s"), Some(5_000));
        assert_eq!(problem("0s"), Some("zero"));
        assert_eq!(problem("0ms 0s"), Some("zero"));
        assert!(problem("99999999999999999999s").is_some());
        assert!(problem("18446744073709551615s").is_some());
        assert_eq!(problem("500ms"), None);
    }
}
