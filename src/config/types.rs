//! Typed, validated configuration: what `sites.lua` means once it has been checked.
//!
//! Nothing here can be invalid: durations are `Duration`s, URLs are parsed, regexes and JSONPath
//! queries are compiled. The probe, the assertions and the scheduler read only these types.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use regex::Regex;
use serde_json_path::JsonPath;
use url::Url;

/// Default probe interval when neither the site nor `defaults{}` sets one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Default per-attempt timeout (covers DNS through the last body byte).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on body bytes read (after decompression).
pub const DEFAULT_BODY_CAP: u64 = 1024 * 1024;
/// Largest `body_cap` (and so `expect.max_body` + 1): a body is held in memory whole while it
/// is checked, once per check in flight, and hooks see it in a Lua heap of 32 MiB anyway.
pub const MAX_BODY_CAP: u64 = 16 * 1024 * 1024;
/// Default number of redirects followed before the check fails as `redirect_loop`.
pub const DEFAULT_MAX_REDIRECTS: u32 = 10;

/// Where a `site{}` (or `defaults{}`) call was written: the `file:line` of every error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: u32,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One accepted status: an exact code or a class such as `2xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatcher {
    Exact(u16),
    /// `2xx` is `Class(2)`.
    Class(u8),
}

impl StatusMatcher {
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatcher::Exact(code) => code == status,
            StatusMatcher::Class(class) => status / 100 == u16::from(class),
        }
    }
}

impl std::fmt::Display for StatusMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusMatcher::Exact(code) => write!(f, "{code}"),
            StatusMatcher::Class(class) => write!(f, "{class}xx"),
        }
    }
}

/// A JSONPath query and the value it must select.
#[derive(Debug, Clone)]
pub struct JsonExpectation {
    /// The query as written, for messages.
    pub path: String,
    pub query: JsonPath,
    pub equals: serde_json::Value,
}

/// A header regex: the header (lower-case name) must exist and match.
#[derive(Debug, Clone)]
pub struct HeaderExpectation {
    pub name: String,
    pub pattern: Arc<Regex>,
}

/// The built-in expectations of a site, after merging `defaults{}` key by key.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Accepted statuses of the final response; empty means any 2xx.
    pub status: Vec<StatusMatcher>,
    pub body: Option<Arc<Regex>>,
    pub body_not: Option<Arc<Regex>>,
    pub max_time: Option<Duration>,
    pub warn_time: Option<Duration>,
    pub cert_days: Option<u32>,
    pub max_body: Option<u64>,
    pub headers: Vec<HeaderExpectation>,
    pub json: Vec<JsonExpectation>,
}

// Equal expectations check the same thing: a regex by its pattern (every one is built with the
// same limits), a JSONPath query by the text it was compiled from.
impl PartialEq for HeaderExpectation {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.pattern.as_str() == other.pattern.as_str()
    }
}

impl PartialEq for JsonExpectation {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.equals == other.equals
    }
}

impl PartialEq for Expect {
    fn eq(&self, other: &Self) -> bool {
        fn pattern(regex: &Option<Arc<Regex>>) -> Option<&str> {
            regex.as_deref().map(Regex::as_str)
        }
        // Destructured: a field added to `Expect` must be compared here too.
        let Expect {
            status,
            body,
            body_not,
            max_time,
            warn_time,
            cert_days,
            max_body,
            headers,
            json,
        } = self;
        *status == other.status
            && pattern(body) == pattern(&other.body)
            && pattern(body_not) == pattern(&other.body_not)
            && *max_time == other.max_time
            && *warn_time == other.warn_time
            && *cert_days == other.cert_days
            && *max_body == other.max_body
            && *headers == other.headers
            && *json == other.json
    }
}

/// What to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: http::Method,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: Option<bytes::Bytes>,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            method: http::Method::GET,
            headers: Vec::new(),
            body: None,
        }
    }
}

/// Per-site TLS options. PEM contents are read at load time so a missing file is a config error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsOptions {
    /// Extra trusted CA certificates (PEM), added to the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate and key (PEM, key in PKCS#8) for mutual TLS.
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
    /// Skip certificate and hostname verification; results are flagged `tls_insecure`.
    pub insecure: bool,
}

/// One site, fully validated.
#[derive(Debug, Clone)]
pub struct Site {
    pub name: String,
    pub url: Url,
    pub interval: Duration,
    /// Deadline for one attempt, all redirect hops and the body included. Always < interval.
    pub timeout: Duration,
    // Request, TLS options, expectations, SLO and alert rule are shared (`Arc`) by the sites
    // that have the same ones: most sites take them from `defaults{}` or a loop, and each
    // written out per site cost 450 bytes, 43 MiB of 96,000 sites (heaptrack, `dev/bench
    // saturate`). Validation shares them (`validate::SharedParts`).
    pub request: Arc<Request>,
    pub tls: Arc<TlsOptions>,
    pub expect: Arc<Expect>,
    /// Extra attempts before a failing check is declared down.
    pub retries: u32,
    /// Redirects followed at most; one more fails the check as `redirect_loop`. 0 follows
    /// none, like `follow_redirects = false`.
    pub max_redirects: u32,
    /// `false`: the first response is judged as it arrived (a 301 and its `Location`), for
    /// monitors of the redirect itself ("http:// goes to https://"). Default true.
    pub follow_redirects: bool,
    /// Body bytes read before the connection is dropped and the body marked truncated. Always
    /// greater than `expect.max_body`, so a truncated body proves the limit was exceeded.
    pub body_cap: u64,
    /// Hook labels in call order (`script:<name>` or `inline:<n>`); the functions themselves
    /// live in the hook runtime's Lua states, addressed by (site name, index).
    pub hooks: Vec<String>,
    /// The service-level objective `report` and the status page judge this site by.
    pub slo: Option<Arc<Slo>>,
    /// When an incident opens and closes and whom it is sent to; every site has one (the
    /// built-in rule notifies nobody).
    pub alert: Arc<AlertRule>,
    /// Shown by `sitewatch serve` (status page, API, badges); `status_page = false` keeps an
    /// internal site off it entirely — its URLs answer 404 as if it did not exist.
    pub status_page: bool,
    pub location: Location,
}

/// A site's service-level objective: `slo = { target = 99.9, window = "30d" }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    /// Percentage of checks (outside maintenance) that must be up or degraded, in (0, 100].
    pub target_pct: f64,
    /// The rolling period the target is judged over (the default period of `report`).
    pub window: Duration,
    /// Optional latency objective: a percentile of the total time must stay at or below a bound.
    pub latency: Option<LatencyObjective>,
}

/// `latency = { p99 = "800ms" }`: the p99 (or p50, p90, p95, p99.9) of the total time.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyObjective {
    /// The key as written (`p99`), for reports.
    pub name: String,
    /// The quantile in (0, 1), e.g. 0.99.
    pub quantile: f64,
    pub max: Duration,
}

/// SLO window when `slo` sets none.
pub const DEFAULT_SLO_WINDOW: Duration = Duration::from_secs(30 * 86_400);

/// Consecutive down checks that open an incident when `alert.after` is not set: one failed
/// check is often a blip, three in a row rarely are.
pub const DEFAULT_ALERT_AFTER: u32 = 3;
/// Consecutive good checks that resolve an incident when `alert.recover_after` is not set.
pub const DEFAULT_ALERT_RECOVER_AFTER: u32 = 2;

/// `alert = { notify = {"ops"}, after = 3, ... }`: how a site's checks become incidents and
/// notifications. The alerting runtime reads only this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRule {
    /// Notifier names (each declared with `notifier`), in the order written; empty: the
    /// incident is recorded but nobody is told.
    pub notify: Vec<String>,
    /// Consecutive down checks that open an incident (1–1000).
    pub after: u32,
    /// Consecutive up or degraded checks that resolve it (1–1000).
    pub recover_after: u32,
    /// `for`: an incident also opens once the site has been failing this long without a good
    /// check in between, whichever of this and `after` comes first (slow intervals, retries).
    pub for_: Option<Duration>,
    /// Repeat the notification while the incident stays open, this often (at least a minute).
    pub remind: Option<Duration>,
    /// Notify when the incident resolves, not only when it opens.
    pub on_resolved: bool,
    /// Flapping: this many opened incidents within the window hold notifications back.
    pub flap: Option<FlapRule>,
}

impl Default for AlertRule {
    fn default() -> Self {
        AlertRule {
            notify: Vec::new(),
            after: DEFAULT_ALERT_AFTER,
            recover_after: DEFAULT_ALERT_RECOVER_AFTER,
            for_: None,
            remind: None,
            on_resolved: true,
            flap: None,
        }
    }
}

/// `flap = { count = 4, window = "30m" }`: a site whose incidents opened `count` times within
/// `window` is flapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlapRule {
    /// Incidents opened (2–100).
    pub count: u32,
    pub window: Duration,
}

/// `notifier "ops" { type = "webhook", url = ... }`: where alerts are sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Notifier {
    /// Unique; what `alert.notify` refers to (letters, digits, `_`, `.`, `-`, at most 64 bytes).
    pub name: String,
    pub kind: NotifierKind,
    pub location: Location,
}

/// The kinds of notifier, with what each needs to deliver.
#[derive(Debug, Clone, PartialEq)]
pub enum NotifierKind {
    /// A POST of the event to `url`, as JSON unless `format` builds the body.
    Webhook {
        url: Url,
        /// Extra request headers (lower-case names, validated as HTTP names and values).
        headers: Vec<(String, String)>,
        /// The notifier has a `format` function; the alerting workers hold it in their own Lua
        /// states (`eval::formatter_functions`), as hook workers hold hooks.
        has_format: bool,
    },
    /// Alerts posted to Alertmanager's `/api/v2/alerts` under `url`.
    Alertmanager { url: Url },
}

/// Longest notifier or maintenance-window name: it is a label in events, logs and results.
pub const MAX_ALERT_NAME_LEN: usize = 64;
/// Longest maintenance window: anything longer is a decommissioned site, not maintenance.
pub const MAX_MAINTENANCE: Duration = Duration::from_secs(7 * 86_400);

/// `maintenance { name = "db-sunday", ... }`: a period in which checks of some sites are
/// expected to fail. Results probed in it carry its name; SLOs and alerts leave them out.
#[derive(Debug, Clone, PartialEq)]
pub struct MaintenanceWindow {
    pub name: String,
    /// The sites it covers (all declared); empty means every site.
    pub sites: Vec<String>,
    pub schedule: MaintenanceSchedule,
    pub location: Location,
}

/// When a maintenance window is open.
#[derive(Debug, Clone, PartialEq)]
pub enum MaintenanceSchedule {
    /// Every week on `days` at local time `start` in `tz`, for `duration` (at most 7 days).
    Weekly {
        /// Distinct days, Monday first.
        days: Vec<chrono::Weekday>,
        start: chrono::NaiveTime,
        duration: Duration,
        tz: chrono_tz::Tz,
    },
    /// Once, from `start` for `duration`.
    Once {
        start: DateTime<Utc>,
        duration: Duration,
    },
}

/// The sources a configuration was evaluated from; hook workers re-evaluate them to get their
/// own Lua functions.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// Path of sites.lua as given (used in `file:line` messages).
    pub path: PathBuf,
    pub text: String,
    /// Directory `script(name)` loads `<name>.lua` from (`scripts/` beside sites.lua).
    pub scripts_dir: PathBuf,
    /// Texts of the scripts read while validating, by name. A script found here is not read
    /// from disk again, so hook workers evaluate exactly what `Config::version` hashed even if
    /// a file changes on disk meanwhile. Empty before the first evaluation.
    pub scripts: BTreeMap<String, String>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub sites: Vec<Arc<Site>>,
    /// Hex digest of sites.lua and every script it loaded; stamped on every result.
    pub version: String,
    pub source: Arc<ConfigSource>,
    /// Declaration order; `alert.notify` names refer to these.
    pub notifiers: Vec<Notifier>,
    /// Declaration order: when windows overlap, the first declared names the result.
    pub maintenance: Vec<MaintenanceWindow>,
    /// Valid but probably not meant, each with its `file:line` (a site inheriting
    /// `tls.insecure`): printed by `validate` and `check`, logged by `produce`/`run`.
    pub warnings: Vec<String>,
}

impl Site {
    /// A site with every default and no expectations beyond "final status is 2xx", as if
    /// written `site { name = name, url = url }`. Used by tests and benchmarks.
    pub fn with_defaults(name: &str, url: Url) -> Site {
        Site {
            name: name.to_owned(),
            url,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            request: Arc::default(),
            tls: Arc::default(),
            expect: Arc::default(),
            retries: 0,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            follow_redirects: true,
            body_cap: DEFAULT_BODY_CAP,
            hooks: Vec::new(),
            slo: None,
            alert: Arc::default(),
            status_page: true,
            location: Location {
                file: "<code>".into(),
                line: 0,
            },
        }
    }
}
