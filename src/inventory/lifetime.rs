//! Certificate lifetimes as users write them: `100y`, `3650d`, `8760h`, `90m`.

use std::time::Duration;

const DAY: u64 = 24 * 3600;

/// Parses a lifetime; a year is 365 days (what kubeasz and cfssl mean by `876000h`).
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a lifetime: write a whole number and a unit, e.g. 100y, 3650d, 8760h"))?;
    let secs = match unit {
        "y" => n.checked_mul(365 * DAY),
        "d" => n.checked_mul(DAY),
        "h" => n.checked_mul(3600),
        "m" => n.checked_mul(60),
        _ => return Err(format!("`{s}` has no known unit: use y, d, h or m (e.g. 100y, 3650d)")),
    }
    .ok_or_else(|| format!("`{s}` is too long"))?;
    if secs == 0 {
        return Err(format!("`{s}` is zero: a certificate must live for some time"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    #[test]
    fn units() {
        assert_eq!(super::parse("100y").unwrap().as_secs(), 100 * 365 * 86400);
        assert_eq!(super::parse("3650d").unwrap().as_secs(), 3650 * 86400);
        assert_eq!(super::parse("8760h").unwrap().as_secs(), 8760 * 3600);
        assert!(super::parse("10").is_err());
        assert!(super::parse("0d").is_err());
        assert!(super::parse("ten years").is_err());
    }
}
