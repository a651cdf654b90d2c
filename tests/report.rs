//! `sitewatch report` end to end against the local stack's PostgreSQL (`dev/stack up`): each
//! test migrates a fresh database, writes rollup rows and state changes with plain SQL from
//! checks it makes up, runs the real binary on a sites.lua with SLOs, and compares what it
//! prints with what the test computes itself from those checks: counts, uptime, error budget,
//! percentiles (within one histogram bucket of the exact ones), means, downtime, exit codes.
//!
//! Rows the period must not read (hours outside it, hourly rows of its whole days, daily rows of
//! its partial days) carry poison — hundreds of slow down checks — so reading any of them shows.

mod stack;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use chrono::{DateTime, Duration as Age, DurationRound, SecondsFormat, TimeZone, Utc};
use serde_json::Value;
use sitewatch::insight::histogram::{bucket_of, Histogram};
use sitewatch::store;
use stack::StackLock;
use tokio_postgres::Client;

// ---------------------------------------------------------------------------------------------
// Made-up checks and the rollup rows they make

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Up,
    Degraded,
    Down,
    /// Probed in a maintenance window: counted apart, in nothing else.
    Maintenance,
}

/// One check as the test invents it. DNS, connect and TLS take fixed times, so their means are
/// known exactly.
#[derive(Debug, Clone, Copy)]
struct Check {
    verdict: Verdict,
    total_ms: f64,
    ttfb_ms: f64,
}

const DNS_MS: f64 = 1.5;
const CONNECT_MS: f64 = 2.5;
const TLS_MS: f64 = 6.0;

impl Check {
    fn transfer_ms(&self) -> f64 {
        self.total_ms - self.ttfb_ms - DNS_MS - CONNECT_MS - TLS_MS
    }
}

/// Deterministic latencies: a long-tailed spread around `base_ms`.
struct Latencies(u64);

impl Latencies {
    fn next(&mut self, base_ms: f64) -> (f64, f64) {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let r = (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        let total = base_ms * (0.6 + 2.4 * r * r * r) + 12.0;
        (total, total * 0.55)
    }

    /// `n` checks around `base_ms`; the verdict of check `i` comes from `verdict(i)`.
    fn checks(&mut self, n: usize, base_ms: f64, verdict: impl Fn(usize) -> Verdict) -> Vec<Check> {
        (0..n)
            .map(|i| {
                let (total_ms, ttfb_ms) = self.next(base_ms);
                Check {
                    verdict: verdict(i),
                    total_ms,
                    ttfb_ms,
                }
            })
            .collect()
    }
}

/// Slow down checks with a huge failure count: what a period must never read.
fn poison() -> Vec<Check> {
    vec![
        Check {
            verdict: Verdict::Down,
            total_ms: 9_000.0,
            ttfb_ms: 9_000.0,
        };
        500
    ]
}

/// Writes the rollup row of `checks` for `site` and the bucket starting at `start`.
async fn insert_rollup(
    client: &Client,
    table: &str,
    site: &str,
    start: DateTime<Utc>,
    checks: &[Check],
) {
    let counted: Vec<&Check> = checks
        .iter()
        .filter(|c| c.verdict != Verdict::Maintenance)
        .collect();
    let count = |v: Verdict| checks.iter().filter(|c| c.verdict == v).count() as i64;
    let n = counted.len() as i64;
    let sum = |f: &dyn Fn(&Check) -> f64| counted.iter().map(|c| f(c)).sum::<f64>();
    let mut total_hist = Histogram::new();
    let mut ttfb_hist = Histogram::new();
    for c in &counted {
        total_hist.record(c.total_ms);
        ttfb_hist.record(c.ttfb_ms);
    }
    let max_total = counted.iter().map(|c| c.total_ms).reduce(f64::max);
    let down = count(Verdict::Down);
    let failures = if down > 0 {
        serde_json::json!({ "timeout": down })
    } else {
        serde_json::json!({})
    };
    let sql = format!(
        "INSERT INTO {table} (site, bucket, checks, up, degraded, down, maintenance, \
             dns_sum, dns_count, connect_sum, connect_count, tls_sum, tls_count, \
             ttfb_sum, ttfb_count, transfer_sum, transfer_count, total_sum, total_count, \
             max_total_ms, total_hist, ttfb_hist, failures) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $3, $9, $3, $10, $3, $11, $3, $12, $3, \
             $13, $3, $14, $15, $16, $17)"
    );
    client
        .execute(
            &sql,
            &[
                &site,
                &start,
                &n,
                &count(Verdict::Up),
                &count(Verdict::Degraded),
                &down,
                &count(Verdict::Maintenance),
                &(n as f64 * DNS_MS),
                &(n as f64 * CONNECT_MS),
                &(n as f64 * TLS_MS),
                &sum(&|c| c.ttfb_ms),
                &sum(&|c| c.transfer_ms()),
                &sum(&|c| c.total_ms),
                &max_total,
                &total_hist.as_slice().to_vec(),
                &ttfb_hist.as_slice().to_vec(),
                &failures,
            ],
        )
        .await
        .unwrap_or_else(|error| panic!("insert {table} {site} {start}: {error:?}"));
}

/// Writes one `state_changes` row (`from` None: the site's first result).
async fn insert_change(
    client: &Client,
    site: &str,
    at: DateTime<Utc>,
    from: Option<&str>,
    to: &str,
) {
    client
        .execute(
            "INSERT INTO state_changes (at, result_id, site, from_outcome, to_outcome) \
             VALUES ($1, gen_random_uuid(), $2, $3, $4)",
            &[&at, &site, &from, &to],
        )
        .await
        .unwrap_or_else(|error| panic!("insert state change {site} {at}: {error:?}"));
}

// ---------------------------------------------------------------------------------------------
// What the report must say, computed from the checks

/// The figures of a set of checks, computed directly.
struct Expected {
    checks: i64,
    up: i64,
    degraded: i64,
    down: i64,
    maintenance: i64,
    totals: Vec<f64>,
    ttfbs: Vec<f64>,
}

impl Expected {
    fn of<'a>(all: impl IntoIterator<Item = &'a Check>) -> Expected {
        let all: Vec<&Check> = all.into_iter().collect();
        let count = |v: Verdict| all.iter().filter(|c| c.verdict == v).count() as i64;
        let counted: Vec<&&Check> = all
            .iter()
            .filter(|c| c.verdict != Verdict::Maintenance)
            .collect();
        let mut totals: Vec<f64> = counted.iter().map(|c| c.total_ms).collect();
        let mut ttfbs: Vec<f64> = counted.iter().map(|c| c.ttfb_ms).collect();
        totals.sort_by(f64::total_cmp);
        ttfbs.sort_by(f64::total_cmp);
        Expected {
            checks: counted.len() as i64,
            up: count(Verdict::Up),
            degraded: count(Verdict::Degraded),
            down: count(Verdict::Down),
            maintenance: count(Verdict::Maintenance),
            totals,
            ttfbs,
        }
    }

    fn uptime_pct(&self) -> f64 {
        (self.up + self.degraded) as f64 / self.checks as f64 * 100.0
    }

    /// (left %, left minutes) of the error budget of `target_pct` over `minutes`.
    fn budget(&self, target_pct: f64, minutes: f64) -> (f64, f64) {
        let allowed = (100.0 - target_pct) / 100.0;
        let bad = self.down as f64 / self.checks as f64;
        (100.0 * (1.0 - bad / allowed), (allowed - bad) * minutes)
    }

    fn mean(values: &[f64]) -> f64 {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// The exact quantile of sorted values: the value of rank ceil(q·n), as the histogram defines it.
fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

/// The reported percentile lies in the bucket of the exact one or a neighbour.
fn assert_quantile(line: &Value, key: &str, sorted: &[f64], q: f64) {
    let got = number(line, key);
    let exact = exact_quantile(sorted, q);
    let gap = bucket_of(got).abs_diff(bucket_of(exact));
    assert!(
        gap <= 1,
        "{}: {key} = {got}, exact {exact} ({gap} buckets apart)",
        line["site"]
    );
}

/// Checks every count, uptime, quantile and mean of a JSON line against `want`.
fn assert_figures(line: &Value, want: &Expected) {
    let site = &line["site"];
    for (key, value) in [
        ("checks", want.checks),
        ("up", want.up),
        ("degraded", want.degraded),
        ("down", want.down),
        ("maintenance", want.maintenance),
    ] {
        assert_eq!(line[key].as_i64(), Some(value), "{site}: {key}");
    }
    assert_close(number(line, "uptime_pct"), want.uptime_pct(), "uptime_pct");
    for (name, q) in [("p50", 0.50), ("p95", 0.95), ("p99", 0.99)] {
        assert_quantile(line, &format!("{name}_ms"), &want.totals, q);
        assert_quantile(line, &format!("ttfb_{name}_ms"), &want.ttfbs, q);
    }
    let mean = &line["mean_ms"];
    let total_mean = Expected::mean(&want.totals);
    let ttfb_mean = Expected::mean(&want.ttfbs);
    for (phase, value) in [
        ("dns", DNS_MS),
        ("connect", CONNECT_MS),
        ("tls", TLS_MS),
        ("ttfb", ttfb_mean),
        (
            "transfer",
            total_mean - ttfb_mean - DNS_MS - CONNECT_MS - TLS_MS,
        ),
        ("total", total_mean),
    ] {
        let got = mean[phase]
            .as_f64()
            .unwrap_or_else(|| panic!("{site}: mean_ms.{phase} missing in {line}"));
        assert_close(got, value, &format!("{site}: mean_ms.{phase}"));
    }
    let max = want.totals.last().copied().unwrap_or_default();
    assert_close(number(line, "max_ms"), max, "max_ms");
}

// ---------------------------------------------------------------------------------------------
// Running the binary

/// A migrated fresh database, the test's client on it, and a directory for sites.lua.
struct Fixture {
    url: String,
    client: Client,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(sites_lua: &str) -> Fixture {
        let url = stack::fresh_database().await;
        let mut client = store::connect(&stack::database(&url))
            .await
            .unwrap_or_else(|error| panic!("connect: {}", store::ErrorChain(&error)));
        store::migrate(&mut client)
            .await
            .unwrap_or_else(|error| panic!("migrate: {}", store::ErrorChain(&error)));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sites.lua"), sites_lua).unwrap();
        Fixture { url, client, dir }
    }

    async fn report(&self, args: &[&str]) -> Output {
        run_report(self.dir.path(), &self.url, args).await
    }

    /// `report --json …`: exit code and the lines by site.
    async fn json(&self, args: &[&str]) -> (i32, BTreeMap<String, Value>) {
        let output = self.report(&[args, &["--json"][..]].concat()).await;
        (code(&output), lines(&output))
    }

    async fn drop(self) {
        stack::drop_database(&self.url).await;
    }
}

/// Runs `sitewatch report ARGS` in `dir` against the database at `url`.
async fn run_report(dir: &Path, url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_sitewatch"))
        .arg("--env-file")
        .arg(stack::env_file())
        .arg("report")
        .args(args)
        .current_dir(dir)
        .env("SITEWATCH_DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run sitewatch")
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

fn text(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn lines(output: &Output) -> BTreeMap<String, Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", text(output)));
            (value["site"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

fn number(line: &Value, key: &str) -> f64 {
    line[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {line}"))
}

/// The table row of `site` (its first line starting with the name).
fn table_row<'a>(table: &'a str, site: &str) -> &'a str {
    table
        .lines()
        .find(|line| line.split_whitespace().next() == Some(site))
        .unwrap_or_else(|| panic!("no row for {site} in\n{table}"))
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn ymd_h(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests

const PERIOD_SITES: &str = r#"
site { name = "shop", url = "https://shop.example/",
       slo = { target = 99, window = "30d", latency = { p99 = "5s" } } }
site { name = "blog", url = "https://blog.example/" }
site { name = "idle", url = "https://idle.example/", slo = { target = 99.9, window = "7d" } }
"#;

/// `--from 2024-03-01T10:20Z --to 2024-03-05T14:05Z` is 03-01 10:00 .. 03-05 15:00: 14 hours of
/// 03-01 and 15 of 03-05 from rollup_hourly, 03-02 to 03-04 from rollup_daily.
#[tokio::test]
async fn period_reads_whole_days_daily_and_edge_hours_hourly() {
    let _stack = StackLock::shared();
    let db = Fixture::new(PERIOD_SITES).await;
    let c = &db.client;
    let mut latencies = Latencies(7);
    let mut counted: Vec<Check> = Vec::new();
    // Head: 14 hours of 12 checks around 300 ms, a down check at 10:00 and 17:00.
    for hour in 10..24 {
        let checks = latencies.checks(12, 300.0, |i| {
            if i == 0 && hour % 7 == 3 {
                Verdict::Down
            } else {
                Verdict::Up
            }
        });
        insert_rollup(c, "rollup_hourly", "shop", ymd_h(2024, 3, 1, hour), &checks).await;
        counted.extend(checks);
    }
    // Whole days: 293 checks around 100 ms, 2 down, 3 degraded, 5 in maintenance.
    for day in 2..=4 {
        let checks = latencies.checks(293, 100.0, |i| match i {
            10 | 200 => Verdict::Down,
            20..=22 => Verdict::Degraded,
            100..=104 => Verdict::Maintenance,
            _ => Verdict::Up,
        });
        insert_rollup(c, "rollup_daily", "shop", ymd_h(2024, 3, day, 0), &checks).await;
        counted.extend(checks);
    }
    // Tail: 15 hours of 12 checks around 200 ms, one down.
    for hour in 0..15 {
        let checks = latencies.checks(12, 200.0, |i| {
            if i == 5 && hour == 3 {
                Verdict::Down
            } else {
                Verdict::Up
            }
        });
        insert_rollup(c, "rollup_hourly", "shop", ymd_h(2024, 3, 5, hour), &checks).await;
        counted.extend(checks);
    }
    // Poison: the hours just outside, an hour inside a whole day, the partial days' daily rows,
    // the day after, and another site's rows.
    for (table, start) in [
        ("rollup_hourly", ymd_h(2024, 3, 1, 9)),
        ("rollup_hourly", ymd_h(2024, 3, 5, 15)),
        ("rollup_hourly", ymd_h(2024, 3, 3, 12)),
        ("rollup_daily", ymd_h(2024, 3, 1, 0)),
        ("rollup_daily", ymd_h(2024, 3, 5, 0)),
        ("rollup_daily", ymd_h(2024, 3, 6, 0)),
        ("rollup_daily", ymd_h(2024, 2, 29, 0)),
    ] {
        insert_rollup(c, table, "shop", start, &poison()).await;
    }
    insert_rollup(c, "rollup_daily", "other", ymd_h(2024, 3, 3, 0), &poison()).await;
    // blog: a few checks on one whole day, no SLO.
    let blog = latencies.checks(40, 50.0, |_| Verdict::Up);
    insert_rollup(c, "rollup_daily", "blog", ymd_h(2024, 3, 3, 0), &blog).await;

    // shop is down from before the period until 12:00 (2 h), 03-03 08:00-08:30, and from 03-05
    // 14:00 past the end (1 h inside): 3 h 30 min, 4 changes inside.
    let changes = [
        ("2024-02-01T00:00:00Z", None, "up"),
        ("2024-02-28T00:00:00Z", Some("up"), "down"),
        ("2024-03-01T12:00:00Z", Some("down"), "up"),
        ("2024-03-03T08:00:00Z", Some("up"), "down"),
        ("2024-03-03T08:30:00Z", Some("down"), "up"),
        ("2024-03-05T14:00:00Z", Some("up"), "down"),
        ("2024-03-05T16:00:00Z", Some("down"), "up"),
    ];
    for (at, from, to) in changes {
        insert_change(c, "shop", utc(at), from, to).await;
    }
    // blog's first result is inside the period: no change, no downtime.
    insert_change(c, "blog", utc("2024-03-02T00:00:00Z"), None, "up").await;
    insert_change(c, "other", utc("2024-03-02T00:00:00Z"), Some("up"), "down").await;

    let period = [
        "--from",
        "2024-03-01T10:20:00Z",
        "--to",
        "2024-03-05T14:05:00Z",
    ];
    let (exit, json) = db.json(&period).await;
    assert_eq!(exit, 0, "every SLO holds: {json:?}");
    assert_eq!(
        json.keys().collect::<Vec<_>>(),
        ["blog", "idle", "shop"],
        "every configured site, only those"
    );

    let shop = &json["shop"];
    let want = Expected::of(&counted);
    assert_eq!(want.checks, 14 * 12 + 3 * 288 + 15 * 12);
    assert_eq!(want.down, 2 + 6 + 1);
    assert_figures(shop, &want);
    assert_eq!(shop["from"], "2024-03-01T10:00:00Z");
    assert_eq!(shop["to"], "2024-03-05T15:00:00Z");
    assert_eq!(shop["slo_target_pct"].as_f64(), Some(99.0));
    assert_eq!(shop["slo_window"], "30d");
    // Minutes of the SLO's window (30d), at the period's failure rate.
    let (left_pct, left_min) = want.budget(99.0, 30.0 * 24.0 * 60.0);
    assert_close(number(shop, "budget_left_pct"), left_pct, "budget_left_pct");
    assert_close(number(shop, "budget_left_min"), left_min, "budget_left_min");
    assert!(left_pct > 0.0 && left_pct < 100.0, "{left_pct}");
    assert_eq!(shop["breached"], false);
    let latency = &shop["latency_objective"];
    assert_eq!(latency["name"], "p99");
    assert_eq!(latency["max_ms"].as_f64(), Some(5000.0));
    assert_eq!(latency["breached"], false);
    assert_eq!(latency["observed_ms"], shop["p99_ms"]);
    assert_eq!(shop["failures"]["timeout"].as_i64(), Some(want.down));
    assert_eq!(shop["state_changes"].as_i64(), Some(4));
    assert_eq!(shop["downtime_s"].as_f64(), Some(3.5 * 3600.0));

    let blog_line = &json["blog"];
    assert_figures(blog_line, &Expected::of(&blog));
    for key in [
        "slo_target_pct",
        "slo_window",
        "budget_left_pct",
        "budget_left_min",
        "latency_objective",
        "breached",
    ] {
        assert!(
            blog_line[key].is_null(),
            "blog has no SLO: {key} = {}",
            blog_line[key]
        );
    }
    assert_eq!(blog_line["state_changes"].as_i64(), Some(0));
    assert_eq!(blog_line["downtime_s"].as_f64(), Some(0.0));

    // No data at all: nothing to compute, nothing breached, the whole budget left.
    let idle = &json["idle"];
    assert_eq!(idle["checks"].as_i64(), Some(0));
    for key in [
        "uptime_pct",
        "p50_ms",
        "p99_ms",
        "ttfb_p99_ms",
        "latency_objective",
    ] {
        assert!(idle[key].is_null(), "idle: {key} = {}", idle[key]);
    }
    assert_eq!(idle["mean_ms"]["total"], Value::Null);
    assert_eq!(idle["budget_left_pct"].as_f64(), Some(100.0));
    assert_eq!(idle["breached"], false);

    // The table says the same.
    let output = db.report(&period).await;
    assert_eq!(code(&output), 0, "{}", text(&output));
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        table.starts_with("period 2024-03-01T10:00:00Z .. 2024-03-05T15:00:00Z (4d5h"),
        "{table}"
    );
    let row = table_row(&table, "shop");
    assert!(row.contains(&format!("{:.3}", want.uptime_pct())), "{row}");
    assert!(row.contains(&format!("{left_pct:.1}")), "{row}");
    assert!(row.contains(&format!("{left_min:.1}")), "{row}");
    assert!(row.contains("3h30m"), "{row}");
    assert!(row.trim_end().ends_with("ok"), "{row}");
    assert!(
        table_row(&table, "blog").trim_end().ends_with('-'),
        "{table}"
    );
    assert!(!table.contains("breached"), "{table}");
    db.drop().await;
}

const BREACH_SITES: &str = r#"
site { name = "flaky", url = "https://flaky.example/", slo = { target = 99.9 } }
site { name = "slow", url = "https://slow.example/",
       slo = { target = 99, latency = { p95 = "100ms" } } }
site { name = "fine", url = "https://fine.example/",
       slo = { target = 99, latency = { p95 = "2s" } } }
"#;

#[tokio::test]
async fn a_breached_slo_exits_1_and_reads_breached() {
    let _stack = StackLock::shared();
    let db = Fixture::new(BREACH_SITES).await;
    let c = &db.client;
    let mut latencies = Latencies(42);
    let mut all: BTreeMap<&str, Vec<Check>> = BTreeMap::new();
    for day in [2, 3] {
        let start = ymd_h(2024, 3, day, 0);
        // 5 down in 1000 at a 99.9 % target: five times the budget.
        let flaky = latencies.checks(1000, 80.0, |i| {
            if i % 200 == 0 {
                Verdict::Down
            } else {
                Verdict::Up
            }
        });
        // Always up, but the p95 is far above 100 ms.
        let slow = latencies.checks(500, 400.0, |_| Verdict::Up);
        let fine = latencies.checks(500, 120.0, |_| Verdict::Up);
        for (site, checks) in [("flaky", flaky), ("slow", slow), ("fine", fine)] {
            insert_rollup(c, "rollup_daily", site, start, &checks).await;
            all.entry(site).or_default().extend(checks);
        }
    }
    let period = ["--from", "2024-03-02", "--to", "2024-03-04"];
    let (exit, json) = db.json(&period).await;
    assert_eq!(exit, 1, "{json:?}");
    // The budget's minutes are minutes of the SLO window, 30d by default.
    let minutes = 30.0 * 24.0 * 60.0;

    let flaky = &json["flaky"];
    let want = Expected::of(&all["flaky"]);
    assert_figures(flaky, &want);
    assert_eq!(flaky["from"], "2024-03-02T00:00:00Z");
    assert_eq!(flaky["to"], "2024-03-04T00:00:00Z");
    let (left_pct, left_min) = want.budget(99.9, minutes);
    assert_close(
        number(flaky, "budget_left_pct"),
        left_pct,
        "budget_left_pct",
    );
    assert_close(
        number(flaky, "budget_left_min"),
        left_min,
        "budget_left_min",
    );
    assert_close(left_pct, -400.0, "five times the budget");
    assert_eq!(flaky["breached"], true);
    assert_eq!(flaky["latency_objective"], Value::Null);

    let slow = &json["slow"];
    let want = Expected::of(&all["slow"]);
    assert_figures(slow, &want);
    assert_eq!(slow["budget_left_pct"].as_f64(), Some(100.0));
    assert_eq!(slow["breached"], true);
    let latency = &slow["latency_objective"];
    assert_eq!(
        (&latency["name"], latency["max_ms"].as_f64()),
        (&Value::from("p95"), Some(100.0))
    );
    assert_eq!(latency["breached"], true);
    assert_quantile(latency, "observed_ms", &want.totals, 0.95);

    let fine = &json["fine"];
    assert_figures(fine, &Expected::of(&all["fine"]));
    assert_eq!(fine["breached"], false);
    assert_eq!(fine["latency_objective"]["breached"], false);

    let output = db.report(&period).await;
    assert_eq!(code(&output), 1, "{}", text(&output));
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        table_row(&table, "flaky").ends_with("breached (budget)"),
        "{table}"
    );
    let slow_row = table_row(&table, "slow");
    assert!(slow_row.contains("breached (p95 "), "{table}");
    assert!(slow_row.ends_with("> 100 ms)"), "{table}");
    assert!(table_row(&table, "fine").ends_with("ok"), "{table}");

    // Selecting only the healthy site: exit 0, one line.
    let (exit, json) = db
        .json(&[&period[..], &["--site", "fine"][..]].concat())
        .await;
    assert_eq!(exit, 0);
    assert_eq!(json.keys().collect::<Vec<_>>(), ["fine"]);
    db.drop().await;
}

#[tokio::test]
async fn bad_requests_exit_2_and_bad_flags_64() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sites.lua"), BREACH_SITES).unwrap();
    // None of these reaches the database.
    let nowhere = "postgres://nobody@127.0.0.1:1/none";
    // (what, arguments, exit code: 2 for a request the config or data refuses, 64 for a
    // command line clap refuses, message)
    let cases: &[(&str, &[&str], i32, &str)] = &[
        (
            "unknown site",
            &["--site", "fine", "--site", "nope"],
            2,
            "\"nope\"",
        ),
        (
            "empty period",
            &["--from", "2024-03-04", "--to", "2024-03-02"],
            2,
            "--from must be before --to",
        ),
        (
            "bad time",
            &["--from", "yesterday", "--to", "2024-03-02"],
            64,
            "RFC 3339",
        ),
        (
            "--since with --from",
            &["--since", "7d", "--from", "2024-03-02"],
            64,
            "cannot be used",
        ),
        ("--from alone", &["--from", "2024-03-02"], 64, "--to"),
        ("bad duration", &["--since", "7 days"], 64, "unit"),
    ];
    for (name, args, want, message) in cases {
        let output = run_report(dir.path(), nowhere, args).await;
        assert_eq!(code(&output), *want, "{name}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{name}: {stderr}");
    }
    std::fs::write(dir.path().join("sites.lua"), "site { name = 1 }").unwrap();
    let output = run_report(dir.path(), nowhere, &[]).await;
    assert_eq!(code(&output), 2, "invalid config: {}", text(&output));
}

#[tokio::test]
async fn unreachable_database_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sites.lua"), BREACH_SITES).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("postgres://nobody@127.0.0.1:{port}/none?connect_timeout=2");
    let output = run_report(dir.path(), &url, &["--since", "1d"]).await;
    assert_eq!(code(&output), 3, "{}", text(&output));
}

const LIVE_SITES: &str = r#"
site { name = "live", url = "https://live.example/", slo = { target = 95, window = "2d" } }
site { name = "short", url = "https://short.example/", slo = { target = 95, window = "1d" } }
"#;

/// `--since 2d`, `--from/--to` with the same hours, and no period flag at all (the longest SLO
/// window is 2d) all report the same; a site down now counts as down until now.
#[tokio::test]
async fn since_default_and_from_to_agree_and_current_downtime_counts_until_now() {
    let _stack = StackLock::shared();
    let db = Fixture::new(LIVE_SITES).await;
    let c = &db.client;
    let before = Utc::now();
    let this_hour = before.duration_trunc(Age::hours(1)).unwrap();
    // Every hour of the last three days and this one, as the consumer writes them: the daily
    // rows are the sums of their hours.
    let mut latencies = Latencies(3);
    let mut hours: Vec<(DateTime<Utc>, Vec<Check>)> = Vec::new();
    let mut days: BTreeMap<DateTime<Utc>, Vec<Check>> = BTreeMap::new();
    for k in (0..=72).rev() {
        let start = this_hour - Age::hours(k);
        let checks = latencies.checks(12, 50.0 + 5.0 * (k % 24) as f64, |i| {
            if i == 0 && k % 10 == 0 {
                Verdict::Down
            } else {
                Verdict::Up
            }
        });
        insert_rollup(c, "rollup_hourly", "live", start, &checks).await;
        let day = start.duration_trunc(Age::days(1)).unwrap();
        days.entry(day).or_default().extend(checks.iter().copied());
        hours.push((start, checks));
    }
    for (day, checks) in &days {
        insert_rollup(c, "rollup_daily", "live", *day, checks).await;
    }
    // Up for ten days, down for the last 90 minutes.
    let down_since = before - Age::minutes(90);
    insert_change(c, "live", before - Age::days(10), None, "up").await;
    insert_change(c, "live", down_since, Some("up"), "down").await;

    let (exit, since) = db.json(&["--since", "2d"]).await;
    let after = Utc::now();
    assert_eq!(exit, 0, "{since:?}");
    let live = &since["live"];
    // The period is 2d back from the report's now, from rounded down and to rounded up.
    let from = utc(live["from"].as_str().unwrap());
    let to = utc(live["to"].as_str().unwrap());
    let rounded = |now: DateTime<Utc>| {
        let floor = |t: DateTime<Utc>| t.duration_trunc(Age::hours(1)).unwrap();
        let ceil = if floor(now) == now {
            now
        } else {
            floor(now) + Age::hours(1)
        };
        (floor(now - Age::days(2)), ceil)
    };
    assert!(
        (from, to) == rounded(before) || (from, to) == rounded(after),
        "{from} .. {to} is not 2d before {before} or {after}, in whole hours"
    );
    let inside: Vec<&Check> = hours
        .iter()
        .filter(|(start, _)| *start >= from && *start < to)
        .flat_map(|(_, checks)| checks)
        .collect();
    let want = Expected::of(inside.iter().copied());
    assert!(want.checks >= 48 * 12, "{} checks", want.checks);
    assert_figures(live, &want);
    let (left_pct, left_min) = want.budget(95.0, 2.0 * 24.0 * 60.0);
    assert_close(number(live, "budget_left_pct"), left_pct, "budget_left_pct");
    assert_close(number(live, "budget_left_min"), left_min, "budget_left_min");
    // Down since 90 minutes before `before`, until the report's now, not until `to`.
    let downtime = number(live, "downtime_s");
    let most = (after - down_since).num_milliseconds() as f64 / 1e3;
    assert!(
        (90.0 * 60.0..=most).contains(&downtime),
        "downtime {downtime} s, want 5400 ..= {most}"
    );
    assert_eq!(live["state_changes"].as_i64(), Some(1));

    // The same hours by --from/--to, and by default (the longest SLO window, 2d).
    let explicit = ["--from", &rfc3339(from), "--to", &rfc3339(to)];
    let (exit, between) = db.json(&explicit).await;
    assert_eq!(exit, 0);
    let (exit, default) = db.json(&[]).await;
    assert_eq!(exit, 0);
    for (name, other) in [("--from/--to", &between), ("default", &default)] {
        let mut other = other["live"].clone();
        let mut live = live.clone();
        // Still down: the later run counted a little more of it.
        let later = other["downtime_s"].take().as_f64().unwrap();
        assert!(
            (downtime..downtime + 60.0).contains(&later),
            "{name}: {later}"
        );
        live["downtime_s"].take();
        if name == "default" && other["from"] != live["from"] {
            // An hour boundary passed between the runs.
            continue;
        }
        assert_eq!(other, live, "{name}");
    }
    // Only the shorter window selected: 1d.
    let (_, short) = db.json(&["--site", "short"]).await;
    let short = &short["short"];
    let (from, to) = (
        utc(short["from"].as_str().unwrap()),
        utc(short["to"].as_str().unwrap()),
    );
    assert!((to - from) >= Age::days(1) && (to - from) <= Age::days(1) + Age::hours(1));
    assert_eq!(short["checks"].as_i64(), Some(0));
    db.drop().await;
}
