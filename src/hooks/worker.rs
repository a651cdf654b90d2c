//! One hook worker: a sandboxed Lua state holding the hook functions of every site of one
//! configuration, and the budgeted call of one hook.

use std::os::raw::c_int;
use std::time::Duration;

use mlua::Function;

use super::verdict::{interpret, HookVerdict, MAX_REASON_LEN};
use super::{HookError, HookInput, HookLimits};
use crate::config::eval;
use crate::config::{ConfigErrors, ConfigSource};
use crate::lua::errors::{is_memory_error, lua_error_text};
use crate::lua::r_table;
use crate::lua::sandbox::{Sandbox, Trip, LOAD_MEMORY_LIMIT};
use crate::result::shorten;

/// Generational GC: a minor collection after the heap grows this many percent (Lua's default).
const GC_MINOR_MULTIPLIER: c_int = 20;
/// Generational GC: a major collection after the heap grows this many percent (Lua's default).
const GC_MAJOR_MULTIPLIER: c_int = 100;

/// One worker's Lua state with the hook functions of every site.
pub(super) struct Worker {
    sandbox: Sandbox,
    /// Builds the read-only `r` table (see [`R_BUILDER`]).
    build_r: Function,
    /// Per site (in declaration order): name and hook functions.
    sites: Vec<(String, Vec<Function>)>,
    instructions: u64,
    wall_time: Duration,
    memory_bytes: usize,
}

impl Worker {
    pub(super) fn new(source: &ConfigSource, limits: &HookLimits) -> Result<Worker, HookError> {
        let sandbox_error = |e: mlua::Error| HookError::Sandbox {
            message: e.to_string(),
        };
        let sandbox = Sandbox::new(LOAD_MEMORY_LIMIT).map_err(sandbox_error)?;
        let build_r = r_table::builder(&sandbox.lua).map_err(sandbox_error)?;
        sandbox.set_quiet(true);
        let evaluation = eval::evaluate_keeping(&sandbox, source, eval::KEEP_FUNCTIONS);
        sandbox.set_quiet(false);
        if !evaluation.errors.is_empty() {
            return Err(HookError::Evaluate {
                path: source.path.clone(),
                errors: ConfigErrors::new(evaluation.errors),
            });
        }
        // By name: `sites.lua` may declare them in `pairs()` order, which differs from one Lua
        // state to the next (each has its own hash seed).
        let mut sites = eval::hook_functions(&evaluation);
        sites.sort_by(|a, b| a.0.cmp(&b.0));
        drop(evaluation);
        eval::prepare_for_calls(&sandbox).map_err(sandbox_error)?;
        sandbox.lua.gc_collect().map_err(sandbox_error)?;
        // Hook calls make short-lived garbage (r, decoded JSON): the generational collector
        // frees it young, for a fraction of the incremental collector's work.
        sandbox.lua.gc_gen(GC_MINOR_MULTIPLIER, GC_MAJOR_MULTIPLIER);
        let baseline = sandbox.lua.used_memory();
        sandbox
            .set_memory_limit(baseline.saturating_add(limits.memory_bytes))
            .map_err(sandbox_error)?;
        Ok(Worker {
            sandbox,
            build_r,
            sites,
            instructions: limits.instructions,
            wall_time: limits.wall_time,
            memory_bytes: limits.memory_bytes,
        })
    }

    /// The sites by name, each with where its hooks were defined (`file:first-last line`), in
    /// hooks-list order: what every worker of a pool must agree on.
    pub(super) fn site_table(&self) -> SiteTable {
        self.sites
            .iter()
            .map(|(name, hooks)| (name.clone(), hooks.iter().map(defined_at).collect()))
            .collect()
    }

    pub(super) fn call(&mut self, site: usize, index: usize, input: &HookInput) -> HookVerdict {
        let Some(function) = self.sites.get(site).and_then(|(_, hooks)| hooks.get(index)) else {
            return HookVerdict::fail(format!("no hook {} for site {:?}", index + 1, input.site));
        };
        {
            let mut current = self.sandbox.current_site.borrow_mut();
            current.clear();
            current.push_str(&input.site);
        }
        let budget = &self.sandbox.budget;
        budget.arm(self.instructions, self.wall_time, false);
        let result = r_table::run_hook(&self.sandbox.lua, &self.build_r, function, input);
        let trip = budget.disarm();
        let mut verdict = match (trip, result) {
            (Some(Trip::Instructions), _) => {
                HookVerdict::fail("hook exceeded its instruction budget")
            }
            (Some(Trip::WallTime), _) => HookVerdict::fail(format!(
                "hook exceeded its time limit ({:?})",
                self.wall_time
            )),
            (None, Err(e)) if is_memory_error(&e) => {
                // Give the garbage back so the next call starts with a clean heap.
                let _ = self.sandbox.lua.gc_collect();
                HookVerdict::fail(format!(
                    "hook exceeded memory limit ({})",
                    format_bytes(self.memory_bytes)
                ))
            }
            (None, Err(e)) => {
                let (message, location) = lua_error_text(&e, &[]);
                match location {
                    Some(location) if location.line > 0 => {
                        HookVerdict::fail(format!("hook error: {location}: {message}"))
                    }
                    _ => HookVerdict::fail(format!("hook error: {message}")),
                }
            }
            (None, Ok((first, second))) => interpret(first, second),
        };
        if let Some(reason) = verdict.reason.as_mut() {
            shorten(reason, MAX_REASON_LEN);
        }
        verdict
    }
}

/// Sites by name with the definition place of each hook, in order.
pub(super) type SiteTable = Vec<(String, Vec<String>)>;

/// Where a hook function was defined, the same in every Lua state evaluating the same sources.
fn defined_at(function: &Function) -> String {
    let info = function.info();
    format!(
        "{}:{}-{}",
        info.short_src.as_deref().unwrap_or("?"),
        info.line_defined.unwrap_or(0),
        info.last_line_defined.unwrap_or(0)
    )
}

fn format_bytes(bytes: usize) -> String {
    if bytes % (1024 * 1024) == 0 {
        format!("{} MiB", bytes / (1024 * 1024))
    } else if bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use bytes::Bytes;

    use super::*;
    use crate::probe::CertInfo;
    use crate::result::{Level, Timings};

    fn source(text: &str) -> ConfigSource {
        ConfigSource {
            path: PathBuf::from("sites.lua"),
            text: text.to_string(),
            scripts_dir: PathBuf::from("/nonexistent"),
            scripts: Default::default(),
        }
    }

    fn input() -> HookInput {
        HookInput {
            site: "a".into(),
            url: "https://a.example/".into(),
            final_url: "https://a.example/".into(),
            status: 200,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("Set-Cookie".into(), "a=1".into()),
                ("set-cookie".into(), "b=2".into()),
            ],
            body: Bytes::from_static(br#"{"status":"UP","checks":[1,2,3]}"#),
            body_truncated: false,
            timings: Timings {
                ttfb_ms: Some(120.0),
                total_ms: 150.0,
                ..Timings::default()
            },
            cert: None,
            attempt: 1,
        }
    }

    fn worker(hook: &str) -> Worker {
        let text =
            format!("site {{ name = 'a', url = 'https://a.example/', hooks = {{ {hook} }} }}");
        Worker::new(&source(&text), &HookLimits::default()).expect("worker")
    }

    #[test]
    fn return_contract() {
        let cases: [(&str, Option<Level>, Option<&str>); 10] = [
            ("function(r) return true end", None, None),
            ("function(r) end", None, None),
            (
                "function(r) return false, 'bad' end",
                Some(Level::Fail),
                Some("bad"),
            ),
            (
                "function(r) return false end",
                Some(Level::Fail),
                Some("hook returned false"),
            ),
            (
                "function(r) return 'degraded', 'slow' end",
                Some(Level::Warn),
                Some("slow"),
            ),
            (
                "function(r) return { ok = false, reason = 'x' } end",
                Some(Level::Fail),
                Some("x"),
            ),
            (
                "function(r) return { degraded = true } end",
                Some(Level::Warn),
                Some("hook reported degraded"),
            ),
            (
                "function(r) return { ok = true, reason = 'ignored' } end",
                None,
                None,
            ),
            (
                "function(r) return 42 end",
                Some(Level::Fail),
                Some("hook returned number (42)"),
            ),
            (
                "function(r) return { okay = true } end",
                Some(Level::Fail),
                Some("unknown key \"okay\""),
            ),
        ];
        for (hook, level, reason) in cases {
            let verdict = worker(hook).call(0, 0, &input());
            assert_eq!(verdict.level, level, "{hook}: {verdict:?}");
            match reason {
                Some(want) => assert!(
                    verdict.reason.as_deref().unwrap_or("").contains(want),
                    "{hook}: {verdict:?}"
                ),
                None => assert_eq!(verdict.reason, None, "{hook}"),
            }
        }
    }

    #[test]
    fn r_table_contents() {
        let hook = r#"function(r)
            assert(r.site == "a" and r.status == 200 and r.attempt == 1)
            assert(r.headers["set-cookie"] == "a=1, b=2", r.headers["set-cookie"])
            assert(r.headers["content-type"] == "application/json")
            assert(r.timings.ttfb_ms == 120 and r.timings.dns_ms == 0 and r.timings.total_ms == 150)
            assert(r.cert == nil and r.body_truncated == false)
            local n = 0 for _ in pairs(r.headers) do n = n + 1 end
            assert(n == 2, n)
            local v = json.decode(r.body)
            return { ok = v.status == "UP", metrics = { checks = #v.checks } }
        end"#;
        let verdict = worker(hook).call(0, 0, &input());
        assert_eq!(verdict.level, None, "{verdict:?}");
        assert_eq!(verdict.metrics.get("checks"), Some(&3.0));
    }

    #[test]
    fn days_left_rounds_down() {
        let now = chrono::Utc::now();
        let cert = |hours: i64| CertInfo {
            not_after: now + chrono::Duration::hours(hours),
            subject: String::new(),
            issuer: String::new(),
        };
        assert_eq!(cert(24 * 30 + 1).whole_days_left(now), 30);
        assert_eq!(cert(23).whole_days_left(now), 0);
        assert_eq!(cert(-1).whole_days_left(now), -1);
    }
}
