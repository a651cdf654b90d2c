//! `sitewatch produce`: the scheduler driving checks whose results go to Kafka, with reload on
//! SIGHUP or file change, and an orderly shutdown.
//!
//! Shutdown order: stop scheduling → let in-flight checks finish and queue their results →
//! flush the producer (bounded) → return.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::check::Checker;
use crate::config::{self, Config, Site};
use crate::error::ErrorChain;
use crate::metrics::{self as names, SiteGauges, SiteMetrics};
use crate::probe::{Prober, DEFAULT_USER_AGENT};
use crate::publish::{Publisher, TopicSpec};
use crate::result::CheckResult;
use crate::schedule::{Job, Limits, Scheduler, Shard, Tick};
use crate::settings::KafkaSettings;

/// How often sites.lua and scripts/ are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("{path}: invalid configuration:\n{errors}")]
    Config {
        path: PathBuf,
        errors: config::ConfigErrors,
    },
    #[error(transparent)]
    Publish(#[from] crate::publish::PublishError),
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
    #[error(transparent)]
    Hooks(#[from] crate::hooks::HookError),
    #[error("the Kafka producer hit a fatal error and no new one could be built (see the log); restart sitewatch")]
    KafkaFatal,
}

/// Options of `sitewatch produce` (and the producer half of `run`).
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    pub config_path: PathBuf,
    pub shard: Shard,
    pub limits: Limits,
    pub topic: TopicSpec,
    pub flush_timeout: Duration,
    /// Watch sites.lua and scripts/ for changes (SIGHUP reloads regardless).
    pub watch: bool,
    /// Where the last check of each site is exported (`sitewatch_site_*`); shared with the
    /// `/metrics` endpoint, which renders it.
    pub site_metrics: SiteMetrics,
}

/// Runs checks and hands each result to the publisher.
struct PublishJob {
    /// Replaced on reload; each check takes the version current when it starts.
    checkers: RwLock<Checkers>,
    publisher: Arc<Publisher>,
    site_metrics: SiteMetrics,
}

/// How long the previous configuration's checker stays available after a reload.
const PREVIOUS_CHECKER_GRACE: Duration = Duration::from_secs(2);

/// The checker of the running configuration and, for a moment after a reload, the one before.
/// The new checker is installed before the scheduler swaps the site loops, so a tick of a
/// changed site's old loop can fire in between: it takes the checker its definition belongs
/// to, never the new hooks by the old indices ("no hook 2", or another hook's verdict).
struct Checkers {
    current: Checker,
    previous: Option<Checker>,
}

impl Checkers {
    fn for_site(&self, site: &Site) -> Checker {
        match &self.previous {
            Some(previous) if !self.current.pairs_with(site) && previous.pairs_with(site) => {
                previous.clone()
            }
            _ => self.current.clone(),
        }
    }
}

impl Job for PublishJob {
    /// What the site's checks record into, looked up once when its loop starts rather than by
    /// name at every check.
    type SiteState = Arc<SiteGauges>;

    fn site_state(&self, site: &Site) -> Arc<SiteGauges> {
        self.site_metrics.site(&site.name)
    }

    fn missed(&self, gauges: &Arc<SiteGauges>, n: u64) {
        gauges.missed(n);
    }

    fn run(
        self: Arc<Self>,
        site: Arc<Site>,
        gauges: Arc<SiteGauges>,
        tick: Tick,
    ) -> impl Future<Output = ()> + Send + 'static {
        // A reload that lands between installing the new checker and restarting this site's
        // loop must not pair this definition with the new configuration's hooks: for_site
        // gives it the checker it belongs to.
        let checker = self.checkers.read().for_site(&site);
        async move {
            let result = checker.check(&site, tick.id, tick.scheduled_at).await;
            record_metrics(&result);
            gauges.record(&result);
            if let Err(error) = self.publisher.publish(&result).await {
                tracing::error!(%error, site = %site.name, "result dropped");
            }
        }
    }
}

fn record_metrics(result: &CheckResult) {
    metrics::histogram!(names::PROBE_DURATION).record(result.timings.total_ms / 1000.0);
    let lag = (result.started_at - result.scheduled_at)
        .num_microseconds()
        .unwrap_or_default();
    metrics::histogram!(names::SCHEDULE_LAG).record(lag as f64 / 1e6);
}

/// `sitewatch produce`: runs until `shutdown` is cancelled. `reload` receives SIGHUP.
///
/// Long on purpose (over 80 lines): start-up, the reload loop and the shutdown order read top to
/// bottom in one place; each step is a helper below.
pub async fn produce(
    kafka: &KafkaSettings,
    options: ProduceOptions,
    mut reload: mpsc::Receiver<()>,
    shutdown: CancellationToken,
) -> Result<(), ProduceError> {
    let config = load(&options.config_path)?;
    let prober = Arc::new(Prober::new(DEFAULT_USER_AGENT)?);
    let publisher = Arc::new(Publisher::connect(kafka, options.topic).await?);
    tracing::info!(brokers = %kafka.brokers, topic = %kafka.topic, "connected to Kafka");
    let job = Arc::new(PublishJob {
        checkers: RwLock::new(Checkers {
            current: Checker::for_config(&config, Arc::clone(&prober))?,
            previous: None,
        }),
        publisher: Arc::clone(&publisher),
        site_metrics: options.site_metrics.clone(),
    });
    // More checks at once than open files would fail them with "too many open files".
    let mut limits = options.limits;
    let budget = crate::check::open_files_budget();
    if limits.max_concurrency > budget {
        tracing::warn!(
            asked = limits.max_concurrency,
            allowed = budget,
            "fewer checks at once than asked: the open files limit allows no more"
        );
        limits.max_concurrency = budget;
    }
    let mut scheduler = Scheduler::new(Arc::clone(&job), limits, shutdown.child_token());
    let Config { sites, version, .. } = config;
    let sites = in_shard(sites, options.shard);
    tracing::info!(sites = sites.len(), %version, shard = %options.shard, "scheduling");
    scheduler.apply(sites);

    let mut stamp = sources_stamp(&options.config_path);
    let mut watch = tokio::time::interval(WATCH_INTERVAL);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut version = version;
    // A fatal producer error is recovered from in the background, through the shutdown flush.
    let recovery_stop = CancellationToken::new();
    let recovery = {
        let (publisher, stop) = (Arc::clone(&publisher), recovery_stop.clone());
        tokio::spawn(async move { publisher.recover(stop).await })
    };
    let fatal = publisher.broken();
    loop {
        let why = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = fatal.cancelled() => break,
            Some(()) = reload.recv() => "SIGHUP",
            _ = watch.tick(), if options.watch => {
                let now = sources_stamp(&options.config_path);
                if now == stamp { continue; }
                stamp = now;
                "file change"
            }
        };
        // Lua evaluation and starting hook workers block: keep them off the runtime's threads,
        // on a plain thread rather than a blocking task (the runtime would wait for that at
        // shutdown), and keep listening for shutdown meanwhile. Both steps are bounded by the
        // load wall-clock limit.
        let (path, current, prober) = (
            options.config_path.clone(),
            version.clone(),
            Arc::clone(&prober),
        );
        let (reply, answer) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("sitewatch-reload".into())
            .spawn(move || {
                let _ = reply.send(load_again(&path, &current, prober));
            });
        let loaded = match spawned {
            Err(error) => Err(error.to_string()),
            Ok(_) => tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = fatal.cancelled() => break,
                loaded = answer => loaded.map_err(|_| "the reload thread stopped".to_string()),
            },
        };
        match loaded {
            // Asked for by an operator (SIGHUP): say so; a file touched without a change: quiet.
            Ok(Ok(None)) if why == "SIGHUP" => {
                tracing::info!(trigger = why, "configuration unchanged: nothing to reload")
            }
            Ok(Ok(None)) => tracing::debug!(trigger = why, "configuration unchanged"),
            Ok(Ok(Some((config, checker)))) => {
                {
                    let mut checkers = job.checkers.write();
                    let previous = std::mem::replace(&mut checkers.current, checker);
                    checkers.previous = Some(previous);
                }
                let Config {
                    sites,
                    version: new_version,
                    ..
                } = config;
                let (added, changed, removed) = scheduler.apply(in_shard(sites, options.shard));
                // The old loops are stopped; a tick already firing on another thread takes its
                // checker within moments. Then the old hook workers go with the last check
                // that holds them.
                let job = Arc::clone(&job);
                let replaced = version.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(PREVIOUS_CHECKER_GRACE).await;
                    let mut checkers = job.checkers.write();
                    if checkers
                        .previous
                        .as_ref()
                        .is_some_and(|p| p.config_version() == replaced)
                    {
                        checkers.previous = None;
                    }
                });
                options.site_metrics.retain(|name| scheduler.contains(name));
                metrics::counter!(names::CONFIG_RELOADS, "result" => "ok").increment(1);
                tracing::info!(trigger = why, version = %new_version, added, changed, removed, "configuration reloaded");
                version = new_version;
            }
            Ok(Err(error)) => {
                metrics::counter!(names::CONFIG_RELOADS, "result" => "failed").increment(1);
                tracing::error!(
                    trigger = why,
                    "reload failed, keeping the running configuration:\n{error}"
                );
            }
            Err(error) => {
                metrics::counter!(names::CONFIG_RELOADS, "result" => "failed").increment(1);
                tracing::error!(trigger = why, %error, "reload failed, keeping the running configuration");
            }
        }
    }
    // A check waiting for room in a full Kafka queue would hold shutdown forever: past the
    // flush timeout such waits give up, counting and logging each result they drop.
    let abandon = {
        let (publisher, wait) = (Arc::clone(&publisher), options.flush_timeout);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            publisher.abandon_waiting();
        })
    };
    tracing::info!("shutting down: waiting for in-flight checks");
    scheduler.shutdown().await;
    abandon.abort();
    publisher.flush(options.flush_timeout).await;
    recovery_stop.cancel();
    let _ = recovery.await;
    let count = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    let deliveries = publisher.deliveries();
    tracing::info!(
        delivered = count(&deliveries.delivered),
        dropped = count(&deliveries.dropped),
        unconfirmed = count(&deliveries.unconfirmed),
        "producer stopped"
    );
    if fatal.is_cancelled() {
        return Err(ProduceError::KafkaFatal);
    }
    Ok(())
}

/// Loads the configuration again; `None` when its version is the running one. Blocking.
fn load_again(
    path: &Path,
    running: &str,
    prober: Arc<Prober>,
) -> Result<Option<(Config, Checker)>, String> {
    let config = config::load(path).map_err(|errors| errors.to_string())?;
    if config.version == running {
        return Ok(None);
    }
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let checker =
        Checker::for_config(&config, prober).map_err(|error| ErrorChain(&error).to_string())?;
    Ok(Some((config, checker)))
}

fn load(path: &Path) -> Result<Config, ProduceError> {
    let config = config::load(path).map_err(|errors| ProduceError::Config {
        path: path.to_owned(),
        errors,
    })?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    Ok(config)
}

/// The sites this instance probes, taken by value (no second copy of every site).
fn in_shard(sites: Vec<Arc<Site>>, shard: Shard) -> Vec<Arc<Site>> {
    sites
        .into_iter()
        .filter(|s| shard.contains(&s.name))
        .collect()
}

/// Modification times of sites.lua and every file in scripts/: cheap change detection that
/// works on every filesystem (editors that replace files included).
fn sources_stamp(config_path: &Path) -> Vec<(PathBuf, Option<SystemTime>)> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut stamp = vec![(config_path.to_owned(), modified(config_path))];
    let scripts = config::scripts_dir(config_path);
    if let Ok(entries) = std::fs::read_dir(&scripts) {
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        stamp.extend(files.into_iter().map(|p| {
            let m = modified(&p);
            (p, m)
        }));
    }
    stamp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::load_str(
            std::path::Path::new("sites.lua"),
            text,
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts"),
        )
        .unwrap()
    }

    /// Between a reload's new checker and the scheduler's new loops, each site definition is
    /// checked with the hooks of the configuration it came from.
    #[tokio::test]
    async fn a_site_definition_takes_the_checker_of_its_own_configuration() {
        let old = config(
            r#"site { name = "a", url = "http://a.example/", hooks = { function(r) return true end, function(r) return true end } }
site { name = "same", url = "http://s.example/" }"#,
        );
        let new = config(
            r#"site { name = "a", url = "http://a.example/", hooks = { script "json_status" } }
site { name = "same", url = "http://s.example/" }
site { name = "added", url = "http://n.example/" }"#,
        );
        let prober = Arc::new(Prober::new(DEFAULT_USER_AGENT).unwrap());
        let checkers = Checkers {
            current: Checker::for_config(&new, Arc::clone(&prober)).unwrap(),
            previous: Some(Checker::for_config(&old, prober).unwrap()),
        };
        let version = |site: &Site| checkers.for_site(site).config_version().to_owned();
        assert_eq!(version(&old.sites[0]), old.version, "the old loop's a");
        assert_eq!(version(&new.sites[0]), new.version, "the new loop's a");
        // Unchanged and added sites take the new checker.
        assert_eq!(version(&old.sites[1]), new.version);
        assert_eq!(version(&new.sites[2]), new.version);
        // Without a previous checker, the current one (no better choice).
        let current = Checkers {
            previous: None,
            ..checkers
        };
        assert_eq!(
            current.for_site(&old.sites[0]).config_version(),
            new.version
        );
    }
}
