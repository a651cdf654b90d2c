//! The alerter's PostgreSQL side: site states, incidents and the notification outbox, written in
//! the transaction of the batch (or the no-data check) that caused them; and the outbox's
//! delivery bookkeeping (lease, delivered, failed with the reason).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::incident::{AlertState, Event, Incident};
use super::notice::{notice, Notice};
use crate::config::AlertRule;

/// Reads the stored states of `sites`, locking them for this transaction. A state that no
/// longer parses (written by another version) starts over rather than stopping the alerter.
pub(crate) async fn load_states(
    tx: &impl GenericClient,
    sites: &[&str],
) -> Result<HashMap<String, (AlertState, Option<DateTime<Utc>>)>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "SELECT site, state::text, last_result_at FROM alert_state WHERE site = ANY($1) \
             ORDER BY site FOR UPDATE",
            &[&sites],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let state = serde_json::from_str(row.get(1)).unwrap_or_else(|error| {
                tracing::warn!(site = row.get::<_, &str>(0), %error, "alert state unreadable: starting over");
                AlertState::default()
            });
            (row.get(0), (state, row.get(2)))
        })
        .collect())
}

/// Writes `states`; `received` marks the sites a result was just received for.
pub(crate) async fn save_states(
    tx: &impl GenericClient,
    states: &HashMap<String, (AlertState, Option<DateTime<Utc>>)>,
) -> Result<(), tokio_postgres::Error> {
    let mut sites = Vec::new();
    let mut texts = Vec::new();
    let mut received = Vec::new();
    for (site, (state, at)) in states {
        sites.push(site.as_str());
        // A state of plain numbers, strings and ids always serializes.
        texts.push(serde_json::to_string(state).unwrap_or_else(|_| "{}".into()));
        received.push(*at);
    }
    tx.execute(
        "INSERT INTO alert_state (site, state, last_result_at, updated_at) \
         SELECT site, state::jsonb, at, now() \
         FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(site, state, at) \
         ON CONFLICT (site) DO UPDATE SET state = excluded.state, \
           last_result_at = excluded.last_result_at, updated_at = now()",
        &[&sites, &texts, &received],
    )
    .await?;
    Ok(())
}

/// Records `events` of `site`: the incidents they touch, and one outbox row per notifier that
/// `rule` notifies for each event that notifies. Returns the notices recorded.
pub(crate) async fn record(
    tx: &impl GenericClient,
    site: &str,
    url: &str,
    rule: &AlertRule,
    events: &[Event],
) -> Result<Vec<Notice>, tokio_postgres::Error> {
    let mut notices = Vec::new();
    for event in events {
        match event {
            Event::Opened(incident) | Event::Reminder(incident) => {
                upsert_incident(tx, incident, None).await?
            }
            Event::Resolved {
                incident,
                at_us,
                by,
            } => upsert_incident(tx, incident, Some((*at_us, *by))).await?,
            Event::Flapping { .. } | Event::FlapEnded { .. } => {}
        }
        if !event.notifies(rule) {
            continue;
        }
        let notice = notice(site, url, event);
        let text = serde_json::to_string(&notice).unwrap_or_else(|_| "{}".into());
        for notifier in &rule.notify {
            tx.execute(
                "INSERT INTO notifications (dedup_key, notifier, kind, site, incident_id, event) \
                 VALUES ($1, $2, $3, $4, $5, $6::text::jsonb) ON CONFLICT DO NOTHING",
                &[
                    &notice.dedup_key,
                    notifier,
                    &notice.kind,
                    &site,
                    &notice.incident_id,
                    &text,
                ],
            )
            .await?;
        }
        notices.push(notice);
    }
    Ok(notices)
}

/// Keeps the open incident's row current (failed checks, severity), or closes it.
pub(crate) async fn upsert_incident(
    tx: &impl GenericClient,
    i: &Incident,
    resolved: Option<(i64, Option<Uuid>)>,
) -> Result<(), tokio_postgres::Error> {
    let time = |us: i64| DateTime::<Utc>::from_timestamp_micros(us).unwrap_or_default();
    let resolved_at = resolved.map(|(at, _)| time(at).max(time(i.started_at_us)));
    let resolved_by = resolved.and_then(|(_, by)| by);
    tx.execute(
        "INSERT INTO incidents (id, site, url, severity, started_at, resolved_at, failed_checks, \
           reminders, resolved_by, quiet, cause_kind, cause_message) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (id) DO UPDATE SET severity = excluded.severity, \
           resolved_at = excluded.resolved_at, failed_checks = excluded.failed_checks, \
           reminders = excluded.reminders, resolved_by = excluded.resolved_by, updated_at = now()",
        &[
            &i.id,
            &i.site,
            &i.url,
            &i.severity.as_str(),
            &time(i.started_at_us),
            &resolved_at,
            &(i.failed_checks as i64),
            &(i.reminders as i32),
            &resolved_by,
            &i.quiet,
            &i.cause_kind,
            &i.cause_message,
        ],
    )
    .await?;
    Ok(())
}

/// A notification leased for sending.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub dedup_key: String,
    pub kind: String,
    pub notice: Notice,
    /// Attempts including this one.
    pub attempts: i32,
}

/// How long a leased notification is left to its sender before another may take it over (a
/// sender that died mid-request): longer than any request may take.
const LEASE: Duration = Duration::from_secs(60);

/// Leases up to `limit` due notifications of `notifier`, oldest first. Another alerter skips
/// them (`SKIP LOCKED`, then the lease).
pub(crate) async fn lease(
    client: &impl GenericClient,
    notifier: &str,
    limit: i64,
) -> Result<Vec<Pending>, tokio_postgres::Error> {
    let rows = client
        .query(
            "UPDATE notifications n SET next_attempt_at = now() + $3::float8 * interval '1 second', \
               attempts = attempts + 1 \
             FROM (SELECT dedup_key, notifier FROM notifications \
                   WHERE notifier = $1 AND delivered_at IS NULL AND next_attempt_at <= now() \
                   ORDER BY created_at, dedup_key LIMIT $2 FOR UPDATE SKIP LOCKED) due \
             WHERE n.dedup_key = due.dedup_key AND n.notifier = due.notifier \
             RETURNING n.dedup_key, n.kind, n.event::text, n.attempts, n.created_at",
            &[&notifier, &limit, &LEASE.as_secs_f64()],
        )
        .await?;
    let mut leased: Vec<(DateTime<Utc>, Pending)> = rows
        .iter()
        .filter_map(|row| {
            let notice = serde_json::from_str(row.get(2)).ok()?;
            Some((
                row.get(4),
                Pending {
                    dedup_key: row.get(0),
                    kind: row.get(1),
                    notice,
                    attempts: row.get(3),
                },
            ))
        })
        .collect();
    leased.sort_by(|a, b| (a.0, &a.1.dedup_key).cmp(&(b.0, &b.1.dedup_key)));
    Ok(leased.into_iter().map(|(_, p)| p).collect())
}

/// Marks a notification sent.
pub(crate) async fn delivered(
    client: &impl GenericClient,
    notifier: &str,
    dedup_key: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE notifications SET delivered_at = now(), last_error = NULL \
             WHERE dedup_key = $1 AND notifier = $2",
            &[&dedup_key, &notifier],
        )
        .await?;
    Ok(())
}

/// Records a failed attempt and when to try again.
pub(crate) async fn failed(
    client: &impl GenericClient,
    notifier: &str,
    dedup_key: &str,
    error: &str,
    retry_in: Duration,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE notifications SET last_error = $3, \
               next_attempt_at = now() + $4::float8 * interval '1 second' \
             WHERE dedup_key = $1 AND notifier = $2",
            &[&dedup_key, &notifier, &error, &retry_in.as_secs_f64()],
        )
        .await?;
    Ok(())
}

/// Open incidents that are announced (not quiet), for re-sending to Alertmanager.
pub(crate) async fn open_incidents(
    client: &impl GenericClient,
) -> Result<Vec<Notice>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, site, url, severity, (extract(epoch FROM started_at) * 1000000)::bigint, \
               failed_checks, cause_kind, cause_message, reminders \
             FROM incidents WHERE resolved_at IS NULL AND NOT quiet",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let severity = match row.get::<_, &str>(3) {
                "degraded" => super::incident::Severity::Degraded,
                "nodata" => super::incident::Severity::Nodata,
                _ => super::incident::Severity::Down,
            };
            let incident = Incident {
                id: row.get(0),
                site: row.get(1),
                url: row.get(2),
                severity,
                started_at_us: row.get(4),
                failed_checks: row.get::<_, i64>(5) as u64,
                cause_kind: row.get(6),
                cause_message: row.get(7),
                reminders: row.get::<_, i32>(8) as u32,
                notified_at_us: row.get(4),
                quiet: false,
            };
            notice(
                &incident.site.clone(),
                &incident.url.clone(),
                &Event::Opened(incident),
            )
        })
        .collect())
}
