//! Retention: drops whole day partitions of `check_results`, and deletes old rollup buckets.
//!
//! Raw rows expire by `DROP TABLE` of a day partition (`check_results_pYYYYMMDD`, created by the
//! consumer): no bulk DELETE, no dead tuples, no vacuum debt, and it takes milliseconds whatever
//! the day held. A day is dropped once all of it is older than the cut-off, so up to one more
//! day than asked for is kept. Rollups are small (one row per site and hour or day) and keep
//! their own, longer retention: hourly buckets for [`DEFAULT_HOURLY_ROLLUP_RETENTION`], daily
//! buckets for as long as the operator wants (by default forever).

use chrono::{DateTime, Duration, DurationRound, NaiveDate, Utc};
use tokio_postgres::{Client, GenericClient};

use super::{running, StoreError};

/// How long hourly rollups are kept unless told otherwise: long enough for a 90-day chart at
/// hour resolution; reports over longer periods read the daily rollups.
pub const DEFAULT_HOURLY_ROLLUP_RETENTION: Duration = Duration::days(90);

/// Prefix of the day partitions of `check_results`; the suffix is the UTC day, `YYYYMMDD`.
const PARTITION_PREFIX: &str = "check_results_p";

/// What to remove: everything older than each age (`None`: keep forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub results: Duration,
    pub hourly_rollups: Option<Duration>,
    pub daily_rollups: Option<Duration>,
}

/// `results 30d, hourly rollups 90d, daily rollups kept`, for the log.
impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let age = |age: Option<Duration>| match age {
            Some(age) => crate::duration::human(age.num_seconds() as f64),
            None => "kept".to_owned(),
        };
        write!(
            f,
            "results {}, hourly rollups {}, daily rollups {}",
            age(Some(self.results)),
            age(self.hourly_rollups),
            age(self.daily_rollups)
        )
    }
}

/// What [`prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Day partitions dropped, oldest first (their UTC days).
    pub days_dropped: Vec<NaiveDate>,
    /// Rows those partitions held.
    pub rows_dropped: u64,
    pub hourly_rollups_deleted: u64,
    pub daily_rollups_deleted: u64,
}

/// Applies `retention` as of now.
#[tracing::instrument(skip_all, fields(%retention))]
pub async fn prune(client: &Client, retention: Retention) -> Result<PruneReport, StoreError> {
    for age in [
        Some(retention.results),
        retention.hourly_rollups,
        retention.daily_rollups,
    ] {
        if age.is_some_and(|age| age < Duration::zero()) {
            return Err(StoreError::Retention {
                older_than: format!("{age:?}"),
            });
        }
    }
    let now = Utc::now();
    let cutoff = |age: Duration| {
        now.checked_sub_signed(age)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    };
    let mut report = drop_partitions(client, cutoff(retention.results)).await?;
    if let Some(age) = retention.hourly_rollups {
        report.hourly_rollups_deleted = prune_hourly(client, cutoff(age)).await?;
    }
    if let Some(age) = retention.daily_rollups {
        report.daily_rollups_deleted = client
            .execute(
                "DELETE FROM rollup_daily WHERE bucket < $1",
                &[&cutoff(age)],
            )
            .await
            .map_err(StoreError::query("deleting old rollups"))?;
    }
    tracing::info!(
        days = report.days_dropped.len(),
        rows = report.rows_dropped,
        hourly_rollups = report.hourly_rollups_deleted,
        daily_rollups = report.daily_rollups_deleted,
        "pruned"
    );
    Ok(report)
}

/// Deletes the hourly rollups before `cutoff` and the running totals of their hours
/// (src/store/running.rs), in one transaction; returns the hourly rows deleted.
///
/// The running totals stay what they were: retention forgets hours, it does not change what
/// they summed to (`sitewatch.keep_running` tells the trigger on rollup_hourly so). Each site's
/// rows before the hour before the cutoff's go, and periods must now start at or after the
/// cutoff's hour to be read from them (`valid_after`); a site whose running totals are first
/// built later learns the same from `rollup_running_pruned`.
async fn prune_hourly(client: &Client, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
    let keep_from = cutoff
        .duration_trunc(Duration::hours(1))
        .unwrap_or(cutoff)
        .checked_sub_signed(Duration::hours(1))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    client
        .batch_execute("BEGIN")
        .await
        .map_err(StoreError::query("starting the rollup prune"))?;
    let pruned = async {
        client
            .execute(
                "SELECT set_config('sitewatch.keep_running', 'on', true)",
                &[],
            )
            .await?;
        client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&running::LOCK_KEY])
            .await?;
        let deleted = client
            .execute("DELETE FROM rollup_hourly WHERE bucket < $1", &[&cutoff])
            .await?;
        client
            .execute(
                "DELETE FROM rollup_running WHERE bucket < $1",
                &[&keep_from],
            )
            .await?;
        client
            .execute(
                "DELETE FROM rollup_running_sites WHERE last < $1",
                &[&keep_from],
            )
            .await?;
        client
            .execute(
                "UPDATE rollup_running_sites \
                    SET first = greatest(first, $1), \
                        valid_after = greatest(coalesce(valid_after, $1), $1) \
                  WHERE first < $1 OR valid_after IS NULL OR valid_after < $1",
                &[&keep_from],
            )
            .await?;
        client
            .execute(
                "INSERT INTO rollup_running_pruned (hourly_before) VALUES ($1) \
                 ON CONFLICT (one) DO UPDATE \
                   SET hourly_before = greatest(rollup_running_pruned.hourly_before, $1)",
                &[&cutoff],
            )
            .await?;
        client.batch_execute("COMMIT").await?;
        Ok::<u64, tokio_postgres::Error>(deleted)
    }
    .await;
    match pruned {
        Ok(deleted) => Ok(deleted),
        Err(error) => {
            // The connection may be gone; then there is nothing left to roll back either.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(StoreError::query("deleting old hourly rollups")(error))
        }
    }
}

/// Drops the day partitions that end at or before `cutoff`, each in its own transaction.
async fn drop_partitions(
    client: &Client,
    cutoff: DateTime<Utc>,
) -> Result<PruneReport, StoreError> {
    let mut report = PruneReport::default();
    for day in partition_days(client).await? {
        let name = partition_name(day);
        let end = day
            .succ_opt()
            .unwrap_or(day)
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc());
        if end.is_none_or(|end| end > cutoff) {
            continue;
        }
        let rows: i64 = client
            .query_one(&format!("SELECT count(*) FROM {name}"), &[])
            .await
            .map_err(StoreError::query("counting a partition's rows"))?
            .get(0);
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
            .await
            .map_err(StoreError::query("dropping a check_results partition"))?;
        report.days_dropped.push(day);
        report.rows_dropped += rows as u64;
    }
    Ok(report)
}

/// The UTC days that have a `check_results` partition, oldest first.
pub(crate) async fn partition_days(
    client: &impl GenericClient,
) -> Result<Vec<NaiveDate>, StoreError> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'check_results'::regclass ORDER BY 1",
            &[],
        )
        .await
        .map_err(StoreError::query("listing check_results partitions"))?;
    Ok(rows
        .iter()
        .filter_map(|row| partition_day(row.get(0)))
        .collect())
}

/// The name of the partition of `day`.
fn partition_name(day: NaiveDate) -> String {
    format!("{PARTITION_PREFIX}{}", day.format("%Y%m%d"))
}

/// The UTC day of a partition named `check_results_pYYYYMMDD`; `None` for any other name.
fn partition_day(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix(PARTITION_PREFIX)?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_prints_for_people() {
        let retention = Retention {
            results: Duration::days(30),
            hourly_rollups: Some(Duration::hours(36)),
            daily_rollups: None,
        };
        assert_eq!(
            retention.to_string(),
            "results 30d 0h, hourly rollups 1d 12h, daily rollups kept"
        );
    }

    #[test]
    fn partition_names_give_their_day() {
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d);
        let cases = [
            ("check_results_p20261130", day(2026, 11, 30)),
            ("check_results_p19700101", day(1970, 1, 1)),
            ("check_results_p20261331", None),
            ("check_results_p2026113", None),
            ("check_results_p2026113x", None),
            ("check_results_old", None),
            ("other_p20261130", None),
        ];
        for (name, want) in cases {
            assert_eq!(partition_day(name), want, "{name}");
        }
    }
}
