//! `sitewatch run`: the producer and the storing consumer in one process, for small
//! deployments and `dev/run`.
//!
//! Order matters at both ends. Either half failing stops the other. At shutdown the producer
//! stops first (flushing its queue to Kafka); the consumer keeps going for [`RUN_DRAIN`] so the
//! results just flushed are stored too — what is left is stored, exactly once, at the next start.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
}

/// Runs both roles until `shutdown` is cancelled or either fails; returns the first failure.
pub async fn run(
    kafka: &KafkaSettings,
    db: &DatabaseSettings,
    produce_options: ProduceOptions,
    consume_options: ConsumeOptions,
    reload: mpsc::Receiver<()>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    // The consumer has its own token: it must outlive the producer by the drain.
    let consumer_stop = CancellationToken::new();
    let consumer = async {
        let result = consume::run(kafka, db, consume_options, consumer_stop.clone()).await;
        shutdown.cancel();
        result
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
        (_, Err(error)) => Err(error.into()),
        (Ok(()), Ok(())) => Ok(()),
    }
}
