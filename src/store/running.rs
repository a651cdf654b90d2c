//! Running totals of the hourly rollups (`rollup_running`, migrations/0004_running.sql): what
//! lets a report of any whole-hour period read two rows per site.
//!
//! ```text
//!  rollup_hourly:   h0    h1    h2    ·     h4    h5          (a missing hour: no checks)
//!  rollup_running:  h0   h0+h1 …+h2  …+h2  …+h4  …+h5        one row per hour, first → last
//!  period [h2, h4]: running(h4) − running(h1)                  max: two windows of 2^k hours
//! ```
//!
//! [`extend`] sums the hours a site has not summed yet, up to a settled hour, and is the only
//! writer; a trigger on `rollup_hourly` drops a site's running rows from any hour that changes
//! at or before its `through`, and the next extension recomputes them. The consumer extends
//! every few minutes ([`maintain`]), `rollup rebuild` after rebuilding.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, DurationRound, Utc};
use tokio_postgres::{Client, GenericClient, Row};
use tokio_util::sync::CancellationToken;

use super::{DatabaseSettings, StoreError};
use crate::insight::histogram::Histogram;
use crate::insight::rollup::{PhaseSum, Phases, Summary};

/// Advisory lock held exclusively by an extension, shared by the trigger ("sitewatr").
pub const LOCK_KEY: i64 = 0x7369_7465_7761_7472;

/// Levels of the maximum windows: `max_total_ms[k]` covers the 2^k hours ending at a row, for
/// k < LEVELS, so one lookup pair answers any period shorter than 2^LEVELS hours (682 days).
pub const LEVELS: usize = 14;

/// Sites extended per transaction: the lock is held that long, and a consumer batch that
/// touches an hourly rollup waits for it. Building 90 days of 50 sites from nothing (108,000
/// rows) takes about 5 s; a usual turn, one hour of 50 sites, a few milliseconds.
const SITES_PER_TRANSACTION: usize = 50;

/// Running rows written per INSERT statement.
const ROWS_PER_STATEMENT: usize = 2_000;

/// How often [`maintain`] extends, and how long an hour must have been over to be summed.
pub const EXTEND_EVERY: StdDuration = StdDuration::from_secs(300);
const SETTLE: Duration = Duration::minutes(5);
/// After a start a consumer often catches up a backlog, whose rows would drop again whatever an
/// extension summed meanwhile: the first one waits a minute.
const FIRST_EXTENSION_AFTER: StdDuration = StdDuration::from_secs(60);

const HOUR_US: i64 = 3_600_000_000;

/// What one [`extend`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extended {
    /// Sites that got new running rows.
    pub sites: u64,
    /// Running rows written.
    pub rows: u64,
}

/// The latest hour that ended at least [`SETTLE`] before `now`: what [`maintain`] extends to.
pub fn settled_hour(now: DateTime<Utc>) -> DateTime<Utc> {
    (now - SETTLE - Duration::hours(1))
        .duration_trunc(Duration::hours(1))
        .unwrap_or(now)
}

/// Extends every site's running totals through the hour starting at `until` (hours after it are
/// left to a later call). Idempotent; each group of sites is one transaction.
pub async fn extend(client: &mut Client, until: DateTime<Utc>) -> Result<Extended, StoreError> {
    let sites = sites(client).await?;
    let mut done = Extended::default();
    for chunk in sites.chunks(SITES_PER_TRANSACTION) {
        let tx = client
            .transaction()
            .await
            .map_err(StoreError::query("starting a running-total extension"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(StoreError::query("taking the running-total lock"))?;
        let got = extend_sites(&tx, chunk, until).await?;
        tx.commit()
            .await
            .map_err(StoreError::query("committing a running-total extension"))?;
        done.sites += got.sites;
        done.rows += got.rows;
    }
    Ok(done)
}

/// Every site with running totals or hourly rollups. The distinct sites of rollup_hourly come
/// from a walk down its primary key, one probe per site, not a scan of its rows.
async fn sites(client: &Client) -> Result<Vec<String>, StoreError> {
    let rows = client
        .query(
            "WITH RECURSIVE s(site) AS ( \
                 (SELECT site FROM rollup_hourly ORDER BY site LIMIT 1) \
                 UNION ALL \
                 SELECT (SELECT h.site FROM rollup_hourly AS h WHERE h.site > s.site \
                          ORDER BY h.site LIMIT 1) \
                   FROM s WHERE s.site IS NOT NULL) \
             SELECT site FROM s WHERE site IS NOT NULL \
             UNION SELECT site FROM rollup_running_sites",
            &[],
        )
        .await
        .map_err(StoreError::query("listing the sites of rollup_hourly"))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// A site's row of `rollup_running_sites`.
#[derive(Debug, Clone, Copy)]
struct Entry {
    first_us: i64,
    last_us: i64,
    through_us: i64,
    valid_after: Option<DateTime<Utc>>,
}

/// One running row being built: the totals and the maximum windows.
#[derive(Debug, Clone, Default)]
struct Running {
    summary: Summary,
    max: [f64; LEVELS],
}

async fn extend_sites(
    tx: &impl GenericClient,
    sites: &[String],
    until: DateTime<Utc>,
) -> Result<Extended, StoreError> {
    let until_us = until.timestamp_micros();
    let entries = entries(tx, sites).await?;
    let todo: Vec<&String> = sites
        .iter()
        .filter(|site| entries.get(*site).is_none_or(|e| e.through_us < until_us))
        .collect();
    let after: Vec<DateTime<Utc>> = todo
        .iter()
        .map(|site| match entries.get(*site) {
            Some(e) => time(e.through_us),
            None => before_all(),
        })
        .collect();
    let mut hourly = new_hours(tx, &todo, &after, until).await?;
    let pruned_before: Option<DateTime<Utc>> = tx
        .query_opt("SELECT hourly_before FROM rollup_running_pruned", &[])
        .await
        .map_err(StoreError::query("reading rollup_running_pruned"))?
        .map(|row| row.get(0));

    // The last row of each site that goes on, and the rows its maximum windows reach back to.
    let mut wanted: Vec<(&str, i64)> = Vec::new();
    for (site, hours) in &hourly {
        if let Some(e) = entries.get(site) {
            let last_new = *hours.keys().next_back().unwrap_or(&e.last_us);
            let mut needed = HashSet::from([e.last_us]);
            for h in (e.last_us + HOUR_US..=last_new).step_by(HOUR_US as usize) {
                for k in 0..LEVELS - 1 {
                    let back = h - (1i64 << k) * HOUR_US;
                    if back >= e.first_us && back <= e.last_us {
                        needed.insert(back);
                    }
                }
            }
            wanted.extend(needed.into_iter().map(|h| (site.as_str(), h)));
        }
    }
    let mut old = old_rows(tx, &wanted).await?;
    // A site starting afresh has no running rows, whatever an interrupted past left behind. One
    // whose last row is missing cannot be added to: it is cleared, to start afresh next turn.
    let broken: Vec<String> = hourly
        .keys()
        .filter(|site| {
            entries.contains_key(*site) && old.get(*site).is_none_or(|o| o.base.is_none())
        })
        .cloned()
        .collect();
    for site in &broken {
        tracing::warn!(
            site,
            "running totals lack their last row; the site is summed again"
        );
        hourly.remove(site);
    }
    let clear: Vec<&str> = hourly
        .keys()
        .filter(|site| !entries.contains_key(*site))
        .chain(&broken)
        .map(String::as_str)
        .collect();
    tx.execute("DELETE FROM rollup_running WHERE site = ANY($1)", &[&clear])
        .await
        .map_err(StoreError::query("clearing running totals"))?;
    tx.execute(
        "DELETE FROM rollup_running_sites WHERE site = ANY($1)",
        &[&broken],
    )
    .await
    .map_err(StoreError::query("clearing running totals"))?;

    let mut done = Extended::default();
    let mut out: Vec<(&str, i64, Running)> = Vec::with_capacity(ROWS_PER_STATEMENT);
    let mut entry_updates: Vec<(String, Entry)> = Vec::new();
    for (site, hours) in &hourly {
        let Some(&last_new) = hours.keys().next_back() else {
            continue;
        };
        let mut site_old = old.remove(site).unwrap_or_default();
        let (start, mut total, first_us, valid_after) = match entries.get(site) {
            Some(e) => {
                let base = site_old.base.take().unwrap_or_default();
                (e.last_us + HOUR_US, base, e.first_us, e.valid_after)
            }
            None => {
                let first = *hours.keys().next().unwrap_or(&last_new);
                let valid_after =
                    pruned_before.map(|p| p.duration_trunc(Duration::hours(1)).unwrap_or(p));
                (first, Summary::default(), first, valid_after)
            }
        };
        for h in (start..=last_new).step_by(HOUR_US as usize) {
            let mut max = [0.0; LEVELS];
            if let Some(hour) = hours.get(&h) {
                total.merge(hour);
                max[0] = hour.max_total_ms;
            }
            for k in 1..LEVELS {
                let back = h - (1i64 << (k - 1)) * HOUR_US;
                let earlier = site_old.max.get(&back).map_or(0.0, |m| m[k - 1]);
                max[k] = max[k - 1].max(earlier);
            }
            site_old.max.insert(h, max);
            out.push((
                site,
                h,
                Running {
                    summary: total.clone(),
                    max,
                },
            ));
            if out.len() == ROWS_PER_STATEMENT {
                insert_rows(tx, &out).await?;
                out.clear();
            }
            done.rows += 1;
        }
        entry_updates.push((
            site.clone(),
            Entry {
                first_us,
                last_us: last_new,
                through_us: until_us,
                valid_after,
            },
        ));
        done.sites += 1;
    }
    insert_rows(tx, &out).await?;
    write_entries(tx, &entry_updates).await?;
    // Sites with nothing new are complete through `until` too.
    let rest: Vec<&String> = todo
        .into_iter()
        .filter(|site| !entry_updates.iter().any(|(s, _)| s == *site))
        .collect();
    tx.execute(
        "UPDATE rollup_running_sites SET through = $2 WHERE site = ANY($1) AND through < $2",
        &[&rest, &until],
    )
    .await
    .map_err(StoreError::query("advancing rollup_running_sites"))?;
    Ok(done)
}

async fn entries(
    tx: &impl GenericClient,
    sites: &[String],
) -> Result<HashMap<String, Entry>, StoreError> {
    let rows = tx
        .query(
            "SELECT site, first, last, through, valid_after FROM rollup_running_sites \
              WHERE site = ANY($1)",
            &[&sites],
        )
        .await
        .map_err(StoreError::query("reading rollup_running_sites"))?;
    Ok(rows
        .iter()
        .map(|row| {
            let us = |i: usize| row.get::<_, DateTime<Utc>>(i).timestamp_micros();
            (
                row.get(0),
                Entry {
                    first_us: us(1),
                    last_us: us(2),
                    through_us: us(3),
                    valid_after: row.get(4),
                },
            )
        })
        .collect())
}

/// The hourly rollups of `sites` after their `after` hour, up to `until`, by site and hour.
async fn new_hours(
    tx: &impl GenericClient,
    sites: &[&String],
    after: &[DateTime<Utc>],
    until: DateTime<Utc>,
) -> Result<BTreeMap<String, BTreeMap<i64, Summary>>, StoreError> {
    let rows = tx
        .query(
            &format!(
                "SELECT {} FROM unnest($1::text[], $2::timestamptz[]) AS k(site, after) \
                 CROSS JOIN LATERAL ( \
                       SELECT * FROM rollup_hourly AS h \
                        WHERE h.site = k.site AND h.bucket > k.after AND h.bucket <= $3) AS h",
                super::ROLLUP_COLUMNS
                    .split(", ")
                    .map(|c| format!("h.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[&sites, &after, &until],
        )
        .await
        .map_err(StoreError::query("reading hourly rollups to sum"))?;
    let mut out: BTreeMap<String, BTreeMap<i64, Summary>> = BTreeMap::new();
    for row in &rows {
        let rollup = super::rollup_from_row(row);
        out.entry(rollup.site)
            .or_default()
            .insert(rollup.bucket_start_us, rollup.summary);
    }
    Ok(out)
}

/// The columns of a running row, in the order [`running_from_row`] reads them after `site,
/// bucket`.
pub const RUNNING_COLUMNS: &str = "checks, up, degraded, down, maintenance, failures::text, \
    dns_sum, dns_count, connect_sum, connect_count, tls_sum, tls_count, ttfb_sum, ttfb_count, \
    transfer_sum, transfer_count, total_sum, total_count, max_total_ms, total_hist, ttfb_hist";

/// Reads [`RUNNING_COLUMNS`] starting at column `at`: the totals and the maximum windows.
pub fn running_from_row(
    row: &Row,
    at: usize,
) -> Result<(Summary, Vec<f64>), tokio_postgres::Error> {
    let max: Vec<Option<f64>> = row.try_get(at + 18)?;
    let mut summary = counters_from_row(row, at)?;
    summary.total_hist = Histogram::from_counts(row.try_get(at + 19)?);
    summary.ttfb_hist = Histogram::from_counts(row.try_get(at + 20)?);
    Ok((
        summary,
        max.into_iter().map(Option::unwrap_or_default).collect(),
    ))
}

/// The counters, phase sums and failures of [`RUNNING_COLUMNS`] (or any row laid out like them)
/// starting at column `at`; histograms empty, no maximum. An unreadable `failures` object (not
/// a map of integers) counts as no failures rather than failing the read.
pub fn counters_from_row(row: &Row, at: usize) -> Result<Summary, tokio_postgres::Error> {
    let phase = |i: usize| -> Result<PhaseSum, tokio_postgres::Error> {
        Ok(PhaseSum {
            sum_ms: row.try_get(at + 6 + 2 * i)?,
            count: row.try_get(at + 7 + 2 * i)?,
        })
    };
    let failures: &str = row.try_get(at + 5)?;
    Ok(Summary {
        checks: row.try_get(at)?,
        up: row.try_get(at + 1)?,
        degraded: row.try_get(at + 2)?,
        down: row.try_get(at + 3)?,
        maintenance: row.try_get(at + 4)?,
        failures: serde_json::from_str(failures).unwrap_or_default(),
        phases: Phases {
            dns: phase(0)?,
            connect: phase(1)?,
            tls: phase(2)?,
            ttfb: phase(3)?,
            transfer: phase(4)?,
            total: phase(5)?,
        },
        max_total_ms: 0.0,
        total_hist: Histogram::new(),
        ttfb_hist: Histogram::new(),
    })
}

/// What [`extend_sites`] reads of a site's existing running rows: the last one, whose totals
/// the new rows add to, and the maximum windows of the rows the new ones reach back to.
#[derive(Default)]
struct OldRows {
    base: Option<Summary>,
    max: HashMap<i64, [f64; LEVELS]>,
}

async fn old_rows(
    tx: &impl GenericClient,
    wanted: &[(&str, i64)],
) -> Result<HashMap<String, OldRows>, StoreError> {
    let sites: Vec<&str> = wanted.iter().map(|(s, _)| *s).collect();
    let buckets: Vec<DateTime<Utc>> = wanted.iter().map(|(_, h)| time(*h)).collect();
    let rows = tx
        .query(
            &format!(
                "SELECT r.site, r.bucket, s.last, {} \
                   FROM unnest($1::text[], $2::timestamptz[]) AS k(site, bucket) \
                   JOIN rollup_running AS r USING (site, bucket) \
                   JOIN rollup_running_sites AS s USING (site)",
                RUNNING_COLUMNS
                    .split(", ")
                    .map(|c| format!("r.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[&sites, &buckets],
        )
        .await
        .map_err(StoreError::query("reading running totals to extend"))?;
    let mut out: HashMap<String, OldRows> = HashMap::new();
    for row in &rows {
        let (summary, max) =
            running_from_row(row, 3).map_err(StoreError::query("reading running totals"))?;
        let mut levels = [0.0; LEVELS];
        for (slot, value) in levels.iter_mut().zip(max) {
            *slot = value;
        }
        let bucket: DateTime<Utc> = row.get(1);
        let last: DateTime<Utc> = row.get(2);
        let site = out.entry(row.get(0)).or_default();
        if bucket == last {
            site.base = Some(summary);
        }
        site.max.insert(bucket.timestamp_micros(), levels);
    }
    Ok(out)
}

async fn insert_rows(
    tx: &impl GenericClient,
    rows: &[(&str, i64, Running)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut site = Vec::with_capacity(rows.len());
    let mut bucket = Vec::with_capacity(rows.len());
    let mut counters: [Vec<i64>; 5] = Default::default();
    let mut failures = Vec::with_capacity(rows.len());
    let mut sums: [Vec<f64>; 6] = Default::default();
    let mut counts: [Vec<i64>; 6] = Default::default();
    let mut max = Vec::with_capacity(rows.len());
    let mut total_hist = Vec::with_capacity(rows.len());
    let mut ttfb_hist = Vec::with_capacity(rows.len());
    for (name, hour, running) in rows {
        let s = &running.summary;
        site.push(*name);
        bucket.push(time(*hour));
        for (column, value) in
            counters
                .iter_mut()
                .zip([s.checks, s.up, s.degraded, s.down, s.maintenance])
        {
            column.push(value);
        }
        failures.push(serde_json::to_string(&s.failures).unwrap_or_else(|_| "{}".into()));
        let p = &s.phases;
        for (i, phase) in [&p.dns, &p.connect, &p.tls, &p.ttfb, &p.transfer, &p.total]
            .into_iter()
            .enumerate()
        {
            sums[i].push(phase.sum_ms);
            counts[i].push(phase.count);
        }
        max.push(literal(running.max.iter()));
        total_hist.push(literal(s.total_hist.as_slice().iter()));
        ttfb_hist.push(literal(s.ttfb_hist.as_slice().iter()));
    }
    tx.execute(
        "INSERT INTO rollup_running (site, bucket, checks, up, degraded, down, maintenance, \
           failures, dns_sum, dns_count, connect_sum, connect_count, tls_sum, tls_count, \
           ttfb_sum, ttfb_count, transfer_sum, transfer_count, total_sum, total_count, \
           max_total_ms, total_hist, ttfb_hist) \
         SELECT site, bucket, checks, up, degraded, down, maintenance, failures::jsonb, \
           dns_sum, dns_count, connect_sum, connect_count, tls_sum, tls_count, ttfb_sum, \
           ttfb_count, transfer_sum, transfer_count, total_sum, total_count, \
           max_total_ms::float8[], total_hist::bigint[], ttfb_hist::bigint[] \
         FROM unnest($1::text[], $2::timestamptz[], $3::int8[], $4::int8[], $5::int8[], \
           $6::int8[], $7::int8[], $8::text[], $9::float8[], $10::int8[], $11::float8[], \
           $12::int8[], $13::float8[], $14::int8[], $15::float8[], $16::int8[], $17::float8[], \
           $18::int8[], $19::float8[], $20::int8[], $21::text[], $22::text[], $23::text[]) \
           AS u(site, bucket, checks, up, degraded, down, maintenance, failures, dns_sum, \
           dns_count, connect_sum, connect_count, tls_sum, tls_count, ttfb_sum, ttfb_count, \
           transfer_sum, transfer_count, total_sum, total_count, max_total_ms, total_hist, \
           ttfb_hist)",
        &[
            &site,
            &bucket,
            &counters[0],
            &counters[1],
            &counters[2],
            &counters[3],
            &counters[4],
            &failures,
            &sums[0],
            &counts[0],
            &sums[1],
            &counts[1],
            &sums[2],
            &counts[2],
            &sums[3],
            &counts[3],
            &sums[4],
            &counts[4],
            &sums[5],
            &counts[5],
            &max,
            &total_hist,
            &ttfb_hist,
        ],
    )
    .await
    .map_err(StoreError::query("writing running totals"))?;
    Ok(())
}

async fn write_entries(
    tx: &impl GenericClient,
    entries: &[(String, Entry)],
) -> Result<(), StoreError> {
    let site: Vec<&str> = entries.iter().map(|(s, _)| s.as_str()).collect();
    let first: Vec<DateTime<Utc>> = entries.iter().map(|(_, e)| time(e.first_us)).collect();
    let last: Vec<DateTime<Utc>> = entries.iter().map(|(_, e)| time(e.last_us)).collect();
    let through: Vec<DateTime<Utc>> = entries.iter().map(|(_, e)| time(e.through_us)).collect();
    let valid_after: Vec<Option<DateTime<Utc>>> =
        entries.iter().map(|(_, e)| e.valid_after).collect();
    tx.execute(
        "INSERT INTO rollup_running_sites (site, first, last, through, valid_after) \
         SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], \
                              $4::timestamptz[], $5::timestamptz[]) \
         ON CONFLICT (site) DO UPDATE SET first = excluded.first, last = excluded.last, \
           through = excluded.through, valid_after = excluded.valid_after",
        &[&site, &first, &last, &through, &valid_after],
    )
    .await
    .map_err(StoreError::query("writing rollup_running_sites"))?;
    Ok(())
}

/// A PostgreSQL array literal of numbers: `{1,0,3}`.
fn literal<T: std::fmt::Display>(values: impl Iterator<Item = T>) -> String {
    let items: Vec<String> = values.map(|v| v.to_string()).collect();
    format!("{{{}}}", items.join(","))
}

fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_else(before_all)
}

/// Earlier than any rollup, and still a timestamptz (chrono's minimum is not).
fn before_all() -> DateTime<Utc> {
    DateTime::from_timestamp(-62_135_596_800, 0).unwrap_or_default()
}

/// Extends the running totals every [`EXTEND_EVERY`] on a connection of its own, until
/// `shutdown`; a failure is logged and retried at the next turn (reports read hourly rows past a
/// site's `through` meanwhile, so nothing is wrong, only slower).
pub async fn maintain(db: DatabaseSettings, shutdown: CancellationToken) {
    let mut client: Option<Client> = None;
    // The consumer migrates the schema first, and catches up.
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = tokio::time::sleep(FIRST_EXTENSION_AFTER) => {}
    }
    loop {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = super::connect(&db)
                .await
                .map_err(|error| {
                    tracing::warn!(error = %super::ErrorChain(&error), "running totals: cannot connect; retrying later")
                })
                .ok();
        }
        if let Some(c) = client.as_mut() {
            match extend(c, settled_hour(Utc::now())).await {
                Ok(done) if done.rows > 0 => {
                    tracing::debug!(
                        sites = done.sites,
                        rows = done.rows,
                        "running totals extended"
                    )
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %super::ErrorChain(&error), "running totals: extension failed; retrying later")
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EXTEND_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_settled_hour_ended_five_minutes_ago() {
        let at = |h, m, s| Utc.with_ymd_and_hms(2026, 5, 1, h, m, s).unwrap();
        // (now, the latest hour that ended at least 5 minutes before it)
        for (now, hour) in [
            (at(10, 5, 0), at(9, 0, 0)),
            (at(10, 4, 59), at(8, 0, 0)),
            (at(10, 59, 59), at(9, 0, 0)),
            (at(11, 0, 0), at(9, 0, 0)),
        ] {
            assert_eq!(settled_hour(now), hour, "{now}");
        }
    }
}
