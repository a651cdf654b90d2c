//! Hook runtime: Lua assertion hooks evaluated on dedicated worker threads, each with its own
//! sandboxed Lua state, under per-call instruction, wall-clock and memory limits.
//!
//! Sits after the probe in the data flow: `check` builds a [`HookInput`] from a response and
//! asks the [`HookPool`] for a [`HookVerdict`] per hook. Lua states are not shared across
//! threads, so each worker re-evaluates the same sources (`sites.lua` and its scripts) with the
//! configuration's own evaluator and keeps, per site, the list of hook functions; a hook is
//! addressed by (site name, index in its `hooks` list). Requests go over one shared queue; any
//! idle worker takes the next one.
//!
//! A hook that errors or breaks a limit fails its assertion with the reason and the worker stays
//! usable. A hook stuck inside a single library call (where the instruction hook cannot run,
//! e.g. a pathological Lua pattern) is answered by a watchdog after its wall time plus
//! [`STUCK_GRACE`]; that worker is lost until the call returns.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use std::os::raw::c_int;
use std::ptr;

use mlua::{ffi, ChunkMode, Function, Lua, Table, Value};
use tokio::sync::oneshot;

use crate::config::eval::{self, is_memory_error, lua_error_text};
use crate::config::sandbox::{describe_value, Sandbox, Trip, LOAD_MEMORY_LIMIT};
use crate::config::{ConfigErrors, ConfigSource};
use crate::probe::CertInfo;
use crate::result::{Level, Timings};

/// Instructions one hook call may run (about 20–50 ms of pure Lua).
pub const DEFAULT_HOOK_INSTRUCTIONS: u64 = 10_000_000;
/// Wall-clock time one hook call may take.
pub const DEFAULT_HOOK_WALL_TIME: Duration = Duration::from_secs(1);
/// Heap each worker's Lua state may use for hook calls, beyond what the loaded configuration
/// itself occupies.
pub const DEFAULT_HOOK_MEMORY: usize = 32 * 1024 * 1024;
/// How long past its wall time a call may go before the watchdog answers for it: the instruction
/// hook normally stops a call within microseconds of its deadline, so a call this late is stuck
/// inside one library function.
pub const STUCK_GRACE: Duration = Duration::from_secs(1);
/// How often the watchdog looks for stuck calls.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(100);
/// Generational GC: a minor collection after the heap grows this many percent (Lua's default).
const GC_MINOR_MULTIPLIER: c_int = 20;
/// Generational GC: a major collection after the heap grows this many percent (Lua's default).
const GC_MAJOR_MULTIPLIER: c_int = 100;
/// Longest reason a verdict carries; reasons travel in every result, so a hook cannot blow them
/// up with a huge error message.
pub const MAX_REASON_LEN: usize = 1024;
/// Most metrics one verdict may carry.
pub const MAX_METRICS: usize = 64;

/// Lua source of the `r` builder, loaded in each worker before any user code: read-only proxies
/// (fresh per call) over plain tables, so a hook can read `r` but not change what the next hook
/// sees.
const R_BUILDER: &str = r#"
local setmetatable, next, error = setmetatable, next, error
local function denier(what)
  return function() error(what .. " is read-only", 2) end
end
local deny_r, deny_headers, deny_timings, deny_cert = denier("r"), denier("r.headers"), denier("r.timings"), denier("r.cert")
local function ro(t, deny)
  return setmetatable({}, {
    __index = t, __newindex = deny, __metatable = false,
    -- An iterator that does not hand out `t` itself.
    __pairs = function() return function(_, k) return next(t, k) end, nil, nil end,
  })
end
return function(site, url, final_url, status, headers, body, body_truncated, attempt,
                dns, connect, tls, ttfb, transfer, total, cert)
  return ro({
    site = site, url = url, final_url = final_url, status = status,
    headers = ro(headers, deny_headers), body = body, body_truncated = body_truncated,
    attempt = attempt,
    timings = ro({ dns_ms = dns, connect_ms = connect, tls_ms = tls, ttfb_ms = ttfb,
                   transfer_ms = transfer, total_ms = total }, deny_timings),
    cert = cert and ro(cert, deny_cert) or nil,
  }, deny_r)
end
"#;

/// Limits of the pool and of each call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookLimits {
    /// Worker threads, each with its own Lua state.
    pub workers: usize,
    /// Lua VM instructions per call.
    pub instructions: u64,
    /// Wall-clock time per call.
    pub wall_time: Duration,
    /// Heap per Lua state beyond the loaded configuration, in bytes.
    pub memory_bytes: usize,
}

impl Default for HookLimits {
    fn default() -> Self {
        HookLimits {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            instructions: DEFAULT_HOOK_INSTRUCTIONS,
            wall_time: DEFAULT_HOOK_WALL_TIME,
            memory_bytes: DEFAULT_HOOK_MEMORY,
        }
    }
}

/// What a hook sees of one attempt, shared by all hooks of the site (hence passed in an `Arc`).
#[derive(Debug, Clone)]
pub struct HookInput {
    pub site: String,
    pub url: String,
    pub final_url: String,
    pub status: u16,
    /// Header names in lower case, in arrival order; repeats are joined with ", " for Lua.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub body_truncated: bool,
    pub timings: Timings,
    pub cert: Option<CertInfo>,
    /// 1 for the first attempt, 2 for the first retry, …
    pub attempt: u32,
}

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

/// Why a pool could not start.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook workers could not evaluate {path}:\n{errors}")]
    Evaluate {
        path: PathBuf,
        // In the message, not a #[source]: printed once by error chains.
        errors: ConfigErrors,
    },
    #[error("hook worker could not set up its Lua state: {message}")]
    Sandbox { message: String },
    #[error(
        "hook workers disagree about the sites in {path} (did a script change while starting?)"
    )]
    Inconsistent { path: PathBuf },
    #[error("cannot start hook worker thread")]
    Spawn(#[source] std::io::Error),
    #[error("hook worker {worker} stopped while starting")]
    WorkerLost { worker: usize },
    #[error("invalid hook limits: {0}")]
    Limits(&'static str),
}

/// One hook call on its way to a worker.
struct Job {
    /// Index of the site in the workers' tables.
    site: usize,
    index: usize,
    input: Arc<HookInput>,
    reply: oneshot::Sender<HookVerdict>,
}

/// What a worker is doing, shared with the watchdog.
#[derive(Default)]
struct Slot {
    current: Mutex<Option<Busy>>,
}

/// The call in progress on a worker.
struct Busy {
    started: Instant,
    /// Where to answer. The watchdog takes it when the call is stuck; the worker answers only if
    /// it is still there.
    reply: Option<oneshot::Sender<HookVerdict>>,
}

/// Where each site's hooks are in the workers' tables.
#[derive(Debug, Clone, Copy)]
struct SiteHooks {
    index: usize,
    count: usize,
}

/// A pool of hook workers evaluated from one configuration. Dropping it stops the workers (each
/// after its current call) and the watchdog.
pub struct HookPool {
    jobs: mpsc::Sender<Job>,
    sites: HashMap<String, SiteHooks>,
    /// Dropped with the pool, which ends the watchdog.
    _stop_watchdog: mpsc::Sender<()>,
    workers: usize,
}

impl std::fmt::Debug for HookPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookPool")
            .field("workers", &self.workers)
            .field("sites", &self.sites.len())
            .finish()
    }
}

/// What a worker reports once its state is ready: the sites and their hook counts, in order.
type Ready = Result<Vec<(String, usize)>, HookError>;

impl HookPool {
    /// Starts `limits.workers` workers, each evaluating `source` in its own sandbox, and waits
    /// until all are ready.
    pub fn start(source: &ConfigSource, limits: HookLimits) -> Result<HookPool, HookError> {
        if limits.workers == 0 {
            return Err(HookError::Limits("workers must be at least 1"));
        }
        if limits.instructions == 0 || limits.wall_time.is_zero() || limits.memory_bytes == 0 {
            return Err(HookError::Limits(
                "instructions, wall_time and memory_bytes must be positive",
            ));
        }
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Ready)>();
        let mut slots = Vec::with_capacity(limits.workers);
        for worker in 0..limits.workers {
            let slot = Arc::new(Slot::default());
            slots.push(Arc::clone(&slot));
            let source = source.clone();
            let limits = limits.clone();
            let queue = Arc::clone(&queue);
            let ready_tx = ready_tx.clone();
            std::thread::Builder::new()
                .name(format!("sitewatch-hook-{worker}"))
                .spawn(move || worker_main(worker, source, limits, queue, slot, ready_tx))
                .map_err(HookError::Spawn)?;
        }
        drop(ready_tx);

        let mut table: Option<Vec<(String, usize)>> = None;
        for _ in 0..limits.workers {
            let (worker, ready) = ready_rx
                .recv()
                .map_err(|_| HookError::WorkerLost { worker: 0 })?;
            let sites = ready.map_err(|e| match e {
                HookError::WorkerLost { .. } => HookError::WorkerLost { worker },
                other => other,
            })?;
            match &table {
                None => table = Some(sites),
                Some(first) if *first == sites => {}
                Some(_) => {
                    return Err(HookError::Inconsistent {
                        path: source.path.clone(),
                    })
                }
            }
        }
        let sites = table
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(index, (name, count))| (name, SiteHooks { index, count }))
            .collect();

        let (stop_watchdog, stop_rx) = mpsc::channel::<()>();
        let wall_time = limits.wall_time;
        std::thread::Builder::new()
            .name("sitewatch-hook-watchdog".into())
            .spawn(move || watchdog(slots, queue, wall_time, stop_rx))
            .map_err(HookError::Spawn)?;

        Ok(HookPool {
            jobs,
            sites,
            _stop_watchdog: stop_watchdog,
            workers: limits.workers,
        })
    }

    /// Runs hook `index` (0-based position in the site's `hooks` list) of `site` on `input`.
    /// Never fails: problems (an unknown hook, a stopped pool) are failed verdicts.
    pub async fn call(&self, site: &str, index: usize, input: Arc<HookInput>) -> HookVerdict {
        let Some(hooks) = self.sites.get(site) else {
            return HookVerdict::fail(format!("no hooks are loaded for site {site:?}"));
        };
        if index >= hooks.count {
            return HookVerdict::fail(format!(
                "site {site:?} has {} hook(s); there is no hook {}",
                hooks.count,
                index + 1
            ));
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            site: hooks.index,
            index,
            input,
            reply,
        };
        if self.jobs.send(job).is_err() {
            return HookVerdict::fail("the hook workers have stopped");
        }
        answer
            .await
            .unwrap_or_else(|_| HookVerdict::fail("the hook worker stopped before answering"))
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }
}

fn worker_main(
    id: usize,
    source: ConfigSource,
    limits: HookLimits,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    slot: Arc<Slot>,
    ready: mpsc::Sender<(usize, Ready)>,
) {
    let mut worker = match Worker::new(&source, &limits) {
        Ok(worker) => worker,
        Err(e) => {
            let _ = ready.send((id, Err(e)));
            return;
        }
    };
    let _ = ready.send((id, Ok(worker.site_table())));
    drop(ready);
    loop {
        let job = {
            let queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
            match queue.recv() {
                Ok(job) => job,
                Err(_) => return, // the pool is gone
            }
        };
        let Job {
            site,
            index,
            input,
            reply,
        } = job;
        *slot.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(Busy {
            started: Instant::now(),
            reply: Some(reply),
        });
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| worker.call(site, index, &input)));
        let verdict = match outcome {
            Ok(verdict) => verdict,
            Err(_) => {
                tracing::error!(worker = id, site = %input.site, "hook runtime panicked; rebuilding the Lua state");
                match Worker::new(&source, &limits) {
                    Ok(fresh) => worker = fresh,
                    Err(e) => {
                        tracing::error!(worker = id, error = %e, "hook worker cannot rebuild its Lua state; stopping");
                        answer(&slot, HookVerdict::fail("the hook runtime panicked"));
                        return;
                    }
                }
                HookVerdict::fail("the hook runtime panicked")
            }
        };
        answer(&slot, verdict);
    }
}

/// Sends the verdict of the current call unless the watchdog already answered it.
fn answer(slot: &Slot, verdict: HookVerdict) {
    let current = slot
        .current
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    match current.and_then(|busy| busy.reply) {
        Some(reply) => {
            let _ = reply.send(verdict);
        }
        None => {
            tracing::warn!("a hook call the watchdog gave up on has finished; its worker is back")
        }
    }
}

/// Answers calls stuck past their wall time + [`STUCK_GRACE`]; when every worker is stuck, fails
/// the queued calls too instead of letting them wait.
fn watchdog(
    slots: Vec<Arc<Slot>>,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    wall_time: Duration,
    stop: mpsc::Receiver<()>,
) {
    let limit = wall_time + STUCK_GRACE;
    let mut stuck = vec![false; slots.len()];
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(WATCHDOG_PERIOD) {
        for (i, slot) in slots.iter().enumerate() {
            let mut current = slot.current.lock().unwrap_or_else(PoisonError::into_inner);
            stuck[i] = match current.as_mut() {
                Some(busy) if busy.started.elapsed() > limit => {
                    if let Some(reply) = busy.reply.take() {
                        tracing::error!(
                            worker = i,
                            "hook call stuck inside a library call; answering it as failed"
                        );
                        let _ = reply.send(HookVerdict::fail(format!(
                            "hook did not return within {wall_time:?} (stuck inside a library call)"
                        )));
                    }
                    true
                }
                _ => false,
            };
        }
        let all_stuck = stuck.iter().all(|&s| s);
        if all_stuck {
            // Nobody can take the queue: fail what is waiting rather than hang the callers.
            if let Ok(queue) = queue.try_lock() {
                while let Ok(job) = queue.try_recv() {
                    let _ = job
                        .reply
                        .send(HookVerdict::fail("every hook worker is stuck"));
                }
            }
        }
    }
}

/// One worker's Lua state with the hook functions of every site.
struct Worker {
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
    fn new(source: &ConfigSource, limits: &HookLimits) -> Result<Worker, HookError> {
        let sandbox_error = |e: mlua::Error| HookError::Sandbox {
            message: e.to_string(),
        };
        let sandbox = Sandbox::new(LOAD_MEMORY_LIMIT).map_err(sandbox_error)?;
        let build_r: Function = sandbox
            .lua
            .load(R_BUILDER)
            .set_name("=sitewatch r")
            .set_mode(ChunkMode::Text)
            .eval()
            .map_err(sandbox_error)?;
        let evaluation = eval::evaluate(&sandbox, source);
        if !evaluation.errors.is_empty() {
            return Err(HookError::Evaluate {
                path: source.path.clone(),
                errors: ConfigErrors::new(evaluation.errors),
            });
        }
        let sites = eval::hook_functions(&evaluation);
        drop(evaluation);
        eval::disable_load_time_functions(&sandbox.lua).map_err(sandbox_error)?;
        sandbox.freeze().map_err(sandbox_error)?;
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

    fn site_table(&self) -> Vec<(String, usize)> {
        self.sites
            .iter()
            .map(|(name, hooks)| (name.clone(), hooks.len()))
            .collect()
    }

    fn call(&mut self, site: usize, index: usize, input: &HookInput) -> HookVerdict {
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
        let result = run_hook(&self.sandbox.lua, &self.build_r, function, input);
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
            truncate(reason, MAX_REASON_LEN);
        }
        verdict
    }
}

/// Cuts `text` to at most `max` bytes (on a character boundary), marking the cut.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
}

/// Arguments the `r` builder takes (see [`R_BUILDER`]).
const R_BUILDER_ARGS: c_int = 15;
/// Longest header name lower-cased for `r.headers` (names are lower case from the probe anyway).
const MAX_LOWERCASED_NAME: usize = 256;

/// Builds `r` and calls the hook on it, in one protected Lua call: the data tables are made with
/// the raw C API and the read-only proxies by the Lua builder. Going through mlua value by value
/// costs a protected call per table slot once a memory limit is set.
fn run_hook(
    lua: &Lua,
    builder: &Function,
    hook: &Function,
    input: &HookInput,
) -> mlua::Result<(Value, Value)> {
    let not_after = input.cert.as_ref().map(|cert| {
        cert.not_after
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    });
    let days = input
        .cert
        .as_ref()
        .map_or(0, |cert| days_left(cert, chrono::Utc::now()));
    let t = &input.timings;
    // SAFETY: `exec_raw` runs the closure in protected mode with the builder at stack index 1
    // and the hook at 2. The closure checks stack space, pushes only values it creates, and owns
    // nothing that needs dropping (it borrows `input`), so a Lua error raised by the builder, the
    // hook or an allocation may unwind past it. It leaves exactly the hook's two results.
    unsafe {
        lua.exec_raw((builder, hook), |state| {
            ffi::luaL_checkstack(state, R_BUILDER_ARGS + 8, ptr::null());
            ffi::lua_pushvalue(state, 2);
            ffi::lua_pushvalue(state, 1);
            push_bytes(state, input.site.as_bytes());
            push_bytes(state, input.url.as_bytes());
            push_bytes(state, input.final_url.as_bytes());
            ffi::lua_pushinteger(state, ffi::lua_Integer::from(input.status));
            push_headers(state, &input.headers);
            push_bytes(state, &input.body);
            ffi::lua_pushboolean(state, c_int::from(input.body_truncated));
            ffi::lua_pushinteger(state, ffi::lua_Integer::from(input.attempt));
            for phase in [t.dns_ms, t.connect_ms, t.tls_ms, t.ttfb_ms, t.transfer_ms] {
                ffi::lua_pushnumber(state, phase.unwrap_or(0.0));
            }
            ffi::lua_pushnumber(state, t.total_ms);
            match (&input.cert, &not_after) {
                (Some(cert), Some(not_after)) => {
                    ffi::lua_createtable(state, 0, 4);
                    push_bytes(state, not_after.as_bytes());
                    ffi::lua_setfield(state, -2, c"not_after".as_ptr());
                    ffi::lua_pushinteger(state, days);
                    ffi::lua_setfield(state, -2, c"days_left".as_ptr());
                    push_bytes(state, cert.subject.as_bytes());
                    ffi::lua_setfield(state, -2, c"subject".as_ptr());
                    push_bytes(state, cert.issuer.as_bytes());
                    ffi::lua_setfield(state, -2, c"issuer".as_ptr());
                }
                _ => ffi::lua_pushnil(state),
            }
            ffi::lua_call(state, R_BUILDER_ARGS, 1);
            ffi::lua_call(state, 1, 2);
            ffi::lua_remove(state, 1);
            ffi::lua_remove(state, 1);
        })
    }
}

/// # Safety
/// Inside a protected call with stack space for one more value.
unsafe fn push_bytes(state: *mut ffi::lua_State, bytes: &[u8]) {
    ffi::lua_pushlstring(state, bytes.as_ptr().cast(), bytes.len());
}

/// Pushes the headers table: lower-case names, repeated headers joined with ", ".
///
/// # Safety
/// Inside a protected call with stack space for four more values.
unsafe fn push_headers(state: *mut ffi::lua_State, headers: &[(String, String)]) {
    ffi::lua_createtable(
        state,
        0,
        c_int::try_from(headers.len()).unwrap_or(c_int::MAX),
    );
    for (i, (name, value)) in headers.iter().enumerate() {
        if headers[..i]
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        push_lowercase(state, name);
        push_bytes(state, value.as_bytes());
        for (other, value) in &headers[i + 1..] {
            if other.eq_ignore_ascii_case(name) {
                ffi::lua_pushlstring(state, c", ".as_ptr(), 2);
                push_bytes(state, value.as_bytes());
                ffi::lua_concat(state, 3);
            }
        }
        ffi::lua_rawset(state, -3);
    }
}

/// # Safety
/// Inside a protected call with stack space for one more value.
unsafe fn push_lowercase(state: *mut ffi::lua_State, name: &str) {
    let bytes = name.as_bytes();
    if !bytes.iter().any(u8::is_ascii_uppercase) || bytes.len() > MAX_LOWERCASED_NAME {
        return push_bytes(state, bytes);
    }
    let mut lower = [0u8; MAX_LOWERCASED_NAME];
    let lower = &mut lower[..bytes.len()];
    lower.copy_from_slice(bytes);
    lower.make_ascii_lowercase();
    push_bytes(state, lower);
}

/// Whole days until the certificate expires (negative once expired).
fn days_left(cert: &CertInfo, now: chrono::DateTime<chrono::Utc>) -> i64 {
    (cert.not_after - now).num_seconds().div_euclid(86_400)
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

/// The return contract: `true`/`nil` pass; `false, reason` fails; `"degraded", reason` warns;
/// a table `{ ok, degraded, reason, metrics }`; anything else fails, saying what it was.
fn interpret(first: Value, second: Value) -> HookVerdict {
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
        Value::String(s) => Some(s.to_string_lossy()),
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
    if let Some(problem) = problem {
        return HookVerdict {
            metrics,
            ..HookVerdict::fail(problem)
        };
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(days_left(&cert(24 * 30 + 1), now), 30);
        assert_eq!(days_left(&cert(23), now), 0);
        assert_eq!(days_left(&cert(-1), now), -1);
    }
}
