//! The small value languages of `sites.lua`: durations (`"1m30s"`, in [`crate::duration`]), sizes (`"512KB"`),
//! status classes (`"2xx"`), and the days and times of maintenance windows (`"Sun"`, `"02:00"`).
//! Pure functions; errors are the reason, without the key or value (the caller adds those).

use chrono::{NaiveTime, Weekday};

use super::types::StatusMatcher;
pub(crate) use crate::duration::{format as format_duration, parse as parse_duration};

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
        // Within the unit's family: 1.5MB is 1500KB, 1.5MiB is 1536KiB.
        let binary = text.ends_with("iB");
        let family: Vec<(&str, u64)> = SIZE_UNITS
            .iter()
            .filter(|(name, _)| *name == "B" || name.ends_with("iB") == binary)
            .copied()
            .collect();
        return Err(crate::duration::fraction_error(text, &family));
    }
    if unit.is_empty() {
        return Err(format!(
            "missing unit: write \"{number}B\" (or the number {number}, in bytes); {SIZE_HINT}"
        ));
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

/// A day of the week: `"Mon"` to `"Sun"`, or the full name, in any case.
pub(crate) fn parse_weekday(text: &str) -> Option<Weekday> {
    text.parse().ok()
}

/// A local time of day `"HH:MM"`, `00:00` to `23:59` (a one-digit hour is accepted: `"2:00"`).
pub(crate) fn parse_time_of_day(text: &str) -> Option<NaiveTime> {
    let (hour, minute) = text.split_once(':')?;
    let digits = |s: &str, len: std::ops::RangeInclusive<usize>| {
        (len.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    NaiveTime::from_hms_opt(digits(hour, 1..=2)?, digits(minute, 2..=2)?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            (
                "512",
                "missing unit: write \"512B\" (or the number 512, in bytes)",
            ),
            ("KB", "expected a number"),
            ("-1KB", "negative"),
            ("0B", "greater than zero"),
            ("1.5MB", "write \"1500KB\" for \"1.5MB\""),
            ("1.5KB", "write \"1500B\" for \"1.5KB\""),
            ("1.5MiB", "write \"1536KiB\" for \"1.5MiB\""),
            ("0.1KiB", "write a whole number of a smaller unit"),
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

    #[test]
    fn weekdays_and_times_of_day() {
        let days = [
            ("Sun", Some(Weekday::Sun)),
            ("mon", Some(Weekday::Mon)),
            ("Saturday", Some(Weekday::Sat)),
            ("Sunday ", None),
            ("So", None),
            ("day", None),
            ("", None),
        ];
        for (text, want) in days {
            assert_eq!(parse_weekday(text), want, "{text:?}");
        }
        let hm = |h, m| NaiveTime::from_hms_opt(h, m, 0);
        let times = [
            ("02:00", hm(2, 0)),
            ("2:00", hm(2, 0)),
            ("23:59", hm(23, 59)),
            ("00:00", hm(0, 0)),
            ("24:00", None),
            ("12:60", None),
            ("12:5", None),
            ("12", None),
            ("1200", None),
            ("+1:00", None),
            ("12:00:00", None),
            ("", None),
        ];
        for (text, want) in times {
            assert_eq!(parse_time_of_day(text), want, "{text:?}");
        }
    }
}
