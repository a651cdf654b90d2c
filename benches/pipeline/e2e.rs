//! Part 4, end to end: `sitewatch run` (producer + consumer in one process) with 1,000 sites at
//! 1 s against the local nginx, a fresh topic, group and database. Latency is "probe finished"
//! (started_at + total_ms) → "row visible in PostgreSQL".
//!
//! Visibility is observed without scanning the growing table: the consumer advances
//! `consumer_offsets` in the same transaction as the rows, so polling that small table every
//! 20 ms gives, per partition, when each offset became visible; the results are then read back
//! from the topic to map (partition, offset) to started_at + total_ms. If check_results has a
//! `stored_at` column (DEFAULT clock_timestamp()), its figures are reported as well.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sitewatch::result::CheckResult;

use crate::common::{self, Nginx, Proc};
use crate::say;
use crate::scale;

pub struct Options {
    pub sites: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

impl Options {
    pub fn full() -> Self {
        Options {
            sites: 1_000,
            warmup: Duration::from_secs(10),
            measure: Duration::from_secs(30),
        }
    }

    pub fn quick() -> Self {
        Options {
            sites: 300,
            warmup: Duration::from_secs(5),
            measure: Duration::from_secs(10),
        }
    }
}

/// How often the bench looks at consumer_offsets.
const POLL: Duration = Duration::from_millis(20);

pub async fn run(options: &Options) -> Result<Value> {
    let (kafka, db) = common::load_stack_env()?;
    let tag = common::run_tag();
    let topic = format!("sitewatch.bench.e2e.{tag}");
    let group = format!("sitewatch-bench-e2e-{tag}");
    let db_name = format!("sitewatch_bench_e2e_{tag}");
    let outcome = measure(options, &kafka, &db, &topic, &group, &db_name).await;
    common::drop_database(&db, &db_name).await;
    common::delete_topic(&kafka, &topic).await;
    outcome
}

async fn measure(
    options: &Options,
    kafka: &sitewatch::settings::KafkaSettings,
    db: &sitewatch::settings::DatabaseSettings,
    topic: &str,
    group: &str,
    db_name: &str,
) -> Result<Value> {
    let nginx = Nginx::start()?;
    let fresh = common::fresh_database(db, db_name).await?;
    let dir = common::out_dir().join("e2e");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("sites.lua");
    std::fs::write(&config, scale::sites_lua(options.sites, 1, &nginx.url()))?;
    let metrics_port = common::free_port()?;
    let log = dir.join("run.log");
    let mut command = Command::new(common::sitewatch_bin());
    command
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--env-file")
        .arg(common::env_file())
        .args([
            "--kafka-topic",
            topic,
            "--kafka-group",
            group,
            "--max-per-host",
            "10000",
            "--no-watch",
            "--no-serve",
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .env("SITEWATCH_DATABASE_URL", &fresh.url);
    say!(
        "e2e: sitewatch run, {} sites at 1 s, topic {topic}, database {db_name}",
        options.sites
    );
    let mut proc = Proc::spawn("sitewatch run", command, &log)?;
    tokio::task::block_in_place(|| {
        common::wait_for_log(&mut proc, &log, "scheduling", Duration::from_secs(60))
    })?;
    let scheduling_at = Utc::now();

    let watcher = sitewatch::store::connect(&fresh).await?;
    let stored_at_column = watcher
        .query_opt(
            "SELECT 1 FROM information_schema.columns WHERE table_name = 'check_results' \
             AND column_name = 'stored_at'",
            &[],
        )
        .await?
        .is_some();
    // Per partition: (next_offset, first time seen), in order.
    let mut seen: BTreeMap<i32, Vec<(i64, DateTime<Utc>)>> = BTreeMap::new();
    let query = watcher
        .prepare("SELECT partition, next_offset FROM consumer_offsets WHERE consumer_group = $1 AND topic = $2")
        .await?;
    let total = options.warmup + options.measure;
    let window = (
        scheduling_at + chrono::Duration::from_std(options.warmup)?,
        scheduling_at + chrono::Duration::from_std(total)?,
    );
    let mut polls = 0u64;
    let mut missed0 = None;
    let started = tokio::time::Instant::now();
    // Keep polling a few seconds past the window so its last results become visible.
    let stop_at = started + total + Duration::from_secs(5);
    let mut interval = tokio::time::interval(POLL);
    while tokio::time::Instant::now() < stop_at {
        interval.tick().await;
        polls += 1;
        if polls % 50 == 0 {
            proc.check_alive(&log)?;
        }
        if missed0.is_none() && tokio::time::Instant::now() >= started + options.warmup {
            missed0 = Some(common::scrape_sum(
                metrics_port,
                "sitewatch_missed_ticks_total",
            )?);
        }
        let now = Utc::now();
        for row in watcher.query(&query, &[&group, &topic]).await? {
            let (partition, next): (i32, i64) = (row.get(0), row.get(1));
            let list = seen.entry(partition).or_default();
            if list.last().is_none_or(|(last, _)| next > *last) {
                list.push((next, now));
            }
        }
    }
    let missed1 = common::scrape_sum(metrics_port, "sitewatch_missed_ticks_total")?;
    let pid = proc.pid();
    let rss = common::proc_status_kb(pid, "VmHWM").unwrap_or(0) as f64 / 1024.0;
    let clean = proc.stop(Duration::from_secs(30));
    drop(nginx);

    // Map every result to its visibility time.
    let (reader_kafka, reader_topic) = (kafka.clone(), topic.to_owned());
    let results = tokio::task::spawn_blocking(move || {
        // (partition, offset, scheduled_at, started_at, finished)
        type Seen = (i32, i64, DateTime<Utc>, DateTime<Utc>, DateTime<Utc>);
        let mut out: Vec<Seen> = Vec::new();
        common::read_topic(
            &reader_kafka,
            &reader_topic,
            |partition, offset, payload| {
                if let Ok(result) = serde_json::from_slice::<CheckResult>(payload) {
                    let finished = result.started_at
                        + chrono::Duration::microseconds((result.timings.total_ms * 1000.0) as i64);
                    out.push((
                        partition,
                        offset,
                        result.scheduled_at,
                        result.started_at,
                        finished,
                    ));
                }
            },
        )
        .map(|_| out)
    })
    .await??;
    let mut latencies = Vec::new();
    let mut lags = Vec::new();
    let mut not_visible = 0u64;
    for (partition, offset, scheduled_at, started_at, finished) in &results {
        if *scheduled_at < window.0 || *scheduled_at >= window.1 {
            continue;
        }
        lags.push(
            (*started_at - *scheduled_at)
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1000.0,
        );
        let visible = seen.get(partition).and_then(|list| {
            list.iter()
                .find(|(next, _)| *next > *offset)
                .map(|(_, at)| *at)
        });
        match visible {
            Some(at) => {
                latencies.push((at - *finished).num_microseconds().unwrap_or(0) as f64 / 1000.0)
            }
            None => not_visible += 1,
        }
    }
    let e2e = common::summary(&mut latencies);
    let lag = common::summary(&mut lags);
    say!(
        "e2e: probe finished → row visible p50 {} ms, p99 {} ms, max {} ms ({} results, {not_visible} not seen)",
        e2e["p50"],
        e2e["p99"],
        e2e["max"],
        e2e["count"]
    );

    let stored_at = if stored_at_column {
        let row = watcher
            .query_one(
                "SELECT count(*), \
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), \
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms) \
                 FROM (SELECT extract(epoch FROM stored_at - started_at) * 1000 - total_ms AS ms \
                       FROM check_results WHERE scheduled_at >= $1 AND scheduled_at < $2) s",
                &[&window.0, &window.1],
            )
            .await
            .context("stored_at query")?;
        let f = |i: usize| row.get::<_, Option<f64>>(i).map(common::round2);
        Some(json!({"count": row.get::<_, i64>(0), "p50": f(1), "p99": f(2), "max": f(3)}))
    } else {
        None
    };
    Ok(json!({
        "sites": options.sites,
        "interval_s": 1,
        "window_s": options.measure.as_secs(),
        "warmup_s": options.warmup.as_secs(),
        "method": if stored_at_column {
            "stored_at column (DEFAULT clock_timestamp()) and consumer_offsets polled every 20 ms"
        } else {
            "consumer_offsets polled every 20 ms (advanced in the rows' transaction), results read back from Kafka"
        },
        "e2e_ms": e2e,
        "e2e_stored_at_ms": stored_at,
        "not_visible": not_visible,
        "polls": polls,
        "lag_ms": lag,
        "missed_ticks_window": missed1 - missed0.unwrap_or(0.0),
        "rss_peak_mib": common::round2(rss),
        "clean_exit": clean,
    }))
}
