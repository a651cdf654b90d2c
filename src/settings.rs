//! Connection settings for Kafka and PostgreSQL, read from the environment (and `--env-file`).
//!
//! The same names are written by `dev/stack` into `dev/.env`, so the local stack, the tests and a
//! production deployment all configure sitewatch the same way. Empty values count as unset.

use std::path::{Path, PathBuf};

use rdkafka::ClientConfig;

/// Topic results are published to and consumed from when `SITEWATCH_KAFKA_TOPIC` is unset.
pub const DEFAULT_TOPIC: &str = "sitewatch.checks";
/// Consumer group when `SITEWATCH_KAFKA_GROUP` is unset.
pub const DEFAULT_GROUP: &str = "sitewatch";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read env file {path}")]
    EnvFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected KEY=VALUE")]
    EnvFileSyntax { path: PathBuf, line: usize },
    #[error("{name} is not set (run `dev/stack up` for a local stack, or see README: \"Using an existing Kafka and PostgreSQL\")")]
    Missing { name: &'static str },
    #[error("{name}={value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// Where settings are read from, in order: values given on the command line, the process
/// environment, then an env file (`--env-file`). Nothing is written back into the process
/// environment, so `env()` in sites.lua sees only the real environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Command-line values by variable name; they win over everything.
    flags: Vec<(&'static str, String)>,
    /// `KEY=VALUE` pairs of the env file; the real environment wins over them.
    file: Vec<(String, String)>,
}

impl Sources {
    /// The process environment alone.
    pub fn environment() -> Self {
        Sources::default()
    }

    /// Adds the pairs of an env file (see [`parse_env_file`]).
    pub fn with_env_file(mut self, path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::EnvFile {
            path: path.to_owned(),
            source,
        })?;
        self.file = parse_env_file(path, &text)?;
        Ok(self)
    }

    /// A command-line value for variable `name` (ignored when `None`).
    pub fn flag(mut self, name: &'static str, value: Option<&String>) -> Self {
        if let Some(value) = value {
            self.flags.push((name, value.clone()));
        }
        self
    }

    /// The value of `name`, with empty treated as unset at every level.
    pub fn var(&self, name: &str) -> Option<String> {
        let nonempty = |v: &String| !v.trim().is_empty();
        let from_flags = self.flags.iter().rev().find(|(k, _)| *k == name);
        from_flags
            .map(|(_, v)| v.clone())
            .filter(nonempty)
            .or_else(|| std::env::var(name).ok().filter(nonempty))
            .or_else(|| {
                let from_file = self.file.iter().rev().find(|(k, _)| k == name);
                from_file.map(|(_, v)| v.clone()).filter(nonempty)
            })
    }
}

/// Parses env-file text: blank lines and `#` comments skipped, optional `export `, optional
/// surrounding quotes on the value.
pub fn parse_env_file(path: &Path, text: &str) -> Result<Vec<(String, String)>, SettingsError> {
    let mut pairs = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(SettingsError::EnvFileSyntax {
                path: path.to_owned(),
                line: index + 1,
            });
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        pairs.push((key.trim().to_owned(), value.to_owned()));
    }
    Ok(pairs)
}

/// How sitewatch talks to Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    /// The alerter's consumer group (`SITEWATCH_ALERT_GROUP`), apart from the storing one.
    pub alert_group: String,
    pub security: KafkaSecurity,
    /// Extra librdkafka properties (`--kafka-opt key=value`), applied last.
    pub extra: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaSecurity {
    Plaintext,
    Ssl(SslFiles),
    SaslSsl {
        ssl: SslFiles,
        mechanism: String,
        username: String,
        password: String,
    },
}

/// PEM files the way a managed Kafka hands them out (`ca.pem`, `service.cert`, `service.key`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SslFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl KafkaSettings {
    /// Reads the `SITEWATCH_KAFKA_*` variables from the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_sources(&Sources::environment())
    }

    /// Reads the `SITEWATCH_KAFKA_*` variables.
    pub fn from_sources(sources: &Sources) -> Result<Self, SettingsError> {
        let var = |name: &str| sources.var(name);
        let brokers = var("SITEWATCH_KAFKA_BROKERS").ok_or(SettingsError::Missing {
            name: "SITEWATCH_KAFKA_BROKERS",
        })?;
        let ssl = || SslFiles {
            ca: var("SITEWATCH_KAFKA_SSL_CA").map(PathBuf::from),
            cert: var("SITEWATCH_KAFKA_SSL_CERT").map(PathBuf::from),
            key: var("SITEWATCH_KAFKA_SSL_KEY").map(PathBuf::from),
        };
        let protocol =
            var("SITEWATCH_KAFKA_SECURITY_PROTOCOL").unwrap_or_else(|| "plaintext".into());
        let security = match protocol.to_ascii_lowercase().as_str() {
            "plaintext" => KafkaSecurity::Plaintext,
            "ssl" => KafkaSecurity::Ssl(ssl()),
            "sasl_ssl" => KafkaSecurity::SaslSsl {
                ssl: ssl(),
                mechanism: var("SITEWATCH_KAFKA_SASL_MECHANISM")
                    .unwrap_or_else(|| "SCRAM-SHA-256".into()),
                username: var("SITEWATCH_KAFKA_SASL_USERNAME").ok_or(SettingsError::Missing {
                    name: "SITEWATCH_KAFKA_SASL_USERNAME",
                })?,
                password: var("SITEWATCH_KAFKA_SASL_PASSWORD").ok_or(SettingsError::Missing {
                    name: "SITEWATCH_KAFKA_SASL_PASSWORD",
                })?,
            },
            _ => {
                return Err(SettingsError::Invalid {
                    name: "SITEWATCH_KAFKA_SECURITY_PROTOCOL",
                    value: protocol,
                    reason: "expected plaintext, ssl or sasl_ssl".into(),
                })
            }
        };
        Ok(KafkaSettings {
            brokers,
            topic: var("SITEWATCH_KAFKA_TOPIC").unwrap_or_else(|| DEFAULT_TOPIC.into()),
            group: var("SITEWATCH_KAFKA_GROUP").unwrap_or_else(|| DEFAULT_GROUP.into()),
            alert_group: var("SITEWATCH_ALERT_GROUP")
                .unwrap_or_else(|| crate::alert::DEFAULT_ALERT_GROUP.into()),
            security,
            extra: Vec::new(),
        })
    }

    /// The librdkafka properties of one client: the connection (brokers, TLS, SASL), then the
    /// role's own choices (`role`, e.g. idempotence for the producer), then the operator's
    /// `--kafka-opt` overrides, which therefore always win. The one place overrides are applied.
    pub fn client_config(&self, role: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        let set_ssl = |config: &mut ClientConfig, files: &SslFiles| {
            if let Some(ca) = &files.ca {
                config.set("ssl.ca.location", ca.display().to_string());
            }
            if let Some(cert) = &files.cert {
                config.set("ssl.certificate.location", cert.display().to_string());
            }
            if let Some(key) = &files.key {
                config.set("ssl.key.location", key.display().to_string());
            }
        };
        match &self.security {
            KafkaSecurity::Plaintext => {
                config.set("security.protocol", "plaintext");
            }
            KafkaSecurity::Ssl(files) => {
                config.set("security.protocol", "ssl");
                set_ssl(&mut config, files);
            }
            KafkaSecurity::SaslSsl {
                ssl,
                mechanism,
                username,
                password,
            } => {
                config
                    .set("security.protocol", "sasl_ssl")
                    .set("sasl.mechanism", mechanism)
                    .set("sasl.username", username)
                    .set("sasl.password", password);
                set_ssl(&mut config, ssl);
            }
        }
        for (key, value) in role {
            config.set(*key, *value);
        }
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }
}

/// How sitewatch talks to PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseSettings {
    /// libpq-style URL or key=value string; `sslmode` takes libpq's values (`require` verifies
    /// the chain and the host name, `verify-ca` the chain only).
    pub url: String,
    /// Extra CA (PEM) trusted for the server certificate (a private CA, e.g. the local stack's).
    pub ca: Option<PathBuf>,
}

impl DatabaseSettings {
    /// Reads the database variables from the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_sources(&Sources::environment())
    }

    /// Reads `SITEWATCH_DATABASE_URL` (or `DATABASE_URL`) and `SITEWATCH_PG_CA`.
    pub fn from_sources(sources: &Sources) -> Result<Self, SettingsError> {
        let var = |name: &str| sources.var(name);
        let url = var("SITEWATCH_DATABASE_URL")
            .or_else(|| var("DATABASE_URL"))
            .ok_or(SettingsError::Missing {
                name: "SITEWATCH_DATABASE_URL",
            })?;
        Ok(DatabaseSettings {
            url,
            ca: var("SITEWATCH_PG_CA").map(PathBuf::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_parsing() {
        let text = "# comment\n\nA=1\nexport B=\"two words\"\nC='x=y'\nEMPTY=\n";
        let pairs = parse_env_file(Path::new("t.env"), text).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "x=y".into()),
                ("EMPTY".into(), "".into()),
            ]
        );
        let err = parse_env_file(Path::new("t.env"), "A=1\nnonsense\n").unwrap_err();
        assert_eq!(err.to_string(), "t.env:2: expected KEY=VALUE");
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        use std::io::Write;
        writeln!(
            file,
            "SITEWATCH_TEST_ONLY_FILE=file\nSITEWATCH_TEST_ONLY_FLAG=file\nPATH=file"
        )
        .unwrap();
        let flag = "flag".to_string();
        let empty = String::new();
        let sources = Sources::environment()
            .with_env_file(file.path())
            .unwrap()
            .flag("SITEWATCH_TEST_ONLY_FLAG", Some(&flag))
            .flag("SITEWATCH_TEST_ONLY_EMPTY", Some(&empty));
        assert_eq!(
            sources.var("SITEWATCH_TEST_ONLY_FILE").as_deref(),
            Some("file")
        );
        assert_eq!(
            sources.var("SITEWATCH_TEST_ONLY_FLAG").as_deref(),
            Some("flag")
        );
        assert_ne!(
            sources.var("PATH").as_deref(),
            Some("file"),
            "the environment wins"
        );
        assert_eq!(
            sources.var("SITEWATCH_TEST_ONLY_EMPTY"),
            None,
            "empty is unset"
        );
    }

    #[test]
    fn kafka_client_config_for_ssl() {
        let settings = KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            topic: DEFAULT_TOPIC.into(),
            group: DEFAULT_GROUP.into(),
            alert_group: "alerts".into(),
            security: KafkaSecurity::Ssl(SslFiles {
                ca: Some("ca.pem".into()),
                cert: Some("service.cert".into()),
                key: Some("service.key".into()),
            }),
            extra: vec![("linger.ms".into(), "5".into())],
        };
        let config = settings.client_config(&[("linger.ms", "1"), ("acks", "all")]);
        assert_eq!(config.get("security.protocol"), Some("ssl"));
        assert_eq!(config.get("ssl.ca.location"), Some("ca.pem"));
        assert_eq!(config.get("ssl.certificate.location"), Some("service.cert"));
        assert_eq!(config.get("ssl.key.location"), Some("service.key"));
        assert_eq!(
            config.get("linger.ms"),
            Some("5"),
            "--kafka-opt wins over the role"
        );
        assert_eq!(config.get("acks"), Some("all"), "the role's choice stays");
    }
}
