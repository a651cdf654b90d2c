//! The hook return contract, as `scripts/sitewatch.d.lua` documents it: what a hook's return
//! values mean (`true`/`nil` pass; `false, reason` fails; `"degraded", reason` warns; a table
//! `{ ok, degraded, reason, metrics }`), read into a [`HookVerdict`] with bounded reason and
//! metrics.

use std::collections::BTreeMap;

use mlua::{Table, Value};

use crate::lua::sandbox::describe_value;
use crate::result::Level;

/// Longest reason a verdict carries; reasons travel in every result, so a hook cannot blow them
/// up with a huge error message.
pub const MAX_REASON_LEN: usize = 1024;
/// Most metrics one verdict may carry.
pub const MAX_METRICS: usize = 64;
/// Longest metric name, in bytes: a hook may take names from what the server sent.
pub const MAX_METRIC_NAME: usize = 128;

/// What one hook call concluded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HookVerdict {
    /// `None`: pass. `Some(Fail)`: the check is down. `Some(Warn)`: degraded.
    pub level: Option<Level>,
    /// Why, when not passing.
    pub reason: Option<String>,
    /// Numbers the hook reported (`metrics = { name = number }`), also on failure.
    pub metrics: BTreeMap<String, f64>,
}

impl HookVerdict {
    pub fn pass() -> Self {
        HookVerdict::default()
    }

    pub fn fail(reason: impl Into<String>) -> Self {
        HookVerdict {
            level: Some(Level::Fail),
            reason: Some(reason.into()),
            metrics: BTreeMap::new(),
        }
    }

    pub fn warn(reason: impl Into<String>) -> Self {
        HookVerdict {
            level: Some(Level::Warn),
            reason: Some(reason.into()),
            metrics: BTreeMap::new(),
        }
    }
}

/// The return contract: `true`/`nil` pass; `false, reason` fails; `"degraded", reason` warns;
/// a table `{ ok, degraded, reason, metrics }`; anything else fails, saying what it was.
pub(super) fn interpret(first: Value, second: Value) -> HookVerdict {
    match first {
        Value::Nil | Value::Boolean(true) => HookVerdict::pass(),
        Value::Boolean(false) => {
            HookVerdict::fail(reason_text(&second).unwrap_or_else(|| "hook returned false".into()))
        }
        Value::String(s) if &*s.as_bytes() == b"degraded" => HookVerdict::warn(
            reason_text(&second).unwrap_or_else(|| "hook reported degraded".into()),
        ),
        Value::Table(table) => verdict_table(&table),
        other => HookVerdict::fail(format!(
            "hook returned {}; expected true, nil, false, \"degraded\" or a verdict table",
            describe_value(&other)
        )),
    }
}

fn reason_text(value: &Value) -> Option<String> {
    match value {
        Value::Nil => None,
        // Only what can be kept is copied out of Lua (the worker cuts the rest).
        Value::String(s) => {
            let bytes = s.as_bytes();
            Some(
                String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_REASON_LEN + 4)]).into_owned(),
            )
        }
        Value::Integer(i) => Some(i.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(format!("(reason was a {})", other.type_name())),
    }
}

/// `{ ok = bool, degraded = bool, reason = "...", metrics = { name = number } }`, read with raw
/// access so no metamethod runs outside the budget.
fn verdict_table(table: &Table) -> HookVerdict {
    let mut ok = true;
    let mut degraded = false;
    let mut reason = None;
    let mut metrics = BTreeMap::new();
    let mut problem: Option<String> = None;
    let _ = table.for_each(|key: Value, value: Value| {
        if problem.is_some() {
            return Ok(());
        }
        let key_text = match &key {
            Value::String(s) => s.to_string_lossy(),
            other => {
                problem = Some(format!("verdict table has a {} key", other.type_name()));
                return Ok(());
            }
        };
        match (key_text.as_str(), value) {
            ("ok", Value::Boolean(b)) => ok = b,
            ("degraded", Value::Boolean(b)) => degraded = b,
            ("reason", value) => reason = reason_text(&value),
            ("metrics", Value::Table(t)) => {
                if let Err(e) = read_metrics(&t, &mut metrics) {
                    problem = Some(e);
                }
            }
            (key @ ("ok" | "degraded"), value) => {
                problem = Some(format!(
                    "verdict {key} must be a boolean, got {}",
                    describe_value(&value)
                ))
            }
            ("metrics", value) => {
                problem = Some(format!(
                    "verdict metrics must be a table, got {}",
                    describe_value(&value)
                ))
            }
            (key, _) => {
                problem = Some(format!(
                    "verdict table has unknown key {key:?} (expected ok, degraded, reason, metrics)"
                ))
            }
        }
        Ok(())
    });
    // A refused verdict is refused whole: none of its metrics is stored (65 metrics are not 64
    // of them and a failure).
    if let Some(problem) = problem {
        return HookVerdict::fail(problem);
    }
    let level = match (ok, degraded) {
        (false, _) => Some(Level::Fail),
        (true, true) => Some(Level::Warn),
        (true, false) => None,
    };
    let reason = match level {
        None => None,
        Some(Level::Fail) => Some(reason.unwrap_or_else(|| "hook returned ok = false".into())),
        Some(Level::Warn) => Some(reason.unwrap_or_else(|| "hook reported degraded".into())),
    };
    HookVerdict {
        level,
        reason,
        metrics,
    }
}

fn read_metrics(table: &Table, metrics: &mut BTreeMap<String, f64>) -> Result<(), String> {
    let mut problem = None;
    let _ = table.for_each(|key: Value, value: Value| {
        if problem.is_some() {
            return Ok(());
        }
        let name = match &key {
            Value::String(s) if s.as_bytes().len() > MAX_METRIC_NAME => {
                problem = Some(format!("metric names are at most {MAX_METRIC_NAME} bytes"));
                return Ok(());
            }
            Value::String(s) => s.to_string_lossy(),
            other => {
                problem = Some(format!(
                    "metric names must be strings, got a {}",
                    other.type_name()
                ));
                return Ok(());
            }
        };
        let number = match value {
            Value::Integer(i) => i as f64,
            Value::Number(n) if n.is_finite() => n,
            other => {
                problem = Some(format!(
                    "metric {name:?} must be a finite number, got {}",
                    describe_value(&other)
                ));
                return Ok(());
            }
        };
        if metrics.len() >= MAX_METRICS {
            problem = Some(format!("more than {MAX_METRICS} metrics"));
            return Ok(());
        }
        metrics.insert(name, number);
        Ok(())
    });
    problem.map_or(Ok(()), Err)
}
