//! One function per command: call the library, print for people, return the exit code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sitewatch::check;
use sitewatch::config::{self, Config, ConfigErrors};
use sitewatch::result::{CheckResult, Outcome};
use sitewatch::settings::DatabaseSettings;
use sitewatch::store;

use crate::cli;
use crate::exit::{fail, Exit};

/// Loads and validates, printing every error to stderr.
pub fn load_or_report(path: &Path) -> Result<Config, ConfigErrors> {
    config::load(path).inspect_err(|errors| {
        eprintln!("{errors}");
        eprintln!("{}: {} error(s)", path.display(), errors.len());
    })
}

/// `sitewatch validate`.
pub fn validate(path: &Path) -> Exit {
    match load_or_report(path) {
        Ok(config) => {
            println!(
                "{}: {} site(s), config version {}",
                path.display(),
                config.sites.len(),
                config.version
            );
            Exit::Ok
        }
        Err(_) => Exit::ConfigInvalid,
    }
}

/// `sitewatch check`: probe once, print a table or JSON lines.
pub async fn check(path: &Path, only: &[String], json: bool) -> Exit {
    let Ok(config) = load_or_report(path) else {
        return Exit::ConfigInvalid;
    };
    let results = match check::check_once(&config, only).await {
        Ok(results) => results,
        Err(error) => return fail(&error),
    };
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
    if results.iter().any(|r| r.outcome == Outcome::Down) {
        Exit::SiteDown
    } else {
        Exit::Ok
    }
}

/// The human-readable report of `check`: one row per site.
fn table(results: &[CheckResult]) -> String {
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

/// The database settings, or the failure already printed.
fn database(env_file: Option<&PathBuf>) -> Result<DatabaseSettings, Exit> {
    cli::database_settings(env_file).map_err(|error| fail(&error))
}

/// `sitewatch migrate`.
pub async fn migrate(env_file: Option<&PathBuf>) -> Exit {
    let db = match database(env_file) {
        Ok(db) => db,
        Err(exit) => return exit,
    };
    let migrated = async {
        let mut client = store::connect(&db).await?;
        store::migrate(&mut client).await
    };
    match migrated.await {
        Ok(report) => {
            for applied in &report.applied {
                println!("applied {:04} {}", applied.version, applied.name);
            }
            println!(
                "{} migration(s) applied, {} already applied",
                report.applied.len(),
                report.already_applied
            );
            Exit::Ok
        }
        Err(error) => fail(&error),
    }
}

/// `sitewatch prune --older-than AGE`.
pub async fn prune(env_file: Option<&PathBuf>, older_than: Duration) -> Exit {
    let db = match database(env_file) {
        Ok(db) => db,
        Err(exit) => return exit,
    };
    // parse_retention bounds the age far below chrono's range.
    let age = chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
    let pruned = async {
        let client = store::connect(&db).await?;
        store::prune(&client, age).await
    };
    match pruned.await {
        Ok(rows) => {
            println!(
                "deleted {rows} result(s) older than {}",
                sitewatch::duration::format(older_than)
            );
            Exit::Ok
        }
        Err(error) => fail(&error),
    }
}
