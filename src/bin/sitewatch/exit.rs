//! The one table of process exit codes, and how each failure maps to one.

use std::io::Write as _;
use std::process::ExitCode;

use sitewatch::alert::AlertError;
use sitewatch::check::CheckError;
use sitewatch::error::ErrorChain;
use sitewatch::produce::ProduceError;
use sitewatch::run::RunError;
use sitewatch::serve::ServeError;

/// What the process tells its caller. README.md ("Exit codes") documents the same table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done; for `check`, no checked site is down (degraded counts as up).
    Ok = 0,
    /// `check`: at least one checked site is down; `report`: an SLO is breached; `init`: a file
    /// it would write exists already (nothing written).
    NotMet = 1,
    /// The configuration is invalid (every error printed on stderr), or names an unknown site.
    ConfigInvalid = 2,
    /// sitewatch's own failure: unreachable broker or database, bad settings, a fatal error.
    Failure = 3,
    /// The command line itself is wrong (unknown flag, value out of range): EX_USAGE, so it is
    /// never mistaken for an invalid configuration.
    Usage = 64,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// A failure of a command: which exit code it means.
pub trait Status: std::error::Error + 'static {
    fn exit(&self) -> Exit {
        Exit::Failure
    }
}

impl Status for ProduceError {
    fn exit(&self) -> Exit {
        match self {
            ProduceError::Config { .. } => Exit::ConfigInvalid,
            _ => Exit::Failure,
        }
    }
}

impl Status for RunError {
    fn exit(&self) -> Exit {
        match self {
            RunError::Produce(error) => error.exit(),
            RunError::Consume(_) => Exit::Failure,
            RunError::Alert(error) => error.exit(),
        }
    }
}

impl Status for AlertError {
    fn exit(&self) -> Exit {
        match self {
            AlertError::Config { .. } => Exit::ConfigInvalid,
            _ => Exit::Failure,
        }
    }
}

impl Status for CheckError {
    fn exit(&self) -> Exit {
        match self {
            // Naming a site the file does not define is a configuration mistake too.
            CheckError::UnknownSite(_) => Exit::ConfigInvalid,
            _ => Exit::Failure,
        }
    }
}

impl Status for ServeError {
    fn exit(&self) -> Exit {
        match self {
            ServeError::Config { .. } => Exit::ConfigInvalid,
            _ => Exit::Failure,
        }
    }
}

impl Status for sitewatch::consume::ConsumeError {}
impl Status for sitewatch::settings::SettingsError {}
impl Status for sitewatch::store::StoreError {}
impl Status for crate::telemetry::MetricsError {}

/// Prints the error with its chain of causes and returns its exit code. With
/// `--log-format json` it is logged instead, so that stderr stays all JSON lines.
pub fn fail(error: &dyn Status) -> Exit {
    let exit = error.exit();
    if crate::telemetry::JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::error!(error = %ErrorChain(error), exit_code = exit as u8, "sitewatch stopped");
    } else {
        let _ = writeln!(std::io::stderr(), "sitewatch: {}", ErrorChain(error));
    }
    exit
}

/// `Ok(())` is [`Exit::Ok`]; an error is printed and mapped by [`fail`].
pub fn finish<E: Status>(result: Result<(), E>) -> Exit {
    match result {
        Ok(()) => Exit::Ok,
        Err(error) => fail(&error),
    }
}
