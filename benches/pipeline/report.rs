//! The report: merges the parts' figures (target/bench/<part>.json) and the criterion estimates
//! of benches/hooks.rs into target/bench/summary.json, prints the table, and (after a complete
//! run) rewrites the generated section of docs/performance.md.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use crate::common;

pub const PARTS: [&str; 8] = [
    "probe", "scale", "saturate", "ingest", "e2e", "alert", "insight", "hooks",
];

/// How long a complete `dev/bench` takes on the reference machine (build included), for the
/// generated section's "Reproduce with" line.
const MINUTES: u32 = 17;

/// Start and end markers of the generated section of docs/performance.md.
const BEGIN: &str = "<!-- dev/bench:begin (generated; edit outside these markers) -->";
const END: &str = "<!-- dev/bench:end -->";

fn read_part(part: &str) -> Option<Value> {
    let text = std::fs::read_to_string(common::out_dir().join(format!("{part}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

fn criterion_home() -> PathBuf {
    std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::out_dir().join("criterion"))
}

/// Criterion's estimate for `hooks/<name>`, in µs: (median, mean).
fn criterion_us(name: &str) -> Option<(f64, f64)> {
    let path = criterion_home()
        .join("hooks")
        .join(name)
        .join("new/estimates.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let get = |k: &str| doc[k]["point_estimate"].as_f64().map(|ns| ns / 1000.0);
    Some((get("median")?, get("mean")?))
}

fn modified(path: &Path) -> Option<String> {
    let time = std::fs::metadata(path).ok()?.modified().ok()?;
    let time: chrono::DateTime<chrono::Utc> = time.into();
    Some(time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The hooks part's figures, from criterion's files.
pub fn hooks_figures() -> Option<Value> {
    let (round_trip, round_trip_mean) = criterion_us("pool_round_trip")?;
    let pipelined = criterion_us("pool_pipelined").map(|m| m.0);
    let worker_cpu = criterion_us("worker_cpu").map(|m| m.0);
    let handoff = criterion_us("handoff_round_trip").map(|m| m.0);
    Some(json!({
        "finished_at": modified(&criterion_home().join("hooks/pool_round_trip/new/estimates.json")),
        "figures": {
            "hook_us_per_call": common::round2(round_trip),
            "round_trip_mean_us": common::round2(round_trip_mean),
            "pipelined_us_per_call": pipelined.map(common::round2),
            "worker_cpu_us_per_call": worker_cpu.map(common::round2),
            "handoff_round_trip_us": handoff.map(common::round2),
            "hook": "function(r) local v = json.decode(r.body) return v.status == 'UP' and r.status == 200 end",
        }
    }))
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// summary.json: the issue's keys plus extras, and per-part timestamps.
pub fn summary(parts: &Map<String, Value>, complete: bool) -> Value {
    let fig = |part: &str, pointer: &str| {
        parts
            .get(part)
            .and_then(|p| p["figures"].pointer(pointer))
            .and_then(f)
    };
    json!({
        "probes_per_s": fig("probe", "/probes_per_s"),
        "probe_ceiling_per_s": fig("probe", "/probe_ceiling_per_s"),
        "probe_ratio": fig("probe", "/probe_ratio"),
        "probe_sustained_per_s": fig("probe", "/sitewatch/probes_per_s").map(f64::round),
        "probe_sustained_offered_per_s": fig("probe", "/sitewatch/offered_per_s"),
        "probe_saturation_offered_per_s": fig("probe", "/saturation/offered_per_s"),
        "probe_missed_ticks_sustained": fig("probe", "/sitewatch/missed_ticks"),
        "probe_cpu_cores": fig("probe", "/sitewatch/cpu_cores"),
        "probe_cpu_us_per_probe": fig("probe", "/sitewatch/cpu_us_per_probe"),
        "probe_lag_p50_ms": fig("probe", "/sitewatch/lag_ms/p50"),
        "probe_lag_p99_ms": fig("probe", "/sitewatch/lag_ms/p99"),
        "lag_p50_ms_1k": fig("scale", "/lag_ms/p50"),
        "lag_p99_ms_1k": fig("scale", "/lag_ms/p99"),
        "lag_max_ms_1k": fig("scale", "/lag_ms/max"),
        "missed_ticks_1k": fig("scale", "/missed_ticks_window"),
        "rss_mib_10k_sites": fig("scale", "/rss_peak_mib"),
        "produce_cpu_cores_1k": fig("scale", "/cpu_cores"),
        "produce_max_per_s": fig("saturate", "/produce_max_per_s"),
        "produce_max_clean_per_s": fig("saturate", "/produce_max_clean_per_s"),
        "produce_ceiling_per_s": fig("saturate", "/ceiling_per_s"),
        "produce_ceiling_ratio": fig("saturate", "/produce_ceiling_ratio"),
        "blackbox_per_s": fig("saturate", "/blackbox_per_s"),
        "produce_blackbox_ratio": fig("saturate", "/produce_blackbox_ratio"),
        "produce_overload_factor": fig("saturate", "/produce_overload_factor"),
        "produce_overload_ratio": fig("saturate", "/produce_overload_ratio"),
        "produce_overload_rss_mib": fig("saturate", "/produce_overload_rss_mib"),
        "produce_hooked_ratio": fig("saturate", "/produce_hooked_ratio"),
        "ingest_rows_per_s": fig("ingest", "/ingest_rows_per_s"),
        // The consumer writes rollups, site state and state changes in the rows' transaction;
        // the same figure under the name that says so.
        "ingest_with_rollups_rows_per_s": fig("ingest", "/ingest_rows_per_s"),
        "copy_ceiling_rows_per_s": fig("ingest", "/copy_ceiling_rows_per_s"),
        "ingest_ratio": fig("ingest", "/ingest_ratio"),
        "ingest_steady_rows_per_s": fig("ingest", "/sitewatch/steady_rows_per_s"),
        "e2e_p50_ms": fig("e2e", "/e2e_ms/p50"),
        "e2e_p99_ms": fig("e2e", "/e2e_ms/p99"),
        "e2e_lag_p99_ms": fig("e2e", "/lag_ms/p99"),
        "e2e_missed_ticks": fig("e2e", "/missed_ticks_window"),
        "alert_latency_p50_ms": fig("alert", "/open_ms/p50"),
        "alert_latency_p99_ms": fig("alert", "/open_ms/p99"),
        "alert_notifications": fig("alert", "/open_ms/count"),
        "alert_resolve_p99_ms": fig("alert", "/resolve_ms/p99"),
        // The report's answer inside the real binary (report::report, from its debug log),
        // like the site series; the whole process adds connecting, most of it OpenSSL
        // loading the system CA bundle (docs/performance.md).
        "report_p50_ms_90d": fig("insight", "/report/library_ms/p50"),
        "report_p99_ms_90d": fig("insight", "/report/library_ms/p99"),
        "report_wall_p50_ms_90d": fig("insight", "/report/wall_ms/p50"),
        "report_wall_p99_ms_90d": fig("insight", "/report/wall_ms/p99"),
        "site_p50_ms_90d": fig("insight", "/site_series/ms/p50"),
        "site_p99_ms_90d": fig("insight", "/site_series/ms/p99"),
        "serve_p99_ms": fig("insight", "/serve/serve_p99_ms"),
        "serve_overview_kb": fig("insight", "/serve/overview_kb"),
        "insight_build_s": fig("insight", "/build/seconds"),
        "hook_us_per_call": fig("hooks", "/hook_us_per_call"),
        "hook_pipelined_us_per_call": fig("hooks", "/pipelined_us_per_call"),
        "hook_worker_cpu_us_per_call": fig("hooks", "/worker_cpu_us_per_call"),
        "hook_handoff_us": fig("hooks", "/handoff_round_trip_us"),
        "complete_run": complete,
        "parts_finished_at": parts.iter().map(|(k, v)| (k.clone(), v["finished_at"].clone())).collect::<Map<_, _>>(),
        "machine": machine(),
    })
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let mem_gib = common::proc_meminfo_kb("MemTotal").unwrap_or(0) as f64 / 1024.0 / 1024.0;
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_default();
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": (mem_gib * 10.0).round() / 10.0,
        "os": os,
        "kernel": run("uname", &["-r"]),
        "rustc": run("rustc", &["-V"]),
        "nginx": common::Nginx::version().trim_start_matches("nginx/").to_owned(),
        "wrk": run("sh", &["-c", "wrk -v 2>&1 | head -n1 | sed -n 's/^wrk \\([^ ]*\\).*/\\1/p'"]),
        "postgresql": run("sh", &["-c", "psql --version | sed -n 's/.*) \\([0-9.]*\\).*/\\1/p'"]),
        "kafka": run("sh", &["-c", &format!("sed -n 's/^KAFKA_VERSION=//p' {}", common::root().join("dev/stack").display())]),
    })
}

enum Status {
    Met,
    Missed,
    Info,
    NoData,
}

struct Row {
    part: &'static str,
    metric: String,
    value: String,
    target: &'static str,
    status: Status,
}

fn fmt_num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => {
            if decimals == 0 {
                let n = x.round() as i64;
                let s = n.abs().to_string();
                let mut out = String::new();
                for (i, c) in s.chars().enumerate() {
                    if i > 0 && (s.len() - i) % 3 == 0 {
                        out.push(',');
                    }
                    out.push(c);
                }
                if n < 0 {
                    format!("-{out}")
                } else {
                    out
                }
            } else {
                format!("{x:.decimals$}")
            }
        }
        _ => "n/a".into(),
    }
}

fn check(v: Option<f64>, ok: impl Fn(f64) -> bool) -> Status {
    match v {
        Some(x) if x.is_finite() => {
            if ok(x) {
                Status::Met
            } else {
                Status::Missed
            }
        }
        _ => Status::NoData,
    }
}

fn rows(s: &Value, parts: &Map<String, Value>) -> Vec<Row> {
    let g = |k: &str| s[k].as_f64();
    let p = |part: &str, pointer: &str| {
        parts
            .get(part)
            .and_then(|v| v["figures"].pointer(pointer))
            .and_then(f)
    };
    let info = |v: Option<f64>| {
        if v.is_some() {
            Status::Info
        } else {
            Status::NoData
        }
    };
    vec![
        Row {
            part: "probe",
            metric: format!(
                "sitewatch probes/s, max (offered {}/s)",
                fmt_num(g("probe_saturation_offered_per_s"), 0)
            ),
            value: fmt_num(g("probes_per_s"), 0),
            target: "≥ 5,000",
            status: check(g("probes_per_s"), |x| x >= 5000.0),
        },
        Row {
            part: "probe",
            metric: "ceiling: wrk -H 'Connection: close' req/s".into(),
            value: fmt_num(g("probe_ceiling_per_s"), 0),
            target: "",
            status: info(g("probe_ceiling_per_s")),
        },
        Row {
            part: "probe",
            metric: "sitewatch ÷ ceiling".into(),
            value: fmt_num(g("probe_ratio"), 2),
            target: "≥ 0.5",
            status: check(g("probe_ratio"), |x| x >= 0.5),
        },
        Row {
            part: "probe",
            metric: format!(
                "achieved at {}/s offered ({} s)",
                fmt_num(g("probe_sustained_offered_per_s"), 0),
                fmt_num(p("probe", "/sitewatch/window_s"), 0)
            ),
            value: fmt_num(g("probe_sustained_per_s"), 0),
            target: "",
            status: info(g("probe_sustained_per_s")),
        },
        Row {
            part: "probe",
            metric: format!("  CPU, cores of {}", s["machine"]["cores"]),
            value: fmt_num(g("probe_cpu_cores"), 2),
            target: "",
            status: info(g("probe_cpu_cores")),
        },
        Row {
            part: "probe",
            metric: "  CPU µs per probe".into(),
            value: fmt_num(g("probe_cpu_us_per_probe"), 1),
            target: "",
            status: info(g("probe_cpu_us_per_probe")),
        },
        Row {
            part: "probe",
            metric: "  lag p50 / p99 ms".into(),
            value: format!(
                "{} / {}",
                fmt_num(g("probe_lag_p50_ms"), 2),
                fmt_num(g("probe_lag_p99_ms"), 2)
            ),
            target: "",
            status: info(g("probe_lag_p99_ms")),
        },
        Row {
            part: "probe",
            metric: "  missed ticks".into(),
            value: fmt_num(g("probe_missed_ticks_sustained"), 0),
            target: "",
            status: info(g("probe_missed_ticks_sustained")),
        },
        Row {
            part: "scale",
            metric: format!(
                "lag p50 ms ({} sites @ {} s, real produce)",
                fmt_num(p("scale", "/sites"), 0),
                fmt_num(p("scale", "/interval_s"), 0)
            ),
            value: fmt_num(g("lag_p50_ms_1k"), 2),
            target: "",
            status: info(g("lag_p50_ms_1k")),
        },
        Row {
            part: "scale",
            metric: "lag p99 ms".into(),
            value: fmt_num(g("lag_p99_ms_1k"), 2),
            target: "≤ 10",
            status: check(g("lag_p99_ms_1k"), |x| x <= 10.0),
        },
        Row {
            part: "scale",
            metric: "lag max ms".into(),
            value: fmt_num(g("lag_max_ms_1k"), 2),
            target: "",
            status: info(g("lag_max_ms_1k")),
        },
        Row {
            part: "scale",
            metric: format!(
                "missed ticks ({} s window)",
                fmt_num(p("scale", "/window_s"), 0)
            ),
            value: fmt_num(g("missed_ticks_1k"), 0),
            target: "0",
            status: check(g("missed_ticks_1k"), |x| x == 0.0),
        },
        Row {
            part: "scale",
            metric: "peak RSS MiB (VmHWM)".into(),
            value: fmt_num(g("rss_mib_10k_sites"), 1),
            target: "≤ 64",
            status: check(g("rss_mib_10k_sites"), |x| x <= 64.0),
        },
        Row {
            part: "scale",
            metric: "produce CPU, cores".into(),
            value: fmt_num(g("produce_cpu_cores_1k"), 2),
            target: "",
            status: info(g("produce_cpu_cores_1k")),
        },
        Row {
            part: "saturate",
            metric: "produce up results/s, max (real binary, Kafka)".into(),
            value: fmt_num(g("produce_max_per_s"), 0),
            target: "",
            status: info(g("produce_max_per_s")),
        },
        Row {
            part: "saturate",
            metric: "  highest kept up (no missed tick, lag p99 ≤ 100 ms)".into(),
            value: fmt_num(g("produce_max_clean_per_s"), 0),
            target: "",
            status: info(g("produce_max_clean_per_s")),
        },
        Row {
            part: "saturate",
            metric: format!(
                "  ÷ wrk ceiling ({} req/s)",
                fmt_num(g("produce_ceiling_per_s"), 0)
            ),
            value: fmt_num(g("produce_ceiling_ratio"), 2),
            target: "≥ 0.4",
            status: check(g("produce_ceiling_ratio"), |x| x >= 0.4),
        },
        Row {
            part: "saturate",
            metric: format!(
                "  ÷ blackbox_exporter ({} probes/s)",
                fmt_num(g("blackbox_per_s"), 0)
            ),
            value: fmt_num(g("produce_blackbox_ratio"), 2),
            target: "≥ 6",
            status: check(g("produce_blackbox_ratio"), |x| x >= 6.0),
        },
        Row {
            part: "saturate",
            metric: format!(
                "overload: achieved ÷ max at {}× offered",
                fmt_num(g("produce_overload_factor"), 1)
            ),
            value: fmt_num(g("produce_overload_ratio"), 2),
            target: "≥ 0.9 at 4×",
            status: check(g("produce_overload_ratio"), |x| x >= 0.9),
        },
        Row {
            part: "saturate",
            metric: "  peak RSS MiB at that load".into(),
            value: fmt_num(g("produce_overload_rss_mib"), 0),
            target: "≤ 256",
            status: check(g("produce_overload_rss_mib"), |x| x <= 256.0),
        },
        Row {
            part: "saturate",
            metric: "max with a Lua hook on every site ÷ max".into(),
            value: fmt_num(g("produce_hooked_ratio"), 2),
            target: "≥ 0.8",
            status: check(g("produce_hooked_ratio"), |x| x >= 0.8),
        },
        Row {
            part: "ingest",
            metric: "sitewatch consume rows/s, with rollups (from process start)".into(),
            value: fmt_num(g("ingest_with_rollups_rows_per_s"), 0),
            target: "",
            status: info(g("ingest_with_rollups_rows_per_s")),
        },
        Row {
            part: "ingest",
            metric: "ceiling: binary COPY rows/s".into(),
            value: fmt_num(g("copy_ceiling_rows_per_s"), 0),
            target: "",
            status: info(g("copy_ceiling_rows_per_s")),
        },
        Row {
            part: "ingest",
            metric: "sitewatch ÷ ceiling".into(),
            value: fmt_num(g("ingest_ratio"), 2),
            target: "≥ 0.7",
            status: check(g("ingest_ratio"), |x| x >= 0.7),
        },
        Row {
            part: "ingest",
            metric: "steady rows/s (after first commit)".into(),
            value: fmt_num(g("ingest_steady_rows_per_s"), 0),
            target: "",
            status: info(g("ingest_steady_rows_per_s")),
        },
        Row {
            part: "e2e",
            metric: "probe finished → row visible p50 ms".into(),
            value: fmt_num(g("e2e_p50_ms"), 1),
            target: "",
            status: info(g("e2e_p50_ms")),
        },
        Row {
            part: "e2e",
            metric: format!(
                "probe finished → row visible p99 ms ({} probes/s)",
                fmt_num(
                    p("e2e", "/sites")
                        .zip(p("e2e", "/interval_s"))
                        .map(|(n, s)| n / s),
                    0
                )
            ),
            value: fmt_num(g("e2e_p99_ms"), 1),
            target: "≤ 250",
            status: check(g("e2e_p99_ms"), |x| x <= 250.0),
        },
        Row {
            part: "e2e",
            metric: "lag p99 ms / missed ticks (sitewatch run)".into(),
            value: format!(
                "{} / {}",
                fmt_num(g("e2e_lag_p99_ms"), 2),
                fmt_num(g("e2e_missed_ticks"), 0)
            ),
            target: "",
            status: info(g("e2e_lag_p99_ms")),
        },
        Row {
            part: "alert",
            metric: "failing check finished → webhook received p50 ms".into(),
            value: fmt_num(g("alert_latency_p50_ms"), 0),
            target: "",
            status: info(g("alert_latency_p50_ms")),
        },
        Row {
            part: "alert",
            metric: format!(
                "failing check finished → webhook received p99 ms ({} open notices, {} probes/s)",
                fmt_num(g("alert_notifications"), 0),
                fmt_num(
                    p("alert", "/sites")
                        .zip(p("alert", "/interval_s"))
                        .map(|(n, s)| n / s),
                    0
                )
            ),
            value: fmt_num(g("alert_latency_p99_ms"), 0),
            target: "≤ 2,000",
            status: check(g("alert_latency_p99_ms"), |x| x <= 2000.0),
        },
        Row {
            part: "alert",
            metric: "first passing check → resolve received p99 ms".into(),
            value: fmt_num(g("alert_resolve_p99_ms"), 0),
            target: "",
            status: info(g("alert_resolve_p99_ms")),
        },
        Row {
            part: "insight",
            metric: format!(
                "`sitewatch report --since {}d --json`, {} sites: report::report p50 ms (its debug log)",
                fmt_num(p("insight", "/days"), 0),
                fmt_num(p("insight", "/sites"), 0)
            ),
            value: fmt_num(g("report_p50_ms_90d"), 0),
            target: "",
            status: info(g("report_p50_ms_90d")),
        },
        Row {
            part: "insight",
            metric: "  p99 ms (warm cache)".into(),
            value: fmt_num(g("report_p99_ms_90d"), 0),
            target: "< 100",
            status: check(g("report_p99_ms_90d"), |x| x < 100.0),
        },
        Row {
            part: "insight",
            metric: "  whole process p50 / p99 ms (with connecting: TLS setup loads the CA bundle)"
                .into(),
            value: format!(
                "{} / {}",
                fmt_num(g("report_wall_p50_ms_90d"), 0),
                fmt_num(g("report_wall_p99_ms_90d"), 0)
            ),
            target: "",
            status: info(g("report_wall_p99_ms_90d")),
        },
        Row {
            part: "insight",
            metric: format!(
                "one site's {}-day daily series p50 ms (in-process)",
                fmt_num(p("insight", "/days"), 0)
            ),
            value: fmt_num(g("site_p50_ms_90d"), 2),
            target: "",
            status: info(g("site_p50_ms_90d")),
        },
        Row {
            part: "insight",
            metric: "  p99 ms".into(),
            value: fmt_num(g("site_p99_ms_90d"), 2),
            target: "< 100",
            status: check(g("site_p99_ms_90d"), |x| x < 100.0),
        },
        Row {
            part: "insight",
            metric: "`sitewatch serve`: every page and API path, server-side p99 ms (worst path)"
                .into(),
            value: fmt_num(g("serve_p99_ms"), 1),
            target: "< 100",
            status: check(g("serve_p99_ms"), |x| x < 100.0),
        },
        Row {
            part: "insight",
            metric: "  overview HTML KB".into(),
            value: fmt_num(g("serve_overview_kb"), 0),
            target: "< 300",
            status: check(g("serve_overview_kb"), |x| x < 300.0),
        },
        Row {
            part: "hooks",
            metric: "µs per hook call (HookPool::call round trip)".into(),
            value: fmt_num(g("hook_us_per_call"), 2),
            target: "≤ 10",
            status: check(g("hook_us_per_call"), |x| x <= 10.0),
        },
        Row {
            part: "hooks",
            metric: "µs per call, 64 in flight, 2 workers".into(),
            value: fmt_num(g("hook_pipelined_us_per_call"), 2),
            target: "",
            status: info(g("hook_pipelined_us_per_call")),
        },
        Row {
            part: "hooks",
            metric: "worker CPU µs per call (≈ bare Lua call)".into(),
            value: fmt_num(g("hook_worker_cpu_us_per_call"), 2),
            target: "",
            status: info(g("hook_worker_cpu_us_per_call")),
        },
        Row {
            part: "hooks",
            metric: "hand-off round trip alone, no Lua µs".into(),
            value: fmt_num(g("hook_handoff_us"), 2),
            target: "",
            status: info(g("hook_handoff_us")),
        },
    ]
}

fn status_text(s: &Status) -> &'static str {
    match s {
        Status::Met => "met",
        Status::Missed => "MISSED",
        Status::Info => "",
        Status::NoData => "no data",
    }
}

fn text_table(rows: &[Row]) -> String {
    let w = |f: &dyn Fn(&Row) -> usize, min: usize| rows.iter().map(f).max().unwrap_or(0).max(min);
    let (wp, wm, wv, wt) = (
        w(&|r| r.part.chars().count(), 4),
        w(&|r| r.metric.chars().count(), 6),
        w(&|r| r.value.chars().count(), 5),
        w(&|r| r.target.chars().count(), 6),
    );
    let pad = |s: &str, n: usize| format!("{s}{}", " ".repeat(n.saturating_sub(s.chars().count())));
    let lpad =
        |s: &str, n: usize| format!("{}{s}", " ".repeat(n.saturating_sub(s.chars().count())));
    let mut out = format!(
        "{}  {}  {}  {}  status\n",
        pad("part", wp),
        pad("metric", wm),
        lpad("value", wv),
        pad("target", wt)
    );
    for r in rows {
        out.push_str(&format!(
            "{}  {}  {}  {}  {}\n",
            pad(r.part, wp),
            pad(&r.metric, wm),
            lpad(&r.value, wv),
            pad(r.target, wt),
            status_text(&r.status)
        ));
    }
    out
}

fn markdown_table(rows: &[Row]) -> String {
    let mut out =
        String::from("| part | metric | value | target | status |\n|---|---|---:|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.part,
            r.metric.replace('|', "\\|"),
            r.value,
            r.target,
            match r.status {
                Status::Met => "met",
                Status::Missed => "**missed**",
                Status::Info => "",
                Status::NoData => "no data",
            }
        ));
    }
    out
}

/// `pipeline report [--complete]`.
pub fn run(complete: bool) -> Result<()> {
    let mut parts = Map::new();
    for part in PARTS {
        let doc = if part == "hooks" {
            hooks_figures()
        } else {
            read_part(part)
        };
        if let Some(doc) = doc {
            parts.insert(part.to_owned(), doc);
        }
    }
    // A complete run is complete only if every part produced figures.
    let complete = complete && parts.len() == PARTS.len();
    let s = summary(&parts, complete);
    let path = common::out_dir().join("summary.json");
    std::fs::create_dir_all(common::out_dir())?;
    let mut full = s.clone();
    full["parts"] = Value::Object(parts.clone());
    std::fs::write(&path, serde_json::to_string_pretty(&full)? + "\n")?;
    let rows = rows(&s, &parts);
    println!();
    print!("{}", text_table(&rows));
    println!("\nwrote {}", path.display());
    if complete {
        let doc = common::root().join("docs/performance.md");
        update_doc(&doc, &s, &parts, &rows)?;
        println!("updated {}", doc.display());
        // The capacity curve the saturate part drew.
        let chart = common::root().join("docs/saturate.svg");
        std::fs::copy(common::out_dir().join("saturate.svg"), &chart)
            .with_context(|| format!("copying the saturate chart to {}", chart.display()))?;
        println!("updated {}", chart.display());
    } else {
        println!("(docs/performance.md is only rewritten after a complete `dev/bench` run)");
    }
    Ok(())
}

fn update_doc(path: &Path, s: &Value, parts: &Map<String, Value>, rows: &[Row]) -> Result<()> {
    let m = &s["machine"];
    // When the last part finished (the run's date, not the report's).
    let date = parts
        .values()
        .filter_map(|p| p["finished_at"].as_str())
        .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .max()
        .map_or_else(chrono::Utc::now, |t| t.with_timezone(&chrono::Utc))
        .format("%Y-%m-%d %H:%M UTC");
    let pf = |part: &str, pointer: &str| {
        parts
            .get(part)
            .and_then(|v| v["figures"].pointer(pointer))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut section = format!(
        "{BEGIN}\n\
         ## Latest figures\n\n\
         Measured {date} by `dev/bench` on {cpu}, {cores} cores, {mem} GiB RAM, {os} (kernel {kernel}); \
         {rustc}; nginx {nginx}; wrk {wrk}; PostgreSQL {pg}; Kafka {kafka} (the `dev/stack` broker). \
         All on one machine, everything on 127.0.0.1. Reproduce with `dev/bench` (about {MINUTES} minutes; \
         `dev/bench probe|scale|saturate|ingest|e2e|alert|insight|hooks` runs one part); raw figures in `target/bench/summary.json`.\n\n",
        cpu = m["cpu"].as_str().unwrap_or("?"),
        cores = m["cores"],
        mem = m["memory_gib"],
        os = m["os"].as_str().unwrap_or("?"),
        kernel = m["kernel"].as_str().unwrap_or("?"),
        rustc = m["rustc"].as_str().unwrap_or("?"),
        nginx = m["nginx"].as_str().unwrap_or("?"),
        wrk = m["wrk"].as_str().unwrap_or("wrk"),
        pg = m["postgresql"].as_str().unwrap_or("?"),
        kafka = m["kafka"].as_str().unwrap_or("?"),
    );
    section.push_str(&markdown_table(rows));
    let num =
        |part: &str, pointer: &str, decimals: usize| fmt_num(pf(part, pointer).as_f64(), decimals);
    let wrk_runs = pf("probe", "/wrk_runs_per_s")
        .as_array()
        .map(|runs| {
            runs.iter()
                .map(|r| fmt_num(r.as_f64(), 0))
                .collect::<Vec<_>>()
                .join(" and ")
        })
        .unwrap_or_else(|| "n/a".into());
    section.push_str(&format!(
        "\nDetails of this run. Probe: lag, CPU and missed ticks at {offered}/s offered; the \
         maximum is the achieved rate with {saturation}/s offered; wrk ran before and after \
         sitewatch ({wrk_runs} req/s, the ceiling is their mean); nginx used {nginx_cpu} cores \
         at {offered}/s. Scale: {scale_results} results in the window, VmRSS at the end \
         {rss_end} MiB. Ingest: {rows} rows of {bytes} JSON bytes on average, median of {rounds} \
         rounds (COPY first, then sitewatch first), per-round ratios {ratios}; consume used \
         {ccpu} cores and its PostgreSQL backend {pgcpu}, the COPY loader's backend {copy_pgcpu}. \
         E2e: {e2e_count} results; {method}. Alert: {alert_switched} of {alert_sites} sites \
         switched down over {alert_spread} s, then up (rule after = 1, recover_after = 1); {alert_method}. {insight}\n",
        offered = num("probe", "/sitewatch/offered_per_s", 0),
        saturation = num("probe", "/saturation/offered_per_s", 0),
        nginx_cpu = num("probe", "/sitewatch/nginx_cpu_cores", 2),
        scale_results = num("scale", "/results_in_window", 0),
        rss_end = num("scale", "/rss_end_mib", 1),
        rows = num("ingest", "/rows", 0),
        bytes = num("ingest", "/mean_json_bytes", 0),
        rounds = num("ingest", "/rounds", 0),
        ratios = pf("ingest", "/round_ratios"),
        ccpu = num("ingest", "/sitewatch/consume_cpu_share", 2),
        pgcpu = num("ingest", "/sitewatch/pg_backend_cpu_share", 2),
        copy_pgcpu = num("ingest", "/ceiling/pg_backend_cpu_share", 2),
        e2e_count = num("e2e", "/e2e_ms/count", 0),
        method = pf("e2e", "/method").as_str().unwrap_or("?"),
        alert_switched = num("alert", "/switched_down", 0),
        alert_sites = num("alert", "/sites", 0),
        alert_spread = num("alert", "/spread_s", 0),
        alert_method = pf("alert", "/method").as_str().unwrap_or("?"),
        insight = insight_details(&pf("insight", "")),
    ));
    section.push_str(END);
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{section}{}", &old[..b], &old[e + END.len()..]),
        _ if old.is_empty() => format!("# Performance\n\n{section}\n"),
        _ => format!("{}\n{section}\n", old.trim_end()),
    };
    std::fs::write(path, new)?;
    Ok(())
}

/// The insight part's sentence of "Details of this run": the data set, where a report's wall
/// time went, and what the server spent on each of its queries.
fn insight_details(insight: &Value) -> String {
    if insight.is_null() {
        return String::new();
    }
    let num = |pointer: &str, decimals: usize| {
        fmt_num(insight.pointer(pointer).and_then(Value::as_f64), decimals)
    };
    let gib = |table: &str| {
        fmt_num(
            insight
                .pointer(&format!("/build/tables/{table}/mib"))
                .and_then(Value::as_f64)
                .map(|mib| mib / 1024.0),
            2,
        )
    };
    let queries = insight
        .pointer("/report/server/queries")
        .and_then(Value::as_array)
        .map(|queries| {
            queries
                .iter()
                .map(|q| {
                    let jit = match q["jit_ms"].as_f64() {
                        Some(ms) => format!(", JIT {} ms", fmt_num(Some(ms), 0)),
                        None => String::new(),
                    };
                    format!(
                        "{} {} rows in {} ms ({} ms in the plan{jit}, the rest producing and \
                         sending the rows)",
                        q["reads"].as_str().unwrap_or("?"),
                        fmt_num(q["rows"].as_f64(), 0),
                        fmt_num(q["duration_ms"].as_f64(), 0),
                        fmt_num(q["plan_ms"].as_f64(), 0),
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| "n/a".into());
    format!(
        "Insight: a fresh database of {sites} sites × {days} days, built server-side in {build} s: \
         {hourly} hourly rollups ({hourly_gib} GiB, histograms of {hist} entries on average), \
         {daily} daily ({daily_gib} GiB), {changes} state changes, {raw} raw rows of the last \
         {raw_days} days ({raw_gib} GiB). The report read {rollup_rows} rollup rows; {runs} runs \
         after {warmup} untimed; per run (p50) {before} ms before `report::report` (process start, \
         sites.lua, TLS connect; `sitewatch validate` of the same file takes {validate} ms, a connection \
         {connect} ms in-process) and {after} ms \
         after it (printing, exit); server side, once with auto_explain: {queries}. The site \
         series: {site_queries} random sites over one connection, {site_rows} rows each.",
        sites = num("/sites", 0),
        days = num("/days", 0),
        build = num("/build/seconds", 0),
        hourly = num("/build/tables/rollup_hourly/rows", 0),
        hourly_gib = gib("rollup_hourly"),
        hist = num("/build/mean_hist_entries/hourly_total_hist", 0),
        daily = num("/build/tables/rollup_daily/rows", 0),
        daily_gib = gib("rollup_daily"),
        changes = num("/build/tables/state_changes/rows", 0),
        raw = num("/build/tables/check_results/rows", 0),
        raw_days = num("/raw_days", 0),
        raw_gib = gib("check_results"),
        rollup_rows = num("/report/rollup_rows", 0),
        runs = num("/report/runs", 0),
        warmup = num("/report/warmup_runs", 0),
        before = num("/report/before_library_ms_p50", 1),
        validate = num("/report/validate_config_ms_p50", 1),
        connect = num("/report/connect_ms_p50_in_process", 1),
        after = num("/report/after_library_ms_p50", 1),
        site_queries = num("/site_series/queries", 0),
        site_rows = num("/site_series/rows_per_query", 0),
    )
}
