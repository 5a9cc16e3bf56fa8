//! Duration and size strings as nginx users write them (`"500ms"`, `"30s"`, `"30m"`, `"20m"`, `"64k"`).

use std::time::Duration;

/// Parses a duration with a mandatory unit: `ms`, `s`, `m`, `h` or `d`.
///
/// A unit is required because a bare number is ambiguous (nginx reads seconds, users
/// often mean milliseconds); `"0s"` is allowed where the caller accepts zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {text:?} needs a unit (ms, s, m, h, d)"))?;
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().map_err(|_| {
        format!("invalid duration {text:?}: expected a number and a unit like \"30s\"")
    })?;
    let millis = match unit {
        "ms" => Some(value),
        "s" => value.checked_mul(1_000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        "d" => value.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "invalid duration {text:?}: unit must be ms, s, m, h or d"
            ))
        }
    };
    millis
        .filter(|ms| *ms <= MAX_DURATION_MS)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large (at most 365d)"))
}

/// The longest duration a config may hold: timers far in the future overflow `Instant`.
const MAX_DURATION_MS: u64 = 365 * 86_400_000;

/// Parses a size in bytes with an optional nginx unit: `k`, `m`, `g` (binary multiples,
/// case-insensitive, an optional trailing `b`/`ib` is accepted: `"20m"`, `"20MiB"`, `"64k"`).
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().map_err(|_| {
        format!("invalid size {text:?}: expected a number with an optional unit k, m or g")
    })?;
    let unit = unit.to_ascii_lowercase();
    let multiplier: u64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(format!("invalid size {text:?}: unit must be k, m or g")),
    };
    value
        .checked_mul(multiplier)
        .ok_or(())
        .and_then(|size| bounded_size(size).map_err(|_| ()))
        .map_err(|_| format!("size {text:?} is too large (at most 1024g)"))
}

/// `size` if a config may hold it: at most 1 TiB, anything above is a typo.
pub(super) fn bounded_size(size: u64) -> Result<u64, String> {
    if size <= MAX_SIZE {
        Ok(size)
    } else {
        Err(format!("size {size} is too large (at most 1024g)"))
    }
}

const MAX_SIZE: u64 = 1 << 40;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1800s"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(
            parse_duration("365d"),
            Ok(Duration::from_secs(365 * 86_400))
        );
        assert!(parse_duration("366d").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("20m"), Ok(20 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("20MiB"), Ok(20 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("m").is_err());
        assert!(parse_size("12q").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1025g").is_err());
    }
}
