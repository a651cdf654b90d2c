//! A site's current state and its changes, advanced one stored result at a time (pure).
//!
//! The storing consumer reads the `site_state` rows of a batch's sites, folds the batch's
//! results into them in Kafka order (one site = one key = one partition, so that is the order
//! they were produced in) with [`SiteState::advance`], and writes the new states and every
//! change in the batch's transaction. "Is it up now" and "when did it break" never scan raw rows.

use crate::result::Outcome;

/// One row of `site_state`.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteState {
    pub outcome: Outcome,
    /// `scheduled_at` (unix µs) of the first result of the current outcome.
    pub since_us: i64,
    /// The latest result folded in: id and `scheduled_at` (unix µs).
    pub last_result_id: uuid::Uuid,
    pub last_scheduled_at_us: i64,
    /// Down results in a row (0 while up or degraded).
    pub consecutive_failures: i64,
    /// Up or degraded results in a row (0 while down).
    pub consecutive_successes: i64,
    /// Of the latest down result, kept after recovery ("last failed because …").
    pub last_failure_kind: Option<String>,
    pub last_failure_message: Option<String>,
}

/// The facts of one result the state machine looks at.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub id: uuid::Uuid,
    pub scheduled_at_us: i64,
    pub outcome: Outcome,
    pub failure_kind: Option<&'a str>,
    pub failure_message: Option<&'a str>,
}

/// A change of outcome (or a site's first result, `from = None`), caused by `result_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub result_id: uuid::Uuid,
    pub at_us: i64,
    pub from: Option<Outcome>,
    pub to: Outcome,
    pub failure_kind: Option<String>,
    pub failure_message: Option<String>,
}

impl SiteState {
    /// Folds one result into `state` (`None`: the site's first result). Returns the change it
    /// caused, if any. A result scheduled before the latest one folded in (a late arrival from
    /// a restarted producer) leaves the state as it is: the state never moves back in time.
    pub fn advance(state: &mut Option<SiteState>, seen: &Observation<'_>) -> Option<Change> {
        let down = seen.outcome == Outcome::Down;
        let failure_kind = seen.failure_kind.filter(|_| down).map(str::to_owned);
        let failure_message = seen.failure_message.filter(|_| down).map(str::to_owned);
        let change = |from| Change {
            result_id: seen.id,
            at_us: seen.scheduled_at_us,
            from,
            to: seen.outcome,
            failure_kind: failure_kind.clone(),
            failure_message: failure_message.clone(),
        };
        let Some(current) = state.as_mut() else {
            *state = Some(SiteState {
                outcome: seen.outcome,
                since_us: seen.scheduled_at_us,
                last_result_id: seen.id,
                last_scheduled_at_us: seen.scheduled_at_us,
                consecutive_failures: i64::from(down),
                consecutive_successes: i64::from(!down),
                last_failure_kind: failure_kind.clone(),
                last_failure_message: failure_message.clone(),
            });
            return Some(change(None));
        };
        if seen.scheduled_at_us < current.last_scheduled_at_us {
            return None;
        }
        let changed = (current.outcome != seen.outcome).then(|| change(Some(current.outcome)));
        if changed.is_some() {
            current.outcome = seen.outcome;
            current.since_us = seen.scheduled_at_us;
        }
        if down {
            current.consecutive_failures += 1;
            current.consecutive_successes = 0;
            current.last_failure_kind = failure_kind;
            current.last_failure_message = failure_message;
        } else {
            current.consecutive_successes += 1;
            current.consecutive_failures = 0;
        }
        current.last_result_id = seen.id;
        current.last_scheduled_at_us = seen.scheduled_at_us;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::{Degraded, Down, Up};

    fn seen(n: u128, at: i64, outcome: Outcome) -> Observation<'static> {
        Observation {
            id: uuid::Uuid::from_u128(n),
            scheduled_at_us: at,
            outcome,
            failure_kind: Some("timeout"),
            failure_message: Some("no answer"),
        }
    }

    #[test]
    fn changes_streaks_and_since_follow_the_results() {
        // (at, outcome) → (change from, outcome after, since, failures, successes)
        type Want = (Option<Option<Outcome>>, Outcome, i64, i64, i64);
        let steps: [(i64, Outcome, Want); 7] = [
            (10, Up, (Some(None), Up, 10, 0, 1)),
            (20, Up, (None, Up, 10, 0, 2)),
            (30, Down, (Some(Some(Up)), Down, 30, 1, 0)),
            (40, Down, (None, Down, 30, 2, 0)),
            (50, Degraded, (Some(Some(Down)), Degraded, 50, 0, 1)),
            (60, Up, (Some(Some(Degraded)), Up, 60, 0, 2)),
            (55, Down, (None, Up, 60, 0, 2)), // late arrival: ignored
        ];
        let mut state = None;
        for (i, (at, outcome, want)) in steps.into_iter().enumerate() {
            let change = SiteState::advance(&mut state, &seen(i as u128, at, outcome));
            let s = state.as_ref().unwrap();
            let got = (
                change.as_ref().map(|c| c.from),
                s.outcome,
                s.since_us,
                s.consecutive_failures,
                s.consecutive_successes,
            );
            assert_eq!(got, want, "step {i} at {at}");
            if let Some(change) = change {
                assert_eq!((change.at_us, change.to), (at, outcome));
                assert_eq!(change.result_id, uuid::Uuid::from_u128(i as u128));
            }
        }
    }

    #[test]
    fn failure_facts_are_kept_from_the_last_down_result() {
        let mut state = None;
        let mut up = seen(1, 1, Up);
        up.failure_kind = Some("ignored: not down");
        let change = SiteState::advance(&mut state, &up).unwrap();
        assert_eq!(change.failure_kind, None);
        SiteState::advance(&mut state, &seen(2, 2, Down));
        let change = SiteState::advance(&mut state, &seen(3, 3, Up)).unwrap();
        assert_eq!(change.failure_kind, None, "recovery carries no failure");
        let s = state.unwrap();
        assert_eq!(s.last_failure_kind.as_deref(), Some("timeout"));
        assert_eq!(s.last_failure_message.as_deref(), Some("no answer"));
        assert_eq!(s.last_result_id, uuid::Uuid::from_u128(3));
    }
}
