//! Conformance: envelope v1 vectors made by an independent implementation of docs/envelope-v1.md, and
//! every Wycheproof AES-256-GCM case (96-bit IV, 128-bit tag) through both of our AEAD paths.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

mod common;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use byok::dek::{DataKey, DekId};
use byok::envelope::{self, reference};
use common::{case_key, hex_field, json};

#[test]
fn independent_envelope_vectors_open_and_seal_to_the_same_bytes() {
    let v = json("vectors/envelope-v1.json");
    let cases = v["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let key = case_key(case);
        let tenant = case["tenant"].as_str().unwrap();
        let record_key = hex_field(case, "record_key_hex");
        let plaintext = hex_field(case, "plaintext_hex").unwrap();
        let sealed = hex_field(case, "sealed_hex").unwrap();
        let nonce: [u8; 12] = hex_field(case, "nonce_hex").unwrap().try_into().unwrap();

        let header: [u8; 31] = sealed[..31].try_into().unwrap();
        assert_eq!(
            envelope::aad(&header, tenant, record_key.as_deref()),
            hex_field(case, "aad_hex").unwrap(),
            "{name}: AAD"
        );
        assert_eq!(
            envelope::dek_id(&sealed).unwrap(),
            key.id(),
            "{name}: dek id"
        );
        assert_eq!(
            envelope::open(&key, tenant, record_key.as_deref(), &sealed).unwrap(),
            plaintext,
            "{name}: open (ring)"
        );
        assert_eq!(
            reference::open(key.secret_bytes(), tenant, record_key.as_deref(), &sealed).unwrap(),
            plaintext,
            "{name}: open (aes-gcm)"
        );
        let mut out = Vec::new();
        envelope::seal_with_nonce_for_vectors(
            &key,
            nonce,
            0,
            tenant,
            record_key.as_deref(),
            &plaintext,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, sealed, "{name}: seal (ring)");
        let out = reference::seal(
            key.secret_bytes(),
            key.id(),
            nonce,
            0,
            tenant,
            record_key.as_deref(),
            &plaintext,
        );
        assert_eq!(out, sealed, "{name}: seal (aes-gcm)");
    }
}

#[test]
fn wycheproof_aes_256_gcm_through_both_implementations() {
    let w = json("vectors/wycheproof/aes_gcm_test.json");
    let mut checked = 0;
    let (mut valid, mut invalid) = (0, 0);
    for group in w["testGroups"].as_array().unwrap() {
        if group["keySize"] != 256 || group["ivSize"] != 96 || group["tagSize"] != 128 {
            continue;
        }
        for t in group["tests"].as_array().unwrap() {
            let id = t["tcId"].as_u64().unwrap();
            let key_bytes: [u8; 32] = hex_field(t, "key").unwrap().try_into().unwrap();
            let iv: [u8; 12] = hex_field(t, "iv").unwrap().try_into().unwrap();
            let aad = hex_field(t, "aad").unwrap();
            let msg = hex_field(t, "msg").unwrap();
            let ct_tag = [hex_field(t, "ct").unwrap(), hex_field(t, "tag").unwrap()].concat();
            let result = t["result"].as_str().unwrap();
            let key = DataKey::from_bytes_for_vectors(DekId::new_v7(), key_bytes);

            let ring_open = key.aead_open_for_vectors(iv, &aad, &ct_tag);
            let rc =
                aes_gcm::Aes256Gcm::new(aes_gcm::Key::<aes_gcm::Aes256Gcm>::from_slice(&key_bytes));
            let (ct, tag) = ct_tag.split_at(ct_tag.len() - 16);
            let mut buf = ct.to_vec();
            let rc_open = rc
                .decrypt_in_place_detached(
                    aes_gcm::Nonce::from_slice(&iv),
                    &aad,
                    &mut buf,
                    aes_gcm::Tag::from_slice(tag),
                )
                .map(|()| buf);
            match result {
                "valid" => {
                    assert_eq!(ring_open.as_deref(), Some(&msg[..]), "tcId {id}: ring open");
                    assert_eq!(
                        rc_open.as_deref().ok(),
                        Some(&msg[..]),
                        "tcId {id}: aes-gcm open"
                    );
                    assert_eq!(
                        key.aead_seal_for_vectors(iv, &aad, &msg),
                        ct_tag,
                        "tcId {id}: ring seal"
                    );
                    valid += 1;
                }
                "invalid" => {
                    assert!(
                        ring_open.is_none(),
                        "tcId {id}: ring accepted an invalid case"
                    );
                    assert!(
                        rc_open.is_err(),
                        "tcId {id}: aes-gcm accepted an invalid case"
                    );
                    invalid += 1;
                }
                other => panic!("tcId {id}: unexpected result {other}"),
            }
            checked += 1;
        }
    }
    // The file has 66 cases in this group (commit dac1dd47); all of them must have run.
    assert_eq!(checked, 66, "valid {valid}, invalid {invalid}");
    assert!(valid > 0 && invalid > 0);
}
