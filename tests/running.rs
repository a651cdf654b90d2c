//! Running totals (migrations/0004_running.sql, src/store/running.rs) against the local
//! stack's PostgreSQL (`dev/stack up`): whatever happens to the hourly rollups — late rows,
//! rewrites, deletions, retention — a report read from the running totals equals the hourly
//! rows of its period added up one by one, and the running downtime of the state changes equals
//! a walk over every change.
//!
//! Made-up data from a seeded generator: several seeds, sites with gaps of hours, hours with
//! only maintenance, failures of several kinds, periods of every length and position.

mod stack;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};
use sitewatch::config::{Config, Site};
use sitewatch::insight::downtime::{self, Transition};
use sitewatch::insight::histogram::Histogram;
use sitewatch::insight::rollup::Summary;
use sitewatch::report::{self, Period};
use sitewatch::result::Outcome;
use sitewatch::store;
use stack::StackLock;
use tokio_postgres::Client;

/// A small deterministic generator (64-bit LCG, high bits).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const SITES: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
const HOURS: i64 = 24 * 40;

fn origin() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap()
}

fn hour(h: i64) -> DateTime<Utc> {
    origin() + Duration::hours(h)
}

fn config() -> Config {
    let text: String = SITES
        .iter()
        .map(|s| format!("site {{ name = \"{s}\", url = \"http://127.0.0.1:9/{s}\" }}\n"))
        .collect();
    sitewatch::config::load_str(
        std::path::Path::new("sites.lua"),
        &text,
        std::path::Path::new("scripts"),
    )
    .expect("valid sites.lua")
}

/// One made-up hourly rollup row.
fn made_up(rng: &mut Rng) -> Summary {
    let mut s = Summary::default();
    if rng.chance(10) {
        // Only maintenance: no checks, no timings.
        s.maintenance = 1 + rng.below(30) as i64;
        return s;
    }
    let checks = 1 + rng.below(60) as i64;
    s.checks = checks;
    s.down = rng.below(3).min(checks as u64) as i64;
    s.degraded = rng.below(2).min((checks - s.down) as u64) as i64;
    s.up = checks - s.down - s.degraded;
    s.maintenance = rng.below(2) as i64;
    for kind in ["timeout", "http", "connect"] {
        if s.down > 0 && rng.chance(50) {
            s.failures.insert(kind.to_owned(), 1 + rng.below(3) as i64);
        }
    }
    let mut total = Histogram::new();
    let mut ttfb = Histogram::new();
    for _ in 0..checks {
        let ms = 5.0 + rng.below(4_000) as f64 / 7.0;
        total.record(ms);
        ttfb.record(ms / 2.0);
        s.max_total_ms = s.max_total_ms.max(ms);
        s.phases.total.sum_ms += ms;
        s.phases.ttfb.sum_ms += ms / 2.0;
    }
    s.phases.total.count = checks;
    s.phases.ttfb.count = checks;
    s.phases.dns.sum_ms = checks as f64 * 1.25;
    s.phases.dns.count = checks;
    s.total_hist = total;
    s.ttfb_hist = ttfb;
    s
}

async fn write_hour(client: &Client, site: &str, h: i64, s: &Summary) {
    let p = &s.phases;
    client
        .execute(
            "INSERT INTO rollup_hourly (site, bucket, checks, up, degraded, down, maintenance, \
                 failures, dns_sum, dns_count, ttfb_sum, ttfb_count, total_sum, total_count, \
                 max_total_ms, total_hist, ttfb_hist) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             ON CONFLICT (site, bucket) DO UPDATE SET checks = excluded.checks, \
                 up = excluded.up, degraded = excluded.degraded, down = excluded.down, \
                 maintenance = excluded.maintenance, failures = excluded.failures, \
                 dns_sum = excluded.dns_sum, dns_count = excluded.dns_count, \
                 ttfb_sum = excluded.ttfb_sum, ttfb_count = excluded.ttfb_count, \
                 total_sum = excluded.total_sum, total_count = excluded.total_count, \
                 max_total_ms = excluded.max_total_ms, total_hist = excluded.total_hist, \
                 ttfb_hist = excluded.ttfb_hist",
            &[
                &site,
                &hour(h),
                &s.checks,
                &s.up,
                &s.degraded,
                &s.down,
                &s.maintenance,
                &serde_json::to_value(&s.failures).unwrap(),
                &p.dns.sum_ms,
                &p.dns.count,
                &p.ttfb.sum_ms,
                &p.ttfb.count,
                &p.total.sum_ms,
                &p.total.count,
                &(s.checks > 0).then_some(s.max_total_ms),
                &s.total_hist.as_slice().to_vec(),
                &s.ttfb_hist.as_slice().to_vec(),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("writing {site} hour {h}: {e:?}"));
}

/// The daily rollups as the consumer would have written them: the sum of each day's hours.
async fn daily_from_hourly(client: &Client) {
    client
        .batch_execute(
            "DELETE FROM rollup_daily; \
             INSERT INTO rollup_daily (site, bucket, checks, up, degraded, down, maintenance, \
                 failures, dns_sum, dns_count, ttfb_sum, ttfb_count, total_sum, total_count, \
                 max_total_ms, total_hist, ttfb_hist) \
             SELECT site, date_trunc('day', bucket AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', \
                    sum(checks), sum(up), sum(degraded), sum(down), sum(maintenance), \
                    sitewatch_jsonb_sum(failures), sum(dns_sum), sum(dns_count), sum(ttfb_sum), \
                    sum(ttfb_count), sum(total_sum), sum(total_count), max(max_total_ms), \
                    sitewatch_hist_sum(total_hist), sitewatch_hist_sum(ttfb_hist) \
               FROM rollup_hourly GROUP BY 1, 2",
        )
        .await
        .expect("daily rollups");
}

/// What a period must report: its hourly rows as stored now, merged one by one.
async fn expected(client: &Client, from: i64, to: i64) -> BTreeMap<String, Summary> {
    let rows = client
        .query(
            &format!(
                "SELECT {} FROM rollup_hourly WHERE bucket >= $1 AND bucket < $2",
                store::ROLLUP_COLUMNS
            ),
            &[&hour(from), &hour(to)],
        )
        .await
        .expect("hourly rows");
    let mut out: BTreeMap<String, Summary> = BTreeMap::new();
    for row in &rows {
        let rollup = store::rollup_from_row(row);
        out.entry(rollup.site).or_default().merge(&rollup.summary);
    }
    out
}

fn assert_same(got: &Summary, want: &Summary, what: &str) {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
    assert_eq!(
        (got.checks, got.up, got.degraded, got.down, got.maintenance),
        (
            want.checks,
            want.up,
            want.degraded,
            want.down,
            want.maintenance
        ),
        "{what}: counters"
    );
    assert_eq!(got.failures, want.failures, "{what}: failures");
    assert_eq!(got.total_hist, want.total_hist, "{what}: total histogram");
    assert_eq!(got.ttfb_hist, want.ttfb_hist, "{what}: ttfb histogram");
    let (g, w) = (&got.phases, &want.phases);
    for (name, a, b) in [
        ("dns", &g.dns, &w.dns),
        ("ttfb", &g.ttfb, &w.ttfb),
        ("total", &g.total, &w.total),
    ] {
        assert_eq!(a.count, b.count, "{what}: {name} count");
        assert!(
            close(a.sum_ms, b.sum_ms),
            "{what}: {name} sum {a:?} vs {b:?}"
        );
    }
    if want.checks > 0 {
        assert_eq!(got.max_total_ms, want.max_total_ms, "{what}: max");
    }
}

async fn check_periods(
    client: &Client,
    sites: &[&Site],
    rng: &mut Rng,
    periods: &[(i64, i64)],
    what: &str,
) {
    let now = hour(HOURS + 48);
    for &(from, to) in periods {
        let period = Period::new(hour(from), hour(to)).expect("period");
        let reports = report::report(client, sites, &period, now)
            .await
            .expect("report");
        // Split between two connections (what `sitewatch report` does): the same figures.
        let second = stack::client(&url_of(client).await).await;
        let split = report::report_on(&[client, &second], sites, &period, now)
            .await
            .expect("report on two connections");
        for (one, two) in reports.iter().zip(&split) {
            assert_eq!(one.site, two.site);
            assert_same(
                &two.summary,
                &one.summary,
                &format!("{what} split {}", one.site),
            );
            assert_eq!(one.downtime, two.downtime, "{what} split {}", one.site);
        }
        let want = expected(client, from, to).await;
        for r in &reports {
            let empty = Summary::default();
            let w = want.get(&r.site).unwrap_or(&empty);
            assert_same(&r.summary, w, &format!("{what} {} [{from}, {to})", r.site));
        }
    }
    let _ = rng;
}

/// The URL of the database `client` is connected to.
async fn url_of(client: &Client) -> String {
    let name: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    stack::with_database(&stack::get("SITEWATCH_DATABASE_URL"), &name, false)
}

/// Random whole-hour periods, from an hour to the whole range and beyond it.
fn periods(rng: &mut Rng, n: usize, lo: i64, hi: i64) -> Vec<(i64, i64)> {
    let mut out = vec![(lo, hi), (lo - 30, hi + 30)];
    for _ in 0..n {
        let from = lo + rng.below((hi - lo) as u64) as i64;
        let len = match rng.below(4) {
            0 => 1 + rng.below(6) as i64,
            1 => 1 + rng.below(48) as i64,
            _ => 1 + rng.below((hi - from) as u64 + 24) as i64,
        };
        out.push((from, from + len));
    }
    out
}

async fn extend_through(client: &mut Client, h: i64) -> store::running::Extended {
    store::running::extend(client, hour(h))
        .await
        .expect("extending the running totals")
}

#[tokio::test]
async fn reports_from_running_totals_equal_the_hourly_rows_through_late_rows_and_rewrites() {
    let _stack = StackLock::shared();
    let url = stack::fresh_database().await;
    let mut client = stack::client(&url).await;
    store::migrate(&mut client).await.expect("migrate");
    let config = config();
    let sites: Vec<&Site> = config.sites.iter().map(AsRef::as_ref).collect();
    for seed in [1u64, 7, 42] {
        client
            .batch_execute(
                "DELETE FROM rollup_hourly; DELETE FROM rollup_daily; \
                 DELETE FROM rollup_running; DELETE FROM rollup_running_sites",
            )
            .await
            .unwrap();
        let mut rng = Rng(seed);
        // Sites start at different hours and skip hours (delta only checks every few hours).
        for (i, site) in SITES.iter().enumerate() {
            let start = (i as i64) * 37;
            for h in start..HOURS {
                let skip = if i == 3 { h % 5 != 0 } else { rng.chance(8) };
                if !skip {
                    write_hour(&client, site, h, &made_up(&mut rng)).await;
                }
            }
        }
        let through = HOURS - 30;
        let done = extend_through(&mut client, through).await;
        assert_eq!(done.sites, SITES.len() as u64, "seed {seed}");
        // Dense: one running row per hour from a site's first to its last.
        let gaps: i64 = client
            .query_one(
                "SELECT count(*) FROM rollup_running_sites AS s \
                  WHERE (SELECT count(*) FROM rollup_running AS r WHERE r.site = s.site) \
                        <> extract(epoch FROM s.last - s.first)::bigint / 3600 + 1 \
                     OR s.through <> $1",
                &[&hour(through)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(gaps, 0, "seed {seed}: running rows are dense up to through");
        // No daily rows yet: a period the running totals cannot answer would miss whole days,
        // so these equalities show the running totals were read.
        let ps = periods(&mut rng, 25, 0, through);
        let ps: Vec<_> = ps
            .into_iter()
            .map(|(f, t)| (f.max(0).min(through), t))
            .filter(|(f, t)| f < t)
            .collect();
        check_periods(
            &client,
            &sites,
            &mut rng,
            &ps,
            &format!("seed {seed} fresh"),
        )
        .await;

        // Late rows, rewrites and deletions at and before `through`, and rows after it.
        for _ in 0..40 {
            let site = SITES[rng.below(SITES.len() as u64) as usize];
            let h = rng.below(HOURS as u64) as i64;
            match rng.below(4) {
                3 => {
                    // Moved by hand to the next hour, where the site has no row.
                    client
                        .execute(
                            "UPDATE rollup_hourly SET bucket = bucket + interval '1 hour' \
                              WHERE site = $1 AND bucket = $2 AND NOT EXISTS ( \
                                    SELECT FROM rollup_hourly \
                                     WHERE site = $1 AND bucket = $2 + interval '1 hour')",
                            &[&site, &hour(h)],
                        )
                        .await
                        .unwrap();
                }
                0 => {
                    client
                        .execute(
                            "DELETE FROM rollup_hourly WHERE site = $1 AND bucket = $2",
                            &[&site, &hour(h)],
                        )
                        .await
                        .unwrap();
                }
                _ => write_hour(&client, site, h, &made_up(&mut rng)).await,
            }
        }
        daily_from_hourly(&client).await;
        let ps = periods(&mut rng, 25, 0, HOURS);
        check_periods(
            &client,
            &sites,
            &mut rng,
            &ps,
            &format!("seed {seed} changed"),
        )
        .await;
        // And once more after summing again.
        extend_through(&mut client, HOURS - 2).await;
        let ps = periods(&mut rng, 25, 0, HOURS);
        check_periods(
            &client,
            &sites,
            &mut rng,
            &ps,
            &format!("seed {seed} re-extended"),
        )
        .await;
        let stale: i64 = client
            .query_one(
                "SELECT count(*) FROM rollup_running_sites WHERE through <> $1",
                &[&hour(HOURS - 2)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(stale, 0, "seed {seed}: every site extended to the new hour");
    }
    // A site whose last running row went missing (by hand) is cleared, then summed afresh.
    client
        .execute(
            "DELETE FROM rollup_running WHERE site = 'alpha' \
               AND bucket = (SELECT last FROM rollup_running_sites WHERE site = 'alpha')",
            &[],
        )
        .await
        .unwrap();
    // Something new for every site, so the next turn adds to alpha's last row.
    let mut rng = Rng(3);
    for site in SITES {
        write_hour(&client, site, HOURS - 1, &made_up(&mut rng)).await;
    }
    extend_through(&mut client, HOURS - 1).await;
    let alpha: i64 = client
        .query_one(
            "SELECT count(*) FROM rollup_running_sites WHERE site = 'alpha'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(alpha, 0, "alpha's broken running totals cleared");
    extend_through(&mut client, HOURS - 1).await;
    daily_from_hourly(&client).await;
    let ps = periods(&mut rng, 10, 0, HOURS);
    check_periods(&client, &sites, &mut rng, &ps, "alpha summed afresh").await;
    stack::drop_database(&url).await;
}

#[tokio::test]
async fn retention_keeps_what_the_running_totals_summed() {
    let _stack = StackLock::shared();
    let url = stack::fresh_database().await;
    let mut client = stack::client(&url).await;
    store::migrate(&mut client).await.expect("migrate");
    let config = config();
    let sites: Vec<&Site> = config.sites.iter().map(AsRef::as_ref).collect();
    let mut rng = Rng(99);
    let now = Utc::now();
    let now_hour = (now.timestamp() / 3600) * 3600;
    // 20 days up to the current hour, relative to now: prune works from the wall clock.
    let base = |h: i64| DateTime::<Utc>::from_timestamp(now_hour - (480 - h) * 3600, 0).unwrap();
    for site in SITES {
        for h in 0..480 {
            let s = made_up(&mut rng);
            let p = &s.phases;
            client
                .execute(
                    "INSERT INTO rollup_hourly (site, bucket, checks, up, degraded, down, \
                         maintenance, failures, total_sum, total_count, max_total_ms, total_hist) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    &[
                        &site,
                        &base(h),
                        &s.checks,
                        &s.up,
                        &s.degraded,
                        &s.down,
                        &s.maintenance,
                        &serde_json::to_value(&s.failures).unwrap(),
                        &p.total.sum_ms,
                        &p.total.count,
                        &(s.checks > 0).then_some(s.max_total_ms),
                        &s.total_hist.as_slice().to_vec(),
                    ],
                )
                .await
                .unwrap();
        }
    }
    daily_from_hourly(&client).await;
    store::running::extend(&mut client, base(478))
        .await
        .expect("extend");
    // What the last 7 days and 10 days held before retention.
    let mut before = Vec::new();
    for days in [7, 10] {
        let period = Period::new(base(480 - days * 24), base(480)).unwrap();
        let want = report::report(&client, &sites, &period, now).await.unwrap();
        before.push((period, want));
    }
    // Keep 8 days of hourly rollups.
    store::prune(
        &client,
        store::Retention {
            results: Duration::days(3650),
            hourly_rollups: Some(Duration::days(8)),
            daily_rollups: None,
        },
    )
    .await
    .expect("prune");
    let hourly_left: i64 = client
        .query_one(
            "SELECT count(*) FROM rollup_hourly WHERE bucket < $1",
            &[&(now - Duration::days(8))],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hourly_left, 0, "old hourly rows pruned");
    let kept: i64 = client
        .query_one("SELECT count(*) FROM rollup_running_sites", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, SITES.len() as i64, "running totals kept");
    // 7 days: inside the hourly retention, same figures as before.
    let (period, want) = &before[0];
    let got = report::report(&client, &sites, period, now).await.unwrap();
    for (g, w) in got.iter().zip(want) {
        assert_same(&g.summary, &w.summary, &format!("7 days, {}", g.site));
    }
    // 10 days reach before it: read from the daily rows (whole days) and what is left of the
    // hours, like before running totals existed — the old rollups are still counted.
    let (period, _) = &before[1];
    let got = report::report(&client, &sites, period, now).await.unwrap();
    for g in &got {
        assert!(
            g.summary.checks > 0,
            "{}: 10 days still has checks: {:?}",
            g.site,
            g.summary.checks
        );
    }
    // Extending again after retention adds to the kept totals.
    store::running::extend(&mut client, base(479))
        .await
        .expect("extend after prune");
    let got = report::report(&client, &sites, period_of(&before[0].0), now)
        .await
        .unwrap();
    for (g, w) in got.iter().zip(&before[0].1) {
        assert_same(
            &g.summary,
            &w.summary,
            &format!("7 days re-extended, {}", g.site),
        );
    }
    stack::drop_database(&url).await;
}

fn period_of(p: &Period) -> &Period {
    p
}

/// Writes one change; `None` from: the site's first result.
async fn write_change(
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
        .unwrap_or_else(|e| panic!("change {site} {at}: {e:?}"));
}

fn outcome(text: &str) -> Outcome {
    match text {
        "up" => Outcome::Up,
        "degraded" => Outcome::Degraded,
        _ => Outcome::Down,
    }
}

#[tokio::test]
async fn running_downtime_equals_a_walk_over_every_change() {
    let _stack = StackLock::shared();
    let url = stack::fresh_database().await;
    let mut client = stack::client(&url).await;
    store::migrate(&mut client).await.expect("migrate");
    let config = config();
    let sites: Vec<&Site> = config.sites.iter().map(AsRef::as_ref).collect();
    let mut rng = Rng(5);
    let minute = |m: i64| origin() + Duration::minutes(m);
    // Each site's history, then written in a shuffled order (late and out-of-order inserts).
    let mut writes = Vec::new();
    for site in SITES {
        let mut at = rng.below(600) as i64;
        let mut state = "up";
        writes.push((site, at, None, state));
        for _ in 0..60 {
            at += 1 + rng.below(900) as i64;
            let next = ["up", "degraded", "down"][rng.below(3) as usize];
            if next != state {
                writes.push((site, at, Some(state), next));
                state = next;
            }
        }
    }
    for i in (1..writes.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        writes.swap(i, j);
    }
    // Half one by one, half in a single statement (whose AFTER triggers all run at its end).
    let (one_by_one, together) = writes.split_at(writes.len() / 2);
    for (site, at, from, to) in one_by_one {
        write_change(&client, site, minute(*at), *from, to).await;
    }
    let sites_of: Vec<&str> = together.iter().map(|w| w.0).collect();
    let ats: Vec<DateTime<Utc>> = together.iter().map(|w| minute(w.1)).collect();
    let froms: Vec<Option<&str>> = together.iter().map(|w| w.2).collect();
    let tos: Vec<&str> = together.iter().map(|w| w.3).collect();
    client
        .execute(
            "INSERT INTO state_changes (site, at, result_id, from_outcome, to_outcome) \
             SELECT s, a, gen_random_uuid(), f, t \
               FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[]) AS u(s, a, f, t)",
            &[&sites_of, &ats, &froms, &tos],
        )
        .await
        .expect("changes in one statement");
    // Some changes deleted, some moved.
    client
        .batch_execute(
            "DELETE FROM state_changes WHERE id % 11 = 3; \
             UPDATE state_changes SET at = at + interval '7 minutes' WHERE id % 13 = 5",
        )
        .await
        .unwrap();
    let rows = client
        .query(
            "SELECT site, at, from_outcome, to_outcome FROM state_changes ORDER BY at, id",
            &[],
        )
        .await
        .unwrap();
    let mut all: BTreeMap<String, Vec<Transition>> = BTreeMap::new();
    for row in &rows {
        let at: DateTime<Utc> = row.get(1);
        let from: Option<&str> = row.get(2);
        all.entry(row.get(0)).or_default().push(Transition {
            at_us: at.timestamp_micros(),
            from: from.map(outcome),
            to: outcome(row.get(3)),
        });
    }
    let end = 60 * 900;
    for _ in 0..60 {
        let from = rng.below(end as u64) as i64 / 60;
        let to = from + 1 + rng.below(end as u64 / 60) as i64;
        let now = minute(from * 60 + rng.below(((to - from) * 60 + 600) as u64) as i64);
        let period = Period::new(
            hour(0) + Duration::hours(from),
            hour(0) + Duration::hours(to),
        )
        .expect("period");
        let reports = report::report(&client, &sites, &period, now).await.unwrap();
        for r in &reports {
            let want = downtime::walk(
                all.get(&r.site).map(Vec::as_slice).unwrap_or_default(),
                period.from().timestamp_micros(),
                period.to().timestamp_micros(),
                now.timestamp_micros(),
            );
            assert_eq!(
                r.downtime, want,
                "{} over [{from} h, {to} h) at {now}",
                r.site
            );
        }
    }
    stack::drop_database(&url).await;
}
