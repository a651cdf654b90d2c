//! Smoke test of the local stack through the project's own client libraries: produce to and
//! consume from Kafka over both listeners (the SSL one with the client certificate), and
//! round-trip a row through PostgreSQL over TLS with the server certificate verified.

mod stack;

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

async fn round_trip(mut config: ClientConfig) {
    let topic = stack::unique_name("smoke");
    let payload = format!("hello {topic}");
    let producer: FutureProducer = config
        .clone()
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(&topic).key("k").payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");

    let consumer: StreamConsumer = config
        .set("group.id", stack::unique_name("smoke-group"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("no message within 60 s")
        .expect("consume");
    assert_eq!(message.payload(), Some(payload.as_bytes()));
    assert_eq!(message.key(), Some(&b"k"[..]));
}

#[tokio::test]
async fn kafka_plaintext_listener_round_trip() {
    let _stack = stack::StackLock::shared();
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", stack::kafka_brokers());
    round_trip(config).await;
}

#[tokio::test]
async fn kafka_ssl_listener_round_trip_with_client_certificate() {
    let _stack = stack::StackLock::shared();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", stack::kafka_ssl_brokers())
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", stack::get("SITEWATCH_DEV_KAFKA_SSL_CA"))
        .set(
            "ssl.certificate.location",
            stack::get("SITEWATCH_DEV_KAFKA_SSL_CERT"),
        )
        .set(
            "ssl.key.location",
            stack::get("SITEWATCH_DEV_KAFKA_SSL_KEY"),
        );
    round_trip(config).await;
}

fn tls_connector(ca_path: &str) -> postgres_native_tls::MakeTlsConnector {
    let pem = std::fs::read(ca_path).expect("read CA");
    let ca = native_tls::Certificate::from_pem(&pem).expect("parse CA");
    let connector = native_tls::TlsConnector::builder()
        .add_root_certificate(ca)
        .build()
        .expect("TLS connector");
    postgres_native_tls::MakeTlsConnector::new(connector)
}

#[tokio::test]
async fn postgres_round_trip_over_verified_tls() {
    let _stack = stack::StackLock::shared();
    stack::require_postgres();
    let url = stack::get("SITEWATCH_DATABASE_URL");
    assert!(
        url.contains("sslmode=require"),
        "dev/.env should ask for TLS: {url}"
    );
    let (client, connection) =
        tokio_postgres::connect(&url, tls_connector(&stack::get("SITEWATCH_PG_CA")))
            .await
            .expect("connect over TLS");
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    assert!(row.get::<_, bool>(0), "the session is not encrypted");

    let table = stack::unique_name("smoke").replace('-', "_");
    client
        .batch_execute(&format!(
            "CREATE TEMP TABLE {table} (id uuid PRIMARY KEY, note text)"
        ))
        .await
        .expect("create");
    let id = uuid::Uuid::now_v7();
    client
        .execute(
            &format!("INSERT INTO {table} VALUES ($1, $2)"),
            &[&id, &"round trip"],
        )
        .await
        .expect("insert");
    let note: String = client
        .query_one(&format!("SELECT note FROM {table} WHERE id = $1"), &[&id])
        .await
        .expect("select")
        .get(0);
    assert_eq!(note, "round trip");
}

#[tokio::test]
async fn postgres_refuses_a_server_certificate_from_the_wrong_ca() {
    let _stack = stack::StackLock::shared();
    stack::require_postgres();
    let url = stack::get("SITEWATCH_DATABASE_URL");
    let error = tokio_postgres::connect(
        &url,
        tls_connector(&stack::get("SITEWATCH_DEV_PG_WRONG_CA")),
    )
    .await
    .err()
    .expect("a certificate from an untrusted CA must be refused");
    let text = format!("{error:?}");
    assert!(text.contains("certificate"), "unexpected error: {text}");
}
