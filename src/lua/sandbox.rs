//! The Lua sandbox: one restricted Lua 5.4 state with sitewatch's helpers and budgets.
//!
//! Configuration loading evaluates `sites.lua` in one of these; every hook worker owns one and
//! evaluates the same sources in it. The state has `string`, `table`, `math`, `utf8`, the safe
//! base functions and the helpers `json`, `regex`, `log` — no `io`, `os`, `package`, `require`,
//! `debug`, `dofile`, `loadfile`, `collectgarbage`, `rawset`, `string.dump`, and `load` only
//! accepts text. Every Lua instruction counts against a [`Budget`] (instructions and a
//! wall-clock deadline, checked every [`CHECK_EVERY`] instructions); the state's heap is capped
//! with `set_memory_limit`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use mlua::{
    ChunkMode, DebugEvent, Function, HookTriggers, Lua, LuaOptions, LuaSerdeExt, MultiValue,
    StdLib, Table, Value, VmState,
};

use super::json::{self, DecodeError, EncodeError, Tape};
use crate::config::Location;

/// Instructions `sites.lua` (with its scripts) may run while being evaluated. Generous: a
/// 10,000-site loop needs a few million.
pub(crate) const LOAD_INSTRUCTION_BUDGET: u64 = 500_000_000;
/// Wall-clock limit on evaluating `sites.lua`.
pub(crate) const LOAD_WALL_TIME: Duration = Duration::from_secs(20);
/// Heap limit of the Lua state while `sites.lua` is evaluated.
pub(crate) const LOAD_MEMORY_LIMIT: usize = 256 * 1024 * 1024;
/// The budget hook runs every this many VM instructions: small enough that a deadline is noticed
/// within microseconds of pure Lua, large enough that the check costs nothing measurable.
pub(crate) const CHECK_EVERY: u32 = 1_000;
/// Compiled patterns `regex.match` keeps per state; the cache is emptied when it fills up. With
/// the two limits below the cache holds at most 32 × (256 KiB + 256 KiB + 64 KiB) ≈ 18 MiB
/// outside the Lua heap.
const REGEX_CACHE_CAPACITY: usize = 32;
/// Compiled-size limit of one `regex.match` pattern, so a pattern cannot eat the worker's memory
/// outside the Lua heap.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// Limit of the lazy DFA's cache of one `regex.match` pattern (it grows as the pattern runs).
const REGEX_DFA_LIMIT: usize = 256 * 1024;
/// Longest `regex.match` pattern, in bytes (it is kept as the cache key).
const MAX_REGEX_PATTERN: usize = 64 * 1024;
/// Longest `log.*`/`print` message passed on to tracing; longer ones are cut.
const MAX_LOG_MESSAGE: usize = 2048;
/// Tracing target of messages logged from Lua.
const LOG_TARGET: &str = "sitewatch::lua";

/// Lua source run once in every new state, before any user code: removes what a sandbox must not
/// have and wraps what it may only have in a safe form. Receives `check` (raises if the budget
/// is exhausted), `tripped` (whether it is), `charge` (counts work done in library code as
/// instructions) and `force_setmetatable` (sets a metatable even over a protected one), and
/// returns `freeze`.
const PRELUDE: &str = r##"
local check, tripped, charge, force_setmetatable = ...
local G = _G
local error, getmetatable, ipairs, next, select, tostring, type =
      error, getmetatable, ipairs, next, select, tostring, type
local raw_load, raw_pcall, raw_xpcall, raw_setmetatable, rawget = load, pcall, xpcall, setmetatable, rawget
local concat = table.concat
local log_info = log.info

G.dofile, G.loadfile, G.collectgarbage, G.rawset, G.warn = nil, nil, nil, nil, nil
string.dump = nil
getmetatable("").__metatable = false

-- Library loops that run no Lua instruction cannot be stopped by the budget. Two never end for
-- some arguments: string.rep copies nothing n times for an empty string and separator, and
-- table.move over a huge range of a plain table moves nils for ever. The wrappers keep Lua's
-- results and errors; the long cases return at once or go in chunks, each element moved
-- counted as an instruction.
do
  local rep, move, tointeger, maxinteger = string.rep, table.move, math.tointeger, math.maxinteger
  local rawequal = rawequal
  local MOVE_CHUNK = 4096
  string.rep = function(s, n, sep)
    if s == "" and (sep == nil or sep == "") and tointeger(n) then return "" end
    return rep(s, n, sep)
  end
  table.move = function(a1, f, e, t, a2)
    local fi, ei, ti = tointeger(f), tointeger(e), tointeger(t)
    if not (fi and ei and ti) or ei - fi < MOVE_CHUNK or ei - fi == maxinteger then
      return move(a1, f, e, t, a2)
    end
    -- Checks the tables the way Lua does, on an empty range.
    move(a1, fi, fi - 1, ti, a2)
    if ti > maxinteger - (ei - fi) then
      error("bad argument #4 to 'move' (destination wrap around)", 2)
    end
    if ti > fi and ti <= ei and (a2 == nil or rawequal(a1, a2) or a1 == a2) then
      local hi = ei
      while true do
        local lo = fi
        if hi - fi >= MOVE_CHUNK then lo = hi - MOVE_CHUNK + 1 end
        charge(hi - lo + 1)
        move(a1, lo, hi, ti + (lo - fi), a2)
        if lo == fi then break end
        hi = lo - 1
      end
    else
      local lo = fi
      while true do
        local hi = ei
        if ei - lo >= MOVE_CHUNK then hi = lo + MOVE_CHUNK - 1 end
        charge(hi - lo + 1)
        move(a1, lo, hi, ti + (lo - fi), a2)
        if hi == ei then break end
        lo = hi + 1
      end
    end
    if a2 == nil then return a1 end
    return a2
  end
end

-- An error raised by a library function written in Rust (json.decode, …) reaches Lua as an
-- object printing "runtime error: <message>" and a Rust stack trace; pcall and xpcall hand
-- over the message alone, a string like the errors of Lua's own library functions.
local function plain(e)
  if type(e) ~= "userdata" then return e end
  local text = tostring(e)
  if type(text) ~= "string" or text:sub(1, 15) ~= "runtime error: " then return e end
  local cut = text:find("\nstack traceback:", 16, true)
  return text:sub(16, (cut or 0) - 1)
end

-- A budget error must not be swallowed by pcall: re-raise it once the protected call returns.
local function settle(ok, ...)
  if not ok then
    check()
    return ok, plain((...))
  end
  return ok, ...
end
G.pcall = function(...) return settle(raw_pcall(...)) end
-- Lua calls a message handler before it unwinds, and calls it with debug hooks switched off
-- when the error was raised by the budget hook itself: a handler looping there would run with no
-- budget at all. Once the budget is broken the handler is therefore skipped; before that it runs
-- budgeted like any other code (and if it breaks the budget, the next call skips it).
G.xpcall = function(f, handler, ...)
  if type(handler) ~= "function" then return settle(raw_xpcall(f, handler, ...)) end
  return settle(raw_xpcall(f, function(e)
    if tripped() then return e end
    return handler(plain(e))
  end, ...))
end

-- Text chunks only: no bytecode, whatever mode the caller asks for.
G.load = function(chunk, chunkname, _, ...)
  if select("#", ...) > 0 then return raw_load(chunk, chunkname, "t", (...)) end
  return raw_load(chunk, chunkname, "t")
end

-- Finalizers run with hooks disabled, so they would escape the budget.
G.setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not allowed in the sandbox", 2)
  end
  return raw_setmetatable(t, mt)
end

G.print = function(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  log_info(concat(parts, "\t"))
end

-- pairs() over a read-only proxy must not hand out the table behind it.
local function pairs_of(t)
  return function() return function(_, k) return next(t, k) end, nil, nil end
end

-- The library tables as they are before any user code runs: sites.lua may keep references to
-- them (`local S = string`) or rebind the global names, and it is these very tables that must
-- end up frozen (the string metatable's __index is one of them).
local LIBRARY_NAMES = { "string", "table", "math", "utf8", "json", "regex", "log" }
local LIBRARIES = {}
for _, name in ipairs(LIBRARY_NAMES) do LIBRARIES[name] = G[name] end

-- Makes `t` itself read-only, so every reference to it sees the same contents: they move to a
-- hidden table that `t` reads through; writes raise; pairs() still lists them.
local function freeze_in_place(t, what)
  local inner = {}
  for k, v in next, t do inner[k] = v end
  for k in next, inner do t[k] = nil end
  local function deny() error(what .. " is read-only", 2) end
  force_setmetatable(t, { __index = inner, __newindex = deny, __metatable = false, __pairs = pairs_of(inner) })
end

-- After evaluation, a hook worker freezes its globals so one site's hook cannot change what
-- another site's hook sees: globals become read-only, and so do the library tables, in place.
return function()
  local frozen = {}
  for _, name in ipairs(LIBRARY_NAMES) do
    for _, t in ipairs { LIBRARIES[name], rawget(G, name) } do
      if type(t) == "table" and not frozen[t] then
        frozen[t] = true
        freeze_in_place(t, name)
      end
    end
  end
  local backing = {}
  for k, v in next, G do backing[k] = v end
  for k in next, backing do G[k] = nil end
  backing._G = G
  -- Forced: sites.lua may have protected _G's metatable (__metatable), which must not make the
  -- workers fail where validation succeeded.
  force_setmetatable(G, {
    __index = backing, __metatable = false,
    __newindex = function(_, k) error("cannot assign global '" .. tostring(k) .. "' from a hook (use a local)", 2) end,
    __pairs = pairs_of(backing),
  })
end
"##;

/// Why a budget stopped the code it was watching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trip {
    Instructions,
    WallTime,
}

/// The per-run limits the instruction hook enforces. Armed before running Lua code on behalf of
/// someone (an evaluation, a hook call) and disarmed after; while disarmed the hook is a no-op.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    armed: Cell<bool>,
    /// Instructions left, decremented by [`CHECK_EVERY`] at each check.
    remaining: Cell<u64>,
    deadline: Cell<Option<Instant>>,
    /// Set once a limit is broken; stays set (and keeps raising) until disarmed, so `pcall`
    /// cannot swallow it.
    tripped: Cell<Option<Trip>>,
    /// At load time the position of the last check is kept, to place a memory error — and, shared
    /// with the thread waiting for the evaluation, a call stuck past the wall-clock limit.
    track_location: Cell<bool>,
    last_location: Arc<Mutex<Option<Location>>>,
}

impl Budget {
    pub(crate) fn arm(&self, instructions: u64, wall_time: Duration, track_location: bool) {
        self.remaining.set(instructions);
        self.deadline.set(Instant::now().checked_add(wall_time));
        self.tripped.set(None);
        self.track_location.set(track_location);
        self.last_location.lock().take();
        self.armed.set(true);
    }

    /// Stops watching; returns the limit that was broken, if any.
    pub(crate) fn disarm(&self) -> Option<Trip> {
        self.armed.set(false);
        self.tripped.take()
    }

    pub(crate) fn tripped(&self) -> Option<Trip> {
        self.tripped.get()
    }

    /// Counts `instructions` of work done in Rust on Lua's behalf (where the hook cannot see
    /// it) and checks the deadline; the error when a limit is broken, as the hook would raise.
    pub(crate) fn charge(&self, instructions: u64) -> mlua::Result<()> {
        if !self.armed.get() {
            return Ok(());
        }
        if let Some(trip) = self.tripped.get() {
            return Err(trip_error(trip));
        }
        let left = self.remaining.get().saturating_sub(instructions);
        self.remaining.set(left);
        let trip = if left == 0 {
            Some(Trip::Instructions)
        } else if self.deadline.get().is_some_and(|d| Instant::now() >= d) {
            Some(Trip::WallTime)
        } else {
            None
        };
        match trip {
            Some(trip) => {
                self.tripped.set(Some(trip));
                Err(trip_error(trip))
            }
            None => Ok(()),
        }
    }

    /// Where Lua code was running at the last check (only when armed with `track_location`).
    pub(crate) fn last_location(&self) -> Option<Location> {
        self.last_location.lock().clone()
    }

    /// The cell [`Budget::last_location`] reads, for another thread to read it while this one is
    /// stuck inside a library call.
    pub(crate) fn location_cell(&self) -> Arc<Mutex<Option<Location>>> {
        Arc::clone(&self.last_location)
    }

    fn on_check(&self, debug: &mlua::Debug) -> mlua::Result<VmState> {
        if !self.armed.get() {
            return Ok(VmState::Continue);
        }
        if self.track_location.get() {
            self.record_location(debug);
        }
        self.charge(u64::from(CHECK_EVERY))
            .map(|()| VmState::Continue)
    }

    /// A function is being called: when it is library code (a C function, or sitewatch's own
    /// Lua such as the wrapped `table.move`), its caller's position is where the evaluation
    /// will be until it returns.
    fn on_call(&self, lua: &Lua, debug: &mlua::Debug) {
        if !self.armed.get() || !self.track_location.get() {
            return;
        }
        let source = debug.source();
        let user_code = source.source.as_deref().is_some_and(|s| s.starts_with('@'));
        if user_code {
            return;
        }
        if let Some(caller) = lua.inspect_stack(1) {
            self.record_location(&caller);
        }
    }

    fn record_location(&self, debug: &mlua::Debug) {
        let line = debug.curr_line();
        let source = debug.source();
        let Some(file) = source.source.as_deref().and_then(|s| s.strip_prefix('@')) else {
            return;
        };
        if line <= 0 {
            return;
        }
        let mut last = self.last_location.lock();
        match last.as_mut() {
            Some(location) if location.file == file => location.line = line as u32,
            _ => {
                *last = Some(Location {
                    file: file.to_string(),
                    line: line as u32,
                })
            }
        }
    }
}

/// Installs the hook that enforces `budget` (and, with `calls`, records call sites).
fn set_budget_hook(lua: &Lua, budget: &Rc<Budget>, calls: bool) {
    let budget = Rc::clone(budget);
    let mut triggers = HookTriggers::new().every_nth_instruction(CHECK_EVERY);
    if calls {
        triggers = triggers.on_calls();
    }
    lua.set_hook(triggers, move |lua, debug| match debug.event() {
        DebugEvent::Call | DebugEvent::TailCall => {
            budget.on_call(lua, &debug);
            Ok(VmState::Continue)
        }
        _ => budget.on_check(&debug),
    });
}

fn trip_error(trip: Trip) -> mlua::Error {
    mlua::Error::runtime(match trip {
        Trip::Instructions => "instruction budget exceeded",
        Trip::WallTime => "time limit exceeded",
    })
}

/// One sandboxed Lua state and the handles sitewatch keeps on it.
pub(crate) struct Sandbox {
    pub(crate) lua: Lua,
    pub(crate) budget: Rc<Budget>,
    /// Site whose hook is running, for the `site` field of `log.*` messages (empty at load time).
    pub(crate) current_site: Rc<RefCell<String>>,
    /// Makes the globals and library tables read-only (see [`PRELUDE`]).
    freeze: Function,
    /// The heap limit currently set (0: none), which `json.decode` sizes its work by.
    memory_limit: Rc<Cell<usize>>,
    /// While set, `log.*` and `print` write nothing (see [`Sandbox::set_quiet`]).
    quiet: Rc<Cell<bool>>,
}

impl Sandbox {
    /// A fresh state with the helpers installed, the budget hook set (disarmed) and the heap
    /// capped at `memory_limit` bytes.
    pub(crate) fn new(memory_limit: usize) -> mlua::Result<Sandbox> {
        let lua = Lua::new_with(
            StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8,
            LuaOptions::default(),
        )?;
        lua.set_memory_limit(memory_limit)?;
        let memory_limit = Rc::new(Cell::new(memory_limit));
        let budget = Rc::new(Budget::default());
        set_budget_hook(&lua, &budget, false);
        let current_site = Rc::new(RefCell::new(String::new()));
        let globals = lua.globals();
        globals.raw_set("json", json_table(&lua, &memory_limit, &budget)?)?;
        globals.raw_set("regex", regex_table(&lua)?)?;
        let quiet = Rc::new(Cell::new(false));
        globals.raw_set("log", log_table(&lua, &current_site, &quiet)?)?;
        let check_budget = Rc::clone(&budget);
        let check = lua.create_function(move |_, ()| match check_budget.tripped() {
            Some(trip) => Err(trip_error(trip)),
            None => Ok(()),
        })?;
        let tripped_budget = Rc::clone(&budget);
        let tripped = lua.create_function(move |_, ()| Ok(tripped_budget.tripped().is_some()))?;
        let charge_budget = Rc::clone(&budget);
        let charge = lua.create_function(move |_, n: u64| charge_budget.charge(n))?;
        let force_setmetatable =
            lua.create_function(|_, (table, metatable): (Table, Option<Table>)| {
                table.set_metatable(metatable);
                Ok(())
            })?;
        let freeze: Function = lua
            .load(PRELUDE)
            .set_name("=sitewatch prelude")
            .set_mode(ChunkMode::Text)
            .call((check, tripped, charge, force_setmetatable))?;
        Ok(Sandbox {
            lua,
            budget,
            current_site,
            freeze,
            memory_limit,
            quiet,
        })
    }

    /// Silences `log.*` and `print` (or lets them speak again). The hook workers and the alert
    /// formatters evaluate `sites.lua` once more each, for its functions; what it logs at load
    /// time was logged once already, when the configuration itself was loaded.
    pub(crate) fn set_quiet(&self, quiet: bool) {
        self.quiet.set(quiet);
    }

    /// Caps the state's heap at `bytes`.
    pub(crate) fn set_memory_limit(&self, bytes: usize) -> mlua::Result<()> {
        self.lua.set_memory_limit(bytes)?;
        self.memory_limit.set(bytes);
        Ok(())
    }

    /// Also records where each library function is called from, so an evaluation stuck inside
    /// one can be placed (the instruction count alone may not have run yet). For loading only:
    /// a hook on every call costs too much for hook calls.
    pub(crate) fn track_calls(&self, on: bool) {
        set_budget_hook(&self.lua, &self.budget, on);
    }

    /// Makes globals and library tables read-only; for hook workers, after evaluation.
    pub(crate) fn freeze(&self) -> mlua::Result<()> {
        self.freeze.call(())
    }
}

/// A Lua error positioned at the Lua code that called the running Rust function, the way
/// `error(msg, 2)` would position it.
pub(crate) fn raise(lua: &Lua, message: impl std::fmt::Display) -> mlua::Error {
    match caller_location(lua) {
        Some(location) => mlua::Error::runtime(format!("{location}: {message}")),
        None => mlua::Error::runtime(message.to_string()),
    }
}

/// The `file:line` of the nearest Lua function (loaded from a file, i.e. `@`-named chunk) on the
/// stack above the running Rust function.
pub(crate) fn caller_location(lua: &Lua) -> Option<Location> {
    /// Frames examined: enough to step over `pcall` and a helper function or two.
    const MAX_LEVELS: usize = 16;
    for level in 1..MAX_LEVELS {
        let debug = lua.inspect_stack(level)?;
        let line = debug.curr_line();
        if line <= 0 {
            continue;
        }
        let source = debug.source();
        if let Some(file) = source.source.as_deref().and_then(|s| s.strip_prefix('@')) {
            return Some(Location {
                file: file.to_string(),
                line: line as u32,
            });
        }
    }
    None
}

/// A short description of a Lua value for messages: its type, and the value itself for scalars.
pub(crate) fn describe_value(value: &Value) -> String {
    /// Longest string quoted in a description.
    const MAX_QUOTED: usize = 60;
    match value {
        Value::Nil => "nil".to_string(),
        Value::Boolean(b) => format!("boolean ({b})"),
        Value::Integer(i) => format!("number ({i})"),
        Value::Number(n) => format!("number ({n})"),
        Value::String(s) => {
            let text = s.to_string_lossy();
            if text.chars().count() > MAX_QUOTED {
                let cut: String = text.chars().take(MAX_QUOTED).collect();
                format!("string ({cut:?}...)")
            } else {
                format!("string ({text:?})")
            }
        }
        other => other.type_name().to_string(),
    }
}

fn string_arg(
    lua: &Lua,
    value: &Value,
    function: &str,
    position: usize,
) -> mlua::Result<mlua::String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(_) | Value::Number(_) => lua.create_string(value.to_string()?),
        other => Err(raise(
            lua,
            format!(
                "bad argument #{position} to {function} (string expected, got {})",
                other.type_name()
            ),
        )),
    }
}

/// `json.decode(s)`, `json.encode(v)` and `json.null`.
fn json_table(
    lua: &Lua,
    memory_limit: &Rc<Cell<usize>>,
    budget: &Rc<Budget>,
) -> mlua::Result<Table> {
    let json = lua.create_table()?;
    let tape = RefCell::new(Tape::default());
    let limit = Rc::clone(memory_limit);
    json.raw_set(
        "decode",
        lua.create_function(move |lua, text: Value| {
            let text = string_arg(lua, &text, "json.decode", 1)?;
            let headroom = match limit.get() {
                0 => usize::MAX,
                limit => limit.saturating_sub(lua.used_memory()),
            };
            let mut tape = tape.borrow_mut();
            let parsed = tape.parse(&text.as_bytes(), headroom);
            let result = match parsed {
                Ok(()) => tape.build(lua),
                Err(DecodeError::TooLarge) => {
                    Err(mlua::Error::MemoryError("not enough memory".into()))
                }
                Err(DecodeError::Json(e)) => Err(raise(lua, format!("json.decode: {e}"))),
            };
            tape.trim();
            result
        })?,
    )?;
    let limit = Rc::clone(memory_limit);
    let budget = Rc::clone(budget);
    json.raw_set(
        "encode",
        lua.create_function(move |lua, value: Value| {
            let headroom = match limit.get() {
                0 => usize::MAX,
                limit => limit.saturating_sub(lua.used_memory()),
            };
            match json::encode(lua, &value, headroom, &mut |n| budget.charge(n)) {
                Ok(text) => lua.create_string(text),
                Err(EncodeError::TooLarge) => {
                    Err(mlua::Error::MemoryError("not enough memory".into()))
                }
                Err(EncodeError::Budget(error)) => Err(error),
                Err(EncodeError::Invalid(why)) => Err(raise(lua, format!("json.encode: {why}"))),
            }
        })?,
    )?;
    json.raw_set("null", lua.null())?;
    Ok(json)
}

/// `regex.match(s, pattern)`: Rust regex syntax over the bytes of `s`. Returns nil when there is
/// no match, the captures when the pattern has groups, the whole match otherwise — like
/// `string.match`.
fn regex_table(lua: &Lua) -> mlua::Result<Table> {
    let cache: RefCell<HashMap<String, regex::bytes::Regex>> = RefCell::new(HashMap::new());
    let table = lua.create_table()?;
    table.raw_set(
        "match",
        lua.create_function(move |lua, (subject, pattern): (Value, Value)| {
            let subject = string_arg(lua, &subject, "regex.match", 1)?;
            let pattern = string_arg(lua, &pattern, "regex.match", 2)?;
            if pattern.as_bytes().len() > MAX_REGEX_PATTERN {
                return Err(raise(
                    lua,
                    format!("regex.match: the pattern is longer than {MAX_REGEX_PATTERN} bytes"),
                ));
            }
            let pattern = pattern
                .to_str()
                .map_err(|_| raise(lua, "regex.match: the pattern is not valid UTF-8"))?;
            let mut cache = cache.borrow_mut();
            if !cache.contains_key(&*pattern) {
                let compiled = regex::bytes::RegexBuilder::new(&pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_DFA_LIMIT)
                    .build()
                    .map_err(|e| {
                        let mut shown = pattern.to_string();
                        crate::config::error::cut(
                            &mut shown,
                            crate::config::error::MAX_QUOTED_CHARS,
                        );
                        raise(
                            lua,
                            format!(
                                "regex.match: invalid regex {shown:?}: {}",
                                crate::config::error::one_line(&e.to_string())
                            ),
                        )
                    })?;
                if cache.len() >= REGEX_CACHE_CAPACITY {
                    cache.clear();
                }
                cache.insert(pattern.to_string(), compiled);
            }
            let re = &cache[&*pattern];
            let bytes = subject.as_bytes();
            let mut out = Vec::new();
            if re.captures_len() == 1 {
                if let Some(m) = re.find(&bytes) {
                    out.push(Value::String(lua.create_string(m.as_bytes())?));
                }
            } else if let Some(caps) = re.captures(&bytes) {
                for group in caps.iter().skip(1) {
                    out.push(match group {
                        Some(m) => Value::String(lua.create_string(m.as_bytes())?),
                        None => Value::Nil,
                    });
                }
            }
            Ok(MultiValue::from_vec(out))
        })?,
    )?;
    Ok(table)
}

/// `log.info(msg)` and `log.warn(msg)`: tracing events with the running hook's site.
/// `text` with every character that could forge or disguise a log line written as an escape:
/// line breaks and other control characters (`\n`, `\r`, `\u{1b}`; tabs stay), the Unicode line
/// and paragraph separators, and the bidirectional overrides and isolates.
pub(crate) fn escape_controls(text: &str) -> String {
    let needs = |c: char| {
        (c.is_control() && c != '\t')
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(needs) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if needs(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

fn log_table(
    lua: &Lua,
    current_site: &Rc<RefCell<String>>,
    quiet: &Rc<Cell<bool>>,
) -> mlua::Result<Table> {
    let table = lua.create_table()?;
    for warn in [false, true] {
        let site = Rc::clone(current_site);
        let quiet = Rc::clone(quiet);
        let function = lua.create_function(move |_, message: Value| {
            if quiet.get() {
                return Ok(());
            }
            let raw = match &message {
                // Only what can be logged is copied out of Lua.
                Value::String(s) => {
                    let bytes = s.as_bytes();
                    String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_LOG_MESSAGE + 1)])
                        .into_owned()
                }
                other => other.to_string()?,
            };
            let mut text = escape_controls(&raw);
            crate::result::shorten(&mut text, MAX_LOG_MESSAGE);
            let site = site.borrow();
            if warn {
                tracing::warn!(target: LOG_TARGET, site = %site, "{text}");
            } else {
                tracing::info!(target: LOG_TARGET, site = %site, "{text}");
            }
            Ok(())
        })?;
        table.raw_set(if warn { "warn" } else { "info" }, function)?;
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heap limit of the test sandboxes.
    const TEST_MEMORY: usize = 16 * 1024 * 1024;

    fn sandbox() -> Sandbox {
        Sandbox::new(TEST_MEMORY).expect("sandbox")
    }

    /// Runs `code` under a small budget and returns the error message, or "ok".
    fn run(sandbox: &Sandbox, code: &str) -> String {
        sandbox.budget.arm(1_000_000, Duration::from_secs(5), false);
        let result = sandbox.lua.load(code).set_name("@test.lua").exec();
        let trip = sandbox.budget.disarm();
        match (trip, result) {
            (Some(trip), _) => format!("{trip:?}"),
            (None, Ok(())) => "ok".to_string(),
            (None, Err(e)) => e.to_string(),
        }
    }

    #[test]
    fn removed_and_restricted_functions() {
        let sandbox = sandbox();
        let cases = [
            ("assert(os == nil and io == nil and package == nil and require == nil and debug == nil)", "ok"),
            ("assert(dofile == nil and loadfile == nil and collectgarbage == nil and rawset == nil)", "ok"),
            ("assert(string.dump == nil and coroutine == nil)", "ok"),
            ("assert(getmetatable('') == false)", "ok"),
            ("assert(load('return 1')() == 1)", "ok"),
            ("local f, err = load('\\27Lua'); assert(f == nil); error(err)", "binary chunk"),
            ("local f, err = load('\\27Lua', 'x', 'b'); assert(f == nil); error(err)", "binary chunk"),
            ("setmetatable({}, { __gc = function() end })", "__gc metamethods are not allowed"),
            ("while true do end", "Instructions"),
            ("while true do pcall(function() while true do end end) end", "Instructions"),
            ("local t = {} while true do t[#t + 1] = string.rep('x', 1 << 16) .. #t end", "not enough memory"),
        ];
        for (code, want) in cases {
            let got = run(&sandbox, code);
            assert!(got.contains(want), "{code}: got {got}");
        }
    }

    /// Runs `code` in a fresh sandbox on its own thread; a hang fails the test instead of
    /// blocking it (the thread is left behind).
    fn run_bounded(code: &'static str) -> String {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(run(&sandbox(), code));
        });
        rx.recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{code}: still running after 20s"))
    }

    #[test]
    fn message_handlers_run_under_the_budget() {
        let spin = "function() while true do end end";
        let cases = [
            // The budget trips in f: Lua calls the handler with debug hooks off.
            format!("xpcall({spin}, {spin})"),
            // A plain error: the handler runs with hooks on, trips the budget, and Lua calls it
            // again for that error with hooks off.
            format!("xpcall(error, {spin})"),
            "xpcall(function() error('x') end, function(e) local t = {} while true do t[1] = e end end)"
                .to_string(),
            format!("xpcall({spin}, function() xpcall({spin}, {spin}) end)"),
            format!("while true do xpcall({spin}, {spin}) end"),
            format!("xpcall({spin}, function() return pcall({spin}) end)"),
            format!("local ok = xpcall({spin}, function() return 1 end) while true do end"),
            format!("error(setmetatable({{}}, {{ __tostring = {spin} }}))"),
            format!("xpcall(error, {spin}, setmetatable({{}}, {{ __tostring = {spin} }}))"),
        ];
        for code in cases {
            let code: &'static str = Box::leak(code.into_boxed_str());
            assert_eq!(run_bounded(code), "Instructions", "{code}");
        }
        // A handler that does its job still works.
        let got = run_bounded(
            "local ok, e = xpcall(error, function(e) return 'handled: ' .. e end, 'x') \
             assert(not ok and e == 'handled: x', e)",
        );
        assert_eq!(got, "ok");
        let got = run_bounded("xpcall(print, nil)");
        assert!(got.contains("bad argument #2"), "{got}");
    }

    #[test]
    fn endless_library_loops_are_bounded() {
        let cases = [
            // Lua would copy nothing 2^62 times.
            (
                "assert(string.rep('', 1 << 62) == '' and (''):rep(1 << 62, '') == '')",
                "ok",
            ),
            (
                "assert(string.rep('', -1) == '' and string.rep('ab', 3, ',') == 'ab,ab,ab')",
                "ok",
            ),
            (
                "assert(string.rep(5, 2) == '55' and string.rep('', '3') == '')",
                "ok",
            ),
            (
                "string.rep('', 1.5)",
                "number has no integer representation",
            ),
            // A plain table moved over a huge range runs in budgeted chunks.
            ("table.move({}, 1, 1 << 62, 2)", "budget"),
            (
                "table.move({}, 1, math.maxinteger, 2)",
                "destination wrap around",
            ),
            (
                "table.move({}, math.mininteger, math.maxinteger, 1)",
                "too many elements to move",
            ),
            (
                "table.move(nil, 1, 1 << 40, 2)",
                "bad argument #1 to 'move'",
            ),
        ];
        for (code, want) in cases {
            let mut got = run_bounded(code);
            // Instructions or time, whichever a loaded machine breaks first.
            if got == "Instructions" || got == "WallTime" {
                got = "budget".into();
            }
            assert!(got.contains(want), "{code}: got {got}");
        }
        // Chunked moves give what Lua's own loop gives, overlapping or not.
        let got = run_bounded(
            "local n = 10000 \
             local function fill() local t = {} for i = 1, n do t[i] = i end return t end \
             local up = table.move(fill(), 1, n, 3) \
             assert(up[1] == 1 and up[2] == 2 and up[3] == 1 and up[n + 2] == n, 'up') \
             local down = table.move(fill(), 3, n, 1) \
             assert(down[1] == 3 and down[n - 2] == n and down[n] == n, 'down') \
             local far = table.move(fill(), 1, n, 5001) \
             assert(far[5001] == 1 and far[n + 5000] == n and far[5000] == 5000, 'far') \
             local other = table.move(fill(), 1, n, 1, {}) \
             assert(#other == n and other[n] == n, 'other') \
             local back = table.move(fill(), 1, n, 5001) \
             assert(back[5001] == 1 and back[10000] == 5000, 'back')",
        );
        assert_eq!(got, "ok");
    }

    #[test]
    fn json_encode_is_bounded() {
        let nest = "local t = {} for _ = 1, 5000 do t = { t } end";
        let cases = [
            (format!("{nest} json.encode(t)"), "json.encode: tables nested deeper than 128 levels"),
            (format!("{nest} pcall(json.encode, t) return json.encode({{ok = 1}})"), "ok"),
            ("local t = {} t.self = t json.encode(t)".into(), "json.encode: a table contains itself"),
            ("local t = { 1 } t[2] = t json.encode(t)".into(), "json.encode: a table contains itself"),
            ("json.encode({ f = print })".into(), "json.encode: cannot encode a function"),
            ("json.encode({ [{}] = 1 })".into(), "object keys must be strings, numbers or booleans"),
            // Shared (not cyclic) tables 60 levels deep: 2^60 values to write.
            ("local t = {} for _ = 1, 60 do t = { a = t, b = t } end json.encode(t)".into(), "budget"),
            // One 1 MiB string written 64 times: more than the heap can take.
            ("local s = string.rep('x', 1 << 20) local t = {} for i = 1, 64 do t[i] = s end json.encode(t)".into(), "not enough memory"),
        ];
        for (code, want) in cases {
            let code: &'static str = Box::leak(code.into_boxed_str());
            let mut got = run_bounded(code);
            if got == "Instructions" || got == "WallTime" {
                got = "budget".into();
            }
            assert!(got.contains(want), "{code}: got {got}");
        }
        let same = [
            r#"assert(json.encode({b = 1, a = "x", [3] = true}) == '{"3":true,"a":"x","b":1}')"#,
            r#"assert(json.encode({1, 2, {x = json.null}}) == '[1,2,{"x":null}]')"#,
            r#"assert(json.encode(json.decode('{"a":[],"b":{}}')) == '{"a":[],"b":{}}')"#,
            r#"assert(json.encode({1.5, 3.0, 0/0, 1e300}) == '[1.5,3.0,null,1e+300]', json.encode({1.5, 3.0, 0/0, 1e300}))"#,
            r#"assert(json.encode('a"\n') == [["a\"\n"]])"#,
            r#"assert(json.encode(nil) == 'null' and json.encode(false) == 'false' and json.encode(7) == '7')"#,
            r#"assert(json.encode({}) == '{}')"#,
        ];
        for code in same {
            assert_eq!(run_bounded(code), "ok", "{code}");
        }
    }

    #[test]
    fn log_text_cannot_forge_lines() {
        let cases = [
            ("plain text", "plain text"),
            ("tab\tstays", "tab\tstays"),
            ("a\nINFO forged", "a\\nINFO forged"),
            ("a\r\nb", "a\\r\\nb"),
            ("\u{1b}[31mred", "\\u{1b}[31mred"),
            ("nul\0", "nul\\u{0}"),
            ("del\u{7f}", "del\\u{7f}"),
            ("nel\u{85}x", "nel\\u{85}x"),
            ("ls\u{2028}ps\u{2029}", "ls\\u{2028}ps\\u{2029}"),
            ("\u{202e}evil", "\\u{202e}evil"),
            ("caf\u{e9}", "caf\u{e9}"),
        ];
        for (input, want) in cases {
            assert_eq!(escape_controls(input), want, "{input:?}");
        }
    }

    #[test]
    fn helpers() {
        let sandbox = sandbox();
        let cases = [
            (
                r#"local v = json.decode('{"a":[1,2,{"b":null}]}'); assert(v.a[2] == 2 and v.a[3].b == json.null)"#,
                "ok",
            ),
            (
                r#"assert(json.encode({b = 1, a = "x"}) == '{"a":"x","b":1}')"#,
                "ok",
            ),
            (
                r#"json.decode("{nope")"#,
                "test.lua:1: json.decode: key must be a string",
            ),
            (r#"assert(regex.match("abc123", "[0-9]+") == "123")"#, "ok"),
            (
                r#"local a, b = regex.match("k=v", "(\\w)=(\\w)"); assert(a == "k" and b == "v")"#,
                "ok",
            ),
            (r#"assert(regex.match("abc", "x") == nil)"#, "ok"),
            (
                r#"regex.match("abc", "(")"#,
                "test.lua:1: regex.match: invalid regex \"(\": unclosed group",
            ),
            (
                r#"log.info("hello"); log.warn(42); print("a", 1, nil)"#,
                "ok",
            ),
        ];
        for (code, want) in cases {
            let got = run(&sandbox, code);
            assert!(got.contains(want), "{code}: got {got}");
        }
    }

    #[test]
    fn freeze_makes_globals_read_only() {
        let sandbox = sandbox();
        assert_eq!(run(&sandbox, "helper = 1"), "ok");
        sandbox.freeze().unwrap();
        let cases = [
            (
                "assert(helper == 1 and string.format('%d', 2) == '2')",
                "ok",
            ),
            ("x = 1", "cannot assign global 'x'"),
            ("string.format = nil", "string is read-only"),
            ("json.decode = nil", "json is read-only"),
            (
                "local n = 0 for k in pairs(_G) do n = n + 1 end assert(n > 10)",
                "ok",
            ),
        ];
        for (code, want) in cases {
            let got = run(&sandbox, code);
            assert!(got.contains(want), "{code}: got {got}");
        }
    }
}
