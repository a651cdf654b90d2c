//! Helpers for the tests that run `sitewatch produce` as a child process and read the topic
//! back: Kafka client settings for either listener, the child's environment, and a reader that
//! decodes every message as a CheckResult.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::stack;

/// Kafka client settings for the local broker: plaintext, or the SSL listener with the client
/// certificate.
pub fn kafka_client(ssl: bool) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    if ssl {
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
    } else {
        config.set("bootstrap.servers", stack::kafka_brokers());
    }
    config
}

/// The environment a `sitewatch` child gets to reach the local Kafka (plaintext or SSL) with a
/// given topic.
pub fn kafka_env(ssl: bool, topic: &str) -> Vec<(String, String)> {
    let mut vars = vec![("SITEWATCH_KAFKA_TOPIC".to_owned(), topic.to_owned())];
    if ssl {
        vars.extend([
            (
                "SITEWATCH_KAFKA_BROKERS".to_owned(),
                stack::kafka_ssl_brokers(),
            ),
            (
                "SITEWATCH_KAFKA_SECURITY_PROTOCOL".to_owned(),
                "ssl".to_owned(),
            ),
            (
                "SITEWATCH_KAFKA_SSL_CA".to_owned(),
                stack::get("SITEWATCH_DEV_KAFKA_SSL_CA"),
            ),
            (
                "SITEWATCH_KAFKA_SSL_CERT".to_owned(),
                stack::get("SITEWATCH_DEV_KAFKA_SSL_CERT"),
            ),
            (
                "SITEWATCH_KAFKA_SSL_KEY".to_owned(),
                stack::get("SITEWATCH_DEV_KAFKA_SSL_KEY"),
            ),
        ]);
    } else {
        vars.extend([
            ("SITEWATCH_KAFKA_BROKERS".to_owned(), stack::kafka_brokers()),
            (
                "SITEWATCH_KAFKA_SECURITY_PROTOCOL".to_owned(),
                "plaintext".to_owned(),
            ),
        ]);
    }
    vars
}

/// A message read back from a topic.
#[derive(Debug, Clone)]
pub struct Published {
    pub key: String,
    pub schema_header: Option<String>,
    pub result: sitewatch::result::CheckResult,
    pub partition: i32,
}

/// Reads every message of `topic` from the beginning until none arrived for `idle` (at most
/// `limit` in all). Each must decode as a CheckResult.
pub async fn read_results(
    mut config: rdkafka::ClientConfig,
    topic: &str,
    idle: Duration,
    limit: Duration,
) -> Vec<Published> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    use rdkafka::Message;
    let consumer: StreamConsumer = config
        .set("group.id", stack::unique_name("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("create test consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = tokio::time::Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        let wait = idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, consumer.recv()).await {
            // Not idle yet while the group has not assigned the partitions (a broker that has
            // just restarted takes seconds to): nothing could have been read.
            Err(_)
                if tokio::time::Instant::now() < deadline
                    && consumer.assignment().is_ok_and(|a| a.count() == 0) => {}
            Err(_) => break,
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Ok(Ok(message)) => {
                let payload = message.payload().expect("message without payload");
                let result = serde_json::from_slice(payload).unwrap_or_else(|e| {
                    panic!(
                        "not a CheckResult ({e}): {}",
                        String::from_utf8_lossy(payload)
                    )
                });
                let schema_header = message.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "schema-version")
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                });
                out.push(Published {
                    key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                    schema_header,
                    result,
                    partition: message.partition(),
                });
            }
        }
    }
    out
}

/// A `sitewatch` child process whose stderr goes to a file, shown when the test fails.
pub struct Sitewatch {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Sitewatch {
    pub fn spawn(args: &[&str], vars: &[(String, String)], dir: &Path) -> Sitewatch {
        let log = dir.join(format!("sitewatch-{}.log", uuid::Uuid::now_v7().simple()));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_sitewatch"))
            .args(args)
            .env("RUST_LOG", "info")
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn sitewatch");
        Sitewatch { child, log }
    }

    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGTERM, then asserts a clean exit (status 0) within `limit`, showing the log if not.
    pub fn terminate(&mut self, limit: Duration) {
        self.signal("TERM");
        let status = self.wait(limit);
        assert!(
            status.success(),
            "exit {status:?}; log:\n{}",
            self.log_text()
        );
    }

    /// Waits for exit up to `limit`; panics with the log when it does not exit.
    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "sitewatch did not exit within {limit:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sitewatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A result of `site` as a check would publish it, scheduled now.
pub fn result(site: &str) -> sitewatch::result::CheckResult {
    use sitewatch::result::{CheckResult, Outcome, Timings, SCHEMA_VERSION};
    let now = chrono::Utc::now();
    CheckResult {
        schema: SCHEMA_VERSION,
        id: uuid::Uuid::now_v7(),
        site: site.into(),
        url: format!("http://127.0.0.1:9/{site}"),
        final_url: None,
        scheduled_at: now,
        started_at: now,
        outcome: Outcome::Up,
        status: Some(200),
        timings: Timings {
            total_ms: 1.0,
            ..Timings::default()
        },
        failure: None,
        assertions: Vec::new(),
        metrics: std::collections::BTreeMap::new(),
        body_bytes: 2,
        body_truncated: false,
        cert_not_after: None,
        tls_insecure: false,
        config_version: "v".into(),
        attempts: 1,
        probe_host: "test".into(),
        maintenance: None,
    }
}

/// The library's publisher on `topic` of the stack's plaintext listener.
pub async fn publisher(topic: &str) -> sitewatch::publish::Publisher {
    let settings = sitewatch::settings::KafkaSettings {
        brokers: stack::kafka_brokers(),
        topic: topic.to_owned(),
        group: stack::unique_name("publisher-group"),
        alert_group: stack::unique_name("publisher-alert"),
        security: sitewatch::settings::KafkaSecurity::Plaintext,
        extra: Vec::new(),
    };
    sitewatch::publish::Publisher::connect(&settings, sitewatch::publish::TopicSpec::default())
        .await
        .expect("connect to the stack's Kafka (start it with dev/stack up)")
}
