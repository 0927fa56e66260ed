//! Audit log v1 vectors from an independent implementation (tests/fixtures/vectors/audit-v1.json,
//! docs/audit-v1.md): leaf data and hashes, Merkle roots, chain links, a checkpoint reproduced
//! byte for byte from its session seed, a signer statement verified under the operator's key,
//! and values a reader must refuse.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use byok::audit::codec::b64;
use byok::audit::merkle::{ChainStep, LeafRecord, leaf_data, leaf_hash, link, root};
use byok::audit::records::{Session, parse_checkpoint, verify_session_signed, verify_signer};
use common::json;

fn unb64(v: &serde_json::Value) -> Option<Vec<u8>> {
    v.as_str().map(|s| URL_SAFE_NO_PAD.decode(s).unwrap())
}

fn h32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn leaf_hashes(v: &serde_json::Value) -> Vec<[u8; 32]> {
    v["leaves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| h32(c["leaf_hash_hex"].as_str().unwrap()))
        .collect()
}

#[test]
fn leaves_hash_as_the_independent_implementation() {
    let v = json("vectors/audit-v1.json");
    for c in v["leaves"].as_array().unwrap() {
        let headers: Vec<(String, Option<Vec<u8>>)> = c["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h[0].as_str().unwrap().to_owned(), unb64(&h[1])))
            .collect();
        let hs: Vec<(&str, Option<&[u8]>)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_deref()))
            .collect();
        let (key, value) = (unb64(&c["key_b64"]), unb64(&c["value_b64"]));
        let r = LeafRecord {
            topic: c["topic"].as_str().unwrap(),
            partition: c["partition"].as_i64().unwrap() as i32,
            offset: c["offset"].as_i64().unwrap(),
            src: c["src"].as_str().unwrap().as_bytes(),
            key: key.as_deref(),
            value: value.as_deref(),
            headers: &hs,
        };
        assert_eq!(
            hex::encode(leaf_data(&r)),
            c["leaf_data_hex"].as_str().unwrap(),
            "{c}"
        );
        assert_eq!(
            hex::encode(leaf_hash(&r)),
            c["leaf_hash_hex"].as_str().unwrap()
        );
    }
}

#[test]
fn roots_of_zero_to_five_leaves() {
    let v = json("vectors/audit-v1.json");
    let hashes = leaf_hashes(&v);
    for c in v["roots"].as_array().unwrap() {
        let n = c["leaves"].as_u64().unwrap() as usize;
        assert_eq!(
            hex::encode(root(&hashes[..n])),
            c["root_hex"].as_str().unwrap(),
            "{n} leaves"
        );
    }
}

#[test]
fn chain_links() {
    let v = json("vectors/audit-v1.json");
    for c in v["chain"].as_array().unwrap() {
        let (prev, r) = (
            h32(c["prev_hex"].as_str().unwrap()),
            h32(c["root_hex"].as_str().unwrap()),
        );
        let l = link(&ChainStep {
            prev: &prev,
            topic: c["topic"].as_str().unwrap(),
            partition: c["partition"].as_i64().unwrap() as i32,
            from: c["from"].as_i64().unwrap(),
            to: c["to"].as_i64().unwrap(),
            n: c["n"].as_u64().unwrap(),
            root: &r,
        });
        assert_eq!(hex::encode(l), c["link_hex"].as_str().unwrap());
    }
}

#[test]
fn the_checkpoint_is_reproduced_byte_for_byte_and_reads_back() {
    let v = json("vectors/audit-v1.json");
    let c = &v["checkpoint"];
    let seed = h32(c["session_seed_hex"].as_str().unwrap());
    let unsigned = c["unsigned"].as_str().unwrap();
    let parsed = parse_checkpoint(unsigned).unwrap();
    let mut session = Session::from_seed(&parsed.writer, &seed).unwrap();
    assert_eq!(
        b64(&session.public_key()),
        c["session_public_b64"].as_str().unwrap()
    );
    // our serialisation of the parsed checkpoint is the same text
    assert_eq!(byok::audit::records::to_json(&parsed), unsigned);
    // its root is the root of the five leaves, its link the chain vector's
    assert_eq!(parsed.root, b64(&root(&leaf_hashes(&v))));
    assert_eq!(
        parsed.ranges[0].link,
        b64(&h32(v["chain"][0]["link_hex"].as_str().unwrap()))
    );
    let wprev: [u8; 32] = URL_SAFE_NO_PAD
        .decode(&parsed.wprev)
        .unwrap()
        .try_into()
        .unwrap();
    session.resume_at(parsed.seq, wprev);
    let value = session.sign(unsigned);
    assert_eq!(
        String::from_utf8(value.clone()).unwrap(),
        c["value"].as_str().unwrap()
    );
    assert_eq!(
        verify_session_signed(&value, &session.public_key()).unwrap(),
        unsigned
    );
}

#[test]
fn the_signer_statement_verifies_under_the_operators_key_and_not_altered() {
    let v = json("vectors/audit-v1.json");
    let s = &v["signer"];
    let n = unb64(&s["operator_n_b64"]).unwrap();
    let e = unb64(&s["operator_e_b64"]).unwrap();
    let value = s["value"].as_str().unwrap();
    let st = verify_signer(value.as_bytes(), &n, &e).unwrap();
    assert_eq!(st.role, "worker");
    assert_eq!(
        st.session_key,
        v["checkpoint"]["session_public_b64"].as_str().unwrap()
    );
    let altered = value.replace("prod-eu", "prod-us");
    assert!(verify_signer(altered.as_bytes(), &n, &e).is_err());
}

#[test]
fn values_a_reader_must_refuse_are_refused() {
    let v = json("vectors/audit-v1.json");
    let public = URL_SAFE_NO_PAD
        .decode(v["checkpoint"]["session_public_b64"].as_str().unwrap())
        .unwrap();
    for r in v["reject"].as_array().unwrap() {
        let value = r["value"].as_str().unwrap();
        assert!(
            verify_session_signed(value.as_bytes(), &public).is_err(),
            "accepted: {}",
            r["why"]
        );
    }
}
