//! Fuzz-style property tests of every parser that reads bytes from Kafka or HTTP: each must
//! return (an answer or an error) on any input, never panic and never loop.
//!
//! Stable Rust has no `cargo fuzz` here, so these are proptest harnesses: arbitrary bytes, and
//! valid inputs with one byte changed. CI runs `BYOK_FUZZ_CASES` cases per target (default
//! 2 000; the emulator's HTTPS target a tenth of it, at least 50); docs/fuzzing.md gives the
//! longer run and what it found.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use byok::dek::{ActiveDek, DekLimits};
use byok::envelope::headers::{ArchiveHeaders, QuarantineHeaders};
use byok::envelope::{self, Compression, Header};
use byok::pipeline::scan::{NO_PROGRESS, json_tenant_id, tenant_of};
use byok::registry::RegistryEntry;
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

/// A valid sealed value, its DEK, tenant and record key.
fn sealed() -> (ActiveDek, Vec<u8>) {
    let dek = ActiveDek::generate(DekLimits::default()).unwrap();
    let mut out = Vec::new();
    let mut block = dek.reserve(1, 64).unwrap();
    envelope::seal_next(
        &mut block,
        "acme",
        Some(b"conv-1"),
        br#"{"tenant_id":"acme","body":"hello"}"#,
        Compression::off(),
        &mut out,
    )
    .unwrap();
    (dek, out)
}

/// The names a byok record's headers use, and a few near misses.
const HEADER_NAMES: [&str; 12] = [
    "byok.v",
    "byok.tenant",
    "byok.dek",
    "byok.src",
    "byok.reason",
    "byok.detail",
    "byok.kek",
    "byok.V",
    "byok.",
    "tenant-id",
    "",
    "byok.src ",
];

fn header_pairs() -> impl Strategy<Value = Vec<(usize, Option<Vec<u8>>)>> {
    prop::collection::vec(
        (
            0..HEADER_NAMES.len(),
            proptest::option::of(prop_oneof![
                prop::collection::vec(any::<u8>(), 0..80),
                "[0-9a-f-]{36}".prop_map(String::into_bytes),
                "[a-z._-]{1,30}/[0-9]{1,3}/[0-9]{1,9}".prop_map(String::into_bytes),
                Just(b"1".to_vec()),
            ]),
        ),
        0..10,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Envelope header (what `byok inspect` and every open read first): any bytes.
    #[test]
    fn envelope_header_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Header::parse(&bytes);
        let _ = byok::inspect::inspect(&bytes);
    }

    /// Opening: a valid value with bytes changed, cut or extended never opens and never panics.
    #[test]
    fn envelope_open_changed_value(
        at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in 0usize..80, extra in prop::collection::vec(any::<u8>(), 0..8)
    ) {
        let (dek, good) = sealed();
        prop_assert!(envelope::open(dek.key(), "acme", Some(b"conv-1"), &good).is_ok());
        let mut changed = good.clone();
        let i = at.index(changed.len());
        if changed[i] != byte {
            changed[i] = byte;
            prop_assert!(envelope::open(dek.key(), "acme", Some(b"conv-1"), &changed).is_err());
        }
        let short = &good[..good.len().saturating_sub(cut + 1)];
        prop_assert!(envelope::open(dek.key(), "acme", Some(b"conv-1"), short).is_err());
        let mut long = good.clone();
        long.extend_from_slice(&extra);
        if !extra.is_empty() {
            prop_assert!(envelope::open(dek.key(), "acme", Some(b"conv-1"), &long).is_err());
        }
    }

    /// Registry records (`byok.deks`, writable by anyone with Kafka access): any key and value.
    #[test]
    fn registry_record_any_bytes(
        key in proptest::option::of(prop::collection::vec(any::<u8>(), 0..60)),
        value in proptest::option::of(prop::collection::vec(any::<u8>(), 0..300)),
    ) {
        let _ = RegistryEntry::decode(key.as_deref(), value.as_deref());
    }

    /// `byok.keks` records: any bytes, and JSON-shaped ones.
    #[test]
    fn keks_record_any_bytes(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            json().prop_map(|v| v.to_string().into_bytes()),
        ]
    ) {
        let _ = byok::kms::local::KekRecord::from_json(&bytes);
    }

    /// Archive and quarantine header codecs: any mix of byok.* names and values, repeated or
    /// missing.
    #[test]
    fn record_headers_any_pairs(pairs in header_pairs()) {
        let pairs: Vec<(&str, Option<&[u8]>)> = pairs
            .iter()
            .map(|(n, v)| (HEADER_NAMES[*n], v.as_deref()))
            .collect();
        let _ = ArchiveHeaders::from_pairs(pairs.iter().copied());
        let _ = QuarantineHeaders::from_pairs(pairs.iter().copied());
        let _ = tenant_of(pairs.iter().copied(), None);
    }

    /// Audit records (`byok.audit`, writable by anyone with Kafka access): any bytes, JSON
    /// shapes, and the vector checkpoint with one byte changed never panic the readers; a changed
    /// checkpoint never verifies under its session key.
    #[test]
    fn audit_records_any_bytes(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            json().prop_map(|v| v.to_string().into_bytes()),
            json().prop_map(|v| format!("{},\"sig\":\"AAAA\"}}", v.to_string().trim_end_matches('}')).into_bytes()),
        ],
        at in any::<prop::sample::Index>(),
        to in any::<u8>(),
    ) {
        use byok::audit::records::{parse_checkpoint, verify_session_signed, verify_signer};
        let _ = byok::audit::codec::split_signed(&bytes, "sig");
        let _ = byok::audit::codec::check_json(&bytes);
        let _ = parse_checkpoint(&String::from_utf8_lossy(&bytes));
        let _ = verify_signer(&bytes, &[0xc5; 384], &[1, 0, 1]);
        let v = common::json("vectors/audit-v1.json");
        let good = v["checkpoint"]["value"].as_str().unwrap().as_bytes().to_vec();
        let public = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            v["checkpoint"]["session_public_b64"].as_str().unwrap(),
        )
        .unwrap();
        let _ = verify_session_signed(&bytes, &public);
        let mut changed = good.clone();
        let i = at.index(changed.len());
        if changed[i] != to {
            changed[i] = to;
            prop_assert!(verify_session_signed(&changed, &public).is_err());
        }
    }

    /// Registry and key records as readers take them (`byok.deks`, `byok.keks` and their copies
    /// in `byok.audit`, writable by anyone with Kafka access): any key and value bytes, JSON
    /// shapes, and a genuinely signed record with one byte changed never panic the reader, and
    /// the changed record is never used; the genuine one still is.
    #[test]
    fn registry_records_any_bytes(
        key in prop::collection::vec(any::<u8>(), 0..60),
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            json().prop_map(|v| v.to_string().into_bytes()),
            json().prop_map(|v| format!("{},\"t\":\"dek\",\"writer\":\"w\",\"prev\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\",\"sig\":\"AAAA\"}}", v.to_string().trim_end_matches('}')).into_bytes()),
        ],
        copy in any::<bool>(),
        at in any::<prop::sample::Index>(),
        to in any::<u8>(),
    ) {
        use byok::audit::records::{RecordKind, Session};
        use byok::trust::{Place, Rules, Signers, Trusted};
        let session = Session::from_seed("w", &[5; 32]).unwrap();
        let mut signers = Signers::new(Default::default(), "c");
        let now = time::OffsetDateTime::now_utc();
        signers.trust_session_for_tests("w", &session.public_key(), now - time::Duration::days(1), now + time::Duration::days(1));
        let place = |offset| Place { topic: "byok.deks".into(), partition: 0, offset };
        let rules = Rules { signers: &signers, unsigned_ok: &|_: &Place| false, check: &|_: &byok::registry::DekRecord| Ok(()) };
        let mut t: Trusted<byok::registry::DekRecord> = Trusted::default();
        let _ = t.apply(&rules, place(0), Some(&key), Some(&bytes), copy);
        let _ = t.apply(&rules, place(1), Some(&key), None, copy);
        let mut k: Trusted<byok::kms::local::KekRecord> = Trusted::default();
        let krules = Rules { signers: &signers, unsigned_ok: &|_: &Place| true, check: &|_: &byok::kms::local::KekRecord| Ok(()) };
        let _ = k.apply(&krules, place(0), Some(&key), Some(&bytes), copy);
        t.finish();
        k.finish();
        // a genuine record with one byte changed is never used
        let dek = byok::dek::DekId::new_v7();
        let record = byok::registry::DekRecord {
            dek,
            tenant: "acme".into(),
            kek: byok::kms::KekId::parse("https://acme.vault.azure.net/keys/k/0123456789abcdef0123456789abcdef").unwrap(),
            wrapped: vec![1; 64],
            created: now,
            worker: "w".into(),
            rewrapped: None,
            wrapped_locally: false,
        };
        let good = session.record_signer().sign(&record.to_json(), RecordKind::Dek, &[0; 32]);
        let mut changed = good.clone();
        let i = at.index(changed.len());
        let id = dek.to_string();
        let mut fresh: Trusted<byok::registry::DekRecord> = Trusted::default();
        if changed[i] != to {
            changed[i] = to;
            let _ = fresh.apply(&rules, place(2), Some(id.as_bytes()), Some(&changed), false);
            prop_assert!(fresh.get(&id).is_none_or(|c| c.value == good));
        }
        prop_assert_eq!(fresh.apply(&rules, place(3), Some(id.as_bytes()), Some(&good), false), None);
        prop_assert_eq!(&fresh.get(&id).unwrap().value, &good);
    }

    /// `byok inspect`'s hex input: any text.
    #[test]
    fn inspect_hex_any_text(text in ".{0,120}") {
        let _ = byok::inspect::decode_hex(&text);
    }
}

/// The emulator's request parsing over real HTTPS: arbitrary methods, paths, query strings,
/// headers and bodies on the vault, Entra and admin surfaces get an answer (never a 5xx and
/// never a dropped connection), and the emulator still serves a well-formed request after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_requests_any_shape() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let emu = common::emu::Emu::start().await;
    let base = emu.running.authority();
    let vault = "https://acme-vault.vault.azure.net";
    let port = emu.port();
    let strategy = (
        prop::sample::select(vec!["GET", "POST", "PUT", "PATCH", "DELETE"]),
        prop::sample::select(vec![
            format!("{vault}:{port}/keys/byok-key/"),
            format!("{vault}:{port}/keys/byok-key//encrypt"),
            format!("{vault}:{port}/keys/byok-key/78deebed173b48e48f55abf87ed4cf71/decrypt"),
            format!("{vault}:{port}/keys/"),
            format!("{vault}:{port}/keys/%00/x/y/z"),
            format!("{base}/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token"),
            format!("{base}/admin/vaults/acme-vault/keys/byok-key"),
            format!("{base}/admin/faults"),
            format!("{base}/"),
        ]),
        "[a-z=&%0-9.-]{0,40}",
        prop::collection::vec(any::<u8>(), 0..400),
        prop::sample::select(vec![
            None,
            Some("Bearer x"),
            Some("Bearer "),
            Some("Basic Zm9vOmJhcg=="),
        ]),
        prop::sample::select(vec![
            "application/json",
            "application/x-www-form-urlencoded",
            "text/plain",
        ]),
    );
    // a real token for globex's vault, so that half the bodies reach the operations' parsing
    let token: serde_json::Value = emu
        .http
        .post(format!(
            "{base}/{}/oauth2/v2.0/token",
            common::emu::GLOBEX_TENANT
        ))
        .form(&[
            ("client_id", common::emu::GLOBEX_APP),
            ("client_secret", common::emu::GLOBEX_SECRET),
            ("grant_type", "client_credentials"),
            ("scope", &format!("https://vault.azure.net:{port}/.default")),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let globex =
        format!("https://globex-kv.privatelink.vaultcore.azure.net:{port}/keys/archive-kek");
    let bodies = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..400),
        json().prop_map(|v| v.to_string().into_bytes()),
        (
            prop::sample::select(vec!["RSA-OAEP-256", "RSA-OAEP", "RSA1_5", "", "PS256"]),
            "[A-Za-z0-9_-]{0,700}"
        )
            .prop_map(
                |(alg, value)| serde_json::json!({"alg": alg, "value": value})
                    .to_string()
                    .into_bytes()
            ),
    ];
    let authed = (
        prop::sample::select(vec!["POST", "GET", "PATCH"]),
        prop::sample::select(vec![
            format!("{globex}//encrypt"),
            format!("{globex}//decrypt"),
            format!("{globex}/"),
            format!("{globex}//sign"),
            format!("{globex}/nope/decrypt"),
        ]),
        bodies,
    );
    let mut runner = TestRunner::default();
    let n = (cases() / 10).max(50);
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..n {
        let (method, url, body, auth, ctype) = if i % 2 == 0 {
            let (method, url, query, body, auth, ctype) =
                strategy.new_tree(&mut runner).unwrap().current();
            (
                method,
                format!("{url}?api-version=2025-07-01&{query}"),
                body,
                auth.map(str::to_owned),
                ctype,
            )
        } else {
            let (method, url, body) = authed.new_tree(&mut runner).unwrap().current();
            (
                method,
                format!("{url}?api-version=2025-07-01"),
                body,
                Some(bearer.clone()),
                "application/json",
            )
        };
        let mut req = emu
            .http
            .request(method.parse().unwrap(), &url)
            .header("content-type", ctype)
            .body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: no answer: {e}"));
        let status = r.status().as_u16();
        assert!(status < 500, "{method} {url}: {status}");
        *statuses.entry(status).or_insert(0u32) += 1;
    }
    eprintln!("emulator: {n} arbitrary requests, statuses {statuses:?}");
    // still serving: the 401 challenge of a well-formed first request
    let r = emu
        .http
        .get(format!(
            "{vault}:{port}/keys/byok-key/?api-version=2025-07-01"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}
