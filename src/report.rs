//! `sitewatch report`: availability, error budget, latency and downtime of each site over a
//! period, read from the rollups and the state-change log — never from `check_results`.
//!
//! ```text
//!  --since | --from --to | longest SLO window
//!        │ Period: from rounded down, to rounded up to the UTC hour
//!        ▼
//!  site with running totals from before `from` (src/store/running.rs):
//!        rollup_running(last summed hour) − rollup_running(hour before from)  ─┐ one query,
//!        + rollup_hourly after the site's `through`; max from two windows      │ streamed and
//!  any other site: Period::split ─► whole UTC days ─► rollup_daily             │ merged into a
//!                               └─► edge hours    ─► rollup_hourly             ─┴─► Summary
//!  state_changes: running downtime of the last change before from, before
//!                 min(to, now), before to (three index probes)             ─► Downtime
//!                                                        ▼
//!                   SiteReport (uptime, budget, quantiles, SLO verdict) ─► table | JSON lines
//! ```
//!
//! The arithmetic is `crate::insight`'s; this module picks the buckets, reads them and judges
//! the SLOs. Histograms are merged here, not with the SQL aggregate `sitewatch_hist_sum`: a
//! PL/pgSQL call per row costs ~30 µs, adding the fetched arrays in Rust almost nothing.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::config::{Config, Site, Slo, DEFAULT_SLO_WINDOW};
use crate::insight::downtime::Downtime;
use crate::insight::histogram::Histogram;
use crate::insight::rollup::{bucket_start_us, Budget, Grain, Summary};

/// The period when neither `--since` nor `--from`/`--to` is given and no selected site has an
/// SLO: a month, the usual SLO window.
pub const DEFAULT_PERIOD: Duration = DEFAULT_SLO_WINDOW;

/// The percentiles every report shows, of total time and of time to first byte.
pub const QUANTILES: [(&str, f64); 3] = [("p50", 0.50), ("p95", 0.95), ("p99", 0.99)];

/// What can stop a report. The first three are the caller's mistakes (`sitewatch report` exits
/// 2 for them), the others the database's.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no site named {0:?} in the configuration")]
    UnknownSite(String),
    #[error("the period {from} .. {to} is empty: --from must be before --to")]
    EmptyPeriod { from: String, to: String },
    #[error("a period of {length} ending {end} starts before the first representable time")]
    OutOfRange { length: String, end: String },
    #[error(
        "a rollup row of {site} holds a histogram that is not a one-dimensional bigint[]: {value}"
    )]
    Histogram { site: String, value: String },
    #[error("PostgreSQL: {context}")]
    Query {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl ReportError {
    /// The request itself is wrong (unknown site, empty or impossible period), as opposed to a
    /// failure of the database or its data.
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            ReportError::UnknownSite(_)
                | ReportError::EmptyPeriod { .. }
                | ReportError::OutOfRange { .. }
        )
    }

    fn query(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| ReportError::Query { context, source }
    }
}

// ---------------------------------------------------------------------------------------------
// Period

/// The time a report covers, `[from, to)` in unix µs, on whole UTC hours: the finest rollup is
/// an hour, so a period that cut an hour would count checks outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from_us: i64,
    pub to_us: i64,
}

/// Where a period's rollups come from: daily rows for the whole UTC days inside it, hourly rows
/// for the hours before the first midnight and after the last. Empty ranges read nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Bucket starts of `rollup_daily` rows to read (µs, half-open).
    pub days: Range<i64>,
    /// Bucket starts of `rollup_hourly` rows to read: the head and the tail of the period.
    pub hours: [Range<i64>; 2],
}

impl Period {
    /// `[from, to)` widened to whole UTC hours: `from` rounded down, `to` rounded up. `from`
    /// must be before `to`.
    pub fn new(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Period, ReportError> {
        if from >= to {
            return Err(ReportError::EmptyPeriod {
                from: rfc3339(from),
                to: rfc3339(to),
            });
        }
        Ok(Period {
            from_us: bucket_start_us(Grain::Hour, from.timestamp_micros()),
            to_us: ceil_hour(to.timestamp_micros()),
        })
    }

    /// The `length` up to `now`, widened to whole hours like [`Period::new`].
    pub fn ending(now: DateTime<Utc>, length: Duration) -> Result<Period, ReportError> {
        let out_of_range = || ReportError::OutOfRange {
            length: crate::duration::format(length),
            end: rfc3339(now),
        };
        let from = chrono::Duration::from_std(length)
            .ok()
            .and_then(|length| now.checked_sub_signed(length))
            .ok_or_else(out_of_range)?;
        Period::new(from, now)
    }

    pub fn from(&self) -> DateTime<Utc> {
        time(self.from_us)
    }

    pub fn to(&self) -> DateTime<Utc> {
        time(self.to_us)
    }

    pub fn length(&self) -> Duration {
        Duration::from_micros((self.to_us - self.from_us).unsigned_abs())
    }

    /// Which rollup rows cover the period exactly (see [`Split`]).
    pub fn split(&self) -> Split {
        let first_midnight = ceil_day(self.from_us);
        let last_midnight = bucket_start_us(Grain::Day, self.to_us);
        if first_midnight > last_midnight {
            // Within one UTC day: hours only.
            return Split {
                days: 0..0,
                hours: [self.from_us..self.to_us, 0..0],
            };
        }
        Split {
            days: first_midnight..last_midnight,
            hours: [self.from_us..first_midnight, last_midnight..self.to_us],
        }
    }
}

/// What the command line asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The longest SLO window of the selected sites, else [`DEFAULT_PERIOD`], up to now.
    Default,
    /// `--since 7d`: that long, up to now.
    Since(Duration),
    /// `--from T --to T`.
    Between {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
}

impl Span {
    /// The period this span means for `sites` at `now`.
    pub fn period(&self, sites: &[&Site], now: DateTime<Utc>) -> Result<Period, ReportError> {
        match *self {
            Span::Default => Period::ending(now, default_length(sites)),
            Span::Since(length) => Period::ending(now, length),
            Span::Between { from, to } => Period::new(from, to),
        }
    }
}

/// The longest SLO window among `sites`, or [`DEFAULT_PERIOD`] when none has an SLO.
pub fn default_length(sites: &[&Site]) -> Duration {
    sites
        .iter()
        .filter_map(|site| site.slo.as_ref().map(|slo| slo.window))
        .max()
        .unwrap_or(DEFAULT_PERIOD)
}

/// Parses `--from`/`--to`: an RFC 3339 timestamp (`2024-03-01T10:00:00Z`, any offset), or a
/// date `2024-03-01`, meaning midnight UTC.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|midnight| midnight.and_utc())
        .ok_or_else(|| {
            format!("expected an RFC 3339 time (2024-03-01T10:00:00Z) or a date (2024-03-01), got {text:?}")
        })
}

fn ceil_hour(t_us: i64) -> i64 {
    ceil_to(Grain::Hour, t_us)
}

fn ceil_day(t_us: i64) -> i64 {
    ceil_to(Grain::Day, t_us)
}

/// The first bucket start at or after `t_us` (saturating at the end of the `i64` range).
fn ceil_to(grain: Grain, t_us: i64) -> i64 {
    let start = bucket_start_us(grain, t_us);
    if start == t_us {
        start
    } else {
        start.saturating_add(grain.micros())
    }
}

fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

// ---------------------------------------------------------------------------------------------
// Verdicts

/// One site over one period: what was measured and how its SLO fared.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteReport {
    pub site: String,
    pub period: Period,
    /// Every rollup bucket of the period merged: counts, phase sums, histograms.
    pub summary: Summary,
    /// `None` for a site without an SLO: it is still reported, with nothing to breach.
    pub slo: Option<SloStatus>,
    pub downtime: Downtime,
}

/// A site's SLO judged over the period.
#[derive(Debug, Clone, PartialEq)]
pub struct SloStatus {
    pub target_pct: f64,
    /// The SLO's own window: the budget's minutes are minutes of it, whatever the period.
    pub window: Duration,
    /// Spent by the period's down checks: the period's failure rate against the allowed one.
    pub budget: Budget,
    pub latency: Option<LatencyStatus>,
}

/// A latency objective (`latency = { p99 = "800ms" }`) judged over the period.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyStatus {
    /// As written in sites.lua: `p99`.
    pub name: String,
    pub quantile: f64,
    pub max_ms: f64,
    /// The quantile of the total time, from the merged histogram (±7.5 %); `None` without checks.
    pub observed_ms: Option<f64>,
}

impl LatencyStatus {
    /// The percentile is above its bound. No checks, no breach.
    pub fn breached(&self) -> bool {
        self.observed_ms.is_some_and(|ms| ms > self.max_ms)
    }
}

impl SloStatus {
    /// Judges `slo` by the `summary` of a period.
    pub fn judge(slo: &Slo, summary: &Summary) -> SloStatus {
        SloStatus {
            target_pct: slo.target_pct,
            window: slo.window,
            budget: summary.error_budget(slo.target_pct, slo.window.as_secs_f64() / 60.0),
            latency: slo.latency.as_ref().map(|latency| LatencyStatus {
                name: latency.name.clone(),
                quantile: latency.quantile,
                max_ms: latency.max.as_secs_f64() * 1e3,
                observed_ms: summary.total_hist.quantile(latency.quantile),
            }),
        }
    }

    /// Down checks beyond the budget, or the latency percentile above its bound.
    pub fn breached(&self) -> bool {
        self.budget.breached() || self.latency.as_ref().is_some_and(LatencyStatus::breached)
    }
}

impl SiteReport {
    /// Builds the report of one site from its merged summary and downtime.
    pub fn new(site: &Site, period: Period, summary: Summary, downtime: Downtime) -> SiteReport {
        SiteReport {
            site: site.name.clone(),
            period,
            slo: site.slo.as_ref().map(|slo| SloStatus::judge(slo, &summary)),
            summary,
            downtime,
        }
    }

    /// The site has an SLO and breached it.
    pub fn breached(&self) -> bool {
        self.slo.as_ref().is_some_and(SloStatus::breached)
    }

    /// The `--json` line: every number the table shows and more, `null` where not applicable
    /// (no SLO, no checks, a phase that never happened).
    pub fn json_line(&self) -> String {
        let s = &self.summary;
        let slo = self.slo.as_ref();
        let quantiles = |histogram: &Histogram| QUANTILES.map(|(_, q)| histogram.quantile(q));
        let [p50_ms, p95_ms, p99_ms] = quantiles(&s.total_hist);
        let [ttfb_p50_ms, ttfb_p95_ms, ttfb_p99_ms] = quantiles(&s.ttfb_hist);
        let p = &s.phases;
        let line = JsonLine {
            site: &self.site,
            from: rfc3339(self.period.from()),
            to: rfc3339(self.period.to()),
            checks: s.checks,
            up: s.up,
            degraded: s.degraded,
            down: s.down,
            maintenance: s.maintenance,
            uptime_pct: s.uptime_pct(),
            slo_target_pct: slo.map(|slo| slo.target_pct),
            slo_window: slo.map(|slo| crate::duration::format(slo.window)),
            budget_left_pct: slo.map(|slo| slo.budget.left_pct),
            budget_left_min: slo.map(|slo| slo.budget.left_minutes),
            latency_objective: slo
                .and_then(|slo| slo.latency.as_ref())
                .map(|l| JsonLatency {
                    name: &l.name,
                    quantile: l.quantile,
                    max_ms: l.max_ms,
                    observed_ms: l.observed_ms,
                    breached: l.breached(),
                }),
            breached: slo.map(SloStatus::breached),
            p50_ms,
            p95_ms,
            p99_ms,
            ttfb_p50_ms,
            ttfb_p95_ms,
            ttfb_p99_ms,
            max_ms: (s.checks > 0).then_some(s.max_total_ms),
            mean_ms: JsonMeans {
                dns: p.dns.mean_ms(),
                connect: p.connect.mean_ms(),
                tls: p.tls.mean_ms(),
                ttfb: p.ttfb.mean_ms(),
                transfer: p.transfer.mean_ms(),
                total: p.total.mean_ms(),
            },
            failures: &s.failures,
            state_changes: self.downtime.changes,
            downtime_s: self.downtime.down_secs(),
        };
        // Strings, numbers, options and a map with string keys always serialize.
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// One `--json` line, its keys in this order; `docs/storage.md` documents each.
#[derive(Serialize)]
struct JsonLine<'a> {
    site: &'a str,
    from: String,
    to: String,
    checks: i64,
    up: i64,
    degraded: i64,
    down: i64,
    maintenance: i64,
    uptime_pct: Option<f64>,
    slo_target_pct: Option<f64>,
    slo_window: Option<String>,
    budget_left_pct: Option<f64>,
    budget_left_min: Option<f64>,
    latency_objective: Option<JsonLatency<'a>>,
    breached: Option<bool>,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    p99_ms: Option<f64>,
    ttfb_p50_ms: Option<f64>,
    ttfb_p95_ms: Option<f64>,
    ttfb_p99_ms: Option<f64>,
    max_ms: Option<f64>,
    mean_ms: JsonMeans,
    failures: &'a BTreeMap<String, i64>,
    state_changes: u64,
    downtime_s: f64,
}

#[derive(Serialize)]
struct JsonLatency<'a> {
    name: &'a str,
    quantile: f64,
    max_ms: f64,
    observed_ms: Option<f64>,
    breached: bool,
}

#[derive(Serialize)]
struct JsonMeans {
    dns: Option<f64>,
    connect: Option<f64>,
    tls: Option<f64>,
    ttfb: Option<f64>,
    transfer: Option<f64>,
    total: Option<f64>,
}

// ---------------------------------------------------------------------------------------------
// Reading

/// The selected sites in configuration order: all when `only` is empty. Every name in `only`
/// must exist.
pub fn select<'c>(config: &'c Config, only: &[String]) -> Result<Vec<&'c Site>, ReportError> {
    if let Some(name) = only
        .iter()
        .find(|name| !config.sites.iter().any(|site| &site.name == *name))
    {
        return Err(ReportError::UnknownSite(name.clone()));
    }
    Ok(config
        .sites
        .iter()
        .filter(|site| only.is_empty() || only.contains(&site.name))
        .map(Arc::as_ref)
        .collect())
}

/// Everything a period's figures are made of, in one statement (one snapshot, so an extension
/// of the running totals between two reads can neither drop nor double an hour). Per site:
///
/// * with running totals covering the period's start (`rollup_running_sites`, see
///   src/store/running.rs): `lo` the running row of the hour before the period (subtracted),
///   `hi` the row of the period's last summed hour, `max` the second row of the maximum's
///   window pair, and `add` the hourly rows after the site's `through`: about three rows;
/// * otherwise (`add` only): daily rows for the whole days ($4..$5), hourly rows for the edges
///   ($6..$7 and $8..$9).
///
/// Every table is read per site through its (site, bucket) key: a LATERAL subquery kept apart
/// by `OFFSET 0`, so it runs once per site. Joined as sets (or pulled up into a join), the
/// planner cannot know how few sites need which rows, and chose a sequential scan of all of
/// rollup_hourly (0.9 s of a 2.1 s report, and JIT compilation for another second).
///
/// Histograms come as text (`{0,0,3,17,…}`): most counts are zeros, two bytes each that way
/// against twelve in the binary array format, and PostgreSQL sends them faster too (measured:
/// 0.5 s against 0.75 s for 88,000 daily rows).
const ROLLUPS_SQL: &str = "\
    WITH e AS ( \
        SELECT k.site, r.first, r.last, r.through, \
               coalesce(r.through >= $2 \
                        AND (r.valid_after IS NULL OR r.valid_after <= $2 - interval '1 hour') \
                        AND $3 - $2 < interval '16383 hours', false) AS running \
          FROM unnest($1::text[]) AS k(site) \
          LEFT JOIN rollup_running_sites AS r USING (site) \
    ), k AS ( \
        SELECT site, first, last, through, $2 - interval '1 hour' AS lo, \
               least($3 - interval '1 hour', through) AS hi, \
               greatest($2, first) AS max_from, \
               least($3 - interval '1 hour', through, last) AS max_to \
          FROM e WHERE running \
    ), lv AS ( \
        SELECT k.*, CASE WHEN max_to >= max_from THEN floor( \
                   ln(extract(epoch FROM max_to - max_from)::bigint / 3600 + 1) / ln(2) + 1e-9 \
               )::int END AS level \
          FROM k \
    ) \
    SELECT lv.site, 'lo', lv.level, RUNNING FROM lv JOIN rollup_running AS r \
        ON r.site = lv.site AND r.bucket = least(lv.lo, lv.last) WHERE lv.lo >= lv.first \
    UNION ALL \
    SELECT lv.site, 'hi', lv.level, RUNNING FROM lv JOIN rollup_running AS r \
        ON r.site = lv.site AND r.bucket = least(lv.hi, lv.last) WHERE lv.hi >= lv.first \
    UNION ALL \
    SELECT lv.site, 'max', lv.level, MAXIMA FROM lv JOIN rollup_running AS r \
        ON r.site = lv.site \
       AND r.bucket = lv.max_from + ((1::bigint << lv.level) - 1) * interval '1 hour' \
     WHERE lv.level IS NOT NULL \
    UNION ALL \
    SELECT lv.site, 'add', NULL, ROLLUP FROM lv CROSS JOIN LATERAL ( \
           SELECT * FROM rollup_hourly AS h \
            WHERE h.site = lv.site AND h.bucket > greatest(lv.through, lv.lo) \
              AND h.bucket < $3 OFFSET 0) AS r \
    UNION ALL \
    SELECT e.site, 'add', NULL, ROLLUP FROM e CROSS JOIN LATERAL ( \
           SELECT * FROM rollup_daily AS d \
            WHERE d.site = e.site AND d.bucket >= $4 AND d.bucket < $5 OFFSET 0) AS r \
     WHERE NOT e.running \
    UNION ALL \
    SELECT e.site, 'add', NULL, ROLLUP FROM e CROSS JOIN LATERAL ( \
           SELECT * FROM rollup_hourly AS h \
            WHERE h.site = e.site AND h.bucket >= $6 AND h.bucket < $7 \
           UNION ALL \
           SELECT * FROM rollup_hourly AS h \
            WHERE h.site = e.site AND h.bucket >= $8 AND h.bucket < $9 OFFSET 0) AS r \
     WHERE NOT e.running";

/// The same for a row read for its maximum windows only.
const MAXIMA_SELECT: &str = "0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, '{}', \
    0::float8, 0::bigint, 0::float8, 0::bigint, 0::float8, 0::bigint, 0::float8, 0::bigint, \
    0::float8, 0::bigint, 0::float8, 0::bigint, r.max_total_ms, '{}', '{}'";

/// The columns of a [`ROLLUPS_SQL`] row after `site, kind, level`, for a running row
/// (`max_total_ms` is the array of maximum windows) and for a rollup row (its maximum as an
/// array of one).
const RUNNING_SELECT: &str = "r.checks, r.up, r.degraded, r.down, r.maintenance, \
    r.failures::text, r.dns_sum, r.dns_count, r.connect_sum, r.connect_count, r.tls_sum, \
    r.tls_count, r.ttfb_sum, r.ttfb_count, r.transfer_sum, r.transfer_count, r.total_sum, \
    r.total_count, r.max_total_ms, r.total_hist::text, r.ttfb_hist::text";
const ROLLUP_SELECT: &str = "r.checks, r.up, r.degraded, r.down, r.maintenance, \
    r.failures::text, r.dns_sum, r.dns_count, r.connect_sum, r.connect_count, r.tls_sum, \
    r.tls_count, r.ttfb_sum, r.ttfb_count, r.transfer_sum, r.transfer_count, r.total_sum, \
    r.total_count, ARRAY[coalesce(r.max_total_ms, 0)], r.total_hist::text, r.ttfb_hist::text";

/// Per site, the running downtime and change count of the last change before the period's
/// start ($2), before the end of its downtime ($3: `to`, or now if earlier) and before its end
/// ($4): three probes of the (site, at DESC) index (migrations/0004_running.sql).
const CHANGES_SQL: &str = "\
    SELECT s.site, f.at, f.to_outcome, f.down_us, f.changes, \
           e.at, e.to_outcome, e.down_us, t.changes \
      FROM unnest($1::text[]) AS s(site) \
      LEFT JOIN LATERAL ( \
           SELECT at, to_outcome, down_us, changes FROM state_changes \
            WHERE site = s.site AND at < $2 ORDER BY at DESC, id DESC LIMIT 1) AS f ON true \
      LEFT JOIN LATERAL ( \
           SELECT at, to_outcome, down_us FROM state_changes \
            WHERE site = s.site AND at < $3 ORDER BY at DESC, id DESC LIMIT 1) AS e ON true \
      LEFT JOIN LATERAL ( \
           SELECT changes FROM state_changes \
            WHERE site = s.site AND at < $4 ORDER BY at DESC, id DESC LIMIT 1) AS t ON true";

/// Reports `sites` over `period`, in their order, as of `now` (a site down now counts as down
/// until `now`, not until a `to` in the future).
pub async fn report(
    client: &Client,
    sites: &[&Site],
    period: &Period,
    now: DateTime<Utc>,
) -> Result<Vec<SiteReport>, ReportError> {
    report_on(&[client], sites, period, now).await
}

/// [`report`] with the sites split between `clients` (connections), so PostgreSQL reads each
/// share on another core at once. No client: no report.
#[tracing::instrument(skip_all, fields(sites = sites.len(), from = %period.from(), to = %period.to()))]
pub async fn report_on(
    clients: &[&Client],
    sites: &[&Site],
    period: &Period,
    now: DateTime<Utc>,
) -> Result<Vec<SiteReport>, ReportError> {
    let started = Instant::now();
    let names: Vec<&str> = sites.iter().map(|site| site.name.as_str()).collect();
    let share = names.len().div_ceil(clients.len().max(1)).max(1);
    let reads = clients
        .iter()
        .zip(names.chunks(share))
        .map(|(client, names)| async move {
            // The queries are a few thousand primary-key probes, but the planner prices the
            // per-site fallback branches high enough to JIT-compile the plan: ~1 s for nothing.
            // Off for this session (the CLI's own, or a pooled connection of `serve`, which runs
            // only such reads).
            client
                .batch_execute("SET jit = off")
                .await
                .map_err(ReportError::query("turning JIT off"))?;
            tokio::try_join!(
                read_summaries(client, names, period),
                read_downtimes(client, names, period, now),
            )
        });
    let mut summaries = HashMap::new();
    let mut downtimes = HashMap::new();
    for (s, d) in futures::future::try_join_all(reads).await? {
        summaries.extend(s);
        downtimes.extend(d);
    }
    let reports: Vec<SiteReport> = sites
        .iter()
        .map(|site| {
            let summary = summaries.remove(&site.name).unwrap_or_default();
            let downtime = downtimes.remove(&site.name).unwrap_or_default();
            SiteReport::new(site, *period, summary, downtime)
        })
        .collect();
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "report read"
    );
    Ok(reports)
}

/// Streams the period's rows ([`ROLLUPS_SQL`]) and makes each site's [`Summary`]: the `add`
/// rows merged, the `lo` running row subtracted from the `hi` one, the maximum the largest of
/// the `add` rows' and of the window pair's. Histograms are parsed into one reused buffer.
async fn read_summaries(
    client: &Client,
    names: &[&str],
    period: &Period,
) -> Result<HashMap<String, Summary>, ReportError> {
    let split = period.split();
    let [head, tail] = &split.hours;
    let bounds = [
        period.from_us,
        period.to_us,
        split.days.start,
        split.days.end,
        head.start,
        head.end,
        tail.start,
        tail.end,
    ]
    .map(time);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&names];
    params.extend(bounds.iter().map(|b| b as &(dyn ToSql + Sync)));
    let context = "reading rollup_running, rollup_daily and rollup_hourly";
    let sql = ROLLUPS_SQL
        .replace("RUNNING", RUNNING_SELECT)
        .replace("MAXIMA", MAXIMA_SELECT)
        .replace("ROLLUP", ROLLUP_SELECT);
    let rows = client
        .query_raw(&sql, params)
        .await
        .map_err(ReportError::query(context))?;
    let mut rows = pin!(rows);
    let mut sums: HashMap<String, Sums> = names
        .iter()
        .map(|name| (name.to_string(), Sums::default()))
        .collect();
    let mut counts = Vec::new();
    let mut read = 0u64;
    while let Some(row) = rows.try_next().await.map_err(ReportError::query(context))? {
        let site: &str = row.try_get(0).map_err(ReportError::query(context))?;
        // The query selects only these sites.
        let Some(sums) = sums.get_mut(site) else {
            continue;
        };
        let kind: &str = row.try_get(1).map_err(ReportError::query(context))?;
        let level: Option<i32> = row.try_get(2).map_err(ReportError::query(context))?;
        let mut summary = scalars(&row).map_err(ReportError::query(context))?;
        let max: Vec<Option<f64>> = row.try_get(MAX).map_err(ReportError::query(context))?;
        let histograms = [
            (TOTAL_HIST, &mut summary.total_hist),
            (TTFB_HIST, &mut summary.ttfb_hist),
        ];
        for (column, histogram) in histograms {
            let text: &str = row.try_get(column).map_err(ReportError::query(context))?;
            parse_counts(text, &mut counts).map_err(|value| ReportError::Histogram {
                site: site.to_owned(),
                value,
            })?;
            histogram.merge(&counts);
        }
        let at = |i: usize| max.get(i).copied().flatten().unwrap_or_default();
        let window = level.and_then(|l| usize::try_from(l).ok()).map(at);
        match kind {
            "lo" => sums.earlier = summary,
            "hi" => {
                sums.max = sums.max.max(window.unwrap_or_default());
                sums.total.merge(&summary);
            }
            "max" => sums.max = sums.max.max(window.unwrap_or_default()),
            _ => {
                sums.max = sums.max.max(at(0));
                sums.added.merge(&summary);
            }
        }
        read += 1;
    }
    tracing::debug!(rows = read, "rollups merged");
    Ok(sums
        .into_iter()
        .map(|(site, mut sums)| {
            sums.total.subtract(&sums.earlier);
            sums.total.merge(&sums.added);
            sums.total.max_total_ms = sums.max;
            (site, sums.total)
        })
        .collect())
}

/// What [`read_summaries`] gathers for one site.
#[derive(Default)]
struct Sums {
    /// The running total at the period's last summed hour.
    total: Summary,
    /// The running total just before the period.
    earlier: Summary,
    /// Rollup rows merged as they are.
    added: Summary,
    max: f64,
}

/// Columns of a [`ROLLUPS_SQL`] row: the first of [`scalars`], the maximum array, the
/// histograms.
const FIRST: usize = 3;
const MAX: usize = FIRST + 18;
const TOTAL_HIST: usize = FIRST + 19;
const TTFB_HIST: usize = FIRST + 20;

/// The counters, sums and failures of one row of [`ROLLUPS_SQL`], histograms left empty and no
/// maximum. An unreadable `failures` object (not a map of integers) counts as no failures
/// rather than failing the whole report.
fn scalars(row: &Row) -> Result<Summary, tokio_postgres::Error> {
    crate::store::running::counters_from_row(row, FIRST)
}

/// Parses a `bigint[]` as PostgreSQL prints it (`{1,0,NULL,7}`, `{}`; `[0:2]={…}` when its
/// lower bound is not 1) into `out`, cleared first; NULL counts as 0. On failure, returns the
/// text (shortened) for the error message.
fn parse_counts(text: &str, out: &mut Vec<i64>) -> Result<(), String> {
    out.clear();
    let elements = match text.split_once('=') {
        Some((bounds, rest)) if bounds.starts_with('[') => rest,
        _ => text,
    };
    let shown = || text.chars().take(80).collect::<String>();
    let inner = elements
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .ok_or_else(shown)?;
    if inner.is_empty() {
        return Ok(());
    }
    for element in inner.split(',') {
        out.push(match element {
            "NULL" => 0,
            number => number.parse().map_err(|_| shown())?,
        });
    }
    Ok(())
}

/// Each site's downtime and changes over the period, from the running values of three state
/// changes ([`CHANGES_SQL`]): the same figures as [`crate::insight::downtime::walk`] over every
/// change.
async fn read_downtimes(
    client: &Client,
    names: &[&str],
    period: &Period,
    now: DateTime<Utc>,
) -> Result<HashMap<String, Downtime>, ReportError> {
    let context = "reading state_changes";
    let end_us = period.to_us.min(now.timestamp_micros()).max(period.from_us);
    let rows = client
        .query(
            CHANGES_SQL,
            &[&names, &period.from(), &time(end_us), &period.to()],
        )
        .await
        .map_err(ReportError::query(context))?;
    let mut downtimes = HashMap::new();
    for row in &rows {
        // Time down up to t, from the last change before t.
        let down_until = |at: Option<DateTime<Utc>>,
                          to: Option<&str>,
                          down_us: Option<i64>,
                          t_us: i64| match (at, down_us) {
            (Some(at), Some(down_us)) => {
                let since = if to == Some("down") {
                    t_us - at.timestamp_micros()
                } else {
                    0
                };
                down_us.saturating_add(since.max(0))
            }
            _ => 0,
        };
        let get = |i| row.try_get(i).map_err(ReportError::query(context));
        let text = |i| row.try_get(i).map_err(ReportError::query(context));
        let count = |i| row.try_get(i).map_err(ReportError::query(context));
        let before = down_until(get(1)?, text(2)?, count(3)?, period.from_us);
        let until = down_until(get(5)?, text(6)?, count(7)?, end_us);
        let changes_before: Option<i64> = count(4)?;
        let changes_until: Option<i64> = count(8)?;
        let site: String = row.try_get(0).map_err(ReportError::query(context))?;
        let changes = changes_until.unwrap_or(0) - changes_before.unwrap_or(0);
        downtimes.insert(
            site,
            Downtime {
                down_us: (until - before).max(0),
                changes: u64::try_from(changes).unwrap_or(0),
            },
        );
    }
    Ok(downtimes)
}

// ---------------------------------------------------------------------------------------------
// Printing

/// The human-readable report: the period, then an availability table and a latency table with
/// one row per site. A breached SLO reads `breached (…)` in the STATUS column.
pub fn table(reports: &[SiteReport], period: &Period) -> String {
    let mut text = format!(
        "period {} .. {} ({}, whole UTC hours)\n\n",
        rfc3339(period.from()),
        rfc3339(period.to()),
        crate::duration::format(period.length()),
    );
    let availability: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let s = &r.summary;
            let slo = r.slo.as_ref();
            vec![
                r.site.clone(),
                s.checks.to_string(),
                number(s.uptime_pct(), 3),
                slo.map(|slo| format!("{}", slo.target_pct))
                    .unwrap_or_else(|| "-".into()),
                number(slo.map(|slo| slo.budget.left_pct), 1),
                number(slo.map(|slo| slo.budget.left_minutes), 1),
                seconds(r.downtime.down_secs()),
                r.downtime.changes.to_string(),
                status(slo),
            ]
        })
        .collect();
    text.push_str(&render(
        &[
            "SITE",
            "CHECKS",
            "UPTIME %",
            "SLO %",
            "BUDGET LEFT %",
            "LEFT min",
            "DOWNTIME",
            "CHANGES",
            "STATUS",
        ],
        &availability,
    ));
    text.push('\n');
    let latency: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let s = &r.summary;
            let p = &s.phases;
            let mut row = vec![r.site.clone()];
            for histogram in [&s.total_hist, &s.ttfb_hist] {
                row.extend(
                    QUANTILES
                        .iter()
                        .map(|(_, q)| number(histogram.quantile(*q), 1)),
                );
            }
            row.extend(
                [&p.dns, &p.connect, &p.tls, &p.ttfb, &p.transfer]
                    .iter()
                    .map(|phase| number(phase.mean_ms(), 1)),
            );
            row
        })
        .collect();
    text.push_str(&render(
        &[
            "SITE", "P50 ms", "P95 ms", "P99 ms", "TTFB P50", "TTFB P95", "TTFB P99", "MEAN dns",
            "connect", "tls", "ttfb", "transfer",
        ],
        &latency,
    ));
    text
}

/// `ok`, `breached (budget, p99 912.3 ms > 800 ms)`, or `-` without an SLO.
fn status(slo: Option<&SloStatus>) -> String {
    let Some(slo) = slo else {
        return "-".into();
    };
    let mut reasons = Vec::new();
    if slo.budget.breached() {
        reasons.push("budget".to_owned());
    }
    if let Some(latency) = slo.latency.as_ref().filter(|l| l.breached()) {
        reasons.push(format!(
            "{} {:.1} ms > {} ms",
            latency.name,
            latency.observed_ms.unwrap_or_default(),
            latency.max_ms
        ));
    }
    if reasons.is_empty() {
        "ok".into()
    } else {
        format!("breached ({})", reasons.join(", "))
    }
}

fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// Whole seconds as a duration (`1h2m3s`).
fn seconds(secs: f64) -> String {
    crate::duration::format(Duration::from_secs(secs.round().max(0.0) as u64))
}

/// Columns padded to their widest cell: the first and the last left-aligned (names, status),
/// the numbers between right-aligned.
fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let last = header.len() - 1;
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            let width = widths[i];
            match i {
                0 => out.push_str(&format!("{cell:<width$}")),
                i if i == last => out.push_str(&format!("  {cell}")),
                _ => out.push_str(&format!("  {cell:>width$}")),
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut text = line(&mut header.iter().copied());
    for row in rows {
        text.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insight::rollup::{DAY_US, HOUR_US};

    /// 2024-03-10 00:00:00 UTC.
    const MIDNIGHT: i64 = 1_710_028_800 * 1_000_000;
    const MIN: i64 = 60_000_000;

    fn at(us: i64) -> DateTime<Utc> {
        time(us)
    }

    #[test]
    fn periods_round_to_whole_hours() {
        // (from, to) → (from, to) of the period
        let cases: &[(i64, i64, i64, i64)] = &[
            (MIDNIGHT, MIDNIGHT + DAY_US, MIDNIGHT, MIDNIGHT + DAY_US),
            (
                MIDNIGHT + 10 * HOUR_US + 30 * MIN,
                MIDNIGHT + 14 * HOUR_US + 10 * MIN,
                MIDNIGHT + 10 * HOUR_US,
                MIDNIGHT + 15 * HOUR_US,
            ),
            (
                MIDNIGHT - 1,
                MIDNIGHT + 1,
                MIDNIGHT - HOUR_US,
                MIDNIGHT + HOUR_US,
            ),
            // Inside one hour: the whole hour.
            (
                MIDNIGHT + MIN,
                MIDNIGHT + 2 * MIN,
                MIDNIGHT,
                MIDNIGHT + HOUR_US,
            ),
            // Before 1970 too.
            (-DAY_US - 1, -MIN, -DAY_US - HOUR_US, 0),
        ];
        for &(from, to, want_from, want_to) in cases {
            let period = Period::new(at(from), at(to)).unwrap();
            assert_eq!(
                (period.from_us, period.to_us),
                (want_from, want_to),
                "{from}..{to}"
            );
        }
    }

    #[test]
    fn empty_periods_are_refused() {
        let cases = [
            (MIDNIGHT, MIDNIGHT),
            (MIDNIGHT + DAY_US, MIDNIGHT),
            // Reversed within one hour: refused, not widened to that hour.
            (MIDNIGHT + 30 * MIN, MIDNIGHT + 20 * MIN),
        ];
        for (from, to) in cases {
            assert!(matches!(
                Period::new(at(from), at(to)),
                Err(ReportError::EmptyPeriod { .. })
            ));
        }
        let far = Duration::from_secs(u64::MAX / 2);
        assert!(matches!(
            Period::ending(at(MIDNIGHT), far),
            Err(ReportError::OutOfRange { .. })
        ));
    }

    #[test]
    fn split_reads_whole_days_daily_and_edges_hourly() {
        let h = HOUR_US;
        let d = DAY_US;
        let m = MIDNIGHT;
        // (from, to) → (days, head hours, tail hours)
        type Case = (i64, i64, Range<i64>, Range<i64>, Range<i64>);
        let cases: Vec<Case> = vec![
            // Whole days only.
            (m, m + 3 * d, m..m + 3 * d, m..m, m + 3 * d..m + 3 * d),
            // Hours on both sides.
            (
                m + 10 * h,
                m + 3 * d + 15 * h,
                m + d..m + 3 * d,
                m + 10 * h..m + d,
                m + 3 * d..m + 3 * d + 15 * h,
            ),
            // A head only.
            (m - 2 * h, m + d, m..m + d, m - 2 * h..m, m + d..m + d),
            // A tail only.
            (m, m + d + h, m..m + d, m..m, m + d..m + d + h),
            // Across one midnight, no whole day.
            (m - 3 * h, m + 2 * h, m..m, m - 3 * h..m, m..m + 2 * h),
            // Within one day: hours only.
            (m + h, m + 5 * h, 0..0, m + h..m + 5 * h, 0..0),
            // The last hour of a day: ends at a midnight, no whole day.
            (
                m + 23 * h,
                m + d,
                m + d..m + d,
                m + 23 * h..m + d,
                m + d..m + d,
            ),
            // Before 1970.
            (-d - h, h, -d..0, -d - h..-d, 0..h),
        ];
        for (from, to, days, head, tail) in cases {
            let period = Period {
                from_us: from,
                to_us: to,
            };
            let split = period.split();
            assert_eq!(
                split,
                Split {
                    days: days.clone(),
                    hours: [head.clone(), tail.clone()],
                },
                "{from}..{to}"
            );
            // Exactly the period's hours, each once.
            let covered: i64 = [days, head, tail]
                .iter()
                .map(|r| (r.end - r.start).max(0))
                .sum();
            assert_eq!(covered, to - from, "{from}..{to} covered once");
        }
    }

    #[test]
    fn parses_times() {
        let cases: &[(&str, Option<i64>)] = &[
            ("2024-03-10", Some(MIDNIGHT)),
            ("2024-03-10T00:00:00Z", Some(MIDNIGHT)),
            ("2024-03-10T01:30:00+01:00", Some(MIDNIGHT + 30 * MIN)),
            ("2024-03-10T00:00:00.5Z", Some(MIDNIGHT + 500_000)),
            ("2024-03-10 00:00:00", None),
            ("10.03.2024", None),
            ("2024-02-30", None),
            ("", None),
        ];
        for &(text, want) in cases {
            let got = parse_time(text).ok().map(|t| t.timestamp_micros());
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn default_length_is_the_longest_window() {
        let site = |window_days: Option<u64>| {
            let mut site = Site::with_defaults("s", url::Url::parse("http://s/").unwrap());
            site.slo = window_days.map(|days| {
                Arc::new(Slo {
                    target_pct: 99.0,
                    window: Duration::from_secs(days * 86_400),
                    latency: None,
                })
            });
            site
        };
        let cases: &[(&[Option<u64>], u64)] = &[
            (&[], 30),
            (&[None], 30),
            (&[Some(7)], 7),
            (&[Some(7), None, Some(90), Some(28)], 90),
        ];
        for &(windows, want_days) in cases {
            let sites: Vec<Site> = windows.iter().map(|w| site(*w)).collect();
            let refs: Vec<&Site> = sites.iter().collect();
            assert_eq!(
                default_length(&refs),
                Duration::from_secs(want_days * 86_400),
                "{windows:?}"
            );
        }
    }

    #[test]
    fn parses_printed_bigint_arrays() {
        let cases: &[(&str, Result<&[i64], ()>)] = &[
            ("{}", Ok(&[])),
            ("{7}", Ok(&[7])),
            ("{0,0,3,17,-2}", Ok(&[0, 0, 3, 17, -2])),
            ("{NULL,5}", Ok(&[0, 5])),
            ("{9223372036854775807}", Ok(&[i64::MAX])),
            ("[0:1]={4,5}", Ok(&[4, 5])),
            ("{{1,2},{3,4}}", Err(())),
            ("{1,,2}", Err(())),
            ("{1, 2}", Err(())),
            ("1,2", Err(())),
            ("{99999999999999999999}", Err(())),
            ("", Err(())),
        ];
        for &(text, want) in cases {
            let mut out = vec![42];
            let got = parse_counts(text, &mut out).map(|()| out).map_err(|_| ());
            assert_eq!(got, want.map(<[i64]>::to_vec), "{text:?}");
        }
    }

    #[test]
    fn status_names_every_breach() {
        let budget = |left_pct| Budget {
            allowed_failures_pct: 0.1,
            used_pct: 100.0 - left_pct,
            left_pct,
            left_minutes: 0.0,
        };
        let latency = |observed| LatencyStatus {
            name: "p99".into(),
            quantile: 0.99,
            max_ms: 800.0,
            observed_ms: observed,
        };
        let slo = |left_pct, observed| SloStatus {
            target_pct: 99.9,
            window: DEFAULT_PERIOD,
            budget: budget(left_pct),
            latency: Some(latency(observed)),
        };
        let cases = [
            (None, "-"),
            (Some(slo(50.0, Some(700.0))), "ok"),
            (Some(slo(50.0, None)), "ok"),
            (Some(slo(0.0, Some(800.0))), "ok"),
            (Some(slo(-1.0, Some(700.0))), "breached (budget)"),
            (
                Some(slo(50.0, Some(912.34))),
                "breached (p99 912.3 ms > 800 ms)",
            ),
            (
                Some(slo(-300.0, Some(900.0))),
                "breached (budget, p99 900.0 ms > 800 ms)",
            ),
        ];
        for (slo, want) in cases {
            assert_eq!(status(slo.as_ref()), want);
            assert_eq!(
                slo.as_ref().is_some_and(SloStatus::breached),
                want.starts_with("breached"),
                "{want}"
            );
        }
    }
}
