//! `sitewatch rollup rebuild`: recomputes the rollups of a range of days from the raw rows, in
//! one transaction — after a change of the bucket scheme or a fix to the rollup arithmetic.
//!
//! The range is widened to whole UTC days. Days whose raw rows are gone (their partition was
//! dropped by retention) are skipped, so a rebuild never replaces rollups with nothing. Each
//! remaining day is read once, folded with the same [`Summary::record`] the consumer's
//! aggregation uses, and written over the stored buckets. Running it twice gives the same rows.
//! The rollup tables are locked for the duration: the consumer's next batch waits for it.

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use futures::TryStreamExt;
use tokio_postgres::{Client, Transaction};

use super::insight::{self, RollupTable};
use super::StoreError;
use crate::insight::rollup::{bucket_start_us, Grain, Rollup, Sample, Summary};
use crate::result::Outcome;

/// Longest range one rebuild accepts: a typo (`--from 2016`) should not lock the rollups for
/// an hour.
pub const MAX_REBUILD_DAYS: i64 = 3_660;

/// What [`rebuild_rollups`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Days recomputed from their raw rows.
    pub days_rebuilt: Vec<NaiveDate>,
    /// Days of the range without raw rows (partition dropped): their rollups were kept.
    pub days_skipped: Vec<NaiveDate>,
    /// Raw rows read.
    pub rows: u64,
}

/// Recomputes `rollup_hourly` and `rollup_daily` for the UTC days that `[from, to)` touches.
pub async fn rebuild_rollups(
    client: &mut Client,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<RebuildReport, StoreError> {
    let first = from.date_naive();
    let last = (to - Duration::microseconds(1)).date_naive();
    if to <= from || (last - first).num_days() >= MAX_REBUILD_DAYS {
        return Err(StoreError::Rebuild {
            reason: format!(
                "the range must be non-empty and at most {MAX_REBUILD_DAYS} days, got {from} .. {to}"
            ),
        });
    }
    let tx = client
        .transaction()
        .await
        .map_err(StoreError::query("starting the rebuild transaction"))?;
    tx.batch_execute("LOCK TABLE rollup_hourly, rollup_daily IN SHARE ROW EXCLUSIVE MODE")
        .await
        .map_err(StoreError::query("locking the rollup tables"))?;
    let kept = super::prune::partition_days(&tx).await?;
    let mut report = RebuildReport::default();
    for day in first.iter_days().take_while(|day| *day <= last) {
        if !kept.contains(&day) {
            report.days_skipped.push(day);
            continue;
        }
        report.rows += rebuild_day(&tx, day).await?;
        report.days_rebuilt.push(day);
    }
    tx.commit()
        .await
        .map_err(StoreError::query("committing the rebuild"))?;
    // The trigger on rollup_hourly dropped the running totals from each rebuilt hour on; sum
    // them again now rather than at the consumer's next turn.
    super::running::extend(client, super::running::settled_hour(Utc::now())).await?;
    Ok(report)
}

/// Replaces the rollups of one UTC day with those computed from its raw rows; returns the rows.
/// One function on purpose (a little over 80 lines): clear, stream and fold, write — the steps of
/// one day inside the rebuild's transaction, read top to bottom.
async fn rebuild_day(tx: &Transaction<'_>, day: NaiveDate) -> Result<u64, StoreError> {
    let start = day.and_time(NaiveTime::MIN).and_utc();
    let end = start + Duration::days(1);
    for table in [RollupTable::Hourly, RollupTable::Daily] {
        tx.execute(
            &format!(
                "DELETE FROM {} WHERE bucket >= $1 AND bucket < $2",
                table.name()
            ),
            &[&start, &end],
        )
        .await
        .map_err(StoreError::query("clearing rollups before a rebuild"))?;
    }
    let rows = tx
        .query_raw(
            "SELECT site, scheduled_at, outcome, failure_kind, maintenance IS NOT NULL, dns_ms, \
               connect_ms, tls_ms, ttfb_ms, transfer_ms, total_ms \
             FROM check_results WHERE scheduled_at >= $1 AND scheduled_at < $2",
            [&start, &end],
        )
        .await
        .map_err(StoreError::query("reading raw rows for a rebuild"))?;
    let mut rows = std::pin::pin!(rows);
    let mut hours: HashMap<(String, i64), Summary> = HashMap::new();
    let mut count = 0;
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(StoreError::query("reading raw rows for a rebuild"))?
    {
        let site: String = row.get(0);
        let at: DateTime<Utc> = row.get(1);
        let outcome = match row.get::<_, &str>(2) {
            "up" => Outcome::Up,
            "degraded" => Outcome::Degraded,
            _ => Outcome::Down,
        };
        let sample = Sample {
            site: &site,
            scheduled_at_us: at.timestamp_micros(),
            outcome,
            failure_kind: row.get(3),
            maintenance: row.get(4),
            dns_ms: row.get(5),
            connect_ms: row.get(6),
            tls_ms: row.get(7),
            ttfb_ms: row.get(8),
            transfer_ms: row.get(9),
            total_ms: row.get(10),
        };
        let hour = bucket_start_us(Grain::Hour, sample.scheduled_at_us);
        hours
            .entry((site.clone(), hour))
            .or_default()
            .record(&sample);
        count += 1;
    }
    let hourly: Vec<Rollup> = hours
        .into_iter()
        .map(|((site, hour), summary)| {
            let mut rollup = Rollup::new(&site, hour);
            rollup.summary = summary;
            rollup
        })
        .collect();
    let mut days: HashMap<&str, Rollup> = HashMap::new();
    for hour in &hourly {
        days.entry(&hour.site)
            .or_insert_with(|| Rollup::new(&hour.site, start.timestamp_micros()))
            .summary
            .merge(&hour.summary);
    }
    let daily: Vec<Rollup> = days.into_values().collect();
    for (table, rollups) in [(RollupTable::Hourly, &hourly), (RollupTable::Daily, &daily)] {
        insight::upsert(tx, table, rollups)
            .await
            .map_err(StoreError::query("writing rebuilt rollups"))?;
    }
    Ok(count)
}
