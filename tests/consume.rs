//! `sitewatch consume` as a separate process against the local stack (`dev/stack up`): results
//! published to Kafka end up in PostgreSQL exactly once across kill -9, a PostgreSQL restart and
//! a consumer-group takeover; poison messages are quarantined with their offsets; duplicate ids
//! are stored once.
//!
//! Every test has its own topic, consumer group and database. The consumer runs as an OS process
//! (`CARGO_BIN_EXE_sitewatch consume`) so that kill -9 is real. Waits are generous and bounded;
//! no timing is asserted.

mod insight;
mod stack;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sitewatch::result::{
    AssertionResult, CheckResult, Failure, FailureKind, Level, Outcome, Phase, Timings,
    SCHEMA_VERSION,
};
use stack::StackLock;
use tokio_postgres::NoTls;
use uuid::Uuid;

/// Upper bound for anything the tests wait for: covers group session timeouts and rebalances on a
/// loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(240);
/// How long a consumer may take to exit after SIGTERM.
const EXIT_WAIT: Duration = Duration::from_secs(30);
/// Results published by the bulk tests.
const BULK: usize = 20_000;
/// Kafka hands a killed member's partitions to the others only when its session times out:
/// 45 s by default, 6 s (the broker's minimum) in these tests. Same takeover path, less waiting.
const FAST_TAKEOVER: &[&str] = &[
    "--kafka-opt",
    "session.timeout.ms=6000",
    "--kafka-opt",
    "heartbeat.interval.ms=1000",
];

/// Log filter under which the consumer reports every committed batch, with the messages it
/// read while that batch was being written.
const BATCH_LOG: &str = "info,sitewatch::consume=debug";

/// A `sitewatch consume` child process whose output goes to a log file (printed on failure).
struct ConsumerProcess {
    name: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ConsumerProcess {
    fn start(name: &str, topic: &str, group: &str, database_url: &str, args: &[&str]) -> Self {
        Self::start_logging(name, topic, group, database_url, args, "info")
    }

    /// [`ConsumerProcess::start`] with `RUST_LOG=log_filter`.
    fn start_logging(
        name: &str,
        topic: &str,
        group: &str,
        database_url: &str,
        args: &[&str],
        log_filter: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sitewatch"))
            .arg("consume")
            .arg("--env-file")
            .arg(stack::env_file())
            .args(FAST_TAKEOVER)
            .args(args)
            .env("SITEWATCH_KAFKA_TOPIC", topic)
            .env("SITEWATCH_KAFKA_GROUP", group)
            .env("SITEWATCH_DATABASE_URL", database_url)
            .env("RUST_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", env!("CARGO_BIN_EXE_sitewatch")));
        ConsumerProcess {
            name: name.to_owned(),
            child,
            log,
            _dir: dir,
        }
    }

    fn log_tail(&self) -> String {
        let Ok(file) = File::open(&self.log) else {
            return String::new();
        };
        let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("--- last lines of consumer {} ---\n{tail}\n---", self.name)
    }

    fn log_contains(&self, needle: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|log| log.contains(needle))
    }

    /// The most messages the consumer decoded into the next batch while one was being written
    /// (`read_meanwhile` of its "batch committed" events, logged with [`BATCH_LOG`]).
    fn most_read_while_writing(&self) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|line| line.contains("batch committed"))
            .filter_map(|line| line.split("read_meanwhile=").nth(1))
            .filter_map(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .max()
            .unwrap_or(0)
    }

    /// Panics (with the log) if the process has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "consumer {} exited with {status}\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    fn kill_9(&mut self) {
        self.assert_running();
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit (a graceful stop commits or drops the batch in hand).
    fn terminate(&mut self) -> ExitStatus {
        self.assert_running();
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + EXIT_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "consumer {} ignored SIGTERM for {EXIT_WAIT:?}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's own view of the database: reconnects after failures (PostgreSQL restarts) and
/// answers `None` while it cannot query (server down, tables not migrated yet).
struct Db {
    url: String,
    client: Option<tokio_postgres::Client>,
}

impl Db {
    fn new(url: &str) -> Self {
        Db {
            url: stack::plain_url(url),
            client: None,
        }
    }

    async fn scalar(&mut self, sql: &str) -> Option<i64> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = match tokio_postgres::connect(&self.url, NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    Some(client)
                }
                Err(_) => None,
            };
        }
        let client = self.client.as_ref()?;
        match client.query_one(sql, &[]).await {
            Ok(row) => Some(row.get::<_, Option<i64>>(0).unwrap_or(0)),
            Err(_) => {
                self.client = None;
                None
            }
        }
    }

    async fn rows(&mut self) -> i64 {
        self.scalar("SELECT count(*) FROM check_results")
            .await
            .unwrap_or(0)
    }

    /// Sum of the stored next offsets of `group`: the number of messages it has consumed.
    async fn consumed(&mut self, group: &str) -> i64 {
        let sql = format!(
            "SELECT sum(next_offset)::bigint FROM consumer_offsets WHERE consumer_group = '{group}'"
        );
        self.scalar(&sql).await.unwrap_or(0)
    }

    async fn client(&mut self) -> &tokio_postgres::Client {
        self.scalar("SELECT 1::bigint").await;
        self.client.as_ref().expect("database reachable")
    }
}

/// Re-evaluates `$ready` (which may `.await`) every 100 ms until true; panics after [`WAIT`] with
/// `$context` (the consumers' log tails).
macro_rules! wait_until {
    ($what:expr, $context:expr, $ready:expr) => {{
        let deadline = Instant::now() + WAIT;
        loop {
            if $ready {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {WAIT:?} waiting for {}\n{}",
                    $what, $context
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }};
}

/// A small deterministic-per-run pseudo-random source (xorshift), seeded from a UUID v7.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = Uuid::now_v7().as_u128() as u64 | 1;
        eprintln!("random seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// When the results of this test process start: three days ago, so their `scheduled_at` (10 s
/// apart, in publishing order) span hours and days of rollups.
fn base() -> chrono::DateTime<Utc> {
    static BASE: std::sync::OnceLock<chrono::DateTime<Utc>> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| Utc::now() - chrono::Duration::days(3))
}

/// Result `n` of a varied stream: 50 sites; down, degraded and maintenance mixed in; timings
/// that differ per result; a phase missing now and then.
fn check_result(n: usize) -> CheckResult {
    let scheduled_at = base() + chrono::Duration::seconds(n as i64 * 10);
    let down = n % 7 == 0;
    let degraded = !down && n % 11 == 0;
    let total_ms = 5.0 + ((n * 7919) % 2000) as f64 / 4.0;
    CheckResult {
        schema: SCHEMA_VERSION,
        id: Uuid::now_v7(),
        site: format!("site-{}", n % 50),
        url: format!("https://site-{}.example/health", n % 50),
        final_url: Some(format!("https://site-{}.example/health", n % 50)),
        scheduled_at,
        started_at: scheduled_at,
        outcome: if down {
            Outcome::Down
        } else if degraded {
            Outcome::Degraded
        } else {
            Outcome::Up
        },
        status: Some(if down { 503 } else { 200 }),
        timings: Timings {
            dns_ms: Some(1.2),
            connect_ms: Some(3.4),
            tls_ms: Some(12.0),
            ttfb_ms: (n % 5 != 0).then_some(total_ms * 0.6),
            transfer_ms: Some(2.25),
            total_ms,
        },
        failure: (down || degraded).then(|| Failure {
            kind: if n % 2 == 0 {
                FailureKind::Timeout
            } else {
                FailureKind::Assertion
            },
            phase: Some(Phase::Ttfb),
            message: "no response within 5s".into(),
        }),
        assertions: vec![AssertionResult {
            name: "status".into(),
            ok: !down,
            level: Level::Fail,
            expected: "200".into(),
            actual: if down { "503" } else { "200" }.into(),
            reason: None,
        }],
        metrics: BTreeMap::from([("items".to_string(), n as f64)]),
        body_bytes: 512,
        body_truncated: false,
        cert_not_after: Some(scheduled_at + chrono::Duration::days(60)),
        tls_insecure: false,
        config_version: "0123456789abcdef".into(),
        attempts: 1,
        probe_host: "probe-test".into(),
        maintenance: (n % 13 == 0).then(|| "weekly".to_string()),
    }
}

/// One message to publish; `header` is the `schema-version` header value, if any.
struct Outgoing {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    header: Option<&'static str>,
}

impl Outgoing {
    /// What the publisher sends for a result: key = site, JSON payload, header "1".
    fn result(result: &CheckResult) -> Self {
        Outgoing {
            key: Some(result.site.clone().into_bytes()),
            payload: Some(serde_json::to_vec(result).unwrap()),
            header: Some("1"),
        }
    }

    fn raw(payload: Option<&[u8]>, header: Option<&'static str>) -> Self {
        Outgoing {
            key: Some(b"poison".to_vec()),
            payload: payload.map(<[u8]>::to_vec),
            header,
        }
    }
}

fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", stack::kafka_brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("test producer")
}

/// Publishes `messages` in order (concurrently in chunks) and waits for every delivery.
async fn publish(producer: &FutureProducer, topic: &str, messages: &[Outgoing]) {
    for chunk in messages.chunks(1000) {
        let sends = chunk.iter().map(|message| {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
            if let Some(key) = &message.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &message.payload {
                record = record.payload(payload.as_slice());
            }
            if let Some(value) = message.header {
                record = record.headers(OwnedHeaders::new().insert(Header {
                    key: "schema-version",
                    value: Some(value),
                }));
            }
            producer.send(record, Duration::from_secs(30))
        });
        for delivery in futures::future::join_all(sends).await {
            if let Err((error, _)) = delivery {
                panic!("publishing to {topic}: {error}: {}", stack::START_HINT);
            }
        }
    }
}

/// The stored rows are exactly `expected`: same count, no id twice, no Kafka offset twice.
async fn assert_exactly_once(db: &mut Db, expected: &HashSet<Uuid>) {
    assert_ids_once(db, expected).await;
    let client = db.client().await;
    let reused: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM check_results \
             GROUP BY kafka_partition, kafka_offset HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reused, 0, "a Kafka message is stored twice");
}

/// The stored rows are exactly `expected`: same count, no id twice (offsets may repeat when the
/// topic's log was replaced).
async fn assert_ids_once(db: &mut Db, expected: &HashSet<Uuid>) {
    let client = db.client().await;
    let ids: Vec<Uuid> = client
        .query("SELECT id FROM check_results", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let distinct: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(ids.len(), distinct.len(), "an id is stored twice");
    assert_eq!(ids.len(), expected.len(), "row count");
    assert!(
        distinct == *expected,
        "stored ids differ from published ids"
    );
}

fn bulk(n: usize) -> (Vec<Outgoing>, HashSet<Uuid>) {
    let results: Vec<CheckResult> = (0..n).map(check_result).collect();
    let ids = results.iter().map(|r| r.id).collect();
    (results.iter().map(Outgoing::result).collect(), ids)
}

/// Is a transaction of a sitewatch connection open in this database right now?
async fn consumer_transaction_open(db: &mut Db) -> bool {
    db.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'sitewatch' AND xact_start IS NOT NULL \
         AND query ILIKE 'COPY%'",
    )
    .await
    .unwrap_or(0)
        > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_across_repeated_kill_9() {
    let _stack = StackLock::shared();
    let topic = stack::fresh_topic(3).await;
    let group = stack::unique_name("sitewatch-test-group");
    let url = stack::fresh_database().await;
    let (messages, ids) = bulk(BULK);
    publish(&producer(), &topic, &messages).await;
    let mut db = Db::new(&url);
    let mut rng = Rng::new();

    let mut killed_mid_copy = false;
    for round in 0..3 {
        // Round 0: default-size batches (one COPY takes a while), killed while it runs.
        // Later rounds: small batches, killed at a random moment of steady consumption.
        let args: &[&str] = if round == 0 {
            &[]
        } else {
            &["--batch-rows", "200", "--batch-wait-ms", "20"]
        };
        let mut consumer =
            ConsumerProcess::start(&format!("round{round}"), &topic, &group, &url, args);
        let before = db.rows().await;
        if round == 0 {
            let deadline = Instant::now() + WAIT;
            while !consumer_transaction_open(&mut db).await {
                consumer.assert_running();
                assert!(
                    Instant::now() < deadline,
                    "no COPY seen\n{}",
                    consumer.log_tail()
                );
            }
            killed_mid_copy = true;
        } else {
            wait_until!(
                "the restarted consumer to make progress",
                consumer.log_tail(),
                {
                    consumer.assert_running();
                    db.rows().await > before
                }
            );
            tokio::time::sleep(Duration::from_millis(rng.below(200))).await;
        }
        consumer.kill_9();
        let stored = db.rows().await;
        eprintln!("round {round}: killed with {stored} rows stored");
        assert!(
            (stored as usize) < BULK,
            "everything was stored before kill {round}: the test did not interrupt consumption"
        );
    }
    assert!(killed_mid_copy);

    let mut consumer = ConsumerProcess::start("final", &topic, &group, &url, &[]);
    wait_until!("all results stored", consumer.log_tail(), {
        db.rows().await >= BULK as i64
    });
    tokio::time::sleep(Duration::from_secs(1)).await; // would let a duplicate show up
    assert!(consumer.terminate().success(), "{}", consumer.log_tail());
    assert_exactly_once(&mut db, &ids).await;
    assert_eq!(db.consumed(&group).await, BULK as i64, "stored offsets");
    assert_insight_and_rebuild(&mut db, &url).await;
    stack::drop_database(&url).await;
}

/// The consumer decodes the next batch while one is written. Stopped (SIGTERM) or killed (-9)
/// with a batch in flight and the next one filling, it still stores every result once: the
/// filling batch never commits ahead of the one in flight, and a graceful stop writes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_when_stopped_while_batches_overlap() {
    let _stack = StackLock::shared();
    let topic = stack::fresh_topic(3).await;
    let group = stack::unique_name("sitewatch-test-group");
    let url = stack::fresh_database().await;
    let (messages, mut ids) = bulk(BULK);
    let producer = producer();
    publish(&producer, &topic, &messages).await;
    let mut db = Db::new(&url);
    let mut rng = Rng::new();
    let args = ["--batch-rows", "500"];

    for round in 0..4 {
        // More before each round, so that every round starts with a backlog to overlap on (a
        // fast round could otherwise leave the next one too little).
        let (wave, wave_ids) = bulk(BULK / 2);
        publish(&producer, &topic, &wave).await;
        ids.extend(wave_ids);
        let name = format!("overlap{round}");
        let mut consumer =
            ConsumerProcess::start_logging(&name, &topic, &group, &url, &args, BATCH_LOG);
        wait_until!(
            "a batch written while the next one filled",
            consumer.log_tail(),
            {
                consumer.assert_running();
                consumer.most_read_while_writing() > 0
            }
        );
        // Now at a random moment with a batch transaction open (the next batch filling).
        tokio::time::sleep(Duration::from_millis(rng.below(100))).await;
        wait_until!("a batch in flight", consumer.log_tail(), {
            consumer.assert_running();
            if db.rows().await >= ids.len() as i64 {
                // Everything stored before a poll caught a COPY open (each is a few ms of a
                // 30-40 ms batch): give the consumer more to do.
                let (wave, wave_ids) = bulk(BULK / 4);
                publish(&producer, &topic, &wave).await;
                ids.extend(wave_ids);
            }
            consumer_transaction_open(&mut db).await
        });
        if round > 0 {
            consumer.kill_9();
        } else {
            // A graceful stop writes the batch in flight, then the one in hand: what is stored
            // is exactly what the stored offsets cover.
            assert!(consumer.terminate().success(), "{}", consumer.log_tail());
            assert_eq!(
                db.rows().await,
                db.consumed(&group).await,
                "rows vs stored offsets after SIGTERM\n{}",
                consumer.log_tail()
            );
        }
        let stored = db.rows().await;
        eprintln!(
            "round {round}: stopped with {stored} rows stored, up to {} messages read while \
             a batch was written",
            consumer.most_read_while_writing()
        );
        assert!(
            (stored as usize) < ids.len(),
            "everything was stored before stop {round}: the test did not interrupt consumption"
        );
    }

    let mut consumer = ConsumerProcess::start("final", &topic, &group, &url, &[]);
    wait_until!("all results stored", consumer.log_tail(), {
        db.rows().await >= ids.len() as i64
    });
    tokio::time::sleep(Duration::from_secs(1)).await; // would let a duplicate show up
    assert!(consumer.terminate().success(), "{}", consumer.log_tail());
    assert_exactly_once(&mut db, &ids).await;
    assert_eq!(
        db.consumed(&group).await,
        ids.len() as i64,
        "stored offsets"
    );
    assert_insight_and_rebuild(&mut db, &url).await;
    stack::drop_database(&url).await;
}

/// Rollups and states went in with the rows, so a crash neither lost nor doubled them; and a
/// rebuild from the raw rows reproduces the live rollups.
async fn assert_insight_and_rebuild(db: &mut Db, url: &str) {
    insight::assert_insight_matches_raw(db.client().await).await;
    let live_hourly = insight::rollups(db.client().await, "rollup_hourly").await;
    let live_daily = insight::rollups(db.client().await, "rollup_daily").await;
    let from = base().to_rfc3339();
    let to = (base() + chrono::Duration::days(4)).to_rfc3339();
    let rebuild = Command::new(env!("CARGO_BIN_EXE_sitewatch"))
        .args([
            "rollup",
            "rebuild",
            "--from",
            &from,
            "--to",
            &to,
            "--env-file",
        ])
        .arg(stack::env_file())
        .env("SITEWATCH_DATABASE_URL", url)
        .output()
        .unwrap();
    assert!(
        rebuild.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuild.stderr)
    );
    insight::assert_same_rollups(
        &live_hourly,
        &insight::rollups(db.client().await, "rollup_hourly").await,
    );
    insight::assert_same_rollups(
        &live_daily,
        &insight::rollups(db.client().await, "rollup_daily").await,
    );
}

/// Restarts the stack's PostgreSQL when dropped, so a failing test does not leave it down.
struct StartPostgresOnDrop;

impl Drop for StartPostgresOnDrop {
    fn drop(&mut self) {
        stack::try_command("pg-start");
    }
}

/// Stops the shared PostgreSQL: holds the stack lock exclusively, so every test that takes the
/// lock (all of tests/consume.rs and tests/store.rs) waits meanwhile. Test files that do not take
/// `stack::StackLock::shared()` can see PostgreSQL vanish while this runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_no_duplicates_across_a_postgresql_restart() {
    let _stack = StackLock::exclusive();
    let topic = stack::fresh_topic(2).await;
    let group = stack::unique_name("sitewatch-test-group");
    let url = stack::fresh_database().await;
    let (messages, ids) = bulk(BULK);
    let (first, second) = messages.split_at(BULK / 2);
    let producer = producer();
    publish(&producer, &topic, first).await;
    let mut db = Db::new(&url);

    let mut consumer =
        ConsumerProcess::start("pg-restart", &topic, &group, &url, &["--batch-rows", "500"]);
    wait_until!("the first rows", consumer.log_tail(), db.rows().await > 0);

    let restart = StartPostgresOnDrop;
    stack::command("pg-stop");
    publish(&producer, &topic, second).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    consumer.assert_running();
    stack::command("pg-start");
    drop(restart);

    wait_until!(
        "all results stored after the restart",
        consumer.log_tail(),
        {
            consumer.assert_running();
            db.rows().await >= BULK as i64
        }
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The outage really hit a batch (the consumer's warning when it keeps a batch for retry).
    assert!(
        consumer.log_contains("cannot store the batch"),
        "the consumer never had to retry a batch\n{}",
        consumer.log_tail()
    );
    assert!(consumer.terminate().success(), "{}", consumer.log_tail());
    assert_exactly_once(&mut db, &ids).await;
    assert_eq!(db.consumed(&group).await, BULK as i64, "stored offsets");
    assert_insight_and_rebuild(&mut db, &url).await;
    stack::drop_database(&url).await;
}

/// [`group_assignment`] off the async runtime (it blocks on a broker request).
async fn assignment(group: &str, topic: &str) -> Vec<BTreeSet<i32>> {
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || group_assignment(&group, &topic))
        .await
        .unwrap()
}

/// Partitions of `topic` assigned to each member of `group` (classic protocol assignment).
fn group_assignment(group: &str, topic: &str) -> Vec<BTreeSet<i32>> {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack::kafka_brokers())
        .set("group.id", format!("{group}-probe"))
        .create()
        .expect("probe consumer");
    let Ok(groups) = probe.fetch_group_list(Some(group), Duration::from_secs(5)) else {
        return Vec::new();
    };
    groups
        .groups()
        .iter()
        .flat_map(|g| g.members())
        .map(|member| {
            member
                .assignment()
                .map(|bytes| parse_assignment(bytes, topic))
                .unwrap_or_default()
        })
        .collect()
}

/// Decodes a ConsumerProtocolAssignment: version i16, [topic string, [partition i32]], userdata.
fn parse_assignment(bytes: &[u8], wanted: &str) -> BTreeSet<i32> {
    let mut partitions = BTreeSet::new();
    let mut at = 2; // version
    let mut take = |n: usize| -> Option<&[u8]> {
        let slice = bytes.get(at..at + n)?;
        at += n;
        Some(slice)
    };
    let mut read = || -> Option<()> {
        let topics = i32::from_be_bytes(take(4)?.try_into().ok()?);
        for _ in 0..topics {
            let len = i16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
            let name = String::from_utf8_lossy(take(len)?).into_owned();
            let count = i32::from_be_bytes(take(4)?.try_into().ok()?);
            for _ in 0..count {
                let partition = i32::from_be_bytes(take(4)?.try_into().ok()?);
                if name == wanted {
                    partitions.insert(partition);
                }
            }
        }
        Some(())
    };
    let _ = read();
    partitions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_split_partitions_and_the_survivor_takes_over() {
    let _stack = StackLock::shared();
    let topic = stack::fresh_topic(4).await;
    let group = stack::unique_name("sitewatch-test-group");
    let url = stack::fresh_database().await;
    let args = ["--batch-rows", "200", "--batch-wait-ms", "50"];
    // Started together: both migrate the fresh database at once (the advisory lock serialises).
    let mut a = ConsumerProcess::start("a", &topic, &group, &url, &args);
    let mut b = ConsumerProcess::start("b", &topic, &group, &url, &args);
    wait_until!(
        "two members with two partitions each",
        format!("{}\n{}", a.log_tail(), b.log_tail()),
        {
            a.assert_running();
            b.assert_running();
            let members = assignment(&group, &topic).await;
            members.len() == 2 && members.iter().all(|p| p.len() == 2)
        }
    );

    // Publish while both consume, kill one of them part-way through.
    let (messages, ids) = bulk(BULK);
    let publisher = {
        let topic = topic.clone();
        tokio::spawn(async move {
            let producer = producer();
            for wave in messages.chunks(1000) {
                publish(&producer, &topic, wave).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut db = Db::new(&url);
    wait_until!(
        "a quarter of the results",
        format!("{}\n{}", a.log_tail(), b.log_tail()),
        db.rows().await >= BULK as i64 / 4
    );
    a.kill_9();
    eprintln!("killed consumer a with {} rows stored", db.rows().await);
    publisher.await.unwrap();

    wait_until!("the survivor to store everything", b.log_tail(), {
        b.assert_running();
        db.rows().await >= BULK as i64
    });
    let survivor = assignment(&group, &topic).await;
    assert_eq!(
        survivor,
        vec![BTreeSet::from([0, 1, 2, 3])],
        "the survivor owns every partition"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(b.terminate().success(), "{}", b.log_tail());
    assert_exactly_once(&mut db, &ids).await;
    assert_eq!(db.consumed(&group).await, BULK as i64, "stored offsets");
    assert_insight_and_rebuild(&mut db, &url).await;
    stack::drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_quarantined_with_their_offsets() {
    let _stack = StackLock::shared();
    let topic = stack::fresh_topic(1).await;
    let group = stack::unique_name("sitewatch-test-group");
    let url = stack::fresh_database().await;
    let good: Vec<CheckResult> = (0..5).map(check_result).collect();
    let mut future = check_result(99);
    future.schema = 2;
    let mut nul = check_result(98);
    nul.site = "bad\0site".into();
    let random: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(151) ^ 0xa5).collect();
    let wrong_shape = br#"{"hello": "world", "schema": 1}"#.to_vec();
    let mut no_header = Outgoing::result(&good[1]);
    no_header.header = None;
    let mut header_2 = Outgoing::result(&good[2]);
    header_2.header = Some("2");
    // (offset, message, expected dead-letter reason or None if stored)
    let plan: Vec<(Outgoing, Option<&str>)> = vec![
        (Outgoing::result(&good[0]), None),
        (
            Outgoing::raw(Some(&random), Some("1")),
            Some("invalid JSON"),
        ),
        (no_header, None),
        (
            Outgoing::raw(Some(&wrong_shape), Some("1")),
            Some("not a check result"),
        ),
        (
            Outgoing::result(&future),
            Some("schema version 2 is not supported"),
        ),
        (
            header_2,
            Some("schema-version header \"2\" is not supported"),
        ),
        (Outgoing::result(&good[3]), None),
        (Outgoing::raw(None, Some("1")), Some("empty message")),
        (Outgoing::result(&nul), Some("NUL")),
        (Outgoing::result(&good[4]), None),
    ];
    let expected_reasons: BTreeMap<i64, &str> = plan
        .iter()
        .enumerate()
        .filter_map(|(offset, (_, reason))| reason.map(|r| (offset as i64, r)))
        .collect();
    let payloads: Vec<Option<Vec<u8>>> = plan.iter().map(|(m, _)| m.payload.clone()).collect();
    let producer = producer();
    for (message, _) in &plan {
        // One at a time: offsets are the plan's indexes.
        publish(&producer, &topic, std::slice::from_ref(message)).await;
    }

    let mut consumer = ConsumerProcess::start("poison", &topic, &group, &url, &[]);
    let mut db = Db::new(&url);
    wait_until!(
        "every message consumed",
        consumer.log_tail(),
        db.consumed(&group).await >= plan.len() as i64
    );
    assert!(consumer.terminate().success(), "{}", consumer.log_tail());

    let client = db.client().await;
    let stored: BTreeMap<i64, Uuid> = client
        .query("SELECT kafka_offset, id FROM check_results", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let expected_stored: BTreeMap<i64, Uuid> = [
        (0, good[0].id),
        (2, good[1].id),
        (6, good[3].id),
        (9, good[4].id),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        stored, expected_stored,
        "the valid results around the poison are stored"
    );

    let letters = client
        .query(
            "SELECT kafka_offset, partition, topic, reason, payload FROM dead_letters ORDER BY kafka_offset",
            &[],
        )
        .await
        .unwrap();
    let offsets: Vec<i64> = letters.iter().map(|row| row.get(0)).collect();
    assert_eq!(
        offsets,
        expected_reasons.keys().copied().collect::<Vec<_>>()
    );
    for row in &letters {
        let offset: i64 = row.get(0);
        let reason: String = row.get(3);
        assert_eq!(row.get::<_, i32>(1), 0);
        assert_eq!(row.get::<_, String>(2), topic);
        assert!(
            reason.contains(expected_reasons[&offset]),
            "offset {offset}: {reason}"
        );
        assert_eq!(
            row.get::<_, Option<Vec<u8>>>(4),
            payloads[offset as usize],
            "offset {offset}: payload kept as it arrived"
        );
    }
    stack::drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_id_is_stored_once() {
    let _stack = StackLock::shared();
    let topic = stack::fresh_topic(1).await;
    let group = stack::unique_name("sitewatch-test-group");
    let url = stack::fresh_database().await;
    let results: Vec<CheckResult> = (0..4).map(check_result).collect();
    let producer = producer();
    let mut consumer = ConsumerProcess::start("duplicates", &topic, &group, &url, &[]);
    let mut db = Db::new(&url);

    // Within one batch: r0 twice.
    let wave: Vec<Outgoing> = [0, 1, 0, 2]
        .iter()
        .map(|&i| Outgoing::result(&results[i]))
        .collect();
    publish(&producer, &topic, &wave).await;
    wait_until!(
        "the first wave",
        consumer.log_tail(),
        db.consumed(&group).await >= 4
    );
    // In a later batch: r1 again, already stored.
    let wave: Vec<Outgoing> = [1, 3]
        .iter()
        .map(|&i| Outgoing::result(&results[i]))
        .collect();
    publish(&producer, &topic, &wave).await;
    wait_until!(
        "the second wave",
        consumer.log_tail(),
        db.consumed(&group).await >= 6
    );
    assert!(consumer.terminate().success(), "{}", consumer.log_tail());

    let ids: HashSet<Uuid> = results.iter().map(|r| r.id).collect();
    assert_exactly_once(&mut db, &ids).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM dead_letters").await,
        Some(0)
    );
    // The duplicates were absorbed by the fallback path: counted once in rollups and states.
    insight::assert_insight_matches_raw(db.client().await).await;
    stack::drop_database(&url).await;
}

/// The storing consumer keeps the running totals of the rollups it writes (src/store/running.rs):
/// a minute after it starts, every site is summed through the last settled hour, and each
/// site's last running row equals its hourly rows added up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_keeps_running_totals_of_its_rollups() {
    let _stack = StackLock::shared();
    let topic = stack::fresh_topic(2).await;
    let group = stack::unique_name("sitewatch-test-group");
    let url = stack::fresh_database().await;
    // 3,000 results 10 s apart from three days ago: about 8 hours of 50 sites, all settled.
    let (messages, ids) = bulk(3_000);
    publish(&producer(), &topic, &messages).await;
    let mut consumer = ConsumerProcess::start("running", &topic, &group, &url, &[]);
    let mut db = Db::new(&url);
    wait_until!("all results stored", consumer.log_tail(), {
        consumer.assert_running();
        db.consumed(&group).await >= 3_000
    });
    // Its first extension comes a minute after it started, with everything stored.
    let settled = sitewatch::store::running::settled_hour(Utc::now());
    wait_until!("every site summed", consumer.log_tail(), {
        consumer.assert_running();
        db.scalar(&format!(
            "SELECT count(*) FROM rollup_running_sites WHERE through >= '{}'",
            settled.to_rfc3339()
        ))
        .await
            == Some(50)
    });
    assert!(consumer.terminate().success(), "{}", consumer.log_tail());
    assert_exactly_once(&mut db, &ids).await;
    let wrong = db
        .scalar(
            "SELECT count(*) FROM rollup_running_sites AS s \
               JOIN rollup_running AS r ON r.site = s.site AND r.bucket = s.last \
               JOIN (SELECT site, sum(checks) AS checks, sum(down) AS down, \
                            sum(maintenance) AS maintenance, sum(total_count) AS total_count \
                       FROM rollup_hourly GROUP BY site) AS h ON h.site = s.site \
              WHERE (r.checks, r.down, r.maintenance, r.total_count) \
                    IS DISTINCT FROM (h.checks, h.down, h.maintenance, h.total_count)",
        )
        .await;
    assert_eq!(wrong, Some(0), "running totals equal the hourly rows");
    // The running downtime and change counts the consumer wrote with its changes.
    let changes = db.scalar("SELECT count(*) FROM state_changes").await;
    assert!(changes > Some(50), "state changes stored: {changes:?}");
    let miscounted = db
        .scalar(
            "SELECT count(*) FROM ( \
                 SELECT down_us, changes, \
                        sum(CASE WHEN prev_to = 'down' \
                                 THEN (extract(epoch FROM at - prev_at) * 1000000)::bigint \
                                 ELSE 0 END) OVER w AS want_down, \
                        count(*) FILTER (WHERE from_outcome IS NOT NULL) OVER w AS want_changes \
                   FROM (SELECT *, lag(to_outcome) OVER o AS prev_to, lag(at) OVER o AS prev_at \
                           FROM state_changes WINDOW o AS (PARTITION BY site ORDER BY at, id)) AS s \
                 WINDOW w AS (PARTITION BY site ORDER BY at, id)) AS x \
              WHERE (down_us, changes) IS DISTINCT FROM (want_down, want_changes)",
        )
        .await;
    assert_eq!(
        miscounted,
        Some(0),
        "running downtime on every state change"
    );
    stack::drop_database(&url).await;
}

/// A consumer frozen in the middle of its batch transaction (SIGSTOP: a paused VM, a stuck
/// process) holds the consumer_offsets row locks. PostgreSQL's session limits abort its
/// transaction, so the member that takes its partitions over stores everything, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_consumer_does_not_stall_the_group() {
    let _stack = StackLock::shared();
    let topic = stack::fresh_topic(1).await;
    let group = stack::unique_name("sitewatch-test-group");
    let url = stack::fresh_database().await;
    let (messages, ids) = bulk(BULK);
    publish(&producer(), &topic, &messages).await;
    let mut db = Db::new(&url);

    let mut frozen = ConsumerProcess::start("frozen", &topic, &group, &url, &[]);
    let deadline = Instant::now() + WAIT;
    while !consumer_transaction_open(&mut db).await {
        frozen.assert_running();
        assert!(
            Instant::now() < deadline,
            "no COPY seen\n{}",
            frozen.log_tail()
        );
    }
    frozen.signal(libc::SIGSTOP);
    let started = Instant::now();
    let mut survivor = ConsumerProcess::start("survivor", &topic, &group, &url, &[]);
    wait_until!("the survivor to store everything", survivor.log_tail(), {
        survivor.assert_running();
        db.rows().await >= BULK as i64
    });
    eprintln!(
        "took over a frozen member's partition in {:?}",
        started.elapsed()
    );
    frozen.signal(libc::SIGCONT);
    tokio::time::sleep(Duration::from_secs(2)).await; // a duplicate would show up now
    frozen.kill_9();
    assert!(survivor.terminate().success(), "{}", survivor.log_tail());
    assert_exactly_once(&mut db, &ids).await;
    assert_eq!(db.consumed(&group).await, BULK as i64, "stored offsets");
    stack::drop_database(&url).await;
}

/// An admin client for the test broker.
fn admin() -> rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", stack::kafka_brokers())
        .create()
        .expect("Kafka admin client")
}

/// Deletes `topic` and creates it again, empty, with one partition (deletion is asynchronous:
/// creating retries until the old one is gone).
async fn replace_topic(topic: &str) {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    let admin = admin();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    admin
        .delete_topics(&[topic], &options)
        .await
        .expect("delete topic");
    let deadline = Instant::now() + WAIT;
    loop {
        let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
        let created = admin
            .create_topics([&new], &options)
            .await
            .expect("create topic");
        if created.iter().all(Result::is_ok) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} not created again: {created:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The consumer's stored offset outlives the log it points into. A topic deleted and created
/// again (or a broker that lost its data) starts over at offset 0: the new messages are read
/// from the start of the new log and stored, not skipped as "already stored" below the old
/// offset. Messages deleted by retention before they were stored are counted and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_log_is_read_from_its_start_and_a_retention_gap_is_reported() {
    let _stack = StackLock::shared();
    let topic = stack::fresh_topic(1).await;
    let group = stack::unique_name("sitewatch-test-group");
    let url = stack::fresh_database().await;
    let producer = producer();
    let mut db = Db::new(&url);
    let (first, mut ids) = bulk(30);

    let mut consumer = ConsumerProcess::start("before", &topic, &group, &url, &[]);
    publish(&producer, &topic, &first).await;
    wait_until!(
        "the first 30",
        consumer.log_tail(),
        db.scalar("SELECT count(*) FROM check_results")
            .await
            .unwrap_or(0)
            >= 30
    );
    assert!(consumer.terminate().success(), "{}", consumer.log_tail());

    // The stored offset is 30; the new log holds 10 messages, at offsets 0 to 9.
    replace_topic(&topic).await;
    let (second, second_ids) = bulk(10);
    ids.extend(second_ids);
    publish(&producer, &topic, &second).await;
    let mut consumer = ConsumerProcess::start("after", &topic, &group, &url, &[]);
    wait_until!(
        "the new log's 10",
        consumer.log_tail(),
        db.scalar("SELECT count(*) FROM check_results")
            .await
            .unwrap_or(0)
            >= 40
    );
    assert!(
        consumer.log_tail().contains("the log was replaced"),
        "{}",
        consumer.log_tail()
    );
    assert!(consumer.terminate().success(), "{}", consumer.log_tail());
    assert_ids_once(&mut db, &ids).await;
    assert_eq!(
        db.consumed(&group).await,
        10,
        "the offset follows the new log"
    );

    // Ten more while no consumer runs (offsets 10 to 19), of which retention deletes the first
    // four before they are stored.
    let (third, _) = bulk(10);
    publish(&producer, &topic, &third).await;
    let mut cut = rdkafka::TopicPartitionList::new();
    cut.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(14))
        .unwrap();
    let options = rdkafka::admin::AdminOptions::new();
    admin()
        .delete_records(&cut, &options)
        .await
        .expect("delete records");
    ids.extend(ids_in_order(&third).into_iter().skip(4));
    let mut consumer = ConsumerProcess::start("gap", &topic, &group, &url, &[]);
    wait_until!(
        "the six left",
        consumer.log_tail(),
        db.scalar("SELECT count(*) FROM check_results")
            .await
            .unwrap_or(0)
            >= 46
    );
    wait_until!(
        "the warning about the gap",
        consumer.log_tail(),
        consumer.log_tail().contains("lost=4")
    );
    assert!(consumer.terminate().success(), "{}", consumer.log_tail());
    assert_ids_once(&mut db, &ids).await;
    assert_eq!(db.consumed(&group).await, 20);
    stack::drop_database(&url).await;
}

/// The ids of `messages`, in publishing order.
fn ids_in_order(messages: &[Outgoing]) -> Vec<Uuid> {
    messages
        .iter()
        .map(|m| {
            let result: CheckResult =
                serde_json::from_slice(m.payload.as_deref().expect("a result")).unwrap();
            result.id
        })
        .collect()
}

/// After a failover the old primary is a standby: writes fail with SQLSTATE 25006 (read-only
/// transaction). That is transient — the consumer keeps its batch and retries on a new
/// connection until it reaches a writable server — not a reason to stop. Emulated on one
/// database: new sessions start read-only, and the consumer's sessions are ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_server_after_a_failover_is_waited_out() {
    let _stack = StackLock::shared();
    let topic = stack::fresh_topic(1).await;
    let group = stack::unique_name("sitewatch-test-group");
    let url = stack::fresh_database().await;
    let (messages, ids) = bulk(40);
    let (first, second) = messages.split_at(20);
    let producer = producer();
    let mut db = Db::new(&url);
    let mut consumer = ConsumerProcess::start("read-only", &topic, &group, &url, &[]);
    publish(&producer, &topic, first).await;
    wait_until!("the first 20", consumer.log_tail(), db.rows().await >= 20);

    let admin = db.client().await;
    let name: String = admin
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    let set = |on: bool| {
        format!(
            "ALTER DATABASE \"{name}\" SET default_transaction_read_only = {}",
            if on { "on" } else { "off" }
        )
    };
    admin.batch_execute(&set(true)).await.unwrap();
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'sitewatch'",
        )
        .await
        .unwrap();
    publish(&producer, &topic, second).await;
    wait_until!(
        "a write refused as read-only",
        consumer.log_tail(),
        consumer.log_contains("read-only transaction")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    consumer.assert_running();
    assert_eq!(db.rows().await, 20, "nothing stored while read-only");

    // The "new primary" accepts writes again: the kept batch is stored, exactly once.
    db.client().await.batch_execute(&set(false)).await.unwrap();
    wait_until!("all 40", consumer.log_tail(), {
        consumer.assert_running();
        db.rows().await >= 40
    });
    assert!(consumer.terminate().success(), "{}", consumer.log_tail());
    assert_exactly_once(&mut db, &ids).await;
    stack::drop_database(&url).await;
}
