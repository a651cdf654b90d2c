//! One function per command: call the library, print for people, return the exit code.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Utc;
use clap::CommandFactory as _;
use sitewatch::check;
use sitewatch::config::{self, Config, ConfigErrors};
use sitewatch::report::{self, ReportError};
use sitewatch::result::{CheckResult, Outcome};
use sitewatch::settings::DatabaseSettings;
use sitewatch::store;

use crate::cli;
use crate::exit::{fail, Exit};

/// The starter configuration `sitewatch init` writes.
const STARTER_SITES: &str = include_str!("starter.lua");
/// The LuaLS definitions of the configuration language: the repository's own copy.
const LUALS_DEFINITIONS: &str = include_str!("../../../scripts/sitewatch.d.lua");

/// `sitewatch init`: writes a starter `sites.lua` and `sitewatch.d.lua` into `dir`. Refuses
/// (exit 1, nothing written) when either exists.
pub fn init(dir: &Path) -> Exit {
    let files = [
        ("sites.lua", STARTER_SITES),
        ("sitewatch.d.lua", LUALS_DEFINITIONS),
    ];
    let taken: Vec<&str> = files
        .iter()
        .filter(|(name, _)| dir.join(name).symlink_metadata().is_ok())
        .map(|(name, _)| *name)
        .collect();
    if !taken.is_empty() {
        let verb = if taken.len() == 1 { "exists" } else { "exist" };
        let _ = writeln!(
            std::io::stderr(),
            "sitewatch init: {} already {verb} in {}; nothing written (move it away first)",
            taken.join(" and "),
            dir.display()
        );
        return Exit::NotMet;
    }
    for (name, text) in files {
        let path = dir.join(name);
        // create_new: a file that appeared since the check above is not overwritten either.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()));
        if let Err(error) = written {
            let _ = writeln!(
                std::io::stderr(),
                "sitewatch init: cannot write {}: {error}",
                path.display()
            );
            return match error.kind() {
                std::io::ErrorKind::AlreadyExists => Exit::NotMet,
                _ => Exit::Failure,
            };
        }
    }
    let _ = writeln!(
        std::io::stdout(),
        "wrote sites.lua and sitewatch.d.lua in {}\nnext: edit sites.lua, then `sitewatch validate` and `sitewatch check`",
        dir.display()
    );
    Exit::Ok
}

/// `sitewatch completions SHELL`: the completion script on stdout.
pub fn completions(shell: cli::CompletionShell) -> Exit {
    let mut command = cli::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(
        clap_complete::Shell::from(shell),
        &mut command,
        "sitewatch",
        &mut script,
    );
    print_bytes(&script)
}

/// `sitewatch man`: the manual page, roff, on stdout.
pub fn man() -> Exit {
    let mut page = Vec::new();
    // Rendering into memory cannot fail: a Vec takes every write.
    let _ = clap_mangen::Man::new(cli::Cli::command()).render(&mut page);
    print_bytes(&page)
}

/// Writes generated text to stdout; a closed pipe is the reader's choice, not a failure.
fn print_bytes(bytes: &[u8]) -> Exit {
    let _ = std::io::stdout().lock().write_all(bytes);
    Exit::Ok
}

/// Loads and validates, printing every error to stderr.
pub fn load_or_report(path: &Path) -> Result<Config, ConfigErrors> {
    let loaded = config::load(path);
    for warning in loaded.iter().flat_map(|config| &config.warnings) {
        let _ = writeln!(std::io::stderr(), "warning: {warning}");
    }
    loaded.inspect_err(|errors| {
        let _ = writeln!(std::io::stderr(), "{errors}");
        let _ = writeln!(
            std::io::stderr(),
            "{}: {} error(s)",
            path.display(),
            errors.len()
        );
    })
}

/// `sitewatch validate`.
pub fn validate(path: &Path) -> Exit {
    match load_or_report(path) {
        Ok(config) => {
            let _ = writeln!(
                std::io::stdout(),
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
pub async fn check(path: &Path, only: &[String], json: bool, max_per_host: usize) -> Exit {
    let Ok(config) = load_or_report(path) else {
        return Exit::ConfigInvalid;
    };
    check_and_print(&config, only, json, false, max_per_host).await
}

/// `sitewatch check URL`: one site written as sites.lua would write it, validated the same way
/// (errors name the flag instead of a line), probed once; the table gets a phase waterfall.
/// What `check URL` expects besides a 2xx, and whom it trusts.
pub struct UrlCheck<'a> {
    pub status: Option<&'a str>,
    pub body: Option<&'a str>,
    pub ca: Option<&'a Path>,
}

pub async fn check_url(url: &str, with: &UrlCheck<'_>, json: bool) -> Exit {
    let mut expect = Vec::new();
    if let Some(status) = with.status {
        // A number stays a number (200); anything else is a pattern string ("3xx").
        match status.parse::<u16>() {
            Ok(code) => expect.push(format!("status = {code}")),
            Err(_) => expect.push(format!("status = {}", lua_string(status))),
        }
    }
    if let Some(body) = with.body {
        expect.push(format!("body = {}", lua_string(body)));
    }
    let tls = match with.ca {
        Some(ca) => format!(", tls = {{ ca = {} }}", lua_string(&ca.to_string_lossy())),
        None => String::new(),
    };
    // Named after its host, so the table reads like one of sites.lua.
    let name = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "check".to_owned());
    let text = format!(
        "site {{ name = {}, url = {}, expect = {{ {} }}{tls} }}\n",
        lua_string(&name),
        lua_string(url),
        expect.join(", ")
    );
    let label = Path::new("<command line>");
    let config = match config::load_str(label, &text, Path::new("scripts")) {
        Ok(config) => config,
        Err(errors) => {
            let _ = writeln!(std::io::stderr(), "{errors}");
            return Exit::ConfigInvalid;
        }
    };
    check_and_print(&config, &[], json, true, 1).await
}

/// `text` as a Lua string literal that means exactly `text`.
fn lua_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn check_and_print(
    config: &Config,
    only: &[String],
    json: bool,
    waterfall: bool,
    max_per_host: usize,
) -> Exit {
    let results = match check::check_once(config, only, max_per_host).await {
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
        if waterfall {
            for result in &results {
                let _ = write!(out, "\n{}", phase_waterfall(&result.timings));
            }
        }
    }
    if results.iter().any(|r| r.outcome == Outcome::Down) {
        Exit::NotMet
    } else {
        Exit::Ok
    }
}

/// Width of the waterfall's bar area, in terminal columns.
const WATERFALL_COLUMNS: usize = 48;

/// The phases of one check as a waterfall: each phase a bar starting where the one before it
/// ended, scaled to the total time; a phase that did not happen (no TLS on http://, a
/// connection reused) is a dash.
fn phase_waterfall(t: &sitewatch::result::Timings) -> String {
    let phases = [
        ("DNS", t.dns_ms),
        ("connect", t.connect_ms),
        ("TLS", t.tls_ms),
        ("first byte", t.ttfb_ms),
        ("transfer", t.transfer_ms),
    ];
    let scale = WATERFALL_COLUMNS as f64 / t.total_ms.max(f64::MIN_POSITIVE);
    let mut out = String::new();
    let mut start_ms = 0.0;
    for (name, ms) in phases {
        let Some(ms) = ms else {
            out.push_str(&format!("{name:<10}  {:>9}\n", "-"));
            continue;
        };
        let from = ((start_ms * scale).round() as usize).min(WATERFALL_COLUMNS);
        let to = (((start_ms + ms) * scale).round() as usize).clamp(from, WATERFALL_COLUMNS);
        let bar = "█".repeat((to - from).max(usize::from(ms > 0.0)));
        out.push_str(&format!(
            "{name:<10}  {:>6.1} ms  {}{bar}\n",
            ms,
            " ".repeat(from)
        ));
        start_ms += ms;
    }
    out.push_str(&format!("{:<10}  {:>6.1} ms\n", "total", t.total_ms));
    out
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
                let _ = writeln!(
                    std::io::stdout(),
                    "applied {:04} {}",
                    applied.version,
                    applied.name
                );
            }
            let _ = writeln!(
                std::io::stdout(),
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
pub async fn prune(env_file: Option<&PathBuf>, retention: store::Retention) -> Exit {
    let db = match database(env_file) {
        Ok(db) => db,
        Err(exit) => return exit,
    };
    let pruned = async {
        let client = store::connect(&db).await?;
        store::prune(&client, retention).await
    };
    match pruned.await {
        Ok(report) => {
            let days: Vec<String> = report.days_dropped.iter().map(|d| d.to_string()).collect();
            let listed = match days.is_empty() {
                true => String::new(),
                false => format!(" ({})", days.join(", ")),
            };
            let (hourly, daily) = (report.hourly_rollups_deleted, report.daily_rollups_deleted);
            let _ = writeln!(
                std::io::stdout(),
                "dropped {} day partition(s) with {} result(s){listed}; \
                 deleted {hourly} hourly and {daily} daily rollup(s)",
                days.len(),
                report.rows_dropped,
            );
            Exit::Ok
        }
        Err(error) => fail(&error),
    }
}

/// `sitewatch report`: a table or one JSON object per site; exit 1 when any SLO is breached.
pub async fn report(env_file: Option<&PathBuf>, args: &cli::ReportArgs) -> Exit {
    // Connecting (TLS, authentication: tens of milliseconds) overlaps loading sites.lua; a
    // broken sites.lua is still reported first, and a database error only if it loads.
    // Two connections: each reads half of the sites, on its own PostgreSQL backend.
    let connecting = cli::database_settings(env_file).map(|db| {
        tokio::spawn(async move { tokio::try_join!(store::connect(&db), store::connect(&db)) })
    });
    let Ok(config) = load_or_report(&args.config.config) else {
        return Exit::ConfigInvalid;
    };
    let now = Utc::now();
    let selected = report::select(&config, &args.sites).and_then(|sites| {
        args.span()
            .period(&sites, now)
            .map(|period| (sites, period))
    });
    let (sites, period) = match selected {
        Ok(selected) => selected,
        Err(error) => return fail(&error),
    };
    let clients = match connecting {
        Err(error) => return fail(&error),
        Ok(task) => match task.await {
            Ok(Ok(clients)) => clients,
            Ok(Err(error)) => return fail(&error),
            Err(_) => return Exit::Failure,
        },
    };
    let (first, second) = &clients;
    let reports = match report::report_on(&[first, second], &sites, &period, now).await {
        Ok(reports) => reports,
        Err(error) => return fail(&error),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        for site in &reports {
            let _ = writeln!(out, "{}", site.json_line());
        }
    } else {
        let _ = write!(out, "{}", report::table(&reports, &period));
    }
    if reports.iter().any(report::SiteReport::breached) {
        Exit::NotMet
    } else {
        Exit::Ok
    }
}

// Belongs in exit.rs with the other mappings.
impl crate::exit::Status for ReportError {
    fn exit(&self) -> Exit {
        if self.is_invalid_request() {
            Exit::ConfigInvalid
        } else {
            Exit::Failure
        }
    }
}

/// `sitewatch rollup rebuild --from T --to T`.
pub async fn rebuild(
    env_file: Option<&PathBuf>,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Exit {
    let db = match database(env_file) {
        Ok(db) => db,
        Err(exit) => return exit,
    };
    let rebuilt = async {
        let mut client = store::connect(&db).await?;
        store::rebuild_rollups(&mut client, from, to).await
    };
    match rebuilt.await {
        Ok(report) => {
            let _ = writeln!(
                std::io::stdout(),
                "rebuilt the rollups of {} day(s) from {} result(s)",
                report.days_rebuilt.len(),
                report.rows
            );
            if !report.days_skipped.is_empty() {
                let days: Vec<String> = report.days_skipped.iter().map(|d| d.to_string()).collect();
                let _ = writeln!(
                    std::io::stdout(),
                    "kept the rollups of {} day(s) without raw rows: {}",
                    days.len(),
                    days.join(", ")
                );
            }
            Exit::Ok
        }
        Err(error) => fail(&error),
    }
}
