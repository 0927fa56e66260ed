//! The DEK registry (docs/envelope-v1.md §2): topic `byok.deks`, compacted, keyed by DEK id, one JSON
//! record per DEK holding the DEK wrapped by the tenant's KEK.
//!
//! This module is the record's codec. The worker publishes a record and waits for the broker's
//! acknowledgement before sealing anything with that DEK, so a reader never meets a record whose
//! DEK is missing. A null value (tombstone) means the DEK was destroyed.
//!
//! It must never accept a record whose fields it does not know how to check.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::dek::DekId;
use crate::kms::KekId;

pub use crate::tenant::QUARANTINE_TENANT;
/// The `suite` of v1 DEKs.
pub const SUITE: &str = "AES-256-GCM";
/// The `alg` of wrapped DEKs.
pub const ALG: &str = "RSA-OAEP-256";

/// One DEK as the registry knows it.
#[derive(Clone, PartialEq, Eq)]
pub struct DekRecord {
    /// The DEK's id (also the Kafka key).
    pub dek: DekId,
    /// The tenant the DEK seals for (the AAD tenant).
    pub tenant: String,
    /// The KEK version that wrapped it, as Key Vault names it in `kid`.
    pub kek: KekId,
    /// The Key Vault `encrypt` result (or the same bytes made locally with the public key).
    pub wrapped: Vec<u8>,
    /// When the DEK was made.
    pub created: OffsetDateTime,
    /// The process that made it.
    pub worker: String,
    /// When it was last rewrapped onto another KEK version.
    pub rewrapped: Option<OffsetDateTime>,
    /// Wrapped locally with the tenant's last known public key, not yet proven through Key Vault.
    pub wrapped_locally: bool,
}

impl fmt::Debug for DekRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DekRecord")
            .field("dek", &self.dek)
            .field("tenant", &self.tenant)
            .field("kek", &self.kek)
            .field("wrapped_len", &self.wrapped.len())
            .field("created", &self.created)
            .field("worker", &self.worker)
            .field("rewrapped", &self.rewrapped)
            .field("wrapped_locally", &self.wrapped_locally)
            .finish()
    }
}

/// A registry entry as read from the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryEntry {
    /// A DEK and its wrapped form.
    Live(DekRecord),
    /// A tombstone: the DEK was destroyed.
    Destroyed(DekId),
}

/// A registry record that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The Kafka key is missing or not a DEK id.
    #[error("registry record key {key:?} is not a DEK id (lowercase hyphenated UUID)")]
    Key {
        /// The key, lossily as text.
        key: String,
    },
    /// The value is not the JSON object of docs/envelope-v1.md §2.
    #[error("registry record {dek}: {reason}")]
    Value {
        /// The DEK id from the key.
        dek: DekId,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Json {
    v: u32,
    dek: String,
    tenant: String,
    suite: String,
    kek: String,
    alg: String,
    wrapped: String,
    created: String,
    worker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rewrapped: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    wrapped_locally: bool,
}

/// RFC 3339 in UTC to the second, as in docs/envelope-v1.md: `2026-11-29T17:00:00Z`.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

impl DekRecord {
    /// The Kafka key: the DEK id as text.
    pub fn key(&self) -> Vec<u8> {
        self.dek.to_string().into_bytes()
    }

    /// The Kafka value: the JSON object.
    pub fn to_json(&self) -> Vec<u8> {
        let json = Json {
            v: 1,
            dek: self.dek.to_string(),
            tenant: self.tenant.clone(),
            suite: SUITE.into(),
            kek: self.kek.to_string(),
            alg: ALG.into(),
            wrapped: URL_SAFE_NO_PAD.encode(&self.wrapped),
            created: format_time(self.created),
            worker: self.worker.clone(),
            rewrapped: self.rewrapped.map(format_time),
            wrapped_locally: self.wrapped_locally,
        };
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_vec(&json).unwrap_or_default()
    }
}

impl RegistryEntry {
    /// Decodes a registry record from its Kafka key and value (`None` = tombstone).
    pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Self, RegistryError> {
        let key_text = key.map(String::from_utf8_lossy).unwrap_or_default();
        let dek = DekId::parse(&key_text).map_err(|_| RegistryError::Key {
            key: key_text.chars().take(80).collect(),
        })?;
        let Some(value) = value else {
            return Ok(Self::Destroyed(dek));
        };
        let bad = |reason: String| RegistryError::Value { dek, reason };
        let json: Json = serde_json::from_slice(value)
            .map_err(|e| bad(format!("not the registry JSON object: {e}")))?;
        if json.v != 1 {
            return Err(bad(format!(
                "\"v\" is {}; this reader knows version 1",
                json.v
            )));
        }
        if json.dek != key_text {
            return Err(bad(format!(
                "\"dek\" {:?} differs from the record key",
                json.dek
            )));
        }
        if json.suite != SUITE {
            return Err(bad(format!("\"suite\" {:?} is not {SUITE:?}", json.suite)));
        }
        if json.alg != ALG {
            return Err(bad(format!("\"alg\" {:?} is not {ALG:?}", json.alg)));
        }
        if json.tenant.is_empty() {
            return Err(bad("\"tenant\" is empty".into()));
        }
        let kek = KekId::parse(&json.kek).map_err(|e| bad(format!("\"kek\": {e}")))?;
        let wrapped = URL_SAFE_NO_PAD
            .decode(json.wrapped.as_bytes())
            .map_err(|_| bad("\"wrapped\" is not base64url without padding".into()))?;
        if wrapped.is_empty() {
            return Err(bad("\"wrapped\" is empty".into()));
        }
        let parse_time = |field: &str, v: &str| {
            OffsetDateTime::parse(v, &Rfc3339)
                .map_err(|_| bad(format!("{field:?} {v:?} is not an RFC 3339 time")))
        };
        let created = parse_time("created", &json.created)?;
        let rewrapped = json
            .rewrapped
            .as_deref()
            .map(|v| parse_time("rewrapped", v))
            .transpose()?;
        Ok(Self::Live(DekRecord {
            dek,
            tenant: json.tenant,
            kek,
            wrapped,
            created,
            worker: json.worker,
            rewrapped,
            wrapped_locally: json.wrapped_locally,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "v": 1,
      "dek": "0193a1c2-7a4e-7c3b-9f10-2b8e5d6a4c21",
      "tenant": "acme",
      "suite": "AES-256-GCM",
      "kek": "https://acme-vault.vault.azure.net/keys/byok-key/78deebed173b48e48f55abf87ed4cf71",
      "alg": "RSA-OAEP-256",
      "wrapped": "AAEC_-8",
      "created": "2026-11-29T17:00:00Z",
      "worker": "w-1",
      "some_future_field": {"x": 1}
    }"#;
    const KEY: &[u8] = b"0193a1c2-7a4e-7c3b-9f10-2b8e5d6a4c21";

    #[test]
    fn decodes_the_envelope_md_example_and_ignores_unknown_fields() {
        let RegistryEntry::Live(r) =
            RegistryEntry::decode(Some(KEY), Some(EXAMPLE.as_bytes())).unwrap()
        else {
            panic!("expected a live record")
        };
        assert_eq!(r.tenant, "acme");
        assert_eq!(r.kek.version(), "78deebed173b48e48f55abf87ed4cf71");
        assert_eq!(r.wrapped, vec![0, 1, 2, 0xff, 0xef]);
        assert_eq!(format_time(r.created), "2026-11-29T17:00:00Z");
        assert!(!r.wrapped_locally);
        assert_eq!(r.rewrapped, None);
    }

    #[test]
    fn round_trips_with_optional_fields() {
        let RegistryEntry::Live(mut r) =
            RegistryEntry::decode(Some(KEY), Some(EXAMPLE.as_bytes())).unwrap()
        else {
            panic!()
        };
        r.wrapped_locally = true;
        r.rewrapped = Some(r.created + time::Duration::hours(2));
        let json = r.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains(r#""wrapped_locally":true"#), "{text}");
        assert!(
            text.contains(r#""rewrapped":"2026-11-29T19:00:00Z""#),
            "{text}"
        );
        assert_eq!(
            RegistryEntry::decode(Some(&r.key()), Some(&json)).unwrap(),
            RegistryEntry::Live(r.clone())
        );
        // the optional fields are omitted when unset
        r.wrapped_locally = false;
        r.rewrapped = None;
        let text = String::from_utf8(r.to_json()).unwrap();
        assert!(
            !text.contains("wrapped_locally") && !text.contains("rewrapped"),
            "{text}"
        );
    }

    #[test]
    fn tombstone_means_destroyed() {
        assert_eq!(
            RegistryEntry::decode(Some(KEY), None).unwrap(),
            RegistryEntry::Destroyed(DekId::parse(std::str::from_utf8(KEY).unwrap()).unwrap())
        );
    }

    #[test]
    fn bad_records_say_what_is_wrong() {
        let cases = [
            (EXAMPLE.replace("\"v\": 1", "\"v\": 2"), "knows version 1"),
            (EXAMPLE.replace("AES-256-GCM", "AES-128-GCM"), "suite"),
            (EXAMPLE.replace("RSA-OAEP-256", "RSA1_5"), "alg"),
            (
                EXAMPLE.replace("/78deebed173b48e48f55abf87ed4cf71", ""),
                "kek",
            ),
            (EXAMPLE.replace("AAEC_-8", "AAEC+/8="), "base64url"),
            (
                EXAMPLE.replace("2026-11-29T17:00:00Z", "yesterday"),
                "RFC 3339",
            ),
            (
                EXAMPLE.replace(
                    "0193a1c2-7a4e-7c3b-9f10-2b8e5d6a4c21\",\n      \"tenant",
                    "0193a1c2-7a4e-7c3b-9f10-2b8e5d6a4c22\",\n      \"tenant",
                ),
                "differs",
            ),
            ("[]".to_owned(), "registry JSON"),
        ];
        for (value, expect) in cases {
            let err = RegistryEntry::decode(Some(KEY), Some(value.as_bytes())).unwrap_err();
            assert!(err.to_string().contains(expect), "{err} (wanted {expect})");
        }
        assert!(matches!(
            RegistryEntry::decode(Some(b"nope"), Some(EXAMPLE.as_bytes())),
            Err(RegistryError::Key { .. })
        ));
        assert!(matches!(
            RegistryEntry::decode(None, None),
            Err(RegistryError::Key { .. })
        ));
    }
}
