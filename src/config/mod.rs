//! Configuration: evaluate `sites.lua` in a Lua sandbox and validate what it declares into typed
//! [`Site`]s — the first step of the data flow; the scheduler, probe and assertions read only
//! the result.
//!
//! `sites.lua` is plain Lua 5.4. It declares sites with `site{}`, shared settings with
//! `defaults{}`, where alerts go with `notifier "name" {}`, when checks are expected to fail
//! with `maintenance{}`, reads secrets with `env()` and loads hook scripts with `script()`; the
//! language is documented in `docs/config.md`. Loading happens in two steps:
//!
//! 1. `eval`: run the file in a `sandbox` (no I/O, instruction/time/memory budgets) and
//!    snapshot each declaration's table as plain Rust values (`raw`).
//! 2. `validate`: merge defaults, parse durations, sizes, URLs, regexes, JSONPath queries, time
//!    zones, read TLS files, resolve notifier and site names — reporting every problem with the
//!    `file:line` of its declaration.
//!
//! `maintenance` answers whether a window is open at an instant (pure). The hook runtime
//! (`crate::hooks`) and the alerting workers reuse the sandbox and the evaluation so they hold
//! the very functions (hooks, notification formatters) this configuration describes.

pub(crate) mod error;
pub(crate) mod eval;
mod files;
#[cfg(test)]
mod load_errors;
pub(crate) mod maintenance;
mod parse;
pub(crate) mod raw;
mod types;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::lua::sandbox::{Sandbox, LOAD_MEMORY_LIMIT, LOAD_WALL_TIME};
use crate::lua::stuck::{self, Milestone, Unfinished, STUCK_GRACE};

pub use error::{ConfigError, ConfigErrorKind, ConfigErrors, ErrorSubject};
pub use types::*;

/// Hex digits of the SHA-256 kept as [`Config::version`]: enough to tell configurations apart.
const VERSION_HEX_LEN: usize = 16;
/// How long validating what the evaluation declared may take (reading TLS files, compiling
/// regexes; bounded by the size of the declarations) before the load is given up.
const VALIDATE_TIME: std::time::Duration = std::time::Duration::from_secs(30);
/// Directory beside `sites.lua` that `script(name)` loads from.
pub const SCRIPTS_DIR: &str = "scripts";

/// Reads, evaluates and validates `path` (`sites.lua`); scripts come from `scripts/` beside it
/// and relative TLS paths are resolved against its directory. Returns every error at once.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = files::read_limited(path, files::MAX_CONFIG_FILE).and_then(|bytes| {
        String::from_utf8(bytes)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not valid UTF-8"))
    });
    let text = text.map_err(|source| {
        ConfigErrors::from(ConfigError::new(
            None,
            None,
            ConfigErrorKind::Read {
                path: path.to_path_buf(),
                source,
            },
        ))
    })?;
    load_str(path, &text, &scripts_dir(path))
}

/// The `scripts/` directory beside `sites.lua` at `config_path`: where `script(name)` loads
/// from, and what a file watcher must watch besides the file itself.
pub fn scripts_dir(config_path: &Path) -> PathBuf {
    match config_path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.join(SCRIPTS_DIR),
        _ => PathBuf::from(SCRIPTS_DIR),
    }
}

/// Evaluates and validates `text` as if read from `path_label` (used in messages and to resolve
/// relative TLS paths), loading scripts from `scripts_dir`.
///
/// Runs on a thread of its own so the documented wall-clock limit holds even when the file is
/// stuck inside one library call, where the instruction hook cannot stop it: such an evaluation
/// is abandoned (see `crate::lua::stuck`) and reported as a limit error at the line it was on.
pub fn load_str(path_label: &Path, text: &str, scripts_dir: &Path) -> Result<Config, ConfigErrors> {
    let source = ConfigSource {
        path: path_label.to_path_buf(),
        text: text.to_string(),
        scripts_dir: scripts_dir.to_path_buf(),
        scripts: Default::default(),
    };
    let main_file = path_label.display().to_string();
    let (cell_tx, cell_rx) = std::sync::mpsc::channel();
    let outcome = stuck::run_isolated(
        "sitewatch-config",
        LOAD_WALL_TIME + STUCK_GRACE,
        VALIDATE_TIME,
        move |evaluated| evaluate_and_validate(source, cell_tx, evaluated),
    );
    let at_start = || Location {
        file: main_file.clone(),
        line: 0,
    };
    let limit = |location: Location, limit: String| {
        Err(ConfigErrors::from(ConfigError::at(
            &location,
            ConfigErrorKind::Limit { limit },
        )))
    };
    match outcome {
        Ok(result) => result,
        Err(Unfinished::TimedOut {
            passed_milestone: true,
        }) => limit(
            at_start(),
            format!(
                "was validated for longer than {}s; it was abandoned",
                VALIDATE_TIME.as_secs()
            ),
        ),
        Err(Unfinished::TimedOut {
            passed_milestone: false,
        }) => {
            let location = cell_rx
                .try_recv()
                .ok()
                .and_then(|cell| cell.lock().clone())
                .unwrap_or_else(at_start);
            limit(
                location,
                format!(
                    "took longer than {}s (stuck inside one library call, such as a Lua pattern \
                     that backtracks; it was abandoned)",
                    LOAD_WALL_TIME.as_secs()
                ),
            )
        }
        Err(Unfinished::TooManyStuck) => limit(
            at_start(),
            format!(
                "refused: {} earlier evaluations are still stuck inside a library call; restart \
                 sitewatch",
                stuck::abandoned()
            ),
        ),
        Err(Unfinished::Spawn(e)) => Err(ConfigErrors::from(ConfigError::new(
            Some(at_start()),
            None,
            ConfigErrorKind::Sandbox {
                message: format!("cannot start the evaluating thread: {e}"),
            },
        ))),
    }
}

/// The evaluation and validation [`load_str`] runs on its own thread; `location_cell` receives
/// where the evaluation is, for a report if it gets stuck.
fn evaluate_and_validate(
    source: ConfigSource,
    location_cell: std::sync::mpsc::Sender<LocationCell>,
    evaluated: &Milestone<'_, Result<Config, ConfigErrors>>,
) -> Result<Config, ConfigErrors> {
    let path_label = source.path.clone();
    let text = source.text.clone();
    let source = Arc::new(source);
    let sandbox = match Sandbox::new(LOAD_MEMORY_LIMIT) {
        Ok(sandbox) => sandbox,
        Err(e) => {
            return Err(ConfigErrors::from(ConfigError::new(
                None,
                None,
                ConfigErrorKind::Sandbox {
                    message: e.to_string(),
                },
            )))
        }
    };
    let _ = location_cell.send(sandbox.budget.location_cell());
    let mut evaluation = eval::evaluate(&sandbox, &source);
    // What hook and formatter workers do next with their own evaluation: a file they could not
    // prepare must not validate.
    if evaluation.errors.is_empty() {
        if let Err(error) = eval::prepare_for_calls(&sandbox) {
            evaluation.errors.push(ConfigError::new(
                Some(Location {
                    file: path_label.display().to_string(),
                    line: 0,
                }),
                None,
                ConfigErrorKind::Prepare {
                    message: crate::lua::errors::lua_error_text(&error, &[]).0,
                },
            ));
        }
    }
    evaluated.reached();
    let (validated, mut errors) = validate::validate(&evaluation, &base_dir(&path_label));
    let mut all = evaluation.errors;
    all.append(&mut errors);
    if !all.is_empty() {
        return Err(ConfigErrors::new(all));
    }
    // Pin the script texts just read: hook workers evaluate these, not the files.
    let scripts = evaluation
        .scripts
        .iter()
        .map(|s| (s.name.clone(), s.text.clone()))
        .collect();
    let source = Arc::new(ConfigSource {
        scripts,
        ..ConfigSource::clone(&source)
    });
    Ok(Config {
        version: version(&text, &evaluation.scripts, &validated.sites),
        sites: validated.sites,
        source,
        notifiers: validated.notifiers,
        maintenance: validated.maintenance,
        warnings: validated.warnings,
    })
}

/// Where a running evaluation is (see `Budget::location_cell`).
type LocationCell = Arc<parking_lot::Mutex<Option<Location>>>;

/// The directory `sites.lua` is in (`.` for a bare file name).
fn base_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// SHA-256 over sites.lua, each loaded script's name and text in load order, and the TLS files
/// the sites read (so a rotated certificate is a new version that a reload applies); each part
/// length-prefixed so the boundaries count.
fn version(text: &str, scripts: &[eval::LoadedScript], sites: &[Arc<Site>]) -> String {
    let mut hasher = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    part(text.as_bytes());
    for script in scripts {
        part(script.name.as_bytes());
        part(script.text.as_bytes());
    }
    for tls in sites.iter().map(|s| &s.tls) {
        for pem in [&tls.ca_pem, &tls.client_cert_pem, &tls.client_key_pem] {
            part(pem.as_deref().unwrap_or_default());
        }
    }
    let mut digest = hex::encode(hasher.finalize());
    digest.truncate(VERSION_HEX_LEN);
    digest
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn load(text: &str) -> Result<Config, ConfigErrors> {
        load_str(
            Path::new("sites.lua"),
            text,
            Path::new("/nonexistent/scripts"),
        )
    }

    #[test]
    fn merges_defaults() {
        let config = load(
            r#"
defaults { interval = "30s", timeout = "5s", retries = 2, expect = { status = "2xx", body = "ok", max_time = "2s" } }
site { name = "a", url = "https://a.example/" }
site { name = "b", url = "https://b.example/", interval = "1m", expect = { status = 204, max_body = "2MiB" } }
"#,
        )
        .unwrap();
        let [a, b] = &config.sites[..] else { panic!() };
        assert_eq!(
            (a.interval, a.timeout, a.retries),
            (Duration::from_secs(30), Duration::from_secs(5), 2)
        );
        assert_eq!(a.expect.status, [StatusMatcher::Class(2)]);
        assert_eq!(a.location.line, 3);
        assert_eq!(b.interval, Duration::from_secs(60));
        assert_eq!(b.expect.status, [StatusMatcher::Exact(204)]);
        assert_eq!(
            b.expect.body.as_ref().map(|r| r.as_str()),
            Some("ok"),
            "expect keys merge one by one"
        );
        assert_eq!(b.expect.max_time, Some(Duration::from_secs(2)));
        assert_eq!(b.body_cap, (2 << 20) + 1, "body_cap grows past max_body");
        assert_eq!(a.body_cap, DEFAULT_BODY_CAP);
    }

    /// `request` and `tls` set on a site replace the default's whole table; only a site that
    /// sets neither inherits them, and inheriting `tls.insecure` is warned about.
    #[test]
    fn request_and_tls_replace_the_defaults_whole() {
        let config = load(
            r#"
defaults { request = { method = "POST", body = "{}", headers = { ["X-Api-Key"] = "k" } }, tls = { insecure = true } }
site { name = "own", url = "https://own.example/", request = { method = "DELETE" }, tls = {} }
site { name = "inherits", url = "https://inherits.example/" }
site { name = "means-it", url = "https://means-it.example/", tls = { insecure = true } }
"#,
        )
        .unwrap();
        let [own, inherits, means_it] = &config.sites[..] else {
            panic!()
        };
        assert_eq!(own.request.method, http::Method::DELETE);
        assert_eq!(
            own.request.body, None,
            "a DELETE does not inherit the POST body"
        );
        assert!(own.request.headers.is_empty(), "nor its headers");
        assert!(!own.tls.insecure, "a site's own tls table verifies");
        assert_eq!(inherits.request.method, http::Method::POST);
        assert_eq!(inherits.request.body.as_deref(), Some(&b"{}"[..]));
        assert!(inherits.tls.insecure && means_it.tls.insecure);
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        let warning = &config.warnings[0];
        assert!(
            warning.starts_with("sites.lua:4: site \"inherits\" inherits tls.insecure"),
            "{warning}"
        );
    }

    #[test]
    fn tls_on_an_http_url_is_a_warning() {
        let config = load(
            r#"
site { name = "plain", url = "http://plain.example/", tls = { insecure = true } }
site { name = "secure", url = "https://secure.example/", tls = { insecure = true } }
site { name = "first", url = "http://first.example/", follow_redirects = false, tls = {} }
site { name = "none", url = "http://none.example/", max_redirects = 0, tls = {} }
"#,
        )
        .unwrap();
        assert_eq!(config.warnings.len(), 3, "{:?}", config.warnings);
        assert!(
            config.warnings[0].starts_with(
                "sites.lua:2: site \"plain\" sets tls, but its URL is http://: tls applies only \
                 to https:// URLs it is redirected to"
            ),
            "{}",
            config.warnings[0]
        );
        for warning in &config.warnings[1..] {
            assert!(
                warning.ends_with("it follows no redirect, so tls never applies"),
                "{warning}"
            );
        }
    }

    #[test]
    fn builtin_defaults() {
        let config = load(r#"site { name = "a", url = "http://a.example/" } site { name = "b", url = "http://b.example/", interval = "6s" }"#).unwrap();
        let [a, b] = &config.sites[..] else { panic!() };
        assert_eq!((a.interval, a.timeout), (DEFAULT_INTERVAL, DEFAULT_TIMEOUT));
        assert!(a.expect.status.is_empty());
        assert_eq!(a.max_redirects, DEFAULT_MAX_REDIRECTS);
        assert_eq!(a.request.method, http::Method::GET);
        assert_eq!(b.timeout, Duration::from_secs(3), "half a short interval");
    }

    #[test]
    fn version_changes_with_text() {
        let a = load(r#"site { name = "a", url = "http://a.example/" }"#).unwrap();
        let b = load(r#"site { name = "a", url = "http://a.example/" } "#).unwrap();
        assert_eq!(a.version.len(), VERSION_HEX_LEN);
        assert_ne!(a.version, b.version);
    }
}
