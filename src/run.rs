//! `sitewatch run`: the producer, the storing consumer, the alerter and the status page in one
//! process, for small deployments and `dev/run`.
//!
//! Order matters at both ends. A consumer that fails is started again while probing goes on;
//! the producer failing stops everything. At shutdown the producer stops first (flushing its
//! queue to Kafka); the consumers keep going until what it published is stored and judged (their
//! offsets in PostgreSQL reach the topic's end), for at most [`RUN_DRAIN_MAX`] — what is left is
//! logged, and stored, exactly once, at the next start.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::alert::{self, AlertError, AlertOptions};
use crate::consume::{self, lag, ConsumeError, ConsumeOptions};
use crate::error::ErrorChain;
use crate::metrics as names;
use crate::produce::{self, ProduceError, ProduceOptions};
use crate::serve::{self, ServeOptions};
use crate::settings::{DatabaseSettings, KafkaSettings};

/// How long the consumers keep going after the producer stopped when the topic's end or their
/// offsets cannot be read (Kafka or PostgreSQL away).
pub const RUN_DRAIN: Duration = Duration::from_secs(3);
/// Longest the consumers keep going after the producer stopped, catching up with what it
/// published.
pub const RUN_DRAIN_MAX: Duration = Duration::from_secs(60);
/// How often the drain compares the consumers' offsets with the topic's end.
const DRAIN_POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Produce(#[from] ProduceError),
    #[error(transparent)]
    Consume(#[from] ConsumeError),
    #[error(transparent)]
    Alert(#[from] AlertError),
}

/// First delay before a failed consumer is started again; doubles up to [`RESTART_MAX`].
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(60);

/// Runs every role until `shutdown` is cancelled or the producer fails. A consumer (storing or
/// alerting) that fails is logged and started again with a backoff: probing goes on, the
/// results wait in Kafka, and the restarted consumer stores them exactly once.
pub async fn run(
    kafka: &KafkaSettings,
    db: &DatabaseSettings,
    produce_options: ProduceOptions,
    consume_options: ConsumeOptions,
    serve_addr: Option<SocketAddr>,
    reload: mpsc::Receiver<()>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    // The consumers have their own token: they must outlive the producer by the drain.
    let consumer_stop = CancellationToken::new();
    // The alerter's no-data check ends when scheduling does (shutdown, or the producer
    // failing): waiting for in-flight checks and the drain are silence on purpose.
    let probing_stopped = shutdown.child_token();
    let alert_kafka = KafkaSettings {
        group: kafka.alert_group.clone(),
        ..kafka.clone()
    };
    let alert_options = AlertOptions {
        config_path: produce_options.config_path.clone(),
        consume: consume_options.clone(),
        dry_run: false,
        probing_stopped: probing_stopped.clone(),
    };
    let serve_options = serve_addr.map(|addr| ServeOptions {
        addr,
        config_path: produce_options.config_path.clone(),
    });
    let consumers = async {
        tokio::join!(
            supervise("storing consumer", &consumer_stop, || {
                consume::run(kafka, db, consume_options.clone(), consumer_stop.clone())
            }),
            supervise("alerter", &consumer_stop, || {
                alert::run(
                    &alert_kafka,
                    db,
                    alert_options.clone(),
                    consumer_stop.clone(),
                )
            }),
            async {
                // The status page (when asked for) is a reader like the others: a failure —
                // its port taken, an invalid sites.lua — is logged and retried.
                if let Some(options) = &serve_options {
                    supervise("status page", &consumer_stop, || {
                        serve::serve(db, options.clone(), consumer_stop.clone())
                    })
                    .await
                }
            },
        )
    };
    let producer = async {
        let result = produce::produce(kafka, produce_options, reload, shutdown.clone()).await;
        probing_stopped.cancel();
        drain(kafka, db).await;
        consumer_stop.cancel();
        result
    };
    let (produced, _) = tokio::join!(producer, consumers);
    Ok(produced?)
}

/// Waits until both consumer groups' offsets in PostgreSQL reach the end the topic has now (what
/// the stopped producer published is stored and judged), at most [`RUN_DRAIN_MAX`]; logs what is
/// left. Without the topic's end or the offsets, waits [`RUN_DRAIN`].
async fn drain(kafka: &KafkaSettings, db: &DatabaseSettings) {
    let started = tokio::time::Instant::now();
    let ends = {
        let kafka = kafka.clone();
        tokio::task::spawn_blocking(move || {
            let client = lag::watermark_client(&kafka)?;
            lag::topic_ends(&client, &kafka.topic, Duration::from_secs(5))
        })
        .await
    };
    let ends = match ends
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        Ok(ends) => ends,
        Err(error) => {
            tracing::warn!(%error, "cannot read the topic's end: the consumers drain for {RUN_DRAIN:?}");
            return tokio::time::sleep(RUN_DRAIN).await;
        }
    };
    let client = match crate::store::connect(db).await {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(error = %ErrorChain(&error), "cannot read the consumers' offsets: they drain for {RUN_DRAIN:?}");
            return tokio::time::sleep(RUN_DRAIN.saturating_sub(started.elapsed())).await;
        }
    };
    let groups = [kafka.group.clone(), kafka.alert_group.clone()];
    let mut behind = Vec::new();
    loop {
        match lag::behind(&client, &groups, &kafka.topic, &ends).await {
            Ok(rows) => {
                behind = rows.into_iter().filter(|(_, n)| *n > 0).collect();
                if behind.is_empty() {
                    tracing::info!(
                        waited_ms = started.elapsed().as_millis() as u64,
                        "drained: everything published is stored and judged"
                    );
                    return;
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the consumers' offsets"),
        }
        if started.elapsed() >= RUN_DRAIN_MAX {
            tracing::warn!(?behind, "stopping with results not yet stored or judged (messages behind, by group): they are, exactly once, at the next start");
            return;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Runs `role` until `stop`, starting it again after each failure (logged, with a backoff).
async fn supervise<F, Fut, E>(name: &str, stop: &CancellationToken, role: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::error::Error + 'static,
{
    names::zero_role(name);
    let mut delay = RESTART_FIRST;
    loop {
        match role().await {
            Ok(()) => return,
            Err(error) => {
                tracing::error!(role = name, error = %ErrorChain(&error), retry_in_s = delay.as_secs(),
                    "failed; probing goes on, starting it again");
                metrics::counter!(names::ROLE_RESTARTS, "role" => name.to_owned()).increment(1);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RESTART_MAX);
    }
}
