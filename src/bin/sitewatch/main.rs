//! The `sitewatch` binary: parse arguments, set up logging and signals, start the runtime,
//! dispatch to the library, exit with a code from [`exit::Exit`].

mod cli;
mod commands;
mod exit;
mod signals;
mod telemetry;

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser as _;
use sitewatch::metrics::SiteMetrics;
use sitewatch::{alert, consume, produce, run};

use cli::{Cli, Command};
use exit::{fail, finish, Exit};

/// mimalloc rather than glibc's allocator: decoding a result allocates dozens of small strings
/// and values, and under a backlog the consumer spent a fifth of its CPU in malloc and free
/// (perf, `dev/bench ingest`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `arena_eager_commit` option: its index in `mi_option_e` (mimalloc.h, v2 and v3
/// alike; libmimalloc-sys names no constant for it).
#[cfg(target_os = "linux")]
const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;

#[cfg(target_os = "linux")]
unsafe extern "C" {
    // From the mimalloc library the allocator above links.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// Arenas committed as needed, not at once (mimalloc's default on Linux): measured with the same
/// CPU per result, it keeps a smaller resident set — 10,000 sites at 10 s peaked at 45–47 MiB
/// instead of 56–65, 20,000 at 1 s at 79 instead of 97 (docs/performance.md). Setting it in
/// `main` is too late (the first arena is reserved by allocations made before `main`, and took
/// the default: measured), so it runs as a constructor ahead of every other one, mimalloc's own
/// initialisation included (priority 100 sorts before the 101 that mimalloc's uses). It
/// overrides `MIMALLOC_ARENA_EAGER_COMMIT`.
#[cfg(target_os = "linux")]
extern "C" fn tune_allocator() {
    // SAFETY: sets one integer in mimalloc's static option table, which needs no
    // initialisation; 0 is a valid value for this option.
    unsafe { mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array.00100"]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

/// One arm per command (a screen, a little over 80 lines).
fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return match error.use_stderr() {
                true => Exit::Usage.into(),
                false => Exit::Ok.into(), // --help, --version
            };
        }
    };
    telemetry::init_tracing(cli.log_format);
    let env_file = cli.env_file.as_ref();
    // Filled by the producer (`produce`, `run`), rendered by the metrics endpoint.
    let site_metrics = SiteMetrics::default();
    let exit = match cli.command {
        Command::Init => commands::init(std::path::Path::new(".")),
        Command::Validate(config) => commands::validate(&config.config),
        Command::Check {
            url: Some(url),
            expect_status,
            body,
            ca,
            json,
            ..
        } => block_on(commands::check_url(
            &url,
            &commands::UrlCheck {
                status: expect_status.as_deref(),
                body: body.as_deref(),
                ca: ca.as_deref(),
            },
            json,
        )),
        Command::Check {
            config,
            sites,
            json,
            max_per_host,
            ..
        } => block_on(commands::check(&config.config, &sites, json, max_per_host)),
        Command::Produce {
            produce,
            kafka,
            metrics_addr,
        } => match kafka.settings(env_file) {
            Err(error) => fail(&error),
            Ok(kafka) => serve(metrics_addr, &site_metrics, {
                let options = produce.options(site_metrics.clone());
                async move {
                    let (reload, shutdown) = (signals::reload(), signals::shutdown());
                    finish(produce::produce(&kafka, options, reload, shutdown).await)
                }
            }),
        },
        Command::Consume {
            consume,
            kafka,
            metrics_addr,
        } => match kafka.settings_with_database(env_file) {
            Err(error) => fail(&error),
            Ok((kafka, db)) => serve(metrics_addr, &site_metrics, async move {
                finish(consume::run(&kafka, &db, consume.options(), signals::shutdown()).await)
            }),
        },
        Command::Run {
            produce,
            consume,
            kafka,
            serve_addr,
            no_serve,
            metrics_addr,
        } => match kafka.settings_with_database(env_file) {
            Err(error) => fail(&error),
            Ok((kafka, db)) => serve(metrics_addr, &site_metrics, {
                let (produce, consume) = (produce.options(site_metrics.clone()), consume.options());
                let serve_addr = (!no_serve).then_some(serve_addr);
                async move {
                    let (reload, shutdown) = (signals::reload(), signals::shutdown());
                    let ran = run::run(&kafka, &db, produce, consume, serve_addr, reload, shutdown);
                    finish(ran.await)
                }
            }),
        },
        Command::Serve(args) => match cli::database_settings(env_file) {
            Err(error) => fail(&error),
            Ok(db) => block_on(async move {
                finish(sitewatch::serve::serve(&db, args.options(), signals::shutdown()).await)
            }),
        },
        Command::Rollup {
            command: cli::RollupCommand::Rebuild { from, to },
        } => block_on(commands::rebuild(env_file, from, to)),
        Command::Alert(args) => match args.kafka.settings_with_database(env_file) {
            Err(error) => fail(&error),
            Ok((kafka, db)) => serve(args.metrics_addr, &site_metrics, async move {
                let (options, kafka) = args.options(kafka);
                finish(alert::run(&kafka, &db, options, signals::shutdown()).await)
            }),
        },
        Command::Completions { shell } => commands::completions(shell),
        Command::Man => commands::man(),
        Command::Migrate => block_on(commands::migrate(env_file)),
        Command::Prune(args) => block_on(commands::prune(env_file, args.retention())),
        Command::Report(args) => block_on(commands::report(env_file, &args)),
    };
    exit.into()
}

/// Runs `work` on a fresh multi-threaded runtime.
fn block_on(work: impl Future<Output = Exit>) -> Exit {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(work),
        Err(error) => {
            let _ = writeln!(
                std::io::stderr(),
                "sitewatch: cannot start the async runtime: {error}"
            );
            Exit::Failure
        }
    }
}

/// [`block_on`] for the long-running roles: the metrics endpoint first, then `work`.
fn serve(
    metrics_addr: Option<SocketAddr>,
    sites: &SiteMetrics,
    work: impl Future<Output = Exit>,
) -> Exit {
    let sites = sites.clone();
    block_on(async move {
        match telemetry::serve_metrics(metrics_addr, sites).await {
            Ok(()) => work.await,
            Err(error) => fail(&error),
        }
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn the_allocator_commits_arenas_as_needed() {
        // SAFETY: reads one integer from mimalloc's option table.
        let value = unsafe { super::mi_option_get(super::MI_OPTION_ARENA_EAGER_COMMIT) };
        assert_eq!(value, 0, "tune_allocator did not run before main");
    }
}
