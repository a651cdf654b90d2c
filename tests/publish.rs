//! The publisher against the real broker: a fatal producer error ends that producer, not the
//! results it held.

mod producer;
mod stack;
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sitewatch::result::CheckResult;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Results published before, at and after two fatal errors all reach the topic; each site's
/// results first appear in the order they were published; nothing is counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_loses_nothing_the_queue_held() {
    let _stack = stack::StackLock::shared();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("sitewatch=debug,warn")
        .with_test_writer()
        .try_init();
    let topic = stack::unique_name("fatal");
    let publisher = Arc::new(producer::publisher(&topic).await);
    let stop = CancellationToken::new();
    let recovery = tokio::spawn({
        let (publisher, stop) = (Arc::clone(&publisher), stop.clone());
        async move { publisher.recover(stop).await }
    });
    let sites: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    let mut published: Vec<CheckResult> = Vec::new();
    // Three rounds; after the first two, a fatal error while the round is still queued.
    for round in 0..3 {
        for n in 0..3_000 {
            let r = producer::result(&sites[n % sites.len()]);
            publisher.publish(&r).await.expect("publish");
            published.push(r);
        }
        if round < 2 {
            publisher.inject_fatal_error(&format!("test: fatal error {round}"));
        }
    }
    let left = publisher.flush(Duration::from_secs(60)).await;
    stop.cancel();
    recovery.await.unwrap();
    let deliveries = publisher.deliveries();
    assert_eq!(left, 0, "undelivered at the flush");
    assert_eq!(deliveries.dropped.load(Ordering::Relaxed), 0, "dropped");
    assert!(
        deliveries.resent.load(Ordering::Relaxed) > 0,
        "the fatal errors took nothing back: the test did not reach the recovery"
    );
    assert!(!publisher.broken().is_cancelled());

    let read = producer::read_results(
        producer::kafka_client(false),
        &topic,
        Duration::from_secs(5),
        Duration::from_secs(120),
    )
    .await;
    let on_topic: HashSet<Uuid> = read.iter().map(|p| p.result.id).collect();
    let missing = published
        .iter()
        .filter(|r| !on_topic.contains(&r.id))
        .count();
    assert_eq!(missing, 0, "of {} published", published.len());
    // Per site, first appearances on the topic follow the publishing order.
    let mut first_seen: HashMap<&str, Vec<Uuid>> = HashMap::new();
    let mut seen = HashSet::new();
    for p in &read {
        if seen.insert(p.result.id) {
            first_seen.entry(&p.key).or_default().push(p.result.id);
        }
    }
    for site in &sites {
        let expected: Vec<Uuid> = published
            .iter()
            .filter(|r| &r.site == site)
            .map(|r| r.id)
            .collect();
        assert!(
            first_seen.get(site.as_str()) == Some(&expected),
            "site {site}: results out of order on the topic"
        );
    }
}
