//! Threads stuck inside one library call, and the bounded wait that gives up on them.
//!
//! The instruction hook only runs between Lua instructions, so a single long C call (a Lua
//! pattern that backtracks for minutes inside `string.find`) cannot be interrupted. Such a
//! thread cannot be stopped either; it is *abandoned*: whoever waits for it answers for it and
//! carries on, and the thread finishes (freeing its Lua state) whenever the call returns.
//! [`run_isolated`] does this for configuration loading; the hook pool does it for its workers.
//!
//! Abandoned threads are counted process-wide, because a configuration reloaded again and again
//! (or a pool replaced at every reload) would otherwise pile them up: past
//! [`MAX_ABANDONED_THREADS`] still stuck, nothing more is abandoned — loads fail at once and
//! stuck hook workers are no longer replaced — until one of them returns.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Threads that may be left stuck inside a library call at once, process-wide. Each holds its
/// Lua state (at most the load memory limit) and may keep one core busy.
pub(crate) const MAX_ABANDONED_THREADS: usize = 8;
/// How long past its wall-clock limit Lua code may go before it is taken to be stuck inside one
/// library call: the instruction hook stops ordinary code within microseconds of its deadline.
pub(crate) const STUCK_GRACE: Duration = Duration::from_secs(1);
/// Stack of an evaluating thread: the same as a main thread's, so Lua and the helpers behave as
/// they would there.
pub(crate) const EVALUATION_STACK: usize = 8 * 1024 * 1024;

/// Threads abandoned and not yet returned.
static ABANDONED: AtomicUsize = AtomicUsize::new(0);

/// How many abandoned threads are still stuck.
pub(crate) fn abandoned() -> usize {
    ABANDONED.load(Ordering::SeqCst)
}

/// Whether another thread may be abandoned.
pub(crate) fn may_abandon() -> bool {
    abandoned() < MAX_ABANDONED_THREADS
}

/// Counts one more abandoned thread.
pub(crate) fn abandon() {
    ABANDONED.fetch_add(1, Ordering::SeqCst);
}

/// An abandoned thread has returned.
pub(crate) fn recovered() {
    let _ = ABANDONED.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
}

/// Where a thread run by [`run_isolated`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Given up on by its caller; counted in [`ABANDONED`] until it returns.
    Abandoned,
    Done,
}

/// How a bounded run ended when it did not finish.
#[derive(Debug)]
pub(crate) enum Unfinished {
    /// Still running after the limit: the thread is abandoned. `passed_milestone`: the work
    /// had reported its [`Milestone`] (so it was in its second part).
    TimedOut { passed_milestone: bool },
    /// Not started: [`MAX_ABANDONED_THREADS`] are already stuck.
    TooManyStuck,
    /// The thread could not be started.
    Spawn(std::io::Error),
}

/// What the thread of [`run_isolated`] sends back.
enum Message<T> {
    Milestone,
    Done(std::thread::Result<T>),
}

/// Handed to the work of [`run_isolated`]: reporting it starts the second limit.
pub(crate) struct Milestone<'a, T>(&'a mpsc::Sender<Message<T>>);

impl<T> Milestone<'_, T> {
    pub(crate) fn reached(&self) {
        let _ = self.0.send(Message::Milestone);
    }
}

/// Runs `work` on a thread of its own and waits at most `limit` for it to finish or report
/// its [`Milestone`], then at most `then` for it to finish. A thread still running then is
/// abandoned (see the module doc); a panic in `work` is resumed here.
pub(crate) fn run_isolated<T: Send + 'static>(
    name: &str,
    limit: Duration,
    then: Duration,
    work: impl FnOnce(&Milestone<'_, T>) -> T + Send + 'static,
) -> Result<T, Unfinished> {
    if !may_abandon() {
        return Err(Unfinished::TooManyStuck);
    }
    let phase = Arc::new(Mutex::new(Phase::Running));
    let (tx, rx) = mpsc::channel();
    let thread_phase = Arc::clone(&phase);
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(EVALUATION_STACK)
        .spawn(move || {
            let milestone = Milestone(&tx);
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&milestone)));
            let mut phase = thread_phase.lock();
            if *phase == Phase::Abandoned {
                recovered();
            }
            *phase = Phase::Done;
            let _ = tx.send(Message::Done(out));
        })
        .map_err(Unfinished::Spawn)?;
    let mut deadline = Instant::now() + limit;
    let mut passed_milestone = false;
    let out = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Message::Milestone) => {
                passed_milestone = true;
                deadline = Instant::now() + then;
            }
            Ok(Message::Done(out)) => break out,
            Err(_) => {
                let mut phase = phase.lock();
                if *phase != Phase::Done {
                    *phase = Phase::Abandoned;
                    abandon();
                    return Err(Unfinished::TimedOut { passed_milestone });
                }
                drop(phase);
                // Finished just as the wait ended: the result is in the channel.
                match rx.recv() {
                    Ok(Message::Done(out)) => break out,
                    _ => return Err(Unfinished::TimedOut { passed_milestone }),
                }
            }
        }
    };
    match out {
        Ok(value) => Ok(value),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_work_is_returned_and_stuck_work_abandoned() {
        let long = Duration::from_secs(5);
        assert_eq!(run_isolated("t", long, long, |_| 7).unwrap(), 7);
        // The second limit starts at the milestone.
        let short = Duration::from_millis(200);
        let slow_second_part = run_isolated("t", short, long, |milestone| {
            milestone.reached();
            std::thread::sleep(Duration::from_millis(400));
            8
        });
        assert_eq!(slow_second_part.unwrap(), 8);
        let (release, wait) = mpsc::channel::<()>();
        let before = abandoned();
        let stuck = run_isolated("t", Duration::from_millis(50), long, move |_| {
            let _ = wait.recv();
        });
        assert!(
            matches!(
                stuck,
                Err(Unfinished::TimedOut {
                    passed_milestone: false
                })
            ),
            "{stuck:?}"
        );
        assert!(abandoned() > before);
        drop(release);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while abandoned() > before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            abandoned(),
            before,
            "the returned thread is no longer counted"
        );
    }
}
