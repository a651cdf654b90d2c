//! Part 5, insight: what reading history costs once a fleet has history — the 90-day report of
//! the real binary and the one-site daily series of a status page — on a fresh database the size
//! of 1,000 sites checked every minute for 90 days (~130M results' worth of rollups).
//!
//! ```text
//! fresh database (sitewatch migrate)
//!   │ built server-side (INSERT … SELECT generate_series), untimed:
//!   │   outage episodes ──► state_changes, site_state, down/degraded/failures of the rollups
//!   │   latency histograms (insight::histogram, drawn in Rust) ──► rollup_hourly, rollup_daily
//!   │   check_results for the last 2 days (the rest is gone by retention)
//!   ▼ VACUUM ANALYZE, CHECKPOINT, a warm-up
//!   sitewatch report --since 90d --json  × 30   wall per process; report::report from its log
//!   one site's 90-day rollup_daily series × 1,000 (in-process, one connection)
//! ```
//!
//! The database is dropped at the end. Rollups are not derived from the raw rows here (that is
//! the consumer's job, measured by the ingest part): they are drawn to look like a real fleet's —
//! 1,440 checks a day, short outage and slow episodes (a site's flakiness set by its number),
//! failure kinds, phase sums, and histograms of 60 or 1,440 latencies from a log-normal
//! distribution per site. A timed-out check counts in `max_total_ms` and `failures` but its 10 s
//! are not added to the histograms.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use chrono::{DateTime, DurationRound, Utc};
use serde_json::{json, Value};
use sitewatch::insight::histogram::Histogram;
use sitewatch::settings::DatabaseSettings;
use tokio_postgres::Client;

use crate::common;
use crate::say;

pub struct Options {
    pub sites: u32,
    /// Days of rollups and state changes behind now; the report asks for as many.
    pub days: u32,
    /// Days of raw rows kept in check_results.
    pub raw_days: u32,
    /// Untimed runs of the report before the timed ones.
    pub warmup_runs: usize,
    pub report_runs: usize,
    pub site_queries: usize,
    /// Timed requests per path of `sitewatch serve`, after a tenth as many untimed.
    pub serve_requests: usize,
}

impl Options {
    pub fn full() -> Self {
        Options {
            sites: 1_000,
            days: 90,
            raw_days: 2,
            warmup_runs: 2,
            report_runs: 30,
            site_queries: 1_000,
            serve_requests: 200,
        }
    }

    pub fn quick() -> Self {
        Options {
            sites: 100,
            days: 7,
            raw_days: 1,
            warmup_runs: 1,
            report_runs: 5,
            site_queries: 100,
            serve_requests: 20,
        }
    }
}

/// Checks per hourly and per daily bucket: one a minute.
const CHECKS_PER_HOUR: u32 = 60;
const CHECKS_PER_DAY: u32 = 1_440;
/// Latency profiles: site `n` has profile `n % PROFILES`, median total time
/// `BASE_MEDIAN_MS · PROFILE_STEP^profile` (25 ms to about 180 ms).
const PROFILES: u32 = 16;
const BASE_MEDIAN_MS: f64 = 25.0;
const PROFILE_STEP: f64 = 1.14;
/// Histograms drawn per profile and grain; a (site, bucket) picks one by a hash, so neighbouring
/// rows differ like real ones do (array lengths vary with the slowest check of the bucket).
const VARIANTS: u32 = 32;
/// Share of checks that hit a slow path (a cold cache, a retry), [`SLOW_FACTOR`] times slower.
const SLOW_SHARE: f64 = 0.005;
const SLOW_FACTOR: f64 = 3.0;
/// Sites are named like `scale::sites_lua` names them.
const SITE_NAME_SQL: &str = "'bench-' || lpad(s::text, 5, '0')";
/// Queries of the in-process site series that warm its statement and pages, untimed.
const SITE_WARMUP: usize = 100;

/// splitmix64, seeded per histogram so every run builds the same templates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        (-2.0 * self.unit().ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

/// One drawn bucket: `checks` latencies of one profile, as a rollup row holds them.
struct Template {
    grain: i32,
    key: i32,
    checks: i64,
    total_hist: String,
    ttfb_hist: String,
    /// dns, connect, tls, ttfb, transfer, total.
    sums: [f64; 6],
    max_total_ms: f64,
}

fn array_literal(histogram: &Histogram) -> String {
    let items: Vec<String> = histogram.as_slice().iter().map(i64::to_string).collect();
    format!("{{{}}}", items.join(","))
}

/// `checks` latencies of `profile`: log-normal total time split into phases the way an HTTPS
/// check spends it (DNS 1–5 ms, connect 12 %, TLS 20 %, transfer up to 8 %, the rest waiting for
/// the first byte).
fn draw(grain: i32, profile: u32, variant: u32, checks: u32) -> Template {
    let mut rng =
        Rng(u64::from(grain as u32) << 40 | u64::from(profile) << 20 | u64::from(variant));
    let median = BASE_MEDIAN_MS * PROFILE_STEP.powi(profile as i32);
    let sigma = 0.30 + 0.05 * f64::from(profile % 4);
    let (mut total_hist, mut ttfb_hist) = (Histogram::new(), Histogram::new());
    let mut sums = [0.0; 6];
    let mut max_total_ms: f64 = 0.0;
    for _ in 0..checks {
        let mut total = median * (sigma * rng.normal()).exp();
        if rng.unit() < SLOW_SHARE {
            total *= SLOW_FACTOR;
        }
        let dns = 1.0 + 4.0 * rng.unit();
        let total = total.max(dns + 1.0);
        let connect = 0.12 * total;
        let tls = 0.20 * total;
        let transfer = 0.08 * total * rng.unit();
        let ttfb = (total - dns - connect - tls - transfer).max(0.1);
        for (sum, ms) in sums
            .iter_mut()
            .zip([dns, connect, tls, ttfb, transfer, total])
        {
            *sum += ms;
        }
        max_total_ms = max_total_ms.max(total);
        total_hist.record(total);
        ttfb_hist.record(ttfb);
    }
    Template {
        grain,
        key: (profile * VARIANTS + variant) as i32,
        checks: i64::from(checks),
        total_hist: array_literal(&total_hist),
        ttfb_hist: array_literal(&ttfb_hist),
        sums,
        max_total_ms,
    }
}

/// Every template: grain 0 hourly (60 checks), grain 1 daily (1,440).
fn templates() -> Vec<Template> {
    let mut out = Vec::new();
    for (grain, checks) in [(0, CHECKS_PER_HOUR), (1, CHECKS_PER_DAY)] {
        for profile in 0..PROFILES {
            for variant in 0..VARIANTS {
                out.push(draw(grain, profile, variant, checks));
            }
        }
    }
    out
}

async fn load_templates(client: &Client) -> Result<(f64, f64)> {
    let templates = templates();
    let col = |f: &dyn Fn(&Template) -> f64| templates.iter().map(f).collect::<Vec<f64>>();
    let grain: Vec<i32> = templates.iter().map(|t| t.grain).collect();
    let key: Vec<i32> = templates.iter().map(|t| t.key).collect();
    let checks: Vec<i64> = templates.iter().map(|t| t.checks).collect();
    let total_hist: Vec<&str> = templates.iter().map(|t| t.total_hist.as_str()).collect();
    let ttfb_hist: Vec<&str> = templates.iter().map(|t| t.ttfb_hist.as_str()).collect();
    let sums: Vec<Vec<f64>> = (0..6).map(|i| col(&|t| t.sums[i])).collect();
    let max_total = col(&|t| t.max_total_ms);
    client
        .batch_execute(
            "CREATE TEMPORARY TABLE bench_template (
                grain int, key int, checks bigint, total_hist bigint[], ttfb_hist bigint[],
                dns_sum float8, connect_sum float8, tls_sum float8, ttfb_sum float8,
                transfer_sum float8, total_sum float8, max_total_ms float8,
                PRIMARY KEY (grain, key))",
        )
        .await?;
    client
        .execute(
            "INSERT INTO bench_template SELECT g, k, c, th::bigint[], fh::bigint[], s1, s2, s3, \
               s4, s5, s6, mx \
             FROM unnest($1::int[], $2::int[], $3::int8[], $4::text[], $5::text[], \
               $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::float8[], \
               $11::float8[], $12::float8[]) AS u(g, k, c, th, fh, s1, s2, s3, s4, s5, s6, mx)",
            &[
                &grain,
                &key,
                &checks,
                &total_hist,
                &ttfb_hist,
                &sums[0],
                &sums[1],
                &sums[2],
                &sums[3],
                &sums[4],
                &sums[5],
                &max_total,
            ],
        )
        .await?;
    let lengths = |grain: i32| {
        let lens: Vec<f64> = templates
            .iter()
            .filter(|t| t.grain == grain)
            .map(|t| t.total_hist.split(',').count() as f64)
            .collect();
        lens.iter().sum::<f64>() / lens.len() as f64
    };
    Ok((lengths(0), lengths(1)))
}

/// The build, step by step; `$1` in the SQL stands for the build's "now".
fn build_steps(options: &Options) -> Vec<(&'static str, String)> {
    let (sites, days, raw_days) = (options.sites, options.days, options.raw_days);
    let name = SITE_NAME_SQL;
    let day0 = format!("date_trunc('day', $1::timestamptz - interval '{days} days')");
    // Outage and slow episodes: each site's day has four 6-hour slots, each holding at most one
    // episode, so episodes never overlap and a site is up between them. Site n is flaky in
    // proportion to 1 + n % 5: per slot 2.5–12.5 % down (1–10 minutes), 5–25 % degraded
    // (1–6 minutes). On average ~0.3 outages and ~0.6 slow spells a day per site.
    let episodes = format!(
        "CREATE TEMPORARY TABLE bench_episode AS
         WITH slot AS (
             SELECT s, d, q, 1 + s % 5 AS flaky,
                    hashint8(s::bigint * 1000003 + d * 4 + q)::bigint & 2147483647 AS r
               FROM generate_series(1, {sites}) AS s, generate_series(0, {days}) AS d,
                    generate_series(0, 3) AS q
         ), kinded AS (
             SELECT s, d, q, r,
                    CASE WHEN r % 1000 < 25 * flaky THEN 'down'
                         WHEN r % 1000 < 75 * flaky THEN 'degraded' END AS outcome
               FROM slot
         )
         SELECT s AS site_no, outcome, kind AS failure_kind,
                CASE kind WHEN 'http' THEN 'status: expected 200, got 503'
                          WHEN 'timeout' THEN 'no response within 10 s'
                          WHEN 'connect' THEN 'connection refused'
                          ELSE 'warn_time: 1650.0 ms > 1500 ms' END AS failure_message,
                start_at, start_at + len * interval '1 minute' AS end_at, len
           FROM kinded,
                LATERAL (SELECT CASE WHEN outcome = 'degraded' THEN 'assertion'
                                     WHEN (r / 7) % 20 < 12 THEN 'http'
                                     WHEN (r / 7) % 20 < 17 THEN 'timeout'
                                     ELSE 'connect' END AS kind,
                                {day0} + d * interval '1 day' + q * interval '6 hours'
                                  + (1 + (r / 1000) % 340) * interval '1 minute'
                                  + (s % 60) * interval '1 second' AS start_at,
                                CASE WHEN outcome = 'down' THEN 1 + (r / 340000) % 10
                                     ELSE 1 + (r / 340000) % 6 END AS len) AS e
          WHERE outcome IS NOT NULL AND start_at + len * interval '1 minute' <= $1;
         CREATE TEMPORARY TABLE bench_episode_minute AS
         SELECT site_no, outcome, failure_kind, failure_message,
                start_at + k * interval '1 minute' AS at
           FROM bench_episode, generate_series(0, len - 1) AS k;
         ALTER TABLE bench_episode_minute ADD PRIMARY KEY (site_no, at);"
    );
    let per_bucket = |grain: &str| {
        format!(
            "CREATE TEMPORARY TABLE bench_episode_{grain} AS
             SELECT site_no, bucket,
                    coalesce(sum(n) FILTER (WHERE outcome = 'down'), 0)::bigint AS down,
                    coalesce(sum(n) FILTER (WHERE outcome = 'degraded'), 0)::bigint AS degraded,
                    coalesce(sum(n) FILTER (WHERE failure_kind IN ('timeout', 'connect')), 0)
                      ::bigint AS no_response,
                    bool_or(failure_kind = 'timeout') AS timed_out,
                    jsonb_object_agg(failure_kind, n) AS failures
               FROM (SELECT site_no, date_trunc('{grain}', at) AS bucket, outcome, failure_kind,
                            count(*) AS n
                       FROM bench_episode_minute GROUP BY 1, 2, 3, 4) AS x
              GROUP BY 1, 2;
             ALTER TABLE bench_episode_{grain} ADD PRIMARY KEY (site_no, bucket);
             ANALYZE bench_episode_{grain};"
        )
    };
    // Rows in bucket order, sites within a bucket — the order the consumer creates them in, which
    // the BRIN index on bucket relies on. One generate_series over the grid and LATERAL lookups
    // keep that order (a join could reorder it).
    let rollups = |table: &str, grain: &str, template: i32, buckets: String| {
        format!(
            "INSERT INTO {table} (bucket, site, checks, up, degraded, down, maintenance, failures,
                 dns_sum, dns_count, connect_sum, connect_count, tls_sum, tls_count, ttfb_sum,
                 ttfb_count, transfer_sum, transfer_count, total_sum, total_count, max_total_ms,
                 total_hist, ttfb_hist)
             SELECT b, {name}, t.checks, t.checks - coalesce(e.down, 0) - coalesce(e.degraded, 0),
                    coalesce(e.degraded, 0), coalesce(e.down, 0), 0, coalesce(e.failures, '{{}}'),
                    t.dns_sum, t.checks,
                    t.connect_sum, t.checks - coalesce(e.no_response, 0),
                    t.tls_sum, t.checks - coalesce(e.no_response, 0),
                    t.ttfb_sum, t.checks - coalesce(e.no_response, 0),
                    t.transfer_sum, t.checks - coalesce(e.no_response, 0),
                    t.total_sum, t.checks,
                    CASE WHEN e.timed_out THEN 10000 ELSE t.max_total_ms END,
                    t.total_hist, t.ttfb_hist
               FROM ({buckets}) AS grid(i, b, s)
               CROSS JOIN LATERAL (
                     SELECT * FROM bench_template
                      WHERE grain = {template}
                        AND key = (s % {PROFILES}) * {VARIANTS}
                          + (hashint8(s::bigint * 7919 + extract(epoch FROM b)::bigint)
                             & {mask})) AS t
               LEFT JOIN LATERAL (
                     SELECT * FROM bench_episode_{grain} AS e
                      WHERE e.site_no = s AND e.bucket = b) AS e ON true",
            mask = VARIANTS - 1,
        )
    };
    let grid = |first: String, step: &str, count: String| {
        format!(
            "SELECT i, {first} + (i / {sites}) * interval '{step}', (i % {sites} + 1)::int \
               FROM generate_series(0::bigint, ({count}) * {sites} - 1) AS i"
        )
    };
    let hour0 = format!("date_trunc('hour', $1::timestamptz) - interval '{days} days'");
    let hours = grid(hour0, "1 hour", format!("{days} * 24 + 1"));
    let daily = grid(day0.clone(), "1 day", format!("{days} + 1"));
    // Every site's history starts with its first result (NULL → up); then each episode is a
    // change into it and one back to up, in time order like the consumer appends them.
    let changes = format!(
        "INSERT INTO state_changes (at, result_id, site, from_outcome, to_outcome, failure_kind,
             failure_message)
         SELECT at, gen_random_uuid(), {name}, from_outcome, to_outcome, failure_kind,
                failure_message
           FROM (SELECT {day0} + (s % 60) * interval '1 second' AS at, s, NULL AS from_outcome,
                        'up' AS to_outcome, NULL AS failure_kind, NULL AS failure_message
                   FROM generate_series(1, {sites}) AS s
                 UNION ALL
                 SELECT start_at, site_no, 'up', outcome, failure_kind, failure_message
                   FROM bench_episode
                 UNION ALL
                 SELECT end_at, site_no, outcome, 'up', NULL, NULL FROM bench_episode) AS c
          ORDER BY at"
    );
    let state = format!(
        "INSERT INTO site_state (since, last_scheduled_at, consecutive_failures,
             consecutive_successes, updated_at, last_result_id, site, outcome, last_failure_kind,
             last_failure_message)
         SELECT since, last_at, 0,
                greatest(floor(extract(epoch FROM last_at - since) / 60)::bigint + 1, 1), $1,
                gen_random_uuid(), {name}, 'up', failure_kind, failure_message
           FROM (SELECT s, coalesce(e.end_at, {day0} + (s % 60) * interval '1 second') AS since,
                        date_trunc('minute', $1::timestamptz) - interval '1 minute'
                          + (s % 60) * interval '1 second' AS last_at,
                        e.failure_kind, e.failure_message
                   FROM generate_series(1, {sites}) AS s
                   LEFT JOIN (SELECT DISTINCT ON (site_no) * FROM bench_episode
                               ORDER BY site_no, end_at DESC) AS e ON e.site_no = s) AS x"
    );
    // The last raw_days of results, one a minute per site, in time order; ids are UUID v7-like
    // (the millisecond timestamp in front) so the primary key appends as it does in production.
    let minutes = raw_days * 1_440;
    let raw = format!(
        "SELECT sitewatch_ensure_partitions($1::timestamptz - interval '{partition_days} days',
                                            $1::timestamptz + interval '1 day');
         INSERT INTO check_results (id, scheduled_at, started_at, total_ms, body_bytes,
             kafka_offset, dns_ms, connect_ms, tls_ms, ttfb_ms, transfer_ms, cert_not_after,
             attempts, kafka_partition, status, body_truncated, tls_insecure, site, url,
             final_url, outcome, failure_kind, failure_phase, failure_message, config_version,
             probe_host, assertions, metrics)
         SELECT encode(overlay(uuid_send(gen_random_uuid()) PLACING
                       substring(int8send((extract(epoch FROM at) * 1000)::bigint) FROM 3)
                       FROM 1 FOR 6), 'hex')::uuid,
                at, at + interval '2 milliseconds',
                CASE e.failure_kind WHEN 'timeout' THEN 10000 WHEN 'connect' THEN l.dns + 0.3
                     ELSE l.total END,
                1800 + s % 600, i, l.dns,
                CASE WHEN e.failure_kind IS DISTINCT FROM 'timeout' THEN 0.12 * l.total END,
                CASE WHEN e.failure_kind IS NULL OR e.failure_kind NOT IN ('timeout', 'connect')
                     THEN 0.20 * l.total END,
                CASE WHEN e.failure_kind IS NULL OR e.failure_kind NOT IN ('timeout', 'connect')
                     THEN 0.63 * l.total END,
                CASE WHEN e.failure_kind IS NULL OR e.failure_kind NOT IN ('timeout', 'connect')
                     THEN 0.05 * l.total END,
                $1::timestamptz + interval '60 days',
                CASE WHEN e.outcome = 'down' THEN 2 ELSE 1 END, (s % 6)::int,
                CASE WHEN e.failure_kind IS NULL OR e.failure_kind = 'assertion' THEN 200
                     WHEN e.failure_kind = 'http' THEN 503 END::smallint,
                false, false, {name},
                'https://' || {name} || '.example.com/healthz',
                'https://' || {name} || '.example.com/healthz',
                coalesce(e.outcome, 'up'), e.failure_kind, NULL, e.failure_message,
                '3f9c2a7be41d08c5', 'probe-eu-west-1a',
                CASE WHEN e.outcome = 'down' THEN '{assertions_down}' ELSE '{assertions_up}'
                END::jsonb,
                '{{}}'::jsonb
           FROM (SELECT i, (i % {sites} + 1)::int AS s,
                        date_trunc('minute', $1::timestamptz) - interval '{minutes} minutes'
                          + (i / {sites}) * interval '1 minute'
                          + (i % {sites} + 1) % 60 * interval '1 second' AS at
                   FROM generate_series(0::bigint, {minutes}::bigint * {sites} - 1) AS i) AS g
          CROSS JOIN LATERAL (
                SELECT 1 + 4 * random() AS dns,
                       {BASE_MEDIAN_MS} * power({PROFILE_STEP}, s % {PROFILES})
                         * exp(0.35 * (random() + random() + random() + random() - 2)
                               * sqrt(3)) AS total
                OFFSET 0) AS l
           LEFT JOIN LATERAL (
                SELECT m.outcome, m.failure_kind, m.failure_message FROM bench_episode_minute AS m
                 WHERE m.site_no = g.s AND m.at = g.at) AS e ON true",
        partition_days = raw_days + 1,
        assertions_up = ASSERTIONS_UP,
        assertions_down = ASSERTIONS_DOWN,
    );
    vec![
        ("episodes", episodes),
        ("episode buckets", per_bucket("hour") + &per_bucket("day")),
        ("rollup_hourly", rollups("rollup_hourly", "hour", 0, hours)),
        ("rollup_daily", rollups("rollup_daily", "day", 1, daily)),
        ("state_changes", changes),
        ("site_state", state),
        ("check_results", raw),
        (
            "drop scaffolding",
            "DROP TABLE bench_template, bench_episode, bench_episode_minute, \
             bench_episode_hour, bench_episode_day"
                .into(),
        ),
    ]
}

/// What a healthy and a failed check publish as `assertions` (about 600 bytes, like the ingest
/// part's results).
const ASSERTIONS_UP: &str = r#"[{"name":"status","ok":true,"level":"fail","expected":"200","actual":"200"},{"name":"body","ok":true,"level":"fail","expected":"/\"status\":\\s*\"UP\"/","actual":"matched"},{"name":"max_time","ok":true,"level":"fail","expected":"<= 5000 ms","actual":"182.4 ms"},{"name":"warn_time","ok":true,"level":"warn","expected":"<= 1500 ms","actual":"182.4 ms"},{"name":"cert_days","ok":true,"level":"fail","expected":">= 14 days","actual":"60 days"}]"#;
const ASSERTIONS_DOWN: &str = r#"[{"name":"status","ok":false,"level":"fail","expected":"200","actual":"503","reason":"status was 503"},{"name":"body","ok":false,"level":"fail","expected":"/\"status\":\\s*\"UP\"/","actual":"no match","reason":"body was no match"},{"name":"max_time","ok":true,"level":"fail","expected":"<= 5000 ms","actual":"182.4 ms"},{"name":"warn_time","ok":true,"level":"warn","expected":"<= 1500 ms","actual":"182.4 ms"},{"name":"cert_days","ok":true,"level":"fail","expected":">= 14 days","actual":"60 days"}]"#;

/// Builds the data set into `db`; returns the build's figures.
async fn build(db: &DatabaseSettings, options: &Options, now: DateTime<Utc>) -> Result<Value> {
    let client = sitewatch::store::connect(db).await?;
    client
        .batch_execute(
            "SET TIME ZONE 'UTC'; SET max_parallel_workers_per_gather = 0; SET jit = off; \
             SET work_mem = '64MB'; SET maintenance_work_mem = '256MB'",
        )
        .await?;
    let started = Instant::now();
    let (hourly_len, daily_len) = load_templates(&client).await?;
    let mut steps = serde_json::Map::new();
    // "Now" as a literal: CREATE TABLE AS takes no parameters, and every step must agree on it.
    let now_sql = format!(
        "'{}'::timestamptz",
        now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    for (step, sql) in build_steps(options) {
        let t0 = Instant::now();
        client
            .batch_execute(&sql.replace("$1", &now_sql))
            .await
            .with_context(|| format!("building {step}"))?;
        let seconds = t0.elapsed().as_secs_f64();
        say!("insight: built {step} in {seconds:.1} s");
        steps.insert(step.to_owned(), json!(common::round2(seconds)));
    }
    // The running totals, as the consumer keeps them: every hour that has ended.
    let t0 = Instant::now();
    let mut writer = sitewatch::store::connect(db).await?;
    let until = now
        .duration_trunc(chrono::Duration::hours(1))
        .unwrap_or(now)
        - chrono::Duration::hours(1);
    let extended = sitewatch::store::running::extend(&mut writer, until).await?;
    let seconds = t0.elapsed().as_secs_f64();
    say!(
        "insight: built rollup_running ({} rows) in {seconds:.1} s",
        extended.rows
    );
    steps.insert("rollup_running".into(), json!(common::round2(seconds)));
    let t0 = Instant::now();
    client
        .batch_execute(
            "VACUUM (ANALYZE) rollup_hourly, rollup_daily, rollup_running, \
             rollup_running_sites, state_changes, site_state, check_results",
        )
        .await
        .context("VACUUM ANALYZE")?;
    steps.insert(
        "vacuum analyze".into(),
        json!(common::round2(t0.elapsed().as_secs_f64())),
    );
    let build_s = started.elapsed().as_secs_f64();
    common::checkpoint();
    let tables = table_figures(&client).await?;
    Ok(json!({
        "seconds": common::round2(build_s),
        "steps_s": steps,
        "tables": tables,
        "mean_hist_entries": {
            "hourly_total_hist": common::round2(hourly_len),
            "daily_total_hist": common::round2(daily_len),
        },
    }))
}

/// Rows (exact, small tables; estimated after ANALYZE for the large ones), size and the
/// physical order of `bucket` (1.0: heap in bucket order, what the BRIN indexes need).
async fn table_figures(client: &Client) -> Result<Value> {
    let mut tables = serde_json::Map::new();
    for table in [
        "rollup_hourly",
        "rollup_daily",
        "state_changes",
        "site_state",
        "check_results",
    ] {
        let row = client
            .query_one(
                "WITH t AS (SELECT $1::text::regclass AS oid), \
                      parts AS (SELECT inhrelid AS oid FROM pg_inherits, t \
                                 WHERE inhparent = t.oid), \
                      heaps AS (SELECT oid FROM parts \
                                UNION ALL SELECT oid FROM t WHERE NOT EXISTS (SELECT FROM parts)) \
                 SELECT (SELECT count(*) FROM parts), \
                        (SELECT coalesce(sum(greatest(reltuples, 0)), 0)::float8 FROM pg_class \
                          WHERE oid IN (SELECT oid FROM heaps)), \
                        (SELECT coalesce(sum(pg_total_relation_size(oid)), 0)::float8 \
                           FROM heaps), \
                        (SELECT correlation FROM pg_stats \
                          WHERE schemaname = current_schema() AND tablename = $2 \
                            AND attname = 'bucket' AND NOT inherited)",
                &[&table, &table],
            )
            .await
            .with_context(|| format!("sizing {table}"))?;
        let partitions: i64 = row.get(0);
        let rows: f64 = row.get(1);
        let bytes: f64 = row.get(2);
        let correlation: Option<f32> = row.get(3);
        tables.insert(
            table.into(),
            json!({
                "rows": rows.round(),
                "mib": common::round2(bytes / 1024.0 / 1024.0),
                "partitions": (partitions > 0).then_some(partitions),
                "bucket_correlation": correlation.map(|c| common::round2(f64::from(c))),
            }),
        );
    }
    Ok(Value::Object(tables))
}

/// sites.lua for the report: every site of the data set, each with an SLO (three targets in
/// turn, a p99 bound), as an operator's file would have them. The URLs are on 127.0.0.1's
/// discard port: nothing here probes, and if something did it would stay on this machine.
fn sites_lua(sites: u32) -> String {
    format!(
        "-- generated by benches/pipeline insight (dev/bench)\n\
         local targets = {{ 99.9, 99.5, 99.0 }}\n\
         for i = 1, {sites} do\n\
         \x20 local name = string.format(\"bench-%05d\", i)\n\
         \x20 site {{ name = name, url = \"http://127.0.0.1:9/\" .. name, interval = \"1m\",\n\
         \x20        slo = {{ target = targets[i % 3 + 1], window = \"30d\", latency = {{ p99 = \"800ms\" }} }} }}\n\
         end\n"
    )
}

/// One run of the real `sitewatch report`.
struct ReportRun {
    wall_ms: f64,
    /// `report::report` as the process logged it ("report read", elapsed_ms).
    library_ms: Option<f64>,
    /// From process start to the library call, and from its end to the exit.
    before_ms: Option<f64>,
    after_ms: Option<f64>,
    rollup_rows: Option<u64>,
    lines: usize,
    checks: i64,
    breached: usize,
}

fn report_command(config: &Path, db: &DatabaseSettings, days: u32) -> Command {
    let mut command = Command::new(common::sitewatch_bin());
    command
        .args(["--log-format", "json", "report", "--config"])
        .arg(config)
        .args(["--since", &format!("{days}d"), "--json"])
        .env("SITEWATCH_DATABASE_URL", &db.url)
        .env("RUST_LOG", "sitewatch::report=debug");
    command
}

fn run_report(config: &Path, db: &DatabaseSettings, days: u32) -> Result<ReportRun> {
    let spawned_at = Utc::now();
    let start = Instant::now();
    let output = report_command(config, db, days)
        .output()
        .context("running sitewatch report")?;
    let wall_ms = start.elapsed().as_secs_f64() * 1e3;
    let exited_at = Utc::now();
    // 0: every SLO met, 1: some breached; anything else is a failure of the command.
    if !matches!(output.status.code(), Some(0 | 1)) {
        bail!(
            "sitewatch report failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (mut lines, mut checks, mut breached) = (0, 0, 0);
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let site: Value = serde_json::from_str(line).context("a report line is not JSON")?;
        lines += 1;
        checks += site["checks"].as_i64().unwrap_or(0);
        breached += usize::from(site["breached"].as_bool() == Some(true));
    }
    let (mut library_ms, mut read_at, mut rollup_rows) = (None, None, None);
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let fields = &event["fields"];
        match fields["message"].as_str() {
            Some("report read") => {
                library_ms = fields["elapsed_ms"].as_f64();
                read_at = event["timestamp"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc));
            }
            Some("rollups merged") => rollup_rows = fields["rows"].as_u64(),
            _ => {}
        }
    }
    let ms = |d: chrono::Duration| d.num_microseconds().unwrap_or(0) as f64 / 1e3;
    let before_ms = read_at
        .zip(library_ms)
        .map(|(at, lib)| ms(at - spawned_at) - lib);
    let after_ms = read_at.map(|at| ms(exited_at - at));
    Ok(ReportRun {
        wall_ms,
        library_ms,
        before_ms,
        after_ms,
        rollup_rows,
        lines,
        checks,
        breached,
    })
}

/// What `serve_pages` asks for: a name for the figures and the path, `{site}` replaced by a
/// site drawn at random per request.
const SERVE_PATHS: [(&str, &str); 12] = [
    ("overview", "/"),
    ("overview page 2", "/?page=2"),
    ("site page", "/site/{site}"),
    ("/api/v1/sites", "/api/v1/sites"),
    ("/api/v1/sites/{site}", "/api/v1/sites/{site}"),
    ("daily 90", "/api/v1/sites/{site}/daily?days=90"),
    ("hourly 48", "/api/v1/sites/{site}/hourly?hours=48"),
    ("results 50", "/api/v1/sites/{site}/results?limit=50"),
    ("incidents", "/api/v1/incidents"),
    ("status badge", "/badge/{site}/status.svg"),
    ("uptime badge", "/badge/{site}/uptime/30d.svg"),
    ("p99 badge", "/badge/{site}/p99/30d.svg"),
];

/// The real `sitewatch serve` on the bench database: every path of [`SERVE_PATHS`] asked
/// `serve_requests` times one after the other (after a tenth as many untimed), over a fresh
/// connection each (HTTP/1.0). Server-side times are the server's own "answered" debug events
/// (`elapsed_us`, from the request entering the router to the response leaving it); the
/// client's wall time per request is kept beside them. Every answer must be 200.
fn serve_pages(config: &Path, db: &DatabaseSettings, options: &Options) -> Result<Value> {
    let port = common::free_port()?;
    let log = common::out_dir().join("insight/serve.log");
    let mut command = Command::new(common::sitewatch_bin());
    command
        .args(["--log-format", "json", "serve", "--config"])
        .arg(config)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .env("SITEWATCH_DATABASE_URL", &db.url)
        .env("RUST_LOG", "sitewatch::serve=debug,info");
    let mut server = common::Proc::spawn("sitewatch serve", command, &log)?;
    common::wait_port(port, std::time::Duration::from_secs(30))?;
    let mut rng = Rng(0x5e_4e);
    let mut client_ms: Vec<(usize, f64)> = Vec::new();
    let mut overview_bytes = 0usize;
    let warmup = (options.serve_requests / 10).max(1);
    for (k, (_, template)) in SERVE_PATHS.iter().enumerate() {
        for n in 0..warmup + options.serve_requests {
            let site = format!("bench-{:05}", rng.next() % u64::from(options.sites) + 1);
            let path = template.replace("{site}", &site);
            let start = Instant::now();
            let (status, bytes) = http_get(port, &path)?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            ensure!(status == 200, "GET {path}: {status}");
            if k == 0 {
                overview_bytes = overview_bytes.max(bytes);
            }
            if n >= warmup {
                client_ms.push((k, ms));
            }
        }
    }
    server.check_alive(&log)?;
    server.stop(std::time::Duration::from_secs(10));
    // The server's events in order: the warm-up ones first, per path.
    let mut server_us: Vec<Vec<f64>> = vec![Vec::new(); SERVE_PATHS.len()];
    let mut answered = 0usize;
    for line in std::fs::read_to_string(&log)?.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if event["fields"]["message"] != "answered" {
            continue;
        }
        let k = answered / (warmup + options.serve_requests);
        let n = answered % (warmup + options.serve_requests);
        answered += 1;
        if let (Some(list), true) = (server_us.get_mut(k), n >= warmup) {
            list.push(event["fields"]["elapsed_us"].as_f64().unwrap_or(f64::NAN) / 1e3);
        }
    }
    ensure!(
        answered == SERVE_PATHS.len() * (warmup + options.serve_requests),
        "sitewatch serve logged {answered} answers, expected {} (see {})",
        SERVE_PATHS.len() * (warmup + options.serve_requests),
        log.display()
    );
    let mut paths = serde_json::Map::new();
    let mut worst = (String::new(), 0.0f64);
    let mut all_server: Vec<f64> = Vec::new();
    for (k, (name, template)) in SERVE_PATHS.iter().enumerate() {
        let mut client: Vec<f64> = client_ms
            .iter()
            .filter(|(i, _)| *i == k)
            .map(|(_, ms)| *ms)
            .collect();
        let mut server_ms = server_us[k].clone();
        all_server.extend(&server_ms);
        let server_summary = common::summary(&mut server_ms);
        let p99 = server_summary["p99"].as_f64().unwrap_or(f64::NAN);
        if p99 > worst.1 {
            worst = (name.to_string(), p99);
        }
        paths.insert(
            name.to_string(),
            json!({ "path": template, "server_ms": server_summary, "client_ms": common::summary(&mut client) }),
        );
    }
    Ok(json!({
        "command": "sitewatch serve --config sites.lua (RUST_LOG=sitewatch::serve=debug)",
        "requests_per_path": options.serve_requests,
        "warmup_per_path": warmup,
        "serve_p99_ms": worst.1,
        "worst_path": worst.0,
        "all_paths_server_ms": common::summary(&mut all_server),
        "overview_kb": common::round2(overview_bytes as f64 / 1024.0),
        "paths": paths,
    }))
}

/// GET `path` of 127.0.0.1:`port` over HTTP/1.0: the status code and the body's length.
fn http_get(port: u16, path: &str) -> Result<(u16, usize)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("GET {path}: no status line"))?;
    let body = text
        .find("\r\n\r\n")
        .map_or(0, |head| answer.len() - head - 4);
    Ok((status, body))
}

/// `sitewatch validate` of the same file: process start plus evaluating and validating
/// sites.lua, the part of the report's startup that is not PostgreSQL.
fn run_validate(config: &Path) -> Result<f64> {
    let start = Instant::now();
    let output = Command::new(common::sitewatch_bin())
        .arg("validate")
        .arg("--config")
        .arg(config)
        .output()
        .context("running sitewatch validate")?;
    ensure!(
        output.status.success(),
        "sitewatch validate failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

/// The stack's PostgreSQL as superuser over its socket (what `common::checkpoint` uses).
fn superuser_sql(database: &str, sql: &str) -> Result<()> {
    let socket =
        std::env::var("SITEWATCH_STACK_DIR").unwrap_or_else(|_| "/var/tmp/sitewatch-dev".into());
    let output = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(format!("{socket}/pgsock"))
        .args(["-p", "15432", "-U", "postgres", "-d", database, "-c", sql])
        .output()
        .context("running psql")?;
    ensure!(
        output.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Where the server's log goes (`dev/stack` starts PostgreSQL with its stderr there).
fn server_log() -> std::path::PathBuf {
    let dir =
        std::env::var("SITEWATCH_STACK_DIR").unwrap_or_else(|_| "/var/tmp/sitewatch-dev".into());
    Path::new(&dir).join("logs/postgres.log")
}

/// One more report with auto_explain on for the bench database: what the server spent on each
/// of the report's queries (execution including sending the rows, JIT, buffers). Diagnostic:
/// `None` when the server log cannot be read.
fn explain_report(
    config: &Path,
    db: &DatabaseSettings,
    db_name: &str,
    days: u32,
) -> Result<Option<Value>> {
    let log = server_log();
    let Ok(offset) = std::fs::metadata(&log).map(|m| m.len()) else {
        return Ok(None);
    };
    superuser_sql(
        "postgres",
        &format!(
            "ALTER DATABASE {db_name} SET session_preload_libraries = 'auto_explain'; \
             ALTER DATABASE {db_name} SET auto_explain.log_min_duration = 0; \
             ALTER DATABASE {db_name} SET auto_explain.log_analyze = on; \
             ALTER DATABASE {db_name} SET auto_explain.log_buffers = on; \
             ALTER DATABASE {db_name} SET auto_explain.log_format = json"
        ),
    )?;
    let run = run_report(config, db, days);
    superuser_sql("postgres", &format!("ALTER DATABASE {db_name} RESET ALL"))?;
    let run = run?;
    let text = {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(&log)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let mut queries = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.split("LOG:  duration: ").nth(1) else {
            continue;
        };
        if !rest.contains(" ms  plan:") {
            continue;
        }
        let duration_ms: Option<f64> = rest.split(' ').next().and_then(|d| d.parse().ok());
        let mut plan = String::new();
        while let Some(next) = lines.peek() {
            match next.strip_prefix('\t') {
                Some(body) => {
                    plan.push_str(body);
                    plan.push('\n');
                    lines.next();
                }
                None => break,
            }
        }
        let Ok(plan) = serde_json::from_str::<Value>(&plan) else {
            continue;
        };
        let text = plan["Query Text"].as_str().unwrap_or_default();
        // Only the report's reads (the bench database sees nothing else meanwhile).
        if !text.contains("rollup_") && !text.contains("state_changes") {
            continue;
        }
        let top = &plan["Plan"];
        let short: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut scans = Vec::new();
        scan_nodes(top, &mut scans);
        queries.push(json!({
            "reads": if text.contains("rollup_") { "rollups" } else { "state changes" },
            "query": short.chars().take(90).collect::<String>(),
            "duration_ms": duration_ms,
            // Inside the plan's nodes; the rest of the duration is producing and sending the
            // rows (and waiting for the client to take them).
            "plan_ms": top["Actual Total Time"],
            "scans": scans,
            "rows": top["Actual Rows"],
            "shared_hit_blocks": top["Shared Hit Blocks"],
            "shared_read_blocks": top["Shared Read Blocks"],
            "jit_functions": plan["JIT"]["Functions"],
            "jit_ms": plan["JIT"]["Timing"]["Total"],
        }));
    }
    Ok(Some(json!({
        "wall_ms_with_auto_explain": common::round2(run.wall_ms),
        "queries": queries,
    })))
}

/// What opening a connection costs the report (TLS with the stack's CA, startup, auth): the
/// median of a few in-process connects, after this process's first.
async fn connect_ms(db: &DatabaseSettings) -> Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let client = sitewatch::store::connect(db).await?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
        drop(client);
    }
    Ok(common::median(samples))
}

/// The plan nodes that read a table: which, how, rows and milliseconds.
fn scan_nodes(node: &Value, out: &mut Vec<Value>) {
    if let Some(relation) = node["Relation Name"].as_str() {
        out.push(json!({
            "relation": relation,
            "node": node["Node Type"],
            "rows": node["Actual Rows"],
            "ms": node["Actual Total Time"],
        }));
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        scan_nodes(child, out);
    }
}

/// The status page's query: one site's daily rollups over the period, decoded, over one
/// connection, for random sites.
async fn site_series(db: &DatabaseSettings, options: &Options) -> Result<(Value, f64)> {
    let client = sitewatch::store::connect(db).await?;
    let sql = format!(
        "SELECT {} FROM rollup_daily WHERE site = $1 AND bucket >= now() - interval '{} days' \
         ORDER BY bucket",
        sitewatch::store::ROLLUP_COLUMNS,
        options.days
    );
    let statement = client.prepare(&sql).await?;
    let mut rng = Rng(0x51_7e);
    let mut samples = Vec::with_capacity(options.site_queries);
    let mut rows_total = 0usize;
    for k in 0..SITE_WARMUP + options.site_queries {
        let site = format!("bench-{:05}", rng.next() % u64::from(options.sites) + 1);
        let start = Instant::now();
        let rows = client.query(&statement, &[&site]).await?;
        let series: Vec<_> = rows.iter().map(sitewatch::store::rollup_from_row).collect();
        let ms = start.elapsed().as_secs_f64() * 1e3;
        ensure!(
            series.len() as u32 >= options.days,
            "{site}: {} daily rows, expected {}",
            series.len(),
            options.days
        );
        if k >= SITE_WARMUP {
            samples.push(ms);
            rows_total += series.len();
        }
    }
    let mean_rows = rows_total as f64 / samples.len().max(1) as f64;
    Ok((common::summary(&mut samples), mean_rows))
}

pub async fn run(options: &Options) -> Result<Value> {
    let (_, stack) = common::load_stack_env()?;
    let db_name = format!("sitewatch_bench_insight_{}", common::run_tag());
    let outcome = measure(options, &stack, &db_name).await;
    // SITEWATCH_BENCH_KEEP=1 keeps the database for looking at plans by hand.
    if std::env::var_os("SITEWATCH_BENCH_KEEP").is_some() {
        say!("insight: kept database {db_name} (SITEWATCH_BENCH_KEEP)");
    } else {
        common::drop_database(&stack, &db_name).await;
    }
    outcome
}

async fn measure(options: &Options, stack: &DatabaseSettings, db_name: &str) -> Result<Value> {
    let db = common::fresh_database(stack, db_name).await?;
    let now = Utc::now();
    say!(
        "insight: building {} sites × {} days of rollups, state changes and {} days of raw rows \
         in {db_name}",
        options.sites,
        options.days,
        options.raw_days
    );
    let built = build(&db, options, now).await?;
    say!(
        "insight: built in {} s: {}",
        built["seconds"],
        built["tables"]
    );

    let dir = common::out_dir().join("insight");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("sites.lua");
    std::fs::write(&config, sites_lua(options.sites))?;

    // The real binary, warm cache: untimed runs first, then the timed ones.
    let runs = tokio::task::block_in_place(|| -> Result<Vec<ReportRun>> {
        for _ in 0..options.warmup_runs {
            run_report(&config, &db, options.days)?;
        }
        (0..options.report_runs)
            .map(|_| run_report(&config, &db, options.days))
            .collect()
    })?;
    let first = &runs[0];
    ensure!(
        first.lines == options.sites as usize && first.checks > 0,
        "sitewatch report printed {} sites with {} checks, expected {} sites",
        first.lines,
        first.checks,
        options.sites
    );
    let mut wall: Vec<f64> = runs.iter().map(|r| r.wall_ms).collect();
    let mut library: Vec<f64> = runs.iter().filter_map(|r| r.library_ms).collect();
    let before: Vec<f64> = runs.iter().filter_map(|r| r.before_ms).collect();
    let after: Vec<f64> = runs.iter().filter_map(|r| r.after_ms).collect();
    let wall_ms = common::summary(&mut wall);
    let library_ms = (!library.is_empty()).then(|| common::summary(&mut library));
    say!(
        "insight: sitewatch report --since {}d: wall p50 {} ms, p99 {} ms; report::report p50 {} ms, p99 {} ms",
        options.days,
        wall_ms["p50"],
        wall_ms["p99"],
        library_ms.as_ref().map_or(Value::Null, |s| s["p50"].clone()),
        library_ms.as_ref().map_or(Value::Null, |s| s["p99"].clone()),
    );
    let validate_ms = tokio::task::block_in_place(|| -> Result<f64> {
        let runs: Vec<f64> = (0..5)
            .map(|_| run_validate(&config))
            .collect::<Result<_>>()?;
        Ok(common::median(runs))
    })?;
    let explain =
        tokio::task::block_in_place(|| explain_report(&config, &db, db_name, options.days))
            .unwrap_or_else(|error| {
                eprintln!("[bench] insight: auto_explain diagnostic skipped: {error:#}");
                None
            });

    let serve = tokio::task::block_in_place(|| serve_pages(&config, &db, options))?;
    say!(
        "insight: sitewatch serve, {} requests per path: server-side p99 {} ms (worst path {}), overview {} KB",
        options.serve_requests,
        serve["serve_p99_ms"],
        serve["worst_path"],
        serve["overview_kb"]
    );
    let connect_ms = connect_ms(&db).await?;
    let (site_ms, site_rows) = site_series(&db, options).await?;
    say!(
        "insight: one site's {}-day daily series: p50 {} ms, p99 {} ms ({site_rows:.0} rows)",
        options.days,
        site_ms["p50"],
        site_ms["p99"]
    );
    Ok(json!({
        "sites": options.sites,
        "days": options.days,
        "raw_days": options.raw_days,
        "build": built,
        "report": {
            "command": format!("sitewatch report --since {}d --json --config sites.lua ({} sites, each with an SLO)", options.days, options.sites),
            "runs": runs.len(),
            "warmup_runs": options.warmup_runs,
            "wall_ms": wall_ms,
            "library_ms": library_ms,
            "library_source": "report::report inside the binary: its debug event \"report read\" (elapsed_ms), RUST_LOG=sitewatch::report=debug",
            "before_library_ms_p50": common::round2(common::median(before)),
            "after_library_ms_p50": common::round2(common::median(after)),
            "validate_config_ms_p50": common::round2(validate_ms),
            "connect_ms_p50_in_process": common::round2(connect_ms),
            "rollup_rows": first.rollup_rows,
            "sites_printed": first.lines,
            "checks": first.checks,
            "breached_sites": first.breached,
            "server": explain,
        },
        "serve": serve,
        "site_series": {
            "query": format!("SELECT ROLLUP_COLUMNS FROM rollup_daily WHERE site = $1 AND bucket >= now() - interval '{} days' ORDER BY bucket", options.days),
            "queries": options.site_queries,
            "rows_per_query": common::round2(site_rows),
            "ms": site_ms,
        },
    }))
}
