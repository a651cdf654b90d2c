//! The Prometheus endpoint (`--metrics-addr`): per-site series of real loopback sites (up,
//! degraded, down, https) with the right values, gone after a reload removes the site; every
//! metric the shipped Grafana dashboard and alerting rules use is exported by `sitewatch run`;
//! and promtool accepts the rules and passes their unit tests.

mod producer;
mod stack;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use producer::Sitewatch;

/// One sample of a scrape: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a text-format scrape (label values without escapes, as in these tests).
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) = pair.split_once("=\"").expect("label");
                        (key.to_owned(), value.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name, labels)
            }
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value: value.parse().unwrap_or(f64::NAN),
        });
    }
    samples
}

/// The value of `name` for `site` (and `phase`, when given).
fn value(samples: &[Sample], name: &str, site: &str, phase: Option<&str>) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.get("site").map(String::as_str) == Some(site)
                && s.labels.get("phase").map(String::as_str) == phase
        })
        .map(|s| s.value)
}

/// The metrics address the child logged (it was given port 0).
fn metrics_url(sitewatch: &Sitewatch) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = sitewatch.log_text();
        let addr = log
            .lines()
            .find(|l| l.contains("serving Prometheus metrics"))
            .and_then(|l| l.split("addr=").nth(1))
            .map(|a| a.split_whitespace().next().unwrap_or_default().to_owned());
        if let Some(addr) = addr {
            return format!("http://{addr}/metrics");
        }
        assert!(
            Instant::now() < deadline,
            "no metrics address in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn scrape(url: &str) -> String {
    let response = reqwest::get(url).await.expect("scrape /metrics");
    assert!(response.status().is_success(), "{}", response.status());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.expect("scrape body")
}

/// Scrapes until `done` holds for the samples (at most a minute), returning the last scrape.
async fn scrape_until(
    url: &str,
    sitewatch: &Sitewatch,
    what: &str,
    done: impl Fn(&[Sample]) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(url).await;
        if done(&parse(&text)) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 60 s; last scrape:\n{text}\nlog:\n{}",
            sitewatch.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const SITE_SERIES: [&str; 5] = [
    "sitewatch_site_up",
    "sitewatch_site_phase_seconds",
    "sitewatch_site_status_code",
    "sitewatch_site_cert_not_after_seconds",
    "sitewatch_site_consecutive_failures",
];

#[tokio::test(flavor = "multi_thread")]
async fn site_series_follow_each_check_and_vanish_when_a_reload_removes_the_site() {
    let _stack = stack::StackLock::shared();
    let server = support::serve("127.0.0.1:0", |request, mut conn| async move {
        match request.target.as_str() {
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(60)).await;
                conn.respond(200, &[], b"slow").await
            }
            "/broken" => conn.respond(503, &[], b"unavailable").await,
            _ => conn.respond(200, &[], b"fine").await,
        }
    })
    .await;
    let ca = support::TestCa::new("metrics test CA");
    let https = support::TlsServer::start(
        &ca.leaf("localhost", &["127.0.0.1"], support::Validity::Until(2099)),
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    let config = dir.path().join("sites.lua");
    let common = r#"interval = "1s", timeout = "800ms""#;
    let sites = [
        format!(
            r#"site {{ name = "fine", url = "{}", {common} }}"#,
            server.url("/fine")
        ),
        format!(
            r#"site {{ name = "slow", url = "{}", {common}, expect = {{ warn_time = "20ms" }} }}"#,
            server.url("/slow")
        ),
        format!(
            r#"site {{ name = "broken", url = "{}", {common} }}"#,
            server.url("/broken")
        ),
        format!(
            r#"site {{ name = "secure", url = "{}", {common}, tls = {{ ca = "ca.pem" }} }}"#,
            https.url("/")
        ),
    ];
    std::fs::write(&config, sites.join("\n")).unwrap();
    let topic = stack::unique_name("metrics");
    let sitewatch = Sitewatch::spawn(
        &[
            "produce",
            "--config",
            config.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
            "--no-watch",
        ],
        &producer::kafka_env(false, &topic),
        dir.path(),
    );
    let url = metrics_url(&sitewatch);
    let all = ["fine", "slow", "broken", "secure"];
    // Two failures in a row for "broken" means every site has been checked at least once.
    let text = scrape_until(&url, &sitewatch, "every site checked", |s| {
        all.iter()
            .all(|site| value(s, "sitewatch_site_up", site, None).is_some())
            && value(s, "sitewatch_site_consecutive_failures", "broken", None) >= Some(2.0)
    })
    .await;
    let samples = parse(&text);
    let get = |name: &str, site: &str| value(&samples, name, site, None);
    for name in SITE_SERIES {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
        assert!(text.contains(&format!("# TYPE {name} gauge\n")), "{name}");
    }
    assert_eq!(get("sitewatch_site_up", "fine"), Some(1.0));
    assert_eq!(get("sitewatch_site_up", "slow"), Some(0.5), "{text}");
    assert_eq!(get("sitewatch_site_up", "broken"), Some(0.0));
    assert_eq!(get("sitewatch_site_up", "secure"), Some(1.0), "{text}");
    assert_eq!(get("sitewatch_site_status_code", "fine"), Some(200.0));
    assert_eq!(get("sitewatch_site_status_code", "broken"), Some(503.0));
    assert_eq!(
        get("sitewatch_site_consecutive_failures", "fine"),
        Some(0.0)
    );
    assert_eq!(
        get("sitewatch_site_consecutive_failures", "slow"),
        Some(0.0)
    );
    // The test CA's leaf is valid until 2099-01-01.
    let not_after = chrono::DateTime::from_timestamp(
        get("sitewatch_site_cert_not_after_seconds", "secure").expect("cert expiry") as i64,
        0,
    )
    .unwrap();
    assert_eq!(not_after.format("%Y-%m-%d").to_string(), "2099-01-01");
    assert_eq!(get("sitewatch_site_cert_not_after_seconds", "fine"), None);
    // Phases: plain http has no TLS; the slow site spends its 60 ms waiting for the first byte.
    let phase = |site: &str, phase: &str| {
        value(&samples, "sitewatch_site_phase_seconds", site, Some(phase))
    };
    for p in ["connect", "ttfb", "transfer", "total"] {
        assert!(phase("fine", p).is_some(), "fine {p}:\n{text}");
    }
    assert_eq!(phase("fine", "tls"), None);
    assert!(phase("secure", "tls").is_some_and(|s| s > 0.0), "{text}");
    assert!(phase("slow", "ttfb").is_some_and(|s| s >= 0.05), "{text}");
    assert!(phase("slow", "total") >= phase("slow", "ttfb"));

    // A reload that removes "broken" takes its series away; the others stay.
    std::fs::write(&config, sites[..2].join("\n") + "\n" + &sites[3]).unwrap();
    sitewatch.signal("HUP");
    let text = scrape_until(&url, &sitewatch, "broken's series gone", |s| {
        // Every series of the site goes: its gauges and its counters.
        s.iter()
            .all(|s| s.labels.get("site").map(String::as_str) != Some("broken"))
    })
    .await;
    let samples = parse(&text);
    for site in ["fine", "slow", "secure"] {
        assert!(
            value(&samples, "sitewatch_site_up", site, None).is_some(),
            "{site}:\n{text}"
        );
    }
    assert!(
        samples
            .iter()
            .any(|s| s.name == "sitewatch_config_reloads_total"
                && s.labels.get("result").map(String::as_str) == Some("ok")
                && s.value == 1.0),
        "{text}"
    );
}

/// The repository's docs directory.
fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
}

/// Every `sitewatch_*` name in a file.
fn names_in(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let re = regex::Regex::new(r"sitewatch_[a-z0-9_]+").unwrap();
    re.find_iter(&text).map(|m| m.as_str().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_of_the_dashboard_and_the_rules_is_exported() {
    let _stack = stack::StackLock::shared();
    let mut wanted = names_in(&docs().join("grafana/sitewatch.json"));
    wanted.extend(names_in(&docs().join("prometheus/sitewatch-rules.yml")));
    assert!(wanted.len() > 10, "names found: {wanted:?}");

    // An https site, so that certificate expiry is exported too.
    let ca = support::TestCa::new("dashboard test CA");
    let https = support::TlsServer::start(
        &ca.leaf("localhost", &["127.0.0.1"], support::Validity::Until(2099)),
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    let config = dir.path().join("sites.lua");
    std::fs::write(
        &config,
        format!(
            r#"site {{ name = "dash", url = "{}", interval = "1s", timeout = "800ms", tls = {{ ca = "ca.pem" }} }}"#,
            https.url("/")
        ),
    )
    .unwrap();
    let database = stack::fresh_database().await;
    let mut vars = producer::kafka_env(false, &stack::unique_name("metrics-run"));
    vars.extend([
        ("SITEWATCH_DATABASE_URL".to_owned(), database.clone()),
        ("SITEWATCH_PG_CA".to_owned(), stack::get("SITEWATCH_PG_CA")),
        (
            "SITEWATCH_KAFKA_GROUP".to_owned(),
            stack::unique_name("metrics-group"),
        ),
        (
            "SITEWATCH_ALERT_GROUP".to_owned(),
            stack::unique_name("metrics-alerts"),
        ),
    ]);
    let mut sitewatch = Sitewatch::spawn(
        &[
            "run",
            "--no-serve",
            "--config",
            config.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &vars,
        dir.path(),
    );
    let url = metrics_url(&sitewatch);
    // Names appear as their events happen (a first check, a first batch, the alerter's first
    // refresh): wait until every one is there, then report the missing ones if some never come.
    // Counters of events that never happen here (a healthy site is never down, no tick is
    // missed, no batch goes row by row, no role restarts) must be there too, at 0: an alert
    // rule on their rate sees 0, not "no data".
    let zeros = [
        ("sitewatch_probes_total", "outcome", "down"),
        ("sitewatch_missed_ticks_total", "site", "dash"),
        ("sitewatch_consumer_batches_total", "path", "row_by_row"),
        ("sitewatch_role_restarts_total", "role", "alerter"),
        ("sitewatch_role_restarts_total", "role", "storing consumer"),
        ("sitewatch_config_reloads_total", "result", "failed"),
    ];
    let lacking = |samples: &[Sample]| -> Vec<String> {
        let present: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
        let names = wanted.iter().filter(|n| !present.contains(n.as_str()));
        let zeros = zeros.iter().filter(|(name, label, value)| {
            !samples.iter().any(|s| {
                s.name == *name
                    && s.labels.get(*label).map(String::as_str) == Some(value)
                    && s.value == 0.0
            })
        });
        names
            .cloned()
            .chain(zeros.map(|(name, label, value)| format!("{name}{{{label}=\"{value}\"}} 0")))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let missing = lacking(&parse(&scrape(&url).await));
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    sitewatch.terminate(Duration::from_secs(30));
    stack::drop_database(&database).await;
    assert!(
        missing.is_empty(),
        "the dashboard or the rules use metrics sitewatch does not export, or a counter is absent \
         until its first event: {missing:?}"
    );
}

/// promtool from the `prometheus` package (`dev/stack up` installs it).
fn promtool() -> &'static str {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "promtool is missing: install the Debian package `prometheus` (`dev/stack up` does)"
    );
    "promtool"
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let dir = docs().join("prometheus");
    for args in [
        ["check", "rules", "sitewatch-rules.yml"],
        ["test", "rules", "sitewatch-rules.test.yml"],
    ] {
        let output = std::process::Command::new(promtool())
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            output.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
