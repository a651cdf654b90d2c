//! The Kafka side of the consumer: the `StreamConsumer` and its context (rebalance events, the
//! lag gauge), seeking partitions to the offsets stored in PostgreSQL, and mirroring those
//! offsets back to Kafka for lag tools.
//!
//! Rebalances run inside `recv()`; the context only records what changed and wakes the loop,
//! which applies the events to the [`Batcher`] before it looks at the next message.

use std::collections::HashMap;

use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::sync::Notify;

use super::batcher::{partition_list, Assignment, Batcher};
use super::{ConsumeError, SEEK_TIMEOUT, STATISTICS_INTERVAL_MS};
use crate::metrics as names;
use crate::result::SCHEMA_HEADER;
use crate::settings::KafkaSettings;
use crate::store::OffsetAdvance;

/// The consumer type the loop works with.
pub(crate) type KafkaConsumer = StreamConsumer<KafkaContext>;

pub(crate) fn create_consumer(kafka: &KafkaSettings) -> Result<KafkaConsumer, ConsumeError> {
    let config: ClientConfig = kafka.client_config(&[
        ("group.id", &kafka.group),
        // Kafka's committed offsets are only for lag dashboards; PostgreSQL holds the position.
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        // Every partition is seeked explicitly, after its stored offset was checked against the
        // log (see `seek`). Should the log move under a running consumer, librdkafka restarts
        // the fetch at the log's start, and the batcher, seeing offsets go back, has every
        // partition positioned and checked again (`Batcher::add`). ("error" instead stops a
        // partition before its first seek, whenever Kafka holds no committed offset.)
        ("auto.offset.reset", "earliest"),
        ("enable.partition.eof", "false"),
        // What librdkafka prefetches, per partition (its default, 64 MiB, made a 6-partition
        // backlog hold 400 MiB). 16 MiB each still keeps a 20,000-row batch fed.
        ("queued.max.messages.kbytes", "16384"),
        ("statistics.interval.ms", STATISTICS_INTERVAL_MS),
        ("client.id", "sitewatch-consumer"),
    ]);
    config
        .create_with_context(KafkaContext::new(&kafka.topic))
        .map_err(|source| ConsumeError::Consumer {
            brokers: kafka.brokers.clone(),
            group: kafka.group.clone(),
            source: Box::new(source),
        })
}

/// librdkafka callbacks. Rebalances run inside `recv()`; they only record what changed, and the
/// loop applies it before the next message (drop revoked data, seek assigned partitions).
pub(crate) struct KafkaContext {
    topic: String,
    events: Mutex<Vec<Assignment>>,
    /// Wakes the loop when a rebalance happened while it was waiting.
    pub(crate) wake: Notify,
    /// Stored next offset of each owned partition, for the lag gauge.
    stored: Mutex<HashMap<i32, i64>>,
}

impl KafkaContext {
    fn new(topic: &str) -> Self {
        KafkaContext {
            topic: topic.to_owned(),
            events: Mutex::new(Vec::new()),
            wake: Notify::new(),
            stored: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn take_events(&self) -> Vec<Assignment> {
        std::mem::take(&mut *self.events.lock())
    }

    fn partitions(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements_for_topic(&self.topic)
            .iter()
            .map(|element| element.partition())
            .collect()
    }

    pub(crate) fn set_stored(&self, partition: i32, next_offset: Option<i64>) {
        let mut stored = self.stored.lock();
        match next_offset {
            Some(offset) => stored.insert(partition, offset),
            None => stored.remove(&partition),
        };
    }
}

impl ClientContext for KafkaContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let stored = self.stored.lock();
        for (partition, stats) in &topic.partitions {
            if let Some(next) = stored.get(partition) {
                if stats.hi_offset >= 0 {
                    metrics::gauge!(
                        names::CONSUMER_LAG,
                        "topic" => self.topic.clone(),
                        "partition" => partition.to_string()
                    )
                    .set((stats.hi_offset - next).max(0) as f64);
                }
            }
        }
    }
}

impl ConsumerContext for KafkaContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let event = match rebalance {
            Rebalance::Assign(list) => Assignment::Assigned(self.partitions(list)),
            Rebalance::Revoke(list) => {
                let partitions = self.partitions(list);
                for partition in &partitions {
                    self.set_stored(*partition, None);
                    // This consumer no longer reports the partition's lag.
                    metrics::gauge!(
                        names::CONSUMER_LAG,
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
        tracing::info!(%event, "partition assignment changed");
        self.events.lock().push(event);
        self.wake.notify_one();
    }
}

/// Hands one message to the batcher with the parts it looks at.
pub(crate) fn accept(batcher: &mut Batcher, topic: &str, message: &BorrowedMessage<'_>) {
    if message.topic() != topic {
        return;
    }
    let header = message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|header| header.key == SCHEMA_HEADER)
            .map(|header| header.value.unwrap_or_default())
    });
    batcher.add(
        message.partition(),
        message.offset(),
        message.key(),
        message.payload(),
        header,
    );
}

/// Where to start reading a partition, from its stored offset and its log's watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// No offset stored: the log's first message.
    Beginning,
    /// The stored offset, inside the log.
    Stored(i64),
    /// The stored offset is past the log's end: the log was replaced (topic deleted and
    /// created again, a broker that lost its disk, an unclean leader election). Every message
    /// now in it is new: read it from its start.
    Replaced { stored: i64, low: i64, high: i64 },
    /// The stored offset is below the log's start: retention deleted `low - stored` messages
    /// before they were stored. Read on from the start.
    Lost { stored: i64, low: i64 },
}

impl Start {
    pub(crate) fn of(stored: Option<i64>, (low, high): (i64, i64)) -> Start {
        match stored {
            None => Start::Beginning,
            Some(stored) if stored > high => Start::Replaced { stored, low, high },
            Some(stored) if stored < low => Start::Lost { stored, low },
            Some(stored) => Start::Stored(stored),
        }
    }

    fn offset(self) -> Offset {
        match self {
            Start::Beginning => Offset::Beginning,
            Start::Stored(at) | Start::Replaced { low: at, .. } | Start::Lost { low: at, .. } => {
                Offset::Offset(at)
            }
        }
    }
}

/// Seeks `partitions` to their `stored` offsets (the beginning when none is stored), checked
/// against each log's watermarks first ([`Start`]): a replaced log is read from its start, a
/// gap left by retention is counted; both are logged as warnings. The partitions librdkafka
/// accepted are positioned in the batcher, the others stay waiting for a retry.
pub(crate) fn seek(
    consumer: &KafkaConsumer,
    topic: &str,
    batcher: &mut Batcher,
    partitions: &[i32],
    stored: &HashMap<i32, i64>,
) {
    let mut list = TopicPartitionList::new();
    let mut starts = HashMap::new();
    for &partition in partitions {
        let stored = stored.get(&partition).copied();
        let start = match stored {
            None => Start::Beginning,
            Some(_) => match consumer.fetch_watermarks(topic, partition, SEEK_TIMEOUT) {
                Ok(watermarks) => Start::of(stored, watermarks),
                Err(error) => {
                    tracing::debug!(partition, %error, "watermarks not available yet");
                    continue;
                }
            },
        };
        starts.insert(partition, start);
        if let Err(error) = list.add_partition_offset(topic, partition, start.offset()) {
            tracing::warn!(partition, %error, "cannot build the seek list");
        }
    }
    if list.count() == 0 {
        return;
    }
    let result = match consumer.seek_partitions(list, SEEK_TIMEOUT) {
        Ok(result) => result,
        Err(error) => return tracing::debug!(%error, "seek not possible yet"),
    };
    let mut positioned = Vec::new();
    for element in result.elements() {
        let partition = element.partition();
        match element.error() {
            Ok(()) => {
                let next = stored.get(&partition).copied();
                match starts.get(&partition).copied() {
                    Some(Start::Replaced { stored, low, high }) => {
                        metrics::counter!(names::CONSUMER_OFFSET_RESETS).increment(1);
                        tracing::warn!(%topic, partition, stored, log_start = low, log_end = high,
                            "the stored offset is past the end of the partition's log: the log \
                             was replaced (topic created again, or a broker lost its data); \
                             reading the new log from its start");
                        batcher.positioned_at_log_start(partition, next);
                    }
                    Some(Start::Lost { stored, low }) => {
                        metrics::counter!(names::CONSUMER_MESSAGES_LOST)
                            .increment((low - stored) as u64);
                        tracing::warn!(%topic, partition, stored, log_start = low, lost = low - stored,
                            "retention deleted messages before they were stored; reading on \
                             from the start of the log");
                        batcher.positioned_at_log_start(partition, next);
                    }
                    _ => batcher.positioned_at(partition, next),
                }
                consumer.context().set_stored(partition, next);
                positioned.push(format!(
                    "{partition}@{}",
                    next.map_or("start".into(), |n| n.to_string())
                ));
            }
            // Usually "erroneous state": the fetcher has not started yet.
            Err(error) => tracing::debug!(partition, %error, "seek not possible yet"),
        }
    }
    if positioned.is_empty() {
        return;
    }
    // One info line when the last owned partition is positioned, however many seeks it took.
    match batcher.positions_when_complete() {
        Some(all) => {
            tracing::info!(%topic, partitions = %all, "partitions positioned at their stored offsets")
        }
        None => {
            tracing::debug!(partitions = %positioned.join(" "), waiting = %partition_list(batcher.unpositioned()),
            "some partitions positioned; the others wait for a retry")
        }
    }
}

/// Mirrors the stored offsets to Kafka, only so that lag tools see the group's progress.
pub(crate) fn commit_to_kafka(consumer: &KafkaConsumer, topic: &str, offsets: &[OffsetAdvance]) {
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
    use super::*;

    #[test]
    fn where_a_partition_starts() {
        let log = (100, 250); // first message 100, next to be written 250
        assert_eq!(Start::of(None, log), Start::Beginning);
        assert_eq!(Start::of(Some(100), log), Start::Stored(100));
        assert_eq!(Start::of(Some(180), log), Start::Stored(180));
        // Caught up: the next message written is the next one read.
        assert_eq!(Start::of(Some(250), log), Start::Stored(250));
        assert_eq!(
            Start::of(Some(251), log),
            Start::Replaced {
                stored: 251,
                low: 100,
                high: 250
            }
        );
        assert_eq!(
            Start::of(Some(40), log),
            Start::Lost {
                stored: 40,
                low: 100
            }
        );
        // A log created again and still empty.
        assert_eq!(
            Start::of(Some(7), (0, 0)),
            Start::Replaced {
                stored: 7,
                low: 0,
                high: 0
            }
        );
        assert_eq!(Start::of(Some(0), (0, 0)), Start::Stored(0));
        assert_eq!(
            Start::Replaced {
                stored: 7,
                low: 3,
                high: 5
            }
            .offset(),
            Offset::Offset(3)
        );
        assert_eq!(
            Start::Lost { stored: 1, low: 3 }.offset(),
            Offset::Offset(3)
        );
        assert_eq!(Start::Beginning.offset(), Offset::Beginning);
    }
}
