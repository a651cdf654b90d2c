//! When a maintenance window is open: pure arithmetic over [`MaintenanceWindow`]s, used by the
//! check runner to label results probed inside a window (`CheckResult::maintenance`) and by
//! anything else that must leave maintenance out (alerts, SLOs).
//!
//! A weekly window opens on each of its days at its local start time in its time zone and stays
//! open for its duration, which may run past midnight or into the next week. Local times that do
//! not exist or exist twice on a DST change day resolve to the earliest valid instant:
//!
//! - in a gap (02:30 on the day Europe/Berlin springs forward) the window opens at the first
//!   local time that exists after it (03:00 CEST) and still lasts its full duration;
//! - in an overlap (02:30 on the day it falls back, which happens twice) it opens at the first
//!   of the two (02:30 CEST, 00:30 UTC).

use chrono::{DateTime, Datelike, Days, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

use super::types::{Config, MaintenanceSchedule, MaintenanceWindow, MAX_MAINTENANCE};

/// Local dates examined before the one `at` falls on: a window lasts at most
/// [`MAX_MAINTENANCE`] (7 days), plus one for the time zone's offset.
const DAYS_BACK: u64 = MAX_MAINTENANCE.as_secs() / 86_400 + 1;
/// Longest DST (or calendar) gap a local start time is moved across, in minutes: a whole day,
/// as when Samoa skipped 30 December 2011.
const MAX_GAP_MINUTES: u32 = 24 * 60;

impl MaintenanceWindow {
    /// Whether this window covers `site` (it lists it, or lists none) and is open at `at`.
    pub fn covers(&self, site: &str, at: DateTime<Utc>) -> bool {
        (self.sites.is_empty() || self.sites.iter().any(|s| s == site)) && self.schedule.is_open(at)
    }
}

impl MaintenanceSchedule {
    /// Whether the window is open at `at`: from its start (included) for its duration
    /// (excluded).
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        match self {
            MaintenanceSchedule::Once { start, duration } => within(*start, *duration, at),
            MaintenanceSchedule::Weekly {
                days,
                start,
                duration,
                tz,
            } => {
                let today = at.with_timezone(tz).date_naive();
                (0..=DAYS_BACK)
                    .filter_map(|back| today.checked_sub_days(Days::new(back)))
                    .filter(|date| days.contains(&date.weekday()))
                    .any(|date| within(earliest_instant(*tz, date.and_time(*start)), *duration, at))
            }
        }
    }
}

impl Config {
    /// The name of the first declared maintenance window covering `site` at `at`.
    pub fn maintenance_at(&self, site: &str, at: DateTime<Utc>) -> Option<&str> {
        window_at(&self.maintenance, site, at)
    }
}

/// The name of the first of `windows` covering `site` at `at`.
pub(crate) fn window_at<'a>(
    windows: &'a [MaintenanceWindow],
    site: &str,
    at: DateTime<Utc>,
) -> Option<&'a str> {
    windows
        .iter()
        .find(|w| w.covers(site, at))
        .map(|w| w.name.as_str())
}

fn within(start: DateTime<Utc>, duration: std::time::Duration, at: DateTime<Utc>) -> bool {
    // Durations are validated to at most a week, so the conversion cannot fail.
    let end = TimeDelta::from_std(duration)
        .ok()
        .and_then(|d| start.checked_add_signed(d));
    start <= at && end.is_some_and(|end| at < end)
}

/// The instant the local time `local` in `tz` stands for: the earlier one when it happens twice,
/// the first existing local time after it when it does not happen at all (see the module doc).
pub(crate) fn earliest_instant(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let mut probe = local;
    for _ in 0..=MAX_GAP_MINUTES {
        match tz.from_local_datetime(&probe) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => return t.with_timezone(&Utc),
            LocalResult::None => probe += TimeDelta::minutes(1),
        }
    }
    // No zone has a gap this long; read the clock as UTC rather than fail.
    Utc.from_utc_datetime(&local)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{NaiveTime, Weekday};

    use super::*;
    use crate::config::Location;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn hours(h: u64) -> Duration {
        Duration::from_secs(h * 3_600)
    }

    fn weekly(days: &[Weekday], start: &str, duration: Duration, tz: Tz) -> MaintenanceSchedule {
        MaintenanceSchedule::Weekly {
            days: days.to_vec(),
            start: NaiveTime::parse_from_str(start, "%H:%M").unwrap(),
            duration,
            tz,
        }
    }

    fn window(name: &str, sites: &[&str], schedule: MaintenanceSchedule) -> MaintenanceWindow {
        MaintenanceWindow {
            name: name.into(),
            sites: sites.iter().map(|s| s.to_string()).collect(),
            schedule,
            location: Location {
                file: "sites.lua".into(),
                line: 1,
            },
        }
    }

    #[test]
    fn weekly_windows() {
        use chrono_tz::{Europe::Berlin, UTC};
        // 2026-03-29 is a Sunday: Europe/Berlin springs forward at 02:00 CET (01:00 UTC) to
        // 03:00 CEST. 2026-10-25 is a Sunday: it falls back at 03:00 CEST (01:00 UTC) to 02:00.
        let cases: [(&str, MaintenanceSchedule, &str, bool); 24] = [
            // Sunday 02:00–03:00 UTC.
            (
                "sun 2h",
                weekly(&[Weekday::Sun], "02:00", hours(1), UTC),
                "2026-06-07T02:00:00Z",
                true,
            ),
            (
                "sun 2h",
                weekly(&[Weekday::Sun], "02:00", hours(1), UTC),
                "2026-06-07T02:59:59Z",
                true,
            ),
            (
                "sun 2h: end excluded",
                weekly(&[Weekday::Sun], "02:00", hours(1), UTC),
                "2026-06-07T03:00:00Z",
                false,
            ),
            (
                "sun 2h: before",
                weekly(&[Weekday::Sun], "02:00", hours(1), UTC),
                "2026-06-07T01:59:59Z",
                false,
            ),
            (
                "sun 2h: monday",
                weekly(&[Weekday::Sun], "02:00", hours(1), UTC),
                "2026-06-08T02:30:00Z",
                false,
            ),
            // Across midnight: Saturday 23:00 for 2 h covers Sunday 00:30, not Sunday 01:00.
            (
                "sat night",
                weekly(&[Weekday::Sat], "23:00", hours(2), UTC),
                "2026-06-07T00:30:00Z",
                true,
            ),
            (
                "sat night: over",
                weekly(&[Weekday::Sat], "23:00", hours(2), UTC),
                "2026-06-07T01:00:00Z",
                false,
            ),
            // Across the week's end: Sunday 22:00 for 4 h covers Monday 01:00.
            (
                "sun into mon",
                weekly(&[Weekday::Sun], "22:00", hours(4), UTC),
                "2026-06-08T01:00:00Z",
                true,
            ),
            // A whole week from Monday 00:00 covers the following Sunday 23:59.
            (
                "7 days",
                weekly(&[Weekday::Mon], "00:00", hours(168), UTC),
                "2026-06-14T23:59:00Z",
                true,
            ),
            (
                "several days",
                weekly(&[Weekday::Tue, Weekday::Thu], "12:00", hours(1), UTC),
                "2026-06-11T12:10:00Z",
                true,
            ),
            (
                "several days: other",
                weekly(&[Weekday::Tue, Weekday::Thu], "12:00", hours(1), UTC),
                "2026-06-10T12:10:00Z",
                false,
            ),
            // Local time: 02:00 in Berlin is 00:00 UTC in summer, 01:00 UTC in winter.
            (
                "berlin summer",
                weekly(&[Weekday::Sun], "02:00", hours(1), Berlin),
                "2026-06-07T00:30:00Z",
                true,
            ),
            (
                "berlin summer: utc hour",
                weekly(&[Weekday::Sun], "02:00", hours(1), Berlin),
                "2026-06-07T02:30:00Z",
                false,
            ),
            (
                "berlin winter",
                weekly(&[Weekday::Sun], "02:00", hours(1), Berlin),
                "2026-12-06T01:30:00Z",
                true,
            ),
            // Local date differs from the UTC date: Monday 00:30 Berlin is Sunday 22:30 UTC.
            (
                "berlin monday",
                weekly(&[Weekday::Mon], "00:30", hours(1), Berlin),
                "2026-06-07T22:45:00Z",
                true,
            ),
            // Spring forward: 02:30 does not exist; the window opens at 03:00 CEST (01:00 UTC)
            // and lasts its full hour.
            (
                "gap: before",
                weekly(&[Weekday::Sun], "02:30", hours(1), Berlin),
                "2026-03-29T00:59:59Z",
                false,
            ),
            (
                "gap: opens at 03:00",
                weekly(&[Weekday::Sun], "02:30", hours(1), Berlin),
                "2026-03-29T01:00:00Z",
                true,
            ),
            (
                "gap: full hour",
                weekly(&[Weekday::Sun], "02:30", hours(1), Berlin),
                "2026-03-29T01:59:59Z",
                true,
            ),
            (
                "gap: closed",
                weekly(&[Weekday::Sun], "02:30", hours(1), Berlin),
                "2026-03-29T02:00:00Z",
                false,
            ),
            // Fall back: 02:30 happens twice; the window opens at the first (00:30 UTC).
            (
                "overlap: first",
                weekly(&[Weekday::Sun], "02:30", hours(1), Berlin),
                "2026-10-25T00:30:00Z",
                true,
            ),
            (
                "overlap: before",
                weekly(&[Weekday::Sun], "02:30", hours(1), Berlin),
                "2026-10-25T00:29:00Z",
                false,
            ),
            (
                "overlap: one hour",
                weekly(&[Weekday::Sun], "02:30", hours(1), Berlin),
                "2026-10-25T01:30:00Z",
                false,
            ),
            // A window spanning the change lasts its duration in real time: 01:00 CET + 3 h.
            (
                "spanning spring",
                weekly(&[Weekday::Sun], "01:00", hours(3), Berlin),
                "2026-03-29T02:59:00Z",
                true,
            ),
            (
                "spanning spring: end",
                weekly(&[Weekday::Sun], "01:00", hours(3), Berlin),
                "2026-03-29T03:00:00Z",
                false,
            ),
        ];
        for (name, schedule, at, want) in cases {
            assert_eq!(schedule.is_open(utc(at)), want, "{name} at {at}");
        }
    }

    #[test]
    fn one_off_windows() {
        let once = MaintenanceSchedule::Once {
            start: utc("2026-12-24T18:00:00Z"),
            duration: hours(4),
        };
        let cases = [
            ("2026-12-24T17:59:59Z", false),
            ("2026-12-24T18:00:00Z", true),
            ("2026-12-24T20:00:00+01:00", true),
            ("2026-12-24T21:59:59Z", true),
            ("2026-12-24T22:00:00Z", false),
            ("2027-12-24T18:30:00Z", false),
        ];
        for (at, want) in cases {
            assert_eq!(once.is_open(utc(at)), want, "{at}");
        }
    }

    #[test]
    fn site_filters_and_first_window_wins() {
        let every_day = [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
            Weekday::Sun,
        ];
        let always = || weekly(&every_day, "00:00", hours(24), chrono_tz::UTC);
        let never = MaintenanceSchedule::Once {
            start: utc("2000-01-01T00:00:00Z"),
            duration: hours(1),
        };
        let windows = [
            window("past", &[], never),
            window("shop-only", &["shop"], always()),
            window("everyone", &[], always()),
        ];
        let at = utc("2026-06-07T12:00:00Z");
        let cases = [("shop", Some("shop-only")), ("api", Some("everyone"))];
        for (site, want) in cases {
            assert_eq!(window_at(&windows, site, at), want, "{site}");
        }
        assert!(!windows[1].covers("api", at));
        assert!(windows[1].covers("shop", at));
        assert_eq!(window_at(&windows[..2], "api", at), None);
    }

    #[test]
    fn earliest_instants() {
        use chrono_tz::{Europe::Berlin, Pacific::Apia};
        let local = |text: &str| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap();
        let cases = [
            (Berlin, "2026-03-29 02:30", "2026-03-29T01:00:00Z"),
            (Berlin, "2026-10-25 02:30", "2026-10-25T00:30:00Z"),
            (Berlin, "2026-06-07 02:30", "2026-06-07T00:30:00Z"),
            // Samoa skipped 30 December 2011: its noon is the next day's midnight.
            (Apia, "2011-12-30 12:00", "2011-12-30T10:00:00Z"),
        ];
        for (tz, text, want) in cases {
            assert_eq!(earliest_instant(tz, local(text)), utc(want), "{tz} {text}");
        }
    }
}
