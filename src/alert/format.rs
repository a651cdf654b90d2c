//! Lua formatters: a notifier's `format = function(event) … end` turns a notice into the body
//! of its webhook request, so Slack, Discord, Teams or ntfy are a few lines of Lua.
//!
//! One dedicated thread owns a sandboxed Lua state that evaluated the same configuration
//! sources (functions cannot move between states, as for hook workers) and keeps each
//! notifier's formatter. A call has the hooks' instruction, wall-clock and memory budgets; a
//! formatter that errors, loops or returns something else fails that delivery with the reason
//! (the notification stays in the outbox), never the alerter.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;

use mlua::{Function, Value};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::notice::Notice;
use crate::config::{eval, ConfigSource};
use crate::hooks::HookLimits;
use crate::lua::errors::lua_error_text;
use crate::lua::sandbox::{Sandbox, Trip, LOAD_MEMORY_LIMIT};

type Request = (String, String, oneshot::Sender<Result<String, String>>);

/// Calls formatters on their own thread. Cheap to clone; the thread ends with the last clone.
#[derive(Clone)]
pub struct Formatters {
    requests: Arc<Mutex<mpsc::Sender<Request>>>,
}

impl Formatters {
    /// Evaluates `source` on a new thread and keeps its formatters. Fails when the sources do
    /// not evaluate (they were validated, so only a changed file or a broken sandbox does).
    pub fn start(source: Arc<ConfigSource>, limits: HookLimits) -> Result<Formatters, String> {
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("sitewatch-format".into())
            .spawn(move || match Worker::new(&source, limits) {
                Ok(worker) => {
                    let _ = ready_tx.send(Ok(()));
                    for (notifier, event, reply) in rx {
                        let _ = reply.send(worker.call(&notifier, &event));
                    }
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(error));
                }
            })
            .map_err(|e| format!("cannot start the formatter thread: {e}"))?;
        // Evaluating is bounded like loading the configuration: a thread stuck inside one
        // library call is left behind rather than holding up the alerter.
        let limit = crate::lua::sandbox::LOAD_WALL_TIME + crate::lua::stuck::STUCK_GRACE;
        ready_rx.recv_timeout(limit).map_err(|error| match error {
            mpsc::RecvTimeoutError::Timeout => format!(
                "the formatter thread did not finish evaluating within {}s (stuck inside a library call?)",
                limit.as_secs()
            ),
            mpsc::RecvTimeoutError::Disconnected => {
                "the formatter thread died while starting".to_string()
            }
        })??;
        Ok(Formatters {
            requests: Arc::new(Mutex::new(tx)),
        })
    }

    /// The body `notifier`'s formatter makes of `notice`.
    pub async fn format(&self, notifier: &str, notice: &Notice) -> Result<String, String> {
        let event = serde_json::to_string(notice).map_err(|e| e.to_string())?;
        let (reply, answer) = oneshot::channel();
        self.requests
            .lock()
            .send((notifier.to_owned(), event, reply))
            .map_err(|_| "the formatter thread has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the formatter thread has stopped".to_string())?
    }
}

struct Worker {
    sandbox: Sandbox,
    formatters: HashMap<String, Function>,
    limits: HookLimits,
}

impl Worker {
    fn new(source: &ConfigSource, limits: HookLimits) -> Result<Worker, String> {
        let sandbox = Sandbox::new(LOAD_MEMORY_LIMIT).map_err(|e| e.to_string())?;
        sandbox.set_quiet(true);
        let evaluation = eval::evaluate_keeping(&sandbox, source, eval::KEEP_FUNCTIONS);
        sandbox.set_quiet(false);
        if let Some(error) = evaluation.errors.first() {
            return Err(format!("{}: {error}", source.path.display()));
        }
        let formatters = eval::formatter_functions(&evaluation).into_iter().collect();
        drop(evaluation);
        eval::prepare_for_calls(&sandbox).map_err(|e| e.to_string())?;
        let baseline = sandbox.lua.used_memory();
        sandbox
            .set_memory_limit(baseline.saturating_add(limits.memory_bytes))
            .map_err(|e| e.to_string())?;
        Ok(Worker {
            sandbox,
            formatters,
            limits,
        })
    }

    fn call(&self, notifier: &str, event_json: &str) -> Result<String, String> {
        let function = self
            .formatters
            .get(notifier)
            .ok_or_else(|| format!("notifier {notifier:?} has no formatter"))?;
        let lua = &self.sandbox.lua;
        let budget = &self.sandbox.budget;
        budget.arm(self.limits.instructions, self.limits.wall_time, false);
        let result = (|| -> mlua::Result<Value> {
            let json: mlua::Table = lua.globals().get("json")?;
            let decode: Function = json.get("decode")?;
            let event: Value = decode.call(event_json)?;
            match function.call::<Value>(event)? {
                Value::Table(table) => json.get::<Function>("encode")?.call(table),
                other => Ok(other),
            }
        })();
        let trip = budget.disarm();
        let answer = match (trip, result) {
            (Some(Trip::Instructions), _) => {
                Err("formatter exceeded its instruction budget".into())
            }
            (Some(Trip::WallTime), _) => Err(format!(
                "formatter exceeded its time limit ({:?})",
                self.limits.wall_time
            )),
            (None, Err(error)) => Err(format!(
                "formatter error: {}",
                lua_error_text(&error, &[]).0
            )),
            (None, Ok(Value::String(body))) => Ok(body.to_string_lossy().to_string()),
            (None, Ok(other)) => Err(format!(
                "formatter returned {}, expected a string or a table",
                other.type_name()
            )),
        };
        let _ = lua.gc_collect();
        answer
    }
}
