//! Configuration errors: every problem found while evaluating and validating `sites.lua`, each
//! tied to the `file:line` of the `site{}` (or `defaults{}`, `notifier`, `maintenance{}`,
//! `env()`, `script()`) call it is about, so one run of `sitewatch validate` shows them all.

use std::fmt;
use std::path::PathBuf;

use super::types::Location;

/// Most problems one report lists; an evaluation stops once it has found this many (a loop
/// calling `env()` millions of times would otherwise pile them up), and validation stops
/// recording.
pub(crate) const MAX_ERRORS: usize = 1000;
/// Longest value (a name, a URL, a key as written) quoted in a message, in characters; longer
/// ones are cut with `...`, so a 1 MiB site name makes a short line, not a 1 MiB one.
pub(crate) const MAX_QUOTED_CHARS: usize = 100;
/// Longest message text taken from elsewhere (a Lua error, a library's reason), in characters.
pub(crate) const MAX_MESSAGE_CHARS: usize = 500;

/// What is wrong. Messages are one line; [`ConfigError`] adds `file:line: site "name": ` (or
/// `notifier "name": `, `maintenance "name": `).
#[derive(Debug, thiserror::Error)]
pub enum ConfigErrorKind {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("syntax error: {message}")]
    Syntax { message: String },
    /// A Lua error raised while evaluating (calling a nil value, `error("...")`, a bad argument
    /// to a helper).
    #[error("{message}")]
    Lua { message: String },
    /// Evaluation broke the instruction budget, the wall-clock limit or the memory limit.
    #[error("evaluation {limit}")]
    Limit { limit: String },
    #[error("{function} expects a table, got {found}")]
    NotATable {
        function: &'static str,
        found: String,
    },
    #[error("defaults{{}} may appear only once (first at {first})")]
    DefaultsTwice { first: Location },
    #[error("defaults{{}} must come before the first site{{}} (at {first_site})")]
    DefaultsAfterSite { first_site: Location },
    #[error("unknown key {key} in {table} (expected one of: {allowed})")]
    UnknownKey {
        table: &'static str,
        key: String,
        allowed: String,
    },
    #[error("missing required key \"{key}\"")]
    Missing { key: &'static str },
    #[error("{key} must be {expected}, got {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{key} = {value} is not a valid duration: {reason}")]
    Duration {
        key: String,
        value: String,
        reason: String,
    },
    #[error("{key} = {value} is not a valid size: {reason}")]
    Size {
        key: String,
        value: String,
        reason: String,
    },
    #[error("{key} = {value} is out of range: {reason}")]
    Number {
        key: String,
        value: String,
        reason: String,
    },
    #[error("url {value:?} is invalid: {reason}")]
    Url { value: String, reason: String },
    #[error("{key} = {value} is not a valid status: {reason}")]
    Status {
        key: String,
        value: String,
        reason: String,
    },
    #[error("{key}: invalid regex {pattern:?}: {message}")]
    Regex {
        key: String,
        pattern: String,
        /// The regex crate's message, reduced to one line.
        message: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("expect.json: invalid JSONPath {query:?}: {message}")]
    JsonPath { query: String, message: String },
    #[error("{key}: {reason}")]
    JsonValue { key: String, reason: String },
    #[error("request.method {value:?} is not a valid HTTP method")]
    Method { value: String },
    #[error("{key}: {name:?} is not a valid header name")]
    HeaderName { key: &'static str, name: String },
    #[error(
        "{key}: the value of header {name:?} is not a valid header value (control characters?)"
    )]
    HeaderValue { key: &'static str, name: String },
    #[error("site name {name:?} is invalid: {reason}")]
    Name { name: String, reason: String },
    #[error("duplicate site name (first defined at {first})")]
    Duplicate { first: Location },
    /// A notifier or maintenance window name that breaks the naming rules.
    #[error("{what} name {name:?} is invalid: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: String,
    },
    /// A second notifier or maintenance window with a name already used.
    #[error("duplicate {what} name (first defined at {first})")]
    DuplicateName { what: &'static str, first: Location },
    /// `notifier(name)` whose returned function got something other than a table.
    #[error("notifier \"name\" {{ ... }} expects a table, got {found}")]
    NotifierBody { found: String },
    /// `notifier "ops"` on its own: the settings table was never passed.
    #[error("no settings given: write notifier \"name\" {{ type = \"webhook\", url = \"...\" }}")]
    NotifierWithoutBody,
    #[error("type = {value} is not a notifier type (expected \"webhook\" or \"alertmanager\")")]
    NotifierType { value: String },
    /// A webhook-only key on another kind of notifier.
    #[error("{key} applies to webhook notifiers only, not {kind}")]
    WebhookOnly {
        key: &'static str,
        kind: &'static str,
    },
    /// `alert.notify` names a notifier no `notifier` declares.
    #[error("alert.notify: no notifier named {name:?} ({known})")]
    UnknownNotifier {
        name: String,
        /// `declared: "am", "ops"`, or that none is.
        known: String,
    },
    #[error("{key} lists {value:?} twice")]
    Repeated { key: String, value: String },
    /// A maintenance window names a site no `site{}` declares.
    #[error("sites: no site named {name:?}")]
    UnknownSite { name: String },
    #[error("every = {value} is not valid: {reason}")]
    Weekday { value: String, reason: String },
    #[error("start = {value} is not a valid time of day: expected \"HH:MM\" from 00:00 to 23:59, e.g. \"02:00\"")]
    TimeOfDay { value: String },
    #[error("tz = {value} is not an IANA time zone name (such as \"Europe/Berlin\" or \"UTC\")")]
    TimeZone { value: String },
    #[error("at = {value} is not an RFC 3339 timestamp ({reason}), e.g. \"2026-12-24T18:00:00Z\"")]
    Timestamp { value: String, reason: String },
    /// A weekly key (`every`, `start`, `tz`) beside `at`.
    #[error("{key} cannot be combined with at: a window is either weekly (every, start, tz) or one-off (at)")]
    ScheduleConflict { key: &'static str },
    #[error("timeout ({timeout}) must be shorter than interval ({interval})")]
    TimeoutNotBelowInterval { timeout: String, interval: String },
    #[error("expect.warn_time ({warn_time}) must be shorter than expect.max_time ({max_time})")]
    WarnNotBelowMax { warn_time: String, max_time: String },
    #[error("tls.{key}: cannot read {path}: {source}")]
    TlsFile {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tls.{key}: {path} does not contain a PEM block (-----BEGIN ...)")]
    TlsNotPem { key: &'static str, path: PathBuf },
    #[error("tls.client_cert and tls.client_key must be set together")]
    TlsPair,
    #[error("tls: {reason}")]
    TlsIdentity { reason: String },
    #[error("environment variable {name:?} is not set")]
    EnvUnset { name: String },
    /// `env()` of a variable sites.lua may not read (see `eval::env_denied`).
    #[error("environment variable {name:?} is not available to sites.lua: SITEWATCH_*, PG* and DATABASE_URL hold {owner} settings and secrets (use another name)")]
    EnvDenied { name: String, owner: &'static str },
    #[error("script name {name:?} is invalid: use letters, digits, '_' and '-' only")]
    ScriptName { name: String },
    #[error("script {name:?}: cannot read {path}: {source}")]
    ScriptMissing {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("script {name:?} must return a function, got {found}")]
    ScriptNotFunction { name: String, found: String },
    #[error("script {name:?} failed: {message}")]
    ScriptFailed { name: String, message: String },
    /// The Lua state itself could not be set up (a bug or an exhausted machine).
    #[error("cannot set up the Lua sandbox: {message}")]
    Sandbox { message: String },
    /// The evaluated state could not be made ready for hook calls (what every hook worker does
    /// after evaluating).
    #[error("cannot prepare the configuration for hooks: {message}")]
    Prepare { message: String },
    /// The list was cut at [`MAX_ERRORS`].
    #[error("more problems were found than the {shown} shown")]
    TooMany { shown: usize },
}

/// Cuts `text` to at most `max` characters, marking the cut with `...`.
pub(crate) fn cut(text: &mut String, max: usize) {
    if let Some((at, _)) = text.char_indices().nth(max) {
        text.truncate(at);
        text.push_str("...");
    }
}

/// [`cut`] for a path written in the configuration.
fn cut_path(path: &mut PathBuf) {
    let mut text = path.to_string_lossy().into_owned();
    if text.chars().nth(MAX_MESSAGE_CHARS).is_some() {
        cut(&mut text, MAX_MESSAGE_CHARS);
        *path = PathBuf::from(text);
    }
}

impl ConfigErrorKind {
    /// The kind with every text it quotes cut to length (see [`MAX_QUOTED_CHARS`]).
    fn bounded(mut self) -> Self {
        use ConfigErrorKind as K;
        let (quoted, messages): (Vec<&mut String>, Vec<&mut String>) = match &mut self {
            K::Syntax { message }
            | K::Lua { message }
            | K::Sandbox { message }
            | K::Prepare { message } => (vec![], vec![message]),
            K::Limit { limit } => (vec![], vec![limit]),
            K::NotATable { found, .. }
            | K::NotifierBody { found }
            | K::ScriptNotFunction { found, .. } => (vec![found], vec![]),
            K::UnknownKey { key, .. } => (vec![key], vec![]),
            K::WrongType { key, found, .. } => (vec![key, found], vec![]),
            K::Duration { key, value, reason }
            | K::Size { key, value, reason }
            | K::Number { key, value, reason }
            | K::Status { key, value, reason } => (vec![key, value], vec![reason]),
            K::Url { value, reason } => (vec![value], vec![reason]),
            K::Regex {
                key,
                pattern,
                message,
                ..
            } => (vec![key, pattern], vec![message]),
            K::JsonPath { query, message } => (vec![query], vec![message]),
            K::JsonValue { key, reason } => (vec![key], vec![reason]),
            K::Method { value } | K::NotifierType { value } | K::TimeOfDay { value } => {
                (vec![value], vec![])
            }
            K::TimeZone { value } => (vec![value], vec![]),
            K::HeaderName { name, .. } | K::HeaderValue { name, .. } => (vec![name], vec![]),
            K::Name { name, reason } | K::InvalidName { name, reason, .. } => {
                (vec![name], vec![reason])
            }
            K::UnknownNotifier { name, known } => (vec![name], vec![known]),
            K::Repeated { key, value } => (vec![key, value], vec![]),
            K::UnknownSite { name } | K::EnvUnset { name } | K::ScriptName { name } => {
                (vec![name], vec![])
            }
            K::EnvDenied { name, .. } => (vec![name], vec![]),
            K::ScriptMissing { name, path, .. } => {
                cut_path(path);
                (vec![name], vec![])
            }
            K::ScriptFailed { name, message } => (vec![name], vec![message]),
            K::TlsIdentity { reason } => (vec![], vec![reason]),
            K::Weekday { value, reason } | K::Timestamp { value, reason } => {
                (vec![value], vec![reason])
            }
            K::TlsFile { path, .. } | K::TlsNotPem { path, .. } => {
                cut_path(path);
                (vec![], vec![])
            }
            K::TimeoutNotBelowInterval { .. }
            | K::WarnNotBelowMax { .. }
            | K::Read { .. }
            | K::DefaultsTwice { .. }
            | K::DefaultsAfterSite { .. }
            | K::Missing { .. }
            | K::DuplicateName { .. }
            | K::Duplicate { .. }
            | K::NotifierWithoutBody
            | K::WebhookOnly { .. }
            | K::ScheduleConflict { .. }
            | K::TlsPair
            | K::TooMany { .. } => (vec![], vec![]),
        };
        for text in quoted {
            cut(text, MAX_QUOTED_CHARS);
        }
        for text in messages {
            cut(text, MAX_MESSAGE_CHARS);
        }
        self
    }
}

/// One problem, with where it was written and which site it concerns.
#[derive(Debug)]
pub struct ConfigError {
    /// The `site{}`/`defaults{}`/helper call (or the Lua error position) the problem is about;
    /// `None` when the file could not even be read.
    pub location: Option<Location>,
    /// What the problem is in (a site, notifier or maintenance window), when its name is
    /// known, for messages.
    pub subject: Option<ErrorSubject>,
    pub kind: ConfigErrorKind,
}

/// The named declaration a problem is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorSubject {
    Site(String),
    Notifier(String),
    Maintenance(String),
}

impl fmt::Display for ErrorSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorSubject::Site(name) => write!(f, "site {name:?}"),
            ErrorSubject::Notifier(name) => write!(f, "notifier {name:?}"),
            ErrorSubject::Maintenance(name) => write!(f, "maintenance {name:?}"),
        }
    }
}

impl ConfigError {
    pub(crate) fn new(
        location: Option<Location>,
        subject: Option<ErrorSubject>,
        kind: ConfigErrorKind,
    ) -> Self {
        let subject = subject.map(|subject| match subject {
            ErrorSubject::Site(mut name) => {
                cut(&mut name, MAX_QUOTED_CHARS);
                ErrorSubject::Site(name)
            }
            ErrorSubject::Notifier(mut name) => {
                cut(&mut name, MAX_QUOTED_CHARS);
                ErrorSubject::Notifier(name)
            }
            ErrorSubject::Maintenance(mut name) => {
                cut(&mut name, MAX_QUOTED_CHARS);
                ErrorSubject::Maintenance(name)
            }
        });
        ConfigError {
            location,
            subject,
            kind: kind.bounded(),
        }
    }

    pub(crate) fn at(location: &Location, kind: ConfigErrorKind) -> Self {
        ConfigError::new(Some(location.clone()), None, kind)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(location) if location.line > 0 => write!(f, "{location}: ")?,
            Some(location) => write!(f, "{}: ", location.file)?,
            None => {}
        }
        if let Some(subject) = &self.subject {
            write!(f, "{subject}: ")?;
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

/// Every problem found in one configuration, in file order. Displays one per line.
#[derive(Debug)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// Sorts by file and line so the report reads top to bottom; errors without a location
    /// (an unreadable file) come first.
    pub(crate) fn new(mut errors: Vec<ConfigError>) -> Self {
        errors.sort_by(|a, b| {
            let key = |e: &ConfigError| e.location.as_ref().map(|l| (l.file.clone(), l.line));
            key(a).cmp(&key(b))
        });
        if errors.len() > MAX_ERRORS {
            // What stopped the evaluation (a Lua error, a broken limit) stays in the report.
            let stopped = errors[MAX_ERRORS - 1..].iter().position(|e| {
                matches!(
                    e.kind,
                    ConfigErrorKind::Lua { .. }
                        | ConfigErrorKind::Limit { .. }
                        | ConfigErrorKind::Syntax { .. }
                )
            });
            let stopped = stopped.map(|i| errors.swap_remove(MAX_ERRORS - 1 + i));
            errors.truncate(MAX_ERRORS - 1);
            errors.extend(stopped);
            errors.push(ConfigError::new(
                None,
                None,
                ConfigErrorKind::TooMany { shown: MAX_ERRORS },
            ));
        }
        ConfigErrors { errors }
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }

    pub fn as_slice(&self) -> &[ConfigError] {
        &self.errors
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors {
            errors: vec![error],
        }
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reduces a multi-line library message (the regex crate draws a caret diagram) to one line.
pub(crate) fn one_line(message: &str) -> String {
    // regex: "regex parse error:\n    (\n    ^\nerror: unclosed group"
    if let Some(last) = message
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
    {
        return last.to_string();
    }
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(line: u32) -> Location {
        Location {
            file: "sites.lua".into(),
            line,
        }
    }

    #[test]
    fn display_prefixes() {
        let cases = [
            (
                ConfigError::new(
                    Some(loc(3)),
                    Some(ErrorSubject::Site("api".into())),
                    ConfigErrorKind::Missing { key: "url" },
                ),
                r#"sites.lua:3: site "api": missing required key "url""#,
            ),
            (
                ConfigError::new(
                    Some(loc(4)),
                    Some(ErrorSubject::Notifier("ops".into())),
                    ConfigErrorKind::Missing { key: "type" },
                ),
                r#"sites.lua:4: notifier "ops": missing required key "type""#,
            ),
            (
                ConfigError::new(
                    Some(loc(7)),
                    None,
                    ConfigErrorKind::EnvUnset {
                        name: "TOKEN".into(),
                    },
                ),
                r#"sites.lua:7: environment variable "TOKEN" is not set"#,
            ),
            (
                ConfigError::new(
                    Some(loc(0)),
                    None,
                    ConfigErrorKind::Lua {
                        message: "boom".into(),
                    },
                ),
                "sites.lua: boom",
            ),
        ];
        for (error, want) in cases {
            assert_eq!(error.to_string(), want);
        }
    }

    #[test]
    fn errors_sort_by_line_one_per_line() {
        let errors = ConfigErrors::new(vec![
            ConfigError::new(Some(loc(9)), None, ConfigErrorKind::Missing { key: "url" }),
            ConfigError::new(Some(loc(2)), None, ConfigErrorKind::Missing { key: "name" }),
        ]);
        assert_eq!(
            errors.to_string(),
            "sites.lua:2: missing required key \"name\"\nsites.lua:9: missing required key \"url\""
        );
    }

    #[test]
    fn one_line_messages() {
        let cases = [
            (
                "regex parse error:\n    (\n    ^\nerror: unclosed group",
                "unclosed group",
            ),
            ("plain message", "plain message"),
            ("two\n  lines", "two lines"),
        ];
        for (input, want) in cases {
            assert_eq!(one_line(input), want, "{input:?}");
        }
    }
}
