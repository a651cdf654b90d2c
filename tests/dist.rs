//! `dist/sitewatch.service`: hardened as documented, its command line accepted by this build,
//! and `systemd-analyze verify` clean where systemd's tools are installed.

use std::path::Path;
use std::process::Command;

fn unit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/sitewatch.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The values of `key=` lines (comments left out).
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_unit_is_hardened_and_reloads_with_sighup() {
    let unit = unit();
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("EnvironmentFile", "/etc/sitewatch/sitewatch.env"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(values(&unit, key), [value], "{key}");
    }
}

#[test]
fn the_units_command_line_is_accepted_by_this_build() {
    let unit = unit();
    let exec = values(&unit, "ExecStart");
    let args: Vec<&str> = exec[0].split_whitespace().skip(1).collect();
    // clap rejects an unknown flag before it gets to --help: exit 0 means every flag exists.
    let out = Command::new(env!("CARGO_BIN_EXE_sitewatch"))
        .args(&args)
        .arg("--help")
        .output()
        .expect("run sitewatch");
    assert!(
        out.status.success(),
        "ExecStart {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: systemd-analyze is not installed (Debian package systemd)");
        return;
    }
    // verify wants the executable to exist: point the unit at this build's binary.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sitewatch.service");
    let text = unit().replace("/usr/local/bin/sitewatch", env!("CARGO_BIN_EXE_sitewatch"));
    std::fs::write(&path, text).unwrap();
    // --man=no: the man page (`sitewatch man`) is not installed on a build machine.
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and bad values are only warnings to verify: any output is a failure here.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}
