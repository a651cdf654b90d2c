//! Every Prometheus metric sitewatch emits: its name as a documented constant, and
//! [`describe`], which registers help texts and zero values at startup so a counter is present
//! on `/metrics` (as 0) before its first event — alert rules then see 0, not "no data".
//!
//! Most metrics go through the `metrics` crate's recorder; the per-site series of the last
//! check (`sitewatch_site_*`) are kept in [`sites`], which can forget a removed site.
//! `docs/metrics.md` documents them all for operators; a name used anywhere else in `src/` is
//! one of these constants.

pub mod sites;

pub use sites::{SiteGauges, SiteMetrics};

use crate::store::WritePath;

/// Checks finished, by `site` and `outcome` (counter; rendered by [`SiteMetrics`]).
pub const PROBES: &str = "sitewatch_probes_total";
pub const PROBES_HELP: &str = "Checks finished, by site and outcome.";
/// Duration of one check, all attempts (histogram, seconds).
pub const PROBE_DURATION: &str = "sitewatch_probe_duration_seconds";
/// Start of a check minus its scheduled time (histogram, seconds).
pub const SCHEDULE_LAG: &str = "sitewatch_schedule_lag_seconds";
/// Ticks skipped, by `site` (counter; rendered by [`SiteMetrics`]).
pub const MISSED_TICKS: &str = "sitewatch_missed_ticks_total";
pub const MISSED_TICKS_HELP: &str =
    "Ticks skipped: the previous check was still waiting for a permit or running, or the process stalled or the clock stepped past them.";
/// Reloads of sites.lua, by `result` = ok | failed (counter).
pub const CONFIG_RELOADS: &str = "sitewatch_config_reloads_total";
/// Results Kafka acknowledged (counter).
pub const KAFKA_DELIVERED: &str = "sitewatch_kafka_delivered_total";
/// Results Kafka refused or that timed out (counter).
pub const KAFKA_DELIVERY_ERRORS: &str = "sitewatch_kafka_delivery_errors_total";
/// Results given up on (shutdown with a full queue, a fatal producer error no new producer could
/// take over) (counter).
pub const KAFKA_DROPPED: &str = "sitewatch_kafka_dropped_total";
/// Results in flight when the shutdown flush gave up: sent, unconfirmed, perhaps on the topic
/// (counter).
pub const KAFKA_UNCONFIRMED: &str = "sitewatch_kafka_unconfirmed_total";
/// Kafka producers built again after a fatal error (counter).
pub const KAFKA_PRODUCER_REBUILDS: &str = "sitewatch_kafka_producer_rebuilds_total";
/// Results a fatal producer error took back, sent again on the new producer (counter).
pub const KAFKA_RESENT: &str = "sitewatch_kafka_resent_total";
/// Results waiting in the producer's local queue (gauge).
pub const KAFKA_QUEUE_DEPTH: &str = "sitewatch_kafka_queue_depth";
/// Messages between the stored offset and the partition's end, by `topic`, `partition` (gauge).
pub const CONSUMER_LAG: &str = "sitewatch_consumer_lag";
/// Rows stored by the consumer (counter).
pub const CONSUMER_ROWS_WRITTEN: &str = "sitewatch_consumer_rows_written_total";
/// Batches committed, by write `path` (counter).
pub const CONSUMER_BATCHES: &str = "sitewatch_consumer_batches_total";
/// Time to write one batch (histogram, seconds).
pub const CONSUMER_BATCH_SECONDS: &str = "sitewatch_consumer_batch_seconds";
/// Messages quarantined in dead_letters (counter).
pub const CONSUMER_DEAD_LETTERS: &str = "sitewatch_consumer_dead_letters_total";
/// Duplicate ids absorbed by the fallback path (counter).
pub const CONSUMER_DUPLICATES: &str = "sitewatch_consumer_duplicates_total";
/// Partitions found with their stored offset past the log's end, read again from its start:
/// the log was replaced (counter).
pub const CONSUMER_OFFSET_RESETS: &str = "sitewatch_consumer_offset_resets_total";
/// Messages that left the log before they were stored (retention, a jump in offsets) (counter).
pub const CONSUMER_MESSAGES_LOST: &str = "sitewatch_consumer_messages_lost_total";
/// Batches dropped because another group member moved the stored offsets (counter).
pub const CONSUMER_FENCED_BATCHES: &str = "sitewatch_consumer_fenced_batches_total";
/// Batch writes retried after a transient PostgreSQL failure (counter).
pub const CONSUMER_WRITE_RETRIES: &str = "sitewatch_consumer_write_retries_total";

/// Incidents open now (gauge; the alerter refreshes it every few seconds).
pub const INCIDENTS_OPEN: &str = "sitewatch_incidents_open";
/// Notifications waiting in the outbox, failed ones included (gauge).
pub const NOTIFICATIONS_PENDING: &str = "sitewatch_notifications_pending";
/// Notifications delivered, by `notifier` (counter).
pub const NOTIFICATIONS_SENT: &str = "sitewatch_notifications_sent_total";
/// Failed delivery attempts, by `notifier` (counter); the notification stays in the outbox.
pub const NOTIFICATIONS_FAILED: &str = "sitewatch_notification_failures_total";

/// Outcome of the site's last check: 1 up, 0.5 degraded, 0 down, by `site` (gauge).
pub const SITE_UP: &str = "sitewatch_site_up";
/// Seconds each phase of the site's last check took, by `site` and `phase` (gauge).
pub const SITE_PHASE_SECONDS: &str = "sitewatch_site_phase_seconds";
/// HTTP status of the site's last check, 0 without a response, by `site` (gauge).
pub const SITE_STATUS_CODE: &str = "sitewatch_site_status_code";
/// Expiry of the site's leaf TLS certificate as a Unix time, by `site` (gauge).
pub const SITE_CERT_NOT_AFTER: &str = "sitewatch_site_cert_not_after_seconds";
/// Down checks of the site in a row, by `site` (gauge).
pub const SITE_CONSECUTIVE_FAILURES: &str = "sitewatch_site_consecutive_failures";

/// Help texts of the per-site series (rendered by [`sites`], not by the recorder).
pub(crate) const SITE_UP_HELP: &str =
    "Outcome of the site's last check: 1 up, 0.5 degraded, 0 down.";
pub(crate) const SITE_PHASE_SECONDS_HELP: &str =
    "Seconds the phases of the site's last check took (dns, connect, tls, ttfb, transfer, total).";
pub(crate) const SITE_STATUS_CODE_HELP: &str =
    "HTTP status code of the site's last check, 0 when no response arrived.";
pub(crate) const SITE_CERT_NOT_AFTER_HELP: &str =
    "Expiry time of the site's leaf TLS certificate in seconds since the Unix epoch.";
pub(crate) const SITE_CONSECUTIVE_FAILURES_HELP: &str =
    "Down checks of the site in a row, reset by an up or degraded check.";

/// Consumers of `run` started again after a failure, by `role` (counter).
pub const ROLE_RESTARTS: &str = "sitewatch_role_restarts_total";

/// Unlabelled counters, present from startup.
const COUNTERS: &[(&str, &str)] = &[
    (KAFKA_DELIVERED, "Results Kafka acknowledged."),
    (
        KAFKA_DELIVERY_ERRORS,
        "Results Kafka refused or that timed out.",
    ),
    (KAFKA_DROPPED, "Results given up on without reaching Kafka."),
    (
        KAFKA_UNCONFIRMED,
        "Results in flight when the shutdown flush gave up: perhaps on the topic.",
    ),
    (
        KAFKA_PRODUCER_REBUILDS,
        "Kafka producers built again after a fatal error.",
    ),
    (
        KAFKA_RESENT,
        "Results a fatal producer error took back, sent again.",
    ),
    (CONSUMER_ROWS_WRITTEN, "Rows stored in PostgreSQL."),
    (
        CONSUMER_DEAD_LETTERS,
        "Messages quarantined in dead_letters.",
    ),
    (CONSUMER_DUPLICATES, "Duplicate result ids absorbed."),
    (
        CONSUMER_OFFSET_RESETS,
        "Partitions whose log was replaced, read again from its start.",
    ),
    (
        CONSUMER_MESSAGES_LOST,
        "Messages that left the log before they were stored.",
    ),
    (
        CONSUMER_FENCED_BATCHES,
        "Batches dropped: another group member owned the partition.",
    ),
    (
        CONSUMER_WRITE_RETRIES,
        "Batch writes retried after a transient PostgreSQL failure.",
    ),
];

/// Registers every help text and the zero value of every unlabelled counter; call once, after
/// the recorder is installed.
pub fn describe() {
    for (name, help) in COUNTERS {
        metrics::describe_counter!(*name, *help);
        metrics::counter!(*name).absolute(0);
    }
    metrics::describe_counter!(CONFIG_RELOADS, "Reloads of sites.lua, by result.");
    metrics::describe_counter!(CONSUMER_BATCHES, "Batches committed, by write path.");
    metrics::describe_gauge!(INCIDENTS_OPEN, "Incidents open now.");
    metrics::describe_counter!(
        ROLE_RESTARTS,
        "Consumers of run started again after a failure."
    );
    metrics::describe_gauge!(
        NOTIFICATIONS_PENDING,
        "Notifications waiting in the outbox."
    );
    metrics::describe_counter!(NOTIFICATIONS_SENT, "Notifications delivered, by notifier.");
    metrics::describe_counter!(
        NOTIFICATIONS_FAILED,
        "Failed notification attempts, by notifier."
    );
    metrics::describe_histogram!(
        PROBE_DURATION,
        metrics::Unit::Seconds,
        "Duration of one check, all attempts."
    );
    metrics::describe_histogram!(
        SCHEDULE_LAG,
        metrics::Unit::Seconds,
        "Check start minus its scheduled time."
    );
    metrics::describe_histogram!(
        CONSUMER_BATCH_SECONDS,
        metrics::Unit::Seconds,
        "Time to write one batch."
    );
    metrics::describe_gauge!(
        KAFKA_QUEUE_DEPTH,
        "Results waiting in the producer's local queue."
    );
    metrics::describe_gauge!(
        CONSUMER_LAG,
        "Messages between the stored offset and the partition end."
    );
    for result in ["ok", "failed"] {
        metrics::counter!(CONFIG_RELOADS, "result" => result).absolute(0);
    }
    for path in [WritePath::Copy, WritePath::OnConflict, WritePath::RowByRow] {
        metrics::counter!(CONSUMER_BATCHES, "path" => path.as_str()).absolute(0);
    }
}

/// Registers the zero values of a notifier's counters, when its delivery task starts.
pub fn zero_notifier(notifier: &str) {
    metrics::counter!(NOTIFICATIONS_SENT, "notifier" => notifier.to_owned()).absolute(0);
    metrics::counter!(NOTIFICATIONS_FAILED, "notifier" => notifier.to_owned()).absolute(0);
}

/// Registers the zero value of a supervised role's restarts, when `run` starts it.
pub fn zero_role(role: &str) {
    metrics::counter!(ROLE_RESTARTS, "role" => role.to_owned()).absolute(0);
}
