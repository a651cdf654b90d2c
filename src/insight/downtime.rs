//! Downtime of a site over a period, from its log of state changes (pure).
//!
//! `report` reads a site's `state_changes` — the last one before the period (the state the
//! period starts in) and every one inside it — and walks them here:
//!
//! ```text
//!            before from     from                                      min(to, now)   to
//!  changes:  ──down──────────┼────►up────────►down──────►up─────►down───┼ · · · · · · · ┤
//!  downtime:                 [━━━━)           [━━━━━━━━━)        [━━━━━)
//! ```
//!
//! The state at `from` is the outcome of the last change before `from`; a site without one had
//! no result yet and is not down. The state after the last change lasts until `to`, or until
//! `now` when the period reaches into the future: a site currently down counts as down up to now,
//! never beyond. Only `down` is downtime; `degraded` counts as available, like in uptime.

use crate::result::Outcome;

/// One row of `state_changes`, with what the walk needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// `scheduled_at` (unix µs) of the result that caused the change.
    pub at_us: i64,
    /// The outcome before; `None` for a site's first result, which is no change of state and is
    /// therefore not counted in [`Downtime::changes`].
    pub from: Option<Outcome>,
    pub to: Outcome,
}

/// What [`walk`] found for one site and period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Downtime {
    /// Time spent `down` within `[from, min(to, now))`, in microseconds.
    pub down_us: i64,
    /// Changes of outcome within `[from, to)` (a site's first result not included).
    pub changes: u64,
}

impl Downtime {
    /// [`Downtime::down_us`] in seconds.
    pub fn down_secs(&self) -> f64 {
        self.down_us as f64 / 1e6
    }
}

/// Walks a site's `transitions`, sorted by `at_us`, over the period `[from_us, to_us)` as of
/// `now_us` (all unix µs). Transitions before `from_us` only set the starting state (the last
/// one wins), those at or after `to_us` are ignored, so the caller may pass more than it needs.
/// An empty period (`to_us <= from_us`) has no downtime and no changes.
pub fn walk(transitions: &[Transition], from_us: i64, to_us: i64, now_us: i64) -> Downtime {
    let end_us = to_us.min(now_us).max(from_us);
    let mut state = None;
    let mut state_since = from_us;
    let mut downtime = Downtime::default();
    for t in transitions {
        if t.at_us >= to_us {
            break;
        }
        if t.at_us >= from_us && t.from.is_some() {
            downtime.changes += 1;
        }
        // A change later than now (clock skew between prober and reporter) ends downtime at now.
        let at = t.at_us.clamp(from_us, end_us);
        if state == Some(Outcome::Down) {
            downtime.down_us += at - state_since;
        }
        state = Some(t.to);
        state_since = at;
    }
    if state == Some(Outcome::Down) {
        downtime.down_us += end_us - state_since;
    }
    downtime
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::{Degraded, Down, Up};

    const MIN: i64 = 60 * 1_000_000;
    const FROM: i64 = 1_000 * MIN;
    const TO: i64 = 2_000 * MIN;
    /// Long after the period: it is over.
    const LATER: i64 = 10_000 * MIN;

    fn t(at_us: i64, from: Option<Outcome>, to: Outcome) -> Transition {
        Transition { at_us, from, to }
    }

    #[test]
    fn walks() {
        // (name, transitions, now, (downtime in minutes, changes))
        type Case = (&'static str, Vec<Transition>, i64, (i64, u64));
        let cases: Vec<Case> = vec![
            ("no history", vec![], LATER, (0, 0)),
            (
                "up before, nothing in the period",
                vec![t(FROM - 5 * MIN, None, Up)],
                LATER,
                (0, 0),
            ),
            (
                "down before, nothing in the period: the whole period",
                vec![t(FROM - 5 * MIN, Some(Up), Down)],
                LATER,
                (1_000, 0),
            ),
            (
                "the last change before from sets the state",
                vec![
                    t(FROM - 9 * MIN, None, Up),
                    t(FROM - 5 * MIN, Some(Up), Down),
                    t(FROM - MIN, Some(Down), Up),
                ],
                LATER,
                (0, 0),
            ),
            (
                "down before, up inside",
                vec![
                    t(FROM - 5 * MIN, Some(Up), Down),
                    t(FROM + 30 * MIN, Some(Down), Up),
                ],
                LATER,
                (30, 1),
            ),
            (
                "outage inside",
                vec![
                    t(FROM - 5 * MIN, None, Up),
                    t(FROM + 100 * MIN, Some(Up), Down),
                    t(FROM + 130 * MIN, Some(Down), Up),
                ],
                LATER,
                (30, 2),
            ),
            (
                "degraded is not down",
                vec![
                    t(FROM - 5 * MIN, None, Up),
                    t(FROM + 100 * MIN, Some(Up), Degraded),
                    t(FROM + 150 * MIN, Some(Degraded), Down),
                    t(FROM + 160 * MIN, Some(Down), Degraded),
                    t(FROM + 200 * MIN, Some(Degraded), Up),
                ],
                LATER,
                (10, 4),
            ),
            (
                "down at the end lasts until to",
                vec![t(TO - 40 * MIN, Some(Up), Down)],
                LATER,
                (40, 1),
            ),
            (
                "a change at or after to is ignored",
                vec![
                    t(TO - 40 * MIN, Some(Up), Down),
                    t(TO, Some(Down), Up),
                    t(TO + MIN, Some(Up), Down),
                ],
                LATER,
                (40, 1),
            ),
            (
                "a change exactly at from is inside",
                vec![
                    t(FROM - MIN, None, Up),
                    t(FROM, Some(Up), Down),
                    t(FROM + 3 * MIN, Some(Down), Up),
                ],
                LATER,
                (3, 2),
            ),
            (
                "currently down counts until now",
                vec![t(FROM + 100 * MIN, Some(Up), Down)],
                FROM + 250 * MIN,
                (150, 1),
            ),
            (
                "down since before a period that has not started",
                vec![t(FROM - MIN, Some(Up), Down)],
                FROM - 30 * MIN,
                (0, 0),
            ),
            (
                "a change stamped after now ends at now",
                vec![
                    t(FROM - MIN, Some(Up), Down),
                    t(FROM + 300 * MIN, Some(Down), Up),
                ],
                FROM + 200 * MIN,
                (200, 1),
            ),
            (
                "first result inside the period is no change",
                vec![
                    t(FROM + 10 * MIN, None, Down),
                    t(FROM + 25 * MIN, Some(Down), Up),
                ],
                LATER,
                (15, 1),
            ),
        ];
        for (name, transitions, now, (minutes, changes)) in cases {
            let got = walk(&transitions, FROM, TO, now);
            assert_eq!(
                got,
                Downtime {
                    down_us: minutes * MIN,
                    changes
                },
                "{name}"
            );
        }
    }

    #[test]
    fn empty_period_has_nothing() {
        let down = [t(FROM - MIN, Some(Up), Down)];
        assert_eq!(walk(&down, FROM, FROM, LATER), Downtime::default());
        assert_eq!(walk(&down, TO, FROM, LATER), Downtime::default());
    }

    #[test]
    fn seconds() {
        let d = Downtime {
            down_us: 12_600_500_000,
            changes: 0,
        };
        assert_eq!(d.down_secs(), 12_600.5);
    }
}
