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
//! [`STUCK_GRACE`]; the watchdog then abandons that worker and starts a replacement, as long as
//! fewer than `crate::lua::stuck::MAX_ABANDONED_THREADS` threads are abandoned process-wide.
//! The abandoned thread ends (and frees its Lua state) when its call returns.
//!
//! Layout: [`worker`] (one Lua state and its calls), [`verdict`] (the return contract that
//! `scripts/sitewatch.d.lua` documents); this file holds the pool, its queue and the watchdog.
//! The unsafe C-API code that builds `r` lives in `crate::lua::r_table`.

mod verdict;
mod worker;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::config::{ConfigErrors, ConfigSource};
use crate::lua::sandbox::LOAD_WALL_TIME;
use crate::lua::stuck;
use crate::probe::CertInfo;
use crate::result::Timings;
pub use verdict::{HookVerdict, MAX_METRICS, MAX_METRIC_NAME, MAX_REASON_LEN};
use worker::{SiteTable, Worker};

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
pub const STUCK_GRACE: Duration = stuck::STUCK_GRACE;
/// How often the watchdog looks for stuck calls.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(100);

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
        "hook workers disagree about {what} in {path}: build site and hook lists in a fixed order \
         (ipairs or a numeric for, not pairs), and do not change scripts while starting"
    )]
    Inconsistent { path: PathBuf, what: String },
    #[error("cannot start hook worker thread")]
    Spawn(#[source] std::io::Error),
    #[error("hook workers did not finish evaluating {path} within {}s (stuck inside a library call?)", limit.as_secs())]
    StartTimeout { path: PathBuf, limit: Duration },
    #[error("hook worker {worker} stopped while starting")]
    WorkerLost { worker: usize },
    #[error("invalid hook limits: {0}")]
    Limits(&'static str),
}

/// One hook call on its way to a worker.
struct PendingCall {
    /// Index of the site in the workers' tables.
    site: usize,
    index: usize,
    input: Arc<HookInput>,
    reply: oneshot::Sender<HookVerdict>,
}

/// What a worker is doing, shared with the watchdog.
struct Slot {
    /// For logs: workers are numbered in the order they were started, replacements included.
    id: usize,
    current: Mutex<Option<Busy>>,
    phase: Mutex<Phase>,
    /// When the worker thread started: a worker still [`Phase::Starting`] long after is stuck
    /// evaluating.
    born: Instant,
}

impl Slot {
    fn new(id: usize) -> Slot {
        Slot {
            id,
            current: Mutex::new(None),
            phase: Mutex::new(Phase::Starting),
            born: Instant::now(),
        }
    }
}

/// Where a worker thread is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Evaluating the configuration.
    Starting,
    /// Taking calls from the queue.
    Serving,
    /// Given up on while stuck (counted by `crate::lua::stuck` until it returns) and replaced;
    /// it exits as soon as it can.
    Abandoned,
    /// Could not set up its Lua state; gone.
    Dead,
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

/// What the workers and the watchdog of one pool share.
struct Shared {
    source: ConfigSource,
    limits: HookLimits,
    queue: Mutex<mpsc::Receiver<PendingCall>>,
    /// The sites and hooks every worker must see, set once the first workers agreed; a
    /// replacement worker that sees something else does not serve.
    table: std::sync::OnceLock<SiteTable>,
    /// Number of the next worker started, for logs.
    next_id: std::sync::atomic::AtomicUsize,
}

/// A pool of hook workers evaluated from one configuration. Dropping it stops the workers (each
/// after its current call) and the watchdog.
pub struct HookPool {
    calls: mpsc::Sender<PendingCall>,
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

/// What a worker reports once its state is ready: the sites by name and their hooks.
type Ready = Result<SiteTable, HookError>;

impl HookPool {
    /// Starts `limits.workers` workers, each evaluating `source` in its own sandbox, and waits
    /// until all are ready. Long on purpose (over 80 lines): the start-up protocol — spawn, wait
    /// for every worker's site table, check they agree, start the watchdog — in order.
    pub fn start(source: &ConfigSource, limits: HookLimits) -> Result<HookPool, HookError> {
        if limits.workers == 0 {
            return Err(HookError::Limits("workers must be at least 1"));
        }
        if limits.instructions == 0 || limits.wall_time.is_zero() || limits.memory_bytes == 0 {
            return Err(HookError::Limits(
                "instructions, wall_time and memory_bytes must be positive",
            ));
        }
        let (calls, queue) = mpsc::channel::<PendingCall>();
        let shared = Arc::new(Shared {
            source: source.clone(),
            limits: limits.clone(),
            queue: Mutex::new(queue),
            table: std::sync::OnceLock::new(),
            next_id: std::sync::atomic::AtomicUsize::new(0),
        });
        let (ready_tx, ready_rx) = mpsc::channel::<(usize, Ready)>();
        let mut slots = Vec::with_capacity(limits.workers);
        for _ in 0..limits.workers {
            slots.push(spawn_worker(&shared, Some(ready_tx.clone())).map_err(HookError::Spawn)?);
        }
        drop(ready_tx);

        let mut table: Option<SiteTable> = None;
        // Evaluating is bounded like loading the configuration; a worker stuck past that inside
        // one library call is abandoned.
        let deadline = Instant::now() + LOAD_WALL_TIME + STUCK_GRACE;
        for _ in 0..limits.workers {
            let left = deadline.saturating_duration_since(Instant::now());
            let (worker, ready) = match ready_rx.recv_timeout(left) {
                Ok(ready) => ready,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    for slot in &slots {
                        let mut phase = slot.phase.lock();
                        if *phase == Phase::Starting {
                            *phase = Phase::Abandoned;
                            stuck::abandon();
                        }
                    }
                    return Err(HookError::StartTimeout {
                        path: source.path.clone(),
                        limit: LOAD_WALL_TIME,
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(HookError::WorkerLost { worker: 0 })
                }
            };
            let sites = ready.map_err(|e| match e {
                HookError::WorkerLost { .. } => HookError::WorkerLost { worker },
                other => other,
            })?;
            match &table {
                None => table = Some(sites),
                Some(first) if *first == sites => {}
                Some(first) => {
                    return Err(HookError::Inconsistent {
                        path: source.path.clone(),
                        what: disagreement(first, &sites),
                    })
                }
            }
        }
        let table = table.unwrap_or_default();
        let sites = table
            .iter()
            .enumerate()
            .map(|(index, (name, hooks))| {
                (
                    name.clone(),
                    SiteHooks {
                        index,
                        count: hooks.len(),
                    },
                )
            })
            .collect();
        let _ = shared.table.set(table);

        let (stop_watchdog, stop_rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("sitewatch-hook-watchdog".into())
            .spawn(move || watchdog(shared, slots, stop_rx))
            .map_err(HookError::Spawn)?;

        Ok(HookPool {
            calls,
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
        let call = PendingCall {
            site: hooks.index,
            index,
            input,
            reply,
        };
        if self.calls.send(call).is_err() {
            return HookVerdict::fail("the hook workers have stopped");
        }
        answer
            .await
            .unwrap_or_else(|_| HookVerdict::fail("the hook worker stopped before answering"))
    }

    /// Number of worker threads serving (or starting to), replacements for stuck ones included.
    pub fn workers(&self) -> usize {
        self.workers
    }
}

/// What two workers' tables disagree about, for the error.
fn disagreement(a: &SiteTable, b: &SiteTable) -> String {
    let names = |t: &SiteTable| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    if names(a) != names(b) {
        return "the sites".into();
    }
    a.iter().zip(b).find(|(x, y)| x != y).map_or_else(
        || "the sites".into(),
        |((name, _), _)| format!("the hooks of site {name:?}"),
    )
}

/// Starts one worker thread; `ready` hears from it once its Lua state is set up (replacements
/// started by the watchdog have no one waiting).
fn spawn_worker(
    shared: &Arc<Shared>,
    ready: Option<mpsc::Sender<(usize, Ready)>>,
) -> std::io::Result<Arc<Slot>> {
    let id = shared
        .next_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let slot = Arc::new(Slot::new(id));
    let (thread_shared, thread_slot) = (Arc::clone(shared), Arc::clone(&slot));
    std::thread::Builder::new()
        .name(format!("sitewatch-hook-{id}"))
        .stack_size(stuck::EVALUATION_STACK)
        .spawn(move || worker_main(&thread_shared, &thread_slot, ready))?;
    Ok(slot)
}

/// Leaves `phase` for a worker thread that is ending; an abandoned one is no longer stuck.
fn end_worker(slot: &Slot, phase: Phase) {
    let mut current = slot.phase.lock();
    if *current == Phase::Abandoned {
        stuck::recovered();
    }
    *current = phase;
}

/// A worker thread: take a call, mark its slot busy, run the hook, answer unless the watchdog
/// already did. Kept in one function (a little over 80 lines) so the slot protocol with the
/// watchdog reads in one place.
fn worker_main(shared: &Shared, slot: &Slot, ready: Option<mpsc::Sender<(usize, Ready)>>) {
    let id = slot.id;
    let mut worker = match Worker::new(&shared.source, &shared.limits) {
        Ok(worker) => worker,
        Err(e) => {
            if ready.is_none() {
                tracing::error!(worker = id, error = %e, "replacement hook worker could not start");
            }
            end_worker(slot, Phase::Dead);
            if let Some(ready) = ready {
                let _ = ready.send((id, Err(e)));
            }
            return;
        }
    };
    if ready.is_none() && shared.table.get() != Some(&worker.site_table()) {
        tracing::error!(
            worker = id,
            "replacement hook worker sees other sites than the pool; not serving"
        );
        end_worker(slot, Phase::Dead);
        return;
    }
    {
        let mut phase = slot.phase.lock();
        if *phase == Phase::Abandoned {
            stuck::recovered();
            *phase = Phase::Dead;
            return;
        }
        *phase = Phase::Serving;
    }
    if let Some(ready) = ready {
        let _ = ready.send((id, Ok(worker.site_table())));
    }
    loop {
        // A worker replaced while stuck leaves once its call has returned.
        if *slot.phase.lock() == Phase::Abandoned {
            tracing::info!(
                worker = id,
                "a hook worker given up on has returned; it stops"
            );
            end_worker(slot, Phase::Dead);
            return;
        }
        let job = {
            let queue = shared.queue.lock();
            match queue.recv() {
                Ok(job) => job,
                Err(_) => return, // the pool is gone
            }
        };
        let PendingCall {
            site,
            index,
            input,
            reply,
        } = job;
        *slot.current.lock() = Some(Busy {
            started: Instant::now(),
            reply: Some(reply),
        });
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| worker.call(site, index, &input)));
        let verdict = match outcome {
            Ok(verdict) => verdict,
            Err(_) => {
                tracing::error!(worker = id, site = %input.site, "hook runtime panicked; rebuilding the Lua state");
                match Worker::new(&shared.source, &shared.limits) {
                    Ok(fresh) => worker = fresh,
                    Err(e) => {
                        tracing::error!(worker = id, error = %e, "hook worker cannot rebuild its Lua state; stopping");
                        answer(slot, HookVerdict::fail("the hook runtime panicked"));
                        end_worker(slot, Phase::Dead);
                        return;
                    }
                }
                HookVerdict::fail("the hook runtime panicked")
            }
        };
        answer(slot, verdict);
    }
}

/// Sends the verdict of the current call unless the watchdog already answered it.
fn answer(slot: &Slot, verdict: HookVerdict) {
    let current = slot.current.lock().take();
    if let Some(reply) = current.and_then(|busy| busy.reply) {
        let _ = reply.send(verdict);
    }
}

/// Watches the workers: answers calls stuck past their wall time + [`STUCK_GRACE`], gives up on
/// the stuck worker and starts a replacement (while fewer than
/// [`stuck::MAX_ABANDONED_THREADS`] threads are abandoned, process-wide); when no worker can
/// serve, fails the queued calls instead of letting them wait.
fn watchdog(shared: Arc<Shared>, mut slots: Vec<Arc<Slot>>, stop: mpsc::Receiver<()>) {
    let wall_time = shared.limits.wall_time;
    let call_limit = wall_time + STUCK_GRACE;
    let start_limit = LOAD_WALL_TIME + STUCK_GRACE;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(WATCHDOG_PERIOD) {
        let mut stuck_slots = Vec::new();
        let mut able = 0;
        slots.retain(|slot| *slot.phase.lock() != Phase::Dead);
        for slot in &slots {
            let phase = *slot.phase.lock();
            let is_stuck = match phase {
                Phase::Starting => slot.born.elapsed() > start_limit,
                Phase::Serving => {
                    let mut current = slot.current.lock();
                    match current.as_mut() {
                        Some(busy) if busy.started.elapsed() > call_limit => {
                            if let Some(reply) = busy.reply.take() {
                                tracing::error!(
                                    worker = slot.id,
                                    "hook call stuck inside a library call; answering it as failed"
                                );
                                let _ = reply.send(HookVerdict::fail(format!(
                                    "hook did not return within {wall_time:?} (stuck inside a library call)"
                                )));
                            }
                            true
                        }
                        _ => false,
                    }
                }
                Phase::Abandoned | Phase::Dead => continue,
            };
            if is_stuck {
                stuck_slots.push(Arc::clone(slot));
            } else {
                able += 1;
            }
        }
        for slot in stuck_slots {
            if !stuck::may_abandon() {
                break;
            }
            {
                let mut phase = slot.phase.lock();
                if !matches!(*phase, Phase::Starting | Phase::Serving) {
                    continue;
                }
                *phase = Phase::Abandoned;
                stuck::abandon();
            }
            slots.retain(|s| !Arc::ptr_eq(s, &slot));
            match spawn_worker(&shared, None) {
                Ok(fresh) => {
                    tracing::warn!(
                        worker = slot.id,
                        replacement = fresh.id,
                        abandoned = stuck::abandoned(),
                        "hook worker stuck inside a library call: abandoned and replaced"
                    );
                    slots.push(fresh);
                    able += 1;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot start a replacement hook worker");
                }
            }
        }
        if able == 0 {
            // Nobody can take the queue: fail what is waiting rather than hang the callers.
            if let Some(queue) = shared.queue.try_lock() {
                while let Ok(job) = queue.try_recv() {
                    let _ = job
                        .reply
                        .send(HookVerdict::fail("every hook worker is stuck"));
                }
            }
        }
    }
}
