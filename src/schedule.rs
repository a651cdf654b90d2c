//! The scheduler: every site on its own drift-free ticks, within global and per-host caps.
//!
//! - First runs are spread over the interval by a stable hash of the site name, aligned to the
//!   wall clock (due times are `k·interval + phase` since the Unix epoch), so restarts and shards
//!   keep each site's phase.
//! - Ticks are drift-free: `next = previous_due + interval`.
//! - Each site's loop runs its own checks: at a tick it waits for its host's permit, then a
//!   global one, and checks for the newest tick due by then. Ticks that come while a check waits
//!   or runs are *missed*: counted (and logged, at most once a minute per site with the number
//!   missed since the previous line, and past [`MISSED_LINES_PER_MINUTE`] such lines a minute
//!   summed over the other sites in one), never queued. A check stays in flight until its
//!   result has been handed to the sink, so a sink that pushes back (Kafka down, queue full)
//!   shows up here as missed ticks. Past capacity every site waits its turn in first-come queues: each is
//!   checked in turn, at most an interval late, and memory stays one loop per site.
//! - Wall-clock steps (an NTP step, suspend and resume, `date -s`): each tick compares the wall
//!   clock with the monotonic one it sleeps on. Past [`CLOCK_STEP`] apart, the site's loop
//!   re-anchors: its next tick is aligned to the new wall time, and the ticks a forward step
//!   jumped over are counted as missed, so `scheduled_at` never carries the offset.
//! - [`Scheduler::apply`] takes a whole new site list (reload): unchanged sites keep their task
//!   and schedule, changed ones restart on their (stable) phase, removed ones stop.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::Site;

/// Checks running at once across all sites: enough for thousands of sites at short intervals
/// (1,000 probes/s × up to a few seconds each), small enough to bound sockets and memory.
pub const DEFAULT_MAX_CONCURRENCY: usize = 4096;
/// Checks running at once against one host (`host:port`), so one big config cannot flood a site.
pub const DEFAULT_MAX_PER_HOST: usize = 64;

/// One firing of a site's schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// Unique id of the check, assigned when scheduled (UUID v7).
    pub id: Uuid,
    /// Wall-clock time the check was due.
    pub scheduled_at: DateTime<Utc>,
}

/// What the scheduler runs at a tick. `run` is called once the check holds its concurrency
/// permits, in the site's loop, and its future completes when the result has been handed on;
/// until then the site counts as in flight. A loop stopped (its site removed or changed) while
/// waiting for permits never calls it.
pub trait Job: Send + Sync + 'static {
    /// What the job keeps for one scheduled site (the producer: its metric handles), made by
    /// [`Job::site_state`] when the site starts or restarts, so checks need no lookup.
    type SiteState: Clone + Send + Sync + 'static;

    fn site_state(&self, site: &Site) -> Self::SiteState;

    /// Counts `n` missed ticks of a site (the producer: its `sitewatch_missed_ticks_total`).
    fn missed(&self, _state: &Self::SiteState, _n: u64) {}

    fn run(
        self: Arc<Self>,
        site: Arc<Site>,
        state: Self::SiteState,
        tick: Tick,
    ) -> impl Future<Output = ()> + Send + 'static;
}

/// Concurrency limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_concurrency: usize,
    pub max_per_host: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            max_per_host: DEFAULT_MAX_PER_HOST,
        }
    }
}

/// What `max_per_host` counts by: `host:port` of a site's URL.
pub(crate) fn host_key(url: &url::Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

/// `--shard i/n`: this instance probes the sites whose stable hash modulo `n` is `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn contains(&self, site_name: &str) -> bool {
        stable_hash(site_name.as_bytes()) % self.count == self.index
    }
}

/// As the `--shard` flag writes it: `0/1`.
impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parse = || {
            let (index, count) = text.split_once('/')?;
            Some(Shard {
                index: index.trim().parse().ok()?,
                count: count.trim().parse().ok()?,
            })
        };
        match parse() {
            // (index < count also refuses a count of 0.)
            Some(shard) if shard.index < shard.count => Ok(shard),
            _ => Err(format!(
                "invalid shard {text:?}: expected i/n with 0 <= i < n, e.g. 0/3"
            )),
        }
    }
}

/// FNV-1a, 64 bit: stable across builds, platforms and Rust versions (unlike `DefaultHasher`),
/// which is what shard membership and phases need.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A site's phase within its interval, from its name.
pub fn phase(site_name: &str, interval: Duration) -> Duration {
    let interval_ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(stable_hash(site_name.as_bytes()) % interval_ms)
}

/// How far the wall clock may drift from the monotonic pairing before it counts as stepped. NTP
/// slews smaller offsets gradually and steps larger ones (ntpd: 128 ms, chrony: its
/// `makestep`); a second keeps slewing alone and catches any step a person would notice.
pub const CLOCK_STEP: Duration = Duration::from_secs(1);

/// Most a forward step counts as missed: a day of ticks.
const DAY_US: i64 = 86_400_000_000;

/// Where wall time comes from: `Utc::now` in production; tests step it.
pub type WallSource = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Pairs the monotonic clock the scheduler sleeps on with the wall clock results report.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub wall: DateTime<Utc>,
    pub instant: Instant,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            wall: Utc::now(),
            instant: Instant::now(),
        }
    }

    /// The wall-clock time of a monotonic instant.
    pub fn wall_at(&self, instant: Instant) -> DateTime<Utc> {
        let delta = instant.saturating_duration_since(self.instant);
        self.wall + chrono::Duration::from_std(delta).unwrap_or_default()
    }

    /// The first due instant at or after this clock's "now" for a site: wall-clock aligned
    /// multiples of the interval, shifted by the site's phase.
    pub fn first_due(&self, site_name: &str, interval: Duration) -> Instant {
        let interval_ms = interval.as_millis().max(1) as i64;
        let phase_ms = phase(site_name, interval).as_millis() as i64;
        let now_ms = self.wall.timestamp_millis();
        let wait_ms = (phase_ms - now_ms).rem_euclid(interval_ms);
        self.instant + Duration::from_millis(wait_ms as u64)
    }
}

/// Counters the scheduler keeps for tests, benchmarks and logs (metrics are exported too).
#[derive(Debug, Default)]
pub struct Stats {
    /// Ticks checked or missed (those of a check waiting for a permit are counted when it gets
    /// one, or as missed when its loop stops).
    pub ticks: AtomicU64,
    pub missed: AtomicU64,
    /// Site loops that re-anchored on a stepped wall clock (each loop counts each step it saw;
    /// the log has one line a minute).
    pub clock_steps: AtomicU64,
    /// When a step was last logged.
    step_logged: Mutex<Option<Instant>>,
    /// The missed-tick lines of all sites, within [`MISSED_LINES_PER_MINUTE`].
    missed_lines: Mutex<MissedLines>,
}

struct SiteTask {
    site: Arc<Site>,
    stop: CancellationToken,
    /// Set while a check of this site runs; handed to the loop that replaces this one when the
    /// site changes, so an old check still running makes the new loop's ticks missed instead of
    /// running alongside it.
    in_flight: Arc<AtomicBool>,
}

/// Runs the sites' schedules until shut down.
pub struct Scheduler<J: Job> {
    job: Arc<J>,
    limits: Limits,
    clock: Clock,
    wall: WallSource,
    global: Arc<Semaphore>,
    per_host: Mutex<HashMap<String, Arc<Semaphore>>>,
    sites: HashMap<String, SiteTask>,
    /// Site loops, each running its own checks; shutdown waits for all of them.
    tracker: TaskTracker,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
}

impl<J: Job> Scheduler<J> {
    pub fn new(job: Arc<J>, limits: Limits, shutdown: CancellationToken) -> Self {
        Self::with_clock(job, limits, shutdown, Clock::now()).with_wall(Arc::new(Utc::now))
    }

    /// As [`Scheduler::new`] with an explicit clock anchor (tests pin the wall clock); the wall
    /// clock then follows the anchor and never steps unless [`Scheduler::with_wall`] says so.
    pub fn with_clock(
        job: Arc<J>,
        limits: Limits,
        shutdown: CancellationToken,
        clock: Clock,
    ) -> Self {
        Scheduler {
            job,
            limits,
            clock,
            wall: Arc::new(move || clock.wall_at(Instant::now())),
            global: Arc::new(Semaphore::new(limits.max_concurrency)),
            per_host: Mutex::new(HashMap::new()),
            sites: HashMap::new(),
            tracker: TaskTracker::new(),
            shutdown,
            stats: Arc::new(Stats::default()),
        }
    }

    /// Reads wall time from `wall` instead.
    pub fn with_wall(mut self, wall: WallSource) -> Self {
        self.wall = wall;
        self
    }

    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Number of sites being scheduled.
    pub fn len(&self) -> usize {
        self.sites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// Whether a site of this name is scheduled.
    pub fn contains(&self, site_name: &str) -> bool {
        self.sites.contains_key(site_name)
    }

    /// Makes `sites` the scheduled set: starts new sites, restarts changed ones, stops removed
    /// ones, leaves unchanged ones alone. Returns (added, changed, removed) counts.
    ///
    /// The configuration hands its sites over already shared (`Arc<Site>`, collected in place):
    /// a `Vec<Site>` turned into one `Arc` each here would hold every site twice at the peak of
    /// a load (37 MiB more peak RSS at 76,000 sites).
    pub fn apply<S: Into<Arc<Site>>>(&mut self, sites: Vec<S>) -> (usize, usize, usize) {
        let sites: Vec<Arc<Site>> = sites.into_iter().map(Into::into).collect();
        let (mut added, mut changed) = (0, 0);
        // Index of each name's last definition (a later duplicate replaces an earlier one). The
        // sites stay in their Vec: collecting them by value into a map would hold a second,
        // hash-table-sized copy (~10 MB at 10,000 sites) at the peak of every load.
        let last: HashMap<&str, usize> = sites
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let removed: Vec<String> = self
            .sites
            .keys()
            .filter(|name| !last.contains_key(name.as_str()))
            .cloned()
            .collect();
        let wanted: Vec<bool> = sites
            .iter()
            .enumerate()
            .map(|(i, s)| last[s.name.as_str()] == i)
            .collect();
        drop(last);
        for name in &removed {
            if let Some(task) = self.sites.remove(name) {
                task.stop.cancel();
            }
        }
        for (site, wanted) in sites.into_iter().zip(wanted) {
            if !wanted {
                continue;
            }
            let name = site.name.clone();
            let in_flight = match self.sites.get(&name) {
                Some(task) if same_definition(&task.site, &site) => continue,
                Some(task) => {
                    task.stop.cancel();
                    changed += 1;
                    Arc::clone(&task.in_flight)
                }
                None => {
                    added += 1;
                    Arc::new(AtomicBool::new(false))
                }
            };
            let task = self.start(site, in_flight);
            self.sites.insert(name, task);
        }
        // A host's semaphore is held by the loops of its sites; one the map alone holds has no
        // sites left (stopped loops let go of theirs as they exit, by the next apply at worst).
        self.per_host
            .lock()
            .retain(|_, semaphore| Arc::strong_count(semaphore) > 1);
        (added, changed, removed.len())
    }

    fn start(&self, site: Arc<Site>, in_flight: Arc<AtomicBool>) -> SiteTask {
        let stop = self.shutdown.child_token();
        let host = {
            let mut map = self.per_host.lock();
            Arc::clone(
                map.entry(host_key(&site.url))
                    .or_insert_with(|| Arc::new(Semaphore::new(self.limits.max_per_host))),
            )
        };
        let looper = SiteLoop {
            state: self.job.site_state(&site),
            site: Arc::clone(&site),
            job: Arc::clone(&self.job),
            global: Arc::clone(&self.global),
            host,
            clock: Clock::now_from(&self.clock).checked((self.wall)()).0,
            wall: Arc::clone(&self.wall),
            stop: stop.clone(),
            stats: Arc::clone(&self.stats),
            in_flight: Arc::clone(&in_flight),
            missed_log: MissedLog::default(),
        };
        self.tracker.spawn(looper.run());
        SiteTask {
            site,
            stop,
            in_flight,
        }
    }

    /// Stops scheduling and waits until every in-flight check has handed on its result.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Clock {
    /// A clock for "now" that keeps `anchor`'s wall/monotonic pairing (so paused-time tests
    /// stay deterministic after time has advanced).
    fn now_from(anchor: &Clock) -> Clock {
        let instant = Instant::now();
        Clock {
            wall: anchor.wall_at(instant),
            instant,
        }
    }

    /// This pairing, or, when `wall` (read at its instant) is more than [`CLOCK_STEP`] away from
    /// it, a new one at `wall`; with the step (wall minus what the pairing expected).
    fn checked(self, wall: DateTime<Utc>) -> (Clock, Option<chrono::Duration>) {
        let step = wall - self.wall;
        match step.abs().to_std().is_ok_and(|s| s > CLOCK_STEP) {
            true => (
                Clock {
                    wall,
                    instant: self.instant,
                },
                Some(step),
            ),
            false => (self, None),
        }
    }
}

/// Whether a reloaded site probes the same way as the running one: same [`probe_fingerprint`].
/// Its position in the file, its SLO, alert rule and status-page flag do not matter here.
fn same_definition(old: &Site, new: &Site) -> bool {
    probe_fingerprint(old) == probe_fingerprint(new)
}

/// A digest of everything that decides how a site is probed and judged, field by field in a
/// stable spelling (regexes and JSONPath queries by their source text). Destructuring makes a
/// new `Site` field a compile error here until it is placed on one side or the other.
pub fn probe_fingerprint(site: &Site) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let Site {
        name,
        url,
        interval,
        timeout,
        request,
        tls,
        expect,
        retries,
        max_redirects,
        follow_redirects,
        body_cap,
        hooks,
        slo: _,
        alert: _,
        status_page: _,
        location: _,
    } = site;
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(name.as_bytes());
    field(url.as_str().as_bytes());
    field(&interval.as_nanos().to_le_bytes());
    field(&timeout.as_nanos().to_le_bytes());
    field(request.method.as_str().as_bytes());
    for (header, value) in &request.headers {
        field(header.as_str().as_bytes());
        field(value.as_bytes());
    }
    field(request.body.as_deref().unwrap_or_default());
    for pem in [&tls.ca_pem, &tls.client_cert_pem, &tls.client_key_pem] {
        field(pem.as_deref().unwrap_or_default());
    }
    field(&[u8::from(tls.insecure)]);
    let statuses: Vec<String> = expect.status.iter().map(ToString::to_string).collect();
    field(statuses.join(",").as_bytes());
    for regex in [&expect.body, &expect.body_not] {
        field(regex.as_ref().map_or("", |r| r.as_str()).as_bytes());
    }
    for limit in [expect.max_time, expect.warn_time] {
        field(&limit.map_or(u128::MAX, |d| d.as_nanos()).to_le_bytes());
    }
    field(&expect.cert_days.map_or(u64::MAX, u64::from).to_le_bytes());
    field(&expect.max_body.unwrap_or(u64::MAX).to_le_bytes());
    for header in &expect.headers {
        field(header.name.as_bytes());
        field(header.pattern.as_str().as_bytes());
    }
    for json in &expect.json {
        field(json.path.as_bytes());
        field(json.equals.to_string().as_bytes());
    }
    field(&retries.to_le_bytes());
    field(&max_redirects.to_le_bytes());
    field(&[u8::from(*follow_redirects)]);
    field(&body_cap.to_le_bytes());
    field(hooks.join("\n").as_bytes());
    h.finalize().into()
}

struct SiteLoop<J: Job> {
    site: Arc<Site>,
    state: J::SiteState,
    job: Arc<J>,
    global: Arc<Semaphore>,
    host: Arc<Semaphore>,
    clock: Clock,
    wall: WallSource,
    stop: CancellationToken,
    stats: Arc<Stats>,
    in_flight: Arc<AtomicBool>,
    missed_log: MissedLog,
}

/// A site's missed ticks are logged at most this often, each line with how many were missed
/// since the previous one (the counter has every one): offered several times what it can probe,
/// a producer misses thousands of ticks a second, and a line for each would take CPU from the
/// checks it can still run.
pub const MISSED_LOG_EVERY: Duration = Duration::from_secs(60);

/// Which of a site's missed ticks get a log line: the first, then one per [`MISSED_LOG_EVERY`].
#[derive(Debug, Default)]
struct MissedLog {
    logged_at: Option<Instant>,
    /// Missed since the last line.
    unlogged: u64,
}

impl MissedLog {
    /// Counts `n` missed ticks at `now`; when a line is due, returns how many it reports.
    fn note(&mut self, now: Instant, n: u64) -> Option<u64> {
        self.unlogged += n;
        if self.logged_at.is_some_and(|at| now < at + MISSED_LOG_EVERY) {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Per-site missed-tick lines written in a minute, at most, by all sites together: past
/// capacity every site misses ticks, and 100,000 sites would write 100,000 lines a minute. The
/// lines past this many are summed in one line when the minute is over.
pub const MISSED_LINES_PER_MINUTE: u64 = 100;

/// The minute's budget of missed-tick lines, and what it held back.
#[derive(Debug, Default)]
struct MissedLines {
    minute_from: Option<Instant>,
    written: u64,
    held: Held,
}

/// Sites whose due missed-tick line was not written, and the ticks those lines would have had.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Held {
    sites: u64,
    ticks: u64,
}

/// What to log for a site whose line is due.
#[derive(Debug, PartialEq, Eq)]
struct Admission {
    /// The site's own line.
    write: bool,
    /// This is the minute's first line held back: say that lines are being held.
    first_held: bool,
    /// What the previous minute held back, for one line now.
    previous: Option<Held>,
}

impl MissedLines {
    /// A site's line for `ticks` missed ticks is due at `now`.
    fn admit(&mut self, now: Instant, ticks: u64) -> Admission {
        let mut previous = None;
        if self
            .minute_from
            .is_none_or(|from| now >= from + MISSED_LOG_EVERY)
        {
            previous = Some(self.held).filter(|held| held.sites > 0);
            *self = MissedLines {
                minute_from: Some(now),
                ..MissedLines::default()
            };
        }
        let write = self.written < MISSED_LINES_PER_MINUTE;
        if write {
            self.written += 1;
        } else {
            self.held.sites += 1;
            self.held.ticks += ticks;
        }
        Admission {
            write,
            first_held: !write && self.held.sites == 1,
            previous,
        }
    }
}

/// A site's in-flight flag, held while its check runs and cleared when the check ends, however
/// it ends.
struct InFlight<'a>(&'a AtomicBool);

impl<'a> InFlight<'a> {
    /// The flag, unless a check already holds it.
    fn claim(flag: &'a AtomicBool) -> Option<Self> {
        (!flag.swap(true, Ordering::AcqRel)).then_some(InFlight(flag))
    }
}

/// How many ticks after `due` (every `interval`) are due by `now`.
fn ticks_after(due: Instant, now: Instant, interval: Duration) -> u32 {
    let behind = now.saturating_duration_since(due).as_nanos() / interval.as_nanos().max(1);
    u32::try_from(behind).unwrap_or(u32::MAX)
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl<J: Job> SiteLoop<J> {
    /// The site's ticks, each checked here in the loop once permits are held: a site has at most
    /// one check waiting or running, and the ticks that come meanwhile are counted, never queued.
    ///
    /// An `async` block, not an `async fn`: an `async fn` keeps its arguments and the locals it
    /// moves them into side by side, and `self` twice made every site's task 136 bytes larger.
    #[allow(clippy::manual_async_fn)]
    fn run(mut self) -> impl Future<Output = ()> {
        async move {
            let interval = self.site.interval;
            let mut due = self.clock.first_due(&self.site.name, interval);
            loop {
                tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep_until(due) => {}
                }
                if let Some(next) = self.reanchored(due) {
                    due = next;
                    continue;
                }
                // After a stall (suspended process, overloaded runtime) check for the newest tick
                // already due, not for each one before it back to back.
                due = self.skip_to_newest(due, "scheduler fell behind");
                if self.in_flight.load(Ordering::Acquire) {
                    // The loop this one replaced (the site changed) is still running a check; it
                    // counts this tick as missed when its check ends, so it is not counted here.
                    due += interval;
                    continue;
                }
                // The host's permit first: sites of a host at its cap then wait on that host and
                // hold none of the global permits other hosts' sites could use. Both queues are
                // first come, first served, and a site joins them again only after its check: past
                // capacity every site is checked in turn, none starves.
                let (host, global) = (Arc::clone(&self.host), Arc::clone(&self.global));
                // Boxed, like the check: what waiting holds is not part of every site's loop.
                let permits = Box::pin(async move {
                    // Semaphores are never closed, so acquire only fails if they were; run anyway.
                    let host = host.acquire_owned().await.ok();
                    (host, global.acquire_owned().await.ok())
                });
                let permits = tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => {
                        // Never checked: this tick and those that came while it waited.
                        let behind = ticks_after(due, Instant::now(), interval);
                        let first = self.clock.wall_at(due);
                        let why = "stopped waiting for a permit";
                        self.missed_many(first, u64::from(behind) + 1, why);
                        return;
                    }
                    permits = permits => permits,
                };
                // Waited past the next tick: check for the newest one, with its time.
                due = self.skip_to_newest(due, "waited an interval for a permit");
                // Claimed, not just read: of this loop and the one it replaced, one runs a check.
                let flag = Arc::clone(&self.in_flight);
                let Some(in_flight) = InFlight::claim(&flag) else {
                    // Counted by the replaced loop whose check holds the flag, as above.
                    due += interval;
                    continue;
                };
                self.stats.ticks.fetch_add(1, Ordering::Relaxed);
                let tick = Tick {
                    id: Uuid::now_v7(),
                    scheduled_at: self.clock.wall_at(due),
                };
                // Boxed: the loop's own future, one per site, stays small whatever the check's
                // state holds while it runs. A panic in it is logged and ends this check only, not
                // the site's schedule.
                let site = Arc::clone(&self.site);
                let check = Box::pin(Arc::clone(&self.job).run(site, self.state.clone(), tick));
                if let Err(panic) = AssertUnwindSafe(check).catch_unwind().await {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(site = %self.site.name, panic = %what, "a check panicked");
                }
                // The ticks that came while the check ran are missed, this site's replacement
                // loop's included (it leaves them to the check's loop): counted before the flag
                // goes.
                due = self.skip_to_newest(due, "previous check still in flight") + interval;
                drop((in_flight, permits));
            }
        }
    }

    /// Counts as missed the ticks after `due` that are due by now and returns the newest tick
    /// due by now: `due` itself when no later one is.
    fn skip_to_newest(&mut self, due: Instant, why: &'static str) -> Instant {
        let behind = ticks_after(due, Instant::now(), self.site.interval);
        if behind == 0 {
            return due;
        }
        let first = self.clock.wall_at(due);
        self.missed_many(first, u64::from(behind), why);
        due + self.site.interval * behind
    }

    fn missed_many(&mut self, scheduled_at: DateTime<Utc>, n: u64, why: &'static str) {
        self.stats.ticks.fetch_add(n, Ordering::Relaxed);
        self.stats.missed.fetch_add(n, Ordering::Relaxed);
        self.job.missed(&self.state, n);
        let now = Instant::now();
        let Some(missed) = self.missed_log.note(now, n) else {
            return;
        };
        let admission = self.stats.missed_lines.lock().admit(now, missed);
        if let Some(held) = admission.previous {
            tracing::warn!(
                sites = held.sites,
                missed = held.ticks,
                "missed ticks at more sites in the previous minute, not logged one by one \
                 (sitewatch_missed_ticks_total counts them per site)"
            );
        }
        if admission.write {
            tracing::warn!(site = %self.site.name, %scheduled_at, why, missed, "missed tick");
        } else if admission.first_held {
            tracing::warn!(
                lines = MISSED_LINES_PER_MINUTE,
                "more sites missed ticks this minute than get a line each: the rest are summed \
                 in one line when the minute is over"
            );
        }
    }

    /// When the wall clock stepped since this loop's pairing was made: re-anchors on it and
    /// returns the next due instant, aligned to the new wall time. The tick due now is not run
    /// (its wall time is the old pairing's); a forward step's jumped-over ticks, this one
    /// included, count as missed. A backward step misses nothing: its wall times come again.
    fn reanchored(&mut self, due: Instant) -> Option<Instant> {
        let now = Clock::now_from(&self.clock);
        let (clock, step) = now.checked((self.wall)());
        let step = step?;
        let was = self.clock.wall_at(due);
        self.clock = clock;
        let next = clock.first_due(&self.site.name, self.site.interval);
        let interval_us = (self.site.interval.as_micros() as i64).max(1);
        let jumped = (clock.wall_at(next) - was)
            .num_microseconds()
            .unwrap_or(i64::MAX);
        // A clock set from 1970 to now would jump over billions of ticks: past a day's worth,
        // the step is an error of the clock, not checks that could have run.
        let skipped = (jumped.clamp(0, DAY_US) / interval_us) as u64;
        if skipped > 0 {
            self.missed_many(was, skipped, "wall clock stepped forward");
        }
        self.stats.clock_steps.fetch_add(1, Ordering::Relaxed);
        let mut logged = self.stats.step_logged.lock();
        if logged.is_none_or(|at| now.instant >= at + MISSED_LOG_EVERY) {
            *logged = Some(now.instant);
            tracing::warn!(
                step_ms = step.num_milliseconds(),
                wall = %clock.wall,
                "the wall clock stepped: scheduling re-anchored on it"
            );
        }
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_print_as_the_flag_writes_them() {
        assert_eq!(Shard::ALL.to_string(), "0/1");
        let shard: Shard = "2/3".parse().unwrap();
        assert_eq!(shard.to_string(), "2/3");
    }

    #[test]
    fn fingerprints_change_with_what_probes_and_only_with_that() {
        let base = Site::with_defaults("a", url::Url::parse("https://a.example/").unwrap());
        let same = |f: &dyn Fn(&mut Site)| {
            let mut site = base.clone();
            f(&mut site);
            probe_fingerprint(&site) == probe_fingerprint(&base)
        };
        assert!(same(&|s| s.location.line = 99));
        assert!(same(&|s| Arc::make_mut(&mut s.alert).after = 9));
        assert!(same(&|s| s.status_page = !s.status_page));
        assert!(!same(&|s| s.interval = Duration::from_secs(7)));
        assert!(!same(
            &|s| Arc::make_mut(&mut s.expect).body = Some(regex::Regex::new("ok").unwrap().into())
        ));
        assert!(!same(&|s| Arc::make_mut(&mut s.expect).max_body = Some(10)));
        assert!(!same(&|s| Arc::make_mut(&mut s.tls).insecure = true));
        assert!(!same(&|s| s.hooks.push("script:x".into())));
        assert!(!same(
            &|s| s.url = url::Url::parse("https://b.example/").unwrap()
        ));
        assert!(!same(
            &|s| Arc::make_mut(&mut s.request).body = Some(bytes::Bytes::from_static(b"x"))
        ));
    }
    use std::sync::Mutex as StdMutex;

    /// Records every tick per site; each run takes `busy` of (paused) time.
    struct Recorder {
        busy: Duration,
        ticks: StdMutex<Vec<(String, Instant, DateTime<Utc>)>>,
    }

    impl Job for Recorder {
        type SiteState = ();
        fn site_state(&self, _site: &Site) {}
        async fn run(self: Arc<Self>, site: Arc<Site>, _state: (), tick: Tick) {
            self.ticks
                .lock()
                .unwrap()
                .push((site.name.clone(), Instant::now(), tick.scheduled_at));
            tokio::time::sleep(self.busy).await;
        }
    }

    fn site(name: &str, interval: Duration) -> Site {
        let mut site = Site::with_defaults(name, "http://127.0.0.1:9/".parse().unwrap());
        site.interval = interval;
        site.timeout = interval / 2;
        site
    }

    fn recorder(busy: Duration) -> Arc<Recorder> {
        Arc::new(Recorder {
            busy,
            ticks: StdMutex::new(Vec::new()),
        })
    }

    /// A scheduler of `job` with `limits` on `clock`, stopped only by its own shutdown.
    fn scheduler<J: Job>(job: &Arc<J>, limits: Limits, clock: Clock) -> Scheduler<J> {
        Scheduler::with_clock(Arc::clone(job), limits, CancellationToken::new(), clock)
    }

    /// A clock whose wall time is an exact multiple of a minute, so phases are easy to check.
    fn pinned_clock() -> Clock {
        Clock {
            // 1_800_000_000 s is a multiple of 60.
            wall: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            instant: Instant::now(),
        }
    }

    #[test]
    fn shard_parsing_and_membership() {
        assert_eq!("1/3".parse::<Shard>(), Ok(Shard { index: 1, count: 3 }));
        for bad in ["3/3", "1", "a/b", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let names: Vec<String> = (0..3000).map(|i| format!("site-{i}")).collect();
        let shards: Vec<Shard> = (0..3).map(|i| Shard { index: i, count: 3 }).collect();
        for name in &names {
            let owners = shards.iter().filter(|s| s.contains(name)).count();
            assert_eq!(owners, 1, "{name} must belong to exactly one shard");
        }
        for shard in &shards {
            let share = names.iter().filter(|n| shard.contains(n)).count();
            assert!(
                (800..1200).contains(&share),
                "shard {shard:?} got {share} of 3000"
            );
        }
        // Stable across builds: FNV-1a's published test vectors.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn phases_spread_over_the_interval() {
        let interval = Duration::from_secs(10);
        let mut buckets = [0usize; 10];
        for i in 0..10_000 {
            let p = phase(&format!("site-{i}"), interval);
            assert!(p < interval);
            buckets[(p.as_secs()) as usize] += 1;
        }
        for (second, count) in buckets.iter().enumerate() {
            assert!(
                (800..1200).contains(count),
                "second {second} has {count} first runs"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_are_drift_free_and_phase_aligned() {
        let interval = Duration::from_secs(10);
        let job = recorder(Duration::from_millis(1234));
        let clock = pinned_clock();
        let mut scheduler = scheduler(&job, Limits::default(), clock);
        scheduler.apply(vec![site("a", interval), site("b", interval)]);
        tokio::time::sleep(Duration::from_secs(95)).await;
        let stats = scheduler.stats();
        scheduler.shutdown().await;

        assert_eq!(stats.missed.load(Ordering::Relaxed), 0);
        for name in ["a", "b"] {
            let ticks: Vec<_> = job
                .ticks
                .lock()
                .unwrap()
                .iter()
                .filter(|t| t.0 == name)
                .cloned()
                .collect();
            assert!(
                (9..=10).contains(&ticks.len()),
                "{name}: {} ticks",
                ticks.len()
            );
            let phase = phase(name, interval);
            for (k, (_, at, scheduled_at)) in ticks.iter().enumerate() {
                // Exactly phase + k·interval after the (minute-aligned) start: no drift even
                // though every run takes 1.234 s.
                assert_eq!(
                    *at - clock.instant,
                    phase + interval * k as u32,
                    "{name} tick {k}"
                );
                let offset = (*scheduled_at - clock.wall).to_std().unwrap();
                assert_eq!(offset, phase + interval * k as u32);
            }
        }
    }

    /// A scheduler on `clock` whose wall clock is off by the returned offset (ms), 0 at first.
    fn stepped_scheduler(
        job: &Arc<Recorder>,
        clock: Clock,
    ) -> (Arc<std::sync::atomic::AtomicI64>, Scheduler<Recorder>) {
        let offset_ms = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let wall: WallSource = {
            let offset_ms = Arc::clone(&offset_ms);
            Arc::new(move || {
                clock.wall_at(Instant::now())
                    + chrono::Duration::milliseconds(offset_ms.load(Ordering::SeqCst))
            })
        };
        let scheduler = scheduler(job, Limits::default(), clock).with_wall(wall);
        (offset_ms, scheduler)
    }

    /// The wall clock steps forward 30.5 s, then back 20.25 s: every result carries the wall
    /// time its tick fired at, on the site's phase; the forward step's jumped-over ticks are
    /// missed; a loop started after a step (reload) is anchored on the stepped clock at once.
    #[tokio::test(start_paused = true)]
    async fn a_stepped_wall_clock_re_anchors_the_schedule() {
        let interval = Duration::from_secs(1);
        let job = recorder(Duration::from_millis(100));
        let clock = pinned_clock();
        let (offset_ms, mut scheduler) = stepped_scheduler(&job, clock);
        scheduler.apply(vec![site("a", interval)]);
        // (instant, offset from then on)
        let mut offsets = vec![(clock.instant, 0_i64)];
        tokio::time::sleep(Duration::from_millis(10_300)).await;
        offset_ms.store(30_500, Ordering::SeqCst);
        offsets.push((Instant::now(), 30_500));
        tokio::time::sleep(Duration::from_secs(10)).await;
        offset_ms.store(30_500 - 20_250, Ordering::SeqCst);
        offsets.push((Instant::now(), 10_250));
        tokio::time::sleep(Duration::from_secs(5)).await;
        scheduler.apply(vec![site("a", interval), site("b", interval)]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let stats = scheduler.stats();
        scheduler.shutdown().await;

        let ticks = job.ticks.lock().unwrap().clone();
        let offset_at = |at: Instant| offsets.iter().rev().find(|(t, _)| *t <= at).unwrap().1;
        for (name, at, scheduled_at) in &ticks {
            let wall = clock.wall_at(*at) + chrono::Duration::milliseconds(offset_at(*at));
            assert_eq!(*scheduled_at, wall, "{name}: fired at wall {wall}");
            let phase_ms = phase(name, interval).as_millis() as i64;
            assert_eq!(
                (scheduled_at.timestamp_millis() - phase_ms).rem_euclid(1000),
                0,
                "{name}: {scheduled_at} is off the site's phase"
            );
        }
        let runs = ticks.len() as u64;
        let (all, missed) = (
            stats.ticks.load(Ordering::Relaxed),
            stats.missed.load(Ordering::Relaxed),
        );
        assert_eq!(runs + missed, all);
        // Forward 30.5 s: the 30 or 31 wall-clock ticks in between, never run, are missed.
        assert!((30..=31).contains(&missed), "missed {missed}");
        // Site a saw both steps; b started after them, on the stepped clock.
        assert_eq!(stats.clock_steps.load(Ordering::Relaxed), 2);
        let b = ticks.iter().filter(|t| t.0 == "b").count();
        assert!((4..=5).contains(&b), "b ran {b} times");
    }

    /// One warning a minute for clock steps: a second step within the minute is counted but not
    /// logged, one after it is.
    #[tokio::test(start_paused = true)]
    async fn clock_steps_are_logged_at_most_once_a_minute() {
        let job = recorder(Duration::from_millis(10));
        let (offset_ms, mut scheduler) = stepped_scheduler(&job, pinned_clock());
        scheduler.apply(vec![site("a", Duration::from_secs(1))]);
        let stats = scheduler.stats();
        let logged = || stats.step_logged.lock().expect("a step was logged");
        let mut offset = 0;
        let mut step = || {
            offset += 5_000;
            offset_ms.store(offset, Ordering::SeqCst);
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        step();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let first = logged();
        step();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(logged(), first, "a second line within the minute");
        tokio::time::sleep(Duration::from_secs(40)).await;
        step();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(logged() >= first + MISSED_LOG_EVERY);
        assert_eq!(stats.clock_steps.load(Ordering::Relaxed), 3);
        scheduler.shutdown().await;
    }

    /// A loop that wakes long after its tick (a suspended process, a starved runtime) counts
    /// the ticks already past as missed and goes on on its phase, instead of firing them back
    /// to back.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_loop_skips_the_ticks_already_past() {
        let interval = Duration::from_secs(10);
        let job = recorder(Duration::from_millis(10));
        let clock = pinned_clock();
        let mut scheduler = scheduler(&job, Limits::default(), clock);
        scheduler.apply(vec![site("a", interval)]);
        tokio::time::sleep(Duration::from_secs(25)).await;
        let before = job.ticks.lock().unwrap().len();
        // Time jumps 45 s without the loop running.
        tokio::time::advance(Duration::from_secs(45)).await;
        tokio::time::sleep(Duration::from_secs(20)).await;
        let stats = scheduler.stats();
        scheduler.shutdown().await;
        let ticks = job.ticks.lock().unwrap().clone();
        let missed = stats.missed.load(Ordering::Relaxed);
        assert_eq!(
            ticks.len() as u64 + missed,
            stats.ticks.load(Ordering::Relaxed)
        );
        assert!((3..=4).contains(&missed), "missed {missed}");
        // After the stall: one late run, then back on the phase, 10 s apart.
        let after: Vec<Instant> = ticks[before + 1..].iter().map(|t| t.1).collect();
        assert!(after.len() >= 2, "{after:?}");
        for pair in after.windows(2) {
            assert_eq!(pair[1] - pair[0], interval, "{after:?}");
        }
        for (_, at, scheduled_at) in &ticks[before + 1..] {
            assert_eq!(*scheduled_at, clock.wall_at(*at));
        }
    }

    /// A clock set years ahead counts a day of missed ticks, not billions.
    #[tokio::test(start_paused = true)]
    async fn a_huge_forward_step_counts_at_most_a_day_of_missed_ticks() {
        let job = recorder(Duration::from_millis(10));
        let (offset_ms, mut scheduler) = stepped_scheduler(&job, pinned_clock());
        scheduler.apply(vec![site("a", Duration::from_secs(1))]);
        tokio::time::sleep(Duration::from_secs(3)).await;
        offset_ms.store(20 * 365 * 86_400_000, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let stats = scheduler.stats();
        scheduler.shutdown().await;
        assert_eq!(stats.missed.load(Ordering::Relaxed), 86_400);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_check_makes_ticks_missed_not_piled_up() {
        let interval = Duration::from_secs(1);
        // Each run takes 2.5 s: of every three ticks, one runs and two are missed.
        let job = recorder(Duration::from_millis(2500));
        let mut scheduler = scheduler(&job, Limits::default(), pinned_clock());
        scheduler.apply(vec![site("slow", interval)]);
        tokio::time::sleep(Duration::from_millis(30_500)).await;
        let stats = scheduler.stats();
        scheduler.shutdown().await;
        let runs = job.ticks.lock().unwrap().len() as u64;
        let ticks = stats.ticks.load(Ordering::Relaxed);
        let missed = stats.missed.load(Ordering::Relaxed);
        assert_eq!(runs + missed, ticks);
        assert!((10..=11).contains(&runs), "runs {runs}");
        assert!((19..=21).contains(&missed), "missed {missed}");
        // Runs never overlap.
        let times: Vec<Instant> = job.ticks.lock().unwrap().iter().map(|t| t.1).collect();
        assert!(times
            .windows(2)
            .all(|w| w[1] - w[0] >= Duration::from_millis(2500)));
    }

    #[test]
    fn missed_ticks_are_logged_once_a_minute_with_their_count() {
        let start = Instant::now();
        let mut log = MissedLog::default();
        assert_eq!(log.note(start, 1), Some(1), "the first one at once");
        let second = Duration::from_secs(1);
        for k in 1..60 {
            assert_eq!(log.note(start + second * k, 1), None, "tick {k}");
        }
        assert_eq!(log.note(start + MISSED_LOG_EVERY, 1), Some(60));
        assert_eq!(log.note(start + MISSED_LOG_EVERY + second, 1), None);
        // Quiet for a long time: the next one is logged at once, counting only itself
        // and the one left over.
        assert_eq!(log.note(start + MISSED_LOG_EVERY * 10, 1), Some(2));
        // Many at once (a clock step) count as many.
        assert_eq!(log.note(start + MISSED_LOG_EVERY * 20, 30), Some(30));
    }

    #[test]
    fn past_the_minute_budget_lines_are_summed_into_one() {
        let start = Instant::now();
        let mut lines = MissedLines::default();
        let written = |write| Admission {
            write,
            first_held: false,
            previous: None,
        };
        for k in 0..MISSED_LINES_PER_MINUTE {
            assert_eq!(
                lines.admit(start + Duration::from_millis(k), 2),
                written(true)
            );
        }
        let late = start + Duration::from_secs(30);
        let first = lines.admit(late, 5);
        assert!(!first.write && first.first_held && first.previous.is_none());
        assert_eq!(lines.admit(late, 7), written(false));
        assert_eq!(lines.admit(late, 1), written(false));
        // The next minute: its first line is written, with the previous minute's sum.
        let next = lines.admit(start + MISSED_LOG_EVERY, 3);
        assert_eq!(
            next,
            Admission {
                write: true,
                first_held: false,
                previous: Some(Held {
                    sites: 3,
                    ticks: 13
                }),
            }
        );
        // A minute that held nothing reports nothing.
        let quiet = lines.admit(start + MISSED_LOG_EVERY * 3, 1);
        assert_eq!(quiet, written(true));
    }

    #[tokio::test(start_paused = true)]
    async fn reload_keeps_unchanged_sites_and_applies_changes() {
        let interval = Duration::from_secs(10);
        let job = recorder(Duration::from_millis(10));
        let mut scheduler = scheduler(&job, Limits::default(), pinned_clock());
        assert!(scheduler.is_empty());
        assert_eq!(
            scheduler.apply(vec![
                site("keep", interval),
                site("drop", interval),
                site("change", interval)
            ]),
            (3, 0, 0)
        );
        tokio::time::sleep(Duration::from_secs(25)).await;
        let mut changed = site("change", interval);
        changed.url = "http://127.0.0.1:10/".parse().unwrap();
        // "keep" moved to another line only: still unchanged.
        let mut moved = site("keep", interval);
        moved.location.line = 42;
        assert_eq!(
            scheduler.apply(vec![moved, changed, site("new", interval)]),
            (1, 1, 1)
        );
        assert!(!scheduler.is_empty());
        assert!(scheduler.contains("new") && scheduler.contains("keep"));
        assert!(!scheduler.contains("drop"));
        tokio::time::sleep(Duration::from_secs(30)).await;
        scheduler.shutdown().await;

        let ticks = job.ticks.lock().unwrap();
        let count = |name: &str| ticks.iter().filter(|t| t.0 == name).count();
        assert!((5..=6).contains(&count("keep")), "keep: {}", count("keep"));
        assert!((2..=3).contains(&count("drop")), "drop: {}", count("drop"));
        assert!((3..=4).contains(&count("new")), "new: {}", count("new"));
        // "keep" kept its phase across the reload.
        let phase = phase("keep", interval);
        let clock_start = ticks
            .iter()
            .filter(|t| t.0 == "keep")
            .map(|t| t.1)
            .next()
            .unwrap()
            - phase;
        for (k, t) in ticks.iter().filter(|t| t.0 == "keep").enumerate() {
            assert_eq!(t.1 - clock_start, phase + interval * k as u32);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_duplicate_name_replaces_an_earlier_one() {
        let job = recorder(Duration::from_millis(10));
        let mut scheduler = scheduler(&job, Limits::default(), pinned_clock());
        let mut second = site("dup", Duration::from_secs(10));
        second.url = "http://127.0.0.1:10/".parse().unwrap();
        let sites = vec![
            site("dup", Duration::from_secs(10)),
            second,
            site("other", Duration::from_secs(10)),
        ];
        assert_eq!(scheduler.apply(sites), (2, 0, 0));
        assert_eq!(scheduler.len(), 2);
        assert_eq!(scheduler.sites["dup"].site.url.port(), Some(10));
        scheduler.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_changed_site_does_not_run_beside_its_old_check() {
        let interval = Duration::from_secs(10);
        // Each check takes 25 s: the replacement loop must wait for the old one.
        let job = recorder(Duration::from_secs(25));
        let mut scheduler = scheduler(&job, Limits::default(), pinned_clock());
        scheduler.apply(vec![site("busy", interval)]);
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert_eq!(
            job.ticks.lock().unwrap().len(),
            1,
            "the first check is running"
        );
        let mut changed = site("busy", interval);
        changed.url = "http://127.0.0.1:10/".parse().unwrap();
        assert_eq!(scheduler.apply(vec![changed]), (0, 1, 0));
        tokio::time::sleep(Duration::from_secs(60)).await;
        // 72 s at 10 s: at most eight ticks so far, each counted once, by one of the two loops
        // (the new loop's check running now counts the ones it spans when it ends).
        let stats = scheduler.stats();
        let (ticks, missed) = (
            stats.ticks.load(Ordering::Relaxed),
            stats.missed.load(Ordering::Relaxed),
        );
        let runs = job.ticks.lock().unwrap().len() as u64;
        assert_eq!(runs + missed, ticks);
        assert!((5..=8).contains(&ticks), "{ticks} ticks ({runs} run)");
        scheduler.shutdown().await;
        let starts: Vec<Instant> = job.ticks.lock().unwrap().iter().map(|t| t.1).collect();
        assert!(starts.len() >= 2, "{} runs", starts.len());
        assert!(
            starts
                .windows(2)
                .all(|w| w[1] - w[0] >= Duration::from_secs(25)),
            "checks of one site overlapped: {starts:?}"
        );
    }

    #[test]
    fn a_wall_clock_off_by_up_to_a_step_keeps_the_pairing() {
        let clock = pinned_clock();
        let step = chrono::Duration::from_std(CLOCK_STEP).unwrap();
        for wall in [clock.wall + step, clock.wall - step] {
            let (kept, stepped) = clock.checked(wall);
            assert_eq!((kept.wall, stepped), (clock.wall, None));
        }
        let beyond = step + chrono::Duration::microseconds(1);
        let (moved, stepped) = clock.checked(clock.wall - beyond);
        assert_eq!((moved.wall, stepped), (clock.wall - beyond, Some(-beyond)));
    }

    /// Shutdown stops the ticks and returns only once the check in flight has finished.
    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_the_check_in_flight() {
        let job = recorder(Duration::from_secs(4));
        let mut scheduler = scheduler(&job, Limits::default(), pinned_clock());
        scheduler.apply(vec![site("a", Duration::from_secs(10))]);
        // The first tick is within the interval; its check runs 4 s.
        let started = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(tick) = job.ticks.lock().unwrap().first() {
                break tick.1;
            }
        };
        scheduler.shutdown().await;
        assert!(Instant::now() >= started + Duration::from_secs(4));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(job.ticks.lock().unwrap().len(), 1);
    }

    /// A host's semaphore goes once no scheduled site probes that host.
    #[tokio::test(start_paused = true)]
    async fn a_host_left_by_every_site_lets_go_of_its_semaphore() {
        let job = recorder(Duration::from_millis(10));
        let mut scheduler = scheduler(&job, Limits::default(), pinned_clock());
        let mut other = site("b", Duration::from_secs(10));
        other.url = "http://127.0.0.1:10/".parse().unwrap();
        scheduler.apply(vec![site("a", Duration::from_secs(10)), other.clone()]);
        let hosts = |s: &Scheduler<Recorder>| {
            let mut keys: Vec<String> = s.per_host.lock().keys().cloned().collect();
            keys.sort();
            keys
        };
        assert_eq!(hosts(&scheduler), ["127.0.0.1:10", "127.0.0.1:9"]);
        scheduler.apply(vec![other.clone()]);
        // The stopped loop lets go as it exits; the next apply drops what nobody holds.
        tokio::time::sleep(Duration::from_secs(1)).await;
        scheduler.apply(vec![other]);
        assert_eq!(hosts(&scheduler), ["127.0.0.1:10"]);
        scheduler.shutdown().await;
    }

    #[test]
    fn the_per_host_cap_counts_by_host_and_port() {
        let key = |url: &str| host_key(&url::Url::parse(url).unwrap());
        assert_eq!(key("https://a.example/x?y"), "a.example:443");
        assert_eq!(key("http://a.example/"), "a.example:80");
        assert_eq!(key("http://a.example:8080/"), "a.example:8080");
        assert_eq!(key("http://[::1]:81/"), "[::1]:81");
    }

    #[tokio::test(start_paused = true)]
    async fn per_host_cap_limits_concurrency() {
        struct Gauge {
            now: AtomicU64,
            peak: AtomicU64,
        }
        impl Job for Gauge {
            type SiteState = ();
            fn site_state(&self, _site: &Site) {}
            async fn run(self: Arc<Self>, _site: Arc<Site>, _state: (), _tick: Tick) {
                let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
                self.peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(5)).await;
                self.now.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let job = Arc::new(Gauge {
            now: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        });
        let limits = Limits {
            max_concurrency: 100,
            max_per_host: 3,
        };
        let mut scheduler = scheduler(&job, limits, pinned_clock());
        scheduler.apply(
            (0..20)
                .map(|i| site(&format!("s{i}"), Duration::from_secs(10)))
                .collect(),
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
        scheduler.shutdown().await;
        assert_eq!(job.peak.load(Ordering::SeqCst), 3);
    }

    /// Offered fifteen times what the permits allow, every site is checked in turn (none
    /// starves, none is checked twice while another waits), each check is for a tick at most an
    /// interval old, the permits never idle, and every tick is either run or counted missed.
    #[tokio::test(start_paused = true)]
    async fn past_capacity_sites_take_turns_on_fresh_ticks() {
        let interval = Duration::from_secs(1);
        let job = recorder(Duration::from_millis(1000));
        let clock = pinned_clock();
        let limits = Limits {
            max_concurrency: 2,
            max_per_host: 64,
        };
        let mut scheduler = scheduler(&job, limits, clock);
        let names: Vec<String> = (0..30).map(|i| format!("s{i:02}")).collect();
        scheduler.apply(names.iter().map(|n| site(n, interval)).collect());
        tokio::time::sleep(Duration::from_millis(150_500)).await;
        let stats = scheduler.stats();
        scheduler.shutdown().await;
        let ticks = job.ticks.lock().unwrap().clone();
        // Two permits, one-second checks, 150 s: 300 checks.
        assert!((298..=302).contains(&ticks.len()), "{} checks", ticks.len());
        for name in &names {
            let runs: Vec<&(String, Instant, DateTime<Utc>)> =
                ticks.iter().filter(|t| &t.0 == name).collect();
            assert!(
                (9..=11).contains(&runs.len()),
                "{name}: {} checks",
                runs.len()
            );
        }
        for (name, at, scheduled_at) in &ticks {
            let lag = clock.wall_at(*at) - *scheduled_at;
            assert!(
                lag >= chrono::Duration::zero() && lag < chrono::Duration::seconds(1),
                "{name} checked {lag} after its tick"
            );
        }
        assert_eq!(
            ticks.len() as u64 + stats.missed.load(Ordering::Relaxed),
            stats.ticks.load(Ordering::Relaxed)
        );
    }

    /// A site removed while its check waits for a permit is never checked.
    #[tokio::test(start_paused = true)]
    async fn a_site_removed_while_waiting_for_a_permit_is_not_checked() {
        let job = recorder(Duration::from_secs(30));
        let limits = Limits {
            max_concurrency: 1,
            max_per_host: 64,
        };
        let mut scheduler = scheduler(&job, limits, pinned_clock());
        scheduler.apply(vec![
            site("a", Duration::from_secs(10)),
            site("b", Duration::from_secs(10)),
        ]);
        tokio::time::sleep(Duration::from_secs(11)).await;
        let first = job.ticks.lock().unwrap()[0].0.clone();
        let waiting = if first == "a" { "b" } else { "a" };
        assert_eq!(
            job.ticks.lock().unwrap().len(),
            1,
            "one permit: one check at a time"
        );
        scheduler.apply(vec![site(&first, Duration::from_secs(10))]);
        tokio::time::sleep(Duration::from_secs(60)).await;
        scheduler.shutdown().await;
        let ticks = job.ticks.lock().unwrap().clone();
        assert!(
            ticks.iter().all(|t| t.0 != waiting),
            "{waiting} was checked: {ticks:?}"
        );
        assert!(ticks.len() >= 2, "{ticks:?}");
    }

    /// Past capacity, a check's future exists only while it holds its permits: however many
    /// sites wait, the checks alive at once never outnumber the permits.
    #[tokio::test(start_paused = true)]
    async fn only_permitted_checks_exist_past_capacity() {
        struct Alive {
            now: Arc<AtomicU64>,
            peak: AtomicU64,
        }
        struct Live(Arc<AtomicU64>);
        impl Drop for Live {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        impl Job for Alive {
            type SiteState = ();
            fn site_state(&self, _site: &Site) {}
            fn run(
                self: Arc<Self>,
                _site: Arc<Site>,
                _state: (),
                _tick: Tick,
            ) -> impl Future<Output = ()> + Send + 'static {
                let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
                self.peak.fetch_max(n, Ordering::SeqCst);
                let live = Live(Arc::clone(&self.now));
                async move {
                    let _live = live;
                    tokio::time::sleep(Duration::from_millis(700)).await;
                }
            }
        }
        let job = Arc::new(Alive {
            now: Arc::new(AtomicU64::new(0)),
            peak: AtomicU64::new(0),
        });
        let limits = Limits {
            max_concurrency: 3,
            max_per_host: 64,
        };
        let mut scheduler = scheduler(&job, limits, pinned_clock());
        scheduler.apply(
            (0..200)
                .map(|i| site(&format!("s{i}"), Duration::from_secs(1)))
                .collect(),
        );
        tokio::time::sleep(Duration::from_secs(20)).await;
        let stats = scheduler.stats();
        scheduler.shutdown().await;
        assert_eq!(job.peak.load(Ordering::SeqCst), 3);
        assert_eq!(job.now.load(Ordering::SeqCst), 0);
        // 200 ticks a second for 20 s, about 4 checks a second: the rest are counted missed,
        // those of the sites still waiting at shutdown included.
        let (ticks, missed) = (
            stats.ticks.load(Ordering::Relaxed),
            stats.missed.load(Ordering::Relaxed),
        );
        assert!((3_990..=4_010).contains(&ticks), "{ticks} ticks");
        assert!((3_890..=3_930).contains(&missed), "{missed} missed");
    }

    /// A check that panics ends that check only: the site's schedule goes on.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_check_does_not_end_the_schedule() {
        struct Flaky(AtomicU64);
        impl Job for Flaky {
            type SiteState = ();
            fn site_state(&self, _site: &Site) {}
            async fn run(self: Arc<Self>, _site: Arc<Site>, _state: (), _tick: Tick) {
                if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("the first check fails");
                }
            }
        }
        let job = Arc::new(Flaky(AtomicU64::new(0)));
        let mut scheduler = scheduler(&job, Limits::default(), pinned_clock());
        scheduler.apply(vec![site("a", Duration::from_secs(1))]);
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        scheduler.shutdown().await;
        assert!((10..=11).contains(&job.0.load(Ordering::SeqCst)));
    }
}
