//! The small value languages of `sites.lua`: durations (`"1m30s"`), sizes (`"512KB"`) and
//! status classes (`"2xx"`). Pure functions; errors are the reason, without the key or value
//! (the caller adds those).

use std::time::Duration;

use super::types::StatusMatcher;

/// Units a duration may use, longest name first so `ms` is not read as `m`.
const DURATION_UNITS: &[(&str, u64)] = &[("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];
const DURATION_HINT: &str = "use ms, s, m or h, e.g. \"30s\" or \"1m30s\"";

/// Units a size may use: decimal (`KB` = 1000) and binary (`KiB` = 1024).
const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KB", 1_000),
    ("KiB", 1 << 10),
    ("MB", 1_000_000),
    ("MiB", 1 << 20),
    ("GB", 1_000_000_000),
    ("GiB", 1 << 30),
];
const SIZE_HINT: &str = "use B, KB, KiB, MB, MiB, GB or GiB, e.g. \"512KB\"";

/// Parses `"800ms"`, `"30s"`, `"1m30s"`, `"2h"`: one or more `<integer><unit>` parts, summed.
/// Rejects a missing unit, fractions, negatives and zero.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err(format!("empty; {DURATION_HINT}"));
    }
    if text.starts_with('-') {
        return Err("must not be negative".into());
    }
    let mut rest = text;
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}; {DURATION_HINT}"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| "too large".to_string())?;
        rest = &rest[digits..];
        if rest.starts_with('.') {
            return Err("fractions are not supported (write \"1500ms\", not \"1.5s\")".into());
        }
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 {
            return Err(format!("missing unit after {number}; {DURATION_HINT}"));
        }
        let unit = &rest[..unit_len];
        let Some(&(_, factor)) = DURATION_UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(format!("unknown unit {unit:?}; {DURATION_HINT}"));
        };
        total_ms = number
            .checked_mul(factor)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| "too large".to_string())?;
        rest = &rest[unit_len..];
    }
    if total_ms == 0 {
        return Err("must be greater than zero".into());
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration the way it would be written: `1m30s`, `800ms`, `2h`.
pub(crate) fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (name, factor) in DURATION_UNITS.iter().rev() {
        let factor = u128::from(*factor);
        if ms >= factor {
            out.push_str(&format!("{}{name}", ms / factor));
            ms %= factor;
        }
    }
    out
}

/// Parses `"512KB"`, `"2MiB"`, `"100B"`: an integer and a unit. Rejects a missing unit,
/// fractions, negatives and zero.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    if text.starts_with('-') {
        return Err("must not be negative".into());
    }
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!("expected a number; {SIZE_HINT}"));
    }
    let number: u64 = text[..digits]
        .parse()
        .map_err(|_| "too large".to_string())?;
    let unit = &text[digits..];
    if unit.starts_with('.') {
        return Err("fractions are not supported (write \"1500KB\", not \"1.5MB\")".into());
    }
    if unit.is_empty() {
        return Err(format!("missing unit; {SIZE_HINT}"));
    }
    let Some(&(_, factor)) = SIZE_UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(format!("unknown unit {unit:?}; {SIZE_HINT}"));
    };
    let bytes = number
        .checked_mul(factor)
        .ok_or_else(|| "too large".to_string())?;
    if bytes == 0 {
        return Err("must be greater than zero".into());
    }
    Ok(bytes)
}

/// An exact status code, 100 to 599.
pub(crate) fn status_code(code: i64) -> Result<StatusMatcher, String> {
    match u16::try_from(code) {
        Ok(code @ 100..=599) => Ok(StatusMatcher::Exact(code)),
        _ => Err("status codes go from 100 to 599".into()),
    }
}

/// A status class: `"2xx"` (or `"2XX"`), first digit 1 to 5.
pub(crate) fn status_class(text: &str) -> Result<StatusMatcher, String> {
    let bytes = text.as_bytes();
    match bytes {
        [digit @ b'1'..=b'5', x1, x2]
            if x1.eq_ignore_ascii_case(&b'x') && x2.eq_ignore_ascii_case(&b'x') =>
        {
            Ok(StatusMatcher::Class(digit - b'0'))
        }
        _ => Err("expected a code such as 200 or a class such as \"2xx\" (1xx to 5xx)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("800ms", 800),
            ("30s", 30_000),
            ("1m", 60_000),
            ("1m30s", 90_000),
            ("2h", 7_200_000),
            ("1h2m3s4ms", 3_723_004),
            ("0s5ms", 5),
        ];
        for (text, ms) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        let bad = [
            ("10", "missing unit"),
            ("abc", "expected a number"),
            ("-1s", "negative"),
            ("0s", "greater than zero"),
            ("0ms", "greater than zero"),
            ("", "empty"),
            ("1.5s", "fractions"),
            ("10x", "unknown unit \"x\""),
            ("10 s", "missing unit"),
            ("5d", "unknown unit \"d\""),
            ("99999999999999999999s", "too large"),
            ("9999999999999999h", "too large"),
        ];
        for (text, want) in bad {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn formats_durations() {
        let cases = [
            (800, "800ms"),
            (30_000, "30s"),
            (90_000, "1m30s"),
            (7_200_000, "2h"),
            (1_500, "1s500ms"),
        ];
        for (ms, want) in cases {
            assert_eq!(format_duration(Duration::from_millis(ms)), want);
        }
    }

    #[test]
    fn sizes() {
        let ok = [
            ("100B", 100),
            ("512KB", 512_000),
            ("1KiB", 1024),
            ("2MB", 2_000_000),
            ("2MiB", 2 << 20),
            ("1GB", 1_000_000_000),
            ("1GiB", 1 << 30),
        ];
        for (text, bytes) in ok {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        let bad = [
            ("512", "missing unit"),
            ("KB", "expected a number"),
            ("-1KB", "negative"),
            ("0B", "greater than zero"),
            ("1.5MB", "fractions"),
            ("10kb", "unknown unit \"kb\""),
            ("10 KB", "unknown unit"),
            ("99999999999GiB", "too large"),
        ];
        for (text, want) in bad {
            let err = parse_size(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn statuses() {
        let cases = [
            (status_code(200), Some(StatusMatcher::Exact(200))),
            (status_code(599), Some(StatusMatcher::Exact(599))),
            (status_code(99), None),
            (status_code(600), None),
            (status_code(-200), None),
            (status_class("2xx"), Some(StatusMatcher::Class(2))),
            (status_class("5XX"), Some(StatusMatcher::Class(5))),
            (status_class("6xx"), None),
            (status_class("0xx"), None),
            (status_class("2x"), None),
            (status_class("200"), None),
            (status_class("ok"), None),
        ];
        for (i, (got, want)) in cases.into_iter().enumerate() {
            assert_eq!(got.ok(), want, "case {i}");
        }
    }
}
