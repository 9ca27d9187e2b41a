//! Byte sizes as users write them (`10MB`, `512KiB`, `100B`).

/// The number of bytes `text` stands for: `KB`/`MB` are powers of 1,000, `KiB`/`MiB` of 1,024.
/// `None` for another unit or a size that does not fit in 64 bits.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let n: u64 = t[..split].parse().ok()?;
    let factor: u64 = match t[split..].trim() {
        "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "KiB" => 1_024,
        "MiB" => 1_024 * 1_024,
        _ => return None,
    };
    n.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_and_overflow() {
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("512 KiB"), Some(524_288));
        assert_eq!(parse_size("76480200929599801MB"), None);
        assert_eq!(parse_size("99999999999999999999MB"), None);
        assert_eq!(parse_size("10GB"), None);
    }
}
