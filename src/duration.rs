//! Durations as operators write them, everywhere: `sites.lua` intervals and timeouts, SLO
//! windows, `prune --older-than`, `report --since`. One grammar: one or more `<integer><unit>`
//! parts (`ms`, `s`, `m`, `h`, `d`), summed; `m` is always minutes.

use std::time::Duration;

/// Units a duration may use, longest name first so `ms` is not read as `m`.
const DURATION_UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];
const DURATION_HINT: &str = "use ms, s, m, h or d, e.g. \"30s\" or \"1m30s\"";

/// Parses `"800ms"`, `"30s"`, `"1m30s"`, `"2h"`, `"30d"`: one or more `<integer><unit>` parts, summed.
/// Rejects a missing unit, fractions, negatives and zero.
pub fn parse(text: &str) -> Result<Duration, String> {
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
        if rest[digits..].starts_with('.') {
            // This part alone: `1.5s` of `1.5s200ms`.
            let fraction = rest[digits + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            let unit = rest[digits + 1 + fraction..]
                .bytes()
                .take_while(u8::is_ascii_alphabetic)
                .count();
            return Err(fraction_error(
                &rest[..digits + 1 + fraction + unit],
                DURATION_UNITS,
            ));
        }
        rest = &rest[digits..];
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

/// Why `text`, a number with a fraction and a unit (`1.5s`), is refused, with the whole number
/// of a smaller unit that says the same (`1500ms`) when there is one; `units` smallest first.
pub(crate) fn fraction_error(text: &str, units: &[(&str, u64)]) -> String {
    const REFUSED: &str = "fractions are not supported";
    let exact = || -> Option<String> {
        let unit_at = text.find(|c: char| c.is_ascii_alphabetic())?;
        let (number, unit) = text.split_at(unit_at);
        let (&(_, factor), smaller) = units
            .iter()
            .position(|(name, _)| *name == unit)
            .map(|i| (&units[i], &units[..i]))?;
        let (whole, fraction) = number.split_once('.')?;
        let scale = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
        let mantissa: u128 = format!("{whole}{fraction}").parse().ok()?;
        let base = mantissa.checked_mul(u128::from(factor))?;
        // The largest smaller unit the value is a whole number of.
        smaller.iter().rev().find_map(|&(name, f)| {
            let divisor = scale.checked_mul(u128::from(f))?;
            (base % divisor == 0).then(|| format!("{}{name}", base / divisor))
        })
    };
    match exact() {
        Some(whole) => format!("{REFUSED}: write \"{whole}\" for \"{text}\""),
        None => format!("{REFUSED}: write a whole number of a smaller unit"),
    }
}

/// Formats a duration the way it would be written: `1m30s`, `800ms`, `2h`.
pub fn format(duration: Duration) -> String {
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

/// A span of seconds as people say it: `1d 2h`, `3h 4m`, `5m 6s`, `7s` (negative counts as 0).
/// For messages and pages; [`format`] is for values an operator writes back into a config.
pub fn human(secs: f64) -> String {
    let s = secs.max(0.0).round() as i64;
    let (d, h, m, sec) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// The shortest age `prune` accepts: retention is about days, and a sub-hour value is almost
/// always a typo (`6m` for six months).
pub const MIN_RETENTION: Duration = Duration::from_secs(3_600);

/// Parses a retention age (`prune --older-than`): a duration of at least [`MIN_RETENTION`].
pub fn parse_retention(text: &str) -> Result<Duration, String> {
    let age = parse(text)?;
    if age < MIN_RETENTION {
        return Err(format!(
            "{text:?} is less than an hour; retention is given in hours or days, e.g. \"30d\""
        ));
    }
    Ok(age)
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
            ("30d", 2_592_000_000),
            ("1h2m3s4ms", 3_723_004),
            ("0s5ms", 5),
        ];
        for (text, ms) in ok {
            assert_eq!(parse(text), Ok(Duration::from_millis(ms)), "{text}");
        }
        let bad = [
            ("10", "missing unit"),
            ("abc", "expected a number"),
            ("-1s", "negative"),
            ("0s", "greater than zero"),
            ("0ms", "greater than zero"),
            ("", "empty"),
            (
                "1.5s",
                "fractions are not supported: write \"1500ms\" for \"1.5s\"",
            ),
            ("1.5m", "write \"90s\" for \"1.5m\""),
            ("1m2.25h", "write \"135m\" for \"2.25h\""),
            ("0.5ms", "write a whole number of a smaller unit"),
            ("2.5", "fractions are not supported"),
            ("10x", "unknown unit \"x\""),
            ("10 s", "missing unit"),
            ("5w", "unknown unit \"w\""),
            ("99999999999999999999s", "too large"),
            ("9999999999999999h", "too large"),
        ];
        for (text, want) in bad {
            let err = parse(text).unwrap_err();
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
            assert_eq!(format(Duration::from_millis(ms)), want);
        }
    }

    #[test]
    fn retention_is_at_least_an_hour() {
        assert_eq!(parse_retention("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_retention("1h"), Ok(Duration::from_secs(3_600)));
        for bad in ["6m", "59m59s", "0d", "", "-1d", "30"] {
            assert!(parse_retention(bad).is_err(), "{bad}");
        }
    }
}
