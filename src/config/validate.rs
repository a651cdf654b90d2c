//! Validation: from the raw declarations to typed [`Site`]s, [`Notifier`]s and
//! [`MaintenanceWindow`]s.
//!
//! Pure apart from reading TLS files: it walks the snapshots taken during evaluation, merges
//! `defaults{}` into each site (site keys win; `expect` keys win one by one), and reports every
//! problem with the declaration's `file:line`. A problem in a `defaults{}` value is reported once,
//! at the `defaults{}` line, not again for every site that inherits it. Notifiers and maintenance
//! windows may be declared anywhere in the file: names they refer to (`alert.notify`, `sites`)
//! are checked against every declaration once the file has run.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc, Weekday};
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use serde_json_path::JsonPath;
use unicode_normalization::UnicodeNormalization;
use url::Url;

use super::error::{one_line, ConfigError, ConfigErrorKind as Kind, ErrorSubject, MAX_ERRORS};
use super::eval::{Declaration, Evaluation, NotifierBody, NotifierDeclaration};
use super::parse::{
    format_duration, parse_duration, parse_size, parse_time_of_day, parse_weekday, status_class,
    status_code,
};
use super::raw::{Raw, RawKey, RawTable};
use super::types::{
    AlertRule, Expect, FlapRule, HeaderExpectation, JsonExpectation, LatencyObjective, Location,
    MaintenanceSchedule, MaintenanceWindow, Notifier, NotifierKind, Request, Site, Slo,
    StatusMatcher, TlsOptions, DEFAULT_BODY_CAP, DEFAULT_INTERVAL, DEFAULT_MAX_REDIRECTS,
    DEFAULT_SLO_WINDOW, DEFAULT_TIMEOUT, MAX_ALERT_NAME_LEN, MAX_BODY_CAP, MAX_MAINTENANCE,
};

/// Most retries a site may ask for; each one can take a whole timeout.
pub(crate) const MAX_RETRIES: i64 = 10;
/// Most redirects a site may allow.
pub(crate) const MAX_REDIRECTS_LIMIT: i64 = 100;
/// Longest URL: it travels in every result.
pub(crate) const MAX_URL_LEN: usize = 4096;
/// Longest site name: it is a Kafka key, a label in logs and a database column.
pub(crate) const MAX_SITE_NAME_LEN: usize = 128;
/// Largest `alert.after`/`alert.recover_after`: beyond a thousand checks a streak means nothing.
pub(crate) const MAX_ALERT_STREAK: i64 = 1_000;
/// Shortest `alert.remind`: a reminder more often than this is noise (and would fire on every
/// check of a fast site), not a reminder.
pub(crate) const MIN_REMIND: Duration = Duration::from_secs(10);
/// Bounds of `alert.flap.count`: one incident is not flapping; past a hundred nobody is reading.
pub(crate) const MIN_FLAP_COUNT: i64 = 2;
pub(crate) const MAX_FLAP_COUNT: i64 = 100;

const SITE_KEYS: &[&str] = &[
    "name",
    "url",
    "interval",
    "timeout",
    "expect",
    "request",
    "tls",
    "retries",
    "max_redirects",
    "follow_redirects",
    "body_cap",
    "hooks",
    "slo",
    "alert",
    "status_page",
];
/// `defaults{}` takes every site key except the site's identity.
const DEFAULTS_KEYS: &[&str] = &[
    "interval",
    "timeout",
    "expect",
    "request",
    "tls",
    "retries",
    "max_redirects",
    "follow_redirects",
    "body_cap",
    "hooks",
    "slo",
    "alert",
    "status_page",
];
const EXPECT_KEYS: &[&str] = &[
    "status",
    "body",
    "body_not",
    "max_time",
    "warn_time",
    "cert_days",
    "max_body",
    "headers",
    "json",
];
const REQUEST_KEYS: &[&str] = &["method", "headers", "body"];
const TLS_KEYS: &[&str] = &["ca", "client_cert", "client_key", "insecure"];
const SLO_KEYS: &[&str] = &["target", "window", "latency"];
const ALERT_KEYS: &[&str] = &[
    "notify",
    "after",
    "recover_after",
    "for",
    "remind",
    "on_resolved",
    "flap",
];
const FLAP_KEYS: &[&str] = &["count", "window"];
const NOTIFIER_KEYS: &[&str] = &["type", "url", "headers", "format"];
const MAINTENANCE_KEYS: &[&str] = &["name", "sites", "every", "start", "duration", "tz", "at"];
/// Percentiles a latency objective may name, with their quantile.
const LATENCY_KEYS: &[(&str, f64)] = &[
    ("p50", 0.5),
    ("p90", 0.9),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p99.9", 0.999),
];

/// Everything a valid configuration declares, in declaration order.
#[derive(Debug, Default)]
pub(crate) struct Validated {
    pub(crate) sites: Vec<Arc<Site>>,
    pub(crate) notifiers: Vec<Notifier>,
    pub(crate) maintenance: Vec<MaintenanceWindow>,
    /// What is valid but probably not meant (`Config::warnings`).
    pub(crate) warnings: Vec<String>,
}

/// What validating one declaration may look up beyond its own table.
struct Context<'a> {
    /// Resolves relative TLS paths.
    base_dir: &'a Path,
    /// Names of every `notifier` declared (valid or not, so a broken notifier is reported once,
    /// not again at each site naming it), sorted.
    notifiers: Vec<&'a str>,
}

/// Validates every declaration. Returns what is valid and every error found.
pub(crate) fn validate(eval: &Evaluation, base_dir: &Path) -> (Validated, Vec<ConfigError>) {
    let _compiled = CompiledRegexes::start();
    let mut errors = Vec::new();
    let mut notifier_names: Vec<&str> = eval
        .notifiers
        .iter()
        .filter_map(|d| d.name.as_str())
        .collect();
    notifier_names.sort_unstable();
    notifier_names.dedup();
    let ctx = Context {
        base_dir,
        notifiers: notifier_names,
    };
    let notifiers = notifiers(&eval.notifiers, &mut errors);
    let mut check_defaults = |decl: &Declaration| {
        let mut rep = Reporter {
            errors: &mut errors,
            location: &decl.location,
            subject: None,
        };
        check_keys(&decl.table, DEFAULTS_KEYS, "defaults", &mut rep);
        let layers = Layers {
            own: Some(&decl.table),
            inherited: None,
        };
        settings(layers, &ctx, &mut rep);
    };
    eval.defaults.iter().for_each(&mut check_defaults);
    // Not applied, but their mistakes are mistakes too.
    eval.refused_defaults.iter().for_each(&mut check_defaults);
    let defaults = eval.defaults.as_ref().map(|decl| &decl.table);

    let mut sites = Vec::with_capacity(eval.sites.len());
    let mut shared = SharedParts::default();
    let mut warnings = Vec::new();
    let mut seen: HashMap<String, Location> = HashMap::new();
    for decl in &eval.sites {
        let before = errors.len();
        let name = decl
            .table
            .get("name")
            .and_then(Raw::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        let mut rep = Reporter {
            errors: &mut errors,
            location: &decl.location,
            subject: name.clone().map(ErrorSubject::Site),
        };
        // Twins that only differ in their Unicode form (é as one code point or two) are one
        // name.
        if let Some(name) = name.as_deref().map(canonical_site_name) {
            match seen.get(&name) {
                Some(first) => rep.push(Kind::Duplicate {
                    first: first.clone(),
                }),
                None => {
                    seen.insert(name.clone(), decl.location.clone());
                }
            }
        }
        let site = site(decl, defaults, &ctx, &mut rep);
        if errors.len() == before {
            if let Some(site) = &site {
                // Turning verification off is a decision about one site, not a default that
                // silently reaches every site added later.
                if site.url.scheme() == "http" && decl.table.get("tls").is_some() {
                    let applies = if site.follow_redirects && site.max_redirects > 0 {
                        "tls applies only to https:// URLs it is redirected to"
                    } else {
                        "it follows no redirect, so tls never applies"
                    };
                    warnings.push(format!(
                        "{}: site {:?} sets tls, but its URL is http://: {applies}",
                        decl.location, site.name
                    ));
                }
                if site.tls.insecure && decl.table.get("tls").is_none() {
                    warnings.push(format!(
                        "{}: site {:?} inherits tls.insecure = true from defaults{{}}: its \
                         certificate is not verified (write tls = {{ insecure = true }} in the \
                         site to mean it)",
                        decl.location, site.name
                    ));
                }
            }
            sites.extend(site.map(|site| Arc::new(shared.share(site))));
        }
    }
    // Every declared name counts, valid site or not: one broken site is one error.
    let site_names: HashSet<String> = eval
        .sites
        .iter()
        .filter_map(|d| d.table.get("name").and_then(Raw::as_str))
        .map(canonical_site_name)
        .collect();
    let maintenance = maintenance_windows(&eval.maintenance, &site_names, &mut errors);
    let validated = Validated {
        sites,
        notifiers,
        maintenance,
        warnings,
    };
    (validated, errors)
}

/// Adds the declaration's location and name to each problem.
struct Reporter<'a> {
    errors: &'a mut Vec<ConfigError>,
    location: &'a Location,
    subject: Option<ErrorSubject>,
}

impl Reporter<'_> {
    fn push(&mut self, kind: Kind) {
        // One past the cap is kept so the report says it was cut (see `ConfigErrors::new`).
        if self.errors.len() > MAX_ERRORS {
            return;
        }
        self.errors.push(ConfigError::new(
            Some(self.location.clone()),
            self.subject.clone(),
            kind,
        ));
    }

    /// Reports a problem unless it is about a value inherited from `defaults{}` (reported there).
    fn push_if(&mut self, origin: Origin, kind: Kind) {
        if origin != Origin::Defaults {
            self.push(kind);
        }
    }
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The table being validated (the site, or `defaults{}` when validating it).
    Own,
    /// Inherited from `defaults{}`.
    Defaults,
    /// Not written anywhere: a built-in default.
    Builtin,
}

/// A site table over the defaults: lookups try the site first.
#[derive(Clone, Copy)]
struct Layers<'a> {
    own: Option<&'a RawTable>,
    inherited: Option<&'a RawTable>,
}

impl<'a> Layers<'a> {
    fn get(&self, key: &str) -> Option<(&'a Raw, Origin)> {
        self.own
            .and_then(|t| t.get(key))
            .map(|v| (v, Origin::Own))
            .or_else(|| {
                self.inherited
                    .and_then(|t| t.get(key))
                    .map(|v| (v, Origin::Defaults))
            })
    }

    /// The layers of a table a site replaces whole (`request`, `tls`): the site's own when it
    /// sets the key (even to something that is not a table, which is reported as such), else
    /// the default's.
    fn whole(&self, key: &str) -> Layers<'a> {
        let nested = self.nested(key);
        if self.own.is_some_and(|t| t.get(key).is_some()) {
            Layers {
                own: nested.own,
                inherited: None,
            }
        } else {
            nested
        }
    }

    /// The layers of a nested table merged key by key (`expect`).
    fn nested(&self, key: &str) -> Layers<'a> {
        let table = |t: Option<&'a RawTable>| match t.and_then(|t| t.get(key)) {
            Some(Raw::Table(t)) => Some(t),
            _ => None,
        };
        Layers {
            own: table(self.own),
            inherited: table(self.inherited),
        }
    }

    /// Parses `key` if present; problems with inherited values are left to `defaults{}`.
    fn field<T>(
        &self,
        key: &str,
        rep: &mut Reporter<'_>,
        parse: impl FnOnce(&'a Raw) -> Result<T, Kind>,
    ) -> Option<(T, Origin)> {
        let (raw, origin) = self.get(key)?;
        match parse(raw) {
            Ok(value) => Some((value, origin)),
            Err(kind) => {
                rep.push_if(origin, kind);
                None
            }
        }
    }
}

/// `slo = { target = 99.9, window = "30d", latency = { p99 = "800ms" } }`; every problem is
/// reported, and any problem drops the objective.
fn slo(raw: &Raw, origin: Origin, rep: &mut Reporter<'_>) -> Option<Slo> {
    let Raw::Table(table) = raw else {
        rep.push_if(origin, wrong_type("slo", "a table", raw));
        return None;
    };
    if origin != Origin::Defaults {
        check_keys(table, SLO_KEYS, "slo", rep);
    }
    let mut ok = true;
    let mut report = |kind: Kind| {
        ok = false;
        rep.push_if(origin, kind);
    };
    let target = match table.get("target") {
        None => {
            report(Kind::Missing { key: "slo.target" });
            None
        }
        Some(raw @ (Raw::Int(_) | Raw::Num(_))) => match raw.as_f64() {
            Some(t) if t > 0.0 && t <= 100.0 => Some(t),
            _ => {
                report(Kind::Number {
                    key: "slo.target".into(),
                    value: raw.show(),
                    reason: "must be a percentage above 0 and at most 100, e.g. 99.9".into(),
                });
                None
            }
        },
        Some(other) => {
            report(wrong_type("slo.target", "a number", other));
            None
        }
    };
    let window = match table.get("window") {
        None => Some(DEFAULT_SLO_WINDOW),
        Some(raw) => duration("slo.window", raw).map_err(&mut report).ok(),
    };
    let latency = match table.get("latency") {
        None => None,
        Some(Raw::Table(latency)) => latency_objective(latency, &mut report),
        Some(other) => {
            report(wrong_type("slo.latency", "a table", other));
            None
        }
    };
    let (Some(target_pct), Some(window), true) = (target, window, ok) else {
        return None;
    };
    Some(Slo {
        target_pct,
        window,
        latency,
    })
}

/// `latency = { p99 = "800ms" }`: exactly one percentile key.
fn latency_objective(table: &RawTable, report: &mut impl FnMut(Kind)) -> Option<LatencyObjective> {
    let allowed: Vec<&str> = LATENCY_KEYS.iter().map(|(name, _)| *name).collect();
    let mut found = None;
    for (key, raw) in &table.entries {
        let known = match key {
            RawKey::Name(name) => LATENCY_KEYS.iter().find(|(k, _)| k == name),
            _ => None,
        };
        let Some((name, quantile)) = known else {
            report(Kind::UnknownKey {
                table: "slo.latency",
                key: key.to_string(),
                allowed: allowed.join(", "),
            });
            continue;
        };
        if found.is_some() {
            report(Kind::Number {
                key: "slo.latency".into(),
                value: name.to_string(),
                reason: "give one percentile".into(),
            });
            continue;
        }
        if let Ok(max) = duration(&format!("slo.latency.{name}"), raw).map_err(&mut *report) {
            found = Some(LatencyObjective {
                name: name.to_string(),
                quantile: *quantile,
                max,
            });
        }
    }
    if table.entries.is_empty() {
        report(Kind::Missing {
            key: "slo.latency.p99 (or p50, p90, p95, p99.9)",
        });
    }
    found
}

/// `alert = { notify = {"ops"}, after = 3, ... }`: every problem is reported; the keys that are
/// valid keep their value, the others their default (the configuration is invalid anyway).
fn alert(raw: &Raw, origin: Origin, notifiers: &[&str], rep: &mut Reporter<'_>) -> AlertRule {
    let mut rule = AlertRule::default();
    let Raw::Table(table) = raw else {
        rep.push_if(origin, wrong_type("alert", "a table", raw));
        return rule;
    };
    if origin != Origin::Defaults {
        check_keys(table, ALERT_KEYS, "alert", rep);
    }
    let mut report = |kind: Kind| rep.push_if(origin, kind);
    if let Some(raw) = table.get("notify") {
        rule.notify = notify_list(raw, notifiers, &mut report);
    }
    for (key, field) in [
        ("after", &mut rule.after),
        ("recover_after", &mut rule.recover_after),
    ] {
        if let Some(raw) = table.get(key) {
            match int_between(&format!("alert.{key}"), raw, 1, MAX_ALERT_STREAK) {
                Ok(n) => *field = n,
                Err(kind) => report(kind),
            }
        }
    }
    if let Some(raw) = table.get("for") {
        rule.for_ = duration("alert.for", raw).map_err(&mut report).ok();
    }
    if let Some(raw) = table.get("remind") {
        rule.remind = duration("alert.remind", raw)
            .and_then(|d| at_least("alert.remind", raw, d, MIN_REMIND))
            .map_err(&mut report)
            .ok();
    }
    match table.get("on_resolved") {
        None => {}
        Some(Raw::Bool(b)) => rule.on_resolved = *b,
        Some(other) => report(wrong_type("alert.on_resolved", "a boolean", other)),
    }
    match table.get("flap") {
        None => {}
        Some(Raw::Table(flap)) => rule.flap = flap_rule(flap, &mut report),
        Some(other) => report(wrong_type("alert.flap", "a table", other)),
    }
    rule
}

/// `flap = { count = 4, window = "30m" }`: both keys required.
fn flap_rule(table: &RawTable, report: &mut impl FnMut(Kind)) -> Option<FlapRule> {
    for (key, _) in &table.entries {
        if !matches!(key, RawKey::Name(name) if FLAP_KEYS.contains(&name.as_str())) {
            report(Kind::UnknownKey {
                table: "alert.flap",
                key: key.to_string(),
                allowed: FLAP_KEYS.join(", "),
            });
        }
    }
    let count = match table.get("count") {
        None => {
            report(Kind::Missing {
                key: "alert.flap.count",
            });
            None
        }
        Some(raw) => int_between("alert.flap.count", raw, MIN_FLAP_COUNT, MAX_FLAP_COUNT)
            .map_err(&mut *report)
            .ok(),
    };
    let window = match table.get("window") {
        None => {
            report(Kind::Missing {
                key: "alert.flap.window",
            });
            None
        }
        Some(raw) => duration("alert.flap.window", raw)
            .map_err(&mut *report)
            .ok(),
    };
    Some(FlapRule {
        count: count?,
        window: window?,
    })
}

/// `notify = {"ops", "am"}`: declared notifier names, each once.
fn notify_list(raw: &Raw, known: &[&str], report: &mut impl FnMut(Kind)) -> Vec<String> {
    let Some(items) = (match raw {
        Raw::Table(table) => table.sequence(),
        _ => None,
    }) else {
        report(wrong_type("alert.notify", "a list of notifier names", raw));
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Some(name) = item.as_str() else {
            report(wrong_type(
                &format!("alert.notify[{}]", i + 1),
                "a notifier name",
                item,
            ));
            continue;
        };
        if !known.contains(&name) {
            let known = match known {
                [] => "no notifier is declared".to_string(),
                names => {
                    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
                    format!("declared: {}", quoted.join(", "))
                }
            };
            report(Kind::UnknownNotifier {
                name: name.to_string(),
                known,
            });
        } else if out.iter().any(|n| n == name) {
            report(Kind::Repeated {
                key: "alert.notify".into(),
                value: name.to_string(),
            });
        } else {
            out.push(name.to_string());
        }
    }
    out
}

/// A duration that must not be shorter than `min`.
fn at_least(key: &str, raw: &Raw, value: Duration, min: Duration) -> Result<Duration, Kind> {
    if value < min {
        return Err(Kind::Number {
            key: key.to_string(),
            value: raw.show(),
            reason: format!("must be at least {}", format_duration(min)),
        });
    }
    Ok(value)
}

/// A duration that must not be longer than `max`.
fn at_most(key: &str, raw: &Raw, value: Duration, max: Duration) -> Result<Duration, Kind> {
    if value > max {
        return Err(Kind::Number {
            key: key.to_string(),
            value: raw.show(),
            reason: format!("must be at most {}", format_duration(max)),
        });
    }
    Ok(value)
}

/// The name of a notifier or maintenance window: a short identifier, since it travels in
/// events, logs and results.
fn alert_name(what: &'static str, raw: &Raw) -> Result<String, Kind> {
    let Raw::Str(bytes) = raw else {
        return Err(wrong_type(&format!("{what} name"), "a string", raw));
    };
    let invalid = |reason: String| Kind::InvalidName {
        what,
        name: String::from_utf8_lossy(bytes).into_owned(),
        reason,
    };
    if bytes.is_empty() {
        return Err(invalid("it is empty".into()));
    }
    if bytes.len() > MAX_ALERT_NAME_LEN {
        return Err(invalid(format!("longer than {MAX_ALERT_NAME_LEN} bytes")));
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(invalid("use letters, digits, '_', '.' and '-' only".into()));
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// Records `name` as declared at `location`, or reports where it was declared first.
fn first_declaration(
    seen: &mut HashMap<String, Location>,
    what: &'static str,
    name: &str,
    location: &Location,
    rep: &mut Reporter<'_>,
) {
    match seen.get(name) {
        Some(first) => rep.push(Kind::DuplicateName {
            what,
            first: first.clone(),
        }),
        None => {
            seen.insert(name.to_string(), location.clone());
        }
    }
}

/// Every `notifier(name) { ... }` declaration: the valid ones, in order.
fn notifiers(decls: &[NotifierDeclaration], errors: &mut Vec<ConfigError>) -> Vec<Notifier> {
    let mut out = Vec::with_capacity(decls.len());
    let mut seen = HashMap::new();
    for decl in decls {
        let before = errors.len();
        let mut rep = Reporter {
            errors,
            location: &decl.location,
            subject: decl
                .name
                .as_str()
                .filter(|n| !n.is_empty())
                .map(|n| ErrorSubject::Notifier(n.to_string())),
        };
        let name = alert_name("notifier", &decl.name)
            .map_err(|kind| rep.push(kind))
            .ok();
        if let Some(name) = &name {
            first_declaration(&mut seen, "notifier", name, &decl.location, &mut rep);
        }
        let kind = match &decl.body {
            NotifierBody::Pending => {
                rep.push(Kind::NotifierWithoutBody);
                None
            }
            NotifierBody::Invalid => None,
            NotifierBody::Table(table) => notifier_kind(table, &mut rep),
        };
        if let (Some(name), Some(kind), true) = (name, kind, errors.len() == before) {
            out.push(Notifier {
                name,
                kind,
                location: decl.location.clone(),
            });
        }
    }
    out
}

/// The settings of one notifier: `type` and `url` always; `headers` and `format` for webhooks.
fn notifier_kind(table: &RawTable, rep: &mut Reporter<'_>) -> Option<NotifierKind> {
    check_keys(table, NOTIFIER_KEYS, "notifier", rep);
    /// The kinds, as `type` spells them.
    const WEBHOOK: &str = "webhook";
    const ALERTMANAGER: &str = "alertmanager";
    let kind = match table.get("type") {
        None => {
            rep.push(Kind::Missing { key: "type" });
            None
        }
        Some(raw) => match raw.as_str() {
            Some(kind @ (WEBHOOK | ALERTMANAGER)) => Some(kind),
            _ if matches!(raw, Raw::Str(_)) => {
                rep.push(Kind::NotifierType { value: raw.show() });
                None
            }
            _ => {
                rep.push(wrong_type("type", "\"webhook\" or \"alertmanager\"", raw));
                None
            }
        },
    };
    let url = match table.get("url") {
        None => {
            rep.push(Kind::Missing { key: "url" });
            None
        }
        Some(raw) => parse_url(raw).map_err(|kind| rep.push(kind)).ok(),
    };
    let webhook_only = |key: &'static str, rep: &mut Reporter<'_>| {
        let present = table.get(key).is_some();
        if present && kind == Some(ALERTMANAGER) {
            rep.push(Kind::WebhookOnly {
                key,
                kind: ALERTMANAGER,
            });
        }
        present && kind == Some(WEBHOOK)
    };
    let mut headers = Vec::new();
    if let (true, Some(raw)) = (webhook_only("headers", rep), table.get("headers")) {
        let mut problems = Vec::new();
        for (name, value) in header_pairs("headers", raw, &mut problems) {
            match value.to_str() {
                Ok(value) => headers.push((name.as_str().to_string(), value.to_string())),
                // Bytes above 0x7f are valid HTTP but not text a webhook client will send.
                Err(_) => problems.push(Kind::HeaderValue {
                    key: "headers",
                    name: name.as_str().to_string(),
                }),
            }
        }
        problems.into_iter().for_each(|kind| rep.push(kind));
    }
    let has_format = match (webhook_only("format", rep), table.get("format")) {
        (true, Some(Raw::Function(_))) => true,
        (true, Some(other)) => {
            rep.push(wrong_type("format", "a function", other));
            false
        }
        _ => false,
    };
    Some(match kind? {
        WEBHOOK => NotifierKind::Webhook {
            url: url?,
            headers,
            has_format,
        },
        _ => NotifierKind::Alertmanager { url: url? },
    })
}

/// Every `maintenance{}` declaration: the valid ones, in order. `site_names` are every
/// declared site's name.
fn maintenance_windows(
    decls: &[Declaration],
    site_names: &HashSet<String>,
    errors: &mut Vec<ConfigError>,
) -> Vec<MaintenanceWindow> {
    let mut out = Vec::with_capacity(decls.len());
    let mut seen = HashMap::new();
    for decl in decls {
        let before = errors.len();
        let table = &decl.table;
        let mut rep = Reporter {
            errors,
            location: &decl.location,
            subject: table
                .get("name")
                .and_then(Raw::as_str)
                .filter(|n| !n.is_empty())
                .map(|n| ErrorSubject::Maintenance(n.to_string())),
        };
        check_keys(table, MAINTENANCE_KEYS, "maintenance", &mut rep);
        let name = match table.get("name") {
            None => {
                rep.push(Kind::Missing { key: "name" });
                None
            }
            Some(raw) => alert_name("maintenance window", raw)
                .map_err(|kind| rep.push(kind))
                .ok(),
        };
        if let Some(name) = &name {
            first_declaration(
                &mut seen,
                "maintenance window",
                name,
                &decl.location,
                &mut rep,
            );
        }
        let sites = table
            .get("sites")
            .map_or_else(Vec::new, |raw| maintenance_sites(raw, site_names, &mut rep));
        let schedule = schedule(table, &mut rep);
        if let (Some(name), Some(schedule), true) = (name, schedule, errors.len() == before) {
            out.push(MaintenanceWindow {
                name,
                sites,
                schedule,
                location: decl.location.clone(),
            });
        }
    }
    out
}

/// `sites = {"shop", "api"}`: declared site names, each once; not empty (leave `sites` out for
/// every site).
fn maintenance_sites(raw: &Raw, declared: &HashSet<String>, rep: &mut Reporter<'_>) -> Vec<String> {
    let items = match raw {
        Raw::Table(table) => table.sequence().filter(|items| !items.is_empty()),
        _ => None,
    };
    let Some(items) = items else {
        rep.push(wrong_type(
            "sites",
            "a non-empty list of site names (leave sites out for every site)",
            raw,
        ));
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let name = item.as_str().map(canonical_site_name);
        match name {
            None => rep.push(wrong_type(
                &format!("sites[{}]", i + 1),
                "a site name",
                item,
            )),
            Some(name) if !declared.contains(&name) => rep.push(Kind::UnknownSite { name }),
            Some(name) if out.contains(&name) => rep.push(Kind::Repeated {
                key: "sites".into(),
                value: name,
            }),
            Some(name) => out.push(name),
        }
    }
    out
}

/// Weekly (`every`, `start`, `tz`) or one-off (`at`), and the `duration` both need.
fn schedule(table: &RawTable, rep: &mut Reporter<'_>) -> Option<MaintenanceSchedule> {
    let duration = match table.get("duration") {
        None => {
            rep.push(Kind::Missing { key: "duration" });
            None
        }
        Some(raw) => duration("duration", raw)
            .and_then(|d| at_most("duration", raw, d, MAX_MAINTENANCE))
            .map_err(|kind| rep.push(kind))
            .ok(),
    };
    if let Some(at) = table.get("at") {
        for key in ["every", "start", "tz"] {
            if table.get(key).is_some() {
                rep.push(Kind::ScheduleConflict { key });
            }
        }
        let start = timestamp(at).map_err(|kind| rep.push(kind)).ok();
        return Some(MaintenanceSchedule::Once {
            start: start?,
            duration: duration?,
        });
    }
    let days = match table.get("every") {
        None => {
            rep.push(Kind::Missing {
                key: "every (or at, for a one-off window)",
            });
            None
        }
        Some(raw) => weekdays(raw).map_err(|kind| rep.push(kind)).ok(),
    };
    let start = match table.get("start") {
        None => {
            rep.push(Kind::Missing { key: "start" });
            None
        }
        Some(raw) => raw
            .as_str()
            .and_then(parse_time_of_day)
            .ok_or_else(|| Kind::TimeOfDay { value: raw.show() })
            .map_err(|kind| rep.push(kind))
            .ok(),
    };
    let tz = match table.get("tz") {
        None => Some(chrono_tz::UTC),
        Some(raw) => raw
            .as_str()
            .and_then(|name| name.parse::<chrono_tz::Tz>().ok())
            .ok_or_else(|| Kind::TimeZone { value: raw.show() })
            .map_err(|kind| rep.push(kind))
            .ok(),
    };
    Some(MaintenanceSchedule::Weekly {
        days: days?,
        start: start?,
        duration: duration?,
        tz: tz?,
    })
}

/// `every = "Sun"`, `{"Sat", "Sun"}` or `"day"`: distinct days, Monday first.
fn weekdays(raw: &Raw) -> Result<Vec<Weekday>, Kind> {
    /// What `every` accepts, for messages.
    const HINT: &str =
        "expected a day (\"Mon\" to \"Sun\"), a list of days, or \"day\" for every day";
    let invalid = |value: &Raw| Kind::Weekday {
        value: value.show(),
        reason: HINT.into(),
    };
    let one = |item: &Raw| {
        item.as_str()
            .and_then(parse_weekday)
            .ok_or_else(|| invalid(item))
    };
    let mut days = match raw {
        Raw::Str(_) if raw.as_str() == Some("day") => return Ok(ALL_DAYS.to_vec()),
        Raw::Str(_) => vec![one(raw)?],
        Raw::Table(table) => match table.sequence() {
            Some(items) if !items.is_empty() => {
                items.into_iter().map(one).collect::<Result<Vec<_>, _>>()?
            }
            _ => return Err(invalid(raw)),
        },
        other => return Err(invalid(other)),
    };
    days.sort_by_key(Weekday::num_days_from_monday);
    days.dedup();
    Ok(days)
}

/// The week, Monday first: `every = "day"`.
const ALL_DAYS: [Weekday; 7] = [
    Weekday::Mon,
    Weekday::Tue,
    Weekday::Wed,
    Weekday::Thu,
    Weekday::Fri,
    Weekday::Sat,
    Weekday::Sun,
];

/// `at = "2026-12-24T18:00:00Z"`: RFC 3339, any offset.
fn timestamp(raw: &Raw) -> Result<DateTime<Utc>, Kind> {
    let invalid = |reason: String| Kind::Timestamp {
        value: raw.show(),
        reason,
    };
    let text = raw
        .as_str()
        .ok_or_else(|| invalid(format!("got {}", raw.type_name())))?;
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| invalid(e.to_string()))
}

/// The parts of the sites validated so far that sites can share ([`Site`] says why): a site
/// whose part equals one of the last few distinct ones takes that one. Sites written in a loop
/// or from `defaults{}` share one of each; a site with parts of its own keeps them.
#[derive(Default)]
struct SharedParts {
    request: Recent<Request>,
    tls: Recent<TlsOptions>,
    expect: Recent<Expect>,
    slo: Recent<Slo>,
    alert: Recent<AlertRule>,
}

impl SharedParts {
    fn share(&mut self, mut site: Site) -> Site {
        self.request.share(&mut site.request);
        self.tls.share(&mut site.tls);
        self.expect.share(&mut site.expect);
        if let Some(slo) = &mut site.slo {
            self.slo.share(slo);
        }
        self.alert.share(&mut site.alert);
        site
    }
}

/// The last [`Recent::KEPT`] distinct values of one part, newest last.
struct Recent<T>(Vec<Arc<T>>);

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Recent(Vec::new())
    }
}

impl<T: PartialEq> Recent<T> {
    /// Enough for sites that alternate between a few variants; few enough that sites with
    /// parts all their own cost little to compare.
    const KEPT: usize = 8;

    fn share(&mut self, part: &mut Arc<T>) {
        if let Some(same) = self.0.iter().rev().find(|kept| **kept == *part) {
            *part = Arc::clone(same);
            return;
        }
        if self.0.len() == Self::KEPT {
            self.0.remove(0);
        }
        self.0.push(Arc::clone(part));
    }
}

/// Everything a site and `defaults{}` share, parsed and merged.
struct Settings {
    slo: Option<Slo>,
    interval: Duration,
    timeout: Duration,
    expect: Expect,
    request: Request,
    tls: TlsOptions,
    retries: u32,
    max_redirects: u32,
    follow_redirects: bool,
    body_cap: u64,
    hooks: Vec<String>,
    alert: AlertRule,
    status_page: bool,
}

fn site(
    decl: &Declaration,
    defaults: Option<&RawTable>,
    ctx: &Context<'_>,
    rep: &mut Reporter<'_>,
) -> Option<Site> {
    let table = &decl.table;
    check_keys(table, SITE_KEYS, "site", rep);
    let name = match table.get("name") {
        None => {
            rep.push(Kind::Missing { key: "name" });
            None
        }
        Some(raw) => site_name(raw).map_err(|kind| rep.push(kind)).ok(),
    };
    let url = match table.get("url") {
        None => {
            rep.push(Kind::Missing { key: "url" });
            None
        }
        Some(raw) => site_url(raw).map_err(|kind| rep.push(kind)).ok(),
    };
    let layers = Layers {
        own: Some(table),
        inherited: defaults,
    };
    let settings = settings(layers, ctx, rep);
    Some(Site {
        name: name?,
        url: url?,
        interval: settings.interval,
        timeout: settings.timeout,
        request: Arc::new(settings.request),
        tls: Arc::new(settings.tls),
        expect: Arc::new(settings.expect),
        retries: settings.retries,
        max_redirects: settings.max_redirects,
        follow_redirects: settings.follow_redirects,
        body_cap: settings.body_cap,
        hooks: settings.hooks,
        slo: settings.slo.map(Arc::new),
        alert: Arc::new(settings.alert),
        status_page: settings.status_page,
        location: decl.location.clone(),
    })
}

/// Parses and merges every setting `site{}` and `defaults{}` share. Long on purpose (over 80
/// lines): one block per key, in the order of `SITE_KEYS`.
fn settings(layers: Layers<'_>, ctx: &Context<'_>, rep: &mut Reporter<'_>) -> Settings {
    for (key, allowed) in [
        ("expect", EXPECT_KEYS),
        ("request", REQUEST_KEYS),
        ("tls", TLS_KEYS),
    ] {
        match layers.own.and_then(|t| t.get(key)) {
            Some(Raw::Table(nested)) => check_keys(nested, allowed, key_table_name(key), rep),
            Some(other) => rep.push(wrong_type(key, "a table", other)),
            None => {}
        }
    }

    let interval = layers.field("interval", rep, |raw| duration("interval", raw));
    let timeout = layers.field("timeout", rep, |raw| duration("timeout", raw));
    let (interval, interval_origin) = interval.unwrap_or((DEFAULT_INTERVAL, Origin::Builtin));
    let timeout = match timeout {
        Some((timeout, origin)) => {
            if timeout >= interval
                && !(origin == Origin::Defaults && interval_origin == Origin::Defaults)
            {
                rep.push(Kind::TimeoutNotBelowInterval {
                    timeout: format_duration(timeout),
                    interval: format_duration(interval),
                });
            }
            timeout
        }
        None => default_timeout(interval),
    };

    let expect = expect(layers.nested("expect"), rep);
    let request = request(layers.whole("request"), rep);
    let tls = tls(layers.whole("tls"), ctx.base_dir, rep);

    let retries = layers
        .field("retries", rep, |raw| {
            bounded_int("retries", raw, MAX_RETRIES)
        })
        .map_or(0, |(n, _)| n);
    let max_redirects = layers
        .field("max_redirects", rep, |raw| {
            bounded_int("max_redirects", raw, MAX_REDIRECTS_LIMIT)
        })
        .map_or(DEFAULT_MAX_REDIRECTS, |(n, _)| n);
    let follow_redirects = layers
        .field("follow_redirects", rep, |raw| match raw {
            Raw::Bool(b) => Ok(*b),
            other => Err(wrong_type("follow_redirects", "a boolean", other)),
        })
        .is_none_or(|(follow, _)| follow);
    let mut body_cap = layers
        .field("body_cap", rep, |raw| {
            size("body_cap", raw).and_then(|n| size_at_most("body_cap", raw, n, MAX_BODY_CAP))
        })
        .map_or(DEFAULT_BODY_CAP, |(n, _)| n);
    if let Some(max_body) = expect.max_body {
        // A truncated body must prove the limit was exceeded.
        body_cap = body_cap.max(max_body.saturating_add(1));
    }
    let hooks = layers
        .field("hooks", rep, hook_labels)
        .map_or_else(Vec::new, |(h, _)| h);
    // A site's `slo` replaces the default one whole.
    let slo = layers
        .get("slo")
        .and_then(|(raw, origin)| slo(raw, origin, rep));
    // So does its `alert`; neither set: the built-in rule.
    let alert = layers
        .get("alert")
        .map_or_else(AlertRule::default, |(raw, origin)| {
            alert(raw, origin, &ctx.notifiers, rep)
        });

    let status_page = layers
        .field("status_page", rep, |raw| match raw {
            Raw::Bool(b) => Ok(*b),
            other => Err(wrong_type("status_page", "a boolean", other)),
        })
        .is_none_or(|(shown, _)| shown);

    Settings {
        interval,
        timeout,
        expect,
        request,
        tls,
        retries,
        max_redirects,
        follow_redirects,
        body_cap,
        hooks,
        slo,
        alert,
        status_page,
    }
}

/// The timeout of a site that sets none: [`DEFAULT_TIMEOUT`], or half the interval when the
/// interval is not longer than that.
pub(crate) fn default_timeout(interval: Duration) -> Duration {
    if DEFAULT_TIMEOUT < interval {
        DEFAULT_TIMEOUT
    } else {
        interval / 2
    }
}

fn key_table_name(key: &str) -> &'static str {
    match key {
        "expect" => "expect",
        "request" => "request",
        _ => "tls",
    }
}

fn expect(layers: Layers<'_>, rep: &mut Reporter<'_>) -> Expect {
    let status = layers
        .field("status", rep, |raw| statuses("expect.status", raw))
        .map_or_else(Vec::new, |(s, _)| s);
    let body = layers
        .field("body", rep, |raw| regex("expect.body", raw))
        .map(|(r, _)| r);
    let body_not = layers
        .field("body_not", rep, |raw| regex("expect.body_not", raw))
        .map(|(r, _)| r);
    let max_time = layers.field("max_time", rep, |raw| duration("expect.max_time", raw));
    let warn_time = layers.field("warn_time", rep, |raw| duration("expect.warn_time", raw));
    if let (Some((warn, warn_origin)), Some((max, max_origin))) = (warn_time, max_time) {
        if warn >= max && !(warn_origin == Origin::Defaults && max_origin == Origin::Defaults) {
            rep.push(Kind::WarnNotBelowMax {
                warn_time: format_duration(warn),
                max_time: format_duration(max),
            });
        }
    }
    let cert_days = layers
        .field("cert_days", rep, |raw| {
            bounded_int("expect.cert_days", raw, i64::from(u32::MAX))
        })
        .map(|(n, _)| n);
    let max_body = layers
        .field("max_body", rep, |raw| {
            size("expect.max_body", raw)
                .and_then(|n| size_at_most("expect.max_body", raw, n, MAX_BODY_CAP - 1))
        })
        .map(|(n, _)| n);
    let headers = layers
        .get("headers")
        .map_or_else(Vec::new, |(raw, origin)| {
            let mut problems = Vec::new();
            let headers = expect_headers(raw, &mut problems);
            problems
                .into_iter()
                .for_each(|kind| rep.push_if(origin, kind));
            headers
        });
    let json = layers.get("json").map_or_else(Vec::new, |(raw, origin)| {
        let mut problems = Vec::new();
        let json = expect_json(raw, &mut problems);
        problems
            .into_iter()
            .for_each(|kind| rep.push_if(origin, kind));
        json
    });
    Expect {
        status,
        body,
        body_not,
        max_time: max_time.map(|(d, _)| d),
        warn_time: warn_time.map(|(d, _)| d),
        cert_days,
        max_body,
        headers,
        json,
    }
}

fn request(layers: Layers<'_>, rep: &mut Reporter<'_>) -> Request {
    let mut request = Request::default();
    if let Some((method, _)) = layers.field("method", rep, method) {
        request.method = method;
    }
    if let Some((raw, origin)) = layers.get("headers") {
        let mut problems = Vec::new();
        request.headers = request_headers(raw, &mut problems);
        problems
            .into_iter()
            .for_each(|kind| rep.push_if(origin, kind));
    }
    request.body = layers
        .field("body", rep, |raw| match raw {
            Raw::Str(bytes) => Ok(bytes::Bytes::from(bytes.clone())),
            other => Err(wrong_type("request.body", "a string", other)),
        })
        .map(|(b, _)| b);
    request
}

fn tls(layers: Layers<'_>, base_dir: &Path, rep: &mut Reporter<'_>) -> TlsOptions {
    let mut pem = |key: &'static str| layers.field(key, rep, |raw| read_pem(key, raw, base_dir));
    let ca = pem("ca");
    let client_cert = pem("client_cert");
    let client_key = pem("client_key");
    let insecure = layers.field("insecure", rep, |raw| match raw {
        Raw::Bool(b) => Ok(*b),
        other => Err(wrong_type("tls.insecure", "a boolean", other)),
    });
    let set = |key: &str| layers.get(key).map(|(_, origin)| origin);
    if let (Some(cert), None) | (None, Some(cert)) = (set("client_cert"), set("client_key")) {
        rep.push_if(cert, Kind::TlsPair);
    }
    // The pair is checked now, not at the first probe: a PKCS#1 key is fine, a certificate
    // given as the key or a key of another certificate is not.
    if let (Some((cert, origin)), Some((key, _))) = (&client_cert, &client_key) {
        if let Err(reason) = crate::probe::client_identity(cert, key) {
            // `tls` is replaced whole: both halves come from the site, or both from defaults{}
            // (reported there).
            rep.push_if(*origin, Kind::TlsIdentity { reason });
        }
    }
    TlsOptions {
        ca_pem: ca.map(|(p, _)| p),
        client_cert_pem: client_cert.map(|(p, _)| p),
        client_key_pem: client_key.map(|(p, _)| p),
        insecure: insecure.is_some_and(|(b, _)| b),
    }
}

fn check_keys(
    table: &RawTable,
    allowed: &[&str],
    table_name: &'static str,
    rep: &mut Reporter<'_>,
) {
    for (key, _) in &table.entries {
        let known = matches!(key, RawKey::Name(name) if allowed.contains(&name.as_str()));
        if !known {
            rep.push(Kind::UnknownKey {
                table: table_name,
                key: key.to_string(),
                allowed: allowed.join(", "),
            });
        }
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &Raw) -> Kind {
    Kind::WrongType {
        key: key.to_string(),
        expected,
        found: found.type_name(),
    }
}

fn site_name(raw: &Raw) -> Result<String, Kind> {
    let Raw::Str(bytes) = raw else {
        return Err(wrong_type("name", "a string", raw));
    };
    let invalid = |reason: &str| Kind::Name {
        name: String::from_utf8_lossy(bytes).into_owned(),
        reason: reason.to_string(),
    };
    let name = std::str::from_utf8(bytes).map_err(|_| invalid("not valid UTF-8"))?;
    if name.trim().is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > MAX_SITE_NAME_LEN {
        return Err(invalid(&format!("longer than {MAX_SITE_NAME_LEN} bytes")));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("it contains control characters"));
    }
    if let Some(c) = name.chars().find(|&c| is_invisible(c)) {
        return Err(invalid(&format!(
            "it contains the invisible character U+{:04X} (zero-width, bidirectional or other \
             format characters, and spaces other than U+0020, would make look-alike names)",
            u32::from(c)
        )));
    }
    Ok(canonical_site_name(name))
}

/// A site name in its one canonical form, Unicode NFC: what the duplicate check compares, what
/// results carry, what maintenance windows and hook workers look names up by.
pub(crate) fn canonical_site_name(name: &str) -> String {
    name.nfc().collect()
}

/// Unicode format characters (general category Cf: zero-width spaces and joiners, bidirectional
/// marks, overrides and isolates, the BOM, tags, ...), as of Unicode 16.
const FORMAT_CHARACTERS: &[(u32, u32)] = &[
    (0xAD, 0xAD),
    (0x600, 0x605),
    (0x61C, 0x61C),
    (0x6DD, 0x6DD),
    (0x70F, 0x70F),
    (0x890, 0x891),
    (0x8E2, 0x8E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];
/// Other characters that show as nothing: the combining grapheme joiner, Hangul fillers,
/// variation selectors.
const OTHER_INVISIBLE: &[(u32, u32)] = &[
    (0x34F, 0x34F),
    (0x115F, 0x1160),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xE0100, 0xE01EF),
];

/// Whether `c` cannot be seen, or looks like a plain space without being one.
fn is_invisible(c: char) -> bool {
    let code = u32::from(c);
    let listed = |ranges: &[(u32, u32)]| ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&code));
    listed(FORMAT_CHARACTERS) || listed(OTHER_INVISIBLE) || (c.is_whitespace() && c != ' ')
}

/// A site's URL: [`parse_url`], without credentials. `user:password@` would travel in every
/// result — to Kafka, PostgreSQL and logs.
fn site_url(raw: &Raw) -> Result<Url, Kind> {
    let url = parse_url(raw)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Kind::Url {
            value: redact_userinfo(url.as_str()),
            reason: "it contains credentials (user:password@), which would be copied into every \
                     result; send them in a header instead: request = { headers = { \
                     Authorization = \"Basic \" .. env(\"SITE_CREDENTIALS\") } }"
                .into(),
        });
    }
    Ok(url)
}

/// `text` with whatever stands before an `@` in its authority replaced by `***`, so a URL in a
/// message shows no credentials, however broken the URL.
pub(crate) fn redact_userinfo(text: &str) -> String {
    let authority_start = text.find("://").map_or(0, |i| i + 3);
    let rest = &text[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_len].rfind('@') {
        Some(at) => format!(
            "{}***{}",
            &text[..authority_start],
            &text[authority_start + at..]
        ),
        None => text.to_string(),
    }
}

fn parse_url(raw: &Raw) -> Result<Url, Kind> {
    let text = raw
        .as_str()
        .ok_or_else(|| wrong_type("url", "a string", raw))?;
    let invalid = |reason: String| Kind::Url {
        value: redact_userinfo(text),
        reason,
    };
    if text.len() > MAX_URL_LEN {
        return Err(invalid(format!("longer than {MAX_URL_LEN} bytes")));
    }
    let url = Url::parse(text).map_err(|e| invalid(e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(invalid(format!("scheme {other:?} is not http or https"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    // The URL standard reads `http:///host`, `http:/host` and `http:host` as `http://host/`:
    // a typo that should not pass as a different URL.
    let after_scheme = text
        .trim_start()
        .get(url.scheme().len() + 1..)
        .unwrap_or("");
    let authority = after_scheme
        .strip_prefix("//")
        .filter(|rest| !rest.starts_with(['/', '\\']));
    if authority.is_none() {
        return Err(invalid(format!(
            "the host must follow \"{}://\" directly (e.g. \"{}://{}/\")",
            url.scheme(),
            url.scheme(),
            url.host_str().unwrap_or("example.com")
        )));
    }
    Ok(url)
}

fn duration(key: &str, raw: &Raw) -> Result<Duration, Kind> {
    let invalid = |reason: String| Kind::Duration {
        key: key.to_string(),
        value: raw.show(),
        reason,
    };
    match raw {
        Raw::Int(_) | Raw::Num(_) => Err(invalid(format!(
            "a number needs a unit, e.g. \"{}s\"",
            raw.show()
        ))),
        Raw::Str(_) => {
            let text = raw
                .as_str()
                .ok_or_else(|| invalid("not valid UTF-8".into()))?;
            parse_duration(text).map_err(invalid)
        }
        other => Err(wrong_type(key, "a duration such as \"30s\"", other)),
    }
}

/// A size: a string with a unit, or a whole number of bytes.
fn size(key: &str, raw: &Raw) -> Result<u64, Kind> {
    let invalid = |reason: String| Kind::Size {
        key: key.to_string(),
        value: raw.show(),
        reason,
    };
    match raw {
        Raw::Str(_) => {
            let text = raw
                .as_str()
                .ok_or_else(|| invalid("not valid UTF-8".into()))?;
            parse_size(text).map_err(invalid)
        }
        Raw::Int(_) | Raw::Num(_) => match raw.as_int() {
            Some(n) if n > 0 => Ok(n as u64),
            Some(_) => Err(invalid("must be greater than zero".into())),
            None => Err(invalid("must be a whole number of bytes".into())),
        },
        other => Err(wrong_type(key, "a size such as \"512KB\"", other)),
    }
}

/// A size that must not exceed `max` bytes.
fn size_at_most(key: &str, raw: &Raw, value: u64, max: u64) -> Result<u64, Kind> {
    if value > max {
        return Err(Kind::Size {
            key: key.to_string(),
            value: raw.show(),
            reason: format!("must be at most {max} bytes ({} MiB)", MAX_BODY_CAP >> 20),
        });
    }
    Ok(value)
}

/// A whole number from 0 to `max`.
fn bounded_int(key: &str, raw: &Raw, max: i64) -> Result<u32, Kind> {
    int_between(key, raw, 0, max)
}

/// A whole number from `min` to `max`.
fn int_between(key: &str, raw: &Raw, min: i64, max: i64) -> Result<u32, Kind> {
    let n = match raw {
        Raw::Int(_) | Raw::Num(_) => raw.as_int().ok_or_else(|| Kind::Number {
            key: key.to_string(),
            value: raw.show(),
            reason: "must be a whole number".into(),
        })?,
        other => return Err(wrong_type(key, "a number", other)),
    };
    if !(min..=max).contains(&n) {
        return Err(Kind::Number {
            key: key.to_string(),
            value: raw.show(),
            reason: format!("must be between {min} and {max}"),
        });
    }
    u32::try_from(n).map_err(|_| Kind::Number {
        key: key.to_string(),
        value: raw.show(),
        reason: "too large".into(),
    })
}

fn statuses(key: &str, raw: &Raw) -> Result<Vec<StatusMatcher>, Kind> {
    let one = |raw: &Raw| -> Result<StatusMatcher, Kind> {
        let invalid = |reason: String| Kind::Status {
            key: key.to_string(),
            value: raw.show(),
            reason,
        };
        match raw {
            Raw::Int(_) | Raw::Num(_) => match raw.as_int() {
                Some(code) => status_code(code).map_err(invalid),
                None => Err(invalid("must be a whole number".into())),
            },
            Raw::Str(_) => status_class(raw.as_str().unwrap_or("")).map_err(invalid),
            other => Err(wrong_type(
                key,
                "a status (200, \"2xx\") or a list of them",
                other,
            )),
        }
    };
    match raw {
        Raw::Table(table) => {
            let items = table
                .sequence()
                .ok_or_else(|| wrong_type(key, "a list of statuses", raw))?;
            if items.is_empty() {
                return Err(Kind::Status {
                    key: key.to_string(),
                    value: "{}".into(),
                    reason: "the list is empty".into(),
                });
            }
            items.into_iter().map(one).collect()
        }
        single => Ok(vec![one(single)?]),
    }
}

/// Compiled-size limit of one expectation regex (`expect.body`, `body_not`, `headers`): every
/// site keeps its own, outside the Lua heap, for as long as the configuration runs.
pub(crate) const REGEX_SIZE_LIMIT: usize = 4 * 1024 * 1024;
/// Limit of each expectation regex's lazy DFA cache.
pub(crate) const REGEX_DFA_LIMIT: usize = 2 * 1024 * 1024;

thread_local! {
    /// The regexes compiled by the validation running on this thread, by pattern: sites that
    /// share a pattern (from `defaults{}`, or a loop in sites.lua) share one `Regex` — its
    /// program and its pool of search caches (a clone would share the program but start a pool
    /// of its own, a few KiB once used). 30,000 sites each with their own copy of one small
    /// pattern held over 100 MiB. Emptied when validation ends.
    static COMPILED: RefCell<HashMap<String, Arc<Regex>>> = RefCell::new(HashMap::new());
}

/// Empties [`COMPILED`] when made and when dropped, so what one validation compiled is neither
/// reused by the next (after a reload) nor kept alive by the thread.
struct CompiledRegexes;

impl CompiledRegexes {
    fn start() -> Self {
        COMPILED.with(|compiled| compiled.borrow_mut().clear());
        CompiledRegexes
    }
}

impl Drop for CompiledRegexes {
    fn drop(&mut self) {
        COMPILED.with(|compiled| *compiled.borrow_mut() = HashMap::new());
    }
}

fn regex(key: &str, raw: &Raw) -> Result<Arc<Regex>, Kind> {
    let pattern = raw
        .as_str()
        .ok_or_else(|| wrong_type(key, "a regex string", raw))?;
    if let Some(compiled) = COMPILED.with(|compiled| compiled.borrow().get(pattern).cloned()) {
        return Ok(compiled);
    }
    let compiled = regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_LIMIT)
        .build()
        .map(Arc::new)
        .map_err(|e| Kind::Regex {
            key: key.to_string(),
            pattern: pattern.to_string(),
            message: one_line(&e.to_string()),
            source: Box::new(e),
        })?;
    COMPILED.with(|compiled_by_pattern| {
        compiled_by_pattern
            .borrow_mut()
            .insert(pattern.to_owned(), Arc::clone(&compiled))
    });
    Ok(compiled)
}

fn method(raw: &Raw) -> Result<Method, Kind> {
    let text = raw
        .as_str()
        .ok_or_else(|| wrong_type("request.method", "a string", raw))?;
    let invalid = || Kind::Method {
        value: text.to_string(),
    };
    if text.is_empty() {
        return Err(invalid());
    }
    Method::from_bytes(text.as_bytes()).map_err(|_| invalid())
}

/// `{ name = value }` pairs of a map table; other keys are reported.
fn named_entries<'a>(key: &str, raw: &'a Raw, problems: &mut Vec<Kind>) -> Vec<(&'a str, &'a Raw)> {
    let Raw::Table(table) = raw else {
        problems.push(wrong_type(key, "a table of name = value", raw));
        return Vec::new();
    };
    table
        .entries
        .iter()
        .filter_map(|(k, v)| match k {
            RawKey::Name(name) => Some((name.as_str(), v)),
            other => {
                problems.push(Kind::WrongType {
                    key: format!("{key}{other}"),
                    expected: "a named entry (name = value)",
                    found: "a positional entry".into(),
                });
                None
            }
        })
        .collect()
}

fn request_headers(raw: &Raw, problems: &mut Vec<Kind>) -> Vec<(HeaderName, HeaderValue)> {
    header_pairs("request.headers", raw, problems)
}

/// `{ Name = "value" }`: valid HTTP header names and values.
fn header_pairs(
    key: &'static str,
    raw: &Raw,
    problems: &mut Vec<Kind>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (name, value) in named_entries(key, raw, problems) {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Kind::HeaderName {
            key,
            name: name.to_string(),
        });
        let value = match value {
            Raw::Str(bytes) => HeaderValue::from_bytes(bytes).map_err(|_| Kind::HeaderValue {
                key,
                name: name.to_string(),
            }),
            other => Err(wrong_type(&format!("{key}[{name:?}]"), "a string", other)),
        };
        match (header, value) {
            (Ok(header), Ok(value)) => out.push((header, value)),
            (header, value) => problems.extend(header.err().into_iter().chain(value.err())),
        }
    }
    out
}

fn expect_headers(raw: &Raw, problems: &mut Vec<Kind>) -> Vec<HeaderExpectation> {
    let mut out = Vec::new();
    for (name, pattern) in named_entries("expect.headers", raw, problems) {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Kind::HeaderName {
            key: "expect.headers",
            name: name.to_string(),
        });
        let pattern = regex(&format!("expect.headers[{name:?}]"), pattern);
        match (header, pattern) {
            (Ok(header), Ok(pattern)) => out.push(HeaderExpectation {
                name: header.as_str().to_string(),
                pattern,
            }),
            (header, pattern) => problems.extend(header.err().into_iter().chain(pattern.err())),
        }
    }
    out
}

/// What to write instead of an unparsable JSONPath, for the two usual mistakes: no leading `$`,
/// and a name in dot notation with characters other than letters, digits and `_` (`$.foo-bar`,
/// which RFC 9535 spells `$['foo-bar']`).
fn jsonpath_hint(query: &str) -> Option<String> {
    let Some(rest) = query.strip_prefix('$') else {
        let fixed = if query.starts_with('[') || query.starts_with('.') {
            format!("${query}")
        } else {
            format!("$.{query}")
        };
        return Some(match JsonPath::parse(&fixed) {
            Ok(_) => format!("a JSONPath starts at the document, `$`: write {fixed:?}"),
            Err(_) => "a JSONPath starts at the document, `$` (e.g. \"$.data.items[0].id\")".into(),
        });
    };
    // Dot segments at bracket depth 0, outside quotes; a segment's own `[…]` suffix stays.
    let mut fixed = String::from("$");
    let mut changed = false;
    for segment in split_dots(rest)? {
        let (name, suffix) = segment.split_at(segment.find('[').unwrap_or(segment.len()));
        let plain = |c: char| c.is_alphanumeric() || c == '_';
        if name.is_empty() || name == "*" || name.chars().all(plain) {
            fixed.push('.');
        } else {
            fixed.push_str(&format!(
                "['{}']",
                name.replace('\\', "\\\\").replace('\'', "\\'")
            ));
            changed = true;
            fixed.push_str(suffix);
            continue;
        }
        fixed.push_str(name);
        fixed.push_str(suffix);
    }
    (changed && JsonPath::parse(&fixed).is_ok()).then(|| {
        format!("names with characters other than letters, digits and _ go in brackets: write {fixed:?}")
    })
}

/// `.a.b[0].c` → `["a", "b[0]", "c"]`: splits at dots outside brackets and quotes; `None` when
/// the text does not start with a dot or has unbalanced brackets.
fn split_dots(text: &str) -> Option<Vec<&str>> {
    if !text.starts_with('.') {
        return None;
    }
    let (mut segments, mut start, mut depth, mut quote) = (Vec::new(), 1, 0i32, None);
    for (i, c) in text.char_indices().skip(1) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => depth -= 1,
            (None, '.') if depth == 0 => {
                segments.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    segments.push(&text[start..]);
    (depth == 0 && quote.is_none()).then_some(segments)
}

fn expect_json(raw: &Raw, problems: &mut Vec<Kind>) -> Vec<JsonExpectation> {
    let mut out = Vec::new();
    for (query, value) in named_entries("expect.json", raw, problems) {
        let path = JsonPath::parse(query).map_err(|e| Kind::JsonPath {
            query: query.to_string(),
            message: match jsonpath_hint(query) {
                Some(hint) => format!("{}; {hint}", one_line(&e.to_string())),
                None => one_line(&e.to_string()),
            },
        });
        let equals = to_json(value).map_err(|reason| Kind::JsonValue {
            key: format!("expect.json[{query:?}]"),
            reason,
        });
        match (path, equals) {
            (Ok(path), Ok(equals)) => out.push(JsonExpectation {
                path: query.to_string(),
                query: path,
                equals,
            }),
            (path, equals) => problems.extend(path.err().into_iter().chain(equals.err())),
        }
    }
    out
}

/// A Lua value as the JSON it stands for. An empty table is an empty array.
pub(crate) fn to_json(raw: &Raw) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match raw {
        Raw::Null => J::Null,
        Raw::Bool(b) => J::Bool(*b),
        Raw::Int(i) => J::from(*i),
        Raw::Num(n) => serde_json::Number::from_f64(*n)
            .map(J::Number)
            .ok_or_else(|| format!("{n} cannot be represented in JSON"))?,
        Raw::Str(bytes) => J::String(
            String::from_utf8(bytes.clone())
                .map_err(|_| "strings compared with JSON must be UTF-8".to_string())?,
        ),
        Raw::Table(table) => {
            if let Some(items) = table.sequence() {
                J::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?)
            } else {
                let mut object = serde_json::Map::new();
                for (key, value) in &table.entries {
                    let RawKey::Name(name) = key else {
                        return Err(
                            "a table mixing list items and named keys cannot be JSON".into()
                        );
                    };
                    object.insert(name.clone(), to_json(value)?);
                }
                J::Object(object)
            }
        }
        other => {
            return Err(format!(
                "a {} cannot be compared with JSON",
                other.type_name()
            ))
        }
    })
}

/// `hooks = { script "name", function(r) ... end }` → `["script:name", "inline:2"]`. A script
/// used more than once is told apart by its position from the second use on:
/// `script:name`, `script:name@3`, so every assertion of a result has its own name.
fn hook_labels(raw: &Raw) -> Result<Vec<String>, Kind> {
    let Raw::Table(table) = raw else {
        return Err(wrong_type("hooks", "a list of functions", raw));
    };
    let items = table
        .sequence()
        .ok_or_else(|| wrong_type("hooks", "a list of functions", raw))?;
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Raw::Function(f) => Ok(match &f.script {
                Some(name) if seen.insert(name) => format!("script:{name}"),
                Some(name) => format!("script:{name}@{}", i + 1),
                None => format!("inline:{}", i + 1),
            }),
            other => Err(wrong_type(
                &format!("hooks[{}]", i + 1),
                "a function",
                other,
            )),
        })
        .collect()
}

fn read_pem(key: &'static str, raw: &Raw, base_dir: &Path) -> Result<Vec<u8>, Kind> {
    let text = raw
        .as_str()
        .ok_or_else(|| wrong_type(&format!("tls.{key}"), "a file path", raw))?;
    let path = base_dir.join(text);
    let bytes =
        super::files::read_limited(&path, super::files::MAX_PEM_FILE).map_err(|source| {
            Kind::TlsFile {
                key,
                path: path.clone(),
                source,
            }
        })?;
    if !bytes
        .windows(b"-----BEGIN ".len())
        .any(|w| w == b"-----BEGIN ")
    {
        return Err(Kind::TlsNotPem { key, path });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A site's problems stop at one past [`MAX_ERRORS`], the one that tells the report was cut.
    #[test]
    fn the_reporter_keeps_one_error_past_the_cap() {
        let location = Location {
            file: "sites.lua".into(),
            line: 1,
        };
        let mut errors = Vec::new();
        let mut rep = Reporter {
            errors: &mut errors,
            location: &location,
            subject: None,
        };
        for _ in 0..MAX_ERRORS + 5 {
            rep.push(Kind::Duplicate {
                first: location.clone(),
            });
        }
        assert_eq!(errors.len(), MAX_ERRORS + 1);
    }
    use crate::config::raw::FnRef;

    /// The `---@field` names of one `---@class` in the LuaLS definitions.
    fn luals_fields(class: &str) -> Vec<String> {
        let text = include_str!("../../scripts/sitewatch.d.lua");
        let header = format!("---@class {class}");
        let mut lines = text
            .lines()
            .skip_while(|line| line.split(':').next().map(str::trim_end) != Some(header.as_str()));
        assert!(lines.next().is_some(), "no {header} in sitewatch.d.lua");
        let mut fields: Vec<String> = lines
            .map_while(|line| line.strip_prefix("---@field "))
            .filter_map(|field| field.split_whitespace().next())
            // `name?`, and `["for"]?` for keys that are Lua keywords.
            .map(|name| {
                let name = name.trim_end_matches('?');
                let name = name.strip_prefix("[\"").unwrap_or(name);
                name.strip_suffix("\"]").unwrap_or(name).to_string()
            })
            .collect();
        fields.sort();
        fields
    }

    fn sorted(keys: &[&str]) -> Vec<String> {
        let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        keys.sort();
        keys
    }

    #[test]
    fn sites_sharing_a_pattern_get_working_regexes_and_nothing_is_kept_after_validation() {
        let text = r#"
            defaults { expect = { body = "ab+c" } }
            site { name = "a", url = "http://a.test/" }
            site { name = "b", url = "http://b.test/", expect = { body_not = "ab+c" } }
            site { name = "c", url = "http://c.test/", expect = { body = "^x$" } }
        "#;
        let config =
            crate::config::load_str(Path::new("sites.lua"), text, Path::new("scripts")).unwrap();
        let body = |i: usize| config.sites[i].expect.body.as_ref().unwrap();
        assert!(body(0).is_match("xabbbcx") && !body(0).is_match("ac"));
        assert!(body(1).is_match("abc"));
        let body_not = config.sites[1].expect.body_not.as_ref().unwrap();
        assert!(body_not.is_match("abbc") && !body_not.is_match("x"));
        assert!(body(2).is_match("x") && !body(2).is_match("abc"));
        assert_eq!(COMPILED.with(|compiled| compiled.borrow().len()), 0);
        // A pattern that does not compile is refused wherever it appears, shared or not.
        let bad = r#"
            site { name = "a", url = "http://a.test/", expect = { body = "(" } }
            site { name = "b", url = "http://b.test/", expect = { body = "(" } }
        "#;
        let errors =
            crate::config::load_str(Path::new("sites.lua"), bad, Path::new("scripts")).unwrap_err();
        assert_eq!(
            errors.to_string().matches("expect.body").count(),
            2,
            "{errors}"
        );
    }

    #[test]
    fn sites_with_equal_parts_share_them_and_different_parts_stay_apart() {
        let text = r#"
            defaults { expect = { status = 200, body = "ok" }, request = { headers = { ["x-a"] = "1" } } }
            for i = 1, 3 do site { name = "loop" .. i, url = "http://l.test/" .. i } end
            site { name = "regex", url = "http://r.test/", expect = { body = "ok$" } }
            site { name = "json", url = "http://j.test/", expect = { json = { ["$.a"] = 1 } } }
            site { name = "json2", url = "http://j.test/", expect = { json = { ["$.b"] = 1 } } }
            site { name = "header", url = "http://h.test/", request = { headers = { ["x-a"] = "2" } } }
            site { name = "slo1", url = "http://s.test/", slo = { target = 99.9 } }
            site { name = "slo2", url = "http://s.test/2", slo = { target = 99.9 } }
            site { name = "slo3", url = "http://s.test/3", slo = { target = 99.5 } }
        "#;
        let config =
            crate::config::load_str(Path::new("sites.lua"), text, Path::new("scripts")).unwrap();
        let site = |name: &str| config.sites.iter().find(|s| s.name == name).unwrap();
        let (l1, l3) = (site("loop1"), site("loop3"));
        assert!(Arc::ptr_eq(&l1.expect, &l3.expect));
        assert!(Arc::ptr_eq(&l1.request, &l3.request));
        assert!(Arc::ptr_eq(&l1.tls, &site("header").tls));
        assert!(Arc::ptr_eq(&l1.alert, &site("slo3").alert));
        // Parts that differ only in a pattern, a JSONPath or a header value are not merged.
        assert!(!Arc::ptr_eq(&l1.expect, &site("regex").expect));
        assert_eq!(site("regex").expect.body.as_ref().unwrap().as_str(), "ok$");
        let (j1, j2) = (site("json"), site("json2"));
        assert!(!Arc::ptr_eq(&j1.expect, &j2.expect));
        assert_eq!(j2.expect.json[0].path, "$.b");
        assert!(!Arc::ptr_eq(&l1.request, &site("header").request));
        assert_eq!(site("header").request.headers[0].1, "2");
        let slo = |name: &str| site(name).slo.clone().unwrap();
        assert!(Arc::ptr_eq(&slo("slo1"), &slo("slo2")));
        assert!(!Arc::ptr_eq(&slo("slo1"), &slo("slo3")));
        assert_eq!(slo("slo3").target_pct, 99.5);
    }

    #[test]
    fn accepted_keys_match_the_luals_definitions() {
        let mut site = luals_fields("sitewatch.Settings");
        site.extend(luals_fields("sitewatch.Site"));
        site.sort();
        assert_eq!(sorted(SITE_KEYS), site, "site{{}} keys vs sitewatch.d.lua");
        assert_eq!(
            sorted(DEFAULTS_KEYS),
            luals_fields("sitewatch.Settings"),
            "defaults{{}}"
        );
        assert_eq!(
            sorted(EXPECT_KEYS),
            luals_fields("sitewatch.Expect"),
            "expect"
        );
        assert_eq!(
            sorted(REQUEST_KEYS),
            luals_fields("sitewatch.Request"),
            "request"
        );
        assert_eq!(sorted(TLS_KEYS), luals_fields("sitewatch.Tls"), "tls");
        assert_eq!(sorted(SLO_KEYS), luals_fields("sitewatch.Slo"), "slo");
        assert_eq!(sorted(ALERT_KEYS), luals_fields("sitewatch.Alert"), "alert");
        assert_eq!(
            sorted(FLAP_KEYS),
            luals_fields("sitewatch.Flap"),
            "alert.flap"
        );
        assert_eq!(
            sorted(NOTIFIER_KEYS),
            luals_fields("sitewatch.Notifier"),
            "notifier"
        );
        assert_eq!(
            sorted(MAINTENANCE_KEYS),
            luals_fields("sitewatch.Maintenance"),
            "maintenance{{}}"
        );
    }

    fn s(text: &str) -> Raw {
        Raw::Str(text.as_bytes().to_vec())
    }

    fn table(entries: Vec<(&str, Raw)>) -> Raw {
        Raw::Table(RawTable {
            entries: entries
                .into_iter()
                .map(|(k, v)| (RawKey::Name(k.to_string()), v))
                .collect(),
        })
    }

    fn list(items: Vec<Raw>) -> Raw {
        Raw::Table(RawTable {
            entries: items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (RawKey::Index(i as i64 + 1), v))
                .collect(),
        })
    }

    #[test]
    fn statuses_table() {
        let ok: Vec<(Raw, Vec<StatusMatcher>)> = vec![
            (Raw::Int(200), vec![StatusMatcher::Exact(200)]),
            (Raw::Num(204.0), vec![StatusMatcher::Exact(204)]),
            (s("2xx"), vec![StatusMatcher::Class(2)]),
            (
                list(vec![s("2xx"), Raw::Int(404)]),
                vec![StatusMatcher::Class(2), StatusMatcher::Exact(404)],
            ),
        ];
        for (raw, want) in ok {
            assert_eq!(statuses("expect.status", &raw).unwrap(), want, "{raw:?}");
        }
        let bad = [
            (Raw::Int(700), "from 100 to 599"),
            (Raw::Num(200.5), "whole number"),
            (s("2xxx"), "class"),
            (list(vec![]), "empty"),
            (Raw::Bool(true), "must be a status"),
            (table(vec![("a", Raw::Int(200))]), "list of statuses"),
        ];
        for (raw, want) in bad {
            let err = statuses("expect.status", &raw).unwrap_err().to_string();
            assert!(err.contains(want), "{raw:?}: {err}");
        }
    }

    #[test]
    fn urls() {
        let cases = [
            ("https://example.com/", None),
            ("http://10.0.0.1:8080/health", None),
            ("ftp://example.com/", Some("not http or https")),
            ("example.com", Some("relative URL without a base")),
            ("https://", Some("empty host")),
            ("http://exa mple.com", Some("invalid")),
            ("http://user:pass@a.example/", Some("contains credentials")),
            ("http://user@a.example/", Some("contains credentials")),
            ("http://:pass@a.example/", Some("contains credentials")),
        ];
        for (text, want) in cases {
            match (site_url(&s(text)), want) {
                (Ok(_), None) => {}
                (Err(e), Some(want)) => assert!(e.to_string().contains(want), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
        // Length: up to MAX_URL_LEN bytes.
        let url = |len: usize| format!("https://a.example/{}", "x".repeat(len - 18));
        assert!(site_url(&s(&url(MAX_URL_LEN))).is_ok());
        for len in [MAX_URL_LEN + 1, MAX_URL_LEN + 100] {
            let err = site_url(&s(&url(len))).unwrap_err().to_string();
            assert!(err.contains("longer than 4096 bytes"), "{len}: {err}");
        }
    }

    #[test]
    fn userinfo_is_redacted() {
        let cases = [
            ("http://user:pass@a.example/x@y", "http://***@a.example/x@y"),
            (
                "https://u:p@b@c.example:8080?q=1",
                "https://***@c.example:8080?q=1",
            ),
            ("https://a.example/", "https://a.example/"),
            ("user:pass@host", "***@host"),
            (
                "https://u:hunter2@exa mple.com/",
                "https://***@exa mple.com/",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(redact_userinfo(text), want, "{text}");
        }
    }

    #[test]
    fn durations_and_sizes_from_lua_values() {
        assert_eq!(
            duration("interval", &s("1m30s")).unwrap(),
            Duration::from_secs(90)
        );
        assert!(duration("interval", &Raw::Int(10))
            .unwrap_err()
            .to_string()
            .contains("needs a unit"));
        assert!(duration("interval", &Raw::Bool(true))
            .unwrap_err()
            .to_string()
            .contains("must be a duration"));
        assert_eq!(size("body_cap", &Raw::Int(1024)).unwrap(), 1024);
        assert_eq!(size("body_cap", &s("2MiB")).unwrap(), 2 << 20);
        assert!(size("body_cap", &Raw::Int(0))
            .unwrap_err()
            .to_string()
            .contains("greater than zero"));
        assert!(size("body_cap", &s("12"))
            .unwrap_err()
            .to_string()
            .contains("missing unit"));
    }

    #[test]
    fn bounded_ints() {
        let cases = [
            (Raw::Int(0), Ok(0)),
            (Raw::Int(3), Ok(3)),
            (Raw::Num(2.0), Ok(2)),
            (Raw::Int(11), Err("between 0 and 10")),
            (Raw::Int(-1), Err("between 0 and 10")),
            (Raw::Num(1.5), Err("whole number")),
            (s("1"), Err("must be a number")),
        ];
        for (raw, want) in cases {
            let got = bounded_int("retries", &raw, MAX_RETRIES).map_err(|e| e.to_string());
            match (got, want) {
                (Ok(n), Ok(w)) => assert_eq!(n, w),
                (Err(e), Err(w)) => assert!(e.contains(w), "{raw:?}: {e}"),
                (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn json_values() {
        let cases = [
            (s("UP"), Ok(serde_json::json!("UP"))),
            (Raw::Int(3), Ok(serde_json::json!(3))),
            (Raw::Num(1.5), Ok(serde_json::json!(1.5))),
            (Raw::Bool(true), Ok(serde_json::json!(true))),
            (Raw::Null, Ok(serde_json::Value::Null)),
            (
                list(vec![Raw::Int(1), s("a")]),
                Ok(serde_json::json!([1, "a"])),
            ),
            (list(vec![]), Ok(serde_json::json!([]))),
            (
                table(vec![("a", table(vec![("b", Raw::Int(1))]))]),
                Ok(serde_json::json!({"a": {"b": 1}})),
            ),
            (Raw::Num(f64::NAN), Err("cannot be represented")),
            (
                Raw::Function(FnRef {
                    id: 0,
                    script: None,
                }),
                Err("a function cannot"),
            ),
        ];
        for (raw, want) in cases {
            match (to_json(&raw), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(e), Err(want)) => assert!(e.contains(want), "{e}"),
                (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn hook_label_rules() {
        let script = Raw::Function(FnRef {
            id: 0,
            script: Some("json_status".into()),
        });
        let inline = Raw::Function(FnRef {
            id: 1,
            script: None,
        });
        assert_eq!(
            hook_labels(&list(vec![script.clone(), inline.clone()])).unwrap(),
            ["script:json_status", "inline:2"]
        );
        // The same script twice: each assertion keeps a name of its own.
        assert_eq!(
            hook_labels(&list(vec![script.clone(), inline, script.clone(), script])).unwrap(),
            [
                "script:json_status",
                "inline:2",
                "script:json_status@3",
                "script:json_status@4"
            ]
        );
        let err = hook_labels(&list(vec![Raw::Int(1)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("hooks[1] must be a function"), "{err}");
    }

    #[test]
    fn every_day_lists() {
        use Weekday::*;
        let ok: [(Raw, Vec<Weekday>); 4] = [
            (s("Sun"), vec![Sun]),
            (s("day"), ALL_DAYS.to_vec()),
            (
                list(vec![s("sun"), s("Saturday"), s("Sat")]),
                vec![Sat, Sun],
            ),
            (list(vec![s("Fri"), s("Mon")]), vec![Mon, Fri]),
        ];
        for (raw, want) in ok {
            assert_eq!(weekdays(&raw).unwrap(), want, "{raw:?}");
        }
        let bad = [
            s("Son"),
            s("days"),
            list(vec![]),
            list(vec![s("day")]),
            list(vec![s("Mon"), Raw::Int(2)]),
            table(vec![("Mon", Raw::Bool(true))]),
            Raw::Int(7),
        ];
        for raw in bad {
            assert!(weekdays(&raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn alert_names() {
        let cases = [
            (s("ops"), None),
            (s("db-sunday.v2_x"), None),
            (s(&"n".repeat(MAX_ALERT_NAME_LEN)), None),
            (
                s(&"n".repeat(MAX_ALERT_NAME_LEN + 1)),
                Some("longer than 64 bytes"),
            ),
            (s(""), Some("it is empty")),
            (s("a b"), Some("letters, digits")),
            (s("ops/1"), Some("letters, digits")),
            (s("café"), Some("letters, digits")),
            (Raw::Int(1), Some("notifier name must be a string")),
        ];
        for (raw, want) in cases {
            match (alert_name("notifier", &raw), want) {
                (Ok(_), None) => {}
                (Err(e), Some(want)) => assert!(e.to_string().contains(want), "{raw:?}: {e}"),
                (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// What one validation compiled is let go when it ends, not kept by the thread.
    #[test]
    fn compiled_regexes_are_shared_then_let_go() {
        let size = || COMPILED.with(|compiled| compiled.borrow().len());
        let guard = CompiledRegexes::start();
        let first = regex("expect.body", &s("a+b")).unwrap();
        let again = regex("expect.body_not", &s("a+b")).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        regex("expect.body", &s("c")).unwrap();
        assert_eq!(size(), 2);
        drop(guard);
        assert_eq!(size(), 0);
    }

    #[test]
    fn site_name_lengths() {
        for (len, ok) in [
            (MAX_SITE_NAME_LEN, true),
            (MAX_SITE_NAME_LEN + 1, false),
            (MAX_SITE_NAME_LEN + 50, false),
        ] {
            let result = site_name(&s(&"n".repeat(len)));
            assert_eq!(result.is_ok(), ok, "{len}: {result:?}");
        }
    }

    #[test]
    fn default_timeouts() {
        let cases = [(60, 10_000), (11, 10_000), (10, 5_000), (4, 2_000)];
        for (interval, want_ms) in cases {
            assert_eq!(
                default_timeout(Duration::from_secs(interval)),
                Duration::from_millis(want_ms),
                "{interval}s"
            );
        }
    }
}
