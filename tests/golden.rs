//! Golden fixtures: sealed values committed under tests/fixtures/golden/ must open byte for byte
//! forever, and sealing the same input with the same nonce must give the same bytes. If one of
//! these fails, the wire format changed: that needs a new envelope version, not a new fixture.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

mod common;

use byok::envelope::{self, FLAG_ZSTD, reference};
use common::{case_key, hex_field, json};

#[test]
fn committed_fixtures_open_and_reseal_byte_for_byte() {
    let fixtures = json("golden/golden.json");
    let cases = fixtures["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let key = case_key(case);
        let tenant = case["tenant"].as_str().unwrap();
        let record_key = hex_field(case, "record_key_hex");
        let plaintext = hex_field(case, "plaintext_hex").unwrap();
        let sealed = hex_field(case, "sealed_hex").unwrap();
        let nonce: [u8; 12] = hex_field(case, "nonce_hex").unwrap().try_into().unwrap();
        let flags = case["flags"].as_u64().unwrap() as u8;

        let opened = envelope::open(&key, tenant, record_key.as_deref(), &sealed).unwrap();
        assert_eq!(opened, plaintext, "{name}: ring path");
        let opened =
            reference::open(key.secret_bytes(), tenant, record_key.as_deref(), &sealed).unwrap();
        assert_eq!(opened, plaintext, "{name}: aes-gcm path");

        // Re-seal the stored body (the zstd frame for compressed cases) with the stored nonce.
        let body = if flags & FLAG_ZSTD != 0 {
            let inspected = byok::inspect::inspect(&sealed).unwrap();
            assert!(inspected.compressed);
            // the frame is what was encrypted: recover it with the raw AEAD
            let aad = envelope::aad(
                sealed[..31].try_into().unwrap(),
                tenant,
                record_key.as_deref(),
            );
            key.aead_open_for_vectors(nonce, &aad, &sealed[31..])
                .unwrap()
        } else {
            plaintext.clone()
        };
        let mut out = Vec::new();
        envelope::seal_with_nonce_for_vectors(
            &key,
            nonce,
            flags,
            tenant,
            record_key.as_deref(),
            &body,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, sealed, "{name}: re-sealing changed the bytes");
    }
}

#[test]
fn the_raw_fixture_file_matches_its_json_case() {
    let fixtures = json("golden/golden.json");
    let chat = &fixtures["cases"][0];
    let raw = std::fs::read(common::fixture("golden/chat.sealed")).unwrap();
    assert_eq!(raw, hex_field(chat, "sealed_hex").unwrap());
}

/// Writes the fixtures. Run once, when they were first made; never again for existing cases:
/// `cargo test --test golden -- --ignored write_golden_fixtures`.
#[test]
#[ignore = "writes the committed fixtures; only for adding new cases"]
fn write_golden_fixtures() {
    use byok::dek::{DataKey, DekId};
    let chat = br#"{"tenant_id":"acme","message_id":"m-1001","channel":"whatsapp","conversation":"conv-42","sender":"+44 20 7946 0000","body":"Please confirm the trade at 101.25","sent_at":"2026-11-29T16:59:58Z"}"#.to_vec();
    let mut long = Vec::new();
    for i in 0..40 {
        long.extend_from_slice(format!(r#"{{"seq":{i},"channel":"teams","body":"quarterly numbers attached, see thread {i}"}}"#).as_bytes());
        long.push(b'\n');
    }
    let cases: Vec<(
        &str,
        [u8; 32],
        &str,
        [u8; 12],
        &str,
        Option<Vec<u8>>,
        Vec<u8>,
        bool,
    )> = vec![
        (
            "chat message with key",
            core::array::from_fn(|i| i as u8 * 7),
            "0193a1c2-7a4e-7c3b-9f10-2b8e5d6a4c21",
            hex::decode("5eed0001000000000000002a")
                .unwrap()
                .try_into()
                .unwrap(),
            "acme",
            Some(b"conv-42".to_vec()),
            chat,
            false,
        ),
        (
            "null key, unicode tenant, empty plaintext",
            [0xa5; 32],
            "0193a1c2-7a4e-7c3b-9f10-2b8e5d6a4c22",
            [0; 12],
            "t\u{e9}nant-\u{4e2d}",
            None,
            Vec::new(),
            false,
        ),
        (
            "compressed batch export",
            core::array::from_fn(|i| 255 - i as u8),
            "0193a1c2-7a4e-7c3b-9f10-2b8e5d6a4c23",
            hex::decode("ffffffffffffffffffffffff")
                .unwrap()
                .try_into()
                .unwrap(),
            "globex",
            Some(b"export-7".to_vec()),
            long,
            true,
        ),
        (
            "long record key (heap AAD)",
            [0x11; 32],
            "0193a1c2-7a4e-7c3b-9f10-2b8e5d6a4c24",
            hex::decode("0102030400000000000f4240")
                .unwrap()
                .try_into()
                .unwrap(),
            "initech",
            Some(vec![0x42; 300]),
            b"binary \x00\x01\x02 payload".to_vec(),
            false,
        ),
    ];
    let mut out_cases = Vec::new();
    for (name, dek, id, nonce, tenant, rkey, plaintext, compress) in cases {
        let key = DataKey::from_bytes_for_vectors(DekId::parse(id).unwrap(), dek);
        let (body, flags) = if compress {
            (zstd::bulk::compress(&plaintext, 3).unwrap(), FLAG_ZSTD)
        } else {
            (plaintext.clone(), 0)
        };
        let mut sealed = Vec::new();
        envelope::seal_with_nonce_for_vectors(
            &key,
            nonce,
            flags,
            tenant,
            rkey.as_deref(),
            &body,
            &mut sealed,
        )
        .unwrap();
        out_cases.push(serde_json::json!({
            "name": name, "dek_hex": hex::encode(dek), "dek_id": id, "nonce_hex": hex::encode(nonce),
            "tenant": tenant, "record_key_hex": rkey.map(hex::encode), "flags": flags,
            "plaintext_hex": hex::encode(&plaintext), "sealed_hex": hex::encode(&sealed),
        }));
    }
    let doc = serde_json::json!({
        "description": "Golden envelope v1 values sealed by byok-pipeline. They must open byte for byte forever; flags bit 0 means the encrypted body is a zstd frame of the plaintext.",
        "cases": out_cases,
    });
    std::fs::write(
        common::fixture("golden/golden.json"),
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();
    std::fs::write(
        common::fixture("golden/chat.sealed"),
        hex::decode(doc["cases"][0]["sealed_hex"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
}
