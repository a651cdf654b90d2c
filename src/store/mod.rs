//! PostgreSQL: the end of the pipeline.
//!
//! ```text
//! consume ──Batch──► store::write_batch ──one transaction──► check_results
//!                                                          + dead_letters
//!                                                          + consumer_offsets
//! ```
//!
//! - [`connect`]: one client over TLS (postgres-native-tls, private CA from settings).
//! - [`migrate`]: embedded, checksummed migrations from `migrations/`.
//! - [`write_batch`] / [`load_offsets`]: the consumer's write path (binary COPY, with an
//!   `ON CONFLICT` fallback) and the stored Kafka positions it seeks to.
//! - [`prune`]: retention: drops day partitions of results, deletes old rollup buckets.
//! - [`insight`]: rollups, site state and state changes, written with the rows.
//!
//! The store never imports probe or config: it knows only [`crate::result::CheckResult`].
//! `docs/storage.md` describes the schema and the exactly-once argument.

pub(crate) mod insight;
mod migrate;
mod prune;
mod rebuild;
mod row;
pub mod running;
mod write;

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, Socket};

use crate::settings::DatabaseSettings;

pub use crate::error::ErrorChain;
pub use insight::{from_row as rollup_from_row, RollupTable, ROLLUP_COLUMNS};
pub use migrate::{migrate, AppliedMigration, MigrateReport, Migration, MIGRATIONS};
pub use prune::{prune, PruneReport, Retention, DEFAULT_HOURLY_ROLLUP_RETENTION};
pub use rebuild::{rebuild_rollups, RebuildReport, MAX_REBUILD_DAYS};
pub use row::{CheckRow, JsonbText, RowError, COLUMNS, COPY_TYPES, MAX_SITE_BYTES};
pub(crate) use write::advance_offsets;
pub use write::{
    load_offsets, write_batch, DeadLetter, OffsetAdvance, PendingRow, WriteBatch, WriteOutcome,
    WritePath, WriteStats,
};

/// Applied when the URL sets no `connect_timeout`: a consumer retrying a dead server must not
/// hang on one connection attempt for the kernel's TCP timeout (minutes).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Applied when the URL sets no `keepalives_idle`: notices a silently vanished server in about a
/// minute instead of the default two hours.
pub const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(30);

/// Everything that can go wrong talking to PostgreSQL, with what sitewatch was doing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid PostgreSQL connection string (SITEWATCH_DATABASE_URL)")]
    Url {
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot read the PostgreSQL CA certificate {path}")]
    CaRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use {path} as the PostgreSQL CA: it holds no valid PEM certificate")]
    CaParse {
        path: PathBuf,
        #[source]
        source: Option<native_tls::Error>,
    },
    #[error("cannot set up TLS for PostgreSQL")]
    TlsSetup {
        #[source]
        source: native_tls::Error,
    },
    #[error(
        "TLS handshake with PostgreSQL at {target} failed: the server certificate was not \
         accepted (trusted: {trusted}); it must be signed by that CA and name the host you \
         connect to"
    )]
    Certificate {
        target: String,
        trusted: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot connect to PostgreSQL at {target}")]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "migration {version:04}_{name} was changed after it was applied: the database recorded \
         checksum {recorded}, this build embeds {embedded}; restore the original file and put \
         the change in a new migration"
    )]
    ChecksumMismatch {
        version: i32,
        name: &'static str,
        recorded: String,
        embedded: String,
    },
    #[error("migration {version:04}_{name} failed")]
    Migration {
        version: i32,
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("refusing to prune with a negative age ({older_than})")]
    Retention { older_than: String },
    #[error("cannot rebuild rollups: {reason}")]
    Rebuild { reason: String },
    #[error(
        "PostgreSQL: {context}: the database has no sitewatch tables yet; run `sitewatch \
         migrate` (or start `consume` without --no-migrate)"
    )]
    NotMigrated {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL: {context}")]
    Query {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl StoreError {
    /// A failed query in `context`; a missing table says how to create the tables.
    pub(crate) fn query(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| {
            if source.code() == Some(&SqlState::UNDEFINED_TABLE) {
                StoreError::NotMigrated { context, source }
            } else {
                StoreError::Query { context, source }
            }
        }
    }

    /// True when retrying the same work later can succeed: the server is down, restarting,
    /// unreachable or overloaded, or the transaction lost a race. False for configuration and
    /// schema faults (bad password, missing table, untrusted certificate), which need a human.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Connect { source, .. }
            | StoreError::Query { source, .. }
            | StoreError::NotMigrated { source, .. }
            | StoreError::Migration { source, .. } => is_transient(source),
            StoreError::Url { .. }
            | StoreError::CaRead { .. }
            | StoreError::CaParse { .. }
            | StoreError::TlsSetup { .. }
            | StoreError::Certificate { .. }
            | StoreError::ChecksumMismatch { .. }
            | StoreError::Retention { .. }
            | StoreError::Rebuild { .. } => false,
        }
    }

    /// The SQLSTATE the server answered with, if it answered.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            StoreError::Connect { source, .. }
            | StoreError::Query { source, .. }
            | StoreError::NotMigrated { source, .. }
            | StoreError::Migration { source, .. }
            | StoreError::Certificate { source, .. }
            | StoreError::Url { source } => source.code(),
            _ => None,
        }
    }
}

/// Classifies a driver error: no SQLSTATE means the connection itself failed (I/O, closed,
/// timeout), which is transient; otherwise the SQLSTATE class decides.
pub(crate) fn is_transient(error: &tokio_postgres::Error) -> bool {
    match error.code() {
        None => !is_tls_failure(error),
        Some(code) => sqlstate_is_transient(code.code()),
    }
}

/// SQLSTATE classes that a retry can outlive: connection exceptions (08), insufficient resources
/// (53), operator intervention such as a server shutting down or starting up (57), system errors
/// (58), transaction rollbacks like serialization failures and deadlocks (40), lock timeouts
/// (55P03), the server ending a session left idle in its transaction (25P03: a consumer
/// that was frozen between two statements of a batch, [`CONSUMER_SESSION_LIMITS`]), and a write
/// refused by a read-only server (25006: after a failover the old primary is a standby; the new
/// connection of the retry reaches the new primary).
pub(crate) fn sqlstate_is_transient(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "53" | "57" | "58" | "40"))
        || code == "55P03"
        || code == "25P03"
        || code == "25006"
}

/// True when PostgreSQL rejected a value rather than failing as a server: data exceptions (22),
/// integrity violations other than a duplicate key (23), and program limits such as an index
/// row too large (54). Retrying the same rows cannot succeed; the offending row has to be
/// quarantined.
pub(crate) fn sqlstate_is_bad_data(code: &str) -> bool {
    code.starts_with("22")
        || code.starts_with("54")
        || (code.starts_with("23") && code != SqlState::UNIQUE_VIOLATION.code())
}

/// The TLS handshake failed on the certificate (untrusted chain, wrong host name, expired):
/// a configuration fault that retrying cannot mend. A handshake cut short (the server restarting
/// or failing over, a proxy dropping the connection) is a TLS error too, but transient: OpenSSL
/// names the certificate only in the first kind.
fn is_tls_failure(error: &tokio_postgres::Error) -> bool {
    error.source().is_some_and(|source| {
        source.downcast_ref::<native_tls::Error>().is_some()
            && crate::error::ErrorChain(source)
                .to_string()
                .to_ascii_lowercase()
                .contains("certificate")
    })
}

/// Server-side limits of a consumer's session. A consumer whose process is frozen (SIGSTOP, a
/// paused VM) or whose connection is orphaned by the network would otherwise hold its
/// transaction — and the consumer_offsets row locks every other member waits for — forever.
/// PostgreSQL aborts a transaction left idle for 15 s and a statement running for 30 s; a wait
/// for a lock gives up after 10 s, and the waiter then ends sessions stalled mid-statement
/// (`write::end_stalled_sessions`: a COPY whose client froze is neither idle nor cancelled by
/// `statement_timeout`). A batch transaction is never idle for long (its statements follow each
/// other within milliseconds) and its client gives up on a write after 30 s.
pub const CONSUMER_SESSION_LIMITS: &str =
    "SET idle_in_transaction_session_timeout = '15s'; SET statement_timeout = '30s'; \
     SET lock_timeout = '10s'";

/// Applies [`CONSUMER_SESSION_LIMITS`] to `client`'s session.
pub async fn limit_consumer_session(client: &Client) -> Result<(), StoreError> {
    client
        .batch_execute(CONSUMER_SESSION_LIMITS)
        .await
        .map_err(StoreError::query("setting the consumer's session limits"))
}

/// Connects to PostgreSQL and spawns the connection task. TLS uses the system roots plus the CA
/// in `settings.ca`. `sslmode` takes libpq's values ([`HostCheck`]): `verify-full` and
/// `require` verify the chain and the host name, `verify-ca` the chain only, `disable` attempts
/// no TLS.
#[tracing::instrument(skip_all)]
pub async fn connect(settings: &DatabaseSettings) -> Result<Client, StoreError> {
    let (url, host_check) = libpq_sslmode(&settings.url);
    let mut config: Config = url.parse().map_err(|source| StoreError::Url { source })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if config.get_keepalives_idle() == Config::new().get_keepalives_idle() {
        config.keepalives_idle(DEFAULT_KEEPALIVES_IDLE);
    }
    if config.get_application_name().is_none() {
        config.application_name("sitewatch");
    }
    let target = describe_target(&config);
    let connected = if config.get_ssl_mode() == SslMode::Disable {
        start(&config, tokio_postgres::NoTls, &target).await
    } else {
        // With a private CA, it is tried alone first: OpenSSL 3 takes tens of milliseconds per
        // process to load the system roots, and a server certified by that CA never needs them.
        // They are added (trust = the CA plus the system roots) only if the chain fails.
        let ca = settings.ca.as_deref();
        let first = tls_connector(ca, host_check, ca.is_none())?;
        match start(&config, first, &target).await {
            Err(error) if ca.is_some() && is_tls_failure(&error) => {
                start(&config, tls_connector(ca, host_check, true)?, &target).await
            }
            other => other,
        }
    };
    connected.map_err(|source| {
        if is_tls_failure(&source) {
            StoreError::Certificate {
                target: target.clone(),
                trusted: match &settings.ca {
                    Some(path) => format!("CA {} and the system roots", path.display()),
                    None => "the system roots only; set SITEWATCH_PG_CA for a private CA".into(),
                },
                source,
            }
        } else {
            StoreError::Connect {
                target: target.clone(),
                source,
            }
        }
    })
}

/// Connects with `tls` and spawns the connection task.
async fn start<T>(config: &Config, tls: T, target: &str) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    let target = target.to_owned();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%target, error = %ErrorChain(&error), "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// `user@host:port/dbname` for messages: everything needed to find the server, no password.
fn describe_target(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let host = match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(index).or(config.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => format!("{host}:5432"),
            }
        })
        .collect();
    format!(
        "{}@{}/{}",
        config.get_user().unwrap_or("?"),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// Whether TLS verification includes the server's host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCheck {
    /// The chain and the host name (`verify-full`, and `require`, stricter than libpq's, which
    /// checks nothing without a root certificate file).
    ChainAndHost,
    /// The chain only (`verify-ca`): the certificate may name another host.
    ChainOnly,
}

/// The connection string with libpq's `sslmode=verify-ca|verify-full` (which tokio-postgres
/// does not parse) spelled `require`, and how much that mode verifies. Every other value is
/// left to tokio-postgres (`disable`, `prefer`, `require`; anything else is refused there).
/// Works on both forms: a `postgres://` URL's query and a `key=value` string's words.
pub fn libpq_sslmode(url: &str) -> (String, HostCheck) {
    let check = |mode: &str| match mode {
        "verify-ca" => Some(HostCheck::ChainOnly),
        "verify-full" => Some(HostCheck::ChainAndHost),
        _ => None,
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if let Ok(mut parsed) = url::Url::parse(url) {
            let mut found = None;
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(key, value)| match (key.as_ref(), check(&value)) {
                    ("sslmode", Some(mode)) => {
                        found = Some(mode);
                        (key.into_owned(), "require".to_owned())
                    }
                    _ => (key.into_owned(), value.into_owned()),
                })
                .collect();
            if let Some(mode) = found {
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
                return (parsed.to_string(), mode);
            }
        }
        return (url.to_owned(), HostCheck::ChainAndHost);
    }
    let mut found = None;
    let words: Vec<String> = url
        .split(' ')
        .map(|word| match word.split_once('=') {
            Some(("sslmode", value)) if check(value).is_some() => {
                found = check(value);
                "sslmode=require".to_owned()
            }
            _ => word.to_owned(),
        })
        .collect();
    match found {
        Some(mode) => (words.join(" "), mode),
        None => (url.to_owned(), HostCheck::ChainAndHost),
    }
}

/// TLS connectors built so far, by what they trust. Building one costs OpenSSL 3 about 45 ms of
/// CPU on the dev machine (native-tls loads the system CA bundle twice, whatever it is told),
/// so a process builds each once: the consumer's reconnects, `serve`'s pool and the report's
/// second connection reuse it. Concurrent first callers wait for the one build. The CA file's
/// modification time is part of the key: a replaced CA is read again at the next connect.
type ConnectorKey = (
    Option<(PathBuf, Option<std::time::SystemTime>)>,
    HostCheck,
    bool,
);
static CONNECTORS: std::sync::Mutex<Vec<(ConnectorKey, postgres_native_tls::MakeTlsConnector)>> =
    std::sync::Mutex::new(Vec::new());

fn tls_connector(
    ca: Option<&Path>,
    host_check: HostCheck,
    system_roots: bool,
) -> Result<postgres_native_tls::MakeTlsConnector, StoreError> {
    let ca_version = ca.map(|path| {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        (path.to_owned(), modified)
    });
    let key: ConnectorKey = (ca_version, host_check, system_roots);
    // A panic elsewhere while holding the lock leaves a usable list.
    let mut built = CONNECTORS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, connector)) = built.iter().find(|(k, _)| *k == key) {
        return Ok(connector.clone());
    }
    let connector = build_tls_connector(ca, host_check, system_roots)?;
    built.push((key, connector.clone()));
    Ok(connector)
}

fn build_tls_connector(
    ca: Option<&Path>,
    host_check: HostCheck,
    system_roots: bool,
) -> Result<postgres_native_tls::MakeTlsConnector, StoreError> {
    let mut builder = native_tls::TlsConnector::builder();
    builder.danger_accept_invalid_hostnames(host_check == HostCheck::ChainOnly);
    builder.disable_built_in_roots(!system_roots);
    if let Some(path) = ca {
        for certificate in read_ca(path)? {
            builder.add_root_certificate(certificate);
        }
    }
    let connector = builder
        .build()
        .map_err(|source| StoreError::TlsSetup { source })?;
    Ok(postgres_native_tls::MakeTlsConnector::new(connector))
}

/// Every certificate of a PEM bundle (native-tls reads only the first one of a buffer).
fn read_ca(path: &Path) -> Result<Vec<native_tls::Certificate>, StoreError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    let pem = std::fs::read_to_string(path).map_err(|source| StoreError::CaRead {
        path: path.to_owned(),
        source,
    })?;
    let certificates = pem
        .match_indices(BEGIN)
        .map(|(start, _)| {
            native_tls::Certificate::from_pem(&pem.as_bytes()[start..]).map_err(|source| {
                StoreError::CaParse {
                    path: path.to_owned(),
                    source: Some(source),
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if certificates.is_empty() {
        return Err(StoreError::CaParse {
            path: path.to_owned(),
            source: None,
        });
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes() {
        let cases = [
            ("08006", true, false),  // connection failure
            ("57P01", true, false),  // admin shutdown (server stopping)
            ("57P03", true, false),  // cannot connect now (server starting)
            ("53300", true, false),  // too many connections
            ("40001", true, false),  // serialization failure
            ("40P01", true, false),  // deadlock
            ("55P03", true, false),  // lock not available
            ("25P03", true, false),  // idle-in-transaction timeout (the client was frozen)
            ("25006", true, false),  // read-only transaction: a standby after a failover
            ("25P02", false, false), // in failed transaction: a bug, not a passing state
            ("23505", false, false), // unique violation: handled by the ON CONFLICT fallback
            ("23514", false, true),  // check violation
            ("23502", false, true),  // not null violation
            ("22021", false, true),  // bad encoding (NUL byte)
            ("22008", false, true),  // timestamp out of range
            ("54000", false, true),  // program limit: index row too large
            ("42P01", false, false), // undefined table: run migrations
            ("28P01", false, false), // bad password
            ("3D000", false, false), // no such database
        ];
        for (code, transient, bad_data) in cases {
            assert_eq!(sqlstate_is_transient(code), transient, "{code} transient");
            assert_eq!(sqlstate_is_bad_data(code), bad_data, "{code} bad data");
        }
    }

    #[test]
    fn libpq_sslmodes_are_spelled_for_tokio_postgres() {
        let cases = [
            (
                "postgres://u:p@db:5432/x?sslmode=verify-full&application_name=a",
                "postgres://u:p@db:5432/x?sslmode=require&application_name=a",
                HostCheck::ChainAndHost,
            ),
            (
                "postgresql://u@db/x?connect_timeout=5&sslmode=verify-ca",
                "postgresql://u@db/x?connect_timeout=5&sslmode=require",
                HostCheck::ChainOnly,
            ),
            (
                "postgres://u@db/x?sslmode=require",
                "postgres://u@db/x?sslmode=require",
                HostCheck::ChainAndHost,
            ),
            (
                "host=db user=u sslmode=verify-ca dbname=x",
                "host=db user=u sslmode=require dbname=x",
                HostCheck::ChainOnly,
            ),
            (
                "host=db sslmode=disable",
                "host=db sslmode=disable",
                HostCheck::ChainAndHost,
            ),
            // A password that merely contains the words is left alone.
            (
                "host=db password=sslmode=verify-ca",
                "host=db password=sslmode=verify-ca",
                HostCheck::ChainAndHost,
            ),
        ];
        for (given, want, check) in cases {
            let (url, host_check) = libpq_sslmode(given);
            assert_eq!(url, want, "{given}");
            assert_eq!(host_check, check, "{given}");
            url.parse::<Config>()
                .unwrap_or_else(|e| panic!("{given} → {url}: {e}"));
        }
    }

    #[test]
    fn target_hides_the_password() {
        let config: Config = "postgres://u:secret@127.0.0.1:15432/db?sslmode=require"
            .parse()
            .unwrap();
        assert_eq!(describe_target(&config), "u@127.0.0.1:15432/db");
        let config: Config = "host=db.example user=u password=secret dbname=x"
            .parse()
            .unwrap();
        assert_eq!(describe_target(&config), "u@db.example:5432/x");
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("sitewatch-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let Err(error) = read_ca(&empty) else {
            panic!("accepted a file without certificates")
        };
        assert!(error.to_string().contains("empty.pem"), "{error}");
        let missing = dir.join("missing.pem");
        let Err(error) = read_ca(&missing) else {
            panic!("accepted a missing file")
        };
        assert!(error.to_string().contains("missing.pem"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
