//! `sitewatch alert` (and `run`, which includes it) against the real stack: Kafka, PostgreSQL
//! and Alertmanager from `dev/stack`, loopback sites that go down and come back, and a loopback
//! webhook receiver that records every request.

mod producer;
mod stack;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use producer::Sitewatch;
use serde_json::Value;

/// Longest wait for something the pipeline should do within seconds.
const WAIT: Duration = Duration::from_secs(60);

/// A site whose health the test switches.
struct Switch {
    up: Arc<AtomicBool>,
    server: support::Server,
}

impl Switch {
    async fn new(up: bool) -> Switch {
        let state = Arc::new(AtomicBool::new(up));
        let flag = state.clone();
        let server = support::serve("127.0.0.1:0", move |_request, mut conn| {
            let up = flag.load(Ordering::SeqCst);
            async move {
                let status = if up { 200 } else { 503 };
                conn.respond(status, &[("Content-Type", "text/plain")], b"health")
                    .await;
            }
        })
        .await;
        Switch { up: state, server }
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

/// A webhook receiver that records every request and answers 200.
async fn receiver() -> support::Server {
    support::serve("127.0.0.1:0", |_request, mut conn| async move {
        conn.respond(200, &[], b"ok").await;
    })
    .await
}

/// (dedup key, kind, body) of every request `server` received.
fn webhooks(server: &support::Server) -> Vec<(String, String, Value)> {
    server
        .requests()
        .into_iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            let key = r.header("Idempotency-Key").unwrap_or_default().to_owned();
            assert_eq!(
                body["dedup_key"].as_str(),
                Some(key.as_str()),
                "key in header and body"
            );
            (
                key,
                body["kind"].as_str().unwrap_or_default().to_owned(),
                body,
            )
        })
        .collect()
}

fn kinds(requests: &[(String, String, Value)], site: &str) -> Vec<String> {
    requests
        .iter()
        .filter(|(_, _, body)| body["site"] == site)
        .map(|(_, kind, _)| kind.clone())
        .collect()
}

async fn wait_for<F: Fn() -> bool>(what: &str, log: &dyn Fn() -> String, done: F) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Environment of a `sitewatch` process on a fresh topic, database and groups.
async fn env(name: &str) -> (Vec<(String, String)>, String) {
    let database = stack::fresh_database().await;
    let mut vars = producer::kafka_env(false, &stack::unique_name(name));
    vars.push(("SITEWATCH_DATABASE_URL".into(), database.clone()));
    vars.push(("SITEWATCH_PG_CA".into(), stack::get("SITEWATCH_PG_CA")));
    vars.push((
        "SITEWATCH_KAFKA_GROUP".into(),
        stack::unique_name("alert-store"),
    ));
    vars.push((
        "SITEWATCH_ALERT_GROUP".into(),
        stack::unique_name("alert-group"),
    ));
    (vars, database)
}

/// `sitewatch run --no-serve` on `config`, in the config's directory.
fn spawn_run(config: &std::path::Path, vars: &[(String, String)]) -> Sitewatch {
    Sitewatch::spawn(
        &["run", "--no-serve", "--config", config.to_str().unwrap()],
        vars,
        config.parent().unwrap(),
    )
}

/// Alerts Alertmanager holds for `site` (active and resolved ones it still lists).
async fn alertmanager_alerts(site: &str) -> Vec<Value> {
    let url = format!("{}/api/v2/alerts", stack::get("SITEWATCH_DEV_ALERTMANAGER"));
    let body = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-fsS", &url])
            .output()
            .expect("curl")
            .stdout
    })
    .await
    .unwrap();
    let alerts: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
    alerts
        .into_iter()
        .filter(|a| a["labels"]["site"] == site)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_notifies_open_reminder_resolve_and_alertmanager_and_respects_maintenance() {
    let _stack = stack::StackLock::shared();
    let shop = Switch::new(true).await;
    let db_site = Switch::new(false).await;
    let hook = receiver().await;
    let shop_name = stack::unique_name("shop");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    let window_start = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    std::fs::write(
        &config,
        format!(
            r#"notifier "hook" {{ type = "webhook", url = "{hook}" }}
               notifier "am" {{ type = "alertmanager", url = "{am}" }}
               site {{ name = "{shop_name}", url = "{shop}", interval = "1s", timeout = "900ms",
                       alert = {{ notify = {{ "hook", "am" }}, after = 2, recover_after = 2, remind = "10s" }} }}
               site {{ name = "db", url = "{db}", interval = "1s", timeout = "500ms",
                       alert = {{ notify = {{ "hook" }}, after = 1 }} }}
               maintenance {{ name = "db-upgrade", sites = {{ "db" }}, at = "{window_start}", duration = "1h" }}"#,
            hook = hook.url("/hook"),
            am = stack::get("SITEWATCH_DEV_ALERTMANAGER"),
            shop = shop.server.url("/health"),
            db = db_site.server.url("/health"),
        ),
    )
    .unwrap();
    let (vars, database) = env("alert").await;
    let mut sw = spawn_run(&config, &vars);
    let log = || sw.log_text();
    let client = stack::client(&database).await;

    // Up for a few checks, then down long enough for the open and a reminder.
    tokio::time::sleep(Duration::from_secs(3)).await;
    shop.set(false);
    wait_for("the open notification", &log, || {
        kinds(&webhooks(&hook), &shop_name).contains(&"open".to_string())
    })
    .await;
    // Alertmanager is another notifier, with its own delivery task.
    let deadline = Instant::now() + WAIT;
    let mut am = alertmanager_alerts(&shop_name).await;
    while am.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no alert in Alertmanager; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        am = alertmanager_alerts(&shop_name).await;
    }
    assert_eq!(am.len(), 1, "one alert in Alertmanager: {am:?}");
    assert_eq!(am[0]["labels"]["severity"], "down");
    wait_for("a reminder", &log, || {
        kinds(&webhooks(&hook), &shop_name).contains(&"reminder".to_string())
    })
    .await;
    shop.set(true);
    wait_for("the resolve notification", &log, || {
        kinds(&webhooks(&hook), &shop_name).contains(&"resolve".to_string())
    })
    .await;
    // Alertmanager: the alert got its endsAt (it no longer counts as active).
    let deadline = Instant::now() + WAIT;
    loop {
        let alerts = alertmanager_alerts(&shop_name).await;
        let ended = alerts.iter().all(|a| {
            a["endsAt"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t <= chrono::Utc::now() + chrono::Duration::seconds(1))
        });
        if ended {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Alertmanager still has {alerts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sw.terminate(Duration::from_secs(30));

    let requests = webhooks(&hook);
    let shop_kinds = kinds(&requests, &shop_name);
    let reminders = shop_kinds.iter().filter(|k| *k == "reminder").count();
    // On a failure, what each notice said (its cause) and the process's log.
    let explain = || {
        let notices: Vec<String> = requests
            .iter()
            .filter(|(_, _, body)| body["site"] == shop_name.as_str())
            .map(|(_, kind, body)| format!("{kind}: {}", body["message"]))
            .collect();
        format!(
            "{shop_kinds:?}\n{}\nlog:\n{}",
            notices.join("\n"),
            sw.log_text()
        )
    };
    assert_eq!(
        shop_kinds.first().map(String::as_str),
        Some("open"),
        "{}",
        explain()
    );
    assert_eq!(
        shop_kinds.last().map(String::as_str),
        Some("resolve"),
        "{}",
        explain()
    );
    assert_eq!(
        shop_kinds.len(),
        reminders + 2,
        "one open, reminders, one resolve: {}",
        explain()
    );
    // Exactly what PostgreSQL says happened: one incident, resolved, with its reminders.
    let incident = client
        .query_one(
            "SELECT severity, failed_checks, reminders, resolved_at IS NOT NULL, \
               extract(epoch FROM resolved_at - started_at)::float8 \
             FROM incidents WHERE site = $1",
            &[&shop_name],
        )
        .await
        .unwrap();
    assert_eq!(incident.get::<_, String>(0), "down");
    assert!(incident.get::<_, bool>(3), "resolved");
    assert_eq!(incident.get::<_, i32>(2) as usize, reminders);
    let failed: i64 = incident.get(1);
    let down_for: f64 = incident.get(4);
    let resolve = &requests
        .iter()
        .find(|(_, kind, body)| kind == "resolve" && body["site"] == shop_name.as_str())
        .unwrap()
        .2;
    assert_eq!(resolve["failed_checks"], failed);
    assert_eq!(resolve["down_for_s"], down_for.floor() as i64);
    assert!(
        resolve["message"]
            .as_str()
            .unwrap()
            .contains("back UP after"),
        "{resolve}"
    );
    assert!(failed >= 2, "{failed}");
    // The site in maintenance was down the whole time and notified nobody.
    assert!(kinds(&requests, "db").is_empty(), "{requests:?}");
    let db_incidents: i64 = client
        .query_one("SELECT count(*) FROM incidents WHERE site = 'db'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db_incidents, 0);
    let in_window: i64 = client
        .query_one(
            "SELECT count(*) FROM check_results WHERE site = 'db' AND maintenance = 'db-upgrade'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(in_window > 0, "results carry the window's name");
    // Every notification was delivered once: no key twice.
    let mut seen = BTreeMap::new();
    for (key, _, _) in &requests {
        *seen.entry(key.clone()).or_insert(0) += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    stack::drop_database(&database).await;
}

/// Stopping `run` is not its sites going silent: while the producer waits for a slow check
/// and the consumers drain, no `nodata` incident opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_run_raises_no_nodata_incident() {
    let _stack = stack::StackLock::shared();
    let fast = Switch::new(true).await;
    // Answers after 7 s: a check of it holds the producer's stop up that long.
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = in_flight.clone();
    let slow = support::serve("127.0.0.1:0", move |_request, mut conn| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(7)).await;
            conn.respond(200, &[], b"slow").await;
            counter.fetch_sub(1, Ordering::SeqCst);
        }
    })
    .await;
    let hook = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    std::fs::write(
        &config,
        format!(
            r#"notifier "hook" {{ type = "webhook", url = "{hook}" }}
               site {{ name = "fast", url = "{fast}", interval = "1s", timeout = "900ms",
                       alert = {{ notify = {{ "hook" }}, after = 1 }} }}
               site {{ name = "slow", url = "{slow}", interval = "20s", timeout = "15s" }}"#,
            hook = hook.url("/hook"),
            fast = fast.server.url("/"),
            slow = slow.url("/"),
        ),
    )
    .unwrap();
    let (vars, database) = env("stop-nodata").await;
    let mut sw = spawn_run(&config, &vars);
    let log = || sw.log_text();
    let client = stack::client(&database).await;
    // The alerter has heard of the fast site, and a check of the slow one has just begun.
    let start = Instant::now();
    loop {
        // (An error is a database `run` has not migrated yet.)
        let heard: i64 = client
            .query_one("SELECT count(*) FROM alert_state WHERE site = 'fast'", &[])
            .await
            .map_or(0, |row| row.get(0));
        if heard > 0 {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the alerter never heard of the fast site; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for("a check of the slow site in flight", &log, || {
        in_flight.load(Ordering::SeqCst) > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The producer's stop (≈ 6.5 s for the slow check) is longer than 3 intervals of the fast
    // site and than one no-data poll (5 s).
    let stopping = Instant::now();
    sw.terminate(Duration::from_secs(60));
    assert!(
        stopping.elapsed() > Duration::from_millis(5500),
        "the stop waited for the slow check ({:?}); log:\n{}",
        stopping.elapsed(),
        sw.log_text()
    );
    let incidents: Vec<String> = client
        .query("SELECT site || ' ' || severity FROM incidents", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        incidents.is_empty(),
        "{incidents:?}; log:\n{}",
        sw.log_text()
    );
    assert!(
        hook.requests().is_empty(),
        "{:?}",
        kinds(&webhooks(&hook), "fast")
    );
    stack::drop_database(&database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_sends_one_notice_instead_of_a_storm() {
    let _stack = stack::StackLock::shared();
    let flappy = Switch::new(true).await;
    let hook = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    std::fs::write(
        &config,
        format!(
            r#"notifier "hook" {{ type = "webhook", url = "{hook}" }}
               site {{ name = "flappy", url = "{url}", interval = "1s", timeout = "500ms",
                       alert = {{ notify = {{ "hook" }}, after = 1, recover_after = 1,
                                  flap = {{ count = 3, window = "10m" }} }} }}"#,
            hook = hook.url("/hook"),
            url = flappy.server.url("/"),
        ),
    )
    .unwrap();
    let (vars, database) = env("flap").await;
    let mut sw = spawn_run(&config, &vars);
    let client = stack::client(&database).await;
    // Toggle every 1.5 s: an incident opens and resolves about every 3 s.
    let start = Instant::now();
    let mut up = true;
    while start.elapsed() < Duration::from_secs(20) {
        up = !up;
        flappy.set(up);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    flappy.set(true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sw.terminate(Duration::from_secs(30));
    let requests = webhooks(&hook);
    let flap_kinds = kinds(&requests, "flappy");
    let incidents: i64 = client
        .query_one("SELECT count(*) FROM incidents WHERE site = 'flappy'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(incidents >= 4, "the site flapped: {incidents} incidents");
    assert_eq!(
        flap_kinds.iter().filter(|k| *k == "flapping").count(),
        1,
        "{flap_kinds:?}"
    );
    let opens = flap_kinds.iter().filter(|k| *k == "open").count();
    assert_eq!(
        opens, 2,
        "only the opens before the flapping notice: {flap_kinds:?}"
    );
    let quiet: i64 = client
        .query_one(
            "SELECT count(*) FROM incidents WHERE site = 'flappy' AND quiet",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        quiet,
        incidents - 2,
        "incidents during the flapping are recorded quietly"
    );
    stack::drop_database(&database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_notifier_waits_in_the_outbox_without_holding_up_the_others() {
    let _stack = stack::StackLock::shared();
    let site = Switch::new(false).await;
    let hook = receiver().await;
    // A port that refuses now and is served later.
    let later = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let later_addr = later.local_addr().unwrap();
    drop(later);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    std::fs::write(
        &config,
        format!(
            r#"notifier "hook" {{ type = "webhook", url = "{hook}" }}
               notifier "dead" {{ type = "webhook", url = "http://{later_addr}/hook" }}
               notifier "broken" {{ type = "webhook", url = "{hook}",
                                    format = function(event) error("no template for " .. event.kind) end }}
               notifier "slack" {{ type = "webhook", url = "{hook}",
                                   format = function(event) return {{ text = event.message, key = event.dedup_key }} end }}
               site {{ name = "api", url = "{url}", interval = "1s", timeout = "500ms",
                       alert = {{ notify = {{ "hook", "dead", "broken", "slack" }}, after = 1 }} }}"#,
            hook = hook.url("/hook"),
            url = site.server.url("/"),
        ),
    )
    .unwrap();
    let (vars, database) = env("refuse").await;
    let mut sw = spawn_run(&config, &vars);
    let log = || sw.log_text();
    let client = stack::client(&database).await;
    wait_for("the open at the working notifiers", &log, || {
        hook.requests().len() >= 2
    })
    .await;
    // The formatter's body, and the plain one.
    let bodies: Vec<Value> = hook
        .requests()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert!(bodies.iter().any(|b| b["kind"] == "open"), "{bodies:?}");
    assert!(
        bodies.iter().any(|b| b["text"]
            .as_str()
            .is_some_and(|t| t.contains("api is DOWN"))),
        "{bodies:?}"
    );
    let pending = |notifier: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT count(*), max(attempts), max(last_error) FROM notifications \
                     WHERE notifier = $1 AND delivered_at IS NULL",
                    &[&notifier],
                )
                .await
                .unwrap()
        }
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let dead = pending("dead").await;
        let broken = pending("broken").await;
        if dead.get::<_, i64>(0) == 1
            && broken.get::<_, i64>(0) == 1
            && broken.get::<_, Option<String>>(2).is_some()
            && dead.get::<_, Option<String>>(2).is_some()
        {
            let error: String = broken.get(2);
            assert!(error.contains("no template for open"), "{error}");
            let error: String = dead.get(2);
            assert!(!error.is_empty());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "outbox did not show the failures; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The receiver comes back: the waiting notification goes out, with the same key.
    let came_back = support::serve(&later_addr.to_string(), |_r, mut conn| async move {
        conn.respond(200, &[], b"ok").await;
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while came_back.requests().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the late receiver got nothing; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let late = &came_back.requests()[0];
    let first_key = hook
        .requests()
        .iter()
        .find_map(|r| {
            let body: Value = serde_json::from_slice(&r.body).ok()?;
            (body["kind"] == "open").then(|| r.header("Idempotency-Key").unwrap().to_owned())
        })
        .unwrap();
    assert_eq!(late.header("Idempotency-Key"), Some(first_key.as_str()));
    sw.terminate(Duration::from_secs(30));
    stack::drop_database(&database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerter_killed_three_times_loses_and_duplicates_no_incident() {
    let _stack = stack::StackLock::shared();
    let sites: Vec<Switch> = futures_join(4).await;
    let hook = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    std::fs::write(&config, watched(&hook, &sites)).unwrap();
    let (vars, database) = env("kill").await;
    let config = config.to_str().unwrap();
    let mut produce = Sitewatch::spawn(&["produce", "--config", config], &vars, dir.path());
    let client = stack::client(&database).await;
    // The scripted outage: each site goes down and comes back twice, staggered.
    let script = tokio::spawn({
        let flags: Vec<Arc<AtomicBool>> = sites.iter().map(|s| s.up.clone()).collect();
        async move {
            for round in 0..2 {
                for (i, flag) in flags.iter().enumerate() {
                    tokio::time::sleep(Duration::from_millis(700 + 300 * i as u64)).await;
                    flag.store(false, Ordering::SeqCst);
                    let _ = round;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
                for flag in &flags {
                    flag.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    });
    let mut rng = fastrand_like(std::process::id() as u64);
    for round in 0..3 {
        let mut alerter = Sitewatch::spawn(&alert_args(config), &vars, dir.path());
        tokio::time::sleep(Duration::from_millis(2500 + rng.below(3000))).await;
        alerter.signal("KILL");
        let _ = alerter.wait(Duration::from_secs(10));
        eprintln!("alerter killed (round {round})");
    }
    script.await.unwrap();
    let mut alerter = Sitewatch::spawn(&alert_args(config), &vars, dir.path());
    let log = || alerter.log_text();
    // Every incident resolved and every notification delivered.
    let deadline = Instant::now() + WAIT;
    loop {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM incidents WHERE resolved_at IS NULL), \
                        (SELECT count(*) FROM notifications WHERE delivered_at IS NULL), \
                        (SELECT count(*) FROM incidents)",
                &[],
            )
            .await
            .unwrap();
        let (open, pending, total) = (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
        );
        if open == 0 && pending == 0 && total >= 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "open {open}, pending {pending}, total {total}; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    alerter.terminate(Duration::from_secs(30));
    produce.terminate(Duration::from_secs(30));

    // Two outages per site: exactly two incidents each, none lost, none doubled.
    let per_site: HashMap<String, i64> = client
        .query("SELECT site, count(*) FROM incidents GROUP BY site", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for i in 0..sites.len() {
        assert_eq!(
            per_site.get(&format!("s{i}")),
            Some(&2),
            "{:?}",
            incident_list(&client).await
        );
    }
    // Every notification in the outbox reached the receiver; a repeat has the same key and body.
    let keys: Vec<String> = client
        .query("SELECT dedup_key FROM notifications", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys.len(), 16, "open and resolve of 8 incidents: {keys:?}");
    let mut bodies: HashMap<String, Vec<u8>> = HashMap::new();
    for request in hook.requests() {
        let key = request.header("Idempotency-Key").unwrap().to_owned();
        if let Some(first) = bodies.get(&key) {
            assert_eq!(first, &request.body, "a repeat of {key} differs");
        }
        bodies.insert(key, request.body.clone());
    }
    for key in &keys {
        assert!(bodies.contains_key(key), "{key} never delivered");
    }
    drop(produce);
    stack::drop_database(&database).await;
}

/// `sites.lua` text: notifier `hook` at `hook`, and each of `sites` as `s0`, `s1`… at 1 s,
/// alerting `hook` after two failed checks.
fn watched(hook: &support::Server, sites: &[Switch]) -> String {
    let mut text = format!(
        r#"notifier "hook" {{ type = "webhook", url = "{}" }}"#,
        hook.url("/hook")
    );
    for (i, site) in sites.iter().enumerate() {
        text.push_str(&format!(
            "\nsite {{ name = \"s{i}\", url = \"{}\", interval = \"1s\", timeout = \"500ms\", \
             alert = {{ notify = {{ \"hook\" }}, after = 2, recover_after = 2 }} }}",
            site.server.url("/")
        ));
    }
    text
}

/// Waits until the alerter has judged a result of each of `n` sites.
async fn wait_heard(client: &tokio_postgres::Client, n: i64, log: &dyn Fn() -> String) {
    let start = Instant::now();
    loop {
        // (An error is a database not migrated yet.)
        let heard: i64 = client
            .query_one("SELECT count(*) FROM alert_state", &[])
            .await
            .map_or(0, |row| row.get(0));
        if heard >= n {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "the alerter heard of {heard} of {n} sites; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every incident as "site severity open|resolved", sorted.
async fn incident_list(client: &tokio_postgres::Client) -> Vec<String> {
    let mut list: Vec<String> = client
        .query(
            "SELECT site || ' ' || severity || ' ' \
                    || CASE WHEN resolved_at IS NULL THEN 'open' ELSE 'resolved' END \
             FROM incidents",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    list.sort();
    list
}

/// A producer that dies is silence: each of its sites gets one `nodata` incident, announced,
/// and the first result of the producer started again resolves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_producer_is_nodata_and_its_next_results_resolve_it() {
    let _stack = stack::StackLock::shared();
    let sites: Vec<Switch> = futures_join(2).await;
    let hook = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    std::fs::write(&config, watched(&hook, &sites)).unwrap();
    let (vars, database) = env("nodata").await;
    let config = config.to_str().unwrap();
    let mut produce = Sitewatch::spawn(&["produce", "--config", config], &vars, dir.path());
    let mut alerter = Sitewatch::spawn(&alert_args(config), &vars, dir.path());
    let client = stack::client(&database).await;
    let log = || alerter.log_text();
    wait_heard(&client, 2, &log).await;
    produce.signal("KILL");
    let _ = produce.wait(Duration::from_secs(10));
    let silenced = Instant::now();
    let opened = |want: &str| {
        let requests = webhooks(&hook);
        (0..2).all(|i| {
            requests.iter().any(|(_, kind, body)| {
                body["site"] == format!("s{i}") && kind == want && body["severity"] == "nodata"
            })
        })
    };
    wait_for("a nodata notice for each site", &log, || opened("open")).await;
    assert!(
        silenced.elapsed() >= Duration::from_secs(3),
        "nodata before 3 intervals of silence"
    );
    assert_eq!(
        incident_list(&client).await,
        ["s0 nodata open", "s1 nodata open"]
    );
    let mut produce = Sitewatch::spawn(&["produce", "--config", config], &vars, dir.path());
    wait_for("each nodata incident resolved", &log, || opened("resolve")).await;
    assert_eq!(
        incident_list(&client).await,
        ["s0 nodata resolved", "s1 nodata resolved"]
    );
    produce.terminate(Duration::from_secs(30));
    alerter.terminate(Duration::from_secs(30));
    stack::drop_database(&database).await;
}

/// A member of the alerter's group frozen while it holds partitions leaves their results
/// waiting in Kafka until its session ends and they are handed on: that is the alerter's own
/// absence, not the sites' silence, and opens no `nodata` incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_alerter_member_is_not_its_sites_silence() {
    let _stack = stack::StackLock::shared();
    // 12 sites on 6 partitions: the frozen member's 3 hold some (all but 1 in 4,096 spreads).
    let sites: Vec<Switch> = futures_join(12).await;
    let hook = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    std::fs::write(&config, watched(&hook, &sites)).unwrap();
    let (vars, database) = env("frozen").await;
    let config = config.to_str().unwrap();
    let mut produce = Sitewatch::spawn(&["produce", "--config", config], &vars, dir.path());
    let mut first = Sitewatch::spawn(&alert_args(config), &vars, dir.path());
    let client = stack::client(&database).await;
    wait_heard(&client, 12, &|| first.log_text()).await;
    let assignments = |member: &Sitewatch| {
        member
            .log_text()
            .matches("partitions positioned at their stored offsets")
            .count()
    };
    let before = assignments(&first);
    let second = Sitewatch::spawn(&alert_args(config), &vars, dir.path());
    let both = || format!("{}\n--- second:\n{}", first.log_text(), second.log_text());
    wait_for("the second member's partitions", &both, || {
        assignments(&second) > 0 && assignments(&first) > before
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    second.signal("STOP");
    // Its session (6 s) ends, the first member takes its partitions over and catches up;
    // meanwhile no-data checks run every 5 s.
    let taken = assignments(&first);
    wait_for("the first member taking the partitions over", &both, || {
        assignments(&first) > taken
    })
    .await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        incident_list(&client).await,
        Vec::<String>::new(),
        "{}",
        both()
    );
    assert!(webhooks(&hook).is_empty());
    second.signal("KILL");
    first.terminate(Duration::from_secs(30));
    produce.terminate(Duration::from_secs(30));
    stack::drop_database(&database).await;
}

/// `sitewatch alert` with a short Kafka session, so a killed member's partitions move on fast.
fn alert_args(config: &str) -> Vec<&str> {
    vec![
        "alert",
        "--config",
        config,
        "--kafka-opt",
        "session.timeout.ms=6000",
        "--kafka-opt",
        "heartbeat.interval.ms=1000",
    ]
}

async fn futures_join(n: usize) -> Vec<Switch> {
    let mut sites = Vec::new();
    for _ in 0..n {
        sites.push(Switch::new(true).await);
    }
    sites
}

/// A tiny deterministic generator (xorshift) for kill timings.
struct Xorshift(u64);

fn fastrand_like(seed: u64) -> Xorshift {
    Xorshift(seed | 1)
}

impl Xorshift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The formatters shipped in `scripts/` turn every kind of notice into the JSON their service
/// expects; a formatter that errors or loops fails with the reason.
#[tokio::test]
async fn shipped_formatters_render_every_kind_and_bad_ones_fail_with_a_reason() {
    use sitewatch::alert::format::Formatters;
    use sitewatch::alert::notice::Notice;
    let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let text = r#"
        notifier "slack" { type = "webhook", url = "http://127.0.0.1:1/", format = script "notify_slack" }
        notifier "discord" { type = "webhook", url = "http://127.0.0.1:1/", format = script "notify_discord" }
        notifier "ntfy" { type = "webhook", url = "http://127.0.0.1:1/", format = script "notify_ntfy" }
        notifier "boom" { type = "webhook", url = "http://127.0.0.1:1/", format = function(e) error("no " .. e.kind) end }
        notifier "loop" { type = "webhook", url = "http://127.0.0.1:1/", format = function(e) while true do end end }
        notifier "nil" { type = "webhook", url = "http://127.0.0.1:1/", format = function(e) return nil end }
        site { name = "shop", url = "https://shop.example/" }"#;
    let config =
        sitewatch::config::load_str(std::path::Path::new("sites.lua"), text, &scripts).unwrap();
    let limits = sitewatch::hooks::HookLimits {
        wall_time: Duration::from_millis(300),
        ..Default::default()
    };
    let formatters = Formatters::start(config.source.clone(), limits).unwrap();
    let notice = |kind: &str, severity: Option<&str>| Notice {
        dedup_key: format!("k/{kind}"),
        kind: kind.into(),
        site: "shop".into(),
        url: "https://shop.example/".into(),
        severity: severity.map(str::to_owned),
        incident_id: severity.map(|_| uuid::Uuid::nil()),
        started_at: severity.map(|_| "2026-11-30T08:00:00Z".to_owned()),
        resolved_at: None,
        failure_kind: Some("timeout".into()),
        failure_message: Some("no answer".into()),
        failed_checks: Some(3),
        down_for_s: Some(60),
        reminder: None,
        message: format!("shop {kind}"),
    };
    for kind in ["open", "reminder", "resolve", "flapping", "flap_ended"] {
        let severity = (!kind.starts_with("flap")).then_some("down");
        let n = notice(kind, severity);
        let slack: Value =
            serde_json::from_str(&formatters.format("slack", &n).await.unwrap()).unwrap();
        assert!(
            slack["text"]
                .as_str()
                .unwrap()
                .contains(&format!("shop {kind}")),
            "{slack}"
        );
        assert_eq!(slack["sitewatch_dedup_key"], format!("k/{kind}"));
        let discord: Value =
            serde_json::from_str(&formatters.format("discord", &n).await.unwrap()).unwrap();
        assert_eq!(discord["embeds"][0]["title"], format!("shop: {kind}"));
        let ntfy: Value =
            serde_json::from_str(&formatters.format("ntfy", &n).await.unwrap()).unwrap();
        assert_eq!(ntfy["message"], format!("shop {kind}"));
    }
    let n = notice("open", Some("down"));
    let error = formatters.format("boom", &n).await.unwrap_err();
    assert!(error.contains("no open"), "{error}");
    let error = formatters.format("loop", &n).await.unwrap_err();
    assert!(
        error.contains("instruction budget") || error.contains("time limit"),
        "{error}"
    );
    let error = formatters.format("nil", &n).await.unwrap_err();
    assert!(error.contains("expected a string or a table"), "{error}");
    // The thread survives all of that.
    assert!(formatters.format("slack", &n).await.is_ok());
}

/// `alert --dry-run` prints the notifications the topic's results cause, formatted, and writes
/// nothing to PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_what_would_be_sent_and_writes_nothing() {
    let _stack = stack::StackLock::shared();
    let site = Switch::new(false).await;
    let hook = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    std::fs::write(
        &config,
        format!(
            r#"notifier "hook" {{ type = "webhook", url = "{hook}",
                                  format = function(e) return "DRY " .. e.kind .. " " .. e.site end }}
               site {{ name = "dry", url = "{url}", interval = "1s", timeout = "500ms",
                       alert = {{ notify = {{ "hook" }}, after = 2 }} }}"#,
            hook = hook.url("/hook"),
            url = site.server.url("/"),
        ),
    )
    .unwrap();
    let (vars, database) = env("dry").await;
    let config = config.to_str().unwrap();
    let mut produce = Sitewatch::spawn(&["produce", "--config", config], &vars, dir.path());
    tokio::time::sleep(Duration::from_secs(4)).await;
    produce.terminate(Duration::from_secs(30));
    let out = tokio::task::spawn_blocking({
        let vars = vars.clone();
        let config = config.to_owned();
        move || {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sitewatch"))
                .args(["alert", "--dry-run", "--config", &config])
                .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
            let mut seen = Vec::new();
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                let Some(Ok(line)) = lines.next() else { break };
                let done = line.contains("DRY open dry");
                seen.push(line);
                if done {
                    break;
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            seen
        }
    })
    .await
    .unwrap();
    assert!(out.iter().any(|l| l == "DRY open dry"), "{out:?}");
    assert!(out.iter().any(|l| l.starts_with("hook open ")), "{out:?}");
    assert!(hook.requests().is_empty(), "nothing sent");
    let client = stack::client(&database).await;
    let written: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM incidents) + (SELECT count(*) FROM notifications) \
             + (SELECT count(*) FROM alert_state)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "a dry run writes nothing");
    stack::drop_database(&database).await;
}
