//! `sitewatch produce` against the real broker: scheduled results reach the topic keyed and on
//! time (plaintext and SSL), SIGTERM loses nothing, and reloads take effect.

mod producer;
mod stack;
mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use producer::{Published, Sitewatch};
use sitewatch::result::{Outcome, SCHEMA_VERSION};

/// Results of one site, in schedule order.
fn by_site(results: &[Published]) -> HashMap<String, Vec<&Published>> {
    let mut map: HashMap<String, Vec<&Published>> = HashMap::new();
    for p in results {
        map.entry(p.result.site.clone()).or_default().push(p);
    }
    for list in map.values_mut() {
        list.sort_by_key(|p| p.result.scheduled_at);
    }
    map
}

fn assert_unique_ids(results: &[Published]) {
    let ids: HashSet<_> = results.iter().map(|p| p.result.id).collect();
    assert_eq!(ids.len(), results.len(), "an id appears twice on the topic");
}

/// Every tick of every site is present, exactly `interval` apart.
fn assert_contiguous(list: &[&Published], interval: Duration, site: &str) {
    for pair in list.windows(2) {
        let step = (pair[1].result.scheduled_at - pair[0].result.scheduled_at)
            .to_std()
            .unwrap();
        assert_eq!(
            step, interval,
            "{site}: ticks {} → {} are not one interval apart",
            pair[0].result.scheduled_at, pair[1].result.scheduled_at
        );
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write sites.lua");
}

async fn ok_server() -> support::Server {
    support::serve("127.0.0.1:0", |_request, mut conn| async move {
        conn.respond(200, &[("Content-Type", "text/plain")], b"fine")
            .await;
    })
    .await
}

/// A `produce` of `sites_lua` (written into a fresh directory, publishing to a fresh topic
/// named after `topic_prefix`), once `server` has seen `requests` probes (within 60 s).
struct Probing {
    _dir: tempfile::TempDir,
    topic: String,
    sitewatch: Sitewatch,
}

async fn produce_until_probed(
    server: &support::Server,
    sites_lua: &str,
    topic_prefix: &str,
    requests: usize,
) -> Probing {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    write(&config, sites_lua);
    let topic = stack::unique_name(topic_prefix);
    let sitewatch = Sitewatch::spawn(
        &["produce", "--config", config.to_str().unwrap()],
        &producer::kafka_env(false, &topic),
        dir.path(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while server.requests().len() < requests {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {requests} probes arrived; log:\n{}",
            server.requests().len(),
            sitewatch.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Probing {
        _dir: dir,
        topic,
        sitewatch,
    }
}

async fn scheduled_delivery(ssl: bool) {
    let server = ok_server().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    write(
        &config,
        &format!(
            r#"for i = 1, 5 do
                 site {{ name = "s" .. i, url = "{}" .. i, interval = "1s", timeout = "500ms" }}
               end"#,
            server.url("/ok/")
        ),
    );
    let topic = stack::unique_name("produce");
    let started = std::time::Instant::now();
    let mut sitewatch = Sitewatch::spawn(
        &["produce", "--config", config.to_str().unwrap()],
        &producer::kafka_env(ssl, &topic),
        dir.path(),
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    sitewatch.terminate(Duration::from_secs(30));
    let ran = started.elapsed();

    let results = producer::read_results(
        producer::kafka_client(ssl),
        &topic,
        Duration::from_secs(5),
        Duration::from_secs(60),
    )
    .await;
    assert_unique_ids(&results);
    let sites = by_site(&results);
    assert_eq!(sites.len(), 5, "sites on the topic: {:?}", sites.keys());
    for (site, list) in &sites {
        // The process ran `ran` seconds, minus start-up (connecting, creating the topic).
        let most = ran.as_secs() as usize + 1;
        assert!(
            list.len() >= 5 && list.len() <= most,
            "{site}: {} results in {ran:?}",
            list.len()
        );
        assert_contiguous(list, Duration::from_secs(1), site);
        for p in list {
            assert_eq!(&p.key, site, "Kafka key must be the site name");
            assert_eq!(p.schema_header.as_deref(), Some("1"));
            assert_eq!(p.result.schema, SCHEMA_VERSION);
            assert_eq!(p.result.outcome, Outcome::Up, "{:?}", p.result.failure);
            let lag = (p.result.started_at - p.result.scheduled_at)
                .to_std()
                .expect("started before scheduled");
            assert!(lag < Duration::from_millis(500), "{site}: lag {lag:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_results_reach_the_topic_keyed_and_on_time() {
    let _stack = stack::StackLock::shared();
    scheduled_delivery(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_results_reach_the_topic_over_ssl_with_client_certificates() {
    let _stack = stack::StackLock::shared();
    scheduled_delivery(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_publishes_every_finished_check_and_exits_zero() {
    let _stack = stack::StackLock::shared();
    // Each response takes 1.5 s, so checks are in flight when the signal arrives.
    let server = support::serve("127.0.0.1:0", |_request, mut conn| async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        conn.respond(200, &[], b"slow but fine").await;
    })
    .await;
    // Wait until several checks ran and some are in flight (requests arrive before answers).
    let sites = format!(
        r#"for i = 1, 4 do site {{ name = "slow" .. i, url = "{}" .. i, interval = "2s", timeout = "1800ms" }} end"#,
        server.url("/slow/")
    );
    let Probing {
        _dir,
        topic,
        mut sitewatch,
    } = produce_until_probed(&server, &sites, "sigterm", 6).await;
    let signalled = std::time::Instant::now();
    // Twice in a moment, as `timeout` does (the child, then its process group): one request,
    // not "exit at once".
    sitewatch.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    sitewatch.terminate(Duration::from_secs(30));
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        signalled.elapsed()
    );

    let probes = server.requests().len();
    let results = producer::read_results(
        producer::kafka_client(false),
        &topic,
        Duration::from_secs(5),
        Duration::from_secs(60),
    )
    .await;
    assert_unique_ids(&results);
    assert_eq!(
        results.len(),
        probes,
        "every probe that reached the server must be on the topic"
    );
    assert!(
        results.iter().all(|p| p.result.outcome == Outcome::Up),
        "in-flight checks must finish, not be cut"
    );
    // The topic was created with the broker's default replication, one on the local stack's
    // single broker, and that exposure is said at startup.
    assert!(
        sitewatch
            .log_text()
            .contains("the topic has one replica per partition"),
        "{}",
        sitewatch.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_adds_removes_and_changes_sites_and_survives_a_broken_file() {
    let _stack = stack::StackLock::shared();
    let server = ok_server().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    let site = |name: &str, path: &str| {
        format!(
            r#"site {{ name = "{name}", url = "{}", interval = "1s", timeout = "500ms" }}"#,
            server.url(path)
        )
    };
    write(
        &config,
        &format!("{}\n{}\n", site("keep", "/keep"), site("gone", "/gone")),
    );
    let topic = stack::unique_name("reload");
    let mut sitewatch = Sitewatch::spawn(
        &["produce", "--config", config.to_str().unwrap()],
        &producer::kafka_env(false, &topic),
        dir.path(),
    );
    let wait_for = |path: &'static str, count: usize| {
        let server = server.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while server
                .requests()
                .iter()
                .filter(|r| r.target == path)
                .count()
                < count
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{path} was not probed {count} times"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for("/keep", 3).await;

    // Reload by file change: "gone" removed, "changed" added, "keep" unchanged.
    write(
        &config,
        &format!("{}\n{}\n", site("keep", "/keep"), site("added", "/added")),
    );
    wait_for("/added", 3).await;
    let gone_after_reload = server
        .requests()
        .iter()
        .filter(|r| r.target == "/gone")
        .count();

    // Change "keep" (new path) and reload by SIGHUP.
    write(
        &config,
        &format!(
            "{}\n{}\n",
            site("keep", "/keep-v3"),
            site("added", "/added")
        ),
    );
    sitewatch.signal("HUP");
    wait_for("/keep-v3", 3).await;

    // SIGHUP with nothing changed says so at info.
    sitewatch.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sitewatch
        .log_text()
        .contains("configuration unchanged: nothing to reload")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no word of an unchanged SIGHUP reload; log:\n{}",
            sitewatch.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A broken file keeps the running configuration.
    write(&config, "site { name = 'broken', url = 'ftp://nope' ");
    sitewatch.signal("HUP");
    let before = server
        .requests()
        .iter()
        .filter(|r| r.target == "/keep-v3")
        .count();
    wait_for("/keep-v3", before + 3).await;

    sitewatch.terminate(Duration::from_secs(30));
    let log = sitewatch.log_text();
    assert!(
        log.contains("reload failed"),
        "the broken file must be reported; log:\n{log}"
    );
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| r.target == "/gone")
            .count(),
        gone_after_reload,
        "a removed site must stop being probed"
    );

    let results = producer::read_results(
        producer::kafka_client(false),
        &topic,
        Duration::from_secs(5),
        Duration::from_secs(60),
    )
    .await;
    assert_unique_ids(&results);
    let versions = |site: &str| -> Vec<String> {
        let mut seen = Vec::new();
        for p in by_site(&results).remove(site).unwrap_or_default() {
            if seen.last() != Some(&p.result.config_version) {
                seen.push(p.result.config_version.clone());
            }
        }
        seen
    };
    // keep: v1 → v2 (file change) → v3 (SIGHUP); never a version from the broken file.
    assert_eq!(
        versions("keep").len(),
        3,
        "keep's config versions: {:?}",
        versions("keep")
    );
    assert_eq!(versions("gone").len(), 1);
    assert_eq!(versions("added").len(), 2);
    assert_eq!(versions("added").last(), versions("keep").last());
    assert!(!by_site(&results).contains_key("broken"));
    // "keep" was unchanged by the first reload: its ticks stay one interval apart throughout.
    let keep = by_site(&results).remove("keep").unwrap();
    let v1v2: Vec<&Published> = keep
        .iter()
        .copied()
        .filter(|p| !p.result.url.ends_with("/keep-v3"))
        .collect();
    assert_contiguous(&v1v2, Duration::from_secs(1), "keep");
}

/// A log shipper that goes away (stderr a pipe with no reader) or a full disk (/dev/full) does
/// not stop monitoring: `produce` keeps probing with debug logging on, and SIGTERM still ends
/// it cleanly (it used to abort, or hang and ignore the signal).
#[tokio::test(flavor = "multi_thread")]
async fn lost_stderr_neither_stops_probing_nor_blocks_sigterm() {
    let _stack = stack::StackLock::shared();
    let server = support::serve("127.0.0.1:0", |_request, mut conn| async move {
        conn.respond(200, &[], b"fine").await;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    write(
        &config,
        &format!(
            r#"site {{ name = "logged", url = "{}", interval = "1s" }}"#,
            server.url("/")
        ),
    );
    let closed_pipe = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        std::process::Stdio::from(writer)
    };
    let full_disk = || std::process::Stdio::from(std::fs::File::create("/dev/full").unwrap());
    let sinks: [(&str, &dyn Fn() -> std::process::Stdio); 2] =
        [("closed pipe", &closed_pipe), ("/dev/full", &full_disk)];
    for (sink, stderr) in sinks {
        let before = server.requests().len();
        let topic = stack::unique_name("lost-stderr");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sitewatch"))
            .args(["produce", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "debug")
            .envs(producer::kafka_env(false, &topic))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while server.requests().len() < before + 3 {
            assert!(
                child.try_wait().unwrap().is_none(),
                "{sink}: produce exited: {:?}",
                child.try_wait()
            );
            assert!(std::time::Instant::now() < deadline, "{sink}: no probes");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{sink}: produce ignored SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            status.code(),
            Some(0),
            "{sink}: not 101 (panic) or 134 (abort)"
        );
    }
}

/// A second SIGTERM well after the first cuts an orderly shutdown short: exit 130 at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_later_exits_at_once_with_130() {
    let _stack = stack::StackLock::shared();
    // Responses that never come in time: a check runs its full 5 s timeout, and the shutdown
    // waits for it. The second signal comes 1.5 s into that wait.
    let server = support::serve("127.0.0.1:0", |_request, mut conn| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        conn.respond(200, &[], b"late").await;
    })
    .await;
    let sites = format!(
        r#"site {{ name = "stuck", url = "{}", interval = "6s", timeout = "5s" }}"#,
        server.url("/")
    );
    let Probing {
        _dir,
        mut sitewatch,
        ..
    } = produce_until_probed(&server, &sites, "second-signal", 1).await;
    sitewatch.signal("TERM");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sitewatch.signal("TERM");
    let status = sitewatch.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{}", sitewatch.log_text());
}
