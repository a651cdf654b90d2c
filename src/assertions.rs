//! Built-in expectations: pure functions from a response to one [`AssertionResult`] each.
//!
//! The check runner calls [`evaluate`] after a response arrived and before the Lua hooks; the
//! outcome of the check follows from the list (see [`outcome_of`]).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{Expect, StatusMatcher};
use crate::probe::Response;
use crate::result::{AssertionResult, Level, Outcome, Timings};

/// Longest `actual` value quoted in an assertion (a body excerpt, a header value).
const MAX_ACTUAL_CHARS: usize = 120;

/// Evaluates every built-in expectation of `expect` against a response, in a fixed order:
/// status, body, body_not, headers, json, max_time, warn_time, cert_days, max_body. Long on
/// purpose (over 80 lines): one short arm per expectation, in that documented order.
pub fn evaluate(
    expect: &Expect,
    response: &Response,
    timings: &Timings,
    now: DateTime<Utc>,
) -> Vec<AssertionResult> {
    let mut results = vec![status(&expect.status, response.status)];
    let body = String::from_utf8_lossy(&response.body);
    if let Some(pattern) = &expect.body {
        let found = pattern.is_match(&body);
        results.push(assertion(
            "body",
            found,
            Level::Fail,
            format!("body matches /{pattern}/"),
            if found {
                "matched".into()
            } else {
                "no match".into()
            },
        ));
    }
    if let Some(pattern) = &expect.body_not {
        let found = pattern.find(&body);
        results.push(assertion(
            "body_not",
            found.is_none(),
            Level::Fail,
            format!("body does not match /{pattern}/"),
            match found {
                Some(m) => format!("matched {:?}", excerpt(m.as_str())),
                None => "no match".into(),
            },
        ));
    }
    for header in &expect.headers {
        let values: Vec<&str> = response
            .headers
            .iter()
            .filter(|(name, _)| *name == header.name)
            .map(|(_, value)| value.as_str())
            .collect();
        // A repeated header (two Set-Cookie, Vary on two lines) passes when one of its values
        // matches, and shows that value; when none does, all of them.
        let matched = values.iter().find(|v| header.pattern.is_match(v));
        let ok = matched.is_some();
        let actual = match matched {
            Some(value) => excerpt(value),
            None if values.is_empty() => "absent".to_owned(),
            None => excerpt(&values.join(", ")),
        };
        results.push(assertion(
            &format!("header:{}", header.name),
            ok,
            Level::Fail,
            format!("matches /{}/", header.pattern),
            actual,
        ));
    }
    if !expect.json.is_empty() {
        let document: Result<serde_json::Value, _> = serde_json::from_slice(&response.body);
        for json in &expect.json {
            let name = format!("json:{}", json.path);
            let expected = match &json.equals {
                serde_json::Value::Array(items) if items.is_empty() => "[] or {}".to_owned(),
                equals => equals.to_string(),
            };
            let (ok, actual) = match &document {
                Err(error) => (false, format!("body is not JSON: {error}")),
                Ok(document) => match json.query.query(document).all().as_slice() {
                    [] => (false, "no match".to_owned()),
                    [one] => (json_matches(&json.equals, one), excerpt(&one.to_string())),
                    many => (
                        many.iter().all(|v| json_matches(&json.equals, v)),
                        excerpt(
                            &serde_json::Value::Array(many.iter().map(|v| (*v).clone()).collect())
                                .to_string(),
                        ),
                    ),
                },
            };
            results.push(assertion(&name, ok, Level::Fail, expected, actual));
        }
    }
    if let Some(limit) = expect.max_time {
        results.push(time_limit("max_time", limit, timings.total_ms, Level::Fail));
    }
    if let Some(limit) = expect.warn_time {
        results.push(time_limit(
            "warn_time",
            limit,
            timings.total_ms,
            Level::Warn,
        ));
    }
    if let Some(days) = expect.cert_days {
        results.push(cert_days(days, response, now));
    }
    if let Some(limit) = expect.max_body {
        let size = response.body.len() as u64;
        // The probe reads past max_body (the cap is always larger), so truncation alone proves
        // the body was too large.
        let ok = !response.body_truncated && size <= limit;
        let actual = if response.body_truncated {
            format!("more than {size} bytes")
        } else {
            format!("{size} bytes")
        };
        results.push(assertion(
            "max_body",
            ok,
            Level::Fail,
            format!("at most {limit} bytes"),
            actual,
        ));
    }
    results
}

/// `down` if any hard assertion failed, `degraded` if any warning did, else `up`.
pub fn outcome_of(assertions: &[AssertionResult]) -> Outcome {
    let failed = |level| assertions.iter().any(|a| !a.ok && a.level == level);
    if failed(Level::Fail) {
        Outcome::Down
    } else if failed(Level::Warn) {
        Outcome::Degraded
    } else {
        Outcome::Up
    }
}

/// One line naming what went wrong, for `failure.message` and the `check` table.
pub fn describe_failures(assertions: &[AssertionResult]) -> String {
    let mut failed: Vec<&AssertionResult> = assertions.iter().filter(|a| !a.ok).collect();
    // Hard failures first: they decided the outcome.
    failed.sort_by_key(|a| a.level == Level::Warn);
    failed
        .iter()
        .map(|a| match &a.reason {
            Some(reason) => format!("{}: {reason}", a.name),
            None => format!("{}: expected {}, got {}", a.name, a.expected, a.actual),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn status(accepted: &[StatusMatcher], status: u16) -> AssertionResult {
    let (ok, expected) = if accepted.is_empty() {
        (StatusMatcher::Class(2).matches(status), "2xx".to_owned())
    } else {
        (
            accepted.iter().any(|m| m.matches(status)),
            accepted
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
        )
    };
    assertion("status", ok, Level::Fail, expected, status.to_string())
}

fn time_limit(name: &str, limit: Duration, total_ms: f64, level: Level) -> AssertionResult {
    let limit_ms = limit.as_secs_f64() * 1000.0;
    assertion(
        name,
        total_ms <= limit_ms,
        level,
        format!("at most {limit_ms:.0} ms"),
        format!("{total_ms:.1} ms"),
    )
}

fn cert_days(days: u32, response: &Response, now: DateTime<Utc>) -> AssertionResult {
    let expected = format!("valid for at least {days} days");
    match &response.cert {
        None => assertion(
            "cert_days",
            false,
            Level::Fail,
            expected,
            "no TLS certificate".into(),
        ),
        Some(cert) => {
            let left = cert.days_left(now);
            assertion(
                "cert_days",
                left >= f64::from(days),
                Level::Fail,
                expected,
                format!(
                    "{left:.1} days left (expires {})",
                    cert.not_after.to_rfc3339()
                ),
            )
        }
    }
}

fn assertion(
    name: &str,
    ok: bool,
    level: Level,
    expected: String,
    actual: String,
) -> AssertionResult {
    AssertionResult {
        name: name.to_owned(),
        ok,
        level,
        expected,
        actual,
        reason: None,
    }
}

fn excerpt(text: &str) -> String {
    if text.chars().count() <= MAX_ACTUAL_CHARS {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(MAX_ACTUAL_CHARS).collect();
        format!("{cut}…")
    }
}

/// `actual` equals `expected`, where an empty array in `expected` — an empty Lua table, which is
/// one value for `[]` and `{}` alike (and which `json.encode` writes as `{}`) — also matches an
/// empty object, at any depth.
fn json_matches(expected: &serde_json::Value, actual: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (expected, actual) {
        (J::Array(e), J::Object(a)) => e.is_empty() && a.is_empty(),
        (J::Array(e), J::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| json_matches(e, a))
        }
        (J::Object(e), J::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(key, e)| a.get(key).is_some_and(|a| json_matches(e, a)))
        }
        (e, a) => e == a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HeaderExpectation, JsonExpectation};
    use crate::probe::CertInfo;
    use regex::Regex;
    use serde_json_path::JsonPath;

    fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            final_url: "http://127.0.0.1/".parse().unwrap(),
            headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            body_truncated: false,
            cert: None,
        }
    }

    fn timings(total_ms: f64) -> Timings {
        Timings {
            total_ms,
            ..Timings::default()
        }
    }

    fn run(expect: &Expect, response: &Response, total_ms: f64) -> Vec<(String, bool)> {
        evaluate(expect, response, &timings(total_ms), Utc::now())
            .into_iter()
            .map(|a| (a.name, a.ok))
            .collect()
    }

    #[test]
    fn status_defaults_to_any_2xx() {
        let expect = Expect::default();
        for (code, ok) in [
            (200, true),
            (204, true),
            (299, true),
            (301, false),
            (404, false),
            (500, false),
        ] {
            assert_eq!(
                run(&expect, &response(code, ""), 1.0),
                vec![("status".into(), ok)],
                "status {code}"
            );
        }
    }

    #[test]
    fn status_matchers() {
        let expect = Expect {
            status: vec![StatusMatcher::Class(3), StatusMatcher::Exact(404)],
            ..Expect::default()
        };
        for (code, ok) in [
            (301, true),
            (399, true),
            (404, true),
            (200, false),
            (403, false),
        ] {
            assert_eq!(
                run(&expect, &response(code, ""), 1.0)[0].1,
                ok,
                "status {code}"
            );
        }
        let a = evaluate(&expect, &response(200, ""), &timings(1.0), Utc::now());
        assert_eq!(a[0].expected, "3xx or 404");
        assert_eq!(a[0].actual, "200");
    }

    #[test]
    fn body_and_body_not() {
        let expect = Expect {
            body: Some(Regex::new("Example Domain").unwrap().into()),
            body_not: Some(Regex::new("[Ee]rror").unwrap().into()),
            ..Expect::default()
        };
        let cases = [
            ("<h1>Example Domain</h1>", true, true),
            ("<h1>Other</h1>", false, true),
            ("Example Domain: Error 42", true, false),
        ];
        for (body, body_ok, body_not_ok) in cases {
            let got = run(&expect, &response(200, body), 1.0);
            assert_eq!(got[1], ("body".into(), body_ok), "{body}");
            assert_eq!(got[2], ("body_not".into(), body_not_ok), "{body}");
        }
    }

    #[test]
    fn headers_match_by_lowercase_name() {
        let expect = Expect {
            headers: vec![
                HeaderExpectation {
                    name: "content-type".into(),
                    pattern: Regex::new("^text/html").unwrap().into(),
                },
                HeaderExpectation {
                    name: "x-missing".into(),
                    pattern: Regex::new(".").unwrap().into(),
                },
            ],
            ..Expect::default()
        };
        let got = evaluate(&expect, &response(200, ""), &timings(1.0), Utc::now());
        assert!(got[1].ok);
        assert!(!got[2].ok);
        assert_eq!(got[2].actual, "absent");
    }

    #[test]
    fn a_repeated_header_passes_on_one_value_and_shows_it() {
        let expect = |pattern: &str| Expect {
            headers: vec![HeaderExpectation {
                name: "set-cookie".into(),
                pattern: Regex::new(pattern).unwrap().into(),
            }],
            ..Expect::default()
        };
        let mut response = response(200, "");
        response
            .headers
            .push(("set-cookie".into(), "a=1; Path=/".into()));
        response
            .headers
            .push(("set-cookie".into(), "session=xyz; Secure".into()));
        let got = evaluate(&expect("^session="), &response, &timings(1.0), Utc::now());
        assert!(got[1].ok, "{:?}", got[1]);
        assert_eq!(got[1].actual, "session=xyz; Secure");
        let got = evaluate(&expect("^token="), &response, &timings(1.0), Utc::now());
        assert!(!got[1].ok);
        assert_eq!(got[1].actual, "a=1; Path=/, session=xyz; Secure");
    }

    #[test]
    fn json_paths() {
        let json = |path: &str, equals: serde_json::Value| JsonExpectation {
            path: path.into(),
            query: JsonPath::parse(path).unwrap(),
            equals,
        };
        let expect = Expect {
            json: vec![
                json("$.status", "UP".into()),
                json("$.checks[0].ok", true.into()),
                json("$.count", 3.into()),
                json("$.absent", 1.into()),
            ],
            ..Expect::default()
        };
        let body = r#"{"status":"UP","checks":[{"ok":true}],"count":4}"#;
        let got = run(&expect, &response(200, body), 1.0);
        assert_eq!(
            got[1..].iter().map(|(_, ok)| *ok).collect::<Vec<_>>(),
            vec![true, true, false, false]
        );
        let not_json = evaluate(&expect, &response(200, "<html>"), &timings(1.0), Utc::now());
        // An empty Lua table is `[]` and `{}` at once.
        let empty = Expect {
            json: vec![
                json("$.list", serde_json::json!([])),
                json("$.map", serde_json::json!([])),
                json("$.nested", serde_json::json!({ "a": [], "b": [1] })),
                json("$.full", serde_json::json!([])),
            ],
            ..Expect::default()
        };
        let body = r#"{"list":[],"map":{},"nested":{"a":{},"b":[1]},"full":{"x":1}}"#;
        let got = run(&empty, &response(200, body), 1.0);
        assert_eq!(
            got[1..].iter().map(|(_, ok)| *ok).collect::<Vec<_>>(),
            vec![true, true, true, false]
        );
        assert!(not_json[1].actual.starts_with("body is not JSON"));
    }

    #[test]
    fn time_limits_fail_and_warn() {
        let expect = Expect {
            max_time: Some(Duration::from_millis(800)),
            warn_time: Some(Duration::from_millis(300)),
            ..Expect::default()
        };
        for (total, outcome) in [
            (100.0, Outcome::Up),
            (500.0, Outcome::Degraded),
            (900.0, Outcome::Down),
        ] {
            let got = evaluate(&expect, &response(200, ""), &timings(total), Utc::now());
            assert_eq!(outcome_of(&got), outcome, "total {total}");
        }
    }

    #[test]
    fn cert_days_left() {
        let expect = Expect {
            cert_days: Some(14),
            ..Expect::default()
        };
        let now = Utc::now();
        let with_cert = |days: i64| {
            let mut r = response(200, "");
            r.cert = Some(CertInfo {
                not_after: now + chrono::Duration::days(days),
                subject: "CN=x".into(),
                issuer: "CN=ca".into(),
            });
            r
        };
        assert!(evaluate(&expect, &with_cert(30), &timings(1.0), now)[1].ok);
        assert!(!evaluate(&expect, &with_cert(3), &timings(1.0), now)[1].ok);
        let plain = evaluate(&expect, &response(200, ""), &timings(1.0), now);
        assert_eq!(plain[1].actual, "no TLS certificate");
        assert!(!plain[1].ok);
    }

    #[test]
    fn max_body_counts_truncation_as_too_large() {
        let expect = Expect {
            max_body: Some(10),
            ..Expect::default()
        };
        assert!(
            evaluate(
                &expect,
                &response(200, "0123456789"),
                &timings(1.0),
                Utc::now()
            )[1]
            .ok
        );
        assert!(
            !evaluate(
                &expect,
                &response(200, "0123456789a"),
                &timings(1.0),
                Utc::now()
            )[1]
            .ok
        );
        let mut truncated = response(200, "01234");
        truncated.body_truncated = true;
        assert!(!evaluate(&expect, &truncated, &timings(1.0), Utc::now())[1].ok);
    }

    #[test]
    fn describe_puts_hard_failures_first() {
        let list = vec![
            assertion(
                "warn_time",
                false,
                Level::Warn,
                "at most 300 ms".into(),
                "500.0 ms".into(),
            ),
            assertion("status", false, Level::Fail, "2xx".into(), "500".into()),
            assertion("body", true, Level::Fail, "x".into(), "matched".into()),
        ];
        assert_eq!(
            describe_failures(&list),
            "status: expected 2xx, got 500; warn_time: expected at most 300 ms, got 500.0 ms"
        );
    }
}
