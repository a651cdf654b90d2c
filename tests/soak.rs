//! The fault soak: the monitor's real pipeline — two `produce` shards and two `consume` members
//! on the local stack, a few hundred loopback sites — while a driver injects faults at random:
//! kill -9 and restart of consumers and producers, a consumer frozen (SIGSTOP) and thawed, the
//! broker restarted, PostgreSQL restarted, sites that flap. At the end it checks, from Kafka and
//! PostgreSQL, that every result on the topic is stored exactly once and that every tick of every
//! site is stored, falls in a window where its producer was down, or was counted as missed; and
//! prints the ledger.
//!
//! `SITEWATCH_SOAK_MINUTES` (default 2) sets the length; `dev/soak --minutes N` runs it alone on
//! a release build. `SITEWATCH_SOAK_SEED` replays a run's choice of faults.

mod producer;
mod stack;
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use producer::Sitewatch;
use sitewatch::schedule::{phase, Shard};

const SITES: usize = 240;
const INTERVAL: Duration = Duration::from_secs(1);
/// Sites whose server the driver switches between healthy and failing.
const FLAPPING: usize = 20;
/// A producer's queue reaches Kafka within this of a check (healthy broker): a hard kill loses
/// the checks of this long before it. The driver never kills a producer while the broker is away.
const QUEUE_EXPOSURE: Duration = Duration::from_secs(2);

/// A small xorshift generator: the faults of a run are replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillConsumer,
    KillProducer,
    FreezeConsumer,
    RestartBroker,
    RestartPostgres,
    FlapSites,
}

const KINDS: [Fault; 6] = [
    Fault::KillConsumer,
    Fault::KillProducer,
    Fault::FreezeConsumer,
    Fault::RestartBroker,
    Fault::RestartPostgres,
    Fault::FlapSites,
];

/// The processes of the pipeline, and what the ledger needs to know of their lives.
struct Pipeline {
    dir: tempfile::TempDir,
    config: String,
    vars: Vec<(String, String)>,
    producers: Vec<Sitewatch>,
    consumers: Vec<Sitewatch>,
    /// Per shard: (from, to) wall-clock windows when its producer was not probing.
    down: Vec<Vec<(DateTime<Utc>, DateTime<Utc>)>>,
    /// Missed ticks read from each producer before it was killed or stopped.
    missed: u64,
    /// Every log, kept for a failure.
    logs: Vec<std::path::PathBuf>,
}

impl Pipeline {
    fn spawn_producer(&mut self, shard: usize) -> Sitewatch {
        let shard_arg = format!("{shard}/2");
        let metrics = format!("127.0.0.1:{}", metrics_port(shard));
        let p = Sitewatch::spawn(
            &[
                "produce",
                "--config",
                &self.config,
                "--shard",
                &shard_arg,
                "--metrics-addr",
                &metrics,
                "--flush-timeout-secs",
                "120",
            ],
            &self.vars,
            self.dir.path(),
        );
        self.logs.push(p.log.clone());
        p
    }

    fn spawn_consumer(&mut self) -> Sitewatch {
        let c = Sitewatch::spawn(&["consume"], &self.vars, self.dir.path());
        self.logs.push(c.log.clone());
        c
    }

    /// Waits until a restarted producer schedules again (its log says so); returns when.
    fn wait_scheduling(p: &Sitewatch) -> DateTime<Utc> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !p.log_text().contains("scheduling") {
            assert!(
                Instant::now() < deadline,
                "producer never started: {}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Utc::now()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for path in &self.logs {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {}\n", path.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

fn metrics_port(shard: usize) -> u16 {
    // Fixed per run would collide with a parallel test; the soak holds the stack exclusively
    // and picks free ports once.
    static PORTS: std::sync::OnceLock<[u16; 2]> = std::sync::OnceLock::new();
    PORTS.get_or_init(|| {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        [
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port(),
        ]
    })[shard]
}

/// The producer's `sitewatch_missed_ticks_total`, summed over its sites (0 when unreachable).
fn scrape_missed(shard: usize) -> u64 {
    let url = format!("http://127.0.0.1:{}/metrics", metrics_port(shard));
    let Ok(out) = std::process::Command::new("curl")
        .args(["-s", "--max-time", "5", &url])
        .output()
    else {
        return 0;
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("sitewatch_missed_ticks_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn soak_loses_and_duplicates_nothing_under_faults() {
    let _stack = stack::StackLock::exclusive();
    let minutes: f64 = std::env::var("SITEWATCH_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(2.0);
    let seed: u64 = std::env::var("SITEWATCH_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_micros() as u64 | 1);
    println!("soak: {minutes} min, seed {seed}");
    let mut rng = Rng(seed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // The sites: most always healthy, some flapping (503 while down).
    let healthy = Arc::new(AtomicBool::new(true));
    let server = runtime.block_on({
        let healthy = Arc::clone(&healthy);
        support::serve("127.0.0.1:0", move |request, mut conn| {
            let up = !request.target.starts_with("/flap/") || healthy.load(Ordering::SeqCst);
            async move {
                let status = if up { 200 } else { 503 };
                conn.respond(status, &[("Content-Type", "text/plain")], b"soak")
                    .await;
            }
        })
    });
    let names: Vec<String> = (0..SITES)
        .map(|i| match i < FLAPPING {
            true => format!("flap-{i}"),
            false => format!("soak-{i}"),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    let mut lua = String::new();
    for name in &names {
        let path = if name.starts_with("flap") {
            "flap"
        } else {
            "ok"
        };
        lua.push_str(&format!(
            "site {{ name = \"{name}\", url = \"{}\", interval = \"1s\", timeout = \"800ms\" }}\n",
            server.url(&format!("/{path}/{name}"))
        ));
    }
    std::fs::write(&config, lua).unwrap();
    let topic = stack::unique_name("soak");
    let database = runtime.block_on(stack::fresh_database());
    let mut vars = producer::kafka_env(false, &topic);
    vars.push(("SITEWATCH_DATABASE_URL".into(), database.clone()));
    vars.push(("SITEWATCH_PG_CA".into(), stack::get("SITEWATCH_PG_CA")));
    vars.push(("SITEWATCH_KAFKA_GROUP".into(), stack::unique_name("soak")));
    let mut pipeline = Pipeline {
        config: config.to_str().unwrap().to_owned(),
        dir,
        vars,
        producers: Vec::new(),
        consumers: Vec::new(),
        down: vec![Vec::new(), Vec::new()],
        missed: 0,
        logs: Vec::new(),
    };
    // Consumers first (one migrates the fresh database), then the two shards.
    for _ in 0..2 {
        let c = pipeline.spawn_consumer();
        pipeline.consumers.push(c);
        std::thread::sleep(Duration::from_secs(2));
    }
    let started = Utc::now();
    for shard in 0..2 {
        let p = pipeline.spawn_producer(shard);
        let up = Pipeline::wait_scheduling(&p);
        // Before it scheduled, a shard was "down".
        pipeline.down[shard].push((started - chrono::Duration::seconds(5), up));
        pipeline.producers.push(p);
    }

    // The faults: each kind once first (so a short run sees them all), then at random.
    let deadline = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let mut faults: BTreeMap<Fault, u32> = BTreeMap::new();
    let mut order: Vec<Fault> = KINDS.to_vec();
    order.reverse();
    std::thread::sleep(Duration::from_secs(5));
    while Instant::now() < deadline {
        let fault = order
            .pop()
            .unwrap_or_else(|| KINDS[rng.below(KINDS.len() as u64) as usize]);
        *faults.entry(fault).or_default() += 1;
        let which = rng.below(2) as usize;
        println!("soak: {:?} #{which}", fault);
        match fault {
            Fault::KillConsumer => {
                pipeline.consumers[which].signal("KILL");
                std::thread::sleep(rng.millis(500, 3000));
                let c = pipeline.spawn_consumer();
                pipeline.consumers[which] = c;
            }
            Fault::KillProducer => {
                pipeline.missed += scrape_missed(which);
                let killed = Utc::now();
                pipeline.producers[which].signal("KILL");
                std::thread::sleep(rng.millis(500, 3000));
                let p = pipeline.spawn_producer(which);
                let up = Pipeline::wait_scheduling(&p);
                let exposure = chrono::Duration::from_std(QUEUE_EXPOSURE).unwrap();
                pipeline.down[which].push((killed - exposure, up));
                pipeline.producers[which] = p;
            }
            Fault::FreezeConsumer => {
                pipeline.consumers[which].signal("STOP");
                std::thread::sleep(rng.millis(3000, 20_000));
                pipeline.consumers[which].signal("CONT");
            }
            Fault::RestartBroker => {
                stack::command("kafka-stop");
                std::thread::sleep(rng.millis(1000, 5000));
                stack::command("kafka-start");
                // The producers' queues reach the broker again before anything is killed.
                std::thread::sleep(Duration::from_secs(10));
            }
            Fault::RestartPostgres => {
                stack::command("pg-stop");
                std::thread::sleep(rng.millis(1000, 5000));
                stack::command("pg-start");
            }
            Fault::FlapSites => {
                for _ in 0..(2 + rng.below(4)) {
                    healthy.store(!healthy.load(Ordering::SeqCst), Ordering::SeqCst);
                    std::thread::sleep(rng.millis(500, 3000));
                }
                healthy.store(true, Ordering::SeqCst);
            }
        }
        std::thread::sleep(rng.millis(2000, 6000));
    }

    // Stop probing (orderly: every finished check reaches the topic), then let the consumers
    // store the rest.
    let mut stopped = Utc::now();
    for (shard, p) in pipeline.producers.iter_mut().enumerate() {
        pipeline.missed += scrape_missed(shard);
        p.terminate(Duration::from_secs(180));
        stopped = stopped.min(Utc::now());
    }
    let logs = pipeline.logs();
    let published = runtime.block_on(producer::read_results(
        producer::kafka_client(false),
        &topic,
        Duration::from_secs(10),
        Duration::from_secs(600),
    ));
    let on_topic: HashSet<uuid::Uuid> = published.iter().map(|p| p.result.id).collect();
    let client = runtime.block_on(stack::client(&database));
    let store_deadline = Instant::now() + Duration::from_secs(300);
    let (stored_rows, stored) = loop {
        let rows = runtime
            .block_on(client.query("SELECT id FROM check_results", &[]))
            .unwrap_or_default();
        let ids: HashSet<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
        if on_topic.is_subset(&ids) || Instant::now() > store_deadline {
            break (rows.len(), ids);
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    for c in &mut pipeline.consumers {
        c.terminate(Duration::from_secs(60));
    }

    // The ledger.
    let duplicates = stored_rows - stored.len();
    let lost_results = on_topic.difference(&stored).count();
    let strangers = stored.difference(&on_topic).count();
    let mut by_site: HashMap<&str, HashSet<i64>> = HashMap::new();
    for p in &published {
        by_site
            .entry(p.result.site.as_str())
            .or_default()
            .insert(p.result.scheduled_at.timestamp_millis());
    }
    // Every tick of every site from a few seconds after the start to the orderly stop.
    let (from, to) = (
        started.timestamp_millis() + 5_000,
        stopped.timestamp_millis() - 2_000,
    );
    let interval_ms = INTERVAL.as_millis() as i64;
    let (mut ticks, mut in_down, mut unaccounted) = (0u64, 0u64, 0u64);
    let mut examples = Vec::new();
    for name in &names {
        let shard = (0..2u64)
            .find(|&index| Shard { index, count: 2 }.contains(name))
            .unwrap();
        let phase_ms = phase(name, INTERVAL).as_millis() as i64;
        let first = from + (phase_ms - from).rem_euclid(interval_ms);
        let seen = by_site.get(name.as_str());
        let mut t = first;
        while t < to {
            ticks += 1;
            let at = DateTime::<Utc>::from_timestamp_millis(t).unwrap();
            if pipeline.down[shard as usize]
                .iter()
                .any(|(a, b)| *a <= at && at <= *b)
            {
                in_down += 1;
            } else if !seen.is_some_and(|s| s.contains(&t)) {
                unaccounted += 1;
                if examples.len() < 10 {
                    examples.push(format!("{name} {at}"));
                }
            }
            t += interval_ms;
        }
    }
    let lost_ticks = unaccounted.saturating_sub(pipeline.missed);
    println!(
        "soak ledger: results {} (messages {}), stored {}, duplicates {duplicates}, \
         lost results {lost_results}, ticks {ticks} (producer down {in_down}, missed {}, \
         unaccounted {unaccounted}, lost {lost_ticks}); faults {faults:?}; seed {seed}",
        on_topic.len(),
        published.len(),
        stored.len(),
        pipeline.missed,
    );
    assert_eq!(strangers, 0, "stored rows that are not on the topic");
    assert!(
        lost_results == 0 && duplicates == 0 && lost_ticks == 0,
        "lost results {lost_results}, duplicates {duplicates}, lost ticks {lost_ticks} \
         (e.g. {examples:?}); seed {seed}\n{logs}"
    );
    drop(client);
    runtime.block_on(stack::drop_database(&database));
}
