//! Helpers shared by the black-box tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use byok::dek::{DataKey, DekId};

/// A path under tests/fixtures.
pub(crate) fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Parses a JSON fixture.
pub(crate) fn json(rel: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture(rel)).unwrap()).unwrap()
}

/// Hex field of a JSON case (null = None).
pub(crate) fn hex_field(case: &serde_json::Value, name: &str) -> Option<Vec<u8>> {
    case[name].as_str().map(|s| hex::decode(s).unwrap())
}

/// A DataKey from a case's `dek_hex` and `dek_id`.
pub(crate) fn case_key(case: &serde_json::Value) -> DataKey {
    let bytes: [u8; 32] = hex_field(case, "dek_hex").unwrap().try_into().unwrap();
    let id = DekId::parse(case["dek_id"].as_str().unwrap()).unwrap();
    DataKey::from_bytes_for_vectors(id, bytes)
}

/// The `byok` binary.
pub(crate) fn byok() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_byok"))
}
