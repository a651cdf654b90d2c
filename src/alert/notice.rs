//! What a notification says (pure): an incident [`Event`] turned into a [`Notice`] — the JSON a
//! webhook receives by default, what a Lua formatter gets as its `event`, and the text people
//! read. The message always says what happened: site, URL, severity, cause, when it started;
//! a reminder says how long it has been down; a resolve carries the downtime and the failed
//! checks.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::incident::{Event, Incident};

/// One notification, as stored in the outbox (`notifications.event`) and sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// Stable across retries and replays: the receiver's deduplication key.
    pub dedup_key: String,
    /// `open`, `reminder`, `resolve`, `flapping` or `flap_ended`.
    pub kind: String,
    pub site: String,
    pub url: String,
    /// `down`, `degraded` or `nodata` (absent for flapping notices).
    pub severity: Option<String>,
    pub incident_id: Option<Uuid>,
    /// RFC 3339, UTC: the first failing check.
    pub started_at: Option<String>,
    pub resolved_at: Option<String>,
    pub failure_kind: Option<String>,
    pub failure_message: Option<String>,
    pub failed_checks: Option<u64>,
    /// How long it was (or has been) down, in seconds.
    pub down_for_s: Option<i64>,
    /// 1 for the first reminder, …
    pub reminder: Option<u32>,
    /// One line for people.
    pub message: String,
}

/// The notice of `event` for `site`, or `None` when it notifies nobody. `url` is the site's
/// URL for the events that do not carry an incident.
pub fn notice(site: &str, url: &str, event: &Event) -> Notice {
    match event {
        Event::Opened(i) => Notice {
            message: format!(
                "{} is {}: {} ({}; failing since {}, {} failed check{})",
                i.site,
                i.severity.as_str().to_uppercase(),
                cause(i),
                i.url,
                time(i.started_at_us),
                i.failed_checks,
                plural(i.failed_checks)
            ),
            ..incident_notice(i, "open", format!("{}/open", i.id))
        },
        Event::Reminder(i) => Notice {
            down_for_s: Some(seconds(i.notified_at_us - i.started_at_us)),
            reminder: Some(i.reminders),
            message: format!(
                "{} is still {} after {}: {} ({}, {} failed check{})",
                i.site,
                i.severity.as_str().to_uppercase(),
                human(i.notified_at_us - i.started_at_us),
                cause(i),
                i.url,
                i.failed_checks,
                plural(i.failed_checks)
            ),
            ..incident_notice(i, "reminder", format!("{}/reminder/{}", i.id, i.reminders))
        },
        Event::Resolved { incident: i, at_us, .. } => Notice {
            resolved_at: Some(time(*at_us)),
            down_for_s: Some(seconds(at_us - i.started_at_us)),
            message: format!(
                "{} is back UP after {} {} ({} failed check{}; cause: {})",
                i.site,
                human(at_us - i.started_at_us),
                i.severity.as_str(),
                i.failed_checks,
                plural(i.failed_checks),
                cause(i)
            ),
            ..incident_notice(i, "resolve", format!("{}/resolve", i.id))
        },
        Event::Flapping { since_us, opened } => Notice {
            message: format!(
                "{site} is flapping: {opened} incidents since {}; notifications pause until it settles",
                time(*since_us)
            ),
            ..site_notice(site, url, "flapping", format!("{site}/flapping/{since_us}"))
        },
        Event::FlapEnded { at_us } => Notice {
            message: format!("{site} has stopped flapping ({}); notifications resume", time(*at_us)),
            ..site_notice(site, url, "flap_ended", format!("{site}/flap_ended/{at_us}"))
        },
    }
}

fn incident_notice(i: &Incident, kind: &str, dedup_key: String) -> Notice {
    Notice {
        severity: Some(i.severity.as_str().to_owned()),
        incident_id: Some(i.id),
        started_at: Some(time(i.started_at_us)),
        failure_kind: i.cause_kind.clone(),
        failure_message: i.cause_message.clone(),
        failed_checks: Some(i.failed_checks),
        ..site_notice(&i.site, &i.url, kind, dedup_key)
    }
}

fn site_notice(site: &str, url: &str, kind: &str, dedup_key: String) -> Notice {
    Notice {
        dedup_key,
        kind: kind.to_owned(),
        site: site.to_owned(),
        url: url.to_owned(),
        severity: None,
        incident_id: None,
        started_at: None,
        resolved_at: None,
        failure_kind: None,
        failure_message: None,
        failed_checks: None,
        down_for_s: None,
        reminder: None,
        message: String::new(),
    }
}

fn cause(i: &Incident) -> String {
    match (&i.cause_kind, &i.cause_message) {
        (Some(kind), Some(message)) => format!("{kind} — {message}"),
        (Some(kind), None) => kind.clone(),
        (None, Some(message)) => message.clone(),
        (None, None) => "no reason given".into(),
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// RFC 3339 in UTC, to the second.
pub fn time(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn seconds(us: i64) -> i64 {
    us.max(0) / 1_000_000
}

/// `1h 2m`, `7m 30s`, `45s`: a span of microseconds as people say it.
pub fn human(us: i64) -> String {
    crate::duration::human(seconds(us) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::incident::Severity;

    const MIN: i64 = 60_000_000;

    fn incident() -> Incident {
        Incident {
            id: Uuid::from_u128(7),
            site: "shop".into(),
            url: "https://shop.example/".into(),
            severity: Severity::Down,
            started_at_us: 1_700_000_000_000_000,
            failed_checks: 3,
            cause_kind: Some("timeout".into()),
            cause_message: Some("no answer within 5s".into()),
            reminders: 2,
            notified_at_us: 1_700_000_000_000_000 + 62 * MIN,
            quiet: false,
        }
    }

    #[test]
    fn notices_say_what_happened() {
        let i = incident();
        let cases: [(Event, &str, &[&str]); 4] = [
            (
                Event::Opened(i.clone()),
                "00000000-0000-0000-0000-000000000007/open",
                &[
                    "shop is DOWN",
                    "timeout — no answer within 5s",
                    "https://shop.example/",
                    "failing since 2023-11-14T22:13:20Z",
                    "3 failed checks",
                ],
            ),
            (
                Event::Reminder(i.clone()),
                "00000000-0000-0000-0000-000000000007/reminder/2",
                &["shop is still DOWN after 1h 2m", "timeout"],
            ),
            (
                Event::Resolved {
                    incident: i.clone(),
                    at_us: i.started_at_us + 7 * MIN + 30_000_000,
                    by: None,
                },
                "00000000-0000-0000-0000-000000000007/resolve",
                &["shop is back UP after 7m 30s down", "3 failed checks"],
            ),
            (
                Event::Flapping {
                    since_us: i.started_at_us,
                    opened: 4,
                },
                "shop/flapping/1700000000000000",
                &["shop is flapping: 4 incidents since"],
            ),
        ];
        for (event, key, needles) in cases {
            let n = notice("shop", "https://shop.example/", &event);
            assert_eq!(n.dedup_key, key);
            for needle in needles {
                assert!(
                    n.message.contains(needle),
                    "{}: {needle:?} not in {:?}",
                    n.kind,
                    n.message
                );
            }
        }
        let resolved = notice(
            "shop",
            "u",
            &Event::Resolved {
                incident: i.clone(),
                at_us: i.started_at_us + 7 * MIN,
                by: None,
            },
        );
        assert_eq!(resolved.down_for_s, Some(420));
        assert_eq!(resolved.failed_checks, Some(3));
    }

    #[test]
    fn durations_read_as_people_say_them() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (90, "1m 30s"),
            (3_720, "1h 2m"),
            (90_000, "1d 1h"),
        ];
        for (s, want) in cases {
            assert_eq!(human(s * 1_000_000), want);
        }
    }
}
