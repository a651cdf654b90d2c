//! Configuration errors, end to end through [`load_str`]: each kind of mistake in `sites.lua`
//! is reported with the file and line of the `site{}` (or helper) call, and every error comes out
//! at once. (The sandbox's limits at load time, which take seconds each, are in
//! `tests/config_errors.rs`.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{self, load_str, Config, ConfigErrors, StatusMatcher};

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
        &[
            "invalid JSONPath \"status\"",
            "starts at the document",
            "write \"$.status\"",
        ],
    );
}

/// The usual JSONPath mistakes come with the spelling that works.
#[test]
fn invalid_jsonpath_names_what_to_write() {
    let cases = [
        ("$.foo-bar", r#"write "$['foo-bar']""#),
        ("$.data.x-y[0].id", r#"write "$.data['x-y'][0].id""#),
        ("$.a b", r#"write "$['a b']""#),
        ("[0].id", r#"write "$[0].id""#),
        ("$.snake_case.x-y", r#"write "$.snake_case['x-y']""#),
        // Dots inside quotes or brackets are not segment breaks.
        ("$.x-y['a.b'].c", r#"write "$['x-y']['a.b'].c""#),
        ("$.x-y[?@.a == 1]", r#"write "$['x-y'][?@.a == 1]""#),
    ];
    for (query, hint) in cases {
        assert_error(
            &format!(
                r#"site {{ name = "a", url = "https://a.example/", expect = {{ json = {{ ["{query}"] = 1 }} }} }}"#
            ),
            1,
            &[&format!("invalid JSONPath {query:?}"), hint],
        );
    }
    // No hint is better than a wrong one.
    for query in ["$.status[", "$.a-b[x y]", "$.a-b['c", "$.a-b['c]'"] {
        let lines = errors(&format!(
            r#"site {{ name = "a", url = "https://a.example/", expect = {{ json = {{ ["{query}"] = 1 }} }} }}"#
        ));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("invalid JSONPath") && !lines[0].contains("write"),
            "{lines:?}"
        );
    }
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
    // A site's timeout meets the defaults' interval: reported at the site.
    assert_error(
        "defaults { interval = \"15s\" }\nsite { name = \"a\", url = \"https://a.example/\", timeout = \"20s\" }",
        2,
        &["timeout (20s) must be shorter than interval (15s)"],
    );
    // Both from defaults: one error, at defaults{}, not one per site.
    let lines = errors(
        "defaults { interval = \"15s\", timeout = \"20s\" }\n\
         site { name = \"a\", url = \"https://a.example/\" }\n\
         site { name = \"b\", url = \"https://b.example/\" }",
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("sites.lua:1: "), "{lines:?}");
    assert_error(
        r#"site { name = "a", url = "https://a.example/", expect = { max_time = "1s", warn_time = "2s" } }"#,
        1,
        &["expect.warn_time (2s) must be shorter than expect.max_time (1s)"],
    );
    // The same for warn_time and max_time: one half from defaults{} is reported at the site…
    for (defaults, site) in [
        ("warn_time = \"2s\"", "max_time = \"1s\""),
        ("max_time = \"1s\"", "warn_time = \"2s\""),
    ] {
        assert_error(
            &format!("defaults {{ expect = {{ {defaults} }} }}\nsite {{ name = \"a\", url = \"https://a.example/\", expect = {{ {site} }} }}"),
            2,
            &["expect.warn_time (2s) must be shorter than expect.max_time (1s)"],
        );
    }
    // …and both from defaults{} once, there.
    let lines = errors(
        "defaults { expect = { max_time = \"1s\", warn_time = \"2s\" } }\n\
         site { name = \"a\", url = \"https://a.example/\" }\n\
         site { name = \"b\", url = \"https://b.example/\" }",
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("sites.lua:1: "), "{lines:?}");
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
    // Longer than "-----BEGIN ", so it is searched and not found.
    std::fs::write(
        dir.path().join("certs/not.pem"),
        "hello, this is no certificate",
    )
    .unwrap();
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
    let text = "\n\nsite { name = \"a\", url = \"https://a.example/\",\n  request = { headers = { Authorization = \"Bearer \" .. env(\"SURELY_UNSET_API_TOKEN\") } } }";
    assert_error(
        text,
        4,
        &["environment variable \"SURELY_UNSET_API_TOKEN\" is not set"],
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
fn follow_redirects_is_a_boolean_defaulting_to_true() {
    let config = load(
        "defaults { follow_redirects = false }\n\
         site { name = \"a\", url = \"http://a.example/\" }\n\
         site { name = \"b\", url = \"http://b.example/\", follow_redirects = true }",
    )
    .unwrap();
    let follow: Vec<bool> = config.sites.iter().map(|s| s.follow_redirects).collect();
    assert_eq!(follow, [false, true]);
    let plain = load(r#"site { name = "a", url = "http://a.example/" }"#).unwrap();
    assert!(plain.sites[0].follow_redirects);
    assert_error(
        "\nsite { name = \"a\", url = \"http://a.example/\", follow_redirects = \"no\" }",
        2,
        &["follow_redirects must be a boolean, got string"],
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

// ---------------------------------------------------------------------------------------------
// Alerts: notifiers, alert rules, maintenance windows

/// A valid notifier to refer to, on line 1.
const OPS: &str = r#"notifier "ops" { type = "webhook", url = "https://hooks.example/ops" }"#;

/// `OPS` on line 1, then a site with `alert = <alert>` on line 2.
fn site_with_alert(alert: &str) -> String {
    format!("{OPS}\nsite {{ name = \"a\", url = \"https://a.example/\", alert = {alert} }}")
}

#[test]
fn unknown_notifier_names_the_known_ones() {
    assert_error(
        &site_with_alert(r#"{ notify = { "ops", "opz" } }"#),
        2,
        &[r#"site "a": alert.notify: no notifier named "opz" (declared: "ops")"#],
    );
    assert_error(
        "\nsite { name = \"a\", url = \"https://a.example/\", alert = { notify = { \"ops\" } } }",
        2,
        &[r#"alert.notify: no notifier named "ops" (no notifier is declared)"#],
    );
    // In defaults{}: reported there, once, not at each site.
    let text = format!(
        "{OPS}\ndefaults {{ alert = {{ notify = {{ \"nope\" }} }} }}\n\
         site {{ name = \"a\", url = \"https://a.example/\" }}\n\
         site {{ name = \"b\", url = \"https://b.example/\" }}"
    );
    let lines = errors(&text);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("sites.lua:2: alert.notify: no notifier named \"nope\""),
        "{lines:?}"
    );
    // A notifier may be declared after the sites that use it.
    let config = load(
        "site { name = \"a\", url = \"https://a.example/\", alert = { notify = { \"late\" } } }\n\
         notifier \"late\" { type = \"alertmanager\", url = \"http://127.0.0.1:9093\" }",
    )
    .unwrap();
    assert_eq!(config.sites[0].alert.notify, ["late"]);
}

#[test]
fn alert_rule_problems() {
    let cases: [(&str, &[&str]); 14] = [
        (
            r#"{ recover_after = 0 }"#,
            &["alert.recover_after = 0 is out of range: must be between 1 and 1000"],
        ),
        (
            r#"{ after = 1001 }"#,
            &["alert.after = 1001 is out of range: must be between 1 and 1000"],
        ),
        (r#"{ after = 2.5 }"#, &["alert.after = 2.5", "whole number"]),
        (
            r#"{ ["for"] = "2" }"#,
            &["alert.for = \"2\" is not a valid duration: missing unit"],
        ),
        (
            r#"{ ["for"] = 120 }"#,
            &["alert.for = 120 is not a valid duration: a number needs a unit"],
        ),
        (
            r#"{ remind = "9s" }"#,
            &["alert.remind = \"9s\" is out of range: must be at least 10s"],
        ),
        (
            r#"{ on_resolved = "yes" }"#,
            &["alert.on_resolved must be a boolean, got string"],
        ),
        (
            r#"{ notify = "ops" }"#,
            &["alert.notify must be a list of notifier names, got string"],
        ),
        (
            r#"{ notify = { "ops", "ops" } }"#,
            &["alert.notify lists \"ops\" twice"],
        ),
        (
            r#"{ flap = { count = 1, window = "30m" } }"#,
            &["alert.flap.count = 1 is out of range: must be between 2 and 100"],
        ),
        (
            r#"{ flap = { count = 4, window = "half an hour" } }"#,
            &["alert.flap.window", "not a valid duration"],
        ),
        (
            r#"{ flap = { count = 4 } }"#,
            &["missing required key \"alert.flap.window\""],
        ),
        (
            r#"{ notfy = { "ops" } }"#,
            &["unknown key \"notfy\" in alert (expected one of: notify, after, recover_after, for, remind, on_resolved, flap)"],
        ),
        ("true", &["alert must be a table, got boolean"]),
    ];
    for (alert, needles) in cases {
        assert_error(&site_with_alert(alert), 2, needles);
    }
    assert_error(
        &site_with_alert(r#"{ flap = { count = 4, window = "1h", windw = "2h" } }"#),
        2,
        &["unknown key \"windw\" in alert.flap"],
    );
    // The limits themselves are allowed.
    for alert in [
        r#"{ notify = { "ops" }, remind = "10s" }"#,
        r#"{ notify = { "ops" }, after = 1000, recover_after = 1 }"#,
    ] {
        let config = load(&site_with_alert(alert)).unwrap_or_else(|e| panic!("{alert}: {e}"));
        assert_eq!(config.sites.len(), 1);
    }
}

#[test]
fn notifier_problems() {
    let cases: [(&str, &[&str]); 12] = [
        (
            r#"notifier "x" { type = "slack", url = "https://x.example/" }"#,
            &[
                r#"notifier "x": type = "slack" is not a notifier type (expected "webhook" or "alertmanager")"#,
            ],
        ),
        (
            r#"notifier "x" { url = "https://x.example/" }"#,
            &[r#"notifier "x": missing required key "type""#],
        ),
        (
            r#"notifier "x" { type = "webhook" }"#,
            &[r#"notifier "x": missing required key "url""#],
        ),
        (
            r#"notifier "x" { type = "webhook", url = "ftp://x.example/" }"#,
            &[r#"url "ftp://x.example/" is invalid: scheme "ftp" is not http or https"#],
        ),
        (
            r#"notifier "x" { type = "webhook", url = "https://x.example/", format = "json" }"#,
            &[r#"notifier "x": format must be a function, got string"#],
        ),
        (
            r#"notifier "x" { type = "alertmanager", url = "http://127.0.0.1:9093", format = function(e) return "" end }"#,
            &["format applies to webhook notifiers only, not alertmanager"],
        ),
        (
            r#"notifier "x" { type = "alertmanager", url = "http://127.0.0.1:9093", headers = { A = "b" } }"#,
            &["headers applies to webhook notifiers only, not alertmanager"],
        ),
        (
            r#"notifier "x" { type = "webhook", url = "https://x.example/", headers = { ["X Token"] = "t" } }"#,
            &[r#"headers: "X Token" is not a valid header name"#],
        ),
        (
            r#"notifier "x" { type = "webhook", url = "https://x.example/", headers = { ["X-Token"] = "a\nb" } }"#,
            &[r#"headers: the value of header "X-Token" is not a valid header value"#],
        ),
        (
            r#"notifier "o ps" { type = "webhook", url = "https://x.example/" }"#,
            &[r#"notifier name "o ps" is invalid: use letters, digits, '_', '.' and '-' only"#],
        ),
        (
            r#"notifier "x" { type = "webhook", url = "https://x.example/", retries = 3 }"#,
            &[r#"unknown key "retries" in notifier (expected one of: type, url, headers, format)"#],
        ),
        (
            r#"notifier "x""#,
            &[
                r#"notifier "x": no settings given: write notifier "name" { type = "webhook", url = "..." }"#,
            ],
        ),
    ];
    for (text, needles) in cases {
        assert_error(&format!("\n{text}"), 2, needles);
    }
    assert_error(
        &format!(
            "notifier \"{}\" {{ type = \"webhook\", url = \"https://x.example/\" }}",
            "n".repeat(65)
        ),
        1,
        &["is invalid: longer than 64 bytes"],
    );
    assert_error(
        "notifier \"x\" \"webhook\"",
        1,
        &[r#"notifier "x": notifier "name" { ... } expects a table, got string"#],
    );
    // A type that is not a string is a wrong type, not an unknown notifier type.
    let lines = errors(r#"notifier "x" { type = 5, url = "https://x.example/" }"#);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("type must be"), "{lines:?}");
    // Headers of an Alertmanager notifier are refused, not also checked.
    let lines = errors(
        r#"notifier "x" { type = "alertmanager", url = "http://127.0.0.1:9093", headers = { ["X Y"] = "a\nb" } }"#,
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("webhook notifiers only"), "{lines:?}");
}

#[test]
fn duplicate_notifier_names_the_first() {
    let text = format!("\n{OPS}\n{OPS}");
    assert_error(
        &text,
        3,
        &[r#"notifier "ops": duplicate notifier name (first defined at sites.lua:2)"#],
    );
    assert_eq!(errors(&text).len(), 1);
}

/// A maintenance window on line 2, after a site "shop" on line 1.
fn window(settings: &str) -> String {
    format!(
        "site {{ name = \"shop\", url = \"https://shop.example/\" }}\nmaintenance {{ {settings} }}"
    )
}

#[test]
fn maintenance_problems() {
    let cases: [(&str, &[&str]); 16] = [
        (
            r#"name = "db", sites = { "shop", "shpo" }, every = "Sun", start = "02:00", duration = "1h""#,
            &[r#"maintenance "db": sites: no site named "shpo""#],
        ),
        (
            r#"name = "db", every = "Sun", start = "02:00", duration = "1h", tz = "Europe/Berln""#,
            &[r#"maintenance "db": tz = "Europe/Berln" is not an IANA time zone name"#],
        ),
        (
            r#"name = "db", every = "Son", start = "02:00", duration = "1h""#,
            &[
                r#"maintenance "db": every = "Son" is not valid: expected a day ("Mon" to "Sun"), a list of days, or "day""#,
            ],
        ),
        (
            r#"name = "db", every = { "Sat", "Sun", 7 }, start = "02:00", duration = "1h""#,
            &["every = 7 is not valid"],
        ),
        (
            r#"name = "db", every = {}, start = "02:00", duration = "1h""#,
            &["every = table is not valid"],
        ),
        (
            r#"name = "db", every = "Sun", start = "25:00", duration = "1h""#,
            &[r#"maintenance "db": start = "25:00" is not a valid time of day: expected "HH:MM""#],
        ),
        (
            r#"name = "db", every = "Sun", start = 2, duration = "1h""#,
            &["start = 2 is not a valid time of day"],
        ),
        (
            r#"name = "db", every = "Sun", start = "02:00", duration = "8d""#,
            &[r#"duration = "8d" is out of range: must be at most 7d"#],
        ),
        (
            r#"name = "db", every = "Sun", start = "02:00", duration = "1x""#,
            &["duration = \"1x\" is not a valid duration"],
        ),
        (
            r#"name = "db", every = "Sun", start = "02:00""#,
            &[r#"missing required key "duration""#],
        ),
        (
            r#"name = "db", start = "02:00", duration = "1h""#,
            &[r#"missing required key "every (or at, for a one-off window)""#],
        ),
        (
            r#"name = "db", at = "2026-12-24 18:00", duration = "4h""#,
            &[r#"at = "2026-12-24 18:00" is not an RFC 3339 timestamp"#],
        ),
        (
            r#"name = "db", at = "2026-12-24T18:00:00Z", every = "Sun", duration = "4h""#,
            &["every cannot be combined with at"],
        ),
        (
            r#"every = "Sun", start = "02:00", duration = "1h""#,
            &[r#"missing required key "name""#],
        ),
        (
            r#"name = "db", sites = {}, every = "Sun", start = "02:00", duration = "1h""#,
            &["sites must be a non-empty list of site names"],
        ),
        (
            r#"name = "db", every = "Sun", start = "02:00", duration = "1h", ends = "03:00""#,
            &[r#"unknown key "ends" in maintenance"#],
        ),
    ];
    for (settings, needles) in cases {
        assert_error(&window(settings), 2, needles);
    }
    assert_error(
        &window(
            r#"name = "db", sites = { "shop", "shop" }, every = "Sun", start = "02:00", duration = "1h""#,
        ),
        2,
        &[r#"sites lists "shop" twice"#],
    );
    // The longest window allowed is allowed.
    let config = load(&window(
        r#"name = "db", every = "Sun", start = "02:00", duration = "7d""#,
    ))
    .unwrap();
    assert_eq!(config.maintenance.len(), 1);
    let text = format!(
        "{}\nmaintenance {{ name = \"db\", at = \"2026-12-24T18:00:00Z\", duration = \"1h\" }}",
        window(r#"name = "db", every = "day", start = "02:00", duration = "1h""#)
    );
    assert_error(
        &text,
        3,
        &[r#"maintenance "db": duplicate maintenance window name (first defined at sites.lua:2)"#],
    );
    assert_error(
        "\nmaintenance \"db\"",
        2,
        &["maintenance{} expects a table, got string"],
    );
}

#[test]
fn notifiers_alerts_and_maintenance_parse_into_typed_values() {
    use chrono::{NaiveTime, TimeZone, Utc, Weekday};
    use config::{AlertRule, FlapRule, MaintenanceSchedule, NotifierKind};
    let text = r#"
defaults { alert = { notify = { "ops" }, after = 2 } }
notifier "ops" {
  type = "webhook", url = "https://hooks.example/ops",
  headers = { ["X-Token"] = "secret" },
  format = function(event) return { text = event.message } end,
}
site { name = "shop", url = "https://shop.example/" }
site {
  name = "api", url = "https://api.example/",
  alert = { notify = { "am", "ops" }, after = 5, recover_after = 1, ["for"] = "2m", remind = "1h",
            on_resolved = false, flap = { count = 4, window = "30m" } },
}
site { name = "quiet", url = "https://quiet.example/", alert = {} }
notifier "am" { type = "alertmanager", url = "http://127.0.0.1:9093" }
maintenance { name = "db-sunday", sites = { "shop" }, every = "Sun", start = "02:00", duration = "1h", tz = "Europe/Berlin" }
maintenance { name = "weekend", every = { "Sun", "sat", "Sat" }, start = "0:30", duration = "90m" }
maintenance { name = "xmas", sites = { "api", "shop" }, at = "2026-12-24T19:00:00+01:00", duration = "4h" }
"#;
    let config = load(text).unwrap();
    let min = |m: u64| Duration::from_secs(60 * m);

    let [ops, am] = &config.notifiers[..] else {
        panic!("{:?}", config.notifiers)
    };
    assert_eq!((ops.name.as_str(), ops.location.line), ("ops", 3));
    assert_eq!(
        ops.kind,
        NotifierKind::Webhook {
            url: "https://hooks.example/ops".parse().unwrap(),
            headers: vec![("x-token".into(), "secret".into())],
            has_format: true,
        }
    );
    assert_eq!((am.name.as_str(), am.location.line), ("am", 15));
    assert_eq!(
        am.kind,
        NotifierKind::Alertmanager {
            url: "http://127.0.0.1:9093".parse().unwrap()
        }
    );

    let [shop, api, quiet] = &config.sites[..] else {
        panic!()
    };
    assert_eq!(
        *shop.alert,
        AlertRule {
            notify: vec!["ops".into()],
            after: 2,
            ..AlertRule::default()
        },
        "inherited from defaults"
    );
    assert_eq!(
        *api.alert,
        AlertRule {
            notify: vec!["am".into(), "ops".into()],
            after: 5,
            recover_after: 1,
            for_: Some(min(2)),
            remind: Some(min(60)),
            on_resolved: false,
            flap: Some(FlapRule {
                count: 4,
                window: min(30)
            }),
        }
    );
    assert_eq!(*quiet.alert, AlertRule::default(), "replaced whole");
    assert_eq!(
        (
            quiet.alert.after,
            quiet.alert.recover_after,
            quiet.alert.on_resolved
        ),
        (3, 2, true)
    );

    let [db, weekend, xmas] = &config.maintenance[..] else {
        panic!("{:?}", config.maintenance)
    };
    assert_eq!(
        (db.name.as_str(), db.location.line, &db.sites[..]),
        ("db-sunday", 16, &["shop".to_string()][..])
    );
    assert_eq!(
        db.schedule,
        MaintenanceSchedule::Weekly {
            days: vec![Weekday::Sun],
            start: NaiveTime::from_hms_opt(2, 0, 0).unwrap(),
            duration: min(60),
            tz: chrono_tz::Europe::Berlin,
        }
    );
    assert!(weekend.sites.is_empty(), "every site");
    assert_eq!(
        weekend.schedule,
        MaintenanceSchedule::Weekly {
            days: vec![Weekday::Sat, Weekday::Sun],
            start: NaiveTime::from_hms_opt(0, 30, 0).unwrap(),
            duration: min(90),
            tz: chrono_tz::UTC,
        }
    );
    assert_eq!(
        xmas.schedule,
        MaintenanceSchedule::Once {
            start: Utc.with_ymd_and_hms(2026, 12, 24, 18, 0, 0).unwrap(),
            duration: min(240),
        }
    );

    // Sunday 7 June 2026, 00:30 UTC = 02:30 in Berlin: db-sunday (shop only) and weekend.
    let at = |text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    };
    let cases = [
        ("shop", "2026-06-07T00:30:00Z", Some("db-sunday")),
        ("api", "2026-06-07T00:30:00Z", Some("weekend")),
        ("api", "2026-06-07T02:30:00Z", None),
        ("api", "2026-12-24T21:00:00Z", Some("xmas")),
        ("quiet", "2026-12-24T21:00:00Z", None),
    ];
    for (site, time, want) in cases {
        assert_eq!(
            config.maintenance_at(site, at(time)),
            want,
            "{site} at {time}"
        );
    }
}

#[test]
fn alert_errors_come_out_with_the_others() {
    let text = r#"
notifier "ops" { type = "pager", url = "https://x.example/" }
site { name = "a", url = "https://a.example/", alert = { notify = { "ops", "sms" } }, retries = 99 }
maintenance { name = "m", sites = { "b" }, every = "Sun", start = "02:00", duration = "1h" }
notifier "ops" { type = "webhook", url = "https://y.example/" }
"#;
    let lines = errors(text);
    let want = [
        "sites.lua:2: notifier \"ops\": type = \"pager\"",
        "sites.lua:3: site \"a\": retries",
        "sites.lua:3: site \"a\": alert.notify: no notifier named \"sms\" (declared: \"ops\")",
        "sites.lua:4: maintenance \"m\": sites: no site named \"b\"",
        "sites.lua:5: notifier \"ops\": duplicate notifier name (first defined at sites.lua:2)",
    ];
    assert_eq!(lines.len(), want.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(want) {
        assert!(line.starts_with(want), "{line} should start with {want}");
    }
}

#[test]
fn tls_files_must_be_small_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.pem");
    let mut pem = b"-----BEGIN CERTIFICATE-----\n".to_vec();
    pem.resize(2 << 20, b'A');
    std::fs::write(&big, &pem).unwrap();
    let fifo = dir.path().join("fifo.pem");
    let has_fifo = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    let label = dir.path().join("sites.lua");
    let mut cases = vec![
        ("/dev/zero", "not a regular file (a character device)"),
        ("/dev/null", "not a regular file (a character device)"),
        (".", "not a regular file (a directory)"),
        ("big.pem", "larger than 1024 KiB"),
    ];
    if has_fifo {
        cases.push(("fifo.pem", "not a regular file (a FIFO)"));
    }
    for (path, want) in cases {
        for key in ["ca", "client_cert"] {
            let text = format!(
                "\nsite {{ name = 'a', url = 'https://a.example/', tls = {{ {key} = {path:?}, client_key = {path:?}, client_cert = {path:?} }} }}\n"
            )
            .replace("client_cert = ", if key == "ca" { "ca = " } else { "client_cert = " });
            let (tx, rx) = std::sync::mpsc::channel();
            let (label, scripts) = (label.clone(), dir.path().join("scripts"));
            std::thread::spawn(move || {
                let _ = tx.send(load_str(&label, &text, &scripts).map(|_| ()));
            });
            let report = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("tls = {path}: still loading after 10s"))
                .unwrap_err()
                .to_string();
            assert!(report.contains(want), "tls.{key} = {path}: {report}");
        }
    }
}

#[test]
fn body_caps_have_a_ceiling() {
    let cases = [
        (
            "body_cap = '1GiB'",
            "body_cap = \"1GiB\" is not a valid size: must be at most 16777216 bytes (16 MiB)",
        ),
        ("body_cap = 1 << 62", "body_cap"),
        ("body_cap = '17MiB'", "must be at most"),
        (
            "expect = { max_body = '16MiB' }",
            "expect.max_body = \"16MiB\" is not a valid size: must be at most 16777215 bytes",
        ),
        ("expect = { max_body = '100GiB' }", "expect.max_body"),
    ];
    for (setting, want) in cases {
        assert_error(
            &format!("site {{ name = 'a', url = 'https://a.example/', {setting} }}"),
            1,
            &[want],
        );
    }
    let config = load("site { name = 'a', url = 'https://a.example/', body_cap = '16MiB' }\nsite { name = 'b', url = 'https://b.example/', expect = { max_body = 16777215 } }").unwrap();
    assert_eq!(config.sites[0].body_cap, 16 << 20);
    assert_eq!(config.sites[1].body_cap, 16 << 20);
}

/// env() refuses sitewatch's own variables and PostgreSQL's, set or not, whatever their case:
/// a sites.lua author cannot copy the Kafka or database credentials into a request.
#[test]
fn env_refuses_sitewatch_and_postgresql_variables() {
    let names = [
        "SITEWATCH_KAFKA_SASL_PASSWORD",
        "SITEWATCH_DATABASE_URL",
        "sitewatch_kafka_brokers",
        "PGPASSWORD",
        "PGPASSFILE",
        "pguser",
        "DATABASE_URL",
    ];
    for name in names {
        let text = format!(
            "site {{ name = 'a', url = 'https://a.example/',\n request = {{ body = env('{name}') }} }}"
        );
        assert_error(
            &text,
            2,
            &[&format!(
                "environment variable \"{name}\" is not available to sites.lua"
            )],
        );
    }
    // Others are read as before.
    assert!(load(
        "site { name = 'a', url = 'https://a.example/', request = { body = env('PATH') } }"
    )
    .is_ok());
}

/// Credentials in a site's URL would be copied into every result (Kafka, PostgreSQL, logs):
/// refused, and the message shows the URL without them.
#[test]
fn credentials_in_site_urls_are_refused_and_never_echoed() {
    let urls = [
        "http://user:hunter2@a.example/",
        "https://user@a.example/health",
        "http://:hunter2@a.example/",
        "HTTPS://Admin:hunter2@a.example:8443/x?y=1",
        "http://u%40x:hunter2%3A@a.example/",
        // Broken as a URL, still not echoed.
        "https://user:hunter2@exa mple.com/",
        "ftp://user:hunter2@a.example/",
    ];
    for url in urls {
        let text = format!("site {{ name = 'a', url = {url:?} }}");
        let report = errors(&text).join("\n");
        assert!(
            report.starts_with("sites.lua:1: site \"a\": url"),
            "{url}: {report}"
        );
        assert!(!report.contains("hunter2"), "{url}: {report}");
        if !url.contains(' ') && !url.starts_with("ftp") {
            assert!(report.contains("contains credentials"), "{url}: {report}");
        }
    }
}

/// Look-alike site names: twins in another Unicode form are one name (stored in NFC), and
/// invisible characters (zero-width, bidirectional controls, other format characters, spaces
/// other than U+0020) are refused.
#[test]
fn look_alike_site_names() {
    let nfc = "caf\u{e9}";
    let nfd = "cafe\u{301}";
    let twins = [
        (nfc, nfd),
        (nfd, nfc),
        ("\u{212b}ngstr\u{f6}m", "\u{c5}ngstr\u{f6}m"),
        ("\u{1100}\u{1161}", "\u{ac00}"),
    ];
    for (first, second) in twins {
        let text = format!(
            "site {{ name = {first:?}, url = 'https://a.example/' }}\nsite {{ name = {second:?}, url = 'https://b.example/' }}"
        );
        assert_error(
            &text,
            2,
            &["duplicate site name (first defined at sites.lua:1)"],
        );
    }
    let config = load(&format!(
        "site {{ name = {nfd:?}, url = 'https://a.example/' }}"
    ))
    .unwrap();
    assert_eq!(config.sites[0].name, nfc, "stored in NFC");
    // A maintenance window may name the site in either form.
    let config = load(&format!(
        "site {{ name = {nfc:?}, url = 'https://a.example/' }}\nmaintenance {{ name = 'm', sites = {{ {nfd:?} }}, every = 'day', start = '00:00', duration = '1h' }}"
    ))
    .unwrap();
    assert_eq!(config.maintenance[0].sites, [nfc]);
    let invisible = [
        "shop\u{200b}",
        "sh\u{200d}op",
        "\u{feff}shop",
        "\u{202e}pohs",
        "shop\u{2066}x\u{2069}",
        "sh\u{ad}op",
        "shop\u{a0}",
        "shop\u{3000}",
        "shop\u{e0041}",
        "shop\u{fe0f}",
        "sh\u{34f}op",
    ];
    for name in invisible {
        let text = format!("site {{ name = {name:?}, url = 'https://a.example/' }}");
        assert_error(
            &text,
            1,
            &["is invalid: it contains the invisible character U+"],
        );
    }
    // Ordinary names in any script still work.
    for name in [
        "shop",
        "boutique-\u{e9}t\u{e9}",
        "\u{5e1}\u{5d7}\u{5e8}",
        "\u{4e0a}\u{6d77} api",
        "a b",
    ] {
        assert!(
            load(&format!(
                "site {{ name = {name:?}, url = 'https://a.example/' }}"
            ))
            .is_ok(),
            "{name}"
        );
    }
}

/// Every site keeps its expectation regexes compiled, outside the Lua heap: each is held to
/// 4 MiB compiled (the regex crate's default is 10 MiB).
#[test]
fn expectation_regexes_have_a_size_limit() {
    for key in ["body", "body_not"] {
        assert_error(
            &format!("site {{ name = 'a', url = 'https://a.example/', expect = {{ {key} = '\\\\w{{5000}}' }} }}"),
            1,
            &[&format!("expect.{key}: invalid regex"), "size limit"],
        );
    }
    assert!(load(
        "site { name = 'a', url = 'https://a.example/', expect = { body = '\\\\w{50}' } }"
    )
    .is_ok());
}

/// The URL standard reads these as `http://host/`; in sites.lua they are typos.
#[test]
fn urls_whose_host_does_not_follow_the_slashes() {
    for url in [
        "http:///nohost",
        "http:/nohost",
        "http:nohost",
        "https:\\\\nohost/",
        "http:////nohost",
    ] {
        assert_error(
            &format!(r#"site {{ name = "a", url = [[{url}]] }}"#),
            1,
            &["is invalid", "the host must follow"],
        );
    }
    for url in [
        "http://ok.example/",
        "HTTPS://OK.example/x",
        "http://[::1]:8080/",
    ] {
        let loaded = load(&format!(r#"site {{ name = "a", url = [[{url}]] }}"#));
        assert!(
            loaded.is_ok(),
            "{url}: {:?}",
            loaded.err().map(|e| e.to_string())
        );
    }
}

/// A `defaults{}` refused for its place still has its values checked: one pass, every mistake.
#[test]
fn a_misplaced_defaults_has_its_values_checked_too() {
    let text = r#"site { name = "a", url = "https://a.example/" }
defaults { interval = "banana", timout = "5s" }
defaults { interval = "1m" }"#;
    assert_error(text, 2, &["defaults{} must come before the first site{}"]);
    assert_error(text, 2, &[r#"interval = "banana""#]);
    assert_error(text, 2, &[r#"unknown key "timout""#]);
    assert_error(text, 3, &["must come before"]);
    assert_eq!(errors(text).len(), 4, "{:?}", errors(text));
}

/// A self-signed RSA certificate and its key as PKCS#1 (`BEGIN RSA PRIVATE KEY`) and PKCS#8.
fn rsa_pair(name: &str) -> (String, String, String) {
    use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509};
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut subject = x509::X509NameBuilder::new().unwrap();
    subject.append_entry_by_text("CN", name).unwrap();
    let subject = subject.build();
    let mut cert = x509::X509Builder::new().unwrap();
    cert.set_version(2).unwrap();
    cert.set_subject_name(&subject).unwrap();
    cert.set_issuer_name(&subject).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    let text = |pem: Vec<u8>| String::from_utf8(pem).unwrap();
    (
        text(cert.build().to_pem().unwrap()),
        text(key.rsa().unwrap().private_key_to_pem().unwrap()),
        text(key.private_key_to_pem_pkcs8().unwrap()),
    )
}

/// The client certificate and key are checked as a pair when the file loads, not at the first
/// probe: PKCS#1 and PKCS#8 keys are taken, and each wrong pairing says what is wrong.
#[test]
fn client_certificate_pairs_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, pkcs1, pkcs8) = rsa_pair("client");
    let (_, other_key, _) = rsa_pair("other");
    let encrypted = openssl::pkey::PKey::private_key_from_pem(pkcs8.as_bytes())
        .unwrap()
        .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"secret")
        .unwrap();
    let files = [
        ("cert.pem", cert.as_bytes()),
        ("pkcs1.pem", pkcs1.as_bytes()),
        ("pkcs8.pem", pkcs8.as_bytes()),
        ("other.pem", other_key.as_bytes()),
        ("encrypted.pem", &encrypted[..]),
    ];
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let load_pair = |cert: &str, key: &str| {
        let (cert, key) = (dir.path().join(cert), dir.path().join(key));
        let text = format!(
            r#"site {{ name = "a", url = "https://a.example/", tls = {{ client_cert = "{}", client_key = "{}" }} }}"#,
            cert.display(),
            key.display()
        );
        load_str(Path::new(FILE), &text, dir.path()).map_err(|e| e.to_string())
    };
    for key in ["pkcs1.pem", "pkcs8.pem"] {
        assert!(
            load_pair("cert.pem", key).is_ok(),
            "{key}: {:?}",
            load_pair("cert.pem", key)
        );
    }
    let cases = [
        (
            "cert.pem",
            "cert.pem",
            "client_key holds a certificate, not a private key",
        ),
        (
            "pkcs8.pem",
            "pkcs8.pem",
            "client_cert holds a private key, not a certificate",
        ),
        (
            "cert.pem",
            "other.pem",
            "client_key does not belong to client_cert",
        ),
        ("cert.pem", "encrypted.pem", "client_key is encrypted"),
    ];
    for (cert, key, needle) in cases {
        let err = load_pair(cert, key).unwrap_err();
        assert!(err.starts_with(&format!("{FILE}:1: ")), "{err}");
        assert!(err.contains(needle), "{cert} + {key}: {err}");
    }
    // A wrong pair in defaults{} is one error, there, not one per site.
    let path = |name: &str| dir.path().join(name).display().to_string();
    let text = format!(
        "defaults {{ tls = {{ client_cert = \"{}\", client_key = \"{}\" }} }}\n\
         site {{ name = \"a\", url = \"https://a.example/\" }}\n\
         site {{ name = \"b\", url = \"https://b.example/\" }}",
        path("cert.pem"),
        path("other.pem")
    );
    let err = load_str(Path::new(FILE), &text, dir.path())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("{FILE}:1: ")) && err.contains("does not belong"),
        "{err}"
    );
}
