//! The consumer's write path: one batch of check results, its dead letters and its new Kafka
//! positions, in ONE transaction.
//!
//! ```text
//! BEGIN
//!   advance consumer_offsets   (conditional: fails the batch if another consumer moved them)
//!   COPY check_results FROM STDIN (FORMAT binary)                        -- WritePath::Copy
//!     └ duplicate id?  COPY into a temp table, INSERT … ON CONFLICT (id, scheduled_at) DO NOTHING
//!     └ value PostgreSQL rejects?  row by row under savepoints, rejects become dead letters
//!   INSERT dead_letters
//! COMMIT
//! ```
//!
//! The offsets are advanced first and conditionally (`WHERE next_offset = <what this consumer
//! read>`): that makes a batch from a consumer that lost its partitions (a "zombie" after a
//! rebalance it has not noticed yet) fail instead of storing rows twice, and the row locks it
//! takes serialise competing consumers before they do any work.

use std::collections::{HashMap, HashSet};

use bytes::{BufMut, Bytes, BytesMut};
use futures::SinkExt;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::IsNull;
use tokio_postgres::{Client, Transaction};

use chrono::{DateTime, NaiveTime, Utc};
use uuid::Uuid;

use super::insight;
use super::row::{CheckRow, COLUMNS, COLUMN_COUNT, COPY_TYPES};
use super::{sqlstate_is_bad_data, StoreError};

/// Session-local staging table for the duplicate-tolerant path; emptied at every commit.
const STAGING_TABLE: &str = "sitewatch_incoming";

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
/// when [`StoreError::is_transient`]. Long on purpose (over 80 lines): the transaction drawn
/// in the module doc, step by step, inside the loop that falls back to slower paths.
#[tracing::instrument(skip_all, fields(rows = batch.rows.len(), dead = batch.dead_letters.len()))]
pub async fn write_batch(
    client: &mut Client,
    group: &str,
    topic: &str,
    batch: &WriteBatch,
) -> Result<WriteOutcome, StoreError> {
    ensure_partitions(client, &batch.rows).await?;
    let mut offsets = batch.offsets.clone();
    // One lock order for every consumer: two consumers never deadlock on consumer_offsets.
    offsets.sort_by_key(|advance| advance.partition);
    let mut path = WritePath::Copy;
    loop {
        let mut tx = client
            .transaction()
            .await
            .map_err(StoreError::query("starting the batch transaction"))?;
        let fenced = match advance_offsets(&tx, group, topic, &offsets).await {
            Ok(fenced) => fenced,
            Err(error) => {
                let _ = tx.rollback().await;
                if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
                    end_stalled_sessions(client).await?;
                }
                return Err(StoreError::query("advancing consumer_offsets")(error));
            }
        };
        if !fenced.is_empty() {
            let _ = tx.rollback().await;
            return Ok(WriteOutcome::Fenced { partitions: fenced });
        }
        let written = match path {
            WritePath::Copy => copy_rows(&tx, "check_results", &batch.rows)
                .await
                .map(|_| (batch.rows.iter().map(|p| &p.row).collect(), Vec::new())),
            WritePath::OnConflict => insert_staged(&tx, &batch.rows)
                .await
                .map(|inserted| (inserted, Vec::new())),
            WritePath::RowByRow => insert_one_by_one(&mut tx, &batch.rows).await,
        };
        // Only the rows this transaction inserted count in the rollups and site states: a
        // duplicate absorbed by ON CONFLICT was counted when it was first stored.
        let written = match written {
            Ok((inserted, rejected)) => insight::write(&tx, &inserted)
                .await
                .map(|()| (inserted.len() as u64, rejected)),
            Err(error) => Err(error),
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

/// A batch transaction open this long belongs to a stalled session: its own client gives up on
/// a write after 30 s, so only a frozen process or an orphaned connection keeps one open.
const STALLED_TRANSACTION: &str = "45 seconds";

/// Ends this role's sitewatch sessions (same database and application name) whose transaction
/// has been open longer than [`STALLED_TRANSACTION`]. Called when the offset rows stayed
/// locked past the session's `lock_timeout`: a frozen consumer (SIGSTOP, a paused VM) blocked
/// in the middle of a COPY is neither idle in its transaction nor running a statement the
/// server can time out, and would hold the group's offset locks forever. Its transaction is
/// rolled back, so nothing it wrote survives, and its member re-reads its positions.
pub(crate) async fn end_stalled_sessions(client: &Client) -> Result<(), StoreError> {
    let ended: i64 = client
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND usename = current_user \
               AND application_name = current_setting('application_name') \
               AND pid <> pg_backend_pid() \
               AND xact_start < now() - $1::text::interval",
            &[&STALLED_TRANSACTION],
        )
        .await
        .map_err(StoreError::query("ending stalled sessions"))?
        .get(0);
    if ended > 0 {
        tracing::warn!(
            ended,
            "consumer_offsets locked by a stalled sitewatch session: ended it"
        );
    }
    Ok(())
}

/// Days ahead of today whose `check_results` partition the consumer keeps created.
const PARTITION_DAYS_AHEAD: i64 = 2;

/// Creates the day partitions of `check_results` the rows need, and the next
/// [`PARTITION_DAYS_AHEAD`] days, in their own short transaction: creating a partition locks
/// the parent table, so it must never happen after the batch has written to it.
pub(crate) async fn ensure_partitions(
    client: &Client,
    rows: &[PendingRow],
) -> Result<(), StoreError> {
    let today = Utc::now();
    let mut days: Vec<DateTime<Utc>> = (0..=PARTITION_DAYS_AHEAD)
        .map(|ahead| today + chrono::Duration::days(ahead))
        .chain(rows.iter().map(|p| p.row.scheduled_at))
        .map(|t| t.date_naive().and_time(NaiveTime::MIN).and_utc())
        .collect();
    days.sort_unstable();
    days.dedup();
    client
        .execute(
            "SELECT sitewatch_ensure_partitions(day, day) FROM unnest($1::timestamptz[]) day",
            &[&days],
        )
        .await
        .map_err(StoreError::query("creating check_results partitions"))?;
    Ok(())
}

/// Conditionally advances each partition; returns the partitions whose stored offset was not the
/// expected one (empty = all advanced).
pub(crate) async fn advance_offsets(
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

/// COPY data handed to the connection task at a time. The driver's `BinaryCopyInWriter` hands
/// over every 4 kB and waits for the connection task (on another thread) to take it: a thread
/// switch every few rows, about a tenth of the consumer's CPU in the ingest profile
/// (docs/performance.md). In 256 kB pieces a batch of 5,000 rows is about twenty.
const COPY_CHUNK_BYTES: usize = 256 * 1024;

/// The binary COPY header: signature, flags (none), length of the header extension (none).
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// COPY of `rows` into `table` (`check_results` or the staging table) in binary format.
async fn copy_rows(
    tx: &Transaction<'_>,
    table: &str,
    rows: &[PendingRow],
) -> Result<u64, tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let encoded = encode_copy(rows.iter().map(|pending| &pending.row));
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let Some(chunks) = encoded else {
        // A value the binary format cannot carry (not seen with rows from_result accepted):
        // the driver's writer stops at it with an error that says which.
        let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, COPY_TYPES));
        for pending in rows {
            writer.as_mut().write(&pending.row.values()).await?;
        }
        return writer.finish().await;
    };
    let mut sink = std::pin::pin!(sink);
    for chunk in chunks {
        // feed, not send: no wait for the connection task to flush each piece.
        sink.as_mut().feed(chunk).await?;
    }
    sink.finish().await
}

/// `rows` in PostgreSQL's binary COPY format (what `BinaryCopyInWriter` writes), in pieces of
/// about [`COPY_CHUNK_BYTES`]; `None` if a value cannot be encoded.
fn encode_copy<'r>(rows: impl IntoIterator<Item = &'r CheckRow>) -> Option<Vec<Bytes>> {
    let mut chunks = Vec::new();
    let mut buf = BytesMut::with_capacity(COPY_CHUNK_BYTES * 2);
    buf.put_slice(COPY_HEADER);
    for row in rows {
        buf.put_i16(COLUMN_COUNT as i16);
        for (value, ty) in row.values().into_iter().zip(COPY_TYPES) {
            let at = buf.len();
            buf.put_i32(0); // the value's length, filled in below
            let len = match value.to_sql_checked(ty, &mut buf).ok()? {
                IsNull::Yes => -1,
                IsNull::No => i32::try_from(buf.len() - at - 4).ok()?,
            };
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        if buf.len() >= COPY_CHUNK_BYTES {
            chunks.push(buf.split().freeze());
            buf.reserve(COPY_CHUNK_BYTES * 2);
        }
    }
    buf.put_i16(-1); // end of data
    chunks.push(buf.freeze());
    Some(chunks)
}

/// COPY into the staging table, then insert what is not stored yet; returns the rows inserted.
async fn insert_staged<'r>(
    tx: &Transaction<'_>,
    rows: &'r [PendingRow],
) -> Result<Vec<&'r CheckRow>, tokio_postgres::Error> {
    tx.batch_execute(&format!(
        "CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING_TABLE} (LIKE check_results) \
         ON COMMIT DELETE ROWS"
    ))
    .await?;
    copy_rows(tx, STAGING_TABLE, rows).await?;
    let mut inserted: HashSet<Uuid> = tx
        .query(
            &format!(
                "INSERT INTO check_results ({COLUMNS}) SELECT {COLUMNS} FROM {STAGING_TABLE} \
                 ON CONFLICT (id, scheduled_at) DO NOTHING RETURNING id"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(rows
        .iter()
        .map(|pending| &pending.row)
        // A duplicate within the batch: only its first copy was inserted.
        .filter(|row| inserted.remove(&row.id))
        .collect())
}

/// The last resort: each row under its own savepoint, so one bad value costs one row (quarantined
/// with PostgreSQL's reason), not the batch.
async fn insert_one_by_one<'r>(
    tx: &mut Transaction<'_>,
    rows: &'r [PendingRow],
) -> Result<(Vec<&'r CheckRow>, Vec<DeadLetter>), tokio_postgres::Error> {
    let placeholders: Vec<String> = (1..=COPY_TYPES.len()).map(|i| format!("${i}")).collect();
    let statement = tx
        .prepare(&format!(
            "INSERT INTO check_results ({COLUMNS}) VALUES ({}) ON CONFLICT (id, scheduled_at) DO NOTHING",
            placeholders.join(", ")
        ))
        .await?;
    let mut written = Vec::new();
    let mut rejected = Vec::new();
    for pending in rows {
        let savepoint = tx.savepoint("sitewatch_row").await?;
        match savepoint.execute(&statement, &pending.row.values()).await {
            Ok(n) => {
                savepoint.commit().await?;
                if n == 1 {
                    written.push(&pending.row);
                }
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
    use super::*;
    use crate::result::tests::sample;

    #[test]
    fn copy_data_is_the_binary_format_cut_at_row_boundaries() {
        let rows: Vec<CheckRow> = (0..3000)
            .map(|i| CheckRow::from_result(sample(1), 0, i).unwrap())
            .collect();
        let chunks = encode_copy(&rows).unwrap();
        assert!(chunks.len() > 1, "several pieces");
        let all: Vec<u8> = chunks.concat();
        assert!(all.starts_with(COPY_HEADER));
        // Walk the rows: each has every column, and each piece ends where a row does.
        let mut at = COPY_HEADER.len();
        let mut row_ends = HashSet::new();
        for _ in &rows {
            let fields = i16::from_be_bytes([all[at], all[at + 1]]);
            assert_eq!(fields as usize, COLUMN_COUNT);
            at += 2;
            for _ in 0..COLUMN_COUNT {
                let len = i32::from_be_bytes(all[at..at + 4].try_into().unwrap());
                at += 4 + usize::try_from(len).unwrap_or(0);
            }
            row_ends.insert(at);
        }
        assert_eq!(
            &all[at..],
            &(-1i16).to_be_bytes(),
            "the trailer, then nothing"
        );
        let mut end = 0;
        for chunk in &chunks[..chunks.len() - 1] {
            assert!(chunk.len() >= COPY_CHUNK_BYTES);
            end += chunk.len();
            assert!(row_ends.contains(&end), "a piece ends inside a row");
        }
    }
}
