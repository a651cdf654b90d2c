//! Shared by the integration tests that need the local stack (Kafka + PostgreSQL from
//! `dev/stack up`): settings from `dev/.env`, fresh topics and databases per test, and a loud
//! failure — never a silent skip — when the stack is not running.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// The command that starts the stack, named in every failure message.
pub const START_HINT: &str =
    "start it with `dev/stack up` (or run the whole suite with `dev/test`)";

/// The settings `dev/stack up` wrote to `dev/.env`.
pub fn env() -> &'static HashMap<String, String> {
    static ENV: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dev/.env");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "local stack not configured ({} unreadable: {e}): {START_HINT}",
                path.display()
            )
        });
        sitewatch::settings::parse_env_file(&path, &text)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect()
    })
}

/// One setting; panics naming the start command when it is missing.
pub fn get(key: &str) -> String {
    env()
        .get(key)
        .cloned()
        .unwrap_or_else(|| panic!("{key} missing from dev/.env: {START_HINT}"))
}

/// Fails the test (with the start hint) unless something listens on `addr` ("host:port").
pub fn require_listening(addr: &str, what: &str) {
    let sock = addr
        .parse()
        .unwrap_or_else(|e| panic!("bad address {addr}: {e}"));
    if let Err(e) = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2)) {
        panic!("{what} is not reachable at {addr} ({e}): {START_HINT}");
    }
}

/// Plaintext Kafka bootstrap address, checked to be listening.
pub fn kafka_brokers() -> String {
    let brokers = get("SITEWATCH_KAFKA_BROKERS");
    require_listening(
        brokers.split(',').next().unwrap_or_default(),
        "Kafka (PLAINTEXT listener)",
    );
    brokers
}

/// SSL Kafka bootstrap address, checked to be listening.
pub fn kafka_ssl_brokers() -> String {
    let brokers = get("SITEWATCH_DEV_KAFKA_SSL_BROKERS");
    require_listening(
        brokers.split(',').next().unwrap_or_default(),
        "Kafka (SSL listener)",
    );
    brokers
}

/// PostgreSQL host:port from the database URL, checked to be listening.
pub fn require_postgres() {
    let url = get("SITEWATCH_DATABASE_URL");
    let host_port = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("cannot find host:port in {url}"));
    require_listening(host_port, "PostgreSQL");
}

/// A topic name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

// ---------------------------------------------------------------------------------------------
// Storage and consumer helpers (used by tests/store.rs and tests/consume.rs): a fresh database
// per test, fresh topics with N partitions, settings structs, and a lock that keeps tests which
// stop a server (the PostgreSQL restart test) apart from the tests that need the stack up.
// ---------------------------------------------------------------------------------------------

/// The `dev/.env` file the tests and the sitewatch processes they start read.
pub fn env_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dev/.env")
}

/// Settings for the stack's PostgreSQL over TLS (`sslmode=require`, the stack's CA).
pub fn database(url: &str) -> sitewatch::settings::DatabaseSettings {
    sitewatch::settings::DatabaseSettings {
        url: url.to_owned(),
        ca: Some(PathBuf::from(get("SITEWATCH_PG_CA"))),
    }
}

/// `url` with its database name replaced, and `sslmode=disable` when `plain`.
pub fn with_database(url: &str, database: &str, plain: bool) -> String {
    let mut url = url::Url::parse(url)
        .unwrap_or_else(|error| panic!("database URL {url:?}: {error}; {START_HINT}"));
    url.set_path(database);
    if plain {
        let query: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(key, _)| key != "sslmode")
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .chain([("sslmode".to_owned(), "disable".to_owned())])
            .collect();
        url.query_pairs_mut().clear().extend_pairs(query);
    }
    url.to_string()
}

fn database_name(url: &str) -> String {
    url::Url::parse(url)
        .map(|url| url.path().trim_start_matches('/').to_owned())
        .unwrap_or_default()
}

/// The same database as `url`, without TLS: for the tests' own bookkeeping queries.
pub fn plain_url(url: &str) -> String {
    with_database(url, &database_name(url), true)
}

/// Connects without TLS (the tests' own queries); fails naming `dev/stack up` when unreachable.
pub async fn client(url: &str) -> tokio_postgres::Client {
    let url = plain_url(url);
    match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client
        }
        Err(error) => panic!("cannot reach PostgreSQL at {url} ({error:?}): {START_HINT}"),
    }
}

/// Creates an empty database with a random name; returns its URL (TLS, like
/// `SITEWATCH_DATABASE_URL`). The stack's role has CREATEDB.
pub async fn fresh_database() -> String {
    let admin_url = get("SITEWATCH_DATABASE_URL");
    let name = format!("sitewatch_test_{}", uuid::Uuid::now_v7().simple());
    let admin = client(&admin_url).await;
    if let Err(error) = admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
    {
        panic!("CREATE DATABASE {name}: {error:?}");
    }
    with_database(&admin_url, &name, false)
}

/// Drops a database made by [`fresh_database`], closing its connections. Best effort: tests
/// call it when they pass, so a failed run keeps its data to look at.
pub async fn drop_database(url: &str) {
    let name = database_name(url);
    if !name.starts_with("sitewatch_test_") {
        return;
    }
    let admin = client(&get("SITEWATCH_DATABASE_URL")).await;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
}

/// Creates a topic with a random name and `partitions` partitions; returns once every partition
/// has a leader.
pub async fn fresh_topic(partitions: i32) -> String {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::error::RDKafkaErrorCode;

    const READY_TIMEOUT: Duration = Duration::from_secs(30);
    let name = unique_name("sitewatch-test");
    let brokers = kafka_brokers();
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap_or_else(|error| panic!("Kafka admin client for {brokers}: {error}"));
    let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .unwrap_or_else(|error| {
            panic!("cannot create topic {name} at {brokers}: {error}: {START_HINT}")
        });
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => panic!("cannot create topic {topic}: {code}: {START_HINT}"),
        }
    }
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    loop {
        let ready = admin
            .inner()
            .fetch_metadata(Some(&name), Duration::from_secs(5))
            .ok()
            .and_then(|metadata| {
                metadata.topics().first().map(|topic| {
                    topic.partitions().len() == partitions as usize
                        && topic.partitions().iter().all(|p| p.leader() >= 0)
                })
            })
            .unwrap_or(false);
        if ready {
            return name;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "topic {name} has no partition leaders after {READY_TIMEOUT:?}: is Kafka healthy? {START_HINT}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A lock on the local stack, held for the duration of a test.
///
/// Tests that need the stack up hold [`StackLock::shared`]; a test that stops a server (e.g.
/// `$SITEWATCH_DEV_STACK pg-stop`) holds [`StackLock::exclusive`] and so runs alone among all
/// tests, in every test binary, that take this lock. (`flock` on one file: works across threads
/// and processes; released when the guard drops, also when a test panics or is killed.)
pub struct StackLock {
    _file: std::fs::File,
}

impl StackLock {
    pub fn shared() -> StackLock {
        Self::lock(libc::LOCK_SH)
    }

    pub fn exclusive() -> StackLock {
        Self::lock(libc::LOCK_EX)
    }

    fn lock(operation: libc::c_int) -> StackLock {
        use std::os::fd::AsRawFd;

        let path = std::env::temp_dir().join("sitewatch-stack-tests.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory is shared.
            if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
                return StackLock { _file: file };
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                panic!("flock {}: {error}", path.display());
            }
        }
    }
}

/// Runs `dev/stack <action>` (start, stop, pause or resume a server of the stack); panics when it
/// fails. Tests that call it hold [`StackLock::exclusive`].
pub fn command(action: &str) {
    assert!(
        try_command(action),
        "dev/stack {action} failed: {START_HINT}"
    );
}

/// As [`command`], for a `Drop` that puts the stack back while a test may be failing: never
/// panics, says whether it worked.
pub fn try_command(action: &str) -> bool {
    std::process::Command::new(get("SITEWATCH_DEV_STACK"))
        .arg(action)
        .status()
        .is_ok_and(|status| status.success())
}
