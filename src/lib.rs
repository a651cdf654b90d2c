//! sitewatch: a website-availability monitor.
//!
//! Operators describe sites in `sites.lua`; sitewatch probes them on schedule, publishes each
//! [`result::CheckResult`] to Kafka, and a consumer stores results in PostgreSQL exactly once.
//!
//! # Layout
//!
//! ```text
//! sites.lua + scripts/*.lua
//!         │  config: evaluate in a sandbox, validate into typed Sites (all errors at once)
//!         ▼
//!    schedule ──due──► probe (HTTP, timings, TLS cert) ──► assertions (built-in + Lua hooks)
//!                                                               │ CheckResult (the wire schema)
//!                                                               ▼
//!                                                        publish → Kafka topic (key = site)
//!                                                               │
//!    consume ◄──────────────────────────────────────────────────┘
//!         │  batch, decode, quarantine bad messages
//!         ▼
//!    store → PostgreSQL (results + consumer offsets in ONE transaction)
//! ```
//!
//! Producing (never imports `store` or `consume`):
//! - [`config`]: the `site{}`/`defaults{}` language, validated into [`config::Site`]s.
//! - `lua` (private): the sandbox shared by config and hooks; all `unsafe` code.
//! - [`hooks`]: Lua hook workers with instruction, time and memory budgets; the verdict contract.
//! - [`probe`]: one HTTP probe with per-phase timings, body cap and certificate facts.
//! - [`assertions`]: built-in expectations, pure functions.
//! - [`check`]: probe + assertions + hooks with retries → `CheckResult`; `check_once`.
//! - [`schedule`]: drift-free per-site ticks, caps, missed ticks, reload, shards.
//! - [`publish`]: the idempotent Kafka producer with backpressure.
//! - [`produce`]: the `produce` role: scheduler + publisher, reload and shutdown.
//!
//! Storing (never imports `probe`, `check` or `schedule`):
//! - [`consume`]: the Kafka consumer group loop: batcher, Kafka side, PostgreSQL sink.
//! - [`store`]: PostgreSQL: TLS connect, migrations, the batch writer, retention.
//!
//! Shared and glue:
//! - [`result`]: the wire schema and its encoding, the one contract between the halves.
//! - [`settings`]: Kafka and PostgreSQL connection settings; [`duration`]: the one duration
//!   grammar; [`metrics`]: every metric name and the per-site series; [`error`]: error-chain
//!   formatting.
//! - [`run`]: both roles in one process.
//! - [`report`]: uptime, error budget, percentiles and downtime per site, from the rollups.
//! - [`serve`]: the status page, JSON API and badges (`sitewatch serve`), read-only.
//!
//! The binary (`src/bin/sitewatch/`) only parses arguments, prints and maps errors to exit codes.

pub mod alert;
pub mod assertions;
pub mod check;
pub mod config;
pub mod consume;
pub mod duration;
pub mod error;
pub mod hooks;
pub mod insight;
pub(crate) mod lua;
pub mod metrics;
pub mod probe;
pub mod produce;
pub mod publish;
pub mod report;
pub mod result;
pub mod run;
pub mod schedule;
pub mod serve;
pub mod settings;
pub mod store;
