//! `sitewatch alert`: incidents from the results topic, and notifications about them.
//!
//! ```text
//! Kafka topic ──group `sitewatch-alerts`──► batch ──► ONE transaction:
//!     advance consumer_offsets (fenced) · alert_state FOR UPDATE · incident::observe per result
//!     · incidents · notifications (the outbox)
//! no-data check (every NODATA_POLL): sites silent for 3 intervals, up to when the group had read
//!     the whole topic → nodata incidents, same tables
//! deliver: one task per notifier drains the outbox (webhook / Alertmanager), at least once
//! ```
//!
//! The consumer machinery is the storing consumer's (`crate::consume`) with another
//! [`BatchWriter`]: offsets in PostgreSQL, written with what they cover, fencing included — so a
//! crash or a replay neither loses nor duplicates an incident, and a restart never re-announces
//! one (the outbox's dedup key makes a replayed notification a no-op).
//!
//! - [`incident`]: the per-site state machine (pure);
//! - [`notice`]: what a notification says (pure);
//! - [`outbox`]: the PostgreSQL side;
//! - [`deliver`]: sending; [`format`]: Lua formatters.

pub mod deliver;
pub mod format;
pub mod incident;
pub mod notice;
pub mod outbox;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use rdkafka::consumer::BaseConsumer;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, AlertRule, Config, ConfigErrors};
use crate::consume::{self, lag, BatchWriter, ConsumeError, ConsumeOptions};
use crate::hooks::HookLimits;
use crate::metrics as names;
use crate::settings::{DatabaseSettings, KafkaSettings};
use crate::store::{self, CheckRow, StoreError, WriteBatch, WriteOutcome, WritePath, WriteStats};
use incident::{AlertState, Event, Seen};

/// The alerter's consumer group when `SITEWATCH_ALERT_GROUP` is unset.
pub const DEFAULT_ALERT_GROUP: &str = "sitewatch-alerts";
/// How often sites are checked for missing results.
const NODATA_POLL: Duration = Duration::from_secs(5);
/// Polls of the topic's ends the no-data check keeps (a minute's worth).
const CAUGHT_UP_HISTORY: usize = 12;
/// How long the no-data check waits for the topic's end from Kafka.
const NODATA_KAFKA_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("{path}: invalid configuration:\n{errors}")]
    Config { path: PathBuf, errors: ConfigErrors },
    #[error("cannot start the Lua formatters: {0}")]
    Formatters(String),
    #[error(transparent)]
    Consume(#[from] ConsumeError),
}

/// Options of `sitewatch alert`.
#[derive(Debug, Clone)]
pub struct AlertOptions {
    pub config_path: PathBuf,
    pub consume: ConsumeOptions,
    /// Print what would be sent instead of sending; write nothing to PostgreSQL.
    pub dry_run: bool,
    /// Cancelled when the probing that feeds this alerter stops on purpose (`run` stopping its
    /// own producer): the no-data check ends then, so a monitor being stopped is not reported
    /// as its sites going silent. A standalone alerter never knows, and keeps checking.
    pub probing_stopped: CancellationToken,
}

/// What the alerter knows of each site from the configuration.
struct SiteRule {
    rule: Arc<AlertRule>,
    url: String,
    interval: Duration,
}

struct Rules {
    sites: HashMap<String, SiteRule>,
}

impl Rules {
    fn new(config: &Config) -> Rules {
        let sites = config
            .sites
            .iter()
            .map(|site| {
                let rule = SiteRule {
                    rule: Arc::clone(&site.alert),
                    url: site.url.to_string(),
                    interval: site.interval,
                };
                (site.name.clone(), rule)
            })
            .collect();
        Rules { sites }
    }
}

/// Runs the alerter (consumer, no-data check, delivery) until `shutdown`.
pub async fn run(
    kafka: &KafkaSettings,
    db: &DatabaseSettings,
    options: AlertOptions,
    shutdown: CancellationToken,
) -> Result<(), AlertError> {
    let config = config::load(&options.config_path).map_err(|errors| AlertError::Config {
        path: options.config_path.clone(),
        errors,
    })?;
    let rules = Arc::new(Rules::new(&config));
    let formatters = match config.notifiers.iter().any(has_format) {
        true => Some(
            format::Formatters::start(Arc::clone(&config.source), HookLimits::default())
                .map_err(AlertError::Formatters)?,
        ),
        false => None,
    };
    let tasks = TaskTracker::new();
    let live_since = Arc::new(AtomicI64::new(0));
    let stop = shutdown.child_token();
    let mode = if options.dry_run {
        deliver::Mode::Print
    } else {
        deliver::Mode::Send
    };
    if !options.dry_run {
        for notifier in &config.notifiers {
            tasks.spawn(deliver::run(
                db.clone(),
                notifier.clone(),
                formatters.clone(),
                mode,
                stop.clone(),
            ));
        }
        tasks.spawn(nodata_loop(
            kafka.clone(),
            db.clone(),
            Arc::clone(&rules),
            Arc::clone(&live_since),
            stop.clone(),
            options.probing_stopped.clone(),
        ));
    }
    tasks.close();
    tracing::info!(
        sites = rules.sites.len(),
        notifiers = config.notifiers.len(),
        dry_run = options.dry_run,
        "alerting"
    );
    let writer = AlertWriter {
        rules,
        live_since,
        dry_run: options.dry_run.then(|| DryRun {
            states: Mutex::new(HashMap::new()),
            formatters,
            notifiers: config.notifiers.clone(),
        }),
    };
    let result = consume::run_with(kafka, db, options.consume, &writer, shutdown.clone()).await;
    stop.cancel();
    tasks.wait().await;
    Ok(result?)
}

fn has_format(notifier: &config::Notifier) -> bool {
    matches!(
        notifier.kind,
        config::NotifierKind::Webhook {
            has_format: true,
            ..
        }
    )
}

/// The alerter's [`BatchWriter`].
struct AlertWriter {
    rules: Arc<Rules>,
    /// When this process first stored a batch (unix µs; 0: not yet). Silence is only measured
    /// from then: an alerter that was down, or is still joining its group, has not been
    /// listening, and must not take its own absence for the sites' silence.
    live_since: Arc<AtomicI64>,
    dry_run: Option<DryRun>,
}

/// `--dry-run`: states live in memory, nothing is written, notices are printed.
struct DryRun {
    states: Mutex<HashMap<String, AlertState>>,
    formatters: Option<format::Formatters>,
    notifiers: Vec<config::Notifier>,
}

impl BatchWriter for AlertWriter {
    fn write<'a>(
        &'a self,
        client: &'a mut Client,
        group: &'a str,
        topic: &'a str,
        batch: &'a WriteBatch,
    ) -> BoxFuture<'a, Result<WriteOutcome, StoreError>> {
        Box::pin(async move {
            match &self.dry_run {
                Some(dry) => Ok(self.dry_write(dry, batch).await),
                None => self.write_batch(client, group, topic, batch).await,
            }
        })
    }
}

impl AlertWriter {
    /// The results of `batch` this alerter has rules for, in Kafka order.
    fn rows<'b>(&self, batch: &'b WriteBatch) -> Vec<&'b CheckRow> {
        batch
            .rows
            .iter()
            .map(|pending| &pending.row)
            .filter(|row| self.rules.sites.contains_key(&row.site))
            .collect()
    }

    async fn write_batch(
        &self,
        client: &mut Client,
        group: &str,
        topic: &str,
        batch: &WriteBatch,
    ) -> Result<WriteOutcome, StoreError> {
        self.transaction(client, group, topic, batch)
            .await
            .map_err(StoreError::query("writing incidents"))
    }

    async fn transaction(
        &self,
        client: &mut Client,
        group: &str,
        topic: &str,
        batch: &WriteBatch,
    ) -> Result<WriteOutcome, tokio_postgres::Error> {
        let tx = client.transaction().await?;
        let fenced = store::advance_offsets(&tx, group, topic, &batch.offsets).await?;
        if !fenced.is_empty() {
            let _ = tx.rollback().await;
            return Ok(WriteOutcome::Fenced { partitions: fenced });
        }
        let rows = self.rows(batch);
        let mut sites: Vec<&str> = rows.iter().map(|r| r.site.as_str()).collect();
        sites.sort_unstable();
        sites.dedup();
        let mut states = outbox::load_states(&tx, &sites).await?;
        let now = Utc::now();
        let mut events: Vec<(&str, Vec<Event>)> = Vec::new();
        for row in &rows {
            let (state, received) = states.entry(row.site.clone()).or_default();
            *received = Some(now);
            let rule = &self.rules.sites[&row.site];
            events.push((&row.site, state.observe(&row.site, &rule.rule, &seen(row))));
        }
        for (site, events) in &events {
            let rule = &self.rules.sites[*site];
            outbox::record(&tx, site, &rule.url, &rule.rule, events).await?;
        }
        // Keep open incidents' rows current (failed checks, severity).
        for site in &sites {
            if let Some(open) = states.get(*site).and_then(|(s, _)| s.open.as_ref()) {
                outbox::upsert_incident(&tx, open, None).await?;
            }
        }
        outbox::save_states(&tx, &states).await?;
        tx.commit().await?;
        let _ = self.live_since.compare_exchange(
            0,
            now.timestamp_micros(),
            AtomicOrdering::Relaxed,
            AtomicOrdering::Relaxed,
        );
        Ok(committed(rows.len()))
    }

    async fn dry_write(&self, dry: &DryRun, batch: &WriteBatch) -> WriteOutcome {
        let rows = self.rows(batch);
        let mut notices = Vec::new();
        {
            let mut states = dry.states.lock();
            for row in &rows {
                let rule = &self.rules.sites[&row.site];
                let state = states.entry(row.site.clone()).or_default();
                for event in state.observe(&row.site, &rule.rule, &seen(row)) {
                    if event.notifies(&rule.rule) {
                        let notice = notice::notice(&row.site, &rule.url, &event);
                        notices.push((rule.rule.notify.clone(), notice));
                    }
                }
            }
        }
        for (notify, notice) in notices {
            for name in notify {
                let body = match (
                    &dry.formatters,
                    dry.notifiers.iter().find(|n| n.name == name),
                ) {
                    (Some(f), Some(n)) if has_format(n) => f.format(&name, &notice).await,
                    _ => serde_json::to_string(&notice).map_err(|e| e.to_string()),
                };
                match body {
                    Ok(body) => {
                        let _ = writeln!(
                            std::io::stdout(),
                            "{name} {} {}\n{body}",
                            notice.kind,
                            notice.dedup_key
                        );
                    }
                    Err(error) => {
                        let _ = writeln!(
                            std::io::stdout(),
                            "{name} {} {}: {error}",
                            notice.kind,
                            notice.dedup_key
                        );
                    }
                }
            }
        }
        committed(rows.len())
    }
}

fn committed(rows: usize) -> WriteOutcome {
    WriteOutcome::Committed(WriteStats {
        path: WritePath::Copy,
        rows_written: rows as u64,
        duplicates: 0,
        dead_letters: 0,
    })
}

fn seen(row: &CheckRow) -> Seen<'_> {
    Seen {
        id: row.id,
        at_us: row.scheduled_at.timestamp_micros(),
        outcome: match row.outcome {
            "up" => crate::result::Outcome::Up,
            "degraded" => crate::result::Outcome::Degraded,
            _ => crate::result::Outcome::Down,
        },
        url: &row.url,
        failure_kind: row.failure_kind,
        failure_message: row.failure_message.as_deref(),
        maintenance: row.maintenance.as_deref(),
    }
}

/// Opens `nodata` incidents for sites whose results stopped arriving; publishes the gauges.
async fn nodata_loop(
    kafka: KafkaSettings,
    db: DatabaseSettings,
    rules: Arc<Rules>,
    live_since: Arc<AtomicI64>,
    shutdown: CancellationToken,
    probing_stopped: CancellationToken,
) {
    let mut client: Option<Client> = None;
    let mut caught_up = CaughtUp::new(kafka);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = probing_stopped.cancelled() => return,
            _ = tokio::time::sleep(NODATA_POLL) => {}
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            client = store::connect(&db).await.ok();
        }
        let Some(c) = client.as_mut() else { continue };
        let live = live_since.load(AtomicOrdering::Relaxed);
        if live == 0 {
            continue;
        }
        let Some(read_to) = caught_up.at(c).await else {
            continue;
        };
        if let Err(error) = check_nodata(c, &rules, live, read_to).await {
            tracing::warn!(%error, "no-data check failed");
            client = None;
        }
    }
}

/// The latest moment up to which the alerter's group has judged everything the topic held.
/// Silence is measured only up to there: while the group is behind — a member killed and its
/// partitions not yet handed on, a rebalance, a backlog — results the sites did send are
/// waiting in Kafka, and their absence here is the alerter's, not the sites'.
struct CaughtUp {
    kafka: KafkaSettings,
    watermarks: Option<Arc<BaseConsumer>>,
    /// The topic's ends as read at the last polls, and when, oldest first (at most
    /// [`CAUGHT_UP_HISTORY`]): a group that trails by a few polls (long batch waits, slow
    /// commits) is still known to have read everything up to one of them.
    history: std::collections::VecDeque<(DateTime<Utc>, Vec<lag::LogEnd>)>,
    /// The last poll could not tell (logged once per spell).
    unknown: bool,
}

impl CaughtUp {
    fn new(kafka: KafkaSettings) -> CaughtUp {
        CaughtUp {
            kafka,
            watermarks: None,
            history: Default::default(),
            unknown: false,
        }
    }

    /// Now, when the group's stored offsets reach the topic's end read now; else the time of
    /// the newest earlier poll (in [`CaughtUp::history`]) whose ends they reach; else `None`
    /// (the group is behind all of them, or Kafka or PostgreSQL cannot say).
    async fn at(&mut self, db: &Client) -> Option<DateTime<Utc>> {
        let now = Utc::now();
        match self.read(db).await {
            Ok((ends, behind_now)) => {
                self.unknown = false;
                let mut at = (behind_now == 0).then_some(now);
                if at.is_none() {
                    // The newest earlier poll whose ends the group has reached.
                    for (then, old) in self.history.iter().rev() {
                        if self.behind(db, old).await.is_ok_and(|n| n == 0) {
                            at = Some(*then);
                            break;
                        }
                    }
                }
                if self.history.len() == CAUGHT_UP_HISTORY {
                    self.history.pop_front();
                }
                self.history.push_back((now, ends));
                if at.is_none() {
                    tracing::debug!(
                        behind = behind_now,
                        "the alerter is behind: no-data check waits"
                    );
                }
                at
            }
            Err(error) => {
                if !std::mem::replace(&mut self.unknown, true) {
                    tracing::warn!(%error, "no-data check paused: cannot tell whether the alerter has read the topic to its end");
                }
                None
            }
        }
    }

    async fn read(&mut self, db: &Client) -> Result<(Vec<lag::LogEnd>, i64), String> {
        let client = match &self.watermarks {
            Some(client) => Arc::clone(client),
            None => {
                let client =
                    Arc::new(lag::watermark_client(&self.kafka).map_err(|e| e.to_string())?);
                self.watermarks = Some(Arc::clone(&client));
                client
            }
        };
        let topic = self.kafka.topic.clone();
        let ends = tokio::task::spawn_blocking(move || {
            lag::topic_ends(&client, &topic, NODATA_KAFKA_TIMEOUT)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let behind = self.behind(db, &ends).await.map_err(|e| e.to_string())?;
        Ok((ends, behind))
    }

    async fn behind(
        &self,
        db: &Client,
        ends: &[lag::LogEnd],
    ) -> Result<i64, tokio_postgres::Error> {
        let groups = [self.kafka.group.clone()];
        let rows = lag::behind(db, &groups, &self.kafka.topic, ends).await?;
        Ok(rows.iter().map(|(_, n)| n).sum())
    }
}

/// Opens `nodata` incidents for sites silent for 3 intervals up to `read_to` (see [`CaughtUp`]).
async fn check_nodata(
    client: &mut Client,
    rules: &Rules,
    live_since_us: i64,
    read_to: DateTime<Utc>,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let sites: Vec<&str> = rules.sites.keys().map(String::as_str).collect();
    let mut states = outbox::load_states(&tx, &sites).await?;
    let now: DateTime<Utc> = Utc::now();
    let mut changed = HashMap::new();
    for (site, (state, received)) in states.iter_mut() {
        let (Some(rule), Some(received)) = (rules.sites.get(site), received) else {
            continue;
        };
        let interval = rule.interval.as_micros() as i64;
        let now_us = now.timestamp_micros();
        let heard_at = received.timestamp_micros().max(live_since_us);
        let silent = read_to.timestamp_micros() - heard_at;
        if let Some(event) = state.check_nodata(site, &rule.url, interval, silent, now_us) {
            outbox::record(&tx, site, &rule.url, &rule.rule, &[event]).await?;
            changed.insert(site.clone(), (state.clone(), Some(*received)));
        }
    }
    if !changed.is_empty() {
        outbox::save_states(&tx, &changed).await?;
    }
    let open: i64 = tx
        .query_one(
            "SELECT count(*) FROM incidents WHERE resolved_at IS NULL",
            &[],
        )
        .await?
        .get(0);
    let pending: i64 = tx
        .query_one(
            "SELECT count(*) FROM notifications WHERE delivered_at IS NULL",
            &[],
        )
        .await?
        .get(0);
    tx.commit().await?;
    metrics::gauge!(names::INCIDENTS_OPEN).set(open as f64);
    metrics::gauge!(names::NOTIFICATIONS_PENDING).set(pending as f64);
    Ok(())
}
