//! Part `alert`: "failing check finished → webhook received" with the real `sitewatch run`
//! (producer + consumer + alerter in one process), 1,000 sites at 1 s (1,000 probes/s), a fresh
//! topic, consumer groups and database.
//!
//! The sites are paths of a loopback HTTP target whose health per site the bench switches; a
//! loopback webhook receiver records the wall-clock arrival (µs) and body of every request. Every
//! site has `alert = { notify = {"hook"}, after = 1, recover_after = 1 }`. After a warm-up, 200
//! sites are switched down (spread over a few seconds), the bench waits for their `open`
//! notices, switches them up and waits for the `resolve` notices.
//!
//! A notice's `started_at` is the failing check's scheduled time at second precision, so the
//! failing check's finish is taken from the target instead: the wall time at which it finished
//! sending each switched site's first failing (503) response. Latency of an `open` = arrival −
//! that; of a `resolve` = arrival − the first passing (200) response sent after switching up.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{self, Proc};
use crate::say;

pub struct Options {
    pub sites: usize,
    pub down: usize,
    pub warmup: Duration,
    /// Over how long the switches (down, then up) are spread.
    pub spread: Duration,
    /// How long to wait for every open (and every resolve) notice.
    pub wait: Duration,
}

impl Options {
    pub fn full() -> Self {
        Options {
            sites: 1_000,
            down: 200,
            warmup: Duration::from_secs(10),
            spread: Duration::from_secs(4),
            wait: Duration::from_secs(60),
        }
    }

    pub fn quick() -> Self {
        Options {
            sites: 300,
            down: 50,
            warmup: Duration::from_secs(5),
            spread: Duration::from_secs(2),
            wait: Duration::from_secs(30),
        }
    }
}

/// Per site: whether it answers 503, and when the first 503 / first 200 after a switch went out.
struct Site {
    down: AtomicBool,
    first_fail_sent: Mutex<Option<DateTime<Utc>>>,
    first_pass_sent: Mutex<Option<DateTime<Utc>>>,
    /// Set when switched up: the next 200 sent is recorded in `first_pass_sent`.
    watch_pass: AtomicBool,
}

struct Target {
    sites: Vec<Site>,
}

/// One webhook request as received.
struct Arrival {
    at: DateTime<Utc>,
    body: Value,
}

pub async fn run(options: &Options) -> Result<Value> {
    let (kafka, db) = common::load_stack_env()?;
    let tag = common::run_tag();
    let topic = format!("sitewatch.bench.alert.{tag}");
    let db_name = format!("sitewatch_bench_alert_{tag}");
    let outcome = measure(options, &db, &topic, &tag, &db_name).await;
    common::drop_database(&db, &db_name).await;
    common::delete_topic(&kafka, &topic).await;
    outcome
}

/// Reads one HTTP/1.1 request (headers, then a Content-Length body). None at EOF.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<(String, Vec<u8>)>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let mut chunk = [0u8; 8192];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    bail!("connection closed mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + length].to_vec();
            buf.drain(..end + 4 + length);
            let path = head
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("/")
                .to_owned();
            return Ok(Some((path, body)));
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve_target(mut stream: TcpStream, target: Arc<Target>) -> Result<()> {
    let mut buf = Vec::new();
    while let Some((path, _)) = read_request(&mut stream, &mut buf).await? {
        let site = path
            .strip_prefix("/s/")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|i| target.sites.get(i));
        let down = site.is_some_and(|s| s.down.load(Ordering::SeqCst));
        let response: &[u8] = if down {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\ndown\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"
        };
        stream.write_all(response).await?;
        let sent = Utc::now();
        if let Some(site) = site {
            if down {
                site.first_fail_sent.lock().unwrap().get_or_insert(sent);
            } else if site.watch_pass.swap(false, Ordering::SeqCst) {
                site.first_pass_sent.lock().unwrap().get_or_insert(sent);
            }
        }
    }
    Ok(())
}

async fn serve_hook(mut stream: TcpStream, arrivals: Arc<Mutex<Vec<Arrival>>>) -> Result<()> {
    let mut buf = Vec::new();
    while let Some((_, body)) = read_request(&mut stream, &mut buf).await? {
        let at = Utc::now();
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        arrivals.lock().unwrap().push(Arrival { at, body });
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await?;
    }
    Ok(())
}

fn listen<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(handle(stream));
        }
    });
}

fn sites_lua(count: usize, target_port: u16, hook_port: u16) -> String {
    format!(
        "-- generated by benches/pipeline (dev/bench alert)\n\
         notifier \"hook\" {{ type = \"webhook\", url = \"http://127.0.0.1:{hook_port}/hook\" }}\n\
         for i = 0, {last} do\n\
         \x20 site {{ name = string.format(\"bench-%05d\", i), url = string.format(\"http://127.0.0.1:{target_port}/s/%d\", i),\n\
         \x20        interval = \"1s\", alert = {{ notify = {{ \"hook\" }}, after = 1, recover_after = 1 }} }}\n\
         end\n",
        last = count - 1
    )
}

/// (site index → first arrival) of the notices of `kind`, ignoring repeats (same dedup key).
fn first_arrivals(arrivals: &Mutex<Vec<Arrival>>, kind: &str) -> HashMap<usize, DateTime<Utc>> {
    let mut out = HashMap::new();
    for a in arrivals.lock().unwrap().iter() {
        if a.body["kind"].as_str() != Some(kind) {
            continue;
        }
        let Some(index) = a.body["site"]
            .as_str()
            .and_then(|s| s.strip_prefix("bench-"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        out.entry(index).or_insert(a.at);
    }
    out
}

async fn wait_for(
    arrivals: &Mutex<Vec<Arrival>>,
    kind: &str,
    chosen: &[usize],
    timeout: Duration,
    proc: &mut Proc,
    log: &std::path::Path,
) -> Result<HashMap<usize, DateTime<Utc>>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = first_arrivals(arrivals, kind);
        let have = chosen.iter().filter(|i| got.contains_key(i)).count();
        if have == chosen.len() || tokio::time::Instant::now() >= deadline {
            if have < chosen.len() {
                say!(
                    "alert: only {have} of {} {kind} notices within {timeout:?}",
                    chosen.len()
                );
            }
            return Ok(got);
        }
        proc.check_alive(log)?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn latencies(
    chosen: &[usize],
    arrived: &HashMap<usize, DateTime<Utc>>,
    sent: impl Fn(usize) -> Option<DateTime<Utc>>,
) -> (Vec<f64>, u64) {
    let mut out = Vec::new();
    let mut missing = 0;
    for &i in chosen {
        match (arrived.get(&i), sent(i)) {
            (Some(at), Some(sent)) => {
                out.push((*at - sent).num_microseconds().unwrap_or(0) as f64 / 1000.0)
            }
            _ => missing += 1,
        }
    }
    (out, missing)
}

async fn measure(
    options: &Options,
    db: &sitewatch::settings::DatabaseSettings,
    topic: &str,
    tag: &str,
    db_name: &str,
) -> Result<Value> {
    let target = Arc::new(Target {
        sites: (0..options.sites)
            .map(|_| Site {
                down: AtomicBool::new(false),
                first_fail_sent: Mutex::new(None),
                first_pass_sent: Mutex::new(None),
                watch_pass: AtomicBool::new(false),
            })
            .collect(),
    });
    let arrivals: Arc<Mutex<Vec<Arrival>>> = Arc::default();
    let target_listener = TcpListener::bind("127.0.0.1:0").await?;
    let hook_listener = TcpListener::bind("127.0.0.1:0").await?;
    let (target_port, hook_port) = (
        target_listener.local_addr()?.port(),
        hook_listener.local_addr()?.port(),
    );
    {
        let target = target.clone();
        listen(target_listener, move |s| serve_target(s, target.clone()));
        let arrivals = arrivals.clone();
        listen(hook_listener, move |s| serve_hook(s, arrivals.clone()));
    }

    let fresh = common::fresh_database(db, db_name).await?;
    let dir = common::out_dir().join("alert");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("sites.lua");
    std::fs::write(&config, sites_lua(options.sites, target_port, hook_port))?;
    let metrics_port = common::free_port()?;
    let log = dir.join("run.log");
    let mut command = Command::new(common::sitewatch_bin());
    command
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--env-file")
        .arg(common::env_file())
        .args([
            "--kafka-topic",
            topic,
            "--max-per-host",
            "10000",
            "--no-watch",
            "--no-serve",
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .env(
            "SITEWATCH_KAFKA_GROUP",
            format!("sitewatch-bench-alert-store-{tag}"),
        )
        .env(
            "SITEWATCH_ALERT_GROUP",
            format!("sitewatch-bench-alert-{tag}"),
        )
        .env("SITEWATCH_DATABASE_URL", &fresh.url);
    say!(
        "alert: sitewatch run, {} sites at 1 s, topic {topic}, database {db_name}",
        options.sites
    );
    let mut proc = Proc::spawn("sitewatch run", command, &log)?;
    tokio::task::block_in_place(|| {
        common::wait_for_log(&mut proc, &log, "scheduling", Duration::from_secs(60))
    })?;
    tokio::time::sleep(options.warmup).await;
    proc.check_alive(&log)?;
    let before = arrivals.lock().unwrap().len();

    // Every (sites / down)-th site, switched down one after the other.
    let step = (options.sites / options.down).max(1);
    let chosen: Vec<usize> = (0..options.down).map(|k| k * step).collect();
    let gap = options.spread / options.down as u32;
    say!(
        "alert: switching {} sites down over {:?}",
        chosen.len(),
        options.spread
    );
    for &i in &chosen {
        target.sites[i].down.store(true, Ordering::SeqCst);
        tokio::time::sleep(gap).await;
    }
    let opened = wait_for(&arrivals, "open", &chosen, options.wait, &mut proc, &log).await?;
    say!("alert: switching them up");
    for &i in &chosen {
        target.sites[i].watch_pass.store(true, Ordering::SeqCst);
        target.sites[i].down.store(false, Ordering::SeqCst);
        tokio::time::sleep(gap).await;
    }
    let resolved = wait_for(&arrivals, "resolve", &chosen, options.wait, &mut proc, &log).await?;
    // A moment for stray or repeated notices to show up in the counts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let missed = common::scrape_sum(metrics_port, "sitewatch_missed_ticks_total").ok();
    let clean = proc.stop(Duration::from_secs(30));

    let (mut open_ms, open_missing) = latencies(&chosen, &opened, |i| {
        *target.sites[i].first_fail_sent.lock().unwrap()
    });
    let (mut resolve_ms, resolve_missing) = latencies(&chosen, &resolved, |i| {
        *target.sites[i].first_pass_sent.lock().unwrap()
    });
    let all = arrivals.lock().unwrap();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut keys: HashMap<String, u64> = HashMap::new();
    for a in all.iter() {
        *kinds
            .entry(a.body["kind"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
        *keys
            .entry(a.body["dedup_key"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let repeats: u64 = keys.values().map(|n| n - 1).sum();
    let open = common::summary(&mut open_ms);
    let resolve = common::summary(&mut resolve_ms);
    say!(
        "alert: failing check finished → webhook received p50 {} ms, p99 {} ms, max {} ms ({} opens, {open_missing} missing); resolve p99 {} ms",
        open["p50"],
        open["p99"],
        open["max"],
        open["count"],
        resolve["p99"]
    );
    Ok(json!({
        "sites": options.sites,
        "interval_s": 1,
        "switched_down": chosen.len(),
        "spread_s": options.spread.as_secs_f64(),
        "warmup_s": options.warmup.as_secs(),
        "rule": "after = 1, recover_after = 1, webhook notifier",
        "method": "target records when each switched site's first 503 (first 200 after recovery) was sent; receiver records the arrival of each webhook request (wall clock)",
        "open_ms": open,
        "open_missing": open_missing,
        "resolve_ms": resolve,
        "resolve_missing": resolve_missing,
        "notifications": all.len(),
        "notifications_before_switch": before,
        "notifications_by_kind": kinds,
        "repeated_deliveries": repeats,
        "missed_ticks_total": missed,
        "clean_exit": clean,
    }))
}
