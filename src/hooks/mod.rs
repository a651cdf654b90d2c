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
pub use verdict::{HookVerdict, MAX_METRICS, MAX_REASON_LEN};
use worker::Worker;

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
        "hook workers disagree about the sites in {path} (did a script change while starting?)"
    )]
    Inconsistent { path: PathBuf },
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
#[derive(Default)]
struct Slot {
    current: Mutex<Option<Busy>>,
    phase: Mutex<Phase>,
}

/// Where a worker thread is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Phase {
    /// Evaluating the configuration.
    #[default]
    Starting,
    /// Taking calls from the queue.
    Serving,
    /// Given up on while stuck (counted by `crate::lua::stuck` until it returns); it exits as
    /// soon as it can.
    Abandoned,
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
        let (calls, queue) = mpsc::channel::<PendingCall>();
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
                .stack_size(stuck::EVALUATION_STACK)
                .spawn(move || worker_main(worker, source, limits, queue, slot, ready_tx))
                .map_err(HookError::Spawn)?;
        }
        drop(ready_tx);

        let mut table: Option<Vec<(String, usize)>> = None;
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

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }
}

fn worker_main(
    id: usize,
    source: ConfigSource,
    limits: HookLimits,
    queue: Arc<Mutex<mpsc::Receiver<PendingCall>>>,
    slot: Arc<Slot>,
    ready: mpsc::Sender<(usize, Ready)>,
) {
    let mut worker = match Worker::new(&source, &limits) {
        Ok(worker) => worker,
        Err(e) => {
            if *slot.phase.lock() == Phase::Abandoned {
                stuck::recovered();
            }
            let _ = ready.send((id, Err(e)));
            return;
        }
    };
    {
        let mut phase = slot.phase.lock();
        if *phase == Phase::Abandoned {
            stuck::recovered();
            return;
        }
        *phase = Phase::Serving;
    }
    let _ = ready.send((id, Ok(worker.site_table())));
    drop(ready);
    loop {
        let job = {
            let queue = queue.lock();
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
    let current = slot.current.lock().take();
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
    queue: Arc<Mutex<mpsc::Receiver<PendingCall>>>,
    wall_time: Duration,
    stop: mpsc::Receiver<()>,
) {
    let limit = wall_time + STUCK_GRACE;
    let mut stuck = vec![false; slots.len()];
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(WATCHDOG_PERIOD) {
        for (i, slot) in slots.iter().enumerate() {
            let mut current = slot.current.lock();
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
            if let Some(queue) = queue.try_lock() {
                while let Ok(job) = queue.try_recv() {
                    let _ = job
                        .reply
                        .send(HookVerdict::fail("every hook worker is stuck"));
                }
            }
        }
    }
}
