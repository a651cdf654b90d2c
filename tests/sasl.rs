//! Kafka over SASL_SSL with SCRAM credentials, the way managed Kafka services hand them out:
//! `sitewatch produce` and `sitewatch consume` against the local stack's SASL_SSL listener
//! (`dev/stack up`: 127.0.0.1:19096, user `sitewatch`, SCRAM-SHA-256 and -512, the stack's CA),
//! every published result stored once; a wrong password is a prompt, clear startup error.

mod producer;
mod stack;
mod support;

use std::time::{Duration, Instant};

use producer::Sitewatch;

/// The SASL_SSL listener's address, checked to be listening.
fn sasl_brokers() -> String {
    let brokers = stack::get("SITEWATCH_DEV_KAFKA_SASL_BROKERS");
    stack::require_listening(
        brokers.split(',').next().unwrap_or_default(),
        "Kafka (SASL_SSL listener)",
    );
    brokers
}

/// The environment of a `sitewatch` child on the SASL_SSL listener with `mechanism` and
/// `password`.
fn sasl_env(topic: &str, mechanism: &str, password: &str) -> Vec<(String, String)> {
    [
        ("SITEWATCH_KAFKA_TOPIC", topic.to_owned()),
        ("SITEWATCH_KAFKA_BROKERS", sasl_brokers()),
        ("SITEWATCH_KAFKA_SECURITY_PROTOCOL", "sasl_ssl".to_owned()),
        (
            "SITEWATCH_KAFKA_SSL_CA",
            stack::get("SITEWATCH_DEV_KAFKA_SSL_CA"),
        ),
        ("SITEWATCH_KAFKA_SASL_MECHANISM", mechanism.to_owned()),
        (
            "SITEWATCH_KAFKA_SASL_USERNAME",
            stack::get("SITEWATCH_DEV_KAFKA_SASL_USERNAME"),
        ),
        ("SITEWATCH_KAFKA_SASL_PASSWORD", password.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_and_consume_over_sasl_ssl_with_scram() {
    let _stack = stack::StackLock::shared();
    let password = stack::get("SITEWATCH_DEV_KAFKA_SASL_PASSWORD");
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
            r#"for i = 1, 3 do site {{ name = "sasl" .. i, url = "{}" .. i, interval = "1s", timeout = "500ms" }} end"#,
            server.url("/s/")
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let topic = stack::unique_name("sasl");
    let database = stack::fresh_database().await;

    // The producer authenticates with SCRAM-SHA-512, the consumer with SCRAM-SHA-256.
    let mut produce = Sitewatch::spawn(
        &["produce", "--config", config],
        &sasl_env(&topic, "SCRAM-SHA-512", &password),
        dir.path(),
    );
    let mut consume_vars = sasl_env(&topic, "SCRAM-SHA-256", &password);
    consume_vars.push(("SITEWATCH_DATABASE_URL".into(), database.clone()));
    consume_vars.push(("SITEWATCH_PG_CA".into(), stack::get("SITEWATCH_PG_CA")));
    consume_vars.push((
        "SITEWATCH_KAFKA_GROUP".into(),
        stack::unique_name("sasl-group"),
    ));
    let mut consume = Sitewatch::spawn(&["consume"], &consume_vars, dir.path());

    let db = stack::client(&database).await;
    let stored = || async {
        match db
            .query_one("SELECT count(DISTINCT site) FROM check_results", &[])
            .await
        {
            Ok(row) => row.get::<_, i64>(0),
            Err(_) => 0, // not migrated yet
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored().await < 3 {
        assert!(
            Instant::now() < deadline,
            "no rows of every site after 60 s over SASL_SSL;\nproduce log:\n{}\nconsume log:\n{}",
            produce.log_text(),
            consume.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    produce.terminate(Duration::from_secs(30));
    // What the producer published (read back over the plaintext listener), all stored, once.
    let published = producer::read_results(
        producer::kafka_client(false),
        &topic,
        Duration::from_secs(5),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        published.len() >= 3,
        "{} results published",
        published.len()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = db
            .query_one(
                "SELECT count(*), count(DISTINCT id) FROM check_results",
                &[],
            )
            .await
            .unwrap();
        let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(rows, distinct, "an id is stored twice");
        if rows as usize == published.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{rows} rows stored of {} published; consume log:\n{}",
            published.len(),
            consume.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    consume.terminate(Duration::from_secs(30));
    drop(db);
    stack::drop_database(&database).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_scram_password_is_a_clear_startup_error() {
    let _stack = stack::StackLock::shared();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    std::fs::write(
        &config,
        r#"site { name = "never", url = "http://127.0.0.1:9/", interval = "1s" }"#,
    )
    .unwrap();
    let topic = stack::unique_name("sasl-wrong");
    let password = "not-the-password-".to_owned() + &uuid::Uuid::now_v7().simple().to_string();
    let started = Instant::now();
    let mut produce = Sitewatch::spawn(
        &["produce", "--config", config.to_str().unwrap()],
        &sasl_env(&topic, "SCRAM-SHA-256", &password),
        dir.path(),
    );
    let status = produce.wait(Duration::from_secs(90));
    let log = produce.log_text();
    assert!(
        !status.success(),
        "produce started with a wrong password:\n{log}"
    );
    // The last line names the cause, not only its consequence ("all brokers are down").
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(
        last.contains("cannot reach Kafka at")
            && last.contains(&sasl_brokers())
            && last.contains("SASL authentication error")
            && last.contains("invalid credentials"),
        "the error does not say authentication failed:\n{log}"
    );
    assert!(
        !log.contains(&password),
        "the password appears in the log:\n{log}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?} to give up",
        started.elapsed()
    );
}
