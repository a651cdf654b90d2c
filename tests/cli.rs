//! The binary as a newcomer meets it: usage errors, numeric flags out of range, logs written to
//! a file or a closed pipe. No infrastructure needed.

mod support;

use std::process::{Command, Stdio};

fn sitewatch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sitewatch"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sitewatch")
}

#[test]
fn usage_errors_exit_64_and_name_the_flag() {
    let cases: [(&[&str], &str); 7] = [
        (&["produce", "--max-per-host", "0"], "--max-per-host"),
        (&["produce", "--max-concurrency", "0"], "--max-concurrency"),
        (&["run", "--max-per-host", "100001"], "--max-per-host"),
        (&["consume", "--batch-rows", "0"], "--batch-rows"),
        (&["produce", "--topic-partitions=0"], "--topic-partitions"),
        (&["prune", "--older-than", "6m"], "less than an hour"),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, needle) in cases {
        let out = sitewatch(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let help = sitewatch(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage"));
}

fn lua_site(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let config = dir.join("sites.lua");
    std::fs::write(
        &config,
        format!(r#"site {{ name = "local", url = "{url}", timeout = "2s" }}"#),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_to_a_file_have_no_colour_and_a_closed_stderr_is_not_fatal() {
    // A refused connection: the probe logs it at debug, and the check exits 1 (site down).
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}/", support::closed_port());
    let config = lua_site(dir.path(), &url);
    let config = config.to_str().unwrap().to_owned();
    let log = dir.path().join("log.txt");
    let run = |stderr: Stdio| {
        let config = config.clone();
        std::thread::spawn(move || {
            Command::new(env!("CARGO_BIN_EXE_sitewatch"))
                .args(["check", "--config", &config])
                .env("RUST_LOG", "debug")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .status()
                .unwrap()
        })
        .join()
        .unwrap()
    };
    let status = run(Stdio::from(std::fs::File::create(&log).unwrap()));
    assert_eq!(status.code(), Some(1));
    let text = std::fs::read(&log).unwrap();
    assert!(!text.is_empty(), "debug logs were written");
    assert!(!text.contains(&0x1b), "no escape bytes in a log file");

    // stderr a pipe whose reader is gone: writes fail, the check still runs to its exit code.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = run(Stdio::from(writer));
    assert_eq!(status.code(), Some(1), "not 101 (panic) or 134 (abort)");
}

/// A broker address overridden with `--kafka-opt bootstrap.servers=…` is the one an error names,
/// with the first cause (the refused connection), not only "all brokers are down".
#[test]
fn kafka_startup_errors_name_the_brokers_dialled_and_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let config = lua_site(dir.path(), "http://127.0.0.1:9/");
    let (setting, dialled) = (support::closed_port(), support::closed_port());
    let out = Command::new(env!("CARGO_BIN_EXE_sitewatch"))
        .args([
            "produce",
            "--config",
            config.to_str().unwrap(),
            "--kafka-opt",
        ])
        .arg(format!("bootstrap.servers=127.0.0.1:{dialled}"))
        .env("SITEWATCH_KAFKA_BROKERS", format!("127.0.0.1:{setting}"))
        .env("SITEWATCH_KAFKA_SECURITY_PROTOCOL", "plaintext")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run sitewatch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(
        last.contains(&format!("cannot reach Kafka at 127.0.0.1:{dialled}")),
        "{stderr}"
    );
    assert!(last.contains("Connection refused"), "{stderr}");
}

/// Runs `sitewatch` in `dir`.
fn sitewatch_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sitewatch"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run sitewatch")
}

#[test]
fn init_writes_a_valid_starter_and_the_editor_definitions_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = sitewatch_in(dir.path(), &["init"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let definitions = std::fs::read_to_string(dir.path().join("sitewatch.d.lua")).unwrap();
    let shipped = include_str!("../scripts/sitewatch.d.lua");
    assert_eq!(
        definitions, shipped,
        "sitewatch.d.lua is the repository's copy"
    );
    let starter = std::fs::read_to_string(dir.path().join("sites.lua")).unwrap();
    assert!(starter.starts_with("-- "), "a commented starter");

    let out = sitewatch_in(dir.path(), &["validate"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the starter must validate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("site(s)"));

    // Edited since: a second init refuses and leaves it alone.
    std::fs::write(dir.path().join("sites.lua"), "-- mine\n").unwrap();
    let out = sitewatch_in(dir.path(), &["init"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sites.lua and sitewatch.d.lua already exist"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("sites.lua")).unwrap(),
        "-- mine\n"
    );

    // One of the two present is enough to refuse, and nothing is written.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("sitewatch.d.lua"), "").unwrap();
    let out = sitewatch_in(other.path(), &["init"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sitewatch.d.lua already exists"),
        "{stderr}"
    );
    assert!(!other.path().join("sites.lua").exists());
}

#[test]
fn completions_for_bash_zsh_and_fish_and_a_man_page() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef sitewatch"),
        ("fish", "complete -c sitewatch"),
    ] {
        let out = sitewatch(&["completions", shell]);
        let script = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(script.contains(marker), "{shell}:\n{script}");
        // Subcommands and their flags are in it.
        for word in ["produce", "metrics-addr", "older-than"] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
    }
    let out = sitewatch(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "an unknown shell is a usage error"
    );

    let out = sitewatch(&["man"]);
    let page = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(page.starts_with(".ie"), "roff:\n{page}");
    assert!(page.contains(".TH sitewatch 1"), "{page}");
    for word in ["validate", "produce", "completions"] {
        assert!(page.contains(word), "the man page lacks {word}");
    }
}

/// With `--log-format json`, stderr is JSON lines to the end: the fatal error is one too, with
/// its chain of causes and the exit code. Debug logs of a failing check say what they mean, not
/// Rust's `Debug` forms of the values behind them.
#[test]
fn json_logs_stay_json_through_the_fatal_error_and_show_no_debug_forms() {
    let dir = tempfile::tempdir().unwrap();
    let config = lua_site(dir.path(), "http://127.0.0.1:9/");
    let out = Command::new(env!("CARGO_BIN_EXE_sitewatch"))
        .args([
            "produce",
            "--log-format",
            "json",
            "--config",
            config.to_str().unwrap(),
        ])
        .env(
            "SITEWATCH_KAFKA_BROKERS",
            format!("127.0.0.1:{}", support::closed_port()),
        )
        .env("SITEWATCH_KAFKA_SECURITY_PROTOCOL", "plaintext")
        .stdin(Stdio::null())
        .output()
        .expect("run sitewatch");
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = lines.last().expect("a log line");
    assert_eq!(last["level"], "ERROR", "{last}");
    assert_eq!(last["fields"]["exit_code"], 3, "{last}");
    let error = last["fields"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot reach Kafka"), "{last}");

    // A refused check at debug level: the failure kind as it is stored (`connect`), not `Connect`.
    let url = format!("http://127.0.0.1:{}/", support::closed_port());
    let config = lua_site(dir.path(), &url);
    let out = Command::new(env!("CARGO_BIN_EXE_sitewatch"))
        .args(["check", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run sitewatch");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failed = stderr
        .lines()
        .find(|l| l.contains("probe failed"))
        .unwrap_or_else(|| panic!("no probe failure logged: {stderr}"));
    assert!(failed.contains("kind=\"connect\""), "{failed}");
    for line in stderr.lines().filter(|l| l.contains("sitewatch")) {
        for debug_form in ["Some(", "=None", " { ", "TimeDelta"] {
            assert!(!line.contains(debug_form), "{debug_form:?} in {line}");
        }
    }
}

/// The hook workers evaluate `sites.lua` again for its functions; what it prints at load time
/// appears once, from the load of the configuration itself.
#[test]
fn load_time_output_appears_once_however_many_hook_workers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sites.lua");
    std::fs::write(
        &config,
        format!(
            r#"print("loaded-marker")
log.info("logged-marker")
site {{ name = "a", url = "http://127.0.0.1:{}/", timeout = "1s", hooks = {{ function(r) return true end }} }}"#,
            support::closed_port()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sitewatch"))
        .args(["check", "--config", config.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run sitewatch");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("loaded-marker").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("logged-marker").count(), 1, "{stderr}");
}
