//! The hook runtime, end to end through a `HookPool`: the return contract, the read-only `r`,
//! metrics, the shipped scripts, and hostile hooks — each must fail its own assertion promptly
//! with a clear reason while other sites' hooks in the same pool keep working.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sitewatch::config::ConfigSource;
use sitewatch::hooks::{HookError, HookInput, HookLimits, HookPool, HookVerdict, MAX_REASON_LEN};
use sitewatch::probe::CertInfo;
use sitewatch::result::{Level, Timings};

/// A hostile hook must be stopped well within this.
const PROMPT: Duration = Duration::from_secs(5);

fn source(text: &str) -> ConfigSource {
    ConfigSource {
        path: PathBuf::from("sites.lua"),
        text: text.to_string(),
        scripts_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts"),
        scripts: Default::default(),
    }
}

/// sites.lua with one site per `(name, hook)` plus a well-behaved site "good".
fn sites(hooks: &[(&str, &str)]) -> String {
    let mut text = String::from(
        "site { name = \"good\", url = \"https://good.example/\", hooks = { function(r) return r.status == 200, \"status \" .. r.status end } }\n",
    );
    for (name, hook) in hooks {
        text.push_str(&format!(
            "site {{ name = {name:?}, url = \"https://{name}.example/\", hooks = {{ {hook} }} }}\n"
        ));
    }
    text
}

fn limits(workers: usize) -> HookLimits {
    HookLimits {
        workers,
        ..HookLimits::default()
    }
}

/// A call that should have stopped long before this has hung.
const HANG: Duration = Duration::from_secs(30);

/// The default limits with the wall clock out of reach, for tests that a hook meets its
/// instruction or memory limit. Those count work, not time: measured with eight busy loops on
/// two cores, a memory bomb that takes 0.17 s alone took 4.2 s, so any clock limit that a
/// loaded CI machine could not reach first would be a guess.
fn clockless(workers: usize) -> HookLimits {
    HookLimits {
        wall_time: HANG * 2,
        ..limits(workers)
    }
}

fn input(site: &str) -> Arc<HookInput> {
    Arc::new(HookInput {
        site: site.to_string(),
        url: format!("https://{site}.example/"),
        final_url: format!("https://{site}.example/home"),
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("set-cookie".into(), "a=1".into()),
            ("set-cookie".into(), "b=2".into()),
        ],
        body: Bytes::from_static(br#"{"status":"UP","checks":[{"name":"db"},{"name":"cache"}]}"#),
        body_truncated: false,
        timings: Timings {
            dns_ms: Some(1.5),
            connect_ms: Some(2.0),
            tls_ms: None,
            ttfb_ms: Some(640.0),
            transfer_ms: Some(3.0),
            total_ms: 650.0,
        },
        cert: Some(CertInfo {
            not_after: chrono::Utc::now() + chrono::Duration::days(10) + chrono::Duration::hours(1),
            subject: "CN=good.example".into(),
            issuer: "CN=Test CA".into(),
        }),
        attempt: 2,
    })
}

#[track_caller]
fn assert_fails(verdict: &HookVerdict, needle: &str) {
    assert_eq!(verdict.level, Some(Level::Fail), "{verdict:?}");
    let reason = verdict.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains(needle),
        "reason {reason:?} should contain {needle:?}"
    );
}

async fn good_still_works(pool: &HookPool) {
    let verdict = pool.call("good", 0, input("good")).await;
    assert_eq!(verdict, HookVerdict::pass());
}

#[tokio::test]
async fn return_contract() {
    let cases: &[(&str, &str, Option<Level>, Option<&str>)] = &[
        ("t", "function(r) return true end", None, None),
        ("n", "function(r) return nil end", None, None),
        ("none", "function(r) end", None, None),
        (
            "f",
            "function(r) return false, 'status page says DOWN' end",
            Some(Level::Fail),
            Some("status page says DOWN"),
        ),
        (
            "f0",
            "function(r) return false end",
            Some(Level::Fail),
            Some("hook returned false"),
        ),
        (
            "d",
            "function(r) return 'degraded', 'slow first byte' end",
            Some(Level::Warn),
            Some("slow first byte"),
        ),
        (
            "tf",
            "function(r) return { ok = false, reason = 'no' } end",
            Some(Level::Fail),
            Some("no"),
        ),
        (
            "td",
            "function(r) return { ok = true, degraded = true, reason = 'meh' } end",
            Some(Level::Warn),
            Some("meh"),
        ),
        ("tok", "function(r) return {} end", None, None),
        (
            "num",
            "function(r) return 7 end",
            Some(Level::Fail),
            Some("hook returned number (7)"),
        ),
        (
            "str",
            "function(r) return 'down' end",
            Some(Level::Fail),
            Some("hook returned string (\"down\")"),
        ),
        (
            "fn",
            "function(r) return print end",
            Some(Level::Fail),
            Some("hook returned function"),
        ),
        (
            "badkey",
            "function(r) return { ok = true, reasons = 'x' } end",
            Some(Level::Fail),
            Some("unknown key \"reasons\""),
        ),
        (
            "badok",
            "function(r) return { ok = 'yes' } end",
            Some(Level::Fail),
            Some("ok must be a boolean"),
        ),
        (
            "err",
            "function(r) error('kaput') end",
            Some(Level::Fail),
            Some("hook error: sites.lua:"),
        ),
        (
            "nil",
            "function(r) return r.nope.x end",
            Some(Level::Fail),
            Some("attempt to index a nil value"),
        ),
    ];
    let pool = HookPool::start(
        &source(&sites(
            &cases.iter().map(|c| (c.0, c.1)).collect::<Vec<_>>(),
        )),
        limits(2),
    )
    .unwrap();
    for (name, hook, level, reason) in cases {
        let verdict = pool.call(name, 0, input(name)).await;
        assert_eq!(verdict.level, *level, "{hook}: {verdict:?}");
        match reason {
            Some(want) => assert!(
                verdict.reason.as_deref().unwrap_or("").contains(want),
                "{hook}: {verdict:?}"
            ),
            None => assert_eq!(verdict.reason, None, "{hook}"),
        }
    }
    // Hook errors name the line of the hook.
    let verdict = pool.call("err", 0, input("err")).await;
    assert!(
        verdict
            .reason
            .as_deref()
            .unwrap()
            .starts_with("hook error: sites.lua:16: kaput"),
        "{verdict:?}"
    );
    good_still_works(&pool).await;
}

#[tokio::test]
async fn r_contents() {
    let hook = r#"function(r)
        assert(r.site == "r" and r.url == "https://r.example/" and r.final_url == "https://r.example/home")
        assert(r.status == 200 and r.attempt == 2 and r.body_truncated == false)
        assert(r.headers["content-type"] == "application/json")
        assert(r.headers["set-cookie"] == "a=1, b=2", r.headers["set-cookie"])
        assert(r.timings.dns_ms == 1.5 and r.timings.tls_ms == 0 and r.timings.ttfb_ms == 640)
        assert(r.timings.total_ms == 650 and r.timings.connect_ms + r.timings.transfer_ms == 5)
        assert(r.cert.days_left == 10, r.cert.days_left)
        assert(r.cert.subject == "CN=good.example" and r.cert.issuer == "CN=Test CA")
        assert(r.cert.not_after:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$"), r.cert.not_after)
        local keys = {}
        for k in pairs(r) do keys[#keys + 1] = k end
        table.sort(keys)
        assert(table.concat(keys, ",") == "attempt,body,body_truncated,cert,final_url,headers,site,status,timings,url", table.concat(keys, ","))
        assert(json.decode(r.body).status == "UP")
        return true
    end"#;
    let pool = HookPool::start(&source(&sites(&[("r", hook)])), limits(1)).unwrap();
    assert_eq!(pool.call("r", 0, input("r")).await, HookVerdict::pass());
    let mut plain = (*input("r")).clone();
    plain.cert = None;
    plain.timings = Timings::default();
    let hook = "function(r) return r.cert == nil and r.timings.ttfb_ms == 0 and r.timings.total_ms == 0 end";
    let pool = HookPool::start(&source(&sites(&[("r", hook)])), limits(1)).unwrap();
    assert_eq!(
        pool.call("r", 0, Arc::new(plain)).await,
        HookVerdict::pass()
    );
}

#[tokio::test]
async fn r_is_read_only() {
    let cases = [
        ("w1", "function(r) r.status = 500 end", "r is read-only"),
        ("w2", "function(r) r.extra = 1 end", "r is read-only"),
        (
            "w3",
            "function(r) r.headers['x'] = 'y' end",
            "r.headers is read-only",
        ),
        (
            "w4",
            "function(r) r.timings.total_ms = 0 end",
            "r.timings is read-only",
        ),
        (
            "w5",
            "function(r) r.cert.days_left = 999 end",
            "r.cert is read-only",
        ),
        (
            "w6",
            "function(r) setmetatable(r, nil) end",
            "cannot change a protected metatable",
        ),
        (
            "w7",
            "function(r) rawset(r, 'status', 1) end",
            "global 'rawset'",
        ),
        (
            "w8",
            "function(r) getmetatable(r).__index = {} end",
            "attempt to index a boolean value",
        ),
        (
            "w9",
            "function(r) local _, t = pairs(r.headers) t.x = 1 end",
            "attempt to index a nil value",
        ),
    ];
    let pool = HookPool::start(&source(&sites(&cases.map(|c| (c.0, c.1)))), limits(1)).unwrap();
    for (name, _, reason) in cases {
        assert_fails(&pool.call(name, 0, input(name)).await, reason);
    }
    good_still_works(&pool).await;
}

#[tokio::test]
async fn hooks_cannot_change_what_other_hooks_see() {
    let text = r#"
site { name = "a", url = "https://a.example/", hooks = {
  function(r) x = 1 end,
  function(r) string.format = nil end,
  function(r) json.decode = nil end,
  function(r) getmetatable("").__index = {} end,
  function(r) local _, globals = pairs(_G) globals.json = nil end,
} }
site { name = "b", url = "https://b.example/", hooks = {
  function(r) return x == nil and string.format("%d", 1) == "1" and json.decode("[1]")[1] == 1 and ("x"):upper() == "X" end,
} }
"#;
    let pool = HookPool::start(&source(text), limits(1)).unwrap();
    let reasons = [
        "cannot assign global 'x'",
        "string is read-only",
        "json is read-only",
        "attempt to index a boolean value",
        "attempt to index a nil value (local 'globals')",
    ];
    for (i, reason) in reasons.iter().enumerate() {
        assert_fails(&pool.call("a", i, input("a")).await, reason);
    }
    assert_eq!(pool.call("b", 0, input("b")).await, HookVerdict::pass());
}

#[tokio::test]
async fn metrics() {
    let cases = [
        ("m1", "function(r) return { ok = true, metrics = { ttfb = r.timings.ttfb_ms, n = 3 } } end"),
        ("m2", "function(r) return { ok = false, reason = 'x', metrics = { ttfb = 640, n = 3.0 } } end"),
        ("bad", "function(r) return { metrics = { ttfb = 'slow' } } end"),
        ("nan", "function(r) return { metrics = { x = 0/0 } } end"),
        ("longname", "function(r) return { metrics = { [string.rep('m', 129)] = 1 } } end"),
        ("many", "function(r) local m = {} for i = 1, 65 do m['m' .. i] = i end return { metrics = m } end"),
        ("most", "function(r) local m = {} for i = 1, 64 do m['m' .. i] = i end return { metrics = m } end"),
        ("partly", "function(r) return { metrics = { good = 1, bad = 'x' } } end"),
    ];
    let pool = HookPool::start(&source(&sites(&cases)), limits(1)).unwrap();
    for name in ["m1", "m2"] {
        let verdict = pool.call(name, 0, input(name)).await;
        assert_eq!(verdict.metrics.get("ttfb"), Some(&640.0), "{verdict:?}");
        assert_eq!(verdict.metrics.get("n"), Some(&3.0));
    }
    assert_fails(
        &pool.call("bad", 0, input("bad")).await,
        "metric \"ttfb\" must be a finite number",
    );
    assert_fails(
        &pool.call("nan", 0, input("nan")).await,
        "metric \"x\" must be a finite number",
    );
    assert_fails(
        &pool.call("longname", 0, input("longname")).await,
        "metric names are at most 128 bytes",
    );
    // A refused verdict stores none of its metrics; 64 is the most a verdict may carry.
    let many = pool.call("many", 0, input("many")).await;
    assert_fails(&many, "more than 64 metrics");
    assert!(many.metrics.is_empty(), "{:?}", many.metrics);
    let partly = pool.call("partly", 0, input("partly")).await;
    assert!(partly.metrics.is_empty(), "{:?}", partly.metrics);
    let most = pool.call("most", 0, input("most")).await;
    assert_eq!((most.level, most.metrics.len()), (None, 64), "{most:?}");
}

#[tokio::test]
async fn shipped_scripts() {
    let text = r#"
site { name = "s", url = "https://s.example/", hooks = { script "json_status", script "latency_budget", script "cert_expiry" } }
"#;
    let pool = HookPool::start(&source(text), limits(1)).unwrap();
    let verdict = pool.call("s", 0, input("s")).await;
    assert_eq!(verdict.level, None, "{verdict:?}");
    assert_eq!(verdict.metrics.get("checks"), Some(&2.0));
    assert_eq!(verdict.metrics.get("status_up"), Some(&1.0));

    let verdict = pool.call("s", 1, input("s")).await;
    assert_eq!(verdict.level, Some(Level::Warn), "{verdict:?}");
    assert_eq!(
        verdict.reason.as_deref(),
        Some("first byte after 640 ms (budget 500 ms)")
    );
    assert_eq!(verdict.metrics.get("ttfb_ms"), Some(&640.0));

    let verdict = pool.call("s", 2, input("s")).await;
    assert_eq!(verdict.level, Some(Level::Warn), "{verdict:?}");
    assert!(
        verdict
            .reason
            .as_deref()
            .unwrap()
            .starts_with("certificate expires in 10 days"),
        "{verdict:?}"
    );
    assert_eq!(verdict.metrics.get("cert_days_left"), Some(&10.0));

    let mut down = (*input("s")).clone();
    down.body = Bytes::from_static(br#"{"status":"DOWN"}"#);
    let verdict = pool.call("s", 0, Arc::new(down.clone())).await;
    assert_fails(&verdict, "status is \"DOWN\", want \"UP\" or \"ok\"");
    down.body = Bytes::from_static(b"<html>");
    let verdict = pool.call("s", 0, Arc::new(down)).await;
    assert_fails(&verdict, "body is not JSON: ");
    assert!(!verdict.reason.unwrap().contains('\n'));
}

#[tokio::test]
async fn hostile_hooks_fail_promptly_and_the_pool_keeps_working() {
    let cases = [
        ("spin", "function(r) while true do end end", "hook exceeded its instruction budget"),
        (
            "spin_pcall",
            "function(r) while true do pcall(function() while true do end end) end end",
            "hook exceeded its instruction budget",
        ),
        ("membomb", "function(r) local t = {} while true do t[#t + 1] = string.rep('x', 1024) .. #t end end", "hook exceeded memory limit (32 MiB)"),
        ("os", "function(r) os.execute('true') end", "attempt to index a nil value (global 'os')"),
        ("io", "function(r) io.open('/etc/passwd') end", "attempt to index a nil value (global 'io')"),
        ("require", "function(r) require('x') end", "attempt to call a nil value (global 'require')"),
        ("dump", "function(r) load(string.dump(function() end)) end", "attempt to call a nil value (field 'dump')"),
        ("bytecode", "function(r) assert(load('\\27LuaT\\0')) end", "attempt to load a binary chunk (mode is 't')"),
        ("bytecode_b", "function(r) assert(load('\\27LuaT\\0', 'x', 'b')) end", "attempt to load a binary chunk (mode is 't')"),
        // Lua 5.4 caps strings at 2 GiB; below that cap the memory limit stops it.
        ("rep32", "function(r) return string.rep('x', 1 << 32) end", "resulting string too large"),
        ("rep4g", "function(r) return string.rep('x', 1 << 20):rep(4096) end", "resulting string too large"),
        ("rep1g", "function(r) return string.rep('x', 1 << 20):rep(1024) end", "hook exceeded memory limit (32 MiB)"),
        ("gc", "function(r) setmetatable({}, { __gc = function() while true do end end }) end", "__gc metamethods are not allowed"),
        ("env", "function(r) return env('HOME') end", "env() is only available at load time"),
        ("script", "function(r) return script('json_status') end", "script() is only available at load time"),
        ("site", "function(r) site { name = 'x', url = 'https://x.example/' } end", "site() is only available at load time"),
        ("deep", "function(r) local function f() return f() + 1 end return f() end", "hook exceeded memory limit"),
    ];
    // Each case must meet its own limit, not the wall clock (tested by `wall_time_limit`).
    let pool = HookPool::start(&source(&sites(&cases.map(|c| (c.0, c.1)))), clockless(2)).unwrap();
    for (name, _, reason) in cases {
        let started = Instant::now();
        let verdict = pool.call(name, 0, input(name)).await;
        let elapsed = started.elapsed();
        assert_fails(&verdict, reason);
        assert!(elapsed < HANG, "{name} took {elapsed:?}");
        good_still_works(&pool).await;
    }
    // And every hostile hook again, concurrently, with the good one in between.
    let calls = cases
        .iter()
        .map(|(name, _, _)| pool.call(name, 0, input(name)));
    let verdicts = futures::future::join_all(calls).await;
    assert!(
        verdicts.iter().all(|v| v.level == Some(Level::Fail)),
        "{verdicts:?}"
    );
    good_still_works(&pool).await;
}

#[tokio::test]
async fn wall_time_limit() {
    let limits = HookLimits {
        workers: 1,
        instructions: u64::MAX / 2,
        wall_time: Duration::from_millis(200),
        ..HookLimits::default()
    };
    let pool = HookPool::start(
        &source(&sites(&[("spin", "function(r) while true do end end")])),
        limits,
    )
    .unwrap();
    let started = Instant::now();
    assert_fails(
        &pool.call("spin", 0, input("spin")).await,
        "hook exceeded its time limit (200ms)",
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    good_still_works(&pool).await;
}

/// A Lua pattern with nested `.-` backtracks inside one C call, where no instruction hook runs.
/// The watchdog answers for it; the other worker keeps serving.
#[tokio::test]
async fn stuck_in_a_library_call() {
    let limits = HookLimits {
        workers: 2,
        wall_time: Duration::from_millis(100),
        ..HookLimits::default()
    };
    // Roughly O(n^4) steps with n = 400: several seconds inside string.find, then it returns.
    let hook = "function(r) return string.find(string.rep('a', 400), '.-.-.-b') end";
    let pool = HookPool::start(&source(&sites(&[("pattern", hook)])), limits).unwrap();
    let started = Instant::now();
    let verdict = pool.call("pattern", 0, input("pattern")).await;
    assert_fails(&verdict, "stuck inside a library call");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    good_still_works(&pool).await;
}

#[tokio::test]
async fn long_reasons_are_cut() {
    let hook = "function(r) return false, string.rep('x', 100000) end";
    let pool = HookPool::start(&source(&sites(&[("long", hook)])), limits(1)).unwrap();
    let verdict = pool.call("long", 0, input("long")).await;
    assert_eq!(verdict.reason.map(|r| r.len()), Some(MAX_REASON_LEN + 3));
}

#[test]
fn pool_and_calls_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<HookPool>();
    let pool = HookPool::start(&source(&sites(&[])), limits(1)).unwrap();
    let call = pool.call("good", 0, input("good"));
    send(&call);
}

#[tokio::test]
async fn unknown_site_or_index() {
    let pool = HookPool::start(&source(&sites(&[])), limits(1)).unwrap();
    assert_fails(
        &pool.call("nope", 0, input("nope")).await,
        "no hooks are loaded for site \"nope\"",
    );
    assert_fails(
        &pool.call("good", 1, input("good")).await,
        "there is no hook 2",
    );
    good_still_works(&pool).await;
}

#[tokio::test]
async fn helpers_in_hooks() {
    let hook = r#"function(r)
        local v = json.decode(r.body)
        log.info("checks: " .. #v.checks)
        log.warn("warned")
        print("printed", 1, true)
        local code = regex.match(r.headers["content-type"], "^application/(\\w+)")
        assert(code == "json", code)
        assert(regex.match("no digits", "[0-9]+") == nil)
        assert(json.encode({ a = { 1, 2 }, b = json.null }) == '{"a":[1,2],"b":null}')
        local ok, err = pcall(json.decode, "{")
        assert(not ok and tostring(err):find("json.decode"), tostring(err))
        return true
    end"#;
    let pool = HookPool::start(&source(&sites(&[("h", hook)])), limits(1)).unwrap();
    assert_eq!(pool.call("h", 0, input("h")).await, HookVerdict::pass());
}

#[tokio::test]
async fn many_concurrent_calls() {
    let pool = Arc::new(HookPool::start(&source(&sites(&[])), limits(2)).unwrap());
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.call("good", 0, input("good")).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), HookVerdict::pass());
    }
}

#[test]
fn start_reports_a_broken_configuration() {
    let err = HookPool::start(
        &source("site { name = 'a', url = 'https://a.example/', hooks = { script 'missing' } }"),
        limits(1),
    )
    .unwrap_err();
    assert!(matches!(err, HookError::Evaluate { .. }), "{err:?}");
    assert!(err.to_string().contains("script \"missing\""), "{err}");
    let err = HookPool::start(
        &source(""),
        HookLimits {
            workers: 0,
            ..HookLimits::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, HookError::Limits(_)), "{err:?}");
}

#[tokio::test]
async fn workers_run_the_script_text_that_was_validated_not_a_later_edit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("scripts")).unwrap();
    let script = dir.path().join("scripts/verdict.lua");
    std::fs::write(&script, "return function(r) return true end").unwrap();
    std::fs::write(
        dir.path().join("sites.lua"),
        "site { name = \"s\", url = \"https://s.example/\", hooks = { script \"verdict\" } }",
    )
    .unwrap();
    let config = sitewatch::config::load(&dir.path().join("sites.lua")).expect("valid");
    // Edited after validation, before the workers start: they must not pick this up.
    std::fs::write(&script, "return function(r) return false, \"edited\" end").unwrap();
    let pool = HookPool::start(&config.source, limits(1)).expect("pool");
    assert_eq!(pool.call("s", 0, input("s")).await.level, None);
}

/// Lua calls an `xpcall` message handler with debug hooks off when the error came from the
/// instruction budget: a handler that loops must still be stopped, and the worker must be free
/// for the next call.
#[tokio::test]
async fn message_handlers_cannot_escape_the_budget() {
    let spin = "function() while true do end end";
    let hooks = [
        format!("function(r) xpcall({spin}, {spin}) end"),
        format!("function(r) xpcall(error, {spin}) end"),
        format!(
            "function(r) return xpcall({spin}, function(e) return xpcall({spin}, {spin}) end) end"
        ),
        format!("function(r) while true do xpcall({spin}, {spin}) end end"),
        format!("function(r) error(setmetatable({{}}, {{ __tostring = {spin} }})) end"),
    ];
    let cases: Vec<(String, &str)> = hooks
        .iter()
        .enumerate()
        .map(|(i, hook)| (format!("x{i}"), hook.as_str()))
        .collect();
    let named: Vec<(&str, &str)> = cases.iter().map(|(n, h)| (n.as_str(), *h)).collect();
    let pool = HookPool::start(&source(&sites(&named)), clockless(1)).unwrap();
    for (name, _) in &named {
        let started = Instant::now();
        let verdict = pool.call(name, 0, input(name)).await;
        assert_fails(&verdict, "hook exceeded its instruction budget");
        assert!(
            started.elapsed() < HANG,
            "{name} took {:?}",
            started.elapsed()
        );
        good_still_works(&pool).await;
    }
}

/// A worker whose evaluation is stuck inside one library call is abandoned once the load
/// wall-clock limit has passed: starting the pool fails instead of hanging.
#[test]
fn start_gives_up_on_an_evaluation_stuck_in_a_library_call() {
    let text = "local _ = string.find(string.rep('a', 560), '.-.-.-b')\n";
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(HookPool::start(&source(text), limits(1)).map(|_| ()));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(40))
        .expect("HookPool::start still running after 40s");
    let err = result.unwrap_err();
    assert!(matches!(err, HookError::StartTimeout { .. }), "{err:?}");
    assert!(err.to_string().contains("within 20s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(40));
}

/// `pcall` around a library function written in Rust gives its message as a string, like the
/// errors of Lua's own functions: no "runtime error:" and no Rust stack trace.
#[tokio::test]
async fn pcall_gives_library_errors_as_plain_messages() {
    let cases = [
        ("decode", "function(r) local ok, e = pcall(json.decode, '{bad') assert(not ok) return false, e end"),
        ("encode", "function(r) local ok, e = pcall(json.encode, function() end) assert(not ok) return false, e end"),
        ("xpcall", "function(r) local _, e = xpcall(json.decode, function(m) return 'handled: ' .. m end, '[1,') return false, e end"),
        ("typed", "function(r) local ok, e = pcall(json.decode, '{bad') return false, type(e) end"),
    ];
    let pool = HookPool::start(&source(&sites(&cases)), limits(1)).unwrap();
    let expected = [
        "json.decode: key must be a string at line 1 column 2",
        "json.encode: cannot encode a function",
        "handled: ",
        "string",
    ];
    for ((name, _), needle) in cases.iter().zip(expected) {
        let verdict = pool.call(name, 0, input(name)).await;
        let reason = verdict.reason.as_deref().unwrap_or_default();
        assert!(reason.contains(needle), "{name}: {reason}");
        assert!(!reason.contains("runtime error"), "{name}: {reason}");
        assert!(!reason.contains("stack traceback"), "{name}: {reason}");
    }
}

/// Deep tables in a hook: json.encode refuses them instead of overflowing the worker's stack
/// (which aborted the process), and Lua ↔ Rust recursion through `__tostring` is stopped by
/// Lua's call depth limit.
#[tokio::test]
async fn deep_recursion_fails_the_hook_not_the_process() {
    let cases = [
        ("nest", "function(r) local t = {} for _ = 1, 5000 do t = { t } end return json.encode(t) end", "json.encode: tables nested deeper than 128 levels"),
        ("nestmap", "function(r) local t = {} for _ = 1, 100000 do t = { a = t } end return json.encode(t) end", "json.encode: tables nested deeper than 128 levels"),
        ("tostring", "function(r) local t t = setmetatable({}, { __tostring = function() log.info(t) return 'x' end }) log.info(t) end", "stack overflow"),
        ("printed", "function(r) local t t = setmetatable({}, { __tostring = function() print(t) return 'x' end }) print(t) end", "stack overflow"),
    ];
    let pool = HookPool::start(&source(&sites(&cases.map(|c| (c.0, c.1)))), clockless(1)).unwrap();
    for (name, _, reason) in cases {
        let verdict = pool.call(name, 0, input(name)).await;
        assert_fails(&verdict, reason);
        good_still_works(&pool).await;
    }
}

/// Hooks stuck in long library calls on every worker at once: each is answered after its wall
/// time plus the grace, its worker is abandoned and replaced, and other sites' hooks keep
/// passing — not "every hook worker is stuck" until the calls return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_workers_are_replaced() {
    let limits = HookLimits {
        workers: 2,
        wall_time: Duration::from_millis(100),
        ..HookLimits::default()
    };
    // A few seconds each inside one C call (string.find, string.gsub, string.match).
    let subject = "string.rep('a', 300)";
    let hooks = [
        format!("function(r) return string.find({subject}, '.-.-.-b') end"),
        format!("function(r) return (string.gsub({subject}, '.-.-.-b', '')) end"),
        format!("function(r) return string.match({subject}, '.-.-.-b') end"),
    ];
    let cases = [
        ("find", &hooks[0]),
        ("gsub", &hooks[1]),
        ("match", &hooks[2]),
    ];
    let pool = HookPool::start(
        &source(&sites(&cases.map(|(n, h)| (n, h.as_str())))),
        limits,
    )
    .unwrap();
    let started = Instant::now();
    let verdicts = futures::future::join_all(
        cases
            .iter()
            .map(|(name, _)| pool.call(name, 0, input(name))),
    )
    .await;
    for verdict in &verdicts {
        assert_fails(verdict, "stuck inside a library call");
    }
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
    // Both original workers are stuck; their replacements serve.
    for _ in 0..5 {
        let started = Instant::now();
        good_still_works(&pool).await;
        assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
    }
    // And a stuck call again, on a replacement: replaced again.
    assert_fails(
        &pool.call("find", 0, input("find")).await,
        "stuck inside a library call",
    );
    good_still_works(&pool).await;
}

/// `pairs()` order differs from one Lua state to the next (each has its own hash seed): sites
/// declared in that order must still start, and each call must reach its own site's hook.
#[tokio::test]
async fn sites_declared_in_pairs_order_are_matched_by_name() {
    let texts = [
        r#"
local names = {}
for i = 1, 60 do names["s" .. i] = true end
for name in pairs(names) do
  site { name = name, url = "https://" .. name .. ".example/",
         hooks = { function(r) return r.site == name, "hook of " .. name .. " ran for " .. r.site end } }
end
"#,
        r#"
local specs = {}
for i = 1, 60 do specs["s" .. i] = { n = i } end
local function check(name) return function(r) return r.site == name, "hook of " .. name end end
for name, spec in pairs(specs) do
  site { name = name, url = "https://" .. name .. ".example/", hooks = { check(name), check(name) } }
end
"#,
    ];
    for text in texts {
        // Several pools, several workers each: the orders differ between states.
        for _ in 0..3 {
            let pool = HookPool::start(&source(text), limits(4)).unwrap();
            let calls = (1..=60).map(|i| {
                let name = format!("s{i}");
                let pool = &pool;
                async move { (pool.call(&name, 0, input(&name)).await, name) }
            });
            for (verdict, name) in futures::future::join_all(calls).await {
                assert_eq!(verdict, HookVerdict::pass(), "{name}");
            }
        }
    }
}

/// A hooks list built in `pairs()` order cannot be matched by position: starting says so,
/// naming the site, instead of calling the wrong function.
#[test]
fn hook_lists_in_pairs_order_are_refused_with_the_site_named() {
    let text = r#"
local fs = {}
for i = 1, 40 do fs["h" .. i] = load("return function(r) return true end", "=h" .. i)() end
local list = {}
for _, f in pairs(fs) do list[#list + 1] = f end
site { name = "shuffled", url = "https://s.example/", hooks = list }
"#;
    // Chunks named =h1.. have distinct sources, so each hook has its own identity.
    let mut refused = 0;
    for _ in 0..5 {
        match HookPool::start(&source(text), limits(4)) {
            Ok(_) => {}
            Err(err) => {
                assert!(matches!(err, HookError::Inconsistent { .. }), "{err:?}");
                assert!(
                    err.to_string().contains("the hooks of site \"shuffled\""),
                    "{err}"
                );
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "4 workers × 5 pools never shuffled 40 hooks");
}

/// Whatever `sites.lua` does to its globals, validation and the hook workers prepare the state
/// the same way: a file that validates starts a pool, and its hooks run.
#[tokio::test]
async fn what_validates_is_what_hook_workers_can_load() {
    let site = "site { name = 'a', url = 'https://a.example/', hooks = { function(r) return string.upper('x') == 'X' and r.site == 'a' end } }\n";
    let preludes = [
        "setmetatable(_G, { __metatable = 'locked' })\n",
        "setmetatable(_G, { __metatable = false, __index = function(_, k) error('undefined global ' .. tostring(k), 2) end })\n",
        "setmetatable(string, { __metatable = 'mine' })\nsetmetatable(table, { __metatable = false })\n",
        "setmetatable(json, { __metatable = 1, __index = function() return nil end })\n",
    ];
    for prelude in preludes {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sites.lua");
        // The site first, so the hook is declared before the globals are locked.
        std::fs::write(&path, format!("{site}{prelude}")).unwrap();
        let config = sitewatch::config::load(&path);
        let pool = config
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|c| HookPool::start(&c.source, limits(2)).map_err(|e| e.to_string()));
        match pool {
            Ok(pool) => assert_eq!(
                pool.call("a", 0, input("a")).await,
                HookVerdict::pass(),
                "{prelude}"
            ),
            Err(error) => assert!(
                config.is_err(),
                "validation accepted what the workers could not load:\n{prelude}{error}"
            ),
        }
        assert!(config.is_ok(), "{prelude}: {}", config.unwrap_err());
    }
}

/// References to the libraries taken at load time (`local S = string`) reach the same frozen
/// tables: a hook cannot change what another hook sees through them, nor through the string
/// methods, nor by rebinding a global name at load time.
#[tokio::test]
async fn library_tables_are_frozen_not_just_their_names() {
    let text = r#"
local S, T, M, U, J, R, L = string, table, math, utf8, json, regex, log
local original_string = string
string = { upper = function() return "shadow" end }
site { name = "a", url = "https://a.example/", hooks = {
  function(r) S.upper = function() return "evil" end end,
  function(r) original_string.lower = nil end,
  function(r) T.insert = nil end,
  function(r) M.pi = 3 end,
  function(r) U.char = nil end,
  function(r) J.decode = function() return {} end end,
  function(r) R.match = nil end,
  function(r) L.info = nil end,
  function(r) setmetatable(S, {}) end,
  function(r) string.upper = nil end,
  function(r) getmetatable("").__index.upper = nil end,
} }
site { name = "b", url = "https://b.example/", hooks = {
  function(r)
    local ok = S.upper("x") == "X" and ("y"):upper() == "Y" and original_string.lower("Q") == "q"
      and T.insert ~= nil and M.pi > 3.14 and U.char(65) == "A" and J.decode("[1]")[1] == 1
      and R.match("a1", "%d") == nil and L.info ~= nil and string.upper() == "shadow"
    local n = 0 for _ in pairs(S) do n = n + 1 end
    return ok and n > 10, "a library was changed"
  end,
} }
"#;
    let pool = HookPool::start(&source(text), limits(1)).unwrap();
    let reasons = [
        "string is read-only",
        "string is read-only",
        "table is read-only",
        "math is read-only",
        "utf8 is read-only",
        "json is read-only",
        "regex is read-only",
        "log is read-only",
        "cannot change a protected metatable",
        "string is read-only",
        "attempt to index a boolean value",
    ];
    for (i, reason) in reasons.iter().enumerate() {
        assert_fails(&pool.call("a", i, input("a")).await, reason);
    }
    assert_eq!(pool.call("b", 0, input("b")).await, HookVerdict::pass());
}

/// Log lines written for hooks (`log.*`, `print`) cannot be forged with text from a server:
/// line breaks, carriage returns, escape sequences and bidi overrides come out escaped, each
/// message on the one line that names its site.
#[tokio::test]
async fn hook_logs_cannot_forge_lines() {
    #[derive(Clone, Default)]
    struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    // Hook workers log from their own threads: only a global subscriber sees them.
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        return; // another test of this binary set one first
    }
    let payloads = [
        "ok\nERROR sitewatch: forged-1 database is down",
        "ok\r\nWARN forged-2",
        "ok\u{1b}[2K\u{1b}[1Gforged-3",
        "ok\u{2028}forged-4",
        "ok\u{202e}forged-5",
    ];
    let hook = "function(r) log.info(r.body) log.warn(r.body) print('x', r.body) end";
    let pool = HookPool::start(&source(&sites(&[("inject", hook)])), limits(1)).unwrap();
    for payload in payloads {
        let mut request = (*input("inject")).clone();
        request.body = Bytes::from(payload.as_bytes().to_vec());
        assert_eq!(
            pool.call("inject", 0, Arc::new(request)).await,
            HookVerdict::pass()
        );
    }
    let logged = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    let mut seen = 0;
    for line in logged.lines() {
        if line.contains("forged") {
            seen += 1;
            assert!(
                line.contains("sitewatch::lua") && line.contains("site=inject"),
                "forged line: {line:?}"
            );
            assert!(
                !line.contains('\r')
                    && !line.contains('\u{1b}')
                    && !line.contains('\u{2028}')
                    && !line.contains('\u{202e}'),
                "{line:?}"
            );
        }
    }
    assert_eq!(seen, payloads.len() * 3, "{logged}");
}

/// A site name written in NFD reaches its hooks by the NFC name the configuration stores.
#[tokio::test]
async fn hooks_are_found_by_the_normalised_site_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sites.lua");
    std::fs::write(
        &path,
        "site { name = \"cafe\u{301}\", url = \"https://a.example/\", hooks = { function(r) return true end } }\n",
    )
    .unwrap();
    let config = sitewatch::config::load(&path).unwrap();
    let name = &config.sites[0].name;
    assert_eq!(name, "caf\u{e9}");
    let pool = HookPool::start(&config.source, limits(1)).unwrap();
    assert_eq!(pool.call(name, 0, input(name)).await, HookVerdict::pass());
}
