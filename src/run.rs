//! `sitewatch run`: the producer and the storing consumer in one process, for small
//! deployments and `dev/run`.
//!
//! Order matters at both ends. Either half failing stops the other. At shutdown the producer
//! stops first (flushing its queue to Kafka); the consumer keeps going for [`RUN_DRAIN`] so the
//! results just flushed are stored too — what is left is stored, exactly once, at the next start.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::alert::{self, AlertError, AlertOptions};
use crate::consume::{self, ConsumeError, ConsumeOptions};
use crate::produce::{self, ProduceError, ProduceOptions};
use crate::settings::{DatabaseSettings, KafkaSettings};

/// How long the consumer keeps storing after the producer stopped.
pub const RUN_DRAIN: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Produce(#[from] ProduceError),
    #[error(transparent)]
    Consume(#[from] ConsumeError),
    #[error(transparent)]
    Alert(#[from] AlertError),
}

/// Runs every role until `shutdown` is cancelled or one fails; returns the first failure. The
/// alerter (its own consumer group, `kafka.alert_group`) stops with the storing consumer.
pub async fn run(
    kafka: &KafkaSettings,
    db: &DatabaseSettings,
    produce_options: ProduceOptions,
    consume_options: ConsumeOptions,
    reload: mpsc::Receiver<()>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    // The consumers have their own token: they must outlive the producer by the drain.
    let consumer_stop = CancellationToken::new();
    let alert_kafka = KafkaSettings {
        group: kafka.alert_group.clone(),
        ..kafka.clone()
    };
    let alert_options = AlertOptions {
        config_path: produce_options.config_path.clone(),
        consume: consume_options.clone(),
        dry_run: false,
    };
    let consumer = async {
        let (stored, alerted) = tokio::join!(
            consume::run(kafka, db, consume_options, consumer_stop.clone()),
            async {
                let result =
                    alert::run(&alert_kafka, db, alert_options, consumer_stop.clone()).await;
                // An alerter failure stops everything too, as a storing one does.
                if result.is_err() {
                    consumer_stop.cancel();
                }
                result
            }
        );
        shutdown.cancel();
        stored
            .map_err(RunError::from)
            .and(alerted.map_err(RunError::from))
    };
    let producer = async {
        let result = produce::produce(kafka, produce_options, reload, shutdown.clone()).await;
        tokio::select! {
            _ = tokio::time::sleep(RUN_DRAIN) => {}
            _ = consumer_stop.cancelled() => {}
        }
        consumer_stop.cancel();
        result
    };
    match tokio::join!(producer, consumer) {
        (Err(error), _) => Err(error.into()),
        (_, Err(error)) => Err(error),
        (Ok(()), Ok(())) => Ok(()),
    }
}
