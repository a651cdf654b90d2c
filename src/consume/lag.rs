//! How far a consumer group is from the topic's end: the group's offsets in PostgreSQL
//! (`consumer_offsets`, where the consumers keep their position) against each partition's log
//! in Kafka. `run`'s drain waits for it to reach zero; the alerter's no-data check measures
//! silence only up to the last moment its group had read everything.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use tokio_postgres::Client;

use crate::settings::KafkaSettings;

/// One partition's log: its first offset (retention moves it) and its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEnd {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// A Kafka client that only reads metadata and watermarks (it never joins `group.id`).
pub fn watermark_client(kafka: &KafkaSettings) -> Result<BaseConsumer, KafkaError> {
    kafka
        .client_config(&[("group.id", "sitewatch-watermarks")])
        .create()
}

/// Every partition of `topic` with its log's start and end (blocking, up to `timeout` per
/// request).
pub fn topic_ends(
    client: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<LogEnd>, KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    // A topic Kafka cannot describe (unknown, no leader) has no known end: an error, not "no
    // partitions, nothing behind".
    let described = metadata.topics().iter().find(|t| t.name() == topic);
    let Some(described) = described.filter(|t| t.error().is_none() && !t.partitions().is_empty())
    else {
        return Err(KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    };
    let mut ends = Vec::new();
    for partition in described.partitions() {
        let (start, end) = client.fetch_watermarks(topic, partition.id(), timeout)?;
        ends.push(LogEnd {
            partition: partition.id(),
            start,
            end,
        });
    }
    Ok(ends)
}

/// Messages of `ends` each group has not stored yet, by group. A partition read to its end, or
/// emptied by retention (nothing to store from before its log's start), is not behind.
pub async fn behind(
    client: &Client,
    groups: &[String],
    topic: &str,
    ends: &[LogEnd],
) -> Result<Vec<(String, i64)>, tokio_postgres::Error> {
    let partitions: Vec<i32> = ends.iter().map(|e| e.partition).collect();
    let starts: Vec<i64> = ends.iter().map(|e| e.start).collect();
    let offsets: Vec<i64> = ends.iter().map(|e| e.end).collect();
    let rows = client
        .query(
            "SELECT g, coalesce(sum(greatest(e.end_offset \
                                    - greatest(coalesce(o.next_offset, 0), e.start_offset), \
                                    0)), 0)::int8 \
             FROM unnest($1::text[]) AS g \
             LEFT JOIN unnest($3::int4[], $5::int8[], $4::int8[]) \
               AS e(partition, start_offset, end_offset) ON true \
             LEFT JOIN consumer_offsets o \
               ON o.consumer_group = g AND o.topic = $2 AND o.partition = e.partition \
             GROUP BY g",
            &[&groups, &topic, &partitions, &offsets, &starts],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
