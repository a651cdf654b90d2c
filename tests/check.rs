//! `sitewatch check` end to end: sites.lua in, a real loopback server probed, results out as a
//! table or JSON, exit codes 0/1/2. Every built-in expectation passes and fails through the real
//! pipeline, and hostile hooks are contained without touching other sites' results.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;

use sitewatch::result::{CheckResult, FailureKind, Outcome};

/// Runs the binary with `args` in `dir`.
async fn sitewatch(dir: &Path, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sitewatch"));
    command.args(args).current_dir(dir).env("RUST_LOG", "warn");
    command.output().await.expect("run sitewatch")
}

fn results(output: &Output) -> HashMap<String, CheckResult> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let result: CheckResult = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a CheckResult ({e}): {line}"));
            (result.site.clone(), result)
        })
        .collect()
}

fn config(dir: &Path, text: &str) {
    std::fs::write(dir.join("sites.lua"), text).unwrap();
}

/// A server with a JSON health endpoint, an HTML page, a slow page and a big page.
async fn app() -> support::Server {
    support::serve("127.0.0.1:0", |request, mut conn| async move {
        match request.target.as_str() {
            "/health" => {
                conn.respond(
                    200,
                    &[("Content-Type", "application/json")],
                    br#"{"status":"UP","checks":[{"name":"db","ok":true}],"version":3}"#,
                )
                .await
            }
            "/slow" => {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                conn.respond(200, &[("Content-Type", "text/plain")], b"finally")
                    .await
            }
            "/big" => {
                conn.respond(200, &[("Content-Type", "text/plain")], &vec![b'x'; 4096])
                    .await
            }
            "/missing" => conn.respond(404, &[], b"no such page").await,
            _ => {
                conn.respond(
                    200,
                    &[("Content-Type", "text/html; charset=utf-8")],
                    b"<h1>Example Domain</h1><p>all good</p>",
                )
                .await
            }
        }
    })
    .await
}

#[tokio::test]
async fn json_output_over_https_has_every_timing_and_exit_zero() {
    let ca = support::TestCa::new("check test CA");
    let server = support::TlsServer::start(
        &ca.leaf("localhost", &["127.0.0.1"], support::Validity::Until(2099)),
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    config(
        dir.path(),
        &format!(
            r#"site {{ name = "tls", url = "{}", tls = {{ ca = "ca.pem" }}, expect = {{ cert_days = 30, body = "hello" }} }}"#,
            server.url("/")
        ),
    );
    let output = sitewatch(dir.path(), &["check", "--json"]).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results = results(&output);
    let result = &results["tls"];
    assert_eq!(result.outcome, Outcome::Up, "{:?}", result.failure);
    let t = &result.timings;
    for (phase, value) in [
        ("dns", t.dns_ms),
        ("connect", t.connect_ms),
        ("tls", t.tls_ms),
        ("ttfb", t.ttfb_ms),
        ("transfer", t.transfer_ms),
    ] {
        let value = value.unwrap_or_else(|| panic!("{phase}_ms missing"));
        assert!(
            value >= 0.0 && value <= t.total_ms,
            "{phase}_ms = {value}, total {}",
            t.total_ms
        );
    }
    assert!(t.total_ms > 0.0);
    assert!(result.cert_not_after.is_some());
    assert_eq!(result.status, Some(200));
    assert_eq!(result.attempts, 1);
    assert!(!result.config_version.is_empty());
    assert!(!result.probe_host.is_empty());
    assert!(result.scheduled_at <= result.started_at);
    assert_eq!(result.id.get_version_num(), 7);
}

#[tokio::test]
async fn exit_codes_table_and_site_selection() {
    let server = app().await;
    let dir = tempfile::tempdir().unwrap();
    config(
        dir.path(),
        &format!(
            r#"site {{ name = "fine", url = "{}" }}
               site {{ name = "closed", url = "http://127.0.0.1:{}/" }}
               site {{ name = "slowish", url = "{}", expect = {{ warn_time = "100ms" }} }}"#,
            server.url("/"),
            support::closed_port(),
            server.url("/slow")
        ),
    );
    let all = sitewatch(dir.path(), &["check"]).await;
    assert_eq!(all.status.code(), Some(1), "a down site makes exit 1");
    let table = String::from_utf8_lossy(&all.stdout);
    let row = |site: &str| {
        table
            .lines()
            .find(|l| l.starts_with(site))
            .unwrap_or_else(|| panic!("no row for {site}:\n{table}"))
            .to_owned()
    };
    assert!(table.starts_with("SITE"), "{table}");
    assert!(
        row("fine").contains(" up ") && row("fine").contains(" 200 "),
        "{}",
        row("fine")
    );
    assert!(
        row("closed").contains(" down ") && row("closed").contains("connect: connection refused"),
        "{}",
        row("closed")
    );
    assert!(
        row("slowish").contains(" degraded ") && row("slowish").contains("warn_time"),
        "{}",
        row("slowish")
    );

    // Degraded counts as up for the exit code.
    let selected = sitewatch(
        dir.path(),
        &["check", "--site", "fine", "--site", "slowish", "--json"],
    )
    .await;
    assert_eq!(selected.status.code(), Some(0));
    let mut names: Vec<String> = results(&selected).into_keys().collect();
    names.sort();
    assert_eq!(names, ["fine", "slowish"]);

    let unknown = sitewatch(dir.path(), &["check", "--site", "nope"]).await;
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("nope"));

    config(dir.path(), "site { name = 'x', url = 'gopher://old' }\nsite { name = 'y', url = 'http://127.0.0.1/', interval = 'soon' }\n");
    let invalid = sitewatch(dir.path(), &["check"]).await;
    assert_eq!(invalid.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&invalid.stderr);
    assert!(
        stderr.contains("sites.lua:1:") && stderr.contains("sites.lua:2:"),
        "every error with file:line: {stderr}"
    );
    assert!(invalid.stdout.is_empty());
    let validate = sitewatch(dir.path(), &["validate"]).await;
    assert_eq!(validate.status.code(), Some(2));
}

#[tokio::test]
async fn every_expectation_passes_and_fails_through_the_pipeline() {
    let server = app().await;
    let https = support::TlsServer::start(&support::self_signed("localhost", &["127.0.0.1"]), None);
    let dir = tempfile::tempdir().unwrap();
    let root = server.url("/");
    let health = server.url("/health");
    let slow = server.url("/slow");
    let big = server.url("/big");
    let missing = server.url("/missing");
    let tls = https.url("/");
    // (site name, url, expect table, expected outcome, assertion that decides it)
    let cases: &[(&str, &str, &str, Outcome, &str)] = &[
        ("status-ok", &root, "status = 200", Outcome::Up, "status"),
        (
            "status-class",
            &missing,
            r#"status = { "2xx", 404 }"#,
            Outcome::Up,
            "status",
        ),
        (
            "status-bad",
            &missing,
            "status = 200",
            Outcome::Down,
            "status",
        ),
        ("status-default", &missing, "", Outcome::Down, "status"),
        (
            "body-ok",
            &root,
            r#"body = "Example Domain""#,
            Outcome::Up,
            "body",
        ),
        (
            "body-bad",
            &root,
            r#"body = "^Nope""#,
            Outcome::Down,
            "body",
        ),
        (
            "body-not-ok",
            &root,
            r#"body_not = "[Ee]rror""#,
            Outcome::Up,
            "body_not",
        ),
        (
            "body-not-bad",
            &root,
            r#"body_not = "all good""#,
            Outcome::Down,
            "body_not",
        ),
        (
            "header-ok",
            &root,
            r#"headers = { ["content-type"] = "^text/html" }"#,
            Outcome::Up,
            "header:content-type",
        ),
        (
            "header-bad",
            &health,
            r#"headers = { ["content-type"] = "^text/html" }"#,
            Outcome::Down,
            "header:content-type",
        ),
        (
            "json-ok",
            &health,
            r#"json = { ["$.status"] = "UP", ["$.checks[0].ok"] = true, ["$.version"] = 3 }"#,
            Outcome::Up,
            "json:$.status",
        ),
        (
            "json-bad",
            &health,
            r#"json = { ["$.status"] = "DOWN" }"#,
            Outcome::Down,
            "json:$.status",
        ),
        (
            "max-time-ok",
            &root,
            r#"max_time = "2s""#,
            Outcome::Up,
            "max_time",
        ),
        (
            "max-time-bad",
            &slow,
            r#"max_time = "100ms""#,
            Outcome::Down,
            "max_time",
        ),
        (
            "warn-time-ok",
            &root,
            r#"warn_time = "2s""#,
            Outcome::Up,
            "warn_time",
        ),
        (
            "warn-time-bad",
            &slow,
            r#"warn_time = "100ms""#,
            Outcome::Degraded,
            "warn_time",
        ),
        (
            "max-body-ok",
            &big,
            r#"max_body = "4KiB""#,
            Outcome::Up,
            "max_body",
        ),
        (
            "max-body-bad",
            &big,
            r#"max_body = "4000B""#,
            Outcome::Down,
            "max_body",
        ),
        (
            "cert-days-ok",
            &tls,
            "cert_days = 30",
            Outcome::Up,
            "cert_days",
        ),
        (
            "cert-days-bad",
            &tls,
            "cert_days = 40000",
            Outcome::Down,
            "cert_days",
        ),
        (
            "cert-days-plain",
            &root,
            "cert_days = 1",
            Outcome::Down,
            "cert_days",
        ),
    ];
    let mut lua = String::new();
    for (name, url, expect, _, _) in cases {
        let tls = if url.starts_with("https") {
            "tls = { insecure = true },"
        } else {
            ""
        };
        lua.push_str(&format!(
            "site {{ name = \"{name}\", url = \"{url}\", {tls} expect = {{ {expect} }} }}\n"
        ));
    }
    config(dir.path(), &lua);
    let output = sitewatch(dir.path(), &["check", "--json"]).await;
    assert_eq!(
        output.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results = results(&output);
    for (name, _, _, outcome, assertion) in cases {
        let result = &results[*name];
        assert_eq!(result.outcome, *outcome, "{name}: {:?}", result.assertions);
        let decisive = result
            .assertions
            .iter()
            .find(|a| a.name == *assertion)
            .unwrap_or_else(|| {
                panic!(
                    "{name}: no {assertion} assertion in {:?}",
                    result.assertions
                )
            });
        assert_eq!(decisive.ok, *outcome == Outcome::Up, "{name}: {decisive:?}");
        if *outcome == Outcome::Down {
            let failure = result
                .failure
                .as_ref()
                .expect("down results carry a failure");
            assert_eq!(failure.kind, FailureKind::Assertion);
            assert!(
                failure.message.contains(assertion),
                "{name}: {}",
                failure.message
            );
        }
    }
    assert!(!results["warn-time-bad"].tls_insecure && results["cert-days-ok"].tls_insecure);
}

#[tokio::test]
async fn hostile_hooks_fail_their_own_assertion_and_nothing_else() {
    let server = app().await;
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/health");
    let hostile: &[(&str, &str, &str)] = &[
        ("spin", "while true do end", "instruction budget"),
        (
            "grow",
            "local t = {} while true do t[#t + 1] = {} end",
            "memory",
        ),
        ("exec", "os.execute('touch /tmp/sitewatch-pwned')", "os"),
        ("open", "io.open('/etc/passwd')", "io"),
        ("require", "require('socket')", "require"),
        ("bytecode", r#"assert(load("\27Lua\84\0"))()"#, "binary"),
        ("rep", "string.rep('x', 1 << 32)", "too large"),
        (
            "rep-grow",
            "local s = string.rep('x', 1 << 20) s = s:rep(4096)",
            "large",
        ),
    ];
    let mut lua = format!(
        r#"site {{ name = "honest", url = "{url}", hooks = {{ function(r) local d = json.decode(r.body) return {{ ok = d.status == "UP", metrics = {{ version = d.version }} }} end }} }}
"#
    );
    for (name, body, _) in hostile {
        lua.push_str(&format!("site {{ name = \"{name}\", url = \"{url}\", hooks = {{ function(r) {body} return true end }} }}\n"));
    }
    config(dir.path(), &lua);
    let started = std::time::Instant::now();
    let output = sitewatch(dir.path(), &["check", "--json"]).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "hostile hooks must be stopped promptly"
    );
    assert_eq!(output.status.code(), Some(1));
    let results = results(&output);
    let honest = &results["honest"];
    assert_eq!(honest.outcome, Outcome::Up, "{:?}", honest.assertions);
    assert_eq!(honest.metrics.get("version"), Some(&3.0));
    for (name, _, reason) in hostile {
        let result = &results[*name];
        assert_eq!(result.outcome, Outcome::Down, "{name}");
        let hook = result
            .assertions
            .iter()
            .find(|a| a.name.starts_with("hook:"))
            .expect("hook assertion");
        let why = hook.reason.clone().unwrap_or_default();
        assert!(
            !hook.ok && why.to_lowercase().contains(reason),
            "{name}: reason {why:?} should mention {reason:?}"
        );
    }
    assert!(!Path::new("/tmp/sitewatch-pwned").exists());
}

#[tokio::test]
async fn produce_with_an_invalid_config_exits_2_before_touching_kafka() {
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), "site { name = 'x', url = 'gopher://old' }\n");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sitewatch"))
        .args(["produce", "--config", "sites.lua"])
        .current_dir(dir.path())
        // A broker nobody listens on: the config error must come first.
        .env(
            "SITEWATCH_KAFKA_BROKERS",
            format!("127.0.0.1:{}", support::closed_port()),
        )
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("sites.lua:1:"));
}

#[tokio::test]
async fn a_check_scheduled_inside_a_maintenance_window_carries_its_name() {
    let server = app().await;
    let dir = tempfile::tempdir().unwrap();
    // "always" is open at every instant (each day from 00:00 UTC for a day); "past" never again.
    config(
        dir.path(),
        &format!(
            r#"site {{ name = "shop", url = "{url}" }}
               site {{ name = "api", url = "{url}" }}
               site {{ name = "blog", url = "{url}" }}
               maintenance {{ name = "past", at = "2000-01-01T00:00:00Z", duration = "1h" }}
               maintenance {{ name = "always", sites = {{ "shop", "blog" }}, every = "day", start = "00:00", duration = "1d" }}
               maintenance {{ name = "later", sites = {{ "blog" }}, every = "day", start = "00:00", duration = "1d" }}"#,
            url = server.url("/")
        ),
    );
    let output = sitewatch(dir.path(), &["check", "--json"]).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results = results(&output);
    let windows: Vec<(&str, Option<&str>)> = ["shop", "api", "blog"]
        .into_iter()
        .map(|site| (site, results[site].maintenance.as_deref()))
        .collect();
    assert_eq!(
        windows,
        [
            ("shop", Some("always")),
            ("api", None),
            ("blog", Some("always"))
        ],
        "the first declared window covering the site names it"
    );
    let line = String::from_utf8_lossy(&output.stdout);
    assert!(line.contains(r#""maintenance":"always""#), "{line}");
}

/// More sites than open files: `check` runs as many at a time as its open files limit allows
/// instead of opening every connection at once, so no site is reported down with "too many open
/// files". The child runs with soft = hard = 256 open files (it cannot raise them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_sites_than_open_files_are_all_checked() {
    const LIMIT: u64 = 256;
    const SITES: usize = 600;
    let server = support::serve("127.0.0.1:0", |_request, mut conn| async move {
        // Slow enough that connections overlap.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        conn.respond(200, &[("Content-Type", "text/plain")], b"ok")
            .await
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    config(
        dir.path(),
        &format!(
            "for i = 1, {SITES} do site {{ name = 's' .. i, url = '{}?' .. i }} end\n",
            server.url("/")
        ),
    );
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sitewatch"));
    command
        .args(["check", "--json"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn");
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().await.expect("run sitewatch");
    let results = results(&output);
    assert_eq!(
        results.len(),
        SITES,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let down: Vec<String> = results
        .values()
        .filter(|r| r.outcome != Outcome::Up)
        .map(|r| format!("{}: {:?}", r.site, r.failure))
        .take(5)
        .collect();
    assert!(down.is_empty(), "down: {down:#?}");
    assert_eq!(output.status.code(), Some(0));
}

/// Secrets in sitewatch's own environment never reach a request: env() refuses the variable
/// (set or not) and the value appears nowhere in the output.
#[tokio::test]
async fn env_cannot_read_sitewatchs_own_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cret-value-4217";
    for name in [
        "SITEWATCH_DATABASE_PASSWORD",
        "PGPASSWORD",
        "DATABASE_URL",
        "Sitewatch_Kafka_Sasl_Password",
    ] {
        config(
            dir.path(),
            &format!("site {{ name = 'a', url = 'http://127.0.0.1:9/', request = {{ headers = {{ Authorization = 'Bearer ' .. env('{name}') }} }} }}\n"),
        );
        for args in [&["validate"][..], &["check", "--json"][..]] {
            let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_sitewatch"));
            command
                .args(args)
                .current_dir(dir.path())
                .env("RUST_LOG", "debug")
                .env(name, secret);
            let output = command.output().await.expect("run sitewatch");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{name} {args:?}: {stderr}");
            assert!(
                stderr.contains(&format!("environment variable \"{name}\" is not available")),
                "{stderr}"
            );
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "{name} leaked"
            );
        }
    }
}

/// A hostile server cannot inflate a result: a hundred redirects with huge Locations, a huge
/// final URL and hooks quoting the body all end up in a result of a few KiB.
#[tokio::test]
async fn server_controlled_text_in_a_result_is_capped() {
    let server = support::serve("127.0.0.1:0", |request, mut conn| async move {
        let target = request.target.clone();
        let pad = "p".repeat(16 * 1024);
        if let Some(rest) = target.strip_prefix("/chain/") {
            let i: u32 = rest.split('?').next().unwrap().parse().unwrap();
            let next = format!("/chain/{}?{pad}", i + 1);
            conn.respond(307, &[("Location", next.as_str())], b"").await
        } else if target == "/long" {
            let next = format!("/landing?{}", "q".repeat(60 * 1024));
            conn.respond(302, &[("Location", next.as_str())], b"").await
        } else {
            conn.respond(200, &[], "b".repeat(1 << 20).as_bytes()).await
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = (0..20)
        .map(|_| "function(r) return false, r.body end")
        .collect::<Vec<_>>()
        .join(", ");
    config(
        dir.path(),
        &format!(
            "site {{ name = 'chain', url = '{}', max_redirects = 100 }}\n\
             site {{ name = 'long', url = '{}' }}\n\
             site {{ name = 'hooks', url = '{}', hooks = {{ {hooks} }} }}\n",
            server.url("/chain/0"),
            server.url("/long"),
            server.url("/page"),
        ),
    );
    let output = sitewatch(dir.path(), &["check", "--json"]).await;
    let results = results(&output);
    for (site, max) in [
        ("chain", 8 * 1024),
        ("long", 8 * 1024),
        ("hooks", 40 * 1024),
    ] {
        let size = serde_json::to_string(&results[site]).unwrap().len();
        assert!(size < max, "{site}: {size} bytes");
    }
    let chain = &results["chain"];
    assert_eq!(chain.outcome, Outcome::Down);
    let message = &chain.failure.as_ref().unwrap().message;
    assert!(message.contains("too many redirects"), "{message}");
    assert!(message.contains("more)"), "{message}");
    let long = &results["long"];
    assert!(long.final_url.as_ref().unwrap().len() <= 2048 + 3);
    let hooks = &results["hooks"];
    assert_eq!(hooks.assertions.len(), 21);
    for assertion in &hooks.assertions {
        assert!(assertion.reason.as_ref().map_or(0, String::len) <= 1024 + 3);
    }
    assert!(hooks.failure.as_ref().unwrap().message.len() <= 4096 + 3);
}

/// `check URL` without a sites.lua: the same table (or JSON) and exit codes, expectations from
/// flags, and a waterfall of the phases — TLS among them over https.
#[tokio::test]
async fn an_ad_hoc_url_is_checked_without_a_config_file() {
    let dir = tempfile::tempdir().unwrap(); // no sites.lua in it
    let server = app().await;
    let url = server.url("/health");

    let output = sitewatch(
        dir.path(),
        &["check", &url, "--expect-status", "200", "--body", "\"UP\""],
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("SITE"), "{stdout}");
    assert!(stdout.contains("127.0.0.1  up"), "{stdout}");
    for phase in ["DNS", "connect", "first byte", "transfer", "total"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(phase)),
            "{phase}: {stdout}"
        );
    }
    let tls_line = stdout.lines().find(|l| l.starts_with("TLS")).unwrap();
    assert!(tls_line.ends_with('-'), "no TLS over http: {tls_line}");
    assert!(stdout.contains('█'), "bars: {stdout}");

    // Expectations that fail: exit 1 with the reason; a bad URL or regex: exit 2.
    let output = sitewatch(dir.path(), &["check", &server.url("/missing"), "--json"]).await;
    assert_eq!(output.status.code(), Some(1));
    let result = results(&output).remove("127.0.0.1").expect("one result");
    assert_eq!(result.status, Some(404));
    assert_eq!(result.outcome, Outcome::Down);
    let output = sitewatch(
        dir.path(),
        &["check", &url, "--body", "needs \"quotes\" and \\d+ no"],
    )
    .await;
    assert_eq!(
        output.status.code(),
        Some(1),
        "a quoted regex is passed intact"
    );
    for bad in [
        vec!["check", "ftp://example.invalid/"],
        vec!["check", &url, "--body", "("],
    ] {
        let output = sitewatch(dir.path(), &bad).await;
        assert_eq!(output.status.code(), Some(2), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("<command line>:1"),
            "{bad:?}"
        );
    }

    // Over https with the server's CA: the waterfall has a TLS bar.
    let ca = support::TestCa::new("ad hoc CA");
    let https = support::TlsServer::start(
        &ca.leaf("localhost", &["127.0.0.1"], support::Validity::Until(2099)),
        None,
    );
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    let output = sitewatch(dir.path(), &["check", &https.url("/"), "--ca", "ca.pem"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tls_line = stdout.lines().find(|l| l.starts_with("TLS")).unwrap();
    assert!(
        tls_line.contains(" ms ") && tls_line.contains('█'),
        "{tls_line}"
    );
    // Without it the certificate is refused: down, exit 1.
    let output = sitewatch(dir.path(), &["check", &https.url("/")]).await;
    assert_eq!(output.status.code(), Some(1));
}

/// A failure after something arrived keeps what did: the 200 head of a body that timed out,
/// the last 302 of a redirect loop, the expiry of a certificate that failed verification.
#[tokio::test]
async fn what_arrived_before_a_failure_is_kept() {
    let server = support::serve("127.0.0.1:0", |request, mut conn| async move {
        match request.target.as_str() {
            "/stall" => {
                let _ = conn.head(200, &[("Content-Length", "100")]).await;
                conn.wait_closed(std::time::Duration::from_secs(5)).await;
            }
            "/loop1" => conn.respond(302, &[("Location", "/loop2")], b"").await,
            _ => conn.respond(302, &[("Location", "/loop1")], b"").await,
        }
    })
    .await;
    let ca = support::TestCa::new("check test CA");
    let expired = support::TlsServer::start(
        &ca.leaf("old", &["127.0.0.1"], support::Validity::Expired),
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    config(
        dir.path(),
        &format!(
            r#"
site {{ name = "stall", url = "{}", timeout = "500ms" }}
site {{ name = "loop", url = "{}" }}
site {{ name = "expired", url = "{}", tls = {{ ca = "ca.pem" }} }}
"#,
            server.url("/stall"),
            server.url("/loop1"),
            expired.url("/"),
        ),
    );
    let output = sitewatch(dir.path(), &["check", "--json"]).await;
    let results = results(&output);

    let stall = &results["stall"];
    let failure = stall.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::Timeout, "{failure:?}");
    assert_eq!(failure.phase, Some(sitewatch::result::Phase::Transfer));
    assert_eq!(stall.status, Some(200));
    assert_eq!(
        stall.final_url.as_deref(),
        Some(server.url("/stall").as_str())
    );

    let looped = &results["loop"];
    assert_eq!(
        looped.failure.as_ref().unwrap().kind,
        FailureKind::RedirectLoop
    );
    assert_eq!(looped.status, Some(302));
    assert_eq!(
        looped.final_url.as_deref(),
        Some(server.url("/loop2").as_str())
    );

    let expired = &results["expired"];
    let failure = expired.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::Tls, "{failure:?}");
    assert_eq!(failure.message, "certificate has expired");
    assert_eq!(
        expired.cert_not_after.map(|t| t.to_rfc3339()).as_deref(),
        Some("2001-01-01T00:00:00+00:00")
    );
    assert_eq!((expired.status, expired.final_url.as_deref()), (None, None));
}

/// "http:// redirects to https://" as a monitor: `follow_redirects = false` judges the 301
/// itself, its `Location` through `expect.headers`.
#[tokio::test]
async fn a_redirect_is_monitored_with_follow_redirects_false() {
    let https = format!("https://127.0.0.1:{}/", support::closed_port());
    let location = https.clone();
    let server = support::serve("127.0.0.1:0", move |_request, mut conn| {
        let location = location.clone();
        async move {
            conn.respond(301, &[("Location", location.as_str())], b"")
                .await
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("/");
    config(
        dir.path(),
        &format!(
            r#"
site {{ name = "to-https", url = "{url}", follow_redirects = false,
        expect = {{ status = 301, headers = {{ Location = "^https://" }} }} }}
site {{ name = "to-www", url = "{url}", follow_redirects = false,
        expect = {{ status = 301, headers = {{ Location = "^https://www\\." }} }} }}
site {{ name = "followed", url = "{url}", expect = {{ status = 301 }} }}
"#
        ),
    );
    let output = sitewatch(dir.path(), &["check", "--json"]).await;
    let results = results(&output);

    let up = &results["to-https"];
    assert_eq!(up.outcome, Outcome::Up, "{:?}", up.failure);
    assert_eq!(
        (up.status, up.final_url.as_deref()),
        (Some(301), Some(url.as_str()))
    );

    let wrong = &results["to-www"];
    assert_eq!(wrong.outcome, Outcome::Down);
    let failure = wrong.failure.as_ref().unwrap();
    assert_eq!(failure.kind, FailureKind::Assertion);
    assert!(
        failure.message.contains("header:location") && failure.message.contains(&https),
        "{}",
        failure.message
    );
    let location = wrong
        .assertions
        .iter()
        .find(|a| a.name == "header:location")
        .unwrap();
    assert_eq!(
        (location.ok, location.actual.as_str()),
        (false, https.as_str())
    );

    // Following (the default) is unchanged: the 301 is never the answer.
    let followed = &results["followed"];
    assert_eq!(
        followed.failure.as_ref().unwrap().kind,
        FailureKind::Connect
    );
    assert_eq!(followed.status, Some(301), "the last head that arrived");
}

/// `check` holds each `host:port` to `--max-per-host` checks at a time, as `produce` does: a
/// small server is not sent every site of a large file at once.
#[tokio::test]
async fn check_holds_each_host_to_max_per_host() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let server = {
        let (now, most) = (Arc::clone(&now), Arc::clone(&most));
        support::serve("127.0.0.1:0", move |_request, mut conn| {
            let (now, most) = (Arc::clone(&now), Arc::clone(&most));
            async move {
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(running, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                conn.respond(200, &[("Content-Type", "text/plain")], b"ok")
                    .await
            }
        })
        .await
    };
    let dir = tempfile::tempdir().unwrap();
    config(
        dir.path(),
        &format!(
            "for i = 1, 24 do site {{ name = 's' .. i, url = '{}?' .. i }} end\n",
            server.url("/")
        ),
    );
    let output = sitewatch(dir.path(), &["check", "--json", "--max-per-host", "3"]).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(results(&output).len(), 24);
    let most = most.load(Ordering::SeqCst);
    assert!((1..=3).contains(&most), "{most} requests at once");
}
