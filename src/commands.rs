//! The `validate` and `check` commands: load sites.lua, probe once, report.
//!
//! `check` is how operators try a sites.lua while writing it and how CI pipelines gate on a
//! deployment: no Kafka, no PostgreSQL, one probe per site, an exit code.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use futures::future::join_all;

use crate::check::Checker;
use crate::config::{self, Config, ConfigErrors};
use crate::probe::{Prober, DEFAULT_USER_AGENT};
use crate::result::{CheckResult, Outcome};

/// The process exit codes of `validate` and `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Configuration valid; no checked site is down (degraded counts as up).
    Ok = 0,
    /// At least one checked site is down.
    SiteDown = 1,
    /// The configuration is invalid (every error printed on stderr).
    ConfigInvalid = 2,
}

/// Loads and validates, printing every error to stderr.
pub fn load_or_report(path: &Path) -> Result<Config, ConfigErrors> {
    config::load(path).inspect_err(|errors| {
        eprintln!("{errors}");
        eprintln!("{}: {} error(s)", path.display(), errors.len());
    })
}

/// `sitewatch validate`.
pub fn validate(path: &Path) -> ExitCode {
    match load_or_report(path) {
        Ok(config) => {
            println!(
                "{}: {} site(s), config version {}",
                path.display(),
                config.sites.len(),
                config.version
            );
            ExitCode::Ok
        }
        Err(_) => ExitCode::ConfigInvalid,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no site named {0:?} in the configuration")]
    UnknownSite(String),
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
    #[error(transparent)]
    Hooks(#[from] crate::hooks::HookError),
}

/// `sitewatch check`: probes the selected sites (all when `only` is empty) once, concurrently.
pub async fn check(config: &Config, only: &[String], json: bool) -> Result<ExitCode, CheckError> {
    for name in only {
        if !config.sites.iter().any(|s| &s.name == name) {
            return Err(CheckError::UnknownSite(name.clone()));
        }
    }
    let prober = Arc::new(Prober::new(DEFAULT_USER_AGENT)?);
    let checker = Checker::for_config(config, prober)?;
    let selected = config
        .sites
        .iter()
        .filter(|site| only.is_empty() || only.contains(&site.name));
    let results = join_all(selected.map(|site| {
        let checker = checker.clone();
        async move { checker.check(site, uuid::Uuid::now_v7(), Utc::now()).await }
    }))
    .await;

    let mut out = std::io::stdout().lock();
    if json {
        for result in &results {
            // A CheckResult always serializes: it holds only strings, numbers and maps.
            let line = serde_json::to_string(result).unwrap_or_default();
            let _ = writeln!(out, "{line}");
        }
    } else {
        let _ = write!(out, "{}", table(&results));
    }
    Ok(if results.iter().any(|r| r.outcome == Outcome::Down) {
        ExitCode::SiteDown
    } else {
        ExitCode::Ok
    })
}

/// The human-readable report of `check`: one row per site.
pub fn table(results: &[CheckResult]) -> String {
    let name_width = results
        .iter()
        .map(|r| r.site.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut text = format!(
        "{:<name_width$}  {:<8}  {:>6}  {:>9}  {}\n",
        "SITE", "OUTCOME", "STATUS", "TOTAL ms", "REASON"
    );
    for r in results {
        let status = r
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into());
        let reason = r
            .failure
            .as_ref()
            .map(|f| match f.phase {
                Some(phase) => format!("{} ({}): {}", f.kind.as_str(), phase.as_str(), f.message),
                None => format!("{}: {}", f.kind.as_str(), f.message),
            })
            .unwrap_or_default();
        text.push_str(&format!(
            "{:<name_width$}  {:<8}  {:>6}  {:>9.1}  {}\n",
            r.site,
            r.outcome.as_str(),
            status,
            r.timings.total_ms,
            reason
        ));
    }
    text
}
