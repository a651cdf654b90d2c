//! Validation: from the raw `site{}`/`defaults{}` declarations to typed [`Site`]s.
//!
//! Pure apart from reading TLS files: it walks the snapshots taken during evaluation, merges
//! `defaults{}` into each site (site keys win; `expect` keys win one by one), and reports every
//! problem with the declaration's `file:line`. A problem in a `defaults{}` value is reported once,
//! at the `defaults{}` line, not again for every site that inherits it.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use serde_json_path::JsonPath;
use url::Url;

use super::error::{one_line, ConfigError, ConfigErrorKind as Kind};
use super::eval::{Declaration, Evaluation};
use super::parse::{format_duration, parse_duration, parse_size, status_class, status_code};
use super::raw::{Raw, RawKey, RawTable};
use super::types::{
    Expect, HeaderExpectation, JsonExpectation, LatencyObjective, Location, Request, Site, Slo,
    StatusMatcher, TlsOptions, DEFAULT_BODY_CAP, DEFAULT_INTERVAL, DEFAULT_MAX_REDIRECTS,
    DEFAULT_SLO_WINDOW, DEFAULT_TIMEOUT,
};

/// Most retries a site may ask for; each one can take a whole timeout.
pub(crate) const MAX_RETRIES: i64 = 10;
/// Most redirects a site may allow.
pub(crate) const MAX_REDIRECTS_LIMIT: i64 = 100;
/// Longest site name: it is a Kafka key, a label in logs and a database column.
pub(crate) const MAX_SITE_NAME_LEN: usize = 128;

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
    "body_cap",
    "hooks",
    "slo",
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
    "body_cap",
    "hooks",
    "slo",
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
/// Percentiles a latency objective may name, with their quantile.
const LATENCY_KEYS: &[(&str, f64)] = &[
    ("p50", 0.5),
    ("p90", 0.9),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p99.9", 0.999),
];

/// Validates every declaration. Returns the sites that are valid and every error found.
pub(crate) fn validate(eval: &Evaluation, base_dir: &Path) -> (Vec<Site>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let defaults = eval.defaults.as_ref().map(|decl| {
        let mut rep = Reporter {
            errors: &mut errors,
            location: &decl.location,
            site: None,
        };
        check_keys(&decl.table, DEFAULTS_KEYS, "defaults", &mut rep);
        let layers = Layers {
            own: Some(&decl.table),
            inherited: None,
        };
        settings(layers, base_dir, &mut rep);
        &decl.table
    });

    let mut sites = Vec::with_capacity(eval.sites.len());
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
            site: name.clone(),
        };
        if let Some(name) = &name {
            match seen.get(name) {
                Some(first) => rep.push(Kind::Duplicate {
                    first: first.clone(),
                }),
                None => {
                    seen.insert(name.clone(), decl.location.clone());
                }
            }
        }
        let site = site(decl, defaults, base_dir, &mut rep);
        if errors.len() == before {
            sites.extend(site);
        }
    }
    (sites, errors)
}

/// Adds the declaration's location and site name to each problem.
struct Reporter<'a> {
    errors: &'a mut Vec<ConfigError>,
    location: &'a Location,
    site: Option<String>,
}

impl Reporter<'_> {
    fn push(&mut self, kind: Kind) {
        self.errors.push(ConfigError::new(
            Some(self.location.clone()),
            self.site.clone(),
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

    /// The layers of a nested table such as `expect`.
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
    body_cap: u64,
    hooks: Vec<String>,
}

fn site(
    decl: &Declaration,
    defaults: Option<&RawTable>,
    base_dir: &Path,
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
        Some(raw) => parse_url(raw).map_err(|kind| rep.push(kind)).ok(),
    };
    let layers = Layers {
        own: Some(table),
        inherited: defaults,
    };
    let settings = settings(layers, base_dir, rep);
    Some(Site {
        name: name?,
        url: url?,
        interval: settings.interval,
        timeout: settings.timeout,
        request: settings.request,
        tls: settings.tls,
        expect: settings.expect,
        retries: settings.retries,
        max_redirects: settings.max_redirects,
        body_cap: settings.body_cap,
        hooks: settings.hooks,
        slo: settings.slo,
        location: decl.location.clone(),
    })
}

fn settings(layers: Layers<'_>, base_dir: &Path, rep: &mut Reporter<'_>) -> Settings {
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
    let request = request(layers.nested("request"), rep);
    let tls = tls(layers.nested("tls"), base_dir, rep);

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
    let mut body_cap = layers
        .field("body_cap", rep, |raw| size("body_cap", raw))
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

    Settings {
        interval,
        timeout,
        expect,
        request,
        tls,
        retries,
        max_redirects,
        body_cap,
        hooks,
        slo,
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
        .field("max_body", rep, |raw| size("expect.max_body", raw))
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
    Ok(name.to_string())
}

fn parse_url(raw: &Raw) -> Result<Url, Kind> {
    let text = raw
        .as_str()
        .ok_or_else(|| wrong_type("url", "a string", raw))?;
    let invalid = |reason: String| Kind::Url {
        value: text.to_string(),
        reason,
    };
    let url = Url::parse(text).map_err(|e| invalid(e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(invalid(format!("scheme {other:?} is not http or https"))),
    }
    if !url.host_str().is_some_and(|host| !host.is_empty()) {
        return Err(invalid("no host".into()));
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

/// A whole number from 0 to `max`.
fn bounded_int(key: &str, raw: &Raw, max: i64) -> Result<u32, Kind> {
    let n = match raw {
        Raw::Int(_) | Raw::Num(_) => raw.as_int().ok_or_else(|| Kind::Number {
            key: key.to_string(),
            value: raw.show(),
            reason: "must be a whole number".into(),
        })?,
        other => return Err(wrong_type(key, "a number", other)),
    };
    if !(0..=max).contains(&n) {
        return Err(Kind::Number {
            key: key.to_string(),
            value: raw.show(),
            reason: format!("must be between 0 and {max}"),
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

fn regex(key: &str, raw: &Raw) -> Result<Regex, Kind> {
    let pattern = raw
        .as_str()
        .ok_or_else(|| wrong_type(key, "a regex string", raw))?;
    Regex::new(pattern).map_err(|e| Kind::Regex {
        key: key.to_string(),
        pattern: pattern.to_string(),
        message: one_line(&e.to_string()),
        source: Box::new(e),
    })
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
    let mut out = Vec::new();
    for (name, value) in named_entries("request.headers", raw, problems) {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Kind::HeaderName {
            key: "request.headers",
            name: name.to_string(),
        });
        let value = match value {
            Raw::Str(bytes) => HeaderValue::from_bytes(bytes).map_err(|_| Kind::HeaderValue {
                key: "request.headers",
                name: name.to_string(),
            }),
            other => Err(wrong_type(
                &format!("request.headers[{name:?}]"),
                "a string",
                other,
            )),
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

fn expect_json(raw: &Raw, problems: &mut Vec<Kind>) -> Vec<JsonExpectation> {
    let mut out = Vec::new();
    for (query, value) in named_entries("expect.json", raw, problems) {
        let path = JsonPath::parse(query).map_err(|e| Kind::JsonPath {
            query: query.to_string(),
            message: one_line(&e.to_string()),
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

/// `hooks = { script "name", function(r) ... end }` → `["script:name", "inline:2"]`.
fn hook_labels(raw: &Raw) -> Result<Vec<String>, Kind> {
    let Raw::Table(table) = raw else {
        return Err(wrong_type("hooks", "a list of functions", raw));
    };
    let items = table
        .sequence()
        .ok_or_else(|| wrong_type("hooks", "a list of functions", raw))?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Raw::Function(f) => Ok(match &f.script {
                Some(name) => format!("script:{name}"),
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
    let bytes = std::fs::read(&path).map_err(|source| Kind::TlsFile {
        key,
        path: path.clone(),
        source,
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
            .map(|name| name.trim_end_matches('?').to_string())
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
        ];
        for (text, want) in cases {
            match (parse_url(&s(text)), want) {
                (Ok(_), None) => {}
                (Err(e), Some(want)) => assert!(e.to_string().contains(want), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
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
            hook_labels(&list(vec![script, inline])).unwrap(),
            ["script:json_status", "inline:2"]
        );
        let err = hook_labels(&list(vec![Raw::Int(1)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("hooks[1] must be a function"), "{err}");
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
