//! Fuzz-style property tests of every parser that reads bytes from Kafka or HTTP: each must
//! return (an answer or an error) on any input, never panic and never loop.
//!
//! Stable Rust has no `cargo fuzz` here, so these are proptest harnesses: arbitrary bytes, and
//! valid inputs with one byte changed. CI runs `BYOK_FUZZ_CASES` cases per target (default
//! 2 000); docs/security.md gives the longer run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use byok::pipeline::scan::{NO_PROGRESS, json_tenant_id, tenant_of};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("BYOK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// An arbitrary JSON value, a few levels deep.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{0,10}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A captured message: an object with fields around an optional `tenant_id`.
fn message() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(("[a-z_]{0,10}", json()), 0..5),
        proptest::option::of("[a-z0-9-]{1,20}"),
        prop::collection::vec(("[a-z_]{0,10}", json()), 0..3),
    )
        .prop_map(|(before, tenant, after)| {
            let mut parts: Vec<String> = before
                .iter()
                .map(|(k, v)| format!("{}:{}", serde_json::json!(k), v))
                .collect();
            if let Some(t) = tenant {
                parts.push(format!("\"tenant_id\":{}", serde_json::json!(t)));
            }
            parts.extend(
                after
                    .iter()
                    .map(|(k, v)| format!("{}:{}", serde_json::json!(k), v)),
            );
            format!("{{{}}}", parts.join(",")).into_bytes()
        })
}

/// Runs the scanner and checks it finished without spending its fuel.
fn scan(bytes: &[u8]) -> Result<Option<String>, &'static str> {
    let r = json_tenant_id(bytes);
    assert_ne!(
        r,
        Err(NO_PROGRESS),
        "fuel ran out on {:?}",
        String::from_utf8_lossy(bytes)
    );
    r
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Tenant scan, any bytes: returns, and agrees with serde_json where serde_json finds an
    /// object with a string `tenant_id` and nothing malformed before it.
    #[test]
    fn tenant_scan_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = scan(&bytes);
        let _ = tenant_of([], Some(&bytes));
    }

    /// Tenant scan, JSON-shaped bytes (brackets, quotes, commas: where the scanner's loops are).
    #[test]
    fn tenant_scan_json_alphabet(bytes in prop::collection::vec(
        prop::sample::select(b"{}[]\":, ta1-\\ne".to_vec()), 0..64)) {
        let _ = scan(&bytes);
    }

    /// Valid messages are read right; the same with one byte changed still returns.
    #[test]
    fn tenant_scan_valid_then_one_byte_changed(
        msg in message(), at in any::<prop::sample::Index>(), byte in any::<u8>()
    ) {
        let parsed: serde_json::Value = serde_json::from_slice(&msg).unwrap();
        let want = parsed.get("tenant_id").and_then(|t| t.as_str()).map(str::to_owned);
        // duplicate keys: serde_json keeps the last, the scanner the first; both are fine as
        // long as a single tenant_id is read right
        prop_assert_eq!(scan(&msg), Ok(want));
        let mut changed = msg.clone();
        let i = at.index(changed.len());
        changed[i] = byte;
        let _ = scan(&changed);
    }
}
