//! Evaluation of `sites.lua` in a [`Sandbox`]: the `site{}`, `defaults{}`, `notifier`,
//! `maintenance{}`, `env()` and `script()` globals, which record what the file declares without
//! judging it yet.
//!
//! Configuration loading and every hook worker run this same evaluation, so a worker's hook
//! functions are the ones the validated configuration describes (and so does the alerting
//! runtime, for the notifiers' `format` functions). Problems that can only be seen
//! while the file runs (an unset variable, a missing script, a Lua error) are collected as
//! [`ConfigError`]s; evaluation goes on after each of them where it can.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use mlua::{ChunkMode, Function, Lua, Table, Value};

use super::error::{ConfigError, ConfigErrorKind, ErrorSubject, MAX_ERRORS};
use super::raw::{Converter, Keep, Raw, RawTable, MAX_DECLARED_BYTES};
use super::types::{ConfigSource, Location};
use crate::lua::errors::{is_memory_error, lua_error_text, root_cause};
use crate::lua::sandbox::{
    caller_location, raise, Budget, Sandbox, Trip, LOAD_INSTRUCTION_BUDGET, LOAD_MEMORY_LIMIT,
    LOAD_WALL_TIME,
};

/// One `site{}` or `defaults{}` call.
#[derive(Debug)]
pub(crate) struct Declaration {
    pub(crate) location: Location,
    pub(crate) table: RawTable,
}

/// One `notifier(name) { ... }`: two calls, the name first, then the settings.
#[derive(Debug)]
pub(crate) struct NotifierDeclaration {
    /// Where the settings were given (or, while they are not, where the name was).
    pub(crate) location: Location,
    /// The argument of `notifier(name)`, judged by validation.
    pub(crate) name: Raw,
    pub(crate) body: NotifierBody,
}

/// What the function returned by `notifier(name)` was given.
#[derive(Debug)]
pub(crate) enum NotifierBody {
    /// Not called (yet): `notifier "ops"` on its own.
    Pending,
    /// Called with something other than a table (already reported).
    Invalid,
    Table(RawTable),
}

/// A script loaded by `script(name)`, for the configuration version.
#[derive(Debug)]
pub(crate) struct LoadedScript {
    pub(crate) name: String,
    pub(crate) text: String,
}

/// What evaluating the sources produced.
#[derive(Debug, Default)]
pub(crate) struct Evaluation {
    /// `site{}` calls in call order.
    pub(crate) sites: Vec<Declaration>,
    pub(crate) defaults: Option<Declaration>,
    /// `defaults{}` calls refused for their place (a second one, or one after a site): their
    /// values are still checked, so every mistake is reported in one pass.
    pub(crate) refused_defaults: Vec<Declaration>,
    /// `notifier` calls in call order.
    pub(crate) notifiers: Vec<NotifierDeclaration>,
    /// `maintenance{}` calls in call order.
    pub(crate) maintenance: Vec<Declaration>,
    /// Scripts in first-load order.
    pub(crate) scripts: Vec<LoadedScript>,
    /// Every function found in a declaration; [`super::raw::FnRef::id`] indexes it.
    pub(crate) functions: Vec<Function>,
    pub(crate) errors: Vec<ConfigError>,
}

/// Evaluation state shared by the global functions while the file runs.
struct State {
    eval: Evaluation,
    /// `script(name)` results, so every use of a script shares one function.
    script_fns: HashMap<String, Function>,
    /// Function pointer → script name, to label hooks `script:<name>`.
    script_names: HashMap<usize, String>,
    /// Bytes the declarations may still take outside the Lua heap ([`MAX_DECLARED_BYTES`]).
    room: usize,
    /// What the snapshots keep.
    keep: Keep,
}

/// What one declaration costs beside its table: the record and its location.
const DECLARATION_BYTES: usize = 128;
/// Longest name `env()` looks up.
const MAX_ENV_NAME: usize = 256;

impl State {
    fn new(keep: Keep) -> State {
        State {
            eval: Evaluation::default(),
            script_fns: HashMap::new(),
            script_names: HashMap::new(),
            room: MAX_DECLARED_BYTES,
            keep,
        }
    }

    /// Takes room for one declaration at `location`, or stops the evaluation.
    fn declare(&mut self, lua: &Lua, location: &Location) -> mlua::Result<()> {
        match self
            .room
            .checked_sub(DECLARATION_BYTES + location.file.len())
        {
            Some(left) => {
                self.room = left;
                Ok(())
            }
            None => Err(too_large(lua)),
        }
    }

    /// Snapshots a declaration's table, or stops the evaluation when the declarations have
    /// outgrown [`MAX_DECLARED_BYTES`].
    fn snapshot(&mut self, lua: &Lua, table: &Table) -> mlua::Result<RawTable> {
        let State {
            eval,
            script_names,
            room,
            keep,
            ..
        } = self;
        let mut converter = Converter::new(&mut eval.functions, script_names, room, *keep);
        let raw = converter.table(table);
        if converter.exhausted {
            return Err(too_large(lua));
        }
        Ok(raw)
    }

    /// [`State::snapshot`] for a single value (a notifier's name).
    fn snapshot_value(&mut self, lua: &Lua, value: Value) -> mlua::Result<Raw> {
        let State {
            eval,
            script_names,
            room,
            ..
        } = self;
        let mut converter = Converter::new(&mut eval.functions, script_names, room, Keep::All);
        let raw = converter.value(value);
        if converter.exhausted {
            return Err(too_large(lua));
        }
        Ok(raw)
    }

    /// Records a problem found while the file runs; past [`MAX_ERRORS`] the evaluation stops
    /// (millions of `env()` errors would otherwise pile up).
    fn report(&mut self, lua: &Lua, error: ConfigError) -> mlua::Result<()> {
        if self.eval.errors.len() >= MAX_ERRORS {
            return Err(raise(
                lua,
                format!("more than {MAX_ERRORS} errors; evaluation stopped"),
            ));
        }
        self.eval.errors.push(error);
        Ok(())
    }
}

/// The error that stops an evaluation whose declarations outgrew [`MAX_DECLARED_BYTES`].
fn too_large(lua: &Lua) -> mlua::Error {
    raise(
        lua,
        format!(
            "the declarations take more than {} MiB (the tables given to site{{}}, defaults{{}}, \
             notifier and maintenance{{}}, as copied out of Lua)",
            MAX_DECLARED_BYTES >> 20
        ),
    )
}

type Shared = Rc<RefCell<State>>;

/// The globals that only exist while `sites.lua` is evaluated.
const LOAD_TIME_FUNCTIONS: &[&str] = &[
    "site",
    "defaults",
    "notifier",
    "maintenance",
    "env",
    "script",
];

/// Evaluates `source` in `sandbox` under the load-time budget. Leaves the
/// [`LOAD_TIME_FUNCTIONS`] defined; workers replace them with [`disable_load_time_functions`].
pub(crate) fn evaluate(sandbox: &Sandbox, source: &ConfigSource) -> Evaluation {
    evaluate_keeping(sandbox, source, Keep::All)
}

/// What a worker that only calls functions (hooks, formatters) keeps of each declaration.
pub(crate) const KEEP_FUNCTIONS: Keep = Keep::Only(&["name", "hooks", "format"]);

/// [`evaluate`], keeping only what `keep` says of each declaration: a worker that needs the
/// functions ([`KEEP_FUNCTIONS`]) does not copy everything out of Lua again.
pub(crate) fn evaluate_keeping(sandbox: &Sandbox, source: &ConfigSource, keep: Keep) -> Evaluation {
    let main_file = source.path.display().to_string();
    let state: Shared = Rc::new(RefCell::new(State::new(keep)));
    if let Err(e) = install(&sandbox.lua, &state, source, &sandbox.budget) {
        return failed_setup(&main_file, e);
    }
    let _ = sandbox.set_memory_limit(LOAD_MEMORY_LIMIT);
    sandbox.track_calls(true);
    sandbox
        .budget
        .arm(LOAD_INSTRUCTION_BUDGET, LOAD_WALL_TIME, true);
    let result = sandbox
        .lua
        .load(source.text.as_str())
        .set_name(format!("@{main_file}"))
        .set_mode(ChunkMode::Text)
        .exec();
    let trip = sandbox.budget.disarm();
    sandbox.track_calls(false);
    let last_location = sandbox.budget.last_location();
    let mut eval = std::mem::take(&mut state.borrow_mut().eval);
    if let Err(error) = result {
        let fallback = Location {
            file: main_file.clone(),
            line: 0,
        };
        let known: Vec<String> = std::iter::once(main_file.clone())
            .chain(
                eval.scripts
                    .iter()
                    .map(|s| script_path(&source.scripts_dir, &s.name)),
            )
            .collect();
        eval.errors.push(load_error(
            &error,
            trip,
            last_location.unwrap_or(fallback),
            &known,
        ));
    }
    eval
}

fn failed_setup(main_file: &str, error: mlua::Error) -> Evaluation {
    Evaluation {
        errors: vec![ConfigError::new(
            Some(Location {
                file: main_file.to_string(),
                line: 0,
            }),
            None,
            ConfigErrorKind::Sandbox {
                message: error.to_string(),
            },
        )],
        ..Evaluation::default()
    }
}

/// Turns a state that evaluated the configuration into one that only calls its functions (hooks,
/// formatters): the load-time globals say they are gone, globals and library tables are frozen.
/// Configuration loading runs it too, so a file that validates is one every worker can prepare.
pub(crate) fn prepare_for_calls(sandbox: &Sandbox) -> mlua::Result<()> {
    disable_load_time_functions(&sandbox.lua)?;
    sandbox.freeze()
}

/// Replaces the load-time-only globals with functions that say so; for hook workers.
pub(crate) fn disable_load_time_functions(lua: &Lua) -> mlua::Result<()> {
    for &name in LOAD_TIME_FUNCTIONS {
        let message = format!("{name}() is only available at load time, not in hooks");
        let function =
            lua.create_function(move |lua, _: mlua::MultiValue| -> mlua::Result<()> {
                Err(raise(lua, &message))
            })?;
        lua.globals().raw_set(name, function)?;
    }
    Ok(())
}

/// Defines the load-time globals (`site`, `defaults`, `notifier`, `maintenance`, `env`,
/// `script`). Long on purpose (over 80 lines): one block per global, in the order
/// `docs/config.md` lists them; shared shapes are helpers (`declaring`).
fn install(
    lua: &Lua,
    state: &Shared,
    source: &ConfigSource,
    budget: &Rc<Budget>,
) -> mlua::Result<()> {
    let globals = lua.globals();
    let fallback_file = source.path.display().to_string();

    globals.raw_set(
        "site",
        declaring(lua, state, &fallback_file, "site{}", |eval| &mut eval.sites)?,
    )?;

    let st = Rc::clone(state);
    let file = fallback_file.clone();
    globals.raw_set(
        "defaults",
        lua.create_function(move |lua, value: Value| {
            let location = here(lua, &file);
            let mut state = st.borrow_mut();
            state.declare(lua, &location)?;
            let eval = &state.eval;
            let problem = if let Some(first) = &eval.defaults {
                Some(ConfigErrorKind::DefaultsTwice {
                    first: first.location.clone(),
                })
            } else if let Some(site) = eval.sites.first() {
                Some(ConfigErrorKind::DefaultsAfterSite {
                    first_site: site.location.clone(),
                })
            } else if let Value::Table(_) = value {
                None
            } else {
                Some(ConfigErrorKind::NotATable {
                    function: "defaults{}",
                    found: value.type_name().to_string(),
                })
            };
            match (problem, value) {
                (Some(kind), Value::Table(table)) => {
                    state.report(lua, ConfigError::at(&location, kind))?;
                    let raw = state.snapshot(lua, &table)?;
                    state.eval.refused_defaults.push(Declaration {
                        location,
                        table: raw,
                    });
                }
                (Some(kind), _) => state.report(lua, ConfigError::at(&location, kind))?,
                (None, Value::Table(table)) => {
                    let raw = state.snapshot(lua, &table)?;
                    state.eval.defaults = Some(Declaration {
                        location,
                        table: raw,
                    });
                }
                (None, _) => unreachable!("non-table defaults are reported above"),
            }
            Ok(())
        })?,
    )?;

    let st = Rc::clone(state);
    let file = fallback_file.clone();
    globals.raw_set(
        "notifier",
        lua.create_function(move |lua, name: Value| {
            let location = here(lua, &file);
            let (name, index) = {
                let mut state = st.borrow_mut();
                state.declare(lua, &location)?;
                let name = state.snapshot_value(lua, name)?;
                let eval = &mut state.eval;
                eval.notifiers.push(NotifierDeclaration {
                    location,
                    name: name.clone(),
                    body: NotifierBody::Pending,
                });
                (name, eval.notifiers.len() - 1)
            };
            let (st, file) = (Rc::clone(&st), file.clone());
            lua.create_function(move |lua, value: Value| {
                let location = here(lua, &file);
                let mut state = st.borrow_mut();
                state.declare(lua, &location)?;
                let body = match value {
                    Value::Table(table) => NotifierBody::Table(state.snapshot(lua, &table)?),
                    other => {
                        let subject = name.as_str().map(|n| ErrorSubject::Notifier(n.into()));
                        state.report(
                            lua,
                            ConfigError::new(
                                Some(location.clone()),
                                subject,
                                ConfigErrorKind::NotifierBody {
                                    found: other.type_name().to_string(),
                                },
                            ),
                        )?;
                        NotifierBody::Invalid
                    }
                };
                let eval = &mut state.eval;
                // The first call fills the declaration; calling the function again declares
                // the same name again (reported as a duplicate).
                match &mut eval.notifiers[index] {
                    decl @ NotifierDeclaration {
                        body: NotifierBody::Pending,
                        ..
                    } => {
                        decl.location = location;
                        decl.body = body;
                    }
                    _ => eval.notifiers.push(NotifierDeclaration {
                        location,
                        name: name.clone(),
                        body,
                    }),
                }
                Ok(())
            })
        })?,
    )?;

    globals.raw_set(
        "maintenance",
        declaring(lua, state, &fallback_file, "maintenance{}", |eval| {
            &mut eval.maintenance
        })?,
    )?;

    let st = Rc::clone(state);
    let file = fallback_file.clone();
    globals.raw_set(
        "env",
        lua.create_function(move |lua, name: Value| {
            let name = match &name {
                Value::String(s) if s.as_bytes().len() <= MAX_ENV_NAME => {
                    s.to_str().map(|s| s.to_string()).ok()
                }
                _ => None,
            };
            let name = match name {
                Some(n) if !n.is_empty() && !n.contains(['=', '\0']) => n,
                _ => {
                    return Err(raise(
                        lua,
                        format!(
                            "env() expects an environment variable name (at most \
                             {MAX_ENV_NAME} bytes, no '=')"
                        ),
                    ))
                }
            };
            if let Some(owner) = env_denied(&name) {
                let location = here(lua, &file);
                st.borrow_mut().report(
                    lua,
                    ConfigError::at(&location, ConfigErrorKind::EnvDenied { name, owner }),
                )?;
                return Ok(String::new());
            }
            match std::env::var(&name) {
                Ok(value) => Ok(value),
                Err(_) => {
                    let location = here(lua, &file);
                    st.borrow_mut().report(
                        lua,
                        ConfigError::at(&location, ConfigErrorKind::EnvUnset { name }),
                    )?;
                    Ok(String::new())
                }
            }
        })?,
    )?;

    let st = Rc::clone(state);
    let file = fallback_file;
    let scripts_dir = source.scripts_dir.clone();
    let pinned = source.scripts.clone();
    let budget = Rc::clone(budget);
    globals.raw_set(
        "script",
        lua.create_function(move |lua, name: Value| {
            let location = here(lua, &file);
            let name = match &name {
                Value::String(s) => s.to_string_lossy(),
                other => {
                    return Err(raise(
                        lua,
                        format!("script() expects a script name, got {}", other.type_name()),
                    ))
                }
            };
            if let Some(function) = st.borrow().script_fns.get(&name) {
                return Ok(function.clone());
            }
            // Not borrowed while the script runs: it may call site{} or env().
            let loaded = load_script(lua, &scripts_dir, pinned.get(&name), &name, &st, &budget)?;
            let function = match loaded {
                Ok(function) => function,
                Err(kind) => {
                    st.borrow_mut()
                        .report(lua, ConfigError::at(&location, kind))?;
                    let message = format!("script {name:?} failed to load");
                    lua.create_function(move |lua, _: mlua::MultiValue| -> mlua::Result<()> {
                        Err(raise(lua, &message))
                    })?
                }
            };
            let mut guard = st.borrow_mut();
            guard
                .script_names
                .insert(function.to_pointer() as usize, name.clone());
            guard.script_fns.insert(name, function.clone());
            Ok(function)
        })?,
    )?;
    Ok(())
}

/// Prefixes of environment variables `env()` refuses (compared ignoring ASCII case), with whose
/// they are: sitewatch's own settings (Kafka and database credentials among them) and
/// PostgreSQL's. A `sites.lua` author must not be able to copy them into a request header.
const DENIED_ENV_PREFIXES: &[(&str, &str)] =
    &[("SITEWATCH_", "sitewatch's own"), ("PG", "PostgreSQL's")];
/// Variables `env()` refuses by full name.
const DENIED_ENV_NAMES: &[(&str, &str)] = &[("DATABASE_URL", "the database's")];

/// Whose variable `name` is, when `env()` must refuse it.
pub(crate) fn env_denied(name: &str) -> Option<&'static str> {
    let starts = |prefix: &str| {
        name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    DENIED_ENV_PREFIXES
        .iter()
        .find(|(prefix, _)| name.is_char_boundary(prefix.len()) && starts(prefix))
        .or_else(|| {
            DENIED_ENV_NAMES
                .iter()
                .find(|(full, _)| name.eq_ignore_ascii_case(full))
        })
        .map(|(_, owner)| *owner)
}

/// A `site{}`-like global: each call snapshots its table into the list `into` picks (at the
/// caller's `file:line`), or reports what it got instead of a table.
fn declaring(
    lua: &Lua,
    state: &Shared,
    file: &str,
    function: &'static str,
    into: fn(&mut Evaluation) -> &mut Vec<Declaration>,
) -> mlua::Result<Function> {
    let (st, file) = (Rc::clone(state), file.to_owned());
    lua.create_function(move |lua, value: Value| {
        let location = here(lua, &file);
        let mut state = st.borrow_mut();
        state.declare(lua, &location)?;
        match value {
            Value::Table(table) => {
                let table = state.snapshot(lua, &table)?;
                into(&mut state.eval).push(Declaration { location, table });
            }
            other => state.report(
                lua,
                ConfigError::at(
                    &location,
                    ConfigErrorKind::NotATable {
                        function,
                        found: other.type_name().to_string(),
                    },
                ),
            )?,
        }
        Ok(())
    })
}

/// The location of the Lua code calling the running global, or the file when unknown.
fn here(lua: &Lua, file: &str) -> Location {
    caller_location(lua).unwrap_or_else(|| Location {
        file: file.to_string(),
        line: 0,
    })
}

pub(crate) fn script_path(scripts_dir: &Path, name: &str) -> String {
    scripts_dir
        .join(format!("{name}.lua"))
        .display()
        .to_string()
}

fn valid_script_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Runs the script `name`: its `pinned` text when given, else `<scripts_dir>/<name>.lua` read
/// now. The outer error is a broken budget (which must keep unwinding the whole evaluation);
/// the inner one a problem with this script.
fn load_script(
    lua: &Lua,
    scripts_dir: &Path,
    pinned: Option<&String>,
    name: &str,
    state: &Shared,
    budget: &Budget,
) -> mlua::Result<Result<Function, ConfigErrorKind>> {
    if !valid_script_name(name) {
        return Ok(Err(ConfigErrorKind::ScriptName {
            name: name.to_string(),
        }));
    }
    let path = scripts_dir.join(format!("{name}.lua"));
    let read = || {
        super::files::read_limited(&path, super::files::MAX_SCRIPT_FILE).and_then(|bytes| {
            String::from_utf8(bytes).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "not valid UTF-8")
            })
        })
    };
    let text = match pinned.map_or_else(read, |text| Ok(text.clone())) {
        Ok(text) => text,
        Err(source) => {
            return Ok(Err(ConfigErrorKind::ScriptMissing {
                name: name.to_string(),
                path,
                source,
            }))
        }
    };
    state.borrow_mut().eval.scripts.push(LoadedScript {
        name: name.to_string(),
        text: text.clone(),
    });
    let result = lua
        .load(text.as_str())
        .set_name(format!("@{}", path.display()))
        .set_mode(ChunkMode::Text)
        .eval::<Value>();
    match result {
        Ok(Value::Function(function)) => Ok(Ok(function)),
        Ok(other) => Ok(Err(ConfigErrorKind::ScriptNotFunction {
            name: name.to_string(),
            found: other.type_name().to_string(),
        })),
        // A broken budget or heap is not this script's problem alone: it stops the evaluation.
        Err(error) if is_memory_error(&error) || budget.tripped().is_some() => Err(error),
        Err(error) => {
            let (message, location) = lua_error_text(&error, &[]);
            let message = match location {
                Some(location) if location.line > 0 => format!("{location}: {message}"),
                _ => message,
            };
            Ok(Err(ConfigErrorKind::ScriptFailed {
                name: name.to_string(),
                message,
            }))
        }
    }
}

/// Turns the error that stopped evaluation into a [`ConfigError`].
fn load_error(
    error: &mlua::Error,
    trip: Option<Trip>,
    last: Location,
    known_files: &[String],
) -> ConfigError {
    let limit = |limit: String| ConfigError::at(&last, ConfigErrorKind::Limit { limit });
    match trip {
        Some(Trip::Instructions) => {
            return limit(format!(
                "exceeded its instruction budget ({LOAD_INSTRUCTION_BUDGET} instructions); an endless loop?"
            ))
        }
        Some(Trip::WallTime) => return limit(format!("took longer than {}s", LOAD_WALL_TIME.as_secs())),
        None => {}
    }
    if is_memory_error(error) {
        return limit(format!(
            "exceeded its memory limit ({} MiB)",
            LOAD_MEMORY_LIMIT >> 20
        ));
    }
    let (message, location) = lua_error_text(error, known_files);
    let kind = match root_cause(error) {
        mlua::Error::SyntaxError { .. } => ConfigErrorKind::Syntax { message },
        _ => ConfigErrorKind::Lua { message },
    };
    ConfigError::new(location.or(Some(last)), None, kind)
}

/// The hook functions of every declared site, by name, in hooks-list order: the site's own
/// `hooks`, or else those of `defaults{}`. Entries that are not functions are skipped (the
/// validated configuration reports them).
pub(crate) fn hook_functions(eval: &Evaluation) -> Vec<(String, Vec<Function>)> {
    let defaults_hooks = eval.defaults.as_ref().and_then(|d| d.table.get("hooks"));
    eval.sites
        .iter()
        .filter_map(|decl| {
            let name = super::validate::canonical_site_name(decl.table.get("name")?.as_str()?);
            let hooks = decl.table.get("hooks").or(defaults_hooks);
            let functions = match hooks {
                Some(Raw::Table(list)) => list
                    .entries
                    .iter()
                    .filter_map(|(_, v)| match v {
                        Raw::Function(f) => eval.functions.get(f.id).cloned(),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            Some((name, functions))
        })
        .collect()
}

/// The `format` function of every notifier that has one, by notifier name, in declaration
/// order: what a worker re-evaluating the configuration sources calls to build a webhook body.
/// A name declared twice keeps its first declaration (the validated configuration rejects the
/// second); a `format` that is not a function is skipped (reported there too).
pub(crate) fn formatter_functions(eval: &Evaluation) -> Vec<(String, Function)> {
    let mut out: Vec<(String, Function)> = Vec::new();
    for decl in &eval.notifiers {
        let (Some(name), NotifierBody::Table(table)) = (decl.name.as_str(), &decl.body) else {
            continue;
        };
        if out.iter().any(|(seen, _)| seen == name) {
            continue;
        }
        if let Some(Raw::Function(f)) = table.get("format") {
            if let Some(function) = eval.functions.get(f.id) {
                out.push((name.to_string(), function.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn evaluate_text(sandbox: &Sandbox, text: &str) -> Evaluation {
        let source = ConfigSource {
            path: PathBuf::from("sites.lua"),
            text: text.to_string(),
            scripts_dir: PathBuf::from("/nonexistent"),
            scripts: Default::default(),
        };
        evaluate(sandbox, &source)
    }

    #[test]
    fn formatters_are_callable_in_the_evaluating_state() {
        let sandbox = Sandbox::new(LOAD_MEMORY_LIMIT).unwrap();
        let eval = evaluate_text(
            &sandbox,
            r#"
notifier "ops" { type = "webhook", url = "https://hooks.example/", format = function(e) return "site " .. e.site end }
notifier "am" { type = "alertmanager", url = "http://127.0.0.1:9093" }
local shared = function(e) return { text = e.site } end
notifier "chat" { type = "webhook", url = "https://chat.example/", format = shared }
notifier "ops" { type = "webhook", url = "https://other.example/", format = function() return "second" end }
"#,
        );
        assert!(eval.errors.is_empty(), "{:?}", eval.errors);
        let formatters = formatter_functions(&eval);
        let names: Vec<&str> = formatters.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["ops", "chat"],
            "first declaration wins; am has none"
        );
        let event = sandbox.lua.create_table().unwrap();
        event.set("site", "shop").unwrap();
        let body: String = formatters[0].1.call(event).unwrap();
        assert_eq!(body, "site shop");
    }

    #[test]
    fn notifier_declarations() {
        let sandbox = Sandbox::new(LOAD_MEMORY_LIMIT).unwrap();
        let eval = evaluate_text(
            &sandbox,
            "notifier \"a\" {\n  type = \"webhook\",\n}\nnotifier \"b\"\nnotifier \"c\" \"x\"\nmaintenance { name = \"m\" }\n",
        );
        let got: Vec<(u32, Option<&str>, &str)> = eval
            .notifiers
            .iter()
            .map(|d| {
                let body = match d.body {
                    NotifierBody::Pending => "pending",
                    NotifierBody::Invalid => "invalid",
                    NotifierBody::Table(_) => "table",
                };
                (d.location.line, d.name.as_str(), body)
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, Some("a"), "table"),
                (4, Some("b"), "pending"),
                (5, Some("c"), "invalid")
            ]
        );
        assert_eq!(eval.errors.len(), 1, "{:?}", eval.errors);
        assert_eq!(eval.maintenance[0].location.line, 6);
    }

    #[test]
    fn function_workers_keep_only_names_and_functions() {
        let sandbox = Sandbox::new(LOAD_MEMORY_LIMIT).unwrap();
        let source = ConfigSource {
            path: PathBuf::from("sites.lua"),
            text: "local big = string.rep('x', 1 << 20)\n\
                   site { name = 'a', url = big, request = { body = big }, hooks = { function() end } }\n\
                   notifier 'n' { type = 'webhook', url = big, format = function() end }\n"
                .into(),
            scripts_dir: PathBuf::from("/nonexistent"),
            scripts: Default::default(),
        };
        let eval = evaluate_keeping(&sandbox, &source, KEEP_FUNCTIONS);
        assert!(eval.errors.is_empty(), "{:?}", eval.errors);
        let site = &eval.sites[0].table;
        assert_eq!(site.get("name").and_then(Raw::as_str), Some("a"));
        assert_eq!(site.get("url"), Some(&Raw::Other("not kept".into())));
        assert_eq!(site.get("request"), Some(&Raw::Other("not kept".into())));
        assert_eq!(hook_functions(&eval)[0].1.len(), 1);
        assert_eq!(formatter_functions(&eval).len(), 1);
    }

    #[test]
    fn denied_environment_variables() {
        let cases = [
            ("SITEWATCH_KAFKA_SASL_PASSWORD", Some("sitewatch's own")),
            ("sitewatch_database_password", Some("sitewatch's own")),
            ("PGPASSWORD", Some("PostgreSQL's")),
            ("PGSERVICEFILE", Some("PostgreSQL's")),
            ("pgpass", Some("PostgreSQL's")),
            ("DATABASE_URL", Some("the database's")),
            ("database_url", Some("the database's")),
            ("API_TOKEN", None),
            ("SITEWATCH", None),
            ("DATABASE_URL_EXTRA", None),
            ("P", None),
            ("Pé", None),
        ];
        for (name, want) in cases {
            assert_eq!(env_denied(name), want, "{name}");
        }
    }

    #[test]
    fn script_names() {
        for (name, ok) in [
            ("json_status", true),
            ("a-b_9", true),
            ("", false),
            ("../x", false),
            ("a.b", false),
        ] {
            assert_eq!(valid_script_name(name), ok, "{name}");
        }
    }
}
