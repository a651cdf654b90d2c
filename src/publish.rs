//! The Kafka publisher: every CheckResult to the topic, keyed by site, nothing lost silently.
//!
//! - Idempotent producer (`enable.idempotence=true`, acks=all), zstd compression, value = the
//!   result's JSON, key = site name (one site's results stay ordered in one partition), header
//!   `schema-version`.
//! - `linger.ms=20`: a result waits up to 20 ms for others to share its batch. Against 5 ms
//!   (librdkafka's default) this takes a fifth off the producer's CPU per result at 20,000
//!   results/s and halves the broker's (fewer batches, each compressed once); the end-to-end
//!   latency target (probe finished → row visible, p99 ≤ 250 ms) absorbs the 15 ms.
//! - `message.timeout.ms=0`: librdkafka keeps retrying a message until it is delivered, so a
//!   broker outage delays results instead of expiring them.
//! - The bounded local queue is librdkafka's own (`queue.buffering.max.messages`). When it is
//!   full, [`Publisher::publish`] waits: the check stays in flight, and the scheduler records
//!   the ticks that pass as missed. Nothing is dropped to make room.
//! - A result that is not delivered — rejected permanently by the broker, still waiting for a
//!   full queue when shutdown gives up, or still queued when the bounded shutdown flush ends —
//!   is counted (`sitewatch_kafka_delivery_errors_total`) and logged with its result id. One that
//!   was sent but not yet answered when the shutdown flush gave up is counted apart, as
//!   unconfirmed (`sitewatch_kafka_unconfirmed_total`): it may well be on the topic.
//! - A fatal producer error (the idempotent producer can no longer guarantee ordering) ends that
//!   producer, not the results it held: [`Publisher::recover`] purges it, builds a new one and
//!   sends again every result the old one gave back, before any newer result (a site's results
//!   stay in order). A result that was in flight may then be on the topic twice; the consumer
//!   stores each result id once. Publishes wait meanwhile. Only when no new producer can be
//!   built is [`Publisher::broken`] cancelled, and `produce` stops with an error.
//! - What a hard kill (kill -9, the OOM killer) loses is what the local queue held at that
//!   moment: `sitewatch_kafka_queue_depth` shows that exposure.

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
use rdkafka::{ClientConfig, ClientContext, Message};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics as names;
use crate::result::{shorten, CheckResult, SCHEMA_HEADER, SCHEMA_VERSION};
use crate::settings::KafkaSettings;

/// Messages held locally while the broker is slow or away; past this, publishing waits.
pub const DEFAULT_QUEUE_MESSAGES: u32 = 100_000;
/// How long startup waits for the broker's metadata before failing.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for queued results to be delivered.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest encoded result published, in bytes: far above a real result (a few KiB), well below
/// Kafka's default message limit (`message.max.bytes`, 1,000,000 bytes), so a result is not
/// refused for its size; a larger one is cut down ([`encode_within`]).
pub const MAX_RESULT_BYTES: usize = 256 * 1024;
/// What a result is cut down to when Kafka still refuses it as too large (a client configured
/// with a smaller `message.max.bytes`).
pub const MIN_RESULT_BYTES: usize = 8 * 1024;
/// Pause before retrying a publish that found the local queue full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(20);
/// After purging at the end of a timed-out flush, how long to wait for librdkafka to report
/// each purged message (so every one is counted and logged by the delivery callback).
const PURGE_REPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often [`Publisher::recover`] asks librdkafka for a fatal error, besides after each
/// client error.
const FATAL_POLL: Duration = Duration::from_secs(1);
/// How long a rebuild waits for the failed producer to report every message back.
const REBUILD_REPORT_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// `None`: the broker's `default.replication.factor`.
    pub replication: Option<i32>,
}

impl Default for TopicSpec {
    fn default() -> Self {
        TopicSpec {
            partitions: 6,
            replication: None,
        }
    }
}

/// Delivery accounting shared with librdkafka's callback thread, across producers.
#[derive(Default)]
pub struct Deliveries {
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    /// Results in flight when the shutdown flush gave up: sent, never confirmed (they may be on
    /// the topic).
    pub unconfirmed: AtomicU64,
    /// Results sent again on a new producer after a fatal error.
    pub resent: AtomicU64,
    /// Results handed to Kafka so far: the next one's `Sent::seq`.
    sent: AtomicU64,
    /// The first client-level error that names a cause (TLS, authentication, connection
    /// refused) rather than only its consequence ("all broker connections are down"), for
    /// fail-fast messages at startup.
    first_cause: Mutex<Option<String>>,
    /// Results a producer gave back after its fatal error, waiting for the next producer.
    unsent: Mutex<Vec<Unsent>>,
    /// Set when shutdown purges the queue: what comes back then is dropped, not kept.
    purging: std::sync::atomic::AtomicBool,
    /// Cancelled when no new producer could be built after a fatal error.
    broken: CancellationToken,
}

impl Deliveries {
    /// Counts `n` results given up on (the caller logs each with its id).
    fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(names::KAFKA_DROPPED).increment(n);
        metrics::counter!(names::KAFKA_DELIVERY_ERRORS).increment(n);
    }

    /// The results given back so far, in the order they were first handed to Kafka (they come
    /// back in two purges: librdkafka's of the queue at the fatal error, then ours of what was
    /// in flight).
    fn take_unsent(&self) -> Vec<Unsent> {
        let mut unsent =
            std::mem::take(&mut *self.unsent.lock().unwrap_or_else(|e| e.into_inner()));
        unsent.sort_unstable_by_key(|u| u.seq);
        unsent
    }
}

/// What a message carries to its delivery report.
pub struct Sent {
    id: Uuid,
    /// Its place in the order results were handed to Kafka.
    seq: u64,
}

/// A result a producer gave back undelivered, as it was to be sent.
struct Unsent {
    id: Uuid,
    seq: u64,
    key: Vec<u8>,
    payload: Vec<u8>,
}

/// Receives one producer's callbacks: delivery reports and client errors.
pub struct Context {
    deliveries: Arc<Deliveries>,
    /// Cancelled once this producer's fatal error is seen: it can deliver nothing more.
    fatal: CancellationToken,
    /// Woken by every client error, for [`Publisher::recover`] to ask whether it was fatal
    /// (the error event carries the underlying code, not that it is fatal).
    errors: tokio::sync::Notify,
    /// The librdkafka client this context belongs to, set right after it is created: delivery
    /// reports ask it whether it is in a fatal state (set before the failed batch's reports).
    client: std::sync::atomic::AtomicPtr<rdkafka::types::RDKafka>,
}

impl Context {
    fn new(deliveries: &Arc<Deliveries>) -> Context {
        Context {
            deliveries: Arc::clone(deliveries),
            fatal: CancellationToken::new(),
            errors: tokio::sync::Notify::new(),
            client: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Whether this producer hit a fatal error, asked of librdkafka itself.
    fn is_fatal(&self) -> bool {
        if self.fatal.is_cancelled() {
            return true;
        }
        let client = self.client.load(Ordering::Acquire);
        // SAFETY: set once to the client that owns this context; callbacks run on that client's
        // own poll thread, while it is alive. Without an error buffer librdkafka only returns
        // the code.
        !client.is_null()
            && unsafe { rdkafka::bindings::rd_kafka_fatal_error(client, std::ptr::null_mut(), 0) }
                != rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
    }
}

/// Builds a producer whose context knows its client.
fn create_producer(
    config: &ClientConfig,
    deliveries: &Arc<Deliveries>,
) -> Result<ThreadedProducer<Context>, PublishError> {
    let producer: ThreadedProducer<Context> = config
        .create_with_context(Context::new(deliveries))
        .map_err(PublishError::Create)?;
    producer
        .context()
        .client
        .store(producer.client().native_ptr(), Ordering::Release);
    Ok(producer)
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client error");
        self.errors.notify_one();
        let consequence = error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown);
        if let (false, Ok(mut first)) = (consequence, self.deliveries.first_cause.lock()) {
            first.get_or_insert_with(|| reason.to_owned());
        }
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent>) {
        let id = sent.id;
        match result {
            Ok(_) => {
                self.deliveries.delivered.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(names::KAFKA_DELIVERED).increment(1);
            }
            Err((_, message)) if self.gave_back() => {
                if let Ok(mut unsent) = self.deliveries.unsent.lock() {
                    unsent.push(Unsent {
                        id,
                        seq: sent.seq,
                        key: message.key().unwrap_or_default().to_vec(),
                        payload: message.payload().unwrap_or_default().to_vec(),
                    });
                }
            }
            // Sent at least once but never confirmed (in flight when the shutdown flush gave up,
            // or sent, timed out and queued again): it may well be on the topic. Not counted as
            // dropped.
            Err((error, message)) if possibly_persisted(message) => {
                self.deliveries.unconfirmed.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(names::KAFKA_UNCONFIRMED).increment(1);
                tracing::warn!(
                    result_id = %id,
                    site = %message.key().map(String::from_utf8_lossy).unwrap_or_default(),
                    %error,
                    "result sent but unconfirmed: it may or may not be on the topic"
                );
            }
            Err((error, message)) => {
                self.deliveries.count_dropped(1);
                tracing::error!(
                    result_id = %id,
                    site = %message.key().map(String::from_utf8_lossy).unwrap_or_default(),
                    %error,
                    "result could not be delivered to Kafka and is dropped"
                );
            }
        }
    }
}

impl Context {
    /// Whether a failed delivery is a result this producer gave back: it failed after the
    /// producer's fatal error (the batch that caused it, what the error purged, what the purge
    /// before its replacement took back), and shutdown is not purging.
    fn gave_back(&self) -> bool {
        self.is_fatal() && !self.deliveries.purging.load(Ordering::Relaxed)
    }
}

/// Whether librdkafka says a failed message may have been written by the broker.
fn possibly_persisted(message: &rdkafka::message::BorrowedMessage<'_>) -> bool {
    // SAFETY: the message is valid for the duration of the delivery callback.
    let status = unsafe { rdkafka::bindings::rd_kafka_message_status(message.ptr()) };
    status == rdkafka::bindings::rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED
}

/// Publishes results to one topic. Built once, shared by all checks.
pub struct Publisher {
    /// The producer; replaced after a fatal error. Each is shared with blocking helper threads
    /// (metadata fetch, flush), which librdkafka blocks.
    producer: parking_lot::RwLock<Arc<ThreadedProducer<Context>>>,
    /// What a replacement producer is built from.
    config: ClientConfig,
    /// Held by a rebuild and by the shutdown flush: the flush never runs on a producer being
    /// replaced, nor a rebuild on one being flushed.
    replacing: tokio::sync::Mutex<()>,
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
            ("linger.ms", "20"),
            ("message.timeout.ms", "0"),
            ("queue.buffering.max.messages", &queue_messages),
        ]);
        // What librdkafka will dial: `--kafka-opt bootstrap.servers=…` wins over the brokers
        // setting, and an error must name the address actually tried.
        let brokers = config
            .get("bootstrap.servers")
            .unwrap_or(&settings.brokers)
            .to_owned();
        let producer = create_producer(&config, &deliveries)?;
        let publisher = Publisher {
            producer: parking_lot::RwLock::new(Arc::new(producer)),
            config,
            replacing: tokio::sync::Mutex::new(()),
            topic: settings.topic.clone(),
            deliveries,
            abandon: CancellationToken::new(),
        };
        publisher.check_reachable(&brokers).await?;
        ensure_topic(settings, topic).await?;
        publisher.warn_if_unreplicated().await;
        Ok(publisher)
    }

    /// A topic with a single replica loses every result it holds with its one broker: say so
    /// once at startup (the local stack's single broker is such a case, and harmless).
    async fn warn_if_unreplicated(&self) {
        let producer = self.current();
        let topic = self.topic.clone();
        let replicas = tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), CONNECT_TIMEOUT)
                .ok()?;
            let partitions = metadata.topics().first()?.partitions();
            partitions.iter().map(|p| p.replicas().len()).min()
        })
        .await
        .ok()
        .flatten();
        if replicas == Some(1) {
            tracing::warn!(topic = %self.topic,
                "the topic has one replica per partition: losing that broker loses the results \
                 it holds (create the topic with --topic-replication 3, or set the brokers' \
                 default.replication.factor)");
        }
    }

    async fn check_reachable(&self, brokers: &str) -> Result<(), PublishError> {
        let producer = self.current();
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
        let cause = self
            .deliveries
            .first_cause
            .lock()
            .ok()
            .and_then(|e| e.clone());
        Err(PublishError::Unreachable {
            brokers: brokers.to_owned(),
            reason: match cause {
                Some(cause) => format!("{cause} ({error})"),
                None => error,
            },
        })
    }

    /// Queues one result for delivery. Waits while the local queue is full (backpressure);
    /// returns an error only when Kafka rejects the message outright.
    pub async fn publish(&self, result: &CheckResult) -> Result<(), PublishError> {
        let encode = |max: usize| {
            encode_within(result, max).map_err(|source| PublishError::Encode {
                id: result.id,
                source,
            })
        };
        let mut payload = encode(MAX_RESULT_BYTES)?;
        let version = SCHEMA_VERSION.to_string();
        let headers = || {
            OwnedHeaders::new().insert(Header {
                key: SCHEMA_HEADER,
                value: Some(version.as_str()),
            })
        };
        let seq = self.deliveries.sent.fetch_add(1, Ordering::Relaxed);
        let sent = || Box::new(Sent { id: result.id, seq });
        let mut record = BaseRecord::with_opaque_to(&self.topic, sent())
            .key(result.site.as_str())
            .payload(&payload)
            .headers(headers());
        let mut waited = false;
        let mut smallest_tried = false;
        loop {
            match self.current().send(record) {
                Ok(()) => break,
                // The client was configured with a smaller message limit: send the smallest form
                // of the result rather than drop it.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _))
                    if !smallest_tried =>
                {
                    smallest_tried = true;
                    tracing::warn!(result_id = %result.id, site = %result.site, bytes = payload.len(), "result larger than Kafka accepts: sending it cut down");
                    payload = encode(MIN_RESULT_BYTES)?;
                    record = BaseRecord::with_opaque_to(&self.topic, sent())
                        .key(result.site.as_str())
                        .payload(&payload)
                        .headers(headers());
                }
                Err((KafkaError::MessageProduction(code), _))
                    if self.abandon.is_cancelled() && waits_for_room(code) =>
                {
                    self.deliveries.count_dropped(1);
                    tracing::error!(result_id = %result.id, site = %result.site, "Kafka queue still full at shutdown: result dropped");
                    return Err(PublishError::Abandoned { id: result.id });
                }
                // A producer after its fatal error refuses everything until `recover` has
                // replaced it: wait, like for room in a full queue.
                Err((KafkaError::MessageProduction(code), returned))
                    if waits_for_room(code) && !self.deliveries.broken.is_cancelled() =>
                {
                    if !waited && code == RDKafkaErrorCode::QueueFull {
                        tracing::warn!(site = %result.site, "Kafka queue full: waiting (backpressure)");
                        waited = true;
                    }
                    record = returned;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                Err((source, _)) => {
                    self.deliveries.count_dropped(1);
                    return Err(PublishError::Send {
                        id: result.id,
                        source,
                    });
                }
            }
        }
        metrics::gauge!(names::KAFKA_QUEUE_DEPTH).set(f64::from(self.current().in_flight_count()));
        Ok(())
    }

    /// The producer in use now.
    fn current(&self) -> Arc<ThreadedProducer<Context>> {
        Arc::clone(&self.producer.read())
    }

    /// Replaces the producer after each fatal error until `stop`; see the module notes. When no
    /// new producer can be built, cancels [`Publisher::broken`] and returns.
    pub async fn recover(&self, stop: CancellationToken) {
        loop {
            {
                let producer = self.current();
                let context = producer.context();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = context.errors.notified() => {}
                    _ = tokio::time::sleep(FATAL_POLL) => {}
                }
                let Some((code, reason)) = producer.client().fatal_error() else {
                    continue;
                };
                context.fatal.cancel();
                tracing::error!(error = %code, reason, "fatal Kafka producer error: building a new producer and sending its queue again");
                // This handle goes here, not after the rebuild: the last one of the old
                // producer is dropped off the runtime (librdkafka's teardown blocks).
            }
            if let Err(error) = self.rebuild(&stop).await {
                tracing::error!(error = %crate::error::ErrorChain(&error), "cannot build a new Kafka producer after its fatal error");
                self.deliveries.broken.cancel();
                return;
            }
        }
    }

    /// Purges the current producer until it has reported every message, builds a new one,
    /// sends again what the old one gave back, then puts the new one in its place (so waiting
    /// publishes follow the re-sent results). Does nothing once `stop` is cancelled: the
    /// shutdown flush then counts what was given back.
    async fn rebuild(&self, stop: &CancellationToken) -> Result<(), PublishError> {
        let _replacing = self.replacing.lock().await;
        if stop.is_cancelled() {
            return Ok(());
        }
        let old = self.current();
        let purged = Arc::clone(&old);
        let _ = tokio::task::spawn_blocking(move || {
            purged.purge(PurgeConfig::default().queue().inflight());
            // Every report must be in before the re-send, or a late one would follow newer
            // results of its site.
            let deadline = std::time::Instant::now() + REBUILD_REPORT_TIMEOUT;
            while purged.in_flight_count() > 0 && std::time::Instant::now() < deadline {
                let _ = purged.flush(PURGE_REPORT_TIMEOUT);
            }
            if purged.in_flight_count() > 0 {
                tracing::error!(
                    left = purged.in_flight_count(),
                    "the failed Kafka producer did not report every message back"
                );
            }
        })
        .await;
        let new = create_producer(&self.config, &self.deliveries)?;
        let unsent = self.deliveries.take_unsent();
        let version = SCHEMA_VERSION.to_string();
        let mut resent = 0_u64;
        for result in unsent {
            let mut record = BaseRecord::with_opaque_to(
                &self.topic,
                Box::new(Sent {
                    id: result.id,
                    seq: result.seq,
                }),
            )
            .key(&result.key)
            .payload(&result.payload)
            .headers(OwnedHeaders::new().insert(Header {
                key: SCHEMA_HEADER,
                value: Some(version.as_str()),
            }));
            loop {
                match new.send(record) {
                    Ok(()) => {
                        resent += 1;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        record = returned;
                        tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                    }
                    Err((error, _)) => {
                        self.deliveries.count_dropped(1);
                        tracing::error!(result_id = %result.id, %error, "result could not be sent again after a fatal producer error and is dropped");
                        break;
                    }
                }
            }
        }
        *self.producer.write() = Arc::new(new);
        // The old producer's last thread joins off the runtime.
        tokio::task::spawn_blocking(move || drop(old));
        self.deliveries.resent.fetch_add(resent, Ordering::Relaxed);
        metrics::counter!(names::KAFKA_RESENT).increment(resent);
        metrics::counter!(names::KAFKA_PRODUCER_REBUILDS).increment(1);
        tracing::warn!(
            resent,
            "new Kafka producer in place after a fatal error; the old one's queue sent again"
        );
        Ok(())
    }

    /// Raises a fatal error in the current producer, as librdkafka's idempotence checks would
    /// (`rd_kafka_test_fatal_error`). For tests of [`Publisher::recover`].
    #[doc(hidden)]
    pub fn inject_fatal_error(&self, reason: &str) {
        let reason = std::ffi::CString::new(reason).unwrap_or_default();
        let producer = self.current();
        // SAFETY: the client pointer lives as long as `producer`, held across the call;
        // librdkafka copies the reason.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                producer.client().native_ptr(),
                rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
    }

    pub fn deliveries(&self) -> &Deliveries {
        &self.deliveries
    }

    /// Cancelled when a fatal producer error could not be recovered from: nothing more can be
    /// delivered.
    pub fn broken(&self) -> CancellationToken {
        self.deliveries.broken.clone()
    }

    /// Makes publishes that wait for room in a full queue give up (shutdown).
    pub fn abandon_waiting(&self) {
        self.abandon.cancel();
    }

    /// Waits up to `timeout` for every queued result to be delivered. What is still queued
    /// afterwards is purged; the delivery callback then counts and logs each purged result.
    /// Returns the number left undelivered.
    pub async fn flush(&self, timeout: Duration) -> u64 {
        let _replacing = self.replacing.lock().await;
        let producer = self.current();
        let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        let left = u64::try_from(self.current().in_flight_count()).unwrap_or_default();
        if left > 0 {
            tracing::error!(
                left,
                "shutdown flush timed out: purging the results still queued"
            );
            self.deliveries.purging.store(true, Ordering::Relaxed);
            let producer = self.current();
            let _ = tokio::task::spawn_blocking(move || {
                producer.purge(PurgeConfig::default().queue().inflight());
                producer.flush(PURGE_REPORT_TIMEOUT)
            })
            .await;
        }
        // Given back by a fatal error that no new producer took over before the stop.
        let unsent = self.deliveries.take_unsent();
        for result in &unsent {
            tracing::error!(result_id = %result.id, "result given back by a fatal producer error is dropped at shutdown");
        }
        let given_back = unsent.len() as u64;
        self.deliveries.count_dropped(given_back);
        left + given_back
    }
}

/// Whether a refused send waits and tries again: the queue is full, or the producer hit a fatal
/// error and is about to be replaced.
fn waits_for_room(code: RDKafkaErrorCode) -> bool {
    matches!(code, RDKafkaErrorCode::QueueFull | RDKafkaErrorCode::Fatal)
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
        // -1 asks the broker for its default.replication.factor (Kafka 2.4 and later).
        TopicReplication::Fixed(spec.replication.unwrap_or(-1)),
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

/// `result` as JSON in at most `max` bytes. A result that fits is encoded as it is; a larger one
/// is cut down step by step — every text shortened (server- and hook-controlled ones first
/// among them: failure message, final URL, assertion texts), then only the failed assertions
/// kept, then metrics dropped, then assertions dropped — so its identity, outcome, failure kind
/// and timings always reach Kafka, never dropped for their size. A cut result says so in its
/// failure message, when it has one.
pub fn encode_within(result: &CheckResult, max: usize) -> Result<Vec<u8>, serde_json::Error> {
    let payload = result.encode()?;
    if payload.len() <= max {
        return Ok(payload);
    }
    let original = payload.len();
    let mut cut = result.clone();
    let mut steps: Vec<&'static str> = Vec::new();
    for text_max in [1024, 256, 64] {
        shorten_texts(&mut cut, text_max);
        if steps.is_empty() {
            steps.push("texts");
        }
        let payload = encode_marked(&cut, original, &steps)?;
        if payload.len() <= max {
            return Ok(payload);
        }
    }
    cut.assertions.retain(|a| !a.ok);
    steps.push("passed assertions");
    let payload = encode_marked(&cut, original, &steps)?;
    if payload.len() <= max {
        return Ok(payload);
    }
    cut.metrics.clear();
    steps.push("metrics");
    let payload = encode_marked(&cut, original, &steps)?;
    if payload.len() <= max {
        return Ok(payload);
    }
    cut.assertions.clear();
    steps.push("assertions");
    encode_marked(&cut, original, &steps)
}

/// Every text of `result` that is not its identity, cut to `max` bytes.
fn shorten_texts(result: &mut CheckResult, max: usize) {
    if let Some(url) = result.final_url.as_mut() {
        shorten(url, max);
    }
    if let Some(failure) = result.failure.as_mut() {
        shorten(&mut failure.message, max);
    }
    for assertion in &mut result.assertions {
        shorten(&mut assertion.name, max);
        shorten(&mut assertion.expected, max);
        shorten(&mut assertion.actual, max);
        if let Some(reason) = assertion.reason.as_mut() {
            shorten(reason, max);
        }
    }
    if result.url.len() > max {
        shorten(&mut result.url, max);
    }
}

/// Encodes a cut result, its failure message saying what was left out.
fn encode_marked(
    result: &CheckResult,
    original: usize,
    steps: &[&str],
) -> Result<Vec<u8>, serde_json::Error> {
    let mut marked = result.clone();
    if let Some(failure) = marked.failure.as_mut() {
        failure.message.push_str(&format!(
            " [result cut from {original} bytes to fit Kafka: {} shortened or left out]",
            steps.join(", ")
        ));
    }
    marked.encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::{
        AssertionResult, Failure, FailureKind, Level, Outcome, Timings, SCHEMA_VERSION,
    };

    fn result(outcome: Outcome) -> CheckResult {
        CheckResult {
            schema: SCHEMA_VERSION,
            id: Uuid::nil(),
            site: "s".into(),
            url: "https://s.example/".into(),
            final_url: Some("https://s.example/".into()),
            scheduled_at: chrono::DateTime::UNIX_EPOCH,
            started_at: chrono::DateTime::UNIX_EPOCH,
            outcome,
            status: Some(200),
            timings: Timings::default(),
            failure: (outcome == Outcome::Down).then(|| Failure {
                kind: FailureKind::RedirectLoop,
                phase: None,
                message: "redirect loop".into(),
            }),
            assertions: Vec::new(),
            metrics: Default::default(),
            body_bytes: 0,
            body_truncated: false,
            cert_not_after: None,
            tls_insecure: false,
            config_version: "v".into(),
            attempts: 1,
            probe_host: "h".into(),
            maintenance: None,
        }
    }

    fn assertion(ok: bool, text: &str) -> AssertionResult {
        AssertionResult {
            name: "hook:inline:1".into(),
            ok,
            level: Level::Fail,
            expected: "pass".into(),
            actual: text.into(),
            reason: Some(text.into()),
        }
    }

    #[test]
    fn results_too_large_are_cut_never_dropped() {
        const MAX: usize = 8 * 1024;
        let huge = "x".repeat(200_000);
        let many: Vec<AssertionResult> = (0..2000).map(|i| assertion(i % 2 == 0, "y")).collect();
        let metrics: std::collections::BTreeMap<String, f64> =
            (0..5000).map(|i| (format!("m{i:0>100}"), 1.0)).collect();
        type Case = (
            &'static str,
            fn(
                &mut CheckResult,
                &str,
                &[AssertionResult],
                &std::collections::BTreeMap<String, f64>,
            ),
        );
        let cases: [Case; 5] = [
            ("huge failure message", |r, huge, _, _| {
                r.failure.as_mut().unwrap().message = huge.into()
            }),
            ("huge final url", |r, huge, _, _| {
                r.final_url = Some(huge.into())
            }),
            ("huge assertion texts", |r, huge, _, _| {
                r.assertions = vec![assertion(false, huge); 20]
            }),
            ("many assertions", |r, _, many, _| {
                r.assertions = many.to_vec()
            }),
            ("many metrics", |r, _, many, metrics| {
                r.assertions = many.to_vec();
                r.metrics = metrics.clone();
            }),
        ];
        for (name, make) in cases {
            let mut big = result(Outcome::Down);
            make(&mut big, &huge, &many, &metrics);
            let payload = encode_within(&big, MAX).unwrap();
            assert!(payload.len() <= MAX, "{name}: {} bytes", payload.len());
            let back: CheckResult = serde_json::from_slice(&payload).unwrap();
            assert_eq!(back.outcome, Outcome::Down, "{name}");
            assert_eq!(back.site, "s");
            let failure = back.failure.unwrap();
            assert_eq!(failure.kind, FailureKind::RedirectLoop);
            assert!(
                failure.message.contains("[result cut from"),
                "{name}: {}",
                failure.message
            );
        }
        // A result that fits is left alone.
        let small = result(Outcome::Up);
        assert_eq!(encode_within(&small, MAX).unwrap(), small.encode().unwrap());
    }
}
