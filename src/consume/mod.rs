//! The consumer: check results from Kafka into PostgreSQL, exactly once.
//!
//! ```text
//! Kafka ──StreamConsumer (group, no auto-commit)──► decode ──► filling batch: rows | dead letters
//!   ▲                                                            │ due: max_batch_rows messages,
//!   │ seek each assigned partition to consumer_offsets           │ nothing more arrived, or
//!   │                                                            ▼ max_batch_wait since its first
//!   └─ batch in flight: rows + dead letters + next offsets, ONE transaction (store::write_batch)
//!      while it is written the next batch fills; that one is taken once this one has settled
//! ```
//!
//! PostgreSQL, not Kafka, holds the consumer's position: `consumer_offsets` is advanced in the
//! transaction that stores the rows it covers, and every partition assigned to this consumer is
//! first seeked to the offset stored there. Messages read before that seek, or older than the
//! stored offset, are skipped. The offset update is conditional on the value this consumer read,
//! so a consumer that lost its partitions without noticing cannot store a batch twice.
//!
//! Decoding and writing overlap: at most one batch is in flight and one fills (reading pauses
//! when it is full), and the filling batch is written only after the one in flight committed —
//! its offset advances start where that one's end. Fenced, both are dropped and every position
//! is read again; a partition revoked meanwhile loses its messages in the filling batch. When
//! PostgreSQL is away the batch in flight is kept, no more is read, and the same batch is
//! retried with capped exponential backoff. `docs/storage.md` makes the whole argument.
//!
//! Layout: [`batcher`] (pure: what enters the batch, when it is due), [`kafka`] (the consumer,
//! rebalance events, seeks), [`sink`] (PostgreSQL with one retry/backoff rule), [`lag`] (how far
//! a group's stored offsets are from the topic's end); this file holds the options and the loop
//! that ties them together.

mod batcher;
mod kafka;
pub mod lag;
mod sink;

use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::settings::{DatabaseSettings, KafkaSettings};
use futures::future::BoxFuture;
use tokio_postgres::Client;

use crate::store::{self, StoreError, WriteBatch, WriteOutcome};
use batcher::Batcher;
use kafka::KafkaConsumer;
use sink::Sink;

/// Rows per transaction when the topic has a backlog. Binary COPY alone stops getting faster
/// near 5,000 rows, but each batch also rewrites the hourly and daily rollups of every site it
/// holds: 1,000 sites cost 2,000 rollup rows whether the batch has 5,000 rows or 20,000, and
/// the larger batch took ingest from 0.62 to 0.8 of the COPY ceiling (docs/storage.md). A
/// batch of typical results is 20–25 MB of payload; [`MAX_BATCH_BYTES`] bounds large ones.
pub const DEFAULT_MAX_BATCH_ROWS: usize = 20_000;
/// Payload bytes per batch at most, whatever its row count: results may be up to 256 KiB
/// ([`crate::publish::MAX_RESULT_BYTES`]), and 20,000 of those would be 5 GB. Two batches are
/// held at once (one written, one filling), each with its rows decoded too.
pub const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;
/// How long the first message of a batch may wait for company while more keep arriving; a
/// batch is written at once when nothing more has arrived.
pub const DEFAULT_MAX_BATCH_WAIT: Duration = Duration::from_millis(200);
/// How long a seek may wait for librdkafka to acknowledge it (a local operation).
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
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

/// What a consumer does with a batch, in ONE transaction with the batch's offsets (advanced
/// conditionally first, which fences a stale group member): the storing consumer writes rows
/// ([`StoreRows`]); the alerter derives incidents (`crate::alert`).
pub trait BatchWriter: Sync {
    fn write<'a>(
        &'a self,
        client: &'a mut Client,
        group: &'a str,
        topic: &'a str,
        batch: &'a WriteBatch,
    ) -> BoxFuture<'a, Result<WriteOutcome, StoreError>>;
}

/// The storing consumer: rows, rollups, site state and dead letters ([`store::write_batch`]).
pub struct StoreRows;

impl BatchWriter for StoreRows {
    fn write<'a>(
        &'a self,
        client: &'a mut Client,
        group: &'a str,
        topic: &'a str,
        batch: &'a WriteBatch,
    ) -> BoxFuture<'a, Result<WriteOutcome, StoreError>> {
        Box::pin(store::write_batch(client, group, topic, batch))
    }
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
    // The running totals of the rollups this consumer writes, on a connection of their own.
    let upkeep = shutdown.child_token();
    let running = tokio::spawn(store::running::maintain(db.clone(), upkeep.clone()));
    let result = run_with(kafka, db, options, &StoreRows, shutdown).await;
    // Not waited for: an extension in flight (or a connect to an unreachable server) would hold
    // the stop up; dropped, its transaction is rolled back and the next start extends again.
    upkeep.cancel();
    running.abort();
    result
}

/// [`run`] with another [`BatchWriter`] (the alerter's).
pub async fn run_with(
    kafka: &KafkaSettings,
    db: &DatabaseSettings,
    options: ConsumeOptions,
    writer: &dyn BatchWriter,
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
    let consumer = kafka::create_consumer(kafka)?;
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
    store::limit_consumer_session(&client)
        .await
        .map_err(|source| ConsumeError::Startup {
            source: Box::new(source),
        })?;
    let mut sink = Sink::new(db, client, &kafka.group, &kafka.topic, writer);
    let mut batcher = Batcher::new();
    let result = consume(
        &consumer,
        &kafka.topic,
        &mut sink,
        &mut batcher,
        &options,
        &shutdown,
    )
    .await;
    consumer.unsubscribe();
    tracing::info!("consumer stopped");
    result
}

/// The consume loop: position, fill a batch, write it while the next one fills; returns when
/// `shutdown` is cancelled.
async fn consume(
    consumer: &KafkaConsumer,
    topic: &str,
    sink: &mut Sink<'_>,
    batcher: &mut Batcher,
    options: &ConsumeOptions,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    let max_rows = options.max_batch_rows.max(1);
    loop {
        batcher.apply(consumer.context().take_events());
        let now = Instant::now();
        // Never while a batch is in flight (write_batch has returned): an offset read now is
        // the one that batch's transaction left.
        if batcher.positioning_due(now) {
            sink.position(consumer, batcher).await?;
        }
        // Nothing more has arrived (librdkafka's queue is drained): the batch need not wait
        // for company. Under a backlog the queue is never empty and batches fill up; at a
        // trickle every message is stored at once; in between, messages that arrive while a
        // batch is written make the next one.
        let drained = batcher.len() > 0 && {
            match consumer.recv().now_or_never() {
                Some(message) => {
                    batcher.apply(consumer.context().take_events());
                    match message {
                        Ok(message) => kafka::accept(batcher, topic, &message),
                        Err(error) => on_kafka_error(topic, error)?,
                    }
                    false
                }
                None => true,
            }
        };
        if drained || batcher.is_due(max_rows, options.max_batch_wait, now) {
            let written = write_batch(consumer, topic, sink, batcher, max_rows, shutdown).await?;
            if written == Written::Abandoned {
                return Ok(());
            }
            if shutdown.is_cancelled() {
                break;
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
                    Ok(message) => kafka::accept(batcher, topic, &message),
                    Err(error) => on_kafka_error(topic, error)?,
                }
            }
        }
    }
    if batcher.len() > 0 {
        tracing::info!(
            messages = batcher.len(),
            "shutting down: writing the batch in hand"
        );
        write_batch(consumer, topic, sink, batcher, max_rows, shutdown).await?;
    }
    Ok(())
}

/// How [`write_batch`] left the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// Committed, or fenced and dropped: the batcher is ready for the next batch.
    Settled,
    /// Shutdown came while the batch was failing: it stays uncommitted, and so must the batch
    /// that filled meanwhile (its offsets would skip this one's messages).
    Abandoned,
}

/// Writes the batch in hand and, while its first attempt is in flight, reads and decodes the
/// next one into the batcher: PostgreSQL and decoding overlap. At most one batch is in flight
/// and one fills (up to `max_rows` messages or [`MAX_BATCH_BYTES`], then reading pauses); nothing is read after
/// shutdown. A failed attempt is retried with backoff without reading further.
///
/// Returns only once the batch is settled, so the filling batch is taken after this one's
/// offsets are stored (or all positions forgotten): its offset advances start where this
/// batch's end.
#[tracing::instrument(skip_all, fields(messages = batcher.len()))]
async fn write_batch(
    consumer: &KafkaConsumer,
    topic: &str,
    sink: &mut Sink<'_>,
    batcher: &mut Batcher,
    max_rows: usize,
    shutdown: &CancellationToken,
) -> Result<Written, ConsumeError> {
    let batch = batcher.take();
    if batch.offsets.is_empty() {
        return Ok(Written::Settled);
    }
    let started = Instant::now();
    let attempt = sink.write(&batch);
    let first = read_while(attempt, consumer, topic, batcher, max_rows, shutdown).await??;
    let outcome = match first {
        Ok(outcome) => outcome,
        Err(delay) => match sink.rewrite(&batch, delay, shutdown).await? {
            Some(outcome) => outcome,
            None => return Ok(Written::Abandoned),
        },
    };
    match outcome {
        WriteOutcome::Committed(stats) => {
            tracing::debug!(
                rows = stats.rows_written,
                duplicates = stats.duplicates,
                dead_letters = stats.dead_letters,
                path = stats.path.as_str(),
                seconds = started.elapsed().as_secs_f64(),
                read_meanwhile = batcher.len(),
                "batch committed"
            );
            let stored = batcher.committed(&batch.offsets);
            for advance in &stored {
                consumer
                    .context()
                    .set_stored(advance.partition, Some(advance.next));
            }
            kafka::commit_to_kafka(consumer, topic, &stored);
        }
        WriteOutcome::Fenced { partitions } => {
            metrics::counter!(crate::metrics::CONSUMER_FENCED_BATCHES).increment(1);
            tracing::warn!(
                partitions = %batcher::partition_list(partitions.iter().copied()),
                messages = batch.rows.len() + batch.dead_letters.len(),
                read_meanwhile = batcher.len(),
                "stored offsets moved under this consumer (another member of the group wrote \
                 them): batch dropped with the one read meanwhile, re-reading positions"
            );
            batcher.reposition_all();
        }
    }
    Ok(Written::Settled)
}

/// Drives `write` to its end while reading messages into the batcher (rebalances included) as
/// long as the batch has room and shutdown has not come.
async fn read_while<T>(
    write: impl std::future::Future<Output = T>,
    consumer: &KafkaConsumer,
    topic: &str,
    batcher: &mut Batcher,
    max_rows: usize,
    shutdown: &CancellationToken,
) -> Result<T, ConsumeError> {
    let mut write = std::pin::pin!(write);
    loop {
        let reading = !batcher.is_full(max_rows) && !shutdown.is_cancelled();
        tokio::select! {
            biased;
            written = &mut write => return Ok(written),
            // Only wakes the loop, so that it stops reading.
            _ = shutdown.cancelled(), if reading => {}
            _ = consumer.context().wake.notified() => {
                batcher.apply(consumer.context().take_events());
            }
            message = consumer.recv(), if reading => {
                batcher.apply(consumer.context().take_events());
                match message {
                    Ok(message) => kafka::accept(batcher, topic, &message),
                    Err(error) => on_kafka_error(topic, error)?,
                }
            }
        }
    }
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
