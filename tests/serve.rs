//! `sitewatch serve` against the local stack's PostgreSQL (`dev/stack up`): a fresh database is
//! filled by the real write path (`store::write_batch`, which maintains the rollups, site state
//! and state changes) with eight days of checks of a few sites, plus incidents; then the router
//! is called directly (`tower::ServiceExt::oneshot`) and over a real socket, and every figure it
//! answers is compared with the same figure computed here with SQL over `check_results`.
//! Headless Chromium loads the pages at desktop and phone width; screenshots go to
//! `target/screenshots/`.

mod stack;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use chrono::{DateTime, Duration as Age, DurationRound, TimeZone, Utc};
use serde_json::Value;
use sitewatch::insight::histogram::bucket_of;
use sitewatch::result::{
    AssertionResult, CheckResult, Failure, FailureKind, Level, Outcome, Timings, SCHEMA_VERSION,
};
use sitewatch::serve::{self, svg, Db, ServeState};
use sitewatch::store::{self, CheckRow, OffsetAdvance, PendingRow, WriteBatch};
use stack::StackLock;
use tokio_postgres::Client;
use tower::ServiceExt;
use uuid::Uuid;

const SECRET: &str = "hunter2";

/// sites.lua: alpha (a secret in its URL's query string; userinfo is refused by the
/// configuration, but failure messages may still quote URLs with it), beta (an SLO), gamma (no
/// data, in maintenance now), hidden (`status_page = false`).
fn sites_lua() -> String {
    format!(
        r#"
site {{ name = "alpha", url = "https://alpha.example/health?token={SECRET}", slo = {{ target = 90, window = "7d", latency = {{ p99 = "300ms" }} }} }}
site {{ name = "beta", url = "https://beta.example/", slo = {{ target = 99, window = "7d", latency = {{ p99 = "800ms" }} }} }}
site {{ name = "gamma", url = "http://gamma.example/" }}
site {{ name = "hidden", url = "https://hidden.example/", status_page = false }}
maintenance {{ name = "gamma-move", sites = {{ "gamma" }}, every = "day", start = "00:00", duration = "1d" }}
"#
    )
}

/// A deterministic spread of outcomes and timings.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn result(site: &str, at: DateTime<Utc>, rng: &mut Rng) -> CheckResult {
    let r = rng.next();
    let outcome = match (site, r) {
        // beta has an outage hour every other day, and a few degraded checks.
        ("beta", _) if at.timestamp() / 3_600 % 48 == 5 => Outcome::Down,
        (_, r) if r < 0.02 => Outcome::Down,
        (_, r) if r < 0.05 => Outcome::Degraded,
        _ => Outcome::Up,
    };
    let total = 20.0 + 400.0 * rng.next().powi(3);
    let ttfb = total * 0.5;
    let failure = (outcome == Outcome::Down).then(|| Failure {
        kind: FailureKind::Assertion,
        phase: None,
        // A probe's message names the URL it fetched: alpha's has a password and a token.
        message: match site {
            "alpha" => {
                format!("GET https://ops:{SECRET}@alpha.example/health?token={SECRET}: body")
            }
            _ => format!("GET https://{site}.example/: body"),
        },
    });
    let assertions = vec![AssertionResult {
        name: "body".into(),
        ok: outcome != Outcome::Down,
        level: Level::Fail,
        expected: "/ok/".into(),
        actual: "no match".into(),
        reason: (outcome == Outcome::Down).then(|| "body did not match".into()),
    }];
    CheckResult {
        schema: SCHEMA_VERSION,
        id: Uuid::now_v7(),
        site: site.into(),
        url: format!("https://{site}.example/"),
        final_url: None,
        scheduled_at: at,
        started_at: at,
        outcome,
        status: Some(if outcome == Outcome::Down { 503 } else { 200 }),
        timings: Timings {
            dns_ms: Some(1.5),
            connect_ms: Some(3.0),
            tls_ms: Some(8.0),
            ttfb_ms: Some(ttfb),
            transfer_ms: Some((total - ttfb - 12.5).max(0.0)),
            total_ms: total,
        },
        failure,
        assertions,
        metrics: BTreeMap::new(),
        body_bytes: 100,
        body_truncated: false,
        cert_not_after: Some(Utc.with_ymd_and_hms(2031, 1, 2, 3, 4, 5).unwrap()),
        tls_insecure: false,
        config_version: "test".into(),
        attempts: 1,
        probe_host: "test".into(),
        // alpha's checks in one hour two days ago ran in a maintenance window.
        maintenance: (site == "alpha" && at.timestamp() / 3_600 % 24 == 3 && r < 0.5)
            .then(|| "db".into()),
    }
}

/// A fresh database with eight days of results every 10 minutes for alpha, beta and hidden,
/// written in batches through the consumer's write path; incidents inserted as the alerter would.
async fn fixture(now: DateTime<Utc>) -> (String, Client, ServeState, tempfile::TempDir) {
    let url = stack::fresh_database().await;
    let mut client = store::connect(&stack::database(&url)).await.unwrap();
    store::migrate(&mut client).await.unwrap();
    let mut rng = Rng(7);
    let start = (now - Age::days(8))
        .duration_trunc(Age::minutes(10))
        .unwrap();
    let mut results = Vec::new();
    let mut at = start;
    while at <= now {
        for site in ["alpha", "beta", "hidden"] {
            results.push(result(site, at, &mut rng));
        }
        at += Age::minutes(10);
    }
    let mut next = None;
    for (n, chunk) in results.chunks(700).enumerate() {
        let base = (n * 700) as i64;
        let rows = chunk
            .iter()
            .enumerate()
            .map(|(i, r)| PendingRow {
                row: CheckRow::from_result(r.clone(), 0, base + i as i64).unwrap(),
                key: Some(r.site.clone().into_bytes()),
                payload: serde_json::to_vec(r).unwrap(),
            })
            .collect();
        let end = base + chunk.len() as i64;
        let batch = WriteBatch {
            rows,
            dead_letters: vec![],
            offsets: vec![OffsetAdvance {
                partition: 0,
                expected: next,
                next: end,
            }],
        };
        store::write_batch(&mut client, "g", "t", &batch)
            .await
            .unwrap();
        next = Some(end);
    }
    // Incidents: beta, one resolved three days ago and one open; alpha, one resolved a week
    // ago; hidden, one open.
    for (site, started, resolved) in [
        ("beta", now - Age::hours(75), Some(now - Age::hours(74))),
        ("beta", now - Age::minutes(30), None),
        ("alpha", now - Age::hours(170), Some(now - Age::hours(169))),
        ("hidden", now - Age::hours(2), None),
    ] {
        client
            .execute(
                "INSERT INTO incidents (id, started_at, resolved_at, failed_checks, site, url, \
                   severity, cause_kind, cause_message) \
                 VALUES ($1, $2, $3, 4, $4, 'x', 'down', 'assertion', $5)",
                &[
                    &Uuid::now_v7(),
                    &started,
                    &resolved,
                    &site,
                    &format!("GET https://ops:{SECRET}@{site}.example/health?token={SECRET}: 503"),
                ],
            )
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sites.lua");
    std::fs::write(&path, sites_lua()).unwrap();
    let config = sitewatch::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut state = ServeState::new(config, Db::new(stack::database(&url)));
    state.clock = Arc::new(move || now);
    (url, client, state, dir)
}

async fn get(state: &ServeState, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = serve::router(state.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 10 << 20).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

async fn get_json(state: &ServeState, uri: &str) -> Value {
    let (status, headers, body) = get(state, uri).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json", "{uri}");
    assert!(!body.contains(SECRET), "{uri} shows a secret: {body}");
    serde_json::from_str(&body).unwrap()
}

/// (checks, up, degraded, down, maintenance) of `site` in `[from, to)`, from raw rows.
async fn counts(c: &Client, site: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> [i64; 5] {
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE maintenance IS NULL), \
               count(*) FILTER (WHERE maintenance IS NULL AND outcome = 'up'), \
               count(*) FILTER (WHERE maintenance IS NULL AND outcome = 'degraded'), \
               count(*) FILTER (WHERE maintenance IS NULL AND outcome = 'down'), \
               count(*) FILTER (WHERE maintenance IS NOT NULL) \
             FROM check_results WHERE site = $1 AND scheduled_at >= $2 AND scheduled_at < $3",
            &[&site, &from, &to],
        )
        .await
        .unwrap();
    [0, 1, 2, 3, 4].map(|i| row.get(i))
}

fn uptime(c: [i64; 5]) -> Option<f64> {
    (c[0] > 0).then(|| (c[1] + c[2]) as f64 / c[0] as f64 * 100.0)
}

fn close(got: &Value, want: Option<f64>, what: &str) {
    match want {
        None => assert!(got.is_null(), "{what}: got {got}, want null"),
        Some(want) => {
            let got = got.as_f64().unwrap_or_else(|| panic!("{what}: {got}"));
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{what}: got {got}, want {want}"
            );
        }
    }
}

/// The windows, computed here: 24h in whole hours, the others in whole UTC days.
fn windows(now: DateTime<Utc>) -> Vec<(&'static str, DateTime<Utc>, DateTime<Utc>)> {
    let hour = Age::hours(1);
    let to_h = now.duration_trunc(hour).unwrap()
        + if now.duration_trunc(hour).unwrap() == now {
            Age::zero()
        } else {
            hour
        };
    let from_h = (now - Age::hours(24)).duration_trunc(hour).unwrap();
    let to_d = now.duration_trunc(Age::days(1)).unwrap() + Age::days(1);
    vec![
        ("24h", from_h, to_h),
        ("7d", to_d - Age::days(7), to_d),
        ("30d", to_d - Age::days(30), to_d),
        ("90d", to_d - Age::days(90), to_d),
    ]
}

/// The exact nearest-rank percentile of total time, from raw rows.
async fn exact_quantile(
    c: &Client,
    site: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    q: f64,
) -> f64 {
    c.query_one(
        "SELECT percentile_disc($4) WITHIN GROUP (ORDER BY total_ms) FROM check_results \
         WHERE site = $1 AND scheduled_at >= $2 AND scheduled_at < $3 AND maintenance IS NULL",
        &[&site, &from, &to, &q],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn every_figure_matches_the_raw_rows() {
    let _stack = StackLock::shared();
    let now = Utc::now();
    let (url, c, state, _dir) = fixture(now).await;

    // The overview's cache of settled buckets read five hours ago (a refresh failing since):
    // the figures of now add the buckets since then to it, and must match all the same.
    let mut earlier = state.clone();
    earlier.clock = Arc::new(move || now - Age::hours(5));
    get_json(&earlier, "/api/v1/sites").await;

    // ---- /api/v1/sites: the overview's figures.
    let sites = get_json(&state, "/api/v1/sites").await;
    let names: Vec<&str> = sites["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["site"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta", "gamma"], "hidden is not listed");
    assert_eq!(sites["in_maintenance"], 1);
    for s in sites["sites"].as_array().unwrap() {
        let site = s["site"].as_str().unwrap();
        if site == "gamma" {
            assert!(s["state"].is_null());
            assert_eq!(s["maintenance"], "gamma-move");
            continue;
        }
        // State and since from the raw rows: the latest outcome and the start of its run.
        let rows = c
            .query("SELECT outcome, scheduled_at FROM check_results WHERE site = $1 ORDER BY scheduled_at DESC", &[&site])
            .await
            .unwrap();
        let latest: String = rows[0].get(0);
        let since: DateTime<Utc> = rows
            .iter()
            .take_while(|r| r.get::<_, String>(0) == latest)
            .last()
            .unwrap()
            .get(1);
        assert_eq!(s["state"], latest.as_str(), "{site}");
        assert_eq!(s["since"], serve::api::rfc3339(since).as_str(), "{site}");
        for (window, from, to) in windows(now) {
            close(
                &s["uptime_pct"][window],
                uptime(counts(&c, site, from, to).await),
                &format!("{site} uptime {window}"),
            );
        }
    }
    assert_eq!(sites["sites"][0]["url"], "https://alpha.example/health");
    // beta's SLO over its 7 whole days.
    let beta = &sites["sites"][1];
    let (_, from, to) = windows(now)[1];
    let n = counts(&c, "beta", from, to).await;
    let (allowed, bad) = (0.01, n[3] as f64 / n[0] as f64);
    close(
        &beta["slo"]["budget_left_pct"],
        Some(100.0 * (1.0 - bad / allowed)),
        "beta budget %",
    );
    close(
        &beta["slo"]["budget_left_min"],
        Some((allowed - bad) * 7.0 * 1440.0),
        "beta budget min",
    );
    assert_eq!(beta["slo"]["breached"], bad > allowed);
    // alpha's SLO holds its budget but not its latency objective: p99 of the 7 days above
    // 300 ms, from the raw rows, within a bucket of the shown figure; beta's p99 is within 800 ms.
    for (s, objective, max_ms) in [(&sites["sites"][0], "p99", 300.0), (beta, "p99", 800.0)] {
        let site = s["site"].as_str().unwrap();
        let latency = &s["slo"]["latency"];
        assert_eq!(latency["objective"], objective, "{site}");
        assert_eq!(latency["max_ms"], max_ms, "{site}");
        let exact = exact_quantile(&c, site, from, to, 0.99).await;
        let got = latency["observed_ms"].as_f64().unwrap();
        assert!(
            bucket_of(got).abs_diff(bucket_of(exact)) <= 1,
            "{site} SLO p99: {got} vs {exact}"
        );
        assert_eq!(latency["breached"], got > max_ms, "{site}");
    }
    let alpha = &sites["sites"][0]["slo"];
    assert!(alpha["budget_left_pct"].as_f64().unwrap() > 0.0, "{alpha}");
    assert_eq!(alpha["latency"]["breached"], true, "{alpha}");
    assert_eq!(alpha["breached"], true, "{alpha}");

    // ---- /api/v1/sites/beta: windows with percentiles and phase means.
    let beta = get_json(&state, "/api/v1/sites/beta").await;
    for (w, (window, from, to)) in beta["windows"].as_array().unwrap().iter().zip(windows(now)) {
        assert_eq!(w["window"], window);
        let n = counts(&c, "beta", from, to).await;
        for (i, key) in ["checks", "up", "degraded", "down", "maintenance"]
            .iter()
            .enumerate()
        {
            assert_eq!(w[key], n[i], "beta {window} {key}");
        }
        for (key, q) in [("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)] {
            let exact = exact_quantile(&c, "beta", from, to, q).await;
            let got = w[key].as_f64().unwrap();
            assert!(
                bucket_of(got).abs_diff(bucket_of(exact)) <= 1,
                "beta {window} {key}: {got} vs {exact}"
            );
        }
        let means = c
            .query_one(
                "SELECT avg(dns_ms), avg(connect_ms), avg(tls_ms), avg(ttfb_ms), avg(transfer_ms), avg(total_ms) \
                 FROM check_results WHERE site = 'beta' AND scheduled_at >= $1 AND scheduled_at < $2 AND maintenance IS NULL",
                &[&from, &to],
            )
            .await
            .unwrap();
        for (i, phase) in ["dns", "connect", "tls", "ttfb", "transfer", "total"]
            .iter()
            .enumerate()
        {
            let want: Option<f64> = means.get(i);
            let got = w["mean_ms"][phase].as_f64().unwrap();
            assert!(
                (got - want.unwrap()).abs() < 1e-6,
                "beta {window} mean {phase}: {got} vs {want:?}"
            );
        }
    }
    assert_eq!(beta["cert_not_after"], "2031-01-02T03:04:05Z");
    let changes: i64 = c
        .query_one(
            "SELECT count(*) FROM state_changes WHERE site = 'beta'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        beta["state_changes"].as_array().unwrap().len() as i64,
        changes.min(20)
    );
    assert_eq!(beta["incidents"][0]["open"], true);
    assert_eq!(beta["incidents"].as_array().unwrap().len(), 2);

    // ---- /daily and /hourly: every bucket from the raw rows, incidents by overlap.
    let daily = get_json(&state, "/api/v1/sites/beta/daily?days=10").await;
    let buckets = daily["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 10);
    for b in buckets {
        let from: DateTime<Utc> = b["start"].as_str().unwrap().parse().unwrap();
        let n = counts(&c, "beta", from, from + Age::days(1)).await;
        assert_eq!(b["checks"], n[0], "{from}");
        assert_eq!(b["down"], n[3], "{from}");
        close(&b["uptime_pct"], uptime(n), &format!("day {from}"));
        let incidents: i64 = c
            .query_one(
                "SELECT count(*) FROM incidents WHERE site = 'beta' AND started_at < $2 \
                 AND coalesce(resolved_at, 'infinity') >= $1",
                &[&from, &(from + Age::days(1))],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(b["incidents"], incidents, "incidents on {from}");
    }
    let hourly = get_json(&state, "/api/v1/sites/alpha/hourly?hours=30").await;
    for b in hourly["buckets"].as_array().unwrap() {
        let from: DateTime<Utc> = b["start"].as_str().unwrap().parse().unwrap();
        let n = counts(&c, "alpha", from, from + Age::hours(1)).await;
        assert_eq!([&b["checks"], &b["maintenance"]], [n[0], n[4]], "{from}");
    }

    // ---- /results: the latest rows, their failed assertions, nothing secret.
    let results = get_json(&state, "/api/v1/sites/beta/results?limit=300").await;
    let ids: Vec<String> = c
        .query("SELECT id::text, outcome FROM check_results WHERE site = 'beta' ORDER BY scheduled_at DESC LIMIT 300", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let got: Vec<&str> = results["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids);
    for r in results["results"].as_array().unwrap() {
        let failed = r["failed_assertions"].as_array().unwrap();
        assert_eq!(failed.len(), usize::from(r["outcome"] == "down"), "{r}");
    }

    // ---- /incidents: visible sites only, open first.
    let incidents = get_json(&state, "/api/v1/incidents").await;
    let list = incidents["incidents"].as_array().unwrap();
    assert_eq!(list.len(), 3, "hidden's incident is not listed");
    assert_eq!(list[0]["open"], true);
    assert!(list.iter().all(|i| i["site"] != "hidden"));

    // ---- The overview page shows the same figures; its bar tooltips say each day's.
    let (status, headers, page) = get(&state, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .starts_with("default-src 'none'"));
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert!(headers.contains_key(header::REFERRER_POLICY));
    assert!(
        !page.contains(SECRET) && !page.contains("hidden"),
        "nothing secret or hidden"
    );
    assert!(!page.contains("style="), "no inline style (CSP)");
    assert!(page.contains("site is in maintenance"), "banner");
    for site in ["alpha", "beta"] {
        // The site's own section: the page can link to the site before it (which chunk did
        // depended on the time of day the test ran).
        let section = page
            .split("<section")
            .find(|s| s.contains(&format!(">{site}</a>")) && s.contains("<dt>24h</dt>"))
            .unwrap();
        for (window, from, to) in windows(now) {
            let shown = format!(
                "<dt>{window}</dt><dd><span class=\"{}\">{} %",
                svg::Band::of(uptime(counts(&c, site, from, to).await)).class(),
                svg::pct(uptime(counts(&c, site, from, to).await))
            );
            assert!(section.contains(&shown), "{site}: {shown} missing");
        }
        assert_eq!(section.matches("<rect ").count(), 90, "{site}: 90 bars");
        let to_d = now.duration_trunc(Age::days(1)).unwrap();
        for back in 0..9 {
            let day = to_d - Age::days(back);
            let n = counts(&c, site, day, day + Age::days(1)).await;
            let tooltip = format!(
                "<title>{}: {} checks, {} % up",
                day.format("%Y-%m-%d"),
                svg::thousands(n[0]),
                svg::pct(uptime(n))
            );
            assert!(section.contains(&tooltip), "{site}: {tooltip} missing");
        }
    }

    // ---- The site page: figures per window, the phase note, cert, results.
    let (status, _, page) = get(&state, "/site/beta").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    for (window, from, to) in windows(now) {
        let n = counts(&c, "beta", from, to).await;
        let row = format!("<th scope=\"row\">{window}</th><td><span class=\"{}\">{} %</span></td><td>{}</td><td>{}</td>", svg::Band::of(uptime(n)).class(), svg::pct(uptime(n)), svg::thousands(n[0]), svg::thousands(n[3]));
        assert!(page.contains(&row), "{row} missing");
    }
    assert!(page.contains("percentiles exist for the total only"));
    assert!(page.contains("2031-01-02T03:04:05Z"));

    // ---- Over a real socket: the same answers; HEAD too.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = serve::router(state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::new();
    let body = http
        .get(format!("http://{addr}/api/v1/sites/beta"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), beta);
    let head = http.head(format!("http://{addr}/")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let post = http
        .post(format!("http://{addr}/api/v1/sites"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    server.abort();
    drop(c);
    stack::drop_database(&url).await;
}

#[tokio::test]
async fn hidden_unknown_and_bad_requests_are_clear_4xx() {
    let _stack = StackLock::shared();
    let now = Utc::now();
    let (url, c, state, _dir) = fixture(now).await;
    let long = "9".repeat(5_000);
    let cases: Vec<(String, StatusCode)> = vec![
        ("/site/hidden".into(), StatusCode::NOT_FOUND),
        ("/api/v1/sites/hidden".into(), StatusCode::NOT_FOUND),
        ("/api/v1/sites/hidden/daily".into(), StatusCode::NOT_FOUND),
        ("/api/v1/sites/hidden/results".into(), StatusCode::NOT_FOUND),
        ("/badge/hidden/status.svg".into(), StatusCode::NOT_FOUND),
        ("/badge/hidden/uptime/30d.svg".into(), StatusCode::NOT_FOUND),
        ("/api/v1/sites/nope".into(), StatusCode::NOT_FOUND),
        ("/site/nope".into(), StatusCode::NOT_FOUND),
        ("/nothing/here".into(), StatusCode::NOT_FOUND),
        (format!("/api/v1/sites/{long}"), StatusCode::NOT_FOUND),
        (
            "/api/v1/sites/beta/daily?days=0".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/sites/beta/daily?days=3661".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/api/v1/sites/beta/daily?days={long}"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/sites/beta/daily?days=-5".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/sites/beta/daily?days=abc".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/sites/beta/hourly?hours=2401".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/sites/beta/results?limit=1001".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/sites/beta/results?limit=0".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/incidents?limit=100000".into(),
            StatusCode::BAD_REQUEST,
        ),
        ("/badge/beta/uptime/1y.svg".into(), StatusCode::BAD_REQUEST),
        ("/badge/beta/uptime/30d".into(), StatusCode::BAD_REQUEST),
        (
            format!("/badge/beta/p99/{long}.svg"),
            StatusCode::BAD_REQUEST,
        ),
        ("/?page=0".into(), StatusCode::BAD_REQUEST),
        ("/?page=99999999999".into(), StatusCode::BAD_REQUEST),
        ("/?page=2".into(), StatusCode::BAD_REQUEST),
        ("/api/v1/sites/beta/daily?days=3660".into(), StatusCode::OK),
        (
            "/api/v1/sites/beta/hourly?hours=2400".into(),
            StatusCode::OK,
        ),
        (
            "/api/v1/sites/beta/results?limit=1000".into(),
            StatusCode::OK,
        ),
        ("/badge/beta/p99/90d.svg".into(), StatusCode::OK),
    ];
    for (uri, want) in &cases {
        let started = std::time::Instant::now();
        let (status, headers, body) = get(&state, uri).await;
        assert_eq!(status, *want, "{uri}: {body}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{uri} is slow"
        );
        assert!(body.len() < 200_000 || status == StatusCode::OK, "{uri}");
        assert!(
            headers.contains_key(header::CONTENT_SECURITY_POLICY),
            "{uri}"
        );
    }
    // Nothing changes anything: every other method is refused before routing.
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let response = serve::router(state.clone())
            .oneshot(
                Request::builder()
                    .method(method.clone())
                    .uri("/api/v1/sites")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
    }
    // Badges are cacheable and revalidate to 304.
    let (status, headers, svg) = get(&state, "/badge/beta/uptime/7d.svg").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "image/svg+xml; charset=utf-8"
    );
    assert!(headers[header::CACHE_CONTROL]
        .to_str()
        .unwrap()
        .contains("max-age=60"));
    let (_, from, to) = windows(now)[1];
    assert!(
        svg.contains(&format!(
            "uptime 7d: {} %",
            svg::pct(uptime(counts(&c, "beta", from, to).await))
        )),
        "{svg}"
    );
    let etag = headers[header::ETAG].clone();
    let response = serve::router(state.clone())
        .oneshot(
            Request::get("/badge/beta/uptime/7d.svg")
                .header(header::IF_NONE_MATCH, etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    let (_, _, status_svg) = get(&state, "/badge/gamma/status.svg").await;
    assert!(status_svg.contains("maintenance"), "{status_svg}");
    drop(c);
    stack::drop_database(&url).await;
}

/// Runs headless Chromium on `url` at `width`: the DOM after scripts ran, and a screenshot.
fn chromium(url: &str, width: u32, height: u32, shot: &std::path::Path) -> String {
    let run = |extra: &[String]| {
        let out = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--virtual-time-budget=3000",
            ])
            .arg(format!("--window-size={width},{height}"))
            .args(extra)
            .arg(url)
            .output()
            .unwrap_or_else(|e| panic!("chromium not runnable ({e}): dev/stack up installs it"));
        assert!(
            out.status.success(),
            "chromium {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&[format!("--screenshot={}", shot.display())]);
    assert!(shot.exists(), "no screenshot {}", shot.display());
    run(&["--dump-dom".to_owned()])
}

#[tokio::test]
async fn pages_render_in_headless_chromium_at_desktop_and_phone_width() {
    let _stack = StackLock::shared();
    let now = Utc::now();
    let (url, c, state, _dir) = fixture(now).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = serve::router(state.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let (_, from, to) = windows(now)[3];
    let beta_90d = svg::pct(uptime(counts(&c, "beta", from, to).await));
    for (name, width, height) in [("desktop", 1280, 1400), ("phone", 390, 1200)] {
        let dom = tokio::task::spawn_blocking({
            let shot = dir.join(format!("overview-{name}.png"));
            let url = format!("http://{addr}/");
            move || chromium(&url, width, height, &shot)
        })
        .await
        .unwrap();
        assert!(dom.matches("<rect ").count() >= 3 * 90, "{name}: bars");
        assert!(
            dom.contains(&format!("{beta_90d} %")),
            "{name}: beta's 90d uptime"
        );
        assert!(
            dom.contains("class=\"local\""),
            "{name}: time.js ran (CSP allows 'self')"
        );
        assert!(dom.contains("site is in maintenance"), "{name}: banner");
        assert!(
            dom.contains(", over 300 ms (breached)"),
            "{name}: alpha's latency objective"
        );
        assert!(
            dom.contains(" within 800 ms (breached)"),
            "{name}: beta's budget"
        );
        let dom = tokio::task::spawn_blocking({
            let shot = dir.join(format!("site-{name}.png"));
            let url = format!("http://{addr}/site/beta");
            move || chromium(&url, width, height * 2 - 200, &shot)
        })
        .await
        .unwrap();
        assert!(dom.contains("<polyline"), "{name}: latency lines");
        assert!(dom.contains("class=\"ph3\""), "{name}: phase bars");
        assert!(dom.matches("<rect x=").count() >= 90, "{name}: 90 bars");
        assert!(dom.contains("Latest results"), "{name}");
    }
    server.abort();
    drop(c);
    stack::drop_database(&url).await;
}
