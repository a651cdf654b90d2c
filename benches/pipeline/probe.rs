//! Part 1, probe throughput: the library's scheduler and checker in this process against a local
//! nginx, a fresh connection per probe, offered load above the target; the ceiling is wrk with
//! `Connection: close` against the same nginx, run right before and right after.
//!
//! In-process rather than `sitewatch produce`: what is measured is schedule + probe + assertions
//! (the producer's whole per-check path up to `publish`), with exact per-probe lag and no Kafka
//! in the way; the real binary with Kafka is measured at 1,000 probes/s by the scale part.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};
use sitewatch::check::Checker;
use sitewatch::config::Site;
use sitewatch::probe::{Prober, DEFAULT_USER_AGENT};
use sitewatch::result::Outcome;
use sitewatch::schedule::{Job, Limits, Scheduler, Tick, DEFAULT_MAX_CONCURRENCY};
use tokio_util::sync::CancellationToken;

use crate::common::{self, Nginx};
use crate::say;

pub struct Options {
    /// Sites, each probed every second: the offered load in probes/s.
    pub sites: usize,
    pub warmup: Duration,
    pub measure: Duration,
    /// Length of each wrk run.
    pub wrk_seconds: u32,
}

impl Options {
    pub fn full() -> Self {
        Options {
            sites: 8_000,
            warmup: Duration::from_secs(4),
            measure: Duration::from_secs(30),
            wrk_seconds: 10,
        }
    }

    pub fn quick() -> Self {
        Options {
            sites: 2_000,
            warmup: Duration::from_secs(2),
            measure: Duration::from_secs(5),
            wrk_seconds: 3,
        }
    }
}

/// wrk connections: enough to keep one nginx worker busy with connection setup and teardown.
const WRK_CONNECTIONS: u32 = 64;

/// Runs a check per tick and keeps score; the result is dropped (publishing is not measured).
struct ProbeJob {
    checker: Checker,
    /// Set while the measurement window is open.
    recording: AtomicBool,
    completed: AtomicU64,
    up: AtomicU64,
    /// Schedule lag (started_at − scheduled_at) of checks started in the window, µs.
    lags_us: Mutex<Vec<u32>>,
    /// Failure kinds of non-up results in the window, for the report.
    failures: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Job for ProbeJob {
    type SiteState = ();
    fn site_state(&self, _site: &Site) {}
    async fn run(self: Arc<Self>, site: Arc<Site>, _state: (), tick: Tick) {
        let result = self.checker.check(&site, tick.id, tick.scheduled_at).await;
        self.completed.fetch_add(1, Ordering::Relaxed);
        if result.outcome == Outcome::Up {
            self.up.fetch_add(1, Ordering::Relaxed);
        }
        if self.recording.load(Ordering::Relaxed) {
            let lag = (result.started_at - result.scheduled_at)
                .num_microseconds()
                .unwrap_or(0);
            self.lags_us
                .lock()
                .unwrap()
                .push(lag.clamp(0, u32::MAX as i64) as u32);
            if result.outcome != Outcome::Up {
                let kind = result.failure.as_ref().map_or("?".to_owned(), |f| {
                    format!("{}: {}", f.kind.as_str(), f.message)
                });
                *self.failures.lock().unwrap().entry(kind).or_default() += 1;
            }
        }
    }
}

pub fn run(options: &Options) -> Result<Value> {
    // The same subscriber as the binary (fmt, EnvFilter "info"): every check opens an
    // info-level span, and that cost belongs in the figure. Lines go to target/bench/probe.log.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(Mutex::new(std::fs::File::create(
            common::out_dir().join("probe.log"),
        )?))
        .try_init();
    let nginx = Nginx::start()?;
    say!("probe: nginx {} on {}", Nginx::version(), nginx.url());

    let wrk_before = common::wrk_close(&nginx.url(), 2, WRK_CONNECTIONS, options.wrk_seconds)?;
    say!(
        "probe: ceiling before: wrk {:.0} req/s ({} errors)",
        wrk_before.requests_per_s,
        wrk_before.errors
    );

    // Stage 1: the offered load of the issue (8,000 sites at 1 s), which must be sustained:
    // lag, CPU and missed ticks come from here. Stage 2: offered well above what the machine can
    // do (1.25 × the wrk ceiling), so the achieved rate is sitewatch's capacity — the figure
    // compared with the ceiling.
    let saturation = ((wrk_before.requests_per_s * 1.25 / 1000.0).round() as usize * 1000)
        .max(options.sites * 2);
    let loads = std::env::var("SITEWATCH_BENCH_PROBE_SITES")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect::<Vec<usize>>()
        })
        .unwrap_or_else(|| vec![options.sites, saturation]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut stages = Vec::new();
    for sites in loads {
        stages.push(runtime.block_on(measure(sites, options, &nginx))?);
    }
    drop(runtime);

    let wrk_after = common::wrk_close(&nginx.url(), 2, WRK_CONNECTIONS, options.wrk_seconds)?;
    say!(
        "probe: ceiling after: wrk {:.0} req/s ({} errors)",
        wrk_after.requests_per_s,
        wrk_after.errors
    );

    let ceiling = (wrk_before.requests_per_s + wrk_after.requests_per_s) / 2.0;
    let sustained = stages[0].clone();
    let capacity = stages.last().cloned().unwrap_or_default();
    let probes_per_s = stages
        .iter()
        .filter_map(|s| s["probes_per_s"].as_f64())
        .fold(0.0, f64::max);
    Ok(json!({
        "probes_per_s": probes_per_s.round(),
        "probe_ceiling_per_s": ceiling.round(),
        "probe_ratio": common::round2(probes_per_s / ceiling),
        "wrk_runs_per_s": [wrk_before.requests_per_s.round(), wrk_after.requests_per_s.round()],
        "wrk_errors": wrk_before.errors + wrk_after.errors,
        "wrk": format!("wrk -t2 -c{WRK_CONNECTIONS} -d{}s -H 'Connection: close'", options.wrk_seconds),
        "nginx": format!("nginx {} , 1 worker process, static {}-byte body", Nginx::version(), common::NGINX_BODY.len()),
        "sitewatch": sustained,
        "saturation": capacity,
        "stages": stages,
    }))
}

async fn measure(offered: usize, options: &Options, nginx: &Nginx) -> Result<Value> {
    let prober = Arc::new(Prober::new(DEFAULT_USER_AGENT)?);
    let job = Arc::new(ProbeJob {
        checker: Checker::new(prober, None, "bench"),
        recording: AtomicBool::new(false),
        completed: AtomicU64::new(0),
        up: AtomicU64::new(0),
        lags_us: Mutex::new(Vec::with_capacity(
            offered * options.measure.as_secs() as usize,
        )),
        failures: Mutex::new(Default::default()),
    });
    let limits = Limits {
        max_concurrency: DEFAULT_MAX_CONCURRENCY,
        max_per_host: 1_000_000,
    };
    let url: url::Url = nginx.url().parse()?;
    let sites: Vec<Site> = (0..offered)
        .map(|i| {
            let mut site = Site::with_defaults(&format!("bench-{i:05}"), url.clone());
            site.interval = Duration::from_secs(1);
            // What validation gives a 1 s site that sets no timeout: half the interval.
            site.timeout = Duration::from_millis(500);
            site
        })
        .collect();
    let mut scheduler = Scheduler::new(Arc::clone(&job), limits, CancellationToken::new());
    let stats = scheduler.stats();
    scheduler.apply(sites);
    say!(
        "probe: {offered} sites at 1 s (offered {offered} probes/s), warming up {:?}",
        options.warmup
    );
    tokio::time::sleep(options.warmup).await;

    let start = std::time::Instant::now();
    let (cpu0, nginx_cpu0) = (common::self_cpu_seconds(), nginx.cpu_seconds());
    let faults0 = common::self_minor_faults();
    let (up0, done0) = (
        job.up.load(Ordering::Relaxed),
        job.completed.load(Ordering::Relaxed),
    );
    let (ticks0, missed0) = (
        stats.ticks.load(Ordering::Relaxed),
        stats.missed.load(Ordering::Relaxed),
    );
    job.recording.store(true, Ordering::Relaxed);
    tokio::time::sleep(options.measure).await;
    job.recording.store(false, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    let (cpu1, nginx_cpu1) = (common::self_cpu_seconds(), nginx.cpu_seconds());
    let faults1 = common::self_minor_faults();
    let (up1, done1) = (
        job.up.load(Ordering::Relaxed),
        job.completed.load(Ordering::Relaxed),
    );
    let (ticks1, missed1) = (
        stats.ticks.load(Ordering::Relaxed),
        stats.missed.load(Ordering::Relaxed),
    );
    scheduler.shutdown().await;

    let mut lags: Vec<f64> = job
        .lags_us
        .lock()
        .unwrap()
        .iter()
        .map(|us| *us as f64 / 1000.0)
        .collect();
    let probes_per_s = (up1 - up0) as f64 / seconds;
    let failures = job.failures.lock().unwrap().clone();
    say!(
        "probe: sitewatch {:.0} probes/s up ({:.0}/s completed), {:.2} cores, {} missed ticks",
        probes_per_s,
        (done1 - done0) as f64 / seconds,
        (cpu1 - cpu0) / seconds,
        missed1 - missed0
    );
    Ok(json!({
        "mode": "in-process: sitewatch::schedule::Scheduler + sitewatch::check::Checker (no Kafka)",
        "offered_per_s": offered,
        "window_s": common::round2(seconds),
        "probes_per_s": probes_per_s,
        "completed_per_s": ((done1 - done0) as f64 / seconds).round(),
        "not_up_in_window": failures.values().sum::<u64>(),
        "failures": failures,
        "ticks": ticks1 - ticks0,
        "missed_ticks": missed1 - missed0,
        "cpu_cores": common::round2((cpu1 - cpu0) / seconds),
        "cpu_us_per_probe": common::round2((cpu1 - cpu0) * 1e6 / (done1 - done0).max(1) as f64),
        "minor_faults_per_probe": common::round2((faults1 - faults0) as f64 / (done1 - done0).max(1) as f64),
        "nginx_cpu_cores": common::round2((nginx_cpu1 - nginx_cpu0) / seconds),
        "lag_ms": common::summary(&mut lags),
    }))
}
