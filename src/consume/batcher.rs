//! The batcher: which Kafka messages enter the batch being filled, and when it is due.
//!
//! Pure bookkeeping, tested without Kafka or PostgreSQL. It knows, per owned partition, the
//! offset stored in PostgreSQL and the next offset to accept; messages of partitions not yet
//! seeked to their stored offset, and messages below it, are skipped. A rebalance drops the
//! uncommitted messages of the partitions it touches: their next owner reads them again.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::MAX_BATCH_BYTES;
use crate::metrics as names;
use crate::result::CheckResult;
use crate::store::{CheckRow, DeadLetter, OffsetAdvance, PendingRow, WriteBatch};

/// What the rebalance callback hands to the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Assignment {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Partition numbers for a log line, in order, separated by spaces: `0 1 5`.
pub(crate) fn partition_list(partitions: impl IntoIterator<Item = i32>) -> String {
    let mut sorted: Vec<i32> = partitions.into_iter().collect();
    sorted.sort_unstable();
    sorted
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `assigned 0 1` / `revoked 2`, for the log.
impl std::fmt::Display for Assignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, partitions) = match self {
            Assignment::Assigned(p) => ("assigned", p),
            Assignment::Revoked(p) => ("revoked", p),
        };
        if partitions.is_empty() {
            return write!(f, "{what} no partition");
        }
        write!(f, "{what} {}", partition_list(partitions.iter().copied()))
    }
}

/// Where this consumer is in one owned, positioned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PartitionState {
    /// `consumer_offsets.next_offset` as this consumer last read or wrote it (`None`: no row).
    stored: Option<i64>,
    /// The next offset to accept: one past the last message batched.
    next: Option<i64>,
}

/// The batch being filled and the per-partition bookkeeping that decides what enters it.
#[derive(Debug)]
pub(crate) struct Batcher {
    /// Owned partitions already seeked to their stored offsets.
    positioned: HashMap<i32, PartitionState>,
    /// Owned partitions not yet seeked: their messages are skipped until they are.
    unpositioned: BTreeSet<i32>,
    /// When to try positioning again after a failure.
    positioning_retry: Option<Instant>,
    rows: Vec<PendingRow>,
    dead_letters: Vec<DeadLetter>,
    /// Payload bytes of the rows and dead letters held (each row also holds its decoded form,
    /// about as large again).
    bytes: usize,
    /// Arrival of the batch's first message; the batch is due `max_batch_wait` later.
    opened_at: Option<Instant>,
}

impl Batcher {
    pub(crate) fn new() -> Self {
        Batcher {
            positioned: HashMap::new(),
            unpositioned: BTreeSet::new(),
            positioning_retry: None,
            rows: Vec::new(),
            dead_letters: Vec::new(),
            bytes: 0,
            opened_at: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len() + self.dead_letters.len()
    }

    pub(crate) fn deadline(&self, max_wait: Duration) -> Option<Instant> {
        self.opened_at.map(|at| at + max_wait)
    }

    /// Holds `max_rows` messages, or [`MAX_BATCH_BYTES`] of payload: a batch of large results
    /// (up to 256 KiB each) is bounded by its size, not only by its count.
    pub(crate) fn is_full(&self, max_rows: usize) -> bool {
        self.len() >= max_rows || self.bytes >= MAX_BATCH_BYTES
    }

    /// Full, or its first message has waited long enough.
    pub(crate) fn is_due(&self, max_rows: usize, max_wait: Duration, now: Instant) -> bool {
        self.is_full(max_rows)
            || self
                .deadline(max_wait)
                .is_some_and(|deadline| deadline <= now)
    }

    pub(crate) fn positioning_at(&self) -> Option<Instant> {
        if self.unpositioned.is_empty() {
            None
        } else {
            Some(self.positioning_retry.unwrap_or_else(Instant::now))
        }
    }

    pub(crate) fn positioning_due(&self, now: Instant) -> bool {
        !self.unpositioned.is_empty() && self.positioning_retry.is_none_or(|at| at <= now)
    }

    pub(crate) fn apply(&mut self, events: Vec<Assignment>) {
        for event in events {
            let (Assignment::Assigned(partitions) | Assignment::Revoked(partitions)) = &event;
            // Whatever is batched for these partitions was never committed: the next owner
            // (or this consumer, after its seek) reads it again from the stored offset.
            self.drop_partitions(partitions);
            for partition in partitions {
                self.positioned.remove(partition);
                match event {
                    Assignment::Assigned(_) => self.unpositioned.insert(*partition),
                    Assignment::Revoked(_) => self.unpositioned.remove(partition),
                };
            }
            self.positioning_retry = None;
        }
    }

    fn drop_partitions(&mut self, partitions: &[i32]) {
        let before = self.len();
        let partitions: HashSet<i32> = partitions.iter().copied().collect();
        self.rows
            .retain(|pending| !partitions.contains(&pending.row.kafka_partition));
        self.dead_letters
            .retain(|letter| !partitions.contains(&letter.partition));
        self.bytes = self
            .rows
            .iter()
            .map(|pending| pending.payload.len())
            .sum::<usize>()
            + self
                .dead_letters
                .iter()
                .map(|letter| letter.payload.as_ref().map_or(0, Vec::len))
                .sum::<usize>();
        if self.len() == 0 {
            self.opened_at = None;
        }
        if before > self.len() {
            tracing::info!(
                dropped = before - self.len(),
                partitions = %partition_list(partitions.iter().copied()),
                "dropped uncommitted messages of reassigned partitions"
            );
        }
    }

    /// The owned partitions still waiting to be seeked to their stored offsets.
    pub(crate) fn unpositioned(&self) -> Vec<i32> {
        self.unpositioned.iter().copied().collect()
    }

    /// Try positioning again at `at` (after a failure, or to pick up a seek librdkafka refused).
    pub(crate) fn retry_positioning_at(&mut self, at: Instant) {
        self.positioning_retry = Some(at);
    }

    /// Once every owned partition is positioned, each as `partition@stored offset` (`start` when
    /// none is stored) in partition order: the one log line of a consumer start or rebalance,
    /// however many seeks it took. `None` while some partition still waits.
    pub(crate) fn positions_when_complete(&self) -> Option<String> {
        if !self.unpositioned.is_empty() || self.positioned.is_empty() {
            return None;
        }
        let mut positions: Vec<(i32, Option<i64>)> = self
            .positioned
            .iter()
            .map(|(partition, state)| (*partition, state.stored))
            .collect();
        positions.sort_unstable();
        let text: Vec<String> = positions
            .into_iter()
            .map(|(partition, stored)| {
                format!(
                    "{partition}@{}",
                    stored.map_or("start".into(), |n| n.to_string())
                )
            })
            .collect();
        Some(text.join(" "))
    }

    /// Positions partitions at their stored offsets (after the consumer's seek succeeded).
    pub(crate) fn positioned_at(&mut self, partition: i32, stored: Option<i64>) {
        if self.unpositioned.remove(&partition) {
            self.positioned.insert(
                partition,
                PartitionState {
                    stored,
                    next: stored,
                },
            );
        }
    }

    /// Like [`Batcher::positioned_at`], for a partition read from wherever its log now starts
    /// (its stored offset is out of the log's range): the first message that arrives is
    /// accepted, and the next batch moves the stored offset from `stored` to after it.
    pub(crate) fn positioned_at_log_start(&mut self, partition: i32, stored: Option<i64>) {
        if self.unpositioned.remove(&partition) {
            self.positioned
                .insert(partition, PartitionState { stored, next: None });
        }
    }

    /// Forgets every position (the database disagreed with this consumer): everything owned is
    /// re-read from `consumer_offsets` and seeked again; the batch is dropped.
    pub(crate) fn reposition_all(&mut self) {
        self.unpositioned.extend(self.positioned.keys().copied());
        self.positioned.clear();
        self.rows.clear();
        self.dead_letters.clear();
        self.bytes = 0;
        self.opened_at = None;
        self.positioning_retry = None;
    }

    /// Adds one message read at `partition`/`offset` to the batch, or skips it: not positioned
    /// yet, or already stored. A message that cannot be decoded or stored becomes a dead letter.
    pub(crate) fn add(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        schema_header: Option<&[u8]>,
    ) {
        let Some(state) = self.positioned.get_mut(&partition) else {
            tracing::trace!(partition, offset, "partition not positioned yet: skipped");
            return;
        };
        if let Some(next) = state.next {
            if offset < next - 1 {
                // Offsets went back past the last one read: the log moved under this consumer
                // (replaced, or cut by retention, and librdkafka restarted at its start). Every
                // partition is positioned again, its stored offset checked against its log.
                tracing::warn!(
                    partition,
                    offset,
                    next,
                    "the partition's offsets went back: positioning every partition again"
                );
                self.reposition_all();
                return;
            }
            if offset < next {
                tracing::trace!(
                    partition,
                    offset,
                    next,
                    "already stored or batched: skipped"
                );
                return;
            }
            if offset > next {
                // Retention removed messages before they were read (the fetch jumped over
                // them), or a compacted topic: nothing to read there.
                metrics::counter!(names::CONSUMER_MESSAGES_LOST).increment((offset - next) as u64);
                tracing::warn!(
                    partition,
                    offset,
                    next,
                    lost = offset - next,
                    "messages missing from the log before they were stored"
                );
            }
        }
        state.next = Some(offset + 1);
        if self.opened_at.is_none() {
            self.opened_at = Some(Instant::now());
        }
        self.bytes += payload.map_or(0, <[u8]>::len);
        let decoded = CheckResult::decode(payload, schema_header).and_then(|result| {
            CheckRow::from_result(result, partition, offset)
                .map_err(|error| format!("cannot be stored: {error}"))
        });
        match decoded {
            Ok(row) => self.rows.push(PendingRow {
                row,
                key: key.map(<[u8]>::to_vec),
                payload: payload.unwrap_or_default().to_vec(),
            }),
            Err(reason) => {
                tracing::warn!(partition, offset, %reason, "message quarantined in dead_letters");
                self.dead_letters.push(DeadLetter {
                    partition,
                    offset,
                    key: key.map(<[u8]>::to_vec),
                    payload: payload.map(<[u8]>::to_vec),
                    reason,
                });
            }
        }
    }

    /// Moves the batch out for writing, with the offset advance of every partition it covers.
    ///
    /// Each advance starts at the stored offset, so the next batch may be taken only once this
    /// one is settled: [`Batcher::committed`] moves the stored offsets to where it ended, and
    /// [`Batcher::reposition_all`] forgets everything. Written while this one is not stored, the
    /// next batch would move the offsets past messages that never were.
    pub(crate) fn take(&mut self) -> WriteBatch {
        let mut offsets: Vec<OffsetAdvance> = self
            .positioned
            .iter()
            .filter(|(_, state)| state.next != state.stored)
            .filter_map(|(partition, state)| {
                state.next.map(|next| OffsetAdvance {
                    partition: *partition,
                    expected: state.stored,
                    next,
                })
            })
            .collect();
        offsets.sort_by_key(|advance| advance.partition);
        self.opened_at = None;
        self.bytes = 0;
        // The next batch is likely the size of this one: room for it now saves growing the
        // vector (each row is several hundred bytes) step by step.
        let room = self.rows.len();
        WriteBatch {
            rows: std::mem::replace(&mut self.rows, Vec::with_capacity(room)),
            dead_letters: std::mem::take(&mut self.dead_letters),
            offsets,
        }
    }

    /// Records that `offsets` are now stored; returns those of partitions this consumer still
    /// owns. A partition revoked while the batch was written is not touched: if it came back,
    /// it waits to be positioned, and the offset is read again from the database.
    pub(crate) fn committed(&mut self, offsets: &[OffsetAdvance]) -> Vec<OffsetAdvance> {
        offsets
            .iter()
            .filter(
                |advance| match self.positioned.get_mut(&advance.partition) {
                    Some(state) => {
                        state.stored = Some(advance.next);
                        true
                    }
                    None => false,
                },
            )
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::tests::sample;

    /// A partition whose log was replaced: the stored offset (900) is past the new log, whose
    /// first messages (offsets 0, 1) are accepted, and the batch moves the offset from 900 down.
    #[test]
    fn a_replaced_log_is_read_from_its_start() {
        let mut batcher = Batcher::new();
        batcher.apply(vec![Assignment::Assigned(vec![0])]);
        batcher.positioned_at_log_start(0, Some(900));
        batcher.add(0, 0, None, Some(&payload(1)), None);
        batcher.add(0, 1, None, Some(&payload(1)), None);
        batcher.add(0, 1, None, Some(&payload(1)), None); // delivered twice
        assert_eq!(batcher.len(), 2);
        let batch = batcher.take();
        assert_eq!(
            batch.offsets,
            vec![OffsetAdvance {
                partition: 0,
                expected: Some(900),
                next: 2
            }]
        );
    }

    /// A jump forward in offsets (retention removed messages before they were read) counts the
    /// messages jumped over as lost, and only those. (The survivor `>` → `>=` only adds 0.)
    #[test]
    fn a_jump_forward_counts_the_messages_jumped_over_as_lost() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let lost = || {
            handle
                .render()
                .lines()
                .find(|l| l.starts_with(names::CONSUMER_MESSAGES_LOST))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        metrics::with_local_recorder(&recorder, || {
            let mut batcher = Batcher::new();
            batcher.apply(vec![Assignment::Assigned(vec![0])]);
            batcher.positioned_at(0, Some(10));
            batcher.add(0, 10, None, Some(&payload(1)), None);
            batcher.add(0, 15, None, Some(&payload(1)), None);
            batcher.add(0, 16, None, Some(&payload(1)), None);
            assert_eq!(batcher.len(), 3);
        });
        assert_eq!(lost(), 4, "offsets 11 to 14");
    }

    /// Offsets that go back past the last one read mean the log moved under the consumer:
    /// every partition is positioned again and the batch in hand dropped (it is read again).
    #[test]
    fn offsets_going_back_reposition_every_partition() {
        let mut batcher = Batcher::new();
        batcher.apply(vec![Assignment::Assigned(vec![0, 1])]);
        batcher.positioned_at(0, Some(50));
        batcher.positioned_at(1, Some(7));
        batcher.add(0, 50, None, Some(&payload(1)), None);
        batcher.add(1, 7, None, Some(&payload(1)), None);
        batcher.add(0, 50, None, Some(&payload(1)), None); // delivered twice: skipped
        assert_eq!(batcher.len(), 2);
        assert!(!batcher.positioning_due(Instant::now()));
        batcher.add(0, 0, None, Some(&payload(1)), None);
        assert_eq!(batcher.len(), 0);
        assert_eq!(batcher.unpositioned(), vec![0, 1]);
        assert!(batcher.positioning_due(Instant::now()));
    }

    #[test]
    fn assignments_print_their_partitions_in_order() {
        assert_eq!(
            Assignment::Assigned(vec![2, 0, 1]).to_string(),
            "assigned 0 1 2"
        );
        assert_eq!(
            Assignment::Revoked(vec![]).to_string(),
            "revoked no partition"
        );
        assert_eq!(partition_list([5, 3]), "3 5");
    }

    fn payload(schema: u32) -> Vec<u8> {
        serde_json::to_vec(&sample(schema)).unwrap()
    }

    #[test]
    fn positions_are_summed_up_once_every_partition_is_positioned() {
        let mut batcher = Batcher::new();
        assert_eq!(batcher.positions_when_complete(), None, "nothing owned");
        batcher.apply(vec![Assignment::Assigned(vec![2, 0, 1])]);
        // librdkafka accepts the seeks one partition at a time while its fetcher starts.
        batcher.positioned_at(1, Some(42));
        assert_eq!(batcher.positions_when_complete(), None);
        batcher.positioned_at(2, None);
        assert_eq!(batcher.positions_when_complete(), None);
        batcher.positioned_at(0, Some(7));
        assert_eq!(
            batcher.positions_when_complete().as_deref(),
            Some("0@7 1@42 2@start")
        );
        // A rebalance adds a partition: one new line once it is positioned too.
        batcher.apply(vec![Assignment::Assigned(vec![3])]);
        assert_eq!(batcher.positions_when_complete(), None);
        batcher.positioned_at(3, None);
        assert_eq!(
            batcher.positions_when_complete().as_deref(),
            Some("0@7 1@42 2@start 3@start")
        );
    }

    #[test]
    fn batcher_skips_unpositioned_and_stale_messages() {
        let mut batcher = Batcher::new();
        batcher.apply(vec![Assignment::Assigned(vec![0, 1])]);
        // Not positioned yet: skipped (the seek re-reads it).
        batcher.add(0, 5, None, Some(&payload(1)), None);
        assert_eq!(batcher.len(), 0);
        batcher.positioned_at(0, Some(10));
        batcher.positioned_at(1, None);
        batcher.add(0, 9, None, Some(&payload(1)), None); // already stored
        batcher.add(0, 10, Some(b"k"), Some(&payload(1)), None);
        batcher.add(0, 10, None, Some(&payload(1)), None); // delivered twice
        batcher.add(0, 11, None, Some(b"junk"), None);
        batcher.add(1, 0, None, Some(&payload(2)), None);
        assert_eq!(batcher.len(), 3);
        let batch = batcher.take();
        assert_eq!(batch.rows.len(), 1);
        assert_eq!(batch.rows[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(
            batch
                .dead_letters
                .iter()
                .map(|d| (d.partition, d.offset))
                .collect::<Vec<_>>(),
            vec![(0, 11), (1, 0)]
        );
        assert_eq!(
            batch.offsets,
            vec![
                OffsetAdvance {
                    partition: 0,
                    expected: Some(10),
                    next: 12
                },
                OffsetAdvance {
                    partition: 1,
                    expected: None,
                    next: 1
                },
            ]
        );
        batcher.committed(&batch.offsets);
        assert!(batcher.take().offsets.is_empty(), "nothing new to store");
        batcher.add(1, 1, None, Some(&payload(1)), None);
        assert_eq!(
            batcher.take().offsets,
            vec![OffsetAdvance {
                partition: 1,
                expected: Some(1),
                next: 2
            }]
        );
    }

    #[test]
    fn revocation_drops_uncommitted_messages_of_that_partition_only() {
        let mut batcher = Batcher::new();
        batcher.apply(vec![Assignment::Assigned(vec![0, 1])]);
        batcher.positioned_at(0, Some(0));
        batcher.positioned_at(1, Some(0));
        batcher.add(0, 0, None, Some(&payload(1)), None);
        batcher.add(1, 0, None, Some(&payload(1)), None);
        batcher.add(1, 1, None, Some(b"junk"), None);
        batcher.apply(vec![Assignment::Revoked(vec![1])]);
        assert_eq!(batcher.len(), 1);
        batcher.add(1, 2, None, Some(&payload(1)), None); // not ours any more
        let batch = batcher.take();
        assert_eq!(batch.rows.len(), 1);
        assert_eq!(batch.offsets.len(), 1);
        assert_eq!(batch.offsets[0].partition, 0);
        // Reassigned: must be positioned again before anything is accepted.
        batcher.apply(vec![Assignment::Assigned(vec![1])]);
        assert!(batcher.positioning_due(Instant::now()));
        batcher.add(1, 3, None, Some(&payload(1)), None);
        assert_eq!(batcher.len(), 0);
    }

    /// The repositioning clock: nothing to position, no time; a retry time is kept until it
    /// comes; a new assignment wants positioning at once.
    #[test]
    fn positioning_waits_for_its_retry_time_and_a_new_assignment_resets_it() {
        let mut batcher = Batcher::new();
        let now = Instant::now();
        assert_eq!(batcher.positioning_at(), None, "nothing to position");
        assert!(!batcher.positioning_due(now));
        batcher.apply(vec![Assignment::Assigned(vec![0, 1])]);
        assert!(batcher.positioning_at().is_some());
        assert!(batcher.positioning_due(now));
        let retry = now + Duration::from_secs(1);
        batcher.retry_positioning_at(retry);
        assert_eq!(batcher.positioning_at(), Some(retry));
        assert!(!batcher.positioning_due(now), "before the retry time");
        assert!(batcher.positioning_due(retry), "at the retry time");
        batcher.apply(vec![Assignment::Assigned(vec![2])]);
        assert!(
            batcher.positioning_due(now),
            "a new assignment positions at once"
        );
        batcher.positioned_at(0, None);
        batcher.positioned_at(1, None);
        batcher.positioned_at(2, None);
        assert_eq!(batcher.positioning_at(), None, "all positioned");
    }

    /// Revoking every batched partition empties the batch and its deadline; revoking one of two
    /// keeps the other's messages and the deadline of the first of them. (The survivor of the
    /// mutation of `before > self.len()` only changes whether a log line is written.)
    #[test]
    fn revoking_clears_the_deadline_only_with_the_last_message() {
        let wait = Duration::from_millis(200);
        let mut batcher = Batcher::new();
        batcher.apply(vec![Assignment::Assigned(vec![0, 1])]);
        batcher.positioned_at(0, None);
        batcher.positioned_at(1, None);
        batcher.add(0, 0, None, Some(&payload(1)), None);
        batcher.add(1, 0, None, Some(&payload(1)), None);
        let opened = batcher.opened_at.unwrap();
        batcher.apply(vec![Assignment::Revoked(vec![1])]);
        assert_eq!(batcher.len(), 1);
        assert_eq!(batcher.deadline(wait), Some(opened + wait));
        assert!(batcher.is_due(10, wait, opened + wait));
        batcher.apply(vec![Assignment::Revoked(vec![0])]);
        assert_eq!(batcher.len(), 0);
        assert_eq!(batcher.deadline(wait), None);
        assert!(!batcher.is_due(10, wait, opened + wait * 10));
    }

    #[test]
    fn a_batch_is_due_when_full_or_old_never_when_empty() {
        let wait = Duration::from_millis(200);
        let mut batcher = Batcher::new();
        let now = Instant::now();
        assert!(
            !batcher.is_due(2, wait, now + wait * 10),
            "an empty batch is never due"
        );
        batcher.apply(vec![Assignment::Assigned(vec![0])]);
        batcher.positioned_at(0, None);
        batcher.add(0, 0, None, Some(&payload(1)), None);
        let opened = batcher.opened_at.unwrap();
        assert!(!batcher.is_due(2, wait, opened));
        assert!(batcher.is_due(2, wait, opened + wait));
        batcher.add(0, 1, None, Some(&payload(1)), None);
        assert!(batcher.is_due(2, wait, opened), "full");
        batcher.take();
        assert!(!batcher.is_due(2, wait, opened + wait * 10));
    }

    #[test]
    fn a_batch_is_full_at_its_byte_bound_whatever_its_count() {
        let mut batcher = Batcher::new();
        batcher.apply(vec![Assignment::Assigned(vec![0, 1])]);
        batcher.positioned_at(0, None);
        batcher.positioned_at(1, None);
        // Undecodable, so dead letters: they count with their payload like rows do.
        let large = vec![b'x'; MAX_BATCH_BYTES / 4];
        for offset in 0..3 {
            batcher.add(0, offset, None, Some(&large), None);
        }
        batcher.add(1, 0, None, Some(&payload(1)), None);
        assert!(!batcher.is_full(1000), "three quarters and a small row");
        batcher.add(1, 1, None, Some(&large), None);
        assert!(batcher.is_full(1000), "{} bytes", batcher.bytes);
        assert!(batcher.is_due(1000, Duration::from_secs(3600), Instant::now()));
        // Revoking a partition gives its bytes back.
        batcher.apply(vec![Assignment::Revoked(vec![0])]);
        assert!(!batcher.is_full(1000));
        assert_eq!(batcher.len(), 2);
        batcher.add(1, 2, None, Some(&large), None);
        batcher.add(1, 3, None, Some(&large), None);
        assert!(!batcher.is_full(1000));
        batcher.add(1, 4, None, Some(&large), None);
        assert!(batcher.is_full(1000));
        // Taking the batch starts the count again.
        assert_eq!(batcher.take().dead_letters.len(), 4);
        assert!(!batcher.is_full(1000));
        batcher.add(1, 5, None, Some(&large), None);
        assert!(!batcher.is_full(1000));
        batcher.reposition_all();
        assert_eq!(batcher.bytes, 0);
    }

    #[test]
    fn the_batch_filled_during_a_write_starts_where_that_write_ends() {
        let mut batcher = Batcher::new();
        batcher.apply(vec![Assignment::Assigned(vec![0, 1])]);
        batcher.positioned_at(0, Some(10));
        batcher.positioned_at(1, Some(0));
        batcher.add(0, 10, None, Some(&payload(1)), None);
        batcher.add(1, 0, None, Some(&payload(1)), None);
        let in_flight = batcher.take();
        // Read while it is written: partition 0 goes on; partition 1 is revoked and comes back.
        batcher.add(0, 11, None, Some(&payload(1)), None);
        batcher.add(1, 1, None, Some(&payload(1)), None);
        batcher.apply(vec![
            Assignment::Revoked(vec![1]),
            Assignment::Assigned(vec![1]),
        ]);
        assert_eq!(batcher.len(), 1, "partition 1's message dropped");
        // Committed: only what this consumer still owns is recorded; partition 1 is re-read.
        assert_eq!(
            batcher.committed(&in_flight.offsets),
            vec![OffsetAdvance {
                partition: 0,
                expected: Some(10),
                next: 11
            }]
        );
        assert_eq!(batcher.unpositioned(), vec![1]);
        let next = batcher.take();
        assert_eq!(
            next.offsets,
            vec![OffsetAdvance {
                partition: 0,
                expected: Some(11),
                next: 12
            }]
        );
        assert_eq!(next.rows.len(), 1);
        assert_eq!(next.rows[0].row.kafka_offset, 11);
    }

    #[test]
    fn a_fenced_write_drops_the_batch_filled_meanwhile() {
        let mut batcher = Batcher::new();
        batcher.apply(vec![Assignment::Assigned(vec![0])]);
        batcher.positioned_at(0, Some(0));
        batcher.add(0, 0, None, Some(&payload(1)), None);
        let _fenced = batcher.take();
        batcher.add(0, 1, None, Some(&payload(1)), None);
        batcher.reposition_all();
        assert_eq!(batcher.len(), 0);
        assert!(batcher.take().offsets.is_empty());
        // Nothing enters until partition 0 is positioned again at what the database holds.
        batcher.add(0, 2, None, Some(&payload(1)), None);
        assert_eq!(batcher.len(), 0);
        batcher.positioned_at(0, Some(0));
        batcher.add(0, 0, None, Some(&payload(1)), None);
        assert_eq!(
            batcher.take().offsets,
            vec![OffsetAdvance {
                partition: 0,
                expected: Some(0),
                next: 1
            }]
        );
    }

    #[test]
    fn reposition_all_forgets_the_batch_and_positions() {
        let mut batcher = Batcher::new();
        batcher.apply(vec![Assignment::Assigned(vec![0])]);
        batcher.positioned_at(0, Some(3));
        batcher.add(0, 3, None, Some(&payload(1)), None);
        batcher.reposition_all();
        assert_eq!(batcher.len(), 0);
        assert!(batcher.unpositioned.contains(&0));
        assert!(batcher.take().offsets.is_empty());
    }
}
