//! The insight tables, written inside the consumer's batch transaction so they are exactly once
//! with the rows: `rollup_hourly`, `rollup_daily`, `site_state` and `state_changes`.
//!
//! ```text
//! rows actually inserted ──► Sample ──► rollup::aggregate(Hour | Day) ─┐
//!                                                                       ├─ SELECT … FOR UPDATE the
//!                                                                       │  buckets it touches, merge
//!                                                                       └─ in Rust, upsert
//!                        └─► Observation ──► SiteState::advance ──► site_state + state_changes
//! ```
//!
//! The arithmetic is the pure code of `crate::insight`; this module only moves rows. Merging in
//! Rust (one read of the touched buckets, one write) keeps a single definition of how buckets
//! add up — the same one `rollup rebuild`, `report` and the status page use.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Row};

use super::row::CheckRow;
use crate::insight::histogram::Histogram;
use crate::insight::rollup::{self, Grain, PhaseSum, Rollup, Sample, Summary};
use crate::insight::state::{Change, Observation, SiteState};
use crate::result::Outcome;

/// The two rollup tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollupTable {
    Hourly,
    Daily,
}

impl RollupTable {
    pub fn name(self) -> &'static str {
        match self {
            RollupTable::Hourly => "rollup_hourly",
            RollupTable::Daily => "rollup_daily",
        }
    }

    pub fn grain(self) -> Grain {
        match self {
            RollupTable::Hourly => Grain::Hour,
            RollupTable::Daily => Grain::Day,
        }
    }
}

/// The rollup columns in the order [`from_row`] reads them.
pub const ROLLUP_COLUMNS: &str = "site, bucket, checks, up, degraded, down, maintenance, \
    failures::text, dns_sum, dns_count, connect_sum, connect_count, tls_sum, tls_count, \
    ttfb_sum, ttfb_count, transfer_sum, transfer_count, total_sum, total_count, max_total_ms, \
    total_hist, ttfb_hist";

/// Writes the insight of `rows` (the rows this transaction inserted, in Kafka order).
pub(crate) async fn write(
    tx: &impl GenericClient,
    rows: &[&CheckRow],
) -> Result<(), tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let samples: Vec<Sample<'_>> = rows.iter().map(|row| sample(row)).collect();
    for table in [RollupTable::Hourly, RollupTable::Daily] {
        let fresh = rollup::aggregate(table.grain(), &samples);
        merge_rollups(tx, table, fresh).await?;
    }
    advance_states(tx, rows).await
}

/// A stored row as the rollup arithmetic sees it.
pub(crate) fn sample(row: &CheckRow) -> Sample<'_> {
    Sample {
        site: &row.site,
        scheduled_at_us: row.scheduled_at.timestamp_micros(),
        outcome: outcome(row.outcome),
        failure_kind: row.failure_kind,
        maintenance: row.maintenance.is_some(),
        dns_ms: row.dns_ms,
        connect_ms: row.connect_ms,
        tls_ms: row.tls_ms,
        ttfb_ms: row.ttfb_ms,
        transfer_ms: row.transfer_ms,
        total_ms: row.total_ms,
    }
}

/// The wire spelling of an outcome back to the enum (the column's CHECK allows only these).
fn outcome(text: &str) -> Outcome {
    match text {
        "up" => Outcome::Up,
        "degraded" => Outcome::Degraded,
        _ => Outcome::Down,
    }
}

/// Adds `fresh` rollups to what `table` holds for the same (site, bucket), in one read and one
/// write. The buckets are locked by the read; only the consumer owning a site's partition
/// writes its rollups (fenced by the offset row locks taken first in the transaction).
async fn merge_rollups(
    tx: &impl GenericClient,
    table: RollupTable,
    mut fresh: Vec<Rollup>,
) -> Result<(), tokio_postgres::Error> {
    let sites: Vec<&str> = fresh.iter().map(|r| r.site.as_str()).collect();
    let buckets: Vec<DateTime<Utc>> = fresh.iter().map(|r| time(r.bucket_start_us)).collect();
    let stored = tx
        .query(
            &format!(
                "SELECT {ROLLUP_COLUMNS} FROM {} WHERE (site, bucket) IN \
                 (SELECT * FROM unnest($1::text[], $2::timestamptz[])) FOR UPDATE",
                table.name()
            ),
            &[&sites, &buckets],
        )
        .await?;
    let mut by_key: HashMap<(String, i64), Rollup> = stored
        .iter()
        .map(|row| {
            let rollup = from_row(row);
            ((rollup.site.clone(), rollup.bucket_start_us), rollup)
        })
        .collect();
    for rollup in &mut fresh {
        if let Some(old) = by_key.remove(&(rollup.site.clone(), rollup.bucket_start_us)) {
            let mut merged = old;
            merged.merge(rollup);
            *rollup = merged;
        }
    }
    upsert(tx, table, &fresh).await
}

/// Writes `rollups` as they are (replacing any stored row of the same site and bucket).
pub(crate) async fn upsert(
    tx: &impl GenericClient,
    table: RollupTable,
    rollups: &[Rollup],
) -> Result<(), tokio_postgres::Error> {
    if rollups.is_empty() {
        return Ok(());
    }
    let columns = RollupColumns::from(rollups);
    let c = &columns;
    let updates = "checks, up, degraded, down, maintenance, failures, dns_sum, dns_count, \
        connect_sum, connect_count, tls_sum, tls_count, ttfb_sum, ttfb_count, transfer_sum, \
        transfer_count, total_sum, total_count, max_total_ms, total_hist, ttfb_hist"
        .split(", ")
        .map(|col| format!("{col} = excluded.{col}"))
        .collect::<Vec<_>>()
        .join(", ");
    let statement = format!(
        "INSERT INTO {table} (site, bucket, checks, up, degraded, down, maintenance, failures, \
           dns_sum, dns_count, connect_sum, connect_count, tls_sum, tls_count, ttfb_sum, \
           ttfb_count, transfer_sum, transfer_count, total_sum, total_count, max_total_ms, \
           total_hist, ttfb_hist) \
         SELECT site, bucket, checks, up, degraded, down, maintenance, failures::jsonb, \
           dns_sum, dns_count, connect_sum, connect_count, tls_sum, tls_count, ttfb_sum, \
           ttfb_count, transfer_sum, transfer_count, total_sum, total_count, max_total_ms, \
           total_hist::bigint[], ttfb_hist::bigint[] \
         FROM unnest($1::text[], $2::timestamptz[], $3::int8[], $4::int8[], $5::int8[], \
           $6::int8[], $7::int8[], $8::text[], $9::float8[], $10::int8[], $11::float8[], \
           $12::int8[], $13::float8[], $14::int8[], $15::float8[], $16::int8[], $17::float8[], \
           $18::int8[], $19::float8[], $20::int8[], $21::float8[], $22::text[], $23::text[]) \
           AS u(site, bucket, checks, up, degraded, down, maintenance, failures, dns_sum, \
           dns_count, connect_sum, connect_count, tls_sum, tls_count, ttfb_sum, ttfb_count, \
           transfer_sum, transfer_count, total_sum, total_count, max_total_ms, total_hist, \
           ttfb_hist) \
         ON CONFLICT (site, bucket) DO UPDATE SET {updates}",
        table = table.name()
    );
    tx.execute(
        &statement,
        &[
            &c.site,
            &c.bucket,
            &c.checks,
            &c.up,
            &c.degraded,
            &c.down,
            &c.maintenance,
            &c.failures,
            &c.phase_sums[0],
            &c.phase_counts[0],
            &c.phase_sums[1],
            &c.phase_counts[1],
            &c.phase_sums[2],
            &c.phase_counts[2],
            &c.phase_sums[3],
            &c.phase_counts[3],
            &c.phase_sums[4],
            &c.phase_counts[4],
            &c.phase_sums[5],
            &c.phase_counts[5],
            &c.max_total_ms,
            &c.total_hist,
            &c.ttfb_hist,
        ],
    )
    .await?;
    Ok(())
}

/// Rollups turned inside out: one array per column, for `unnest`.
#[derive(Default)]
struct RollupColumns<'a> {
    site: Vec<&'a str>,
    bucket: Vec<DateTime<Utc>>,
    checks: Vec<i64>,
    up: Vec<i64>,
    degraded: Vec<i64>,
    down: Vec<i64>,
    maintenance: Vec<i64>,
    /// jsonb as text: an array of jsonb cannot be sent as one unnest column directly.
    failures: Vec<String>,
    /// dns, connect, tls, ttfb, transfer, total.
    phase_sums: [Vec<f64>; 6],
    phase_counts: [Vec<i64>; 6],
    max_total_ms: Vec<Option<f64>>,
    /// Array literals (`{1,0,3}`): rows of different lengths cannot share one 2-D array.
    total_hist: Vec<String>,
    ttfb_hist: Vec<String>,
}

impl<'a> From<&'a [Rollup]> for RollupColumns<'a> {
    fn from(rollups: &'a [Rollup]) -> Self {
        let mut c = RollupColumns::default();
        for r in rollups {
            let s = &r.summary;
            c.site.push(&r.site);
            c.bucket.push(time(r.bucket_start_us));
            c.checks.push(s.checks);
            c.up.push(s.up);
            c.degraded.push(s.degraded);
            c.down.push(s.down);
            c.maintenance.push(s.maintenance);
            // A map of strings to integers always serializes.
            c.failures
                .push(serde_json::to_string(&s.failures).unwrap_or_else(|_| "{}".into()));
            for (i, phase) in phases(s).into_iter().enumerate() {
                c.phase_sums[i].push(phase.sum_ms);
                c.phase_counts[i].push(phase.count);
            }
            c.max_total_ms
                .push((s.phases.total.count > 0).then_some(s.max_total_ms));
            c.total_hist.push(array_literal(s.total_hist.as_slice()));
            c.ttfb_hist.push(array_literal(s.ttfb_hist.as_slice()));
        }
        c
    }
}

fn phases(s: &Summary) -> [&PhaseSum; 6] {
    let p = &s.phases;
    [&p.dns, &p.connect, &p.tls, &p.ttfb, &p.transfer, &p.total]
}

fn array_literal(counts: &[i64]) -> String {
    let items: Vec<String> = counts.iter().map(i64::to_string).collect();
    format!("{{{}}}", items.join(","))
}

/// Reads a row selected with [`ROLLUP_COLUMNS`].
pub fn from_row(row: &Row) -> Rollup {
    let bucket: DateTime<Utc> = row.get(1);
    let failures: String = row.get(7);
    let phase = |i: usize| PhaseSum {
        sum_ms: row.get(8 + 2 * i),
        count: row.get(9 + 2 * i),
    };
    let mut rollup = Rollup::new(row.get(0), bucket.timestamp_micros());
    rollup.summary = Summary {
        checks: row.get(2),
        up: row.get(3),
        degraded: row.get(4),
        down: row.get(5),
        maintenance: row.get(6),
        failures: serde_json::from_str::<BTreeMap<String, i64>>(&failures).unwrap_or_default(),
        phases: rollup::Phases {
            dns: phase(0),
            connect: phase(1),
            tls: phase(2),
            ttfb: phase(3),
            transfer: phase(4),
            total: phase(5),
        },
        max_total_ms: row.get::<_, Option<f64>>(20).unwrap_or_default(),
        total_hist: Histogram::from_counts(row.get(21)),
        ttfb_hist: Histogram::from_counts(row.get(22)),
    };
    rollup
}

fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// Folds `rows` into the stored states of their sites; writes the new states and the changes.
async fn advance_states(
    tx: &impl GenericClient,
    rows: &[&CheckRow],
) -> Result<(), tokio_postgres::Error> {
    let sites: HashSet<&str> = rows.iter().map(|r| r.site.as_str()).collect();
    let sites: Vec<&str> = sites.into_iter().collect();
    let stored = tx
        .query(
            "SELECT site, outcome, since, last_result_id, last_scheduled_at, \
               consecutive_failures, consecutive_successes, last_failure_kind, \
               last_failure_message \
             FROM site_state WHERE site = ANY($1) FOR UPDATE",
            &[&sites],
        )
        .await?;
    // Keyed by borrowed names: one lookup per row, no copy of the name.
    let mut states: HashMap<&str, Option<SiteState>> = stored
        .iter()
        .map(|row| {
            let since: DateTime<Utc> = row.get(2);
            let last: DateTime<Utc> = row.get(4);
            let state = SiteState {
                outcome: outcome(row.get(1)),
                since_us: since.timestamp_micros(),
                last_result_id: row.get(3),
                last_scheduled_at_us: last.timestamp_micros(),
                consecutive_failures: row.get(5),
                consecutive_successes: row.get(6),
                last_failure_kind: row.get(7),
                last_failure_message: row.get(8),
            };
            (row.get::<_, &str>(0), Some(state))
        })
        .collect();
    let mut changes: Vec<(&str, Change)> = Vec::new();
    for row in rows {
        let state = states.entry(row.site.as_str()).or_default();
        let seen = Observation {
            id: row.id,
            scheduled_at_us: row.scheduled_at.timestamp_micros(),
            outcome: outcome(row.outcome),
            failure_kind: row.failure_kind,
            failure_message: row.failure_message.as_deref(),
        };
        if let Some(change) = SiteState::advance(state, &seen) {
            changes.push((&row.site, change));
        }
    }
    write_states(tx, &states).await?;
    write_changes(tx, &changes).await
}

async fn write_states(
    tx: &impl GenericClient,
    states: &HashMap<&str, Option<SiteState>>,
) -> Result<(), tokio_postgres::Error> {
    let mut c = StateColumns::default();
    for (site, state) in states {
        let Some(s) = state else { continue };
        c.site.push(site);
        c.outcome.push(s.outcome.as_str());
        c.since.push(time(s.since_us));
        c.last_result_id.push(s.last_result_id);
        c.last_scheduled_at.push(time(s.last_scheduled_at_us));
        c.failures.push(s.consecutive_failures);
        c.successes.push(s.consecutive_successes);
        c.failure_kind.push(s.last_failure_kind.as_deref());
        c.failure_message.push(s.last_failure_message.as_deref());
    }
    tx.execute(
        "INSERT INTO site_state (site, outcome, since, last_result_id, last_scheduled_at, \
           consecutive_failures, consecutive_successes, last_failure_kind, \
           last_failure_message, updated_at) \
         SELECT *, now() FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::uuid[], \
           $5::timestamptz[], $6::int8[], $7::int8[], $8::text[], $9::text[]) \
         ON CONFLICT (site) DO UPDATE SET outcome = excluded.outcome, since = excluded.since, \
           last_result_id = excluded.last_result_id, \
           last_scheduled_at = excluded.last_scheduled_at, \
           consecutive_failures = excluded.consecutive_failures, \
           consecutive_successes = excluded.consecutive_successes, \
           last_failure_kind = excluded.last_failure_kind, \
           last_failure_message = excluded.last_failure_message, updated_at = now()",
        &[
            &c.site,
            &c.outcome,
            &c.since,
            &c.last_result_id,
            &c.last_scheduled_at,
            &c.failures,
            &c.successes,
            &c.failure_kind,
            &c.failure_message,
        ],
    )
    .await?;
    Ok(())
}

#[derive(Default)]
struct StateColumns<'a> {
    site: Vec<&'a str>,
    outcome: Vec<&'static str>,
    since: Vec<DateTime<Utc>>,
    last_result_id: Vec<uuid::Uuid>,
    last_scheduled_at: Vec<DateTime<Utc>>,
    failures: Vec<i64>,
    successes: Vec<i64>,
    failure_kind: Vec<Option<&'a str>>,
    failure_message: Vec<Option<&'a str>>,
}

async fn write_changes(
    tx: &impl GenericClient,
    changes: &[(&str, Change)],
) -> Result<(), tokio_postgres::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let site: Vec<&str> = changes.iter().map(|(site, _)| *site).collect();
    let at: Vec<DateTime<Utc>> = changes.iter().map(|(_, c)| time(c.at_us)).collect();
    let id: Vec<uuid::Uuid> = changes.iter().map(|(_, c)| c.result_id).collect();
    let from: Vec<Option<&str>> = changes
        .iter()
        .map(|(_, c)| c.from.map(|o| o.as_str()))
        .collect();
    let to: Vec<&str> = changes.iter().map(|(_, c)| c.to.as_str()).collect();
    let kind: Vec<Option<&str>> = changes
        .iter()
        .map(|(_, c)| c.failure_kind.as_deref())
        .collect();
    let message: Vec<Option<&str>> = changes
        .iter()
        .map(|(_, c)| c.failure_message.as_deref())
        .collect();
    // Counted here, so the trigger that counts inserted changes may skip this transaction's.
    tx.execute(
        "SELECT set_config('sitewatch.changes_counted', 'on', true)",
        &[],
    )
    .await?;
    tx.execute(
        CHANGES_INSERT,
        &[&site, &at, &id, &from, &to, &kind, &message],
    )
    .await?;
    Ok(())
}

/// Appends a batch's state changes with their running downtime and change count
/// (migrations/0004_running.sql), counted from each site's last stored change. They are always
/// appended: a site's changes come from its results in Kafka order, and a result older than the
/// site's state makes none, so nothing stored comes after them.
const CHANGES_INSERT: &str = "\
    WITH u AS ( \
        SELECT x.*, lag(x.t) OVER o AS prev_to, lag(x.at) OVER o AS prev_at, \
               min(x.at) OVER (PARTITION BY x.site) AS since \
          FROM unnest($1::text[], $2::timestamptz[], $3::uuid[], $4::text[], $5::text[], \
                      $6::text[], $7::text[]) WITH ORDINALITY AS x(site, at, id, f, t, k, m, n) \
        WINDOW o AS (PARTITION BY x.site ORDER BY x.at, x.n) \
    ), p AS ( \
        SELECT s.site, c.at, c.to_outcome, c.down_us, c.changes \
          FROM (SELECT DISTINCT site, since FROM u) AS s \
          CROSS JOIN LATERAL ( \
                SELECT at, to_outcome, down_us, changes FROM state_changes \
                 WHERE site = s.site AND at < s.since ORDER BY at DESC, id DESC LIMIT 1) AS c \
    ) \
    INSERT INTO state_changes (site, at, result_id, from_outcome, to_outcome, failure_kind, \
        failure_message, down_us, changes) \
    SELECT u.site, u.at, u.id, u.f, u.t, u.k, u.m, \
           coalesce(p.down_us, 0) + sum( \
               CASE WHEN coalesce(u.prev_to, p.to_outcome) = 'down' \
                    THEN (extract(epoch FROM u.at - coalesce(u.prev_at, p.at)) * 1000000)::bigint \
                    ELSE 0 END) OVER w, \
           coalesce(p.changes, 0) + count(*) FILTER (WHERE u.f IS NOT NULL) OVER w \
      FROM u LEFT JOIN p ON p.site = u.site \
    WINDOW w AS (PARTITION BY u.site ORDER BY u.at, u.n) \
    ORDER BY u.site, u.at, u.n \
    ON CONFLICT (result_id) DO NOTHING";
