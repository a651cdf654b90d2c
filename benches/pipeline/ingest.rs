//! Part 3, ingest: 1,000,000 realistic CheckResults (~1 KB of JSON each; 1,000 sites checked
//! every 15 s, about 4 hours) published to a fresh 6-partition topic, then stored by the real
//! `sitewatch consume` binary — rows, rollups, site state and state changes — into a fresh
//! database; rows/s from the consumer's start until all 1,000,000 rows are committed, final count
//! checked.
//!
//! The ceiling, in the same run: the same rows by binary COPY into the same table (fresh
//! database, same migrations) from this process — batches of 5,000 and of the consumer's batch size, one transaction each, only
//! the COPY + COMMIT timed (building the rows is not; the two jsonb columns go as ready JSON
//! text, the cheapest encoding).

use std::collections::BTreeMap;
use std::pin::pin;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use chrono::{DateTime, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{json, Value};
use sitewatch::result::{
    AssertionResult, CheckResult, Failure, FailureKind, Level, Outcome, Timings, SCHEMA_VERSION,
};
use sitewatch::settings::{DatabaseSettings, KafkaSettings};
use sitewatch::store::{CheckRow, COLUMNS, COPY_TYPES};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use crate::common::{self, Proc};
use crate::say;

pub struct Options {
    pub rows: u64,
    pub partitions: i32,
    /// COPY-vs-consume rounds (each into fresh databases).
    pub rounds: usize,
}

impl Options {
    pub fn full() -> Self {
        Options {
            rows: 1_000_000,
            partitions: 6,
            rounds: 2,
        }
    }

    pub fn quick() -> Self {
        Options {
            rows: 50_000,
            partitions: 6,
            rounds: 1,
        }
    }
}

/// Rows per COPY transaction in the ceiling loader (the consumer's default batch, too).
/// Rows per COPY transaction of the ceiling: the consumer's own batch size, and 5,000 (its
/// size before 2026-11-30, when it went up to 20,000). The ceiling is the faster of the two, so
/// the consumer's batch size never makes the ceiling lower than COPY can do.
const COPY_BATCHES: [usize; 2] = [5_000, sitewatch::consume::DEFAULT_MAX_BATCH_ROWS];
/// Distinct sites the generated results belong to (Kafka keys).
const SITES: u64 = 1_000;
/// How often each generated site is checked: 1,000,000 results span about 4 hours, so the
/// consumer's rollups see 1,000 sites move through hours and days as a backlog does.
const INTERVAL_MS: u64 = 15_000;

/// splitmix64: deterministic pseudo-random bits from an index.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Result number `i`: what a busy installation produces — mostly up with five built-in
/// assertions, some degraded or down, a hook metric now and then. About 1 KB of JSON.
pub fn sample_result(i: u64, base: DateTime<Utc>) -> CheckResult {
    let r = mix(i);
    let site_no = i % SITES;
    let site = format!(
        "shop-{}-{site_no:04}",
        ["eu", "us", "ap"][(site_no % 3) as usize]
    );
    let url = format!("https://{site}.example.com/healthz");
    // Site n is due at n × 15 ms into every 15 s round.
    let scheduled_at = base
        + chrono::Duration::milliseconds(
            ((i / SITES) * INTERVAL_MS + site_no * (INTERVAL_MS / SITES)) as i64,
        );
    let started_at = scheduled_at + chrono::Duration::microseconds((r % 3000) as i64);
    let ms = |shift: u32, scale: u64| ((r >> shift) % scale) as f64 / 1000.0;
    let timings = Timings {
        dns_ms: Some(ms(0, 4_000)),
        connect_ms: Some(ms(8, 30_000)),
        tls_ms: Some(ms(16, 60_000)),
        ttfb_ms: Some(ms(24, 150_000)),
        transfer_ms: Some(ms(32, 10_000)),
        total_ms: 0.0,
    };
    let total = [
        timings.dns_ms,
        timings.connect_ms,
        timings.tls_ms,
        timings.ttfb_ms,
        timings.transfer_ms,
    ]
    .iter()
    .flatten()
    .sum::<f64>();
    let timings = Timings {
        total_ms: (total * 1000.0).round() / 1000.0,
        ..timings
    };
    let roll = r % 100;
    let outcome = match roll {
        0..=1 => Outcome::Down,
        2..=4 => Outcome::Degraded,
        _ => Outcome::Up,
    };
    let assertion =
        |name: &str, ok: bool, level: Level, expected: &str, actual: String| AssertionResult {
            name: name.into(),
            ok,
            level,
            expected: expected.into(),
            actual,
            reason: None,
        };
    let slow = outcome == Outcome::Degraded;
    let mut assertions = vec![
        assertion(
            "status",
            outcome != Outcome::Down,
            Level::Fail,
            "200",
            if outcome == Outcome::Down {
                "503".into()
            } else {
                "200".into()
            },
        ),
        assertion(
            "body",
            outcome != Outcome::Down,
            Level::Fail,
            "/\"status\":\\s*\"UP\"/",
            "matched".into(),
        ),
        assertion(
            "max_time",
            true,
            Level::Fail,
            "<= 5000 ms",
            format!("{:.1} ms", timings.total_ms),
        ),
        assertion(
            "warn_time",
            !slow,
            Level::Warn,
            "<= 1500 ms",
            format!("{:.1} ms", if slow { 1650.0 } else { timings.total_ms }),
        ),
        assertion(
            "cert_days",
            true,
            Level::Fail,
            ">= 14 days",
            format!("{} days", 30 + r % 300),
        ),
    ];
    let mut metrics = BTreeMap::new();
    if i % 4 == 0 {
        metrics.insert("queue_depth".into(), (r % 500) as f64);
        assertions.push(assertion(
            "hook:script:queue_depth",
            true,
            Level::Fail,
            "pass",
            "pass".into(),
        ));
    }
    for a in &mut assertions {
        if !a.ok {
            a.reason = Some(format!("{} was {}", a.name, a.actual));
        }
    }
    let failure = match outcome {
        Outcome::Up => None,
        Outcome::Degraded => Some(Failure {
            kind: FailureKind::Assertion,
            phase: None,
            message: "warn_time: 1650.0 ms > 1500 ms".into(),
        }),
        Outcome::Down => Some(Failure {
            kind: FailureKind::Assertion,
            phase: None,
            message: "status: expected 200, got 503; body: no match for /\"status\":\\s*\"UP\"/"
                .into(),
        }),
    };
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&mix(i ^ 0x5eed).to_le_bytes());
    random[8..].copy_from_slice(&(i as u16).to_le_bytes());
    let id =
        uuid::Builder::from_unix_timestamp_millis(scheduled_at.timestamp_millis() as u64, &random)
            .into_uuid();
    CheckResult {
        schema: SCHEMA_VERSION,
        id,
        site,
        url: url.clone(),
        final_url: Some(url),
        scheduled_at,
        started_at,
        outcome,
        status: Some(if outcome == Outcome::Down { 503 } else { 200 }),
        timings,
        failure,
        assertions,
        metrics,
        body_bytes: 1_800 + r % 600,
        body_truncated: false,
        cert_not_after: Some(base + chrono::Duration::days(30 + (r % 300) as i64)),
        tls_insecure: false,
        config_version: "3f9c2a7be41d08c5".into(),
        attempts: if outcome == Outcome::Down { 2 } else { 1 },
        probe_host: "probe-eu-west-1a".into(),
        maintenance: None,
    }
}

/// Publishes `rows` results to `topic` as fast as a local idempotent producer can (zstd, the
/// publisher's settings). Returns (seconds, mean JSON bytes).
fn publish(
    kafka: &KafkaSettings,
    topic: &str,
    rows: u64,
    base: DateTime<Utc>,
) -> Result<(f64, f64)> {
    let mut config = kafka.client_config(&[]);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "zstd")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576");
    let producer: BaseProducer = config.create()?;
    let version = SCHEMA_VERSION.to_string();
    let start = Instant::now();
    let mut bytes = 0u64;
    for i in 0..rows {
        let result = sample_result(i, base);
        let payload = serde_json::to_vec(&result)?;
        bytes += payload.len() as u64;
        let headers = OwnedHeaders::new().insert(Header {
            key: "schema-version",
            value: Some(version.as_str()),
        });
        let mut record = BaseRecord::to(topic)
            .key(result.site.as_str())
            .payload(&payload)
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((error, _)) => bail!("publishing to {topic}: {error}"),
            }
        }
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    // Not producer.flush(120 s): rdkafka 0.37 counts that timeout down by 100 ms per poll however
    // soon the poll returns, so with delivery reports arriving all the time it gives up early.
    let deadline = Instant::now() + Duration::from_secs(120);
    while producer.in_flight_count() > 0 {
        ensure!(
            Instant::now() < deadline,
            "publishing to {topic}: {} messages still in flight after 120 s",
            producer.in_flight_count()
        );
        producer.poll(Duration::from_millis(100));
    }
    Ok((start.elapsed().as_secs_f64(), bytes as f64 / rows as f64))
}

/// The ceiling: rows built untimed, then COPY + COMMIT per batch of 5,000, timed.
async fn copy_ceiling(
    db: &DatabaseSettings,
    rows: u64,
    partitions: i32,
    base: DateTime<Utc>,
    batch_rows: usize,
) -> Result<Value> {
    let mut client = sitewatch::store::connect(db).await?;
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    // The day partitions the rows need (the consumer creates its own), untimed.
    let last = base + chrono::Duration::milliseconds((rows / SITES * INTERVAL_MS) as i64);
    client
        .execute(
            "SELECT sitewatch_ensure_partitions($1, $2)",
            &[&base, &last],
        )
        .await?;
    let backend_cpu0 = common::backend_cpu(Some(backend as u32));
    let cpu0 = common::self_cpu_seconds();
    let statement = format!("COPY check_results ({COLUMNS}) FROM STDIN (FORMAT binary)");
    let mut timed = Duration::ZERO;
    let wall = Instant::now();
    let mut i = 0u64;
    while i < rows {
        let n = (rows - i).min(batch_rows as u64);
        let batch: Vec<CheckRow> = (i..i + n)
            .map(|k| {
                let result = sample_result(k, base);
                let partition = (k % partitions as u64) as i32;
                let row = CheckRow::from_result(result, partition, (k / partitions as u64) as i64)?;
                anyhow::Ok(row)
            })
            .collect::<Result<_>>()?;
        let start = Instant::now();
        let tx = client.transaction().await?;
        let sink = tx.copy_in(&statement).await?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, COPY_TYPES));
        for row in &batch {
            writer.as_mut().write(&row.values()).await?;
        }
        writer.finish().await?;
        tx.commit().await?;
        timed += start.elapsed();
        i += n;
    }
    let wall = wall.elapsed().as_secs_f64();
    let backend_cpu = common::backend_cpu(Some(backend as u32)) - backend_cpu0;
    let count: i64 = client
        .query_one("SELECT count(*) FROM check_results", &[])
        .await?
        .get(0);
    ensure!(
        count as u64 == rows,
        "ceiling loader stored {count} rows, expected {rows}"
    );
    let seconds = timed.as_secs_f64();
    Ok(json!({
        "rows_per_s": (rows as f64 / seconds).round(),
        "copy_seconds": common::round2(seconds),
        "wall_seconds_with_row_building": common::round2(wall),
        "loader_cpu_s": common::round2(common::self_cpu_seconds() - cpu0),
        "pg_backend_cpu_s": common::round2(backend_cpu),
        "pg_backend_cpu_share": common::round2(backend_cpu / seconds),
    }))
}

/// The real consumer: `sitewatch consume` on `topic` into `db` until all rows are committed.
async fn consume(db: &DatabaseSettings, topic: &str, group: &str, rows: u64) -> Result<Value> {
    let dir = common::out_dir().join("ingest");
    std::fs::create_dir_all(&dir)?;
    let log = dir.join(format!("consume-{group}.log"));
    let watcher = sitewatch::store::connect(db).await?;
    let mut command = Command::new(common::sitewatch_bin());
    command
        .arg("consume")
        .arg("--env-file")
        .arg(common::env_file())
        .args(["--kafka-topic", topic, "--kafka-group", group])
        .env("SITEWATCH_DATABASE_URL", &db.url);
    let start = Instant::now();
    let mut proc = Proc::spawn("sitewatch consume", command, &log)?;
    let pid = proc.pid();
    // consumer_offsets advances in the transaction that stores the rows it covers: its sum is
    // the committed row count (no dead letters here), and reading it costs nothing, unlike
    // count(*) over a growing 1 GB table every 100 ms.
    let committed = "SELECT coalesce(sum(next_offset), 0)::bigint FROM consumer_offsets \
                     WHERE consumer_group = $1 AND topic = $2";
    let mut first_rows: Option<(Instant, i64)> = None;
    let mut backend: Option<u32> = None;
    let mut backend_cpu = 0.0;
    let done = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        proc.check_alive(&log)?;
        if backend.is_none() {
            backend = watcher
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                     AND application_name = 'sitewatch' AND pid <> pg_backend_pid()",
                    &[],
                )
                .await?
                .map(|row| row.get::<_, i32>(0) as u32);
        }
        backend_cpu = common::backend_cpu(backend).max(backend_cpu);
        let n: i64 = watcher
            .query_one(committed, &[&group, &topic])
            .await?
            .get(0);
        if n > 0 && first_rows.is_none() {
            first_rows = Some((Instant::now(), n));
        }
        if n as u64 >= rows {
            break Instant::now();
        }
        if start.elapsed() > Duration::from_secs(900) {
            bail!("consume stored only {n} of {rows} rows in 15 minutes");
        }
    };
    let seconds = done.duration_since(start).as_secs_f64();
    let cpu = common::proc_cpu_seconds(pid).unwrap_or(0.0);
    let rss = common::proc_status_kb(pid, "VmHWM").unwrap_or(0) as f64 / 1024.0;
    let clean = proc.stop(Duration::from_secs(30));
    let row = watcher
        .query_one(
            "SELECT count(*), count(DISTINCT id) FROM check_results",
            &[],
        )
        .await?;
    let (count, distinct): (i64, i64) = (row.get(0), row.get(1));
    let dead: i64 = watcher
        .query_one("SELECT count(*) FROM dead_letters", &[])
        .await?
        .get(0);
    ensure!(
        count as u64 == rows && distinct as u64 == rows && dead == 0,
        "consume stored {count} rows ({distinct} distinct ids, {dead} dead letters); expected {rows}"
    );
    let steady =
        first_rows.map(|(at, n)| (rows as f64 - n as f64) / done.duration_since(at).as_secs_f64());
    Ok(json!({
        "rows_per_s": (rows as f64 / seconds).round(),
        "seconds_from_start": common::round2(seconds),
        "first_rows_after_s": first_rows.map(|(at, _)| common::round2(at.duration_since(start).as_secs_f64())),
        "steady_rows_per_s": steady.map(f64::round),
        "final_count": count,
        "distinct_ids": distinct,
        "dead_letters": dead,
        "consume_cpu_s": common::round2(cpu),
        "consume_cpu_share": common::round2(cpu / seconds),
        "consume_rss_peak_mib": common::round2(rss),
        "pg_backend_cpu_s": common::round2(backend_cpu),
        "pg_backend_cpu_share": common::round2(backend_cpu / seconds),
        "clean_exit": clean,
    }))
}

pub async fn run(options: &Options) -> Result<Value> {
    let (kafka, db) = common::load_stack_env()?;
    let tag = common::run_tag();
    let topic = format!("sitewatch.bench.ingest.{tag}");
    // The results end about now.
    let base =
        Utc::now() - chrono::Duration::milliseconds((options.rows / SITES * INTERVAL_MS) as i64);
    common::create_topic(&kafka, &topic, options.partitions).await?;
    let rows = options.rows;
    say!(
        "ingest: publishing {rows} results to {topic} ({} partitions)",
        options.partitions
    );
    let (publish_kafka, publish_topic) = (kafka.clone(), topic.clone());
    let (publish_s, mean_bytes) =
        tokio::task::spawn_blocking(move || publish(&publish_kafka, &publish_topic, rows, base))
            .await??;
    say!(
        "ingest: published in {publish_s:.1} s ({:.0} msg/s, {mean_bytes:.0} bytes of JSON each)",
        rows as f64 / publish_s
    );

    // Rounds alternate the order (COPY first, then sitewatch first) so neither side always
    // runs on the warmer (or more fragmented) server; the figures are medians over rounds.
    let mut ceilings = Vec::new();
    let mut sitewatches = Vec::new();
    for round in 0..options.rounds {
        let ceiling_name = format!("sitewatch_bench_copy_{tag}_{round}");
        let consume_name = format!("sitewatch_bench_consume_{tag}_{round}");
        let group = format!("sitewatch-bench-{tag}-{round}");
        let outcome = async {
            let consume_db = common::fresh_database(&db, &consume_name).await?;
            let (mut ceiling, mut sitewatch) = (Value::Null, Value::Null);
            for step in if round % 2 == 0 { ["copy", "consume"] } else { ["consume", "copy"] } {
                common::checkpoint();
                if step == "copy" {
                    let mut by_batch = serde_json::Map::new();
                    for batch_rows in COPY_BATCHES {
                        let ceiling_db = common::fresh_database(&db, &ceiling_name).await?;
                        common::checkpoint();
                        say!("ingest round {}: ceiling: binary COPY of the same rows, batches of {batch_rows}, one transaction each", round + 1);
                        let copied = copy_ceiling(&ceiling_db, rows, options.partitions, base, batch_rows).await?;
                        common::drop_database(&db, &ceiling_name).await;
                        say!("ingest round {}: ceiling {} rows/s", round + 1, copied["rows_per_s"]);
                        let faster = ceiling["rows_per_s"].as_f64().is_none_or(|best| {
                            copied["rows_per_s"].as_f64().is_some_and(|rate| rate > best)
                        });
                        by_batch.insert(batch_rows.to_string(), copied["rows_per_s"].clone());
                        if faster {
                            ceiling = copied;
                            ceiling["batch_rows"] = json!(batch_rows);
                        }
                    }
                    ceiling["rows_per_s_by_batch_rows"] = Value::Object(by_batch);
                } else {
                    say!("ingest round {}: sitewatch consume into a fresh database", round + 1);
                    sitewatch = consume(&consume_db, &topic, &group, rows).await?;
                    say!("ingest round {}: sitewatch {} rows/s", round + 1, sitewatch["rows_per_s"]);
                }
            }
            anyhow::Ok((ceiling, sitewatch))
        }
        .await;
        common::drop_database(&db, &ceiling_name).await;
        common::drop_database(&db, &consume_name).await;
        match outcome {
            Ok((ceiling, sitewatch)) => {
                ceilings.push(ceiling);
                sitewatches.push(sitewatch);
            }
            Err(error) => {
                common::delete_topic(&kafka, &topic).await;
                return Err(error.context("ingest"));
            }
        }
    }
    common::delete_topic(&kafka, &topic).await;
    let median_of = |runs: &[Value], key: &str| {
        common::median(runs.iter().filter_map(|r| r[key].as_f64()).collect())
    };
    let rate = median_of(&sitewatches, "rows_per_s");
    let ceiling_rate = median_of(&ceilings, "rows_per_s");
    let steady = median_of(&sitewatches, "steady_rows_per_s");
    let (ceiling, sitewatch) = (ceilings[0].clone(), sitewatches[0].clone());
    Ok(json!({
        "rows": rows,
        "partitions": options.partitions,
        "mean_json_bytes": mean_bytes.round(),
        "publish_msgs_per_s": (rows as f64 / publish_s).round(),
        "ingest_rows_per_s": rate.round(),
        "copy_ceiling_rows_per_s": ceiling_rate.round(),
        "ingest_ratio": common::round2(rate / ceiling_rate),
        "steady_ratio": common::round2(steady / ceiling_rate),
        "rounds": options.rounds,
        "round_ratios": sitewatches.iter().zip(&ceilings).map(|(s, c)| common::round2(s["rows_per_s"].as_f64().unwrap_or(0.0) / c["rows_per_s"].as_f64().unwrap_or(f64::NAN))).collect::<Vec<_>>(),
        "sitewatch": sitewatch,
        "ceiling": ceiling,
        "sitewatch_rounds": sitewatches,
        "ceiling_rounds": ceilings,
    }))
}

/// `pipeline rowcost`: the consumer's per-row CPU on the way from Kafka payload to COPY bytes,
/// split into steps, single-threaded — and the same with the jsonb columns serialized straight
/// from the typed fields instead of through `serde_json::Value`. Diagnostic for the ingest gap.
pub fn row_cost() -> Result<Value> {
    use bytes::BytesMut;

    const N: u64 = 100_000;
    let base = Utc::now();
    let payloads: Vec<Vec<u8>> = (0..N)
        .map(|i| serde_json::to_vec(&sample_result(i, base)))
        .collect::<Result<_, _>>()?;
    let per_row = |start: Instant| start.elapsed().as_secs_f64() * 1e6 / N as f64;

    let start = Instant::now();
    let decoded: Vec<CheckResult> = payloads
        .iter()
        .map(|p| serde_json::from_slice(p))
        .collect::<Result<_, _>>()?;
    let decode_us = per_row(start);

    let owned = decoded.clone();
    let start = Instant::now();
    let rows: Vec<CheckRow> = owned
        .into_iter()
        .enumerate()
        .map(|(i, r)| CheckRow::from_result(r, 0, i as i64))
        .collect::<Result<_, _>>()?;
    let build_us = per_row(start);

    let mut buf = BytesMut::with_capacity(64 * 1024 * 1024);
    let start = Instant::now();
    for row in &rows {
        for value in row.values().iter().zip(COPY_TYPES) {
            let _ = value.0.to_sql_checked(value.1, &mut buf);
        }
    }
    let encode_us = per_row(start);
    let start = Instant::now();
    drop(rows);
    let drop_us = per_row(start);

    // The two jsonb columns alone, as the store builds them today: serde_json::Value trees.
    let mut buf3 = BytesMut::with_capacity(64 * 1024 * 1024);
    let start = Instant::now();
    let trees: Vec<(Value, Value)> = decoded
        .iter()
        .map(|r| {
            Ok((
                serde_json::to_value(&r.assertions)?,
                serde_json::to_value(&r.metrics)?,
            ))
        })
        .collect::<Result<_>>()?;
    let value_build_us = per_row(start);
    let start = Instant::now();
    for (assertions, metrics) in &trees {
        let _ = assertions.to_sql_checked(&Type::JSONB, &mut buf3);
        let _ = metrics.to_sql_checked(&Type::JSONB, &mut buf3);
    }
    let value_encode_us = per_row(start);
    let start = Instant::now();
    drop(trees);
    let value_drop_us = per_row(start);
    drop(buf3);

    // The alternative for the two jsonb columns: JSON text straight from the typed fields.
    let mut buf2 = BytesMut::with_capacity(64 * 1024 * 1024);
    let start = Instant::now();
    let texts: Vec<(Vec<u8>, Vec<u8>)> = decoded
        .iter()
        .map(|r| {
            Ok((
                serde_json::to_vec(&r.assertions)?,
                serde_json::to_vec(&r.metrics)?,
            ))
        })
        .collect::<Result<_>>()?;
    let text_build_us = per_row(start);
    let start = Instant::now();
    for (assertions, metrics) in &texts {
        for text in [assertions, metrics] {
            buf2.extend_from_slice(&(text.len() as i32 + 1).to_be_bytes());
            buf2.extend_from_slice(&[1]);
            buf2.extend_from_slice(text);
        }
    }
    let text_encode_us = per_row(start);
    let start = Instant::now();
    drop(texts);
    let text_drop_us = per_row(start);
    drop((buf, buf2));
    Ok(json!({
        "rows": N,
        "decode_us": common::round2(decode_us),
        "check_row_from_result_us": common::round2(build_us),
        "copy_encode_all_columns_us": common::round2(encode_us),
        "drop_rows_us": common::round2(drop_us),
        "jsonb_as_value": {
            "to_value_us": common::round2(value_build_us),
            "encode_us": common::round2(value_encode_us),
            "drop_us": common::round2(value_drop_us),
        },
        "jsonb_as_text": {
            "serialize_us": common::round2(text_build_us),
            "encode_us": common::round2(text_encode_us),
            "drop_us": common::round2(text_drop_us),
        },
    }))
}
