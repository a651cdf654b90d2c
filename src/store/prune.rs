//! Retention: deletes check results older than a cut-off, a bounded batch per statement.
//!
//! Each batch is its own short transaction, so pruning months of data never holds locks or a
//! snapshot for long, never blocks the consumer's COPY, and can be interrupted at any point
//! without losing work. The batches are found through the BRIN index on `scheduled_at`.
//! `docs/storage.md` has the whole retention plan (and when to switch to partitions).

use chrono::{Duration, Utc};
use tokio_postgres::Client;

use super::StoreError;

/// Rows deleted per statement: big enough to amortise the scan, small enough that one batch
/// finishes in well under a second and its WAL stays small.
pub const PRUNE_BATCH_ROWS: i64 = 10_000;

/// Deletes every `check_results` row with `scheduled_at` older than `now - older_than`, in
/// batches of [`PRUNE_BATCH_ROWS`]; returns how many rows were deleted.
#[tracing::instrument(skip(client))]
pub async fn prune(client: &Client, older_than: Duration) -> Result<u64, StoreError> {
    if older_than < Duration::zero() {
        return Err(StoreError::Retention {
            older_than: older_than.to_string(),
        });
    }
    let cutoff = Utc::now()
        .checked_sub_signed(older_than)
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
    let statement = client
        .prepare(
            "DELETE FROM check_results WHERE ctid = ANY(ARRAY(\
                 SELECT ctid FROM check_results WHERE scheduled_at < $1 LIMIT $2))",
        )
        .await
        .map_err(StoreError::query("preparing the prune statement"))?;
    let mut total = 0;
    loop {
        let deleted = client
            .execute(&statement, &[&cutoff, &PRUNE_BATCH_ROWS])
            .await
            .map_err(StoreError::query("deleting old check results"))?;
        total += deleted;
        tracing::debug!(deleted, total, "pruned a batch");
        if deleted < PRUNE_BATCH_ROWS as u64 {
            break;
        }
    }
    tracing::info!(total, %cutoff, "pruned check results");
    Ok(total)
}
