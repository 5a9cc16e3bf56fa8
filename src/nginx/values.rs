//! nginx's value syntaxes: times (`65`, `1800s`, `1y`, `1h30m`) and sizes (`20m`, `50M`).

use std::time::Duration;

/// An nginx time; a bare number is seconds. `None` when it does not parse.
pub(super) fn time(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(Duration::from_secs);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit_ms, len): (u64, usize) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            let ms = match rest.as_bytes().first()? {
                b's' => 1_000,
                b'm' => 60_000,
                b'h' => 3_600_000,
                b'd' => 86_400_000,
                b'w' => 604_800_000,
                b'M' => 2_592_000_000,
                b'y' => 31_536_000_000,
                _ => return None,
            };
            (ms, 1)
        };
        rest = &rest[len..];
        total = total.checked_add(Duration::from_millis(number.checked_mul(unit_ms)?))?;
    }
    Some(total)
}

/// An nginx size (`k`/`K`, `m`/`M`, `g`/`G`). `None` when it does not parse.
pub(super) fn size(text: &str) -> Option<u64> {
    let (digits, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], Some(c.to_ascii_lowercase())),
        _ => (text, None),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number: u64 = digits.parse().ok()?;
    let factor = match unit {
        None => 1,
        Some('k') => 1 << 10,
        Some('m') => 1 << 20,
        Some('g') => 1 << 30,
        Some(_) => return None,
    };
    number.checked_mul(factor)
}

/// A size as the TOML loader reads it (`"20m"`, `"64k"`, bytes otherwise).
pub(super) fn size_text(n: u64) -> String {
    if n != 0 && n % (1 << 20) == 0 {
        format!("\"{}m\"", n >> 20)
    } else if n != 0 && n % (1 << 10) == 0 {
        format!("\"{}k\"", n >> 10)
    } else {
        n.to_string()
    }
}

/// A duration as the TOML loader reads it (`"65s"`, `"500ms"`).
pub(super) fn duration_text(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(time("65"), Some(Duration::from_secs(65)));
        assert_eq!(time("1800s"), Some(Duration::from_secs(1800)));
        assert_eq!(time("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(time("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(time("1y"), Some(Duration::from_secs(31_536_000)));
        assert_eq!(time("1x"), None);
        assert_eq!(time("s"), None);
        assert_eq!(time(""), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(size("20m"), Some(20 << 20));
        assert_eq!(size("50M"), Some(50 << 20));
        assert_eq!(size("1024"), Some(1024));
        assert_eq!(size("8k"), Some(8192));
        assert_eq!(size("m"), None);
        assert_eq!(size("1t"), None);
    }
}
