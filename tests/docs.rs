//! The documentation against the binary, as a new user meets both: every `sites.lua` example in
//! the docs is run by the real `sitewatch`, and every flag of every command is documented (and
//! every flag the docs give a command exists). No infrastructure needed.
//!
//! # Which Lua blocks run
//!
//! Every ` ```lua ` fence in `README.md` and `docs/*.md`, and the repository's own `sites.lua`:
//!
//! - a block that declares a site (it contains `site {` or `site{`) is a whole `sites.lua`. It
//!   is written to a temporary directory with what it needs beside it — `scripts/` copied from
//!   the repository when it mentions `script`, a generated PEM file at every `ca = "…"`, `client_cert = "…"` and
//!   `client_key = "…"` path, and every variable it reads with `env("NAME")` set — and
//!   `sitewatch validate --config FILE` must exit 0. Whole blocks of the docs are then also
//!   probed once with `sitewatch check` against a loopback HTTPS server (see [`check_block`]);
//!   the repository's `sites.lua` is not, its expectations are about the real sites it names;
//! - a block right after a line `<!-- fragment -->` is part of a file (say, one `expect` table
//!   to be pasted into a site) and is only counted;
//! - any other ` ```lua ` block fails the test, and so does a fence in another language that
//!   declares a site: no example is skipped silently. Finding no whole block at all fails too.
//!
//! # Which flags must be documented
//!
//! The subcommands are those `sitewatch --help` lists (and `rollup`'s, as `rollup rebuild`); a
//! command's flags are the long flags its `--help` lists under `Options:`. Their home is the
//! table of README.md's "Command-line flags" section: one row per flag or group of flags, the
//! flags in the first cell, the commands that take them in the second (`every command`, or
//! names separated by commas). Every flag in `--help` must have a row naming its command, and
//! every row must name only flags its commands have. Beyond the table, a code span or a line
//! of a code block in README.md or `docs/*.md` that runs `sitewatch <command> … --flag` may
//! only use flags that command has.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The line that marks the next ` ```lua ` block as part of a file, not a whole `sites.lua`.
const FRAGMENT_MARK: &str = "<!-- fragment -->";

/// Value of every variable a block reads with `env()`: a URL, so it serves as a webhook
/// address and as a token alike.
const ENV_VALUE: &str = "http://127.0.0.1:9/docs-example";

/// The heading of README.md's section that is the home of every flag.
const FLAGS_HEADING: &str = "### Command-line flags";

/// The repository's root.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sitewatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sitewatch"))
        .args(args)
        .stdin(Stdio::null())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sitewatch")
}

/// README.md and every `docs/*.md`, as (path relative to the repository, text), sorted.
fn markdown_files() -> Vec<(String, String)> {
    let mut paths = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("read docs/")
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read a markdown file");
            let name = path.strip_prefix(repo()).unwrap_or(&path);
            (name.display().to_string(), text)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Lua blocks

/// A fenced code block of a markdown file.
struct Fence {
    /// The word after the opening backticks (`lua`, `sh`, or empty).
    language: String,
    /// 1-based line of the opening fence.
    line: usize,
    /// The line before the opening fence is [`FRAGMENT_MARK`].
    fragment: bool,
    text: String,
}

/// Every fenced block of `markdown` (fences at the start of a line, as in all our docs).
fn fences(markdown: &str) -> Vec<Fence> {
    let mut fences = Vec::new();
    let mut open: Option<Fence> = None;
    let mut previous = "";
    for (index, line) in markdown.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(language)) => {
                open = Some(Fence {
                    language: language.trim().to_owned(),
                    line: index + 1,
                    fragment: previous.trim() == FRAGMENT_MARK,
                    text: String::new(),
                })
            }
            (Some(_), Some(_)) => fences.extend(open.take()),
            (Some(fence), None) => {
                fence.text.push_str(line);
                fence.text.push('\n');
            }
            (None, None) => {}
        }
        previous = line;
    }
    assert!(open.is_none(), "a fence is never closed");
    fences
}

/// Whether `lua` declares a site: the rule for a whole `sites.lua`.
fn declares_a_site(lua: &str) -> bool {
    lua.contains("site {") || lua.contains("site{")
}

/// A whole `sites.lua` found in the docs (or the repository's own).
struct Example {
    /// Where it is: `docs/config.md:8` (the opening fence) or `sites.lua`.
    origin: String,
    lua: String,
    /// Probed with `sitewatch check` too.
    check: bool,
}

/// Every whole `sites.lua` of the docs and the repository, and how many fragments were seen;
/// panics listing every block that is neither.
fn examples() -> (Vec<Example>, usize) {
    let mut examples = Vec::new();
    let mut fragments = 0;
    let mut unmarked = Vec::new();
    for (file, text) in markdown_files() {
        for fence in fences(&text) {
            let origin = format!("{file}:{}", fence.line);
            match (fence.language == "lua", declares_a_site(&fence.text)) {
                (true, _) if fence.fragment => fragments += 1,
                (true, true) => examples.push(Example {
                    origin,
                    lua: fence.text,
                    check: true,
                }),
                (true, false) => unmarked.push(format!(
                    "{origin}: a lua block that declares no site and is not marked {FRAGMENT_MARK}"
                )),
                (false, true) => unmarked.push(format!(
                    "{origin}: a {:?} block declares a site: make it ```lua",
                    fence.language
                )),
                (false, false) => {}
            }
        }
    }
    assert!(unmarked.is_empty(), "\n{}", unmarked.join("\n"));
    let own = std::fs::read_to_string(repo().join("sites.lua")).expect("read sites.lua");
    examples.push(Example {
        origin: "sites.lua".into(),
        lua: own,
        check: false,
    });
    (examples, fragments)
}

/// Every `NAME` of `env("NAME")` in `lua`.
fn env_names(lua: &str) -> BTreeSet<String> {
    let pattern = regex::Regex::new(r#"\benv\s*\(?\s*"([^"]+)""#).unwrap();
    pattern
        .captures_iter(lua)
        .map(|c| c[1].to_owned())
        .collect()
}

/// A temporary directory holding `lua` as `sites.lua`, ready to load: `scripts/` beside it and
/// a PEM file signed by `ca` at every TLS path it names.
fn example_dir(lua: &str, ca: &support::TestCa) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("sites.lua"), lua).unwrap();
    if lua.contains("script") {
        let scripts = dir.path().join("scripts");
        std::fs::create_dir(&scripts).unwrap();
        for entry in std::fs::read_dir(repo().join("scripts")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, scripts.join(path.file_name().unwrap())).unwrap();
        }
    }
    let client = ca.leaf(
        "sitewatch client",
        &["client.example"],
        support::Validity::Until(2099),
    );
    let paths = regex::Regex::new(r#"\b(ca|client_cert|client_key)\s*=\s*"([^"]+)""#).unwrap();
    for found in paths.captures_iter(lua) {
        let pem = match &found[1] {
            "ca" => &ca.cert_pem,
            "client_cert" => &client.cert_pem,
            _ => &client.key_pem,
        };
        let relative = Path::new(&found[2]);
        assert!(
            relative.is_relative() && !found[2].contains(".."),
            "an example names the TLS file {:?}: use a path inside the example's directory",
            &found[2]
        );
        let path = dir.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, pem).unwrap();
    }
    dir
}

/// Where line `n` of the example (`sites.lua:n` in the binary's messages) is: the fence's line
/// plus `n` in a markdown file.
fn lines_hint(origin: &str) -> String {
    match origin.rsplit_once(':') {
        Some((file, fence)) => format!(" (its sites.lua:N is {file}:{fence}+N)"),
        None => String::new(),
    }
}

/// Runs the binary in `dir` with `args` and the variables `lua` reads set.
fn run_example(dir: &Path, lua: &str, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sitewatch"));
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .env("RUST_LOG", "warn");
    for name in env_names(lua) {
        command.env(name, ENV_VALUE);
    }
    for (name, value) in extra {
        command.env(name, value);
    }
    command.output().expect("run sitewatch")
}

#[test]
fn every_sites_lua_example_validates() {
    let (examples, fragments) = examples();
    assert!(
        examples.len() > 1,
        "no whole sites.lua found in README.md or docs/*.md: the test would pass vacuously"
    );
    let ca = support::TestCa::new("docs example CA");
    let mut failures = Vec::new();
    for example in &examples {
        let dir = example_dir(&example.lua, &ca);
        let out = run_example(
            dir.path(),
            &example.lua,
            &["validate", "--config", "sites.lua"],
            &[],
        );
        if out.status.code() != Some(0) {
            failures.push(format!(
                "{}{}: sitewatch validate exited {:?}:\n{}",
                example.origin,
                lines_hint(&example.origin),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    eprintln!(
        "validated {} whole sites.lua examples ({fragments} fragments not run)",
        examples.len()
    );
}

/// The body of every page but `/health`: what example.com serves, near enough.
const PAGE: &[u8] = b"<!doctype html><html><head><title>Example Domain</title></head>\
<body><h1>Example Domain</h1><p>This domain is for use in documentation examples.</p></body></html>";

/// The body of `/health`: a health endpoint as `expect.json` and `script "json_status"` want it.
/// The path the example server answers with `301` to `https://example.com/`, for the docs'
/// example of monitoring a redirect (`follow_redirects = false`).
const MOVED: &str = "/moved";
const HEALTH: &[u8] = br#"{"status":"UP","checks":[{"name":"db","ok":true}]}"#;

/// An HTTPS server on 127.0.0.1 standing in for every host the examples name: `/health`
/// answers JSON, every other path an HTML page. One thread per connection, like
/// `support::TlsServer`, which answers a single fixed body.
fn example_server(leaf: &support::Leaf) -> SocketAddr {
    let acceptor = Arc::new(support::acceptor(leaf).build());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let acceptor = acceptor.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(mut tls) = acceptor.accept(stream) else {
                    return;
                };
                let Some(path) = read_request(&mut tls) else {
                    return;
                };
                if path == MOVED {
                    let _ = write!(
                        tls,
                        "HTTP/1.1 301 Moved Permanently\r\nLocation: https://example.com/\r\n\
                         Content-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = tls.shutdown();
                    return;
                }
                let (content_type, body) = match path.as_str() {
                    "/health" => ("application/json", HEALTH),
                    _ => ("text/html; charset=UTF-8", PAGE),
                };
                let _ = write!(
                    tls,
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(body);
                let _ = tls.shutdown();
            });
        }
    });
    addr
}

/// Reads a request head and its `Content-Length` body (a POST's); returns the path.
fn read_request(stream: &mut impl Read) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&seen[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    while seen.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let target = head.split(' ').nth(1)?;
    Some(target.split('?').next().unwrap_or(target).to_owned())
}

/// `lua` with every site's URL sent to `addr`: a wrapper around `site` put on the first line,
/// so the example's own lines keep their numbers. Only scheme, host and port change; path,
/// expectations, requests and hooks are the example's.
fn pointed_at(lua: &str, addr: SocketAddr) -> String {
    format!(
        "local docs_site = site; site = function(t) \
         if type(t) == \"table\" and type(t.url) == \"string\" then \
         t.url = (t.url:gsub(\"^https?://[^/]+\", \"https://{addr}\")) end \
         return docs_site(t) end {lua}"
    )
}

/// Probes every whole example of the docs as written, except that every URL's host is a
/// loopback HTTPS server whose certificate (for 127.0.0.1) is signed by a test CA, trusted
/// through `SSL_CERT_FILE` (OpenSSL's file of default roots): `sitewatch check` must exit 0 with no
/// failed hard assertion (a `warn_time` over on a loaded machine only degrades).
#[test]
fn every_docs_example_passes_against_a_loopback_server() {
    let (examples, _) = examples();
    let examples: Vec<&Example> = examples.iter().filter(|e| e.check).collect();
    assert!(
        examples
            .iter()
            .any(|e| e.origin.starts_with("docs/config.md:")),
        "docs/config.md has no whole sites.lua to check"
    );
    let ca = support::TestCa::new("docs example CA");
    let addr =
        example_server(&ca.leaf("127.0.0.1", &["127.0.0.1"], support::Validity::Until(2099)));
    let mut failures = Vec::new();
    for example in &examples {
        let dir = example_dir(&pointed_at(&example.lua, addr), &ca);
        let trust = dir.path().join("docs-test-roots.pem");
        std::fs::write(&trust, &ca.cert_pem).unwrap();
        let out = run_example(
            dir.path(),
            &example.lua,
            &["check", "--config", "sites.lua", "--json"],
            &[("SSL_CERT_FILE", trust.to_str().unwrap())],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut problems = Vec::new();
        for line in stdout.lines() {
            let result: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not a CheckResult ({e}): {line}", example.origin));
            let failed: Vec<String> = result["assertions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["ok"] == false && a["level"] == "fail")
                .map(|a| a.to_string())
                .collect();
            if result["outcome"] == "down" || !failed.is_empty() {
                problems.push(format!(
                    "  site {}: {} {} {}",
                    result["site"],
                    result["outcome"],
                    result["failure"],
                    failed.join(" ")
                ));
            }
        }
        if out.status.code() != Some(0) || !problems.is_empty() || stdout.trim().is_empty() {
            failures.push(format!(
                "{}{}: sitewatch check exited {:?}\n{}\nstderr:\n{}",
                example.origin,
                lines_hint(&example.origin),
                out.status.code(),
                problems.join("\n"),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    eprintln!(
        "checked {} docs examples against a loopback server",
        examples.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Flags

/// The lines of the `heading:` section of a clap help text (up to the next blank line).
fn help_section<'a>(help: &'a str, heading: &str) -> Vec<&'a str> {
    help.lines()
        .skip_while(|line| line.trim() != heading)
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .collect()
}

/// The long flags under `Options:` in `help`: the first `--name` of each line that starts
/// with a dash (descriptions, on their own lines in the long layout, do not).
fn help_flags(help: &str) -> BTreeSet<String> {
    let flag = regex::Regex::new(r"--[a-z][a-z0-9-]*").unwrap();
    let mut flags = BTreeSet::new();
    let mut in_options = false;
    for line in help.lines() {
        if !line.starts_with(' ') {
            in_options = line.trim() == "Options:";
            continue;
        }
        if in_options && line.trim_start().starts_with('-') {
            flags.extend(flag.find(line).map(|m| m.as_str().to_owned()));
        }
    }
    flags.remove("--help");
    flags.remove("--version");
    flags
}

/// The names in a help text's `Commands:` section, without `help`.
fn help_commands(help: &str) -> Vec<String> {
    help_section(help, "Commands:")
        .iter()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// Every command that does work (`rollup rebuild`, not `rollup`) → its long flags.
fn binary_flags() -> BTreeMap<String, BTreeSet<String>> {
    let help = |args: &[&str]| {
        let out = sitewatch(args);
        assert_eq!(out.status.code(), Some(0), "sitewatch {args:?}");
        String::from_utf8(out.stdout).expect("help is UTF-8")
    };
    let mut commands = BTreeMap::new();
    for command in help_commands(&help(&["--help"])) {
        let text = help(&[&command, "--help"]);
        let subcommands = help_commands(&text);
        for sub in &subcommands {
            let text = help(&[&command, sub, "--help"]);
            commands.insert(format!("{command} {sub}"), help_flags(&text));
        }
        if subcommands.is_empty() {
            commands.insert(command, help_flags(&text));
        }
    }
    commands
}

/// The flag table of README.md: (line, flags of the first cell, commands of the second).
fn flag_table(readme: &str) -> Vec<(usize, BTreeSet<String>, Vec<String>)> {
    let flag = regex::Regex::new(r"--[a-z][a-z0-9-]*").unwrap();
    let start = readme
        .lines()
        .position(|line| line.trim() == FLAGS_HEADING)
        .unwrap_or_else(|| panic!("README.md has no {FLAGS_HEADING:?} section"));
    let mut rows = Vec::new();
    for (index, line) in readme.lines().enumerate().skip(start + 1) {
        if line.starts_with('#') {
            break;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        if !line.starts_with("| `-") || cells.len() < 3 {
            continue;
        }
        let flags = flag.find_iter(cells[0]).map(|m| m.as_str().to_owned());
        let commands = cells[1]
            .split(',')
            .map(|c| c.trim().trim_matches('`').to_owned())
            .collect();
        rows.push((index + 1, flags.collect(), commands));
    }
    rows
}

#[test]
fn every_flag_of_every_command_is_documented_and_every_documented_flag_exists() {
    let binary = binary_flags();
    assert!(binary.len() > 10, "too few commands in --help: {binary:?}");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let table = flag_table(&readme);

    let mut documented: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (line, flags, commands) in &table {
        for command in commands {
            let names: Vec<&str> = match command.as_str() {
                "every command" => binary.keys().map(String::as_str).collect(),
                name if binary.contains_key(name) => vec![name],
                name => {
                    problems.push(format!("README.md:{line}: no command {name:?}"));
                    continue;
                }
            };
            for name in names {
                documented.entry(name).or_default().extend(flags.clone());
            }
        }
    }
    let mut checked = 0;
    for (command, flags) in &binary {
        let docs = documented
            .get(command.as_str())
            .cloned()
            .unwrap_or_default();
        let missing: Vec<&String> = flags.difference(&docs).collect();
        let stale: Vec<&String> = docs.difference(flags).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{command}: in --help, not in README.md's flag table: {missing:?}"
            ));
        }
        if !stale.is_empty() {
            problems.push(format!(
                "{command}: in README.md's flag table, not in --help: {stale:?}"
            ));
        }
        checked += flags.len();
    }

    // `sitewatch <command> … --flag` anywhere in the docs: the flag must be the command's.
    let mut uses = 0;
    for (file, text) in markdown_files() {
        for (index, line) in text.lines().enumerate() {
            for command_line in command_lines(line) {
                for (command, flag) in flag_uses(&command_line, &binary) {
                    uses += 1;
                    if !binary[&command].contains(&flag) {
                        problems.push(format!(
                            "{file}:{}: `sitewatch {command}` has no {flag}",
                            index + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    assert!(
        uses > 0,
        "no `sitewatch <command> --flag` found in the docs"
    );
    eprintln!(
        "{checked} flags of {} commands documented; {uses} flags used in the docs exist",
        binary.len()
    );
}

/// The pieces of a markdown line that may run sitewatch: each inline code span, or the whole
/// line when it is not prose (a code block line has no backticks; table cells are split by
/// the spans themselves).
fn command_lines(line: &str) -> Vec<String> {
    if line.contains('`') {
        line.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    } else {
        vec![line.to_owned()]
    }
}

/// `(command, --flag)` for each flag after `sitewatch <command>` in `text` (a `rollup`
/// command is `rollup <sub>`), up to a shell comment.
fn flag_uses(text: &str, binary: &BTreeMap<String, BTreeSet<String>>) -> Vec<(String, String)> {
    let text = text.split(" #").next().unwrap_or(text);
    let words: Vec<&str> = text.split_whitespace().collect();
    let flag = regex::Regex::new(r"^\[?(--[a-z][a-z0-9-]*)").unwrap();
    let mut uses = Vec::new();
    for (i, word) in words.iter().enumerate() {
        if !word.ends_with("sitewatch") || i + 1 >= words.len() {
            continue;
        }
        let mut command = words[i + 1].to_owned();
        let mut rest = i + 2;
        if let Some(sub) = words.get(rest) {
            let nested = format!("{} {sub}", words[i + 1]);
            if binary.contains_key(&nested) {
                command = nested;
                rest += 1;
            }
        }
        if !binary.contains_key(&command) {
            continue;
        }
        for word in &words[rest..] {
            if let Some(found) = flag.captures(word) {
                uses.push((command.clone(), found[1].to_owned()));
            }
        }
    }
    uses
}
