//! `sitewatch::store` against the local stack's PostgreSQL (`dev/stack up`): migrations, TLS,
//! the batch write path (COPY, duplicate fallback, rejected rows, fencing) and retention. Each
//! test works in its own fresh database.

mod insight;
mod stack;
mod support;

use std::collections::BTreeMap;

use chrono::{Duration as Age, Utc};
use sitewatch::result::{CheckResult, Outcome, Timings, SCHEMA_VERSION};
use sitewatch::store::{
    self, CheckRow, DeadLetter, OffsetAdvance, PendingRow, StoreError, WriteBatch, WriteOutcome,
    WritePath, MIGRATIONS,
};
use stack::StackLock;
use uuid::Uuid;

/// A fresh, migrated database and a TLS client on it.
async fn migrated() -> (String, tokio_postgres::Client) {
    let url = stack::fresh_database().await;
    let mut client = store::connect(&stack::database(&url))
        .await
        .unwrap_or_else(|error| panic!("connect: {}", chain(&error)));
    store::migrate(&mut client)
        .await
        .unwrap_or_else(|error| panic!("migrate: {}", chain(&error)));
    (url, client)
}

fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    store::ErrorChain(error).to_string()
}

fn result(site: &str, age: Age) -> CheckResult {
    let at = Utc::now() - age;
    CheckResult {
        schema: SCHEMA_VERSION,
        id: Uuid::now_v7(),
        site: site.into(),
        url: format!("https://{site}.example/"),
        final_url: None,
        scheduled_at: at,
        started_at: at,
        outcome: Outcome::Up,
        status: Some(200),
        timings: Timings {
            total_ms: 12.5,
            ..Timings::default()
        },
        failure: None,
        assertions: Vec::new(),
        metrics: BTreeMap::new(),
        body_bytes: 100,
        body_truncated: false,
        cert_not_after: None,
        tls_insecure: false,
        config_version: "test".into(),
        attempts: 1,
        probe_host: "test".into(),
        maintenance: None,
    }
}

fn pending(result: &CheckResult, partition: i32, offset: i64) -> PendingRow {
    PendingRow {
        row: CheckRow::from_result(result.clone(), partition, offset).unwrap(),
        key: Some(result.site.clone().into_bytes()),
        payload: serde_json::to_vec(result).unwrap(),
    }
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn migrations_apply_once_and_rerun_is_a_no_op() {
    let _stack = StackLock::shared();
    let url = stack::fresh_database().await;
    let mut client = store::connect(&stack::database(&url)).await.unwrap();

    let first = store::migrate(&mut client).await.unwrap();
    assert_eq!(first.applied.len(), MIGRATIONS.len());
    assert_eq!(first.already_applied, 0);
    for table in [
        "check_results",
        "consumer_offsets",
        "dead_letters",
        "schema_migrations",
    ] {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .unwrap()
            .get(0);
        assert!(exists, "{table} missing after migrate");
    }
    let row = client
        .query_one(
            "SELECT name, checksum, applied_at <= now() FROM schema_migrations WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), MIGRATIONS[0].name);
    assert_eq!(row.get::<_, String>(1), MIGRATIONS[0].checksum());
    assert!(row.get::<_, bool>(2));

    let second = store::migrate(&mut client).await.unwrap();
    assert!(
        second.applied.is_empty(),
        "re-run applied {:?}",
        second.applied
    );
    assert_eq!(second.already_applied, MIGRATIONS.len());
    stack::drop_database(&url).await;
}

#[tokio::test]
async fn concurrent_migrations_apply_each_migration_once() {
    let _stack = StackLock::shared();
    let url = stack::fresh_database().await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(store::connect(&stack::database(&url)).await.unwrap());
    }
    let reports = futures::future::join_all(clients.iter_mut().map(store::migrate)).await;
    let applied: usize = reports
        .into_iter()
        .map(|report| report.unwrap().applied.len())
        .sum();
    assert_eq!(
        applied,
        MIGRATIONS.len(),
        "each migration applied exactly once"
    );
    stack::drop_database(&url).await;
}

#[tokio::test]
async fn a_changed_migration_is_refused_naming_it_and_both_checksums() {
    let _stack = StackLock::shared();
    let (url, mut client) = migrated().await;
    client
        .execute(
            "UPDATE schema_migrations SET checksum = 'x' WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    let error = store::migrate(&mut client).await.unwrap_err();
    assert!(
        matches!(error, StoreError::ChecksumMismatch { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("0001_init"), "{message}");
    assert!(message.contains("checksum x,"), "{message}");
    assert!(message.contains(&MIGRATIONS[0].checksum()), "{message}");
    stack::drop_database(&url).await;
}

#[tokio::test]
async fn tls_with_the_stack_ca_verifies_and_encrypts() {
    let _stack = StackLock::shared();
    let settings = stack::database(&stack::get("SITEWATCH_DATABASE_URL"));
    assert!(settings.url.contains("sslmode=require"), "{}", settings.url);
    let client = store::connect(&settings)
        .await
        .unwrap_or_else(|error| panic!("{}", chain(&error)));
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "connection is not encrypted");

    let plain = sitewatch::settings::DatabaseSettings {
        url: stack::get("SITEWATCH_DEV_DATABASE_URL_PLAIN"),
        ca: None,
    };
    let client = store::connect(&plain).await.unwrap();
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!ssl, "sslmode=disable still used TLS");
}

/// libpq's `sslmode` values: `verify-full` checks the chain and the host name, `verify-ca` the
/// chain only; both refuse a certificate from another CA. The stack's certificate names
/// 127.0.0.1 and localhost, so `host=elsewhere.invalid hostaddr=127.0.0.1` reaches the same
/// server under a name the certificate does not carry.
#[tokio::test]
async fn libpq_sslmodes_verify_what_libpq_does() {
    let _stack = StackLock::shared();
    stack::require_postgres();
    let stack_url = stack::get("SITEWATCH_DATABASE_URL");
    let connect = |url: String, ca: &str| {
        let settings = sitewatch::settings::DatabaseSettings {
            url,
            ca: Some(stack::get(ca).into()),
        };
        async move { store::connect(&settings).await }
    };
    let encrypted = |client: tokio_postgres::Client| async move {
        client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    };
    let good = "SITEWATCH_PG_CA";
    let wrong = "SITEWATCH_DEV_PG_WRONG_CA";
    for mode in ["verify-full", "verify-ca"] {
        let url = stack_url.replace("sslmode=require", &format!("sslmode={mode}"));
        let client = connect(url.clone(), good)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {}", chain(&e)));
        assert!(encrypted(client).await, "{mode}: not encrypted");
        let error = connect(url, wrong).await.unwrap_err();
        assert!(
            matches!(error, StoreError::Certificate { .. }),
            "{mode}: {error:?}"
        );
    }
    // The same server under a name its certificate does not carry (key=value form).
    let parsed = url::Url::parse(&stack_url).unwrap();
    let other_name = |mode: &str| {
        format!(
            "host=elsewhere.invalid hostaddr={} port={} user={} password={} dbname={} sslmode={mode}",
            parsed.host_str().unwrap(),
            parsed.port().unwrap(),
            parsed.username(),
            parsed.password().unwrap(),
            parsed.path().trim_start_matches('/'),
        )
    };
    let client = connect(other_name("verify-ca"), good)
        .await
        .unwrap_or_else(|e| panic!("verify-ca under another name: {}", chain(&e)));
    assert!(encrypted(client).await);
    for mode in ["verify-full", "require"] {
        let error = connect(other_name(mode), good).await.unwrap_err();
        assert!(
            matches!(error, StoreError::Certificate { .. }),
            "{mode} accepted a certificate for another host: {error:?}"
        );
    }
}

#[tokio::test]
async fn tls_with_a_wrong_ca_fails_naming_the_certificate() {
    let _stack = StackLock::shared();
    stack::require_postgres();
    let settings = sitewatch::settings::DatabaseSettings {
        url: stack::get("SITEWATCH_DATABASE_URL"),
        ca: Some(stack::get("SITEWATCH_DEV_PG_WRONG_CA").into()),
    };
    let error = store::connect(&settings).await.unwrap_err();
    assert!(matches!(error, StoreError::Certificate { .. }), "{error:?}");
    assert!(
        !error.is_transient(),
        "a certificate problem is not worth retrying"
    );
    let message = chain(&error);
    eprintln!("wrong CA: {message}");
    assert!(message.contains("certificate"), "{message}");
    assert!(message.contains("wrong-ca"), "names the CA file: {message}");
}

#[tokio::test]
async fn batch_write_copies_rows_dead_letters_and_offsets_in_one_transaction() {
    let _stack = StackLock::shared();
    let (url, mut client) = migrated().await;
    let results: Vec<CheckResult> = (0..100)
        .map(|i| result(&format!("s{i}"), Age::zero()))
        .collect();
    let batch = WriteBatch {
        rows: results
            .iter()
            .enumerate()
            .map(|(i, r)| pending(r, 0, i as i64))
            .collect(),
        dead_letters: vec![DeadLetter {
            partition: 0,
            offset: 100,
            key: None,
            payload: Some(b"junk".to_vec()),
            reason: "invalid JSON".into(),
        }],
        offsets: vec![OffsetAdvance {
            partition: 0,
            expected: None,
            next: 101,
        }],
    };
    let outcome = store::write_batch(&mut client, "g", "t", &batch)
        .await
        .unwrap();
    let WriteOutcome::Committed(stats) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(stats.path, WritePath::Copy);
    assert_eq!(
        (stats.rows_written, stats.duplicates, stats.dead_letters),
        (100, 0, 1)
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM check_results").await,
        100
    );
    assert_eq!(count(&client, "SELECT count(*) FROM dead_letters").await, 1);
    let offsets = store::load_offsets(&client, "g", "t", &[0, 1])
        .await
        .unwrap();
    assert_eq!(offsets.get(&0), Some(&101));
    assert_eq!(offsets.get(&1), None);

    // A row reads back with its typed columns.
    let row = client
        .query_one(
            "SELECT site, outcome, status, total_ms, kafka_partition, kafka_offset, metrics \
             FROM check_results WHERE id = $1",
            &[&results[7].id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "s7");
    assert_eq!(row.get::<_, String>(1), "up");
    assert_eq!(row.get::<_, Option<i16>>(2), Some(200));
    assert_eq!(row.get::<_, f64>(3), 12.5);
    assert_eq!((row.get::<_, i32>(4), row.get::<_, i64>(5)), (0, 7));
    assert_eq!(row.get::<_, serde_json::Value>(6), serde_json::json!({}));
    stack::drop_database(&url).await;
}

#[tokio::test]
async fn duplicate_ids_fall_back_to_on_conflict_and_are_stored_once() {
    let _stack = StackLock::shared();
    let (url, mut client) = migrated().await;
    let a = result("a", Age::zero());
    let b = result("b", Age::zero());
    let c = result("c", Age::zero());
    // `a` twice in one batch.
    let first = WriteBatch {
        rows: vec![pending(&a, 0, 0), pending(&b, 0, 1), pending(&a, 0, 2)],
        dead_letters: Vec::new(),
        offsets: vec![OffsetAdvance {
            partition: 0,
            expected: None,
            next: 3,
        }],
    };
    let WriteOutcome::Committed(stats) = store::write_batch(&mut client, "g", "t", &first)
        .await
        .unwrap()
    else {
        panic!("fenced")
    };
    assert_eq!(stats.path, WritePath::OnConflict);
    assert_eq!((stats.rows_written, stats.duplicates), (2, 1));
    // `b` again in a later batch, with a new row.
    let second = WriteBatch {
        rows: vec![pending(&b, 0, 3), pending(&c, 0, 4)],
        dead_letters: Vec::new(),
        offsets: vec![OffsetAdvance {
            partition: 0,
            expected: Some(3),
            next: 5,
        }],
    };
    let WriteOutcome::Committed(stats) = store::write_batch(&mut client, "g", "t", &second)
        .await
        .unwrap()
    else {
        panic!("fenced")
    };
    assert_eq!(stats.path, WritePath::OnConflict);
    assert_eq!((stats.rows_written, stats.duplicates), (1, 1));
    assert_eq!(
        count(&client, "SELECT count(*) FROM check_results").await,
        3
    );
    assert_eq!(
        count(&client, "SELECT count(DISTINCT id) FROM check_results").await,
        3
    );
    // The staging table leaves nothing behind for the next COPY.
    let d = result("d", Age::zero());
    let third = WriteBatch {
        rows: vec![pending(&d, 0, 5)],
        dead_letters: Vec::new(),
        offsets: vec![OffsetAdvance {
            partition: 0,
            expected: Some(5),
            next: 6,
        }],
    };
    let WriteOutcome::Committed(stats) = store::write_batch(&mut client, "g", "t", &third)
        .await
        .unwrap()
    else {
        panic!("fenced")
    };
    assert_eq!((stats.path, stats.rows_written), (WritePath::Copy, 1));
    stack::drop_database(&url).await;
}

#[tokio::test]
async fn a_row_postgresql_rejects_is_quarantined_and_the_rest_stored() {
    let _stack = StackLock::shared();
    let (url, mut client) = migrated().await;
    let good = result("good", Age::zero());
    let bad = result("bad", Age::zero());
    let mut rejected = pending(&bad, 2, 11);
    rejected.row.outcome = "sideways"; // violates the outcome CHECK constraint
    let batch = WriteBatch {
        rows: vec![pending(&good, 2, 10), rejected],
        dead_letters: Vec::new(),
        offsets: vec![OffsetAdvance {
            partition: 2,
            expected: None,
            next: 12,
        }],
    };
    let WriteOutcome::Committed(stats) = store::write_batch(&mut client, "g", "t", &batch)
        .await
        .unwrap()
    else {
        panic!("fenced")
    };
    assert_eq!(stats.path, WritePath::RowByRow);
    assert_eq!((stats.rows_written, stats.dead_letters), (1, 1));
    let letter = client
        .query_one(
            "SELECT partition, kafka_offset, reason, payload FROM dead_letters",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((letter.get::<_, i32>(0), letter.get::<_, i64>(1)), (2, 11));
    assert!(
        letter.get::<_, String>(2).contains("check"),
        "{}",
        letter.get::<_, String>(2)
    );
    assert_eq!(
        letter.get::<_, Vec<u8>>(3),
        serde_json::to_vec(&bad).unwrap()
    );
    stack::drop_database(&url).await;
}

#[tokio::test]
async fn a_batch_from_a_consumer_whose_offsets_moved_is_fenced_and_writes_nothing() {
    let _stack = StackLock::shared();
    let (url, mut client) = migrated().await;
    let a = result("a", Age::zero());
    let first = WriteBatch {
        rows: vec![pending(&a, 0, 0)],
        dead_letters: Vec::new(),
        offsets: vec![OffsetAdvance {
            partition: 0,
            expected: None,
            next: 1,
        }],
    };
    assert!(matches!(
        store::write_batch(&mut client, "g", "t", &first)
            .await
            .unwrap(),
        WriteOutcome::Committed(_)
    ));
    // A second consumer that also believed partition 0 was unstored (None), or was at 0.
    for expected in [None, Some(0)] {
        let b = result("b", Age::zero());
        let stale = WriteBatch {
            rows: vec![pending(&b, 0, 0)],
            dead_letters: Vec::new(),
            offsets: vec![OffsetAdvance {
                partition: 0,
                expected,
                next: 1,
            }],
        };
        let outcome = store::write_batch(&mut client, "g", "t", &stale)
            .await
            .unwrap();
        assert_eq!(
            outcome,
            WriteOutcome::Fenced {
                partitions: vec![0]
            }
        );
    }
    assert_eq!(
        count(&client, "SELECT count(*) FROM check_results").await,
        1
    );
    // Another group has its own positions.
    let other = WriteBatch {
        rows: Vec::new(),
        dead_letters: Vec::new(),
        offsets: vec![OffsetAdvance {
            partition: 0,
            expected: None,
            next: 1,
        }],
    };
    assert!(matches!(
        store::write_batch(&mut client, "other", "t", &other)
            .await
            .unwrap(),
        WriteOutcome::Committed(_)
    ));
    stack::drop_database(&url).await;
}

#[tokio::test]
async fn prune_drops_whole_old_days_and_keeps_rollups() {
    let _stack = StackLock::shared();
    let (url, mut client) = migrated().await;
    let ages = [(40, 7), (35, 5), (1, 10)];
    let mut offset = 0;
    let mut rows = Vec::new();
    for (days, n) in ages {
        for _ in 0..n {
            rows.push(pending(
                &result(&format!("d{days}"), Age::days(days)),
                0,
                offset,
            ));
            offset += 1;
        }
    }
    let batch = WriteBatch {
        rows,
        dead_letters: Vec::new(),
        offsets: vec![OffsetAdvance {
            partition: 0,
            expected: None,
            next: offset,
        }],
    };
    store::write_batch(&mut client, "g", "t", &batch)
        .await
        .unwrap();
    let partitions = "SELECT count(*) FROM pg_inherits WHERE inhparent = 'check_results'::regclass";
    let before = count(&client, partitions).await;
    let retention = |results: i64, hourly: Option<i64>| store::Retention {
        results: Age::days(results),
        hourly_rollups: hourly.map(Age::days),
        daily_rollups: None,
    };
    let report = store::prune(&client, retention(30, Some(36)))
        .await
        .unwrap();
    assert_eq!(report.days_dropped.len(), 2, "{report:?}");
    assert_eq!(report.rows_dropped, 12);
    assert_eq!(
        count(&client, partitions).await,
        before - 2,
        "dropped, not emptied"
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM check_results").await,
        10
    );
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM check_results WHERE site = 'd1'"
        )
        .await,
        10
    );
    // Rollups outlive the raw rows: daily all kept, hourly only the 40-day-old hour deleted.
    assert!(report.hourly_rollups_deleted >= 1, "{report:?}");
    assert_eq!(
        count(&client, "SELECT sum(checks)::bigint FROM rollup_daily").await,
        22
    );
    assert_eq!(
        count(&client, "SELECT sum(checks)::bigint FROM rollup_hourly").await,
        15
    );
    let again = store::prune(&client, retention(30, None)).await.unwrap();
    assert_eq!(again, store::PruneReport::default());
    assert!(store::prune(&client, retention(-1, None)).await.is_err());
    stack::drop_database(&url).await;
}

#[tokio::test]
async fn migrating_a_database_of_the_first_schema_keeps_every_row() {
    let _stack = StackLock::shared();
    let url = stack::fresh_database().await;
    let mut client = store::connect(&stack::database(&url)).await.unwrap();
    // The first release's schema, recorded as applied the way its migrate recorded it.
    let first = &MIGRATIONS[0];
    client
        .batch_execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, \
             checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .unwrap();
    client.batch_execute(first.sql).await.unwrap();
    client
        .execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&first.version, &first.name, &first.checksum()],
        )
        .await
        .unwrap();
    // Rows over five days, through the first release's 28 columns.
    let old_columns = store::COLUMNS.trim_end_matches(", maintenance");
    let placeholders: Vec<String> = (1..=28).map(|i| format!("${i}")).collect();
    let insert = client
        .prepare(&format!(
            "INSERT INTO check_results ({old_columns}) VALUES ({})",
            placeholders.join(", ")
        ))
        .await
        .unwrap();
    for i in 0..500i64 {
        let mut result = result(&format!("s{}", i % 7), Age::minutes(i * 14));
        result.outcome = if i % 9 == 0 {
            Outcome::Down
        } else {
            Outcome::Up
        };
        result.timings.total_ms = 3.0 + i as f64;
        let row = CheckRow::from_result(result.clone(), 0, i).unwrap();
        client.execute(&insert, &row.values()[..28]).await.unwrap();
    }
    let fingerprint = format!(
        "SELECT count(*)::text || ' ' || md5(string_agg(t::text, ',' ORDER BY t.id)) \
         FROM (SELECT {old_columns} FROM check_results) t"
    );
    let before: String = client.query_one(&fingerprint, &[]).await.unwrap().get(0);

    let report = store::migrate(&mut client).await.unwrap();
    assert_eq!(report.applied.len(), MIGRATIONS.len() - 1, "{report:?}");
    let after: String = client.query_one(&fingerprint, &[]).await.unwrap().get(0);
    assert_eq!(after, before, "every row, every column, unchanged");
    assert!(before.starts_with("500 "), "{before}");
    let partitions = count(
        &client,
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'check_results'::regclass",
    )
    .await;
    assert!(
        partitions >= 5,
        "{partitions} partitions for five days of rows"
    );

    // Old rows get their rollups from a rebuild.
    let from = Utc::now() - Age::days(6);
    let rebuilt = store::rebuild_rollups(&mut client, from, Utc::now() + Age::days(1))
        .await
        .unwrap();
    assert_eq!(rebuilt.rows, 500);
    insight::assert_rollups_match_raw(&client, "rollup_hourly", "hour").await;
    insight::assert_rollups_match_raw(&client, "rollup_daily", "day").await;
    stack::drop_database(&url).await;
}

/// A database nobody migrated: the consumer started with `--no-migrate` (and every reader) says
/// to run `sitewatch migrate` instead of only "relation … does not exist".
#[tokio::test(flavor = "multi_thread")]
async fn an_unmigrated_database_says_to_run_migrate() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let _stack = StackLock::shared();
    let url = stack::fresh_database().await;
    let settings = stack::database(&url);
    let client = store::connect(&settings).await.unwrap();
    let error = store::load_offsets(&client, "g", "t", &[0])
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotMigrated { .. }), "{error:?}");
    assert!(!error.is_transient());
    assert!(
        error.to_string().contains("run `sitewatch migrate`"),
        "{error}"
    );

    // The real consumer on a topic with a message in it, told not to migrate.
    let topic = stack::unique_name("unmigrated");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack::kafka_brokers())
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&topic).key("k").payload("{}"),
            std::time::Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sitewatch"))
            .args(["consume", "--no-migrate"])
            .env("SITEWATCH_KAFKA_BROKERS", stack::kafka_brokers())
            .env("SITEWATCH_KAFKA_SECURITY_PROTOCOL", "plaintext")
            .env("SITEWATCH_KAFKA_TOPIC", &topic)
            .env("SITEWATCH_KAFKA_GROUP", stack::unique_name("unmigrated"))
            .env("SITEWATCH_DATABASE_URL", &settings.url)
            .env("SITEWATCH_PG_CA", stack::get("SITEWATCH_PG_CA"))
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(last.contains("run `sitewatch migrate`"), "{stderr}");
    drop(client);
    stack::drop_database(&url).await;
}

/// A TLS handshake cut short — a server that agrees to TLS and then drops the connection, as
/// one restarting or failing over does — is a transient connection failure to retry, not a
/// certificate problem that stops the consumer.
#[tokio::test]
async fn a_tls_handshake_cut_short_is_transient() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            // SSLRequest: length 8, code 80877103. Say yes, read the ClientHello, hang up.
            let mut request = [0u8; 8];
            if socket.read_exact(&mut request).await.is_ok() {
                let _ = socket.write_all(b"S").await;
                let mut hello = [0u8; 64];
                let _ = socket.read(&mut hello).await;
            }
            drop(socket);
        }
    });
    let settings = sitewatch::settings::DatabaseSettings {
        url: format!("postgres://u:p@127.0.0.1:{port}/db?sslmode=require&connect_timeout=5"),
        ca: Some(stack::get("SITEWATCH_PG_CA").into()),
    };
    let error = store::connect(&settings).await.unwrap_err();
    assert!(matches!(error, StoreError::Connect { .. }), "{error:?}");
    assert!(error.is_transient(), "{}", chain(&error));
    server.abort();
}

/// NUL bytes a server sends and a hook quotes (its reason, a metric name) leave the checker as
/// U+FFFD, so the result is stored as a row: PostgreSQL refuses NUL in text and jsonb, which
/// made such results dead letters.
#[tokio::test(flavor = "multi_thread")]
async fn nul_bytes_from_servers_and_hooks_never_make_a_dead_letter() {
    let _stack = StackLock::shared();
    let server = support::serve("127.0.0.1:0", |_request, mut conn| async move {
        conn.respond(200, &[("Content-Type", "text/plain")], b"ok\0tail")
            .await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sites.lua"),
        format!(
            r#"site {{ name = "nul", url = "{}", hooks = {{
                 function(r) return false, r.body end,
                 function(r) return {{ ok = true, metrics = {{ ["m\0x"] = 1 }} }} end }},
               expect = {{ body_not = "ok" }} }}"#,
            server.url("/")
        ),
    )
    .unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sitewatch"))
        .args(["check", "--json"])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    let line = String::from_utf8_lossy(&output.stdout).to_string();
    let result: CheckResult = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("{e}: {line}{}", String::from_utf8_lossy(&output.stderr)));
    assert!(!line.contains("\\u0000"), "a NUL left the checker: {line}");
    let reason = result
        .assertions
        .iter()
        .find_map(|a| a.reason.clone().filter(|r| r.starts_with("ok")))
        .unwrap_or_else(|| panic!("the hook's reason: {line}"));
    assert_eq!(reason, "ok\u{FFFD}tail");
    assert!(result.metrics.contains_key("m\u{FFFD}x"), "{line}");

    let (url, mut client) = migrated().await;
    let batch = WriteBatch {
        rows: vec![pending(&result, 0, 0)],
        dead_letters: Vec::new(),
        offsets: vec![OffsetAdvance {
            partition: 0,
            expected: None,
            next: 1,
        }],
    };
    let outcome = store::write_batch(&mut client, "g", "t", &batch)
        .await
        .unwrap();
    let WriteOutcome::Committed(stats) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!((stats.rows_written, stats.dead_letters), (1, 0), "{line}");
    drop(client);
    stack::drop_database(&url).await;
}
