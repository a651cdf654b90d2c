//! `dev/bench`'s driver: measures sitewatch's pipeline on this machine, one part per invocation.
//!
//! ```text
//! pipeline probe    schedule + probe in-process vs. wrk against a local nginx   → target/bench/probe.json
//! pipeline scale    real `sitewatch produce`, 10,000 sites @ 10 s, Kafka        → target/bench/scale.json
//! pipeline saturate real `sitewatch produce` at 2k–40k probes/s offered and 4× its best,
//!                   with and without a hook; wrk ceiling, blackbox_exporter     → target/bench/saturate.json
//! pipeline ingest   1M results → real `sitewatch consume` vs. binary COPY       → target/bench/ingest.json
//! pipeline e2e      real `sitewatch run`, 1,000 sites @ 1 s, probe → row        → target/bench/e2e.json
//! pipeline alert    real `sitewatch run`, 1,000 sites @ 1 s, 200 go down:
//!                   failing check finished → webhook received                  → target/bench/alert.json
//! pipeline insight  90 days × 1,000 sites of rollups: real `sitewatch report`,
//!                   one site's daily series                                    → target/bench/insight.json
//! pipeline report [--complete]   summary.json, the table, docs/performance.md
//! pipeline chart    redraws target/bench/saturate.svg from saturate.json
//! pipeline rowcost  the consumer's per-row CPU, step by step (diagnostic, prints JSON)
//! pipeline sample   one generated ingest message (prints JSON)
//! ```
//!
//! `--quick` shrinks every part (smoke test of the harness, figures meaningless). Without a part
//! it prints this usage and exits 0, so `cargo bench` or `cargo test --all-targets` never start a
//! long run by accident. The per-call hook cost is benches/hooks.rs (criterion).

// summary() in report.rs is one large json! literal.
#![recursion_limit = "256"]

mod alert;
mod common;
mod e2e;
mod ingest;
mod insight;
mod probe;
mod report;
mod saturate;
mod scale;

use std::process::ExitCode;

const USAGE: &str = "usage: pipeline (probe|scale|saturate|ingest|e2e|alert|insight|report [--complete]|chart|rowcost|sample) [--quick]  — run it through dev/bench";

fn main() -> ExitCode {
    // cargo bench appends --bench; criterion-style filters are not used here.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let quick = args.iter().any(|a| a == "--quick");
    let complete = args.iter().any(|a| a == "--complete");
    let Some(part) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("{USAGE}");
        return ExitCode::SUCCESS;
    };
    if let Err(error) = std::fs::create_dir_all(common::out_dir()) {
        eprintln!(
            "[bench] cannot create {}: {error}",
            common::out_dir().display()
        );
        return ExitCode::FAILURE;
    }
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let figures = match part.as_str() {
        "probe" => probe::run(&if quick {
            probe::Options::quick()
        } else {
            probe::Options::full()
        }),
        "scale" => runtime().map_err(anyhow::Error::from).and_then(|rt| {
            rt.block_on(scale::run(&if quick {
                scale::Options::quick()
            } else {
                scale::Options::full()
            }))
        }),
        "saturate" => runtime().map_err(anyhow::Error::from).and_then(|rt| {
            rt.block_on(saturate::run(&if quick {
                saturate::Options::quick()
            } else {
                saturate::Options::full()
            }))
        }),
        "ingest" => runtime().map_err(anyhow::Error::from).and_then(|rt| {
            rt.block_on(ingest::run(&if quick {
                ingest::Options::quick()
            } else {
                ingest::Options::full()
            }))
        }),
        "e2e" => runtime().map_err(anyhow::Error::from).and_then(|rt| {
            rt.block_on(e2e::run(&if quick {
                e2e::Options::quick()
            } else {
                e2e::Options::full()
            }))
        }),
        "alert" => runtime().map_err(anyhow::Error::from).and_then(|rt| {
            rt.block_on(alert::run(&if quick {
                alert::Options::quick()
            } else {
                alert::Options::full()
            }))
        }),
        "insight" => runtime().map_err(anyhow::Error::from).and_then(|rt| {
            rt.block_on(insight::run(&if quick {
                insight::Options::quick()
            } else {
                insight::Options::full()
            }))
        }),
        "rowcost" => {
            return match ingest::row_cost() {
                Ok(figures) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&figures).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("[bench] rowcost failed: {error:#}");
                    ExitCode::FAILURE
                }
            };
        }
        "chart" => {
            // Redraws target/bench/saturate.svg from target/bench/saturate.json.
            let drawn = std::fs::read(common::out_dir().join("saturate.json"))
                .map_err(anyhow::Error::from)
                .and_then(|bytes| Ok(serde_json::from_slice::<serde_json::Value>(&bytes)?))
                .and_then(|doc| {
                    let path = common::out_dir().join("saturate.svg");
                    std::fs::write(&path, saturate::chart(&doc["figures"]))?;
                    Ok(path)
                });
            return match drawn {
                Ok(path) => {
                    say!("chart: {}", path.display());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("[bench] chart failed: {error:#}");
                    ExitCode::FAILURE
                }
            };
        }
        "sample" => {
            // One generated ingest message, to eyeball what the ingest part publishes.
            let result = ingest::sample_result(7, chrono::Utc::now());
            println!(
                "{}",
                serde_json::to_string_pretty(&result).unwrap_or_default()
            );
            return ExitCode::SUCCESS;
        }
        "report" => {
            return match report::run(complete) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("[bench] report failed: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        other => {
            eprintln!("unknown part {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match figures.and_then(|mut figures| {
        if quick {
            figures["quick"] = serde_json::Value::Bool(true);
        }
        common::write_part(part, figures)
    }) {
        Ok(path) => {
            say!("{part}: figures in {}", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("[bench] {part} failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}
