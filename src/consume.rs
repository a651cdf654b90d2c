//! The consumer: check results from Kafka into PostgreSQL, exactly once.
//!
//! ```text
//! Kafka topic ──StreamConsumer (group, no auto-commit)──► decode ──► batch: rows | dead letters
//!     ▲                                                                │ max_batch_rows rows or
//!     │ seek every assigned partition to consumer_offsets              │ max_batch_wait after its
//!     │                                                                ▼ first message
//!     └────────────── store::write_batch: rows + dead letters + next offsets, ONE transaction
//! ```
//!
//! PostgreSQL, not Kafka, holds the consumer's position: `consumer_offsets` is advanced in the
//! transaction that stores the rows it covers, and every partition assigned to this consumer is
//! first seeked to the offset stored there. Messages read before that seek, or older than the
//! stored offset, are skipped. The offset update is conditional on the value this consumer read,
//! so a consumer that lost its partitions without noticing cannot store a batch twice. When
//! PostgreSQL is away the batch in hand is kept, no more is read, and the same batch is retried
//! with capped exponential backoff. `docs/storage.md` makes the whole argument.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::result::{CheckResult, SCHEMA_HEADER, SCHEMA_VERSION};
use crate::settings::{DatabaseSettings, KafkaSettings};
use crate::store::{
    self, CheckRow, DeadLetter, ErrorChain, OffsetAdvance, PendingRow, StoreError, WriteBatch,
    WriteOutcome,
};

/// Rows per transaction when the topic has a backlog: 5k is where binary COPY stops getting
/// faster on the reference machine (docs/storage.md), and a batch stays a few MB.
pub const DEFAULT_MAX_BATCH_ROWS: usize = 5000;
/// How long the first message of a batch waits for company: bounds storage latency when the
/// topic is quiet.
pub const DEFAULT_MAX_BATCH_WAIT: Duration = Duration::from_millis(200);

/// First delay before retrying PostgreSQL; doubles up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between PostgreSQL retries: an outage is noticed to be over within this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A write that takes longer is treated as a dead connection (dropped, reconnected, retried).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a seek may wait for librdkafka to acknowledge it (a local operation).
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
/// Delay before seeking again a partition librdkafka was not yet ready to seek (fetcher not
/// started right after the assignment).
const SEEK_RETRY: Duration = Duration::from_millis(100);
/// librdkafka statistics period; the lag gauge is refreshed at this rate.
const STATISTICS_INTERVAL_MS: &str = "5000";

/// How the consumer batches. The CLI passes these through; [`Default`] is the library's choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// Messages (rows and dead letters) per transaction at most.
    pub max_batch_rows: usize,
    /// Age of a batch's first message after which the batch is written even if not full.
    pub max_batch_wait: Duration,
    /// Apply pending migrations before consuming (`--no-migrate` turns it off when a deploy
    /// step migrates instead).
    pub migrate: bool,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions {
            max_batch_rows: DEFAULT_MAX_BATCH_ROWS,
            max_batch_wait: DEFAULT_MAX_BATCH_WAIT,
            migrate: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("cannot prepare PostgreSQL for consuming")]
    Startup {
        #[source]
        source: Box<StoreError>,
    },
    #[error("cannot create the Kafka consumer (brokers {brokers}, group {group})")]
    Consumer {
        brokers: String,
        group: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("cannot subscribe to Kafka topic {topic}")]
    Subscribe {
        topic: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("fatal Kafka consumer error on topic {topic}")]
    Kafka {
        topic: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("PostgreSQL refused the consumer's work with an error retrying cannot fix (topic {topic}, group {group})")]
    Store {
        topic: String,
        group: String,
        #[source]
        source: Box<StoreError>,
    },
}

/// Consumes `kafka.topic` in group `kafka.group` into PostgreSQL until `shutdown` is cancelled;
/// then the batch in hand is committed or rolled back as a whole and `Ok` is returned.
///
/// Fails at startup when PostgreSQL cannot be reached or migrated, and later only on errors
/// that retrying cannot fix (authentication, missing schema, fatal Kafka errors). Transient
/// PostgreSQL failures are retried forever, without reading further.
#[tracing::instrument(skip_all, fields(topic = %kafka.topic, group = %kafka.group))]
pub async fn run(
    kafka: &KafkaSettings,
    db: &DatabaseSettings,
    options: ConsumeOptions,
    shutdown: CancellationToken,
) -> Result<(), ConsumeError> {
    let mut client = store::connect(db)
        .await
        .map_err(|source| ConsumeError::Startup {
            source: Box::new(source),
        })?;
    if options.migrate {
        let report = store::migrate(&mut client)
            .await
            .map_err(|source| ConsumeError::Startup {
                source: Box::new(source),
            })?;
        tracing::info!(
            applied = report.applied.len(),
            already_applied = report.already_applied,
            "schema up to date"
        );
    }
    let consumer = create_consumer(kafka)?;
    consumer
        .subscribe(&[&kafka.topic])
        .map_err(|source| ConsumeError::Subscribe {
            topic: kafka.topic.clone(),
            source: Box::new(source),
        })?;
    tracing::info!(
        max_batch_rows = options.max_batch_rows,
        max_batch_wait_ms = options.max_batch_wait.as_millis() as u64,
        "consuming"
    );
    let mut sink = Sink {
        settings: db,
        client: Some(client),
        group: &kafka.group,
        topic: &kafka.topic,
        backoff: Backoff::default(),
    };
    let mut batcher = Batcher::new(&kafka.topic);
    let result = consume(&consumer, &mut sink, &mut batcher, &options, &shutdown).await;
    consumer.unsubscribe();
    tracing::info!("consumer stopped");
    result
}

fn create_consumer(kafka: &KafkaSettings) -> Result<StreamConsumer<SinkContext>, ConsumeError> {
    let mut config: ClientConfig = kafka.client_config();
    config.set("group.id", &kafka.group);
    // Our choices, unless the operator overrode one with an explicit extra option.
    for (key, value) in [
        // Kafka's committed offsets are only for lag dashboards; PostgreSQL holds the position.
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        // A partition without a stored offset is read from its first message.
        ("auto.offset.reset", "earliest"),
        ("enable.partition.eof", "false"),
        ("statistics.interval.ms", STATISTICS_INTERVAL_MS),
        ("client.id", "sitewatch-consumer"),
    ] {
        if !kafka.extra.iter().any(|(k, _)| k == key) {
            config.set(key, value);
        }
    }
    config
        .create_with_context(SinkContext::new(&kafka.topic))
        .map_err(|source| ConsumeError::Consumer {
            brokers: kafka.brokers.clone(),
            group: kafka.group.clone(),
            source: Box::new(source),
        })
}

/// The consume loop: position, batch, flush; returns when `shutdown` is cancelled.
async fn consume(
    consumer: &StreamConsumer<SinkContext>,
    sink: &mut Sink<'_>,
    batcher: &mut Batcher,
    options: &ConsumeOptions,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    let max_rows = options.max_batch_rows.max(1);
    loop {
        batcher.apply(consumer.context().take_events());
        let now = Instant::now();
        if batcher.positioning_due(now) {
            sink.position(consumer, batcher).await?;
        }
        if batcher.is_due(max_rows, options.max_batch_wait, now) {
            sink.flush(consumer, batcher, shutdown).await?;
            if shutdown.is_cancelled() {
                return Ok(());
            }
            continue;
        }
        let wake_at = [
            batcher.deadline(options.max_batch_wait),
            batcher.positioning_at(),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = consumer.context().wake.notified() => {}
            _ = sleep_until(wake_at), if wake_at.is_some() => {}
            message = consumer.recv() => {
                // A rebalance runs inside recv(): apply it before looking at the message.
                batcher.apply(consumer.context().take_events());
                match message {
                    Ok(message) => batcher.accept(&message),
                    Err(error) => on_kafka_error(sink.topic, error)?,
                }
            }
        }
    }
    if batcher.len() > 0 {
        tracing::info!(
            messages = batcher.len(),
            "shutting down: writing the batch in hand"
        );
        sink.flush(consumer, batcher, shutdown).await?;
    }
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn on_kafka_error(topic: &str, error: KafkaError) -> Result<(), ConsumeError> {
    let fatal = matches!(error, KafkaError::MessageConsumptionFatal(_))
        || error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal);
    if fatal {
        return Err(ConsumeError::Kafka {
            topic: topic.to_owned(),
            source: Box::new(error),
        });
    }
    // Broker down, topic not created yet, …: librdkafka retries by itself.
    tracing::warn!(%error, "Kafka consumer error (librdkafka retries)");
    Ok(())
}

/// Decodes one message into a result, or gives the reason it goes to `dead_letters`: not JSON,
/// not a [`CheckResult`], or a schema version (header or field) other than [`SCHEMA_VERSION`].
pub(crate) fn decode(
    payload: Option<&[u8]>,
    schema_header: Option<&[u8]>,
) -> Result<CheckResult, String> {
    if let Some(value) = schema_header {
        let version = String::from_utf8_lossy(value);
        if version.trim() != SCHEMA_VERSION.to_string() {
            return Err(format!(
                "{SCHEMA_HEADER} header {version:?} is not supported (this consumer reads {SCHEMA_VERSION})"
            ));
        }
    }
    let payload = match payload {
        Some(payload) if !payload.is_empty() => payload,
        _ => return Err("empty message: no payload".into()),
    };
    let schema_error = |version: &dyn std::fmt::Display| {
        format!("schema version {version} is not supported (this consumer reads {SCHEMA_VERSION})")
    };
    match serde_json::from_slice::<CheckResult>(payload) {
        Ok(result) if result.schema == SCHEMA_VERSION => Ok(result),
        Ok(result) => Err(schema_error(&result.schema)),
        // Slow path, bad messages only: say precisely what is wrong.
        Err(shape) => match serde_json::from_slice::<serde_json::Value>(payload) {
            Err(syntax) => Err(format!("invalid JSON: {syntax}")),
            Ok(value) => match value.get("schema") {
                Some(version) if *version != serde_json::json!(SCHEMA_VERSION) => {
                    Err(schema_error(version))
                }
                _ => Err(format!("not a check result: {shape}")),
            },
        },
    }
}

/// What the rebalance callback hands to the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Assignment {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// librdkafka callbacks. Rebalances run inside `recv()`; they only record what changed, and the
/// loop applies it before the next message (drop revoked data, seek assigned partitions).
struct SinkContext {
    topic: String,
    events: Mutex<Vec<Assignment>>,
    /// Wakes the loop when a rebalance happened while it was waiting.
    wake: Notify,
    /// Stored next offset of each owned partition, for the lag gauge.
    stored: Mutex<HashMap<i32, i64>>,
}

impl SinkContext {
    fn new(topic: &str) -> Self {
        SinkContext {
            topic: topic.to_owned(),
            events: Mutex::new(Vec::new()),
            wake: Notify::new(),
            stored: Mutex::new(HashMap::new()),
        }
    }

    fn take_events(&self) -> Vec<Assignment> {
        std::mem::take(&mut *lock(&self.events))
    }

    fn partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements_for_topic(&self.topic)
            .iter()
            .map(|element| element.partition())
            .collect()
    }

    fn set_stored(&self, partition: i32, next_offset: Option<i64>) {
        let mut stored = lock(&self.stored);
        match next_offset {
            Some(offset) => stored.insert(partition, offset),
            None => stored.remove(&partition),
        };
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain data; keep going.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let stored = lock(&self.stored);
        for (partition, stats) in &topic.partitions {
            if let Some(next) = stored.get(partition) {
                if stats.hi_offset >= 0 {
                    metrics::gauge!(
                        "sitewatch_consumer_lag",
                        "topic" => self.topic.clone(),
                        "partition" => partition.to_string()
                    )
                    .set((stats.hi_offset - next).max(0) as f64);
                }
            }
        }
    }
}

impl ConsumerContext for SinkContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let event = match rebalance {
            Rebalance::Assign(list) => Assignment::Assigned(self.partitions(list)),
            Rebalance::Revoke(list) => {
                let partitions = self.partitions(list);
                for partition in &partitions {
                    self.set_stored(*partition, None);
                    // This consumer no longer reports the partition's lag.
                    metrics::gauge!(
                        "sitewatch_consumer_lag",
                        "topic" => self.topic.clone(),
                        "partition" => partition.to_string()
                    )
                    .set(0.0);
                }
                Assignment::Revoked(partitions)
            }
            Rebalance::Error(error) => {
                tracing::warn!(%error, "Kafka rebalance error");
                return;
            }
        };
        tracing::info!(?event, "partition assignment changed");
        lock(&self.events).push(event);
        self.wake.notify_one();
    }
}

/// Where this consumer is in one owned, positioned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PartitionState {
    /// `consumer_offsets.next_offset` as this consumer last read or wrote it (`None`: no row).
    stored: Option<i64>,
    /// The next offset to accept: one past the last message batched.
    next: Option<i64>,
}

/// The batch being filled and the per-partition bookkeeping that decides what enters it.
#[derive(Debug)]
struct Batcher {
    topic: String,
    /// Owned partitions already seeked to their stored offsets.
    positioned: HashMap<i32, PartitionState>,
    /// Owned partitions not yet seeked: their messages are skipped until they are.
    unpositioned: BTreeSet<i32>,
    /// When to try positioning again after a failure.
    positioning_retry: Option<Instant>,
    rows: Vec<PendingRow>,
    dead_letters: Vec<DeadLetter>,
    /// Arrival of the batch's first message; the batch is due `max_batch_wait` later.
    opened_at: Option<Instant>,
}

impl Batcher {
    fn new(topic: &str) -> Self {
        Batcher {
            topic: topic.to_owned(),
            positioned: HashMap::new(),
            unpositioned: BTreeSet::new(),
            positioning_retry: None,
            rows: Vec::new(),
            dead_letters: Vec::new(),
            opened_at: None,
        }
    }

    fn len(&self) -> usize {
        self.rows.len() + self.dead_letters.len()
    }

    fn deadline(&self, max_wait: Duration) -> Option<Instant> {
        self.opened_at.map(|at| at + max_wait)
    }

    /// Full, or its first message has waited long enough.
    fn is_due(&self, max_rows: usize, max_wait: Duration, now: Instant) -> bool {
        self.len() >= max_rows
            || self
                .deadline(max_wait)
                .is_some_and(|deadline| deadline <= now)
    }

    fn positioning_at(&self) -> Option<Instant> {
        if self.unpositioned.is_empty() {
            None
        } else {
            Some(self.positioning_retry.unwrap_or_else(Instant::now))
        }
    }

    fn positioning_due(&self, now: Instant) -> bool {
        !self.unpositioned.is_empty() && self.positioning_retry.map_or(true, |at| at <= now)
    }

    fn apply(&mut self, events: Vec<Assignment>) {
        for event in events {
            let (Assignment::Assigned(partitions) | Assignment::Revoked(partitions)) = &event;
            // Whatever is batched for these partitions was never committed: the next owner
            // (or this consumer, after its seek) reads it again from the stored offset.
            self.drop_partitions(partitions);
            for partition in partitions {
                self.positioned.remove(partition);
                match event {
                    Assignment::Assigned(_) => self.unpositioned.insert(*partition),
                    Assignment::Revoked(_) => self.unpositioned.remove(partition),
                };
            }
            self.positioning_retry = None;
        }
    }

    fn drop_partitions(&mut self, partitions: &[i32]) {
        let before = self.len();
        let partitions: HashSet<i32> = partitions.iter().copied().collect();
        self.rows
            .retain(|pending| !partitions.contains(&pending.row.kafka_partition));
        self.dead_letters
            .retain(|letter| !partitions.contains(&letter.partition));
        if self.len() == 0 {
            self.opened_at = None;
        }
        if before > self.len() {
            tracing::info!(
                dropped = before - self.len(),
                ?partitions,
                "dropped uncommitted messages of reassigned partitions"
            );
        }
    }

    /// Positions partitions at their stored offsets (after the consumer's seek succeeded).
    fn positioned_at(&mut self, partition: i32, stored: Option<i64>) {
        if self.unpositioned.remove(&partition) {
            self.positioned.insert(
                partition,
                PartitionState {
                    stored,
                    next: stored,
                },
            );
        }
    }

    /// Forgets every position (the database disagreed with this consumer): everything owned is
    /// re-read from `consumer_offsets` and seeked again; the batch is dropped.
    fn reposition_all(&mut self) {
        self.unpositioned.extend(self.positioned.keys().copied());
        self.positioned.clear();
        self.rows.clear();
        self.dead_letters.clear();
        self.opened_at = None;
        self.positioning_retry = None;
    }

    /// Adds one message to the batch, or skips it: not positioned yet, or already stored.
    fn accept(&mut self, message: &BorrowedMessage<'_>) {
        if message.topic() != self.topic {
            return;
        }
        let key = message.key();
        let header = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == SCHEMA_HEADER)
                .map(|header| header.value.unwrap_or_default())
        });
        self.add(
            message.partition(),
            message.offset(),
            key,
            message.payload(),
            header,
        );
    }

    fn add(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        schema_header: Option<&[u8]>,
    ) {
        let Some(state) = self.positioned.get_mut(&partition) else {
            tracing::trace!(partition, offset, "partition not positioned yet: skipped");
            return;
        };
        if let Some(next) = state.next {
            if offset < next {
                tracing::trace!(
                    partition,
                    offset,
                    next,
                    "already stored or batched: skipped"
                );
                return;
            }
            if offset > next {
                // Retention removed messages, or a compacted topic: nothing to read there.
                tracing::debug!(partition, offset, next, "offset gap");
            }
        }
        state.next = Some(offset + 1);
        if self.opened_at.is_none() {
            self.opened_at = Some(Instant::now());
        }
        let decoded = decode(payload, schema_header).and_then(|result| {
            CheckRow::from_result(&result, partition, offset)
                .map_err(|error| format!("cannot be stored: {error}"))
        });
        match decoded {
            Ok(row) => self.rows.push(PendingRow {
                row,
                key: key.map(<[u8]>::to_vec),
                payload: payload.unwrap_or_default().to_vec(),
            }),
            Err(reason) => {
                tracing::warn!(partition, offset, %reason, "message quarantined in dead_letters");
                self.dead_letters.push(DeadLetter {
                    partition,
                    offset,
                    key: key.map(<[u8]>::to_vec),
                    payload: payload.map(<[u8]>::to_vec),
                    reason,
                });
            }
        }
    }

    /// Moves the batch out for writing, with the offset advance of every partition it covers.
    fn take(&mut self) -> WriteBatch {
        let mut offsets: Vec<OffsetAdvance> = self
            .positioned
            .iter()
            .filter(|(_, state)| state.next != state.stored)
            .filter_map(|(partition, state)| {
                state.next.map(|next| OffsetAdvance {
                    partition: *partition,
                    expected: state.stored,
                    next,
                })
            })
            .collect();
        offsets.sort_by_key(|advance| advance.partition);
        self.opened_at = None;
        WriteBatch {
            rows: std::mem::take(&mut self.rows),
            dead_letters: std::mem::take(&mut self.dead_letters),
            offsets,
        }
    }

    /// Records that `offsets` are now stored.
    fn committed(&mut self, offsets: &[OffsetAdvance]) {
        for advance in offsets {
            if let Some(state) = self.positioned.get_mut(&advance.partition) {
                state.stored = Some(advance.next);
            }
        }
    }
}

/// Capped exponential backoff for PostgreSQL retries.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }

    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

/// The PostgreSQL side of the loop: one client, reconnected on demand.
struct Sink<'a> {
    settings: &'a DatabaseSettings,
    /// `None` after a failure: the next use reconnects.
    client: Option<Client>,
    group: &'a str,
    topic: &'a str,
    backoff: Backoff,
}

impl Sink<'_> {
    async fn client(&mut self) -> Result<&mut Client, StoreError> {
        let client = match self.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => store::connect(self.settings).await?,
        };
        Ok(self.client.insert(client))
    }

    fn fatal(&self, source: StoreError) -> ConsumeError {
        ConsumeError::Store {
            topic: self.topic.to_owned(),
            group: self.group.to_owned(),
            source: Box::new(source),
        }
    }

    /// Seeks the partitions waiting for it to their stored offsets. A PostgreSQL failure leaves
    /// them waiting (their messages skipped) and schedules a retry with backoff.
    async fn position(
        &mut self,
        consumer: &StreamConsumer<SinkContext>,
        batcher: &mut Batcher,
    ) -> Result<(), ConsumeError> {
        let partitions: Vec<i32> = batcher.unpositioned.iter().copied().collect();
        let (group, topic) = (self.group, self.topic);
        let load = async {
            let client = self.client().await?;
            store::load_offsets(client, group, topic, &partitions).await
        };
        let loaded = tokio::time::timeout(WRITE_TIMEOUT, load).await;
        let error = match loaded {
            Ok(Ok(stored)) => {
                self.backoff.reset();
                self.seek(consumer, batcher, &partitions, &stored);
                batcher.positioning_retry = Some(Instant::now() + SEEK_RETRY);
                return Ok(());
            }
            Ok(Err(error)) if !error.is_transient() => return Err(self.fatal(error)),
            Ok(Err(error)) => ErrorChain(&error).to_string(),
            Err(_) => format!("no answer within {WRITE_TIMEOUT:?}"),
        };
        self.client = None;
        let delay = self.backoff.next_delay();
        tracing::warn!(%error, retry_in = ?delay, "cannot read consumer_offsets; partitions wait");
        batcher.positioning_retry = Some(Instant::now() + delay);
        Ok(())
    }

    /// Seeks `partitions` to their `stored` offsets (the beginning when none is stored); the
    /// ones librdkafka accepted are positioned, the others stay waiting for a retry.
    fn seek(
        &self,
        consumer: &StreamConsumer<SinkContext>,
        batcher: &mut Batcher,
        partitions: &[i32],
        stored: &HashMap<i32, i64>,
    ) {
        let topic = self.topic;
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            let offset = stored
                .get(partition)
                .map_or(Offset::Beginning, |next| Offset::Offset(*next));
            if let Err(error) = list.add_partition_offset(topic, *partition, offset) {
                tracing::warn!(partition, %error, "cannot build the seek list");
            }
        }
        match consumer.seek_partitions(list, SEEK_TIMEOUT) {
            Ok(result) => {
                for element in result.elements() {
                    let partition = element.partition();
                    match element.error() {
                        Ok(()) => {
                            let next = stored.get(&partition).copied();
                            batcher.positioned_at(partition, next);
                            consumer.context().set_stored(partition, next);
                            tracing::info!(partition, next_offset = ?next, "partition positioned");
                        }
                        // Usually "erroneous state": the fetcher has not started yet.
                        Err(error) => tracing::debug!(partition, %error, "seek not possible yet"),
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "seek not possible yet"),
        }
    }

    /// Writes the batch in hand: retried on transient failures until it commits (or shutdown
    /// abandons it uncommitted), never partially.
    #[tracing::instrument(skip_all, fields(messages = batcher.len()))]
    async fn flush(
        &mut self,
        consumer: &StreamConsumer<SinkContext>,
        batcher: &mut Batcher,
        shutdown: &CancellationToken,
    ) -> Result<(), ConsumeError> {
        let batch = batcher.take();
        if batch.offsets.is_empty() {
            return Ok(());
        }
        let (group, topic) = (self.group, self.topic);
        loop {
            let started = Instant::now();
            let attempt = async {
                let client = self.client().await?;
                store::write_batch(client, group, topic, &batch).await
            };
            let outcome = tokio::time::timeout(WRITE_TIMEOUT, attempt).await;
            let error = match outcome {
                Ok(Ok(WriteOutcome::Committed(stats))) => {
                    self.backoff.reset();
                    metrics::counter!("sitewatch_consumer_rows_written_total")
                        .increment(stats.rows_written);
                    metrics::counter!("sitewatch_consumer_batches_total", "path" => stats.path.as_str())
                        .increment(1);
                    metrics::histogram!("sitewatch_consumer_batch_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!("sitewatch_consumer_dead_letters_total")
                        .increment(stats.dead_letters);
                    metrics::counter!("sitewatch_consumer_duplicates_total")
                        .increment(stats.duplicates);
                    tracing::debug!(
                        rows = stats.rows_written,
                        duplicates = stats.duplicates,
                        dead_letters = stats.dead_letters,
                        path = stats.path.as_str(),
                        seconds = started.elapsed().as_secs_f64(),
                        "batch committed"
                    );
                    batcher.committed(&batch.offsets);
                    for advance in &batch.offsets {
                        consumer
                            .context()
                            .set_stored(advance.partition, Some(advance.next));
                    }
                    commit_to_kafka(consumer, topic, &batch.offsets);
                    return Ok(());
                }
                Ok(Ok(WriteOutcome::Fenced { partitions })) => {
                    metrics::counter!("sitewatch_consumer_fenced_batches_total").increment(1);
                    tracing::warn!(
                        ?partitions,
                        messages = batch.rows.len() + batch.dead_letters.len(),
                        "stored offsets moved under this consumer (another member of the group \
                         wrote them): batch dropped, re-reading positions"
                    );
                    batcher.reposition_all();
                    return Ok(());
                }
                Ok(Err(error)) if !error.is_transient() => return Err(self.fatal(error)),
                Ok(Err(error)) => ErrorChain(&error).to_string(),
                Err(_) => format!("no answer within {WRITE_TIMEOUT:?}"),
            };
            // Whatever state the connection is in, start the retry from a fresh one.
            self.client = None;
            metrics::counter!("sitewatch_consumer_write_retries_total").increment(1);
            let delay = self.backoff.next_delay();
            tracing::warn!(%error, retry_in = ?delay,
                "cannot store the batch; keeping it and retrying (not reading further)");
            tokio::select! {
                _ = shutdown.cancelled() => {
                    tracing::warn!(
                        messages = batch.rows.len() + batch.dead_letters.len(),
                        "shutting down with the batch uncommitted: it is read again at the next start"
                    );
                    return Ok(());
                }
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// Mirrors the stored offsets to Kafka, only so that lag tools see the group's progress.
fn commit_to_kafka(consumer: &StreamConsumer<SinkContext>, topic: &str, offsets: &[OffsetAdvance]) {
    let mut list = TopicPartitionList::new();
    for advance in offsets {
        if list
            .add_partition_offset(topic, advance.partition, Offset::Offset(advance.next))
            .is_err()
        {
            return;
        }
    }
    if let Err(error) = consumer.commit(&list, CommitMode::Async) {
        tracing::debug!(%error, "offset commit to Kafka (for lag visibility) failed");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;
    use uuid::Uuid;

    use super::*;
    use crate::result::{Outcome, Timings};

    fn result(schema: u32) -> CheckResult {
        CheckResult {
            schema,
            id: Uuid::now_v7(),
            site: "example".into(),
            url: "https://example.com/".into(),
            final_url: None,
            scheduled_at: Utc::now(),
            started_at: Utc::now(),
            outcome: Outcome::Up,
            status: Some(200),
            timings: Timings {
                total_ms: 12.0,
                ..Timings::default()
            },
            failure: None,
            assertions: Vec::new(),
            metrics: BTreeMap::new(),
            body_bytes: 10,
            body_truncated: false,
            cert_not_after: None,
            tls_insecure: false,
            config_version: "v".into(),
            attempts: 1,
            probe_host: "h".into(),
        }
    }

    #[test]
    fn decode_accepts_current_schema_and_explains_rejections() {
        let good = serde_json::to_vec(&result(1)).unwrap();
        let future = serde_json::to_vec(&result(2)).unwrap();
        let future_shape = br#"{"schema": 2, "id": "x", "checks": []}"#.to_vec();
        let wrong_shape = br#"{"hello": "world"}"#.to_vec();
        let garbage = vec![0xff, 0x00, 0x13, 0x37];
        type Case<'a> = (
            &'a str,
            Option<&'a [u8]>,
            Option<&'a [u8]>,
            Result<(), &'a str>,
        );
        let cases: [Case<'_>; 9] = [
            ("current, no header", Some(&good), None, Ok(())),
            ("current, header 1", Some(&good), Some(b"1"), Ok(())),
            (
                "header 2",
                Some(&good),
                Some(b"2"),
                Err("schema-version header \"2\" is not supported"),
            ),
            (
                "schema 2 field",
                Some(&future),
                None,
                Err("schema version 2 is not supported"),
            ),
            (
                "schema 2, new shape",
                Some(&future_shape),
                None,
                Err("schema version 2 is not supported"),
            ),
            (
                "wrong shape",
                Some(&wrong_shape),
                None,
                Err("not a check result"),
            ),
            ("random bytes", Some(&garbage), None, Err("invalid JSON")),
            ("no payload", None, None, Err("empty message")),
            ("empty payload", Some(b""), None, Err("empty message")),
        ];
        for (name, payload, header, expected) in cases {
            match (decode(payload, header), expected) {
                (Ok(_), Ok(())) => {}
                (Err(reason), Err(want)) => assert!(reason.contains(want), "{name}: {reason}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    fn payload(schema: u32) -> Vec<u8> {
        serde_json::to_vec(&result(schema)).unwrap()
    }

    #[test]
    fn batcher_skips_unpositioned_and_stale_messages() {
        let mut batcher = Batcher::new("t");
        batcher.apply(vec![Assignment::Assigned(vec![0, 1])]);
        // Not positioned yet: skipped (the seek re-reads it).
        batcher.add(0, 5, None, Some(&payload(1)), None);
        assert_eq!(batcher.len(), 0);
        batcher.positioned_at(0, Some(10));
        batcher.positioned_at(1, None);
        batcher.add(0, 9, None, Some(&payload(1)), None); // already stored
        batcher.add(0, 10, Some(b"k"), Some(&payload(1)), None);
        batcher.add(0, 10, None, Some(&payload(1)), None); // delivered twice
        batcher.add(0, 11, None, Some(b"junk"), None);
        batcher.add(1, 0, None, Some(&payload(2)), None);
        assert_eq!(batcher.len(), 3);
        let batch = batcher.take();
        assert_eq!(batch.rows.len(), 1);
        assert_eq!(batch.rows[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(
            batch
                .dead_letters
                .iter()
                .map(|d| (d.partition, d.offset))
                .collect::<Vec<_>>(),
            vec![(0, 11), (1, 0)]
        );
        assert_eq!(
            batch.offsets,
            vec![
                OffsetAdvance {
                    partition: 0,
                    expected: Some(10),
                    next: 12
                },
                OffsetAdvance {
                    partition: 1,
                    expected: None,
                    next: 1
                },
            ]
        );
        batcher.committed(&batch.offsets);
        assert!(batcher.take().offsets.is_empty(), "nothing new to store");
        batcher.add(1, 1, None, Some(&payload(1)), None);
        assert_eq!(
            batcher.take().offsets,
            vec![OffsetAdvance {
                partition: 1,
                expected: Some(1),
                next: 2
            }]
        );
    }

    #[test]
    fn revocation_drops_uncommitted_messages_of_that_partition_only() {
        let mut batcher = Batcher::new("t");
        batcher.apply(vec![Assignment::Assigned(vec![0, 1])]);
        batcher.positioned_at(0, Some(0));
        batcher.positioned_at(1, Some(0));
        batcher.add(0, 0, None, Some(&payload(1)), None);
        batcher.add(1, 0, None, Some(&payload(1)), None);
        batcher.add(1, 1, None, Some(b"junk"), None);
        batcher.apply(vec![Assignment::Revoked(vec![1])]);
        assert_eq!(batcher.len(), 1);
        batcher.add(1, 2, None, Some(&payload(1)), None); // not ours any more
        let batch = batcher.take();
        assert_eq!(batch.rows.len(), 1);
        assert_eq!(batch.offsets.len(), 1);
        assert_eq!(batch.offsets[0].partition, 0);
        // Reassigned: must be positioned again before anything is accepted.
        batcher.apply(vec![Assignment::Assigned(vec![1])]);
        assert!(batcher.positioning_due(Instant::now()));
        batcher.add(1, 3, None, Some(&payload(1)), None);
        assert_eq!(batcher.len(), 0);
    }

    #[test]
    fn a_batch_is_due_when_full_or_old_never_when_empty() {
        let wait = Duration::from_millis(200);
        let mut batcher = Batcher::new("t");
        let now = Instant::now();
        assert!(
            !batcher.is_due(2, wait, now + wait * 10),
            "an empty batch is never due"
        );
        batcher.apply(vec![Assignment::Assigned(vec![0])]);
        batcher.positioned_at(0, None);
        batcher.add(0, 0, None, Some(&payload(1)), None);
        let opened = batcher.opened_at.unwrap();
        assert!(!batcher.is_due(2, wait, opened));
        assert!(batcher.is_due(2, wait, opened + wait));
        batcher.add(0, 1, None, Some(&payload(1)), None);
        assert!(batcher.is_due(2, wait, opened), "full");
        batcher.take();
        assert!(!batcher.is_due(2, wait, opened + wait * 10));
    }

    #[test]
    fn reposition_all_forgets_the_batch_and_positions() {
        let mut batcher = Batcher::new("t");
        batcher.apply(vec![Assignment::Assigned(vec![0])]);
        batcher.positioned_at(0, Some(3));
        batcher.add(0, 3, None, Some(&payload(1)), None);
        batcher.reposition_all();
        assert_eq!(batcher.len(), 0);
        assert!(batcher.unpositioned.contains(&0));
        assert!(batcher.take().offsets.is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays[0], BACKOFF_FIRST);
        assert_eq!(delays[1], BACKOFF_FIRST * 2);
        assert_eq!(*delays.last().unwrap(), BACKOFF_MAX);
        backoff.reset();
        assert_eq!(backoff.next_delay(), BACKOFF_FIRST);
    }
}
