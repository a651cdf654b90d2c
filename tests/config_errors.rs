//! Configuration errors, end to end: each kind of mistake in `sites.lua` is reported with the
//! file and line of the `site{}` (or helper) call, and every error comes out at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sitewatch::config::{self, load_str, Config, ConfigErrors, StatusMatcher};

const FILE: &str = "sites.lua";

fn load(text: &str) -> Result<Config, ConfigErrors> {
    load_str(Path::new(FILE), text, Path::new("/nonexistent/scripts"))
}

fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(errors) => errors.to_string().lines().map(str::to_string).collect(),
    }
}

/// Asserts some error line starts with `sites.lua:<line>:` and contains every needle.
#[track_caller]
fn assert_error(text: &str, line: u32, needles: &[&str]) {
    let lines = errors(text);
    let prefix = format!("{FILE}:{line}: ");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&prefix) && needles.iter().all(|n| l.contains(n))),
        "no error at line {line} containing {needles:?}; got:\n{}",
        lines.join("\n")
    );
}

#[test]
fn unknown_keys() {
    let cases: [(&str, &[&str]); 6] = [
        (
            r#"site { name = "a", url = "https://a.example/", intervall = "1m" }"#,
            &[r#"site "a""#, r#"unknown key "intervall" in site"#],
        ),
        (
            r#"site { name = "a", url = "https://a.example/", expect = { stauts = 200 } }"#,
            &[r#"unknown key "stauts" in expect"#],
        ),
        (
            r#"site { name = "a", url = "https://a.example/", request = { verb = "GET" } }"#,
            &[r#"unknown key "verb" in request"#],
        ),
        (
            r#"site { name = "a", url = "https://a.example/", tls = { cert = "x.pem" } }"#,
            &[r#"unknown key "cert" in tls"#],
        ),
        (
            r#"defaults { intervall = "1m" }"#,
            &[r#"unknown key "intervall" in defaults"#],
        ),
        (
            r#"site { "a", url = "https://a.example/", name = "a" }"#,
            &["unknown key [1] in site"],
        ),
    ];
    for (text, needles) in cases {
        assert_error(&format!("\n{text}"), 2, needles);
    }
}

#[test]
fn wrong_types() {
    let cases: [(&str, &[&str]); 7] = [
        (
            r#"site { name = 42, url = "https://a.example/" }"#,
            &["name must be a string, got number"],
        ),
        (
            r#"site { name = "a", url = true }"#,
            &["url must be a string, got boolean"],
        ),
        (
            r#"site { name = "a", url = "https://a.example/", expect = "200" }"#,
            &["expect must be a table, got string"],
        ),
        (
            r#"site { name = "a", url = "https://a.example/", retries = "1" }"#,
            &["retries must be a number, got string"],
        ),
        (
            r#"site { name = "a", url = "https://a.example/", tls = { insecure = "yes" } }"#,
            &["tls.insecure must be a boolean"],
        ),
        (
            r#"site { name = "a", url = "https://a.example/", hooks = { 1 } }"#,
            &["hooks[1] must be a function, got number"],
        ),
        (r#"site "a""#, &["site{} expects a table, got string"]),
    ];
    for (text, needles) in cases {
        assert_error(text, 1, needles);
    }
}

#[test]
fn bad_durations() {
    let cases: [(&str, &str); 6] = [
        ("10", "a number needs a unit"),
        (r#""10""#, "missing unit"),
        (r#""abc""#, "expected a number"),
        (r#""-1s""#, "must not be negative"),
        (r#""0s""#, "greater than zero"),
        (r#""5w""#, "unknown unit"),
    ];
    for (value, reason) in cases {
        let text =
            format!("site {{ name = \"a\", url = \"https://a.example/\", interval = {value} }}");
        assert_error(&text, 1, &["interval", "not a valid duration", reason]);
        let text = format!("site {{ name = \"a\", url = \"https://a.example/\", expect = {{ max_time = {value} }} }}");
        assert_error(&text, 1, &["expect.max_time", reason]);
    }
}

#[test]
fn bad_sizes() {
    let cases: [(&str, &str); 5] = [
        (r#""512""#, "missing unit"),
        (r#""1.5MB""#, "fractions"),
        (r#""10kb""#, "unknown unit"),
        (r#""-1KB""#, "negative"),
        ("0", "greater than zero"),
    ];
    for (value, reason) in cases {
        let text =
            format!("site {{ name = \"a\", url = \"https://a.example/\", body_cap = {value} }}");
        assert_error(&text, 1, &["body_cap", "not a valid size", reason]);
        let text = format!("site {{ name = \"a\", url = \"https://a.example/\", expect = {{ max_body = {value} }} }}");
        assert_error(&text, 1, &["expect.max_body", reason]);
    }
}

#[test]
fn bad_urls() {
    let cases = [
        ("ftp://a.example/", "scheme \"ftp\" is not http or https"),
        ("a.example/health", "relative URL without a base"),
        ("https://", "empty host"),
        ("http://[::1", "invalid"),
    ];
    for (url, reason) in cases {
        assert_error(
            &format!("site {{ name = \"a\", url = {url:?} }}"),
            1,
            &[url, reason],
        );
    }
}

#[test]
fn invalid_regexes_include_the_regex_message() {
    assert_error(
        "\n\nsite { name = \"a\", url = \"https://a.example/\", expect = { body = \"(unclosed\" } }",
        3,
        &["expect.body", "invalid regex", "unclosed group"],
    );
    assert_error(
        r#"site { name = "a", url = "https://a.example/", expect = { headers = { ["content-type"] = "[a-" } } }"#,
        1,
        &[
            "expect.headers[\"content-type\"]",
            "unclosed character class",
        ],
    );
    assert_error(
        r#"site { name = "a", url = "https://a.example/", expect = { body_not = "a{2,1}" } }"#,
        1,
        &["expect.body_not", "invalid repetition"],
    );
}

#[test]
fn invalid_jsonpath_includes_the_parser_message() {
    assert_error(
        r#"site { name = "a", url = "https://a.example/", expect = { json = { ["$.status["] = "UP" } } }"#,
        1,
        &["invalid JSONPath \"$.status[\"", "at position"],
    );
    assert_error(
        r#"site { name = "a", url = "https://a.example/", expect = { json = { ["status"] = "UP" } } }"#,
        1,
        &["invalid JSONPath \"status\""],
    );
}

#[test]
fn invalid_statuses() {
    let cases = [
        ("700", "from 100 to 599"),
        ("99", "from 100 to 599"),
        (r#""6xx""#, "1xx to 5xx"),
        (r#""ok""#, "1xx to 5xx"),
        (r#"{ 200, "2xxx" }"#, "1xx to 5xx"),
        ("{}", "the list is empty"),
    ];
    for (value, reason) in cases {
        let text = format!("site {{ name = \"a\", url = \"https://a.example/\", expect = {{ status = {value} }} }}");
        assert_error(&text, 1, &["expect.status", "not a valid status", reason]);
    }
}

#[test]
fn duplicate_names_name_both_lines() {
    let text = r#"
site { name = "api", url = "https://a.example/" }
site { name = "other", url = "https://b.example/" }
site { name = "api", url = "https://c.example/" }
"#;
    assert_error(
        text,
        4,
        &[
            r#"site "api""#,
            "duplicate site name",
            "first defined at sites.lua:2",
        ],
    );
}

#[test]
fn timeout_must_be_below_interval() {
    assert_error(
        r#"site { name = "a", url = "https://a.example/", interval = "10s", timeout = "10s" }"#,
        1,
        &["timeout (10s) must be shorter than interval (10s)"],
    );
    // The built-in interval (1m) applies when only the timeout is set.
    assert_error(
        r#"site { name = "a", url = "https://a.example/", timeout = "2m" }"#,
        1,
        &["timeout (2m) must be shorter than interval (1m)"],
    );
    // A defaults timeout meets a site's short interval: reported at the site.
    assert_error(
        "defaults { timeout = \"20s\" }\nsite { name = \"a\", url = \"https://a.example/\", interval = \"15s\" }",
        2,
        &["timeout (20s) must be shorter than interval (15s)"],
    );
    assert_error(
        r#"site { name = "a", url = "https://a.example/", expect = { max_time = "1s", warn_time = "2s" } }"#,
        1,
        &["expect.warn_time (2s) must be shorter than expect.max_time (1s)"],
    );
}

#[test]
fn missing_name_and_url() {
    let lines = errors("\nsite { interval = \"1m\" }");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_error(
        "\nsite { interval = \"1m\" }",
        2,
        &["missing required key \"name\""],
    );
    assert_error(
        "\nsite { interval = \"1m\" }",
        2,
        &["missing required key \"url\""],
    );
    assert_error(
        r#"site { name = "", url = "https://a.example/" }"#,
        1,
        &["site name \"\" is invalid"],
    );
}

#[test]
fn bad_requests() {
    let cases: [(&str, &[&str]); 4] = [
        (
            r#"request = { method = "GE T" }"#,
            &["request.method \"GE T\" is not a valid HTTP method"],
        ),
        (
            r#"request = { headers = { ["Bad Header"] = "x" } }"#,
            &[
                "request.headers",
                "\"Bad Header\" is not a valid header name",
            ],
        ),
        (
            r#"request = { headers = { ["X-Token"] = "a\nb" } }"#,
            &["header \"X-Token\" is not a valid header value"],
        ),
        (
            r#"request = { headers = { ["X-Count"] = 3 } }"#,
            &["request.headers[\"X-Count\"] must be a string, got number"],
        ),
    ];
    for (request, needles) in cases {
        assert_error(
            &format!("site {{ name = \"a\", url = \"https://a.example/\", {request} }}"),
            1,
            needles,
        );
    }
}

#[test]
fn tls_files_are_read_relative_to_sites_lua() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    std::fs::write(
        dir.path().join("certs/ca.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("certs/not.pem"), "hello").unwrap();
    let label = dir.path().join("sites.lua");
    let load = |text: &str| load_str(&label, text, &dir.path().join("scripts"));

    let config = load(r#"site { name = "a", url = "https://a.example/", tls = { ca = "certs/ca.pem", insecure = true } }"#).unwrap();
    let tls = &config.sites[0].tls;
    assert!(tls
        .ca_pem
        .as_ref()
        .is_some_and(|pem| pem.starts_with(b"-----BEGIN")));
    assert!(tls.insecure);

    let text = r#"
site { name = "a", url = "https://a.example/", tls = { ca = "certs/missing.pem" } }
site { name = "b", url = "https://b.example/", tls = { client_cert = "certs/ca.pem" } }
site { name = "c", url = "https://c.example/", tls = { ca = "certs/not.pem" } }
"#;
    let report = load(text).unwrap_err().to_string();
    let at = |line: u32| format!("{}:{line}: ", label.display());
    let expect = [
        (2, "tls.ca: cannot read"),
        (2, "missing.pem"),
        (3, "tls.client_cert and tls.client_key must be set together"),
        (4, "does not contain a PEM block"),
    ];
    for (line, needle) in expect {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(&at(line)) && l.contains(needle)),
            "line {line}: {needle}\n{report}"
        );
    }
}

#[test]
fn env_of_an_unset_variable() {
    let text = "\n\nsite { name = \"a\", url = \"https://a.example/\",\n  request = { headers = { Authorization = \"Bearer \" .. env(\"SITEWATCH_TEST_SURELY_UNSET\") } } }";
    assert_error(
        text,
        4,
        &["environment variable \"SITEWATCH_TEST_SURELY_UNSET\" is not set"],
    );
    // A set variable is just a string.
    let config = load(
        r#"site { name = "a", url = "https://a.example/", request = { body = env("PATH") } }"#,
    )
    .unwrap();
    assert!(config.sites[0]
        .request
        .body
        .as_ref()
        .is_some_and(|b| !b.is_empty()));
}

#[test]
fn script_problems() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    std::fs::write(
        scripts.join("good.lua"),
        "return function(r) return true end\n",
    )
    .unwrap();
    std::fs::write(scripts.join("table.lua"), "return { }\n").unwrap();
    std::fs::write(
        scripts.join("broken.lua"),
        "return function(r)\n  return (\nend\n",
    )
    .unwrap();
    std::fs::write(scripts.join("boom.lua"), "error('script exploded')\n").unwrap();
    let text = r#"
site { name = "a", url = "https://a.example/", hooks = { script "good", script "missing" } }
site { name = "b", url = "https://b.example/", hooks = { script "table" } }
site { name = "c", url = "https://c.example/", hooks = { script "broken" } }
site { name = "d", url = "https://d.example/", hooks = { script "../etc/passwd" } }
site { name = "e", url = "https://e.example/", hooks = { script "boom" } }
"#;
    let report = load_str(Path::new(FILE), text, &scripts)
        .unwrap_err()
        .to_string();
    let expect = [
        (2, "script \"missing\": cannot read"),
        (3, "script \"table\" must return a function, got table"),
        (4, "script \"broken\" failed: "),
        (4, "broken.lua:3:"),
        (5, "script name \"../etc/passwd\" is invalid"),
        (6, "script \"boom\" failed: "),
        (6, "boom.lua:1: script exploded"),
    ];
    for (line, needle) in expect {
        let prefix = format!("{FILE}:{line}: ");
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(needle)),
            "line {line}: {needle}\n{report}"
        );
    }
    assert_eq!(report.lines().count(), 5, "{report}");
}

#[test]
fn lua_syntax_error() {
    let text = "site { name = \"a\", url = \"https://a.example/\" }\n\nsite { name = \"b\" url = \"x\" }\n";
    assert_error(text, 3, &["syntax error", "'}' expected"]);
}

#[test]
fn lua_runtime_error() {
    assert_error(
        "site { name = \"a\", url = \"https://a.example/\" }\nlocal x = nil\nx.y = 1\n",
        3,
        &["attempt to index a nil value"],
    );
    assert_error(
        "\nsitee { name = \"a\" }",
        2,
        &["attempt to call a nil value (global 'sitee')"],
    );
    assert_error("\n\nerror('custom failure')", 3, &["custom failure"]);
    assert_error("\njson.decode('{')", 2, &["json.decode: EOF while parsing"]);
}

#[test]
fn sandbox_and_budget_at_load_time() {
    assert_error(
        "\nos.execute('true')",
        2,
        &["attempt to index a nil value (global 'os')"],
    );
    assert_error("\nlocal f = io.open('/etc/passwd')", 2, &["global 'io'"]);
    assert_error(
        "\n\nwhile true do end",
        3,
        &["evaluation exceeded its instruction budget"],
    );
}

#[test]
fn defaults_rules() {
    assert_error(
        "defaults { retries = 1 }\ndefaults { retries = 2 }",
        2,
        &["defaults{} may appear only once (first at sites.lua:1)"],
    );
    assert_error(
        "site { name = \"a\", url = \"https://a.example/\" }\ndefaults { retries = 1 }",
        2,
        &["defaults{} must come before the first site{} (at sites.lua:1)"],
    );
    // A bad default is reported once, at defaults{}, not at every site.
    let text = "defaults { interval = \"soon\" }\nsite { name = \"a\", url = \"https://a.example/\" }\nsite { name = \"b\", url = \"https://b.example/\" }";
    let lines = errors(text);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("sites.lua:1: interval = \"soon\""),
        "{lines:?}"
    );
}

#[test]
fn every_error_at_once() {
    let text = r#"
defaults { interval = "30s" }
site { name = "a", url = "ftp://a.example/" }
site { name = "b", url = "https://b.example/", interval = "10" }
site { name = "c", url = "https://c.example/", expect = { status = 700, body = "(" } }
site { name = "d", url = "https://d.example/", hooks = { function(r) return true end } }
site { name = "d", url = "https://d2.example/" }
for _, region in ipairs { "eu", "us" } do
  site { name = "cdn-" .. region, url = "https://" .. region .. ".cdn.example.com/ping", retries = 99 }
end
"#;
    let lines = errors(text);
    let want = [
        "sites.lua:3: site \"a\": url",
        "sites.lua:4: site \"b\": interval",
        "sites.lua:5: site \"c\": expect.status",
        "sites.lua:5: site \"c\": expect.body",
        "sites.lua:7: site \"d\": duplicate",
        "sites.lua:9: site \"cdn-eu\": retries",
        "sites.lua:9: site \"cdn-us\": retries",
    ];
    assert_eq!(lines.len(), want.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(want) {
        assert!(line.starts_with(want), "{line} should start with {want}");
    }
}

#[test]
fn the_documented_example_loads() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    let repo_scripts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts");
    std::fs::copy(
        repo_scripts.join("json_status.lua"),
        scripts.join("json_status.lua"),
    )
    .unwrap();
    let text = r#"
defaults { interval = "30s", timeout = "10s", expect = { status = "2xx" } }
site {
  name = "example", url = "https://example.com/", interval = "1m",
  expect = {
    status    = 200,
    body      = "Example Domain",
    body_not  = "[Ee]rror",
    max_time  = "800ms",
    warn_time = "300ms",
    cert_days = 14,
    max_body  = "512KB",
    headers   = { ["content-type"] = "^text/html" },
    json      = { ["$.status"] = "UP", ["$.checks"] = { 1, 2 }, ["$.db"] = { ok = true } },
  },
}
site {
  name = "orders-api", url = "https://api.example.com/health",
  request = { method = "POST", headers = { Authorization = "Bearer " .. env("PATH") }, body = "{}" },
  retries = 1, max_redirects = 5, body_cap = "2MiB",
  hooks = {
    script "json_status",
    function(r) if r.timings.ttfb_ms > 500 then return "degraded", "slow first byte" end return true end,
  },
}
for _, region in ipairs { "eu", "us" } do site { name = "cdn-" .. region, url = "https://" .. region .. ".cdn.example.com/ping" } end
"#;
    let config = load_str(&dir.path().join("sites.lua"), text, &scripts).unwrap();
    let names: Vec<&str> = config.sites.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["example", "orders-api", "cdn-eu", "cdn-us"]);
    let [example, api, eu, _] = &config.sites[..] else {
        panic!()
    };

    assert_eq!(example.interval, Duration::from_secs(60));
    assert_eq!(example.timeout, Duration::from_secs(10));
    assert_eq!(example.expect.status, [StatusMatcher::Exact(200)]);
    assert_eq!(example.expect.max_time, Some(Duration::from_millis(800)));
    assert_eq!(example.expect.warn_time, Some(Duration::from_millis(300)));
    assert_eq!(example.expect.cert_days, Some(14));
    assert_eq!(example.expect.max_body, Some(512_000));
    assert_eq!(example.body_cap, config::DEFAULT_BODY_CAP);
    assert_eq!(example.expect.headers[0].name, "content-type");
    let json: Vec<(&str, String)> = example
        .expect
        .json
        .iter()
        .map(|j| (j.path.as_str(), j.equals.to_string()))
        .collect();
    assert_eq!(
        json,
        [
            ("$.checks", "[1,2]".to_string()),
            ("$.db", r#"{"ok":true}"#.to_string()),
            ("$.status", r#""UP""#.to_string())
        ]
    );
    assert_eq!(example.location.line, 3);

    assert_eq!(api.request.method, http::Method::POST);
    assert_eq!(api.request.headers[0].0, "authorization");
    assert_eq!(api.request.body.as_deref(), Some(&b"{}"[..]));
    assert_eq!(
        (api.retries, api.max_redirects, api.body_cap),
        (1, 5, 2 << 20)
    );
    assert_eq!(api.hooks, ["script:json_status", "inline:2"]);
    assert_eq!(
        api.expect.status,
        [StatusMatcher::Class(2)],
        "inherited from defaults"
    );
    assert_eq!(api.interval, Duration::from_secs(30));

    assert_eq!(eu.url.as_str(), "https://eu.cdn.example.com/ping");
    assert_eq!(eu.location.line, 26);
    assert_eq!(config.version.len(), 16);
    assert_eq!(config.source.text, text);
}

#[test]
fn version_covers_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    let text = r#"site { name = "a", url = "https://a.example/", hooks = { script "h" } }"#;
    std::fs::write(scripts.join("h.lua"), "return function() return true end").unwrap();
    let first = load_str(Path::new(FILE), text, &scripts).unwrap().version;
    std::fs::write(scripts.join("h.lua"), "return function() return false end").unwrap();
    let second = load_str(Path::new(FILE), text, &scripts).unwrap().version;
    assert_ne!(first, second);
}

#[test]
fn load_reads_the_file_and_scripts_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("scripts")).unwrap();
    std::fs::write(
        dir.path().join("scripts/ok.lua"),
        "return function() return true end",
    )
    .unwrap();
    let path = dir.path().join("sites.lua");
    std::fs::write(
        &path,
        r#"site { name = "a", url = "https://a.example/", hooks = { script "ok" } }"#,
    )
    .unwrap();
    let config = config::load(&path).unwrap();
    assert_eq!(config.sites[0].hooks, ["script:ok"]);

    let missing = config::load(&dir.path().join("nope.lua"))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("nope.lua") && missing.contains("cannot read"),
        "{missing}"
    );
}

#[test]
fn shipped_lua_files_parse() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let lua = mlua::Lua::new();
    for name in [
        "sitewatch.d.lua",
        "json_status.lua",
        "latency_budget.lua",
        "cert_expiry.lua",
    ] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        if let Err(e) = lua.load(text.as_str()).set_name(name).into_function() {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn slo_is_validated_with_file_and_line() {
    let site = |slo: &str| {
        format!("\n\nsite {{ name = \"a\", url = \"https://a.example/\", slo = {slo} }}")
    };
    let cases: [(&str, &[&str]); 10] = [
        ("99.9", &["slo must be a table"]),
        (
            "{ window = \"30d\" }",
            &["missing required key \"slo.target\""],
        ),
        ("{ target = 0 }", &["slo.target = 0 is out of range"]),
        (
            "{ target = 100.5 }",
            &["slo.target = 100.5 is out of range"],
        ),
        ("{ target = \"99.9\" }", &["slo.target must be a number"]),
        (
            "{ target = 99, window = \"30\" }",
            &["slo.window", "missing unit"],
        ),
        (
            "{ target = 99, windw = \"30d\" }",
            &["unknown key \"windw\" in slo "],
        ),
        (
            "{ target = 99, latency = { p98 = \"1s\" } }",
            &["unknown key \"p98\" in slo.latency"],
        ),
        (
            "{ target = 99, latency = { p99 = 800 } }",
            &["slo.latency.p99", "needs a unit"],
        ),
        ("{ target = 99, latency = {} }", &["slo.latency.p99"]),
    ];
    for (slo, needles) in cases {
        assert_error(&site(slo), 3, needles);
    }
    let config = load(&site(
        "{ target = 99.95, window = \"7d\", latency = { p95 = \"250ms\" } }",
    ))
    .unwrap();
    let slo = config.sites[0].slo.as_ref().unwrap();
    assert_eq!(slo.target_pct, 99.95);
    assert_eq!(slo.window, std::time::Duration::from_secs(7 * 86_400));
    let latency = slo.latency.as_ref().unwrap();
    assert_eq!((latency.name.as_str(), latency.quantile), ("p95", 0.95));
    assert_eq!(latency.max, std::time::Duration::from_millis(250));
}

#[test]
fn a_site_slo_replaces_the_default_one_whole() {
    let config = load(
        "defaults { slo = { target = 99, latency = { p99 = \"1s\" } } }\n\
         site { name = \"a\", url = \"https://a.example/\" }\n\
         site { name = \"b\", url = \"https://b.example/\", slo = { target = 99.9 } }",
    )
    .unwrap();
    let a = config.sites[0].slo.as_ref().unwrap();
    assert_eq!(a.target_pct, 99.0);
    assert!(a.latency.is_some());
    let b = config.sites[1].slo.as_ref().unwrap();
    assert_eq!(b.target_pct, 99.9);
    assert!(b.latency.is_none(), "not inherited key by key");
    assert_eq!(b.window, std::time::Duration::from_secs(30 * 86_400));
}
