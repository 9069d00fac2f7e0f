//! The one duration syntax of clusterctl, for every timeout flag, inventory field and
//! certificate lifetime: humantime's (`90s`, `5m`, `2h`, `30d`, `100y`, `1h 30m`), except that
//! a year is 365 days (humantime says 365.25): `100y` then means what kubeasz and cfssl mean by
//! `876000h`, so certificate lifetimes match theirs to the hour.
//!
//! Inventory fields also take a bare number as seconds, which is what the older `…Secs` fields
//! (`connectTimeoutSecs`, `waitTimeoutSecs`, still accepted as aliases) held.

use std::time::Duration;

/// Parses a duration as users write it; a bare number is refused (its unit would be a guess).
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "`{s}` has no unit: write e.g. {t}s, 5m, 2h, 30d or 100y"
        ));
    }
    let bad =
        |e: String| format!("`{s}` is not a duration ({e}): write e.g. 90s, 5m, 2h, 30d or 100y");
    if t.is_empty() {
        return Err(bad("it is empty".into()));
    }
    // Each `<number><unit>` term separately, so that years can be 365 days; the rest is
    // humantime's grammar and its errors.
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let after = rest[digits..].trim_start();
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let term = &rest[..rest.len() - next.len()];
        let d = if matches!(unit, "y" | "year" | "years") && digits > 0 {
            let n: u64 = rest[..digits].parse().map_err(|e| bad(format!("{e}")))?;
            n.checked_mul(YEAR_SECS)
                .map(Duration::from_secs)
                .ok_or_else(|| bad("too long".into()))?
        } else {
            humantime::parse_duration(term).map_err(|e| bad(e.to_string()))?
        };
        total = total.checked_add(d).ok_or_else(|| bad("too long".into()))?;
        if next.len() == rest.len() {
            return Err(bad(format!("cannot read `{rest}`")));
        }
        rest = next.trim_start();
    }
    Ok(total)
}

const YEAR_SECS: u64 = 365 * 24 * 3600;

/// The form `parse` reads back (`5m`, `1h 30m`, `3650days`): whole days, never humantime's
/// 365.25-day years, so a value read, written and read again stays the same.
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    let rest = humantime::format_duration(Duration::new(rem, d.subsec_nanos())).to_string();
    match (days, rest.as_str()) {
        (0, _) => rest,
        (_, "0s") => format!("{days}d"),
        _ => format!("{days}d {rest}"),
    }
}

/// `#[serde(with = "crate::duration::serde_field")]` for a `Duration` field of the inventory:
/// written as a duration string, read from a string or from a number of seconds.
pub mod serde_field {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 90s, 5m or 2h (or a number of seconds)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map(Duration::from_secs)
                    .map_err(|_| E::custom(format!("`{v}` is negative: a duration is at least 0s")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                let t = v.trim();
                if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
                    // A quoted number: seconds, as an unquoted one.
                    return t.parse().map(Duration::from_secs).map_err(E::custom);
                }
                super::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_syntax_for_every_duration() {
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("30d").unwrap(), Duration::from_secs(30 * 86400));
        // Certificate lifetimes in the same syntax.
        assert_eq!(parse("50y").unwrap().as_secs(), 50 * 365 * 86400);
        assert_eq!(parse("100years").unwrap(), parse("876000h").unwrap());
        assert_eq!(parse("1y 2d").unwrap().as_secs(), 367 * 86400);
        assert!(parse("120").unwrap_err().contains("no unit"));
        assert!(parse("ten minutes").is_err());
        assert!(parse("5 decades").is_err());
        for d in ["90s", "5m", "2h", "1h 30m", "100y"] {
            let v = parse(d).unwrap();
            assert_eq!(parse(&format(v)).unwrap(), v, "{d}");
        }
    }

    #[derive(serde::Deserialize, serde::Serialize, PartialEq, Debug)]
    struct F {
        #[serde(with = "serde_field")]
        t: Duration,
    }

    #[test]
    fn fields_take_a_duration_or_seconds() {
        let f: F = serde_saphyr::from_str("t: 5m\n").unwrap();
        assert_eq!(f.t, Duration::from_secs(300));
        let f: F = serde_saphyr::from_str("t: 600\n").unwrap();
        assert_eq!(f.t, Duration::from_secs(600));
        assert!(serde_saphyr::from_str::<F>("t: soon\n").is_err());
        let back: F = serde_saphyr::from_str(&serde_saphyr::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
    }
}
