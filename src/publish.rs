//! The Kafka publisher: every CheckResult to the topic, keyed by site, nothing lost silently.
//!
//! - Idempotent producer (`enable.idempotence=true`, acks=all), zstd compression, value = the
//!   result's JSON, key = site name (one site's results stay ordered in one partition), header
//!   `schema-version`.
//! - `message.timeout.ms=0`: librdkafka keeps retrying a message until it is delivered, so a
//!   broker outage delays results instead of expiring them.
//! - The bounded local queue is librdkafka's own (`queue.buffering.max.messages`). When it is
//!   full, [`Publisher::publish`] waits: the check stays in flight, and the scheduler records
//!   the ticks that pass as missed. Nothing is dropped to make room.
//! - A result that is not delivered — rejected permanently by the broker, still waiting for a
//!   full queue when shutdown gives up, or still queued when the bounded shutdown flush ends —
//!   is counted (`sitewatch_kafka_delivery_errors_total`) and logged with its result id.
//! - A fatal producer error (the idempotent producer can no longer guarantee ordering) cancels
//!   [`Publisher::fatal`]; `produce` then stops with an error so a supervisor restarts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::{ClientContext, Message};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics as names;
use crate::result::{CheckResult, SCHEMA_HEADER, SCHEMA_VERSION};
use crate::settings::KafkaSettings;

/// Messages held locally while the broker is slow or away; past this, publishing waits.
pub const DEFAULT_QUEUE_MESSAGES: u32 = 100_000;
/// How long startup waits for the broker's metadata before failing.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for queued results to be delivered.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause before retrying a publish that found the local queue full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(20);
/// After purging at the end of a timed-out flush, how long to wait for librdkafka to report
/// each purged message (so every one is counted and logged by the delivery callback).
const PURGE_REPORT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot create the Kafka producer")]
    Create(#[source] KafkaError),
    #[error("cannot reach Kafka at {brokers}: {reason}")]
    Unreachable { brokers: String, reason: String },
    #[error("cannot create topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    #[error("cannot encode result {id}")]
    Encode {
        id: Uuid,
        #[source]
        source: serde_json::Error,
    },
    #[error("Kafka refused result {id}")]
    Send {
        id: Uuid,
        #[source]
        source: KafkaError,
    },
    #[error("result {id} dropped: shutdown gave up waiting for room in the Kafka queue")]
    Abandoned { id: Uuid },
}

/// Topic settings used when the topic does not exist yet.
#[derive(Debug, Clone, Copy)]
pub struct TopicSpec {
    pub partitions: i32,
    pub replication: i32,
}

impl Default for TopicSpec {
    fn default() -> Self {
        TopicSpec {
            partitions: 6,
            replication: 1,
        }
    }
}

/// Delivery accounting shared with librdkafka's callback thread.
#[derive(Default)]
pub struct Deliveries {
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    /// The most recent client-level error (TLS, authentication, connection), for fail-fast
    /// messages at startup.
    last_error: Mutex<Option<String>>,
    /// Cancelled on a fatal producer error: nothing more can be delivered by this producer.
    fatal: CancellationToken,
}

/// Receives librdkafka's callbacks: delivery reports and client errors.
pub struct Context {
    deliveries: Arc<Deliveries>,
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            tracing::error!(%error, reason, "fatal Kafka producer error");
            self.deliveries.fatal.cancel();
        } else {
            tracing::warn!(%error, reason, "kafka client error");
        }
        if let Ok(mut last) = self.deliveries.last_error.lock() {
            *last = Some(format!("{error}: {reason}"));
        }
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Uuid>;

    fn delivery(&self, result: &DeliveryResult<'_>, id: Box<Uuid>) {
        match result {
            Ok(_) => {
                self.deliveries.delivered.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(names::KAFKA_DELIVERED).increment(1);
            }
            Err((error, message)) => {
                self.deliveries.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(names::KAFKA_DROPPED).increment(1);
                metrics::counter!(names::KAFKA_DELIVERY_ERRORS).increment(1);
                tracing::error!(
                    result_id = %id,
                    site = ?message.key().map(String::from_utf8_lossy),
                    %error,
                    "result could not be delivered to Kafka and is dropped"
                );
            }
        }
    }
}

/// Publishes results to one topic. Built once, shared by all checks.
pub struct Publisher {
    /// Shared with blocking helper threads (metadata fetch, flush), which librdkafka blocks.
    producer: Arc<ThreadedProducer<Context>>,
    topic: String,
    deliveries: Arc<Deliveries>,
    /// Cancelled when shutdown stops waiting for room in a full queue: waiting publishes then
    /// give up, counting and logging their result as dropped.
    abandon: CancellationToken,
}

impl Publisher {
    /// Connects, fails fast when the broker is unreachable or rejects our TLS/SASL settings,
    /// and creates the topic if it is missing.
    pub async fn connect(
        settings: &KafkaSettings,
        topic: TopicSpec,
    ) -> Result<Publisher, PublishError> {
        let deliveries = Arc::new(Deliveries::default());
        let queue_messages = DEFAULT_QUEUE_MESSAGES.to_string();
        let config = settings.client_config(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", "zstd"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "0"),
            ("queue.buffering.max.messages", &queue_messages),
        ]);
        let producer: ThreadedProducer<Context> = config
            .create_with_context(Context {
                deliveries: Arc::clone(&deliveries),
            })
            .map_err(PublishError::Create)?;
        let publisher = Publisher {
            producer: Arc::new(producer),
            topic: settings.topic.clone(),
            deliveries,
            abandon: CancellationToken::new(),
        };
        publisher.check_reachable(settings).await?;
        ensure_topic(settings, topic).await?;
        Ok(publisher)
    }

    async fn check_reachable(&self, settings: &KafkaSettings) -> Result<(), PublishError> {
        let producer = Arc::clone(&self.producer);
        let metadata = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, CONNECT_TIMEOUT)
                .map(|_| ())
        })
        .await;
        let error = match metadata {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(error)) => error.to_string(),
            Err(join) => join.to_string(),
        };
        let detail = self
            .deliveries
            .last_error
            .lock()
            .ok()
            .and_then(|e| e.clone());
        Err(PublishError::Unreachable {
            brokers: settings.brokers.clone(),
            reason: match detail {
                Some(detail) => format!("{error} (last client error: {detail})"),
                None => error,
            },
        })
    }

    /// Queues one result for delivery. Waits while the local queue is full (backpressure);
    /// returns an error only when Kafka rejects the message outright.
    pub async fn publish(&self, result: &CheckResult) -> Result<(), PublishError> {
        let payload = result.encode().map_err(|source| PublishError::Encode {
            id: result.id,
            source,
        })?;
        let version = SCHEMA_VERSION.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: SCHEMA_HEADER,
            value: Some(version.as_str()),
        });
        let mut record = BaseRecord::with_opaque_to(&self.topic, Box::new(result.id))
            .key(result.site.as_str())
            .payload(&payload)
            .headers(headers);
        let mut waited = false;
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if self.abandon.is_cancelled() =>
                {
                    self.deliveries.dropped.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(names::KAFKA_DROPPED).increment(1);
                    metrics::counter!(names::KAFKA_DELIVERY_ERRORS).increment(1);
                    tracing::error!(result_id = %result.id, site = %result.site, "Kafka queue still full at shutdown: result dropped");
                    return Err(PublishError::Abandoned { id: result.id });
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    if !waited {
                        tracing::warn!(site = %result.site, "Kafka queue full: waiting (backpressure)");
                        waited = true;
                    }
                    record = returned;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((source, _)) => {
                    self.deliveries.dropped.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(names::KAFKA_DROPPED).increment(1);
                    metrics::counter!(names::KAFKA_DELIVERY_ERRORS).increment(1);
                    return Err(PublishError::Send {
                        id: result.id,
                        source,
                    });
                }
            }
        }
        metrics::gauge!(names::KAFKA_QUEUE_DEPTH).set(f64::from(self.producer.in_flight_count()));
        Ok(())
    }

    pub fn deliveries(&self) -> &Deliveries {
        &self.deliveries
    }

    /// Cancelled when the producer hit a fatal error and can deliver nothing more.
    pub fn fatal(&self) -> CancellationToken {
        self.deliveries.fatal.clone()
    }

    /// Makes publishes that wait for room in a full queue give up (shutdown).
    pub fn abandon_waiting(&self) {
        self.abandon.cancel();
    }

    /// Waits up to `timeout` for every queued result to be delivered. What is still queued
    /// afterwards is purged; the delivery callback then counts and logs each purged result.
    /// Returns the number left undelivered.
    pub async fn flush(&self, timeout: Duration) -> u64 {
        let producer = Arc::clone(&self.producer);
        let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        let left = u64::try_from(self.producer.in_flight_count()).unwrap_or_default();
        if left > 0 {
            tracing::error!(
                left,
                "shutdown flush timed out: purging the results still queued"
            );
            let producer = Arc::clone(&self.producer);
            let _ = tokio::task::spawn_blocking(move || {
                producer.purge(PurgeConfig::default().queue().inflight());
                producer.flush(PURGE_REPORT_TIMEOUT)
            })
            .await;
        }
        left
    }
}

/// Creates the topic unless it exists.
pub async fn ensure_topic(settings: &KafkaSettings, spec: TopicSpec) -> Result<(), PublishError> {
    let admin: AdminClient<DefaultClientContext> = settings
        .client_config(&[])
        .create()
        .map_err(PublishError::Create)?;
    let topic = NewTopic::new(
        &settings.topic,
        spec.partitions,
        TopicReplication::Fixed(spec.replication),
    );
    let options = AdminOptions::new().operation_timeout(Some(CONNECT_TIMEOUT));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .map_err(|error| PublishError::Topic {
            topic: settings.topic.clone(),
            reason: error.to_string(),
        })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(PublishError::Topic {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(())
}
