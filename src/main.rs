//! The `sitewatch` binary: parse arguments, set up logging and the shutdown signal, call the
//! library. Exit codes: 0 fine, 1 a checked site is down (`check`), 2 invalid configuration,
//! 3 any other failure (unreachable broker or database, bad settings).

use std::path::PathBuf;
use std::process::ExitCode;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sitewatch::commands::{self, ExitCode as CheckExit};
use sitewatch::consume::{self, ConsumeOptions};
use sitewatch::error::ErrorChain;
use sitewatch::monitor::{self, ProduceOptions};
use sitewatch::publish::{self, TopicSpec};
use sitewatch::schedule::{self, Limits, Shard};
use sitewatch::settings::{self, DatabaseSettings};
use sitewatch::store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long `run` keeps consuming after the producer stopped, to store the results it flushed
/// (what is left is stored, exactly once, at the next start).
const RUN_DRAIN: Duration = Duration::from_secs(3);

/// Exit code for sitewatch's own failures (as opposed to a down site or an invalid config).
const EXIT_FAILURE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "sitewatch",
    version,
    about = "Website-availability monitor: sites.lua in, Kafka and PostgreSQL out"
)]
struct Cli {
    /// Read KEY=VALUE settings from this file (variables already set in the environment win).
    #[arg(long, global = true, value_name = "PATH")]
    env_file: Option<PathBuf>,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check sites.lua and report every error (exit 0 valid, 2 invalid).
    Validate(ConfigArg),
    /// Probe sites once and print the results (exit 0 none down, 1 some down, 2 invalid config).
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this site (repeatable).
        #[arg(long = "site", value_name = "NAME")]
        sites: Vec<String>,
        /// One CheckResult JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Probe sites on schedule and publish every result to Kafka.
    Produce {
        #[command(flatten)]
        produce: ProduceArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9464.
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<SocketAddr>,
    },
    /// Store results from Kafka into PostgreSQL, exactly once.
    Consume {
        #[command(flatten)]
        consume: ConsumeArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9464.
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<SocketAddr>,
    },
    /// Producer and consumer in one process: the small-deployment mode.
    Run {
        #[command(flatten)]
        produce: ProduceArgs,
        #[command(flatten)]
        consume: ConsumeArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9464.
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<SocketAddr>,
    },
    /// Apply pending database migrations (SITEWATCH_DATABASE_URL).
    Migrate,
    /// Delete stored results older than a duration, in batches (e.g. --older-than 30d).
    Prune {
        #[arg(long, value_name = "DURATION", value_parser = parse_days)]
        older_than: chrono::Duration,
    },
}

/// Consumer flags (`consume`, `run`).
#[derive(Args)]
struct ConsumeArgs {
    /// Do not apply pending migrations at startup.
    #[arg(long)]
    no_migrate: bool,
    /// Messages per transaction at most.
    #[arg(long, default_value_t = consume::DEFAULT_MAX_BATCH_ROWS)]
    batch_rows: usize,
    /// Milliseconds a batch may wait to fill before it is written.
    #[arg(long, default_value_t = consume::DEFAULT_MAX_BATCH_WAIT.as_millis() as u64)]
    batch_wait_ms: u64,
}

impl ConsumeArgs {
    fn options(&self) -> ConsumeOptions {
        ConsumeOptions {
            max_batch_rows: self.batch_rows,
            max_batch_wait: Duration::from_millis(self.batch_wait_ms),
            migrate: !self.no_migrate,
        }
    }
}

/// `30d`, `12h`, `90m`: the age for `prune`.
fn parse_days(text: &str) -> Result<chrono::Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = number
        .parse()
        .map_err(|_| format!("expected e.g. 30d, got {text:?}"))?;
    match unit {
        "d" => Ok(chrono::Duration::days(n)),
        "h" => Ok(chrono::Duration::hours(n)),
        "m" => Ok(chrono::Duration::minutes(n)),
        _ => Err(format!("unit must be d, h or m, got {text:?}")),
    }
}

/// Kafka connection flags; each overrides the environment variable of the same meaning.
#[derive(Args, Default)]
struct KafkaArgs {
    /// Bootstrap servers, host:port[,host:port] (SITEWATCH_KAFKA_BROKERS).
    #[arg(long, value_name = "LIST")]
    kafka_brokers: Option<String>,
    /// Topic (SITEWATCH_KAFKA_TOPIC, default sitewatch.checks).
    #[arg(long, value_name = "NAME")]
    kafka_topic: Option<String>,
    /// plaintext | ssl | sasl_ssl (SITEWATCH_KAFKA_SECURITY_PROTOCOL).
    #[arg(long, value_name = "PROTOCOL")]
    kafka_security_protocol: Option<String>,
    /// CA certificate, PEM (SITEWATCH_KAFKA_SSL_CA).
    #[arg(long, value_name = "PATH")]
    kafka_ssl_ca: Option<String>,
    /// Client certificate, PEM (SITEWATCH_KAFKA_SSL_CERT).
    #[arg(long, value_name = "PATH")]
    kafka_ssl_cert: Option<String>,
    /// Client key, PEM (SITEWATCH_KAFKA_SSL_KEY).
    #[arg(long, value_name = "PATH")]
    kafka_ssl_key: Option<String>,
    /// SASL mechanism, e.g. SCRAM-SHA-256 (SITEWATCH_KAFKA_SASL_MECHANISM).
    #[arg(long, value_name = "NAME")]
    kafka_sasl_mechanism: Option<String>,
    /// SASL user (SITEWATCH_KAFKA_SASL_USERNAME).
    #[arg(long, value_name = "USER")]
    kafka_sasl_username: Option<String>,
    /// SASL password (SITEWATCH_KAFKA_SASL_PASSWORD; prefer the variable over the flag).
    #[arg(long, value_name = "PASSWORD")]
    kafka_sasl_password: Option<String>,
    /// Consumer group (SITEWATCH_KAFKA_GROUP, default sitewatch).
    #[arg(long, value_name = "NAME")]
    kafka_group: Option<String>,
    /// Any other librdkafka property, key=value (repeatable).
    #[arg(long = "kafka-opt", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    kafka_opts: Vec<(String, String)>,
}

impl KafkaArgs {
    /// Flags override the environment: write them into it, then read settings from it once.
    fn settings(&self) -> Result<settings::KafkaSettings, settings::SettingsError> {
        let pairs = [
            ("SITEWATCH_KAFKA_BROKERS", &self.kafka_brokers),
            ("SITEWATCH_KAFKA_TOPIC", &self.kafka_topic),
            (
                "SITEWATCH_KAFKA_SECURITY_PROTOCOL",
                &self.kafka_security_protocol,
            ),
            ("SITEWATCH_KAFKA_SSL_CA", &self.kafka_ssl_ca),
            ("SITEWATCH_KAFKA_SSL_CERT", &self.kafka_ssl_cert),
            ("SITEWATCH_KAFKA_SSL_KEY", &self.kafka_ssl_key),
            ("SITEWATCH_KAFKA_SASL_MECHANISM", &self.kafka_sasl_mechanism),
            ("SITEWATCH_KAFKA_SASL_USERNAME", &self.kafka_sasl_username),
            ("SITEWATCH_KAFKA_SASL_PASSWORD", &self.kafka_sasl_password),
            ("SITEWATCH_KAFKA_GROUP", &self.kafka_group),
        ];
        for (name, value) in pairs {
            if let Some(value) = value {
                std::env::set_var(name, value);
            }
        }
        let mut settings = settings::KafkaSettings::from_env()?;
        settings.extra = self.kafka_opts.clone();
        Ok(settings)
    }

    /// Kafka and PostgreSQL settings together, for the commands that need both.
    fn settings_with_database(
        &self,
    ) -> Result<(settings::KafkaSettings, DatabaseSettings), settings::SettingsError> {
        Ok((self.settings()?, DatabaseSettings::from_env()?))
    }
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// Producer flags (`produce`, `run`).
#[derive(Args)]
struct ProduceArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Probe only shard i of n (stable hash of the site name), e.g. 0/3.
    #[arg(long, default_value = "0/1", value_name = "I/N")]
    shard: Shard,
    /// Checks running at once, all sites together.
    #[arg(long, default_value_t = schedule::DEFAULT_MAX_CONCURRENCY)]
    max_concurrency: usize,
    /// Checks running at once against one host:port.
    #[arg(long, default_value_t = schedule::DEFAULT_MAX_PER_HOST)]
    max_per_host: usize,
    /// Partitions of the topic when sitewatch creates it.
    #[arg(long, default_value_t = TopicSpec::default().partitions)]
    topic_partitions: i32,
    /// Replication factor of the topic when sitewatch creates it.
    #[arg(long, default_value_t = TopicSpec::default().replication)]
    topic_replication: i32,
    /// Seconds shutdown waits for queued results to reach Kafka.
    #[arg(long, default_value_t = publish::DEFAULT_FLUSH_TIMEOUT.as_secs())]
    flush_timeout_secs: u64,
    /// Do not reload when sites.lua or scripts/ change (SIGHUP still reloads).
    #[arg(long)]
    no_watch: bool,
}

impl ProduceArgs {
    fn options(&self) -> ProduceOptions {
        ProduceOptions {
            config_path: self.config.config.clone(),
            shard: self.shard,
            limits: Limits {
                max_concurrency: self.max_concurrency,
                max_per_host: self.max_per_host,
            },
            topic: TopicSpec {
                partitions: self.topic_partitions,
                replication: self.topic_replication,
            },
            flush_timeout: Duration::from_secs(self.flush_timeout_secs),
            watch: !self.no_watch,
        }
    }
}

#[derive(Args)]
struct ConfigArg {
    /// The sites file.
    #[arg(long, default_value = "sites.lua", value_name = "PATH")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(path) = &cli.env_file {
        if let Err(error) = settings::load_env_file(path) {
            eprintln!("sitewatch: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    init_tracing(cli.log_format);
    match cli.command {
        Command::Validate(config) => exit(commands::validate(&config.config)),
        Command::Check {
            config,
            sites,
            json,
        } => {
            let Ok(config) = commands::load_or_report(&config.config) else {
                return exit(CheckExit::ConfigInvalid);
            };
            match runtime().block_on(commands::check(&config, &sites, json)) {
                Ok(code) => exit(code),
                // Naming a site the file does not define is a configuration mistake too.
                Err(error @ commands::CheckError::UnknownSite(_)) => {
                    eprintln!("sitewatch: {error}");
                    exit(CheckExit::ConfigInvalid)
                }
                Err(error) => fail(&error),
            }
        }
        Command::Produce {
            produce,
            kafka,
            metrics_addr,
        } => {
            let kafka = match kafka.settings() {
                Ok(kafka) => kafka,
                Err(error) => return fail(&error),
            };
            runtime().block_on(async {
                if let Err(error) = serve_metrics(metrics_addr) {
                    return fail(&error);
                }
                let shutdown = shutdown_signal();
                match monitor::produce(&kafka, produce.options(), reload_signal(), shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => fail(&error),
                }
            })
        }
        Command::Consume {
            consume,
            kafka,
            metrics_addr,
        } => {
            let (kafka, db) = match kafka.settings_with_database() {
                Ok(settings) => settings,
                Err(error) => return fail(&error),
            };
            runtime().block_on(async {
                if let Err(error) = serve_metrics(metrics_addr) {
                    return fail(&error);
                }
                match consume::run(&kafka, &db, consume.options(), shutdown_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => fail(&error),
                }
            })
        }
        Command::Run {
            produce,
            consume,
            kafka,
            metrics_addr,
        } => {
            let (kafka, db) = match kafka.settings_with_database() {
                Ok(settings) => settings,
                Err(error) => return fail(&error),
            };
            runtime().block_on(async {
                if let Err(error) = serve_metrics(metrics_addr) {
                    return fail(&error);
                }
                let shutdown = shutdown_signal();
                // The consumer stops after the producer, so the results flushed at shutdown are
                // stored too; either half failing stops the other.
                let consumer_stop = CancellationToken::new();
                let consumer = async {
                    let result =
                        consume::run(&kafka, &db, consume.options(), consumer_stop.clone()).await;
                    shutdown.cancel();
                    result.map_err(|e| Box::new(e) as Box<dyn std::error::Error>)
                };
                let producer = async {
                    let result = monitor::produce(
                        &kafka,
                        produce.options(),
                        reload_signal(),
                        shutdown.clone(),
                    )
                    .await;
                    tokio::select! {
                        _ = tokio::time::sleep(RUN_DRAIN) => {}
                        _ = consumer_stop.cancelled() => {}
                    }
                    consumer_stop.cancel();
                    result.map_err(|e| Box::new(e) as Box<dyn std::error::Error>)
                };
                match tokio::join!(producer, consumer) {
                    (Ok(()), Ok(())) => ExitCode::SUCCESS,
                    (Err(error), _) | (_, Err(error)) => fail(error.as_ref()),
                }
            })
        }
        Command::Migrate => {
            let db = match DatabaseSettings::from_env() {
                Ok(db) => db,
                Err(error) => return fail(&error),
            };
            runtime().block_on(async {
                let mut client = match store::connect(&db).await {
                    Ok(client) => client,
                    Err(error) => return fail(&error),
                };
                match store::migrate(&mut client).await {
                    Ok(report) => {
                        for applied in &report.applied {
                            println!("applied {:04} {}", applied.version, applied.name);
                        }
                        println!(
                            "{} migration(s) applied, {} already applied",
                            report.applied.len(),
                            report.already_applied
                        );
                        ExitCode::SUCCESS
                    }
                    Err(error) => fail(&error),
                }
            })
        }
        Command::Prune { older_than } => {
            let db = match DatabaseSettings::from_env() {
                Ok(db) => db,
                Err(error) => return fail(&error),
            };
            runtime().block_on(async {
                let client = match store::connect(&db).await {
                    Ok(client) => client,
                    Err(error) => return fail(&error),
                };
                match store::prune(&client, older_than).await {
                    Ok(rows) => {
                        println!(
                            "deleted {rows} result(s) older than {} hour(s)",
                            older_than.num_hours()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(error) => fail(&error),
                }
            })
        }
    }
}

/// Cancelled on the first SIGINT or SIGTERM; a second one exits at once.
fn shutdown_signal() -> CancellationToken {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        for count in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if count == 0 {
                tracing::info!("shutdown requested (again to exit at once)");
                cancel.cancel();
            } else {
                tracing::warn!("second signal: exiting at once");
                std::process::exit(130);
            }
        }
    });
    token
}

/// One message per SIGHUP.
fn reload_signal() -> mpsc::Receiver<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot install the SIGHUP handler");
            return;
        };
        while hup.recv().await.is_some() {
            // A reload already pending covers this one too.
            let _ = tx.try_send(());
        }
    });
    rx
}

/// Histogram buckets (seconds) for probe durations, schedule lag and batch latency.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}")]
struct MetricsError {
    addr: SocketAddr,
    #[source]
    source: metrics_exporter_prometheus::BuildError,
}

fn serve_metrics(addr: Option<SocketAddr>) -> Result<(), MetricsError> {
    let Some(addr) = addr else { return Ok(()) };
    let exporter = metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(SECONDS_BUCKETS)
        .and_then(|b| b.install())
        .map_err(|source| MetricsError { addr, source });
    exporter?;
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sitewatch: cannot start the async runtime: {error}");
            std::process::exit(EXIT_FAILURE.into());
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn exit(code: CheckExit) -> ExitCode {
    ExitCode::from(code as u8)
}

/// Prints the error with its chain of causes; exit 2 for an invalid configuration (as
/// `validate` and `check` do), else the failure exit code.
fn fail(error: &(dyn std::error::Error + 'static)) -> ExitCode {
    eprintln!("sitewatch: {}", ErrorChain(error));
    match error.downcast_ref::<monitor::MonitorError>() {
        Some(monitor::MonitorError::Config { .. }) => exit(CheckExit::ConfigInvalid),
        _ => ExitCode::from(EXIT_FAILURE),
    }
}
