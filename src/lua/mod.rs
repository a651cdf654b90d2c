//! The Lua runtime shared by configuration and hooks: the sandbox (standard libraries, budgets,
//! memory limit, sitewatch's `json`/`regex`/`log` helpers), error text with `file:line`, and the
//! `r` table hooks receive, and the bounded wait on threads that may be stuck inside one library
//! call ([`stuck`]). All of sitewatch's `unsafe` code lives here, each block with its SAFETY
//! note: the JSON decoder's table building ([`json`]) and building `r` ([`r_table`]).

pub(crate) mod errors;
pub(crate) mod json;
pub(crate) mod r_table;
pub(crate) mod sandbox;
pub(crate) mod stuck;
