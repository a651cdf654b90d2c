//! The per-site series: what the last check of each scheduled site found (`sitewatch_site_*`)
//! and its counters (`sitewatch_probes_total`, `sitewatch_missed_ticks_total`), rendered in the
//! Prometheus text format beside the `metrics` recorder's output.
//!
//! They live outside the `metrics` recorder because a site removed from `sites.lua` must lose
//! its series at the reload, and that recorder cannot forget a series; and because the
//! recorder's labelled series cost about 350 bytes each, four per site: 110 MiB at 76,000 sites. The producer asks
//! [`SiteMetrics::site`] for a site's [`SiteGauges`] once, when the scheduler starts (or
//! restarts) the site, and each check then writes a few atomics: no labelled lookup per check.
//! [`SiteMetrics::retain`] drops the sites a reload removed; a scrape reads them all in
//! [`SiteMetrics::render`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super as names;
use crate::result::{CheckResult, Outcome, Timings};

/// The phases of `sitewatch_site_phase_seconds`, in the order of a request, then the total.
pub const PHASES: [&str; 6] = ["dns", "connect", "tls", "ttfb", "transfer", "total"];

/// The value `sitewatch_site_up` gives an outcome: degraded sits halfway, so `avg_over_time`
/// of the series reads as an availability where degraded counts half.
pub fn up_value(outcome: Outcome) -> f64 {
    match outcome {
        Outcome::Up => 1.0,
        Outcome::Degraded => 0.5,
        Outcome::Down => 0.0,
    }
}

/// The outcomes of `sitewatch_probes_total`, in the order [`SiteGauges`] counts them.
const OUTCOMES: [Outcome; 3] = [Outcome::Up, Outcome::Degraded, Outcome::Down];

fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Up => 0,
        Outcome::Degraded => 1,
        Outcome::Down => 2,
    }
}

/// Each phase's seconds in [`PHASES`] order; `None` for a phase that did not happen.
fn phase_seconds(timings: &Timings) -> [Option<f64>; 6] {
    let seconds = |ms: Option<f64>| ms.map(|ms| ms / 1000.0);
    [
        seconds(timings.dns_ms),
        seconds(timings.connect_ms),
        seconds(timings.tls_ms),
        seconds(timings.ttfb_ms),
        seconds(timings.transfer_ms),
        Some(timings.total_ms / 1000.0),
    ]
}

/// An `f64` readable and writable from any thread; NaN stands for "absent".
#[derive(Debug)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn absent() -> Self {
        AtomicF64(AtomicU64::new(f64::NAN.to_bits()))
    }

    fn set(&self, value: Option<f64>) {
        let value = value.unwrap_or(f64::NAN);
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    fn get(&self) -> Option<f64> {
        Some(f64::from_bits(self.0.load(Ordering::Relaxed))).filter(|v| v.is_finite())
    }
}

/// One site's series. Written by the site's checks through the handle its schedule holds.
#[derive(Debug)]
pub struct SiteGauges {
    /// [`up_value`] of the last outcome; absent until the first check, which keeps a site that
    /// has not been checked yet off `/metrics` rather than showing it down.
    up: AtomicF64,
    /// HTTP status of the last check; 0 when no response arrived.
    status: AtomicF64,
    /// Expiry of the leaf certificate (Unix seconds); absent for plain http or a failed handshake.
    cert_not_after: AtomicF64,
    /// Seconds per phase of the last check, [`PHASES`] order; absent for a phase not reached.
    phases: [AtomicF64; 6],
    /// Down checks in a row; reset by an up or degraded one.
    consecutive_failures: AtomicU64,
    /// `sitewatch_probes_total`: checks finished, by outcome (up, degraded, down).
    probes: [AtomicU64; 3],
    /// `sitewatch_missed_ticks_total`: ticks skipped while a check was waiting or running.
    missed: AtomicU64,
}

impl SiteGauges {
    fn new() -> Self {
        SiteGauges {
            up: AtomicF64::absent(),
            status: AtomicF64::absent(),
            cert_not_after: AtomicF64::absent(),
            phases: std::array::from_fn(|_| AtomicF64::absent()),
            consecutive_failures: AtomicU64::new(0),
            probes: Default::default(),
            missed: AtomicU64::new(0),
        }
    }

    /// Counts `n` missed ticks of this site.
    pub fn missed(&self, n: u64) {
        self.missed.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes in the result of one check of this site.
    pub fn record(&self, result: &CheckResult) {
        for (gauge, value) in self.phases.iter().zip(phase_seconds(&result.timings)) {
            gauge.set(value);
        }
        self.status.set(Some(f64::from(result.status.unwrap_or(0))));
        self.cert_not_after
            .set(result.cert_not_after.map(|t| t.timestamp() as f64));
        self.probes[outcome_index(result.outcome)].fetch_add(1, Ordering::Relaxed);
        if result.outcome == Outcome::Down {
            self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        } else {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        // Last: a first check's series appear together.
        self.up.set(Some(up_value(result.outcome)));
    }
}

/// The per-site series of every scheduled site, by name. Cloning shares the set.
#[derive(Debug, Clone, Default)]
pub struct SiteMetrics {
    sites: Arc<RwLock<BTreeMap<String, Arc<SiteGauges>>>>,
}

impl SiteMetrics {
    /// The handle of `site`, made on first use; a restarted (changed) site keeps its values.
    pub fn site(&self, site: &str) -> Arc<SiteGauges> {
        if let Some(gauges) = self.sites.read().get(site) {
            return Arc::clone(gauges);
        }
        let mut sites = self.sites.write();
        Arc::clone(
            sites
                .entry(site.to_owned())
                .or_insert_with(|| Arc::new(SiteGauges::new())),
        )
    }

    /// Forgets every site for which `keep` is false (after a reload): their series disappear.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.sites.write().retain(|name, _| keep(name));
    }

    /// Sites with series, for tests and logs.
    pub fn len(&self) -> usize {
        self.sites.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.read().is_empty()
    }

    /// Appends every site's series to `out`: [`SiteMetrics::chunks`], whole (for tests).
    pub fn render(&self, out: &mut String) {
        self.chunks().for_each(|chunk| out.push_str(&chunk));
    }

    /// Every site's series, one family after another (each with its `# HELP` and `# TYPE`),
    /// sites in name order, as chunks of text a response streams: a scrape holds one chunk at
    /// a time, not the whole text (7 MB at 10,000 sites, which rendered whole raised the peak
    /// RSS of `dev/bench scale` by 25 MiB). The counters are there from the site's start, at 0
    /// (a rate sees 0, not "no data"); the gauges only once the site has been checked.
    ///
    /// The set of sites is read when this is called; each chunk reads its sites' values when
    /// it is made.
    pub fn chunks(&self) -> Chunks {
        let sites = self
            .sites
            .read()
            .iter()
            .map(|(name, gauges)| (escape_label(name), Arc::clone(gauges)))
            .collect();
        Chunks {
            sites,
            family: 0,
            next: 0,
        }
    }
}

/// The families of [`SiteMetrics::chunks`], in the order they are written.
#[derive(Debug, Clone, Copy)]
enum Family {
    Probes,
    MissedTicks,
    Up,
    PhaseSeconds,
    StatusCode,
    CertNotAfter,
    ConsecutiveFailures,
}

impl Family {
    const ALL: [Family; 7] = [
        Family::Probes,
        Family::MissedTicks,
        Family::Up,
        Family::PhaseSeconds,
        Family::StatusCode,
        Family::CertNotAfter,
        Family::ConsecutiveFailures,
    ];

    fn name_help_type(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Family::Probes => (names::PROBES, names::PROBES_HELP, "counter"),
            Family::MissedTicks => (names::MISSED_TICKS, names::MISSED_TICKS_HELP, "counter"),
            Family::Up => (names::SITE_UP, names::SITE_UP_HELP, "gauge"),
            Family::PhaseSeconds => (
                names::SITE_PHASE_SECONDS,
                names::SITE_PHASE_SECONDS_HELP,
                "gauge",
            ),
            Family::StatusCode => (
                names::SITE_STATUS_CODE,
                names::SITE_STATUS_CODE_HELP,
                "gauge",
            ),
            Family::CertNotAfter => (
                names::SITE_CERT_NOT_AFTER,
                names::SITE_CERT_NOT_AFTER_HELP,
                "gauge",
            ),
            Family::ConsecutiveFailures => (
                names::SITE_CONSECUTIVE_FAILURES,
                names::SITE_CONSECUTIVE_FAILURES_HELP,
                "gauge",
            ),
        }
    }

    /// Whether the family is written at all: the counters for any site, the gauges once a
    /// site has been checked, the certificate expiry once a checked site has one.
    fn shown(self, sites: &[(String, Arc<SiteGauges>)]) -> bool {
        let checked = |g: &SiteGauges| g.up.get().is_some();
        match self {
            Family::Probes | Family::MissedTicks => !sites.is_empty(),
            Family::CertNotAfter => sites
                .iter()
                .any(|(_, g)| checked(g) && g.cert_not_after.get().is_some()),
            _ => sites.iter().any(|(_, g)| checked(g)),
        }
    }

    /// Appends one site's samples of this family.
    fn samples(self, out: &mut String, site: &str, g: &SiteGauges) {
        let (name, _, _) = self.name_help_type();
        let gauge = |out: &mut String, value: Option<f64>| {
            if let Some(value) = value {
                let _ = writeln!(out, "{name}{{site=\"{site}\"}} {value}");
            }
        };
        match self {
            Family::Probes => {
                for (outcome, count) in OUTCOMES.iter().zip(&g.probes) {
                    let (outcome, count) = (outcome.as_str(), count.load(Ordering::Relaxed));
                    let _ = writeln!(
                        out,
                        "{name}{{site=\"{site}\",outcome=\"{outcome}\"}} {count}"
                    );
                }
            }
            Family::MissedTicks => {
                let missed = g.missed.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{site=\"{site}\"}} {missed}");
            }
            // The gauges of a site not checked yet are absent, not 0.
            _ if g.up.get().is_none() => {}
            Family::Up => gauge(out, g.up.get()),
            Family::PhaseSeconds => {
                for (phase, seconds) in PHASES.iter().zip(&g.phases) {
                    if let Some(seconds) = seconds.get() {
                        let _ =
                            writeln!(out, "{name}{{site=\"{site}\",phase=\"{phase}\"}} {seconds}");
                    }
                }
            }
            Family::StatusCode => gauge(out, g.status.get()),
            Family::CertNotAfter => gauge(out, g.cert_not_after.get()),
            Family::ConsecutiveFailures => {
                let failures = g.consecutive_failures.load(Ordering::Relaxed) as f64;
                gauge(out, Some(failures));
            }
        }
    }
}

/// Sites per chunk of [`Chunks`]: at most about 70 KB of text (six phases a site).
const SITES_PER_CHUNK: usize = 200;

/// The chunks of [`SiteMetrics::chunks`].
#[derive(Debug)]
pub struct Chunks {
    /// Label-escaped names and their series, in name order.
    sites: Vec<(String, Arc<SiteGauges>)>,
    /// Index in [`Family::ALL`] of the family being written.
    family: usize,
    /// The family's next site; 0 before its header.
    next: usize,
}

impl Iterator for Chunks {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let family = loop {
            let family = *Family::ALL.get(self.family)?;
            if self.next > 0 || family.shown(&self.sites) {
                break family;
            }
            self.family += 1;
        };
        let mut out = String::new();
        if self.next == 0 {
            let (name, help, kind) = family.name_help_type();
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        }
        let end = (self.next + SITES_PER_CHUNK).min(self.sites.len());
        for (site, g) in &self.sites[self.next..end] {
            family.samples(&mut out, site, g);
        }
        if end == self.sites.len() {
            (self.family, self.next) = (self.family + 1, 0);
        } else {
            self.next = end;
        }
        Some(out)
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcome: Outcome, status: Option<u16>, tls: bool) -> CheckResult {
        let now = chrono::Utc::now();
        let mut result = CheckResult {
            schema: crate::result::SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            site: "a".into(),
            url: "https://a.example/".into(),
            final_url: None,
            scheduled_at: now,
            started_at: now,
            outcome,
            status,
            timings: Timings {
                dns_ms: Some(1.5),
                connect_ms: Some(2.0),
                tls_ms: tls.then_some(10.0),
                ttfb_ms: status.map(|_| 20.0),
                transfer_ms: status.map(|_| 0.25),
                total_ms: 34.0,
            },
            failure: None,
            assertions: Vec::new(),
            metrics: BTreeMap::new(),
            body_bytes: 0,
            body_truncated: false,
            cert_not_after: None,
            tls_insecure: false,
            config_version: "v".into(),
            attempts: 1,
            probe_host: "test".into(),
            maintenance: None,
        };
        if tls {
            result.cert_not_after = chrono::DateTime::from_timestamp(1_900_000_000, 0);
        }
        result
    }

    /// The sample lines of `text` (comments left out).
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn outcomes_map_to_up_values() {
        for (outcome, value) in [
            (Outcome::Up, 1.0),
            (Outcome::Degraded, 0.5),
            (Outcome::Down, 0.0),
        ] {
            assert_eq!(up_value(outcome), value, "{outcome:?}");
        }
    }

    #[test]
    fn a_site_appears_after_its_first_check_with_every_series() {
        let metrics = SiteMetrics::default();
        let mut text = String::new();
        metrics.render(&mut text);
        assert_eq!(text, "", "no site");
        let gauges = metrics.site("a");
        let mut text = String::new();
        metrics.render(&mut text);
        assert_eq!(
            samples(&text),
            [
                "sitewatch_probes_total{site=\"a\",outcome=\"up\"} 0",
                "sitewatch_probes_total{site=\"a\",outcome=\"degraded\"} 0",
                "sitewatch_probes_total{site=\"a\",outcome=\"down\"} 0",
                "sitewatch_missed_ticks_total{site=\"a\"} 0",
            ],
            "not checked yet: the counters only, at 0"
        );

        gauges.record(&result(Outcome::Up, Some(200), true));
        gauges.missed(3);
        let mut text = String::new();
        metrics.render(&mut text);
        assert_eq!(
            samples(&text),
            [
                "sitewatch_probes_total{site=\"a\",outcome=\"up\"} 1",
                "sitewatch_probes_total{site=\"a\",outcome=\"degraded\"} 0",
                "sitewatch_probes_total{site=\"a\",outcome=\"down\"} 0",
                "sitewatch_missed_ticks_total{site=\"a\"} 3",
                "sitewatch_site_up{site=\"a\"} 1",
                "sitewatch_site_phase_seconds{site=\"a\",phase=\"dns\"} 0.0015",
                "sitewatch_site_phase_seconds{site=\"a\",phase=\"connect\"} 0.002",
                "sitewatch_site_phase_seconds{site=\"a\",phase=\"tls\"} 0.01",
                "sitewatch_site_phase_seconds{site=\"a\",phase=\"ttfb\"} 0.02",
                "sitewatch_site_phase_seconds{site=\"a\",phase=\"transfer\"} 0.00025",
                "sitewatch_site_phase_seconds{site=\"a\",phase=\"total\"} 0.034",
                "sitewatch_site_status_code{site=\"a\"} 200",
                "sitewatch_site_cert_not_after_seconds{site=\"a\"} 1900000000",
                "sitewatch_site_consecutive_failures{site=\"a\"} 0",
            ]
        );
        for name in [
            names::SITE_UP,
            names::SITE_PHASE_SECONDS,
            names::SITE_STATUS_CODE,
            names::SITE_CERT_NOT_AFTER,
            names::SITE_CONSECUTIVE_FAILURES,
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} gauge\n")), "{name}");
        }
        for name in [names::PROBES, names::MISSED_TICKS] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
            assert!(text.contains(&format!("# TYPE {name} counter\n")), "{name}");
        }
    }

    #[test]
    fn failures_count_up_and_reset_and_absent_phases_vanish() {
        let metrics = SiteMetrics::default();
        let gauges = metrics.site("a");
        gauges.record(&result(Outcome::Up, Some(200), true));
        gauges.record(&result(Outcome::Down, None, false));
        gauges.record(&result(Outcome::Down, Some(500), false));
        let mut text = String::new();
        metrics.render(&mut text);
        let lines = samples(&text);
        assert!(lines.contains(&"sitewatch_site_up{site=\"a\"} 0"), "{text}");
        assert!(lines.contains(&"sitewatch_site_consecutive_failures{site=\"a\"} 2"));
        assert!(lines.contains(&"sitewatch_site_status_code{site=\"a\"} 500"));
        assert!(!text.contains("phase=\"tls\""), "{text}");
        assert!(!text.contains("cert_not_after"), "{text}");

        gauges.record(&result(Outcome::Down, None, false));
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(text.contains("sitewatch_site_status_code{site=\"a\"} 0\n"));
        assert!(!text.contains("phase=\"ttfb\""), "{text}");

        gauges.record(&result(Outcome::Degraded, Some(200), false));
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(text.contains("sitewatch_site_up{site=\"a\"} 0.5\n"));
        assert!(text.contains("sitewatch_site_consecutive_failures{site=\"a\"} 0\n"));
    }

    #[test]
    fn retain_removes_series_and_a_handle_is_shared_per_name() {
        let metrics = SiteMetrics::default();
        let (a, b) = (metrics.site("a"), metrics.site("b \"q\"\\"));
        assert!(Arc::ptr_eq(&a, &metrics.site("a")));
        a.record(&result(Outcome::Up, Some(200), false));
        b.record(&result(Outcome::Up, Some(200), false));
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(
            text.contains(r#"sitewatch_site_up{site="b \"q\"\\"} 1"#),
            "{text}"
        );

        metrics.retain(|name| name == "a");
        assert_eq!(metrics.len(), 1);
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(!text.contains("site=\"b"), "{text}");
        assert!(text.contains("sitewatch_site_up{site=\"a\"} 1"));
    }

    #[test]
    fn many_sites_stream_in_chunks_with_each_family_once() {
        let metrics = SiteMetrics::default();
        let count = SITES_PER_CHUNK * 2 + 7;
        for i in 0..count {
            let gauges = metrics.site(&format!("s{i:05}"));
            // Every other site checked; only one with a certificate.
            if i % 2 == 0 {
                gauges.record(&result(Outcome::Up, Some(200), i == count - 1));
            }
        }
        let chunks: Vec<String> = metrics.chunks().collect();
        let text = chunks.concat();
        let mut whole = String::new();
        metrics.render(&mut whole);
        assert_eq!(text, whole);
        let checked = count.div_ceil(2);
        for (name, expected) in [
            (names::PROBES, 3 * count),
            (names::MISSED_TICKS, count),
            (names::SITE_UP, checked),
            // No TLS phase but for the one site with a certificate.
            (names::SITE_PHASE_SECONDS, 5 * checked + 1),
            (names::SITE_STATUS_CODE, checked),
            (names::SITE_CERT_NOT_AFTER, 1),
            (names::SITE_CONSECUTIVE_FAILURES, checked),
        ] {
            assert_eq!(
                text.matches(&format!("# HELP {name} ")).count(),
                1,
                "{name}"
            );
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
            let lines = samples(&text)
                .into_iter()
                .filter(|line| line.starts_with(&format!("{name}{{")))
                .count();
            assert_eq!(lines, expected, "{name}");
        }
        // Sites in name order within a family, whatever the chunk.
        let missed: Vec<&str> = samples(&text)
            .into_iter()
            .filter(|line| line.starts_with(names::MISSED_TICKS))
            .collect();
        assert!(missed.windows(2).all(|w| w[0] < w[1]));
        // No chunk holds more than its share of sites: 3 probe lines each at most.
        for chunk in &chunks {
            assert!(
                chunk.lines().count() <= SITES_PER_CHUNK * 6 + 2,
                "{}",
                chunk.len()
            );
        }
        assert!(chunks.len() >= 7 * 3, "{} chunks", chunks.len());
    }
}
