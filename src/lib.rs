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
//! - [`config`]: the Lua sandbox and the `site{}`/`defaults{}` language, validated into [`config::Site`]s.
//! - [`probe`]: one HTTP probe with per-phase timings, body cap and certificate facts.
//! - [`assertions`]: built-in expectations, pure functions.
//! - [`hooks`]: Lua hook workers with instruction, time and memory budgets.
//! - [`check`]: probe + assertions + hooks with retries → `CheckResult`.
//! - [`commands`]: `validate` and `check`.
//! - [`schedule`]: drift-free per-site ticks, caps, missed ticks, reload, shards.
//! - [`publish`]: the idempotent Kafka producer with backpressure.
//! - [`monitor`]: `produce`: scheduler + publisher, reload and shutdown.
//! - [`settings`]: Kafka and PostgreSQL connection settings from the environment.
//! - [`consume`]: the Kafka consumer group loop: batches, positions kept in PostgreSQL.
//! - [`store`]: PostgreSQL: TLS connect, migrations, the batch writer, retention.
//! - [`result`]: the wire schema shared by both halves; [`error`]: error-chain formatting.

pub mod assertions;
pub mod check;
pub mod commands;
pub mod config;
pub mod consume;
pub mod error;
pub mod hooks;
pub mod monitor;
pub mod probe;
pub mod publish;
pub mod result;
pub mod schedule;
pub mod settings;
pub mod store;
