//! Rollup arithmetic: stored check results → hourly/daily [`Rollup`]s → a period [`Summary`].
//!
//! Pure and std-only; the store layer reads a batch of results as [`Sample`]s, calls
//! [`aggregate`], and upserts the rows. Charts, SLO reports and the error budget then read
//! rollups only, never raw results:
//!
//! ```text
//!  check_results ──Sample──► aggregate(Hour) ──► hourly Rollup ─┐ merge
//!                 └────────► aggregate(Day)  ──► daily Rollup  ─┴──────► Summary ──► uptime_pct
//!                                                                                 └─► error_budget
//! ```
//!
//! Every counter of a [`Summary`] adds up under [`Summary::merge`], so merging the hourly
//! rollups of a day gives that day's rollup, and a month is the merge of its days.
//!
//! Checks probed inside a maintenance window count in [`Summary::maintenance`] only: not in
//! `checks`, the outcomes, failures, timings or histograms, so SLOs leave them out.

use std::collections::{BTreeMap, HashMap};

use super::histogram::Histogram;
pub use crate::result::Outcome;

/// Length of an hourly bucket in microseconds.
pub const HOUR_US: i64 = 3_600 * 1_000_000;

/// Length of a daily bucket in microseconds (UTC days have no leap seconds in unix time).
pub const DAY_US: i64 = 24 * HOUR_US;

/// The allowed failure fraction of an SLO target is rounded to this many parts: targets like
/// 99.9 are not exact in binary (100 − 99.9 = 0.09999999999999432), and unrounded a period
/// exactly at its budget (1 down in 1000) would read as breached. 1e12 keeps ten decimals of a
/// percentage point, far finer than any target or any one check in a period.
const ALLOWED_FRACTION_SCALE: f64 = 1e12;

/// One stored check result, borrowed from the row the store layer read.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub site: &'a str,
    /// When the check was due (unix microseconds, UTC), not when it ran: a late check still
    /// belongs to the bucket it was scheduled in.
    pub scheduled_at_us: i64,
    pub outcome: Outcome,
    /// The failure kind (`dns`, `timeout`, …) when the check was not up.
    pub failure_kind: Option<&'a str>,
    /// The check ran inside a maintenance window; see the module doc.
    pub maintenance: bool,
    /// Phase timings in milliseconds; `None` when the phase never happened (no TLS on http).
    pub dns_ms: Option<f64>,
    pub connect_ms: Option<f64>,
    pub tls_ms: Option<f64>,
    pub ttfb_ms: Option<f64>,
    pub transfer_ms: Option<f64>,
    pub total_ms: f64,
}

/// The length of a rollup bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grain {
    Hour,
    Day,
}

impl Grain {
    /// The bucket length in microseconds.
    pub fn micros(self) -> i64 {
        match self {
            Grain::Hour => HOUR_US,
            Grain::Day => DAY_US,
        }
    }
}

/// The start of the UTC hour or day holding `t_us` (unix micros), flooring towards the past
/// for negative times too. Saturates at `i64::MIN` for the partial first bucket of the `i64`
/// range instead of overflowing.
pub fn bucket_start_us(grain: Grain, t_us: i64) -> i64 {
    let len = grain.micros();
    t_us.div_euclid(len).saturating_mul(len)
}

/// Sum and count of one timing, so means can be merged (a mean of means would not be).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseSum {
    pub sum_ms: f64,
    /// How many checks had this phase; `None` phases and invalid timings are not counted.
    pub count: i64,
}

impl PhaseSum {
    /// The mean in milliseconds; `None` when no check had this phase.
    pub fn mean_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ms / self.count as f64)
    }

    fn add(&mut self, ms: Option<f64>) {
        if let Some(ms) = ms.and_then(valid_ms) {
            self.sum_ms += ms;
            self.count += 1;
        }
    }

    fn merge(&mut self, other: &PhaseSum) {
        self.sum_ms += other.sum_ms;
        self.count = self.count.saturating_add(other.count);
    }

    fn subtract(&mut self, other: &PhaseSum) {
        self.count = self.count.saturating_sub(other.count).max(0);
        self.sum_ms = if self.count == 0 {
            0.0
        } else {
            self.sum_ms - other.sum_ms
        };
    }
}

/// A [`PhaseSum`] per phase of the request, and one for the whole check.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Phases {
    pub dns: PhaseSum,
    pub connect: PhaseSum,
    pub tls: PhaseSum,
    pub ttfb: PhaseSum,
    pub transfer: PhaseSum,
    pub total: PhaseSum,
}

impl Phases {
    fn record(&mut self, sample: &Sample) {
        self.dns.add(sample.dns_ms);
        self.connect.add(sample.connect_ms);
        self.tls.add(sample.tls_ms);
        self.ttfb.add(sample.ttfb_ms);
        self.transfer.add(sample.transfer_ms);
        self.total.add(Some(sample.total_ms));
    }

    fn merge(&mut self, other: &Phases) {
        self.dns.merge(&other.dns);
        self.connect.merge(&other.connect);
        self.tls.merge(&other.tls);
        self.ttfb.merge(&other.ttfb);
        self.transfer.merge(&other.transfer);
        self.total.merge(&other.total);
    }

    fn subtract(&mut self, other: &Phases) {
        self.dns.subtract(&other.dns);
        self.connect.subtract(&other.connect);
        self.tls.subtract(&other.tls);
        self.ttfb.subtract(&other.ttfb);
        self.transfer.subtract(&other.transfer);
        self.total.subtract(&other.total);
    }
}

/// Counters of any set of checks: one rollup bucket, or a whole period merged from rollups.
///
/// A timing that is NaN, infinite or negative cannot come from a real probe; it is treated as
/// absent (not in sums, max or histograms) rather than poisoning every later merge.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Checks that count for SLOs: everything outside maintenance windows.
    pub checks: i64,
    pub up: i64,
    pub degraded: i64,
    pub down: i64,
    /// Checks inside maintenance windows, counted here and nowhere else.
    pub maintenance: i64,
    /// Checks per failure kind, so a report can say *why* a site was down.
    pub failures: BTreeMap<String, i64>,
    pub phases: Phases,
    /// The slowest check, which a percentile of a short bucket can hide.
    pub max_total_ms: f64,
    /// Total time per check, for percentiles of what users wait.
    pub total_hist: Histogram,
    /// Time to first byte, for percentiles of server latency without body size.
    pub ttfb_hist: Histogram,
}

impl Summary {
    /// The summary of a set of rollups, e.g. the days of a month.
    pub fn from_rollups<'r>(rollups: impl IntoIterator<Item = &'r Rollup>) -> Self {
        let mut summary = Summary::default();
        for rollup in rollups {
            summary.merge(&rollup.summary);
        }
        summary
    }

    /// Counts one check.
    pub fn record(&mut self, sample: &Sample) {
        if sample.maintenance {
            self.maintenance += 1;
            return;
        }
        self.checks += 1;
        match sample.outcome {
            Outcome::Up => self.up += 1,
            Outcome::Degraded => self.degraded += 1,
            Outcome::Down => self.down += 1,
        }
        if let Some(kind) = sample.failure_kind {
            *self.failures.entry(kind.to_owned()).or_default() += 1;
        }
        self.phases.record(sample);
        if let Some(total) = valid_ms(sample.total_ms) {
            self.max_total_ms = self.max_total_ms.max(total);
            self.total_hist.record(total);
        }
        if let Some(ttfb) = sample.ttfb_ms.and_then(valid_ms) {
            self.ttfb_hist.record(ttfb);
        }
    }

    /// Adds another summary's counters, sums, max and histograms.
    pub fn merge(&mut self, other: &Summary) {
        self.checks = self.checks.saturating_add(other.checks);
        self.up = self.up.saturating_add(other.up);
        self.degraded = self.degraded.saturating_add(other.degraded);
        self.down = self.down.saturating_add(other.down);
        self.maintenance = self.maintenance.saturating_add(other.maintenance);
        for (kind, count) in &other.failures {
            let mine = self.failures.entry(kind.clone()).or_default();
            *mine = mine.saturating_add(*count);
        }
        self.phases.merge(&other.phases);
        self.max_total_ms = self.max_total_ms.max(other.max_total_ms);
        self.total_hist.merge(other.total_hist.as_slice());
        self.ttfb_hist.merge(other.ttfb_hist.as_slice());
    }

    /// Takes an earlier running total away from a later one (`rollup_running`): counters,
    /// sums, failures and histograms, none below 0. The maximum is left as it is: it is not a
    /// difference, and the caller sets it.
    pub fn subtract(&mut self, earlier: &Summary) {
        let less = |mine: i64, theirs: i64| mine.saturating_sub(theirs).max(0);
        self.checks = less(self.checks, earlier.checks);
        self.up = less(self.up, earlier.up);
        self.degraded = less(self.degraded, earlier.degraded);
        self.down = less(self.down, earlier.down);
        self.maintenance = less(self.maintenance, earlier.maintenance);
        for (kind, count) in &earlier.failures {
            if let Some(mine) = self.failures.get_mut(kind) {
                *mine = less(*mine, *count);
            }
        }
        self.failures.retain(|_, count| *count > 0);
        self.phases.subtract(&earlier.phases);
        self.total_hist.subtract(earlier.total_hist.as_slice());
        self.ttfb_hist.subtract(earlier.ttfb_hist.as_slice());
    }

    /// Share of checks that were up or degraded, in percent; `None` without checks.
    pub fn uptime_pct(&self) -> Option<f64> {
        let available = self.up.saturating_add(self.degraded);
        (self.checks > 0).then(|| available as f64 / self.checks as f64 * 100.0)
    }

    /// How much of the error budget of an SLO of `target_pct` (e.g. 99.9) over a window of
    /// `window_minutes` this period used. Only `down` checks spend budget.
    ///
    /// A target outside `[0, 100]` is clamped and NaN counts as 100 (a broken target must not
    /// hide failures); a window that is negative or not finite counts as 0 minutes.
    /// A 100% target has no budget: without down checks 100% of it is left, and each down check
    /// overspends it by another 100% (3 down → `left_pct` = −300), so it stays finite and
    /// [`Budget::breached`] holds exactly when some check was down.
    pub fn error_budget(&self, target_pct: f64, window_minutes: f64) -> Budget {
        let allowed = allowed_fraction(target_pct);
        let bad = if self.checks > 0 {
            self.down as f64 / self.checks as f64
        } else {
            0.0
        };
        let left_pct = match (allowed > 0.0, self.down) {
            (true, _) => 100.0 * (1.0 - bad / allowed),
            (false, 0) => 100.0,
            (false, down) => -100.0 * down as f64,
        };
        let window = if window_minutes.is_finite() {
            window_minutes.max(0.0)
        } else {
            0.0
        };
        Budget {
            allowed_failures_pct: allowed * 100.0,
            used_pct: 100.0 - left_pct,
            left_pct,
            left_minutes: (allowed - bad) * window,
        }
    }
}

/// The error budget of a period against an SLO target; `used_pct + left_pct` = 100.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Share of checks that may be down, in percent: 100 − target.
    pub allowed_failures_pct: f64,
    /// Share of the budget spent, in percent; over 100 once breached.
    pub used_pct: f64,
    /// Share of the budget left, in percent; negative once breached.
    pub left_pct: f64,
    /// Minutes of full downtime the window can still afford at the observed failure rate;
    /// negative once breached.
    pub left_minutes: f64,
}

impl Budget {
    /// More checks were down than the target allows.
    pub fn breached(&self) -> bool {
        self.left_pct < 0.0
    }
}

/// The summary of one site over one hour or day: one row of a rollup table.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    pub site: String,
    /// Start of the bucket (unix micros, UTC), from [`bucket_start_us`].
    pub bucket_start_us: i64,
    pub summary: Summary,
}

impl Rollup {
    /// An empty rollup of `site` for the bucket starting at `bucket_start_us`.
    pub fn new(site: &str, bucket_start_us: i64) -> Self {
        Rollup {
            site: site.to_owned(),
            bucket_start_us,
            summary: Summary::default(),
        }
    }

    /// Adds another rollup's counters, sums, max and histograms. `site` and `bucket_start_us`
    /// stay `self`'s: merging the hourly rollups of a day into `Rollup::new(site, day)` gives
    /// the daily rollup.
    pub fn merge(&mut self, other: &Rollup) {
        self.summary.merge(&other.summary);
    }
}

/// Rolls samples up into one [`Rollup`] per site and bucket, sorted by (site, bucket start).
pub fn aggregate<'a>(
    grain: Grain,
    samples: impl IntoIterator<Item = &'a Sample<'a>>,
) -> Vec<Rollup> {
    // Hashed while counting, sorted once at the end: a consumer's batch has thousands of
    // samples over a few buckets per site, and an ordered map compared site names for every
    // sample (a tenth of the consumer's CPU in the ingest profile, docs/performance.md).
    let mut rollups: HashMap<(&str, i64), Rollup> = HashMap::new();
    for sample in samples {
        let start = bucket_start_us(grain, sample.scheduled_at_us);
        rollups
            .entry((sample.site, start))
            .or_insert_with(|| Rollup::new(sample.site, start))
            .summary
            .record(sample);
    }
    let mut rollups: Vec<Rollup> = rollups.into_values().collect();
    rollups.sort_unstable_by(|a, b| {
        (a.site.as_str(), a.bucket_start_us).cmp(&(b.site.as_str(), b.bucket_start_us))
    });
    rollups
}

/// `ms` if it can be a measured duration: finite and not negative.
fn valid_ms(ms: f64) -> Option<f64> {
    (ms.is_finite() && ms >= 0.0).then_some(ms)
}

/// The share of checks a target allows to be down, as a fraction, rounded as
/// [`ALLOWED_FRACTION_SCALE`] explains.
fn allowed_fraction(target_pct: f64) -> f64 {
    let target = if target_pct.is_nan() {
        100.0
    } else {
        target_pct.clamp(0.0, 100.0)
    };
    ((100.0 - target) / 100.0 * ALLOWED_FRACTION_SCALE).round() / ALLOWED_FRACTION_SCALE
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-03-10 00:00:00 UTC.
    const MIDNIGHT: i64 = 1_710_028_800 * 1_000_000;

    fn sample(site: &'static str, at: i64, outcome: Outcome) -> Sample<'static> {
        Sample {
            site,
            scheduled_at_us: at,
            outcome,
            failure_kind: None,
            maintenance: false,
            dns_ms: Some(2.0),
            connect_ms: Some(4.0),
            tls_ms: Some(8.0),
            ttfb_ms: Some(50.0),
            transfer_ms: Some(6.0),
            total_ms: 70.0,
        }
    }

    fn down(site: &'static str, at: i64, kind: &'static str) -> Sample<'static> {
        Sample {
            failure_kind: Some(kind),
            ..sample(site, at, Outcome::Down)
        }
    }

    /// (checks, up, degraded, down, maintenance)
    type Counters = (i64, i64, i64, i64, i64);

    fn counters(s: &Summary) -> Counters {
        (s.checks, s.up, s.degraded, s.down, s.maintenance)
    }

    fn summary_of(samples: &[Sample]) -> Summary {
        let mut summary = Summary::default();
        samples.iter().for_each(|s| summary.record(s));
        summary
    }

    #[test]
    fn bucket_starts() {
        let cases: &[(Grain, i64, i64)] = &[
            (Grain::Hour, 0, 0),
            (Grain::Hour, HOUR_US - 1, 0),
            (Grain::Hour, HOUR_US, HOUR_US),
            (Grain::Hour, -1, -HOUR_US),
            (Grain::Hour, -HOUR_US, -HOUR_US),
            (Grain::Hour, -HOUR_US - 1, -2 * HOUR_US),
            (Grain::Day, -1, -DAY_US),
            (Grain::Day, MIDNIGHT, MIDNIGHT),
            (Grain::Day, MIDNIGHT - 1, MIDNIGHT - DAY_US),
            (Grain::Hour, MIDNIGHT - 1, MIDNIGHT - HOUR_US),
            (
                Grain::Hour,
                MIDNIGHT + 13 * HOUR_US + 5,
                MIDNIGHT + 13 * HOUR_US,
            ),
            (Grain::Day, MIDNIGHT + DAY_US - 1, MIDNIGHT),
            (Grain::Hour, i64::MIN, i64::MIN),
            (Grain::Day, i64::MIN + 1, i64::MIN),
            (Grain::Day, i64::MAX, i64::MAX / DAY_US * DAY_US),
        ];
        for &(grain, t, want) in cases {
            assert_eq!(bucket_start_us(grain, t), want, "{grain:?} {t}");
        }
    }

    #[test]
    fn aggregate_splits_at_hour_and_day_edges() {
        let samples = [
            sample("a", MIDNIGHT - 1, Outcome::Up),
            sample("a", MIDNIGHT, Outcome::Up),
            sample("a", MIDNIGHT + HOUR_US - 1, Outcome::Up),
            sample("a", MIDNIGHT + HOUR_US, Outcome::Up),
            sample("a", MIDNIGHT + DAY_US, Outcome::Up),
        ];
        let cases: &[(Grain, &[(i64, i64)])] = &[
            (
                Grain::Hour,
                &[
                    (MIDNIGHT - HOUR_US, 1),
                    (MIDNIGHT, 2),
                    (MIDNIGHT + HOUR_US, 1),
                    (MIDNIGHT + DAY_US, 1),
                ],
            ),
            (
                Grain::Day,
                &[
                    (MIDNIGHT - DAY_US, 1),
                    (MIDNIGHT, 3),
                    (MIDNIGHT + DAY_US, 1),
                ],
            ),
        ];
        for &(grain, want) in cases {
            let got: Vec<(i64, i64)> = aggregate(grain, &samples)
                .iter()
                .map(|r| (r.bucket_start_us, r.summary.checks))
                .collect();
            assert_eq!(got, want, "{grain:?}");
        }
    }

    #[test]
    fn aggregate_sorts_by_site_then_bucket() {
        let samples = [
            sample("b", MIDNIGHT, Outcome::Up),
            sample("a", MIDNIGHT + HOUR_US, Outcome::Up),
            sample("b", MIDNIGHT - HOUR_US, Outcome::Up),
            sample("a", MIDNIGHT, Outcome::Up),
        ];
        let got: Vec<(String, i64)> = aggregate(Grain::Hour, &samples)
            .into_iter()
            .map(|r| (r.site, r.bucket_start_us))
            .collect();
        let want = [
            ("a".to_owned(), MIDNIGHT),
            ("a".to_owned(), MIDNIGHT + HOUR_US),
            ("b".to_owned(), MIDNIGHT - HOUR_US),
            ("b".to_owned(), MIDNIGHT),
        ];
        assert_eq!(got, want);
        assert!(aggregate(Grain::Day, &[]).is_empty());
    }

    #[test]
    fn counts_outcomes_failures_and_maintenance() {
        let in_maintenance = Sample {
            maintenance: true,
            ..down("a", MIDNIGHT, "timeout")
        };
        let warned = Sample {
            failure_kind: Some("assertion"),
            ..sample("a", 0, Outcome::Degraded)
        };
        type Case<'a> = (&'a str, Vec<Sample<'a>>, Counters, Vec<(&'a str, i64)>);
        let cases: Vec<Case> = vec![
            ("empty", vec![], (0, 0, 0, 0, 0), vec![]),
            (
                "one of each",
                vec![
                    sample("a", 0, Outcome::Up),
                    warned.clone(),
                    down("a", 0, "dns"),
                ],
                (3, 1, 1, 1, 0),
                vec![("assertion", 1), ("dns", 1)],
            ),
            (
                "failure kinds",
                vec![
                    down("a", 0, "dns"),
                    down("a", 0, "timeout"),
                    down("a", 0, "dns"),
                ],
                (3, 0, 0, 3, 0),
                vec![("dns", 2), ("timeout", 1)],
            ),
            (
                "maintenance only",
                vec![in_maintenance.clone(), in_maintenance.clone()],
                (0, 0, 0, 0, 2),
                vec![],
            ),
            (
                "maintenance beside real checks",
                vec![
                    in_maintenance,
                    sample("a", 0, Outcome::Up),
                    down("a", 0, "tls"),
                ],
                (2, 1, 0, 1, 1),
                vec![("tls", 1)],
            ),
        ];
        for (name, samples, want, want_failures) in cases {
            let s = summary_of(&samples);
            assert_eq!(counters(&s), want, "{name}");
            let failures: Vec<(&str, i64)> =
                s.failures.iter().map(|(k, &n)| (k.as_str(), n)).collect();
            assert_eq!(failures, want_failures, "{name}");
        }
    }

    #[test]
    fn maintenance_leaves_timings_and_histograms_alone() {
        let slow = Sample {
            maintenance: true,
            total_ms: 9_000.0,
            ..down("a", 0, "timeout")
        };
        let s = summary_of(&[slow]);
        assert_eq!(s.phases, Phases::default());
        assert_eq!(s.max_total_ms, 0.0);
        assert_eq!((s.total_hist.total(), s.ttfb_hist.total()), (0, 0));
        assert_eq!(s.uptime_pct(), None);
    }

    #[test]
    fn phases_skip_none_and_invalid_timings() {
        let plain_http = Sample {
            tls_ms: None,
            ..sample("a", 0, Outcome::Up)
        };
        let refused = Sample {
            tls_ms: None,
            ttfb_ms: None,
            transfer_ms: None,
            total_ms: 3.0,
            ..down("a", 0, "connect")
        };
        let garbage = Sample {
            dns_ms: Some(f64::NAN),
            connect_ms: Some(-1.0),
            tls_ms: Some(f64::INFINITY),
            ttfb_ms: Some(f64::NEG_INFINITY),
            total_ms: f64::NAN,
            ..sample("a", 0, Outcome::Up)
        };
        // ([dns, connect, tls, ttfb, transfer, total] as (sum, count), ttfb_hist, total_hist)
        type Want = ([(f64, i64); 6], i64, i64);
        let cases: Vec<(&str, Vec<Sample>, Want)> = vec![
            (
                "all phases",
                vec![sample("a", 0, Outcome::Up)],
                (
                    [(2.0, 1), (4.0, 1), (8.0, 1), (50.0, 1), (6.0, 1), (70.0, 1)],
                    1,
                    1,
                ),
            ),
            (
                "no tls on http",
                vec![plain_http, sample("a", 0, Outcome::Up)],
                (
                    [
                        (4.0, 2),
                        (8.0, 2),
                        (8.0, 1),
                        (100.0, 2),
                        (12.0, 2),
                        (140.0, 2),
                    ],
                    2,
                    2,
                ),
            ),
            (
                "refused: no tls, ttfb or transfer",
                vec![refused],
                (
                    [(2.0, 1), (4.0, 1), (0.0, 0), (0.0, 0), (0.0, 0), (3.0, 1)],
                    0,
                    1,
                ),
            ),
            (
                "NaN, negative and infinite timings are absent",
                vec![garbage],
                (
                    [(0.0, 0), (0.0, 0), (0.0, 0), (0.0, 0), (6.0, 1), (0.0, 0)],
                    0,
                    0,
                ),
            ),
        ];
        for (name, samples, (want, ttfb_hist, total_hist)) in cases {
            let s = summary_of(&samples);
            let p = &s.phases;
            let got: Vec<(f64, i64)> = [&p.dns, &p.connect, &p.tls, &p.ttfb, &p.transfer, &p.total]
                .iter()
                .map(|phase| (phase.sum_ms, phase.count))
                .collect();
            assert_eq!(got, want, "{name}");
            assert_eq!(s.ttfb_hist.total(), ttfb_hist, "{name}");
            assert_eq!(s.total_hist.total(), total_hist, "{name}");
            assert_eq!(
                s.checks,
                samples.len() as i64,
                "{name}: still counted as checks"
            );
        }
    }

    #[test]
    fn phase_means() {
        let cases: &[(PhaseSum, Option<f64>)] = &[
            (PhaseSum::default(), None),
            (
                PhaseSum {
                    sum_ms: 30.0,
                    count: 4,
                },
                Some(7.5),
            ),
            (
                PhaseSum {
                    sum_ms: 1.0,
                    count: -2,
                },
                None,
            ),
        ];
        for (phase, want) in cases {
            assert_eq!(phase.mean_ms(), *want, "{phase:?}");
        }
    }

    #[test]
    fn max_total_and_histograms() {
        let samples = [
            Sample {
                total_ms: 120.5,
                ttfb_ms: Some(100.0),
                ..sample("a", 0, Outcome::Up)
            },
            Sample {
                total_ms: 30_000.0,
                ttfb_ms: None,
                ..down("a", 0, "timeout")
            },
            Sample {
                total_ms: 0.0,
                ..sample("a", 0, Outcome::Up)
            },
        ];
        let s = summary_of(&samples);
        assert_eq!(s.max_total_ms, 30_000.0);
        assert_eq!(s.total_hist.total(), 3);
        assert_eq!(s.ttfb_hist.total(), 2);
    }

    /// Two days of checks of two sites every 7.5 minutes, with every outcome, failure kinds,
    /// maintenance and missing phases. Timings are multiples of 0.25 so every f64 sum is exact
    /// whatever the order of addition, and merged rollups compare with `==`.
    fn two_days() -> Vec<Sample<'static>> {
        let step = HOUR_US / 8;
        (0..2 * 24 * 8)
            .flat_map(|k: i64| {
                let at = MIDNIGHT - DAY_US / 2 + k * step;
                let ms = 0.25 * (k % 997) as f64;
                let base = Sample {
                    total_ms: ms * 3.0,
                    ttfb_ms: Some(ms),
                    ..sample("a", at, Outcome::Up)
                };
                let b = match k % 11 {
                    0 => down("b", at, "timeout"),
                    1 => Sample {
                        failure_kind: Some("assertion"),
                        ..sample("b", at, Outcome::Degraded)
                    },
                    2 => Sample {
                        maintenance: true,
                        ..down("b", at, "dns")
                    },
                    3 => Sample {
                        tls_ms: None,
                        ttfb_ms: None,
                        ..down("b", at, "connect")
                    },
                    _ => Sample {
                        total_ms: ms,
                        ..sample("b", at, Outcome::Up)
                    },
                };
                [base, b]
            })
            .collect()
    }

    #[test]
    fn merged_hours_equal_the_day() {
        let samples = two_days();
        let hours = aggregate(Grain::Hour, &samples);
        let days = aggregate(Grain::Day, &samples);
        assert_eq!(days.len(), 6, "two sites over three calendar days");
        for day in &days {
            let mut merged = Rollup::new(&day.site, day.bucket_start_us);
            hours
                .iter()
                .filter(|h| h.site == day.site)
                .filter(|h| bucket_start_us(Grain::Day, h.bucket_start_us) == day.bucket_start_us)
                .for_each(|h| merged.merge(h));
            assert_eq!(&merged, day, "{} {}", day.site, day.bucket_start_us);
        }
        assert_eq!(Summary::from_rollups(&hours), Summary::from_rollups(&days));
        assert_eq!(Summary::from_rollups(&days), summary_of(&samples));
    }

    #[test]
    fn uptime() {
        // ((up, degraded, down), uptime)
        type Case = ((i64, i64, i64), Option<f64>);
        let cases: &[Case] = &[
            ((0, 0, 0), None),
            ((10, 0, 0), Some(100.0)),
            ((0, 0, 4), Some(0.0)),
            ((6, 2, 2), Some(80.0)),
            ((999, 0, 1), Some(99.9)),
        ];
        for &((up, degraded, down), want) in cases {
            let s = Summary {
                checks: up + degraded + down,
                up,
                degraded,
                down,
                ..Summary::default()
            };
            assert_eq!(s.uptime_pct(), want, "{up}/{degraded}/{down}");
        }
    }

    #[test]
    fn error_budgets() {
        const MONTH: f64 = 30.0 * 24.0 * 60.0;
        let nan = f64::NAN;
        // (checks, down, target, window)
        //     → (allowed_pct, used_pct, left_pct, left_minutes, breached)
        type Case = ((i64, i64, f64, f64), (f64, f64, f64, f64, bool));
        let cases: &[Case] = &[
            ((1000, 0, 99.9, MONTH), (0.1, 0.0, 100.0, 43.2, false)),
            ((2000, 1, 99.9, MONTH), (0.1, 50.0, 50.0, 21.6, false)),
            ((1000, 1, 99.9, MONTH), (0.1, 100.0, 0.0, 0.0, false)), // exactly at budget
            ((1000, 2, 99.9, MONTH), (0.1, 200.0, -100.0, -43.2, true)),
            ((20, 1, 95.0, 600.0), (5.0, 100.0, 0.0, 0.0, false)),
            ((0, 0, 99.0, 100.0), (1.0, 0.0, 100.0, 1.0, false)), // no checks: nothing spent
            ((1000, 0, 100.0, MONTH), (0.0, 0.0, 100.0, 0.0, false)),
            ((1000, 3, 100.0, MONTH), (0.0, 400.0, -300.0, -129.6, true)),
            ((1000, 3, 150.0, MONTH), (0.0, 400.0, -300.0, -129.6, true)), // clamped to 100
            ((1000, 3, nan, MONTH), (0.0, 400.0, -300.0, -129.6, true)),   // NaN is strictest
            ((4, 4, -5.0, 60.0), (100.0, 100.0, 0.0, 0.0, false)),         // clamped to 0
            ((1000, 2, 99.9, nan), (0.1, 200.0, -100.0, 0.0, true)),
            ((1000, 2, 99.9, -60.0), (0.1, 200.0, -100.0, 0.0, true)),
            (
                (1000, 2, 99.9, f64::INFINITY),
                (0.1, 200.0, -100.0, 0.0, true),
            ),
        ];
        for &((checks, down, target, window), want) in cases {
            let s = Summary {
                checks,
                up: checks - down,
                down,
                ..Summary::default()
            };
            let b = s.error_budget(target, window);
            let got = (
                b.allowed_failures_pct,
                b.used_pct,
                b.left_pct,
                b.left_minutes,
            );
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9;
            assert!(
                close(got.0, want.0)
                    && close(got.1, want.1)
                    && close(got.2, want.2)
                    && close(got.3, want.3),
                "{checks}/{down} at {target}% over {window}: got {got:?}, want {want:?}"
            );
            assert_eq!(b.breached(), want.4, "{checks}/{down} at {target}%");
            assert_eq!(b.used_pct + b.left_pct, 100.0);
        }
    }

    #[test]
    fn maintenance_spends_no_budget() {
        let samples = [
            sample("a", 0, Outcome::Up),
            Sample {
                maintenance: true,
                ..down("a", 0, "connect")
            },
            Sample {
                maintenance: true,
                ..down("a", 0, "connect")
            },
        ];
        let s = summary_of(&samples);
        assert_eq!(s.uptime_pct(), Some(100.0));
        assert!(!s.error_budget(100.0, 60.0).breached());
    }

    #[test]
    fn a_later_running_total_minus_an_earlier_one_is_what_came_between() {
        let mut early = vec![sample("a", 0, Outcome::Up), down("a", 1, "timeout")];
        early[0].total_ms = 900.0;
        let mut between = vec![
            down("a", 2, "timeout"),
            down("a", 3, "http"),
            sample("a", 4, Outcome::Degraded),
            Sample {
                maintenance: true,
                ..sample("a", 5, Outcome::Up)
            },
        ];
        between[2].total_ms = 3.5;
        let all: Vec<Sample> = early.iter().chain(&between).cloned().collect();
        let mut got = summary_of(&all);
        got.subtract(&summary_of(&early));
        let mut want = summary_of(&between);
        // The maximum is not a difference: the caller sets it.
        want.max_total_ms = got.max_total_ms;
        assert_eq!(counters(&got), counters(&want));
        assert_eq!(got.failures, want.failures);
        assert_eq!(got.total_hist, want.total_hist);
        assert_eq!(got.ttfb_hist, want.ttfb_hist);
        assert_eq!(got.phases.total.count, want.phases.total.count);
        assert!((got.phases.total.sum_ms - want.phases.total.sum_ms).abs() < 1e-9);
        // Nothing between: all zero, no failure kinds left, empty histograms.
        let mut none = summary_of(&early);
        none.subtract(&summary_of(&early));
        assert_eq!(counters(&none), (0, 0, 0, 0, 0));
        assert!(none.failures.is_empty());
        assert_eq!(none.total_hist.as_slice(), &[] as &[i64]);
        assert_eq!(none.phases.dns.sum_ms, 0.0);
    }
}
