//! The consumer's write path: one batch of check results, its dead letters and its new Kafka
//! positions, in ONE transaction.
//!
//! ```text
//! BEGIN
//!   advance consumer_offsets   (conditional: fails the batch if another consumer moved them)
//!   COPY check_results FROM STDIN (FORMAT binary)                        -- WritePath::Copy
//!     └ duplicate id?  COPY into a temp table, INSERT … ON CONFLICT (id) DO NOTHING
//!     └ value PostgreSQL rejects?  row by row under savepoints, rejects become dead letters
//!   INSERT dead_letters
//! COMMIT
//! ```
//!
//! The offsets are advanced first and conditionally (`WHERE next_offset = <what this consumer
//! read>`): that makes a batch from a consumer that lost its partitions (a "zombie" after a
//! rebalance it has not noticed yet) fail instead of storing rows twice, and the row locks it
//! takes serialise competing consumers before they do any work.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Utc};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

use super::{sqlstate_is_bad_data, StoreError};
use crate::result::{CheckResult, Phase};

/// The `check_results` columns the consumer writes, in COPY order ([`COPY_TYPES`] matches).
pub const COLUMNS: &str = "id, scheduled_at, started_at, total_ms, body_bytes, kafka_offset, \
    dns_ms, connect_ms, tls_ms, ttfb_ms, transfer_ms, cert_not_after, attempts, \
    kafka_partition, status, body_truncated, tls_insecure, site, url, final_url, outcome, \
    failure_kind, failure_phase, failure_message, config_version, probe_host, assertions, metrics";

pub const COPY_TYPES: &[Type] = &[
    Type::UUID,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::FLOAT8,
    Type::INT8,
    Type::INT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::TIMESTAMPTZ,
    Type::INT4,
    Type::INT4,
    Type::INT2,
    Type::BOOL,
    Type::BOOL,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
    Type::JSONB,
];

/// Session-local staging table for the duplicate-tolerant path; emptied at every commit.
const STAGING_TABLE: &str = "sitewatch_incoming";

/// Why a decoded result cannot become a row. The message goes to `dead_letters` with this reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    #[error("{field} contains a NUL character, which PostgreSQL text and jsonb cannot store")]
    Nul { field: &'static str },
    #[error("{field} = {value} does not fit the column type {column_type}")]
    OutOfRange {
        field: &'static str,
        value: String,
        column_type: &'static str,
    },
    #[error("{field} = {value} is outside the years 1..=9999 sitewatch stores")]
    Timestamp {
        field: &'static str,
        value: DateTime<Utc>,
    },
    #[error("{field} cannot be encoded as JSON: {reason}")]
    Json { field: &'static str, reason: String },
    #[error("site name is {len} bytes; at most {MAX_SITE_BYTES} can be indexed")]
    SiteTooLong { len: usize },
}

/// Longest site name stored: `site` is a btree index key, and PostgreSQL refuses index rows
/// over about 2.7 KB. sites.lua allows far shorter names; this guards against what arrives on
/// the topic from elsewhere.
pub const MAX_SITE_BYTES: usize = 1024;

/// One `check_results` row: the [`CheckResult`] fields as typed columns plus where the message
/// was read from. Built by [`CheckRow::from_result`], which rejects what PostgreSQL would.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRow {
    pub id: Uuid,
    pub scheduled_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub total_ms: f64,
    pub body_bytes: i64,
    pub kafka_offset: i64,
    pub dns_ms: Option<f64>,
    pub connect_ms: Option<f64>,
    pub tls_ms: Option<f64>,
    pub ttfb_ms: Option<f64>,
    pub transfer_ms: Option<f64>,
    pub cert_not_after: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub kafka_partition: i32,
    pub status: Option<i16>,
    pub body_truncated: bool,
    pub tls_insecure: bool,
    pub site: String,
    pub url: String,
    pub final_url: Option<String>,
    pub outcome: &'static str,
    pub failure_kind: Option<&'static str>,
    pub failure_phase: Option<&'static str>,
    pub failure_message: Option<String>,
    pub config_version: String,
    pub probe_host: String,
    pub assertions: JsonbText,
    pub metrics: JsonbText,
}

impl CheckRow {
    /// Maps a decoded result read at `partition`/`offset` to a row, or says why it cannot be one.
    pub fn from_result(
        result: &CheckResult,
        partition: i32,
        offset: i64,
    ) -> Result<CheckRow, RowError> {
        if result.site.len() > MAX_SITE_BYTES {
            return Err(RowError::SiteTooLong {
                len: result.site.len(),
            });
        }
        for (field, text) in [
            ("site", Some(result.site.as_str())),
            ("url", Some(result.url.as_str())),
            ("final_url", result.final_url.as_deref()),
            ("config_version", Some(result.config_version.as_str())),
            ("probe_host", Some(result.probe_host.as_str())),
            (
                "failure.message",
                result.failure.as_ref().map(|f| f.message.as_str()),
            ),
        ] {
            no_nul(field, text)?;
        }
        for assertion in &result.assertions {
            no_nul("assertions[].name", Some(&assertion.name))?;
            no_nul("assertions[].expected", Some(&assertion.expected))?;
            no_nul("assertions[].actual", Some(&assertion.actual))?;
            no_nul("assertions[].reason", assertion.reason.as_deref())?;
        }
        for name in result.metrics.keys() {
            no_nul("metrics key", Some(name))?;
        }
        for (field, at) in [
            ("scheduled_at", Some(result.scheduled_at)),
            ("started_at", Some(result.started_at)),
            ("cert_not_after", result.cert_not_after),
        ] {
            if let Some(value) = at {
                if !(1..=9999).contains(&value.year()) {
                    return Err(RowError::Timestamp { field, value });
                }
            }
        }
        let json = |field: &'static str, value: Result<String, serde_json::Error>| {
            value.map(JsonbText).map_err(|error| RowError::Json {
                field,
                reason: error.to_string(),
            })
        };
        Ok(CheckRow {
            id: result.id,
            scheduled_at: result.scheduled_at,
            started_at: result.started_at,
            total_ms: result.timings.total_ms,
            body_bytes: fit("body_bytes", result.body_bytes, "bigint")?,
            kafka_offset: offset,
            dns_ms: result.timings.dns_ms,
            connect_ms: result.timings.connect_ms,
            tls_ms: result.timings.tls_ms,
            ttfb_ms: result.timings.ttfb_ms,
            transfer_ms: result.timings.transfer_ms,
            cert_not_after: result.cert_not_after,
            attempts: fit("attempts", result.attempts, "integer")?,
            kafka_partition: partition,
            status: result
                .status
                .map(|status| fit("status", status, "smallint"))
                .transpose()?,
            body_truncated: result.body_truncated,
            tls_insecure: result.tls_insecure,
            site: result.site.clone(),
            url: result.url.clone(),
            final_url: result.final_url.clone(),
            outcome: result.outcome.as_str(),
            failure_kind: result.failure.as_ref().map(|f| f.kind.as_str()),
            failure_phase: result
                .failure
                .as_ref()
                .and_then(|f| f.phase)
                .map(Phase::as_str),
            failure_message: result.failure.as_ref().map(|f| f.message.clone()),
            config_version: result.config_version.clone(),
            probe_host: result.probe_host.clone(),
            assertions: json("assertions", serde_json::to_string(&result.assertions))?,
            metrics: json("metrics", serde_json::to_string(&result.metrics))?,
        })
    }

    /// The column values in [`COLUMNS`] order.
    /// The row's values in [`COLUMNS`] order, typed as [`COPY_TYPES`].
    pub fn values(&self) -> [&(dyn ToSql + Sync); 28] {
        [
            &self.id,
            &self.scheduled_at,
            &self.started_at,
            &self.total_ms,
            &self.body_bytes,
            &self.kafka_offset,
            &self.dns_ms,
            &self.connect_ms,
            &self.tls_ms,
            &self.ttfb_ms,
            &self.transfer_ms,
            &self.cert_not_after,
            &self.attempts,
            &self.kafka_partition,
            &self.status,
            &self.body_truncated,
            &self.tls_insecure,
            &self.site,
            &self.url,
            &self.final_url,
            &self.outcome,
            &self.failure_kind,
            &self.failure_phase,
            &self.failure_message,
            &self.config_version,
            &self.probe_host,
            &self.assertions,
            &self.metrics,
        ]
    }
}

fn no_nul(field: &'static str, text: Option<&str>) -> Result<(), RowError> {
    match text {
        Some(text) if text.contains('\0') => Err(RowError::Nul { field }),
        _ => Ok(()),
    }
}

fn fit<T, U>(field: &'static str, value: T, column_type: &'static str) -> Result<U, RowError>
where
    T: Copy + std::fmt::Display,
    U: TryFrom<T>,
{
    U::try_from(value).map_err(|_| RowError::OutOfRange {
        field,
        value: value.to_string(),
        column_type,
    })
}

/// A jsonb value already serialized as JSON text. Sent in jsonb's binary format (a version
/// byte, then the text) so rows skip building a `serde_json::Value` tree only to flatten it
/// again: the dearest step of row building in the ingest profile (docs/performance.md).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonbText(pub String);

/// jsonb's binary wire format version.
const JSONB_VERSION: u8 = 1;

impl tokio_postgres::types::ToSql for JsonbText {
    fn to_sql(
        &self,
        _ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[JSONB_VERSION]);
        out.extend_from_slice(self.0.as_bytes());
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSONB
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A row to store, with the message it came from (kept so PostgreSQL's rejection of the row can
/// still quarantine the message exactly as it arrived).
#[derive(Debug, Clone)]
pub struct PendingRow {
    pub row: CheckRow,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// A message that is not a storable check result.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub reason: String,
}

/// Moves one partition's stored position from `expected` (what this consumer last read from
/// `consumer_offsets`; `None` = no row yet) to `next` (last offset in the batch + 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetAdvance {
    pub partition: i32,
    pub expected: Option<i64>,
    pub next: i64,
}

/// Everything one transaction stores.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    pub rows: Vec<PendingRow>,
    pub dead_letters: Vec<DeadLetter>,
    pub offsets: Vec<OffsetAdvance>,
}

/// How the rows went in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePath {
    /// Binary COPY straight into `check_results`: the normal, fastest path.
    Copy,
    /// The COPY hit an id that was already stored: staged, then `INSERT … ON CONFLICT DO NOTHING`.
    OnConflict,
    /// PostgreSQL rejected a value: rows inserted one by one, rejected ones quarantined.
    RowByRow,
}

impl WritePath {
    pub fn as_str(self) -> &'static str {
        match self {
            WritePath::Copy => "copy",
            WritePath::OnConflict => "on_conflict",
            WritePath::RowByRow => "row_by_row",
        }
    }
}

/// What a committed batch stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    pub path: WritePath,
    /// Rows inserted into `check_results`.
    pub rows_written: u64,
    /// Rows skipped because their id was already stored.
    pub duplicates: u64,
    /// Rows inserted into `dead_letters` (undecodable messages and rows PostgreSQL rejected).
    pub dead_letters: u64,
}

/// The result of [`write_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    Committed(WriteStats),
    /// Nothing was written: these partitions' stored offsets are not what the batch expected
    /// (another consumer advanced them). The caller must drop its batch and re-read its offsets.
    Fenced {
        partitions: Vec<i32>,
    },
}

/// Stores `batch` for consumer group `group` reading `topic`, atomically: rows, dead letters and
/// offsets all commit, or none does. Errors leave the database unchanged; retry the same batch
/// when [`StoreError::is_transient`].
#[tracing::instrument(skip_all, fields(rows = batch.rows.len(), dead = batch.dead_letters.len()))]
pub async fn write_batch(
    client: &mut Client,
    group: &str,
    topic: &str,
    batch: &WriteBatch,
) -> Result<WriteOutcome, StoreError> {
    let mut offsets = batch.offsets.clone();
    // One lock order for every consumer: two consumers never deadlock on consumer_offsets.
    offsets.sort_by_key(|advance| advance.partition);
    let mut path = WritePath::Copy;
    loop {
        let mut tx = client
            .transaction()
            .await
            .map_err(StoreError::query("starting the batch transaction"))?;
        let fenced = advance_offsets(&tx, group, topic, &offsets)
            .await
            .map_err(StoreError::query("advancing consumer_offsets"))?;
        if !fenced.is_empty() {
            let _ = tx.rollback().await;
            return Ok(WriteOutcome::Fenced { partitions: fenced });
        }
        let written = match path {
            WritePath::Copy => copy_rows(&tx, "check_results", &batch.rows)
                .await
                .map(|n| (n, Vec::new())),
            WritePath::OnConflict => insert_staged(&tx, &batch.rows)
                .await
                .map(|n| (n, Vec::new())),
            WritePath::RowByRow => insert_one_by_one(&mut tx, &batch.rows).await,
        };
        let (rows_written, rejected) = match written {
            Ok(written) => written,
            Err(error) => {
                let next = match error.code() {
                    Some(code)
                        if *code == SqlState::UNIQUE_VIOLATION && path == WritePath::Copy =>
                    {
                        Some(WritePath::OnConflict)
                    }
                    Some(code)
                        if sqlstate_is_bad_data(code.code()) && path != WritePath::RowByRow =>
                    {
                        Some(WritePath::RowByRow)
                    }
                    _ => None,
                };
                let _ = tx.rollback().await;
                match next {
                    Some(next) => {
                        tracing::info!(
                            from = path.as_str(),
                            to = next.as_str(),
                            error = %super::ErrorChain(&error),
                            "batch rolled back, retrying it on a slower path"
                        );
                        path = next;
                        continue;
                    }
                    None => {
                        return Err(StoreError::Query {
                            context: "writing check results",
                            source: error,
                        })
                    }
                }
            }
        };
        let dead_letters =
            insert_dead_letters(&tx, topic, batch.dead_letters.iter().chain(&rejected))
                .await
                .map_err(StoreError::query("writing dead letters"))?;
        tx.commit()
            .await
            .map_err(StoreError::query("committing the batch"))?;
        let rows = batch.rows.len() as u64;
        return Ok(WriteOutcome::Committed(WriteStats {
            path,
            rows_written,
            duplicates: rows.saturating_sub(rows_written + rejected.len() as u64),
            dead_letters,
        }));
    }
}

/// Conditionally advances each partition; returns the partitions whose stored offset was not the
/// expected one (empty = all advanced).
async fn advance_offsets(
    tx: &Transaction<'_>,
    group: &str,
    topic: &str,
    offsets: &[OffsetAdvance],
) -> Result<Vec<i32>, tokio_postgres::Error> {
    let mut fenced = Vec::new();
    for advance in offsets {
        let changed = match advance.expected {
            Some(expected) => {
                tx.execute(
                    "UPDATE consumer_offsets SET next_offset = $4, updated_at = now() \
                     WHERE consumer_group = $1 AND topic = $2 AND partition = $3 \
                       AND next_offset = $5",
                    &[&group, &topic, &advance.partition, &advance.next, &expected],
                )
                .await?
            }
            None => {
                tx.execute(
                    "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&group, &topic, &advance.partition, &advance.next],
                )
                .await?
            }
        };
        if changed != 1 {
            fenced.push(advance.partition);
        }
    }
    Ok(fenced)
}

async fn copy_rows(
    tx: &Transaction<'_>,
    table: &str,
    rows: &[PendingRow],
) -> Result<u64, tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, COPY_TYPES));
    for pending in rows {
        writer.as_mut().write(&pending.row.values()).await?;
    }
    writer.finish().await
}

async fn insert_staged(
    tx: &Transaction<'_>,
    rows: &[PendingRow],
) -> Result<u64, tokio_postgres::Error> {
    tx.batch_execute(&format!(
        "CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING_TABLE} (LIKE check_results) \
         ON COMMIT DELETE ROWS"
    ))
    .await?;
    copy_rows(tx, STAGING_TABLE, rows).await?;
    tx.execute(
        &format!(
            "INSERT INTO check_results ({COLUMNS}) SELECT {COLUMNS} FROM {STAGING_TABLE} \
             ON CONFLICT (id) DO NOTHING"
        ),
        &[],
    )
    .await
}

/// The last resort: each row under its own savepoint, so one bad value costs one row (quarantined
/// with PostgreSQL's reason), not the batch.
async fn insert_one_by_one(
    tx: &mut Transaction<'_>,
    rows: &[PendingRow],
) -> Result<(u64, Vec<DeadLetter>), tokio_postgres::Error> {
    let placeholders: Vec<String> = (1..=COPY_TYPES.len()).map(|i| format!("${i}")).collect();
    let statement = tx
        .prepare(&format!(
            "INSERT INTO check_results ({COLUMNS}) VALUES ({}) ON CONFLICT (id) DO NOTHING",
            placeholders.join(", ")
        ))
        .await?;
    let mut written = 0;
    let mut rejected = Vec::new();
    for pending in rows {
        let savepoint = tx.savepoint("sitewatch_row").await?;
        match savepoint.execute(&statement, &pending.row.values()).await {
            Ok(n) => {
                savepoint.commit().await?;
                written += n;
            }
            Err(error) if error.code().is_some_and(|c| sqlstate_is_bad_data(c.code())) => {
                savepoint.rollback().await?;
                let reason = match error.as_db_error() {
                    Some(db) => format!("rejected by PostgreSQL: {}", db.message()),
                    None => format!("rejected by PostgreSQL: {error}"),
                };
                rejected.push(DeadLetter {
                    partition: pending.row.kafka_partition,
                    offset: pending.row.kafka_offset,
                    key: pending.key.clone(),
                    payload: Some(pending.payload.clone()),
                    reason,
                });
            }
            Err(error) => return Err(error),
        }
    }
    Ok((written, rejected))
}

async fn insert_dead_letters<'a>(
    tx: &Transaction<'_>,
    topic: &str,
    letters: impl Iterator<Item = &'a DeadLetter>,
) -> Result<u64, tokio_postgres::Error> {
    let mut partitions = Vec::new();
    let mut offsets = Vec::new();
    let mut keys = Vec::new();
    let mut payloads = Vec::new();
    let mut reasons = Vec::new();
    for letter in letters {
        partitions.push(letter.partition);
        offsets.push(letter.offset);
        keys.push(letter.key.as_deref());
        payloads.push(letter.payload.as_deref());
        reasons.push(letter.reason.replace('\0', "\\0"));
    }
    if partitions.is_empty() {
        return Ok(0);
    }
    tx.execute(
        "INSERT INTO dead_letters (topic, partition, kafka_offset, key, payload, reason) \
         SELECT $1::text, * FROM unnest($2::integer[], $3::bigint[], $4::bytea[], $5::bytea[], \
                                        $6::text[]) \
         ON CONFLICT (topic, partition, kafka_offset) DO NOTHING",
        &[&topic, &partitions, &offsets, &keys, &payloads, &reasons],
    )
    .await
}

/// The stored next offsets of `partitions` for `group` on `topic`; partitions without a row are
/// absent (nothing stored yet: start from the beginning of the partition).
pub async fn load_offsets(
    client: &Client,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, i64>, StoreError> {
    let rows = client
        .query(
            "SELECT partition, next_offset FROM consumer_offsets \
             WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3)",
            &[&group, &topic, &partitions],
        )
        .await
        .map_err(StoreError::query("reading consumer_offsets"))?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;

    use super::*;
    use crate::result::{AssertionResult, Failure, Level, Outcome, Timings, SCHEMA_VERSION};

    fn sample() -> CheckResult {
        CheckResult {
            schema: SCHEMA_VERSION,
            id: Uuid::now_v7(),
            site: "example".into(),
            url: "https://example.com/".into(),
            final_url: Some("https://example.com/home".into()),
            scheduled_at: Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap(),
            started_at: Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 6).unwrap(),
            outcome: Outcome::Down,
            status: Some(503),
            timings: Timings {
                dns_ms: Some(1.5),
                connect_ms: Some(2.0),
                tls_ms: None,
                ttfb_ms: Some(30.0),
                transfer_ms: Some(4.0),
                total_ms: 40.0,
            },
            failure: Some(Failure {
                kind: crate::result::FailureKind::Timeout,
                phase: Some(Phase::Ttfb),
                message: "deadline".into(),
            }),
            assertions: vec![AssertionResult {
                name: "status".into(),
                ok: false,
                level: Level::Fail,
                expected: "200".into(),
                actual: "503".into(),
                reason: None,
            }],
            metrics: BTreeMap::from([("items".to_string(), 3.0)]),
            body_bytes: 1234,
            body_truncated: false,
            cert_not_after: None,
            tls_insecure: false,
            config_version: "abc".into(),
            attempts: 2,
            probe_host: "probe-1".into(),
        }
    }

    #[test]
    fn result_maps_to_typed_columns() {
        let result = sample();
        let row = CheckRow::from_result(&result, 3, 42).unwrap();
        assert_eq!(row.id, result.id);
        assert_eq!(row.outcome, "down");
        assert_eq!(row.status, Some(503));
        assert_eq!(row.failure_kind, Some("timeout"));
        assert_eq!(row.failure_phase, Some("ttfb"));
        assert_eq!(row.failure_message.as_deref(), Some("deadline"));
        assert_eq!(row.body_bytes, 1234);
        assert_eq!(row.attempts, 2);
        assert_eq!((row.kafka_partition, row.kafka_offset), (3, 42));
        assert_eq!(row.tls_ms, None);
        let metrics: serde_json::Value = serde_json::from_str(&row.metrics.0).unwrap();
        let assertions: serde_json::Value = serde_json::from_str(&row.assertions.0).unwrap();
        assert_eq!(metrics, serde_json::json!({"items": 3.0}));
        assert_eq!(assertions[0]["name"], "status");
        assert_eq!(row.values().len(), COPY_TYPES.len());
        assert_eq!(COLUMNS.split(',').count(), COPY_TYPES.len());
    }

    #[test]
    fn stored_spellings_match_the_wire() {
        for kind in [
            crate::result::FailureKind::Dns,
            crate::result::FailureKind::Connect,
            crate::result::FailureKind::Tls,
            crate::result::FailureKind::Timeout,
            crate::result::FailureKind::Http,
            crate::result::FailureKind::RedirectLoop,
            crate::result::FailureKind::Assertion,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        for phase in [
            Phase::Dns,
            Phase::Connect,
            Phase::Tls,
            Phase::Ttfb,
            Phase::Transfer,
        ] {
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
        }
    }

    #[test]
    fn unstorable_results_are_rejected_with_the_field() {
        type Edit = fn(&mut CheckResult);
        let cases: [(&str, Edit, &str); 6] = [
            (
                "nul in site",
                |r| r.site = "a\0b".into(),
                "site contains a NUL",
            ),
            (
                "nul in assertion",
                |r| r.assertions[0].actual = "\0".into(),
                "assertions[].actual contains a NUL",
            ),
            (
                "nul in metric name",
                |r| {
                    r.metrics.insert("x\0".into(), 1.0);
                },
                "metrics key contains a NUL",
            ),
            (
                "status beyond smallint",
                |r| r.status = Some(40000),
                "status = 40000 does not fit the column type smallint",
            ),
            (
                "body beyond bigint",
                |r| r.body_bytes = u64::MAX,
                "body_bytes = 18446744073709551615 does not fit",
            ),
            (
                "year out of range",
                |r| r.scheduled_at = Utc.with_ymd_and_hms(12000, 1, 1, 0, 0, 0).unwrap(),
                "scheduled_at = ",
            ),
        ];
        for (name, edit, expected) in cases {
            let mut result = sample();
            edit(&mut result);
            let error = CheckRow::from_result(&result, 0, 0).unwrap_err();
            assert!(error.to_string().contains(expected), "{name}: {error}");
        }
    }
}
