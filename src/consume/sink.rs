//! The PostgreSQL side of the consumer: one client, reconnected on demand, and the two things
//! the loop asks of it — read the stored offsets of newly assigned partitions, and write a batch
//! (one attempt, which the loop overlaps with reading the next batch; then, if it failed,
//! retries with backoff).
//!
//! Both go through [`Sink::settle`]: a deadline, then transient failures drop the connection
//! and back off exponentially, while errors retrying cannot fix stop the consumer.

use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::batcher::Batcher;
use super::kafka::{self, KafkaConsumer};
use super::{BatchWriter, ConsumeError};
use crate::error::ErrorChain;
use crate::metrics as names;
use crate::settings::DatabaseSettings;
use crate::store::{self, StoreError, WriteBatch, WriteOutcome};

/// First delay before retrying PostgreSQL; doubles up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between PostgreSQL retries: an outage is noticed to be over within this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A write that takes longer is treated as a dead connection (dropped, reconnected, retried);
/// a batch's write gets [`ROW_ALLOWANCE`] per message on top ([`write_timeout`]).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time a batch's write may take per message. A batch that falls back to inserting row by
/// row (a savepoint and an INSERT each) needs about a millisecond per row: under a fixed 30 s,
/// 20,000 rows would time out, be retried, and time out again, for ever.
const ROW_ALLOWANCE: Duration = Duration::from_millis(5);

/// How long writing a batch of `messages` may take: 30 s plus 5 ms a message (130 s for 20,000).
fn write_timeout(messages: usize) -> Duration {
    WRITE_TIMEOUT + ROW_ALLOWANCE * u32::try_from(messages).unwrap_or(u32::MAX)
}
/// Delay before seeking again a partition librdkafka was not yet ready to seek (fetcher not
/// started right after the assignment).
const SEEK_RETRY: Duration = Duration::from_millis(100);

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

/// The PostgreSQL side of the loop.
pub(crate) struct Sink<'a> {
    settings: &'a DatabaseSettings,
    /// `None` after a failure: the next use reconnects.
    client: Option<Client>,
    group: &'a str,
    topic: &'a str,
    backoff: Backoff,
    /// What a batch becomes in PostgreSQL.
    writer: &'a dyn BatchWriter,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(
        settings: &'a DatabaseSettings,
        client: Client,
        group: &'a str,
        topic: &'a str,
        writer: &'a dyn BatchWriter,
    ) -> Self {
        Sink {
            settings,
            client: Some(client),
            group,
            topic,
            backoff: Backoff::default(),
            writer,
        }
    }

    async fn client(&mut self) -> Result<&mut Client, StoreError> {
        let client = match self.client.take() {
            Some(client) if !client.is_closed() => client,
            _ => {
                let client = store::connect(self.settings).await?;
                store::limit_consumer_session(&client).await?;
                client
            }
        };
        Ok(self.client.insert(client))
    }

    /// Judges one attempt (run under `limit`): `Ok(Ok(v))` done, backoff reset;
    /// `Ok(Err(delay))` a transient failure, logged as `what`, connection dropped: retry after
    /// `delay`; `Err` a failure retrying cannot fix.
    fn settle<T>(
        &mut self,
        what: &str,
        limit: Duration,
        outcome: Result<Result<T, StoreError>, tokio::time::error::Elapsed>,
    ) -> Result<Result<T, Duration>, ConsumeError> {
        let error = match outcome {
            Ok(Ok(value)) => {
                self.backoff.reset();
                return Ok(Ok(value));
            }
            Ok(Err(error)) if !error.is_transient() => {
                return Err(ConsumeError::Store {
                    topic: self.topic.to_owned(),
                    group: self.group.to_owned(),
                    source: Box::new(error),
                })
            }
            Ok(Err(error)) => ErrorChain(&error).to_string(),
            Err(_) => format!("no answer within {limit:?}"),
        };
        // Whatever state the connection is in, the retry starts from a fresh one.
        self.client = None;
        let delay = self.backoff.next_delay();
        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "{what}");
        Ok(Err(delay))
    }

    /// Seeks the partitions waiting for it to their stored offsets. A PostgreSQL failure leaves
    /// them waiting (their messages skipped) and schedules a retry with backoff.
    pub(crate) async fn position(
        &mut self,
        consumer: &KafkaConsumer,
        batcher: &mut Batcher,
    ) -> Result<(), ConsumeError> {
        let partitions = batcher.unpositioned();
        let (group, topic) = (self.group, self.topic);
        let load = async {
            let client = self.client().await?;
            store::load_offsets(client, group, topic, &partitions).await
        };
        let loaded = tokio::time::timeout(WRITE_TIMEOUT, load).await;
        let what = "cannot read consumer_offsets; partitions wait";
        match self.settle(what, WRITE_TIMEOUT, loaded)? {
            Ok(stored) => {
                kafka::seek(consumer, self.topic, batcher, &partitions, &stored);
                batcher.retry_positioning_at(Instant::now() + SEEK_RETRY);
            }
            Err(delay) => batcher.retry_positioning_at(Instant::now() + delay),
        }
        Ok(())
    }

    /// One attempt at storing `batch` (under [`write_timeout`]): `Ok(Ok(outcome))` committed or
    /// fenced; `Ok(Err(delay))` a transient failure, to be retried with the same batch after
    /// `delay` ([`Sink::rewrite`]); `Err` a failure retrying cannot fix.
    pub(crate) async fn write(
        &mut self,
        batch: &WriteBatch,
    ) -> Result<Result<WriteOutcome, Duration>, ConsumeError> {
        let started = Instant::now();
        let (group, topic, writer) = (self.group, self.topic, self.writer);
        let write = async {
            let client = self.client().await?;
            writer.write(client, group, topic, batch).await
        };
        let limit = write_timeout(batch.rows.len() + batch.dead_letters.len());
        let written = tokio::time::timeout(limit, write).await;
        let what = "cannot store the batch; keeping it and retrying (not reading further)";
        let outcome = self.settle(what, limit, written)?;
        if let Ok(WriteOutcome::Committed(stats)) = &outcome {
            metrics::counter!(names::CONSUMER_ROWS_WRITTEN).increment(stats.rows_written);
            metrics::counter!(names::CONSUMER_BATCHES, "path" => stats.path.as_str()).increment(1);
            metrics::histogram!(names::CONSUMER_BATCH_SECONDS)
                .record(started.elapsed().as_secs_f64());
            metrics::counter!(names::CONSUMER_DEAD_LETTERS).increment(stats.dead_letters);
            metrics::counter!(names::CONSUMER_DUPLICATES).increment(stats.duplicates);
        }
        Ok(outcome)
    }

    /// Stores `batch` after a failed attempt: waits `delay`, tries again, backing off, until it
    /// commits or is fenced. `None`: shutdown came first and the batch stays uncommitted (it is
    /// read again at the next start). Nothing is read from Kafka meanwhile.
    pub(crate) async fn rewrite(
        &mut self,
        batch: &WriteBatch,
        mut delay: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Option<WriteOutcome>, ConsumeError> {
        loop {
            metrics::counter!(names::CONSUMER_WRITE_RETRIES).increment(1);
            tokio::select! {
                _ = shutdown.cancelled() => {
                    tracing::warn!(
                        messages = batch.rows.len() + batch.dead_letters.len(),
                        "shutting down with the batch uncommitted: it is read again at the next start"
                    );
                    return Ok(None);
                }
                _ = tokio::time::sleep(delay) => {}
            }
            match self.write(batch).await? {
                Ok(outcome) => return Ok(Some(outcome)),
                Err(next) => delay = next,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_larger_batch_may_take_longer() {
        assert_eq!(write_timeout(0), Duration::from_secs(30));
        assert_eq!(write_timeout(20_000), Duration::from_secs(130));
        assert!(write_timeout(usize::MAX) > Duration::from_secs(3600));
    }
}
