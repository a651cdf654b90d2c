//! The check result: what one scheduled check of one site produced.
//!
//! This is the wire schema shared by both halves of the pipeline: the producer side builds a
//! [`CheckResult`] from a probe and its assertions and publishes it as JSON to Kafka; the
//! consumer side decodes it and stores it in PostgreSQL. Nothing else crosses that boundary.
//! Every field is documented for operators in `docs/result-schema.md`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the JSON layout of [`CheckResult`]; also sent as a Kafka header so a consumer can
/// quarantine messages from a newer producer instead of misreading them.
pub const SCHEMA_VERSION: u32 = 1;

/// Kafka header carrying [`SCHEMA_VERSION`], so a consumer can route by version before parsing.
pub const SCHEMA_HEADER: &str = "schema-version";

/// Cuts `text` to at most `max` bytes (on a character boundary), marking the cut with `...`:
/// how every text a server or a hook controls is kept small in a result.
pub fn shorten(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
}

/// Replaces each NUL character of `text` with U+FFFD. PostgreSQL stores NUL in neither `text`
/// nor `jsonb`, so a result quoting one (a hook's reason, a metric name, a server's header) would
/// be refused and end as a dead letter instead of a row.
pub fn replace_nul(text: &mut String) {
    if text.contains('\0') {
        *text = text.replace('\0', "\u{FFFD}");
    }
}

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every assertion passed.
    Up,
    /// Every hard assertion passed, but at least one warning assertion did not.
    Degraded,
    /// The site could not be reached, or a hard assertion failed.
    Down,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Up => "up",
            Outcome::Degraded => "degraded",
            Outcome::Down => "down",
        }
    }
}

/// Milliseconds spent in each phase of the last attempt's request chain (summed over redirect
/// hops). `None` means the phase never happened: no TLS on plain http, no first byte after a
/// refused connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub dns_ms: Option<f64>,
    pub connect_ms: Option<f64>,
    pub tls_ms: Option<f64>,
    pub ttfb_ms: Option<f64>,
    pub transfer_ms: Option<f64>,
    /// Wall-clock time of the attempt, from the first DNS lookup to the last body byte or error.
    pub total_ms: f64,
}

/// Why a check is not `up`, classified so operators can alert on the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The host name did not resolve.
    Dns,
    /// The TCP connection was refused, reset or unreachable.
    Connect,
    /// The TLS handshake failed: expired, untrusted or wrong-host certificate, protocol error.
    Tls,
    /// The site's timeout elapsed; [`Failure::phase`] says where.
    Timeout,
    /// The server broke the HTTP protocol (malformed response, connection closed mid-response).
    Http,
    /// Redirects formed a loop or exceeded the site's redirect limit.
    RedirectLoop,
    /// A response arrived but an assertion (built-in or hook) failed or warned.
    Assertion,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Dns => "dns",
            FailureKind::Connect => "connect",
            FailureKind::Tls => "tls",
            FailureKind::Timeout => "timeout",
            FailureKind::Http => "http",
            FailureKind::RedirectLoop => "redirect_loop",
            FailureKind::Assertion => "assertion",
        }
    }
}

/// The phase of a request in which a timeout happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Dns,
    Connect,
    Tls,
    /// Waiting for the response head after the request was sent.
    Ttfb,
    /// Reading the body.
    Transfer,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Dns => "dns",
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Ttfb => "ttfb",
            Phase::Transfer => "transfer",
        }
    }
}

/// Present whenever the outcome is not `up`: the first reason, classified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    /// For `timeout`: the phase that was running when the deadline passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    pub message: String,
}

/// What a failed assertion does to the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// A failure makes the check `down`.
    Fail,
    /// A failure makes the check `degraded` (e.g. `warn_time`, a hook returning "degraded").
    Warn,
}

/// One expectation checked against a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssertionResult {
    /// `status`, `body`, `body_not`, `max_time`, `warn_time`, `cert_days`, `max_body`,
    /// `header:<name>`, `json:<path>`, or `hook:<n>` / `hook:<script>` for Lua hooks.
    pub name: String,
    pub ok: bool,
    pub level: Level,
    pub expected: String,
    pub actual: String,
    /// A human explanation when `ok` is false (hook reasons land here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One check of one site. Built by the producer, published to Kafka, stored by the consumer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Always [`SCHEMA_VERSION`] when produced by this build.
    pub schema: u32,
    /// UUID v7 assigned when the check was scheduled: time-ordered, and the storage key that
    /// makes delivery idempotent.
    pub id: Uuid,
    pub site: String,
    pub url: String,
    /// The URL that answered after following redirects (`None` when no response arrived).
    #[serde(default)]
    pub final_url: Option<String>,
    /// When the scheduler meant the check to start.
    pub scheduled_at: DateTime<Utc>,
    /// When the first attempt actually started; `started_at - scheduled_at` is schedule lag.
    pub started_at: DateTime<Utc>,
    pub outcome: Outcome,
    /// HTTP status of the final response of the last attempt.
    #[serde(default)]
    pub status: Option<u16>,
    pub timings: Timings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    pub assertions: Vec<AssertionResult>,
    /// Numbers reported by hooks (`metrics = { name = number }`).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Body bytes read (after decompression), at most the body cap.
    pub body_bytes: u64,
    /// True when the body was larger than the cap and reading stopped there.
    pub body_truncated: bool,
    /// Expiry of the leaf TLS certificate, for https sites whose handshake completed.
    #[serde(default)]
    pub cert_not_after: Option<DateTime<Utc>>,
    /// True when the site disabled certificate verification (`tls.insecure = true`).
    #[serde(default)]
    pub tls_insecure: bool,
    /// Hash of sites.lua and the scripts it loaded: which configuration produced this result.
    pub config_version: String,
    /// Attempts made (1 + retries used).
    pub attempts: u32,
    /// Host name of the machine that ran the probe.
    pub probe_host: String,
    /// Name of the maintenance window the check was probed in (absent: none). Rollups count
    /// such checks apart and SLOs leave them out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<String>,
}

impl CheckResult {
    /// The Kafka payload: JSON, as documented in `docs/result-schema.md`.
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Decodes one message into a result, or gives the reason it goes to `dead_letters`: not JSON,
    /// not a [`CheckResult`], or a schema version (header or field) other than [`SCHEMA_VERSION`].
    pub fn decode(
        payload: Option<&[u8]>,
        schema_header: Option<&[u8]>,
    ) -> Result<CheckResult, String> {
        if let Some(value) = schema_header {
            let version = String::from_utf8_lossy(value);
            if version.trim() != SCHEMA_VERSION.to_string() {
                return Err(format!(
                    "{SCHEMA_HEADER} header {version:?} is not supported (this consumer reads {SCHEMA_VERSION})"
                ));
            }
        }
        let payload = match payload {
            Some(payload) if !payload.is_empty() => payload,
            _ => return Err("empty message: no payload".into()),
        };
        let schema_error = |version: &dyn std::fmt::Display| {
            format!(
                "schema version {version} is not supported (this consumer reads {SCHEMA_VERSION})"
            )
        };
        match serde_json::from_slice::<CheckResult>(payload) {
            Ok(result) if result.schema == SCHEMA_VERSION => Ok(result),
            Ok(result) => Err(schema_error(&result.schema)),
            // Slow path, bad messages only: say precisely what is wrong.
            Err(shape) => match serde_json::from_slice::<serde_json::Value>(payload) {
                Err(syntax) => Err(format!("invalid JSON: {syntax}")),
                Ok(value) => match value.get("schema") {
                    Some(version) if *version != serde_json::json!(SCHEMA_VERSION) => {
                        Err(schema_error(version))
                    }
                    _ => Err(format!("not a check result: {shape}")),
                },
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(schema: u32) -> CheckResult {
        CheckResult {
            schema,
            id: Uuid::now_v7(),
            site: "example".into(),
            url: "https://example.com/".into(),
            final_url: None,
            scheduled_at: Utc::now(),
            started_at: Utc::now(),
            outcome: Outcome::Up,
            status: Some(200),
            timings: Timings {
                total_ms: 12.0,
                ..Timings::default()
            },
            failure: None,
            assertions: Vec::new(),
            metrics: BTreeMap::new(),
            body_bytes: 10,
            body_truncated: false,
            cert_not_after: None,
            tls_insecure: false,
            config_version: "v".into(),
            attempts: 1,
            probe_host: "h".into(),
            maintenance: None,
        }
    }

    #[test]
    fn decode_accepts_current_schema_and_explains_rejections() {
        let good = serde_json::to_vec(&sample(1)).unwrap();
        let future = serde_json::to_vec(&sample(2)).unwrap();
        let future_shape = br#"{"schema": 2, "id": "x", "checks": []}"#.to_vec();
        let wrong_shape = br#"{"hello": "world"}"#.to_vec();
        let garbage = vec![0xff, 0x00, 0x13, 0x37];
        type Case<'a> = (
            &'a str,
            Option<&'a [u8]>,
            Option<&'a [u8]>,
            Result<(), &'a str>,
        );
        let cases: [Case<'_>; 9] = [
            ("current, no header", Some(&good), None, Ok(())),
            ("current, header 1", Some(&good), Some(b"1"), Ok(())),
            (
                "header 2",
                Some(&good),
                Some(b"2"),
                Err("schema-version header \"2\" is not supported"),
            ),
            (
                "schema 2 field",
                Some(&future),
                None,
                Err("schema version 2 is not supported"),
            ),
            (
                "schema 2, new shape",
                Some(&future_shape),
                None,
                Err("schema version 2 is not supported"),
            ),
            (
                "wrong shape",
                Some(&wrong_shape),
                None,
                Err("not a check result"),
            ),
            ("random bytes", Some(&garbage), None, Err("invalid JSON")),
            ("no payload", None, None, Err("empty message")),
            ("empty payload", Some(b""), None, Err("empty message")),
        ];
        for (name, payload, header, expected) in cases {
            match (CheckResult::decode(payload, header), expected) {
                (Ok(_), Ok(())) => {}
                (Err(reason), Err(want)) => assert!(reason.contains(want), "{name}: {reason}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }
}
