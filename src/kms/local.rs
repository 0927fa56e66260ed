//! Wrapping a DEK without Key Vault: RSA-OAEP-256 (SHA-256, MGF1 with SHA-256, empty label) with
//! a version's public key, the bytes Key Vault `encrypt` would produce, so Key Vault `decrypt`
//! on that version opens them (docs/envelope-v1.md §3). Used while the tenant's key is revoked (the
//! records go to the quarantine, readable only by the tenant's key) or the vault unavailable
//! (the worker keeps archiving; the DEK is proven through Key Vault once it answers).
//!
//! Also the `byok.keks` record: each tenant's last known public key, so that a worker starting
//! while a key is already revoked can still seal for that tenant.
//!
//! It must never wrap with a public key that is not the tenant's last known one from its vault.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::{BigUint, Oaep, RsaPublicKey};
use serde::{Deserialize, Serialize};

use super::{KekId, KmsError, VersionInfo, Wrapped};
use crate::dek::DataKey;

/// Wraps `dek` with `version`'s public key.
pub fn wrap_locally(
    tenant: &str,
    version: &VersionInfo,
    dek: &DataKey,
) -> Result<Wrapped, KmsError> {
    let setup = |detail: String| KmsError::Setup {
        tenant: tenant.to_owned(),
        detail,
    };
    let key = RsaPublicKey::new(
        BigUint::from_bytes_be(&version.n),
        BigUint::from_bytes_be(&version.e),
    )
    .map_err(|e| {
        setup(format!(
            "the public key of {} is not usable: {e}",
            version.kid
        ))
    })?;
    let wrapped = key
        .encrypt(
            &mut rand::rngs::OsRng,
            Oaep::new::<sha2::Sha256>(),
            dek.secret_bytes(),
        )
        .map_err(|e| setup(format!("RSA-OAEP-256 with {}: {e}", version.kid)))?;
    Ok(Wrapped {
        kek: version.kid.clone(),
        wrapped,
    })
}

/// A tenant's last known public key, as kept in the compacted `byok.keks` topic (keyed by
/// tenant). JSON: `{"v":1,"tenant":…,"kid":…,"kty":"RSA","n":…,"e":…,"seen":…}`, `n` and `e`
/// base64url as in a JWK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KekRecord {
    /// Tenant id (the Kafka key).
    pub tenant: String,
    /// The version's public part.
    pub version: VersionInfo,
    /// When a worker last read it (RFC 3339).
    pub seen: String,
}

#[derive(Serialize, Deserialize)]
struct Json {
    v: u32,
    tenant: String,
    kid: String,
    kty: String,
    n: String,
    e: String,
    seen: String,
}

impl KekRecord {
    /// The JSON value.
    pub fn to_json(&self) -> Vec<u8> {
        let j = Json {
            v: 1,
            tenant: self.tenant.clone(),
            kid: self.version.kid.to_string(),
            kty: self.version.kty.clone(),
            n: URL_SAFE_NO_PAD.encode(&self.version.n),
            e: URL_SAFE_NO_PAD.encode(&self.version.e),
            seen: self.seen.clone(),
        };
        serde_json::to_vec(&j).unwrap_or_default()
    }

    /// Reads a `byok.keks` value.
    pub fn from_json(value: &[u8]) -> Result<Self, KeksRecordError> {
        let j: Json =
            serde_json::from_slice(value).map_err(|e| KeksRecordError::Json(e.to_string()))?;
        if j.v != 1 {
            return Err(KeksRecordError::Version(j.v));
        }
        let b64 = |s: &str, field: &'static str| {
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| KeksRecordError::Base64 {
                    tenant: j.tenant.clone(),
                    field,
                })
        };
        Ok(Self {
            version: VersionInfo {
                kid: KekId::parse(&j.kid)?,
                kty: j.kty.clone(),
                n: b64(&j.n, "n")?,
                e: b64(&j.e, "e")?,
                // only the public part is kept: what local wrapping needs
                key_ops: vec!["encrypt".into(), "decrypt".into()],
                enabled: true,
                nbf: None,
                exp: None,
                recovery_level: None,
                recoverable_days: None,
            },
            tenant: j.tenant,
            seen: j.seen,
        })
    }
}

/// Why a `byok.keks` value is not a record this version reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeksRecordError {
    /// Not the record's JSON.
    #[error("not a byok.keks record: {0}")]
    Json(String),
    /// Another version of the record.
    #[error("byok.keks record version {0} is not 1")]
    Version(u32),
    /// A key part is not base64url.
    #[error("byok.keks record of {tenant}: {field} is not base64url")]
    Base64 {
        /// The tenant it names.
        tenant: String,
        /// The field.
        field: &'static str,
    },
    /// The key id is not a versioned Key Vault key id.
    #[error("byok.keks record: {0}")]
    Kid(#[from] super::InvalidKekId),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rsa::traits::PublicKeyParts;

    #[test]
    fn local_wrap_is_rsa_oaep_256_and_the_keks_record_round_trips() {
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let version = VersionInfo {
            kid: KekId::parse("https://acme-vault.vault.azure.net/keys/byok-key/0123abcd").unwrap(),
            kty: "RSA".into(),
            n: private.n().to_bytes_be(),
            e: private.e().to_bytes_be(),
            key_ops: vec!["encrypt".into(), "decrypt".into()],
            enabled: true,
            nbf: None,
            exp: None,
            recovery_level: None,
            recoverable_days: None,
        };
        let active = crate::dek::ActiveDek::generate(crate::dek::DekLimits::default()).unwrap();
        let dek = active.key();
        let w = wrap_locally("acme", &version, dek).unwrap();
        assert_eq!(w.kek, version.kid);
        let plain = private
            .decrypt(Oaep::new::<sha2::Sha256>(), &w.wrapped)
            .unwrap();
        assert_eq!(&plain[..], &dek.secret_bytes()[..]);
        let rec = KekRecord {
            tenant: "acme".into(),
            version: version.clone(),
            seen: "2026-11-29T17:00:00Z".into(),
        };
        let back = KekRecord::from_json(&rec.to_json()).unwrap();
        assert_eq!(
            (back.version.n, back.version.e, back.version.kid),
            (version.n, version.e, version.kid)
        );
        assert!(KekRecord::from_json(b"{}").is_err());
    }
}
