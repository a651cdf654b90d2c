//! One check of one site: probe (with retries), built-in assertions, Lua hooks → [`CheckResult`].
//!
//! This is the unit of work both `sitewatch check` and the scheduler run. A site being down is a
//! value here, never an `Err`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::assertions;
use crate::config::{maintenance, Config, MaintenanceWindow, Site};
use crate::hooks::{HookError, HookInput, HookLimits, HookPool};
use crate::probe::{Attempt, Prober, DEFAULT_USER_AGENT};
use crate::result::{
    replace_nul, shorten, AssertionResult, CheckResult, Failure, FailureKind, Level, Outcome,
    SCHEMA_VERSION,
};

/// Longest `final_url` in a result, in bytes: the server picks it with its redirects.
pub const MAX_FINAL_URL: usize = 2048;
/// Longest `failure.message` in a result, in bytes: it quotes what the server sent (redirect
/// targets, hook reasons).
pub const MAX_FAILURE_MESSAGE: usize = 4096;
/// Pause between a failed attempt and its retry: long enough for a blip to pass, short enough to
/// keep the check well inside its interval.
pub const RETRY_DELAY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no site named {0:?} in the configuration")]
    UnknownSite(String),
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
    #[error(transparent)]
    Hooks(#[from] HookError),
}

/// File descriptors kept back from checks: standard streams, logs, the configuration and TLS
/// files, Kafka's and the metrics listener's sockets, the runtime's own.
pub const RESERVED_FILES: u64 = 128;
/// File descriptors one check holds at most at once: its connection, and the socket the
/// resolver (getaddrinfo) opens while it looks the name up.
pub const FILES_PER_CHECK: u64 = 2;

/// Raises the soft limit on open files (`RLIMIT_NOFILE`) to the hard limit, as far as the
/// system allows, and returns how many checks may run at once within it. Every process that
/// runs checks calls it at start: running more checks than descriptors fail them with "too many
/// open files" — outages that are not.
pub fn open_files_budget() -> usize {
    checks_within(raise_open_files_limit())
}

/// How many checks fit in `limit` open files.
pub fn checks_within(limit: u64) -> usize {
    let checks = limit.saturating_sub(RESERVED_FILES) / FILES_PER_CHECK;
    usize::try_from(checks).unwrap_or(usize::MAX).max(1)
}

/// The soft `RLIMIT_NOFILE` after raising it to the hard limit (best effort: the old soft limit
/// when that fails). An unlimited limit counts as `u64::MAX`.
fn raise_open_files_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    let maximum = limit.maximum.unwrap_or(u64::MAX);
    if current >= maximum {
        return current;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::debug!(from = current, to = maximum, "raised the open files limit");
            maximum
        }
        Err(error) => {
            tracing::warn!(%error, limit = current, "cannot raise the open files limit");
            current
        }
    }
}

/// `sitewatch check`: probes the selected sites (all when `only` is empty) once, as many at a
/// time as the open files limit allows ([`open_files_budget`]) and at most `max_per_host`
/// against one `host:port` (as `produce` does: a small server's listen backlog would overflow),
/// and returns their results in configuration order.
pub async fn check_once(
    config: &Config,
    only: &[String],
    max_per_host: usize,
) -> Result<Vec<CheckResult>, CheckError> {
    if let Some(name) = only
        .iter()
        .find(|name| !config.sites.iter().any(|s| &s.name == *name))
    {
        return Err(CheckError::UnknownSite(name.clone()));
    }
    let prober = Arc::new(Prober::new(DEFAULT_USER_AGENT)?);
    let checker = Checker::for_config(config, prober)?;
    let selected = config
        .sites
        .iter()
        .filter(|site| only.is_empty() || only.contains(&site.name));
    let concurrency = open_files_budget();
    let mut hosts: HashMap<String, Arc<Semaphore>> = HashMap::new();
    Ok(futures::stream::iter(selected)
        .map(|site| {
            let checker = checker.clone();
            let host = Arc::clone(
                hosts
                    .entry(crate::schedule::host_key(&site.url))
                    .or_insert_with(|| Arc::new(Semaphore::new(max_per_host.max(1)))),
            );
            async move {
                // Never closed, so acquiring only waits.
                let _permit = host.acquire_owned().await;
                checker.check(site, Uuid::now_v7(), Utc::now()).await
            }
        })
        .buffered(concurrency)
        .collect()
        .await)
}

/// Everything needed to check sites of one configuration version. Cheap to clone.
#[derive(Clone)]
pub struct Checker {
    prober: Arc<Prober>,
    /// `None` when no site of this configuration has hooks (no Lua workers are started).
    hooks: Option<Arc<HookPool>>,
    /// Stamped on every result: which sites.lua produced it.
    config_version: Arc<str>,
    /// Stamped on every result: which machine probed.
    probe_host: Arc<str>,
    /// The configuration's maintenance windows: a result scheduled inside one carries its name.
    maintenance: Arc<[MaintenanceWindow]>,
    /// Each site's hook list in this configuration (`None`: built without one, pairs with any
    /// site), so that a site definition is checked with the hooks of its own configuration.
    hook_lists: Option<Arc<HashMap<String, Vec<String>>>>,
}

impl Checker {
    pub fn new(prober: Arc<Prober>, hooks: Option<Arc<HookPool>>, config_version: &str) -> Self {
        Checker {
            prober,
            hooks,
            config_version: config_version.into(),
            probe_host: probe_host().into(),
            maintenance: Arc::new([]),
            hook_lists: None,
        }
    }

    /// The version of the configuration this checker was made for.
    pub fn config_version(&self) -> &str {
        &self.config_version
    }

    /// Whether `site` is the definition this checker's configuration has for it, as far as
    /// hooks go (hook N of the site is hook N of the pool): a site loop started from another
    /// configuration version must not call this pool's hooks by index.
    pub fn pairs_with(&self, site: &Site) -> bool {
        self.hook_lists
            .as_ref()
            .is_none_or(|lists| lists.get(&site.name) == Some(&site.hooks))
    }

    /// The same checker, labelling results scheduled inside one of `windows` with its name.
    pub fn with_maintenance(mut self, windows: &[MaintenanceWindow]) -> Self {
        self.maintenance = windows.into();
        self
    }

    /// A checker for `config`: the shared prober, its maintenance windows and, if any site has
    /// hooks, a pool of Lua workers evaluated from the same sources. Blocking while the workers
    /// load the config.
    pub fn for_config(config: &Config, prober: Arc<Prober>) -> Result<Checker, HookError> {
        let hooks = if config.sites.iter().any(|s| !s.hooks.is_empty()) {
            Some(Arc::new(HookPool::start(
                &config.source,
                HookLimits::default(),
            )?))
        } else {
            None
        };
        let hook_lists = config
            .sites
            .iter()
            .map(|site| (site.name.clone(), site.hooks.clone()))
            .collect();
        Ok(Checker {
            hook_lists: Some(Arc::new(hook_lists)),
            ..Checker::new(prober, hooks, &config.version).with_maintenance(&config.maintenance)
        })
    }

    /// Runs the check: up to `1 + site.retries` attempts, stopping at the first that is not down.
    #[tracing::instrument(skip_all, fields(site = %site.name, %id))]
    pub async fn check(&self, site: &Site, id: Uuid, scheduled_at: DateTime<Utc>) -> CheckResult {
        let started_at = Utc::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let attempt = self.prober.probe(site).await;
            let verdict = self.judge(site, attempt, attempts).await;
            if verdict.outcome != Outcome::Down || attempts > site.retries {
                return self.result(site, id, scheduled_at, started_at, attempts, verdict);
            }
            tracing::debug!(attempt = attempts, "attempt down, retrying");
            tokio::time::sleep(RETRY_DELAY).await;
        }
    }

    async fn judge(&self, site: &Site, attempt: Attempt, number: u32) -> Verdict {
        let response = match attempt.outcome {
            Ok(response) => response,
            Err(failure) => {
                return Verdict {
                    outcome: Outcome::Down,
                    failure: Some(failure),
                    assertions: Vec::new(),
                    metrics: Default::default(),
                    // What arrived before the failure: a 200 whose body timed out, the
                    // last 302 of a redirect loop.
                    status: attempt.head.as_ref().map(|h| h.status),
                    final_url: attempt.head.map(|h| h.url.to_string()),
                    body_bytes: 0,
                    body_truncated: false,
                    cert_not_after: attempt.cert.map(|c| c.not_after),
                    timings: attempt.timings,
                };
            }
        };
        let mut list = assertions::evaluate(&site.expect, &response, &attempt.timings, Utc::now());
        let mut metrics = std::collections::BTreeMap::new();
        if let (Some(pool), false) = (&self.hooks, site.hooks.is_empty()) {
            let input = Arc::new(HookInput {
                site: site.name.clone(),
                url: site.url.to_string(),
                final_url: response.final_url.to_string(),
                status: response.status,
                headers: response.headers.clone(),
                body: response.body.clone(),
                body_truncated: response.body_truncated,
                timings: attempt.timings.clone(),
                cert: response.cert.clone(),
                attempt: number,
            });
            for (index, label) in site.hooks.iter().enumerate() {
                let verdict = pool.call(&site.name, index, Arc::clone(&input)).await;
                metrics.extend(verdict.metrics);
                list.push(AssertionResult {
                    name: format!("hook:{label}"),
                    ok: verdict.level.is_none(),
                    level: verdict.level.unwrap_or(Level::Fail),
                    expected: "pass".into(),
                    actual: match verdict.level {
                        None => "pass".into(),
                        Some(Level::Warn) => "degraded".into(),
                        Some(Level::Fail) => "fail".into(),
                    },
                    reason: verdict.reason,
                });
            }
        }
        let outcome = assertions::outcome_of(&list);
        let failure = (outcome != Outcome::Up).then(|| Failure {
            kind: FailureKind::Assertion,
            phase: None,
            message: assertions::describe_failures(&list),
        });
        Verdict {
            outcome,
            failure,
            status: Some(response.status),
            final_url: Some(response.final_url.to_string()),
            body_bytes: response.body.len() as u64,
            body_truncated: response.body_truncated,
            cert_not_after: response.cert.as_ref().map(|c| c.not_after),
            assertions: list,
            metrics,
            timings: attempt.timings,
        }
    }

    fn result(
        &self,
        site: &Site,
        id: Uuid,
        scheduled_at: DateTime<Utc>,
        started_at: DateTime<Utc>,
        attempts: u32,
        mut verdict: Verdict,
    ) -> CheckResult {
        // The server chose these (a redirect target, what assertions and hooks quoted).
        if let Some(url) = verdict.final_url.as_mut() {
            shorten(url, MAX_FINAL_URL);
        }
        if let Some(failure) = verdict.failure.as_mut() {
            shorten(&mut failure.message, MAX_FAILURE_MESSAGE);
        }
        verdict.replace_nul();
        CheckResult {
            schema: SCHEMA_VERSION,
            id,
            site: site.name.clone(),
            url: site.url.to_string(),
            final_url: verdict.final_url,
            scheduled_at,
            started_at,
            outcome: verdict.outcome,
            status: verdict.status,
            timings: verdict.timings,
            failure: verdict.failure,
            assertions: verdict.assertions,
            metrics: verdict.metrics,
            body_bytes: verdict.body_bytes,
            body_truncated: verdict.body_truncated,
            cert_not_after: verdict.cert_not_after,
            tls_insecure: site.tls.insecure,
            config_version: self.config_version.to_string(),
            attempts,
            probe_host: self.probe_host.to_string(),
            // By when the check was due, not when it ran: a check due just before a window
            // opens is outside it however long it waited for a permit.
            maintenance: maintenance::window_at(&self.maintenance, &site.name, scheduled_at)
                .map(str::to_string),
        }
    }
}

impl Verdict {
    /// Every text a server or a hook chose, storable by PostgreSQL ([`replace_nul`]).
    fn replace_nul(&mut self) {
        let texts = self
            .final_url
            .iter_mut()
            .chain(self.failure.iter_mut().map(|f| &mut f.message))
            .chain(self.assertions.iter_mut().flat_map(|a| {
                [&mut a.name, &mut a.expected, &mut a.actual]
                    .into_iter()
                    .chain(a.reason.as_mut())
            }));
        for text in texts {
            replace_nul(text);
        }
        if self.metrics.keys().any(|name| name.contains('\0')) {
            self.metrics = std::mem::take(&mut self.metrics)
                .into_iter()
                .map(|(mut name, value)| {
                    replace_nul(&mut name);
                    (name, value)
                })
                .collect();
        }
    }
}

/// What one attempt amounted to, before it becomes a `CheckResult`.
struct Verdict {
    outcome: Outcome,
    failure: Option<Failure>,
    assertions: Vec<AssertionResult>,
    metrics: std::collections::BTreeMap<String, f64>,
    status: Option<u16>,
    final_url: Option<String>,
    body_bytes: u64,
    body_truncated: bool,
    cert_not_after: Option<DateTime<Utc>>,
    timings: crate::result::Timings,
}

/// The machine's host name (`/proc/sys/kernel/hostname`, then `$HOSTNAME`), for `probe_host`.
pub fn probe_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_fit_in_the_open_files_limit() {
        let cases = [
            (1024, 448),
            (256, 64),
            (129, 1),
            (64, 1),
            (0, 1),
            (1_048_576, 524_224),
        ];
        for (limit, want) in cases {
            assert_eq!(checks_within(limit), want, "{limit}");
        }
        assert!(open_files_budget() >= 1);
    }
}
