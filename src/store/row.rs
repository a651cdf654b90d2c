//! One `check_results` row: its columns (name, SQL type, Rust type) declared once in
//! [`check_row!`], which derives the row struct, the COPY column list, the COPY types and the
//! values in that order — one table, so the three can never disagree. [`CheckRow::from_result`]
//! maps a decoded result to a row and rejects what PostgreSQL would.

use chrono::{DateTime, Datelike, Utc};
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use crate::result::{CheckResult, Phase};

/// Declares the columns of `check_results` the consumer writes, in COPY order.
macro_rules! check_row {
    ($first:ident: $first_ty:ty => $first_sql:ident $(, $field:ident: $ty:ty => $sql:ident)* $(,)?) => {
        /// One `check_results` row: the [`CheckResult`] fields as typed columns plus where the
        /// message was read from. Built by [`CheckRow::from_result`].
        #[derive(Debug, Clone, PartialEq)]
        pub struct CheckRow {
            pub $first: $first_ty,
            $(pub $field: $ty,)*
        }

        /// The `check_results` columns the consumer writes, in COPY order.
        pub const COLUMNS: &str = concat!(stringify!($first) $(, ", ", stringify!($field))*);

        /// How many [`COLUMNS`] there are.
        pub const COLUMN_COUNT: usize = [stringify!($first) $(, stringify!($field))*].len();

        /// The SQL type of each of [`COLUMNS`], in order.
        pub const COPY_TYPES: &[Type] = &[Type::$first_sql $(, Type::$sql)*];

        impl CheckRow {
            /// The row's values in [`COLUMNS`] order, typed as [`COPY_TYPES`].
            pub fn values(&self) -> [&(dyn ToSql + Sync); COLUMN_COUNT] {
                [&self.$first $(, &self.$field)*]
            }
        }
    };
}

check_row! {
    id: Uuid => UUID,
    scheduled_at: DateTime<Utc> => TIMESTAMPTZ,
    started_at: DateTime<Utc> => TIMESTAMPTZ,
    total_ms: f64 => FLOAT8,
    body_bytes: i64 => INT8,
    kafka_offset: i64 => INT8,
    dns_ms: Option<f64> => FLOAT8,
    connect_ms: Option<f64> => FLOAT8,
    tls_ms: Option<f64> => FLOAT8,
    ttfb_ms: Option<f64> => FLOAT8,
    transfer_ms: Option<f64> => FLOAT8,
    cert_not_after: Option<DateTime<Utc>> => TIMESTAMPTZ,
    attempts: i32 => INT4,
    kafka_partition: i32 => INT4,
    status: Option<i16> => INT2,
    body_truncated: bool => BOOL,
    tls_insecure: bool => BOOL,
    site: String => TEXT,
    url: String => TEXT,
    final_url: Option<String> => TEXT,
    outcome: &'static str => TEXT,
    failure_kind: Option<&'static str> => TEXT,
    failure_phase: Option<&'static str> => TEXT,
    failure_message: Option<String> => TEXT,
    config_version: String => TEXT,
    probe_host: String => TEXT,
    assertions: JsonbText => JSONB,
    metrics: JsonbText => JSONB,
    maintenance: Option<String> => TEXT,
}

/// Why a decoded result cannot become a row. The message goes to `dead_letters` with this reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    #[error("{field} contains a NUL character, which PostgreSQL text and jsonb cannot store")]
    Nul { field: &'static str },
    #[error("{field} = {value} does not fit the column type {column_type}")]
    OutOfRange {
        field: &'static str,
        value: String,
        column_type: &'static str,
    },
    #[error("{field} = {value} is outside the years 1..=9999 sitewatch stores")]
    Timestamp {
        field: &'static str,
        value: DateTime<Utc>,
    },
    #[error("{field} cannot be encoded as JSON: {reason}")]
    Json { field: &'static str, reason: String },
    #[error("site name is {len} bytes; at most {MAX_SITE_BYTES} can be indexed")]
    SiteTooLong { len: usize },
}

/// Longest site name stored: `site` is a btree index key, and PostgreSQL refuses index rows
/// over about 2.7 KB. sites.lua allows far shorter names; this guards against what arrives on
/// the topic from elsewhere.
pub const MAX_SITE_BYTES: usize = 1024;

impl CheckRow {
    /// Maps a decoded result read at `partition`/`offset` to a row, or says why it cannot be one.
    /// Takes the result by value: its texts move into the row instead of being copied.
    /// Long on purpose (over 80 lines): the checks of what PostgreSQL would refuse, then the
    /// column mapping, field by field.
    pub fn from_result(
        result: CheckResult,
        partition: i32,
        offset: i64,
    ) -> Result<CheckRow, RowError> {
        if result.site.len() > MAX_SITE_BYTES {
            return Err(RowError::SiteTooLong {
                len: result.site.len(),
            });
        }
        for (field, text) in [
            ("site", Some(result.site.as_str())),
            ("url", Some(result.url.as_str())),
            ("final_url", result.final_url.as_deref()),
            ("config_version", Some(result.config_version.as_str())),
            ("probe_host", Some(result.probe_host.as_str())),
            ("maintenance", result.maintenance.as_deref()),
            (
                "failure.message",
                result.failure.as_ref().map(|f| f.message.as_str()),
            ),
        ] {
            no_nul(field, text)?;
        }
        for assertion in &result.assertions {
            no_nul("assertions[].name", Some(&assertion.name))?;
            no_nul("assertions[].expected", Some(&assertion.expected))?;
            no_nul("assertions[].actual", Some(&assertion.actual))?;
            no_nul("assertions[].reason", assertion.reason.as_deref())?;
        }
        for name in result.metrics.keys() {
            no_nul("metrics key", Some(name))?;
        }
        for (field, at) in [
            ("scheduled_at", Some(result.scheduled_at)),
            ("started_at", Some(result.started_at)),
            ("cert_not_after", result.cert_not_after),
        ] {
            if let Some(value) = at {
                if !(1..=9999).contains(&value.year()) {
                    return Err(RowError::Timestamp { field, value });
                }
            }
        }
        let json = |field: &'static str, value: Result<String, serde_json::Error>| {
            value.map(JsonbText).map_err(|error| RowError::Json {
                field,
                reason: error.to_string(),
            })
        };
        Ok(CheckRow {
            id: result.id,
            scheduled_at: result.scheduled_at,
            started_at: result.started_at,
            total_ms: result.timings.total_ms,
            body_bytes: fit("body_bytes", result.body_bytes, "bigint")?,
            kafka_offset: offset,
            dns_ms: result.timings.dns_ms,
            connect_ms: result.timings.connect_ms,
            tls_ms: result.timings.tls_ms,
            ttfb_ms: result.timings.ttfb_ms,
            transfer_ms: result.timings.transfer_ms,
            cert_not_after: result.cert_not_after,
            attempts: fit("attempts", result.attempts, "integer")?,
            kafka_partition: partition,
            status: result
                .status
                .map(|status| fit("status", status, "smallint"))
                .transpose()?,
            body_truncated: result.body_truncated,
            tls_insecure: result.tls_insecure,
            site: result.site,
            url: result.url,
            final_url: result.final_url,
            outcome: result.outcome.as_str(),
            failure_kind: result.failure.as_ref().map(|f| f.kind.as_str()),
            failure_phase: result
                .failure
                .as_ref()
                .and_then(|f| f.phase)
                .map(Phase::as_str),
            failure_message: result.failure.map(|f| f.message),
            config_version: result.config_version,
            probe_host: result.probe_host,
            maintenance: result.maintenance,
            assertions: json("assertions", serde_json::to_string(&result.assertions))?,
            metrics: json("metrics", serde_json::to_string(&result.metrics))?,
        })
    }
}

fn no_nul(field: &'static str, text: Option<&str>) -> Result<(), RowError> {
    match text {
        Some(text) if text.contains('\0') => Err(RowError::Nul { field }),
        _ => Ok(()),
    }
}

fn fit<T, U>(field: &'static str, value: T, column_type: &'static str) -> Result<U, RowError>
where
    T: Copy + std::fmt::Display,
    U: TryFrom<T>,
{
    U::try_from(value).map_err(|_| RowError::OutOfRange {
        field,
        value: value.to_string(),
        column_type,
    })
}

/// A jsonb value already serialized as JSON text. Sent in jsonb's binary format (a version
/// byte, then the text) so rows skip building a `serde_json::Value` tree only to flatten it
/// again: the dearest step of row building in the ingest profile (docs/performance.md).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonbText(pub String);

/// jsonb's binary wire format version.
const JSONB_VERSION: u8 = 1;

impl tokio_postgres::types::ToSql for JsonbText {
    fn to_sql(
        &self,
        _ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[JSONB_VERSION]);
        out.extend_from_slice(self.0.as_bytes());
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSONB
    }

    tokio_postgres::types::to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;

    use super::*;
    use crate::result::{AssertionResult, Failure, Level, Outcome, Timings, SCHEMA_VERSION};

    fn sample() -> CheckResult {
        CheckResult {
            schema: SCHEMA_VERSION,
            id: Uuid::now_v7(),
            site: "example".into(),
            url: "https://example.com/".into(),
            final_url: Some("https://example.com/home".into()),
            scheduled_at: Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap(),
            started_at: Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 6).unwrap(),
            outcome: Outcome::Down,
            status: Some(503),
            timings: Timings {
                dns_ms: Some(1.5),
                connect_ms: Some(2.0),
                tls_ms: None,
                ttfb_ms: Some(30.0),
                transfer_ms: Some(4.0),
                total_ms: 40.0,
            },
            failure: Some(Failure {
                kind: crate::result::FailureKind::Timeout,
                phase: Some(Phase::Ttfb),
                message: "deadline".into(),
            }),
            assertions: vec![AssertionResult {
                name: "status".into(),
                ok: false,
                level: Level::Fail,
                expected: "200".into(),
                actual: "503".into(),
                reason: None,
            }],
            metrics: BTreeMap::from([("items".to_string(), 3.0)]),
            body_bytes: 1234,
            body_truncated: false,
            cert_not_after: None,
            tls_insecure: false,
            config_version: "abc".into(),
            attempts: 2,
            probe_host: "probe-1".into(),
            maintenance: None,
        }
    }

    #[test]
    fn result_maps_to_typed_columns() {
        let result = sample();
        let row = CheckRow::from_result(result.clone(), 3, 42).unwrap();
        assert_eq!(row.id, result.id);
        assert_eq!(row.outcome, "down");
        assert_eq!(row.status, Some(503));
        assert_eq!(row.failure_kind, Some("timeout"));
        assert_eq!(row.failure_phase, Some("ttfb"));
        assert_eq!(row.failure_message.as_deref(), Some("deadline"));
        assert_eq!(row.body_bytes, 1234);
        assert_eq!(row.attempts, 2);
        assert_eq!((row.kafka_partition, row.kafka_offset), (3, 42));
        assert_eq!(row.tls_ms, None);
        let metrics: serde_json::Value = serde_json::from_str(&row.metrics.0).unwrap();
        let assertions: serde_json::Value = serde_json::from_str(&row.assertions.0).unwrap();
        assert_eq!(metrics, serde_json::json!({"items": 3.0}));
        assert_eq!(assertions[0]["name"], "status");
        assert_eq!(row.values().len(), COPY_TYPES.len());
        assert_eq!(COLUMNS.split(',').count(), COPY_TYPES.len());
    }

    #[test]
    fn stored_spellings_match_the_wire() {
        for kind in [
            crate::result::FailureKind::Dns,
            crate::result::FailureKind::Connect,
            crate::result::FailureKind::Tls,
            crate::result::FailureKind::Timeout,
            crate::result::FailureKind::Http,
            crate::result::FailureKind::RedirectLoop,
            crate::result::FailureKind::Assertion,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        for phase in [
            Phase::Dns,
            Phase::Connect,
            Phase::Tls,
            Phase::Ttfb,
            Phase::Transfer,
        ] {
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str());
        }
    }

    #[test]
    fn unstorable_results_are_rejected_with_the_field() {
        type Edit = fn(&mut CheckResult);
        let cases: [(&str, Edit, &str); 6] = [
            (
                "nul in site",
                |r| r.site = "a\0b".into(),
                "site contains a NUL",
            ),
            (
                "nul in assertion",
                |r| r.assertions[0].actual = "\0".into(),
                "assertions[].actual contains a NUL",
            ),
            (
                "nul in metric name",
                |r| {
                    r.metrics.insert("x\0".into(), 1.0);
                },
                "metrics key contains a NUL",
            ),
            (
                "status beyond smallint",
                |r| r.status = Some(40000),
                "status = 40000 does not fit the column type smallint",
            ),
            (
                "body beyond bigint",
                |r| r.body_bytes = u64::MAX,
                "body_bytes = 18446744073709551615 does not fit",
            ),
            (
                "year out of range",
                |r| r.scheduled_at = Utc.with_ymd_and_hms(12000, 1, 1, 0, 0, 0).unwrap(),
                "scheduled_at = ",
            ),
        ];
        for (name, edit, expected) in cases {
            let mut result = sample();
            edit(&mut result);
            let error = CheckRow::from_result(result, 0, 0).unwrap_err();
            assert!(error.to_string().contains(expected), "{name}: {error}");
        }
    }
}
