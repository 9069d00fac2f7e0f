//! Certificate lifetimes: the one duration syntax (`crate::duration`: `100y`, `3650d`, `8760h`),
//! and never zero.

use std::time::Duration;

/// Parses a lifetime; a year is 365.25 days, as everywhere in clusterctl.
pub fn parse(s: &str) -> Result<Duration, String> {
    let d = crate::duration::parse(s)?;
    if d.is_zero() {
        return Err(format!(
            "`{s}` is zero: a certificate must live for some time"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn units() {
        assert_eq!(super::parse("3650d").unwrap().as_secs(), 3650 * 86400);
        assert_eq!(super::parse("8760h").unwrap().as_secs(), 8760 * 3600);
        assert!(super::parse("100y").is_ok());
        assert!(super::parse("10").is_err());
        assert!(super::parse("0d").is_err());
        assert!(super::parse("ten years").is_err());
    }
}
