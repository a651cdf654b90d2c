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

/// A shutdown flush that gives up while the broker is frozen: results sent but never answered
/// are counted as unconfirmed, apart from the ones never sent (dropped). Every result that
/// reaches the topic once the broker thaws is among the unconfirmed, never among the dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_in_flight_when_the_flush_gives_up_are_unconfirmed_not_dropped() {
    let _stack = stack::StackLock::exclusive();
    let topic = stack::unique_name("unconfirmed");
    let publisher = producer::publisher(&topic).await;
    // Warm up: the connection and the producer id exist before the broker freezes.
    publisher.publish(&producer::result("warm")).await.unwrap();
    assert_eq!(publisher.flush(Duration::from_secs(30)).await, 0);
    stack::command("kafka-pause");
    let thaw = scopeguard_thaw();
    const N: u64 = 2_000;
    for n in 0..N {
        publisher
            .publish(&producer::result(&format!("u{}", n % 10)))
            .await
            .unwrap();
    }
    let left = publisher.flush(Duration::from_secs(3)).await;
    drop(thaw);
    let deliveries = publisher.deliveries();
    let (dropped, unconfirmed) = (
        deliveries.dropped.load(Ordering::Relaxed),
        deliveries.unconfirmed.load(Ordering::Relaxed),
    );
    assert_eq!(left, N, "none confirmed while frozen");
    assert_eq!(dropped + unconfirmed, N);
    assert!(unconfirmed > 0, "some were in flight: {dropped} dropped");
    let on_topic = producer::read_results(
        producer::kafka_client(false),
        &topic,
        Duration::from_secs(5),
        Duration::from_secs(120),
    )
    .await
    .iter()
    .filter(|p| p.key != "warm")
    .count() as u64;
    println!("{dropped} dropped, {unconfirmed} unconfirmed, {on_topic} of them on the topic");
    assert!(
        on_topic <= unconfirmed,
        "{on_topic} on the topic, only {unconfirmed} unconfirmed ({dropped} dropped)"
    );
}

/// Resumes the broker when dropped, also when the test fails first.
fn scopeguard_thaw() -> impl Drop {
    struct Thaw;
    impl Drop for Thaw {
        fn drop(&mut self) {
            stack::try_command("kafka-resume");
        }
    }
    Thaw
}
