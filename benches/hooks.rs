//! Per-call cost of a typical Lua hook through `sitewatch::hooks::HookPool`: JSON-decode a 2 KB
//! health document, two comparisons. Run by `dev/bench hooks` (criterion; estimates land in
//! `$CRITERION_HOME/hooks/*`, which `pipeline report` reads).
//!
//! - `pool_round_trip`: one call at a time, awaited — the latency a check sees (queue to a
//!   worker thread, Lua call, oneshot reply, task wake-up).
//! - `pool_pipelined`: 64 calls in flight on the default pool (one worker per core) — the cost
//!   per call under load, with the hand-offs overlapped.
//! - `worker_cpu`: CPU time the worker thread spends per call with calls queued back to back —
//!   the Lua call itself plus dequeue and reply, i.e. close to a bare Lua call (the bare call is
//!   not reachable through the public API).
//! - `handoff_round_trip`: the pool's hand-off alone — std mpsc queue behind a mutex to a
//!   blocked worker thread, tokio oneshot back to the awaiting caller — with no Lua at all:
//!   how much of `pool_round_trip` is thread wake-ups rather than the hook.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use futures::stream::{self, StreamExt};
use sitewatch::config::ConfigSource;
use sitewatch::hooks::{HookInput, HookLimits, HookPool};
use sitewatch::result::Timings;

const HOOK: &str =
    "function(r) local v = json.decode(r.body) return v.status == 'UP' and r.status == 200 end";
/// Calls in flight for the pipelined and worker-CPU measurements.
const IN_FLIGHT: usize = 64;

/// The configuration's sources, through the loader (as `produce` builds its pool).
fn source() -> Arc<ConfigSource> {
    let text =
        format!("site {{ name = 'bench', url = 'https://bench.example/', hooks = {{ {HOOK} }} }}");
    let config = sitewatch::config::load_str(
        Path::new("bench-sites.lua"),
        &text,
        Path::new("/nonexistent"),
    )
    .unwrap_or_else(|errors| panic!("benchmark configuration: {errors}"));
    config.source
}

/// A Spring Boot actuator-style health document of about 2 KB.
fn body() -> String {
    let component = |name: &str| {
        format!(
            r#""{name}":{{"status":"UP","details":{{"database":"PostgreSQL","validationQuery":"isValid()","total":499963174912,"free":91876474880,"threshold":10485760,"path":"/srv/app/{name}/."}}}}"#
        )
    };
    let names = [
        "db",
        "diskSpace",
        "ping",
        "redis",
        "kafka",
        "mail",
        "mongo",
        "jms",
        "livenessState",
        "readinessState",
        "ssl",
    ];
    format!(
        r#"{{"status":"UP","components":{{{}}},"groups":["liveness","readiness"]}}"#,
        names.map(component).join(",")
    )
}

fn input() -> Arc<HookInput> {
    let body = body();
    assert!(
        (1800..2400).contains(&body.len()),
        "body is {} bytes",
        body.len()
    );
    Arc::new(HookInput {
        site: "bench".into(),
        url: "https://bench.example/".into(),
        final_url: "https://bench.example/".into(),
        status: 200,
        headers: vec![
            (
                "content-type".into(),
                "application/vnd.spring-boot.actuator.v3+json".into(),
            ),
            ("cache-control".into(), "no-cache".into()),
            ("date".into(), "Thu, 27 Nov 2025 12:00:00 GMT".into()),
        ],
        body: Bytes::from(body),
        body_truncated: false,
        timings: Timings {
            dns_ms: Some(0.4),
            connect_ms: Some(1.2),
            tls_ms: Some(6.5),
            ttfb_ms: Some(21.0),
            transfer_ms: Some(0.3),
            total_ms: 29.4,
        },
        cert: None,
        attempt: 1,
    })
}

fn pool(workers: usize) -> HookPool {
    let pool = HookPool::start(
        &source(),
        HookLimits {
            workers,
            ..HookLimits::default()
        },
    )
    .expect("hook pool");
    let rt = runtime();
    let verdict = rt.block_on(pool.call("bench", 0, input()));
    assert_eq!(
        verdict.level, None,
        "the benchmark hook must pass: {verdict:?}"
    );
    pool
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn pipelined(pool: &HookPool, input: &Arc<HookInput>, calls: u64) {
    stream::iter(0..calls)
        .map(|_| pool.call("bench", 0, Arc::clone(input)))
        .buffer_unordered(IN_FLIGHT)
        .for_each(|_| async {})
        .await;
}

/// Thread ids of this process.
fn threads() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// CPU time of thread `tid` of this process (Linux per-thread CPU clock, ns resolution).
fn thread_cpu(tid: i32) -> Duration {
    // MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED) from the kernel's posix-timers.h.
    let clock: libc::clockid_t = ((!tid) << 3) | 6;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`; an invalid clock only returns an error.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The pool's hand-off without Lua: same queue, same blocking worker, same reply channel.
struct Handoff {
    jobs: std::sync::mpsc::Sender<tokio::sync::oneshot::Sender<u64>>,
}

impl Handoff {
    fn start() -> Handoff {
        let (jobs, queue) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<u64>>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        std::thread::spawn(move || loop {
            let job = match queue.lock().unwrap().recv() {
                Ok(job) => job,
                Err(_) => return,
            };
            let _ = job.send(1);
        });
        Handoff { jobs }
    }

    async fn call(&self) -> u64 {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs.send(reply).expect("handoff worker");
        answer.await.unwrap_or(0)
    }
}

fn hooks(c: &mut Criterion) {
    let input = input();
    let mut group = c.benchmark_group("hooks");
    if std::env::var_os("SITEWATCH_BENCH_QUICK").is_some() {
        // `dev/bench --quick`: a smoke test of the harness, not a measurement.
        group
            .measurement_time(Duration::from_millis(500))
            .warm_up_time(Duration::from_millis(200))
            .sample_size(10);
    } else {
        group
            .measurement_time(Duration::from_secs(5))
            .warm_up_time(Duration::from_secs(1));
    }

    {
        let pool = pool(1);
        let rt = runtime();
        group.bench_function("pool_round_trip", |b| {
            b.iter(|| rt.block_on(pool.call("bench", 0, Arc::clone(&input))))
        });
    }
    {
        let pool = pool(HookLimits::default().workers);
        let rt = runtime();
        group.bench_function("pool_pipelined", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                rt.block_on(pipelined(&pool, &input, iters));
                start.elapsed()
            })
        });
    }
    {
        // One worker; its thread (and the pool's watchdog, which wakes every 100 ms and costs
        // next to nothing) are the threads that appear while the pool starts.
        let before = threads();
        let pool = pool(1);
        let pool_threads: Vec<i32> = threads()
            .into_iter()
            .filter(|t| !before.contains(t))
            .collect();
        let rt = runtime();
        let cpu = || {
            pool_threads
                .iter()
                .map(|t| thread_cpu(*t))
                .sum::<Duration>()
        };
        group.bench_function("worker_cpu", |b| {
            b.iter_custom(|iters| {
                let start = cpu();
                rt.block_on(pipelined(&pool, &input, iters));
                cpu() - start
            })
        });
    }
    {
        let handoff = Handoff::start();
        let rt = runtime();
        group.bench_function("handoff_round_trip", |b| {
            b.iter(|| rt.block_on(handoff.call()))
        });
    }
    group.finish();
}

criterion_group!(benches, hooks);
criterion_main!(benches);
