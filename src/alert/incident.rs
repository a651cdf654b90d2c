//! The incident state machine of one site (pure): results in, incidents and notification events
//! out. The alerter folds each site's results into its [`AlertState`] in Kafka order — one site =
//! one key = one partition — so replaying the topic rebuilds the same incidents, with the same
//! ids, and the same events.
//!
//! ```text
//!          failing result (down/degraded)                 ≥ after in a row, or failing ≥ for
//!  passing ─────────────────────────────► failing run ──────────────────────────────► OPEN ─┐
//!     ▲                                       │ passing result                        │    │ failing:
//!     └───────────────────────────────────────┘          ≥ recover_after passing ◄───┘    │ remind
//!                                                          in a row: RESOLVED              ▼ every `remind`
//! ```
//!
//! - An incident starts at its run's first failing check (backdated) and its id derives from that
//!   check's result id: replaying the same results opens the same incident.
//! - Severity is `down` when any check of the run was down, else `degraded`; `nodata` incidents
//!   open when results stop arriving (see [`AlertState::check_nodata`]) and resolve with the
//!   next result.
//! - Results probed in a maintenance window are left out: they neither fail nor pass.
//! - Flapping: when `flap.count` incidents open within `flap.window`, one `Flapping` event is
//!   sent instead of the open/resolve storm; incidents are still recorded, quietly, until no
//!   incident has opened for a whole window (`FlapEnded`).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::AlertRule;
use crate::result::Outcome;

/// How many intervals without a result make a `nodata` incident.
pub const NODATA_INTERVALS: i64 = 3;

/// UUID v5 namespace of incident ids (a fixed random value: ids are stable across versions).
const INCIDENT_NAMESPACE: Uuid = Uuid::from_u128(0x5c1d_8f3a_2b4e_4c6d_9a70_1e2f_3b4c_5d6e);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Down,
    Degraded,
    Nodata,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Down => "down",
            Severity::Degraded => "degraded",
            Severity::Nodata => "nodata",
        }
    }
}

/// The facts of one result the machine looks at.
#[derive(Debug, Clone)]
pub struct Seen<'a> {
    pub id: Uuid,
    pub at_us: i64,
    pub outcome: Outcome,
    pub url: &'a str,
    pub failure_kind: Option<&'a str>,
    pub failure_message: Option<&'a str>,
    /// Probed inside this maintenance window.
    pub maintenance: Option<&'a str>,
}

/// An open or closed incident, as stored and as notifications describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: Uuid,
    pub site: String,
    pub url: String,
    pub severity: Severity,
    /// The first failing check's scheduled time (unix µs).
    pub started_at_us: i64,
    /// Failing checks so far.
    pub failed_checks: u64,
    pub cause_kind: Option<String>,
    pub cause_message: Option<String>,
    /// Reminders sent so far.
    pub reminders: u32,
    /// Last open or reminder notification (unix µs): the next reminder is `remind` after it.
    pub notified_at_us: i64,
    /// Opened while flapping: recorded, but its open and resolve notify nobody.
    pub quiet: bool,
}

/// What happened, for the incidents table and the notification outbox.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Opened(Incident),
    Reminder(Incident),
    /// The incident as it closed, with when (unix µs) and which result closed it.
    Resolved {
        incident: Incident,
        at_us: i64,
        by: Option<Uuid>,
    },
    /// `opened` incidents opened within the flap window; notifications pause.
    Flapping {
        since_us: i64,
        opened: u32,
    },
    /// No incident opened for a whole flap window; notifications resume.
    FlapEnded {
        at_us: i64,
    },
}

impl Event {
    /// Whether this event notifies anyone (quiet incidents and `on_resolved = false` do not).
    pub fn notifies(&self, rule: &AlertRule) -> bool {
        match self {
            Event::Opened(i) | Event::Reminder(i) => !i.quiet,
            Event::Resolved { incident, .. } => !incident.quiet && rule.on_resolved,
            Event::Flapping { .. } | Event::FlapEnded { .. } => true,
        }
    }
}

/// The run of failing checks not (yet) covered by an incident, or the one behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FailingRun {
    first_id: Uuid,
    first_at_us: i64,
    count: u64,
    worst: Severity,
    kind: Option<String>,
    message: Option<String>,
}

/// One site's alerting state, stored as JSON in `alert_state` between batches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    /// Latest result folded in (unix µs and id); `None` before the first.
    pub last_at_us: Option<i64>,
    pub last_id: Option<Uuid>,
    failing: Option<FailingRun>,
    /// Passing checks in a row while an incident is open.
    passing: u32,
    pub open: Option<Incident>,
    /// When incidents opened, within the flap window.
    opened_at_us: Vec<i64>,
    flapping: bool,
}

impl AlertState {
    /// Folds one result in. Results older than the latest one (late arrivals) are ignored.
    pub fn observe(&mut self, site: &str, rule: &AlertRule, seen: &Seen<'_>) -> Vec<Event> {
        if self.last_at_us.is_some_and(|last| seen.at_us < last) {
            return Vec::new();
        }
        self.last_at_us = Some(seen.at_us);
        self.last_id = Some(seen.id);
        let mut events = self.end_flapping(rule, seen.at_us);
        // Results resume: a no-data incident is over, whatever this one says.
        if self
            .open
            .as_ref()
            .is_some_and(|i| i.severity == Severity::Nodata)
        {
            events.extend(self.resolve(seen.at_us, Some(seen.id)));
        }
        if seen.maintenance.is_some() {
            return events;
        }
        let failing = seen.outcome != Outcome::Up;
        if failing {
            self.passing = 0;
            self.record_failure(seen);
            if let Some(open) = self.open.as_mut() {
                open.failed_checks += 1;
                if seen.outcome == Outcome::Down {
                    open.severity = Severity::Down;
                }
                let remind_us = rule.remind.map(|r| r.as_micros() as i64);
                if remind_us.is_some_and(|r| seen.at_us - open.notified_at_us >= r) {
                    open.reminders += 1;
                    open.notified_at_us = seen.at_us;
                    events.push(Event::Reminder(open.clone()));
                }
            } else if self.threshold_reached(rule, seen.at_us) {
                events.extend(self.open(site, rule, seen));
            }
        } else if self.open.is_some() {
            self.passing += 1;
            if self.passing >= rule.recover_after.max(1) {
                events.extend(self.resolve(seen.at_us, Some(seen.id)));
            }
        } else {
            self.failing = None;
        }
        events
    }

    /// Opens a `nodata` incident when no result of the site has arrived for more than
    /// [`NODATA_INTERVALS`] × `interval` (`silent_us`: wall-clock time since the alerter last
    /// received one — not the results' own times, so an alerter catching up on a backlog sees
    /// no false silence), for a site with no incident open and at least one result seen.
    pub fn check_nodata(
        &mut self,
        site: &str,
        url: &str,
        interval_us: i64,
        silent_us: i64,
        now_us: i64,
    ) -> Option<Event> {
        let (last_at, last_id) = (self.last_at_us?, self.last_id?);
        if self.open.is_some() || silent_us <= NODATA_INTERVALS * interval_us {
            return None;
        }
        let incident = Incident {
            id: Uuid::new_v5(&INCIDENT_NAMESPACE, format!("nodata:{last_id}").as_bytes()),
            site: site.to_owned(),
            url: url.to_owned(),
            severity: Severity::Nodata,
            started_at_us: last_at + interval_us,
            failed_checks: 0,
            cause_kind: Some("nodata".into()),
            cause_message: Some(format!(
                "no result for {} intervals",
                silent_us / interval_us.max(1)
            )),
            reminders: 0,
            notified_at_us: now_us,
            quiet: false,
        };
        self.open = Some(incident.clone());
        Some(Event::Opened(incident))
    }

    fn record_failure(&mut self, seen: &Seen<'_>) {
        let severity = match seen.outcome {
            Outcome::Down => Severity::Down,
            _ => Severity::Degraded,
        };
        let run = self.failing.get_or_insert(FailingRun {
            first_id: seen.id,
            first_at_us: seen.at_us,
            count: 0,
            worst: severity,
            kind: None,
            message: None,
        });
        run.count += 1;
        if severity == Severity::Down {
            run.worst = Severity::Down;
        }
        if run.kind.is_none() || severity == Severity::Down {
            run.kind = seen.failure_kind.map(str::to_owned);
            run.message = seen.failure_message.map(str::to_owned);
        }
    }

    fn threshold_reached(&self, rule: &AlertRule, now_us: i64) -> bool {
        let Some(run) = &self.failing else {
            return false;
        };
        let long_enough = rule
            .for_
            .is_some_and(|f| now_us - run.first_at_us >= f.as_micros() as i64);
        run.count >= u64::from(rule.after.max(1)) || long_enough
    }

    fn open(&mut self, site: &str, rule: &AlertRule, seen: &Seen<'_>) -> Vec<Event> {
        let Some(run) = &self.failing else {
            return Vec::new();
        };
        let mut events = Vec::new();
        if let Some(flap) = &rule.flap {
            let window = flap.window.as_micros() as i64;
            self.opened_at_us.retain(|at| seen.at_us - at < window);
            self.opened_at_us.push(seen.at_us);
            let opened = self.opened_at_us.len() as u32;
            if !self.flapping && opened >= flap.count {
                self.flapping = true;
                events.push(Event::Flapping {
                    since_us: self.opened_at_us[0],
                    opened,
                });
            }
        }
        let incident = Incident {
            id: Uuid::new_v5(&INCIDENT_NAMESPACE, run.first_id.as_bytes()),
            site: site.to_owned(),
            url: seen.url.to_owned(),
            severity: run.worst,
            started_at_us: run.first_at_us,
            failed_checks: run.count,
            cause_kind: run.kind.clone(),
            cause_message: run.message.clone(),
            reminders: 0,
            notified_at_us: seen.at_us,
            quiet: self.flapping,
        };
        self.open = Some(incident.clone());
        events.push(Event::Opened(incident));
        events
    }

    fn resolve(&mut self, at_us: i64, by: Option<Uuid>) -> Option<Event> {
        let incident = self.open.take()?;
        self.failing = None;
        self.passing = 0;
        Some(Event::Resolved {
            incident,
            at_us,
            by,
        })
    }

    /// Flapping ends once no incident has opened for a whole window.
    fn end_flapping(&mut self, rule: &AlertRule, now_us: i64) -> Vec<Event> {
        let window = rule
            .flap
            .as_ref()
            .map_or(0, |f| f.window.as_micros() as i64);
        let calm = self
            .opened_at_us
            .last()
            .is_none_or(|last| now_us - last >= window);
        if self.flapping && calm {
            self.flapping = false;
            self.opened_at_us.clear();
            return vec![Event::FlapEnded { at_us: now_us }];
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::FlapRule;
    use Outcome::{Degraded, Down, Up};

    const MIN: i64 = 60_000_000;

    fn rule() -> AlertRule {
        AlertRule {
            notify: vec!["ops".into()],
            after: 3,
            recover_after: 2,
            for_: None,
            remind: None,
            on_resolved: true,
            flap: None,
        }
    }

    fn seen(n: u128, minute: i64, outcome: Outcome) -> Seen<'static> {
        Seen {
            id: Uuid::from_u128(n),
            at_us: minute * MIN,
            outcome,
            url: "https://shop.example/",
            failure_kind: (outcome != Up).then_some("timeout"),
            failure_message: (outcome != Up).then_some("no answer in 5s"),
            maintenance: None,
        }
    }

    /// Feeds `outcomes` one a minute; returns a compact trace of the events.
    fn trace(rule: &AlertRule, outcomes: &[Outcome]) -> Vec<String> {
        let mut state = AlertState::default();
        let mut out = Vec::new();
        for (i, outcome) in outcomes.iter().enumerate() {
            for event in state.observe("shop", rule, &seen(i as u128, i as i64, *outcome)) {
                out.push(match event {
                    Event::Opened(i) => format!(
                        "open {} at {} after {}",
                        i.severity.as_str(),
                        i.started_at_us / MIN,
                        i.failed_checks
                    ),
                    Event::Reminder(i) => format!("remind {}", i.reminders),
                    Event::Resolved {
                        incident, at_us, ..
                    } => format!(
                        "resolve after {}m, {} failed",
                        (at_us - incident.started_at_us) / MIN,
                        incident.failed_checks
                    ),
                    Event::Flapping { opened, .. } => format!("flapping {opened}"),
                    Event::FlapEnded { at_us } => format!("calm at {}", at_us / MIN),
                });
            }
        }
        out
    }

    #[test]
    fn thresholds_open_backdated_and_resolve_with_duration() {
        let cases: [(&str, AlertRule, Vec<Outcome>, Vec<&str>); 6] = [
            (
                "two failures: below after",
                rule(),
                vec![Up, Down, Down, Up, Up],
                vec![],
            ),
            (
                "after 3, recover after 2",
                rule(),
                vec![Up, Down, Down, Down, Down, Up, Down, Up, Up],
                vec!["open down at 1 after 3", "resolve after 7m, 5 failed"],
            ),
            (
                "degraded only",
                rule(),
                vec![Degraded, Degraded, Degraded, Up, Up],
                vec!["open degraded at 0 after 3", "resolve after 4m, 3 failed"],
            ),
            (
                "after 1",
                AlertRule {
                    after: 1,
                    recover_after: 1,
                    ..rule()
                },
                vec![Down, Up],
                vec!["open down at 0 after 1", "resolve after 1m, 1 failed"],
            ),
            (
                "for 2m opens before after",
                AlertRule {
                    after: 10,
                    for_: Some(Duration::from_secs(120)),
                    ..rule()
                },
                vec![Down, Down, Down],
                vec!["open down at 0 after 3"],
            ),
            (
                "reminders every 2m while down",
                AlertRule {
                    remind: Some(Duration::from_secs(120)),
                    ..rule()
                },
                vec![Down, Down, Down, Down, Down, Down, Down],
                vec!["open down at 0 after 3", "remind 1", "remind 2"],
            ),
        ];
        for (name, rule, outcomes, want) in cases {
            assert_eq!(trace(&rule, &outcomes), want, "{name}");
        }
    }

    #[test]
    fn flapping_sends_one_notice_then_calm() {
        let rule = AlertRule {
            after: 1,
            recover_after: 1,
            flap: Some(FlapRule {
                count: 3,
                window: Duration::from_secs(600),
            }),
            ..rule()
        };
        let mut outcomes = vec![Down, Up, Down, Up, Down, Up, Down, Up];
        outcomes.extend([Up; 12]);
        outcomes.push(Down);
        let got = trace(&rule, &outcomes);
        assert_eq!(
            got,
            vec![
                "open down at 0 after 1",
                "resolve after 1m, 1 failed",
                "open down at 2 after 1",
                "resolve after 1m, 1 failed",
                "flapping 3",
                "open down at 4 after 1",
                "resolve after 1m, 1 failed",
                "open down at 6 after 1",
                "resolve after 1m, 1 failed",
                "calm at 16",
                "open down at 20 after 1",
            ]
        );
        // The incidents during the flapping are quiet: recorded, not notified.
        let mut state = AlertState::default();
        let mut quiet = Vec::new();
        for (i, outcome) in outcomes.iter().enumerate() {
            for event in state.observe("shop", &rule, &seen(i as u128, i as i64, *outcome)) {
                if let Event::Opened(incident) = &event {
                    quiet.push(!event.notifies(&rule) && incident.quiet);
                }
            }
        }
        assert_eq!(quiet, vec![false, false, true, true, false]);
    }

    #[test]
    fn maintenance_results_neither_fail_nor_pass_and_late_ones_are_ignored() {
        let mut state = AlertState::default();
        let r = rule();
        let mut in_window = seen(1, 1, Down);
        in_window.maintenance = Some("db-sunday");
        for i in 0..5 {
            let mut s = in_window.clone();
            s.at_us = i * MIN;
            assert!(state.observe("shop", &r, &s).is_empty());
        }
        assert!(state.observe("shop", &r, &seen(9, 5, Down)).is_empty());
        assert!(
            state.observe("shop", &r, &seen(10, 2, Down)).is_empty(),
            "late"
        );
        assert!(state.observe("shop", &r, &seen(11, 6, Down)).is_empty());
        assert_eq!(
            state.observe("shop", &r, &seen(12, 7, Down)).len(),
            1,
            "third failure"
        );
    }

    #[test]
    fn the_same_results_give_the_same_incident_ids() {
        let outcomes = [Up, Down, Down, Down, Up, Up];
        let ids = || {
            let mut state = AlertState::default();
            let mut ids = Vec::new();
            for (i, o) in outcomes.iter().enumerate() {
                for event in state.observe("shop", &rule(), &seen(i as u128, i as i64, *o)) {
                    if let Event::Opened(incident) = event {
                        ids.push(incident.id);
                    }
                }
            }
            ids
        };
        assert_eq!(ids(), ids());
        assert_eq!(
            ids()[0],
            Uuid::new_v5(&INCIDENT_NAMESPACE, Uuid::from_u128(1).as_bytes())
        );
    }

    #[test]
    fn nodata_opens_after_three_intervals_and_resolves_with_the_next_result() {
        let mut state = AlertState::default();
        let now = 100 * MIN;
        assert!(
            state
                .check_nodata("shop", "u", MIN, 90 * MIN, now)
                .is_none(),
            "never seen"
        );
        state.observe("shop", &rule(), &seen(1, 10, Up));
        assert!(state.check_nodata("shop", "u", MIN, 3 * MIN, now).is_none());
        let Some(Event::Opened(incident)) = state.check_nodata("shop", "u", MIN, 4 * MIN, now)
        else {
            panic!("no nodata incident")
        };
        assert_eq!(incident.severity, Severity::Nodata);
        assert_eq!(incident.started_at_us, 11 * MIN);
        assert!(
            state.check_nodata("shop", "u", MIN, 9 * MIN, now).is_none(),
            "already open"
        );
        let events = state.observe("shop", &rule(), &seen(2, 21, Up));
        assert!(
            matches!(&events[..], [Event::Resolved { .. }]),
            "{events:?}"
        );
    }
}
