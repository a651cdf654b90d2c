//! The command line: clap types, the flags shared by several commands flattened in, and how
//! flags become the library's options and settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sitewatch::alert::AlertOptions;
use sitewatch::consume::{self, ConsumeOptions};
use sitewatch::metrics::SiteMetrics;
use sitewatch::produce::ProduceOptions;
use sitewatch::publish::{self, TopicSpec};
use sitewatch::report::{self, Span};
use sitewatch::schedule::{self, Limits, Shard};
use sitewatch::serve::{self, ServeOptions};
use sitewatch::settings::{DatabaseSettings, KafkaSettings, SettingsError, Sources};
use sitewatch::store::{Retention, DEFAULT_HOURLY_ROLLUP_RETENTION};

#[derive(Parser)]
#[command(
    name = "sitewatch",
    version,
    about = "Website-availability monitor: sites.lua in, Kafka and PostgreSQL out"
)]
pub struct Cli {
    /// Read KEY=VALUE settings from this file (variables already set in the environment win).
    #[arg(long, global = true, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Write a commented starter sites.lua and the editor definitions sitewatch.d.lua into the
    /// current directory (exit 1, nothing written, if either exists).
    Init,
    /// Check sites.lua and report every error (exit 0 valid, 2 invalid).
    Validate(ConfigArg),
    /// Probe sites once and print the results (exit 0 none down, 1 some down, 2 invalid config).
    /// With a URL, probe that URL alone, no sites.lua needed, and draw its phases as a
    /// waterfall.
    Check {
        /// Probe this http(s) URL instead of the sites of sites.lua.
        #[arg(value_name = "URL", conflicts_with_all = ["config", "sites"])]
        url: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
        /// Only this site (repeatable).
        #[arg(long = "site", value_name = "NAME")]
        sites: Vec<String>,
        /// With URL: the status the final response must have, e.g. 200 or 3xx (default: any
        /// 2xx).
        #[arg(long, value_name = "STATUS", requires = "url")]
        expect_status: Option<String>,
        /// With URL: a regex the body must match.
        #[arg(long, value_name = "REGEX", requires = "url")]
        body: Option<String>,
        /// With URL: a PEM file of CA certificates trusted besides the system roots (tls.ca).
        #[arg(long, value_name = "PATH", requires = "url")]
        ca: Option<PathBuf>,
        /// One CheckResult JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Checks running at once against one host:port (1-10000).
        #[arg(long, default_value_t = schedule::DEFAULT_MAX_PER_HOST,
              value_parser = clap::value_parser!(u64).range(1..=10_000).map(|n| n as usize))]
        max_per_host: usize,
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
    /// Producer, consumer, alerter and status page in one process: the small-deployment mode.
    Run {
        #[command(flatten)]
        produce: ProduceArgs,
        #[command(flatten)]
        consume: ConsumeArgs,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Serve the status page, JSON API and badges on this address (loopback by default).
        #[arg(long, value_name = "ADDR", default_value = serve::DEFAULT_ADDR)]
        serve_addr: SocketAddr,
        /// Do not serve the status page.
        #[arg(long)]
        no_serve: bool,
        /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9464.
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<SocketAddr>,
    },
    /// Derive incidents from the results (consumer group SITEWATCH_ALERT_GROUP, default
    /// sitewatch-alerts) and deliver notifications to webhooks and Alertmanager.
    Alert(AlertArgs),
    /// Serve the status page, the read-only JSON API and badges from PostgreSQL
    /// (SITEWATCH_DATABASE_URL); see docs/api.md.
    Serve(ServeArgs),
    /// Apply pending database migrations (SITEWATCH_DATABASE_URL).
    Migrate,
    /// Drop stored results older than a duration by whole days (e.g. --older-than 30d), and old rollups.
    Prune(PruneArgs),
    /// Uptime, error budget, latency percentiles and downtime per site from the rollups
    /// (exit 0 every SLO holds, 1 one is breached, 2 invalid config or unknown site).
    Report(ReportArgs),
    /// Maintain the rollups.
    Rollup {
        #[command(subcommand)]
        command: RollupCommand,
    },
    /// Print a shell completion script on stdout, e.g. `sitewatch completions bash >
    /// /etc/bash_completion.d/sitewatch`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the manual page (roff) on stdout, e.g. `sitewatch man > sitewatch.1`.
    Man,
}

/// Shells `sitewatch completions` writes scripts for.
#[derive(Clone, Copy, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl From<CompletionShell> for clap_complete::Shell {
    fn from(shell: CompletionShell) -> Self {
        match shell {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        }
    }
}

#[derive(Subcommand)]
pub enum RollupCommand {
    /// Recompute the rollups of whole UTC days from the raw rows, in one transaction
    /// (idempotent; days whose raw rows were pruned are skipped and keep their rollups).
    Rebuild {
        /// Start: RFC 3339 or YYYY-MM-DD; widened to the start of its UTC day.
        #[arg(long, value_name = "TIME", value_parser = report::parse_time)]
        from: DateTime<Utc>,
        /// End (excluded): RFC 3339 or YYYY-MM-DD; widened to the end of its UTC day.
        #[arg(long, value_name = "TIME", value_parser = report::parse_time)]
        to: DateTime<Utc>,
    },
}

/// `serve` flags.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Address to listen on. Loopback by default: give 0.0.0.0:8080 (or a proxy in front) to
    /// publish the page.
    #[arg(long, value_name = "ADDR", default_value = serve::DEFAULT_ADDR)]
    addr: SocketAddr,
}

impl ServeArgs {
    pub fn options(&self) -> ServeOptions {
        ServeOptions {
            addr: self.addr,
            config_path: self.config.config.clone(),
        }
    }
}

/// `alert` flags.
#[derive(Args)]
pub struct AlertArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    consume: ConsumeArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Print the notifications the results would cause instead of sending them; writes
    /// nothing, reads the topic from its start (a group of its own, `<group>-dry-run`).
    #[arg(long)]
    dry_run: bool,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

impl AlertArgs {
    /// The alerter's options, and `kafka` with the alerter's consumer group.
    pub fn options(&self, kafka: KafkaSettings) -> (AlertOptions, KafkaSettings) {
        let group = match self.dry_run {
            true => format!("{}-dry-run", kafka.alert_group),
            false => kafka.alert_group.clone(),
        };
        let options = AlertOptions {
            config_path: self.config.config.clone(),
            consume: self.consume.options(),
            dry_run: self.dry_run,
            probing_stopped: Default::default(),
        };
        (options, KafkaSettings { group, ..kafka })
    }
}

/// `prune` flags.
#[derive(Args)]
pub struct PruneArgs {
    /// Age of the oldest results kept, at least 1h: e.g. 30d, 36h (units ms, s, m, h, d).
    #[arg(long, value_name = "DURATION", value_parser = sitewatch::duration::parse_retention)]
    older_than: Duration,
    /// Age of the oldest hourly rollups kept (default 90d); reports over longer periods read
    /// the daily rollups.
    #[arg(long, value_name = "DURATION", value_parser = sitewatch::duration::parse_retention)]
    rollups_older_than: Option<Duration>,
    /// Age of the oldest daily rollups kept (default: kept forever).
    #[arg(long, value_name = "DURATION", value_parser = sitewatch::duration::parse_retention)]
    daily_rollups_older_than: Option<Duration>,
}

impl PruneArgs {
    /// The retention to apply: each flag, or its default.
    pub fn retention(&self) -> Retention {
        // parse_retention bounds ages far below chrono's range.
        let age = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        Retention {
            results: age(self.older_than),
            hourly_rollups: Some(
                self.rollups_older_than
                    .map_or(DEFAULT_HOURLY_ROLLUP_RETENTION, age),
            ),
            daily_rollups: self.daily_rollups_older_than.map(age),
        }
    }
}

/// `report` flags. Without `--since` or `--from`/`--to` the period is the longest SLO window
/// of the selected sites (30d when none has an SLO), up to now.
#[derive(Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this site (repeatable).
    #[arg(long = "site", value_name = "NAME")]
    pub sites: Vec<String>,
    /// The period up to now, e.g. 7d (units ms, s, m, h, d); widened to whole hours.
    #[arg(long, value_name = "DURATION", value_parser = sitewatch::duration::parse,
          conflicts_with_all = ["from", "to"])]
    since: Option<Duration>,
    /// Start of the period: RFC 3339 or YYYY-MM-DD (UTC midnight); rounded down to the hour.
    #[arg(long, value_name = "TIME", value_parser = report::parse_time, requires = "to")]
    from: Option<DateTime<Utc>>,
    /// End of the period (excluded): RFC 3339 or YYYY-MM-DD; rounded up to the hour.
    #[arg(long, value_name = "TIME", value_parser = report::parse_time, requires = "from")]
    to: Option<DateTime<Utc>>,
    /// One JSON object per site per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl ReportArgs {
    /// The period the flags ask for (clap has made sure they do not conflict).
    pub fn span(&self) -> Span {
        match (self.since, self.from, self.to) {
            (Some(length), _, _) => Span::Since(length),
            (None, Some(from), Some(to)) => Span::Between { from, to },
            _ => Span::Default,
        }
    }
}

/// Consumer flags (`consume`, `run`, `alert`).
#[derive(Args)]
pub struct ConsumeArgs {
    /// Do not apply pending migrations at startup.
    #[arg(long)]
    no_migrate: bool,
    /// Messages per transaction at most (1-100000).
    #[arg(long, default_value_t = consume::DEFAULT_MAX_BATCH_ROWS,
          value_parser = clap::value_parser!(u64).range(1..=100_000).map(|n| n as usize))]
    batch_rows: usize,
    /// Milliseconds a batch may wait for more messages while they keep arriving (0-60000).
    #[arg(long, default_value_t = consume::DEFAULT_MAX_BATCH_WAIT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    batch_wait_ms: u64,
}

impl ConsumeArgs {
    pub fn options(&self) -> ConsumeOptions {
        ConsumeOptions {
            max_batch_rows: self.batch_rows,
            max_batch_wait: Duration::from_millis(self.batch_wait_ms),
            migrate: !self.no_migrate,
        }
    }
}

/// Kafka connection flags; each overrides the environment variable of the same meaning.
#[derive(Args, Default)]
pub struct KafkaArgs {
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
    /// Where settings come from: these flags, then the environment, then the env file.
    pub fn sources(&self, env_file: Option<&PathBuf>) -> Result<Sources, SettingsError> {
        let mut sources = Sources::environment();
        if let Some(path) = env_file {
            sources = sources.with_env_file(path)?;
        }
        Ok(sources
            .flag("SITEWATCH_KAFKA_BROKERS", self.kafka_brokers.as_ref())
            .flag("SITEWATCH_KAFKA_TOPIC", self.kafka_topic.as_ref())
            .flag(
                "SITEWATCH_KAFKA_SECURITY_PROTOCOL",
                self.kafka_security_protocol.as_ref(),
            )
            .flag("SITEWATCH_KAFKA_SSL_CA", self.kafka_ssl_ca.as_ref())
            .flag("SITEWATCH_KAFKA_SSL_CERT", self.kafka_ssl_cert.as_ref())
            .flag("SITEWATCH_KAFKA_SSL_KEY", self.kafka_ssl_key.as_ref())
            .flag(
                "SITEWATCH_KAFKA_SASL_MECHANISM",
                self.kafka_sasl_mechanism.as_ref(),
            )
            .flag(
                "SITEWATCH_KAFKA_SASL_USERNAME",
                self.kafka_sasl_username.as_ref(),
            )
            .flag(
                "SITEWATCH_KAFKA_SASL_PASSWORD",
                self.kafka_sasl_password.as_ref(),
            )
            .flag("SITEWATCH_KAFKA_GROUP", self.kafka_group.as_ref()))
    }

    /// Kafka settings, with `--kafka-opt` overrides.
    pub fn settings(&self, env_file: Option<&PathBuf>) -> Result<KafkaSettings, SettingsError> {
        let mut settings = KafkaSettings::from_sources(&self.sources(env_file)?)?;
        settings.extra = self.kafka_opts.clone();
        Ok(settings)
    }

    /// Kafka and PostgreSQL settings together, for the commands that need both.
    pub fn settings_with_database(
        &self,
        env_file: Option<&PathBuf>,
    ) -> Result<(KafkaSettings, DatabaseSettings), SettingsError> {
        let sources = self.sources(env_file)?;
        let mut kafka = KafkaSettings::from_sources(&sources)?;
        kafka.extra = self.kafka_opts.clone();
        Ok((kafka, DatabaseSettings::from_sources(&sources)?))
    }
}

/// PostgreSQL settings alone (`migrate`, `prune`): the environment, then the env file.
pub fn database_settings(env_file: Option<&PathBuf>) -> Result<DatabaseSettings, SettingsError> {
    KafkaArgs::default()
        .sources(env_file)
        .and_then(|sources| DatabaseSettings::from_sources(&sources))
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
pub struct ProduceArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Probe only shard i of n (stable hash of the site name), e.g. 0/3.
    #[arg(long, default_value = "0/1", value_name = "I/N")]
    shard: Shard,
    /// Checks running at once, all sites together (1-100000).
    #[arg(long, default_value_t = schedule::DEFAULT_MAX_CONCURRENCY,
          value_parser = clap::value_parser!(u64).range(1..=100_000).map(|n| n as usize))]
    max_concurrency: usize,
    /// Checks running at once against one host:port (1-10000).
    #[arg(long, default_value_t = schedule::DEFAULT_MAX_PER_HOST,
          value_parser = clap::value_parser!(u64).range(1..=10_000).map(|n| n as usize))]
    max_per_host: usize,
    /// Partitions of the topic when sitewatch creates it (1-10000).
    #[arg(long, default_value_t = TopicSpec::default().partitions,
          value_parser = clap::value_parser!(i32).range(1..=10_000))]
    topic_partitions: i32,
    /// Replication factor of the topic when sitewatch creates it (1-32; default: the brokers'
    /// default.replication.factor).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=32))]
    topic_replication: Option<i32>,
    /// Seconds shutdown waits for queued results to reach Kafka (0-3600).
    #[arg(long, default_value_t = publish::DEFAULT_FLUSH_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    flush_timeout_secs: u64,
    /// Do not reload when sites.lua or scripts/ change (SIGHUP still reloads).
    #[arg(long)]
    no_watch: bool,
}

impl ProduceArgs {
    /// The producer's options; `site_metrics` receives each site's last check.
    pub fn options(&self, site_metrics: SiteMetrics) -> ProduceOptions {
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
            site_metrics,
        }
    }
}

#[derive(Args)]
pub struct ConfigArg {
    /// The sites file.
    #[arg(long, default_value = "sites.lua", value_name = "PATH")]
    pub config: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every flag, argument and command says what it is for in `--help`, the man page and
    /// completions.
    #[test]
    fn every_argument_and_command_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path}: argument {id}"));
                }
            }
            for sub in command.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{path}: command"));
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "sitewatch", &mut missing);
        assert!(
            missing.is_empty(),
            "without help text:\n{}",
            missing.join("\n")
        );
    }
}
