//! A broker outage mid-run: results produced while Kafka is down wait in the local queue and
//! all reach the topic afterwards, each once. Alone in its own test binary because it stops the
//! shared broker.

mod producer;
mod stack;
mod support;

use std::collections::HashSet;
use std::time::Duration;

use producer::Sitewatch;

#[tokio::test(flavor = "multi_thread")]
async fn results_from_a_broker_outage_arrive_afterwards_exactly_once() {
    let _stack = stack::StackLock::exclusive();
    let server = support::serve("127.0.0.1:0", |_request, mut conn| async move {
        conn.respond(200, &[], b"fine").await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    std::fs::write(
        &config,
        format!(
            r#"for i = 1, 3 do site {{ name = "o" .. i, url = "{}" .. i, interval = "1s", timeout = "500ms" }} end"#,
            server.url("/o/")
        ),
    )
    .unwrap();
    let topic = stack::unique_name("outage");
    // Shutdown waits for the queue to reach the broker: after a restart the producer may take a
    // while to reconnect (librdkafka backs off up to 10 s), longer than the default 15 s flush
    // on a loaded machine.
    let mut sitewatch = Sitewatch::spawn(
        &[
            "produce",
            "--config",
            config.to_str().unwrap(),
            "--flush-timeout-secs",
            "90",
        ],
        &producer::kafka_env(false, &topic),
        dir.path(),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;

    stack::command("kafka-stop");
    let during_before = server.requests().len();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let probed_during_outage = server.requests().len() - during_before;
    stack::command("kafka-start");
    tokio::time::sleep(Duration::from_secs(10)).await;

    sitewatch.terminate(Duration::from_secs(120));
    assert!(
        probed_during_outage >= 30,
        "probing must go on during the outage ({probed_during_outage} probes)"
    );

    let results = producer::read_results(
        producer::kafka_client(false),
        &topic,
        Duration::from_secs(5),
        Duration::from_secs(120),
    )
    .await;
    let ids: HashSet<_> = results.iter().map(|p| p.result.id).collect();
    assert_eq!(ids.len(), results.len(), "an id appears twice on the topic");
    assert_eq!(
        results.len(),
        server.requests().len(),
        "every probe's result must reach the topic; log:\n{}",
        sitewatch.log_text()
    );
    for site in ["o1", "o2", "o3"] {
        let mut ticks: Vec<_> = results
            .iter()
            .filter(|p| p.result.site == site)
            .map(|p| p.result.scheduled_at)
            .collect();
        ticks.sort();
        assert!(ticks.len() >= 30, "{site}: {} results", ticks.len());
        for pair in ticks.windows(2) {
            assert_eq!(
                (pair[1] - pair[0]).num_milliseconds(),
                1000,
                "{site}: a tick is missing around {}",
                pair[0]
            );
        }
    }
}
