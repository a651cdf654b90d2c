//! What the status page shows, as JSON types with stable field names (`docs/api.md`), and the
//! queries that fill them — from the rollups, `site_state`, `state_changes`, `incidents`, and
//! `check_results` only for "latest results" (LIMIT n down the `(site, scheduled_at DESC)`
//! index).
//!
//! ```text
//!  overview (every site): counts only               one site
//!  ─────────────────────────────────                ────────
//!  CountsCache snapshot: daily counts before         report::report per window (histograms,
//!    yesterday, hourly before the last hour,           phases, downtime: the report's arithmetic)
//!    resolved incidents — re-read in the             rollup_daily / rollup_hourly rows of the site
//!    background, never waited for ──┐                state_changes, incidents (site, time DESC)
//!  per request: the buckets since ──┼─► Tally sums   check_results LIMIT n, latest cert_not_after
//!    then, open incidents,          │   per window
//!    site_state (a query per table)─┘   and SLO ─► Summary::uptime_pct, error_budget
//! ```
//!
//! Windows are those of a status page: `24h` is the last 24 hours in whole hours (the report's
//! `Period::ending`), `7d`/`30d`/`90d` are whole UTC days ending with today (today so far
//! included), the days the bar row draws — so the 90-day uptime is the uptime of the 90 bars.
//! An SLO window of a day or more is judged the same way, in whole UTC days.
//!
//! The overview reads and adds only the counters it shows (`Tally`: checks, up, degraded,
//! down, maintenance); a site page merges whole rollups with [`Summary::merge`]. Uptime and
//! budget are [`Summary::uptime_pct`] and [`Summary::error_budget`] for both; percentiles come
//! from merged histograms ([`crate::insight::histogram`]). Nothing here computes them a second
//! way.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::config::{Config, Site};
use crate::insight::histogram::Histogram;
use crate::insight::rollup::{bucket_start_us, Grain, Summary, DAY_US, HOUR_US};
use crate::report::{self, Period, ReportError, QUANTILES};
use crate::store::{rollup_from_row, ROLLUP_COLUMNS};

/// Most days `/daily` answers: ten years of bars.
pub const MAX_DAYS: i64 = 3_660;
/// Most hours `/hourly` answers: a hundred days.
pub const MAX_HOURS: i64 = 2_400;
/// Most rows `/results` and `/incidents` answer.
pub const MAX_LIMIT: i64 = 1_000;
/// Days of bars the overview and site page draw.
pub const BAR_DAYS: i64 = 90;
/// Rows of history (state changes, incidents) on a site page.
pub const HISTORY_ROWS: i64 = 20;
/// How long the overview's cached buckets (older than the last two days / hours) are used
/// before a background refresh re-reads them; the recent ones are read on every request.
pub const CACHE_MAX_AGE: Duration = Duration::from_secs(300);

/// What the read API can fail with. `NotFound`/`BadRequest` are the caller's (4xx), the rest
/// the database's (5xx).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no site named {0:?}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Connect(#[from] crate::store::StoreError),
    #[error("PostgreSQL: {context}")]
    Query {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

fn query(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> ApiError {
    move |source| ApiError::Query { context, source }
}

// ---------------------------------------------------------------------------------------------
// Windows

/// A window of the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    H24,
    D7,
    D30,
    D90,
}

impl Window {
    pub const ALL: [Window; 4] = [Window::H24, Window::D7, Window::D30, Window::D90];

    /// `24h`, `7d`, `30d`, `90d`: in URLs and JSON keys.
    pub fn name(self) -> &'static str {
        match self {
            Window::H24 => "24h",
            Window::D7 => "7d",
            Window::D30 => "30d",
            Window::D90 => "90d",
        }
    }

    pub fn parse(text: &str) -> Result<Window, ApiError> {
        Window::ALL
            .into_iter()
            .find(|w| w.name() == text)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "unknown window {:?}: expected 24h, 7d, 30d or 90d",
                    text.chars().take(16).collect::<String>()
                ))
            })
    }

    /// The period the window covers at `now` (see the module doc).
    pub fn period(self, now: DateTime<Utc>) -> Period {
        match self {
            // 24 h after an hour's start is never empty nor out of range.
            Window::H24 => Period::ending(now, Duration::from_secs(86_400)).unwrap_or(Period {
                from_us: bucket_start_us(Grain::Hour, now.timestamp_micros()) - 24 * HOUR_US,
                to_us: bucket_start_us(Grain::Hour, now.timestamp_micros()) + HOUR_US,
            }),
            Window::D7 => days_period(now, 7),
            Window::D30 => days_period(now, 30),
            Window::D90 => days_period(now, BAR_DAYS),
        }
    }
}

/// The `days` whole UTC days ending with today (today included).
pub fn days_period(now: DateTime<Utc>, days: i64) -> Period {
    let to_us = bucket_start_us(Grain::Day, now.timestamp_micros()) + DAY_US;
    Period {
        from_us: to_us - days.max(1) * DAY_US,
        to_us,
    }
}

/// The period an SLO of `window` is judged over at `now`: whole UTC days when it is a day or
/// longer (rounded up), else the report's hours ending now.
pub fn slo_period(window: Duration, now: DateTime<Utc>) -> Period {
    let day = Duration::from_secs(86_400);
    if window >= day {
        let days = window.as_secs().div_ceil(86_400) as i64;
        days_period(now, days)
    } else {
        Period::ending(now, window.max(Duration::from_secs(3_600))).unwrap_or(days_period(now, 1))
    }
}

// ---------------------------------------------------------------------------------------------
// JSON types

/// RFC 3339 in UTC with seconds, as every time in the API.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// A site's URL as it may be shown: no userinfo, no query string, no fragment.
pub fn public_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// `text` with the secret parts of `url` (password, query string) blanked out, and those of
/// any other URL in it (`user:password@`, `?query`): what a failure message may say about the
/// URL it fetched or was redirected to.
pub fn redact(text: &str, url: &url::Url) -> String {
    static USERINFO: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    static QUERY: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let userinfo = USERINFO.get_or_init(|| {
        regex::Regex::new(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):[^/\s@]*@").expect("valid regex")
    });
    let query = QUERY.get_or_init(|| {
        regex::Regex::new(r#"(?i)\b([a-z][a-z0-9+.-]*://[^\s?#"'<>]*)\?[^\s#"'<>]*"#)
            .expect("valid regex")
    });
    let mut out = userinfo.replace_all(text, "$1:***@").into_owned();
    out = query.replace_all(&out, "$1?***").into_owned();
    if let Some(password) = url.password().filter(|p| !p.is_empty()) {
        out = out.replace(password, "***");
    }
    if let Some(query) = url.query().filter(|q| !q.is_empty()) {
        out = out.replace(query, "***");
    }
    out
}

/// The SLO of a site judged over its period.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SloJson {
    pub target_pct: f64,
    /// As configured (`30d`); judged over that many whole UTC days ending today.
    pub window: String,
    pub from: String,
    pub to: String,
    pub uptime_pct: Option<f64>,
    pub budget_left_pct: f64,
    pub budget_left_min: f64,
    /// The latency objective judged over the same period, when the SLO has one.
    pub latency: Option<LatencyJson>,
    /// Down checks beyond the budget, or the latency percentile above its bound.
    pub breached: bool,
}

/// A latency objective (`latency = { p99 = "800ms" }`) judged over the SLO's period.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencyJson {
    /// As written in sites.lua: `p99`.
    pub objective: String,
    pub max_ms: f64,
    /// That percentile of total time over the period (±7.5 %); `null` without checks.
    pub observed_ms: Option<f64>,
    pub breached: bool,
}

/// Uptime per window, keys `24h`, `7d`, `30d`, `90d`.
pub type UptimeJson = BTreeMap<&'static str, Option<f64>>;

/// One site as the overview shows it: `/api/v1/sites` holds one per visible site.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SiteSummary {
    pub site: String,
    /// The configured URL without userinfo, query string or fragment.
    pub url: String,
    /// `up`, `degraded`, `down`; `null` before the first stored result.
    pub state: Option<String>,
    /// The first result of the current state.
    pub since: Option<String>,
    /// The latest stored result.
    pub last_check_at: Option<String>,
    /// Name of the maintenance window open now.
    pub maintenance: Option<String>,
    /// Failure kind and message of the latest down result (kept after recovery).
    pub last_failure_kind: Option<String>,
    pub uptime_pct: UptimeJson,
    pub slo: Option<SloJson>,
}

/// `/api/v1/sites`.
#[derive(Debug, Clone, Serialize)]
pub struct SitesJson {
    pub generated_at: String,
    /// Visible sites whose state is `down` / `degraded`, and those in maintenance now.
    pub down: usize,
    pub degraded: usize,
    pub in_maintenance: usize,
    pub sites: Vec<SiteSummary>,
}

/// Means of each phase in ms, over the checks where the phase happened.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MeansJson {
    pub dns: Option<f64>,
    pub connect: Option<f64>,
    pub tls: Option<f64>,
    pub ttfb: Option<f64>,
    pub transfer: Option<f64>,
    pub total: Option<f64>,
}

impl MeansJson {
    fn of(s: &Summary) -> MeansJson {
        let p = &s.phases;
        MeansJson {
            dns: p.dns.mean_ms(),
            connect: p.connect.mean_ms(),
            tls: p.tls.mean_ms(),
            ttfb: p.ttfb.mean_ms(),
            transfer: p.transfer.mean_ms(),
            total: p.total.mean_ms(),
        }
    }

    /// DNS, connect, TLS, TTFB, transfer: what the stacked bars draw.
    pub fn phases(&self) -> [Option<f64>; 5] {
        [self.dns, self.connect, self.tls, self.ttfb, self.transfer]
    }
}

/// Counts and latency of a set of checks (a window, a day, an hour).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FiguresJson {
    pub checks: i64,
    pub up: i64,
    pub degraded: i64,
    pub down: i64,
    pub maintenance: i64,
    pub uptime_pct: Option<f64>,
    /// Percentiles of total time from the merged histograms (±7.5 %).
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub ttfb_p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: MeansJson,
    pub failures: BTreeMap<String, i64>,
}

impl FiguresJson {
    pub fn of(s: &Summary) -> FiguresJson {
        let [p50_ms, p95_ms, p99_ms] = QUANTILES.map(|(_, q)| s.total_hist.quantile(q));
        FiguresJson {
            checks: s.checks,
            up: s.up,
            degraded: s.degraded,
            down: s.down,
            maintenance: s.maintenance,
            uptime_pct: s.uptime_pct(),
            p50_ms,
            p95_ms,
            p99_ms,
            ttfb_p99_ms: s.ttfb_hist.quantile(0.99),
            max_ms: (s.checks > 0).then_some(s.max_total_ms),
            mean_ms: MeansJson::of(s),
            failures: s.failures.clone(),
        }
    }
}

/// One window of a site page.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowJson {
    pub window: &'static str,
    pub from: String,
    pub to: String,
    #[serde(flatten)]
    pub figures: FiguresJson,
    pub downtime_s: f64,
    pub state_changes: u64,
}

/// A change of a site's state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChangeJson {
    pub at: String,
    /// `null` for the site's first result.
    pub from: Option<String>,
    pub to: String,
    pub failure_kind: Option<String>,
    pub failure_message: Option<String>,
}

/// An incident (`sitewatch alert`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IncidentJson {
    pub id: uuid::Uuid,
    pub site: String,
    pub severity: String,
    pub started_at: String,
    /// `null` while open.
    pub resolved_at: Option<String>,
    /// Until resolved, or until now while open.
    pub duration_s: f64,
    pub open: bool,
    pub cause_kind: Option<String>,
    pub cause_message: Option<String>,
    pub failed_checks: i64,
}

/// `/api/v1/sites/{site}`.
#[derive(Debug, Clone, Serialize)]
pub struct SiteJson {
    #[serde(flatten)]
    pub summary: SiteSummary,
    pub generated_at: String,
    pub windows: Vec<WindowJson>,
    /// Expiry of the certificate the latest result saw (`null`: none, or plain http).
    pub cert_not_after: Option<String>,
    pub cert_days_left: Option<f64>,
    pub state_changes: Vec<ChangeJson>,
    pub incidents: Vec<IncidentJson>,
}

/// One bucket of `/daily` or `/hourly`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BucketJson {
    /// Start of the UTC day or hour.
    pub start: String,
    #[serde(flatten)]
    pub figures: FiguresJson,
    /// Incidents open at some time of the bucket.
    pub incidents: i64,
}

/// `/api/v1/sites/{site}/daily` and `/hourly`: every bucket of the range, oldest first,
/// empty buckets included (zero checks, `null` figures).
#[derive(Debug, Clone, Serialize)]
pub struct SeriesJson {
    pub site: String,
    pub from: String,
    pub to: String,
    pub buckets: Vec<BucketJson>,
}

/// A failed assertion of a result.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct FailedAssertion {
    pub name: String,
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub expected: String,
    #[serde(default)]
    pub actual: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// One stored check result, without its request or URLs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ResultJson {
    pub id: uuid::Uuid,
    pub scheduled_at: String,
    pub outcome: String,
    pub status: Option<i16>,
    pub total_ms: f64,
    pub dns_ms: Option<f64>,
    pub connect_ms: Option<f64>,
    pub tls_ms: Option<f64>,
    pub ttfb_ms: Option<f64>,
    pub transfer_ms: Option<f64>,
    pub attempts: i32,
    pub failure_kind: Option<String>,
    pub failure_phase: Option<String>,
    pub failure_message: Option<String>,
    pub failed_assertions: Vec<FailedAssertion>,
    pub cert_not_after: Option<String>,
    pub maintenance: Option<String>,
}

/// `/api/v1/sites/{site}/results`.
#[derive(Debug, Clone, Serialize)]
pub struct ResultsJson {
    pub site: String,
    pub results: Vec<ResultJson>,
}

/// `/api/v1/incidents`.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentsJson {
    pub incidents: Vec<IncidentJson>,
}

// ---------------------------------------------------------------------------------------------
// Sites

/// The sites `serve` may show: in configuration order, without `status_page = false`.
pub fn visible(config: &Config) -> Vec<&Site> {
    config
        .sites
        .iter()
        .filter(|s| s.status_page)
        .map(Arc::as_ref)
        .collect()
}

/// The visible site named `name`; hidden and unknown sites are both "not found".
pub fn find<'c>(config: &'c Config, name: &str) -> Result<&'c Site, ApiError> {
    config
        .sites
        .iter()
        .find(|s| s.status_page && s.name == name)
        .map(Arc::as_ref)
        .ok_or_else(|| ApiError::NotFound(name.chars().take(200).collect()))
}

/// A row of `site_state`.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub outcome: String,
    pub since: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub last_failure_kind: Option<String>,
}

const STATE_SQL: &str = "SELECT site, outcome, since, last_scheduled_at, last_failure_kind \
    FROM site_state WHERE site = ANY($1)";

async fn states(client: &Client, names: &[&str]) -> Result<HashMap<String, State>, ApiError> {
    let rows = client
        .query(STATE_SQL, &[&names])
        .await
        .map_err(query("reading site_state"))?;
    Ok(rows
        .iter()
        .map(|row| {
            (
                row.get(0),
                State {
                    outcome: row.get(1),
                    since: row.get(2),
                    last: row.get(3),
                    last_failure_kind: row.get(4),
                },
            )
        })
        .collect())
}

fn summary_of(
    config: &Config,
    site: &Site,
    state: Option<&State>,
    uptime: UptimeJson,
    slo: Option<SloJson>,
    now: DateTime<Utc>,
) -> SiteSummary {
    SiteSummary {
        site: site.name.clone(),
        url: public_url(&site.url),
        state: state.map(|s| s.outcome.clone()),
        since: state.map(|s| rfc3339(s.since)),
        last_check_at: state.map(|s| rfc3339(s.last)),
        maintenance: config.maintenance_at(&site.name, now).map(str::to_owned),
        last_failure_kind: state.and_then(|s| s.last_failure_kind.clone()),
        uptime_pct: uptime,
        slo,
    }
}

fn slo_json(site: &Site, summary: &Summary, period: &Period) -> Option<SloJson> {
    let slo = site.slo.as_ref()?;
    let status = report::SloStatus::judge(slo, summary);
    Some(SloJson {
        target_pct: slo.target_pct,
        window: crate::duration::format(slo.window),
        from: rfc3339(period.from()),
        to: rfc3339(period.to()),
        uptime_pct: summary.uptime_pct(),
        budget_left_pct: status.budget.left_pct,
        budget_left_min: status.budget.left_minutes,
        latency: status.latency.as_ref().map(|l| LatencyJson {
            objective: l.name.clone(),
            max_ms: l.max_ms,
            observed_ms: l.observed_ms,
            breached: l.breached(),
        }),
        breached: status.breached(),
    })
}

// ---------------------------------------------------------------------------------------------
// The overview: counts of every site, one query per table

/// What the overview shows of a set of checks (a window, a day): its counts and nothing else.
/// Uptime and the error budget need no more, and a [`Summary`] per bucket would cost the
/// overview a histogram and a failure map per site and bucket (~250,000 of them for 1,000
/// sites) for figures it never shows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    checks: i64,
    up: i64,
    degraded: i64,
    down: i64,
    maintenance: i64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.checks = self.checks.saturating_add(other.checks);
        self.up = self.up.saturating_add(other.up);
        self.degraded = self.degraded.saturating_add(other.degraded);
        self.down = self.down.saturating_add(other.down);
        self.maintenance = self.maintenance.saturating_add(other.maintenance);
    }

    /// The counts as a [`Summary`] without latency, so uptime and the error budget come from
    /// [`Summary::uptime_pct`] and [`Summary::error_budget`] like everywhere else.
    fn summary(&self) -> Summary {
        Summary {
            checks: self.checks,
            up: self.up,
            degraded: self.degraded,
            down: self.down,
            maintenance: self.maintenance,
            ..Summary::default()
        }
    }
}

/// The tallies of every site in the buckets of one grain starting in `[from, end())`,
/// site-major in one allocation, so the days of a window are one slice of a site's row. A
/// bucket without a rollup row is zero, like the missing row.
#[derive(Debug)]
struct Grid {
    from: i64,
    /// Bucket length (µs).
    len: i64,
    buckets: usize,
    cells: Vec<Tally>,
}

impl Grid {
    /// Zeroes for `sites` sites over the `grain` buckets of `range` (bucket-aligned; none when
    /// it is empty).
    fn new(grain: Grain, range: Range<i64>, sites: usize) -> Grid {
        let len = grain.micros();
        let span = range.end.saturating_sub(range.start).max(0);
        let buckets = usize::try_from(span.div_euclid(len)).unwrap_or(0);
        Grid {
            from: range.start,
            len,
            buckets,
            cells: vec![Tally::default(); buckets.saturating_mul(sites)],
        }
    }

    /// The end of the last bucket: where the next grid starts.
    fn end(&self) -> i64 {
        self.from + self.buckets as i64 * self.len
    }

    fn cell(&self, site: usize, start: i64) -> Option<usize> {
        let offset = start.checked_sub(self.from)?;
        if offset < 0 || offset % self.len != 0 {
            return None;
        }
        let bucket = usize::try_from(offset / self.len).ok()?;
        (bucket < self.buckets).then_some(site * self.buckets + bucket)
    }

    /// Stores the row of `site` for the bucket starting at `start`; outside the grid: ignored.
    fn put(&mut self, site: usize, start: i64, tally: Tally) {
        if let Some(i) = self.cell(site, start) {
            if let Some(cell) = self.cells.get_mut(i) {
                *cell = tally;
            }
        }
    }

    fn get(&self, site: usize, start: i64) -> Option<&Tally> {
        self.cells.get(self.cell(site, start)?)
    }

    /// Adds the buckets of `site` that start in `range` and in the grid.
    fn add_into(&self, site: usize, range: &Range<i64>, out: &mut Tally) {
        // Offsets from `from` of the first and past-the-last bucket start inside both.
        let lo = range.start.saturating_sub(self.from).max(0);
        let hi = range
            .end
            .saturating_sub(self.from)
            .min(self.end() - self.from);
        if lo >= hi {
            return;
        }
        let first = (lo as u64).div_ceil(self.len as u64) as usize;
        let last = (hi as u64).div_ceil(self.len as u64) as usize;
        let row = site * self.buckets;
        for tally in self.cells.get(row + first..row + last).unwrap_or_default() {
            out.add(tally);
        }
    }
}

/// Row numbers of the grids: the position of a site in the overview's site list.
type SiteIndex<'a> = HashMap<&'a str, usize>;

const COUNTS_SQL: &str =
    "SELECT site, bucket, checks, up, degraded, down, maintenance FROM {table} \
    WHERE bucket >= $1 AND bucket < $2";

/// The counters of every row of `grain`'s table in `range`, into a grid of the sites of
/// `index`; rows of other sites (hidden, or gone from sites.lua) are skipped. Selected by
/// bucket alone, so PostgreSQL walks the bucket BRIN index to the recent block ranges: adding
/// `site = ANY(names)` made it probe the primary key once per site instead (1,000 sites, the
/// last two days: 3,000 buffers and 17 ms against 600 buffers and 3 ms).
async fn read_grid(
    client: &Client,
    grain: Grain,
    range: Range<i64>,
    index: &SiteIndex<'_>,
) -> Result<Grid, ApiError> {
    let mut grid = Grid::new(grain, range, index.len());
    if grid.cells.is_empty() {
        return Ok(grid);
    }
    let table = match grain {
        Grain::Day => "rollup_daily",
        Grain::Hour => "rollup_hourly",
    };
    let rows = client
        .query(
            &COUNTS_SQL.replace("{table}", table),
            &[&time(grid.from), &time(grid.end())],
        )
        .await
        .map_err(query("reading rollup counts"))?;
    for row in &rows {
        let Some(&site) = index.get(row.get::<_, &str>(0)) else {
            continue;
        };
        let bucket: DateTime<Utc> = row.get(1);
        let tally = Tally {
            checks: row.get(2),
            up: row.get(3),
            degraded: row.get(4),
            down: row.get(5),
            maintenance: row.get(6),
        };
        grid.put(site, bucket.timestamp_micros(), tally);
    }
    Ok(grid)
}

const HISTS_SQL: &str =
    "SELECT site, bucket, total_hist FROM {table} WHERE bucket >= $1 AND bucket < $2";

/// Per site of `index`, the total-time histogram of its `grain` buckets that start in one of
/// `ranges[site]` (none: `None`). One query over the union of the ranges, selected by bucket
/// like [`read_grid`]; only the histograms of the sites that need them are decoded.
async fn read_latency(
    client: &Client,
    grain: Grain,
    ranges: &[Vec<Range<i64>>],
    index: &SiteIndex<'_>,
) -> Result<Vec<Option<Histogram>>, ApiError> {
    let mut out: Vec<Option<Histogram>> = ranges
        .iter()
        .map(|r| r.iter().any(|r| r.start < r.end).then(Histogram::new))
        .collect();
    let mut union = 0..0;
    for range in ranges.iter().flatten() {
        widen(&mut union, range);
    }
    if union.start >= union.end {
        return Ok(out);
    }
    let table = match grain {
        Grain::Day => "rollup_daily",
        Grain::Hour => "rollup_hourly",
    };
    let rows = client
        .query(
            &HISTS_SQL.replace("{table}", table),
            &[&time(union.start), &time(union.end)],
        )
        .await
        .map_err(query("reading latency histograms"))?;
    for row in &rows {
        let Some(&site) = index.get(row.get::<_, &str>(0)) else {
            continue;
        };
        let bucket = row.get::<_, DateTime<Utc>>(1).timestamp_micros();
        let wanted = ranges[site].iter().any(|r| r.contains(&bucket));
        if let (true, Some(histogram)) = (wanted, out[site].as_mut()) {
            let counts: Vec<i64> = row.get(2);
            histogram.merge(&counts);
        }
    }
    Ok(out)
}

/// An incident's time span (µs); `None` end: still open.
type Span = (i64, Option<i64>);

const INCIDENT_SPANS_SQL: &str = "SELECT site, started_at, resolved_at FROM incidents \
    WHERE site = ANY($1) AND started_at < $3 AND {resolved}";

/// The incident spans of `names` that started before `to` and whose end matches `resolved`
/// (`$2` is `bound`).
async fn read_spans(
    client: &Client,
    names: &[&str],
    resolved: &str,
    bound: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<HashMap<String, Vec<Span>>, ApiError> {
    let rows = client
        .query(
            &INCIDENT_SPANS_SQL.replace("{resolved}", resolved),
            &[&names, &bound, &to],
        )
        .await
        .map_err(query("reading incidents"))?;
    let mut out: HashMap<String, Vec<Span>> = HashMap::new();
    for row in &rows {
        out.entry(row.get(0)).or_default().push(span_of(row, 1));
    }
    Ok(out)
}

fn span_of(row: &tokio_postgres::Row, first: usize) -> Span {
    let started: DateTime<Utc> = row.get(first);
    let resolved: Option<DateTime<Utc>> = row.get(first + 1);
    (
        started.timestamp_micros(),
        resolved.map(|r| r.timestamp_micros()),
    )
}

const ALL_SPANS_SQL: &str = "SELECT site, started_at, resolved_at FROM incidents \
    WHERE started_at < $2 AND {resolved}";

/// [`read_spans`] of the sites of `index`, one list per site: every site's, like
/// [`read_grid`].
async fn read_site_spans(
    client: &Client,
    resolved: &str,
    bound: i64,
    to: i64,
    index: &SiteIndex<'_>,
) -> Result<Vec<Vec<Span>>, ApiError> {
    let mut out = vec![Vec::new(); index.len()];
    let rows = client
        .query(
            &ALL_SPANS_SQL.replace("{resolved}", resolved),
            &[&time(bound), &time(to)],
        )
        .await
        .map_err(query("reading incidents"))?;
    for row in &rows {
        if let Some(&site) = index.get(row.get::<_, &str>(0)) {
            out[site].push(span_of(row, 1));
        }
    }
    Ok(out)
}

/// How many of `spans` overlap `[from, to)`.
pub fn overlapping(spans: &[Span], from: i64, to: i64) -> i64 {
    spans
        .iter()
        .filter(|(start, end)| *start < to && end.is_none_or(|end| end >= from))
        .count() as i64
}

/// The `site_state` rows of the sites of `index`, in its order: the whole table (one row a
/// site), without a list of names to match.
async fn read_states(
    client: &Client,
    index: &SiteIndex<'_>,
) -> Result<Vec<Option<State>>, ApiError> {
    let rows = client
        .query(
            "SELECT site, outcome, since, last_scheduled_at, last_failure_kind FROM site_state",
            &[],
        )
        .await
        .map_err(query("reading site_state"))?;
    let mut out = vec![None; index.len()];
    for row in &rows {
        if let Some(&site) = index.get(row.get::<_, &str>(0)) {
            out[site] = Some(State {
                outcome: row.get(1),
                since: row.get(2),
                last: row.get(3),
                last_failure_kind: row.get(4),
            });
        }
    }
    Ok(out)
}

/// What an overview at a given time reads and shows: the visible sites, the period of every
/// window and SLO, and the day and hour buckets those periods and the bar row cover.
struct Plan<'c> {
    sites: Vec<&'c Site>,
    windows: Vec<(&'static str, Period)>,
    /// Per site (in `sites` order): the period its SLO is judged over.
    slos: Vec<Option<Period>>,
    /// Per site: the period of its latency objective (its SLO's), when it has one.
    latency: Vec<Option<Period>>,
    bar_from: i64,
    /// Bucket starts of the daily and hourly rows any of the periods needs (`Period::split`).
    days: Range<i64>,
    hours: Range<i64>,
}

impl<'c> Plan<'c> {
    fn new(config: &'c Config, now: DateTime<Utc>) -> Plan<'c> {
        let sites = visible(config);
        let windows: Vec<(&'static str, Period)> = Window::ALL
            .iter()
            .map(|w| (w.name(), w.period(now)))
            .collect();
        let slos: Vec<Option<Period>> = sites
            .iter()
            .map(|s| s.slo.as_ref().map(|slo| slo_period(slo.window, now)))
            .collect();
        let latency = sites
            .iter()
            .zip(&slos)
            .map(|(site, period)| {
                let objective = site.slo.as_ref().is_some_and(|slo| slo.latency.is_some());
                period.filter(|_| objective)
            })
            .collect();
        let bars = days_period(now, BAR_DAYS);
        let mut days = bars.from_us..bars.to_us;
        let mut hours = 0..0;
        for period in windows.iter().map(|(_, p)| p).chain(slos.iter().flatten()) {
            let split = period.split();
            widen(&mut days, &split.days);
            for h in &split.hours {
                widen(&mut hours, h);
            }
        }
        if hours.start >= hours.end {
            // Only whole days (a 24-hour window ending at midnight): no hours to read.
            let hour = bucket_start_us(Grain::Hour, now.timestamp_micros());
            hours = hour..hour;
        }
        Plan {
            sites,
            windows,
            slos,
            latency,
            bar_from: bars.from_us,
            days,
            hours,
        }
    }

    fn index(&self) -> SiteIndex<'c> {
        self.sites
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect()
    }
}

/// Bucket ranges to read, one list per site of a plan.
type BucketsPerSite = Vec<Vec<Range<i64>>>;

/// `range` grown to cover `by` too; an empty range is no range.
fn widen(range: &mut Range<i64>, by: &Range<i64>) {
    if by.start >= by.end {
        return;
    }
    if range.start >= range.end {
        *range = by.clone();
    } else {
        *range = range.start.min(by.start)..range.end.max(by.end);
    }
}

/// Counts read once and reused by every overview until the next refresh: the daily buckets
/// before yesterday, the hourly ones before the previous hour, and the incidents resolved
/// before yesterday — what no longer changes but for a late result or a rollup rebuild. A
/// request reads the rest (from the grids' ends on) itself.
#[derive(Debug)]
struct Snapshot {
    /// When it was read, for [`CACHE_MAX_AGE`].
    built: Instant,
    /// The sites it was read for, the rows of its grids.
    names: Vec<String>,
    daily: Grid,
    hourly: Grid,
    /// Per site: incidents resolved within the daily grid's days.
    spans: Vec<Vec<Span>>,
    /// Per site with a latency objective over whole days: the settled days of its period
    /// (those before yesterday) and their total-time histogram. A period with hours (an SLO
    /// window under a day) is read whole by every request.
    latency: Vec<Option<(Range<i64>, Histogram)>>,
}

impl Snapshot {
    /// The buckets a snapshot read for `plan` at `now` holds: those `plan` needs before
    /// yesterday (daily) and before the previous hour (hourly). The hours reach back 24 of them
    /// even when `plan` takes its 24-hour window from a whole day (in the first hour of a day),
    /// so the requests of the hours after still find theirs.
    fn ranges(plan: &Plan, now: DateTime<Utc>) -> (Range<i64>, Range<i64>) {
        let now_us = now.timestamp_micros();
        let settled_day = bucket_start_us(Grain::Day, now_us) - DAY_US;
        let settled_hour = bucket_start_us(Grain::Hour, now_us) - HOUR_US;
        let from_hour = plan.hours.start.min(settled_hour - 24 * HOUR_US);
        (
            plan.days.start..settled_day.max(plan.days.start),
            from_hour..settled_hour,
        )
    }

    /// The buckets a request with `plan` reads itself: from the ends of the snapshot's grids to
    /// the plan's. They grow while a snapshot ages (refreshes failing), and stay right.
    fn recent(&self, plan: &Plan) -> (Range<i64>, Range<i64>) {
        let (day, hour) = (self.daily.end(), self.hourly.end());
        (day..plan.days.end.max(day), hour..plan.hours.end.max(hour))
    }

    /// Per site with a latency objective, the day and hour buckets of its period a request
    /// reads itself: the days after the snapshot's (all of them when it holds none), and the
    /// hours of a period shorter than a day.
    fn recent_latency(&self, plan: &Plan) -> (BucketsPerSite, BucketsPerSite) {
        let mut days = Vec::with_capacity(plan.latency.len());
        let mut hours = Vec::with_capacity(plan.latency.len());
        for (i, period) in plan.latency.iter().enumerate() {
            let Some(period) = period else {
                days.push(Vec::new());
                hours.push(Vec::new());
                continue;
            };
            let split = period.split();
            let held = self.latency.get(i).and_then(|l| l.as_ref());
            let from = held.map_or(split.days.start, |(d, _)| d.end.max(split.days.start));
            let unread = from..split.days.end.max(from);
            days.push(vec![unread]);
            hours.push(split.hours.to_vec());
        }
        (days, hours)
    }

    /// Reads the snapshot of `plan` at `now`: three queries, one after the other on `client`.
    async fn read(
        client: &Client,
        plan: &Plan<'_>,
        now: DateTime<Utc>,
    ) -> Result<Snapshot, ApiError> {
        let started = Instant::now();
        let (days, hours) = Snapshot::ranges(plan, now);
        let index = plan.index();
        let latency_days = Snapshot::latency_days(plan, days.end);
        let ranges: Vec<Vec<Range<i64>>> = latency_days
            .iter()
            .map(|d| d.iter().cloned().collect())
            .collect();
        let (daily, hourly, spans, histograms) = tokio::try_join!(
            read_grid(client, Grain::Day, days.clone(), &index),
            read_grid(client, Grain::Hour, hours, &index),
            read_site_spans(
                client,
                "resolved_at >= $1 AND resolved_at < $2",
                days.start,
                days.end,
                &index,
            ),
            read_latency(client, Grain::Day, &ranges, &index),
        )?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            sites = index.len(),
            "status page cache read"
        );
        Ok(Snapshot {
            built: Instant::now(),
            names: plan.sites.iter().map(|s| s.name.clone()).collect(),
            daily,
            hourly,
            spans,
            latency: latency_days
                .into_iter()
                .zip(histograms)
                .map(|(days, histogram)| days.map(|d| (d, histogram.unwrap_or_default())))
                .collect(),
        })
    }

    /// Per site: the days of its latency objective's period before `settled` (the daily
    /// grid's end), when that period is whole days.
    fn latency_days(plan: &Plan, settled: i64) -> Vec<Option<Range<i64>>> {
        // (Option: a snapshot holds a site's days even when they are none yet.)
        plan.latency
            .iter()
            .map(|period| {
                let split = period.as_ref()?.split();
                let whole_days = split.hours.iter().all(|h| h.start >= h.end);
                whole_days
                    .then(|| split.days.start..split.days.end.min(settled).max(split.days.start))
            })
            .collect()
    }

    /// It holds every settled bucket `plan` needs, for the same sites in the same order, and
    /// the settled days of each latency objective's period from its first day (the day after
    /// a snapshot was read, every period has moved on by one: the next request reads anew).
    fn covers(&self, plan: &Plan) -> bool {
        let latency = self.latency.len() == plan.latency.len()
            && self
                .latency
                .iter()
                .zip(&plan.latency)
                .all(|(held, period)| {
                    match (held, period) {
                        (Some((days, _)), Some(p)) => days.start == p.split().days.start,
                        (None, None) => true,
                        // A period with hours is never held; one of whole days always is.
                        (None, Some(p)) => p.split().hours.iter().any(|h| h.start < h.end),
                        (Some(_), None) => false,
                    }
                });
        latency
            && self.daily.from <= plan.days.start
            && self.hourly.from <= plan.hours.start
            && self.names.len() == plan.sites.len()
            && self
                .names
                .iter()
                .zip(&plan.sites)
                .all(|(a, b)| *a == b.name)
    }
}

/// The overview's cache of settled counts, re-read in the background once older than
/// [`CACHE_MAX_AGE`]. Reading 90 days of daily counts for 1,000 sites takes PostgreSQL
/// ~200 ms (the rows are wide, and more than `shared_buffers`); the buckets since yesterday
/// and the last hour (~4,000 rows) take a few ms.
///
/// A request never waits for a refresh: it takes the current snapshot (the lock is held only
/// to clone an `Arc`, never across an `await`) and leaves the refresh to a background task on
/// the pool's background connection. Without a usable snapshot (at start, before the one
/// [`CountsCache::warm`] reads is in) a request reads one itself.
#[derive(Debug, Default)]
pub struct CountsCache {
    current: std::sync::Mutex<Option<Arc<Snapshot>>>,
    /// A background read is running: one at a time.
    refreshing: AtomicBool,
}

/// Clears [`CountsCache::refreshing`] when dropped: the read ended, failed or was not needed.
struct RefreshDone(Arc<CountsCache>);

impl Drop for RefreshDone {
    fn drop(&mut self) {
        self.0.refreshing.store(false, AtomicOrdering::SeqCst);
    }
}

impl CountsCache {
    /// Starts reading the snapshot of `config`'s overview at `now` in the background, so the
    /// first request finds it.
    pub fn warm(self: &Arc<Self>, db: &super::Db, config: &Arc<Config>, now: DateTime<Utc>) {
        let seen = self.current().map(|s| s.built);
        self.refresh(db, config.clone(), now, seen);
    }

    fn current(&self) -> Option<Arc<Snapshot>> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Keeps `fresh` unless a snapshot read later is already there.
    fn install(&self, fresh: Arc<Snapshot>) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_none_or(|c| c.built <= fresh.built) {
            *current = Some(fresh);
        }
    }

    /// The current snapshot if it covers `plan`. A missing, outgrown or old one is re-read in
    /// the background (once at a time) without waiting for it.
    fn usable(
        self: &Arc<Self>,
        db: &super::Db,
        config: &Arc<Config>,
        plan: &Plan,
        now: DateTime<Utc>,
    ) -> Option<Arc<Snapshot>> {
        let current = self.current();
        let seen = current.as_ref().map(|s| s.built);
        let usable = current.filter(|s| s.covers(plan));
        if usable
            .as_ref()
            .is_none_or(|s| s.built.elapsed() > CACHE_MAX_AGE)
        {
            self.refresh(db, config.clone(), now, seen);
        }
        usable
    }

    /// Reads the next snapshot in a background task, unless one is being read already or one
    /// newer than the snapshot the caller saw (`seen`, read when) came in meanwhile.
    fn refresh(
        self: &Arc<Self>,
        db: &super::Db,
        config: Arc<Config>,
        now: DateTime<Utc>,
        seen: Option<Instant>,
    ) {
        if self.refreshing.swap(true, AtomicOrdering::SeqCst) {
            return;
        }
        let done = RefreshDone(self.clone());
        if self.current().map(|s| s.built) != seen {
            return;
        }
        let db = db.clone();
        tokio::spawn(async move {
            let plan = Plan::new(&config, now);
            let read = async {
                let client = db.background().await?;
                Snapshot::read(&client, &plan, now).await
            };
            match read.await {
                Ok(fresh) => done.0.install(Arc::new(fresh)),
                Err(error) => tracing::warn!(
                    error = %crate::error::ErrorChain(&error),
                    "refreshing the status page cache failed: keeping the old one"
                ),
            }
            drop(done);
        });
    }
}

/// Settled counts from the cache and recent ones read now: the tallies of any period of the
/// plan.
struct Counts {
    snapshot: Arc<Snapshot>,
    /// Buckets from the snapshot's grids' ends to the plan's.
    daily: Grid,
    hourly: Grid,
    spans: Vec<Vec<Span>>,
    states: Vec<Option<State>>,
    /// Per site with a latency objective: the total-time histogram of its SLO period.
    latency: Vec<Option<Histogram>>,
}

impl Counts {
    /// The snapshot (read now only when there is no usable one), then four queries — daily,
    /// hourly, incidents, site_state — spread over the pool's connections, so PostgreSQL runs
    /// them side by side.
    async fn read(
        cache: &Arc<CountsCache>,
        db: &super::Db,
        config: &Arc<Config>,
        plan: &Plan<'_>,
        now: DateTime<Utc>,
    ) -> Result<(Counts, bool), ApiError> {
        let (snapshot, cached) = match cache.usable(db, config, plan, now) {
            Some(snapshot) => (snapshot, true),
            None => {
                let client = db.client().await?;
                let fresh = Arc::new(Snapshot::read(&client, plan, now).await?);
                cache.install(fresh.clone());
                (fresh, false)
            }
        };
        let index = plan.index();
        let (days, hours) = snapshot.recent(plan);
        let (latency_days, latency_hours) = snapshot.recent_latency(plan);
        let (daily, hourly, spans, states, recent_days, recent_hours) = tokio::try_join!(
            async {
                let client = db.client().await?;
                read_grid(&client, Grain::Day, days.clone(), &index).await
            },
            async {
                let client = db.client().await?;
                read_grid(&client, Grain::Hour, hours, &index).await
            },
            async {
                let client = db.client().await?;
                let resolved = "(resolved_at IS NULL OR resolved_at >= $1)";
                read_site_spans(&client, resolved, days.start, plan.days.end, &index).await
            },
            async {
                let client = db.client().await?;
                read_states(&client, &index).await
            },
            async {
                let client = db.client().await?;
                read_latency(&client, Grain::Day, &latency_days, &index).await
            },
            async {
                let client = db.client().await?;
                read_latency(&client, Grain::Hour, &latency_hours, &index).await
            },
        )?;
        let latency = (0..plan.sites.len())
            .map(|i| {
                let parts = [
                    snapshot
                        .latency
                        .get(i)
                        .and_then(|l| l.as_ref())
                        .map(|(_, h)| h),
                    recent_days[i].as_ref(),
                    recent_hours[i].as_ref(),
                ];
                plan.latency[i].as_ref().map(|_| {
                    let mut histogram = Histogram::new();
                    for part in parts.into_iter().flatten() {
                        histogram.merge(part.as_slice());
                    }
                    histogram
                })
            })
            .collect();
        Ok((
            Counts {
                snapshot,
                daily,
                hourly,
                spans,
                states,
                latency,
            },
            cached,
        ))
    }

    /// The tally of site `site` over `period`: daily buckets for its whole days, hourly for
    /// the rest (`Period::split`), each from the snapshot or the recent grid that holds it.
    fn tally(&self, site: usize, period: &Period) -> Tally {
        let split = period.split();
        let mut out = Tally::default();
        let s = &self.snapshot;
        s.daily.add_into(site, &split.days, &mut out);
        self.daily.add_into(site, &split.days, &mut out);
        for hours in &split.hours {
            s.hourly.add_into(site, hours, &mut out);
            self.hourly.add_into(site, hours, &mut out);
        }
        out
    }

    fn day(&self, site: usize, start: i64) -> Tally {
        self.snapshot
            .daily
            .get(site, start)
            .or_else(|| self.daily.get(site, start))
            .copied()
            .unwrap_or_default()
    }

    fn incidents(&self, site: usize, from: i64, to: i64) -> i64 {
        let count = |spans: &[Vec<Span>]| spans.get(site).map_or(0, |s| overlapping(s, from, to));
        count(&self.snapshot.spans) + count(&self.spans)
    }
}

/// Everything the overview shows: `/api/v1/sites`, and the bar rows of the sites a page
/// shows (drawn only for those).
pub struct Overview {
    pub json: SitesJson,
    counts: Counts,
    bar_from: i64,
}

impl Overview {
    /// The 90 days of `site`'s bar row, oldest first.
    pub fn bars(&self, site: &str) -> Vec<super::svg::DayBar> {
        let Some(i) = self.json.sites.iter().position(|s| s.site == site) else {
            return Vec::new();
        };
        (0..BAR_DAYS)
            .map(|d| {
                let start = self.bar_from + d * DAY_US;
                let day = self.counts.day(i, start);
                super::svg::DayBar {
                    day: time(start).format("%Y-%m-%d").to_string(),
                    checks: day.checks,
                    uptime_pct: day.summary().uptime_pct(),
                    incidents: self.counts.incidents(i, start, start + DAY_US),
                    maintenance: day.maintenance,
                }
            })
            .collect()
    }
}

/// The overview of every visible site at `now`: one query per table, whatever the number of
/// sites, and per site a few sums of counts.
pub async fn overview(
    db: &super::Db,
    cache: &Arc<CountsCache>,
    config: &Arc<Config>,
    now: DateTime<Utc>,
) -> Result<Overview, ApiError> {
    let plan = Plan::new(config, now);
    let started = Instant::now();
    let (counts, cached) = Counts::read(cache, db, config, &plan, now).await?;
    let read_ms = started.elapsed().as_secs_f64() * 1e3;
    let summaries: Vec<SiteSummary> = plan
        .sites
        .iter()
        .enumerate()
        .map(|(i, site)| {
            let uptime: UptimeJson = plan
                .windows
                .iter()
                .map(|(name, p)| (*name, counts.tally(i, p).summary().uptime_pct()))
                .collect();
            let slo = plan.slos[i].as_ref().and_then(|period| {
                let mut summary = counts.tally(i, period).summary();
                if let Some(histogram) = &counts.latency[i] {
                    summary.total_hist = histogram.clone();
                }
                slo_json(site, &summary, period)
            });
            summary_of(config, site, counts.states[i].as_ref(), uptime, slo, now)
        })
        .collect();
    tracing::debug!(
        read_ms,
        merged_ms = started.elapsed().as_secs_f64() * 1e3 - read_ms,
        cached,
        sites = plan.sites.len(),
        "overview"
    );
    let count = |state: &str| {
        summaries
            .iter()
            .filter(|s| s.state.as_deref() == Some(state))
            .count()
    };
    let json = SitesJson {
        generated_at: rfc3339(now),
        down: count("down"),
        degraded: count("degraded"),
        in_maintenance: summaries.iter().filter(|s| s.maintenance.is_some()).count(),
        sites: summaries,
    };
    Ok(Overview {
        json,
        counts,
        bar_from: plan.bar_from,
    })
}

// ---------------------------------------------------------------------------------------------
// One site

/// `/api/v1/sites/{site}`: every window through [`report::report`], the SLO over its period,
/// the latest certificate, recent state changes and incidents.
pub async fn site(
    db: &super::Db,
    config: &Config,
    site: &Site,
    now: DateTime<Utc>,
) -> Result<SiteJson, ApiError> {
    let client = db.client().await?;
    let one = [site];
    let slo_period = site.slo.as_ref().map(|slo| slo_period(slo.window, now));
    // Every window and the SLO's period side by side, each on the next of the pool's
    // connections: PostgreSQL runs them in parallel.
    let periods: Vec<Period> = Window::ALL
        .iter()
        .map(|w| w.period(now))
        .chain(slo_period)
        .collect();
    let reports = async {
        let mut out = futures::future::try_join_all(periods.iter().map(|period| async {
            let client = db.client().await?;
            let mut r = report::report(&client, &one, period, now).await?;
            Ok::<_, ApiError>(r.pop())
        }))
        .await?;
        let slo = if slo_period.is_some() {
            out.pop().flatten()
        } else {
            None
        };
        Ok::<_, ApiError>((out.into_iter().flatten().collect::<Vec<_>>(), slo))
    };
    let names = [site.name.as_str()];
    let ((reports, slo_report), states, changes, incidents, cert) = tokio::try_join!(
        reports,
        states(&client, &names),
        changes(&client, site, HISTORY_ROWS),
        incidents(&client, &names, HISTORY_ROWS, now),
        latest_cert(&client, &site.name),
    )?;
    let uptime: UptimeJson = reports
        .iter()
        .zip(Window::ALL)
        .map(|(r, w)| (w.name(), r.summary.uptime_pct()))
        .collect();
    let slo = match (slo_report, slo_period) {
        (Some(r), Some(p)) => slo_json(site, &r.summary, &p),
        _ => None,
    };
    let windows = reports
        .iter()
        .zip(Window::ALL)
        .map(|(r, w)| WindowJson {
            window: w.name(),
            from: rfc3339(r.period.from()),
            to: rfc3339(r.period.to()),
            figures: FiguresJson::of(&r.summary),
            downtime_s: r.downtime.down_secs(),
            state_changes: r.downtime.changes,
        })
        .collect();
    Ok(SiteJson {
        summary: summary_of(config, site, states.get(&site.name), uptime, slo, now),
        generated_at: rfc3339(now),
        windows,
        cert_not_after: cert.map(rfc3339),
        cert_days_left: cert.map(|c| (c - now).num_seconds() as f64 / 86_400.0),
        state_changes: changes,
        incidents: incidents
            .into_iter()
            .map(|mut i| {
                i.cause_message = i.cause_message.map(|m| redact(&m, &site.url));
                i
            })
            .collect(),
    })
}

async fn latest_cert(client: &Client, site: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    let row = client
        .query_opt(
            "SELECT cert_not_after FROM check_results WHERE site = $1 \
             ORDER BY scheduled_at DESC LIMIT 1",
            &[&site],
        )
        .await
        .map_err(query("reading the latest result"))?;
    Ok(row.and_then(|r| r.get(0)))
}

async fn changes(client: &Client, site: &Site, limit: i64) -> Result<Vec<ChangeJson>, ApiError> {
    let rows = client
        .query(
            "SELECT at, from_outcome, to_outcome, failure_kind, failure_message \
             FROM state_changes WHERE site = $1 ORDER BY at DESC LIMIT $2",
            &[&site.name, &limit],
        )
        .await
        .map_err(query("reading state_changes"))?;
    Ok(rows
        .iter()
        .map(|row| ChangeJson {
            at: rfc3339(row.get(0)),
            from: row.get(1),
            to: row.get(2),
            failure_kind: row.get(3),
            failure_message: row.get::<_, Option<&str>>(4).map(|m| redact(m, &site.url)),
        })
        .collect())
}

/// The latest `limit` incidents of `names`, open ones first.
pub async fn incidents(
    client: &Client,
    names: &[&str],
    limit: i64,
    now: DateTime<Utc>,
) -> Result<Vec<IncidentJson>, ApiError> {
    let rows = client
        .query(
            "SELECT id, site, severity, started_at, resolved_at, cause_kind, cause_message, \
               failed_checks FROM incidents WHERE site = ANY($1) \
             ORDER BY resolved_at IS NULL DESC, started_at DESC LIMIT $2",
            &[&names, &limit],
        )
        .await
        .map_err(query("reading incidents"))?;
    Ok(rows
        .iter()
        .map(|row| {
            let started: DateTime<Utc> = row.get(3);
            let resolved: Option<DateTime<Utc>> = row.get(4);
            let end = resolved.unwrap_or(now);
            IncidentJson {
                id: row.get(0),
                site: row.get(1),
                severity: row.get(2),
                started_at: rfc3339(started),
                resolved_at: resolved.map(rfc3339),
                duration_s: ((end - started).num_milliseconds() as f64 / 1000.0).max(0.0),
                open: resolved.is_none(),
                cause_kind: row.get(5),
                cause_message: row.get(6),
                failed_checks: row.get(7),
            }
        })
        .collect())
}

/// `/api/v1/incidents`: the latest incidents of every visible site. Their messages are
/// redacted with their site's URL.
pub async fn all_incidents(
    db: &super::Db,
    config: &Config,
    limit: i64,
    now: DateTime<Utc>,
) -> Result<IncidentsJson, ApiError> {
    let sites = visible(config);
    let names: Vec<&str> = sites.iter().map(|s| s.name.as_str()).collect();
    let client = db.client().await?;
    let mut list = incidents(&client, &names, limit, now).await?;
    for incident in &mut list {
        if let (Some(site), Some(message)) = (
            sites.iter().find(|s| s.name == incident.site),
            incident.cause_message.as_mut(),
        ) {
            *message = redact(message, &site.url);
        }
    }
    Ok(IncidentsJson { incidents: list })
}

/// A `/daily` or `/hourly` series of `site`: the last `count` buckets of `grain` up to the
/// current one, each with its figures and overlapping incidents.
pub async fn series(
    db: &super::Db,
    site: &Site,
    grain: Grain,
    count: i64,
    now: DateTime<Utc>,
) -> Result<SeriesJson, ApiError> {
    let (table, max) = match grain {
        Grain::Day => ("rollup_daily", MAX_DAYS),
        Grain::Hour => ("rollup_hourly", MAX_HOURS),
    };
    if !(1..=max).contains(&count) {
        return Err(ApiError::BadRequest(format!(
            "{} must be between 1 and {max}",
            if grain == Grain::Day { "days" } else { "hours" }
        )));
    }
    let len = grain.micros();
    let to = bucket_start_us(grain, now.timestamp_micros()) + len;
    let from = to - count * len;
    let client = db.client().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {ROLLUP_COLUMNS} FROM {table} WHERE site = $1 AND bucket >= $2 \
                 AND bucket < $3"
            ),
            &[&site.name, &time(from), &time(to)],
        )
        .await
        .map_err(query("reading rollups"))?;
    let mut by_start: HashMap<i64, Summary> = rows
        .iter()
        .map(|row| {
            let r = rollup_from_row(row);
            (r.bucket_start_us, r.summary)
        })
        .collect();
    let names = [site.name.as_str()];
    let spans = read_spans(
        &client,
        &names,
        "(resolved_at IS NULL OR resolved_at >= $2)",
        time(from),
        time(to),
    )
    .await?;
    let spans = spans.get(&site.name).map(Vec::as_slice).unwrap_or(&[]);
    let buckets = (0..count)
        .map(|i| {
            let start = from + i * len;
            let summary = by_start.remove(&start).unwrap_or_default();
            BucketJson {
                start: rfc3339(time(start)),
                figures: FiguresJson::of(&summary),
                incidents: overlapping(spans, start, start + len),
            }
        })
        .collect();
    Ok(SeriesJson {
        site: site.name.clone(),
        from: rfc3339(time(from)),
        to: rfc3339(time(to)),
        buckets,
    })
}

/// `/api/v1/sites/{site}/results`: the latest `limit` results, newest first.
pub async fn results(db: &super::Db, site: &Site, limit: i64) -> Result<ResultsJson, ApiError> {
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT id, scheduled_at, outcome, status, total_ms, dns_ms, connect_ms, tls_ms, \
               ttfb_ms, transfer_ms, attempts, failure_kind, failure_phase, failure_message, \
               assertions::text, cert_not_after, maintenance \
             FROM check_results WHERE site = $1 ORDER BY scheduled_at DESC LIMIT $2",
            &[&site.name, &limit],
        )
        .await
        .map_err(query("reading check_results"))?;
    let results = rows
        .iter()
        .map(|row| {
            let assertions: &str = row.get(14);
            let failed: Vec<FailedAssertion> = failed_assertions(assertions)
                .into_iter()
                .map(|mut a| {
                    a.actual = redact(&a.actual, &site.url);
                    a.reason = a.reason.map(|r| redact(&r, &site.url));
                    a
                })
                .collect();
            ResultJson {
                id: row.get(0),
                scheduled_at: rfc3339(row.get(1)),
                outcome: row.get(2),
                status: row.get(3),
                total_ms: row.get(4),
                dns_ms: row.get(5),
                connect_ms: row.get(6),
                tls_ms: row.get(7),
                ttfb_ms: row.get(8),
                transfer_ms: row.get(9),
                attempts: row.get(10),
                failure_kind: row.get(11),
                failure_phase: row.get(12),
                failure_message: row.get::<_, Option<&str>>(13).map(|m| redact(m, &site.url)),
                failed_assertions: failed,
                cert_not_after: row.get::<_, Option<DateTime<Utc>>>(15).map(rfc3339),
                maintenance: row.get(16),
            }
        })
        .collect();
    Ok(ResultsJson {
        site: site.name.clone(),
        results,
    })
}

/// The assertions of a stored result that did not hold (`ok: false`); an unreadable list is
/// none.
pub fn failed_assertions(json: &str) -> Vec<FailedAssertion> {
    #[derive(serde::Deserialize)]
    struct Stored {
        ok: bool,
        #[serde(flatten)]
        assertion: FailedAssertion,
    }
    serde_json::from_str::<Vec<Stored>>(json)
        .unwrap_or_default()
        .into_iter()
        .filter(|a| !a.ok)
        .map(|a| a.assertion)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-03-10 00:00:00 UTC.
    const MIDNIGHT: i64 = 1_710_028_800 * 1_000_000;

    fn at(us: i64) -> DateTime<Utc> {
        time(us)
    }

    #[test]
    fn windows_cover_whole_hours_or_whole_days() {
        let now = at(MIDNIGHT + 10 * HOUR_US + 1_234);
        // (window, from, to)
        let cases = [
            (
                Window::H24,
                MIDNIGHT - 14 * HOUR_US,
                MIDNIGHT + 11 * HOUR_US,
            ),
            (Window::D7, MIDNIGHT - 6 * DAY_US, MIDNIGHT + DAY_US),
            (Window::D30, MIDNIGHT - 29 * DAY_US, MIDNIGHT + DAY_US),
            (Window::D90, MIDNIGHT - 89 * DAY_US, MIDNIGHT + DAY_US),
        ];
        for (window, from, to) in cases {
            let p = window.period(now);
            assert_eq!((p.from_us, p.to_us), (from, to), "{}", window.name());
        }
        // Day windows read daily rows only.
        let split = Window::D7.period(now).split();
        assert_eq!(split.days, MIDNIGHT - 6 * DAY_US..MIDNIGHT + DAY_US);
        assert!(split.hours.iter().all(|h| h.start >= h.end));
    }

    #[test]
    fn parses_windows() {
        for w in Window::ALL {
            assert_eq!(Window::parse(w.name()).unwrap(), w);
        }
        for bad in ["", "1d", "24H", "90days", "7d ", &"9".repeat(10_000)] {
            let error = Window::parse(bad).unwrap_err();
            assert!(matches!(error, ApiError::BadRequest(_)), "{bad:?}");
            assert!(error.to_string().len() < 100, "short message for {bad:?}");
        }
    }

    #[test]
    fn slo_periods() {
        let now = at(MIDNIGHT + 10 * HOUR_US);
        let day = 86_400;
        // (window in s, from, to)
        let cases = [
            (30 * day, MIDNIGHT - 29 * DAY_US, MIDNIGHT + DAY_US),
            (day, MIDNIGHT, MIDNIGHT + DAY_US),
            (day + 1, MIDNIGHT - DAY_US, MIDNIGHT + DAY_US),
            (6 * 3_600, MIDNIGHT + 4 * HOUR_US, MIDNIGHT + 10 * HOUR_US),
            (60, MIDNIGHT + 9 * HOUR_US, MIDNIGHT + 10 * HOUR_US),
        ];
        for (secs, from, to) in cases {
            let p = slo_period(Duration::from_secs(secs), now);
            assert_eq!((p.from_us, p.to_us), (from, to), "{secs} s");
        }
    }

    #[test]
    fn urls_lose_their_secrets() {
        let cases = [
            ("https://shop.example/", "https://shop.example/"),
            (
                "https://user:hunter2@shop.example/a?token=abc#x",
                "https://shop.example/a",
            ),
            ("http://u@h.example:8080/p?q", "http://h.example:8080/p"),
        ];
        for (url, want) in cases {
            assert_eq!(public_url(&url::Url::parse(url).unwrap()), want);
        }
        let url = url::Url::parse("https://u:hunter2@h.example/x?token=abc").unwrap();
        assert_eq!(
            redact("GET https://u:hunter2@h.example/x?token=abc failed", &url),
            "GET https://u:***@h.example/x?*** failed"
        );
        assert_eq!(redact("nothing secret", &url), "nothing secret");
        // Other URLs (a redirect target) lose theirs too.
        let other = url::Url::parse("https://plain.example/").unwrap();
        assert_eq!(
            redact("redirected to http://a:b@x.example/p?k=v then", &other),
            "redirected to http://a:***@x.example/p?*** then"
        );
    }

    #[test]
    fn incident_overlap() {
        let spans: Vec<Span> = vec![(0, Some(10)), (5, None), (20, Some(30)), (40, Some(40))];
        // (from, to, want)
        let cases = [
            (0, 5, 1),
            (0, 6, 2),
            (10, 20, 2),
            (11, 20, 1),
            (31, 40, 1),
            (40, 41, 2),
        ];
        for (from, to, want) in cases {
            assert_eq!(overlapping(&spans, from, to), want, "[{from}, {to})");
        }
    }

    fn tally(n: i64) -> Tally {
        Tally {
            checks: 10 * n,
            up: 9 * n - n % 2,
            degraded: n % 2,
            down: n,
            maintenance: n % 3,
        }
    }

    #[test]
    fn a_grid_adds_the_buckets_that_start_in_the_range() {
        let mut grid = Grid::new(Grain::Day, MIDNIGHT - 3 * DAY_US..MIDNIGHT, 2);
        for (days_back, n) in [(3, 1), (2, 2), (1, 4)] {
            grid.put(1, MIDNIGHT - days_back * DAY_US, tally(n));
        }
        // Outside the grid, or not a bucket start: ignored.
        grid.put(1, MIDNIGHT, tally(100));
        grid.put(1, MIDNIGHT - 4 * DAY_US, tally(100));
        grid.put(1, MIDNIGHT - DAY_US + 1, tally(100));
        // (range, checks of site 1)
        let cases = [
            (MIDNIGHT - 3 * DAY_US..MIDNIGHT, 70),
            (MIDNIGHT - 9 * DAY_US..MIDNIGHT + 9 * DAY_US, 70),
            (MIDNIGHT - 2 * DAY_US..MIDNIGHT, 60),
            (MIDNIGHT - 3 * DAY_US..MIDNIGHT - 2 * DAY_US, 10),
            // A bucket that starts before the range is not in it; one that starts inside is.
            (MIDNIGHT - 3 * DAY_US + 1..MIDNIGHT, 60),
            (MIDNIGHT - 3 * DAY_US..MIDNIGHT - 2 * DAY_US + 1, 30),
            (MIDNIGHT..MIDNIGHT + DAY_US, 0),
            (MIDNIGHT - DAY_US..MIDNIGHT - DAY_US, 0),
            // Reversed: empty.
            (
                Range {
                    start: MIDNIGHT,
                    end: MIDNIGHT - DAY_US,
                },
                0,
            ),
        ];
        for (range, want) in cases {
            let mut out = Tally::default();
            grid.add_into(1, &range, &mut out);
            assert_eq!(out.checks, want, "{range:?}");
            let mut other = Tally::default();
            grid.add_into(0, &range, &mut other);
            assert_eq!(other, Tally::default(), "site 0, {range:?}");
        }
        assert_eq!(grid.end(), MIDNIGHT);
        assert_eq!(grid.get(1, MIDNIGHT - DAY_US), Some(&tally(4)));
        assert_eq!(grid.get(1, MIDNIGHT), None);
        let reversed = Range {
            start: MIDNIGHT,
            end: MIDNIGHT - HOUR_US,
        };
        let empty = Grid::new(Grain::Hour, reversed, 3);
        assert_eq!(
            (empty.buckets, empty.cells.len(), empty.end()),
            (0, 0, MIDNIGHT)
        );
    }

    #[test]
    fn a_tally_is_judged_as_a_summary() {
        let t = tally(3);
        let mut merged = Summary::default();
        merged.merge(&t.summary());
        assert_eq!(merged.uptime_pct(), Some(27.0 / 30.0 * 100.0));
        assert_eq!(Tally::default().summary().uptime_pct(), None);
        let mut sum = tally(1);
        sum.add(&tally(2));
        assert_eq!(
            [sum.checks, sum.up, sum.degraded, sum.down, sum.maintenance],
            [30, 26, 1, 3, 3]
        );
    }

    fn fleet() -> Config {
        crate::config::load_str(
            std::path::Path::new("sites.lua"),
            r#"
site { name = "a", url = "https://a.example/" }
site { name = "b", url = "https://b.example/", slo = { target = 99.9, window = "30d" } }
site { name = "hidden", url = "https://h.example/", status_page = false }
site { name = "c", url = "https://c.example/", slo = { target = 99, window = "6h" } }
site { name = "d", url = "https://d.example/", slo = { target = 99.5, window = "120d" } }
"#,
            std::path::Path::new("."),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_plan_covers_the_bars_every_window_and_every_slo() {
        let config = fleet();
        // (now, days, hours)
        let cases = [
            (
                MIDNIGHT + 10 * HOUR_US + 1_234,
                MIDNIGHT - 119 * DAY_US..MIDNIGHT + DAY_US,
                MIDNIGHT - 14 * HOUR_US..MIDNIGHT + 11 * HOUR_US,
            ),
            // At midnight the 24 hours are one whole day: no hours (but c's SLO: 6 of them).
            (
                MIDNIGHT,
                MIDNIGHT - 119 * DAY_US..MIDNIGHT + DAY_US,
                MIDNIGHT - 6 * HOUR_US..MIDNIGHT,
            ),
        ];
        for (now, days, hours) in cases {
            let plan = Plan::new(&config, at(now));
            let names: Vec<&str> = plan.sites.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["a", "b", "c", "d"]);
            assert_eq!(
                (plan.days.clone(), plan.hours.clone()),
                (days, hours),
                "{now}"
            );
            assert_eq!(plan.bar_from, days_period(at(now), BAR_DAYS).from_us);
            assert_eq!(plan.slos[0], None);
            for period in plan
                .windows
                .iter()
                .map(|(_, p)| p)
                .chain(plan.slos.iter().flatten())
            {
                let split = period.split();
                for (range, within) in [(&split.days, &plan.days)]
                    .into_iter()
                    .chain(split.hours.iter().map(|h| (h, &plan.hours)))
                {
                    assert!(
                        range.start >= range.end
                            || (within.start <= range.start && range.end <= within.end),
                        "{range:?} outside {within:?}"
                    );
                }
            }
        }
    }

    /// A tally per bucket that differs by site, grain and start.
    fn fill(grid: &mut Grid, sites: usize) {
        for site in 0..sites {
            for b in 0..grid.buckets {
                let start = grid.from + b as i64 * grid.len;
                let n = (start / HOUR_US) % 7 + site as i64 + grid.len / DAY_US;
                grid.put(site, start, tally(n));
            }
        }
    }

    fn counts(snapshot: Snapshot, plan: &Plan) -> Counts {
        let sites = plan.sites.len();
        let (days, hours) = snapshot.recent(plan);
        let mut daily = Grid::new(Grain::Day, days, sites);
        let mut hourly = Grid::new(Grain::Hour, hours, sites);
        fill(&mut daily, sites);
        fill(&mut hourly, sites);
        Counts {
            snapshot: Arc::new(snapshot),
            daily,
            hourly,
            spans: vec![vec![(MIDNIGHT - 2 * DAY_US, None)]; sites],
            states: vec![None; sites],
            latency: vec![None; sites],
        }
    }

    /// A snapshot read earlier plus the buckets a request reads since add up to every bucket
    /// read at once, for every window, SLO and bar, whenever the snapshot was read.
    #[test]
    fn a_snapshot_and_the_recent_buckets_add_up_to_all_of_them() {
        let config = fleet();
        // Hours after MIDNIGHT: (snapshot read, request).
        let cases = [(10, 10), (0, 10), (7, 31), (23, 24), (24, 24), (30, 100)];
        for (read_h, now_h) in cases {
            let read_at = at(MIDNIGHT + read_h * HOUR_US + 1_000);
            let now = at(MIDNIGHT + now_h * HOUR_US + 2_000);
            let plan = Plan::new(&config, now);
            let sites = plan.sites.len();
            let (days, hours) = Snapshot::ranges(&Plan::new(&config, read_at), read_at);
            let mut snapshot = Snapshot {
                built: Instant::now(),
                names: plan.sites.iter().map(|s| s.name.clone()).collect(),
                daily: Grid::new(Grain::Day, days, sites),
                hourly: Grid::new(Grain::Hour, hours, sites),
                spans: vec![Vec::new(); sites],
                latency: vec![None; sites],
            };
            fill(&mut snapshot.daily, sites);
            fill(&mut snapshot.hourly, sites);
            assert!(
                snapshot.covers(&plan),
                "read at {read_h} h, asked at {now_h} h"
            );
            let cached = counts(snapshot, &plan);
            let nothing = Snapshot {
                built: Instant::now(),
                names: Vec::new(),
                daily: Grid::new(Grain::Day, plan.days.start..plan.days.start, 0),
                hourly: Grid::new(Grain::Hour, plan.hours.start..plan.hours.start, 0),
                spans: Vec::new(),
                latency: vec![None; sites],
            };
            let direct = counts(nothing, &plan);
            for site in 0..sites {
                let periods = plan.windows.iter().map(|(_, p)| p);
                for period in periods.chain(plan.slos.iter().flatten()) {
                    let want = direct.tally(site, period);
                    assert!(want.checks > 0);
                    assert_eq!(cached.tally(site, period), want, "{read_h} h, {now_h} h");
                }
                for d in 0..BAR_DAYS {
                    let start = plan.bar_from + d * DAY_US;
                    assert_eq!(cached.day(site, start), direct.day(site, start));
                    assert_eq!(
                        cached.incidents(site, start, start + DAY_US),
                        i64::from(start + DAY_US > MIDNIGHT - 2 * DAY_US)
                    );
                }
            }
        }
    }

    #[test]
    fn a_snapshot_of_other_sites_or_later_buckets_is_not_used() {
        let config = fleet();
        let now = at(MIDNIGHT + 10 * HOUR_US);
        let plan = Plan::new(&config, now);
        let (days, hours) = Snapshot::ranges(&plan, now);
        let snapshot = |names: Vec<String>, days: Range<i64>, hours: Range<i64>| Snapshot {
            built: Instant::now(),
            names,
            daily: Grid::new(Grain::Day, days, 0),
            hourly: Grid::new(Grain::Hour, hours, 0),
            spans: Vec::new(),
            latency: vec![None; plan.sites.len()],
        };
        let names: Vec<String> = plan.sites.iter().map(|s| s.name.clone()).collect();
        assert!(snapshot(names.clone(), days.clone(), hours.clone()).covers(&plan));
        let fewer = names[1..].to_vec();
        assert!(!snapshot(fewer, days.clone(), hours.clone()).covers(&plan));
        let later_days = plan.days.start + DAY_US..days.end;
        assert!(!snapshot(names.clone(), later_days, hours.clone()).covers(&plan));
        let later_hours = plan.hours.start + HOUR_US..hours.end;
        assert!(!snapshot(names, days, later_hours).covers(&plan));
    }

    /// The days of a latency objective's period a snapshot holds and those a request reads
    /// itself are the period's buckets, each once; a snapshot of the day before is not used.
    #[test]
    fn latency_histograms_come_from_the_snapshot_and_the_recent_days_once() {
        let config = crate::config::load_str(
            std::path::Path::new("sites.lua"),
            r#"
site { name = "a", url = "https://a.example/", slo = { target = 99, window = "7d", latency = { p99 = "800ms" } } }
site { name = "b", url = "https://b.example/", slo = { target = 99, window = "7d" } }
site { name = "c", url = "https://c.example/", slo = { target = 99, window = "6h", latency = { p50 = "1s" } } }
"#,
            std::path::Path::new("."),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // Hours after MIDNIGHT: (snapshot read, request, the snapshot is used).
        for (read_h, now_h, used) in [(1, 1, true), (0, 23, true), (10, 20, true), (23, 24, false)]
        {
            let read_at = at(MIDNIGHT + read_h * HOUR_US + 1_000);
            let now = at(MIDNIGHT + now_h * HOUR_US + 2_000);
            let (read_plan, plan) = (Plan::new(&config, read_at), Plan::new(&config, now));
            let (days, hours) = Snapshot::ranges(&read_plan, read_at);
            let held = Snapshot::latency_days(&read_plan, days.end);
            let snapshot = Snapshot {
                built: Instant::now(),
                names: plan.sites.iter().map(|s| s.name.clone()).collect(),
                daily: Grid::new(Grain::Day, days, 3),
                hourly: Grid::new(Grain::Hour, hours, 3),
                spans: vec![Vec::new(); 3],
                latency: held
                    .iter()
                    .map(|d| d.clone().map(|d| (d, Histogram::new())))
                    .collect(),
            };
            assert_eq!(snapshot.covers(&plan), used, "{read_h} h, {now_h} h");
            assert!(
                held[1].is_none() && held[2].is_none(),
                "b has none, c's has hours"
            );
            if !used {
                continue;
            }
            let (recent_days, recent_hours) = snapshot.recent_latency(&plan);
            for site in [0, 2] {
                let split = plan.latency[site].as_ref().unwrap().split();
                let mut got: Vec<i64> = held[site]
                    .iter()
                    .chain(&recent_days[site])
                    .flat_map(|r| r.clone().step_by(DAY_US as usize))
                    .collect();
                got.sort();
                let want: Vec<i64> = split.days.clone().step_by(DAY_US as usize).collect();
                assert_eq!(got, want, "site {site}: days, {read_h} h, {now_h} h");
                assert_eq!(
                    recent_hours[site],
                    split.hours.to_vec(),
                    "site {site}: hours"
                );
            }
            assert!(recent_days[1].is_empty() && recent_hours[1].is_empty());
        }
    }

    #[test]
    fn failed_assertions_are_the_false_ones() {
        let json = r#"[
            {"name":"status","ok":true,"level":"error","expected":"2xx","actual":"200"},
            {"name":"body","ok":false,"level":"error","expected":"/ok/","actual":"no match","reason":"body did not match"},
            {"name":"hook:1","ok":false,"level":"warn","expected":"","actual":""}
        ]"#;
        let failed = failed_assertions(json);
        let names: Vec<&str> = failed.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["body", "hook:1"]);
        assert_eq!(failed[0].reason.as_deref(), Some("body did not match"));
        assert!(failed_assertions("not json").is_empty());
        assert!(failed_assertions("{}").is_empty());
    }
}
