//! Checks that the insight tables (rollups, site state, state changes) say what the raw rows
//! say, recomputed here independently with SQL over `check_results`.
#![allow(dead_code)] // each test file uses a subset

use std::collections::BTreeMap;

use sitewatch::insight::histogram::{bucket_of, Histogram};
use sitewatch::store::{rollup_from_row, ROLLUP_COLUMNS};
use tokio_postgres::Client;

/// One rollup row, keyed by (site, bucket in µs).
pub type Rollups = BTreeMap<(String, i64), sitewatch::insight::rollup::Rollup>;

pub async fn rollups(client: &Client, table: &str) -> Rollups {
    client
        .query(&format!("SELECT {ROLLUP_COLUMNS} FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let rollup = rollup_from_row(row);
            ((rollup.site.clone(), rollup.bucket_start_us), rollup)
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Every rollup of `table` (`hour` or `day` grain) equals the aggregate of the raw rows:
/// counts exactly, sums to float rounding, histogram totals exactly and p50/p99 within one
/// bucket of the exact percentile of the raw values.
pub async fn assert_rollups_match_raw(client: &Client, table: &str, grain: &str) {
    let stored = rollups(client, table).await;
    let raw = client
        .query(
            &format!(
                "SELECT site, (extract(epoch FROM date_trunc('{grain}', scheduled_at AT TIME ZONE 'UTC') \
                   AT TIME ZONE 'UTC') * 1000000)::bigint, \
                   count(*) FILTER (WHERE maintenance IS NULL), \
                   count(*) FILTER (WHERE maintenance IS NULL AND outcome = 'up'), \
                   count(*) FILTER (WHERE maintenance IS NULL AND outcome = 'degraded'), \
                   count(*) FILTER (WHERE maintenance IS NULL AND outcome = 'down'), \
                   count(*) FILTER (WHERE maintenance IS NOT NULL), \
                   coalesce(sum(total_ms) FILTER (WHERE maintenance IS NULL), 0), \
                   coalesce(sum(ttfb_ms) FILTER (WHERE maintenance IS NULL), 0), \
                   count(ttfb_ms) FILTER (WHERE maintenance IS NULL), \
                   coalesce(max(total_ms) FILTER (WHERE maintenance IS NULL), 0), \
                   coalesce(array_agg(total_ms) FILTER (WHERE maintenance IS NULL), '{{}}') \
                 FROM check_results GROUP BY 1, 2"
            ),
            &[],
        )
        .await
        .unwrap();
    let mut failures: BTreeMap<(String, i64), BTreeMap<String, i64>> = BTreeMap::new();
    for row in client
        .query(
            &format!(
                "SELECT site, (extract(epoch FROM date_trunc('{grain}', scheduled_at AT TIME ZONE 'UTC') \
                   AT TIME ZONE 'UTC') * 1000000)::bigint, failure_kind, count(*) \
                 FROM check_results WHERE maintenance IS NULL AND failure_kind IS NOT NULL \
                 GROUP BY 1, 2, 3"
            ),
            &[],
        )
        .await
        .unwrap()
    {
        failures
            .entry((row.get(0), row.get(1)))
            .or_default()
            .insert(row.get(2), row.get(3));
    }
    assert_eq!(
        raw.len(),
        stored.len(),
        "{table}: one rollup per (site, {grain})"
    );
    for row in &raw {
        let key: (String, i64) = (row.get(0), row.get(1));
        let rollup = stored
            .get(&key)
            .unwrap_or_else(|| panic!("{table}: no rollup for {key:?}"));
        let s = &rollup.summary;
        let counts = [s.checks, s.up, s.degraded, s.down, s.maintenance];
        let want: Vec<i64> = (2..7).map(|i| row.get(i)).collect();
        assert_eq!(
            counts.to_vec(),
            want,
            "{table} {key:?}: checks, up, degraded, down, maintenance"
        );
        assert!(
            close(s.phases.total.sum_ms, row.get(7)),
            "{table} {key:?}: total sum"
        );
        assert!(
            close(s.phases.ttfb.sum_ms, row.get(8)),
            "{table} {key:?}: ttfb sum"
        );
        assert_eq!(
            s.phases.ttfb.count,
            row.get::<_, i64>(9),
            "{table} {key:?}: ttfb count"
        );
        assert!(close(s.max_total_ms, row.get(10)), "{table} {key:?}: max");
        let mut totals: Vec<f64> = row.get(11);
        assert_eq!(
            s.total_hist.total(),
            totals.len() as i64,
            "{table} {key:?}: histogram total"
        );
        assert_quantiles(&s.total_hist, &mut totals, &format!("{table} {key:?}"));
        let want = failures.remove(&key).unwrap_or_default();
        assert_eq!(s.failures, want, "{table} {key:?}: failures");
    }
}

/// p50, p95 and p99 of `hist` are in the same bucket as the exact percentile of `values`
/// (nearest rank), or a neighbouring one.
pub fn assert_quantiles(hist: &Histogram, values: &mut [f64], what: &str) {
    if values.is_empty() {
        assert_eq!(hist.quantile(0.5), None, "{what}");
        return;
    }
    values.sort_by(f64::total_cmp);
    for q in [0.5, 0.95, 0.99] {
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        let exact = values[rank - 1];
        let got = hist.quantile(q).unwrap();
        let (a, b) = (bucket_of(exact) as i64, bucket_of(got) as i64);
        assert!((a - b).abs() <= 1, "{what}: p{q} = {got}, exact {exact}");
    }
}

/// `site_state` holds the latest result of every site, and `state_changes` every change of
/// outcome along each site's results in time order.
pub async fn assert_states_match_raw(client: &Client) {
    let rows = client
        .query(
            "SELECT site, id, outcome, scheduled_at FROM check_results ORDER BY site, scheduled_at",
            &[],
        )
        .await
        .unwrap();
    let mut want_changes = 0i64;
    let mut last: BTreeMap<String, (uuid::Uuid, String, chrono::DateTime<chrono::Utc>)> =
        BTreeMap::new();
    let mut since: BTreeMap<String, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
    for row in &rows {
        let site: String = row.get(0);
        let outcome: String = row.get(2);
        let at = row.get(3);
        let changed = last
            .get(&site)
            .is_none_or(|(_, previous, _)| *previous != outcome);
        if changed {
            want_changes += 1;
            since.insert(site.clone(), at);
        }
        last.insert(site, (row.get(1), outcome, at));
    }
    let changes: i64 = client
        .query_one("SELECT count(*) FROM state_changes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(changes, want_changes, "state changes");
    let states = client
        .query(
            "SELECT site, last_result_id, outcome, since FROM site_state",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(states.len(), last.len(), "one state per site");
    for state in &states {
        let site: String = state.get(0);
        let (id, outcome, _) = &last[&site];
        assert_eq!(state.get::<_, uuid::Uuid>(1), *id, "{site}: last result");
        assert_eq!(state.get::<_, String>(2), *outcome, "{site}: outcome");
        assert_eq!(
            state.get::<_, chrono::DateTime<chrono::Utc>>(3),
            since[&site],
            "{site}: since"
        );
    }
}

/// Both rollup tables and the states match the raw rows.
pub async fn assert_insight_matches_raw(client: &Client) {
    assert_rollups_match_raw(client, "rollup_hourly", "hour").await;
    assert_rollups_match_raw(client, "rollup_daily", "day").await;
    assert_states_match_raw(client).await;
}

/// Two snapshots of a rollup table are the same: counts and histograms exactly, sums to float
/// rounding (they may have been added up in another order).
pub fn assert_same_rollups(a: &Rollups, b: &Rollups) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same buckets"
    );
    for (key, x) in a {
        let (x, y) = (&x.summary, &b[key].summary);
        let counts = |s: &sitewatch::insight::rollup::Summary| {
            (
                s.checks,
                s.up,
                s.degraded,
                s.down,
                s.maintenance,
                s.failures.clone(),
            )
        };
        assert_eq!(counts(x), counts(y), "{key:?}");
        assert_eq!(x.total_hist, y.total_hist, "{key:?}: total histogram");
        assert_eq!(x.ttfb_hist, y.ttfb_hist, "{key:?}: ttfb histogram");
        assert!(
            close(x.phases.total.sum_ms, y.phases.total.sum_ms),
            "{key:?}: total sum"
        );
        assert_eq!(x.phases.dns.count, y.phases.dns.count, "{key:?}");
        assert!(close(x.max_total_ms, y.max_total_ms), "{key:?}: max");
    }
}
