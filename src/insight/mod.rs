//! Insight: the arithmetic behind rollups, percentiles, uptime and error budgets — pure, so the
//! storing consumer, `rollup rebuild`, `report` and the status page all compute the same way.
//!
//! - [`histogram`]: log-bucketed latency histograms (±7.5 %), merged by adding buckets.
//! - [`rollup`]: results → hourly/daily rollups → a period summary with uptime and budget.
//! - [`state`]: a site's current outcome and streaks, and its changes, one result at a time.

pub mod downtime;
pub mod histogram;
pub mod rollup;
pub mod state;
