//! Properties over generated inputs (proptest): the wire decoder takes any bytes without
//! panicking, every result the producer can emit comes back from the wire as it went out and is
//! stored by PostgreSQL as a row (never a dead letter; this one needs the local stack), and the
//! configuration loader answers any value in any key with a `file:line` error or a
//! configuration, never a panic.

mod stack;

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, TimeZone, Utc};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use sitewatch::publish::encode_within;
use sitewatch::result::{
    AssertionResult, CheckResult, Failure, FailureKind, Level, Outcome, Phase, Timings,
    SCHEMA_VERSION,
};

/// `cases` generated inputs per property; no regression files (proptest looks for them next to
/// a lib.rs, which an integration test does not have): a failure prints its minimal input.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The wire

fn time() -> impl Strategy<Value = DateTime<Utc>> {
    // 2000-01-01 to 2100-01-01, to the microsecond.
    (946_684_800_000_000i64..4_102_444_800_000_000).prop_map(|us| Utc.timestamp_micros(us).unwrap())
}

fn ms() -> impl Strategy<Value = Option<f64>> {
    option::of(0.0f64..1e7)
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Up),
        Just(Outcome::Degraded),
        Just(Outcome::Down)
    ]
}

fn failure() -> impl Strategy<Value = Failure> {
    let kind = prop_oneof![
        Just(FailureKind::Dns),
        Just(FailureKind::Connect),
        Just(FailureKind::Tls),
        Just(FailureKind::Timeout),
        Just(FailureKind::Http),
        Just(FailureKind::RedirectLoop),
        Just(FailureKind::Assertion),
    ];
    let phase = option::of(prop_oneof![
        Just(Phase::Dns),
        Just(Phase::Connect),
        Just(Phase::Tls),
        Just(Phase::Ttfb),
        Just(Phase::Transfer),
    ]);
    (kind, phase, any::<String>()).prop_map(|(kind, phase, message)| Failure {
        kind,
        phase,
        message,
    })
}

fn assertion() -> impl Strategy<Value = AssertionResult> {
    (
        any::<String>(),
        any::<bool>(),
        prop_oneof![Just(Level::Fail), Just(Level::Warn)],
        any::<String>(),
        any::<String>(),
        option::of(any::<String>()),
    )
        .prop_map(
            |(name, ok, level, expected, actual, reason)| AssertionResult {
                name,
                ok,
                level,
                expected,
                actual,
                reason,
            },
        )
}

/// Any result the producer could emit: every text arbitrary Unicode (NUL included), every
/// number finite.
fn result() -> impl Strategy<Value = CheckResult> {
    let texts = (
        any::<String>(),
        any::<String>(),
        option::of(any::<String>()),
        any::<String>(),
        any::<String>(),
        option::of(any::<String>()),
    );
    let numbers = (
        option::of(100u16..600),
        (ms(), ms(), ms(), ms(), ms(), 0.0f64..1e7),
        any::<u64>(),
        any::<bool>(),
        any::<bool>(),
        1u32..10,
    );
    let parts = (
        time(),
        0i64..10_000_000,
        outcome(),
        option::of(failure()),
        vec(assertion(), 0..4),
        btree_map(any::<String>(), -1e12f64..1e12, 0..4),
        option::of(time()),
    );
    (texts, numbers, parts).prop_map(
        |(
            (site, url, final_url, config_version, probe_host, maintenance),
            (
                status,
                (dns, connect, tls, ttfb, transfer, total),
                body_bytes,
                truncated,
                insecure,
                attempts,
            ),
            (scheduled_at, lag_us, outcome, failure, assertions, metrics, cert_not_after),
        )| CheckResult {
            schema: SCHEMA_VERSION,
            id: uuid::Uuid::now_v7(),
            site,
            url,
            final_url,
            scheduled_at,
            started_at: scheduled_at + chrono::Duration::microseconds(lag_us),
            outcome,
            status,
            timings: Timings {
                dns_ms: dns,
                connect_ms: connect,
                tls_ms: tls,
                ttfb_ms: ttfb,
                transfer_ms: transfer,
                total_ms: total,
            },
            failure,
            assertions,
            metrics: metrics.into_iter().collect::<BTreeMap<_, _>>(),
            body_bytes,
            body_truncated: truncated,
            cert_not_after,
            tls_insecure: insecure,
            config_version,
            attempts,
            probe_host,
            maintenance,
        },
    )
}

/// A valid payload with some bytes changed and its end cut at a random place.
fn mangled() -> impl Strategy<Value = Vec<u8>> {
    (
        result(),
        vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(result, changes, cut)| {
            let mut bytes = result.encode().unwrap();
            for (at, byte) in changes {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            let keep = cut.index(bytes.len() + 1);
            bytes.truncate(keep);
            bytes
        })
}

proptest! {
    #![proptest_config(config(256))]

    /// Whatever arrives on the topic, the decoder answers with a result or a reason.
    #[test]
    fn the_decoder_takes_any_bytes(
        payload in option::of(vec(any::<u8>(), 0..512)),
        header in option::of(vec(any::<u8>(), 0..8)),
    ) {
        let _ = CheckResult::decode(payload.as_deref(), header.as_deref());
    }

    #[test]
    fn the_decoder_takes_any_damaged_payload(bytes in mangled()) {
        let _ = CheckResult::decode(Some(&bytes), Some(b"1"));
    }

    /// What the producer publishes decodes, with the schema header it is sent with: a result
    /// that fits comes back exactly; a larger one is cut to the limit, or to its smallest form
    /// (identity, outcome, failure kind, timings) when even that is larger, and keeps those.
    #[test]
    fn every_result_round_trips(result in result(), max in prop_oneof![Just(1_000_000usize), 300usize..4096]) {
        let payload = encode_within(&result, max).unwrap();
        let header = SCHEMA_VERSION.to_string();
        let back = CheckResult::decode(Some(&payload), Some(header.as_bytes()))
            .map_err(TestCaseError::fail)?;
        prop_assert!(
            payload.len() <= max || (back.assertions.is_empty() && back.metrics.is_empty()),
            "{} bytes over {max}, not in its smallest form", payload.len()
        );
        prop_assert_eq!(back.id, result.id);
        prop_assert_eq!(back.outcome, result.outcome);
        prop_assert_eq!(back.scheduled_at, result.scheduled_at);
        prop_assert_eq!(back.started_at, result.started_at);
        prop_assert_eq!(&back.timings, &result.timings);
        prop_assert_eq!(back.failure.as_ref().map(|f| f.kind), result.failure.as_ref().map(|f| f.kind));
        if result.encode().unwrap().len() <= max {
            prop_assert_eq!(back, result);
        }
    }
}

/// `result` as the producer can emit it: texts from sites.lua (site, URL, maintenance window,
/// probe host, version) never hold a NUL, the validator refuses them; texts a server or a hook
/// chose have theirs replaced at the source; site names are at most 128 bytes; a body size fits
/// in a bigint.
fn emittable(mut r: CheckResult) -> CheckResult {
    use sitewatch::result::replace_nul;
    while r.site.len() > 128 {
        r.site.pop();
    }
    for text in [
        &mut r.site,
        &mut r.url,
        &mut r.config_version,
        &mut r.probe_host,
    ]
    .into_iter()
    .chain(r.final_url.as_mut())
    .chain(r.maintenance.as_mut())
    .chain(r.failure.as_mut().map(|f| &mut f.message))
    .chain(r.assertions.iter_mut().flat_map(|a| {
        [&mut a.name, &mut a.expected, &mut a.actual]
            .into_iter()
            .chain(a.reason.as_mut())
    })) {
        replace_nul(text);
    }
    r.metrics = std::mem::take(&mut r.metrics)
        .into_iter()
        .map(|(mut name, value)| {
            replace_nul(&mut name);
            (name, value)
        })
        .collect();
    r.body_bytes %= 1 << 53;
    r
}

/// Every result the producer can emit, sent at any size limit, decodes into a row PostgreSQL
/// stores: batches of them commit with no dead letter, each id stored once.
#[test]
fn every_result_the_producer_can_emit_is_stored_as_a_row() {
    use proptest::test_runner::TestRunner;
    use sitewatch::store::{self, CheckRow, OffsetAdvance, PendingRow, WriteBatch, WriteOutcome};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _stack = stack::StackLock::shared();
    let (url, client) = runtime.block_on(async {
        let url = stack::fresh_database().await;
        let mut client = store::connect(&stack::database(&url)).await.unwrap();
        store::migrate(&mut client).await.unwrap();
        (url, client)
    });
    let batches = vec(
        (
            result().prop_map(emittable),
            prop_oneof![Just(1_000_000usize), 300usize..4096],
        ),
        1..40,
    );
    // Each case on a partition of its own, so its offsets start at 0.
    let partition = std::cell::Cell::new(0_i32);
    let client = tokio::sync::Mutex::new(client);
    let header = SCHEMA_VERSION.to_string();
    TestRunner::new(config(24))
        .run(&batches, |batch| {
            let mut rows = Vec::new();
            partition.set(partition.get() + 1);
            for (offset, (result, max)) in batch.into_iter().enumerate() {
                let payload = encode_within(&result, max).unwrap();
                let back = CheckResult::decode(Some(&payload), Some(header.as_bytes()))
                    .map_err(TestCaseError::fail)?;
                let row = CheckRow::from_result(back, partition.get(), offset as i64)
                    .map_err(|e| TestCaseError::fail(format!("not storable: {e}")))?;
                rows.push(PendingRow {
                    row,
                    key: Some(result.site.into_bytes()),
                    payload,
                });
            }
            let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.row.id).collect();
            let write = WriteBatch {
                rows,
                dead_letters: Vec::new(),
                offsets: vec![OffsetAdvance {
                    partition: partition.get(),
                    expected: None,
                    next: ids.len() as i64,
                }],
            };
            let (outcome, stored) = runtime.block_on(async {
                let mut client = client.lock().await;
                let outcome = store::write_batch(&mut client, "g", "t", &write).await;
                let stored: i64 = client
                    .query_one(
                        "SELECT count(*) FROM check_results WHERE id = ANY($1)",
                        &[&ids],
                    )
                    .await
                    .unwrap()
                    .get(0);
                (outcome, stored)
            });
            match outcome {
                Ok(WriteOutcome::Committed(stats)) => {
                    prop_assert_eq!(stats.dead_letters, 0, "a dead letter");
                    prop_assert_eq!(stats.rows_written, ids.len() as u64);
                }
                other => return Err(TestCaseError::fail(format!("{other:?}"))),
            }
            prop_assert_eq!(stored, ids.len() as i64);
            Ok(())
        })
        .unwrap();
    drop(client);
    runtime.block_on(stack::drop_database(&url));
}

// ---------------------------------------------------------------------------------------------
// The configuration loader

/// Every key the LuaLS definitions name, in any class: the loader meets each at the top level of
/// a site and inside its tables.
fn keys() -> Vec<String> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sitewatch.d.lua"),
    )
    .unwrap();
    let mut keys: Vec<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("---@field "))
        .filter_map(|field| field.split_whitespace().next())
        .map(|name| {
            let name = name.trim_end_matches('?');
            let name = name.strip_prefix("[\"").unwrap_or(name);
            name.strip_suffix("\"]").unwrap_or(name).to_owned()
        })
        .collect();
    keys.sort();
    keys.dedup();
    assert!(keys.len() > 30, "keys found: {keys:?}");
    keys
}

/// A Lua string literal of any bytes.
fn lua_string(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for byte in bytes {
        out.push_str(&format!("\\{byte:03}"));
    }
    out.push('"');
    out
}

/// Any Lua value as source text: numbers (huge, negative, fractional), strings of any bytes,
/// booleans, and lists and tables of those, nested.
fn lua_value(keys: Vec<String>) -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| format!("({n})")),
        any::<f64>().prop_map(|x| if x.is_finite() {
            format!("({x:e})")
        } else {
            "(1/0)".into()
        }),
        vec(any::<u8>(), 0..24).prop_map(|b| lua_string(&b)),
        prop_oneof![
            Just("\"30s\""),
            Just("\"2xx\""),
            Just("\"512KB\""),
            Just("\"$.a\""),
            Just("\"99.9\"")
        ]
        .prop_map(str::to_owned),
        any::<bool>().prop_map(|b| b.to_string()),
    ];
    let names = prop::sample::select(keys);
    leaf.prop_recursive(3, 24, 4, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|items| format!("{{ {} }}", items.join(", "))),
            vec((names.clone(), inner), 0..4).prop_map(|pairs| {
                let fields: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| format!("[\"{k}\"] = {v}"))
                    .collect();
                format!("{{ {} }}", fields.join(", "))
            }),
        ]
    })
}

fn site_with(keys: Vec<String>) -> impl Strategy<Value = String> {
    vec((prop::sample::select(keys.clone()), lua_value(keys)), 1..4).prop_map(|pairs| {
        let fields: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("[\"{k}\"] = {v}"))
            .collect();
        format!(
            "site {{ name = \"a\", url = \"https://a.example/\", {} }}",
            fields.join(", ")
        )
    })
}

proptest! {
    #![proptest_config(config(300))]

    /// Any value in any key: a configuration, or errors that each name `sites.lua:1`.
    #[test]
    fn any_value_in_any_key_is_loaded_or_refused_with_its_line(text in site_with(keys())) {
        match sitewatch::config::load_str(
            Path::new("sites.lua"),
            &text,
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts"),
        ) {
            Ok(_) => {}
            Err(errors) => {
                let printed = errors.to_string();
                for line in printed.lines().filter(|l| !l.trim().is_empty()) {
                    prop_assert!(line.starts_with("sites.lua:1: "), "{line}\nin {text}");
                }
            }
        }
    }
}
