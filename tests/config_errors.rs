//! The Lua sandbox's limits when `sites.lua` loads: hostile configurations (endless loops,
//! escaping message handlers, long library calls, floods of errors or declarations) each end in a
//! clear error within the documented limits. Ordinary configuration mistakes are tested next to
//! the validator (`src/config/load_errors.rs`).

use std::path::Path;
use std::time::Duration;

use sitewatch::config::{load_str, Config, ConfigErrors};

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
fn sandbox_and_budget_at_load_time() {
    assert_error(
        "\nos.execute('true')",
        2,
        &["attempt to index a nil value (global 'os')"],
    );
    assert_error("\nlocal f = io.open('/etc/passwd')", 2, &["global 'io'"]);
    // The instruction budget, or the time limit on a machine too busy to run 500M instructions
    // in 20 s.
    assert_all_fail_within_any(&["\n\nwhile true do end".to_string()], 3, BUDGET_BROKEN);
}

// ---- hostile configurations: every one ends in a clear error, within the documented limits ----

/// The loader's wall-clock limit (docs/config.md, Sandbox) plus room for a loaded machine.
const LOAD_BOUND: Duration = Duration::from_secs(40);

/// Loads every text at once, each on a thread of its own, and waits at most `limit` for all: a
/// configuration that hangs the loader fails the test instead of hanging it.
fn load_all_within(texts: &[String], limit: Duration) -> Vec<Result<Config, ConfigErrors>> {
    let deadline = std::time::Instant::now() + limit;
    let receivers: Vec<_> = texts
        .iter()
        .map(|text| {
            let text = text.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(load(&text));
            });
            rx
        })
        .collect();
    receivers
        .into_iter()
        .zip(texts)
        .map(|(rx, text)| {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            rx.recv_timeout(left)
                .unwrap_or_else(|_| panic!("still loading after {limit:?}:\n{text}"))
        })
        .collect()
}

/// Each text must fail within [`LOAD_BOUND`] with an error at `line` containing `needle`.
#[track_caller]
fn assert_all_fail_within(texts: &[String], line: u32, needle: &str) {
    assert_all_fail_within_any(texts, line, &[needle]);
}

/// The instruction budget or, on a busy machine, the wall-clock limit: either stops a loop.
const BUDGET_BROKEN: &[&str] = &[
    "evaluation exceeded its instruction budget",
    "evaluation took longer than 20s",
];

/// Each text must fail within [`LOAD_BOUND`] with an error at `line` containing one of
/// `needles`.
#[track_caller]
fn assert_all_fail_within_any(texts: &[String], line: u32, needles: &[&str]) {
    for (result, text) in load_all_within(texts, LOAD_BOUND).into_iter().zip(texts) {
        let report = match result {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(errors) => errors.to_string(),
        };
        let prefix = format!("{FILE}:{line}: ");
        assert!(
            report
                .lines()
                .any(|l| l.starts_with(&prefix) && needles.iter().any(|n| l.contains(n))),
            "want one of {needles:?} at line {line} for\n{text}\ngot:\n{report}"
        );
    }
}

#[test]
fn message_handlers_cannot_escape_the_instruction_budget() {
    let spin = "function() while true do end end";
    let bodies = [
        format!("xpcall({spin}, {spin})"),
        format!("xpcall(error, {spin})"),
        "xpcall(function() error({}) end, function(e) local n = 0 while true do n = n + 1 end end)"
            .to_string(),
        format!("xpcall({spin}, function() xpcall({spin}, {spin}) end)"),
        format!("for _ = 1, 10 do xpcall({spin}, {spin}) end"),
        format!("error(setmetatable({{}}, {{ __tostring = {spin} }}))"),
        format!("site {{ name = 'a', url = 'https://a.example/', hooks = {{ function() end }} }} xpcall(string.rep, {spin}, 'x', -1, {{}})"),
    ];
    let texts: Vec<String> = bodies.iter().map(|b| format!("\n{b}\n")).collect();
    assert_all_fail_within_any(&texts, 2, BUDGET_BROKEN);
}

/// A single long library call cannot be stopped by the instruction hook; the documented
/// wall-clock limit must hold anyway, with the error at the line that was running.
#[test]
fn long_library_calls_at_load_time_end_at_the_wall_clock_limit() {
    let started = std::time::Instant::now();
    // Backtracks for about half a minute inside one string.find (then returns, so the abandoned
    // thread does not outlive the test run by much).
    let stuck = "site { name = 'a', url = 'https://a.example/' }\n\nlocal _ = string.find(string.rep('a', 560), '.-.-.-b')\n";
    assert_all_fail_within(&[stuck.to_string()], 3, "evaluation took longer than 20s");
    assert!(started.elapsed() < LOAD_BOUND);
    // Would move nils for ever: moves in chunks, each element counted as an instruction.
    let texts = [
        "site { name = 'a', url = 'https://a.example/' }\n\ntable.move({}, 1, 1 << 62, 2)\n",
        "site { name = 'a', url = 'https://a.example/' }\n\nlocal t = setmetatable({}, { __index = {} }) table.move(t, 1, 1 << 60, 2, {})\n",
    ]
    .map(str::to_string);
    assert_all_fail_within_any(&texts, 3, BUDGET_BROKEN);
    // Loops that copy nothing end at once.
    let quick = [
        "local s = string.rep('', 1 << 62) .. ('' ):rep(1 << 62, '')\nsite { name = 'a', url = 'https://a.example/' }\n",
    ];
    for text in quick {
        let started = std::time::Instant::now();
        load_all_within(&[text.to_string()], LOAD_BOUND)
            .pop()
            .unwrap()
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "{text}");
    }
}

/// A table nested thousands of levels deep is refused by json.encode, not written by a
/// recursion that overflows the thread's stack (which aborted the whole process).
#[test]
fn deeply_nested_tables_do_not_overflow_the_stack() {
    let cases = [
        "local t = {} for _ = 1, 5000 do t = { t } end\nlocal _ = json.encode(t)\n",
        "local t = {} for _ = 1, 100000 do t = { x = t } end\nlocal _ = json.encode(t)\n",
        "local t = json.null for i = 1, 3000 do t = { [tostring(i)] = t, list = { t } } end\nlocal _ = json.encode({ t })\n",
    ];
    let texts: Vec<String> = cases.iter().map(|c| c.to_string()).collect();
    assert_all_fail_within(
        &texts,
        2,
        "json.encode: tables nested deeper than 128 levels",
    );
    // Just inside the limit is fine.
    let text = "local t = 1 for _ = 1, 127 do t = { t } end\nlocal s = json.encode(t)\nassert(#s == 255)\nsite { name = 'a', url = 'https://a.example/' }\n";
    load_all_within(&[text.to_string()], LOAD_BOUND)
        .pop()
        .unwrap()
        .unwrap();
}

/// This process's resident memory, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Loads `text` while sampling RSS; returns the result and the peak growth in MiB.
fn load_measuring_rss(text: &str) -> (Result<Config, ConfigErrors>, u64) {
    let base = rss_bytes();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = rss_bytes();
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            peak = peak.max(rss_bytes());
            std::thread::sleep(Duration::from_millis(2));
        }
        peak.max(rss_bytes())
    });
    let result = load_all_within(&[text.to_string()], LOAD_BOUND)
        .pop()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let peak = sampler.join().unwrap();
    (result, peak.saturating_sub(base) >> 20)
}

/// Strings declared in site{} are copied out of Lua; declaring one big string many times must
/// not copy it without end. The Lua heap (256 MiB) and the declarations (64 MiB) are the bound.
#[test]
fn declarations_copied_out_of_lua_are_bounded() {
    let texts = [
        "local big = string.rep('x', 8 << 20)\nfor i = 1, 100 do site { name = 'a' .. i, url = 'https://a.example/', request = { body = big } } end\n",
        "local big = string.rep('x', 8 << 20)\nfor i = 1, 100 do site { name = 'a' .. i, url = 'https://a.example/', expect = { headers = { [big .. i] = 'x' } } } end\n",
        "local big = string.rep('x', 8 << 20)\nfor i = 1, 100 do notifier(big) { type = 'webhook', url = 'https://h.example/', headers = { x = big } } end\n",
        "local big = string.rep('x', 8 << 20)\nfor i = 1, 100 do maintenance { name = big, sites = { big, big, big } } end\n",
        "local t = {} for i = 1, 200000 do t[i] = i end\nfor i = 1, 100 do site { name = 'a' .. i, url = 'https://a.example/', hooks = t } end\n",
        "local n = 0\nwhile true do n = n + 1 notifier('n' .. n) end\n",
    ];
    for text in texts {
        let (result, growth) = load_measuring_rss(text);
        let Err(report) = result else {
            panic!("accepted: {text}");
        };
        let report = report.to_string();
        assert!(
            report.lines().any(|l| l.starts_with("sites.lua:2: ")
                && (l.contains("the declarations take more than 64 MiB")
                    || l.contains("evaluation exceeded its memory limit"))),
            "{text}\n{report}"
        );
        assert!(
            report.lines().all(|l| l.len() < 2048),
            "{text}: a line of {} bytes",
            report.lines().map(str::len).max().unwrap_or(0)
        );
        assert!(growth < 768, "{text}: RSS grew by {growth} MiB");
    }
}

#[test]
fn errors_are_capped_and_their_quotes_cut() {
    // Millions of env() errors: the evaluation stops at 1000.
    let report = load_all_within(
        &["\nfor i = 1, 10000000 do env('SURELY_UNSET_' .. i) end\n".to_string()],
        LOAD_BOUND,
    )
    .pop()
    .unwrap()
    .unwrap_err();
    let text = report.to_string();
    assert!(report.len() <= 1002, "{} errors", report.len());
    assert!(
        text.contains("more than 1000 errors; evaluation stopped"),
        "{}",
        &text[..500]
    );
    // A huge value quoted in a message is cut, not copied whole into each line.
    let huge = "local big = string.rep('n', 1 << 20)\n";
    let texts = [
        format!("{huge}site {{ name = big, url = 'https://a.example/' }}\n"),
        format!("{huge}site {{ name = 'a', url = 'https://' .. big }}\n"),
        format!("{huge}site {{ name = 'a', url = 'https://a.example/', [big] = 1 }}\n"),
        format!("{huge}site {{ name = 'a', url = 'https://a.example/', interval = big }}\n"),
        format!("{huge}site {{ name = 'a', url = 'https://a.example/', expect = {{ body = '(' .. big }} }}\n"),
        format!("{huge}site {{ name = 'a', url = 'https://a.example/', tls = {{ ca = big }} }}\n"),
        format!("{huge}for i = 1, 2000 do site {{ name = big .. i, url = 'x' }} end\n"),
        format!("{huge}error(big)\n"),
        format!("{huge}local _ = env(big)\n"),
        format!("{huge}local _ = script(big)\n"),
    ];
    for text in texts {
        let Err(report) = load_all_within(std::slice::from_ref(&text), LOAD_BOUND)
            .pop()
            .unwrap()
        else {
            panic!("accepted: {text}");
        };
        assert!(report.len() <= 1001, "{} errors", report.len());
        for line in report.to_string().lines() {
            assert!(
                line.len() < 2048,
                "{} bytes: {}...",
                line.len(),
                &line[..200]
            );
        }
    }
}
