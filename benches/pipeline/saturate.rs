//! Part saturate: the real `sitewatch produce` at and past its capacity. N sites at 1 s (N
//! probes/s offered), a body regex on every site, against the benchmark's loopback nginx, the
//! results published to a fresh Kafka topic; N grows step by step, then one step offers four
//! times the highest rate reached. The same curve again with a Lua hook on every site. In the
//! same run, on the same nginx: the ceiling (wrk, a fresh connection per request) and Debian's
//! blackbox_exporter driven by wrk scrapes.
//!
//! Each step's figures come from the results read back from the topic (those scheduled inside
//! the window): achieved `up` results/s, missed ticks (every site has one tick a second, so the
//! ticks of the window less the results scheduled in it), schedule lag; CPU and peak RSS
//! (VmHWM) from /proc. Nothing scrapes the process meanwhile: at 100,000 sites one scrape of
//! /metrics renders about 70 MB, which would be counted in its peak RSS.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::Utc;
use serde_json::{json, Value};

use crate::common::{self, Nginx, Proc};
use crate::{say, scale};

pub struct Options {
    /// Offered loads (sites at 1 s) of the curve without hooks.
    pub steps: Vec<usize>,
    /// Offered loads of the curve with a hook on every site.
    pub hooked_steps: Vec<usize>,
    /// Steps added after the ladder, each halving the gap between the highest load kept up
    /// with and the lowest one that was not.
    pub refinements: usize,
    /// The last step offers this many times the highest rate the steps reached.
    pub overload: f64,
    pub warmup: Duration,
    pub measure: Duration,
    /// Length of each wrk run (ceiling before and after, blackbox_exporter).
    pub wrk_seconds: u32,
}

impl Options {
    pub fn full() -> Self {
        Options {
            steps: vec![2_000, 5_000, 10_000, 15_000, 20_000, 25_000, 40_000],
            // The same range as without hooks past the smallest step: each curve's maximum is
            // taken over the same offered loads.
            hooked_steps: vec![5_000, 10_000, 15_000, 20_000, 25_000, 40_000],
            refinements: 2,
            overload: 4.0,
            warmup: Duration::from_secs(6),
            measure: Duration::from_secs(15),
            wrk_seconds: 10,
        }
    }

    pub fn quick() -> Self {
        Options {
            steps: vec![1_000, 2_000],
            hooked_steps: vec![1_000],
            refinements: 0,
            overload: 2.0,
            warmup: Duration::from_secs(3),
            measure: Duration::from_secs(4),
            wrk_seconds: 2,
        }
    }
}

/// wrk connections for the ceiling, as the probe part uses.
const WRK_CONNECTIONS: u32 = 64;
/// The regex every site (and every blackbox_exporter probe) requires in the body.
const BODY_REGEX: &str = "bench ok";
/// After the window, before stopping: checks scheduled in its last second finish and publish.
const DRAIN: Duration = Duration::from_secs(2);

pub async fn run(options: &Options) -> Result<Value> {
    let (kafka, _) = common::load_stack_env()?;
    let nginx = Nginx::start()?;
    let dir = common::out_dir().join("saturate");
    std::fs::create_dir_all(&dir)?;
    say!("saturate: nginx {} on {}", Nginx::version(), nginx.url());

    let wrk_before = common::wrk_close(&nginx.url(), 2, WRK_CONNECTIONS, options.wrk_seconds)?;
    say!(
        "saturate: ceiling before: wrk {:.0} req/s ({} errors)",
        wrk_before.requests_per_s,
        wrk_before.errors
    );
    let blackbox = tokio::task::block_in_place(|| blackbox(&nginx, &dir, options))?;

    let mut plain = Vec::new();
    for &sites in &options.steps {
        plain.push(step(&kafka, &nginx, &dir, sites, false, options).await?);
    }
    // The ladder's steps are coarse: halve the gap between the highest load kept up with and the
    // lowest one that was not, so the rate kept up with is known to within a finer step.
    for _ in 0..options.refinements {
        let Some((low, high)) = capacity_bracket(&plain) else {
            break;
        };
        let middle = (low + high) / 2 / REFINE_GRAIN * REFINE_GRAIN;
        if middle <= low {
            break;
        }
        say!("saturate: kept up with {low}, not with {high}: trying {middle}");
        plain.push(step(&kafka, &nginx, &dir, middle, false, options).await?);
        plain.sort_by_key(offered);
    }
    let max_before = best(&plain);
    let overload_sites = ((max_before * options.overload / 1000.0).ceil() as usize * 1000)
        .max(options.steps.last().copied().unwrap_or(0) + 1000);
    say!(
        "saturate: highest rate {max_before:.0}/s; offering {:.1}×: {overload_sites} sites",
        options.overload
    );
    plain.push(step(&kafka, &nginx, &dir, overload_sites, false, options).await?);
    let mut hooked = Vec::new();
    for &sites in &options.hooked_steps {
        hooked.push(step(&kafka, &nginx, &dir, sites, true, options).await?);
    }

    let wrk_after = common::wrk_close(&nginx.url(), 2, WRK_CONNECTIONS, options.wrk_seconds)?;
    say!(
        "saturate: ceiling after: wrk {:.0} req/s ({} errors)",
        wrk_after.requests_per_s,
        wrk_after.errors
    );
    let ceiling = (wrk_before.requests_per_s + wrk_after.requests_per_s) / 2.0;
    let max = best(&plain);
    // The highest rate kept up with: no missed tick and checks on time.
    let max_clean = plain
        .iter()
        .filter(|s| s["kept_up"].as_bool() == Some(true))
        .filter_map(|s| s["up_per_s"].as_f64())
        .fold(0.0, f64::max);
    // Whether any regular step was past capacity: if none, the last step is 4× the highest
    // load offered, not 4× what it can do.
    let saturated = plain[..plain.len() - 1]
        .iter()
        .any(|s| s["missed_ticks"].as_f64().is_some_and(|m| m > 0.0));
    let last = plain.last().cloned().unwrap_or_default();
    let hooked_max = best(&hooked);
    // Like for like: the maximum without hooks over the loads the hooked curve was offered.
    let plain_max_same_loads = best(
        &plain
            .iter()
            .filter(|s| {
                hooked
                    .iter()
                    .any(|h| h["offered_per_s"] == s["offered_per_s"])
            })
            .cloned()
            .collect::<Vec<_>>(),
    );
    let blackbox_per_s = blackbox["probes_per_s"].as_f64().unwrap_or(0.0);
    let figures = json!({
        "produce_max_per_s": max.round(),
        "produce_max_clean_per_s": max_clean.round(),
        "produce_overload_offered_per_s": last["offered_per_s"],
        // Of the highest rate before that step: what the step was sized by.
        "produce_overload_factor": common::round2(last["offered_per_s"].as_f64().unwrap_or(0.0) / max_before.max(1.0)),
        "produce_overload_ratio": common::round2(last["up_per_s"].as_f64().unwrap_or(0.0) / max.max(1.0)),
        "produce_overload_rss_mib": last["rss_peak_mib"],
        "produce_hooked_max_per_s": hooked_max.round(),
        "produce_hooked_ratio": common::round2(hooked_max / plain_max_same_loads.max(1.0)),
        "saturated": saturated,
        "ceiling_per_s": ceiling.round(),
        "produce_ceiling_ratio": common::round2(max / ceiling.max(1.0)),
        "blackbox_per_s": blackbox_per_s.round(),
        "produce_blackbox_ratio": common::round2(max / blackbox_per_s.max(1.0)),
        "wrk_runs_per_s": [wrk_before.requests_per_s.round(), wrk_after.requests_per_s.round()],
        "wrk_errors": wrk_before.errors + wrk_after.errors,
        "wrk": format!("wrk -t2 -c{WRK_CONNECTIONS} -d{}s -H 'Connection: close'", options.wrk_seconds),
        "target": format!("nginx {}, 1 worker process, static {}-byte body", Nginx::version(), common::NGINX_BODY.len()),
        "sites": format!("N sites at 1 s, expect.body = {BODY_REGEX:?}, default limits (--max-concurrency 4096, --max-per-host 64)"),
        "hook": HOOK,
        "window_s": options.measure.as_secs(),
        "warmup_s": options.warmup.as_secs(),
        "blackbox": blackbox,
        "steps": plain,
        "hooked_steps": hooked,
    });
    let svg = chart(&figures);
    std::fs::write(common::out_dir().join("saturate.svg"), svg)?;
    Ok(figures)
}

/// Refined loads are multiples of this.
const REFINE_GRAIN: usize = 500;

fn offered(step: &Value) -> usize {
    step["offered_per_s"].as_u64().unwrap_or(0) as usize
}

/// The highest offered load a step kept up with and the lowest above it that one did not, if
/// both exist. `steps` is sorted by offered load.
fn capacity_bracket(steps: &[Value]) -> Option<(usize, usize)> {
    let kept_up = |s: &&Value| s["kept_up"].as_bool() == Some(true);
    let low = steps.iter().filter(kept_up).map(offered).max()?;
    let high = steps
        .iter()
        .filter(|s| !kept_up(s))
        .map(offered)
        .filter(|&o| o > low)
        .min()?;
    Some((low, high))
}

/// The highest `up` rate of a curve's steps.
fn best(steps: &[Value]) -> f64 {
    steps
        .iter()
        .filter_map(|s| s["up_per_s"].as_f64())
        .fold(0.0, f64::max)
}

/// The hook every site of the hooked curve runs: it reads the body, as a real assertion does.
const HOOK: &str = "function(r) if not string.find(r.body, \"bench ok\", 1, true) then return false, \"no marker\" end return true end";

/// sites.lua for `count` sites at 1 s against `url`, with the hook on every site if `hooked`.
fn sites_lua(count: usize, url: &str, hooked: bool) -> String {
    let hooks = if hooked {
        format!(", hooks = {{ {HOOK} }}")
    } else {
        String::new()
    };
    format!(
        "-- generated by benches/pipeline (dev/bench saturate)\n\
         for i = 1, {count} do\n\
         \x20 site {{ name = string.format(\"sat-%06d\", i), url = \"{url}\", interval = \"1s\",\n\
         \x20        expect = {{ body = \"{BODY_REGEX}\" }}{hooks} }}\n\
         end\n"
    )
}

/// One step: `sites` sites at 1 s for warmup + window, then the topic read back.
async fn step(
    kafka: &sitewatch::settings::KafkaSettings,
    nginx: &Nginx,
    dir: &Path,
    sites: usize,
    hooked: bool,
    options: &Options,
) -> Result<Value> {
    let name = format!("{sites}{}", if hooked { "-hooked" } else { "" });
    let config = dir.join(format!("sites-{name}.lua"));
    std::fs::write(&config, sites_lua(sites, &nginx.url(), hooked))?;
    let topic = format!("sitewatch.bench.saturate.{}.{name}", common::run_tag());
    let log = dir.join(format!("produce-{name}.log"));
    let mut command = Command::new(common::sitewatch_bin());
    command
        .arg("produce")
        .arg("--config")
        .arg(&config)
        .arg("--env-file")
        .arg(common::env_file())
        .args(["--kafka-topic", &topic, "--no-watch"])
        .args([
            "--metrics-addr",
            &format!("127.0.0.1:{}", common::free_port()?),
        ]);
    let mut proc = Proc::spawn("sitewatch produce", command, &log)?;
    let pid = proc.pid();
    let scheduling_at = tokio::task::block_in_place(|| {
        common::wait_for_log(&mut proc, &log, "scheduling", Duration::from_secs(120))
            .map(|()| Utc::now())
    })?;
    let cpu_of = |pid: u32| {
        common::proc_cpu_seconds(pid).with_context(|| format!("reading /proc/{pid}/stat"))
    };
    let (cpu, seconds, nginx_cpu, rss_peak_kb) =
        tokio::task::block_in_place(|| -> Result<(f64, f64, f64, u64)> {
            std::thread::sleep(options.warmup);
            proc.check_alive(&log)?;
            let (cpu0, nginx0) = (cpu_of(pid)?, nginx.cpu_seconds());
            let start = Instant::now();
            while start.elapsed() < options.measure {
                std::thread::sleep(Duration::from_millis(250));
                proc.check_alive(&log)?;
            }
            let seconds = start.elapsed().as_secs_f64();
            let (cpu1, nginx1) = (cpu_of(pid)?, nginx.cpu_seconds());
            std::thread::sleep(DRAIN);
            proc.check_alive(&log)?;
            let rss = common::proc_status_kb(pid, "VmHWM").context("reading VmHWM")?;
            Ok((cpu1 - cpu0, seconds, nginx1 - nginx0, rss))
        })?;
    let rss_peak_mib = rss_peak_kb as f64 / 1024.0;
    let clean = proc.stop(Duration::from_secs(60));
    let window = (
        scheduling_at + chrono::Duration::from_std(options.warmup)?,
        scheduling_at + chrono::Duration::from_std(options.warmup + options.measure)?,
    );
    let (reader_kafka, reader_topic) = (kafka.clone(), topic.clone());
    let readback = tokio::task::spawn_blocking(move || {
        scale::lags_from_topic(&reader_kafka, &reader_topic, window)
    })
    .await??;
    common::delete_topic(kafka, &topic).await;
    anyhow::ensure!(
        readback.in_window > 0 && readback.started > 0,
        "{topic}: no result inside the window (see {})",
        log.display()
    );
    let window_s = options.measure.as_secs_f64();
    // Each site has one tick a second: the window holds sites × window_s of them.
    let ticks = sites as f64 * window_s;
    let missed = (ticks - readback.in_window as f64).max(0.0);
    let mut lags = readback.lags_ms;
    let lag = common::summary(&mut lags);
    // Keeping up: no tick missed, and checks start on time (lag p99 within a tenth of the
    // interval). A step that misses nothing only because its 15 s are too short for a growing
    // backlog to reach an interval is not keeping up.
    let kept_up = missed == 0.0 && lag["p99"].as_f64().is_some_and(|p99| p99 <= 100.0);
    // CPU over the results that started in the same window, scaled to its length.
    let cpu_window = cpu * window_s / seconds;
    let figures = json!({
        "offered_per_s": sites,
        "hooked": hooked,
        // What ran in the window: up results whose check started inside it.
        "up_per_s": (readback.up_started as f64 / window_s).round(),
        "results_per_s": (readback.started as f64 / window_s).round(),
        "scheduled_in_window": readback.in_window,
        "not_up": readback.started - readback.up_started,
        "missed_ticks": missed,
        "missed_per_s": (missed / window_s).round(),
        "kept_up": kept_up,
        "cpu_cores": common::round2(cpu / seconds),
        "cpu_us_per_result": common::round2(cpu_window * 1e6 / readback.started as f64),
        "nginx_cpu_cores": common::round2(nginx_cpu / seconds),
        "rss_peak_mib": common::round2(rss_peak_mib),
        "lag_ms": lag,
        "clean_exit": clean,
    });
    say!(
        "saturate: {sites} sites{}: {} up/s, {} missed/s, {:.2} cores, peak RSS {rss_peak_mib:.0} MiB, lag p99 {} ms{}",
        if hooked { " with a hook" } else { "" },
        figures["up_per_s"],
        figures["missed_per_s"],
        cpu / seconds,
        lag["p99"],
        if kept_up { "" } else { " (not keeping up)" }
    );
    Ok(figures)
}

/// Debian's blackbox_exporter on the same nginx, an http module with the same body regex,
/// driven by wrk as fast as it answers (keep-alive scrapes, as Prometheus makes them). Each
/// scrape is one probe; a probe before and after must have succeeded.
fn blackbox(nginx: &Nginx, dir: &Path, options: &Options) -> Result<Value> {
    let binary = blackbox_binary()?;
    let config = dir.join("blackbox.yml");
    std::fs::write(
        &config,
        format!(
            "# generated by benches/pipeline (dev/bench saturate)\n\
             modules:\n\
             \x20 http_bench:\n\
             \x20   prober: http\n\
             \x20   timeout: 2s\n\
             \x20   http:\n\
             \x20     fail_if_body_not_matches_regexp: [{BODY_REGEX:?}]\n"
        ),
    )?;
    let port = common::free_port()?;
    let log = dir.join("blackbox.log");
    let mut command = Command::new(&binary);
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let mut proc = Proc::spawn("blackbox_exporter", command, &log)?;
    common::wait_port(port, Duration::from_secs(10))?;
    let path = format!("/probe?target={}&module=http_bench", nginx.url());
    let succeeded = |when: &str| -> Result<()> {
        let text = http_get(port, &path)?;
        if !text.lines().any(|l| l.trim() == "probe_success 1") {
            bail!("blackbox_exporter's probe {when} the run failed:\n{text}");
        }
        Ok(())
    };
    succeeded("before")?;
    let cpu0 = common::proc_cpu_seconds(proc.pid()).unwrap_or(0.0);
    let run = common::wrk(
        &format!("http://127.0.0.1:{port}{path}"),
        2,
        WRK_CONNECTIONS,
        options.wrk_seconds,
        false,
    )?;
    let cpu = common::proc_cpu_seconds(proc.pid()).unwrap_or(0.0) - cpu0;
    anyhow::ensure!(
        run.errors == 0,
        "blackbox_exporter: {} scrapes failed under wrk",
        run.errors
    );
    succeeded("after")?;
    proc.check_alive(&log)?;
    proc.stop(Duration::from_secs(10));
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_default();
    say!(
        "saturate: blackbox_exporter {:.0} probes/s ({} errors), {:.2} cores",
        run.requests_per_s,
        run.errors,
        cpu / f64::from(options.wrk_seconds)
    );
    Ok(json!({
        "probes_per_s": run.requests_per_s.round(),
        "errors": run.errors,
        "cpu_cores": common::round2(cpu / f64::from(options.wrk_seconds)),
        "version": version,
        "driver": format!("wrk -t2 -c{WRK_CONNECTIONS} -d{}s (keep-alive) on /probe?module=http_bench", options.wrk_seconds),
        "module": format!("prober http, timeout 2s, fail_if_body_not_matches_regexp [{BODY_REGEX:?}]"),
    }))
}

fn blackbox_binary() -> Result<PathBuf> {
    for candidate in [
        "/usr/bin/prometheus-blackbox-exporter",
        "/usr/local/bin/blackbox_exporter",
    ] {
        if Path::new(candidate).exists() {
            return Ok(candidate.into());
        }
    }
    bail!("blackbox_exporter not found (apt-get install prometheus-blackbox-exporter)")
}

/// A plain HTTP/1.0 GET on 127.0.0.1; returns the body.
fn http_get(port: u16, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (_, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response from 127.0.0.1:{port}"))?;
    Ok(body.to_owned())
}

/// The capacity curve as an SVG line chart: achieved `up` results/s against offered probes/s,
/// with and without a hook, beside the wrk ceiling and blackbox_exporter.
pub fn chart(figures: &Value) -> String {
    let points = |key: &str| -> Vec<(f64, f64, f64)> {
        figures[key]
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .filter_map(|s| {
                        Some((
                            s["offered_per_s"].as_f64()?,
                            s["up_per_s"].as_f64()?,
                            // Hollow unless it kept up.
                            if s["kept_up"].as_bool().unwrap_or(true) {
                                0.0
                            } else {
                                1.0
                            },
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (plain, hooked) = (points("steps"), points("hooked_steps"));
    let ceiling = figures["ceiling_per_s"].as_f64().unwrap_or(0.0);
    let blackbox = figures["blackbox_per_s"].as_f64().unwrap_or(0.0);
    let (x_step, x_ticks) = axis(
        plain
            .iter()
            .chain(&hooked)
            .map(|p| p.0)
            .fold(1000.0, f64::max),
    );
    let (y_step, y_ticks) = axis(
        plain
            .iter()
            .chain(&hooked)
            .map(|p| p.1)
            .fold(ceiling, f64::max)
            // Headroom above the highest line for the legend.
            * 1.25,
    );
    let (x_max, y_max) = (x_step * x_ticks as f64, y_step * y_ticks as f64);
    let (w, h, left, right, top, bottom) = (760.0, 420.0, 70.0, 36.0, 40.0, 50.0);
    let x = |v: f64| left + v / x_max * (w - left - right);
    let y = |v: f64| top + (1.0 - v / y_max) * (h - top - bottom);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"14\" font-weight=\"bold\">sitewatch produce: achieved up results/s against offered probes/s</text>\n"
    );
    // Grid and axes, at round values.
    for vx in (0..=x_ticks).map(|i| x_step * i as f64) {
        svg += &format!(
            "<line x1=\"{xv:.1}\" y1=\"{top}\" x2=\"{xv:.1}\" y2=\"{:.1}\" stroke=\"#e5e5e5\"/>\n\
             <text x=\"{xv:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            h - bottom,
            h - bottom + 16.0,
            thousands(vx),
            xv = x(vx),
        );
    }
    for vy in (0..=y_ticks).map(|i| y_step * i as f64) {
        svg += &format!(
            "<line x1=\"{left}\" y1=\"{yv:.1}\" x2=\"{:.1}\" y2=\"{yv:.1}\" stroke=\"#e5e5e5\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            w - right,
            left - 6.0,
            y(vy) + 4.0,
            thousands(vy),
            yv = y(vy),
        );
    }
    svg += &format!(
        "<line x1=\"{left}\" y1=\"{b:.1}\" x2=\"{:.1}\" y2=\"{b:.1}\" stroke=\"#333\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{b:.1}\" stroke=\"#333\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">offered probes/s (sites at 1 s)</text>\n\
         <text transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\">up results/s</text>\n",
        w - right,
        (left + w - right) / 2.0,
        h - 12.0,
        (top + h - bottom) / 2.0,
        b = h - bottom,
    );
    // Offered = achieved: what a producer with room to spare gives.
    let diagonal = x_max.min(y_max);
    svg += &format!(
        "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#bbb\" stroke-dasharray=\"2 4\"/>\n",
        x(0.0),
        y(0.0),
        x(diagonal),
        y(diagonal)
    );
    for (value, label, colour) in [
        (ceiling, "wrk ceiling (Connection: close)", "#b22222"),
        (blackbox, "blackbox_exporter", "#7a5c00"),
    ] {
        if value > 0.0 {
            svg += &format!(
                "<line x1=\"{left}\" y1=\"{yv:.1}\" x2=\"{:.1}\" y2=\"{yv:.1}\" stroke=\"{colour}\" stroke-dasharray=\"6 4\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{colour}\">{label}: {}/s</text>\n",
                w - right,
                w - right - 4.0,
                y(value) - 5.0,
                thousands(value),
                yv = y(value),
            );
        }
    }
    for (series, label, colour, dy) in [
        (&plain, "produce", "#1f5fbf", 0.0),
        (
            &hooked,
            "produce, a Lua hook on every site",
            "#2e8b57",
            18.0,
        ),
    ] {
        if series.is_empty() {
            continue;
        }
        let path: Vec<String> = series
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        svg += &format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>\n",
            path.join(" ")
        );
        for p in series {
            // A hollow marker where it did not keep up: offered more than it could do.
            let fill = if p.2 > 0.0 { "white" } else { colour };
            svg += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{fill}\" stroke=\"{colour}\" stroke-width=\"2\"/>\n",
                x(p.0),
                y(p.1)
            );
        }
        svg += &format!(
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-width=\"2\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{label}</text>\n",
            left + 12.0,
            top + 14.0 + dy,
            left + 36.0,
            top + 14.0 + dy,
            left + 42.0,
            top + 18.0 + dy
        );
    }
    svg += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#555\">filled: kept up (no missed tick, lag p99 ≤ 100 ms); hollow: did not</text>\n",
        left + 12.0,
        top + 54.0
    );
    svg += "</svg>\n";
    svg
}

/// A round step (1, 2 or 5 × a power of ten) giving at most eight ticks up to `max`, and how
/// many ticks reach it.
fn axis(max: f64) -> (f64, usize) {
    let max = max.max(1.0);
    let magnitude = 10f64.powf((max / 8.0).log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| max / step <= 8.0)
        .unwrap_or(10.0 * magnitude);
    (step, (max / step).ceil() as usize)
}

/// 12345.6 → "12,346".
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.round());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
