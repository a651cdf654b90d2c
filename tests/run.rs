//! `sitewatch run` (producer and consumer in one process) with local sites: rows appear in
//! PostgreSQL within seconds, one per check, and SIGTERM leaves topic and table in agreement.

mod producer;
mod stack;
mod support;

use std::time::{Duration, Instant};

use producer::Sitewatch;

#[tokio::test(flavor = "multi_thread")]
async fn run_stores_checks_of_local_sites_within_seconds() {
    let _stack = stack::StackLock::shared();
    let server = support::serve("127.0.0.1:0", |_request, mut conn| async move {
        conn.respond(200, &[("Content-Type", "text/plain")], b"ok")
            .await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    std::fs::write(
        &config,
        format!(
            r#"for i = 1, 3 do site {{ name = "run" .. i, url = "{}" .. i, interval = "1s", timeout = "500ms" }} end
               site {{ name = "run-down", url = "http://127.0.0.1:{}/", interval = "1s", timeout = "500ms" }}"#,
            server.url("/r/"),
            support::closed_port()
        ),
    )
    .unwrap();
    let database = stack::fresh_database().await;
    let topic = stack::unique_name("run");
    let mut vars = producer::kafka_env(false, &topic);
    vars.push(("SITEWATCH_DATABASE_URL".into(), database.clone()));
    vars.push(("SITEWATCH_PG_CA".into(), stack::get("SITEWATCH_PG_CA")));
    vars.push((
        "SITEWATCH_KAFKA_GROUP".into(),
        stack::unique_name("run-group"),
    ));
    let started = Instant::now();
    let mut sitewatch = Sitewatch::spawn(
        &[
            "run",
            "--serve-addr",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
        &vars,
        dir.path(),
    );

    let db = stack::client(&database).await;
    let count = |sql: &'static str| {
        let db = &db;
        async move {
            match db.query_one(sql, &[]).await {
                Ok(row) => row.get::<_, i64>(0),
                Err(_) => 0, // table not migrated yet
            }
        }
    };
    // Rows of every site, the down one included, within seconds of starting.
    let deadline = started + Duration::from_secs(60);
    while count("SELECT count(DISTINCT site) FROM check_results").await < 4 {
        assert!(
            Instant::now() < deadline,
            "no rows for every site after 60 s; log:\n{}",
            sitewatch.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_rows = started.elapsed();
    // The status page runs too, on the port it was given (any free one here).
    let log = sitewatch.log_text();
    let port: String = log
        .split("status page at http://127.0.0.1:")
        .nth(1)
        .unwrap_or_else(|| panic!("no status page address in the log:\n{log}"))
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let sites: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/api/v1/sites"))
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("status page of run: {e}"))
        .json()
        .await
        .unwrap();
    assert_eq!(sites["sites"].as_array().map(Vec::len), Some(4), "{sites}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    sitewatch.terminate(Duration::from_secs(30));
    assert!(
        first_rows < Duration::from_secs(30),
        "first rows after {first_rows:?}"
    );

    // Everything published was stored, once.
    let published = producer::read_results(
        producer::kafka_client(false),
        &topic,
        Duration::from_secs(5),
        Duration::from_secs(60),
    )
    .await;
    let rows = count("SELECT count(*) FROM check_results").await;
    let distinct = count("SELECT count(DISTINCT id) FROM check_results").await;
    assert_eq!(rows, distinct, "an id is stored twice");
    assert_eq!(
        rows as usize,
        published.len(),
        "rows in PostgreSQL vs results on the topic"
    );
    let down = db
        .query_one(
            "SELECT outcome, failure_kind FROM check_results WHERE site = 'run-down' LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(down.get::<_, String>(0), "down");
    assert_eq!(down.get::<_, Option<String>>(1).as_deref(), Some("connect"));
    drop(db);
    stack::drop_database(&database).await;
}

/// A storing consumer that fails (here: its database does not exist yet) is started again while
/// probing goes on; once the database is there every published result is stored, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_consumer_is_restarted_while_probing_goes_on() {
    let _stack = stack::StackLock::shared();
    let server = support::serve("127.0.0.1:0", |_request, mut conn| async move {
        conn.respond(200, &[], b"ok").await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    std::fs::write(
        &config,
        format!(
            r#"site {{ name = "steady", url = "{}", interval = "1s", timeout = "500ms" }}"#,
            server.url("/")
        ),
    )
    .unwrap();
    let admin_url = stack::get("SITEWATCH_DATABASE_URL");
    let name = format!("sitewatch_test_{}", uuid::Uuid::now_v7().simple());
    let database = stack::with_database(&admin_url, &name, false);
    let topic = stack::unique_name("run-restart");
    let mut vars = producer::kafka_env(false, &topic);
    vars.push(("SITEWATCH_DATABASE_URL".into(), database.clone()));
    vars.push(("SITEWATCH_PG_CA".into(), stack::get("SITEWATCH_PG_CA")));
    vars.push((
        "SITEWATCH_KAFKA_GROUP".into(),
        stack::unique_name("run-restart"),
    ));
    vars.push((
        "SITEWATCH_ALERT_GROUP".into(),
        stack::unique_name("run-restart-alerts"),
    ));
    let mut sitewatch = Sitewatch::spawn(
        &["run", "--config", config.to_str().unwrap()],
        &vars,
        dir.path(),
    );

    // No database: the consumers fail and are restarted; the producer keeps publishing.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sitewatch.log_text().contains("starting it again") || server.requests().len() < 4 {
        assert!(
            sitewatch.child.try_wait().unwrap().is_none(),
            "run exited:\n{}",
            sitewatch.log_text()
        );
        assert!(
            Instant::now() < deadline,
            "no restart or no probes; log:\n{}",
            sitewatch.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let admin = stack::client(&admin_url).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let db = stack::client(&database).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rows = match db
            .query_one("SELECT count(*) FROM check_results", &[])
            .await
        {
            Ok(row) => row.get::<_, i64>(0),
            Err(_) => 0,
        };
        if rows >= 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rows never arrived; log:\n{}",
            sitewatch.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sitewatch.terminate(Duration::from_secs(30));
    let published = producer::read_results(
        producer::kafka_client(false),
        &topic,
        Duration::from_secs(5),
        Duration::from_secs(60),
    )
    .await;
    let rows: i64 = db
        .query_one("SELECT count(DISTINCT id) FROM check_results", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rows as usize,
        published.len(),
        "everything published while it failed is stored"
    );
    drop(db);
    stack::drop_database(&database).await;
}

/// Stopped with a backlog on the topic, `run` keeps its consumers going until every published
/// result is stored (and judged by the alerter), rather than for a fixed few seconds.
#[tokio::test(flavor = "multi_thread")]
async fn run_stops_only_once_its_backlog_is_stored() {
    let _stack = stack::StackLock::shared();
    let topic = stack::unique_name("run-backlog");
    // The backlog: results published before `run` starts, stored 20 to a transaction below:
    // several seconds of storing.
    const BACKLOG: usize = 20_000;
    let publisher = producer::publisher(&topic).await;
    for n in 0..BACKLOG {
        publisher
            .publish(&producer::result(&format!("backlog{}", n % 100)))
            .await
            .unwrap();
    }
    assert_eq!(publisher.flush(Duration::from_secs(60)).await, 0);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    std::fs::write(
        &config,
        format!(
            r#"site {{ name = "live", url = "http://127.0.0.1:{}/", interval = "1s", timeout = "500ms" }}"#,
            support::closed_port()
        ),
    )
    .unwrap();
    let database = stack::fresh_database().await;
    let mut vars = producer::kafka_env(false, &topic);
    vars.push(("SITEWATCH_DATABASE_URL".into(), database.clone()));
    vars.push(("SITEWATCH_PG_CA".into(), stack::get("SITEWATCH_PG_CA")));
    vars.push((
        "SITEWATCH_KAFKA_GROUP".into(),
        stack::unique_name("backlog"),
    ));
    vars.push((
        "SITEWATCH_ALERT_GROUP".into(),
        stack::unique_name("backlog-alert"),
    ));
    let mut sitewatch = Sitewatch::spawn(
        &[
            "run",
            "--no-serve",
            "--batch-rows",
            "20",
            "--config",
            config.to_str().unwrap(),
        ],
        &vars,
        dir.path(),
    );
    // Stop as soon as the storing consumer has begun.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sitewatch.log_text().contains("consuming") {
        assert!(Instant::now() < deadline, "{}", sitewatch.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sitewatch.terminate(Duration::from_secs(120));
    let log = sitewatch.log_text();
    let db = stack::client(&database).await;
    let rows: i64 = db
        .query_one("SELECT count(*) FROM check_results", &[])
        .await
        .unwrap()
        .get(0);
    let published = producer::read_results(
        producer::kafka_client(false),
        &topic,
        Duration::from_secs(5),
        Duration::from_secs(120),
    )
    .await
    .len();
    assert_eq!(rows as usize, published, "stored vs published; log:\n{log}");
    // And judged: the alerter's offsets reached the topic's end too.
    let judged: i64 = db
        .query_one(
            "SELECT coalesce(sum(next_offset), 0)::int8 FROM consumer_offsets \
             WHERE consumer_group LIKE 'backlog-alert%' AND topic = $1",
            &[&topic],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        judged as usize, published,
        "judged vs published; log:\n{log}"
    );
    assert!(log.contains("drained"), "{log}");
    drop(db);
    stack::drop_database(&database).await;
}
